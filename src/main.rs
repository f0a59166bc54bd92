//! The `alertgate` command line: serve, check, parse, queue.

use alertgate::config::LoadedConfig;
use alertgate::store::{self, spool};
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Inspect the spool and the outbound queue.
    Queue {
        #[arg(short, long, default_value = "alertgate.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List spooled messages and their state.
    List {
        /// Only messages in this state (new, processed, held, dropped, feedback, failed).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one spooled message: envelope, state and raw bytes.
    Show { id: i64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check { config } => check(&config),
        Command::Parse {
            rules,
            explain,
            files,
        } => parse(rules, explain, &files),
        Command::Queue { config, action } => queue(&config, action),
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ALERTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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

fn check(config: &Path) -> anyhow::Result<bool> {
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

fn parse(rules: Vec<PathBuf>, explain: bool, files: &[PathBuf]) -> anyhow::Result<bool> {
    let dirs = if rules.is_empty() {
        vec![PathBuf::from("rules")]
    } else {
        rules
    };
    alertgate::rules::cli::run_parse(&dirs, files, explain)
}

fn queue(config: &Path, action: QueueAction) -> anyhow::Result<bool> {
    let loaded = load(config)?;
    let conn = store::open(&loaded.config.store.path)?;
    match action {
        QueueAction::List { state, limit } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(spool::SpoolState::parse(s).ok_or_else(|| {
                    anyhow::anyhow!("unknown state `{s}` (expected new, processed, held, dropped, feedback, failed)")
                })?),
            };
            let counts = spool::counts(&conn)?;
            let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{s}={n}")).collect();
            println!(
                "spool: {}",
                if summary.is_empty() {
                    "empty".into()
                } else {
                    summary.join(" ")
                }
            );
            println!(
                "{:>8}  {:<20}  {:<10}  {:>7}  {:<30}  {:<30}  message-id",
                "id", "received", "state", "size", "from", "to"
            );
            for row in spool::list(&conn, state, limit)? {
                println!(
                    "{:>8}  {:<20}  {:<10}  {:>7}  {:<30}  {:<30}  {}",
                    row.id,
                    format_time(row.envelope.received_at),
                    row.state,
                    row.size,
                    row.envelope.mail_from,
                    row.envelope.rcpt_to.join(","),
                    row.message_id.as_deref().unwrap_or("-"),
                );
            }
            Ok(true)
        }
        QueueAction::Show { id } => match spool::get(&conn, id)? {
            None => {
                eprintln!("alertgate: no spooled message with id {id}");
                Ok(false)
            }
            Some(row) => {
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
        },
    }
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
