//! The outbound queue: composed mails waiting for the relay, in order per incident, with
//! retry times and dead letters; also the queue the delivery worker reads through a trait.

use super::StoreError;
use crate::deliver::{OutboundItem, OutboundQueue, QueueError};
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub spool_id: Option<i64>,
    /// Not sent before this time; for a held mail, when it is released unthreaded.
    pub not_before: i64,
}

pub fn enqueue(conn: &Connection, mail: &NewOutbound<'_>, now: i64) -> Result<i64, StoreError> {
    let to =
        serde_json::to_string(mail.envelope_to).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO outbound (order_key, message_id, subject, envelope_from, envelope_to, raw, state, queued_at, next_attempt_at, spool_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?9)",
    )?
    .execute(params![
        mail.order_key,
        mail.message_id,
        mail.subject,
        mail.envelope_from,
        to,
        mail.raw,
        mail.state.as_str(),
        now,
        mail.spool_id,
        mail.not_before.max(now)
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Keep the correlation event a mail was composed from, so a held mail can be composed
/// again once its ticket id is known.
pub fn set_event(conn: &Connection, id: i64, event: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbound SET event = ?2 WHERE id = ?1")?
        .execute(rusqlite::params![id, event])?;
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
    pub state: String,
    pub attempts: u32,
    pub queued_at: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub sent_at: Option<i64>,
    pub raw: Option<Vec<u8>>,
}

const COLUMNS: &str =
    "id, order_key, message_id, subject, envelope_from, envelope_to, state, attempts, queued_at, next_attempt_at, last_error, sent_at";

fn row(r: &rusqlite::Row<'_>, with_raw: bool) -> rusqlite::Result<OutboundRow> {
    let to: String = r.get(5)?;
    Ok(OutboundRow {
        id: r.get(0)?,
        order_key: r.get(1)?,
        message_id: r.get(2)?,
        subject: r.get(3)?,
        envelope_from: r.get(4)?,
        envelope_to: serde_json::from_str(&to).unwrap_or_default(),
        state: r.get(6)?,
        attempts: r.get::<_, i64>(7)? as u32,
        queued_at: r.get(8)?,
        next_attempt_at: r.get(9)?,
        last_error: r.get(10)?,
        sent_at: r.get(11)?,
        raw: if with_raw { Some(r.get(12)?) } else { None },
    })
}

/// The head of each incident's queue that is due now, oldest first: one per order key,
/// so an incident's mails go out in the order they were composed.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<OutboundRow>, StoreError> {
    // Walks the pending rows in id order (partial index) and stops at `limit`; each
    // candidate is checked against older pending mail of its incident (order_key index).
    // A GROUP BY over the whole queue on every call made delivery O(queue length).
    let sql = format!(
        "SELECT {COLUMNS}, raw FROM outbound AS o INDEXED BY outbound_pending
         WHERE o.state IN ('queued', 'held') AND o.state = 'queued' AND o.next_attempt_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM outbound AS p
                           WHERE p.order_key = o.order_key AND p.id < o.id AND p.state IN ('queued', 'held'))
         ORDER BY o.id LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params![now, limit as i64], |r| row(r, true))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn mark_sent(conn: &Connection, id: i64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbound SET state = 'sent', sent_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}

pub fn mark_retry(
    conn: &Connection,
    id: i64,
    next_attempt_at: i64,
    error: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbound SET attempts = attempts + 1, next_attempt_at = ?2, last_error = ?3 WHERE id = ?1")?
        .execute(params![id, next_attempt_at, error])?;
    Ok(())
}

pub fn mark_dead(conn: &Connection, id: i64, error: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbound SET state = 'dead', attempts = attempts + 1, last_error = ?2 WHERE id = ?1")?
        .execute(params![id, error])?;
    Ok(())
}

/// Listing for `alertgate queue list`: everything not yet sent, plus the latest sent ones.
/// A row that cannot be read is listed as damaged instead of failing the listing.
pub fn list_checked(
    conn: &Connection,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<Result<OutboundRow, super::DamagedRow>>, StoreError> {
    let mut ids = conn
        .prepare(
            "SELECT id FROM outbound WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
        )?
        .query_map(params![state, limit as i64], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    ids.reverse();
    let sql = format!("SELECT {COLUMNS} FROM outbound WHERE id = ?1");
    let mut stmt = conn.prepare(&sql)?;
    Ok(ids
        .into_iter()
        .map(|id| {
            stmt.query_row([id], |r| row(r, false))
                .map_err(|e| super::DamagedRow {
                    id,
                    error: e.to_string(),
                })
        })
        .collect())
}

/// The readable rows of `list_checked`; damaged ones are skipped with a warning.
pub fn list(
    conn: &Connection,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<OutboundRow>, StoreError> {
    Ok(super::readable(list_checked(conn, state, limit)?))
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<OutboundRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS}, raw FROM outbound WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], |r| row(r, true)).optional()?)
}

pub fn counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT state, COUNT(*) FROM outbound GROUP BY state ORDER BY state")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Put dead (or waiting) mails back in the queue, due now. `None` = every dead mail.
pub fn retry(conn: &Connection, id: Option<i64>, now: i64) -> Result<usize, StoreError> {
    let n = match id {
        Some(id) => conn.execute(
            "UPDATE outbound SET state = 'queued', next_attempt_at = ?2 WHERE id = ?1 AND state IN ('dead', 'queued')",
            params![id, now],
        )?,
        None => conn.execute("UPDATE outbound SET state = 'queued', next_attempt_at = ?1 WHERE state = 'dead'", [now])?,
    };
    Ok(n)
}

/// Delete one mail, or every mail in a final state (`dead` or `sent`).
pub fn purge(
    conn: &Connection,
    id: Option<i64>,
    state: Option<OutboundState>,
) -> Result<usize, StoreError> {
    let n = match (id, state) {
        (Some(id), _) => conn.execute("DELETE FROM outbound WHERE id = ?1", [id])?,
        (None, Some(st)) => conn.execute("DELETE FROM outbound WHERE state = ?1", [st.as_str()])?,
        (None, None) => 0,
    };
    Ok(n)
}

/// Release one held mail as it was composed (unthreaded).
pub fn requeue(conn: &Connection, id: i64, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE outbound SET state = 'queued', next_attempt_at = ?2 WHERE id = ?1 AND state = 'held'",
        params![id, now],
    )?)
}

/// A held mail, with what it was composed from.
#[derive(Debug, Clone)]
pub struct HeldMail {
    pub id: i64,
    pub event: Option<String>,
    pub spool_id: Option<i64>,
}

pub fn held_for(conn: &Connection, order_key: &str) -> Result<Vec<HeldMail>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT id, event, spool_id FROM outbound WHERE order_key = ?1 AND state = 'held' ORDER BY id")?;
    let rows = stmt
        .query_map([order_key], |r| {
            Ok(HeldMail {
                id: r.get(0)?,
                event: r.get(1)?,
                spool_id: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Replace a held mail by its threaded version and queue it now.
pub fn requeue_composed(
    conn: &Connection,
    id: i64,
    subject: &str,
    raw: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbound SET subject = ?2, raw = ?3, state = 'queued', next_attempt_at = ?4 WHERE id = ?1")?
        .execute(params![id, subject, raw, now])?;
    Ok(())
}

pub fn delete(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM outbound WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Held mails whose wait for a ticket id is over go out unthreaded; returns their keys.
pub fn release_expired_holds(conn: &Connection, now: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT order_key FROM outbound WHERE state = 'held' AND next_attempt_at <= ?1",
    )?;
    let keys = stmt
        .query_map([now], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if !keys.is_empty() {
        conn.execute("UPDATE outbound SET state = 'queued', next_attempt_at = ?1 WHERE state = 'held' AND next_attempt_at <= ?1", [now])?;
    }
    Ok(keys)
}

/// Incidents with held mail due for a decision (their wait for a ticket id, or for
/// the pace of GLPI's intake, is over).
pub fn held_due_keys(conn: &Connection, now: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT order_key FROM outbound WHERE state = 'held' AND next_attempt_at <= ?1",
    )?;
    let keys = stmt
        .query_map([now], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(keys)
}

/// Mails sent to GLPI at or after `since` (they may still wait in its mailbox).
pub fn sent_since(conn: &Connection, since: i64) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM outbound WHERE state = 'sent' AND sent_at >= ?1")?
        .query_row([since], |r| r.get::<_, i64>(0))? as u64)
}

/// Look at an incident's held mail again at `at`.
pub fn hold_until(conn: &Connection, order_key: &str, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbound SET next_attempt_at = ?2 WHERE order_key = ?1 AND state = 'held'",
    )?
    .execute(params![order_key, at])?;
    Ok(())
}

/// When the incident's latest mail left (or is due to leave) for GLPI.
pub fn last_release_at(conn: &Connection, order_key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT MAX(COALESCE(sent_at, next_attempt_at)) FROM outbound
             WHERE order_key = ?1 AND state IN ('queued', 'sent')",
        )?
        .query_row([order_key], |r| r.get::<_, Option<i64>>(0))?)
}

/// The highest outbound id committed (0 for an empty queue).
fn newest_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM outbound")?
        .query_row([], |r| r.get(0))?)
}

/// The outbound queue as the delivery worker sees it, on its own connection.
pub struct SqliteQueue {
    conn: std::sync::Mutex<Connection>,
    /// The database's write-ahead log, synced before mail leaves (see `due`).
    wal: std::path::PathBuf,
    /// Every outbound row up to this id is known to be on disk.
    synced_through: std::sync::atomic::AtomicI64,
    /// Told the tag of each incident whose first mail was delivered (ticket lookup).
    opened: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl SqliteQueue {
    pub fn open(path: &std::path::Path) -> Result<SqliteQueue, StoreError> {
        Ok(SqliteQueue {
            conn: std::sync::Mutex::new(super::open_with(path, super::Durability::Derived)?),
            wal: wal_path(path),
            synced_through: std::sync::atomic::AtomicI64::new(0),
            opened: None,
        })
    }

    pub fn notify_opened(mut self, tx: tokio::sync::mpsc::UnboundedSender<String>) -> SqliteQueue {
        self.opened = Some(tx);
        self
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, QueueError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| QueueError::new("queue connection poisoned"))?;
        f(&conn).map_err(QueueError::new)
    }
}

/// SQLite's write-ahead log next to the database: `{path}-wal`.
fn wal_path(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
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

impl OutboundQueue for SqliteQueue {
    fn due(&self, now: i64, limit: usize) -> Result<Vec<OutboundItem>, QueueError> {
        use std::sync::atomic::Ordering;
        let synced = self.synced_through.load(Ordering::Relaxed);
        let (rows, newest) = self.with(|c| {
            let rows = due(c, now, limit)?;
            // One sync covers every row committed so far: a pipeline batch, not a mail.
            let newest = match rows.iter().any(|r| r.id > synced) {
                true => Some(newest_id(c)?),
                false => None,
            };
            Ok((rows, newest))
        })?;
        if let Some(newest) = newest {
            sync_commits(&self.wal)?;
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
            })
            .collect())
    }

    fn mark_sent(&self, id: i64, now: i64) -> Result<(), QueueError> {
        self.with(|c| mark_sent(c, id, now))
    }

    fn mark_retry(&self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), QueueError> {
        self.with(|c| mark_retry(c, id, next_attempt_at, error))
    }

    fn mark_dead(&self, id: i64, error: &str) -> Result<(), QueueError> {
        self.with(|c| mark_dead(c, id, error))
    }

    fn on_delivered(&self, item: &OutboundItem) {
        // The open mail is seq 0 of its incident: `<alert-xxxxxxxx.0@host>`.
        if let Some(tx) = &self.opened {
            if item.order_key.starts_with("ALERT-") && item.message_id.contains(".0@") {
                let _ = tx.send(item.order_key.clone());
            }
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
            spool_id: None,
            not_before: 0,
        }
    }

    #[test]
    fn due_returns_only_the_head_of_each_key_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("db")).unwrap();
        let to = vec!["glpi@example.test".to_string()];
        let a0 = enqueue(&conn, &mail("A", "a0", &to), 10).unwrap();
        let b0 = enqueue(&conn, &mail("B", "b0", &to), 10).unwrap();
        let a1 = enqueue(&conn, &mail("A", "a1", &to), 10).unwrap();
        let ids: Vec<i64> = due(&conn, 10, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![a0, b0]);
        // A's head fails for now: A's second mail must wait behind it.
        mark_retry(&conn, a0, 100, "451 try later").unwrap();
        let ids: Vec<i64> = due(&conn, 20, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![b0]);
        mark_sent(&conn, b0, 20).unwrap();
        mark_sent(&conn, a0, 100).unwrap();
        let ids: Vec<i64> = due(&conn, 100, 10).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![a1]);
        mark_dead(&conn, a1, "550 no").unwrap();
        assert!(due(&conn, 1000, 10).unwrap().is_empty());
        assert_eq!(retry(&conn, None, 1000).unwrap(), 1);
        assert_eq!(due(&conn, 1000, 10).unwrap()[0].id, a1);
    }

    #[test]
    fn held_head_blocks_its_key_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("db")).unwrap();
        let to = vec!["glpi@example.test".to_string()];
        let mut held = mail("A", "a1", &to);
        held.state = OutboundState::Held;
        let h = enqueue(&conn, &held, 5).unwrap();
        enqueue(&conn, &mail("A", "a2", &to), 5).unwrap();
        assert!(due(&conn, 10, 10).unwrap().is_empty());
        assert_eq!(requeue(&conn, h, 10).unwrap(), 1);
        assert_eq!(due(&conn, 10, 10).unwrap()[0].id, h);
    }
}
