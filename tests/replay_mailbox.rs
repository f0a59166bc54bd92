//! Acceptance 3 of issue 12: `alertgate replay` of a generated week of mail (2,000 mails
//! from the fixtures: episodes with repeats, a storm, unreadable mail) gives exact counts,
//! and the same counts as a live gateway fed the same mails over SMTP on an injected
//! clock set to each mail's Date.

mod support;

use alertgate::clock::Clock;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::gateway::TestGateway;
use support::mailbox::{to_mbox, week};
use support::relay::RecordingRelay;

const MAILS: usize = 2000;
const STORM: usize = 150;
const UNMATCHED: usize = 25;

fn replay(args: &[&str], source: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .arg("replay")
        .args(args)
        .arg(source)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "replay --json: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The live gateway's counts, from its store.
fn live_counts(gw: &TestGateway) -> (u64, u64, u64) {
    let tally = alertgate::store::tally::tally(&mut gw.db()).unwrap();
    (tally.incidents, tally.threads, tally.outbound_mails)
}

/// Wait until the pipeline took every spooled mail and the relay got every mail due
/// at `now`, so that nothing is decided on a later clock than in the replay.
async fn settle(db: &mut alertgate::store::Db, now: i64) {
    use alertgate::store::{outbound, spool, SpoolState};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting =
            spool::count_in(db, SpoolState::New).unwrap() + outbound::count_due(db, now).unwrap();
        if waiting == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "gateway did not settle at {now}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_generated_week_is_exact_and_equals_a_live_run() {
    let mailbox = week(MAILS, STORM, UNMATCHED);
    assert_eq!(mailbox.mails.len(), MAILS);
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("week.mbox");
    std::fs::write(&mbox, to_mbox(&mailbox.mails)).expect("write mbox");
    if let Ok(out) = std::env::var("ALERTGATE_REPLAY_MBOX_OUT") {
        std::fs::copy(&mbox, out).expect("copy mbox for the benchmark");
    }

    let relay = RecordingRelay::start().await;
    let first = mailbox.mails[0].0;
    let clock = Clock::manual(first);
    let gw = TestGateway::start_clocked(
        "",
        "",
        &format!(
            "[relay]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            relay.port()
        ),
        clock.clone(),
    )
    .await;
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let config = gw.config_path();
    let report = replay(
        &[
            "--json",
            "-c",
            config.to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
        ],
        &mbox,
    );

    // Exact: every mail read, every alert by its tool, the cron mails unmatched.
    assert_eq!(report["mails"], MAILS as u64);
    assert_eq!(report["unmatched"], UNMATCHED as u64);
    assert_eq!(report["alerts"], (MAILS - UNMATCHED) as u64);
    assert_eq!(report["one_ticket_per_mail"], MAILS as u64);
    for (source, n) in &mailbox.alerts_by_source {
        assert_eq!(
            report["alerts_by_source"][source], *n,
            "{source}: {}",
            report["alerts_by_source"]
        );
    }
    assert!(report["unmatched_mails"][0]["subject"]
        .as_str()
        .unwrap_or_default()
        .starts_with("Cron <root@backup01>"));
    assert_eq!(report["days"].as_array().map(Vec::len), Some(7));

    // The same mails through the gateway, the clock at each mail's Date.
    let mut db = gw.db();
    for (at, raw) in &mailbox.mails {
        clock.set(*at);
        gw.send(raw).await;
        settle(&mut db, *at).await;
    }
    let end = mailbox.mails[MAILS - 1].0 + alertgate::replay::SETTLE_SECS;
    clock.set(end);
    // The pipeline ticks on its next round (at most a second), then delivery catches up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    settle(&mut db, end).await;
    let (incidents, tickets, glpi_mails) = live_counts(&gw);
    assert_eq!(report["incidents"], incidents, "{report:#}");
    assert_eq!(report["tickets"], tickets, "{report:#}");
    assert_eq!(report["glpi_mails"], glpi_mails, "{report:#}");
    // And alertgate is worth it: far fewer tickets than mails, the storm digested.
    assert!(
        tickets * 3 < MAILS as u64,
        "{tickets} tickets for {MAILS} mails"
    );
    assert!(
        tickets < incidents,
        "the storm's incidents share a digest ticket"
    );
    assert_eq!(relay.received().len() as u64, glpi_mails);
    gw.shutdown().await;
}

#[test]
fn html_report_has_the_numbers_and_a_chart_per_day() {
    let mailbox = week(200, 20, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("Maildir");
    std::fs::create_dir_all(maildir.join("cur")).unwrap();
    std::fs::create_dir_all(maildir.join("new")).unwrap();
    for (i, (at, raw)) in mailbox.mails.iter().enumerate() {
        let sub = if i % 2 == 0 { "cur" } else { "new" };
        std::fs::write(maildir.join(sub).join(format!("{at}.{i:05}.host:2,S")), raw).unwrap();
    }
    let html = dir.path().join("report.html");
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let report = replay(
        &[
            "--json",
            "--rules",
            rules.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
        &maildir,
    );
    assert_eq!(report["mails"], 200);
    assert_eq!(report["unmatched"], 5);
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.contains("<svg"), "{page}");
    assert_eq!(
        page.matches("<rect").count(),
        2 * report["days"].as_array().unwrap().len()
    );
    assert!(page.contains(&format!("{} GLPI tickets", report["tickets"])));
    assert!(page.contains("Cron &lt;root@backup01&gt;"));
}
