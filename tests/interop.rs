//! Issue 6: alertgate between real, independent mail software — a private Postfix in
//! front (relayhost), a private Postfix + Dovecot behind (read over IMAP), swaks replays of
//! every fixture, and a real relay outage. The checks live in tests/interop/run.sh, which
//! installs postfix, dovecot-imapd and swaks with apt-get when they are missing.

use std::process::Command;

#[test]
fn alertgate_interoperates_with_postfix_dovecot_and_swaks() {
    let out = Command::new("bash")
        .arg("tests/interop/run.sh")
        .env("ALERTGATE_BIN", env!("CARGO_BIN_EXE_alertgate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run tests/interop/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or("");
    assert!(out.status.success(), "interop checks failed: {summary}");
    assert!(
        summary.ends_with(" 0 failed"),
        "unexpected summary: {summary:?}"
    );
}
