//! The inbound spool: accepted messages with their envelope. One writer thread commits
//! whatever the sessions have handed it in one transaction (group commit); once that is
//! on disk (SQLite: a sync thread fsyncs the log for every group committed meanwhile)
//! each session learns its spool id and answers 250.

use super::db::{Db, Dialect, Location, Row, Value};
use super::gate::WriteGate;
use super::{Durability, StoreError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

/// What the SMTP session knew about a message when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub peer: String,
    pub helo: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub tls: bool,
    pub auth_user: Option<String>,
    pub received_at: i64,
}

/// Where a spooled message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolState {
    /// Waiting for the pipeline.
    New,
    Processed,
    /// No rule matched and the policy is `hold`.
    Held,
    /// No rule matched and the policy is `drop`.
    Dropped,
    /// A GLPI notification that was read for its ticket id.
    Feedback,
    /// The same Message-ID and content as another spooled message (a client's resend, or
    /// the copy a retrying client gave the other gateway): ignored.
    Duplicate,
    /// Processing failed; the note says why.
    Failed,
}

impl SpoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            SpoolState::New => "new",
            SpoolState::Processed => "processed",
            SpoolState::Held => "held",
            SpoolState::Dropped => "dropped",
            SpoolState::Feedback => "feedback",
            SpoolState::Duplicate => "duplicate",
            SpoolState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<SpoolState> {
        [
            SpoolState::New,
            SpoolState::Processed,
            SpoolState::Held,
            SpoolState::Dropped,
            SpoolState::Feedback,
            SpoolState::Duplicate,
            SpoolState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// A state read back from the store; an unknown one is named in the error.
    pub fn from_db(s: &str) -> Result<SpoolState, StoreError> {
        SpoolState::parse(s).ok_or_else(|| StoreError::BadValue {
            table: "spool",
            column: "state",
            value: s.to_owned(),
        })
    }
}

impl std::fmt::Display for SpoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One spooled message as read back.
#[derive(Debug, Clone)]
pub struct SpoolRow {
    pub id: i64,
    pub envelope: Envelope,
    pub message_id: Option<String>,
    pub size: usize,
    pub state: SpoolState,
    pub note: Option<String>,
    pub raw: Option<Vec<u8>>,
}

/// A message's bytes on their way to the spool: in memory (small, e.g. `inject`), or
/// streamed to a file during DATA so memory does not grow with size × sessions.
// One per message in flight, moved rather than stored: boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum SpoolBytes {
    Memory(Vec<u8>),
    /// `head` (the Received header) followed by the file's content.
    File {
        head: Vec<u8>,
        draft: Box<Draft>,
    },
}

impl SpoolBytes {
    fn len(&self) -> usize {
        match self {
            SpoolBytes::Memory(raw) => raw.len(),
            SpoolBytes::File { head, draft } => head.len() + draft.len,
        }
    }

    /// The message is all in memory (a draft that never spilled to its file).
    fn in_memory(&self) -> bool {
        match self {
            SpoolBytes::Memory(_) => true,
            SpoolBytes::File { draft, .. } => !draft.spilled,
        }
    }
}

struct SpoolJob {
    envelope: Envelope,
    bytes: SpoolBytes,
    message_id: Option<String>,
    /// The spool id once committed, or why the group's commit failed.
    reply: oneshot::Sender<Result<i64, String>>,
}

/// The sessions' side of the spool writer: cheap to clone.
#[derive(Clone)]
pub struct SpoolHandle {
    jobs: mpsc::Sender<SpoolJob>,
    /// Woken after each commit, so the pipeline need not poll.
    pub committed: Arc<Notify>,
    /// Taken by the writer around each group commit; the pipeline takes it too.
    pub gate: Arc<WriteGate>,
    /// Where DATA is streamed before it is committed.
    incoming: Arc<std::path::PathBuf>,
    /// Bytes in drafts not yet committed, across every session.
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    next_draft: Arc<std::sync::atomic::AtomicU64>,
}

/// Bytes of a message kept in memory: a smaller one (most alert mails) never touches a
/// file before its commit; a bigger one keeps its start here (its header block).
const HEAD_KEPT: usize = 64 * 1024;
/// Size of one copy step from a draft file into the database.
const COPY_CHUNK: usize = 64 * 1024;

/// A message being received: up to `HEAD_KEPT` bytes in memory; beyond that its bytes
/// go to a file in the store's `incoming/` directory (memory does not grow with size ×
/// sessions) and only its start stays in memory. Dropping a draft that was not stored
/// deletes its file.
pub struct Draft {
    path: std::path::PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// The file holds the whole message (`head` is only its start).
    spilled: bool,
    head: Vec<u8>,
    len: usize,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Draft {
    /// Appends received bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if !self.spilled && self.len + bytes.len() > HEAD_KEPT {
            let file = tokio::fs::File::create(&self.path).await?;
            let mut file = tokio::io::BufWriter::with_capacity(COPY_CHUNK, file);
            file.write_all(&self.head).await?;
            self.file = Some(file);
            self.spilled = true;
        }
        let keep = HEAD_KEPT.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..keep]);
        if self.spilled {
            let file = self
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("draft already finished"))?;
            file.write_all(bytes).await?;
        }
        self.len += bytes.len();
        self.inflight
            .fetch_add(bytes.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message's first bytes (all of it when small): where its header block is.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
        }
        Ok(())
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        self.inflight
            .fetch_sub(self.len, std::sync::atomic::Ordering::SeqCst);
        if self.spilled {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl SpoolHandle {
    /// Start the writer thread on its own connection; drafts are streamed to
    /// `incoming` (see [`incoming_dir`]). The database is checked first (SQLite: `PRAGMA
    /// quick_check`): a damaged one is refused.
    pub fn start(
        location: &Location,
        incoming: &Path,
        group_commit_max: usize,
    ) -> Result<SpoolHandle, StoreError> {
        let incoming = incoming.to_path_buf();
        // Drafts left by a crash were never answered 250: nothing is lost by removing them.
        let _ = std::fs::remove_dir_all(&incoming);
        std::fs::create_dir_all(&incoming).map_err(|source| StoreError::CreateDir {
            path: incoming.display().to_string(),
            source,
        })?;
        // SQLite: the commit does not fsync; the sync thread does, for every group
        // committed meanwhile, and only then do their sessions hear 250. The writer goes
        // on with the next group while the disk syncs this one.
        let log = location.sqlite_path().map(super::db::wal_path);
        let durability = match log {
            Some(_) => Durability::Derived,
            None => Durability::Full,
        };
        let mut db = Db::open_checked(location, durability)?;
        // A checkpoint inside the group commit would hold back every session's 250.
        db.checkpoint_in_commits_beyond(super::db::WRITER_CHECKPOINT_FRAMES)?;
        let (tx, rx) = mpsc::channel(group_commit_max.max(1) * 4);
        let committed = Arc::new(Notify::new());
        let notify = committed.clone();
        let gate = Arc::new(WriteGate::new());
        let writer_gate = Arc::clone(&gate);
        let spawn_error = |thread| move |source| StoreError::ThreadSpawn { thread, source };
        let syncer = match log {
            Some(log) => {
                // One group syncing while the writer commits the next, then waits: its
                // group after that grows meanwhile (smaller groups write more pages).
                let (to_sync, groups) = std::sync::mpsc::sync_channel(0);
                std::thread::Builder::new()
                    .name("spool-sync".into())
                    .spawn(move || sync_loop(&log, groups))
                    .map_err(spawn_error("spool sync"))?;
                Some(to_sync)
            }
            None => None,
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                writer_loop(db, rx, group_commit_max.max(1), notify, writer_gate, syncer)
            })
            .map_err(spawn_error("spool writer"))?;
        Ok(SpoolHandle {
            jobs: tx,
            committed,
            gate,
            incoming: Arc::new(incoming),
            inflight: Arc::default(),
            next_draft: Arc::default(),
        })
    }

    /// Bytes received by sessions and not yet committed.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A new draft for a message about to be received (its file is made only if needed).
    pub async fn draft(&self) -> std::io::Result<Draft> {
        let n = self
            .next_draft
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self
            .incoming
            .join(format!("{}-{n}.eml", std::process::id()));
        Ok(Draft {
            path,
            file: None,
            spilled: false,
            head: Vec::new(),
            len: 0,
            inflight: Arc::clone(&self.inflight),
        })
    }

    /// Store a message durably; returns its spool id once committed. `message_id` is
    /// the caller's reading of the mail: the store does not parse mail.
    pub async fn store(
        &self,
        envelope: Envelope,
        raw: Vec<u8>,
        message_id: Option<String>,
    ) -> Result<i64, StoreError> {
        self.submit(envelope, SpoolBytes::Memory(raw), message_id)
            .await
    }

    /// Store a streamed message, `head` (its Received header) first, durably.
    pub async fn store_draft(
        &self,
        envelope: Envelope,
        head: Vec<u8>,
        mut draft: Draft,
        message_id: Option<String>,
    ) -> Result<i64, StoreError> {
        draft.finish().await.map_err(|source| StoreError::Draft {
            path: draft.path.display().to_string(),
            source,
        })?;
        self.submit(
            envelope,
            SpoolBytes::File {
                head,
                draft: Box::new(draft),
            },
            message_id,
        )
        .await
    }

    async fn submit(
        &self,
        envelope: Envelope,
        bytes: SpoolBytes,
        message_id: Option<String>,
    ) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(SpoolJob {
                envelope,
                bytes,
                message_id,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        match rx.await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(why)) => Err(StoreError::GroupCommit(why)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

/// Where sessions stream DATA before the commit: `<db file>.incoming` next to the
/// configured `[store] path` (also with PostgreSQL: drafts are local to each gateway).
pub fn incoming_dir(db: &Path) -> std::path::PathBuf {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "alertgate".into());
    dir.join(format!("{name}.incoming"))
}

const INSERT: &str = "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id";
/// SQLite: the row gets a zeroblob of the message's size, filled in chunks after.
const INSERT_ZEROBLOB: &str = "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, zeroblob($10)) RETURNING id";

fn envelope_params(e: &Envelope, message_id: Option<&str>, size: usize, raw: Value) -> Vec<Value> {
    let rcpt = serde_json::to_string(&e.rcpt_to).unwrap_or_else(|_| "[]".into());
    vec![
        e.received_at.into(),
        e.peer.as_str().into(),
        e.helo.as_str().into(),
        e.mail_from.as_str().into(),
        rcpt.into(),
        e.tls.into(),
        e.auth_user.as_deref().into(),
        message_id.into(),
        (size as i64).into(),
        raw,
    ]
}

/// Spool one message directly (no writer thread, no fsync promise): for `replay`,
/// which feeds a temporary store.
pub fn insert(
    db: &mut Db,
    envelope: &Envelope,
    raw: &[u8],
    message_id: Option<&str>,
) -> Result<i64, StoreError> {
    let params = envelope_params(envelope, message_id, raw.len(), raw.into());
    db.query_one(INSERT, &params)?.int(0)
}

/// A committed group on its way to the disk: each session's reply and spool id.
struct Committed {
    replies: Vec<(oneshot::Sender<Result<i64, String>>, i64)>,
    /// When the group's commit began: the sessions' wait is measured up to the sync.
    started: std::time::Instant,
}

impl Committed {
    fn answer(self, synced: &Result<(), String>) {
        crate::http::metrics::metrics().store_commit(self.started.elapsed());
        for (reply, id) in self.replies {
            let _ = reply.send(synced.clone().map(|()| id));
        }
    }
}

fn writer_loop(
    mut db: Db,
    mut rx: mpsc::Receiver<SpoolJob>,
    max: usize,
    committed: Arc<Notify>,
    gate: Arc<WriteGate>,
    syncer: Option<std::sync::mpsc::SyncSender<Committed>>,
) {
    let mut batch = Vec::with_capacity(max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let inserted = {
            let _gate = gate.enter();
            insert_batch(&mut db, &batch)
        };
        match inserted {
            Ok(ids) => {
                committed.notify_one();
                let group = Committed {
                    replies: batch.drain(..).map(|job| job.reply).zip(ids).collect(),
                    started,
                };
                match &syncer {
                    // The commit fsynced (PostgreSQL): answer now.
                    None => group.answer(&Ok(())),
                    Some(syncer) => {
                        if let Err(unsent) = syncer.send(group) {
                            unsent
                                .0
                                .answer(&Err("the spool's sync thread has stopped".into()));
                        }
                    }
                }
            }
            Err(e) => {
                crate::http::metrics::metrics().store_commit(started.elapsed());
                tracing::error!(error = %e, messages = batch.len(), "spool commit failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Puts the write-ahead log on disk for every group committed so far, then answers
/// them. A failed sync answers 451: the client sends again, and the copy that may
/// have reached the disk is caught as a duplicate by its Message-ID.
fn sync_loop(log: &Path, groups: std::sync::mpsc::Receiver<Committed>) {
    while let Ok(first) = groups.recv() {
        let mut synced = vec![first];
        synced.extend(groups.try_iter());
        let result = std::fs::File::open(log)
            .and_then(|file| file.sync_data())
            .map_err(|e| format!("cannot put the spool on disk ({}): {e}", log.display()));
        if let Err(e) = &result {
            let messages: usize = synced.iter().map(|g| g.replies.len()).sum();
            tracing::error!(error = %e, messages, "spool sync failed");
        }
        for group in synced {
            group.answer(&result);
        }
    }
}

/// The group commit: every job of the batch in one transaction.
fn insert_batch(db: &mut Db, batch: &[SpoolJob]) -> Result<Vec<i64>, StoreError> {
    let mut tx = db.transaction()?;
    let mut ids = Vec::with_capacity(batch.len());
    for job in batch {
        let size = job.bytes.len();
        let id = match tx.dialect() {
            // Small (in memory): bound with the row, no blob handle.
            Dialect::Sqlite if job.bytes.in_memory() => {
                let raw = job.bytes.read_all()?;
                let params =
                    envelope_params(&job.envelope, job.message_id.as_deref(), size, raw.into());
                tx.query_one(INSERT, &params)?.int(0)?
            }
            Dialect::Sqlite => {
                let params = envelope_params(
                    &job.envelope,
                    job.message_id.as_deref(),
                    size,
                    (size as i64).into(),
                );
                let id = tx.query_one(INSERT_ZEROBLOB, &params)?.int(0)?;
                if let Some(conn) = tx.sqlite() {
                    write_blob(conn, id, &job.bytes)?;
                }
                id
            }
            Dialect::Postgres if job.bytes.in_memory() => {
                let raw = job.bytes.read_all()?;
                let params =
                    envelope_params(&job.envelope, job.message_id.as_deref(), size, raw.into());
                first_id(tx.query_owned(INSERT, params)?)?
            }
            Dialect::Postgres => copy_spilled(&mut tx, job)?,
        };
        ids.push(id);
    }
    tx.commit()?;
    Ok(ids)
}

fn first_id(rows: Vec<Row>) -> Result<i64, StoreError> {
    rows.first()
        .ok_or(StoreError::NoRow {
            statement: "INSERT INTO spool".into(),
        })?
        .int(0)
}

/// The spool row's columns as `COPY` fills them (`state` and the rest take defaults).
const COPY_SPOOL: &str = "COPY spool (id, received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw) FROM STDIN (FORMAT binary)";

/// PostgreSQL, a message that spilled to its draft file (a big one): streamed from the
/// file to the server by `COPY`, as SQLite's blob handle does, instead of read whole
/// into memory. COPY returns no id: the row's is taken from the sequence first.
fn copy_spilled(db: &mut Db, job: &SpoolJob) -> Result<i64, StoreError> {
    let SpoolBytes::File { head, draft } = &job.bytes else {
        return Err(StoreError::TxMisuse(
            "copy_spilled on a message held in memory",
        ));
    };
    let id = db
        .query_one("SELECT nextval(pg_get_serial_sequence('spool', 'id'))", &[])?
        .int(0)?;
    let mut fields = vec![Value::Int(id)];
    fields.extend(envelope_params(
        &job.envelope,
        job.message_id.as_deref(),
        job.bytes.len(),
        Value::Null,
    ));
    fields.pop(); // the raw column: streamed after the others
    let path = draft.path.clone();
    let file = std::fs::File::open(&path).map_err(|source| StoreError::Draft {
        path: path.display().to_string(),
        source,
    })?;
    let (head, body_len) = (head.clone(), draft.len);
    let copied = db.copy_in(
        COPY_SPOOL,
        Box::new(move |out| {
            let shown = path.display().to_string();
            let io = |e| blob_error(e, &shown);
            out.write_all(COPY_BINARY_HEADER).map_err(io)?;
            out.write_all(&(fields.len() as i16 + 1).to_be_bytes())
                .map_err(io)?;
            for field in &fields {
                write_copy_field(out, field).map_err(io)?;
            }
            let raw_len = i32::try_from(head.len() + body_len)
                .map_err(|_| blob_error(std::io::Error::other("over 2 GB"), &shown))?;
            out.write_all(&raw_len.to_be_bytes()).map_err(io)?;
            out.write_all(&head).map_err(io)?;
            let mut body = std::io::Read::take(file, body_len as u64);
            let sent = std::io::copy(&mut body, out).map_err(|source| StoreError::Draft {
                path: shown.clone(),
                source,
            })?;
            if sent as usize != body_len {
                return Err(StoreError::DraftShort {
                    path: shown,
                    expected: body_len,
                    found: sent as usize,
                });
            }
            out.write_all(&(-1i16).to_be_bytes()).map_err(io)
        }),
    );
    match copied {
        Some(Ok(1)) => Ok(id),
        Some(Ok(n)) => Err(StoreError::BadValue {
            table: "spool",
            column: "raw",
            value: format!("COPY stored {n} rows for one message"),
        }),
        Some(Err(e)) => Err(e),
        None => Err(StoreError::TxMisuse("COPY on a backend without it")),
    }
}

/// `PGCOPY\n\377\r\n\0`, no flags, no header extension.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// One field of a binary COPY tuple: its length, then its bytes in the column type's
/// binary form (integers are the spool's BIGINT columns: 8 bytes, big-endian).
fn write_copy_field(out: &mut dyn std::io::Write, value: &Value) -> std::io::Result<()> {
    let bytes: Vec<u8> = match value {
        Value::Null => return out.write_all(&(-1i32).to_be_bytes()),
        Value::Int(v) => v.to_be_bytes().to_vec(),
        Value::Text(t) => t.as_bytes().to_vec(),
        Value::Blob(b) => b.clone(),
    };
    let len = i32::try_from(bytes.len()).map_err(|_| std::io::Error::other("field over 2 GB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(&bytes)
}

impl SpoolBytes {
    /// The whole message in memory (backends without incremental blob writes).
    fn read_all(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(self.len());
        self.copy_to(&mut out)?;
        Ok(out)
    }

    /// Writes the message to `out` in chunks: a streamed one goes from its file to the
    /// database without ever being whole in memory.
    fn copy_to(&self, out: &mut impl std::io::Write) -> Result<(), StoreError> {
        use std::io::Read;
        match self {
            SpoolBytes::Memory(raw) => out.write_all(raw).map_err(|e| blob_error(e, "memory"))?,
            SpoolBytes::File { head, draft } if !draft.spilled => {
                out.write_all(head).map_err(|e| blob_error(e, "memory"))?;
                out.write_all(&draft.head)
                    .map_err(|e| blob_error(e, "memory"))?;
            }
            SpoolBytes::File { head, draft } => {
                let path = draft.path.display().to_string();
                let draft_error = |source| StoreError::Draft {
                    path: path.clone(),
                    source,
                };
                out.write_all(head).map_err(|e| blob_error(e, &path))?;
                let mut file = std::fs::File::open(&draft.path).map_err(draft_error)?;
                let mut chunk = vec![0u8; COPY_CHUNK];
                let mut left = draft.len;
                while left > 0 {
                    let n = file
                        .read(&mut chunk[..left.min(COPY_CHUNK)])
                        .map_err(draft_error)?;
                    if n == 0 {
                        return Err(StoreError::DraftShort {
                            path,
                            expected: draft.len,
                            found: draft.len - left,
                        });
                    }
                    out.write_all(&chunk[..n])
                        .map_err(|e| blob_error(e, &path))?;
                    left -= n;
                }
            }
        }
        Ok(())
    }
}

/// Writing into the database's blob failed.
fn blob_error(source: std::io::Error, from: &str) -> StoreError {
    StoreError::SpoolCopy {
        from: from.to_owned(),
        source,
    }
}

/// Fills the row's `raw` (a zeroblob of the right size) in chunks.
fn write_blob(conn: &rusqlite::Connection, id: i64, bytes: &SpoolBytes) -> Result<(), StoreError> {
    let mut blob = conn.blob_open(rusqlite::MAIN_DB, "spool", "raw", id, false)?;
    bytes.copy_to(&mut blob)?;
    blob.close()?;
    Ok(())
}

const ROW_COLUMNS: &str = "id, received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, state, note";

fn row_to_spool(mut r: Row, with_raw: bool) -> Result<SpoolRow, StoreError> {
    let rcpt = r.text(5)?;
    Ok(SpoolRow {
        id: r.int(0)?,
        envelope: Envelope {
            received_at: r.int(1)?,
            peer: r.text(2)?,
            helo: r.text(3)?,
            mail_from: r.text(4)?,
            rcpt_to: serde_json::from_str(&rcpt).unwrap_or_default(),
            tls: r.bool(6)?,
            auth_user: r.opt_text(7)?,
        },
        message_id: r.opt_text(8)?,
        size: r.int(9)? as usize,
        state: SpoolState::from_db(&r.text(10)?)?,
        note: r.opt_text(11)?,
        raw: if with_raw {
            Some(r.take_blob(12)?)
        } else {
            None
        },
    })
}

/// Spooled messages, newest last; optionally only one state. A row that cannot be
/// read is listed as damaged instead of failing the whole listing.
pub fn list_checked(
    db: &mut Db,
    state: Option<SpoolState>,
    limit: usize,
) -> Result<Vec<Result<SpoolRow, super::DamagedRow>>, StoreError> {
    let limit = limit as i64;
    let found = match state {
        Some(state) => db.query(
            "SELECT id FROM spool WHERE state = $1 ORDER BY id DESC LIMIT $2",
            &[state.as_str().into(), limit.into()],
        )?,
        None => db.query(
            "SELECT id FROM spool ORDER BY id DESC LIMIT $1",
            &[limit.into()],
        )?,
    };
    let mut ids = found
        .iter()
        .map(|r| r.int(0))
        .collect::<Result<Vec<_>, _>>()?;
    ids.reverse();
    let sql = format!("SELECT {ROW_COLUMNS} FROM spool WHERE id = $1");
    Ok(ids
        .into_iter()
        .filter_map(|id| {
            let read = db
                .query_opt(&sql, &[id.into()])
                .and_then(|r| r.map(|r| row_to_spool(r, false)).transpose());
            match read {
                Ok(row) => row.map(Ok),
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
    state: Option<SpoolState>,
    limit: usize,
) -> Result<Vec<SpoolRow>, StoreError> {
    Ok(super::readable(list_checked(db, state, limit)?))
}

pub fn get(db: &mut Db, id: i64) -> Result<Option<SpoolRow>, StoreError> {
    let sql = format!("SELECT {ROW_COLUMNS}, raw FROM spool WHERE id = $1");
    db.query_opt(&sql, &[id.into()])?
        .map(|r| row_to_spool(r, true))
        .transpose()
}

/// The spooled messages with this Message-ID that message `id` may be a copy of (id and
/// bytes, oldest first), for the pipeline's duplicate check: every earlier one, and a
/// later one already processed as an original. With two gateways ids are not in commit
/// order: a later id may be processed first while the earlier copy was still being
/// committed on the other gateway; that copy must then be the duplicate.
/// One page (`limit` rows, ids above `after_id`): a tool that reuses one Message-ID for
/// every mail would otherwise make each check read them all.
pub fn possible_originals(
    db: &mut Db,
    message_id: &str,
    id: i64,
    after_id: i64,
    limit: usize,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    db.query(
        "SELECT id, raw FROM spool WHERE message_id = $1 AND id <> $2 AND id > $3 \
         AND (id < $2 OR state NOT IN ('new', 'duplicate')) ORDER BY id LIMIT $4",
        &[
            message_id.into(),
            id.into(),
            after_id.into(),
            (limit as i64).into(),
        ],
    )?
    .into_iter()
    .map(|mut r| Ok((r.int(0)?, r.take_blob(1)?)))
    .collect()
}

/// Bytes of spooled messages `pending` loads at once (at least one message): 64 big
/// mails in one batch would otherwise put 640 MB in memory, and each is composed again.
const PENDING_BYTES: usize = 16 * 1024 * 1024;

/// The oldest messages still waiting for the pipeline, with their bytes: at most
/// `limit` of them and, beyond the first, no more than `PENDING_BYTES` in all.
pub fn pending(db: &mut Db, limit: usize) -> Result<Vec<SpoolRow>, StoreError> {
    let sizes = db.query(
        "SELECT id, size FROM spool WHERE state = 'new' ORDER BY id LIMIT $1",
        &[(limit as i64).into()],
    )?;
    load_pending(db, sizes)
}

/// As `pending`, inside the pipeline's transaction, claiming the rows: PostgreSQL locks
/// them until the commit (`FOR UPDATE SKIP LOCKED`: another gateway takes the next ones,
/// and these again if this one dies before its commit).
pub fn claim_pending(db: &mut Db, limit: usize) -> Result<Vec<SpoolRow>, StoreError> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "SELECT id, size FROM spool WHERE state = 'new' ORDER BY id LIMIT $1",
        Dialect::Postgres => {
            "SELECT id, size FROM spool WHERE state = 'new' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        }
    };
    let sizes = db.query(&super::lease::claim_sql(sql), &[(limit as i64).into()])?;
    load_pending(db, sizes)
}

/// Whether any message waits for the pipeline.
pub fn has_pending(db: &mut Db) -> Result<bool, StoreError> {
    Ok(db
        .query_opt("SELECT 1 FROM spool WHERE state = 'new' LIMIT 1", &[])?
        .is_some())
}

fn load_pending(db: &mut Db, sizes: Vec<Row>) -> Result<Vec<SpoolRow>, StoreError> {
    let mut total = 0usize;
    let mut rows = Vec::new();
    for r in sizes {
        let (id, size) = (r.int(0)?, r.int(1)?);
        total = total.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
        if !rows.is_empty() && total > PENDING_BYTES {
            break;
        }
        if let Some(row) = get(db, id)? {
            rows.push(row);
        }
    }
    Ok(rows)
}

pub fn set_state(
    db: &mut Db,
    id: i64,
    state: SpoolState,
    note: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE spool SET state = $1, note = $2, processed_at = $3 WHERE id = $4",
        &[state.as_str().into(), note.into(), now.into(), id.into()],
    )?;
    Ok(())
}

/// Counts per state, for `queue list` and metrics.
pub fn counts(db: &mut Db) -> Result<Vec<(String, i64)>, StoreError> {
    db.query(
        "SELECT state, COUNT(*) FROM spool GROUP BY state ORDER BY state",
        &[],
    )?
    .into_iter()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .collect()
}

/// Messages in one state (e.g. `new`: still waiting for the pipeline).
pub fn count_in(db: &mut Db, state: SpoolState) -> Result<i64, StoreError> {
    db.query_one(
        "SELECT COUNT(*) FROM spool WHERE state = $1",
        &[state.as_str().into()],
    )?
    .int(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            peer: "127.0.0.1:5000".into(),
            helo: "client.test".into(),
            mail_from: "nagios@example.test".into(),
            rcpt_to: vec!["glpi@example.test".into()],
            tls: false,
            auth_user: None,
            received_at: 1_700_000_000,
        }
    }

    #[tokio::test]
    async fn concurrent_stores_commit_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let location = Location::Sqlite(path.clone());
        let spool = SpoolHandle::start(&location, &incoming_dir(&path), 16).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let raw =
                    format!("Message-ID: <m{i}@test>\r\nSubject: s\r\n\r\nbody\r\n").into_bytes();
                let mid = Some(format!("m{i}@test"));
                spool.store(envelope(), raw, mid).await.unwrap()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 50);
        let mut db = super::super::open(&location).unwrap();
        let rows = pending(&mut db, 100).unwrap();
        assert_eq!(rows.len(), 50);
        let first = get(&mut db, rows[0].id).unwrap().unwrap();
        assert_eq!(first.envelope, envelope());
        assert_eq!(first.state, SpoolState::New);
        assert!(first.message_id.unwrap().starts_with('m'));
        set_state(&mut db, first.id, SpoolState::Processed, None, 1).unwrap();
        assert_eq!(pending(&mut db, 100).unwrap().len(), 49);
        assert_eq!(count_in(&mut db, SpoolState::New).unwrap(), 49);
    }

    /// PostgreSQL: a big message (spilled to its draft file) is streamed into the row by
    /// COPY, byte for byte, next to small ones bound with the INSERT, in one group commit.
    #[tokio::test]
    async fn on_postgres_big_and_small_messages_are_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::store::pg::harness::shared().create_database();
        let location = Location::Postgres(url);
        let spool = SpoolHandle::start(&location, &dir.path().join("incoming"), 16).unwrap();
        let head = b"Received: from client.test\r\n".to_vec();
        let mut draft = spool.draft().await.unwrap();
        let mut body = b"Message-ID: <big@test>\r\nSubject: big\r\n\r\n".to_vec();
        // 3 MB, every byte value, in SMTP-sized writes.
        body.extend((0..3 * 1024 * 1024).map(|i: u32| (i * 7 % 251) as u8));
        for chunk in body.chunks(8192) {
            draft.write(chunk).await.unwrap();
        }
        let big = spool.store_draft(envelope(), head.clone(), draft, Some("big@test".into()));
        let small = spool.store(envelope(), b"Subject: s\r\n\r\nsmall\r\n".to_vec(), None);
        let (big, small) = tokio::join!(big, small);
        let (big, small) = (big.unwrap(), small.unwrap());
        assert_ne!(big, small);
        let mut db = Db::open(&location, Durability::Derived).unwrap();
        let read = tokio::task::spawn_blocking(move || {
            let big = get(&mut db, big).unwrap().expect("the big row");
            let small = get(&mut db, small).unwrap().expect("the small row");
            (big, small)
        })
        .await
        .unwrap();
        let mut want = head;
        want.extend_from_slice(&body);
        assert_eq!(read.0.size, want.len());
        assert!(
            read.0.raw.as_deref() == Some(want.as_slice()),
            "the big message differs"
        );
        assert_eq!(read.0.message_id.as_deref(), Some("big@test"));
        assert_eq!(read.0.envelope, envelope());
        assert_eq!(read.0.state, SpoolState::New);
        assert_eq!(
            read.1.raw.as_deref(),
            Some(&b"Subject: s\r\n\r\nsmall\r\n"[..])
        );
        assert_eq!(read.1.message_id, None);
    }

    /// PostgreSQL: finding the new messages is a walk of the new ones only, however many
    /// processed ones the spool keeps. Before migration 11, with a backlog (most rows new)
    /// the planner walked the primary key past every processed one: 0.3 s per claim with
    /// 27,000 processed in the benchmark.
    #[test]
    fn on_postgres_the_claim_walks_only_new_messages() {
        let url = crate::store::pg::harness::shared().create_database();
        let mut db = Db::open(&Location::Postgres(url), Durability::Full).unwrap();
        db.execute(
            "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, size, raw, state)
             SELECT 0, 'p', 'h', 'f', '[]', 0, 1, 'x', CASE WHEN g > 20000 THEN 'new' ELSE 'processed' END
             FROM generate_series(1, 60000) g",
            &[],
        )
        .unwrap();
        db.execute("ANALYZE spool", &[]).unwrap();
        for sql in [
            "SELECT id, size FROM spool WHERE state = 'new' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            "SELECT id, size FROM spool WHERE state = 'new' ORDER BY id LIMIT $1",
        ] {
            let plan: Vec<String> = db
                .query(&format!("EXPLAIN (ANALYZE, FORMAT TEXT) {sql}"), &[64i64.into()])
                .unwrap()
                .iter()
                .map(|r| r.text(0).unwrap())
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains("Index Scan using spool_new on spool"), "{plan}");
            assert!(!plan.contains("Rows Removed by Filter"), "{plan}");
        }
        let mut tx = db.transaction().unwrap();
        let claimed = claim_pending(&mut tx, 64).unwrap();
        assert_eq!(claimed.len(), 64);
        assert_eq!(claimed[0].id, 20001);
    }
}
