//! `alertgate rules test`: mails kept next to what their rules must make of them
//! (`NAME.eml` + `NAME.expected.toml`), compared field by field, so users and the
//! project keep regression tests for their rules.

use super::cli::parse_lines;
use super::RuleSet;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Fields an expectation may name (an alert's JSON fields, plus `error` for a mail that
/// must not match).
const FIELDS: &[&str] = &[
    "source",
    "kind",
    "host",
    "service",
    "state",
    "notification_type",
    "output",
    "host_alias",
    "long_output",
    "author",
    "comment",
    "address",
    "event_time",
    "vendor_id",
    "url",
    "rule",
    "error",
];

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// 1-based alert number within the mail.
    pub alert: usize,
    pub field: String,
    pub expected: String,
    pub found: String,
}

/// The verdict on one mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass {
        alerts: usize,
    },
    Fail(Vec<Miss>),
    /// The expectation file itself is wrong.
    Invalid(String),
    /// A mail without an expectation file: listed, not failed.
    NoExpectation,
}

/// Mails of a directory (sorted) with their verdicts.
pub fn test_dir(rules: &RuleSet, dir: &Path) -> std::io::Result<Vec<(PathBuf, Verdict)>> {
    let mut mails: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    mails.sort();
    Ok(mails
        .into_iter()
        .map(|mail| {
            let verdict = test_mail(rules, &mail);
            (mail, verdict)
        })
        .collect())
}

/// `NAME.eml` → `NAME.expected.toml`.
pub fn expectation_path(mail: &Path) -> PathBuf {
    mail.with_extension("expected.toml")
}

fn test_mail(rules: &RuleSet, mail: &Path) -> Verdict {
    let expected_path = expectation_path(mail);
    let text = match std::fs::read_to_string(&expected_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Verdict::NoExpectation,
        Err(e) => return Verdict::Invalid(format!("{}: {e}", expected_path.display())),
    };
    let expected = match parse_expectation(&text) {
        Ok(expected) => expected,
        Err(why) => return Verdict::Invalid(format!("{}: {why}", expected_path.display())),
    };
    let found = match std::fs::read(mail) {
        Ok(raw) => parse_lines(rules, &mail.display().to_string(), &raw),
        Err(e) => return Verdict::Invalid(format!("{}: {e}", mail.display())),
    };
    let misses = compare(&expected, &found);
    if misses.is_empty() {
        Verdict::Pass {
            alerts: found.len(),
        }
    } else {
        Verdict::Fail(misses)
    }
}

/// One table of fields per expected alert: the top level, or each `[[alert]]`.
pub fn parse_expectation(text: &str) -> Result<Vec<toml::Table>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
    let alerts = match table.get("alert") {
        Some(toml::Value::Array(items)) => {
            if table.len() > 1 {
                return Err("put every field inside the [[alert]] tables".into());
            }
            items
                .iter()
                .map(|item| match item {
                    toml::Value::Table(t) => Ok(t.clone()),
                    _ => Err("`alert` must be a list of tables ([[alert]])".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err("`alert` must be a list of tables ([[alert]])".into()),
        None => vec![table],
    };
    for alert in &alerts {
        for (key, value) in alert {
            if !FIELDS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown field `{key}` (expected one of {})",
                    FIELDS.join(", ")
                ));
            }
            if !value.is_str() {
                return Err(format!("`{key}` must be a string"));
            }
        }
    }
    Ok(alerts)
}

/// Every field that differs, and a missing or extra alert as a `count` miss.
pub fn compare(expected: &[toml::Table], found: &[Value]) -> Vec<Miss> {
    let mut misses = Vec::new();
    if expected.len() != found.len() {
        misses.push(Miss {
            alert: 0,
            field: "alerts".into(),
            expected: expected.len().to_string(),
            found: found.len().to_string(),
        });
    }
    for (i, (want, got)) in expected.iter().zip(found).enumerate() {
        if let (None, Some(error)) = (want.get("error"), got.get("error")) {
            let why = got
                .get("why")
                .and_then(Value::as_str)
                .map(|w| format!(": {w}"))
                .unwrap_or_default();
            misses.push(Miss {
                alert: i + 1,
                field: "error".into(),
                expected: String::new(),
                found: format!("{}{why}", error.as_str().unwrap_or_default()),
            });
            continue;
        }
        for (field, value) in want {
            let want = value.as_str().unwrap_or_default();
            let got = match got.get(field) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            if want != got {
                misses.push(Miss {
                    alert: i + 1,
                    field: field.clone(),
                    expected: want.to_string(),
                    found: got,
                });
            }
        }
    }
    misses
}

/// Print the report; Ok(true) when no mail failed.
pub fn run(rule_dirs: &[PathBuf], dir: &Path) -> anyhow::Result<bool> {
    let rules = RuleSet::load(rule_dirs).map_err(|e| anyhow::anyhow!("cannot load rules:\n{e}"))?;
    let verdicts =
        test_dir(&rules, dir).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    let (mut passed, mut failed, mut untested) = (0, 0, 0);
    for (mail, verdict) in &verdicts {
        let name = mail.display();
        match verdict {
            Verdict::Pass { alerts } => {
                passed += 1;
                println!("ok    {name} ({alerts} alert(s))");
            }
            Verdict::Fail(misses) => {
                failed += 1;
                println!("FAIL  {name}");
                for m in misses {
                    if m.alert == 0 {
                        println!(
                            "        number of alerts: expected {}, found {}",
                            m.expected, m.found
                        );
                    } else {
                        println!(
                            "        alert {} {}: expected {:?}, found {:?}",
                            m.alert, m.field, m.expected, m.found
                        );
                    }
                }
            }
            Verdict::Invalid(why) => {
                failed += 1;
                println!("FAIL  {name}: bad expectation: {why}");
            }
            Verdict::NoExpectation => {
                untested += 1;
                println!(
                    "skip  {name}: no {}",
                    expectation_path(mail)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed, {untested} without expectation");
    if verdicts.is_empty() {
        println!("no .eml files in {}", dir.display());
    }
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_alert_or_a_list() {
        let one = parse_expectation("host = \"h\"\nstate = \"ok\"\n").expect("one");
        assert_eq!(one.len(), 1);
        let two =
            parse_expectation("[[alert]]\nhost = \"a\"\n[[alert]]\nhost = \"b\"\n").expect("two");
        assert_eq!(two.len(), 2);
        let bad = parse_expectation("hots = \"h\"\n").expect_err("typo");
        assert!(bad.contains("unknown field `hots`"), "{bad}");
    }

    #[test]
    fn each_wrong_field_is_reported_with_both_values() {
        let expected = parse_expectation("host = \"h\"\nstate = \"critical\"\n").expect("parses");
        let found = [json!({"host": "h", "state": "warning"})];
        assert_eq!(
            compare(&expected, &found),
            [Miss {
                alert: 1,
                field: "state".into(),
                expected: "critical".into(),
                found: "warning".into()
            }]
        );
        let none: [Value; 0] = [];
        assert_eq!(compare(&expected, &none)[0].field, "alerts");
    }
}
