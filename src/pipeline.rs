//! The pipeline worker: each spooled message goes through rules → correlate → compose →
//! outbound queue, and everything that step decided is committed in one transaction with
//! the message marked done, so a crash either redoes a step whole or not at all.

use crate::alert::Alert;
use crate::compose::{self, ComposeConfig, ComposedMail, MailEvent};
use crate::config::UnmatchedPolicy;
use crate::correlate::{self, Action, CorrelationPolicy, CorrelationState, Decision, IncidentMail};
use crate::rules::{ParseContext, ParseError, RuleSet};
use crate::store::outbound::{self, NewOutbound, OutboundState};
use crate::store::spool::{self, SpoolRow, SpoolState};
use crate::store::{incidents, StoreError};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;

/// Messages processed per transaction: one fsync for many steps.
const BATCH: usize = 256;

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
    pub correlation: CorrelationPolicy,
    pub unmatched: UnmatchedPolicy,
    /// Hold an incident's updates until its GLPI ticket id is known.
    pub hold_until_ticket_known: bool,
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
        let conn = crate::store::open(path)?;
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
        let result = self.in_transaction(now, |p, conn| {
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
        self.in_transaction(now, |p, conn| {
            let decision = correlate::tick(&mut p.state, now, &p.settings.correlation);
            p.apply(conn, &decision, None, now)?;
            Ok(())
        })
    }

    /// Run `f` in one transaction; if it fails, the in-memory state is rebuilt from what
    /// was committed, so memory never runs ahead of the store.
    fn in_transaction(
        &mut self,
        now: i64,
        f: impl FnOnce(&mut PipelineCore<'_>, &Connection) -> Result<(), PipelineError>,
    ) -> Result<(), PipelineError> {
        let tx = self.conn.unchecked_transaction()?;
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
        let _ = now;
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
            Action::Mail(mail) => {
                let state = if self.settings.hold_until_ticket_known
                    && !matches!(mail.kind, correlate::MailKind::Open)
                    && mail.incident.ticket_id.is_none()
                {
                    OutboundState::Held
                } else {
                    OutboundState::Queued
                };
                let original = origin.map(|(_, raw)| raw);
                match compose_incident_mail(&self.settings.compose, mail, original, now) {
                    Ok(composed) => {
                        let event = serde_json::to_string(mail).ok();
                        enqueue(
                            conn,
                            &composed,
                            &mail.incident.tag,
                            state,
                            origin.map(|o| o.0),
                            event.as_deref(),
                            now,
                        )?;
                        Ok(format!(
                            "{} {} ({})",
                            mail_kind_word(mail),
                            mail.incident.tag,
                            composed.message_id
                        ))
                    }
                    Err(e) => {
                        tracing::error!(tag = %mail.incident.tag, error = %e, "cannot compose mail");
                        Ok(format!("compose failed for {}: {e}", mail.incident.tag))
                    }
                }
            }
            Action::Digest(digest) => {
                let alerts: Vec<Alert> = digest.entries.iter().map(|e| e.alert.clone()).collect();
                let tag = format!("DIGEST-{}", digest.window_start);
                match compose::compose_digest(&self.settings.compose, &tag, &alerts, now) {
                    Ok(composed) => {
                        enqueue(
                            conn,
                            &composed,
                            &tag,
                            OutboundState::Queued,
                            None,
                            None,
                            now,
                        )?;
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
                            OutboundState::Queued,
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

fn enqueue(
    conn: &Connection,
    mail: &ComposedMail,
    order_key: &str,
    state: OutboundState,
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
            state,
            spool_id,
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
