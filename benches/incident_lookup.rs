//! Issue 13: what an alert for an incident the cache evicted costs. A store with 100,000
//! open incidents; one repeat alert correlated with its incident cached (hit) and not
//! cached (miss: one indexed read of the incident, then the same decision), and the
//! read alone. Run: cargo bench --bench incident_lookup
//! (`INCIDENTS=20000` for a quicker setup; `STORE=postgres` for the store on a private
//! PostgreSQL started by the bench, as the tests start theirs.)

use alertgate::alert::{Alert, AlertKey, AlertKind, NotificationType, State};
use alertgate::correlate::{correlate_with, CorrelationPolicy, CorrelationState};
use alertgate::store::incidents::{self, StoreIncidents};
use criterion::{criterion_group, criterion_main, Criterion};

#[path = "../tests/support/postgres.rs"]
mod postgres;

fn alert(n: usize) -> Alert {
    Alert {
        source: "centreon".into(),
        kind: AlertKind::Service,
        host: format!("bench-host-{:04}", n / 40),
        host_alias: None,
        service: format!("svc-{:02}", n % 40),
        state: State::Critical,
        notification_type: NotificationType::Problem,
        output: "CRITICAL - check failed".into(),
        long_output: None,
        author: None,
        comment: None,
        address: Some("10.0.0.5".into()),
        event_time: None,
        vendor_id: None,
        url: None,
        rule: "centreon-service".into(),
        needs_sanitizing: false,
        inherits: Vec::new(),
    }
}

fn lookup(c: &mut Criterion) {
    let count: usize = std::env::var("INCIDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let on_postgres = std::env::var("STORE").is_ok_and(|s| s == "postgres");
    let pg_url = on_postgres.then(|| postgres::shared().create_database());
    let location = if let Some(url) = &pg_url {
        alertgate::store::Location::Postgres(url.clone())
    } else {
        alertgate::store::Location::Sqlite(dir.path().join("bench.db"))
    };
    let mut db = alertgate::store::open(&location).expect("store");
    let policy = CorrelationPolicy {
        max_new_incidents_per_minute: u32::MAX,
        ..CorrelationPolicy::default()
    };
    let mut state = CorrelationState::default();
    let now = 1_764_000_000;
    let mut tx = db.transaction().expect("tx");
    for n in 0..count {
        let mut lookup = StoreIncidents::new(&mut tx);
        let d =
            correlate_with(&mut state, &mut lookup, &alert(n), now, &policy).expect("correlate");
        for inc in &d.changed {
            incidents::save(&mut tx, inc, now).expect("save");
        }
    }
    tx.commit().expect("commit");
    if let Some(url) = &pg_url {
        // As autovacuum would have by then: the planner's statistics of a big table.
        let database = url.rsplit('/').next().expect("database name");
        postgres::shared()
            .psql_in(database, "ANALYZE incidents")
            .expect("analyze");
    }
    let probe = alert(count / 2);
    let key = AlertKey {
        source: probe.source.clone(),
        host: probe.host.clone(),
        service: probe.service.clone(),
    };
    assert!(incidents::open_by_key(&mut db, &key)
        .expect("read")
        .is_some());
    let store = if on_postgres { "postgres" } else { "sqlite" };
    let mut group = c.benchmark_group(format!("{count} open incidents, {store}"));
    group.bench_function("read one incident by key (the miss's read)", |b| {
        b.iter(|| incidents::open_by_key(&mut db, &key).expect("read"))
    });
    group.bench_function("repeat alert, incident cached (hit)", |b| {
        let mut lookup = StoreIncidents::new(&mut db);
        correlate_with(&mut state, &mut lookup, &probe, now + 1, &policy).expect("warm");
        b.iter(|| correlate_with(&mut state, &mut lookup, &probe, now + 1, &policy).expect("hit"))
    });
    group.bench_function("repeat alert, incident evicted (miss)", |b| {
        let mut lookup = StoreIncidents::new(&mut db);
        b.iter(|| {
            state.drop_cache();
            correlate_with(&mut state, &mut lookup, &probe, now + 1, &policy).expect("miss")
        })
    });
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
