//! The pipeline worker: each spooled message goes through rules → correlate → compose →
//! outbound queue, and everything that step decided is committed in one transaction with
//! the message marked done, so a crash either redoes a step whole or not at all.

use crate::alert::Alert;
use crate::compose::{self, ComposeConfig, ComposedMail, MailEvent};
use crate::config::{RecipientPattern, UnmatchedPolicy};
use crate::correlate::reply::MailIds;
use crate::correlate::{
    self, Action, CorrelationPolicy, CorrelationState, Decision, Incident, IncidentMail,
};
use crate::rules::{ParseContext, ParseError, RuleSet};
use crate::store::actions::{self, ActionKind};
use crate::store::gate::WriteGate;
use crate::store::incidents::StoreIncidents;
use crate::store::outbound::{self, NewOutbound, OutboundState};
use crate::store::spool::{self, SpoolRow, SpoolState};
use crate::store::{incidents, Db, Location, StoreError, Tx};
use std::cell::RefCell;
use std::sync::Arc;

/// Messages processed per transaction: one fsync for many steps.
const BATCH: usize = 64;

/// How long a transaction of ours may keep a waiting spool writer (the sessions' `250`)
/// out. Shorter turns cost more: each commit rewrites the same index pages to the WAL,
/// which the writer's next fsync then has to flush.
const TURN: std::time::Duration = std::time::Duration::from_millis(4);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// How alertgate paces and routes what it tells GLPI.
    pub glpi: GlpiFlow,
}

/// What GLPI's side looks like and how alertgate talks to it once a ticket exists.
#[derive(Debug, Clone)]
pub struct GlpiFlow {
    /// `[glpi_api]` is configured: once an incident's ticket id is known, its updates
    /// are API follow-ups (in order, with the solution last), never mails.
    pub api_updates: bool,
    /// `[glpi_api] create = "api"`: alertgate posts the ticket itself.
    pub create_via_api: bool,
    /// GLPI's mail collector runs this often (`mailgate`, 600 s by default)…
    pub collector_interval_secs: i64,
    /// …and imports at most this many mails per run (10 by default).
    pub collector_batch: i64,
    /// At most one mail per incident this often (its first mail goes at once).
    pub min_mail_interval_secs: i64,
}

impl Default for GlpiFlow {
    fn default() -> Self {
        GlpiFlow {
            api_updates: false,
            create_via_api: false,
            collector_interval_secs: 600,
            collector_batch: 10,
            min_mail_interval_secs: 60,
        }
    }
}

pub use crate::ticket::{derived_ticket_wait, TicketInfo};

pub struct Pipeline {
    db: Db,
    settings: PipelineSettings,
    /// The engine's counters, storm window and cache of open incidents.
    state: CorrelationState,
    /// The store's commit generation after this pipeline's last commit; `None` until
    /// the state was read from the store (at start, after a failed step).
    generation: Option<i64>,
    /// Shared with the spool writer, whose group commit (the sessions' `250`) then
    /// waits for one turn of ours at most.
    gate: Option<Arc<WriteGate>>,
}

/// What one processing step produced, for the spool row's note and the logs.
struct StepResult {
    state: SpoolState,
    note: String,
}

/// Rules may ask which host an earlier mail (cited by In-Reply-To) was about.
struct StoreContext<'a> {
    // Asked through `&self` (the rules' trait); the connection needs `&mut`.
    db: RefCell<&'a mut Db>,
}

impl ParseContext for StoreContext<'_> {
    fn host_for_message_id(&self, message_id: &str) -> Option<String> {
        incidents::host_for_message(&mut self.db.borrow_mut(), message_id)
            .ok()
            .flatten()
    }
}

impl Pipeline {
    pub fn open(
        location: &Location,
        settings: PipelineSettings,
    ) -> Result<Pipeline, PipelineError> {
        let db = Db::open(location, crate::store::Durability::Derived)?;
        Ok(Pipeline {
            db,
            settings,
            // Read from the store inside the first transaction.
            state: CorrelationState::default(),
            generation: None,
            gate: None,
        })
    }

    /// Take turns with the spool writer through `gate` (see [`WriteGate`]).
    pub fn with_write_gate(mut self, gate: Arc<WriteGate>) -> Pipeline {
        self.gate = Some(gate);
        self
    }

    /// A reloaded configuration (rules, compose, correlation) for the mails from now on.
    pub fn set_settings(&mut self, settings: PipelineSettings) {
        self.settings = settings;
    }

    pub fn state(&self) -> &CorrelationState {
        &self.state
    }

    /// Process the oldest waiting messages; returns how many were processed.
    pub fn run_batch(&mut self, now: i64) -> Result<usize, PipelineError> {
        // A cheap look first: an idle poll opens no write transaction.
        if !spool::has_pending(&mut self.db)? {
            return Ok(0);
        }
        let gate = self.gate.clone();
        let mut processed = 0;
        loop {
            let (mut claimed, mut done) = (0, 0);
            let wanted = BATCH - processed;
            // One transaction for the claim, cut short when the spool writer waits.
            self.in_transaction(now, |p, tx| {
                // Claimed inside the transaction: another gateway's pipeline skips them,
                // and takes them over if this one dies before its commit.
                let rows = spool::claim_pending(tx, wanted)?;
                claimed = rows.len();
                let turn = std::time::Instant::now();
                for row in &rows {
                    let step = p.process(tx, row, now)?;
                    spool::set_state(tx, row.id, step.state, Some(&step.note), now)?;
                    tracing::info!(spool_id = row.id, state = step.state.as_str(), outcome = %step.note, "processed");
                    done += 1;
                    if turn.elapsed() >= TURN && gate.as_ref().is_some_and(|g| g.contended()) {
                        break;
                    }
                }
                Ok(done > 0)
            })?;
            processed += done;
            if done == claimed || processed >= BATCH {
                return Ok(processed);
            }
        }
    }

    /// Let time-driven decisions happen: storm digests, and news whose wait (for its
    /// ticket id, or for GLPI's intake pace) is over.
    pub fn tick(&mut self, now: i64) -> Result<(), PipelineError> {
        self.in_transaction(now, |p, tx| {
            let decision = correlate::tick_with(
                p.state,
                &mut StoreIncidents::new(tx),
                now,
                &p.settings.correlation,
            )?;
            p.apply(tx, &decision, None, now)?;
            let held = outbound::held_due_keys(tx, now)?;
            for owner in &held {
                p.flush(tx, owner, now)?;
            }
            Ok(!decision.is_empty() || !held.is_empty())
        })
    }

    /// Record ticket ids learned from GLPI's API, releasing the mails that waited for them.
    pub fn learn_tickets(&mut self, infos: &[TicketInfo], now: i64) -> Result<(), PipelineError> {
        if infos.is_empty() {
            return Ok(());
        }
        self.in_transaction(now, |p, tx| {
            for info in infos {
                let note = p.learn_ticket(tx, info, now)?;
                tracing::info!(tag = %info.tag, ticket = info.ticket_id, outcome = %note, "ticket learned from the API");
            }
            Ok(true)
        })
    }

    /// Run `f` in one transaction. The engine's state is the store's as of this
    /// pipeline's last commit: when another writer committed since (the generation
    /// moved) or the last step failed, it is read again first, so memory never runs
    /// ahead of, nor lags behind, the store.
    fn in_transaction(
        &mut self,
        now: i64,
        f: impl FnOnce(&mut PipelineCore<'_>, &mut Tx<'_>) -> Result<bool, PipelineError>,
    ) -> Result<(), PipelineError> {
        let gate = self.gate.clone();
        let _gate = gate.as_ref().map(|g| g.enter());
        let mut tx = self.db.transaction()?;
        let outcome = (|| {
            // PostgreSQL: two gateways correlate one at a time (SQLite's write
            // transaction already excludes every other writer).
            incidents::lock_correlation(&mut tx)?;
            let generation = incidents::generation(&mut tx)?;
            if self.generation != Some(generation) {
                if self.generation.is_some() {
                    tracing::info!(
                        "incidents changed by another writer; the engine's cache is re-read"
                    );
                }
                self.state = incidents::load_state(&mut tx, now)?;
            }
            let mut core = PipelineCore {
                settings: &self.settings,
                state: &mut self.state,
                backlog: None,
            };
            // A step that changed nothing leaves the generation: the other gateway's
            // cache stays valid across this one's idle ticks.
            if !f(&mut core, &mut tx)? {
                return Ok(generation);
            }
            let next_id = core.state.next_id().to_string();
            incidents::set_kv(&mut tx, "next_incident_id", &next_id)?;
            Ok::<i64, PipelineError>(incidents::bump_generation(&mut tx)?)
        })();
        let outcome = outcome.and_then(|generation| {
            tx.commit()?;
            Ok(generation)
        });
        match outcome {
            Ok(generation) => {
                self.generation = Some(generation);
                Ok(())
            }
            Err(e) => {
                // The caller logs the failure (once per fault); this is its detail.
                tracing::debug!(error = %e, "pipeline transaction failed; the engine's state is re-read from the store");
                self.state.drop_cache();
                self.generation = None;
                Err(e)
            }
        }
    }
}

/// The parts of the pipeline a transaction works with.
struct PipelineCore<'a> {
    settings: &'a PipelineSettings,
    state: &'a mut CorrelationState,
    /// Incidents whose first mail GLPI has not answered yet (computed once per transaction).
    backlog: Option<u64>,
}

impl PipelineCore<'_> {
    fn process(
        &mut self,
        tx: &mut Tx<'_>,
        row: &SpoolRow,
        now: i64,
    ) -> Result<StepResult, PipelineError> {
        let raw = row.raw.as_deref().unwrap_or_default();
        if let Some(original) = duplicate_of(tx, row)? {
            return Ok(StepResult {
                state: SpoolState::Duplicate,
                note: format!("duplicate of spool id {original}, ignored"),
            });
        }
        if self.is_feedback(row) {
            return self.feedback(tx, raw, now);
        }
        // Decoded once here; the rules and correlation read this one copy.
        let mail = match crate::rules::decode(raw) {
            Ok(mail) => mail,
            Err(e) => return self.unmatched(tx, row, raw, &ParseError::from(e), now),
        };
        let parsed = self.settings.rules.parse_decoded(
            &mail,
            &StoreContext {
                db: RefCell::new(&mut **tx),
            },
        );
        match parsed {
            Ok(alerts) => self.process_alerts(tx, row, raw, mail.cited, &alerts, now),
            Err(e) => self.unmatched(tx, row, raw, &e, now),
        }
    }

    fn process_alerts(
        &mut self,
        tx: &mut Tx<'_>,
        row: &SpoolRow,
        raw: &[u8],
        cited: Vec<String>,
        alerts: &[Alert],
        now: i64,
    ) -> Result<StepResult, PipelineError> {
        let mut notes = Vec::new();
        let mail_ids = MailIds {
            own: row.message_id.clone(),
            cited,
        };
        for alert in alerts {
            if let Some(mid) = &row.message_id {
                if !alert.host.is_empty() {
                    incidents::remember_message_host(tx, mid, &alert.host)?;
                }
            }
            let decision = correlate::reply::correlate_threaded(
                &mut StoreIncidents::new(tx),
                self.state,
                &mail_ids,
                alert,
                now,
                &self.settings.correlation,
            )?;
            notes.push(self.apply(tx, &decision, Some((row.id, raw)), now)?);
        }
        Ok(StepResult {
            state: SpoolState::Processed,
            note: notes.join("; "),
        })
    }

    /// Persist what correlation changed and enqueue its mails; returns a summary.
    fn apply(
        &mut self,
        tx: &mut Tx<'_>,
        decision: &Decision,
        origin: Option<(i64, &[u8])>,
        now: i64,
    ) -> Result<String, PipelineError> {
        for incident in &decision.changed {
            incidents::save(tx, incident, now)?;
        }
        for id in &decision.ended {
            incidents::mark_ended(tx, *id, now)?;
        }
        for id in &decision.digested {
            incidents::mark_digested(tx, *id, now)?;
        }
        let mut summary = Vec::new();
        for action in &decision.actions {
            summary.push(self.act(tx, action, origin, now)?);
        }
        Ok(summary.join(", "))
    }

    fn act(
        &mut self,
        tx: &mut Tx<'_>,
        action: &Action,
        origin: Option<(i64, &[u8])>,
        now: i64,
    ) -> Result<String, PipelineError> {
        match action {
            Action::Mail(mail) => self.mail_action(tx, mail, origin, now),
            Action::Digest(digest) => {
                let alerts: Vec<Alert> = digest.entries.iter().map(|e| e.alert.clone()).collect();
                let tag = &digest.tag;
                match compose::compose_digest(&self.settings.compose, tag, &alerts, now) {
                    Ok(composed) if self.settings.glpi.create_via_api => {
                        let input = self.ticket_input(&composed, alerts.iter().map(|a| a.state));
                        actions::add(tx, tag, 0, ActionKind::Create, &input, now)?;
                        Ok(format!(
                            "digest {tag} of {} alerts: ticket to be created through the API",
                            digest.count
                        ))
                    }
                    Ok(composed) => {
                        enqueue(tx, &composed, tag, Queueing::now(), None, None, now)?;
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

    /// An incident's first mail goes out at once (or, with `create = "api"`, becomes the
    /// ticket's creation); everything later is news for its ticket (the digest's ticket
    /// for an incident a storm digest holds): kept as held mail and told to GLPI when it
    /// can be, merged ([`Self::flush`]).
    fn mail_action(
        &mut self,
        tx: &mut Tx<'_>,
        mail: &IncidentMail,
        origin: Option<(i64, &[u8])>,
        now: i64,
    ) -> Result<String, PipelineError> {
        let tag = &mail.incident.tag;
        let original = origin.map(|(_, raw)| raw);
        let opens = matches!(mail.kind, correlate::MailKind::Open) && mail.via_digest.is_none();
        if opens {
            let composed = match compose_incident_mail(&self.settings.compose, mail, original, now)
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(tag = %tag, error = %e, "cannot compose mail");
                    return Ok(format!("compose failed for {tag}: {e}"));
                }
            };
            if self.settings.glpi.create_via_api {
                let input = self.ticket_input(&composed, std::iter::once(mail.alert.state));
                actions::add(tx, tag, 0, ActionKind::Create, &input, now)?;
                return Ok(format!("open {tag}: ticket to be created through the API"));
            }
            let event = serde_json::to_string(mail).ok();
            enqueue(
                tx,
                &composed,
                tag,
                Queueing::now(),
                origin.map(|o| o.0),
                event.as_deref(),
                now,
            )?;
            return Ok(format!("open {tag} ({})", composed.message_id));
        }
        let owner = mail.owner_tag().to_owned();
        let owner_incident = self.owner_incident(tx, &owner)?;
        let composed = match owner_incident.as_ref() {
            Some(o) => compose_news(
                &self.settings.compose,
                o,
                std::slice::from_ref(mail),
                original,
                now,
            ),
            None => compose_incident_mail(&self.settings.compose, mail, original, now),
        };
        let composed = match composed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(tag = %tag, error = %e, "cannot compose mail");
                return Ok(format!("compose failed for {tag}: {e}"));
            }
        };
        let event = serde_json::to_string(mail).ok();
        let queueing = Queueing {
            state: OutboundState::Held,
            not_before: now,
        };
        enqueue(
            tx,
            &composed,
            &owner,
            queueing,
            origin.map(|o| o.0),
            event.as_deref(),
            now,
        )?;
        let outcome = self.flush(tx, &owner, now)?;
        let via = if owner != *tag {
            format!(" for digest {owner}")
        } else {
            String::new()
        };
        Ok(format!("{} {tag}{via}: {outcome}", mail_kind_word(mail)))
    }

    /// The open or ended incident whose ticket `tag` names.
    fn owner_incident(
        &self,
        tx: &mut Tx<'_>,
        tag: &str,
    ) -> Result<Option<Incident>, PipelineError> {
        match self.state.incident_by_tag(tag) {
            Some(i) => Ok(Some(i.clone())),
            None => Ok(incidents::by_tag(tx, tag)?),
        }
    }

    /// Incidents whose first mail GLPI has not answered yet: each stands for mail in
    /// the collector's mailbox ahead of a newer incident's.
    fn backlog(&mut self, tx: &mut Tx<'_>, now: i64) -> Result<u64, PipelineError> {
        if let Some(n) = self.backlog {
            return Ok(n);
        }
        let waiting = incidents::awaiting_ticket_count(tx)?;
        // Updates queue in the same mailbox: what left within the last run may still be there.
        let recent =
            outbound::sent_since(tx, now - self.settings.glpi.collector_interval_secs.max(1))?;
        let n = waiting + recent;
        self.backlog = Some(n);
        Ok(n)
    }

    /// Until when an incident's news waits for its ticket id before it goes out unthreaded.
    fn ticket_deadline(
        &mut self,
        tx: &mut Tx<'_>,
        owner: &Incident,
        now: i64,
    ) -> Result<i64, PipelineError> {
        if !self.settings.hold_until_ticket_known {
            return Ok(owner.first_seen);
        }
        if self.settings.glpi.create_via_api {
            // alertgate creates the ticket itself: its id comes once GLPI is back, and a
            // mail would only open a second ticket.
            return Ok(i64::MAX);
        }
        let wait = if self.settings.ticket_timeout_secs > 0 {
            self.settings.ticket_timeout_secs
        } else {
            let backlog = self.backlog(tx, now)?;
            let glpi = &self.settings.glpi;
            derived_ticket_wait(glpi.collector_interval_secs, glpi.collector_batch, backlog)
        };
        Ok(owner.first_seen.saturating_add(wait))
    }

    /// Tell GLPI the news held for `owner`'s ticket, if it can be told now: with the API
    /// and a known ticket, as one follow-up (then the solution, last); by mail, as one
    /// merged mail at most every `min_mail_interval_secs`, threaded once the ticket id is
    /// known, unthreaded once the wait for it is over. Nothing is sent to a ticket
    /// people solved or closed, unless the news is a worse state that reopens it.
    fn flush(
        &mut self,
        tx: &mut Tx<'_>,
        owner_tag: &str,
        now: i64,
    ) -> Result<String, PipelineError> {
        let held = outbound::held_for(tx, owner_tag)?;
        if held.is_empty() {
            return Ok("nothing held".into());
        }
        let events: Vec<Option<IncidentMail>> = held
            .iter()
            .map(|h| {
                h.event
                    .as_deref()
                    .and_then(|e| serde_json::from_str(e).ok())
            })
            .collect();
        let Some(owner) = self.owner_incident(tx, owner_tag)? else {
            for h in &held {
                outbound::requeue(tx, h.id, now)?;
            }
            return Ok(format!(
                "{} held mail(s) of an unknown incident sent as they were",
                held.len()
            ));
        };
        if events.iter().any(Option::is_none) {
            // Rows from before this version: sent as they were composed.
            for (h, e) in held.iter().zip(&events) {
                if e.is_none() {
                    outbound::requeue(tx, h.id, now)?;
                }
            }
        }
        let (rows, events): (Vec<_>, Vec<IncidentMail>) = held
            .iter()
            .zip(events)
            .filter_map(|(h, e)| e.map(|e| (h, e)))
            .unzip();
        if events.is_empty() {
            return Ok("held mail released as composed".into());
        }
        let reopens = events.iter().any(|e| {
            matches!(
                e.kind,
                correlate::MailKind::Update {
                    reason: correlate::UpdateReason::Reopen
                }
            )
        });
        if owner.ticket_status.is_done() && !reopens {
            for h in &rows {
                outbound::delete(tx, h.id)?;
            }
            tracing::info!(tag = %owner_tag, status = ?owner.ticket_status, dropped = events.len(), "ticket solved or closed in GLPI: held news not sent");
            return Ok(format!(
                "{} update(s) not sent: the ticket is {:?}",
                events.len(),
                owner.ticket_status
            ));
        }
        if let (Some(ticket), true) = (owner.ticket_id, self.settings.glpi.api_updates) {
            // A digest's ticket hears of hundreds of incidents: merged per interval too.
            if owner.is_digest {
                let paced_until = actions::last_queued_at(tx, owner_tag, ActionKind::Followup)?
                    .map_or(i64::MIN, |at| {
                        at.saturating_add(self.settings.glpi.min_mail_interval_secs)
                    });
                if now < paced_until {
                    outbound::hold_until(tx, owner_tag, paced_until)?;
                    return Ok(format!(
                        "held ({} event(s)) until {paced_until} for the digest's pace",
                        events.len()
                    ));
                }
            }
            for h in &rows {
                outbound::delete(tx, h.id)?;
            }
            return self.queue_api_news(tx, &owner, ticket, &events, now);
        }
        let interval = self.settings.glpi.min_mail_interval_secs;
        let paced_until = match interval {
            0 => i64::MIN,
            _ => outbound::last_release_at(tx, owner_tag)?
                .map_or(i64::MIN, |at| at.saturating_add(interval)),
        };
        let unthreaded = owner.ticket_id.is_none();
        let wait_until = if unthreaded {
            paced_until.max(self.ticket_deadline(tx, &owner, now)?)
        } else {
            paced_until
        };
        if now < wait_until {
            outbound::hold_until(tx, owner_tag, wait_until)?;
            let why = if unthreaded {
                "the ticket id"
            } else {
                "GLPI's intake pace"
            };
            return Ok(format!(
                "held ({} event(s)) until {wait_until}, waiting for {why}",
                events.len()
            ));
        }
        let original = match rows
            .last()
            .and_then(|h| h.spool_id)
            .filter(|_| events.len() == 1)
        {
            Some(id) => spool::get(tx, id)?.and_then(|r| r.raw),
            None => None,
        };
        let composed = match compose_news(
            &self.settings.compose,
            &owner,
            &events,
            original.as_deref(),
            now,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(tag = %owner_tag, error = %e, "cannot compose the merged mail; sending the held mails as they were");
                for h in &rows {
                    outbound::requeue(tx, h.id, now)?;
                }
                return Ok(format!("compose failed: {e}"));
            }
        };
        let (first, rest) = rows.split_first().expect("events is not empty");
        outbound::requeue_composed(tx, first.id, &composed.subject, &composed.bytes, now)?;
        for h in rest {
            outbound::delete(tx, h.id)?;
        }
        if unthreaded && self.settings.hold_until_ticket_known {
            let total = incidents::get_kv(tx, "unthreaded_after_timeout")?
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            incidents::set_kv(tx, "unthreaded_after_timeout", &total.to_string())?;
            tracing::warn!(tag = %owner_tag, unthreaded_total = total, "no GLPI ticket id in time: held news sent unthreaded");
        }
        Ok(format!(
            "{} event(s) sent in one {} mail",
            events.len(),
            if unthreaded { "unthreaded" } else { "threaded" }
        ))
    }

    /// News for a known ticket through the API: one follow-up for everything but a
    /// final recovery, which becomes the solution (queued after it, so never first).
    fn queue_api_news(
        &mut self,
        tx: &mut Tx<'_>,
        owner: &Incident,
        ticket: u64,
        events: &[IncidentMail],
        now: i64,
    ) -> Result<String, PipelineError> {
        let tag = &owner.tag;
        let solves = self.settings.solve_on_recovery
            && events.last().is_some_and(|e| {
                matches!(e.kind, correlate::MailKind::Resolve) && e.via_digest.is_none()
            });
        let (news, solution) = match (solves, events.split_last()) {
            (true, Some((last, rest))) => (rest, Some(last)),
            _ => (events, None),
        };
        if !news.is_empty() {
            let reopens = news.iter().any(|e| {
                matches!(
                    e.kind,
                    correlate::MailKind::Update {
                        reason: correlate::UpdateReason::Reopen
                    }
                )
            });
            let kind = if reopens {
                ActionKind::Reopen
            } else {
                ActionKind::Followup
            };
            actions::add(tx, tag, ticket, kind, &news_text(news), now)?;
        }
        if let Some(last) = solution {
            actions::add(
                tx,
                tag,
                ticket,
                ActionKind::Solve,
                &solution_text(last),
                now,
            )?;
        }
        Ok(format!(
            "{} event(s) for ticket {ticket} through the API{}",
            events.len(),
            if solution.is_some() {
                ", then its solution"
            } else {
                ""
            }
        ))
    }

    /// The ticket `create = "api"` posts: the open mail's subject and body, urgency from
    /// the (worst) state; the worker adds the configured entity, category and requester.
    fn ticket_input(
        &self,
        composed: &ComposedMail,
        states: impl Iterator<Item = crate::alert::State>,
    ) -> String {
        let worst = states
            .max_by_key(|s| s.severity())
            .unwrap_or(crate::alert::State::Unknown);
        serde_json::json!({
            "name": composed.subject,
            "content": mail_text(&composed.bytes),
            "urgency": urgency_of(worst),
        })
        .to_string()
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
        tx: &mut Tx<'_>,
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
                    self.learn_ticket(tx, &info, now)?
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
        tx: &mut Tx<'_>,
        info: &TicketInfo,
        now: i64,
    ) -> Result<String, PipelineError> {
        let open = correlate::apply_ticket_info_with(
            self.state,
            &mut StoreIncidents::new(tx),
            &info.tag,
            info.ticket_id,
            info.glpi_message_id.clone(),
            info.status,
        )?;
        self.state.trim(self.settings.correlation.incident_cache);
        let incident = match open {
            Some(incident) => Some(incident),
            // An ended incident may still have mails waiting for this ticket id.
            None => incidents::by_tag(tx, &info.tag)?.map(|mut inc| {
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
        incidents::save(tx, &incident, now)?;
        actions::set_ticket(tx, &incident.tag, info.ticket_id)?;
        let flushed = self.flush(tx, &incident.tag, now)?;
        Ok(format!(
            "ticket {} ({:?}) recorded for {}; {flushed}",
            info.ticket_id, incident.ticket_status, incident.tag
        ))
    }

    fn unmatched(
        &mut self,
        tx: &mut Tx<'_>,
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
                            tx,
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
    tx: &mut Tx<'_>,
    mail: &ComposedMail,
    order_key: &str,
    queueing: Queueing,
    spool_id: Option<i64>,
    event: Option<&str>,
    now: i64,
) -> Result<i64, StoreError> {
    let id = outbound::enqueue(
        tx,
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
        outbound::set_event(tx, id, event)?;
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
    compose_mail(cfg, mail, original, &[], None, now)
}

fn compose_mail(
    cfg: &ComposeConfig,
    mail: &IncidentMail,
    original: Option<&[u8]>,
    changes: &[compose::Change],
    reason: Option<&str>,
    now: i64,
) -> Result<ComposedMail, compose::ComposeError> {
    let kind = match mail.kind {
        correlate::MailKind::Open => compose::MailKind::Open,
        correlate::MailKind::Update { reason: r } => compose::MailKind::Update {
            reason: reason.unwrap_or(update_reason_word(r)).into(),
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
        changes,
        original,
        now,
    };
    compose::compose(cfg, &event)
}

/// One mail to `owner`'s ticket for `events` (oldest first): the latest event of the
/// owner itself leads, and when the mail stands for several events (or for incidents a
/// digest holds) it lists them all with their times.
pub fn compose_news(
    cfg: &ComposeConfig,
    owner: &Incident,
    events: &[IncidentMail],
    original: Option<&[u8]>,
    now: i64,
) -> Result<ComposedMail, compose::ComposeError> {
    let Some(last) = events.last() else {
        return Err(compose::ComposeError::EmptyDigest);
    };
    let own_last = last.via_digest.is_none();
    let (mut base, reason) = if own_last {
        (last.clone(), None)
    } else {
        let base = IncidentMail {
            kind: correlate::MailKind::Update {
                reason: correlate::UpdateReason::Custom,
            },
            seq: last.seq,
            incident: owner.clone(),
            alert: owner.last_alert.clone(),
            folded: Vec::new(),
            deferred_event: None,
            via_digest: None,
        };
        (base, Some("storm digest"))
    };
    base.incident.ticket_id = owner.ticket_id;
    base.incident.glpi_message_id = owner.glpi_message_id.clone();
    let changes: Vec<compose::Change> = if events.len() > 1 || !own_last {
        events.iter().map(change_of).collect()
    } else {
        Vec::new()
    };
    compose_mail(cfg, &base, original, &changes, reason, now)
}

fn kind_for_compose(kind: correlate::MailKind) -> compose::MailKind {
    match kind {
        correlate::MailKind::Open => compose::MailKind::Open,
        correlate::MailKind::Update { reason } => compose::MailKind::Update {
            reason: update_reason_word(reason).into(),
        },
        correlate::MailKind::Resolve => compose::MailKind::Resolve,
    }
}

/// One line of a merged mail or follow-up.
fn change_of(event: &IncidentMail) -> compose::Change {
    let a = &event.alert;
    let what = if a.service.is_empty() {
        a.host.clone()
    } else {
        format!("{} / {}", a.host, a.service)
    };
    let word = compose::event_word(&kind_for_compose(event.kind), a);
    let word = match event.kind {
        correlate::MailKind::Open => format!("NEW {word}"),
        _ => word,
    };
    compose::Change {
        time: event.incident.last_seen,
        event: format!("{} {what}: {word}", event.incident.tag),
        state: a.state,
        output: a.output.lines().next().unwrap_or("").to_owned(),
    }
}

/// The text of an API follow-up carrying `events`.
fn news_text(events: &[IncidentMail]) -> String {
    let mut text = match events {
        [one] if one.via_digest.is_none() => {
            let c = change_of(one);
            return format!(
                "{} ({} {}). {}",
                c.event,
                c.state.as_str().to_uppercase(),
                compose::format_time(c.time),
                c.output
            );
        }
        _ => format!("alertgate: {} events since the last update\n", events.len()),
    };
    for c in events.iter().map(change_of) {
        text.push_str(&format!(
            "- {} {} ({}): {}\n",
            compose::format_time(c.time),
            c.event,
            c.state.as_str().to_uppercase(),
            c.output
        ));
    }
    text
}

/// The body GLPI would show for a composed mail: its HTML part, else its text.
fn mail_text(bytes: &[u8]) -> String {
    let parsed = mail_parser::MessageParser::default().parse(bytes);
    parsed
        .as_ref()
        .and_then(|m| m.body_html(0).or_else(|| m.body_text(0)))
        .map(|b| b.into_owned())
        .unwrap_or_default()
}

/// GLPI urgency (and impact) for a state: 5 very high … 1 very low.
pub fn urgency_of(state: crate::alert::State) -> u8 {
    use crate::alert::State::*;
    match state {
        Critical | Down => 5,
        Unreachable => 4,
        Warning | Unknown => 3,
        Ok | Up => 2,
    }
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
fn duplicate_of(db: &mut Db, row: &SpoolRow) -> Result<Option<i64>, StoreError> {
    let Some(mid) = &row.message_id else {
        return Ok(None);
    };
    let raw = row.raw.as_deref().unwrap_or_default();
    // Paged: the first earlier copy is usually the one, so one page is usually all.
    let mut after = 0;
    loop {
        let page = spool::possible_originals(db, mid, row.id, after, 8)?;
        let Some(last) = page.last().map(|(id, _)| *id) else {
            return Ok(None);
        };
        for (id, other) in &page {
            if after_our_received(other) == after_our_received(raw) {
                return Ok(Some(*id));
            }
        }
        after = last;
    }
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
    fn the_wait_for_a_ticket_id_grows_with_the_collectors_backlog() {
        // GLPI's defaults, nothing ahead: the run that takes it, two of margin, the queue.
        let alone = derived_ticket_wait(600, 10, 0);
        assert!(alone > 900, "longer than the old fixed 15 min: {alone}");
        assert!(alone <= 3 * 600 + 300, "{alone}");
        // 300 mails ahead at 10 a run: about 30 more runs.
        let behind = derived_ticket_wait(2, 10, 300);
        assert!(behind >= 2 * 31, "{behind}");
        assert_eq!(derived_ticket_wait(2, 10, 9), derived_ticket_wait(2, 10, 0));
        assert!(derived_ticket_wait(2, 10, 10) > derived_ticket_wait(2, 10, 9));
        // Nonsense values do not divide by zero or go negative.
        assert!(derived_ticket_wait(0, 0, 5) > 0);
    }

    fn service_alert(
        host: &str,
        state: crate::alert::State,
        nt: crate::alert::NotificationType,
    ) -> Alert {
        Alert {
            source: "centreon".into(),
            kind: crate::alert::AlertKind::Service,
            host: host.into(),
            host_alias: None,
            service: "disk".into(),
            state,
            notification_type: nt,
            output: format!("disk is {state}"),
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

    #[test]
    fn a_digests_news_is_one_mail_to_the_digests_ticket_listing_its_incidents() {
        use crate::alert::{NotificationType as N, State};
        let policy = CorrelationPolicy {
            max_new_incidents_per_minute: 0,
            ..CorrelationPolicy::default()
        };
        let mut state = CorrelationState::default();
        let t0 = 1_764_000_000;
        correlate::correlate(
            &mut state,
            &service_alert("a", State::Critical, N::Problem),
            t0,
            &policy,
        );
        correlate::correlate(
            &mut state,
            &service_alert("b", State::Critical, N::Problem),
            t0,
            &policy,
        );
        let mut events = Vec::new();
        for (i, host) in ["a", "b"].iter().enumerate() {
            let d = correlate::correlate(
                &mut state,
                &service_alert(host, State::Ok, N::Recovery),
                t0 + 90 + i as i64,
                &policy,
            );
            events.extend(d.mails().cloned());
        }
        assert_eq!(
            events.len(),
            3,
            "two member recoveries and the digest's own"
        );
        let mut digest = events[2].incident.clone();
        assert!(digest.is_digest);
        digest.record_ticket(42, None, Some(crate::correlate::TicketStatus::Open));
        let cfg = ComposeConfig::new("alertgate@example.test", "glpi@example.test");
        let mail = compose_news(&cfg, &digest, &events, None, t0 + 100).expect("composes");
        assert!(
            mail.subject.starts_with("[GLPI #0000042] "),
            "{}",
            mail.subject
        );
        assert!(mail.subject.contains(&digest.tag), "{}", mail.subject);
        assert!(mail.subject.contains("RECOVERED"), "{}", mail.subject);
        let text = mail_text(&mail.bytes);
        for e in &events[..2] {
            assert!(
                text.contains(&format!("{} a / disk: RECOVERED", e.incident.tag))
                    || text.contains(&format!("{} b / disk: RECOVERED", e.incident.tag)),
                "{text}"
            );
        }
        // Through the API: one follow-up text for the same news.
        let followup = news_text(&events[..2]);
        assert!(followup.starts_with("alertgate: 2 events"), "{followup}");
        assert_eq!(followup.lines().count(), 3);
    }

    #[test]
    fn urgency_follows_the_state() {
        use crate::alert::State;
        assert_eq!(urgency_of(State::Critical), 5);
        assert_eq!(urgency_of(State::Down), 5);
        assert_eq!(urgency_of(State::Unreachable), 4);
        assert_eq!(urgency_of(State::Warning), 3);
        assert_eq!(urgency_of(State::Ok), 2);
    }

    #[test]
    fn received_header_is_skipped_with_its_folded_lines() {
        let raw = b"Received: from a\r\n\tby b;\r\n\tdate\r\nSubject: x\r\n\r\nbody";
        assert_eq!(after_our_received(raw), b"Subject: x\r\n\r\nbody");
        assert_eq!(after_our_received(b"Subject: y\r\n"), b"Subject: y\r\n");
    }
}
