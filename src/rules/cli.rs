//! `alertgate parse` and the rule part of `alertgate check`: the rule author's tools,
//! one JSON line per alert or error, and per-condition traces on request.

use super::{decode, NoContext, ParseError, RuleSet};
use crate::alert::Alert;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::PathBuf;

/// `alertgate parse`: prints one JSON line per alert (or error) per file.
/// Returns Ok(true) when every file matched.
pub fn run_parse(rule_dirs: &[PathBuf], files: &[PathBuf], explain: bool) -> anyhow::Result<bool> {
    let rules = RuleSet::load(rule_dirs).map_err(|e| anyhow::anyhow!("cannot load rules:\n{e}"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut all_matched = true;
    for file in files {
        let name = file.display().to_string();
        let lines = match std::fs::read(file) {
            Ok(raw) => {
                if explain {
                    print_explanation(&rules, &name, &raw);
                }
                parse_lines(&rules, &name, &raw)
            }
            Err(e) => vec![json!({"file": name, "error": "unreadable", "why": e.to_string()})],
        };
        for line in lines {
            all_matched &= line.get("error").is_none();
            writeln!(out, "{line}")?;
        }
    }
    Ok(all_matched)
}

/// The JSON lines for one mail: one per alert, or one describing the error.
pub fn parse_lines(rules: &RuleSet, file: &str, raw: &[u8]) -> Vec<Value> {
    match rules.parse(raw, &NoContext) {
        Ok(alerts) => alerts
            .iter()
            .map(|alert| {
                let mut object = Map::new();
                object.insert("file".into(), json!(file));
                object.extend(alert_fields(alert));
                Value::Object(object)
            })
            .collect(),
        Err(ParseError::NoRuleMatched { nearest }) => {
            vec![json!({"file": file, "error": "no rule matched", "nearest": nearest})]
        }
        Err(ParseError::Extraction { rule, why }) => {
            vec![json!({"file": file, "error": "extraction failed", "rule": rule, "why": why})]
        }
        Err(ParseError::Undecodable(why)) => {
            vec![json!({"file": file, "error": "undecodable", "why": why.to_string()})]
        }
    }
}

/// An alert as JSON fields; a field left to the incident it replies to reads `unknown`.
fn alert_fields(alert: &Alert) -> Map<String, Value> {
    let mut fields = match serde_json::to_value(alert) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    for field in &alert.inherits {
        fields.insert(field.as_str().into(), json!("unknown"));
    }
    fields
}

fn print_explanation(rules: &RuleSet, file: &str, raw: &[u8]) {
    let mail = match decode(raw).and_then(|mail| match mail.has_text() {
        true => Ok(mail),
        false => Err(crate::mail::DecodeError::NoText),
    }) {
        Ok(mail) => mail,
        Err(e) => {
            eprintln!("{file}: undecodable: {e}");
            return;
        }
    };
    eprintln!("{file}: subject: {:?}", mail.subject);
    eprintln!("{file}: from: {:?}", mail.from);
    let mut decided = false;
    for trace in rules.explain(&mail) {
        let verdict = match (trace.matched(), decided) {
            (true, false) => "MATCH (used)",
            (true, true) => "match (shadowed by an earlier rule)",
            (false, _) => "no match",
        };
        decided |= trace.matched();
        eprintln!(
            "  rule `{}` ({}): {verdict}",
            trace.rule,
            trace.file.display()
        );
        for c in &trace.conditions {
            eprintln!(
                "    {} {}",
                if c.passed { "pass" } else { "FAIL" },
                c.condition
            );
        }
    }
    if let Ok(alerts) = rules.parse_decoded(&mail, &NoContext) {
        for field in alerts.iter().flat_map(|a| &a.inherits) {
            eprintln!(
                "{file}: {}: not in this mail; the gateway will inherit it from the open incident \
                 whose mail this one replies to (In-Reply-To/References)",
                field.as_str()
            );
        }
    }
}

/// Validate rule directories for `alertgate check`; one precise message per problem.
pub fn check_rule_dirs(rule_dirs: &[PathBuf]) -> Vec<String> {
    match RuleSet::load(rule_dirs) {
        Ok(set) if set.is_empty() => vec![format!(
            "no rules found in {}",
            rule_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )],
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}
