//! Plugin host tests with hand-written WAT modules speaking ABI v1.
//!
//! The well-behaved module cannot parse MessagePack, but it does not need to:
//! it reads the event count from the batch's array header (`{"events": [..]}`
//! as rmp-serde writes it: `81 a6 "events" 9n` for n < 16) and answers one
//! precomputed entry per event by index: `i % 3 == 0` keep with the message
//! replaced by "redacted", `1` drop, `2` archive_only. A `hook` inserted at
//! the start of `weir_process` makes it misbehave on a chosen batch size.
use super::*;
use crate::config::Config;
use crate::event::{BatchMeta, Intake};

pub(crate) fn plugin_wat(version: i32, extra_imports: &str, init_body: &str, hook: &str) -> String {
    include_str!("../../../tests/fixtures/abi_v1_plugin.wat")
        .replace("@version@", &version.to_string())
        .replace("@extra_imports@", extra_imports)
        .replace("@init_body@", init_body)
        .replace("@hook@", hook)
}

pub(crate) fn good_wat(hook: &str) -> String {
    plugin_wat(1, "", "(i64.const 0)", hook)
}

/// On a batch of 3 events: spin forever.
pub(crate) const LOOP_ON_3: &str = "(if (i32.eq (local.get $n) (i32.const 3)) (then (loop $spin (br $spin))))";
const GROW_ON_3: &str = "(if (i32.eq (local.get $n) (i32.const 3)) (then (loop $g (drop (memory.grow (i32.const 16))) (br $g))))";
const TRAP_ON_3: &str = "(if (i32.eq (local.get $n) (i32.const 3)) (then unreachable))";
const SHORT_ON_5: &str = "(if (i32.eq (local.get $n) (i32.const 5)) (then (local.set $n (i32.const 4))))";
const REFUSE: &str = "(i64.or (i64.shl (i64.const 128) (i64.const 32)) (i64.const 10))";

fn settings(name: &str, on_error: PluginOnError) -> PluginSettings {
    PluginSettings {
        tenant: "t".into(),
        name: name.into(),
        on_error,
        timeout: Duration::from_millis(50),
        memory_limit: 64 << 20,
        quarantine_after: QUARANTINE_AFTER,
        quarantine_base: QUARANTINE_BASE,
    }
}

fn load(wat: &str, s: PluginSettings) -> Plugin {
    Plugin::load(wat.as_bytes(), None, s).unwrap()
}

fn batch(n: usize) -> Batch {
    let text = "listeners: [{name: i, address: \"127.0.0.1:0\", protocol: http}]\narchive: {store: {type: local, root: /tmp/x}}\nbackends: [{name: b, type: file, path: /tmp/x.ndjson}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n";
    let config = Config::parse(text, "t.yaml").unwrap();
    let tenants = crate::tenant::Tenants::from_config(&config);
    let meta = BatchMeta { tenant: tenants.all()[0].clone(), intake: Intake::Generic, received_at_ms: 1, body_bytes: 10 };
    let events = (0..n)
        .map(|i| {
            let mut e = Event::from_message(format!("secret {i}"), 1_700_000_000_000 + i as i64);
            e.host = Some("h".into());
            e
        })
        .collect();
    Batch::new(meta, events)
}

fn errors(name: &str, reason: &str) -> u64 {
    METRICS.plugin_errors.with_label_values(&["t", name, reason]).get()
}

fn assert_verdicts_applied(b: &Batch) {
    for (i, (e, d)) in b.events.iter().zip(&b.dispositions).enumerate() {
        match i % 3 {
            0 => {
                assert_eq!(*d, Disposition::Index);
                assert_eq!(e.message, "redacted");
                assert_eq!(e.timestamp, 1_700_000_000_000 + i as i64, "a missing timestamp keeps the original");
                assert_eq!(e.host, None, "the returned event replaces the original");
            }
            1 => assert_eq!(*d, Disposition::Drop),
            _ => {
                assert_eq!(*d, Disposition::ArchiveOnly);
                assert_eq!(e.message, format!("secret {i}"));
            }
        }
    }
}

fn untouched(b: &Batch) -> bool {
    b.events.iter().enumerate().all(|(i, e)| e.message == format!("secret {i}"))
}

#[test]
fn well_behaved_plugin_verdicts_are_applied() {
    let p = load(&good_wat(""), settings("good", PluginOnError::Pass));
    for n in [1, 4, 7] {
        let mut b = batch(n);
        p.apply(&mut b);
        assert_verdicts_applied(&b);
    }
    assert_eq!(METRICS.plugin_calls.with_label_values(&["t", "good"]).get(), 3);
    assert_eq!(METRICS.plugin_counter.with_label_values(&["t", "good", "calls"]).get(), 3);
    assert_eq!(errors("good", "trap"), 0);
}

#[test]
fn endless_loop_hits_the_deadline_and_the_next_batch_is_fine() {
    let p = load(&good_wat(LOOP_ON_3), settings("looping", PluginOnError::Drop));
    let start = Instant::now();
    let mut b = batch(3);
    p.apply(&mut b);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(40) && took < Duration::from_secs(2), "took {took:?}");
    assert!(b.dispositions.iter().all(|d| *d == Disposition::Drop), "on_error drop");
    assert_eq!(errors("looping", "timeout"), 1);
    let mut b = batch(4);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

#[test]
fn unbounded_memory_growth_hits_the_limit() {
    let mut s = settings("greedy", PluginOnError::ArchiveOnly);
    s.memory_limit = 1 << 20;
    s.timeout = Duration::from_secs(5);
    let p = load(&good_wat(GROW_ON_3), s);
    let mut b = batch(3);
    p.apply(&mut b);
    assert!(b.dispositions.iter().all(|d| *d == Disposition::ArchiveOnly));
    assert!(untouched(&b));
    assert_eq!(errors("greedy", "memory"), 1);
    let mut b = batch(2);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

#[test]
fn trap_costs_only_its_batch() {
    let p = load(&good_wat(TRAP_ON_3), settings("trapping", PluginOnError::Pass));
    let mut b = batch(3);
    p.apply(&mut b);
    assert!(b.dispositions.iter().all(|d| *d == Disposition::Index) && untouched(&b), "on_error pass leaves the batch as is");
    assert_eq!(errors("trapping", "trap"), 1);
    let mut b = batch(6);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

#[test]
fn wrong_entry_count_is_a_bad_result() {
    let p = load(&good_wat(SHORT_ON_5), settings("short", PluginOnError::Drop));
    let mut b = batch(5);
    p.apply(&mut b);
    assert!(b.dispositions.iter().all(|d| *d == Disposition::Drop));
    assert_eq!(errors("short", "bad_result"), 1);
}

#[test]
fn wrong_abi_version_is_refused() {
    let e = Plugin::load(plugin_wat(2, "", "(i64.const 0)", "").as_bytes(), None, settings("v2", PluginOnError::Pass)).err().unwrap();
    assert!(e.contains("ABI version 2") && e.contains("version 1"), "{e}");
}

#[test]
fn missing_export_and_unknown_import_are_refused() {
    let e = Plugin::load(b"(module (memory (export \"memory\") 1))", None, settings("empty", PluginOnError::Pass)).err().unwrap();
    assert!(e.contains("weir_abi_version"), "{e}");
    let wat = plugin_wat(1, r#"(import "env" "socket" (func (param i32)))"#, "(i64.const 0)", "");
    let e = Plugin::load(wat.as_bytes(), None, settings("imports", PluginOnError::Pass)).err().unwrap();
    assert!(e.contains("cannot link"), "{e}");
}

#[test]
fn init_gets_the_config_and_may_refuse_it() {
    // Accepts only a map config (MessagePack fixmap 0x8n).
    let init = format!("(if (result i64) (i32.eq (i32.and (i32.load8_u (local.get $ptr)) (i32.const 0xf0)) (i32.const 0x80)) (then (i64.const 0)) (else {REFUSE}))");
    let wat = plugin_wat(1, "", &init, "");
    let e = Plugin::load(wat.as_bytes(), None, settings("picky", PluginOnError::Pass)).err().unwrap();
    assert!(e.contains("weir_init refused the config: bad config"), "{e}");
    let cfg: serde_yaml::Value = serde_yaml::from_str("{fields: [password]}").unwrap();
    let p = Plugin::load(wat.as_bytes(), Some(&cfg), settings("picky", PluginOnError::Pass)).unwrap();
    let mut b = batch(2);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

const WASI_IMPORTS: &str = r#"(import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#;
/// Tries to open etc/passwd under fd 3 (there are no preopens), counts the errno, prints to stdout.
const OPEN_FILE: &str = r#"(local.set $k (call $path_open (i32.const 3) (i32.const 0) (i32.const 160) (i32.const 10) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 200)))
    (if (i32.eqz (local.get $k)) (then unreachable))
    (call $counter (i32.const 176) (i32.const 5) (i64.extend_i32_u (local.get $k)))
    (i32.store (i32.const 208) (i32.const 224))
    (i32.store (i32.const 212) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 208) (i32.const 1) (i32.const 216)))"#;

fn run_wasi_plugin(name: &str) {
    let p = load(&plugin_wat(1, WASI_IMPORTS, "(i64.const 0)", OPEN_FILE), settings(name, PluginOnError::Drop));
    let mut b = batch(3);
    off_runtime(|| p.apply(&mut b));
    assert_verdicts_applied(&b);
    assert_eq!(errors(name, "trap"), 0);
    // EBADF (8): there is no directory to open anything under.
    assert_eq!(METRICS.plugin_counter.with_label_values(&["t", name, "errno"]).get(), 8);
}

#[test]
fn wasi_has_no_filesystem_outside_a_runtime() {
    run_wasi_plugin("wasi-plain");
}

#[tokio::test]
async fn wasi_has_no_filesystem_on_a_current_thread_runtime() {
    run_wasi_plugin("wasi-current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_has_no_filesystem_on_a_worker() {
    run_wasi_plugin("wasi-worker");
}

#[test]
fn repeated_failures_quarantine_then_probation() {
    let mut s = settings("flaky", PluginOnError::Drop);
    s.quarantine_after = 2;
    s.quarantine_base = Duration::from_millis(300);
    let p = load(&good_wat(TRAP_ON_3), s);
    let gauge = || METRICS.plugin_quarantined.with_label_values(&["t", "flaky"]).get();
    for _ in 0..2 {
        p.apply(&mut batch(3));
    }
    assert_eq!(gauge(), 1);
    // Quarantined: even a batch it would handle takes on_error, without a call.
    let calls = METRICS.plugin_calls.with_label_values(&["t", "flaky"]).get();
    let mut b = batch(2);
    p.apply(&mut b);
    assert!(b.dispositions.iter().all(|d| *d == Disposition::Drop));
    assert_eq!(METRICS.plugin_calls.with_label_values(&["t", "flaky"]).get(), calls);
    assert_eq!(errors("flaky", "quarantined"), 1);
    std::thread::sleep(Duration::from_millis(350));
    // Over: on probation, one failure quarantines again (for twice as long)...
    p.apply(&mut batch(3));
    assert_eq!(gauge(), 1);
    std::thread::sleep(Duration::from_millis(650));
    // ...and a success ends it.
    let mut b = batch(2);
    p.apply(&mut b);
    assert_eq!(gauge(), 0);
    assert_verdicts_applied(&b);
}

#[test]
fn the_stage_runs_only_the_batch_tenants_plugins() {
    let stage = Plugins { per_tenant: vec![vec![load(&good_wat(""), settings("stage", PluginOnError::Pass))]] };
    let mut b = batch(3);
    stage.process(&mut b).unwrap();
    assert_verdicts_applied(&b);
    let none = Plugins { per_tenant: vec![vec![]] };
    let mut b = batch(3);
    none.process(&mut b).unwrap();
    assert!(untouched(&b));
}
