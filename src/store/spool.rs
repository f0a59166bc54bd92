//! The inbound spool: accepted messages with their envelope. One writer thread commits
//! whatever the sessions have handed it in one transaction (group commit), and only then
//! does each session learn its spool id and answer 250.

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

struct SpoolJob {
    envelope: Envelope,
    raw: Vec<u8>,
    message_id: Option<String>,
    reply: oneshot::Sender<Result<i64, String>>,
}

/// The sessions' side of the spool writer: cheap to clone.
#[derive(Clone)]
pub struct SpoolHandle {
    jobs: mpsc::Sender<SpoolJob>,
    /// Woken after each commit, so the pipeline need not poll.
    pub committed: Arc<Notify>,
}

impl SpoolHandle {
    /// Start the writer thread on its own connection.
    pub fn start(path: &Path, group_commit_max: usize) -> Result<SpoolHandle, StoreError> {
        let conn = open(path)?;
        let (tx, rx) = mpsc::channel(group_commit_max.max(1) * 4);
        let committed = Arc::new(Notify::new());
        let notify = committed.clone();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(conn, rx, group_commit_max.max(1), notify))
            .map_err(|e| StoreError::Corrupt(format!("cannot start spool writer: {e}")))?;
        Ok(SpoolHandle {
            jobs: tx,
            committed,
        })
    }

    /// Store a message durably; returns its spool id once committed.
    pub async fn store(&self, envelope: Envelope, raw: Vec<u8>) -> Result<i64, StoreError> {
        // Parsed here, in the caller's task: the single writer thread only writes.
        let message_id = crate::rules::message_id(&raw);
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(SpoolJob {
                envelope,
                raw,
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

/// Spool one message directly on `conn` (no writer thread, no fsync promise): for
/// `replay`, which feeds a temporary store.
pub fn insert(conn: &Connection, envelope: &Envelope, raw: &[u8]) -> Result<i64, StoreError> {
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
        crate::rules::message_id(raw),
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
        match insert_batch(&mut conn, &batch) {
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
        let mut stmt = tx.prepare_cached(
            "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, auth_user, message_id, size, raw)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for job in batch {
            let e = &job.envelope;
            let rcpt = serde_json::to_string(&e.rcpt_to).unwrap_or_else(|_| "[]".into());
            stmt.execute(params![
                e.received_at,
                e.peer,
                e.helo,
                e.mail_from,
                rcpt,
                e.tls,
                e.auth_user,
                job.message_id,
                job.raw.len() as i64,
                job.raw,
            ])?;
            ids.push(tx.last_insert_rowid());
        }
    }
    tx.commit()?;
    Ok(ids)
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

/// Spooled messages, newest last; optionally only one state.
pub fn list(
    conn: &Connection,
    state: Option<SpoolState>,
    limit: usize,
) -> Result<Vec<SpoolRow>, StoreError> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM spool WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params![state.map(SpoolState::as_str), limit as i64], |r| {
            row_to_spool(r, false)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().rev().collect())
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<SpoolRow>, StoreError> {
    let sql = format!("SELECT {ROW_COLUMNS}, raw FROM spool WHERE id = ?1");
    Ok(conn
        .query_row(&sql, [id], |r| row_to_spool(r, true))
        .optional()?)
}

/// The oldest messages still waiting for the pipeline, with their bytes.
pub fn pending(conn: &Connection, limit: usize) -> Result<Vec<SpoolRow>, StoreError> {
    let sql =
        format!("SELECT {ROW_COLUMNS}, raw FROM spool WHERE state = 'new' ORDER BY id LIMIT ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([limit as i64], |r| row_to_spool(r, true))?
        .collect::<Result<Vec<_>, _>>()?;
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
                spool.store(envelope(), raw).await.unwrap()
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
