//! Acceptance of issue 2: every refusal gets its exact reply code, nothing is stored, and
//! the server keeps serving the next client.

mod support;

use support::client::RawClient;
use support::gateway::TestGateway;

async fn greeted(gw: &TestGateway) -> RawClient {
    let mut c = RawClient::connect(gw.addr).await;
    assert_eq!(c.reply().await.expect("greeting").code, 220);
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    c
}

/// A well-behaved client still gets its mail through.
async fn still_serving(gw: &TestGateway) {
    let before = gw.spooled();
    let mut c = greeted(gw).await;
    let r = c
        .send_mail(
            "ok@example.test",
            "glpi@example.test",
            b"Subject: fine\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(gw.spooled(), before + 1);
}

fn assert_reply(r: &support::client::ServerReply, code: u16, enhanced: &str) {
    assert_eq!(r.code, code, "{r:?}");
    assert!(r.text().starts_with(enhanced), "expected {enhanced}: {r:?}");
}

#[tokio::test]
async fn oversize_by_declared_size_and_by_actual_data() {
    let gw = TestGateway::start("max_message_size = 2000").await;
    let mut c = greeted(&gw).await;
    let r = c.cmd("MAIL FROM:<big@example.test> SIZE=5000").await;
    assert_reply(&r, 552, "5.3.4");

    // No SIZE= declared, then 10 KB of DATA: drained, refused, nothing kept.
    let body = format!(
        "Subject: big\r\n\r\n{}",
        "x".repeat(78).repeat(128).replace("xx", "x\r\n")
    );
    let r = c
        .send_mail("big@example.test", "glpi@example.test", body.as_bytes())
        .await;
    assert_reply(&r, 552, "5.3.4");
    // The session is still usable: the drained body was not read as commands.
    assert_reply(&c.cmd("NOOP").await, 250, "2.0.0");
    assert_eq!(gw.spooled(), 0);
    still_serving(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn foreign_recipient_and_too_many_recipients() {
    let gw = TestGateway::start("max_recipients = 2").await;
    let mut c = greeted(&gw).await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.test>").await.code, 250);
    assert_reply(
        &c.cmd("RCPT TO:<someone@elsewhere.test>").await,
        550,
        "5.7.1",
    );
    assert_reply(
        &c.cmd("RCPT TO:<glpi@example.test.evil>").await,
        550,
        "5.7.1",
    );
    assert_eq!(c.cmd("RCPT TO:<glpi@example.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<ops@alerts.example.test>").await.code, 250);
    assert_reply(
        &c.cmd("RCPT TO:<more@alerts.example.test>").await,
        452,
        "4.5.3",
    );
    assert_reply(&c.cmd("RSET").await, 250, "2.0.0");
    assert_eq!(gw.spooled(), 0);

    // Only foreign recipients: DATA has nobody to deliver to.
    assert_eq!(c.cmd("MAIL FROM:<a@example.test>").await.code, 250);
    assert_reply(&c.cmd("RCPT TO:<x@elsewhere.test>").await, 550, "5.7.1");
    assert_reply(&c.cmd("DATA").await, 503, "5.5.1");
    assert_eq!(gw.spooled(), 0);
    still_serving(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn client_outside_allowed_networks_is_refused_at_connect() {
    let gw = TestGateway::start("allowed_networks = [\"192.0.2.0/24\", \"2001:db8::/32\"]").await;
    let mut c = RawClient::connect(gw.addr).await;
    let r = c.reply().await.expect("a reply before close");
    assert_reply(&r, 554, "5.7.1");
    assert!(c.closed().await);
    assert_eq!(gw.spooled(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_commands_and_bad_sequence() {
    let gw = TestGateway::start("").await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.unwrap();
    assert_reply(&c.cmd("MAIL FROM:<a@example.test>").await, 503, "5.5.1");
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    assert_reply(&c.cmd("DATA").await, 503, "5.5.1");
    assert_reply(&c.cmd("RCPT TO:<glpi@example.test>").await, 503, "5.5.1");
    assert_reply(&c.cmd("FROB nicate").await, 500, "5.5.2");
    assert_reply(&c.cmd("MAIL FROM:a@example.test").await, 501, "5.5.4");
    assert_reply(
        &c.cmd("MAIL FROM:<a@example.test> FOO=BAR").await,
        555,
        "5.5.4",
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.test>").await.code, 250);
    assert_reply(&c.cmd("MAIL FROM:<b@example.test>").await, 503, "5.5.1");
    assert_reply(&c.cmd("RCPT TO:<>").await, 501, "5.1.3");
    let long = format!("NOOP {}", "a".repeat(5000));
    assert_reply(&c.cmd(&long).await, 500, "5.5.2");
    assert_reply(&c.cmd("EXPN staff").await, 502, "5.5.1");
    assert_eq!(gw.spooled(), 0);
    still_serving(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn ten_errors_in_a_row_close_the_session_with_421() {
    let gw = TestGateway::start("max_errors = 10").await;
    let mut c = greeted(&gw).await;
    for i in 1..10 {
        let r = c.cmd("BOGUS").await;
        assert_eq!(r.code, 500, "error {i}: {r:?}");
    }
    let tenth = c.cmd("BOGUS").await;
    assert_eq!(tenth.code, 500);
    let last = c.reply().await.expect("421 after the tenth error");
    assert_reply(&last, 421, "4.7.0");
    assert!(c.closed().await);
    assert_eq!(gw.spooled(), 0);
    still_serving(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_421() {
    let gw = TestGateway::start("max_connections = 2").await;
    let a = greeted(&gw).await;
    let b = greeted(&gw).await;
    let mut third = RawClient::connect(gw.addr).await;
    assert_reply(&third.reply().await.expect("reply"), 421, "4.7.0");
    drop((a, b));
    // Permits come back once those sessions end.
    let mut ok = false;
    for _ in 0..50 {
        let mut c = RawClient::connect(gw.addr).await;
        if c.reply().await.map(|r| r.code) == Some(220) {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        ok,
        "server serves again once the excess connections are gone"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let gw = TestGateway::start("command_timeout_secs = 1").await;
    let mut c = greeted(&gw).await;
    let r = c.reply().await.expect("timeout reply");
    assert_reply(&r, 421, "4.4.2");
    assert!(c.closed().await);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_failing_store_answers_451_and_the_server_keeps_serving() {
    let gw = TestGateway::start("").await;
    // Take the spool table away under the running server.
    gw.raw_sqlite()
        .execute_batch("ALTER TABLE spool RENAME TO spool_away")
        .unwrap();
    let mut c = greeted(&gw).await;
    let r = c
        .send_mail(
            "a@example.test",
            "glpi@example.test",
            b"Subject: lost?\r\n\r\nbody\r\n",
        )
        .await;
    assert_reply(&r, 451, "4.3.0");
    assert_reply(&c.cmd("NOOP").await, 250, "2.0.0");
    // Once the store is back, the same session and new ones are served.
    gw.raw_sqlite()
        .execute_batch("ALTER TABLE spool_away RENAME TO spool")
        .unwrap();
    let r = c
        .send_mail(
            "a@example.test",
            "glpi@example.test",
            b"Subject: again\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    still_serving(&gw).await;
    gw.shutdown().await;
}
