//! Delivery to the upstream SMTP relay: the `[relay]` configuration, the pooled relay
//! client with transient/permanent failure classification, and the worker that drains
//! the outbound queue with retries, backoff and dead letters.

mod client;
mod config;
mod maildir;
mod shrink;
mod transport;
mod worker;

pub use client::{DeliverError, RelayClient};
pub use config::{RelayConfig, RelayKind, RelayTimeouts, RelayTls, RetryPolicy, StepTimeouts};
pub use maildir::MaildirOutbox;
pub use transport::Transport;
pub use worker::{
    decide, run_delivery, system_clock, Clock, DeliveryWorker, HeldOutcome, HeldOutcomes,
    OutboundItem, OutboundQueue, Outcome, QueueError,
};
