//! Compose from arbitrary alert text: the first bytes pick the fields, the rest is the
//! plugin output and the original mail. Composing must never panic, and every part the
//! mail declares 7bit or 8bit must be valid for it (RFC 2045 2.7/2.8: no NUL, CR only
//! in CRLF), the bug of issue 10 finding 7.
#![no_main]

use alertgate::compose::{
    compose, compose_unmatched, ComposeConfig, IncidentRef, MailEvent, MailKind,
};
use alertgate::rules::{NoContext, RuleSet};
use libfuzzer_sys::fuzz_target;
use mail_parser::MimeHeaders;
use std::sync::OnceLock;

fn check_encodings(raw: &[u8]) {
    let Some(message) = mail_parser::MessageParser::default().parse(raw) else {
        panic!("composed mail does not parse");
    };
    for part in message.parts.iter() {
        if matches!(part.body, mail_parser::PartType::Multipart(_)) {
            continue;
        }
        let encoding = part
            .content_transfer_encoding()
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        if encoding != "7bit" && encoding != "8bit" {
            continue;
        }
        let body = &raw[part.raw_body_offset() as usize..part.raw_end_offset() as usize];
        assert!(!body.contains(&0), "NUL in a {encoding} part");
        for (i, b) in body.iter().enumerate() {
            if *b == b'\r' {
                assert_eq!(
                    body.get(i + 1),
                    Some(&b'\n'),
                    "bare CR in a {encoding} part"
                );
            }
        }
    }
}

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        RuleSet::load(&[dir]).expect("rules load")
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = ComposeConfig::new("alertgate@example.test", "glpi@example.test");
    if let Ok(mail) = compose_unmatched(&cfg, "ALERT-0000abcd", data, 1_700_000_000) {
        check_encodings(&mail.bytes);
    }
    // The same bytes as a monitoring mail through the rules, composed as incidents.
    let text = String::from_utf8_lossy(data);
    let alert_mail = format!(
        "From: nagios@example.test\r\nSubject: ** PROBLEM Service Alert: web/HTTP is CRITICAL **\r\n\r\n\
         ***** Nagios *****\r\n\r\nNotification Type: PROBLEM\r\n\r\nService: HTTP\r\nHost: web\r\n\
         Address: 10.0.0.1\r\nState: CRITICAL\r\n\r\nDate/Time: now\r\n\r\nAdditional Info:\r\n\r\n{text}\r\n"
    );
    let Ok(alerts) = rules().parse(alert_mail.as_bytes(), &NoContext) else {
        return;
    };
    for (seq, alert) in alerts.iter().enumerate() {
        let kind = match seq % 3 {
            0 => MailKind::Open,
            1 => MailKind::Update {
                reason: text.chars().take(40).collect(),
            },
            _ => MailKind::Resolve,
        };
        let event = MailEvent {
            kind,
            incident: IncidentRef {
                tag: "ALERT-0000abcd".into(),
                seq: seq as u32,
                ticket_id: (seq > 0).then_some(42),
                glpi_message_id: None,
                first_seen: 1_700_000_000,
                alert_count: 1,
            },
            alert,
            folded: &[],
            changes: &[],
            original: Some(alert_mail.as_bytes()),
            now: 1_700_000_000,
        };
        if let Ok(mail) = compose(&cfg, &event) {
            check_encodings(&mail.bytes);
        }
    }
});
