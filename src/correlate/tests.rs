//! Scenario tests of the engine with explicit times, plus a property test over
//! random alert sequences.

use super::*;
use crate::alert::{Alert, AlertKey, AlertKind, NotificationType as N, State};
use std::collections::HashMap;

const T0: i64 = 1_700_000_040; // a minute boundary (1_700_000_040 % 60 == 0)

fn alert(kind: AlertKind, host: &str, service: &str, state: State, nt: N) -> Alert {
    Alert {
        source: "centreon".into(),
        kind,
        host: host.into(),
        host_alias: None,
        service: service.into(),
        state,
        notification_type: nt,
        output: format!("{service} is {state}"),
        long_output: None,
        author: None,
        comment: None,
        address: None,
        event_time: None,
        vendor_id: None,
        url: None,
        rule: "test".into(),
        needs_sanitizing: false,
        inherits: Vec::new(),
    }
}

fn svc(host: &str, service: &str, state: State, nt: N) -> Alert {
    alert(AlertKind::Service, host, service, state, nt)
}

fn host(name: &str, state: State, nt: N) -> Alert {
    alert(AlertKind::Host, name, "", state, nt)
}

fn policy() -> CorrelationPolicy {
    CorrelationPolicy::default()
}

fn single_mail(d: &Decision) -> &IncidentMail {
    let mails: Vec<_> = d.mails().collect();
    assert_eq!(mails.len(), 1, "expected one mail: {:#?}", d.actions);
    mails[0]
}

fn no_mail(d: &Decision) {
    assert_eq!(d.mails().count(), 0, "expected no mail: {:#?}", d.actions);
    assert_eq!(
        d.digests().count(),
        0,
        "expected no digest: {:#?}",
        d.actions
    );
}

fn suppress_reason(d: &Decision) -> (SuppressReason, u64) {
    match d.actions.as_slice() {
        [Action::Suppress { why, count, .. }] => (*why, *count),
        other => panic!("expected one suppress, got {other:#?}"),
    }
}

fn opened(state: &mut CorrelationState, a: &Alert, now: i64) -> Incident {
    let d = correlate(state, a, now, &policy());
    let mail = single_mail(&d);
    assert_eq!(mail.kind, MailKind::Open);
    mail.incident.clone()
}

#[test]
fn first_problem_opens_with_seq_zero() {
    let mut st = CorrelationState::default();
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(mail.kind, MailKind::Open);
    assert_eq!(mail.seq, 0);
    assert_eq!(mail.deferred_event, None);
    assert_eq!(mail.incident.next_seq, 1);
    assert_eq!(mail.incident.first_seen, T0);
    assert_eq!(mail.incident.worst_state, State::Critical);
    assert!(mail.incident.tag.starts_with("ALERT-"));
    assert_eq!(d.changed.len(), 1);
    assert!(d.ended.is_empty());
    assert_eq!(st.open_count(), 1);
    assert_eq!(
        st.incident_by_tag(&mail.incident.tag).map(|i| i.id),
        Some(mail.incident.id)
    );
}

#[test]
fn same_state_again_is_suppressed_and_counted() {
    let mut st = CorrelationState::default();
    let a = svc("web01", "cpu", State::Critical, N::Problem);
    opened(&mut st, &a, T0);
    for n in 1..=3u64 {
        let d = correlate(&mut st, &a, T0 + 300 * n as i64, &policy());
        no_mail(&d);
        assert_eq!(suppress_reason(&d), (SuppressReason::Repeat, n));
        assert_eq!(d.changed[0].suppressed, n);
        assert_eq!(d.changed[0].notifications, n + 1);
        assert_eq!(d.changed[0].last_seen, T0 + 300 * n as i64);
    }
}

#[test]
fn reminder_after_repeat_interval() {
    let pol = CorrelationPolicy {
        repeat_interval: Some(3600),
        ..policy()
    };
    let mut st = CorrelationState::default();
    let a = svc("web01", "cpu", State::Critical, N::Problem);
    correlate(&mut st, &a, T0, &pol);
    let d = correlate(&mut st, &a, T0 + 3599, &pol);
    assert_eq!(suppress_reason(&d).0, SuppressReason::Repeat);
    let d = correlate(&mut st, &a, T0 + 3600, &pol);
    let mail = single_mail(&d);
    assert_eq!(
        mail.kind,
        MailKind::Update {
            reason: UpdateReason::Reminder
        }
    );
    assert_eq!(mail.seq, 1);
    assert_eq!(mail.incident.updates_sent, 1);
    // The clock restarts from the reminder.
    let d = correlate(&mut st, &a, T0 + 3600 + 1800, &pol);
    assert_eq!(suppress_reason(&d).0, SuppressReason::Repeat);
    let d = correlate(&mut st, &a, T0 + 7200, &pol);
    assert_eq!(single_mail(&d).seq, 2);
}

#[test]
fn no_reminder_by_default() {
    let mut st = CorrelationState::default();
    let a = svc("web01", "cpu", State::Critical, N::Problem);
    opened(&mut st, &a, T0);
    let d = correlate(&mut st, &a, T0 + 30 * 86_400, &policy());
    assert_eq!(suppress_reason(&d).0, SuppressReason::Repeat);
}

#[test]
fn state_change_updates_and_tracks_worst() {
    let mut st = CorrelationState::default();
    let inc = opened(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0,
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0 + 60,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(
        mail.kind,
        MailKind::Update {
            reason: UpdateReason::StateChange
        }
    );
    assert_eq!(mail.seq, 1);
    assert_eq!(mail.incident.tag, inc.tag);
    assert_eq!(mail.incident.state, State::Critical);
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0 + 120,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(mail.seq, 2);
    assert_eq!(mail.incident.state, State::Warning);
    assert_eq!(mail.incident.worst_state, State::Critical);
    assert_eq!(mail.incident.updates_sent, 2);
}

#[test]
fn notices_update_unless_policy_suppresses() {
    let cases = [
        (
            N::Acknowledgement,
            UpdateReason::Acknowledgement,
            SuppressReason::PolicyAcknowledgement,
        ),
        (
            N::DowntimeStart,
            UpdateReason::Downtime,
            SuppressReason::PolicyDowntime,
        ),
        (
            N::DowntimeEnd,
            UpdateReason::Downtime,
            SuppressReason::PolicyDowntime,
        ),
        (
            N::DowntimeCancelled,
            UpdateReason::Downtime,
            SuppressReason::PolicyDowntime,
        ),
        (
            N::FlappingStart,
            UpdateReason::Flapping,
            SuppressReason::PolicyFlapping,
        ),
        (
            N::FlappingStop,
            UpdateReason::Flapping,
            SuppressReason::PolicyFlapping,
        ),
        (
            N::FlappingDisabled,
            UpdateReason::Flapping,
            SuppressReason::PolicyFlapping,
        ),
    ];
    let all_suppressed = CorrelationPolicy {
        suppress_acknowledgement: true,
        suppress_downtime: true,
        suppress_flapping: true,
        ..policy()
    };
    for (nt, reason, suppressed) in cases {
        let mut st = CorrelationState::default();
        opened(
            &mut st,
            &svc("web01", "cpu", State::Critical, N::Problem),
            T0,
        );
        let d = correlate(
            &mut st,
            &svc("web01", "cpu", State::Critical, nt),
            T0 + 10,
            &policy(),
        );
        assert_eq!(single_mail(&d).kind, MailKind::Update { reason }, "{nt}");

        let d = correlate(
            &mut st,
            &svc("web01", "cpu", State::Critical, nt),
            T0 + 20,
            &all_suppressed,
        );
        no_mail(&d);
        assert_eq!(suppress_reason(&d), (suppressed, 1), "{nt}");
    }
}

#[test]
fn each_suppress_flag_only_affects_its_kind() {
    let only_ack = CorrelationPolicy {
        suppress_acknowledgement: true,
        ..policy()
    };
    let mut st = CorrelationState::default();
    opened(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::DowntimeStart),
        T0 + 1,
        &only_ack,
    );
    assert_eq!(
        single_mail(&d).kind,
        MailKind::Update {
            reason: UpdateReason::Downtime
        }
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Acknowledgement),
        T0 + 2,
        &only_ack,
    );
    assert_eq!(suppress_reason(&d).0, SuppressReason::PolicyAcknowledgement);
}

#[test]
fn custom_notification_updates() {
    let mut st = CorrelationState::default();
    opened(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Custom),
        T0 + 5,
        &policy(),
    );
    assert_eq!(
        single_mail(&d).kind,
        MailKind::Update {
            reason: UpdateReason::Custom
        }
    );
}

#[test]
fn recovery_resolves_and_ends() {
    let mut st = CorrelationState::default();
    let inc = opened(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Ok, N::Recovery),
        T0 + 600,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(mail.kind, MailKind::Resolve);
    assert_eq!(mail.seq, 1);
    assert_eq!(mail.incident.tag, inc.tag);
    assert_eq!(mail.incident.state, State::Ok);
    assert_eq!(mail.incident.worst_state, State::Critical);
    let ending = mail.incident.ended.expect("ended");
    assert_eq!((ending.at, ending.reason), (T0 + 600, EndReason::Recovered));
    assert_eq!(d.ended, vec![inc.id]);
    assert_eq!(d.changed.len(), 1);
    assert!(d.changed[0].ended.is_some());
    assert_eq!(st.open_count(), 0);
    assert!(st.incident_by_tag(&inc.tag).is_none());
}

#[test]
fn problem_with_good_state_counts_as_recovery() {
    let mut st = CorrelationState::default();
    opened(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Ok, N::Problem),
        T0 + 5,
        &policy(),
    );
    assert_eq!(single_mail(&d).kind, MailKind::Resolve);
}

#[test]
fn recovery_without_incident_is_ignored() {
    let mut st = CorrelationState::default();
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Ok, N::Recovery),
        T0,
        &policy(),
    );
    assert_eq!(
        d.actions,
        vec![Action::Ignore {
            why: IgnoreReason::RecoveryWithoutIncident
        }]
    );
    assert!(d.changed.is_empty() && d.ended.is_empty());
    assert_eq!(st.next_id(), 1);
}

#[test]
fn notices_without_incident_are_ignored() {
    for nt in [
        N::Acknowledgement,
        N::DowntimeStart,
        N::FlappingStart,
        N::Custom,
    ] {
        let mut st = CorrelationState::default();
        let d = correlate(
            &mut st,
            &svc("web01", "cpu", State::Critical, nt),
            T0,
            &policy(),
        );
        assert_eq!(
            d.actions,
            vec![Action::Ignore {
                why: IgnoreReason::NoIncidentForNotice {
                    notification_type: nt
                }
            }]
        );
        assert_eq!(st.open_count(), 0);
    }
}

#[test]
fn problem_after_resolve_opens_new_incident() {
    let mut st = CorrelationState::default();
    let a = svc("web01", "cpu", State::Critical, N::Problem);
    let first = opened(&mut st, &a, T0);
    correlate(
        &mut st,
        &svc("web01", "cpu", State::Ok, N::Recovery),
        T0 + 60,
        &policy(),
    );
    let second = opened(&mut st, &a, T0 + 120);
    assert_ne!(first.id, second.id);
    assert_ne!(first.tag, second.tag);
    assert_eq!(second.next_seq, 1);
}

#[test]
fn key_is_trimmed_and_host_case_insensitive() {
    let mut st = CorrelationState::default();
    let inc = opened(
        &mut st,
        &svc("Web01", "cpu", State::Critical, N::Problem),
        T0,
    );
    assert_eq!(
        inc.key,
        AlertKey {
            source: "centreon".into(),
            host: "web01".into(),
            service: "cpu".into()
        }
    );
    let mut other = svc("  WEB01 ", " cpu ", State::Critical, N::Problem);
    other.source = " centreon ".into();
    let d = correlate(&mut st, &other, T0 + 5, &policy());
    assert_eq!(suppress_reason(&d).0, SuppressReason::Repeat);
    // Service names stay case-sensitive: a different service is a different incident.
    let d = correlate(
        &mut st,
        &svc("web01", "CPU", State::Critical, N::Problem),
        T0 + 6,
        &policy(),
    );
    assert_eq!(single_mail(&d).kind, MailKind::Open);
}

#[test]
fn host_alert_key_ignores_service_field() {
    let mut a = host("web01", State::Down, N::Problem);
    a.service = "junk".into();
    assert_eq!(alert_key(&a, &policy()).service, "");
}

#[test]
fn alias_map_joins_hostalias_and_hostname() {
    let mut aliases = HashMap::new();
    aliases.insert("Web Server 01".to_string(), "WEB01.example.org".to_string());
    let pol = CorrelationPolicy {
        host_aliases: aliases,
        ..policy()
    };
    let mut st = CorrelationState::default();
    let d = correlate(
        &mut st,
        &host("web01.example.org", State::Down, N::Problem),
        T0,
        &pol,
    );
    let host_inc = single_mail(&d).incident.clone();
    // The service mail carries $HOSTALIAS$ in another case: it folds into the same host.
    let d = correlate(
        &mut st,
        &svc("web server 01", "http", State::Critical, N::Problem),
        T0 + 5,
        &pol,
    );
    match d.actions.as_slice() {
        [Action::Folded { host_tag, .. }] => assert_eq!(host_tag, &host_inc.tag),
        other => panic!("expected fold, got {other:#?}"),
    }
    // And the host recovery under the alias resolves the same incident.
    let d = correlate(
        &mut st,
        &host("WEB SERVER 01", State::Up, N::Recovery),
        T0 + 10,
        &pol,
    );
    assert_eq!(d.ended, vec![host_inc.id]);
}

#[test]
fn host_down_folds_forty_services() {
    let mut st = CorrelationState::default();
    let host_inc = opened(&mut st, &host("db01", State::Down, N::Problem), T0);
    for i in 0..40 {
        let d = correlate(
            &mut st,
            &svc("db01", &format!("svc{i}"), State::Critical, N::Problem),
            T0 + 1 + i,
            &policy(),
        );
        no_mail(&d);
        assert!(matches!(d.actions.as_slice(), [Action::Folded { .. }]));
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].id, host_inc.id);
    }
    // A repeat of a folded service updates its entry.
    correlate(
        &mut st,
        &svc("db01", "svc0", State::Warning, N::Problem),
        T0 + 50,
        &policy(),
    );
    // A folded service recovering during the fold updates its entry, no mail.
    let d = correlate(
        &mut st,
        &svc("db01", "svc1", State::Ok, N::Recovery),
        T0 + 51,
        &policy(),
    );
    no_mail(&d);
    assert!(matches!(
        d.actions.as_slice(),
        [Action::Folded {
            state: State::Ok,
            ..
        }]
    ));
    assert_eq!(st.open_count(), 1, "no service incident was created");

    let d = correlate(
        &mut st,
        &host("db01", State::Down, N::Acknowledgement),
        T0 + 60,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(
        mail.kind,
        MailKind::Update {
            reason: UpdateReason::Acknowledgement
        }
    );
    assert_eq!(mail.folded.len(), 40);
    assert_eq!(mail.incident.folded_notifications, 42);
    let svc0 = mail
        .folded
        .iter()
        .find(|f| f.service == "svc0")
        .expect("svc0 folded");
    assert_eq!(
        (
            svc0.state,
            svc0.notifications,
            svc0.first_seen,
            svc0.last_seen
        ),
        (State::Warning, 2, T0 + 1, T0 + 50)
    );
    assert_eq!(
        mail.folded
            .iter()
            .find(|f| f.service == "svc1")
            .map(|f| f.state),
        Some(State::Ok)
    );

    let d = correlate(
        &mut st,
        &host("db01", State::Up, N::Recovery),
        T0 + 120,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(mail.kind, MailKind::Resolve);
    assert_eq!(mail.folded.len(), 40);
    assert_eq!(st.open_count(), 0);

    // Still failing after the host recovered: its own incident on its next notification.
    let d = correlate(
        &mut st,
        &svc("db01", "svc2", State::Critical, N::Problem),
        T0 + 180,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(mail.kind, MailKind::Open);
    assert_eq!(mail.incident.key.service, "svc2");
    // A service that recovered after the host came back has nothing to resolve.
    let d = correlate(
        &mut st,
        &svc("db01", "svc3", State::Ok, N::Recovery),
        T0 + 181,
        &policy(),
    );
    assert!(matches!(d.actions.as_slice(), [Action::Ignore { .. }]));
}

#[test]
fn folding_needs_down_host_same_source_and_only_takes_problems() {
    let mut st = CorrelationState::default();
    opened(&mut st, &host("db01", State::Down, N::Problem), T0);
    // Another source's service is not folded.
    let mut other_source = svc("db01", "cpu", State::Critical, N::Problem);
    other_source.source = "zabbix".into();
    assert_eq!(
        single_mail(&correlate(&mut st, &other_source, T0 + 1, &policy())).kind,
        MailKind::Open
    );
    // An acknowledgement of a service without incident is ignored, not folded.
    let d = correlate(
        &mut st,
        &svc("db01", "disk", State::Critical, N::Acknowledgement),
        T0 + 2,
        &policy(),
    );
    assert!(matches!(d.actions.as_slice(), [Action::Ignore { .. }]));
    // A recovery of a service never folded is ignored.
    let d = correlate(
        &mut st,
        &svc("db01", "disk", State::Ok, N::Recovery),
        T0 + 3,
        &policy(),
    );
    assert!(matches!(d.actions.as_slice(), [Action::Ignore { .. }]));
    // A service incident opened before the host went down keeps its own thread.
    let mut st = CorrelationState::default();
    let svc_inc = opened(&mut st, &svc("db02", "cpu", State::Warning, N::Problem), T0);
    opened(&mut st, &host("db02", State::Down, N::Problem), T0 + 1);
    let d = correlate(
        &mut st,
        &svc("db02", "cpu", State::Critical, N::Problem),
        T0 + 2,
        &policy(),
    );
    assert_eq!(single_mail(&d).incident.id, svc_inc.id);
}

fn distinct_problem(i: usize) -> Alert {
    svc(&format!("host{i}"), "ping", State::Critical, N::Problem)
}

#[test]
fn storm_guard_digests_the_excess() {
    let mut st = CorrelationState::default();
    let mut opens = 0;
    let mut deferred_tags = Vec::new();
    for i in 0..500 {
        let d = correlate(
            &mut st,
            &distinct_problem(i),
            T0 + (i as i64 % 60),
            &policy(),
        );
        opens += d.mails().filter(|m| m.kind == MailKind::Open).count();
        for action in &d.actions {
            if let Action::Deferred { tag, .. } = action {
                deferred_tags.push(tag.clone());
            }
        }
        assert_eq!(d.digests().count(), 0, "no digest while the window runs");
    }
    assert_eq!(opens, 60);
    assert_eq!(deferred_tags.len(), 440);
    assert_eq!(
        st.open_count(),
        501,
        "every incident exists so repeats correlate, plus the digest incident"
    );
    assert_eq!(st.pending_digest().len(), 440);
    let digest = st
        .open_incidents()
        .find(|i| i.is_digest)
        .expect("a digest incident")
        .clone();
    assert_eq!(digest.digest_members_open, 440);
    assert!(!digest.announced);

    // A repeat of an un-announced incident correlates (suppressed), no new incident.
    let d = correlate(&mut st, &distinct_problem(499), T0 + 59, &policy());
    assert_eq!(suppress_reason(&d).0, SuppressReason::Repeat);

    // The oldest deferral (T0) has not waited 60 s yet: tick sends nothing.
    assert!(tick(&mut st, T0 + 59, &policy()).actions.is_empty());
    let d = tick(&mut st, T0 + 60, &policy());
    let digests: Vec<_> = d.digests().collect();
    assert_eq!(digests.len(), 1);
    assert_eq!(digests[0].count, 440);
    assert_eq!(
        (digests[0].tag.as_str(), digests[0].seq),
        (digest.tag.as_str(), 0)
    );
    assert_eq!(digests[0].window_start, T0);
    let listed: Vec<_> = digests[0].entries.iter().map(|e| e.tag.clone()).collect();
    assert_eq!(listed, deferred_tags);
    assert_eq!(d.digested.len(), 440);
    assert_eq!(
        d.changed.len(),
        1,
        "only the digest's snapshot: {:?}",
        d.changed.iter().map(|i| i.id).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(|tag| {
        let i = st.incident_by_tag(tag).expect("still open");
        !i.in_pending_digest
            && !i.announced
            && d.digested.contains(&i.id)
            && i.digest_tag.as_deref() == Some(digest.tag.as_str())
    }));
    assert!(st.pending_digest().is_empty());
    assert!(
        tick(&mut st, T0 + 61, &policy()).actions.is_empty(),
        "digest sent once"
    );
}

#[test]
fn storm_window_slides_instead_of_restarting_each_minute() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 2,
        ..policy()
    };
    let mut st = CorrelationState::default();
    // A burst straddling a minute boundary: the calendar minute would announce 4.
    let mut opens = 0;
    for (i, t) in [58, 59, 60, 61, 62].into_iter().enumerate() {
        let d = correlate(&mut st, &distinct_problem(i), T0 + t, &pol);
        opens += d.mails().filter(|m| m.kind == MailKind::Open).count();
    }
    assert_eq!(opens, 2);
    assert_eq!(st.pending_digest().len(), 3);
    // 60 s after the first announcement there is room again.
    let d = correlate(&mut st, &distinct_problem(5), T0 + 118, &pol);
    assert_eq!(single_mail(&d).kind, MailKind::Open);
    // The digest goes out once the oldest deferral (T0 + 60) waited 60 s.
    assert!(tick(&mut st, T0 + 119, &pol).actions.is_empty());
    let d = tick(&mut st, T0 + 120, &pol);
    assert_eq!(d.digests().map(|g| g.count).collect::<Vec<_>>(), vec![3]);
    correlate(&mut st, &distinct_problem(6), T0 + 120, &pol);
    // A later excess joins the same digest, as news for its ticket.
    let d = correlate(&mut st, &distinct_problem(7), T0 + 121, &pol);
    assert!(matches!(
        d.actions.as_slice(),
        [Action::Deferred {
            pending_in_digest: 1,
            ..
        }]
    ));
    let d = tick(&mut st, T0 + 200, &pol);
    assert_eq!(d.digests().count(), 0, "one digest per storm");
    let news: Vec<_> = d.mails().collect();
    assert_eq!(news.len(), 1);
    assert_eq!(news[0].kind, MailKind::Open);
    assert!(news[0].via_digest.is_some());
    assert_eq!(news[0].seq, 1, "numbered in the digest's thread");
}

#[test]
fn digested_incidents_report_to_the_digest_and_its_last_recovery_resolves_it() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 0,
        ..policy()
    };
    let mut st = CorrelationState::default();
    no_mail(&correlate(
        &mut st,
        &svc("a", "cpu", State::Warning, N::Problem),
        T0,
        &pol,
    ));
    no_mail(&correlate(
        &mut st,
        &svc("b", "cpu", State::Critical, N::Problem),
        T0 + 1,
        &pol,
    ));
    // An update of a pending member sends the digest first, then the news for its ticket.
    let d = correlate(
        &mut st,
        &svc("a", "cpu", State::Critical, N::Problem),
        T0 + 5,
        &pol,
    );
    let digest = d.digests().next().expect("digest sent first").clone();
    assert_eq!(digest.count, 2);
    let mail = single_mail(&d);
    assert_eq!(
        mail.kind,
        MailKind::Update {
            reason: UpdateReason::StateChange
        }
    );
    assert_eq!(mail.via_digest.as_deref(), Some(digest.tag.as_str()));
    assert_eq!(mail.owner_tag(), digest.tag);
    assert_eq!(mail.seq, 1);
    assert!(matches!(d.actions.first(), Some(Action::Digest(_))));
    // Recoveries: news for the digest; the last one also resolves the digest.
    let d = correlate(
        &mut st,
        &svc("a", "cpu", State::Ok, N::Recovery),
        T0 + 10,
        &pol,
    );
    let mail = single_mail(&d);
    assert_eq!((mail.kind, mail.seq), (MailKind::Resolve, 2));
    assert_eq!(mail.owner_tag(), digest.tag);
    assert_eq!(d.ended.len(), 1);
    let d = correlate(
        &mut st,
        &svc("b", "cpu", State::Ok, N::Recovery),
        T0 + 20,
        &pol,
    );
    let mails: Vec<_> = d.mails().collect();
    assert_eq!(mails.len(), 2);
    assert_eq!(
        (mails[0].kind, mails[0].owner_tag()),
        (MailKind::Resolve, digest.tag.as_str())
    );
    assert!(mails[0].via_digest.is_some());
    assert_eq!(
        (mails[1].kind, mails[1].incident.tag.as_str()),
        (MailKind::Resolve, digest.tag.as_str())
    );
    assert!(mails[1].via_digest.is_none(), "the digest's own recovery");
    assert!(mails[1].incident.is_digest);
    assert_eq!(d.ended.len(), 2);
    assert_eq!(st.open_count(), 0);
    assert!(d.changed.iter().all(|i| !i.is_open()));
}

#[test]
fn a_member_recovering_before_its_digest_went_out_is_listed_then_recovered() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 0,
        ..policy()
    };
    let mut st = CorrelationState::default();
    correlate(
        &mut st,
        &svc("b", "cpu", State::Critical, N::Problem),
        T0 + 20,
        &pol,
    );
    let d = correlate(
        &mut st,
        &svc("b", "cpu", State::Ok, N::Recovery),
        T0 + 30,
        &pol,
    );
    assert!(matches!(d.actions.first(), Some(Action::Digest(g)) if g.count == 1));
    let mails: Vec<_> = d.mails().collect();
    assert_eq!(mails.len(), 2, "member recovery, digest recovery");
    assert!(mails.iter().all(|m| m.kind == MailKind::Resolve));
    assert!(
        mails.iter().all(|m| m.kind != MailKind::Open),
        "never a ticket whose first mail is a recovery"
    );
    assert!(tick(&mut st, T0 + 200, &pol).actions.is_empty());
}

fn with_ticket(status: TicketStatus) -> (CorrelationState, Incident) {
    let mut st = CorrelationState::default();
    let inc = opened(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0,
    );
    let id = apply_ticket_info(
        &mut st,
        &format!(" {} ", inc.tag),
        123,
        Some("<GLPI_x-Ticket-123/new@glpi>".into()),
        Some(status),
    );
    assert_eq!(id, Some(inc.id));
    (st, inc)
}

#[test]
fn ticket_info_is_recorded_and_carried_in_mails() {
    let mut st = CorrelationState::default();
    let inc = opened(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0,
    );
    assert_eq!(
        apply_ticket_info(&mut st, "ALERT-00000000", 1, None, None),
        None
    );
    assert_eq!(
        apply_ticket_info(&mut st, &inc.tag, 77, Some("<m@glpi>".into()), None),
        Some(inc.id)
    );
    assert_eq!(
        apply_ticket_info(&mut st, &inc.tag, 77, None, Some(TicketStatus::Open)),
        Some(inc.id)
    );
    let stored = st.incident_by_tag(&inc.tag).expect("open");
    assert_eq!(
        stored.glpi_message_id.as_deref(),
        Some("<m@glpi>"),
        "None keeps the known value"
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0 + 5,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(mail.incident.ticket_id, Some(77));
    assert_eq!(mail.incident.ticket_status, TicketStatus::Open);
}

#[test]
fn solved_ticket_suppresses_repeats_reminders_and_acks() {
    let pol = CorrelationPolicy {
        repeat_interval: Some(60),
        ..policy()
    };
    let (mut st, _) = with_ticket(TicketStatus::Solved);
    let solved = SuppressReason::TicketDone {
        status: TicketStatus::Solved,
    };
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0 + 7200,
        &pol,
    );
    assert_eq!(
        suppress_reason(&d).0,
        solved,
        "repeat (and overdue reminder) suppressed"
    );
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Acknowledgement),
        T0 + 7201,
        &pol,
    );
    assert_eq!(suppress_reason(&d).0, solved);
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::DowntimeStart),
        T0 + 7202,
        &pol,
    );
    assert_eq!(suppress_reason(&d).0, solved);
}

#[test]
fn solved_ticket_mails_worse_state_as_reopen() {
    let (mut st, inc) = with_ticket(TicketStatus::Solved);
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0 + 10,
        &policy(),
    );
    let mail = single_mail(&d);
    assert_eq!(
        mail.kind,
        MailKind::Update {
            reason: UpdateReason::Reopen
        }
    );
    assert_eq!(mail.incident.id, inc.id);
    assert_eq!(
        mail.incident.ticket_status,
        TicketStatus::Open,
        "the follow-up reopened it"
    );
    apply_ticket_info(&mut st, &inc.tag, 123, None, Some(TicketStatus::Solved));
    // Better state on a solved ticket: counted only.
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0 + 20,
        &policy(),
    );
    assert_eq!(
        suppress_reason(&d).0,
        SuppressReason::TicketDone {
            status: TicketStatus::Solved
        }
    );

    let no_reopen = CorrelationPolicy {
        reopen_on_worse: false,
        ..policy()
    };
    let (mut st, _) = with_ticket(TicketStatus::Solved);
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0 + 10,
        &no_reopen,
    );
    assert_eq!(
        suppress_reason(&d).0,
        SuppressReason::TicketDone {
            status: TicketStatus::Solved
        }
    );
}

#[test]
fn recovery_of_solved_ticket_ends_without_mail() {
    let (mut st, inc) = with_ticket(TicketStatus::Solved);
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Ok, N::Recovery),
        T0 + 10,
        &policy(),
    );
    no_mail(&d);
    assert_eq!(
        d.actions,
        vec![Action::EndedQuietly {
            incident_id: inc.id,
            tag: inc.tag.clone(),
            reason: EndReason::RecoveredTicketDone
        }]
    );
    assert_eq!(d.ended, vec![inc.id]);
    assert_eq!(
        d.changed[0].ended.map(|e| e.reason),
        Some(EndReason::RecoveredTicketDone)
    );
    assert_eq!(st.open_count(), 0);
}

#[test]
fn closed_ticket_next_problem_opens_new_incident() {
    let (mut st, inc) = with_ticket(TicketStatus::Closed);
    // Notices are still suppressed on the closed incident.
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Acknowledgement),
        T0 + 5,
        &policy(),
    );
    assert_eq!(
        suppress_reason(&d).0,
        SuppressReason::TicketDone {
            status: TicketStatus::Closed
        }
    );
    // A repeat of the same state is not news: nothing is mailed to the closed ticket.
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0 + 8,
        &policy(),
    );
    assert!(d.mails().next().is_none());
    assert!(d.ended.is_empty());
    // A worse state is: GLPI would open a new ticket, so it becomes a new incident.
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0 + 10,
        &policy(),
    );
    assert_eq!(d.ended, vec![inc.id]);
    assert!(matches!(
        d.actions.first(),
        Some(Action::EndedQuietly {
            reason: EndReason::SupersededAfterTicketClosed,
            ..
        })
    ));
    let mail = single_mail(&d);
    assert_eq!(mail.kind, MailKind::Open);
    assert_ne!(mail.incident.id, inc.id);
    assert_ne!(mail.incident.tag, inc.tag);
    assert_eq!(mail.incident.ticket_id, None);
    assert_eq!(d.changed.len(), 2);
    assert_eq!(st.open_count(), 1);
}

#[test]
fn reopened_ticket_resumes_normal_mailing() {
    let (mut st, inc) = with_ticket(TicketStatus::Solved);
    apply_ticket_info(&mut st, &inc.tag, 123, None, Some(TicketStatus::Open));
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Warning, N::Acknowledgement),
        T0 + 5,
        &policy(),
    );
    assert_eq!(
        single_mail(&d).kind,
        MailKind::Update {
            reason: UpdateReason::Acknowledgement
        }
    );
}

#[test]
fn state_round_trips_through_json_with_stable_tags() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 1,
        ..policy()
    };
    let mut st = CorrelationState::default();
    let a = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
        &pol,
    );
    correlate(
        &mut st,
        &svc("web02", "cpu", State::Critical, N::Problem),
        T0 + 1,
        &pol,
    );
    let tag = single_mail(&a).incident.tag.clone();
    assert!(!tag.contains('#'));
    apply_ticket_info(&mut st, &tag, 5, None, Some(TicketStatus::Open));

    let json = serde_json::to_string(&st).expect("serialize");
    let mut back: CorrelationState = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, st);
    assert_eq!(
        back.incident_by_tag(&tag).and_then(|i| i.ticket_id),
        Some(5)
    );
    assert_eq!(back.pending_digest().len(), 1);
    let d = correlate(
        &mut back,
        &svc("web01", "cpu", State::Warning, N::Problem),
        T0 + 2,
        &pol,
    );
    assert_eq!(single_mail(&d).incident.tag, tag);
    assert_eq!(single_mail(&d).seq, 1);

    let incident_json = serde_json::to_string(&d.changed[0]).expect("incident");
    let incident: Incident = serde_json::from_str(&incident_json).expect("incident back");
    assert_eq!(incident.tag, tag);
}

#[test]
fn from_incidents_rebuilds_state() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 1,
        ..policy()
    };
    let mut st = CorrelationState::default();
    let mut store: HashMap<u64, Incident> = HashMap::new();
    for (i, h) in ["a", "b"].iter().enumerate() {
        let d = correlate(
            &mut st,
            &svc(h, "cpu", State::Critical, N::Problem),
            T0 + i as i64,
            &pol,
        );
        for inc in d.changed {
            store.insert(inc.id, inc);
        }
    }
    let a_tag = store[&1].tag.clone();
    let d = correlate(
        &mut st,
        &svc("a", "cpu", State::Ok, N::Recovery),
        T0 + 5,
        &pol,
    );
    for inc in d.changed {
        store.insert(inc.id, inc);
    }
    assert_eq!(store.len(), 3, "a, b and the digest");
    // The ended incident "a" and a stale duplicate of "b" must not come back.
    let mut stale = store[&2].clone();
    stale.id = 0;
    let rows = store.values().cloned().chain(std::iter::once(stale));
    let mut rebuilt = CorrelationState::from_incidents(rows, 1);
    assert_eq!(rebuilt.open_count(), 2, "b and its digest");
    assert_eq!(rebuilt.next_id(), 4);
    assert!(rebuilt.incident_by_tag(&a_tag).is_none());
    assert_eq!(
        rebuilt.incident_by_tag(&store[&2].tag).map(|i| i.id),
        Some(2)
    );
    // "b" was still waiting for its digest: it is queued again and sent once it waited 60 s.
    assert!(tick(&mut rebuilt, T0 + 60, &pol).actions.is_empty());
    assert_eq!(rebuilt.pending_digest().len(), 1);
    let d = tick(&mut rebuilt, T0 + 61, &pol);
    assert_eq!(d.digests().map(|g| g.count).collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        d.digests().next().map(|g| g.tag.clone()),
        Some(store[&3].tag.clone())
    );
    // A new problem gets a fresh id.
    let d = correlate(
        &mut rebuilt,
        &svc("d", "cpu", State::Critical, N::Problem),
        T0 + 70,
        &pol,
    );
    assert!(d.changed.iter().any(|i| i.id == 4));
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    #[derive(Debug, Clone)]
    enum Step {
        Alert {
            host: u8,
            service: u8,
            kind_host: bool,
            state: u8,
            nt: u8,
            dt: i16,
        },
        Ticket {
            pick: u8,
            status: u8,
        },
        Tick {
            dt: u16,
        },
        Reload,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0u8..3, 0u8..4, any::<bool>(), 0u8..7, 0u8..10, -30i16..90).prop_map(
                |(host, service, kind_host, state, nt, dt)| Step::Alert { host, service, kind_host, state, nt, dt }
            ),
            1 => (any::<u8>(), 0u8..4).prop_map(|(pick, status)| Step::Ticket { pick, status }),
            1 => (0u16..120).prop_map(|dt| Step::Tick { dt }),
            1 => Just(Step::Reload),
        ]
    }

    fn build_alert(host_n: u8, service: u8, kind_host: bool, state: u8, nt: u8) -> Alert {
        let host_name = if host_n == 0 {
            "Web01".to_string()
        } else {
            format!("h{host_n}")
        };
        let state = State::ALL[state as usize];
        let nt = N::ALL[nt as usize];
        if kind_host {
            host(&host_name, state, nt)
        } else {
            svc(&host_name, &format!("s{service}"), state, nt)
        }
    }

    proptest! {
        #[test]
        fn random_sequences_keep_invariants(steps in prop::collection::vec(step(), 1..80), max in 0u32..4) {
            let pol = CorrelationPolicy { max_new_incidents_per_minute: max, repeat_interval: Some(100), ..CorrelationPolicy::default() };
            let mut st = CorrelationState::default();
            let mut now = T0;
            let mut last_seq: HashMap<u64, u64> = HashMap::new();
            let mut open_by_key: HashMap<AlertKey, u64> = HashMap::new();
            let mut ended: HashSet<u64> = HashSet::new();
            let mut owners: HashMap<String, u64> = HashMap::new();
            let statuses = [TicketStatus::Unknown, TicketStatus::Open, TicketStatus::Solved, TicketStatus::Closed];
            for s in steps {
                let d = match s {
                    Step::Alert { host, service, kind_host, state, nt, dt } => {
                        now += i64::from(dt);
                        correlate(&mut st, &build_alert(host, service, kind_host, state, nt), now, &pol)
                    }
                    Step::Ticket { pick, status } => {
                        let tags: Vec<String> = {
                            let mut t: Vec<_> = st.open_incidents().map(|i| i.tag.clone()).collect();
                            t.sort();
                            t
                        };
                        if !tags.is_empty() {
                            let tag = &tags[pick as usize % tags.len()];
                            prop_assert!(apply_ticket_info(&mut st, tag, u64::from(pick), None, Some(statuses[status as usize])).is_some());
                        }
                        continue;
                    }
                    Step::Tick { dt } => { now += i64::from(dt); tick(&mut st, now, &pol) }
                    Step::Reload => {
                        let json = serde_json::to_string(&st).expect("serialize");
                        st = serde_json::from_str(&json).expect("deserialize");
                        continue;
                    }
                };
                for digest in d.digests() {
                    let id = d.changed.iter().find(|i| i.tag == digest.tag).map(|i| i.id).expect("digest snapshot");
                    prop_assert!(!last_seq.contains_key(&id), "digest sent twice");
                    prop_assert_eq!(digest.seq, 0);
                    last_seq.insert(id, 0);
                    owners.insert(digest.tag.clone(), id);
                }
                for mail in d.mails() {
                    let id = match &mail.via_digest {
                        Some(tag) => *owners.get(tag).expect("news for a digest that was sent"),
                        None => mail.incident.id,
                    };
                    owners.insert(mail.incident.tag.clone(), mail.incident.id);
                    prop_assert!(!ended.contains(&id), "mail for an ended incident");
                    if let Some(prev) = last_seq.get(&id) {
                        prop_assert!(mail.seq > *prev, "seq not increasing: {} after {}", mail.seq, prev);
                    } else {
                        prop_assert_eq!(mail.seq, 0);
                        prop_assert_eq!(mail.kind, MailKind::Open);
                    }
                    last_seq.insert(id, mail.seq);
                    prop_assert!(!mail.incident.tag.contains('#'));
                }
                for id in &d.ended {
                    prop_assert!(ended.insert(*id), "ended twice");
                    open_by_key.retain(|_, v| v != id);
                }
                for inc in d.changed.iter().filter(|i| i.is_open()) {
                    if let Some(other) = open_by_key.insert(inc.key.clone(), inc.id) {
                        prop_assert_eq!(other, inc.id, "two open incidents for one key");
                    }
                }
                // The state agrees with itself.
                let mut tags = HashSet::new();
                for inc in st.open_incidents() {
                    prop_assert!(tags.insert(inc.tag.clone()), "duplicate tag");
                    prop_assert_eq!(st.incident_by_tag(&inc.tag).map(|i| i.id), Some(inc.id));
                    prop_assert_eq!(st.incident(&inc.key).map(|i| i.id), Some(inc.id));
                    prop_assert!(inc.id < st.next_id());
                }
                prop_assert_eq!(st.open_count(), open_by_key.len());
            }
        }
    }
}

#[test]
fn decision_serializes_for_logging() {
    let mut st = CorrelationState::default();
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0,
        &policy(),
    );
    let json = serde_json::to_value(&d).expect("serialize");
    assert_eq!(json["actions"][0]["action"], "mail");
    assert_eq!(json["actions"][0]["kind"]["kind"], "open");
    let back: Decision = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, d);
    let d = correlate(
        &mut st,
        &svc("web01", "cpu", State::Critical, N::Problem),
        T0 + 1,
        &policy(),
    );
    let back: Decision =
        serde_json::from_str(&serde_json::to_string(&d).expect("ser")).expect("de");
    assert_eq!(back, d);
}
