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
//!
//! Files: host.rs (the engine, host imports, guest output to the log),
//! instance.rs (a loaded plugin: pool, call, on_error, quarantine), slot.rs
//! (hot reload of one plugin), cache.rs (compiled modules on disk), wire.rs
//! (the MessagePack ABI), located.rs (which config field a load error is about);
//! this file: the stage over every tenant's plugins.
pub mod cache;
pub mod located;
pub mod wire;

use crate::config::{invalid, Config, ConfigError, Invalid, PluginConfig, PluginOnError};
use crate::event::{Batch, Disposition, Event};
use crate::pipeline::{Rejection, Stage};
use crate::telemetry::METRICS;
use cache::ModuleCache;
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

mod host;
mod instance;
mod slot;
pub use host::*;
pub use instance::*;
pub use slot::*;

/// Runs `f` where blocking is fine: inside `block_in_place` on a multi-thread
/// runtime, on a scoped thread on a current-thread one (WASI's sync calls
/// block on a runtime, which must not happen from inside one), or directly.
pub fn blocking<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    off_runtime(f)
}

pub(super) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| s.spawn(f).join().expect("plugin call panicked")),
        Err(_) => f(),
    }
}

/// The plugin stage: each tenant's plugins, in order.
pub struct Plugins {
    pub(super) per_tenant: Vec<Vec<PluginSlot>>,
    pub(super) cache: ModuleCache,
    /// Serializes reloads (the file watcher and `POST /admin/reload`).
    pub(super) reloading: Mutex<()>,
}

impl Plugins {
    /// Compiles (once per distinct file, through the compile cache under
    /// `data_dir/plugin-cache`), links and initializes every tenant's plugins.
    /// The error names the config field, e.g. `tenants[0].plugins[1]`, or the
    /// field under its `config` that its `weir_init` refused
    /// (`tenants[0].plugins[1].config.team`), located in the YAML.
    pub fn load(config: &Config) -> Result<Plugins, ConfigError> {
        let cache = ModuleCache::new(Some(config.data_dir.join("plugin-cache")));
        Plugins::load_with(config, cache).map_err(|e| config.origin.locate(e))
    }

    /// What `weir check` runs: the same loading, without writing a cache into the data directory.
    pub fn check(config: &Config) -> Result<(), ConfigError> {
        Plugins::load_with(config, ModuleCache::new(None))
            .map(|_| ())
            .map_err(|e| config.origin.locate(e))
    }

    pub(super) fn load_with(config: &Config, cache: ModuleCache) -> Result<Plugins, Invalid> {
        let mut per_tenant = Vec::new();
        for (i, t) in config.tenants.iter().enumerate() {
            let mut list = Vec::new();
            for (j, p) in t.plugins.iter().enumerate() {
                let at = format!("tenants[{i}].plugins[{j}]");
                let bytes = std::fs::read(&p.path).map_err(|e| {
                    invalid(
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
                    invalid(located::refine_field(&at, &message), message)
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
pub fn plugin_threads(config: &Config) -> usize {
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
