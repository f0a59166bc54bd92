use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "alertgate", version, about = "SMTP gateway from monitoring mail to GLPI tickets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse .eml files with the rules and print one JSON line per alert.
    Parse {
        /// Rule directory (repeatable; later ones override earlier ones by rule name).
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Show, per rule tried, which condition passed or failed.
        #[arg(long)]
        explain: bool,
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Parse { rules, explain, files } => {
            let dirs = if rules.is_empty() { vec![PathBuf::from("rules")] } else { rules };
            match alertgate::rules::cli::run_parse(&dirs, &files, explain) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("alertgate parse: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
