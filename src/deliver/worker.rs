//! The delivery worker: takes due mail from the outbound queue (implemented by the
//! store), sends it through the relay with bounded parallelism, one mail per incident
//! at a time, and records each outcome: sent, retry later, or dead letter.

use super::client::DeliverError;
use super::config::RetryPolicy;
use super::transport::Transport;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

/// One queued outbound mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundItem {
    pub id: i64,
    /// Mails with the same key (the incident tag) must reach the relay in queue order.
    pub order_key: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub raw: Vec<u8>,
    /// Attempts already made before this one (0 for a fresh mail).
    pub attempts: u32,
    /// Unix seconds.
    pub queued_at: i64,
    pub message_id: String,
}

/// A failure of the queue's storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue: {0}")]
pub struct QueueError(pub String);

impl QueueError {
    pub fn new(message: impl std::fmt::Display) -> QueueError {
        QueueError(message.to_string())
    }
}

/// The outbound queue as the worker needs it. Calls are blocking (SQLite); the worker
/// runs them on the blocking thread pool.
pub trait OutboundQueue: Send + Sync + 'static {
    /// Items due at `now`, at most one per order_key (the head of each key's queue), oldest first.
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboundItem>, QueueError>;
    fn mark_sent(&self, id: i64, now: i64) -> Result<(), QueueError>;
    /// The attempt failed; try again at `next_attempt_at`. Must increment the item's `attempts`.
    fn mark_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), QueueError>;
    fn mark_dead(&self, id: i64, error: &str) -> Result<(), QueueError>;
    /// Called when the item was delivered, so feedback (ticket lookup) can start. Default no-op.
    fn on_delivered(&self, _item: &OutboundItem) {}
    /// How often the items being sent must be renewed (`renew`) so no other gateway
    /// takes them meanwhile; `None` when the queue is not shared.
    fn renew_every(&self) -> Option<Duration> {
        None
    }
    /// Renews this gateway's hold on the items `ids` it is sending; how many of them
    /// another gateway has taken meanwhile.
    fn renew(&self, _ids: &[i64], _now: i64) -> Result<usize, QueueError> {
        Ok(0)
    }
}

/// The current time in Unix seconds; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    })
}

/// What happened to one mail, for the worker's bookkeeping and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent { reply: String },
    Retry { next_attempt_at: i64, error: String },
    Dead { error: String },
}

/// Decides the queue transition for a send result. Pure.
pub fn decide(
    item: &OutboundItem,
    result: Result<String, DeliverError>,
    policy: &RetryPolicy,
    now: i64,
) -> Outcome {
    match result {
        Ok(reply) => Outcome::Sent { reply },
        Err(err) if err.is_permanent() => Outcome::Dead {
            error: err.to_string(),
        },
        Err(err) if policy.expired(item.queued_at, now) => Outcome::Dead {
            error: format!(
                "gave up after {} attempts over {} s: {err}",
                item.attempts.saturating_add(1),
                now.saturating_sub(item.queued_at)
            ),
        },
        Err(err) => Outcome::Retry {
            next_attempt_at: policy.next_attempt_at(item.attempts.saturating_add(1), now),
            error: err.to_string(),
        },
    }
}

/// Wait between two looks at the queue when nothing wakes the worker.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long in-flight sends may finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// First wait before trying again to record an outcome the store refused; doubled per failure.
const RECORD_RETRY_INITIAL: Duration = Duration::from_millis(200);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(30);

/// An outcome the store could not record yet (disk full, read-only, lock held). Until it
/// is recorded its mail is not sent again: a store fault must never become a resend loop.
#[derive(Debug, Clone)]
struct UnrecordedOutcome {
    item: OutboundItem,
    outcome: Outcome,
    /// When the outcome happened: a late "sent" keeps the time of delivery.
    decided_at: i64,
    failures: u32,
    retry_at: Instant,
    /// Why the store refused it, the last time.
    error: String,
}

/// An outcome held in memory because the store refused it, as operators see it:
/// `queue list` asks the running gateway for these (they are in no store).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldOutcome {
    /// The outbound mail's id (`o{id}` in `queue list`).
    pub id: i64,
    pub message_id: String,
    pub incident: String,
    /// `sent`, `deferred` or `dead`: what the store will be told once it can be.
    pub outcome: String,
    /// When it happened, Unix seconds.
    pub at: i64,
    /// Tries to record it so far.
    pub record_attempts: u32,
    pub error: String,
}

impl UnrecordedOutcome {
    fn view(&self) -> HeldOutcome {
        HeldOutcome {
            id: self.item.id,
            message_id: self.item.message_id.clone(),
            incident: self.item.order_key.clone(),
            outcome: match self.outcome {
                Outcome::Sent { .. } => "sent",
                Outcome::Retry { .. } => "deferred",
                Outcome::Dead { .. } => "dead",
            }
            .to_string(),
            at: self.decided_at,
            record_attempts: self.failures,
            error: self.error.clone(),
        }
    }
}

/// A read-only view of the worker's held outcomes, for the HTTP listener.
#[derive(Clone, Default)]
pub struct HeldOutcomes(Arc<Unrecorded>);

impl HeldOutcomes {
    /// The held outcomes, by outbound id.
    pub fn list(&self) -> Vec<HeldOutcome> {
        let mut held: Vec<HeldOutcome> = self.0.lock().values().map(|h| h.view()).collect();
        held.sort_by_key(|h| h.id);
        held
    }
}

/// The outcomes held in memory, by outbound id; shared by the send tasks and the loop.
#[derive(Default)]
struct Unrecorded {
    outcomes: Mutex<HashMap<i64, UnrecordedOutcome>>,
}

impl Unrecorded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, UnrecordedOutcome>> {
        self.outcomes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps an outcome the store refused. Logged at ERROR once per fault (when the first
    /// outcome is held), not once per mail or per retry.
    fn hold(&self, mut item: OutboundItem, outcome: Outcome, decided_at: i64, error: String) {
        // The bytes are not needed to record an outcome; do not keep megabytes per mail.
        item.raw = Vec::new();
        let mut held = self.lock();
        if held.is_empty() {
            tracing::error!(
                id = item.id,
                error = %error,
                "cannot record delivery outcomes: holding them in memory and retrying; \
                 their mails are not sent again meanwhile"
            );
        } else {
            tracing::debug!(id = item.id, error = %error, "delivery outcome held");
        }
        held.insert(
            item.id,
            UnrecordedOutcome {
                item,
                outcome,
                decided_at,
                failures: 1,
                retry_at: Instant::now() + RECORD_RETRY_INITIAL,
                error,
            },
        );
    }

    fn contains(&self, id: i64) -> bool {
        self.lock().contains_key(&id)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// The held outcomes whose retry time has come.
    fn due(&self) -> Vec<UnrecordedOutcome> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|held| held.retry_at <= now)
            .cloned()
            .collect()
    }

    fn recorded(&self, id: i64) {
        let mut held = self.lock();
        if held.remove(&id).is_some() && held.is_empty() {
            tracing::info!("delivery outcomes recorded again: the store has recovered");
        }
    }

    fn failed_again(&self, id: i64, error: String) {
        tracing::debug!(id, error = %error, "delivery outcome still not recorded");
        if let Some(held) = self.lock().get_mut(&id) {
            held.error = error;
            held.failures = held.failures.saturating_add(1);
            let factor = 1u32
                .checked_shl(held.failures.min(16) - 1)
                .unwrap_or(u32::MAX);
            let wait = RECORD_RETRY_INITIAL
                .saturating_mul(factor)
                .min(RECORD_RETRY_MAX);
            held.retry_at = Instant::now() + wait;
        }
    }
}

/// The delivery worker; build it, then `run` it on its own task.
pub struct DeliveryWorker {
    queue: Arc<dyn OutboundQueue>,
    client: Transport,
    policy: RetryPolicy,
    wake: Arc<Notify>,
    clock: Clock,
    poll_interval: Duration,
    unrecorded: Arc<Unrecorded>,
    /// The queue could not be read at the last look: its failure is logged once.
    queue_failing: std::sync::atomic::AtomicBool,
}

impl DeliveryWorker {
    pub fn new(
        queue: Arc<dyn OutboundQueue>,
        client: impl Into<Transport>,
        policy: RetryPolicy,
        wake: Arc<Notify>,
    ) -> DeliveryWorker {
        DeliveryWorker {
            queue,
            client: client.into(),
            policy,
            wake,
            clock: system_clock(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            unrecorded: Arc::default(),
            queue_failing: Default::default(),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> DeliveryWorker {
        self.clock = clock;
        self
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> DeliveryWorker {
        self.poll_interval = interval;
        self
    }

    /// The outcomes this worker will hold in memory while the store refuses them.
    pub fn held_outcomes(&self) -> HeldOutcomes {
        HeldOutcomes(Arc::clone(&self.unrecorded))
    }

    /// Runs until `shutdown` turns true (or its sender is dropped), then lets in-flight
    /// sends finish for a short grace period. Wake it with `wake.notify_one()` after
    /// enqueueing mail.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let max_parallel = self.client.max_parallel().max(1);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // The order key of each in-flight send: its key's next mail must wait for it.
        let mut busy_keys: HashMap<tokio::task::Id, String> = HashMap::new();
        // The queue id of each in-flight send, whose lease is renewed while it lasts.
        let mut busy_ids: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut next_renewal = Instant::now();
        tracing::info!(
            relay = self.client.endpoint(),
            max_parallel,
            "delivery worker started"
        );

        loop {
            if *shutdown.borrow() {
                break;
            }
            self.record_held_outcomes().await;
            if let Some(every) = self.queue.renew_every() {
                if Instant::now() >= next_renewal {
                    self.renew_leases(busy_ids.values().copied().collect())
                        .await;
                    next_renewal = Instant::now() + every;
                }
            }
            let free = max_parallel.saturating_sub(in_flight.len());
            if free > 0 {
                let limit = free + busy_keys.len() + self.unrecorded.len();
                for item in self.fetch_due(limit).await {
                    if in_flight.len() >= max_parallel {
                        break;
                    }
                    if busy_keys.values().any(|key| *key == item.order_key) {
                        continue;
                    }
                    // Its outcome is known but not yet recorded: sending it again would
                    // be the resend loop of a full disk.
                    if self.unrecorded.contains(item.id) {
                        continue;
                    }
                    let (key, id) = (item.order_key.clone(), item.id);
                    let task = in_flight.spawn(self.job(item));
                    busy_keys.insert(task.id(), key);
                    busy_ids.insert(task.id(), id);
                }
            }

            tokio::select! {
                Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    let task_id = match joined {
                        Ok((task_id, ())) => task_id,
                        Err(err) => {
                            tracing::error!(error = %err, "delivery task failed");
                            err.id()
                        }
                    };
                    busy_keys.remove(&task_id);
                    busy_ids.remove(&task_id);
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }

        self.drain(in_flight).await;
        self.client.shutdown().await;
        tracing::info!("delivery worker stopped");
    }

    async fn drain(&self, mut in_flight: JoinSet<()>) {
        if in_flight.is_empty() {
            return;
        }
        let pending = in_flight.len();
        let finish = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
            // Unmarked items stay queued and are sent again after restart (at-least-once).
            tracing::warn!(pending, "shutdown: abandoning in-flight deliveries");
        }
    }

    /// Keeps the leases of the sends in flight: a send may outlast a lease (a slow relay's
    /// final reply), and the other gateway must not send the same mail meanwhile.
    async fn renew_leases(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        let queue = Arc::clone(&self.queue);
        let now = (self.clock)();
        match tokio::task::spawn_blocking(move || queue.renew(&ids, now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(lost)) => tracing::warn!(
                lost,
                "mails being sent were taken by another gateway (their lease ran out while the store was out of reach): they may arrive twice"
            ),
            // The next turn tries again; the lease has two more renewals' worth of time.
            Ok(Err(err)) => tracing::debug!(error = %err, "cannot renew the leases of mails being sent"),
            Err(err) => tracing::error!(error = %err, "lease renewal panicked"),
        }
    }

    /// Tries again to record the outcomes the store refused, each on its own backoff.
    async fn record_held_outcomes(&self) {
        let due = self.unrecorded.due();
        if due.is_empty() {
            return;
        }
        let queue = Arc::clone(&self.queue);
        let results = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|held| {
                    let result = record(&*queue, &held.item, &held.outcome, held.decided_at);
                    (held.item.id, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        match results {
            Ok(results) => {
                for (id, result) in results {
                    match result {
                        Ok(()) => self.unrecorded.recorded(id),
                        Err(err) => self.unrecorded.failed_again(id, err.to_string()),
                    }
                }
            }
            Err(err) => tracing::error!(error = %err, "recording held outcomes panicked"),
        }
    }

    async fn fetch_due(&self, limit: usize) -> Vec<OutboundItem> {
        let queue = Arc::clone(&self.queue);
        let now = (self.clock)();
        use std::sync::atomic::Ordering;
        match tokio::task::spawn_blocking(move || queue.due(now, limit)).await {
            Ok(Ok(items)) => {
                if self.queue_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("outbound queue readable again: delivery resumes");
                }
                items
            }
            // Once per fault, not once a poll: a store down for an hour is one line.
            Ok(Err(err)) if !self.queue_failing.swap(true, Ordering::Relaxed) => {
                tracing::error!(error = %err, "cannot read the outbound queue; nothing is sent until it can be");
                Vec::new()
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "outbound queue still unreadable");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "outbound queue read panicked");
                Vec::new()
            }
        }
    }

    /// Sends one item and records the outcome.
    fn job(&self, item: OutboundItem) -> impl std::future::Future<Output = ()> + Send + 'static {
        let queue = Arc::clone(&self.queue);
        let client = self.client.clone();
        let policy = self.policy.clone();
        let clock = Arc::clone(&self.clock);
        let unrecorded = Arc::clone(&self.unrecorded);
        async move {
            let started = std::time::Instant::now();
            let result = client
                .send(&item.envelope_from, &item.envelope_to, &item.raw)
                .await;
            if let Err(err) = &result {
                if err.is_maybe_delivered() {
                    tracing::warn!(
                        id = item.id,
                        message_id = %item.message_id,
                        incident = %item.order_key,
                        error = %err,
                        "possible duplicate: the relay may have the mail; it will be sent again"
                    );
                }
            }
            let outcome = decide(&item, result, &policy, clock());
            crate::http::metrics::metrics().delivery_outcome(&outcome, started.elapsed());
            log_outcome(&item, &outcome);
            let now = clock();
            let recorded = tokio::task::spawn_blocking(move || {
                let result = record(&*queue, &item, &outcome, now);
                (item, outcome, result)
            })
            .await;
            match recorded {
                Ok((_, _, Ok(()))) => {}
                Ok((item, outcome, Err(err))) => {
                    unrecorded.hold(item, outcome, now, err.to_string());
                }
                // The item is lost to this task; it stays due, at worst one more copy.
                Err(err) => tracing::error!(error = %err, "recording delivery outcome panicked"),
            }
        }
    }
}

fn record(
    queue: &dyn OutboundQueue,
    item: &OutboundItem,
    outcome: &Outcome,
    now: i64,
) -> Result<(), QueueError> {
    match outcome {
        Outcome::Sent { .. } => {
            queue.mark_sent(item.id, now)?;
            queue.on_delivered(item);
            Ok(())
        }
        Outcome::Retry {
            next_attempt_at,
            error,
        } => queue.mark_retry(item.id, *next_attempt_at, error),
        Outcome::Dead { error } => queue.mark_dead(item.id, error),
    }
}

fn log_outcome(item: &OutboundItem, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { reply } => tracing::info!(
            id = item.id,
            message_id = %item.message_id,
            incident = %item.order_key,
            attempts = item.attempts + 1,
            relay_reply = %reply,
            "delivered"
        ),
        Outcome::Retry {
            next_attempt_at,
            error,
        } => tracing::warn!(
            id = item.id,
            message_id = %item.message_id,
            incident = %item.order_key,
            attempts = item.attempts + 1,
            next_attempt_at,
            error = %error,
            "delivery deferred"
        ),
        Outcome::Dead { error } => tracing::error!(
            id = item.id,
            message_id = %item.message_id,
            incident = %item.order_key,
            attempts = item.attempts + 1,
            error = %error,
            "delivery failed for good: dead letter"
        ),
    }
}

/// Runs the delivery worker with the wall clock until `shutdown` turns true.
pub async fn run_delivery(
    queue: Arc<dyn OutboundQueue>,
    client: impl Into<Transport>,
    policy: RetryPolicy,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) {
    DeliveryWorker::new(queue, client, policy, wake)
        .run(shutdown)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(attempts: u32, queued_at: i64) -> OutboundItem {
        OutboundItem {
            id: 7,
            order_key: "INC-1".into(),
            envelope_from: "gw@example.org".into(),
            envelope_to: vec!["glpi@example.org".into()],
            raw: b"Subject: t\r\n\r\nx\r\n".to_vec(),
            attempts,
            queued_at,
            message_id: "<m1@gw>".into(),
        }
    }

    fn transient() -> DeliverError {
        DeliverError::Transient {
            code: Some(451),
            reason: "451 4.3.0 try later".into(),
        }
    }

    #[test]
    fn success_is_sent_with_reply() {
        let out = decide(&item(0, 0), Ok("250 ok".into()), &RetryPolicy::default(), 5);
        assert_eq!(
            out,
            Outcome::Sent {
                reply: "250 ok".into()
            }
        );
    }

    #[test]
    fn permanent_error_is_dead_at_once() {
        let err = DeliverError::Permanent {
            code: Some(550),
            reason: "550 5.7.1 no".into(),
        };
        let out = decide(&item(0, 0), Err(err), &RetryPolicy::default(), 5);
        assert!(
            matches!(out, Outcome::Dead { ref error } if error.contains("550 5.7.1 no")),
            "{out:?}"
        );
    }

    #[test]
    fn transient_error_backs_off_by_attempt_count() {
        let policy = RetryPolicy::default();
        let first = decide(&item(0, 100), Err(transient()), &policy, 100);
        assert!(
            matches!(
                first,
                Outcome::Retry {
                    next_attempt_at: 160,
                    ..
                }
            ),
            "{first:?}"
        );
        let third = decide(&item(2, 100), Err(transient()), &policy, 1000);
        assert!(
            matches!(third, Outcome::Retry { next_attempt_at: 1240, ref error } if error.contains("451"))
        );
    }

    #[test]
    fn transient_error_on_expired_item_is_dead() {
        let policy = RetryPolicy::default();
        let out = decide(&item(40, 0), Err(transient()), &policy, 172_800);
        assert!(
            matches!(out, Outcome::Dead { ref error } if error.contains("gave up after 41 attempts")),
            "{out:?}"
        );
    }
}
