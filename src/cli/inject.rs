//! `alertgate inject`: submits mail files into the spool as if received over SMTP, like
//! Postfix's `sendmail`: the recipients must be ones the gateway accepts, the size limit
//! holds, and a `Received:` header records the local submission.

use crate::config::LoadedConfig;
use crate::store::{unix_now, Envelope, SpoolHandle};
use mail_parser::MessageParser;
use std::path::{Path, PathBuf};

/// What `inject` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct InjectRequest {
    pub files: Vec<PathBuf>,
    /// Envelope sender; default: the From: header's address.
    pub from: Option<String>,
    /// Envelope recipients; default: the To: and Cc: headers' addresses.
    pub to: Vec<String>,
}

/// Why one file was not submitted.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Refused { file: String, message: String },
    #[error("{file}: not stored: {message}")]
    Store { file: String, message: String },
}

/// Submits every file; returns one line per file (spool id or the error).
/// Stops at nothing: each file succeeds or fails on its own.
pub async fn inject(
    loaded: &LoadedConfig,
    request: &InjectRequest,
) -> Vec<Result<i64, InjectError>> {
    let spool = match SpoolHandle::start(
        &loaded.config.store.location(),
        &loaded.config.store.incoming_dir(),
        loaded.config.store.group_commit_max,
    ) {
        Ok(s) => s,
        Err(e) => {
            return request
                .files
                .iter()
                .map(|f| {
                    Err(InjectError::Store {
                        file: f.display().to_string(),
                        message: e.to_string(),
                    })
                })
                .collect()
        }
    };
    let mut results = Vec::with_capacity(request.files.len());
    for file in &request.files {
        results.push(inject_one(loaded, &spool, request, file).await);
    }
    results
}

async fn inject_one(
    loaded: &LoadedConfig,
    spool: &SpoolHandle,
    request: &InjectRequest,
    file: &Path,
) -> Result<i64, InjectError> {
    let name = file.display().to_string();
    let refused = |message: String| InjectError::Refused {
        file: name.clone(),
        message,
    };
    let bytes = std::fs::read(file).map_err(|source| InjectError::Read {
        file: name.clone(),
        source,
    })?;
    let body = to_crlf(&bytes);
    let max = loaded.config.server.max_message_size;
    if body.len() > max {
        return Err(refused(format!(
            "{} bytes is over max_message_size ({max}); SMTP would answer 552 5.3.4",
            body.len()
        )));
    }
    let message = MessageParser::default()
        .parse_headers(&body)
        .ok_or_else(|| refused("not an RFC 5322 message (no header)".into()))?;
    let mail_from = match &request.from {
        Some(f) => f.clone(),
        None => message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_string(),
    };
    let rcpt_to: Vec<String> = if request.to.is_empty() {
        [message.to(), message.cc()]
            .into_iter()
            .flatten()
            .flat_map(|list| list.iter())
            .filter_map(|a| a.address().map(str::to_string))
            .collect()
    } else {
        request.to.clone()
    };
    if rcpt_to.is_empty() {
        return Err(refused(
            "no recipient: the mail has no To: or Cc: address and no --to was given".into(),
        ));
    }
    if let Some(bad) = rcpt_to
        .iter()
        .find(|r| !loaded.policy.recipient_accepted(r))
    {
        return Err(refused(format!(
            "recipient <{bad}> is not in accepted_recipients or feedback_addresses; SMTP would answer 550 5.7.1"
        )));
    }
    let envelope = Envelope {
        peer: "local".into(),
        helo: "localhost".into(),
        mail_from,
        rcpt_to,
        tls: false,
        auth_user: None,
        received_at: unix_now(),
    };
    let mut raw = received_header(&loaded.config.server.hostname).into_bytes();
    raw.extend_from_slice(&body);
    let message_id = crate::smtp::header::message_id(&raw);
    spool
        .store(envelope, raw, message_id)
        .await
        .map_err(|e| InjectError::Store {
            file: name.clone(),
            message: e.to_string(),
        })
}

fn received_header(hostname: &str) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let user: String = std::env::var("USER")
        .unwrap_or_else(|_| "unknown".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    format!("Received: by {hostname} (alertgate inject, user {user});\r\n\t{date}\r\n")
}

/// Files on disk often end lines with LF only; SMTP carries CRLF.
fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(to_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }
}
