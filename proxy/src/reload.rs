//! Config reload: on SIGHUP, when the config file changes (polled by
//! crate::watch), or on `POST /admin/config/reload`. The file is resolved
//! into a plan like at start (errors name file, line and field); if it is
//! valid, its routing (backends, regions, each tenant's backend, region,
//! failover regions and upstream key) is swapped in without dropping batches
//! in flight or client connections. The new plan is compared with the running
//! ones by value (crate::plan::changes): the routing fields that changed are
//! reported as applied (a changed credential among them, by name only), and
//! anything else that differs from the plan at start as needing a restart.
//! An invalid file changes nothing: the running config keeps going.
use crate::plan::{changes, Plan};
use crate::sink::router::Router;
use crate::telemetry::{ReloadOutcome, METRICS};
use crate::watch::FileStamp;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use tokio_util::sync::CancellationToken;

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

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("weir runs on its embedded default config: there is no file to reload (start it with --config FILE)")]
    NoFile,
    /// The file does not resolve into a plan (located: file, line, field).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The plan is valid but its routing cannot be swapped in.
    #[error(transparent)]
    Routing(#[from] crate::sink::router::RoutingError),
    /// A tenant's archive stores would change (a new region): its archive
    /// writer keeps its stores until a restart, so its routing must too.
    #[error("tenant {tenant:?} would archive to {new:?} instead of {old:?} (its region or its archive changed): archives change only at a restart, and routing it elsewhere meanwhile would archive its events outside its regions; restart weir to apply this config")]
    ArchiveMoves {
        tenant: String,
        old: Vec<String>,
        new: Vec<String>,
    },
}

/// Refuses a reload that would move a running tenant's archive to other stores.
fn archives_stay(started: &Plan, new: &Plan) -> Result<(), ReloadError> {
    let names = |t: &crate::plan::TenantPlan| -> Vec<String> {
        match t.archive.enabled {
            true => t.archive_stores.iter().map(|s| s.name.clone()).collect(),
            false => vec![],
        }
    };
    for t in &new.tenants {
        let Some(old) = started.tenant(&t.name) else {
            continue;
        };
        let (old, new) = (names(old), names(t));
        if old != new {
            return Err(ReloadError::ArchiveMoves {
                tenant: t.name.clone(),
                old,
                new,
            });
        }
    }
    Ok(())
}

pub struct ConfigReloader {
    /// None: the embedded default, which has no file to reload.
    path: Option<PathBuf>,
    router: Arc<Router>,
    /// The plan at start: what a reload does not apply keeps running as it.
    started: Arc<Plan>,
    /// The plan whose routing is in use (the last one reloaded).
    routing: Mutex<Arc<Plan>>,
    /// The file as last looked at.
    seen: Mutex<Option<FileStamp>>,
    /// Route tasks a reload starts run on this runtime, whichever thread reloads.
    runtime: tokio::runtime::Handle,
}

impl ConfigReloader {
    pub fn new(path: Option<PathBuf>, plan: Arc<Plan>, router: Arc<Router>) -> Arc<ConfigReloader> {
        Arc::new(ConfigReloader {
            seen: Mutex::new(path.as_deref().and_then(FileStamp::of)),
            runtime: tokio::runtime::Handle::current(),
            path,
            router,
            routing: Mutex::new(plan.clone()),
            started: plan,
        })
    }

    /// Reads, validates and applies the config file. `Ok`: what was applied
    /// and what needs a restart; `Err`: why nothing changed.
    pub fn reload(&self, why: &str) -> Result<Value, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(v) => {
                RELOADS
                    .with_label_values(&[ReloadOutcome::Reloaded.as_str()])
                    .inc();
                let needs_restart: Vec<&str> = v["needs_restart"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let applied: Vec<&str> = v["applied"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                tracing::info!(trigger = why, applied = %applied.join(", "), needs_restart = %needs_restart.join(", "), "config reloaded: new routing in use");
            }
            Err(e) => {
                RELOADS
                    .with_label_values(&[ReloadOutcome::Refused.as_str()])
                    .inc();
                tracing::error!(
                    trigger = why,
                    "config reload refused, the running config stays: {e}"
                );
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Value, ReloadError> {
        let Some(path) = &self.path else {
            return Err(ReloadError::NoFile);
        };
        *self.seen.lock().unwrap() = FileStamp::of(path);
        let plan = Arc::new(Plan::load(Some(path))?);
        archives_stay(&self.started, &plan)?;
        let reloaded = self.router.reload(&plan)?;
        // What a reload does not apply still runs as it was at start.
        let needs_restart = changes(&self.started, &plan).needs_restart;
        let applied = {
            let mut routing = self.routing.lock().unwrap();
            let applied = changes(&routing, &plan).applied;
            *routing = plan;
            applied
        };
        let out = json!({
            "reloaded": true,
            "backends": reloaded.backends,
            "regions": reloaded.regions,
            "applied": applied,
            "needs_restart": needs_restart,
        });
        if !needs_restart.is_empty() {
            tracing::warn!(fields = %needs_restart.join(", "), "config reload: these changes take effect only after a restart");
        }
        Ok(out)
    }

    /// Reloads on SIGHUP, until `stop`.
    pub fn reload_on_sighup(self: &Arc<Self>, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = hup.recv() => {}
                };
                let r = me.clone();
                // Building clients reads CA files: off the async workers.
                let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
            }
        });
    }
}

/// The file watcher reloads the config when its file changed.
impl crate::watch::Watched for ConfigReloader {
    fn poll(&self) {
        let Some(path) = &self.path else { return };
        let now = FileStamp::of(path);
        if now.is_none() || now == *self.seen.lock().unwrap() {
            return;
        }
        let _runtime = self.runtime.enter();
        // reload() logs and counts its outcome.
        let _ = self.reload("file change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(region: &str) -> Plan {
        let text = format!("listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive_stores:\n  - {{name: eu-main, store: {{type: local, root: /tmp/eu}}}}\n  - {{name: us-main, store: {{type: local, root: /tmp/us}}}}\narchive: {{store: {{type: local, root: /tmp/top}}}}\nbackends:\n  - {{name: a, type: http, url: \"http://a/\"}}\n  - {{name: c, type: http, url: \"http://c/\"}}\nregions:\n  - {{name: eu, tiers: [[a]], archive_stores: [eu-main]}}\n  - {{name: us, tiers: [[c]], archive_stores: [us-main]}}\n  - {{name: us2, tiers: [[a]], archive_stores: [us-main]}}\ntenants:\n  - {{name: t, api_keys: [k], region: {region}}}\n");
        Plan::parse(&text, "r.yaml").unwrap()
    }

    #[test]
    fn a_reload_moving_a_tenants_archive_is_refused() {
        let e = archives_stay(&plan("eu"), &plan("us"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenant \"t\" would archive to [\"us-main\"] instead of [\"eu-main\"]")
                && e.contains("restart"),
            "{e}"
        );
        // Another region archiving to the same stores: its routing may change.
        archives_stay(&plan("us"), &plan("us2")).unwrap();
    }
}
