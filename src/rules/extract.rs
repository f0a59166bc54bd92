//! Applying one compiled rule to a decoded mail: match conditions, extraction of
//! fields (with repeated blocks), mapping of the tool's words, and building `Alert`s.

use super::rule::{CompiledRule, CompiledSplit, Condition, Field, Fields, Target};
use super::{ConditionResult, DecodedMail, ParseContext, ParseError};
use crate::alert::{Alert, AlertKind, InheritedField, NotificationType, State};
use regex::Regex;
use std::sync::OnceLock;

fn target_text<'m>(condition: &Condition, mail: &'m DecodedMail) -> Option<&'m str> {
    match &condition.target {
        Target::From => Some(&mail.from),
        Target::Subject => Some(&mail.subject),
        Target::Body => Some(&mail.body),
        Target::Header(name) => mail.header(name),
    }
}

fn condition_holds(condition: &Condition, mail: &DecodedMail) -> bool {
    target_text(condition, mail).is_some_and(|text| condition.regex.is_match(text))
}

/// All conditions hold (short-circuits; conditions are stored cheapest first).
pub fn matches(rule: &CompiledRule, mail: &DecodedMail) -> bool {
    rule.conditions.iter().all(|c| condition_holds(c, mail))
}

/// Every condition's result, without short-circuit.
pub fn evaluate(rule: &CompiledRule, mail: &DecodedMail) -> Vec<ConditionResult> {
    rule.conditions
        .iter()
        .map(|c| ConditionResult {
            condition: c.label.clone(),
            passed: condition_holds(c, mail),
        })
        .collect()
}

/// Extract the alert(s) of a mail this rule matched.
pub fn extract(
    rule: &CompiledRule,
    mail: &DecodedMail,
    ctx: &dyn ParseContext,
) -> Result<Vec<Alert>, ParseError> {
    let mut group = Fields::default();
    let mut matched = Vec::new();
    for extractor in &rule.subject_extract {
        if extractor.apply(&mail.subject, &mut group, false) {
            matched.push(extractor.label.as_str());
        }
    }
    for extractor in &rule.body_extract {
        if extractor.apply(&mail.body, &mut group, false) {
            matched.push(extractor.label.as_str());
        }
    }
    let field_sets = match &rule.split {
        None => vec![group],
        Some(split) => split_blocks(rule, split, &mail.body, &group)?,
    };
    field_sets
        .into_iter()
        .map(|fields| {
            build_alert(rule, fields, mail, ctx).map_err(|why| ParseError::Extraction {
                rule: rule.name.clone(),
                why: format!(
                    "{why} (extractions that matched: {})",
                    list_or_none(&matched)
                ),
            })
        })
        .collect()
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// One field set per block; block captures override section captures, which override
/// the group-level ones.
fn split_blocks(
    rule: &CompiledRule,
    split: &CompiledSplit,
    body: &str,
    group: &Fields,
) -> Result<Vec<Fields>, ParseError> {
    let limit = split
        .end
        .as_ref()
        .and_then(|end| end.find(body))
        .map_or(body.len(), |m| m.start());
    let body = &body[..limit];
    let starts: Vec<usize> = split.block.find_iter(body).map(|m| m.start()).collect();
    if starts.is_empty() {
        return Err(ParseError::Extraction {
            rule: rule.name.clone(),
            why: "split.block found no block in the body".to_string(),
        });
    }
    let sections = section_fields(split, body);
    let mut sets = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(body.len());
        let mut fields = group.clone();
        if let Some((_, section)) = sections.iter().rev().find(|(pos, _)| *pos <= start) {
            fields.overlay(section);
        }
        let mut block_fields = Fields::default();
        for extractor in &split.extract {
            extractor.apply(&body[start..end], &mut block_fields, false);
        }
        fields.overlay(&block_fields);
        sets.push(fields);
    }
    Ok(sets)
}

fn section_fields(split: &CompiledSplit, body: &str) -> Vec<(usize, Fields)> {
    let Some(section) = &split.section else {
        return Vec::new();
    };
    section
        .regex
        .captures_iter(body)
        .filter_map(|caps| {
            let start = caps.get(0)?.start();
            let mut fields = Fields::default();
            for (group, field) in &section.captures {
                if let Some(m) = caps.get(*group) {
                    fields.set(*field, m.as_str().trim().to_string());
                }
            }
            Some((start, fields))
        })
        .collect()
}

fn build_alert(
    rule: &CompiledRule,
    mut fields: Fields,
    mail: &DecodedMail,
    ctx: &dyn ParseContext,
) -> Result<Alert, String> {
    for field in Field::ALL {
        if let Some(default) = rule.defaults.get(field) {
            fields.set_if_absent(field, default.to_string());
        }
    }
    let notification_type = notification_type(rule, &fields)?;
    let may_inherit = |f: InheritedField| rule.inherit_from_reply.contains(&f);
    let mut inherits = Vec::new();
    let state = match state(rule, &fields, notification_type) {
        // A follow-up that does not say how bad the problem is keeps the problem's state.
        Ok(State::Unknown) | Err(_) if may_inherit(InheritedField::State) => {
            inherits.push(InheritedField::State);
            State::Unknown
        }
        other => other?,
    };
    let host = match fields.get(Field::Host).filter(|h| !h.is_empty()) {
        Some(host) => host.to_string(),
        None if may_inherit(InheritedField::Host) => {
            let known = mail
                .in_reply_to
                .as_deref()
                .and_then(|id| ctx.host_for_message_id(id));
            if known.is_none() {
                inherits.push(InheritedField::Host);
            }
            known.unwrap_or_default()
        }
        None => return Err("no `host` extracted and no defaults.host".to_string()),
    };
    let service = fields.get(Field::Service).unwrap_or_default().to_string();
    if service.is_empty() && may_inherit(InheritedField::Service) {
        inherits.push(InheritedField::Service);
    }
    let kind = rule.default_kind.unwrap_or(if service.is_empty() {
        AlertKind::Host
    } else {
        AlertKind::Service
    });
    let optional = |f: Field| fields.get(f).filter(|v| !v.is_empty()).map(str::to_string);
    let mut alert = Alert {
        source: rule.source.clone(),
        kind,
        host,
        host_alias: optional(Field::HostAlias),
        service,
        state,
        notification_type,
        output: fields.get(Field::Output).unwrap_or_default().to_string(),
        long_output: optional(Field::LongOutput),
        author: optional(Field::Author),
        comment: optional(Field::Comment),
        address: optional(Field::Address),
        event_time: optional(Field::EventTime),
        vendor_id: optional(Field::VendorId),
        url: optional(Field::Url),
        rule: rule.name.clone(),
        needs_sanitizing: false,
        inherits,
    };
    alert.needs_sanitizing = needs_sanitizing(&alert);
    Ok(alert)
}

/// A word of the tool, normalised for lookup in a map (case and spacing insensitive).
fn map_key(word: &str) -> String {
    word.trim().to_lowercase()
}

fn notification_type(rule: &CompiledRule, fields: &Fields) -> Result<NotificationType, String> {
    let Some(word) = fields.get(Field::Type) else {
        return Err("no `type` extracted and no defaults.type".to_string());
    };
    if let Some(t) = rule.type_map.get(&map_key(word)) {
        return Ok(*t);
    }
    // Nagios-family words (FLAPPINGSTART, DOWNTIMECANCELLED…) without underscores.
    let squashed: String = word
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    NotificationType::ALL
        .into_iter()
        .find(|t| t.as_str().replace('_', "") == squashed)
        .ok_or_else(|| {
            format!("notification type `{word}` is not known and map.type has no entry for it")
        })
}

fn state(
    rule: &CompiledRule,
    fields: &Fields,
    notification_type: NotificationType,
) -> Result<State, String> {
    if notification_type == NotificationType::Recovery {
        if let Some(state) = rule.recovery_state {
            return Ok(state);
        }
    }
    let Some(word) = fields.get(Field::State) else {
        return Err("no `state` extracted and no defaults.state".to_string());
    };
    if let Some(state) = rule.state_map.get(&map_key(word)) {
        return Ok(*state);
    }
    word.parse::<State>().map_err(|_| {
        format!("state `{word}` is not a known state and map.state has no entry for it")
    })
}

/// CR/LF in a one-line field, or a GLPI-looking `[Word #123]` marker anywhere, must be
/// neutralised before the text reaches a subject or a ticket.
fn needs_sanitizing(alert: &Alert) -> bool {
    static TICKET_MARKER: OnceLock<Regex> = OnceLock::new();
    let marker = TICKET_MARKER.get_or_init(|| {
        Regex::new(r"\[[^\[\]\r\n]{0,64}#\s*\d+\s*\]")
            .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    });
    let one_line = [
        Some(alert.host.as_str()),
        alert.host_alias.as_deref(),
        Some(alert.service.as_str()),
        Some(alert.output.as_str()),
        alert.author.as_deref(),
        alert.address.as_deref(),
        alert.event_time.as_deref(),
        alert.vendor_id.as_deref(),
        alert.url.as_deref(),
    ];
    let multi_line = [alert.long_output.as_deref(), alert.comment.as_deref()];
    one_line.iter().flatten().any(|t| t.contains(['\r', '\n']))
        || one_line
            .iter()
            .chain(multi_line.iter())
            .flatten()
            .any(|t| marker.is_match(t))
}

#[cfg(test)]
mod tests {
    use super::super::{NoContext, RuleSet};
    use crate::alert::{NotificationType, State};
    use std::io::Write;

    fn set(text: &str) -> (tempfile::TempDir, RuleSet) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = std::fs::File::create(dir.path().join("t.toml")).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        let set = RuleSet::load(&[dir.path().into()]).expect("loads");
        (dir, set)
    }

    const SPLIT: &str = r#"
source = "am"
[[rule]]
name = "grouped"
match.subject = '^\[(FIRING|RESOLVED)'
extract.subject = '^\[(?P<type>FIRING|RESOLVED)'
recovery_state = "ok"
map.type = { firing = "problem", resolved = "recovery" }
map.state = { page = "critical" }
[rule.split]
block = '^Labels$'
section = '^\[\d+\] (?P<type>Firing|Resolved)$'
end = '^Sent by'
extract = ['^instance = (?P<host>.+)$', '^alertname = (?P<service>.+)$', '^severity = (?P<state>.+)$']
"#;

    #[test]
    fn split_yields_one_alert_per_block_with_section_fields() {
        let (_d, set) = set(SPLIT);
        let raw = "Subject: [FIRING:2] x\r\n\r\n[1] Firing\r\nLabels\r\nalertname = A\r\ninstance = h1\r\nseverity = page\r\n\
                   [1] Resolved\r\nLabels\r\nalertname = B\r\ninstance = h2\r\nseverity = warning\r\nSent by\r\nLabels\r\n";
        let alerts = set.parse(raw.as_bytes(), &NoContext).expect("parses");
        assert_eq!(alerts.len(), 2);
        assert_eq!(
            (alerts[0].host.as_str(), alerts[0].service.as_str()),
            ("h1", "A")
        );
        assert_eq!(alerts[0].state, State::Critical);
        assert_eq!(alerts[1].notification_type, NotificationType::Recovery);
        assert_eq!(alerts[1].state, State::Ok);
    }

    #[test]
    fn unmapped_state_word_is_an_extraction_error() {
        let (_d, set) = set(SPLIT);
        let raw = "Subject: [FIRING:1] x\r\n\r\nLabels\r\ninstance = h1\r\nseverity = loud\r\n";
        let err = set.parse(raw.as_bytes(), &NoContext).expect_err("fails");
        assert!(
            err.to_string()
                .contains("state `loud` is not a known state"),
            "{err}"
        );
    }

    #[test]
    fn ticket_marker_and_newline_set_needs_sanitizing() {
        let rules = r#"
source = "t"
[[rule]]
name = "r"
match.subject = 'ALERT'
extract.subject = 'ALERT (?P<host>\S+)'
extract.body = '(?s)Info: (?P<output>.*)\z'
defaults = { state = "critical", type = "problem" }
"#;
        let (_d, set) = set(rules);
        let clean = set
            .parse(b"Subject: ALERT h\r\n\r\nInfo: fine", &NoContext)
            .expect("parses");
        assert!(!clean[0].needs_sanitizing);
        let marker = set
            .parse(
                b"Subject: ALERT h\r\n\r\nInfo: see [GLPI #0001234]",
                &NoContext,
            )
            .expect("parses");
        assert!(marker[0].needs_sanitizing);
        assert_eq!(marker[0].output, "see [GLPI #0001234]");
        let newline = set
            .parse(b"Subject: ALERT h\r\n\r\nInfo: a\r\nb", &NoContext)
            .expect("parses");
        assert!(newline[0].needs_sanitizing);
        assert_eq!(newline[0].output, "a\nb");
    }
}
