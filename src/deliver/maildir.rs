//! The outbox delivery mode (`[relay] kind = "maildir"`): each outbound mail is written
//! into a Maildir as GLPI's collector would fetch it (`tmp/`, fsync, atomic rename into
//! `new/`), with the `Return-Path` and `Delivered-To` a local delivery agent would add.

use super::client::DeliverError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A Maildir that takes outbound mail instead of a relay. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MaildirOutbox {
    dir: Arc<PathBuf>,
    label: String,
    counter: Arc<AtomicU64>,
}

impl MaildirOutbox {
    /// Creates `tmp/`, `new/` and `cur/` under `dir` when missing.
    pub fn new(dir: &Path) -> Result<MaildirOutbox, DeliverError> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| {
                DeliverError::Config(format!("cannot create maildir {}: {e}", dir.display()))
            })?;
        }
        Ok(MaildirOutbox {
            label: format!("maildir {}", dir.display()),
            dir: Arc::new(dir.to_path_buf()),
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.label
    }

    /// Writes one mail; returns a reply in the relay's style naming the file.
    /// A full disk or a permission problem is temporary: the mail stays queued.
    pub async fn send(
        &self,
        envelope_from: &str,
        envelope_to: &[String],
        raw: &[u8],
    ) -> Result<String, DeliverError> {
        let name = self.unique_name();
        let mut bytes = Vec::with_capacity(raw.len() + 128);
        let from = envelope_from.trim_start_matches('<').trim_end_matches('>');
        bytes.extend_from_slice(format!("Return-Path: <{from}>\r\n").as_bytes());
        for to in envelope_to {
            bytes.extend_from_slice(format!("Delivered-To: {to}\r\n").as_bytes());
        }
        bytes.extend_from_slice(raw);
        let dir = Arc::clone(&self.dir);
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &bytes))
            .await
            .map_err(|e| transient(format!("maildir writer failed: {e}")))?;
        written
            .map(|path| format!("250 2.0.0 Ok: delivered to {}", path.display()))
            .map_err(|e| transient(format!("cannot write to maildir: {e}")))
    }

    /// `time.M<micros>P<pid>Q<n>.<host>`: unique per process and call, as Maildir asks.
    fn unique_name(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
            .replace(['/', ':'], "_");
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            n,
            host
        )
    }
}

fn transient(reason: String) -> DeliverError {
    DeliverError::Transient { code: None, reason }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join("tmp").join(name);
    let new = dir.join("new").join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let result = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &new)?;
    // The rename is durable only once the directory is synced.
    std::fs::File::open(dir.join("new"))?.sync_all()?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_into_new_with_delivery_headers() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = MaildirOutbox::new(&dir.path().join("outbox")).unwrap();
        let reply = outbox
            .send(
                "gw@example.test",
                &["glpi@example.test".to_string()],
                b"Subject: x\r\n\r\nbody\r\n",
            )
            .await
            .unwrap();
        assert!(reply.starts_with("250 "), "{reply}");
        let new: Vec<_> = std::fs::read_dir(dir.path().join("outbox/new"))
            .unwrap()
            .collect();
        assert_eq!(new.len(), 1);
        let text = std::fs::read_to_string(new[0].as_ref().unwrap().path()).unwrap();
        assert!(text.starts_with(
            "Return-Path: <gw@example.test>\r\nDelivered-To: glpi@example.test\r\nSubject: x"
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("outbox/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn unwritable_maildir_is_a_temporary_failure() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = MaildirOutbox::new(&dir.path().join("outbox")).unwrap();
        std::fs::remove_dir_all(dir.path().join("outbox/tmp")).unwrap();
        let err = outbox.send("a@b", &[], b"x").await.unwrap_err();
        assert!(!err.is_permanent(), "{err}");
    }
}
