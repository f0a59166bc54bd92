//! Inbound SMTP: the listeners, the connection policy applied at connect (client networks,
//! connection limit), TLS setup, and graceful shutdown. Sessions live in `session`.

pub mod auth;
pub mod header;
pub mod reply;
pub mod session;
pub mod slots;
mod tls;

use crate::config::{Config, ServerPolicy};
use crate::store::SpoolHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

/// What every session of the server shares.
pub struct Shared {
    pub config: Config,
    pub policy: ServerPolicy,
    pub spool: SpoolHandle,
    pub tls: Option<TlsAcceptor>,
    /// Kept across reloads: failures count per address, whatever the configuration.
    pub auth_throttle: Arc<auth::AuthThrottle>,
}

impl Shared {
    fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.config.server.command_timeout_secs)
    }
    fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.config.server.data_timeout_secs)
    }
    /// A DATA transfer's deadline: `data_timeout` plus one second per `min_data_rate`
    /// bytes received, so only a client sending at least that fast can stretch it.
    fn data_deadline(
        &self,
        started: tokio::time::Instant,
        received: usize,
    ) -> tokio::time::Instant {
        let rate = self.config.server.min_data_rate.max(1);
        let earned = Duration::from_secs_f64(received as f64 / rate as f64);
        started + self.data_timeout() + earned
    }
}

/// The settings new sessions start with; replaced by a reload.
type Current = Arc<std::sync::RwLock<Arc<Shared>>>;

/// A bound SMTP server, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    current: Current,
    listeners: Vec<TcpListener>,
    /// Implicit-TLS listeners (`listen_tls`).
    tls_listeners: Vec<TcpListener>,
}

/// Applies a reloaded configuration to the sessions that start from now on.
#[derive(Clone)]
pub struct ServerReloader {
    current: Current,
}

impl ServerReloader {
    /// Fails (and changes nothing) when the new TLS files cannot be loaded.
    pub fn apply(&self, config: Config, policy: ServerPolicy) -> Result<(), SmtpError> {
        let tls = match &config.server.tls {
            Some(t) => Some(load_tls(&t.cert, &t.key)?),
            None => None,
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let spool = current.spool.clone();
        let auth_throttle = current.auth_throttle.clone();
        *current = Arc::new(Shared {
            config,
            policy,
            spool,
            tls,
            auth_throttle,
        });
        Ok(())
    }
}

fn snapshot(current: &Current) -> Arc<Shared> {
    current.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl Server {
    pub async fn bind(
        config: Config,
        policy: ServerPolicy,
        spool: SpoolHandle,
    ) -> Result<Server, SmtpError> {
        let tls = match &config.server.tls {
            Some(t) => Some(load_tls(&t.cert, &t.key)?),
            None => None,
        };
        let mut listeners = Vec::new();
        for addr in &policy.listen {
            listeners.push(bind_one(*addr).await?);
        }
        let mut tls_listeners = Vec::new();
        for addr in &policy.listen_tls {
            if tls.is_none() {
                return Err(SmtpError::Tls(format!(
                    "listen_tls {addr} needs [server.tls] cert and key"
                )));
            }
            tls_listeners.push(bind_one(*addr).await?);
        }
        let auth_throttle = Arc::new(auth::AuthThrottle::new(Duration::from_millis(
            config.server.auth.failure_delay_ms,
        )));
        let shared = Arc::new(Shared {
            config,
            policy,
            spool,
            tls,
            auth_throttle,
        });
        Ok(Server {
            current: Arc::new(std::sync::RwLock::new(shared.clone())),
            shared,
            listeners,
            tls_listeners,
        })
    }

    /// Addresses of the implicit-TLS listeners.
    pub fn local_tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn reloader(&self) -> ServerReloader {
        ServerReloader {
            current: self.current.clone(),
        }
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serve until `shutdown` turns true; then stop accepting, give sessions in DATA up to
    /// `shutdown_grace_secs` to finish (the others are told 421), and return.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let server = &self.shared.config.server;
        let limit = Arc::new(slots::Slots::new(
            server.max_connections,
            server.max_connections_per_client,
            Duration::from_secs(server.idle_eviction_secs),
            // An evicted session answers 421 and closes at once; this is a safety bound.
            Duration::from_secs(5),
        ));
        let mut accepts = JoinSet::new();
        let all = self
            .listeners
            .into_iter()
            .map(|l| (l, false))
            .chain(self.tls_listeners.into_iter().map(|l| (l, true)));
        for (listener, implicit_tls) in all {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, implicit_tls, "listening");
            }
            accepts.spawn(accept_loop(
                listener,
                implicit_tls,
                self.current.clone(),
                limit.clone(),
                shutdown.clone(),
            ));
        }
        let mut stop = shutdown.clone();
        let _ = stop.wait_for(|s| *s).await;
        accepts.abort_all();
        while accepts.join_next().await.is_some() {}
        let grace = Duration::from_secs(self.shared.config.server.shutdown_grace_secs);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections, waiting for sessions"
        );
        if tokio::time::timeout(grace, limit.all_free()).await.is_err() {
            tracing::warn!("shutdown grace period over; abandoning remaining sessions");
        }
    }
}

async fn bind_one(addr: SocketAddr) -> Result<TcpListener, SmtpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SmtpError::Bind { addr, source })
}

async fn accept_loop(
    listener: TcpListener,
    implicit_tls: bool,
    current: Current,
    limit: Arc<slots::Slots>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = snapshot(&current);
        let shutdown = shutdown.clone();
        let limit = limit.clone();
        tokio::spawn(async move {
            match limit.admit(peer.ip()).await {
                slots::Admission::Admitted(slot) if implicit_tls => {
                    tls::handle_implicit(stream, peer, shared, shutdown, slot).await;
                }
                slots::Admission::Admitted(slot) => {
                    if implicit_tls {
                        tls::handle_implicit(stream, peer, shared, shutdown, slot).await;
                    } else {
                        handle_connection(stream, peer, shared, shutdown, slot).await;
                    }
                }
                // A plaintext 421 means nothing to a client expecting TLS: it is just closed.
                slots::Admission::ClientLimit | slots::Admission::Busy if implicit_tls => {
                    tracing::warn!(%peer, "refused on the implicit-TLS listener: too many connections");
                }
                slots::Admission::ClientLimit => {
                    tracing::warn!(%peer, "refused: too many connections from this address");
                    refuse(stream, reply::too_many_connections_from_client()).await;
                }
                slots::Admission::Busy => {
                    tracing::warn!(%peer, "refused: too many connections");
                    refuse(stream, reply::too_many_connections()).await;
                }
            }
        });
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    slot: slots::Slot,
) {
    if !shared.policy.client_allowed(peer.ip()) {
        tracing::info!(%peer, "refused: client not in allowed_networks");
        refuse(stream, reply::client_refused(&peer.ip().to_string())).await;
        return;
    }
    session::Session::new(Box::new(stream), shared, peer, shutdown)
        .with_slot(slot)
        .run()
        .await;
}

async fn refuse<S: tokio::io::AsyncWrite + Unpin>(mut stream: S, r: reply::Reply) {
    crate::http::metrics::metrics().smtp_reply(r.code);
    let mut out = Vec::new();
    r.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn load_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, SmtpError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| SmtpError::TlsFile {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SmtpError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(SmtpError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| SmtpError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| SmtpError::Tls(format!("{}: no private key found", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SmtpError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| SmtpError::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
