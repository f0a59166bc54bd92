//! The delivery worker against an in-memory outbound queue and the recording relay:
//! per-incident order, no duplicates, retries with backoff, dead letters, shutdown.

mod support;

use alertgate::deliver::{
    DeliveryWorker, OutboundItem, OutboundQueue, QueueError, RelayClient, RelayConfig, RelayTls,
    RetryPolicy,
};
use alertgate::mail::{Delivered, OutboundKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::relay::{RecordingRelay, RelayMode};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const T0: i64 = 1_700_000_000;

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Queued { next_attempt_at: i64 },
    Sent { at: i64 },
    Dead { error: String },
}

#[derive(Debug, Clone)]
struct Row {
    item: OutboundItem,
    status: Status,
    last_error: Option<String>,
}

/// The store's contract in memory: the head of each key's queue is due when its time
/// has come; sent and dead items no longer block their key.
#[derive(Default)]
struct MemQueue {
    rows: Mutex<Vec<Row>>,
    delivered: Mutex<Vec<Delivered>>,
    /// Message-IDs marked sent a second time.
    sent_twice: Mutex<Vec<String>>,
    /// A store fault: every write fails (disk full, read-only, lock held), reads work.
    writes_fail: std::sync::atomic::AtomicBool,
    failed_writes: std::sync::atomic::AtomicUsize,
    /// How many deliveries each write recorded.
    sent_writes: Mutex<Vec<usize>>,
    /// Run (on the worker's blocking thread) before the first delivery is recorded.
    before_first_record: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl MemQueue {
    fn push(&self, key: &str, seq: usize, queued_at: i64) {
        let mut rows = self.rows.lock().expect("lock");
        let id = rows.len() as i64 + 1;
        let message_id = format!("<{key}.{seq}@gw.test>");
        let raw = format!(
            "From: gw@gw.test\r\nTo: glpi@example.org\r\nSubject: [{key}] event {seq}\r\n\
             Message-ID: {message_id}\r\nX-Seq: {seq}\r\n\r\nevent {seq} of {key}\r\n"
        );
        rows.push(Row {
            item: OutboundItem {
                id,
                order_key: key.to_string(),
                envelope_from: "gw@gw.test".into(),
                envelope_to: vec!["glpi@example.org".into()],
                raw: raw.into_bytes(),
                attempts: 0,
                queued_at,
                message_id,
                kind: if seq == 0 {
                    OutboundKind::Open
                } else {
                    OutboundKind::News
                },
            },
            status: Status::Queued {
                next_attempt_at: queued_at,
            },
            last_error: None,
        });
    }

    fn rows(&self) -> Vec<Row> {
        self.rows.lock().expect("lock").clone()
    }

    fn row(&self, id: i64) -> Row {
        self.rows()
            .into_iter()
            .find(|r| r.item.id == id)
            .expect("row exists")
    }

    /// One write of `n` deliveries; the first waits for `before_first_record`.
    fn recording(&self, n: usize) {
        let first = self.before_first_record.lock().expect("lock").take();
        if let Some(wait) = first {
            wait();
        }
        self.sent_writes.lock().expect("lock").push(n);
    }

    fn sent(&self, id: i64, now: i64) -> Result<(), QueueError> {
        let mut twice = None;
        self.update(id, |row| {
            if matches!(row.status, Status::Sent { .. }) {
                twice = Some(row.item.message_id.clone());
            }
            row.status = Status::Sent { at: now };
        })?;
        if let Some(message_id) = twice {
            self.sent_twice.lock().expect("lock").push(message_id);
        }
        Ok(())
    }

    fn update(&self, id: i64, change: impl FnOnce(&mut Row)) -> Result<(), QueueError> {
        if self.writes_fail.load(Ordering::SeqCst) {
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(QueueError::new("database or disk is full"));
        }
        let mut rows = self.rows.lock().expect("lock");
        let row = rows
            .iter_mut()
            .find(|r| r.item.id == id)
            .ok_or_else(|| QueueError::new(format!("no item {id}")))?;
        change(row);
        Ok(())
    }
}

impl OutboundQueue for MemQueue {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboundItem>, QueueError> {
        let rows = self.rows.lock().expect("lock");
        let mut heads: Vec<&Row> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for row in rows.iter() {
            if let Status::Queued { next_attempt_at } = row.status {
                if seen.insert(row.item.order_key.clone()) && next_attempt_at <= now {
                    heads.push(row);
                }
            }
        }
        heads.sort_by_key(|r| (r.item.queued_at, r.item.id));
        Ok(heads
            .into_iter()
            .take(limit)
            .map(|r| r.item.clone())
            .collect())
    }

    fn mark_sent(&self, id: i64, now: i64) -> Result<(), QueueError> {
        self.recording(1);
        self.sent(id, now)
    }

    fn mark_sent_all(&self, sent: &[(i64, i64)]) -> Result<(), QueueError> {
        self.recording(sent.len());
        if self.writes_fail.load(Ordering::SeqCst) {
            self.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Err(QueueError::new("database or disk is full"));
        }
        sent.iter().try_for_each(|&(id, at)| self.sent(id, at))
    }

    fn mark_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), QueueError> {
        self.update(id, |row| {
            row.item.attempts += 1;
            row.status = Status::Queued { next_attempt_at };
            row.last_error = Some(error.to_string());
        })
    }

    fn mark_dead(&self, id: i64, error: &str) -> Result<(), QueueError> {
        self.update(id, |row| {
            row.item.attempts += 1;
            row.status = Status::Dead {
                error: error.to_string(),
            };
        })
    }

    fn on_delivered(&self, delivered: Delivered) {
        self.delivered.lock().expect("lock").push(delivered);
    }
}

/// A worker on a hand-driven clock, with a fast poll.
struct Harness {
    queue: Arc<MemQueue>,
    clock: Arc<AtomicI64>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    worker: JoinHandle<()>,
    /// The outcomes the worker holds while the queue refuses them.
    held: alertgate::deliver::HeldOutcomes,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial_backoff_secs: 10,
        max_backoff_secs: 40,
        max_queue_age_secs: 1000,
    }
}

fn client(port: u16, max_parallel: usize) -> RelayClient {
    let mut cfg = RelayConfig::new("127.0.0.1", port);
    cfg.tls = RelayTls::None;
    cfg.timeout_secs = 5;
    cfg.max_parallel = max_parallel;
    RelayClient::new(&cfg).expect("client")
}

impl Harness {
    fn start(queue: Arc<MemQueue>, port: u16, max_parallel: usize) -> Harness {
        let clock = Arc::new(AtomicI64::new(T0));
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let shared: Arc<dyn OutboundQueue> = queue.clone();
        let now = Arc::clone(&clock);
        let worker = DeliveryWorker::new(
            shared,
            client(port, max_parallel),
            policy(),
            Arc::clone(&wake),
        )
        .with_clock(Arc::new(move || now.load(Ordering::SeqCst)))
        .with_poll_interval(Duration::from_millis(50));
        let held = worker.held_outcomes();
        let worker = worker.run(stop_rx);
        Harness {
            queue,
            clock,
            wake,
            stop,
            worker: tokio::spawn(worker),
            held,
        }
    }

    fn advance(&self, secs: i64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
        self.wake.notify_one();
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&[Row]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.queue.rows()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.queue.rows()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(self) {
        self.stop.send(true).expect("worker listens");
        tokio::time::timeout(WAIT, self.worker)
            .await
            .expect("worker stops")
            .expect("worker did not panic");
    }
}

fn all_sent(rows: &[Row]) -> bool {
    rows.iter().all(|r| matches!(r.status, Status::Sent { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_everything_once_in_order_per_incident() {
    let relay = RecordingRelay::start().await;
    let queue = Arc::new(MemQueue::default());
    let keys = ["INC-a", "INC-b", "INC-c", "INC-d", "INC-e"];
    for seq in 0..4 {
        for key in keys {
            queue.push(key, seq, T0 - 100 + seq as i64);
        }
    }
    let h = Harness::start(Arc::clone(&queue), relay.port(), 3);
    let got = relay.wait_for(20, WAIT).await;
    h.wait_until("all marked sent", all_sent).await;

    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for mail in &got {
        let subject = mail.header("Subject").expect("subject");
        let key = subject[1..subject.find(']').expect("tag")].to_string();
        per_key
            .entry(key)
            .or_default()
            .push(mail.header("X-Seq").expect("seq"));
    }
    for key in keys {
        assert_eq!(per_key[key], vec!["0", "1", "2", "3"], "order of {key}");
    }
    let mut ids: Vec<_> = got.iter().filter_map(|m| m.header("Message-ID")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no mail twice");
    assert_eq!(
        queue.delivered.lock().expect("lock").len(),
        20,
        "on_delivered once per mail"
    );
    let mut opened: Vec<String> = queue
        .delivered
        .lock()
        .expect("lock")
        .iter()
        .filter(|d| d.opens_incident_ticket())
        .map(|d| d.tag.clone())
        .collect();
    opened.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(
        opened, expected,
        "each incident's first mail, as it was queued"
    );
    assert!(queue.sent_twice.lock().expect("lock").is_empty());
    assert!(queue
        .rows()
        .iter()
        .all(|r| r.status == Status::Sent { at: T0 }));
    // Give the worker a moment: nothing more may arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.received().len(), 20);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_down_schedules_retries_then_delivers_when_back() {
    let mut relay = RecordingRelay::start().await;
    relay.stop().await;
    let queue = Arc::new(MemQueue::default());
    queue.push("INC-1", 0, T0);
    queue.push("INC-1", 1, T0);
    queue.push("INC-2", 0, T0);
    let h = Harness::start(Arc::clone(&queue), relay.port(), 4);

    h.wait_until("first failures recorded", |rows| {
        rows.iter().filter(|r| r.item.attempts == 1).count() == 2
    })
    .await;
    let rows = queue.rows();
    for id in [1, 3] {
        let row = &rows[id - 1];
        assert_eq!(
            row.status,
            Status::Queued {
                next_attempt_at: T0 + 10
            },
            "{row:?}"
        );
        assert!(
            row.last_error
                .as_deref()
                .is_some_and(|e| e.contains("temporary")),
            "{row:?}"
        );
    }
    assert_eq!(
        rows[1].item.attempts, 0,
        "the second mail of INC-1 waits behind the first"
    );

    // Not yet due: nothing happens.
    h.advance(5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(queue.rows().iter().all(|r| r.item.attempts <= 1));

    // Second failure doubles the backoff.
    h.advance(5);
    h.wait_until("second failures", |rows| {
        rows[0].item.attempts == 2 && rows[2].item.attempts == 2
    })
    .await;
    assert_eq!(
        queue.row(1).status,
        Status::Queued {
            next_attempt_at: T0 + 10 + 20
        }
    );

    relay.restart().await;
    h.advance(20);
    relay.wait_for(3, WAIT).await;
    h.wait_until("all sent", all_sent).await;
    let seqs: Vec<_> = relay
        .received()
        .iter()
        .filter(|m| {
            m.header("Subject")
                .is_some_and(|s| s.starts_with("[INC-1]"))
        })
        .filter_map(|m| m.header("X-Seq"))
        .collect();
    assert_eq!(seqs, vec!["0", "1"]);
    assert_eq!(relay.received().len(), 3);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_mail_becomes_dead_letter_and_unblocks_its_incident() {
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::RejectRcpt);
    let queue = Arc::new(MemQueue::default());
    queue.push("INC-1", 0, T0);
    let h = Harness::start(Arc::clone(&queue), relay.port(), 2);
    h.wait_until("dead letter", |rows| {
        matches!(rows[0].status, Status::Dead { .. })
    })
    .await;
    let Status::Dead { error } = queue.row(1).status else {
        unreachable!()
    };
    assert!(error.contains("550") && error.contains("5.7.1"), "{error}");
    assert!(relay.received().is_empty());
    assert!(queue.delivered.lock().expect("lock").is_empty());

    relay.set_mode(RelayMode::Accept);
    queue.push("INC-1", 1, T0);
    h.wait_until("next mail sent", |rows| {
        matches!(rows[1].status, Status::Sent { .. })
    })
    .await;
    assert_eq!(relay.received().len(), 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempfail_retries_and_is_not_duplicated() {
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::TempFailData);
    let queue = Arc::new(MemQueue::default());
    queue.push("INC-1", 0, T0);
    let h = Harness::start(Arc::clone(&queue), relay.port(), 2);
    h.wait_until("retry scheduled", |rows| rows[0].item.attempts == 1)
        .await;
    let row = queue.row(1);
    assert_eq!(
        row.status,
        Status::Queued {
            next_attempt_at: T0 + 10
        }
    );
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("451 4.3.0")),
        "{row:?}"
    );

    relay.set_mode(RelayMode::Accept);
    h.advance(10);
    relay.wait_for(1, WAIT).await;
    h.wait_until("sent", all_sent).await;
    assert_eq!(queue.row(1).status, Status::Sent { at: T0 + 10 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.received().len(), 1);
    assert_eq!(
        relay.transactions(),
        2,
        "one failed and one successful attempt"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_older_than_max_queue_age_dies_on_next_failure() {
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::TempFailRcpt);
    let queue = Arc::new(MemQueue::default());
    queue.push("INC-old", 0, T0 - 1000);
    queue.push("INC-new", 0, T0 - 999);
    let h = Harness::start(Arc::clone(&queue), relay.port(), 2);
    h.wait_until("both attempted", |rows| {
        rows.iter().all(|r| r.item.attempts == 1)
    })
    .await;
    let Status::Dead { error } = queue.row(1).status else {
        panic!("old mail must be dead: {:?}", queue.row(1))
    };
    assert!(
        error.contains("gave up after 1 attempts") && error.contains("451"),
        "{error}"
    );
    assert_eq!(
        queue.row(2).status,
        Status::Queued {
            next_attempt_at: T0 + 10
        }
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_starts_delivery_without_waiting_for_the_poll() {
    let relay = RecordingRelay::start().await;
    let queue = Arc::new(MemQueue::default());
    let clock = Arc::new(AtomicI64::new(T0));
    let wake = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(false);
    let shared: Arc<dyn OutboundQueue> = queue.clone();
    let now = Arc::clone(&clock);
    let worker = tokio::spawn(
        DeliveryWorker::new(shared, client(relay.port(), 2), policy(), Arc::clone(&wake))
            .with_clock(Arc::new(move || now.load(Ordering::SeqCst)))
            .with_poll_interval(Duration::from_secs(3600))
            .run(stop_rx),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    queue.push("INC-1", 0, T0);
    wake.notify_one();
    relay.wait_for(1, Duration::from_secs(5)).await;
    // Shutdown also interrupts the hour-long poll.
    stop.send(true).expect("worker listens");
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("stops promptly")
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_errors_are_survived() {
    struct Failing(Mutex<u32>);
    impl OutboundQueue for Failing {
        fn due(&self, _now: i64, _limit: usize) -> Result<Vec<OutboundItem>, QueueError> {
            *self.0.lock().expect("lock") += 1;
            Err(QueueError::new("database is locked"))
        }
        fn mark_sent(&self, _: i64, _: i64) -> Result<(), QueueError> {
            unreachable!("nothing is due")
        }
        fn mark_retry(&self, _: i64, _: i64, _: &str) -> Result<(), QueueError> {
            unreachable!("nothing is due")
        }
        fn mark_dead(&self, _: i64, _: &str) -> Result<(), QueueError> {
            unreachable!("nothing is due")
        }
    }
    let relay = RecordingRelay::start().await;
    let queue = Arc::new(Failing(Mutex::new(0)));
    let shared: Arc<dyn OutboundQueue> = queue.clone();
    let (stop, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(
        DeliveryWorker::new(
            shared,
            client(relay.port(), 1),
            policy(),
            Arc::new(Notify::new()),
        )
        .with_poll_interval(Duration::from_millis(20))
        .run(stop_rx),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        *queue.0.lock().expect("lock") >= 3,
        "worker keeps polling after errors"
    );
    drop(stop);
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("dropping the sender stops the worker")
        .expect("no panic");
}

/// Finding 1: a store that cannot record "sent" must not turn into a resend loop. The
/// relay gets each mail at most twice, and everything is delivered once the fault clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_fault_while_recording_outcomes_is_not_a_resend_loop() {
    let relay = RecordingRelay::start().await;
    let queue = Arc::new(MemQueue::default());
    for key in ["INC-1", "INC-2", "INC-3"] {
        queue.push(key, 0, T0);
        queue.push(key, 1, T0);
    }
    queue.writes_fail.store(true, Ordering::SeqCst);
    let h = Harness::start(Arc::clone(&queue), relay.port(), 4);
    relay.wait_for(3, WAIT).await;
    // A second of fault: a loop would send hundreds of copies meanwhile.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        relay.received().len(),
        3,
        "the heads were sent once and not again while their outcome is unrecorded"
    );
    assert!(queue.failed_writes.load(Ordering::SeqCst) >= 3);
    // Recording is retried with backoff, not in a tight loop.
    assert!(
        queue.failed_writes.load(Ordering::SeqCst) < 40,
        "{} failed writes in a second",
        queue.failed_writes.load(Ordering::SeqCst)
    );

    // Shown as what they are (for `queue list`, through the HTTP listener).
    let held = h.held.list();
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(
        held.iter()
            .all(|o| o.outcome == "sent" && o.at == T0 && o.record_attempts >= 1),
        "{held:?}"
    );
    assert!(held.iter().all(|o| !o.error.is_empty()), "{held:?}");

    queue.writes_fail.store(false, Ordering::SeqCst);
    h.wait_until("all recorded sent", all_sent).await;
    assert!(h.held.list().is_empty(), "nothing held once recorded");
    let got = relay.wait_for(6, WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ids: Vec<_> = got.iter().filter_map(|m| m.header("Message-ID")).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!((before, ids.len()), (6, 6), "each mail exactly once");
    assert_eq!(relay.received().len(), 6);
    // Recorded with the time of delivery, not of the late record.
    assert!(queue
        .rows()
        .iter()
        .all(|r| r.status == Status::Sent { at: T0 }));
    assert_eq!(queue.delivered.lock().expect("lock").len(), 6);
    h.shutdown().await;
}

/// The same for a failed attempt: an unrecorded retry must not make the mail due again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecorded_retry_is_not_resent_at_once() {
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::TempFailData);
    let queue = Arc::new(MemQueue::default());
    queue.push("INC-1", 0, T0);
    queue.writes_fail.store(true, Ordering::SeqCst);
    let h = Harness::start(Arc::clone(&queue), relay.port(), 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        relay.transactions(),
        1,
        "one attempt while the store is failing"
    );
    queue.writes_fail.store(false, Ordering::SeqCst);
    h.wait_until("retry recorded", |rows| rows[0].item.attempts == 1)
        .await;
    assert_eq!(
        queue.row(1).status,
        Status::Queued {
            next_attempt_at: T0 + 10
        }
    );
    relay.set_mode(RelayMode::Accept);
    h.advance(10);
    relay.wait_for(1, WAIT).await;
    h.wait_until("sent", all_sent).await;
    assert_eq!(relay.transactions(), 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_that_end_together_are_recorded_in_one_write() {
    let relay = Arc::new(RecordingRelay::start().await);
    let queue = Arc::new(MemQueue::default());
    for key in ["INC-a", "INC-b", "INC-c", "INC-d"] {
        queue.push(key, 0, T0 - 10);
    }
    // The first record waits until the other three sends are over too.
    let watched = Arc::clone(&relay);
    *queue.before_first_record.lock().expect("lock") = Some(Box::new(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while watched.received().len() < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
    }));
    let h = Harness::start(Arc::clone(&queue), relay.port(), 4);
    h.wait_until("all marked sent", all_sent).await;
    let writes = queue.sent_writes.lock().expect("lock").clone();
    assert_eq!(
        writes.iter().sum::<usize>(),
        4,
        "each delivery once: {writes:?}"
    );
    assert!(
        writes.iter().any(|n| *n > 1),
        "sends that ended while one was recorded share a write: {writes:?}"
    );
    assert_eq!(queue.delivered.lock().expect("lock").len(), 4);
    assert!(queue.sent_twice.lock().expect("lock").is_empty());
    assert_eq!(relay.received().len(), 4, "nothing sent twice");
    h.shutdown().await;
}
