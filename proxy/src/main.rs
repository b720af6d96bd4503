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
        /// Start from the YAML's exclusion rules and quotas: set aside the changes
        /// made at run time through the admin API (data_dir/runtime.json).
        #[arg(long)]
        discard_runtime_changes: bool,
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
    /// Shows each backend's state (up, ejected, down), last error, last change and failovers,
    /// from a running proxy's admin listener (`GET /backends`).
    Backends {
        /// The admin listener's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8089")]
        admin: String,
        /// Print the JSON as the proxy answered it.
        #[arg(long)]
        json: bool,
    },
    /// WebAssembly plugins (ABI v1, sdk/ABI.md).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Runs a plugin on sample events without a proxy: prints one NDJSON line per
    /// event, `{"verdict": "keep"|"drop"|"archive_only", "event": {...}}`, on stdout,
    /// and timings on stderr. Exits 1 if the plugin fails to load or fails the batch.
    Test {
        /// The plugin module (.wasm, or .wat text).
        plugin: PathBuf,
        /// The plugin's `config:` value, as a YAML or JSON file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Events: a JSON array or NDJSON in the Datadog intake format, or raw text
        /// (one message per line); `-` for stdin.
        #[arg(long, short)]
        input: PathBuf,
        /// Deadline of the call, e.g. 50ms (default: the proxy's 50ms).
        #[arg(long, default_value = "50ms")]
        timeout: humantime::Duration,
        /// Memory limit in bytes or with a unit, e.g. 64MiB.
        #[arg(long, default_value = "64MiB")]
        memory_limit: String,
    },
}

fn read_input(input: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut text = Vec::new();
    if input.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| format!("stdin: {e}"))?;
    } else {
        text = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    }
    Ok(text)
}

fn run_plugin_test(
    plugin: &std::path::Path,
    config: Option<&std::path::Path>,
    input: &std::path::Path,
    timeout: std::time::Duration,
    memory_limit: &str,
) -> Result<(), String> {
    use std::io::Write;
    use std::time::Instant;
    let text = read_input(input)?;
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    let events = if matches!(first, Some(b'[') | Some(b'{')) {
        weir::event::decode_sample(&text).map_err(|e| format!("{}: {e}", input.display()))?
    } else {
        let now = chrono::Utc::now().timestamp_millis();
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| weir::event::Event::from_message(l.to_string(), now))
            .collect()
    };
    let config: Option<serde_yaml::Value> = match config {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(serde_yaml::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let memory_limit = weir::config::units::parse_byte_size(memory_limit)
        .map_err(|e| format!("--memory-limit: {e}"))?;
    let wasm = std::fs::read(plugin).map_err(|e| format!("{}: {e}", plugin.display()))?;
    let settings = weir::plugin::PluginSettings {
        tenant: "test".into(),
        name: plugin
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        on_error: weir::config::PluginOnError::Pass,
        timeout,
        memory_limit,
        quarantine_after: u32::MAX,
        quarantine_base: weir::plugin::QUARANTINE_BASE,
        instances: 1,
    };
    weir::telemetry::init_logging(&weir::config::LogConfig::default())?;
    let start = Instant::now();
    let p = weir::plugin::Plugin::load(&wasm, config.as_ref(), settings)
        .map_err(|e| format!("{}: {e}", plugin.display()))?;
    let loaded = start.elapsed();
    let start = Instant::now();
    let outcomes = p.call(&events).map_err(|e| {
        format!(
            "{}: the batch failed ({}): {e}",
            plugin.display(),
            e.reason()
        )
    })?;
    let took = start.elapsed();
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for ((verdict, replacement), original) in outcomes.iter().zip(&events) {
        let event = replacement.as_ref().unwrap_or(original);
        let mut line = format!("{{\"verdict\":\"{}\",\"event\":", verdict.as_str()).into_bytes();
        event.write_json(&mut line);
        line.extend_from_slice(b"}\n");
        out.write_all(&line).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    eprintln!(
        "{} events; load (compile, instantiate, init) {:.1?}; process {:.1?}",
        events.len(),
        loaded,
        took
    );
    Ok(())
}

fn run_query(query: &str, input: &std::path::Path, count: bool) -> Result<(), String> {
    use std::io::{Read, Write};
    let q = weir::rules::query::Query::parse(query).map_err(|e| format!("query {query:?}: {e}"))?;
    let mut text = Vec::new();
    if input.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| format!("stdin: {e}"))?;
    } else {
        text = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    }
    let events =
        weir::event::decode_sample(&text).map_err(|e| format!("{}: {e}", input.display()))?;
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

/// RUST_LOG overrides `log.level` at start, so `weir check` checks it too.
fn check_env_log_filter() -> Result<(), ConfigError> {
    match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => {
            weir::config::check_log_filter(&f).map_err(|message| ConfigError {
                file: "environment".into(),
                line: None,
                column: None,
                field: Some("RUST_LOG".into()),
                message,
            })
        }
        _ => Ok(()),
    }
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
        Command::Check { config } => match check_env_log_filter()
            .and_then(|_| load(&config))
            .and_then(|c| {
                // Compile, link and initialize every plugin too, so a bad one shows up here.
                weir::plugin::Plugins::check(&c)
                    .map(|_| c)
                    .map_err(|(field, message)| {
                        weir::plugin::config_error(config.as_deref(), field, message)
                    })
            }) {
            Ok(c) => {
                println!(
                    "{}: ok",
                    config
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "<embedded config/weir.yaml>".into())
                );
                // Changes made at run time win over the YAML on start: say which.
                let yaml = weir::admin::control::Overrides::from_config(&c);
                match weir::admin::control::Overrides::load(&c.data_dir) {
                    Ok(Some(saved)) => {
                        for d in saved.differences(&yaml) {
                            println!(
                                "note: {} overrides the YAML: {d}",
                                c.data_dir.join("runtime.json").display()
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Query {
            query,
            input,
            count,
        } => match run_query(&query, &input, count) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Backends { admin, json } => match backends(&admin, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin {
            command:
                PluginCommand::Test {
                    plugin,
                    config,
                    input,
                    timeout,
                    memory_limit,
                },
        } => {
            match run_plugin_test(
                &plugin,
                config.as_deref(),
                &input,
                timeout.into(),
                &memory_limit,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            discard_runtime_changes,
        } => {
            let config_path = config;
            let config = match load(&config_path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if discard_runtime_changes {
                let saved = config.data_dir.join("runtime.json");
                if saved.exists() {
                    let aside = saved.with_extension(format!(
                        "json.discarded-{}",
                        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
                    ));
                    if let Err(e) = std::fs::rename(&saved, &aside) {
                        eprintln!("error: --discard-runtime-changes: {}: {e}", saved.display());
                        return ExitCode::FAILURE;
                    }
                    eprintln!(
                        "run-time changes set aside in {}; the YAML's rules and quotas apply",
                        aside.display()
                    );
                }
            }
            if let Err(e) = weir::telemetry::init_logging(&config.log) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("building the tokio runtime");
            let path = config_path.clone();
            match runtime.block_on(weir::run(config, path)) {
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

/// `weir backends`: fetches `<admin>/backends` and prints it as a table (or as JSON).
fn backends(admin: &str, json: bool) -> Result<(), String> {
    use http_body_util::BodyExt;
    let url: http::Uri = format!("{}/backends", admin.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("--admin {admin:?}: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.get(url.clone()))
                .await
                .map_err(|_| format!("{url}: no answer within 10s"))?
                .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    })?;
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    let rows = v["backends"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<24} {:<8} {:>8} {:>9} {:>10} {:>9}  {:<25}  LAST ERROR",
        "BACKEND", "STATE", "EJECTED", "FAILURES", "EJECTIONS", "FAILOVERS", "LAST CHANGE"
    );
    for r in rows {
        let ejected = r["ejected_for_s"]
            .as_u64()
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<8} {:>8} {:>9} {:>10} {:>9}  {:<25}  {}",
            r["backend"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            ejected,
            r["consecutive_failures"],
            r["ejections"],
            r["failovers_away"],
            r["last_change"].as_str().unwrap_or(""),
            r["last_error"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}
