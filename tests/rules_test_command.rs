//! `alertgate rules test`: every shipped fixture passes against its NAME.expected.toml,
//! and a wrong expectation names the field, the expected and the found value, exit 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules_test(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["rules", "test", "--rules"])
        .arg(repo().join("rules"))
        .arg(dir)
        .output()
        .expect("run alertgate rules test")
}

#[test]
fn every_fixture_of_every_tool_passes_rules_test() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures"))
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let tools: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for tool in [
        "checkmk",
        "grafana",
        "librenms",
        "prtg",
        "uptime-kuma",
        "vrops",
        "zabbix",
    ] {
        assert!(tools.iter().any(|t| t == tool), "no fixtures for {tool}");
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        let out = rules_test(dir);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.contains("\nskip ") || stdout.starts_with("skip ") {
            failures.push(format!(
                "{}:\n{stdout}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        assert!(
            stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 4,
            "{} has too few fixtures:\n{stdout}",
            dir.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_wrong_expectation_prints_field_expected_found_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = repo().join("tests/fixtures/zabbix");
    for name in ["problem", "recovery"] {
        std::fs::copy(
            fixtures.join(format!("{name}.eml")),
            dir.path().join(format!("{name}.eml")),
        )
        .expect("copy mail");
    }
    std::fs::copy(
        fixtures.join("recovery.expected.toml"),
        dir.path().join("recovery.expected.toml"),
    )
    .expect("copy expectation");
    let wrong = std::fs::read_to_string(fixtures.join("problem.expected.toml"))
        .expect("read")
        .replace("state = \"critical\"", "state = \"warning\"");
    assert!(wrong.contains("state = \"warning\""), "{wrong}");
    std::fs::write(dir.path().join("problem.expected.toml"), wrong).expect("write");

    let out = rules_test(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  "), "{stdout}");
    assert!(
        stdout.contains("alert 1 state: expected \"warning\", found \"critical\""),
        "{stdout}"
    );
    assert!(stdout.contains("ok    "), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn parse_reports_inherited_fields_as_unknown_and_explains() {
    let out = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["parse", "--explain", "--rules"])
        .arg(repo().join("rules"))
        .arg(repo().join("tests/fixtures/zabbix/update-ack.eml"))
        .output()
        .expect("run");
    let line: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON line on stdout");
    assert_eq!(line["host"], "unknown");
    assert_eq!(line["state"], "unknown");
    let explain = String::from_utf8_lossy(&out.stderr);
    assert!(
        explain.contains("host: not in this mail; the gateway will inherit it"),
        "{explain}"
    );
    assert!(explain.contains("state: not in this mail"), "{explain}");
}
