//! Fleet mode (issue 18) end to end: three real `weir` processes sharing one
//! real redis-server (tests/e2e/fleet_peers.rs), behind a real HAProxy (round
//! robin, `/readyz` checks), all forwarding to one Datadog double. A tenant's
//! daily quota Q is shared: the fleet indexes Q <= indexed <= Q + (N-1)·A
//! (A = `max_unsynced_events`); Redis dies mid-flood and comes back empty;
//! rule and quota edits made on one instance reach the others.
use crate::fleet_peers::*;
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");
const TOKEN: &str = "fleet-admin-token";
/// Instances.
const N: u64 = 3;
/// The shared daily quota (events).
const Q: u64 = 20_000;
/// `max_unsynced_events`.
const A: u64 = 500;
/// The stated propagation time of an admin edit over pub/sub.
const PROPAGATION: Duration = Duration::from_secs(2);

/// acme's daily quota of `max` events (over it: archive only).
fn quota(max: u64) -> String {
    format!(
        "    daily_quota: {{max_events: {max}, reset_hour_utc: {}}}\n",
        reset_hour()
    )
}

/// A fleet instance's config: harness::config (tenant acme, local archive,
/// admin API with TOKEN), `tenant` lines appended to acme's entry (then maybe
/// more tenants), and a `fleet:` section on `redis` with `fleet` lines added.
fn fleet_config(dd: &str, redis: &RedisServer, tenant: &str, fleet: &str) -> String {
    with_admin_token(&config(dd, "", ""), TOKEN)
        + tenant
        + &format!(
            "fleet:\n  redis:\n    url: {}\n  sync_interval: 200ms\n  max_unsynced_events: {A}\n  expected_instances: {N}\n  op_timeout: 500ms\n{fleet}",
            redis.url()
        )
}

struct Fleet {
    weirs: Vec<Weir>,
    redis: RedisServer,
    dd: FakeDatadog,
    config: String,
}

impl Fleet {
    async fn start(peers: &Peers, tenant: &str, fleet: &str) -> Fleet {
        let redis = RedisServer::start(&peers.redis).await;
        let (dd, addr) = FakeDatadog::start().await;
        let config = fleet_config(&addr.to_string(), &redis, tenant, fleet);
        let mut weirs = Vec::new();
        for _ in 0..N {
            weirs.push(Weir::start(&config).await);
        }
        Fleet {
            weirs,
            redis,
            dd,
            config,
        }
    }

    /// (intake, admin) of each instance, for HAProxy.
    fn ports(&self) -> Vec<(u16, u16)> {
        self.weirs.iter().map(|w| (w.intake, w.admin)).collect()
    }

    /// SIGTERM to each (batches flushed, archive objects closed).
    fn terminate(&mut self) {
        for w in &mut self.weirs {
            assert!(w.terminate().success(), "{}", w.log());
        }
    }

    /// The ids the Datadog double got starting with `prefix` (unique), and how many arrived twice.
    fn indexed(&self, prefix: &str) -> (HashSet<String>, usize) {
        ids(&self.dd.take(), prefix)
    }

    /// Ids in the instances' archives starting with `prefix`, and the count with repeats.
    fn archived(&self, prefix: &str) -> (HashSet<String>, usize) {
        let mut all = Vec::new();
        for w in &self.weirs {
            all.extend(read_archive(&w.archive_root()).0);
        }
        let (set, dup) = ids(&all, prefix);
        let count = set.len() + dup;
        (set, count)
    }
}

/// Ids of `events` starting with `prefix`, and how many were repeats.
fn ids(events: &[Value], prefix: &str) -> (HashSet<String>, usize) {
    let mut set = HashSet::new();
    let mut dup = 0;
    for id in events.iter().filter_map(|e| e["id"].as_str()) {
        if id.starts_with(prefix) && !set.insert(id.to_string()) {
            dup += 1;
        }
    }
    (set, dup)
}

fn body(ids: &[String]) -> Vec<u8> {
    json_logs(
        ids.len(),
        |i| json!({"message": format!("fleet event {}", ids[i]), "id": ids[i], "service": "web"}),
    )
}

/// Posts events `<prefix>-0..n` to `url` with `key`; the status.
async fn send(url: &str, key: (&str, &str), prefix: &str, n: usize) -> Reply {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    post(url, &[key], body(&ids)).await
}

/// What a flood sent: every id, and those sent once `after` was set.
struct Flooded {
    all: Vec<String>,
    after: HashSet<String>,
}

/// `clients` concurrent senders, each `requests` requests of `per` events
/// (ids `<prefix>-<client>-<request>-<i>`) to `url`; every request must be
/// accepted. `accepted` counts the events accepted so far.
async fn flood(
    url: String,
    prefix: &str,
    (clients, requests, per): (usize, usize, usize),
    accepted: Arc<AtomicUsize>,
    after: Arc<AtomicBool>,
) -> Flooded {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (url, prefix, accepted, after) = (
            url.clone(),
            prefix.to_string(),
            accepted.clone(),
            after.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for r in 0..requests {
                let late = after.load(Ordering::SeqCst);
                let ids: Vec<String> = (0..per).map(|i| format!("{prefix}-{c}-{r}-{i}")).collect();
                let resp = post(&url, &[KEY], body(&ids)).await;
                assert_eq!(
                    resp.status,
                    202,
                    "request {r} of client {c}: {}",
                    resp.text()
                );
                accepted.fetch_add(per, Ordering::SeqCst);
                sent.push((late, ids));
            }
            sent
        }));
    }
    let mut out = Flooded {
        all: Vec::new(),
        after: HashSet::new(),
    };
    for t in tasks {
        for (late, ids) in t.await.unwrap() {
            if late {
                out.after.extend(ids.iter().cloned());
            }
            out.all.extend(ids);
        }
    }
    out
}

/// Waits until every instance's `/readyz` is 200 with `"fleet": {"store": store, "mode": mode}`.
async fn wait_fleet_state(weirs: &[Weir], store: &str, mode: &str, limit: Duration) {
    let what = format!("fleet store {store}, mode {mode}");
    wait_readyz(weirs, &what, limit, |f| {
        f["store"] == store && f["mode"] == mode
    })
    .await;
}

/// acme's entry of `GET /admin/quotas`.
async fn quota_view(w: &Weir) -> Value {
    quota_views(w, TOKEN)
        .await
        .remove("acme")
        .expect("a quota for acme")
}

/// Waits until every instance's fleet usage (as last synced) is the sum of the
/// instances' own usage, with N instances; that sum.
async fn converged(weirs: &[Weir], limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let mut views = Vec::new();
        for w in weirs {
            views.push(quota_view(w).await);
        }
        let own: u64 = views
            .iter()
            .map(|v| v["usage"][""]["events"].as_u64().unwrap_or(0))
            .sum();
        if views.iter().all(|v| {
            v["fleet"]["usage"][""]["events"].as_u64() == Some(own)
                && v["fleet"]["instances"].as_u64() == Some(N)
        }) {
            return own;
        }
        assert!(
            start.elapsed() < limit,
            "fleet usage views not converged on the sum of own usage ({own}) after {limit:?}: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of the flood archived, once.
fn assert_all_archived(f: &Fleet, prefix: &str, sent: &[String]) {
    let (archived, count) = f.archived(prefix);
    let missing: Vec<&String> = sent.iter().filter(|id| !archived.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events not archived, e.g. {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(count, sent.len(), "archived more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_daily_quota_holds_across_three_instances_behind_haproxy() {
    let Some(peers) = peers("a_shared_daily_quota_holds_across_three_instances_behind_haproxy")
    else {
        return;
    };
    let mut f = Fleet::start(&peers, &quota(Q), "  on_unavailable: local\n").await;
    let haproxy = Haproxy::start(&peers.haproxy, free_port(), &f.ports()).await;
    // 36,000 events (1.8 Q) from six concurrent clients, spread by HAProxy.
    let sent = flood(
        haproxy.url("/api/v2/logs"),
        "a",
        (6, 30, 200),
        Arc::default(),
        Arc::default(),
    )
    .await;
    let mut received = Vec::new();
    for w in &f.weirs {
        received.push(metric(
            &w.metrics().await,
            "weir_received_events_total{intake=\"datadog\",tenant=\"acme\"}",
        ));
    }
    assert!(
        received.iter().all(|&r| r > 0.0),
        "each instance got traffic: {received:?}"
    );
    let own_total = converged(&f.weirs, Duration::from_secs(10)).await;
    f.terminate();

    let (indexed, dup) = f.indexed("a-");
    let indexed = indexed.len() as u64;
    println!(
        "shared quota: {} events sent, received per instance {received:?}, {indexed} indexed \
         (Q = {Q}, bound Q + (N-1)A = {}), {dup} indexed twice",
        sent.all.len(),
        Q + (N - 1) * A
    );
    assert!(
        (Q..=Q + (N - 1) * A).contains(&indexed),
        "fleet indexed {indexed}, outside [Q, Q + (N-1)A] = [{Q}, {}]",
        Q + (N - 1) * A
    );
    assert_eq!(
        own_total, indexed,
        "the instances' own usage adds up to what was indexed"
    );
    assert_all_archived(&f, "a-", &sent.all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_redis_killed_mid_flood_local_shares_then_views_converge_on_an_empty_redis() {
    let Some(peers) =
        peers("b_redis_killed_mid_flood_local_shares_then_views_converge_on_an_empty_redis")
    else {
        return;
    };
    let mut f = Fleet::start(&peers, &quota(Q), "  on_unavailable: local\n").await;
    let haproxy = Haproxy::start(&peers.haproxy, free_port(), &f.ports()).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let flooding = tokio::spawn(flood(
        haproxy.url("/api/v2/logs"),
        "b",
        (6, 60, 100),
        accepted.clone(),
        killed.clone(),
    ));
    // Redis dies at 30% of the quota: 14,000 events of the quota remained at the last sync.
    while accepted.load(Ordering::SeqCst) < 6_000 {
        assert!(!flooding.is_finished(), "the flood ended before the kill");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    f.redis.kill9();
    killed.store(true, Ordering::SeqCst);
    let at_kill = accepted.load(Ordering::SeqCst);
    // /readyz stays 200 (HAProxy keeps them all), the store is down, the policy local.
    wait_fleet_state(&f.weirs, "down", "local", Duration::from_secs(10)).await;
    for w in &f.weirs {
        let m = w.metrics().await;
        assert_eq!(metric(&m, "weir_fleet_store_up"), 0.0);
        assert_eq!(metric(&m, "weir_fleet_mode{mode=\"local\"}"), 1.0);
    }
    let mut sent = flooding.await.unwrap();
    assert!(
        sent.after.len() >= 20_000,
        "the flood went on after the kill: {}",
        sent.after.len()
    );
    wait_fleet_state(&f.weirs, "down", "local", Duration::from_secs(1)).await;
    // A second flood, now that every instance is local: about 6,000 events
    // each, past any share (at most (Q - 6,000)/N). The first alone may end
    // before an instance fills its share: until its sync in flight at the kill
    // times out (op_timeout), it is still shared, capped at its last sync +
    // max_unsynced_events, and what passes the cap is archived only.
    let late = flood(
        haproxy.url("/api/v2/logs"),
        "b-late",
        (6, 30, 100),
        accepted.clone(),
        killed.clone(),
    )
    .await;
    sent.all.extend(late.all);
    sent.after.extend(late.after);

    // Redis back, empty: each instance re-sends its absolute usage (reconnect
    // backoff <= 5s, then a sync), and every view agrees on the sum.
    f.redis.restart().await;
    wait_fleet_state(&f.weirs, "up", "shared", Duration::from_secs(10)).await;
    let own_total = converged(&f.weirs, Duration::from_secs(10)).await;
    for w in &f.weirs {
        let m = w.metrics().await;
        assert_eq!(metric(&m, "weir_fleet_store_up"), 1.0);
        assert_eq!(metric(&m, "weir_fleet_mode{mode=\"shared\"}"), 1.0);
        assert_eq!(metric(&m, "weir_fleet_instances"), N as f64);
    }
    let keys = redis_cmd(f.redis.port, &["DBSIZE"]).await.unwrap();
    assert!(
        matches!(keys, Resp::Int(n) if n > 0),
        "the instances wrote their usage into the empty Redis: {keys:?}"
    );
    f.terminate();

    let (indexed, dup) = f.indexed("b-");
    let during = indexed.iter().filter(|id| sent.after.contains(*id)).count();
    let indexed = indexed.len() as u64;
    println!(
        "Redis killed after {at_kill} of {} events accepted: {indexed} indexed ({during} of them sent \
         during the outage), Q = {Q}, {dup} indexed twice",
        sent.all.len()
    );
    assert_eq!(own_total, indexed, "own usage adds up to what was indexed");
    // Each instance i may index, during the outage, its share of what remained
    // at its last sync: own_i + (Q - F_i)/N, F_i the fleet total it saw then.
    // F_i lags the true total by at most the others' unsynced events (< A each,
    // traffic round robin), and i's own unsynced events count too: the fleet
    // stays within Q + N·A (the spec states (N-1)·A plus new instances' shares;
    // none here); and with every instance flooded past its share once local
    // (the second flood), it fills it, so at least Q - N·A.
    assert!(
        indexed <= Q + N * A,
        "outage overshoot: {indexed} indexed, Q + N·A = {}",
        Q + N * A
    );
    assert!(
        indexed + N * A >= Q,
        "the instances did not index their shares during the outage: {indexed} indexed, Q = {Q}; \
         HAProxy's server changes (an instance out of the rotation gets no share of the flood):\n{}",
        haproxy.server_changes()
    );
    assert!(during > 0, "nothing sent during the outage was indexed");
    assert_all_archived(&f, "b-", &sent.all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_fail_closed_archives_quota_events_and_refuses_rate_limited_ones_while_redis_is_down() {
    let Some(peers) = peers(
        "b_fail_closed_archives_quota_events_and_refuses_rate_limited_ones_while_redis_is_down",
    ) else {
        return;
    };
    let metered = "  - name: metered\n    api_keys: [metered-key]\n    backend: dd\n    upstream_api_key: up2\n    rate_limit: {events_per_second: 100000, events_burst: 100000}\n";
    let mut f = Fleet::start(
        &peers,
        &(quota(Q) + metered),
        "  on_unavailable: fail_closed\n",
    )
    .await;
    let metered_key = ("DD-API-KEY", "metered-key");
    for (i, w) in f.weirs.iter().enumerate() {
        let url = w.url("/api/v2/logs");
        assert_eq!(send(&url, KEY, &format!("up-w{i}"), 100).await.status, 202);
        assert_eq!(
            send(&url, metered_key, &format!("m-up-w{i}"), 10)
                .await
                .status,
            202
        );
    }
    f.redis.kill9();
    wait_fleet_state(&f.weirs, "down", "fail_closed", Duration::from_secs(10)).await;
    for (i, w) in f.weirs.iter().enumerate() {
        let url = w.url("/api/v2/logs");
        let r = send(&url, KEY, &format!("down-w{i}"), 100).await;
        assert_eq!(
            r.status,
            202,
            "quota events are taken (archive only): {}",
            r.text()
        );
        let r = send(&url, metered_key, &format!("m-down-w{i}"), 10).await;
        assert_eq!(r.status, 429, "rate-limited tenant refused: {}", r.text());
        assert!(r.headers.contains_key("retry-after"));
        w.metrics_once(
            "weir_over_quota_events_total{action=\"archive_only\",tenant=\"acme\"}",
            100.0,
        )
        .await;
    }
    f.terminate();

    let (up, _) = f.indexed("up-w");
    assert_eq!(up.len(), 300, "indexed while Redis was up");
    let (down, _) = f.indexed("down-w");
    assert!(
        down.is_empty(),
        "{} events indexed while Redis was down (fail_closed)",
        down.len()
    );
    assert_eq!(f.indexed("m-up-w").0.len(), 30);
    assert!(f.indexed("m-down-w").0.is_empty());
    let (archived_down, _) = f.archived("down-w");
    assert_eq!(archived_down.len(), 300, "archive-only events are archived");
    assert_eq!(f.archived("up-w").0.len(), 300);
}

/// Whether acme's rule `name` is enabled, per `GET /admin/rules`.
async fn rule_enabled(w: &Weir, name: &str) -> Option<bool> {
    let r = admin(w, "GET", "/admin/rules", Some(TOKEN), json!(null)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["tenants"]["acme"]
        .as_array()?
        .iter()
        .find(|rule| rule["name"] == name)?["enabled"]
        .as_bool()
}

/// What [`time_until`] waits for on an instance.
#[derive(Clone, Copy)]
enum Probe {
    /// acme's rule `no-web` enabled or not.
    NoWebEnabled(bool),
    /// acme's daily quota at this many events.
    MaxEvents(u64),
}

impl Probe {
    async fn holds(self, w: &Weir) -> bool {
        match self {
            Probe::NoWebEnabled(on) => rule_enabled(w, "no-web").await == Some(on),
            Probe::MaxEvents(n) => quota_view(w).await["max_events"] == n,
        }
    }
}

/// How long until `probe` holds on every one of `weirs` (polled every 20 ms); panics after 20 s.
async fn time_until(weirs: &[&Weir], probe: Probe) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for w in weirs {
            all &= probe.holds(w).await;
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a change did not reach every instance in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_rule_disabled_on_one_instance_takes_effect_on_the_others_within_2s() {
    let Some(peers) =
        peers("c_a_rule_disabled_on_one_instance_takes_effect_on_the_others_within_2s")
    else {
        return;
    };
    let rules =
        "    exclusion_rules:\n      - {name: no-web, query: \"service:web\", sample_rate: 1.0}\n";
    let mut f = Fleet::start(&peers, &(quota(1_000_000) + rules), "").await;
    let url = |w: &Weir| w.url("/api/v2/logs");
    for i in [1, 2] {
        let w = &f.weirs[i];
        assert_eq!(rule_enabled(w, "no-web").await, Some(true));
        assert_eq!(
            send(&url(w), KEY, &format!("before-w{}", i + 1), 50)
                .await
                .status,
            202
        );
    }

    // Disabled through w1: w2 and w3 have it within the stated time.
    let r = admin(
        &f.weirs[0],
        "PATCH",
        "/admin/rules/acme/no-web",
        Some(TOKEN),
        json!({"enabled": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let took = time_until(&[&f.weirs[1], &f.weirs[2]], Probe::NoWebEnabled(false)).await;
    println!("rule change reached w2 and w3 in {took:?}");
    let mut versions = Vec::new();
    for w in &f.weirs {
        versions.push(metric(&w.metrics().await, "weir_fleet_config_version"));
    }
    assert!(
        versions[0] >= 1.0 && versions.iter().all(|v| *v == versions[0]),
        "one version of the shared rules everywhere: {versions:?}"
    );
    assert!(
        took <= PROPAGATION,
        "a rule change took {took:?} to reach the other instances (stated: {PROPAGATION:?})"
    );
    // Events sent straight to w2 and w3 are indexed now.
    for i in [1, 2] {
        let w = &f.weirs[i];
        assert_eq!(
            send(&url(w), KEY, &format!("after-w{}", i + 1), 50)
                .await
                .status,
            202
        );
    }
    eventually(
        Duration::from_secs(20),
        "events after the change indexed",
        || (f.indexed("after-w").0.len() == 100).then_some(()),
    )
    .await;

    // A quota edit travels the same way.
    let r = admin(
        &f.weirs[0],
        "PATCH",
        "/admin/quotas/acme",
        Some(TOKEN),
        json!({"max_events": 900_000}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let took = time_until(&[&f.weirs[1], &f.weirs[2]], Probe::MaxEvents(900_000)).await;
    assert!(took <= PROPAGATION, "a quota change took {took:?}");

    // w2 restarted: the change is in its runtime.json, and applied at start.
    let mut w2 = f.weirs.remove(1);
    assert!(w2.terminate().success(), "{}", w2.log());
    let saved = std::fs::read_to_string(w2.dir.path().join("data/runtime.json")).unwrap();
    assert!(saved.contains("no-web"), "{saved}");
    let w2 = Weir::start_in(w2.into_dir(), &f.config).await;
    assert_eq!(rule_enabled(&w2, "no-web").await, Some(false));
    assert_eq!(quota_view(&w2).await["max_events"], 900_000);
    assert_eq!(send(&url(&w2), KEY, "restarted-w2", 50).await.status, 202);
    f.weirs.insert(1, w2);
    eventually(
        Duration::from_secs(20),
        "events after the restart indexed",
        || (f.indexed("restarted-w2").0.len() == 50).then_some(()),
    )
    .await;

    // Redis down: an edit is refused, nothing changes.
    f.redis.kill9();
    let r = admin(
        &f.weirs[0],
        "PATCH",
        "/admin/rules/acme/no-web",
        Some(TOKEN),
        json!({"enabled": true}),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("nothing changed"), "{}", r.text());
    for w in &f.weirs {
        assert_eq!(rule_enabled(w, "no-web").await, Some(false));
    }

    // Redis back, empty: the fleet keeps its rules, and an edit through w3
    // (refused until it has reconnected) reaches w1 and w2 (pub/sub, or the
    // poll at worst: config_poll 5s + op_timeout).
    f.redis.restart().await;
    wait_fleet_state(&f.weirs, "up", "shared", Duration::from_secs(10)).await;
    for w in &f.weirs {
        assert_eq!(rule_enabled(w, "no-web").await, Some(false));
    }
    let start = Instant::now();
    loop {
        let r = admin(
            &f.weirs[2],
            "PATCH",
            "/admin/rules/acme/no-web",
            Some(TOKEN),
            json!({"enabled": true}),
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "edits still refused 10s after Redis came back: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = time_until(&[&f.weirs[0], &f.weirs[1]], Probe::NoWebEnabled(true)).await;
    println!("after Redis came back, a rule change reached w1 and w2 in {took:?}");
    assert!(took <= Duration::from_millis(6_500), "{took:?}");
    assert_eq!(
        send(&url(&f.weirs[0]), KEY, "final-w1", 50).await.status,
        202
    );
    f.terminate();

    assert!(
        f.indexed("before-w").0.is_empty(),
        "excluded before the change"
    );
    assert_eq!(f.indexed("after-w").0.len(), 100);
    assert!(f.indexed("final-w1").0.is_empty(), "excluded again");
    for (prefix, n) in [
        ("before-w", 100),
        ("after-w", 100),
        ("restarted-w2", 50),
        ("final-w1", 50),
    ] {
        assert_eq!(f.archived(prefix).0.len(), n, "{prefix} archived");
    }
}

/// Rule edits fired at all three instances at once: every one is answered
/// (201, or 409 after three lost races), none hangs an instance (the lock
/// that serializes changes is waited on off the runtime's workers, which the
/// holder's Redis call needs), and the instances end with the same rules:
/// exactly those answered 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_concurrent_edits_through_every_instance_are_all_answered_and_agree() {
    let Some(peers) = peers("d_concurrent_edits_through_every_instance_are_all_answered_and_agree")
    else {
        return;
    };
    let f = Fleet::start(&peers, &quota(1_000_000), "").await;
    let mut edits = Vec::new();
    for (i, w) in f.weirs.iter().enumerate() {
        for k in 0..8 {
            let admin_port = w.admin;
            edits.push(tokio::spawn(async move {
                let name = format!("r-{i}-{k}");
                let url = format!("http://127.0.0.1:{admin_port}/admin/rules/acme");
                let auth = format!("Bearer {TOKEN}");
                let body = json!({"name": name, "query": format!("service:s{i}{k}")});
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    request(
                        http::Method::POST,
                        &url,
                        &[
                            ("Authorization", auth.as_str()),
                            ("Content-Type", "application/json"),
                        ],
                        serde_json::to_vec(&body).unwrap().into(),
                    ),
                )
                .await
                .expect("an admin edit hung")
                .unwrap();
                (name, r.status, r.text())
            }));
        }
    }
    let mut created = HashSet::new();
    for e in edits {
        let (name, status, text) = e.await.unwrap();
        assert!(status == 201 || status == 409, "{name}: {status} {text}");
        if status == 201 {
            created.insert(name);
        }
    }
    assert!(!created.is_empty());
    // Intake still answers on every instance.
    for w in &f.weirs {
        assert_eq!(
            send(&w.url("/api/v2/logs"), KEY, "after-edits", 5)
                .await
                .status,
            202
        );
    }
    let start = Instant::now();
    loop {
        let mut lists = Vec::new();
        for w in &f.weirs {
            let r = admin(w, "GET", "/admin/rules", Some(TOKEN), Value::Null).await;
            let names: HashSet<String> = r.json()["tenants"]["acme"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect();
            lists.push(names);
        }
        if lists.iter().all(|l| *l == created) {
            break;
        }
        assert!(
            start.elapsed() < PROPAGATION * 3,
            "the instances disagree: {lists:?}, created {created:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
