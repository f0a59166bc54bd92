//! `alertgate check`: precise errors (file, line, key, what is expected) and exit codes.

use std::process::Command;

fn check(config_text: &str) -> (bool, String) {
    let config_text =
        &format!("{config_text}[compose]\nfrom = \"a@example.test\"\nto = \"glpi@example.test\"\n[relay]\nhost = \"127.0.0.1\"\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alertgate.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["check", "-c"])
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn unknown_key_and_bad_cidr_are_both_named() {
    let (ok, out) = check(
        "[server]\nlisten = [\"127.0.0.1:2525\"]\naccepted_recipients = [\"glpi@example.test\"]\n\
allowed_networks = [\"127.0.0.0/8\", \"10.1.2.0/40\"]\nmax_mesage_size = 100\n",
    );
    assert!(!ok, "check must fail: {out}");
    assert!(
        out.contains("alertgate.toml:5: `server.max_mesage_size`: unknown key"),
        "{out}"
    );
    assert!(
        out.contains("alertgate.toml:4: `server.allowed_networks`: `10.1.2.0/40` is not a network"),
        "{out}"
    );
    assert!(out.contains("expected CIDR"), "{out}");
    assert!(out.contains("2 problem(s) found"), "{out}");
}

#[test]
fn shipped_example_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["check", "-c", "examples/alertgate.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn syntax_error_and_bad_values_are_explained() {
    let (ok, out) =
        check("[server]\nlisten = [\"127.0.0.1\"]\naccepted_recipients = [\"not-an-address\"]\n");
    assert!(!ok);
    assert!(
        out.contains("`server.listen`: `127.0.0.1` is not a socket address (expected IP:PORT"),
        "{out}"
    );
    assert!(
        out.contains("`server.accepted_recipients`: `not-an-address` is not an address"),
        "{out}"
    );
    let (ok, out) = check("[server\nlisten = 1\n");
    assert!(!ok);
    assert!(out.contains("alertgate.toml:1"), "{out}");
}
