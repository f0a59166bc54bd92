//! The store's connection: where the database is (`Location`), one open connection to it
//! (`Db`, an enum over the backends), the backend-neutral values and rows the store
//! modules speak, and transactions (`Tx`). Only `src/store/` writes SQL.

use super::pg::{CopySource, PgConn};
use super::{Durability, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Rows the store's statements returned or changed, over every connection of the
/// process: what a step costs the database, counted for tests and benches that check a
/// path's work grows with its input and not with the store's size.
static ROWS_TOUCHED: AtomicU64 = AtomicU64::new(0);

/// The rows every connection of this process read or wrote so far (see `ROWS_TOUCHED`).
pub fn rows_touched() -> u64 {
    ROWS_TOUCHED.load(Ordering::Relaxed)
}

/// Where the database lives, from the validated `[store]` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An embedded SQLite file (`[store] path`).
    Sqlite(PathBuf),
    /// A PostgreSQL server (`[store] url = "postgres://…"`).
    Postgres(String),
}

impl Location {
    /// The SQLite file, if the store is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(path) => Some(path),
            Location::Postgres(_) => None,
        }
    }
}

impl fmt::Display for Location {
    /// The path, or the url without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&url_without_password(url)),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn url_without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Which SQL dialect a connection speaks, for the few statements that must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a statement or read from a row. Integers are i64 everywhere
/// (booleans are 0/1), text is UTF-8, blobs are bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(i64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// One row read back; each accessor says which column held what when it is not what
/// the caller expects (a damaged or hand-edited row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    /// A row as a backend read it.
    pub(in crate::store) fn new(values: Vec<Value>) -> Row {
        Row { values }
    }

    fn value(&self, index: usize) -> Result<&Value, StoreError> {
        self.values.get(index).ok_or(StoreError::Column {
            index,
            expected: "a column",
            found: "no such column",
        })
    }

    fn mismatch(index: usize, expected: &'static str, found: &Value) -> StoreError {
        StoreError::Column {
            index,
            expected,
            found: found.kind(),
        }
    }

    pub fn int(&self, index: usize) -> Result<i64, StoreError> {
        match self.value(index)? {
            Value::Int(v) => Ok(*v),
            other => Err(Row::mismatch(index, "an integer", other)),
        }
    }

    pub fn opt_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.value(index)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(Row::mismatch(index, "an integer or NULL", other)),
        }
    }

    /// A 0/1 integer.
    pub fn bool(&self, index: usize) -> Result<bool, StoreError> {
        Ok(self.int(index)? != 0)
    }

    pub fn text(&self, index: usize) -> Result<String, StoreError> {
        match self.value(index)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(Row::mismatch(index, "text", other)),
        }
    }

    pub fn opt_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        match self.value(index)? {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            other => Err(Row::mismatch(index, "text or NULL", other)),
        }
    }

    pub fn blob(&self, index: usize) -> Result<Vec<u8>, StoreError> {
        match self.value(index)? {
            Value::Blob(v) => Ok(v.clone()),
            other => Err(Row::mismatch(index, "a blob", other)),
        }
    }

    /// The bytes of a blob column, moved out of the row (mails can be megabytes).
    pub fn take_blob(&mut self, index: usize) -> Result<Vec<u8>, StoreError> {
        match self.values.get_mut(index) {
            Some(Value::Blob(v)) => Ok(std::mem::take(v)),
            Some(other) => Err(Row::mismatch(index, "a blob", other)),
            None => Err(StoreError::Column {
                index,
                expected: "a blob",
                found: "no such column",
            }),
        }
    }
}

/// One open connection to the store. A backend provides `execute`, `query`, `batch`
/// (BEGIN/COMMIT/ROLLBACK) and `quick_check`; `Db` dispatches to it.
pub enum Db {
    Sqlite(SqliteDb),
    Postgres(Box<PgConn>),
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Db::Sqlite(db) => write!(f, "Db::Sqlite({})", db.path.display()),
            Db::Postgres(db) => write!(f, "Db::Postgres({})", db.shown_url()),
        }
    }
}

impl Db {
    /// Opens (creating and migrating when needed) the store.
    pub fn open(location: &Location, durability: Durability) -> Result<Db, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Db::Sqlite(SqliteDb::open(path, durability)?)),
            Location::Postgres(url) => Ok(Db::Postgres(Box::new(PgConn::open(url, durability)?))),
        }
    }

    /// Opens the store and refuses a damaged one (a damaged b-tree page would otherwise
    /// make every commit fail, and the server answer 451 forever).
    pub fn open_checked(location: &Location, durability: Durability) -> Result<Db, StoreError> {
        let mut db = match Db::open(location, durability) {
            // A damaged page can already fail the schema read: say so precisely.
            Err(StoreError::Sqlite(e)) if is_damage(&e) => {
                return Err(StoreError::Damaged {
                    path: location.to_string(),
                    details: e.to_string(),
                })
            }
            other => other?,
        };
        db.quick_check()?;
        Ok(db)
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub(in crate::store) fn execute(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<u64, StoreError> {
        let changed = match self {
            Db::Sqlite(db) => db.execute(sql, params),
            Db::Postgres(db) => db.execute(sql, params),
        }?;
        ROWS_TOUCHED.fetch_add(changed, Ordering::Relaxed);
        Ok(changed)
    }

    pub(in crate::store) fn query(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<Row>, StoreError> {
        let rows = match self {
            Db::Sqlite(db) => db.query(sql, params),
            Db::Postgres(db) => db.query(sql, params),
        }?;
        ROWS_TOUCHED.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }

    /// As `query`, the parameters moved rather than copied to the backend (PostgreSQL
    /// runs statements on the connection's thread): for a mail's bytes.
    pub(in crate::store) fn query_owned(
        &mut self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Row>, StoreError> {
        match self {
            Db::Sqlite(db) => db.query(sql, &params),
            Db::Postgres(db) => db.query_owned(sql.to_owned(), params),
        }
    }

    /// `COPY … FROM STDIN` on PostgreSQL, fed by `write` (streamed: a big mail is never
    /// whole in memory); `None` on SQLite, which has no COPY.
    pub(in crate::store) fn copy_in(
        &mut self,
        sql: &str,
        write: CopySource,
    ) -> Option<Result<u64, StoreError>> {
        match self {
            Db::Sqlite(_) => None,
            Db::Postgres(db) => Some(db.copy_in(sql.to_owned(), write)),
        }
    }

    pub(in crate::store) fn query_opt(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// A statement that returns exactly one row (a count, `RETURNING id`).
    pub(in crate::store) fn query_one(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or(StoreError::NoRow {
            statement: first_words(sql),
        })
    }

    /// Starts a transaction that takes the write lock up front (SQLite: `BEGIN
    /// IMMEDIATE`; a deferred one that reads first fails with SQLITE_BUSY when the spool
    /// writer commits in between). Rolled back unless committed.
    pub fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        match self {
            Db::Sqlite(db) => db.batch("BEGIN IMMEDIATE")?,
            Db::Postgres(db) => db.begin()?,
        }
        Ok(Tx {
            db: self,
            open: true,
        })
    }

    /// This connection stops checkpointing the write-ahead log inside its commits; its
    /// owner calls [`Db::checkpoint_if_due`] when no one waits on it (the pipeline, after
    /// each transaction, outside the write gate). PostgreSQL checkpoints on its own.
    pub fn defer_checkpoints(&mut self) {
        if let Db::Sqlite(db) = self {
            db.defer_checkpoints();
        }
    }

    /// This connection checkpoints inside a commit only once the log holds `frames`
    /// (SQLite's default: 1000). For the spool writer, whose commit is the sessions'
    /// `250`: the pipeline checkpoints instead, this is the bound should it stop.
    pub fn checkpoint_in_commits_beyond(&mut self, frames: i64) -> Result<(), StoreError> {
        if let Db::Sqlite(db) = self {
            db.conn.pragma_update(None, "wal_autocheckpoint", frames)?;
        }
        Ok(())
    }

    /// After [`Db::defer_checkpoints`]: copies the write-ahead log into the database
    /// once it has grown by `CHECKPOINT_FRAMES` since the last copy. Never waits for a lock.
    pub fn checkpoint_if_due(&mut self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(db) => db.checkpoint_if_due(),
            Db::Postgres(_) => Ok(()),
        }
    }

    /// The SQLite connection, for what only SQLite has (incremental blob I/O).
    pub(in crate::store) fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Sqlite(db) => Some(&db.conn),
            Db::Postgres(_) => None,
        }
    }

    /// Whether the database reads as sound (SQLite: `PRAGMA quick_check`).
    fn quick_check(&mut self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(db) => db.quick_check(),
            // The server keeps its own pages sound (and checksums them when enabled).
            Db::Postgres(_) => Ok(()),
        }
    }

    fn end(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(db) => db.batch(sql),
            Db::Postgres(db) if sql == "COMMIT" => db.commit(),
            Db::Postgres(db) => db.rollback(),
        }
    }
}

/// A transaction on a [`Db`]: the store functions run inside it (it derefs to the
/// `Db`), nothing is kept unless [`Tx::commit`] succeeds.
pub struct Tx<'a> {
    db: &'a mut Db,
    open: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.db.end("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // Fails only when the engine already rolled back (e.g. after a failed COMMIT).
            let _ = self.db.end("ROLLBACK");
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
    )
}

/// Statements kept prepared per connection: every store statement fits.
const STATEMENT_CACHE: usize = 256;

/// Beyond this the write-ahead log is cut back when it restarts: a burst of big mails
/// would otherwise keep it at its peak size for good.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Keeps the write-ahead log and its index (`-wal`, `-shm`) when the last connection
/// closes. SQLite needs room on disk to create the index before it can read anything: a
/// gateway restarted onto a full disk could not open its store, and so not start to
/// answer 451 and deliver what it had spooled once room is made.
fn keep_wal_files(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: the handle is this open connection's; PERSIST_WAL reads and writes one int
    // through the pointer, which lives across the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::os::raw::c_int).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("cannot keep the write-ahead log files".into()),
        )));
    }
    Ok(())
}

/// SQLite's write-ahead log next to the database: `{path}-wal`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// The SQLite backend: one `rusqlite` connection, statements prepared once and cached.
pub struct SqliteDb {
    // Dropped first: the connection's WAL hook points into `wal`.
    conn: rusqlite::Connection,
    path: PathBuf,
    /// Set once this connection checkpoints at a time of its caller's choosing.
    wal: Option<Box<WalWatch>>,
}

/// What a connection that checkpoints on its own schedule knows of the write-ahead log.
#[derive(Default)]
struct WalWatch {
    /// Frames in the log after this connection's last commit (SQLite's WAL hook).
    frames: std::sync::atomic::AtomicI64,
    /// Frames in the log after the last checkpoint; a smaller count means it restarted.
    at_checkpoint: std::sync::atomic::AtomicI64,
}

/// Frames the log may gain before a deferred checkpoint runs (SQLite's own default).
const CHECKPOINT_FRAMES: i64 = 1000;
/// Past this the spool writer checkpoints inside its commit again: the bound on the log
/// should the connection that checkpoints (the pipeline's) stop.
pub const WRITER_CHECKPOINT_FRAMES: i64 = 4 * CHECKPOINT_FRAMES;

/// Counts the log's frames after each commit of the connection (instead of checkpointing).
unsafe extern "C" fn count_wal_frames(
    watch: *mut std::os::raw::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _name: *const std::os::raw::c_char,
    frames: std::os::raw::c_int,
) -> std::os::raw::c_int {
    // SAFETY: `watch` is the connection's boxed WalWatch, which outlives the connection.
    let watch = unsafe { &*(watch as *const WalWatch) };
    watch
        .frames
        .store(i64::from(frames), std::sync::atomic::Ordering::Relaxed);
    rusqlite::ffi::SQLITE_OK
}

impl SqliteDb {
    fn open(path: &Path, durability: Durability) -> Result<SqliteDb, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_handler(Some(busy_wait))?;
        keep_wal_files(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        // FULL: a commit is on disk before we answer 250, even across power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        super::migrate_sqlite(&conn)?;
        if durability == Durability::Derived {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        Ok(SqliteDb {
            conn,
            path: path.to_path_buf(),
            wal: None,
        })
    }

    fn defer_checkpoints(&mut self) {
        let watch = self.wal.get_or_insert_with(Box::default);
        let ptr = std::ptr::from_ref::<WalWatch>(watch).cast_mut().cast();
        // SAFETY: the handle is this open connection's; the hook's argument is the boxed
        // WalWatch, dropped only after the connection (field order of SqliteDb).
        unsafe {
            rusqlite::ffi::sqlite3_wal_hook(self.conn.handle(), Some(count_wal_frames), ptr);
        }
    }

    fn checkpoint_if_due(&mut self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(watch) = &self.wal else {
            return Ok(());
        };
        let frames = watch.frames.load(Relaxed);
        let base = watch.at_checkpoint.load(Relaxed).min(frames);
        if frames - base < CHECKPOINT_FRAMES {
            watch.at_checkpoint.store(base, Relaxed);
            return Ok(());
        }
        // PASSIVE: copies what it can without waiting for any lock, so the spool
        // writer's commits go on meanwhile.
        let left: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
        watch.at_checkpoint.store(left.max(0), Relaxed);
        Ok(())
    }

    fn prepare(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<rusqlite::CachedStatement<'_>, StoreError> {
        let stmt = self.conn.prepare_cached(sql)?;
        debug_assert!(
            placeholders_in_order(&stmt),
            "placeholders must be $1, $2, … in order of first appearance: {sql}"
        );
        if stmt.parameter_count() != params.len() {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterCount(
                params.len(),
                stmt.parameter_count(),
            )));
        }
        Ok(stmt)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.prepare(sql, params)?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter()))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.prepare(sql, params)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(value_of(r.get_ref(i)?));
            }
            out.push(Row::new(values));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql)?;
        Ok(())
    }

    fn quick_check(&mut self) -> Result<(), StoreError> {
        let damaged = |details: String| StoreError::Damaged {
            path: self.path.display().to_string(),
            details,
        };
        let mut stmt = self
            .conn
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
}

/// SQLite numbers `$N` parameters in order of first appearance and binds by that
/// index: `$1, $2, …` must come in that order for PostgreSQL to bind the same values.
fn placeholders_in_order(stmt: &rusqlite::Statement<'_>) -> bool {
    (1..=stmt.parameter_count()).all(|i| stmt.parameter_name(i) == Some(format!("${i}").as_str()))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

fn value_of(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        // Not an integer column's value: callers report it as the wrong type.
        ValueRef::Real(r) => Value::Text(r.to_string()),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Text(s.to_owned()),
            Err(_) => Value::Blob(t.to_vec()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// SQLite's default busy handler sleeps 1, 2, 5 … 100 ms between tries: a writer that
/// found the lock taken for a moment waited tens of milliseconds. Short sleeps instead
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(
            &Location::Sqlite(dir.path().join("db.sqlite")),
            Durability::Full,
        )
        .unwrap();
        (dir, db)
    }

    #[test]
    fn a_deferring_connection_checkpoints_when_asked_and_only_once_the_log_has_grown() {
        let (dir, mut writer) = db();
        let path = dir.path().join("db.sqlite");
        writer.checkpoint_in_commits_beyond(1_000_000).unwrap();
        let mut deferring = Db::open(&Location::Sqlite(path.clone()), Durability::Derived).unwrap();
        deferring.defer_checkpoints();
        writer.execute("CREATE TABLE t (x BLOB)", &[]).unwrap();
        let page = vec![7u8; 4000];
        // Each row takes a page of its own: each commit adds a frame or two to the log.
        let fill = |db: &mut Db, rows: usize| {
            for _ in 0..rows {
                db.execute("INSERT INTO t (x) VALUES ($1)", &[page.as_slice().into()])
                    .unwrap();
            }
        };
        // Pages reach the database file only through a checkpoint.
        let copied = || std::fs::metadata(&path).unwrap().len() / 4096;
        fill(&mut writer, 300);
        fill(&mut deferring, 10);
        deferring.checkpoint_if_due().unwrap();
        assert!(copied() < 300, "not yet: {} pages", copied());
        fill(&mut writer, 1000);
        fill(&mut deferring, 1);
        deferring.checkpoint_if_due().unwrap();
        assert!(copied() >= 1311, "copied: {} pages", copied());
    }

    #[test]
    fn values_round_trip_and_wrong_types_name_the_column() {
        let (_dir, mut db) = db();
        let row = db
            .query_one(
                "SELECT $1, $2, $3, $4, $5",
                &[
                    7i64.into(),
                    "text".into(),
                    Value::Blob(vec![0, 1]),
                    Option::<i64>::None.into(),
                    true.into(),
                ],
            )
            .unwrap();
        assert_eq!(row.int(0).unwrap(), 7);
        assert_eq!(row.text(1).unwrap(), "text");
        assert_eq!(row.clone().take_blob(2).unwrap(), vec![0, 1]);
        assert_eq!(row.opt_int(3).unwrap(), None);
        assert!(row.bool(4).unwrap());
        let err = row.int(1).unwrap_err().to_string();
        assert!(err.contains("column 1") && err.contains("text"), "{err}");
        assert!(row.text(9).is_err());
    }

    #[test]
    fn a_dropped_transaction_keeps_nothing_and_a_committed_one_everything() {
        let (_dir, mut db) = db();
        let set = |db: &mut Db, v: &str| {
            db.execute(
                "INSERT INTO kv (key, value) VALUES ('k', $1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[v.into()],
            )
            .unwrap()
        };
        {
            let mut tx = db.transaction().unwrap();
            set(&mut tx, "dropped");
        }
        assert!(db
            .query_opt("SELECT value FROM kv WHERE key = 'k'", &[])
            .unwrap()
            .is_none());
        let mut tx = db.transaction().unwrap();
        set(&mut tx, "kept");
        tx.commit().unwrap();
        let row = db
            .query_one("SELECT value FROM kv WHERE key = $1", &["k".into()])
            .unwrap();
        assert_eq!(row.text(0).unwrap(), "kept");
    }

    #[test]
    fn wrong_parameter_count_is_an_error_not_a_guess() {
        let (_dir, mut db) = db();
        assert!(db.query("SELECT $1, $2", &[1i64.into()]).is_err());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "in order of first appearance")]
    fn placeholders_out_of_order_are_caught_in_tests() {
        let (_dir, mut db) = db();
        let _ = db.query("SELECT $2, $1", &[1i64.into(), 2i64.into()]);
    }

    #[test]
    fn an_unreachable_postgres_is_unavailable_not_a_hang() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let started = std::time::Instant::now();
        let err = Db::open(
            &Location::Postgres("postgres://u:pw@127.0.0.1:9/db".into()),
            Durability::Full,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_postgres_location_shows_without_its_password() {
        let loc = Location::Postgres(
            "postgresql://alert:s3cret@db.example:5432/ag?sslmode=require".into(),
        );
        assert_eq!(
            loc.to_string(),
            "postgresql://alert:***@db.example:5432/ag?sslmode=require"
        );
        let plain = Location::Postgres("postgres://db.example/ag".into());
        assert_eq!(plain.to_string(), "postgres://db.example/ag");
    }
}
