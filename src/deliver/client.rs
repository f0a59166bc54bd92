//! The upstream relay client: lettre SMTP connections built from `[relay]`, kept in a small pool,
//! sending already composed raw mail, and the classification of its failures into
//! transient (try again later) and permanent (dead letter).

use super::config::{RelayConfig, RelayTls, StepTimeouts};
use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a mail was not handed to the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// Worth trying again: a 4xx reply, or the relay could not be reached or talked to
    /// (refused, reset, timed out, TLS handshake failed).
    #[error("temporary failure: {reason}")]
    Transient { code: Option<u16>, reason: String },
    /// The relay refused the mail for good (5xx reply), or the mail cannot be sent at all.
    #[error("permanent failure: {reason}")]
    Permanent { code: Option<u16>, reason: String },
    /// The `[relay]` section cannot make a working client.
    #[error("invalid [relay] configuration: {0}")]
    Config(String),
    /// The whole mail was sent but its final reply never came: the relay may have
    /// taken it. Retried like a transient failure; the retry may be a duplicate.
    #[error("temporary failure, possibly delivered: {reason}")]
    MaybeDelivered { reason: String },
}

impl DeliverError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliverError::Permanent { .. })
    }

    /// Whether the relay may have the mail although it did not confirm it.
    pub fn is_maybe_delivered(&self) -> bool {
        matches!(self, DeliverError::MaybeDelivered { .. })
    }

    /// The SMTP reply code, when the relay answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            DeliverError::Transient { code, .. } | DeliverError::Permanent { code, .. } => *code,
            DeliverError::Config(_) | DeliverError::MaybeDelivered { .. } => None,
        }
    }

    /// The relay's reply text or the connection failure, for logs and the queue.
    pub fn reason(&self) -> &str {
        match self {
            DeliverError::Transient { reason, .. } | DeliverError::Permanent { reason, .. } => {
                reason
            }
            DeliverError::Config(reason) | DeliverError::MaybeDelivered { reason } => reason,
        }
    }

    fn from_smtp(err: &lettre::transport::smtp::Error) -> DeliverError {
        let code = err.status().and_then(|c| c.to_string().parse::<u16>().ok());
        let reason = match (code, std::error::Error::source(err)) {
            // The relay's own reply, as it would appear in its log: "451 4.3.0 Try later".
            (Some(code), Some(text)) => format!("{code} {text}"),
            _ => describe_smtp_error(err),
        };
        // Everything but an explicit 5xx reply is retried: network and TLS trouble,
        // 4xx replies, unparsable replies, and client-side refusals (e.g. no common AUTH
        // mechanism) that an operator can fix before the mail expires.
        if err.is_permanent() && !code.is_some_and(is_auth_failure) {
            DeliverError::Permanent { code, reason }
        } else {
            DeliverError::Transient { code, reason }
        }
    }
}

/// 5xx replies about authentication (RFC 4954: 530 required, 534 mechanism too weak,
/// 535 bad credentials, 538 encryption required) say the gateway's configuration is
/// wrong, not the mail: retrying keeps the mail until an operator fixes it.
fn is_auth_failure(code: u16) -> bool {
    matches!(code, 530 | 534 | 535 | 538)
}

/// lettre's Display stops at the first source; walk the chain so that the log shows
/// e.g. "Connection refused (os error 111)".
fn describe_smtp_error(err: &lettre::transport::smtp::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err).and_then(std::error::Error::source);
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// How to open a ready-to-send connection to the relay.
struct Endpoint {
    host: String,
    port: u16,
    hello_name: ClientId,
    tls: Tls,
    credentials: Option<Credentials>,
    timeouts: StepTimeouts,
    /// `[relay] max_message_size`.
    max_message_size: Option<usize>,
}

/// An open connection to the relay, with what its EHLO said.
struct RelayConnection {
    smtp: AsyncSmtpConnection,
    /// The relay's `SIZE` (RFC 1870); None when it advertises none or `SIZE 0`.
    size_limit: Option<usize>,
}

/// Why one step of a transaction failed, which decides whether the connection is kept.
enum StepFailure {
    /// A negative reply: the connection is in a known state and can be reset.
    Reply(DeliverError),
    /// A timeout or a network error: the connection is closed.
    Broken(DeliverError),
}

/// Idle connections kept for reuse, most recently used last.
struct Pool {
    idle: Mutex<Vec<(RelayConnection, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// The relay client: connection settings plus a small pool of open connections.
/// Cheap to clone; clones share the pool.
///
/// lettre's own pool is not used because its async transport has no timeout on SMTP
/// commands and recycles a connection abandoned mid-command; here every step is
/// bounded by its own timeout and a connection that timed out is closed, never reused.
#[derive(Clone)]
pub struct RelayClient {
    endpoint: Arc<Endpoint>,
    pool: Arc<Pool>,
    max_parallel: usize,
    label: String,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("endpoint", &self.label)
            .field("max_parallel", &self.max_parallel)
            .finish()
    }
}

impl RelayClient {
    /// Builds the client; connects lazily, on the first mail.
    pub fn new(config: &RelayConfig) -> Result<RelayClient, DeliverError> {
        if config.host.trim().is_empty() {
            return Err(DeliverError::Config("host is empty".into()));
        }
        if config.max_parallel == 0 {
            return Err(DeliverError::Config(
                "max_parallel must be at least 1".into(),
            ));
        }
        if config.timeout_secs == 0 {
            return Err(DeliverError::Config(
                "timeout_secs must be at least 1".into(),
            ));
        }
        let steps = config.step_timeouts();
        if [
            steps.connect,
            steps.greeting,
            steps.command,
            steps.data_done,
        ]
        .contains(&Duration::ZERO)
        {
            return Err(DeliverError::Config(
                "[relay.timeouts] values must be at least 1".into(),
            ));
        }
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(DeliverError::Config("username without password".into()))
            }
            (None, Some(_)) => {
                return Err(DeliverError::Config("password without username".into()))
            }
        };
        let hello_name = match &config.helo_name {
            Some(name) if name.trim().is_empty() => {
                return Err(DeliverError::Config("helo_name is empty".into()))
            }
            Some(name) => ClientId::Domain(name.trim().to_string()),
            None => ClientId::default(),
        };
        let endpoint = Endpoint {
            host: config.host.trim().to_string(),
            port: config.port,
            hello_name,
            tls: tls_setting(config)?,
            credentials,
            timeouts: config.step_timeouts(),
            max_message_size: config.max_message_size,
        };
        let pool = Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: config.pool_max_idle as usize,
            idle_timeout: Duration::from_secs(config.pool_idle_timeout_secs),
        };
        Ok(RelayClient {
            label: format!("{}:{}", endpoint.host, endpoint.port),
            endpoint: Arc::new(endpoint),
            pool: Arc::new(pool),
            max_parallel: config.max_parallel,
        })
    }

    /// How many mails the worker may send at once.
    pub fn max_parallel(&self) -> usize {
        self.max_parallel
    }

    /// `host:port` of the relay, for logs.
    pub fn endpoint(&self) -> &str {
        &self.label
    }

    /// Sends one mail as is, or shrunk to the relay's `SIZE` (see `shrink`).
    /// `envelope_from` may be empty (or `<>`) for a null sender. Returns the relay's
    /// final reply, e.g. "250 2.0.0 Ok: queued as 4F2A". Each step has its own timeout.
    pub async fn send(
        &self,
        envelope_from: &str,
        envelope_to: &[String],
        raw: &[u8],
    ) -> Result<String, DeliverError> {
        let envelope = build_envelope(envelope_from, envelope_to)?;
        let mut conn = self.connection().await?;
        let limit = self.size_limit(&conn);
        let fitted = super::shrink::fit(raw, limit);
        if let (Some(limit), std::borrow::Cow::Owned(shrunk)) = (limit, &fitted) {
            tracing::info!(
                relay = %self.label,
                size = raw.len(),
                limit,
                shrunk = shrunk.len(),
                "mail over the relay's size limit: shrunk"
            );
        }
        // lettre always ends DATA with CRLF "." CRLF; without this the relay would
        // see an extra empty line at the end of a mail that ends with CRLF.
        let body = fitted.strip_suffix(b"\r\n").unwrap_or(&fitted);
        match self.transaction(&mut conn, &envelope, body).await {
            Ok(response) => {
                self.recycle(conn);
                Ok(format_reply(&response))
            }
            Err(StepFailure::Reply(err)) => {
                self.reset_and_recycle(conn).await;
                Err(err)
            }
            // Dropping the connection closes it: its state mid-command is unknown.
            Err(StepFailure::Broken(err)) => Err(err),
        }
    }

    /// The largest mail this connection may carry.
    fn size_limit(&self, conn: &RelayConnection) -> Option<usize> {
        match (conn.size_limit, self.endpoint.max_message_size) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// MAIL, RCPT, DATA and the message, each step within its own timeout.
    async fn transaction(
        &self,
        conn: &mut RelayConnection,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<Response, StepFailure> {
        let t = self.endpoint.timeouts;
        let mut parameters = Vec::new();
        let non_ascii = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .any(|a: &Address| !AsRef::<str>::as_ref(a).is_ascii());
        if non_ascii {
            if !conn
                .smtp
                .server_info()
                .supports_feature(Extension::SmtpUtfEight)
            {
                return Err(StepFailure::Reply(DeliverError::Transient {
                    code: None,
                    reason: "the envelope has non-ASCII addresses but the relay lacks SMTPUTF8"
                        .into(),
                }));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !body.is_ascii() {
            if !conn
                .smtp
                .server_info()
                .supports_feature(Extension::EightBitMime)
            {
                return Err(StepFailure::Reply(DeliverError::Transient {
                    code: None,
                    reason: "the mail has 8-bit content but the relay lacks 8BITMIME".into(),
                }));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        if conn.size_limit.is_some() {
            parameters.push(MailParameter::Size(body.len() + 5));
        }
        let mail = Mail::new(envelope.from().cloned(), parameters);
        step(t.command, "MAIL FROM", conn.smtp.command(mail)).await?;
        for to in envelope.to() {
            let rcpt = Rcpt::new(to.clone(), Vec::new());
            step(t.command, "RCPT TO", conn.smtp.command(rcpt)).await?;
        }
        step(t.command, "DATA", conn.smtp.command(Data)).await?;
        match tokio::time::timeout(t.data_done, conn.smtp.message(body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.status().is_some() => {
                Err(StepFailure::Reply(DeliverError::from_smtp(&err)))
            }
            Ok(Err(err)) => Err(StepFailure::Broken(DeliverError::from_smtp(&err))),
            Err(_) => Err(StepFailure::Broken(DeliverError::MaybeDelivered {
                reason: format!(
                    "relay did not answer within {} s after the end of data",
                    t.data_done.as_secs()
                ),
            })),
        }
    }

    /// After a negative reply: RSET, and keep the connection if the relay agrees.
    async fn reset_and_recycle(&self, mut conn: RelayConnection) {
        let timeout = self.endpoint.timeouts.command;
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, conn.smtp.command(Rset)).await {
            self.recycle(conn);
        }
    }

    /// Closes the idle connections politely (QUIT).
    pub async fn shutdown(&self) {
        let idle = std::mem::take(&mut *self.pool.lock());
        for (mut conn, _) in idle {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.smtp.abort()).await;
        }
    }

    /// An idle connection that still answers NOOP, or a new one.
    async fn connection(&self) -> Result<RelayConnection, DeliverError> {
        let t = self.endpoint.timeouts;
        while let Some(mut conn) = self.take_idle() {
            let alive = tokio::time::timeout(t.command, conn.smtp.test_connected()).await;
            if alive == Ok(true) {
                return Ok(conn);
            }
        }
        self.connect().await
    }

    /// Connects, greets, secures and authenticates, each within its step's timeout
    /// (lettre reads the greeting and EHLO in one call: twice `greeting`).
    async fn connect(&self) -> Result<RelayConnection, DeliverError> {
        let ep = &*self.endpoint;
        let t = ep.timeouts;
        let mut conn = match &ep.tls {
            Tls::Wrapper(parameters) => {
                bounded(
                    t.connect + t.greeting * 2,
                    "connecting",
                    AsyncSmtpConnection::connect_tokio1(
                        (ep.host.as_str(), ep.port),
                        Some(t.connect),
                        &ep.hello_name,
                        Some(parameters.clone()),
                        None,
                    ),
                )
                .await?
            }
            _ => {
                // Our own socket, for TCP_NODELAY: with Nagle on, each mail waited for the
                // relay's delayed ACK (~40 ms), capping delivery near 100 mails/s.
                let connecting = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port));
                let tcp = match tokio::time::timeout(t.connect, connecting).await {
                    Ok(Ok(tcp)) => tcp,
                    Ok(Err(e)) => {
                        return Err(DeliverError::Transient {
                            code: None,
                            reason: format!("cannot connect to {}:{}: {e}", ep.host, ep.port),
                        })
                    }
                    Err(_) => return Err(timed_out("connecting", t.connect)),
                };
                let _ = tcp.set_nodelay(true);
                bounded(
                    t.greeting * 2,
                    "waiting for the greeting and EHLO reply",
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &ep.hello_name),
                )
                .await?
            }
        };
        if let Tls::Required(parameters) = &ep.tls {
            bounded(
                t.greeting * 2,
                "starting TLS",
                conn.starttls(parameters.clone(), &ep.hello_name),
            )
            .await?;
        }
        if let Some(credentials) = &ep.credentials {
            bounded(
                t.greeting * 2,
                "authenticating",
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await?;
        }
        // lettre keeps no SIZE from its EHLO: ask again (RFC 5321 allows EHLO at any time).
        let ehlo = bounded(
            t.greeting,
            "waiting for the EHLO reply",
            conn.command(Ehlo::new(ep.hello_name.clone())),
        )
        .await?;
        Ok(RelayConnection {
            smtp: conn,
            size_limit: advertised_size(&ehlo),
        })
    }

    fn take_idle(&self) -> Option<RelayConnection> {
        let mut idle = self.pool.lock();
        let idle_timeout = self.pool.idle_timeout;
        idle.retain(|(_, since)| since.elapsed() < idle_timeout);
        idle.pop().map(|(conn, _)| conn)
    }

    fn recycle(&self, conn: RelayConnection) {
        // lettre marks a connection broken after any failed command (and has sent QUIT).
        if conn.smtp.has_broken() {
            return;
        }
        let mut idle = self.pool.lock();
        if idle.len() < self.pool.max_idle {
            idle.push((conn, Instant::now()));
        }
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(RelayConnection, Instant)>> {
        // The lock is never held across a panic-prone section; take it even if poisoned.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One command of a transaction: a negative reply keeps the connection, the rest do not.
async fn step(
    timeout: Duration,
    what: &str,
    command: impl Future<Output = Result<Response, lettre::transport::smtp::Error>>,
) -> Result<Response, StepFailure> {
    match tokio::time::timeout(timeout, command).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) if err.status().is_some() => {
            Err(StepFailure::Reply(DeliverError::from_smtp(&err)))
        }
        Ok(Err(err)) => Err(StepFailure::Broken(DeliverError::from_smtp(&err))),
        Err(_) => Err(StepFailure::Broken(timed_out(
            &format!("waiting for the reply to {what}"),
            timeout,
        ))),
    }
}

/// A connection step that must finish within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    step: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, DeliverError> {
    match tokio::time::timeout(timeout, step).await {
        Ok(result) => result.map_err(|e| DeliverError::from_smtp(&e)),
        Err(_) => Err(timed_out(what, timeout)),
    }
}

/// The `SIZE` keyword of an EHLO reply; `SIZE 0` or a bare `SIZE` means no fixed limit.
fn advertised_size(ehlo: &Response) -> Option<usize> {
    ehlo.message().skip(1).find_map(|line| {
        let mut words = line.split_whitespace();
        let keyword = words.next()?;
        if !keyword.eq_ignore_ascii_case("SIZE") {
            return None;
        }
        words
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
    })
}

fn timed_out(phase: &str, after: Duration) -> DeliverError {
    DeliverError::Transient {
        code: None,
        reason: format!(
            "relay did not answer within {} s while {phase}",
            after.as_secs()
        ),
    }
}

fn tls_setting(config: &RelayConfig) -> Result<Tls, DeliverError> {
    if config.tls == RelayTls::None {
        return Ok(Tls::None);
    }
    let parameters = TlsParameters::builder(config.host.clone())
        .dangerous_accept_invalid_certs(config.accept_invalid_certs)
        .dangerous_accept_invalid_hostnames(config.accept_invalid_certs)
        .build_rustls()
        .map_err(|e| DeliverError::Config(format!("TLS setup: {e}")))?;
    Ok(match config.tls {
        RelayTls::Starttls => Tls::Required(parameters),
        RelayTls::Tls | RelayTls::None => Tls::Wrapper(parameters),
    })
}

fn build_envelope(from: &str, to: &[String]) -> Result<Envelope, DeliverError> {
    let from = match strip_angles(from) {
        "" => None,
        address => Some(parse_address(address, "sender")?),
    };
    let recipients = to
        .iter()
        .map(|rcpt| parse_address(strip_angles(rcpt), "recipient"))
        .collect::<Result<Vec<_>, _>>()?;
    Envelope::new(from, recipients).map_err(|e| DeliverError::Permanent {
        code: None,
        reason: format!("invalid envelope: {e}"),
    })
}

fn strip_angles(address: &str) -> &str {
    let trimmed = address.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(trimmed)
}

fn parse_address(address: &str, role: &str) -> Result<Address, DeliverError> {
    address
        .parse::<Address>()
        .map_err(|e| DeliverError::Permanent {
            code: None,
            reason: format!("invalid envelope {role} {address:?}: {e}"),
        })
}

fn format_reply(response: &Response) -> String {
    let text = response.message().collect::<Vec<_>>().join(" ");
    format!("{} {}", response.code(), text)
        .trim_end()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_accepts_bracketed_and_null_sender() {
        let env = build_envelope("<>", &["<glpi@example.org>".to_string()]).expect("valid");
        assert!(env.from().is_none());
        assert_eq!(env.to()[0].to_string(), "glpi@example.org");
        let env = build_envelope(" alertgate@example.org ", &["a@b.c".into(), "d@e.f".into()])
            .expect("valid");
        assert_eq!(
            env.from().map(|a| a.to_string()).as_deref(),
            Some("alertgate@example.org")
        );
        assert_eq!(env.to().len(), 2);
    }

    #[test]
    fn bad_envelopes_are_permanent() {
        let no_rcpt = build_envelope("a@b.c", &[]).expect_err("no recipients");
        assert!(no_rcpt.is_permanent());
        let bad_rcpt = build_envelope("a@b.c", &["not an address".into()]).expect_err("bad rcpt");
        assert!(bad_rcpt.is_permanent());
        assert!(bad_rcpt.reason().contains("not an address"));
        let bad_from = build_envelope("x@@y", &["a@b.c".into()]).expect_err("bad sender");
        assert!(bad_from.reason().contains("sender"));
    }

    #[test]
    fn config_errors_are_reported() {
        let mut cfg = RelayConfig::new("relay.example.org", 25);
        cfg.username = Some("u".into());
        assert_eq!(
            RelayClient::new(&cfg).expect_err("no password"),
            DeliverError::Config("username without password".into())
        );
        let mut cfg = RelayConfig::new(" ", 25);
        cfg.tls = RelayTls::None;
        assert!(matches!(
            RelayClient::new(&cfg),
            Err(DeliverError::Config(_))
        ));
        let mut cfg = RelayConfig::new("relay", 25);
        cfg.max_parallel = 0;
        assert!(matches!(
            RelayClient::new(&cfg),
            Err(DeliverError::Config(_))
        ));
    }

    #[tokio::test]
    async fn builds_for_every_tls_mode() {
        for tls in [RelayTls::None, RelayTls::Starttls, RelayTls::Tls] {
            let mut cfg = RelayConfig::new("relay.example.org", 25);
            cfg.tls = tls;
            let client = RelayClient::new(&cfg).expect("builds");
            assert_eq!(client.endpoint(), "relay.example.org:25");
            assert_eq!(client.max_parallel(), 4);
        }
    }

    #[tokio::test]
    async fn refused_connection_is_transient() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let mut cfg = RelayConfig::new("127.0.0.1", port);
        cfg.tls = RelayTls::None;
        let client = RelayClient::new(&cfg).expect("builds");
        let err = client
            .send("a@b.c", &["d@e.f".into()], b"Subject: x\r\n\r\nbody\r\n")
            .await
            .expect_err("nobody listens");
        assert!(!err.is_permanent(), "{err}");
        assert_eq!(err.code(), None);
        assert!(err.reason().to_lowercase().contains("refused"), "{err}");
    }
}
