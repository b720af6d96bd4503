//! `weir backends`: each backend's health, from a running proxy's admin listener.
use super::admin::{Admin, AdminArgs};
use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the JSON as the proxy answered it.
    #[arg(long)]
    json: bool,
}

/// Fetches `<admin>/backends` and prints it as a table (or as JSON).
pub fn run(args: Args) -> Result<(), String> {
    let admin = Admin::new(&args.admin)?;
    let v = admin.call(http::Method::GET, "/backends", None)?;
    if args.json {
        println!("{v}");
        return Ok(());
    }
    let rows = v["backends"].as_array().ok_or_else(|| {
        format!(
            "{} answered JSON without a `backends` list: {v}",
            admin.url("/backends")
        )
    })?;
    print!("{}", table(rows, Utc::now()));
    Ok(())
}

const HEADERS: [&str; 8] = [
    "BACKEND",
    "STATE",
    "EJECTED",
    "FAILURES",
    "EJECTIONS",
    "FAILOVERS",
    "LAST CHANGE",
    "LAST ERROR",
];
/// Numbers line up on the right.
const RIGHT: [bool; 8] = [false, false, true, true, true, true, false, false];

/// The rows of `GET /backends` as a table, every column as wide as its widest cell.
fn table(rows: &[Value], now: DateTime<Utc>) -> String {
    let mut cells: Vec<[String; 8]> = vec![HEADERS.map(String::from)];
    for r in rows {
        let text = |key: &str| match &r[key] {
            Value::String(s) => s.replace(['\n', '\r'], " "),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        cells.push([
            text("backend"),
            text("state"),
            r["ejected_for_s"]
                .as_u64()
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into()),
            text("consecutive_failures"),
            text("ejections"),
            text("failovers_away"),
            r["last_change"]
                .as_str()
                .map(|t| when(t, now))
                .unwrap_or_else(|| "-".into()),
            text("last_error"),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if RIGHT[i] {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An RFC 3339 time as UTC to the second, with how long ago it was:
/// `2026-12-02T04:47:24Z (12s ago)`. Anything else is shown as it came.
fn when(rfc3339: &str, now: DateTime<Utc>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(rfc3339) else {
        return rfc3339.to_string();
    };
    let t = t.with_timezone(&Utc);
    let stamp = t.format("%Y-%m-%dT%H:%M:%SZ");
    // The proxy may run on another machine whose clock is ahead: no "ago" then.
    match (now - t).to_std() {
        Ok(d) => format!("{stamp} ({} ago)", ago(d.as_secs())),
        Err(_) => stamp.to_string(),
    }
}

fn ago(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ago_reads_at_a_glance() {
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(61), "1m01s");
        assert_eq!(ago(3 * 3600 + 5 * 60 + 9), "3h05m");
        assert_eq!(ago(2 * 86400 + 7200), "2d2h");
    }

    #[test]
    fn table_columns_line_up_whatever_the_widths() {
        let now: DateTime<Utc> = "2026-12-02T04:48:00Z".parse().unwrap();
        let rows = vec![
            json!({"backend": "a-backend-name-much-longer-than-twenty-four", "state": "ejected", "ejected_for_s": 1234,
                   "consecutive_failures": 12345, "ejections": 3, "failovers_away": 1000000,
                   "last_error": "connection refused", "last_change": "2026-12-02T04:47:24.123456789+00:00"}),
            json!({"backend": "b", "state": "up", "consecutive_failures": 0, "ejections": 0, "failovers_away": 0,
                   "last_change": "2026-12-01T23:47:24.5+01:00"}),
        ];
        let t = table(&rows, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        // A left-aligned column starts, a right-aligned one ends, at the same place on every line.
        let header = lines[0];
        for (i, h) in HEADERS.iter().enumerate() {
            let start = header.find(h).unwrap();
            let end = start + h.len();
            for line in &lines[1..] {
                if RIGHT[i] {
                    assert_ne!(line.as_bytes()[end - 1], b' ', "{h} ends at {end}:\n{t}");
                    assert_eq!(line.as_bytes().get(end), Some(&b' '), "{h}:\n{t}");
                } else {
                    assert_ne!(line.as_bytes()[start], b' ', "{h} starts at {start}:\n{t}");
                    if start > 0 {
                        assert_eq!(line.as_bytes()[start - 1], b' ', "{h}:\n{t}");
                    }
                }
            }
        }
        assert!(
            lines[1].contains("  2026-12-02T04:47:24Z (35s ago)    connection refused"),
            "{t}"
        );
        assert!(
            lines[2].contains("  2026-12-01T22:47:24Z (6h00m ago)  -"),
            "{t}"
        );
    }
}
