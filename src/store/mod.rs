//! The store: everything persistent, behind one boundary (`db::Db`, SQLite today): schema
//! and migrations, the inbound spool (one writer thread with group commit), incidents,
//! the outbound queue and GLPI actions. No SQL and no `rusqlite` outside this module.

pub mod actions;
pub mod db;
pub mod gate;
pub mod incidents;
pub mod lease;
pub mod outbound;
pub mod pg;
pub mod replies;
pub mod retention;
pub mod spool;
pub mod status;
pub mod tally;

use rusqlite::Connection;

pub use db::{rows_touched, Db, Dialect, Location, Row, Tx, Value};
pub use spool::{Envelope, SpoolHandle, SpoolRow, SpoolState};

/// What failed in the store. Each variant names one cause: callers answer 451 or retry
/// on any of them, and the operator reads which.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: postgres: {}", pg_detail(.0))]
    Postgres(postgres::Error),
    /// The database cannot be reached now (connection lost): answer 451, try again.
    #[error("store: the database is unavailable: {0}")]
    Unavailable(String),
    /// A statement inside the transaction failed, so the whole transaction was undone.
    #[error("store: the transaction was rolled back after a failed statement")]
    TxAborted,
    /// A transaction used against its rules (a bug, reported rather than guessed around).
    #[error("store: transaction misuse: {0}")]
    TxMisuse(&'static str),
    #[error("store: bad database URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("store: cannot create directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store: database schema version {found} is newer than this alertgate knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("store: the spool writer has stopped")]
    WriterGone,
    #[error("store: cannot start the {thread} thread: {source}")]
    ThreadSpawn {
        thread: &'static str,
        source: std::io::Error,
    },
    /// The spool writer's transaction for a group of messages failed; none was stored.
    #[error("store: the spool commit failed: {0}")]
    GroupCommit(String),
    #[error("store: the {0} connection's lock is poisoned (a thread panicked holding it)")]
    LockPoisoned(&'static str),
    /// A message's draft file could not be written or read back.
    #[error("store: the message's draft file {path}: {source}")]
    Draft {
        path: String,
        source: std::io::Error,
    },
    #[error("store: copying the message from {from} into the spool: {source}")]
    SpoolCopy {
        from: String,
        source: std::io::Error,
    },
    #[error("store: the draft file {path} holds {found} bytes, {expected} were received")]
    DraftShort {
        path: String,
        expected: usize,
        found: usize,
    },
    /// A stored value that is not one this alertgate knows (e.g. a state).
    #[error("store: {table}.{column} holds `{value}`, which is not a known value")]
    BadValue {
        table: &'static str,
        column: &'static str,
        value: String,
    },
    #[error("store: column {index} holds {found} where {expected} was expected")]
    Column {
        index: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("store: `{statement} …` returned no row")]
    NoRow { statement: String },
    /// JSON kept in a column (incident snapshots, envelopes) does not encode or decode.
    #[error("store: {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("store: {path} is damaged (PRAGMA quick_check: {details}); restore it from a backup, or recover it with `sqlite3 {path} .recover`")]
    Damaged { path: String, details: String },
}

/// postgres::Error's Display is only "db error" for a server error: add what it said.
fn pg_detail(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A row that could not be read (wrong type, damaged page): listed, not fatal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRow {
    pub id: i64,
    pub error: String,
}

/// Each migration moves the schema from version `index` to `index + 1`, on both backends
/// (the same numbers and meaning): written in SQLite's types, which PostgreSQL's are
/// derived from (`Migration::sql`), plus what only one dialect says.
pub(crate) const MIGRATIONS: &[Migration] = &[
    // 1: spool, incidents, outbound queue, key/value state.
    Migration::both("CREATE TABLE spool (
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
     CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);"),
    // 2: which host each alert mail was about, for follow-ups that only cite it.
    Migration::both("CREATE TABLE message_hosts (message_id TEXT PRIMARY KEY, host TEXT NOT NULL);
     ALTER TABLE outbound ADD COLUMN event TEXT;"),
    // 3: actions on GLPI tickets through its API (solve on recovery).
    Migration::both("CREATE TABLE glpi_actions (
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
     CREATE INDEX glpi_actions_state ON glpi_actions(state, next_attempt_at);"),
    // 4: the delivery worker's scan: pending mail in id order.
    Migration::both("CREATE INDEX outbound_pending ON outbound(id) WHERE state IN ('queued', 'held');"),
    // 5: GLPI actions run in order per incident (the head of each tag's queue).
    Migration::both("CREATE INDEX glpi_actions_tag ON glpi_actions(tag, id);"),
    // 6: which incident each alert mail's Message-IDs (own and cited) belong to.
    Migration::both("CREATE TABLE message_incidents (message_id TEXT PRIMARY KEY, incident_tag TEXT NOT NULL);"),
    // 7: the correlation engine keeps only a cache of open incidents and reads the others
    // by index: by alert key, by tag (unique already), the storm's pending members and
    // digests, the ones still waiting for a ticket id, and the storm window's openings.
    // `generation` counts the pipeline's commits, so a cache knows when someone else wrote.
    // The old index on `open` alone goes: it would win over the key's on a small table.
    Migration {
        both: "ALTER TABLE incidents ADD COLUMN first_seen INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE incidents ADD COLUMN announced INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE incidents ADD COLUMN ticket_id INTEGER;
     ALTER TABLE incidents ADD COLUMN pending_digest INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE incidents ADD COLUMN is_digest INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE incidents ADD COLUMN digest_member INTEGER NOT NULL DEFAULT 0;
     DROP INDEX incidents_open;
     CREATE INDEX incidents_open_key ON incidents(alert_key, id) WHERE open = 1;
     CREATE INDEX incidents_pending_digest ON incidents(id) WHERE open = 1 AND pending_digest = 1;
     CREATE INDEX incidents_open_digest ON incidents(id) WHERE open = 1 AND is_digest = 1;
     CREATE INDEX incidents_awaiting_ticket ON incidents(id)
        WHERE open = 1 AND announced = 1 AND ticket_id IS NULL;
     CREATE INDEX incidents_first_seen ON incidents(first_seen);
     CREATE TABLE pipeline_generation (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL);
     INSERT INTO pipeline_generation (id, generation) VALUES (1, 0);",
        sqlite: "UPDATE incidents SET
        first_seen = COALESCE(json_extract(data, '$.first_seen'), 0),
        announced = COALESCE(json_extract(data, '$.announced'), 0),
        ticket_id = json_extract(data, '$.ticket_id'),
        pending_digest = COALESCE(json_extract(data, '$.in_pending_digest'), 0),
        is_digest = COALESCE(json_extract(data, '$.is_digest'), 0),
        digest_member = json_extract(data, '$.digest_tag') IS NOT NULL;",
        postgres: "UPDATE incidents SET
        first_seen = COALESCE((data::jsonb->>'first_seen')::bigint, 0),
        announced = CASE WHEN (data::jsonb->>'announced')::boolean THEN 1 ELSE 0 END,
        ticket_id = (data::jsonb->>'ticket_id')::bigint,
        pending_digest = CASE WHEN (data::jsonb->>'in_pending_digest')::boolean THEN 1 ELSE 0 END,
        is_digest = CASE WHEN (data::jsonb->>'is_digest')::boolean THEN 1 ELSE 0 END,
        digest_member = CASE WHEN data::jsonb->>'digest_tag' IS NOT NULL THEN 1 ELSE 0 END;",
    },
    // 8: leases of outbound mails and GLPI actions (PostgreSQL, shared by two gateways,
    // uses them; SQLite's stay empty), and on PostgreSQL a unique index on open incidents'
    // keys: only there can two writers race to open one.
    Migration {
        both: "ALTER TABLE outbound ADD COLUMN lease_owner TEXT;
     ALTER TABLE outbound ADD COLUMN lease_until INTEGER;
     ALTER TABLE glpi_actions ADD COLUMN lease_owner TEXT;
     ALTER TABLE glpi_actions ADD COLUMN lease_until INTEGER;",
        sqlite: "",
        postgres: "CREATE UNIQUE INDEX incidents_one_open ON incidents(alert_key) WHERE open = 1;",
    },
    // 9: what each outbound mail is (`OutboundKind`), stored by the stage that composed
    // it, so its delivery says whether it opened a ticket. Rows from before are told by
    // the shape their Message-ID had then (an incident's first is `<alert-….0@…>`).
    Migration::both("ALTER TABLE outbound ADD COLUMN kind TEXT NOT NULL DEFAULT 'news';
     UPDATE outbound SET kind = 'unmatched' WHERE order_key LIKE 'MAIL-%';
     UPDATE outbound SET kind = 'open' WHERE order_key LIKE 'ALERT-%' AND message_id LIKE '%.0@%';"),
    // 10: an incident's mail by state: a storm digest holds one mail per member, and its
    // pace (the latest release) and its held news are read without visiting every one.
    Migration::both("CREATE INDEX IF NOT EXISTS outbound_order_state ON outbound(order_key, state, id);"),
    // 11: PostgreSQL's planner walked the spool's primary key past every processed message
    // (kept for days) to find the new ones when most rows are new (a backlog): correlated
    // with the heap, it looked cheaper than `spool_state`. A partial index holds only the
    // new ones. (SQLite's planner takes `spool_state`.)
    Migration {
        both: "",
        sqlite: "",
        postgres: "CREATE INDEX spool_new ON spool(id) WHERE state = 'new';",
    },
];

/// One schema step: `both` (in SQLite's types) and what one dialect alone runs after it.
pub(crate) struct Migration {
    both: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

impl Migration {
    const fn both(both: &'static str) -> Migration {
        Migration {
            both,
            sqlite: "",
            postgres: "",
        }
    }

    /// The step in `dialect`'s SQL. PostgreSQL's types: integers BIGINT (booleans stay
    /// BIGINT 0/1, as on SQLite), `AUTOINCREMENT` keys BIGSERIAL, blobs BYTEA.
    pub(crate) fn sql(&self, dialect: Dialect) -> String {
        let (both, own) = match dialect {
            Dialect::Sqlite => (std::borrow::Cow::Borrowed(self.both), self.sqlite),
            Dialect::Postgres => (postgres_types(self.both), self.postgres),
        };
        if own.is_empty() {
            both.into_owned()
        } else {
            format!("{both}\n     {own}")
        }
    }
}

fn postgres_types(sql: &str) -> std::borrow::Cow<'_, str> {
    static TYPES: std::sync::OnceLock<[(regex::Regex, &str); 3]> = std::sync::OnceLock::new();
    let types = TYPES.get_or_init(|| {
        let word = |w: &str| regex::Regex::new(&format!(r"\b{w}\b")).expect("type pattern");
        [
            (
                word("INTEGER PRIMARY KEY AUTOINCREMENT"),
                "BIGSERIAL PRIMARY KEY",
            ),
            (word("INTEGER"), "BIGINT"),
            (word("BLOB"), "BYTEA"),
        ]
    });
    let mut out = std::borrow::Cow::Borrowed(sql);
    for (pattern, pg) in types {
        if pattern.is_match(&out) {
            out = std::borrow::Cow::Owned(pattern.replace_all(&out, *pg).into_owned());
        }
    }
    out
}

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How a connection's commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced before it returns. (The SQLite spool writer commits
    /// `Derived` and has its sync thread fsync the log before any `250`.)
    Full,
    /// Commits are atomic and survive a crash of the process, but a power cut (or a disk
    /// error that turns the filesystem read-only) may undo the last ones. For state
    /// derived from the spool: the pipeline redoes such steps from the spooled message,
    /// and a lost "sent" mark only means a resend. Mail leaves only once these commits
    /// are on disk (`SqliteQueue::due` syncs the log first): a redone composition has a
    /// new incident tag, and must not follow a first one GLPI already has.
    Derived,
}

/// Open (creating when needed) the store with an up-to-date schema, fsyncing every
/// commit.
pub fn open(location: &Location) -> Result<Db, StoreError> {
    Db::open(location, Durability::Full)
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

/// SQLite's migrations: `user_version` counts those applied.
fn migrate_sqlite(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(&step.sql(Dialect::Sqlite))?;
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
        let location = Location::Sqlite(dir.path().join("sub/db.sqlite"));
        drop(open(&location).unwrap());
        let mut db = open(&location).unwrap();
        let v = db
            .query_one("PRAGMA user_version", &[])
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode = db
            .query_one("PRAGMA journal_mode", &[])
            .unwrap()
            .text(0)
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn wal_files_stay_after_the_last_close_with_the_log_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().join("db.sqlite"));
        let mut db = open(&location).unwrap();
        db.execute("CREATE TABLE big (b BLOB)", &[]).unwrap();
        db.execute("INSERT INTO big VALUES (randomblob(2000000))", &[])
            .unwrap();
        let wal = dir.path().join("db.sqlite-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 2_000_000);
        drop(db);
        // Kept, so a restart onto a full disk can open the store; emptied, so a burst
        // does not keep its size.
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert!(dir.path().join("db.sqlite-shm").exists());
        let mut db = open(&location).unwrap();
        let n = db
            .query_one("SELECT length(b) FROM big", &[])
            .unwrap()
            .int(0)
            .unwrap();
        assert_eq!(n, 2_000_000);
    }

    /// Mail queued before the kind was stored keeps what the old shape rule said of it.
    #[test]
    fn outbound_rows_from_before_9_are_told_their_kind() {
        use crate::mail::OutboundKind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for (i, step) in MIGRATIONS[..8].iter().enumerate() {
                conn.execute_batch(&step.sql(Dialect::Sqlite)).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as i64)
                    .unwrap();
            }
            for (key, id) in [
                ("ALERT-0a1b2c3d", "<alert-0a1b2c3d.0@gw>"),
                ("ALERT-0a1b2c3d", "<alert-0a1b2c3d.10@gw>"),
                ("MAIL-7", "<mail-7.0@gw>"),
            ] {
                conn.execute(
                    "INSERT INTO outbound (order_key, message_id, subject, envelope_from, envelope_to, raw, queued_at, next_attempt_at)
                     VALUES (?1, ?2, 's', 'a@x', '[]', x'00', 1, 1)",
                    [key, id],
                )
                .unwrap();
            }
        }
        let mut db = open(&Location::Sqlite(path)).unwrap();
        let kinds: Vec<OutboundKind> = outbound::all_with_raw(&mut db)
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                OutboundKind::Open,
                OutboundKind::News,
                OutboundKind::Unmatched
            ]
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::Sqlite(dir.path().join("db.sqlite"));
        let db = open(&location).unwrap();
        db.sqlite()
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(db);
        assert!(matches!(open(&location), Err(StoreError::TooNew { .. })));
    }

    /// The boundary this module keeps: nothing outside `src/store/` names rusqlite.
    #[test]
    fn no_rusqlite_outside_the_store() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == root.join("store") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && std::fs::read_to_string(&path).unwrap().contains("rusqlite")
                {
                    offenders.push(path.display().to_string());
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "rusqlite outside src/store/: {offenders:?}"
        );
    }
}
