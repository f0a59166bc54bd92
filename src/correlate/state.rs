//! The engine's memory: a cache of open incidents by key (all of them when no store
//! backs it) with its tag index and recency order, the next incident id and the storm
//! window with its pending digest.

use super::decision::DigestEntry;
use super::incident::Incident;
use crate::alert::AlertKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The storm guard: announcements of the last 60 s (a sliding window), the digest
/// incident collecting the current storm, and the alerts waiting for its next mail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StormWindow {
    /// When the oldest pending entry was deferred (unix seconds); 0 when none waits.
    #[serde(default)]
    pub window_start: i64,
    /// When each incident announced in the last 60 s was opened, oldest first.
    #[serde(default)]
    pub recent: VecDeque<i64>,
    /// Tag of the digest incident of the current storm.
    #[serde(default)]
    pub digest_tag: Option<String>,
    /// Alerts of un-announced incidents, waiting for the digest's next mail.
    #[serde(default)]
    pub pending: Vec<DigestEntry>,
    /// Incidents waiting for the digest that the store holds and `pending` does not list:
    /// a state resumed from the store reads them only when the digest goes out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlisted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl StormWindow {
    /// Whether any incident waits for the digest's next mail.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.unlisted > 0
    }

    /// How many incidents wait for the digest's next mail.
    pub fn pending_count(&self) -> usize {
        self.pending.len() + self.unlisted
    }
}

/// What a resumed state needs of the incidents waiting for the storm digest: how many
/// there are and when the oldest was deferred (their alerts are read when it goes out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingDigest {
    pub count: usize,
    pub oldest_at: i64,
}

/// Seconds the storm guard looks back, and how long deferred alerts wait to be listed together.
pub const STORM_WINDOW_SECS: i64 = 60;

/// Open incidents and engine bookkeeping. Serializes as a list of incidents plus
/// counters (JSON-friendly); the indexes are rebuilt on load.
///
/// With a store behind it ([`super::correlate_with`]) `open` is a cache: the least
/// recently used incidents are evicted between steps once it holds more than
/// `incident_cache`, and read back by one indexed lookup when an alert needs them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "StateSnapshot", into = "StateSnapshot")]
pub struct CorrelationState {
    pub(crate) open: HashMap<AlertKey, Incident>,
    pub(crate) by_tag: HashMap<String, AlertKey>,
    pub(crate) next_id: u64,
    pub(crate) storm: StormWindow,
    recency: Recency,
}

impl PartialEq for CorrelationState {
    /// Same incidents and counters; the cache's recency order is not state.
    fn eq(&self, other: &Self) -> bool {
        self.open == other.open
            && self.by_tag == other.by_tag
            && self.next_id == other.next_id
            && self.storm == other.storm
    }
}

/// Least-recently-used order of the cached incidents: a use stamp per key, and the keys
/// by stamp (oldest first).
#[derive(Debug, Clone, Default)]
struct Recency {
    clock: u64,
    stamp: HashMap<AlertKey, u64>,
    order: BTreeMap<u64, AlertKey>,
}

impl Recency {
    fn touch(&mut self, key: &AlertKey) {
        self.clock += 1;
        if let Some(old) = self.stamp.insert(key.clone(), self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, key.clone());
    }

    fn forget(&mut self, key: &AlertKey) {
        if let Some(old) = self.stamp.remove(key) {
            self.order.remove(&old);
        }
    }

    fn oldest(&mut self) -> Option<AlertKey> {
        let (_, key) = self.order.pop_first()?;
        self.stamp.remove(&key);
        Some(key)
    }
}

#[derive(Serialize, Deserialize)]
struct StateSnapshot {
    next_id: u64,
    incidents: Vec<Incident>,
    #[serde(default)]
    storm: StormWindow,
}

impl From<StateSnapshot> for CorrelationState {
    fn from(snapshot: StateSnapshot) -> Self {
        let mut state = CorrelationState::empty(snapshot.next_id);
        for incident in snapshot.incidents {
            state.adopt(incident);
        }
        state.storm = snapshot.storm;
        state
    }
}

impl From<CorrelationState> for StateSnapshot {
    fn from(state: CorrelationState) -> Self {
        let mut incidents: Vec<Incident> = state.open.into_values().collect();
        incidents.sort_by_key(|i| i.id);
        StateSnapshot {
            next_id: state.next_id,
            incidents,
            storm: state.storm,
        }
    }
}

impl Default for CorrelationState {
    fn default() -> Self {
        CorrelationState::empty(1)
    }
}

impl CorrelationState {
    fn empty(next_id: u64) -> Self {
        CorrelationState {
            open: HashMap::new(),
            by_tag: HashMap::new(),
            next_id: next_id.max(1),
            storm: StormWindow::default(),
            recency: Recency::default(),
        }
    }

    /// The state a store-backed engine resumes from: no incident cached (they are read
    /// when alerts need them), the next id, and the storm window as the store has it:
    /// how many incidents wait for a digest and since when (listed when it goes out, on
    /// the next tick once their window is over), the current storm's digest and when the
    /// incidents announced in the last 60 s were opened. Its cost does not grow with the
    /// storm: two gateways resume at every batch the other one committed.
    pub fn resume(
        next_id: u64,
        pending: PendingDigest,
        current_digest: Option<Incident>,
        recent_openings: Vec<i64>,
    ) -> Self {
        let mut state = CorrelationState::empty(next_id);
        state.storm.digest_tag = current_digest.as_ref().map(|d| d.tag.clone());
        if let Some(digest) = current_digest {
            state.adopt(digest);
        }
        if pending.count > 0 {
            state.storm.unlisted = pending.count;
            state.storm.window_start = pending.oldest_at;
        }
        let mut recent = recent_openings;
        recent.sort_unstable();
        state.storm.recent = recent.into();
        state
    }

    /// Forget every cached incident (they are in the store); counters and the storm
    /// window stay.
    pub fn drop_cache(&mut self) {
        self.open.clear();
        self.by_tag.clear();
        self.recency = Recency::default();
    }

    /// Evict the least recently used incidents until at most `capacity` are cached.
    /// Only between steps, once the step's changes are the store's too.
    pub fn trim(&mut self, capacity: usize) {
        while self.open.len() > capacity {
            let Some(key) = self.recency.oldest() else {
                break;
            };
            if let Some(incident) = self.open.remove(&key) {
                self.by_tag.remove(&incident.tag);
            }
        }
    }

    /// Mark `key` as just used.
    pub(crate) fn touch(&mut self, key: &AlertKey) {
        if self.open.contains_key(key) {
            self.recency.touch(key);
        }
    }

    /// Rebuilds the state from the store's open incidents. Ended incidents are
    /// skipped (their ids still count); if two open incidents share a key the one
    /// with the higher id wins. `next_id` is raised above every id seen. Incidents still waiting for a
    /// digest are queued again (so their digest is sent on the next tick).
    pub fn from_incidents(incidents: impl IntoIterator<Item = Incident>, next_id: u64) -> Self {
        let mut state = CorrelationState::empty(next_id);
        for incident in incidents {
            // Ended ones still reserve their id.
            state.next_id = state.next_id.max(incident.id.saturating_add(1));
            if incident.is_open() {
                state.adopt(incident);
            }
        }
        state.requeue_pending_digest();
        state
    }

    /// Takes an incident read from the store into the cache; of two open incidents of
    /// one key the one with the higher id wins.
    pub(crate) fn adopt(&mut self, incident: Incident) {
        self.next_id = self.next_id.max(incident.id.saturating_add(1));
        if let Some(existing) = self.open.get(&incident.key) {
            if existing.id > incident.id {
                return;
            }
            self.by_tag.remove(&existing.tag);
        }
        self.insert(incident);
    }

    fn requeue_pending_digest(&mut self) {
        let mut pending: Vec<DigestEntry> = self
            .open
            .values()
            .filter(|i| i.in_pending_digest)
            .map(|i| DigestEntry {
                incident_id: i.id,
                tag: i.tag.clone(),
                at: i.first_seen,
                alert: i.last_alert.clone(),
            })
            .collect();
        pending.sort_by_key(|e| e.incident_id);
        let window_start = pending.iter().map(|e| e.at).min().unwrap_or(0);
        // The newest open digest is the current storm's, so later deferrals join it.
        let digest_tag = self
            .open
            .values()
            .filter(|i| i.is_digest)
            .max_by_key(|i| i.id)
            .map(|i| i.tag.clone());
        self.storm = StormWindow {
            window_start,
            recent: VecDeque::new(),
            digest_tag,
            pending,
            unlisted: 0,
        };
    }

    /// The open incident of a (normalised) key, if it is in memory.
    pub fn incident(&self, key: &AlertKey) -> Option<&Incident> {
        self.open.get(key)
    }

    /// The open incident carrying `tag`, if it is in memory.
    pub fn incident_by_tag(&self, tag: &str) -> Option<&Incident> {
        self.by_tag
            .get(tag.trim())
            .and_then(|key| self.open.get(key))
    }

    /// The open incidents in memory (all of them when no store backs the state), in no
    /// particular order.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// How many open incidents are in memory.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The id the next new incident will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Alerts waiting for the current minute's digest, as far as memory lists them (a
    /// state resumed from the store reads the others when the digest goes out).
    pub fn pending_digest(&self) -> &[DigestEntry] {
        &self.storm.pending
    }

    /// How many incidents wait for the current minute's digest.
    pub fn pending_digest_count(&self) -> usize {
        self.storm.pending_count()
    }

    pub(crate) fn insert(&mut self, incident: Incident) {
        self.by_tag
            .insert(incident.tag.clone(), incident.key.clone());
        self.recency.touch(&incident.key);
        self.open.insert(incident.key.clone(), incident);
    }

    pub(crate) fn remove(&mut self, key: &AlertKey) -> Option<Incident> {
        let incident = self.open.remove(key)?;
        self.by_tag.remove(&incident.tag);
        self.recency.forget(key);
        Some(incident)
    }

    pub(crate) fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }
}
