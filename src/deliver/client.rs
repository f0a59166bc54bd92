//! The upstream relay client: one pooled lettre SMTP transport built from `[relay]`,
//! sending already composed raw mail, and the classification of its failures into
//! transient (try again later) and permanent (dead letter).

use super::config::{RelayConfig, RelayTls};
use lettre::address::{Address, Envelope};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::time::Duration;

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
}

impl DeliverError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliverError::Permanent { .. })
    }

    /// The SMTP reply code, when the relay answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            DeliverError::Transient { code, .. } | DeliverError::Permanent { code, .. } => *code,
            DeliverError::Config(_) => None,
        }
    }

    /// The relay's reply text or the connection failure, for logs and the queue.
    pub fn reason(&self) -> &str {
        match self {
            DeliverError::Transient { reason, .. } | DeliverError::Permanent { reason, .. } => {
                reason
            }
            DeliverError::Config(reason) => reason,
        }
    }

    fn from_smtp(err: &lettre::transport::smtp::Error) -> DeliverError {
        let code = err.status().and_then(|c| c.to_string().parse::<u16>().ok());
        let reason = describe_smtp_error(err);
        // Everything but an explicit 5xx reply is retried: network and TLS trouble,
        // 4xx replies, unparsable replies, and client-side refusals (e.g. no common AUTH
        // mechanism) that an operator can fix before the mail expires.
        if err.is_permanent() {
            DeliverError::Permanent { code, reason }
        } else {
            DeliverError::Transient { code, reason }
        }
    }
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

/// A connection pool to the relay; cheap to clone, shares the pool.
#[derive(Clone)]
pub struct RelayClient {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    max_parallel: usize,
    endpoint: String,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("endpoint", &self.endpoint)
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
        let pool = PoolConfig::new()
            .max_size(config.pool_max_idle.max(1))
            .idle_timeout(Duration::from_secs(config.pool_idle_timeout_secs));
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
                .port(config.port)
                .timeout(Some(config.timeout()))
                .tls(tls_setting(config)?)
                .pool_config(pool);
        if let Some(name) = &config.helo_name {
            builder = builder.hello_name(ClientId::Domain(name.clone()));
        }
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(DeliverError::Config("username without password".into()))
            }
            (None, Some(_)) => {
                return Err(DeliverError::Config("password without username".into()))
            }
        }
        Ok(RelayClient {
            transport: builder.build(),
            max_parallel: config.max_parallel,
            endpoint: format!("{}:{}", config.host, config.port),
        })
    }

    /// How many mails the worker may send at once.
    pub fn max_parallel(&self) -> usize {
        self.max_parallel
    }

    /// `host:port` of the relay, for logs.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends one mail as is. `envelope_from` may be empty (or `<>`) for a null sender.
    /// Returns the relay's final reply, e.g. "250 2.0.0 Ok: queued as 4F2A".
    pub async fn send(
        &self,
        envelope_from: &str,
        envelope_to: &[String],
        raw: &[u8],
    ) -> Result<String, DeliverError> {
        let envelope = build_envelope(envelope_from, envelope_to)?;
        match self.transport.send_raw(&envelope, raw).await {
            Ok(response) => Ok(format_reply(&response)),
            Err(err) => Err(DeliverError::from_smtp(&err)),
        }
    }

    /// Closes pooled connections (QUIT is not waited for).
    pub async fn shutdown(&self) {
        self.transport.shutdown().await;
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
