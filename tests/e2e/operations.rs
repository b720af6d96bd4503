//! What an SRE meets running the real binary: config traps refused at check and
//! start, run-time changes that say what they override, reloads that name the
//! field that needs a restart, refusals visible in the log.
use crate::harness::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "ops-admin-token";

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("weir.yaml");
    let text = text
        .replace("{DIR}", dir.to_str().unwrap())
        .replace("{INTAKE}", &free_port().to_string())
        .replace("{ADMIN}", &free_port().to_string());
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_log_filter_that_would_silence_everything_is_refused_at_check_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &config("127.0.0.1:9", "", "log:\n  level: verbose\n"),
    );
    let (code, _, err) = weir_cli_env(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("field `log.level`") && err.contains("\"verbose\" is not a log level"),
        "{err}"
    );
    let (code, _, err) = weir_cli_env(&["run", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("log.level"), "{err}");
    // RUST_LOG overrides the config: a bad one is refused, not silently obeyed.
    let cfg = write_config(dir.path(), &config("127.0.0.1:9", "", ""));
    let (code, _, err) = weir_cli_env(&["check", "--config", &cfg], &[("RUST_LOG", "infox")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("RUST_LOG") && err.contains("\"infox\""),
        "{err}"
    );
    let (code, _, err) = weir_cli_env(&["run", "--config", &cfg], &[("RUST_LOG", "infox")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("RUST_LOG"), "{err}");
}

#[test]
fn check_refuses_an_admin_address_on_a_listener_port_and_zero_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let text = config("127.0.0.1:9", "", "").replace(
        "admin:\n  address: 127.0.0.1:{ADMIN}",
        "admin:\n  address: 0.0.0.0:{INTAKE}",
    );
    // Both placeholders must be the same port here.
    let port = free_port().to_string();
    let text = text.replace("{INTAKE}", &port);
    let cfg = write_config(dir.path(), &text);
    let (code, _, err) = weir_cli_env(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("field `admin.address`"), "{err}");
    assert!(
        err.contains("weir.yaml:7:3:"),
        "names line and column: {err}"
    );

    let cfg = write_config(
        dir.path(),
        &config("127.0.0.1:9", "    request_timeout: 0s", ""),
    );
    let (code, _, err) = weir_cli_env(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("backends[0].request_timeout") && err.contains("greater than zero"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_work_in_any_value() {
    let (fake, addr) = FakeDatadog::start().await;
    std::env::set_var("WEIR_E2E_SERVICE_TAG", "env:from-environment");
    // The backend endpoint and a tag list come from the environment, one with a default.
    let text = config("${WEIR_E2E_DD_HOST}", "", "").replace(
        "    upstream_api_key: upstream-secret",
        "    upstream_api_key: \"${WEIR_E2E_UNSET_UPSTREAM:-upstream-default}\"",
    );
    std::env::set_var("WEIR_E2E_DD_HOST", addr.to_string());
    let weir = Weir::start(&text).await;
    let r = post(
        &weir.url("/api/v2/logs"),
        &[
            ("DD-API-KEY", "agent-key"),
            ("Content-Type", "application/json"),
        ],
        r#"[{"message":"from env"}]"#,
    )
    .await;
    assert_eq!(r.status, 202);
    eventually(Duration::from_secs(10), "the event", || {
        (fake.count() == 1).then_some(())
    })
    .await;
    let headers = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(headers["dd-api-key"], "upstream-default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_changes_say_what_they_override_are_audited_and_can_be_discarded() {
    let (_fake, addr) = FakeDatadog::start().await;
    let text = with_admin_token(
        &config(
            &addr.to_string(),
            "",
            "    exclusion_rules:\n      - {name: debug, query: 'status:debug'}\n",
        ),
        TOKEN,
    );
    let weir = Weir::start(&text).await;
    // A rule inserted first (the first match wins), and a quota, with units, for a
    // tenant that has none in the YAML.
    let r = admin(
        &weir,
        "POST",
        "/admin/rules/acme?position=0",
        Some(TOKEN),
        json!({"name": "health", "query": "@path:/health"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let listed = admin(&weir, "GET", "/admin/rules", Some(TOKEN), json!(null)).await;
    let names: Vec<String> = listed.json()["tenants"]["acme"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["health", "debug"]);
    let r = admin(
        &weir,
        "PATCH",
        "/admin/quotas/acme",
        Some(TOKEN),
        json!({"max_bytes": "10MiB"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = admin(&weir, "GET", "/admin/quotas", Some(TOKEN), json!(null)).await;
    assert_eq!(q.json()["quotas"][0]["max_bytes"], 10 * 1024 * 1024);
    // Every change is an audit line with the old and the new value.
    let log = weir.log();
    assert!(
        log.contains("weir::audit")
            && log.contains("old_max_bytes=none")
            && log.contains("new_max_bytes=10485760"),
        "{log}"
    );
    assert!(log.contains("change=\"rules\""), "{log}");

    // `weir check` says what the saved state overrides; so does a restart.
    let config_path = weir.config_path.to_str().unwrap().to_string();
    let dir = weir.into_dir();
    let (code, out, err) = weir_cli_env(&["check", "--config", &config_path], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("runtime.json overrides the YAML: exclusion rules of acme: [\"debug\"] from the YAML are replaced by [\"health\", \"debug\"]"),
        "{out}"
    );
    assert!(out.contains("daily quota of acme"), "{out}");
    let weir = Weir::start_in(dir, &text).await;
    let log = weir.log();
    assert!(
        log.contains("run-time change overrides the YAML: exclusion rules of acme"),
        "{log}"
    );
    // Back to the YAML.
    let r = admin(
        &weir,
        "DELETE",
        "/admin/overrides",
        Some(TOKEN),
        json!(null),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["discarded"].as_array().unwrap().len(), 2);
    let listed = admin(&weir, "GET", "/admin/rules", Some(TOKEN), json!(null)).await;
    assert_eq!(
        listed.json()["tenants"]["acme"].as_array().unwrap().len(),
        1
    );
    assert!(!weir.dir.path().join("data/runtime.json").exists());

    // And the flag, for a proxy that is not running.
    let r = admin(
        &weir,
        "DELETE",
        "/admin/rules/acme/debug",
        Some(TOKEN),
        json!(null),
    )
    .await;
    assert_eq!(r.status, 200);
    let dir = weir.into_dir();
    let saved = dir.path().join("data/runtime.json");
    assert!(saved.exists());
    let (code, out, err) = weir_cli_env(&["check", "--config", &config_path], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("exclusion rules of acme"), "{out}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", &config_path, "--discard-runtime-changes"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while saved.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!saved.exists(), "set aside");
    let aside = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("runtime.json.discarded-")
        });
    assert!(aside, "kept under another name, not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_each_field_that_needs_a_restart() {
    let (_fake, addr) = FakeDatadog::start().await;
    let text = with_admin_token(&config(&addr.to_string(), "", ""), TOKEN);
    let weir = Weir::start(&text).await;
    let running = std::fs::read_to_string(&weir.config_path).unwrap();
    let changed = running
        .replace("max_object_age: 1h", "max_object_age: 2h")
        .replace(
            "upstream_api_key: upstream-secret",
            "upstream_api_key: upstream-other",
        )
        + "limits:\n  idle_timeout: 5s\n";
    std::fs::write(&weir.config_path, changed).unwrap();
    let r = admin(
        &weir,
        "POST",
        "/admin/config/reload",
        Some(TOKEN),
        json!(null),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream key is routing, which a reload applies; the rest needs a restart.
    assert_eq!(
        r.json()["needs_restart"],
        json!(["archive.max_object_age", "limits.idle_timeout"])
    );
    let log = weir.log();
    assert!(
        log.contains("archive.max_object_age, limits.idle_timeout")
            && !log.contains("upstream-other"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reports_a_changed_secret() {
    let (_fake, addr) = FakeDatadog::start().await;
    let text = with_admin_token(&config(&addr.to_string(), "", ""), TOKEN);
    let weir = Weir::start(&text).await;
    let running = std::fs::read_to_string(&weir.config_path).unwrap();
    let changed = running.replace(
        "upstream_api_key: upstream-secret",
        "upstream_api_key: upstream-rotated",
    );
    std::fs::write(&weir.config_path, changed).unwrap();
    let r = admin(
        &weir,
        "POST",
        "/admin/config/reload",
        Some(TOKEN),
        json!(null),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["applied"], json!(["tenants[0].upstream_api_key"]));
    assert_eq!(r.json()["needs_restart"], json!([]));
    assert!(!r.text().contains("upstream-rotated"), "{}", r.text());
    let log = weir.log();
    assert!(
        log.contains("tenants[0].upstream_api_key") && !log.contains("upstream-rotated"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_logged_with_peer_listener_tenant_and_reason() {
    let (_fake, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(
        &addr.to_string(),
        "",
        "limits:\n  max_events_per_request: 1\n",
    ))
    .await;
    let url = weir.url("/api/v2/logs");
    let r = post(&url, &[("DD-API-KEY", "wrong-key")], "[]").await;
    assert_eq!(r.status, 403);
    let r = post(
        &url,
        &[
            ("DD-API-KEY", "agent-key"),
            ("Content-Type", "application/json"),
        ],
        r#"[{"message":"a"},{"message":"b"}]"#,
    )
    .await;
    assert_eq!(r.status, 413);
    let log = eventually(Duration::from_secs(5), "two refusal lines", || {
        let log = weir.log();
        (log.matches("request refused").count() >= 2).then_some(log)
    })
    .await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert!(
        lines[0].contains("INFO")
            && lines[0].contains("peer=127.0.0.1:")
            && lines[0].contains("listener=intake")
            && lines[0].contains("reason=\"unknown_api_key\"")
            && lines[0].contains("tenant=\"-\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("tenant=\"acme\"") && lines[1].contains("reason=\"too_many_events\""),
        "{}",
        lines[1]
    );
    assert!(
        !log.contains("wrong-key") && !log.contains("agent-key"),
        "no keys in logs"
    );
    // Values as an operator writes them, not Rust's debug formatting.
    assert!(
        log.contains("protocol=\"http\"") || log.contains("protocol=http"),
        "{log}"
    );
    assert!(
        !log.contains("Some(") && !log.contains("Http,") && !log.contains("protocol=Http"),
        "{log}"
    );
    // The start-up summary says where things are.
    assert!(
        log.contains("is ready") && log.contains("intake:  http://127.0.0.1:"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_usage_is_saved_while_running_and_survives_a_kill() {
    let (_fake, addr) = FakeDatadog::start().await;
    let text = config(
        &addr.to_string(),
        "",
        "    daily_quota: {max_events: 1000}\n",
    );
    let weir = Weir::start(&text).await;
    let r = post(
        &weir.url("/api/v2/logs"),
        &[
            ("DD-API-KEY", "agent-key"),
            ("Content-Type", "application/json"),
        ],
        r#"[{"message":"a"},{"message":"b"},{"message":"c"}]"#,
    )
    .await;
    assert_eq!(r.status, 202);
    // Saved every second, not only at shutdown: a kill -9 keeps it.
    let saved = weir.dir.path().join("data/quota/acme.json");
    eventually(Duration::from_secs(10), "the periodic save", || {
        std::fs::read_to_string(&saved)
            .ok()
            .filter(|t| t.contains("\"events\":3"))
    })
    .await;
    let dir = weir.into_dir(); // SIGKILL
    let weir = Weir::start_in(dir, &text).await;
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_quota_usage_events{partition=\"\",tenant=\"acme\"}"
        ),
        3.0
    );
}
