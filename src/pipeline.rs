//! The pipeline worker: each spooled message goes through rules → correlate → compose →
//! outbound queue, and everything that step decided is committed in one transaction with
//! the message marked done, so a crash either redoes a step whole or not at all.

use crate::alert::Alert;
use crate::compose::{self, ComposeConfig, ComposedMail, MailEvent};
use crate::config::{RecipientPattern, UnmatchedPolicy};
use crate::correlate::{
    self, Action, CorrelationPolicy, CorrelationState, Decision, Incident, IncidentMail,
    TicketStatus,
};
use crate::rules::{ParseContext, ParseError, RuleSet};
use crate::store::outbound::{self, NewOutbound, OutboundState};
use crate::store::spool::{self, SpoolRow, SpoolState};
use crate::store::{actions, incidents, StoreError};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;

/// Messages processed per transaction: one fsync for many steps.
const BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What the pipeline needs besides the store.
pub struct PipelineSettings {
    pub rules: Arc<RuleSet>,
    pub compose: ComposeConfig,
    /// Reads GLPI's notifications (tag and solved/closed words from the config).
    pub notifications: crate::feedback::NotificationReader,
    pub correlation: CorrelationPolicy,
    pub unmatched: UnmatchedPolicy,
    /// Hold an incident's updates until its GLPI ticket id is known.
    pub hold_until_ticket_known: bool,
    /// How long updates wait for the ticket id before going out unthreaded.
    pub ticket_timeout_secs: i64,
    /// Solve the ticket through the API on recovery instead of mailing the recovery.
    pub solve_on_recovery: bool,
    /// Recipients whose mail is GLPI's notifications.
    pub feedback_addresses: Vec<RecipientPattern>,
}

/// A ticket id learned for one of our incidents (from a notification or the API).
#[derive(Debug, Clone, PartialEq)]
pub struct TicketInfo {
    pub tag: String,
    pub ticket_id: u64,
    pub glpi_message_id: Option<String>,
    pub status: Option<TicketStatus>,
}

pub struct Pipeline {
    conn: Connection,
    settings: PipelineSettings,
    state: CorrelationState,
}

/// What one processing step produced, for the spool row's note and the logs.
struct StepResult {
    state: SpoolState,
    note: String,
}

/// Rules may ask which host an earlier mail (cited by In-Reply-To) was about.
struct StoreContext<'a> {
    conn: &'a Connection,
}

impl ParseContext for StoreContext<'_> {
    fn host_for_message_id(&self, message_id: &str) -> Option<String> {
        incidents::host_for_message(self.conn, message_id)
            .ok()
            .flatten()
    }
}

impl Pipeline {
    pub fn open(path: &Path, settings: PipelineSettings) -> Result<Pipeline, PipelineError> {
        let conn = crate::store::open_with(path, crate::store::Durability::Derived)?;
        let state = incidents::load_state(&conn)?;
        Ok(Pipeline {
            conn,
            settings,
            state,
        })
    }

    pub fn state(&self) -> &CorrelationState {
        &self.state
    }

    /// Process the oldest waiting messages; returns how many were processed.
    pub fn run_batch(&mut self, now: i64) -> Result<usize, PipelineError> {
        let rows = spool::pending(&self.conn, BATCH)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let result = self.in_transaction(|p, conn| {
            for row in &rows {
                let step = p.process(conn, row, now)?;
                spool::set_state(conn, row.id, step.state, Some(&step.note), now)?;
                tracing::info!(spool_id = row.id, state = step.state.as_str(), outcome = %step.note, "processed");
            }
            Ok(())
        });
        result.map(|()| rows.len())
    }

    /// Let time-driven decisions (storm digests) happen.
    pub fn tick(&mut self, now: i64) -> Result<(), PipelineError> {
        self.in_transaction(|p, conn| {
            let decision = correlate::tick(p.state, now, &p.settings.correlation);
            p.apply(conn, &decision, None, now)?;
            let expired = outbound::release_expired_holds(conn, now)?;
            if !expired.is_empty() {
                let total = incidents::get_kv(conn, "unthreaded_after_timeout")?
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    + expired.len() as u64;
                incidents::set_kv(conn, "unthreaded_after_timeout", &total.to_string())?;
                for tag in &expired {
                    tracing::warn!(tag = %tag, unthreaded_total = total, "no GLPI ticket id in time: held updates sent unthreaded");
                }
            }
            Ok(())
        })
    }

    /// Record ticket ids learned from GLPI's API, releasing the mails that waited for them.
    pub fn learn_tickets(&mut self, infos: &[TicketInfo], now: i64) -> Result<(), PipelineError> {
        if infos.is_empty() {
            return Ok(());
        }
        self.in_transaction(|p, conn| {
            for info in infos {
                let note = p.learn_ticket(conn, info, now)?;
                tracing::info!(tag = %info.tag, ticket = info.ticket_id, outcome = %note, "ticket learned from the API");
            }
            Ok(())
        })
    }

    /// Run `f` in one transaction; if it fails, the in-memory state is rebuilt from what
    /// was committed, so memory never runs ahead of the store.
    fn in_transaction(
        &mut self,
        f: impl FnOnce(&mut PipelineCore<'_>, &Connection) -> Result<(), PipelineError>,
    ) -> Result<(), PipelineError> {
        // IMMEDIATE: take the write lock up front. A deferred transaction that reads first
        // fails with SQLITE_BUSY when the spool writer commits in between.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut core = PipelineCore {
            settings: &self.settings,
            state: &mut self.state,
        };
        let outcome = f(&mut core, &tx).and_then(|()| {
            incidents::set_kv(&tx, "next_incident_id", &core.state.next_id().to_string())?;
            tx.commit().map_err(PipelineError::from)
        });
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "pipeline transaction failed; reloading state from the store");
            self.state = incidents::load_state(&self.conn)?;
        }
        outcome
    }
}

/// The parts of the pipeline a transaction works with.
struct PipelineCore<'a> {
    settings: &'a PipelineSettings,
    state: &'a mut CorrelationState,
}

impl PipelineCore<'_> {
    fn process(
        &mut self,
        conn: &Connection,
        row: &SpoolRow,
        now: i64,
    ) -> Result<StepResult, PipelineError> {
        let raw = row.raw.as_deref().unwrap_or_default();
        if let Some(original) = duplicate_of(conn, row)? {
            return Ok(StepResult {
                state: SpoolState::Processed,
                note: format!("duplicate of spool id {original}, ignored"),
            });
        }
        if self.is_feedback(row) {
            return self.feedback(conn, raw, now);
        }
        let ctx = StoreContext { conn };
        match self.settings.rules.parse(raw, &ctx) {
            Ok(alerts) => self.process_alerts(conn, row, raw, &alerts, now),
            Err(e) => self.unmatched(conn, row, raw, &e, now),
        }
    }

    fn process_alerts(
        &mut self,
        conn: &Connection,
        row: &SpoolRow,
        raw: &[u8],
        alerts: &[Alert],
        now: i64,
    ) -> Result<StepResult, PipelineError> {
        let mut notes = Vec::new();
        for alert in alerts {
            if let Some(mid) = &row.message_id {
                if !alert.host.is_empty() {
                    incidents::remember_message_host(conn, mid, &alert.host)?;
                }
            }
            let decision = correlate::correlate(self.state, alert, now, &self.settings.correlation);
            notes.push(self.apply(conn, &decision, Some((row.id, raw)), now)?);
        }
        Ok(StepResult {
            state: SpoolState::Processed,
            note: notes.join("; "),
        })
    }

    /// Persist what correlation changed and enqueue its mails; returns a summary.
    fn apply(
        &mut self,
        conn: &Connection,
        decision: &Decision,
        origin: Option<(i64, &[u8])>,
        now: i64,
    ) -> Result<String, PipelineError> {
        for incident in &decision.changed {
            incidents::save(conn, incident, now)?;
        }
        for id in &decision.ended {
            incidents::mark_ended(conn, *id, now)?;
        }
        for id in &decision.digested {
            incidents::mark_digested(conn, *id, now)?;
        }
        let mut summary = Vec::new();
        for action in &decision.actions {
            summary.push(self.act(conn, action, origin, now)?);
        }
        Ok(summary.join(", "))
    }

    fn act(
        &mut self,
        conn: &Connection,
        action: &Action,
        origin: Option<(i64, &[u8])>,
        now: i64,
    ) -> Result<String, PipelineError> {
        match action {
            Action::Mail(mail) => self.mail_action(conn, mail, origin, now),
            Action::Digest(digest) => {
                let alerts: Vec<Alert> = digest.entries.iter().map(|e| e.alert.clone()).collect();
                let tag = format!("DIGEST-{}", digest.window_start);
                match compose::compose_digest(&self.settings.compose, &tag, &alerts, now) {
                    Ok(composed) => {
                        enqueue(conn, &composed, &tag, Queueing::now(), None, None, now)?;
                        Ok(format!("digest {tag} of {} alerts", digest.count))
                    }
                    Err(e) => {
                        tracing::error!(tag = %tag, error = %e, "cannot compose digest");
                        Ok(format!("digest compose failed: {e}"))
                    }
                }
            }
            other => {
                let text = describe(other);
                tracing::debug!(action = %text, "correlation");
                Ok(text)
            }
        }
    }

    /// Enqueue an incident's mail: now, or held until its ticket id is known; or, for a
    /// recovery with `solve_on_recovery`, solve the ticket through the API instead.
    fn mail_action(
        &mut self,
        conn: &Connection,
        mail: &IncidentMail,
        origin: Option<(i64, &[u8])>,
        now: i64,
    ) -> Result<String, PipelineError> {
        let tag = &mail.incident.tag;
        if let (true, Some(ticket)) = (self.solves_instead(mail), mail.incident.ticket_id) {
            actions::add(conn, tag, ticket, actions::SOLVE, &solution_text(mail), now)?;
            return Ok(format!(
                "resolve {tag}: ticket {ticket} to be solved through the API"
            ));
        }
        let hold_until = mail.incident.first_seen + self.settings.ticket_timeout_secs;
        let queueing = if self.settings.hold_until_ticket_known
            && !matches!(mail.kind, correlate::MailKind::Open)
            && mail.incident.ticket_id.is_none()
            && hold_until > now
        {
            Queueing {
                state: OutboundState::Held,
                not_before: hold_until,
            }
        } else {
            Queueing::now()
        };
        let held = queueing.state == OutboundState::Held;
        let original = origin.map(|(_, raw)| raw);
        match compose_incident_mail(&self.settings.compose, mail, original, now) {
            Ok(composed) => {
                let event = serde_json::to_string(mail).ok();
                enqueue(
                    conn,
                    &composed,
                    tag,
                    queueing,
                    origin.map(|o| o.0),
                    event.as_deref(),
                    now,
                )?;
                let held = if held {
                    ", held until the ticket id is known"
                } else {
                    ""
                };
                Ok(format!(
                    "{} {tag} ({}){held}",
                    mail_kind_word(mail),
                    composed.message_id
                ))
            }
            Err(e) => {
                tracing::error!(tag = %tag, error = %e, "cannot compose mail");
                Ok(format!("compose failed for {tag}: {e}"))
            }
        }
    }

    fn solves_instead(&self, mail: &IncidentMail) -> bool {
        self.settings.solve_on_recovery && matches!(mail.kind, correlate::MailKind::Resolve)
    }

    fn is_feedback(&self, row: &SpoolRow) -> bool {
        !self.settings.feedback_addresses.is_empty()
            && row.envelope.rcpt_to.iter().all(|r| {
                self.settings
                    .feedback_addresses
                    .iter()
                    .any(|p| p.matches(r))
            })
    }

    /// A mail to a feedback address: GLPI telling us a ticket's id or status. It is
    /// never forwarded (GLPI would refuse its own mail anyway), only read and kept.
    fn feedback(
        &mut self,
        conn: &Connection,
        raw: &[u8],
        now: i64,
    ) -> Result<StepResult, PipelineError> {
        let note = match self.settings.notifications.read(raw) {
            Err(e) => {
                tracing::warn!(reason = %e, "mail to a feedback address is not a GLPI notification; kept");
                format!("not a GLPI notification: {e}")
            }
            Ok(n) => match n.thread_tag.clone() {
                None => {
                    tracing::info!(
                        ticket = n.ticket_id,
                        "GLPI notification names no alertgate incident; kept"
                    );
                    format!(
                        "GLPI ticket {} ({}): no alertgate tag in its title",
                        n.ticket_id, n.event
                    )
                }
                Some(tag) => {
                    let info = TicketInfo {
                        tag,
                        ticket_id: n.ticket_id,
                        glpi_message_id: n.glpi_message_id,
                        status: n.status,
                    };
                    self.learn_ticket(conn, &info, now)?
                }
            },
        };
        Ok(StepResult {
            state: SpoolState::Feedback,
            note,
        })
    }

    /// Record a ticket id (and status) on its incident and release the held mails.
    fn learn_ticket(
        &mut self,
        conn: &Connection,
        info: &TicketInfo,
        now: i64,
    ) -> Result<String, PipelineError> {
        let open = correlate::apply_ticket_info(
            self.state,
            &info.tag,
            info.ticket_id,
            info.glpi_message_id.clone(),
            info.status,
        );
        let incident = match open {
            Some(_) => self.state.incident_by_tag(&info.tag).cloned(),
            // An ended incident may still have mails waiting for this ticket id.
            None => incidents::by_tag(conn, &info.tag)?.map(|mut inc| {
                inc.record_ticket(info.ticket_id, info.glpi_message_id.clone(), info.status);
                inc
            }),
        };
        let Some(incident) = incident else {
            tracing::info!(tag = %info.tag, ticket = info.ticket_id, "GLPI ticket names an incident alertgate does not know; kept");
            return Ok(format!(
                "GLPI ticket {} names unknown incident {}",
                info.ticket_id, info.tag
            ));
        };
        incidents::save(conn, &incident, now)?;
        let released = self.release_held(conn, &incident, now)?;
        Ok(format!(
            "ticket {} ({:?}) recorded for {}; {released} held mail(s) released",
            info.ticket_id, incident.ticket_status, incident.tag
        ))
    }

    /// Compose the incident's held mails again, now with the ticket id, and queue them.
    fn release_held(
        &mut self,
        conn: &Connection,
        incident: &Incident,
        now: i64,
    ) -> Result<usize, PipelineError> {
        let held = outbound::held_for(conn, &incident.tag)?;
        for h in &held {
            let Some(mut mail) = h
                .event
                .as_deref()
                .and_then(|e| serde_json::from_str::<IncidentMail>(e).ok())
            else {
                outbound::requeue(conn, h.id, now)?;
                continue;
            };
            mail.incident.ticket_id = incident.ticket_id;
            mail.incident.glpi_message_id = incident.glpi_message_id.clone();
            if let (true, Some(ticket)) = (self.solves_instead(&mail), incident.ticket_id) {
                outbound::delete(conn, h.id)?;
                actions::add(
                    conn,
                    &incident.tag,
                    ticket,
                    actions::SOLVE,
                    &solution_text(&mail),
                    now,
                )?;
                continue;
            }
            let original = match h.spool_id {
                Some(id) => spool::get(conn, id)?.and_then(|r| r.raw),
                None => None,
            };
            match compose_incident_mail(&self.settings.compose, &mail, original.as_deref(), now) {
                Ok(composed) => {
                    outbound::requeue_composed(conn, h.id, &composed.subject, &composed.bytes, now)?
                }
                Err(e) => {
                    tracing::error!(tag = %incident.tag, error = %e, "cannot compose a held mail again; sending it as it was");
                    outbound::requeue(conn, h.id, now)?;
                }
            }
        }
        Ok(held.len())
    }

    fn unmatched(
        &mut self,
        conn: &Connection,
        row: &SpoolRow,
        raw: &[u8],
        error: &ParseError,
        now: i64,
    ) -> Result<StepResult, PipelineError> {
        let why = error.to_string();
        if !matches!(error, ParseError::NoRuleMatched { .. }) {
            tracing::warn!(spool_id = row.id, error = %why, "mail matched a rule but could not be read");
        }
        match self.settings.unmatched {
            UnmatchedPolicy::Hold => Ok(StepResult {
                state: SpoolState::Held,
                note: format!("held: {why}"),
            }),
            UnmatchedPolicy::Drop => {
                tracing::warn!(spool_id = row.id, reason = %why, "unmatched mail dropped by policy");
                Ok(StepResult {
                    state: SpoolState::Dropped,
                    note: format!("dropped: {why}"),
                })
            }
            UnmatchedPolicy::Forward => {
                let tag = format!("MAIL-{}", row.id);
                match compose::compose_unmatched(&self.settings.compose, &tag, raw, now) {
                    Ok(composed) => {
                        enqueue(
                            conn,
                            &composed,
                            &tag,
                            Queueing::now(),
                            Some(row.id),
                            None,
                            now,
                        )?;
                        Ok(StepResult {
                            state: SpoolState::Processed,
                            note: format!("forwarded unmatched as {tag}: {why}"),
                        })
                    }
                    Err(e) => Ok(StepResult {
                        state: SpoolState::Failed,
                        note: format!("cannot forward: {e} ({why})"),
                    }),
                }
            }
        }
    }
}

/// Whether a mail goes out now or waits for its ticket id (and until when).
struct Queueing {
    state: OutboundState,
    not_before: i64,
}

impl Queueing {
    fn now() -> Queueing {
        Queueing {
            state: OutboundState::Queued,
            not_before: 0,
        }
    }
}

fn enqueue(
    conn: &Connection,
    mail: &ComposedMail,
    order_key: &str,
    queueing: Queueing,
    spool_id: Option<i64>,
    event: Option<&str>,
    now: i64,
) -> Result<i64, StoreError> {
    let id = outbound::enqueue(
        conn,
        &NewOutbound {
            order_key,
            message_id: &mail.message_id,
            subject: &mail.subject,
            envelope_from: &mail.envelope_from,
            envelope_to: &mail.envelope_to,
            raw: &mail.bytes,
            state: queueing.state,
            spool_id,
            not_before: queueing.not_before,
        },
        now,
    )?;
    if let Some(event) = event {
        outbound::set_event(conn, id, event)?;
    }
    Ok(id)
}

/// Map the correlation engine's mail onto what compose needs.
pub fn compose_incident_mail(
    cfg: &ComposeConfig,
    mail: &IncidentMail,
    original: Option<&[u8]>,
    now: i64,
) -> Result<ComposedMail, compose::ComposeError> {
    let kind = match mail.kind {
        correlate::MailKind::Open => compose::MailKind::Open,
        correlate::MailKind::Update { reason } => compose::MailKind::Update {
            reason: update_reason_word(reason).into(),
        },
        correlate::MailKind::Resolve => compose::MailKind::Resolve,
    };
    let folded: Vec<compose::FoldedService> = mail
        .folded
        .iter()
        .map(|f| compose::FoldedService {
            service: f.service.clone(),
            state: f.state,
            output: f.output.clone(),
            time: f.last_seen,
        })
        .collect();
    let incident = &mail.incident;
    let event = MailEvent {
        kind,
        incident: compose::IncidentRef {
            tag: incident.tag.clone(),
            seq: u32::try_from(mail.seq).unwrap_or(u32::MAX),
            ticket_id: incident.ticket_id,
            glpi_message_id: incident.glpi_message_id.clone(),
            first_seen: incident.first_seen,
            alert_count: u32::try_from(incident.notifications).unwrap_or(u32::MAX),
        },
        alert: &mail.alert,
        folded: &folded,
        original,
        now,
    };
    compose::compose(cfg, &event)
}

/// What the ITILSolution says when alertgate solves a ticket on recovery.
fn solution_text(mail: &IncidentMail) -> String {
    let a = &mail.alert;
    let what = if a.service.is_empty() {
        a.host.clone()
    } else {
        format!("{} / {}", a.host, a.service)
    };
    format!(
        "Recovered: {what} is {} ({} source {}). {}",
        a.state.as_str().to_uppercase(),
        mail.incident.tag,
        a.source,
        a.output.lines().next().unwrap_or("")
    )
}

fn update_reason_word(reason: correlate::UpdateReason) -> &'static str {
    use correlate::UpdateReason::*;
    match reason {
        StateChange => "state_change",
        Acknowledgement => "acknowledgement",
        Downtime => "downtime",
        Flapping => "flapping",
        Reminder => "reminder",
        Custom => "custom",
        Reopen => "reopen",
    }
}

fn mail_kind_word(mail: &IncidentMail) -> &'static str {
    match mail.kind {
        correlate::MailKind::Open => "open",
        correlate::MailKind::Update { .. } => "update",
        correlate::MailKind::Resolve => "resolve",
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Suppress {
            tag, count, why, ..
        } => format!("suppressed for {tag} ({why:?}, {count} so far)"),
        Action::Ignore { why } => format!("ignored: {why}"),
        Action::Folded {
            host_tag, service, ..
        } => format!("folded {service} into {host_tag}"),
        Action::Deferred {
            tag,
            pending_in_digest,
            ..
        } => format!("{tag} deferred to digest ({pending_in_digest} pending)"),
        Action::EndedQuietly { tag, reason, .. } => {
            format!("{tag} ended without mail ({reason:?})")
        }
        Action::Mail(m) => format!("mail {}", m.incident.tag),
        Action::Digest(d) => format!("digest of {}", d.count),
    }
}

/// A client that resends after a lost reply gives the same Message-ID and the same
/// content: that is a duplicate. Same Message-ID with other content is not (some tools
/// reuse ids for repeats, and a repeat must still be counted).
fn duplicate_of(conn: &Connection, row: &SpoolRow) -> Result<Option<i64>, StoreError> {
    let Some(mid) = &row.message_id else {
        return Ok(None);
    };
    let raw = row.raw.as_deref().unwrap_or_default();
    let mut stmt = conn.prepare_cached(
        "SELECT id, raw FROM spool WHERE message_id = ?1 AND id < ?2 ORDER BY id",
    )?;
    let earlier = stmt.query_map(rusqlite::params![mid, row.id], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    for found in earlier {
        let (id, other) = found?;
        if after_our_received(&other) == after_our_received(raw) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The message as the client sent it: without the Received: header we prepended.
fn after_our_received(raw: &[u8]) -> &[u8] {
    if !raw.starts_with(b"Received: ") {
        return raw;
    }
    let mut pos = 0;
    while let Some(eol) = raw[pos..].iter().position(|&b| b == b'\n') {
        pos += eol + 1;
        if !matches!(raw.get(pos), Some(b' ') | Some(b'\t')) {
            return &raw[pos..];
        }
    }
    &raw[raw.len()..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_header_is_skipped_with_its_folded_lines() {
        let raw = b"Received: from a\r\n\tby b;\r\n\tdate\r\nSubject: x\r\n\r\nbody";
        assert_eq!(after_our_received(raw), b"Subject: x\r\n\r\nbody");
        assert_eq!(after_our_received(b"Subject: y\r\n"), b"Subject: y\r\n");
    }
}
