//! Follow-ups that leave fields to their problem (a Zabbix "problem update" names no
//! host and no severity): an alert that cites the mail of an open incident by
//! In-Reply-To/References takes host, service and state from that incident.

use super::engine::correlate_uncached;
use super::lookup::Work;
use super::{alert_key, CorrelationPolicy, CorrelationState, Decision, Incident, IncidentLookup};
use crate::alert::{Alert, InheritedField};

/// Where the Message-IDs of alert mails point: which incident each mail was about.
/// The store keeps it; tests use a map.
pub trait ReplyIndex {
    type Error;
    /// The tag of the incident the first known id of `message_ids` belongs to.
    fn incident_for(&self, message_ids: &[String]) -> Result<Option<String>, Self::Error>;
    /// Record that these ids belong to the incident `tag` (ids already known keep theirs).
    fn remember(&self, message_ids: &[String], tag: &str) -> Result<(), Self::Error>;
}

/// The Message-IDs of one alert mail: its own and the ones it cites.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailIds {
    pub own: Option<String>,
    pub cited: Vec<String>,
}

impl MailIds {
    fn all(&self) -> Vec<String> {
        self.own.iter().chain(&self.cited).cloned().collect()
    }
}

/// `alert` with the fields it leaves to `incident` filled from it. An incident of
/// another source is no parent: the alert is returned as is.
pub fn inherit(alert: &Alert, incident: &Incident) -> Alert {
    let mut filled = alert.clone();
    if alert.inherits.is_empty() || incident.key.source != alert.source.trim() {
        return filled;
    }
    for field in &alert.inherits {
        match field {
            InheritedField::Host => filled.host = incident.last_alert.host.clone(),
            InheritedField::Service => {
                filled.service = incident.last_alert.service.clone();
                filled.kind = incident.kind;
            }
            InheritedField::State => filled.state = incident.state,
        }
    }
    filled.inherits.clear();
    filled
}

/// Correlate one alert of a mail: inherit from the open incident the mail cites, then
/// remember which incident this mail's ids belong to, for the replies still to come.
/// `store` is both the reply index and the lookup of the open incidents not in memory
/// (see [`super::correlate_with`]); the cache is trimmed once the step is done.
pub fn correlate_threaded<S, E>(
    store: &mut S,
    state: &mut CorrelationState,
    ids: &MailIds,
    alert: &Alert,
    now: i64,
    policy: &CorrelationPolicy,
) -> Result<Decision, E>
where
    S: ReplyIndex<Error = E> + IncidentLookup<Error = E>,
{
    let parent = if alert.inherits.is_empty() || ids.cited.is_empty() {
        None
    } else {
        match store.incident_for(&ids.cited)? {
            Some(tag) => cached_by_tag(state, store, &tag)?,
            None => None,
        }
    };
    let alert = match parent {
        Some(incident) => inherit(alert, &incident),
        None => alert.clone(),
    };
    let decision = correlate_uncached(state, store, &alert, now, policy)?;
    // The step read the key's incident if it has one; nothing was evicted yet.
    let tag = state
        .incident(&alert_key(&alert, policy))
        .map(|i| i.tag.clone());
    if let Some(tag) = tag {
        let all = ids.all();
        if !all.is_empty() {
            store.remember(&all, &tag)?;
        }
    }
    state.trim(policy.incident_cache);
    Ok(decision)
}

/// The open incident tagged `tag`, read into the cache on a miss.
fn cached_by_tag<L: IncidentLookup>(
    state: &mut CorrelationState,
    lookup: &mut L,
    tag: &str,
) -> Result<Option<Incident>, L::Error> {
    let mut work = Work::new(state, lookup);
    let key = work.key_of_tag(tag);
    work.finish()?;
    Ok(key.and_then(|k| state.incident(&k)).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, NotificationType, State};
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MapIndex(RefCell<HashMap<String, String>>);

    /// Every open incident is in memory: nothing to look up.
    impl IncidentLookup for MapIndex {
        type Error = std::convert::Infallible;
        fn open_by_key(
            &mut self,
            _: &crate::alert::AlertKey,
        ) -> Result<Option<Incident>, Self::Error> {
            Ok(None)
        }
        fn open_by_tag(&mut self, _: &str) -> Result<Option<Incident>, Self::Error> {
            Ok(None)
        }
        fn tag_in_use(&mut self, _: &str) -> Result<bool, Self::Error> {
            Ok(false)
        }
        fn pending_digest_members(&mut self) -> Result<Vec<Incident>, Self::Error> {
            Ok(Vec::new())
        }
    }

    impl ReplyIndex for MapIndex {
        type Error = std::convert::Infallible;
        fn incident_for(&self, ids: &[String]) -> Result<Option<String>, Self::Error> {
            Ok(ids.iter().find_map(|id| self.0.borrow().get(id).cloned()))
        }
        fn remember(&self, ids: &[String], tag: &str) -> Result<(), Self::Error> {
            for id in ids {
                self.0
                    .borrow_mut()
                    .entry(id.clone())
                    .or_insert_with(|| tag.to_string());
            }
            Ok(())
        }
    }

    fn zabbix(host: &str, state: State, ntype: NotificationType) -> Alert {
        Alert {
            source: "zabbix".into(),
            kind: AlertKind::Service,
            host: host.into(),
            host_alias: None,
            service: "High CPU".into(),
            state,
            notification_type: ntype,
            output: "High CPU".into(),
            long_output: None,
            author: None,
            comment: None,
            address: None,
            event_time: None,
            vendor_id: None,
            url: None,
            rule: "zabbix".into(),
            needs_sanitizing: false,
            inherits: Vec::new(),
        }
    }

    fn ids(own: Option<&str>, cited: &[&str]) -> MailIds {
        MailIds {
            own: own.map(str::to_string),
            cited: cited.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn update_takes_host_and_state_of_the_problem_it_cites() {
        let mut index = MapIndex::default();
        let policy = CorrelationPolicy::default();
        let mut state = CorrelationState::default();
        let problem = zabbix("web-01", State::Critical, NotificationType::Problem);
        correlate_threaded(
            &mut index,
            &mut state,
            &ids(None, &["ev1@zabbix"]),
            &problem,
            0,
            &policy,
        )
        .unwrap();
        let mut update = zabbix("", State::Unknown, NotificationType::Acknowledgement);
        update.inherits = vec![InheritedField::Host, InheritedField::State];
        correlate_threaded(
            &mut index,
            &mut state,
            &ids(None, &["ev1@zabbix"]),
            &update,
            60,
            &policy,
        )
        .unwrap();
        assert_eq!(state.open_count(), 1, "one incident, not two");
        let incident = state.open_incidents().next().unwrap();
        assert_eq!(incident.last_alert.host, "web-01");
        assert_eq!(incident.state, State::Critical);
        assert_eq!(
            incident.last_alert.notification_type,
            NotificationType::Acknowledgement
        );
    }

    #[test]
    fn nothing_is_inherited_from_another_source_or_without_a_cited_incident() {
        let policy = CorrelationPolicy::default();
        let mut state = CorrelationState::default();
        let mut index = MapIndex::default();
        let other = Alert {
            source: "nagios".into(),
            ..zabbix("web-01", State::Critical, NotificationType::Problem)
        };
        correlate_threaded(
            &mut index,
            &mut state,
            &ids(Some("n1@x"), &[]),
            &other,
            0,
            &policy,
        )
        .unwrap();
        let incident = state.open_incidents().next().unwrap().clone();
        let mut update = zabbix("", State::Unknown, NotificationType::Acknowledgement);
        update.inherits = vec![InheritedField::Host];
        assert_eq!(inherit(&update, &incident).host, "");
        let unknown = correlate_threaded(
            &mut index,
            &mut state,
            &ids(None, &["nowhere@x"]),
            &update,
            5,
            &policy,
        )
        .unwrap();
        assert_eq!(state.open_count(), 1);
        assert!(unknown.changed.is_empty(), "{unknown:?}");
    }
}
