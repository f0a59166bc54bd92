//! The transitions: `correlate` (one alert), `tick` (time passing) and
//! `apply_ticket_info` (GLPI feedback). Pure: all time comes in as `now`.

use super::decision::{
    Action, Decision, DigestEntry, DigestMail, IgnoreReason, IncidentMail, MailKind,
    SuppressReason, UpdateReason,
};
use super::incident::{thread_tag, EndReason, Ending, Incident, TicketStatus};
use super::lookup::{InMemory, IncidentLookup, Work};
use super::policy::CorrelationPolicy;
use super::state::{CorrelationState, STORM_WINDOW_SECS};
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
/// must rebuild it (`CorrelationState::resume`, or `drop_cache` when its counters are
/// right) or have worked on a clone. Every open incident is in memory: nothing is
/// evicted (see [`correlate_with`] for a store-backed cache).
pub fn correlate(
    state: &mut CorrelationState,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
) -> Decision {
    let Ok(decision) = correlate_uncached(state, &mut InMemory, alert, now, policy);
    decision
}

/// [`correlate`] over a cache of open incidents backed by `lookup`: an incident not in
/// memory is read by one indexed lookup when the alert needs it, and after the step the
/// least recently used ones beyond `policy.incident_cache` are evicted. The caller
/// persists the decision before the next step (a later miss reads what it saved). On
/// a lookup error the decision is lost and the state must be rebuilt as after a
/// failed transaction.
pub fn correlate_with<L: IncidentLookup>(
    state: &mut CorrelationState,
    lookup: &mut L,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
) -> Result<Decision, L::Error> {
    let decision = correlate_uncached(state, lookup, alert, now, policy)?;
    state.trim(policy.incident_cache);
    Ok(decision)
}

/// One step without eviction afterwards (the caller may still read the step's incidents).
pub(crate) fn correlate_uncached<L: IncidentLookup>(
    state: &mut CorrelationState,
    lookup: &mut L,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
) -> Result<Decision, L::Error> {
    let mut work = Work::new(state, lookup);
    let decision = step(&mut work, alert, now, policy);
    work.finish().map(|()| decision)
}

pub(crate) fn step<L: IncidentLookup>(
    state: &mut Work<'_, L>,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
) -> Decision {
    let mut decision = Decision::default();
    flush_pending(state, now, false, &mut decision);
    let key = alert_key(alert, policy);
    let event = Event::of(alert);
    if state.has_key(&key) {
        on_open_incident(state, key, alert, event, now, policy, &mut decision);
    } else if let Some(host_key) = folding_host(state, &key, alert.kind, event) {
        fold_into_host(state, &host_key, &key.service, alert, now, &mut decision);
    } else {
        on_no_incident(state, key, alert, event, now, policy, &mut decision);
    }
    decision
}

/// Time passing: sends the storm digest's alerts once they waited a full window.
pub fn tick(state: &mut CorrelationState, now: i64, _policy: &CorrelationPolicy) -> Decision {
    let Ok(decision) = tick_uncached(state, &mut InMemory, now);
    decision
}

/// [`tick`] over a store-backed cache (see [`correlate_with`]).
pub fn tick_with<L: IncidentLookup>(
    state: &mut CorrelationState,
    lookup: &mut L,
    now: i64,
    policy: &CorrelationPolicy,
) -> Result<Decision, L::Error> {
    let decision = tick_uncached(state, lookup, now)?;
    state.trim(policy.incident_cache);
    Ok(decision)
}

fn tick_uncached<L: IncidentLookup>(
    state: &mut CorrelationState,
    lookup: &mut L,
    now: i64,
) -> Result<Decision, L::Error> {
    let mut work = Work::new(state, lookup);
    let mut decision = Decision::default();
    flush_pending(&mut work, now, false, &mut decision);
    work.finish().map(|()| decision)
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
    let Ok(incident) = apply_ticket_info_with(
        state,
        &mut InMemory,
        tag,
        ticket_id,
        glpi_message_id,
        status,
    );
    incident.map(|i| i.id)
}

/// [`apply_ticket_info`] over a store-backed cache: the incident is read on a miss.
/// Returns its new snapshot, for the caller to persist.
pub fn apply_ticket_info_with<L: IncidentLookup>(
    state: &mut CorrelationState,
    lookup: &mut L,
    tag: &str,
    ticket_id: u64,
    glpi_message_id: Option<String>,
    status: Option<TicketStatus>,
) -> Result<Option<Incident>, L::Error> {
    let mut work = Work::new(state, lookup);
    let key = work.key_of_tag(tag);
    work.finish()?;
    let Some(incident) = key.and_then(|k| state.open.get_mut(&k)) else {
        return Ok(None);
    };
    incident.record_ticket(ticket_id, glpi_message_id, status);
    Ok(Some(incident.clone()))
}

fn on_open_incident<L: IncidentLookup>(
    state: &mut Work<'_, L>,
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
            let digested = !incident.announced && incident.digest_tag.is_some();
            match outcome {
                Outcome::Mail(reason) if digested => {
                    // News for the digest's ticket; its alert is listed there first.
                    let member = incident.clone();
                    decision.record(&member);
                    if member.in_pending_digest {
                        flush_pending(state, now, true, decision);
                    }
                    let member = state.open.get(&key).cloned().unwrap_or(member);
                    let kind = MailKind::Update { reason };
                    if !emit_via_digest(state, &member, kind, alert, now, decision) {
                        if let Some(incident) = state.open.get_mut(&key) {
                            emit_update(incident, reason, alert, now, decision);
                            decision.record(incident);
                        }
                    }
                    return;
                }
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
        via_digest: None,
    })));
}

fn resolve<L: IncidentLookup>(
    state: &mut Work<'_, L>,
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
    if let (false, Some(digest_tag)) = (incident.announced, incident.digest_tag.clone()) {
        if incident.in_pending_digest {
            // The digest lists its problem before its recovery is news for the digest's ticket.
            state.insert(incident.clone());
            flush_pending(state, now, true, decision);
            incident = state.remove(key).unwrap_or(incident);
            incident.in_pending_digest = false;
        }
        incident.ended = Some(Ending {
            at: now,
            reason: EndReason::Recovered,
        });
        if emit_via_digest(state, &incident, MailKind::Resolve, alert, now, decision) {
            decision.record(&incident);
            decision.ended.push(incident.id);
            member_recovered(state, &digest_tag, now, decision);
            return;
        }
        incident.ended = None;
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

fn end_quietly<L: IncidentLookup>(
    state: &mut Work<'_, L>,
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

fn on_no_incident<L: IncidentLookup>(
    state: &mut Work<'_, L>,
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

fn open_incident<L: IncidentLookup>(
    state: &mut Work<'_, L>,
    key: AlertKey,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
    decision: &mut Decision,
) {
    let id = state.allocate_id();
    let tag = thread_tag(&key, id, now, |t| state.tag_taken(t));
    let mut incident = Incident::new(id, tag, key, alert, now);
    let recent = &mut state.storm.recent;
    while recent
        .front()
        .is_some_and(|&at| at <= now - STORM_WINDOW_SECS || at > now)
    {
        recent.pop_front();
    }
    if recent.len() < policy.max_new_incidents_per_minute as usize {
        recent.push_back(now);
        incident.announced = true;
        emit_mail(&mut incident, MailKind::Open, alert, now, None, decision);
    } else {
        let digest_tag = storm_digest(state, alert, now, policy, decision);
        incident.in_pending_digest = true;
        incident.digest_tag = Some(digest_tag);
        if !state.storm.has_pending() {
            state.storm.window_start = now;
        }
        state.storm.pending.push(DigestEntry {
            incident_id: id,
            tag: incident.tag.clone(),
            at: now,
            alert: alert.clone(),
        });
        decision.push(Action::Deferred {
            incident_id: id,
            tag: incident.tag.clone(),
            pending_in_digest: state.storm.pending_count(),
        });
    }
    decision.record(&incident);
    state.insert(incident);
}

/// The digest incident a deferred incident joins: the current storm's while it is open
/// and not quiet for `storm_split_after_secs`, else a new one. Counts the new member.
fn storm_digest<L: IncidentLookup>(
    state: &mut Work<'_, L>,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
    decision: &mut Decision,
) -> String {
    let quiet_limit = i64::try_from(policy.storm_split_after_secs).unwrap_or(i64::MAX);
    let current = state
        .storm
        .digest_tag
        .clone()
        .and_then(|t| state.key_of_tag(&t))
        .filter(|k| {
            state
                .open
                .get(k)
                .is_some_and(|d| now.saturating_sub(d.last_seen) < quiet_limit)
        });
    let key = match current {
        Some(key) => key,
        None => {
            let id = state.allocate_id();
            let key = AlertKey {
                source: DIGEST_SOURCE.to_string(),
                host: "storm".to_string(),
                service: format!("digest {id}"),
            };
            let tag = thread_tag(&key, id, now, |t| state.tag_taken(t));
            let mut digest = Incident::new(
                id,
                tag,
                key.clone(),
                &digest_alert(alert.state, 0, now),
                now,
            );
            digest.is_digest = true;
            digest.notifications = 0;
            state.storm.digest_tag = Some(digest.tag.clone());
            state.insert(digest);
            key
        }
    };
    let Some(digest) = state.open.get_mut(&key) else {
        return String::new();
    };
    digest.digest_members_open = digest.digest_members_open.saturating_add(1);
    digest.notifications = digest.notifications.saturating_add(1);
    digest.last_seen = digest.last_seen.max(now);
    if alert.state.severity() > digest.worst_state.severity() {
        digest.set_state(alert.state);
    }
    digest.last_alert = digest_alert(digest.worst_state, digest.digest_members_open, now);
    decision.record(digest);
    digest.tag.clone()
}

/// Source of a storm digest's own alert (never a monitoring tool's).
pub const DIGEST_SOURCE: &str = "alertgate";

/// The alert a digest incident reports as its own.
fn digest_alert(state: State, open: u64, now: i64) -> Alert {
    let output = if state.is_good() {
        "Every incident of this storm has recovered".to_string()
    } else {
        format!("Storm: {open} incidents not recovered yet")
    };
    Alert {
        source: DIGEST_SOURCE.into(),
        kind: AlertKind::Service,
        host: "storm".into(),
        host_alias: None,
        service: "digest".into(),
        state,
        notification_type: if state.is_good() {
            NotificationType::Recovery
        } else {
            NotificationType::Problem
        },
        output,
        long_output: None,
        author: None,
        comment: None,
        address: None,
        event_time: crate::compose::format_time(now).into(),
        vendor_id: None,
        url: None,
        rule: "storm-guard".into(),
        needs_sanitizing: false,
        inherits: Vec::new(),
    }
}

/// News about an incident held by a digest, for the digest's ticket: numbered in the
/// digest's thread. Returns false when its digest is gone (the caller mails it itself).
fn emit_via_digest<L: IncidentLookup>(
    state: &mut Work<'_, L>,
    member: &Incident,
    kind: MailKind,
    alert: &Alert,
    now: i64,
    decision: &mut Decision,
) -> bool {
    let Some(digest_tag) = member.digest_tag.clone() else {
        return false;
    };
    let Some(key) = state.key_of_tag(&digest_tag) else {
        return false;
    };
    let Some(digest) = state.open.get_mut(&key) else {
        return false;
    };
    let seq = digest.take_seq(now);
    digest.last_seen = digest.last_seen.max(now);
    decision.record(digest);
    decision.push(Action::Mail(Box::new(IncidentMail {
        kind,
        seq,
        incident: member.clone(),
        alert: alert.clone(),
        folded: member.folded.clone(),
        deferred_event: None,
        via_digest: Some(digest_tag),
    })));
    true
}

/// A member of `digest_tag` recovered: when it was the last one, the digest recovers too
/// (its final mail, and with the API its solution).
fn member_recovered<L: IncidentLookup>(
    state: &mut Work<'_, L>,
    digest_tag: &str,
    now: i64,
    decision: &mut Decision,
) {
    let Some(key) = state.key_of_tag(digest_tag) else {
        return;
    };
    let Some(digest) = state.open.get_mut(&key) else {
        return;
    };
    digest.digest_members_open = digest.digest_members_open.saturating_sub(1);
    digest.last_alert = digest_alert(digest.state, digest.digest_members_open, now);
    if digest.digest_members_open > 0 {
        decision.record(digest);
        return;
    }
    let Some(mut digest) = state.remove(&key) else {
        return;
    };
    if state.storm.digest_tag.as_deref() == Some(digest_tag) {
        state.storm.digest_tag = None;
    }
    let ok = digest_alert(State::Ok, 0, now);
    digest.observe(&ok, now);
    digest.set_state(State::Ok);
    digest.ended = Some(Ending {
        at: now,
        reason: EndReason::Recovered,
    });
    emit_mail(&mut digest, MailKind::Resolve, &ok, now, None, decision);
    decision.record(&digest);
    decision.ended.push(digest.id);
}

/// The open host incident a service notification folds into: only problems, and
/// recoveries of services already folded, while the host is down.
fn folding_host<L: IncidentLookup>(
    state: &mut Work<'_, L>,
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
    if !state.has_key(&host_key) {
        return None;
    }
    let host = state.open.get(&host_key).filter(|h| h.folds_services())?;
    let folds = match event {
        Event::Problem => true,
        Event::Recovery => host.has_folded(&key.service),
        Event::Notice(_) => false,
    };
    folds.then_some(host_key)
}

fn fold_into_host<L: IncidentLookup>(
    state: &mut Work<'_, L>,
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

/// Sends the storm digest's pending alerts once the oldest has waited a full window
/// (or at once with `force`): the digest's open mail the first time, later as news for
/// its ticket. A clock going backwards keeps them waiting.
fn flush_pending<L: IncidentLookup>(
    state: &mut Work<'_, L>,
    now: i64,
    force: bool,
    decision: &mut Decision,
) {
    if !state.storm.has_pending() || !(force || now >= state.storm.window_start + STORM_WINDOW_SECS)
    {
        return;
    }
    let window_start = state.storm.window_start;
    let entries = state.take_pending();
    state.storm.window_start = 0;
    let mut members = Vec::new();
    for entry in &entries {
        if let Some(key) = state.key_of_tag(&entry.tag) {
            if let Some(incident) = state.open.get_mut(&key) {
                incident.in_pending_digest = false;
                decision.digested.push(incident.id);
                members.push(incident.clone());
            }
        }
    }
    // Entries of one flush all belong to one digest (a new digest starts with an empty list).
    let first_member = entries.first().and_then(|e| state.key_of_tag(&e.tag));
    let digest_key = first_member
        .and_then(|k| state.open.get(&k))
        .and_then(|i| i.digest_tag.clone())
        .or_else(|| state.storm.digest_tag.clone())
        .and_then(|t| state.key_of_tag(&t));
    let Some(digest) = digest_key.and_then(|k| state.open.get_mut(&k)) else {
        return;
    };
    if !digest.announced {
        digest.announced = true;
        let seq = digest.take_seq(now);
        decision.record(digest);
        decision.push(Action::Digest(DigestMail {
            tag: digest.tag.clone(),
            seq,
            window_start,
            count: entries.len(),
            entries,
        }));
        return;
    }
    for (entry, member) in entries.iter().zip(members.iter()) {
        emit_via_digest(state, member, MailKind::Open, &entry.alert, now, decision);
    }
}
