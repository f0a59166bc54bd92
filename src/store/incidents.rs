//! Incidents as the correlation engine left them (JSON snapshots, one row each), the
//! engine's counters, and which host each processed alert mail was about (for mails such
//! as Zabbix updates that only name their original problem by In-Reply-To).

use super::StoreError;
use crate::correlate::{CorrelationState, Incident};
use rusqlite::{params, Connection, OptionalExtension};

/// Write an incident snapshot (insert or replace).
pub fn save(conn: &Connection, incident: &Incident, now: i64) -> Result<(), StoreError> {
    let data = serde_json::to_string(incident).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO incidents (id, tag, alert_key, open, data, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET open = excluded.open, data = excluded.data, updated_at = excluded.updated_at",
    )?
    .execute(params![
        incident.id as i64,
        incident.tag,
        incident.key.to_string(),
        incident.ended.is_none(),
        data,
        now
    ])?;
    Ok(())
}

/// The incident's digest went out: clear its flag in place, without a new snapshot.
pub fn mark_digested(conn: &Connection, id: u64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE incidents SET data = json_set(data, '$.in_pending_digest', json('false')), updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![id as i64, now])?;
    Ok(())
}

pub fn mark_ended(conn: &Connection, id: u64, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE incidents SET open = 0, updated_at = ?2 WHERE id = ?1")?
        .execute(params![id as i64, now])?;
    Ok(())
}

/// Every incident, open ones only unless `all`.
pub fn load(conn: &Connection, all: bool) -> Result<Vec<Incident>, StoreError> {
    let sql = if all {
        "SELECT data FROM incidents ORDER BY id"
    } else {
        "SELECT data FROM incidents WHERE open = 1 ORDER BY id"
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for data in rows {
        let data = data?;
        out.push(
            serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("incident row: {e}")))?,
        );
    }
    Ok(out)
}

pub fn by_tag(conn: &Connection, tag: &str) -> Result<Option<Incident>, StoreError> {
    let data: Option<String> = conn
        .query_row("SELECT data FROM incidents WHERE tag = ?1", [tag], |r| {
            r.get(0)
        })
        .optional()?;
    data.map(|d| {
        serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("incident row: {e}")))
    })
    .transpose()
}

/// Rebuild the correlation engine's state from what was committed.
pub fn load_state(conn: &Connection) -> Result<CorrelationState, StoreError> {
    let max_id: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM incidents", [], |r| {
        r.get(0)
    })?;
    let saved = get_kv(conn, "next_incident_id")?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1);
    let next_id = saved.max(max_id as u64 + 1);
    Ok(CorrelationState::from_incidents(
        load(conn, false)?,
        next_id,
    ))
}

pub fn get_kv(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub fn set_kv(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value])?;
    Ok(())
}

/// Remember which host an alert mail was about.
pub fn remember_message_host(
    conn: &Connection,
    message_id: &str,
    host: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO message_hosts (message_id, host) VALUES (?1, ?2)")?
        .execute(params![message_id, host])?;
    Ok(())
}

pub fn host_for_message(conn: &Connection, message_id: &str) -> Result<Option<String>, StoreError> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    Ok(conn
        .query_row(
            "SELECT host FROM message_hosts WHERE message_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, AlertKind, NotificationType, State};
    use crate::correlate::{correlate, tick, CorrelationPolicy};

    #[test]
    fn digested_flag_is_cleared_in_the_stored_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("db")).unwrap();
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
                save(&conn, &inc, 600).unwrap();
            }
        }
        assert_eq!(
            load(&conn, false)
                .unwrap()
                .iter()
                .filter(|i| i.in_pending_digest)
                .count(),
            1
        );
        let d = tick(&mut state, 660, &policy);
        assert_eq!(d.digested.len(), 1);
        for id in &d.digested {
            mark_digested(&conn, *id, 660).unwrap();
        }
        let stored = load(&conn, false).unwrap();
        assert_eq!(stored.len(), 3, "a, b and the digest incident");
        assert!(stored.iter().all(|i| !i.in_pending_digest));
        // A restart no longer queues it for another digest.
        let rebuilt = load_state(&conn).unwrap();
        assert!(rebuilt.pending_digest().is_empty());
    }
}
