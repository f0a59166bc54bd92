//! One incident: the life of an alert key from its first problem to its recovery,
//! with its thread tag, counters, GLPI ticket feedback and folded services.

use crate::alert::{Alert, AlertKey, AlertKind, State};
use serde::{Deserialize, Serialize};

pub use crate::ticket::TicketStatus;

/// A service problem recorded in its host's incident while the host was down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldedService {
    pub service: String,
    /// Latest state reported (ok once it recovered during the fold).
    pub state: State,
    pub output: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Notifications of this service folded so far.
    pub notifications: u64,
}

/// Why an incident stopped being open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Recovery received and mailed.
    Recovered,
    /// Recovery received; the ticket was already solved or closed, so nothing was mailed.
    RecoveredTicketDone,
    /// The ticket was closed and a new problem arrived: that problem opened a new incident.
    SupersededAfterTicketClosed,
}

/// When and why the incident ended; `None` while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    pub at: i64,
    pub reason: EndReason,
}

/// An incident, as persisted by the store (JSON) and handed to compose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    /// Stable thread tag, e.g. `ALERT-1f3a9c2e`.
    pub tag: String,
    pub key: AlertKey,
    pub kind: AlertKind,
    pub first_seen: i64,
    pub last_seen: i64,
    pub state: State,
    pub worst_state: State,
    /// Notifications received for this key (folded service ones excluded).
    pub notifications: u64,
    /// Notifications that were counted instead of mailed.
    pub suppressed: u64,
    /// Update mails sent (reminders included; open and resolve excluded).
    pub updates_sent: u64,
    /// Sequence number of the next outbound mail; the open mail is 0.
    pub next_seq: u64,
    /// When the last mail of this incident was emitted (reminder clock).
    pub last_mail_at: Option<i64>,
    /// False while the storm guard has listed the incident only in a digest:
    /// its next mail must be its open mail.
    pub announced: bool,
    /// The incident's alert waits in the pending digest.
    #[serde(default)]
    pub in_pending_digest: bool,
    pub last_alert: Alert,
    pub ticket_id: Option<u64>,
    pub glpi_message_id: Option<String>,
    #[serde(default)]
    pub ticket_status: TicketStatus,
    /// Services folded into this host incident, in order of first appearance.
    #[serde(default)]
    pub folded: Vec<FoldedService>,
    /// Service notifications folded into this incident.
    #[serde(default)]
    pub folded_notifications: u64,
    #[serde(default)]
    pub ended: Option<Ending>,
    /// Set on an incident the storm guard listed in a digest: the digest incident's tag.
    /// Its later updates and its recovery go to the digest's ticket, never to one of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_tag: Option<String>,
    /// This incident is a storm digest: its ticket stands for the incidents it holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_digest: bool,
    /// For a digest: incidents it holds that have not recovered yet.
    #[serde(default)]
    pub digest_members_open: u64,
}

impl Incident {
    /// Record what GLPI told us about this incident's ticket; `None` keeps what was known.
    pub fn record_ticket(
        &mut self,
        ticket_id: u64,
        glpi_message_id: Option<String>,
        status: Option<TicketStatus>,
    ) {
        self.ticket_id = Some(ticket_id);
        if let Some(message_id) = glpi_message_id {
            self.glpi_message_id = Some(message_id);
        }
        if let Some(status) = status {
            self.ticket_status = status;
        }
    }

    pub(crate) fn new(id: u64, tag: String, key: AlertKey, alert: &Alert, now: i64) -> Self {
        Incident {
            id,
            tag,
            key,
            kind: alert.kind,
            first_seen: now,
            last_seen: now,
            state: alert.state,
            worst_state: alert.state,
            notifications: 1,
            suppressed: 0,
            updates_sent: 0,
            next_seq: 0,
            last_mail_at: None,
            announced: false,
            in_pending_digest: false,
            last_alert: alert.clone(),
            ticket_id: None,
            glpi_message_id: None,
            ticket_status: TicketStatus::Unknown,
            folded: Vec::new(),
            folded_notifications: 0,
            ended: None,
            digest_tag: None,
            is_digest: false,
            digest_members_open: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.ended.is_none()
    }

    /// True while this is a host incident whose host is down: its services fold into it.
    pub fn folds_services(&self) -> bool {
        self.kind == AlertKind::Host
            && self.is_open()
            && matches!(self.state, State::Down | State::Unreachable)
    }

    /// Records one more notification for this key.
    pub(crate) fn observe(&mut self, alert: &Alert, now: i64) {
        self.notifications = self.notifications.saturating_add(1);
        self.last_seen = self.last_seen.max(now);
        self.last_alert = alert.clone();
    }

    /// Moves to `state`, keeping the worst state seen.
    pub(crate) fn set_state(&mut self, state: State) {
        self.state = state;
        if state.severity() > self.worst_state.severity() {
            self.worst_state = state;
        }
    }

    /// Hands out the sequence number of a mail being emitted now.
    pub(crate) fn take_seq(&mut self, now: i64) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.last_mail_at = Some(now);
        seq
    }

    /// Records a service notification received while this host incident folds.
    pub(crate) fn fold_service(&mut self, service: &str, alert: &Alert, now: i64) {
        self.folded_notifications = self.folded_notifications.saturating_add(1);
        match self.folded.iter_mut().find(|f| f.service == service) {
            Some(entry) => {
                entry.state = alert.state;
                entry.output = alert.output.clone();
                entry.last_seen = entry.last_seen.max(now);
                entry.notifications = entry.notifications.saturating_add(1);
            }
            None => self.folded.push(FoldedService {
                service: service.to_string(),
                state: alert.state,
                output: alert.output.clone(),
                first_seen: now,
                last_seen: now,
                notifications: 1,
            }),
        }
    }

    pub(crate) fn has_folded(&self, service: &str) -> bool {
        self.folded.iter().any(|f| f.service == service)
    }
}

/// Prefix of every thread tag.
pub const TAG_PREFIX: &str = "ALERT-";

/// Derives the thread tag of an incident: `ALERT-` + 8 lowercase hex digits from
/// a hash of key, id and first_seen. `taken` reports tags already in use; on a
/// clash (or a digits-only hex part, which could pass for a ticket number) the
/// hash is salted and retried, so the result stays deterministic for a given
/// set of open incidents.
pub fn thread_tag(
    key: &AlertKey,
    id: u64,
    first_seen: i64,
    mut taken: impl FnMut(&str) -> bool,
) -> String {
    for salt in 0u32..1024 {
        let hex = format!("{:08x}", tag_hash(key, id, first_seen, salt));
        let tag = format!("{TAG_PREFIX}{hex}");
        if hex.bytes().any(|b| b.is_ascii_alphabetic()) && !taken(&tag) {
            return tag;
        }
    }
    // Unreachable in practice (1024 clashes in a row); still a valid, letter-bearing tag.
    format!("{TAG_PREFIX}{:x}", 0xa000_0000_0000_0000u64 | id)
}

/// FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
fn tag_hash(key: &AlertKey, id: u64, first_seen: i64, salt: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for part in [&key.source, &key.host, &key.service] {
        feed(part.as_bytes());
        feed(&[0]);
    }
    feed(&id.to_le_bytes());
    feed(&first_seen.to_le_bytes());
    feed(&salt.to_le_bytes());
    ((hash >> 32) ^ hash) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str) -> AlertKey {
        AlertKey {
            source: "centreon".into(),
            host: host.into(),
            service: "cpu".into(),
        }
    }

    #[test]
    fn tag_is_deterministic_and_well_formed() {
        let a = thread_tag(&key("web01"), 7, 1_700_000_000, |_| false);
        let b = thread_tag(&key("web01"), 7, 1_700_000_000, |_| false);
        assert_eq!(a, b);
        assert!(a.starts_with(TAG_PREFIX));
        let hex = &a[TAG_PREFIX.len()..];
        assert_eq!(hex.len(), 8);
        assert!(hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, thread_tag(&key("web01"), 8, 1_700_000_000, |_| false));
        assert_ne!(a, thread_tag(&key("web02"), 7, 1_700_000_000, |_| false));
    }

    #[test]
    fn tag_never_digits_only_nor_hash_sign() {
        for id in 0..20_000u64 {
            let tag = thread_tag(&key("h"), id, 0, |_| false);
            let hex = &tag[TAG_PREFIX.len()..];
            assert!(!tag.contains('#'));
            assert!(hex.bytes().any(|b| b.is_ascii_alphabetic()), "{tag}");
        }
    }

    #[test]
    fn tag_avoids_taken_tags() {
        let first = thread_tag(&key("h"), 1, 0, |_| false);
        let second = thread_tag(&key("h"), 1, 0, |t| t == first);
        assert_ne!(first, second);
    }
}
