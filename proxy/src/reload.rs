//! Config reload: on SIGHUP, when the config file changes (polled by
//! crate::watch), or on `POST /admin/config/reload`. The file is read and
//! validated like at start (errors name file, line and field); if it is
//! valid, its routing (backends, regions, each tenant's backend, region,
//! failover regions and upstream key) is swapped in without dropping batches
//! in flight or client connections. Anything else that differs from the
//! running config is reported as needing a restart. An invalid file changes
//! nothing: the running config keeps going.
use crate::config::Config;
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

pub struct ConfigReloader {
    /// None: the embedded default, which has no file to reload.
    path: Option<PathBuf>,
    router: Arc<Router>,
    /// The config as written at start: what a reload does not apply keeps running as it.
    running: serde_yaml::Value,
    /// The file as last looked at.
    seen: Mutex<Option<FileStamp>>,
    /// Route tasks a reload starts run on this runtime, whichever thread reloads.
    runtime: tokio::runtime::Handle,
}

/// Top-level sections a reload applies (routing); everything else needs a restart.
const APPLIED_SECTIONS: [&str; 2] = ["backends", "regions"];
/// Tenant fields a reload applies (its routing).
const APPLIED_TENANT_FIELDS: [&str; 4] =
    ["backend", "region", "failover_regions", "upstream_api_key"];

/// The field paths (`limits.max_body_bytes`, `tenants[0].archive.store.secret_access_key`)
/// whose values differ between two configs as written, outside what a reload applies.
/// Values are compared, never printed: secrets stay out of logs and answers.
pub fn changed_fields(old: &serde_yaml::Value, new: &serde_yaml::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(old, new, String::new(), &mut out);
    out.retain(|path| {
        let top = path.split(['.', '[']).next().unwrap_or("");
        if APPLIED_SECTIONS.contains(&top) {
            return false;
        }
        // tenants[i].field...
        if let Some(rest) = path.strip_prefix("tenants[") {
            if let Some((_, field)) = rest.split_once("].") {
                let field = field.split(['.', '[']).next().unwrap_or("");
                return !APPLIED_TENANT_FIELDS.contains(&field);
            }
        }
        true
    });
    out
}

fn diff(old: &serde_yaml::Value, new: &serde_yaml::Value, path: String, out: &mut Vec<String>) {
    use serde_yaml::Value as Y;
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let empty = Y::Mapping(Default::default());
    // A section added or removed whole: name its fields, not just the section.
    let (old, new) = match (old, new) {
        (Y::Null, b @ Y::Mapping(_)) => (&empty, b),
        (a @ Y::Mapping(_), Y::Null) => (a, &empty),
        other => other,
    };
    match (old, new) {
        (Y::Mapping(a), Y::Mapping(b)) => {
            let mut keys: Vec<String> = a
                .keys()
                .chain(b.keys())
                .map(|k| match k {
                    Y::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                })
                .collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let key = Y::String(k.clone());
                let null = Y::Null;
                diff(
                    a.get(&key).unwrap_or(&null),
                    b.get(&key).unwrap_or(&null),
                    join(&k),
                    out,
                );
            }
        }
        (Y::Sequence(a), Y::Sequence(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, format!("{path}[{i}]"), out);
            }
        }
        (Y::Tagged(a), Y::Tagged(b)) if a.tag == b.tag => diff(&a.value, &b.value, path, out),
        (a, b) if a == b => {}
        _ => out.push(if path.is_empty() {
            "(whole file)".into()
        } else {
            path
        }),
    }
}

impl ConfigReloader {
    pub fn new(path: Option<PathBuf>, config: &Config, router: Arc<Router>) -> Arc<ConfigReloader> {
        Arc::new(ConfigReloader {
            seen: Mutex::new(path.as_deref().and_then(FileStamp::of)),
            runtime: tokio::runtime::Handle::current(),
            path,
            router,
            running: config.raw.clone(),
        })
    }

    /// Reads, validates and applies the config file. `Ok`: what was applied
    /// and what needs a restart; `Err`: why nothing changed.
    pub fn reload(&self, why: &str) -> Result<Value, String> {
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
                tracing::info!(trigger = why, needs_restart = %needs_restart.join(", "), "config reloaded: new routing in use");
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

    fn try_reload(&self) -> Result<Value, String> {
        let Some(path) = &self.path else {
            return Err("weir runs on its embedded default config: there is no file to reload (start it with --config FILE)".into());
        };
        *self.seen.lock().unwrap() = FileStamp::of(path);
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let reloaded = self.router.reload(&config)?;
        // What a reload does not apply still runs as it was at start.
        let needs_restart = changed_fields(&self.running, &config.raw);
        let out = json!({
            "reloaded": true,
            "backends": reloaded.backends,
            "regions": reloaded.regions,
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
    use super::changed_fields;

    fn y(s: &str) -> serde_yaml::Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn needs_restart_names_each_changed_field_and_skips_routing() {
        let old = y("archive: {store: {type: s3, bucket: b, secret_access_key: one}}\nbackends: [{name: a, url: x}]\nlimits: {max_body_bytes: 5MiB}\ntenants:\n  - {name: t, backend: a, exclusion_rules: [{name: r, query: q, sample_rate: 0.5}]}\n");
        let new = y("archive: {store: {type: s3, bucket: b, secret_access_key: two}}\nbackends: [{name: a, url: y}]\nlimits: {max_body_bytes: 5MiB, idle_timeout: 5s}\ntenants:\n  - {name: t, backend: b, exclusion_rules: [{name: r, query: q, sample_rate: 0.9}]}\n");
        assert_eq!(
            changed_fields(&old, &new),
            vec![
                "archive.store.secret_access_key",
                "limits.idle_timeout",
                "tenants[0].exclusion_rules[0].sample_rate",
            ]
        );
        assert!(changed_fields(&old, &old).is_empty());
    }
}
