//! Config reload: on SIGHUP, when the config file changes (checked every
//! [`WATCH_EVERY`]), or on `POST /admin/config/reload`. The file is read and
//! validated like at start (errors name file, line and field); if it is
//! valid, its routing (backends, regions, each tenant's backend, region,
//! failover regions and upstream key) is swapped in without dropping batches
//! in flight or client connections. Anything else that differs from the
//! running config is reported as needing a restart. An invalid file changes
//! nothing: the running config keeps going.
use crate::config::Config;
use crate::sink::router::Router;
use crate::telemetry::METRICS;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How often the config file is checked for a change.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// `weir_config_reloads_total{outcome}`: `reloaded` or `refused`.
static RELOADS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "weir_config_reloads_total",
            "Config reloads (SIGHUP, file change, POST /admin/config/reload), by outcome: reloaded or refused",
        ),
        &["outcome"],
    )
    .unwrap();
    METRICS.registry.register(Box::new(c.clone())).unwrap();
    c
});

pub struct ConfigReloader {
    /// None: the embedded default, which has no file to reload.
    path: Option<PathBuf>,
    router: Arc<Router>,
    /// What a reload does not apply, as last loaded: section name -> digest.
    running: Mutex<Vec<(String, [u8; 32])>>,
    /// The file's modification time and size when last looked at.
    seen: Mutex<Option<(Option<SystemTime>, u64)>>,
}

/// Digests of everything a reload does not apply, by section (secrets are
/// hashed like the rest, never kept in clear).
fn fixed_sections(c: &Config) -> Vec<(String, [u8; 32])> {
    let d = |s: String| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
    let mut out = vec![
        ("data_dir".to_string(), d(format!("{:?}", c.data_dir))),
        ("listeners".to_string(), d(format!("{:?}", c.listeners))),
        ("limits".to_string(), d(format!("{:?}", c.limits))),
        (
            "admin".to_string(),
            d(format!(
                "{:?} {:?}",
                c.admin,
                c.admin.token.as_ref().map(|t| t.expose().to_string())
            )),
        ),
        ("log".to_string(), d(format!("{:?}", c.log))),
        ("archive".to_string(), d(format!("{:?}", c.archive))),
        (
            "exclusion_rules".to_string(),
            d(format!("{:?}", c.exclusion_rules)),
        ),
        (
            "shutdown_timeout".to_string(),
            d(format!("{:?}", c.shutdown_timeout)),
        ),
    ];
    for (i, t) in c.tenants.iter().enumerate() {
        let keys: Vec<&str> = t.api_keys.iter().map(|k| k.expose()).collect();
        out.push((
            format!(
                "tenants[{i}] ({}): keys, archive, limits, quotas, rules or plugins",
                t.name
            ),
            d(format!(
                "{keys:?} {:?} {:?} {:?} {:?} {:?}",
                t.archive, t.rate_limit, t.daily_quota, t.exclusion_rules, t.plugins
            )),
        ));
    }
    out
}

fn stamp(path: &PathBuf) -> Option<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

impl ConfigReloader {
    pub fn new(path: Option<PathBuf>, config: &Config, router: Arc<Router>) -> Arc<ConfigReloader> {
        Arc::new(ConfigReloader {
            seen: Mutex::new(path.as_ref().and_then(stamp)),
            path,
            router,
            running: Mutex::new(fixed_sections(config)),
        })
    }

    /// Reads, validates and applies the config file. `Ok`: what was applied
    /// and what needs a restart; `Err`: why nothing changed.
    pub fn reload(&self, why: &str) -> Result<Value, String> {
        let result = self.try_reload();
        match &result {
            Ok(v) => {
                RELOADS.with_label_values(&["reloaded"]).inc();
                tracing::info!(trigger = why, needs_restart = %v["needs_restart"], "config reloaded: new routing in use");
            }
            Err(e) => {
                RELOADS.with_label_values(&["refused"]).inc();
                tracing::error!(
                    trigger = why,
                    "config reload refused, the running config stays: {e}"
                );
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Value, String> {
        let Some(path) = &self.path else {
            return Err("weir runs on its embedded default config: there is no file to reload (start it with --config FILE)".into());
        };
        *self.seen.lock().unwrap() = stamp(path);
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let reloaded = self.router.reload(&config)?;
        let new = fixed_sections(&config);
        // The sections a reload does not apply still run as they were at start.
        let running = self.running.lock().unwrap();
        let needs_restart: Vec<&str> = new
            .iter()
            .zip(running.iter())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0.as_str())
            .collect();
        let out = json!({
            "reloaded": true,
            "backends": reloaded.backends,
            "regions": reloaded.regions,
            "needs_restart": needs_restart,
        });
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart, "config reload: these changes take effect only after a restart");
        }
        Ok(out)
    }

    /// Reloads on SIGHUP and when the file changes, until `stop`.
    pub fn watch(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = hup.recv() => "SIGHUP",
                    _ = tick.tick() => {
                        let Some(path) = &me.path else { continue };
                        let now = stamp(path);
                        if now.is_none() || now == *me.seen.lock().unwrap() {
                            continue;
                        }
                        "file change"
                    }
                };
                let r = me.clone();
                // Building clients reads CA files: off the async workers.
                let _ = tokio::task::spawn_blocking(move || r.reload(why)).await;
            }
        });
    }
}
