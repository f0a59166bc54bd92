//! Where the delivery worker hands outbound mail: the SMTP relay or the maildir outbox,
//! chosen by `[relay] kind`.

use super::client::{DeliverError, RelayClient};
use super::config::{RelayConfig, RelayKind};
use super::maildir::MaildirOutbox;

/// The delivery worker's destination. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Transport {
    Relay(RelayClient),
    Maildir(MaildirOutbox),
}

impl Transport {
    pub fn from_config(config: &RelayConfig) -> Result<Transport, DeliverError> {
        match config.kind {
            RelayKind::Smtp => RelayClient::new(config).map(Transport::Relay),
            RelayKind::Maildir => {
                let dir = config.maildir.as_deref().ok_or_else(|| {
                    DeliverError::Config("kind = \"maildir\" needs `maildir`".into())
                })?;
                MaildirOutbox::new(dir).map(Transport::Maildir)
            }
        }
    }

    pub async fn send(
        &self,
        envelope_from: &str,
        envelope_to: &[String],
        raw: &[u8],
    ) -> Result<String, DeliverError> {
        match self {
            Transport::Relay(c) => c.send(envelope_from, envelope_to, raw).await,
            Transport::Maildir(m) => m.send(envelope_from, envelope_to, raw).await,
        }
    }

    pub fn max_parallel(&self) -> usize {
        match self {
            Transport::Relay(c) => c.max_parallel(),
            Transport::Maildir(_) => 1,
        }
    }

    pub fn endpoint(&self) -> &str {
        match self {
            Transport::Relay(c) => c.endpoint(),
            Transport::Maildir(m) => m.endpoint(),
        }
    }

    pub async fn shutdown(&self) {
        if let Transport::Relay(c) = self {
            c.shutdown().await;
        }
    }
}

impl From<RelayClient> for Transport {
    fn from(client: RelayClient) -> Transport {
        Transport::Relay(client)
    }
}
