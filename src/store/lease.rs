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
}
