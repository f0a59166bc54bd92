//! Issue 10, acceptance 1, with real filesystem faults: the gateway (`alertgate serve`, a
//! child process) keeps its store on a filesystem the test mounts, mail is queued for a
//! test relay, and the filesystem fills up (a filler file on a small tmpfs) or turns
//! read-only (the kernel's `errors=remount-ro` on an ext4 image) while mail is queued
//! and being delivered. The relay must get each mail at most twice, everything answered
//! 250 must arrive once the fault is cleared, and the log must say it once, not per try.
//!
//! These tests mount filesystems: they need root, and fail (not pass) without it.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::alerts::centreon_service;
use support::client::RawClient;
use support::ops::{self, Served};
use support::relay::{ReceivedMail, RecordingRelay, RelayMode};

/// What `queue list` shows for a mail the relay took while "sent" could not be recorded.
const UNRECORDED_MARK: &str = "sent, not yet recorded (store fault)";

/// A filesystem mounted for one test; unmounted when dropped (lazily if still busy).
struct Mounted {
    point: PathBuf,
    /// The image file behind a loop mount, removed after unmounting.
    image: Option<PathBuf>,
}

impl Mounted {
    /// A tmpfs of `size` (e.g. "16m") at `point`.
    fn tmpfs(point: &Path, size: &str) -> Mounted {
        require_root();
        std::fs::create_dir_all(point).expect("mount point");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            &point.display().to_string(),
        ]);
        Mounted {
            point: point.to_path_buf(),
            image: None,
        }
    }

    /// A fresh ext4 image of `size_mb` at `point`, turned read-only by the kernel on the
    /// first filesystem error (`errors=remount-ro`), as a failing disk would be.
    fn ext4(point: &Path, image: &Path, size_mb: u64) -> Mounted {
        require_root();
        std::fs::create_dir_all(point).expect("mount point");
        let file = std::fs::File::create(image).expect("image file");
        file.set_len(size_mb * 1024 * 1024).expect("image size");
        drop(file);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run mkfs.ext4 (e2fsprogs) for the read-only test: {e}")
            });
        assert!(
            out.status.success(),
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        mount(&[
            "-o",
            "loop,errors=remount-ro",
            &image.display().to_string(),
            &point.display().to_string(),
        ]);
        Mounted {
            point: point.to_path_buf(),
            image: Some(image.to_path_buf()),
        }
    }

    /// The kernel device name (e.g. `loop3`) of a loop mount.
    fn device(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.point)
            .output()
            .expect("findmnt");
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        source.rsplit('/').next().unwrap_or_default().to_string()
    }

    fn unmount(&self) -> bool {
        Command::new("umount")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.unmount() {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test puts the store on a filesystem it mounts (tmpfs, loop ext4) and so must \
         run as root; it runs as uid {uid}. Run it as root (CI does) — it does not pass \
         without testing anything"
    );
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mount {args:?}: {e}"));
    assert!(
        out.status.success(),
        "mount {args:?} was refused ({}): this test needs to mount a filesystem for the \
         store (root, and a kernel/container that allows mounts)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Fills the filesystem of `dir` with one file until the kernel says ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler file");
    for chunk in [1024 * 1024, 4096, 1] {
        let bytes = vec![0xA5u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(n) if n == bytes.len() => continue,
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = file.sync_all();
    path
}

/// A gateway config with its store in `store_dir`, relaying to `relay_port` with 1–2 s
/// backoff, and an HTTP listener.
fn config(store_dir: &Path, smtp: u16, http: u16, relay_port: u16) -> String {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    format!(
        r#"[server]
listen = ["127.0.0.1:{smtp}"]
hostname = "alertgate.test"
accepted_recipients = ["glpi@example.test"]

[store]
path = "{db}"

[rules]
dirs = ["{rules}"]

[compose]
from = "alertgate@example.test"
to = "glpi@example.test"

[relay]
host = "127.0.0.1"
port = {relay_port}
tls = "none"

[relay.retry]
initial_backoff_secs = 1
max_backoff_secs = 2

[http]
listen = "127.0.0.1:{http}"
"#,
        db = store_dir.join("alertgate.db").display(),
        rules = rules.display(),
    )
}

/// One SMTP transaction; the reply code to the final dot (or to the first refused step).
async fn submit(addr: SocketAddr, raw: &[u8]) -> u16 {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let mut c = RawClient::from_stream(stream);
    if c.reply().await.map(|r| r.code) != Some(220) {
        return 0;
    }
    if c.cmd("EHLO monitor.test").await.code != 250 {
        return 0;
    }
    let code = c
        .send_mail("centreon@example.test", "glpi@example.test", raw)
        .await
        .code;
    c.send(b"QUIT\r\n").await;
    code
}

fn alert(host: &str) -> Vec<u8> {
    centreon_service("PROBLEM", host, "Disk /var", "CRITICAL", "DISK CRITICAL")
}

/// Copies the relay accepted, by the composed mail's Message-ID.
fn copies(received: &[ReceivedMail]) -> HashMap<String, usize> {
    let mut by_id = HashMap::new();
    for mail in received {
        let id = mail.header("Message-ID").unwrap_or_default();
        *by_id.entry(id).or_insert(0) += 1;
    }
    by_id
}

/// For each host: (copies at the relay, distinct Message-IDs among them).
fn per_alert(received: &[ReceivedMail], hosts: &[String]) -> HashMap<String, (usize, usize)> {
    hosts
        .iter()
        .map(|host| {
            let mails: Vec<&ReceivedMail> = received
                .iter()
                .filter(|m| m.raw_str().contains(host.as_str()))
                .collect();
            let mut ids: Vec<String> = mails
                .iter()
                .map(|m| m.header("Message-ID").unwrap_or_default())
                .collect();
            ids.sort();
            ids.dedup();
            (host.clone(), (mails.len(), ids.len()))
        })
        .collect()
}

/// At most two copies of each alert, all under one Message-ID (a copy GLPI could tell
/// from a new alert).
fn assert_at_most_twice_one_id(received: &[ReceivedMail], accepted: &[String]) {
    let per_alert = per_alert(received, accepted);
    assert!(
        per_alert.values().all(|&(copies, _)| copies <= 2),
        "an alert reached the relay more than twice: {per_alert:?}"
    );
    assert!(
        per_alert.values().all(|&(_, ids)| ids == 1),
        "an alert reached the relay under two Message-IDs (two tickets in GLPI): {per_alert:?}"
    );
}

fn delivered_hosts(received: &[ReceivedMail], hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| received.iter().any(|m| m.raw_str().contains(h.as_str())))
        .cloned()
        .collect()
}

fn queue_list(dir: &Path) -> String {
    let (_, out, err) = ops::run(dir, &["queue", "-c", "alertgate.toml", "list"]);
    format!("{out}{err}")
}

/// The outbound states, as `queue list --json` gives them.
fn outbound_states(dir: &Path) -> HashMap<String, usize> {
    let (_, out, _) = ops::run(dir, &["queue", "-c", "alertgate.toml", "list", "--json"]);
    let mut states = HashMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["queue"] == "outbound" {
            let state = v["state"].as_str().unwrap_or("?").to_string();
            *states.entry(state).or_insert(0) += 1;
        }
    }
    states
}

/// The log's lines without terminal colours.
fn plain(log: &str) -> Vec<String> {
    log.lines()
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            let mut chars = line.chars();
            while let Some(c) = chars.next() {
                if c == '\x1b' {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect()
}

/// Log lines at `level` (the text format puts the level after the timestamp).
fn lines_at(log: &str, level: &str) -> Vec<String> {
    plain(log)
        .into_iter()
        .filter(|l| l.split_whitespace().nth(1) == Some(level))
        .collect()
}

struct Gateway {
    dir: PathBuf,
    smtp: SocketAddr,
    served: Option<Served>,
}

impl Gateway {
    fn start(dir: &Path, store_dir: &Path, relay_port: u16) -> Gateway {
        let (smtp_port, http_port) = Self::configure(dir, store_dir, relay_port);
        Self::serve(dir, smtp_port, http_port)
    }

    /// Writes the config for a gateway with its store in `store_dir`; its ports.
    fn configure(dir: &Path, store_dir: &Path, relay_port: u16) -> (u16, u16) {
        let (smtp_port, http_port) = (ops::free_port(), ops::free_port());
        let text = config(store_dir, smtp_port, http_port, relay_port);
        std::fs::write(dir.join("alertgate.toml"), text).expect("config");
        (smtp_port, http_port)
    }

    fn serve(dir: &Path, smtp_port: u16, http_port: u16) -> Gateway {
        let mut served = Served::start(dir, "alertgate.toml");
        let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().expect("addr");
        let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(http).is_err() {
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("alertgate serve exited ({status}):\n{}", served.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no HTTP listener:\n{}",
                served.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway {
            dir: dir.to_path_buf(),
            smtp,
            served: Some(served),
        }
    }

    fn log(&self) -> String {
        self.served
            .as_ref()
            .map(Served::log_text)
            .unwrap_or_default()
    }

    fn stop(&mut self) -> String {
        self.served.take().map(Served::stop).unwrap_or_default()
    }
}

/// Sends one alert per host; returns the hosts answered 250.
async fn send_alerts(gw: &Gateway, hosts: &[String]) -> Vec<String> {
    let mut accepted = Vec::new();
    for host in hosts {
        if submit(gw.smtp, &alert(host)).await == 250 {
            accepted.push(host.clone());
        }
    }
    accepted
}

fn hosts(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i:02}")).collect()
}

/// Waits until every host in `accepted` has a mail at the relay and nothing is pending.
async fn wait_all_delivered(gw: &Gateway, relay: &RecordingRelay, accepted: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = relay.received();
        let delivered = delivered_hosts(&received, accepted);
        let states = outbound_states(&gw.dir);
        let pending =
            states.get("queued").copied().unwrap_or(0) + states.get("held").copied().unwrap_or(0);
        if delivered.len() == accepted.len() && pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after the fault cleared, {} of {} accepted mails reached the relay and {pending} \
             are still pending ({states:?}) after 60 s:\n{}\nlog:\n{}",
            delivered.len(),
            accepted.len(),
            queue_list(&gw.dir),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_filesystem_sends_each_mail_at_most_twice_and_logs_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let store_dir = dir.join("store");
    let fs = Mounted::tmpfs(&store_dir, "24m");
    let relay = RecordingRelay::start().await;
    // Queued first: the relay refuses after DATA until the disk is full.
    relay.set_mode(RelayMode::TempFailData);
    let mut gw = Gateway::start(dir, &store_dir, relay.port());

    let before = hosts("full", 10);
    let mut accepted = send_alerts(&gw, &before).await;
    assert_eq!(accepted, before, "every mail is accepted before the fault");
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.transactions() < before.len() {
        assert!(
            Instant::now() < deadline,
            "the relay saw {} of {} attempts:\n{}",
            relay.transactions(),
            before.len(),
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The fault: the store's filesystem is full while the mails are due again and the
    // relay now takes them.
    let filler = fill(&fs.point);
    let fault_log_start = gw.log().len();
    relay.set_mode(RelayMode::Accept);
    let during = hosts("during", 3);
    let accepted_during = send_alerts(&gw, &during).await;
    let mut shown_unrecorded = false;
    let fault_end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < fault_end {
        let listing = queue_list(dir);
        if let Some(row) = listing.lines().find(|l| l.contains(UNRECORDED_MARK)) {
            // The store still says queued; the gateway knows better.
            assert!(row.contains(" queued "), "{listing}");
            if !shown_unrecorded {
                let (_, json, _) =
                    ops::run(dir, &["queue", "-c", "alertgate.toml", "list", "--json"]);
                assert!(
                    json.lines()
                        .any(|l| l.contains("\"unrecorded\"") && l.contains(UNRECORDED_MARK)),
                    "queue list --json marks them too:\n{json}"
                );
            }
            shown_unrecorded = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during_fault = relay.received();
    let fault_log = gw.log()[fault_log_start..].to_string();

    // Cleared.
    std::fs::remove_file(&filler).expect("remove filler");
    accepted.extend(accepted_during.iter().cloned());
    wait_all_delivered(&gw, &relay, &accepted).await;
    // Serving as before: new mail is taken and delivered.
    let after = hosts("after", 2);
    assert_eq!(
        send_alerts(&gw, &after).await,
        after,
        "mail is accepted again once the disk has room"
    );
    accepted.extend(after.iter().cloned());
    wait_all_delivered(&gw, &relay, &accepted).await;
    // A few more polls: nothing may arrive twice after recovery either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wal = std::fs::metadata(store_dir.join("alertgate.db-wal")).map_or(0, |m| m.len());
    eprintln!("full store: WAL {wal} bytes after recovery");
    let log = gw.stop();
    let received = relay.received();
    let per_mail = copies(&received);

    eprintln!(
        "full store: {} mails accepted before, {} of {} during the fault; relay got {} \
         copies of {} mails ({} during the fault); copies per mail: {:?}",
        before.len(),
        accepted_during.len(),
        during.len(),
        received.len(),
        per_mail.len(),
        during_fault.len(),
        per_mail.values().collect::<Vec<_>>()
    );
    let errors = lines_at(&log, "ERROR");
    let fault_errors = lines_at(&fault_log, "ERROR");
    let fault_warns = lines_at(&fault_log, "WARN");
    eprintln!(
        "log: {} ERROR lines in all, {} ERROR and {} WARN during the 12 s fault",
        errors.len(),
        fault_errors.len(),
        fault_warns.len()
    );
    for line in &fault_errors {
        eprintln!("  {line}");
    }

    assert!(
        per_mail.values().all(|&n| n <= 2),
        "a mail reached the relay more than twice: {per_mail:?}"
    );
    assert_at_most_twice_one_id(&received, &accepted);
    assert_eq!(
        delivered_hosts(&received, &accepted),
        accepted,
        "everything answered 250 is delivered"
    );
    assert!(
        accepted_during.len() < during.len(),
        "the fault was real: mail offered during it was refused (451)"
    );
    assert!(
        shown_unrecorded,
        "queue list showed the mails sent while the store was full as `{UNRECORDED_MARK}`"
    );
    // Once per incident of the failure, not per attempt: each kind of error at most a
    // couple of times over 12 s (a per-attempt log would be one a second or more), plus
    // one line per refused inbound mail.
    let refused = during.len() - accepted_during.len();
    let repeated = most_repeated(&fault_errors);
    assert!(
        repeated.1 <= 2 + refused,
        "the fault is logged per attempt: `{}` {} times in 12 s:\n{fault_log}",
        repeated.0,
        repeated.1
    );
    assert!(
        fault_errors.len() + fault_warns.len() <= 12 + 2 * refused,
        "{} ERROR/WARN lines in a 12 s fault:\n{fault_log}",
        fault_errors.len() + fault_warns.len()
    );
    drop(fs);
}

/// The message of a log line (after the target), without its fields' values.
fn message_of(line: &str) -> String {
    let rest = line
        .split_whitespace()
        .skip(3)
        .collect::<Vec<_>>()
        .join(" ");
    rest.split(|c: char| c == '=' || c.is_ascii_digit())
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The most frequent log message and how often it came.
fn most_repeated(lines: &[String]) -> (String, usize) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in lines {
        *counts.entry(message_of(line)).or_insert(0) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap_or_default()
}

/// Turns the ext4 filesystem of `fs` read-only the way a disk error does: the kernel
/// reports an error and, under `errors=remount-ro`, remounts it read-only at once.
/// (`mount -o remount,ro` is refused with EBUSY while the gateway has its files open for
/// writing, so an operator cannot do this to a running gateway; the kernel can.)
fn fail_filesystem(fs: &Mounted) {
    let trigger = format!("/sys/fs/ext4/{}/trigger_fs_error", fs.device());
    std::fs::write(&trigger, "alertgate test: simulated disk error")
        .unwrap_or_else(|e| panic!("cannot trigger an ext4 error through {trigger}: {e}"));
    let probe = fs.point.join("probe");
    assert!(
        std::fs::write(&probe, b"x").is_err(),
        "the store's filesystem is read-only after the error"
    );
}

/// What an operator does after such an error: stop, unmount, fsck, mount again.
fn repair(fs: &Mounted) {
    assert!(
        fs.unmount(),
        "the repaired store unmounts once alertgate stopped"
    );
    let image = fs.image.as_ref().expect("an image");
    let out = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(image)
        .output()
        .expect("run e2fsck");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    mount(&[
        "-o",
        "loop,errors=remount-ro",
        &image.display().to_string(),
        &fs.point.display().to_string(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_store_filesystem_sends_each_mail_at_most_twice_and_logs_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let store_dir = dir.join("store");
    let fs = Mounted::ext4(&store_dir, &dir.join("store.img"), 64);
    let relay = RecordingRelay::start().await;
    relay.set_mode(RelayMode::TempFailData);
    let mut gw = Gateway::start(dir, &store_dir, relay.port());
    let (smtp_port, http_port) = (gw.smtp.port(), http_port_of(dir));

    let before = hosts("ro", 10);
    let mut accepted = send_alerts(&gw, &before).await;
    assert_eq!(accepted, before, "every mail is accepted before the fault");
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.transactions() < before.len() {
        assert!(Instant::now() < deadline, "attempts:\n{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The fault: the disk fails and the kernel makes the store's filesystem read-only,
    // while the mails are due again and the relay now takes them.
    fail_filesystem(&fs);
    let fault_log_start = gw.log().len();
    relay.set_mode(RelayMode::Accept);
    let during = hosts("rodur", 3);
    let accepted_during = send_alerts(&gw, &during).await;
    let mut shown_unrecorded = 0;
    let fault_end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < fault_end {
        let listing = queue_list(dir);
        shown_unrecorded = shown_unrecorded.max(listing.matches(UNRECORDED_MARK).count());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during_fault = copies(&relay.received());
    let fault_log = gw.log()[fault_log_start..].to_string();

    // Cleared: the operator stops alertgate, repairs the filesystem and starts it again.
    let first_log = gw.stop();
    repair(&fs);
    accepted.extend(accepted_during.iter().cloned());
    let mut gw = Gateway::serve(dir, smtp_port, http_port);
    wait_all_delivered(&gw, &relay, &accepted).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second_log = gw.stop();
    let received = relay.received();
    let per_mail = copies(&received);

    let fault_errors = lines_at(&fault_log, "ERROR");
    let fault_warns = lines_at(&fault_log, "WARN");
    eprintln!(
        "read-only store: {} accepted before, {} of {} during the fault; relay got {} copies \
         of {} mails ({} during the fault); copies per mail: {:?}; queue list showed {} \
         unrecorded; log: {} ERROR and {} WARN lines during the 12 s fault, {} ERROR in the \
         first run, {} after the repair",
        before.len(),
        accepted_during.len(),
        during.len(),
        received.len(),
        per_mail.len(),
        during_fault.values().sum::<usize>(),
        per_mail.values().collect::<Vec<_>>(),
        shown_unrecorded,
        fault_errors.len(),
        fault_warns.len(),
        lines_at(&first_log, "ERROR").len(),
        lines_at(&second_log, "ERROR").len(),
    );
    for line in fault_errors.iter().chain(&fault_warns) {
        eprintln!("  {line}");
    }

    assert!(
        per_mail.values().all(|&n| n <= 2),
        "a mail reached the relay more than twice: {per_mail:?}"
    );
    assert!(
        during_fault.values().all(|&n| n <= 1),
        "while the store was read-only no mail went to the relay twice: {during_fault:?}"
    );
    assert_at_most_twice_one_id(&received, &accepted);
    assert_eq!(
        delivered_hosts(&received, &accepted),
        accepted,
        "everything answered 250 is delivered"
    );
    assert!(
        accepted_during.len() < during.len(),
        "the fault was real: mail offered during it was refused (451)"
    );
    assert_eq!(
        shown_unrecorded,
        during_fault.len(),
        "queue list showed every mail sent while the store was read-only as `{UNRECORDED_MARK}`"
    );
    let refused = during.len() - accepted_during.len();
    let repeated = most_repeated(&fault_errors);
    assert!(
        repeated.1 <= 2 + refused,
        "the fault is logged per attempt: `{}` {} times in 12 s:\n{fault_log}",
        repeated.0,
        repeated.1
    );
    assert!(
        fault_errors.len() + fault_warns.len() <= 12 + 2 * refused,
        "{} ERROR/WARN lines in a 12 s fault:\n{fault_log}",
        fault_errors.len() + fault_warns.len()
    );
    drop(fs);
}

/// The HTTP port in the config written by `Gateway::start`.
fn http_port_of(dir: &Path) -> u16 {
    let text = std::fs::read_to_string(dir.join("alertgate.toml")).expect("config");
    let section = text.split("[http]").nth(1).expect("[http]");
    section
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|port| port.parse().ok())
        .expect("http port")
}

/// A gateway that restarts (after a crash, a reboot) onto a full disk with accepted mail
/// still in its spool: it cannot process it until room is made, and must say so once,
/// not once a second, then process and deliver it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_onto_a_full_store_filesystem_delivers_the_spool_once_room_is_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let store_dir = dir.join("store");
    let fs = Mounted::tmpfs(&store_dir, "24m");
    let relay = RecordingRelay::start().await;
    let (smtp_port, http_port) = Gateway::configure(dir, &store_dir, relay.port());

    // Accepted while the gateway was down (`inject`, like Postfix's sendmail).
    let spooled = hosts("spooled", 5);
    let mails = dir.join("mails");
    std::fs::create_dir_all(&mails).expect("mail dir");
    let mut args = vec!["inject".to_string(), "-c".into(), "alertgate.toml".into()];
    for host in &spooled {
        let file = mails.join(format!("{host}.eml"));
        std::fs::write(&file, alert(host)).expect("mail file");
        args.push(file.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = ops::run(dir, &args);
    assert!(ok, "inject: {out}{err}");

    let filler = fill(&fs.point);
    let mut gw = Gateway::serve(dir, smtp_port, http_port);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let fault_log = gw.log();
    let during_fault = relay.received().len();

    std::fs::remove_file(&filler).expect("remove filler");
    wait_all_delivered(&gw, &relay, &spooled).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = gw.stop();
    let received = relay.received();

    let fault_errors = lines_at(&fault_log, "ERROR");
    let fault_warns = lines_at(&fault_log, "WARN");
    eprintln!(
        "restart onto a full store: {} spooled; relay got {} copies ({during_fault} during \
         the fault); {} ERROR and {} WARN lines in the 12 s fault, {} ERROR in all",
        spooled.len(),
        received.len(),
        fault_errors.len(),
        fault_warns.len(),
        lines_at(&log, "ERROR").len()
    );
    for line in fault_errors.iter().chain(&fault_warns) {
        eprintln!("  {line}");
    }
    assert_at_most_twice_one_id(&received, &spooled);
    assert_eq!(delivered_hosts(&received, &spooled), spooled);
    let repeated = most_repeated(&fault_errors);
    assert!(
        repeated.1 <= 2,
        "the fault is logged per attempt: `{}` {} times in 12 s:\n{fault_log}",
        repeated.0,
        repeated.1
    );
    assert!(
        fault_errors.len() + fault_warns.len() <= 6,
        "{} ERROR/WARN lines in a 12 s fault:\n{fault_log}",
        fault_errors.len() + fault_warns.len()
    );
    drop(fs);
}
