//! The running gateway: wires the store, the SMTP and HTTP listeners and the workers
//! together, turns SIGTERM/SIGINT into an orderly shutdown and SIGHUP into a reload.
//! The edge of the program: anyhow here.

use crate::clock::Clock;
use crate::config::LoadedConfig;
use crate::deliver::{DeliveryWorker, Transport};
use crate::feedback::worker::ApiWorker;
use crate::feedback::{GlpiApi, RightsCheck};
use crate::http::HttpServer;
use crate::pipeline::{Pipeline, PipelineSettings, TicketInfo};
use crate::rules::RuleSet;
use crate::smtp::{Server, ServerReloader};
use crate::store::outbound::StoreQueue;
use crate::store::SpoolHandle;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::sync::{mpsc, Notify};

/// Run `alertgate serve` until a signal asks us to stop.
/// Writes the pid file next to the store (for `alertgate reload`) and tells systemd
/// when it is ready.
pub async fn serve(loaded: LoadedConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        let _ = stop_tx.send(true);
    });
    let pid_file = crate::cli::reload::pid_file(&loaded.config.store.path);
    let running = start(loaded, stop_rx).await?;
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        tracing::warn!(file = %pid_file.display(), error = %e, "cannot write the pid file; `alertgate reload` will not find this process");
    }
    reload_on_sighup(running.reloader());
    // Outside systemd (no NOTIFY_SOCKET) this does nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    running.wait().await;
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}

#[cfg(unix)]
fn reload_on_sighup(reloader: Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload needs a restart");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
            reloader.reload();
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        }
    });
}

#[cfg(not(unix))]
fn reload_on_sighup(_reloader: Reloader) {}

/// Run the gateway until `stop` turns true.
pub async fn serve_until(loaded: LoadedConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    start(loaded, stop).await?.wait().await;
    Ok(())
}

/// A started gateway: its listeners are bound, its workers running.
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    /// The implicit-TLS listeners' addresses (`listen_tls`).
    pub tls_addrs: Vec<SocketAddr>,
    /// The HTTP listener's address, when `[http]` is configured.
    pub http_addr: Option<SocketAddr>,
    /// What the GLPI API user may do, checked at start (`None` without `[glpi_api]`).
    pub glpi_rights: Option<RightsCheck>,
    server: tokio::task::JoinHandle<()>,
    reloader: Reloader,
}

/// Re-reads the configuration file and the rules and applies them to new sessions and
/// new mails; an invalid one is logged and the running one kept.
#[derive(Clone)]
pub struct Reloader {
    current: Arc<std::sync::Mutex<LoadedConfig>>,
    smtp: ServerReloader,
    pipeline: mpsc::UnboundedSender<PipelineSettings>,
    /// From the rights check at start: the API session is not reopened on reload.
    may_solve: bool,
}

impl Reloader {
    /// Returns whether the new configuration was taken.
    pub fn reload(&self) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let path = current.path.clone();
        tracing::info!(config = %path.display(), "reloading the configuration");
        let loaded = match LoadedConfig::load(&path) {
            Ok(l) => l,
            Err(e) => {
                for problem in &e.problems {
                    tracing::error!(problem = %problem, "reload refused: configuration invalid, keeping the running one");
                }
                return false;
            }
        };
        let rules = match RuleSet::load(&loaded.config.rules.dirs) {
            Ok(r) => r,
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(problem = %line, "reload refused: rules invalid, keeping the running ones");
                }
                return false;
            }
        };
        for what in needs_restart(&current, &loaded) {
            tracing::warn!(
                setting = what,
                "changed, but takes effect only after a restart"
            );
        }
        if let Err(e) = self
            .smtp
            .apply(loaded.config.clone(), loaded.policy.clone())
        {
            tracing::error!(error = %e, "reload refused, keeping the running configuration");
            return false;
        }
        let _ = self
            .pipeline
            .send(pipeline_settings(&loaded, rules, self.may_solve));
        tracing::info!(rules = %loaded.config.rules.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(","), "configuration reloaded: new sessions and new mails use it");
        *current = loaded;
        true
    }
}

/// Settings that bound sockets or opened files at start.
fn needs_restart(old: &LoadedConfig, new: &LoadedConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.policy.listen != new.policy.listen {
        changed.push("server.listen");
    }
    if old.policy.listen_tls != new.policy.listen_tls {
        changed.push("server.listen_tls");
    }
    if old.config.server.max_connections != new.config.server.max_connections {
        changed.push("server.max_connections");
    }
    if old.config.store.url != new.config.store.url {
        changed.push("store.url");
    }
    if old.config.store.path != new.config.store.path {
        changed.push("store.path");
    }
    if old.relay != new.relay {
        changed.push("relay");
    }
    if old.http.as_ref().map(|h| h.listen) != new.http.as_ref().map(|h| h.listen)
        || old.http.as_ref().map(|h| &h.token) != new.http.as_ref().map(|h| &h.token)
    {
        changed.push("http");
    }
    if old.config.glpi_api.is_some() != new.config.glpi_api.is_some() {
        changed.push("glpi_api");
    }
    changed
}

/// The pipeline's settings from a validated configuration (also used by `replay`);
/// `may_solve`: the start-up rights check allows solutions.
pub fn pipeline_settings(
    loaded: &LoadedConfig,
    rules: RuleSet,
    may_solve: bool,
) -> PipelineSettings {
    PipelineSettings {
        rules: Arc::new(rules),
        compose: loaded.compose.clone(),
        notifications: crate::feedback::NotificationReader::new(
            &loaded.compose.glpi_tag,
            &loaded.config.feedback.solved_words,
            &loaded.config.feedback.closed_words,
        ),
        correlation: loaded.config.correlation.clone(),
        unmatched: loaded.config.rules.unmatched,
        hold_until_ticket_known: loaded.config.feedback_enabled(),
        // Unset: derived from GLPI's pace and the backlog as the pipeline goes.
        ticket_timeout_secs: explicit_ticket_timeout(loaded),
        // A user GLPI would refuse solutions to gets none: recoveries go as follow-ups.
        solve_on_recovery: may_solve
            && loaded
                .config
                .glpi_api
                .as_ref()
                .is_some_and(|a| a.solve_on_recovery),
        feedback_addresses: loaded.policy.feedback_addresses.clone(),
        glpi: glpi_flow(loaded),
    }
}

impl Running {
    /// What SIGHUP does: reload the configuration and the rules.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

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

/// As `start`, with the time-driven stages reading `clock` (tests drive a manual one).
pub async fn start_with_clock(
    loaded: LoadedConfig,
    stop: watch::Receiver<bool>,
    clock: Clock,
) -> anyhow::Result<Running> {
    limit_malloc_arenas();
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let store = loaded.config.store.location();
    let glpi_api = match &loaded.config.glpi_api {
        Some(api_config) => {
            let api = GlpiApi::new(api_config).map_err(|e| anyhow::anyhow!("glpi_api: {e}"))?;
            let rights = api.check_rights(api_config.needs()).await;
            rights.log();
            Some((api, rights))
        }
        None => None,
    };
    let may_solve = glpi_api.as_ref().is_some_and(|(_, r)| r.may_solve());
    let spool = SpoolHandle::start(
        &store,
        &loaded.config.store.incoming_dir(),
        loaded.config.store.group_commit_max,
    )
    .with_context(|| format!("opening the store {store}"))?;
    let rules = RuleSet::load(&loaded.config.rules.dirs)
        .map_err(|e| anyhow::anyhow!("loading rules:\n{e}"))?;
    tracing::info!(rules = rules.len(), "rules loaded");
    let settings = pipeline_settings(&loaded, rules, may_solve);
    let pipeline = Pipeline::open(&store, settings)
        .context("starting the pipeline")?
        .with_write_gate(spool.gate.clone());
    let outbound_wake = Arc::new(Notify::new());
    let client =
        Transport::from_config(&loaded.relay).map_err(|e| anyhow::anyhow!("relay: {e}"))?;
    let (delivered_tx, delivered_rx) = mpsc::unbounded_channel();
    let (found_tx, found_rx) = mpsc::unbounded_channel();
    let lease = crate::store::lease::Lease::new(loaded.config.store.lease_secs);
    tracing::info!(
        owner = lease.owner(),
        secs = lease.secs(),
        "lease owner of this gateway"
    );
    let mut queue = StoreQueue::open(&store)?.with_lease(lease.clone());
    let (api, glpi_rights) = match glpi_api {
        Some((api, rights)) => (Some(api), Some(rights)),
        None => (None, None),
    };
    let api_worker = match api {
        Some(api) => {
            queue = queue.report_delivered(delivered_tx);
            Some(
                ApiWorker::new(
                    api,
                    &store,
                    explicit_ticket_timeout(&loaded),
                    delivered_rx,
                    found_tx,
                )?
                .with_pace(
                    loaded.config.feedback.collector_interval_secs as i64,
                    loaded.config.feedback.collector_batch as i64,
                )
                .with_solving(may_solve)
                .with_tickets(loaded.config.glpi_api.clone())
                .with_lease(lease.clone())
                .with_clock(clock.clone()),
            )
        }
        None => None,
    };
    let queue = Arc::new(queue);
    // Due times are written on `clock` (pipeline), so delivery reads the same clock.
    let delivery = DeliveryWorker::new(
        queue,
        client,
        loaded.relay.retry.clone(),
        outbound_wake.clone(),
    )
    .with_clock({
        let clock = clock.clone();
        Arc::new(move || clock.now())
    });

    let server = Server::bind(loaded.config.clone(), loaded.policy.clone(), spool.clone()).await?;
    let addrs = server.local_addrs();
    let tls_addrs = server.local_tls_addrs();
    let http = match &loaded.http {
        Some(settings) => Some(
            HttpServer::bind(
                settings.clone(),
                &store,
                loaded.config.glpi.as_ref().map(|g| g.url.clone()),
                loaded.config.glpi_api.is_some(),
            )
            .await?,
        ),
        None => None,
    };
    let http = http.map(|h| h.with_held_outcomes(delivery.held_outcomes()));
    let http_addr = http.as_ref().and_then(HttpServer::local_addr);
    let (settings_tx, settings_rx) = mpsc::unbounded_channel();
    let reloader = Reloader {
        current: Arc::new(std::sync::Mutex::new(loaded.clone())),
        smtp: server.reloader(),
        pipeline: settings_tx,
        may_solve,
    };
    tracing::info!(store = %store, "alertgate started");
    let pipeline = tokio::spawn(run_pipeline(
        pipeline,
        clock,
        spool.committed.clone(),
        outbound_wake,
        found_rx,
        settings_rx,
        stop.clone(),
    ));
    let http = http.map(|h| tokio::spawn(h.serve(stop.clone())));
    let api = api_worker.map(|w| tokio::spawn(w.run(stop.clone())));
    let delivery = tokio::spawn(delivery.run(stop.clone()));
    let kept = &loaded.config.store;
    let retention = tokio::spawn(crate::store::retention::run(
        store.clone(),
        crate::store::retention::Retention {
            keep_processed_days: kept.keep_processed_days,
            keep_sent_days: kept.keep_sent_days,
            batch: 500,
        },
        std::time::Duration::from_secs(kept.prune_interval_secs),
        stop.clone(),
    ));
    let server = tokio::spawn(server.serve(stop));
    let all = tokio::spawn(async move {
        let _ = server.await;
        let _ = pipeline.await;
        let _ = delivery.await;
        let _ = retention.await;
        if let Some(api) = api {
            let _ = api.await;
        }
        if let Some(http) = http {
            let _ = http.await;
        }
    });
    Ok(Running {
        addrs,
        glpi_rights,
        tls_addrs,
        http_addr,
        server: all,
        reloader,
    })
}

/// `[feedback] ticket_lookup_timeout_secs` when set; 0 lets the waits derive from GLPI's pace.
fn explicit_ticket_timeout(loaded: &LoadedConfig) -> i64 {
    loaded
        .config
        .feedback
        .ticket_lookup_timeout_secs
        .map_or(0, |secs| i64::try_from(secs).unwrap_or(i64::MAX))
}

/// How the pipeline paces and routes what it tells GLPI, from `[feedback]` and `[glpi_api]`.
fn glpi_flow(loaded: &LoadedConfig) -> crate::pipeline::GlpiFlow {
    let feedback = &loaded.config.feedback;
    crate::pipeline::GlpiFlow {
        api_updates: loaded.config.glpi_api.is_some(),
        create_via_api: loaded
            .config
            .glpi_api
            .as_ref()
            .is_some_and(|a| a.create == crate::feedback::CreateMode::Api),
        collector_interval_secs: feedback.collector_interval_secs as i64,
        collector_batch: feedback.collector_batch as i64,
        min_mail_interval_secs: feedback.min_mail_interval_secs as i64,
    }
}

/// glibc gives each thread that allocates under contention an arena of its own and keeps
/// freed message buffers there: 200 sessions of 9.9 MB peaked at 464 MB RSS with the
/// default (8 arenas per core), 160–182 MB with two. Other allocators need nothing.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// How long the pipeline lets commits gather after a batch that caught up with the spool.
const PIPELINE_COALESCE: std::time::Duration = std::time::Duration::from_millis(10);

/// Process the spool whenever something was committed (or once a second, for the
/// time-driven decisions), on a blocking thread since SQLite calls block.
async fn run_pipeline(
    mut pipeline: Pipeline,
    clock: Clock,
    committed: Arc<Notify>,
    outbound_wake: Arc<Notify>,
    mut found: mpsc::UnboundedReceiver<TicketInfo>,
    mut reloaded: mpsc::UnboundedReceiver<PipelineSettings>,
    stop: watch::Receiver<bool>,
) {
    let mut last_tick = 0;
    let mut fault = StoreFault::default();
    loop {
        while let Ok(settings) = reloaded.try_recv() {
            pipeline.set_settings(settings);
        }
        let now = clock.now();
        let mut tickets = Vec::new();
        while let Ok(info) = found.try_recv() {
            tickets.push(info);
        }
        let tick_due = now != last_tick;
        let joined = tokio::task::spawn_blocking(move || {
            let learned = pipeline.learn_tickets(&tickets, now);
            let processed = pipeline.run_batch(now);
            let ticked = if tick_due { pipeline.tick(now) } else { Ok(()) };
            if let Err(e) = pipeline.checkpoint() {
                // The log only grows until the next try (or the spool writer's bound).
                tracing::debug!(error = %e, "checkpoint of the write-ahead log failed");
            }
            (pipeline, learned, processed, ticked)
        })
        .await;
        let Ok((returned, learned, processed, ticked)) = joined else {
            tracing::error!("pipeline thread panicked; stopping the pipeline");
            return;
        };
        pipeline = returned;
        last_tick = now;
        if let Err(e) = &learned {
            fault.failed("recording ticket ids", e);
        }
        if let Err(e) = &ticked {
            fault.failed("the pipeline's timed decisions", e);
        }
        let busy = match &processed {
            Ok(n) => {
                if *n > 0 {
                    outbound_wake.notify_one();
                }
                *n > 0
            }
            Err(e) => {
                fault.failed("processing the spool", e);
                false
            }
        };
        // Over only when everything tried this round worked (and something was tried).
        if learned.is_ok() && ticked.is_ok() && processed.is_ok() && (tick_due || busy) {
            fault.recovered();
        }
        if ticked.is_ok() && tick_due {
            outbound_wake.notify_one();
        }
        if *stop.borrow() {
            return;
        }
        if busy && !matches!(processed, Ok(n) if n >= crate::pipeline::BATCH) {
            // Caught up while mail keeps coming: let a few more group commits land first.
            // Each pipeline commit invalidates the spool writer's page cache and adds WAL
            // pages its next fsync must flush; one turn per few ms instead of one per
            // group commit halves the writer's work. A backlog (full batch) goes on at once.
            tokio::select! {
                _ = tokio::time::sleep(PIPELINE_COALESCE) => {}
                _ = wait_stop(stop.clone()) => return,
            }
        } else if !busy {
            tokio::select! {
                _ = committed.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = wait_stop(stop.clone()) => return,
            }
        }
    }
}

/// The pipeline's store failures, logged once per fault (a full disk is retried every
/// second: one line a second would bury everything else in the log).
#[derive(Default)]
struct StoreFault {
    since: Option<std::time::Instant>,
    attempts: u64,
}

impl StoreFault {
    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.attempts += 1;
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            tracing::error!(step = what, error = %error, "the pipeline cannot commit to the store; retrying every second, logged again when it works");
        } else {
            tracing::debug!(step = what, error = %error, "the pipeline still cannot commit");
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                secs = since.elapsed().as_secs(),
                attempts = self.attempts,
                "the pipeline works again: its store fault is over"
            );
            self.attempts = 0;
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
