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

/// Waits until tenant acme's log is back to its one open segment (all read, acknowledged, deleted).
async fn log_empties(weir: &Weir, limit: Duration) {
    let seg = weir.dir.path().join("data/wal/acme/seg");
    eventually(limit, "the log back to one segment", || {
        (std::fs::read_dir(&seg).unwrap().count() == 1).then_some(())
    })
    .await;
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
    log_empties(&weir, Duration::from_secs(10)).await;
}

/// Sends `requests` requests of 50 padded events (about 10 KB each), one
/// at a time; returns the ids, in order.
async fn send_numbered(weir: &Weir, prefix: &str, requests: usize) -> Vec<String> {
    let pad = "x".repeat(150);
    let mut ids = Vec::new();
    for r in 0..requests {
        let batch: Vec<String> = (0..50).map(|i| format!("{prefix}-{r:05}-{i:02}")).collect();
        let body = json_logs(50, |i| json!({"message": batch[i], "pad": pad}));
        let resp = post(&weir.url("/api/v2/logs"), &[KEY], body).await;
        assert_eq!(resp.status, 202, "{}", resp.text());
        ids.extend(batch);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_segments_lose_only_their_records_and_a_replay_is_not_charged_again() {
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let port = free_port();
    // A rule that counts what it matches: a replayed event must not be counted again.
    let config = durable_config(port, "")
        .replace("{name: acme, api_keys: [agent-key], backend: sink}", "{name: acme, api_keys: [agent-key], backend: sink, exclusion_rules: [{name: every, query: '*', sample_rate: 0.0}]}")
        .replace("admin:\n", "shutdown_timeout: 2s\nadmin:\n");
    // The backend is down: every record stays in the log.
    let mut weir = Weir::start(&config).await;
    let ids = send_numbered(&weir, "d", 400).await;
    let m = weir.metrics().await;
    let matched = "weir_rule_matched_events_total{rule=\"every\",tenant=\"acme\"}";
    assert_eq!(metric(&m, matched), ids.len() as f64);
    // SIGTERM with the backend down: Weir stops within the timeout, exits 0, the events stay in the log.
    let status = weir.terminate();
    assert!(status.success(), "{status}: {}", weir.log());
    assert!(
        weir.log().contains("safe in the disk buffer"),
        "{}",
        weir.log()
    );
    let dir = weir.into_dir();

    // Damage: flip bytes in the middle of the first segment, cut the second mid-record.
    let seg_dir = dir.path().join("data/wal/acme/seg");
    let mut segs: Vec<_> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "several segments: {segs:?}");
    let mut first = std::fs::read(&segs[0]).unwrap();
    let mid = first.len() / 2;
    for b in &mut first[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&segs[0], first).unwrap();
    let second = std::fs::metadata(&segs[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(second * 2 / 3 + 7)
        .unwrap();

    // Back up: Weir starts normally and delivers every intact record.
    let _sink = Blackhole::start(port, &record, None).await;
    let weir = Weir::start_in(dir, &config).await;
    let lost_series = "weir_buffer_lost_events_total{destination=\"route\",tenant=\"acme\"}";
    let (got, lost) = eventually(Duration::from_secs(60), "the log read to its end", || {
        let got: HashSet<String> = received(&record).into_iter().collect();
        let m = futures::executor::block_on(weir.metrics());
        let lost = metric(&m, lost_series) as usize;
        (lost > 0 && got.len() + lost == ids.len()).then_some((got, lost))
    })
    .await;
    // Whole requests are lost (a record is one request), nothing else.
    assert_eq!(lost % 50, 0, "{lost}");
    let missing: Vec<&String> = ids.iter().filter(|id| !got.contains(*id)).collect();
    assert_eq!(missing.len(), lost);
    let m = weir.metrics().await;
    assert!(
        metric(
            &m,
            "weir_buffer_damaged_records_total{destination=\"route\",tenant=\"acme\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_buffer_replayed_events_total{destination=\"route\",tenant=\"acme\"}"
        ) as usize,
        got.len()
    );
    assert_eq!(
        metric(&m, matched),
        0.0,
        "rules do not run again on replayed events"
    );
    // The archive (up all along) wrote every record before the damage.
    let root = weir.archive_root();
    let all: HashSet<String> = ids.iter().cloned().collect();
    let archived: HashSet<String> = archived_messages(&root).into_iter().collect();
    assert_eq!(archived, all);
    eprintln!(
        "corruption: {} events in 400 records, {lost} lost in damaged records, {} delivered",
        ids.len(),
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_memory_drains_in_order_and_the_log_empties() {
    const REQUESTS: usize = 2000;
    const PER_REQUEST: usize = 1000;
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let port = free_port();
    // One send at a time and a small memory queue, so order is the log's order
    // except within what the queue holds when the backend comes back.
    let config = durable_config(port, "  max_bytes_per_tenant: 1GiB\n  max_bytes: 1GiB\n")
        .replace(
            "    request_timeout: 1s\n",
            "    request_timeout: 1s\n    max_in_flight: 1\n    max_queued_bytes: 1MiB\n",
        )
        .replace("  max_bytes_per_tenant: 64MiB\n", "")
        .replace(
            "admin:\n",
            "limits: {max_body_bytes: 1MiB, max_decompressed_bytes: 1MiB}\nadmin:\n",
        );
    let weir = Weir::start(&config).await;
    // 2 million events while the only backend is down: far more than memory holds.
    let url = weir.url("/api/v2/logs");
    for r in 0..REQUESTS {
        let body = json_logs(
            PER_REQUEST,
            |i| json!({"message": format!("{:07}", r * PER_REQUEST + i)}),
        );
        let resp = post(&url, &[KEY], body).await;
        assert_eq!(resp.status, 202, "request {r}: {}", resp.text());
    }
    let total = REQUESTS * PER_REQUEST;
    let rss_outage = weir.peak_rss();
    let m = weir.metrics().await;
    let log_bytes = metric(&m, "weir_buffer_bytes{tenant=\"acme\"}");
    let oldest = metric(
        &m,
        "weir_buffer_oldest_undelivered_seconds{destination=\"route\",tenant=\"acme\"}",
    );
    assert!(
        oldest >= 1.0,
        "the outage shows in the oldest undelivered age: {oldest}"
    );
    // The backend comes back: the backlog drains.
    let _sink = Blackhole::start(port, &record, None).await;
    let forwarded = "weir_forwarded_events_total{backend=\"sink\",tenant=\"acme\"}";
    eventually(Duration::from_secs(300), "the backlog delivered", || {
        let m = futures::executor::block_on(weir.metrics());
        (metric(&m, forwarded) as usize >= total).then_some(())
    })
    .await;
    let got = received(&record);
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for id in &got {
        if seen.insert(id.as_str()) {
            firsts.push(id.parse::<usize>().unwrap());
        }
    }
    assert_eq!(seen.len(), total, "every event delivered");
    // How far back an event arrives after a later one: bounded by the memory queue.
    let mut newest = 0;
    let mut late = 0;
    for &n in &firsts {
        newest = newest.max(n);
        late = late.max(newest - n);
    }
    let window = (1 << 20) / 10 + 500; // the queue's bytes over the smallest line, plus a batch
    assert!(
        late <= window,
        "out of order by {late} events (window {window})"
    );
    log_empties(&weir, Duration::from_secs(20)).await;
    eprintln!(
        "outage: {total} events held through the outage in a {:.0} MB log (oldest {oldest} s); peak RSS {} MB during it; delivered all after, {} duplicates, at most {late} events out of order",
        log_bytes / 1e6,
        rss_outage >> 20,
        got.len() - total
    );
}

/// Mounts a tmpfs of `mib` MiB at `at`; false when this machine does not let
/// the test (not root).
fn mount_tmpfs(at: &std::path::Path, mib: u32) -> bool {
    std::fs::create_dir_all(at).unwrap();
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_recovers_by_itself_when_space_frees() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    if !mount_tmpfs(&data, 6) {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the disk-full test did not run"
        );
        return;
    }
    let _unmount = Unmount(data.clone());
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let port = free_port();
    // The log may grow to 64 MiB, but its file system holds 6: the disk fills first.
    let config = durable_config(port, "");
    let weir = Weir::start_in(dir, &config).await;
    let url = weir.url("/api/v2/logs");
    let pad = "x".repeat(150);
    let mut acked = HashSet::new();
    let mut full_at = None;
    for r in 0..2000 {
        let ids: Vec<String> = (0..50).map(|i| format!("f-{r:05}-{i:02}")).collect();
        let body = json_logs(50, |i| json!({"message": ids[i], "pad": pad}));
        let resp = post(&url, &[KEY], body).await;
        match resp.status {
            202 => acked.extend(ids),
            503 => {
                assert!(resp.error().contains("disk buffer"), "{}", resp.text());
                full_at = Some(r);
                break;
            }
            s => panic!("unexpected {s}: {}", resp.text()),
        }
    }
    let full_at = full_at.expect("the disk filled up");
    let ready = get(&format!("http://127.0.0.1:{}/readyz", weir.admin))
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(
        ready.json()["buffer"]["status"],
        "failing",
        "{}",
        ready.text()
    );
    let m = weir.metrics().await;
    assert!(metric(&m, "weir_buffer_write_errors_total{tenant=\"acme\"}") >= 1.0);
    assert!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"buffer_write_failed\"}"
        ) >= 1.0
    );

    // Fill what is left and restart on the full disk, killed as a crash would: weir must
    // start (not exit in a loop under its supervisor), say it is not ready, and drain its log.
    fill(&data.join("filler"));
    let weir = Weir::start_answering_in(weir.into_dir(), &config).await;
    let url = weir.url("/api/v2/logs");
    let readyz = format!("http://127.0.0.1:{}/readyz", weir.admin);
    let ready = get(&readyz).await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(
        ready.json()["buffer"]["status"],
        "failing",
        "{}",
        ready.text()
    );

    // The backend comes back: the log drains, its segments go, space frees. No request is
    // sent: behind a load balancer that heeds /readyz none would come, so weir finds out itself.
    let _sink = Blackhole::start(port, &record, None).await;
    eventually(
        Duration::from_secs(60),
        "ready again with no request sent",
        || {
            let r = futures::executor::block_on(get(&readyz)).ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await;
    let mut again = false;
    for r in 0..100 {
        let ids: Vec<String> = (0..50).map(|i| format!("g-{r:05}-{i:02}")).collect();
        let body = json_logs(50, |i| json!({"message": ids[i], "pad": pad}));
        if post(&url, &[KEY], body).await.status == 202 {
            acked.extend(ids);
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again, "intake takes requests again once space frees");
    let got = eventually(
        Duration::from_secs(30),
        "every acked event delivered",
        || {
            let got = received(&record);
            let set: HashSet<&String> = got.iter().collect();
            acked.iter().all(|id| set.contains(id)).then_some(got)
        },
    )
    .await;
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_buffer_lost_events_total{destination=\"route\",tenant=\"acme\"}"
        ),
        0.0,
        "no record damaged by the full disk"
    );
    eprintln!(
        "disk full: the 6 MiB file system filled after {full_at} requests; 503 until space freed; {} acknowledged events all delivered ({} copies)",
        acked.len(),
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_delivered_answers_once_the_backend_has_the_events_and_received_at_once() {
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let port = free_port();
    let config = durable_config(port, "  delivered_timeout: 1s\n").replace(
        "  - {name: acme, api_keys: [agent-key], backend: sink}\n",
        "  - {name: acme, api_keys: [agent-key], backend: sink, ack: delivered}\n  - {name: fast, api_keys: [fast-key], backend: sink, ack: received}\n",
    );
    let weir = Weir::start(&config).await;
    let url = weir.url("/api/v2/logs");
    let one = |m: &str| json_logs(1, |_| json!({"message": m}));
    // Backend down: `delivered` cannot answer 202; after the timeout, 503 (the event stays in the log).
    let r = post(&url, &[KEY], one("waited")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.error().contains("not delivered"), "{}", r.text());
    // `received` answers at once, backend or not.
    let r = post(&url, &[("DD-API-KEY", "fast-key")], one("quick")).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let _sink = Blackhole::start(port, &record, None).await;
    // The one refused with 503 was in the log all along: delivered once the backend is back
    // (an agent's retry would duplicate it).
    eventually(
        Duration::from_secs(10),
        "the earlier events delivered",
        || {
            let got = received(&record);
            ["waited", "quick"]
                .iter()
                .all(|m| got.contains(&m.to_string()))
                .then_some(())
        },
    )
    .await;
    // Backend up: a 202 means the backend already has it.
    let r = post(&url, &[KEY], one("confirmed")).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let got = received(&record);
    assert!(got.contains(&"confirmed".to_string()), "{got:?}");
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"not_delivered\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_drops_newest_when_told_to_and_a_backlog_drains_at_its_rate() {
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let port = free_port();
    // The smallest log (two 1 MiB segments), dropping what does not fit; a backlog sent at 4,000 events/s.
    let config = durable_config(port, "  when_full: drop_newest\n  drain_rate: 4000\n").replace(
        "  max_bytes_per_tenant: 64MiB\n",
        "  max_bytes_per_tenant: 2MiB\n",
    );
    let weir = Weir::start(&config).await;
    let ids = send_numbered(&weir, "n", 300).await; // ~3 MB: more than the log holds, all answered 202
    let m = weir.metrics().await;
    let dropped = metric(&m, "weir_buffer_dropped_events_total{tenant=\"acme\"}") as usize;
    assert!(dropped > 0, "the log filled up");
    let kept = ids.len() - dropped;
    // The backend comes back: the backlog goes out no faster than the drain rate.
    let started = std::time::Instant::now();
    let _sink = Blackhole::start(port, &record, None).await;
    let got = eventually(Duration::from_secs(60), "the backlog delivered", || {
        let got: HashSet<String> = received(&record).into_iter().collect();
        (got.len() >= kept).then_some(got)
    })
    .await;
    let took = started.elapsed();
    assert_eq!(
        got.len(),
        kept,
        "what was not dropped is delivered, nothing else"
    );
    // A lower bound only (a slow machine takes longer, never shorter): one
    // second's burst, then 4,000 a second.
    let floor = Duration::from_secs_f64(kept.saturating_sub(4000) as f64 / 4000.0);
    assert!(
        took >= floor,
        "{kept} events in {took:?}, faster than 4,000/s"
    );
    // The newest were dropped: what arrived is the oldest part.
    let newest_kept = got.iter().max().unwrap();
    assert!(ids.iter().take(kept).any(|id| id == newest_kept));
    eprintln!("drop_newest: {dropped} of {} events dropped at the limit; {kept} drained at 4,000/s in {took:?}", ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_keep_to_their_tenants_regions() {
    let work = tempfile::tempdir().unwrap();
    let us = Blackhole::start(0, &work.path().join("us.txt"), None).await;
    let eu_port = free_port(); // every EU backend is down
    let backend = |name: &str, port: u16| {
        format!("  - name: {name}\n    type: http\n    url: http://127.0.0.1:{port}/ingest\n    format: ndjson\n    request_timeout: 1s\n    batch: {{max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n    passive: {{max_failures: 2, ejection: 1s}}\n")
    };
    let config = routed_config(
        &(backend("eu1", eu_port) + &backend("us1", us.port)),
        "  - name: eu\n    tiers: [[eu1]]\n  - name: us\n    tiers: [[us1]]\n",
        "  - {name: eu-only, api_keys: [agent-key], region: eu}\n  - {name: eu-flex, api_keys: [flex-key], region: eu, failover_regions: [us]}\n",
    );
    let weir = Weir::start(&config).await;
    let url = weir.url("/api/v2/logs");
    let send = |key: &'static str, prefix: &'static str| {
        let url = url.clone();
        async move {
            let body = json_logs(20, |i| json!({"message": format!("{prefix}-{i}")}));
            assert_eq!(post(&url, &[("DD-API-KEY", key)], body).await.status, 202);
        }
    };
    send("agent-key", "pinned").await;
    send("flex-key", "flexible").await;
    // Killed before anything could be delivered to the EU (there is nothing there), restarted.
    let dir = weir.into_dir();
    let weir = Weir::start_in(dir, &config).await;
    eventually(
        Duration::from_secs(20),
        "eu-flex's events in the US",
        || {
            let got = us.received();
            (0..20)
                .all(|i| got.contains(&format!("flexible-{i}")))
                .then_some(())
        },
    )
    .await;
    // The pinned tenant's events, read again from its log, still wait for the EU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !us.received().iter().any(|m| m.starts_with("pinned")),
        "a replayed event of a pinned tenant crossed into a region it does not allow"
    );
    // They were read again from the log after the kill: the replay is what kept to the region.
    // (Counted by that tenant's own feed, which nothing waited for above.)
    let replayed = "weir_buffer_replayed_events_total{destination=\"route\",tenant=\"eu-only\"}";
    let m = weir.metrics_once(replayed, 20.0).await;
    assert_eq!(metric(&m, replayed), 20.0);
    assert_eq!(
        metric(
            &m,
            "weir_buffer_lost_events_total{destination=\"route\",tenant=\"eu-only\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_their_sync_stay_within_the_intake_memory_budget() {
    let work = tempfile::tempdir().unwrap();
    let record = work.path().join("sink.txt");
    let sink = Blackhole::start(0, &record, None).await;
    // One sync every 2 s: every request waits for it, holding its memory meanwhile.
    let config = durable_config(sink.port, "  sync: 2s\n").replace(
        "admin:\n",
        "limits: {max_body_bytes: 256KiB, max_decompressed_bytes: 256KiB, max_inflight_request_bytes: 1MiB}\nadmin:\n",
    );
    let weir = Weir::start(&config).await;
    let url = weir.url("/api/v2/logs");
    let pad = "y".repeat(1000);
    let sends = (0..20).map(|r| {
        let (url, pad) = (url.clone(), pad.clone());
        async move {
            let body = json_logs(
                100,
                |i| json!({"message": format!("w-{r}-{i}"), "pad": pad}),
            );
            (r, post(&url, &[KEY], body).await)
        }
    });
    let answers = futures::future::join_all(sends).await;
    let taken: Vec<usize> = answers
        .iter()
        .filter(|(_, a)| a.status == 202)
        .map(|(r, _)| *r)
        .collect();
    let busy = answers.iter().filter(|(_, a)| a.status == 503).count();
    assert_eq!(taken.len() + busy, 20, "202 or 503 only");
    // 20 requests of ~100 KB waiting at once would hold 2 MB: the 1 MiB budget refuses some.
    assert!(
        busy > 0 && !taken.is_empty(),
        "{} taken, {busy} refused",
        taken.len()
    );
    let m = weir.metrics().await;
    assert!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"intake_busy\"}"
        ) >= 1.0
    );
    eventually(
        Duration::from_secs(20),
        "the taken requests delivered",
        || {
            let got = received(&record);
            taken
                .iter()
                .all(|r| got.contains(&format!("w-{r}-99")))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_counts_records_still_waiting_to_be_written() {
    let port = free_port(); // backend down: nothing leaves the log
                            // One sync every 2 s, so every request of the burst is still queued when the next one is admitted.
    let config = durable_config(port, "  sync: 2s\n")
        .replace(
            "  max_bytes_per_tenant: 64MiB\n",
            "  max_bytes_per_tenant: 2MiB\n",
        )
        .replace(
            "admin:\n",
            "limits: {max_body_bytes: 256KiB, max_decompressed_bytes: 256KiB, admission_wait: 1s}\nadmin:\n",
        );
    let weir = Weir::start(&config).await;
    let url = weir.url("/api/v2/logs");
    let pad = "z".repeat(1000);
    let sends = (0..40).map(|r| {
        let (url, pad) = (url.clone(), pad.clone());
        async move {
            let body = json_logs(
                100,
                |i| json!({"message": format!("q-{r}-{i}"), "pad": pad}),
            );
            post(&url, &[KEY], body).await
        }
    });
    let answers = futures::future::join_all(sends).await;
    let taken = answers.iter().filter(|a| a.status == 202).count();
    let full = answers
        .iter()
        .filter(|a| a.status == 503 && a.error().contains("full"))
        .count();
    assert_eq!(taken + full, 40, "202 or 503 (full) only");
    for a in answers.iter().filter(|a| a.status == 503) {
        assert_eq!(
            a.headers["retry-after"], "1",
            "a full log says when to retry"
        );
    }
    // 40 records of ~100 KB are 4 MB: past 2 MiB, refused, though none was written yet at admission.
    assert!(full > 0, "{taken} taken, none refused");
    let m = weir.metrics().await;
    let bytes = metric(&m, "weir_buffer_bytes{tenant=\"acme\"}");
    assert!(
        bytes < 3.0 * 1048576.0,
        "the log grew to {bytes} bytes past its 2 MiB limit"
    );
}
