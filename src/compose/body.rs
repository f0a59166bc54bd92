//! Mail bodies: one `Report` (heading, field rows, tables) per mail, rendered twice,
//! as `Field: value` text and as an HTML table (the part GLPI shows). All alert text
//! is HTML-escaped here and nowhere else.

use super::text::{html_escape, html_multiline, is_safe_link};

/// A field value: plain (possibly multi-line) text, or a link back to a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Link(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub label: &'static str,
    pub value: Value,
}

/// A titled table, e.g. the services folded into a host incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// Everything a mail body says, independent of its rendering.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub heading: String,
    pub rows: Vec<Row>,
    pub tables: Vec<Table>,
    /// A titled block of verbatim text (the body of a forwarded mail).
    pub verbatim: Option<(String, String)>,
}

impl Report {
    pub fn new(heading: impl Into<String>) -> Self {
        Report {
            heading: heading.into(),
            ..Report::default()
        }
    }

    /// Adds a text row; empty values are skipped so the body lists only what is known.
    pub fn text(&mut self, label: &'static str, value: impl Into<String>) {
        let value = value.into();
        if !value.trim().is_empty() {
            self.rows.push(Row {
                label,
                value: Value::Text(value),
            });
        }
    }

    pub fn optional(&mut self, label: &'static str, value: Option<&str>) {
        if let Some(v) = value {
            self.text(label, v);
        }
    }

    /// Adds a link row; URLs that are not http(s) are shown as text, not linked.
    pub fn link(&mut self, label: &'static str, url: &str) {
        if is_safe_link(url) {
            self.rows.push(Row {
                label,
                value: Value::Link(url.trim().to_owned()),
            });
        } else {
            self.text(label, url);
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("{}\n\n", self.heading);
        for row in &self.rows {
            let value = match &row.value {
                Value::Text(t) | Value::Link(t) => t,
            };
            out.push_str(&format!("{}: {}\n", row.label, indent_continuations(value)));
        }
        for table in &self.tables {
            out.push_str(&format!("\n{}\n", table.title));
            out.push_str(&format!("{}\n", table.columns.join(" | ")));
            for cells in &table.rows {
                let cells: Vec<String> = cells.iter().map(|c| indent_continuations(c)).collect();
                out.push_str(&format!("- {}\n", cells.join(" | ")));
            }
        }
        if let Some((title, text)) = &self.verbatim {
            out.push_str(&format!("\n{title}\n\n{text}\n"));
        }
        out
    }

    pub fn to_html(&self) -> String {
        let mut out = String::from(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n\
             <body style=\"font-family:Arial,Helvetica,sans-serif;font-size:14px\">\n",
        );
        out.push_str(&format!("<h2>{}</h2>\n", html_escape(&self.heading)));
        if !self.rows.is_empty() {
            out.push_str(TABLE_OPEN);
            for row in &self.rows {
                out.push_str(&format!(
                    "<tr><th style=\"{TH}\">{}</th><td style=\"{TD}\">{}</td></tr>\n",
                    html_escape(row.label),
                    value_html(&row.value)
                ));
            }
            out.push_str("</table>\n");
        }
        // Lists (folded services, digests) can hold thousands of rows: style the table
        // once instead of every cell, which kept a storm digest at 12 MB.
        for table in &self.tables {
            out.push_str(&format!(
                "<h3>{}</h3>\n{LIST_TABLE_OPEN}<tr>",
                html_escape(&table.title)
            ));
            for column in &table.columns {
                out.push_str(&format!("<th style=\"{TH}\">{}</th>", html_escape(column)));
            }
            out.push_str("</tr>\n");
            for cells in &table.rows {
                out.push_str("<tr>");
                for cell in cells {
                    out.push_str("<td>");
                    out.push_str(&html_multiline(cell));
                    out.push_str("</td>");
                }
                out.push_str("</tr>\n");
            }
            out.push_str("</table>\n");
        }
        if let Some((title, text)) = &self.verbatim {
            out.push_str(&format!(
                "<h3>{}</h3>\n<pre style=\"white-space:pre-wrap\">{}</pre>\n",
                html_escape(title),
                html_escape(text)
            ));
        }
        out.push_str("</body></html>\n");
        out
    }
}

const TABLE_OPEN: &str = "<table style=\"border-collapse:collapse\">\n";
const LIST_TABLE_OPEN: &str =
    "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\" style=\"border-collapse:collapse\">\n";
const TH: &str = "text-align:left;padding:3px 8px;border:1px solid #ccc;background:#f2f2f2";
const TD: &str = "padding:3px 8px;border:1px solid #ccc";

fn value_html(value: &Value) -> String {
    match value {
        Value::Text(text) => html_multiline(text),
        Value::Link(url) => {
            let url = html_escape(url);
            format!("<a href=\"{url}\">{url}</a>")
        }
    }
}

/// Continuation lines of a multi-line value are indented so they read as part of it.
fn indent_continuations(value: &str) -> String {
    value
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .trim_end()
        .replace('\n', "\n  ")
}

/// `2026-11-24 20:00:08 UTC`, or the raw number when out of range.
pub fn format_time(unix_secs: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix_secs.to_string())
}

/// `3d 4h 05m`, `1h 02m 03s`, `42s`: how long an incident lasted.
pub fn format_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3_600,
        secs % 3_600 / 60,
        secs % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h {minutes:02}m")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m {seconds:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("CRITICAL: web-01 / <HTTP>");
        r.text("Output", "line <1>\nline 2");
        r.text("Empty", "  ");
        r.link("Link", "https://mon.example/?a=1&b=2");
        r.link("Bad link", "javascript:alert(1)");
        r.tables.push(Table {
            title: "Folded services".into(),
            columns: vec!["Service", "State"],
            rows: vec![vec!["<b>disk</b>".into(), "WARNING".into()]],
        });
        r
    }

    #[test]
    fn text_rendering_lists_fields_and_indents_continuations() {
        let text = sample().to_text();
        assert!(text.starts_with("CRITICAL: web-01 / <HTTP>\n\n"));
        assert!(text.contains("Output: line <1>\n  line 2\n"));
        assert!(!text.contains("Empty"));
        assert!(text.contains("Link: https://mon.example/?a=1&b=2\n"));
        assert!(text.contains("- <b>disk</b> | WARNING\n"));
    }

    #[test]
    fn html_rendering_escapes_everything_from_alerts() {
        let html = sample().to_html();
        assert!(html.contains("<h2>CRITICAL: web-01 / &lt;HTTP&gt;</h2>"));
        assert!(html.contains("line &lt;1&gt;<br>\nline 2"));
        assert!(html.contains("<a href=\"https://mon.example/?a=1&amp;b=2\">"));
        assert!(!html.contains("href=\"javascript"));
        assert!(html.contains("javascript:alert(1)"));
        assert!(html.contains("&lt;b&gt;disk&lt;/b&gt;"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(i64::MAX), i64::MAX.to_string());
        assert_eq!(format_duration(42), "42s");
        assert_eq!(format_duration(3_723), "1h 02m 03s");
        assert_eq!(
            format_duration(3 * 86_400 + 4 * 3_600 + 5 * 60),
            "3d 4h 05m"
        );
        assert_eq!(format_duration(-5), "0s");
    }
}
