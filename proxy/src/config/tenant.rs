//! Tenants: their keys, route, archive, and the stages their events pass
//! (rate limit, plugins, exclusion rules, daily quota).
use super::archive::{validate_archive, yes, ArchiveConfig};
use super::units::{ByteSize, Dur, Secret};
use super::{invalid, BackendType, Config, Invalid};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Keys agents send (DD-API-KEY); literal or `${ENV_VAR}`.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// Names in client certificates (a DNS, URI or e-mail subject alternative
    /// name, or the subject's common name) that identify this tenant on a
    /// listener with `tls.client_ca`: such a client needs no key.
    #[serde(default)]
    pub client_names: Vec<String>,
    /// The one backend this tenant's indexed events go to (no failover); or set `region`.
    pub backend: Option<String>,
    /// The region the tenant is pinned to: its events go to that region's tiers of backends.
    pub region: Option<String>,
    /// Regions the tenant may fail over to, in order, once nothing in its own region is healthy.
    #[serde(default)]
    pub failover_regions: Vec<String>,
    /// Key sent to a `datadog` backend on this tenant's behalf.
    pub upstream_api_key: Option<Secret>,
    /// This tenant's own archive, replacing the top-level one.
    pub archive: Option<ArchiveConfig>,
    /// When this tenant's requests are answered (`buffer.ack` unless set).
    pub ack: Option<super::AckMode>,
    /// How fast the tenant may send; over it, 429 before any work is done.
    pub rate_limit: Option<RateLimitConfig>,
    /// What the tenant may index per day (counted after exclusion rules).
    pub daily_quota: Option<DailyQuotaConfig>,
    /// Checked in order, after the global rules.
    #[serde(default)]
    pub exclusion_rules: Vec<ExclusionRuleConfig>,
    /// WebAssembly plugins (ABI v1, sdk/ABI.md), run in order after the rate limit
    /// and before the exclusion rules (so they can redact before the archive tee).
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Names the plugin in logs and metrics; unique within the tenant.
    pub name: String,
    /// The `.wasm` module (a `.wat` text module works too).
    pub path: PathBuf,
    /// Handed to the plugin's `weir_init` as MessagePack (any YAML value).
    #[serde(default)]
    pub config: Option<serde_yaml::Value>,
    /// What a batch the plugin fails on (trap, deadline, memory, bad result) becomes.
    #[serde(default)]
    pub on_error: PluginOnError,
    /// Deadline of one call (one batch).
    #[serde(default = "default_plugin_timeout")]
    pub timeout: Dur,
    /// Linear memory one instance may grow to.
    #[serde(default = "default_plugin_memory")]
    pub memory_limit: ByteSize,
}

fn default_plugin_timeout() -> Dur {
    Dur(Duration::from_millis(50))
}
fn default_plugin_memory() -> ByteSize {
    ByteSize::mib(64)
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PluginOnError {
    /// The batch goes on as if the plugin were not there.
    #[default]
    Pass,
    /// Every event of the batch is dropped.
    Drop,
    /// Every event of the batch is archived but not indexed.
    ArchiveOnly,
}

impl PluginOnError {
    /// As written in the YAML (for logs).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginOnError::Pass => "pass",
            PluginOnError::Drop => "drop",
            PluginOnError::ArchiveOnly => "archive_only",
        }
    }
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub events_per_second: Option<u32>,
    /// Events that may arrive at once above the steady rate; default: one second's worth.
    pub events_burst: Option<u32>,
    pub bytes_per_second: Option<ByteSize>,
    /// Default: one second's worth.
    pub bytes_burst: Option<ByteSize>,
    /// One limit per value of this field (e.g. `service`) instead of one for the tenant.
    pub partition_by: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DailyQuotaConfig {
    pub max_events: Option<u64>,
    pub max_bytes: Option<ByteSize>,
    /// The UTC hour the day's usage resets at (Datadog's index quotas: 14).
    #[serde(default = "default_reset_hour")]
    pub reset_hour_utc: u32,
    /// Share of the quota at which a warning is raised (metric and one log line).
    #[serde(default = "default_warning_threshold")]
    pub warning_threshold: f64,
    #[serde(default)]
    pub action: QuotaAction,
    /// One quota per combination of these fields' values (e.g. `[service]`).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Limits for particular partition values (values joined with `,` in `partition_by` order).
    #[serde(default)]
    pub overrides: BTreeMap<String, QuotaLimit>,
}

impl Default for DailyQuotaConfig {
    fn default() -> Self {
        DailyQuotaConfig {
            max_events: None,
            max_bytes: None,
            reset_hour_utc: default_reset_hour(),
            warning_threshold: default_warning_threshold(),
            action: QuotaAction::default(),
            partition_by: Vec::new(),
            overrides: BTreeMap::new(),
        }
    }
}

fn default_reset_hour() -> u32 {
    14
}
fn default_warning_threshold() -> f64 {
    0.8
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimit {
    pub max_events: Option<u64>,
    pub max_bytes: Option<ByteSize>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaAction {
    /// Over quota, events still reach the archive (the default: nothing is lost).
    #[default]
    ArchiveOnly,
    Drop,
    /// Refuse the request with 429.
    Reject,
}

impl QuotaAction {
    /// As written in the YAML (metric labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaAction::ArchiveOnly => "archive_only",
            QuotaAction::Drop => "drop",
            QuotaAction::Reject => "reject",
        }
    }
}

#[derive(Debug, Deserialize, Clone, PartialEq, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExclusionRuleConfig {
    pub name: String,
    /// Datadog log search syntax, e.g. `service:web status:debug`.
    pub query: String,
    /// Share of matching events excluded: 1.0 all, 0.9 keeps one in ten.
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
    #[serde(default)]
    pub action: ExclusionAction,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_sample_rate() -> f64 {
    1.0
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionAction {
    /// Excluded from the index, still archived.
    #[default]
    ArchiveOnly,
    /// Neither indexed nor archived.
    Drop,
}

impl Config {
    /// Names, keys, routes and archives of the tenants.
    pub(super) fn validate_tenants(&self) -> Result<(), Invalid> {
        let mut tenants = HashSet::new();
        let mut keys = HashSet::new();
        let mut client_names = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(format!("tenants[{i}].name"), format!("{:?}: tenant names use letters, digits, - and _ (they name archive folders)", t.name)));
            }
            if !tenants.insert(t.name.as_str()) {
                return Err(invalid(
                    format!("tenants[{i}].name"),
                    format!("duplicate tenant name {:?}", t.name),
                ));
            }
            if t.api_keys.is_empty() && t.client_names.is_empty() {
                return Err(invalid(
                    format!("tenants[{i}].api_keys"),
                    "at least one API key (or a client certificate name in client_names) is required".into(),
                ));
            }
            for (k, name) in t.client_names.iter().enumerate() {
                if name.trim().is_empty() || !client_names.insert(name.as_str()) {
                    return Err(invalid(
                        format!("tenants[{i}].client_names[{k}]"),
                        format!("{name:?} is empty or already names a tenant (a certificate name maps to exactly one)"),
                    ));
                }
            }
            for (k, key) in t.api_keys.iter().enumerate() {
                if !keys.insert(key.expose()) {
                    return Err(invalid(
                        format!("tenants[{i}].api_keys[{k}]"),
                        "this API key is already used (keys must map to exactly one tenant)".into(),
                    ));
                }
            }
            self.validate_tenant_route(i, t)?;
            if let Some(a) = &t.archive {
                validate_archive(a, &format!("tenants[{i}].archive"), &self.archive_stores)?;
            }
            if t.ack.is_some_and(|a| a != super::AckMode::Durable)
                && self.buffer.kind == super::BufferKind::Memory
            {
                return Err(invalid(
                    format!("tenants[{i}].ack"),
                    "ack modes need the disk buffer (buffer.type: disk)".into(),
                ));
            }
        }
        if self.tenants.is_empty() {
            return Err(invalid(
                "tenants".into(),
                "at least one tenant is required".into(),
            ));
        }
        Ok(())
    }

    /// Exclusion rules, plugins, rate limits and daily quotas.
    pub(super) fn validate_tenant_stages(&self) -> Result<(), Invalid> {
        validate_rules(&self.exclusion_rules, "exclusion_rules")?;
        for (i, t) in self.tenants.iter().enumerate() {
            validate_rules(&t.exclusion_rules, &format!("tenants[{i}].exclusion_rules"))?;
            validate_plugins(&t.plugins, &format!("tenants[{i}].plugins"))?;
            if let Some(r) = &t.rate_limit {
                let at = format!("tenants[{i}].rate_limit");
                if r.events_per_second.is_none() && r.bytes_per_second.is_none() {
                    return Err(invalid(
                        at,
                        "set events_per_second, bytes_per_second or both".into(),
                    ));
                }
                if r.events_per_second == Some(0)
                    || r.bytes_per_second.is_some_and(|b| b.0 == 0)
                    || r.events_burst == Some(0)
                    || r.bytes_burst.is_some_and(|b| b.0 == 0)
                {
                    return Err(invalid(at, "rates and bursts must be at least 1".into()));
                }
                if r.bytes_per_second.is_some_and(|b| b.0 > u32::MAX as u64)
                    || r.bytes_burst.is_some_and(|b| b.0 > u32::MAX as u64)
                {
                    return Err(invalid(
                        at,
                        "byte rates and bursts are limited to 4 GiB".into(),
                    ));
                }
            }
            if let Some(q) = &t.daily_quota {
                let at = format!("tenants[{i}].daily_quota");
                if q.max_events.is_none() && q.max_bytes.is_none() && q.overrides.is_empty() {
                    return Err(invalid(at, "set max_events, max_bytes or overrides".into()));
                }
                if q.reset_hour_utc > 23 {
                    return Err(invalid(
                        format!("{at}.reset_hour_utc"),
                        "must be 0-23".into(),
                    ));
                }
                if !(q.warning_threshold > 0.0 && q.warning_threshold <= 1.0) {
                    return Err(invalid(
                        format!("{at}.warning_threshold"),
                        "must be in (0, 1]".into(),
                    ));
                }
                if !q.overrides.is_empty() && q.partition_by.is_empty() {
                    return Err(invalid(
                        format!("{at}.overrides"),
                        "overrides name partition values, so partition_by must be set".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_tenant_route(&self, i: usize, t: &TenantConfig) -> Result<(), Invalid> {
        let at = format!("tenants[{i}]");
        let regions: Vec<_> = self.regions.iter().map(|r| r.name.as_str()).collect();
        match (&t.backend, &t.region) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!("{at}.region"), "set either backend (one backend, no failover) or region (its tiers, with failover), not both".into()))
            }
            (None, None) => {
                return Err(invalid(format!("{at}.backend"), format!("set backend (one backend) or region (one of {regions:?}) to say where the tenant's events go")))
            }
            (Some(b), None) => {
                if !t.failover_regions.is_empty() {
                    return Err(invalid(format!("{at}.failover_regions"), "failover regions need the tenant pinned to a region (region:), not a single backend".into()));
                }
                if self.backend(b).is_none() {
                    let known: Vec<_> = self.backends.iter().map(|b| b.name.as_str()).collect();
                    return Err(invalid(format!("{at}.backend"), format!("no backend named {b:?}; defined backends: {known:?}")));
                }
            }
            (None, Some(r)) => {
                if self.region(r).is_none() {
                    return Err(invalid(format!("{at}.region"), format!("no region named {r:?}; defined regions: {regions:?}")));
                }
                for (k, f) in t.failover_regions.iter().enumerate() {
                    if self.region(f).is_none() {
                        return Err(invalid(format!("{at}.failover_regions[{k}]"), format!("no region named {f:?}; defined regions: {regions:?}")));
                    }
                    if f == r || t.failover_regions[..k].contains(f) {
                        return Err(invalid(format!("{at}.failover_regions[{k}]"), format!("region {f:?} is already in the tenant's route")));
                    }
                }
            }
        }
        for (_, tier) in self.route_tiers(t) {
            for b in tier {
                let kind = self.backend(&b).map(|c| c.backend_type());
                if kind == Some(BackendType::Datadog) && t.upstream_api_key.is_none() {
                    return Err(invalid(format!("{at}.upstream_api_key"), format!("backend {b:?} is of type datadog, which needs the tenant's upstream_api_key")));
                }
            }
        }
        Ok(())
    }
}

/// Rule names and sample rates; the plan compiles the queries.
fn validate_rules(rules: &[ExclusionRuleConfig], at: &str) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        if !names.insert(r.name.as_str()) {
            return Err(invalid(
                format!("{at}[{i}].name"),
                format!("duplicate rule name {:?}", r.name),
            ));
        }
        if !(0.0..=1.0).contains(&r.sample_rate) {
            return Err(invalid(
                format!("{at}[{i}].sample_rate"),
                "must be between 0 and 1 (the share of matching events excluded)".into(),
            ));
        }
    }
    Ok(())
}

/// Plugin names, files, deadlines and memory; the plan checks each file is a
/// WebAssembly module.
fn validate_plugins(plugins: &[PluginConfig], at: &str) -> Result<(), Invalid> {
    let mut names = HashSet::new();
    for (i, p) in plugins.iter().enumerate() {
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return Err(invalid(
                format!("{at}[{i}].name"),
                format!(
                    "{:?}: plugin names must be non-empty and unique within the tenant",
                    p.name
                ),
            ));
        }
        if !p.path.is_file() {
            return Err(invalid(
                format!("{at}[{i}].path"),
                format!("file {} does not exist", p.path.display()),
            ));
        }
        if p.timeout.0.is_zero() {
            return Err(invalid(
                format!("{at}[{i}].timeout"),
                "must be more than 0".into(),
            ));
        }
        if p.memory_limit.0 < 65536 || p.memory_limit.0 > 4 << 30 {
            return Err(invalid(
                format!("{at}[{i}].memory_limit"),
                "must be between 64KiB (one wasm page) and 4GiB".into(),
            ));
        }
    }
    Ok(())
}
