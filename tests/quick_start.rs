//! The README's quick start, as a new user runs it from a fresh clone: `serve` with the
//! example configuration, `inject examples/mail/*.eml`, then look at `var/outbox/`.
//! Then GLPI's new-ticket notification comes back and the ticket id is learned.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use support::ops::{self, Served};

fn header(text: &str, name: &str) -> Option<String> {
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut found: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(v) = found.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case(name) {
                found = Some(v.trim().to_string());
            }
        }
    }
    found
}

#[test]
fn inject_the_examples_and_read_the_outbox() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clone = tempfile::tempdir().expect("tempdir");
    let dir = clone.path();
    ops::copy_tree(&repo.join("examples/mail"), &dir.join("examples/mail"));
    std::fs::copy(
        repo.join("examples/alertgate.toml"),
        dir.join("examples/alertgate.toml"),
    )
    .expect("copy config");
    ops::copy_tree(&repo.join("rules"), &dir.join("rules"));

    // The README's first command (the binary cargo built), from the clone's root.
    let served = Served::start(dir, "examples/alertgate.toml");
    let http: SocketAddr = "127.0.0.1:9925".parse().unwrap();
    ops::wait_for(20, "the HTTP listener", || {
        std::net::TcpStream::connect(http).ok()
    });

    let mut mails: Vec<String> = std::fs::read_dir(dir.join("examples/mail"))
        .unwrap()
        .map(|e| format!("examples/mail/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".eml"))
        .collect();
    mails.sort();
    assert_eq!(mails.len(), 4, "{mails:?}");
    let mut args = vec!["inject", "-c", "examples/alertgate.toml"];
    args.extend(mails.iter().map(String::as_str));
    let (ok, out, err) = ops::run(dir, &args);
    assert!(ok, "inject failed: {out}\n{err}");
    assert_eq!(out.matches("queued as").count(), 4, "{out}");

    // The problem opens the ticket at once; the repeat is only counted; the
    // acknowledgement and the recovery wait for GLPI's ticket id (feedback_addresses).
    let outbox = dir.join("var/outbox");
    let first = ops::wait_for(20, "the first mail in the outbox", || {
        ops::maildir_new(&outbox).first().cloned()
    });
    let text = std::fs::read_to_string(&first).unwrap();
    let subject = header(&text, "Subject").unwrap();
    assert!(subject.contains("CRITICAL web-01 / HTTP"), "{subject}");
    assert!(subject.contains("[ALERT-"), "{subject}");
    assert_eq!(
        header(&text, "Delivered-To").as_deref(),
        Some("glpi@example.test")
    );
    assert!(header(&text, "From")
        .unwrap()
        .contains("alertgate@example.test"));
    assert!(header(&text, "Auto-Submitted").is_none());
    let (ok, held, _) = ops::run(
        dir,
        &[
            "queue",
            "-c",
            "examples/alertgate.toml",
            "list",
            "--state",
            "held",
            "--json",
        ],
    );
    assert!(ok);
    let held: Vec<serde_json::Value> = held
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(ops::maildir_new(&outbox).len(), 1);

    // GLPI creates ticket 42 and notifies the requester, which routes back to alertgate.
    let tag = subject
        .split(['[', ']'])
        .find(|p| p.starts_with("ALERT-"))
        .unwrap()
        .to_string();
    let notification = format!(
        "From: GLPI <glpi@example.test>\r\nTo: alertgate@example.test\r\nSubject: [GLPI #0000042] New ticket {subject}\r\nMessage-ID: <GLPI_5d8e1f2a3b-Ticket-42/new@glpi.example.test>\r\nAuto-Submitted: auto-generated\r\nDate: Mon, 2 Dec 2024 09:06:00 +0100\r\n\r\nA ticket has been created: {tag}\r\n"
    );
    std::fs::write(dir.join("glpi-new-ticket.eml"), notification).unwrap();
    let (ok, out, err) = ops::run(
        dir,
        &[
            "inject",
            "-c",
            "examples/alertgate.toml",
            "glpi-new-ticket.eml",
        ],
    );
    assert!(ok, "{out}{err}");
    // The ticket id is learned; the acknowledgement and the recovery then go out as one
    // merged follow-up at GLPI's intake pace (a minute after the first mail).
    ops::wait_for(20, "the ticket id", || {
        let (_, listing, _) = ops::run(
            dir,
            &["incidents", "-c", "examples/alertgate.toml", "--json"],
        );
        listing.contains("\"ticket_id\":42").then_some(())
    });
    let (_, held, _) = ops::run(
        dir,
        &[
            "queue",
            "-c",
            "examples/alertgate.toml",
            "list",
            "--state",
            "held",
            "--json",
        ],
    );
    assert!(
        !held.trim().is_empty(),
        "the news waits for the pace, it is not lost"
    );
    assert_eq!(ops::maildir_new(&outbox).len(), 1);

    let (ok, listing, _) = ops::run(
        dir,
        &["incidents", "-c", "examples/alertgate.toml", "--json"],
    );
    assert!(ok);
    let line: serde_json::Value = serde_json::from_str(listing.lines().next().unwrap()).unwrap();
    assert_eq!(line["ticket_id"], 42);
    assert_eq!(line["host"], "web-01");
    assert_eq!(line["alerts"], 4, "{line}");
    served.stop();
}

#[test]
fn inject_refuses_what_smtp_would_refuse_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = ops::ops_config(dir.path(), 0, 0, "");
    std::fs::write(dir.path().join("alertgate.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("stranger.eml"),
        "To: someone@else.test\nFrom: a@b.test\nSubject: x\n\nbody\n",
    )
    .unwrap();
    let good = repo.join("examples/mail/01-problem.eml");
    let (ok, out, err) = ops::run(
        dir.path(),
        &[
            "inject",
            "-c",
            "alertgate.toml",
            "stranger.eml",
            "missing.eml",
            good.to_str().unwrap(),
        ],
    );
    assert!(!ok, "a refused file makes inject fail");
    assert!(
        err.contains("stranger.eml: recipient <someone@else.test> is not in accepted_recipients"),
        "{err}"
    );
    assert!(err.contains("missing.eml: cannot read"), "{err}");
    assert!(
        out.contains("01-problem.eml: queued as 1"),
        "the good file still goes in: {out}"
    );
}
