//! Where the open incidents the cache does not hold are read from: the `IncidentLookup`
//! the pipeline implements over the store, and the step's view (`Work`) that reads an
//! incident into the cache the first time the engine asks for it.

use super::decision::DigestEntry;
use super::incident::Incident;
use super::state::CorrelationState;
use crate::alert::AlertKey;
use std::collections::HashSet;
use std::ops::{Deref, DerefMut};

/// The open incidents behind the engine's cache, read one at a time by an indexed
/// lookup. The pipeline implements it over the store, inside its transaction.
pub trait IncidentLookup {
    type Error;
    /// The open incident of this (normalised) key; the newest one if several are open.
    fn open_by_key(&mut self, key: &AlertKey) -> Result<Option<Incident>, Self::Error>;
    /// The open incident carrying this thread tag.
    fn open_by_tag(&mut self, tag: &str) -> Result<Option<Incident>, Self::Error>;
    /// Whether any incident, open or ended, carries this tag (tags stay unique forever).
    fn tag_in_use(&mut self, tag: &str) -> Result<bool, Self::Error>;
    /// The open incidents waiting for the storm digest, oldest first (read once, when it
    /// goes out, by a state resumed from the store).
    fn pending_digest_members(&mut self) -> Result<Vec<Incident>, Self::Error>;
}

/// No store behind the state: every open incident is in memory (tests, and the
/// engine's plain `correlate`/`tick`, which never evict).
#[derive(Debug, Clone, Copy, Default)]
pub struct InMemory;

impl IncidentLookup for InMemory {
    type Error = std::convert::Infallible;
    fn open_by_key(&mut self, _key: &AlertKey) -> Result<Option<Incident>, Self::Error> {
        Ok(None)
    }
    fn open_by_tag(&mut self, _tag: &str) -> Result<Option<Incident>, Self::Error> {
        Ok(None)
    }
    fn tag_in_use(&mut self, _tag: &str) -> Result<bool, Self::Error> {
        Ok(false)
    }
    fn pending_digest_members(&mut self) -> Result<Vec<Incident>, Self::Error> {
        Ok(Vec::new())
    }
}

/// One engine step's view of the state: the cache plus the lookup behind it. A miss
/// reads the incident into the cache, where it stays at least until the step ends
/// (eviction only happens between steps). A failed read is kept and returned by
/// [`Work::finish`]; the step then counts as failed and its decision must be dropped.
pub(crate) struct Work<'a, L: IncidentLookup> {
    state: &'a mut CorrelationState,
    lookup: &'a mut L,
    failed: Option<L::Error>,
}

impl<'a, L: IncidentLookup> Work<'a, L> {
    pub(crate) fn new(state: &'a mut CorrelationState, lookup: &'a mut L) -> Self {
        Work {
            state,
            lookup,
            failed: None,
        }
    }

    /// The first lookup error of the step, if any.
    pub(crate) fn finish(self) -> Result<(), L::Error> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether `key` has an open incident; on a miss it is read into the cache.
    pub(crate) fn has_key(&mut self, key: &AlertKey) -> bool {
        if self.state.open.contains_key(key) {
            self.state.touch(key);
            return true;
        }
        if self.failed.is_some() {
            return false;
        }
        match self.lookup.open_by_key(key) {
            Ok(Some(incident)) if incident.key == *key && incident.is_open() => {
                self.state.adopt(incident);
                self.state.open.contains_key(key)
            }
            Ok(_) => false,
            Err(e) => {
                self.failed = Some(e);
                false
            }
        }
    }

    /// The key of the open incident tagged `tag`; on a miss it is read into the cache.
    pub(crate) fn key_of_tag(&mut self, tag: &str) -> Option<AlertKey> {
        let tag = tag.trim();
        if let Some(key) = self.state.by_tag.get(tag).cloned() {
            self.state.touch(&key);
            return Some(key);
        }
        if self.failed.is_some() {
            return None;
        }
        match self.lookup.open_by_tag(tag) {
            Ok(Some(incident)) if incident.tag == tag && incident.is_open() => {
                // If the cache holds another open incident of this key (two open ones in
                // an old store), the newer one wins, as when loading them all.
                self.state.adopt(incident);
                self.state.by_tag.get(tag).cloned()
            }
            Ok(_) => None,
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }

    /// Takes the entries waiting for the digest, oldest first: the ones memory lists and,
    /// after a resume, the ones only the store knows (their alert is the incident's
    /// latest). The store's are cached like any incident read.
    pub(crate) fn take_pending(&mut self) -> Vec<DigestEntry> {
        let mut entries = std::mem::take(&mut self.state.storm.pending);
        if std::mem::take(&mut self.state.storm.unlisted) == 0 || self.failed.is_some() {
            return entries;
        }
        let stored = match self.lookup.pending_digest_members() {
            Ok(stored) => stored,
            Err(e) => {
                self.failed = Some(e);
                return entries;
            }
        };
        let listed: HashSet<u64> = entries.iter().map(|e| e.incident_id).collect();
        for incident in stored {
            if listed.contains(&incident.id) || !incident.is_open() {
                continue;
            }
            // Memory's copy is newer than the store's when the cache holds it.
            let current = match self.state.open.get(&incident.key) {
                Some(cached) if cached.id == incident.id => cached.clone(),
                Some(_) => continue,
                None => {
                    self.state.adopt(incident.clone());
                    incident
                }
            };
            if current.in_pending_digest {
                entries.push(DigestEntry {
                    incident_id: current.id,
                    tag: current.tag.clone(),
                    at: current.first_seen,
                    alert: current.last_alert.clone(),
                });
            }
        }
        entries.sort_by_key(|e| e.incident_id);
        entries
    }

    /// Whether a new incident may not take `tag`. After a failed read every tag counts
    /// as taken (the step fails anyway).
    pub(crate) fn tag_taken(&mut self, tag: &str) -> bool {
        if self.state.by_tag.contains_key(tag) {
            return true;
        }
        if self.failed.is_some() {
            return true;
        }
        match self.lookup.tag_in_use(tag) {
            Ok(taken) => taken,
            Err(e) => {
                self.failed = Some(e);
                true
            }
        }
    }
}

impl<L: IncidentLookup> Deref for Work<'_, L> {
    type Target = CorrelationState;
    fn deref(&self) -> &CorrelationState {
        self.state
    }
}

impl<L: IncidentLookup> DerefMut for Work<'_, L> {
    fn deref_mut(&mut self) -> &mut CorrelationState {
        self.state
    }
}
