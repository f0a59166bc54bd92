//! The embedded SQLite store: schema and migrations, the inbound spool (one writer thread
//! with group commit), incidents, and the outbound queue. Every durable fact lives here.

pub mod actions;
pub mod gate;
pub mod incidents;
pub mod outbound;
pub mod replies;
pub mod retention;
pub mod spool;
pub mod status;
pub mod tally;

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

pub use spool::{Envelope, SpoolHandle, SpoolRow, SpoolState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: cannot create directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store: database schema version {found} is newer than this alertgate knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("store: the spool writer has stopped")]
    WriterGone,
    #[error("store: {0}")]
    Corrupt(String),
    #[error("store: {path} is damaged (PRAGMA quick_check: {details}); restore it from a backup, or recover it with `sqlite3 {path} .recover`")]
    Damaged { path: String, details: String },
}

/// A row that could not be read (wrong type, damaged page): listed, not fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRow {
    pub id: i64,
    pub error: String,
}

/// Each migration moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: spool, incidents, outbound queue, key/value state.
    "CREATE TABLE spool (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at INTEGER NOT NULL,
        peer TEXT NOT NULL,
        helo TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        tls INTEGER NOT NULL,
        auth_user TEXT,
        message_id TEXT,
        size INTEGER NOT NULL,
        raw BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'new',
        note TEXT,
        processed_at INTEGER
     );
     CREATE INDEX spool_state ON spool(state, id);
     CREATE INDEX spool_message_id ON spool(message_id);
     CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        tag TEXT NOT NULL UNIQUE,
        alert_key TEXT NOT NULL,
        open INTEGER NOT NULL,
        data TEXT NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE INDEX incidents_open ON incidents(open);
     CREATE TABLE outbound (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        order_key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        envelope_to TEXT NOT NULL,
        raw BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        queued_at INTEGER NOT NULL,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        sent_at INTEGER,
        spool_id INTEGER
     );
     CREATE INDEX outbound_state ON outbound(state, next_attempt_at);
     CREATE INDEX outbound_order ON outbound(order_key, id);
     CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 2: which host each alert mail was about, for follow-ups that only cite it.
    "CREATE TABLE message_hosts (message_id TEXT PRIMARY KEY, host TEXT NOT NULL);
     ALTER TABLE outbound ADD COLUMN event TEXT;",
    // 3: actions on GLPI tickets through its API (solve on recovery).
    "CREATE TABLE glpi_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tag TEXT NOT NULL,
        ticket_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        content TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        created_at INTEGER NOT NULL
     );
     CREATE INDEX glpi_actions_state ON glpi_actions(state, next_attempt_at);",
    // 4: the delivery worker's scan: pending mail in id order.
    "CREATE INDEX outbound_pending ON outbound(id) WHERE state IN ('queued', 'held');",
    // 5: GLPI actions run in order per incident (the head of each tag's queue).
    "CREATE INDEX glpi_actions_tag ON glpi_actions(tag, id);",
    // 6: which incident each alert mail's Message-IDs (own and cited) belong to.
    "CREATE TABLE message_incidents (message_id TEXT PRIMARY KEY, incident_tag TEXT NOT NULL);",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How a connection's commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced before it returns: the spool, whose commit is our `250`.
    Full,
    /// Commits are atomic and survive a crash of the process, but a power cut may undo
    /// the last ones. For state derived from the spool: the pipeline redoes such steps
    /// from the spooled message, and a lost "sent" mark only means a resend.
    Derived,
}

/// Open (creating when needed) the database with an up-to-date schema, fsyncing every
/// commit.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    open_with(path, Durability::Full)
}

pub fn open_with(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let conn = Connection::open(path)?;
    configure(&conn)?;
    migrate(&conn)?;
    if durability == Durability::Derived {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(conn)
}

/// The rows that could be read; each damaged one is logged.
pub fn readable<T>(rows: Vec<Result<T, DamagedRow>>) -> Vec<T> {
    rows.into_iter()
        .filter_map(|row| {
            row.map_err(|damaged| {
                tracing::warn!(id = damaged.id, error = %damaged.error, "damaged row skipped")
            })
            .ok()
        })
        .collect()
}

/// Refuses a damaged database at start (a damaged b-tree page would otherwise make
/// every commit fail, and the server answer 451 forever).
pub fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let damaged = |details: String| StoreError::Damaged {
        path: path.display().to_string(),
        details,
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check(20)")
        .map_err(|e| damaged(e.to_string()))?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| damaged(e.to_string()))?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(());
    }
    Err(damaged(lines.join("; ")))
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_handler(Some(busy_wait))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before we answer 250, even across power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// SQLite's default busy handler sleeps 1, 2, 5 … 100 ms between tries: a writer that
/// finds the lock taken for a moment waited tens of milliseconds. Short sleeps instead
/// (50 µs doubling to 1 ms), for about 30 s in all.
fn busy_wait(tries: i32) -> bool {
    const GIVE_UP_AFTER: i32 = 30_000;
    if tries >= GIVE_UP_AFTER {
        return false;
    }
    let micros = 50u64 << tries.clamp(0, 5);
    std::thread::sleep(Duration::from_micros(micros.min(1_000)));
    true
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    crate::clock::Clock::system().now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_reopen_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/db.sqlite");
        drop(open(&path).unwrap());
        let conn = open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(open(&path), Err(StoreError::TooNew { .. })));
    }
}
