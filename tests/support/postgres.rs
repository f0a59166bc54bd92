//! A private PostgreSQL for the tests: `initdb` + `pg_ctl` in a temporary directory, on a
//! free loopback port, run as an unprivileged user (PostgreSQL refuses root), one instance
//! per test process, a fresh database per gateway, stopped by pid on drop or at exit.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Who runs the server: the test's own user, or `nobody` when the tests run as root.
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<ServerUser>,
    pid: Mutex<Option<i32>>,
    databases: AtomicU64,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();

/// The process's shared instance, started on first use and stopped when the process exits.
pub fn shared() -> &'static PgServer {
    SHARED.get_or_init(|| {
        let server = PgServer::start_new().unwrap_or_else(|e| panic!("private PostgreSQL: {e}"));
        extern "C" fn stop_shared() {
            if let Some(server) = SHARED.get() {
                server.stop();
                let _ = std::fs::remove_dir_all(server.dir.path());
            }
        }
        // Statics are never dropped: stop the server when the test binary exits.
        unsafe { libc::atexit(stop_shared) };
        server
    })
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$ALERTGATE_PG_BINDIR`, or
/// the newest Debian `/usr/lib/postgresql/N/bin`.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("ALERTGATE_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install Debian's postgresql package)"))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb".to_string())
}

impl PgServer {
    /// A new private instance (most tests want `shared()` instead).
    pub fn start_new() -> Result<PgServer, String> {
        let bin = bin_dir()?;
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("alertgate-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        if let Some(u) = user {
            chown(dir.path(), u)?;
        }
        let server = PgServer {
            dir,
            bin,
            port: free_port()?,
            user,
            pid: Mutex::new(None),
            databases: AtomicU64::new(0),
        };
        server.initdb()?;
        server.start()?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<i32> {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The superuser's URL of database `name`.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The superuser's URL of the `postgres` maintenance database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// A fresh, empty database; returns its URL.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("t_{n}");
        self.psql(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        self.url_of(&name)
    }

    /// Run one SQL command in the maintenance database with `psql`; its output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_in("postgres", sql)
    }

    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn as_server_user(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // The server user may not read the test's working directory.
        cmd.current_dir(self.dir.path()).env_remove("PGDATA");
        if let Some(u) = self.user {
            cmd.uid(u.uid).gid(u.gid).env("HOME", self.dir.path());
        }
        cmd
    }

    fn initdb(&self) -> Result<(), String> {
        let out = self
            .as_server_user("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", "postgres", "-A", "trust", "--no-instructions"])
            .args(["--encoding=UTF8", "--locale=C"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Start the server (again, after `stop`) on the same port and data directory.
    pub fn start(&self) -> Result<(), String> {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {sock} -c fsync=on -c synchronous_commit=on -c max_connections=400 -c shared_buffers=32MB",
            port = self.port,
            sock = self.dir.path().display(),
        );
        let out = self
            .as_server_user("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pid = postmaster_pid(&self.data())
            .ok_or_else(|| "pg_ctl started, but postmaster.pid is unreadable".to_string())?;
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        Ok(())
    }

    /// Stop the server by pid (fast shutdown: sessions are cut), waiting until it is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown; SIGQUIT (immediate) if that hangs.
        unsafe { libc::kill(pid, libc::SIGINT) };
        if wait_gone(pid, Duration::from_secs(30)) {
            return;
        }
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        if !wait_gone(pid, Duration::from_secs(10)) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// The server's log so far (for a failing test's message).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn server_user() -> Result<Option<ServerUser>, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"nobody";
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("running as root and there is no `nobody` user to run PostgreSQL".into());
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(ServerUser { uid, gid }))
}

fn chown(path: &Path, user: ServerUser) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| format!("chown {}: {e}", path.display()))
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Gone: no such process, or a zombie nobody reaps (pg_ctl's child is reparented).
fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}
