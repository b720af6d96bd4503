use super::*;
use serde_json::json;

fn sample_event() -> Event {
    let mut attributes = BTreeMap::new();
    attributes.insert("int".to_string(), json!(-42));
    attributes.insert("big".to_string(), json!(u64::MAX));
    attributes.insert("float".to_string(), json!(1.5));
    attributes.insert("str".to_string(), json!("héllo"));
    attributes.insert("bool".to_string(), json!(true));
    attributes.insert("nil".to_string(), json!(null));
    attributes.insert("arr".to_string(), json!([1, "two", [3.25], {"four": null}]));
    attributes.insert("map".to_string(), json!({"a": {"b": [false]}}));
    Event {
        timestamp: 1_700_000_000_123,
        message: "GET /index.html 200".to_string(),
        host: Some("web-1".to_string()),
        service: Some("nginx".to_string()),
        source: None,
        status: Some("info".to_string()),
        tags: vec!["env:prod".to_string(), "canary".to_string()],
        attributes,
    }
}

#[test]
fn pack_unpack_round_trips() {
    assert_eq!(pack(0, 0), 0);
    assert_eq!(pack(1, 2), (1i64 << 32) | 2);
    assert_eq!(unpack(pack(0x1234, 0x10)), (0x1234, 0x10));
    // High bits set in both halves: still unsigned 32-bit each.
    let p = pack(0xFFFF_FFF0, 0xFFFF_FFFF);
    assert_eq!(p as u64, 0xFFFF_FFF0_FFFF_FFFF);
    assert!(p < 0, "a pointer above 2 GiB makes the i64 negative");
    assert_eq!(unpack(p), (0xFFFF_FFF0, 0xFFFF_FFFF));
    assert_eq!(unpack(pack(0x8000_0000, 1)), (0x8000_0000, 1));
}

#[test]
fn event_round_trips_through_messagepack() {
    let ev = sample_event();
    let bytes = encode(&ev).unwrap();
    let back: Event = decode(&bytes).unwrap();
    assert_eq!(back, ev);
    assert_eq!(back.attributes["big"], json!(u64::MAX));
    assert_eq!(back.attributes["int"], json!(-42));
    assert!(back.attributes["float"].is_f64());
}

#[test]
fn event_encodes_as_a_named_map() {
    let bytes = encode(&sample_event()).unwrap();
    // Decode generically: a map with exactly the ABI's field names.
    let v: serde_json::Value = decode(&bytes).unwrap();
    let obj = v.as_object().expect("a map");
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "attributes",
            "host",
            "message",
            "service",
            "source",
            "status",
            "tags",
            "timestamp"
        ]
    );
    assert_eq!(obj["source"], json!(null));
    assert_eq!(obj["timestamp"], json!(1_700_000_000_123i64));
}

#[test]
fn event_decoding_tolerates_unknown_and_missing_keys() {
    // A host of a later v1 release may send extra optional fields; an older one may omit optional ones.
    let wire = json!({
        "timestamp": 5,
        "message": "m",
        "host": null,
        "tags": [],
        "attributes": {},
        "some_future_field": {"x": 1},
    });
    let ev: Event = decode(&encode(&wire).unwrap()).unwrap();
    assert_eq!(
        ev,
        Event {
            timestamp: 5,
            message: "m".into(),
            ..Event::default()
        }
    );
}

#[test]
fn verdicts_are_strings_on_the_wire() {
    for (v, s) in [
        (Verdict::Keep, "keep"),
        (Verdict::Drop, "drop"),
        (Verdict::ArchiveOnly, "archive_only"),
    ] {
        let bytes = encode(&v).unwrap();
        let as_str: String = decode(&bytes).unwrap();
        assert_eq!(as_str, s);
        assert_eq!(decode::<Verdict>(&bytes).unwrap(), v);
    }
    assert!(decode::<Verdict>(&encode("maybe").unwrap()).is_err());
}

#[test]
fn batch_and_result_wire_format() {
    let batch = Batch {
        events: vec![sample_event(), Event::with_message("x")],
    };
    let bytes = encode(&batch).unwrap();
    let generic: serde_json::Value = decode(&bytes).unwrap();
    assert_eq!(generic["events"].as_array().unwrap().len(), 2);
    assert_eq!(decode::<Batch>(&bytes).unwrap(), batch);

    let result = BatchResult {
        results: vec![
            EventResult {
                verdict: Verdict::Keep,
                event: None,
            },
            EventResult {
                verdict: Verdict::Keep,
                event: Some(Event::with_message("y")),
            },
            EventResult {
                verdict: Verdict::ArchiveOnly,
                event: None,
            },
        ],
    };
    let bytes = encode(&result).unwrap();
    let generic: serde_json::Value = decode(&bytes).unwrap();
    assert_eq!(
        generic["results"][0],
        json!({"verdict": "keep", "event": null})
    );
    assert_eq!(generic["results"][1]["event"]["message"], json!("y"));
    assert_eq!(generic["results"][2]["verdict"], json!("archive_only"));
    assert_eq!(decode::<BatchResult>(&bytes).unwrap(), result);
}

// --- A tiny plugin to drive the export logic ---

#[derive(serde::Deserialize, Default, Debug)]
#[serde(default)]
struct TestConfig {
    drop_word: Option<String>,
    tag: Option<String>,
    fail: bool,
}

struct TestPlugin {
    cfg: TestConfig,
}

impl Plugin for TestPlugin {
    type Config = TestConfig;
    fn new(cfg: TestConfig) -> Result<Self, String> {
        if cfg.fail {
            return Err("asked to fail".into());
        }
        Ok(TestPlugin { cfg })
    }
    fn process(&mut self, event: &mut Event) -> Verdict {
        if let Some(w) = &self.cfg.drop_word {
            if event.message.contains(w.as_str()) {
                return Verdict::Drop;
            }
        }
        if event.message.contains("archive") {
            return Verdict::ArchiveOnly;
        }
        if let Some(t) = &self.cfg.tag {
            if event.message.contains("tagme") {
                event.tags.push(t.clone());
            }
        }
        Verdict::Keep
    }
}

#[test]
fn config_nil_or_absent_gives_default() {
    let p: TestPlugin = init_plugin(&[]).unwrap();
    assert!(p.cfg.drop_word.is_none());
    let p: TestPlugin = init_plugin(&[0xc0]).unwrap();
    assert!(p.cfg.tag.is_none());
    let p: TestPlugin = testing::init(json!({"drop_word": "x"})).unwrap();
    assert_eq!(p.cfg.drop_word.as_deref(), Some("x"));
    assert_eq!(
        testing::init::<TestPlugin>(json!({"fail": true}))
            .err()
            .unwrap(),
        "asked to fail"
    );
    let err = testing::init::<TestPlugin>(json!({"fail": "not a bool"}))
        .err()
        .unwrap();
    assert!(err.starts_with("invalid plugin config"), "{err}");
}

#[test]
fn process_reports_verdicts_and_only_modified_events() {
    let mut p: TestPlugin = testing::init(json!({"drop_word": "secret", "tag": "seen"})).unwrap();
    let events = vec![
        Event::with_message("plain"),
        Event::with_message("a secret"),
        Event::with_message("tagme please"),
        Event::with_message("archive this"),
    ];
    let raw = testing::run_raw(&mut p, &events);
    assert_eq!(raw.results.len(), 4);
    assert_eq!(
        raw.results[0],
        EventResult {
            verdict: Verdict::Keep,
            event: None
        }
    );
    assert_eq!(
        raw.results[1],
        EventResult {
            verdict: Verdict::Drop,
            event: None
        }
    );
    let modified = raw.results[2]
        .event
        .as_ref()
        .expect("modified event is sent back");
    assert_eq!(raw.results[2].verdict, Verdict::Keep);
    assert_eq!(modified.tags, vec!["seen".to_string()]);
    assert_eq!(
        raw.results[3],
        EventResult {
            verdict: Verdict::ArchiveOnly,
            event: None
        }
    );
}

/// Uppercases messages holding "x" and reports exactly those as modified (or, with `lie`, none).
struct Tracking {
    lie: bool,
}

impl Plugin for Tracking {
    type Config = bool;
    fn new(lie: bool) -> Result<Self, String> {
        Ok(Tracking { lie })
    }
    fn process(&mut self, _: &mut Event) -> Verdict {
        unreachable!("process_batch_tracked is overridden")
    }
    fn process_batch_tracked(&mut self, events: &mut [Event]) -> Vec<(Verdict, bool)> {
        events
            .iter_mut()
            .map(|e| {
                let hit = e.message.contains('x');
                if hit {
                    e.message = e.message.to_uppercase();
                }
                (Verdict::Keep, hit && !self.lie)
            })
            .collect()
    }
}

#[test]
fn a_plugin_reporting_its_own_modifications_sends_back_just_those() {
    let events = vec![Event::with_message("a x"), Event::with_message("plain")];
    let mut p: Tracking = testing::init(json!(false)).unwrap();
    let raw = testing::run_raw(&mut p, &events);
    assert_eq!(raw.results[0].event.as_ref().unwrap().message, "A X");
    assert_eq!(raw.results[1].event, None);
    // What the plugin does not report is not sent: the host keeps its event as it was.
    let mut p: Tracking = testing::init(json!(true)).unwrap();
    let raw = testing::run_raw(&mut p, &events);
    assert!(raw.results.iter().all(|r| r.event.is_none()));
}

#[test]
fn undecodable_batch_gives_empty_results() {
    let mut p: TestPlugin = init_plugin(&[]).unwrap();
    let out = process_encoded(&mut p, b"\xff\x00garbage");
    let r: BatchResult = decode(&out).unwrap();
    assert!(r.results.is_empty());
    // An empty batch is fine and gives an empty (correct) result.
    let out = process_encoded(&mut p, &encode(&Batch::default()).unwrap());
    assert!(decode::<BatchResult>(&out).unwrap().results.is_empty());
}

#[test]
fn export_glue_init_and_process_through_buffers() {
    use __export::*;
    let slot: Slot<TestPlugin> = Slot::new();

    // Host writes config into a guest buffer; the guest takes ownership.
    let cfg = encode(&json!({"fail": true})).unwrap();
    let ptr = alloc_buf(cfg.len());
    assert!(!ptr.is_null());
    unsafe { std::ptr::copy_nonoverlapping(cfg.as_ptr(), ptr, cfg.len()) };
    let input = unsafe { take_input(ptr, cfg.len()) };
    let (eptr, elen) = init(&slot, input.as_slice());
    drop(input);
    assert!(elen > 0);
    let msg = unsafe { std::slice::from_raw_parts(eptr, elen) }.to_vec();
    unsafe { free_buf(eptr, elen) };
    assert_eq!(String::from_utf8(msg).unwrap(), "asked to fail");

    // Success returns no buffer.
    let cfg = encode(&json!(null)).unwrap();
    let (p, l) = init(&slot, &cfg);
    assert!(p.is_null() && l == 0);
    assert_eq!(pack_buf((p, l)), 0);

    // Process a batch.
    let batch = encode(&Batch {
        events: vec![Event::with_message("archive me")],
    })
    .unwrap();
    let ptr = alloc_buf(batch.len());
    unsafe { std::ptr::copy_nonoverlapping(batch.as_ptr(), ptr, batch.len()) };
    let input = unsafe { take_input(ptr, batch.len()) };
    let (rptr, rlen) = process(&slot, input.as_slice());
    drop(input);
    let out = unsafe { std::slice::from_raw_parts(rptr, rlen) }.to_vec();
    unsafe { free_buf(rptr, rlen) };
    let r: BatchResult = decode(&out).unwrap();
    assert_eq!(
        r.results,
        vec![EventResult {
            verdict: Verdict::ArchiveOnly,
            event: None
        }]
    );

    // Zero-length alloc/free is harmless.
    let z = alloc_buf(0);
    assert!(!z.is_null());
    unsafe { free_buf(z, 0) };
}

#[test]
fn process_before_init_uses_default_config() {
    let slot: Slot<TestPlugin> = Slot::new();
    let batch = encode(&Batch {
        events: vec![Event::with_message("x")],
    })
    .unwrap();
    let (rptr, rlen) = __export::process(&slot, &batch);
    let out = unsafe { std::slice::from_raw_parts(rptr, rlen) }.to_vec();
    unsafe { __export::free_buf(rptr, rlen) };
    assert_eq!(decode::<BatchResult>(&out).unwrap().results.len(), 1);
}

#[test]
fn native_host_fallbacks() {
    log(Level::Debug, "hello from a test");
    assert!(now_ms() > 1_600_000_000_000);
    counter_add("things", 2);
    counter_add("things", 3);
    assert_eq!(testing::counters()["things"], 5);
}

mod macro_expansion {
    // The macro must expand and type-check natively too.
    use super::TestPlugin;
    crate::export_plugin!(TestPlugin);

    #[test]
    fn abi_version_export() {
        assert_eq!(__weir_plugin_exports::weir_abi_version(), 1);
    }
}

#[test]
fn verdict_interoperates_with_a_derived_serde_enum() {
    // The host may well derive its verdict type; make sure both directions agree under rmp-serde.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum HostVerdict {
        Keep,
        Drop,
        ArchiveOnly,
    }
    let pairs = [
        (Verdict::Keep, HostVerdict::Keep),
        (Verdict::Drop, HostVerdict::Drop),
        (Verdict::ArchiveOnly, HostVerdict::ArchiveOnly),
    ];
    for (ours, theirs) in pairs {
        assert_eq!(
            decode::<HostVerdict>(&encode(&ours).unwrap()).unwrap(),
            theirs
        );
        assert_eq!(decode::<Verdict>(&encode(&theirs).unwrap()).unwrap(), ours);
    }
}

/// Rewrites the message and the host, but asks only for the message.
struct MessageOnly;

impl Plugin for MessageOnly {
    type Config = ();
    const FIELDS: Fields = Fields::MESSAGE.with(Fields::TIMESTAMP);
    fn new(_: ()) -> Result<Self, String> {
        Ok(MessageOnly)
    }
    fn process(&mut self, event: &mut Event) -> Verdict {
        assert!(event.host.is_none() && event.tags.is_empty() && event.attributes.is_empty());
        event.message = format!("seen: {}", event.message);
        event.host = Some("ignored".into());
        Verdict::Keep
    }
}

#[test]
fn a_plugin_sees_and_changes_only_the_fields_it_asks_for() {
    assert_eq!(Fields::MESSAGE.with(Fields::ATTRIBUTES).bits(), 2 | 128);
    assert!(Fields::ALL.contains(Fields::TAGS) && !Fields::MESSAGE.contains(Fields::TAGS));
    let ev = sample_event();
    let masked = Fields::MESSAGE.mask(&ev);
    assert_eq!(masked, Event::with_message(ev.message.clone()));
    assert_eq!(Fields::ALL.mask(&ev), ev);

    let mut p = testing::init::<MessageOnly>(serde_json::Value::Null).unwrap();
    let (verdict, out) = testing::run_one(&mut p, ev.clone());
    assert_eq!(verdict, Verdict::Keep);
    assert_eq!(out.message, format!("seen: {}", ev.message));
    // Everything not asked for is the original's, the ignored host change included.
    assert_eq!(
        Event {
            message: ev.message.clone(),
            ..out
        },
        ev
    );
}

/// A config as the guide shows it: unknown keys refused, `team` required, the rest optional.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StrictConfig {
    team: String,
    #[serde(default)]
    limits: StrictLimits,
}

#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
struct StrictLimits {
    max: u32,
}

struct Strict(StrictConfig);

impl Plugin for Strict {
    type Config = StrictConfig;
    fn new(c: StrictConfig) -> Result<Self, String> {
        Ok(Strict(c))
    }
    fn process(&mut self, event: &mut Event) -> Verdict {
        event.tags.push(format!("team:{}", self.0.team));
        Verdict::Keep
    }
}

#[test]
fn a_required_field_is_required_even_without_any_config() {
    let p: Strict = testing::init(json!({"team": "payments"})).unwrap();
    assert_eq!((p.0.team.as_str(), p.0.limits.max), ("payments", 0));
    // No `config:` at all is an empty map to a struct: the required field is missing, not defaulted.
    for absent in [serde_json::Value::Null, json!({})] {
        let err = testing::init::<Strict>(absent).err().unwrap();
        assert_eq!(err, "invalid plugin config: missing field `team`");
    }
    assert_eq!(
        init_plugin::<Strict>(&[]).err().unwrap(),
        "invalid plugin config: missing field `team`"
    );
    // Config types that make something of nothing still do: (), Option, structs whose fields all default.
    assert!(init_plugin::<MessageOnly>(&[]).is_ok());
    let p: TestPlugin = init_plugin(&[0xc0]).unwrap();
    assert!(p.cfg.drop_word.is_none() && !p.cfg.fail);
}

#[test]
fn config_errors_name_the_field() {
    let err = |config| testing::init::<Strict>(config).err().unwrap();
    assert_eq!(
        err(json!({"team": "a", "tema": "b"})),
        "invalid plugin config at `tema`: unknown field `tema`, expected `team` or `limits`"
    );
    assert_eq!(
        err(json!({"team": 5})),
        "invalid plugin config at `team`: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        err(json!({"team": "a", "limits": {"mxa": 1}})),
        "invalid plugin config at `limits.mxa`: unknown field `mxa`, expected `max`"
    );
    assert_eq!(
        err(json!({"team": "a", "limits": {"max": -1}})),
        "invalid plugin config at `limits.max`: invalid value: integer `-1`, expected u32"
    );
}
