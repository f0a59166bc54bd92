//! The engine over a bounded cache: eviction order, and the same decisions whether an
//! incident was in memory or read back from the store (a model of it that applies each
//! decision as the pipeline does).

use super::*;
use crate::alert::{Alert, AlertKey, AlertKind, NotificationType as N, State};
use std::collections::BTreeMap;
use std::convert::Infallible;

const T0: i64 = 1_700_000_040;

/// The store as the pipeline leaves it after each step: snapshots saved, ended ones
/// closed, digested flags cleared. Counts its reads.
#[derive(Default)]
struct MemStore {
    rows: BTreeMap<u64, (Incident, bool)>,
    reads: usize,
}

impl MemStore {
    fn apply(&mut self, d: &Decision) {
        for inc in &d.changed {
            self.rows.insert(inc.id, (inc.clone(), inc.is_open()));
        }
        for id in &d.ended {
            if let Some(row) = self.rows.get_mut(id) {
                row.1 = false;
            }
        }
        for id in &d.digested {
            if let Some(row) = self.rows.get_mut(id) {
                row.0.in_pending_digest = false;
            }
        }
    }

    fn save(&mut self, inc: &Incident) {
        self.rows.insert(inc.id, (inc.clone(), inc.is_open()));
    }
}

impl IncidentLookup for MemStore {
    type Error = Infallible;
    fn open_by_key(&mut self, key: &AlertKey) -> Result<Option<Incident>, Infallible> {
        self.reads += 1;
        Ok(self
            .rows
            .values()
            .rev()
            .find(|(i, open)| *open && i.key == *key)
            .map(|(i, _)| i.clone()))
    }
    fn open_by_tag(&mut self, tag: &str) -> Result<Option<Incident>, Infallible> {
        self.reads += 1;
        Ok(self
            .rows
            .values()
            .find(|(i, open)| *open && i.tag == tag)
            .map(|(i, _)| i.clone()))
    }
    fn tag_in_use(&mut self, tag: &str) -> Result<bool, Infallible> {
        Ok(self.rows.values().any(|(i, _)| i.tag == tag))
    }
    fn pending_digest_members(&mut self) -> Result<Vec<Incident>, Infallible> {
        self.reads += 1;
        Ok(self
            .rows
            .values()
            .filter(|(i, open)| *open && i.in_pending_digest)
            .map(|(i, _)| i.clone())
            .collect())
    }
}

fn alert(kind: AlertKind, host: &str, service: &str, state: State, nt: N) -> Alert {
    Alert {
        source: "centreon".into(),
        kind,
        host: host.into(),
        host_alias: None,
        service: service.into(),
        state,
        notification_type: nt,
        output: format!("{service} is {state}"),
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

fn svc(host: &str, state: State, nt: N) -> Alert {
    alert(AlertKind::Service, host, "cpu", state, nt)
}

fn cached(cap: usize) -> CorrelationPolicy {
    CorrelationPolicy {
        incident_cache: cap,
        ..CorrelationPolicy::default()
    }
}

fn step(
    st: &mut CorrelationState,
    store: &mut MemStore,
    a: &Alert,
    now: i64,
    pol: &CorrelationPolicy,
) -> Decision {
    let Ok(d) = correlate_with(st, store, a, now, pol);
    store.apply(&d);
    d
}

#[test]
fn the_least_recently_used_incident_is_evicted_first() {
    let pol = cached(2);
    let mut st = CorrelationState::default();
    let mut store = MemStore::default();
    for (i, h) in ["a", "b", "c"].iter().enumerate() {
        step(
            &mut st,
            &mut store,
            &svc(h, State::Critical, N::Problem),
            T0 + i as i64,
            &pol,
        );
        if *h == "b" {
            // "a" is used again after "b" was opened: "b" is now the oldest.
            step(
                &mut st,
                &mut store,
                &svc("a", State::Critical, N::Problem),
                T0 + 1,
                &pol,
            );
        }
    }
    let mut hosts: Vec<_> = st.open_incidents().map(|i| i.key.host.clone()).collect();
    hosts.sort();
    assert_eq!(hosts, ["a", "c"]);
    assert_eq!(store.rows.values().filter(|(_, open)| *open).count(), 3);
    // Capacity 1: only the last used stays.
    st.trim(1);
    assert_eq!(
        st.open_incidents()
            .map(|i| i.key.host.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
    assert!(
        st.incident_by_tag(&store.rows[&1].0.tag).is_none(),
        "the tag index follows"
    );
}

#[test]
fn a_miss_reads_the_store_once_and_decides_as_a_hit() {
    let pol = cached(10);
    let mut st = CorrelationState::default();
    let mut store = MemStore::default();
    step(
        &mut st,
        &mut store,
        &svc("web", State::Warning, N::Problem),
        T0,
        &pol,
    );
    let mut evicted = st.clone();
    evicted.drop_cache();
    let worse = svc("web", State::Critical, N::Problem);
    let mut hit_store = MemStore {
        rows: store.rows.clone(),
        reads: 0,
    };
    let hit = step(&mut st, &mut hit_store, &worse, T0 + 10, &pol);
    assert_eq!(hit_store.reads, 0, "a hit reads nothing");
    store.reads = 0;
    let miss = step(&mut evicted, &mut store, &worse, T0 + 10, &pol);
    assert_eq!(store.reads, 1, "a miss is one read");
    assert_eq!(miss, hit);
    assert_eq!(
        single_update(&miss),
        1,
        "the update is the incident's second mail"
    );
    assert_eq!(evicted, st);
}

fn single_update(d: &Decision) -> u64 {
    let mails: Vec<_> = d.mails().collect();
    assert_eq!(mails.len(), 1, "{:#?}", d.actions);
    mails[0].seq
}

#[test]
fn a_storm_digest_and_its_members_are_read_back_when_evicted() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 1,
        ..cached(0)
    };
    let reference_pol = CorrelationPolicy {
        max_new_incidents_per_minute: 1,
        ..CorrelationPolicy::default()
    };
    let mut st = CorrelationState::default();
    let mut reference = CorrelationState::default();
    let mut store = MemStore::default();
    let mut run = |a: Option<Alert>, now: i64| {
        let (d, r) = match &a {
            Some(a) => (
                step(&mut st, &mut store, a, now, &pol),
                correlate(&mut reference, a, now, &reference_pol),
            ),
            None => {
                let Ok(d) = tick_with(&mut st, &mut store, now, &pol);
                store.apply(&d);
                (d, tick(&mut reference, now, &reference_pol))
            }
        };
        assert_eq!(d, r, "at {now}");
        assert_eq!(st.open_count(), 0, "capacity 0 keeps nothing between steps");
        d
    };
    for (i, h) in ["a", "b", "c", "d"].iter().enumerate() {
        run(Some(svc(h, State::Critical, N::Problem)), T0 + i as i64);
    }
    let digest = run(None, T0 + 61);
    assert_eq!(digest.digests().map(|g| g.count).collect::<Vec<_>>(), [3]);
    run(Some(svc("b", State::Warning, N::Problem)), T0 + 70);
    for h in ["b", "c", "d"] {
        run(Some(svc(h, State::Ok, N::Recovery)), T0 + 80);
    }
}

/// Another gateway committed: the state is resumed from the store. It counts the storm's
/// pending incidents instead of reading them, and reads them once, when the digest goes
/// out; the digest is the one the same alerts make in memory.
#[test]
fn a_resumed_storm_reads_its_pending_incidents_once_when_the_digest_goes_out() {
    let pol = CorrelationPolicy {
        max_new_incidents_per_minute: 1,
        ..cached(20)
    };
    let reference_pol = CorrelationPolicy {
        max_new_incidents_per_minute: 1,
        ..CorrelationPolicy::default()
    };
    let mut st = CorrelationState::default();
    let mut reference = CorrelationState::default();
    let mut store = MemStore::default();
    let hosts: Vec<String> = (0..210).map(|i| format!("h{i:03}")).collect();
    for h in &hosts[..200] {
        let a = svc(h, State::Critical, N::Problem);
        assert_eq!(
            step(&mut st, &mut store, &a, T0, &pol),
            correlate(&mut reference, &a, T0, &reference_pol)
        );
    }
    let open: Vec<&Incident> = store
        .rows
        .values()
        .filter(|(_, o)| *o)
        .map(|(i, _)| i)
        .collect();
    let pending: Vec<&&Incident> = open.iter().filter(|i| i.in_pending_digest).collect();
    let digest = open.iter().find(|i| i.is_digest).map(|i| (*i).clone());
    let mut resumed = CorrelationState::resume(
        st.next_id(),
        PendingDigest {
            count: pending.len(),
            oldest_at: pending.iter().map(|i| i.first_seen).min().unwrap_or(0),
        },
        digest,
        vec![T0],
    );
    assert_eq!(resumed.pending_digest_count(), 199);
    assert_eq!(resumed.open_count(), 1, "only the digest is read up front");
    store.reads = 0;
    for h in &hosts[200..] {
        let a = svc(h, State::Critical, N::Problem);
        let d = step(&mut resumed, &mut store, &a, T0 + 5, &pol);
        assert_eq!(d, correlate(&mut reference, &a, T0 + 5, &reference_pol));
    }
    // As for any new service alert: its key and its host's (folding), none pending.
    assert_eq!(
        store.reads, 20,
        "two reads per new alert, none of the pending ones"
    );
    store.reads = 0;
    let Ok(d) = tick_with(&mut resumed, &mut store, T0 + 61, &pol);
    assert_eq!(store.reads, 1, "the pending incidents, read once");
    assert_eq!(d, tick(&mut reference, T0 + 61, &reference_pol));
    assert_eq!(d.digests().map(|g| g.count).collect::<Vec<_>>(), [209]);
    assert_eq!(resumed.pending_digest_count(), 0);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Alert {
            host: u8,
            service: u8,
            kind_host: bool,
            state: u8,
            nt: u8,
            dt: i16,
        },
        Ticket {
            pick: u8,
            status: u8,
        },
        Tick {
            dt: u16,
        },
        Evict,
    }

    fn steps() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0u8..4, 0u8..3, any::<bool>(), 0u8..7, 0u8..10, -30i16..90).prop_map(
                |(host, service, kind_host, state, nt, dt)| Step::Alert { host, service, kind_host, state, nt, dt }
            ),
            1 => (any::<u8>(), 0u8..4).prop_map(|(pick, status)| Step::Ticket { pick, status }),
            1 => (0u16..120).prop_map(|dt| Step::Tick { dt }),
            1 => Just(Step::Evict),
        ]
    }

    fn build(host: u8, service: u8, kind_host: bool, state: u8, nt: u8) -> Alert {
        let host = format!("h{host}");
        let state = State::ALL[state as usize];
        let nt = N::ALL[nt as usize];
        if kind_host {
            alert(AlertKind::Host, &host, "", state, nt)
        } else {
            alert(AlertKind::Service, &host, &format!("s{service}"), state, nt)
        }
    }

    proptest! {
        /// Whatever the cache holds, the engine decides as if every incident were in memory.
        #[test]
        fn decisions_do_not_depend_on_what_the_cache_holds(
            seq in prop::collection::vec(steps(), 1..100),
            cap in 0usize..4,
            max in 0u32..4,
        ) {
            let reference_pol = CorrelationPolicy { max_new_incidents_per_minute: max, repeat_interval: Some(100), ..CorrelationPolicy::default() };
            let pol = CorrelationPolicy { incident_cache: cap, ..reference_pol.clone() };
            let mut reference = CorrelationState::default();
            let mut st = CorrelationState::default();
            let mut store = MemStore::default();
            let statuses = [TicketStatus::Unknown, TicketStatus::Open, TicketStatus::Solved, TicketStatus::Closed];
            let mut now = T0;
            for s in seq {
                match s {
                    Step::Alert { host, service, kind_host, state, nt, dt } => {
                        now += i64::from(dt);
                        let a = build(host, service, kind_host, state, nt);
                        let r = correlate(&mut reference, &a, now, &reference_pol);
                        let d = step(&mut st, &mut store, &a, now, &pol);
                        prop_assert_eq!(d, r);
                    }
                    Step::Tick { dt } => {
                        now += i64::from(dt);
                        let r = tick(&mut reference, now, &reference_pol);
                        let Ok(d) = tick_with(&mut st, &mut store, now, &pol);
                        store.apply(&d);
                        prop_assert_eq!(d, r);
                    }
                    Step::Ticket { pick, status } => {
                        let mut tags: Vec<String> = reference.open_incidents().map(|i| i.tag.clone()).collect();
                        tags.sort();
                        if tags.is_empty() {
                            continue;
                        }
                        let tag = &tags[pick as usize % tags.len()];
                        let status = Some(statuses[status as usize]);
                        let r = apply_ticket_info(&mut reference, tag, u64::from(pick), None, status);
                        let Ok(d) = apply_ticket_info_with(&mut st, &mut store, tag, u64::from(pick), None, status);
                        prop_assert_eq!(d.as_ref().map(|i| i.id), r);
                        if let Some(inc) = d {
                            store.save(&inc);
                        }
                        st.trim(cap);
                    }
                    Step::Evict => st.drop_cache(),
                }
                prop_assert!(st.open_count() <= cap);
                prop_assert_eq!(st.next_id(), reference.next_id());
                prop_assert_eq!(st.pending_digest(), reference.pending_digest());
                // The store's open incidents are the reference's, field for field.
                let open: BTreeMap<u64, &Incident> = store.rows.iter().filter(|(_, (_, o))| *o).map(|(id, (i, _))| (*id, i)).collect();
                let expected: BTreeMap<u64, &Incident> = reference.open_incidents().map(|i| (i.id, i)).collect();
                prop_assert_eq!(open, expected);
            }
        }
    }
}
