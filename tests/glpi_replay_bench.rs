//! Measurement for BENCHMARKS.md ("Mails per incident"), not a pass/fail test: a replay
//! of 100 incidents (400 alert mails) against the GLPI double collecting every 60 s, 10
//! mails a run, in each mode. Time is compressed 30×: the gateway runs on a manual clock
//! moved 3 s every 100 ms, the double's cron runs every 2 s of real time (60 s simulated).
//! Run: `cargo test --release --test glpi_replay_bench -- --ignored --nocapture`.

mod support;

use alertgate::clock::Clock;
use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::TestGateway;
use support::glpi::{GlpiConfig, GlpiDouble, Ticket, GLPI_COLLECTOR_BATCH, STATUS_SOLVED};

const FEEDBACK: &str = "alertgate@example.test";
/// Simulated seconds per real second.
const SPEED: i64 = 30;
const START: i64 = 1_800_000_000;

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Notifications routed back, no API, every event mailed as it comes (the old way).
    MailUnpaced,
    /// Notifications routed back, no API, `min_mail_interval_secs = 60`.
    Mail,
    /// `[glpi_api]` with `create = "mail"` and `solve_on_recovery`.
    ApiCreateMail,
    /// `[glpi_api]` with `create = "api"` and `solve_on_recovery`.
    ApiCreateApi,
}

/// (simulated second after START, host, service, kind, state)
fn scenario() -> Vec<(i64, String, String, &'static str, &'static str)> {
    let mut events = Vec::new();
    for i in 0..100i64 {
        let (host, service) = (format!("srv-{:02}", i / 4), format!("check-{}", i % 4));
        let t0 = i * 6; // a new incident every 6 s for 10 minutes
        for (dt, kind, state) in [
            (0, "PROBLEM", "WARNING"),
            (120 + i % 7 * 10, "PROBLEM", "CRITICAL"),
            (300 + i % 5 * 20, "ACKNOWLEDGEMENT", "CRITICAL"),
            (1200 + i % 11 * 30, "RECOVERY", "OK"),
        ] {
            events.push((t0 + dt, host.clone(), service.clone(), kind, state));
        }
    }
    events.sort_by_key(|e| e.0);
    events
}

fn api(glpi: &GlpiDouble, create: &str) -> String {
    let c = glpi.config();
    format!(
        "[glpi_api]\nurl = \"{}\"\nuser_token = \"{}\"\napp_token = \"{}\"\nsolve_on_recovery = true\ncreate = \"{create}\"\n",
        glpi.api_url(),
        c.user_token,
        c.app_token.clone().unwrap_or_default()
    )
}

/// Whether the ticket shows the event `kind`/`state` of its incident.
fn shows(t: &Ticket, kind: &str, state: &str) -> bool {
    let followups = || t.followups.iter().map(|f| f.content.as_str());
    match (kind, state) {
        ("PROBLEM", "WARNING") => true,
        ("PROBLEM", _) => followups().any(|c| c.contains("NOW CRITICAL")),
        ("ACKNOWLEDGEMENT", _) => followups().any(|c| c.contains("ACKNOWLEDGED")),
        _ => t.status == STATUS_SOLVED || followups().any(|c| c.contains("RECOVERED")),
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

async fn run(mode: Mode) {
    let glpi = GlpiDouble::start_with(GlpiConfig::batched(
        Duration::from_secs(60 / SPEED as u64),
        GLPI_COLLECTOR_BATCH,
    ))
    .await;
    let interval = match mode {
        Mode::MailUnpaced => 0,
        _ => 60,
    };
    let mut sections = format!(
        "[feedback]\ncollector_interval_secs = 60\ncollector_batch = 10\nmin_mail_interval_secs = {interval}\n"
    );
    match mode {
        Mode::ApiCreateMail => sections.push_str(&api(&glpi, "mail")),
        Mode::ApiCreateApi => sections.push_str(&api(&glpi, "api")),
        _ => {}
    }
    if matches!(mode, Mode::ApiCreateMail | Mode::ApiCreateApi) {
        glpi.set_notifications(false);
    }
    let clock = Clock::manual(START);
    let gw = TestGateway::with_relay_and_clock(
        glpi.smtp_port(),
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        &sections,
        clock.clone(),
    )
    .await;
    glpi.set_notify_target(gw.addr, FEEDBACK);
    {
        let clock = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                clock.advance(SPEED / 10);
            }
        });
    }
    let events = scenario();
    // (incident tag once known, event index) → simulated time it was sent / seen.
    let mut sent_at = vec![0i64; events.len()];
    let mut seen_at: Vec<Option<i64>> = vec![None; events.len()];
    let mut next = 0;
    let deadline = START + 90 * 60;
    loop {
        let now = clock.now();
        while next < events.len() && events[next].0 + START <= now {
            let (_, host, service, kind, state) = &events[next];
            gw.send(&centreon_service(
                kind,
                host,
                service,
                state,
                &format!("{service} {state}"),
            ))
            .await;
            sent_at[next] = clock.now();
            next += 1;
        }
        let tickets = glpi.tickets();
        for (i, (_, host, service, kind, state)) in events.iter().enumerate().take(next) {
            if seen_at[i].is_some() {
                continue;
            }
            let name = format!("{host} / {service}:");
            if let Some(t) = tickets.iter().find(|t| t.title.contains(&name)) {
                if shows(t, kind, state) {
                    seen_at[i] = Some(clock.now());
                }
            }
        }
        if (next == events.len() && seen_at.iter().all(Option::is_some)) || now > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut lat: Vec<i64> = sent_at
        .iter()
        .zip(&seen_at)
        .filter_map(|(s, e)| e.map(|e| e - s))
        .collect();
    lat.sort_unstable();
    let tickets = glpi.tickets();
    let api_items: usize = tickets
        .iter()
        .map(|t| {
            t.followups
                .iter()
                .filter(|f| f.source == support::glpi::Source::Api)
                .count()
                + t.solutions.len()
        })
        .sum();
    println!(
        "| {mode:?} | {} | {:.2} | {} | {} | {} | {} s | {} s | {} | {} |",
        glpi.mails_accepted(),
        glpi.mails_accepted() as f64 / 100.0,
        api_items,
        tickets.len(),
        seen_at.iter().filter(|s| s.is_none()).count(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        glpi.solutions_refused(),
        glpi.reopen_count(),
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for BENCHMARKS.md; takes a few minutes"]
async fn mails_per_incident_replay() {
    println!("| mode | mails to GLPI | mails per incident | API items | tickets | events never shown | arrival → ticket up to date, median | p99 | solutions refused | reopened |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for mode in [
        Mode::MailUnpaced,
        Mode::Mail,
        Mode::ApiCreateMail,
        Mode::ApiCreateApi,
    ] {
        // REPLAY_MODES=Mail,ApiCreateApi runs only those.
        if let Ok(only) = std::env::var("REPLAY_MODES") {
            if !only.split(',').any(|m| m == format!("{mode:?}")) {
                continue;
            }
        }
        run(mode).await;
    }
}
