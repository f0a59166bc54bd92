//! The gateway's one notion of "now", in unix seconds. Every time-driven stage reads it
//! from here, so tests and `replay` can run the real pipeline on a clock they control
//! (storm windows, reminders, hold timeouts) instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A shared clock: the system's, or one set by hand.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands at `start` until it is set or advanced.
    pub fn manual(start: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(start))),
        }
    }

    /// The current time in unix seconds.
    pub fn now(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_now(),
        }
    }

    /// Whether this clock is set by hand.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// Set a manual clock; the system clock ignores it.
    pub fn set(&self, at: i64) {
        if let Some(t) = &self.manual {
            t.store(at, Ordering::SeqCst);
        }
    }

    /// Move a manual clock forward by `secs`.
    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.manual {
            t.fetch_add(secs, Ordering::SeqCst);
        }
    }
}

fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_is_shared_by_clones() {
        let clock = Clock::manual(1_000);
        let copy = clock.clone();
        assert_eq!(clock.now(), 1_000);
        copy.advance(60);
        assert_eq!(clock.now(), 1_060);
        clock.set(5);
        assert_eq!(copy.now(), 5);
    }

    #[test]
    fn system_clock_is_now_and_ignores_set() {
        let clock = Clock::system();
        let before = system_now();
        clock.set(5);
        assert!(clock.now() >= before);
    }
}
