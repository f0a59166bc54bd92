//! Monitoring mails as the tools send them, for end-to-end tests (formats from
//! shared/design/alert-formats.md, as in tests/fixtures).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Centreon's default `service-notify-by-email` mail (prints $HOSTALIAS$).
pub fn centreon_service(
    kind: &str,
    host: &str,
    service: &str,
    state: &str,
    output: &str,
) -> Vec<u8> {
    format!(
        "To: glpi@example.test\r\nSubject: ** {kind} alert - {host}/{service} is {state} **\r\n\
Message-Id: <svc.{id}@central.example.test>\r\nDate: Tue, 12 Mar 2024 14:05:02 +0100\r\n\
From: centreon-engine@central.example.test (Centreon Engine)\r\n\r\n\
***** centreon Notification *****\r\n\r\nNotification Type: {kind}\r\n\r\nService: {service}\r\n\
Host: {host}\r\nAddress: 10.0.0.5\r\nState: {state}\r\n\r\n\
Date/Time: 2024-03-12 Additional Info : {output}\r\n",
        id = next_id()
    )
    .into_bytes()
}

/// Centreon's default `host-notify-by-email` mail.
pub fn centreon_host(kind: &str, host: &str, state: &str, output: &str) -> Vec<u8> {
    format!(
        "To: glpi@example.test\r\nSubject: Host {state} alert for {host}!\r\n\
Message-Id: <host.{id}@central.example.test>\r\nDate: Tue, 12 Mar 2024 14:05:02 +0100\r\n\
From: centreon-engine@central.example.test (Centreon Engine)\r\n\r\n\
***** centreon Notification *****\r\n\r\nType:{kind}\r\nHost: {host}\r\nState: {state}\r\n\
Address: 10.0.0.5\r\nInfo: {output}\r\nDate/Time: 2024-03-12\r\n",
        id = next_id()
    )
    .into_bytes()
}

/// The header lines of a mail (unfolded), for checks.
pub fn header_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.push_str(line);
            }
        } else {
            out.push(line.to_string());
        }
    }
    out
}

/// A header's raw (unfolded) value.
pub fn header(raw: &[u8], name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    header_lines(raw)
        .into_iter()
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
}

/// The decoded Subject.
pub fn subject(raw: &[u8]) -> String {
    mail_parser::MessageParser::new()
        .parse(raw)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default()
}
