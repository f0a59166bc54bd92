//! Leases on shared work: which gateway delivers an outbound mail or carries out a GLPI
//! action right now. A lease names its owner and runs out, so a dead gateway's work
//! returns to the others after one lease period.

/// This gateway's claim on work it takes from a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    owner: String,
    secs: i64,
}

/// How long a lease runs when `[store] lease_secs` does not say.
pub const DEFAULT_LEASE_SECS: u64 = 60;

impl Lease {
    /// A lease of `secs` seconds owned by a name unique to this gateway instance
    /// (host, process, and a random part: two gateways in one process differ).
    pub fn new(secs: u64) -> Lease {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let nonce: u32 = rand::random();
        Lease {
            owner: format!("{host}:{}:{nonce:08x}", std::process::id()),
            secs: i64::try_from(secs.max(1)).unwrap_or(i64::MAX / 4),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn secs(&self) -> i64 {
        self.secs
    }

    /// When a lease taken at `now` runs out.
    pub fn until(&self, now: i64) -> i64 {
        now.saturating_add(self.secs)
    }
}

impl Default for Lease {
    fn default() -> Lease {
        Lease::new(DEFAULT_LEASE_SECS)
    }
}

/// A claim's SQL as it runs. Tests may leave one clause out on their thread
/// (`left_out::with`), to show that what two gateways guarantee rests on it.
pub(crate) fn claim_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    #[cfg(test)]
    if let Some(clause) = left_out::current() {
        return std::borrow::Cow::Owned(clause.strip(sql));
    }
    std::borrow::Cow::Borrowed(sql)
}

/// Tests only: the claims made on this thread with one clause of their SQL left out.
#[cfg(test)]
pub(crate) mod left_out {
    use std::cell::Cell;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Clause {
        /// `lease_until IS NULL OR lease_until <= now OR lease_owner = me`.
        LeaseCheck,
        /// `SKIP LOCKED` (the rows are still locked, so a claim waits instead).
        SkipLocked,
        /// `FOR UPDATE … SKIP LOCKED` altogether.
        RowLocks,
    }

    thread_local! {
        static LEFT_OUT: Cell<Option<Clause>> = const { Cell::new(None) };
    }

    pub(crate) fn current() -> Option<Clause> {
        LEFT_OUT.with(Cell::get)
    }

    /// Runs `f` with `clause` left out of every claim made on this thread.
    pub(crate) fn with<T>(clause: Option<Clause>, f: impl FnOnce() -> T) -> T {
        let before = LEFT_OUT.with(|c| c.replace(clause));
        let out = f();
        LEFT_OUT.with(|c| c.set(before));
        out
    }

    impl Clause {
        /// `sql` without the clause; a claim that has no such clause is a test's mistake.
        pub(crate) fn strip(self, sql: &str) -> String {
            let pattern = match self {
                Clause::LeaseCheck => {
                    r"AND \(\w+\.lease_until IS NULL OR \w+\.lease_until <= \$1 OR \w+\.lease_owner = \$2\)"
                }
                Clause::SkipLocked => r" SKIP LOCKED",
                Clause::RowLocks => r"FOR UPDATE( OF \w+)? SKIP LOCKED",
            };
            let re = regex::Regex::new(pattern).expect("pattern");
            assert!(re.is_match(sql), "{self:?} is not in the claim: {sql}");
            re.replace_all(sql, "").into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leases_in_one_process_have_different_owners() {
        let (a, b) = (Lease::new(5), Lease::new(5));
        assert_ne!(a.owner(), b.owner());
        assert!(a.owner().contains(&std::process::id().to_string()));
        assert_eq!(a.until(100), 105);
    }

    use super::left_out::Clause;
    use crate::store::{actions, outbound, spool, Db, Durability, Location, StoreError};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Two gateways' connections to one fresh PostgreSQL database.
    fn two_gateways() -> (Db, Db, Db) {
        let url = crate::store::pg::harness::shared().create_database();
        let open = || Db::open(&Location::Postgres(url.clone()), Durability::Full).unwrap();
        (open(), open(), open())
    }

    const NOW: i64 = 1_800_000_000;

    fn queue_mails(db: &mut Db, n: usize) {
        for i in 0..n {
            let to = vec!["glpi@example.test".to_string()];
            let mail = outbound::NewOutbound {
                order_key: &format!("ALERT-{i}"),
                message_id: &format!("<m{i}@test>"),
                subject: "s",
                envelope_from: "alertgate@example.test",
                envelope_to: &to,
                raw: b"Subject: s\r\n\r\nx\r\n",
                state: outbound::OutboundState::Queued,
                spool_id: None,
                not_before: 0,
                kind: crate::mail::OutboundKind::News,
            };
            outbound::enqueue(db, &mail, NOW).unwrap();
        }
    }

    fn queue_actions(db: &mut Db, n: usize) {
        for i in 0..n {
            let tag = format!("ALERT-{i}");
            actions::add(
                db,
                &tag,
                100 + i as u64,
                actions::ActionKind::Followup,
                "x",
                NOW,
            )
            .unwrap();
        }
    }

    fn spool_mails(db: &mut Db, n: usize) {
        let envelope = spool::Envelope {
            peer: "127.0.0.1:5000".into(),
            helo: "mon".into(),
            mail_from: "nagios@example.test".into(),
            rcpt_to: vec!["glpi@example.test".into()],
            tls: false,
            auth_user: None,
            received_at: NOW,
        };
        for _ in 0..n {
            spool::insert(db, &envelope, b"Subject: s\r\n\r\nx\r\n", None).unwrap();
        }
    }

    type Claim = fn(&mut Db, &Lease) -> Result<Vec<i64>, StoreError>;

    fn claim_mails(db: &mut Db, lease: &Lease) -> Result<Vec<i64>, StoreError> {
        Ok(outbound::due_leased(db, NOW, 10, lease)?
            .iter()
            .map(|r| r.id)
            .collect())
    }

    fn claim_actions(db: &mut Db, lease: &Lease) -> Result<Vec<i64>, StoreError> {
        Ok(actions::due_leased(db, NOW, 10, lease)?
            .iter()
            .map(|a| a.id)
            .collect())
    }

    /// As the pipeline does: inside its transaction, two messages at a time.
    fn claim_spooled(db: &mut Db, _: &Lease) -> Result<Vec<i64>, StoreError> {
        Ok(spool::claim_pending(db, 2)?.iter().map(|r| r.id).collect())
    }

    /// Gateway A claims inside a transaction it keeps open; gateway B claims meanwhile
    /// (in a transaction of its own for the spool, which the pipeline claims in one).
    /// Once B has answered, or is seen waiting for A's row locks, A commits.
    struct Race {
        a: Vec<i64>,
        b: Result<Vec<i64>, StoreError>,
        /// B waited for A's locks instead of taking other rows or none.
        b_waited: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Work {
        Mails,
        Actions,
        Spooled,
    }

    impl Work {
        fn queue(self, db: &mut Db) {
            match self {
                Work::Mails => queue_mails(db, 3),
                Work::Actions => queue_actions(db, 3),
                Work::Spooled => spool_mails(db, 4),
            }
        }

        fn claim(self) -> Claim {
            match self {
                Work::Mails => claim_mails,
                Work::Actions => claim_actions,
                Work::Spooled => claim_spooled,
            }
        }
    }

    fn race(work: Work, left_out: Option<Clause>) -> Race {
        let (mut a, mut b, mut watcher) = two_gateways();
        work.queue(&mut a);
        let (claim, b_in_tx) = (work.claim(), work == Work::Spooled);
        let b_pid = b
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .int(0)
            .unwrap();
        // A lock wait ends after 10 s instead of hanging the test.
        b.execute("SET lock_timeout = '10s'", &[]).unwrap();
        let (lease_a, lease_b) = (Lease::new(60), Lease::new(60));
        let mut tx = a.transaction().unwrap();
        let claimed_a = left_out::with(left_out, || claim(&mut tx, &lease_a)).unwrap();
        if work == Work::Spooled {
            // The pipeline's transaction marks what it claimed processed before its commit.
            for id in &claimed_a {
                spool::set_state(&mut tx, *id, spool::SpoolState::Processed, None, NOW).unwrap();
            }
        }
        let (done, answer) = mpsc::channel();
        let racer = std::thread::spawn(move || {
            let got = left_out::with(left_out, || {
                if b_in_tx {
                    let mut tx = b.transaction()?;
                    let got = claim(&mut tx, &lease_b)?;
                    tx.commit()?;
                    Ok(got)
                } else {
                    claim(&mut b, &lease_b)
                }
            });
            let _ = done.send(got);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut b_waited = false;
        let mut early = None;
        while Instant::now() < deadline {
            if let Ok(got) = answer.try_recv() {
                early = Some(got);
                break;
            }
            let waiting = watcher
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                    &[b_pid.into()],
                )
                .unwrap()
                .int(0)
                .unwrap();
            if waiting > 0 {
                b_waited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tx.commit().unwrap();
        let b = early.unwrap_or_else(|| answer.recv().expect("B's answer"));
        racer.join().unwrap();
        Race {
            a: claimed_a,
            b,
            b_waited,
        }
    }

    fn overlap(a: &[i64], b: &[i64]) -> Vec<i64> {
        a.iter().filter(|id| b.contains(id)).copied().collect()
    }

    /// Two gateways claiming at the same instant never take the same mail, GLPI action
    /// or spooled message, and neither waits for the other: that rests on the claims' row
    /// locks (without them both take the same rows) and on SKIP LOCKED (without it one
    /// waits for the other's commit).
    #[test]
    fn concurrent_claims_take_disjoint_rows_thanks_to_row_locks_and_skip_locked() {
        for (what, work) in [
            ("outbound", Work::Mails),
            ("glpi_actions", Work::Actions),
            ("spool", Work::Spooled),
        ] {
            let full = race(work, None);
            assert!(!full.a.is_empty(), "{what}: A claimed nothing");
            let b = full.b.unwrap_or_else(|e| panic!("{what}: B failed: {e}"));
            assert!(
                overlap(&full.a, &b).is_empty(),
                "{what}: both claimed {b:?}"
            );
            assert!(!full.b_waited, "{what}: B waited for A");
            if what == "spool" {
                assert_eq!(b.len(), 2, "spool: B takes the next messages");
            }

            let unlocked = race(work, Some(Clause::RowLocks));
            let b = unlocked
                .b
                .unwrap_or_else(|e| panic!("{what}: B failed: {e}"));
            assert!(
                !overlap(&unlocked.a, &b).is_empty(),
                "{what}: without row locks both gateways should take the same rows: A {:?}, B {b:?}",
                unlocked.a
            );

            let waiting = race(work, Some(Clause::SkipLocked));
            assert!(
                waiting.b_waited,
                "{what}: without SKIP LOCKED, B waits for A"
            );
            let b = waiting
                .b
                .unwrap_or_else(|e| panic!("{what}: B failed: {e}"));
            assert!(overlap(&waiting.a, &b).is_empty(), "{what}: {b:?}");
        }
    }

    /// A claim committed by one gateway holds its rows against the other until the lease
    /// runs out; without the lease check the other takes them again at once.
    #[test]
    fn a_committed_lease_keeps_rows_from_the_other_gateway_until_it_runs_out() {
        for (what, work) in [("outbound", Work::Mails), ("glpi_actions", Work::Actions)] {
            let claim = work.claim();
            for left_out in [None, Some(Clause::LeaseCheck)] {
                let (mut a, mut b, _) = two_gateways();
                work.queue(&mut a);
                let (lease_a, lease_b) = (Lease::new(60), Lease::new(60));
                let (got_a, got_b) = left_out::with(left_out, || {
                    let got_a = claim(&mut a, &lease_a).unwrap();
                    (got_a, claim(&mut b, &lease_b).unwrap())
                });
                assert_eq!(got_a.len(), 3, "{what}");
                match left_out {
                    None => {
                        assert!(got_b.is_empty(), "{what}: B took leased rows {got_b:?}");
                        // A's own claim renews its lease; after it runs out B takes them.
                        assert_eq!(claim(&mut a, &lease_a).unwrap(), got_a, "{what}");
                        let later = match what {
                            "outbound" => outbound::due_leased(&mut b, NOW + 61, 10, &lease_b)
                                .unwrap()
                                .len(),
                            _ => actions::due_leased(&mut b, NOW + 61, 10, &lease_b)
                                .unwrap()
                                .len(),
                        };
                        assert_eq!(later, 3, "{what}: the expired lease's rows return");
                    }
                    Some(_) => assert_eq!(
                        got_b, got_a,
                        "{what}: without the lease check B takes A's rows again"
                    ),
                }
            }
        }
    }
}
