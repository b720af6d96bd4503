//! `weir plugin test`: runs a plugin on sample events without a proxy.
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
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
}

pub fn run(args: Args) -> Result<(), String> {
    let text = super::read_input(&args.input)?;
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    let events = if matches!(first, Some(b'[') | Some(b'{')) {
        weir::event::decode_sample(&text).map_err(|e| format!("{}: {e}", args.input.display()))?
    } else {
        let now = chrono::Utc::now().timestamp_millis();
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| weir::event::Event::from_message(l.to_string(), now))
            .collect()
    };
    let config: Option<serde_yaml::Value> = match &args.config {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Some(serde_yaml::from_str(&t).map_err(|e| format!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let memory_limit = weir::config::units::parse_byte_size(&args.memory_limit)
        .map_err(|e| format!("--memory-limit: {e}"))?;
    let plugin = &args.plugin;
    let wasm = std::fs::read(plugin).map_err(|e| format!("{}: {e}", plugin.display()))?;
    let settings = weir::plugin::PluginSettings {
        tenant: "test".into(),
        name: plugin
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        on_error: weir::config::PluginOnError::Pass,
        timeout: args.timeout.into(),
        memory_limit,
        quarantine_after: u32::MAX,
        quarantine_base: weir::plugin::QUARANTINE_BASE,
        instances: 1,
    };
    weir::telemetry::init_logging(&weir::config::LogConfig::default());
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
