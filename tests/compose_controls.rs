//! Finding 7 of issue 10: bare CR, NUL and other control bytes in alert fields must not
//! reach a text part in a form its Content-Transfer-Encoding forbids (RFC 2045 2.7/2.8:
//! 7bit and 8bit data have no NUL and CR only before LF); strict relays reject such mail.

mod support;

use mail_parser::MimeHeaders;
use std::time::Duration;
use support::gateway::TestGateway;
use support::relay::RecordingRelay;

/// Every leaf part as (declared transfer encoding, raw body bytes).
fn leaf_parts(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    let message = mail_parser::MessageParser::default()
        .parse(raw)
        .expect("composed mail parses");
    let mut out = Vec::new();
    for part in message.parts.iter() {
        if matches!(part.body, mail_parser::PartType::Multipart(_)) {
            continue;
        }
        let encoding = part
            .content_transfer_encoding()
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        let body = raw[part.raw_body_offset() as usize..part.raw_end_offset() as usize].to_vec();
        out.push((encoding, body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_in_alert_fields_never_break_the_declared_encoding() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(relay.port(), "", "").await;
    // A Centreon mail whose plugin output carries a bare CR, a NUL, a BEL and an ESC.
    let alert =
        b"To: glpi@example.test\r\nSubject: ** PROBLEM alert - web-9/HTTP is CRITICAL **\r\n\
Message-Id: <ctl.1@central.example.test>\r\nDate: Tue, 12 Mar 2024 14:05:02 +0100\r\n\
From: centreon-engine@central.example.test (Centreon Engine)\r\n\r\n\
***** centreon Notification *****\r\n\r\nNotification Type: PROBLEM\r\n\r\nService: HTTP\r\n\
Host: web-9\r\nAddress: 10.0.0.9\r\nState: CRITICAL\r\n\r\n\
Date/Time: 2024-03-12 Additional Info : HTTP CRITICAL\rfirst\x00second\x07third\x1b[0m done\r\n";
    gw.send(alert).await;
    let got = relay.wait_for(1, Duration::from_secs(20)).await;
    let raw = &got[0].raw;
    let parts = leaf_parts(raw);
    assert!(
        parts.len() >= 2,
        "text and html parts: {}",
        got[0].raw_str()
    );
    for (encoding, body) in &parts {
        if encoding == "7bit" || encoding == "8bit" {
            assert!(
                !body.contains(&0),
                "NUL in a {encoding} part: {:?}",
                String::from_utf8_lossy(body)
            );
            for (i, byte) in body.iter().enumerate() {
                if *byte == b'\r' {
                    assert_eq!(
                        body.get(i + 1),
                        Some(&b'\n'),
                        "bare CR in a {encoding} part"
                    );
                }
                if *byte == b'\n' {
                    assert!(
                        i > 0 && body[i - 1] == b'\r',
                        "bare LF in a {encoding} part"
                    );
                }
                assert!(
                    !byte.is_ascii_control() || matches!(byte, b'\r' | b'\n' | b'\t'),
                    "control byte {byte:#04x} in a {encoding} part"
                );
            }
        }
    }
    let text = mail_parser::MessageParser::default()
        .parse(&raw[..])
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .expect("text part");
    assert!(
        text.contains("first") && text.contains("second") && text.contains("third"),
        "the readable text is kept: {text}"
    );
    gw.shutdown().await;
}
