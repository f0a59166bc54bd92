//! The running gateway: wires the store, the SMTP listeners and the workers together,
//! and turns SIGTERM/SIGINT into an orderly shutdown. The edge of the program: anyhow here.

use crate::clock::Clock;
use crate::config::LoadedConfig;
use crate::deliver::{DeliveryWorker, RelayClient};
use crate::feedback::worker::ApiWorker;
use crate::feedback::GlpiApi;
use crate::pipeline::{Pipeline, PipelineSettings, TicketInfo};
use crate::rules::RuleSet;
use crate::smtp::Server;
use crate::store::outbound::SqliteQueue;
use crate::store::SpoolHandle;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::sync::{mpsc, Notify};

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

/// Open the store, start the workers, bind the listeners and start serving; everything
/// stops when `stop` turns true.
pub async fn start(loaded: LoadedConfig, stop: watch::Receiver<bool>) -> anyhow::Result<Running> {
    start_with_clock(loaded, stop, Clock::system()).await
}

/// The pipeline's settings from a validated configuration (also used by `replay`).
pub fn pipeline_settings(loaded: &LoadedConfig, rules: RuleSet) -> PipelineSettings {
    PipelineSettings {
        rules: Arc::new(rules),
        compose: loaded.compose.clone(),
        correlation: loaded.config.correlation.clone(),
        unmatched: loaded.config.rules.unmatched,
        hold_until_ticket_known: loaded.config.feedback_enabled(),
        ticket_timeout_secs: loaded.config.feedback.ticket_lookup_timeout_secs as i64,
        solve_on_recovery: loaded
            .config
            .glpi_api
            .as_ref()
            .is_some_and(|a| a.solve_on_recovery),
        feedback_addresses: loaded.policy.feedback_addresses.clone(),
        glpi: crate::pipeline::GlpiFlow {
            api_updates: loaded.config.glpi_api.is_some(),
            ..crate::pipeline::GlpiFlow::default()
        },
    }
}

/// As `start`, with the time-driven stages reading `clock` (tests drive a manual one).
pub async fn start_with_clock(
    loaded: LoadedConfig,
    stop: watch::Receiver<bool>,
    clock: Clock,
) -> anyhow::Result<Running> {
    let store_path = loaded.config.store.path.clone();
    let spool = SpoolHandle::start(&store_path, loaded.config.store.group_commit_max)
        .with_context(|| format!("opening the store {}", store_path.display()))?;
    let rules = RuleSet::load(&loaded.config.rules.dirs)
        .map_err(|e| anyhow::anyhow!("loading rules:\n{e}"))?;
    tracing::info!(rules = rules.len(), "rules loaded");
    let settings = pipeline_settings(&loaded, rules);
    let pipeline = Pipeline::open(&store_path, settings).context("starting the pipeline")?;
    let outbound_wake = Arc::new(Notify::new());
    let client = RelayClient::new(&loaded.relay).map_err(|e| anyhow::anyhow!("relay: {e}"))?;
    let (opened_tx, opened_rx) = mpsc::unbounded_channel();
    let (found_tx, found_rx) = mpsc::unbounded_channel();
    let mut queue = SqliteQueue::open(&store_path)?;
    let api_worker = match &loaded.config.glpi_api {
        Some(api_config) => {
            queue = queue.notify_opened(opened_tx);
            let api = GlpiApi::new(api_config).map_err(|e| anyhow::anyhow!("glpi_api: {e}"))?;
            Some(
                ApiWorker::new(
                    api,
                    store_path.clone(),
                    loaded.config.feedback.ticket_lookup_timeout_secs as i64,
                    opened_rx,
                    found_tx,
                )?
                .with_clock(clock.clone()),
            )
        }
        None => None,
    };
    let queue = Arc::new(queue);
    let delivery_clock = clock.clone();
    // Due times are written on `clock` (pipeline), so delivery reads the same clock.
    let delivery = DeliveryWorker::new(
        queue,
        client,
        loaded.relay.retry.clone(),
        outbound_wake.clone(),
    )
    .with_clock(Arc::new(move || delivery_clock.now()));

    let server = Server::bind(loaded.config.clone(), loaded.policy.clone(), spool.clone()).await?;
    let addrs = server.local_addrs();
    tracing::info!(store = %store_path.display(), "alertgate started");
    let pipeline = tokio::spawn(run_pipeline(
        pipeline,
        clock,
        spool.committed.clone(),
        outbound_wake,
        found_rx,
        stop.clone(),
    ));
    let api = api_worker.map(|w| tokio::spawn(w.run(stop.clone())));
    let delivery = tokio::spawn(delivery.run(stop.clone()));
    let server = tokio::spawn(server.serve(stop));
    let all = tokio::spawn(async move {
        let _ = server.await;
        let _ = pipeline.await;
        let _ = delivery.await;
        if let Some(api) = api {
            let _ = api.await;
        }
    });
    Ok(Running { addrs, server: all })
}

/// Process the spool whenever something was committed (or once a second, for the
/// time-driven decisions), on a blocking thread since SQLite calls block.
async fn run_pipeline(
    mut pipeline: Pipeline,
    clock: Clock,
    committed: Arc<Notify>,
    outbound_wake: Arc<Notify>,
    mut found: mpsc::UnboundedReceiver<TicketInfo>,
    stop: watch::Receiver<bool>,
) {
    let mut last_tick = 0;
    loop {
        let now = clock.now();
        let mut tickets = Vec::new();
        while let Ok(info) = found.try_recv() {
            tickets.push(info);
        }
        let tick_due = now != last_tick;
        let joined = tokio::task::spawn_blocking(move || {
            if let Err(e) = pipeline.learn_tickets(&tickets, now) {
                tracing::error!(error = %e, "recording ticket ids failed");
            }
            let processed = pipeline.run_batch(now);
            let ticked = if tick_due { pipeline.tick(now) } else { Ok(()) };
            (pipeline, processed, ticked)
        })
        .await;
        let Ok((returned, processed, ticked)) = joined else {
            tracing::error!("pipeline thread panicked; stopping the pipeline");
            return;
        };
        pipeline = returned;
        last_tick = now;
        if let Err(e) = &ticked {
            tracing::error!(error = %e, "pipeline tick failed");
        }
        let busy = match processed {
            Ok(n) => {
                if n > 0 {
                    outbound_wake.notify_one();
                }
                n > 0
            }
            Err(e) => {
                tracing::error!(error = %e, "pipeline batch failed; retrying in a second");
                false
            }
        };
        if ticked.is_ok() && tick_due {
            outbound_wake.notify_one();
        }
        if *stop.borrow() {
            return;
        }
        if !busy {
            tokio::select! {
                _ = committed.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = wait_stop(stop.clone()) => return,
            }
        }
    }
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
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
