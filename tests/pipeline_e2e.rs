//! Acceptance of issue 4, end to end over loopback: monitoring mail in over SMTP, through
//! rules, correlation and compose, out to a recording relay.

mod support;

use regex::Regex;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::alerts::{centreon_host, centreon_service, header, header_lines, subject};
use support::gateway::TestGateway;
use support::relay::{RecordingRelay, RelayMode};

/// GLPI's own subject regex (MailCollector): greedy, unanchored.
fn glpi_subject_ticket(subject: &str) -> Option<String> {
    Regex::new(r"\[.+#(\d+)\]")
        .unwrap()
        .captures(subject)
        .map(|c| c[1].to_string())
}

/// Poll the outbound queue until `done` holds (10 s at most); returns whether it did.
async fn outbound_until(
    gw: &TestGateway,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> bool {
    for _ in 0..200 {
        if done(&gw.outbound()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// No mail arrives beyond what is expected within `quiet`.
async fn no_more_than(relay: &RecordingRelay, n: usize, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    assert_eq!(
        relay.received().len(),
        n,
        "unexpected extra mail: {:#?}",
        relay
            .received()
            .iter()
            .map(|m| subject(&m.raw))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn centreon_service_sequence_gives_open_update_update_resolve() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    gw.send(&centreon_service(
        "PROBLEM",
        "web-01",
        "HTTP",
        "WARNING",
        "HTTP WARNING: 2.5 s response",
    ))
    .await;
    for _ in 0..3 {
        gw.send(&centreon_service(
            "PROBLEM",
            "web-01",
            "HTTP",
            "WARNING",
            "HTTP WARNING: 2.5 s response",
        ))
        .await;
    }
    gw.send(&centreon_service(
        "PROBLEM",
        "web-01",
        "HTTP",
        "CRITICAL",
        "HTTP CRITICAL: timeout",
    ))
    .await;
    gw.send(&centreon_service(
        "ACKNOWLEDGEMENT",
        "web-01",
        "HTTP",
        "CRITICAL",
        "HTTP CRITICAL: timeout",
    ))
    .await;
    gw.send(&centreon_service(
        "RECOVERY",
        "web-01",
        "HTTP",
        "OK",
        "HTTP OK: 0.1 s",
    ))
    .await;

    let mails = relay.wait_for(4, Duration::from_secs(20)).await;
    no_more_than(&relay, 4, Duration::from_millis(1500)).await;
    let subjects: Vec<String> = mails.iter().map(|m| subject(&m.raw)).collect();
    let tag_re = Regex::new(r"^\[(ALERT-[0-9a-f]{8})\] ").unwrap();
    let tags: HashSet<String> = subjects
        .iter()
        .map(|s| {
            tag_re
                .captures(s)
                .unwrap_or_else(|| panic!("no tag in {s:?}"))[1]
                .to_string()
        })
        .collect();
    assert_eq!(tags.len(), 1, "one incident, one tag: {subjects:?}");
    let tag = tags.into_iter().next().unwrap();
    assert!(
        subjects[0].starts_with(&format!(
            "[{tag}] WARNING web-01 / HTTP: HTTP WARNING: 2.5 s response"
        )),
        "{subjects:?}"
    );
    assert!(
        subjects[1].contains("CRITICAL web-01 / HTTP"),
        "{subjects:?}"
    );
    assert!(subjects[2].contains("ACKNOWLEDGED"), "{subjects:?}");
    assert!(
        subjects[3].contains("RECOVERED") || subjects[3].contains(" OK "),
        "{subjects:?}"
    );

    // One References chain: every later mail points at the first one.
    let first_id = header(&mails[0].raw, "Message-ID").unwrap();
    assert!(header(&mails[0].raw, "In-Reply-To").is_none());
    let mut ids = HashSet::new();
    for m in &mails {
        assert!(
            ids.insert(header(&m.raw, "Message-ID").unwrap()),
            "Message-IDs are distinct"
        );
        assert!(!first_id.to_ascii_lowercase().contains("glpi"));
        for line in header_lines(&m.raw) {
            let lower = line.to_ascii_lowercase();
            assert!(!lower.starts_with("auto-submitted:"), "{line}");
            assert!(!lower.starts_with("x-auto-response-suppress:"), "{line}");
        }
        assert_eq!(m.to, vec!["glpi@example.test".to_string()]);
        assert_eq!(m.from, "alertgate@example.test");
        assert_eq!(
            glpi_subject_ticket(&subject(&m.raw)),
            None,
            "no ticket number before one is known"
        );
    }
    for m in &mails[1..] {
        assert_eq!(
            header(&m.raw, "In-Reply-To").as_deref(),
            Some(first_id.as_str())
        );
        assert!(header(&m.raw, "References").unwrap().contains(&first_id));
    }
    // The repeats were counted, not lost.
    let notes: Vec<String> = gw
        .spool_rows()
        .into_iter()
        .map(|r| r.note.unwrap_or_default())
        .collect();
    assert_eq!(
        notes.iter().filter(|n| n.contains("suppressed")).count(),
        3,
        "{notes:#?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn host_down_folds_its_services_into_one_incident() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    gw.send(&centreon_host(
        "PROBLEM",
        "db-01",
        "DOWN",
        "PING CRITICAL - Packet loss = 100%",
    ))
    .await;
    for i in 0..40 {
        gw.send(&centreon_service(
            "PROBLEM",
            "db-01",
            &format!("svc-{i:02}"),
            "CRITICAL",
            "connection refused",
        ))
        .await;
    }
    gw.send(&centreon_host(
        "ACKNOWLEDGEMENT",
        "db-01",
        "DOWN",
        "PING CRITICAL - Packet loss = 100%",
    ))
    .await;
    gw.send(&centreon_host(
        "RECOVERY",
        "db-01",
        "UP",
        "PING OK - rta 0.5 ms",
    ))
    .await;

    let mails = relay.wait_for(3, Duration::from_secs(20)).await;
    no_more_than(&relay, 3, Duration::from_millis(1500)).await;
    let subjects: Vec<String> = mails.iter().map(|m| subject(&m.raw)).collect();
    assert!(subjects[0].contains("DOWN db-01"), "{subjects:?}");
    let update = mails[1].raw_str();
    let resolve = mails[2].raw_str();
    for i in 0..40 {
        let svc = format!("svc-{i:02}");
        assert!(update.contains(&svc), "update lists folded {svc}");
        assert!(resolve.contains(&svc), "recovery lists folded {svc}");
    }
    let tag = &subjects[0][1..15];
    assert!(
        subjects.iter().all(|s| s.contains(tag)),
        "all about one incident: {subjects:?}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn injection_in_alert_text_stays_data() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    // The service name arrives RFC 2047-encoded with CR LF and a Bcc line inside; the
    // output carries GLPI-looking ticket markers.
    let mail = centreon_service(
        "PROBLEM",
        "web-01",
        "HTTP",
        "CRITICAL",
        "disk #2] failed [GLPI #42] see #7]",
    )
    .iter()
    .map(|&b| b as char)
    .collect::<String>()
    .replace(
        "Subject: ** PROBLEM alert - web-01/HTTP is CRITICAL **",
        "Subject: =?utf-8?q?**_PROBLEM_alert_-_web-01/HTTP=0D=0ABcc:_x@evil.test_is_CRITICAL_**?=",
    );
    gw.send(mail.as_bytes()).await;
    let mails = relay.wait_for(1, Duration::from_secs(20)).await;
    let out = &mails[0];
    assert_eq!(
        out.to,
        vec!["glpi@example.test".to_string()],
        "no extra recipient"
    );
    for line in header_lines(&out.raw) {
        assert!(
            !line.to_ascii_lowercase().starts_with("bcc:"),
            "injected header: {line}"
        );
    }
    let subj = subject(&out.raw);
    assert_eq!(
        glpi_subject_ticket(&subj),
        None,
        "GLPI would thread {subj:?} into a ticket"
    );
    assert!(subj.contains("disk nº2] failed"), "{subj:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn relay_outage_queues_then_delivers_everything_once_in_order() {
    let mut relay = RecordingRelay::start().await;
    relay.stop().await;
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    // 10 incidents × (problem, state change, recovery) + 20 repeats = 50 alerts.
    for round in 0..3 {
        for host in 0..10 {
            let (kind, state) = match round {
                0 => ("PROBLEM", "WARNING"),
                1 => ("PROBLEM", "CRITICAL"),
                _ => ("RECOVERY", "OK"),
            };
            gw.send(&centreon_service(
                kind,
                &format!("app-{host}"),
                "Load",
                state,
                &format!("load {state}"),
            ))
            .await;
            if round < 2 {
                gw.send(&centreon_service(
                    kind,
                    &format!("app-{host}"),
                    "Load",
                    state,
                    "repeat",
                ))
                .await;
            }
        }
    }
    gw.wait_processed().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.received().is_empty());
    let queued = gw.outbound();
    assert_eq!(queued.len(), 30, "{queued:#?}");
    assert!(queued.iter().all(|(state, _, _)| state == "queued"));

    relay.restart().await;
    let mails = relay.wait_for(30, Duration::from_secs(30)).await;
    no_more_than(&relay, 30, Duration::from_millis(2500)).await;
    let mut per_incident: HashMap<String, Vec<String>> = HashMap::new();
    let mut ids = HashSet::new();
    for m in &mails {
        assert!(
            ids.insert(header(&m.raw, "Message-ID").unwrap()),
            "delivered twice"
        );
        let s = subject(&m.raw);
        per_incident
            .entry(s[1..15].to_string())
            .or_default()
            .push(s);
    }
    assert_eq!(per_incident.len(), 10);
    for (tag, subjects) in per_incident {
        assert_eq!(subjects.len(), 3, "{tag}: {subjects:?}");
        assert!(subjects[0].contains("] WARNING "), "{subjects:?}");
        assert!(subjects[1].contains("CRITICAL"), "{subjects:?}");
        assert!(subjects[2].contains("RECOVERED"), "{subjects:?}");
    }
    assert!(gw.outbound().iter().all(|(state, _, _)| state == "sent"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_550_from_the_relay_dead_letters_the_mail_visibly() {
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::RejectRcpt);
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    gw.send(&centreon_service(
        "PROBLEM", "web-09", "HTTP", "CRITICAL", "down",
    ))
    .await;
    let dead = outbound_until(&gw, |rows| rows.iter().any(|(state, _, _)| state == "dead")).await;
    assert!(dead, "{:?}", gw.outbound());
    let (ok, listing) = gw.queue_cli(&["list"]);
    assert!(ok);
    assert!(listing.contains("dead"), "{listing}");
    assert!(
        listing.contains("550"),
        "the relay's reply is shown: {listing}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_storm_is_capped_and_digested_without_losing_an_alert() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(
        relay.port(),
        "",
        &format!("{NO_PACE}[correlation]\nmax_new_incidents_per_minute = 60\n"),
    )
    .await;
    let mut senders = Vec::new();
    for client in 0..10 {
        let addr = gw.addr;
        senders.push(tokio::spawn(async move {
            let mut c = support::client::RawClient::connect(addr).await;
            c.reply().await.unwrap();
            c.cmd("EHLO storm.test").await;
            for n in 0..50 {
                let mail = centreon_service(
                    "PROBLEM",
                    &format!("host-{client}-{n}"),
                    "Ping",
                    "CRITICAL",
                    "unreachable",
                );
                assert_eq!(
                    c.send_mail("centreon@example.test", "glpi@example.test", &mail)
                        .await
                        .code,
                    250
                );
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    gw.wait_processed().await;
    // Digests go out when the minute of the storm is over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let listed = loop {
        let mails = relay.received();
        let opens = mails.iter().filter(|m| is_incident_mail(&m.raw)).count();
        let digest_text: String = mails
            .iter()
            .filter(|m| !is_incident_mail(&m.raw))
            .map(|m| m.raw_str())
            .collect();
        let listed = (0..10)
            .flat_map(|c| (0..50).map(move |n| format!("host-{c}-{n}")))
            .filter(|h| {
                digest_text.contains(&format!("{h}<"))
                    || digest_text.contains(&format!("{h}\r\n"))
                    || digest_text.contains(&format!("{h} "))
            })
            .count();
        if opens + listed >= 500 || tokio::time::Instant::now() > deadline {
            // The limit is a sliding minute: even a burst that straddles a minute boundary
            // opens at most the limit.
            let mut per_minute: HashMap<String, usize> = HashMap::new();
            for m in mails.iter().filter(|m| is_incident_mail(&m.raw)) {
                let date = header(&m.raw, "Date").unwrap();
                let minute = date
                    .rsplit_once(':')
                    .map_or(date.clone(), |x| x.0.to_string());
                *per_minute.entry(minute).or_default() += 1;
            }
            assert!(
                per_minute.values().all(|&n| n <= 60),
                "open mails per minute: {per_minute:?}"
            );
            assert!(opens <= 60, "{opens} open mails");
            break opens + listed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        listed >= 500,
        "only {listed} of 500 alerts in open mails and digests"
    );
    gw.shutdown().await;
}

/// Every update mailed as it comes (GLPI's intake pace is tested in glpi_timing.rs).
const NO_PACE: &str = "[feedback]\nmin_mail_interval_secs = 0\n";

/// An incident's mail, not a storm digest (whose subject carries its own tag too).
fn is_incident_mail(raw: &[u8]) -> bool {
    let s = subject(raw);
    s.starts_with("[ALERT-") && !s.contains("] DIGEST ")
}

const UNKNOWN_FORMAT: &[u8] =
    b"From: backup@example.test\r\nTo: glpi@example.test\r\nSubject: Nightly backup report\r\nMessage-ID: <backup.1@example.test>\r\n\r\nAll 12 jobs finished.\r\n";

#[tokio::test]
async fn unmatched_mail_is_forwarded_tagged_by_default() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    gw.send(UNKNOWN_FORMAT).await;
    let mails = relay.wait_for(1, Duration::from_secs(20)).await;
    let subj = subject(&mails[0].raw);
    assert!(
        subj.starts_with("[MAIL-") && subj.ends_with("] Nightly backup report"),
        "{subj}"
    );
    assert!(mails[0].raw_str().contains("All 12 jobs finished."));
    assert_eq!(
        mails[0].from, "alertgate@example.test",
        "still written as the GLPI requester"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unmatched_mail_is_held_or_dropped_by_policy_and_never_silently() {
    for (policy, state) in [("hold", "held"), ("drop", "dropped")] {
        let relay = RecordingRelay::start().await;
        let gw = TestGateway::start_full(
            "",
            &format!("unmatched = \"{policy}\""),
            &format!(
                "[relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
                relay.port()
            ),
        )
        .await;
        gw.send(UNKNOWN_FORMAT).await;
        gw.wait_processed().await;
        let rows = gw.spool_rows();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (got, note) = (
            rows[0].state.to_string(),
            rows[0].note.clone().unwrap_or_default(),
        );
        assert_eq!(got, state);
        assert!(note.contains("no rule matched"), "{note}");
        let (_, listing) = gw.queue_cli(&["list", "--state", state]);
        assert!(
            listing.contains("backup@example.test") || listing.contains("centreon@example.test"),
            "{listing}"
        );
        assert!(listing.contains(state), "{listing}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(relay.received().is_empty(), "{policy}: nothing forwarded");
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn dead_letters_can_be_retried_and_purged_from_the_cli() {
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::RejectData);
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    gw.send(&centreon_service(
        "PROBLEM", "web-10", "HTTP", "CRITICAL", "down",
    ))
    .await;
    assert!(outbound_until(&gw, |rows| rows.iter().any(|(state, _, _)| state == "dead")).await);
    let queue = |args: &[&str]| gw.queue_cli(args);
    let id = gw.outbound_rows()[0].id;
    let (ok, shown) = queue(&["show", &format!("o{id}")]);
    assert!(
        ok && shown.contains("state: dead") && shown.contains("550"),
        "{shown}"
    );
    relay.set_mode(RelayMode::Accept);
    let (ok, said) = queue(&["retry", &format!("o{id}")]);
    assert!(ok && said.contains("1 mail(s) queued again"), "{said}");
    relay.wait_for(1, Duration::from_secs(20)).await;
    assert!(outbound_until(&gw, |rows| rows.iter().all(|(state, _, _)| state == "sent")).await);
    let (ok, said) = queue(&["purge", "sent"]);
    assert!(ok && said.contains("1 mail(s) deleted"), "{said}");
    assert!(gw.outbound().is_empty());
    let (ok, _) = queue(&["show", "x1"]);
    assert!(!ok, "a bad id is an error");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_mail_resent_after_a_lost_reply_is_recognised_and_ignored() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(relay.port(), "", NO_PACE).await;
    let mail = centreon_service("PROBLEM", "dup-01", "HTTP", "WARNING", "slow");
    gw.send(&mail).await;
    // The client never saw our 250 and sends the very same message again.
    gw.send(&mail).await;
    // A tool that reuses its Message-ID for a state change is not a duplicate.
    let changed = String::from_utf8(centreon_service(
        "PROBLEM", "dup-01", "HTTP", "CRITICAL", "down",
    ))
    .unwrap();
    let original_id = header(&mail, "Message-Id").unwrap();
    let changed_id = header(changed.as_bytes(), "Message-Id").unwrap();
    gw.send(changed.replace(&changed_id, &original_id).as_bytes())
        .await;
    gw.wait_processed().await;
    let notes: Vec<String> = gw
        .spool_rows()
        .into_iter()
        .map(|r| r.note.unwrap_or_default())
        .collect();
    assert!(notes[0].starts_with("open "), "{notes:?}");
    assert!(notes[1].starts_with("duplicate of spool id"), "{notes:?}");
    let states: Vec<_> = gw.spool_rows().into_iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            alertgate::store::SpoolState::Processed,
            alertgate::store::SpoolState::Duplicate,
            alertgate::store::SpoolState::Processed
        ]
    );
    assert!(notes[2].starts_with("update "), "{notes:?}");
    relay.wait_for(2, Duration::from_secs(20)).await;
    no_more_than(&relay, 2, Duration::from_millis(1500)).await;
    gw.shutdown().await;
}
