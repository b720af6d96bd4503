use super::*;
use crate::config::PluginOnError;
use std::time::Duration;

fn base() -> String {
    "listeners:\n  - name: intake\n    address: 127.0.0.1:0\n    protocol: http\narchive:\n  store: {type: local, root: /tmp/x}\nbackends:\n  - name: out\n    type: file\n    path: /tmp/out\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: out\n".to_string()
}

#[test]
fn plugin_files_are_checked_at_parse_time() {
    let dir = tempfile::tempdir().unwrap();
    let missing = base()
        + "    plugins:\n      - {name: p, path: /nonexistent/p.wasm, on_error: drop, timeout: 20ms}\n";
    let e = Plan::parse(&missing, "w.yaml").unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("tenants[0].plugins[0].path"),
        "{e}"
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\x99").unwrap();
    let e = Plan::parse(
        &missing.replace("/nonexistent/p.wasm", junk.to_str().unwrap()),
        "w.yaml",
    )
    .unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("tenants[0].plugins[0].path"),
        "{e}"
    );
    let ok = dir.path().join("ok.wat");
    std::fs::write(&ok, "(module)").unwrap();
    let c = Plan::parse(
        &missing.replace("/nonexistent/p.wasm", ok.to_str().unwrap()),
        "w.yaml",
    )
    .unwrap();
    let p = &c.tenants[0].plugins[0];
    assert_eq!(
        (p.on_error, p.timeout.0, p.memory_limit.0),
        (PluginOnError::Drop, Duration::from_millis(20), 64 << 20)
    );
}

#[test]
fn a_query_that_does_not_parse_is_located() {
    let text = base() + "    exclusion_rules:\n      - {name: r, query: \"service:(web\"}\n";
    let e = Plan::parse(&text, "w.yaml").unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("tenants[0].exclusion_rules[0].query")
    );
    assert_eq!(e.line, Some(16), "{e}");
    assert!(e.message.contains("invalid query"), "{e}");
    let global = base() + "exclusion_rules:\n  - {name: g, query: \"status:(\"}\n";
    let e = Plan::parse(&global, "w.yaml").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("exclusion_rules[0].query"));
}

#[test]
fn a_tenant_plan_holds_its_archive_rules_and_route() {
    let text = "listeners: [{name: i, address: \"127.0.0.1:0\", protocol: http}]\narchive: {store: {type: local, root: /tmp/top}}\nbackends:\n  - {name: a, type: http, url: \"http://a/\"}\n  - {name: c, type: http, url: \"http://c/\"}\nregions:\n  - {name: eu, tiers: [[a], [c]]}\n  - {name: us, tiers: [[c]]}\ntenants:\n  - {name: t, api_keys: [k], region: eu, failover_regions: [us], exclusion_rules: [{name: r, query: \"status:debug\"}]}\n  - {name: u, api_keys: [k2], backend: a, archive: {store: {type: local, root: /tmp/own}}}\n";
    let plan = Plan::parse(text, "w.yaml").unwrap();
    let t = plan.tenant("t").unwrap();
    assert_eq!(t.at, "tenants[0]");
    let tiers: Vec<(&str, Vec<&str>)> = t
        .route
        .iter()
        .map(|tier| {
            let names = tier.backends.iter().map(String::as_str).collect();
            (tier.region.as_str(), names)
        })
        .collect();
    assert_eq!(
        tiers,
        vec![("eu", vec!["a"]), ("eu", vec!["c"]), ("us", vec!["c"])]
    );
    assert_eq!(t.archive, plan.config.archive, "the top-level archive");
    assert_eq!(t.exclusion_rules[0].config.name, "r");
    let u = plan.tenant("u").unwrap();
    assert_eq!(u.preferred_backend(), "a");
    assert_ne!(u.archive, plan.config.archive, "its own archive");
}

/// A tenant with an upstream key, a backend with a credential header and an archive with
/// a secret, each to change in turn.
fn secrets(upstream: &str, token: &str, api_key: &str, archive: &str) -> Plan {
    let text = format!("listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive: {{store: {{type: s3, bucket: b, region: r, access_key_id: id, secret_access_key: {archive}}}}}\nbackends:\n  - {{name: out, type: datadog, endpoint: \"http://d/\"}}\n  - {{name: h, type: http, url: \"http://h/\", headers: {{Authorization: {token}}}}}\ntenants:\n  - {{name: t, api_keys: [{api_key}], backend: out, upstream_api_key: {upstream}}}\n");
    Plan::parse(&text, "w.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn reload_reports_a_changed_secret() {
    let running = secrets("up-1", "tok-1", "key-1", "arch-1");
    assert_eq!(
        changes(&running, &secrets("up-1", "tok-1", "key-1", "arch-1")),
        Changes::default()
    );
    // Routing credentials: applied, and named.
    let new = secrets("up-2", "tok-2", "key-1", "arch-1");
    assert_ne!(running, new, "plans differ by a secret's value alone");
    assert_ne!(running.tenants[0], new.tenants[0]);
    let c = changes(&running, &new);
    assert_eq!(
        c.applied,
        vec![
            "backends[1].headers.Authorization",
            "tenants[0].upstream_api_key"
        ]
    );
    assert!(c.needs_restart.is_empty(), "{c:?}");
    // Credentials a reload does not apply: named as needing a restart.
    let c = changes(&running, &secrets("up-1", "tok-1", "key-2", "arch-2"));
    assert_eq!(
        c.needs_restart,
        vec!["archive.store.secret_access_key", "tenants[0].api_keys[0]"]
    );
    // Named, never printed.
    let shown = format!("{c:?} {:?}", new.tenants[0]);
    for secret in ["up-2", "tok-2", "key-2", "arch-2"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// Archives follow regions: a pinned tenant without an archive of its own
/// takes its region's stores (in order, with the top-level settings); a
/// top-level archive in another region's store is refused for it.
#[test]
fn a_pinned_tenant_archives_in_its_region_and_nowhere_else() {
    let text = |top: &str| {
        format!("listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive_stores:\n  - {{name: eu-main, store: {{type: local, root: /tmp/eu}}}}\n  - {{name: eu-dr, store: {{type: local, root: /tmp/eu-dr}}}}\n  - {{name: us-main, store: {{type: local, root: /tmp/us}}}}\narchive: {{{top}, max_object_age: 5s}}\nbackends:\n  - {{name: a, type: http, url: \"http://a/\"}}\n  - {{name: c, type: http, url: \"http://c/\"}}\nregions:\n  - {{name: eu, tiers: [[a]], archive_stores: [eu-main, eu-dr]}}\n  - {{name: us, tiers: [[c]], archive_stores: [us-main]}}\ntenants:\n  - {{name: t, api_keys: [k], region: eu}}\n  - {{name: u, api_keys: [k2], backend: c}}\n")
    };
    let plan = Plan::parse(&text("stores: [us-main]"), "r.yaml").unwrap();
    let t = plan.tenant("t").unwrap();
    let names: Vec<&str> = t.archive_stores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["eu-main", "eu-dr"], "its region's stores, in order");
    assert_eq!(t.archive.max_object_age, plan.config.archive.max_object_age);
    // Not pinned: the top-level archive, wherever it is.
    let u = plan.tenant("u").unwrap();
    assert_eq!(u.archive_stores[0].name, "us-main");

    // An inline store is named by its URL.
    let plan = Plan::parse(&text("store: {type: local, root: /tmp/top}"), "r.yaml").unwrap();
    assert_eq!(
        plan.tenant("u").unwrap().archive_stores[0].name,
        "file:///tmp/top"
    );

    // The region without stores of its own: t falls back to the top-level
    // archive, which is in us: refused.
    let no_eu_stores =
        text("stores: [us-main]").replace("archive_stores: [eu-main, eu-dr]", "archive_stores: []");
    let e = Plan::parse(&no_eu_stores, "r.yaml").err().unwrap();
    assert_eq!(e.field.as_deref(), Some("archive.stores[0]"), "{e}");
    assert!(
        e.message
            .contains("tenant \"t\" may use regions [\"eu\"] only"),
        "{e}"
    );
}

/// Residency compares places, not names: a pinned tenant's inline store in
/// another region's bucket is refused; one bucket listed twice in an archive
/// is refused (a failover between the two would be no failover, and the
/// clean-up of failed writes could delete the object).
#[test]
fn residency_and_duplicates_go_by_the_stores_place() {
    let text = |tenant: &str| {
        format!("listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive_stores:\n  - {{name: eu-main, store: {{type: s3, bucket: logs-eu}}}}\n  - {{name: eu-private, store: {{type: s3, bucket: logs-eu, endpoint: \"https://bucket.vpce.example\"}}}}\n  - {{name: us-main, store: {{type: s3, bucket: logs-us}}}}\narchive: {{store: {{type: local, root: /tmp/top}}}}\nbackends:\n  - {{name: a, type: http, url: \"http://a/\"}}\nregions:\n  - {{name: eu, tiers: [[a]], archive_stores: [eu-main]}}\n  - {{name: us, tiers: [[a]], archive_stores: [us-main]}}\ntenants:\n  - {{name: t, api_keys: [k], region: eu, {tenant}}}\n")
    };
    let e = Plan::parse(
        &text("archive: {store: {type: s3, bucket: logs-us}}"),
        "r.yaml",
    )
    .err()
    .unwrap();
    assert_eq!(e.field.as_deref(), Some("tenants[0].archive.store"), "{e}");
    assert!(e.message.contains("belongs to [\"us\"]"), "{e}");
    let e = Plan::parse(&text("archive: {stores: [eu-main, eu-private]}"), "r.yaml")
        .err()
        .unwrap();
    assert_eq!(
        e.field.as_deref(),
        Some("tenants[0].archive.stores[1]"),
        "{e}"
    );
    assert!(e.message.contains("the same place (s3://logs-eu)"), "{e}");
    // eu-private is not listed by a region, but it is eu's bucket: allowed.
    Plan::parse(&text("archive: {stores: [eu-private]}"), "r.yaml").unwrap();
}

/// Archives sharing a store share its health: they must agree on failover.
#[test]
fn archives_sharing_a_store_need_the_same_failover() {
    let text = |own: &str| {
        format!("listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive_stores:\n  - {{name: main, store: {{type: local, root: /tmp/main}}}}\n  - {{name: dr, store: {{type: local, root: /tmp/dr}}}}\narchive: {{stores: [main, dr]}}\nbackends:\n  - {{name: a, type: http, url: \"http://a/\"}}\ntenants:\n  - {{name: t, api_keys: [k], backend: a}}\n  - {{name: u, api_keys: [k2], backend: a, archive: {{stores: [dr], {own}}}}}\n")
    };
    let e = Plan::parse(&text("failover: {after_failures: 5}"), "r.yaml")
        .err()
        .unwrap();
    assert_eq!(
        e.field.as_deref(),
        Some("tenants[1].archive.failover"),
        "{e}"
    );
    assert!(e.message.contains("archive store \"dr\""), "{e}");
    Plan::parse(
        &text("failover: {after_failures: 3, retry_after: 30s}"),
        "r.yaml",
    )
    .unwrap();
}
