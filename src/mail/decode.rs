//! Turns raw mail bytes into the plain strings every stage reads: decoded subject, From,
//! headers, and one text body (MIME, transfer encodings and charsets via mail-parser;
//! HTML-only mails converted to line-oriented text here). The only MIME parser of mail
//! on its way in.

use super::DecodedMail;
use mail_parser::decoders::charsets::map::charset_decoder;
use mail_parser::decoders::html::add_html_token;
use mail_parser::{
    Address, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
};

/// Why a mail could not be turned into text at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an RFC 5322 message (no header section could be parsed)")]
    NotAMessage,
    #[error("message has neither a subject nor a text or HTML body")]
    NoText,
}

/// Every MIME parse of a mail on its way in goes through here, so a test can count them.
fn parse_inbound(raw: &[u8]) -> Option<Message<'_>> {
    #[cfg(test)]
    parses::record(raw);
    MessageParser::default().parse(raw)
}

fn parse_inbound_headers(raw: &[u8]) -> Option<Message<'_>> {
    #[cfg(test)]
    parses::record(raw);
    MessageParser::default().parse_headers(raw)
}

/// How often each mail was parsed on this thread (tests: a mail is decoded once).
#[cfg(test)]
pub(crate) mod parses {
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        static PARSES: RefCell<HashMap<Vec<u8>, usize>> = RefCell::new(HashMap::new());
    }

    pub(crate) fn record(raw: &[u8]) {
        PARSES.with(|p| *p.borrow_mut().entry(raw.to_vec()).or_default() += 1);
    }

    /// How often `raw` was parsed on this thread since the last `reset`.
    pub(crate) fn of(raw: &[u8]) -> usize {
        PARSES.with(|p| p.borrow().get(raw).copied().unwrap_or(0))
    }

    pub(crate) fn reset() {
        PARSES.with(|p| p.borrow_mut().clear());
    }
}

/// Decode a raw mail, once: every stage reads the result. Only a mail with no header
/// section at all is refused; one without any text is decoded (and has no text, see
/// [`DecodedMail::has_text`]). Never panics on arbitrary input.
pub fn decode(raw: &[u8]) -> Result<DecodedMail, DecodeError> {
    let message = parse_inbound(raw).ok_or(DecodeError::NotAMessage)?;
    if message.headers().is_empty() {
        return Err(DecodeError::NotAMessage);
    }
    let subject = message.subject().map(unfold).unwrap_or_default();
    let body = body_text(&message, raw).unwrap_or_default();
    let headers = raw_headers(&message, raw);
    Ok(DecodedMail {
        from: message.from().map(render_address).unwrap_or_default(),
        subject,
        headers,
        body,
        message_id: message.message_id().map(str::to_string),
        in_reply_to: first_message_id(message.in_reply_to()),
        cited: cited_in(&message),
    })
}

/// Raw header values, lossily decoded: a raw 8-bit (non UTF-8) header must still be
/// visible to `match.headers` conditions.
fn raw_headers(message: &Message<'_>, raw: &[u8]) -> Vec<(String, String)> {
    message
        .headers()
        .iter()
        .map(|header| {
            let value = raw
                .get(header.offset_start as usize..header.offset_end as usize)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            (header.name.as_str().to_ascii_lowercase(), unfold(&value))
        })
        .collect()
}

/// The Message-ID header without angle brackets.
pub fn message_id(raw: &[u8]) -> Option<String> {
    let message = parse_inbound_headers(raw)?;
    message.message_id().map(str::to_string)
}

/// The Message-IDs a mail cites (In-Reply-To, then References), without brackets, each once.
pub fn cited_message_ids(raw: &[u8]) -> Vec<String> {
    match parse_inbound_headers(raw) {
        Some(message) => cited_in(&message),
        None => Vec::new(),
    }
}

fn cited_in(message: &Message<'_>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for value in [message.in_reply_to(), message.references()] {
        let found: Vec<String> = match value {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(list) => list.iter().map(|t| t.to_string()).collect(),
            _ => Vec::new(),
        };
        for id in found {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

fn first_message_id(value: &HeaderValue<'_>) -> Option<String> {
    match value {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(list) => list.first().map(|t| t.to_string()),
        _ => None,
    }
}

fn render_address(address: &Address<'_>) -> String {
    let Some(addr) = address.first() else {
        return String::new();
    };
    match (addr.name(), addr.address()) {
        (Some(name), Some(email)) => format!("{name} <{email}>"),
        (None, Some(email)) => email.to_string(),
        (Some(name), None) => name.to_string(),
        (None, None) => String::new(),
    }
}

/// Joins folded header lines and trims.
fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut lines = value.split('\n');
    if let Some(first) = lines.next() {
        out.push_str(first.trim_end_matches('\r'));
    }
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
    }
    out.trim().to_string()
}

/// text/plain preferred; HTML converted when it is the only body.
fn body_text(message: &Message<'_>, raw: &[u8]) -> Option<String> {
    let part = message.text_part(0).or_else(|| message.html_part(0))?;
    let text = match &part.body {
        PartType::Text(text) => repair_charset(part, raw).unwrap_or_else(|| text.to_string()),
        PartType::Html(html) => {
            let html = repair_charset(part, raw).unwrap_or_else(|| html.to_string());
            return Some(html_to_text(&html));
        }
        _ => return None,
    };
    Some(normalize_newlines(&text))
}

/// bsd-mailx sends raw 8-bit bodies with no charset; when those bytes are not UTF-8
/// they are almost always Latin-1/Windows-1252, which mail-parser would mangle.
fn repair_charset(part: &MessagePart<'_>, raw: &[u8]) -> Option<String> {
    let declared = part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .is_some();
    if declared || part.encoding != mail_parser::Encoding::None {
        return None;
    }
    let bytes = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    if std::str::from_utf8(bytes).is_ok() {
        return None;
    }
    let decoder = charset_decoder(b"windows-1252")?;
    Some(decoder(bytes))
}

fn normalize_newlines(text: &str) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n")
    } else {
        text.to_string()
    }
}

const BLOCK_TAGS: &[&str] = &[
    "br",
    "p",
    "div",
    "tr",
    "td",
    "th",
    "li",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "hr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "title",
    "center",
    "blockquote",
    "pre",
    "section",
    "article",
    "header",
    "footer",
];
const SKIPPED_TAGS: &[&str] = &["style", "script", "head"];

/// HTML to text with one line per block element (cell, row, paragraph, `<br>`), so the
/// same `Field: value` regexes work on HTML mails. Entities are decoded, runs of
/// whitespace collapsed, empty lines dropped; a link's target follows its text as `<url>`.
pub fn html_to_text(html: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    let mut skipping: Option<&str> = None;
    let mut pending_href: Option<String> = None;
    let mut rest = html;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        if rest.starts_with('<') {
            let end = rest.find('>').unwrap_or(rest.len());
            let tag = Tag::parse(&rest[1..end]);
            rest = rest.get(end + 1..).unwrap_or("");
            if let Some(skipped) = skipping {
                if tag.closing && tag.name == skipped {
                    skipping = None;
                }
                continue;
            }
            if !tag.closing {
                if let Some(skipped) = SKIPPED_TAGS.iter().find(|t| **t == tag.name) {
                    if !tag.self_closing {
                        skipping = Some(skipped);
                    }
                    continue;
                }
            }
            if tag.name == "a" {
                if tag.closing {
                    if let Some(href) = pending_href.take() {
                        push_text(&mut line, &format!(" <{href}>"));
                    }
                } else {
                    pending_href = tag.href;
                }
            } else if BLOCK_TAGS.contains(&tag.name.as_str())
                || (tag.closing && tag.name == "span" && starts_with_tag(rest, "span"))
            {
                // Side-by-side spans are one field each (vROps notification templates:
                // `<span>Status: X</span><span>Resource: Y</span>`).
                flush_line(&mut lines, &mut line);
            }
            continue;
        }
        let text_end = rest.find('<').unwrap_or(rest.len());
        if skipping.is_none() {
            push_text(&mut line, &decode_entities(&rest[..text_end]));
        }
        rest = &rest[text_end..];
    }
    flush_line(&mut lines, &mut line);
    lines.join("\n")
}

/// Whether `rest` opens with the tag `name` (`<span>`, `<span class=…>`).
fn starts_with_tag(rest: &str, name: &str) -> bool {
    rest.strip_prefix('<')
        .and_then(|r| {
            r.get(..name.len())
                .filter(|n| n.eq_ignore_ascii_case(name))
                .map(|_| &r[name.len()..])
        })
        .is_some_and(|r| r.starts_with(['>', ' ', '\t', '\r', '\n', '/']))
}

fn push_text(line: &mut String, text: &str) {
    for c in text.chars() {
        if c.is_whitespace() && c != '\u{a0}' {
            if !line.is_empty() && !line.ends_with(' ') {
                line.push(' ');
            }
        } else {
            line.push(c);
        }
    }
}

fn flush_line(lines: &mut Vec<String>, line: &mut String) {
    let trimmed = line.replace('\u{a0}', " ");
    let trimmed = trimmed.trim();
    if !trimmed.is_empty() {
        lines.push(trimmed.to_string());
    }
    line.clear();
}

fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let candidate = &rest[amp..];
        let entity_end = candidate
            .char_indices()
            .take(12)
            .find(|(_, c)| *c == ';')
            .map(|(i, _)| i);
        match entity_end {
            Some(end)
                if candidate[1..end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '#') =>
            {
                add_html_token(&mut out, &candidate.as_bytes()[..=end], false);
                rest = &candidate[end + 1..];
            }
            _ => {
                out.push('&');
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    href: Option<String>,
}

impl Tag {
    fn parse(inner: &str) -> Tag {
        let closing = inner.starts_with('/');
        let body = inner.trim_start_matches('/');
        let name_end = body
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(body.len());
        let name = body[..name_end].to_ascii_lowercase();
        let href = (name == "a" && !closing)
            .then(|| attribute(&body[name_end..], "href"))
            .flatten();
        Tag {
            name,
            closing,
            self_closing: inner.ends_with('/'),
            href,
        }
    }
}

/// Value of an attribute, quoted with ' or " or unquoted (vROps writes `href=url`).
fn attribute(attrs: &str, wanted: &str) -> Option<String> {
    let lower = attrs.to_ascii_lowercase();
    let mut search_from = 0;
    while let Some(found) = lower[search_from..].find(wanted) {
        let start = search_from + found;
        search_from = start + wanted.len();
        let preceded_ok = start == 0 || lower[..start].ends_with(char::is_whitespace);
        let after = attrs[search_from..].trim_start();
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        if !preceded_ok {
            continue;
        }
        let value = value.trim_start();
        let raw = match value.chars().next() {
            Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
            _ => value.split(char::is_whitespace).next().unwrap_or(""),
        };
        return Some(decode_entities(raw));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_spans_are_one_line_each() {
        let html = "<html><span>ALERT_STATUS: Canceled</span><span>ALERT_IMPACT: health</span><p>Host: <span>h</span> down</p></html>";
        assert_eq!(
            html_to_text(html),
            "ALERT_STATUS: Canceled\nALERT_IMPACT: health\nHost: h down"
        );
    }

    #[test]
    fn html_cells_and_breaks_become_lines() {
        let html = "<html><head><style>p{x}</style></head><body><table><tr><td>Host:</td><td>srv&eacute;1</td></tr>\
                    <tr><td>State: CRITICAL</td></tr></table>a<br/>b &amp; c&#43;d<p>e&nbsp;f</p></body></html>";
        assert_eq!(
            html_to_text(html),
            "Host:\nsrvé1\nState: CRITICAL\na\nb & c+d\ne f"
        );
    }

    #[test]
    fn inline_tags_keep_words_apart_and_links_keep_targets() {
        let html = "<b>Problem name:</b> Disk full<br><a href='http://z/tr?id=1&amp;x=2'>Source</a> <a href=http://v/1>link</a>";
        assert_eq!(
            html_to_text(html),
            "Problem name: Disk full\nSource <http://z/tr?id=1&x=2> link <http://v/1>"
        );
    }

    #[test]
    fn bare_ampersand_and_unclosed_tag_do_not_panic() {
        assert_eq!(html_to_text("a & b <b"), "a & b");
        assert_eq!(html_to_text("<"), "");
        assert_eq!(html_to_text("<!-- x"), "");
    }

    #[test]
    fn latin1_raw_body_without_mime_headers_is_repaired() {
        let raw = b"From: nagios@x\nSubject: test\n\nD\xe9faillance disque\n";
        let mail = decode(raw).expect("decodes");
        assert_eq!(mail.body, "D\u{e9}faillance disque\n");
    }

    #[test]
    fn folded_subject_and_encoded_words_are_joined() {
        let raw = b"Subject: =?UTF-8?Q?Probl=C3=A8me?=\r\n =?UTF-8?Q?_disque?= and\r\n more\r\nMessage-ID: <a@b>\r\nIn-Reply-To: <c@d>\r\n\r\nbody\r\n";
        let mail = decode(raw).expect("decodes");
        assert_eq!(mail.subject, "Problème disque and more");
        assert_eq!(mail.message_id.as_deref(), Some("a@b"));
        assert_eq!(mail.in_reply_to.as_deref(), Some("c@d"));
        assert_eq!(mail.body, "body\n");
        assert_eq!(message_id(raw).as_deref(), Some("a@b"));
        let cited = b"In-Reply-To: <p@z>\r\nReferences: <o@z> <p@z>\r\nSubject: x\r\n\r\nb";
        assert_eq!(cited_message_ids(cited), ["p@z", "o@z"]);
    }

    #[test]
    fn raw_8bit_header_stays_visible_to_header_conditions() {
        let raw = b"Subject: x\r\nX-Site: Z\xfcrich\r\n\r\nbody\r\n";
        let mail = decode(raw).expect("decodes");
        assert_eq!(mail.header("x-site"), Some("Z\u{fffd}rich"));
    }
}
