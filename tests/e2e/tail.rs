//! Live tail against the real binary: `weir tail` (the CLI, a process of its
//! own) follows a tenant while agents send; the events it prints are exactly
//! the matching ones, each with the fate the stages gave it.
use crate::harness::*;
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "tail-admin-token";

/// Two tenants: `acme` with rules (archive only, drop, a half sample), and
/// `capped` with a daily quota of 3 events; at most 2 tails open.
fn tail_config(backend: &str) -> String {
    let rules = "    exclusion_rules:\n      - {name: noisy, query: \"service:noise\"}\n      - {name: drop-chatty, query: \"service:chatty\", action: drop}\n      - {name: half, query: \"service:half\", sample_rate: 0.5}\n  - name: capped\n    api_keys: [capped-key]\n    backend: dd\n    upstream_api_key: upstream-secret\n    daily_quota: {max_events: 3, action: archive_only}\n";
    let c = with_admin_token(&config(backend, "", rules), TOKEN);
    c.replace("  token: ", "  max_tails: 2\n  token: ")
}

/// `weir tail` as a process, its stdout lines arriving on a channel.
struct TailCli {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl TailCli {
    fn start(weir: &Weir, args: &[&str]) -> TailCli {
        let admin = format!("127.0.0.1:{}", weir.admin);
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["tail", "--admin", &admin])
            .args(args)
            .env("WEIR_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        TailCli { child, lines }
    }

    /// The next `n` lines as JSON, waiting up to 20 s in all.
    fn take(&self, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let line = self
                    .lines
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("only {i} of {n} tailed lines arrived"));
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
            })
            .collect()
    }
}

impl Drop for TailCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn send(weir: &Weir, key: &str, logs: Vec<Value>) {
    let body = serde_json::to_vec(&logs).unwrap();
    let r = post(&weir.url("/api/v2/logs"), &[("DD-API-KEY", key)], body).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

fn logs(service: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"message": format!("{service} {i}"), "service": service, "status": "info"}))
        .collect()
}

/// Waits until exactly `n` tails are open (`weir_tails_open`).
async fn tails_open(weir: &Weir, n: f64) {
    for _ in 0..400 {
        if metric_opt(&weir.metrics().await, "weir_tails_open") == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("weir_tails_open never became {n}: {}", weir.metrics().await);
}

/// (message, disposition, rule or quota or plugin) of each tailed line.
fn fates(lines: &[Value]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = lines
        .iter()
        .map(|l| {
            let by = ["rule", "quota"]
                .iter()
                .find_map(|k| l[*k].as_str())
                .unwrap_or("")
                .to_string();
            (
                l["event"]["message"].as_str().unwrap().to_string(),
                l["disposition"].as_str().unwrap().to_string(),
                by,
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_shows_matching_events_with_their_fate() {
    let (_dd, addr) = FakeDatadog::start().await;
    let mut weir = Weir::start(&tail_config(&addr.to_string())).await;
    let acme = TailCli::start(
        &weir,
        &["--tenant", "acme", "--query", "-service:db", "--json"],
    );
    let capped = TailCli::start(&weir, &["--tenant", "capped", "--json"]);
    tails_open(&weir, 2.0).await;

    let mut batch = logs("web", 2);
    batch.extend(logs("noise", 2));
    batch.extend(logs("db", 3));
    batch.extend(logs("chatty", 2));
    batch.extend(logs("half", 20));
    send(&weir, "agent-key", batch).await;
    send(&weir, "capped-key", logs("paid", 3)).await;
    send(&weir, "capped-key", logs("over", 2)).await;

    let got = acme.take(26);
    let seen = fates(&got);
    let expected = [
        ("chatty 0", "dropped", "drop-chatty"),
        ("chatty 1", "dropped", "drop-chatty"),
        ("noise 0", "excluded", "noisy"),
        ("noise 1", "excluded", "noisy"),
        ("web 0", "indexed", ""),
        ("web 1", "indexed", ""),
    ];
    let mut others: Vec<_> = seen
        .iter()
        .filter(|(m, ..)| !m.starts_with("half"))
        .cloned()
        .collect();
    others.sort();
    assert_eq!(
        others,
        expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect::<Vec<_>>()
    );
    // The half sample: each event either excluded or sampled (kept) by `half`, both seen
    // (all 20 alike has probability 2^-19).
    let half: Vec<_> = seen
        .iter()
        .filter(|(m, ..)| m.starts_with("half"))
        .collect();
    assert_eq!(half.len(), 20);
    assert!(half.iter().all(|(_, _, rule)| rule == "half"), "{half:?}");
    assert!(half.iter().any(|(_, d, _)| d == "sampled"), "{half:?}");
    assert!(half.iter().any(|(_, d, _)| d == "excluded"), "{half:?}");
    assert!(got.iter().all(|l| l["intake"] == "datadog"));

    let capped_seen = fates(&capped.take(5));
    assert_eq!(
        capped_seen,
        [
            ("over 0", "over_quota", "archive_only"),
            ("over 1", "over_quota", "archive_only"),
            ("paid 0", "indexed", ""),
            ("paid 1", "indexed", ""),
            ("paid 2", "indexed", ""),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect::<Vec<_>>()
    );
    // Nothing else came: the `db` events did not match the query.
    send(&weir, "agent-key", logs("web-last", 1)).await;
    let last = acme.take(1);
    assert_eq!(last[0]["event"]["message"], "web-last 0");
    assert!(acme.lines.try_recv().is_err());

    // A closed tail frees its place.
    drop(acme);
    drop(capped);
    tails_open(&weir, 0.0).await;
    assert!(weir.terminate().success(), "{}", weir.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_refusals_are_clear() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&tail_config(&addr.to_string())).await;
    let admin = format!("127.0.0.1:{}", weir.admin);
    let run = |args: &[&str], token: &str| {
        let mut all = vec!["tail", "--admin", admin.as_str()];
        all.extend_from_slice(args);
        weir_cli_env(&all, &[("WEIR_ADMIN_TOKEN", token)])
    };
    let (code, _, err) = run(&["--tenant", "nobody"], TOKEN);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("no tenant \"nobody\""),
        "{err}"
    );
    let (code, _, err) = run(&["--tenant", "acme", "--query", "status:(error"], TOKEN);
    assert_eq!(code, 1);
    assert!(
        err.contains("400") && err.contains("status:(error"),
        "{err}"
    );
    let (code, _, err) = run(&["--tenant", "acme"], "wrong");
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = run(&["--tenant", "acme", "--rate", "999999"], TOKEN);
    assert_eq!(code, 1);
    assert!(err.contains("rate"), "{err}");

    // The cap (2): a third tail is refused with 429 and Retry-After.
    let _a = TailCli::start(&weir, &["--tenant", "acme"]);
    let _b = TailCli::start(&weir, &["--tenant", "capped"]);
    tails_open(&weir, 2.0).await;
    let r = request(
        http::Method::GET,
        &format!("http://{admin}/admin/tail?tenant=acme"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    assert!(r.error().contains("admin.max_tails"), "{}", r.error());
}

/// A plugin's verdicts as the tail tells them: dropped or excluded by which plugin,
/// and the event as the plugin left it (the ABI fixture: event i % 3 == 0 kept with
/// its message replaced by "redacted", 1 dropped, 2 archive only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_names_the_plugin_that_decided() {
    let (_dd, addr) = FakeDatadog::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wat = plugin_wat(1, "", "(i64.const 0)", "");
    std::fs::write(dir.path().join("verdicts.wat"), wat).unwrap();
    let extra = "    plugins:\n      - {name: verdicts, path: \"{DIR}/verdicts.wat\"}\n";
    let config = with_admin_token(&config(&addr.to_string(), "", extra), TOKEN);
    let weir = Weir::start_in(dir, &config).await;
    let tail = TailCli::start(&weir, &["--tenant", "acme", "--json"]);
    tails_open(&weir, 1.0).await;
    send(&weir, "agent-key", logs("p", 3)).await;
    let got = tail.take(3);
    let seen: Vec<_> = got
        .iter()
        .map(|l| {
            (
                l["event"]["message"].as_str().unwrap().to_string(),
                l["disposition"].as_str().unwrap().to_string(),
                l["plugin"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("redacted".to_string(), "indexed".to_string(), Value::Null),
            (
                "p 1".to_string(),
                "dropped".to_string(),
                json!({"name": "verdicts", "call_failed": false})
            ),
            (
                "p 2".to_string(),
                "excluded".to_string(),
                json!({"name": "verdicts", "call_failed": false})
            ),
        ]
    );
}
