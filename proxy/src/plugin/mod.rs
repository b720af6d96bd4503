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
//! this file: every tenant's plugins, and one tenant's stage.
pub mod cache;
pub mod error;
pub mod located;
pub mod wire;

use crate::config::{invalid, Config, ConfigError, Invalid, PluginConfig, PluginOnError};
use crate::event::stage::{Rejection, Stage};
use crate::event::{Batch, Disposition, Event};
use crate::telemetry::{PluginErrorReason, ReloadOutcome, METRICS};
use crate::watch::FileStamp;
use cache::ModuleCache;
pub use error::{CallError, LoadError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};
use wasmtime::{
    Caller, Engine, Extern, InstancePre, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, TypedFunc,
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

/// Every tenant's plugins: what the file watcher, `POST /admin/reload` and
/// `/readyz` see. Each tenant's stage ([`TenantPlugins`]) shares its list.
pub struct Plugins {
    pub(super) per_tenant: Vec<Arc<Vec<PluginSlot>>>,
    pub(super) cache: ModuleCache,
    /// Serializes reloads (the file watcher and `POST /admin/reload`).
    pub(super) reloading: Mutex<()>,
}

/// The plugin stage of one tenant: its plugins, in order.
pub struct TenantPlugins {
    slots: Arc<Vec<PluginSlot>>,
}

impl Plugins {
    /// No plugin yet. Compiled modules are cached under `data_dir/plugin-cache`
    /// (none: `weir check`, which writes nothing into the data directory).
    pub fn new(data_dir: Option<&Path>) -> Plugins {
        Plugins {
            per_tenant: Vec::new(),
            cache: ModuleCache::new(data_dir.map(|d| d.join("plugin-cache"))),
            reloading: Mutex::new(()),
        }
    }

    /// Compiles (once per distinct file, through the compile cache), links and
    /// initializes one tenant's `plugins` (`at`: their field, `tenants[0].plugins`)
    /// and returns its stage, none when it has no plugin. The error names the
    /// plugin's field, e.g. `tenants[0].plugins[1]`, or the field under its
    /// `config` that its `weir_init` refused (`tenants[0].plugins[1].config.team`).
    pub fn add(
        &mut self,
        tenant: &str,
        at: &str,
        plugins: &[PluginConfig],
        threads: usize,
    ) -> Result<Option<TenantPlugins>, Invalid> {
        let mut list = Vec::new();
        for (j, p) in plugins.iter().enumerate() {
            let at = format!("{at}[{j}]");
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
                PluginSettings::from_config(tenant, p, threads),
                &self.cache,
            )
            .map_err(|e| {
                let message = format!("plugin {:?} ({}): {e}", p.name, p.path.display());
                invalid(located::refine_field(&at, &message), message)
            })?;
            tracing::info!(tenant = %tenant, plugin = %p.name, path = %p.path.display(), "plugin loaded");
            list.push(slot);
        }
        if list.is_empty() {
            return Ok(None);
        }
        let slots = Arc::new(list);
        self.per_tenant.push(slots.clone());
        Ok(Some(TenantPlugins { slots }))
    }

    /// What `weir check` runs: every tenant's plugins loaded as `weir run`
    /// would, without writing a cache into the data directory.
    pub fn check(config: &Config) -> Result<(), ConfigError> {
        let mut plugins = Plugins::new(None);
        for (i, t) in config.tenants.iter().enumerate() {
            let at = format!("tenants[{i}].plugins");
            plugins
                .add(&t.name, &at, &t.plugins, plugin_threads(config))
                .map_err(|e| config.origin.locate(e))?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.per_tenant.iter().all(|l| l.is_empty())
    }

    /// Every loaded plugin's health (the running version of each).
    pub fn states(&self) -> Vec<PluginState> {
        self.per_tenant
            .iter()
            .flat_map(|l| l.iter())
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
            .flat_map(|l| l.iter())
            .filter_map(|s| s.reload_file(&self.cache, force))
            .collect()
    }
}

/// The file watcher reloads plugins whose file changed.
impl crate::watch::Watched for Plugins {
    fn poll(&self) {
        self.reload(false);
    }
}

/// `limits.plugin_threads`, with 0 meaning one per core.
pub fn plugin_threads(config: &Config) -> usize {
    match config.limits.plugin_threads {
        0 => crate::workers::Workers::default_threads(),
        n => n,
    }
}

impl Stage for TenantPlugins {
    fn name(&self) -> &'static str {
        "plugins"
    }

    fn blocks(&self) -> bool {
        !self.slots.is_empty()
    }

    fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
        if batch.events.is_empty() {
            return Ok(());
        }
        off_runtime(|| {
            for slot in self.slots.iter() {
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
