//! Rule loading and matching: `rules/*.toml` → compiled rules → `Alert`s from a raw mail.
//! Owns the rule file format, layering of rule directories, matching a decoded mail
//! (`crate::mail`), and the distinction between "no rule", "extraction failed" and
//! "undecodable".

pub mod cli;
pub mod expect;
mod extract;
pub mod rule;

use crate::alert::Alert;
use rule::{compile_rule, CompiledRule, RuleFileSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::mail::{decode, DecodeError, DecodedMail};
pub use rule::{RuleLoadError, RuleLoadErrors};

/// What the pipeline knows that a mail alone does not (e.g. a Zabbix update mail
/// names no host; the problem it replies to does).
pub trait ParseContext {
    fn host_for_message_id(&self, message_id: &str) -> Option<String>;
}

/// A context that knows nothing: `parse` CLI, tests, benchmarks.
pub struct NoContext;

impl ParseContext for NoContext {
    fn host_for_message_id(&self, _message_id: &str) -> Option<String> {
        None
    }
}

/// A rule that almost matched, for "no rule matched" reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NearMiss {
    pub rule: String,
    pub file: String,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
}

/// Why a mail produced no alert. The pipeline applies its unmatched-mail policy
/// to `NoRuleMatched`; the other two are reported as faults.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no rule matched")]
    NoRuleMatched { nearest: Vec<NearMiss> },
    #[error("rule `{rule}` matched but extraction failed: {why}")]
    Extraction { rule: String, why: String },
    #[error("undecodable mail: {0}")]
    Undecodable(#[from] DecodeError),
}

/// Outcome of one match condition of one rule, for `--explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionResult {
    pub condition: String,
    pub passed: bool,
}

/// One rule's verdict on a mail, for `--explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    pub rule: String,
    pub file: PathBuf,
    pub conditions: Vec<ConditionResult>,
}

impl RuleTrace {
    pub fn matched(&self) -> bool {
        self.conditions.iter().all(|c| c.passed)
    }
}

/// All rules from the layered directories, compiled once, in match order
/// (descending priority, then name). Shared read-only between workers.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// Load `*.toml` from each directory in order; a rule in a later directory
    /// replaces the rule of the same name from an earlier one.
    pub fn load(dirs: &[PathBuf]) -> Result<RuleSet, RuleLoadErrors> {
        let mut errors = Vec::new();
        let mut by_name: HashMap<String, CompiledRule> = HashMap::new();
        for dir in dirs {
            let layer = load_dir(dir, &mut errors);
            for rule in layer {
                by_name.insert(rule.name.clone(), rule);
            }
        }
        if !errors.is_empty() {
            return Err(RuleLoadErrors(errors));
        }
        let mut rules: Vec<CompiledRule> = by_name.into_values().collect();
        rules.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(RuleSet { rules })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Names of the loaded rules, in match order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Decode, find the first matching rule, extract one alert (or one per block).
    pub fn parse(&self, raw: &[u8], ctx: &dyn ParseContext) -> Result<Vec<Alert>, ParseError> {
        let mail = decode(raw)?;
        self.parse_decoded(&mail, ctx)
    }

    /// Same as `parse` on an already decoded mail.
    pub fn parse_decoded(
        &self,
        mail: &DecodedMail,
        ctx: &dyn ParseContext,
    ) -> Result<Vec<Alert>, ParseError> {
        if !mail.has_text() {
            return Err(ParseError::Undecodable(DecodeError::NoText));
        }
        match self.rules.iter().find(|rule| extract::matches(rule, mail)) {
            Some(rule) => extract::extract(rule, mail, ctx),
            None => Err(ParseError::NoRuleMatched {
                nearest: self.nearest(mail, 3),
            }),
        }
    }

    /// Every rule's condition results on this mail, in match order.
    pub fn explain(&self, mail: &DecodedMail) -> Vec<RuleTrace> {
        self.rules
            .iter()
            .map(|rule| RuleTrace {
                rule: rule.name.clone(),
                file: rule.file.clone(),
                conditions: extract::evaluate(rule, mail),
            })
            .collect()
    }

    /// The rules that passed the most conditions (at least one).
    fn nearest(&self, mail: &DecodedMail, count: usize) -> Vec<NearMiss> {
        let mut misses: Vec<NearMiss> = self
            .explain(mail)
            .into_iter()
            .map(|trace| {
                let (passed, failed): (Vec<_>, Vec<_>) =
                    trace.conditions.into_iter().partition(|c| c.passed);
                NearMiss {
                    rule: trace.rule,
                    file: trace.file.display().to_string(),
                    passed: passed.into_iter().map(|c| c.condition).collect(),
                    failed: failed.into_iter().map(|c| c.condition).collect(),
                }
            })
            .filter(|m| !m.passed.is_empty())
            .collect();
        // Stable sort keeps priority order among equally near rules.
        misses.sort_by(|a, b| {
            b.passed
                .len()
                .cmp(&a.passed.len())
                .then(a.failed.len().cmp(&b.failed.len()))
        });
        misses.truncate(count);
        misses
    }
}

/// Load one directory; a duplicate rule name inside one layer is an error naming both files.
fn load_dir(dir: &Path, errors: &mut Vec<RuleLoadError>) -> Vec<CompiledRule> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(RuleLoadError {
                file: dir.to_path_buf(),
                rule: None,
                field: None,
                message: format!("cannot read rule directory: {e}"),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    let mut rules = Vec::new();
    for file in files {
        for rule in load_file(&file, errors) {
            if let Some(first) = seen.get(&rule.name) {
                errors.push(RuleLoadError {
                    file: file.clone(),
                    rule: Some(rule.name.clone()),
                    field: Some("name".into()),
                    message: format!("duplicate rule name, also defined in {}", first.display()),
                });
                continue;
            }
            seen.insert(rule.name.clone(), file.clone());
            rules.push(rule);
        }
    }
    rules
}

fn load_file(file: &Path, errors: &mut Vec<RuleLoadError>) -> Vec<CompiledRule> {
    let file_error = |message: String| RuleLoadError {
        file: file.to_path_buf(),
        rule: None,
        field: None,
        message,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            errors.push(file_error(format!("cannot read: {e}")));
            return Vec::new();
        }
    };
    let spec: RuleFileSpec = match toml::from_str(&text) {
        Ok(spec) => spec,
        Err(e) => {
            errors.push(file_error(format!(
                "invalid rule file: {}",
                e.to_string().trim_end()
            )));
            return Vec::new();
        }
    };
    if spec.source.trim().is_empty() {
        errors.push(file_error("`source` is empty".into()));
    }
    spec.rules
        .iter()
        .filter_map(|r| {
            compile_rule(r, &spec.source, file)
                .map_err(|e| errors.extend(e))
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            let mut f = std::fs::File::create(dir.path().join(name)).expect("create");
            f.write_all(text.as_bytes()).expect("write");
        }
        dir
    }

    const SIMPLE: &str = r#"
source = "t"
[[rule]]
name = "r1"
match.subject = '^ALERT'
extract.subject = 'ALERT (?P<host>\S+) (?P<state>\S+)'
defaults.type = "problem"
"#;

    #[test]
    fn later_directory_overrides_rule_of_same_name() {
        let shipped = dir_with(&[("a.toml", SIMPLE)]);
        let user = dir_with(&[("b.toml", &SIMPLE.replace("'^ALERT'", "'^ALERT X'"))]);
        let set = RuleSet::load(&[shipped.path().into(), user.path().into()]).expect("loads");
        assert_eq!(set.len(), 1);
        let raw = b"Subject: ALERT h1 critical\r\n\r\nx\r\n";
        assert!(matches!(
            set.parse(raw, &NoContext),
            Err(ParseError::NoRuleMatched { .. })
        ));
    }

    #[test]
    fn duplicate_in_same_layer_names_both_files() {
        let dir = dir_with(&[("a.toml", SIMPLE), ("b.toml", SIMPLE)]);
        let err = RuleSet::load(&[dir.path().into()]).expect_err("duplicate");
        let text = err.to_string();
        assert!(
            text.contains("b.toml: rule `r1`: `name`: duplicate rule name, also defined in"),
            "{text}"
        );
        assert!(text.contains("a.toml"), "{text}");
    }

    #[test]
    fn all_errors_of_a_rule_are_reported() {
        let bad = r#"
source = "t"
[[rule]]
name = "bad"
match.subject = '(unclosed'
extract.body = ['(?P<hots>x)', 'ok']
defaults.state = "broken"
map.type.FOO = "nope"
"#;
        let dir = dir_with(&[("bad.toml", bad)]);
        let errors = RuleSet::load(&[dir.path().into()]).expect_err("bad").0;
        let fields: Vec<_> = errors.iter().filter_map(|e| e.field.clone()).collect();
        assert_eq!(
            fields,
            [
                "match.subject",
                "extract.body[0]",
                "defaults.state",
                "map.type.FOO"
            ]
        );
        assert!(errors[1].message.contains("unknown capture name `hots`"));
    }

    #[test]
    fn rules_are_tried_by_descending_priority() {
        let two = r#"
source = "t"
[[rule]]
name = "low"
priority = 1
match.subject = 'ALERT'
extract.subject = 'ALERT (?P<host>\S+)'
defaults = { state = "warning", type = "problem" }
[[rule]]
name = "high"
priority = 10
match.subject = 'ALERT'
extract.subject = 'ALERT (?P<host>\S+)'
defaults = { state = "critical", type = "problem" }
"#;
        let dir = dir_with(&[("t.toml", two)]);
        let set = RuleSet::load(&[dir.path().into()]).expect("loads");
        let alerts = set
            .parse(b"Subject: ALERT h\r\n\r\nb\r\n", &NoContext)
            .expect("parses");
        assert_eq!(alerts[0].rule, "high");
    }
}
