//! One loaded plugin: its compiled module, its pool of warm instances, a call
//! with its deadline and memory cap, what a failed call costs (`on_error`),
//! and the quarantine of a plugin that keeps failing.
use super::*;
use crate::event::Why;
/// Consecutive failures that quarantine a plugin.
pub const QUARANTINE_AFTER: u32 = 5;
/// The first quarantine's length; it doubles on each further one, up to [`QUARANTINE_MAX`].
pub const QUARANTINE_BASE: Duration = Duration::from_secs(30);
pub const QUARANTINE_MAX: Duration = Duration::from_secs(600);
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
pub(super) struct VerdictCounters([prometheus::IntCounter; 5]);

impl VerdictCounters {
    pub(super) fn new(tenant: &str, plugin: &str) -> VerdictCounters {
        VerdictCounters(VerdictLabel::ALL.map(|v| {
            crate::telemetry::PLUGIN_EVENTS.with_label_values(&[tenant, plugin, v.as_str()])
        }))
    }

    pub(super) fn add(&self, verdict: VerdictLabel, n: usize) {
        if n > 0 {
            self.0[verdict as usize].inc_by(n as u64);
        }
    }
}

/// One live instance and its exports.
pub(super) struct Inst {
    pub(super) store: Store<Host>,
    pub(super) memory: Memory,
    pub(super) alloc: TypedFunc<i32, i32>,
    pub(super) free: TypedFunc<(i32, i32), ()>,
    pub(super) process: TypedFunc<(i32, i32), i64>,
    /// What the optional `weir_fields` export asked for (all fields without it).
    pub(super) fields: wire::Fields,
}

impl Inst {
    /// Passes `input` to `func` per the ABI (alloc, write, call) and returns the packed result.
    pub(super) fn call_with(
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
    pub(super) fn take_output(&mut self, packed: i64) -> Result<Option<Vec<u8>>, CallError> {
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
pub(super) struct Health {
    pub(super) consecutive: u32,
    /// The last failure's reason and message, for `/readyz`.
    pub(super) last_error: Option<String>,
    pub(super) until: Option<Instant>,
    pub(super) next_backoff: Duration,
    pub(super) probation: bool,
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
    pub(super) settings: PluginSettings,
    pub(super) shared: Arc<Shared>,
    pub(super) pre: InstancePre<Host>,
    pub(super) config: Vec<u8>,
    pub(super) deadline_ticks: u64,
    /// The fields sent to the plugin and taken back from it (its first instance's `weir_fields`).
    pub(super) fields: wire::Fields,
    pub(super) pool: Mutex<Vec<Inst>>,
    pub(super) health: Mutex<Health>,
    pub(super) verdicts: VerdictCounters,
}

impl Plugin {
    /// Compiles `wasm` (binary or wat text), checks the ABI version and runs
    /// `weir_init` once, so a plugin that cannot start is refused here.
    pub fn load(
        wasm: &[u8],
        config: Option<&serde_yaml::Value>,
        settings: PluginSettings,
    ) -> Result<Plugin, LoadError> {
        let module = cache::compile(wasm)?;
        Plugin::from_module(&module, config, settings)
    }

    pub fn from_module(
        module: &Module,
        config: Option<&serde_yaml::Value>,
        settings: PluginSettings,
    ) -> Result<Plugin, LoadError> {
        if let Some((import, why)) = forbidden_import(module) {
            return Err(LoadError::ForbiddenImport { import, why });
        }
        let linker = linker().map_err(|e| LoadError::Linker(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
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
    pub(super) fn instantiate(&self) -> Result<Inst, LoadError> {
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
        let limits = store_limits(self.settings.memory_limit);
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
            .map_err(|e| LoadError::Instantiate(CallError::from_wasm(e)))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(LoadError::NoMemory)?;
        let func = |store: &mut Store<Host>, name: &'static str| {
            instance
                .get_func(&mut *store, name)
                .ok_or(LoadError::MissingExport(name))
        };
        let sig = |e: wasmtime::Error, export: &'static str| LoadError::Signature {
            export,
            error: e.to_string(),
        };
        let version = func(&mut store, "weir_abi_version")?
            .typed::<(), i32>(&store)
            .map_err(|e| sig(e, "weir_abi_version"))?;
        let version = version.call(&mut store, ()).map_err(|e| LoadError::Call {
            export: "weir_abi_version",
            error: CallError::from_wasm(e),
        })?;
        if version != 1 {
            return Err(LoadError::AbiVersion(version));
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
                    .map_err(|e| LoadError::Call {
                        export: "weir_fields",
                        error: CallError::from_wasm(e),
                    })?,
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
            .map_err(LoadError::InitFailed)?;
        if let Some(msg) = inst.take_output(packed).map_err(LoadError::InitFailed)? {
            return Err(LoadError::InitRefused(
                String::from_utf8_lossy(&msg).into_owned(),
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
            None => self
                .instantiate()
                .map_err(|e| CallError::Instantiate(e.to_string()))?,
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
    pub(super) fn quarantined(&self) -> bool {
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

    pub(super) fn record(&self, failure: Option<&CallError>) {
        let mut h = self.health.lock().unwrap();
        let Some(e) = failure else {
            h.consecutive = 0;
            h.probation = false;
            h.next_backoff = self.settings.quarantine_base;
            return;
        };
        h.last_error = Some(truncate(&format!("{}: {e}", e.reason().as_str()), 512).to_string());
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
                .with_label_values(&[
                    labels[0],
                    labels[1],
                    PluginErrorReason::Quarantined.as_str(),
                ])
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
                let why = &mut batch.why;
                for (n, ((verdict, replacement), (ev, disp))) in outcomes
                    .into_iter()
                    .zip(batch.events.iter_mut().zip(batch.dispositions.iter_mut()))
                    .enumerate()
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
                            Batch::explain(why, n, || plugin_why(labels[1], false));
                            VerdictLabel::Dropped
                        }
                        Verdict::ArchiveOnly => {
                            if *disp == Disposition::Index {
                                *disp = Disposition::ArchiveOnly;
                                Batch::explain(why, n, || plugin_why(labels[1], false));
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
                    .with_label_values(&[labels[0], labels[1], e.reason().as_str()])
                    .inc();
                tracing::warn!(tenant = %labels[0], plugin = %labels[1], reason = e.reason().as_str(), on_error = self.settings.on_error.as_str(), events = batch.events.len(),
                    "plugin call failed: {e}");
                self.record(Some(&e));
                self.on_error(batch);
            }
        }
    }

    pub(super) fn on_error(&self, batch: &mut Batch) {
        self.verdicts
            .add(VerdictLabel::OnError, batch.dispositions.len());
        let name = &self.settings.name;
        for (n, d) in batch.dispositions.iter_mut().enumerate() {
            let before = *d;
            match self.settings.on_error {
                PluginOnError::Pass => {}
                PluginOnError::Drop => *d = Disposition::Drop,
                PluginOnError::ArchiveOnly => {
                    if *d == Disposition::Index {
                        *d = Disposition::ArchiveOnly;
                    }
                }
            }
            if *d != before {
                Batch::explain(&mut batch.why, n, || plugin_why(name, true));
            }
        }
    }
}

/// Per instance: its memory, one memory, a few tables of bounded size, no
/// instances beyond its own (a module cannot instantiate more anyway).
fn store_limits(memory_limit: u64) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(memory_limit as usize)
        .memories(1)
        .tables(MAX_TABLES)
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(1)
        .trap_on_grow_failure(true)
        .build()
}

fn plugin_why(name: &str, failed: bool) -> Why {
    Why::Plugin {
        name: name.to_string(),
        failed,
    }
}
