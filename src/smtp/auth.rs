//! AUTH credentials and abuse control: users' passwords checked against a plaintext
//! `password` or a `password_hash` (argon2id PHC string or SHA-512-crypt `$6$`, the
//! schemes Dovecot uses), and failed attempts throttled per client address.

use crate::config::AuthUser;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The hash schemes accepted in `password_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Argon2,
    ShaCrypt512,
}

fn scheme(hash: &str) -> Option<Scheme> {
    // Dovecot writes the scheme in braces first: {ARGON2ID}$argon2id$..., {SHA512-CRYPT}$6$...
    let bare = strip_dovecot_prefix(hash);
    if bare.starts_with("$argon2id$") || bare.starts_with("$argon2i$") {
        Some(Scheme::Argon2)
    } else if bare.starts_with("$6$") {
        Some(Scheme::ShaCrypt512)
    } else {
        None
    }
}

fn strip_dovecot_prefix(hash: &str) -> &str {
    let hash = hash.trim();
    match hash.strip_prefix('{').and_then(|r| r.split_once('}')) {
        Some((_, rest)) => rest,
        None => hash,
    }
}

/// Why a `password_hash` cannot be used; checked at load.
pub fn hash_problem(hash: &str) -> Option<String> {
    let bare = strip_dovecot_prefix(hash);
    match scheme(hash) {
        None => Some("unknown scheme (expected an argon2id hash from `alertgate passwd`, or SHA-512-crypt `$6$...`)".into()),
        Some(Scheme::Argon2) => argon2::password_hash::phc::PasswordHash::new(bare)
            .err()
            .map(|e| format!("not a valid argon2 hash: {e}")),
        Some(Scheme::ShaCrypt512) => sha_crypt::PasswordHash::new(bare)
            .err()
            .map(|e| format!("not a valid SHA-512-crypt hash: {e}")),
    }
}

/// Whether `password` is this user's.
pub fn verify(user: &AuthUser, password: &str) -> bool {
    if let Some(hash) = &user.password_hash {
        return verify_hash(hash, password);
    }
    user.password
        .as_deref()
        .is_some_and(|p| constant_time_eq(p.as_bytes(), password.as_bytes()))
}

fn verify_hash(hash: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    let bare = strip_dovecot_prefix(hash);
    match scheme(hash) {
        Some(Scheme::Argon2) => {
            argon2::password_hash::phc::PasswordHash::new(bare).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        }
        Some(Scheme::ShaCrypt512) => sha_crypt::PasswordHash::new(bare).is_ok_and(|h| {
            sha_crypt::ShaCrypt::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        }),
        None => false,
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What to do after a failed AUTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Answer 535 at once.
    Answer,
    /// Answer 535 after this delay.
    Delay(Duration),
    /// Too many failures: 421 and close.
    Refuse,
}

/// Failed AUTH attempts per client address over the last minute.
#[derive(Debug)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    /// Failures answered at once; the next ones wait `delay`.
    pub free_failures: usize,
    /// Failures before the client is refused (421) until its minute is over.
    pub max_failures: usize,
    pub delay: Duration,
    pub window: Duration,
}

impl AuthThrottle {
    pub fn new(delay: Duration) -> AuthThrottle {
        AuthThrottle {
            failures: Mutex::new(HashMap::new()),
            free_failures: 5,
            max_failures: 10,
            delay,
            window: Duration::from_secs(60),
        }
    }

    fn recent(&self, ip: IpAddr, now: Instant, add: bool) -> usize {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the map small: forget addresses whose minute is over.
        map.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = map.entry(ip).or_default();
        if add {
            times.push_back(now);
        }
        let n = times.len();
        if n == 0 {
            map.remove(&ip);
        }
        n
    }

    /// Whether the address is refused before it even tries.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        self.recent(ip, Instant::now(), false) >= self.max_failures
    }

    /// Records one failure and says how to answer it.
    pub fn failure(&self, ip: IpAddr) -> Throttle {
        self.failure_at(ip, Instant::now())
    }

    fn failure_at(&self, ip: IpAddr, now: Instant) -> Throttle {
        let n = self.recent(ip, now, true);
        if n > self.max_failures {
            Throttle::Refuse
        } else if n > self.free_failures {
            Throttle::Delay(self.delay)
        } else {
            Throttle::Answer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(password: Option<&str>, hash: Option<&str>) -> AuthUser {
        AuthUser {
            username: "vrops".into(),
            password: password.map(str::to_string),
            password_hash: hash.map(str::to_string),
        }
    }

    #[test]
    fn argon2_hash_from_passwd_verifies() {
        let hash = crate::cli::passwd::hash("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_eq!(hash_problem(&hash), None);
        assert!(verify(&user(None, Some(&hash)), "s3cret"));
        assert!(!verify(&user(None, Some(&hash)), "s3cret "));
        let dovecot = format!("{{ARGON2ID}}{hash}");
        assert!(verify(&user(None, Some(&dovecot)), "s3cret"));
    }

    #[test]
    fn sha512_crypt_verifies() {
        // glibc crypt(3) of "s3cret" with salt "saltsaltsalt" (`mkpasswd -m sha-512`).
        let hash = "$6$saltsaltsalt$FUTXsgNpMxVPwnX4XalnoSItgvVbUy6eQVJVcn9taCOEVAPu1PukMtU6lAfNfDb9ttqSN7i8gT2C5j2TY43X01";
        assert_eq!(hash_problem(hash), None);
        let u = user(None, Some(hash));
        assert!(verify(&u, "s3cret"));
        assert!(!verify(&u, "wrong"));
    }

    #[test]
    fn bad_hashes_are_reported() {
        assert!(hash_problem("plain").is_some());
        assert!(hash_problem("$argon2id$garbage").is_some());
    }

    #[test]
    fn sixth_failure_waits_eleventh_is_refused_and_the_minute_ends_it() {
        let t = AuthThrottle::new(Duration::from_millis(500));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let start = Instant::now();
        let answers: Vec<Throttle> = (0..11).map(|_| t.failure_at(ip, start)).collect();
        assert!(answers[..5].iter().all(|a| *a == Throttle::Answer));
        assert!(answers[5..10]
            .iter()
            .all(|a| *a == Throttle::Delay(Duration::from_millis(500))));
        assert_eq!(answers[10], Throttle::Refuse);
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(t.failure_at(other, start), Throttle::Answer);
        assert_eq!(
            t.failure_at(ip, start + Duration::from_secs(61)),
            Throttle::Answer
        );
    }
}
