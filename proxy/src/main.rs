use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weir::config::{Config, ConfigError, EMBEDDED_DEFAULT};

// Events are many small allocations (strings, maps); mimalloc handles that
// churn across threads with less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: an edge ingestion proxy for logs.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the proxy.
    Run {
        /// YAML config; without it, the embedded local default (config/weir.yaml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validates a config and exits: 0 when valid, 1 with the error otherwise.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(path: &Option<PathBuf>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::parse(EMBEDDED_DEFAULT, "<embedded config/weir.yaml>"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded config/weir.yaml>".into()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            weir::telemetry::init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the tokio runtime");
            match runtime.block_on(weir::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
