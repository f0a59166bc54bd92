//! The GLPI double follows GLPI's mail collector rules (glpi-collector.md), and the
//! GLPI API client works against its REST API: session reuse, renewal, errors.

mod support;

use alertgate::correlate::TicketStatus;
use alertgate::feedback::{
    parse_notification, ApiError, CreateMode, GlpiApi, GlpiApiConfig, MissingRight, Needs,
    NewTicket, Secret,
};
use std::time::Duration;
use support::glpi::*;

const FROM: &str = "alertgate@example.test";
const COLLECTOR: &str = "glpi@example.test";
const WAIT: Duration = Duration::from_secs(10);

struct Mail<'a> {
    from: &'a str,
    subject: &'a str,
    message_id: &'a str,
    extra: &'a str,
}

impl<'a> Mail<'a> {
    fn new(subject: &'a str, message_id: &'a str) -> Self {
        Mail {
            from: FROM,
            subject,
            message_id,
            extra: "",
        }
    }

    fn raw(&self) -> Vec<u8> {
        format!(
            "From: alertgate <{from}>\r\nTo: GLPI <{COLLECTOR}>\r\nSubject: {subject}\r\n\
             Message-ID: {mid}\r\nDate: Tue, 14 May 2024 10:00:00 +0000\r\n{extra}\
             MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\ntext body of {mid}\r\n\
             --b\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n<p>html body of {mid}</p>\r\n--b--\r\n",
            from = self.from,
            subject = self.subject,
            mid = self.message_id,
            extra = self.extra,
        )
        .into_bytes()
    }
}

async fn deliver(glpi: &GlpiDouble, mail: Mail<'_>) {
    let before = glpi.mails_received();
    smtp_send(glpi.smtp_addr(), mail.from, &[COLLECTOR], &mail.raw())
        .await
        .expect("the collector mailbox accepts every mail");
    glpi.wait_for_mails(before + 1, WAIT).await;
}

fn glpi_id(glpi: &GlpiDouble, ticket: u64) -> String {
    format!(
        "<GLPI_{}-Ticket-{ticket}/new@glpi.test>",
        glpi.config().uuid
    )
}

#[tokio::test]
async fn a_mail_opens_a_ticket_with_the_html_part() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail::new(
            "[ALERT-1f3a9c2e] CRITICAL web01/disk",
            "<a.0@alertgate.test>",
        ),
    )
    .await;
    let tickets = glpi.wait_for_tickets(1, WAIT).await;
    assert_eq!(tickets.len(), 1);
    let t = &tickets[0];
    assert_eq!(t.id, 1);
    assert_eq!(t.title, "[ALERT-1f3a9c2e] CRITICAL web01/disk");
    assert!(
        t.content
            .contains("<p>html body of <a.0@alertgate.test></p>"),
        "{}",
        t.content
    );
    assert_eq!(t.requester, FROM);
    assert_eq!(t.status, STATUS_NEW);
    assert_eq!(t.linked_to, None);

    deliver(
        &glpi,
        Mail::new("[ALERT-2a2a2a2a] second", "<b.0@alertgate.test>"),
    )
    .await;
    assert_eq!(
        glpi.tickets().iter().map(|t| t.id).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn a_text_only_mail_keeps_its_text() {
    let glpi = GlpiDouble::start().await;
    let raw = format!(
        "From: {FROM}\r\nTo: {COLLECTOR}\r\nSubject: plain\r\nMessage-ID: <p.0@alertgate.test>\r\n\r\nonly text\r\n"
    );
    smtp_send(glpi.smtp_addr(), FROM, &[COLLECTOR], raw.as_bytes())
        .await
        .unwrap();
    let tickets = glpi.wait_for_tickets(1, WAIT).await;
    assert_eq!(tickets[0].content.trim_end(), "only text");
    assert_eq!(tickets[0].title, "plain");
}

#[tokio::test]
async fn follow_up_by_in_reply_to_then_references() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail::new("[ALERT-1f3a9c2e] open", "<a.0@alertgate.test>"),
    )
    .await;
    deliver(
        &glpi,
        Mail::new("[ALERT-2b2b2b2b] other", "<b.0@alertgate.test>"),
    )
    .await;
    let irt = format!("In-Reply-To: {}\r\n", glpi_id(&glpi, 1));
    deliver(
        &glpi,
        Mail {
            extra: &irt,
            ..Mail::new("no tag at all", "<a.1@alertgate.test>")
        },
    )
    .await;
    let refs = format!("References: <x@y> {}\r\n", glpi_id(&glpi, 2));
    deliver(
        &glpi,
        Mail {
            extra: &refs,
            ..Mail::new("still no tag", "<b.1@alertgate.test>")
        },
    )
    .await;
    assert_eq!(glpi.tickets().len(), 2);
    let one = glpi.ticket(1).unwrap();
    assert_eq!(one.followups.len(), 1);
    assert_eq!(
        one.followups[0].message_id.as_deref(),
        Some("<a.1@alertgate.test>")
    );
    assert_eq!(one.followups[0].subject, "no tag at all");
    assert_eq!(glpi.ticket(2).unwrap().followups.len(), 1);

    // Another GLPI instance's id is ignored: the mail opens a ticket of its own.
    deliver(
        &glpi,
        Mail {
            extra: "In-Reply-To: <GLPI_0ther0instance-Ticket-1/new@other.test>\r\n",
            ..Mail::new("foreign thread", "<c.0@alertgate.test>")
        },
    )
    .await;
    assert_eq!(glpi.tickets().len(), 3);
    assert_eq!(glpi.ticket(1).unwrap().followups.len(), 1);
}

#[tokio::test]
async fn follow_up_by_subject_and_the_greedy_trap() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail::new("[ALERT-1f3a9c2e] one", "<a.0@alertgate.test>"),
    )
    .await;
    deliver(
        &glpi,
        Mail::new("[ALERT-2b2b2b2b] two", "<b.0@alertgate.test>"),
    )
    .await;
    deliver(
        &glpi,
        Mail::new(
            "[GLPI #0000002] [ALERT-2b2b2b2b] again",
            "<b.1@alertgate.test>",
        ),
    )
    .await;
    assert_eq!(glpi.ticket(2).unwrap().followups.len(), 1);

    // GLPI's `\[.+#(\d+)\]` is greedy: the last `#digits]` wins, even after a
    // correct prefix naming ticket 1.
    deliver(
        &glpi,
        Mail::new("[ALERT-x] disk #2] failed", "<c.0@alertgate.test>"),
    )
    .await;
    deliver(
        &glpi,
        Mail::new(
            "[GLPI #0000001] [ALERT-1f3a9c2e] disk #2] failed",
            "<a.1@alertgate.test>",
        ),
    )
    .await;
    assert_eq!(
        glpi.tickets().len(),
        2,
        "no new ticket: both mails threaded"
    );
    assert_eq!(glpi.ticket(1).unwrap().followups.len(), 0);
    assert_eq!(glpi.ticket(2).unwrap().followups.len(), 3);
}

#[tokio::test]
async fn refusals_follow_the_collector_rules() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail {
            extra: "Auto-Submitted: auto-generated\r\n",
            ..Mail::new("[ALERT-1] auto", "<a@alertgate.test>")
        },
    )
    .await;
    deliver(
        &glpi,
        Mail {
            from: "nagios@monitoring.test",
            ..Mail::new("[ALERT-2] stranger", "<b@alertgate.test>")
        },
    )
    .await;
    deliver(
        &glpi,
        Mail::new(
            "[ALERT-3] loop",
            "<GLPI_5e1f0c9a7b3d4e2f8a6b-Ticket-9/new@glpi.test>",
        ),
    )
    .await;
    deliver(
        &glpi,
        Mail::new(
            "[ALERT-4] old loop",
            "<GLPI-Ticket-9.1700000000.42@glpi.test>",
        ),
    )
    .await;
    deliver(
        &glpi,
        Mail {
            from: COLLECTOR,
            ..Mail::new("[ALERT-5] own", "<c@alertgate.test>")
        },
    )
    .await;
    let reasons: Vec<RefuseReason> = glpi.refused().iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [
            RefuseReason::AutoSubmitted,
            RefuseReason::UnknownSender,
            RefuseReason::GlpiMessageId,
            RefuseReason::GlpiMessageId,
            RefuseReason::OwnAddress,
        ]
    );
    assert!(glpi.tickets().is_empty());

    // `Auto-Submitted: no` is a human mail.
    deliver(
        &glpi,
        Mail {
            extra: "Auto-Submitted: no\r\n",
            ..Mail::new("[ALERT-6] human", "<d@alertgate.test>")
        },
    )
    .await;
    assert_eq!(glpi.tickets().len(), 1);
}

#[tokio::test]
async fn solved_or_waiting_ticket_is_reopened_closed_one_gets_a_linked_ticket() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail::new("[ALERT-1f3a9c2e] one", "<a.0@alertgate.test>"),
    )
    .await;
    glpi.solve(1).await;
    assert_eq!(glpi.ticket(1).unwrap().status, STATUS_SOLVED);
    deliver(
        &glpi,
        Mail::new(
            "[GLPI #0000001] [ALERT-1f3a9c2e] again",
            "<a.1@alertgate.test>",
        ),
    )
    .await;
    let t = glpi.ticket(1).unwrap();
    assert_eq!((t.status, t.reopened, t.solution), (STATUS_NEW, 1, None));

    glpi.assign(1);
    glpi.set_waiting(1);
    deliver(
        &glpi,
        Mail::new(
            "[GLPI #0000001] [ALERT-1f3a9c2e] more",
            "<a.2@alertgate.test>",
        ),
    )
    .await;
    let t = glpi.ticket(1).unwrap();
    assert_eq!((t.status, t.reopened), (STATUS_ASSIGNED, 2));

    glpi.close(1).await;
    deliver(
        &glpi,
        Mail::new(
            "[GLPI #0000001] [ALERT-1f3a9c2e] after close",
            "<a.3@alertgate.test>",
        ),
    )
    .await;
    let tickets = glpi.tickets();
    assert_eq!(tickets.len(), 2);
    assert_eq!(
        tickets[0].followups.len(),
        2,
        "the closed ticket got nothing"
    );
    assert_eq!(tickets[1].linked_to, Some(1));
    assert_eq!(
        tickets[1].title,
        "[GLPI #0000001] [ALERT-1f3a9c2e] after close"
    );
}

#[tokio::test]
async fn only_the_requester_may_add_follow_ups() {
    let glpi = GlpiDouble::start_with(GlpiConfig {
        users: vec![FROM.into(), "tech@example.test".into()],
        ..GlpiConfig::default()
    })
    .await;
    deliver(
        &glpi,
        Mail::new("[ALERT-1f3a9c2e] one", "<a.0@alertgate.test>"),
    )
    .await;
    deliver(
        &glpi,
        Mail {
            from: "tech@example.test",
            ..Mail::new("[GLPI #0000001] me too", "<t.0@example.test>")
        },
    )
    .await;
    assert_eq!(glpi.tickets().len(), 1);
    assert_eq!(glpi.ticket(1).unwrap().followups.len(), 0);
    assert_eq!(glpi.refused()[0].reason, RefuseReason::NoFollowupRight);
}

#[tokio::test]
async fn notifications_have_glpi_shapes() {
    let glpi = GlpiDouble::start().await;
    let sink = SmtpSink::start().await;
    glpi.set_notify_target(sink.addr(), "feedback@alerts.example.test");
    deliver(
        &glpi,
        Mail::new(
            "[ALERT-1f3a9c2e] CRITICAL web01/disk",
            "<a.0@alertgate.test>",
        ),
    )
    .await;
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails[0].mail_from, "glpi-notifications@glpi.test");
    assert_eq!(mails[0].rcpt_to, ["feedback@alerts.example.test"]);
    let text = String::from_utf8_lossy(&mails[0].data).into_owned();
    let new_id = glpi_id(&glpi, 1);
    for header in [
        "Subject: [GLPI #0000001] New ticket [ALERT-1f3a9c2e] CRITICAL web01/disk\r\n".to_string(),
        format!("Message-ID: {new_id}\r\n"),
        "Auto-Submitted: auto-generated\r\n".into(),
        "X-Auto-Response-Suppress: OOF, DR, NDR, RN, NRN\r\n".into(),
        format!("To: {FROM}\r\n"),
        "Content-Type: text/html; charset=us-ascii\r\n".into(),
    ] {
        assert!(text.contains(&header), "missing {header:?} in\n{text}");
    }
    assert!(!text.contains("In-Reply-To"));
    let parsed = parse_notification(&mails[0].data, "GLPI").expect("alertgate reads it");
    assert_eq!(parsed.ticket_id, 1);
    assert_eq!(parsed.event, "new");
    assert_eq!(parsed.glpi_message_id.as_deref(), Some(new_id.as_str()));
    assert_eq!(parsed.thread_tag.as_deref(), Some("ALERT-1f3a9c2e"));
    assert_eq!(parsed.status, Some(TicketStatus::Open));

    // The notification itself would be refused by the collector: it is GLPI's own mail.
    smtp_send(glpi.smtp_addr(), FROM, &[COLLECTOR], &mails[0].data)
        .await
        .unwrap();
    glpi.wait_for_mails(2, WAIT).await;
    assert_eq!(glpi.refused()[0].reason, RefuseReason::GlpiMessageId);

    glpi.solve(1).await;
    let mails = sink.wait_for(2, WAIT).await;
    let solved = String::from_utf8_lossy(&mails[1].data).into_owned();
    assert!(
        solved.contains("Subject: [GLPI #0000001] Ticket solved [ALERT-1f3a9c2e]"),
        "{solved}"
    );
    assert!(
        solved.contains(&format!("In-Reply-To: {new_id}\r\n")),
        "{solved}"
    );
    assert!(
        solved.contains(&format!("References: {new_id}\r\n")),
        "{solved}"
    );
    let parsed = parse_notification(&mails[1].data, "GLPI").unwrap();
    assert_eq!((parsed.ticket_id, parsed.event.as_str()), (1, "solved"));
    assert_eq!(parsed.status, Some(TicketStatus::Solved));
    assert_eq!(parsed.glpi_message_id.as_deref(), Some(new_id.as_str()));

    glpi.set_notifications(false);
    glpi.set_solve_notifications(false);
    deliver(
        &glpi,
        Mail::new("[ALERT-2b2b2b2b] quiet", "<b.0@alertgate.test>"),
    )
    .await;
    glpi.close(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.mails().len(), 2);
    assert!(glpi.notifications().iter().all(|n| n.result.is_ok()));
}

fn api_config(glpi: &GlpiDouble) -> GlpiApiConfig {
    let mut cfg = GlpiApiConfig::new(glpi.api_url(), glpi.config().user_token.clone());
    cfg.app_token = glpi.config().app_token.clone().map(Secret::new);
    cfg.timeout_secs = 5;
    cfg
}

#[tokio::test]
async fn api_finds_solves_and_follows_up() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail::new("[ALERT-1f3a9c2e] one", "<a.0@alertgate.test>"),
    )
    .await;
    deliver(
        &glpi,
        Mail::new("[ALERT-2b2b2b2b] two", "<b.0@alertgate.test>"),
    )
    .await;
    let api = GlpiApi::new(&api_config(&glpi)).unwrap();

    assert_eq!(
        api.find_ticket_by_tag("ALERT-2b2b2b2b").await.unwrap(),
        Some((2, TicketStatus::Open))
    );
    assert_eq!(
        api.find_ticket_by_tag("ALERT-99999999").await.unwrap(),
        None
    );
    api.solve_ticket(2, "Recovered: OK at 10:05").await.unwrap();
    let t = glpi.ticket(2).unwrap();
    assert_eq!(t.status, STATUS_SOLVED);
    assert_eq!(t.solution.as_deref(), Some("Recovered: OK at 10:05"));
    assert_eq!(
        api.find_ticket_by_tag("ALERT-2b2b2b2b").await.unwrap(),
        Some((2, TicketStatus::Solved))
    );
    // A second solution is refused by GLPI: a permanent error.
    let err = api.solve_ticket(2, "again").await.unwrap_err();
    assert!(
        matches!(err, ApiError::Refused { status: 400, .. }),
        "{err}"
    );
    assert!(!err.is_transient());

    api.add_followup(1, "still failing").await.unwrap();
    assert_eq!(
        glpi.ticket(1).unwrap().followups[0].content,
        "still failing"
    );
    assert_eq!(glpi.api_calls("initSession"), 1, "one session, reused");
    assert_eq!(glpi.api_calls("search/Ticket"), 3);
    api.close().await;
    assert_eq!(glpi.api_calls("killSession"), 1);
}

#[tokio::test]
async fn api_renews_an_expired_session_once() {
    let glpi = GlpiDouble::start().await;
    deliver(
        &glpi,
        Mail::new("[ALERT-1f3a9c2e] one", "<a.0@alertgate.test>"),
    )
    .await;
    let api = GlpiApi::new(&api_config(&glpi)).unwrap();
    assert!(api
        .find_ticket_by_tag("ALERT-1f3a9c2e")
        .await
        .unwrap()
        .is_some());
    glpi.expire_sessions();
    assert_eq!(
        api.find_ticket_by_tag("ALERT-1f3a9c2e").await.unwrap(),
        Some((1, TicketStatus::Open))
    );
    assert_eq!(glpi.api_calls("initSession"), 2);
    assert_eq!(
        glpi.api_calls("search/Ticket"),
        3,
        "the 401 call was retried once"
    );
}

#[tokio::test]
async fn api_errors_are_classified() {
    let glpi = GlpiDouble::start().await;
    let api = GlpiApi::new(&api_config(&glpi)).unwrap();
    glpi.set_api_down(true);
    let err = api.find_ticket_by_tag("ALERT-1f3a9c2e").await.unwrap_err();
    assert!(matches!(err, ApiError::Server { status: 500, .. }), "{err}");
    assert!(err.is_transient());
    glpi.set_api_down(false);
    assert_eq!(
        api.find_ticket_by_tag("ALERT-1f3a9c2e").await.unwrap(),
        None
    );

    let mut wrong = api_config(&glpi);
    wrong.user_token = Secret::new("not-the-token");
    let err = GlpiApi::new(&wrong)
        .unwrap()
        .find_ticket_by_tag("x")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Login { status: 401, .. }), "{err}");
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("not-the-token"));

    let mut no_app = api_config(&glpi);
    no_app.app_token = None;
    let err = GlpiApi::new(&no_app)
        .unwrap()
        .add_followup(1, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Login { status: 400, .. }), "{err}");

    // Nothing listening: transient.
    let closed = GlpiApiConfig::new("http://127.0.0.1:9/apirest.php", "t");
    let err = GlpiApi::new(&closed)
        .unwrap()
        .find_ticket_by_tag("x")
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unreachable(_)), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn tokens_stay_out_of_debug_output() {
    let glpi = GlpiDouble::start().await;
    let cfg = api_config(&glpi);
    let api = GlpiApi::new(&cfg).unwrap();
    api.find_ticket_by_tag("x").await.unwrap();
    let user = &glpi.config().user_token;
    let app = glpi.config().app_token.clone().unwrap();
    for text in [format!("{cfg:?}"), format!("{api:#?}")] {
        assert!(
            !text.contains(user.as_str()) && !text.contains(&app),
            "{text}"
        );
    }
}

#[tokio::test]
async fn api_creates_tickets_and_reads_their_status() {
    let glpi = GlpiDouble::start().await;
    let mut cfg = api_config(&glpi);
    cfg.create = CreateMode::Api;
    cfg.entity = Some(3);
    cfg.category = Some(12);
    let api = GlpiApi::new(&cfg).unwrap();
    let ticket = NewTicket::new(
        &cfg,
        "[ALERT-1f3a9c2e] CRITICAL web01/disk",
        "<p>full</p>",
        5,
    );
    let id = api.create_ticket(&ticket).await.expect("created");
    let t = glpi.ticket(id).expect("the double has it");
    assert_eq!(t.created_by, Source::Api);
    assert_eq!((t.urgency, t.impact), (5, 5));
    assert_eq!((t.entities_id, t.itilcategories_id), (3, 12));
    assert_eq!(t.requester, FROM, "the API user is the default requester");
    assert_eq!(t.title, "[ALERT-1f3a9c2e] CRITICAL web01/disk");
    assert_eq!(
        api.ticket_status(id).await.unwrap(),
        Some(TicketStatus::Open)
    );
    api.solve_ticket(id, "recovered").await.unwrap();
    assert_eq!(
        api.ticket_status(id).await.unwrap(),
        Some(TicketStatus::Solved)
    );
    glpi.close(id).await;
    assert_eq!(
        api.ticket_status(id).await.unwrap(),
        Some(TicketStatus::Closed)
    );
    assert_eq!(api.ticket_status(999).await.unwrap(), None);

    // A bad field is refused for good, with GLPI's code.
    let mut bad = ticket.clone();
    bad.urgency = 9;
    let err = api.create_ticket(&bad).await.unwrap_err();
    assert!(err.is_refusal() && !err.is_transient(), "{err}");
    assert_eq!(err.glpi_code().as_deref(), Some("ERROR_GLPI_ADD"));
}

#[tokio::test]
async fn self_service_may_not_solve_and_the_refusal_is_typed() {
    let glpi = GlpiDouble::start_with(GlpiConfig {
        users: vec![FROM.into(), "other@example.test".into()],
        ..GlpiConfig::default().with_profile(ApiProfile::self_service())
    })
    .await;
    let api = GlpiApi::new(&api_config(&glpi)).unwrap();
    let rights = api.rights().await.expect("rights read");
    assert_eq!(rights.profile, "Self-Service");
    assert_eq!(rights.user.as_deref(), Some("alertgate"));
    assert_eq!(rights.user_id, Some(7));
    assert!(!rights.can_solve());
    let missing = rights.missing(Needs {
        solve: true,
        ..Needs::default()
    });
    assert!(
        matches!(missing.as_slice(), [MissingRight::Solve { .. }]),
        "{missing:?}"
    );

    let id = api
        .create_ticket(&NewTicket::new(
            &api_config(&glpi),
            "[ALERT-0a0a0a0a] x",
            "y",
            3,
        ))
        .await
        .expect("Self-Service may create tickets");
    let err = api.solve_ticket(id, "recovered").await.unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert_eq!(err.glpi_code().as_deref(), Some("ERROR_GLPI_ADD"));
    assert!(
        err.to_string()
            .contains("You don't have permission to perform this action."),
        "{err}"
    );
    assert_eq!(glpi.ticket(id).unwrap().status, STATUS_NEW);
    // The fallback: a follow-up carrying the recovery reaches its own ticket.
    api.add_followup(id, "Recovered: OK")
        .await
        .expect("follow-up");
    assert_eq!(glpi.followups(id)[0].content, "Recovered: OK");

    // A ticket someone else requested is out of its sight: refused, session kept.
    let sessions = glpi.api_calls("initSession");
    let mut theirs = Mail::new("[ALERT-0b0b0b0b] theirs", "<m.0@alertgate.test>");
    theirs.from = "other@example.test";
    deliver(&glpi, theirs).await;
    let other = glpi.tickets().last().unwrap().id;
    assert_eq!(glpi.ticket(other).unwrap().requester, "other@example.test");
    let err = api.ticket_status(other).await.unwrap_err();
    assert_eq!(
        err.glpi_code().as_deref(),
        Some("ERROR_RIGHT_MISSING"),
        "{err}"
    );
    let err = api.add_followup(other, "x").await.unwrap_err();
    assert_eq!(err.glpi_code().as_deref(), Some("ERROR_GLPI_ADD"), "{err}");
    assert_eq!(glpi.api_calls("initSession"), sessions);
}

#[tokio::test]
async fn the_documented_profile_and_technician_may_do_everything() {
    for profile in [ApiProfile::alertgate(), ApiProfile::technician()] {
        let glpi =
            GlpiDouble::start_with(GlpiConfig::default().with_profile(profile.clone())).await;
        let mut cfg = api_config(&glpi);
        cfg.create = CreateMode::Api;
        cfg.solve_on_recovery = true;
        let api = GlpiApi::new(&cfg).unwrap();
        let rights = api.rights().await.unwrap();
        assert!(
            rights.missing(cfg.needs()).is_empty(),
            "{profile:?}: {rights:?}"
        );
        let id = api
            .create_ticket(&NewTicket::new(&cfg, "[ALERT-0c0c0c0c] x", "y", 4))
            .await
            .unwrap();
        api.add_followup(id, "update").await.unwrap();
        api.solve_ticket(id, "recovered").await.unwrap();
        assert_eq!(glpi.ticket(id).unwrap().status, STATUS_SOLVED);
        assert_eq!(glpi.api_calls("getActiveProfile"), 1);
        assert_eq!(glpi.api_calls("getFullSession"), 1);
    }
}

#[tokio::test]
async fn a_profile_without_read_right_gets_right_missing_not_a_new_session() {
    let mut profile = ApiProfile::alertgate();
    profile.ticket = RIGHT_CREATE;
    let glpi = GlpiDouble::start_with(GlpiConfig::default().with_profile(profile)).await;
    let api = GlpiApi::new(&api_config(&glpi)).unwrap();
    let id = api
        .create_ticket(&NewTicket::new(&api_config(&glpi), "t", "c", 3))
        .await
        .unwrap();
    let err = api.ticket_status(id).await.unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert_eq!(err.glpi_code().as_deref(), Some("ERROR_RIGHT_MISSING"));
    assert_eq!(glpi.api_calls("initSession"), 1, "no session renewal");
    let missing = api.rights().await.unwrap().missing(Needs::default());
    assert_eq!(missing, [MissingRight::ReadTickets]);
}
