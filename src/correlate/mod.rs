//! Incident correlation: a pure state machine turning each normalised alert into
//! a decision (open, update, suppress, resolve, fold, digest) over open incidents.
//! No I/O and no clock: the pipeline passes `now` and persists what changed; the open
//! incidents not in the engine's cache come through an [`IncidentLookup`] it implements.

mod decision;
mod engine;
mod incident;
mod lookup;
mod policy;
pub mod reply;
mod state;

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;

pub use decision::{
    Action, Decision, DigestEntry, DigestMail, IgnoreReason, IncidentMail, MailKind,
    SuppressReason, UpdateReason,
};
pub use engine::{
    alert_key, apply_ticket_info, apply_ticket_info_with, correlate, correlate_with, tick,
    tick_with,
};
pub use incident::{
    thread_tag, EndReason, Ending, FoldedService, Incident, TicketStatus, TAG_PREFIX,
};
pub use lookup::{InMemory, IncidentLookup};
pub use policy::{CorrelationPolicy, PolicyError};
pub use state::{CorrelationState, PendingDigest, StormWindow, STORM_WINDOW_SECS};
