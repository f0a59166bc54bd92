//! Read-only views for the status page, the metrics and the CLI listings: what the
//! operator looks at, without SQL outside the store.

use super::StoreError;
use rusqlite::{params, Connection};

/// How many outbound mails have an order key (incident tag) starting with `prefix`,
/// e.g. `DIGEST-` for the storm digests.
pub fn outbound_with_key_prefix(conn: &Connection, prefix: &str) -> Result<i64, StoreError> {
    let pattern = format!("{}%", prefix.replace(['%', '_'], ""));
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM outbound WHERE order_key LIKE ?1",
        params![pattern],
        |r| r.get(0),
    )?)
}

/// One recent event told (or to be told) to GLPI: an outbound mail with its event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentEvent {
    pub id: i64,
    pub incident: String,
    pub event: Option<String>,
    pub subject: String,
    pub state: String,
    pub queued_at: i64,
}

/// The latest `limit` outbound mails, newest first.
pub fn recent_events(conn: &Connection, limit: usize) -> Result<Vec<RecentEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, order_key, event, subject, state, queued_at FROM outbound ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map([limit as i64], |r| {
            Ok(RecentEvent {
                id: r.get(0)?,
                incident: r.get(1)?,
                event: r.get(2)?,
                subject: r.get(3)?,
                state: r.get(4)?,
                queued_at: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Whether the store takes a write now (for `/ready`): a no-op write in a transaction.
pub fn writable(conn: &Connection) -> Result<(), StoreError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO kv (key, value) VALUES ('ready_probe', '1')
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [],
    )?;
    tx.rollback()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbound::{enqueue, NewOutbound};

    #[test]
    fn digest_count_and_recent_events() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("db")).unwrap();
        writable(&conn).unwrap();
        for key in ["ALERT-abcdef01", "DIGEST-1700000000", "DIGEST-1700000060"] {
            enqueue(
                &conn,
                &NewOutbound {
                    order_key: key,
                    message_id: "<m@x>",
                    subject: "s",
                    envelope_from: "a@x",
                    envelope_to: &["g@x".to_string()],
                    raw: b"x",
                    state: crate::store::outbound::OutboundState::Queued,
                    spool_id: None,
                    not_before: 0,
                },
                1,
            )
            .unwrap();
        }
        assert_eq!(outbound_with_key_prefix(&conn, "DIGEST-").unwrap(), 2);
        let recent = recent_events(&conn, 2).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].incident, "DIGEST-1700000060");
    }
}
