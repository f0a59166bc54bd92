//! Incidents as the correlation engine left them (JSON snapshots, one row each), the
//! engine's counters, and which host each processed alert mail was about (for mails such
//! as Zabbix updates that only name their original problem by In-Reply-To).

use super::db::{Db, Dialect};
use super::StoreError;
use crate::correlate::{CorrelationState, Incident};

fn decode(data: &str) -> Result<Incident, StoreError> {
    serde_json::from_str(data).map_err(|source| StoreError::Json {
        what: "incident row",
        source,
    })
}

/// Write an incident snapshot (insert or replace).
pub fn save(db: &mut Db, incident: &Incident, now: i64) -> Result<(), StoreError> {
    let data = serde_json::to_string(incident).map_err(|source| StoreError::Json {
        what: "encoding an incident",
        source,
    })?;
    db.execute(
        "INSERT INTO incidents (id, tag, alert_key, open, data, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET open = excluded.open, data = excluded.data, updated_at = excluded.updated_at",
        &[
            (incident.id as i64).into(),
            incident.tag.as_str().into(),
            incident.key.to_string().into(),
            incident.ended.is_none().into(),
            data.into(),
            now.into(),
        ],
    )?;
    Ok(())
}

/// The incident's digest went out: clear its flag in place, without a new snapshot.
pub fn mark_digested(db: &mut Db, id: u64, now: i64) -> Result<(), StoreError> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "UPDATE incidents SET data = json_set(data, '$.in_pending_digest', json('false')), updated_at = $1 WHERE id = $2",
        Dialect::Postgres => "UPDATE incidents SET data = jsonb_set(data::jsonb, '{in_pending_digest}', 'false')::text, updated_at = $1 WHERE id = $2",
    };
    db.execute(sql, &[now.into(), (id as i64).into()])?;
    Ok(())
}

pub fn mark_ended(db: &mut Db, id: u64, now: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE incidents SET open = 0, updated_at = $1 WHERE id = $2",
        &[now.into(), (id as i64).into()],
    )?;
    Ok(())
}

/// Every incident, open ones only unless `all`.
pub fn load(db: &mut Db, all: bool) -> Result<Vec<Incident>, StoreError> {
    let sql = if all {
        "SELECT data FROM incidents ORDER BY id"
    } else {
        "SELECT data FROM incidents WHERE open = 1 ORDER BY id"
    };
    db.query(sql, &[])?
        .into_iter()
        .map(|r| decode(&r.text(0)?))
        .collect()
}

pub fn by_tag(db: &mut Db, tag: &str) -> Result<Option<Incident>, StoreError> {
    db.query_opt("SELECT data FROM incidents WHERE tag = $1", &[tag.into()])?
        .map(|r| decode(&r.text(0)?))
        .transpose()
}

/// Rebuild the correlation engine's state from what was committed.
pub fn load_state(db: &mut Db) -> Result<CorrelationState, StoreError> {
    let max_id = db
        .query_one("SELECT COALESCE(MAX(id), 0) FROM incidents", &[])?
        .int(0)?;
    let saved = get_kv(db, "next_incident_id")?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1);
    let next_id = saved.max(max_id as u64 + 1);
    Ok(CorrelationState::from_incidents(load(db, false)?, next_id))
}

/// The advisory lock of the correlation step ("alertcor" in ASCII).
const CORRELATION_LOCK: i64 = 0x616c_6572_7463_6f72;

/// Inside a pipeline transaction: waits until no other gateway correlates (PostgreSQL;
/// SQLite's write transaction already excludes every other writer), then returns the
/// incidents' generation, which each correlating commit moves on.
pub fn lock_correlation(db: &mut Db) -> Result<i64, StoreError> {
    if db.dialect() == Dialect::Postgres {
        db.query_one(
            "SELECT pg_advisory_xact_lock($1)",
            &[CORRELATION_LOCK.into()],
        )?;
    }
    generation(db)
}

/// How many correlating commits the store has seen (0 for a new one).
pub fn generation(db: &mut Db) -> Result<i64, StoreError> {
    let value = get_kv(db, "correlation_generation")?;
    value
        .map(|v| {
            v.parse::<i64>().map_err(|_| StoreError::BadValue {
                table: "kv",
                column: "correlation_generation",
                value: v,
            })
        })
        .transpose()
        .map(|g| g.unwrap_or(0))
}

pub fn set_generation(db: &mut Db, generation: i64) -> Result<(), StoreError> {
    set_kv(db, "correlation_generation", &generation.to_string())
}

pub fn get_kv(db: &mut Db, key: &str) -> Result<Option<String>, StoreError> {
    db.query_opt("SELECT value FROM kv WHERE key = $1", &[key.into()])?
        .map(|r| r.text(0))
        .transpose()
}

pub fn set_kv(db: &mut Db, key: &str, value: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[key.into(), value.into()],
    )?;
    Ok(())
}

/// Remember which host an alert mail was about.
pub fn remember_message_host(db: &mut Db, message_id: &str, host: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO message_hosts (message_id, host) VALUES ($1, $2) ON CONFLICT (message_id) DO NOTHING",
        &[message_id.into(), host.into()],
    )?;
    Ok(())
}

pub fn host_for_message(db: &mut Db, message_id: &str) -> Result<Option<String>, StoreError> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    db.query_opt(
        "SELECT host FROM message_hosts WHERE message_id = $1",
        &[id.into()],
    )?
    .map(|r| r.text(0))
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, AlertKind, NotificationType, State};
    use crate::correlate::{correlate, tick, CorrelationPolicy};

    #[test]
    fn digested_flag_is_cleared_in_the_stored_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut db =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("db"))).unwrap();
        let policy = CorrelationPolicy {
            max_new_incidents_per_minute: 1,
            ..CorrelationPolicy::default()
        };
        let mut state = CorrelationState::default();
        for host in ["a", "b"] {
            let alert = Alert {
                source: "nagios".into(),
                kind: AlertKind::Host,
                host: host.into(),
                host_alias: None,
                service: String::new(),
                state: State::Down,
                notification_type: NotificationType::Problem,
                output: "down".into(),
                long_output: None,
                author: None,
                comment: None,
                address: None,
                event_time: None,
                vendor_id: None,
                url: None,
                rule: "test".into(),
                needs_sanitizing: false,
                inherits: Vec::new(),
            };
            for inc in correlate(&mut state, &alert, 600, &policy).changed {
                save(&mut db, &inc, 600).unwrap();
            }
        }
        assert_eq!(
            load(&mut db, false)
                .unwrap()
                .iter()
                .filter(|i| i.in_pending_digest)
                .count(),
            1
        );
        let d = tick(&mut state, 660, &policy);
        assert_eq!(d.digested.len(), 1);
        for id in &d.digested {
            mark_digested(&mut db, *id, 660).unwrap();
        }
        let stored = load(&mut db, false).unwrap();
        assert_eq!(stored.len(), 3, "a, b and the digest incident");
        assert!(stored.iter().all(|i| !i.in_pending_digest));
        // A restart no longer queues it for another digest.
        let rebuilt = load_state(&mut db).unwrap();
        assert!(rebuilt.pending_digest().is_empty());
    }
}
