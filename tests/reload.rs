//! SIGHUP (and `alertgate reload`, through the pid file) on a running gateway: a broken
//! rule file is refused with the same precise message as `check` and the old rules keep
//! serving; a fixed one takes effect for the next mail of a connection opened before.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::ops::{self, Served};

struct Smtp {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut c = Smtp {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        assert_eq!(c.read(), 220);
        assert_eq!(c.cmd("EHLO monitor.example.test"), 250);
        c
    }
    fn read(&mut self) -> u16 {
        loop {
            let mut l = String::new();
            assert!(self.r.read_line(&mut l).unwrap() > 0, "connection dropped");
            if l.as_bytes().get(3) != Some(&b'-') {
                return l[..3].parse().unwrap();
            }
        }
    }
    fn cmd(&mut self, line: &str) -> u16 {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.read()
    }
    fn mail(&mut self, body: &str) -> u16 {
        assert_eq!(self.cmd("MAIL FROM:<monitor@example.test>"), 250);
        assert_eq!(self.cmd("RCPT TO:<glpi@example.test>"), 250);
        assert_eq!(self.cmd("DATA"), 354);
        self.cmd(&format!("{body}\r\n."))
    }
}

const HOMEMADE: &str = "To: glpi@example.test\r\nFrom: monitor@example.test\r\nSubject: HOMEMADE ALERT backup-07 CRITICAL\r\n\r\nthe nightly backup failed\r\n";

const NEW_RULE: &str = r#"source = "homemade"

[[rule]]
name = "homemade-alert"
priority = 100
match.subject = '^HOMEMADE ALERT '
extract.subject = '^HOMEMADE ALERT (?P<host>\S+) (?P<state>\S+)$'
extract.body = '^(?P<output>.+)$'
defaults = { kind = "host", type = "problem" }
map.state = { critical = "down" }
"#;

fn spool_notes(dir: &std::path::Path) -> Vec<(String, String)> {
    let (_, out, _) = ops::run(dir, &["queue", "-c", "alertgate.toml", "list", "--json"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["queue"] == "spool")
        .map(|v| {
            (
                v["state"].as_str().unwrap_or("").to_string(),
                v["note"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn sighup_keeps_old_rules_on_error_and_takes_fixed_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rules = dir.join("rules");
    ops::copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
        &rules,
    );
    let (smtp_port, http_port) = (ops::free_port(), ops::free_port());
    let config = ops::ops_config(dir, smtp_port, http_port, "")
        .replace(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("rules")
                .display()
                .to_string(),
            &rules.display().to_string(),
        )
        .replace("[rules]\n", "[rules]\nunmatched = \"hold\"\n");
    std::fs::write(dir.join("alertgate.toml"), config).unwrap();
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let next_notice = || {
        let mut buf = [0u8; 512];
        let n = notify
            .recv(&mut buf)
            .expect("a notification from alertgate");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    let served = Served::start_with_env(
        dir,
        "alertgate.toml",
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    assert_eq!(next_notice(), "READY=1", "ready once listening");
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    ops::wait_for(20, "the SMTP listener", || TcpStream::connect(smtp).ok());
    let mut session = Smtp::connect(smtp);

    // Before: no rule knows the format; the mail is held as unmatched.
    assert_eq!(session.mail(HOMEMADE), 250);
    ops::wait_for(20, "the unmatched mail held", || {
        spool_notes(dir)
            .iter()
            .any(|(s, _)| s == "held")
            .then_some(())
    });

    // A broken rule file: refused, logged with file and line, old rules kept.
    std::fs::write(
        rules.join("homemade.toml"),
        "source = \"homemade\"\n[[rule]\nname = 1\n",
    )
    .unwrap();
    let (_, check, _) = ops::run(dir, &["check", "-c", "alertgate.toml"]);
    let check_problem = check.lines().next().unwrap().to_string();
    assert!(check_problem.contains("homemade.toml"), "{check}");
    served.signal("HUP");
    assert_eq!(next_notice(), "RELOADING=1");
    assert_eq!(next_notice(), "READY=1");
    ops::wait_for(20, "the refused reload in the log", || {
        served.log_text().contains("reload refused").then_some(())
    });
    let log = served.log_text();
    assert!(log.contains("homemade.toml"), "{log}");
    let (_, message) = check_problem.split_once(": ").unwrap();
    assert!(
        log.contains(message.split(':').next().unwrap()),
        "check says {check_problem}, log:\n{log}"
    );
    assert_eq!(session.cmd("NOOP"), 250, "the session survived the reload");
    assert_eq!(session.mail(HOMEMADE), 250);
    ops::wait_for(20, "the second mail held by the old rules", || {
        (spool_notes(dir).iter().filter(|(s, _)| s == "held").count() == 2).then_some(())
    });

    // Fixed, and reloaded through the pid file: the next mail of the same session matches.
    std::fs::write(rules.join("homemade.toml"), NEW_RULE).unwrap();
    let mut probe = Smtp::connect(smtp);
    assert_eq!(probe.cmd("MAIL FROM:<monitor@example.test>"), 250);
    assert_eq!(
        probe.cmd("RCPT TO:<ops@example.test>"),
        550,
        "not accepted yet"
    );
    let config = std::fs::read_to_string(dir.join("alertgate.toml")).unwrap();
    let config = config.replace(
        "accepted_recipients = [\"glpi@example.test\"]",
        "accepted_recipients = [\"glpi@example.test\", \"ops@example.test\"]",
    );
    std::fs::write(dir.join("alertgate.toml"), config).unwrap();
    let (ok, out, err) = ops::run(dir, &["reload", "-c", "alertgate.toml"]);
    assert!(ok, "{out}{err}");
    ops::wait_for(20, "the reload in the log", || {
        served
            .log_text()
            .contains("configuration reloaded")
            .then_some(())
    });
    let mut fresh = Smtp::connect(smtp);
    assert_eq!(fresh.cmd("MAIL FROM:<monitor@example.test>"), 250);
    assert_eq!(
        fresh.cmd("RCPT TO:<ops@example.test>"),
        250,
        "new sessions use the new config"
    );
    assert_eq!(session.mail(HOMEMADE), 250);
    let outbox = dir.join("var/outbox");
    let mail = ops::wait_for(20, "the new rule's mail in the outbox", || {
        ops::maildir_new(&outbox).first().cloned()
    });
    let text = std::fs::read_to_string(mail).unwrap();
    assert!(text.contains("DOWN backup-07"), "{text}");
    assert_eq!(session.cmd("QUIT"), 221);
    served.stop();
}
