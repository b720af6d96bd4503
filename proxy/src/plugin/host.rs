//! The host side of a plugin call: the process-wide engine and its epoch
//! ticker, the `weir` host imports (log, time, counters), and the guest's
//! stdout and stderr turned into rate-limited log lines.
use super::*;
/// How often the epoch advances: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);
/// Log lines (guest `log`, stdout, stderr) a plugin may write per window; the rest are counted and reported.
pub(super) const LOG_LINES_PER_WINDOW: u32 = 50;
pub(super) const LOG_WINDOW: Duration = Duration::from_secs(10);
pub(super) const MAX_LOG_LINE: usize = 4096;
/// Tables per instance and their elements (a compiled program's function
/// table holds a few thousand; growing past this traps).
pub(super) const MAX_TABLES: usize = 4;
pub(super) const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Distinct counter names a plugin may create (metric cardinality).
pub(super) const MAX_COUNTER_NAMES: usize = 64;

pub(super) static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
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

/// The process-wide engine (its epoch thread starts on first use).
pub fn engine() -> &'static Engine {
    &ENGINE
}

/// Reads a plugin file (binary wasm, or wat text) and checks it is valid wasm, without compiling it.
pub fn validate_file(path: &Path) -> Result<(), LoadError> {
    let shown = || path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
        path: shown(),
        error,
    })?;
    let wasm = wat::parse_bytes(&bytes).map_err(|e| LoadError::NotWasm {
        path: shown(),
        error: e.to_string(),
    })?;
    Module::validate(engine(), &wasm).map_err(|e| LoadError::Invalid {
        path: shown(),
        error: format!("{e:#}"),
    })
}

/// Per-plugin state the host functions and the log streams share.
pub(super) struct Shared {
    pub(super) tenant: String,
    pub(super) name: String,
    pub(super) log: Mutex<LogBudget>,
    pub(super) counters: Mutex<HashSet<String>>,
}

pub(super) struct LogBudget {
    pub(super) window_start: Instant,
    pub(super) lines: u32,
    pub(super) suppressed: u64,
}

impl Shared {
    pub(super) fn log(&self, level: i32, stream: &str, msg: &str) {
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

    pub(super) fn counter_add(&self, name: &str, delta: i64) {
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

pub(super) fn truncate(s: &str, max: usize) -> &str {
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
pub(super) struct LogStream {
    pub(super) shared: Arc<Shared>,
    pub(super) stream: &'static str,
    pub(super) level: i32,
    pub(super) partial: Vec<u8>,
}

impl LogStream {
    pub(super) fn push(&mut self, bytes: &[u8]) {
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
pub(super) struct LogStreamFactory {
    pub(super) shared: Arc<Shared>,
    pub(super) stream: &'static str,
    pub(super) level: i32,
}

impl LogStreamFactory {
    pub(super) fn make(&self) -> LogStream {
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
pub(super) struct Host {
    pub(super) wasi: WasiP1Ctx,
    pub(super) limits: StoreLimits,
    pub(super) shared: Arc<Shared>,
}

pub(super) fn guest_bytes<'a>(
    caller: &'a Caller<'_, Host>,
    mem: &Memory,
    ptr: i32,
    len: i32,
) -> Option<&'a [u8]> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    mem.data(caller).get(ptr..ptr.checked_add(len)?)
}

/// The WASI (preview 1) functions a plugin may import: what a language's
/// runtime needs to start and print (arguments and environment, both empty;
/// clocks; random numbers; the standard streams, which go to the log; exit)
/// and nothing that reaches files, sockets or the host's time slices.
/// Everything else, `path_open`, `fd_readdir`, `sock_accept` or `poll_oneoff`
/// (which would block a host thread past any deadline) among them, is refused
/// at load rather than failing when called.
pub const WASI_ALLOWED: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "random_get",
    "proc_exit",
    "sched_yield",
    // The standard streams (there are no other descriptors: no preopens).
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_tell",
    "fd_sync",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_filestat_get",
    // Asked at start by wasi-libc to find preopened directories: there are none.
    "fd_prestat_get",
    "fd_prestat_dir_name",
];

/// The host functions of the `weir` module (sdk/ABI.md).
pub const WEIR_IMPORTS: &[&str] = &["log", "now_ms", "counter_add"];

/// The first import of `module` outside what plugins are given, named with
/// why it is refused.
pub fn forbidden_import(module: &Module) -> Option<(String, &'static str)> {
    module.imports().find_map(|i| {
        let (m, name) = (i.module(), i.name());
        let why = match m {
            "wasi_snapshot_preview1" if WASI_ALLOWED.contains(&name) => return None,
            "weir" if WEIR_IMPORTS.contains(&name) => return None,
            "wasi_snapshot_preview1" if name.starts_with("sock_") => "plugins have no network",
            "wasi_snapshot_preview1" if name.starts_with("path_") || name == "fd_readdir" => {
                "plugins have no filesystem"
            }
            "wasi_snapshot_preview1" if name == "poll_oneoff" => {
                "a plugin may not sleep or wait: it would hold a host thread past its deadline"
            }
            "wasi_snapshot_preview1" => "not among the WASI functions plugins are given",
            "weir" => "not a weir host function (log, now_ms, counter_add)",
            _ => "only `weir` and `wasi_snapshot_preview1` imports are provided",
        };
        Some((format!("{m}.{name}"), why))
    })
}

pub(super) fn linker() -> wasmtime::Result<Linker<Host>> {
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
