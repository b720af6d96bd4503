//! Secrets never leave: planted values for every kind of secret (tenant API
//! key, upstream key, S3 secret key, admin token, a backend header, one read
//! from a `file:`) are looked for in everything Weir says while it runs, fails
//! and reloads: its log at debug, `/metrics`, `/readyz`, the admin API's
//! answers, intake refusals, `weir check` on good and broken configs, and the
//! output of a `weir` that cannot start.
use crate::harness::*;
use serde_json::json;
use std::time::Duration;

/// Every planted value starts with this, so one search finds any of them.
const MARK: &str = "PLANTED";

fn planted_config(backend: &str, s3_port: u16, secret_file: &std::path::Path) -> String {
    config(backend, "", "")
        .replace("api_keys: [agent-key]", "api_keys: [agent-key, PLANTED-api-key-0001]")
        .replace("upstream_api_key: upstream-secret", "upstream_api_key: PLANTED-upstream-0002")
        .replace(
            "archive:\n  store:\n    type: local\n    root: {DIR}/archive\n",
            &format!(
                "archive:\n  store:\n    type: s3\n    bucket: logs\n    region: us-east-1\n    endpoint: http://127.0.0.1:{s3_port}\n    allow_http: true\n    path_style: true\n    access_key_id: PLANTED-s3-id-0003\n    secret_access_key: PLANTED-s3-secret-0004\n"
            ),
        )
        .replace("  max_object_age: 1h\n", "  max_object_age: 1s\n")
        .replace(
            "admin:\n  address: 127.0.0.1:{ADMIN}\n",
            &format!(
                "admin:\n  address: 127.0.0.1:{{ADMIN}}\n  token: \"file:{}\"\n",
                secret_file.display()
            ),
        )
        .replace(
            "  - name: dd\n",
            "  - name: hook\n    type: http\n    url: http://127.0.0.1:9/hook\n    headers: {Authorization: \"Bearer PLANTED-header-0006\"}\n  - name: dd\n",
        )
}

fn assert_clean(what: &str, text: &str) {
    if let Some(at) = text.find(MARK) {
        let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
        panic!("a planted secret in {what}: {}", &text[from..to]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_secrets_appear_in_no_log_metric_answer_or_check_output() {
    let (dd, addr) = FakeDatadog::start().await;
    let s3_port = free_port(); // nothing listens: every archive upload fails and is logged
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("admin-token");
    std::fs::write(&token_file, "PLANTED-admin-token-0005\n").unwrap();
    let text = planted_config(&addr.to_string(), s3_port, &token_file);
    let mut seen = String::new();

    // weir check: a good config, then broken ones around the secrets.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, t: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            t.replace("{DIR}", dir.path().to_str().unwrap())
                .replace("{INTAKE}", &free_port().to_string())
                .replace("{ADMIN}", &free_port().to_string()),
        )
        .unwrap();
        p.to_str().unwrap().to_string()
    };
    for (name, t) in [
        ("good.yaml", text.clone()),
        // A duplicate key across tenants: the error names the field, not the key.
        (
            "dup.yaml",
            text.replace(
                "    upstream_api_key: PLANTED-upstream-0002\n",
                "    upstream_api_key: PLANTED-upstream-0002\n  - {name: other, api_keys: [PLANTED-api-key-0001], backend: dd, upstream_api_key: x}\n",
            ),
        ),
        // A type error right at a secret.
        ("type.yaml", text.replace("secret_access_key: PLANTED-s3-secret-0004", "secret_access_key: [PLANTED-s3-secret-0004]")),
    ] {
        let (_, out, err) = weir_cli(&["check", "--config", &write(name, &t)]);
        seen.push_str(&out);
        seen.push_str(&err);
    }
    assert_clean("weir check", &seen);

    let mut weir = Weir::start(&text).await;
    let admin = format!("http://127.0.0.1:{}", weir.admin);
    let good = [("DD-API-KEY", "PLANTED-api-key-0001")];
    let r = post(
        &weir.url("/api/v2/logs"),
        &good,
        json_logs(3, |i| json!({"message": format!("m{i}")})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    for bad in ["PLANTED-api-key-0001x", "agent-key "] {
        let r = post(&weir.url("/api/v2/logs"), &[("DD-API-KEY", bad)], "[{}]").await;
        seen.push_str(&r.text());
    }
    let auth = "Bearer PLANTED-admin-token-0005";
    let (reload_url, with_token) = (
        format!("{admin}/admin/config/reload"),
        [("Authorization", auth)],
    );
    let reload = || {
        request(
            http::Method::POST,
            &reload_url,
            &with_token,
            Default::default(),
        )
    };
    for path in [
        "/admin/rules",
        "/admin/quotas",
        "/admin/overrides",
        "/backends",
    ] {
        for token in [auth, "Bearer wrong"] {
            let r = request(
                http::Method::GET,
                &format!("{admin}{path}"),
                &[("Authorization", token)],
                Default::default(),
            )
            .await
            .unwrap();
            seen.push_str(&r.text());
        }
    }
    let r = reload().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    seen.push_str(&r.text());
    // A rotated token file is read by the reload... (admin.token takes a restart: reported by path only)
    std::fs::write(&token_file, "PLANTED-admin-token-rotated-0007\n").unwrap();
    let r = reload().await.unwrap();
    seen.push_str(&r.text());
    eventually(Duration::from_secs(20), "the events delivered", || {
        (dd.count() >= 3).then_some(())
    })
    .await;
    // Let the archive try (and fail) to upload.
    weir.metrics_once("weir_archive_errors_total{tenant=\"acme\"}", 1.0)
        .await;
    seen.push_str(&weir.metrics().await);
    seen.push_str(&get(&format!("{admin}/readyz")).await.unwrap().text());
    assert!(weir.terminate().code().is_some(), "weir exited by itself");
    seen.push_str(&weir.log());
    assert!(
        weir.log().contains("archive"),
        "the failing archive was logged"
    );
    assert_clean("what a running weir said", &seen);

    // A weir that cannot start (its intake port taken) says why, and nothing more.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let path = write(
        "taken.yaml",
        &text.replace("127.0.0.1:{INTAKE}", &format!("127.0.0.1:{port}")),
    );
    let (code, out, err) = weir_cli(&["run", "--config", &path]);
    assert_ne!(code, 0);
    assert_clean("a failed start", &format!("{out}{err}"));
}
