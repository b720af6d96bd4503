//! weir-loadgen: posts log batches to Weir over N keep-alive HTTP/1.1
//! connections for a fixed time, then prints one JSON line of totals: Datadog
//! bodies to `<url>/api/v2/logs` by default, or the same events in another
//! intake protocol's form (`--protocol`, see `protocols`), syslog and Fluent
//! forward over plain TCP connections. Bodies are generated (and compressed)
//! once, up front, so the generator spends its CPU on sending, not on
//! building payloads.
mod events;
mod protocols;
mod stream;

use protocols::Protocol;

use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "weir-loadgen",
    about = "Posts Datadog log batches to Weir (or any Datadog-compatible intake)"
)]
struct Args {
    /// Base URL (plain http); requests go to <url>/api/v2/logs.
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    url: String,
    /// The tenant's key, where the protocol sends it (DD-API-KEY, Authorization).
    #[arg(long, default_value = "weir-demo-key")]
    api_key: String,
    /// The intake protocol; syslog and fluent connect to the URL's host and port over TCP.
    #[arg(long, value_enum, default_value_t = Protocol::Datadog)]
    protocol: Protocol,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long to send, e.g. 20s, 500ms, 2m (a bare number is seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Approximate serialized size of one event.
    #[arg(long, default_value_t = 250)]
    event_bytes: usize,
    /// gzip request bodies (Content-Encoding: gzip), as agents do.
    #[arg(long)]
    gzip: bool,
    /// zstd request bodies (Content-Encoding: zstd, level 3), as OpenTelemetry and
    /// Vector can send them; instead of --gzip.
    #[arg(long, conflicts_with = "gzip")]
    zstd: bool,
    /// gzip level for --gzip (agents default to 6).
    #[arg(long, default_value_t = 6)]
    gzip_level: u32,
    /// Cap on events per second across all connections; none: as fast as answered.
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct pre-generated bodies to cycle through.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Runtime worker threads (1: a single-threaded runtime, cheapest on small machines).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed for the event content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tag each request's events `weir_req:N` (`?ddtags=`, N unique per request) and write
    /// the N of every accepted request to this file at the end, one per line, so that
    /// what comes out (weir-blackhole --count-request-tags, the archive) can be checked
    /// for losses and duplicates request by request.
    #[arg(long)]
    accepted_ids: Option<std::path::PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}; expected e.g. 20s, 500ms, 2m"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("duration must be positive, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// One pre-built request body.
struct Payload {
    wire: Bytes,
    raw_len: u64,
}

struct Target {
    addr: String,
    host: String,
    path: Uri,
    /// The key's header and its value (with the scheme, when the protocol has one).
    auth: (&'static str, String),
    content_type: &'static str,
    /// Content-Encoding of the bodies, if compressed.
    encoding: Option<&'static str>,
    /// Tag each request's events `weir_req:N` (--accepted-ids).
    tag_requests: bool,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    accepted: AtomicU64,
    events_accepted: AtomicU64,
    raw_bytes_accepted: AtomicU64,
    wire_bytes_sent: AtomicU64,
    rejected_429: AtomicU64,
    rejected_503: AtomicU64,
    /// Other HTTP statuses (4xx/5xx).
    http_errors: AtomicU64,
    /// Connect failures, broken connections, timeouts.
    io_errors: AtomicU64,
    latency: Histogram,
    /// Request tags handed out so far (with --accepted-ids).
    next_tag: AtomicU64,
    /// The tags of accepted requests (with --accepted-ids).
    accepted_tags: std::sync::Mutex<Vec<u64>>,
}

/// Request latency in power-of-two microsecond buckets: lock-free and good
/// enough for p50/p99 at a glance.
struct Histogram {
    buckets: [AtomicU64; 40],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let i = (63 - us.leading_zeros() as usize).min(39);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// Upper bound of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (1u64 << (i + 1)) as f64 / 1000.0;
            }
        }
        f64::INFINITY
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.batch_size > 0 && args.pool > 0,
        "connections, batch-size and pool must be at least 1"
    );
    let uri: Uri = args.url.parse()?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only plain http:// URLs are supported"
    );
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("URL has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let base = uri.path().trim_end_matches('/');
    let form = args.protocol.http().unwrap_or(protocols::HttpForm {
        path: "/",
        content_type: "",
        auth: ("", ""),
        tags_in_query: false,
    });
    let target = Arc::new(Target {
        addr: format!("{host}:{port}"),
        host: uri.authority().map(|a| a.to_string()).unwrap_or(host),
        path: format!("{base}{}", form.path).parse()?,
        auth: (form.auth.0, format!("{}{}", form.auth.1, args.api_key)),
        content_type: form.content_type,
        encoding: if args.gzip {
            Some("gzip")
        } else if args.zstd {
            Some("zstd")
        } else {
            None
        },
        tag_requests: args.accepted_ids.is_some() && form.tags_in_query,
    });
    anyhow::ensure!(
        !(args.protocol.is_stream() && (args.gzip || args.zstd)),
        "syslog and fluent bodies are sent as they are: no --gzip or --zstd"
    );

    let pool = Arc::new(build_pool(&args));
    let raw: u64 = pool.iter().map(|p| p.raw_len).sum();
    let wire: u64 = pool.iter().map(|p| p.wire.len() as u64).sum();
    eprintln!(
        "weir-loadgen: {} bodies of {} events, {:.0} KB each raw, {:.0} KB on the wire; {} connections for {:?} to {}",
        pool.len(),
        args.batch_size,
        raw as f64 / pool.len() as f64 / 1e3,
        wire as f64 / pool.len() as f64 / 1e3,
        args.connections,
        args.duration,
        args.url
    );

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
    let stats = Arc::new(Stats::default());
    let elapsed = runtime.block_on(run(&args, target, pool, stats.clone()));

    if let Some(path) = &args.accepted_ids {
        let ids: String = stats
            .accepted_tags
            .lock()
            .unwrap()
            .iter()
            .map(|n| format!("{n}\n"))
            .collect();
        std::fs::write(path, ids)?;
    }
    let secs = elapsed.as_secs_f64();
    let s = |a: &AtomicU64| a.load(Relaxed);
    let summary = serde_json::json!({
        "requests": s(&stats.requests),
        "accepted": s(&stats.accepted),
        "events_sent_accepted": s(&stats.events_accepted),
        "rejected": s(&stats.rejected_429) + s(&stats.rejected_503),
        "rejected_429": s(&stats.rejected_429),
        "rejected_503": s(&stats.rejected_503),
        "errors": s(&stats.http_errors) + s(&stats.io_errors),
        "http_errors": s(&stats.http_errors),
        "io_errors": s(&stats.io_errors),
        "elapsed_s": round(secs, 3),
        "mb_per_s_in": round(s(&stats.raw_bytes_accepted) as f64 / secs / 1e6, 2),
        "wire_mb_per_s": round(s(&stats.wire_bytes_sent) as f64 / secs / 1e6, 2),
        "events_per_s_accepted": round(s(&stats.events_accepted) as f64 / secs, 0),
        "latency_p50_ms": stats.latency.quantile_ms(0.5),
        "latency_p99_ms": stats.latency.quantile_ms(0.99),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{summary}")?;
    Ok(())
}

fn round(v: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (v * m).round() / m
}

fn build_pool(args: &Args) -> Vec<Payload> {
    let mut rng = events::Rng::new(args.seed);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (0..args.pool)
        .map(|i| {
            let datadog = events::body(&mut rng, args.batch_size, args.event_bytes, now_ms);
            let raw = args.protocol.render(&datadog, &format!("chunk-{i}"));
            let raw_len = raw.len() as u64;
            let wire = if args.gzip {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(raw.len() / 4),
                    flate2::Compression::new(args.gzip_level),
                );
                enc.write_all(&raw).expect("in-memory write");
                Bytes::from(enc.finish().expect("in-memory write"))
            } else if args.zstd {
                Bytes::from(zstd::bulk::compress(&raw, 3).expect("in-memory zstd"))
            } else {
                Bytes::from(raw)
            };
            Payload { wire, raw_len }
        })
        .collect()
}

/// Set on SIGINT: every connection stops after its request in flight.
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn run(
    args: &Args,
    target: Arc<Target>,
    pool: Arc<Vec<Payload>>,
    stats: Arc<Stats>,
) -> Duration {
    let start = Instant::now();
    let deadline = start + args.duration;
    // SIGINT ends the run early, like the deadline (the report is still written).
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            STOPPED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Each connection gets an equal share of the rate cap, as a fixed request
    // interval; their first ticks are staggered so requests do not come in bursts.
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(args.batch_size as f64 * args.connections as f64 / r));
    let tasks: Vec<_> = (0..args.connections)
        .map(|id| {
            let ticker = interval.map(|i| {
                let mut t = tokio::time::interval_at(
                    start + i.mul_f64(id as f64 / args.connections as f64),
                    i,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let (batch, target, pool, stats) = (
                args.batch_size as u64,
                target.clone(),
                pool.clone(),
                stats.clone(),
            );
            match args.protocol {
                Protocol::Syslog | Protocol::Fluent => tokio::spawn(stream::connection(
                    id,
                    args.protocol == Protocol::Fluent,
                    batch,
                    ticker,
                    deadline,
                    target,
                    pool,
                    stats,
                )),
                _ => tokio::spawn(connection(id, batch, ticker, deadline, target, pool, stats)),
            }
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    start.elapsed()
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(&target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or the sender is dropped.
        let _ = conn.await;
    });
    Ok(sender)
}

/// One keep-alive connection sending back to back until the deadline; it
/// reconnects after an I/O error and pauses for Retry-After on 429/503.
async fn connection(
    id: usize,
    batch: u64,
    mut ticker: Option<tokio::time::Interval>,
    deadline: Instant,
    target: Arc<Target>,
    pool: Arc<Vec<Payload>>,
    stats: Arc<Stats>,
) {
    // Connections start at different bodies so they do not send the same one at once.
    let mut next = id * 5;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    while Instant::now() < deadline && !STOPPED.load(std::sync::atomic::Ordering::Relaxed) {
        let s = match &mut sender {
            Some(s) => s,
            None => match tokio::time::timeout_at(deadline, connect(&target)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(_)) => {
                    stats.io_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep_until(
                        deadline.min(Instant::now() + Duration::from_millis(200)),
                    )
                    .await;
                    continue;
                }
                Err(_) => break,
            },
        };
        if let Some(t) = &mut ticker {
            if tokio::time::timeout_at(deadline, t.tick()).await.is_err() {
                break;
            }
        }
        let payload = &pool[next % pool.len()];
        next += 1;
        let tag = target
            .tag_requests
            .then(|| stats.next_tag.fetch_add(1, Relaxed));
        let uri = match tag {
            Some(n) => format!("{}?ddtags=weir_req:{n}", target.path)
                .parse()
                .expect("a valid URI"),
            None => target.path.clone(),
        };
        let mut req = Request::post(uri)
            .header(HOST, &target.host)
            .header(target.auth.0, &target.auth.1)
            .header(CONTENT_TYPE, target.content_type);
        if let Some(encoding) = target.encoding {
            req = req.header(CONTENT_ENCODING, encoding);
        }
        let req = req
            .body(Full::new(payload.wire.clone()))
            .expect("valid request");
        if s.ready().await.is_err() {
            // The server closed the keep-alive connection between requests.
            sender = None;
            continue;
        }
        let sent = Instant::now();
        stats.requests.fetch_add(1, Relaxed);
        stats
            .wire_bytes_sent
            .fetch_add(payload.wire.len() as u64, Relaxed);
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            let resp = s.send_request(req).await?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            // Read the body so the connection can carry the next request.
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, retry_after))
        })
        .await;
        match result {
            Ok(Ok((status, retry_after))) => {
                stats.latency.record(sent.elapsed());
                if status.is_success() {
                    if let Some(n) = tag {
                        stats.accepted_tags.lock().unwrap().push(n);
                    }
                    stats.accepted.fetch_add(1, Relaxed);
                    stats.events_accepted.fetch_add(batch, Relaxed);
                    stats.raw_bytes_accepted.fetch_add(payload.raw_len, Relaxed);
                } else if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE
                {
                    let counter = if status == StatusCode::TOO_MANY_REQUESTS {
                        &stats.rejected_429
                    } else {
                        &stats.rejected_503
                    };
                    counter.fetch_add(1, Relaxed);
                    // Back off as told (1 s when unsaid), like an agent would; never past the end.
                    let pause = Duration::from_secs(retry_after.unwrap_or(1));
                    tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                } else {
                    stats.http_errors.fetch_add(1, Relaxed);
                }
            }
            Ok(Err(_)) | Err(_) => {
                stats.io_errors.fetch_add(1, Relaxed);
                sender = None;
            }
        }
    }
}
