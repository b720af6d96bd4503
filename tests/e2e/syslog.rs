//! The `syslog` listener with raw TCP senders, for what the relay daemons of
//! tests/python/test_syslog.py do not do: a message too long to take is
//! skipped and nothing else is lost, a last line sent without its newline
//! counts, and a sender over its tenant's rate limit is held back (TCP
//! stops being read) rather than having its messages dropped.
use crate::harness::*;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn syslog_config(backend: &str, extra: &str) -> String {
    config(backend, "", extra).replace(
        "    protocol: http\n",
        "    protocol: syslog\n    tenant: acme\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_message_is_skipped_and_nothing_else_is_lost() {
    let (dd, addr) = FakeDatadog::start().await;
    let limits = "limits:\n  max_body_bytes: 64KiB\n  max_decompressed_bytes: 64KiB\n";
    let weir = Weir::start(&syslog_config(&addr.to_string(), limits)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", weir.intake))
        .await
        .unwrap();
    let long = "x".repeat(100 << 10);
    let counted = format!("<13>1 - h app - - - {long}");
    let mut bytes = b"<14>1 2026-12-02T21:00:00Z web nginx 7 - - first\n".to_vec();
    bytes.extend(format!("{} {counted}", counted.len()).as_bytes());
    let after = "<13>1 - h app - - - after counted";
    bytes.extend(format!("{} {after}", after.len()).as_bytes());
    bytes.extend(format!("<13>{long}\n").as_bytes());
    bytes.extend(b"<11>Dec  2 20:59:59 db postgres[99]: last, no newline");
    s.write_all(&bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let got = eventually(Duration::from_secs(20), "3 syslog events", || {
        (dd.count() >= 3).then(|| dd.take())
    })
    .await;
    let messages: Vec<&str> = got.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["first", "after counted", "last, no newline"]);
    assert_eq!(got[0]["hostname"], "web");
    assert_eq!(got[0]["service"], "nginx");
    assert_eq!(got[0]["status"], "info");
    assert_eq!(got[0]["syslog"]["procid"], "7");
    assert_eq!(got[0]["timestamp"], 1_796_245_200_000i64);
    assert_eq!(got[2]["hostname"], "db");
    assert_eq!(got[2]["status"], "error");
    let m = weir
        .metrics_once(
            "weir_rejected_requests_total{intake=\"syslog\",reason=\"body_too_large\"}",
            2.0,
        )
        .await;
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"syslog\",reason=\"body_too_large\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_received_events_total{intake=\"syslog\",tenant=\"acme\"}"
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_over_its_rate_limit_is_held_back_not_dropped() {
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = syslog_config(&addr.to_string(), "").replace(
        "    upstream_api_key: upstream-secret\n",
        "    upstream_api_key: upstream-secret\n    rate_limit: {events_per_second: 1000, events_burst: 1000}\n",
    );
    let weir = Weir::start(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", weir.intake))
        .await
        .unwrap();
    let n = 4000;
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(format!("<14>Dec  2 20:59:59 h app: line {i:05}\n").as_bytes());
    }
    s.write_all(&bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let got = eventually(Duration::from_secs(30), "every line", || {
        (dd.count() >= n).then(|| dd.take())
    })
    .await;
    let distinct: BTreeSet<&str> = got.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!((got.len(), distinct.len()), (n, n), "each line once");
    let m = weir.metrics().await;
    assert!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"syslog\",reason=\"rate_limited\"}"
        ) >= 1.0,
        "the sender was held back at least once"
    );
}
