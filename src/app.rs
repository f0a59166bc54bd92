//! The running gateway: wires the store, the SMTP listeners and the workers together,
//! and turns SIGTERM/SIGINT into an orderly shutdown. The edge of the program: anyhow here.

use crate::config::LoadedConfig;
use crate::smtp::Server;
use crate::store::SpoolHandle;
use anyhow::Context;
use std::net::SocketAddr;
use tokio::sync::watch;

/// Run `alertgate serve` until a signal asks us to stop.
pub async fn serve(loaded: LoadedConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        let _ = stop_tx.send(true);
    });
    serve_until(loaded, stop_rx).await
}

/// Run the gateway until `stop` turns true.
pub async fn serve_until(loaded: LoadedConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    start(loaded, stop).await?.wait().await;
    Ok(())
}

/// A started gateway: its listeners are bound, its workers running.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Wait until the gateway has shut down.
    pub async fn wait(self) {
        let _ = self.server.await;
        tracing::info!("alertgate stopped");
    }
}

/// Open the store, bind the listeners and start serving; stops when `stop` turns true.
pub async fn start(loaded: LoadedConfig, stop: watch::Receiver<bool>) -> anyhow::Result<Running> {
    let store_path = loaded.config.store.path.clone();
    let spool = SpoolHandle::start(&store_path, loaded.config.store.group_commit_max)
        .with_context(|| format!("opening the store {}", store_path.display()))?;
    let server = Server::bind(loaded.config.clone(), loaded.policy.clone(), spool.clone()).await?;
    let addrs = server.local_addrs();
    tracing::info!(store = %store_path.display(), "alertgate started");
    let server = tokio::spawn(server.serve(stop));
    Ok(Running { addrs, server })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
