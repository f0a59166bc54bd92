//! The mail GLPI's collector receives: subject with our thread tag (and GLPI's ticket
//! prefix once known), threading headers, routing headers, text + HTML body, optional
//! original attached. Pure: bytes out, no I/O; every header goes through lettre.

mod body;
pub mod language;
mod subject;
mod text;
mod threading;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::header::{ContentDisposition, ContentTransferEncoding, ContentType};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, Message, MultiPart, SinglePart};
use serde::Deserialize;

use crate::alert::{Alert, AlertKind, NotificationType, State};
use crate::mail::DecodedMail;

pub use body::{format_duration, format_time};
pub use subject::{SubjectTemplate, SUBJECT_MAX_CHARS};
pub use text::HASH_REPLACEMENT;
pub use threading::{message_id, message_id_domain, thread_index};

use body::{Report, Table};
use subject::SubjectFields;

/// `[compose]` in the gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeConfig {
    /// From: the GLPI user every alert ticket is opened by.
    pub from: String,
    /// To: the mailbox GLPI's collector reads.
    pub to: String,
    /// Right-hand side of our Message-IDs.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default = "default_subject_template")]
    pub subject_template: String,
    #[serde(default = "default_true")]
    pub attach_original_on_open: bool,
    #[serde(default)]
    pub attach_original_on_update: bool,
    /// GLPI's ticket tag (per-entity setting in GLPI, `GLPI` by default).
    #[serde(default = "default_glpi_tag")]
    pub glpi_tag: String,
    /// Language of the subject words and body labels (`en`, `fr`, `de`, `es`).
    #[serde(default)]
    pub language: language::Language,
}

pub const DEFAULT_SUBJECT_TEMPLATE: &str =
    "[{tag}] {STATE} {host}{ / service}: {output_first_line}";

fn default_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

fn default_subject_template() -> String {
    DEFAULT_SUBJECT_TEMPLATE.to_owned()
}

fn default_true() -> bool {
    true
}

fn default_glpi_tag() -> String {
    "GLPI".to_owned()
}

impl ComposeConfig {
    /// A configuration with every default, for the two required addresses.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        ComposeConfig {
            from: from.into(),
            to: to.into(),
            hostname: default_hostname(),
            subject_template: default_subject_template(),
            attach_original_on_open: true,
            attach_original_on_update: false,
            glpi_tag: default_glpi_tag(),
            language: language::Language::En,
        }
    }

    /// Checks everything `compose` would reject, so a bad config fails at startup.
    pub fn validate(&self) -> Result<(), ComposeError> {
        self.checked().map(|_| ())
    }

    fn checked(&self) -> Result<Checked, ComposeError> {
        let from = parse_mailbox("from", &self.from)?;
        let to = parse_mailbox("to", &self.to)?;
        if from.email == to.email {
            // GLPI drops mail from its own collector address as a loop.
            return Err(ComposeError::InvalidAddress {
                field: "from",
                value: self.from.clone(),
                why: "must differ from `to` (GLPI ignores mail from its own mailbox)".into(),
            });
        }
        subject::validate_glpi_tag(&self.glpi_tag)?;
        Ok(Checked {
            from,
            to,
            template: SubjectTemplate::parse(&self.subject_template)?,
        })
    }
}

struct Checked {
    from: Mailbox,
    to: Mailbox,
    template: SubjectTemplate,
}

fn parse_mailbox(field: &'static str, value: &str) -> Result<Mailbox, ComposeError> {
    value
        .parse::<Mailbox>()
        .map_err(|e| ComposeError::InvalidAddress {
            field,
            value: value.to_owned(),
            why: e.to_string(),
        })
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("compose.{field} = {value:?} is not a usable address: {why}")]
    InvalidAddress {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("compose.subject_template {template:?} is invalid: {why}")]
    InvalidTemplate { template: String, why: String },
    #[error("compose.glpi_tag {0:?} is invalid: 1-32 characters, no spaces, `[`, `]` or `#`")]
    InvalidGlpiTag(String),
    #[error("incident tag {0:?} is invalid: 1-64 characters among A-Z a-z 0-9 - _")]
    InvalidIncidentTag(String),
    #[error("timestamp {0} is before 1970")]
    InvalidTime(i64),
    #[error("a digest needs at least one alert")]
    EmptyDigest,
    #[error("building the message failed: {0}")]
    Build(#[from] lettre::error::Error),
}

/// Why this mail is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailKind {
    /// First mail of an incident: GLPI opens a ticket.
    Open,
    /// A follow-up (acknowledgement, state change, flapping, downtime...).
    Update { reason: String },
    /// The incident recovered.
    Resolve,
}

/// What compose needs to know about the incident a mail belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRef {
    /// Thread tag, e.g. `ALERT-1f3a9c2e` (A-Z a-z 0-9 - _).
    pub tag: String,
    /// 0 for the opening mail, then +1 per mail of the incident.
    pub seq: u32,
    /// GLPI ticket id, once learned.
    pub ticket_id: Option<u64>,
    /// GLPI's Message-ID for the ticket (`<GLPI_…-Ticket-123/new@…>`), once learned.
    pub glpi_message_id: Option<String>,
    /// Unix seconds of the incident's first alert.
    pub first_seen: i64,
    /// Alerts correlated into the incident so far.
    pub alert_count: u32,
}

/// Another service of the same host, folded into a host incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedService {
    pub service: String,
    pub state: State,
    pub output: String,
    /// Unix seconds.
    pub time: i64,
}

/// One event of an incident (or of an incident held by a storm digest) since the
/// last mail to its ticket: a merged mail lists them all, with their times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Unix seconds.
    pub time: i64,
    /// What happened, e.g. `ALERT-1f3a9c2e web01 / disk: NOW CRITICAL`.
    pub event: String,
    pub state: State,
    pub output: String,
}

/// One mail to compose for an incident.
#[derive(Debug, Clone)]
pub struct MailEvent<'a> {
    pub kind: MailKind,
    pub incident: IncidentRef,
    pub alert: &'a Alert,
    pub folded: &'a [FoldedService],
    /// Every event since the last mail to the ticket when this mail stands for several
    /// (empty for a mail about one event).
    pub changes: &'a [Change],
    /// The monitoring mail as received, attached per configuration.
    pub original: Option<&'a [u8]>,
    /// Unix seconds; the Date header.
    pub now: i64,
}

/// A mail ready for the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedMail {
    pub message_id: String,
    pub subject: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    /// RFC 5322 bytes, CRLF line endings.
    pub bytes: Vec<u8>,
    /// The HTML body, what GLPI shows of it (a ticket created through the API gets it).
    pub html: String,
}

/// Everything that differs between an incident mail, a digest and a forwarded mail.
struct Draft {
    tag: String,
    seq: u32,
    ticket_id: Option<u64>,
    glpi_message_id: Option<String>,
    first_seen: i64,
    /// Subject without the GLPI prefix; already sanitised.
    subject: Subject,
    thread_topic: String,
    priority: &'static str,
    source: String,
    host: String,
    service: String,
    state: String,
    report: Report,
    original: Option<Vec<u8>>,
    now: i64,
}

enum Subject {
    Template(String),
    Fixed(String),
}

/// The word an operator reads for an event: `NOW CRITICAL`, `ACKNOWLEDGED`, `RECOVERED`…
pub fn event_word(kind: &MailKind, alert: &Alert) -> String {
    state_word(kind, alert)
}

/// Composes one incident mail (open, update, resolve).
pub fn compose(cfg: &ComposeConfig, ev: &MailEvent<'_>) -> Result<ComposedMail, ComposeError> {
    let checked = cfg.checked()?;
    threading::validate_incident_tag(&ev.incident.tag)?;
    let alert = ev.alert;
    let english_word = state_word(&ev.kind, alert);
    let state_word = cfg.language.subject_word(&english_word);
    let fields = SubjectFields {
        tag: &ev.incident.tag,
        state_word: &state_word,
        state: alert.state.as_str(),
        host: &alert.host,
        service: service_of(alert),
        source: &alert.source,
        output_first_line: text::first_line(&alert.output),
    };
    let prefix = subject::ticket_prefix(&cfg.glpi_tag, ev.incident.ticket_id);
    let attach = match ev.kind {
        MailKind::Open => cfg.attach_original_on_open,
        MailKind::Update { .. } | MailKind::Resolve => cfg.attach_original_on_update,
    };
    let draft = Draft {
        tag: ev.incident.tag.clone(),
        seq: ev.incident.seq,
        ticket_id: ev.incident.ticket_id,
        glpi_message_id: ev.incident.glpi_message_id.clone(),
        first_seen: ev.incident.first_seen,
        subject: Subject::Template(checked.template.render(&fields, &prefix)),
        thread_topic: thread_topic(&ev.incident.tag, &alert.host, service_of(alert)),
        priority: x_priority(alert.state),
        source: alert.source.clone(),
        host: alert.host.clone(),
        service: service_of(alert).to_owned(),
        state: alert.state.as_str().to_ascii_uppercase(),
        report: cfg
            .language
            .report(alert_report(ev, &english_word), &english_word, &state_word),
        original: ev.original.filter(|_| attach).map(<[u8]>::to_vec),
        now: ev.now,
    };
    assemble(cfg, &checked, draft)
}

/// Composes one digest mail listing many alerts; it opens its own ticket.
/// The first `n` names, then how many more: a digest header must stay a header.
fn first_few(names: &[&str], n: usize) -> String {
    match names.len().checked_sub(n) {
        Some(more) if more > 0 => format!("{} (+{more} more)", names[..n].join(", ")),
        _ => names.join(", "),
    }
}

pub fn compose_digest(
    cfg: &ComposeConfig,
    digest_id: &str,
    alerts: &[Alert],
    now: i64,
) -> Result<ComposedMail, ComposeError> {
    let checked = cfg.checked()?;
    threading::validate_incident_tag(digest_id)?;
    // The first alert among the worst, so the word is stable for a given list.
    let worst = alerts
        .iter()
        .map(|a| a.state)
        .reduce(|worst, s| {
            if s.severity() > worst.severity() {
                s
            } else {
                worst
            }
        })
        .ok_or(ComposeError::EmptyDigest)?;
    let hosts = distinct(alerts.iter().map(|a| a.host.as_str()));
    let sources = distinct(alerts.iter().map(|a| a.source.as_str()));
    let summary = format!(
        "[{digest_id}] DIGEST {} {}, worst {}: {}",
        alerts.len(),
        plural(alerts.len(), "alert", "alerts"),
        worst.as_str().to_ascii_uppercase(),
        hosts.join(", ")
    );
    let draft = Draft {
        tag: digest_id.to_owned(),
        seq: 0,
        ticket_id: None,
        glpi_message_id: None,
        first_seen: now,
        subject: Subject::Fixed(summary),
        thread_topic: format!("[{digest_id}] digest"),
        priority: x_priority(worst),
        source: sources.join(", "),
        host: first_few(&hosts, 10),
        service: String::new(),
        state: worst.as_str().to_ascii_uppercase(),
        report: digest_report(digest_id, alerts, now),
        original: None,
        now,
    };
    assemble(cfg, &checked, draft)
}

/// Forwards a mail that matched no rule, tagged so it gets its own ticket: the
/// original subject behind `[tag] ` (sanitised like any subject), its text inline,
/// the mail itself attached. `decoded` is the pipeline's reading of `raw_original`
/// (`None` when it is not a message at all).
pub fn compose_unmatched(
    cfg: &ComposeConfig,
    tag: &str,
    raw_original: &[u8],
    decoded: Option<&DecodedMail>,
    now: i64,
) -> Result<ComposedMail, ComposeError> {
    let checked = cfg.checked()?;
    threading::validate_incident_tag(tag)?;
    let original_subject = decoded
        .map(|m| text::header_line(&m.subject))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(no subject)".to_owned());
    let draft = Draft {
        tag: tag.to_owned(),
        seq: 0,
        ticket_id: None,
        glpi_message_id: None,
        first_seen: now,
        subject: Subject::Fixed(format!("[{tag}] {original_subject}")),
        thread_topic: format!("[{tag}] {original_subject}"),
        priority: "3 (Normal)",
        source: "unmatched".to_owned(),
        host: String::new(),
        service: String::new(),
        state: String::new(),
        report: unmatched_report(tag, decoded, &original_subject, now),
        original: Some(raw_original.to_vec()),
        now,
    };
    assemble(cfg, &checked, draft)
}

fn assemble(
    cfg: &ComposeConfig,
    checked: &Checked,
    draft: Draft,
) -> Result<ComposedMail, ComposeError> {
    let date = unix_to_system_time(draft.now)?;
    let subject = match draft.subject {
        Subject::Template(s) => s,
        Subject::Fixed(s) => {
            let prefix = subject::ticket_prefix(&cfg.glpi_tag, draft.ticket_id);
            let s = format!("{prefix}{}", text::subject_text(&s));
            text::truncate_chars(&s, SUBJECT_MAX_CHARS)
        }
    };
    let own_id = threading::message_id(&draft.tag, draft.seq, &cfg.hostname);
    let root_id = threading::message_id(&draft.tag, 0, &cfg.hostname);
    let glpi_id = draft
        .glpi_message_id
        .as_deref()
        .and_then(threading::clean_foreign_message_id);
    let refs = threading::thread_refs(&root_id, draft.seq, glpi_id.as_deref());

    let mut builder = Message::builder()
        .from(checked.from.clone())
        .to(checked.to.clone())
        .subject(subject.clone())
        .date(date)
        .message_id(Some(own_id.clone()));
    if let Some(id) = refs.in_reply_to {
        builder = builder.in_reply_to(id);
    }
    if let Some(ids) = refs.references {
        builder = builder.references(ids);
    }
    let thread_index = threading::thread_index(&draft.tag, draft.seq, draft.first_seen);
    let topic = text::truncate_chars(&text::subject_text(&draft.thread_topic), 200);
    let custom: [(&'static str, String); 8] = [
        ("Thread-Topic", topic),
        ("Thread-Index", thread_index),
        ("X-Priority", draft.priority.to_owned()),
        ("X-Alertgate-Source", draft.source),
        ("X-Alertgate-Host", draft.host),
        ("X-Alertgate-Service", draft.service),
        ("X-Alertgate-State", draft.state),
        ("X-Alertgate-Incident", draft.tag.clone()),
    ];
    for (name, value) in custom {
        let value = text::truncate_chars(&text::header_line(&value), 200);
        if !value.is_empty() {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(name),
                value,
            ));
        }
    }

    // Alert fields may carry bare CR, NUL or terminal escapes: not in a 7bit part.
    let html = text::body_text(&draft.report.to_html());
    let alternative =
        MultiPart::alternative_plain_html(text::body_text(&draft.report.to_text()), html.clone());
    let message = match draft.original {
        Some(original) => builder.multipart(
            MultiPart::mixed()
                .multipart(alternative)
                .singlepart(original_part(&original)),
        )?,
        None => builder.multipart(alternative)?,
    };
    let envelope = message.envelope();
    Ok(ComposedMail {
        message_id: own_id,
        subject,
        envelope_from: envelope.from().map(ToString::to_string).unwrap_or_default(),
        envelope_to: envelope.to().iter().map(ToString::to_string).collect(),
        bytes: message.formatted(),
        html,
    })
}

fn unix_to_system_time(now: i64) -> Result<SystemTime, ComposeError> {
    let secs = u64::try_from(now).map_err(|_| ComposeError::InvalidTime(now))?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or(ComposeError::InvalidTime(now))
}

/// The original as `message/rfc822`. RFC 2046 allows only 7bit/8bit there, so a mail
/// that fits neither (NUL bytes, lines over 998 octets) goes as a base64 `.eml` file.
fn original_part(original: &[u8]) -> SinglePart {
    let crlf = to_crlf(original);
    let disposition = ContentDisposition::attachment("original.eml");
    let rfc822 = ContentType::parse("message/rfc822").ok();
    match (identity_encoding(&crlf), rfc822) {
        (Some(encoding), Some(content_type)) => SinglePart::builder()
            .header(content_type)
            .header(disposition)
            // Checked by `identity_encoding`: CRLF only, no NUL, short lines.
            .body(Body::dangerous_pre_encoded(crlf, encoding)),
        _ => SinglePart::builder()
            .header(
                ContentType::parse("application/octet-stream").unwrap_or(ContentType::TEXT_PLAIN),
            )
            .header(disposition)
            // Not Body::new: lettre would declare NUL-bearing bytes 7bit.
            .body(
                Body::new_with_encoding(crlf, ContentTransferEncoding::Base64)
                    .unwrap_or_else(Body::new),
            ),
    }
}

/// 7bit or 8bit when the CRLF-normalised bytes are valid as such (RFC 2045 2.7/2.8);
/// 8bit does not need UTF-8, so Latin-1 monitoring mail stays readable.
fn identity_encoding(crlf: &[u8]) -> Option<ContentTransferEncoding> {
    let lines_fit = crlf
        .split(|b| *b == b'\n')
        .all(|line| line.strip_suffix(b"\r").unwrap_or(line).len() <= 998);
    if !lines_fit || crlf.contains(&0) {
        None
    } else if crlf.is_ascii() {
        Some(ContentTransferEncoding::SevenBit)
    } else {
        Some(ContentTransferEncoding::EightBit)
    }
}

/// Stored mail may use bare LF; SMTP (and relays that reject bare LF) need CRLF.
fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn service_of(alert: &Alert) -> &str {
    match alert.kind {
        AlertKind::Host => "",
        AlertKind::Service => &alert.service,
    }
}

/// The word after the tag: what an operator reads first in the GLPI ticket list.
fn state_word(kind: &MailKind, alert: &Alert) -> String {
    let state = alert.state.as_str().to_ascii_uppercase();
    match kind {
        MailKind::Open => state,
        MailKind::Resolve => "RECOVERED".to_owned(),
        MailKind::Update { .. } => match alert.notification_type {
            NotificationType::Acknowledgement => "ACKNOWLEDGED".to_owned(),
            NotificationType::FlappingStart => format!("FLAPPING {state}"),
            NotificationType::FlappingStop => format!("FLAPPING STOPPED {state}"),
            NotificationType::FlappingDisabled => format!("FLAPPING DISABLED {state}"),
            NotificationType::DowntimeStart => "IN DOWNTIME".to_owned(),
            NotificationType::DowntimeEnd => format!("DOWNTIME ENDED {state}"),
            NotificationType::DowntimeCancelled => format!("DOWNTIME CANCELLED {state}"),
            NotificationType::Problem | NotificationType::Recovery | NotificationType::Custom => {
                format!("NOW {state}")
            }
        },
    }
}

/// X-Priority per state, so GLPI business rules (`_x-priority`) can set urgency.
fn x_priority(state: State) -> &'static str {
    match state {
        State::Critical | State::Down => "1 (Highest)",
        State::Unreachable => "2 (High)",
        State::Warning | State::Unknown => "3 (Normal)",
        State::Ok | State::Up => "5 (Lowest)",
    }
}

/// Stable for the whole incident: no state, no output, no GLPI prefix.
fn thread_topic(tag: &str, host: &str, service: &str) -> String {
    if service.is_empty() {
        format!("[{tag}] {host}")
    } else {
        format!("[{tag}] {host} / {service}")
    }
}

fn alert_report(ev: &MailEvent<'_>, state_word: &str) -> Report {
    let alert = ev.alert;
    let service = service_of(alert);
    let target = if service.is_empty() {
        alert.host.clone()
    } else {
        format!("{} / {service}", alert.host)
    };
    let mut r = Report::new(format!("{state_word}: {target}"));
    r.text(
        "Event",
        match &ev.kind {
            MailKind::Open => "New problem".to_owned(),
            MailKind::Update { reason } => format!("Update: {reason}"),
            MailKind::Resolve => "Recovered".to_owned(),
        },
    );
    r.text("Incident", ev.incident.tag.as_str());
    if let Some(id) = ev.incident.ticket_id {
        r.text("GLPI ticket", id.to_string());
    }
    r.text("Source", alert.source.as_str());
    r.text(
        "Host",
        match &alert.host_alias {
            Some(alias) if alias != &alert.host => format!("{} ({alias})", alert.host),
            _ => alert.host.clone(),
        },
    );
    r.optional("Address", alert.address.as_deref());
    r.text("Service", service);
    r.text("State", alert.state.as_str().to_ascii_uppercase());
    r.text("Type", alert.notification_type.as_str().replace('_', " "));
    r.optional("Event time", alert.event_time.as_deref());
    r.text("Notified", format_time(ev.now));
    r.text("Output", alert.output.as_str());
    r.optional("Long output", alert.long_output.as_deref());
    r.optional("Author", alert.author.as_deref());
    r.optional("Comment", alert.comment.as_deref());
    r.text("First seen", format_time(ev.incident.first_seen));
    if !matches!(ev.kind, MailKind::Open) {
        r.text("Duration", format_duration(ev.now - ev.incident.first_seen));
    }
    r.text("Alerts in incident", ev.incident.alert_count.to_string());
    r.optional("Vendor id", alert.vendor_id.as_deref());
    if let Some(url) = &alert.url {
        r.link("Link", url);
    }
    r.text("Rule", alert.rule.as_str());
    if !ev.changes.is_empty() {
        r.tables.push(Table {
            title: format!(
                "Since the last mail ({} {})",
                ev.changes.len(),
                plural(ev.changes.len(), "event", "events")
            ),
            columns: vec!["Time", "Event", "State", "Output"],
            rows: ev
                .changes
                .iter()
                .map(|c| {
                    vec![
                        format_time(c.time),
                        c.event.clone(),
                        c.state.as_str().to_ascii_uppercase(),
                        c.output.clone(),
                    ]
                })
                .collect(),
        });
    }
    if !ev.folded.is_empty() {
        r.tables.push(Table {
            title: format!(
                "Also on this host ({} {})",
                ev.folded.len(),
                plural(ev.folded.len(), "service", "services")
            ),
            columns: vec!["Service", "State", "Output", "Time"],
            rows: ev
                .folded
                .iter()
                .map(|f| {
                    vec![
                        f.service.clone(),
                        f.state.as_str().to_ascii_uppercase(),
                        f.output.clone(),
                        format_time(f.time),
                    ]
                })
                .collect(),
        });
    }
    r
}

fn digest_report(digest_id: &str, alerts: &[Alert], now: i64) -> Report {
    let mut r = Report::new(format!(
        "{} {}",
        alerts.len(),
        plural(alerts.len(), "alert", "alerts")
    ));
    r.text("Digest", digest_id);
    r.text("Notified", format_time(now));
    r.tables.push(Table {
        title: "Alerts".to_owned(),
        columns: vec![
            "Time", "Source", "Host", "Service", "State", "Type", "Output",
        ],
        rows: alerts
            .iter()
            .map(|a| {
                vec![
                    a.event_time.clone().unwrap_or_default(),
                    a.source.clone(),
                    a.host.clone(),
                    service_of(a).to_owned(),
                    a.state.as_str().to_ascii_uppercase(),
                    a.notification_type.as_str().replace('_', " "),
                    a.output.clone(),
                ]
            })
            .collect(),
    });
    r
}

/// Forwarded text is capped: GLPI stores the body in one column.
const FORWARDED_TEXT_MAX_CHARS: usize = 100_000;

fn unmatched_report(tag: &str, decoded: Option<&DecodedMail>, subject: &str, now: i64) -> Report {
    let mut r = Report::new("Mail that matched no alertgate rule");
    r.text(
        "Note",
        "No rule recognised this mail; it is forwarded as received (attached as original.eml).",
    );
    r.text("Incident", tag);
    r.text("Original subject", subject);
    if let Some(m) = decoded {
        for (label, name) in [
            ("Original from", "from"),
            ("Original to", "to"),
            ("Original date", "date"),
        ] {
            r.optional(label, m.header(name).map(text::header_line).as_deref());
        }
    }
    r.text("Received", format_time(now));
    let body = decoded
        .map(|m| m.body.as_str())
        .filter(|b| !b.trim().is_empty())
        .map(|t| text::truncate_chars(t, FORWARDED_TEXT_MAX_CHARS))
        .unwrap_or_else(|| "(no readable text part)".to_owned());
    r.verbatim = Some(("Original text".to_owned(), body));
    r
}

fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

#[cfg(test)]
mod tests;
