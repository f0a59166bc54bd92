//! The GLPI API worker: looks each new incident's ticket up by its tag once the open mail
//! was delivered (bounded backoff, until found or the lookup timeout), and carries out the
//! API actions the pipeline stored (solving tickets on recovery), retrying through outages.

use super::api::{lookup_backoff, ApiError, GlpiApi};
use crate::clock::Clock;
use crate::mail::Delivered;
use crate::store::actions::{self, ActionKind, ActionState};
use crate::store::lease::Lease;
use crate::store::{incidents, Db, Location, StoreError};
use crate::ticket::TicketInfo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A ticket still being looked up.
struct Lookup {
    attempts: u32,
    next_at: i64,
    /// After this, the lookup goes on in the background at the collector's pace.
    deadline: i64,
    /// The "not found in time" warning was logged.
    late: bool,
}

/// Rounds of actions per loop: a ticket's queued follow-ups go one after the other.
const ACTION_ROUNDS: usize = 32;

/// A lookup still unanswered this long is dropped (the incident is long over).
const LOOKUP_GIVE_UP_SECS: i64 = 86_400;

pub struct ApiWorker {
    pub api: GlpiApi,
    /// One connection for the worker's life (actions are polled every second).
    db: Arc<Mutex<Db>>,
    /// Explicit lookup timeout; 0: derived from the collector's pace and the backlog.
    pub lookup_timeout_secs: i64,
    collector_interval_secs: i64,
    collector_batch: i64,
    /// Every mail delivered: the ones that opened a ticket start its lookup.
    pub delivered: mpsc::UnboundedReceiver<Delivered>,
    /// Where found tickets go (the pipeline records them).
    pub found: mpsc::UnboundedSender<TicketInfo>,
    clock: Clock,
    /// The API user may solve tickets; otherwise solutions go as follow-ups.
    can_solve: bool,
    /// `[glpi_api]`, for the entity, category and requester of the tickets it creates.
    tickets: Option<super::GlpiApiConfig>,
    /// This gateway's lease on the actions it carries out (a shared PostgreSQL store).
    lease: Lease,
}

impl ApiWorker {
    pub fn new(
        api: GlpiApi,
        store: &Location,
        lookup_timeout_secs: i64,
        delivered: mpsc::UnboundedReceiver<Delivered>,
        found: mpsc::UnboundedSender<TicketInfo>,
    ) -> Result<ApiWorker, crate::store::StoreError> {
        let db = Db::open(store, crate::store::Durability::Derived)?;
        Ok(ApiWorker {
            api,
            db: Arc::new(Mutex::new(db)),
            lookup_timeout_secs,
            collector_interval_secs: 600,
            collector_batch: 10,
            delivered,
            found,
            clock: Clock::system(),
            can_solve: true,
            tickets: None,
            lease: Lease::default(),
        })
    }

    /// GLPI's collector pace (`[feedback] collector_interval_secs`, `collector_batch`).
    pub fn with_pace(mut self, interval_secs: i64, batch: i64) -> ApiWorker {
        self.collector_interval_secs = interval_secs.max(1);
        self.collector_batch = batch.max(1);
        self
    }

    /// A new lookup for a ticket whose first mail just left, behind `backlog` others.
    fn lookup(&self, now: i64, backlog: usize) -> Lookup {
        let wait = if self.lookup_timeout_secs > 0 {
            self.lookup_timeout_secs
        } else {
            crate::ticket::derived_ticket_wait(
                self.collector_interval_secs,
                self.collector_batch,
                backlog as u64,
            )
        };
        Lookup {
            attempts: 0,
            next_at: now,
            deadline: now + wait,
            late: false,
        }
    }

    /// Seconds to the next attempt: the usual backoff, never slower than the collector.
    fn backoff(&self, lookup: &Lookup, now: i64) -> i64 {
        let usual =
            (lookup_backoff(lookup.attempts) as i64).min(self.collector_interval_secs.max(5));
        if now < lookup.deadline {
            usual
        } else {
            usual.max(self.collector_interval_secs)
        }
    }

    /// The `[glpi_api]` section the tickets it creates take their fields from.
    pub fn with_tickets(mut self, config: Option<super::GlpiApiConfig>) -> ApiWorker {
        self.tickets = config;
        self
    }

    /// Whether the API user may solve tickets (from the rights check at start).
    pub fn with_solving(mut self, can_solve: bool) -> ApiWorker {
        self.can_solve = can_solve;
        self
    }

    /// Leases taken on the actions this gateway carries out (`[store] lease_secs`).
    pub fn with_lease(mut self, lease: Lease) -> ApiWorker {
        self.lease = lease;
        self
    }

    /// Read time from `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Clock) -> ApiWorker {
        self.clock = clock;
        self
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut lookups = self.pending_at_start().await;
        loop {
            let now = self.clock.now();
            while let Ok(delivered) = self.delivered.try_recv() {
                self.start_lookup(&mut lookups, delivered);
            }
            self.run_lookups(&mut lookups, now).await;
            // Each round takes the head of every ticket's queue; the next ones follow at once.
            for _ in 0..ACTION_ROUNDS {
                if self.run_actions(now).await == 0 {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                delivered = self.delivered.recv() => {
                    if let Some(delivered) = delivered {
                        self.start_lookup(&mut lookups, delivered);
                    }
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.api.close().await;
    }

    /// A delivered mail that opened a ticket: look its id up, from the time it left.
    fn start_lookup(&self, lookups: &mut HashMap<String, Lookup>, delivered: Delivered) {
        if delivered.opens_incident_ticket() {
            let lookup = self.lookup(delivered.at, lookups.len());
            lookups.entry(delivered.tag).or_insert(lookup);
        }
    }

    /// After a restart: open incidents without a ticket id (announced ones: their first
    /// mail left), looked up again from the start.
    async fn pending_at_start(&self) -> HashMap<String, Lookup> {
        let now = self.clock.now();
        let since = now - LOOKUP_GIVE_UP_SECS;
        let waiting = self
            .with_store(move |db| incidents::awaiting_ticket_since(db, since))
            .await
            .unwrap_or_default();
        let backlog = waiting.len();
        waiting
            .into_iter()
            .map(|tag| (tag, self.lookup(now, backlog)))
            .collect()
    }

    async fn run_lookups(&self, lookups: &mut HashMap<String, Lookup>, now: i64) {
        let due: Vec<String> = lookups
            .iter()
            .filter(|(_, l)| l.next_at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for tag in due {
            let result = self.api.find_ticket_by_tag(&tag).await;
            let Some(lookup) = lookups.get_mut(&tag) else {
                continue;
            };
            match result {
                Ok(Some((ticket_id, status))) => {
                    tracing::info!(tag = %tag, ticket = ticket_id, "GLPI ticket found through the API");
                    let _ = self.found.send(TicketInfo {
                        tag: tag.clone(),
                        ticket_id,
                        glpi_message_id: None,
                        status: Some(status),
                    });
                    lookups.remove(&tag);
                    continue;
                }
                Ok(None) => {
                    tracing::debug!(tag = %tag, attempts = lookup.attempts, "no GLPI ticket yet")
                }
                Err(e) => log_api_error(&e, &tag),
            }
            lookup.attempts += 1;
            let backoff = self.backoff(lookup, now);
            lookup.next_at = now + backoff;
            if now >= lookup.deadline && !lookup.late {
                lookup.late = true;
                tracing::warn!(tag = %tag, attempts = lookup.attempts, "GLPI ticket not found before the lookup timeout; still looking, at the collector's pace");
            }
            if now - lookup.deadline > LOOKUP_GIVE_UP_SECS {
                tracing::warn!(tag = %tag, attempts = lookup.attempts, "GLPI ticket not found in a day; giving up");
                lookups.remove(&tag);
            }
        }
    }

    /// Carries out the stored actions, the head of each ticket's queue only, so a
    /// solution never overtakes a follow-up that GLPI did not take yet.
    /// Returns how many actions succeeded (0: nothing more to do now).
    async fn run_actions(&self, now: i64) -> usize {
        let lease = self.lease.clone();
        let Some(due) = self
            .with_store(move |db| actions::due_leased(db, now, 16, &lease))
            .await
        else {
            return 0;
        };
        let mut done = 0;
        for action in due {
            // The earlier actions' API calls took time: is this one still ours?
            let (id, lease, at) = (action.id, self.lease.clone(), self.clock.now());
            let ours = self
                .with_store(move |db| actions::renew_lease(db, id, at, &lease))
                .await;
            if ours != Some(true) {
                continue;
            }
            let kind = if action.action == ActionKind::Solve && !self.can_solve {
                ActionKind::Followup
            } else {
                action.action
            };
            let result = match kind {
                ActionKind::Solve => {
                    self.api
                        .solve_ticket(action.ticket_id, &action.content)
                        .await
                }
                ActionKind::Followup => match self.solved_by_people(&action).await {
                    Ok(true) => {
                        let id = action.id;
                        self.with_store(move |db| {
                            actions::finish(
                                db,
                                id,
                                ActionState::Skipped,
                                now,
                                Some("ticket solved or closed in GLPI"),
                            )
                        })
                        .await;
                        continue;
                    }
                    Ok(false) => {
                        self.api
                            .add_followup(action.ticket_id, &action.content)
                            .await
                    }
                    Err(e) => Err(e),
                },
                ActionKind::Reopen => {
                    self.api
                        .add_followup(action.ticket_id, &action.content)
                        .await
                }
                ActionKind::Create => match self.create(&action.content).await {
                    Ok(ticket_id) => {
                        tracing::info!(tag = %action.tag, ticket = ticket_id, "GLPI ticket created through the API");
                        let _ = self.found.send(TicketInfo {
                            tag: action.tag.clone(),
                            ticket_id,
                            glpi_message_id: None,
                            status: Some(crate::ticket::TicketStatus::Open),
                        });
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            let (state, next_at, error) = match &result {
                Ok(()) => {
                    tracing::info!(tag = %action.tag, ticket = action.ticket_id, action = %kind, "GLPI ticket updated through the API");
                    done += 1;
                    (ActionState::Done, now, None)
                }
                Err(e) if e.is_transient() => {
                    log_api_error(e, &action.tag);
                    (
                        ActionState::Pending,
                        now + lookup_backoff(action.attempts + 1) as i64,
                        Some(e.to_string()),
                    )
                }
                Err(e) if kind == ActionKind::Solve => {
                    // The recovery must still reach the ticket: as a follow-up.
                    tracing::error!(tag = %action.tag, ticket = action.ticket_id, error = %e, "GLPI refused the solution; adding the recovery as a follow-up instead");
                    let id = action.id;
                    self.with_store(move |db| actions::convert(db, id, ActionKind::Followup, now))
                        .await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(tag = %action.tag, ticket = action.ticket_id, action = %kind, error = %e, "GLPI refused the action; giving up");
                    (ActionState::Failed, now, Some(e.to_string()))
                }
            };
            self.with_store(move |db| {
                actions::finish(db, action.id, state, next_at, error.as_deref())
            })
            .await;
        }
        done
    }
}

impl ApiWorker {
    /// Reads the ticket's status before a follow-up: one to a ticket people solved would
    /// reopen it. A solved or closed ticket is reported to the pipeline (which then holds
    /// the incident's news, as for a notification saying so).
    async fn solved_by_people(&self, action: &actions::GlpiAction) -> Result<bool, ApiError> {
        match self.api.ticket_status(action.ticket_id).await? {
            Some(status) if status.is_done() => {
                tracing::info!(tag = %action.tag, ticket = action.ticket_id, ?status, "ticket solved or closed in GLPI; follow-up not sent");
                let _ = self.found.send(TicketInfo {
                    tag: action.tag.clone(),
                    ticket_id: action.ticket_id,
                    glpi_message_id: None,
                    status: Some(status),
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `POST Ticket` for a stored creation (`{"name", "content", "urgency"}`).
    async fn create(&self, input: &str) -> Result<u64, ApiError> {
        let input: serde_json::Value = serde_json::from_str(input)
            .map_err(|e| ApiError::Config(format!("stored ticket input unreadable: {e}")))?;
        let text = |k: &str| {
            input
                .get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
        };
        let urgency = input
            .get("urgency")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(3);
        let cfg = self.tickets.as_ref().ok_or_else(|| {
            ApiError::Config("no [glpi_api] section to create tickets with".into())
        })?;
        let ticket = super::NewTicket::new(cfg, text("name"), text("content"), urgency as u8);
        self.api.create_ticket(&ticket).await
    }

    /// Run a store call on a blocking thread with the worker's connection; errors are
    /// logged (the next round tries again).
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || match db.lock() {
            Ok(mut db) => f(&mut db),
            Err(_) => Err(StoreError::LockPoisoned("GLPI worker")),
        })
        .await;
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "GLPI worker: store call failed");
                None
            }
            Err(_) => None,
        }
    }
}

fn log_api_error(e: &ApiError, tag: &str) {
    if e.is_transient() {
        tracing::warn!(tag = %tag, error = %e, "GLPI API unavailable; will retry");
    } else {
        tracing::error!(tag = %tag, error = %e, "GLPI API error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::OutboundKind;

    /// Only a delivered mail its producer queued as an incident's first starts a ticket
    /// lookup, timed from its delivery; news and forwarded mail start none.
    #[test]
    fn only_a_delivered_first_mail_starts_a_ticket_lookup() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Location::Sqlite(dir.path().join("db.sqlite"));
        drop(crate::store::open(&store).expect("the store opens"));
        let api = GlpiApi::new(&super::super::GlpiApiConfig::new(
            "http://127.0.0.1:9/apirest.php",
            "token",
        ))
        .expect("a client");
        let (_tx, rx) = mpsc::unbounded_channel();
        let (found, _found_rx) = mpsc::unbounded_channel();
        let worker = ApiWorker::new(api, &store, 600, rx, found).expect("the worker");
        let mut lookups = HashMap::new();
        for (tag, kind) in [
            ("ALERT-0a1b2c3d", OutboundKind::Open),
            ("ALERT-0a1b2c3e", OutboundKind::News),
            ("MAIL-4", OutboundKind::Unmatched),
        ] {
            let delivered = Delivered {
                tag: tag.into(),
                kind,
                at: 1_000,
            };
            worker.start_lookup(&mut lookups, delivered);
        }
        let tags: Vec<&String> = lookups.keys().collect();
        assert_eq!(tags, ["ALERT-0a1b2c3d"]);
        let lookup = &lookups["ALERT-0a1b2c3d"];
        assert_eq!((lookup.next_at, lookup.deadline), (1_000, 1_600));
    }
}
