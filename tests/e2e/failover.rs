//! Failover between backends with real processes: weir-blackhole backends
//! killed with SIGKILL, one that never answers, and region pinning.
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");

fn batch(prefix: &str, n: usize) -> Vec<u8> {
    json_logs(n, |i| json!({"message": format!("{prefix}-{i}")}))
}

/// A backend entry for a blackhole: `http` NDJSON or `datadog` (JSON array), with quick detection.
fn backend(name: &str, kind: &str, port: u16, extra: &str) -> String {
    let target = match kind {
        "datadog" => format!("endpoint: http://127.0.0.1:{port}"),
        _ => format!("url: http://127.0.0.1:{port}/ingest\n    format: ndjson"),
    };
    format!(
        "  - name: {name}\n    type: {kind}\n    {target}\n    request_timeout: 1s\n    batch: {{max_wait: 50ms, max_events: 100}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n    passive: {{max_failures: 2, ejection: 1s, max_ejection: 2s}}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load_fails_over_and_traffic_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Blackhole::start(0, &dir.path().join("primary.txt"), None).await;
    let secondary = Blackhole::start(0, &dir.path().join("secondary.txt"), None).await;
    let config = routed_config(
        &(backend("primary", "http", primary.port, "")
            + &backend("secondary", "datadog", secondary.port, "")),
        "  - name: eu\n    tiers: [[primary], [secondary]]\n",
        "  - {name: acme, api_keys: [agent-key], region: eu, upstream_api_key: up}\n",
    );
    let weir = Weir::start(&config).await;
    let url = weir.url("/api/v2/logs");

    // Steady load: 20 events per request; the primary is killed a third of the way in.
    let mut acked: Vec<String> = Vec::new();
    let mut refused = 0;
    let mut killed_at = None;
    let mut moved_after = None;
    for r in 0..150 {
        if let (Some(k), None) = (killed_at, moved_after) {
            if !secondary.received().is_empty() {
                moved_after = Some(Instant::now().duration_since(k));
            }
        }
        if r == 50 {
            primary.kill9();
            killed_at = Some(Instant::now());
        }
        let prefix = format!("load{r}");
        let resp = post(&url, &[KEY], batch(&prefix, 20)).await;
        match resp.status {
            202 => acked.extend((0..20).map(|i| format!("{prefix}-{i}"))),
            503 => refused += 1,
            s => panic!("unexpected {s}: {}", resp.text()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every acknowledged event reaches one of the two backends.
    let want: HashSet<&String> = acked.iter().collect();
    let got = eventually(
        Duration::from_secs(30),
        "every acked event delivered",
        || {
            let mut all = primary.received();
            all.extend(secondary.received());
            let set: HashSet<&String> = all.iter().collect();
            want.iter().all(|m| set.contains(*m)).then_some(all)
        },
    )
    .await;
    let mut seen: HashMap<&String, usize> = HashMap::new();
    for m in &got {
        *seen.entry(m).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "failover: {} events acked, {refused} requests refused (503), {} delivered, {duplicates} duplicates (batches in flight at the kill); first event on the secondary {:?} after the kill",
        acked.len(),
        got.len(),
        moved_after
    );
    assert!(
        duplicates <= 8 * 100,
        "duplicates only from batches in flight at the kill: {duplicates}"
    );
    let on_secondary = secondary.received().len();
    assert!(on_secondary > 0, "traffic moved to the secondary");

    let report = backends_report(&weir).await;
    assert!(
        report["primary"]["ejections"].as_u64().unwrap() >= 1,
        "{report:?}"
    );
    assert!(
        report["primary"]["failovers_away"].as_u64().unwrap() >= 1,
        "{report:?}"
    );
    assert!(
        report["primary"]["last_error"].as_str().is_some(),
        "{report:?}"
    );
    let m = weir.metrics().await;
    assert!(
        metric(
            &m,
            "weir_backend_failovers_total{from=\"primary\",tenant=\"acme\",to=\"secondary\"}"
        ) >= 1.0,
        "{m}"
    );

    // The primary comes back on its port: traffic returns to it once its ejection ends.
    let port = primary.port;
    let primary = Blackhole::start(port, &dir.path().join("primary-again.txt"), None).await;
    let mut after: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut r = 0;
    while primary.received().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "traffic never returned to the primary; backends: {:?}",
            backends_report(&weir).await
        );
        let prefix = format!("after{r}");
        r += 1;
        if post(&url, &[KEY], batch(&prefix, 5)).await.status == 202 {
            after.extend((0..5).map(|i| format!("{prefix}-{i}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secondary_before = secondary.received().len();
    // Once back, new traffic goes to the primary, not the secondary.
    for r in 0..10 {
        let prefix = format!("back{r}");
        assert_eq!(post(&url, &[KEY], batch(&prefix, 5)).await.status, 202);
        after.extend((0..5).map(|i| format!("{prefix}-{i}")));
    }
    eventually(
        Duration::from_secs(20),
        "events after the return delivered",
        || {
            let mut all = primary.received();
            all.extend(secondary.received());
            let set: HashSet<String> = all.into_iter().collect();
            after.iter().all(|m| set.contains(m)).then_some(())
        },
    )
    .await;
    let back_on_primary = primary
        .received()
        .iter()
        .filter(|m| m.starts_with("back"))
        .count();
    assert_eq!(back_on_primary, 50, "traffic is back on the primary");
    assert!(secondary.received().len() >= secondary_before);
    assert_eq!(backend_state(&weir, "primary").await, "up");
    // Counted again once the proxy drained: a late resend would show here. The only
    // duplicates are of batches in flight at the kill; nothing sent after it twice.
    let mut weir = weir;
    assert!(weir.terminate().success());
    let mut all = received(&dir.path().join("primary.txt"));
    all.extend(primary.received());
    all.extend(secondary.received());
    let mut seen: HashMap<&String, usize> = HashMap::new();
    for m in &all {
        *seen.entry(m).or_default() += 1;
    }
    let late: Vec<_> = seen
        .iter()
        .filter(|(m, n)| **n > 1 && (m.starts_with("after") || m.starts_with("back")))
        .collect();
    assert!(late.is_empty(), "sent twice after the failover: {late:?}");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    assert!(duplicates <= 8 * 100, "duplicates: {duplicates}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_treated_as_dead_without_stalling_intake() {
    let dir = tempfile::tempdir().unwrap();
    let hung = Blackhole::start(0, &dir.path().join("hung.txt"), Some("hang")).await;
    let good = Blackhole::start(0, &dir.path().join("good.txt"), None).await;
    let config = routed_config(
        &(backend("hung", "http", hung.port, "") + &backend("good", "http", good.port, "")),
        "  - name: eu\n    tiers: [[hung], [good]]\n",
        "  - {name: acme, api_keys: [agent-key], region: eu}\n",
    );
    let weir = Weir::start(&config).await;
    let mut acked = Vec::new();
    for r in 0..30 {
        let prefix = format!("h{r}");
        let resp = post(&weir.url("/api/v2/logs"), &[KEY], batch(&prefix, 10)).await;
        assert_eq!(
            resp.status,
            202,
            "intake keeps taking requests: {}",
            resp.text()
        );
        acked.extend((0..10).map(|i| format!("{prefix}-{i}")));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        Duration::from_secs(30),
        "every event on the answering backend",
        || {
            let got: HashSet<String> = good.received().into_iter().collect();
            acked.iter().all(|m| got.contains(m)).then_some(())
        },
    )
    .await;
    assert!(hung.received().is_empty());
    let report = backends_report(&weir).await;
    assert!(
        report["hung"]["ejections"].as_u64().unwrap() >= 1,
        "{report:?}"
    );
    let err = report["hung"]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("no answer within 1s"), "{report:?}");
    // The operator's view of the same: `weir backends`.
    let admin = format!("http://127.0.0.1:{}", weir.admin);
    let (code, table, err) = weir_cli(&["backends", "--admin", &admin]);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("BACKEND"), "{table}");
    let hung_row = table
        .lines()
        .find(|l| l.starts_with("hung "))
        .expect("a row for hung");
    assert!(hung_row.contains("no answer within 1s"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("good ") && l.contains(" up ")),
        "{table}"
    );
    let (code, _, _) = weir_cli(&["backends", "--admin", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "no admin listener there: exit 1 with the reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_pinned_tenant_crosses_only_into_regions_it_allows() {
    let dir = tempfile::tempdir().unwrap();
    let us = Blackhole::start(0, &dir.path().join("us.txt"), None).await;
    // Every EU backend is down: nothing listens on its port.
    let eu_port = free_port();
    let config = routed_config(
        &(backend("eu1", "http", eu_port, "    max_queued_bytes: 64KiB\n")
            + &backend("us1", "http", us.port, "")),
        "  - name: eu\n    tiers: [[eu1]]\n  - name: us\n    tiers: [[us1]]\n",
        "  - {name: eu-only, api_keys: [agent-key], region: eu}\n  - {name: eu-flex, api_keys: [flex-key], region: eu, failover_regions: [us]}\n",
    ) + "limits: {max_body_bytes: 64KiB, max_decompressed_bytes: 64KiB}\nshutdown_timeout: 2s\nbuffer: {type: memory}\n";
    let weir = Weir::start(&config).await;
    let url = weir.url("/api/v2/logs");
    // eu-flex fails over to the US.
    let mut flex = Vec::new();
    for r in 0..5 {
        let prefix = format!("flex{r}");
        assert_eq!(
            post(&url, &[("DD-API-KEY", "flex-key")], batch(&prefix, 10))
                .await
                .status,
            202
        );
        flex.extend((0..10).map(|i| format!("{prefix}-{i}")));
    }
    eventually(
        Duration::from_secs(20),
        "eu-flex's events in the US",
        || {
            let got: HashSet<String> = us.received().into_iter().collect();
            flex.iter().all(|m| got.contains(m)).then_some(())
        },
    )
    .await;
    // eu-only never reaches the US: its batches wait, its queue fills, intake answers 503.
    let mut refused = false;
    for r in 0..400 {
        let resp = post(&url, &[KEY], batch(&format!("pinned{r}"), 50)).await;
        if resp.status == 503 {
            assert!(resp.text().contains("backend is behind"), "{}", resp.text());
            refused = true;
            break;
        }
        assert_eq!(resp.status, 202);
    }
    assert!(refused, "the pinned tenant is backpressured");
    let report = backends_report(&weir).await;
    assert_eq!(report["us1"]["state"], "up", "{report:?}");
    // Its state cycles (ejected, then up again for a probe once the ejection
    // ends): what holds at any moment is that it was ejected and keeps failing.
    assert!(
        report["eu1"]["ejections"].as_u64() >= Some(1)
            && report["eu1"]["consecutive_failures"].as_u64() > Some(0),
        "{report:?}"
    );
    // Once the proxy has stopped (its pinned batches given up at the shutdown
    // timeout), nothing of eu-only ever reached the US.
    let mut weir = weir;
    let _ = weir.terminate();
    assert!(
        !us.received().iter().any(|m| m.starts_with("pinned")),
        "an EU-pinned event reached the US backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_under_load_swaps_routing_and_refuses_a_broken_file() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let a = Blackhole::start(0, &dir.path().join("a.txt"), None).await;
    let b = Blackhole::start(0, &dir.path().join("b.txt"), None).await;
    let config = routed_config(
        &(backend("a", "http", a.port, "") + &backend("b", "datadog", b.port, "")),
        "  - name: eu\n    tiers: [[a], [b]]\n",
        "  - {name: acme, api_keys: [agent-key], backend: a, upstream_api_key: up}\n",
    )
    .replace(
        "admin:\n  address: 127.0.0.1:{ADMIN}\n",
        "admin:\n  address: 127.0.0.1:{ADMIN}\n  token: reload-token\n",
    );
    let weir = Weir::start(&config).await;
    let running = std::fs::read_to_string(&weir.config_path).unwrap();

    // Steady load for the whole test; every acknowledged event must arrive somewhere.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sender = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), weir.url("/api/v2/logs"));
        tokio::spawn(async move {
            let mut r = 0;
            while !stop.load(Ordering::Relaxed) {
                let prefix = format!("rl{r}");
                r += 1;
                let resp = post(&url, &[KEY], batch(&prefix, 10)).await;
                assert_eq!(resp.status, 202, "{}", resp.text());
                acked
                    .lock()
                    .unwrap()
                    .extend((0..10).map(|i| format!("{prefix}-{i}")));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    eventually(Duration::from_secs(10), "traffic on a", || {
        (!a.received().is_empty()).then_some(())
    })
    .await;

    // SIGHUP after moving the tenant to b.
    std::fs::write(
        &weir.config_path,
        running.replace("backend: a,", "backend: b,"),
    )
    .unwrap();
    unsafe { libc::kill(weir.child.id() as i32, libc::SIGHUP) };
    eventually(Duration::from_secs(10), "traffic on b after SIGHUP", || {
        (!b.received().is_empty()).then_some(())
    })
    .await;

    // A broken file is refused, naming file, line and field; b keeps the traffic.
    std::fs::write(
        &weir.config_path,
        running.replace("backend: a,", "backend: nope,"),
    )
    .unwrap();
    let r = request(
        http::Method::POST,
        &format!("http://127.0.0.1:{}/admin/config/reload", weir.admin),
        &[("Authorization", "Bearer reload-token")],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    let err = r.error();
    assert!(
        err.contains("weir.yaml:")
            && err.contains("tenants[0].backend")
            && err.contains("no backend named \"nope\""),
        "{err}"
    );
    let on_b = b.received().len();
    eventually(Duration::from_secs(10), "traffic still on b", || {
        (b.received().len() > on_b + 50).then_some(())
    })
    .await;

    // The file watch (no signal) moves it back to a.
    let on_a = a.received().len();
    std::fs::write(&weir.config_path, &running).unwrap();
    eventually(
        Duration::from_secs(15),
        "traffic back on a after the file changed",
        || (a.received().len() > on_a + 50).then_some(()),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let want: HashSet<&String> = acked.iter().collect();
    eventually(
        Duration::from_secs(20),
        "every acked event delivered across the reloads",
        || {
            let mut all = a.received();
            all.extend(b.received());
            let got: HashSet<String> = all.into_iter().collect();
            want.iter().all(|m| got.contains(*m)).then_some(())
        },
    )
    .await;
    let m = weir.metrics().await;
    assert!(
        metric(&m, "weir_config_reloads_total{outcome=\"reloaded\"}") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "weir_config_reloads_total{outcome=\"refused\"}") >= 1.0,
        "{m}"
    );
    assert!(weir.log().contains("config reloaded"), "{}", weir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fits_the_smallest_batch_limit_of_the_backends_it_may_fail_over_to() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Blackhole::start(0, &dir.path().join("failing.txt"), Some("503")).await;
    let small = Blackhole::start(0, &dir.path().join("small.txt"), None).await;
    // The preferred backend takes 100 events a batch, the one behind it only 5.
    let small_entry = format!(
        "  - name: small\n    type: http\n    url: http://127.0.0.1:{}/ingest\n    format: ndjson\n    batch: {{max_wait: 50ms, max_events: 5}}\n",
        small.port
    );
    let config = routed_config(
        &(backend("failing", "http", failing.port, "") + &small_entry),
        "  - name: eu\n    tiers: [[failing], [small]]\n",
        "  - {name: acme, api_keys: [agent-key], region: eu}\n",
    );
    let weir = Weir::start(&config).await;
    let resp = post(&weir.url("/api/v2/logs"), &[KEY], batch("fit", 200)).await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    eventually(Duration::from_secs(20), "all 200 events on small", || {
        (small.received().len() >= 200).then_some(())
    })
    .await;
    let stats = get(&format!("http://127.0.0.1:{}/stats", small.port))
        .await
        .unwrap()
        .json();
    assert_eq!(stats["events"], 200, "{stats}");
    assert!(
        stats["requests"].as_u64().unwrap() >= 40,
        "no request to small held more than 5 events: {stats}"
    );
    let got: HashSet<String> = small.received().into_iter().collect();
    assert_eq!(got.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_shares_batches_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let heavy = Blackhole::start(0, &dir.path().join("heavy.txt"), None).await;
    let light = Blackhole::start(0, &dir.path().join("light.txt"), None).await;
    let config = routed_config(
        &(backend("heavy", "http", heavy.port, "    weight: 3\n")
            + &backend("light", "http", light.port, "    weight: 1\n"))
            .replace("max_events: 100", "max_events: 10"),
        "  - name: eu\n    tiers: [[heavy, light]]\n",
        "  - {name: acme, api_keys: [agent-key], region: eu}\n",
    );
    let mut weir = Weir::start(&config).await;
    // 4,000 events in batches of 10: 400 choices by weight.
    for r in 0..40 {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            batch(&format!("w{r}"), 100),
        )
        .await;
        assert_eq!(resp.status, 202);
    }
    assert!(weir.terminate().success());
    let (h, l) = (heavy.received().len(), light.received().len());
    assert_eq!(h + l, 4000, "every event once");
    // 3:1 by weight; the draw is random (binomial, n = 400 batches): 3 sigma is about 2.2 to 4.6.
    let ratio = h as f64 / l.max(1) as f64;
    assert!(
        (2.0..5.0).contains(&ratio),
        "heavy {h}, light {l}: ratio {ratio:.2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_health_check_marks_a_dead_backend_down_and_a_revived_one_up_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("b.txt");
    let mut b = Blackhole::start(0, &record, None).await;
    let port = b.port;
    let config = routed_config(
        &backend(
            "b",
            "http",
            port,
            "    health_check: {type: http, path: /stats, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2}\n",
        ),
        "",
        "  - {name: acme, api_keys: [agent-key], backend: b}\n",
    );
    let weir = Weir::start(&config).await;
    let state = |r: HashMap<String, Value>| r["b"]["state"].as_str().unwrap().to_string();
    assert_eq!(state(backends_report(&weir).await), "up");
    // Killed for real: the probes fail and it goes down, with no traffic at all.
    b.kill9();
    let start = std::time::Instant::now();
    while state(backends_report(&weir).await) != "down" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never marked down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back on the same port: two good probes and it is up again.
    let _b = Blackhole::start(port, &record, None).await;
    let start = std::time::Instant::now();
    while state(backends_report(&weir).await) != "up" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never marked up again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = weir.metrics().await;
    assert_eq!(metric(&m, "weir_backend_up{backend=\"b\"}"), 1.0);
}
