//! Incidents as the correlation engine left them (JSON snapshots, one row each, with the
//! columns its indexed reads need), the engine's counters, the pipeline's commit
//! generation, and which host each processed alert mail was about (for mails such as
//! Zabbix updates that only name their original problem by In-Reply-To).

use super::db::{Db, Dialect, Value};
use super::StoreError;
use crate::alert::AlertKey;
use crate::correlate::reply::ReplyIndex;
use crate::correlate::{
    CorrelationPolicy, CorrelationState, Incident, IncidentLookup, PendingDigest,
};
use std::cell::RefCell;

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
        "INSERT INTO incidents (id, tag, alert_key, open, data, updated_at, first_seen, announced,
                                ticket_id, pending_digest, is_digest, digest_member)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (id) DO UPDATE SET open = excluded.open, data = excluded.data,
            updated_at = excluded.updated_at, first_seen = excluded.first_seen,
            announced = excluded.announced, ticket_id = excluded.ticket_id,
            pending_digest = excluded.pending_digest, is_digest = excluded.is_digest,
            digest_member = excluded.digest_member",
        &[
            (incident.id as i64).into(),
            incident.tag.as_str().into(),
            incident.key.to_string().into(),
            incident.ended.is_none().into(),
            data.into(),
            now.into(),
            incident.first_seen.into(),
            incident.announced.into(),
            incident
                .ticket_id
                .map_or(Value::Null, |t| Value::from(t as i64)),
            incident.in_pending_digest.into(),
            incident.is_digest.into(),
            incident.digest_tag.is_some().into(),
        ],
    )?;
    Ok(())
}

/// The incident's digest went out: clear its flag in place, without a new snapshot.
pub fn mark_digested(db: &mut Db, id: u64, now: i64) -> Result<(), StoreError> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "UPDATE incidents SET data = json_set(data, '$.in_pending_digest', json('false')), pending_digest = 0, updated_at = $1 WHERE id = $2",
        Dialect::Postgres => "UPDATE incidents SET data = jsonb_set(data::jsonb, '{in_pending_digest}', 'false')::text, pending_digest = 0, updated_at = $1 WHERE id = $2",
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

/// The incident (open or ended) tagged `tag`.
pub fn by_tag(db: &mut Db, tag: &str) -> Result<Option<Incident>, StoreError> {
    db.query_opt("SELECT data FROM incidents WHERE tag = $1", &[tag.into()])?
        .map(|r| decode(&r.text(0)?))
        .transpose()
}

fn decode_rows(rows: Vec<super::db::Row>) -> Result<Vec<Incident>, StoreError> {
    rows.into_iter().map(|r| decode(&r.text(0)?)).collect()
}

/// The open incident of `key` (the newest if an old store has several): one search of
/// the `incidents_open_key` index. The key's text form is not injective (a `/` in a
/// host), so the rows are checked against the key itself.
pub fn open_by_key(db: &mut Db, key: &AlertKey) -> Result<Option<Incident>, StoreError> {
    let rows = db.query(
        "SELECT data FROM incidents WHERE alert_key = $1 AND open = 1 ORDER BY id DESC",
        &[key.to_string().into()],
    )?;
    for row in rows {
        let incident = decode(&row.text(0)?)?;
        if incident.key == *key {
            return Ok(Some(incident));
        }
    }
    Ok(None)
}

/// The open incident tagged `tag`: one search of the tag's unique index.
pub fn open_by_tag(db: &mut Db, tag: &str) -> Result<Option<Incident>, StoreError> {
    db.query_opt(
        "SELECT data FROM incidents WHERE tag = $1 AND open = 1",
        &[tag.into()],
    )?
    .map(|r| decode(&r.text(0)?))
    .transpose()
}

/// Whether any incident, open or ended, has this tag.
pub fn tag_in_use(db: &mut Db, tag: &str) -> Result<bool, StoreError> {
    Ok(db
        .query_opt("SELECT 1 FROM incidents WHERE tag = $1", &[tag.into()])?
        .is_some())
}

/// Open incidents whose alert still waits for the storm digest, oldest first.
pub fn pending_digest_members(db: &mut Db) -> Result<Vec<Incident>, StoreError> {
    decode_rows(db.query(
        "SELECT data FROM incidents WHERE open = 1 AND pending_digest = 1 ORDER BY id",
        &[],
    )?)
}

/// How many open incidents wait for the storm digest, and when the oldest (by id) was
/// deferred: two reads of the `incidents_pending_digest` index, whatever the storm's size.
pub fn pending_digest_summary(db: &mut Db) -> Result<PendingDigest, StoreError> {
    let count = db
        .query_one(
            "SELECT COUNT(*) FROM incidents WHERE open = 1 AND pending_digest = 1",
            &[],
        )?
        .int(0)?;
    let oldest_at = db
        .query_opt(
            "SELECT first_seen FROM incidents WHERE open = 1 AND pending_digest = 1
             ORDER BY id LIMIT 1",
            &[],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    Ok(PendingDigest {
        count: usize::try_from(count).unwrap_or(0),
        oldest_at,
    })
}

/// The newest open storm digest: the current storm's.
pub fn newest_open_digest(db: &mut Db) -> Result<Option<Incident>, StoreError> {
    db.query_opt(
        "SELECT data FROM incidents WHERE open = 1 AND is_digest = 1 ORDER BY id DESC LIMIT 1",
        &[],
    )?
    .map(|r| decode(&r.text(0)?))
    .transpose()
}

/// When the incidents announced on their own (not held by a digest) and opened in
/// `(since, until]` were opened, the newest `limit` of them, oldest first: what the storm
/// guard's sliding window counts (it only asks whether `limit` were, and when the
/// oldest of those leaves the window).
pub fn announced_openings(
    db: &mut Db,
    since: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    let mut openings = db
        .query(
            "SELECT first_seen FROM incidents
             WHERE first_seen > $1 AND first_seen <= $2 AND is_digest = 0 AND digest_member = 0
             ORDER BY first_seen DESC LIMIT $3",
            &[
                since.into(),
                until.into(),
                i64::try_from(limit).unwrap_or(i64::MAX).into(),
            ],
        )?
        .into_iter()
        .map(|r| r.int(0))
        .collect::<Result<Vec<i64>, StoreError>>()?;
    openings.reverse();
    Ok(openings)
}

/// Open incidents.
pub fn open_count(db: &mut Db) -> Result<u64, StoreError> {
    let n = db
        .query_one("SELECT COUNT(*) FROM incidents WHERE open = 1", &[])?
        .int(0)?;
    Ok(n.max(0) as u64)
}

/// Open incidents whose first mail left and whose GLPI ticket id is not known yet.
pub fn awaiting_ticket_count(db: &mut Db) -> Result<u64, StoreError> {
    let n = db
        .query_one(
            "SELECT COUNT(*) FROM incidents WHERE open = 1 AND announced = 1 AND ticket_id IS NULL",
            &[],
        )?
        .int(0)?;
    Ok(n.max(0) as u64)
}

/// Tags of the open incidents awaiting their ticket id (as above) opened after `since`.
pub fn awaiting_ticket_since(db: &mut Db, since: i64) -> Result<Vec<String>, StoreError> {
    db.query(
        "SELECT tag FROM incidents
         WHERE open = 1 AND announced = 1 AND ticket_id IS NULL AND first_seen > $1 ORDER BY id",
        &[since.into()],
    )?
    .into_iter()
    .map(|r| r.text(0))
    .collect()
}

/// The open incidents, newest first, at most `limit` (for display).
pub fn open_newest(db: &mut Db, limit: usize) -> Result<Vec<Incident>, StoreError> {
    decode_rows(db.query(
        "SELECT data FROM incidents WHERE open = 1 ORDER BY id DESC LIMIT $1",
        &[i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )?)
}

/// The id the next new incident gets: above every stored one and the saved counter.
pub fn next_id(db: &mut Db) -> Result<u64, StoreError> {
    let max_id = db
        .query_one("SELECT COALESCE(MAX(id), 0) FROM incidents", &[])?
        .int(0)?;
    let saved = get_kv(db, "next_incident_id")?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1);
    Ok(saved.max(max_id.max(0) as u64 + 1))
}

/// The engine's state as the store has it, without loading the open incidents: they
/// are read one by one when alerts need them (see [`StoreIncidents`]). `now` places the
/// storm guard's sliding window.
pub fn load_state(
    db: &mut Db,
    now: i64,
    policy: &CorrelationPolicy,
) -> Result<CorrelationState, StoreError> {
    let window = crate::correlate::STORM_WINDOW_SECS;
    let limit = policy.max_new_incidents_per_minute as usize;
    Ok(CorrelationState::resume(
        next_id(db)?,
        pending_digest_summary(db)?,
        newest_open_digest(db)?,
        announced_openings(db, now - window, now, limit)?,
    ))
}

/// How many times a pipeline committed; read inside the pipeline's transaction. A
/// pipeline that finds another number than its own last commit left knows someone else
/// wrote incidents since, and re-reads its state. (PostgreSQL: `SELECT … FOR UPDATE`
/// here serialises the pipelines of two gateways.)
pub fn generation(db: &mut Db) -> Result<i64, StoreError> {
    let sql = match db.dialect() {
        Dialect::Sqlite => "SELECT generation FROM pipeline_generation WHERE id = 1",
        // SQLite's transaction already holds the write lock; PostgreSQL locks the row.
        Dialect::Postgres => "SELECT generation FROM pipeline_generation WHERE id = 1 FOR UPDATE",
    };
    Ok(db
        .query_opt(sql, &[])?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0))
}

/// Count one more pipeline commit (inside it); returns the new generation.
pub fn bump_generation(db: &mut Db) -> Result<i64, StoreError> {
    db.query_one(
        "UPDATE pipeline_generation SET generation = generation + 1 WHERE id = 1 RETURNING generation",
        &[],
    )?
    .int(0)
}

/// What the correlation engine reads from the store inside the pipeline's transaction:
/// the open incidents not in its cache, and the reply index.
pub struct StoreIncidents<'a> {
    // The reply index is read through `&self` (the engine's trait) while the connection
    // needs `&mut`: one borrow at a time, on one thread.
    db: RefCell<&'a mut Db>,
}

impl<'a> StoreIncidents<'a> {
    pub fn new(db: &'a mut Db) -> StoreIncidents<'a> {
        StoreIncidents {
            db: RefCell::new(db),
        }
    }
}

impl IncidentLookup for StoreIncidents<'_> {
    type Error = StoreError;

    fn open_by_key(&mut self, key: &AlertKey) -> Result<Option<Incident>, StoreError> {
        open_by_key(self.db.get_mut(), key)
    }

    fn open_by_tag(&mut self, tag: &str) -> Result<Option<Incident>, StoreError> {
        open_by_tag(self.db.get_mut(), tag)
    }

    fn tag_in_use(&mut self, tag: &str) -> Result<bool, StoreError> {
        tag_in_use(self.db.get_mut(), tag)
    }

    fn pending_digest_members(&mut self) -> Result<Vec<Incident>, StoreError> {
        pending_digest_members(self.db.get_mut())
    }
}

impl ReplyIndex for StoreIncidents<'_> {
    type Error = StoreError;

    fn incident_for(&self, message_ids: &[String]) -> Result<Option<String>, StoreError> {
        super::replies::incident_for(&mut self.db.borrow_mut(), message_ids)
    }

    fn remember(&self, message_ids: &[String], tag: &str) -> Result<(), StoreError> {
        super::replies::remember(&mut self.db.borrow_mut(), message_ids, tag)
    }
}

/// The advisory lock of the correlation step ("alertcor" in ASCII).
const CORRELATION_LOCK: i64 = 0x616c_6572_7463_6f72;

/// Inside a pipeline transaction: waits until no other gateway correlates (PostgreSQL;
/// SQLite's write transaction already excludes every other writer). Released by the
/// commit or rollback, or when the holder's connection dies.
pub fn lock_correlation(db: &mut Db) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Postgres {
        db.query_one(
            "SELECT pg_advisory_xact_lock($1)",
            &[CORRELATION_LOCK.into()],
        )?;
    }
    Ok(())
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
    use crate::alert::{Alert, AlertKey, AlertKind, NotificationType, State};
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
        let rebuilt = load_state(&mut db, 660, &policy).unwrap();
        assert_eq!(rebuilt.pending_digest_count(), 0);
    }

    fn problem(host: &str, state: State) -> Alert {
        Alert {
            source: "nagios".into(),
            kind: AlertKind::Service,
            host: host.into(),
            host_alias: None,
            service: "disk".into(),
            state,
            notification_type: NotificationType::Problem,
            output: "disk".into(),
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
        }
    }

    /// The plan SQLite picks for `sql`, one line per step.
    fn plan(db: &Db, sql: &str) -> String {
        let conn = db.sqlite().expect("sqlite");
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = vec!["x"; stmt.parameter_count()];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn every_read_of_the_engine_is_one_index_search() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("db"))).unwrap();
        let reads = [
            ("SELECT data FROM incidents WHERE alert_key = 'k' AND open = 1 ORDER BY id DESC", "incidents_open_key"),
            ("SELECT data FROM incidents WHERE tag = 't' AND open = 1", "sqlite_autoindex_incidents_1"),
            ("SELECT 1 FROM incidents WHERE tag = 't'", "sqlite_autoindex_incidents_1"),
            ("SELECT data FROM incidents WHERE open = 1 AND pending_digest = 1 ORDER BY id", "incidents_pending_digest"),
            ("SELECT data FROM incidents WHERE open = 1 AND is_digest = 1 ORDER BY id DESC LIMIT 1", "incidents_open_digest"),
            ("SELECT first_seen FROM incidents WHERE first_seen > 1 AND first_seen <= 2 AND is_digest = 0 AND digest_member = 0 ORDER BY first_seen", "incidents_first_seen"),
        ];
        for (sql, index) in reads {
            let plan = plan(&db, sql);
            assert!(
                plan.contains(&format!("USING INDEX {index}"))
                    || plan.contains(&format!("USING COVERING INDEX {index}")),
                "{sql}: {plan}"
            );
            // A partial index is walked whole (it holds just those rows); the table never.
            assert!(
                !plan.contains("TEMP B-TREE") && plan.matches("incidents").count() == 2,
                "{sql}: {plan}"
            );
            if sql.contains("tag =") || sql.contains("alert_key =") {
                assert!(plan.starts_with("SEARCH incidents"), "{sql}: {plan}");
            }
        }
        // Counts walk only their partial index: the open incidents, or those awaiting a ticket.
        for (sql, index) in [
            ("SELECT COUNT(*) FROM incidents WHERE open = 1", "incidents_open_key"),
            ("SELECT COUNT(*) FROM incidents WHERE open = 1 AND announced = 1 AND ticket_id IS NULL", "incidents_awaiting_ticket"),
        ] {
            let plan = plan(&db, sql);
            assert!(plan.starts_with("SCAN incidents USING") && plan.ends_with(&format!("INDEX {index}")), "{sql}: {plan}");
        }
        // The statements the store really runs are those.
        let by_key = plan(
            &db,
            "SELECT data FROM incidents WHERE alert_key = $1 AND open = 1 ORDER BY id DESC",
        );
        assert_eq!(
            by_key,
            "SEARCH incidents USING INDEX incidents_open_key (alert_key=?)"
        );
    }

    /// PostgreSQL's plan for `sql` with `params`, one line per node.
    fn pg_plan(db: &mut Db, sql: &str, params: &[crate::store::Value]) -> String {
        db.query(&format!("EXPLAIN {sql}"), params)
            .unwrap()
            .iter()
            .map(|r| r.text(0).unwrap().trim().to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Index scans and sequential scans of `incidents` so far in this transaction.
    fn pg_scans_in_tx(db: &mut Db) -> (i64, i64) {
        let row = db
            .query_one(
                "SELECT COALESCE(idx_scan, 0), COALESCE(seq_scan, 0)
                 FROM pg_stat_xact_user_tables WHERE relname = 'incidents'",
                &[],
            )
            .unwrap();
        (row.int(0).unwrap(), row.int(1).unwrap())
    }

    /// Acceptance 5 on PostgreSQL: a cache miss (`open_by_key`) is one index scan, and so
    /// is every other read of the engine, on a table the planner has statistics for.
    #[test]
    fn on_postgres_every_read_of_the_engine_is_one_index_scan() {
        let url = crate::store::pg::harness::shared().create_database();
        let mut db = crate::store::open(&crate::store::Location::Postgres(url)).unwrap();
        let policy = CorrelationPolicy::default();
        let mut state = CorrelationState::default();
        let d = correlate(&mut state, &problem("web1", State::Critical), 100, &policy);
        for inc in &d.changed {
            save(&mut db, inc, 100).unwrap();
        }
        // 100,000 others, one in two open (as the benchmark's store), then statistics.
        db.execute(
            "INSERT INTO incidents (id, tag, alert_key, open, data, updated_at, first_seen)
             SELECT g, 'ALERT-F' || g, 'centreon/filler-' || g || '/svc', g % 2, '{}', 0, g
             FROM generate_series(1000, 101000) g",
            &[],
        )
        .unwrap();
        db.execute("ANALYZE incidents", &[]).unwrap();
        let key = AlertKey {
            source: "nagios".into(),
            host: "web1".into(),
            service: "disk".into(),
        };
        let by_key =
            "SELECT data FROM incidents WHERE alert_key = $1 AND open = 1 ORDER BY id DESC";
        let plan = pg_plan(&mut db, by_key, &[key.to_string().into()]);
        // One node: a scan of an index of the open incidents' keys (both are), no sort.
        let one_scan = regex::Regex::new(
            r"^Index Scan (Backward )?using (incidents_open_key|incidents_one_open) on incidents  \([^;]*\); Index Cond: \(alert_key = '[^']*'::text\)$",
        )
        .unwrap();
        assert!(one_scan.is_match(&plan), "{plan}");

        // The store's own function, counted by the server: one index scan, no table scan.
        let mut tx = db.transaction().unwrap();
        let before = pg_scans_in_tx(&mut tx);
        let found = open_by_key(&mut tx, &key)
            .unwrap()
            .expect("the open incident");
        assert_eq!(found.key, key);
        let after = pg_scans_in_tx(&mut tx);
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 0));
        // A key with no open incident costs the same single index scan.
        let missing = AlertKey {
            host: "nowhere".into(),
            ..key.clone()
        };
        assert!(open_by_key(&mut tx, &missing).unwrap().is_none());
        let last = pg_scans_in_tx(&mut tx);
        assert_eq!((last.0 - after.0, last.1 - after.1), (1, 0));
        drop(tx);

        let tag = d.changed[0].tag.clone();
        let reads: [(&str, Vec<crate::store::Value>); 5] = [
            ("SELECT data FROM incidents WHERE tag = $1 AND open = 1", vec![tag.clone().into()]),
            ("SELECT 1 FROM incidents WHERE tag = $1", vec![tag.into()]),
            ("SELECT data FROM incidents WHERE open = 1 AND pending_digest = 1 ORDER BY id", vec![]),
            ("SELECT data FROM incidents WHERE open = 1 AND is_digest = 1 ORDER BY id DESC LIMIT 1", vec![]),
            ("SELECT first_seen FROM incidents WHERE first_seen > $1 AND first_seen <= $2 AND is_digest = 0 AND digest_member = 0 ORDER BY first_seen", vec![50i64.into(), 150i64.into()]),
        ];
        for (sql, params) in reads {
            let plan = pg_plan(&mut db, sql, &params);
            assert!(
                plan.contains("Index Scan ") || plan.contains("Index Only Scan "),
                "{sql}: {plan}"
            );
            assert!(
                !plan.contains("Seq Scan") && !plan.contains("Sort"),
                "{sql}: {plan}"
            );
        }
    }

    #[test]
    fn lookups_find_open_incidents_by_key_and_tag_and_the_state_resumes_without_loading_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut db =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("db"))).unwrap();
        let policy = CorrelationPolicy::default();
        let mut state = CorrelationState::default();
        let mut tags = Vec::new();
        for host in ["a", "b/disk", "c"] {
            let d = correlate(&mut state, &problem(host, State::Critical), 100, &policy);
            for inc in &d.changed {
                save(&mut db, inc, 100).unwrap();
                tags.push(inc.tag.clone());
            }
        }
        let key = |host: &str, service: &str| AlertKey {
            source: "nagios".into(),
            host: host.into(),
            service: service.into(),
        };
        assert_eq!(
            open_by_key(&mut db, &key("a", "disk"))
                .unwrap()
                .map(|i| i.id),
            Some(1)
        );
        // "nagios:b/disk" as text is also the host alert of host "b/disk"; the row's key decides.
        assert_eq!(open_by_key(&mut db, &key("b/disk", "")).unwrap(), None);
        assert_eq!(open_by_key(&mut db, &key("b", "disk/disk")).unwrap(), None);
        assert_eq!(
            open_by_key(&mut db, &key("b/disk", "disk"))
                .unwrap()
                .map(|i| i.id),
            Some(2)
        );
        assert_eq!(
            open_by_tag(&mut db, &tags[2]).unwrap().map(|i| i.id),
            Some(3)
        );
        mark_ended(&mut db, 3, 200).unwrap();
        assert_eq!(open_by_tag(&mut db, &tags[2]).unwrap(), None);
        assert!(
            tag_in_use(&mut db, &tags[2]).unwrap(),
            "ended incidents keep their tag"
        );
        assert!(!tag_in_use(&mut db, "ALERT-none").unwrap());
        assert_eq!(open_count(&mut db).unwrap(), 2);
        assert_eq!(awaiting_ticket_count(&mut db).unwrap(), 2);
        assert_eq!(
            announced_openings(&mut db, 99, 160, 60).unwrap(),
            vec![100, 100, 100]
        );
        assert_eq!(announced_openings(&mut db, 99, 160, 2).unwrap().len(), 2);
        assert!(announced_openings(&mut db, 100, 160, 60)
            .unwrap()
            .is_empty());
        let resumed = load_state(&mut db, 150, &policy).unwrap();
        assert_eq!(resumed.open_count(), 0, "nothing loaded up front");
        assert_eq!(resumed.next_id(), 4);
    }

    #[test]
    fn the_generation_counts_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut db =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("db"))).unwrap();
        assert_eq!(generation(&mut db).unwrap(), 0);
        assert_eq!(bump_generation(&mut db).unwrap(), 1);
        assert_eq!(bump_generation(&mut db).unwrap(), 2);
        assert_eq!(generation(&mut db).unwrap(), 2);
    }

    #[test]
    fn the_migration_fills_the_new_columns_from_existing_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut db = crate::store::open(&crate::store::Location::Sqlite(path.clone())).unwrap();
        let mut state = CorrelationState::default();
        let d = correlate(
            &mut state,
            &problem("old", State::Critical),
            500,
            &CorrelationPolicy::default(),
        );
        save(&mut db, &d.changed[0], 500).unwrap();
        // Back to the columns version 6 had, as an older alertgate left it.
        db.sqlite().expect("sqlite").execute_batch(
            "UPDATE incidents SET first_seen = 0, announced = 0, ticket_id = NULL;
             DROP INDEX incidents_open_key; DROP INDEX incidents_pending_digest;
             DROP INDEX incidents_open_digest; DROP INDEX incidents_awaiting_ticket;
             DROP INDEX incidents_first_seen; DROP TABLE pipeline_generation;
             CREATE INDEX incidents_open ON incidents(open);
             ALTER TABLE incidents DROP COLUMN first_seen; ALTER TABLE incidents DROP COLUMN announced;
             ALTER TABLE incidents DROP COLUMN ticket_id; ALTER TABLE incidents DROP COLUMN pending_digest;
             ALTER TABLE incidents DROP COLUMN is_digest; ALTER TABLE incidents DROP COLUMN digest_member;
             ALTER TABLE outbound DROP COLUMN lease_owner; ALTER TABLE outbound DROP COLUMN lease_until;
             ALTER TABLE outbound DROP COLUMN kind;
             ALTER TABLE glpi_actions DROP COLUMN lease_owner; ALTER TABLE glpi_actions DROP COLUMN lease_until;
             PRAGMA user_version = 6;",
        )
        .unwrap();
        drop(db);
        let mut db = crate::store::open(&crate::store::Location::Sqlite(path.clone())).unwrap();
        assert_eq!(
            announced_openings(&mut db, 499, 500, 60).unwrap(),
            vec![500]
        );
        assert_eq!(awaiting_ticket_count(&mut db).unwrap(), 1);
        assert_eq!(generation(&mut db).unwrap(), 0);
    }
}
