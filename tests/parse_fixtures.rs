//! Runs the real `alertgate parse` binary over every tests/fixtures/<tool>/*.eml and
//! compares its JSON lines with the expected <name>.json next to each mail.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/fixtures"))
        .expect("fixtures dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn emls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("tool dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_fixture_parses_to_its_expected_alerts() {
    let dirs = fixture_dirs();
    let tools: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for tool in [
        "alertmanager",
        "centreon",
        "icinga",
        "nagios",
        "vrops",
        "zabbix",
    ] {
        assert!(tools.iter().any(|t| t == tool), "no fixtures for {tool}");
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in &dirs {
        let names = emls(dir);
        assert!(
            names.len() >= 4,
            "{} has only {} fixtures",
            dir.display(),
            names.len()
        );
        let output = Command::new(env!("CARGO_BIN_EXE_alertgate"))
            .current_dir(dir)
            .arg("parse")
            .arg("--rules")
            .arg(repo().join("rules"))
            .args(&names)
            .output()
            .expect("run alertgate parse");
        assert!(
            output.status.success(),
            "alertgate parse failed in {}: {}\n{}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        let actual = json_lines(&String::from_utf8_lossy(&output.stdout));
        for name in &names {
            // Newer fixtures have only a NAME.expected.toml (tests/rules_test_command.rs).
            let expected_path = dir.join(name.replace(".eml", ".json"));
            let Ok(expected_text) = std::fs::read_to_string(&expected_path) else {
                continue;
            };
            let expected = json_lines(&expected_text);
            let got: Vec<Value> = actual
                .iter()
                .filter(|v| v["file"] == name.as_str())
                .cloned()
                .collect();
            if got != expected {
                failures.push(format!(
                    "{}/{name}\n  expected: {expected:?}\n  got:      {got:?}",
                    dir.display()
                ));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} fixtures differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn unmatched_mail_names_nearest_rules_and_failed_conditions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mail = dir.path().join("odd.eml");
    std::fs::write(
        &mail,
        "From: nagios@x\r\nSubject: ** PROBLEM Service Alert: h/s is CRITICAL **\r\n\r\nsomething else\r\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["parse", "--explain", "--rules"])
        .arg(repo().join("rules"))
        .arg(&mail)
        .output()
        .expect("run");
    assert!(
        !output.status.success(),
        "unmatched mail must make parse fail"
    );
    let lines = json_lines(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["error"], "no rule matched");
    let nearest = lines[0]["nearest"].as_array().expect("nearest list");
    assert_eq!(nearest[0]["rule"], "nagios-service");
    assert_eq!(nearest[0]["passed"], serde_json::json!(["match.subject"]));
    assert_eq!(nearest[0]["failed"], serde_json::json!(["match.body"]));
    let explain = String::from_utf8_lossy(&output.stderr);
    assert!(explain.contains("rule `nagios-service`"), "{explain}");
    assert!(explain.contains("FAIL match.body"), "{explain}");
}

#[test]
fn extraction_failure_and_undecodable_are_reported_distinctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let no_host = dir.path().join("nohost.eml");
    std::fs::write(
        &no_host,
        "Subject: ** PROBLEM Service Alert: h/s is CRITICAL **\r\n\r\n***** Nagios *****\r\n\r\nNotification Type: PROBLEM\r\nState: CRITICAL\r\n",
    )
    .expect("write");
    let garbage = dir.path().join("garbage.eml");
    std::fs::write(&garbage, b"").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["parse", "--rules"])
        .arg(repo().join("rules"))
        .arg(&no_host)
        .arg(&garbage)
        .output()
        .expect("run");
    let lines = json_lines(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(lines[0]["error"], "extraction failed");
    assert_eq!(lines[0]["rule"], "nagios-service");
    assert!(lines[0]["why"]
        .as_str()
        .unwrap_or_default()
        .contains("no `host` extracted"));
    assert_eq!(lines[1]["error"], "undecodable");
}
