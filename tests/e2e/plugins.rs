//! Wasm plugins against the real binary: a plugin stuck in a loop costs only
//! its own tenant's batches (its on_error policy), never another tenant's
//! traffic; a well-behaved plugin redacts before the archive tee.
use crate::harness::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Batches `plugin` of `tenant` failed, over every `reason` (each series must
/// exist: they are seeded at start, so a misspelt name fails instead of reading 0).
fn plugin_errors(m: &str, tenant: &str, plugin: &str) -> f64 {
    ["timeout", "memory", "trap", "bad_result", "instantiate", "quarantined"]
        .iter()
        .map(|r| {
            metric(
                m,
                &format!("weir_plugin_errors_total{{plugin=\"{plugin}\",reason=\"{r}\",tenant=\"{tenant}\"}}"),
            )
        })
        .sum()
}

/// Events `plugin` of `tenant` returned with `verdict` (every verdict's series exists once the plugin loads).
fn plugin_events(m: &str, tenant: &str, plugin: &str, verdict: &str) -> f64 {
    metric(
        m,
        &format!("weir_plugin_events_total{{plugin=\"{plugin}\",tenant=\"{tenant}\",verdict=\"{verdict}\"}}"),
    )
}

fn logs(prefix: &str, n: usize) -> Vec<u8> {
    json_logs(
        n,
        |i| json!({"message": format!("{prefix} secret {i}"), "service": "web", "id": format!("{prefix}-{i}")}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_plugin_on_one_tenant_does_not_stop_another() {
    let (dd, addr) = FakeDatadog::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spin.wat"),
        plugin_wat(1, "", "(i64.const 0)", "(loop $spin (br $spin))"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("redact.wat"),
        plugin_wat(1, "", "(i64.const 0)", ""),
    )
    .unwrap();
    let extra = "    plugins:\n      - {name: spin, path: \"{DIR}/spin.wat\", on_error: archive_only, timeout: 50ms}\n  - name: beta\n    api_keys: [beta-key]\n    backend: dd\n    upstream_api_key: up2\n    plugins:\n      - {name: redact, path: \"{DIR}/redact.wat\", config: {fields: [password]}}\n";
    let weir = Weir::start_in(dir, &config(&addr.to_string(), "", extra)).await;

    let stuck = async {
        for r in 0..8 {
            let resp = post(
                &weir.url("/api/v2/logs"),
                &[("DD-API-KEY", "agent-key")],
                logs(&format!("a{r}"), 3),
            )
            .await;
            assert_eq!(
                resp.status,
                202,
                "a failing plugin costs the batch its on_error, not the request: {}",
                resp.text()
            );
        }
    };
    let fine = async {
        let mut worst = Duration::ZERO;
        for r in 0..20 {
            let start = Instant::now();
            let resp = post(
                &weir.url("/api/v2/logs"),
                &[("DD-API-KEY", "beta-key")],
                logs(&format!("b{r}"), 4),
            )
            .await;
            assert_eq!(resp.status, 202, "{}", resp.text());
            worst = worst.max(start.elapsed());
        }
        worst
    };
    let ((), worst) = tokio::join!(stuck, fine);
    assert!(
        worst < Duration::from_secs(2),
        "tenant beta waited {worst:?}"
    );

    let m = weir.metrics().await;
    assert!(
        metric(
            &m,
            "weir_plugin_errors_total{plugin=\"spin\",reason=\"timeout\",tenant=\"acme\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weir_plugin_quarantined{plugin=\"spin\",tenant=\"acme\"}"
        ),
        1.0,
        "5 failures in a row quarantine it"
    );
    // /readyz stays 200 (the proxy takes traffic) and names the quarantined plugin and why.
    let ready = get(&format!("http://127.0.0.1:{}/readyz", weir.admin))
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
    let r = ready.json();
    assert_eq!(r["plugins"]["loaded"], 2, "{r}");
    let q = &r["plugins"]["quarantined"];
    assert_eq!(q.as_array().map(|a| a.len()), Some(1), "{r}");
    assert_eq!(
        (q[0]["tenant"].as_str(), q[0]["plugin"].as_str()),
        (Some("acme"), Some("spin")),
        "{r}"
    );
    assert!(
        q[0]["quarantine_remaining_s"]
            .as_u64()
            .is_some_and(|s| s > 0),
        "{r}"
    );
    assert!(
        q[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("timeout")),
        "{r}"
    );
    assert_eq!(
        metric(
            &m,
            "weir_plugin_calls_total{plugin=\"redact\",tenant=\"beta\"}"
        ),
        20.0
    );
    assert_eq!(plugin_errors(&m, "beta", "redact"), 0.0);

    // beta: per request of 4, events 0 and 3 indexed as "redacted", 1 dropped, 2 archived only.
    eventually(Duration::from_secs(10), "beta's indexed events", || {
        (dd.count() >= 40).then_some(())
    })
    .await;
    let mut weir = weir;
    assert!(weir.terminate().success(), "{}", weir.log());
    let indexed = dd.take();
    assert_eq!(
        indexed.len(),
        40,
        "acme's events are archive_only (on_error), beta's drop/archive_only are not indexed"
    );
    assert!(
        indexed.iter().all(|e| e["message"] == "redacted"),
        "{indexed:?}"
    );
    let (archived, _) = read_archive(&weir.archive_root());
    let acme = archived
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with('a')))
        .count();
    assert_eq!(acme, 24, "every event of the stuck tenant is archived");
    let beta_redacted = archived
        .iter()
        .filter(|e| e["message"] == "redacted")
        .count();
    let beta_original = archived
        .iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with('b')))
        .count();
    assert_eq!(
        (beta_redacted, beta_original),
        (40, 20),
        "redaction happens before the archive tee; the dropped event is not archived"
    );
    let log = weir.log();
    assert!(
        log.contains("plugin call failed") && log.contains("quarantined"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn check_refuses_a_plugin_of_another_abi_version_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("v2.wat"),
        plugin_wat(2, "", "(i64.const 0)", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("v1.wat"),
        plugin_wat(1, "", "(i64.const 0)", ""),
    )
    .unwrap();
    let text = format!("listeners: [{{name: i, address: \"127.0.0.1:1\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/a}}}}\nbackends: [{{name: b, type: file, path: {d}/o}}]\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: b\n    plugins:\n      - {{name: ok, path: {d}/v1.wat}}\n      - {{name: old, path: {d}/v2.wat}}\n");
    let path = dir.path().join("w.yaml");
    std::fs::write(&path, &text).unwrap();
    let (code, _, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("tenants[0].plugins[1]") && err.contains("ABI version 2"),
        "{err}"
    );
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
    let (code, out, err) = weir_cli(&[
        "plugin",
        "test",
        wat.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (
            lines[0]["verdict"].as_str(),
            lines[0]["event"]["message"].as_str()
        ),
        (Some("keep"), Some("redacted"))
    );
    assert_eq!(
        (
            lines[1]["verdict"].as_str(),
            lines[1]["event"]["message"].as_str()
        ),
        (Some("drop"), Some("two"))
    );
    assert_eq!(lines[2]["verdict"], "archive_only");
    assert!(err.contains("3 events") && err.contains("process"), "{err}");

    // A failing plugin: exit 1 with the reason.
    std::fs::write(
        &wat,
        plugin_wat(1, "", "(i64.const 0)", "(loop $spin (br $spin))"),
    )
    .unwrap();
    let (code, _, err) = weir_cli(&[
        "plugin",
        "test",
        wat.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--timeout",
        "30ms",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("timeout"), "{err}");
}

/// An ABI v1 module that keeps every event and sets its `service` to `marker`
/// (2 bytes), leaving the message (which carries the event's id) as it is.
fn service_marker_wat(marker: &str) -> String {
    assert_eq!(marker.len(), 2);
    r#"(module
  (memory (export "memory") 2)
  (data (i32.const 0) "\81\a7results")
  (data (i32.const 16) "\82\a7verdict\a4keep\a5event\81\a7service\a2@M@")
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need (i32.shr_u (i32.add (local.get $len) (i32.const 131071)) (i32.const 16)))
    (if (i32.gt_u (local.get $need) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $need) (memory.size))))))
    (i32.const 65536))
  (func (export "weir_free") (param i32 i32))
  (func (export "weir_init") (param i32 i32) (result i64) (i64.const 0))
  (func (export "weir_process") (param $ptr i32) (param $len i32) (result i64)
    (local $n i32) (local $i i32) (local $out i32)
    (local.set $n (i32.load8_u (i32.add (local.get $ptr) (i32.const 8))))
    (if (i32.ne (i32.and (local.get $n) (i32.const 0xf0)) (i32.const 0x90)) (then unreachable))
    (local.set $n (i32.and (local.get $n) (i32.const 0x0f)))
    (memory.copy (i32.const 1024) (i32.const 0) (i32.const 9))
    (i32.store8 (i32.const 1033) (i32.or (i32.const 0x90) (local.get $n)))
    (local.set $out (i32.const 1034))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (memory.copy (local.get $out) (i32.const 16) (i32.const 32))
      (local.set $out (i32.add (local.get $out) (i32.const 32)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i64.or (i64.shl (i64.const 1024) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $out) (i32.const 1024))))))"#
        .replace("@M@", marker)
}

/// Replaces a file the way a deploy should: a temporary file renamed over it.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const ADMIN_TOKEN: &str = "plugin-e2e-admin";

async fn admin_reload(weir: &Weir, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    let url = format!("http://127.0.0.1:{}/admin/reload", weir.admin);
    request(
        http::Method::POST,
        &url,
        &[("Authorization", auth.as_str())],
        bytes::Bytes::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugin_file_replaced_under_load_is_hot_reloaded_between_batches() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let (dd, addr) = FakeDatadog::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("marker.wasm");
    std::fs::write(&wasm, service_marker_wat("v1")).unwrap();
    let extra = "    plugins:\n      - {name: marker, path: \"{DIR}/marker.wasm\", on_error: drop, timeout: 2s}\n";
    let weir = Weir::start_in(
        dir,
        &with_admin_token(&config(&addr.to_string(), "", extra), ADMIN_TOKEN),
    )
    .await;

    // Load: requests of 1..=15 events (the module reads a fixarray header), ids in the message.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let load = {
        let (stop, accepted, url) = (stop.clone(), accepted.clone(), weir.url("/api/v2/logs"));
        tokio::spawn(async move {
            let mut r = 0;
            while !stop.load(Ordering::SeqCst) {
                let n = 1 + r % 15;
                let body: Vec<Value> = (0..n)
                    .map(|i| json!({"message": format!("req{r} ev{i}"), "service": "orig"}))
                    .collect();
                let resp = post(
                    &url,
                    &[("DD-API-KEY", "agent-key")],
                    serde_json::to_vec(&body).unwrap(),
                )
                .await;
                if resp.status == 202 {
                    accepted.lock().unwrap().push((r, n));
                }
                r += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    eventually(Duration::from_secs(10), "v1 events at the double", || {
        dd.take().iter().any(|e| e["service"] == "v1").then_some(())
    })
    .await;
    replace_file(&wasm, &service_marker_wat("v2"));
    eventually(
        Duration::from_secs(20),
        "v2 events at the double (the watcher's reload)",
        || dd.take().iter().any(|e| e["service"] == "v2").then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // POST /admin/reload: a broken file is refused (the running version stays), a good one is swapped in.
    assert_eq!(admin_reload(&weir, "wrong").await.status, 403);
    replace_file(&wasm, "(module (memory (export \"memory\") 1))");
    let r = admin_reload(&weir, ADMIN_TOKEN).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["reloaded"], json!([]), "{body}");
    assert_eq!(body["refused"][0]["plugin"], "marker", "{body}");
    assert!(
        body["refused"][0]["error"]
            .as_str()
            .unwrap()
            .contains("weir_abi_version"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace_file(&wasm, &service_marker_wat("v3"));
    let r = admin_reload(&weir, ADMIN_TOKEN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reloaded"][0]["tenant"], "acme", "{}", r.text());
    eventually(Duration::from_secs(10), "v3 events at the double", || {
        dd.take().iter().any(|e| e["service"] == "v3").then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    let accepted = accepted.lock().unwrap().clone();
    let total: usize = accepted.iter().map(|(_, n)| n).sum();
    // Counted once the proxy drained everything it held (SIGTERM), so a late
    // duplicate would be seen.
    let m = weir.metrics().await;
    let mut weir = weir;
    assert!(weir.terminate().success(), "{}", weir.log());
    let events = dd.take();
    assert_eq!(events.len(), total, "no event lost or duplicated");
    let mut by_request: std::collections::HashMap<usize, Vec<(usize, String)>> =
        std::collections::HashMap::new();
    for e in &events {
        let msg = e["message"].as_str().unwrap();
        let (r, i) = msg.strip_prefix("req").unwrap().split_once(" ev").unwrap();
        by_request.entry(r.parse().unwrap()).or_default().push((
            i.parse().unwrap(),
            e["service"].as_str().unwrap_or("none").to_string(),
        ));
    }
    let mut versions = std::collections::BTreeSet::new();
    for (r, n) in &accepted {
        let got = by_request
            .get_mut(r)
            .unwrap_or_else(|| panic!("request {r} lost"));
        got.sort();
        assert_eq!(
            got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..*n).collect::<Vec<_>>(),
            "request {r}: each event exactly once"
        );
        let markers: std::collections::BTreeSet<&str> =
            got.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            markers.len(),
            1,
            "request {r} was processed by more than one version: {markers:?}"
        );
        versions.extend(markers.into_iter().map(String::from));
    }
    assert_eq!(by_request.len(), accepted.len());
    assert_eq!(
        versions,
        ["v1", "v2", "v3"].into_iter().map(String::from).collect(),
        "no event passed unmarked"
    );

    assert!(
        metric(
            &m,
            "weir_plugin_reloads_total{outcome=\"reloaded\",plugin=\"marker\",tenant=\"acme\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "weir_plugin_reloads_total{outcome=\"refused\",plugin=\"marker\",tenant=\"acme\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(plugin_errors(&m, "acme", "marker"), 0.0, "{m}");
    let log = weir.log();
    assert!(
        log.contains("plugin reloaded") && log.contains("plugin reload refused"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// The real first-party `redact` plugin (plugins/redact), built to wasm by tests/run.sh.
fn redact_wasm() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip1/release/redact.wasm");
    assert!(
        path.exists(),
        "{} is missing: build the first-party plugins first with `cd plugins && cargo build --release --target wasm32-wasip1` (tests/run.sh does)",
        path.display()
    );
    path.canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_redact_plugin_masks_cards_emails_and_ips_before_index_and_archive() {
    let wasm = redact_wasm();
    let (dd, addr) = FakeDatadog::start().await;
    let extra = format!("    plugins:\n      - {{name: redact, path: \"{}\", on_error: drop, timeout: 2s, config: {{style: full}}}}\n", wasm.display());
    let weir = Weir::start(&config(&addr.to_string(), "", &extra)).await;
    const CARD: &str = "4111 1111 1111 1111";
    const EMAIL: &str = "jane.doe@example.com";
    const IP: &str = "203.0.113.42";
    let body = json!([
        {"message": format!("payment with card {CARD} ok"), "service": "pay", "id": "e1"},
        {"message": format!("signup from {EMAIL}"), "service": "web", "id": "e2"},
        {"message": format!("client={IP}:443 connected"), "service": "web", "id": "e3"},
        {"message": "nothing to hide", "service": "web", "id": "e4", "user": {"contact": EMAIL, "last_ip": IP, "cards": [CARD]}},
    ]);
    let resp = post(
        &weir.url("/api/v2/logs"),
        &[("DD-API-KEY", "agent-key")],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    eventually(
        Duration::from_secs(10),
        "the 4 events at the double",
        || (dd.count() >= 4).then_some(()),
    )
    .await;
    let mut weir = weir;
    assert!(weir.terminate().success(), "{}", weir.log());
    let indexed = dd.take();
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(
        (indexed.len(), archived.len()),
        (4, 4),
        "redact keeps every event"
    );
    for (place, events) in [("datadog", &indexed), ("archive", &archived)] {
        let text = serde_json::to_string(events).unwrap();
        for original in [CARD, "4111111111111111", EMAIL, IP] {
            assert!(!text.contains(original), "{place} has {original:?}: {text}");
        }
        let by_id = |id: &str| {
            events
                .iter()
                .find(|e| e["id"] == id)
                .unwrap_or_else(|| panic!("{place}: no event {id}: {text}"))
        };
        assert_eq!(
            by_id("e1")["message"],
            "payment with card [REDACTED:credit_card] ok",
            "{place}"
        );
        assert_eq!(
            by_id("e2")["message"],
            "signup from [REDACTED:email]",
            "{place}"
        );
        assert_eq!(
            by_id("e3")["message"],
            "client=[REDACTED:ipv4]:443 connected",
            "{place}"
        );
        let e4 = by_id("e4");
        assert_eq!(e4["message"], "nothing to hide");
        assert_eq!(
            e4["user"],
            json!({"contact": "[REDACTED:email]", "last_ip": "[REDACTED:ipv4]", "cards": ["[REDACTED:credit_card]"]}),
            "{place}: {e4}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// README.md's Plugins section, run as written: its YAML example and its `weir plugin test` session are read from
// the README itself, so the guide cannot drift from what the proxy does.
// ---------------------------------------------------------------------------------------------------------------

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The `## Plugins` section of README.md.
fn readme_plugins_section() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme
        .find("\n## Plugins\n")
        .expect("README.md has a `## Plugins` section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 4);
    rest[..end].to_string()
}

/// The fenced code blocks of `section` in the given language, in order.
fn code_blocks(section: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("```").expect("closed code block");
        out.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    out
}

/// The Plugins section's YAML example, a `tenants:` fragment whose `# ...` stands for the tenant's other keys.
fn readme_yaml_example() -> String {
    let blocks = code_blocks(&readme_plugins_section(), "yaml");
    let yaml = blocks
        .iter()
        .find(|b| b.starts_with("tenants:") && b.contains("plugins:"))
        .expect("the Plugins section has a YAML example with tenants and plugins")
        .clone();
    assert!(
        yaml.contains("path: plugins/target/wasm32-wasip1/release/redact.wasm"),
        "{yaml}"
    );
    yaml
}

/// The example's `plugins:` list, as lines for the harness config's tenant, the module path made absolute.
fn readme_plugins_list() -> String {
    let yaml = readme_yaml_example();
    let at = yaml.find("    plugins:\n").expect("a plugins: key");
    yaml[at..].replace(
        "path: plugins/",
        &format!("path: {}/plugins/", repo_root().display()),
    )
}

#[test]
fn readme_yaml_example_passes_weir_check_with_the_real_plugin() {
    redact_wasm();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let example =
        readme_yaml_example().replace("    # ...\n", "    api_keys: [k]\n    backend: b\n");
    let text = format!(
        "listeners: [{{name: i, address: \"127.0.0.1:1\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/a}}}}\nbackends: [{{name: b, type: file, path: {d}/o}}]\n{example}"
    );
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, &text).unwrap();
    // From the repository root, where the example's relative module path points.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "--config", path.to_str().unwrap()])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// One `$ cat FILE` or `$ weir ...` step of the README's shell session, with the lines under it.
struct Step {
    command: String,
    lines: Vec<String>,
}

fn readme_plugin_test_session() -> Vec<Step> {
    let blocks = code_blocks(&readme_plugins_section(), "sh");
    let session = blocks
        .iter()
        .find(|b| b.contains("$ weir plugin test "))
        .expect("the Plugins section shows a `$ weir plugin test` session");
    let mut steps: Vec<Step> = Vec::new();
    for line in session.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            // A trailing `# comment` is not part of the command.
            let command = command.split("  #").next().unwrap().trim().to_string();
            steps.push(Step {
                command,
                lines: Vec::new(),
            });
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            steps
                .last_mut()
                .expect("output follows a command")
                .lines
                .push(line.to_string());
        }
    }
    steps
}

#[test]
fn readme_plugin_test_session_runs_as_written() {
    let steps = readme_plugin_test_session();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(redact_wasm(), dir.path().join("redact.wasm")).unwrap();
    let mut ran = false;
    for step in &steps {
        if let Some(file) = step.command.strip_prefix("cat ") {
            std::fs::write(dir.path().join(file), step.lines.join("\n") + "\n").unwrap();
            continue;
        }
        assert_eq!(
            step.command, "weir plugin test redact.wasm --config redact.yaml --input sample.ndjson",
            "the README's command"
        );
        let args: Vec<&str> = step.command.split_whitespace().skip(1).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stderr}");
        let got: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let shown: Vec<Value> = step
            .lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("README line {l}: {e}")))
            .collect();
        assert_eq!(got, shown, "the README shows what the command prints");
        assert!(
            stderr.contains(&format!("{} events; load", shown.len())),
            "{stderr}"
        );
        ran = true;
    }
    assert!(ran, "the session runs `weir plugin test`");
    // The session's input holds a password the output never shows.
    let sample = std::fs::read_to_string(dir.path().join("sample.ndjson")).unwrap();
    assert!(sample.contains("\"password\""), "{sample}");
}

/// The README's plugin config, through the real proxy: a `password` (and a `card`) attribute reaches neither the
/// backend nor the archive, at the top or nested; the verdicts are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_redact_config_keeps_passwords_out_of_index_and_archive() {
    redact_wasm();
    let (dd, addr) = FakeDatadog::start().await;
    let list = readme_plugins_list();
    assert!(
        list.contains("config: {fields: [password, card]}"),
        "{list}"
    );
    let weir = Weir::start(&config(&addr.to_string(), "", &list)).await;
    const PASSWORD: &str = "hunter2-Zx9";
    const CARD: &str = "cardholder-77";
    let body = json!([
        {"message": "login ok", "service": "web", "id": "p1", "password": PASSWORD, "card": CARD},
        {"message": "signup", "service": "web", "id": "p2", "user": {"name": "jane", "password": PASSWORD}},
        {"message": "retry", "service": "web", "id": "p3", "attempts": [{"password": PASSWORD}]},
        {"message": "nothing to hide", "service": "web", "id": "p4"},
    ]);
    let resp = post(
        &weir.url("/api/v2/logs"),
        &[("DD-API-KEY", "agent-key")],
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.text());
    eventually(
        Duration::from_secs(10),
        "the 4 events at the double",
        || (dd.count() >= 4).then_some(()),
    )
    .await;
    let m = weir.metrics().await;
    let verdict = |v: &str| plugin_events(&m, "acme", "redact", v);
    assert_eq!(
        (verdict("modified"), verdict("kept"), verdict("dropped")),
        (3.0, 1.0, 0.0),
        "{m}"
    );
    let mut weir = weir;
    assert!(weir.terminate().success(), "{}", weir.log());
    let indexed = dd.take();
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!((indexed.len(), archived.len()), (4, 4));
    for (place, events) in [("datadog", &indexed), ("archive", &archived)] {
        let text = serde_json::to_string(events).unwrap();
        for secret in [PASSWORD, CARD] {
            assert!(!text.contains(secret), "{place} has {secret:?}: {text}");
        }
        let by_id = |id: &str| events.iter().find(|e| e["id"] == id).unwrap().clone();
        assert_eq!(by_id("p1")["password"], "[REDACTED:fields]", "{place}");
        assert_eq!(by_id("p1")["card"], "[REDACTED:fields]", "{place}");
        assert_eq!(
            by_id("p2")["user"],
            json!({"name": "jane", "password": "[REDACTED:fields]"}),
            "{place}"
        );
        assert_eq!(
            by_id("p3")["attempts"],
            json!([{"password": "[REDACTED:fields]"}]),
            "{place}"
        );
    }
}

/// Verdicts of the WAT plugin (keep-modified, drop, archive_only by index) and a failing plugin's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_verdicts_are_counted_per_tenant_and_plugin() {
    let (dd, addr) = FakeDatadog::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.wat"),
        plugin_wat(1, "", "(i64.const 0)", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("trap.wat"),
        plugin_wat(1, "", "(i64.const 0)", "(unreachable)"),
    )
    .unwrap();
    let extra = "    plugins:\n      - {name: by_index, path: \"{DIR}/p.wat\"}\n  - name: beta\n    api_keys: [beta-key]\n    backend: dd\n    upstream_api_key: up2\n    plugins:\n      - {name: trap, path: \"{DIR}/trap.wat\", on_error: pass}\n";
    let weir = Weir::start_in(dir, &config(&addr.to_string(), "", extra)).await;
    for (key, n) in [("agent-key", 7), ("agent-key", 5), ("beta-key", 3)] {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[("DD-API-KEY", key)],
            logs("v", n),
        )
        .await;
        assert_eq!(resp.status, 202, "{}", resp.text());
    }
    // acme: 7 events (indexes 0..7) and 5 (0..5): i % 3 == 0 modified, 1 dropped, 2 archive_only.
    // beta: its plugin traps; the 3 events take on_error (pass) and are indexed.
    eventually(Duration::from_secs(10), "indexed events", || {
        (dd.count() >= 5 + 3).then_some(())
    })
    .await;
    let m = weir.metrics().await;
    let count = |tenant: &str, plugin: &str, v: &str| plugin_events(&m, tenant, plugin, v);
    assert_eq!(
        [
            count("acme", "by_index", "modified"),
            count("acme", "by_index", "dropped"),
            count("acme", "by_index", "archive_only"),
            count("acme", "by_index", "kept"),
            count("acme", "by_index", "on_error"),
        ],
        [3.0 + 2.0, 2.0 + 2.0, 2.0 + 1.0, 0.0, 0.0],
        "{m}"
    );
    assert_eq!(count("beta", "trap", "on_error"), 3.0, "{m}");
    assert_eq!(count("beta", "trap", "kept"), 0.0, "{m}");
    let mut weir = weir;
    assert!(weir.terminate().success(), "{}", weir.log());
}

/// A plugin refusing its config stops `weir check` with the YAML line and the plugin's own field.
#[test]
fn check_locates_the_plugin_config_field_a_plugin_refuses() {
    let wasm = redact_wasm();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let path = dir.path().join("w.yaml");
    let head = format!("listeners: [{{name: i, address: \"127.0.0.1:1\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/a}}}}\nbackends: [{{name: b, type: file, path: {d}/o}}]\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: b\n    plugins:\n      - name: redact\n        path: {}\n", wasm.display());
    for (config, line, column, field, says) in [
        // A typo: the line of the misspelt key.
        (
            "        config:\n          fields: [password]\n          stlye: full\n",
            13,
            11,
            "tenants[0].plugins[0].config.stlye",
            "unknown field `stlye`",
        ),
        // A value of the wrong type: the line of its key.
        (
            "        config:\n          fields: password\n",
            12,
            11,
            "tenants[0].plugins[0].config.fields",
            "invalid type: string \"password\", expected a sequence",
        ),
        // Refused by the plugin's own checks (not serde's): the plugin's `config`.
        (
            "        config: {style: hash}\n",
            11,
            9,
            "tenants[0].plugins[0].config",
            "needs a non-empty `hash_key`",
        ),
    ] {
        std::fs::write(&path, format!("{head}{config}")).unwrap();
        let (code, _, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        let prefix = format!(
            "error: {}:{line}:{column}: field `{field}`: plugin \"redact\"",
            path.display()
        );
        assert!(
            err.starts_with(&prefix),
            "{err}\nshould start with {prefix}"
        );
        assert!(err.contains(says), "{err}");
    }
}

/// `weir run` refuses to start on the same mistake, naming the field under the plugin's `config`.
#[test]
fn run_refuses_a_plugin_config_naming_the_plugins_field() {
    let wasm = redact_wasm();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let path = dir.path().join("w.yaml");
    std::fs::write(&path, format!("data_dir: {d}/data\nlisteners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/a}}}}\nbackends: [{{name: b, type: file, path: {d}/o}}]\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: b\n    plugins:\n      - name: redact\n        path: {}\n        config: {{fields: [password], stlye: full}}\n", wasm.display())).unwrap();
    let (code, _, err) = weir_cli(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("field `tenants[0].plugins[0].config.stlye`")
            && err.contains("unknown field `stlye`"),
        "{err}"
    );
}

/// A hostile plugin writes through every channel it has, 100 times each per
/// call: its `log` import, stdout, stderr (each a line), a write to a
/// descriptor it does not have, a preopen lookup. The proxy's log stays
/// within the plugin log limit (50 lines per 10 s per plugin, then one line
/// counting what was suppressed), and every batch is still processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_flooding_every_output_channel_leaves_the_proxy_log_within_its_limit() {
    const FLOOD: &str = r#"(i32.store (i32.const 208) (i32.const 224))
    (i32.store (i32.const 212) (i32.const 13))
    (local.set $k (i32.const 0))
    (loop $more
      (call $log (i32.const 1) (i32.const 224) (i32.const 12))
      (drop (call $fd_write (i32.const 1) (i32.const 208) (i32.const 1) (i32.const 216)))
      (drop (call $fd_write (i32.const 2) (i32.const 208) (i32.const 1) (i32.const 216)))
      (drop (call $fd_write (i32.const 9) (i32.const 208) (i32.const 1) (i32.const 216)))
      (drop (call $prestat (i32.const 3) (i32.const 200)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $k) (i32.const 100))))
    (local.set $k (i32.const 0))"#;
    const IMPORTS: &str = r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))"#;
    let (dd, addr) = FakeDatadog::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flood.wat"),
        plugin_wat(1, IMPORTS, "(i64.const 0)", FLOOD),
    )
    .unwrap();
    // 60,000 writes a call: on 2 loaded cores a call can pass the 50 ms default
    // deadline, which this test is not about.
    let extra = "    plugins:\n      - {name: flood, path: \"{DIR}/flood.wat\", timeout: 5s}\n";
    let weir = Weir::start_in(dir, &config(&addr.to_string(), "", extra)).await;
    let requests = 200;
    for r in 0..requests {
        let resp = post(
            &weir.url("/api/v2/logs"),
            &[("DD-API-KEY", "agent-key")],
            logs(&format!("f{r}"), 9),
        )
        .await;
        assert_eq!(resp.status, 202, "{}", resp.text());
    }
    let m = weir
        .metrics_once(
            "weir_plugin_custom_total{name=\"calls\",plugin=\"flood\",tenant=\"acme\"}",
            requests as f64,
        )
        .await;
    assert_eq!(plugin_errors(&m, "acme", "flood"), 0.0);
    // 200 calls x 100 x (log + stdout + stderr) lines the plugin tried to write.
    let log = weir.log();
    let plugin_lines = log.lines().filter(|l| l.contains("hello stdout")).count();
    let wasi_lines = log
        .lines()
        .filter(|l| l.contains("wasmtime") || l.contains("wasi"))
        .count();
    eprintln!(
        "60,000 plugin writes: {plugin_lines} plugin lines, {wasi_lines} runtime lines, {} log bytes",
        log.len()
    );
    // One 10 s window, maybe two on a slow machine.
    assert!(plugin_lines <= 100, "{plugin_lines} plugin lines");
    assert!(
        plugin_lines >= 40,
        "the first lines are logged: {plugin_lines}"
    );
    assert_eq!(wasi_lines, 0, "the runtime logged: {log}");
    eventually(Duration::from_secs(20), "the kept events", || {
        (dd.count() >= requests * 3).then_some(())
    })
    .await;
}
