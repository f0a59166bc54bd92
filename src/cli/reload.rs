//! `alertgate reload`: asks the running gateway to re-read its configuration, as
//! `systemctl reload` does, by sending SIGHUP to the pid in its pid file (next to the store).

use std::path::{Path, PathBuf};

/// Where `serve` writes its pid: the store's path with `.pid` (e.g. `var/alertgate.pid`).
pub fn pid_file(store_path: &Path) -> PathBuf {
    store_path.with_extension("pid")
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "cannot read {path}: {source} (is `alertgate serve` running with this configuration?)"
    )]
    NoPidFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not hold a process id: `{content}`")]
    BadPid { path: String, content: String },
    #[error("cannot signal process {pid} from {path}: {source} (stale pid file?)")]
    Signal {
        pid: i32,
        path: String,
        source: std::io::Error,
    },
}

/// Sends SIGHUP to the gateway that uses `store_path`; returns its pid.
pub fn signal_reload(store_path: &Path) -> Result<i32, ReloadError> {
    let path = pid_file(store_path);
    let shown = path.display().to_string();
    let content = std::fs::read_to_string(&path).map_err(|source| ReloadError::NoPidFile {
        path: shown.clone(),
        source,
    })?;
    let pid: i32 = content
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ReloadError::BadPid {
            path: shown.clone(),
            content: content.trim().to_string(),
        })?;
    // SAFETY: kill(2) with a positive pid and a valid signal has no memory effects.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    if rc != 0 {
        return Err(ReloadError::Signal {
            pid,
            path: shown,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(pid)
}
