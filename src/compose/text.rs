//! Text hygiene for everything alert-derived that reaches a header or a body part:
//! single-line header text, body text valid for 7bit/8bit, GLPI ticket-marker
//! neutralisation, char-safe truncation, HTML escaping.

/// What replaces `#` in alert text placed in a subject: GLPI's subject regex
/// `\[.+#(\d+)\]` needs a literal `#`, so without one no alert text can name a ticket.
pub const HASH_REPLACEMENT: &str = "nº";

/// Turns arbitrary text into one header-safe line: every control or line-separator
/// character becomes a space (so `x\r\nBcc: y` can never start a header line), runs of
/// whitespace collapse, the ends are trimmed, and `=?` is split so that text which
/// looks like an RFC 2047 encoded word cannot be decoded by the reader into
/// characters we filtered out (e.g. `=?utf-8?q?=2312=5D?=` → `#12]`).
pub fn header_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if c == '?' && out.ends_with('=') {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Header-safe line with every `#` replaced, for text that goes into a subject.
pub fn subject_text(text: &str) -> String {
    neutralise_ticket_markers(&header_line(text))
}

/// Replaces every `#` so that no `[… #123]` (GLPI ticket marker) can form.
pub fn neutralise_ticket_markers(text: &str) -> String {
    text.replace('#', HASH_REPLACEMENT)
}

/// The first non-blank line of a possibly multi-line text, trimmed.
pub fn first_line(text: &str) -> &str {
    text.split(['\r', '\n'])
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("")
}

/// Cuts `text` to at most `max_chars` characters (not bytes), ending with `…` when
/// something was cut.
pub fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    if max_chars == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max_chars - 1).collect();
    out.push('…');
    out
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Makes a body text valid for any transfer encoding lettre may declare for it
/// (RFC 2045 2.7/2.8: in 7bit and 8bit data, no NUL and CR only as part of CRLF):
/// CRLF and a bare CR become line breaks, NUL is dropped, and every other control
/// character but TAB becomes a space, so that terminal escapes cannot garble the text.
pub fn body_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\t' => out.push(c),
            '\0' => {}
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes multi-line text for HTML, keeping line breaks visible.
pub fn html_multiline(text: &str) -> String {
    let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
    normalised
        .split('\n')
        .map(html_escape)
        .collect::<Vec<_>>()
        .join("<br>\n")
}

/// Only http(s) links are rendered as links: a `javascript:` or `data:` URL from a
/// parsed mail must not become clickable in GLPI.
pub fn is_safe_link(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_line_removes_line_breaks_and_controls() {
        assert_eq!(header_line("x\r\nBcc: x@evil.test"), "x Bcc: x@evil.test");
        assert_eq!(header_line("  a\t\u{2028}b\u{85}c\0d  "), "a b c d");
    }

    #[test]
    fn header_line_breaks_encoded_word_openers() {
        assert_eq!(header_line("=?utf-8?q?=23?="), "= ?utf-8?q?=23?=");
        assert!(!header_line("a=?=?b").contains("=?"));
    }

    #[test]
    fn subject_text_removes_every_hash() {
        let s = subject_text("disk #2] failed [GLPI #0000042]");
        assert!(!s.contains('#'));
        assert_eq!(s, "disk nº2] failed [GLPI nº0000042]");
    }

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(
            first_line("\r\n  \nCRITICAL - down\nmore"),
            "CRITICAL - down"
        );
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn truncate_counts_chars_not_bytes() {
        assert_eq!(truncate_chars("éééé", 4), "éééé");
        assert_eq!(truncate_chars("ééééé", 4), "ééé…");
        assert_eq!(truncate_chars("abc", 0), "");
    }

    #[test]
    fn html_escape_covers_markup_characters() {
        assert_eq!(
            html_escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(html_multiline("a<b\r\nc"), "a&lt;b<br>\nc");
    }

    #[test]
    fn body_text_has_no_bare_cr_nul_or_controls() {
        assert_eq!(body_text("a\rb\r\nc\nd"), "a\nb\nc\nd");
        assert_eq!(body_text("x\0y\u{7}z\u{1b}[0m\tw\u{85}"), "xy z [0m\tw ");
        assert_eq!(body_text("état\u{2028}ok"), "état\u{2028}ok");
    }

    #[test]
    fn only_http_links_are_safe() {
        assert!(is_safe_link("https://centreon.example/x?a=1"));
        assert!(!is_safe_link("javascript:alert(1)"));
        assert!(!is_safe_link("https://a.example/\" onclick=x"));
    }
}
