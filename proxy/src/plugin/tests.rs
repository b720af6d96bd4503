//! Plugin host tests with hand-written WAT modules speaking ABI v1.
//!
//! The well-behaved module cannot parse MessagePack, but it does not need to:
//! it reads the event count from the batch's array header (`{"events": [..]}`
//! as rmp-serde writes it: `81 a6 "events" 9n` for n < 16) and answers one
//! precomputed entry per event by index: `i % 3 == 0` keep with the message
//! replaced by "redacted", `1` drop, `2` archive_only. A `hook` inserted at
//! the start of `weir_process` makes it misbehave on a chosen batch size.
use super::*;
use cache::ModuleCache;

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
pub(crate) const LOOP_ON_3: &str =
    "(if (i32.eq (local.get $n) (i32.const 3)) (then (loop $spin (br $spin))))";
const GROW_ON_3: &str = "(if (i32.eq (local.get $n) (i32.const 3)) (then (loop $g (drop (memory.grow (i32.const 16))) (br $g))))";
const TRAP_ON_3: &str = "(if (i32.eq (local.get $n) (i32.const 3)) (then unreachable))";
const SHORT_ON_5: &str =
    "(if (i32.eq (local.get $n) (i32.const 5)) (then (local.set $n (i32.const 4))))";
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
        instances: 2,
    }
}

fn load(wat: &str, s: PluginSettings) -> Plugin {
    Plugin::load(wat.as_bytes(), None, s).unwrap()
}

fn batch(n: usize) -> Batch {
    let events = (0..n)
        .map(|i| {
            let mut e = Event::from_message(format!("secret {i}"), 1_700_000_000_000 + i as i64);
            e.host = Some("h".into());
            e
        })
        .collect();
    Batch::for_test("t", 10, events)
}

fn errors(name: &str, reason: &str) -> u64 {
    METRICS
        .plugin_errors
        .with_label_values(&["t", name, reason])
        .get()
}

fn assert_verdicts_applied(b: &Batch) {
    for (i, (e, d)) in b.events.iter().zip(&b.dispositions).enumerate() {
        match i % 3 {
            0 => {
                assert_eq!(*d, Disposition::Index);
                assert_eq!(e.message, "redacted");
                assert_eq!(
                    e.timestamp,
                    1_700_000_000_000 + i as i64,
                    "a missing timestamp keeps the original"
                );
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
    b.events
        .iter()
        .enumerate()
        .all(|(i, e)| e.message == format!("secret {i}"))
}

#[test]
fn well_behaved_plugin_verdicts_are_applied() {
    let p = load(&good_wat(""), settings("good", PluginOnError::Pass));
    for n in [1, 4, 7] {
        let mut b = batch(n);
        p.apply(&mut b);
        assert_verdicts_applied(&b);
    }
    assert_eq!(
        METRICS.plugin_calls.with_label_values(&["t", "good"]).get(),
        3
    );
    assert_eq!(
        METRICS
            .plugin_counter
            .with_label_values(&["t", "good", "calls"])
            .get(),
        3
    );
    assert_eq!(errors("good", "trap"), 0);
}

#[test]
fn endless_loop_hits_the_deadline_and_the_next_batch_is_fine() {
    let p = load(
        &good_wat(LOOP_ON_3),
        settings("looping", PluginOnError::Drop),
    );
    let start = Instant::now();
    let mut b = batch(3);
    p.apply(&mut b);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(40) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(
        b.dispositions.iter().all(|d| *d == Disposition::Drop),
        "on_error drop"
    );
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
    assert!(b
        .dispositions
        .iter()
        .all(|d| *d == Disposition::ArchiveOnly));
    assert!(untouched(&b));
    assert_eq!(errors("greedy", "memory"), 1);
    let mut b = batch(2);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

#[test]
fn trap_costs_only_its_batch() {
    let p = load(
        &good_wat(TRAP_ON_3),
        settings("trapping", PluginOnError::Pass),
    );
    let mut b = batch(3);
    p.apply(&mut b);
    assert!(
        b.dispositions.iter().all(|d| *d == Disposition::Index) && untouched(&b),
        "on_error pass leaves the batch as is"
    );
    assert_eq!(errors("trapping", "trap"), 1);
    let mut b = batch(6);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

#[test]
fn wrong_entry_count_is_a_bad_result() {
    let p = load(
        &good_wat(SHORT_ON_5),
        settings("short", PluginOnError::Drop),
    );
    let mut b = batch(5);
    p.apply(&mut b);
    assert!(b.dispositions.iter().all(|d| *d == Disposition::Drop));
    assert_eq!(errors("short", "bad_result"), 1);
}

#[test]
fn wrong_abi_version_is_refused() {
    let e = Plugin::load(
        plugin_wat(2, "", "(i64.const 0)", "").as_bytes(),
        None,
        settings("v2", PluginOnError::Pass),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("ABI version 2") && e.contains("version 1"),
        "{e}"
    );
}

#[test]
fn missing_export_and_unknown_import_are_refused() {
    let e = Plugin::load(
        b"(module (memory (export \"memory\") 1))",
        None,
        settings("empty", PluginOnError::Pass),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("weir_abi_version"), "{e}");
    let wat = plugin_wat(
        1,
        r#"(import "env" "socket" (func (param i32)))"#,
        "(i64.const 0)",
        "",
    );
    let e = Plugin::load(
        wat.as_bytes(),
        None,
        settings("imports", PluginOnError::Pass),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("imports env.socket,"), "names the import: {e}");
}

#[test]
fn init_gets_the_config_and_may_refuse_it() {
    // Accepts only a map config (MessagePack fixmap 0x8n).
    let init = format!("(if (result i64) (i32.eq (i32.and (i32.load8_u (local.get $ptr)) (i32.const 0xf0)) (i32.const 0x80)) (then (i64.const 0)) (else {REFUSE}))");
    let wat = plugin_wat(1, "", &init, "");
    let e = Plugin::load(wat.as_bytes(), None, settings("picky", PluginOnError::Pass))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("weir_init refused the config: bad config"),
        "{e}"
    );
    let cfg: serde_yaml::Value = serde_yaml::from_str("{fields: [password]}").unwrap();
    let p = Plugin::load(
        wat.as_bytes(),
        Some(&cfg),
        settings("picky", PluginOnError::Pass),
    )
    .unwrap();
    let mut b = batch(2);
    p.apply(&mut b);
    assert_verdicts_applied(&b);
}

const WASI_IMPORTS: &str = r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))"#;

const PRESTAT_IMPORT: &str = r#"(import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))"#;
/// Asks for a preopened directory at fd 3 (there are none), counts the errno, prints to stdout.
const NO_PREOPENS: &str = r#"(local.set $k (call $prestat (i32.const 3) (i32.const 200)))
    (if (i32.eqz (local.get $k)) (then unreachable))
    (call $counter (i32.const 176) (i32.const 5) (i64.extend_i32_u (local.get $k)))
    (i32.store (i32.const 208) (i32.const 224))
    (i32.store (i32.const 212) (i32.const 13))
    (drop (call $fd_write (i32.const 1) (i32.const 208) (i32.const 1) (i32.const 216)))"#;

/// WASI works from any calling context (wasmtime-wasi's sync calls run a
/// runtime of their own), and there is no directory to reach anything under.
fn run_wasi_plugin(name: &str) {
    let imports = format!("{WASI_IMPORTS}\n  {PRESTAT_IMPORT}");
    let p = load(
        &plugin_wat(1, &imports, "(i64.const 0)", NO_PREOPENS),
        settings(name, PluginOnError::Drop),
    );
    let mut b = batch(3);
    off_runtime(|| p.apply(&mut b));
    assert_verdicts_applied(&b);
    assert_eq!(errors(name, "trap"), 0);
    // EBADF (8): no preopened directory.
    assert_eq!(
        METRICS
            .plugin_counter
            .with_label_values(&["t", name, "errno"])
            .get(),
        8
    );
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

/// One import of `module.name` with a signature that links (the check runs before linking).
fn importing(module: &str, name: &str) -> String {
    plugin_wat(
        1,
        &format!(r#"(import "{module}" "{name}" (func (param i32 i32) (result i32)))"#),
        "(i64.const 0)",
        "",
    )
}

#[test]
fn imports_outside_what_plugins_are_given_are_refused_at_load_by_name() {
    for (module, name, why) in [
        ("wasi_snapshot_preview1", "path_open", "no filesystem"),
        (
            "wasi_snapshot_preview1",
            "path_unlink_file",
            "no filesystem",
        ),
        ("wasi_snapshot_preview1", "fd_readdir", "no filesystem"),
        ("wasi_snapshot_preview1", "sock_accept", "no network"),
        ("wasi_snapshot_preview1", "sock_recv", "no network"),
        ("wasi_snapshot_preview1", "poll_oneoff", "may not sleep"),
        (
            "wasi_snapshot_preview1",
            "fd_pwrite",
            "not among the WASI functions",
        ),
        (
            "wasi_unstable",
            "fd_write",
            "only `weir` and `wasi_snapshot_preview1`",
        ),
        ("env", "system", "only `weir` and `wasi_snapshot_preview1`"),
        ("weir", "secret", "not a weir host function"),
    ] {
        let err = Plugin::load(
            importing(module, name).as_bytes(),
            None,
            settings("hostile", PluginOnError::Drop),
        )
        .err()
        .unwrap_or_else(|| panic!("{module}.{name} loaded"));
        let text = err.to_string();
        assert!(
            text.contains(&format!("imports {module}.{name},")) && text.contains(why),
            "{text}"
        );
    }
    // What the first-party plugins import loads (the SDK's runtime needs these).
    for name in [
        "fd_write",
        "environ_get",
        "environ_sizes_get",
        "proc_exit",
        "random_get",
    ] {
        assert!(
            forbidden_import(
                &cache::compile(importing("wasi_snapshot_preview1", name).as_bytes()).unwrap()
            )
            .is_none(),
            "{name}"
        );
    }
}

#[test]
fn repeated_failures_quarantine_then_probation() {
    let mut s = settings("flaky", PluginOnError::Drop);
    s.quarantine_after = 2;
    s.quarantine_base = Duration::from_millis(300);
    let p = load(&good_wat(TRAP_ON_3), s);
    let gauge = || {
        METRICS
            .plugin_quarantined
            .with_label_values(&["t", "flaky"])
            .get()
    };
    for _ in 0..2 {
        p.apply(&mut batch(3));
    }
    assert_eq!(gauge(), 1);
    // Quarantined: even a batch it would handle takes on_error, without a call.
    let calls = METRICS
        .plugin_calls
        .with_label_values(&["t", "flaky"])
        .get();
    let mut b = batch(2);
    p.apply(&mut b);
    assert!(b.dispositions.iter().all(|d| *d == Disposition::Drop));
    assert_eq!(
        METRICS
            .plugin_calls
            .with_label_values(&["t", "flaky"])
            .get(),
        calls
    );
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
    let stage = Plugins::from_slots(vec![vec![PluginSlot::fixed(load(
        &good_wat(""),
        settings("stage", PluginOnError::Pass),
    ))]]);
    let mut b = batch(3);
    stage.process(&mut b).unwrap();
    assert_verdicts_applied(&b);
    let none = Plugins::from_slots(vec![vec![]]);
    let mut b = batch(3);
    none.process(&mut b).unwrap();
    assert!(untouched(&b));
}

/// The well-behaved module, with the kept events' message set to `marker` (8 bytes, like "redacted").
fn marker_wat(marker: &str) -> String {
    assert_eq!(marker.len(), 8);
    good_wat("").replace("redacted", marker)
}

/// The marker a batch came out with: the same on every kept event, verdicts applied (nothing taken `on_error`).
fn batch_marker(b: &Batch) -> String {
    let mut markers = HashSet::new();
    for (i, (e, d)) in b.events.iter().zip(&b.dispositions).enumerate() {
        match i % 3 {
            0 => {
                assert_eq!(*d, Disposition::Index);
                markers.insert(e.message.clone());
            }
            1 => assert_eq!(*d, Disposition::Drop, "event {i}"),
            _ => assert_eq!(*d, Disposition::ArchiveOnly, "event {i}"),
        }
    }
    assert_eq!(
        markers.len(),
        1,
        "a batch was processed by more than one version: {markers:?}"
    );
    markers.into_iter().next().unwrap()
}

#[test]
fn hot_swap_under_concurrent_calls_keeps_each_batch_on_one_version() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    // A generous deadline: this is about swapping, and on a loaded machine (four callers
    // and a compile on two cores) a 50 ms call deadline would turn a slow call into on_error.
    let mut swap_settings = settings("swap", PluginOnError::Drop);
    swap_settings.timeout = Duration::from_secs(10);
    let stage = Arc::new(Plugins::from_slots(vec![vec![PluginSlot::fixed(load(
        &marker_wat("versionA"),
        swap_settings,
    ))]]));
    let (a, b) = (marker_wat("versionA"), marker_wat("versionB"));
    const CALLERS: usize = 4;
    let ready = Arc::new(std::sync::Barrier::new(CALLERS + 1));
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|t| {
            let (stage, ready, done, sent) =
                (stage.clone(), ready.clone(), done.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut run = |n: usize| {
                    let mut b = batch(n);
                    sent.fetch_add(1, Ordering::SeqCst);
                    stage.process(&mut b).unwrap();
                    seen.push(batch_marker(&b));
                };
                run(3 + t);
                ready.wait();
                let mut i = 0;
                while !done.load(Ordering::SeqCst) {
                    run(1 + (i + t) % 15);
                    i += 1;
                }
                run(6);
                seen
            })
        })
        .collect();
    ready.wait();
    let cache = ModuleCache::default();
    for k in 0..6 {
        let wat = if k % 2 == 0 { &b } else { &a };
        stage.per_tenant[0][0]
            .replace(wat.as_bytes(), &cache)
            .unwrap();
    }
    // An odd number more: the last version is B.
    stage.per_tenant[0][0]
        .replace(b.as_bytes(), &cache)
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let seen: Vec<String> = callers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        seen.len(),
        sent.load(Ordering::SeqCst),
        "every batch came back processed"
    );
    assert!(
        seen.iter().all(|m| m == "versionA" || m == "versionB"),
        "{seen:?}"
    );
    assert!(seen.iter().take(1).all(|m| m == "versionA"));
    assert_eq!(seen.iter().rev().take(1).next().unwrap(), "versionB");
    assert!(
        seen.iter().filter(|m| *m == "versionA").count() >= CALLERS
            && seen.iter().filter(|m| *m == "versionB").count() >= CALLERS
    );
    assert_eq!(
        errors("swap", "trap") + errors("swap", "instantiate") + errors("swap", "bad_result"),
        0
    );
    assert_eq!(
        RELOADS.with_label_values(&["t", "swap", "reloaded"]).get(),
        7
    );
}

#[test]
fn refused_reload_keeps_the_old_version() {
    let slot = PluginSlot::fixed(load(
        &marker_wat("versionA"),
        settings("keep-old", PluginOnError::Drop),
    ));
    let cache = ModuleCache::default();
    let refusing = plugin_wat(1, "", REFUSE, "").replace("redacted", "versionB");
    let e = slot
        .replace(refusing.as_bytes(), &cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad config"), "{e}");
    let e = slot
        .replace(b"(module not wasm", &cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot compile"), "{e}");
    let e = slot
        .replace(plugin_wat(2, "", "(i64.const 0)", "").as_bytes(), &cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ABI version 2"), "{e}");
    assert_eq!(
        RELOADS
            .with_label_values(&["t", "keep-old", "refused"])
            .get(),
        3
    );
    assert_eq!(
        RELOADS
            .with_label_values(&["t", "keep-old", "reloaded"])
            .get(),
        0
    );
    let mut b = batch(4);
    slot.current().apply(&mut b);
    assert_eq!(batch_marker(&b), "versionA");
}

/// Replaces a file the way a deploy should: write a temporary file, rename it over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn changed_files_are_reloaded_and_unchanged_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.wasm");
    std::fs::write(&path, marker_wat("versionA")).unwrap();
    let cache = ModuleCache::new(Some(dir.path().join("cache")));
    let slot = PluginSlot::load(
        &path,
        &std::fs::read(&path).unwrap(),
        None,
        settings("watched", PluginOnError::Drop),
        &cache,
    )
    .unwrap();
    let stage = Plugins {
        per_tenant: vec![Arc::new(vec![slot])],
        cache,
        reloading: Mutex::new(()),
    };
    let marker = |stage: &Plugins| {
        let mut b = batch(3);
        stage.process(&mut b).unwrap();
        batch_marker(&b)
    };
    assert!(stage.reload(false).is_empty(), "unchanged");
    replace_file(&path, &marker_wat("versionB"));
    let r = stage.reload(false);
    assert_eq!(r.len(), 1);
    assert!(r[0].error.is_none() && r[0].plugin == "watched", "{r:?}");
    assert_eq!(marker(&stage), "versionB");
    assert!(stage.reload(false).is_empty(), "reloaded once per change");
    // The same content again (a new mtime): nothing to do.
    replace_file(&path, &marker_wat("versionB"));
    assert!(stage.reload(false).is_empty());
    // A broken version is refused once (not retried every poll) and B keeps running.
    replace_file(&path, "(module (memory (export \"memory\") 1))");
    let r = stage.reload(false);
    assert!(
        r[0].error
            .as_deref()
            .is_some_and(|e| e.contains("weir_abi_version")),
        "{r:?}"
    );
    assert!(stage.reload(false).is_empty());
    assert_eq!(marker(&stage), "versionB");
    // Forced (POST /admin/reload) reloads even unchanged files; here it is still the broken one.
    assert!(stage.reload(true)[0].error.is_some());
    replace_file(&path, &marker_wat("versionC"));
    assert!(stage.reload(true)[0].error.is_none());
    assert_eq!(marker(&stage), "versionC");
    assert_eq!(
        RELOADS
            .with_label_values(&["t", "watched", "reloaded"])
            .get(),
        2
    );
    assert_eq!(
        RELOADS
            .with_label_values(&["t", "watched", "refused"])
            .get(),
        2
    );
}

#[test]
fn the_watcher_thread_picks_up_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.wat");
    std::fs::write(&path, marker_wat("versionA")).unwrap();
    let cache = ModuleCache::default();
    let slot = PluginSlot::load(
        &path,
        &std::fs::read(&path).unwrap(),
        None,
        settings("watcher", PluginOnError::Drop),
        &cache,
    )
    .unwrap();
    let stage = Arc::new(Plugins {
        per_tenant: vec![Arc::new(vec![slot])],
        cache,
        reloading: Mutex::new(()),
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let weak = Arc::downgrade(&stage) as std::sync::Weak<dyn crate::watch::Watched>;
    let _watcher = crate::watch::spawn(vec![weak], Duration::from_millis(50), stop.clone());
    replace_file(&path, &marker_wat("versionB"));
    let start = Instant::now();
    loop {
        let mut b = batch(3);
        stage.process(&mut b).unwrap();
        if batch_marker(&b) == "versionB" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the watcher never reloaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn compiled_modules_are_cached_on_disk_and_bad_entries_are_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("plugin-cache");
    let wat = marker_wat("cachedAA");
    let use_module = |m: &Module| {
        let p = Plugin::from_module(m, None, settings("cached", PluginOnError::Drop)).unwrap();
        let mut b = batch(5);
        p.apply(&mut b);
        assert_eq!(batch_marker(&b), "cachedAA");
    };
    let first = ModuleCache::new(Some(cache_dir.clone()));
    use_module(&first.module(wat.as_bytes()).unwrap());
    assert_eq!((first.hits(), first.misses()), (0, 1));
    let key = cache::cache_key(wat.as_bytes());
    let cwasm = cache_dir.join(format!("{key}.cwasm"));
    assert!(cwasm.exists() && cache_dir.join(format!("{key}.sha256")).exists());
    let written = std::fs::read(&cwasm).unwrap();

    // A second load (another process start) hits the cache.
    let second = ModuleCache::new(Some(cache_dir.clone()));
    use_module(&second.module(wat.as_bytes()).unwrap());
    assert_eq!((second.hits(), second.misses()), (1, 0));

    // A corrupt entry is ignored (never deserialized), the module compiled and the entry rewritten.
    let mut bad = written.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&cwasm, &bad).unwrap();
    let third = ModuleCache::new(Some(cache_dir.clone()));
    use_module(&third.module(wat.as_bytes()).unwrap());
    assert_eq!((third.hits(), third.misses()), (0, 1));
    assert_eq!(std::fs::read(&cwasm).unwrap(), written, "rewritten");
    // A truncated file or a missing checksum: the same.
    std::fs::write(&cwasm, &written[..100]).unwrap();
    let fourth = ModuleCache::new(Some(cache_dir.clone()));
    use_module(&fourth.module(wat.as_bytes()).unwrap());
    std::fs::remove_file(cache_dir.join(format!("{key}.sha256"))).unwrap();
    use_module(&fourth.module(wat.as_bytes()).unwrap());
    assert_eq!((fourth.hits(), fourth.misses()), (0, 2));
    let fifth = ModuleCache::new(Some(cache_dir.clone()));
    use_module(&fifth.module(wat.as_bytes()).unwrap());
    assert_eq!((fifth.hits(), fifth.misses()), (1, 0));
    // Other bytes, another key.
    assert_ne!(cache::cache_key(marker_wat("cachedBB").as_bytes()), key);
}

#[test]
fn the_stage_loads_through_the_cache_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("p.wat"), good_wat("")).unwrap();
    let text = format!("data_dir: {d}/data\nlisteners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/a}}}}\nbackends: [{{name: b, type: file, path: {d}/o}}]\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: b\n    plugins:\n      - {{name: one, path: {d}/p.wat}}\n      - {{name: two, path: {d}/p.wat}}\n");
    let plan = crate::plan::Plan::parse(&text, "t.yaml").unwrap();
    let first = load_plan(&plan);
    assert_eq!(
        (first.cache().hits(), first.cache().misses()),
        (1, 1),
        "the second plugin of the same file hits"
    );
    let again = load_plan(&plan);
    assert_eq!((again.cache().hits(), again.cache().misses()), (2, 0));
    assert_eq!(
        again.cache().dir().unwrap(),
        dir.path().join("data/plugin-cache")
    );
}

#[test]
fn a_plugin_gets_and_changes_only_the_fields_it_exports_in_weir_fields() {
    // Asks for the message only: 4 events of "secret i" are 9 bytes of header and
    // 18 per event (a 1-key map, "message", the 8-byte string). Any more traps.
    let fields = "(func (export \"weir_fields\") (result i32) (i32.const 2))";
    let hook = "(if (i32.ne (local.get $len) (i32.const 81)) (then unreachable))";
    let p = load(
        &plugin_wat(1, fields, "(i64.const 0)", hook),
        settings("message-only", PluginOnError::Pass),
    );
    let mut b = batch(4);
    p.apply(&mut b);
    assert_eq!(
        errors("message-only", "trap"),
        0,
        "the batch held more than messages"
    );
    // The returned events replace the message; the host (not asked for) stays.
    for i in [0, 3] {
        assert_eq!(b.events[i].message, "redacted");
        assert_eq!(b.events[i].host.as_deref(), Some("h"));
        assert_eq!(b.events[i].timestamp, 1_700_000_000_000 + i as i64);
    }
    assert_eq!(b.dispositions[1], Disposition::Drop);
}

/// Writes "hello stdout\n" (at 224, from the fixture's data) to stdout 200 times per call.
const FLOOD_STDOUT: &str = r#"(local.set $k (i32.const 0))
    (i32.store (i32.const 208) (i32.const 224))
    (i32.store (i32.const 212) (i32.const 13))
    (loop $more
      (drop (call $fd_write (i32.const 1) (i32.const 208) (i32.const 1) (i32.const 216)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $k) (i32.const 200))))"#;

#[test]
fn a_plugin_flooding_stdout_gets_its_log_lines_rate_limited() {
    let p = load(
        &plugin_wat(1, WASI_IMPORTS, "(i64.const 0)", FLOOD_STDOUT),
        settings("chatty", PluginOnError::Drop),
    );
    let mut b = batch(3);
    off_runtime(|| p.apply(&mut b));
    assert_verdicts_applied(&b);
    let budget = p.shared.log.lock().unwrap();
    assert_eq!(
        budget.lines, LOG_LINES_PER_WINDOW,
        "lines logged in the window"
    );
    assert!(
        budget.suppressed >= 200 - LOG_LINES_PER_WINDOW as u64,
        "the rest counted, not logged: {}",
        budget.suppressed
    );
}

/// Every tenant's plugins of `plan`, loaded as `weir run` does.
fn load_plan(plan: &crate::plan::Plan) -> Plugins {
    let mut plugins = Plugins::new(Some(&plan.config.data_dir));
    for t in &plan.tenants {
        let at = format!("{}.plugins", t.at);
        plugins.add(&t.name, &at, &t.plugins, 2).unwrap();
    }
    plugins
}

impl Plugins {
    /// Plugins already loaded, one list per tenant (no files, no cache).
    fn from_slots(per_tenant: Vec<Vec<PluginSlot>>) -> Plugins {
        Plugins {
            per_tenant: per_tenant.into_iter().map(Arc::new).collect(),
            cache: ModuleCache::default(),
            reloading: Mutex::new(()),
        }
    }

    /// Runs `batch` through the first tenant's stage.
    fn process(&self, batch: &mut Batch) -> Result<(), crate::event::stage::Rejection> {
        let stage = TenantPlugins {
            slots: self.per_tenant[0].clone(),
        };
        stage.process(batch)
    }
}
