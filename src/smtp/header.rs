//! The one header the gateway reads before its `250`: the Message-ID, found by a plain
//! scan of the header block the session already holds (no MIME parse), and handed to
//! the spool with the message so the store never parses mail.

/// The first Message-ID header of `head` (a message's start), without its angle
/// brackets; None when there is none, it is empty, or the header block is not in `head`.
pub fn message_id(head: &[u8]) -> Option<String> {
    let mut lines = HeaderLines { rest: head };
    let value = lines
        .find_map(|(name, value)| name.eq_ignore_ascii_case(b"message-id").then_some(value))?;
    id_of(&unfold(value))
}

/// `<id>` → `id`; without brackets, the first word. Control bytes are never kept.
fn id_of(value: &str) -> Option<String> {
    let value = value.trim();
    let id = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.split_whitespace().next().unwrap_or(""),
    };
    let id = id.trim();
    (!id.is_empty() && !id.chars().any(char::is_control)).then(|| id.to_string())
}

fn unfold(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The header fields of a message start: (name, raw value with its folded lines),
/// ending at the empty line (or at the end of `head`, where a field may be cut).
struct HeaderLines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderLines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let line_end = |s: &[u8], from: usize| {
            s[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(s.len(), |p| from + p + 1)
        };
        let rest = self.rest;
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return None;
        }
        // A field runs on while the next line starts with a space or a tab (folding).
        let mut end = line_end(rest, 0);
        while end < rest.len() && matches!(rest[end], b' ' | b'\t') {
            end = line_end(rest, end);
        }
        self.rest = &rest[end..];
        let field = &rest[..end];
        match field.iter().position(|&b| b == b':') {
            Some(colon) => Some((field[..colon].trim_ascii(), &field[colon + 1..])),
            // Not a header field (the body without an empty line?): stop reading.
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_id_in_a_folded_header_after_our_received_line() {
        let raw = b"Received: from a\r\n\tby b;\r\n\tdate\r\nSubject: x\r\nmessage-ID:\r\n <abc.1@host>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(raw).as_deref(), Some("abc.1@host"));
    }

    #[test]
    fn no_header_block_or_no_id_is_none() {
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <b@x>\r\n"), None);
        assert_eq!(message_id(b"Message-ID: <>\r\n\r\n"), None);
        assert_eq!(message_id(b""), None);
        assert_eq!(message_id(b"just text\r\nMessage-ID: <a@b>\r\n"), None);
        assert_eq!(
            message_id(b"Message-ID: bare@id  \r\n\r\n").as_deref(),
            Some("bare@id")
        );
    }

    /// The scan agrees with the full parser (mail-parser, used by the rules) on every
    /// fixture mail.
    #[test]
    fn agrees_with_the_mail_parser_on_the_fixtures() {
        let mut checked = 0;
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "eml") {
                    let raw = std::fs::read(&path).unwrap();
                    assert_eq!(
                        message_id(&raw),
                        crate::mail::message_id(&raw),
                        "{}",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "only {checked} fixtures");
    }
}
