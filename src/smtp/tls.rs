//! Implicit TLS (RFC 8314, "SMTPS" on 465, the vROps Standard Email Plugin's "SSL"):
//! the TLS handshake comes first, bounded by the command timeout; a client that does
//! not speak TLS gets nothing but the TLS alert rustls sends.

use super::{refuse, reply, session, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub(super) async fn handle_implicit(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    slot: super::slots::Slot,
) {
    let Some(acceptor) = shared.tls.clone() else {
        return;
    };
    let handshake = tokio::time::timeout(shared.command_timeout(), acceptor.accept(stream)).await;
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "implicit TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "implicit TLS handshake timed out");
            return;
        }
    };
    if !shared.policy.client_allowed(peer.ip()) {
        tracing::info!(%peer, "refused: client not in allowed_networks");
        refuse(tls_stream, reply::client_refused(&peer.ip().to_string())).await;
        return;
    }
    session::Session::new(Box::new(tls_stream), shared, peer, shutdown)
        .with_tls()
        .with_slot(slot)
        .run()
        .await;
}
