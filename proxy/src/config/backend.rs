//! Backends (where indexed events go) and regions (ordered tiers of backends a
//! pinned tenant fails over between).
use super::units::{ByteSize, Dur, Secret};
use super::{Config, TenantConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: BackendType,
    /// The service's base URL (`datadog`, `elasticsearch`, `splunk_hec`, `otlp`, `loki`).
    pub endpoint: Option<String>,
    /// `elasticsearch`: the index (default `weir-logs`; `%Y`, `%m`, `%d` take the event's UTC date);
    /// `splunk_hec`: the index (default: the token's).
    pub index: Option<String>,
    /// `splunk_hec`: the HEC token (`${ENV}` works; never logged).
    pub token: Option<Secret>,
    /// `splunk_hec`: the sourcetype (default `_json`).
    pub sourcetype: Option<String>,
    /// `loki`: event fields that become stream labels, besides `tenant`.
    #[serde(default = "default_loki_labels")]
    pub labels: Vec<String>,
    /// `http`: the full URL events are POSTed to.
    pub url: Option<String>,
    /// `file`: where NDJSON lines are appended (`-` for stdout).
    pub path: Option<PathBuf>,
    /// `http`: body shape.
    #[serde(default)]
    pub format: HttpFormat,
    #[serde(default = "default_codec")]
    pub compression: Codec,
    /// gzip 0-9, zstd 1-22; omitted: the codec's fast default (1).
    pub compression_level: Option<i32>,
    /// `http`: extra request headers (values may be `${ENV_VAR}`; never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Extra PEM CA certificates to trust besides the public roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Requests (batches) in flight at once, per tenant route.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Time allowed for one request to the backend.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// Memory waiting batches may hold per tenant route; past it, intake answers 503.
    #[serde(default = "default_backend_queue")]
    pub max_queued_bytes: ByteSize,
    /// Share of its tier's traffic, relative to the other backends of the tier.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Active health check; without one, only failed sends (passive) take the backend out.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive health: failed sends that eject the backend, and for how long.
    #[serde(default)]
    pub passive: PassiveHealthConfig,
}

fn default_loki_labels() -> Vec<String> {
    vec!["service".into(), "source".into()]
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

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    #[default]
    JsonArray,
    Ndjson,
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

impl Config {
    /// Names, URLs and the fields each backend type takes.
    pub(super) fn validate_backends(&self) -> Result<(), (String, String)> {
        let mut backends = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if !backends.insert(b.name.as_str()) {
                return Err((
                    format!("backends[{i}].name"),
                    format!("duplicate backend name {:?}", b.name),
                ));
            }
            let (field, url) = match b.kind {
                BackendType::Http => ("url", &b.url),
                BackendType::File => ("path", &None),
                _ => ("endpoint", &b.endpoint),
            };
            let wrong = |f: &str| {
                Err((
                    format!("backends[{i}].{f}"),
                    format!("does not apply to a backend of type {:?}", b.kind),
                ))
            };
            if b.kind == BackendType::File {
                if b.path.is_none() {
                    return Err((
                        format!("backends[{i}].path"),
                        "a file backend needs a path (`-` for stdout)".into(),
                    ));
                }
            } else {
                let Some(url) = url else {
                    return Err((
                        format!("backends[{i}].{field}"),
                        format!("a {:?} backend needs `{field}`", b.kind),
                    ));
                };
                match url.parse::<http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http") | Some("https"))
                            && u.host().is_some() => {}
                    _ => {
                        return Err((
                            format!("backends[{i}].{field}"),
                            format!("{url:?} is not an http:// or https:// URL"),
                        ))
                    }
                }
                if b.path.is_some() {
                    return wrong("path");
                }
            }
            if matches!(b.kind, BackendType::Http | BackendType::File) && b.endpoint.is_some() {
                return wrong("endpoint");
            }
            if b.kind != BackendType::Http && b.url.is_some() {
                return wrong("url");
            }
            if matches!(b.kind, BackendType::Datadog | BackendType::File) && !b.headers.is_empty() {
                return wrong("headers");
            }
            if !matches!(b.kind, BackendType::Elasticsearch | BackendType::SplunkHec)
                && b.index.is_some()
            {
                return wrong("index");
            }
            if b.kind != BackendType::SplunkHec && (b.token.is_some() || b.sourcetype.is_some()) {
                return wrong(if b.token.is_some() {
                    "token"
                } else {
                    "sourcetype"
                });
            }
            if b.kind == BackendType::SplunkHec && b.token.is_none() {
                return Err((
                    format!("backends[{i}].token"),
                    "a splunk_hec backend needs its HEC token".into(),
                ));
            }
            if b.kind == BackendType::Loki {
                if let Some(l) = b
                    .labels
                    .iter()
                    .find(|l| !["service", "source", "host", "status"].contains(&l.as_str()))
                {
                    return Err((format!("backends[{i}].labels"), format!("{l:?}: labels can be service, source, host and status (tenant is always one)")));
                }
            }
            let level_ok = match (b.compression, b.compression_level) {
                (_, None) => true,
                (Codec::Gzip, Some(l)) => (0..=9).contains(&l),
                (Codec::Zstd, Some(l)) => (1..=22).contains(&l),
                (Codec::None, Some(_)) => false,
            };
            if !level_ok {
                return Err((
                    format!("backends[{i}].compression_level"),
                    "out of range: gzip takes 0-9, zstd 1-22, none takes no level".into(),
                ));
            }
            if let Some(ca) = &b.ca_file {
                if !ca.is_file() {
                    return Err((
                        format!("backends[{i}].ca_file"),
                        format!("file {} does not exist", ca.display()),
                    ));
                }
            }
            if b.batch.max_events == 0 || b.batch.max_bytes.0 == 0 {
                return Err((
                    format!("backends[{i}].batch"),
                    "max_events and max_bytes must be at least 1".into(),
                ));
            }
            if b.max_in_flight == 0 {
                return Err((
                    format!("backends[{i}].max_in_flight"),
                    "must be at least 1".into(),
                ));
            }
            if b.max_queued_bytes < self.limits.max_decompressed_bytes {
                return Err((
                    format!("backends[{i}].max_queued_bytes"),
                    "must be at least limits.max_decompressed_bytes, or no request could ever fit"
                        .into(),
                ));
            }
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

    pub(super) fn validate_regions(&self) -> Result<(), (String, String)> {
        let known: Vec<_> = self.backends.iter().map(|b| b.name.as_str()).collect();
        let mut names = HashSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            if !names.insert(r.name.as_str()) {
                return Err((
                    format!("regions[{i}].name"),
                    format!("duplicate region name {:?}", r.name),
                ));
            }
            if r.tiers.is_empty() || r.tiers.iter().any(|t| t.is_empty()) {
                return Err((
                    format!("regions[{i}].tiers"),
                    "a region needs at least one tier, and each tier at least one backend".into(),
                ));
            }
            let mut seen = HashSet::new();
            for (j, tier) in r.tiers.iter().enumerate() {
                for (k, b) in tier.iter().enumerate() {
                    let at = format!("regions[{i}].tiers[{j}][{k}]");
                    if self.backend(b).is_none() {
                        return Err((
                            at,
                            format!("no backend named {b:?}; defined backends: {known:?}"),
                        ));
                    }
                    if !seen.insert(b.as_str()) {
                        return Err((at, format!("backend {b:?} appears twice in region {:?}; a backend belongs to one tier", r.name)));
                    }
                }
            }
        }
        for (i, b) in self.backends.iter().enumerate() {
            let at = format!("backends[{i}]");
            if b.weight == 0 {
                return Err((format!("{at}.weight"), "must be at least 1".into()));
            }
            if b.passive.max_failures == 0 {
                return Err((
                    format!("{at}.passive.max_failures"),
                    "must be at least 1".into(),
                ));
            }
            if let Some(h) = &b.health_check {
                if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                    return Err((
                        format!("{at}.health_check"),
                        "thresholds must be at least 1".into(),
                    ));
                }
                if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                    return Err((
                        format!("{at}.health_check"),
                        "interval and timeout must be above 0".into(),
                    ));
                }
                if http::Method::from_bytes(h.method.as_bytes()).is_err() {
                    return Err((
                        format!("{at}.health_check.method"),
                        format!("{:?} is not an HTTP method", h.method),
                    ));
                }
                if h.kind == HealthCheckType::Http && !h.path.starts_with('/') {
                    return Err((
                        format!("{at}.health_check.path"),
                        "must start with /".into(),
                    ));
                }
                if b.kind == BackendType::File {
                    return Err((
                        format!("{at}.health_check"),
                        "a file backend has nothing to check".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
