//! `weir plugin test`: runs a plugin on sample events without a proxy.
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use weir::event::Event;

#[derive(clap::Args)]
pub struct Args {
    /// The plugin module (.wasm, or .wat text).
    plugin: PathBuf,
    /// The plugin's `config:` value, as a YAML or JSON file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Events, in the `--format` given; `-` for stdin.
    #[arg(long, short)]
    input: PathBuf,
    /// How to read the input.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// Deadline of the call, e.g. 50ms (default: the proxy's 50ms).
    #[arg(long, default_value = "50ms")]
    timeout: humantime::Duration,
    /// Memory limit in bytes or with a unit, e.g. 64MiB.
    #[arg(long, default_value = "64MiB")]
    memory_limit: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A JSON array or NDJSON if the input parses as one, else raw text lines (said on stderr).
    Auto,
    /// A JSON array of logs in the Datadog intake format.
    Json,
    /// One JSON log in the Datadog intake format per line.
    Ndjson,
    /// Raw text: each non-blank line is one event's message (Apache error logs, syslog, ...).
    Lines,
}

pub fn run(args: Args) -> Result<(), String> {
    let text = super::read_input(&args.input)?;
    let events = decode(&text, args.format, &super::input_name(&args.input))?;
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
            e.reason().as_str()
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

/// The events of `text` read as `format`; `name` names the input in messages.
fn decode(text: &[u8], format: Format, name: &str) -> Result<Vec<Event>, String> {
    let first = text.iter().copied().find(|b| !b.is_ascii_whitespace());
    match format {
        Format::Lines => Ok(lines(text)),
        Format::Json if first != Some(b'[') => Err(format!(
            "{name}: --format json expects a JSON array of logs (`[{{\"message\": ...}}, ...]`); \
             for one JSON log per line use --format ndjson, for raw text --format lines"
        )),
        Format::Ndjson if first == Some(b'[') => {
            let line = 1 + text
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .filter(|b| **b == b'\n')
                .count();
            let hint = if weir::event::decode_sample(text).is_ok() {
                " (the input is a JSON array: use --format json)"
            } else {
                ""
            };
            Err(format!(
                "{name}: line {line}: not a JSON object (--format ndjson reads one JSON log per line){hint}"
            ))
        }
        Format::Json | Format::Ndjson => {
            weir::event::decode_sample(text).map_err(|e| format!("{name}: {e}"))
        }
        // Raw text can start with `[` or `{` too (`[Sun Dec 04 04:47:44 2005] [error] ...`):
        // JSON is tried first, and raw lines are what is left when it does not parse.
        Format::Auto => match first {
            Some(b'[' | b'{') => weir::event::decode_sample(text).or_else(|e| {
                eprintln!(
                    "note: {name} is not a JSON array or NDJSON ({e}); reading it as raw text, \
                     one message per line (--format json or --format ndjson makes this an error)"
                );
                Ok(lines(text))
            }),
            _ => Ok(lines(text)),
        },
    }
}

/// One event per non-blank line, the line as its message, received now.
fn lines(text: &[u8]) -> Vec<Event> {
    let now = chrono::Utc::now().timestamp_millis();
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Event::from_message(l.to_string(), now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const APACHE: &[u8] = b"[Sun Dec 04 04:47:44 2005] [notice] workerEnv.init() ok /etc/httpd/conf/workers2.properties\n\
[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6\n";

    #[test]
    fn auto_reads_json_when_it_parses_and_raw_lines_when_it_does_not() {
        let json = decode(br#"[{"message":"a"},{"message":"b"}]"#, Format::Auto, "x").unwrap();
        assert_eq!(json.len(), 2);
        let ndjson = decode(
            b"{\"message\":\"a\"}\n{\"message\":\"b\"}\n",
            Format::Auto,
            "x",
        );
        assert_eq!(ndjson.unwrap().len(), 2);
        let raw = decode(APACHE, Format::Auto, "x").unwrap();
        assert_eq!(raw.len(), 2);
        let raw = decode(b"{not json} at all\n", Format::Auto, "x").unwrap();
        assert_eq!(raw.len(), 1);
    }

    #[test]
    fn explicit_formats_refuse_what_they_cannot_read() {
        let err = decode(APACHE, Format::Json, "apache.log").unwrap_err();
        assert!(
            err.starts_with("apache.log: ") && err.contains("invalid JSON"),
            "{err}"
        );
        let err = decode(b"plain text\n", Format::Json, "x").unwrap_err();
        assert!(err.contains("--format lines"), "{err}");
        let err = decode(b"[{\"message\":\"a\"}]", Format::Ndjson, "x").unwrap_err();
        assert!(err.contains("--format json"), "{err}");
        let err = decode(b"{\"message\":\"a\"}\nnot json\n", Format::Ndjson, "x").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        // Lines takes JSON text as text.
        assert_eq!(decode(b"[1,2]\n{}\n", Format::Lines, "x").unwrap().len(), 2);
    }
}
