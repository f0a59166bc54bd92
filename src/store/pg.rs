//! The PostgreSQL side of the store: one connection (`PgConn`) speaking the store's
//! backend-neutral primitives (`Value` parameters, `Row` results, transactions), its
//! prepared-statement cache and reconnection, and the schema's migrations in PostgreSQL's types.

use super::{Durability, Row, StoreError, Value};
use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::mpsc;
use std::time::Duration;

/// The schema's version: `super::MIGRATIONS` (shared with SQLite) applied in PostgreSQL's
/// types.
pub const PG_SCHEMA_VERSION: i64 = super::SCHEMA_VERSION;

/// The advisory lock two gateways take while migrating ("alertgat" in ASCII).
const MIGRATION_LOCK: i64 = 0x616c_6572_7467_6174;

/// More distinct statements than this and the cache starts over (dynamic SQL must not
/// grow it without bound).
const STATEMENT_CACHE_LIMIT: usize = 256;

/// One connection to PostgreSQL, opened, used and closed on a thread of its own: the
/// blocking client drives its socket with a runtime of its own, which cannot run on a
/// thread of the gateway's runtime. Every call hands its statement to that thread and
/// waits for the answer (callers already run store calls off the async workers), so no
/// caller needs to know which thread it is on.
pub struct PgConn {
    /// The URL without its password.
    shown: String,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What feeds a `COPY … FROM STDIN`: writes the data, in COPY's format, to its argument.
pub type CopySource = Box<dyn FnOnce(&mut dyn std::io::Write) -> Result<(), StoreError> + Send>;

/// A call, run on the connection's thread.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn").field("url", &self.shown).finish()
    }
}

impl PgConn {
    /// Connect to `url` and bring the schema up to date.
    pub fn open(url: &str, durability: Durability) -> Result<PgConn, StoreError> {
        let config = Session::config(url)?;
        let shown = redact_url(url);
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, opened) = mpsc::sync_channel(1);
        let session_shown = shown.clone();
        let thread = std::thread::Builder::new()
            .name("pg-connection".into())
            .spawn(move || {
                let mut session = match Session::open(config, durability, session_shown) {
                    Ok(session) => session,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                if ready.send(Ok(())).is_err() {
                    return;
                }
                // Ends when the `PgConn` is dropped; the session closes here, too.
                for job in inbox {
                    job(&mut session);
                }
            })
            .map_err(|source| StoreError::ThreadSpawn {
                thread: "PostgreSQL connection",
                source,
            })?;
        match opened.recv() {
            Ok(Ok(())) => Ok(PgConn {
                shown,
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(thread_gone(&shown)),
        }
    }

    /// The URL without its password.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// Runs `f` on the connection's thread; a panic there is the caller's again.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |session| {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(session)));
            let _ = reply.send(out);
        });
        let jobs = self.jobs.as_ref().ok_or_else(|| thread_gone(&self.shown))?;
        jobs.send(job).map_err(|_| thread_gone(&self.shown))?;
        match answer.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(thread_gone(&self.shown)),
        }
    }

    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.execute_owned(sql.to_owned(), params.to_vec())
    }

    /// As `execute`, with the parameters moved to the connection's thread, not copied
    /// (a mail's bytes).
    pub fn execute_owned(&mut self, sql: String, params: Vec<Value>) -> Result<u64, StoreError> {
        self.call(move |s| s.execute(&sql, &params))?
    }

    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.query_owned(sql.to_owned(), params.to_vec())
    }

    pub fn query_owned(&mut self, sql: String, params: Vec<Value>) -> Result<Vec<Row>, StoreError> {
        self.call(move |s| s.query(&sql, &params))?
    }

    pub fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Several statements without parameters (DDL, session settings), in one round trip.
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_owned();
        self.call(move |s| s.batch(&sql))?
    }

    /// `COPY … FROM STDIN` with the data `write` produces, streamed to the server in the
    /// client's small buffers; returns the rows copied.
    pub fn copy_in(&mut self, sql: String, write: CopySource) -> Result<u64, StoreError> {
        self.call(move |s| s.copy_in(&sql, write))?
    }

    pub fn begin(&mut self) -> Result<(), StoreError> {
        self.call(Session::begin)?
    }

    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.call(Session::commit)?
    }

    /// Ends the transaction without its changes; on a lost connection there is nothing
    /// left to undo.
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        self.call(Session::rollback)?
    }

    pub fn in_transaction(&self) -> bool {
        self.call(|s| s.in_transaction()).unwrap_or(false)
    }

    /// Whether a connection is open now (a lost one is replaced on the next call).
    pub fn is_connected(&self) -> bool {
        self.call(|s| s.is_connected()).unwrap_or(false)
    }

    /// The name of the thread that runs the calls (tests: they never run on the caller's).
    #[cfg(test)]
    fn call_thread(&self) -> Option<String> {
        self.call(|_| std::thread::current().name().map(str::to_owned))
            .ok()
            .flatten()
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // The thread ends with its inbox, closing the session (Terminate) on its way out.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn thread_gone(shown: &str) -> StoreError {
    StoreError::Unavailable(format!("{shown}: the connection's thread has stopped"))
}

/// The connection itself, owned by its thread. A call that finds the server gone fails
/// with `StoreError::Unavailable`; the next call outside a transaction connects again.
struct Session {
    config: postgres::Config,
    durability: Durability,
    /// Shown in errors and logs: the URL without its password.
    shown: String,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    tx: TxState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    None,
    Open,
    /// A statement failed: PostgreSQL ignores the rest, and COMMIT would only roll back.
    Failed,
    /// The connection died inside a transaction: every call fails until it is ended.
    Lost,
}

impl Session {
    /// The client's settings for `url`.
    fn config(url: &str) -> Result<postgres::Config, StoreError> {
        let mut config: postgres::Config = url.parse().map_err(|e| StoreError::BadUrl {
            url: redact_url(url),
            reason: format!("{e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("alertgate");
        }
        // A server that vanished without closing (power cut, network) is noticed.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        Ok(config)
    }

    /// Connect and bring the schema up to date.
    fn open(
        config: postgres::Config,
        durability: Durability,
        shown: String,
    ) -> Result<Session, StoreError> {
        let mut conn = Session {
            config,
            durability,
            shown,
            client: None,
            statements: HashMap::new(),
            tx: TxState::None,
        };
        conn.connect()?;
        conn.migrate()?;
        Ok(conn)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let args = as_sql_params(params);
        let result = self
            .client_mut()
            .and_then(|c| c.execute(&stmt, &args).map_err(Some));
        self.finish(result)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let args = as_sql_params(params);
        let result = self
            .client_mut()
            .and_then(|c| c.query(&stmt, &args).map_err(Some));
        let rows = self.finish(result)?;
        rows.iter().map(convert_row).collect()
    }

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn copy_in(&mut self, sql: &str, write: CopySource) -> Result<u64, StoreError> {
        self.ensure_connected()?;
        let copied = match self.client_mut() {
            Err(e) => Err(Err(e)),
            Ok(client) => match client.copy_in(sql) {
                Err(e) => Err(Err(Some(e))),
                Ok(mut writer) => match write(&mut writer) {
                    // Dropping the writer unfinished aborts the COPY.
                    Err(e) => Err(Ok(e)),
                    Ok(()) => writer.finish().map_err(|e| Err(Some(e))),
                },
            },
        };
        match copied {
            Ok(rows) => Ok(rows),
            Err(Err(e)) => self.finish(Err(e)),
            Err(Ok(store_error)) => {
                // The aborted COPY failed the transaction as a failed statement does.
                if self.tx == TxState::Open {
                    self.tx = TxState::Failed;
                }
                if !self.is_connected() {
                    self.client = None;
                    self.statements.clear();
                    if self.tx != TxState::None {
                        self.tx = TxState::Lost;
                    }
                }
                Err(store_error)
            }
        }
    }

    /// Several statements without parameters (DDL, session settings), in one round trip.
    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.ensure_connected()?;
        let result = self
            .client_mut()
            .and_then(|c| c.batch_execute(sql).map_err(Some));
        self.finish(result)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.tx != TxState::None {
            return Err(StoreError::TxMisuse("BEGIN while a transaction is open"));
        }
        self.batch("BEGIN")?;
        self.tx = TxState::Open;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        match self.tx {
            TxState::Open => {
                let done = self.batch("COMMIT");
                // A failed COMMIT has ended the transaction too (or lost the connection).
                self.tx = TxState::None;
                done
            }
            TxState::Failed => {
                self.tx = TxState::Open;
                self.rollback()?;
                Err(StoreError::TxAborted)
            }
            TxState::Lost => {
                self.tx = TxState::None;
                Err(StoreError::Unavailable(format!(
                    "{}: the connection was lost inside the transaction",
                    self.shown
                )))
            }
            TxState::None => Err(StoreError::TxMisuse("COMMIT without a transaction")),
        }
    }

    /// Ends the transaction without its changes; on a lost connection there is nothing
    /// left to undo.
    fn rollback(&mut self) -> Result<(), StoreError> {
        let state = std::mem::replace(&mut self.tx, TxState::None);
        if !matches!(state, TxState::Open | TxState::Failed) || self.client.is_none() {
            return Ok(());
        }
        let result = self
            .client_mut()
            .and_then(|c| c.batch_execute("ROLLBACK").map_err(Some));
        self.finish(result)
    }

    fn in_transaction(&self) -> bool {
        self.tx != TxState::None
    }

    /// Whether a connection is open now (a lost one is replaced on the next call).
    fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    fn client_mut(&mut self) -> Result<&mut Client, Option<postgres::Error>> {
        self.client.as_mut().ok_or(None)
    }

    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        match self.tx {
            TxState::Lost => {
                return Err(StoreError::Unavailable(format!(
                    "{}: the connection was lost inside the transaction",
                    self.shown
                )))
            }
            // Reconnecting inside a transaction would run the rest outside it.
            TxState::Open | TxState::Failed if self.client.is_none() => {
                self.tx = TxState::Lost;
                return self.ensure_connected();
            }
            _ => {}
        }
        if self.client.is_none() {
            self.connect()?;
        }
        Ok(())
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        let mut client = self
            .config
            .connect(NoTls)
            .map_err(|e| StoreError::Unavailable(format!("{}: {}", self.shown, describe(&e))))?;
        let sync = match self.durability {
            Durability::Full => "on",
            Durability::Derived => "off",
        };
        client
            .batch_execute(&format!("SET synchronous_commit = {sync}"))
            .map_err(|e| StoreError::Unavailable(format!("{}: {}", self.shown, describe(&e))))?;
        self.statements.clear();
        self.client = Some(client);
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        self.ensure_connected()?;
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let result = self.client_mut().and_then(|c| c.prepare(sql).map_err(Some));
        let stmt = self.finish(result)?;
        if self.statements.len() >= STATEMENT_CACHE_LIMIT {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// Turns a call's error into the store's, forgetting a connection that is gone.
    fn finish<T>(&mut self, result: Result<T, Option<postgres::Error>>) -> Result<T, StoreError> {
        let err = match result {
            Ok(v) => return Ok(v),
            Err(None) => {
                return Err(StoreError::Unavailable(format!(
                    "{}: not connected",
                    self.shown
                )))
            }
            Err(Some(e)) => e,
        };
        let closed = self.client.as_ref().is_none_or(|c| c.is_closed());
        if closed || connection_lost(&err) {
            self.client = None;
            self.statements.clear();
            if self.tx != TxState::None {
                self.tx = TxState::Lost;
            }
            return Err(StoreError::Unavailable(format!(
                "{}: {}",
                self.shown,
                describe(&err)
            )));
        }
        if self.tx == TxState::Open {
            self.tx = TxState::Failed;
        }
        Err(StoreError::Postgres(err))
    }

    /// Apply the missing migrations in one transaction under an advisory lock, so two
    /// gateways starting together neither race nor apply one twice.
    fn migrate(&mut self) -> Result<(), StoreError> {
        self.begin()?;
        let applied = self.migrate_locked();
        match applied {
            Ok(()) => self.commit(),
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    fn migrate_locked(&mut self) -> Result<(), StoreError> {
        self.query("SELECT pg_advisory_xact_lock($1)", &[MIGRATION_LOCK.into()])?;
        self.batch(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version BIGINT PRIMARY KEY,
                applied_at BIGINT NOT NULL
             )",
        )?;
        let version = self
            .query_opt("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
            .map(|row| row.int(0))
            .transpose()?
            .unwrap_or(0);
        if version > PG_SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: version,
                known: PG_SCHEMA_VERSION,
            });
        }
        for (i, step) in super::MIGRATIONS.iter().enumerate().skip(version as usize) {
            self.batch(&step.sql(super::Dialect::Postgres))?;
            self.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                &[(i as i64 + 1).into(), super::unix_now().into()],
            )?;
        }
        Ok(())
    }
}

/// Whether `err` means the server is out of reach (rather than a bad statement).
fn connection_lost(err: &postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        return code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    let mut source = err.source();
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// An error with its cause (postgres::Error's Display alone often says only "db error").
fn describe(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match err.source() {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn as_sql_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Integers go to whatever integer (or boolean) type the server inferred for the
/// parameter, text to any text type, blobs to BYTEA.
impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => Err(format!("an integer for a parameter of type {ty}").into()),
            },
            Value::Text(s) => s.as_str().to_sql_checked(ty, out),
            Value::Blob(b) => b.as_slice().to_sql_checked(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn convert_row(row: &postgres::Row) -> Result<Row, StoreError> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, Cell>(i).map(|cell| cell.0).map_err(|e| {
                tracing::warn!(column = i, error = %describe(&e), "unreadable PostgreSQL column");
                StoreError::Column {
                    index: i,
                    expected: "an integer, text or bytes",
                    found: "a value of another type",
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Row::new)
}

/// A result column of the types the schema and its queries produce, as a `Value`.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Cell, Box<dyn StdError + Sync + Send>> {
        let value = match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::OID => Value::Int(u32::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            // SUM() of BIGINT is NUMERIC.
            Type::NUMERIC => Value::Int(numeric_to_i64(raw)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => {
                Value::Text(<&str>::from_sql(ty, raw)?.to_string())
            }
            Type::BYTEA => Value::Blob(raw.to_vec()),
            // e.g. pg_advisory_xact_lock().
            Type::VOID => Value::Null,
            _ => return Err(format!("unsupported result type {ty}").into()),
        };
        Ok(Cell(value))
    }

    fn from_sql_null(_: &Type) -> Result<Cell, Box<dyn StdError + Sync + Send>> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// An integral NUMERIC in binary form: digit count, weight, sign, scale, then base-10000
/// digits, the first one weighted 10000^weight.
fn numeric_to_i64(raw: &[u8]) -> Result<i64, Box<dyn StdError + Sync + Send>> {
    let word = |i: usize| -> Result<i16, Box<dyn StdError + Sync + Send>> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated NUMERIC".into())
    };
    let ndigits = usize::try_from(word(0)?)?;
    let weight = i64::from(word(1)?);
    let sign = word(2)? as u16;
    if sign == 0xC000 {
        return Err("NUMERIC NaN is not an integer".into());
    }
    let mut value: i64 = 0;
    for k in 0..ndigits {
        let digit = i64::from(word(4 + k)?);
        let power = weight - k as i64;
        if power < 0 {
            if digit != 0 {
                return Err("NUMERIC with a fraction is not an integer".into());
            }
            continue;
        }
        let scale = 10_000i64
            .checked_pow(u32::try_from(power)?)
            .ok_or("NUMERIC out of range")?;
        value = digit
            .checked_mul(scale)
            .and_then(|d| value.checked_add(d))
            .ok_or("NUMERIC out of range")?;
    }
    Ok(if sign == 0x4000 { -value } else { value })
}

/// The tests' private PostgreSQL, shared with the end-to-end tests.
#[cfg(test)]
#[path = "../../tests/support/postgres.rs"]
pub(crate) mod harness;

#[cfg(test)]
mod tests {
    use super::*;

    use super::harness;

    fn fresh() -> String {
        harness::shared().create_database()
    }

    fn versions(conn: &mut PgConn) -> Vec<i64> {
        conn.query("SELECT version FROM schema_version ORDER BY version", &[])
            .unwrap()
            .iter()
            .map(|r| r.int(0).unwrap())
            .collect()
    }

    /// The shared migrations give PostgreSQL SQLite's tables, columns and indexes, in its
    /// types (and its one index of its own).
    #[test]
    fn both_backends_have_the_same_tables_columns_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let location = crate::store::Location::Sqlite(dir.path().join("db"));
        let mut lite = crate::store::open(&location).unwrap();
        let mut pg = PgConn::open(&fresh(), Durability::Full).unwrap();
        let texts = |rows: Vec<Row>| -> Vec<String> {
            let mut v: Vec<String> = rows
                .iter()
                .map(|r| {
                    (0..3)
                        .filter_map(|i| r.text(i).ok())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            v.sort();
            v
        };
        let lite_columns = texts(
            lite.query(
                "SELECT m.name, p.name, p.type FROM sqlite_master AS m, pragma_table_info(m.name) AS p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
                &[],
            )
            .unwrap(),
        );
        let pg_columns = texts(
            pg.query(
                "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name <> 'schema_version'",
                &[],
            )
            .unwrap(),
        );
        let as_pg: Vec<String> = lite_columns
            .iter()
            .map(|c| {
                c.replace(" INTEGER", " bigint")
                    .replace(" TEXT", " text")
                    .replace(" BLOB", " bytea")
            })
            .collect();
        assert_eq!(pg_columns, as_pg);
        assert!(pg_columns.len() > 60, "{pg_columns:?}");

        let lite_indexes = texts(
            lite.query(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%'",
                &[],
            )
            .unwrap(),
        );
        let mut pg_indexes = texts(
            pg.query(
                "SELECT indexname::text FROM pg_indexes AS i WHERE schemaname = 'public'
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)",
                &[],
            )
            .unwrap(),
        );
        pg_indexes.retain(|i| i != "incidents_one_open" && i != "spool_new");
        assert_eq!(pg_indexes, lite_indexes);
    }

    #[test]
    fn both_backends_know_the_same_schema_versions() {
        assert_eq!(PG_SCHEMA_VERSION, crate::store::SCHEMA_VERSION);
    }

    #[test]
    fn migrations_apply_once_and_reopen_cleanly() {
        let url = fresh();
        drop(PgConn::open(&url, Durability::Full).unwrap());
        let mut conn = PgConn::open(&url, Durability::Full).unwrap();
        assert_eq!(
            versions(&mut conn),
            (1..=PG_SCHEMA_VERSION).collect::<Vec<_>>()
        );
        let sync = conn.query("SHOW synchronous_commit", &[]).unwrap();
        assert_eq!(sync[0].text(0).unwrap(), "on");
        let derived = PgConn::open(&url, Durability::Derived);
        let sync = derived
            .unwrap()
            .query("SHOW synchronous_commit", &[])
            .unwrap();
        assert_eq!(sync[0].text(0).unwrap(), "off");
    }

    #[test]
    fn two_connections_migrating_at_once_apply_each_version_once() {
        let url = fresh();
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        PgConn::open(&url, Durability::Full).map(drop)
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        let mut conn = PgConn::open(&url, Durability::Full).unwrap();
        assert_eq!(
            versions(&mut conn),
            (1..=PG_SCHEMA_VERSION).collect::<Vec<_>>()
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let url = fresh();
        let mut conn = PgConn::open(&url, Durability::Full).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, 0)",
            &[(PG_SCHEMA_VERSION + 1).into()],
        )
        .unwrap();
        let err = PgConn::open(&url, Durability::Full).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found, .. } if found == PG_SCHEMA_VERSION + 1));
    }

    #[test]
    fn values_round_trip_with_nulls_blobs_and_sums() {
        let mut conn = PgConn::open(&fresh(), Durability::Full).unwrap();
        let raw: Vec<u8> = (0..=255u8).collect();
        let id = conn
            .query(
                "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, size, raw)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                &[
                    Value::Int(1_700_000_000_123),
                    "127.0.0.1:5000".into(),
                    "mon".into(),
                    "a@b".into(),
                    "[\"glpi@x\"]".into(),
                    true.into(),
                    Value::from(None::<String>),
                    Value::Int(raw.len() as i64),
                    raw.as_slice().into(),
                ],
            )
            .unwrap()[0]
            .int(0)
            .unwrap();
        let mut row = conn
            .query_opt(
                "SELECT received_at, tls, auth_user, raw, state, note FROM spool WHERE id = $1",
                &[id.into()],
            )
            .unwrap()
            .expect("the row");
        assert_eq!(row.int(0).unwrap(), 1_700_000_000_123);
        assert_eq!(row.int(1).unwrap(), 1);
        assert_eq!(row.opt_text(2).unwrap(), None);
        assert_eq!(row.take_blob(3).unwrap(), raw);
        assert_eq!(row.text(4).unwrap(), "new");
        assert!(row.text(5).is_err(), "NULL read as text is an error");
        let sums = conn
            .query(
                "SELECT SUM(size), COUNT(*), SUM(size) * -1000000000000, MAX(id) FROM spool",
                &[],
            )
            .unwrap();
        assert_eq!(sums[0].int(0).unwrap(), 256);
        assert_eq!(sums[0].int(1).unwrap(), 1);
        assert_eq!(sums[0].int(2).unwrap(), -256_000_000_000_000);
        assert_eq!(sums[0].int(3).unwrap(), id);
        // A parameter the server types as INTEGER (int4) takes an i64 that fits.
        let plus = conn.query("SELECT $1 + 1", &[Value::Int(41)]).unwrap();
        assert_eq!(plus[0].int(0).unwrap(), 42);
        let too_big = conn.query("SELECT $1 + 1", &[Value::Int(i64::MAX)]);
        assert!(
            matches!(too_big, Err(StoreError::Postgres(_))),
            "{too_big:?}"
        );
        assert!(conn.is_connected(), "a bad parameter keeps the connection");
    }

    #[test]
    fn rollback_undoes_and_commit_keeps() {
        let mut conn = PgConn::open(&fresh(), Durability::Full).unwrap();
        let put = |conn: &mut PgConn, k: &str| {
            conn.execute("INSERT INTO kv (key, value) VALUES ($1, 'v')", &[k.into()])
                .unwrap()
        };
        conn.begin().unwrap();
        put(&mut conn, "undone");
        conn.rollback().unwrap();
        conn.begin().unwrap();
        put(&mut conn, "kept");
        conn.commit().unwrap();
        // A statement error aborts the transaction; the commit reports it.
        conn.begin().unwrap();
        put(&mut conn, "aborted");
        let dup = conn.execute("INSERT INTO kv (key, value) VALUES ('kept', 'x')", &[]);
        assert!(matches!(dup, Err(StoreError::Postgres(_))));
        assert!(matches!(conn.commit(), Err(StoreError::TxAborted)));
        assert!(!conn.in_transaction());
        let keys: Vec<String> = conn
            .query("SELECT key FROM kv ORDER BY key", &[])
            .unwrap()
            .iter()
            .map(|r| r.text(0).unwrap())
            .collect();
        assert_eq!(keys, vec!["kept".to_string()]);
    }

    #[test]
    fn one_open_incident_per_alert_key() {
        let mut conn = PgConn::open(&fresh(), Durability::Full).unwrap();
        let insert = |conn: &mut PgConn, id: i64, open: i64| {
            conn.execute(
                "INSERT INTO incidents (id, tag, alert_key, open, data, updated_at)
                 VALUES ($1, $2, 'centreon/web1/http', $3, '{}', 0)",
                &[id.into(), format!("ALERT-{id}").into(), open.into()],
            )
        };
        insert(&mut conn, 1, 0).unwrap();
        insert(&mut conn, 2, 1).unwrap();
        let second_open = insert(&mut conn, 3, 1);
        match second_open {
            Err(StoreError::Postgres(e)) => {
                assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION))
            }
            other => panic!("a second open incident was accepted: {other:?}"),
        }
        insert(&mut conn, 4, 0).unwrap();
    }

    #[test]
    fn the_failing_call_reports_unavailable_and_the_next_reconnects() {
        // Its own server: restarting the shared one would disturb the other tests.
        let server = harness::PgServer::start_new().unwrap();
        let url = server.url();
        let mut conn = PgConn::open(&url, Durability::Full).unwrap();
        let one = |conn: &mut PgConn| {
            conn.query("SELECT 1", &[])
                .map(|rows| rows[0].int(0).unwrap())
        };
        assert_eq!(one(&mut conn).unwrap(), 1);

        server.stop();
        assert!(matches!(one(&mut conn), Err(StoreError::Unavailable(_))));
        // Still down: connecting fails the same way, quickly.
        let started = std::time::Instant::now();
        assert!(matches!(one(&mut conn), Err(StoreError::Unavailable(_))));
        assert!(started.elapsed() < Duration::from_secs(5));
        server.start().unwrap();
        assert_eq!(one(&mut conn).unwrap(), 1);

        // Lost inside a transaction: the rest of it fails, nothing of it stays, and the
        // connection comes back once the transaction has ended.
        conn.begin().unwrap();
        conn.execute("INSERT INTO kv (key, value) VALUES ('lost', 'v')", &[])
            .unwrap();
        server.stop();
        server.start().unwrap();
        let insert = conn.execute("INSERT INTO kv (key, value) VALUES ('after', 'v')", &[]);
        assert!(
            matches!(insert, Err(StoreError::Unavailable(_))),
            "{insert:?}"
        );
        assert!(matches!(one(&mut conn), Err(StoreError::Unavailable(_))));
        assert!(matches!(conn.commit(), Err(StoreError::Unavailable(_))));
        let left = conn.query("SELECT COUNT(*) FROM kv", &[]).unwrap();
        assert_eq!(left[0].int(0).unwrap(), 0);
    }

    /// Opened, used and dropped on an async worker (where the blocking client's own
    /// runtime would panic), on a blocking-pool thread and on a plain one: every call runs
    /// on the connection's thread, none on a thread spawned for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_run_on_the_connections_thread_wherever_they_come_from() {
        let mut conn = PgConn::open(&fresh(), Durability::Full).unwrap();
        let rows = conn.query("SELECT $1::text", &["x".into()]).unwrap();
        assert_eq!(rows[0].text(0).unwrap(), "x");
        let on_worker = conn.call_thread();
        assert_eq!(on_worker.as_deref(), Some("pg-connection"));
        let (conn, on_pool) = tokio::task::spawn_blocking(move || {
            let thread = conn.call_thread();
            (conn, thread)
        })
        .await
        .unwrap();
        assert_eq!(on_pool.as_deref(), Some("pg-connection"));
        let backend = |conn: &mut PgConn| {
            conn.query("SELECT pg_backend_pid()", &[]).unwrap()[0]
                .int(0)
                .unwrap()
        };
        let mut conn = conn;
        let first = backend(&mut conn);
        let mut conn = std::thread::spawn(move || {
            assert_eq!(conn.call_thread().as_deref(), Some("pg-connection"));
            conn
        })
        .join()
        .unwrap();
        assert_eq!(backend(&mut conn), first, "one connection throughout");
        drop(conn);
    }

    #[test]
    fn a_failed_copy_fails_the_transaction_and_keeps_the_connection() {
        let mut conn = PgConn::open(&fresh(), Durability::Full).unwrap();
        conn.begin().unwrap();
        let refused = conn.copy_in(
            "COPY kv (key, value) FROM STDIN".into(),
            Box::new(|out| {
                out.write_all(b"a\tb\n")
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Err(StoreError::TxMisuse("the source failed"))
            }),
        );
        assert!(
            matches!(refused, Err(StoreError::TxMisuse(_))),
            "{refused:?}"
        );
        assert!(matches!(conn.commit(), Err(StoreError::TxAborted)));
        let copied = conn.copy_in(
            "COPY kv (key, value) FROM STDIN".into(),
            Box::new(|out| {
                out.write_all(b"a\tb\nc\td\n")
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            }),
        );
        assert_eq!(copied.unwrap(), 2);
        let n = conn.query("SELECT COUNT(*) FROM kv", &[]).unwrap();
        assert_eq!(n[0].int(0).unwrap(), 2);
    }

    #[test]
    fn urls_are_shown_without_password() {
        assert_eq!(
            redact_url("postgres://gw:s3cret@db.example:5432/alertgate"),
            "postgres://gw:***@db.example:5432/alertgate"
        );
        assert_eq!(
            redact_url("postgres://gw@db/alertgate"),
            "postgres://gw@db/alertgate"
        );
        assert!(matches!(
            PgConn::open("postgres://a:b@h:notaport/x", Durability::Full),
            Err(StoreError::BadUrl { url, .. }) if !url.contains(":b@")
        ));
    }
}
