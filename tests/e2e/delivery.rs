//! Forwarding: retries until a backend is up, backpressure that refuses whole
//! requests, non-retryable refusals, and the flush on SIGTERM.
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");

fn events(prefix: &str, n: usize) -> Vec<u8> {
    json_logs(
        n,
        |i| json!({"message": format!("{prefix} {i}"), "id": format!("{prefix}-{i}")}),
    )
}

fn ids(got: &[Value]) -> HashSet<String> {
    got.iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_at_start_then_up_loses_nothing() {
    let port = free_port();
    let mut weir = Weir::start(&config(&format!("127.0.0.1:{port}"), "", "")).await;
    for r in 0..20 {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            events(&format!("r{r}"), 50),
        )
        .await;
        assert_eq!(resp.status, 202, "{}", resp.text());
    }
    // Let a few retries fail for real before the backend appears.
    eventually(
        Duration::from_secs(20),
        "retries against the dead backend",
        || weir.log().contains("backend send failed").then_some(()),
    )
    .await;
    let dd = FakeDatadog::start_on(port).await;
    // Counted once the backend has answered, so the events are in by then.
    let forwarded = "weir_forwarded_events_total{backend=\"dd\",tenant=\"acme\"}";
    let m = weir.metrics_once(forwarded, 1000.0).await;
    let got = dd.take();
    assert_eq!(ids(&got).len(), 1000, "every accepted event arrived");
    assert_eq!(got.len(), 1000, "and none twice");
    assert!(metric(&m, "weir_backend_retries_total{backend=\"dd\"}") >= 1.0);
    assert_eq!(
        metric(
            &m,
            "weir_forwarded_events_total{backend=\"dd\",tenant=\"acme\"}"
        ),
        1000.0
    );
    assert!(weir.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_whole_requests_and_accepted_ones_arrive() {
    let port = free_port();
    // A tiny queue so that a dead backend fills it after a few requests.
    let cfg = config(
        &format!("127.0.0.1:{port}"),
        "    max_queued_bytes: 64KiB",
        // The memory buffer: its queue is what fills (the disk buffer's limits are durability.rs's).
        // Refused at once (no wait for room): the wait is the next test's.
        "buffer: {type: memory}\nlimits:\n  max_body_bytes: 64KiB\n  max_decompressed_bytes: 64KiB\n  max_inflight_request_bytes: 1MiB\n  admission_wait: 0s\n",
    );
    let mut weir = Weir::start(&cfg).await;
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for r in 0..60 {
        let prefix = format!("r{r}");
        let resp = post(&weir.url("/api/v2/logs"), &[KEY], events(&prefix, 40)).await;
        match resp.status {
            202 => accepted.extend((0..40).map(|i| format!("{prefix}-{i}"))),
            503 => {
                refused += 1;
                assert_eq!(resp.headers["retry-after"], "1");
                assert!(resp.error().contains("retry later"), "{}", resp.error());
            }
            s => panic!("unexpected {s}: {}", resp.text()),
        }
    }
    assert!(refused > 0, "the queue filled up");
    assert!(!accepted.is_empty());
    let dd = FakeDatadog::start_on(port).await;
    eventually(Duration::from_secs(30), "accepted events delivered", || {
        (dd.count() >= accepted.len()).then_some(())
    })
    .await;
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"backend_backpressure\"}"
        ),
        refused as f64
    );
    // Count once the proxy has drained everything it holds (SIGTERM), not when
    // the count first reaches the total: a duplicate sent later would be missed.
    assert!(weir.terminate().success(), "{}", weir.log());
    let got = dd.take();
    assert_eq!(
        ids(&got),
        accepted,
        "exactly the accepted requests arrive, no part of a refused one"
    );
    assert_eq!(got.len(), accepted.len(), "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_requests_wait_unread_and_takes_them_once_there_is_room() {
    let port = free_port();
    let cfg = config(
        &format!("127.0.0.1:{port}"),
        "    max_queued_bytes: 64KiB",
        "buffer: {type: memory}\nlimits:\n  max_body_bytes: 64KiB\n  max_decompressed_bytes: 64KiB\n  admission_wait: 30s\n",
    );
    let mut weir = Weir::start(&cfg).await;
    // The backend is down: the queue fills after a few requests, the rest wait for room.
    let url = weir.url("/api/v2/logs");
    let sends: Vec<_> = (0..60)
        .map(|r| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &[KEY], events(&format!("w{r}"), 100)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answered = sends.iter().filter(|h| h.is_finished()).count();
    assert!(
        answered < 60,
        "the queue never filled: every request answered at once: {}",
        weir.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("weir_rejected") || l.starts_with("weir_queued"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let dd = FakeDatadog::start_on(port).await;
    for (r, h) in sends.into_iter().enumerate() {
        let resp = h.await.unwrap();
        assert_eq!(
            resp.status,
            202,
            "request {r} waited for room: {}",
            resp.text()
        );
    }
    eventually(
        Duration::from_secs(30),
        "every request's events delivered",
        || (dd.count() >= 60 * 100).then_some(()),
    )
    .await;
    let m = weir.metrics().await;
    assert!(
        !m.contains("weir_rejected_requests_total{"),
        "nothing refused: {}",
        m.lines()
            .filter(|l| l.starts_with("weir_rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(weir.terminate().success(), "{}", weir.log());
    let got = dd.take();
    assert_eq!(got.len(), 60 * 100, "each event once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_and_final_backend_answers() {
    let (dd, addr) = FakeDatadog::start().await;
    // 503 and 429 are retried; 400 dead-letters that batch to the archive (counted); the rest flows.
    dd.script.lock().unwrap().extend([503, 429, 400]);
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY], events("first", 5))
            .await
            .status,
        202
    );
    eventually(
        Duration::from_secs(20),
        "the scripted answers used up",
        || dd.script.lock().unwrap().is_empty().then_some(()),
    )
    .await;
    // The first batch was answered 503, 429 then 400: dead-lettered and counted, not retried forever.
    let dead = "weir_dead_lettered_events_total{backend=\"dd\",status=\"400\",tenant=\"acme\"}";
    let start = std::time::Instant::now();
    while metric(&weir.metrics().await, dead) != 5.0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the dead letter was never counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (letters, objects) = read_archive(&weir.archive_root().join("dead-letter"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0].starts_with("acme/dt=") && objects[0].ends_with("-dd-400.ndjson.gz"),
        "{objects:?}"
    );
    assert_eq!(
        ids(&letters),
        (0..5).map(|i| format!("first-{i}")).collect::<HashSet<_>>()
    );
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY], events("second", 5))
            .await
            .status,
        202
    );
    eventually(Duration::from_secs(20), "second batch", || {
        (dd.count() == 5).then_some(())
    })
    .await;
    assert!(dd
        .take()
        .iter()
        .all(|e| e["message"].as_str().unwrap().starts_with("second")));
    let m = weir.metrics().await;
    assert_eq!(
        metric(&m, "weir_backend_retries_total{backend=\"dd\"}"),
        2.0
    );
    assert_eq!(dd.requests.lock().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_batches_and_archive_objects() {
    let (dd, addr) = FakeDatadog::start().await;
    // Nothing would be sent or archived for an hour but for the shutdown.
    let cfg = config(&addr.to_string(), "", "").replace("max_wait: 100ms", "max_wait: 1h");
    let mut weir = Weir::start(&cfg).await;
    for r in 0..5 {
        assert_eq!(
            post(
                &weir.url("/api/v2/logs"),
                &[KEY],
                events(&format!("t{r}"), 100)
            )
            .await
            .status,
            202
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dd.count(), 0, "still batching");
    assert!(
        read_archive(&weir.archive_root()).1.is_empty(),
        "no object yet"
    );
    let status = weir.terminate();
    assert!(status.success(), "{status}: {}", weir.log());
    assert_eq!(ids(&dd.take()).len(), 500);
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(ids(&archived).len(), 500);
    assert_eq!(archived.len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_archive_holds_every_event_and_its_dead_letters_too() {
    let (dd, addr) = FakeDatadog::start().await;
    // One batch is refused as malformed: its dead letter is zstd as well.
    dd.script.lock().unwrap().push_back(400);
    let cfg = config(&addr.to_string(), "", "").replace(
        "  max_object_age: 1h\n",
        "  max_object_age: 1h\n  compression: zstd\n  compression_level: 3\n",
    );
    let mut weir = Weir::start(&cfg).await;
    for r in 0..4 {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            events(&format!("z{r}"), 50),
        )
        .await;
        assert_eq!(resp.status, 202, "{}", resp.text());
    }
    eventually(Duration::from_secs(20), "the dead letter", || {
        (!read_archive(&weir.archive_root().join("dead-letter"))
            .0
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(weir.terminate().success(), "{}", weir.log());
    let (archived, objects) = read_archive(&weir.archive_root().join("acme"));
    assert_eq!(ids(&archived).len(), 200, "every event once");
    assert_eq!(archived.len(), 200);
    assert!(
        objects.iter().all(|o| o.ends_with(".ndjson.zst")),
        "{objects:?}"
    );
    let (letters, names) = read_archive(&weir.archive_root().join("dead-letter"));
    assert!(!letters.is_empty());
    assert!(
        names.iter().all(|n| n.ends_with("-400.ndjson.zst")),
        "{names:?}"
    );
    let _ = dd.take();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_ndjson_zstd_with_secret_header() {
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = format!(
        r#"listeners: [{{name: intake, address: "127.0.0.1:{{INTAKE}}", protocol: http}}]
admin: {{address: "127.0.0.1:{{ADMIN}}"}}
archive: {{enabled: false, store: {{type: local, root: "{{DIR}}/archive"}}}}
backends:
  - name: lake
    type: http
    url: http://{addr}/ingest
    format: ndjson
    compression: zstd
    compression_level: 3
    headers:
      Authorization: "Bearer ${{WEIR_E2E_HTTP_TOKEN}}"
    batch: {{max_wait: 50ms, max_events: 7}}
tenants:
  - {{name: acme, api_keys: [agent-key], backend: lake}}
"#
    );
    std::env::set_var("WEIR_E2E_HTTP_TOKEN", "t0ken-from-env");
    let weir = Weir::start(&cfg).await;
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY], events("nd", 20))
            .await
            .status,
        202
    );
    eventually(Duration::from_secs(20), "20 events", || {
        (dd.count() >= 20).then_some(())
    })
    .await;
    assert_eq!(ids(&dd.take()).len(), 20);
    let reqs = dd.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3, "batches of at most 7 events");
    for h in &reqs {
        assert_eq!(h["authorization"], "Bearer t0ken-from-env");
        assert_eq!(h["content-encoding"], "zstd");
        assert_eq!(h["content-type"], "application/x-ndjson");
        assert!(h.get("dd-api-key").is_none());
    }
    assert!(!weir.log().contains("t0ken-from-env"));
    assert!(
        read_archive(&weir.archive_root()).1.is_empty(),
        "archive disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_backpressure_costs_its_tenant_nothing() {
    let port = free_port();
    // A dead backend and a tiny queue; a daily quota, a rate limit and a rule that
    // matches everything (sampling none out), so every charge is visible.
    let cfg = config(
        &format!("127.0.0.1:{port}"),
        "    max_queued_bytes: 64KiB",
        "    daily_quota: {max_events: 1000000}\n    rate_limit: {events_per_second: 1000000}\n    exclusion_rules:\n      - {name: all, query: '*', sample_rate: 0.0}\nbuffer: {type: memory}\nlimits:\n  max_body_bytes: 64KiB\n  max_decompressed_bytes: 64KiB\n  max_inflight_request_bytes: 1MiB\n",
    );
    let weir = Weir::start(&cfg).await;
    let (mut accepted, mut refused) = (0u64, 0u64);
    for r in 0..60 {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            events(&format!("r{r}"), 40),
        )
        .await;
        match resp.status {
            202 => accepted += 40,
            503 => refused += 1,
            s => panic!("unexpected {s}: {}", resp.text()),
        }
    }
    assert!(
        refused > 0 && accepted > 0,
        "{accepted} accepted, {refused} refused"
    );
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_quota_usage_events{partition=\"\",tenant=\"acme\"}"
        ),
        accepted as f64,
        "the quota counts only accepted events"
    );
    assert_eq!(
        metric(
            &m,
            "weir_rule_matched_events_total{rule=\"all\",tenant=\"acme\"}"
        ),
        accepted as f64,
        "the rule counts only accepted events"
    );
    assert_eq!(
        metric(
            &m,
            "weir_received_events_total{intake=\"datadog\",tenant=\"acme\"}"
        ),
        accepted as f64
    );
}
