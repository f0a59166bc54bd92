//! The Debian package: `cargo deb` builds it, `dpkg -i` installs it (system user, store
//! directory, conffile checked by postinst), `systemd-analyze verify` accepts the unit
//! and `alertgate check` passes on the installed configuration; then it is purged.
//! Needs root and cargo-deb (both in CI, where `.ci/run` installs cargo-deb); elsewhere
//! the test says why it skips.

use std::path::Path;
use std::process::{Command, Output};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn skip_unless_possible() -> bool {
    let in_ci = std::env::var_os("CI").is_some();
    let root = run("id", &["-u"]).stdout == b"0\n";
    let cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let dpkg = Path::new("/usr/bin/dpkg").exists();
    let missing: Vec<&str> = [
        (!root, "root (dpkg -i)"),
        (
            !cargo_deb,
            "cargo-deb (cargo install cargo-deb --locked; .ci/run does)",
        ),
        (!dpkg, "dpkg"),
    ]
    .into_iter()
    .filter_map(|(m, what)| m.then_some(what))
    .collect();
    if missing.is_empty() {
        return false;
    }
    assert!(
        !in_ci,
        "the .deb test cannot run in CI; missing: {missing:?}"
    );
    eprintln!("SKIPPED debian_package: needs {}", missing.join(", "));
    true
}

#[test]
fn deb_builds_installs_and_its_unit_verifies() {
    if skip_unless_possible() {
        return;
    }
    let repo = env!("CARGO_MANIFEST_DIR");
    let out_dir = tempfile::tempdir().unwrap();
    let deb = out_dir.path().join("alertgate.deb");
    let deb_path = deb.to_str().unwrap();
    // The binary `cargo test` just built (dev profile); README documents the release
    // build, `cargo deb`, which is the same packaging with an optimized binary.
    let built = Command::new("cargo")
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "-o",
            deb_path,
        ])
        .current_dir(repo)
        .output()
        .expect("cargo deb");
    ok(&built);

    let contents = ok(&run("dpkg-deb", &["-c", deb_path]));
    for path in [
        "./usr/bin/alertgate",
        "./etc/alertgate/alertgate.toml",
        "./usr/share/alertgate/rules/centreon.toml",
        "./usr/lib/systemd/system/alertgate.service",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }

    let installed = ok(&run("dpkg", &["-i", deb_path]));
    let result = std::panic::catch_unwind(|| {
        assert!(
            installed.contains("/etc/alertgate/alertgate.toml: ok"),
            "postinst did not check the config:\n{installed}"
        );
        let conffiles = ok(&run("dpkg-query", &["-W", "-f=${Conffiles}", "alertgate"]));
        assert!(
            conffiles.contains("/etc/alertgate/alertgate.toml"),
            "{conffiles}"
        );
        let user = ok(&run("getent", &["passwd", "alertgate"]));
        assert!(user.contains("/var/lib/alertgate"), "{user}");
        assert!(Path::new("/var/lib/alertgate").is_dir());
        ok(&run(
            "systemd-analyze",
            &["verify", "/usr/lib/systemd/system/alertgate.service"],
        ));
        let unit = std::fs::read_to_string("/usr/lib/systemd/system/alertgate.service").unwrap();
        for line in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "ProtectSystem=strict",
            "StateDirectory=alertgate",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing");
        }
        let check = ok(&run(
            "/usr/bin/alertgate",
            &["check", "-c", "/etc/alertgate/alertgate.toml"],
        ));
        assert!(check.contains(": ok"), "{check}");
    });
    let purged = run("dpkg", &["--purge", "alertgate"]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    ok(&purged);
    assert!(!Path::new("/usr/bin/alertgate").exists());
    assert!(
        run("getent", &["passwd", "alertgate"]).stdout.is_empty(),
        "user left after purge"
    );
}
