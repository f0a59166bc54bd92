//! The transitions: `correlate` (one alert), `tick` (time passing) and
//! `apply_ticket_info` (GLPI feedback). Pure: all time comes in as `now`.

use super::decision::{
    Action, Decision, DigestEntry, DigestMail, IgnoreReason, IncidentMail, MailKind,
    SuppressReason, UpdateReason,
};
use super::incident::{thread_tag, EndReason, Ending, Incident, TicketStatus};
use super::policy::CorrelationPolicy;
use super::state::{minute_of, CorrelationState};
use crate::alert::{Alert, AlertKey, AlertKind, NotificationType, State};

/// What a notification means for correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Problem,
    Recovery,
    /// Acknowledgement, downtime, flapping or custom: news about an existing problem.
    Notice(UpdateReason),
}

impl Event {
    fn of(alert: &Alert) -> Event {
        use NotificationType as N;
        match alert.notification_type {
            // A "problem" reporting a good state is a recovery in disguise.
            N::Problem if alert.state.is_good() => Event::Recovery,
            N::Problem => Event::Problem,
            N::Recovery => Event::Recovery,
            N::Acknowledgement => Event::Notice(UpdateReason::Acknowledgement),
            N::FlappingStart | N::FlappingStop | N::FlappingDisabled => {
                Event::Notice(UpdateReason::Flapping)
            }
            N::DowntimeStart | N::DowntimeEnd | N::DowntimeCancelled => {
                Event::Notice(UpdateReason::Downtime)
            }
            N::Custom => Event::Notice(UpdateReason::Custom),
        }
    }
}

/// Mail or count: the outcome of a notification on an open incident.
enum Outcome {
    Mail(UpdateReason),
    Suppress(SuppressReason),
}

/// The correlation key of `alert`: source and service trimmed, host trimmed,
/// lower-cased and mapped through `policy.host_aliases`. Host alerts have an
/// empty service whatever the rule extracted.
pub fn alert_key(alert: &Alert, policy: &CorrelationPolicy) -> AlertKey {
    let service = match alert.kind {
        AlertKind::Host => String::new(),
        AlertKind::Service => alert.service.trim().to_string(),
    };
    AlertKey {
        source: alert.source.trim().to_string(),
        host: policy.canonical_host(&alert.host),
        service,
    }
}

/// One alert through the engine. First flushes the previous minute's digest if
/// that minute is over, then decides for the alert:
/// - problem, no open incident → open (or `Deferred` into the digest past the storm limit);
/// - same state again → suppress (or a `Reminder` update once `repeat_interval` elapsed);
/// - other state → `StateChange` update; acknowledgement/downtime/flapping/custom →
///   update unless the policy suppresses that kind;
/// - recovery (or a "problem" with a good state) → resolve; without incident → ignore;
/// - acknowledgement/downtime/flapping/custom without incident → ignore: there is no
///   ticket to attach it to and it reports no problem of its own;
/// - service problem while its host's incident is down/unreachable → folded into it;
/// - ticket solved/closed by people → only a worse state is mailed (`Reopen`), a
///   recovery ends the incident without mail, and after a closed ticket the next
///   problem ends it and opens a new incident.
///
/// `state` is changed in place; a pipeline whose transaction fails afterwards
/// must rebuild it (`CorrelationState::from_incidents`) or have worked on a clone.
pub fn correlate(
    state: &mut CorrelationState,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
) -> Decision {
    let mut decision = Decision::default();
    flush_finished_window(state, now, &mut decision);
    let key = alert_key(alert, policy);
    let event = Event::of(alert);
    if state.open.contains_key(&key) {
        on_open_incident(state, key, alert, event, now, policy, &mut decision);
    } else if let Some(host_key) = folding_host(state, &key, alert.kind, event) {
        fold_into_host(state, &host_key, &key.service, alert, now, &mut decision);
    } else {
        on_no_incident(state, key, alert, event, now, policy, &mut decision);
    }
    decision
}

/// Time passing: sends the digest of a minute that is over.
pub fn tick(state: &mut CorrelationState, now: i64, _policy: &CorrelationPolicy) -> Decision {
    let mut decision = Decision::default();
    flush_finished_window(state, now, &mut decision);
    decision
}

/// Records what GLPI told us about the ticket of the open incident tagged `tag`
/// (surrounding whitespace ignored). `None` fields keep what was known. Returns
/// the incident id, or `None` when no open incident has that tag; the caller
/// then persists `state.incident_by_tag(tag)`.
pub fn apply_ticket_info(
    state: &mut CorrelationState,
    tag: &str,
    ticket_id: u64,
    glpi_message_id: Option<String>,
    status: Option<TicketStatus>,
) -> Option<u64> {
    let key = state.by_tag.get(tag.trim())?.clone();
    let incident = state.open.get_mut(&key)?;
    incident.record_ticket(ticket_id, glpi_message_id, status);
    Some(incident.id)
}

fn on_open_incident(
    state: &mut CorrelationState,
    key: AlertKey,
    alert: &Alert,
    event: Event,
    now: i64,
    policy: &CorrelationPolicy,
    decision: &mut Decision,
) {
    // Only a worse state makes a closed ticket's problem news: repeats stay quiet until
    // the recovery, and the next problem after that opens a new incident anyway.
    let worse_after_close = state.open.get(&key).is_some_and(|i| {
        i.ticket_status == TicketStatus::Closed
            && alert.state.severity() > i.state.severity()
            && policy.reopen_on_worse
    });
    match event {
        Event::Problem if worse_after_close => {
            // GLPI would open a new ticket anyway; make it a new incident with its own thread.
            end_quietly(
                state,
                &key,
                now,
                EndReason::SupersededAfterTicketClosed,
                decision,
            );
            open_incident(state, key, alert, now, policy, decision);
        }
        Event::Recovery => resolve(state, &key, alert, now, decision),
        Event::Problem | Event::Notice(_) => {
            let Some(incident) = state.open.get_mut(&key) else {
                return;
            };
            incident.observe(alert, now);
            let outcome = match event {
                Event::Problem => on_problem(incident, alert.state, now, policy),
                Event::Notice(reason) => on_notice(incident, reason, policy),
                Event::Recovery => return,
            };
            match outcome {
                Outcome::Mail(UpdateReason::Reopen) => {
                    // GLPI reopens a solved ticket on any follow-up mail.
                    incident.ticket_status = TicketStatus::Open;
                    emit_update(incident, UpdateReason::Reopen, alert, now, decision);
                }
                Outcome::Mail(reason) => emit_update(incident, reason, alert, now, decision),
                Outcome::Suppress(why) => suppress(incident, why, decision),
            }
            decision.record(incident);
        }
    }
}

fn on_problem(
    incident: &mut Incident,
    state: State,
    now: i64,
    policy: &CorrelationPolicy,
) -> Outcome {
    let done = incident.ticket_status;
    if state == incident.state {
        if done.is_done() {
            return Outcome::Suppress(SuppressReason::TicketDone { status: done });
        }
        return if reminder_due(incident, now, policy) {
            Outcome::Mail(UpdateReason::Reminder)
        } else {
            Outcome::Suppress(SuppressReason::Repeat)
        };
    }
    let worse = state.severity() > incident.state.severity();
    incident.set_state(state);
    if !done.is_done() {
        Outcome::Mail(UpdateReason::StateChange)
    } else if worse && policy.reopen_on_worse {
        Outcome::Mail(UpdateReason::Reopen)
    } else {
        Outcome::Suppress(SuppressReason::TicketDone { status: done })
    }
}

fn reminder_due(incident: &Incident, now: i64, policy: &CorrelationPolicy) -> bool {
    let Some(interval) = policy.repeat_interval.filter(|&i| i > 0) else {
        return false;
    };
    let since = incident.last_mail_at.unwrap_or(incident.first_seen);
    let elapsed = now.saturating_sub(since);
    elapsed >= 0 && elapsed as u64 >= interval
}

fn on_notice(incident: &Incident, reason: UpdateReason, policy: &CorrelationPolicy) -> Outcome {
    if incident.ticket_status.is_done() {
        return Outcome::Suppress(SuppressReason::TicketDone {
            status: incident.ticket_status,
        });
    }
    let suppressed_by_policy = match reason {
        UpdateReason::Acknowledgement if policy.suppress_acknowledgement => {
            Some(SuppressReason::PolicyAcknowledgement)
        }
        UpdateReason::Downtime if policy.suppress_downtime => Some(SuppressReason::PolicyDowntime),
        UpdateReason::Flapping if policy.suppress_flapping => Some(SuppressReason::PolicyFlapping),
        _ => None,
    };
    match suppressed_by_policy {
        Some(why) => Outcome::Suppress(why),
        None => Outcome::Mail(reason),
    }
}

fn suppress(incident: &mut Incident, why: SuppressReason, decision: &mut Decision) {
    incident.suppressed = incident.suppressed.saturating_add(1);
    decision.push(Action::Suppress {
        incident_id: incident.id,
        tag: incident.tag.clone(),
        count: incident.suppressed,
        why,
    });
}

/// Mails an update, or the open mail standing in for it when the storm guard
/// has not announced the incident yet.
fn emit_update(
    incident: &mut Incident,
    reason: UpdateReason,
    alert: &Alert,
    now: i64,
    decision: &mut Decision,
) {
    let kind = MailKind::Update { reason };
    if !incident.announced {
        emit_late_open(incident, kind, alert, now, decision);
        return;
    }
    incident.updates_sent = incident.updates_sent.saturating_add(1);
    emit_mail(incident, kind, alert, now, None, decision);
}

fn emit_late_open(
    incident: &mut Incident,
    event: MailKind,
    alert: &Alert,
    now: i64,
    decision: &mut Decision,
) {
    incident.announced = true;
    emit_mail(incident, MailKind::Open, alert, now, Some(event), decision);
}

fn emit_mail(
    incident: &mut Incident,
    kind: MailKind,
    alert: &Alert,
    now: i64,
    deferred_event: Option<MailKind>,
    decision: &mut Decision,
) {
    let seq = incident.take_seq(now);
    decision.push(Action::Mail(Box::new(IncidentMail {
        kind,
        seq,
        incident: incident.clone(),
        alert: alert.clone(),
        folded: incident.folded.clone(),
        deferred_event,
    })));
}

fn resolve(
    state: &mut CorrelationState,
    key: &AlertKey,
    alert: &Alert,
    now: i64,
    decision: &mut Decision,
) {
    let Some(mut incident) = state.remove(key) else {
        return;
    };
    let problem_alert = incident.last_alert.clone();
    incident.observe(alert, now);
    incident.set_state(good_state(alert, incident.kind));
    if incident.ticket_status.is_done() {
        finish(incident, now, EndReason::RecoveredTicketDone, decision);
        return;
    }
    if !incident.announced {
        // Its ticket must exist before it can be resolved: open it with the problem it had.
        emit_late_open(
            &mut incident,
            MailKind::Resolve,
            &problem_alert,
            now,
            decision,
        );
    }
    incident.ended = Some(Ending {
        at: now,
        reason: EndReason::Recovered,
    });
    emit_mail(&mut incident, MailKind::Resolve, alert, now, None, decision);
    decision.record(&incident);
    decision.ended.push(incident.id);
}

/// The state an incident ends in: the alert's, unless the tool sent a recovery with a bad state.
fn good_state(alert: &Alert, kind: AlertKind) -> State {
    match (alert.state.is_good(), kind) {
        (true, _) => alert.state,
        (false, AlertKind::Host) => State::Up,
        (false, AlertKind::Service) => State::Ok,
    }
}

fn end_quietly(
    state: &mut CorrelationState,
    key: &AlertKey,
    now: i64,
    reason: EndReason,
    decision: &mut Decision,
) {
    if let Some(incident) = state.remove(key) {
        finish(incident, now, reason, decision);
    }
}

fn finish(mut incident: Incident, now: i64, reason: EndReason, decision: &mut Decision) {
    incident.ended = Some(Ending { at: now, reason });
    decision.push(Action::EndedQuietly {
        incident_id: incident.id,
        tag: incident.tag.clone(),
        reason,
    });
    decision.record(&incident);
    decision.ended.push(incident.id);
}

fn on_no_incident(
    state: &mut CorrelationState,
    key: AlertKey,
    alert: &Alert,
    event: Event,
    now: i64,
    policy: &CorrelationPolicy,
    decision: &mut Decision,
) {
    match event {
        Event::Problem => open_incident(state, key, alert, now, policy, decision),
        Event::Recovery => decision.push(Action::Ignore {
            why: IgnoreReason::RecoveryWithoutIncident,
        }),
        Event::Notice(_) => decision.push(Action::Ignore {
            why: IgnoreReason::NoIncidentForNotice {
                notification_type: alert.notification_type,
            },
        }),
    }
}

fn open_incident(
    state: &mut CorrelationState,
    key: AlertKey,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
    decision: &mut Decision,
) {
    let id = state.allocate_id();
    let tag = thread_tag(&key, id, now, |t| state.tag_taken(t));
    let mut incident = Incident::new(id, tag, key, alert, now);
    state.storm.count = state.storm.count.saturating_add(1);
    if state.storm.count <= policy.max_new_incidents_per_minute {
        incident.announced = true;
        emit_mail(&mut incident, MailKind::Open, alert, now, None, decision);
    } else {
        incident.in_pending_digest = true;
        state.storm.pending.push(DigestEntry {
            incident_id: id,
            tag: incident.tag.clone(),
            at: now,
            alert: alert.clone(),
        });
        decision.push(Action::Deferred {
            incident_id: id,
            tag: incident.tag.clone(),
            pending_in_digest: state.storm.pending.len(),
        });
    }
    decision.record(&incident);
    state.insert(incident);
}

/// The open host incident a service notification folds into: only problems, and
/// recoveries of services already folded, while the host is down.
fn folding_host(
    state: &CorrelationState,
    key: &AlertKey,
    kind: AlertKind,
    event: Event,
) -> Option<AlertKey> {
    if kind != AlertKind::Service || key.service.is_empty() {
        return None;
    }
    let host_key = AlertKey {
        source: key.source.clone(),
        host: key.host.clone(),
        service: String::new(),
    };
    let host = state.open.get(&host_key).filter(|h| h.folds_services())?;
    let folds = match event {
        Event::Problem => true,
        Event::Recovery => host.has_folded(&key.service),
        Event::Notice(_) => false,
    };
    folds.then_some(host_key)
}

fn fold_into_host(
    state: &mut CorrelationState,
    host_key: &AlertKey,
    service: &str,
    alert: &Alert,
    now: i64,
    decision: &mut Decision,
) {
    let Some(host) = state.open.get_mut(host_key) else {
        return;
    };
    host.fold_service(service, alert, now);
    decision.push(Action::Folded {
        host_incident_id: host.id,
        host_tag: host.tag.clone(),
        service: service.to_string(),
        state: alert.state,
        folded_notifications: host.folded_notifications,
    });
    decision.record(host);
}

/// Closes the storm window once its minute is over: one digest for its pending
/// alerts, then a fresh count. A clock going backwards keeps the current window.
fn flush_finished_window(state: &mut CorrelationState, now: i64, decision: &mut Decision) {
    let minute = minute_of(now);
    if minute <= state.storm.window_start {
        return;
    }
    let window_start = state.storm.window_start;
    let entries = std::mem::take(&mut state.storm.pending);
    state.storm.window_start = minute;
    state.storm.count = 0;
    if entries.is_empty() {
        return;
    }
    for entry in &entries {
        if let Some(key) = state.by_tag.get(&entry.tag).cloned() {
            if let Some(incident) = state.open.get_mut(&key) {
                incident.in_pending_digest = false;
                decision.digested.push(incident.id);
            }
        }
    }
    decision.push(Action::Digest(DigestMail {
        window_start,
        count: entries.len(),
        entries,
    }));
}
