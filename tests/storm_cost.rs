//! What a storm costs the store. Past the storm threshold every new incident joins the
//! digest, and the news of its members is held for the digest's one ticket; a step of
//! that storm must touch about as many rows as the same step without the storm guard,
//! not a number growing with the storm (each alert used to re-read every held mail of
//! the digest). Two pipelines on one store (active-active) share one digest.
//! `ALERTGATE_TEST_STORE=postgres` runs it on the tests' private PostgreSQL.

mod support;

use alertgate::config::LoadedConfig;
use alertgate::pipeline::Pipeline;
use alertgate::rules::RuleSet;
use alertgate::store::{self, spool, Db, Durability, Location};
use std::path::Path;
use support::alerts::centreon_service;

const T0: i64 = 1_764_000_000;
/// Incidents of the storm: far past the threshold, and several pipeline batches.
const STORM: usize = 300;
const THRESHOLD: u32 = 5;
/// One test at a time: the row counter is the process's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Store {
    location: Location,
    _dir: tempfile::TempDir,
}

fn new_store() -> Store {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = match std::env::var("ALERTGATE_TEST_STORE").as_deref() {
        Ok("postgres") => Location::Postgres(support::postgres::shared().create_database()),
        _ => Location::Sqlite(dir.path().join("storm.db")),
    };
    Store {
        location,
        _dir: dir,
    }
}

fn config_text(location: &Location, threshold: u32) -> String {
    let store = match location {
        Location::Sqlite(path) => format!("path = {:?}", path.display().to_string()),
        Location::Postgres(url) => format!("url = {url:?}"),
    };
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"alertgate.test\"\n\
         accepted_recipients = [\"glpi@example.test\"]\nfeedback_addresses = [\"alertgate@example.test\"]\n\
         [store]\n{store}\n[rules]\ndirs = [{rules:?}]\n\
         [compose]\nfrom = \"alertgate@example.test\"\nto = \"glpi@example.test\"\nhostname = \"alertgate.test\"\n\
         [relay]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n\
         [correlation]\nmax_new_incidents_per_minute = {threshold}\n",
        rules = rules.display().to_string(),
    )
}

fn pipeline(location: &Location, threshold: u32) -> Pipeline {
    let text = config_text(location, threshold);
    let loaded = LoadedConfig::from_str(Path::new("storm.toml"), &text).expect("config");
    let rules = RuleSet::load(&loaded.config.rules.dirs).expect("rules");
    let settings = alertgate::app::pipeline_settings(&loaded, rules, false);
    Pipeline::open(location, settings).expect("pipeline")
}

fn spool_mail(db: &mut Db, raw: &[u8], at: i64) {
    let envelope = spool::Envelope {
        peer: "127.0.0.1".into(),
        helo: "monitor.test".into(),
        mail_from: "centreon@example.test".into(),
        rcpt_to: vec!["glpi@example.test".into()],
        tls: false,
        auth_user: None,
        received_at: at,
    };
    let message_id = alertgate::smtp::header::message_id(raw);
    spool::insert(db, &envelope, raw, message_id.as_deref()).expect("spool");
}

/// One problem per host `srv-0..STORM` in `state`.
fn wave(state: &str) -> Vec<Vec<u8>> {
    (0..STORM)
        .map(|i| {
            let host = format!("srv-{i:03}");
            centreon_service("PROBLEM", &host, "http", state, &format!("http {state}"))
        })
        .collect()
}

/// Spools `mails` at `now` and runs the pipelines' batches in turn: with one pipeline,
/// all at once (full batches); with two (an active-active pair taking mails as they
/// come), one mail per batch, alternately. Returns the rows the store touched per alert.
fn drain(db: &mut Db, pipelines: &mut [Pipeline], mails: &[Vec<u8>], now: i64) -> f64 {
    let before = store::rows_touched();
    let started = std::time::Instant::now();
    let mut processed = 0;
    if pipelines.len() == 1 {
        for raw in mails {
            spool_mail(db, raw, now);
        }
        while let n @ 1.. = pipelines[0].run_batch(now).expect("batch") {
            processed += n;
        }
    } else {
        for (n, raw) in mails.iter().enumerate() {
            spool_mail(db, raw, now);
            let turn = n % pipelines.len();
            processed += pipelines[turn].run_batch(now).expect("batch");
        }
    }
    assert_eq!(
        processed,
        mails.len(),
        "every alert of the wave processed once"
    );
    // For the reader (BENCHMARKS.md has the measured numbers), never asserted.
    eprintln!(
        "{} pipeline(s): {:.2} ms per alert",
        pipelines.len(),
        started.elapsed().as_secs_f64() * 1000.0 / processed as f64
    );
    (store::rows_touched() - before) as f64 / processed as f64
}

/// Rows per alert of the three phases: the incidents opening (the storm forming), and
/// then, once the digest went out, every incident's update (news for the digest's ticket
/// in a storm), twice (the held news grows).
/// Also returns how many storm digests the store holds.
fn phases(gateways: usize, threshold: u32) -> ([f64; 3], usize) {
    let store = new_store();
    let mut pipelines: Vec<Pipeline> = (0..gateways)
        .map(|_| pipeline(&store.location, threshold))
        .collect();
    let mut db = Db::open(&store.location, Durability::Derived).expect("db");
    let opening = drain(&mut db, &mut pipelines, &wave("WARNING"), T0);
    // The storm window is over: the digest goes out (a normal run has nothing to send).
    pipelines[0].tick(T0 + 61).expect("tick");
    let first_news = drain(&mut db, &mut pipelines, &wave("CRITICAL"), T0 + 70);
    let more_news = drain(&mut db, &mut pipelines, &wave("WARNING"), T0 + 80);
    let digests = store::incidents::load(&mut db, true)
        .expect("incidents")
        .iter()
        .filter(|i| i.is_digest)
        .count();
    ([opening, first_news, more_news], digests)
}

/// A step reads and writes a few dozen rows (its spool row, incident, outbound mail, the
/// digest, the generation); one growing with the storm's 300 incidents would pass 50.
const ROWS_PER_ALERT: f64 = 50.0;

fn assert_bounded(normal: &[f64; 3], storm: &[f64; 3]) {
    for (phase, (n, s)) in normal.iter().zip(storm.iter()).enumerate() {
        assert!(
            *s <= ROWS_PER_ALERT && *s <= 2.0 * n + 20.0,
            "phase {phase}: a storm alert touched {s:.1} rows, a normal one {n:.1}"
        );
    }
}

#[test]
fn a_storm_step_touches_about_the_rows_of_a_normal_step() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (normal, _) = phases(1, 100_000);
    let (storm, digests) = phases(1, THRESHOLD);
    assert_eq!(digests, 1, "one storm, one digest");
    eprintln!("rows per alert, normal {normal:?}, storm {storm:?}");
    assert_bounded(&normal, &storm);
}

#[test]
fn two_gateways_in_a_storm_touch_about_the_rows_of_one() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (normal, _) = phases(2, 100_000);
    let (storm, digests) = phases(2, THRESHOLD);
    assert_eq!(digests, 1, "one digest for the storm both gateways saw");
    eprintln!("two gateways, rows per alert, normal {normal:?}, storm {storm:?}");
    assert_bounded(&normal, &storm);
}
