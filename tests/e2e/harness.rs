//! What the end-to-end tests share: the real `weir` binary as a process (and
//! its CLI), a test double of the Datadog logs intake (the real wire protocol:
//! gzip or zstd JSON arrays on POST /api/v2/logs), weir-blackhole processes to
//! kill, config builders, admin and metric readers, and a plain HTTP client.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port nothing listens on now, never handed out before in this test run: the
/// kernel may give a just-released port again, and two of one test's listeners (or
/// two tests' running at once) on the same port would fail to start.
pub fn free_port() -> u16 {
    static ISSUED: Mutex<Option<std::collections::HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ISSUED
            .lock()
            .unwrap()
            .get_or_insert_with(Default::default)
            .insert(port)
        {
            return port;
        }
    }
}

/// `config` with the admin control API turned on by `token`.
pub fn with_admin_token(config: &str, token: &str) -> String {
    config.replace(
        "admin:\n  address: 127.0.0.1:{ADMIN}\n",
        &format!("admin:\n  address: 127.0.0.1:{{ADMIN}}\n  token: {token}\n"),
    )
}

/// A Datadog intake body: a JSON array of `n` entries, entry `i` made by `entry(i)`.
pub fn json_logs(n: usize, entry: impl Fn(usize) -> Value) -> Vec<u8> {
    serde_json::to_vec(&(0..n).map(entry).collect::<Vec<_>>()).unwrap()
}

/// Polls `f` until it returns Some, or panics with `what` after `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Weir {
    pub child: Child,
    pub intake: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Weir {
    /// Starts weir with `config` after replacing {INTAKE}, {ADMIN} and {DIR}, and waits until ready.
    pub async fn start(config: &str) -> Weir {
        Weir::start_in(tempfile::tempdir().unwrap(), config).await
    }

    /// Starts in an existing directory (a restart keeps the data directory and the archive).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Weir {
        Weir::start_until(dir, config, |status| status == 200).await
    }

    /// Starts in an existing directory and waits until `/readyz` answers at
    /// all (ready or not: a proxy that starts on a full disk is not ready).
    pub async fn start_answering_in(dir: tempfile::TempDir, config: &str) -> Weir {
        Weir::start_until(dir, config, |_| true).await
    }

    async fn start_until(dir: tempfile::TempDir, config: &str, ready: fn(u16) -> bool) -> Weir {
        let intake = free_port();
        let admin = free_port();
        let text = config
            .replace("{INTAKE}", &intake.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{DIR}", dir.path().to_str().unwrap());
        let config_path = dir.path().join("weir.yaml");
        std::fs::write(&config_path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--config", config_path.to_str().unwrap()])
            // A config without data_dir keeps its state (the disk buffer) in the test's directory.
            .current_dir(dir.path())
            .env("RUST_LOG", "weir=debug")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("weir.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("spawning weir");
        let mut w = Weir {
            child,
            intake,
            admin,
            dir,
            config_path,
        };
        let url = format!("http://127.0.0.1:{admin}/readyz");
        let start = Instant::now();
        loop {
            if let Ok(r) = get(&url).await {
                if ready(r.status) {
                    break;
                }
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("weir exited early ({status}): {}", w.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "weir not ready: {}",
                w.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        w
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.intake, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default()
    }

    pub fn archive_root(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// SIGTERM, then the exit status (panics if it takes longer than a minute).
    pub fn terminate(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "weir did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process (if still running) and hands over its directory, for a restart.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    pub async fn metrics(&self) -> String {
        get(&format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
    }

    /// The metrics once `name_and_labels` has reached at least `value` (counters
    /// are updated one after another, and after a backend has answered: a test
    /// that saw the backend get a batch must still wait for the count).
    pub async fn metrics_once(&self, name_and_labels: &str, value: f64) -> String {
        let start = Instant::now();
        loop {
            let m = self.metrics().await;
            if metric_opt(&m, name_and_labels).unwrap_or(0.0) >= value {
                return m;
            }
            // A liveness limit, not a timing: generous, as CI's 2 cores run several tests at once.
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {name_and_labels} >= {value}: {m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Secrets every test's config carries (`config()`'s upstream key): no weir
/// of the whole suite may write them to its log, whatever the test does.
const SUITE_SECRETS: [&str; 1] = ["upstream-secret"];

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            return;
        }
        let log = self.log();
        for secret in SUITE_SECRETS {
            if let Some(line) = log.lines().find(|l| l.contains(secret)) {
                panic!("a secret in weir's log: {line}");
            }
        }
    }
}

/// The value of a metric line `name{labels}` (labels as printed, sorted by name).
/// A series that is not there fails the test: a misspelt name or label must not
/// read as 0 (every series the config names exists from start; see telemetry/seed.rs).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    metric_opt(text, name_and_labels).unwrap_or_else(|| {
        let name = name_and_labels.split('{').next().unwrap();
        let known: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(name))
            .take(20)
            .collect();
        panic!("no series {name_and_labels}; series of {name}: {known:#?}")
    })
}

/// The value of a series, or None when it is not exported (e.g. a quota limit that is not set).
pub fn metric_opt(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The first message of a Datadog-style `{"errors":[...]}` body.
    pub fn error(&self) -> String {
        let v = self.json();
        v["errors"][0]
            .as_str()
            .unwrap_or_else(|| panic!("no errors[0] in {v}"))
            .to_string()
    }
}

pub async fn get(url: &str) -> Result<Reply, String> {
    request(http::Method::GET, url, &[], Bytes::new()).await
}

pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    request(http::Method::POST, url, headers, body.into())
        .await
        .unwrap()
}

/// A POST's status, or the error when there was no answer (the server was killed).
pub async fn try_post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<u16, String> {
    request(http::Method::POST, url, headers, body.into())
        .await
        .map(|r| r.status)
}

pub async fn request(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Reply, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Every event in every object under `root` (`.ndjson.gz`, or `.ndjson.zst`), with the object paths (relative).
pub fn read_archive(root: &Path) -> (Vec<Value>, Vec<String>) {
    let mut events = Vec::new();
    let mut objects = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                // The store writes `<name>#N` and renames it when complete: skip
                // objects being written, and ones renamed between list and open.
                let name = p.to_string_lossy();
                let zst = name.ends_with(".ndjson.zst");
                if !zst && !name.ends_with(".ndjson.gz") {
                    continue;
                }
                let Ok(file) = std::fs::File::open(&p) else {
                    continue;
                };
                objects.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                let mut text = String::new();
                if zst {
                    zstd::stream::read::Decoder::new(file)
                        .unwrap()
                        .read_to_string(&mut text)
                        .unwrap();
                } else {
                    flate2::read::MultiGzDecoder::new(file)
                        .read_to_string(&mut text)
                        .unwrap();
                }
                events.extend(
                    text.lines()
                        .map(|l| serde_json::from_str::<Value>(l).unwrap()),
                );
            }
        }
    }
    objects.sort();
    (events, objects)
}

/// A test double of Datadog's logs intake.
#[derive(Clone, Default)]
pub struct FakeDatadog {
    pub events: Arc<Mutex<Vec<Value>>>,
    pub requests: Arc<Mutex<Vec<http::HeaderMap>>>,
    /// Statuses to answer before accepting (e.g. 503, 400); empty: 202.
    pub script: Arc<Mutex<VecDeque<u16>>>,
}

impl FakeDatadog {
    pub async fn start() -> (FakeDatadog, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = FakeDatadog::default();
        fake.clone().serve(listener);
        (fake, addr)
    }

    /// Starts serving on a port chosen earlier (the backend "comes up").
    pub async fn start_on(port: u16) -> FakeDatadog {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let fake = FakeDatadog::default();
        fake.clone().serve(listener);
        fake
    }

    fn serve(self, listener: tokio::net::TcpListener) {
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| me.clone().handle(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }

    async fn handle(
        self,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
        let reply = |status: u16, body: &'static str| {
            let mut r = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok(r)
        };
        // The Datadog intake path, or /ingest for `http` backends.
        if !matches!(req.uri().path(), "/api/v2/logs" | "/ingest")
            || req.method() != http::Method::POST
        {
            return reply(404, "{\"errors\":[\"not found\"]}");
        }
        let headers = req.headers().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        self.requests.lock().unwrap().push(headers.clone());
        if let Some(status) = self.script.lock().unwrap().pop_front() {
            return reply(status, "{\"errors\":[\"scripted failure\"]}");
        }
        let plain = match headers.get("content-encoding").map(|v| v.to_str().unwrap()) {
            Some("gzip") => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            Some("zstd") => zstd::stream::decode_all(&body[..]).unwrap(),
            None => body.to_vec(),
            Some(other) => panic!("unexpected encoding {other}"),
        };
        if headers
            .get("content-type")
            .is_some_and(|v| v == "application/x-ndjson")
        {
            let lines: Result<Vec<Value>, _> = plain
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(serde_json::from_slice)
                .collect();
            let Ok(items) = lines else {
                return reply(400, "{\"errors\":[\"bad NDJSON\"]}");
            };
            self.events.lock().unwrap().extend(items);
            return reply(200, "{}");
        }
        let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&plain) else {
            return reply(400, "{\"errors\":[\"body is not a JSON array\"]}");
        };
        self.events.lock().unwrap().extend(items);
        reply(202, "{}")
    }

    pub fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn take(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

/// A config with one plain listener, one tenant (`acme`, key `agent-key`)
/// forwarding to a Datadog double at `backend`, archived under {DIR}/archive.
/// `extra_backend` lines are appended to the backend entry.
pub fn config(backend: &str, extra_backend: &str, extra_top: &str) -> String {
    format!(
        r#"data_dir: {{DIR}}/data
listeners:
  - name: intake
    address: 127.0.0.1:{{INTAKE}}
    protocol: http
admin:
  address: 127.0.0.1:{{ADMIN}}
archive:
  store:
    type: local
    root: {{DIR}}/archive
  max_object_age: 1h
backends:
  - name: dd
    type: datadog
    endpoint: http://{backend}
    batch:
      max_wait: 100ms
    retry:
      initial_backoff: 20ms
      max_backoff: 300ms
{extra_backend}
tenants:
  - name: acme
    api_keys: [agent-key]
    backend: dd
    upstream_api_key: upstream-secret
{extra_top}
"#
    )
}

/// A `weir-blackhole` process (tests/loadgen): a backend that can be killed for
/// real. It records each accepted event's message to `record` before answering.
pub struct Blackhole {
    pub child: Child,
    pub port: u16,
    pub record: PathBuf,
}

impl Blackhole {
    /// Starts one on `port` (0: a free one); `answer`: `Some("hang")`, `Some("400")`, ...
    pub async fn start(port: u16, record: &Path, answer: Option<&str>) -> Blackhole {
        let bin = Path::new(env!("CARGO_BIN_EXE_weir")).with_file_name("weir-blackhole");
        assert!(
            bin.exists(),
            "{} is missing: build it first with `cargo build -p weir-loadgen --bins` (tests/run.sh does)",
            bin.display()
        );
        let port = if port == 0 { free_port() } else { port };
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--record",
            record.to_str().unwrap(),
        ]);
        if let Some(a) = answer {
            cmd.args(["--answer", a]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning weir-blackhole");
        let b = Blackhole {
            child,
            port,
            record: record.to_path_buf(),
        };
        let start = Instant::now();
        while get(&format!("http://127.0.0.1:{port}/stats"))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "weir-blackhole did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b
    }

    /// SIGKILL: no goodbye, connections reset.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The messages it has acknowledged so far (one per event, duplicates included).
    pub fn received(&self) -> Vec<String> {
        received(&self.record)
    }
}

/// The messages a blackhole recorded in `record`.
pub fn received(record: &Path) -> Vec<String> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A config with these `backends:` entries, `regions:` entries (may be empty)
/// and `tenants:` entries, a local archive and an admin listener.
pub fn routed_config(backends: &str, regions: &str, tenants: &str) -> String {
    let regions = if regions.is_empty() {
        String::new()
    } else {
        format!("regions:\n{regions}")
    };
    format!(
        "data_dir: {{DIR}}/data
listeners:
  - {{name: intake, address: \"127.0.0.1:{{INTAKE}}\", protocol: http}}
admin:
  address: 127.0.0.1:{{ADMIN}}
archive:
  store: {{type: local, root: \"{{DIR}}/archive\"}}
backends:
{backends}{regions}tenants:
{tenants}"
    )
}

/// A call to the admin listener, with a bearer token when given.
pub async fn admin(
    weir: &Weir,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let url = format!("http://127.0.0.1:{}{path}", weir.admin);
    request(
        method.parse().unwrap(),
        &url,
        &headers,
        serde_json::to_vec(&body).unwrap().into(),
    )
    .await
    .unwrap()
}

/// `GET /backends` of a running proxy, by backend name.
pub async fn backends_report(weir: &Weir) -> std::collections::HashMap<String, Value> {
    let r = get(&format!("http://127.0.0.1:{}/backends", weir.admin))
        .await
        .unwrap()
        .json();
    r["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["backend"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

/// One backend's state (`up`, `ejected`, `down`) from `GET /backends`.
pub async fn backend_state(weir: &Weir, backend: &str) -> String {
    backends_report(weir).await[backend]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs the `weir` binary with `args` (RUST_LOG removed): exit code, stdout, stderr.
pub fn weir_cli(args: &[&str]) -> (i32, String, String) {
    weir_cli_env(args, &[])
}

/// [`weir_cli`] with these environment variables set too.
pub fn weir_cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ABI v1 test plugin (tests/fixtures/abi_v1_plugin.wat, the unit tests' module too):
/// it answers by index, i % 3 == 0 keep with message "redacted", 1 drop, 2 archive_only.
pub fn plugin_wat(version: i32, extra_imports: &str, init_body: &str, hook: &str) -> String {
    include_str!("../fixtures/abi_v1_plugin.wat")
        .replace("@version@", &version.to_string())
        .replace("@extra_imports@", extra_imports)
        .replace("@init_body@", init_body)
        .replace("@hook@", hook)
}
