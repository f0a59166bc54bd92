//! Retention: processed spooled messages and sent mails are deleted once older than
//! `[store] keep_processed_days` / `keep_sent_days`, in small batches so the spool writer
//! is never held up. Held, failed, queued and dead rows stay; so does incidents' history.

use super::StoreError;
use rusqlite::{params, Connection};
use std::time::Duration;

/// What to keep, in days, and how much to delete per transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_processed_days: u64,
    pub keep_sent_days: u64,
    pub batch: usize,
}

/// Rows deleted by one pruning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub spool: usize,
    pub outbound: usize,
}

fn cutoff(now: i64, days: u64) -> i64 {
    let secs = i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    now.saturating_sub(secs)
}

/// Deletes at most `batch` sent mails sent before the cutoff.
pub fn prune_sent_batch(conn: &Connection, now: i64, r: &Retention) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM outbound WHERE id IN (
                SELECT id FROM outbound WHERE state = 'sent' AND sent_at < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(params![cutoff(now, r.keep_sent_days), r.batch as i64])?)
}

/// Deletes at most `batch` spooled messages processed before the cutoff, except those a
/// pending outbound mail may still be composed from again (held mails).
pub fn prune_spool_batch(conn: &Connection, now: i64, r: &Retention) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM spool WHERE id IN (
                SELECT s.id FROM spool AS s
                WHERE s.state IN ('processed', 'dropped', 'feedback')
                  AND COALESCE(s.processed_at, s.received_at) < ?1
                  AND NOT EXISTS (SELECT 1 FROM outbound AS o
                                  WHERE o.spool_id = s.id AND o.state IN ('queued', 'held'))
                ORDER BY s.id LIMIT ?2)",
        )?
        .execute(params![cutoff(now, r.keep_processed_days), r.batch as i64])?)
}

/// Prunes everything due, batch after batch, pausing between batches.
pub fn prune(
    conn: &Connection,
    now: i64,
    r: &Retention,
    pause: Duration,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    loop {
        let sent = prune_sent_batch(conn, now, r)?;
        let spool = prune_spool_batch(conn, now, r)?;
        pruned.outbound += sent;
        pruned.spool += spool;
        if sent < r.batch && spool < r.batch {
            return Ok(pruned);
        }
        std::thread::sleep(pause);
    }
}

/// Pause between two batches, for the spool writer and the pipeline.
const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Prunes every `interval` on its own connection until `stop` turns true.
pub async fn run(
    path: std::path::PathBuf,
    retention: Retention,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let conn = match super::open_with(&path, super::Durability::Derived) {
        Ok(conn) => std::sync::Arc::new(std::sync::Mutex::new(conn)),
        Err(e) => {
            tracing::error!(error = %e, "retention: cannot open the store; nothing is pruned");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let conn = std::sync::Arc::clone(&conn);
        let done = tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            prune(&conn, super::unix_now(), &retention, BATCH_PAUSE)
        })
        .await;
        match done {
            Ok(Ok(pruned)) if pruned != Pruned::default() => tracing::info!(
                spool = pruned.spool,
                outbound = pruned.outbound,
                "retention: old messages deleted"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "retention: pruning failed; tried again later")
            }
            Err(e) => tracing::error!(error = %e, "retention: pruning panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbound::{self, NewOutbound, OutboundState};
    use super::super::spool::{self, SpoolState};
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_800_000_000;

    fn spool_row(conn: &Connection, received_at: i64) -> i64 {
        conn.execute(
            "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, size, raw)
             VALUES (?1, 'p', 'h', 'f', '[]', 0, 1, x'00')",
            [received_at],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    fn outbound_row(conn: &Connection, state: OutboundState, spool_id: i64) -> i64 {
        let to = vec!["glpi@example.test".to_string()];
        outbound::enqueue(
            conn,
            &NewOutbound {
                order_key: "K",
                message_id: "m",
                subject: "s",
                envelope_from: "a@example.test",
                envelope_to: &to,
                raw: b"x",
                state,
                spool_id: Some(spool_id),
                not_before: 0,
            },
            NOW - 30 * DAY,
        )
        .unwrap()
    }

    #[test]
    fn prunes_old_final_rows_in_batches_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("db")).unwrap();
        let mut old_processed = Vec::new();
        for _ in 0..25 {
            let id = spool_row(&conn, NOW - 30 * DAY);
            spool::set_state(&conn, id, SpoolState::Processed, None, NOW - 20 * DAY).unwrap();
            old_processed.push(id);
        }
        let recent = spool_row(&conn, NOW - DAY);
        spool::set_state(&conn, recent, SpoolState::Processed, None, NOW - DAY).unwrap();
        let held_spool = spool_row(&conn, NOW - 30 * DAY);
        spool::set_state(&conn, held_spool, SpoolState::Held, None, NOW - 20 * DAY).unwrap();
        let new_spool = spool_row(&conn, NOW - 30 * DAY);
        // A held mail is composed again from its spooled message: that one stays.
        let source = old_processed[0];
        let held_mail = outbound_row(&conn, OutboundState::Held, source);
        let sent_old = outbound_row(&conn, OutboundState::Queued, old_processed[1]);
        outbound::mark_sent(&conn, sent_old, NOW - 10 * DAY).unwrap();
        let sent_new = outbound_row(&conn, OutboundState::Queued, old_processed[2]);
        outbound::mark_sent(&conn, sent_new, NOW - DAY).unwrap();
        let dead = outbound_row(&conn, OutboundState::Queued, old_processed[3]);
        outbound::mark_dead(&conn, dead, "550").unwrap();

        let retention = Retention {
            keep_processed_days: 7,
            keep_sent_days: 7,
            batch: 10,
        };
        assert_eq!(prune_spool_batch(&conn, NOW, &retention).unwrap(), 10);
        let pruned = prune(&conn, NOW, &retention, Duration::ZERO).unwrap();
        assert_eq!(pruned.outbound, 1);
        assert_eq!(
            pruned.spool, 14,
            "25 old processed, minus 1 still needed, minus 10"
        );
        let ids: Vec<i64> = conn
            .prepare("SELECT id FROM spool ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(ids, vec![source, recent, held_spool, new_spool]);
        let mut left: Vec<i64> = conn
            .prepare("SELECT id FROM outbound")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        left.sort();
        assert_eq!(left, vec![held_mail, sent_new, dead]);
        assert_eq!(
            prune(&conn, NOW, &retention, Duration::ZERO).unwrap(),
            Pruned::default()
        );
    }
}
