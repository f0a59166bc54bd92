//! Connection slots: the global `max_connections`, the per-client-address limit
//! (`max_connections_per_client`, as Postfix's anvil), and idle-first eviction: when every
//! slot is taken, the session idle longest (beyond `idle_eviction_secs`) is closed first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What a new connection gets.
pub enum Admission {
    Admitted(Slot),
    /// Its address already has `max_connections_per_client` sessions.
    ClientLimit,
    /// Every slot stayed taken while it waited.
    Busy,
}

struct Entry {
    /// Since when the session has been waiting for its next command; None in DATA.
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct State {
    per_client: HashMap<IpAddr, usize>,
    sessions: HashMap<u64, Entry>,
    next_id: u64,
}

/// The slots of one server, shared by its listeners.
pub struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    per_client_max: usize,
    idle_eviction: Duration,
    /// How long a connection waits for a slot before `421 Too many connections`.
    max_wait: Duration,
    waiting: AtomicUsize,
    state: Mutex<State>,
}

impl Slots {
    pub fn new(
        max: usize,
        per_client_max: usize,
        idle_eviction: Duration,
        max_wait: Duration,
    ) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            per_client_max,
            idle_eviction,
            max_wait,
            waiting: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves once every session has ended.
    pub async fn all_free(&self) {
        let _ = self.permits.acquire_many(self.max as u32).await;
    }

    /// A slot for a client at `ip`: at once when one is free; else, when a session has
    /// been idle beyond the threshold, it is asked to make room and the client waits for
    /// its slot (at most `max_wait`); else `Busy` at once (421, the client retries later).
    pub async fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        {
            let mut state = self.lock();
            let count = state.per_client.entry(ip).or_insert(0);
            if self.per_client_max > 0 && *count >= self.per_client_max {
                return Admission::ClientLimit;
            }
            *count += 1;
        }
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => self.wait_for_permit().await,
        };
        let Some(permit) = permit else {
            self.release_client(ip);
            return Admission::Busy;
        };
        let evict = Arc::new(Notify::new());
        let id = {
            let mut state = self.lock();
            state.next_id += 1;
            let id = state.next_id;
            state.sessions.insert(
                id,
                Entry {
                    idle_since: Some(Instant::now()),
                    evict: Arc::clone(&evict),
                },
            );
            id
        };
        Admission::Admitted(Slot {
            id,
            ip,
            slots: Arc::clone(self),
            evicted: evict,
            _permit: permit,
        })
    }

    async fn wait_for_permit(&self) -> Option<OwnedSemaphorePermit> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        if !self.evict_idlest() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let acquired =
            tokio::time::timeout(self.max_wait, Arc::clone(&self.permits).acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        acquired.ok().and_then(Result::ok)
    }

    /// Asks the session idle longest, if beyond the threshold, to close; false if none is.
    fn evict_idlest(&self) -> bool {
        let mut state = self.lock();
        let idlest = state
            .sessions
            .iter_mut()
            .filter_map(|(id, entry)| entry.idle_since.map(|since| (since, *id, entry)))
            .filter(|(since, _, _)| since.elapsed() >= self.idle_eviction)
            .min_by_key(|(since, id, _)| (*since, *id));
        if let Some((since, id, entry)) = idlest {
            tracing::info!(
                session = id,
                idle_secs = since.elapsed().as_secs(),
                "every connection slot taken: closing the idlest session"
            );
            entry.idle_since = None;
            entry.evict.notify_one();
            return true;
        }
        false
    }

    fn release_client(&self, ip: IpAddr) {
        let mut state = self.lock();
        if let Some(count) = state.per_client.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_client.remove(&ip);
            }
        }
    }
}

/// One session's slot; freed when dropped.
pub struct Slot {
    id: u64,
    ip: IpAddr,
    slots: Arc<Slots>,
    /// Notified when the server needs this idle session's slot.
    pub evicted: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The session waits for a command since `since` (Some) or is busy in DATA (None).
    pub fn set_idle(&self, since: Option<Instant>) {
        if let Some(entry) = self.slots.lock().sessions.get_mut(&self.id) {
            entry.idle_since = since;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().sessions.remove(&self.id);
        self.slots.release_client(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[tokio::test]
    async fn per_client_limit_counts_only_that_address() {
        let slots = Arc::new(Slots::new(
            10,
            2,
            Duration::from_secs(60),
            Duration::from_millis(10),
        ));
        let a1 = slots.admit(ip(2)).await;
        let a2 = slots.admit(ip(2)).await;
        assert!(matches!(slots.admit(ip(2)).await, Admission::ClientLimit));
        assert!(matches!(slots.admit(ip(1)).await, Admission::Admitted(_)));
        drop(a1);
        assert!(matches!(slots.admit(ip(2)).await, Admission::Admitted(_)));
        drop(a2);
    }

    #[tokio::test]
    async fn full_server_evicts_the_idlest_session_beyond_the_threshold() {
        let slots = Arc::new(Slots::new(2, 0, Duration::ZERO, Duration::from_secs(2)));
        let Admission::Admitted(old) = slots.admit(ip(1)).await else {
            panic!("admitted")
        };
        let Admission::Admitted(busy) = slots.admit(ip(1)).await else {
            panic!("admitted")
        };
        busy.set_idle(None);
        let evicted = Arc::clone(&old.evicted);
        let session = tokio::spawn(async move {
            evicted.notified().await;
            drop(old);
        });
        assert!(matches!(slots.admit(ip(3)).await, Admission::Admitted(_)));
        session.await.expect("evicted session ended");
        drop(busy);
    }

    #[tokio::test]
    async fn busy_sessions_are_not_evicted_and_the_newcomer_gives_up() {
        let slots = Arc::new(Slots::new(1, 0, Duration::ZERO, Duration::from_millis(50)));
        let Admission::Admitted(busy) = slots.admit(ip(1)).await else {
            panic!("admitted")
        };
        busy.set_idle(None);
        assert!(matches!(slots.admit(ip(2)).await, Admission::Busy));
        drop(busy);
        assert!(matches!(slots.admit(ip(2)).await, Admission::Admitted(_)));
    }
}
