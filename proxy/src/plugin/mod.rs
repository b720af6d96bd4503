//! The WebAssembly plugin host (ABI v1, sdk/ABI.md).
//!
//! One wasmtime `Engine` per process, with epoch interruption: a background
//! thread ticks the epoch every [`TICK`], and each call sets its deadline in
//! ticks. Each plugin is compiled once and pre-linked (`InstancePre`) against
//! the `weir` host imports and a WASI preview 1 with no preopens, no
//! environment and no arguments (stdout and stderr go to the proxy's log, rate
//! limited). Instances are kept in a small per-plugin pool; an instance whose
//! call failed is thrown away, never reused.
//!
//! A failed call costs only its batch, which takes the plugin's `on_error`.
//! A plugin failing [`QUARANTINE_AFTER`] times in a row is quarantined
//! (its batches take `on_error` without calling it) for a back-off that
//! starts at [`QUARANTINE_BASE`] and doubles while it keeps failing.
//!
//! The stage says it blocks, so the chain runs the batches of tenants with
//! plugins on its fixed pool of worker threads (`limits.plugin_threads`), never
//! on an async worker: a slow plugin (up to its deadline) holds up no other
//! request. Each plugin keeps as many warm instances as there are threads.
pub mod cache;
pub mod located;
pub mod wire;

use crate::config::{PluginConfig, PluginOnError};
use crate::event::{Batch, Disposition, Event};
use crate::pipeline::{Rejection, Stage};
use crate::telemetry::METRICS;
use cache::ModuleCache;
pub use located::config_error;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::{
    Caller, Engine, Extern, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;
pub use wire::Verdict;

/// How often the epoch advances: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);
/// Consecutive failures that quarantine a plugin.
pub const QUARANTINE_AFTER: u32 = 5;
/// The first quarantine's length; it doubles on each further one, up to [`QUARANTINE_MAX`].
pub const QUARANTINE_BASE: Duration = Duration::from_secs(30);
pub const QUARANTINE_MAX: Duration = Duration::from_secs(600);
/// Log lines (guest `log`, stdout, stderr) a plugin may write per window; the rest are counted and reported.
const LOG_LINES_PER_WINDOW: u32 = 50;
const LOG_WINDOW: Duration = Duration::from_secs(10);
const MAX_LOG_LINE: usize = 4096;
/// Distinct counter names a plugin may create (metric cardinality).
const MAX_COUNTER_NAMES: usize = 64;

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut c = wasmtime::Config::new();
    c.epoch_interruption(true);
    // WEIR_PLUGIN_PERFMAP=1 writes /tmp/perf-<pid>.map so `perf` can name plugin functions.
    if std::env::var_os("WEIR_PLUGIN_PERFMAP").is_some_and(|v| v == "1") {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&c).expect("creating the wasmtime engine");
    let ticker = engine.clone();
    std::thread::Builder::new()
        .name("weir-plugin-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            ticker.increment_epoch();
        })
        .expect("spawning the plugin epoch thread");
    engine
});

/// `weir_plugin_reloads_total{tenant, plugin, outcome}`: hot reloads, `reloaded` or `refused`.
static RELOADS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new("weir_plugin_reloads_total", "Plugin hot reloads (file change or POST /admin/reload), by outcome: reloaded or refused"),
        &["tenant", "plugin", "outcome"],
    )
    .unwrap();
    METRICS.registry.register(Box::new(c.clone())).unwrap();
    c
});

/// How often the plugin files are checked for a new version.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The process-wide engine (its epoch thread starts on first use).
pub fn engine() -> &'static Engine {
    &ENGINE
}

/// Reads a plugin file (binary wasm, or wat text) and checks it is valid wasm, without compiling it.
pub fn validate_file(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let wasm = wat::parse_bytes(&bytes)
        .map_err(|e| format!("{} is neither wasm nor wat: {e}", path.display()))?;
    Module::validate(engine(), &wasm)
        .map_err(|e| format!("{} is not a valid module: {e:#}", path.display()))
}

/// What a plugin's call failed on; `reason()` is the metric label.
#[derive(Debug)]
pub enum CallError {
    Timeout,
    Memory(String),
    Trap(String),
    BadResult(String),
    Instantiate(String),
}

impl CallError {
    pub fn reason(&self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Memory(_) => "memory",
            CallError::Trap(_) => "trap",
            CallError::BadResult(_) => "bad_result",
            CallError::Instantiate(_) => "instantiate",
        }
    }

    fn from_wasm(e: wasmtime::Error) -> CallError {
        let text = format!("{e:#}");
        if text.contains("forcing trap when growing memory") {
            return CallError::Memory(text);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout,
            _ => CallError::Trap(text),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => write!(f, "the call ran past its deadline"),
            CallError::Memory(m) => write!(f, "memory limit: {m}"),
            CallError::Trap(m) => write!(f, "trap: {m}"),
            CallError::BadResult(m) => write!(f, "bad result: {m}"),
            CallError::Instantiate(m) => write!(f, "cannot instantiate: {m}"),
        }
    }
}

/// What a plugin did with an event, as `weir_plugin_events_total` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictLabel {
    /// `keep`, unchanged.
    Kept,
    /// `keep` with a changed event.
    Modified,
    Dropped,
    ArchiveOnly,
    /// The batch failed (or the plugin was quarantined): the event took `on_error`.
    OnError,
}

impl VerdictLabel {
    pub const ALL: [VerdictLabel; 5] = [
        VerdictLabel::Kept,
        VerdictLabel::Modified,
        VerdictLabel::Dropped,
        VerdictLabel::ArchiveOnly,
        VerdictLabel::OnError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerdictLabel::Kept => "kept",
            VerdictLabel::Modified => "modified",
            VerdictLabel::Dropped => "dropped",
            VerdictLabel::ArchiveOnly => "archive_only",
            VerdictLabel::OnError => "on_error",
        }
    }
}

/// One plugin's `weir_plugin_events_total` counters, looked up once, indexed by `VerdictLabel as usize`.
struct VerdictCounters([prometheus::IntCounter; 5]);

impl VerdictCounters {
    fn new(tenant: &str, plugin: &str) -> VerdictCounters {
        VerdictCounters(VerdictLabel::ALL.map(|v| {
            crate::telemetry::PLUGIN_EVENTS.with_label_values(&[tenant, plugin, v.as_str()])
        }))
    }

    fn add(&self, verdict: VerdictLabel, n: usize) {
        if n > 0 {
            self.0[verdict as usize].inc_by(n as u64);
        }
    }
}

/// Per-plugin state the host functions and the log streams share.
struct Shared {
    tenant: String,
    name: String,
    log: Mutex<LogBudget>,
    counters: Mutex<HashSet<String>>,
}

struct LogBudget {
    window_start: Instant,
    lines: u32,
    suppressed: u64,
}

impl Shared {
    fn log(&self, level: i32, stream: &str, msg: &str) {
        {
            let mut b = self.log.lock().unwrap();
            if b.window_start.elapsed() >= LOG_WINDOW {
                if b.suppressed > 0 {
                    tracing::warn!(tenant = %self.tenant, plugin = %self.name, suppressed = b.suppressed, "plugin log lines suppressed (rate limit)");
                }
                *b = LogBudget {
                    window_start: Instant::now(),
                    lines: 0,
                    suppressed: 0,
                };
            }
            if b.lines >= LOG_LINES_PER_WINDOW {
                b.suppressed += 1;
                return;
            }
            b.lines += 1;
        }
        let msg = truncate(msg, MAX_LOG_LINE);
        let (tenant, plugin) = (&self.tenant, &self.name);
        match level {
            0 => tracing::error!(tenant = %tenant, plugin = %plugin, stream, "{msg}"),
            1 => tracing::warn!(tenant = %tenant, plugin = %plugin, stream, "{msg}"),
            2 => tracing::info!(tenant = %tenant, plugin = %plugin, stream, "{msg}"),
            _ => tracing::debug!(tenant = %tenant, plugin = %plugin, stream, "{msg}"),
        }
    }

    fn counter_add(&self, name: &str, delta: i64) {
        if delta <= 0 || name.is_empty() || name.len() > 64 {
            return;
        }
        {
            let mut names = self.counters.lock().unwrap();
            if !names.contains(name) {
                if names.len() >= MAX_COUNTER_NAMES {
                    return;
                }
                names.insert(name.to_string());
            }
        }
        METRICS
            .plugin_counter
            .with_label_values(&[&self.tenant, &self.name, name])
            .inc_by(delta as u64);
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// A guest's stdout or stderr: complete lines go to the proxy log.
struct LogStream {
    shared: Arc<Shared>,
    stream: &'static str,
    level: i32,
    partial: Vec<u8>,
}

impl LogStream {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = memchr::memchr(b'\n', &self.partial) {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.shared.log(
                self.level,
                self.stream,
                String::from_utf8_lossy(&line[..pos]).trim_end(),
            );
        }
        if self.partial.len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut self.partial);
            self.shared
                .log(self.level, self.stream, &String::from_utf8_lossy(&line));
        }
    }
}

#[derive(Clone)]
struct LogStreamFactory {
    shared: Arc<Shared>,
    stream: &'static str,
    level: i32,
}

impl LogStreamFactory {
    fn make(&self) -> LogStream {
        LogStream {
            shared: self.shared.clone(),
            stream: self.stream,
            level: self.level,
            partial: Vec::new(),
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStreamFactory {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStreamFactory {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.make())
    }
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.make())
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::p2::OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for LogStream {
    async fn ready(&mut self) {}
}

/// What a store holds.
struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    shared: Arc<Shared>,
}

fn guest_bytes<'a>(
    caller: &'a Caller<'_, Host>,
    mem: &Memory,
    ptr: i32,
    len: i32,
) -> Option<&'a [u8]> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(caller).get(ptr..ptr.checked_add(len)?)
}

fn linker() -> wasmtime::Result<Linker<Host>> {
    let mut l: Linker<Host> = Linker::new(engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut l, |h: &mut Host| &mut h.wasi)?;
    l.func_wrap(
        "weir",
        "log",
        |mut caller: Caller<'_, Host>, level: i32, ptr: i32, len: i32| {
            let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
                return;
            };
            let shared = caller.data().shared.clone();
            let len = len.clamp(0, MAX_LOG_LINE as i32);
            if let Some(b) = guest_bytes(&caller, &mem, ptr, len) {
                shared.log(level, "log", &String::from_utf8_lossy(b));
            }
        },
    )?;
    l.func_wrap("weir", "now_ms", || -> i64 {
        chrono::Utc::now().timestamp_millis()
    })?;
    l.func_wrap(
        "weir",
        "counter_add",
        |mut caller: Caller<'_, Host>, ptr: i32, len: i32, delta: i64| {
            let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
                return;
            };
            let shared = caller.data().shared.clone();
            if let Some(b) = guest_bytes(&caller, &mem, ptr, len.clamp(0, 65)) {
                if let Ok(name) = std::str::from_utf8(b) {
                    shared.counter_add(name, delta);
                }
            }
        },
    )?;
    Ok(l)
}

/// One live instance and its exports.
struct Inst {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    free: TypedFunc<(i32, i32), ()>,
    process: TypedFunc<(i32, i32), i64>,
    /// What the optional `weir_fields` export asked for (all fields without it).
    fields: wire::Fields,
}

impl Inst {
    /// Passes `input` to `func` per the ABI (alloc, write, call) and returns the packed result.
    fn call_with(
        &mut self,
        func: &TypedFunc<(i32, i32), i64>,
        input: &[u8],
    ) -> Result<i64, CallError> {
        let len = i32::try_from(input.len())
            .map_err(|_| CallError::BadResult("input over 2 GiB".into()))?;
        let ptr = self
            .alloc
            .call(&mut self.store, len)
            .map_err(CallError::from_wasm)?;
        if ptr == 0 && len > 0 {
            return Err(CallError::Memory(
                "weir_alloc returned 0 (out of memory)".into(),
            ));
        }
        self.memory
            .write(&mut self.store, ptr as u32 as usize, input)
            .map_err(|_| {
                CallError::BadResult(format!("weir_alloc returned {ptr}, outside memory"))
            })?;
        func.call(&mut self.store, (ptr, len))
            .map_err(CallError::from_wasm)
    }

    /// Copies out the buffer a packed `(ptr << 32) | len` names and frees it in the guest.
    fn take_output(&mut self, packed: i64) -> Result<Option<Vec<u8>>, CallError> {
        let (ptr, len) = ((packed as u64 >> 32) as u32, packed as u64 as u32);
        if len == 0 {
            return Ok(None);
        }
        let bytes = self
            .memory
            .data(&self.store)
            .get(ptr as usize..ptr as usize + len as usize)
            .ok_or_else(|| {
                CallError::BadResult(format!("returned buffer {ptr}+{len} lies outside memory"))
            })?
            .to_vec();
        self.free
            .call(&mut self.store, (ptr as i32, len as i32))
            .map_err(CallError::from_wasm)?;
        Ok(Some(bytes))
    }
}

/// A plugin's health as `/readyz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginState {
    pub tenant: String,
    pub plugin: String,
    pub quarantined: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_remaining_s: Option<u64>,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Quarantine bookkeeping.
struct Health {
    consecutive: u32,
    /// The last failure's reason and message, for `/readyz`.
    last_error: Option<String>,
    until: Option<Instant>,
    next_backoff: Duration,
    probation: bool,
}

/// Settings of one loaded plugin (from the YAML, or from `weir plugin test`).
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub tenant: String,
    pub name: String,
    pub on_error: PluginOnError,
    pub timeout: Duration,
    pub memory_limit: u64,
    pub quarantine_after: u32,
    pub quarantine_base: Duration,
    /// Idle instances kept (one per thread that may call the plugin at once;
    /// more are created on demand and dropped after use).
    pub instances: usize,
}

impl PluginSettings {
    pub fn from_config(tenant: &str, c: &PluginConfig, instances: usize) -> PluginSettings {
        PluginSettings {
            tenant: tenant.to_string(),
            name: c.name.clone(),
            on_error: c.on_error,
            timeout: c.timeout.0,
            memory_limit: c.memory_limit.0,
            quarantine_after: QUARANTINE_AFTER,
            quarantine_base: QUARANTINE_BASE,
            instances,
        }
    }
}

/// A loaded plugin: compiled, linked, with at least one instance initialized.
pub struct Plugin {
    settings: PluginSettings,
    shared: Arc<Shared>,
    pre: InstancePre<Host>,
    config: Vec<u8>,
    deadline_ticks: u64,
    /// The fields sent to the plugin and taken back from it (its first instance's `weir_fields`).
    fields: wire::Fields,
    pool: Mutex<Vec<Inst>>,
    health: Mutex<Health>,
    verdicts: VerdictCounters,
}

impl Plugin {
    /// Compiles `wasm` (binary or wat text), checks the ABI version and runs
    /// `weir_init` once, so a plugin that cannot start is refused here.
    pub fn load(
        wasm: &[u8],
        config: Option<&serde_yaml::Value>,
        settings: PluginSettings,
    ) -> Result<Plugin, String> {
        let module = cache::compile(wasm)?;
        Plugin::from_module(&module, config, settings)
    }

    pub fn from_module(
        module: &Module,
        config: Option<&serde_yaml::Value>,
        settings: PluginSettings,
    ) -> Result<Plugin, String> {
        let linker = linker().map_err(|e| format!("linking: {e:#}"))?;
        let pre = linker.instantiate_pre(module).map_err(|e| format!("cannot link (only `weir` and `wasi_snapshot_preview1` imports are provided): {e:#}"))?;
        let shared = Arc::new(Shared {
            tenant: settings.tenant.clone(),
            name: settings.name.clone(),
            log: Mutex::new(LogBudget {
                window_start: Instant::now(),
                lines: 0,
                suppressed: 0,
            }),
            counters: Mutex::new(HashSet::new()),
        });
        let ticks = settings.timeout.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64;
        let mut plugin = Plugin {
            fields: wire::Fields::ALL,
            config: wire::encode_config(config)?,
            deadline_ticks: ticks,
            pool: Mutex::new(Vec::new()),
            health: Mutex::new(Health {
                consecutive: 0,
                last_error: None,
                until: None,
                next_backoff: settings.quarantine_base,
                probation: false,
            }),
            verdicts: VerdictCounters::new(&settings.tenant, &settings.name),
            shared,
            pre,
            settings,
        };
        let first = plugin.instantiate()?;
        plugin.fields = first.fields;
        plugin.pool.lock().unwrap().push(first);
        METRICS
            .plugin_quarantined
            .with_label_values(&[&plugin.settings.tenant, &plugin.settings.name])
            .set(0);
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// A new instance, with its ABI version checked and `weir_init` run.
    fn instantiate(&self) -> Result<Inst, String> {
        let stdout = LogStreamFactory {
            shared: self.shared.clone(),
            stream: "stdout",
            level: 2,
        };
        let stderr = LogStreamFactory {
            shared: self.shared.clone(),
            stream: "stderr",
            level: 1,
        };
        // No preopens, no environment, no arguments: WASI gives clocks, random numbers and the two log streams.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout)
            .stderr(stderr)
            .build_p1();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit as usize)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            engine(),
            Host {
                wasi,
                limits,
                shared: self.shared.clone(),
            },
        );
        store.limiter(|h| &mut h.limits);
        // Instantiation and init get ten call deadlines (a start function or init may build tables).
        store.set_epoch_deadline(self.deadline_ticks * 10);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate: {}", CallError::from_wasm(e)))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("the module exports no `memory`")?;
        let func = |store: &mut Store<Host>, name: &str| -> Result<wasmtime::Func, String> {
            instance
                .get_func(&mut *store, name)
                .ok_or_else(|| format!("the module does not export `{name}` (ABI v1, sdk/ABI.md)"))
        };
        let sig = |e: wasmtime::Error, name: &str| {
            format!("export `{name}` has the wrong signature: {e}")
        };
        let version = func(&mut store, "weir_abi_version")?
            .typed::<(), i32>(&store)
            .map_err(|e| sig(e, "weir_abi_version"))?;
        let version = version
            .call(&mut store, ())
            .map_err(|e| format!("weir_abi_version: {}", CallError::from_wasm(e)))?;
        if version != 1 {
            return Err(format!(
                "the plugin speaks ABI version {version}; this Weir supports version 1 only"
            ));
        }
        let alloc = func(&mut store, "weir_alloc")?
            .typed::<i32, i32>(&store)
            .map_err(|e| sig(e, "weir_alloc"))?;
        let free = func(&mut store, "weir_free")?
            .typed::<(i32, i32), ()>(&store)
            .map_err(|e| sig(e, "weir_free"))?;
        let init = func(&mut store, "weir_init")?
            .typed::<(i32, i32), i64>(&store)
            .map_err(|e| sig(e, "weir_init"))?;
        let process = func(&mut store, "weir_process")?
            .typed::<(i32, i32), i64>(&store)
            .map_err(|e| sig(e, "weir_process"))?;
        let fields = match instance.get_func(&mut store, "weir_fields") {
            None => wire::Fields::ALL,
            Some(f) => wire::Fields::from_bits(
                f.typed::<(), i32>(&store)
                    .map_err(|e| sig(e, "weir_fields"))?
                    .call(&mut store, ())
                    .map_err(|e| format!("weir_fields: {}", CallError::from_wasm(e)))?,
            ),
        };
        let mut inst = Inst {
            store,
            memory,
            alloc,
            free,
            process,
            fields,
        };
        let packed = inst
            .call_with(&init, &self.config)
            .map_err(|e| format!("weir_init failed: {e}"))?;
        if let Some(msg) = inst
            .take_output(packed)
            .map_err(|e| format!("weir_init failed: {e}"))?
        {
            return Err(format!(
                "{}{}",
                located::INIT_REFUSED,
                String::from_utf8_lossy(&msg)
            ));
        }
        Ok(inst)
    }

    /// Runs the plugin on `events`: one verdict (and maybe a replacement) per event.
    /// A failed call discards the instance it ran on.
    pub fn call(&self, events: &[Event]) -> Result<Vec<wire::Outcome>, CallError> {
        let input = wire::encode_batch(events, self.fields);
        let pooled = self.pool.lock().unwrap().pop();
        let mut inst = match pooled {
            Some(i) => i,
            None => self.instantiate().map_err(CallError::Instantiate)?,
        };
        inst.store.set_epoch_deadline(self.deadline_ticks);
        let process = inst.process.clone();
        let packed = inst.call_with(&process, &input)?;
        let out = inst
            .take_output(packed)?
            .ok_or_else(|| CallError::BadResult("weir_process returned no buffer".into()))?;
        let outcomes =
            wire::decode_result(&out, events, self.fields).map_err(CallError::BadResult)?;
        let mut pool = self.pool.lock().unwrap();
        if pool.len() < self.settings.instances.max(1) {
            pool.push(inst);
        }
        Ok(outcomes)
    }

    /// Whether the plugin is quarantined now (ending a quarantine that is over).
    fn quarantined(&self) -> bool {
        let mut h = self.health.lock().unwrap();
        match h.until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                h.until = None;
                h.probation = true;
                METRICS
                    .plugin_quarantined
                    .with_label_values(&[&self.settings.tenant, &self.settings.name])
                    .set(0);
                tracing::info!(tenant = %self.settings.tenant, plugin = %self.settings.name, "plugin quarantine over; calling it again");
                false
            }
            None => false,
        }
    }

    fn record(&self, failure: Option<&CallError>) {
        let mut h = self.health.lock().unwrap();
        let Some(e) = failure else {
            h.consecutive = 0;
            h.probation = false;
            h.next_backoff = self.settings.quarantine_base;
            return;
        };
        h.last_error = Some(truncate(&format!("{}: {e}", e.reason()), 512).to_string());
        h.consecutive += 1;
        if h.probation || h.consecutive >= self.settings.quarantine_after {
            let d = h.next_backoff;
            h.until = Some(Instant::now() + d);
            h.next_backoff = (d * 2).min(QUARANTINE_MAX.max(self.settings.quarantine_base));
            h.consecutive = 0;
            h.probation = false;
            METRICS
                .plugin_quarantined
                .with_label_values(&[&self.settings.tenant, &self.settings.name])
                .set(1);
            tracing::error!(tenant = %self.settings.tenant, plugin = %self.settings.name, quarantine = ?d, on_error = self.settings.on_error.as_str(),
                "plugin keeps failing: quarantined; its batches take on_error without calling it");
        }
    }

    /// Whether it is quarantined, and the last failure, for `/readyz`.
    pub fn state(&self) -> PluginState {
        let h = self.health.lock().unwrap();
        let remaining = h
            .until
            .and_then(|u| u.checked_duration_since(Instant::now()));
        PluginState {
            tenant: self.settings.tenant.clone(),
            plugin: self.settings.name.clone(),
            quarantined: remaining.is_some(),
            quarantine_remaining_s: remaining.map(|d| d.as_secs_f64().ceil() as u64),
            consecutive_failures: h.consecutive,
            last_error: h.last_error.clone(),
        }
    }

    /// Runs the plugin on a batch and applies its verdicts, or `on_error` when it fails or is quarantined.
    pub fn apply(&self, batch: &mut Batch) {
        let labels = [self.settings.tenant.as_str(), self.settings.name.as_str()];
        if self.quarantined() {
            METRICS
                .plugin_errors
                .with_label_values(&[labels[0], labels[1], "quarantined"])
                .inc();
            self.on_error(batch);
            return;
        }
        METRICS.plugin_calls.with_label_values(&labels).inc();
        let start = Instant::now();
        let result = self.call(&batch.events);
        METRICS
            .plugin_duration
            .with_label_values(&labels)
            .observe(start.elapsed().as_secs_f64());
        match result {
            Ok(outcomes) => {
                self.record(None);
                let mut counts = [0usize; 5];
                for ((verdict, replacement), (ev, disp)) in outcomes
                    .into_iter()
                    .zip(batch.events.iter_mut().zip(batch.dispositions.iter_mut()))
                {
                    let label = match verdict {
                        Verdict::Keep => match replacement {
                            Some(r) => {
                                *ev = r;
                                VerdictLabel::Modified
                            }
                            None => VerdictLabel::Kept,
                        },
                        Verdict::Drop => {
                            *disp = Disposition::Drop;
                            VerdictLabel::Dropped
                        }
                        Verdict::ArchiveOnly => {
                            if *disp == Disposition::Index {
                                *disp = Disposition::ArchiveOnly;
                            }
                            VerdictLabel::ArchiveOnly
                        }
                    };
                    counts[label as usize] += 1;
                }
                for (label, n) in VerdictLabel::ALL.into_iter().zip(counts) {
                    self.verdicts.add(label, n);
                }
            }
            Err(e) => {
                METRICS
                    .plugin_errors
                    .with_label_values(&[labels[0], labels[1], e.reason()])
                    .inc();
                tracing::warn!(tenant = %labels[0], plugin = %labels[1], reason = e.reason(), on_error = self.settings.on_error.as_str(), events = batch.events.len(),
                    "plugin call failed: {e}");
                self.record(Some(&e));
                self.on_error(batch);
            }
        }
    }

    fn on_error(&self, batch: &mut Batch) {
        self.verdicts
            .add(VerdictLabel::OnError, batch.dispositions.len());
        for d in batch.dispositions.iter_mut() {
            match self.settings.on_error {
                PluginOnError::Pass => {}
                PluginOnError::Drop => *d = Disposition::Drop,
                PluginOnError::ArchiveOnly => {
                    if *d == Disposition::Index {
                        *d = Disposition::ArchiveOnly;
                    }
                }
            }
        }
    }
}

/// Runs `f` where blocking is fine: inside `block_in_place` on a multi-thread
/// runtime, on a scoped thread on a current-thread one (WASI's sync calls
/// block on a runtime, which must not happen from inside one), or directly.
pub fn blocking<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    off_runtime(f)
}

fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join().expect("plugin call panicked")),
        Err(_) => f(),
    }
}

/// The identity of a plugin file as last seen: modification time and size
/// (cheap to poll), and the SHA-256 of the bytes the running version came from.
#[derive(Clone, PartialEq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

struct Seen {
    stamp: Option<FileStamp>,
    hash: [u8; 32],
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// One configured plugin: its running version, swapped atomically on hot reload.
///
/// A batch takes an `Arc` to the current version when the stage reaches the
/// plugin and holds it for the whole call, so a reload never splits a batch
/// between two versions, and in-flight batches finish on the old one (which is
/// dropped, with its instance pool, when the last of them is done).
pub struct PluginSlot {
    settings: PluginSettings,
    path: PathBuf,
    config: Option<serde_yaml::Value>,
    current: RwLock<Arc<Plugin>>,
    seen: Mutex<Seen>,
}

/// What one reload attempt did.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub tenant: String,
    pub plugin: String,
    pub path: PathBuf,
    /// `None`: reloaded; `Some(reason)`: refused (the old version keeps running).
    pub error: Option<String>,
}

impl PluginSlot {
    /// Loads the first version from `bytes` (read from `path`).
    pub fn load(
        path: &Path,
        bytes: &[u8],
        config: Option<&serde_yaml::Value>,
        settings: PluginSettings,
        cache: &ModuleCache,
    ) -> Result<PluginSlot, String> {
        let module = cache.module(bytes)?;
        let first = off_runtime(|| Plugin::from_module(&module, config, settings.clone()))?;
        Ok(PluginSlot {
            path: path.to_path_buf(),
            config: config.cloned(),
            current: RwLock::new(Arc::new(first)),
            seen: Mutex::new(Seen {
                stamp: stamp(path),
                hash: sha256(bytes),
            }),
            settings,
        })
    }

    /// A slot around an already loaded plugin (no file to reload from).
    pub fn fixed(plugin: Plugin) -> PluginSlot {
        PluginSlot {
            settings: plugin.settings.clone(),
            path: PathBuf::new(),
            config: None,
            current: RwLock::new(Arc::new(plugin)),
            seen: Mutex::new(Seen {
                stamp: None,
                hash: [0; 32],
            }),
        }
    }

    /// The running version (hold it for the whole batch).
    pub fn current(&self) -> Arc<Plugin> {
        self.current.read().unwrap().clone()
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Compiles, instantiates and runs `weir_init` on a new version from
    /// `bytes`, all before touching the running one; only then swaps it in.
    /// On error the old version keeps running. Counted in `weir_plugin_reloads_total`.
    pub fn replace(&self, bytes: &[u8], cache: &ModuleCache) -> Result<(), String> {
        let labels = [self.settings.tenant.as_str(), self.settings.name.as_str()];
        let loaded = cache.module(bytes).and_then(|m| {
            off_runtime(|| Plugin::from_module(&m, self.config.as_ref(), self.settings.clone()))
        });
        match loaded {
            Ok(new) => {
                let old = std::mem::replace(&mut *self.current.write().unwrap(), Arc::new(new));
                drop(old);
                RELOADS
                    .with_label_values(&[labels[0], labels[1], "reloaded"])
                    .inc();
                tracing::info!(tenant = %labels[0], plugin = %labels[1], path = %self.path.display(), "plugin reloaded; new batches run on the new version");
                Ok(())
            }
            Err(e) => {
                RELOADS
                    .with_label_values(&[labels[0], labels[1], "refused"])
                    .inc();
                tracing::error!(tenant = %labels[0], plugin = %labels[1], path = %self.path.display(), "plugin reload refused, the old version keeps running: {e}");
                Err(e)
            }
        }
    }

    /// Reloads from the file: always when `force`, else only when its stamp and
    /// content changed since the last attempt. `None`: nothing to do.
    fn reload_file(&self, cache: &ModuleCache, force: bool) -> Option<ReloadReport> {
        if self.path.as_os_str().is_empty() {
            return None;
        }
        let report = |error: Option<String>| ReloadReport {
            tenant: self.settings.tenant.clone(),
            plugin: self.settings.name.clone(),
            path: self.path.clone(),
            error,
        };
        let now = stamp(&self.path);
        let mut seen = self.seen.lock().unwrap();
        if !force && now == seen.stamp {
            return None;
        }
        seen.stamp = now;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                let e = format!("cannot read {}: {e}", self.path.display());
                RELOADS
                    .with_label_values(&[&self.settings.tenant, &self.settings.name, "refused"])
                    .inc();
                tracing::error!(tenant = %self.settings.tenant, plugin = %self.settings.name, "plugin reload refused, the old version keeps running: {e}");
                return Some(report(Some(e)));
            }
        };
        let hash = sha256(&bytes);
        if !force && hash == seen.hash {
            return None;
        }
        match self.replace(&bytes, cache) {
            Ok(()) => {
                seen.hash = hash;
                Some(report(None))
            }
            Err(e) => Some(report(Some(e))),
        }
    }
}

/// The plugin stage: each tenant's plugins, in order.
pub struct Plugins {
    per_tenant: Vec<Vec<PluginSlot>>,
    cache: ModuleCache,
    /// Serializes reloads (the file watcher and `POST /admin/reload`).
    reloading: Mutex<()>,
}

impl Plugins {
    /// Compiles (once per distinct file, through the compile cache under
    /// `data_dir/plugin-cache`), links and initializes every tenant's plugins.
    /// The error names the config field, e.g. `tenants[0].plugins[1]`, or the
    /// field under its `config` that its `weir_init` refused
    /// (`tenants[0].plugins[1].config.team`); [`config_error`] locates it in the YAML.
    pub fn load(config: &crate::config::Config) -> Result<Plugins, (String, String)> {
        Plugins::load_with(
            config,
            ModuleCache::new(Some(config.data_dir.join("plugin-cache"))),
        )
    }

    /// What `weir check` runs: the same loading, without writing a cache into the data directory.
    pub fn check(config: &crate::config::Config) -> Result<(), (String, String)> {
        Plugins::load_with(config, ModuleCache::new(None)).map(|_| ())
    }

    fn load_with(
        config: &crate::config::Config,
        cache: ModuleCache,
    ) -> Result<Plugins, (String, String)> {
        let mut per_tenant = Vec::new();
        for (i, t) in config.tenants.iter().enumerate() {
            let mut list = Vec::new();
            for (j, p) in t.plugins.iter().enumerate() {
                let at = format!("tenants[{i}].plugins[{j}]");
                let bytes = std::fs::read(&p.path).map_err(|e| {
                    (
                        format!("{at}.path"),
                        format!("cannot read {}: {e}", p.path.display()),
                    )
                })?;
                let slot = PluginSlot::load(
                    &p.path,
                    &bytes,
                    p.config.as_ref(),
                    PluginSettings::from_config(&t.name, p, plugin_threads(config)),
                    &cache,
                )
                .map_err(|e| {
                    let message = format!("plugin {:?} ({}): {e}", p.name, p.path.display());
                    (located::refine_field(&at, &message), message)
                })?;
                tracing::info!(tenant = %t.name, plugin = %p.name, path = %p.path.display(), "plugin loaded");
                list.push(slot);
            }
            per_tenant.push(list);
        }
        Ok(Plugins {
            per_tenant,
            cache,
            reloading: Mutex::new(()),
        })
    }

    /// A stage of already loaded plugins, one list per tenant index (no files, no cache).
    pub fn from_slots(per_tenant: Vec<Vec<PluginSlot>>) -> Plugins {
        Plugins {
            per_tenant,
            cache: ModuleCache::default(),
            reloading: Mutex::new(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_tenant.iter().all(|l| l.is_empty())
    }

    /// Every loaded plugin's health (the running version of each).
    pub fn states(&self) -> Vec<PluginState> {
        self.per_tenant
            .iter()
            .flatten()
            .map(|s| s.current().state())
            .collect()
    }

    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }

    /// Reloads plugins from their files: every one when `force` (`POST
    /// /admin/reload`), else those whose file changed (the watcher).
    pub fn reload(&self, force: bool) -> Vec<ReloadReport> {
        let _one_at_a_time = self.reloading.lock().unwrap();
        self.per_tenant
            .iter()
            .flatten()
            .filter_map(|s| s.reload_file(&self.cache, force))
            .collect()
    }

    /// Polls the plugin files every `every` on a background thread, reloading
    /// those that changed. The thread ends when the stage is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if self.is_empty() {
            return;
        }
        let weak: Weak<Plugins> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("weir-plugin-watch".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(plugins) = weak.upgrade() else {
                    return;
                };
                plugins.reload(false);
            })
            .expect("spawning the plugin watcher");
    }
}

/// `limits.plugin_threads`, with 0 meaning one per core.
pub fn plugin_threads(config: &crate::config::Config) -> usize {
    match config.limits.plugin_threads {
        0 => crate::pipeline::workers::Workers::default_threads(),
        n => n,
    }
}

impl Stage for Plugins {
    fn name(&self) -> &'static str {
        "plugins"
    }

    fn blocks(&self, tenant: usize) -> bool {
        self.per_tenant.get(tenant).is_some_and(|l| !l.is_empty())
    }

    fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
        let Some(list) = self.per_tenant.get(batch.meta.tenant.index) else {
            return Ok(());
        };
        if list.is_empty() || batch.events.is_empty() {
            return Ok(());
        }
        off_runtime(|| {
            for slot in list {
                // One version for the whole batch, even if a reload swaps it meanwhile.
                let version = slot.current();
                version.apply(batch);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
