//! The command line: `weir check` locates config errors; `--version` names the commit;
//! `weir query` takes a negated query as written; `weir plugin test` reads raw text that
//! looks like JSON; `weir backends` lines up its table and says why it cannot connect.
use crate::harness::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// `git ARGS` in the repository, when git and the checkout are there.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

#[test]
fn version_names_the_git_commit_and_its_date() {
    let (code, out, _) = weir_cli(&["--version"]);
    assert_eq!(code, 0);
    let version = env!("CARGO_PKG_VERSION");
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["log", "-1", "--format=%cd", "--date=short", "HEAD"]),
    ) {
        (Some(hash), Some(date)) => {
            assert_eq!(out.trim(), format!("weir {version} ({hash} {date})"));
        }
        // Built from a tarball: no commit to name.
        _ => assert_eq!(out.trim(), format!("weir {version}")),
    }
}

#[test]
fn check_accepts_the_shipped_configs() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let (code, out, err) = weir_cli(&["check", "--config", &format!("{root}/config/weir.yaml")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"));
    let (code, _, err) = weir_cli(&["check"]);
    assert_eq!(code, 0, "embedded default: {err}");
    let (code, _, err) = weir_cli_env(
        &[
            "check",
            "--config",
            &format!("{root}/config/examples/quotas-and-rules.yaml"),
        ],
        &[("WEIR_ADMIN_TOKEN", "example")],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_names_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let cases = [
        // (text, line, field, what the message says)
        ("listeners:\n  - name: i\n    address: 127.0.0.1:1\n    protocol: htp\n", 4, "listeners[0].protocol", "unknown variant `htp`"),
        (
            "listeners: [{name: i, address: \"127.0.0.1:1\", protocol: http}]\narchive: {store: {type: local, root: /tmp/a}}\nbackends:\n  - name: b\n    type: file\n    path: /tmp/o\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: missing\n",
            10,
            "tenants[0].backend",
            "no backend named \"missing\"",
        ),
        (
            "listeners: [{name: i, address: \"127.0.0.1:1\", protocol: http}]\nlimits:\n  idle_timeout: forever\n",
            3,
            "limits.idle_timeout",
            "invalid duration",
        ),
        (
            "listeners:\n  - name: i\n    address: 127.0.0.1:1\n    protocol: http\n    key_header: \"x weir key\"\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n",
            5,
            "listeners[0].key_header",
            "not a valid HTTP header name",
        ),
        (
            "listeners:\n  - name: f\n    address: 127.0.0.1:1\n    protocol: fluent_forward\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n",
            2,
            "listeners[0].tenant",
            "fluent_forward needs the tenant",
        ),
        (
            "listeners:\n  - name: s\n    address: 127.0.0.1:1\n    protocol: syslog\n    tenant: nobody\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n",
            5,
            "listeners[0].tenant",
            "no tenant named \"nobody\"",
        ),
        (
            "listeners:\n  - name: f\n    address: 127.0.0.1:1\n    protocol: fluent_forward\n    shared_keys:\n      - {tenant: t, key: k1}\n      - {tenant: t, key: k1}\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n",
            7,
            "listeners[0].shared_keys[1].key",
            "the same key is given twice",
        ),
        (
            "listeners:\n  - name: s\n    address: 127.0.0.1:1\n    protocol: syslog\n    shared_keys: [{tenant: t, key: k1}]\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n",
            5,
            "listeners[0].shared_keys",
            "only fluent_forward listeners take shared keys",
        ),
    ];
    for (text, line, field, what) in cases {
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        let expected_prefix = format!("error: {}:{line}:", path.display());
        assert!(
            err.starts_with(&expected_prefix),
            "{err} should start with {expected_prefix}"
        );
        assert!(err.contains(&format!("field `{field}`")), "{err}");
        assert!(err.contains(what), "{err}");
    }
    // A query error names the rule's field and the position in the query.
    std::fs::write(
        &path,
        "listeners: [{name: i, address: \"127.0.0.1:1\", protocol: http}]\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: b\n    exclusion_rules:\n      - {name: r, query: \"status:(error OR\"}\n",
    )
    .unwrap();
    let (code, _, err) = weir_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(":9:")
            && err.contains("tenants[0].exclusion_rules[0].query")
            && err.contains("position"),
        "{err}"
    );
    let (code, _, err) = weir_cli(&["check", "--config", "/nonexistent/weir.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/weir.yaml: cannot read"), "{err}");
}

/// NDJSON sample logs for `weir query`: two `info`, one `error`, one `warn`.
fn sample_logs(dir: &std::path::Path) -> String {
    let path = dir.join("sample.ndjson");
    std::fs::write(
        &path,
        concat!(
            "{\"message\":\"started\",\"status\":\"info\",\"service\":\"web\"}\n",
            "{\"message\":\"disk full\",\"status\":\"error\",\"service\":\"db\"}\n",
            "{\"message\":\"healthy\",\"status\":\"info\",\"service\":\"db\"}\n",
            "{\"message\":\"slow request\",\"status\":\"warn\",\"service\":\"web\"}\n",
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn messages(ndjson: &str, pointer: &str) -> Vec<String> {
    ndjson
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no {pointer} in {l}"))
                .to_string()
        })
        .collect()
}

#[test]
fn query_takes_a_leading_hyphen_as_negation_not_as_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample_logs(dir.path());
    // As the issue wrote it: the query first, starting with `-`.
    let (code, out, err) = weir_cli(&["query", "-status:info", "--input", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(messages(&out, "/message"), ["disk full", "slow request"]);
    // After the flags, with a short flag, and after `--`.
    for args in [
        ["query", "--input", &input, "--count", "-status:info"].as_slice(),
        &["query", "-status:info", "-i", &input, "--count"],
        &["query", "--count", "--input", &input, "--", "-status:info"],
    ] {
        let (code, out, err) = weir_cli(args);
        assert_eq!((code, out.trim()), (0, "2"), "{args:?}: {err}");
    }
    let (code, out, err) = weir_cli(&["query", "-service:web -status:info", "-i", &input]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(messages(&out, "/message"), ["disk full"]);
    // Flags that do not exist are still refused, and a bad query is named.
    let (code, _, err) = weir_cli(&["query", "status:info", "-i", &input, "--bogus"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bogus"), "{err}");
    let (code, _, err) = weir_cli(&["query", "-status:(info OR", "-i", &input]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: query \"-status:(info OR\""),
        "{err}"
    );
}

/// The test plugin of tests/fixtures: event i is kept with message "redacted" when
/// i % 3 == 0, dropped when 1, archive_only when 2 (others unchanged). At most 15 events.
fn fixture_plugin(dir: &std::path::Path) -> String {
    let path = dir.join("abi_v1.wat");
    let wat = include_str!("../fixtures/abi_v1_plugin.wat")
        .replace("@version@", "1")
        .replace("@extra_imports@", "")
        .replace("@init_body@", "(i64.const 0)")
        .replace("@hook@", "");
    std::fs::write(&path, wat).unwrap();
    path.to_str().unwrap().to_string()
}

const LOGHUB_APACHE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/loghub/Apache_2k.log"
);

#[test]
fn plugin_test_reads_raw_text_that_starts_like_json_as_lines() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = fixture_plugin(dir.path());
    // Real Apache error log lines: `[Sun Dec 04 04:47:44 2005] [notice] ...`.
    let apache = std::fs::read_to_string(LOGHUB_APACHE)
        .unwrap_or_else(|e| panic!("{LOGHUB_APACHE}: {e} (the loghub samples)"));
    let lines: Vec<&str> = apache.lines().take(6).collect();
    assert!(lines.iter().all(|l| l.starts_with("[Sun Dec 04")));
    let input = dir.path().join("apache_error.log");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let input = input.to_str().unwrap();
    let test = |extra: &[&str]| {
        let mut args = vec!["plugin", "test", plugin.as_str(), "--input", input];
        args.extend_from_slice(extra);
        weir_cli(&args)
    };

    // Automatic: not JSON, so raw lines, and stderr says so.
    let (code, out, err) = test(&[]);
    assert_eq!(code, 0, "{err}");
    let verdicts = messages(&out, "/verdict");
    assert_eq!(
        verdicts,
        [
            "keep",
            "drop",
            "archive_only",
            "keep",
            "drop",
            "archive_only"
        ]
    );
    let got = messages(&out, "/event/message");
    for i in [1, 2, 4, 5] {
        assert_eq!(got[i], lines[i], "event {i} is the line as it was");
    }
    assert!(
        err.contains(&format!("note: {input} is not a JSON array or NDJSON"))
            && err.contains("raw text, one message per line")
            && err.contains("6 events"),
        "{err}"
    );
    // Explicitly lines: the same, without the note.
    let (code, lines_out, err) = test(&["--format", "lines"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(messages(&lines_out, "/event/message"), got);
    assert!(!err.contains("note:"), "{err}");
    // Explicitly JSON: an error naming the input and where the JSON breaks.
    let (code, out, err) = test(&["--format", "json"]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with(&format!("error: {input}: invalid JSON")),
        "{err}"
    );
    let (code, _, err) = test(&["--format", "ndjson"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{input}: line 1")), "{err}");
    let (code, _, err) = test(&["--format", "yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("auto, json, ndjson, lines"), "{err}");

    // Automatic on real NDJSON still reads JSON: the message field, not the line.
    let ndjson = sample_logs(dir.path());
    let (code, out, err) = weir_cli(&["plugin", "test", &plugin, "--input", &ndjson]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        messages(&out, "/event/message"),
        ["redacted", "disk full", "healthy", "redacted"]
    );
    assert!(!err.contains("note:"), "{err}");
}

/// `weir backends`'s columns; numbers are aligned on the right.
const COLUMNS: [(&str, bool); 8] = [
    ("BACKEND", false),
    ("STATE", false),
    ("EJECTED", true),
    ("FAILURES", true),
    ("EJECTIONS", true),
    ("FAILOVERS", true),
    ("LAST CHANGE", false),
    ("LAST ERROR", false),
];

/// The rows of a `weir backends` table, cell by cell, after checking that every
/// column starts (or, aligned on the right, ends) where its header does.
fn cells(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let mut rows = Vec::new();
    for line in lines {
        let b = line.as_bytes();
        for (name, right) in COLUMNS {
            let start = header
                .find(name)
                .unwrap_or_else(|| panic!("no {name} in {header}"));
            let end = start + name.len();
            let aligned = if right {
                b.get(end - 1).is_some_and(|c| *c != b' ') && b.get(end).is_none_or(|c| *c == b' ')
            } else {
                b.get(start).is_some_and(|c| *c != b' ') && (start == 0 || b[start - 1] == b' ')
            };
            assert!(aligned, "column {name} is out of line in\n{table}");
        }
        // Cells are separated by two spaces or more; the last one is the rest.
        let mut cells = Vec::new();
        let mut rest = line;
        while cells.len() < COLUMNS.len() - 1 {
            let Some(i) = rest.find("  ") else { break };
            cells.push(rest[..i].to_string());
            rest = rest[i..].trim_start();
        }
        cells.push(rest.trim().to_string());
        assert_eq!(cells.len(), COLUMNS.len(), "{line}");
        rows.push(cells);
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_table_lines_up_and_connection_errors_say_why() {
    let long = "eu-west-1-primary-datadog-intake-behind-the-corporate-proxy";
    let closed = free_port();
    let config = routed_config(
        &format!(
            "  - name: {long}\n    type: http\n    url: http://127.0.0.1:{closed}/ingest\n    request_timeout: 1s\n    batch: {{max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n    passive: {{max_failures: 1, ejection: 1s}}\n  - name: b\n    type: file\n    path: \"{{DIR}}/out.ndjson\"\n"
        ),
        "",
        &format!(
            "  - {{name: acme, api_keys: [agent-key], backend: {long}}}\n  - {{name: beta, api_keys: [beta-key], backend: b}}\n"
        ),
    );
    let w = Weir::start(&config).await;
    let resp = post(
        &w.url("/api/v2/logs"),
        &[("DD-API-KEY", "agent-key")],
        r#"[{"message":"hello"}]"#,
    )
    .await;
    assert_eq!(resp.status, 202);
    let start = Instant::now();
    loop {
        let r = get(&format!("http://127.0.0.1:{}/backends", w.admin))
            .await
            .unwrap()
            .json();
        if r["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["backend"] == long && b["last_error"].is_string())
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failure recorded: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // HOST:PORT, as `admin.address` is written, and the URL form too.
    for admin in [
        format!("127.0.0.1:{}", w.admin),
        format!("http://127.0.0.1:{}/", w.admin),
    ] {
        let (code, table, err) = weir_cli(&["backends", "--admin", &admin]);
        assert_eq!(code, 0, "--admin {admin}: {err}");
        let rows = cells(&table);
        assert_eq!(rows.len(), 2, "{table}");
        let failing = rows.iter().find(|r| r[0] == long).expect("the long row");
        let ok = rows.iter().find(|r| r[0] == "b").expect("the row of b");
        assert_eq!(ok[1], "up", "{table}");
        assert_eq!(ok[7], "-", "{table}");
        assert_ne!(failing[7], "-", "{table}");
        for row in [failing, ok] {
            // `2026-12-02T04:47:24Z (3s ago)`: UTC to the second, and how long ago.
            let (stamp, ago) = row[6]
                .split_once(' ')
                .unwrap_or_else(|| panic!("{:?} in\n{table}", row[6]));
            assert!(
                stamp.len() == 20 && stamp.ends_with('Z'),
                "{stamp} in\n{table}"
            );
            let t = chrono::DateTime::parse_from_rfc3339(stamp).unwrap();
            let age = chrono::Utc::now().signed_duration_since(t);
            assert!((0..120).contains(&age.num_seconds()), "{stamp} is now-ish");
            assert!(
                ago.starts_with('(') && ago.ends_with(" ago)"),
                "{ago} in\n{table}"
            );
        }
    }

    // Nothing listening: exit 1, and the cause, not just "client error (Connect)".
    let nobody = free_port();
    let (code, _, err) = weir_cli(&["backends", "--admin", &format!("127.0.0.1:{nobody}")]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("127.0.0.1:{nobody}"))
            && err.to_lowercase().contains("connection refused"),
        "{err}"
    );
    let (code, _, err) = weir_cli(&["backends", "--admin", "https://127.0.0.1:8089"]);
    assert_eq!(code, 1);
    assert!(err.contains("plain http"), "{err}");
}

/// The README's first command, `cargo run --release -- run`, must find one binary to run at
/// the workspace root, where the workspace has three (weir, weir-loadgen, weir-blackhole):
/// the binaries of the default members are what `cargo run` chooses from.
#[test]
fn cargo_run_at_the_workspace_root_runs_weir() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let default_members: Vec<&Value> = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members (cargo 1.71 and later)")
        .iter()
        .collect();
    let bins: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| default_members.contains(&&p["id"]))
        .flat_map(|p| p["targets"].as_array().unwrap())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(bins, ["weir"], "the binaries `cargo run` chooses from");
    // The other binaries are still members: `cargo build -p weir-loadgen --bins` builds them.
    let members = meta["workspace_members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
}

/// Residency: a tenant pinned to a region archives only to stores of the
/// regions it may use; `weir check` refuses the config otherwise, naming the
/// line of the store and why.
#[test]
fn check_refuses_a_pinned_tenant_archiving_outside_its_regions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("residency.yaml");
    let config = |tenant: &str| {
        format!(
            "listeners: [{{name: i, address: \"127.0.0.1:1\", protocol: http}}]
archive_stores:
  - name: eu-main
    store: {{type: s3, bucket: logs-eu, region: eu-west-1}}
  - name: eu-dr
    store: {{type: gcs, bucket: logs-eu-dr}}
  - name: us-main
    store: {{type: s3, bucket: logs-us, region: us-east-1}}
archive:
  store: {{type: local, root: /tmp/weir-archive}}
backends:
  - {{name: eu, type: file, path: /tmp/eu}}
  - {{name: us, type: file, path: /tmp/us}}
regions:
  - {{name: eu, tiers: [[eu]], archive_stores: [eu-main, eu-dr]}}
  - {{name: us, tiers: [[us]], archive_stores: [us-main]}}
tenants:
{tenant}"
        )
    };
    let check = |tenant: &str| {
        std::fs::write(&path, config(tenant)).unwrap();
        weir_cli(&["check", "--config", path.to_str().unwrap()])
    };
    // Pinned to eu, archiving in us: refused, at the line naming the store.
    let (code, _, err) = check(
        "  - name: acme\n    api_keys: [k]\n    region: eu\n    archive:\n      stores:\n        - us-main\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!("error: {}:23:", path.display())),
        "{err}"
    );
    assert!(
        err.contains("field `tenants[0].archive.stores[0]`")
            && err.contains("\"us-main\" belongs to [\"us\"]")
            && err.contains("outside its regions"),
        "{err}"
    );
    // The same store is fine once the tenant may fail over to us.
    let (code, _, err) = check(
        "  - name: acme\n    api_keys: [k]\n    region: eu\n    failover_regions: [us]\n    archive: {stores: [us-main]}\n",
    );
    assert_eq!(code, 0, "{err}");
    // Pinned to eu without an archive of its own: its region's stores, accepted.
    let (code, out, err) = check("  - {name: acme, api_keys: [k], region: eu}\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");
    // A store no archive_stores entry defines.
    let (code, _, err) = check(
        "  - {name: acme, api_keys: [k], region: eu, archive: {stores: [eu-main, eu-backup]}}\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("field `tenants[0].archive.stores[1]`")
            && err.contains("no archive store named \"eu-backup\""),
        "{err}"
    );
}
