//! weir-blackhole: a backend that takes any POST, decompresses it (gzip or
//! zstd per Content-Encoding), really parses it to count the log events, and
//! answers 202 `{}`. It prints cumulative counts as one JSON line per second
//! and serves them at GET /stats, so a benchmark can measure end-to-end
//! throughput where the events come out.
//!
//! For failover tests it is also a backend to kill for real: `--record FILE`
//! appends every accepted event's `message` to FILE before answering (so what
//! it acknowledged survives a SIGKILL), and `--answer 400` or `--answer hang`
//! makes it refuse every batch or never answer.
//!
//! For benchmarks that must tell losses from duplicates, `--count-request-tags`
//! counts events by the `weir_req:N` tag weir-loadgen puts on each request's
//! events (`?ddtags=`), served as `N count` lines at GET /request-tags.
use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "weir-blackhole",
    about = "Counts the log events POSTed to it and throws them away"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the first stdout line names it).
    #[arg(long, default_value = "127.0.0.1:9099")]
    addr: SocketAddr,
    /// Runtime worker threads (1: single-threaded, so it takes at most one core from what it measures).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Append each accepted event's `message` as a line to this file before answering.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Answer every POST with this status (e.g. 400 or 503), or `hang` to never answer.
    #[arg(long)]
    answer: Option<String>,
    /// Count events per `weir_req:N` tag (GET /request-tags).
    #[arg(long)]
    count_request_tags: bool,
}

/// How POSTs are answered.
#[derive(Clone)]
struct Behaviour {
    record: Option<Arc<std::sync::Mutex<std::fs::File>>>,
    answer: Option<String>,
    /// Events seen per weir-loadgen request tag, when counted.
    request_tags: Option<Arc<std::sync::Mutex<std::collections::HashMap<u64, u64>>>>,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    /// Decompressed body bytes.
    bytes: AtomicU64,
    /// Body bytes as received.
    wire_bytes: AtomicU64,
    requests: AtomicU64,
    /// Bodies that failed to decompress or parse (answered 400).
    bad_requests: AtomicU64,
}

impl Counters {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events.load(Relaxed),
            "bytes": self.bytes.load(Relaxed),
            "wire_bytes": self.wire_bytes.load(Relaxed),
            "requests": self.requests.load(Relaxed),
            "bad_requests": self.bad_requests.load(Relaxed),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let record = match &args.record {
        Some(p) => Some(Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ))),
        None => None,
    };
    let behaviour = Behaviour {
        record,
        answer: args.answer.clone(),
        request_tags: args.count_request_tags.then(Arc::default),
    };
    runtime.block_on(serve(args.addr, behaviour))
}

async fn serve(addr: SocketAddr, behaviour: Behaviour) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "{}",
        serde_json::json!({ "listening": listener.local_addr()?.to_string() })
    );
    let counters = Arc::new(Counters::default());
    tokio::spawn(report(counters.clone()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                eprintln!("weir-blackhole: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let counters = counters.clone();
        let behaviour = behaviour.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, counters.clone(), behaviour.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// One JSON line of cumulative counts per second, plus the last second's rate.
async fn report(c: Arc<Counters>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    loop {
        tick.tick().await;
        let mut line = c.json();
        let events = c.events.load(Relaxed);
        line["t"] = serde_json::json!((start.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        line["events_per_s"] = serde_json::json!(events - last);
        last = events;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

async fn handle(
    req: Request<Incoming>,
    c: Arc<Counters>,
    b: Behaviour,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        return Ok(reply(StatusCode::OK, c.json().to_string()));
    }
    if req.method() == Method::GET && req.uri().path() == "/request-tags" {
        let mut out = String::new();
        if let Some(tags) = &b.request_tags {
            for (id, n) in tags.lock().unwrap().iter() {
                out.push_str(&format!("{id} {n}\n"));
            }
        }
        return Ok(reply(StatusCode::OK, out));
    }
    if req.method() != Method::POST {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"errors":["POST logs here, or GET /stats"]}"#.into(),
        ));
    }
    let encoding = req
        .headers()
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let ndjson = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson"));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                r#"{"errors":["body not received"]}"#.into(),
            ))
        }
    };
    c.requests.fetch_add(1, Relaxed);
    c.wire_bytes.fetch_add(body.len() as u64, Relaxed);
    match b.answer.as_deref() {
        Some("hang") => std::future::pending::<()>().await,
        Some(code) => {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(reply(
                status,
                serde_json::json!({ "errors": [format!("weir-blackhole --answer {code}")] })
                    .to_string(),
            ));
        }
        None => {}
    }
    let plain = match decompress(&body, encoding.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            c.bad_requests.fetch_add(1, Relaxed);
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "errors": [e] }).to_string(),
            ));
        }
    };
    if let Some(tags) = &b.request_tags {
        let found = request_tags(&plain);
        let mut t = tags.lock().unwrap();
        for id in found {
            *t.entry(id).or_default() += 1;
        }
    }
    match count_plain(&plain, ndjson) {
        Ok((events, plain)) => {
            if let Some(file) = &b.record {
                let lines = messages(&body, encoding.as_deref(), ndjson);
                let mut f = file.lock().unwrap();
                if let Err(e) = f.write_all(lines.as_bytes()) {
                    eprintln!("weir-blackhole: --record write failed: {e}");
                    return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, "{}".into()));
                }
            }
            c.events.fetch_add(events, Relaxed);
            c.bytes.fetch_add(plain, Relaxed);
            Ok(reply(StatusCode::ACCEPTED, "{}".into()))
        }
        Err(e) => {
            c.bad_requests.fetch_add(1, Relaxed);
            eprintln!("weir-blackhole: bad request: {e}");
            Ok(reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "errors": [e] }).to_string(),
            ))
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The `message` of each event of a body that `count` accepted, one per line.
fn messages(body: &[u8], encoding: Option<&str>, ndjson: bool) -> String {
    let plain = decompress(body, encoding).unwrap_or_default();
    let events: Vec<serde_json::Value> = if ndjson {
        plain
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    } else {
        match serde_json::from_slice::<serde_json::Value>(&plain) {
            Ok(serde_json::Value::Array(a)) => a,
            Ok(one) => vec![one],
            Err(_) => Vec::new(),
        }
    };
    let mut out = String::new();
    for e in events {
        out.push_str(e["message"].as_str().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn decompress(body: &[u8], encoding: Option<&str>) -> Result<Vec<u8>, String> {
    Ok(match encoding {
        None | Some("") | Some("identity") => body.to_vec(),
        Some("gzip") | Some("x-gzip") => {
            read_all(flate2::read::MultiGzDecoder::new(body), body.len(), "gzip")?
        }
        Some("zstd") => read_all(
            zstd::stream::read::Decoder::new(body).map_err(|e| format!("zstd: {e}"))?,
            body.len(),
            "zstd",
        )?,
        Some("deflate") => read_all(flate2::read::ZlibDecoder::new(body), body.len(), "deflate")?,
        Some(other) => return Err(format!("unsupported Content-Encoding {other:?}")),
    })
}

/// The `weir_req:N` tags in a decompressed body, one per event that carries one.
fn request_tags(plain: &[u8]) -> Vec<u64> {
    let text = String::from_utf8_lossy(plain);
    text.match_indices("weir_req:")
        .filter_map(|(i, m)| {
            let digits: String = text[i + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Decompresses and parses a body; returns (events, decompressed bytes).
#[cfg(test)]
fn count(body: &[u8], encoding: Option<&str>, ndjson: bool) -> Result<(u64, u64), String> {
    count_plain(&decompress(body, encoding)?, ndjson)
}

/// Parses a decompressed body; returns (events, bytes).
fn count_plain(plain: &[u8], ndjson: bool) -> Result<(u64, u64), String> {
    let events = if ndjson {
        let mut n = 0;
        for line in plain
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
        {
            serde_json::from_slice::<IgnoredAny>(line)
                .map_err(|e| format!("invalid NDJSON line: {e}"))?;
            n += 1;
        }
        n
    } else if plain.trim_ascii_start().first() == Some(&b'{') {
        // A single log object is one event.
        serde_json::from_slice::<IgnoredAny>(plain).map_err(|e| format!("invalid JSON: {e}"))?;
        1
    } else {
        serde_json::from_slice::<Vec<IgnoredAny>>(plain)
            .map_err(|e| format!("invalid JSON array: {e}"))?
            .len() as u64
    };
    Ok((events, plain.len() as u64))
}

fn read_all(mut r: impl Read, hint: usize, what: &str) -> Result<Vec<u8>, String> {
    // Log JSON usually compresses 5-10x; start near that to avoid regrowing.
    let mut out = Vec::with_capacity(hint.saturating_mul(8));
    r.read_to_end(&mut out)
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_tags_are_found_once_per_event() {
        let body = br#"[{"message":"a","ddtags":"env:prod,weir_req:17"},{"message":"b","ddtags":"weir_req:17,x:y"},{"message":"c","ddtags":"weir_req:4"},{"message":"none"}]"#;
        assert_eq!(request_tags(body), vec![17, 17, 4]);
    }

    #[test]
    fn counts_every_shape_and_encoding() {
        let json = br#"[{"message":"a"},{"message":"b","x":[1,{"y":2}]},{}]"#;
        assert_eq!(count(json, None, false).unwrap(), (3, json.len() as u64));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json).unwrap();
        assert_eq!(
            count(&gz.finish().unwrap(), Some("gzip"), false).unwrap().0,
            3
        );
        let zs = zstd::bulk::compress(json, 1).unwrap();
        assert_eq!(count(&zs, Some("zstd"), false).unwrap().0, 3);
        assert_eq!(count(b"{\"a\":1}\n\n{\"b\":2}\n", None, true).unwrap().0, 2);
        assert_eq!(count(b" {\"message\":\"one\"}", None, false).unwrap().0, 1);
        assert!(count(b"[{\"a\":}]", None, false).is_err());
        assert!(count(b"[1,2]", Some("gzip"), false).is_err());
        assert!(count(b"[]", Some("br"), false).is_err());
    }
}
