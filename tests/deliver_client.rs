//! The relay client against the recording test relay: what reaches the relay, how
//! replies and connection failures are classified, STARTTLS and AUTH.

mod support;

use alertgate::deliver::{DeliverError, RelayClient, RelayConfig, RelayTls};
use std::time::Duration;
use support::relay::{RecordingRelay, RelayMode, RelayOptions};

const WAIT: Duration = Duration::from_secs(10);

fn plain_config(port: u16) -> RelayConfig {
    let mut cfg = RelayConfig::new("127.0.0.1", port);
    cfg.tls = RelayTls::None;
    cfg.timeout_secs = 5;
    cfg
}

fn mail(subject: &str) -> Vec<u8> {
    format!(
        "From: alertgate@gw.example\r\nTo: glpi@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@gw.example>\r\n\r\nline one\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn mail_reaches_relay_byte_for_byte() {
    let relay = RecordingRelay::start().await;
    let client = RelayClient::new(&plain_config(relay.port())).expect("client");
    let raw = mail("first");
    let reply = client
        .send(
            "<alertgate@gw.example>",
            &["glpi@example.org".into(), "ops@example.org".into()],
            &raw,
        )
        .await
        .expect("accepted");
    assert!(reply.starts_with("250"), "{reply}");
    assert!(reply.contains("queued as 1"), "{reply}");

    let got = relay.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "alertgate@gw.example");
    assert_eq!(got[0].to, vec!["glpi@example.org", "ops@example.org"]);
    assert_eq!(
        got[0].raw,
        raw,
        "dot-stuffing must round-trip:\n{}",
        got[0].raw_str()
    );
    assert_eq!(got[0].header("subject").as_deref(), Some("first"));
    assert!(!got[0].tls);
}

#[tokio::test]
async fn null_sender_and_pooled_connection_reuse() {
    let relay = RecordingRelay::start().await;
    let client = RelayClient::new(&plain_config(relay.port())).expect("client");
    for i in 0..3 {
        client
            .send("", &["glpi@example.org".into()], &mail(&format!("m{i}")))
            .await
            .expect("sent");
    }
    let got = relay.wait_for(3, WAIT).await;
    assert!(got.iter().all(|m| m.from.is_empty()));
    assert_eq!(
        relay.connections(),
        1,
        "sequential sends reuse one pooled connection"
    );
}

#[tokio::test]
async fn rejection_is_permanent_with_relay_text() {
    let relay = RecordingRelay::start().await;
    let client = RelayClient::new(&plain_config(relay.port())).expect("client");
    for mode in [RelayMode::RejectRcpt, RelayMode::RejectData] {
        relay.set_mode(mode);
        let err = client
            .send("a@gw.example", &["glpi@example.org".into()], &mail("x"))
            .await
            .expect_err("rejected");
        assert!(err.is_permanent(), "{mode:?}: {err}");
        assert_eq!(err.code(), Some(550), "{mode:?}: {err}");
        assert!(err.reason().contains("5.7.1"), "{mode:?}: {err}");
    }
    assert!(relay.received().is_empty());
    // A rejection must not poison the pool: the next mail goes through.
    relay.set_mode(RelayMode::Accept);
    client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("y"))
        .await
        .expect("accepted");
    assert_eq!(relay.wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn tempfail_is_transient_with_relay_text() {
    let relay = RecordingRelay::start().await;
    let client = RelayClient::new(&plain_config(relay.port())).expect("client");
    for mode in [RelayMode::TempFailRcpt, RelayMode::TempFailData] {
        relay.set_mode(mode);
        let err = client
            .send("a@gw.example", &["glpi@example.org".into()], &mail("x"))
            .await
            .expect_err("deferred");
        assert!(
            matches!(
                err,
                DeliverError::Transient {
                    code: Some(451),
                    ..
                }
            ),
            "{mode:?}: {err}"
        );
        assert!(err.reason().contains("4.3.0"), "{mode:?}: {err}");
    }
    assert!(relay.received().is_empty());
}

#[tokio::test]
async fn stopped_relay_is_transient_and_recovers_after_restart() {
    let mut relay = RecordingRelay::start().await;
    let client = RelayClient::new(&plain_config(relay.port())).expect("client");
    client
        .send(
            "a@gw.example",
            &["glpi@example.org".into()],
            &mail("before"),
        )
        .await
        .expect("sent");

    relay.stop().await;
    let err = client
        .send(
            "a@gw.example",
            &["glpi@example.org".into()],
            &mail("during"),
        )
        .await
        .expect_err("down");
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(err.code(), None);

    relay.restart().await;
    client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("after"))
        .await
        .expect("sent after restart");
    let subjects: Vec<_> = relay
        .wait_for(2, WAIT)
        .await
        .iter()
        .filter_map(|m| m.header("Subject"))
        .collect();
    assert_eq!(subjects, vec!["before", "after"]);
}

#[tokio::test]
async fn relay_that_never_answers_times_out_as_transient() {
    // A listener that accepts but never greets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut cfg = plain_config(port);
    cfg.timeout_secs = 1;
    let client = RelayClient::new(&cfg).expect("client");
    let started = std::time::Instant::now();
    let err = client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("x"))
        .await
        .expect_err("timeout");
    assert!(!err.is_permanent(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeout not applied"
    );
    drop(listener);
}

async fn tls_relay(user: &str, password: &str) -> RecordingRelay {
    let options = RelayOptions {
        starttls: true,
        auth: Some((user.into(), password.into())),
        ..RelayOptions::default()
    };
    RecordingRelay::start_with(0, options).await
}

fn starttls_config(port: u16, user: &str, password: &str) -> RelayConfig {
    let mut cfg = RelayConfig::new("localhost", port);
    cfg.tls = RelayTls::Starttls;
    cfg.accept_invalid_certs = true;
    cfg.username = Some(user.into());
    cfg.password = Some(password.into());
    cfg.timeout_secs = 5;
    cfg
}

#[tokio::test]
async fn starttls_with_auth_delivers_encrypted() {
    let relay = tls_relay("gw", "s3cret").await;
    let client = RelayClient::new(&starttls_config(relay.port(), "gw", "s3cret")).expect("client");
    client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("tls"))
        .await
        .expect("sent");
    let got = relay.wait_for(1, WAIT).await;
    assert!(got[0].tls, "mail must travel after STARTTLS");
    assert_eq!(got[0].auth_user.as_deref(), Some("gw"));
}

#[tokio::test]
async fn wrong_password_is_transient_not_a_dead_letter() {
    let relay = tls_relay("gw", "s3cret").await;
    let client = RelayClient::new(&starttls_config(relay.port(), "gw", "wrong")).expect("client");
    let err = client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("x"))
        .await
        .expect_err("auth fails");
    assert!(!err.is_permanent(), "{err}");
    assert_eq!(err.code(), Some(535), "{err}");
    assert!(relay.received().is_empty());
}

#[tokio::test]
async fn self_signed_certificate_is_refused_unless_allowed() {
    let relay = tls_relay("gw", "s3cret").await;
    let mut cfg = starttls_config(relay.port(), "gw", "s3cret");
    cfg.accept_invalid_certs = false;
    let client = RelayClient::new(&cfg).expect("client");
    let err = client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("x"))
        .await
        .expect_err("untrusted");
    assert!(!err.is_permanent(), "TLS failures are transient: {err}");
    assert!(relay.received().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered_is_refused() {
    let relay = RecordingRelay::start().await;
    let mut cfg = plain_config(relay.port());
    cfg.tls = RelayTls::Starttls;
    cfg.accept_invalid_certs = true;
    let client = RelayClient::new(&cfg).expect("client");
    let err = client
        .send("a@gw.example", &["glpi@example.org".into()], &mail("x"))
        .await
        .expect_err("no tls");
    assert!(!err.is_permanent(), "{err}");
    assert!(
        relay.received().is_empty(),
        "mail must not go in clear text"
    );
}
