//! The inbound spool: accepted messages with their envelope. One writer thread commits
//! whatever the sessions have handed it in one transaction (group commit), and only then
//! does each session learn its spool id and answer 250.

use super::gate::WriteGate;
use super::{open, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
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
            SpoolState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One spooled message as read back.
#[derive(Debug, Clone)]
pub struct SpoolRow {
    pub id: i64,
    pub envelope: Envelope,
    pub message_id: Option<String>,
    pub size: usize,
    pub state: String,
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

    /// The whole message when it is in memory (a draft that never spilled to its file).
    fn whole(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self {
            SpoolBytes::Memory(raw) => Some(std::borrow::Cow::Borrowed(raw)),
            SpoolBytes::File { head, draft } if draft.file.is_none() && !draft.spilled => {
                let mut whole = Vec::with_capacity(head.len() + draft.head.len());
                whole.extend_from_slice(head);
                whole.extend_from_slice(&draft.head);
                Some(std::borrow::Cow::Owned(whole))
            }
            SpoolBytes::File { .. } => None,
        }
    }
}

struct SpoolJob {
    envelope: Envelope,
    bytes: SpoolBytes,
    message_id: Option<String>,
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
/// sessions), and only its start stays in memory. Dropping a draft that was not stored
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
    /// Start the writer thread on its own connection.
    /// The database is checked first (`PRAGMA quick_check`): a damaged one is refused.
    pub fn start(path: &Path, group_commit_max: usize) -> Result<SpoolHandle, StoreError> {
        let incoming = incoming_dir(path);
        // Drafts left by a crash were never answered 250: nothing is lost by removing them.
        let _ = std::fs::remove_dir_all(&incoming);
        std::fs::create_dir_all(&incoming).map_err(|source| StoreError::CreateDir {
            path: incoming.display().to_string(),
            source,
        })?;
        let conn = match open(path) {
            Ok(conn) => conn,
            // A damaged page can already fail the schema read: say so precisely.
            Err(StoreError::Sqlite(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseCorrupt)
                    || e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) =>
            {
                return Err(StoreError::Damaged {
                    path: path.display().to_string(),
                    details: e.to_string(),
                })
            }
            Err(e) => return Err(e),
        };
        super::quick_check(&conn, path)?;
        let (tx, rx) = mpsc::channel(group_commit_max.max(1) * 4);
        let committed = Arc::new(Notify::new());
        let notify = committed.clone();
        let gate = Arc::new(WriteGate::new());
        let writer_gate = Arc::clone(&gate);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(conn, rx, group_commit_max.max(1), notify, writer_gate))
            .map_err(|e| StoreError::Corrupt(format!("cannot start spool writer: {e}")))?;
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
    /// the caller's reading of the mail (the store does not parse mail).
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
        draft
            .finish()
            .await
            .map_err(|e| StoreError::Corrupt(format!("cannot write the message: {e}")))?;
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
            Ok(Err(msg)) => Err(StoreError::Corrupt(msg)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

/// `incoming/` next to the database.
fn incoming_dir(db: &Path) -> std::path::PathBuf {
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

/// Spool one message directly on `conn` (no writer thread, no fsync promise): for
/// `replay`, which feeds a temporary store.
pub fn insert(
    conn: &Connection,
    envelope: &Envelope,
    raw: &[u8],
    message_id: Option<&str>,
) -> Result<i64, StoreError> {
    let rcpt = serde_json::to_string(&envelope.rcpt_to).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        envelope.received_at,
        envelope.peer,
        envelope.helo,
        envelope.mail_from,
        rcpt,
        envelope.tls,
        envelope.auth_user,
        message_id,
        raw.len() as i64,
        raw,
    ])?;
    Ok(conn.last_insert_rowid())
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<SpoolJob>,
    max: usize,
    committed: Arc<Notify>,
    gate: Arc<WriteGate>,
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
            insert_batch(&mut conn, &batch)
        };
        crate::http::metrics::metrics().store_commit(started.elapsed());
        match inserted {
            Ok(ids) => {
                committed.notify_one();
                for (job, id) in batch.drain(..).zip(ids) {
                    let _ = job.reply.send(Ok(id));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "spool commit failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

fn insert_batch(conn: &mut Connection, batch: &[SpoolJob]) -> Result<Vec<i64>, StoreError> {
    let tx = conn.transaction()?;
    let mut ids = Vec::with_capacity(batch.len());
    {
        let mut streamed = tx.prepare_cached(
            "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, zeroblob(?10))",
        )?;
        for job in batch {
            let e = &job.envelope;
            let rcpt = serde_json::to_string(&e.rcpt_to).unwrap_or_else(|_| "[]".into());
            if let Some(whole) = job.bytes.whole() {
                ids.push(insert_whole(
                    &tx,
                    e,
                    &rcpt,
                    job.message_id.as_deref(),
                    &whole,
                )?);
                continue;
            }
            let size = job.bytes.len();
            streamed.execute(params![
                e.received_at,
                e.peer,
                e.helo,
                e.mail_from,
                rcpt,
                e.tls,
                e.auth_user,
                job.message_id,
                size as i64,
                size as i64,
            ])?;
            let id = tx.last_insert_rowid();
            write_blob(&tx, id, &job.bytes)?;
            ids.push(id);
        }
    }
    tx.commit()?;
    Ok(ids)
}

/// One in-memory message, bytes bound with the row (no blob handle).
fn insert_whole(
    conn: &Connection,
    e: &Envelope,
    rcpt: &str,
    message_id: Option<&str>,
    raw: &[u8],
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.received_at,
        e.peer,
        e.helo,
        e.mail_from,
        rcpt,
        e.tls,
        e.auth_user,
        message_id,
        raw.len() as i64,
        raw,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Fills the row's `raw` (a zeroblob of the right size) in chunks: a streamed message
/// goes from its file to the database without ever being whole in memory.
fn write_blob(conn: &Connection, id: i64, bytes: &SpoolBytes) -> Result<(), StoreError> {
    use std::io::{Read, Write};
    let mut blob = conn.blob_open(rusqlite::MAIN_DB, "spool", "raw", id, false)?;
    let io = |e: std::io::Error| StoreError::Corrupt(format!("spooling the message: {e}"));
    match bytes {
        SpoolBytes::Memory(raw) => blob.write_all(raw).map_err(io)?,
        SpoolBytes::File { head, draft } => {
            blob.write_all(head).map_err(io)?;
            let mut file = std::fs::File::open(&draft.path).map_err(io)?;
            let mut chunk = vec![0u8; COPY_CHUNK];
            let mut left = draft.len;
            while left > 0 {
                let n = file.read(&mut chunk[..left.min(COPY_CHUNK)]).map_err(io)?;
                if n == 0 {
                    return Err(StoreError::Corrupt(
                        "a spooled message file was cut short".into(),
                    ));
                }
                blob.write_all(&chunk[..n]).map_err(io)?;
                left -= n;
            }
        }
    }
    blob.close()?;
    Ok(())
}

const ROW_COLUMNS: &str = "id, received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, state, note";

fn row_to_spool(r: &rusqlite::Row<'_>, with_raw: bool) -> rusqlite::Result<SpoolRow> {
    let rcpt: String = r.get(5)?;
    Ok(SpoolRow {
        id: r.get(0)?,
        envelope: Envelope {
            received_at: r.get(1)?,
            peer: r.get(2)?,
            helo: r.get(3)?,
            mail_from: r.get(4)?,
            rcpt_to: serde_json::from_str(&rcpt).unwrap_or_default(),
            tls: r.get(6)?,
            auth_user: r.get(7)?,
        },
        message_id: r.get(8)?,
        size: r.get::<_, i64>(9)? as usize,
        state: r.get(10)?,
        note: r.get(11)?,
        raw: if with_raw { Some(r.get(12)?) } else { None },
    })
}

/// Spooled messages, newest last; optionally only one state. A row that cannot be
/// read is listed as damaged instead of failing the whole listing.
pub fn list_checked(
    conn: &Connection,
    state: Option<SpoolState>,
    limit: usize,
) -> Result<Vec<Result<SpoolRow, super::DamagedRow>>, StoreError> {
    let mut ids = conn
        .prepare("SELECT id FROM spool WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2")?
        .query_map(params![state.map(SpoolState::as_str), limit as i64], |r| {
            r.get::<_, i64>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    ids.reverse();
    let sql = format!("SELECT {ROW_COLUMNS} FROM spool WHERE id = ?1");
    let mut stmt = conn.prepare(&sql)?;
    Ok(ids
        .into_iter()
        .map(|id| {
            stmt.query_row([id], |r| row_to_spool(r, false))
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
    state: Option<SpoolState>,
    limit: usize,
) -> Result<Vec<SpoolRow>, StoreError> {
    Ok(super::readable(list_checked(conn, state, limit)?))
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<SpoolRow>, StoreError> {
    let sql = format!("SELECT {ROW_COLUMNS}, raw FROM spool WHERE id = ?1");
    Ok(conn
        .query_row(&sql, [id], |r| row_to_spool(r, true))
        .optional()?)
}

/// Bytes of spooled messages `pending` loads at once (at least one message): 64 big
/// mails in one batch would otherwise put 640 MB in memory, and each is composed again.
const PENDING_BYTES: usize = 16 * 1024 * 1024;

/// The oldest messages still waiting for the pipeline, with their bytes: at most
/// `limit` of them and, beyond the first, no more than `PENDING_BYTES` in all.
pub fn pending(conn: &Connection, limit: usize) -> Result<Vec<SpoolRow>, StoreError> {
    let sizes = conn
        .prepare_cached("SELECT id, size FROM spool WHERE state = 'new' ORDER BY id LIMIT ?1")?
        .query_map([limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut total = 0usize;
    let mut rows = Vec::new();
    for (id, size) in sizes {
        total = total.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
        if !rows.is_empty() && total > PENDING_BYTES {
            break;
        }
        if let Some(row) = get(conn, id)? {
            rows.push(row);
        }
    }
    Ok(rows)
}

pub fn set_state(
    conn: &Connection,
    id: i64,
    state: SpoolState,
    note: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE spool SET state = ?2, note = ?3, processed_at = ?4 WHERE id = ?1")?
        .execute(params![id, state.as_str(), note, now])?;
    Ok(())
}

/// Counts per state, for `queue list` and metrics.
pub fn counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT state, COUNT(*) FROM spool GROUP BY state ORDER BY state")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
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
        let spool = SpoolHandle::start(&path, 16).unwrap();
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
        let conn = open(&path).unwrap();
        let rows = pending(&conn, 100).unwrap();
        assert_eq!(rows.len(), 50);
        let first = get(&conn, rows[0].id).unwrap().unwrap();
        assert_eq!(first.envelope, envelope());
        assert!(first.message_id.unwrap().starts_with('m'));
        set_state(&conn, first.id, SpoolState::Processed, None, 1).unwrap();
        assert_eq!(pending(&conn, 100).unwrap().len(), 49);
    }
}
