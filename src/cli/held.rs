//! What only the running gateway knows about its queue: the delivery outcomes it holds in
//! memory while the store refuses them. `queue list` asks its HTTP listener for them, as
//! Postfix's `postqueue -p` asks the running showq daemon.

use crate::deliver::HeldOutcome;
use crate::http::HttpSettings;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// How long `queue list` waits for the running gateway before listing without it.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// A held-outcome list is small; more than this is not our gateway answering.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("cannot reach the running gateway at http://{addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the running gateway at http://{addr} answered {status}: {body}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("the running gateway at http://{addr} sent an unreadable answer: {reason}")]
    Unreadable { addr: SocketAddr, reason: String },
}

/// Where to reach the listener: a wildcard listen address is reached on loopback.
pub fn reach(settings: &HttpSettings) -> SocketAddr {
    let ip = match settings.listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, settings.listen.port())
}

/// Asks the gateway listening per `settings` for its held outcomes.
pub fn fetch(settings: &HttpSettings) -> Result<Vec<HeldOutcome>, AskError> {
    let addr = reach(settings);
    let unreachable = |source| AskError::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, ASK_TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ASK_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ASK_TIMEOUT)))
        .map_err(unreachable)?;
    let mut request = format!("GET /queue/unrecorded HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(token) = &settings.token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(unreachable)?;
    parse_answer(addr, &answer)
}

fn parse_answer(addr: SocketAddr, answer: &[u8]) -> Result<Vec<HeldOutcome>, AskError> {
    let unreadable = |reason: &str| AskError::Unreadable {
        addr,
        reason: reason.to_string(),
    };
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| unreadable("no HTTP header"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| unreadable("no HTTP status"))?;
    if status != 200 {
        return Err(AskError::Refused {
            addr,
            status,
            body: body.trim().chars().take(200).collect(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        unrecorded: Vec<HeldOutcome>,
    }
    serde_json::from_str::<Answer>(body)
        .map(|a| a.unrecorded)
        .map_err(|e| unreadable(&e.to_string()))
}

/// How `queue list` shows a held outcome in place of the store's state.
pub fn describe(held: &HeldOutcome) -> String {
    format!("{}, not yet recorded (store fault)", held.outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9925".parse().unwrap()
    }

    #[test]
    fn reads_the_held_outcomes() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"unrecorded\":[{\"id\":3,\"message_id\":\"<a.0@gw>\",\"incident\":\"ALERT-1\",\"outcome\":\"sent\",\"at\":5,\"record_attempts\":2,\"error\":\"disk full\"}]}\n";
        let held = parse_answer(addr(), answer).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].id, 3);
        assert_eq!(describe(&held[0]), "sent, not yet recorded (store fault)");
    }

    #[test]
    fn a_refusal_or_garbage_is_an_error_not_an_empty_list() {
        let refused = parse_answer(
            addr(),
            b"HTTP/1.1 401 Unauthorized\r\n\r\nbearer token required\n",
        );
        assert!(
            matches!(refused, Err(AskError::Refused { status: 401, .. })),
            "{refused:?}"
        );
        assert!(parse_answer(addr(), b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_answer(addr(), b"HTTP/1.1 200 OK\r\n\r\n<html>").is_err());
    }

    #[test]
    fn a_wildcard_listener_is_asked_on_loopback() {
        let settings = |listen: &str| HttpSettings {
            listen: listen.parse().unwrap(),
            allowed_networks: Vec::new(),
            token: None,
        };
        assert_eq!(reach(&settings("0.0.0.0:9925")), addr());
        assert_eq!(
            reach(&settings("[::]:9925")),
            "[::1]:9925".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reach(&settings("192.0.2.4:80")),
            "192.0.2.4:80".parse::<SocketAddr>().unwrap()
        );
    }
}
