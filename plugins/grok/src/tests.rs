use super::*;
use serde_json::json;
use weir_sdk::testing;

fn plugin(config: Value) -> GrokPlugin {
    testing::init::<GrokPlugin>(config).expect("init")
}

/// `%{NAME}` anchored must match the whole sample.
fn full(name: &str, sample: &str) -> bool {
    let g = Library::default()
        .compile(name, &format!("^%{{{name}}}$"))
        .unwrap();
    g.regex().is_match(sample)
}

/// `%{NAME:x}` unanchored: what it captures.
fn cap(name: &str, text: &str) -> Option<String> {
    let g = Library::default()
        .compile(name, &format!("%{{{name}:x}}"))
        .unwrap();
    g.captures(text, true)
        .and_then(|c| c.into_iter().next())
        .map(|(_, v)| v.as_str().unwrap().to_string())
}

#[test]
fn every_builtin_compiles() {
    let lib = Library::default();
    for (name, _) in patterns::BUILTIN {
        lib.compile(name, &format!("%{{{name}:x}}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn required_patterns_exist() {
    let lib = Library::default();
    for n in [
        "WORD",
        "NOTSPACE",
        "SPACE",
        "DATA",
        "GREEDYDATA",
        "INT",
        "NUMBER",
        "BASE10NUM",
        "POSINT",
        "NONNEGINT",
        "IP",
        "IPV4",
        "IPV6",
        "HOSTNAME",
        "IPORHOST",
        "HOSTPORT",
        "USER",
        "USERNAME",
        "EMAILADDRESS",
        "URIPATH",
        "URIPARAM",
        "URIPATHPARAM",
        "URI",
        "MONTH",
        "MONTHNUM",
        "MONTHDAY",
        "YEAR",
        "DAY",
        "HOUR",
        "MINUTE",
        "SECOND",
        "TIME",
        "DATE_US",
        "DATE_EU",
        "ISO8601_TIMEZONE",
        "TIMESTAMP_ISO8601",
        "SYSLOGTIMESTAMP",
        "SYSLOGPROG",
        "SYSLOGHOST",
        "SYSLOGBASE",
        "PROG",
        "QS",
        "QUOTEDSTRING",
        "LOGLEVEL",
        "HTTPDATE",
        "HTTPDERROR_DATE",
        "COMMONAPACHELOG",
        "COMBINEDAPACHELOG",
        "UUID",
        "PATH",
        "UNIXPATH",
        "JAVACLASS",
    ] {
        assert!(lib.contains(n), "{n} missing");
    }
}

#[test]
fn positive_samples() {
    let cases: &[(&str, &[&str])] = &[
        ("WORD", &["hello", "foo_bar1"]),
        ("NOTSPACE", &["a/b:c?d"]),
        ("SPACE", &["", "  \t"]),
        ("INT", &["42", "-7", "+3"]),
        ("NUMBER", &["3.14", "-2", ".5", "10"]),
        ("BASE10NUM", &["1.5", "-0.25"]),
        ("POSINT", &["1", "987"]),
        ("NONNEGINT", &["0", "12"]),
        ("IPV4", &["10.0.0.1", "255.255.255.255", "192.168.1.200"]),
        (
            "IPV6",
            &["::1", "fe80::1", "2001:db8::8a2e:370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
              "::ffff:192.0.2.1", "fe80::1%eth0", "1::", "a:b:c:d:e:f:1.2.3.4"],
        ),
        ("IP", &["10.1.2.3", "::1"]),
        ("HOSTNAME", &["example.com", "a-b.c.d", "localhost"]),
        ("IPORHOST", &["example.com", "1.2.3.4"]),
        ("HOSTPORT", &["example.com:8080", "10.0.0.1:22"]),
        ("USERNAME", &["john.doe-1"]),
        ("USER", &["root"]),
        ("EMAILADDRESS", &["john.doe+tag@example.co.uk"]),
        ("URIPATH", &["/a/b/c.html", "/"]),
        ("URIPARAM", &["?a=1&b=2"]),
        ("URIPATHPARAM", &["/search?q=rust&page=2"]),
        ("URI", &["https://user:pw@example.com:8443/p/a?x=1", "http://10.0.0.1/", "ftp://host"]),
        ("MONTH", &["Jan", "January", "Dec", "Sep", "Oct"]),
        ("MONTHNUM", &["1", "09", "12"]),
        ("MONTHDAY", &["1", "09", "31"]),
        ("YEAR", &["2024", "05"]),
        ("DAY", &["Mon", "Sunday"]),
        ("HOUR", &["0", "23"]),
        ("MINUTE", &["59"]),
        ("SECOND", &["59", "60", "07.123", "07,5"]),
        ("TIME", &["06:55:46", "23:59:60.123"]),
        ("DATE_US", &["12/31/2024", "1-2-99"]),
        ("DATE_EU", &["31.12.2024", "01/02/2024"]),
        ("ISO8601_TIMEZONE", &["Z", "+02:00", "-0530"]),
        ("TIMESTAMP_ISO8601", &["2024-01-02T03:04:05Z", "2024-01-02 03:04:05.123+02:00", "2024-01-02T03:04"]),
        ("SYSLOGTIMESTAMP", &["Dec 10 06:55:46", "Jun  9 01:02:03"]),
        ("SYSLOGPROG", &["sshd[24200]", "kernel", "sshd(pam_unix)[19939]"]),
        ("SYSLOGHOST", &["LabSZ", "10.0.0.1"]),
        ("SYSLOGBASE", &["Dec 10 06:55:46 LabSZ sshd[24200]:"]),
        ("PROG", &["su(pam_unix)"]),
        ("QS", &["\"hello \\\"world\\\"\"", "''", "'single'"]),
        ("QUOTEDSTRING", &["\"\"", "`tick`"]),
        ("LOGLEVEL", &["INFO", "warn", "Warning", "ERROR", "notice", "FATAL", "debug"]),
        ("HTTPDATE", &["10/Oct/2000:13:55:36 -0700"]),
        ("HTTPDERROR_DATE", &["Sun Dec 04 04:47:44 2005"]),
        ("UUID", &["123e4567-e89b-12d3-a456-426614174000"]),
        ("PATH", &["/var/log/syslog", "C:\\Windows\\System32"]),
        ("UNIXPATH", &["/etc/httpd/conf/workers2.properties"]),
        ("JAVACLASS", &["org.apache.Foo$Bar", "dfs.DataNode$PacketResponder"]),
        (
            "COMMONAPACHELOG",
            &["127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] \"GET /apache_pb.gif HTTP/1.0\" 200 2326"],
        ),
        (
            "COMBINEDAPACHELOG",
            &["127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] \"GET /a?b=c HTTP/1.1\" 304 - \"http://example.com/\" \"Mozilla/5.0 (X11)\""],
        ),
    ];
    for (name, samples) in cases {
        for s in *samples {
            assert!(full(name, s), "{name} should match {s:?}");
        }
    }
}

#[test]
fn negative_samples() {
    let cases: &[(&str, &[&str])] = &[
        ("INT", &["1.5", "abc"]),
        ("POSINT", &["0", "-1"]),
        ("IPV4", &["256.1.1.1", "1.2.3", "1.2.3.4.5"]),
        ("IPV6", &["12:30:45", "hello", "1:2:3:4:5:6:7:8:9"]),
        ("MONTH", &["Foo", "Janx"]),
        ("MONTHDAY", &["32", "0"]),
        ("HOUR", &["24"]),
        ("UUID", &["123e4567-e89b-12d3-a456"]),
        ("DAY", &["Someday"]),
        ("EMAILADDRESS", &["not-an-email"]),
        ("TIME", &["25:00:00", "12:60:00"]),
    ];
    for (name, samples) in cases {
        for s in *samples {
            assert!(!full(name, s), "{name} should not match {s:?}");
        }
    }
}

#[test]
fn unanchored_captures_are_whole_tokens() {
    assert_eq!(
        cap("IPV4", "from 173.234.31.186 port 22").as_deref(),
        Some("173.234.31.186")
    );
    assert_eq!(
        cap("IPV6", "addr fe80::1:2 up").as_deref(),
        Some("fe80::1:2")
    );
    assert_eq!(cap("NUMBER", "took 12.5ms").as_deref(), Some("12.5"));
    assert_eq!(
        cap("UUID", "id=123e4567-e89b-12d3-a456-426614174000;").as_deref(),
        Some("123e4567-e89b-12d3-a456-426614174000")
    );
    assert_eq!(
        cap("QS", r#"say "hi there" now"#).as_deref(),
        Some("\"hi there\"")
    );
    assert_eq!(cap("LOGLEVEL", "[warn] x").as_deref(), Some("warn"));
}

#[test]
fn captures_conversions_and_unnamed() {
    let mut p = plugin(json!({
        "patterns": [{"name": "kv", "pattern": "^%{WORD:verb} %{INT:code:int} %{NUMBER:took:float} %{WORD} %{NUMBER:n:int}$"}]
    }));
    let (v, e) = testing::run_one(&mut p, Event::with_message("GET 200 1.5 skipped 3.9"));
    assert_eq!(v, Verdict::Keep);
    assert_eq!(e.attributes["verb"], json!("GET"));
    assert_eq!(e.attributes["code"], json!(200));
    assert_eq!(e.attributes["took"], json!(1.5));
    assert_eq!(e.attributes["n"], json!(3));
    assert_eq!(e.attributes[PATTERN_ATTRIBUTE], json!("kv"));
    assert_eq!(
        e.attributes.len(),
        5,
        "unnamed %{{WORD}} captures nothing: {:?}",
        e.attributes
    );
    assert_eq!(e.message, "GET 200 1.5 skipped 3.9");
}

#[test]
fn library_patterns_with_own_captures() {
    let mut p =
        plugin(json!({"patterns": [{"name": "apache", "pattern": "%{COMBINEDAPACHELOG}"}]}));
    let line = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
    let (_, e) = testing::run_one(&mut p, Event::with_message(line));
    let a = &e.attributes;
    assert_eq!(a["clientip"], json!("127.0.0.1"));
    assert_eq!(a["auth"], json!("frank"));
    assert_eq!(a["ident"], json!("-"));
    assert_eq!(a["timestamp"], json!("10/Oct/2000:13:55:36 -0700"));
    assert_eq!(a["verb"], json!("GET"));
    assert_eq!(a["request"], json!("/apache_pb.gif"));
    assert_eq!(a["httpversion"], json!("1.0"));
    assert_eq!(a["response"], json!("200"));
    assert_eq!(a["bytes"], json!("2326"));
    assert_eq!(
        a["referrer"],
        json!("\"http://www.example.com/start.html\"")
    );
    assert_eq!(a["agent"], json!("\"Mozilla/4.08 [en] (Win98; I ;Nav)\""));
    assert!(!a.contains_key("rawrequest"));

    let mut p = plugin(
        json!({"patterns": [{"name": "sys", "pattern": "^%{SYSLOGBASE} %{GREEDYDATA:msg}"}]}),
    );
    let (_, e) = testing::run_one(
        &mut p,
        Event::with_message("Dec 10 06:55:46 LabSZ sshd[24200]: Invalid user x"),
    );
    assert_eq!(e.attributes["timestamp"], json!("Dec 10 06:55:46"));
    assert_eq!(e.attributes["logsource"], json!("LabSZ"));
    assert_eq!(e.attributes["program"], json!("sshd"));
    assert_eq!(e.attributes["pid"], json!("24200"));
    assert_eq!(e.attributes["msg"], json!("Invalid user x"));
}

#[test]
fn first_match_wins_and_nomatch_is_counted() {
    let mut p = plugin(json!({
        "patterns": [
            {"name": "num", "pattern": "^%{INT:n:int}$"},
            {"name": "word", "pattern": "^%{WORD:w}$"},
            {"name": "any", "pattern": "^%{GREEDYDATA:all}$"}
        ]
    }));
    let before = testing::counters()
        .get("grok_nomatch")
        .copied()
        .unwrap_or(0);
    let out = testing::run(
        &mut p,
        &[
            Event::with_message("12"),
            Event::with_message("abc"),
            Event::with_message("a b"),
        ],
    );
    assert_eq!(out[0].1.attributes[PATTERN_ATTRIBUTE], json!("num"));
    assert_eq!(out[0].1.attributes["n"], json!(12));
    assert_eq!(out[1].1.attributes[PATTERN_ATTRIBUTE], json!("word"));
    assert_eq!(out[2].1.attributes[PATTERN_ATTRIBUTE], json!("any"));
    assert_eq!(
        testing::counters()
            .get("grok_nomatch")
            .copied()
            .unwrap_or(0),
        before
    );

    let mut p = plugin(json!({"patterns": [{"name": "num", "pattern": "^%{INT:n}$"}]}));
    let ev = Event::with_message("not a number");
    let raw = testing::run_raw(&mut p, std::slice::from_ref(&ev));
    assert_eq!(raw.results[0].verdict, Verdict::Keep);
    assert!(
        raw.results[0].event.is_none(),
        "unmatched events go back unchanged"
    );
    assert_eq!(testing::counters()["grok_nomatch"], before + 1);
}

#[test]
fn custom_patterns_target_source_and_nesting() {
    let mut p = plugin(json!({
        "custom_patterns": {"BLK": "blk_-?[0-9]+", "PIDS": "%{POSINT}"},
        "source": "raw.line",
        "target": "parsed",
        "patterns": [{"name": "b", "pattern": "%{BLK:[block][id]} pid=%{PIDS:pid:int} (?P<rest>.*)"}]
    }));
    let mut ev = Event::with_message("untouched");
    ev.attributes
        .insert("raw".into(), json!({"line": "x blk_-123 pid=42 tail end"}));
    ev.attributes.insert("parsed".into(), json!({"keep": true}));
    let (_, e) = testing::run_one(&mut p, ev);
    assert_eq!(
        e.attributes["parsed"],
        json!({"keep": true, "block": {"id": "blk_-123"}, "pid": 42, "rest": "tail end"})
    );
    assert_eq!(e.attributes[PATTERN_ATTRIBUTE], json!("b"));
    assert_eq!(e.message, "untouched");
}

#[test]
fn empty_captures_are_skipped_unless_asked() {
    let cfg = |keep: bool| json!({"keep_empty_captures": keep, "patterns": [{"name": "p", "pattern": "^a=%{DATA:a};b=%{DATA:b}$"}]});
    let (_, e) = testing::run_one(&mut plugin(cfg(false)), Event::with_message("a=;b=x"));
    assert!(!e.attributes.contains_key("a"));
    assert_eq!(e.attributes["b"], json!("x"));
    let (_, e) = testing::run_one(&mut plugin(cfg(true)), Event::with_message("a=;b=x"));
    assert_eq!(e.attributes["a"], json!(""));
}

#[test]
fn config_errors() {
    let err = |c: Value| testing::init::<GrokPlugin>(c).err().expect("should fail");
    assert!(err(json!({"patterns": []})).contains("at least one"));
    assert!(err(Value::Null).contains("at least one"));
    assert!(
        err(json!({"patterns": [{"name": "x", "pattern": "%{NOPE:a}"}]}))
            .contains("unknown pattern")
    );
    assert!(
        err(json!({"patterns": [{"name": "x", "pattern": "%{INT:a:bool}"}]}))
            .contains("unknown conversion")
    );
    assert!(
        err(json!({"patterns": [{"name": "x", "pattern": "%{INT:a"}]})).contains("unterminated")
    );
    assert!(err(json!({"patterns": [{"name": "x", "pattern": "(["}]})).contains("invalid regex"));
    assert!(err(json!({"custom_patterns": {"A": "%{B}", "B": "%{A}"}, "patterns": [{"name": "x", "pattern": "%{A}"}]}))
        .contains("recursive"));
    assert!(err(
        json!({"custom_patterns": {"bad-name": "x"}, "patterns": [{"name": "x", "pattern": "x"}]})
    )
    .contains("invalid custom pattern name"));
    assert!(
        err(json!({"patterns": [{"name": "x", "pattern": "x"}], "bogus": 1}))
            .contains("unknown field")
    );
}
