//! Index what matters: exclusion rules, rate limits, daily quotas and their
//! run-time control, against the real binary.
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");

fn logs(prefix: &str, n: usize, status: &str) -> Vec<u8> {
    json_logs(
        n,
        |i| json!({"message": format!("{prefix} {i}"), "status": status, "service": "web", "id": format!("{prefix}-{i}")}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_rule_samples_the_index_and_archives_everything() {
    let (dd, addr) = FakeDatadog::start().await;
    let rules = "    exclusion_rules:\n      - {name: debug-90, query: \"status:debug\", sample_rate: 0.9}\n      - {name: drop-noise, query: \"service:noise\", action: drop}\n";
    let mut weir = Weir::start(&(config(&addr.to_string(), "", "") + rules)).await;
    for r in 0..10 {
        assert_eq!(
            post(
                &weir.url("/api/v2/logs"),
                &[KEY],
                logs(&format!("d{r}"), 500, "debug")
            )
            .await
            .status,
            202
        );
    }
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY], logs("e", 100, "error"))
            .await
            .status,
        202
    );
    let noise =
        serde_json::to_vec(&json!([{"message": "noise", "service": "noise", "id": "noise"}]))
            .unwrap();
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY], noise).await.status,
        202
    );
    assert!(weir.terminate().success(), "{}", weir.log());

    let got = dd.take();
    let debug = got.iter().filter(|e| e["status"] == "debug").count();
    // 5000 debug events, each kept with probability 0.1: mean 500, sd 21; allow 6 sd.
    assert!((374..=626).contains(&debug), "{debug} debug events indexed");
    assert_eq!(
        got.iter().filter(|e| e["status"] == "error").count(),
        100,
        "errors are not matched"
    );
    assert!(!got.iter().any(|e| e["id"] == "noise"));
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(
        archived.iter().filter(|e| e["status"] == "debug").count(),
        5000,
        "the archive has every excluded event"
    );
    assert!(
        !archived.iter().any(|e| e["id"] == "noise"),
        "drop keeps it from the archive too"
    );
    let m = std::fs::read_to_string(weir.dir.path().join("weir.log")).unwrap();
    assert!(!m.contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_does_not_hurt_the_other_tenant() {
    let (dd, addr) = FakeDatadog::start().await;
    let extra = "  - name: noisy\n    api_keys: [noisy-key]\n    backend: dd\n    upstream_api_key: up2\n    rate_limit: {events_per_second: 2000, events_burst: 2000}\n";
    let weir = Weir::start(&(config(&addr.to_string(), "", "") + extra)).await;

    async fn quiet_round(weir: &Weir, tag: &str) -> Vec<Duration> {
        let mut lat = Vec::new();
        for r in 0..20 {
            let start = Instant::now();
            let resp = post(
                &weir.url("/api/v2/logs"),
                &[KEY],
                logs(&format!("{tag}{r}"), 50, "info"),
            )
            .await;
            assert_eq!(
                resp.status,
                202,
                "the quiet tenant is never refused: {}",
                resp.text()
            );
            lat.push(start.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lat
    }
    let alone = quiet_round(&weir, "alone").await;

    // The noisy tenant sends at ten times its limit (20,000 events/s) meanwhile.
    let url = weir.url("/api/v2/logs");
    let flood = tokio::spawn(async move {
        let (mut ok, mut limited) = (0, 0);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            let mut round = Vec::new();
            for _ in 0..4 {
                let url = url.clone();
                round.push(tokio::spawn(async move {
                    post(
                        &url,
                        &[("DD-API-KEY", "noisy-key")],
                        logs("flood", 500, "info"),
                    )
                    .await
                    .status
                }));
            }
            for h in round {
                match h.await.unwrap() {
                    202 => ok += 1,
                    429 => limited += 1,
                    s => panic!("flood got {s}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (ok, limited)
    });
    let flooded = quiet_round(&weir, "flooded").await;
    let (ok, limited) = flood.await.unwrap();
    assert!(limited > 0, "the flood was rate limited ({ok} accepted)");

    let quiet_ids: HashSet<String> = (0..20)
        .flat_map(|r| {
            (0..50).flat_map(move |i| [format!("alone{r}-{i}"), format!("flooded{r}-{i}")])
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "every quiet event forwarded",
        || {
            let got: HashSet<String> = dd
                .take()
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_string))
                .collect();
            quiet_ids.is_subset(&got).then_some(())
        },
    )
    .await;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let m = weir.metrics().await;
    assert!(metric(&m, "weir_rate_limited_requests_total{tenant=\"noisy\"}") >= limited as f64);
    assert_eq!(
        metric(&m, "weir_rate_limited_requests_total{tenant=\"acme\"}"),
        0.0
    );
    // Reported, not asserted: timings on a shared machine are noise.
    println!("quiet tenant median latency alone {:?}, during the flood {:?}; flood: {ok} accepted, {limited} refused with 429", median(alone), median(flooded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_request_is_429_with_retry_after_and_nothing_taken() {
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = config(&addr.to_string(), "", "").replace("    upstream_api_key: upstream-secret\n", "    upstream_api_key: upstream-secret\n    rate_limit: {events_per_second: 1, events_burst: 100}\n");
    let mut weir = Weir::start(&cfg).await;
    assert_eq!(
        post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            logs("first", 100, "info")
        )
        .await
        .status,
        202
    );
    let r = post(
        &weir.url("/api/v2/logs"),
        &[KEY],
        logs("second", 100, "info"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(r.error().contains("rate limit"), "{}", r.error());
    assert!(weir.terminate().success());
    let got = dd.take();
    assert_eq!(got.len(), 100);
    assert!(got
        .iter()
        .all(|e| e["message"].as_str().unwrap().starts_with("first")));
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(
        archived.len(),
        100,
        "the refused request reached neither index nor archive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_quotas_change_at_run_time_and_survive_a_restart() {
    let (dd, addr) = FakeDatadog::start().await;
    let base = config(&addr.to_string(), "", "").replace(
        "admin:\n  address: 127.0.0.1:{ADMIN}\n",
        "admin:\n  address: 127.0.0.1:{ADMIN}\n  token: \"${WEIR_E2E_ADMIN_TOKEN}\"\n",
    ) + "    daily_quota: {max_events: 1000000}\n";
    std::env::set_var("WEIR_E2E_ADMIN_TOKEN", "s3cret-admin");
    let weir = Weir::start(&base).await;

    assert_eq!(
        admin(&weir, "GET", "/admin/rules", None, json!(null))
            .await
            .status,
        401
    );
    assert_eq!(
        admin(&weir, "GET", "/admin/rules", Some("wrong"), json!(null))
            .await
            .status,
        403
    );
    let r = admin(
        &weir,
        "POST",
        "/admin/rules/acme",
        Some("s3cret-admin"),
        json!({"name": "no-web", "query": "service:(web", "sample_rate": 1.0}),
    )
    .await;
    assert_eq!(r.status, 400, "a bad query is refused");
    assert!(r.error().contains("position"), "{}", r.error());
    let r = admin(
        &weir,
        "POST",
        "/admin/rules/acme",
        Some("s3cret-admin"),
        json!({"name": "no-web", "query": "service:web", "sample_rate": 1.0}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        admin(
            &weir,
            "POST",
            "/admin/rules/acme",
            Some("s3cret-admin"),
            json!({"name": "no-web", "query": "*"})
        )
        .await
        .status,
        409
    );

    assert_eq!(
        post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            logs("excluded", 10, "info")
        )
        .await
        .status,
        202
    );
    let listed = admin(
        &weir,
        "GET",
        "/admin/rules",
        Some("s3cret-admin"),
        json!(null),
    )
    .await
    .json();
    let rule = &listed["tenants"]["acme"][0];
    assert_eq!(
        (
            rule["name"].as_str(),
            rule["matched"].as_u64(),
            rule["excluded"].as_u64()
        ),
        (Some("no-web"), Some(10), Some(10))
    );

    // Disable it: events flow to the index again.
    assert_eq!(
        admin(
            &weir,
            "PATCH",
            "/admin/rules/acme/no-web",
            Some("s3cret-admin"),
            json!({"enabled": false})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            logs("indexed", 10, "info")
        )
        .await
        .status,
        202
    );
    eventually(Duration::from_secs(20), "indexed events", || {
        (dd.count() == 10).then_some(())
    })
    .await;
    assert!(dd
        .take()
        .iter()
        .all(|e| e["message"].as_str().unwrap().starts_with("indexed")));

    // A quota of 5 events a day, set at run time.
    let r = admin(
        &weir,
        "PATCH",
        "/admin/quotas/acme",
        Some("s3cret-admin"),
        json!({"max_events": 5}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q = admin(
        &weir,
        "GET",
        "/admin/quotas",
        Some("s3cret-admin"),
        json!(null),
    )
    .await
    .json();
    assert_eq!(q["quotas"][0]["max_events"], 5);
    assert_eq!(q["quotas"][0]["usage"][""]["events"], 10);

    // Restart: the disabled rule and the quota come back from runtime.json.
    let mut weir = weir;
    assert!(weir.terminate().success());
    let data = weir.dir.path().join("data");
    let saved = std::fs::read_to_string(data.join("runtime.json")).unwrap();
    assert!(saved.contains("no-web") && !saved.contains("s3cret-admin"));
    let again = Weir::start_in(weir.into_dir(), &base).await;
    let listed = admin(
        &again,
        "GET",
        "/admin/rules",
        Some("s3cret-admin"),
        json!(null),
    )
    .await
    .json();
    assert_eq!(listed["tenants"]["acme"][0]["enabled"], false);
    let q = admin(
        &again,
        "GET",
        "/admin/quotas",
        Some("s3cret-admin"),
        json!(null),
    )
    .await
    .json();
    assert_eq!(q["quotas"][0]["max_events"], 5);
    assert_eq!(
        q["quotas"][0]["usage"][""]["events"], 10,
        "usage survived the restart: no fresh quota"
    );
    // Over quota: archive only (nothing new indexed).
    let indexed_before = dd.count();
    assert_eq!(
        post(&again.url("/api/v2/logs"), &[KEY], logs("over", 3, "info"))
            .await
            .status,
        202
    );
    let m = again.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_over_quota_events_total{action=\"archive_only\",tenant=\"acme\"}"
        ),
        3.0
    );
    // Once drained: the backend got nothing new, the archive has all three.
    let mut again = again;
    assert!(again.terminate().success());
    assert_eq!(dd.count(), indexed_before, "over-quota events were indexed");
    let (archived, _) = read_archive(&again.archive_root());
    let over = archived
        .iter()
        .filter(|e| e["message"].as_str().unwrap().starts_with("over"))
        .count();
    assert_eq!(over, 3, "over-quota events are archived");
}

#[test]
fn query_command_previews_a_rule_on_sample_logs() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample.ndjson");
    std::fs::write(
        &sample,
        "{\"message\":\"GET /a 500\",\"service\":\"web\",\"status\":\"error\",\"http\":{\"status_code\":500}}\n{\"message\":\"GET /b 200\",\"service\":\"web\",\"status\":\"info\",\"http\":{\"status_code\":200}}\n{\"message\":\"db timeout\",\"service\":\"db\",\"status\":\"error\"}\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "query",
        "service:web @http.status_code:>=500",
        "--input",
        sample.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["message"], "GET /a 500");
    let out = run(&[
        "query",
        "status:error",
        "--input",
        sample.to_str().unwrap(),
        "--count",
    ]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "2");
    let out = run(&[
        "query",
        "service:(web OR",
        "--input",
        sample.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("position"), "{err}");
}
