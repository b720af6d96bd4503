//! Wasm plugins against the real binary: a plugin stuck in a loop costs only
//! its own tenant's batches (its on_error policy), never another tenant's
//! traffic; a well-behaved plugin redacts before the archive tee.
use crate::harness::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// The same ABI v1 WAT module as the unit tests (proxy/src/plugin/tests.rs): it
// answers by index, i % 3 == 0 keep with message "redacted", 1 drop, 2 archive_only.
fn plugin_wat(version: i32, extra_imports: &str, init_body: &str, hook: &str) -> String {
    include_str!("../fixtures/abi_v1_plugin.wat")
        .replace("@version@", &version.to_string())
        .replace("@extra_imports@", extra_imports)
        .replace("@init_body@", init_body)
        .replace("@hook@", hook)
}


fn find_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn logs(prefix: &str, n: usize) -> Vec<u8> {
    let v: Vec<Value> = (0..n).map(|i| json!({"message": format!("{prefix} secret {i}"), "service": "web", "id": format!("{prefix}-{i}")})).collect();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_plugin_on_one_tenant_does_not_stop_another() {
    let (dd, addr) = FakeDatadog::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.wat"), plugin_wat(1, "", "(i64.const 0)", "(loop $spin (br $spin))")).unwrap();
    std::fs::write(dir.path().join("redact.wat"), plugin_wat(1, "", "(i64.const 0)", "")).unwrap();
    let extra = "    plugins:\n      - {name: spin, path: \"{DIR}/spin.wat\", on_error: archive_only, timeout: 50ms}\n  - name: beta\n    api_keys: [beta-key]\n    backend: dd\n    upstream_api_key: up2\n    plugins:\n      - {name: redact, path: \"{DIR}/redact.wat\", config: {fields: [password]}}\n";
    let weir = Weir::start_in(dir, &config(&addr.to_string(), "", extra)).await;

    let stuck = async {
        for r in 0..8 {
            let resp = post(&weir.url("/api/v2/logs"), &[("DD-API-KEY", "agent-key")], logs(&format!("a{r}"), 3)).await;
            assert_eq!(resp.status, 202, "a failing plugin costs the batch its on_error, not the request: {}", resp.text());
        }
    };
    let fine = async {
        let mut worst = Duration::ZERO;
        for r in 0..20 {
            let start = Instant::now();
            let resp = post(&weir.url("/api/v2/logs"), &[("DD-API-KEY", "beta-key")], logs(&format!("b{r}"), 4)).await;
            assert_eq!(resp.status, 202, "{}", resp.text());
            worst = worst.max(start.elapsed());
        }
        worst
    };
    let ((), worst) = tokio::join!(stuck, fine);
    assert!(worst < Duration::from_secs(2), "tenant beta waited {worst:?}");

    let m = weir.metrics().await;
    assert!(find_metric(&m, "weir_plugin_errors_total", &["plugin=\"spin\"", "reason=\"timeout\""]) >= 1.0, "{m}");
    assert_eq!(find_metric(&m, "weir_plugin_quarantined", &["plugin=\"spin\"", "tenant=\"acme\""]), 1.0, "5 failures in a row quarantine it");
    assert_eq!(find_metric(&m, "weir_plugin_calls_total", &["plugin=\"redact\"", "tenant=\"beta\""]), 20.0);
    assert_eq!(find_metric(&m, "weir_plugin_errors_total", &["plugin=\"redact\""]), 0.0);

    // beta: per request of 4, events 0 and 3 indexed as "redacted", 1 dropped, 2 archived only.
    let got = eventually(Duration::from_secs(10), "beta's indexed events", || {
        let n = dd.count();
        (n >= 40).then_some(())
    })
    .await;
    let _ = got;
    let mut weir = weir;
    assert!(weir.terminate().success(), "{}", weir.log());
    let indexed = dd.take();
    assert_eq!(indexed.len(), 40, "acme's events are archive_only (on_error), beta's drop/archive_only are not indexed");
    assert!(indexed.iter().all(|e| e["message"] == "redacted"), "{indexed:?}");
    let (archived, _) = read_archive(&weir.archive_root());
    let acme = archived.iter().filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with('a'))).count();
    assert_eq!(acme, 24, "every event of the stuck tenant is archived");
    let beta_redacted = archived.iter().filter(|e| e["message"] == "redacted").count();
    let beta_original = archived.iter().filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with('b'))).count();
    assert_eq!((beta_redacted, beta_original), (40, 20), "redaction happens before the archive tee; the dropped event is not archived");
    let log = weir.log();
    assert!(log.contains("plugin call failed") && log.contains("quarantined"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

fn weir_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_refuses_a_plugin_of_another_abi_version_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("v2.wat"), plugin_wat(2, "", "(i64.const 0)", "")).unwrap();
    std::fs::write(dir.path().join("v1.wat"), plugin_wat(1, "", "(i64.const 0)", "")).unwrap();
    let text = format!("listeners: [{{name: i, address: \"127.0.0.1:1\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/a}}}}\nbackends: [{{name: b, type: file, path: {d}/o}}]\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: b\n    plugins:\n      - {{name: ok, path: {d}/v1.wat}}\n      - {{name: old, path: {d}/v2.wat}}\n");
    let path = dir.path().join("w.yaml");
    std::fs::write(&path, &text).unwrap();
    let (code, _, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("tenants[0].plugins[1]") && err.contains("ABI version 2"), "{err}");
    std::fs::write(&path, text.replace("v2.wat", "v1.wat")).unwrap();
    let (code, out, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"));
}

#[test]
fn plugin_test_prints_verdicts_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("p.wat");
    std::fs::write(&wat, plugin_wat(1, "", "(i64.const 0)", "")).unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\nthree\n").unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"fields": ["password"]}"#).unwrap();
    let (code, out, err) = weir_cli(&["plugin", "test", wat.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!((lines[0]["verdict"].as_str(), lines[0]["event"]["message"].as_str()), (Some("keep"), Some("redacted")));
    assert_eq!((lines[1]["verdict"].as_str(), lines[1]["event"]["message"].as_str()), (Some("drop"), Some("two")));
    assert_eq!(lines[2]["verdict"], "archive_only");
    assert!(err.contains("3 events") && err.contains("process"), "{err}");

    // A failing plugin: exit 1 with the reason.
    std::fs::write(&wat, plugin_wat(1, "", "(i64.const 0)", "(loop $spin (br $spin))")).unwrap();
    let (code, _, err) = weir_cli(&["plugin", "test", wat.to_str().unwrap(), "--input", input.to_str().unwrap(), "--timeout", "30ms"]);
    assert_eq!(code, 1);
    assert!(err.contains("timeout"), "{err}");
}
