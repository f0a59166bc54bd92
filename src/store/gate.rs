//! The in-process write gate: the spool writer and the pipeline take it around their
//! write transactions, so SQLite's write lock passes between them at once (a fair
//! hand-over) instead of through SQLite's busy handler, which sleeps and polls.

use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
pub struct WriteGate {
    lock: Mutex<()>,
    waiting: AtomicUsize,
}

/// The gate, held; leaving it hands it to a waiting writer first.
pub struct GateGuard<'a> {
    gate: &'a WriteGate,
    guard: Option<MutexGuard<'a, ()>>,
}

impl WriteGate {
    pub fn new() -> WriteGate {
        WriteGate::default()
    }

    /// Blocks until the gate is ours.
    pub fn enter(&self) -> GateGuard<'_> {
        let guard = match self.lock.try_lock() {
            Some(guard) => guard,
            None => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let guard = self.lock.lock();
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                guard
            }
        };
        GateGuard {
            gate: self,
            guard: Some(guard),
        }
    }

    /// Someone waits for the gate: the holder should end its transaction soon.
    pub fn contended(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            if self.gate.contended() {
                // Fair: the waiter gets it even if we ask again right away.
                MutexGuard::unlock_fair(guard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_waiting_writer_gets_the_gate_before_the_holder_takes_it_again() {
        let gate = Arc::new(WriteGate::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = gate.enter();
        let waiter = {
            let (gate, order) = (Arc::clone(&gate), Arc::clone(&order));
            std::thread::spawn(move || {
                let _g = gate.enter();
                order.lock().push("waiter");
            })
        };
        while !gate.contended() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // `contended` counts the waiter just before it parks; a fair unlock hands the
        // gate only to a parked one, so give it time to park on a loaded machine.
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        let _again = gate.enter();
        order.lock().push("holder");
        drop(_again);
        waiter.join().unwrap();
        assert_eq!(*order.lock(), vec!["waiter", "holder"]);
    }
}
