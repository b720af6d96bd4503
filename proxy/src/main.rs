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
    /// Tries a search query (exclusion-rule syntax) on sample logs: prints the matching events as NDJSON.
    Query {
        /// Datadog log search syntax, e.g. 'service:web status:(error OR warn) @http.status_code:>=500'
        query: String,
        /// NDJSON or a JSON array of logs in the Datadog intake format (`-` for stdin).
        #[arg(long, short)]
        input: PathBuf,
        /// Print only the number of matching events.
        #[arg(long)]
        count: bool,
    },
}

fn run_query(query: &str, input: &std::path::Path, count: bool) -> Result<(), String> {
    use std::io::{Read, Write};
    let q = weir::rules::query::Query::parse(query).map_err(|e| format!("query {query:?}: {e}"))?;
    let mut text = Vec::new();
    if input.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut text).map_err(|e| format!("stdin: {e}"))?;
    } else {
        text = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    }
    let events = weir::event::decode_sample(&text).map_err(|e| format!("{}: {e}", input.display()))?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut n = 0usize;
    for ev in events.iter().filter(|e| q.matches(e)) {
        n += 1;
        if !count {
            let mut line = Vec::new();
            ev.write_json(&mut line);
            line.push(b'\n');
            out.write_all(&line).map_err(|e| e.to_string())?;
        }
    }
    if count {
        writeln!(out, "{n}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
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
        Command::Query { query, input, count } => match run_query(&query, &input, count) {
            Ok(()) => ExitCode::SUCCESS,
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
