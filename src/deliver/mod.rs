//! Delivery to the upstream SMTP relay: the `[relay]` configuration, the pooled relay
//! client with transient/permanent failure classification, and the worker that drains
//! the outbound queue with retries, backoff and dead letters.

mod client;
mod config;
mod shrink;
mod worker;

pub use client::{DeliverError, RelayClient};
pub use config::{RelayConfig, RelayTimeouts, RelayTls, RetryPolicy, StepTimeouts};
pub use worker::{
    decide, run_delivery, system_clock, Clock, DeliveryWorker, OutboundItem, OutboundQueue,
    Outcome, QueueError,
};
