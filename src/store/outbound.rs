//! The outbound queue: composed mails waiting for the relay, in order per incident, with
//! retry times and dead letters; also the queue the delivery worker reads through a trait.

use super::db::{Db, Dialect, Location, Row};
use super::lease::Lease;
use super::StoreError;
use crate::deliver::{OutboundItem, OutboundQueue, QueueError};
use crate::mail::{Delivered, OutboundKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundState {
    /// Ready to send at `next_attempt_at`.
    Queued,
    /// Waiting for the incident's GLPI ticket id before it may be sent.
    Held,
    Sent,
    /// Refused for good (5xx) or too old; kept for `alertgate queue`.
    Dead,
}

impl OutboundState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundState::Queued => "queued",
            OutboundState::Held => "held",
            OutboundState::Sent => "sent",
            OutboundState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<OutboundState> {
        [
            OutboundState::Queued,
            OutboundState::Held,
            OutboundState::Sent,
            OutboundState::Dead,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// A state read back from the store; an unknown one is named in the error.
    pub fn from_db(s: &str) -> Result<OutboundState, StoreError> {
        OutboundState::parse(s).ok_or_else(|| StoreError::BadValue {
            table: "outbound",
            column: "state",
            value: s.to_owned(),
        })
    }
}

impl std::fmt::Display for OutboundState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A composed mail to enqueue.
#[derive(Debug, Clone)]
pub struct NewOutbound<'a> {
    pub order_key: &'a str,
    pub message_id: &'a str,
    pub subject: &'a str,
    pub envelope_from: &'a str,
    pub envelope_to: &'a [String],
    pub raw: &'a [u8],
    pub state: OutboundState,
    /// What the mail is, as its producer says: its delivery is reported with it.
    pub kind: OutboundKind,
    pub spool_id: Option<i64>,
    /// Not sent before this time; for a held mail, when it is released unthreaded.
    pub not_before: i64,
}

pub fn enqueue(db: &mut Db, mail: &NewOutbound<'_>, now: i64) -> Result<i64, StoreError> {
    let to = serde_json::to_string(mail.envelope_to).map_err(|source| StoreError::Json {
        what: "encoding the recipients",
        source,
    })?;
    db.query_one(
        "INSERT INTO outbound (order_key, message_id, subject, envelope_from, envelope_to, raw, state, queued_at, next_attempt_at, spool_id, kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        &[
            mail.order_key.into(),
            mail.message_id.into(),
            mail.subject.into(),
            mail.envelope_from.into(),
            to.into(),
            mail.raw.into(),
            mail.state.as_str().into(),
            now.into(),
            mail.not_before.max(now).into(),
            mail.spool_id.into(),
            mail.kind.as_str().into(),
        ],
    )?
    .int(0)
}

/// Keep the correlation event a mail was composed from, so a held mail can be composed
/// again once its ticket id is known.
pub fn set_event(db: &mut Db, id: i64, event: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE outbound SET event = $1 WHERE id = $2",
        &[event.into(), id.into()],
    )?;
    Ok(())
}

/// One row of the outbound queue, as listed (without the bytes unless asked).
#[derive(Debug, Clone)]
pub struct OutboundRow {
    pub id: i64,
    pub order_key: String,
    pub message_id: String,
    pub subject: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub state: OutboundState,
    pub attempts: u32,
    pub queued_at: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub sent_at: Option<i64>,
    pub kind: OutboundKind,
    pub raw: Option<Vec<u8>>,
}

const COLUMNS: &str =
    "id, order_key, message_id, subject, envelope_from, envelope_to, state, attempts, queued_at, next_attempt_at, last_error, sent_at, kind";

fn row(mut r: Row, with_raw: bool) -> Result<OutboundRow, StoreError> {
    let to = r.text(5)?;
    Ok(OutboundRow {
        id: r.int(0)?,
        order_key: r.text(1)?,
        message_id: r.text(2)?,
        subject: r.text(3)?,
        envelope_from: r.text(4)?,
        envelope_to: serde_json::from_str(&to).unwrap_or_default(),
        state: OutboundState::from_db(&r.text(6)?)?,
        attempts: r.int(7)? as u32,
        queued_at: r.int(8)?,
        next_attempt_at: r.int(9)?,
        last_error: r.opt_text(10)?,
        sent_at: r.opt_int(11)?,
        kind: kind_from_db(&r.text(12)?)?,
        raw: if with_raw {
            Some(r.take_blob(13)?)
        } else {
            None
        },
    })
}

fn kind_from_db(s: &str) -> Result<OutboundKind, StoreError> {
    OutboundKind::parse(s).ok_or_else(|| StoreError::BadValue {
        table: "outbound",
        column: "kind",
        value: s.to_owned(),
    })
}

fn rows(found: Vec<Row>, with_raw: bool) -> Result<Vec<OutboundRow>, StoreError> {
    found.into_iter().map(|r| row(r, with_raw)).collect()
}

/// The head of each incident's queue that is due now, oldest first: one per order key,
/// so an incident's mails go out in the order they were composed.
pub fn due(db: &mut Db, now: i64, limit: usize) -> Result<Vec<OutboundRow>, StoreError> {
    due_leased(db, now, limit, &Lease::default())
}

/// As `due`, for gateways sharing the queue: on PostgreSQL the rows returned are leased
/// to `lease` (taken when free, expired or already its own, renewed then), so only one
/// gateway sends each; an incident's next mail waits until its head is sent by
/// whichever gateway holds it. SQLite has one gateway: no lease is written.
pub fn due_leased(
    db: &mut Db,
    now: i64,
    limit: usize,
    lease: &Lease,
) -> Result<Vec<OutboundRow>, StoreError> {
    if db.dialect() == Dialect::Postgres {
        return due_claimed(db, now, limit, lease);
    }
    due_heads(db, now, limit, true)
}

/// SQLite's `due`, with or without the bytes.
fn due_heads(
    db: &mut Db,
    now: i64,
    limit: usize,
    with_raw: bool,
) -> Result<Vec<OutboundRow>, StoreError> {
    // Walks the pending rows in id order (partial index) and stops at `limit`; each
    // candidate is checked against older pending mail of its incident (order_key index).
    // A GROUP BY over the whole queue on every call made delivery O(queue length).
    let hint = match db.dialect() {
        Dialect::Sqlite => "INDEXED BY outbound_pending",
        Dialect::Postgres => "",
    };
    let raw = if with_raw { ", raw" } else { "" };
    let sql = format!(
        "SELECT {COLUMNS}{raw} FROM outbound AS o {hint}
         WHERE o.state IN ('queued', 'held') AND o.state = 'queued' AND o.next_attempt_at <= $1
           AND NOT EXISTS (SELECT 1 FROM outbound AS p
                           WHERE p.order_key = o.order_key AND p.id < o.id AND p.state IN ('queued', 'held'))
         ORDER BY o.id LIMIT $2"
    );
    rows(
        db.query(&sql, &[now.into(), (limit as i64).into()])?,
        with_raw,
    )
}

/// As `due_leased`, without the rows in `skip`, whose bytes SQLite then does not read
/// (the delivery worker's in-flight mails are still queued, and would come back with
/// every look). PostgreSQL renews the lease on those too, so they are read and dropped.
pub fn due_skipping(
    db: &mut Db,
    now: i64,
    limit: usize,
    skip: &std::collections::HashSet<i64>,
    lease: &Lease,
) -> Result<Vec<OutboundRow>, StoreError> {
    let mut heads = match db.dialect() {
        Dialect::Postgres => due_claimed(db, now, limit + skip.len(), lease)?,
        Dialect::Sqlite => due_heads(db, now, limit + skip.len(), false)?,
    };
    heads.retain(|r| !skip.contains(&r.id));
    heads.truncate(limit);
    for head in heads.iter_mut().filter(|r| r.raw.is_none()) {
        let mut found =
            db.query_one("SELECT raw FROM outbound WHERE id = $1", &[head.id.into()])?;
        head.raw = Some(found.take_blob(0)?);
    }
    Ok(heads)
}

/// Records several deliveries (id, when) in one transaction: all of them or none.
pub fn mark_sent_all(db: &mut Db, sent: &[(i64, i64)]) -> Result<(), StoreError> {
    let mut tx = db.transaction()?;
    for &(id, at) in sent {
        mark_sent(&mut tx, id, at)?;
    }
    tx.commit()
}

fn due_claimed(
    db: &mut Db,
    now: i64,
    limit: usize,
    lease: &Lease,
) -> Result<Vec<OutboundRow>, StoreError> {
    // SKIP LOCKED: a row another gateway is leasing this instant is neither waited for
    // nor taken; the NOT EXISTS keeps that incident's later mails back meanwhile.
    let sql = format!(
        "WITH heads AS (
             SELECT o.id AS head_id FROM outbound AS o
             WHERE o.state = 'queued' AND o.next_attempt_at <= $1
               AND (o.lease_until IS NULL OR o.lease_until <= $1 OR o.lease_owner = $2)
               AND NOT EXISTS (SELECT 1 FROM outbound AS p
                               WHERE p.order_key = o.order_key AND p.id < o.id AND p.state IN ('queued', 'held'))
             ORDER BY o.id LIMIT $3
             FOR UPDATE OF o SKIP LOCKED)
         UPDATE outbound SET lease_owner = $2, lease_until = $4
         FROM heads WHERE outbound.id = heads.head_id
         RETURNING {COLUMNS}, raw"
    );
    let mut claimed = rows(
        db.query(
            &super::lease::claim_sql(&sql),
            &[
                now.into(),
                lease.owner().into(),
                (limit as i64).into(),
                lease.until(now).into(),
            ],
        )?,
        true,
    )?;
    claimed.sort_by_key(|r| r.id);
    Ok(claimed)
}

/// Renews `lease` on the mails `ids` this gateway is sending right now, so the other
/// gateway does not take them while a slow relay keeps this one busy longer than a
/// lease (a relay may take 10 minutes to answer the final dot). Returns how many of them
/// another gateway holds now (this one lost its lease: the store was out of reach for
/// longer than the lease). SQLite has one gateway and no leases: none.
pub fn renew_leases(
    db: &mut Db,
    ids: &[i64],
    now: i64,
    lease: &Lease,
) -> Result<usize, StoreError> {
    if db.dialect() != Dialect::Postgres {
        return Ok(0);
    }
    let mut lost = 0;
    for id in ids {
        let renewed = db.execute(
            "UPDATE outbound SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'queued'",
            &[lease.until(now).into(), (*id).into(), lease.owner().into()],
        )?;
        // Not renewed: just sent or retried (its outcome is recorded), or taken over.
        if renewed == 0 {
            let taken = db.query(
                "SELECT id FROM outbound WHERE id = $1 AND state = 'queued' AND lease_owner <> $2",
                &[(*id).into(), lease.owner().into()],
            )?;
            lost += taken.len();
        }
    }
    Ok(lost)
}

pub fn mark_sent(db: &mut Db, id: i64, now: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE outbound SET state = 'sent', sent_at = $1, attempts = attempts + 1, last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $2",
        &[now.into(), id.into()],
    )?;
    Ok(())
}

pub fn mark_retry(
    db: &mut Db,
    id: i64,
    next_attempt_at: i64,
    error: &str,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE outbound SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, lease_owner = NULL, lease_until = NULL WHERE id = $3",
        &[next_attempt_at.into(), error.into(), id.into()],
    )?;
    Ok(())
}

pub fn mark_dead(db: &mut Db, id: i64, error: &str) -> Result<(), StoreError> {
    db.execute(
        "UPDATE outbound SET state = 'dead', attempts = attempts + 1, last_error = $1, lease_owner = NULL, lease_until = NULL WHERE id = $2",
        &[error.into(), id.into()],
    )?;
    Ok(())
}

/// Listing for `alertgate queue list`: everything not yet sent, plus the latest sent ones.
/// A row that cannot be read is listed as damaged instead of failing the listing.
pub fn list_checked(
    db: &mut Db,
    state: Option<OutboundState>,
    limit: usize,
) -> Result<Vec<Result<OutboundRow, super::DamagedRow>>, StoreError> {
    let limit = limit as i64;
    let found = match state {
        Some(state) => db.query(
            "SELECT id FROM outbound WHERE state = $1 ORDER BY id DESC LIMIT $2",
            &[state.as_str().into(), limit.into()],
        )?,
        None => db.query(
            "SELECT id FROM outbound ORDER BY id DESC LIMIT $1",
            &[limit.into()],
        )?,
    };
    let mut ids = found
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<Vec<_>, _>>()?;
    ids.reverse();
    let sql = format!("SELECT {COLUMNS} FROM outbound WHERE id = $1");
    Ok(ids
        .into_iter()
        .filter_map(|id| {
            let read = db
                .query_opt(&sql, &[id.into()])
                .and_then(|r| r.map(|r| row(r, false)).transpose());
            match read {
                Ok(found) => found.map(Ok),
                Err(e) => Some(Err(super::DamagedRow {
                    id,
                    error: e.to_string(),
                })),
            }
        })
        .collect())
}

/// The readable rows of `list_checked`; damaged ones are skipped with a warning.
pub fn list(
    db: &mut Db,
    state: Option<OutboundState>,
    limit: usize,
) -> Result<Vec<OutboundRow>, StoreError> {
    Ok(super::readable(list_checked(db, state, limit)?))
}

pub fn get(db: &mut Db, id: i64) -> Result<Option<OutboundRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS}, raw FROM outbound WHERE id = $1");
    db.query_opt(&sql, &[id.into()])?
        .map(|r| row(r, true))
        .transpose()
}

/// Every outbound mail with its bytes, oldest first (tests, `replay`'s checks).
pub fn all_with_raw(db: &mut Db) -> Result<Vec<OutboundRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS}, raw FROM outbound ORDER BY id");
    rows(db.query(&sql, &[])?, true)
}

pub fn counts(db: &mut Db) -> Result<Vec<(String, i64)>, StoreError> {
    db.query(
        "SELECT state, COUNT(*) FROM outbound GROUP BY state ORDER BY state",
        &[],
    )?
    .into_iter()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .collect()
}

/// Put dead (or waiting) mails back in the queue, due now. `None` = every dead mail.
pub fn retry(db: &mut Db, id: Option<i64>, now: i64) -> Result<usize, StoreError> {
    let n = match id {
        Some(id) => db.execute(
            "UPDATE outbound SET state = 'queued', next_attempt_at = $1 WHERE id = $2 AND state IN ('dead', 'queued')",
            &[now.into(), id.into()],
        )?,
        None => db.execute(
            "UPDATE outbound SET state = 'queued', next_attempt_at = $1 WHERE state = 'dead'",
            &[now.into()],
        )?,
    };
    Ok(n as usize)
}

/// Delete one mail, or every mail in a final state (`dead` or `sent`).
pub fn purge(
    db: &mut Db,
    id: Option<i64>,
    state: Option<OutboundState>,
) -> Result<usize, StoreError> {
    let n = match (id, state) {
        (Some(id), _) => db.execute("DELETE FROM outbound WHERE id = $1", &[id.into()])?,
        (None, Some(st)) => db.execute(
            "DELETE FROM outbound WHERE state = $1",
            &[st.as_str().into()],
        )?,
        (None, None) => 0,
    };
    Ok(n as usize)
}

/// Release one held mail as it was composed (unthreaded).
pub fn requeue(db: &mut Db, id: i64, now: i64) -> Result<usize, StoreError> {
    Ok(db.execute(
        "UPDATE outbound SET state = 'queued', next_attempt_at = $1 WHERE id = $2 AND state = 'held'",
        &[now.into(), id.into()],
    )? as usize)
}

/// A held mail, with what it was composed from.
#[derive(Debug, Clone)]
pub struct HeldMail {
    pub id: i64,
    pub event: Option<String>,
    pub spool_id: Option<i64>,
}

pub fn held_for(db: &mut Db, order_key: &str) -> Result<Vec<HeldMail>, StoreError> {
    db.query(
        "SELECT id, event, spool_id FROM outbound WHERE order_key = $1 AND state = 'held' ORDER BY id",
        &[order_key.into()],
    )?
    .into_iter()
    .map(|r| {
        Ok(HeldMail {
            id: r.int(0)?,
            event: r.opt_text(1)?,
            spool_id: r.opt_int(2)?,
        })
    })
    .collect()
}

/// Replace a held mail by its threaded (or merged) version, which has a Message-ID of
/// its own, and queue it now.
pub fn requeue_composed(
    db: &mut Db,
    id: i64,
    message_id: &str,
    subject: &str,
    raw: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE outbound SET message_id = $1, subject = $2, raw = $3, state = 'queued', next_attempt_at = $4 WHERE id = $5",
        &[
            message_id.into(),
            subject.into(),
            raw.into(),
            now.into(),
            id.into(),
        ],
    )?;
    Ok(())
}

pub fn delete(db: &mut Db, id: i64) -> Result<(), StoreError> {
    db.execute("DELETE FROM outbound WHERE id = $1", &[id.into()])?;
    Ok(())
}

/// Held mails whose wait for a ticket id is over go out unthreaded; returns their keys.
pub fn release_expired_holds(db: &mut Db, now: i64) -> Result<Vec<String>, StoreError> {
    let keys = held_due_keys(db, now)?;
    if !keys.is_empty() {
        db.execute(
            "UPDATE outbound SET state = 'queued', next_attempt_at = $1 WHERE state = 'held' AND next_attempt_at <= $1",
            &[now.into()],
        )?;
    }
    Ok(keys)
}

/// Incidents with held mail due for a decision (their wait for a ticket id, or for
/// the pace of GLPI's intake, is over).
pub fn held_due_keys(db: &mut Db, now: i64) -> Result<Vec<String>, StoreError> {
    db.query(
        "SELECT DISTINCT order_key FROM outbound WHERE state = 'held' AND next_attempt_at <= $1",
        &[now.into()],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

/// Queued mails whose time has come: the delivery worker's backlog at `now`.
pub fn count_due(db: &mut Db, now: i64) -> Result<i64, StoreError> {
    db.query_one(
        "SELECT COUNT(*) FROM outbound WHERE state = 'queued' AND next_attempt_at <= $1",
        &[now.into()],
    )?
    .int(0)
}

/// Mails sent to GLPI at or after `since` (they may still wait in its mailbox).
pub fn sent_since(db: &mut Db, since: i64) -> Result<u64, StoreError> {
    Ok(db
        .query_one(
            "SELECT COUNT(*) FROM outbound WHERE state = 'sent' AND sent_at >= $1",
            &[since.into()],
        )?
        .int(0)? as u64)
}

/// Look at an incident's held mail again at `at`.
pub fn hold_until(db: &mut Db, order_key: &str, at: i64) -> Result<(), StoreError> {
    db.execute(
        // Rows already due then are left alone (PostgreSQL would write a new version).
        "UPDATE outbound SET next_attempt_at = $1
         WHERE order_key = $2 AND state = 'held' AND next_attempt_at <> $1",
        &[at.into(), order_key.into()],
    )?;
    Ok(())
}

/// When the incident's latest mail left (or is due to leave) for GLPI.
pub fn last_release_at(db: &mut Db, order_key: &str) -> Result<Option<i64>, StoreError> {
    db.query_one(
        "SELECT MAX(COALESCE(sent_at, next_attempt_at)) FROM outbound
         WHERE order_key = $1 AND state IN ('queued', 'sent')",
        &[order_key.into()],
    )?
    .opt_int(0)
}

/// The highest outbound id committed (0 for an empty queue).
fn newest_id(db: &mut Db) -> Result<i64, StoreError> {
    db.query_one("SELECT COALESCE(MAX(id), 0) FROM outbound", &[])?
        .int(0)
}

/// The outbound queue as the delivery worker sees it, on its own connection.
pub struct StoreQueue {
    db: std::sync::Mutex<Db>,
    /// SQLite's write-ahead log, synced before mail leaves (see `due`); none for a
    /// server database, whose commits are durable when they return.
    wal: Option<std::path::PathBuf>,
    /// Every outbound row up to this id is known to be on disk.
    synced_through: std::sync::atomic::AtomicI64,
    /// Told of every mail delivered, with what its producer stored it as.
    delivered: Option<tokio::sync::mpsc::UnboundedSender<Delivered>>,
    /// This gateway's lease on the mails it sends (a shared PostgreSQL queue).
    lease: Lease,
    /// Gateways share this queue (PostgreSQL): the mails being sent are leased.
    shared: bool,
}

impl StoreQueue {
    pub fn open(location: &Location) -> Result<StoreQueue, StoreError> {
        Ok(StoreQueue {
            db: std::sync::Mutex::new(Db::open(location, super::Durability::Derived)?),
            wal: location.sqlite_path().map(super::db::wal_path),
            synced_through: std::sync::atomic::AtomicI64::new(0),
            delivered: None,
            lease: Lease::default(),
            shared: matches!(location, Location::Postgres(_)),
        })
    }

    /// Leases taken on the mails this gateway sends (`[store] lease_secs`).
    pub fn with_lease(mut self, lease: Lease) -> StoreQueue {
        self.lease = lease;
        self
    }

    /// Report each delivered mail to `tx` (the GLPI worker looks up the tickets they open).
    pub fn report_delivered(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<Delivered>,
    ) -> StoreQueue {
        self.delivered = Some(tx);
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Db) -> Result<T, StoreError>) -> Result<T, QueueError> {
        let mut db = self
            .db
            .lock()
            .map_err(|_| QueueError::new(StoreError::LockPoisoned("delivery queue")))?;
        f(&mut db).map_err(QueueError::new)
    }
}

/// Puts every commit made so far on disk. The pipeline's commits are `Derived` (not
/// fsynced): a power cut or a disk error may undo one, and the spooled alert is then
/// composed again under a new incident tag. Had its first mail already left, GLPI would
/// get it twice under two Message-IDs, as two tickets. Syncing the log before mail leaves
/// makes every mail that leaves one the store remembers.
fn sync_commits(wal: &std::path::Path) -> Result<(), QueueError> {
    match std::fs::File::open(wal) {
        // Checkpoints sync the database file before the log is reused.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(file) => file.sync_data(),
    }
    .map_err(|e| {
        QueueError::new(format!(
            "cannot put the queue on disk before sending ({}): {e}",
            wal.display()
        ))
    })
}

impl StoreQueue {
    /// The due heads not in `skip`, once every row up to them is on disk.
    fn due_items(
        &self,
        now: i64,
        limit: usize,
        skip: &std::collections::HashSet<i64>,
    ) -> Result<Vec<OutboundItem>, QueueError> {
        use std::sync::atomic::Ordering;
        let synced = self.synced_through.load(Ordering::Relaxed);
        let (rows, newest) = self.with(|db| {
            let rows = due_skipping(db, now, limit, skip, &self.lease)?;
            // One sync covers every row committed so far: a pipeline batch, not a mail.
            let newest = match rows.iter().any(|r| r.id > synced) {
                true => Some(newest_id(db)?),
                false => None,
            };
            Ok((rows, newest))
        })?;
        if let Some(newest) = newest {
            if let Some(wal) = &self.wal {
                sync_commits(wal)?;
            }
            self.synced_through.fetch_max(newest, Ordering::Relaxed);
        }
        Ok(rows
            .into_iter()
            .map(|r| OutboundItem {
                id: r.id,
                order_key: r.order_key,
                envelope_from: r.envelope_from,
                envelope_to: r.envelope_to,
                raw: r.raw.unwrap_or_default(),
                attempts: r.attempts,
                queued_at: r.queued_at,
                message_id: r.message_id,
                kind: r.kind,
            })
            .collect())
    }
}

impl OutboundQueue for StoreQueue {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboundItem>, QueueError> {
        self.due_items(now, limit, &Default::default())
    }

    fn due_skipping(
        &self,
        now: i64,
        limit: usize,
        skip: &std::collections::HashSet<i64>,
    ) -> Result<Vec<OutboundItem>, QueueError> {
        self.due_items(now, limit, skip)
    }

    fn mark_sent(&self, id: i64, now: i64) -> Result<(), QueueError> {
        self.with(|db| mark_sent(db, id, now))
    }

    fn mark_sent_all(&self, sent: &[(i64, i64)]) -> Result<(), QueueError> {
        self.with(|db| mark_sent_all(db, sent))
    }

    fn renew_every(&self) -> Option<std::time::Duration> {
        // A third of the lease: two renewals may fail before the other gateway may take it.
        self.shared
            .then(|| std::time::Duration::from_secs((self.lease.secs() / 3).max(1).unsigned_abs()))
    }

    fn renew(&self, ids: &[i64], now: i64) -> Result<usize, QueueError> {
        self.with(|db| renew_leases(db, ids, now, &self.lease))
    }

    fn mark_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), QueueError> {
        self.with(|db| mark_retry(db, id, next_attempt_at, error))
    }

    fn mark_dead(&self, id: i64, error: &str) -> Result<(), QueueError> {
        self.with(|db| mark_dead(db, id, error))
    }
    fn on_delivered(&self, delivered: Delivered) {
        if let Some(tx) = &self.delivered {
            // No subscriber left (shutdown): nobody waits for the event.
            let _ = tx.send(delivered);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail<'a>(key: &'a str, id: &'a str, to: &'a [String]) -> NewOutbound<'a> {
        NewOutbound {
            order_key: key,
            message_id: id,
            subject: "s",
            envelope_from: "a@example.test",
            envelope_to: to,
            raw: b"Subject: s\r\n\r\nx\r\n",
            state: OutboundState::Queued,
            kind: OutboundKind::News,
            spool_id: None,
            not_before: 0,
        }
    }

    #[test]
    fn due_returns_only_the_head_of_each_key_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = super::super::open(&Location::Sqlite(dir.path().join("db"))).unwrap();
        let to = vec!["glpi@example.test".to_string()];
        let a0 = enqueue(&mut db, &mail("A", "a0", &to), 10).unwrap();
        let b0 = enqueue(&mut db, &mail("B", "b0", &to), 10).unwrap();
        let a1 = enqueue(&mut db, &mail("A", "a1", &to), 10).unwrap();
        let ids: Vec<i64> = due(&mut db, 10, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![a0, b0]);
        // A's head fails for now: A's second mail must wait behind it.
        mark_retry(&mut db, a0, 100, "451 try later").unwrap();
        let ids: Vec<i64> = due(&mut db, 20, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![b0]);
        mark_sent(&mut db, b0, 20).unwrap();
        mark_sent(&mut db, a0, 100).unwrap();
        let ids: Vec<i64> = due(&mut db, 100, 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, vec![a1]);
        mark_dead(&mut db, a1, "550 no").unwrap();
        assert!(due(&mut db, 1000, 10).unwrap().is_empty());
        assert_eq!(retry(&mut db, None, 1000).unwrap(), 1);
        assert_eq!(due(&mut db, 1000, 10).unwrap()[0].id, a1);
    }

    /// The delivery event carries what the producer queued, not what the Message-ID
    /// looks like.
    #[test]
    fn a_delivered_mail_is_reported_as_its_producer_queued_it() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().join("db"));
        let mut db = super::super::open(&location).unwrap();
        let to = vec!["glpi@example.test".to_string()];
        for (key, id, kind) in [
            ("ALERT-0a1b2c3d", "<first@elsewhere>", OutboundKind::Open),
            (
                "ALERT-0a1b2c3e",
                "<alert-0a1b2c3e.0@gw>",
                OutboundKind::News,
            ),
            ("MAIL-3", "<mail-3.0@gw>", OutboundKind::Unmatched),
        ] {
            enqueue(
                &mut db,
                &NewOutbound {
                    kind,
                    ..mail(key, id, &to)
                },
                10,
            )
            .unwrap();
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let queue = StoreQueue::open(&location).unwrap().report_delivered(tx);
        for item in queue.due(10, 10).unwrap() {
            queue.mark_sent(item.id, 11).unwrap();
            queue.on_delivered(item.delivered(11));
        }
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push((event.tag, event.kind, event.at));
        }
        assert_eq!(
            events,
            [
                ("ALERT-0a1b2c3d".to_string(), OutboundKind::Open, 11),
                ("ALERT-0a1b2c3e".to_string(), OutboundKind::News, 11),
                ("MAIL-3".to_string(), OutboundKind::Unmatched, 11),
            ]
        );
    }

    #[test]
    fn due_skipping_leaves_out_mails_in_flight_and_deliveries_are_recorded_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = super::super::open(&Location::Sqlite(dir.path().join("db"))).unwrap();
        let to = vec!["glpi@example.test".to_string()];
        let a0 = enqueue(&mut db, &mail("A", "a0", &to), 10).unwrap();
        let b0 = enqueue(&mut db, &mail("B", "b0", &to), 10).unwrap();
        let c0 = enqueue(&mut db, &mail("C", "c0", &to), 10).unwrap();
        enqueue(&mut db, &mail("A", "a1", &to), 10).unwrap();
        let skip = std::collections::HashSet::from([a0]);
        let due = due_skipping(&mut db, 10, 1, &skip, &Lease::default()).unwrap();
        assert_eq!(due.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b0]);
        assert_eq!(due[0].raw.as_deref(), Some(&b"Subject: s\r\n\r\nx\r\n"[..]));
        mark_sent_all(&mut db, &[(b0, 20), (c0, 21)]).unwrap();
        let sent: Vec<(i64, Option<i64>)> = list(&mut db, Some(OutboundState::Sent), 10)
            .unwrap()
            .iter()
            .map(|r| (r.id, r.sent_at))
            .collect();
        assert_eq!(sent, vec![(b0, Some(20)), (c0, Some(21))]);
        // A's head is still in flight: A's next mail is not due, nothing else is.
        assert!(due_skipping(&mut db, 30, 10, &skip, &Lease::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn held_head_blocks_its_key_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = super::super::open(&Location::Sqlite(dir.path().join("db"))).unwrap();
        let to = vec!["glpi@example.test".to_string()];
        let mut held = mail("A", "a1", &to);
        held.state = OutboundState::Held;
        let h = enqueue(&mut db, &held, 5).unwrap();
        enqueue(&mut db, &mail("A", "a2", &to), 5).unwrap();
        assert!(due(&mut db, 10, 10).unwrap().is_empty());
        assert_eq!(requeue(&mut db, h, 10).unwrap(), 1);
        assert_eq!(due(&mut db, 10, 10).unwrap()[0].id, h);
    }
}
