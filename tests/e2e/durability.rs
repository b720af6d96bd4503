//! The disk buffer with real processes: weir killed with SIGKILL under load
//! and restarted, its only backend down for part of the run, a backend
//! outage longer than memory could hold, and log segments damaged between
//! runs. What a 202 acknowledged must reach the backend and the archive.
use crate::harness::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");

/// One tenant whose only backend is the blackhole on `port`, archive on,
/// small log segments (so segments roll and are deleted during the test).
fn durable_config(port: u16, buffer: &str) -> String {
    routed_config(
        &format!(
            "  - name: sink\n    type: http\n    url: http://127.0.0.1:{port}/ingest\n    format: ndjson\n    request_timeout: 1s\n    batch: {{max_wait: 50ms, max_events: 500}}\n    retry: {{initial_backoff: 20ms, max_backoff: 300ms}}\n    passive: {{max_failures: 2, ejection: 500ms, max_ejection: 1s}}\n"
        ),
        "",
        "  - {name: acme, api_keys: [agent-key], backend: sink}\n",
    )
    .replace(
        "archive:\n",
        &format!("buffer:\n  segment_bytes: 1MiB\n  max_bytes_per_tenant: 64MiB\n{buffer}archive:\n  max_object_age: 1s\n"),
    )
}

/// Counts each id's copies in `got`; panics naming the first acknowledged id missing.
fn check_delivered(what: &str, acked: &HashSet<String>, got: &[String]) -> usize {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in got {
        *seen.entry(m.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
}

fn archived_messages(root: &std::path::Path) -> Vec<String> {
    let (events, _) = read_archive(root);
    events
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

/// Sends requests of 20 events from `agents` concurrent agents to whatever
/// `url` says until `stop`; every id answered 202 goes into `acked`.
fn agents(
    agents: usize,
    url: Arc<Mutex<String>>,
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize)>> {
    (0..agents)
        .map(|a| {
            let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                for r in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<String> = (0..20).map(|i| format!("a{a}-r{r}-e{i}")).collect();
                    let body = json_logs(20, |i| json!({"message": ids[i]}));
                    let target = url.lock().unwrap().clone();
                    match try_post(&target, &[KEY], body).await {
                        Ok(202) => {
                            ok += 1;
                            acked.lock().unwrap().extend(ids);
                        }
                        // Refused (503 while the log is full) or no answer (killed): not acknowledged.
                        _ => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_ten_kill9s_and_a_backend_outage() {
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let mut sink = Blackhole::start(0, &record, None).await;
    let port = sink.port;
    let config = durable_config(port, "");
    let mut weir = Weir::start(&config).await;
    let url = Arc::new(Mutex::new(weir.url("/api/v2/logs")));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = agents(4, url.clone(), acked.clone(), stop.clone());

    // Ten kills at moments spread over the run (pseudo-random, reproducible);
    // the backend is down from the third kill to the sixth.
    let mut rng = 0x9e37_79b9_u64;
    for kill in 0..10 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(300 + rng % 700)).await;
        let dir = weir.into_dir(); // SIGKILL, no goodbye
        if kill == 3 {
            sink.kill9();
        }
        if kill == 6 {
            sink = Blackhole::start(port, &record, None).await;
        }
        weir = Weir::start_in(dir, &config).await;
        *url.lock().unwrap() = weir.url("/api/v2/logs");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for h in load {
        let (o, f) = h.await.unwrap();
        ok += o;
        failed += f;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        ok > 50,
        "the agents got through: {ok} requests acknowledged"
    );

    // A graceful stop, then a start: whatever is still in the log goes out.
    assert!(weir.terminate().success(), "{}", weir.log());
    let weir = Weir::start_in(weir.into_dir(), &config).await;
    let delivered = eventually(
        Duration::from_secs(60),
        "every acked event at the backend",
        || {
            let got = sink.received();
            let set: HashSet<&String> = got.iter().collect();
            acked.iter().all(|id| set.contains(id)).then_some(got)
        },
    )
    .await;
    let dup_backend = check_delivered("backend", &acked, &delivered);
    let root = weir.archive_root();
    let archived = eventually(
        Duration::from_secs(30),
        "every acked event in the archive",
        || {
            let got = archived_messages(&root);
            let set: HashSet<&String> = got.iter().collect();
            acked.iter().all(|id| set.contains(id)).then_some(got)
        },
    )
    .await;
    let dup_archive = check_delivered("archive", &acked, &archived);
    let m = weir.metrics().await;
    let lost = metric(
        &m,
        "weir_buffer_lost_events_total{destination=\"route\",tenant=\"acme\"}",
    );
    eprintln!(
        "crash loop: {} events acknowledged in {ok} requests ({failed} refused or unanswered); duplicates: {dup_backend} at the backend, {dup_archive} in the archive",
        acked.len()
    );
    assert_eq!(lost, 0.0, "a SIGKILL tears at most an unacknowledged tail");
    // Everything read and acknowledged: the log shrinks back to its open segment.
    eventually(
        Duration::from_secs(10),
        "the log back to one segment",
        || {
            let segs = std::fs::read_dir(weir.dir.path().join("data/wal/acme/seg"))
                .unwrap()
                .count();
            (segs == 1).then_some(())
        },
    )
    .await;
}
