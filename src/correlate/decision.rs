//! What one correlation step asks of the pipeline: mails to compose, lines to
//! log, and incident snapshots to persist.

use super::incident::{EndReason, FoldedService, Incident, TicketStatus};
use crate::alert::{Alert, NotificationType, State};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an update mail is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateReason {
    StateChange,
    Acknowledgement,
    Downtime,
    Flapping,
    Reminder,
    Custom,
    /// Worse state on an incident whose ticket people had solved: this mail reopens it.
    Reopen,
}

/// Kind of a mail about one incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MailKind {
    Open,
    Update { reason: UpdateReason },
    Resolve,
}

/// One outbound mail about one incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentMail {
    pub kind: MailKind,
    /// Sequence number of this mail within the incident (open = 0).
    pub seq: u64,
    /// The incident right after this mail was decided (tag, ticket info, counts).
    pub incident: Incident,
    /// The alert this mail reports.
    pub alert: Alert,
    /// Services folded into this host incident (empty otherwise).
    pub folded: Vec<FoldedService>,
    /// Set on an `Open` mail of an incident the storm guard had only listed in a
    /// digest: the event (update or resolve) that made it send its open mail now.
    pub deferred_event: Option<MailKind>,
    /// Set when the incident is held by a storm digest: the digest's tag. The mail is
    /// then news for the digest's ticket (`seq` counts in the digest's thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_digest: Option<String>,
}

impl IncidentMail {
    /// The incident whose ticket this mail is for: the digest for a digested incident.
    pub fn owner_tag(&self) -> &str {
        self.via_digest.as_deref().unwrap_or(&self.incident.tag)
    }
}

/// One alert held back by the storm guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub incident_id: u64,
    pub tag: String,
    pub at: i64,
    pub alert: Alert,
}

/// The open mail of a storm digest: the new incidents beyond the storm limit. The
/// digest is an incident of its own (`tag`), with a ticket learned like any other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestMail {
    /// The digest incident's thread tag.
    pub tag: String,
    /// Sequence number of this mail in the digest's thread (0: its open mail).
    pub seq: u64,
    /// When the first of these incidents was deferred (unix seconds).
    pub window_start: i64,
    /// Number of entries, for the subject line.
    pub count: usize,
    pub entries: Vec<DigestEntry>,
}

/// Why a notification was counted instead of mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum SuppressReason {
    /// Same state again.
    Repeat,
    /// `suppress_acknowledgement` policy.
    PolicyAcknowledgement,
    /// `suppress_downtime` policy.
    PolicyDowntime,
    /// `suppress_flapping` policy.
    PolicyFlapping,
    /// The ticket is solved/closed by people: mailing would reopen it.
    TicketDone { status: TicketStatus },
}

/// Why a notification led to nothing at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum IgnoreReason {
    /// A recovery for a key with no open incident (and no folded entry).
    RecoveryWithoutIncident,
    /// An acknowledgement, downtime, flapping or custom notification for a key with
    /// no open incident: there is no ticket to attach it to, and it states no problem.
    NoIncidentForNotice { notification_type: NotificationType },
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::RecoveryWithoutIncident => {
                f.write_str("recovery without an open incident")
            }
            IgnoreReason::NoIncidentForNotice { notification_type } => {
                write!(
                    f,
                    "{notification_type} notification without an open incident"
                )
            }
        }
    }
}

/// One thing the pipeline must do or log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Compose and enqueue this mail.
    Mail(Box<IncidentMail>),
    /// Compose and enqueue this digest mail.
    Digest(DigestMail),
    /// Counted, not mailed. `count` is the incident's suppressed total.
    Suppress {
        incident_id: u64,
        tag: String,
        count: u64,
        why: SuppressReason,
    },
    /// Nothing to do.
    Ignore { why: IgnoreReason },
    /// A service notification recorded in its down host's incident (no mail).
    Folded {
        host_incident_id: u64,
        host_tag: String,
        service: String,
        state: State,
        folded_notifications: u64,
    },
    /// New incident created but not announced (storm guard); its alert waits in the digest.
    Deferred {
        incident_id: u64,
        tag: String,
        pending_in_digest: usize,
    },
    /// An incident ended without a mail.
    EndedQuietly {
        incident_id: u64,
        tag: String,
        reason: EndReason,
    },
}

/// The result of one step. The pipeline persists every incident in `changed`
/// (final snapshots, at most one per id, ended ones included with `ended` set),
/// marks the ids in `ended` as no longer open, and handles `actions` in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub changed: Vec<Incident>,
    pub ended: Vec<u64>,
    /// Incidents whose digest went out: only their `in_pending_digest` flag changed
    /// (to false). Ids rather than snapshots: a storm digest can list tens of thousands.
    pub digested: Vec<u64>,
}

impl Decision {
    /// Records the latest snapshot of `incident`, replacing an earlier one of the same id.
    pub(crate) fn record(&mut self, incident: &Incident) {
        match self.changed.iter_mut().find(|c| c.id == incident.id) {
            Some(slot) => *slot = incident.clone(),
            None => self.changed.push(incident.clone()),
        }
    }

    pub(crate) fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    /// The mails of this step, in order.
    pub fn mails(&self) -> impl Iterator<Item = &IncidentMail> {
        self.actions.iter().filter_map(|a| match a {
            Action::Mail(m) => Some(m.as_ref()),
            _ => None,
        })
    }

    /// Nothing to record and nothing to send.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
            && self.changed.is_empty()
            && self.ended.is_empty()
            && self.digested.is_empty()
    }

    /// The digests of this step, in order.
    pub fn digests(&self) -> impl Iterator<Item = &DigestMail> {
        self.actions.iter().filter_map(|a| match a {
            Action::Digest(d) => Some(d),
            _ => None,
        })
    }
}
