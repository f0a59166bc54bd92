//! Relays that are slow but working (findings 2 and 3 of issue 10): each step of the SMTP
//! exchange has its own timeout, as Postfix's `smtp_*_timeout`, so a content filter that
//! takes long to answer the final dot gets exactly one copy, and a relay that is slow on
//! every reply still gets the mail. Time is compressed: seconds stand for tens of seconds.

mod support;

use alertgate::deliver::{
    DeliveryWorker, OutboundItem, OutboundQueue, QueueError, RelayClient, RelayConfig, RelayTls,
    RetryPolicy,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::relay::{RecordingRelay, RelayOptions};
use tokio::sync::{watch, Notify};

fn mail(subject: &str) -> Vec<u8> {
    format!(
        "From: alertgate@gw.example\r\nTo: glpi@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@gw.example>\r\n\r\nbody\r\n"
    )
    .into_bytes()
}

fn config(port: u16) -> RelayConfig {
    let mut cfg = RelayConfig::new("127.0.0.1", port);
    cfg.tls = RelayTls::None;
    // Every step but the final dot must answer within 2 s; the final dot gets 20 s.
    cfg.timeout_secs = 2;
    cfg.timeouts.data_done_secs = Some(20);
    cfg
}

/// One queued mail in memory, recording every attempt.
#[derive(Default)]
struct OneMail {
    state: Mutex<(bool, u32, Option<String>)>,
}

impl OutboundQueue for OneMail {
    fn due(&self, _now: i64, _limit: usize) -> Result<Vec<OutboundItem>, QueueError> {
        let state = self.state.lock().expect("lock");
        if state.0 {
            return Ok(Vec::new());
        }
        Ok(vec![OutboundItem {
            id: 1,
            order_key: "INC-1".into(),
            envelope_from: "alertgate@gw.example".into(),
            envelope_to: vec!["glpi@example.org".into()],
            raw: mail("slow"),
            attempts: state.1,
            queued_at: 0,
            message_id: "<slow@gw.example>".into(),
            kind: alertgate::mail::OutboundKind::Open,
        }])
    }
    fn mark_sent(&self, _id: i64, _now: i64) -> Result<(), QueueError> {
        self.state.lock().expect("lock").0 = true;
        Ok(())
    }
    fn mark_retry(&self, _id: i64, _next: i64, error: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock().expect("lock");
        state.1 += 1;
        state.2 = Some(error.to_string());
        Ok(())
    }
    fn mark_dead(&self, _id: i64, error: &str) -> Result<(), QueueError> {
        panic!("never dead: {error}")
    }
}

/// Finding 2: the relay answers commands at once but the final dot only after 5 s (35 s
/// in the report, with a 30 s overall timeout). Exactly one copy, and it is marked sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_final_reply_gets_exactly_one_copy() {
    let relay = RecordingRelay::start_with(
        0,
        RelayOptions {
            data_done_delay: Duration::from_secs(5),
            ..RelayOptions::default()
        },
    )
    .await;
    let queue = Arc::new(OneMail::default());
    let shared: Arc<dyn OutboundQueue> = queue.clone();
    let (stop, stop_rx) = watch::channel(false);
    let policy = RetryPolicy {
        // Retry at once: a timeout before the reply would show as a second copy.
        initial_backoff_secs: 0,
        max_backoff_secs: 0,
        max_queue_age_secs: 3600,
    };
    let client = RelayClient::new(&config(relay.port())).expect("client");
    let worker = tokio::spawn(
        DeliveryWorker::new(shared, client, policy, Arc::new(Notify::new()))
            .with_poll_interval(Duration::from_millis(50))
            .run(stop_rx),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !queue.state.lock().expect("lock").0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not marked sent: {:?}",
            queue.state.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.received().len(), 1, "exactly one copy");
    assert_eq!(relay.transactions(), 1);
    assert_eq!(queue.state.lock().expect("lock").1, 0, "no failed attempt");
    stop.send(true).expect("worker listens");
    worker.await.expect("no panic");
}

/// Finding 3: every reply, the greeting included, takes 1 s (10 s in the report): six
/// replies exceed an overall 2 s timeout, but each step is within its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_slow_on_every_reply_still_gets_the_mail() {
    let relay = RecordingRelay::start_with(
        0,
        RelayOptions {
            reply_delay: Duration::from_secs(1),
            ..RelayOptions::default()
        },
    )
    .await;
    let client = RelayClient::new(&config(relay.port())).expect("client");
    let reply = client
        .send(
            "alertgate@gw.example",
            &["glpi@example.org".into()],
            &mail("slow-all"),
        )
        .await
        .expect("delivered despite the slow relay");
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(relay.received().len(), 1);
}

/// A relay that never answers the final dot: the attempt fails as a possible duplicate,
/// bounded by `data_done`, not by the command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_final_reply_is_a_possible_duplicate_after_data_done() {
    let relay = RecordingRelay::start_with(
        0,
        RelayOptions {
            data_done_delay: Duration::from_secs(30),
            ..RelayOptions::default()
        },
    )
    .await;
    let mut cfg = config(relay.port());
    cfg.timeouts.data_done_secs = Some(3);
    let client = RelayClient::new(&cfg).expect("client");
    let started = std::time::Instant::now();
    let err = client
        .send(
            "alertgate@gw.example",
            &["glpi@example.org".into()],
            &mail("lost"),
        )
        .await
        .expect_err("no final reply");
    let waited = started.elapsed();
    assert!(!err.is_permanent(), "{err}");
    assert!(err.is_maybe_delivered(), "{err}");
    assert!(err.reason().contains("end of data"), "{err}");
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}
