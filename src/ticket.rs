//! GLPI ticket facts that cross stages: a ticket's status, a ticket id learned for one
//! of our incidents (the feedback stage finds it, the pipeline records it), and how long
//! an incident's news waits for that id (both stages pace themselves by it).

use serde::{Deserialize, Serialize};

/// What alertgate knows of the GLPI ticket of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    #[default]
    Unknown,
    Open,
    Solved,
    Closed,
}

impl TicketStatus {
    /// People consider the ticket finished: mailing it would reopen it (Solved)
    /// or start a new ticket (Closed).
    pub fn is_done(self) -> bool {
        matches!(self, TicketStatus::Solved | TicketStatus::Closed)
    }
}

/// How long an incident's news waits for its ticket id when no timeout is set: the
/// collector runs the mails still unanswered ahead of it take, and its own
/// ([`crate::config::FeedbackConfig::lookup_timeout_secs_for_backlog`]).
pub fn derived_ticket_wait(
    collector_interval_secs: i64,
    collector_batch: i64,
    backlog: u64,
) -> i64 {
    let pace = crate::config::FeedbackConfig {
        ticket_lookup_timeout_secs: None,
        collector_interval_secs: collector_interval_secs.max(1) as u64,
        collector_batch: collector_batch.max(1) as u64,
        ..crate::config::FeedbackConfig::default()
    };
    i64::try_from(pace.lookup_timeout_secs_for_backlog(backlog.saturating_add(1)))
        .unwrap_or(i64::MAX)
}

/// A ticket id learned for one of our incidents (from a notification or the API).
#[derive(Debug, Clone, PartialEq)]
pub struct TicketInfo {
    pub tag: String,
    pub ticket_id: u64,
    pub glpi_message_id: Option<String>,
    pub status: Option<TicketStatus>,
}
