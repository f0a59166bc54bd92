//! The `[relay]` configuration section (upstream SMTP relay, TLS, credentials, pool)
//! and the retry policy of the delivery worker (`[relay.retry]`), with its pure
//! backoff and expiry arithmetic.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How the connection to the relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Plain text only (a trusted relay on localhost or the same host).
    None,
    /// Plain text connection upgraded with STARTTLS; fails if the relay does not offer it.
    /// The default: relays such as Exchange listen on port 25 with STARTTLS.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", usually port 465).
    Tls,
}

/// Where outbound mail goes: an SMTP relay, or a local Maildir (the first run's outbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayKind {
    #[default]
    Smtp,
    Maildir,
}

/// The `[relay]` section: where normalized mail is sent.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default)]
    pub kind: RelayKind,
    /// The Maildir written to when `kind = "maildir"`.
    #[serde(default)]
    pub maildir: Option<PathBuf>,
    /// Host name or IP address of the relay; also the name its TLS certificate is checked
    /// against. Required when `kind = "smtp"` (checked at load).
    #[serde(default)]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: RelayTls,
    /// With `password`, enables AUTH (PLAIN, then LOGIN).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Name sent in EHLO; defaults to this machine's host name.
    #[serde(default)]
    pub helo_name: Option<String>,
    /// Seconds allowed for each step of the exchange with the relay (connect, greeting,
    /// each command reply) unless `[relay.timeouts]` sets that step.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Per-step timeouts, as Postfix's `smtp_*_timeout`.
    #[serde(default)]
    pub timeouts: RelayTimeouts,
    /// Largest mail sent, in bytes, even when the relay advertises more (or no) `SIZE`.
    /// A bigger composed mail is shrunk: the attached original first, then the text.
    #[serde(default)]
    pub max_message_size: Option<usize>,
    /// Skip certificate and host name checks (self-signed relays, tests). Never in production.
    #[serde(default)]
    pub accept_invalid_certs: bool,
    /// Idle connections kept open for reuse.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: u32,
    /// Seconds an unused pooled connection is kept before being closed.
    #[serde(default = "default_pool_idle_timeout_secs")]
    pub pool_idle_timeout_secs: u64,
    /// Mails sent at the same time (each to a different incident).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_port() -> u16 {
    25
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_pool_max_idle() -> u32 {
    4
}
fn default_pool_idle_timeout_secs() -> u64 {
    60
}
fn default_max_parallel() -> usize {
    4
}

impl RelayConfig {
    /// A configuration with every default, for `host:port` (used by tests and examples).
    pub fn new(host: impl Into<String>, port: u16) -> RelayConfig {
        RelayConfig {
            kind: RelayKind::Smtp,
            maildir: None,
            host: host.into(),
            port,
            tls: RelayTls::default(),
            username: None,
            password: None,
            helo_name: None,
            timeout_secs: default_timeout_secs(),
            timeouts: RelayTimeouts::default(),
            max_message_size: None,
            accept_invalid_certs: false,
            pool_max_idle: default_pool_max_idle(),
            pool_idle_timeout_secs: default_pool_idle_timeout_secs(),
            max_parallel: default_max_parallel(),
            retry: RetryPolicy::default(),
        }
    }

    /// What `[relay]` lacks for its kind, as (key, message); checked at load.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        match self.kind {
            RelayKind::Smtp if self.host.trim().is_empty() => vec![(
                "relay.host",
                "missing: the relay's host name or address (or set kind = \"maildir\")".into(),
            )],
            RelayKind::Maildir if self.maildir.is_none() => vec![(
                "relay.maildir",
                "missing: kind = \"maildir\" needs a directory (e.g. \"./var/outbox\")".into(),
            )],
            _ => Vec::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Each step's timeout, with `timeout_secs` standing in for the steps not set.
    pub fn step_timeouts(&self) -> StepTimeouts {
        let or_default = |secs: Option<u64>| Duration::from_secs(secs.unwrap_or(self.timeout_secs));
        StepTimeouts {
            connect: or_default(self.timeouts.connect_secs),
            greeting: or_default(self.timeouts.greeting_secs),
            command: or_default(self.timeouts.command_secs),
            data_done: Duration::from_secs(
                self.timeouts
                    .data_done_secs
                    .unwrap_or(DEFAULT_DATA_DONE_SECS),
            ),
        }
    }
}

/// Postfix's `smtp_data_done_timeout`: RFC 5321 4.5.3.2.6 gives the final reply 10 minutes.
pub const DEFAULT_DATA_DONE_SECS: u64 = 600;

/// `[relay.timeouts]`: seconds per step of one exchange with the relay. A slow step is
/// not charged to the next one, so a relay slow on every reply still gets its mail.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayTimeouts {
    /// TCP connect and, for `tls = "tls"`, the TLS handshake.
    pub connect_secs: Option<u64>,
    /// The greeting, and each of EHLO, STARTTLS and AUTH.
    pub greeting_secs: Option<u64>,
    /// Each reply to MAIL, RCPT, DATA, RSET and NOOP.
    pub command_secs: Option<u64>,
    /// Sending the message and its final reply (default 600, `smtp_data_done_timeout`).
    /// A timeout here may leave a delivered mail: it is retried and logged as a possible
    /// duplicate (the same Message-ID makes the copy recognisable).
    pub data_done_secs: Option<u64>,
}

/// The resolved per-step timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTimeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub command: Duration,
    pub data_done: Duration,
}

// Hand-written so that the password never reaches a log line.
impl fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayConfig")
            .field("kind", &self.kind)
            .field("maildir", &self.maildir)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("helo_name", &self.helo_name)
            .field("timeout_secs", &self.timeout_secs)
            .field("timeouts", &self.timeouts)
            .field("max_message_size", &self.max_message_size)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("pool_idle_timeout_secs", &self.pool_idle_timeout_secs)
            .field("max_parallel", &self.max_parallel)
            .field("retry", &self.retry)
            .finish()
    }
}

/// When a mail the relay did not take is tried again, and when the worker gives up.
/// All times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt; doubled after each further failure.
    pub initial_backoff_secs: u64,
    /// Upper bound of the delay between two attempts.
    pub max_backoff_secs: u64,
    /// A mail still undelivered this long after it was queued becomes a dead letter.
    pub max_queue_age_secs: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff_secs: 60,
            max_backoff_secs: 1800,
            max_queue_age_secs: 2 * 24 * 3600,
        }
    }
}

impl RetryPolicy {
    /// The backoff after `failed_attempts` failures (1 = the first failure).
    pub fn backoff_secs(&self, failed_attempts: u32) -> u64 {
        let doublings = failed_attempts.saturating_sub(1);
        let factor = 1u64.checked_shl(doublings).unwrap_or(u64::MAX);
        self.initial_backoff_secs
            .saturating_mul(factor)
            .min(self.max_backoff_secs.max(self.initial_backoff_secs))
    }

    /// When to try again after `failed_attempts` failures, the last one at `now`.
    pub fn next_attempt_at(&self, failed_attempts: u32, now: i64) -> i64 {
        let backoff = i64::try_from(self.backoff_secs(failed_attempts)).unwrap_or(i64::MAX);
        now.saturating_add(backoff)
    }

    /// Whether a mail queued at `queued_at` is too old to be tried again.
    pub fn expired(&self, queued_at: i64, now: i64) -> bool {
        let max_age = i64::try_from(self.max_queue_age_secs).unwrap_or(i64::MAX);
        now.saturating_sub(queued_at) >= max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_up_to_max() {
        let policy = RetryPolicy::default();
        let delays: Vec<i64> = (1..=8)
            .map(|n| policy.next_attempt_at(n, 1000) - 1000)
            .collect();
        assert_eq!(delays, vec![60, 120, 240, 480, 960, 1800, 1800, 1800]);
    }

    #[test]
    fn zero_attempts_counts_as_first_failure() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.next_attempt_at(0, 0), 60);
    }

    #[test]
    fn huge_attempt_counts_saturate_at_max_backoff() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.next_attempt_at(u32::MAX, 10), 1810);
        assert_eq!(policy.next_attempt_at(64, 10), 1810);
        let unbounded = RetryPolicy {
            initial_backoff_secs: u64::MAX,
            max_backoff_secs: u64::MAX,
            max_queue_age_secs: u64::MAX,
        };
        assert_eq!(unbounded.next_attempt_at(3, 10), i64::MAX);
        assert!(!unbounded.expired(0, i64::MAX - 1));
    }

    #[test]
    fn max_below_initial_keeps_initial() {
        let policy = RetryPolicy {
            initial_backoff_secs: 100,
            max_backoff_secs: 10,
            max_queue_age_secs: 1000,
        };
        assert_eq!(policy.backoff_secs(1), 100);
        assert_eq!(policy.backoff_secs(5), 100);
    }

    #[test]
    fn expiry_is_measured_from_queue_time() {
        let policy = RetryPolicy::default();
        let queued = 1_700_000_000;
        assert!(!policy.expired(queued, queued));
        assert!(!policy.expired(queued, queued + 172_799));
        assert!(policy.expired(queued, queued + 172_800));
        // A clock that went backwards never expires a mail.
        assert!(!policy.expired(queued, queued - 50));
    }

    #[test]
    fn relay_section_defaults() {
        let cfg: RelayConfig = toml::from_str(r#"host = "relay.example.org""#).expect("parses");
        assert_eq!(cfg, RelayConfig::new("relay.example.org", 25));
        assert_eq!(cfg.tls, RelayTls::Starttls);
        assert_eq!(cfg.timeout(), Duration::from_secs(30));
        assert_eq!(cfg.max_parallel, 4);
        assert_eq!(cfg.retry, RetryPolicy::default());
        assert_eq!(cfg.step_timeouts().data_done, Duration::from_secs(600));
        assert_eq!(cfg.step_timeouts().greeting, Duration::from_secs(30));
    }

    #[test]
    fn relay_section_full() {
        let cfg: RelayConfig = toml::from_str(
            r#"
            host = "10.0.0.5"
            port = 465
            tls = "tls"
            username = "alertgate"
            password = "s3cret"
            helo_name = "gw1.example.org"
            timeout_secs = 10
            accept_invalid_certs = true
            pool_max_idle = 2
            pool_idle_timeout_secs = 5
            max_parallel = 8
            max_message_size = 10240000
            [timeouts]
            connect_secs = 5
            data_done_secs = 900
            [retry]
            initial_backoff_secs = 1
            max_backoff_secs = 4
            max_queue_age_secs = 60
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.tls, RelayTls::Tls);
        assert_eq!(cfg.port, 465);
        assert_eq!(cfg.password.as_deref(), Some("s3cret"));
        assert_eq!(cfg.retry.max_backoff_secs, 4);
        assert_eq!(cfg.max_message_size, Some(10_240_000));
        let steps = cfg.step_timeouts();
        assert_eq!(steps.connect, Duration::from_secs(5));
        assert_eq!(steps.command, Duration::from_secs(10), "from timeout_secs");
        assert_eq!(steps.data_done, Duration::from_secs(900));
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn relay_section_rejects_unknown_and_bad_values() {
        let unknown = toml::from_str::<RelayConfig>("host = \"h\"\nhots = \"x\"");
        assert!(unknown.is_err_and(|e| e.to_string().contains("hots")));
        let bad_tls = toml::from_str::<RelayConfig>("host = \"h\"\ntls = \"ssl\"");
        assert!(bad_tls.is_err_and(|e| e.to_string().contains("ssl")));
        let bad_kind = toml::from_str::<RelayConfig>("kind = \"mbox\"");
        assert!(bad_kind.is_err_and(|e| e.to_string().contains("mbox")));
        let retry_typo =
            toml::from_str::<RelayConfig>("host = \"h\"\n[retry]\ninitial_backoff = 1");
        assert!(retry_typo.is_err());
    }
}
