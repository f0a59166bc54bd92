//! vROps "SSL" and safer AUTH: lettre in SMTPS (`Tls::Wrapper`) mode delivers to
//! `listen_tls` and authenticates against an argon2id `password_hash`; a plaintext client
//! there gets nothing but a TLS alert; failed AUTH is throttled per client address.

mod support;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::{Duration, Instant};
use support::client::RawClient;
use support::gateway::TestGateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certificate(dir: &std::path::Path) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.display(),
        k.display()
    )
}

fn vrops_mail() -> Message {
    Message::builder()
        .from("vrops@vrops.example.test".parse().unwrap())
        .to("glpi@example.test".parse().unwrap())
        .subject("Alert: host web-01 is down")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from("Alert Definition Name: Host down\r\n"))
        .unwrap()
}

#[tokio::test]
async fn smtps_with_hashed_password_and_plaintext_gets_a_tls_alert() {
    let dir = tempfile::tempdir().unwrap();
    let hash = alertgate::cli::passwd::hash("s3cret").unwrap();
    let server = format!(
        "listen_tls = [\"127.0.0.1:0\"]\n{}[server.auth]\nrequired = true\nusers = [{{ username = \"vrops\", password_hash = \"{hash}\" }}]\n",
        certificate(dir.path())
    );
    let gw = TestGateway::start(&server).await;
    let tls_addr = gw.tls_addrs()[0];

    let params = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(tls_addr.port())
        .tls(Tls::Wrapper(params.clone()))
        .credentials(Credentials::new("vrops".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    mailer.send(vrops_mail()).await.expect("SMTPS with AUTH");
    let envelope = gw.only_spooled().envelope;
    let (tls, user) = (envelope.tls, envelope.auth_user.unwrap_or_default());
    assert!(tls);
    assert_eq!(user, "vrops");

    let wrong = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(tls_addr.port())
        .tls(Tls::Wrapper(params))
        .credentials(Credentials::new("vrops".into(), "s3cret!".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = wrong.send(vrops_mail()).await.expect_err("wrong password");
    assert!(err.to_string().contains("535"), "{err}");

    // A plaintext client: no greeting, only a TLS alert record (content type 21).
    let mut plain = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    plain.write_all(b"EHLO plain.test\r\n").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(!got.starts_with(b"220"), "{got:?}");
    assert!(!got.is_empty(), "expected a TLS alert");
    assert_eq!(got[0], 0x15, "not a TLS alert record: {got:?}");
    assert_eq!(gw.spooled(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_auth_waits_from_the_sixth_and_the_eleventh_gets_421() {
    let hash = alertgate::cli::passwd::hash("right").unwrap();
    let server = format!(
        "max_errors = 50\n[server.auth]\nallow_plaintext_on_loopback = true\nfailure_delay_ms = 1500\nusers = [{{ username = \"vrops\", password_hash = \"{hash}\" }}]\n"
    );
    let gw = TestGateway::start(&server).await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.unwrap();
    assert_eq!(c.cmd("EHLO attacker.test").await.code, 250);
    // AUTH PLAIN \0vrops\0wrong
    let wrong = "AUTH PLAIN AHZyb3BzAHdyb25n";
    for attempt in 1..=10 {
        let started = Instant::now();
        let r = c.cmd(wrong).await;
        let took = started.elapsed();
        assert_eq!(r.code, 535, "attempt {attempt}: {r:?}");
        // The delay is long next to a password check (argon2), even on a loaded machine.
        if attempt <= 5 {
            assert!(
                took < Duration::from_millis(1000),
                "attempt {attempt} waited {took:?}"
            );
        } else {
            assert!(
                took >= Duration::from_millis(1500),
                "attempt {attempt} did not wait ({took:?})"
            );
        }
    }
    let r = c.cmd(wrong).await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.closed().await, "421 closes the connection");

    // The address stays refused for the rest of the minute, even with the right password.
    let mut again = RawClient::connect(gw.addr).await;
    again.reply().await.unwrap();
    assert_eq!(again.cmd("EHLO attacker.test").await.code, 250);
    let right = again.cmd("AUTH PLAIN AHZyb3BzAHJpZ2h0").await;
    assert_eq!(right.code, 421, "{right:?}");
    gw.shutdown().await;
}
