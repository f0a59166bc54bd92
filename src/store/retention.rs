//! Retention: processed spooled messages and sent mails are deleted once older than
//! `[store] keep_processed_days` / `keep_sent_days`, in small batches so the spool writer
//! is never held up. Held, failed, queued and dead rows stay; so does incidents' history.

use super::db::{Db, Location};
use super::StoreError;
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
pub fn prune_sent_batch(db: &mut Db, now: i64, r: &Retention) -> Result<usize, StoreError> {
    Ok(db.execute(
        "DELETE FROM outbound WHERE id IN (
            SELECT id FROM outbound WHERE state = 'sent' AND sent_at < $1 ORDER BY id LIMIT $2)",
        &[
            cutoff(now, r.keep_sent_days).into(),
            (r.batch as i64).into(),
        ],
    )? as usize)
}

/// Deletes at most `batch` spooled messages processed before the cutoff, except those a
/// pending outbound mail may still be composed from again (held mails).
pub fn prune_spool_batch(db: &mut Db, now: i64, r: &Retention) -> Result<usize, StoreError> {
    Ok(db.execute(
        "DELETE FROM spool WHERE id IN (
            SELECT s.id FROM spool AS s
            WHERE s.state IN ('processed', 'dropped', 'feedback', 'duplicate')
              AND COALESCE(s.processed_at, s.received_at) < $1
              AND NOT EXISTS (SELECT 1 FROM outbound AS o
                              WHERE o.spool_id = s.id AND o.state IN ('queued', 'held'))
            ORDER BY s.id LIMIT $2)",
        &[
            cutoff(now, r.keep_processed_days).into(),
            (r.batch as i64).into(),
        ],
    )? as usize)
}

/// Prunes everything due, batch after batch, pausing between batches.
pub fn prune(db: &mut Db, now: i64, r: &Retention, pause: Duration) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    loop {
        let sent = prune_sent_batch(db, now, r)?;
        let spool = prune_spool_batch(db, now, r)?;
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
    location: Location,
    retention: Retention,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let db = match Db::open(&location, super::Durability::Derived) {
        Ok(db) => std::sync::Arc::new(std::sync::Mutex::new(db)),
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
        let db = std::sync::Arc::clone(&db);
        let done = tokio::task::spawn_blocking(move || {
            // A pruning that panicked left no transaction open: go on with the connection.
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            prune(&mut db, super::unix_now(), &retention, BATCH_PAUSE)
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

    fn spool_row(db: &mut Db, received_at: i64) -> i64 {
        let envelope = spool::Envelope {
            peer: "p".into(),
            helo: "h".into(),
            mail_from: "f".into(),
            rcpt_to: Vec::new(),
            tls: false,
            auth_user: None,
            received_at,
        };
        spool::insert(db, &envelope, b"\0", None).unwrap()
    }

    fn ids(db: &mut Db, table: &str) -> Vec<i64> {
        let mut ids: Vec<i64> = db
            .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| r.int(0).unwrap())
            .collect();
        ids.sort();
        ids
    }

    fn outbound_row(db: &mut Db, state: OutboundState, spool_id: i64) -> i64 {
        let to = vec!["glpi@example.test".to_string()];
        outbound::enqueue(
            db,
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
        let mut db = super::super::open(&Location::Sqlite(dir.path().join("db"))).unwrap();
        let mut old_processed = Vec::new();
        for _ in 0..25 {
            let id = spool_row(&mut db, NOW - 30 * DAY);
            spool::set_state(&mut db, id, SpoolState::Processed, None, NOW - 20 * DAY).unwrap();
            old_processed.push(id);
        }
        let recent = spool_row(&mut db, NOW - DAY);
        spool::set_state(&mut db, recent, SpoolState::Processed, None, NOW - DAY).unwrap();
        let held_spool = spool_row(&mut db, NOW - 30 * DAY);
        spool::set_state(&mut db, held_spool, SpoolState::Held, None, NOW - 20 * DAY).unwrap();
        let new_spool = spool_row(&mut db, NOW - 30 * DAY);
        // A held mail is composed again from its spooled message: that one stays.
        let source = old_processed[0];
        let held_mail = outbound_row(&mut db, OutboundState::Held, source);
        let sent_old = outbound_row(&mut db, OutboundState::Queued, old_processed[1]);
        outbound::mark_sent(&mut db, sent_old, NOW - 10 * DAY).unwrap();
        let sent_new = outbound_row(&mut db, OutboundState::Queued, old_processed[2]);
        outbound::mark_sent(&mut db, sent_new, NOW - DAY).unwrap();
        let dead = outbound_row(&mut db, OutboundState::Queued, old_processed[3]);
        outbound::mark_dead(&mut db, dead, "550").unwrap();

        let retention = Retention {
            keep_processed_days: 7,
            keep_sent_days: 7,
            batch: 10,
        };
        assert_eq!(prune_spool_batch(&mut db, NOW, &retention).unwrap(), 10);
        let pruned = prune(&mut db, NOW, &retention, Duration::ZERO).unwrap();
        assert_eq!(pruned.outbound, 1);
        assert_eq!(
            pruned.spool, 14,
            "25 old processed, minus 1 still needed, minus 10"
        );
        assert_eq!(
            ids(&mut db, "spool"),
            vec![source, recent, held_spool, new_spool]
        );
        assert_eq!(ids(&mut db, "outbound"), vec![held_mail, sent_new, dead]);
        assert_eq!(
            prune(&mut db, NOW, &retention, Duration::ZERO).unwrap(),
            Pruned::default()
        );
    }
}
