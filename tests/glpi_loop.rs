//! Acceptance of issue 5: alertgate and a strict GLPI double (collector, notifications,
//! REST API) over loopback: one ticket per incident, every update a follow-up of its own
//! ticket, solve on recovery, technicians closing tickets, GLPI down.

mod support;

use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::TestGateway;
use support::glpi::{GlpiDouble, Ticket, STATUS_CLOSED, STATUS_SOLVED};

const FEEDBACK: &str = "alertgate@example.test";

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

fn api_section(glpi: &GlpiDouble, solve: bool, timeout: u64) -> String {
    let c = glpi.config();
    format!(
        "[feedback]\nticket_lookup_timeout_secs = {timeout}\n[glpi_api]\nurl = \"{}\"\nuser_token = \"{}\"\napp_token = \"{}\"\nsolve_on_recovery = {solve}\n",
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

async fn settle(glpi: &GlpiDouble, mails: usize) {
    glpi.wait_for_mails(mails, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_mode_makes_one_ticket_per_incident_with_its_followups() {
    let glpi = GlpiDouble::start().await;
    let gw = gateway_for(&glpi, "").await;
    for mail in replay() {
        gw.send(&mail).await;
    }
    // 30 opens + 30 × (critical, ack, recovery).
    settle(&glpi, 120).await;
    assert!(
        glpi.refused().is_empty(),
        "GLPI refused: {:#?}",
        glpi.refused()
    );
    let tickets = glpi.tickets();
    assert_eq!(
        tickets.len(),
        30,
        "{:#?}",
        tickets.iter().map(|t| &t.title).collect::<Vec<_>>()
    );
    for t in &tickets {
        let tag = tag_of(t);
        assert_eq!(
            t.followups.len(),
            3,
            "ticket {} ({}) follow-ups: {:#?}",
            t.id,
            t.title,
            t.followups
        );
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
    assert_eq!(glpi.mails_received(), 120);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_mode_threads_updates_and_solves_on_recovery() {
    let glpi = GlpiDouble::start().await;
    glpi.set_notifications(false);
    let gw = gateway_for(&glpi, &api_section(&glpi, true, 600)).await;
    for mail in replay() {
        gw.send(&mail).await;
    }
    // 30 opens + 30 × (critical, ack); recoveries are solutions, not mails.
    settle(&glpi, 90).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while glpi.tickets().iter().any(|t| t.status != STATUS_SOLVED)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        glpi.refused().is_empty(),
        "GLPI refused: {:#?}",
        glpi.refused()
    );
    let tickets = glpi.tickets();
    assert_eq!(tickets.len(), 30);
    for t in &tickets {
        let tag = tag_of(t);
        assert_eq!(
            t.status, STATUS_SOLVED,
            "ticket {} solved by ITILSolution",
            t.id
        );
        assert!(
            t.solution.as_deref().unwrap_or("").contains(&tag),
            "{:?}",
            t.solution
        );
        assert_eq!(t.reopened, 0, "no mail reached a solved ticket");
        assert_eq!(t.followups.len(), 2, "{:#?}", t.followups);
        assert!(t.followups.iter().all(|f| f.subject.contains(&tag)));
    }
    assert_eq!(glpi.mails_received(), 90);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_closed_by_a_technician_is_left_alone_and_the_next_problem_opens_another() {
    let glpi = GlpiDouble::start().await;
    let gw = gateway_for(&glpi, "").await;
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
    for _ in 0..200 {
        let learned: i64 = gw
            .db()
            .query_row(
                "SELECT COUNT(*) FROM spool WHERE state = 'feedback'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if learned >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    glpi.close(first).await;
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        glpi.mails_received(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glpi_down_holds_updates_then_sends_them_unthreaded_after_the_timeout() {
    let glpi = GlpiDouble::start().await;
    glpi.set_notifications(false);
    glpi.set_api_down(true);
    let gw = gateway_for(&glpi, &api_section(&glpi, false, 3)).await;
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
    glpi.wait_for_mails(1, Duration::from_secs(20)).await;
    gw.wait_processed().await;
    // The update waits for a ticket id the API cannot give.
    let held: Vec<_> = gw
        .outbound()
        .into_iter()
        .filter(|(state, _, _)| state == "held")
        .collect();
    assert_eq!(held.len(), 1, "{:?}", gw.outbound());
    assert_eq!(glpi.mails_received(), 1);
    // After the lookup timeout it goes out anyway, unthreaded, and is counted.
    glpi.wait_for_mails(2, Duration::from_secs(20)).await;
    assert!(
        glpi.api_calls("search/Ticket") + glpi.api_calls("initSession") > 0,
        "the API was tried"
    );
    let unthreaded: String = gw
        .db()
        .query_row(
            "SELECT value FROM kv WHERE key = 'unthreaded_after_timeout'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unthreaded, "1");
    let (_, listing) = gw.queue_cli(&["list"]);
    assert!(
        listing.contains("sent unthreaded after waiting for a ticket id: 1"),
        "{listing}"
    );
    assert!(gw.outbound().iter().all(|(state, _, _)| state == "sent"));
    gw.shutdown().await;
}
