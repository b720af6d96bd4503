//! `weir tail`: a tenant's processed events as they pass, from a running
//! proxy's live tail (`GET /admin/tail`), one line each, coloured by status in
//! a terminal; `--json` prints each as the proxy sent it.
use super::admin::{query_escape, Admin, AdminArgs};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::io::{IsTerminal, Write};

#[derive(clap::Args)]
pub struct Args {
    /// The tenant whose events to show.
    #[arg(long)]
    tenant: String,
    /// Only events matching this query (the exclusion-rule syntax, as `weir query`).
    /// It may start with `-` (`--query -env:dev`).
    #[arg(long, allow_hyphen_values = true)]
    query: Option<String>,
    /// Events shown per second at most (the proxy skips the rest and says how many).
    #[arg(long)]
    rate: Option<u32>,
    /// Print each event as the proxy sent it: one JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

pub fn run(args: Args) -> Result<(), String> {
    let admin = Admin::new(&args.admin)?;
    let mut path = format!("/admin/tail?tenant={}", query_escape(&args.tenant));
    if let Some(q) = &args.query {
        path.push_str(&format!("&query={}", query_escape(q)));
    }
    if let Some(r) = args.rate {
        path.push_str(&format!("&rate={r}"));
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::stdout().lock();
    let mut event = String::new();
    let mut broken = false;
    admin.stream(&path, |line| {
        // Server-sent events: `event:` names the next data, a blank line ends one.
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
            return true;
        }
        let Some(data) = line.strip_prefix("data: ") else {
            if line.is_empty() {
                event.clear();
            }
            return true;
        };
        let shown = if event == "skipped" {
            let n = serde_json::from_str::<Value>(data)
                .ok()
                .map(|v| v["skipped"].clone());
            eprintln!(
                "({} events not shown: the tail shows a sample under load; --rate raises it)",
                n.unwrap_or(Value::Null)
            );
            Ok(())
        } else if args.json {
            writeln!(out, "{data}")
        } else {
            match serde_json::from_str::<Value>(data) {
                Ok(v) => writeln!(out, "{}", render(&v, colour)),
                Err(_) => writeln!(out, "{data}"),
            }
        };
        // stdout closed (`weir tail | head`): stop quietly.
        broken = shown.and_then(|()| out.flush()).is_err();
        !broken
    })
}

/// One tailed event as a line: time, status, service, host, fate, message.
fn render(v: &Value, colour: bool) -> String {
    let e = &v["event"];
    let text = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let time = e["timestamp"]
        .as_i64()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into());
    let status = e["status"].as_str().unwrap_or("info");
    let mut fate = text(&v["disposition"]);
    if let Some(rule) = v["rule"].as_str() {
        fate.push_str(&format!(" by rule {rule}"));
    } else if let Some(plugin) = v["plugin"]["name"].as_str() {
        fate.push_str(&format!(" by plugin {plugin}"));
    } else if let Some(action) = v["quota"].as_str() {
        fate.push_str(&format!(" (daily quota: {action})"));
    }
    let message = text(&e["message"]).replace(['\n', '\r'], " ");
    let status_cell = format!("{:<7}", status.to_uppercase());
    let status_cell = match (colour, status_colour(status)) {
        (true, Some(c)) => format!("\x1b[{c}m{status_cell}\x1b[0m"),
        _ => status_cell,
    };
    format!(
        "{time} {status_cell} {:<12} {:<12} [{fate}] {message}",
        text(&e["service"]),
        // Datadog's JSON names the host `hostname`.
        text(&e["hostname"])
    )
}

/// The ANSI colour of a status, as Datadog's log explorer shades them.
fn status_colour(status: &str) -> Option<&'static str> {
    match status.to_ascii_lowercase().as_str() {
        "emergency" | "emerg" | "alert" | "critical" | "crit" | "error" | "err" => Some("31"),
        "warning" | "warn" => Some("33"),
        "notice" | "info" => Some("32"),
        "debug" | "trace" => Some("90"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_line_says_when_what_and_why() {
        let v = json!({"disposition": "excluded", "rule": "noisy",
            "event": {"timestamp": 1_764_720_000_123i64, "status": "error", "service": "web",
                      "hostname": "h1", "message": "boom\nsecond"}});
        assert_eq!(
            render(&v, false),
            "00:00:00.123 ERROR   web          h1           [excluded by rule noisy] boom second"
        );
        assert!(render(&v, true).contains("\x1b[31mERROR  \x1b[0m"));
        let v = json!({"disposition": "over_quota", "quota": "archive_only", "event": {"message": "m"}});
        assert!(render(&v, false).contains(
            "INFO    -            -            [over_quota (daily quota: archive_only)] m"
        ));
    }
}
