//! The API user's rights at start: with GLPI's Self-Service profile, serve sees that it
//! cannot solve, posts no solution GLPI would refuse, and the recovery still reaches
//! the ticket; with the README's profile the ticket ends solved.

mod support;

use alertgate::feedback::{MissingRight, RightsCheck};
use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::TestGateway;
use support::glpi::{ApiProfile, GlpiConfig, GlpiDouble, Source, STATUS_SOLVED};

const FEEDBACK: &str = "alertgate@example.test";
const WAIT: Duration = Duration::from_secs(30);

async fn gateway(glpi: &GlpiDouble) -> TestGateway {
    let c = glpi.config();
    let sections = format!(
        "[glpi_api]\nurl = \"{}\"\nuser_token = \"{}\"\napp_token = \"{}\"\nsolve_on_recovery = true\n",
        glpi.api_url(),
        c.user_token,
        c.app_token.clone().unwrap_or_default()
    );
    let gw = TestGateway::with_relay(
        glpi.smtp_port(),
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        &sections,
    )
    .await;
    glpi.set_notify_target(gw.addr, FEEDBACK);
    gw
}

async fn problem_then_recovery(glpi: &GlpiDouble, gw: &TestGateway) -> u64 {
    gw.send(&centreon_service(
        "PROBLEM", "web-01", "HTTP", "CRITICAL", "down",
    ))
    .await;
    let tickets = glpi.wait_for_tickets(1, WAIT).await;
    // The ticket id comes back through the notification; then the recovery.
    glpi.wait_for_notifications(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.send(&centreon_service(
        "RECOVERY", "web-01", "HTTP", "OK", "fine",
    ))
    .await;
    tickets[0].id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_service_api_user_solves_nothing_and_the_recovery_still_reaches_the_ticket() {
    let glpi =
        GlpiDouble::start_with(GlpiConfig::default().with_profile(ApiProfile::self_service()))
            .await;
    let gw = gateway(&glpi).await;
    match gw.glpi_rights() {
        Some(RightsCheck::Missing { missing, rights }) => {
            assert!(!rights.can_solve());
            assert!(
                matches!(missing.as_slice(), [MissingRight::Solve { .. }]),
                "{missing:?}"
            );
        }
        other => panic!("expected a missing right, got {other:?}"),
    }
    let id = problem_then_recovery(&glpi, &gw).await;
    let tickets = glpi
        .wait_for(WAIT, "the recovery as a follow-up", |t| {
            t.iter()
                .any(|t| t.followups.iter().any(|f| f.content.contains("OK")))
        })
        .await;
    let ticket = tickets.iter().find(|t| t.id == id).unwrap();
    assert_eq!(tickets.len(), 1, "{tickets:#?}");
    assert_ne!(ticket.status, STATUS_SOLVED);
    assert!(ticket.solutions.is_empty());
    assert_eq!(
        glpi.api_calls("ITILSolution"),
        0,
        "no solution GLPI would refuse"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_documented_profile_the_recovery_solves_the_ticket() {
    let glpi =
        GlpiDouble::start_with(GlpiConfig::default().with_profile(ApiProfile::alertgate())).await;
    let gw = gateway(&glpi).await;
    assert!(
        matches!(gw.glpi_rights(), Some(RightsCheck::Granted(_))),
        "{:?}",
        gw.glpi_rights()
    );
    let id = problem_then_recovery(&glpi, &gw).await;
    let tickets = glpi
        .wait_for(WAIT, "a solved ticket", |t| {
            t.iter().any(|t| t.status == STATUS_SOLVED)
        })
        .await;
    let ticket = tickets.iter().find(|t| t.id == id).unwrap();
    assert_eq!(ticket.solutions.len(), 1);
    assert_eq!(ticket.solutions[0].source, Source::Api);
    assert_eq!(ticket.refused_solutions(), 0);
    gw.shutdown().await;
}
