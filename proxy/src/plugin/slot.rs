//! Hot reload: one configured plugin's running version, swapped atomically
//! when its file changes (polled) or on `POST /admin/reload`.
use super::*;
/// `weir_plugin_reloads_total{tenant, plugin, outcome}`: hot reloads, `reloaded` or `refused`.
pub(super) static RELOADS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new("weir_plugin_reloads_total", "Plugin hot reloads (file change or POST /admin/reload), by outcome: reloaded or refused"),
        &["tenant", "plugin", "outcome"],
    )
    .unwrap();
    METRICS.registry.register(Box::new(c.clone())).unwrap();
    c
});

/// The plugin file as last seen (polled by crate::watch), and the SHA-256 of
/// the bytes the running version came from.
pub(super) struct Seen {
    pub(super) stamp: Option<FileStamp>,
    pub(super) hash: [u8; 32],
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
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
    pub(super) settings: PluginSettings,
    pub(super) path: PathBuf,
    pub(super) config: Option<serde_yaml::Value>,
    pub(super) current: RwLock<Arc<Plugin>>,
    pub(super) seen: Mutex<Seen>,
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
    ) -> Result<PluginSlot, LoadError> {
        let module = cache.module(bytes)?;
        let first = off_runtime(|| Plugin::from_module(&module, config, settings.clone()))?;
        Ok(PluginSlot {
            path: path.to_path_buf(),
            config: config.cloned(),
            current: RwLock::new(Arc::new(first)),
            seen: Mutex::new(Seen {
                stamp: FileStamp::of(path),
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
    pub fn replace(&self, bytes: &[u8], cache: &ModuleCache) -> Result<(), LoadError> {
        let labels = [self.settings.tenant.as_str(), self.settings.name.as_str()];
        let loaded = cache.module(bytes).and_then(|m| {
            off_runtime(|| Plugin::from_module(&m, self.config.as_ref(), self.settings.clone()))
        });
        match loaded {
            Ok(new) => {
                let old = std::mem::replace(&mut *self.current.write().unwrap(), Arc::new(new));
                drop(old);
                RELOADS
                    .with_label_values(&[labels[0], labels[1], ReloadOutcome::Reloaded.as_str()])
                    .inc();
                tracing::info!(tenant = %labels[0], plugin = %labels[1], path = %self.path.display(), "plugin reloaded; new batches run on the new version");
                Ok(())
            }
            Err(e) => {
                RELOADS
                    .with_label_values(&[labels[0], labels[1], ReloadOutcome::Refused.as_str()])
                    .inc();
                tracing::error!(tenant = %labels[0], plugin = %labels[1], path = %self.path.display(), "plugin reload refused, the old version keeps running: {e}");
                Err(e)
            }
        }
    }

    /// Reloads from the file: always when `force`, else only when its stamp and
    /// content changed since the last attempt. `None`: nothing to do.
    pub(super) fn reload_file(&self, cache: &ModuleCache, force: bool) -> Option<ReloadReport> {
        if self.path.as_os_str().is_empty() {
            return None;
        }
        let report = |error: Option<String>| ReloadReport {
            tenant: self.settings.tenant.clone(),
            plugin: self.settings.name.clone(),
            path: self.path.clone(),
            error,
        };
        let now = FileStamp::of(&self.path);
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
                    .with_label_values(&[
                        &self.settings.tenant,
                        &self.settings.name,
                        ReloadOutcome::Refused.as_str(),
                    ])
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
            Err(e) => Some(report(Some(e.to_string()))),
        }
    }
}
