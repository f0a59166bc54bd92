//! Finding 5 of issue 10: a mail accepted under our `SIZE` must not grow past the relay's
//! (Postfix's default `message_size_limit` is 10,240,000). The composed mail is shrunk,
//! the attached original first, with a note; never dead-lettered for size alone.

mod support;

use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::TestGateway;
use support::relay::{RecordingRelay, RelayOptions};

const POSTFIX_DEFAULT_LIMIT: usize = 10_240_000;

/// A Centreon alert with a long output (it is shown in the text and HTML parts too),
/// padded to `size` bytes with lines the rules do not read.
fn padded_alert(size: usize) -> Vec<u8> {
    let output = format!("log volume critical: {}", "E".repeat(300_000));
    let mut raw = centreon_service("PROBLEM", "big-01", "Logs", "CRITICAL", &output);
    let line = b"filler: the monitoring tool appended a long log excerpt here .......\r\n";
    while raw.len() + line.len() < size {
        raw.extend_from_slice(line);
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_near_our_limit_is_delivered_without_the_original_through_a_smaller_relay() {
    let relay = RecordingRelay::start_with(
        0,
        RelayOptions {
            size_limit: Some(POSTFIX_DEFAULT_LIMIT),
            ..RelayOptions::default()
        },
    )
    .await;
    let gw = TestGateway::with_relay(relay.port(), "max_message_size = 10485760", "").await;
    let alert = padded_alert(9_900_000);
    gw.send(&alert).await;
    let got = relay.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "delivered: {:?}", gw.outbound());
    let mail = &got[0];
    assert!(
        mail.raw.len() <= POSTFIX_DEFAULT_LIMIT,
        "{} bytes",
        mail.raw.len()
    );
    let text = mail.raw_str();
    let head: String = text.chars().take(3000).collect();
    assert!(
        !text.contains("original.eml"),
        "the original is dropped: {head}"
    );
    assert!(text.contains("is not attached"), "a note says so");
    assert!(text.contains("big-01"), "the alert itself is kept");
    let mut states = Vec::new();
    for _ in 0..100 {
        states = gw.outbound().into_iter().map(|r| r.0).collect::<Vec<_>>();
        if states == ["sent"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states, vec!["sent"]);
    gw.shutdown().await;
}
