//! `alertgate incidents`: the incidents as correlation keeps them, one line each in the
//! style of `amtool alert` (or one JSON object per line with `--json`).

use crate::correlate::Incident;
use serde::Serialize;

/// One incident as listed.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentLine {
    pub tag: String,
    pub source: String,
    pub host: String,
    pub service: String,
    pub state: String,
    pub open: bool,
    pub first_seen: i64,
    pub last_seen: i64,
    pub alerts: u64,
    pub ticket_id: Option<u64>,
    pub output: String,
}

impl From<&Incident> for IncidentLine {
    fn from(i: &Incident) -> IncidentLine {
        IncidentLine {
            tag: i.tag.clone(),
            source: i.key.source.clone(),
            host: i.key.host.clone(),
            service: i.key.service.clone(),
            state: i.state.as_str().to_string(),
            open: i.is_open(),
            first_seen: i.first_seen,
            last_seen: i.last_seen,
            alerts: i.notifications,
            ticket_id: i.ticket_id,
            output: i.last_alert.output.clone(),
        }
    }
}

/// The listing as text: a header, then one line per incident.
pub fn render_text(incidents: &[Incident], format_time: impl Fn(i64) -> String) -> String {
    let mut out = format!(
        "{:<16}  {:<10}  {:<20}  {:<20}  {:<11}  {:<6}  {:<19}  {:>6}  {:<8}  output\n",
        "incident", "source", "host", "service", "state", "open", "since", "alerts", "ticket"
    );
    for i in incidents {
        let l = IncidentLine::from(i);
        out.push_str(&format!(
            "{:<16}  {:<10}  {:<20}  {:<20}  {:<11}  {:<6}  {:<19}  {:>6}  {:<8}  {}\n",
            l.tag,
            l.source,
            l.host,
            if l.service.is_empty() {
                "-"
            } else {
                &l.service
            },
            l.state,
            if l.open { "open" } else { "ended" },
            format_time(l.first_seen),
            l.alerts,
            l.ticket_id.map_or("-".into(), |t| format!("#{t}")),
            l.output.lines().next().unwrap_or(""),
        ));
    }
    out
}

/// One JSON object per line, like `postqueue -j`.
pub fn render_json(incidents: &[Incident]) -> String {
    incidents
        .iter()
        .map(|i| serde_json::to_string(&IncidentLine::from(i)).unwrap_or_default() + "\n")
        .collect()
}
