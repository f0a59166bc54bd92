//! The HTTP listener of a running gateway (a child process): the status page loaded in
//! headless Chromium lists the open incidents with their GLPI ticket links and a dead
//! letter with its reason; `/metrics` parses as Prometheus text and counts what was sent.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::ops::{self, Served};

/// A relay that refuses every recipient for good: each mail becomes a dead letter.
fn refusing_relay() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || refuse_session(stream));
        }
    });
    port
}

fn refuse_session(mut stream: TcpStream) {
    let _ = stream.write_all(b"220 relay.test ESMTP\r\n");
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        let cmd = line.to_ascii_uppercase();
        let answer: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            b"250 relay.test\r\n"
        } else if cmd.starts_with("RCPT") {
            b"554 5.7.1 <glpi@example.test>: Recipient address rejected: mailbox disabled\r\n"
        } else if cmd.starts_with("QUIT") {
            let _ = stream.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 ok\r\n"
        };
        let _ = stream.write_all(answer);
        line.clear();
    }
}

/// One SMTP transaction; returns the reply code to DATA's end (or to RCPT when refused).
fn smtp_send(addr: SocketAddr, rcpt: &str, body: &str) -> u16 {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut read = || {
        let mut code = 0;
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            code = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(code);
            if l.as_bytes().get(3) != Some(&b'-') {
                return code;
            }
        }
    };
    assert_eq!(read(), 220);
    let mut cmd = |c: &str| {
        w.write_all(c.as_bytes()).unwrap();
        read()
    };
    assert_eq!(cmd("EHLO centreon.example.test\r\n"), 250);
    assert_eq!(
        cmd("MAIL FROM:<centreon-engine@centreon.example.test>\r\n"),
        250
    );
    let code = cmd(&format!("RCPT TO:<{rcpt}>\r\n"));
    if code != 250 {
        cmd("QUIT\r\n");
        return code;
    }
    assert_eq!(cmd("DATA\r\n"), 354);
    let code = cmd(&format!("{body}\r\n.\r\n"));
    cmd("QUIT\r\n");
    code
}

fn centreon(host: &str, service: &str, state: &str, output: &str, id: &str) -> String {
    format!(
        "To: glpi@example.test\r\nSubject: ** PROBLEM alert - {host}/{service} is {state} **\r\nMessage-Id: <{id}@centreon.example.test>\r\nFrom: centreon-engine@centreon.example.test\r\n\r\n***** centreon Notification *****\r\n\r\nNotification Type: PROBLEM\r\n\r\nService: {service}\r\nHost: {host}\r\nAddress: 192.0.2.10\r\nState: {state}\r\n\r\nDate/Time: 2024-12-02 Additional Info : {output}"
    )
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn chromium_cmd(profile: &Path) -> Command {
    let mut c = Command::new(chromium().expect("chromium is installed by .ci/run"));
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The tags of the incidents opened, from the composed subjects.
fn tag_of(dir: &Path, host: &str) -> String {
    let (ok, out, _) = ops::run(dir, &["queue", "-c", "alertgate.toml", "list", "--json"]);
    assert!(ok);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["queue"] == "outbound" && v["subject"].as_str().unwrap_or("").contains(host))
        .find_map(|v| v["incident"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no outbound mail for {host}: {out}"))
}

const TOKEN: &str = "5f0c2b7e9a1d4c3b8e6f";

#[test]
fn status_page_in_chromium_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (smtp_port, http_port, relay_port) = (ops::free_port(), ops::free_port(), refusing_relay());
    let mut config = ops::ops_config(
        dir,
        smtp_port,
        http_port,
        &format!("token = \"{TOKEN}\"\n[glpi]\nurl = \"https://glpi.example.test/\"\n"),
    );
    config = config.replace(
        &format!(
            "kind = \"maildir\"\nmaildir = \"{}\"",
            dir.join("var/outbox").display()
        ),
        &format!("host = \"127.0.0.1\"\nport = {relay_port}\ntls = \"none\""),
    );
    std::fs::write(dir.join("alertgate.toml"), &config).unwrap();
    let served = Served::start(dir, "alertgate.toml");
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    ops::wait_for(20, "the HTTP listener", || TcpStream::connect(http).ok());

    assert_eq!(ops::get(http, "/health").0, 200);
    assert_eq!(
        smtp_send(
            smtp,
            "glpi@example.test",
            &centreon(
                "web-01",
                "HTTP",
                "CRITICAL",
                "CRITICAL - Socket timeout",
                "p1"
            )
        ),
        250
    );
    assert_eq!(
        smtp_send(
            smtp,
            "glpi@example.test",
            &centreon(
                "db-01",
                "Disk /var",
                "WARNING",
                "DISK WARNING - free space: 9%",
                "p2"
            )
        ),
        250
    );
    assert_eq!(smtp_send(smtp, "someone@else.test", "x"), 550);

    // Both first mails die at the relay (554); GLPI still learned the tickets from
    // notifications (as if another path had delivered them).
    ops::wait_for(20, "two dead letters", || {
        let (_, out, _) = ops::run(
            dir,
            &[
                "queue",
                "-c",
                "alertgate.toml",
                "list",
                "--state",
                "dead",
                "--json",
            ],
        );
        (out.lines().count() == 2).then_some(())
    });
    for (host, ticket) in [("web-01", 42), ("db-01", 43)] {
        let tag = tag_of(dir, host);
        let n = format!("From: glpi@example.test\r\nTo: alertgate@example.test\r\nSubject: [GLPI #{ticket:07}] New ticket [{tag}] {host}\r\nMessage-ID: <GLPI_5d8e1f2a3b-Ticket-{ticket}/new@glpi.example.test>\r\n\r\nticket created\r\n");
        let file = dir.join(format!("n{ticket}.eml"));
        std::fs::write(&file, n).unwrap();
        let (ok, out, err) = ops::run(
            dir,
            &["inject", "-c", "alertgate.toml", file.to_str().unwrap()],
        );
        assert!(ok, "{out}{err}");
    }
    ops::wait_for(20, "both ticket ids", || {
        let (_, out, _) = ops::run(
            dir,
            &["incidents", "-c", "alertgate.toml", "--open", "--json"],
        );
        (out.matches("\"ticket_id\":4").count() == 2).then_some(())
    });

    // The page, as a browser renders it.
    let profile = tempfile::tempdir().unwrap();
    let out = chromium_cmd(profile.path())
        .args(["--dump-dom", &format!("http://{http}/")])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("Open incidents (2 of 2)"), "{dom}");
    for (host, ticket) in [("web-01", 42), ("db-01", 43)] {
        assert!(
            dom.contains(&format!("<td>{host}</td>")),
            "{host} missing:\n{dom}"
        );
        let link = format!("href=\"https://glpi.example.test/front/ticket.form.php?id={ticket}\"");
        assert!(dom.contains(&link), "{link} missing:\n{dom}");
    }
    assert!(dom.contains("Dead letters (2)"), "{dom}");
    assert!(
        dom.contains("554 5.7.1"),
        "dead letter reason missing:\n{dom}"
    );
    // Filters are plain GET forms.
    let out = chromium_cmd(profile.path())
        .args([
            "--dump-dom",
            &format!("http://{http}/?source=centreon&state=warning&q="),
        ])
        .output()
        .unwrap();
    let filtered = String::from_utf8_lossy(&out.stdout);
    assert!(
        filtered.contains("Open incidents (1 of 2)")
            && filtered.contains("<td>db-01</td>")
            && !filtered.contains("<td>web-01</td>"),
        "{filtered}"
    );
    let shot = dir.join("status.png");
    let out = chromium_cmd(profile.path())
        .args([
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
            &format!("http://{http}/"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    if let Ok(target) = std::env::var("ALERTGATE_SCREENSHOT") {
        std::fs::copy(&shot, target).unwrap();
    }

    // Metrics.
    let (code, response) = ops::get(http, "/metrics");
    assert_eq!(code, 200);
    let text = ops::body(&response);
    let lines: Vec<Result<String, std::io::Error>> =
        text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape =
        prometheus_parse::Scrape::parse(lines.into_iter()).expect("prometheus text parses");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} {label:?} missing:\n{text}"))
    };
    assert_eq!(value("alertgate_smtp_mails_accepted_total", None), 2.0);
    assert_eq!(
        value("alertgate_smtp_refusals_total", Some(("code", "550"))),
        1.0
    );
    assert_eq!(
        value(
            "alertgate_delivery_attempts_total",
            Some(("outcome", "dead"))
        ),
        2.0
    );
    assert_eq!(
        value("alertgate_outbound_mails", Some(("state", "dead"))),
        2.0
    );
    assert_eq!(value("alertgate_open_incidents", None), 2.0);
    assert_eq!(value("alertgate_incidents_without_ticket", None), 0.0);
    assert_eq!(
        value("alertgate_spool_messages", Some(("state", "feedback"))),
        2.0
    );
    assert!(
        text.contains("alertgate_delivery_latency_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("alertgate_store_commit_latency_seconds_count"),
        "{text}"
    );

    // Actions: never by GET; by POST only with the token.
    assert_eq!(ops::get(http, "/actions/retry/1").0, 405);
    assert_eq!(
        ops::http(http, "POST", "/actions/retry/1", &[], "token=").0,
        403
    );
    assert_eq!(
        ops::http(http, "POST", "/actions/retry/1", &[], "token=wrong").0,
        403
    );
    let (code, _) = ops::http(
        http,
        "POST",
        "/actions/retry/1",
        &[],
        &format!("token={TOKEN}"),
    );
    assert_eq!(
        code, 303,
        "a retried dead letter sends the browser back to the page"
    );
    ops::wait_for(20, "the retried letter's second attempt", || {
        let (_, r) = ops::get(http, "/metrics");
        r.contains("alertgate_delivery_attempts_total{outcome=\"dead\"} 3")
            .then_some(())
    });
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(
        ops::http(http, "POST", "/actions/release/999", &[&bearer], "").0,
        404
    );

    // Ready: the relay was reached (it refused for good), the store is writable.
    let (code, response) = ops::get(http, "/ready");
    assert_eq!(code, 200, "{response}");
    assert!(ops::body(&response).contains("\"ready\":true"));
    served.stop();
}

#[test]
fn ready_is_503_while_the_relay_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (smtp_port, http_port, closed) = (ops::free_port(), ops::free_port(), ops::free_port());
    let config = ops::ops_config(dir, smtp_port, http_port, "").replace(
        &format!(
            "kind = \"maildir\"\nmaildir = \"{}\"",
            dir.join("var/outbox").display()
        ),
        &format!("host = \"127.0.0.1\"\nport = {closed}\ntls = \"none\""),
    );
    std::fs::write(dir.join("alertgate.toml"), &config).unwrap();
    let served = Served::start(dir, "alertgate.toml");
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    ops::wait_for(20, "the HTTP listener", || TcpStream::connect(http).ok());
    let (code, before) = ops::get(http, "/ready");
    assert_eq!(code, 200, "nothing tried yet: {before}");
    assert_eq!(
        smtp_send(
            smtp,
            "glpi@example.test",
            &centreon("web-01", "HTTP", "CRITICAL", "down", "r1")
        ),
        250
    );
    let response = ops::wait_for(20, "/ready to turn 503", || {
        let (code, r) = ops::get(http, "/ready");
        (code == 503).then_some(r)
    });
    let body: serde_json::Value = serde_json::from_str(ops::body(&response).trim()).unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["store"]["ok"], true);
    assert_eq!(body["checks"]["delivery"]["ok"], false, "{body}");
    assert_eq!(ops::get(http, "/health").0, 200, "the process is still up");
    let (_, metrics) = ops::get(http, "/metrics");
    assert!(
        metrics.contains("alertgate_delivery_attempts_total{outcome=\"deferred\"} 1"),
        "{metrics}"
    );
    served.stop();
}
