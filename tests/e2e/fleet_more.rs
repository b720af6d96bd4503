//! Fleet mode (issue 18) end to end, beyond one Redis node: two `weir` sharing
//! daily quotas through a real three-node Redis Cluster (each tenant's keys in
//! its own hash slot, on different nodes; a rule change announced across the
//! nodes), and three `weir` behind HAProxy sharing one tenant's rate limit
//! (each instance enforces the limit divided by the live instances).
use crate::fleet_peers::*;
use crate::harness::*;
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-more-token";
/// The stated propagation time of an admin edit over pub/sub.
const PROPAGATION: Duration = Duration::from_secs(2);

/// A Redis Cluster of three masters (no replicas) on free ports, made with
/// `redis-cli --cluster create`; nothing saved to disk, every node SIGKILLed
/// on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    cli: PathBuf,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `nodes` cluster-enabled `redis-server`s, joins them into one
    /// cluster (slots split evenly, in port order) and waits until every node
    /// says `cluster_state:ok`.
    pub async fn start(redis_server: &Path, nodes: usize) -> RedisCluster {
        // redis-cli comes with redis-server (target/peers/redis/usr/bin), else the PATH.
        let beside = redis_server.with_file_name("redis-cli");
        let cli = if beside.exists() {
            beside
        } else {
            PathBuf::from("redis-cli")
        };
        let mut c = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            cli,
            dir: tempfile::tempdir().unwrap(),
        };
        for _ in 0..nodes {
            let port = free_port();
            // The cluster bus: port + 10000 by default, which may be past 65535 or taken.
            let bus = free_port();
            let log =
                std::fs::File::create(c.dir.path().join(format!("redis-{port}.log"))).unwrap();
            let child = Command::new(redis_server)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(c.dir.path())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawning redis-server");
            c.ports.push(port);
            c.children.push(child);
        }
        let start = Instant::now();
        for i in 0..nodes {
            let port = c.ports[i];
            let log = c.dir.path().join(format!("redis-{port}.log"));
            await_pong(port, &mut c.children[i], &log).await;
        }
        let addrs: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new(&c.cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", c.cli.display()));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        loop {
            let infos: Vec<String> = c
                .ports
                .iter()
                .map(|p| c.cli(&["-p", &p.to_string(), "cluster", "info"]))
                .collect();
            if infos.iter().all(|i| i.contains("cluster_state:ok")) {
                return c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the cluster is not ok on every node: {infos:?}\n{}",
                c.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// redis-cli's standard output for `args`.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(&self.cli)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redis://127.0.0.1:<port>` of every node (the seeds in `cluster_nodes`).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The hash slot of `key` (`redis-cli -c cluster keyslot`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let out = self.cli(&[
            "-c",
            "-p",
            &self.ports[0].to_string(),
            "cluster",
            "keyslot",
            key,
        ]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("cluster keyslot {key}: {out:?}"))
    }

    /// The index of the node that holds `key`: the one answering EXISTS with 1;
    /// every other node must redirect (MOVED).
    pub async fn holder(&self, key: &str) -> usize {
        let mut holder = None;
        for (i, port) in self.ports.iter().enumerate() {
            match redis_cmd(*port, &["EXISTS", key]).await.unwrap() {
                Resp::Int(1) => {
                    assert!(holder.is_none(), "{key} on two nodes");
                    holder = Some(i);
                }
                Resp::Error(e) if e.starts_with("MOVED ") => {}
                other => panic!("EXISTS {key} on node {i} ({port}): {other:?}"),
            }
        }
        holder.unwrap_or_else(|| panic!("{key} is on no node"))
    }

    /// Subscribers of `channel`, every node's added up (PUBSUB NUMSUB is per node).
    pub async fn subscribers(&self, channel: &str) -> i64 {
        let mut n = 0;
        for port in &self.ports {
            match redis_cmd(*port, &["PUBSUB", "NUMSUB", channel])
                .await
                .unwrap()
            {
                Resp::Array(Some(items)) => match &items[1] {
                    Resp::Int(k) => n += k,
                    other => panic!("PUBSUB NUMSUB: {other:?}"),
                },
                other => panic!("PUBSUB NUMSUB: {other:?}"),
            }
        }
        n
    }

    pub fn log(&self) -> String {
        self.ports
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("redis-{p}.log")))
                    .unwrap_or_default();
                format!("--- node {p}\n{log}")
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until every instance's `/readyz` is 200 with the fleet's store up,
/// mode shared and `instances` live; how long that took.
async fn wait_fleet(weirs: &[Weir], instances: u64, limit: Duration) -> Duration {
    let what = format!("fleet store up, mode shared, {instances} instances");
    wait_readyz(weirs, &what, limit, |f| {
        f["store"] == "up" && f["mode"] == "shared" && f["instances"].as_u64() == Some(instances)
    })
    .await
}

/// The instances' own usage of `tenant` added up, and whether every instance's
/// fleet view (as last synced) shows that sum with `n` instances.
async fn own_and_converged(weirs: &[Weir], tenant: &str, n: u64) -> (u64, bool) {
    let mut views = Vec::new();
    for w in weirs {
        views.push(quota_views(w, TOKEN).await[tenant].clone());
    }
    let own: u64 = views
        .iter()
        .map(|v| v["usage"][""]["events"].as_u64().unwrap_or(0))
        .sum();
    let converged = views.iter().all(|v| {
        v["fleet"]["usage"][""]["events"].as_u64() == Some(own)
            && v["fleet"]["instances"].as_u64() == Some(n)
    });
    (own, converged)
}

/// Posts events `<prefix>-0..n` (service `svc`) to `url` with API key `key`.
async fn send(url: &str, key: &str, prefix: &str, n: usize, svc: &str) -> Reply {
    let body = json_logs(
        n,
        |i| json!({"message": format!("fleet-more {prefix}-{i}"), "id": format!("{prefix}-{i}"), "service": svc}),
    );
    post(url, &[("DD-API-KEY", key)], body).await
}

/// Ids the Datadog double got starting with `prefix` (unique), and how many arrived twice.
fn indexed(dd: &FakeDatadog, prefix: &str) -> (HashSet<String>, usize) {
    let mut set = HashSet::new();
    let mut dup = 0;
    for e in dd.take() {
        if let Some(id) = e["id"].as_str() {
            if id.starts_with(prefix) && !set.insert(id.to_string()) {
                dup += 1;
            }
        }
    }
    (set, dup)
}

/// Rule names of `tenant` per `GET /admin/rules` on `w`.
async fn rule_names(w: &Weir, tenant: &str) -> Vec<String> {
    let r = admin(w, "GET", "/admin/rules", Some(TOKEN), json!(null)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["tenants"][tenant]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| r["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Two tenants with daily quotas, chosen so that their keys
/// (`weir:{<tenant>}:...`) fall in different thirds of the slots, i.e. on
/// different nodes of a three-node cluster (hooli 4703, umbrella 5538; the
/// fleet's own keys `weir:{fleet}:...` 14574): (name, API key, Q).
const CLUSTER_TENANTS: [(&str, &str, u64); 2] = [
    ("hooli", "hooli-key", 1000),
    ("umbrella", "umbrella-key", 2000),
];
/// `max_unsynced_events` in the cluster test.
const CLUSTER_A: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_rule_changes_are_shared_through_a_redis_cluster() {
    let Some(peers) = peers("quotas_and_rule_changes_are_shared_through_a_redis_cluster") else {
        return;
    };
    let t0 = Instant::now();
    let cluster = RedisCluster::start(&peers.redis, 3).await;
    let cluster_took = t0.elapsed();
    let (dd, addr) = FakeDatadog::start().await;
    let mut cfg = with_admin_token(&config(&addr.to_string(), "", ""), TOKEN);
    for (name, key, q) in CLUSTER_TENANTS {
        cfg += &format!(
            "  - name: {name}\n    api_keys: [{key}]\n    backend: dd\n    upstream_api_key: up-{name}\n    daily_quota: {{max_events: {q}, reset_hour_utc: {}}}\n",
            reset_hour()
        );
    }
    // expected_instances 1: `instances: 2` in /readyz comes from a sync, not the default.
    // config_poll 30s: a change seen within 2 s came over pub/sub.
    cfg += &format!(
        "fleet:\n  redis:\n    cluster_nodes: [{}]\n  sync_interval: 200ms\n  max_unsynced_events: {CLUSTER_A}\n  expected_instances: 1\n  config_poll: 30s\n",
        cluster.urls().join(", ")
    );
    let weirs = vec![Weir::start(&cfg).await, Weir::start(&cfg).await];
    let ready_took = wait_fleet(&weirs, 2, Duration::from_secs(15)).await;

    // Each tenant: 1.5 Q sent straight to each instance, batches of 20, all at once.
    let flood_start = Instant::now();
    let mut tasks = Vec::new();
    for (name, key, q) in CLUSTER_TENANTS {
        for (i, w) in weirs.iter().enumerate() {
            let url = w.url("/api/v2/logs");
            let requests = (q * 3 / 2 / 20) as usize;
            tasks.push(tokio::spawn(async move {
                for r in 0..requests {
                    let resp = send(&url, key, &format!("{name}-w{i}-{r}"), 20, "web").await;
                    assert_eq!(resp.status, 202, "{name} on w{i}: {}", resp.text());
                }
                requests * 20
            }));
        }
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let flood_took = flood_start.elapsed();

    // With demand to spare the fleet uses each quota up: should a flood that
    // fast leave some of it unused (an instance ahead of its last sync takes
    // the quota action), a little more to each instance until it is.
    let mut topped_up = BTreeMap::new();
    let mut totals = BTreeMap::new();
    let start = Instant::now();
    for (name, key, q) in CLUSTER_TENANTS {
        let mut extra = 0;
        loop {
            let (own, converged) = own_and_converged(&weirs, name, 2).await;
            if converged && own >= q {
                totals.insert(name, own);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name}: own usage {own} (converged: {converged}) not at Q = {q} after 20 s"
            );
            if converged {
                for (i, w) in weirs.iter().enumerate() {
                    let r = send(
                        &w.url("/api/v2/logs"),
                        key,
                        &format!("{name}-top{extra}-w{i}"),
                        10,
                        "web",
                    )
                    .await;
                    assert_eq!(r.status, 202, "{}", r.text());
                }
                extra += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        topped_up.insert(name, extra * 20);
    }

    // The keys: each tenant's usage hash on the node of its slot, one field per instance.
    let mut holders = BTreeMap::new();
    let views = quota_views(&weirs[0], TOKEN).await;
    for (name, _, _) in CLUSTER_TENANTS {
        let window = views[name]["window_start_ms"].as_i64().unwrap();
        let key = format!("weir:{{{name}}}:q:{window}");
        let slot = cluster.keyslot(&key);
        let node = cluster.holder(&key).await;
        let hash = redis_cmd(cluster.ports[node], &["HGETALL", &key])
            .await
            .unwrap()
            .map();
        assert_eq!(hash.len(), 2, "{key}: a field per instance: {hash:?}");
        let in_redis: u64 = hash
            .values()
            .map(|v| v.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(in_redis, totals[name], "{key} holds the instances' usage");
        holders.insert(name, (slot, node));
    }
    let members = "weir:{fleet}:members";
    let members_node = cluster.holder(members).await;
    assert_eq!(
        redis_cmd(cluster.ports[members_node], &["ZCARD", members]).await,
        Ok(Resp::Int(2))
    );
    assert_ne!(
        holders["hooli"].1, holders["umbrella"].1,
        "the tenants' keys are on different nodes: {holders:?}"
    );

    // A rule added through w1 shows on w2 (pub/sub across the cluster's nodes).
    let channel = "weir:{fleet}:runtime";
    let subscribed = cluster.subscribers(channel).await;
    assert_eq!(subscribed, 2, "both instances subscribed to {channel}");
    assert!(rule_names(&weirs[1], "acme").await.is_empty());
    let r = admin(
        &weirs[0],
        "POST",
        "/admin/rules/acme",
        Some(TOKEN),
        json!({"name": "no-web", "query": "service:web", "sample_rate": 1.0}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let posted = Instant::now();
    while !rule_names(&weirs[1], "acme")
        .await
        .contains(&"no-web".to_string())
    {
        assert!(
            posted.elapsed() < Duration::from_secs(10),
            "the rule added on w1 is not on w2 after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let propagation = posted.elapsed();
    // It applies on w2: web events archived only, the others indexed.
    let url2 = weirs[1].url("/api/v2/logs");
    assert_eq!(
        send(&url2, "agent-key", "rule-web", 10, "web").await.status,
        202
    );
    assert_eq!(
        send(&url2, "agent-key", "rule-db", 10, "db").await.status,
        202
    );
    let mut weirs = weirs;
    for w in &mut weirs {
        assert!(w.terminate().success(), "{}", w.log());
    }

    let mut indexed_per = BTreeMap::new();
    for (name, _, q) in CLUSTER_TENANTS {
        let (ids, dup) = indexed(&dd, &format!("{name}-"));
        let n = ids.len() as u64;
        indexed_per.insert(name, n);
        assert_eq!(dup, 0, "{name}: indexed twice");
        assert_eq!(
            n, totals[name],
            "{name}: own usage adds up to what was indexed"
        );
        assert!(
            (q..=q + CLUSTER_A).contains(&n),
            "{name}: fleet indexed {n}, outside [Q, Q + (N-1)A] = [{q}, {}]",
            q + CLUSTER_A
        );
    }
    assert!(indexed(&dd, "rule-web").0.is_empty(), "excluded on w2");
    assert_eq!(indexed(&dd, "rule-db").0.len(), 10);
    println!(
        "redis cluster: made in {cluster_took:?}; fleet ready in {ready_took:?}; {sent} events \
         flooded in {flood_took:?}, topped up {topped_up:?}; indexed {indexed_per:?} \
         (Q + (N-1)A: hooli {}, umbrella {}); slot and node {holders:?}, members on node \
         {members_node}; rule reached w2 in {propagation:?}",
        1000 + CLUSTER_A,
        2000 + CLUSTER_A
    );
    assert!(
        propagation <= PROPAGATION,
        "the rule took {propagation:?} to reach w2 (stated: {PROPAGATION:?})"
    );
}

/// The shared rate limit: events/s and burst for the whole fleet.
const RATE: u64 = 3000;
const BURST: u64 = 3000;
/// Instances behind HAProxy.
const RATE_N: u64 = 3;
/// Events per request.
const BATCH: u64 = 100;
/// How long the flood lasts.
const WINDOW: Duration = Duration::from_secs(4);
/// Concurrent clients.
const CLIENTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_shared_by_three_instances_behind_haproxy() {
    let Some(peers) = peers("a_rate_limit_is_shared_by_three_instances_behind_haproxy") else {
        return;
    };
    let redis = RedisServer::start(&peers.redis).await;
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = config(&addr.to_string(), "", "")
        + &format!("    rate_limit: {{events_per_second: {RATE}, events_burst: {BURST}}}\n")
        + &format!(
            "fleet:\n  redis:\n    url: {}\n  sync_interval: 200ms\n  expected_instances: 1\n",
            redis.url()
        );
    let mut weirs = Vec::new();
    for _ in 0..RATE_N {
        weirs.push(Weir::start(&cfg).await);
    }
    let ready_took = wait_fleet(&weirs, RATE_N, Duration::from_secs(15)).await;
    let ports: Vec<(u16, u16)> = weirs.iter().map(|w| (w.intake, w.admin)).collect();
    let haproxy = Haproxy::start(&peers.haproxy, free_port(), &ports).await;
    let url = haproxy.url("/api/v2/logs");

    // CLIENTS clients post batches of BATCH as fast as they can for WINDOW,
    // counting the events accepted (202) and refused (429).
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let body = bytes::Bytes::from(json_logs(
                BATCH as usize,
                |i| json!({"message": format!("rate client {c} event {i}"), "service": "web"}),
            ));
            let (mut accepted, mut refused) = (0u64, 0u64);
            while start.elapsed() < WINDOW {
                let r = post(&url, &[("DD-API-KEY", "agent-key")], body.clone()).await;
                match r.status {
                    202 => accepted += BATCH,
                    429 => {
                        assert!(
                            r.headers.contains_key("retry-after"),
                            "429 without Retry-After"
                        );
                        refused += BATCH
                    }
                    other => panic!("client {c}: {other} {}", r.text()),
                }
            }
            (accepted, refused)
        }));
    }
    let (mut accepted, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        accepted += a;
        refused += r;
    }
    // From the first request sent to the last answer.
    let elapsed = start.elapsed();
    let offered = accepted + refused;
    let secs = elapsed.as_secs_f64();
    let w = WINDOW.as_secs_f64();

    let mut limited = Vec::new();
    let mut received = Vec::new();
    for w in &weirs {
        let m = w.metrics().await;
        limited.push(metric(
            &m,
            "weir_rate_limited_requests_total{tenant=\"acme\"}",
        ));
        received.push(metric(
            &m,
            "weir_received_events_total{intake=\"datadog\",tenant=\"acme\"}",
        ));
    }
    let mut after = Vec::new();
    for w in &weirs {
        after.push(readyz(w).await.1["fleet"]["instances"].clone());
    }
    // Each instance enforces ceil(R/3)/s with a burst of ceil(B/3): the fleet
    // admits at most R·t + B over t, plus a request each for rounding.
    let bound = RATE as f64 * secs + BURST as f64 + (RATE_N * BATCH) as f64;
    let one_share = RATE as f64 * w / RATE_N as f64;
    println!(
        "shared rate limit R = {RATE}/s, B = {BURST}, {RATE_N} instances (ready in {ready_took:?}): \
         {offered} events offered in {elapsed:?} ({:.0}/s), {accepted} accepted ({:.0}/s), \
         {refused} refused; bound R·t + B + N·batch = {bound:.0}, one instance's share R·W/N = \
         {one_share:.0}; received per instance {received:?}, 429s per instance {limited:?}, \
         instances after the flood {after:?}",
        offered as f64 / secs,
        accepted as f64 / secs,
    );
    assert!(
        elapsed < WINDOW + Duration::from_secs(2),
        "the flood overran its window: {elapsed:?}"
    );
    assert!(
        offered as f64 >= 3.0 * RATE as f64 * w,
        "the clients offered {offered} events in {elapsed:?}: not 3x the rate (lower RATE)"
    );
    assert!(
        accepted as f64 <= bound,
        "the fleet accepted {accepted} events in {elapsed:?}: over R·t + B + N·batch = {bound:.0}"
    );
    assert!(
        accepted as f64 > 1.5 * one_share,
        "the fleet accepted {accepted} events: not well above one instance's share {one_share:.0}"
    );
    for (i, l) in limited.iter().enumerate() {
        assert!(
            *l > 0.0,
            "w{}: no request rate limited ({limited:?})",
            i + 1
        );
    }
    assert!(
        after.iter().all(|n| n.as_u64() == Some(RATE_N)),
        "the instance count moved during the flood: {after:?}"
    );
    // What was accepted is forwarded, once.
    eventually(Duration::from_secs(30), "accepted events forwarded", || {
        (dd.count() as u64 >= accepted).then_some(())
    })
    .await;
    for w in &mut weirs {
        assert!(w.terminate().success(), "{}", w.log());
    }
    assert_eq!(dd.count() as u64, accepted, "forwarded what was accepted");
}
