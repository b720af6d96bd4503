//! Run-time control (`/admin/...` on the admin listener, bearer token from
//! config): list rules and quotas with live counters, add, change, enable,
//! disable and delete exclusion rules, change daily quotas. Every change is
//! validated first, applied without restart, and saved under the data
//! directory (`runtime.json`) so that it survives one. `POST /admin/reload`
//! hot reloads every plugin from its file.
use super::overrides::{limit, OVERRIDES_FILE};
pub use super::overrides::{Overrides, QuotaChange};
use crate::config::{ExclusionAction, ExclusionRuleConfig, Secret};
use crate::durable::write_atomic;
use crate::fleet::changes::{Cas, SharedChanges};
use crate::intake::http::parse_json_object;
use crate::pipeline::{RejectReason, Rejection};
use crate::plugin::Plugins;
use crate::quota::daily::DailyQuotas;
use crate::rules::exclusion::{ExclusionRules, Scope};
use crate::telemetry::METRICS;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

pub struct Control {
    token: Option<Secret>,
    /// The YAML's rules and quotas: what `DELETE /admin/overrides` goes back to.
    yaml: Overrides,
    rules: Arc<ExclusionRules>,
    quotas: Arc<DailyQuotas>,
    state_dir: PathBuf,
    plugins: Option<Arc<Plugins>>,
    router: Option<Arc<crate::sink::router::Router>>,
    reloader: Option<Arc<crate::reload::ConfigReloader>>,
    /// The disk buffer (none: memory only), for `/readyz`.
    disk: Option<Arc<crate::buffer::Disk>>,
    /// Rehydration jobs, for `/admin/rehydrations`.
    rehydrations: Option<Arc<crate::rehydrate::Rehydrations>>,
    /// Every tenant's log patterns, for `GET /admin/patterns`.
    patterns: Option<Arc<crate::patterns::Patterns>>,
    /// Serializes changes, so two admins never interleave read-modify-write.
    lock: Mutex<()>,
    /// Live tails (`GET /admin/tail`, served by admin/tail.rs).
    pub tails: Option<Arc<crate::observe::tail::Tails>>,
    /// Fleet mode: changes go through the fleet's Redis first.
    fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
    /// The archive's stores and their health (`/readyz`).
    archive_stores: Option<Arc<crate::archive::Stores>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulePatch {
    query: Option<String>,
    sample_rate: Option<f64>,
    action: Option<ExclusionAction>,
    enabled: Option<bool>,
}

fn err(status: StatusCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(status, RejectReason::Admin, msg)
}

impl Control {
    /// Applies the overrides saved by an earlier run (saying what they replace in
    /// the YAML), then serves changes.
    pub fn new(
        token: Option<Secret>,
        yaml: Overrides,
        rules: Arc<ExclusionRules>,
        quotas: Arc<DailyQuotas>,
        state_dir: PathBuf,
    ) -> anyhow::Result<Control> {
        let c = Control {
            token,
            yaml,
            rules,
            quotas,
            state_dir,
            plugins: None,
            router: None,
            disk: None,
            rehydrations: None,
            reloader: None,
            patterns: None,
            lock: Mutex::new(()),
            tails: None,
            fleet: std::sync::OnceLock::new(),
            archive_stores: None,
        };
        if let Some(saved) = Overrides::load(&c.state_dir)? {
            c.apply(&saved).map_err(|e| {
                anyhow::anyhow!("{}: {e}", c.state_dir.join(OVERRIDES_FILE).display())
            })?;
            let path = c.state_dir.join(OVERRIDES_FILE);
            for d in saved.differences(&c.yaml) {
                tracing::warn!(file = %path.display(), "run-time change overrides the YAML: {d} (DELETE /admin/overrides or `weir run --discard-runtime-changes` goes back to the YAML)");
            }
        }
        Ok(c)
    }

    /// Puts rules and quotas in place.
    fn apply(&self, o: &Overrides) -> Result<(), String> {
        for (scope_name, rules) in &o.rules {
            match self.scope(scope_name) {
                Ok(scope) => self
                    .rules
                    .replace(&scope, rules)
                    .map_err(|e| format!("rule {:?}: {}", e.rule, e.error))?,
                Err(_) => {
                    tracing::warn!(scope = %scope_name, "saved rules for a tenant no longer configured; ignored")
                }
            }
        }
        for (tenant, q) in &o.quotas {
            if !self.quotas.set_limits(tenant, q.max_events, q.max_bytes) {
                tracing::warn!(%tenant, "saved quota for a tenant no longer configured; ignored");
            }
        }
        Ok(())
    }

    /// `DELETE /admin/overrides`: back to the YAML's rules and quotas, and the saved
    /// state removed.
    fn discard_overrides(&self) -> Result<(StatusCode, Value), Rejection> {
        // In a fleet: an empty document as the next version, for every instance.
        let mut before = Overrides::default();
        let (_guard, emptied) = self.shared_edit(|saved| {
            before = std::mem::take(saved);
            saved.version = before.version;
            Ok(())
        })?;
        let saved = before;
        let mut back = Overrides {
            rules: self.yaml.rules.clone(),
            quotas: self.yaml.quotas.clone(),
            version: 0,
        };
        // A quota added at run time to a tenant without one in the YAML: no limits.
        for tenant in saved.quotas.keys() {
            back.quotas.entry(tenant.clone()).or_default();
        }
        self.apply(&back)
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        let discarded = saved.differences(&self.yaml);
        if emptied.version > 0 {
            // The version stays known here: the fleet is past it.
            self.save_overrides(&emptied)?;
        } else {
            self.remove_overrides()?;
        }
        for d in &discarded {
            tracing::info!(target: "weir::audit", change = "discard", "run-time change discarded, the YAML applies again: {d}");
        }
        Ok((StatusCode::OK, json!({ "discarded": discarded })))
    }

    fn remove_overrides(&self) -> Result<(), Rejection> {
        match std::fs::remove_file(self.state_dir.join(OVERRIDES_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("back to the YAML, but the saved state could not be removed: {e}"),
                ))
            }
        }
        Ok(())
    }

    /// The plugin stage, for `POST /admin/reload`.
    pub fn with_plugins(mut self, plugins: Arc<Plugins>) -> Control {
        self.plugins = Some(plugins);
        self
    }

    /// The routing, for `GET /backends` (`weir backends`) and config reloads.
    pub fn with_tails(mut self, tails: Arc<crate::observe::tail::Tails>) -> Control {
        self.tails = Some(tails);
        self
    }

    pub fn with_archive_stores(mut self, stores: Arc<crate::archive::Stores>) -> Control {
        self.archive_stores = Some(stores);
        self
    }

    /// Each archive store's state, for `/readyz`.
    pub fn archive_report(&self) -> serde_json::Value {
        self.archive_stores
            .as_ref()
            .map_or(serde_json::Value::Array(vec![]), |s| s.report())
    }

    pub fn with_disk(mut self, disk: Option<Arc<crate::buffer::Disk>>) -> Control {
        self.disk = disk;
        self
    }

    /// The disk buffer for `/readyz`: (healthy, report); healthy without one.
    pub fn buffer_health(&self) -> (bool, Value) {
        match &self.disk {
            Some(d) => (d.healthy(), d.report()),
            None => (true, json!({ "status": "memory" })),
        }
    }

    pub fn with_router(mut self, router: Arc<crate::sink::router::Router>) -> Control {
        self.router = Some(router);
        self
    }

    /// Rehydration jobs, for `/admin/rehydrations`.
    pub fn with_rehydrations(mut self, r: Arc<crate::rehydrate::Rehydrations>) -> Control {
        self.rehydrations = Some(r);
        self
    }

    /// Log patterns, for `GET /admin/patterns` (none: turned off).
    pub fn with_patterns(mut self, patterns: Option<Arc<crate::patterns::Patterns>>) -> Control {
        self.patterns = patterns;
        self
    }

    /// `GET /admin/patterns?tenant=T[&limit=N]`: the tenant's top patterns.
    fn patterns(&self, query: Option<&str>) -> Result<(StatusCode, Value), Rejection> {
        let Some(p) = &self.patterns else {
            return Err(err(
                StatusCode::NOT_FOUND,
                "log patterns are off (`patterns.enabled: false`)",
            ));
        };
        let tenant = query_value(query, "tenant").ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "`tenant` is required: ?tenant=NAME",
            )
        })?;
        if tenant.is_empty()
            || tenant.len() > 128
            || !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "`tenant` is a tenant name: letters, digits, - and _, at most 128",
            ));
        }
        let limit = match query_value(query, "limit") {
            None => 10,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=1000).contains(l))
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        format!("`limit` must be a number from 1 to 1000, not {l:?}"),
                    )
                })?,
        };
        let report = p
            .report(tenant, limit)
            .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no tenant {tenant:?}")))?;
        let v = serde_json::to_value(report).map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("patterns report: {e}"),
            )
        })?;
        Ok((StatusCode::OK, v))
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
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "errors": [e.to_string()] }),
            ),
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
        self.rules.scope(name).ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                format!("no tenant {name:?} (use \"global\" for the global rules)"),
            )
        })
    }

    fn scope_name(&self, scope: &Scope) -> String {
        match scope {
            Scope::Global => "global".into(),
            Scope::Tenant(name) => name.clone(),
        }
    }

    /// Handles one control request; `path` is below `/admin/`.
    pub fn handle(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<(StatusCode, Value), Rejection> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["rules"]) => Ok((StatusCode::OK, self.list_rules())),
            ("GET", ["patterns"]) => self.patterns(query),
            ("GET", ["quotas"]) => Ok((StatusCode::OK, json!({ "quotas": self.quotas.views() }))),
            ("POST", ["reload"]) => Ok(self.reload_plugins()),
            ("POST", ["config", "reload"]) => Ok(self.reload_config()),
            ("DELETE", ["overrides"]) => self.discard_overrides(),
            ("GET", ["overrides"]) => {
                let saved = self.load_overrides();
                Ok((
                    StatusCode::OK,
                    json!({ "overrides": saved.differences(&self.yaml) }),
                ))
            }
            ("POST", ["rules", scope]) => self.add_rule(scope, query, body),
            ("PATCH", ["rules", scope, name]) => {
                let patch: RulePatch = parse_json_object(body)?;
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
            ("PATCH", ["quotas", tenant]) => self.change_quota(tenant, body),
            (_, ["rehydrations", rest @ ..]) => match &self.rehydrations {
                Some(r) => r.handle(method, rest, body),
                None => Err(err(StatusCode::NOT_FOUND, "rehydration is not running")),
            },
            _ => Err(err(
                StatusCode::NOT_FOUND,
                format!("no control endpoint {method} /admin/{path}"),
            )),
        }
    }

    /// `POST /admin/rules/{scope}[?position=N]`: a new rule, last or at a position.
    fn add_rule(
        &self,
        scope: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<(StatusCode, Value), Rejection> {
        let rule: ExclusionRuleConfig = parse_json_object(body)?;
        // The first matching rule decides, so where a rule goes matters.
        let position = match query_value(query, "position") {
            None => None,
            Some(p) => Some(p.parse::<usize>().map_err(|_| {
                err(
                    StatusCode::BAD_REQUEST,
                    format!("position must be a number (0 = first), got {p:?}"),
                )
            })?),
        };
        self.change_rules(scope, |rules| {
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(err(
                    StatusCode::CONFLICT,
                    format!("a rule named {:?} already exists here", rule.name),
                ));
            }
            // Past the end is last, as when none is given: the list may have
            // shrunk since the caller looked.
            match position {
                Some(p) if p < rules.len() => rules.insert(p, rule.clone()),
                _ => rules.push(rule.clone()),
            }
            Ok(())
        })?;
        Ok((StatusCode::CREATED, json!({ "rule": rule })))
    }

    /// `PATCH /admin/quotas/{tenant}`: new limits (a tenant without a quota gets one).
    fn change_quota(&self, tenant: &str, body: &[u8]) -> Result<(StatusCode, Value), Rejection> {
        let change: QuotaChange = parse_json_object(body)?;
        if !matches!(self.rules.scope(tenant), Some(Scope::Tenant(_))) {
            return Err(err(StatusCode::NOT_FOUND, format!("no tenant {tenant:?}")));
        }
        let (_guard, saved) = self.shared_edit(|saved| {
            saved.quotas.insert(tenant.to_string(), change.clone());
            Ok(())
        })?;
        let old = self
            .quotas
            .views()
            .into_iter()
            .find(|v| v.tenant == tenant)
            .map(|v| (v.max_events, v.max_bytes));
        self.quotas
            .set_limits(tenant, change.max_events, change.max_bytes);
        self.save_overrides(&saved)?;
        let (old_events, old_bytes) = old.unwrap_or((None, None));
        tracing::info!(
            target: "weir::audit",
            change = "quota",
            %tenant,
            old_max_events = %limit(old_events),
            old_max_bytes = %limit(old_bytes),
            new_max_events = %limit(change.max_events),
            new_max_bytes = %limit(change.max_bytes),
            "daily quota changed at run time"
        );
        Ok((
            StatusCode::OK,
            json!({ "tenant": tenant, "max_events": change.max_events, "max_bytes": change.max_bytes }),
        ))
    }

    /// Edits one scope's rule list: validate every rule, swap, save.
    fn change_rules(
        &self,
        scope_name: &str,
        mut edit: impl FnMut(&mut Vec<ExclusionRuleConfig>) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let scope = self.scope(scope_name)?;
        let mut old = Vec::new();
        let mut rules = Vec::new();
        let (_guard, saved) = self.shared_edit(|saved| {
            old = self.rules.configs(&scope);
            rules = old.clone();
            edit(&mut rules)?;
            for r in &rules {
                if !(0.0..=1.0).contains(&r.sample_rate) {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        format!("rule {:?}: sample_rate must be between 0 and 1", r.name),
                    ));
                }
                crate::rules::exclusion::Rule::compile(r.clone()).map_err(|e| {
                    err(
                        StatusCode::BAD_REQUEST,
                        format!("rule {:?}: query {e}", r.name),
                    )
                })?;
            }
            saved.rules.insert(self.scope_name(&scope), rules.clone());
            Ok(())
        })?;
        self.rules.replace(&scope, &rules).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                format!("rule {:?}: query {}", e.rule, e.error),
            )
        })?;
        self.save_overrides(&saved)?;
        tracing::info!(
            target: "weir::audit",
            change = "rules",
            scope = %scope_name,
            old = %serde_json::to_string(&old).unwrap_or_default(),
            new = %serde_json::to_string(&rules).unwrap_or_default(),
            "exclusion rules changed at run time"
        );
        Ok(())
    }

    /// Runs `edit` on the saved changes under the lock. In a fleet, the
    /// result is written to the fleet's Redis first, by compare-and-set on the
    /// version: after a race with another instance, its change is applied here
    /// and `edit` runs again on top of it. Returns the lock, still held, and
    /// the changes to apply and save.
    fn shared_edit(
        &self,
        mut edit: impl FnMut(&mut Overrides) -> Result<(), Rejection>,
    ) -> Result<(std::sync::MutexGuard<'_, ()>, Overrides), Rejection> {
        for _ in 0..3 {
            let guard = self.lock_changes();
            let mut saved = self.load_overrides();
            edit(&mut saved)?;
            match self.share(&mut saved)? {
                Shared::Written => return Ok((guard, saved)),
                Shared::Conflict => {
                    drop(guard);
                    if let Some(f) = self.fleet.get() {
                        let _ = block_on(f.reconcile(self));
                    }
                }
            }
        }
        Err(conflict())
    }

    /// The lock that serializes changes. Its holder may wait on Redis, which
    /// needs the runtime's workers: a waiter gives up its worker first, so
    /// waiting never starves the runtime.
    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.lock.lock().unwrap())
            }
            _ => self.lock.lock().unwrap(),
        }
    }

    /// In a fleet, writes `o` as the next version of the shared changes.
    fn share(&self, o: &mut Overrides) -> Result<Shared, Rejection> {
        let Some(f) = self.fleet.get() else {
            return Ok(Shared::Written);
        };
        let expected = o.version;
        match block_on(f.write_changes(expected, expected + 1, &doc_json(o))) {
            Ok(Cas::Written(v)) => {
                o.version = v;
                crate::telemetry::fleet::FLEET.config_version.set(v as i64);
                Ok(Shared::Written)
            }
            Ok(Cas::Conflict(_)) => Ok(Shared::Conflict),
            // Unless Redis took the write and then failed to answer, nothing changed anywhere.
            Err(e) => Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}; not applied: nothing changed, unless Redis took the write before it failed to answer (then every instance applies it within fleet.config_poll), so check before retrying. In fleet mode every change goes through Redis first, so that no instance diverges"),
            )),
        }
    }

    /// Fleet mode: changes go through `fleet`, and `/readyz` shows it.
    pub fn set_fleet(&self, fleet: Arc<crate::fleet::Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    pub fn fleet_report(&self) -> Value {
        self.fleet.get().map(|f| f.report()).unwrap_or(Value::Null)
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
        let all: Vec<&String> = set.tenants.iter().map(|(n, _)| n).collect();
        let global: Vec<Value> = set.global.iter().map(|r| view(&r.config, &all)).collect();
        let mut tenants = serde_json::Map::new();
        for (name, rules) in &set.tenants {
            tenants.insert(
                name.clone(),
                Value::Array(rules.iter().map(|r| view(&r.config, &[name])).collect()),
            );
        }
        json!({ "global": global, "tenants": tenants })
    }
}

#[derive(PartialEq)]
enum Shared {
    Written,
    /// Another instance wrote a version first.
    Conflict,
}

fn conflict() -> Rejection {
    err(
        StatusCode::CONFLICT,
        "the fleet's rules and quotas kept changing through other instances; nothing changed here, try again",
    )
}

/// The shared document: the changes without this instance's version.
fn doc_json(o: &Overrides) -> String {
    serde_json::to_string(&json!({ "rules": o.rules, "quotas": o.quotas })).unwrap()
}

/// Waits for `f` on the admin request's runtime thread (the admin API is rare).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl SharedChanges for Control {
    fn applied_version(&self) -> u64 {
        self.load_overrides().version
    }

    fn applied_doc(&self) -> String {
        doc_json(&self.load_overrides())
    }

    /// Applies another instance's changes over the YAML, as a restart with
    /// them saved would, and saves them here.
    fn apply_shared(&self, version: u64, doc: &str) -> Result<bool, String> {
        let mut doc: Overrides = serde_json::from_str(doc).map_err(|e| e.to_string())?;
        let _guard = self.lock_changes();
        let old = self.load_overrides();
        if old.version >= version {
            return Ok(false);
        }
        let mut full = Overrides {
            rules: self.yaml.rules.clone(),
            quotas: self.yaml.quotas.clone(),
            version: 0,
        };
        // A quota the old changes gave a tenant the YAML has none for: no limits.
        for t in old.quotas.keys() {
            full.quotas.entry(t.clone()).or_default();
        }
        full.rules.extend(doc.rules.clone());
        full.quotas.extend(doc.quotas.clone());
        self.apply(&full)?;
        doc.version = version;
        self.save_overrides(&doc).map_err(|e| e.message)?;
        crate::telemetry::fleet::FLEET
            .config_version
            .set(version as i64);
        Ok(true)
    }
}

/// A query parameter's raw value.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn sha256(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_must_be_a_json_object() {
        // serde reads a struct from an array by position: `[null, null]` once
        // removed both of a tenant's quota limits (found by schemathesis).
        let r = parse_json_object::<QuotaChange>(b"[null, null]").unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.message.contains("expected an object"), "{}", r.message);
        let ok: QuotaChange =
            parse_json_object(br#"{"max_events": 5, "max_bytes": "1KiB"}"#).unwrap();
        assert_eq!((ok.max_events, ok.max_bytes), (Some(5), Some(1024)));
        assert!(parse_json_object::<QuotaChange>(br#"{"max_event": 5}"#).is_err());
    }

    #[test]
    fn known_paths_name_their_methods() {
        use super::super::allowed_methods;
        assert_eq!(
            allowed_methods("/admin/rules/acme/x"),
            Some("PATCH, DELETE")
        );
        assert_eq!(
            allowed_methods("/admin/rehydrations/abc"),
            Some("GET, DELETE")
        );
        assert_eq!(allowed_methods("/metrics"), Some("GET, HEAD"));
        assert_eq!(allowed_methods("/admin/nothing"), None);
    }
}
