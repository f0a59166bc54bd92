//! The engine's whole memory: open incidents by key, the tag index, the next
//! incident id and the storm window with its pending digest.

use super::decision::DigestEntry;
use super::incident::Incident;
use crate::alert::AlertKey;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

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
}

/// Seconds the storm guard looks back, and how long deferred alerts wait to be listed together.
pub(crate) const STORM_WINDOW_SECS: i64 = 60;

/// Open incidents and engine bookkeeping. Serializes as a list of incidents plus
/// counters (JSON-friendly); the indexes are rebuilt on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StateSnapshot", into = "StateSnapshot")]
pub struct CorrelationState {
    pub(crate) open: HashMap<AlertKey, Incident>,
    pub(crate) by_tag: HashMap<String, AlertKey>,
    pub(crate) next_id: u64,
    pub(crate) storm: StormWindow,
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

    fn adopt(&mut self, incident: Incident) {
        self.next_id = self.next_id.max(incident.id.saturating_add(1));
        if let Some(existing) = self.open.get(&incident.key) {
            if existing.id > incident.id {
                return;
            }
            self.by_tag.remove(&existing.tag);
        }
        self.by_tag
            .insert(incident.tag.clone(), incident.key.clone());
        self.open.insert(incident.key.clone(), incident);
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
        };
    }

    /// The open incident of a (normalised) key.
    pub fn incident(&self, key: &AlertKey) -> Option<&Incident> {
        self.open.get(key)
    }

    /// The open incident carrying `tag`.
    pub fn incident_by_tag(&self, tag: &str) -> Option<&Incident> {
        self.by_tag
            .get(tag.trim())
            .and_then(|key| self.open.get(key))
    }

    /// All open incidents, in no particular order.
    pub fn open_incidents(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The id the next new incident will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Alerts waiting for the current minute's digest.
    pub fn pending_digest(&self) -> &[DigestEntry] {
        &self.storm.pending
    }

    pub(crate) fn tag_taken(&self, tag: &str) -> bool {
        self.by_tag.contains_key(tag)
    }

    pub(crate) fn insert(&mut self, incident: Incident) {
        self.by_tag
            .insert(incident.tag.clone(), incident.key.clone());
        self.open.insert(incident.key.clone(), incident);
    }

    pub(crate) fn remove(&mut self, key: &AlertKey) -> Option<Incident> {
        let incident = self.open.remove(key)?;
        self.by_tag.remove(&incident.tag);
        Some(incident)
    }

    pub(crate) fn allocate_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }
}
