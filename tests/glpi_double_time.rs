//! The GLPI double keeps GLPI's time and speaks each version's notification shapes:
//! the collector imports at most its batch per cron run and mails wait in between,
//! notifications leave through their own queue, a follow-up refuses a solution, and
//! 9.5 / 10.0.3 / 10.0.7+ Message-IDs thread (or not) as in those versions.

mod support;

use alertgate::correlate::TicketStatus;
use alertgate::feedback::parse_notification;
use std::time::{Duration, Instant};
use support::glpi::*;

const FROM: &str = "alertgate@example.test";
const COLLECTOR: &str = "glpi@example.test";
const WAIT: Duration = Duration::from_secs(10);
/// A cron that never fires during a test: runs are triggered by hand.
const NEVER: Duration = Duration::from_secs(3600);

fn mail(subject: &str, message_id: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: alertgate <{FROM}>\r\nTo: GLPI <{COLLECTOR}>\r\nSubject: {subject}\r\n\
         Message-ID: {message_id}\r\nDate: Tue, 01 Dec 2026 20:00:00 +0000\r\n{extra}\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nbody of {message_id}\r\n"
    )
    .into_bytes()
}

async fn send(glpi: &GlpiDouble, subject: &str, message_id: &str, extra: &str) {
    smtp_send(
        glpi.smtp_addr(),
        FROM,
        &[COLLECTOR],
        &mail(subject, message_id, extra),
    )
    .await
    .expect("the mailbox accepts every mail");
}

#[tokio::test]
async fn the_collector_imports_at_most_its_batch_per_run() {
    let glpi = GlpiDouble::start_with(GlpiConfig::batched(NEVER, GLPI_COLLECTOR_BATCH)).await;
    for i in 0..25 {
        send(
            &glpi,
            &format!("[ALERT-{i:08x}] problem"),
            &format!("<m{i}@ag>"),
            "",
        )
        .await;
    }
    assert_eq!(glpi.mails_accepted(), 25);
    assert_eq!(glpi.mailbox_len(), 25, "mails wait for the collector");
    assert!(glpi.tickets().is_empty());
    assert_eq!(glpi.run_collector_now(), 10);
    assert_eq!((glpi.tickets().len(), glpi.mailbox_len()), (10, 15));
    assert_eq!(glpi.run_collector_now(), 10);
    assert_eq!(glpi.run_collector_now(), 5);
    assert_eq!(glpi.run_collector_now(), 0);
    let titles: Vec<String> = glpi.first_mails().into_iter().map(|m| m.1).collect();
    assert_eq!(titles[0], "[ALERT-00000000] problem", "oldest mail first");
    assert_eq!(titles[24], "[ALERT-00000018] problem");
    assert_eq!(glpi.collector_runs(), 4);
}

#[tokio::test]
async fn the_cron_runs_on_its_interval_and_a_paused_collector_imports_nothing() {
    let interval = Duration::from_millis(700);
    let glpi = GlpiDouble::start_with(GlpiConfig::batched(interval, 10)).await;
    glpi.pause_collector(true);
    for i in 0..12 {
        send(
            &glpi,
            &format!("[ALERT-{i:08x}] p"),
            &format!("<c{i}@ag>"),
            "",
        )
        .await;
    }
    tokio::time::sleep(interval * 2).await;
    assert_eq!(glpi.mailbox_len(), 12, "stopped collector");
    let started = Instant::now();
    glpi.pause_collector(false);
    glpi.wait_for_tickets(10, WAIT).await;
    assert_eq!(glpi.tickets().len(), 10, "one run takes ten");
    glpi.wait_mailbox_empty(WAIT).await;
    assert_eq!(glpi.tickets().len(), 12);
    assert!(
        started.elapsed() >= interval,
        "the second batch waits for the next run"
    );
}

#[tokio::test]
async fn notifications_leave_through_their_own_queue() {
    let glpi =
        GlpiDouble::start_with(GlpiConfig::batched(NEVER, 10).notifications_every(NEVER, 2)).await;
    let sink = SmtpSink::start().await;
    glpi.set_notify_target(sink.addr(), "feedback@ag.test");
    for i in 0..3 {
        send(
            &glpi,
            &format!("[ALERT-{i:08x}] p"),
            &format!("<n{i}@ag>"),
            "",
        )
        .await;
    }
    glpi.run_collector_now();
    assert_eq!(glpi.notifications_queued(), 3);
    assert!(
        sink.mails().is_empty(),
        "nothing sent inside the collection"
    );
    glpi.flush_notifications().await;
    let sent = glpi.notifications();
    assert_eq!(sent.len(), 3);
    assert!(sent
        .iter()
        .all(|n| n.result.is_ok() && n.sent_at >= n.queued_at));
    assert_eq!(
        sent.iter().map(|n| n.ticket_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn a_follow_up_imported_after_a_solution_refuses_it() {
    let glpi = GlpiDouble::start_with(GlpiConfig::batched(NEVER, 10)).await;
    send(&glpi, "[ALERT-0000000a] open", "<o@ag>", "").await;
    glpi.run_collector_now();
    // An update mail waits in the mailbox while the ticket is solved.
    send(
        &glpi,
        "[GLPI #0000001] [ALERT-0000000a] update",
        "<u@ag>",
        "",
    )
    .await;
    glpi.solve(1).await;
    let solved = glpi.ticket(1).unwrap();
    assert_eq!(solved.status, STATUS_SOLVED);
    assert_eq!(solved.solutions[0].status, SolutionStatus::Waiting);
    glpi.run_collector_now();
    let t = glpi.ticket(1).unwrap();
    assert_eq!(t.status, STATUS_NEW, "GLPI reopens a solved ticket");
    assert_eq!(t.solutions[0].status, SolutionStatus::Refused);
    assert_eq!(t.refused_solutions(), 1);
    assert_eq!(t.followups_after_solution().len(), 1);
    assert!(t.followups[0].seq > t.solutions[0].seq);
    assert_eq!((glpi.solutions_refused(), glpi.reopen_count()), (1, 1));

    // Closing accepts a waiting solution; a later mail opens a linked ticket.
    glpi.solve(1).await;
    glpi.close(1).await;
    assert_eq!(
        glpi.ticket(1).unwrap().solutions[1].status,
        SolutionStatus::Accepted
    );
    send(
        &glpi,
        "[GLPI #0000001] [ALERT-0000000a] again",
        "<a@ag>",
        "",
    )
    .await;
    glpi.run_collector_now();
    assert_eq!(glpi.ticket(2).unwrap().linked_to, Some(1));
}

/// The double's notification for ticket 1 in `version`, with its raw text.
async fn first_notification(
    version: GlpiVersion,
    language: Language,
) -> (GlpiDouble, String, Vec<Vec<u8>>) {
    let glpi = GlpiDouble::start_with(
        GlpiConfig::default()
            .with_version(version)
            .with_language(language),
    )
    .await;
    let sink = SmtpSink::start().await;
    glpi.set_notify_target(sink.addr(), "feedback@ag.test");
    send(&glpi, "[ALERT-0000000b] CRITICAL web01", "<v@ag>", "").await;
    let mails = sink.wait_for(1, WAIT).await;
    glpi.solve(1).await;
    let mails2 = sink.wait_for(2, WAIT).await;
    let text = String::from_utf8_lossy(&mails[0].data).into_owned()
        + "\n----\n"
        + &String::from_utf8_lossy(&mails2[1].data);
    (glpi, text, mails2.into_iter().map(|m| m.data).collect())
}

#[tokio::test]
async fn glpi_10_0_3_notifications_have_the_captured_shape() {
    let (glpi, text, _) = first_notification(GlpiVersion::Legacy10, Language::En).await;
    let uuid = &glpi.config().uuid;
    let message_id = regex::Regex::new(&format!(
        r"Message-ID: <GLPI_{uuid}-Ticket-1\.\d+\.\d+@glpi\.test>\r\n"
    ))
    .unwrap();
    assert_eq!(message_id.find_iter(&text).count(), 2, "{text}");
    assert_eq!(
        text.matches(&format!("In-Reply-To: <GLPI-{uuid}-Ticket-1>\r\n"))
            .count(),
        2,
        "{text}"
    );
    assert!(!text.contains("References:"), "{text}");
    assert!(!text.contains("/new@"), "{text}");
    assert!(text.contains("Subject: [GLPI #0000001] New ticket [ALERT-0000000b]"));
    assert!(text.contains("Subject: [GLPI #0000001] Ticket solved [ALERT-0000000b]"));
    assert!(text.contains(" Status : New\r\n"), "{text}");
    assert!(text.contains(" Status : Solved\r\n"), "{text}");
    assert!(
        text.contains("Status </span>&#160;: Solved<br />"),
        "{text}"
    );

    // Its collector threads on the Message-ID it sent, not on the In-Reply-To value.
    let sent = glpi.notifications()[0].message_id.clone();
    send(
        &glpi,
        "no tag",
        "<r1@ag>",
        &format!("In-Reply-To: {sent}\r\n"),
    )
    .await;
    send(
        &glpi,
        "no tag either",
        "<r2@ag>",
        &format!("In-Reply-To: <GLPI-{uuid}-Ticket-1>\r\n"),
    )
    .await;
    let tickets = glpi.wait_for_tickets(2, WAIT).await;
    assert_eq!(tickets[0].followups.len(), 1);
    assert_eq!(tickets[1].title, "no tag either");
    // A 10.0.7+ id does not thread on 10.0.3.
    send(
        &glpi,
        "modern id",
        "<r3@ag>",
        &format!("In-Reply-To: <GLPI_{uuid}-Ticket-1/new@glpi.test>\r\n"),
    )
    .await;
    glpi.wait_for_tickets(3, WAIT).await;
}

#[tokio::test]
async fn glpi_9_5_notifications_and_threading() {
    let (glpi, text, _) = first_notification(GlpiVersion::V9_5, Language::En).await;
    let message_id =
        regex::Regex::new(r"Message-ID: <GLPI-Ticket-1\.\d+\.\d+@glpi\.test>\r\n").unwrap();
    assert_eq!(message_id.find_iter(&text).count(), 2, "{text}");
    assert!(text.contains("In-Reply-To: <GLPI-Ticket-1>\r\n"), "{text}");
    let sent = glpi.notifications()[1].message_id.clone();
    send(&glpi, "reply", "<r@ag>", &format!("References: {sent}\r\n")).await;
    glpi.wait_for_mails(2, WAIT).await;
    assert_eq!(glpi.ticket(1).unwrap().followups.len(), 1);
}

#[tokio::test]
async fn modern_notifications_keep_the_fixed_new_id() {
    let (glpi, text, _) = first_notification(GlpiVersion::Modern, Language::En).await;
    let root = modern_new_id(glpi.config(), 1);
    assert!(text.contains(&format!("Message-ID: {root}\r\n")), "{text}");
    assert!(text.contains(&format!("In-Reply-To: {root}\r\nReferences: {root}\r\n")));
    assert!(regex::Regex::new(
        r"Message-ID: <GLPI_[a-z0-9]+-Ticket-1/solved\.\d+\.\d+@glpi\.test>"
    )
    .unwrap()
    .is_match(&text));
}

#[tokio::test]
async fn notifications_speak_the_configured_language() {
    for (language, solved, status) in [
        (Language::Fr, "Ticket résolu", "Statut : Résolu"),
        (Language::De, "Ticket gelöst", "Status : Gelöst"),
        (Language::Es, "Ticket resuelto", "Estado : Resuelto"),
        (Language::It, "Ticket risolto", "Stato : Risolto"),
        (Language::Pt, "Chamado solucionado", "Status : Solucionado"),
    ] {
        let (glpi, _, raw) = first_notification(GlpiVersion::Legacy10, language).await;
        let n = &glpi.notifications()[1];
        // alertgate reads them: the new ticket open, the solve solved.
        let new = parse_notification(&raw[0], "GLPI").expect("new-ticket notification");
        assert_eq!((new.ticket_id, new.status), (1, Some(TicketStatus::Open)));
        let seen = parse_notification(&raw[1], "GLPI").expect("solved notification");
        assert_eq!(seen.status, Some(TicketStatus::Solved), "{language:?}");
        assert_eq!(seen.event, "solved", "{language:?}");
        assert_eq!(seen.glpi_message_id.as_deref(), Some(n.message_id.as_str()));
        assert!(n.subject.contains(solved), "{}", n.subject);
        let labels = language.labels();
        assert_eq!(
            format!("{} : {}", labels.status, labels.statuses[4]),
            status
        );
    }
}
