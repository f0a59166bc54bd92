//! The rule file format (serde schema of `rules/*.toml`) and its compiled form: every
//! regex built once, every capture name, default and map value checked at load time
//! with errors naming the file, rule and field.

use crate::alert::{AlertKind, InheritedField, NotificationType, State};
use regex::{Regex, RegexBuilder};

/// Lazy-DFA cache per compiled rule regex (and per thread using it).
const REGEX_DFA_CACHE_BYTES: usize = 128 * 1024;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Alert fields a rule can capture (named regex groups) or set as a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Host,
    Service,
    State,
    Type,
    Output,
    HostAlias,
    LongOutput,
    Author,
    Comment,
    Address,
    EventTime,
    VendorId,
    Url,
}

impl Field {
    pub const ALL: [Field; 13] = [
        Field::Host,
        Field::Service,
        Field::State,
        Field::Type,
        Field::Output,
        Field::HostAlias,
        Field::LongOutput,
        Field::Author,
        Field::Comment,
        Field::Address,
        Field::EventTime,
        Field::VendorId,
        Field::Url,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Host => "host",
            Field::Service => "service",
            Field::State => "state",
            Field::Type => "type",
            Field::Output => "output",
            Field::HostAlias => "host_alias",
            Field::LongOutput => "long_output",
            Field::Author => "author",
            Field::Comment => "comment",
            Field::Address => "address",
            Field::EventTime => "event_time",
            Field::VendorId => "vendor_id",
            Field::Url => "url",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn known_names() -> String {
        Field::ALL.map(Field::name).join(", ")
    }
}

/// Field values gathered while extracting; later layers overwrite only what they set.
#[derive(Debug, Clone, Default)]
pub struct Fields([Option<String>; 13]);

impl Fields {
    pub fn get(&self, field: Field) -> Option<&str> {
        self.0[field.index()].as_deref()
    }
    pub fn set(&mut self, field: Field, value: String) {
        self.0[field.index()] = Some(value);
    }
    pub fn set_if_absent(&mut self, field: Field, value: String) {
        let slot = &mut self.0[field.index()];
        if slot.is_none() {
            *slot = Some(value);
        }
    }
    pub fn overlay(&mut self, other: &Fields) {
        for field in Field::ALL {
            if let Some(value) = other.get(field) {
                self.set(field, value.to_string());
            }
        }
    }
}

// ---------------------------------------------------------------- file schema

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileSpec {
    pub source: String,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, rename = "match")]
    pub conditions: MatchSpec,
    #[serde(default)]
    pub extract: ExtractSpec,
    #[serde(default)]
    pub split: Option<SplitSpec>,
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
    #[serde(default)]
    pub map: MapSpec,
    /// State forced when the notification type is `recovery` (tools that print the
    /// problem's severity on their recovery mail).
    #[serde(default)]
    pub recovery_state: Option<String>,
    /// When no host is extracted, ask the store for the host of the mail this one
    /// replies to (In-Reply-To); leave it empty if unknown instead of failing.
    #[serde(default)]
    pub host_from_reply: bool,
    /// Fields a follow-up mail may lack (host, service, state): left for correlation to
    /// take from the incident whose mail this one replies to (In-Reply-To/References).
    #[serde(default)]
    pub inherit_from_reply: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub from: Option<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    #[serde(default)]
    pub subject: OneOrMany,
    #[serde(default)]
    pub body: OneOrMany,
}

/// Repeated sections: `block` marks where each block starts (one alert per block);
/// `section` marks headings whose captures apply to the blocks after them; `end`
/// cuts the last block; `extract` runs on each block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub block: String,
    #[serde(default)]
    pub section: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub extract: OneOrMany,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    #[serde(default)]
    pub state: BTreeMap<String, String>,
    #[serde(default, rename = "type")]
    pub notification_type: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> &[String] {
        match self {
            OneOrMany::None => &[],
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

// ---------------------------------------------------------------- load errors

/// One problem found while loading rules, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleLoadError {
    pub file: PathBuf,
    pub rule: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(rule) = &self.rule {
            write!(f, ": rule `{rule}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a set of rule directories.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleLoadErrors(pub Vec<RuleLoadError>);

impl fmt::Display for RuleLoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- compiled form

/// A regex plus the alert field each of its named groups fills.
#[derive(Debug, Clone)]
pub struct Extractor {
    pub label: String,
    pub regex: Regex,
    pub captures: Vec<(usize, Field)>,
}

impl Extractor {
    /// Sets (overwriting) every field whose group took part in the first match.
    /// Returns whether the regex matched.
    pub fn apply(&self, text: &str, fields: &mut Fields, overwrite: bool) -> bool {
        let Some(caps) = self.regex.captures(text) else {
            return false;
        };
        for (group, field) in &self.captures {
            if let Some(m) = caps.get(*group) {
                let value = m.as_str().trim().to_string();
                if overwrite {
                    fields.set(*field, value);
                } else {
                    fields.set_if_absent(*field, value);
                }
            }
        }
        true
    }
}

#[derive(Debug, Clone)]
pub enum Target {
    From,
    Subject,
    Body,
    Header(String),
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub label: String,
    pub target: Target,
    pub regex: Regex,
}

#[derive(Debug, Clone)]
pub struct CompiledSplit {
    pub block: Regex,
    pub section: Option<Extractor>,
    pub end: Option<Regex>,
    pub extract: Vec<Extractor>,
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub source: String,
    pub file: PathBuf,
    pub priority: i32,
    /// Cheapest first: headers, From, Subject, then body.
    pub conditions: Vec<Condition>,
    pub subject_extract: Vec<Extractor>,
    pub body_extract: Vec<Extractor>,
    pub split: Option<CompiledSplit>,
    pub defaults: Fields,
    pub default_kind: Option<AlertKind>,
    pub state_map: BTreeMap<String, State>,
    pub type_map: BTreeMap<String, NotificationType>,
    pub recovery_state: Option<State>,
    pub host_from_reply: bool,
    pub inherit_from_reply: Vec<InheritedField>,
}

/// Collects errors for one rule so that all of them are reported, not just the first.
struct RuleContext<'a> {
    file: &'a Path,
    rule: &'a str,
    errors: Vec<RuleLoadError>,
}

impl RuleContext<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(RuleLoadError {
            file: self.file.to_path_buf(),
            rule: Some(self.rule.to_string()),
            field: Some(field.into()),
            message: message.into(),
        });
    }

    fn regex(&mut self, field: &str, pattern: &str) -> Option<Regex> {
        // The lazy DFA's cache is per regex and per thread; with a hundred rule regexes
        // the 2 MiB default lets varied mail grow the process by hundreds of MB.
        match RegexBuilder::new(pattern)
            .multi_line(true)
            .dfa_size_limit(REGEX_DFA_CACHE_BYTES)
            .build()
        {
            Ok(regex) => Some(regex),
            Err(e) => {
                self.error(field, format!("invalid regex: {e}"));
                None
            }
        }
    }

    fn extractor(&mut self, field: &str, pattern: &str) -> Option<Extractor> {
        let regex = self.regex(field, pattern)?;
        let mut captures = Vec::new();
        let mut ok = true;
        for (index, name) in regex.capture_names().enumerate() {
            let Some(name) = name else { continue };
            match Field::from_name(name) {
                Some(f) => captures.push((index, f)),
                None => {
                    ok = false;
                    self.error(
                        field,
                        format!(
                            "unknown capture name `{name}` (known: {})",
                            Field::known_names()
                        ),
                    );
                }
            }
        }
        ok.then(|| Extractor {
            label: field.to_string(),
            regex,
            captures,
        })
    }

    fn extractors(&mut self, prefix: &str, patterns: &OneOrMany) -> Vec<Extractor> {
        patterns
            .items()
            .iter()
            .enumerate()
            .filter_map(|(i, p)| self.extractor(&format!("{prefix}[{i}]"), p))
            .collect()
    }
}

/// Compile one rule of a file; all problems are returned together.
pub fn compile_rule(
    spec: &RuleSpec,
    source: &str,
    file: &Path,
) -> Result<CompiledRule, Vec<RuleLoadError>> {
    let mut cx = RuleContext {
        file,
        rule: &spec.name,
        errors: Vec::new(),
    };
    let conditions = compile_conditions(&mut cx, &spec.conditions);
    let subject_extract = cx.extractors("extract.subject", &spec.extract.subject);
    let body_extract = cx.extractors("extract.body", &spec.extract.body);
    let split = spec.split.as_ref().and_then(|s| compile_split(&mut cx, s));
    let (defaults, default_kind) = compile_defaults(&mut cx, &spec.defaults);
    let state_map = compile_map(&mut cx, "map.state", &spec.map.state);
    let type_map = compile_map(&mut cx, "map.type", &spec.map.notification_type);
    let recovery_state = spec
        .recovery_state
        .as_deref()
        .and_then(|s| match s.parse() {
            Ok(state) => Some(state),
            Err(e) => {
                cx.error("recovery_state", e);
                None
            }
        });
    let inherit_from_reply = compile_inherit(&mut cx, spec);
    if spec.name.trim().is_empty() {
        cx.error("name", "rule name is empty");
    }
    if cx.errors.is_empty() {
        Ok(CompiledRule {
            name: spec.name.clone(),
            source: source.to_string(),
            file: file.to_path_buf(),
            priority: spec.priority,
            conditions,
            subject_extract,
            body_extract,
            split,
            defaults,
            default_kind,
            state_map,
            type_map,
            recovery_state,
            host_from_reply: spec.host_from_reply,
            inherit_from_reply,
        })
    } else {
        Err(cx.errors)
    }
}

/// `host_from_reply` is the older spelling of inheriting the host.
fn compile_inherit(cx: &mut RuleContext<'_>, spec: &RuleSpec) -> Vec<InheritedField> {
    let mut fields = Vec::new();
    if spec.host_from_reply {
        fields.push(InheritedField::Host);
    }
    for (i, word) in spec.inherit_from_reply.iter().enumerate() {
        match InheritedField::ALL
            .into_iter()
            .find(|f| f.as_str() == word.trim().to_ascii_lowercase())
        {
            Some(f) if !fields.contains(&f) => fields.push(f),
            Some(_) => {}
            None => cx.error(
                format!("inherit_from_reply[{i}]"),
                format!("`{word}` cannot be inherited (expected host, service or state)"),
            ),
        }
    }
    fields
}

fn compile_conditions(cx: &mut RuleContext<'_>, spec: &MatchSpec) -> Vec<Condition> {
    let mut wanted: Vec<(String, Target, &str)> = spec
        .headers
        .iter()
        .map(|(name, p)| {
            (
                format!("match.headers.{name}"),
                Target::Header(name.clone()),
                p.as_str(),
            )
        })
        .collect();
    for (label, target, pattern) in [
        ("match.from", Target::From, &spec.from),
        ("match.subject", Target::Subject, &spec.subject),
        ("match.body", Target::Body, &spec.body),
    ] {
        if let Some(p) = pattern {
            wanted.push((label.to_string(), target, p.as_str()));
        }
    }
    if wanted.is_empty() {
        cx.error(
            "match",
            "rule has no match condition (it would match every mail)",
        );
    }
    wanted
        .into_iter()
        .filter_map(|(label, target, pattern)| {
            let regex = cx.regex(&label, pattern)?;
            Some(Condition {
                label,
                target,
                regex,
            })
        })
        .collect()
}

fn compile_split(cx: &mut RuleContext<'_>, spec: &SplitSpec) -> Option<CompiledSplit> {
    let block = cx.regex("split.block", &spec.block);
    let section = spec
        .section
        .as_deref()
        .map(|p| cx.extractor("split.section", p));
    let end = spec.end.as_deref().map(|p| cx.regex("split.end", p));
    let extract = cx.extractors("split.extract", &spec.extract);
    Some(CompiledSplit {
        block: block?,
        section: section.map(|s| s.ok_or(())).transpose().ok()?,
        end: end.map(|e| e.ok_or(())).transpose().ok()?,
        extract,
    })
}

fn compile_defaults(
    cx: &mut RuleContext<'_>,
    spec: &BTreeMap<String, String>,
) -> (Fields, Option<AlertKind>) {
    let mut fields = Fields::default();
    let mut kind = None;
    for (key, value) in spec {
        let label = format!("defaults.{key}");
        if key == "kind" {
            match value.to_ascii_lowercase().as_str() {
                "host" => kind = Some(AlertKind::Host),
                "service" => kind = Some(AlertKind::Service),
                _ => cx.error(label, format!("kind `{value}` must be `host` or `service`")),
            }
            continue;
        }
        let Some(field) = Field::from_name(key) else {
            cx.error(
                label,
                format!("unknown field (known: kind, {})", Field::known_names()),
            );
            continue;
        };
        let valid = match field {
            Field::State => value.parse::<State>().map(|_| ()),
            Field::Type => value.parse::<NotificationType>().map(|_| ()),
            _ => Ok(()),
        };
        match valid {
            Ok(()) => fields.set(field, value.clone()),
            Err(e) => cx.error(label, e),
        }
    }
    (fields, kind)
}

fn compile_map<T: std::str::FromStr<Err = String>>(
    cx: &mut RuleContext<'_>,
    label: &str,
    spec: &BTreeMap<String, String>,
) -> BTreeMap<String, T> {
    let mut map = BTreeMap::new();
    for (word, target) in spec {
        match target.parse::<T>() {
            Ok(value) => {
                map.insert(word.trim().to_lowercase(), value);
            }
            Err(e) => cx.error(format!("{label}.{word}"), e),
        }
    }
    map
}
