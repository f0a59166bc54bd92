//! Incident correlation: a pure state machine turning each normalised alert into
//! a decision (open, update, suppress, resolve, fold, digest) over open incidents.
//! No I/O and no clock: the pipeline passes `now` and persists what changed.

mod decision;
mod engine;
mod incident;
mod policy;
pub mod reply;
mod state;

#[cfg(test)]
mod tests;

pub use decision::{
    Action, Decision, DigestEntry, DigestMail, IgnoreReason, IncidentMail, MailKind,
    SuppressReason, UpdateReason,
};
pub use engine::{alert_key, apply_ticket_info, correlate, tick};
pub use incident::{
    thread_tag, EndReason, Ending, FoldedService, Incident, TicketStatus, TAG_PREFIX,
};
pub use policy::{CorrelationPolicy, PolicyError};
pub use state::{CorrelationState, StormWindow};
