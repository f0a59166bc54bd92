//! The GLPI API worker: looks each new incident's ticket up by its tag once the open mail
//! was delivered (bounded backoff, until found or the lookup timeout), and carries out the
//! API actions the pipeline stored (solving tickets on recovery), retrying through outages.

use super::api::{lookup_backoff, ApiError, GlpiApi};
use crate::clock::Clock;
use crate::pipeline::TicketInfo;
use crate::store::{actions, incidents, StoreError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A ticket still being looked up.
struct Lookup {
    attempts: u32,
    next_at: i64,
    deadline: i64,
}

pub struct ApiWorker {
    pub api: GlpiApi,
    /// One connection for the worker's life (actions are polled every second).
    conn: Arc<Mutex<rusqlite::Connection>>,
    pub lookup_timeout_secs: i64,
    /// Tags whose open mail was delivered.
    pub opened: mpsc::UnboundedReceiver<String>,
    /// Where found tickets go (the pipeline records them).
    pub found: mpsc::UnboundedSender<TicketInfo>,
    clock: Clock,
}

impl ApiWorker {
    pub fn new(
        api: GlpiApi,
        store: PathBuf,
        lookup_timeout_secs: i64,
        opened: mpsc::UnboundedReceiver<String>,
        found: mpsc::UnboundedSender<TicketInfo>,
    ) -> Result<ApiWorker, crate::store::StoreError> {
        let conn = crate::store::open_with(&store, crate::store::Durability::Derived)?;
        Ok(ApiWorker {
            api,
            conn: Arc::new(Mutex::new(conn)),
            lookup_timeout_secs,
            opened,
            found,
            clock: Clock::system(),
        })
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
            while let Ok(tag) = self.opened.try_recv() {
                lookups.entry(tag).or_insert(Lookup {
                    attempts: 0,
                    next_at: now,
                    deadline: now + self.lookup_timeout_secs,
                });
            }
            self.run_lookups(&mut lookups, now).await;
            self.run_actions(now).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                tag = self.opened.recv() => {
                    if let Some(tag) = tag {
                        lookups.entry(tag).or_insert(Lookup { attempts: 0, next_at: now, deadline: now + self.lookup_timeout_secs });
                    }
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        self.api.close().await;
    }

    /// After a restart: open incidents without a ticket id, still within the timeout.
    async fn pending_at_start(&self) -> HashMap<String, Lookup> {
        let timeout = self.lookup_timeout_secs;
        let loaded = self.with_store(|conn| incidents::load(conn, false)).await;
        let now = self.clock.now();
        match loaded {
            Some(list) => list
                .into_iter()
                .filter(|i| i.ticket_id.is_none() && i.first_seen + timeout > now)
                .map(|i| {
                    (
                        i.tag,
                        Lookup {
                            attempts: 0,
                            next_at: now,
                            deadline: i.first_seen + timeout,
                        },
                    )
                })
                .collect(),
            _ => HashMap::new(),
        }
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
            lookup.next_at = now + lookup_backoff(lookup.attempts) as i64;
            if lookup.next_at > lookup.deadline {
                tracing::warn!(tag = %tag, attempts = lookup.attempts, "GLPI ticket not found before the lookup timeout; giving up");
                lookups.remove(&tag);
            }
        }
    }

    async fn run_actions(&self, now: i64) {
        let Some(due) = self
            .with_store(move |conn| actions::due(conn, now, 16))
            .await
        else {
            return;
        };
        for action in due {
            let result = match action.action.as_str() {
                actions::SOLVE => {
                    self.api
                        .solve_ticket(action.ticket_id, &action.content)
                        .await
                }
                other => Err(ApiError::Config(format!("unknown GLPI action `{other}`"))),
            };
            let (state, next_at, error) = match &result {
                Ok(()) => {
                    tracing::info!(tag = %action.tag, ticket = action.ticket_id, "GLPI ticket solved on recovery");
                    ("done", now, None)
                }
                Err(e) if e.is_transient() => {
                    log_api_error(e, &action.tag);
                    (
                        "pending",
                        now + lookup_backoff(action.attempts + 1) as i64,
                        Some(e.to_string()),
                    )
                }
                Err(e) => {
                    tracing::error!(tag = %action.tag, ticket = action.ticket_id, error = %e, "GLPI refused the action; giving up");
                    ("failed", now, Some(e.to_string()))
                }
            };
            self.with_store(move |conn| {
                actions::finish(conn, action.id, state, next_at, error.as_deref())
            })
            .await;
        }
    }
}

impl ApiWorker {
    /// Run a store call on a blocking thread with the worker's connection; errors are
    /// logged (the next round tries again).
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let conn = self.conn.clone();
        let result = tokio::task::spawn_blocking(move || match conn.lock() {
            Ok(conn) => f(&conn),
            Err(_) => Err(StoreError::Corrupt(
                "GLPI worker connection lock poisoned".into(),
            )),
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
