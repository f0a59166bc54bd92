//! The mail as it crosses stages: an inbound mail decoded once (rules, correlation,
//! compose and feedback all read the same [`DecodedMail`]), and what an outbound mail is
//! ([`OutboundKind`], stored with it by the stage that composed it) so that its delivery
//! is an event ([`Delivered`]) the other stages can act on.

mod decode;

#[cfg(test)]
pub(crate) use decode::parses;
pub use decode::{cited_message_ids, decode, html_to_text, message_id, DecodeError};

use serde::{Deserialize, Serialize};

/// A mail reduced to what the stages look at. Line endings in `body` are always `\n`.
#[derive(Debug, Clone, Default)]
pub struct DecodedMail {
    pub from: String,
    pub subject: String,
    /// (lower-case name, unfolded raw value) in mail order.
    pub headers: Vec<(String, String)>,
    /// The text part, else the HTML part as line-oriented text; empty when neither.
    pub body: String,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    /// The Message-IDs it cites (In-Reply-To, then References), each once.
    pub cited: Vec<String>,
}

impl DecodedMail {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether there is anything to read: a subject or a non-blank body.
    pub fn has_text(&self) -> bool {
        !self.subject.is_empty() || !self.body.trim().is_empty()
    }
}

/// What an outbound mail is to GLPI, decided by the stage that composed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundKind {
    /// The first mail of an incident (or of a storm digest): it opens a ticket.
    Open,
    /// News for an incident's ticket (an update, a merge of updates, a recovery).
    News,
    /// A mail no rule matched, forwarded to a ticket of its own that no incident follows.
    Unmatched,
}

impl OutboundKind {
    pub const ALL: [OutboundKind; 3] = [
        OutboundKind::Open,
        OutboundKind::News,
        OutboundKind::Unmatched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboundKind::Open => "open",
            OutboundKind::News => "news",
            OutboundKind::Unmatched => "unmatched",
        }
    }

    pub fn parse(s: &str) -> Option<OutboundKind> {
        OutboundKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Once delivered, GLPI makes a ticket of it whose id the incident needs.
    pub fn opens_incident_ticket(self) -> bool {
        self == OutboundKind::Open
    }
}

impl std::fmt::Display for OutboundKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A mail the relay accepted: what it was and whose (the incident tag it was queued
/// under), as its producer stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The incident (or digest, or forwarded mail) the mail is for.
    pub tag: String,
    pub kind: OutboundKind,
    /// Unix seconds.
    pub at: i64,
}

impl Delivered {
    /// Whether this delivery opened a ticket whose id the incident now waits for.
    pub fn opens_incident_ticket(&self) -> bool {
        self.kind.opens_incident_ticket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_kinds_round_trip() {
        for kind in OutboundKind::ALL {
            assert_eq!(OutboundKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(OutboundKind::parse("bogus"), None);
    }

    /// Mail on its way in is MIME-parsed here only; the parsers elsewhere read mail
    /// alertgate composed (delivery's size check, `mail_text`) or a mailbox before it is
    /// spooled (`replay`'s dates, `inject`'s envelope), or are tests of compose.
    #[test]
    fn only_the_model_parses_inbound_mail() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let allowed = [
            root.join("mail/decode.rs"),
            root.join("deliver/shrink.rs"),
            root.join("cli/inject.rs"),
            root.join("replay.rs"),
            // Tests read the mail compose made.
            root.join("compose/tests.rs"),
        ];
        let parser = concat!("Message", "Parser");
        let mut offenders = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !allowed.contains(&path)
                    && std::fs::read_to_string(&path)
                        .expect("a source file")
                        .contains(parser)
                {
                    offenders.push(path.display().to_string());
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "mail parsed outside src/mail/: {offenders:?}"
        );
    }
}
