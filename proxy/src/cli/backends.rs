//! `weir backends`: each backend's health, from a running proxy's admin listener.
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The admin listener: `HOST:PORT` or `http://HOST:PORT` (its `admin.address`).
    #[arg(long, default_value = "127.0.0.1:8089")]
    admin: String,
    /// Print the JSON as the proxy answered it.
    #[arg(long)]
    json: bool,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches `<admin>/backends` and prints it as a table (or as JSON).
pub fn run(args: Args) -> Result<(), String> {
    let url = backends_url(&args.admin)?;
    let body = fetch(&url)?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{url} answered something that is not JSON: {e}"))?;
    let rows = v["backends"]
        .as_array()
        .ok_or_else(|| format!("{url} answered JSON without a `backends` list: {v}"))?;
    print!("{}", table(rows, Utc::now()));
    Ok(())
}

/// `<admin>/backends`, from `HOST:PORT`, `http://HOST:PORT` or `http://HOST:PORT/prefix`.
fn backends_url(admin: &str) -> Result<http::Uri, String> {
    let bad =
        |why: &str| format!("--admin {admin:?}: {why}; expected HOST:PORT or http://HOST:PORT");
    let with_scheme = match admin.split_once("://") {
        Some(("http", _)) => admin.to_string(),
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "the admin listener speaks plain http, not {scheme}"
            )))
        }
        None => format!("http://{admin}"),
    };
    let base: http::Uri = with_scheme.parse().map_err(|e| bad(&format!("{e}")))?;
    if base.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    // A URL may leave the port to its scheme; HOST alone would mean port 80, never the admin's.
    if !admin.contains("://") && base.port().is_none() {
        return Err(bad("no port"));
    }
    if base.query().is_some() {
        return Err(bad("a query string is not expected"));
    }
    format!("{}/backends", with_scheme.trim_end_matches('/'))
        .parse()
        .map_err(|e| bad(&format!("{e}")))
}

/// The body of a 2xx answer to GET `url`.
fn fetch(url: &http::Uri) -> Result<bytes::Bytes, String> {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let resp = tokio::time::timeout(TIMEOUT, client.get(url.clone()))
            .await
            .map_err(|_| format!("{url}: no answer within {}s", TIMEOUT.as_secs()))?
            .map_err(|e| {
                format!(
                    "cannot reach the admin listener at {url}: {} (is `weir run` running, with this admin.address?)",
                    causes(&e)
                )
            })?;
        let status = resp.status();
        let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| format!("{url}: the answer did not finish within {}s", TIMEOUT.as_secs()))?
            .map_err(|e| format!("{url}: reading the answer: {}", causes(&e)))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    })
}

/// `e` and its sources, `outer: inner: innermost`, each message once: hyper's "client error
/// (Connect)" alone does not say that the connection was refused.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
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
    fn admin_accepts_host_port_and_http_urls() {
        for (given, url) in [
            ("127.0.0.1:19181", "http://127.0.0.1:19181/backends"),
            ("http://127.0.0.1:19181", "http://127.0.0.1:19181/backends"),
            ("http://127.0.0.1:19181/", "http://127.0.0.1:19181/backends"),
            ("localhost:8089", "http://localhost:8089/backends"),
            ("[::1]:8089", "http://[::1]:8089/backends"),
            ("http://proxy:80/weir/", "http://proxy:80/weir/backends"),
        ] {
            assert_eq!(backends_url(given).unwrap().to_string(), url, "{given}");
        }
        for (given, why) in [
            ("https://127.0.0.1:8089", "plain http, not https"),
            ("", "expected HOST:PORT"),
            ("http://", "expected HOST:PORT"),
            ("127.0.0.1 8089", "expected HOST:PORT"),
            ("localhost", "no port"),
        ] {
            let err = backends_url(given).unwrap_err();
            assert!(err.contains(why), "{given:?}: {err}");
        }
    }

    #[test]
    fn causes_walks_the_source_chain() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(causes(&e), "client error (Connect): connection refused");
    }

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
