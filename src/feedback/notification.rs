//! Recognises a GLPI notification mail (raw bytes) and reads what it tells about a
//! ticket: its id, the GLPI Message-ID to thread later mail on, the event, our thread
//! tag in the title, and the ticket status — on GLPI 9.5, 10.0.0–10.0.6 and 10.0.7+,
//! from the Message-ID event, the subject label or the body's status line, in GLPI's
//! main languages (plus configured words).

use crate::mail::DecodedMail;
use crate::ticket::TicketStatus;
use regex::Regex;
use std::sync::OnceLock;

/// What a GLPI notification says about one ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlpiNotification {
    pub ticket_id: u64,
    /// The GLPI Message-ID to thread later mail on, with angle brackets: the one that
    /// GLPI version's collector recognises. 10.0.7+: the ticket's fixed
    /// `<GLPI_{uuid}-Ticket-{id}/new@host>` (the mail's own id for a new-ticket
    /// notification, In-Reply-To/References for later ones); 10.0.0–10.0.6 and 9.5,
    /// which have no fixed id: the mail's own Message-ID (their In-Reply-To value,
    /// `<GLPI-…-Ticket-N>`, is one no collector matches).
    pub glpi_message_id: Option<String>,
    /// The event: from the Message-ID on 10.0.7+ (`new`, `update`, `solved`, `closed`,
    /// `add_followup`, ...), else from the subject label (`new`, `solved`, `closed`,
    /// `add_followup`); `unknown` when neither says.
    pub event: String,
    /// Our thread tag (`ALERT-1f3a9c2e`, `MAIL-12`, `DIGEST-1700000000`) found in the
    /// ticket title, when there is one.
    pub thread_tag: Option<String>,
    /// The ticket's status at the event: from the event ([`status_for_event`]), else
    /// the subject label, else the body's `Status : …` line; `None` when none says.
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

/// The event value used when neither the Message-ID nor the subject tells it.
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

/// Words of GLPI's shipped translations (en, fr, de, es, it, pt_BR/pt_PT), lowercase.
/// Subject labels ("Ticket solved", "Ticket résolu", ...) and status names ("Solved",
/// "Résolu", ...) both contain them.
const SOLVED_WORDS: &[&str] = &[
    "solved",
    "résolu",
    "resolu",
    "gelöst",
    "geloest",
    "resuelto",
    "risolto",
    "solucionado",
    "resolvido",
];
const CLOSED_WORDS: &[&str] = &[
    "closed",
    "closing",
    "clos",
    "clôture",
    "cloture",
    "clôturé",
    "fermé",
    "geschlossen",
    "abgeschlossen",
    "cerrado",
    "cierre",
    "chiuso",
    "chiusura",
    "fechado",
    "fechamento",
    "encerrado",
];
/// Status names of the open statuses (new, processing, planned, pending).
const OPEN_WORDS: &[&str] = &[
    "new",
    "processing",
    "pending",
    "assigned",
    "planned",
    "nouveau",
    "en cours",
    "en attente",
    "neu",
    "in bearbeitung",
    "warten",
    "wartend",
    "nuevo",
    "en curso",
    "en espera",
    "pendiente",
    "nuovo",
    "in corso",
    "in attesa",
    "novo",
    "processando",
    "em atendimento",
    "pendente",
];
/// Subject labels of the new-ticket and follow-up events.
const NEW_TICKET_LABELS: &[&str] = &[
    "new ticket",
    "nouveau ticket",
    "neues ticket",
    "nuevo ticket",
    "nuevo caso",
    "nuovo ticket",
    "novo chamado",
    "novo ticket",
    "nova ocorrência",
];
const FOLLOWUP_LABELS: &[&str] = &[
    "new followup",
    "nouveau suivi",
    "neue antwort",
    "neue folgeaktion",
    "nuevo seguimiento",
    "nuovo seguito",
    "nuovo followup",
    "novo acompanhamento",
];
/// The label of the body's status line.
const STATUS_LABELS: &[&str] = &["status", "statut", "estado", "stato", "situação"];
/// A label saying the opposite ("Not solved tickets", "Solution rejected" are not solves).
const NEGATIONS: &[&str] = &[
    "not ",
    "non ",
    "nicht",
    "no ",
    "não",
    "rejected",
    "refus",
    "rechaz",
    "rifiut",
    "recus",
    "abgelehnt",
];

/// A GLPI ticket Message-ID (or reference) found in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GlpiMessageId {
    /// Without angle brackets.
    id: String,
    ticket_id: u64,
    event: Option<String>,
    /// A value some GLPI collector threads on (not a bare `GLPI-…-Ticket-N` reference).
    threadable: bool,
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

/// GLPI 10.0.0–10.0.6: `GLPI_{uuid}-Ticket-{id}.{ts}.{rand}@{host}`; GLPI 9.5:
/// `GLPI-Ticket-{id}.{ts}.{rand}@{host}` (before 9.2: `GLPI-{id}.{ts}.{rand}@{host}`).
fn legacy_id_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)GLPI(?:_[a-z0-9]+-Ticket-|-Ticket-|-)(\d+)\.\d+\.\d+@[^\s<>]+")
            .expect("static regex")
    })
}

/// The In-Reply-To of 10.0.0–10.0.6 (`<GLPI-{uuid}-Ticket-{id}>`) and 9.5
/// (`<GLPI-Ticket-{id}>`): names the ticket, but no collector threads on it.
fn reference_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)<(GLPI-(?:[a-z0-9]+-)?Ticket-(\d+))>").expect("static regex")
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

/// All GLPI ticket Message-IDs and references in one header value, in order.
fn glpi_ids_in(value: &str) -> Vec<GlpiMessageId> {
    let mut found = Vec::new();
    for caps in modern_id_regex().captures_iter(value) {
        if let Some(id) = ticket_number(&caps[1]) {
            found.push(GlpiMessageId {
                id: caps[0].to_owned(),
                ticket_id: id,
                event: Some(caps[2].to_ascii_lowercase()),
                threadable: true,
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
                    threadable: true,
                });
            }
        }
    }
    if found.is_empty() {
        for caps in reference_regex().captures_iter(value) {
            if let Some(id) = ticket_number(&caps[2]) {
                found.push(GlpiMessageId {
                    id: caps[1].to_owned(),
                    ticket_id: id,
                    event: None,
                    threadable: false,
                });
            }
        }
    }
    found
}

fn ticket_number(digits: &str) -> Option<u64> {
    digits.parse::<u64>().ok().filter(|n| *n > 0)
}

/// Reads GLPI notifications with one configuration: GLPI's subject tag and the words
/// (built in, plus configured ones) that mean solved or closed.
#[derive(Debug, Clone)]
pub struct NotificationReader {
    glpi_tag: String,
    prefix: Regex,
    solved_words: Vec<String>,
    closed_words: Vec<String>,
}

impl NotificationReader {
    /// `glpi_tag`: the ticket subject tag configured in GLPI (`GLPI` by default; empty
    /// accepts any). `solved_words` / `closed_words`: extra words (`[feedback]`).
    pub fn new(glpi_tag: &str, solved_words: &[String], closed_words: &[String]) -> Self {
        let words = |builtin: &[&str], extra: &[String]| -> Vec<String> {
            builtin
                .iter()
                .map(|w| (*w).to_owned())
                .chain(extra.iter().map(|w| w.trim().to_lowercase()))
                .filter(|w| !w.is_empty())
                .collect()
        };
        NotificationReader {
            glpi_tag: glpi_tag.to_owned(),
            prefix: subject_prefix_regex(glpi_tag),
            solved_words: words(SOLVED_WORDS, solved_words),
            closed_words: words(CLOSED_WORDS, closed_words),
        }
    }

    /// Tells whether a (decoded) mail is a GLPI ticket notification, and what it says.
    /// Message-IDs are read from the raw header values, so ids with `/` in them are
    /// seen exactly as GLPI wrote them.
    pub fn read(&self, mail: &DecodedMail) -> Result<GlpiNotification, NotGlpi> {
        let subject = mail.subject.as_str();
        let own = mail
            .header("message-id")
            .map(glpi_ids_in)
            .and_then(|ids| ids.into_iter().find(|m| m.threadable));
        let mut referenced = Vec::new();
        for name in ["in-reply-to", "references"] {
            if let Some(value) = mail.header(name) {
                referenced.extend(glpi_ids_in(value));
            }
        }

        let subject_match = self.prefix.captures(subject);
        let subject_ticket = match &subject_match {
            Some(caps) => Some(
                ticket_number(&caps[1]).ok_or_else(|| NotGlpi::BadTicketId(caps[1].to_owned()))?,
            ),
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
                    tag: self.glpi_tag.clone(),
                })
            }
        };

        let same_ticket = |m: &&GlpiMessageId| m.ticket_id == ticket_id && m.threadable;
        let glpi_message_id = own
            .iter()
            .chain(referenced.iter())
            .filter(same_ticket)
            .find(|m| m.is_new())
            .or_else(|| own.iter().find(same_ticket))
            .map(|m| format!("<{}>", m.id));
        let title = match &subject_match {
            Some(caps) => caps.get(0).map_or(subject, |whole| &subject[whole.end()..]),
            None => subject,
        };
        let label = subject_label(title);
        let event = own
            .as_ref()
            .and_then(|m| m.event.clone())
            .or_else(|| self.label_event(label).map(str::to_owned))
            .unwrap_or_else(|| UNKNOWN_EVENT.to_owned());
        let status = status_for_event(&event).or_else(|| self.status_line(&mail.body));
        let thread_tag = thread_tag_regex()
            .captures(title)
            .map(|caps| caps[1].to_owned());
        Ok(GlpiNotification {
            ticket_id,
            glpi_message_id,
            status,
            event,
            thread_tag,
        })
    }

    /// The event a subject label names (`Ticket solved` → `solved`, ...).
    fn label_event(&self, label: &str) -> Option<&'static str> {
        let label = label.to_lowercase();
        if label.is_empty() || NEGATIONS.iter().any(|n| label.contains(n)) {
            return None;
        }
        if contains_word(&label, &self.solved_words) {
            Some("solved")
        } else if contains_word(&label, &self.closed_words) {
            Some("closed")
        } else if NEW_TICKET_LABELS.iter().any(|l| label.contains(l)) {
            Some("new")
        } else if FOLLOWUP_LABELS.iter().any(|l| label.contains(l)) {
            Some("add_followup")
        } else {
            None
        }
    }

    /// The status of the body's first `Status : …` line (GLPI's default templates put
    /// it before the description, so alert text quoted below cannot fool it).
    fn status_line(&self, body: &str) -> Option<TicketStatus> {
        let value = body.lines().find_map(|line| {
            let (label, value) = line.split_once(':')?;
            let label = label.trim().trim_matches('\u{a0}').trim().to_lowercase();
            STATUS_LABELS
                .contains(&label.as_str())
                .then(|| value.trim().to_lowercase())
        })?;
        if value.is_empty() {
            None
        } else if starts_with_word(&value, &self.solved_words) {
            Some(TicketStatus::Solved)
        } else if starts_with_word(&value, &self.closed_words) {
            Some(TicketStatus::Closed)
        } else if starts_with_word(&value, OPEN_WORDS) {
            Some(TicketStatus::Open)
        } else {
            None
        }
    }
}

/// The label GLPI puts between the `[TAG #id]` prefix and the title: everything up to
/// our title's `[` (alertgate's titles start with their `[tag]`).
fn subject_label(after_prefix: &str) -> &str {
    match after_prefix.find('[') {
        Some(i) => after_prefix[..i].trim(),
        None => "",
    }
}

fn is_word_boundary(c: Option<char>) -> bool {
    c.is_none_or(|c| !c.is_alphanumeric())
}

/// `text` holds one of `words` as a whole word (case already folded).
fn contains_word<S: AsRef<str>>(text: &str, words: &[S]) -> bool {
    words.iter().any(|word| {
        let word = word.as_ref();
        text.match_indices(word).any(|(i, _)| {
            is_word_boundary(text[..i].chars().next_back())
                && is_word_boundary(text[i + word.len()..].chars().next())
        })
    })
}

/// `text` starts with one of `words`, followed by a word boundary.
fn starts_with_word<S: AsRef<str>>(text: &str, words: &[S]) -> bool {
    words.iter().any(|word| {
        text.strip_prefix(word.as_ref())
            .is_some_and(|rest| is_word_boundary(rest.chars().next()))
    })
}

/// Decodes `raw` and reads it with GLPI's tag and only the built-in words (the CLI,
/// tests); the pipeline reads the mail it already decoded.
pub fn parse_notification(raw: &[u8], glpi_tag: &str) -> Result<GlpiNotification, NotGlpi> {
    let mail = crate::mail::decode(raw).map_err(|_| NotGlpi::NotAMessage)?;
    NotificationReader::new(glpi_tag, &[], &[]).read(&mail)
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
        assert_eq!(n.event, "new", "from the subject label");
        assert_eq!(n.status, Some(TicketStatus::Open));
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
        assert_eq!(n.event, "new");
        let unlabelled = mail(
            &[("Message-ID", "<abc.124@mailer.example.test>".into())],
            "[GLPI #0000009] something",
        );
        assert_eq!(
            parse_notification(&unlabelled, "GLPI").unwrap().event,
            UNKNOWN_EVENT
        );
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

    // ---- Shapes of real notifications: GLPI 10.0.3 (captures), 9.5, 10.0.18 ----

    /// A notification laid out as GLPI's default ticket template (10.0.3 capture):
    /// text part with ` Status : …` before the description, an HTML part after it.
    fn glpi_mail(headers: &str, subject: &str, status_line: &str, description: &str) -> Vec<u8> {
        format!(
            "Date: Tue, 1 Dec 2026 20:02:53 +0000\r\nTo: Alertgate Gateway <alertgate@example.test>\r\n\
             From: GLPI <glpi@example.test>\r\nReply-To: GLPI <glpi@example.test>\r\n\
             Subject: {subject}\r\n{headers}\
             X-Mailer: PHPMailer 6.6.0 (https://github.com/PHPMailer/PHPMailer)\r\n\
             Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: OOF, DR, NDR, RN, NRN\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=\"b1_x\"\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n\
             --b1_x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             =-=-=-= To answer by email, write above this line =-=-=-=\r\n\r\n \r\n\
             \x20 URL : http://127.0.0.1:12580/index.php?redirect=ticket_1&noAUTO=1 \r\n\r\n\
             \x20Ticket: Description\r\n\r\n Title : x\r\n Requesters :  Alertgate Gateway  \r\n\
             \x20Request source : E-Mail\r\nAssociated item :\r\n\r\n\r\n\r\n {status_line}\r\n\r\n\
             \x20Urgency : Medium\r\n Description : {description}\r\n\r\nNumber of followups : 0\r\n\
             --b1_x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>{status_line}</p>\r\n--b1_x--\r\n"
        )
        .into_bytes()
    }

    const CAPTURE_UUID: &str = "taFTWrEqYdajXUmY74lU4KYInuwoHIUUgHUErWyY";
    const TITLE: &str = "[ALERT-87e08a01] CRITICAL srv-web-01 / Disk-/data: CRITICAL: Storage '/data' Usage Total: 48.20 GB";

    fn v10_0_3(event_label: &str, time: &str, status_line: &str) -> (Vec<u8>, String) {
        let own = format!("<GLPI_{CAPTURE_UUID}-Ticket-1.{time}.721197458@vm>");
        let raw = glpi_mail(
            &format!("Message-ID: {own}\r\nIn-Reply-To: <GLPI-{CAPTURE_UUID}-Ticket-1>\r\n"),
            &format!("[GLPI #0000001] {event_label} {TITLE}"),
            status_line,
            "CRITICAL: SRV-WEB-01 / DISK-/DATA",
        );
        (raw, own)
    }

    #[test]
    fn glpi_10_0_3_new_ticket_solved_and_followup() {
        let (raw, own) = v10_0_3("New ticket", "1796155371", "Status : New");
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(
            n,
            GlpiNotification {
                ticket_id: 1,
                glpi_message_id: Some(own),
                event: "new".into(),
                thread_tag: Some("ALERT-87e08a01".into()),
                status: Some(TicketStatus::Open),
            }
        );
        let (raw, own) = v10_0_3("Ticket solved", "1796155373", "Status : Solved");
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!((n.ticket_id, n.event.as_str()), (1, "solved"));
        assert_eq!(
            n.status,
            Some(TicketStatus::Solved),
            "the technician's solve is seen"
        );
        assert_eq!(n.glpi_message_id, Some(own), "threads with what GLPI sent");
        let (raw, _) = v10_0_3("New followup", "1796155378", "Status : New");
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.event, "add_followup");
        assert_eq!(n.status, Some(TicketStatus::Open), "from the status line");
    }

    #[test]
    fn the_in_reply_to_reference_alone_names_the_ticket_but_is_not_threaded_on() {
        let raw = glpi_mail(
            &format!("Message-ID: <x.1@mailer>\r\nIn-Reply-To: <GLPI-{CAPTURE_UUID}-Ticket-4>\r\n"),
            "Ticket solved: a custom subject without the prefix",
            "Status : Solved",
            "",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(n.ticket_id, 4);
        assert_eq!(n.glpi_message_id, None);
        assert_eq!(n.status, Some(TicketStatus::Solved));
    }

    #[test]
    fn glpi_9_5_shapes() {
        let own = "<GLPI-Ticket-31.1600000000.1234@glpi95.example.test>";
        let raw = glpi_mail(
            &format!("Message-ID: {own}\r\nIn-Reply-To: <GLPI-Ticket-31>\r\n"),
            "[GLPI #0000031] Closing of the ticket [ALERT-0a1b2c3d] host down",
            "Status : Closed",
            "",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!((n.ticket_id, n.event.as_str()), (31, "closed"));
        assert_eq!(n.status, Some(TicketStatus::Closed));
        assert_eq!(n.glpi_message_id.as_deref(), Some(own));
        // Without the subject prefix, the 9.5 Message-ID alone names the ticket.
        let raw = glpi_mail(
            &format!("Message-ID: {own}\r\n"),
            "x",
            "Status : Solved",
            "",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!((n.ticket_id, n.status), (31, Some(TicketStatus::Solved)));
    }

    #[test]
    fn glpi_10_0_18_event_ids() {
        let root = format!("<GLPI_{UUID}-Ticket-77/new@glpi.example.test>");
        let raw = glpi_mail(
            &format!(
                "Message-ID: <GLPI_{UUID}-Ticket-77/solved.1764620000.55@glpi.example.test>\r\n\
                 In-Reply-To: {root}\r\nReferences: {root}\r\n"
            ),
            "[GLPI #0000077] Ticket solved [ALERT-0a1b2c3d] x",
            "Status : Solved",
            "",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!((n.ticket_id, n.event.as_str()), (77, "solved"));
        assert_eq!(n.status, Some(TicketStatus::Solved));
        assert_eq!(n.glpi_message_id, Some(root));
    }

    #[test]
    fn solved_and_closed_in_six_languages() {
        for (label, line, status) in [
            ("Ticket solved", "Status : Solved", TicketStatus::Solved),
            ("Ticket résolu", "Statut : Résolu", TicketStatus::Solved),
            ("Clôture du ticket", "Statut : Clos", TicketStatus::Closed),
            ("Ticket gelöst", "Status : Gelöst", TicketStatus::Solved),
            (
                "Ticket geschlossen",
                "Status : Geschlossen",
                TicketStatus::Closed,
            ),
            ("Ticket resuelto", "Estado : Resuelto", TicketStatus::Solved),
            (
                "Cierre del ticket",
                "Estado : Cerrado",
                TicketStatus::Closed,
            ),
            ("Ticket risolto", "Stato : Risolto", TicketStatus::Solved),
            (
                "Chiusura del ticket",
                "Stato : Chiuso",
                TicketStatus::Closed,
            ),
            (
                "Chamado solucionado",
                "Status : Solucionado",
                TicketStatus::Solved,
            ),
            (
                "Fechamento do chamado",
                "Status : Fechado",
                TicketStatus::Closed,
            ),
        ] {
            let (raw, _) = v10_0_3(label, "1796155373", line);
            let n = parse_notification(&raw, "GLPI").unwrap();
            assert_eq!(n.status, Some(status), "label {label}");
            // The status line alone says it too (a custom subject).
            let raw = glpi_mail(
                "Message-ID: <GLPI_abc-Ticket-3.1.2@h>\r\n",
                "[GLPI #0000003] Mise à jour d'un ticket [ALERT-0a1b2c3d] x",
                line,
                "",
            );
            let n = parse_notification(&raw, "GLPI").unwrap();
            assert_eq!(n.status, Some(status), "line {line}");
            assert_eq!(n.event, UNKNOWN_EVENT);
        }
        for line in [
            "Statut : En cours (Attribué)",
            "Estado : En espera",
            "Stato : Nuovo",
            "Status : Neu",
        ] {
            let raw = glpi_mail(
                "Message-ID: <GLPI_abc-Ticket-3.1.2@h>\r\n",
                "[GLPI #0000003] x",
                line,
                "",
            );
            assert_eq!(
                parse_notification(&raw, "GLPI").unwrap().status,
                Some(TicketStatus::Open),
                "{line}"
            );
        }
    }

    #[test]
    fn configured_words_and_traps() {
        let raw = glpi_mail(
            "Message-ID: <GLPI_abc-Ticket-3.1.2@h>\r\n",
            "[GLPI #0000003] Melding opgelost [ALERT-0a1b2c3d] x",
            "Status : Opgelost",
            "",
        );
        assert_eq!(parse_notification(&raw, "GLPI").unwrap().status, None);
        let dutch = NotificationReader::new("GLPI", &["Opgelost".into()], &["Gesloten".into()]);
        let n = dutch.read(&crate::mail::decode(&raw).unwrap()).unwrap();
        assert_eq!(
            (n.event.as_str(), n.status),
            ("solved", Some(TicketStatus::Solved))
        );

        // A rejected solution is not a solve; the status line decides.
        let raw = glpi_mail(
            "Message-ID: <GLPI_abc-Ticket-3.1.2@h>\r\n",
            "[GLPI #0000003] Solution rejected [ALERT-0a1b2c3d] x",
            "Status : Processing (assigned)",
            "",
        );
        let n = parse_notification(&raw, "GLPI").unwrap();
        assert_eq!(
            (n.event.as_str(), n.status),
            (UNKNOWN_EVENT, Some(TicketStatus::Open))
        );

        // Alert text quoted in the description cannot override GLPI's status line.
        let raw = glpi_mail(
            "Message-ID: <GLPI_abc-Ticket-3.1.2@h>\r\n",
            "[GLPI #0000003] New followup [ALERT-0a1b2c3d] Status: Solved",
            "Status : New",
            "\r\nStatus : Solved",
        );
        assert_eq!(
            parse_notification(&raw, "GLPI").unwrap().status,
            Some(TicketStatus::Open)
        );
        // Words match whole words only: "Enclosed" is not closed.
        let raw = glpi_mail(
            "Message-ID: <GLPI_abc-Ticket-3.1.2@h>\r\n",
            "[GLPI #0000003] Enclosed [ALERT-0a1b2c3d] x",
            "",
            "",
        );
        assert_eq!(parse_notification(&raw, "GLPI").unwrap().status, None);
    }
}
