//! Acceptance of issue 2: the real binary is SIGKILLed while 8 clients send 200 mails
//! each; after a restart on the same store every mail that got a 250 is in the spool.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config for the real binary on a fixed free port; returns its path and address.
fn binary_config(dir: &std::path::Path, sections: &str) -> (std::path::PathBuf, SocketAddr) {
    let port = free_port();
    let text = support::gateway::config_text(dir, "", sections)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = dir.join("alertgate.toml");
    std::fs::write(&cfg, text).unwrap();
    (cfg, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn start_binary(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["serve", "-c"])
        .arg(config)
        .env("ALERTGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertgate")
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("alertgate did not start listening on {addr}");
}

/// Read one (possibly multi-line) reply code; None on any I/O problem.
async fn read_code(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3)?.parse().ok();
        }
    }
}

/// Send up to `count` mails on one connection; record the Message-IDs that got 250.
async fn client(addr: SocketAddr, client_no: usize, count: usize, acked: Arc<Mutex<Vec<String>>>) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    if read_code(&mut r).await != Some(220) {
        return;
    }
    if w.write_all(b"EHLO crash.test\r\n").await.is_err() || read_code(&mut r).await != Some(250) {
        return;
    }
    for n in 0..count {
        let id = format!("c{client_no}-{n}@crash.test");
        let mail = "MAIL FROM:<nagios@crash.test>
RCPT TO:<glpi@example.test>
DATA
";
        if w.write_all(mail.as_bytes()).await.is_err() {
            return;
        }
        for expected in [250, 250, 354] {
            if read_code(&mut r).await != Some(expected) {
                return;
            }
        }
        let body = format!(
            "Message-ID: <{id}>\r\nSubject: PROBLEM {n}\r\n\r\n{}\r\n.\r\n",
            "x".repeat(1500)
        );
        if w.write_all(body.as_bytes()).await.is_err() {
            return;
        }
        match read_code(&mut r).await {
            Some(250) => acked.lock().unwrap().push(id),
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_mail_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, addr) = binary_config(dir.path(), "");

    let mut child = start_binary(&cfg);
    wait_listening(addr).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|i| tokio::spawn(client(addr, i, 200, acked.clone())))
        .collect();

    // Kill once a good share is acknowledged but the run is not over.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} mails acknowledged before the kill",
        acked.len()
    );
    assert!(
        acked.len() < 1600,
        "the kill came after the run was over; it proves nothing"
    );

    // Restart on the same store: it must come up and serve.
    let mut child = start_binary(&cfg);
    wait_listening(addr).await;
    let mut db = alertgate::store::open(&alertgate::store::Location::Sqlite(
        dir.path().join("alertgate.db"),
    ))
    .unwrap();
    let stored: HashSet<String> = alertgate::store::spool::list(&mut db, None, 1_000_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.message_id)
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged mails lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );

    let after = Arc::new(Mutex::new(Vec::new()));
    client(addr, 99, 1, after.clone()).await;
    assert_eq!(
        after.lock().unwrap().len(),
        1,
        "the restarted server accepts mail"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_stops_cleanly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, addr) = binary_config(dir.path(), "");
    let mut child = start_binary(&cfg);
    wait_listening(addr).await;

    // One idle session (must be told 421) and one in the middle of DATA (must finish).
    let mut idle = support::client::RawClient::connect(addr).await;
    idle.reply().await.unwrap();
    idle.cmd("EHLO idle.test").await;
    let mut busy = support::client::RawClient::connect(addr).await;
    busy.reply().await.unwrap();
    busy.cmd("EHLO busy.test").await;
    busy.cmd("MAIL FROM:<a@example.test>").await;
    busy.cmd("RCPT TO:<glpi@example.test>").await;
    assert_eq!(busy.cmd("DATA").await.code, 354);
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after SIGTERM"
    );
    let r = idle.reply().await.expect("idle session is told");
    assert_eq!(r.code, 421, "{r:?}");

    busy.send(b"second half\r\n.\r\n").await;
    let r = busy.reply().await.expect("DATA in flight gets its answer");
    assert_eq!(r.code, 250, "{r:?}");
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "exit status {code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_accept_and_delivery_loses_no_alert() {
    let mut relay = support::relay::RecordingRelay::start().await;
    relay.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let relay_section = format!(
        "[relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n[relay.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1\n",
        relay.port()
    );
    let (cfg, addr) = binary_config(dir.path(), &relay_section);

    let mut child = start_binary(&cfg);
    wait_listening(addr).await;
    let mut c = support::client::RawClient::connect(addr).await;
    c.reply().await.unwrap();
    c.cmd("EHLO monitor.test").await;
    for n in 0..30 {
        let mail = support::alerts::centreon_service(
            "PROBLEM",
            &format!("crash-{n}"),
            "Disk",
            "CRITICAL",
            "disk full",
        );
        assert_eq!(
            c.send_mail("centreon@example.test", "glpi@example.test", &mail)
                .await
                .code,
            250
        );
    }
    // Killed right after the last 250: some mails are spooled but not yet processed.
    child.kill().unwrap();
    child.wait().unwrap();

    relay.restart().await;
    let mut child = start_binary(&cfg);
    wait_listening(addr).await;
    let mails = relay.wait_for(30, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mails_after = relay.received();
    assert_eq!(
        mails_after.len(),
        mails.len(),
        "no duplicates after the restart"
    );
    let hosts: HashSet<String> = mails_after
        .iter()
        .filter_map(|m| m.header("X-Alertgate-Host"))
        .collect();
    assert_eq!(
        hosts.len(),
        30,
        "every accepted alert delivered exactly once: {hosts:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
