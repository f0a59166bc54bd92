//! Fitting a composed mail into the relay's size limit (its EHLO `SIZE`, or `[relay]
//! max_message_size`): first the attached original is dropped with a note saying so, then
//! the text is truncated with a note. A mail is never dead-lettered for its size alone.

use base64::Engine;
use std::borrow::Cow;

/// What a shrunk mail may use of the limit: room for the relay's own Received header.
const HEADROOM: usize = 2048;

/// `raw` unchanged when it fits `limit` (or there is none), else a smaller version.
/// When even the headers do not fit, the mail is returned as is for the relay to judge.
pub fn fit(raw: &[u8], limit: Option<usize>) -> Cow<'_, [u8]> {
    let Some(limit) = limit else {
        return Cow::Borrowed(raw);
    };
    if raw.len() <= limit {
        return Cow::Borrowed(raw);
    }
    let budget = limit.saturating_sub(HEADROOM).max(limit / 2);
    if let Some(without) = drop_attachments(raw, limit) {
        if without.len() <= budget {
            return Cow::Owned(without);
        }
    }
    match truncate_text(raw, budget, limit) {
        Some(truncated) => Cow::Owned(truncated),
        None => Cow::Borrowed(raw),
    }
}

/// Splits a message at its blank line: (header block with its final CRLF, body).
fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let pos = find(raw, b"\r\n\r\n")?;
    Some((&raw[..pos + 2], &raw[pos + 4..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The header lines (with their continuation lines) of a header block.
fn header_fields(head: &[u8]) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        if head[i] == b'\n' {
            let next = head.get(i + 1).copied();
            if !matches!(next, Some(b' ' | b'\t')) {
                fields.push(&head[start..=i]);
                start = i + 1;
            }
        }
        i += 1;
    }
    if start < head.len() {
        fields.push(&head[start..]);
    }
    fields
}

fn field_named<'a>(field: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let colon = field.iter().position(|b| *b == b':')?;
    field[..colon]
        .eq_ignore_ascii_case(name.as_bytes())
        .then(|| &field[colon + 1..])
}

fn header_value(head: &[u8], name: &str) -> Option<String> {
    header_fields(head)
        .into_iter()
        .find_map(|f| field_named(f, name))
        .map(|v| String::from_utf8_lossy(v).replace(['\r', '\n'], " "))
}

/// The `boundary` parameter of a multipart Content-Type.
fn boundary(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    let at = lower.find("boundary=")? + "boundary=".len();
    let rest = content_type[at..].trim_start();
    let value = match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next()?,
        None => rest.split([';', ' ', '\t']).next()?,
    };
    (!value.is_empty()).then(|| value.to_string())
}

/// The mail without its attachments (parts with `Content-Disposition: attachment`, e.g.
/// the original alert as `original.eml`), with a note part in their place. None when
/// the mail is not multipart/mixed or has no attachment.
fn drop_attachments(raw: &[u8], limit: usize) -> Option<Vec<u8>> {
    let (head, body) = split_head(raw)?;
    let content_type = header_value(head, "Content-Type")?;
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/mixed")
    {
        return None;
    }
    let delimiter = format!("--{}", boundary(&content_type)?);
    let close = format!("{delimiter}--");
    let close_at = find(body, close.as_bytes())?;
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = &body[..close_at];
    let first = find(rest, delimiter.as_bytes())?;
    let preamble = &rest[..first];
    rest = &rest[first + delimiter.len()..];
    while let Some(next) = find(rest, format!("\r\n{delimiter}").as_bytes()) {
        parts.push(&rest[..next + 2]);
        rest = &rest[next + 2 + delimiter.len()..];
    }
    parts.push(rest);
    let mut dropped = 0usize;
    let mut kept: Vec<&[u8]> = Vec::new();
    for part in parts {
        let part_head = split_head(part.strip_prefix(b"\r\n").unwrap_or(part))
            .map(|(h, _)| h)
            .unwrap_or(part);
        let is_attachment = header_value(part_head, "Content-Disposition").is_some_and(|d| {
            d.trim_start()
                .to_ascii_lowercase()
                .starts_with("attachment")
        });
        if is_attachment {
            dropped += part.len();
        } else {
            kept.push(part);
        }
    }
    if dropped == 0 {
        return None;
    }
    let note = format!(
        "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: inline\r\n\
         Content-Transfer-Encoding: 7bit\r\n\r\n\
         alertgate: the original alert mail ({dropped} bytes) is not attached: the relay\r\n\
         accepts mails of at most {limit} bytes.\r\n"
    );
    let mut out = Vec::with_capacity(raw.len() - dropped + note.len());
    out.extend_from_slice(head);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(preamble);
    for part in kept {
        out.extend_from_slice(delimiter.as_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(delimiter.as_bytes());
    out.extend_from_slice(note.as_bytes());
    out.extend_from_slice(close.as_bytes());
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// The mail as one text/plain part holding as much of its text as fits `budget`, with
/// a note; its other headers (Subject, Message-ID, threading) are kept as they were.
fn truncate_text(raw: &[u8], budget: usize, limit: usize) -> Option<Vec<u8>> {
    let (head, _) = split_head(raw)?;
    let message = mail_parser::MessageParser::default().parse(raw)?;
    let text = message.body_text(0).unwrap_or_default();
    let mut out = Vec::new();
    for field in header_fields(head) {
        let mime = ["Content-Type", "Content-Transfer-Encoding", "MIME-Version"]
            .iter()
            .any(|name| field_named(field, name).is_some());
        if !mime {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
          Content-Transfer-Encoding: base64\r\n\r\n",
    );
    let note = format!(
        "\n\n[alertgate: this mail was cut: it was {} bytes, the relay accepts at most {limit}; \
         the original alert mail is not attached.]\n",
        raw.len()
    );
    // base64 turns 57 bytes into a 76-character line plus CRLF.
    let room = budget.checked_sub(out.len())? / 78 * 57;
    let keep = room.checked_sub(note.len())?;
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut plain = text[..end].to_string();
    plain.push_str(&note);
    let encoded = base64::engine::general_purpose::STANDARD.encode(plain.as_bytes());
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composed(original_size: usize) -> Vec<u8> {
        let original = "x".repeat(70) + "\r\n";
        let original = original.repeat(original_size / 72 + 1);
        format!(
            "From: gw@example.org\r\nSubject: [ALERT-1] web01 DOWN\r\nMessage-ID: <a.0@gw>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"XYZ\"\r\n\r\n\
             --XYZ\r\nContent-Type: multipart/alternative; boundary=\"ALT\"\r\n\r\n\
             --ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nweb01 is DOWN\r\n\
             --ALT--\r\n\r\n\
             --XYZ\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"original.eml\"\r\n\r\n\
             {original}\r\n--XYZ--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn fitting_mail_is_untouched() {
        let raw = composed(1000);
        assert!(matches!(fit(&raw, None), Cow::Borrowed(_)));
        assert!(matches!(fit(&raw, Some(raw.len())), Cow::Borrowed(_)));
    }

    #[test]
    fn attachment_goes_first_with_a_note() {
        let raw = composed(100_000);
        let out = fit(&raw, Some(50_000));
        let text = String::from_utf8_lossy(&out);
        assert!(out.len() < 50_000, "{}", out.len());
        assert!(!text.contains("original.eml"), "{text}");
        assert!(text.contains("web01 is DOWN"), "{text}");
        assert!(text.contains("is not attached"), "{text}");
        assert!(text.contains("Message-ID: <a.0@gw>"), "{text}");
        let parsed = mail_parser::MessageParser::default()
            .parse(&out[..])
            .expect("parses");
        assert_eq!(parsed.attachment_count(), 0);
        assert!(parsed
            .body_text(0)
            .is_some_and(|t| t.contains("web01 is DOWN")));
    }

    #[test]
    fn long_text_is_cut_with_a_note() {
        let long = "état critique ".repeat(20_000);
        let raw = format!(
            "From: gw@example.org\r\nSubject: s\r\nMessage-ID: <b.1@gw>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{long}\r\n"
        );
        let out = fit(raw.as_bytes(), Some(100_000));
        assert!(out.len() <= 100_000, "{}", out.len());
        let parsed = mail_parser::MessageParser::default()
            .parse(&out[..])
            .expect("parses");
        let text = parsed.body_text(0).expect("text");
        assert!(text.starts_with("état critique"), "{text:.40}");
        assert!(
            text.contains("this mail was cut"),
            "{}",
            &text[text.len() - 200..]
        );
        assert_eq!(parsed.message_id(), Some("b.1@gw"));
    }

    #[test]
    fn headers_over_the_limit_leave_the_mail_as_is() {
        let raw = composed(10_000);
        assert!(matches!(fit(&raw, Some(10)), Cow::Borrowed(_)));
    }
}
