//! The library API the pipeline uses: RuleSet is shareable, the parse context supplies
//! hosts for Zabbix update mails, and the three failure kinds stay distinct.

use alertgate::alert::{NotificationType, State};
use alertgate::mail::message_id;
use alertgate::rules::{NoContext, ParseContext, ParseError, RuleSet};
use std::path::PathBuf;

fn shipped() -> RuleSet {
    RuleSet::load(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")])
        .expect("shipped rules")
}

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
    .expect("fixture")
}

struct KnownProblem;

impl ParseContext for KnownProblem {
    fn host_for_message_id(&self, message_id: &str) -> Option<String> {
        (message_id == "1234567.5e8d3b5d1b2c0f3a9e7d6c5b4a392817.1.1@zabbix.com")
            .then(|| "web-frontend-01".to_string())
    }
}

#[test]
fn rule_set_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RuleSet>();
}

#[test]
fn zabbix_update_takes_host_from_the_problem_it_replies_to() {
    let rules = shipped();
    let raw = fixture("zabbix/update-ack.eml");
    let with_store = rules.parse(&raw, &KnownProblem).expect("parses");
    assert_eq!(with_store[0].host, "web-frontend-01");
    assert_eq!(
        with_store[0].notification_type,
        NotificationType::Acknowledgement
    );
    let without = rules.parse(&raw, &NoContext).expect("parses");
    assert_eq!(without[0].host, "");
}

#[test]
fn grouped_alertmanager_mail_yields_one_alert_per_alert() {
    let alerts = shipped()
        .parse(&fixture("alertmanager/firing-and-resolved.eml"), &NoContext)
        .expect("parses");
    let summary: Vec<(&str, State, NotificationType)> = alerts
        .iter()
        .map(|a| (a.host.as_str(), a.state, a.notification_type))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "node01.example.com:9100",
                State::Warning,
                NotificationType::Problem
            ),
            (
                "node02.example.com:9100",
                State::Critical,
                NotificationType::Problem
            ),
            (
                "node03.example.com:9100",
                State::Ok,
                NotificationType::Recovery
            ),
        ]
    );
}

#[test]
fn failure_kinds_are_distinct() {
    let rules = shipped();
    assert!(matches!(
        rules.parse(b"", &NoContext),
        Err(ParseError::Undecodable(_))
    ));
    assert!(matches!(
        rules.parse(b"Subject: lunch?\r\n\r\nnoon\r\n", &NoContext),
        Err(ParseError::NoRuleMatched { .. })
    ));
    let no_state = b"Subject: Problem: x\r\n\r\nProblem started at 1 on 2\r\nHost: h\r\n";
    match rules.parse(no_state, &NoContext) {
        Err(ParseError::Extraction { rule, why }) => {
            assert_eq!(rule, "zabbix-problem");
            assert!(why.contains("no `state` extracted"), "{why}");
        }
        other => panic!("expected an extraction error, got {other:?}"),
    }
}

#[test]
fn message_id_helper_strips_angle_brackets() {
    assert_eq!(
        message_id(&fixture("icinga/host-problem.eml")).as_deref(),
        Some("20240312130327.host-problem@icinga-master.example.com")
    );
    assert_eq!(message_id(&fixture("zabbix/problem.eml")), None);
}
