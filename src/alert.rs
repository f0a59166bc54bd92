//! The normalized alert: what every rule produces from a monitoring mail and what
//! correlation consumes. Pure data with serde, plus the word lists the rules map onto.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Whether the alert is about a host or one of its services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Host,
    Service,
}

/// Normalized state, across all monitoring tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
    Up,
    Down,
    Unreachable,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Ok,
        State::Warning,
        State::Critical,
        State::Unknown,
        State::Up,
        State::Down,
        State::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "warning",
            State::Critical => "critical",
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
            State::Unreachable => "unreachable",
        }
    }

    /// True for the states that end an incident.
    pub fn is_good(self) -> bool {
        matches!(self, State::Ok | State::Up)
    }

    /// Ordering used for "worst state": higher is worse.
    pub fn severity(self) -> u8 {
        match self {
            State::Ok | State::Up => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Unreachable => 3,
            State::Critical | State::Down => 4,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == lower)
            .ok_or_else(|| format!("unknown state `{s}` (expected one of ok, warning, critical, unknown, up, down, unreachable)"))
    }
}

/// What the notification says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationType {
    Problem,
    Recovery,
    Acknowledgement,
    FlappingStart,
    FlappingStop,
    FlappingDisabled,
    DowntimeStart,
    DowntimeEnd,
    DowntimeCancelled,
    Custom,
}

impl NotificationType {
    pub const ALL: [NotificationType; 10] = [
        NotificationType::Problem,
        NotificationType::Recovery,
        NotificationType::Acknowledgement,
        NotificationType::FlappingStart,
        NotificationType::FlappingStop,
        NotificationType::FlappingDisabled,
        NotificationType::DowntimeStart,
        NotificationType::DowntimeEnd,
        NotificationType::DowntimeCancelled,
        NotificationType::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationType::Problem => "problem",
            NotificationType::Recovery => "recovery",
            NotificationType::Acknowledgement => "acknowledgement",
            NotificationType::FlappingStart => "flapping_start",
            NotificationType::FlappingStop => "flapping_stop",
            NotificationType::FlappingDisabled => "flapping_disabled",
            NotificationType::DowntimeStart => "downtime_start",
            NotificationType::DowntimeEnd => "downtime_end",
            NotificationType::DowntimeCancelled => "downtime_cancelled",
            NotificationType::Custom => "custom",
        }
    }
}

impl fmt::Display for NotificationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NotificationType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        NotificationType::ALL
            .into_iter()
            .find(|t| t.as_str() == lower)
            .ok_or_else(|| format!("unknown notification type `{s}`"))
    }
}

/// One normalized alert, as extracted from one monitoring mail (a grouped
/// Alertmanager mail yields several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub source: String,
    pub kind: AlertKind,
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_alias: Option<String>,
    /// Empty for host alerts.
    #[serde(default)]
    pub service: String,
    pub state: State,
    pub notification_type: NotificationType,
    #[serde(default)]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// vROps Alert ID, Zabbix event id, Alertmanager fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    /// Link back to the monitoring tool, when the rule extracted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Name of the rule that produced this alert.
    pub rule: String,
    /// Set when some text field holds CR/LF or a GLPI-looking `[X #123]`
    /// marker: data kept as is, for the compose stage to neutralise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub needs_sanitizing: bool,
    /// Fields this mail does not carry (a follow-up such as a Zabbix problem update):
    /// correlation takes them from the incident whose mail this one replies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inherits: Vec<InheritedField>,
}

/// A field a follow-up mail may leave to the incident it replies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InheritedField {
    Host,
    Service,
    State,
}

impl InheritedField {
    pub const ALL: [InheritedField; 3] = [
        InheritedField::Host,
        InheritedField::Service,
        InheritedField::State,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InheritedField::Host => "host",
            InheritedField::Service => "service",
            InheritedField::State => "state",
        }
    }
}

/// The correlation key of an alert, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    pub source: String,
    pub host: String,
    pub service: String,
}

impl fmt::Display for AlertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.service.is_empty() {
            write!(f, "{}:{}", self.source, self.host)
        } else {
            write!(f, "{}:{}/{}", self.source, self.host, self.service)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_parses_case_insensitively() {
        assert_eq!("CRITICAL".parse::<State>(), Ok(State::Critical));
        assert!("bogus".parse::<State>().is_err());
    }

    #[test]
    fn notification_type_round_trips() {
        for t in NotificationType::ALL {
            assert_eq!(t.as_str().parse::<NotificationType>(), Ok(t));
        }
    }
}
