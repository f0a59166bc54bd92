//! Subject lines: the configurable template, the GLPI ticket prefix, the length cap.
//! Guarantees that the only `[… #digits]` GLPI can find in a subject is our own prefix.

use super::text::{neutralise_ticket_markers, subject_text, truncate_chars};
use super::ComposeError;

/// GLPI stores the title in a 255-character column; stay clearly under it.
pub const SUBJECT_MAX_CHARS: usize = 249;

/// Host and service names are capped so the output line keeps some room.
const NAME_MAX_CHARS: usize = 100;

/// One piece of a parsed subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Tag,
    StateWord,
    StateLower,
    Host,
    Service,
    SlashService,
    Source,
    Output,
}

/// A validated subject template such as `[{tag}] {STATE} {host}{ / service}: {output_first_line}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    pieces: Vec<Piece>,
}

/// Values a template is rendered with; already chosen by the caller, not yet sanitised.
#[derive(Debug, Clone, Copy)]
pub struct SubjectFields<'a> {
    pub tag: &'a str,
    pub state_word: &'a str,
    pub state: &'a str,
    pub host: &'a str,
    pub service: &'a str,
    pub source: &'a str,
    pub output_first_line: &'a str,
}

const PLACEHOLDERS: &str =
    "{tag}, {STATE}, {state}, {host}, {service}, { / service}, {source}, {output_first_line}";

impl SubjectTemplate {
    /// Parses and checks a template: known placeholders only, `{tag}` required (it is
    /// how the incident is found again), and no `#` (it could forge a ticket marker).
    pub fn parse(template: &str) -> Result<Self, ComposeError> {
        let invalid = |why: String| ComposeError::InvalidTemplate {
            template: template.to_owned(),
            why,
        };
        if template.contains('#') {
            return Err(invalid(
                "`#` is not allowed: GLPI reads `[… #123]` in a subject as a ticket number".into(),
            ));
        }
        if template.chars().any(char::is_control) {
            return Err(invalid("control characters are not allowed".into()));
        }
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(invalid(format!("unmatched `}}` at `{}`", &rest[open..])));
            }
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| invalid("unclosed `{`".into()))?;
            let name = &after[..close];
            pieces.push(placeholder(name).ok_or_else(|| {
                invalid(format!(
                    "unknown placeholder `{{{name}}}` (known: {PLACEHOLDERS})"
                ))
            })?);
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        if !pieces.contains(&Piece::Tag) {
            return Err(invalid("`{tag}` is required".into()));
        }
        Ok(SubjectTemplate { pieces })
    }

    /// Renders the template, prefixed with `[GLPI #0000123] ` when the ticket is
    /// known, within [`SUBJECT_MAX_CHARS`]: the output line gives way first.
    pub fn render(&self, fields: &SubjectFields<'_>, ticket_prefix: &str) -> String {
        let clean = CleanFields::from(fields);
        let fixed_len = ticket_prefix.chars().count() + self.fill(&clean, "").chars().count();
        let output = if fixed_len >= SUBJECT_MAX_CHARS {
            String::new()
        } else {
            truncate_chars(&clean.output, SUBJECT_MAX_CHARS - fixed_len)
        };
        let body = neutralise_ticket_markers(&self.fill(&clean, &output));
        let mut body = body.trim();
        if output.is_empty() {
            // `web-01 / HTTP:` with nothing after the colon reads like a cut subject.
            body = body.trim_end_matches(|c: char| c == ':' || c.is_whitespace());
        }
        let subject = format!("{ticket_prefix}{body}");
        truncate_chars(&subject, SUBJECT_MAX_CHARS)
    }

    fn fill(&self, clean: &CleanFields, output: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Tag => out.push_str(&clean.tag),
                Piece::StateWord => out.push_str(&clean.state_word),
                Piece::StateLower => out.push_str(&clean.state),
                Piece::Host => out.push_str(&clean.host),
                Piece::Service => out.push_str(&clean.service),
                Piece::SlashService if clean.service.is_empty() => {}
                Piece::SlashService => {
                    out.push_str(" / ");
                    out.push_str(&clean.service);
                }
                Piece::Source => out.push_str(&clean.source),
                Piece::Output => out.push_str(output),
            }
        }
        out
    }
}

fn placeholder(name: &str) -> Option<Piece> {
    Some(match name {
        "tag" => Piece::Tag,
        "STATE" => Piece::StateWord,
        "state" => Piece::StateLower,
        "host" => Piece::Host,
        "service" => Piece::Service,
        " / service" => Piece::SlashService,
        "source" => Piece::Source,
        "output_first_line" | "output" => Piece::Output,
        _ => return None,
    })
}

/// Fields after header hygiene and `#` neutralisation.
struct CleanFields {
    tag: String,
    state_word: String,
    state: String,
    host: String,
    service: String,
    source: String,
    output: String,
}

impl From<&SubjectFields<'_>> for CleanFields {
    fn from(f: &SubjectFields<'_>) -> Self {
        let name = |s: &str| truncate_chars(&subject_text(s), NAME_MAX_CHARS);
        CleanFields {
            tag: subject_text(f.tag),
            state_word: subject_text(f.state_word),
            state: subject_text(f.state),
            host: name(f.host),
            service: name(f.service),
            source: name(f.source),
            output: subject_text(f.output_first_line),
        }
    }
}

/// GLPI's own subject prefix, `sprintf("[%s #%07d] ", tag, id)`.
pub fn ticket_prefix(glpi_tag: &str, ticket_id: Option<u64>) -> String {
    match ticket_id {
        Some(id) => format!("[{glpi_tag} #{id:07}] "),
        None => String::new(),
    }
}

/// Checks a configured GLPI tag: it sits between `[` and ` #`, so brackets, `#` and
/// whitespace would break GLPI's parsing of our prefix.
pub fn validate_glpi_tag(tag: &str) -> Result<(), ComposeError> {
    let bad = tag.is_empty()
        || tag.chars().count() > 32
        || tag
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '#'));
    if bad {
        return Err(ComposeError::InvalidGlpiTag(tag.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "[{tag}] {STATE} {host}{ / service}: {output_first_line}";

    fn fields<'a>(service: &'a str, output: &'a str) -> SubjectFields<'a> {
        SubjectFields {
            tag: "ALERT-1f3a9c2e",
            state_word: "CRITICAL",
            state: "critical",
            host: "web-01",
            service,
            source: "centreon",
            output_first_line: output,
        }
    }

    #[test]
    fn default_template_renders_service_and_host_alerts() {
        let t = SubjectTemplate::parse(DEFAULT).unwrap();
        assert_eq!(
            t.render(&fields("HTTP", "timeout after 10s"), ""),
            "[ALERT-1f3a9c2e] CRITICAL web-01 / HTTP: timeout after 10s"
        );
        assert_eq!(
            t.render(&fields("", "PING CRITICAL"), "[GLPI #0000123] "),
            "[GLPI #0000123] [ALERT-1f3a9c2e] CRITICAL web-01: PING CRITICAL"
        );
    }

    #[test]
    fn empty_output_leaves_no_dangling_colon() {
        let t = SubjectTemplate::parse(DEFAULT).unwrap();
        assert_eq!(
            t.render(&fields("HTTP", " \n "), ""),
            "[ALERT-1f3a9c2e] CRITICAL web-01 / HTTP"
        );
    }

    #[test]
    fn templates_are_validated() {
        assert!(SubjectTemplate::parse("{STATE} {host}").is_err(), "no tag");
        assert!(SubjectTemplate::parse("[{tag}] {bogus}").is_err());
        assert!(SubjectTemplate::parse("[{tag}] {host").is_err());
        assert!(SubjectTemplate::parse("[{tag}] host}").is_err());
        assert!(SubjectTemplate::parse("[{tag} #1] x").is_err());
        assert!(SubjectTemplate::parse("{source}/{state}: {tag} {service} {output}").is_ok());
    }

    #[test]
    fn long_multibyte_output_is_cut_on_a_char_boundary() {
        let t = SubjectTemplate::parse(DEFAULT).unwrap();
        let output = "é€😀".repeat(200);
        let s = t.render(&fields("HTTP", &output), "[GLPI #0000123] ");
        assert_eq!(s.chars().count(), SUBJECT_MAX_CHARS);
        assert!(s.ends_with('…'));
        assert!(s.starts_with("[GLPI #0000123] [ALERT-1f3a9c2e] CRITICAL web-01 / HTTP: é€😀"));
    }

    #[test]
    fn huge_host_names_still_fit() {
        let t = SubjectTemplate::parse(DEFAULT).unwrap();
        let host = "h".repeat(1000);
        let f = SubjectFields {
            host: &host,
            service: &host,
            ..fields("", "out")
        };
        let s = t.render(&f, "[GLPI #0000001] ");
        assert!(s.chars().count() <= SUBJECT_MAX_CHARS);
        assert!(s.starts_with("[GLPI #0000001] [ALERT-1f3a9c2e]"));
    }

    #[test]
    fn ticket_prefix_is_zero_padded_like_glpi() {
        assert_eq!(ticket_prefix("GLPI", Some(123)), "[GLPI #0000123] ");
        assert_eq!(ticket_prefix("HELP", Some(12345678)), "[HELP #12345678] ");
        assert_eq!(ticket_prefix("GLPI", None), "");
    }

    #[test]
    fn glpi_tag_is_validated() {
        assert!(validate_glpi_tag("GLPI").is_ok());
        assert!(validate_glpi_tag("").is_err());
        assert!(validate_glpi_tag("A B").is_err());
        assert!(validate_glpi_tag("A]").is_err());
        assert!(validate_glpi_tag("A#").is_err());
    }
}
