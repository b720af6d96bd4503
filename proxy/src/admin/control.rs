//! Run-time control (`/admin/...` on the admin listener, bearer token from
//! config): list rules and quotas with live counters, add, change, enable,
//! disable and delete exclusion rules, change daily quotas. Every change is
//! validated first, applied without restart, and saved under the data
//! directory (`runtime.json`) so that it survives one. `POST /admin/reload`
//! hot reloads every plugin from its file.
use crate::config::{ExclusionAction, ExclusionRuleConfig, Secret};
use crate::durable::write_atomic;
use crate::pipeline::Rejection;
use crate::plugin::Plugins;
use crate::quota::daily::DailyQuotas;
use crate::rules::exclusion::{ExclusionRules, Scope};
use crate::telemetry::METRICS;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

pub struct Control {
    token: Option<Secret>,
    rules: Arc<ExclusionRules>,
    quotas: Arc<DailyQuotas>,
    state_dir: PathBuf,
    plugins: Option<Arc<Plugins>>,
    router: Option<Arc<crate::sink::router::Router>>,
    reloader: Option<Arc<crate::reload::ConfigReloader>>,
    /// Serializes changes, so two admins never interleave read-modify-write.
    lock: Mutex<()>,
}

/// What run-time changes replace in the YAML config; saved as runtime.json.
#[derive(Default, Serialize, Deserialize)]
pub struct Overrides {
    /// Rule lists by scope: "global" or a tenant name.
    #[serde(default)]
    pub rules: BTreeMap<String, Vec<ExclusionRuleConfig>>,
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaChange>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaChange {
    pub max_events: Option<u64>,
    pub max_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulePatch {
    query: Option<String>,
    sample_rate: Option<f64>,
    action: Option<ExclusionAction>,
    enabled: Option<bool>,
}

const OVERRIDES_FILE: &str = "runtime.json";

fn err(status: StatusCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(status, "admin", msg)
}

impl Control {
    /// Applies the overrides saved by an earlier run, then serves changes.
    pub fn new(
        token: Option<Secret>,
        rules: Arc<ExclusionRules>,
        quotas: Arc<DailyQuotas>,
        state_dir: PathBuf,
    ) -> anyhow::Result<Control> {
        let c = Control {
            token,
            rules,
            quotas,
            state_dir,
            plugins: None,
            router: None,
            reloader: None,
            lock: Mutex::new(()),
        };
        let path = c.state_dir.join(OVERRIDES_FILE);
        if let Ok(bytes) = std::fs::read(&path) {
            let saved: Overrides = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            for (scope_name, rules) in &saved.rules {
                match c.scope(scope_name) {
                    Ok(scope) => c.rules.replace(&scope, rules).map_err(|e| {
                        anyhow::anyhow!("{}: rule {:?}: {}", path.display(), e.rule, e.error)
                    })?,
                    Err(_) => {
                        tracing::warn!(scope = %scope_name, "saved rules for a tenant no longer configured; ignored")
                    }
                }
            }
            for (tenant, q) in &saved.quotas {
                if !c.quotas.set_limits(tenant, q.max_events, q.max_bytes) {
                    tracing::warn!(%tenant, "saved quota for a tenant without a daily quota; ignored");
                }
            }
            tracing::info!(file = %path.display(), "run-time rule and quota changes restored");
        }
        Ok(c)
    }

    /// The plugin stage, for `POST /admin/reload`.
    pub fn with_plugins(mut self, plugins: Arc<Plugins>) -> Control {
        self.plugins = Some(plugins);
        self
    }

    /// The routing, for `GET /backends` (`weir backends`) and config reloads.
    pub fn with_router(mut self, router: Arc<crate::sink::router::Router>) -> Control {
        self.router = Some(router);
        self
    }

    /// Config reloads, for `POST /admin/config/reload`.
    pub fn with_reloader(mut self, reloader: Arc<crate::reload::ConfigReloader>) -> Control {
        self.reloader = Some(reloader);
        self
    }

    /// 200 with what was applied, or 422 with why nothing changed.
    fn reload_config(&self) -> (StatusCode, Value) {
        let Some(r) = &self.reloader else {
            return (
                StatusCode::NOT_FOUND,
                json!({"errors": ["no config reloader"]}),
            );
        };
        match crate::plugin::blocking(|| r.reload("POST /admin/config/reload")) {
            Ok(v) => (StatusCode::OK, v),
            Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "errors": [e] })),
        }
    }

    pub fn backend_reports(&self) -> Value {
        let list: Vec<_> = self
            .router
            .iter()
            .flat_map(|r| r.healths())
            .map(|b| b.report())
            .collect();
        json!({ "backends": list })
    }

    /// Plugins' health for `/readyz`: how many run, and the quarantined ones.
    pub fn plugin_health(&self) -> Value {
        let states = self
            .plugins
            .as_ref()
            .map(|p| p.states())
            .unwrap_or_default();
        let loaded = states.len();
        let quarantined: Vec<_> = states.into_iter().filter(|s| s.quarantined).collect();
        json!({ "loaded": loaded, "quarantined": quarantined })
    }

    /// Reloads every plugin from its file; 200 when all were reloaded, 422 when
    /// any was refused (those keep running their old version).
    fn reload_plugins(&self) -> (StatusCode, Value) {
        let reports = match &self.plugins {
            // Compiling can take a while: off the async worker.
            Some(p) => crate::plugin::blocking(|| p.reload(true)),
            None => Vec::new(),
        };
        let (ok, refused): (Vec<_>, Vec<_>) = reports.into_iter().partition(|r| r.error.is_none());
        let reloaded: Vec<Value> = ok
            .iter()
            .map(|r| json!({ "tenant": r.tenant, "plugin": r.plugin, "path": r.path }))
            .collect();
        let refused_v: Vec<Value> = refused.iter().map(|r| json!({ "tenant": r.tenant, "plugin": r.plugin, "path": r.path, "error": r.error })).collect();
        let status = if refused.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        (
            status,
            json!({ "reloaded": reloaded, "refused": refused_v }),
        )
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Checks `Authorization: Bearer <token>` in constant time.
    pub fn authorize(&self, header: Option<&str>) -> Result<(), Rejection> {
        let Some(token) = &self.token else {
            return Err(err(
                StatusCode::NOT_FOUND,
                "the control API is off: set admin.token to enable it",
            ));
        };
        let given = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .unwrap_or("");
        if given.is_empty() {
            return Err(err(StatusCode::UNAUTHORIZED, "missing bearer token"));
        }
        let a = sha256(given);
        let b = sha256(token.expose());
        if bool::from(a.ct_eq(&b)) {
            Ok(())
        } else {
            Err(err(StatusCode::FORBIDDEN, "bearer token is not valid"))
        }
    }

    fn scope(&self, name: &str) -> Result<Scope, Rejection> {
        if name == "global" {
            return Ok(Scope::Global);
        }
        self.rules
            .tenant_names()
            .iter()
            .position(|t| t == name)
            .map(Scope::Tenant)
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    format!("no tenant {name:?} (use \"global\" for the global rules)"),
                )
            })
    }

    fn scope_name(&self, scope: &Scope) -> String {
        match scope {
            Scope::Global => "global".into(),
            Scope::Tenant(i) => self.rules.tenant_names()[*i].clone(),
        }
    }

    /// Handles one control request; `path` is below `/admin/`.
    pub fn handle(
        &self,
        method: &http::Method,
        path: &str,
        body: &[u8],
    ) -> Result<(StatusCode, Value), Rejection> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["rules"]) => Ok((StatusCode::OK, self.list_rules())),
            ("GET", ["quotas"]) => Ok((StatusCode::OK, json!({ "quotas": self.quotas.views() }))),
            ("POST", ["reload"]) => Ok(self.reload_plugins()),
            ("POST", ["config", "reload"]) => Ok(self.reload_config()),
            ("POST", ["rules", scope]) => {
                let rule: ExclusionRuleConfig = parse_body(body)?;
                self.change_rules(scope, |rules| {
                    if rules.iter().any(|r| r.name == rule.name) {
                        return Err(err(
                            StatusCode::CONFLICT,
                            format!("a rule named {:?} already exists here", rule.name),
                        ));
                    }
                    rules.push(rule.clone());
                    Ok(())
                })?;
                Ok((StatusCode::CREATED, json!({ "rule": rule })))
            }
            ("PATCH", ["rules", scope, name]) => {
                let patch: RulePatch = parse_body(body)?;
                let mut updated = None;
                self.change_rules(scope, |rules| {
                    let r = rules.iter_mut().find(|r| r.name == *name).ok_or_else(|| {
                        err(
                            StatusCode::NOT_FOUND,
                            format!("no rule {name:?} in {scope}"),
                        )
                    })?;
                    if let Some(q) = &patch.query {
                        r.query = q.clone();
                    }
                    if let Some(s) = patch.sample_rate {
                        r.sample_rate = s;
                    }
                    if let Some(a) = patch.action {
                        r.action = a;
                    }
                    if let Some(e) = patch.enabled {
                        r.enabled = e;
                    }
                    updated = Some(r.clone());
                    Ok(())
                })?;
                Ok((StatusCode::OK, json!({ "rule": updated })))
            }
            ("DELETE", ["rules", scope, name]) => {
                self.change_rules(scope, |rules| {
                    let before = rules.len();
                    rules.retain(|r| r.name != *name);
                    if rules.len() == before {
                        return Err(err(
                            StatusCode::NOT_FOUND,
                            format!("no rule {name:?} in {scope}"),
                        ));
                    }
                    Ok(())
                })?;
                Ok((StatusCode::OK, json!({ "deleted": name })))
            }
            ("PATCH", ["quotas", tenant]) => {
                let change: QuotaChange = parse_body(body)?;
                let _guard = self.lock.lock().unwrap();
                if !self
                    .quotas
                    .set_limits(tenant, change.max_events, change.max_bytes)
                {
                    return Err(err(
                        StatusCode::NOT_FOUND,
                        format!("tenant {tenant:?} has no daily_quota in the config"),
                    ));
                }
                let mut saved = self.load_overrides();
                saved.quotas.insert(tenant.to_string(), change.clone());
                self.save_overrides(&saved)?;
                tracing::info!(%tenant, max_events = ?change.max_events, max_bytes = ?change.max_bytes, "daily quota changed at run time");
                Ok((
                    StatusCode::OK,
                    json!({ "tenant": tenant, "max_events": change.max_events, "max_bytes": change.max_bytes }),
                ))
            }
            _ => Err(err(
                StatusCode::NOT_FOUND,
                format!("no control endpoint {method} /admin/{path}"),
            )),
        }
    }

    /// Edits one scope's rule list: validate every rule, swap, save.
    fn change_rules(
        &self,
        scope_name: &str,
        edit: impl FnOnce(&mut Vec<ExclusionRuleConfig>) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let scope = self.scope(scope_name)?;
        let _guard = self.lock.lock().unwrap();
        let mut rules = self.rules.configs(&scope);
        edit(&mut rules)?;
        for r in &rules {
            if !(0.0..=1.0).contains(&r.sample_rate) {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("rule {:?}: sample_rate must be between 0 and 1", r.name),
                ));
            }
        }
        self.rules.replace(&scope, &rules).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                format!("rule {:?}: query {}", e.rule, e.error),
            )
        })?;
        let mut saved = self.load_overrides();
        saved.rules.insert(self.scope_name(&scope), rules);
        self.save_overrides(&saved)?;
        tracing::info!(scope = %scope_name, "exclusion rules changed at run time");
        Ok(())
    }

    fn load_overrides(&self) -> Overrides {
        std::fs::read(self.state_dir.join(OVERRIDES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_overrides(&self, o: &Overrides) -> Result<(), Rejection> {
        write_atomic(
            &self.state_dir,
            OVERRIDES_FILE,
            &serde_json::to_vec_pretty(o).unwrap(),
        )
        .map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("applied, but could not be saved: {e}"),
            )
        })
    }

    fn list_rules(&self) -> Value {
        let set = self.rules.snapshot();
        let names = self.rules.tenant_names();
        let view = |rule: &ExclusionRuleConfig, tenants: &[&String]| {
            let mut counts = [0u64; 3];
            for t in tenants {
                let labels = [t.as_str(), rule.name.as_str()];
                counts[0] += METRICS.rule_matched.with_label_values(&labels).get();
                counts[1] += METRICS.rule_excluded.with_label_values(&labels).get();
                counts[2] += METRICS.rule_kept.with_label_values(&labels).get();
            }
            json!({
                "name": rule.name, "query": rule.query, "sample_rate": rule.sample_rate,
                "action": rule.action, "enabled": rule.enabled,
                "matched": counts[0], "excluded": counts[1], "kept": counts[2],
            })
        };
        let all: Vec<&String> = names.iter().collect();
        let global: Vec<Value> = set.global.iter().map(|r| view(&r.config, &all)).collect();
        let mut tenants = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            tenants.insert(
                name.clone(),
                Value::Array(
                    set.tenants[i]
                        .iter()
                        .map(|r| view(&r.config, &[name]))
                        .collect(),
                ),
            );
        }
        json!({ "global": global, "tenants": tenants })
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}
