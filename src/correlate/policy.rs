//! The `[correlation]` section of alertgate.toml: how repeats, notices and storms
//! are treated, and which host aliases name the same machine.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Tunables of the correlation engine. Every field has a default, so an empty
/// `[correlation]` section (or none) is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrelationPolicy {
    /// Seconds between reminder mails for a problem that keeps repeating in the
    /// same state. `None` (default): repeats are only counted.
    pub repeat_interval: Option<u64>,
    /// Count acknowledgements instead of mailing them.
    pub suppress_acknowledgement: bool,
    /// Count downtime start/end/cancel notifications instead of mailing them.
    pub suppress_downtime: bool,
    /// Count flapping start/stop/disabled notifications instead of mailing them.
    pub suppress_flapping: bool,
    /// New incidents announced one by one in any 60 s (a sliding window); the excess
    /// goes into a storm digest, an incident with one ticket for all of them.
    pub max_new_incidents_per_minute: u32,
    /// A storm ends once no new incident joined its digest for this long; a later
    /// burst starts a new digest. The incidents of a digest stay on its ticket until
    /// they recover (they are never split into tickets of their own).
    pub storm_split_after_secs: u64,
    /// alias → canonical host, compared case-insensitively (e.g. Centreon's
    /// `$HOSTALIAS$` in service mails → `$HOSTNAME$` of host mails).
    pub host_aliases: HashMap<String, String>,
    /// When people solved the ticket but the problem gets worse, mail it (which
    /// reopens the ticket in GLPI).
    pub reopen_on_worse: bool,
    /// Open incidents kept in memory (least recently used evicted first); the others
    /// are read from the store when an alert for them arrives.
    pub incident_cache: usize,
}

impl Default for CorrelationPolicy {
    fn default() -> Self {
        CorrelationPolicy {
            repeat_interval: None,
            suppress_acknowledgement: false,
            suppress_downtime: false,
            suppress_flapping: false,
            max_new_incidents_per_minute: 60,
            storm_split_after_secs: 1800,
            host_aliases: HashMap::new(),
            reopen_on_worse: true,
            incident_cache: DEFAULT_INCIDENT_CACHE,
        }
    }
}

/// Open incidents cached by default: about 10 MB of RSS (BENCHMARKS.md, section 7).
pub const DEFAULT_INCIDENT_CACHE: usize = 1024;
/// More than this is no cache any more: memory would grow with history again.
pub const MAX_INCIDENT_CACHE: usize = 1_000_000;

/// A policy that parses but cannot be meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "correlation.repeat_interval must be at least 1 second (omit it to disable reminders)"
    )]
    ZeroRepeatInterval,
    #[error("correlation.incident_cache must be between 1 and {MAX_INCIDENT_CACHE} (open incidents kept in memory), not {0}")]
    IncidentCache(usize),
    #[error("correlation.host_aliases has an empty alias or canonical host name")]
    EmptyAlias,
    #[error("correlation.host_aliases: alias `{alias}` is listed twice (case-insensitively) with different hosts")]
    ConflictingAlias { alias: String },
    #[error("correlation.host_aliases: `{host}` is both a canonical host and an alias; aliases are resolved once, so point `{alias}` at the final name")]
    ChainedAlias { alias: String, host: String },
}

impl CorrelationPolicy {
    /// Checks what serde cannot: the config loader should call this and report the error.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.repeat_interval == Some(0) {
            return Err(PolicyError::ZeroRepeatInterval);
        }
        if !(1..=MAX_INCIDENT_CACHE).contains(&self.incident_cache) {
            return Err(PolicyError::IncidentCache(self.incident_cache));
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        for (alias, host) in &self.host_aliases {
            let (alias_norm, host_norm) = (normalise_host(alias), normalise_host(host));
            if alias_norm.is_empty() || host_norm.is_empty() {
                return Err(PolicyError::EmptyAlias);
            }
            if let Some(previous) = seen.insert(alias_norm, host_norm.clone()) {
                if previous != host_norm {
                    return Err(PolicyError::ConflictingAlias {
                        alias: alias.clone(),
                    });
                }
            }
        }
        for (alias, host) in &self.host_aliases {
            let host_norm = normalise_host(host);
            // An alias pointing to itself is harmless; a chain is not resolved.
            if seen.contains_key(&host_norm) && normalise_host(alias) != host_norm {
                return Err(PolicyError::ChainedAlias {
                    alias: alias.clone(),
                    host: host.clone(),
                });
            }
        }
        Ok(())
    }

    /// The canonical, lower-cased name of `host` after the alias map.
    pub fn canonical_host(&self, host: &str) -> String {
        let host = normalise_host(host);
        self.host_aliases
            .iter()
            .find(|(alias, _)| normalise_host(alias) == host)
            .map(|(_, canonical)| normalise_host(canonical))
            .unwrap_or(host)
    }
}

/// Host names compare trimmed and case-insensitively.
fn normalise_host(host: &str) -> String {
    host.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_toml() {
        let policy: CorrelationPolicy = toml::from_str("").expect("empty section is valid");
        assert_eq!(policy, CorrelationPolicy::default());
        assert_eq!(policy.max_new_incidents_per_minute, 60);
        assert!(policy.reopen_on_worse);
        assert_eq!(policy.repeat_interval, None);
    }

    #[test]
    fn parses_full_section_and_rejects_unknown_fields() {
        let text = r#"
            repeat_interval = 3600
            suppress_acknowledgement = true
            max_new_incidents_per_minute = 10
            reopen_on_worse = false
            [host_aliases]
            "Web Server 1" = "web01"
        "#;
        let policy: CorrelationPolicy = toml::from_str(text).expect("valid section");
        assert_eq!(policy.repeat_interval, Some(3600));
        assert!(policy.suppress_acknowledgement);
        assert!(!policy.suppress_downtime);
        assert_eq!(policy.max_new_incidents_per_minute, 10);
        assert!(!policy.reopen_on_worse);
        assert_eq!(policy.canonical_host(" web server 1 "), "web01");
        assert!(policy.validate().is_ok());

        let err = toml::from_str::<CorrelationPolicy>("repeat_intervall = 5").unwrap_err();
        assert!(err.to_string().contains("repeat_intervall"), "{err}");
    }

    #[test]
    fn validate_catches_bad_values() {
        let mut policy = CorrelationPolicy {
            repeat_interval: Some(0),
            ..CorrelationPolicy::default()
        };
        assert_eq!(policy.validate(), Err(PolicyError::ZeroRepeatInterval));
        policy.repeat_interval = None;
        policy.host_aliases.insert(" ".into(), "web01".into());
        assert_eq!(policy.validate(), Err(PolicyError::EmptyAlias));
        policy.host_aliases.clear();
        policy.host_aliases.insert("WEB".into(), "web01".into());
        policy.host_aliases.insert("web".into(), "web02".into());
        assert!(matches!(
            policy.validate(),
            Err(PolicyError::ConflictingAlias { .. })
        ));
        policy.host_aliases.clear();
        policy.host_aliases.insert("a".into(), "b".into());
        policy.host_aliases.insert("b".into(), "c".into());
        assert!(matches!(
            policy.validate(),
            Err(PolicyError::ChainedAlias { .. })
        ));
    }
}
