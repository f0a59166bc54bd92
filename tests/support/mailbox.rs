//! A week of monitoring mail made from tests/fixtures: problem/recovery episodes of many
//! hosts with repeats, a storm of host-down mails, and mail no rule reads, each with a
//! realistic `Date` (CET) and its own Message-ID; written as an mbox.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

/// Monday 2024-03-11 00:00:00 UTC.
pub const WEEK_START: i64 = 1_710_115_200;

/// One template: a tool's problem and recovery fixtures and the host they name.
struct Template {
    source: &'static str,
    problem: &'static str,
    recovery: &'static str,
    host: &'static str,
}

const TEMPLATES: [Template; 5] = [
    Template {
        source: "nagios",
        problem: "nagios/service-problem.eml",
        recovery: "nagios/service-recovery.eml",
        host: "Mail Server",
    },
    Template {
        source: "icinga",
        problem: "icinga/service-problem.eml",
        recovery: "icinga/service-recovery.eml",
        host: "app01",
    },
    Template {
        source: "centreon",
        problem: "centreon/service-problem.eml",
        recovery: "centreon/service-recovery.eml",
        host: "Web Server 01",
    },
    Template {
        source: "librenms",
        problem: "librenms/problem.eml",
        recovery: "librenms/recovery.eml",
        host: "sw-core-01",
    },
    Template {
        source: "uptime-kuma",
        problem: "uptime-kuma/down.eml",
        recovery: "uptime-kuma/up.eml",
        host: "web-shop",
    },
];

/// The generated mailbox and what it is made of.
pub struct Mailbox {
    /// (time, raw mail), oldest first.
    pub mails: Vec<(i64, Vec<u8>)>,
    pub alerts_by_source: BTreeMap<String, u64>,
    pub unmatched: u64,
    pub storm: u64,
}

fn fixture(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    String::from_utf8(std::fs::read(&p).expect("fixture")).expect("fixture is UTF-8")
}

/// Small deterministic generator (no test may depend on chance).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// RFC 5322 date in CET, as the tools' mailers write it.
pub fn rfc5322(at: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(at + 3600).expect("time");
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0100",
        days[t.weekday().number_days_from_monday() as usize],
        t.day(),
        months[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The template mail with another host, Date and Message-ID (its Received: lines
/// dropped: the gateway adds its own).
fn instantiate(template: &str, fixture_host: &str, host: &str, at: i64, seq: usize) -> Vec<u8> {
    let (head, body) = template.split_once("\r\n\r\n").expect("header/body");
    let mut lines: Vec<String> = Vec::new();
    let mut in_received = false;
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        if lower.starts_with("received:") || (in_received && continuation) {
            in_received = true;
            continue;
        }
        in_received = false;
        if lower.starts_with("date:") {
            lines.push(format!("Date: {}", rfc5322(at)));
        } else if lower.starts_with("message-id:") {
            lines.push(format!("Message-ID: <gen-{seq}@monitor.example.com>"));
        } else {
            lines.push(line.replace(fixture_host, host));
        }
    }
    format!(
        "{}\r\n\r\n{}",
        lines.join("\r\n"),
        body.replace(fixture_host, host)
    )
    .into_bytes()
}

fn junk(at: i64, seq: usize) -> Vec<u8> {
    format!(
        "From: root@backup01.example.com (Cron Daemon)\r\nTo: glpi@example.com\r\n\
Subject: Cron <root@backup01> /usr/local/bin/rotate-logs\r\nMessage-ID: <gen-{seq}@backup01.example.com>\r\n\
Date: {}\r\n\r\nrotated 14 files\r\n",
        rfc5322(at)
    )
    .into_bytes()
}

/// `total` mails over seven days: episodes (problem, 0–7 repeats every 5 min, recovery),
/// a storm of `storm` host-down mails within two minutes on Thursday 10:00 (with their
/// recoveries an hour later), and `unmatched` cron mails.
pub fn week(total: usize, storm: usize, unmatched: usize) -> Mailbox {
    let mut rng = Lcg(12);
    let mut mails: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut by_source: BTreeMap<String, u64> = BTreeMap::new();
    let templates: Vec<(String, String)> = TEMPLATES
        .iter()
        .map(|t| (fixture(t.problem), fixture(t.recovery)))
        .collect();
    let storm_problem = fixture("nagios/host-problem.eml");
    let storm_start = WEEK_START + 3 * 86_400 + 10 * 3600;
    for i in 0..storm {
        let at = storm_start + (i as i64 * 120) / storm.max(1) as i64;
        let host = format!("storm-{i:03}");
        let seq = mails.len();
        mails.push((
            at,
            instantiate(&storm_problem, "router-core1", &host, at, seq),
        ));
        *by_source.entry("nagios".into()).or_default() += 1;
    }
    for i in 0..unmatched {
        let at = WEEK_START + 1800 + (i as i64) * (7 * 86_400 / unmatched.max(1) as i64);
        let seq = mails.len();
        mails.push((at, junk(at, seq)));
    }
    let mut episode = 0usize;
    while mails.len() < total {
        let t = &TEMPLATES[episode % TEMPLATES.len()];
        let (problem, recovery) = &templates[episode % TEMPLATES.len()];
        let host = format!("{}-{:03}", t.source, episode / TEMPLATES.len());
        let start = WEEK_START + rng.next(7 * 86_400 - 6 * 3600) as i64;
        let left = total - mails.len();
        let repeats = (rng.next(8) as usize).min(left.saturating_sub(2));
        for r in 0..=repeats {
            let at = start + 300 * r as i64;
            let seq = mails.len();
            mails.push((at, instantiate(problem, t.host, &host, at, seq)));
            *by_source.entry(t.source.into()).or_default() += 1;
        }
        if mails.len() < total {
            let at = start + 300 * (repeats as i64 + 1) + rng.next(1800) as i64;
            let seq = mails.len();
            mails.push((at, instantiate(recovery, t.host, &host, at, seq)));
            *by_source.entry(t.source.into()).or_default() += 1;
        }
        episode += 1;
    }
    mails.sort_by_key(|(at, _)| *at);
    Mailbox {
        mails,
        alerts_by_source: by_source,
        unmatched: unmatched as u64,
        storm: storm as u64,
    }
}

/// mboxrd: a `From ` line before each mail, `From ` lines of the mail quoted with `>`.
pub fn to_mbox(mails: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (at, raw) in mails {
        let t = time::OffsetDateTime::from_unix_timestamp(*at).expect("time");
        out.extend_from_slice(
            format!(
                "From MAILER-DAEMON {} {} {:2} {:02}:{:02}:{:02} {}\n",
                ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
                    [t.weekday().number_days_from_monday() as usize],
                [
                    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                    "Dec"
                ][t.month() as usize - 1],
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.year()
            )
            .as_bytes(),
        );
        for line in raw.split_inclusive(|&b| b == b'\n') {
            let quoted = line.iter().take_while(|&&b| b == b'>').count();
            if line[quoted..].starts_with(b"From ") {
                out.push(b'>');
            }
            out.extend_from_slice(line);
        }
        if !raw.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\n");
    }
    out
}
