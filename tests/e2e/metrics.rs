//! What `/metrics` tells an on-call, against the real binary: series that
//! exist from the start, gauges that follow the state they describe, counts
//! that mean what their help says, `promtool check metrics` clean, and a
//! shutdown that times out saying what it did not deliver.
use crate::harness::*;
use serde_json::json;
use std::time::Duration;

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");

/// The value of the series `name{labels}` exactly as printed; None when it is not exported
/// (unlike `harness::metric`, a missing series is not read as 0).
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn events(prefix: &str, n: usize) -> Vec<u8> {
    json_logs(
        n,
        |i| json!({"message": format!("{prefix}-{i}"), "service": "web", "status": "info"}),
    )
}

/// Polls the metrics until `name_and_labels` reads `want`.
async fn metric_reaches(weir: &Weir, name_and_labels: &str, want: f64) -> String {
    for _ in 0..300 {
        let m = weir.metrics().await;
        if series(&m, name_and_labels) == Some(want) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{name_and_labels} never read {want}: {}",
        weir.metrics().await
    );
}

// Issue 10, item 12: an ejection that runs out while no batch comes by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_up_reads_1_once_an_ejection_ran_out_on_an_idle_backend() {
    let (dd, addr) = FakeDatadog::start().await;
    // One failure ejects for 2s; the retry of the batch then succeeds, and nothing more is sent.
    dd.script.lock().unwrap().push_back(503);
    let weir = Weir::start(&config(
        &addr.to_string(),
        "    passive: {max_failures: 1, ejection: 2s, max_ejection: 2s}",
        "",
    ))
    .await;
    let r = post(&weir.url("/api/v2/logs"), &[KEY], events("e", 1)).await;
    assert_eq!(r.status, 202);
    eventually(
        Duration::from_secs(10),
        "the retried batch delivered",
        || (dd.count() == 1).then_some(()),
    )
    .await;
    assert_eq!(
        series(&weir.metrics().await, "weir_backend_up{backend=\"dd\"}"),
        Some(0.0),
        "ejected after the failure"
    );
    // No traffic: only time passes.
    for _ in 0..150 {
        if backend_state(&weir, "dd").await == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend_state(&weir, "dd").await, "up");
    let m = weir.metrics().await;
    assert_eq!(
        series(&m, "weir_backend_up{backend=\"dd\"}"),
        Some(1.0),
        "/backends says up, so must the gauge: {m}"
    );
}

// Issue 10, item 13: the last attempt, given up on, is not a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_given_up_on_counts_its_retries_not_its_last_attempt() {
    let closed = free_port();
    let weir = Weir::start(&config(
        &format!("127.0.0.1:{closed}"),
        "      max_retries: 2\n    passive: {max_failures: 100, ejection: 1s}",
        "",
    ))
    .await;
    let r = post(&weir.url("/api/v2/logs"), &[KEY], events("r", 3)).await;
    assert_eq!(r.status, 202);
    // 1 attempt + 2 retries = 3 requests, then the batch is given up on.
    let m = metric_reaches(
        &weir,
        "weir_backend_requests_total{backend=\"dd\",outcome=\"retryable_error\"}",
        3.0,
    )
    .await;
    assert_eq!(
        series(&m, "weir_backend_retries_total{backend=\"dd\"}"),
        Some(2.0),
        "max_retries: 2 sends a batch again twice: {m}"
    );
    let m = metric_reaches(
        &weir,
        "weir_backend_dropped_events_total{backend=\"dd\",reason=\"retries_exhausted\",tenant=\"acme\"}",
        3.0,
    )
    .await;
    assert_eq!(
        series(
            &m,
            "weir_backend_requests_total{backend=\"dd\",outcome=\"retryable_error\"}"
        ),
        Some(3.0),
        "no request after giving up"
    );
}

// Issue 10, item 16 (part): sending past a backend its health check has down is a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_past_a_backend_its_health_check_has_down_counts_as_failover() {
    let (primary, p_addr) = FakeDatadog::start().await;
    let (secondary, s_addr) = FakeDatadog::start().await;
    // The primary answers its intake but 404 on the health check path: down, never ejected.
    let backend = |name: &str, addr: std::net::SocketAddr, extra: &str| {
        format!("  - name: {name}\n    type: datadog\n    endpoint: http://{addr}\n    batch: {{max_wait: 50ms}}\n{extra}")
    };
    let cfg = routed_config(
        &(backend(
            "a",
            p_addr,
            "    health_check: {type: http, path: /healthz, interval: 100ms, unhealthy_threshold: 1}\n",
        ) + &backend("b", s_addr, "")),
        "  - name: eu\n    tiers: [[a], [b]]\n",
        "  - {name: acme, api_keys: [agent-key], region: eu, upstream_api_key: up}\n",
    );
    let weir = Weir::start(&cfg).await;
    for _ in 0..100 {
        if backend_state(&weir, "a").await == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(backend_state(&weir, "a").await, "down");
    for r in 0..3 {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            events(&format!("f{r}"), 2),
        )
        .await;
        assert_eq!(resp.status, 202);
        // One batch per request (max_wait passes before the next one).
        eventually(Duration::from_secs(10), "the batch on b", || {
            (secondary.count() == 2 * (r + 1)).then_some(())
        })
        .await;
    }
    assert_eq!(
        primary.count(),
        0,
        "nothing sent to the backend that is down"
    );
    let m = weir.metrics().await;
    assert_eq!(
        series(
            &m,
            "weir_backend_failovers_total{from=\"a\",tenant=\"acme\",to=\"b\"}"
        ),
        Some(3.0),
        "every batch meant for `a` went to `b`: {m}"
    );
}

/// A proxy with plugins, exclusion rules, quotas and rate limits: two tenants,
/// one with a daily event quota and no byte quota, over a region of two backends.
async fn loaded_weir(dd: std::net::SocketAddr) -> Weir {
    let dir = tempfile::tempdir().unwrap();
    let wat = plugin_wat(1, "", "(i64.const 0)", "");
    std::fs::write(dir.path().join("p.wat"), wat).unwrap();
    let backend = |name: &str| {
        format!("  - name: {name}\n    type: datadog\n    endpoint: http://{dd}\n    batch: {{max_wait: 50ms}}\n")
    };
    let cfg = routed_config(
        &(backend("dd-a") + &backend("dd-b")),
        "  - name: eu\n    tiers: [[dd-a], [dd-b]]\n",
        "  - name: acme
    api_keys: [agent-key]
    region: eu
    upstream_api_key: up
    plugins:
      - {name: tagger, path: \"{DIR}/p.wat\"}
    exclusion_rules:
      - {name: no-debug, query: \"status:debug\"}
    daily_quota: {max_events: 1000000}
    rate_limit: {events_per_second: 100000}
  - {name: beta, api_keys: [beta-key], region: eu, upstream_api_key: up2}
",
    );
    Weir::start_in(dir, &cfg).await
}

// Issue 10, item 14: series from the start, labels an on-call can aggregate on,
// no sentinel values, and the new metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_series_exist_from_start_with_zero() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = loaded_weir(addr).await;
    let m = weir.metrics().await;
    for s in [
        "weir_received_events_total{intake=\"datadog\",tenant=\"acme\"}",
        "weir_received_events_total{intake=\"generic\",tenant=\"beta\"}",
        "weir_accepted_requests_total{intake=\"datadog\",tenant=\"beta\"}",
        "weir_forwarded_events_total{backend=\"dd-a\",tenant=\"acme\"}",
        "weir_forwarded_events_total{backend=\"dd-b\",tenant=\"beta\"}",
        "weir_backend_dropped_events_total{backend=\"dd-a\",reason=\"retries_exhausted\",tenant=\"acme\"}",
        "weir_backend_failovers_total{from=\"dd-a\",tenant=\"acme\",to=\"dd-b\"}",
        "weir_backend_requests_total{backend=\"dd-b\",outcome=\"retryable_error\"}",
        "weir_backend_retries_total{backend=\"dd-a\"}",
        "weir_rate_limited_requests_total{tenant=\"acme\"}",
        "weir_rule_matched_events_total{rule=\"no-debug\",tenant=\"acme\"}",
        "weir_rule_excluded_events_total{rule=\"no-debug\",tenant=\"acme\"}",
        "weir_over_quota_events_total{action=\"archive_only\",tenant=\"acme\"}",
        "weir_plugin_calls_total{plugin=\"tagger\",tenant=\"acme\"}",
        "weir_plugin_errors_total{plugin=\"tagger\",reason=\"timeout\",tenant=\"acme\"}",
        "weir_archived_events_total{tenant=\"beta\"}",
        "weir_pending_events{backend=\"dd-a\",tenant=\"acme\"}",
        "weir_intake_request_duration_seconds_count{intake=\"generic\",outcome=\"refused\"}",
    ] {
        assert_eq!(series(&m, s), Some(0.0), "{s} missing or not 0 at start:\n{m}");
    }
    assert_eq!(
        series(
            &m,
            "weir_quota_limit_events{partition=\"\",tenant=\"acme\"}"
        ),
        Some(1000000.0)
    );
    assert!(
        !m.contains("weir_quota_limit_bytes{"),
        "no byte limit: no series (not -1):\n{m}"
    );
    assert!(
        !m.lines().any(|l| !l.starts_with('#') && l.ends_with(" -1")),
        "{m}"
    );
    // One label per thing: the queue's kind, its tenant, its backend.
    assert!(
        series(
            &m,
            "weir_queued_bytes{backend=\"dd-a\",queue=\"backend\",tenant=\"acme\"}"
        )
        .is_some(),
        "{m}"
    );
    assert!(
        series(
            &m,
            "weir_queued_bytes{backend=\"\",queue=\"archive\",tenant=\"acme\"}"
        )
        .is_some(),
        "{m}"
    );
    assert!(
        series(
            &m,
            "weir_queued_bytes{backend=\"\",queue=\"intake\",tenant=\"\"}"
        )
        .is_some(),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l.starts_with("weir_build_info{commit=\"")
            && l.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && l.ends_with(" 1")),
        "{m}"
    );
    assert_eq!(series(&m, "weir_ready"), Some(1.0));
    assert_eq!(
        series(&m, "weir_up"),
        None,
        "weir_up gave way to weir_ready"
    );

    // The first request shows in the new intake metrics.
    let r = post(&weir.url("/api/v2/logs"), &[KEY], events("x", 4)).await;
    assert_eq!(r.status, 202);
    let m = weir.metrics().await;
    assert_eq!(
        series(
            &m,
            "weir_accepted_requests_total{intake=\"datadog\",tenant=\"acme\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "weir_intake_request_duration_seconds_count{intake=\"datadog\",outcome=\"accepted\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

// Issue 10, "must show": promtool check metrics on a proxy with plugins, rules and quotas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_is_clean() {
    let Ok(version) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        // tests/run.sh installs it, and says so when it cannot (then it sets WEIR_SKIP_PROMTOOL).
        assert!(
            std::env::var_os("WEIR_SKIP_PROMTOOL").is_some(),
            "promtool is not installed (Debian: apt-get install -y --no-install-recommends prometheus); \
             set WEIR_SKIP_PROMTOOL=1 to skip this test knowingly"
        );
        eprintln!("SKIPPED promtool_check_metrics_is_clean: promtool is not installed and WEIR_SKIP_PROMTOOL is set");
        return;
    };
    assert!(version.status.success());
    let (dd, addr) = FakeDatadog::start().await;
    let weir = loaded_weir(addr).await;
    // Traffic through every stage first: series that appear on use (the plugin's own counter) are checked too.
    for (key, r) in [("agent-key", 0), ("beta-key", 1), ("agent-key", 2)] {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[("DD-API-KEY", key)],
            events(&format!("p{r}"), 6),
        )
        .await;
        assert_eq!(resp.status, 202);
    }
    eventually(Duration::from_secs(10), "events forwarded", || {
        (dd.count() > 0).then_some(())
    })
    .await;
    let m = metric_reaches(
        &weir,
        "weir_plugin_calls_total{plugin=\"tagger\",tenant=\"acme\"}",
        2.0,
    )
    .await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("weir_plugin_") && l.contains("name=\"calls\"")),
        "the plugin's own counter is checked too"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

// Issue 10 item 5 and issue 11 item 5: a shutdown that times out with a stuck backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timing_out_counts_undelivered_events_and_exits_non_zero() {
    let closed = free_port();
    let mut weir = Weir::start(&config(
        &format!("127.0.0.1:{closed}"),
        "",
        // With the memory buffer, undelivered events are lost at exit (the disk buffer keeps them: durability.rs).
        "shutdown_timeout: 1s\nbuffer: {type: memory}\n",
    ))
    .await;
    let r = post(&weir.url("/api/v2/logs"), &[KEY], events("s", 5)).await;
    assert_eq!(r.status, 202);
    // The route holds them, trying the backend that is not there.
    let mut m = String::new();
    for _ in 0..200 {
        m = weir.metrics().await;
        if series(
            &m,
            "weir_backend_requests_total{backend=\"dd\",outcome=\"retryable_error\"}",
        )
        .is_some_and(|n| n >= 1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = weir.terminate();
    assert!(
        !status.success(),
        "undelivered events: a non-zero exit ({status})"
    );
    let log = weir.log();
    let root = weir.archive_root();
    let line = log
        .lines()
        .find(|l| l.contains("not delivered") && l.contains("acme") && l.contains("events=5"))
        .unwrap_or_else(|| panic!("no count per tenant and backend:\n{log}"));
    assert!(line.contains("dd"), "{line}");
    assert!(
        line.contains(&format!("{}/acme/", root.display())),
        "says where they still are: {line}"
    );
    // And they are there.
    let (archived, _) = read_archive(&root);
    assert_eq!(archived.len(), 5, "{log}");
    // While it ran, the same count was a metric.
    assert_eq!(
        series(&m, "weir_pending_events{backend=\"dd\",tenant=\"acme\"}"),
        Some(5.0),
        "{m}"
    );
}

// Issue 10 item 5 with the disk buffer (the default): what a timed-out
// shutdown leaves undelivered is said per tenant and destination, with where
// it is; exit 0, since the events are safe in the log for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timing_out_with_the_disk_buffer_says_what_is_left_where_and_exits_0() {
    let closed = free_port();
    let config = config(&format!("127.0.0.1:{closed}"), "", "shutdown_timeout: 1s\n");
    let mut weir = Weir::start(&config).await;
    let r = post(&weir.url("/api/v2/logs"), &[KEY], events("d", 5)).await;
    assert_eq!(r.status, 202);
    let tried = "weir_backend_requests_total{backend=\"dd\",outcome=\"retryable_error\"}";
    let mut m = String::new();
    for _ in 0..200 {
        m = weir.metrics().await;
        if series(&m, tried).is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(series(&m, tried).is_some_and(|n| n >= 1.0), "{m}");
    let status = weir.terminate();
    let log = weir.log();
    assert!(
        status.success(),
        "the events are safe: exit 0 ({status}): {log}"
    );
    let wal = weir.dir.path().join("data/wal/acme");
    let line = log
        .lines()
        .find(|l| l.contains("safe in the disk buffer") && l.contains("acme"))
        .unwrap_or_else(|| panic!("no count per tenant:\n{log}"));
    assert!(line.contains("route"), "names the destination: {line}");
    assert!(line.contains("events=5"), "counts them: {line}");
    assert!(
        line.contains(&wal.display().to_string()),
        "says where they are: {line}"
    );
    // The archive writer finished: nothing is left for it.
    assert!(
        !log.lines()
            .any(|l| l.contains("safe in the disk buffer") && l.contains("archive")),
        "{log}"
    );

    // And the next start delivers those 5.
    let dd = FakeDatadog::start_on(closed).await;
    let weir = Weir::start_in(weir.into_dir(), &config).await;
    eventually(Duration::from_secs(20), "the 5 delivered", || {
        (dd.count() >= 5).then_some(())
    })
    .await;
    assert_eq!(dd.count(), 5);
    drop(weir);
}
