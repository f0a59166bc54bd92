//! Acceptance 4 of issue 12: with `[compose] language = "fr"` an incident's mails read in
//! French (subject words, body labels), and GLPI threads them exactly as in English: one
//! ticket, the same follow-ups, the same tag and X-Alertgate headers.

mod support;

use alertgate::clock::Clock;
use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::{config_text, TestGateway};
use support::glpi::{GlpiDouble, Ticket};

const FEEDBACK: &str = "alertgate@example.test";

async fn run_sequence(language: &str) -> (Vec<Ticket>, Vec<Vec<u8>>) {
    let glpi = GlpiDouble::start().await;
    let clock = Clock::manual(Clock::system().now());
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = format!(
        "[relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n[relay.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 2\n",
        glpi.smtp_port()
    );
    let text = config_text(
        dir.path(),
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        &relay,
    )
    .replacen(
        "[compose]\n",
        &format!("[compose]\nlanguage = \"{language}\"\n"),
        1,
    );
    let gw = TestGateway::start_text(dir, &text, clock.clone()).await;
    glpi.set_notify_target(gw.addr, FEEDBACK);
    let steps = [
        ("PROBLEM", "CRITICAL", "HTTP CRITICAL: timeout"),
        ("ACKNOWLEDGEMENT", "CRITICAL", "HTTP CRITICAL: timeout"),
        ("RECOVERY", "OK", "HTTP OK: 0.1 s"),
    ];
    for (i, (kind, state, output)) in steps.iter().enumerate() {
        gw.send(&centreon_service(kind, "web-01", "HTTP", state, output))
            .await;
        gw.wait_processed().await;
        if i == 0 {
            glpi.wait_for_tickets(1, Duration::from_secs(30)).await;
            glpi.flush_notifications().await;
        }
        // One mail per incident a minute: let the clock pass it.
        clock.advance(90);
        for _ in 0..40 {
            if glpi.mails_received() > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    glpi.wait_for_mails(3, Duration::from_secs(30)).await;
    let raws: Vec<Vec<u8>> = gw
        .outbound_rows()
        .into_iter()
        .map(|r| r.raw.unwrap_or_default())
        .collect();
    let tickets = glpi.tickets();
    gw.shutdown().await;
    (tickets, raws)
}

fn header(raw: &[u8], name: &str) -> Vec<String> {
    support::alerts::header_lines(raw)
        .into_iter()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn french_mails_thread_in_glpi_exactly_like_english_ones() {
    let (en, en_raw) = run_sequence("en").await;
    let (fr, fr_raw) = run_sequence("fr").await;
    assert_eq!(en.len(), 1, "{en:#?}");
    assert_eq!(fr.len(), 1, "{fr:#?}");
    assert_eq!(en[0].followups.len(), fr[0].followups.len());
    assert_eq!(fr[0].followups.len(), 2, "{:#?}", fr[0].followups);

    let subjects: Vec<String> = fr_raw.iter().map(|r| support::alerts::subject(r)).collect();
    assert!(
        subjects[0].contains("CRITIQUE web-01 / HTTP"),
        "{subjects:?}"
    );
    assert!(subjects[1].contains("PRIS EN COMPTE"), "{subjects:?}");
    assert!(subjects[2].contains("RÉTABLI"), "{subjects:?}");
    let body = String::from_utf8_lossy(&fr_raw[0]);
    assert!(body.contains("Nouveau probl"), "labels in French");
    assert!(!body.contains("New problem"));

    // Same threading: tag shape, ticket prefix, headers other than the words.
    for (e, f) in en_raw.iter().zip(&fr_raw) {
        for name in [
            "X-Alertgate-State",
            "X-Alertgate-Source",
            "X-Alertgate-Host",
        ] {
            assert_eq!(header(f, name).len(), 1, "{name}");
            assert_eq!(header(e, name), header(f, name), "{name}");
        }
        let es = support::alerts::subject(e);
        let fs = support::alerts::subject(f);
        let prefix = |s: &str| {
            s.split("] ")
                .take(2)
                .map(|p| p.starts_with('['))
                .collect::<Vec<_>>()
        };
        assert_eq!(prefix(&es), prefix(&fs), "{es} / {fs}");
    }
    for (e, f) in en[0].followups.iter().zip(&fr[0].followups) {
        assert!(
            e.subject.starts_with("[GLPI #0000001] [ALERT-"),
            "{}",
            e.subject
        );
        assert!(
            f.subject.starts_with("[GLPI #0000001] [ALERT-"),
            "{}",
            f.subject
        );
    }
}
