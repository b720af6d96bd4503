//! Backends (where indexed events go) and regions (ordered tiers of backends a
//! pinned tenant fails over between): the settings every backend takes and
//! their checks; each type's own settings are in kinds.rs.
mod kinds;

pub use kinds::*;

use super::units::{ByteSize, Dur, Secret};
use super::{invalid, Config, Invalid, Limits, TenantConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// One backend: its name, its type with the settings only that type takes,
/// and the settings every backend takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawBackend")]
pub struct BackendConfig {
    pub name: String,
    pub kind: BackendKind,
    pub compression: Codec,
    /// gzip 0-9, zstd 1-22; omitted: the codec's fast default (1).
    pub compression_level: Option<i32>,
    /// Extra PEM CA certificates to trust besides the public roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain and key Weir presents to the backend (mutual TLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    /// Requests (batches) in flight at once, per tenant route.
    pub max_in_flight: usize,
    /// Time allowed for one request to the backend.
    pub request_timeout: Dur,
    /// Memory waiting batches may hold per tenant route; past it, intake answers 503.
    pub max_queued_bytes: ByteSize,
    /// Share of its tier's traffic, relative to the other backends of the tier.
    pub weight: u32,
    /// Active health check; without one, only failed sends (passive) take the backend out.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health: failed sends that eject the backend, and for how long.
    pub passive: PassiveHealthConfig,
}

/// A backend as written: every field read with its type and position (a
/// derived struct keeps serde_path_to_error's field paths, which an
/// internally tagged enum or `flatten` would lose), then sorted by type into
/// `BackendConfig`, refusing the fields of other types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    #[serde(rename = "type")]
    kind: BackendType,
    endpoint: Option<String>,
    index: Option<String>,
    token: Option<Secret>,
    sourcetype: Option<String>,
    labels: Option<Vec<String>>,
    url: Option<String>,
    path: Option<PathBuf>,
    format: Option<HttpFormat>,
    headers: Option<BTreeMap<String, Secret>>,
    #[serde(default = "default_codec")]
    compression: Codec,
    compression_level: Option<i32>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    #[serde(default)]
    batch: BatchConfig,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_request_timeout")]
    request_timeout: Dur,
    #[serde(default = "default_backend_queue")]
    max_queued_bytes: ByteSize,
    #[serde(default = "default_weight")]
    weight: u32,
    health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    passive: PassiveHealthConfig,
}

impl TryFrom<RawBackend> for BackendConfig {
    type Error = Refusal;

    fn try_from(r: RawBackend) -> Result<BackendConfig, Refusal> {
        let own = OwnFields {
            endpoint: r.endpoint,
            index: r.index,
            token: r.token,
            sourcetype: r.sourcetype,
            labels: r.labels,
            url: r.url,
            path: r.path,
            format: r.format,
            headers: r.headers,
        };
        Ok(BackendConfig {
            name: r.name,
            kind: own.into_kind(r.kind)?,
            compression: r.compression,
            compression_level: r.compression_level,
            ca_file: r.ca_file,
            client_cert: r.client_cert,
            client_key: r.client_key,
            batch: r.batch,
            retry: r.retry,
            max_in_flight: r.max_in_flight,
            request_timeout: r.request_timeout,
            max_queued_bytes: r.max_queued_bytes,
            weight: r.weight,
            health_check: r.health_check,
            passive: r.passive,
        })
    }
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    /// Tiers in order of preference; each a list of backend names sharing traffic by weight.
    pub tiers: Vec<Vec<String>>,
    /// This region's archive: stores named in `archive_stores`, in order (the
    /// next ones for disaster recovery). Tenants pinned here archive to them
    /// unless they name their own archive; they belong to this region for residency.
    #[serde(default)]
    pub archive_stores: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (a request, expecting a status) or `tcp` (a connect).
    #[serde(rename = "type", default = "default_check_type")]
    pub kind: HealthCheckType,
    #[serde(default = "default_check_method")]
    pub method: String,
    /// Path on the backend's host (`http`).
    #[serde(default = "default_check_path")]
    pub path: String,
    #[serde(default = "default_check_status")]
    pub expected_status: u16,
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    /// Consecutive passing checks that bring a down backend back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failing checks that take it down.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    Http,
    Tcp,
}

fn default_check_type() -> HealthCheckType {
    HealthCheckType::Http
}
fn default_check_method() -> String {
    "GET".into()
}
fn default_check_path() -> String {
    "/".into()
}
fn default_check_status() -> u16 {
    200
}
fn default_check_interval() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_check_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_threshold() -> u32 {
    2
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failed sends (errors, timeouts, 5xx) that eject the backend.
    pub max_failures: u32,
    /// The first ejection; it doubles while the backend keeps failing, up to `max_ejection`.
    pub ejection: Dur,
    pub max_ejection: Dur,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            max_failures: 3,
            ejection: Dur(Duration::from_secs(5)),
            max_ejection: Dur(Duration::from_secs(300)),
        }
    }
}

fn default_in_flight() -> usize {
    8
}
fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_backend_queue() -> ByteSize {
    ByteSize::mib(16)
}
fn default_codec() -> Codec {
    Codec::Gzip
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackendType {
    /// Datadog's logs intake, with the tenant's upstream key.
    Datadog,
    /// Any HTTP endpoint taking a JSON array or NDJSON.
    Http,
    /// Elasticsearch or OpenSearch: `<endpoint>/_bulk`, one `create` per event, per-item errors.
    Elasticsearch,
    /// Splunk HTTP Event Collector: `<endpoint>/services/collector/event` with the `token`.
    SplunkHec,
    /// OpenTelemetry OTLP/HTTP logs, protobuf: `<endpoint>/v1/logs`.
    Otlp,
    /// Grafana Loki push API (JSON): `<endpoint>/loki/api/v1/push`.
    Loki,
    /// NDJSON appended to a local file: the local stand-in for a cloud backend.
    File,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_events: usize,
    /// Uncompressed bytes of one batch (Datadog accepts up to 5 MB).
    pub max_bytes: ByteSize,
    pub max_wait: Dur,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 1000,
            max_bytes: ByteSize::mib(4),
            max_wait: Dur(Duration::from_secs(1)),
        }
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_backoff: Dur,
    pub max_backoff: Dur,
    /// Give up on a batch after this many retries; omitted: retry until delivered
    /// (intake applies backpressure meanwhile, so nothing accepted is lost).
    pub max_retries: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: Dur(Duration::from_millis(100)),
            max_backoff: Dur(Duration::from_secs(30)),
            max_retries: None,
        }
    }
}

impl BackendConfig {
    /// The backend's type (`type:` in the file).
    pub fn backend_type(&self) -> BackendType {
        self.kind.backend_type()
    }

    /// Its type's own checks, then the shared settings': (field under the backend, why).
    fn validate(&self, limits: &Limits) -> Result<(), (&'static str, String)> {
        self.kind.validate()?;
        let level_ok = match (self.compression, self.compression_level) {
            (_, None) => true,
            (Codec::Gzip, Some(l)) => (0..=9).contains(&l),
            (Codec::Zstd, Some(l)) => (1..=22).contains(&l),
            (Codec::None, Some(_)) => false,
        };
        if !level_ok {
            return Err((
                "compression_level",
                "out of range: gzip takes 0-9, zstd 1-22, none takes no level".into(),
            ));
        }
        let files = [
            ("ca_file", &self.ca_file),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ];
        for (field, path) in files {
            if let Some(p) = path.as_ref().filter(|p| !p.is_file()) {
                return Err((field, format!("file {} does not exist", p.display())));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err((
                "client_cert",
                "client_cert and client_key go together (mutual TLS toward the backend)".into(),
            ));
        }
        if self.batch.max_events == 0 || self.batch.max_bytes.0 == 0 {
            return Err((
                "batch",
                "max_events and max_bytes must be at least 1".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err(("max_in_flight", "must be at least 1".into()));
        }
        if self.max_queued_bytes < limits.max_decompressed_bytes {
            return Err((
                "max_queued_bytes",
                "must be at least limits.max_decompressed_bytes, or no request could ever fit"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Weight and health settings (checked with the regions, as routing reads them).
    fn validate_health(&self) -> Result<(), (&'static str, String)> {
        if self.weight == 0 {
            return Err(("weight", "must be at least 1".into()));
        }
        if self.passive.max_failures == 0 {
            return Err(("passive.max_failures", "must be at least 1".into()));
        }
        let Some(h) = &self.health_check else {
            return Ok(());
        };
        if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
            return Err(("health_check", "thresholds must be at least 1".into()));
        }
        if h.interval.0.is_zero() || h.timeout.0.is_zero() {
            return Err((
                "health_check",
                "interval and timeout must be above 0".into(),
            ));
        }
        if http::Method::from_bytes(h.method.as_bytes()).is_err() {
            return Err((
                "health_check.method",
                format!("{:?} is not an HTTP method", h.method),
            ));
        }
        if h.kind == HealthCheckType::Http && !h.path.starts_with('/') {
            return Err(("health_check.path", "must start with /".into()));
        }
        if let BackendKind::File(_) = self.kind {
            return Err(("health_check", "a file backend has nothing to check".into()));
        }
        Ok(())
    }
}

impl Config {
    /// Unique names, then each backend's own checks.
    pub(super) fn validate_backends(&self) -> Result<(), Invalid> {
        let mut backends = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if !backends.insert(b.name.as_str()) {
                return Err(invalid(
                    format!("backends[{i}].name"),
                    format!("duplicate backend name {:?}", b.name),
                ));
            }
            b.validate(&self.limits)
                .map_err(|(field, why)| invalid(format!("backends[{i}].{field}"), why))?;
        }
        Ok(())
    }

    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }

    pub fn region(&self, name: &str) -> Option<&RegionConfig> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Where a tenant's batches may go, in order of preference: its region's
    /// tiers, then each failover region's tiers (or its one `backend`).
    /// Each entry is (region, tier of backend names); validated configs only.
    pub fn route_tiers(&self, t: &TenantConfig) -> Vec<(String, Vec<String>)> {
        if let Some(b) = &t.backend {
            return vec![(String::new(), vec![b.clone()])];
        }
        t.region
            .iter()
            .chain(&t.failover_regions)
            .filter_map(|r| self.region(r))
            .flat_map(|r| r.tiers.iter().map(|tier| (r.name.clone(), tier.clone())))
            .collect()
    }

    pub(super) fn validate_regions(&self) -> Result<(), Invalid> {
        let known: Vec<_> = self.backends.iter().map(|b| b.name.as_str()).collect();
        let mut names = HashSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            if !names.insert(r.name.as_str()) {
                return Err(invalid(
                    format!("regions[{i}].name"),
                    format!("duplicate region name {:?}", r.name),
                ));
            }
            if r.tiers.is_empty() || r.tiers.iter().any(|t| t.is_empty()) {
                return Err(invalid(
                    format!("regions[{i}].tiers"),
                    "a region needs at least one tier, and each tier at least one backend".into(),
                ));
            }
            let mut seen = HashSet::new();
            for (j, tier) in r.tiers.iter().enumerate() {
                for (k, b) in tier.iter().enumerate() {
                    let at = format!("regions[{i}].tiers[{j}][{k}]");
                    if self.backend(b).is_none() {
                        return Err(invalid(
                            at,
                            format!("no backend named {b:?}; defined backends: {known:?}"),
                        ));
                    }
                    if !seen.insert(b.as_str()) {
                        return Err(invalid(at, format!("backend {b:?} appears twice in region {:?}; a backend belongs to one tier", r.name)));
                    }
                }
            }
        }
        for (i, b) in self.backends.iter().enumerate() {
            b.validate_health()
                .map_err(|(field, why)| invalid(format!("backends[{i}].{field}"), why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose one backend is `backend` (flow YAML), on line 4.
    fn parse(backend: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!(
            "listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive: {{store: {{type: local, root: /tmp/x}}}}\nbackends:\n  - {backend}\ntenants: [{{name: t, api_keys: [k], backend: b, upstream_api_key: u}}]\n"
        );
        Config::parse(&text, "b.yaml")
    }

    #[test]
    fn each_type_reads_into_its_own_settings() {
        let c =
            parse("{name: b, type: splunk_hec, endpoint: \"https://hec\", token: tok}").unwrap();
        let BackendKind::SplunkHec(hec) = &c.backends[0].kind else {
            panic!("{:?}", c.backends[0].kind)
        };
        assert_eq!(
            (hec.token.expose(), hec.sourcetype.as_str()),
            ("tok", "_json")
        );
        let c = parse("{name: b, type: loki, endpoint: \"http://loki\"}").unwrap();
        assert_eq!(c.backends[0].backend_type(), BackendType::Loki);
        assert_eq!(c.backends[0].kind.address(), "http://loki");
    }

    #[test]
    fn another_types_field_is_refused_at_its_line() {
        let e =
            parse("{name: b, type: datadog, endpoint: \"https://dd\",\n     url: \"http://x\"}")
                .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].url"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.to_string()
                .contains("does not apply to a backend of type Datadog"),
            "{e}"
        );
        let e = parse("{name: b, type: file, path: /tmp/o, headers: {a: b}}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].headers"), "{e}");
        let e = parse("{name: b, type: http, url: \"http://x\", bogus: 1}").unwrap_err();
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn a_missing_or_wrong_value_names_its_field() {
        let e = parse("{name: b, type: http}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].url"), "{e}");
        assert!(e.message.contains("needs `url`"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse("{name: b, type: http, url: \"http://x\",\n     weight: lots}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].weight"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        let e = parse("{name: b, type: http, url: \"ftp://x\"}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].url"), "{e}");
        assert!(
            e.message.contains("is not an http:// or https:// URL"),
            "{e}"
        );
        let e = parse("{name: b, type: loki, endpoint: \"http://l\", labels: [pod]}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].labels"), "{e}");
        let e = parse("{name: b, type: file, path: /tmp/o, health_check: {path: /}}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("backends[0].health_check"), "{e}");
    }
}
