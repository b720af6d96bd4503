//! One tenant resolved: everything Weir needs to run it, checked, in one value.
use crate::config::{
    invalid, ArchiveConfig, Config, DailyQuotaConfig, ExclusionRuleConfig, Invalid, NamedStore,
    PluginConfig, RateLimitConfig, Secret, TenantConfig,
};
use crate::rules::exclusion::Rule;
use std::sync::Arc;

/// A tenant as it runs: its keys, its stages' settings (exclusion rules
/// compiled), its archive (its own or the top-level one) and its route.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPlan {
    pub name: String,
    /// Where the tenant is in the YAML (`tenants[2]`), for messages naming its fields.
    pub at: String,
    /// Keys agents send; at least one, none shared with another tenant.
    pub api_keys: Vec<Secret>,
    /// Client certificate names that identify it (mutual TLS).
    pub client_names: Vec<String>,
    /// Key sent to a `datadog` backend on this tenant's behalf.
    pub upstream_api_key: Option<Secret>,
    /// The archive the tenant writes to: its own, its region's stores (with
    /// the top-level settings), or the top-level one.
    pub archive: ArchiveConfig,
    /// The stores of that archive, in order (an inline `store` named by its URL).
    pub archive_stores: Vec<NamedStore>,
    /// When its requests are answered (its own `ack`, or `buffer.ack`).
    pub ack: crate::config::AckMode,
    pub rate_limit: Option<RateLimitConfig>,
    pub daily_quota: Option<DailyQuotaConfig>,
    /// The tenant's own exclusion rules, compiled (the global ones are the plan's).
    pub exclusion_rules: Vec<Arc<Rule>>,
    /// Its plugins, in order; each file checked to be a WebAssembly module.
    pub plugins: Vec<PluginConfig>,
    /// Where its indexed events go, in order of preference; never empty.
    pub route: Vec<Tier>,
}

/// One tier of a route: backends of one region, chosen among by weight, each a
/// backend the config defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// The region the tier belongs to; empty for a tenant with one `backend`.
    pub region: String,
    /// Names of backends in `Config::backends`.
    pub backends: Vec<String>,
}

impl TenantPlan {
    /// Resolves `t`, the tenant at `tenants[index]` of `config` (already validated).
    pub fn resolve(config: &Config, index: usize, t: &TenantConfig) -> Result<TenantPlan, Invalid> {
        let at = format!("tenants[{index}]");
        let route: Vec<Tier> = config
            .route_tiers(t)
            .into_iter()
            .map(|(region, backends)| Tier { region, backends })
            .collect();
        let field = if t.region.is_some() {
            "region"
        } else {
            "backend"
        };
        if route.is_empty() || route.iter().any(|tier| tier.backends.is_empty()) {
            return Err(invalid(
                format!("{at}.{field}"),
                "the route has an empty tier".into(),
            ));
        }
        if let Some(b) = route
            .iter()
            .flat_map(|tier| &tier.backends)
            .find(|b| config.backend(b).is_none())
        {
            return Err(invalid(
                format!("{at}.{field}"),
                format!("no backend named {b:?}"),
            ));
        }
        check_plugins(&t.plugins, &format!("{at}.plugins"))?;
        let (archive, archive_stores) = resolve_archive(config, t, &at)?;
        Ok(TenantPlan {
            name: t.name.clone(),
            api_keys: t.api_keys.clone(),
            client_names: t.client_names.clone(),
            upstream_api_key: t.upstream_api_key.clone(),
            archive,
            archive_stores,
            ack: t.ack.unwrap_or(config.buffer.ack),
            rate_limit: t.rate_limit.clone(),
            daily_quota: t.daily_quota.clone(),
            exclusion_rules: compile_rules(&t.exclusion_rules, &format!("{at}.exclusion_rules"))?,
            plugins: t.plugins.clone(),
            route,
            at,
        })
    }

    /// The first backend of its route: the one its batch limits and format start from.
    pub fn preferred_backend(&self) -> &str {
        &self.route[0].backends[0]
    }
}

/// The tenant's archive and its stores, in order; refused when a pinned
/// tenant's events would be archived in a store of a region it may not use.
fn resolve_archive(
    config: &Config,
    t: &TenantConfig,
    at: &str,
) -> Result<(ArchiveConfig, Vec<NamedStore>), Invalid> {
    let region_stores = t
        .region
        .as_deref()
        .and_then(|r| config.region(r))
        .map(|r| &r.archive_stores)
        .filter(|s| !s.is_empty());
    let (archive, field) = match (&t.archive, region_stores) {
        (Some(own), _) => (own.clone(), format!("{at}.archive")),
        (None, Some(names)) => {
            let mut a = config.archive.clone();
            a.store = None;
            a.stores = names.clone();
            let r = config
                .regions
                .iter()
                .position(|r| Some(&r.name) == t.region.as_ref());
            (a, format!("regions[{}]", r.unwrap_or(0)))
        }
        (None, None) => (config.archive.clone(), "archive".to_string()),
    };
    let stores: Vec<NamedStore> = match &archive.store {
        Some(store) => vec![NamedStore {
            name: store.url(),
            store: store.clone(),
        }],
        None => archive
            .stores
            .iter()
            .filter_map(|n| config.archive_stores.iter().find(|s| &s.name == n).cloned())
            .collect(),
    };
    let entry = |j: usize| match (&archive.store, field.starts_with("regions")) {
        (Some(_), _) => format!("{field}.store"),
        (None, true) => format!("{field}.archive_stores[{j}]"),
        (None, false) => format!("{field}.stores[{j}]"),
    };
    // One place listed twice would make a failover write an object where it
    // already failed, and the clean-up of failed writes delete it.
    for (j, s) in stores.iter().enumerate() {
        if let Some(first) = stores[..j].iter().find(|f| f.store.url() == s.store.url()) {
            return Err(invalid(
                entry(j),
                format!(
                    "archive stores {:?} and {:?} are the same place ({}): list each bucket or container once",
                    first.name,
                    s.name,
                    s.store.url()
                ),
            ));
        }
    }
    if let (Some(region), true) = (&t.region, archive.enabled) {
        let allowed: Vec<&String> = std::iter::once(region).chain(&t.failover_regions).collect();
        // Where a store is: the regions listing it, or listing a store at the
        // same place (an inline store, or a second name for one bucket).
        let place_of = |name: &String| {
            config
                .archive_stores
                .iter()
                .find(|d| &d.name == name)
                .map(|d| d.store.url())
        };
        for (j, s) in stores.iter().enumerate() {
            let url = s.store.url();
            let homes: Vec<&str> = config
                .regions
                .iter()
                .filter(|r| {
                    r.archive_stores
                        .iter()
                        .any(|n| n == &s.name || place_of(n).as_ref() == Some(&url))
                })
                .map(|r| r.name.as_str())
                .collect();
            if !homes.is_empty() && !homes.iter().any(|h| allowed.iter().any(|a| a == h)) {
                return Err(invalid(
                    entry(j),
                    format!(
                        "tenant {:?} may use regions {allowed:?} only, but archive store {:?} belongs to {homes:?}: its events would be archived outside its regions (name stores of those regions)",
                        t.name, s.name
                    ),
                ));
            }
        }
    }
    Ok((archive, stores))
}

/// Compiles exclusion rules (`at`: their field, `exclusion_rules` or
/// `tenants[0].exclusion_rules`); names and sample rates the config checked.
pub fn compile_rules(rules: &[ExclusionRuleConfig], at: &str) -> Result<Vec<Arc<Rule>>, Invalid> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Rule::compile(r.clone()).map(Arc::new).map_err(|e| {
                invalid(
                    format!("{at}[{i}].query"),
                    format!("invalid query {:?}: {e}", r.query),
                )
            })
        })
        .collect()
}

/// Checks each plugin file is a WebAssembly module (validation only, no
/// compilation; `weir check` and start-up compile and instantiate too).
fn check_plugins(plugins: &[PluginConfig], at: &str) -> Result<(), Invalid> {
    for (i, p) in plugins.iter().enumerate() {
        crate::plugin::validate_file(&p.path)
            .map_err(|e| invalid(format!("{at}[{i}].path"), e.to_string()))?;
    }
    Ok(())
}
