//! The `alertgate` command line: serve, check, parse, queue, inject, incidents, reload, passwd.

use alertgate::config::LoadedConfig;
use alertgate::deliver::HeldOutcome;
use alertgate::store::{self, outbound, spool};
use clap::{Parser, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "alertgate",
    version,
    about = "SMTP gateway from monitoring mail to GLPI tickets"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and its rule directories.
    Check {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
        /// Also open a GLPI API session and check the API user's rights.
        #[arg(long)]
        online: bool,
    },
    /// Parse .eml files with the rules and print one JSON line per alert.
    Parse {
        /// Rule directory (repeatable; later ones override earlier ones by rule name).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Show, per rule tried, which condition passed or failed.
        #[arg(long)]
        explain: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Submit mail files into the spool as if received over SMTP (like `sendmail`).
    Inject {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
        /// Envelope sender (default: the From: header's address).
        #[arg(long)]
        from: Option<String>,
        /// Envelope recipient, repeatable (default: the To: and Cc: headers).
        #[arg(long)]
        to: Vec<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List incidents: tag, source, host, service, state, since, alerts, GLPI ticket.
    Incidents {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
        /// Only open incidents.
        #[arg(long)]
        open: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running gateway (through its pid file) to reload its configuration and rules.
    Reload {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
    },
    /// Print an argon2id hash for a `[server.auth]` user's `password_hash` (reads the
    /// password from standard input).
    Passwd,
    /// Replay a mailbox (mbox file, Maildir or directory of .eml) through the rules and
    /// correlation at each mail's own Date, sending nothing; report what GLPI would get.
    Replay {
        source: PathBuf,
        /// Rule directory (repeatable; replaces the configuration's).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Configuration to replay with (correlation, compose); its store is not touched.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also write a one-page HTML report with a per-day chart.
        #[arg(long, value_name = "REPORT.html")]
        html: Option<PathBuf>,
    },
    /// Rule authors' tools.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Inspect the spool and the outbound queue.
    Queue {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Check every NAME.eml of DIR against its NAME.expected.toml, field by field.
    Test {
        /// Rule directory (repeatable; later ones override earlier ones by rule name).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List spooled messages and their state.
    List {
        /// Only messages in this state (new, processed, held, dropped, feedback, duplicate, failed).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line (like `postqueue -j`).
        #[arg(long)]
        json: bool,
    },
    /// Show one spooled message (ID) or outbound mail (oID): envelope, state and bytes.
    Show { id: String },
    /// Put an outbound mail (oID), or every dead one (`dead`), back in the queue, due now.
    Retry { target: String },
    /// Delete an outbound mail (oID), or every `dead` or `sent` one.
    Purge { target: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A replay logs each of thousands of mails, and warns of tickets GLPI never
    // answered (there is no GLPI): only errors unless asked.
    let default_level = match cli.command {
        Command::Replay { .. } => "error",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check { config, online } => check(&config, online),
        Command::Parse {
            rules,
            explain,
            files,
        } => parse(rules, explain, &files),
        Command::Replay {
            source,
            rules,
            config,
            json,
            html,
        } => alertgate::replay::run_cli(&source, &rules, config.as_deref(), json, html.as_deref()),
        Command::Rules {
            action: RulesAction::Test { rules, dir },
        } => alertgate::rules::expect::run(&rule_dirs(rules), &dir),
        Command::Queue { config, action } => queue(&config, action),
        Command::Inject {
            config,
            from,
            to,
            files,
        } => inject(&config, from, to, files),
        Command::Incidents { config, open, json } => incidents(&config, open, json),
        Command::Reload { config } => reload(&config),
        Command::Passwd => passwd(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("alertgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALERTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn load(path: &Path) -> anyhow::Result<LoadedConfig> {
    LoadedConfig::load(path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
}

fn serve(config: &Path) -> anyhow::Result<bool> {
    let loaded = load(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(alertgate::app::serve(loaded))?;
    Ok(true)
}

fn check(config: &Path, online: bool) -> anyhow::Result<bool> {
    let mut problems: Vec<String> = Vec::new();
    let loaded = match LoadedConfig::load(config) {
        Ok(l) => Some(l),
        Err(e) => {
            problems.extend(e.problems.iter().map(|p| p.to_string()));
            None
        }
    };
    if let Some(l) = &loaded {
        problems.extend(alertgate::rules::cli::check_rule_dirs(&l.config.rules.dirs));
        for warning in &l.warnings {
            println!("warning: {warning}");
        }
        if online {
            problems.extend(check_online(l)?);
        }
    }
    if problems.is_empty() {
        println!("{}: ok", config.display());
        Ok(true)
    } else {
        for p in &problems {
            println!("{p}");
        }
        println!("{} problem(s) found", problems.len());
        Ok(false)
    }
}

/// `check --online`: opens a GLPI API session and compares the API user's rights with
/// what the config asks; each missing right is a problem naming its recipe.
fn check_online(loaded: &LoadedConfig) -> anyhow::Result<Vec<String>> {
    use alertgate::feedback::{GlpiApi, RightsCheck};
    let Some(api_config) = &loaded.config.glpi_api else {
        println!("online: no [glpi_api] section, nothing to check");
        return Ok(Vec::new());
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let api = GlpiApi::new(api_config).map_err(|e| anyhow::anyhow!("glpi_api: {e}"))?;
    let outcome = runtime.block_on(async {
        let outcome = api.check_rights(api_config.needs()).await;
        api.close().await;
        outcome
    });
    Ok(match outcome {
        RightsCheck::Granted(rights) => {
            println!("glpi_api: {} ok: {rights}", api_config.url);
            Vec::new()
        }
        RightsCheck::Missing { rights, missing } => {
            println!("glpi_api: {}: {rights}", api_config.url);
            missing
                .iter()
                .map(|m| format!("glpi_api: the API user {m}"))
                .collect()
        }
        RightsCheck::Unavailable(e) => vec![format!("glpi_api: {}: {e}", api_config.url)],
    })
}

fn parse(rules: Vec<PathBuf>, explain: bool, files: &[PathBuf]) -> anyhow::Result<bool> {
    alertgate::rules::cli::run_parse(&rule_dirs(rules), files, explain)
}

/// `--rules` directories, `./rules` when none is given.
fn rule_dirs(rules: Vec<PathBuf>) -> Vec<PathBuf> {
    if rules.is_empty() {
        vec![PathBuf::from("rules")]
    } else {
        rules
    }
}

fn queue(config: &Path, action: QueueAction) -> anyhow::Result<bool> {
    let loaded = load(config)?;
    let held = match action {
        QueueAction::List { .. } => held_outcomes(&loaded),
        _ => HashMap::new(),
    };
    let mut db = match store::open(&loaded.config.store.location()) {
        Ok(db) => db,
        Err(e) => {
            // The store may be what is failing: what the gateway holds is still worth seeing.
            print_held_only(&held);
            return Err(e.into());
        }
    };
    let conn = &mut db;
    match action {
        QueueAction::List {
            state,
            limit,
            json: true,
        } => queue_list_json(conn, state.as_deref(), limit, &held),
        QueueAction::List { state, limit, .. } => queue_list(conn, state.as_deref(), limit, &held),
        QueueAction::Show { id } => match parse_queue_id(&id)? {
            QueueId::Spool(id) => show_spool(conn, id),
            QueueId::Outbound(id) => show_outbound(conn, id),
        },
        QueueAction::Retry { target } => {
            let id = match target.as_str() {
                "dead" => None,
                t => Some(outbound_id(t)?),
            };
            let n = outbound::retry(conn, id, store::unix_now())?;
            println!("{n} mail(s) queued again");
            Ok(n > 0 || id.is_none())
        }
        QueueAction::Purge { target } => {
            let n = match target.as_str() {
                "dead" => outbound::purge(conn, None, Some(outbound::OutboundState::Dead))?,
                "sent" => outbound::purge(conn, None, Some(outbound::OutboundState::Sent))?,
                t => outbound::purge(conn, Some(outbound_id(t)?), None)?,
            };
            println!("{n} mail(s) deleted");
            Ok(true)
        }
    }
}

fn inject(
    config: &Path,
    from: Option<String>,
    to: Vec<String>,
    files: Vec<PathBuf>,
) -> anyhow::Result<bool> {
    use alertgate::cli::inject::{inject, InjectRequest};
    let loaded = load(config)?;
    let request = InjectRequest { files, from, to };
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(inject(&loaded, &request));
    let mut all_ok = true;
    for (file, result) in request.files.iter().zip(results) {
        match result {
            Ok(id) => println!("{}: queued as {id}", file.display()),
            Err(e) => {
                all_ok = false;
                eprintln!("alertgate: {e}");
            }
        }
    }
    Ok(all_ok)
}

fn incidents(config: &Path, open: bool, json: bool) -> anyhow::Result<bool> {
    use alertgate::cli::incidents::{render_json, render_text};
    let loaded = load(config)?;
    let mut db = store::open(&loaded.config.store.location())?;
    let list = store::incidents::load(&mut db, !open)?;
    if json {
        print!("{}", render_json(&list));
    } else {
        print!("{}", render_text(&list, format_time));
    }
    Ok(true)
}

fn reload(config: &Path) -> anyhow::Result<bool> {
    let loaded = load(config)?;
    let pid = alertgate::cli::reload::signal_reload(&loaded.config.store.path)?;
    println!("sent SIGHUP to alertgate (pid {pid}); its log says whether the new configuration was taken");
    Ok(true)
}

fn passwd() -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        eprint!("password (echoed; or pipe it in): ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    println!("{}", alertgate::cli::passwd::hash(password)?);
    Ok(true)
}

/// The outcomes the running gateway holds in memory (store refused them), by outbound
/// id; asked over its HTTP listener. Without one, or when it does not answer, none
/// (with a note on stderr when it was asked and did not answer).
fn held_outcomes(loaded: &LoadedConfig) -> HashMap<i64, HeldOutcome> {
    let Some(http) = &loaded.http else {
        return HashMap::new();
    };
    match alertgate::cli::held::fetch(http) {
        Ok(held) => held.into_iter().map(|h| (h.id, h)).collect(),
        Err(e) => {
            eprintln!(
                "alertgate: note: {e}; delivery outcomes it may hold in memory are not listed"
            );
            HashMap::new()
        }
    }
}

fn print_held_only(held: &HashMap<i64, HeldOutcome>) {
    let mut held: Vec<&HeldOutcome> = held.values().collect();
    held.sort_by_key(|h| h.id);
    for h in held {
        println!(
            "{:>8}  {:<16}  {}  [{}]",
            format!("o{}", h.id),
            h.incident,
            alertgate::cli::held::describe(h),
            h.error
        );
    }
}

fn queue_list_json(
    conn: &mut store::Db,
    state: Option<&str>,
    limit: usize,
    held: &HashMap<i64, HeldOutcome>,
) -> anyhow::Result<bool> {
    let spool_state = state.and_then(spool::SpoolState::parse);
    let outbound_state = state.and_then(outbound::OutboundState::parse);
    if state.is_some() && spool_state.is_none() && outbound_state.is_none() {
        anyhow::bail!("unknown state `{}`", state.unwrap_or_default());
    }
    if state.is_none() || spool_state.is_some() {
        for row in spool::list_checked(conn, spool_state, limit)? {
            let row = match row {
                Ok(row) => row,
                Err(damaged) => {
                    let line = serde_json::json!({"queue": "spool", "id": damaged.id, "damaged": damaged.error});
                    println!("{line}");
                    continue;
                }
            };
            let line = serde_json::json!({
                "queue": "spool", "id": row.id, "state": row.state.as_str(),
                "received_at": row.envelope.received_at, "size": row.size,
                "sender": row.envelope.mail_from, "recipients": row.envelope.rcpt_to,
                "message_id": row.message_id, "note": row.note,
            });
            println!("{line}");
        }
    }
    if state.is_none() || outbound_state.is_some() {
        for row in outbound::list_checked(conn, outbound_state, limit)? {
            let row = match row {
                Ok(row) => row,
                Err(damaged) => {
                    let line = serde_json::json!({"queue": "outbound", "id": format!("o{}", damaged.id), "damaged": damaged.error});
                    println!("{line}");
                    continue;
                }
            };
            let mut line = serde_json::json!({
                "queue": "outbound", "id": format!("o{}", row.id), "state": row.state.as_str(),
                "incident": row.order_key, "attempts": row.attempts,
                "queued_at": row.queued_at, "next_attempt_at": row.next_attempt_at,
                "sender": row.envelope_from, "recipients": row.envelope_to,
                "subject": row.subject, "message_id": row.message_id, "last_error": row.last_error,
            });
            if let Some(h) = held.get(&row.id) {
                line["unrecorded"] = serde_json::json!({
                    "outcome": h.outcome, "at": h.at, "record_attempts": h.record_attempts,
                    "error": h.error, "note": alertgate::cli::held::describe(h),
                });
            }
            println!("{line}");
        }
    }
    Ok(true)
}

enum QueueId {
    Spool(i64),
    Outbound(i64),
}

fn parse_queue_id(s: &str) -> anyhow::Result<QueueId> {
    if s.starts_with('o') {
        return Ok(QueueId::Outbound(outbound_id(s)?));
    }
    s.parse().map(QueueId::Spool).map_err(|_| {
        anyhow::anyhow!(
            "`{s}` is not a queue id (expected a spool id like 42 or an outbound id like o17)"
        )
    })
}

fn outbound_id(s: &str) -> anyhow::Result<i64> {
    s.strip_prefix('o')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "`{s}` is not an outbound id (expected e.g. o17, as shown by `queue list`)"
            )
        })
}

fn queue_list(
    conn: &mut store::Db,
    state: Option<&str>,
    limit: usize,
    held: &HashMap<i64, HeldOutcome>,
) -> anyhow::Result<bool> {
    let spool_state = match state {
        None => None,
        Some(s) => match spool::SpoolState::parse(s) {
            Some(st) => Some(st),
            None if outbound::OutboundState::parse(s).is_some() => None,
            None => anyhow::bail!("unknown state `{s}` (expected new, processed, held, dropped, feedback, duplicate, failed, queued, sent, dead)"),
        },
    };
    let summary = |counts: Vec<(String, i64)>| {
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
        if parts.is_empty() {
            "empty".to_string()
        } else {
            parts.join(" ")
        }
    };
    println!("spool: {}", summary(spool::counts(conn)?));
    println!("outbound: {}", summary(outbound::counts(conn)?));
    if !held.is_empty() {
        let mut by_outcome: std::collections::BTreeMap<&str, i64> = Default::default();
        for h in held.values() {
            *by_outcome.entry(h.outcome.as_str()).or_default() += 1;
        }
        let counts = by_outcome
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        println!(
            "held in memory by the running gateway, the store refused them: {}",
            summary(counts)
        );
    }
    let actions = store::actions::counts(conn)?;
    if !actions.is_empty() {
        println!("glpi api actions: {}", summary(actions));
    }
    if let Some(n) = store::incidents::get_kv(conn, "unthreaded_after_timeout")? {
        println!("sent unthreaded after waiting for a ticket id: {n} incident(s)");
    }
    let outbound_only = state.is_some() && spool_state.is_none();
    if !outbound_only {
        println!("\nspool messages");
        println!(
            "{:>8}  {:<19}  {:<10}  {:>7}  {:<28}  {:<28}  note",
            "id", "received", "state", "size", "from", "to"
        );
        for row in spool::list_checked(conn, spool_state, limit)? {
            let row = match row {
                Ok(row) => row,
                Err(damaged) => {
                    println!("{:>8}  DAMAGED: {}", damaged.id, damaged.error);
                    continue;
                }
            };
            println!(
                "{:>8}  {:<19}  {:<10}  {:>7}  {:<28}  {:<28}  {}",
                row.id,
                format_time(row.envelope.received_at),
                row.state,
                row.size,
                row.envelope.mail_from,
                row.envelope.rcpt_to.join(","),
                row.note.as_deref().unwrap_or("-"),
            );
        }
    }
    if state.is_none() || outbound_only {
        println!("\noutbound mails");
        println!(
            "{:>8}  {:<8}  {:>8}  {:<19}  {:<16}  subject / last error",
            "id", "state", "attempts", "next attempt", "incident"
        );
        let outbound_state = state
            .filter(|_| outbound_only)
            .and_then(outbound::OutboundState::parse);
        for row in outbound::list_checked(conn, outbound_state, limit)? {
            let row = match row {
                Ok(row) => row,
                Err(damaged) => {
                    println!(
                        "{:>8}  DAMAGED: {}",
                        format!("o{}", damaged.id),
                        damaged.error
                    );
                    continue;
                }
            };
            let next = if row.state == outbound::OutboundState::Queued {
                format_time(row.next_attempt_at)
            } else {
                "-".into()
            };
            // The store's word is stale for a mail whose outcome the gateway holds.
            let note = match held.get(&row.id) {
                Some(h) => format!("  [{}: {}]", alertgate::cli::held::describe(h), h.error),
                None => row
                    .last_error
                    .map(|e| format!("  [{e}]"))
                    .unwrap_or_default(),
            };
            println!(
                "{:>8}  {:<8}  {:>8}  {:<19}  {:<16}  {}{}",
                format!("o{}", row.id),
                row.state,
                row.attempts,
                next,
                row.order_key,
                row.subject,
                note,
            );
        }
    }
    Ok(true)
}

fn show_spool(conn: &mut store::Db, id: i64) -> anyhow::Result<bool> {
    let Some(row) = spool::get(conn, id)? else {
        eprintln!("alertgate: no spooled message with id {id}");
        return Ok(false);
    };
    let e = &row.envelope;
    println!(
        "id: {}\nstate: {}\nnote: {}",
        row.id,
        row.state,
        row.note.as_deref().unwrap_or("-")
    );
    println!(
        "received: {}\npeer: {}\nhelo: {}",
        format_time(e.received_at),
        e.peer,
        e.helo
    );
    println!(
        "mail from: <{}>\nrcpt to: {}",
        e.mail_from,
        e.rcpt_to.join(", ")
    );
    println!(
        "tls: {}\nauth: {}",
        e.tls,
        e.auth_user.as_deref().unwrap_or("-")
    );
    println!(
        "message-id: {}\nsize: {}\n",
        row.message_id.as_deref().unwrap_or("-"),
        row.size
    );
    println!(
        "{}",
        String::from_utf8_lossy(row.raw.as_deref().unwrap_or_default())
    );
    Ok(true)
}

fn show_outbound(conn: &mut store::Db, id: i64) -> anyhow::Result<bool> {
    let Some(row) = outbound::get(conn, id)? else {
        eprintln!("alertgate: no outbound mail with id o{id}");
        return Ok(false);
    };
    println!(
        "id: o{}\nincident: {}\nstate: {}\nattempts: {}",
        row.id, row.order_key, row.state, row.attempts
    );
    println!(
        "queued: {}\nnext attempt: {}",
        format_time(row.queued_at),
        format_time(row.next_attempt_at)
    );
    println!(
        "sent: {}\nlast error: {}",
        row.sent_at.map(format_time).unwrap_or("-".into()),
        row.last_error.as_deref().unwrap_or("-")
    );
    println!(
        "mail from: <{}>\nrcpt to: {}\nmessage-id: {}\n",
        row.envelope_from,
        row.envelope_to.join(", "),
        row.message_id
    );
    println!(
        "{}",
        String::from_utf8_lossy(row.raw.as_deref().unwrap_or_default())
    );
    Ok(true)
}

fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
