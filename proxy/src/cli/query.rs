//! `weir query`: tries an exclusion-rule query on sample logs.
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Datadog log search syntax, e.g. 'service:web status:(error OR warn) @http.status_code:>=500'.
    /// It may start with `-` (negation), as in `weir query '-status:info' --input FILE`.
    #[arg(allow_hyphen_values = true)]
    query: String,
    /// NDJSON or a JSON array of logs in the Datadog intake format (`-` for stdin).
    #[arg(long, short)]
    input: PathBuf,
    /// Print only the number of matching events.
    #[arg(long)]
    count: bool,
}

/// Prints the matching events as NDJSON, or their number with `--count`.
pub fn run(args: Args) -> Result<(), String> {
    let q = weir::rules::query::Query::parse(&args.query)
        .map_err(|e| format!("query {:?}: {e}", args.query))?;
    let text = super::read_input(&args.input)?;
    let events = weir::event::decode_sample(&text)
        .map_err(|e| format!("{}: {e}", super::input_name(&args.input)))?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut n = 0usize;
    for ev in events.iter().filter(|e| q.matches(e)) {
        n += 1;
        if !args.count {
            let mut line = Vec::new();
            ev.write_json(&mut line);
            line.push(b'\n');
            out.write_all(&line).map_err(|e| e.to_string())?;
        }
    }
    if args.count {
        writeln!(out, "{n}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}
