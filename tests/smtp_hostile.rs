//! Hostile clients (issue 10, findings 4 and 8): slowloris in the command phase and in
//! DATA is cut at a deadline it cannot stretch, a real client is still served when every
//! slot is taken, one address cannot take every slot, and malformed MAIL/EHLO parameters
//! get precise replies. Time is compressed: deadlines of a few seconds.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::client::RawClient;
use support::gateway::TestGateway;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// How a slow client's session ended.
#[derive(Debug)]
struct Cut {
    after: Duration,
    last_reply: String,
}

/// Connects, optionally gets to DATA, then sends `drip` one byte every `every` until
/// the server closes the connection.
async fn slowloris(addr: SocketAddr, in_data: bool, every: Duration) -> Cut {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("greeting");
    if in_data {
        w.write_all(
            b"EHLO slow.test\r\nMAIL FROM:<s@example.test>\r\nRCPT TO:<glpi@example.test>\r\nDATA\r\n",
        )
        .await
        .expect("write");
        loop {
            line.clear();
            reader.read_line(&mut line).await.expect("reply");
            if line.starts_with("354") {
                break;
            }
        }
    }
    let started = Instant::now();
    let drip: &[u8] = if in_data {
        b"Subject: slow\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    } else {
        b"NOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOP"
    };
    let mut last_reply = String::new();
    let mut bytes = drip.iter().cycle();
    loop {
        let byte = *bytes.next().expect("cycle");
        if w.write_all(&[byte]).await.is_err() {
            break;
        }
        line.clear();
        match tokio::time::timeout(every, reader.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => last_reply = line.trim_end().to_string(),
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    Cut {
        after: started.elapsed(),
        last_reply,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_its_deadline_in_commands_and_in_data() {
    let gw = TestGateway::start("command_timeout_secs = 2\ndata_timeout_secs = 2").await;
    let every = Duration::from_millis(400);
    let (command, data) = tokio::join!(
        slowloris(gw.addr, false, every),
        slowloris(gw.addr, true, every)
    );
    for (phase, cut) in [("command", &command), ("data", &data)] {
        assert!(
            cut.after >= Duration::from_millis(1800) && cut.after < Duration::from_secs(5),
            "{phase}: cut after {cut:?}"
        );
        assert!(cut.last_reply.starts_with("421 4.4.2"), "{phase}: {cut:?}");
    }
    assert_eq!(gw.spooled(), 0);
    gw.shutdown().await;
}

/// Acceptance 3: 8 slowloris clients on `max_connections = 8`, half in DATA; a real
/// client is served within the command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_slowloris_clients_do_not_starve_a_real_one() {
    let gw = TestGateway::start(
        "max_connections = 8\ncommand_timeout_secs = 3\ndata_timeout_secs = 3\nidle_eviction_secs = 1",
    )
    .await;
    let mut slow = Vec::new();
    for i in 0..8 {
        slow.push(tokio::spawn(slowloris(
            gw.addr,
            i % 2 == 1,
            Duration::from_millis(500),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut c = RawClient::connect(gw.addr).await;
    let greeting = c.reply().await.expect("greeting");
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert_eq!(c.cmd("EHLO monitor.test").await.code, 250);
    let r = c
        .send_mail(
            "centreon@example.test",
            "glpi@example.test",
            b"Subject: real\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served after {:?}",
        started.elapsed()
    );
    for task in slow {
        let cut = task.await.expect("slow client");
        assert!(cut.after < Duration::from_secs(8), "{cut:?}");
        assert!(cut.last_reply.starts_with("421"), "{cut:?}");
    }
    assert_eq!(gw.spooled(), 1);
    gw.shutdown().await;
}

async fn connect_from(source: &str, addr: SocketAddr) -> RawClient {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind source");
    let stream = socket.connect(addr).await.expect("connect");
    RawClient::from_stream(stream)
}

/// One client address cannot take every slot (Postfix anvil's
/// `smtpd_client_connection_count_limit`).
#[tokio::test]
async fn per_client_connection_limit() {
    let gw = TestGateway::start("max_connections = 10\nmax_connections_per_client = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from("127.0.0.2", gw.addr).await;
        assert_eq!(c.reply().await.expect("greeting").code, 220);
        held.push(c);
    }
    let mut third = connect_from("127.0.0.2", gw.addr).await;
    let r = third.reply().await.expect("refusal");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.7.0"), "{r:?}");
    assert!(r.text().to_lowercase().contains("your address"), "{r:?}");
    let mut other = connect_from("127.0.0.1", gw.addr).await;
    assert_eq!(other.reply().await.expect("greeting").code, 220);
    // A slot of that address frees when one of its sessions ends.
    let mut first = held.remove(0);
    assert_eq!(first.cmd("QUIT").await.code, 221);
    assert!(first.closed().await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect_from("127.0.0.2", gw.addr).await;
    assert_eq!(again.reply().await.expect("greeting").code, 220);
    gw.shutdown().await;
}

/// Finding 8: a SIZE beyond any integer is too big, not zero.
#[tokio::test]
async fn absurd_declared_size_is_552() {
    let gw = TestGateway::start("").await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.expect("greeting");
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    for size in [
        "99999999999999999999999",
        "18446744073709551616",
        "10485761",
    ] {
        let r = c
            .cmd(&format!("MAIL FROM:<a@example.test> SIZE={size}"))
            .await;
        assert_eq!(r.code, 552, "SIZE={size}: {r:?}");
        assert!(r.text().starts_with("5.3.4"), "{r:?}");
    }
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.test> SIZE=10485760").await.code,
        250
    );
    gw.shutdown().await;
}

/// Finding 8: BODY=BINARYMIME needs CHUNKING (RFC 3030), which is not advertised.
#[tokio::test]
async fn binarymime_is_refused() {
    let gw = TestGateway::start("").await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.expect("greeting");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!ehlo.text().contains("BINARYMIME") && !ehlo.text().contains("CHUNKING"));
    let r = c.cmd("MAIL FROM:<a@example.test> BODY=BINARYMIME").await;
    assert_eq!(r.code, 555, "{r:?}");
    assert!(r.text().starts_with("5.5.4"), "{r:?}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.test> BODY=8BITMIME").await.code,
        250
    );
    gw.shutdown().await;
}

/// Finding 8: the EHLO reply never echoes control bytes from the client's name.
#[tokio::test]
async fn ehlo_name_is_not_echoed_with_controls() {
    let gw = TestGateway::start("").await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.expect("greeting");
    c.send(b"EHLO evil\x00name\x07.test\r\n").await;
    let r = c.reply().await.expect("reply");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        !r.lines[0].chars().any(|ch| ch.is_control()),
        "{:?}",
        r.lines[0]
    );
    assert!(r.lines[0].contains("evilname.test"), "{:?}", r.lines[0]);
    gw.shutdown().await;
}

/// Found by the `smtp_session` fuzz target: a reply quoting the client's parameter
/// echoed its control bytes (`555 5.5.4 Unsupported option: SIZE\x1b=100`).
#[tokio::test]
async fn replies_never_echo_control_bytes_from_parameters() {
    let gw = TestGateway::start("").await;
    let mut c = RawClient::connect(gw.addr).await;
    c.reply().await.expect("greeting");
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    c.send(b"MAIL FROM:<a@example.test> SIZE\x1b=100\r\n").await;
    let r = c.reply().await.expect("reply");
    assert_eq!(r.code, 555, "{r:?}");
    assert!(
        !r.text().chars().any(|ch| ch.is_control() && ch != '\n'),
        "{r:?}"
    );
    gw.shutdown().await;
}
