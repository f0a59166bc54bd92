//! Acceptance of issue 9 (the gateway's side): the closed loop against a GLPI double whose
//! collector runs in batches of at most 10, every 1–2 s. Solutions are never overtaken by
//! a follow-up; a recovery before the ticket id lands on the right ticket; a storm makes
//! one digest ticket, not hundreds; a backlog of 30 collector runs sends nothing unthreaded.

mod support;

use alertgate::clock::Clock;
use std::collections::HashMap;
use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::TestGateway;
use support::glpi::{GlpiConfig, GlpiDouble, Source, Ticket, GLPI_COLLECTOR_BATCH, STATUS_SOLVED};

const FEEDBACK: &str = "alertgate@example.test";

async fn batched_glpi(every_secs: u64) -> GlpiDouble {
    GlpiDouble::start_with(GlpiConfig::batched(
        Duration::from_secs(every_secs),
        GLPI_COLLECTOR_BATCH,
    ))
    .await
}

fn feedback(every_secs: u64, min_mail_interval: u64, extra: &str) -> String {
    format!(
        "[feedback]\ncollector_interval_secs = {every_secs}\ncollector_batch = 10\nmin_mail_interval = {min_mail_interval}\n{extra}"
    )
}

fn api(glpi: &GlpiDouble, solve: bool) -> String {
    let c = glpi.config();
    format!(
        "[glpi_api]\nurl = \"{}\"\nuser_token = \"{}\"\napp_token = \"{}\"\nsolve_on_recovery = {solve}\n",
        glpi.api_url(),
        c.user_token,
        c.app_token.clone().unwrap_or_default()
    )
}

async fn gateway(glpi: &GlpiDouble, sections: &str, clock: Option<Clock>) -> TestGateway {
    let server = format!("feedback_addresses = [\"{FEEDBACK}\"]");
    let gw = match clock {
        Some(clock) => {
            TestGateway::with_relay_and_clock(glpi.smtp_port(), &server, sections, clock).await
        }
        None => TestGateway::with_relay(glpi.smtp_port(), &server, sections).await,
    };
    glpi.set_notify_target(gw.addr, FEEDBACK);
    gw
}

async fn eventually(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

fn tag_of(title: &str) -> Option<String> {
    let start = title.find("[ALERT-")? + 1;
    title.get(start..start + 14).map(str::to_owned)
}

/// Each incident's tag as alertgate recorded it, by (host, service).
fn incident_tags(gw: &TestGateway) -> HashMap<String, String> {
    gw.incidents()
        .into_iter()
        .map(|i| (i.key.to_string(), i.tag))
        .collect()
}

/// The incident as the store keeps it (its JSON snapshot).
fn incident_json(gw: &TestGateway, tag: &str) -> Option<String> {
    alertgate::store::incidents::by_tag(&mut gw.db(), tag)
        .ok()
        .flatten()
        .map(|i| serde_json::to_string(&i).expect("incident encodes"))
}

/// (incident, sent at) of every mail sent, by incident then time.
fn sent_times(gw: &TestGateway) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = gw
        .outbound_rows()
        .into_iter()
        .filter(|r| r.state == alertgate::store::outbound::OutboundState::Sent)
        .map(|r| (r.order_key, r.sent_at.unwrap_or_default()))
        .collect();
    rows.sort();
    rows
}

fn unthreaded(gw: &TestGateway) -> u64 {
    gw.kv("unthreaded_after_timeout")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn summary(tickets: &[Ticket]) -> String {
    tickets
        .iter()
        .map(|t| {
            format!(
                "#{} {} status {} followups {} solutions {}",
                t.id,
                t.title,
                t.status,
                t.followups.len(),
                t.solutions.len()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Acceptance 1: API mode, 40 incidents whose last update comes seconds before their
/// recovery, collector every 2 s: every ticket solved, no solution refused, no
/// follow-up after a solution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_mode_solutions_are_never_overtaken_by_an_update() {
    let glpi = batched_glpi(2).await;
    glpi.set_notifications(false);
    let sections = format!("{}{}", feedback(2, 60, ""), api(&glpi, true));
    let gw = gateway(&glpi, &sections, None).await;
    let key = |i: usize| (format!("app-{:02}", i / 4), format!("svc-{}", i % 4));
    for i in 0..40 {
        let (h, s) = key(i);
        gw.send(&centreon_service("PROBLEM", &h, &s, "WARNING", "slow"))
            .await;
    }
    // Some tickets exist by now, most are still in the mailbox.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..40 {
        let (h, s) = key(i);
        gw.send(&centreon_service("PROBLEM", &h, &s, "CRITICAL", "timeout"))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..40 {
        let (h, s) = key(i);
        gw.send(&centreon_service(
            "ACKNOWLEDGEMENT",
            &h,
            &s,
            "CRITICAL",
            "timeout",
        ))
        .await;
        gw.send(&centreon_service("RECOVERY", &h, &s, "OK", "fine"))
            .await;
    }
    let solved = eventually(Duration::from_secs(90), || {
        let t = glpi.tickets();
        t.len() == 40 && t.iter().all(|t| t.status == STATUS_SOLVED)
    })
    .await;
    let tickets = glpi.tickets();
    assert!(solved, "not all solved:\n{}", summary(&tickets));
    assert_eq!(glpi.solutions_refused(), 0);
    assert_eq!(glpi.reopen_count(), 0);
    for t in &tickets {
        assert!(t.followups_after_solution().is_empty(), "#{}", t.id);
        assert_eq!(t.solutions.len(), 1);
        let tag = tag_of(&t.title).expect("tag");
        let all: String = t.followups.iter().map(|f| f.content.as_str()).collect();
        assert!(
            all.contains(&tag) && all.contains("NOW CRITICAL") && all.contains("ACKNOWLEDGED"),
            "#{}: {all}",
            t.id
        );
        assert!(t.followups.iter().all(|f| f.source == Source::Api));
    }
    // Nothing was mailed but the open mails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(glpi.mails_accepted(), 40);
    assert!(glpi.refused().is_empty());
    gw.shutdown().await;
}

/// Acceptance 3: notification mode, collector and notifications every 2 s: tickets =
/// incidents, none misthreaded, no two mails of an incident within `min_mail_interval`,
/// and a recovery that arrives before the ticket id lands on the right ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_mode_holds_early_recoveries_and_keeps_the_pace() {
    let glpi = batched_glpi(2).await;
    let gw = gateway(&glpi, &feedback(2, 4, ""), None).await;
    for i in 0..20 {
        let (h, s) = (format!("web-{i:02}"), "http".to_string());
        gw.send(&centreon_service("PROBLEM", &h, &s, "CRITICAL", "down"))
            .await;
        if i % 2 == 0 {
            // Recovered at once: long before GLPI answers.
            gw.send(&centreon_service("RECOVERY", &h, &s, "OK", "up again"))
                .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in (1..20).step_by(2) {
        let (h, s) = (format!("web-{i:02}"), "http".to_string());
        gw.send(&centreon_service(
            "ACKNOWLEDGEMENT",
            &h,
            &s,
            "CRITICAL",
            "down",
        ))
        .await;
        gw.send(&centreon_service("RECOVERY", &h, &s, "OK", "up again"))
            .await;
    }
    let recovered = |t: &Ticket| t.followups.iter().any(|f| f.content.contains("RECOVERED"));
    let done = eventually(Duration::from_secs(60), || {
        let t = glpi.tickets();
        t.len() >= 20 && t.iter().all(recovered) && glpi.mailbox_len() == 0
    })
    .await;
    let tickets = glpi.tickets();
    assert!(done, "{}", summary(&tickets));
    assert_eq!(tickets.len(), 20, "tickets = incidents");
    assert!(glpi.refused().is_empty(), "{:#?}", glpi.refused());
    for t in &tickets {
        let tag = tag_of(&t.title).expect("tag");
        assert!(
            !t.title.contains("RECOVERED"),
            "a ticket opened by a recovery: {}",
            t.title
        );
        for f in &t.followups {
            assert!(
                f.subject.contains(&tag),
                "misthreaded into #{}: {}",
                t.id,
                f.subject
            );
        }
        assert!(
            t.followups.len() <= 2,
            "#{}: at most ack, then recovery",
            t.id
        );
    }
    // The pace, as GLPI's mailbox saw it.
    let sent = sent_times(&gw);
    let followups: usize = tickets.iter().map(|t| t.followups.len()).sum();
    assert_eq!(
        sent.len(),
        20 + followups,
        "every mail sent became a ticket or a follow-up"
    );
    for pair in sent.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(pair[1].1 - pair[0].1 >= 4, "{pair:?}");
        }
    }
    assert_eq!(unthreaded(&gw), 0);
    gw.shutdown().await;
}

/// Moves a manual clock forward 1 s every 100 ms until stopped: the gateway's 60 s
/// storm window and its pace pass in seconds while GLPI's cron keeps real time.
fn run_clock(clock: Clock) -> tokio::sync::watch::Sender<bool> {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => clock.advance(1),
                _ = stopped.changed() => return,
            }
        }
    });
    stop
}

/// Acceptance 4: 300 distinct problems in one burst and their recoveries 60 s later.
async fn storm_makes_one_digest_ticket(with_api: bool) {
    let glpi = batched_glpi(1).await;
    if with_api {
        glpi.set_notifications(false);
    }
    let clock = Clock::manual(1_800_000_000);
    let mut sections = feedback(1, 5, "");
    if with_api {
        sections.push_str(&api(&glpi, true));
    }
    let gw = gateway(&glpi, &sections, Some(clock.clone())).await;
    for i in 0..300 {
        gw.send(&centreon_service(
            "PROBLEM",
            &format!("array-{:03}", i / 5),
            &format!("lun-{}", i % 5),
            "CRITICAL",
            "I/O error",
        ))
        .await;
    }
    gw.wait_processed().await;
    let ticking = run_clock(clock.clone());
    // The digest goes out after its window; GLPI takes 61 mails in 7 runs.
    assert!(
        eventually(Duration::from_secs(60), || glpi.tickets().len() == 61).await,
        "{} tickets",
        glpi.tickets().len()
    );
    let _ = ticking.send(true);
    clock.advance(60);
    for i in 0..300 {
        gw.send(&centreon_service(
            "RECOVERY",
            &format!("array-{:03}", i / 5),
            &format!("lun-{}", i % 5),
            "OK",
            "fine",
        ))
        .await;
    }
    gw.wait_processed().await;
    let ticking = run_clock(clock.clone());
    let tags = incident_tags(&gw);
    let digest_tag = gw
        .incidents()
        .into_iter()
        .find(|i| i.key.to_string().starts_with("alertgate:storm/"))
        .map(|i| i.tag)
        .expect("a digest incident");
    let all_recorded = || {
        let tickets = glpi.tickets();
        let mut text = String::new();
        for t in &tickets {
            for f in &t.followups {
                text.push_str(&f.content);
            }
        }
        tags.values().filter(|t| **t != digest_tag).all(|tag| {
            let own = tickets
                .iter()
                .find(|t| t.title.contains(tag.as_str()))
                .is_some_and(|t| {
                    t.followups.iter().any(|f| f.content.contains("RECOVERED"))
                        || t.status == STATUS_SOLVED
                });
            own || text.contains(&format!("{tag} "))
        })
    };
    let digest_done = || {
        glpi.tickets()
            .iter()
            .find(|t| t.title.contains(&digest_tag))
            .is_some_and(|t| {
                if with_api {
                    t.status == STATUS_SOLVED
                } else {
                    t.followups.iter().any(|f| f.content.contains("RECOVERED"))
                }
            })
    };
    let done = eventually(Duration::from_secs(90), || {
        all_recorded() && digest_done() && glpi.mailbox_len() == 0
    })
    .await;
    let _ = ticking.send(true);
    let tickets = glpi.tickets();
    assert!(
        done,
        "with_api {with_api}: recorded {}, digest done {}:\n{}",
        all_recorded(),
        digest_done(),
        summary(&tickets)
    );
    assert!(
        tickets.len() <= 61,
        "at most the limit + 1 tickets: {}",
        tickets.len()
    );
    for (_, title, _) in glpi.first_mails() {
        assert!(
            !title.contains("RECOVERED"),
            "a ticket opened by a recovery: {title}"
        );
    }
    let digest = tickets
        .iter()
        .find(|t| t.title.contains(&digest_tag))
        .expect("the digest's ticket");
    assert!(
        digest.title.contains("DIGEST 240 alerts"),
        "{}",
        digest.title
    );
    if with_api {
        assert_eq!(glpi.solutions_refused(), 0);
        assert!(digest.followups_after_solution().is_empty());
    }
    assert!(glpi.refused().is_empty(), "{:#?}", glpi.refused());
    assert_eq!(unthreaded(&gw), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_by_mail_makes_one_digest_ticket() {
    storm_makes_one_digest_ticket(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_the_api_makes_one_digest_ticket_solved_at_the_end() {
    storm_makes_one_digest_ticket(true).await;
}

/// Acceptance 7: collector every second, 10 mails a run, 300 mails in a burst (30 runs
/// of backlog): nothing goes out unthreaded, tickets = incidents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_thirty_runs_sends_nothing_unthreaded() {
    let glpi = batched_glpi(1).await;
    let gw = gateway(
        &glpi,
        &format!(
            "{}[correlation]\nmax_new_incidents_per_minute = 1000\n",
            feedback(1, 5, "")
        ),
        None,
    )
    .await;
    for i in 0..300 {
        gw.send(&centreon_service(
            "PROBLEM",
            &format!("node-{:03}", i / 3),
            &format!("disk-{}", i % 3),
            "WARNING",
            "85% used",
        ))
        .await;
    }
    // The last incidents' acknowledgements wait behind 30 collector runs.
    for i in 250..300 {
        gw.send(&centreon_service(
            "ACKNOWLEDGEMENT",
            &format!("node-{:03}", i / 3),
            &format!("disk-{}", i % 3),
            "WARNING",
            "85% used",
        ))
        .await;
    }
    let done = eventually(Duration::from_secs(120), || {
        glpi.tickets()
            .iter()
            .filter(|t| !t.followups.is_empty())
            .count()
            == 50
            && glpi.mailbox_len() == 0
    })
    .await;
    let tickets = glpi.tickets();
    assert!(
        done,
        "{} tickets, {} with a follow-up",
        tickets.len(),
        tickets.iter().filter(|t| !t.followups.is_empty()).count()
    );
    assert_eq!(tickets.len(), 300, "tickets = incidents");
    assert_eq!(unthreaded(&gw), 0);
    assert!(glpi.refused().is_empty());
    gw.shutdown().await;
}

/// Acceptance 2: `create = "api"`, the same scenario as acceptance 1 with the collector
/// stopped: no mail is needed; tickets = incidents, all solved, urgency from the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_through_the_api_needs_no_collector() {
    let glpi = batched_glpi(2).await;
    glpi.pause_collector(true);
    glpi.set_notifications(false);
    let sections = format!(
        "{}{}create = \"api\"\n",
        feedback(2, 60, ""),
        api(&glpi, true)
    );
    let gw = gateway(&glpi, &sections, None).await;
    let key = |i: usize| (format!("app-{:02}", i / 4), format!("svc-{}", i % 4));
    for i in 0..40 {
        let (h, s) = key(i);
        let state = if i % 2 == 0 { "CRITICAL" } else { "WARNING" };
        gw.send(&centreon_service("PROBLEM", &h, &s, state, "slow"))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..40 {
        let (h, s) = key(i);
        gw.send(&centreon_service(
            "ACKNOWLEDGEMENT",
            &h,
            &s,
            "WARNING",
            "slow",
        ))
        .await;
        if i < 30 {
            gw.send(&centreon_service("RECOVERY", &h, &s, "OK", "fine"))
                .await;
        }
    }
    let done = eventually(Duration::from_secs(60), || {
        let t = glpi.tickets();
        t.len() == 40
            && t.iter().filter(|t| t.status == STATUS_SOLVED).count() == 30
            && t.iter().all(|t| {
                t.followups
                    .iter()
                    .any(|f| f.content.contains("ACKNOWLEDGED"))
            })
    })
    .await;
    let tickets = glpi.tickets();
    assert!(done, "{}", summary(&tickets));
    assert_eq!(glpi.mails_accepted(), 0, "no mail at all");
    assert_eq!(glpi.solutions_refused(), 0);
    let tags = incident_tags(&gw);
    for t in &tickets {
        assert_eq!(t.created_by, Source::Api);
        let tag = tag_of(&t.title).expect("tag");
        let (key, _) = tags.iter().find(|(_, v)| **v == tag).expect("our incident");
        let n: usize = key
            .trim_start_matches("centreon:app-")
            .split(['/', '-'])
            .filter_map(|p| p.parse().ok())
            .fold(0, |acc, d: usize| acc * 4 + d);
        let expected = if n % 2 == 0 { 5 } else { 3 };
        assert_eq!(t.urgency, expected, "#{} {}", t.id, t.title);
        assert!(t.followups_after_solution().is_empty());
        assert!(t
            .followups
            .iter()
            .any(|f| f.content.contains("ACKNOWLEDGED")));
    }
    gw.shutdown().await;
}

/// Acceptance 5 (the gateway's part): after a technician solves the ticket on GLPI
/// 10.0.3 (whose notification Message-IDs carry no event; here in French), an
/// acknowledgement is not mailed and the ticket stays solved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technicians_solve_on_glpi_10_0_3_is_respected() {
    use support::glpi::{GlpiVersion, Language};
    let glpi = GlpiDouble::start_with(
        GlpiConfig::batched(Duration::from_secs(1), GLPI_COLLECTOR_BATCH)
            .with_version(GlpiVersion::Legacy10)
            .with_language(Language::Fr),
    )
    .await;
    let gw = gateway(&glpi, &feedback(1, 1, ""), None).await;
    gw.send(&centreon_service(
        "PROBLEM", "db-01", "Backup", "CRITICAL", "failed",
    ))
    .await;
    let tickets = glpi.wait_for_tickets(1, Duration::from_secs(20)).await;
    let id = tickets[0].id;
    let tag = tag_of(&tickets[0].title).expect("tag");
    let learned = |status: &str| {
        let status = status.to_owned();
        let gw = &gw;
        let tag = tag.clone();
        move || {
            incident_json(gw, &tag)
                .is_some_and(|d| d.contains("\"ticket_id\":1") && d.contains(&status))
        }
    };
    assert!(
        eventually(
            Duration::from_secs(20),
            learned("\"ticket_status\":\"open\"")
        )
        .await
    );
    glpi.solve(id).await;
    assert!(
        eventually(
            Duration::from_secs(20),
            learned("\"ticket_status\":\"solved\"")
        )
        .await,
        "the 10.0.3 'solved' notification was not recognised"
    );
    gw.send(&centreon_service(
        "ACKNOWLEDGEMENT",
        "db-01",
        "Backup",
        "CRITICAL",
        "failed",
    ))
    .await;
    gw.send(&centreon_service(
        "PROBLEM", "db-01", "Backup", "CRITICAL", "failed",
    ))
    .await;
    gw.wait_processed().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(glpi.mails_accepted(), 1, "only the open mail");
    let t = glpi.ticket(id).expect("ticket");
    assert_eq!(t.status, STATUS_SOLVED);
    assert_eq!(t.reopened, 0);
    gw.shutdown().await;
}

/// With the API, alertgate reads the ticket's status before a follow-up: a ticket a
/// technician solved (no notification reached alertgate) is not reopened by an ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_follow_ups_leave_a_ticket_solved_by_a_technician_alone() {
    let glpi = batched_glpi(1).await;
    glpi.set_notifications(false);
    glpi.set_solve_notifications(false);
    let sections = format!("{}{}", feedback(1, 1, ""), api(&glpi, true));
    let gw = gateway(&glpi, &sections, None).await;
    gw.send(&centreon_service(
        "PROBLEM", "fs-01", "NFS", "CRITICAL", "stale",
    ))
    .await;
    let tickets = glpi.wait_for_tickets(1, Duration::from_secs(20)).await;
    let id = tickets[0].id;
    let tag = tag_of(&tickets[0].title).expect("tag");
    assert!(
        eventually(Duration::from_secs(20), || incident_json(&gw, &tag)
            .is_some_and(|d| d.contains("\"ticket_id\":1")))
        .await,
        "ticket found through the API"
    );
    glpi.solve(id).await;
    gw.send(&centreon_service(
        "ACKNOWLEDGEMENT",
        "fs-01",
        "NFS",
        "CRITICAL",
        "stale",
    ))
    .await;
    let skipped = || {
        alertgate::store::actions::counts(&mut gw.db())
            .unwrap_or_default()
            .iter()
            .filter(|(kind_state, _)| kind_state.ends_with(":skipped"))
            .map(|(_, n)| n)
            .sum::<i64>()
            == 1
    };
    assert!(eventually(Duration::from_secs(20), skipped).await);
    // The recovery then ends the incident quietly: the ticket is solved already.
    gw.send(&centreon_service("RECOVERY", "fs-01", "NFS", "OK", "fine"))
        .await;
    gw.wait_processed().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = glpi.ticket(id).expect("ticket");
    assert_eq!(t.status, STATUS_SOLVED);
    assert_eq!(t.reopened, 0);
    assert!(t.followups.is_empty(), "{:#?}", t.followups);
    assert_eq!(t.solutions.len(), 1, "the technician's only");
    gw.shutdown().await;
}
