//! Which incident each alert mail was about, by Message-ID (its own and the ones it
//! cites), so a follow-up that only names its problem's mail finds that incident.

use super::db::Db;
use super::StoreError;
use crate::correlate::reply::ReplyIndex;
use std::cell::RefCell;

/// The reply index over a store connection (inside the pipeline's transaction).
pub struct StoreReplyIndex<'a> {
    // The index is read through `&self` (the correlation engine's trait) while the
    // connection needs `&mut`: one borrow at a time, on one thread.
    db: RefCell<&'a mut Db>,
}

impl<'a> StoreReplyIndex<'a> {
    pub fn new(db: &'a mut Db) -> StoreReplyIndex<'a> {
        StoreReplyIndex {
            db: RefCell::new(db),
        }
    }
}

impl ReplyIndex for StoreReplyIndex<'_> {
    type Error = StoreError;

    fn incident_for(&self, message_ids: &[String]) -> Result<Option<String>, StoreError> {
        incident_for(&mut self.db.borrow_mut(), message_ids)
    }

    fn remember(&self, message_ids: &[String], tag: &str) -> Result<(), StoreError> {
        remember(&mut self.db.borrow_mut(), message_ids, tag)
    }
}

/// The tag of the incident the first known id of `message_ids` belongs to.
pub fn incident_for(db: &mut Db, message_ids: &[String]) -> Result<Option<String>, StoreError> {
    for id in message_ids {
        if let Some(row) = db.query_opt(
            "SELECT incident_tag FROM message_incidents WHERE message_id = $1",
            &[id.into()],
        )? {
            return Ok(Some(row.text(0)?));
        }
    }
    Ok(None)
}

/// Record that these ids belong to the incident `tag` (ids already known keep theirs).
pub fn remember(db: &mut Db, message_ids: &[String], tag: &str) -> Result<(), StoreError> {
    for id in message_ids {
        db.execute(
            "INSERT INTO message_incidents (message_id, incident_tag) VALUES ($1, $2)
             ON CONFLICT (message_id) DO NOTHING",
            &[id.into(), tag.into()],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_incident_of_an_id_is_kept_and_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = super::super::open(&super::super::Location::Sqlite(
            dir.path().join("db.sqlite"),
        ))
        .unwrap();
        let index = StoreReplyIndex::new(&mut db);
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
