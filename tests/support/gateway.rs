//! Start a real alertgate (in-process, on loopback ports) for a test, with a config made
//! from a template plus the test's own TOML, and a temporary store.
#![allow(dead_code)]

use alertgate::config::LoadedConfig;
use alertgate::store::{outbound, spool, Db, Location};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

/// "Every row" for the store's listings.
const ALL: usize = 1_000_000;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    /// The store the gateway runs on (the SQLite file `db`, or a PostgreSQL database).
    pub location: Location,
    stop: watch::Sender<bool>,
    running: Option<alertgate::app::Running>,
}

/// The config used by tests: `[server]` keys in `server_extra`, whole sections in `sections`.
pub fn config_text(dir: &Path, server_extra: &str, sections: &str) -> String {
    config_text_with(dir, server_extra, "", sections)
}

/// As `config_text`, with extra `[rules]` keys (e.g. `unmatched = "hold"`).
pub fn config_text_with(
    dir: &Path,
    server_extra: &str,
    rules_extra: &str,
    sections: &str,
) -> String {
    // A `[store]` block in `sections` joins the store section the template already has.
    let (store_extra, sections) = split_store_keys(sections);
    // Without a relay of its own, a test relays to a closed port: mail just waits.
    let relay = if sections.contains("[relay]") {
        ""
    } else {
        "[relay]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n"
    };
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
hostname = "alertgate.test"
accepted_recipients = ["glpi@example.test", "@alerts.example.test"]
{server_extra}

[store]
path = "{db}"
{store_url}
{store_extra}

[rules]
dirs = ["{rules}"]
{rules_extra}

[compose]
from = "alertgate@example.test"
to = "glpi@example.test"
hostname = "alertgate.test"
{relay}
{sections}
"#,
        db = dir.join("alertgate.db").display(),
        store_url = test_store_url_line(&store_extra),
        rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display(),
    )
}

/// Which store the end-to-end tests run on: `ALERTGATE_TEST_STORE=postgres` puts every
/// gateway on a fresh database of the process's private PostgreSQL; SQLite otherwise.
pub fn test_store_is_postgres() -> bool {
    match std::env::var("ALERTGATE_TEST_STORE").as_deref() {
        Ok("postgres") | Ok("postgresql") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("ALERTGATE_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// The `[store] url = …` line of a fresh PostgreSQL database when the tests run on
/// PostgreSQL (and the test does not choose its own url).
pub fn test_store_url_line(store_extra: &str) -> String {
    let chooses_own = store_extra
        .lines()
        .any(|l| l.trim_start().starts_with("url"));
    if !test_store_is_postgres() || chooses_own {
        return String::new();
    }
    let url = super::postgres::shared().create_database();
    format!("url = \"{url}\"")
}

/// Takes the keys of a `[store]` block out of `sections`: (those keys, the rest).
fn split_store_keys(sections: &str) -> (String, String) {
    let mut store = String::new();
    let mut rest = String::new();
    let mut in_store = false;
    for line in sections.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_store = trimmed == "[store]";
            if in_store {
                continue;
            }
        }
        let target = if in_store { &mut store } else { &mut rest };
        target.push_str(line);
        target.push('\n');
    }
    (store, rest)
}

impl TestGateway {
    pub async fn start(server_extra: &str) -> TestGateway {
        Self::start_with(server_extra, "").await
    }

    pub async fn start_with(server_extra: &str, sections: &str) -> TestGateway {
        Self::start_full(server_extra, "", sections).await
    }

    pub async fn start_full(server_extra: &str, rules_extra: &str, sections: &str) -> TestGateway {
        Self::start_clocked(
            server_extra,
            rules_extra,
            sections,
            alertgate::clock::Clock::system(),
        )
        .await
    }

    /// As `start_full`, with the gateway's time-driven stages reading `clock`.
    pub async fn start_clocked(
        server_extra: &str,
        rules_extra: &str,
        sections: &str,
        clock: alertgate::clock::Clock,
    ) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text_with(dir.path(), server_extra, rules_extra, sections);
        Self::start_text(dir, &text, clock).await
    }

    /// A gateway from a whole config text (made with `config_text` for `dir`).
    pub async fn start_text(
        dir: tempfile::TempDir,
        text: &str,
        clock: alertgate::clock::Clock,
    ) -> TestGateway {
        let cfg_path = dir.path().join("alertgate.toml");
        std::fs::write(&cfg_path, text).expect("write config");
        let loaded = LoadedConfig::from_str(&cfg_path, text)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let db = loaded.config.store.path.clone();
        let location = loaded.config.store.location();
        let (stop, stop_rx) = watch::channel(false);
        let running = alertgate::app::start_with_clock(loaded, stop_rx, clock)
            .await
            .expect("gateway starts");
        TestGateway {
            addr: running.addrs[0],
            dir,
            db,
            location,
            stop,
            running: Some(running),
        }
    }

    /// The implicit-TLS listeners (`listen_tls`).
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.running
            .as_ref()
            .map(|r| r.tls_addrs.clone())
            .unwrap_or_default()
    }

    /// A gateway relaying to 127.0.0.1:`relay_port`, retrying after 1 s (2 s at most).
    pub async fn with_relay(relay_port: u16, server_extra: &str, sections: &str) -> TestGateway {
        let relay = format!(
            "[relay]\nhost = \"127.0.0.1\"\nport = {relay_port}\ntls = \"none\"\n[relay.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 2\n"
        );
        Self::start_with(server_extra, &format!("{relay}\n{sections}")).await
    }

    /// As `with_relay`, on a clock the test drives.
    pub async fn with_relay_and_clock(
        relay_port: u16,
        server_extra: &str,
        sections: &str,
        clock: alertgate::clock::Clock,
    ) -> TestGateway {
        let relay = format!(
            "[relay]\nhost = \"127.0.0.1\"\nport = {relay_port}\ntls = \"none\"\n[relay.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 2\n"
        );
        Self::start_clocked(server_extra, "", &format!("{relay}\n{sections}"), clock).await
    }

    /// Send one mail on a fresh connection; panics unless it is accepted.
    pub async fn send(&self, raw: &[u8]) {
        let mut c = super::client::RawClient::connect(self.addr).await;
        c.reply().await.expect("greeting");
        assert_eq!(c.cmd("EHLO monitor.test").await.code, 250);
        let r = c
            .send_mail("centreon@example.test", "glpi@example.test", raw)
            .await;
        assert_eq!(r.code, 250, "{r:?}");
        c.cmd("QUIT").await;
    }

    /// Wait until the pipeline has processed every spooled message.
    pub async fn wait_processed(&self) {
        for _ in 0..600 {
            let waiting = spool::count_in(&mut self.db(), spool::SpoolState::New).unwrap();
            if waiting == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("pipeline did not process the spool in 30 s");
    }

    /// Outbound rows as (state, order key, subject).
    pub fn outbound(&self) -> Vec<(String, String, String)> {
        self.outbound_rows()
            .into_iter()
            .map(|r| (r.state.to_string(), r.order_key, r.subject))
            .collect()
    }

    /// Every outbound mail with its bytes, oldest first.
    pub fn outbound_rows(&self) -> Vec<outbound::OutboundRow> {
        outbound::all_with_raw(&mut self.db()).expect("outbound rows")
    }

    /// Every spooled message (without its bytes), oldest first.
    pub fn spool_rows(&self) -> Vec<spool::SpoolRow> {
        spool::list(&mut self.db(), None, ALL).expect("spool rows")
    }

    /// A spooled message with its bytes.
    pub fn spool_row(&self, id: i64) -> spool::SpoolRow {
        spool::get(&mut self.db(), id)
            .expect("read spool")
            .expect("spooled")
    }

    /// The one spooled message, with its bytes (the test sent exactly one).
    pub fn only_spooled(&self) -> spool::SpoolRow {
        let rows = self.spool_rows();
        assert_eq!(rows.len(), 1, "one spooled message expected: {rows:?}");
        self.spool_row(rows[0].id)
    }

    /// Every incident, open or ended.
    pub fn incidents(&self) -> Vec<alertgate::correlate::Incident> {
        alertgate::store::incidents::load(&mut self.db(), true).expect("incidents")
    }

    /// One of the store's counters (`unthreaded_after_timeout`, …).
    pub fn kv(&self, key: &str) -> Option<String> {
        alertgate::store::incidents::get_kv(&mut self.db(), key).expect("kv")
    }

    /// Run `alertgate queue -c <this config> ARGS…`; (success, stdout).
    pub fn queue_cli(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_alertgate"))
            .args(["queue", "-c"])
            .arg(self.config_path())
            .args(args)
            .output()
            .expect("run alertgate queue");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The start-up check of the GLPI API user's rights (`None` without `[glpi_api]`).
    pub fn glpi_rights(&self) -> Option<&alertgate::feedback::RightsCheck> {
        self.running.as_ref().and_then(|r| r.glpi_rights.as_ref())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("alertgate.toml")
    }

    /// A connection to the gateway's store, through the store's own functions.
    pub fn db(&self) -> Db {
        alertgate::store::open(&self.location).expect("open store")
    }

    /// The SQLite file itself, for tests that damage it on purpose (fault injection):
    /// everything else reads through [`Self::db`].
    pub fn raw_sqlite(&self) -> rusqlite::Connection {
        raw_sqlite(&self.db)
    }

    /// Runs `sql` on the gateway's database behind the store's back, whichever backend
    /// it is (fault injection: a table taken away, a value no alertgate writes).
    pub fn inject_sql(&self, sql: &str) {
        match &self.location {
            Location::Sqlite(path) => raw_sqlite(path)
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Location::Postgres(url) => {
                let database = url.rsplit('/').next().unwrap_or("postgres");
                super::postgres::shared()
                    .psql_in(database, sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// Number of messages in the spool.
    pub fn spooled(&self) -> i64 {
        let counts = spool::counts(&mut self.db()).expect("count");
        counts.iter().map(|(_, n)| n).sum()
    }

    /// Stop the gateway but keep its directory (store, config) for inspection.
    pub async fn shutdown_keep(&mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }
}

/// A plain SQLite connection to a store file, to damage it on purpose.
pub fn raw_sqlite(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open the SQLite file");
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .expect("busy timeout");
    conn
}
