//! End-to-end checks of composed mail: every test parses the bytes back with
//! mail-parser, the way a receiving MTA or GLPI would see them.

use mail_parser::{MessageParser, MimeHeaders};
use proptest::prelude::*;
use regex::Regex;

use super::*;
use crate::alert::{Alert, AlertKind, NotificationType, State};

const NOW: i64 = 1_764_014_400; // 2025-11-24 20:00:00 UTC
const FIRST_SEEN: i64 = NOW - 3_725;

fn cfg() -> ComposeConfig {
    ComposeConfig {
        hostname: "alertgate.example.net".into(),
        ..ComposeConfig::new("Alertgate <alerts@example.net>", "glpi@example.net")
    }
}

fn alert(output: &str) -> Alert {
    Alert {
        source: "centreon".into(),
        kind: AlertKind::Service,
        host: "web-01".into(),
        host_alias: Some("Web front 1".into()),
        service: "HTTP".into(),
        state: State::Critical,
        notification_type: NotificationType::Problem,
        output: output.into(),
        long_output: None,
        author: None,
        comment: None,
        address: Some("10.0.0.5".into()),
        event_time: Some("2025-11-24 19:59:58".into()),
        vendor_id: None,
        url: None,
        rule: "centreon-service".into(),
        needs_sanitizing: false,
        inherits: Vec::new(),
    }
}

fn host_alert(output: &str) -> Alert {
    Alert {
        kind: AlertKind::Host,
        service: String::new(),
        state: State::Down,
        ..alert(output)
    }
}

fn incident(seq: u32, ticket_id: Option<u64>) -> IncidentRef {
    IncidentRef {
        tag: "ALERT-1f3a9c2e".into(),
        seq,
        ticket_id,
        glpi_message_id: None,
        first_seen: FIRST_SEEN,
        alert_count: seq + 1,
    }
}

fn event<'a>(kind: MailKind, incident: IncidentRef, alert: &'a Alert) -> MailEvent<'a> {
    MailEvent {
        kind,
        incident,
        alert,
        folded: &[],
        changes: &[],
        original: None,
        now: NOW,
    }
}

fn parse(bytes: &[u8]) -> mail_parser::Message<'_> {
    MessageParser::default()
        .parse(bytes)
        .expect("composed mail must parse")
}

/// A header's raw value, unfolded and trimmed.
fn raw(m: &mail_parser::Message<'_>, name: &str) -> Option<String> {
    m.header_raw(name)
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Body parts with CRLF folded to LF, for readable assertions.
/// The unmatched forward of `raw`, decoded as the pipeline decodes it.
fn forward_unmatched(tag: &str, raw: &[u8]) -> Result<ComposedMail, ComposeError> {
    let decoded = crate::mail::decode(raw).ok();
    compose_unmatched(&cfg(), tag, raw, decoded.as_ref(), NOW)
}

fn text_body(m: &mail_parser::Message<'_>) -> String {
    m.body_text(0).unwrap_or_default().replace("\r\n", "\n")
}

fn html_body(m: &mail_parser::Message<'_>) -> String {
    m.body_html(0).unwrap_or_default().replace("\r\n", "\n")
}

fn header_names(m: &mail_parser::Message<'_>) -> Vec<String> {
    m.headers()
        .iter()
        .map(|h| h.name().to_ascii_lowercase())
        .collect()
}

fn all_kinds_of_mail() -> Vec<ComposedMail> {
    let a = alert("CRITICAL - Socket timeout");
    let original = b"From: centreon@example.net\r\nAuto-Submitted: auto-generated\r\nSubject: x\r\n\r\nbody\r\n";
    let mut open = event(MailKind::Open, incident(0, None), &a);
    open.original = Some(original);
    let update = event(
        MailKind::Update {
            reason: "acknowledged".into(),
        },
        incident(1, Some(42)),
        &a,
    );
    let resolve = event(MailKind::Resolve, incident(2, Some(42)), &a);
    vec![
        compose(&cfg(), &open).unwrap(),
        compose(&cfg(), &update).unwrap(),
        compose(&cfg(), &resolve).unwrap(),
        compose_digest(&cfg(), "DIGEST-1", &[a.clone(), host_alert("PING")], NOW).unwrap(),
        forward_unmatched("UNMATCHED-7", original).unwrap(),
    ]
}

#[test]
fn open_mail_has_routing_threading_and_body() {
    let a = Alert {
        url: Some("https://centreon.example.net/host?id=5&svc=7".into()),
        long_output: Some("line A\nline B".into()),
        ..alert("CRITICAL - Socket timeout after 10 seconds\nsecond line")
    };
    let original = b"From: centreon@example.net\r\nSubject: ** PROBLEM **\r\n\r\nHello\r\n";
    let mut ev = event(MailKind::Open, incident(0, None), &a);
    ev.original = Some(original);
    let mail = compose(&cfg(), &ev).unwrap();
    let m = parse(&mail.bytes);

    let expected_subject =
        "[ALERT-1f3a9c2e] CRITICAL web-01 / HTTP: CRITICAL - Socket timeout after 10 seconds";
    assert_eq!(m.subject(), Some(expected_subject));
    assert_eq!(mail.subject, expected_subject);
    assert_eq!(
        m.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("alerts@example.net")
    );
    assert_eq!(
        m.to().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("glpi@example.net")
    );
    assert_eq!(mail.envelope_from, "alerts@example.net");
    assert_eq!(mail.envelope_to, vec!["glpi@example.net".to_owned()]);
    assert_eq!(mail.message_id, "<alert-1f3a9c2e.0@alertgate.example.net>");
    assert_eq!(
        m.message_id(),
        Some("alert-1f3a9c2e.0@alertgate.example.net")
    );
    assert_eq!(m.date().map(|d| d.to_timestamp()), Some(NOW));
    assert!(m.header_raw("In-Reply-To").is_none());
    assert!(m.header_raw("References").is_none());
    assert_eq!(raw(&m, "X-Priority").as_deref(), Some("1 (Highest)"));
    assert_eq!(raw(&m, "X-Alertgate-Source").as_deref(), Some("centreon"));
    assert_eq!(raw(&m, "X-Alertgate-Host").as_deref(), Some("web-01"));
    assert_eq!(raw(&m, "X-Alertgate-Service").as_deref(), Some("HTTP"));
    assert_eq!(raw(&m, "X-Alertgate-State").as_deref(), Some("CRITICAL"));
    assert_eq!(
        raw(&m, "X-Alertgate-Incident").as_deref(),
        Some("ALERT-1f3a9c2e")
    );
    assert_eq!(
        raw(&m, "Thread-Topic").as_deref(),
        Some("[ALERT-1f3a9c2e] web-01 / HTTP")
    );
    assert_eq!(
        raw(&m, "Thread-Index"),
        Some(thread_index("ALERT-1f3a9c2e", 0, FIRST_SEEN))
    );

    let html = html_body(&m);
    assert!(html.contains("<h2>CRITICAL: web-01 / HTTP</h2>"));
    assert!(html.contains("web-01 (Web front 1)"));
    assert!(html.contains("CRITICAL - Socket timeout after 10 seconds<br>\nsecond line"));
    assert!(html.contains("line A<br>\nline B"));
    assert!(html.contains("<a href=\"https://centreon.example.net/host?id=5&amp;svc=7\">"));
    let text = text_body(&m);
    assert!(text.contains("Event: New problem\n"));
    assert!(text.contains("Output: CRITICAL - Socket timeout after 10 seconds\n  second line\n"));
    assert!(text.contains("Alerts in incident: 1\n"));
    assert!(text.contains("First seen: 2025-11-24 18:57:55 UTC\n"));

    let attached: Vec<_> = m.attachments().collect();
    assert_eq!(attached.len(), 1);
    let ct = attached[0].content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("message", Some("rfc822")));
    assert_eq!(attached[0].attachment_name(), Some("original.eml"));
    let inner = attached[0].message().expect("nested message parsed");
    assert_eq!(inner.subject(), Some("** PROBLEM **"));
    let root_ct = m.root_part().content_type().unwrap();
    assert_eq!(root_ct.subtype(), Some("mixed"));
}

#[test]
fn update_without_attachment_is_plain_alternative_threaded_to_root() {
    let a = Alert {
        notification_type: NotificationType::Acknowledgement,
        author: Some("jdoe".into()),
        comment: Some("looking at it".into()),
        ..alert("CRITICAL - Socket timeout")
    };
    let mut ev = event(
        MailKind::Update {
            reason: "acknowledged by jdoe".into(),
        },
        incident(3, None),
        &a,
    );
    ev.original = Some(b"Subject: x\r\n\r\ny\r\n");
    let mail = compose(&cfg(), &ev).unwrap();
    let m = parse(&mail.bytes);
    assert_eq!(
        m.subject(),
        Some("[ALERT-1f3a9c2e] ACKNOWLEDGED web-01 / HTTP: CRITICAL - Socket timeout")
    );
    assert_eq!(
        m.root_part().content_type().unwrap().subtype(),
        Some("alternative")
    );
    assert_eq!(m.attachment_count(), 0);
    assert_eq!(mail.message_id, "<alert-1f3a9c2e.3@alertgate.example.net>");
    let root = "<alert-1f3a9c2e.0@alertgate.example.net>";
    assert_eq!(raw(&m, "In-Reply-To").as_deref(), Some(root));
    assert_eq!(raw(&m, "References").as_deref(), Some(root));
    let text = text_body(&m);
    assert!(text.contains("Event: Update: acknowledged by jdoe\n"));
    assert!(text.contains("Author: jdoe\n"));
    assert!(text.contains("Duration: 1h 02m 05s\n"));
    let index = raw(&m, "Thread-Index").unwrap();
    assert_eq!(index, thread_index("ALERT-1f3a9c2e", 3, FIRST_SEEN));
    assert!(index.len() > thread_index("ALERT-1f3a9c2e", 0, FIRST_SEEN).len());
}

#[test]
fn known_ticket_adds_glpi_prefix_and_glpi_message_id_first() {
    let a = Alert {
        state: State::Ok,
        notification_type: NotificationType::Recovery,
        ..alert("HTTP OK - 200 in 0.1s")
    };
    let glpi_id = "<GLPI_5f2a1b-Ticket-123/new@glpi.example.net>";
    let inc = IncidentRef {
        glpi_message_id: Some(glpi_id.into()),
        ..incident(2, Some(123))
    };
    let mail = compose(&cfg(), &event(MailKind::Resolve, inc, &a)).unwrap();
    let m = parse(&mail.bytes);
    assert_eq!(
        m.subject(),
        Some("[GLPI #0000123] [ALERT-1f3a9c2e] RECOVERED web-01 / HTTP: HTTP OK - 200 in 0.1s")
    );
    assert_eq!(raw(&m, "In-Reply-To").as_deref(), Some(glpi_id));
    assert_eq!(
        raw(&m, "References"),
        Some(format!(
            "{glpi_id} <alert-1f3a9c2e.0@alertgate.example.net>"
        ))
    );
    assert_eq!(raw(&m, "X-Priority").as_deref(), Some("5 (Lowest)"));
    assert_eq!(raw(&m, "X-Alertgate-State").as_deref(), Some("OK"));
    assert!(!m
        .message_id()
        .unwrap()
        .to_ascii_lowercase()
        .contains("glpi"));
    assert!(text_body(&m).contains("GLPI ticket: 123\n"));
}

#[test]
fn custom_glpi_tag_is_used_in_prefix() {
    let config = ComposeConfig {
        glpi_tag: "HELPDESK".into(),
        ..cfg()
    };
    let a = host_alert("PING CRITICAL - Packet loss = 100%");
    let mail = compose(&config, &event(MailKind::Open, incident(0, Some(7)), &a)).unwrap();
    assert_eq!(
        parse(&mail.bytes).subject(),
        Some(
            "[HELPDESK #0000007] [ALERT-1f3a9c2e] DOWN web-01: PING CRITICAL - Packet loss = 100%"
        )
    );
}

#[test]
fn host_alerts_have_no_service_header() {
    let a = host_alert("PING CRITICAL");
    let mail = compose(&cfg(), &event(MailKind::Open, incident(0, None), &a)).unwrap();
    let m = parse(&mail.bytes);
    assert!(m.header_raw("X-Alertgate-Service").is_none());
    assert_eq!(raw(&m, "X-Priority").as_deref(), Some("1 (Highest)"));
    assert_eq!(
        raw(&m, "Thread-Topic").as_deref(),
        Some("[ALERT-1f3a9c2e] web-01")
    );
}

#[test]
fn forbidden_headers_are_never_set() {
    for mail in all_kinds_of_mail() {
        let m = parse(&mail.bytes);
        let names = header_names(&m);
        for forbidden in ["auto-submitted", "x-auto-response-suppress", "precedence"] {
            assert!(
                !names.iter().any(|n| n == forbidden),
                "{forbidden} in {}",
                mail.subject
            );
        }
        assert!(!mail.message_id.to_ascii_lowercase().contains("glpi"));
    }
}

#[test]
fn message_ids_are_stable_and_never_contain_glpi() {
    let a = alert("x");
    let ev = event(
        MailKind::Update { reason: "r".into() },
        incident(5, None),
        &a,
    );
    let one = compose(&cfg(), &ev).unwrap();
    let two = compose(&cfg(), &ev).unwrap();
    assert_eq!(one.message_id, two.message_id);
    assert_eq!(one.subject, two.subject);
    let shape = Regex::new(r"^<[a-z0-9_-]+\.[0-9]+@[a-z0-9.-]+>$").unwrap();
    assert!(shape.is_match(&one.message_id), "{}", one.message_id);

    let glpi_host = ComposeConfig {
        hostname: "GLPI-mx.example.net".into(),
        ..cfg()
    };
    let mail = compose(&glpi_host, &ev).unwrap();
    let m = parse(&mail.bytes);
    for name in ["Message-ID", "In-Reply-To", "References"] {
        let value = raw(&m, name).unwrap();
        assert!(
            !value.to_ascii_lowercase().contains("glpi"),
            "{name}: {value}"
        );
    }
}

#[test]
fn crlf_in_alert_text_cannot_inject_headers() {
    let evil = "x\r\nBcc: x@evil.test";
    let a = Alert {
        host: format!("web-01{evil}"),
        service: format!("HTTP{evil}"),
        source: format!("centreon{evil}"),
        ..alert(evil)
    };
    let inc = IncidentRef {
        glpi_message_id: Some(format!("<a@b>{evil}")),
        ..incident(1, Some(9))
    };
    let mail = compose(&cfg(), &event(MailKind::Open, inc, &a)).unwrap();
    let m = parse(&mail.bytes);
    let names = header_names(&m);
    assert!(!names.iter().any(|n| n == "bcc"), "{names:?}");
    let mut expected = vec![
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "thread-topic",
        "thread-index",
        "x-priority",
        "x-alertgate-source",
        "x-alertgate-host",
        "x-alertgate-service",
        "x-alertgate-state",
        "x-alertgate-incident",
        "mime-version",
        "content-type",
    ];
    expected.sort_unstable();
    let mut got: Vec<&str> = names.iter().map(String::as_str).collect();
    got.sort_unstable();
    assert_eq!(got, expected);
    let header_block = String::from_utf8_lossy(&mail.bytes);
    let header_block = header_block.split("\r\n\r\n").next().unwrap();
    assert!(!header_block.to_ascii_lowercase().contains("\nbcc:"));
    assert_eq!(
        m.subject(),
        Some("[GLPI #0000009] [ALERT-1f3a9c2e] CRITICAL web-01x Bcc: x@evil.test / HTTPx Bcc: x@evil.test: x")
    );
    // The unusable GLPI Message-ID is dropped, the root stays.
    assert_eq!(
        raw(&m, "References").as_deref(),
        Some("<alert-1f3a9c2e.0@alertgate.example.net>")
    );
}

/// GLPI's subject regex, greedy and unanchored.
fn glpi_subject_regex() -> Regex {
    Regex::new(r"\[.+#(\d+)\]").unwrap()
}

/// Asserts that GLPI would find exactly our ticket, or none.
fn assert_only_our_ticket(subject: &str, ticket: Option<u64>) {
    let captured = glpi_subject_regex()
        .captures(subject)
        .map(|c| c[1].to_owned());
    assert_eq!(
        captured,
        ticket.map(|t| format!("{t:07}")),
        "subject: {subject}"
    );
    let markers = Regex::new(r"#\s*\d+\s*\]").unwrap();
    assert_eq!(
        markers.find_iter(subject).count(),
        usize::from(ticket.is_some()),
        "subject: {subject}"
    );
    if let Some(t) = ticket {
        assert!(
            subject.starts_with(&format!("[GLPI #{t:07}] ")),
            "{subject}"
        );
    }
}

#[test]
fn alert_text_cannot_redirect_glpi_to_another_ticket() {
    let traps = [
        "disk #2] failed",
        "[GLPI #0000042] already open",
        "see [HELP #77]",
        "# 12 ]",
        "=?utf-8?q?=2312=5D?=",
        "=?UTF-8?B?IzEyXQ==?=",
    ];
    for trap in traps {
        for ticket in [None, Some(123)] {
            let a = Alert {
                service: format!("svc {trap}"),
                host: format!("host{trap}"),
                ..alert(trap)
            };
            let mail = compose(&cfg(), &event(MailKind::Open, incident(0, ticket), &a)).unwrap();
            let m = parse(&mail.bytes);
            let subject = m.subject().unwrap();
            assert_eq!(subject, mail.subject);
            assert_only_our_ticket(subject, ticket);
        }
    }
    let a = alert("disk #2] failed");
    let mail = compose(&cfg(), &event(MailKind::Open, incident(0, Some(123)), &a)).unwrap();
    assert_eq!(
        mail.subject,
        "[GLPI #0000123] [ALERT-1f3a9c2e] CRITICAL web-01 / HTTP: disk nº2] failed"
    );
}

#[test]
fn digest_and_unmatched_subjects_are_neutralised_too() {
    let a = Alert {
        host: "db #3]".into(),
        ..alert("x")
    };
    let digest = compose_digest(&cfg(), "DIGEST-1", &[a], NOW).unwrap();
    assert_only_our_ticket(parse(&digest.bytes).subject().unwrap(), None);
    let original = b"Subject: Re: [GLPI #0000042] something #5]\r\n\r\nbody\r\n";
    let unmatched = forward_unmatched("UNMATCHED-1", original).unwrap();
    let subject = parse(&unmatched.bytes).subject().unwrap().to_owned();
    assert_only_our_ticket(&subject, None);
    assert_eq!(subject, "[UNMATCHED-1] Re: [GLPI nº0000042] something nº5]");
}

#[test]
fn subject_is_capped_with_multibyte_text() {
    let long = "Défaillance critique du contrôleur RAID « système » ✓ ".repeat(20);
    let a = alert(&long);
    let mail = compose(&cfg(), &event(MailKind::Open, incident(0, Some(123)), &a)).unwrap();
    let subject = parse(&mail.bytes).subject().unwrap().to_owned();
    assert!(subject.chars().count() < 250, "{}", subject.chars().count());
    assert!(subject.ends_with('…'));
    assert!(
        subject.starts_with("[GLPI #0000123] [ALERT-1f3a9c2e] CRITICAL web-01 / HTTP: Défaillance")
    );
}

#[test]
fn french_subject_round_trips_through_rfc2047() {
    let output = "Échec de connexion à la base « prod » : délai dépassé";
    let a = alert(output);
    let mail = compose(&cfg(), &event(MailKind::Open, incident(0, None), &a)).unwrap();
    let m = parse(&mail.bytes);
    assert_eq!(
        m.subject(),
        Some(format!("[ALERT-1f3a9c2e] CRITICAL web-01 / HTTP: {output}").as_str())
    );
    let raw_subject = m.header_raw("Subject").unwrap();
    assert!(raw_subject.is_ascii());
    assert!(raw_subject.to_ascii_lowercase().contains("=?utf-8?"));
    assert!(
        mail.bytes.is_ascii(),
        "headers and bodies are transfer-encoded"
    );
    assert!(text_body(&m).contains(output));
}

#[test]
fn html_part_escapes_alert_markup() {
    let a = Alert {
        comment: Some("<img src=x onerror=alert(1)>".into()),
        url: Some("javascript:alert(1)".into()),
        ..alert("<script>alert('x')</script>")
    };
    let mail = compose(&cfg(), &event(MailKind::Open, incident(0, None), &a)).unwrap();
    let m = parse(&mail.bytes);
    let html = html_body(&m);
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("<img"));
    assert!(!html.contains("href=\"javascript"));
    assert!(text_body(&m).contains("<script>alert('x')</script>"));
}

#[test]
fn folded_services_are_listed() {
    let a = host_alert("PING CRITICAL");
    let folded = [
        FoldedService {
            service: "HTTP".into(),
            state: State::Critical,
            output: "connection refused <port 80>".into(),
            time: NOW - 10,
        },
        FoldedService {
            service: "Disk /var".into(),
            state: State::Unknown,
            output: "no data".into(),
            time: NOW - 5,
        },
    ];
    let mut ev = event(
        MailKind::Update {
            reason: "services folded".into(),
        },
        incident(1, None),
        &a,
    );
    ev.folded = &folded;
    let mail = compose(&cfg(), &ev).unwrap();
    let m = parse(&mail.bytes);
    let html = html_body(&m);
    assert!(html.contains("Also on this host (2 services)"));
    assert!(html.contains("connection refused &lt;port 80&gt;"));
    let text = text_body(&m);
    assert!(text.contains("- Disk /var | UNKNOWN | no data | 2025-11-24 19:59:55 UTC\n"));
}

#[test]
fn digest_lists_every_alert() {
    let alerts = [
        alert("CRITICAL - timeout"),
        Alert {
            state: State::Warning,
            service: "Load".into(),
            ..alert("WARNING - load 12")
        },
        host_alert("PING <lost>"),
    ];
    let mail = compose_digest(&cfg(), "DIGEST-20251124", &alerts, NOW).unwrap();
    let m = parse(&mail.bytes);
    assert_eq!(
        m.subject(),
        Some("[DIGEST-20251124] DIGEST 3 alerts, worst CRITICAL: web-01")
    );
    assert_eq!(mail.message_id, "<digest-20251124.0@alertgate.example.net>");
    assert_eq!(raw(&m, "X-Priority").as_deref(), Some("1 (Highest)"));
    let html = html_body(&m);
    assert!(html.contains("<h2>3 alerts</h2>"));
    assert!(html.contains("WARNING - load 12"));
    assert!(html.contains("PING &lt;lost&gt;"));
    assert_eq!(html.matches("<tr><td").count(), 3);
    assert!(matches!(
        compose_digest(&cfg(), "DIGEST-1", &[], NOW),
        Err(ComposeError::EmptyDigest)
    ));
}

#[test]
fn unmatched_mail_is_forwarded_tagged_with_original() {
    let original = "From: vcenter@example.net\nTo: alerts@example.net\nSubject: Alarme déclenchée\nAuto-Submitted: auto-generated\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nLe datastore est plein.\n";
    let mail = forward_unmatched("UNMATCHED-7", original.as_bytes()).unwrap();
    let m = parse(&mail.bytes);
    assert_eq!(m.subject(), Some("[UNMATCHED-7] Alarme déclenchée"));
    assert_eq!(
        m.from().and_then(|f| f.first()).and_then(|a| a.address()),
        Some("alerts@example.net")
    );
    assert!(m.header_raw("Auto-Submitted").is_none());
    let text = text_body(&m);
    assert!(text.contains("Le datastore est plein."));
    assert!(text.contains("Original from: vcenter@example.net\n"));
    let attached: Vec<_> = m.attachments().collect();
    assert_eq!(attached.len(), 1);
    let inner = attached[0].message().unwrap();
    assert_eq!(inner.subject(), Some("Alarme déclenchée"));
    // Bare LF in the stored original is normalised to CRLF for SMTP.
    assert_eq!(
        inner.body_text(0).as_deref(),
        Some("Le datastore est plein.\r\n")
    );
    let bare_lf = mail
        .bytes
        .windows(2)
        .any(|w| w[1] == b'\n' && w[0] != b'\r');
    assert!(!bare_lf && mail.bytes.first() != Some(&b'\n'));
}

#[test]
fn unparseable_or_binary_originals_still_forward() {
    let mail = forward_unmatched("UNMATCHED-8", b"").unwrap();
    assert_eq!(
        parse(&mail.bytes).subject(),
        Some("[UNMATCHED-8] (no subject)")
    );

    let mut latin1 = b"Subject: alarme\r\n\r\nd\xe9faillance\r\n".to_vec();
    let mail = forward_unmatched("UNMATCHED-9", &latin1).unwrap();
    let m = parse(&mail.bytes);
    let part = m.attachments().next().unwrap();
    assert_eq!(part.content_type().unwrap().ctype(), "message");
    assert_eq!(
        raw_part_header(part, "Content-Transfer-Encoding"),
        Some("8bit".into())
    );

    latin1.extend_from_slice(b"\0binary");
    let mail = forward_unmatched("UNMATCHED-9", &latin1).unwrap();
    let m = parse(&mail.bytes);
    let part = m.attachments().next().unwrap();
    assert_eq!(part.content_type().unwrap().ctype(), "application");
    assert_eq!(part.contents(), &to_crlf(&latin1)[..]);
}

fn raw_part_header(part: &mail_parser::MessagePart<'_>, name: &str) -> Option<String> {
    part.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .and_then(|h| h.value().as_text().map(str::to_owned))
}

#[test]
fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
    let parsed: ComposeConfig =
        toml::from_str("from = \"alerts@example.net\"\nto = \"glpi@example.net\"\n").unwrap();
    assert_eq!(parsed.subject_template, DEFAULT_SUBJECT_TEMPLATE);
    assert!(parsed.attach_original_on_open);
    assert!(!parsed.attach_original_on_update);
    assert_eq!(parsed.glpi_tag, "GLPI");
    assert!(parsed.validate().is_ok());
    assert!(toml::from_str::<ComposeConfig>(
        "from = \"a@example.net\"\nto = \"b@example.net\"\nauto_submitted = true\n"
    )
    .is_err());
}

#[test]
fn bad_config_and_inputs_are_clear_errors() {
    let bad_from = ComposeConfig::new("not an address", "glpi@example.net");
    assert!(matches!(
        bad_from.validate(),
        Err(ComposeError::InvalidAddress { field: "from", .. })
    ));
    let looped = ComposeConfig::new("glpi@example.net", "GLPI <glpi@example.net>");
    assert!(looped.validate().is_err());
    let bad_template = ComposeConfig {
        subject_template: "{host}".into(),
        ..cfg()
    };
    let err = bad_template.validate().unwrap_err().to_string();
    assert!(err.contains("{tag}"), "{err}");

    let a = alert("x");
    let bad_tag = IncidentRef {
        tag: "ALERT 1".into(),
        ..incident(0, None)
    };
    assert!(matches!(
        compose(&cfg(), &event(MailKind::Open, bad_tag, &a)),
        Err(ComposeError::InvalidIncidentTag(_))
    ));
    let mut ev = event(MailKind::Open, incident(0, None), &a);
    ev.now = -1;
    assert!(matches!(
        compose(&cfg(), &ev),
        Err(ComposeError::InvalidTime(-1))
    ));
}

#[test]
fn state_words_are_clear() {
    let words = |kind: MailKind, nt: NotificationType, state: State| {
        let a = Alert {
            notification_type: nt,
            state,
            ..alert("o")
        };
        state_word(&kind, &a)
    };
    let update = || MailKind::Update { reason: "r".into() };
    assert_eq!(
        words(MailKind::Open, NotificationType::Problem, State::Warning),
        "WARNING"
    );
    assert_eq!(
        words(MailKind::Resolve, NotificationType::Recovery, State::Ok),
        "RECOVERED"
    );
    assert_eq!(
        words(update(), NotificationType::Acknowledgement, State::Critical),
        "ACKNOWLEDGED"
    );
    assert_eq!(
        words(update(), NotificationType::Problem, State::Warning),
        "NOW WARNING"
    );
    assert_eq!(
        words(update(), NotificationType::DowntimeStart, State::Critical),
        "IN DOWNTIME"
    );
    assert_eq!(
        words(update(), NotificationType::FlappingStart, State::Critical),
        "FLAPPING CRITICAL"
    );
}

#[test]
fn x_priority_follows_severity() {
    assert_eq!(x_priority(State::Critical), "1 (Highest)");
    assert_eq!(x_priority(State::Down), "1 (Highest)");
    assert_eq!(x_priority(State::Unreachable), "2 (High)");
    assert_eq!(x_priority(State::Warning), "3 (Normal)");
    assert_eq!(x_priority(State::Unknown), "3 (Normal)");
    assert_eq!(x_priority(State::Ok), "5 (Lowest)");
    assert_eq!(x_priority(State::Up), "5 (Lowest)");
}

/// Alert text biased towards the characters that matter: brackets, `#`, digits,
/// line breaks, encoded-word syntax, plus any Unicode.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("#".to_owned()),
        Just("]".to_owned()),
        Just("[".to_owned()),
        Just("[GLPI #".to_owned()),
        Just("=?utf-8?q?".to_owned()),
        Just("?=".to_owned()),
        Just("=23".to_owned()),
        Just("\r\n".to_owned()),
        Just(" ".to_owned()),
        "[0-9]{1,7}",
        "[a-zA-Z]{1,5}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn only_our_prefix_can_name_a_ticket(
        output in hostile_text(),
        host in hostile_text(),
        service in hostile_text(),
        ticket in proptest::option::of(1u64..100_000_000),
    ) {
        let a = Alert { host, service, ..alert(&output) };
        let mail = compose(&cfg(), &event(MailKind::Open, incident(0, ticket), &a)).unwrap();
        let m = parse(&mail.bytes);
        let subject = m.subject().unwrap_or("").to_owned();
        prop_assert_eq!(&subject, &mail.subject);
        prop_assert!(subject.chars().count() < 250);
        prop_assert!(!subject.contains(['\r', '\n']));
        assert_only_our_ticket(&subject, ticket);
        prop_assert!(!header_names(&m).iter().any(|n| n == "bcc"));
    }

    #[test]
    fn forwarded_subjects_cannot_name_a_ticket(
        subject in hostile_text(),
        host in hostile_text(),
    ) {
        let original = format!("From: a@example.net\r\nSubject: {subject}\r\n\r\nbody\r\n");
        let mail = forward_unmatched("UNMATCHED-1", original.as_bytes()).unwrap();
        let m = parse(&mail.bytes);
        prop_assert_eq!(m.subject().unwrap_or(""), mail.subject.as_str());
        assert_only_our_ticket(&mail.subject, None);

        let a = Alert { host, ..alert("x") };
        let digest = compose_digest(&cfg(), "DIGEST-1", &[a], NOW).unwrap();
        let m = parse(&digest.bytes);
        prop_assert_eq!(m.subject().unwrap_or(""), digest.subject.as_str());
        prop_assert!(digest.subject.chars().count() < 250);
        assert_only_our_ticket(&digest.subject, None);
    }
}

#[test]
fn a_merged_mail_lists_every_event_since_the_last_one_with_times() {
    let a = alert("connection refused <b>");
    let changes = [
        Change {
            time: NOW - 120,
            event: "ALERT-1f3a9c2e web-01 / HTTP: NOW CRITICAL".into(),
            state: State::Critical,
            output: "connection refused <b>".into(),
        },
        Change {
            time: NOW - 30,
            event: "ALERT-1f3a9c2e web-01 / HTTP: ACKNOWLEDGED".into(),
            state: State::Critical,
            output: "on it".into(),
        },
    ];
    let ev = MailEvent {
        changes: &changes,
        ..event(
            MailKind::Update {
                reason: "acknowledgement".into(),
            },
            incident(2, Some(123)),
            &a,
        )
    };
    let mail = compose(&cfg(), &ev).unwrap();
    let m = parse(&mail.bytes);
    let text = text_body(&m);
    assert!(text.contains("Since the last mail (2 events)"), "{text}");
    assert!(
        text.contains(&format!(
            "{} | ALERT-1f3a9c2e web-01 / HTTP: NOW CRITICAL | CRITICAL",
            format_time(NOW - 120)
        )),
        "{text}"
    );
    assert!(text.contains("ACKNOWLEDGED | CRITICAL | on it"), "{text}");
    let html = html_body(&m);
    assert!(html.contains("connection refused &lt;b&gt;"), "{html}");
    assert!(!html.contains("<b>"), "alert text escaped");
    // A mail about one event has no such table.
    let single = compose(
        &cfg(),
        &event(MailKind::Resolve, incident(3, Some(123)), &a),
    )
    .unwrap();
    assert!(!text_body(&parse(&single.bytes)).contains("Since the last mail"));
}
