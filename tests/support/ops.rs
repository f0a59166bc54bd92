//! Helpers for the operations tests: the `alertgate` binary as a child process, plain
//! HTTP/1.0 GETs and POSTs over loopback, and waiting for files.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_alertgate")
}

/// A running `alertgate serve`, killed (SIGTERM, then SIGKILL) when dropped.
pub struct Served {
    pub child: Child,
    pub log: PathBuf,
}

impl Served {
    pub fn start(dir: &Path, config: &str) -> Served {
        Self::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Served {
        let log = dir.join("serve.log");
        let child = Command::new(bin())
            .args(["serve", "-c", config])
            .envs(env.iter().copied())
            .current_dir(dir)
            .env("ALERTGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn alertgate serve");
        Served { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "serve exited with {status}");
                return self.log_text();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("serve did not stop on SIGTERM:\n{}", self.log_text());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary with `args` in `dir`; returns (success, stdout, stderr).
pub fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run alertgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HTTP/1.0 exchange; returns (status, headers+body as text).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect http");
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).expect("send http");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read http");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], "")
}

/// The body of an HTTP response text.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Polls `f` every 50 ms until it returns Some, or panics after `secs` with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The files of a Maildir's `new/`, oldest first (by name: time, then counter).
pub fn maildir_new(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("new"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort_by_key(|p| {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let q = name
            .split('Q')
            .nth(1)
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        q
    });
    files
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A config for an out-of-process gateway on free ports, with the outbox and the HTTP
/// listener; `extra` is appended.
pub fn ops_config(dir: &Path, smtp_port: u16, http_port: u16, extra: &str) -> String {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    format!(
        r#"[server]
listen = ["127.0.0.1:{smtp_port}"]
hostname = "alertgate.test"
accepted_recipients = ["glpi@example.test"]
feedback_addresses = ["alertgate@example.test"]

[store]
path = "{db}"
{store_url}

[rules]
dirs = ["{rules}"]

[compose]
from = "alertgate@example.test"
to = "glpi@example.test"

[relay]
kind = "maildir"
maildir = "{outbox}"

[http]
listen = "127.0.0.1:{http_port}"
{extra}
"#,
        db = dir.join("var/alertgate.db").display(),
        // The end-to-end matrix: on PostgreSQL when ALERTGATE_TEST_STORE says so.
        store_url = super::gateway::test_store_url_line(""),
        rules = rules.display(),
        outbox = dir.join("var/outbox").display(),
    )
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
