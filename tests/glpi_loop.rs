//! Acceptance of issues 5 and 9: alertgate and a strict GLPI double (collector,
//! notifications, REST API) over loopback, every scenario with the double importing each
//! mail at once and with its cron collector (every 2 s, 10 mails a run): one ticket per
//! incident, every update a follow-up of its own ticket, merged at GLPI's pace; solve on
//! recovery with no follow-up after the solution; technicians closing tickets; GLPI down.

mod support;

use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::TestGateway;
use support::glpi::{
    GlpiConfig, GlpiDouble, Source, Ticket, GLPI_COLLECTOR_BATCH, STATUS_CLOSED, STATUS_SOLVED,
};

const FEEDBACK: &str = "alertgate@example.test";

/// How the double keeps time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Timing {
    /// Imports each mail the instant it arrives (no real GLPI does this).
    Instant,
    /// Collector and notification queue every 2 s, 10 mails a run.
    Batched,
}

/// Seconds between two mails of one incident in these tests (GLPI side: every 2 s).
const MIN_MAIL_INTERVAL: i64 = 3;

async fn glpi(timing: Timing) -> GlpiDouble {
    let config = match timing {
        Timing::Instant => GlpiConfig::default(),
        Timing::Batched => GlpiConfig::batched(Duration::from_secs(2), GLPI_COLLECTOR_BATCH),
    };
    GlpiDouble::start_with(config).await
}

/// `[feedback]` as an admin would describe the double's collector.
fn feedback_section(timeout: Option<u64>) -> String {
    let timeout = timeout.map_or(String::new(), |t| {
        format!("ticket_lookup_timeout_secs = {t}\n")
    });
    format!(
        "[feedback]\ncollector_interval_secs = 2\ncollector_batch = 10\nmin_mail_interval = {MIN_MAIL_INTERVAL}\n{timeout}"
    )
}

/// The alertgate side, relaying to the double's collector.
async fn gateway_for(glpi: &GlpiDouble, sections: &str) -> TestGateway {
    let gw = TestGateway::with_relay(
        glpi.smtp_port(),
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        sections,
    )
    .await;
    glpi.set_notify_target(gw.addr, FEEDBACK);
    gw
}

fn api_section(glpi: &GlpiDouble, solve: bool, timeout: Option<u64>) -> String {
    let c = glpi.config();
    format!(
        "{}[glpi_api]\nurl = \"{}\"\nuser_token = \"{}\"\napp_token = \"{}\"\nsolve_on_recovery = {solve}\n",
        feedback_section(timeout),
        glpi.api_url(),
        c.user_token,
        c.app_token.clone().unwrap_or_default()
    )
}

/// 30 incidents on 10 hosts, each: WARNING, repeat, CRITICAL, ACK, RECOVERY; interleaved.
fn replay() -> Vec<Vec<u8>> {
    let steps: [(&str, &str, &str); 5] = [
        ("PROBLEM", "WARNING", "slow"),
        ("PROBLEM", "WARNING", "slow"),
        ("PROBLEM", "CRITICAL", "timeout"),
        ("ACKNOWLEDGEMENT", "CRITICAL", "timeout"),
        ("RECOVERY", "OK", "fine"),
    ];
    let mut mails = Vec::new();
    for (step, (kind, state, output)) in steps.iter().enumerate() {
        // A different order of the keys in every round.
        for i in 0..30 {
            let k = (i * 7 + step * 11) % 30;
            let (host, service) = (format!("srv-{:02}", k / 3), format!("check-{}", k % 3));
            mails.push(centreon_service(
                kind,
                &host,
                &service,
                state,
                &format!("{service} {output}"),
            ));
        }
    }
    mails
}

fn tag_of(ticket: &Ticket) -> String {
    let start = ticket.title.find("[ALERT-").expect("our tag in the title") + 1;
    ticket.title[start..start + 14].to_string()
}

/// Waits until `done` holds (checked every 100 ms); false on timeout.
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

/// Per incident, the times its mails left for GLPI: none may be closer than the pace.
fn assert_paced(gw: &TestGateway) {
    let rows = sent_times(gw);
    for pair in rows.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(
                pair[1].1 - pair[0].1 >= MIN_MAIL_INTERVAL,
                "{} sent two mails {} s apart",
                pair[0].0,
                pair[1].1 - pair[0].1
            );
        }
    }
}

async fn notification_mode_makes_one_ticket_per_incident_with_its_followups(timing: Timing) {
    let glpi = glpi(timing).await;
    let gw = gateway_for(&glpi, &feedback_section(None)).await;
    for mail in replay() {
        gw.send(&mail).await;
    }
    // Every incident's critical, ack and recovery reach its ticket, merged at GLPI's pace.
    let complete = |t: &Ticket| {
        let all: String = t.followups.iter().map(|f| f.content.as_str()).collect();
        all.contains("NOW CRITICAL") && all.contains("ACKNOWLEDGED") && all.contains("RECOVERED")
    };
    let done = eventually(Duration::from_secs(90), || {
        let tickets = glpi.tickets();
        tickets.len() >= 30 && tickets.iter().all(complete) && glpi.mailbox_len() == 0
    })
    .await;
    let tickets = glpi.tickets();
    assert!(
        done,
        "{timing:?}: {} tickets, {} complete, {} mails in the mailbox",
        tickets.len(),
        tickets.iter().filter(|t| complete(t)).count(),
        glpi.mailbox_len()
    );
    assert!(
        glpi.refused().is_empty(),
        "GLPI refused: {:#?}",
        glpi.refused()
    );
    assert_eq!(
        tickets.len(),
        30,
        "{:#?}",
        tickets.iter().map(|t| &t.title).collect::<Vec<_>>()
    );
    for t in &tickets {
        let tag = tag_of(t);
        assert!(!t.followups.is_empty() && t.followups.len() <= 3);
        for f in &t.followups {
            assert!(
                f.subject.contains(&tag),
                "follow-up of another incident in ticket {}: {}",
                t.id,
                f.subject
            );
            assert!(
                f.subject.starts_with(&format!("[GLPI #{:07}] ", t.id)),
                "{}",
                f.subject
            );
        }
        assert!(t.linked_to.is_none());
    }
    assert_paced(&gw);
    gw.shutdown().await;
}

async fn api_mode_threads_updates_and_solves_on_recovery(timing: Timing) {
    let glpi = glpi(timing).await;
    glpi.set_notifications(false);
    let gw = gateway_for(&glpi, &api_section(&glpi, true, None)).await;
    for mail in replay() {
        gw.send(&mail).await;
    }
    let done = eventually(Duration::from_secs(90), || {
        let tickets = glpi.tickets();
        tickets.len() >= 30 && tickets.iter().all(|t| t.status == STATUS_SOLVED)
    })
    .await;
    let tickets = glpi.tickets();
    assert!(
        done,
        "{timing:?}: {} tickets, {} solved",
        tickets.len(),
        tickets.iter().filter(|t| t.status == STATUS_SOLVED).count()
    );
    assert!(
        glpi.refused().is_empty(),
        "GLPI refused: {:#?}",
        glpi.refused()
    );
    assert_eq!(tickets.len(), 30);
    for t in &tickets {
        let tag = tag_of(t);
        assert!(
            t.solution.as_deref().unwrap_or("").contains(&tag),
            "{:?}",
            t.solution
        );
        assert_eq!(t.reopened, 0, "nothing reached a solved ticket");
        assert_eq!(t.refused_solutions(), 0);
        assert!(t.followups_after_solution().is_empty());
        assert!(!t.followups.is_empty(), "the critical and the ack");
        assert!(t.followups.iter().all(|f| f.source == Source::Api));
        let all: String = t.followups.iter().map(|f| f.content.as_str()).collect();
        assert!(all.contains(&tag) && all.contains("ACKNOWLEDGED"), "{all}");
    }
    assert_eq!(glpi.mails_received(), 30, "only the open mails were mailed");
    gw.shutdown().await;
}

async fn a_ticket_closed_by_a_technician_is_left_alone_and_the_next_problem_opens_another(
    timing: Timing,
) {
    let glpi = glpi(timing).await;
    let gw = gateway_for(&glpi, &feedback_section(None)).await;
    gw.send(&centreon_service(
        "PROBLEM",
        "mail-01",
        "SMTP",
        "CRITICAL",
        "no answer",
    ))
    .await;
    let tickets = glpi.wait_for_tickets(1, Duration::from_secs(20)).await;
    let first = tickets[0].id;
    // Wait until alertgate learned the ticket id (the notification is processed).
    let learned = eventually(Duration::from_secs(20), || {
        alertgate::store::spool::count_in(&mut gw.db(), alertgate::store::SpoolState::Feedback)
            .unwrap()
            >= 1
    })
    .await;
    assert!(learned);
    glpi.close(first).await;
    glpi.flush_notifications().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A repeat and an acknowledgement must not reach the closed ticket.
    gw.send(&centreon_service(
        "PROBLEM",
        "mail-01",
        "SMTP",
        "CRITICAL",
        "no answer",
    ))
    .await;
    gw.send(&centreon_service(
        "ACKNOWLEDGEMENT",
        "mail-01",
        "SMTP",
        "CRITICAL",
        "no answer",
    ))
    .await;
    gw.wait_processed().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        glpi.mails_accepted(),
        1,
        "nothing mailed to the closed ticket"
    );
    // Recovery, then a new problem: a new incident, so a new ticket.
    gw.send(&centreon_service(
        "RECOVERY", "mail-01", "SMTP", "OK", "fine",
    ))
    .await;
    gw.send(&centreon_service(
        "PROBLEM",
        "mail-01",
        "SMTP",
        "CRITICAL",
        "no answer again",
    ))
    .await;
    let tickets = glpi.wait_for_tickets(2, Duration::from_secs(20)).await;
    let closed = glpi.ticket(first).unwrap();
    assert_eq!(closed.status, STATUS_CLOSED);
    assert!(closed.followups.is_empty(), "{:#?}", closed.followups);
    assert_ne!(
        tag_of(&tickets[0]),
        tag_of(&tickets[1]),
        "the new problem is a new incident"
    );
    assert!(glpi.refused().is_empty(), "{:#?}", glpi.refused());
    gw.shutdown().await;
}

async fn glpi_down_holds_updates_then_sends_them_unthreaded_after_the_timeout(timing: Timing) {
    let glpi = glpi(timing).await;
    glpi.set_notifications(false);
    glpi.set_api_down(true);
    let gw = gateway_for(&glpi, &api_section(&glpi, false, Some(4))).await;
    gw.send(&centreon_service(
        "PROBLEM",
        "db-07",
        "Replication",
        "WARNING",
        "lag 30 s",
    ))
    .await;
    gw.send(&centreon_service(
        "PROBLEM",
        "db-07",
        "Replication",
        "CRITICAL",
        "lag 300 s",
    ))
    .await;
    gw.send(&centreon_service(
        "ACKNOWLEDGEMENT",
        "db-07",
        "Replication",
        "CRITICAL",
        "lag 300 s",
    ))
    .await;
    gw.wait_processed().await;
    // The updates wait for a ticket id the API cannot give.
    let held = gw
        .outbound()
        .into_iter()
        .filter(|(state, _, _)| state == "held")
        .count();
    assert_eq!(held, 2, "{:?}", gw.outbound());
    assert!(eventually(Duration::from_secs(10), || glpi.mails_accepted() == 1).await);
    // After the lookup timeout they go out anyway, in one unthreaded mail, and are counted.
    assert!(eventually(Duration::from_secs(20), || glpi.mails_accepted() == 2).await);
    assert!(
        glpi.api_calls("search/Ticket") + glpi.api_calls("initSession") > 0,
        "the API was tried"
    );
    let unthreaded = gw.kv("unthreaded_after_timeout").expect("counted");
    assert_eq!(unthreaded, "1");
    let (_, listing) = gw.queue_cli(&["list"]);
    assert!(
        listing.contains("sent unthreaded after waiting for a ticket id: 1"),
        "{listing}"
    );
    assert!(
        eventually(Duration::from_secs(5), || gw
            .outbound()
            .iter()
            .all(|(state, _, _)| state == "sent"))
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        glpi.mails_accepted(),
        2,
        "one merged mail, not one per update"
    );
    gw.shutdown().await;
}

macro_rules! in_both_timings {
    ($($name:ident),* $(,)?) => {
        mod instant {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Timing::Instant).await;
                }
            )*
        }
        mod batched {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Timing::Batched).await;
                }
            )*
        }
    };
}

in_both_timings!(
    notification_mode_makes_one_ticket_per_incident_with_its_followups,
    api_mode_threads_updates_and_solves_on_recovery,
    a_ticket_closed_by_a_technician_is_left_alone_and_the_next_problem_opens_another,
    glpi_down_holds_updates_then_sends_them_unthreaded_after_the_timeout,
);
