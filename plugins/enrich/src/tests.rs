use super::*;
use serde_json::json;
use weir_sdk::testing;

fn ev() -> Event {
    Event {
        timestamp: 1,
        message: "Disk full on /var (timeout after 30s)".into(),
        host: Some("web-01.prod.internal".into()),
        service: Some("payments-api".into()),
        source: Some("nginx".into()),
        status: Some("ERROR".into()),
        tags: vec!["env:prod".into(), "pci".into(), "region:eu-west-1".into()],
        attributes: [
            (
                "http".to_string(),
                json!({"status_code": 503, "method": "GET"}),
            ),
            ("user.id".to_string(), json!("u-42")),
            ("retried".to_string(), json!(true)),
            ("zones".to_string(), json!(["a", "b"])),
        ]
        .into_iter()
        .collect(),
    }
}

fn q(s: &str) -> bool {
    Query::parse(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .matches(&ev())
}

#[test]
fn globs() {
    let g = |p: &str, t: &str| Glob::new(p).matches(t);
    assert!(g("abc", "abc"));
    assert!(g("abc", "ABC"));
    assert!(!g("abc", "abcd"));
    assert!(g("ab*", "abcd"));
    assert!(!g("ab*", "xabcd"));
    assert!(g("*cd", "abcd"));
    assert!(!g("*cd", "abcde"));
    assert!(g("*bc*", "abcd"));
    assert!(g("a*d", "abcd"));
    assert!(!g("a*a", "a"));
    assert!(g("a*a", "aa"));
    assert!(g("*", ""));
    assert!(g("*", "anything"));
    assert!(g("a**b", "ab"));
}

#[test]
fn reserved_fields() {
    assert!(q("service:payments-api"));
    assert!(q("service:payments*"));
    assert!(q("service:*-api"));
    assert!(!q("service:payments"));
    assert!(q("host:*.internal"));
    assert!(q("host:web-*"));
    assert!(q("source:nginx"));
    assert!(q("status:error"), "case-insensitive");
    assert!(q("message:*timeout*"));
    assert!(q("message:\"disk full on*\""));
    assert!(!q("message:disk"));
}

#[test]
fn an_event_without_status_is_info() {
    let none = Event {
        status: None,
        ..ev()
    };
    let m = |s: &str| Query::parse(s).unwrap().matches(&none);
    assert!(m("status:info"));
    assert!(m("status:in*"));
    assert!(m("status:*"));
    assert!(!m("-status:info"));
    assert!(!m("status:error"));
    assert!(m("-status:debug"));
}

#[test]
fn tags() {
    assert!(q("env:prod"));
    assert!(q("ENV:Prod"));
    assert!(!q("env:staging"));
    assert!(q("region:eu-*"));
    assert!(q("env:*"));
    assert!(!q("team:*"));
    assert!(q("tags:pci"));
    assert!(q("tags:env:prod"));
    assert!(q("tags:env:*"));
    assert!(!q("tags:prod"));
    assert!(!q("pci:*"), "a bare tag has no key");
}

#[test]
fn attributes() {
    assert!(q("@http.status_code:503"));
    assert!(q("@http.status_code:5*"));
    assert!(q("@http.method:get"));
    assert!(q("@user.id:u-42"), "literal dotted key");
    assert!(q("@retried:true"));
    assert!(q("@zones:b"), "any array element");
    assert!(q("@http:*"), "present");
    assert!(!q("@http:x"));
    assert!(!q("@nope:*"));
    assert!(!q("@http.nope:*"));
}

#[test]
fn and_negation_and_all() {
    assert!(q("service:payments* env:prod status:error"));
    assert!(!q("service:payments* env:staging"));
    assert!(q("-env:staging"));
    assert!(!q("-env:prod"));
    assert!(q("service:payments* -status:debug -@http.status_code:2*"));
    assert!(q("-team:*"), "missing field negated");
    assert!(q("*"));
    assert!(Query::parse("*").unwrap().matches(&Event::default()));
    assert!(!Query::parse("host:*").unwrap().matches(&Event::default()));
    assert!(Query::parse("-host:*").unwrap().matches(&Event::default()));
}

#[test]
fn query_errors() {
    for bad in [
        "",
        "   ",
        "timeout",
        "host:",
        "-",
        ":x",
        "message:\"open",
        "@:x",
        "@a..b:x",
    ] {
        assert!(Query::parse(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn plugin_adds_tags_and_attributes() {
    let mut p = testing::init::<Enrich>(json!({
        "rules": [
            {"query": "service:payments* env:prod", "tags": ["team:payments", "pci"],
             "attributes": {"owner": "payments-oncall", "tier": 1}},
            {"query": "team:payments", "attributes": {"chained": true}},
            {"query": "service:checkout", "tags": ["never"]},
            {"query": "*", "tags": ["via:weir"]}
        ]
    }))
    .unwrap();
    let (v, e) = testing::run_one(&mut p, ev());
    assert_eq!(v, Verdict::Keep);
    assert_eq!(
        e.tags,
        vec![
            "env:prod",
            "pci",
            "region:eu-west-1",
            "team:payments",
            "via:weir"
        ],
        "existing tags are not duplicated"
    );
    assert_eq!(e.attributes["owner"], json!("payments-oncall"));
    assert_eq!(e.attributes["tier"], json!(1));
    assert_eq!(
        e.attributes["chained"],
        json!(true),
        "later rules see earlier results"
    );
    assert_eq!(e.message, ev().message);
    let c = testing::counters();
    assert_eq!(c["rule_0"], 1);
    assert_eq!(c["rule_1"], 1);
    assert!(!c.contains_key("rule_2"));
    assert_eq!(c["rule_3"], 1);
    assert_eq!(c["enriched"], 1);
}

#[test]
fn unmatched_or_unchanged_events_go_back_as_nil() {
    let mut p = testing::init::<Enrich>(json!({
        "rules": [{"query": "service:other", "tags": ["x"]}, {"query": "env:prod", "tags": ["pci"]}]
    }))
    .unwrap();
    let raw = testing::run_raw(&mut p, &[ev(), Event::with_message("hi")]);
    assert_eq!(raw.results.len(), 2);
    assert!(raw
        .results
        .iter()
        .all(|r| r.verdict == Verdict::Keep && r.event.is_none()));
}

#[test]
fn attributes_overwrite() {
    let mut p = testing::init::<Enrich>(json!({
        "rules": [{"query": "*", "attributes": {"retried": "no", "new": {"a": [1, 2]}}}]
    }))
    .unwrap();
    let (_, e) = testing::run_one(&mut p, ev());
    assert_eq!(e.attributes["retried"], json!("no"));
    assert_eq!(e.attributes["new"], json!({"a": [1, 2]}));
}

#[test]
fn config_errors() {
    let err = |c: Value| testing::init::<Enrich>(c).err().expect("should fail");
    assert!(err(Value::Null).contains("at least one"));
    assert!(err(json!({"rules": [{"query": "*"}]})).contains("neither"));
    assert!(err(json!({"rules": [{"query": "oops", "tags": ["a"]}]})).contains("rule 0"));
    assert!(err(json!({"rules": [{"query": "*", "tags": [""]}]})).contains("empty tag"));
    assert!(
        err(json!({"rules": [{"query": "*", "tags": ["a"], "bogus": 1}]}))
            .contains("unknown field")
    );
    assert!(err(json!({"rules": [{"tags": ["a"]}]})).contains("query"));
}
