//! Acceptance 2 of issue 12: a Zabbix problem, then its "problem update" (acknowledged),
//! which names neither host nor severity and only replies to the problem's mail: one
//! incident, and the update's GLPI follow-up carries the problem's host and state.

mod support;

use alertgate::clock::Clock;
use std::time::Duration;
use support::gateway::TestGateway;
use support::glpi::GlpiDouble;

const FEEDBACK: &str = "alertgate@example.test";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/zabbix")
            .join(name),
    )
    .expect("fixture")
}

/// Zabbix 5.x–7.0 put the same `In-Reply-To: <eventid.md5.mediatype.instance@zabbix.com>`
/// on every mail of an event, the problem included (design/alert-formats.md §5); the
/// problem fixture is the body alone, so the header is added the way the alerter writes it.
fn problem_with_event_thread() -> Vec<u8> {
    let raw = String::from_utf8(fixture("problem.eml")).expect("ascii fixture");
    raw.replacen(
        "To: <glpi@example.com>\r\n",
        "To: <glpi@example.com>\r\nIn-Reply-To: <1234567.5e8d3b5d1b2c0f3a9e7d6c5b4a392817.1.1@zabbix.com>\r\n",
        1,
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zabbix_update_joins_its_problem_incident_with_host_and_state() {
    let glpi = GlpiDouble::start().await;
    // A manual clock: the update waits out the gateway's pace of one mail per incident
    // per minute without the test sleeping through it.
    let clock = Clock::manual(Clock::system().now());
    let gw = TestGateway::with_relay_and_clock(
        glpi.smtp_port(),
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        "",
        clock.clone(),
    )
    .await;
    glpi.set_notify_target(gw.addr, FEEDBACK);

    gw.send(&problem_with_event_thread()).await;
    glpi.wait_for_tickets(1, Duration::from_secs(30)).await;
    glpi.flush_notifications().await;
    gw.send(&fixture("update-ack.eml")).await;
    gw.wait_processed().await;
    clock.advance(90);
    for _ in 0..60 {
        if glpi.mails_received() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if glpi.mails_received() < 2 {
        let notes: Vec<String> = gw
            .spool_rows()
            .into_iter()
            .map(|r| format!("{} {} {}", r.id, r.state, r.note.unwrap_or_default()))
            .collect();
        panic!("spool: {notes:#?}\noutbound: {:#?}", gw.outbound());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(glpi.refused().is_empty(), "{:#?}", glpi.refused());
    let tickets = glpi.tickets();
    assert_eq!(
        tickets.len(),
        1,
        "one incident, one ticket: {:#?}",
        tickets.iter().map(|t| &t.title).collect::<Vec<_>>()
    );
    let ticket = &tickets[0];
    assert!(ticket.title.contains("web-frontend-01"), "{}", ticket.title);
    assert_eq!(ticket.followups.len(), 1, "{:#?}", ticket.followups);
    let followup = &ticket.followups[0];
    assert!(
        followup.subject.contains("web-frontend-01"),
        "host inherited into the follow-up: {}",
        followup.subject
    );
    assert!(
        followup.subject.contains("ACKNOWLEDGED"),
        "{}",
        followup.subject
    );
    assert!(
        followup.content.contains("web-frontend-01"),
        "{}",
        followup.content
    );
    assert!(
        followup.content.to_ascii_uppercase().contains("CRITICAL"),
        "problem's state inherited, not `unknown`: {}",
        followup.content
    );
    assert!(
        !followup.content.to_ascii_uppercase().contains("UNKNOWN"),
        "{}",
        followup.content
    );
    assert_eq!(gw.incidents().len(), 1);
    gw.shutdown().await;
}
