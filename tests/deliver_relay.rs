//! The recording test relay itself, spoken to over raw TCP: pipelining, RSET,
//! dot-unstuffing, modes and stop/restart. Also checks the `#[path]` inclusion style.

#[path = "support/relay.rs"]
mod relay;

use relay::{RecordingRelay, RelayMode};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends `input` at once (pipelined) and reads until the server closes after QUIT.
async fn converse(port: u16, input: &str) -> Vec<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    write.write_all(input.as_bytes()).await.expect("write");
    let mut lines = BufReader::new(read).lines();
    let mut replies = Vec::new();
    let read_all = async {
        while let Some(line) = lines.next_line().await.expect("read") {
            replies.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("server closes after QUIT");
    replies
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies
        .iter()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

#[tokio::test]
async fn pipelined_session_with_rset_and_dot_stuffing() {
    let relay = RecordingRelay::start().await;
    let replies = converse(
        relay.port(),
        "EHLO client.test\r\nMAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<dropped@y.test>\r\nRSET\r\n\
         MAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n\
         Subject: hi\r\n\r\n..leading dot\r\nplain\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert!(replies.iter().any(|l| l == "250-PIPELINING"), "{replies:?}");
    assert!(replies.iter().any(|l| l == "250-8BITMIME"), "{replies:?}");
    assert_eq!(
        codes(&replies),
        vec!["220", "250", "250", "250", "250", "250", "250", "250", "354", "250", "221"],
        "{replies:?}"
    );
    let got = relay.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].from, "");
    assert_eq!(got[0].to, vec!["b@y.test", "c@y.test"]);
    assert_eq!(
        got[0].raw_str(),
        "Subject: hi\r\n\r\n.leading dot\r\nplain\r\n"
    );
    assert_eq!(relay.transactions(), 2);
}

#[tokio::test]
async fn modes_answer_as_configured() {
    let relay = RecordingRelay::start().await;
    let session =
        "HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    relay.set_mode(RelayMode::TempFailRcpt);
    let replies = converse(relay.port(), session).await;
    assert!(
        replies.iter().any(|l| l.starts_with("451 4.3.0")),
        "{replies:?}"
    );
    relay.set_mode(RelayMode::RejectData);
    let replies = converse(relay.port(), session).await;
    assert_eq!(
        codes(&replies),
        vec!["220", "250", "250", "250", "354", "550", "221"]
    );
    assert!(relay.received().is_empty());
    assert_eq!(relay.mode(), RelayMode::RejectData);
}

#[tokio::test]
async fn stop_refuses_and_closes_connections_restart_keeps_port() {
    let mut relay = RecordingRelay::start().await;
    let port = relay.port();
    let mut open = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut greeting = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut open, &mut greeting)
        .await
        .expect("greeting");
    assert_eq!(&greeting, b"220 ");
    relay.stop().await;
    assert!(!relay.is_running());
    // The open session is closed by the relay.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut open, &mut buf),
    );
    assert!(closed.await.is_ok(), "connection left open after stop");
    let refused = TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "listener still open after stop");

    relay.restart().await;
    assert_eq!(relay.port(), port);
    let replies = converse(port, "QUIT\r\n").await;
    assert_eq!(codes(&replies), vec!["220", "221"]);
    assert_eq!(relay.connections(), 2);
}
