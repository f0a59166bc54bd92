//! `alertgate replay`: a mailbox (mbox file, Maildir, or directory of .eml) through the
//! real pipeline (rules → correlate → compose → outbound queue) on a temporary store,
//! each mail at its own `Date`, nothing sent; then what GLPI would have received.

use crate::config::LoadedConfig;
use crate::pipeline::Pipeline;
use crate::rules::{ParseError, RuleSet};
use crate::store::{self, spool, tally};
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// After the last mail, time runs on this long so that held mails, digests and
/// ticket-id waits all come due, as they would in a live gateway.
pub const SETTLE_SECS: i64 = 86_400;

/// One mail of the mailbox and the time it is replayed at.
#[derive(Debug, Clone)]
pub struct ReplayMail {
    pub raw: Vec<u8>,
    pub at: i64,
    /// False when the mail has no readable `Date` (it takes the previous mail's time).
    pub dated: bool,
}

/// A mail no rule matched.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unmatched {
    pub index: usize,
    pub subject: String,
    pub nearest: Option<String>,
}

/// Per day (UTC): mails in, threads (tickets) and mails GLPI would have got.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Day {
    pub day: String,
    pub mails: u64,
    pub tickets: u64,
    pub glpi_mails: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub mails: u64,
    pub undated: u64,
    pub alerts: u64,
    pub alerts_by_source: BTreeMap<String, u64>,
    pub alerts_by_rule: BTreeMap<String, u64>,
    pub unmatched: u64,
    pub unmatched_mails: Vec<Unmatched>,
    /// Matched a rule but could not be read, or undecodable.
    pub unreadable: u64,
    pub incidents: u64,
    /// GLPI threads (tickets) the mails would start.
    pub tickets: u64,
    pub glpi_mails: u64,
    pub glpi_api_actions: u64,
    /// Today without alertgate: every mail is a ticket.
    pub one_ticket_per_mail: u64,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub days: Vec<Day>,
}

/// Read every mail of `source`, oldest first (stable for equal dates).
pub fn read_source(source: &Path) -> anyhow::Result<Vec<ReplayMail>> {
    let raws = if source.is_dir() {
        if source.join("cur").is_dir() || source.join("new").is_dir() {
            read_maildir(source)?
        } else {
            read_eml_dir(source)?
        }
    } else {
        let bytes =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        split_mbox(&bytes)
    };
    Ok(date_mails(raws))
}

/// mbox (mboxo/mboxrd): a message starts at each line beginning with `From `; `>From `
/// lines (any number of `>`) lose one `>`.
pub fn split_mbox(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut mails = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(mail) = current.take() {
                mails.push(trim_separator(mail));
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(mail) = current.as_mut() else {
            continue; // text before the first separator is not a message
        };
        let quoted = line.iter().take_while(|&&b| b == b'>').count();
        if quoted > 0 && line[quoted..].starts_with(b"From ") {
            mail.extend_from_slice(&line[1..]);
        } else {
            mail.extend_from_slice(line);
        }
    }
    if let Some(mail) = current {
        mails.push(trim_separator(mail));
    }
    mails
}

/// The blank line before the next `From ` belongs to the separator, not the message.
fn trim_separator(mut mail: Vec<u8>) -> Vec<u8> {
    if mail.ends_with(b"\r\n\r\n") {
        mail.truncate(mail.len() - 2);
    } else if mail.ends_with(b"\n\n") {
        mail.truncate(mail.len() - 1);
    }
    mail
}

/// Maildir: the files of `new/` and `cur/` (a Maildir is just those two directories of
/// one-message files), by file name, which starts with the delivery time.
fn read_maildir(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files = Vec::new();
    for sub in ["cur", "new"] {
        let path = dir.join(sub);
        if path.is_dir() {
            files.extend(list_files(&path, |_| true)?);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    read_all(&files)
}

fn read_eml_dir(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files = list_files(dir, |p| p.extension().is_some_and(|e| e == "eml"))?;
    files.sort();
    read_all(&files)
}

fn list_files(dir: &Path, keep: impl Fn(&Path) -> bool) -> anyhow::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && keep(p))
        .collect())
}

fn read_all(files: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    files
        .iter()
        .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
        .collect()
}

/// Each mail's `Date`; an undated mail takes the time of the mail before it (the first
/// dated one for leading undated mails). Sorted by time, stable.
fn date_mails(raws: Vec<Vec<u8>>) -> Vec<ReplayMail> {
    let dates: Vec<Option<i64>> = raws.iter().map(|r| mail_date(r)).collect();
    let mut last = dates.iter().flatten().next().copied().unwrap_or(0);
    let mut mails: Vec<ReplayMail> = raws
        .into_iter()
        .zip(dates)
        .map(|(raw, date)| {
            if let Some(d) = date {
                last = d;
            }
            ReplayMail {
                raw,
                at: date.unwrap_or(last),
                dated: date.is_some(),
            }
        })
        .collect();
    mails.sort_by_key(|m| m.at);
    mails
}

pub fn mail_date(raw: &[u8]) -> Option<i64> {
    mail_parser::MessageParser::default()
        .parse_headers(raw)?
        .date()
        .map(|d| d.to_timestamp())
}

/// The configuration a replay runs with: `-c FILE` or a minimal one; `--rules`
/// directories replace the configured ones; the store is always `store_path`.
pub fn replay_config(
    config: Option<&Path>,
    rule_dirs: &[PathBuf],
    store_path: &Path,
) -> anyhow::Result<LoadedConfig> {
    let mut loaded = match config {
        Some(path) => {
            LoadedConfig::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?
        }
        None => {
            let dirs = if rule_dirs.is_empty() {
                vec![PathBuf::from("rules")]
            } else {
                rule_dirs.to_vec()
            };
            let text = minimal_config(&dirs, store_path);
            LoadedConfig::from_str(Path::new("replay.toml"), &text)
                .map_err(|e| anyhow::anyhow!("replay configuration:\n{e}"))?
        }
    };
    if !rule_dirs.is_empty() {
        loaded.config.rules.dirs = rule_dirs.to_vec();
    }
    loaded.config.store.path = store_path.to_path_buf();
    // A replay never touches the configured store, PostgreSQL included.
    loaded.config.store.url = None;
    Ok(loaded)
}

fn minimal_config(dirs: &[PathBuf], store_path: &Path) -> String {
    let dirs: Vec<String> = dirs
        .iter()
        .map(|d| toml_string(&d.display().to_string()))
        .collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nhostname = \"alertgate.replay\"\naccepted_recipients = [\"glpi@replay.invalid\"]\n\
         [store]\npath = {}\n[rules]\ndirs = [{}]\n\
         [compose]\nfrom = \"alertgate@replay.invalid\"\nto = \"glpi@replay.invalid\"\nhostname = \"alertgate.replay\"\n\
         [relay]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n",
        toml_string(&store_path.display().to_string()),
        dirs.join(", ")
    )
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Run `mails` through the real pipeline of `loaded` (whose store must be a fresh,
/// temporary one) and count. `progress` is told after each mail.
pub fn run(
    loaded: &LoadedConfig,
    mails: &[ReplayMail],
    progress: &dyn Fn(u64),
) -> anyhow::Result<Report> {
    let rules = RuleSet::load(&loaded.config.rules.dirs)
        .map_err(|e| anyhow::anyhow!("loading rules:\n{e}"))?;
    let mut report = classify(&rules, mails);
    let store = loaded.config.store.location();
    // No GLPI API is reached during a replay: what it could solve is taken from the config.
    let may_solve = loaded
        .config
        .glpi_api
        .as_ref()
        .is_some_and(|a| a.solve_on_recovery);
    let settings = crate::app::pipeline_settings(loaded, rules, may_solve);
    let mut pipeline = Pipeline::open(&store, settings).context("opening the replay store")?;
    let mut db = store::Db::open(&store, store::Durability::Derived)?;
    let rcpt = loaded.compose.to.clone();
    for (i, mail) in mails.iter().enumerate() {
        let envelope = spool::Envelope {
            peer: "replay".into(),
            helo: "replay".into(),
            mail_from: "replay@replay.invalid".into(),
            rcpt_to: vec![rcpt.clone()],
            tls: false,
            auth_user: None,
            received_at: mail.at,
        };
        let message_id = crate::smtp::header::message_id(&mail.raw);
        spool::insert(&mut db, &envelope, &mail.raw, message_id.as_deref())?;
        while pipeline.run_batch(mail.at)? > 0 {}
        pipeline.tick(mail.at)?;
        progress(i as u64 + 1);
    }
    if let Some(last) = mails.last() {
        pipeline.tick(last.at + SETTLE_SECS)?;
    }
    let counts = tally::tally(&mut db)?;
    report.incidents = counts.incidents;
    report.tickets = counts.threads;
    report.glpi_mails = counts.outbound_mails;
    report.glpi_api_actions = counts.api_actions;
    report.days = days(mails, &counts.thread_times, &counts.mail_times);
    Ok(report)
}

/// What the rules make of each mail on its own (the pipeline decides the rest).
fn classify(rules: &RuleSet, mails: &[ReplayMail]) -> Report {
    let mut report = Report {
        mails: mails.len() as u64,
        one_ticket_per_mail: mails.len() as u64,
        first: mails.first().map(|m| m.at),
        last: mails.last().map(|m| m.at),
        ..Report::default()
    };
    for (index, mail) in mails.iter().enumerate() {
        report.undated += u64::from(!mail.dated);
        match rules.parse(&mail.raw, &crate::rules::NoContext) {
            Ok(alerts) => {
                for alert in alerts {
                    report.alerts += 1;
                    *report.alerts_by_source.entry(alert.source).or_default() += 1;
                    *report.alerts_by_rule.entry(alert.rule).or_default() += 1;
                }
            }
            Err(ParseError::NoRuleMatched { nearest }) => {
                report.unmatched += 1;
                report.unmatched_mails.push(Unmatched {
                    index,
                    subject: crate::mail::decode(&mail.raw)
                        .map(|m| m.subject)
                        .unwrap_or_default(),
                    nearest: nearest.first().map(|n| n.rule.clone()),
                });
            }
            Err(_) => report.unreadable += 1,
        }
    }
    report
}

fn days(mails: &[ReplayMail], thread_times: &[i64], mail_times: &[i64]) -> Vec<Day> {
    fn entry(by_day: &mut BTreeMap<String, Day>, t: i64) -> &mut Day {
        let day = day_of(t);
        by_day.entry(day.clone()).or_insert_with(|| Day {
            day,
            ..Day::default()
        })
    }
    let mut by_day: BTreeMap<String, Day> = BTreeMap::new();
    for m in mails {
        entry(&mut by_day, m.at).mails += 1;
    }
    for &t in thread_times {
        entry(&mut by_day, t).tickets += 1;
    }
    for &t in mail_times {
        entry(&mut by_day, t).glpi_mails += 1;
    }
    by_day.into_values().collect()
}

fn day_of(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The human summary printed by default.
pub fn text_report(r: &Report) -> String {
    let mut out = String::new();
    let span = match (r.first, r.last) {
        (Some(a), Some(b)) => format!(" from {} to {}", format_time(a), format_time(b)),
        _ => String::new(),
    };
    out += &format!("mails read: {}{span}", r.mails);
    if r.undated > 0 {
        out += &format!(
            " ({} without a Date, replayed at the previous mail's time)",
            r.undated
        );
    }
    out += &format!("\nalerts: {}\n", r.alerts);
    for (source, n) in &r.alerts_by_source {
        out += &format!("  source {source}: {n}\n");
    }
    for (rule, n) in &r.alerts_by_rule {
        out += &format!("  rule {rule}: {n}\n");
    }
    out += &format!("unmatched mails: {}\n", r.unmatched);
    for u in r.unmatched_mails.iter().take(20) {
        out += &format!(
            "  #{} {:?} (nearest rule: {})\n",
            u.index + 1,
            u.subject,
            u.nearest.as_deref().unwrap_or("none")
        );
    }
    if r.unmatched_mails.len() > 20 {
        out += &format!("  … and {} more\n", r.unmatched_mails.len() - 20);
    }
    if r.unreadable > 0 {
        out += &format!("matched a rule but unreadable: {}\n", r.unreadable);
    }
    out += &format!("incidents: {}\n", r.incidents);
    out += &format!(
        "GLPI: {} ticket(s) from {} mail(s){}, against {} ticket(s) with one ticket per mail\n",
        r.tickets,
        r.glpi_mails,
        if r.glpi_api_actions > 0 {
            format!(" and {} API action(s)", r.glpi_api_actions)
        } else {
            String::new()
        },
        r.one_ticket_per_mail
    );
    out
}

fn format_time(unix: i64) -> String {
    crate::compose::format_time(unix)
}

/// One HTML page: the numbers, a per-day chart of mails vs tickets (inline SVG), and
/// the unmatched mails.
pub fn html_report(r: &Report) -> String {
    let mut rows = String::new();
    for d in &r.days {
        rows += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            d.day, d.mails, d.tickets, d.glpi_mails
        );
    }
    let mut unmatched = String::new();
    for u in &r.unmatched_mails {
        unmatched += &format!(
            "<li>#{} {} <small>(nearest rule: {})</small></li>\n",
            u.index + 1,
            escape(&u.subject),
            escape(u.nearest.as_deref().unwrap_or("none"))
        );
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>alertgate replay</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}</style></head><body>\n\
         <h1>alertgate replay</h1>\n<p>{mails} mails read, {alerts} alerts, {unmatched_n} unmatched; \
         {incidents} incidents → <b>{tickets} GLPI tickets</b> from {glpi} mails, \
         against {mails} tickets with one ticket per mail.</p>\n{chart}\n\
         <table><tr><th>day</th><th>mails</th><th>tickets</th><th>GLPI mails</th></tr>\n{rows}</table>\n\
         <h2>Unmatched mails</h2><ul>\n{unmatched}</ul>\n</body></html>\n",
        mails = r.mails,
        alerts = r.alerts,
        unmatched_n = r.unmatched,
        incidents = r.incidents,
        tickets = r.tickets,
        glpi = r.glpi_mails,
        chart = svg_chart(&r.days),
    )
}

/// Grouped bars per day: mails in (grey) and tickets (blue).
fn svg_chart(days: &[Day]) -> String {
    let (bar, gap, height) = (18u64, 14u64, 200u64);
    let max = days
        .iter()
        .map(|d| d.mails.max(d.tickets))
        .max()
        .unwrap_or(1)
        .max(1);
    let width = (days.len() as u64 * (2 * bar + gap)).max(1) + 60;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" role=\"img\" aria-label=\"mails and tickets per day\">\n",
        height + 40
    );
    for (i, d) in days.iter().enumerate() {
        let x = 40 + i as u64 * (2 * bar + gap);
        for (j, (value, color)) in [(d.mails, "#9e9e9e"), (d.tickets, "#1e6fd9")]
            .iter()
            .enumerate()
        {
            let h = value * height / max;
            svg += &format!(
                "<rect x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"{color}\"><title>{}: {value}</title></rect>\n",
                x + j as u64 * bar,
                height - h + 10,
                if j == 0 { "mails" } else { "tickets" }
            );
        }
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">{}</text>\n",
            x + bar,
            height + 24,
            d.day.get(5..).unwrap_or(&d.day)
        );
    }
    svg += &format!(
        "<text x=\"2\" y=\"18\" font-size=\"10\">{max}</text><text x=\"2\" y=\"{}\" font-size=\"10\">0</text>\n\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#9e9e9e\">■ mails</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#1e6fd9\">■ tickets</text>\n</svg>",
        height + 10,
        40,
        height + 38,
        100,
        height + 38
    );
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The temporary store lives in memory where the system offers it (it is thrown away:
/// the disk's flushes would only slow the replay down).
fn temp_store_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("alertgate-replay")
            .tempdir_in(shm)
        {
            return Ok(dir);
        }
    }
    tempfile::tempdir()
}

/// `alertgate replay`, from the command line.
pub fn run_cli(
    source: &Path,
    rule_dirs: &[PathBuf],
    config: Option<&Path>,
    json: bool,
    html: Option<&Path>,
) -> anyhow::Result<bool> {
    let mails = read_source(source)?;
    let dir = temp_store_dir().context("creating a temporary store")?;
    let loaded = replay_config(config, rule_dirs, &dir.path().join("replay.db"))?;
    let bar = indicatif::ProgressBar::new(mails.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} mails {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = run(&loaded, &mails, &|n| bar.set_position(n))?;
    bar.finish_and_clear();
    if let Some(path) = html {
        std::fs::write(path, html_report(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text_report(&report));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_splits_on_from_lines_and_unquotes() {
        let mbox = b"From a@b Tue Mar 12 14:03:27 2024\nSubject: one\n\nbody\n>From here\n\nFrom c@d Tue Mar 12 14:04:27 2024\nSubject: two\n\nx\n";
        let mails = split_mbox(mbox);
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[0], b"Subject: one\n\nbody\nFrom here\n");
        assert_eq!(mails[1], b"Subject: two\n\nx\n");
    }

    #[test]
    fn undated_mails_take_the_previous_time_and_order_is_by_date() {
        let mails = date_mails(vec![
            b"Date: Tue, 12 Mar 2024 14:05:00 +0000\r\nSubject: b\r\n\r\nx".to_vec(),
            b"Subject: undated\r\n\r\nx".to_vec(),
            b"Date: Tue, 12 Mar 2024 14:00:00 +0000\r\nSubject: a\r\n\r\nx".to_vec(),
        ]);
        let times: Vec<(i64, bool)> = mails.iter().map(|m| (m.at, m.dated)).collect();
        assert_eq!(
            times,
            [(1710252000, true), (1710252300, true), (1710252300, false)]
        );
    }
}
