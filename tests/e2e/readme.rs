//! The README's examples, taken from README.md itself so that the docs cannot
//! drift from the binary: the first run (`weir run` on the embedded default, then
//! the README's curl, tail, metrics and find | zcat lines), the regions YAML
//! (`weir check`), the rules YAML (run) and the admin API's curl line. The
//! Plugins section's examples are run by tests/e2e/plugins.rs (`readme_*`).
use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shell block that follows `marker` in README.md.
fn readme_block(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in README"))..];
    let start = after.find("```sh\n").unwrap() + 6;
    let end = start + after[start..].find("```").unwrap();
    after[start..end].to_string()
}

fn sh(cwd: &std::path::Path, script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_run_example_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    // `cargo run --release -- run` is this binary with `run` and no config.
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("weir.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while get("http://127.0.0.1:8089/readyz").await.map(|r| r.status) != Ok(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not ready: {}",
            std::fs::read_to_string(dir.path().join("weir.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap();
    assert!(
        log.contains("weir-demo-key")
            && log.contains("curl -X POST http://127.0.0.1:8088/api/v2/logs"),
        "the first run shows the demo key and a curl line: {log}"
    );

    let block = readme_block("Send a log:");
    let lines: Vec<&str> = block.lines().collect();
    // The curl command (continued lines), as written.
    let curl_end = lines.iter().position(|l| l.starts_with("# ->")).unwrap();
    let curl = lines[..curl_end].join("\n");
    let (ok, out) = sh(dir.path(), &format!("{curl} -s -w ' %{{http_code}}'"));
    assert!(ok && out.trim_end().ends_with("{} 202"), "{out}");
    // `tail -f weir-data/sink.ndjson`: forwarded within a second.
    let sink = lines.iter().find(|l| l.starts_with("tail -f")).unwrap();
    let path = sink.split_whitespace().nth(2).unwrap();
    eventually(Duration::from_secs(5), "the event in the sink", || {
        std::fs::read_to_string(dir.path().join(path))
            .ok()
            .filter(|t| t.contains("hello from curl"))
    })
    .await;
    let metrics = lines.iter().find(|l| l.contains("/metrics")).unwrap();
    let (ok, out) = sh(dir.path(), metrics);
    assert!(ok && out.contains("weir_received_events_total{"), "{out}");
    // `find ... | xargs zcat`: archived within 10 s (or on Ctrl-C).
    unsafe { libc::kill(weir.id() as i32, libc::SIGINT) };
    assert!(weir.wait().unwrap().success());
    let archive = lines.iter().find(|l| l.starts_with("find ")).unwrap();
    let archive = archive.split('#').next().unwrap();
    let (ok, out) = sh(dir.path(), archive);
    assert!(
        ok && out.contains("hello from curl") && out.contains("\"ddsource\":\"curl\""),
        "{out}"
    );
}

/// Every ```yaml block of the README after `heading`, in order.
fn readme_yaml_after(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = &readme[readme
        .find(heading)
        .unwrap_or_else(|| panic!("{heading:?} not in README"))..];
    let start = after.find("```yaml\n").unwrap() + 8;
    let end = start + after[start..].find("```").unwrap();
    after[start..end].to_string()
}

/// A README config fragment completed into a whole config: a listener, an admin
/// listener and a local archive, and a local file backend for each name it uses
/// but does not define. Placeholders (`[...]`, `...`) become distinct values.
fn complete(fragment: &str, dir: &std::path::Path, admin_extra: &str) -> String {
    let mut n = 0;
    let mut text = String::new();
    for line in fragment.lines() {
        let mut line = line.to_string();
        while line.contains("[...]") {
            n += 1;
            line = line.replacen("[...]", &format!("[readme-key-{n}]"), 1);
        }
        text += &line.replace(": ...,", ": readme-upstream,");
        text.push('\n');
    }
    let mut out = format!(
        "listeners: [{{name: intake, address: \"127.0.0.1:{}\", protocol: http}}]\nadmin:\n  address: 127.0.0.1:{{ADMIN}}\n{admin_extra}archive: {{store: {{type: local, root: \"{}/archive\"}}}}\ndata_dir: \"{}/data\"\n",
        free_port(),
        dir.display(),
        dir.display()
    );
    if !text.contains("\nbackends:") && !text.starts_with("backends:") {
        // The backends the fragment's tenants name.
        out += "backends:\n";
        for name in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("backend: "))
        {
            out += &format!(
                "  - {{name: {name}, type: file, path: \"{}/{name}.ndjson\"}}\n",
                dir.display()
            );
        }
    }
    out + &text
}

#[test]
fn the_regions_example_passes_weir_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = complete(
        &readme_yaml_after("### Regions and failover"),
        dir.path(),
        "",
    )
    .replace("{ADMIN}", &free_port().to_string());
    let path = dir.path().join("regions.yaml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules example as a whole config, its `${...}` set (the admin token too).
fn rules_example(dir: &std::path::Path) -> String {
    std::env::set_var("PAYMENTS_AGENT_KEY", "readme-agent-key");
    std::env::set_var("PAYMENTS_DD_API_KEY", "readme-dd-key");
    std::env::set_var("WEIR_ADMIN_TOKEN", "readme-admin-token");
    complete(
        &readme_yaml_after("## Index what matters"),
        dir,
        "  token: \"${WEIR_ADMIN_TOKEN}\"\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_example_runs_and_its_admin_call_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let text = rules_example(dir.path());
    let weir = Weir::start_in(dir, &text).await;
    // The README's curl line, as written but for the admin port the test chose.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("curl -H \"Authorization: Bearer $WEIR_ADMIN_TOKEN\""))
        .unwrap()
        .replace("localhost:8089", &format!("localhost:{}", weir.admin));
    let (ok, out) = sh(weir.dir.path(), &format!("{line} -s -w ' %{{http_code}}'"));
    assert!(ok && out.trim_end().ends_with(" 200"), "{out}");
    assert!(out.contains("\"sample_rate\":0.99"), "{out}");
}

/// The Live tail section: its `weir tail` line, run as written (plus `--admin`) on
/// the rules example, prints the README's first sample line for the same event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_example_prints_what_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let text = rules_example(dir.path());
    let port = text.split("127.0.0.1:").nth(1).unwrap();
    let port: String = port.chars().take_while(char::is_ascii_digit).collect();
    let weir = Weir::start_in(dir, &text).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = &readme[readme.find("### Live tail").unwrap()..];
    let command = readme_block("### Live tail");
    let command = command.trim().strip_prefix("weir ").unwrap();
    // The first line of sample output: it starts with a time, `HH:MM:SS.mmm `.
    let sample = section
        .lines()
        .find(|l| l.len() > 13 && l.as_bytes()[2] == b':' && l.as_bytes()[8] == b'.')
        .unwrap()
        .to_string();
    let script = format!(
        "exec '{}' {command} --admin 127.0.0.1:{}",
        env!("CARGO_BIN_EXE_weir"),
        weir.admin
    );
    let mut tail = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    while metric_opt(&weir.metrics().await, "weir_tails_open") != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the tail did not open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sample line's event: its time today (UTC), status, service, host and message.
    let hms = &sample[..12];
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let ts = chrono::DateTime::parse_from_rfc3339(&format!("{today}T{hms}Z"))
        .unwrap()
        .timestamp_millis();
    let message = sample.split("] ").nth(1).unwrap();
    let body = serde_json::to_vec(&serde_json::json!([{"message": message, "status": "error",
        "service": "web", "hostname": "web-01", "timestamp": ts}]))
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v2/logs");
    let r = post(&url, &[("DD-API-KEY", "readme-agent-key")], body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(got, sample);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_example_answers_delivered_once_the_backend_has_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let text = complete(&readme_yaml_after("### `buffer`"), dir.path(), "");
    let sink = dir.path().join("eu-logs.ndjson");
    // complete() chose the intake listener's port.
    let port = text.split("127.0.0.1:").nth(1).unwrap();
    let port: String = port.chars().take_while(char::is_ascii_digit).collect();
    let weir = Weir::start_in(dir, &text).await;
    // `[...]` became readme-key-1 (payments) and readme-key-2 (web).
    let body = serde_json::to_vec(&serde_json::json!([{"message": "paid"}])).unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v2/logs");
    let r = post(&url, &[("DD-API-KEY", "readme-key-1")], body).await;
    assert_eq!(r.status, 202, "{}", r.text());
    // `ack: delivered`: the file backend has it by the time the 202 arrives.
    let got = std::fs::read_to_string(&sink).unwrap_or_default();
    assert!(got.contains("\"paid\""), "{got:?}");
    let ready = get(&format!("http://127.0.0.1:{}/readyz", weir.admin))
        .await
        .unwrap();
    assert_eq!(ready.json()["buffer"]["status"], "ok", "{}", ready.text());
}

/// The Fluent forward listener of the README, in a whole config, passes `weir check`.
#[test]
fn the_fluent_forward_listener_example_passes_weir_check() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = readme_yaml_after("### Fluent forward");
    assert!(
        listeners.contains("protocol: fluent_forward"),
        "{listeners}"
    );
    let config = format!(
        "{listeners}archive: {{store: {{type: local, root: \"{d}/archive\"}}}}\ndata_dir: \"{d}/data\"\nbackends: [{{name: out, type: file, path: \"{d}/out.ndjson\"}}]\ntenants: [{{name: acme, api_keys: [readme-key], backend: out}}]\n",
        d = dir.path().display()
    );
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = weir_cli_env(
        &["check", "--config", path.to_str().unwrap()],
        &[("ACME_FORWARD_KEY", "a-shared-key")],
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// The syslog listeners of the README (its TLS certificate made by the test),
/// in a whole config, pass `weir check`.
#[test]
fn the_syslog_listener_example_passes_weir_check() {
    let pki = crate::tls::pki();
    let listeners =
        readme_yaml_after("### Syslog").replace("/etc/weir", &pki.dir.path().display().to_string());
    assert!(listeners.contains("protocol: syslog"), "{listeners}");
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{listeners}archive: {{store: {{type: local, root: \"{d}/archive\"}}}}\ndata_dir: \"{d}/data\"\nbackends: [{{name: out, type: file, path: \"{d}/out.ndjson\"}}]\ntenants: [{{name: acme, api_keys: [readme-key], backend: out}}]\n",
        d = dir.path().display()
    );
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The Fleet mode section's YAML, as written (its `${...}` set), with a tenant
/// that has a daily quota: weir runs on it against a real redis-server, joins
/// the fleet (`/readyz` shows the store up and the mode shared) and its quota
/// shows the fleet's usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_example_runs_against_redis() {
    let Some(peers) = crate::fleet_peers::peers("the_fleet_example_runs_against_redis") else {
        return;
    };
    let redis = crate::fleet_peers::RedisServer::start(&peers.redis).await;
    std::env::set_var("WEIR_REDIS_URL", redis.url());
    std::env::set_var("POD_NAME", "weir-readme-0");
    let dir = tempfile::tempdir().unwrap();
    let fragment = readme_yaml_after("## Fleet mode");
    assert!(fragment.starts_with("fleet:"), "{fragment}");
    let tenant = "tenants:\n  - name: demo\n    api_keys: [readme-fleet-key]\n    backend: sink\n    daily_quota: {max_events: 1000}\n";
    let text = complete(
        &format!("{fragment}{tenant}"),
        dir.path(),
        "  token: readme-token\n",
    );
    // complete() gave the intake listener a port of its own.
    let intake = text
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let weir = Weir::start_in(dir, &text).await;
    let started = Instant::now();
    let ready = loop {
        let fleet = get(&format!("http://127.0.0.1:{}/readyz", weir.admin))
            .await
            .unwrap()
            .json()["fleet"]
            .clone();
        if fleet["store"] == "up" && fleet["mode"] == "shared" {
            break fleet;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{fleet}\n{}",
            weir.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["instance"], "weir-readme-0", "{ready}");
    let r = post(
        &format!("http://127.0.0.1:{intake}/api/v2/logs"),
        &[("DD-API-KEY", "readme-fleet-key")],
        json_logs(10, |i| serde_json::json!({ "message": format!("m{i}") })),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let started = Instant::now();
    loop {
        let q = admin(
            &weir,
            "GET",
            "/admin/quotas",
            Some("readme-token"),
            serde_json::Value::Null,
        )
        .await;
        let fleet = q.json()["quotas"][0]["fleet"].clone();
        if fleet["usage"][""]["events"] == 10 {
            assert_eq!(fleet["instances"], 1, "{fleet}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{fleet}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Archive stores section's YAML, as written (its `${...}` set, the GCS key
/// file where it says), with a listener and the backends its regions name:
/// `weir check` accepts it; and moving the EU tenant's archive to the US store
/// is refused, as the section says.
#[test]
fn the_archive_stores_example_passes_weir_check_and_residency_holds() {
    let dir = tempfile::tempdir().unwrap();
    let fragment = readme_yaml_after("### Archive stores: regions and disaster recovery");
    let key_file = dir.path().join("gcs.json");
    // A service account key as Google issues it (weir check parses its PKCS#8 RSA key).
    let pem = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl generates the service account's key");
    assert!(pem.status.success());
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "readme",
        "private_key_id": "1",
        "private_key": String::from_utf8(pem.stdout).unwrap(),
        "client_email": "weir@readme.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(&key_file, key.to_string()).unwrap();
    let config = |fragment: &str| {
        let text = complete(fragment, dir.path(), "")
            .replace("{ADMIN}", &free_port().to_string())
            .replace("/etc/weir/gcs.json", key_file.to_str().unwrap());
        // The fragment has its own archive: drop the one `complete` adds, and
        // its empty backends list (the regions name theirs, added below).
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("archive: {store:") && *l != "backends:")
            .map(|l| format!("{l}\n"))
            .collect();
        text + &format!(
            "backends:\n  - {{name: dd-eu, type: file, path: \"{0}/eu.ndjson\"}}\n  - {{name: dd-us, type: file, path: \"{0}/us.ndjson\"}}\n",
            dir.path().display()
        )
    };
    let check = |text: &str| {
        let path = dir.path().join("archive-stores.yaml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["check", "--config", path.to_str().unwrap()])
            .env("AZURE_STORAGE_KEY", "cmVhZG1lLWtleQ==")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let text = config(&fragment);
    let (ok, err) = check(&text);
    assert!(ok, "{err}\n{text}");
    let moved = fragment.replace(
        "region: eu}    # archived in eu-s3",
        "region: eu, archive: {stores: [us-azure]}}    #",
    );
    assert_ne!(moved, fragment, "the README's payments tenant line changed");
    let (ok, err) = check(&config(&moved));
    assert!(!ok);
    assert!(
        err.contains("tenants[0].archive.stores[0]") && err.contains("outside its regions"),
        "{err}"
    );
}
