//! Read-only views for the status page, the metrics and the CLI listings: what the
//! operator looks at, without SQL outside the store.

use super::db::Db;
use super::outbound::OutboundState;
use super::StoreError;

/// How many outbound mails have an order key (incident tag) starting with `prefix`,
/// e.g. `DIGEST-` for the storm digests.
pub fn outbound_with_key_prefix(db: &mut Db, prefix: &str) -> Result<i64, StoreError> {
    let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
    db.query_one(
        "SELECT COUNT(*) FROM outbound WHERE order_key LIKE $1",
        &[pattern.into()],
    )?
    .int(0)
}

/// One recent event told (or to be told) to GLPI: an outbound mail with its event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentEvent {
    pub id: i64,
    pub incident: String,
    pub event: Option<String>,
    pub subject: String,
    pub state: OutboundState,
    pub queued_at: i64,
}

/// The latest `limit` outbound mails, newest first.
pub fn recent_events(db: &mut Db, limit: usize) -> Result<Vec<RecentEvent>, StoreError> {
    db.query(
        "SELECT id, order_key, event, subject, state, queued_at FROM outbound ORDER BY id DESC LIMIT $1",
        &[(limit as i64).into()],
    )?
    .into_iter()
    .map(|r| {
        Ok(RecentEvent {
            id: r.int(0)?,
            incident: r.text(1)?,
            event: r.opt_text(2)?,
            subject: r.text(3)?,
            state: OutboundState::from_db(&r.text(4)?)?,
            queued_at: r.int(5)?,
        })
    })
    .collect()
}

/// Whether the store takes a write now (for `/ready`): a no-op write in a transaction
/// that is rolled back.
pub fn writable(db: &mut Db) -> Result<(), StoreError> {
    let mut tx = db.transaction()?;
    tx.execute(
        "INSERT INTO kv (key, value) VALUES ('ready_probe', '1')
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[],
    )?;
    drop(tx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbound::{enqueue, NewOutbound};

    #[test]
    fn digest_count_and_recent_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut db =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("db"))).unwrap();
        writable(&mut db).unwrap();
        for key in ["ALERT-abcdef01", "DIGEST-1700000000", "DIGEST-1700000060"] {
            enqueue(
                &mut db,
                &NewOutbound {
                    order_key: key,
                    message_id: "<m@x>",
                    subject: "s",
                    envelope_from: "a@x",
                    envelope_to: &["g@x".to_string()],
                    raw: b"x",
                    state: crate::store::outbound::OutboundState::Queued,
                    kind: crate::mail::OutboundKind::Open,
                    spool_id: None,
                    not_before: 0,
                },
                1,
            )
            .unwrap();
        }
        assert_eq!(outbound_with_key_prefix(&mut db, "DIGEST-").unwrap(), 2);
        let recent = recent_events(&mut db, 2).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].incident, "DIGEST-1700000060");
    }
}
