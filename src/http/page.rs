//! The status page: open incidents, the last events, the outbound queue with its dead
//! letters and held mails, rendered on the server (maud) and readable without JavaScript.

use super::PageQuery;
use crate::correlate::Incident;
use crate::store::outbound::{self, OutboundRow, OutboundState};
use crate::store::status::{self, RecentEvent};
use crate::store::{incidents, spool, Db, StoreError};
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Everything the page shows, read through the store's functions.
pub struct PageData {
    /// The newest open incidents, at most [`PAGE_INCIDENTS`].
    pub incidents: Vec<Incident>,
    /// All open incidents.
    pub open_total: u64,
    pub events: Vec<RecentEvent>,
    pub dead: Vec<OutboundRow>,
    pub held: Vec<OutboundRow>,
    pub queued: Vec<OutboundRow>,
    pub spool_counts: Vec<(String, i64)>,
    pub outbound_counts: Vec<(String, i64)>,
    pub held_unmatched: i64,
}

/// Open incidents the page lists (the newest): the page stays small with 100,000 open.
pub const PAGE_INCIDENTS: usize = 1000;

impl PageData {
    pub fn read(db: &mut Db) -> Result<PageData, StoreError> {
        let spool_counts = spool::counts(db)?;
        let held_unmatched = spool_counts
            .iter()
            .find(|(state, _)| state == spool::SpoolState::Held.as_str())
            .map_or(0, |(_, n)| *n);
        Ok(PageData {
            incidents: incidents::open_newest(db, PAGE_INCIDENTS)?,
            open_total: incidents::open_count(db)?,
            events: status::recent_events(db, 100)?,
            dead: outbound::list(db, Some(OutboundState::Dead), 100)?,
            held: outbound::list(db, Some(OutboundState::Held), 100)?,
            queued: outbound::list(db, Some(OutboundState::Queued), 100)?,
            spool_counts,
            outbound_counts: outbound::counts(db)?,
            held_unmatched,
        })
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}
th{background:#eee}.critical,.down{background:#f8d7da}.warning,.unreachable{background:#fff3cd}
.unknown{background:#e2e3e5}.ok,.up{background:#d4edda}form.inline{display:inline}
.counts span{margin-right:1em}";

fn time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn matches(incident: &Incident, query: &PageQuery) -> bool {
    let a = &incident.last_alert;
    let needle = query.q.trim().to_lowercase();
    (query.source.is_empty() || incident.key.source == query.source)
        && (query.state.is_empty() || incident.state.as_str() == query.state)
        && (needle.is_empty()
            || [
                &incident.key.host,
                &incident.key.service,
                &a.output,
                &incident.tag,
            ]
            .iter()
            .any(|f| f.to_lowercase().contains(&needle)))
}

fn counts(label: &str, counts: &[(String, i64)]) -> Markup {
    html! {
        span { strong { (label) ": " } @if counts.is_empty() { "empty" }
            @for (state, n) in counts { (state) "=" (n) " " } }
    }
}

fn action(path: &str, id: i64, label: &str, enabled: bool) -> Markup {
    html! {
        @if enabled {
            form.inline method="post" action=(format!("/actions/{path}/{id}")) {
                input type="password" name="token" placeholder="token" size="8" required;
                " " button type="submit" { (label) }
            }
        }
    }
}

/// The whole page.
pub fn render(data: &PageData, query: &PageQuery, glpi_url: Option<&str>, actions: bool) -> String {
    let mut sources: Vec<&str> = data
        .incidents
        .iter()
        .map(|i| i.key.source.as_str())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    let shown: Vec<&Incident> = data
        .incidents
        .iter()
        .filter(|i| matches(i, query))
        .collect();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="10";
                title { "alertgate status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "alertgate" }
                p.counts {
                    (counts("spool", &data.spool_counts))
                    (counts("outbound", &data.outbound_counts))
                    span { strong { "held unmatched mails: " } (data.held_unmatched) }
                }
                h2 { "Open incidents (" (shown.len()) " of " (data.open_total) ")" }
                form method="get" action="/" {
                    label { "Source " select name="source" {
                        option value="" { "all" }
                        @for s in &sources { option value=(s) selected[query.source == *s] { (s) } }
                    } }
                    " "
                    label { "State " select name="state" {
                        option value="" { "all" }
                        @for st in crate::alert::State::ALL {
                            option value=(st.as_str()) selected[query.state == st.as_str()] { (st.as_str()) }
                        }
                    } }
                    " "
                    label { "Search " input type="search" name="q" value=(query.q); }
                    " " button type="submit" { "Filter" }
                }
                table id="incidents" {
                    tr { th { "incident" } th { "source" } th { "host" } th { "service" } th { "state" }
                         th { "since" } th { "alerts" } th { "GLPI ticket" } th { "last output" } }
                    @for i in &shown {
                        tr class=(i.state.as_str()) {
                            td { (i.tag) }
                            td { (i.key.source) }
                            td { (i.key.host) }
                            td { (i.key.service) }
                            td { (i.state.as_str()) }
                            td { (time(i.first_seen)) }
                            td { (i.notifications) }
                            td { @match (i.ticket_id, glpi_url) {
                                (Some(id), Some(url)) => a.ticket href=(format!("{url}/front/ticket.form.php?id={id}")) { "#" (id) },
                                (Some(id), None) => { "#" (id) },
                                (None, _) => { "not known yet" },
                            } }
                            td { (i.last_alert.output) }
                        }
                    }
                }
                h2 { "Dead letters (" (data.dead.len()) ")" }
                table id="dead" {
                    tr { th { "id" } th { "incident" } th { "subject" } th { "attempts" } th { "reason" } th {} }
                    @for m in &data.dead {
                        tr { td { "o" (m.id) } td { (m.order_key) } td { (m.subject) } td { (m.attempts) }
                             td.reason { (m.last_error.as_deref().unwrap_or("-")) }
                             td { (action("retry", m.id, "retry", actions)) } }
                    }
                }
                h2 { "Held until the ticket id is known (" (data.held.len()) ")" }
                table id="held" {
                    tr { th { "id" } th { "incident" } th { "subject" } th { "released unthreaded at" } th {} }
                    @for m in &data.held {
                        tr { td { "o" (m.id) } td { (m.order_key) } td { (m.subject) } td { (time(m.next_attempt_at)) }
                             td { (action("release", m.id, "release now", actions)) } }
                    }
                }
                h2 { "Outbound queue (" (data.queued.len()) ")" }
                table id="queue" {
                    tr { th { "id" } th { "incident" } th { "subject" } th { "attempts" } th { "next attempt" } th { "last error" } }
                    @for m in &data.queued {
                        tr { td { "o" (m.id) } td { (m.order_key) } td { (m.subject) } td { (m.attempts) }
                             td { (time(m.next_attempt_at)) } td { (m.last_error.as_deref().unwrap_or("-")) } }
                    }
                }
                h2 { "Last " (data.events.len()) " events" }
                table id="events" {
                    tr { th { "id" } th { "queued" } th { "incident" } th { "event" } th { "state" } th { "subject" } }
                    @for e in &data.events {
                        tr { td { "o" (e.id) } td { (time(e.queued_at)) } td { (e.incident) }
                             td { (e.event.as_deref().map(event_name).unwrap_or_else(|| "-".into())) } td { (e.state) } td { (e.subject) } }
                    }
                }
                p { small { "Refreshes every 10 s. " a href="/metrics" { "metrics" } " · " a href="/ready" { "readiness" } } }
            }
        }
    };
    page.into_string()
}

/// The stored event is the correlation's mail decision as JSON; show its kind (and why).
fn event_name(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let kind = &value["kind"];
    match (kind["kind"].as_str(), kind["reason"].as_str()) {
        (Some(k), Some(reason)) => format!("{k} ({})", reason.replace('_', " ")),
        (Some(k), None) => k.to_string(),
        _ => "-".into(),
    }
}
