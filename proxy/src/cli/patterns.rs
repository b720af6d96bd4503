//! `weir patterns`: a tenant's top log patterns by volume, each with the
//! exclusion-rule query that matches it and what excluding it would save per
//! day, from a running proxy's admin listener (`GET /admin/patterns`).
use super::admin::{Admin, AdminArgs};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    admin: AdminArgs,
    /// The tenant (its `name` in the config).
    #[arg(long)]
    tenant: String,
    /// How many patterns, largest first (at most 1000).
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Print the JSON as the proxy answered it.
    #[arg(long)]
    json: bool,
}

/// Fetches the tenant's patterns and prints them as a table (or as JSON).
pub fn run(args: Args) -> Result<(), String> {
    // Tenant names are letters, digits, `-` and `_`: nothing to escape in a URL.
    if args.tenant.is_empty()
        || !args
            .tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "--tenant {:?}: tenant names use letters, digits, - and _",
            args.tenant
        ));
    }
    let admin = Admin::new(&args.admin)?;
    let path = format!(
        "/admin/patterns?tenant={}&limit={}",
        args.tenant, args.limit
    );
    let v = admin.call(http::Method::GET, &path, None)?;
    if args.json {
        println!("{v}");
        return Ok(());
    }
    let rows = v["patterns"].as_array().ok_or_else(|| {
        format!(
            "{} answered JSON without a `patterns` list: {v}",
            admin.url(&path)
        )
    })?;
    print!("{}", table(&v, rows));
    Ok(())
}

/// Bytes for people: `52.1KiB`.
fn human(bytes: u64) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{bytes}B")
            } else {
                format!("{v:.1}{unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

const HEADERS: [&str; 6] = [
    "ID",
    "EVENTS/1H",
    "BYTES/1H",
    "SHARE",
    "INDEXED",
    "SAVES/DAY",
];

/// A header line, then per pattern a row of numbers with its template, and
/// under it the query to exclude it.
fn table(report: &Value, rows: &[Value]) -> String {
    let mut cells: Vec<[String; 6]> = vec![HEADERS.map(String::from)];
    for r in rows {
        let n = |key: &str| r[key].as_u64().unwrap_or(0);
        let f = |key: &str| r[key].as_f64().unwrap_or(0.0);
        cells.push([
            n("id").to_string(),
            r["last_hour"]["events"].as_u64().unwrap_or(0).to_string(),
            human(r["last_hour"]["bytes"].as_u64().unwrap_or(0)),
            percent(f("share_of_bytes")),
            percent(f("indexed_fraction")),
            human(n("estimated_daily_bytes_saved")),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "tenant {}: {} patterns (top {} by bytes in the last hour; {} of events mined)\n",
        report["tenant"].as_str().unwrap_or("?"),
        report["live_patterns"],
        rows.len(),
        percent(report["sampled_fraction"].as_f64().unwrap_or(1.0)),
    );
    let indent = widths.iter().sum::<usize>() + 2 * widths.len();
    for (i, row) in cells.iter().enumerate() {
        for (j, (cell, w)) in row.iter().zip(widths).enumerate() {
            // The id on the left, numbers on the right.
            if j == 0 {
                out.push_str(&format!("{cell:<w$}  "));
            } else {
                out.push_str(&format!("{cell:>w$}  "));
            }
        }
        if i == 0 {
            out.push_str("PATTERN\n");
            continue;
        }
        let r = &rows[i - 1];
        let one_line = |v: &Value| v.as_str().unwrap_or("").replace(['\n', '\r'], " ");
        out.push_str(&one_line(&r["template"]));
        out.push('\n');
        let query = match r["query"].as_str() {
            Some(q) if r["query_exact_on_examples"] == true => q.to_string(),
            Some(q) => format!("{q}   (not exact: {})", one_line(&r["query_note"])),
            None => format!("(none: {})", one_line(&r["query_note"])),
        };
        out.push_str(&format!("{:indent$}query: {query}\n", ""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_numbers_templates_and_queries() {
        let report = json!({"tenant": "acme", "live_patterns": 2, "sampled_fraction": 0.5});
        let rows = [json!({
            "id": 7, "template": "Failed password for <*> from <*> port <*> ssh2",
            "query": "\"Failed password for\" from port ssh2", "query_exact_on_examples": true,
            "last_hour": {"events": 383, "bytes": 53_400},
            "share_of_bytes": 0.2, "indexed_fraction": 1.0, "estimated_daily_bytes_saved": 1_281_600_000u64
        })];
        let t = table(&report, &rows);
        assert!(t.starts_with("tenant acme: 2 patterns (top 1 by bytes in the last hour; 50.0% of events mined)\n"), "{t}");
        assert!(
            t.contains("ID  EVENTS/1H  BYTES/1H  SHARE  INDEXED  SAVES/DAY  PATTERN\n"),
            "{t}"
        );
        assert!(t.contains("7         383   52.1KiB  20.0%   100.0%     1.2GiB  Failed password for <*> from <*> port <*> ssh2\n"), "{t}");
        assert!(
            t.contains("query: \"Failed password for\" from port ssh2\n"),
            "{t}"
        );
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(1536), "1.5KiB");
    }
}
