//! The process's Prometheus metrics (prometheus-client): counters the stages bump through
//! one-line hooks, and gauges read from the store (through its functions) at each scrape.

use crate::deliver::Outcome;
use crate::store::{self, outbound, spool, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Why `/metrics` could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("metrics: cannot encode: {0}")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    smtp_accepted: Counter,
    smtp_refused: Family<CodeLabel, Counter>,
    delivery_attempts: Family<OutcomeLabel, Counter>,
    delivery_latency: Histogram,
    glpi_api_calls: Family<OutcomeLabel, Counter>,
    store_commit_latency: Histogram,
    spool_depth: Family<StateLabel, Gauge>,
    outbound_depth: Family<StateLabel, Gauge>,
    glpi_actions: Family<StateLabel, Gauge>,
    open_incidents: Gauge,
    incidents_without_ticket: Gauge,
    held_mails: Gauge,
    unthreaded_releases: Gauge,
    storm_digests: Gauge,
    /// The last delivery attempt: whether it reached the relay (or outbox), and its reply.
    last_delivery: Mutex<Option<(bool, String)>>,
    /// Whether the last GLPI API login worked.
    glpi_session: Mutex<Option<bool>>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("alertgate");
        let m = Metrics {
            smtp_accepted: Counter::default(),
            smtp_refused: Family::default(),
            delivery_attempts: Family::default(),
            // 1 ms .. ~65 s
            delivery_latency: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            glpi_api_calls: Family::default(),
            store_commit_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            spool_depth: Family::default(),
            outbound_depth: Family::default(),
            glpi_actions: Family::default(),
            open_incidents: Gauge::default(),
            incidents_without_ticket: Gauge::default(),
            held_mails: Gauge::default(),
            unthreaded_releases: Gauge::default(),
            storm_digests: Gauge::default(),
            registry: Registry::default(),
            last_delivery: Mutex::new(None),
            glpi_session: Mutex::new(None),
        };
        registry.register(
            "smtp_mails_accepted",
            "Mails accepted over SMTP (250 after the spool commit)",
            m.smtp_accepted.clone(),
        );
        registry.register(
            "smtp_refusals",
            "SMTP commands and mails refused, by reply code",
            m.smtp_refused.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts to the relay or outbox, by outcome",
            m.delivery_attempts.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time of one delivery attempt",
            m.delivery_latency.clone(),
        );
        registry.register(
            "glpi_api_calls",
            "GLPI REST API calls, by outcome",
            m.glpi_api_calls.clone(),
        );
        registry.register(
            "store_commit_latency_seconds",
            "Time of one spool group commit (fsync included)",
            m.store_commit_latency.clone(),
        );
        registry.register(
            "spool_messages",
            "Spooled messages, by state",
            m.spool_depth.clone(),
        );
        registry.register(
            "outbound_mails",
            "Outbound mails, by state",
            m.outbound_depth.clone(),
        );
        registry.register(
            "glpi_actions",
            "GLPI API actions (solve on recovery), by state",
            m.glpi_actions.clone(),
        );
        registry.register("open_incidents", "Open incidents", m.open_incidents.clone());
        registry.register(
            "incidents_without_ticket",
            "Open incidents whose first mail left and whose GLPI ticket id is not known yet",
            m.incidents_without_ticket.clone(),
        );
        registry.register(
            "held_mails",
            "Outbound mails held until their incident's ticket id is known",
            m.held_mails.clone(),
        );
        registry.register(
            "unthreaded_releases",
            "Incidents whose held mails went out unthreaded after the ticket lookup timed out",
            m.unthreaded_releases.clone(),
        );
        registry.register(
            "storm_digests",
            "Storm digest mails composed",
            m.storm_digests.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Every SMTP reply: any 4xx/5xx counts as a refusal with its code.
    pub fn smtp_reply(&self, code: u16) {
        if code >= 400 {
            self.smtp_refused(code);
        }
    }

    pub fn smtp_accepted(&self) {
        self.smtp_accepted.inc();
    }

    fn smtp_refused(&self, code: u16) {
        self.smtp_refused
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    /// One delivery attempt and how it ended.
    pub fn delivery_outcome(&self, outcome: &Outcome, took: Duration) {
        // A 5xx refusal still means the relay was reachable.
        let (outcome, reached, detail) = match outcome {
            Outcome::Sent { reply } => ("sent", true, reply),
            Outcome::Retry { error, .. } => ("deferred", false, error),
            Outcome::Dead { error } => ("dead", true, error),
        };
        *self.last_delivery.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((reached, detail.clone()));
        self.delivery_attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        self.delivery_latency.observe(took.as_secs_f64());
    }

    pub fn last_delivery(&self) -> Option<(bool, String)> {
        self.last_delivery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn glpi_session_opened(&self, ok: bool) {
        *self.glpi_session.lock().unwrap_or_else(|p| p.into_inner()) = Some(ok);
    }

    pub fn glpi_session(&self) -> Option<bool> {
        *self.glpi_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn glpi_api_call(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.glpi_api_calls
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn store_commit(&self, took: Duration) {
        self.store_commit_latency.observe(took.as_secs_f64());
    }

    /// Refreshes the store gauges and renders the text exposition format.
    pub fn render(&self, db: &mut store::Db) -> Result<String, MetricsError> {
        self.refresh(db)?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn refresh(&self, db: &mut store::Db) -> Result<(), StoreError> {
        let set_family = |family: &Family<StateLabel, Gauge>, counts: Vec<(String, i64)>| {
            family.clear();
            for (state, n) in counts {
                family.get_or_create(&StateLabel { state }).set(n);
            }
        };
        let outbound_counts = outbound::counts(db)?;
        let held = outbound_counts
            .iter()
            .find(|(s, _)| s == "held")
            .map_or(0, |(_, n)| *n);
        set_family(&self.spool_depth, spool::counts(db)?);
        set_family(&self.outbound_depth, outbound_counts);
        set_family(&self.glpi_actions, store::actions::counts(db)?);
        let open = store::incidents::open_count(db)?;
        self.open_incidents
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        let waiting = store::incidents::awaiting_ticket_count(db)?;
        self.incidents_without_ticket
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.held_mails.set(held);
        let unthreaded = store::incidents::get_kv(db, "unthreaded_after_timeout")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.unthreaded_releases.set(unthreaded);
        self.storm_digests
            .set(store::status::outbound_with_key_prefix(db, "DIGEST-")?);
        Ok(())
    }
}
