//! Acceptance of issue 2 over real loopback TCP: a lettre client's mail lands in the spool
//! byte for byte, a fully pipelined transaction gets its replies in order, STARTTLS + AUTH.

mod support;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use support::client::RawClient;
use support::gateway::TestGateway;

fn sample_message() -> Message {
    Message::builder()
        .from("Nagios <nagios@monitoring.example.test>".parse().unwrap())
        .to("glpi@example.test".parse().unwrap())
        .subject("** PROBLEM Service Alert: web-01/HTTP is CRITICAL **")
        .message_id(Some("<sample-1@monitoring.example.test>".into()))
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "***** Nagios *****\r\n\r\nNotification Type: PROBLEM\r\n.leading dot line\r\n..two dots\r\nState: CRITICAL\r\n",
        ))
        .unwrap()
}

/// The stored message minus our Received: header (which is folded over several lines).
fn without_received(raw: &[u8]) -> &[u8] {
    assert!(
        raw.starts_with(b"Received: "),
        "stored message must start with our Received: header"
    );
    let mut pos = 0;
    loop {
        let eol = raw[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("header line")
            + pos
            + 1;
        pos = eol;
        if raw[pos] != b'\t' && raw[pos] != b' ' {
            return &raw[pos..];
        }
    }
}

#[tokio::test]
async fn lettre_mail_is_spooled_byte_for_byte_with_its_envelope() {
    let gw = TestGateway::start("").await;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(gw.addr.port())
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            "centreon.example.test".into(),
        ))
        .build();
    let message = sample_message();
    let expected = message.formatted();
    let response = mailer.send(message).await.expect("lettre send");
    assert_eq!(response.code().to_string(), "250");
    let text: String = response.message().collect::<Vec<_>>().join(" ");
    assert!(text.contains("queued as"), "{text}");

    let row = gw.only_spooled();
    let e = &row.envelope;
    let raw = row.raw.clone().unwrap_or_default();
    assert!(e.peer.starts_with("127.0.0.1:"), "{}", e.peer);
    assert_eq!(e.helo, "centreon.example.test");
    assert_eq!(e.mail_from, "nagios@monitoring.example.test");
    assert_eq!(e.rcpt_to, vec!["glpi@example.test".to_string()]);
    assert!(!e.tls);
    let body = without_received(&raw);
    // lettre ends DATA with "\r\n.\r\n" even after the message's final CRLF, so what it
    // transmitted (and what we must keep) is the formatted message plus one empty line.
    let mut transmitted = expected.clone();
    transmitted.extend_from_slice(b"\r\n");
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&transmitted)
    );
    let received = String::from_utf8_lossy(&raw[..raw.len() - body.len()]).to_string();
    assert!(
        received.contains("from centreon.example.test ([127.0.0.1])"),
        "{received}"
    );
    assert!(
        received.contains("by alertgate.test (alertgate) with ESMTP"),
        "{received}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn whole_pipelined_transaction_gets_replies_in_order() {
    let gw = TestGateway::start("").await;
    let mut c = RawClient::connect(gw.addr).await;
    assert_eq!(c.reply().await.unwrap().code, 220);
    c.send(
        b"EHLO pipeliner.test\r\nMAIL FROM:<a@example.test> SIZE=200 BODY=8BITMIME\r\nRCPT TO:<glpi@example.test>\r\n\
RCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<ops@alerts.example.test>\r\nDATA\r\nSubject: pipelined\r\n\r\nline\r\n..stuffed\r\n.\r\n\
NOOP\r\nVRFY glpi\r\nRSET\r\nQUIT\r\n",
    )
    .await;
    let ehlo = c.reply().await.unwrap();
    assert_eq!(ehlo.code, 250);
    for ext in [
        "PIPELINING",
        "SIZE ",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l.starts_with(ext)),
            "EHLO lacks {ext}: {:?}",
            ehlo.lines
        );
    }
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("STARTTLS")),
        "no certificate, no STARTTLS"
    );
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "no users, no AUTH"
    );
    let expected = [
        (250, "2.1.0"),
        (250, "2.1.5"),
        (550, "5.7.1"),
        (250, "2.1.5"),
        (354, ""),
        (250, "2.0.0"),
        (250, "2.0.0"),
        (252, "2.5.0"),
        (250, "2.0.0"),
        (221, "2.0.0"),
    ];
    for (code, enhanced) in expected {
        let r = c.reply().await.expect("reply");
        assert_eq!(r.code, code, "{r:?}");
        assert!(r.text().starts_with(enhanced), "{r:?}");
    }
    assert!(c.closed().await);
    let row = gw.only_spooled();
    let raw = row.raw.unwrap_or_default();
    assert_eq!(
        row.envelope.rcpt_to,
        vec![
            "glpi@example.test".to_string(),
            "ops@alerts.example.test".to_string()
        ]
    );
    let raw = String::from_utf8(raw).unwrap();
    assert!(
        raw.ends_with("Subject: pipelined\r\n\r\nline\r\n.stuffed\r\n"),
        "{raw:?}"
    );
    gw.shutdown().await;
}

fn test_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test]
async fn starttls_and_auth_work_with_lettre_and_auth_before_tls_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = test_certificate(certs.path());
    let server = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n[server.auth]\nrequired = true\nusers = [{{ username = \"vrops\", password = \"s3cret\" }}]\n",
        cert.display(),
        key.display()
    );
    let gw = TestGateway::start(&server).await;

    // Before TLS: STARTTLS offered, AUTH not; AUTH refused with 538, MAIL with 530.
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.unwrap();
    let ehlo = c.cmd("EHLO plain.test").await;
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "{ehlo:?}"
    );
    let auth = c.cmd("AUTH PLAIN AHZyb3BzAHMzY3JldA==").await;
    assert_eq!(
        (auth.code, auth.text().starts_with("5.7.11")),
        (538, true),
        "{auth:?}"
    );
    let mail = c.cmd("MAIL FROM:<vrops@example.test>").await;
    assert_eq!(mail.code, 530, "{mail:?}");
    assert_eq!(c.cmd("QUIT").await.code, 221);

    // With TLS: lettre upgrades, authenticates, sends.
    let tls = TlsParameters::builder("localhost".into())
        .dangerous_accept_invalid_certs(true)
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(gw.addr.port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("vrops".into(), "s3cret".into()))
        .authentication(vec![Mechanism::Login])
        .build();
    mailer
        .send(sample_message())
        .await
        .expect("send over STARTTLS with AUTH LOGIN");
    let envelope = gw.only_spooled().envelope;
    let (tls_flag, user) = (envelope.tls, envelope.auth_user.unwrap_or_default());
    assert!(tls_flag);
    assert_eq!(user, "vrops");

    // A wrong password is refused with 535 and nothing more is stored.
    let bad = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(gw.addr.port())
        .tls(Tls::Required(
            TlsParameters::builder("localhost".into())
                .dangerous_accept_invalid_certs(true)
                .build_rustls()
                .unwrap(),
        ))
        .credentials(Credentials::new("vrops".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let err = bad.send(sample_message()).await.expect_err("bad password");
    assert!(err.to_string().contains("535"), "{err}");
    assert_eq!(gw.spooled(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn plaintext_auth_on_loopback_only_when_allowed() {
    let gw = TestGateway::start(
        "[server.auth]\nallow_plaintext_on_loopback = true\nusers = [{ username = \"u\", password = \"p\" }]\n",
    )
    .await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.unwrap();
    let ehlo = c.cmd("EHLO x.test").await;
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    // AUTH LOGIN: two 334 challenges, then 235.
    let r = c.cmd("AUTH LOGIN").await;
    assert_eq!((r.code, r.text()), (334, "VXNlcm5hbWU6".to_string()));
    assert_eq!(c.cmd("dQ==").await.code, 334);
    assert_eq!(c.cmd("cA==").await.code, 235);
    assert_eq!(
        c.cmd("AUTH PLAIN AHUAcA==").await.code,
        503,
        "already authenticated"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn serves_on_several_listen_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let text = support::gateway::config_text(dir.path(), "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\", \"[::1]:0\"]",
    );
    let path = dir.path().join("alertgate.toml");
    let loaded = alertgate::config::LoadedConfig::from_str(&path, &text).expect("valid config");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let running = alertgate::app::start(loaded, stop_rx)
        .await
        .expect("starts");
    assert_eq!(running.addrs.len(), 3);
    for addr in &running.addrs {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            // No IPv6 loopback on this machine: nothing to test there.
            assert!(addr.is_ipv6(), "cannot reach {addr}");
            continue;
        };
        drop(stream);
        let mut c = RawClient::connect(*addr).await;
        assert_eq!(c.reply().await.unwrap().code, 220, "{addr}");
        c.cmd("EHLO multi.test").await;
        let r = c
            .send_mail(
                "a@example.test",
                "glpi@example.test",
                b"Subject: via several\r\n\r\nx\r\n",
            )
            .await;
        assert_eq!(r.code, 250, "{addr}: {r:?}");
    }
    let _ = stop.send(true);
    running.wait().await;
}
