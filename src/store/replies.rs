//! Which incident each alert mail was about, by Message-ID (its own and the ones it
//! cites), so a follow-up that only names its problem's mail finds that incident.

use super::StoreError;
use crate::correlate::reply::ReplyIndex;
use rusqlite::{params, Connection, OptionalExtension};

/// The reply index over a store connection (inside the pipeline's transaction).
pub struct StoreReplyIndex<'a> {
    pub conn: &'a Connection,
}

impl ReplyIndex for StoreReplyIndex<'_> {
    type Error = StoreError;

    fn incident_for(&self, message_ids: &[String]) -> Result<Option<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT incident_tag FROM message_incidents WHERE message_id = ?1")?;
        for id in message_ids {
            if let Some(tag) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional()? {
                return Ok(Some(tag));
            }
        }
        Ok(None)
    }

    fn remember(&self, message_ids: &[String], tag: &str) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO message_incidents (message_id, incident_tag) VALUES (?1, ?2)",
        )?;
        for id in message_ids {
            stmt.execute(params![id, tag])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_incident_of_an_id_is_kept_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open(&dir.path().join("db.sqlite")).unwrap();
        let index = StoreReplyIndex { conn: &conn };
        index
            .remember(&["a@x".into(), "b@x".into()], "ALERT-1")
            .unwrap();
        index.remember(&["b@x".into()], "ALERT-2").unwrap();
        assert_eq!(
            index.incident_for(&["zz@x".into(), "b@x".into()]).unwrap(),
            Some("ALERT-1".into())
        );
        assert_eq!(index.incident_for(&["zz@x".into()]).unwrap(), None);
    }
}
