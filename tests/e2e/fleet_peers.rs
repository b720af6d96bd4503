//! Fleet-mode test peers (issue 18): a real `redis-server` the weir share and a
//! real HAProxy in front of them, both Debian's, unpacked by tests/run.sh into
//! target/peers and found through `$WEIR_REDIS_SERVER` and `$WEIR_HAPROXY`
//! (else target/peers, else the PATH). Without them a test fails, unless
//! `WEIR_SKIP_FLEET=1` says to skip it knowingly (run.sh sets it, with a
//! warning, when it cannot unpack them). A tiny RESP client reads Redis.
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The peer binaries.
pub struct Peers {
    pub redis: PathBuf,
    pub haproxy: PathBuf,
}

/// The first of `$var`, target/peers/`unpacked`, `on_path` that runs with `version_arg`.
fn find(var: &str, unpacked: &str, on_path: &str, version_arg: &str) -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = [
        std::env::var_os(var).map(PathBuf::from),
        Some(workspace.join("target/peers").join(unpacked)),
        Some(PathBuf::from(on_path)),
    ];
    candidates.into_iter().flatten().find(|bin| {
        Command::new(bin)
            .arg(version_arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The peers, or None (the test returns early) when `WEIR_SKIP_FLEET=1`; a
/// missing peer fails the test otherwise.
pub fn peers(test: &str) -> Option<Peers> {
    if std::env::var("WEIR_SKIP_FLEET").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: WEIR_SKIP_FLEET=1 (tests/run.sh could not unpack haproxy and redis-server)");
        return None;
    }
    let redis = find(
        "WEIR_REDIS_SERVER",
        "redis/usr/bin/redis-server",
        "redis-server",
        "--version",
    );
    let haproxy = find("WEIR_HAPROXY", "haproxy/usr/sbin/haproxy", "haproxy", "-v");
    match (redis, haproxy) {
        (Some(redis), Some(haproxy)) => Some(Peers { redis, haproxy }),
        (redis, haproxy) => panic!(
            "fleet test peers missing (redis-server: {redis:?}, haproxy: {haproxy:?}): run tests/run.sh, \
             which unpacks Debian's redis-server and haproxy into target/peers, or point WEIR_REDIS_SERVER \
             and WEIR_HAPROXY at them; set WEIR_SKIP_FLEET=1 to skip the fleet tests knowingly"
        ),
    }
}

/// A `redis-server` in the foreground on a free port, nothing saved to disk
/// (a restart comes back empty), SIGKILLed on drop.
pub struct RedisServer {
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub async fn start(bin: &Path) -> RedisServer {
        let mut r = RedisServer {
            bin: bin.to_path_buf(),
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning redis-server");
        self.child = Some(child);
        let log = self.dir.path().join("redis.log");
        await_pong(self.port, self.child.as_mut().unwrap(), &log).await;
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: connections reset, every key gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty), after [`RedisServer::kill9`].
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// An array of bulk strings (KEYS, HGETALL's flat list), as strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(Some(items)) => items
                .iter()
                .map(|i| match i {
                    Resp::Bulk(Some(s)) | Resp::Simple(s) => s.clone(),
                    Resp::Int(n) => n.to_string(),
                    other => panic!("not a string: {other:?}"),
                })
                .collect(),
            Resp::Array(None) => Vec::new(),
            other => panic!("not an array: {other:?}"),
        }
    }

    /// HGETALL's reply as a map.
    pub fn map(&self) -> BTreeMap<String, String> {
        let flat = self.strings();
        flat.chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect()
    }
}

/// Parses one reply from the front of `buf`: None while incomplete.
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).expect("RESP line is UTF-8");
    let next = end + 2;
    match buf[0] {
        b'+' => Some((Resp::Simple(line.to_string()), next)),
        b'-' => Some((Resp::Error(line.to_string()), next)),
        b':' => Some((Resp::Int(line.parse().unwrap()), next)),
        b'$' => {
            let n: i64 = line.parse().unwrap();
            if n < 0 {
                return Some((Resp::Bulk(None), next));
            }
            let n = n as usize;
            if buf.len() < next + n + 2 {
                return None;
            }
            let s = String::from_utf8_lossy(&buf[next..next + n]).into_owned();
            Some((Resp::Bulk(Some(s)), next + n + 2))
        }
        b'*' => {
            let n: i64 = line.parse().unwrap();
            if n < 0 {
                return Some((Resp::Array(None), next));
            }
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..n {
                let (item, used) = parse_resp(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("not RESP: {:?}", other as char),
    }
}

/// One command to the Redis on `port`, on a connection of its own; Err when
/// nothing answers (killed) within 5 s.
pub async fn redis_cmd(port: u16, args: &[&str]) -> Result<Resp, String> {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend(format!("${}\r\n", a.len()).as_bytes());
        req.extend(a.as_bytes());
        req.extend(b"\r\n");
    }
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&req).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        loop {
            if let Some((reply, _)) = (!buf.is_empty()).then(|| parse_resp(&buf)).flatten() {
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) => return Err("connection closed".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// HAProxy in HTTP mode, round robin over weir instances, each checked by
/// `GET /readyz` on its admin port; a stats page (CSV) shows what it thinks.
pub struct Haproxy {
    child: Child,
    pub port: u16,
    stats: u16,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts on `frontend_port` over `backends` (intake port, admin port),
    /// named w1, w2, ...; waits until the frontend accepts and every backend is UP.
    pub async fn start(bin: &Path, frontend_port: u16, backends: &[(u16, u16)]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let stats = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, (intake, admin))| {
                format!(
                    "    server w{} 127.0.0.1:{intake} check port {admin}\n",
                    i + 1
                )
            })
            .collect();
        let cfg = format!(
            "global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
frontend intake
    bind 127.0.0.1:{frontend_port}
    default_backend weir
backend weir
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # A check's answer may take 2s (without it, the check timeout is inter, 300ms:
    # on a loaded 2-core machine a slow /readyz took an instance out of the
    # rotation, and the flood tests saw it index less than its quota share).
    # A killed instance still fails at once: its port refuses.
    timeout check 2s
    default-server inter 300ms fall 2 rise 1
{servers}"
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(bin)
            .args(["-db", "-f", cfg_path.to_str().unwrap()])
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning haproxy");
        let mut h = Haproxy {
            child,
            port: frontend_port,
            stats,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited early ({status}): {}", h.log());
            }
            let accepts = tokio::net::TcpStream::connect(("127.0.0.1", frontend_port))
                .await
                .is_ok();
            let states = h.server_states().await;
            if accepts && states.len() == backends.len() && states.values().all(|s| s == "UP") {
                return h;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "haproxy not up with every backend UP: {states:?}\n{}",
                h.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Each server's status (`UP`, `DOWN`, ...) once its first check is done;
    /// a server not checked yet is left out. Empty while the stats page does not answer.
    pub async fn server_states(&self) -> BTreeMap<String, String> {
        let Ok(r) = get(&format!("http://127.0.0.1:{}/stats;csv", self.stats)).await else {
            return BTreeMap::new();
        };
        let text = r.text();
        let mut lines = text.lines();
        let Some(header) = lines.next() else {
            return BTreeMap::new();
        };
        let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| cols.iter().position(|c| *c == name).unwrap();
        let (px, sv, status, check) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("check_status"),
        );
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > check && f[px] == "weir" && f[sv].starts_with('w'))
            // A server HAProxy has not checked yet shows UP by default.
            .filter(|f| !f[check].is_empty() && !f[check].starts_with('*'))
            .map(|f| (f[sv].to_string(), f[status].to_string()))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// HAProxy's lines on servers going DOWN or UP (none: every check passed).
    pub fn server_changes(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("Server weir/")).collect();
        if lines.is_empty() {
            "(none)".to_string()
        } else {
            lines.join("\n")
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// The peers themselves, with weir as it is without a `fleet:` section.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_peer_answers_dies_and_comes_back_empty() {
    let Some(peers) = peers("redis_peer_answers_dies_and_comes_back_empty") else {
        return;
    };
    let mut redis = RedisServer::start(&peers.redis).await;
    assert_ne!(redis.port, 6379);
    let port = redis.port;
    assert_eq!(
        redis_cmd(port, &["HSET", "weir:{acme}:q:1", "a", "1 2", "b", "3 4"]).await,
        Ok(Resp::Int(2))
    );
    let all = redis_cmd(port, &["HGETALL", "weir:{acme}:q:1"])
        .await
        .unwrap()
        .map();
    assert_eq!(all["a"], "1 2");
    assert_eq!(all["b"], "3 4");
    assert!(matches!(
        redis_cmd(port, &["NOSUCHCOMMAND"]).await,
        Ok(Resp::Error(_))
    ));
    redis.kill9();
    assert!(redis_cmd(port, &["PING"]).await.is_err());
    redis.restart().await;
    assert_eq!(redis.port, port);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert_eq!(
        redis_cmd(port, &["EXISTS", "weir:{acme}:q:1"]).await,
        Ok(Resp::Int(0)),
        "a restart comes back empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_peer_spreads_requests_over_three_weir_and_drops_a_dead_one() {
    let Some(peers) = peers("haproxy_peer_spreads_requests_over_three_weir_and_drops_a_dead_one")
    else {
        return;
    };
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = config(&addr.to_string(), "", "");
    let mut weirs = vec![
        Weir::start(&cfg).await,
        Weir::start(&cfg).await,
        Weir::start(&cfg).await,
    ];
    let ports: Vec<(u16, u16)> = weirs.iter().map(|w| (w.intake, w.admin)).collect();
    let haproxy = Haproxy::start(&peers.haproxy, free_port(), &ports).await;
    let url = haproxy.url("/api/v2/logs");
    for r in 0..30 {
        let body = json_logs(10, |i| json!({"message": format!("rr{r}-{i}")}));
        let resp = post(&url, &[("DD-API-KEY", "agent-key")], body).await;
        assert_eq!(resp.status, 202, "{}", resp.text());
    }
    for w in &weirs {
        let m = w.metrics().await;
        let got = metric(
            &m,
            "weir_received_events_total{intake=\"datadog\",tenant=\"acme\"}",
        );
        assert_eq!(got, 100.0, "round robin: 10 requests of 10 to each");
    }
    eventually(Duration::from_secs(20), "300 events forwarded", || {
        (dd.count() == 300).then_some(())
    })
    .await;
    // w2 dies (all it took forwarded): its check fails (inter 300ms, fall 2) and it leaves the rotation.
    weirs.remove(1).into_dir();
    let start = Instant::now();
    loop {
        let states = haproxy.server_states().await;
        if states.get("w2").map(String::as_str) == Some("DOWN") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "w2 not DOWN: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in 0..10 {
        let body = json_logs(10, |i| json!({"message": format!("after{r}-{i}")}));
        let resp = post(&url, &[("DD-API-KEY", "agent-key")], body).await;
        assert_eq!(resp.status, 202, "{}", resp.text());
    }
    eventually(Duration::from_secs(20), "400 events forwarded", || {
        (dd.count() == 400).then_some(())
    })
    .await;
}

/// An instance's `/readyz`: status and body (its `fleet` shows the store and mode).
pub async fn readyz(w: &Weir) -> (u16, Value) {
    let r = get(&format!("http://127.0.0.1:{}/readyz", w.admin))
        .await
        .unwrap();
    (r.status, r.json())
}

/// Waits until every instance's `/readyz` is 200 with a `fleet` that `ok`
/// takes (`what` says what, for the failure); how long that took.
pub async fn wait_readyz(
    weirs: &[Weir],
    what: &str,
    limit: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        for w in weirs {
            seen.push(readyz(w).await);
        }
        if seen
            .iter()
            .all(|(status, b)| *status == 200 && ok(&b["fleet"]))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "not every instance ready with {what} after {limit:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Twelve hours from now: the quota's day cannot turn during a test.
pub fn reset_hour() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (secs / 3600 + 12) % 24
}

/// Waits (10 s at most) until the redis-server `child` on `port` answers PING;
/// fails with its log if it exits or stays silent.
pub async fn await_pong(port: u16, child: &mut Child, log: &Path) {
    let start = Instant::now();
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    while redis_cmd(port, &["PING"]).await != Ok(Resp::Simple("PONG".into())) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("redis-server {port} exited early ({status}): {}", log());
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server {port} does not answer PING: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /admin/quotas` of `w` (admin token `token`), by tenant.
pub async fn quota_views(w: &Weir, token: &str) -> BTreeMap<String, Value> {
    let r = admin(w, "GET", "/admin/quotas", Some(token), json!(null)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["tenant"].as_str().unwrap().to_string(), q.clone()))
        .collect()
}
