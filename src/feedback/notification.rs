//! Recognises a GLPI notification mail (raw bytes) and reads what it tells about a
//! ticket: its id, GLPI's fixed Message-ID for the ticket, the event, our thread tag
//! in the title, and the ticket status the event implies.

use crate::correlate::TicketStatus;
use mail_parser::{HeaderName, Message, MessageParser};
use regex::Regex;
use std::sync::OnceLock;

/// What a GLPI notification says about one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlpiNotification {
    pub ticket_id: u64,
    /// GLPI's Message-ID for the ticket, with angle brackets, to thread later mail on:
    /// the fixed `<GLPI_{uuid}-Ticket-{id}/new@host>` when the mail names it (its own
    /// Message-ID for a new-ticket notification, In-Reply-To/References for later
    /// ones); otherwise (GLPI 10.0.0–10.0.6, which has no `/new` id) the mail's own
    /// GLPI Message-ID, which the collector matches just as well.
    pub glpi_message_id: Option<String>,
    /// The event from the Message-ID (`new`, `update`, `solved`, `closed`,
    /// `add_followup`, ...); `unknown` for the 10.0.0–10.0.6 shape that has none.
    pub event: String,
    /// Our thread tag (`ALERT-1f3a9c2e`, `MAIL-12`, `DIGEST-1700000000`) found in the
    /// ticket title, when there is one.
    pub thread_tag: Option<String>,
    /// See [`status_for_event`].
    pub status: Option<TicketStatus>,
}

/// Why a mail is not a usable GLPI notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotGlpi {
    #[error("not an RFC 5322 message")]
    NotAMessage,
    #[error("neither a `[{tag} #id]` subject prefix nor a GLPI ticket Message-ID")]
    NoTicketReference { tag: String },
    #[error("subject names ticket {subject} but the GLPI Message-ID names ticket {message_id}")]
    TicketMismatch { subject: u64, message_id: u64 },
    #[error("ticket id `{0}` is not a valid number")]
    BadTicketId(String),
}

/// The event value used when the Message-ID carries none (GLPI 10.0.0–10.0.6).
pub const UNKNOWN_EVENT: &str = "unknown";

/// The ticket status an event implies; `None` means "keep what was known".
/// - `new`, `rejectsolution` (the requester refused the solution) → Open;
/// - `solved` → Solved; `closed` → Closed;
/// - `delete` → Closed: a trashed ticket still takes follow-ups nobody sees, so it
///   must be treated as finished and the next problem must open a new ticket;
/// - anything else (`update`, `add_followup`, `add_task`, ...) → `None`: those events
///   do not say whether the status changed.
pub fn status_for_event(event: &str) -> Option<TicketStatus> {
    match event {
        "new" | "rejectsolution" => Some(TicketStatus::Open),
        "solved" => Some(TicketStatus::Solved),
        "closed" | "delete" => Some(TicketStatus::Closed),
        _ => None,
    }
}

/// A GLPI Message-ID found in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GlpiMessageId {
    /// Without angle brackets.
    id: String,
    ticket_id: u64,
    event: Option<String>,
}

impl GlpiMessageId {
    fn is_new(&self) -> bool {
        self.event.as_deref() == Some("new")
    }
}

/// GLPI >= 10.0.7: `GLPI_{uuid}-Ticket-{id}/{event}[.{ts}.{rand}]@{host}`.
fn modern_id_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)GLPI_[a-z0-9]+-Ticket-(\d+)/([a-z_]+)(?:\.\d+\.\d+)?@[^\s<>]+")
            .expect("static regex")
    })
}

/// GLPI 10.0.0–10.0.6: `GLPI_{uuid}-Ticket-{id}.{ts}.{rand}@{host}`.
fn legacy_id_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)GLPI_[a-z0-9]+-Ticket-(\d+)\.\d+\.\d+@[^\s<>]+").expect("static regex")
    })
}

fn thread_tag_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\b(ALERT-[0-9a-f]{8}|MAIL-\d+|DIGEST-\d+)\b").expect("static regex")
    })
}

/// `[TAG #0000123] ` with the configured tag, or any tag when `glpi_tag` is empty.
fn subject_prefix_regex(glpi_tag: &str) -> Regex {
    let tag = if glpi_tag.trim().is_empty() {
        r"\S+".to_owned()
    } else {
        regex::escape(glpi_tag.trim())
    };
    Regex::new(&format!(r"\[{tag} #0*(\d+)\]\s*")).expect("escaped tag makes a valid regex")
}

/// All GLPI ticket Message-IDs in one header value, in order of appearance.
fn glpi_ids_in(value: &str) -> Vec<GlpiMessageId> {
    let mut found = Vec::new();
    for caps in modern_id_regex().captures_iter(value) {
        if let Some(id) = ticket_number(&caps[1]) {
            found.push(GlpiMessageId {
                id: caps[0].to_owned(),
                ticket_id: id,
                event: Some(caps[2].to_ascii_lowercase()),
            });
        }
    }
    if found.is_empty() {
        for caps in legacy_id_regex().captures_iter(value) {
            if let Some(id) = ticket_number(&caps[1]) {
                found.push(GlpiMessageId {
                    id: caps[0].to_owned(),
                    ticket_id: id,
                    event: None,
                });
            }
        }
    }
    found
}

fn ticket_number(digits: &str) -> Option<u64> {
    digits.parse::<u64>().ok().filter(|n| *n > 0)
}

/// The raw (unparsed, possibly folded) value of a header, so ids with `/` in them
/// are seen exactly as GLPI wrote them.
fn raw_header<'a>(message: &'a Message<'a>, name: HeaderName<'static>) -> Option<&'a str> {
    message.header_raw(name)
}

/// Parses a mail and tells whether it is a GLPI ticket notification. `glpi_tag` is
/// the ticket subject tag configured in GLPI (`GLPI` by default); empty accepts any.
pub fn parse_notification(raw: &[u8], glpi_tag: &str) -> Result<GlpiNotification, NotGlpi> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or(NotGlpi::NotAMessage)?;
    if message.headers().is_empty() {
        return Err(NotGlpi::NotAMessage);
    }
    let subject = message.subject().unwrap_or_default();
    let own = raw_header(&message, HeaderName::MessageId)
        .map(glpi_ids_in)
        .and_then(|ids| ids.into_iter().next());
    let mut referenced = Vec::new();
    for name in [HeaderName::InReplyTo, HeaderName::References] {
        if let Some(value) = raw_header(&message, name) {
            referenced.extend(glpi_ids_in(value));
        }
    }

    let prefix = subject_prefix_regex(glpi_tag);
    let subject_match = prefix.captures(subject);
    let subject_ticket = match &subject_match {
        Some(caps) => {
            Some(ticket_number(&caps[1]).ok_or_else(|| NotGlpi::BadTicketId(caps[1].to_owned()))?)
        }
        None => None,
    };
    let id_ticket = own
        .as_ref()
        .map(|m| m.ticket_id)
        .or_else(|| referenced.first().map(|m| m.ticket_id));

    let ticket_id = match (subject_ticket, id_ticket) {
        (Some(s), Some(m)) if s != m => {
            return Err(NotGlpi::TicketMismatch {
                subject: s,
                message_id: m,
            })
        }
        (Some(s), _) => s,
        (None, Some(m)) => m,
        (None, None) => {
            return Err(NotGlpi::NoTicketReference {
                tag: glpi_tag.to_owned(),
            })
        }
    };

    let same_ticket = |m: &&GlpiMessageId| m.ticket_id == ticket_id;
    let glpi_message_id = own
        .iter()
        .chain(referenced.iter())
        .filter(same_ticket)
        .find(|m| m.is_new())
        .or_else(|| own.iter().find(same_ticket))
        .map(|m| format!("<{}>", m.id));
    let event = own
        .as_ref()
        .and_then(|m| m.event.clone())
        .unwrap_or_else(|| UNKNOWN_EVENT.to_owned());
    let title = match &subject_match {
        Some(caps) => caps.get(0).map_or(subject, |whole| &subject[whole.end()..]),
        None => subject,
    };
    let thread_tag = thread_tag_regex()
        .captures(title)
        .map(|caps| caps[1].to_owned());
    Ok(GlpiNotification {
        ticket_id,
        glpi_message_id,
        status: status_for_event(&event),
        event,
        thread_tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "65f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9";

    fn mail(headers: &[(&str, String)], subject: &str) -> Vec<u8> {
        let mut text = String::from(
            "Date: Tue, 14 May 2024 10:00:00 +0200\r\n\
             From: GLPI <glpi@example.test>\r\n\
             Reply-To: GLPI <glpi@example.test>\r\n\
             To: alertgate <alertgate@example.test>\r\n\
             Auto-Submitted: auto-generated\r\n\
             X-Auto-Response-Suppress: OOF, DR, NDR, RN, NRN\r\n\
             MIME-Version: 1.0\r\n",
        );
        text.push_str(&format!("Subject: {subject}\r\n"));
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str(
            "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
             --b1\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nURL : https://glpi.example.test/front/ticket.form.php?id=123\r\n\
             --b1\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n<p>Ticket</p>\r\n--b1--\r\n",
        );
        text.into_bytes()
    }

    fn new_id(ticket: u64) -> String {
        format!("<GLPI_{UUID}-Ticket-{ticket}/new@glpi.example.test>")
    }

    #[test]
    fn new_ticket_notification() {
        let raw = mail(
            &[("Message-ID", new_id(123))],
            "[GLPI #0000123] New ticket [ALERT-1f3a9c2e] CRITICAL web01/disk: full",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(
            n,
            GlpiNotification {
                ticket_id: 123,
                glpi_message_id: Some(new_id(123)),
                event: "new".into(),
                thread_tag: Some("ALERT-1f3a9c2e".into()),
                status: Some(TicketStatus::Open),
            }
        );
    }

    #[test]
    fn solved_notification_points_back_to_the_new_id() {
        let raw = mail(
            &[
                (
                    "Message-ID",
                    format!("<GLPI_{UUID}-Ticket-123/solved.1715680000.482913@glpi.example.test>"),
                ),
                ("In-Reply-To", new_id(123)),
                ("References", new_id(123)),
            ],
            "[GLPI #0000123] Ticket solved [ALERT-1f3a9c2e] CRITICAL web01/disk: full",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.ticket_id, 123);
        assert_eq!(n.event, "solved");
        assert_eq!(n.status, Some(TicketStatus::Solved));
        assert_eq!(n.glpi_message_id, Some(new_id(123)));
        assert_eq!(n.thread_tag.as_deref(), Some("ALERT-1f3a9c2e"));
    }

    #[test]
    fn localized_closed_notification_with_custom_tag() {
        let raw = mail(
            &[
                (
                    "Message-ID",
                    format!("<GLPI_{UUID}-Ticket-42/closed.1715680000.1@glpi.example.test>"),
                ),
                ("References", new_id(42)),
            ],
            "=?UTF-8?Q?[SUPPORT_#0000042]_Cl=C3=B4ture_du_ticket_[MAIL-17]_Unmatched?=",
        );
        let n = parse_notification(&raw, "SUPPORT").unwrap();
        assert_eq!(n.ticket_id, 42);
        assert_eq!(n.status, Some(TicketStatus::Closed));
        assert_eq!(n.thread_tag.as_deref(), Some("MAIL-17"));
        assert_eq!(n.glpi_message_id, Some(new_id(42)));
        // The configured tag is required when given...
        let other_tag = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(
            other_tag.ticket_id, 42,
            "Message-ID alone still identifies the ticket"
        );
        // ...and any tag is accepted when none is configured.
        assert_eq!(parse_notification(&raw, "").unwrap().ticket_id, 42);
    }

    #[test]
    fn followup_event_keeps_status_unknown() {
        let raw = mail(
            &[
                (
                    "Message-ID",
                    format!("<GLPI_{UUID}-Ticket-7/add_followup.1715680000.99@glpi.example.test>"),
                ),
                ("In-Reply-To", new_id(7)),
            ],
            "[GLPI #0000007] New followup [DIGEST-1715680000] 12 alerts",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.event, "add_followup");
        assert_eq!(n.status, None);
        assert_eq!(n.thread_tag.as_deref(), Some("DIGEST-1715680000"));
    }

    #[test]
    fn legacy_message_id_shape_is_accepted() {
        let own = format!("<GLPI_{UUID}-Ticket-55.1680000000.123456@glpi.example.test>");
        let raw = mail(
            &[("Message-ID", own.clone())],
            "[GLPI #0000055] New ticket [ALERT-0a1b2c3d] host down",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.ticket_id, 55);
        assert_eq!(n.event, UNKNOWN_EVENT);
        assert_eq!(n.status, None);
        assert_eq!(n.glpi_message_id, Some(own));
    }

    #[test]
    fn subject_only_notification() {
        let raw = mail(
            &[("Message-ID", "<abc.123@mailer.example.test>".into())],
            "[GLPI #0000009] New ticket [ALERT-0a1b2c3d] x",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.ticket_id, 9);
        assert_eq!(n.glpi_message_id, None);
        assert_eq!(n.event, UNKNOWN_EVENT);
    }

    #[test]
    fn new_ticket_for_a_closed_one_uses_the_leftmost_prefix() {
        let raw = mail(
            &[("Message-ID", new_id(124))],
            "[GLPI #0000124] New ticket [GLPI #0000123] [ALERT-1f3a9c2e] CRITICAL",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.ticket_id, 124);
        assert_eq!(n.thread_tag.as_deref(), Some("ALERT-1f3a9c2e"));
    }

    #[test]
    fn mismatched_ticket_ids_are_refused() {
        let raw = mail(&[("Message-ID", new_id(8))], "[GLPI #0000009] New ticket x");
        assert_eq!(
            parse_notification(&raw, "GLPI"),
            Err(NotGlpi::TicketMismatch {
                subject: 9,
                message_id: 8
            })
        );
    }

    #[test]
    fn ordinary_mail_is_not_glpi() {
        let raw = mail(
            &[("Message-ID", "<x.1@centreon.example.test>".into())],
            "** PROBLEM Service Alert: web01/disk is CRITICAL **",
        );
        assert!(matches!(
            parse_notification(&raw, "GLPI"),
            Err(NotGlpi::NoTicketReference { .. })
        ));
        assert_eq!(parse_notification(b"", "GLPI"), Err(NotGlpi::NotAMessage));
        assert!(parse_notification(b"\xff\xfe garbage", "GLPI").is_err());
        let zero = mail(&[], "[GLPI #0000000] New ticket x");
        assert_eq!(
            parse_notification(&zero, "GLPI"),
            Err(NotGlpi::BadTicketId("0".into()))
        );
    }

    #[test]
    fn folded_references_are_read() {
        let raw = mail(
            &[
                (
                    "Message-ID",
                    format!("<GLPI_{UUID}-Ticket-5/update.1.2@glpi.example.test>"),
                ),
                ("References", format!("<other@x.test>\r\n {}", new_id(5))),
            ],
            "[GLPI #0000005] Update of a ticket [ALERT-aaaaaaaa]",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.glpi_message_id, Some(new_id(5)));
        assert_eq!(n.event, "update");
    }

    #[test]
    fn event_statuses() {
        assert_eq!(status_for_event("new"), Some(TicketStatus::Open));
        assert_eq!(status_for_event("rejectsolution"), Some(TicketStatus::Open));
        assert_eq!(status_for_event("solved"), Some(TicketStatus::Solved));
        assert_eq!(status_for_event("closed"), Some(TicketStatus::Closed));
        assert_eq!(status_for_event("delete"), Some(TicketStatus::Closed));
        assert_eq!(status_for_event("add_task"), None);
    }
}
