//! Start a real alertgate (in-process, on loopback ports) for a test, with a config made
//! from a template plus the test's own TOML, and a temporary store.
#![allow(dead_code)]

use alertgate::config::LoadedConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::sync::watch;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    stop: watch::Sender<bool>,
    running: Option<alertgate::app::Running>,
}

/// The config used by tests: `[server]` keys in `server_extra`, whole sections in `sections`.
pub fn config_text(dir: &Path, server_extra: &str, sections: &str) -> String {
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

[rules]
dirs = ["{rules}"]

[compose]
from = "alertgate@example.test"
to = "glpi@example.test"
hostname = "alertgate.test"
{relay}
{sections}
"#,
        db = dir.join("alertgate.db").display(),
        rules = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display(),
    )
}

impl TestGateway {
    pub async fn start(server_extra: &str) -> TestGateway {
        Self::start_with(server_extra, "").await
    }

    pub async fn start_with(server_extra: &str, sections: &str) -> TestGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config_text(dir.path(), server_extra, sections);
        let cfg_path = dir.path().join("alertgate.toml");
        std::fs::write(&cfg_path, &text).expect("write config");
        let loaded = LoadedConfig::from_str(&cfg_path, &text)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let db = loaded.config.store.path.clone();
        let (stop, stop_rx) = watch::channel(false);
        let running = alertgate::app::start(loaded, stop_rx)
            .await
            .expect("gateway starts");
        TestGateway {
            addr: running.addrs[0],
            dir,
            db,
            stop,
            running: Some(running),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("alertgate.toml")
    }

    pub fn db(&self) -> rusqlite::Connection {
        alertgate::store::open(&self.db).expect("open store")
    }

    /// Number of messages in the spool.
    pub fn spooled(&self) -> i64 {
        self.db()
            .query_row("SELECT COUNT(*) FROM spool", [], |r| r.get(0))
            .expect("count")
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
    }
}
