//! What `/metrics` tells an on-call, against the real binary: counts that
//! mean what their help says.
use crate::harness::*;
use serde_json::{json, Value};
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
    let v: Vec<Value> = (0..n)
        .map(|i| json!({"message": format!("{prefix}-{i}"), "service": "web", "status": "info"}))
        .collect();
    serde_json::to_vec(&v).unwrap()
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
        "weir_backend_dropped_events_total{backend=\"dd\",status=\"retries_exhausted\",tenant=\"acme\"}",
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
