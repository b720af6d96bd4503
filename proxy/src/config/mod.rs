//! The YAML configuration: one struct per section, defaults that suit an edge
//! proxy, and errors that name the file, line, column and field to fix.
mod env;
pub(crate) mod locate;
pub mod units;

use locate::Locations;
pub use units::{ByteSize, Dur, Secret};

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The local default that `weir run` uses when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/weir.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where Weir keeps its state (relative paths resolve against the working directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The archive every tenant writes to unless it names its own.
    pub archive: ArchiveConfig,
    pub backends: Vec<BackendConfig>,
    /// Regions: ordered tiers of backends a tenant pinned to the region fails over between.
    #[serde(default)]
    pub regions: Vec<RegionConfig>,
    pub tenants: Vec<TenantConfig>,
    /// Exclusion rules every tenant's events are checked against first.
    #[serde(default)]
    pub exclusion_rules: Vec<ExclusionRuleConfig>,
    /// How long a SIGTERM may take to flush batches and archive objects.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// The YAML as written (environment expanded), for reload's field-by-field comparison.
    #[serde(skip)]
    pub raw: serde_yaml::Value,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./weir-data")
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Required when `protocol: https`.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Http,
    Https,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Limits on every input; the defaults follow Datadog's intake limits.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time allowed for a client to send its request headers (and the TLS handshake).
    pub header_read_timeout: Dur,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle_timeout: Dur,
    /// Time allowed to receive a whole request body.
    pub body_read_timeout: Dur,
    /// Connections served at once per listener; further ones wait in the accept backlog.
    pub max_connections: usize,
    /// Largest request body as sent (compressed).
    pub max_body_bytes: ByteSize,
    /// Largest request body once decompressed (zip bombs stop here).
    pub max_decompressed_bytes: ByteSize,
    /// Most log entries in one request; none by default: requests are bounded by
    /// their bytes and by the memory their events take (see intake).
    pub max_events_per_request: Option<usize>,
    /// Largest single log; longer messages are truncated and marked.
    pub max_log_bytes: ByteSize,
    /// Memory all requests being read and decoded may hold at once; past it, 503.
    pub max_inflight_request_bytes: ByteSize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Threads running the batches of tenants with plugins (at most this many
    /// plugin calls at once, and warm instances per plugin); 0: one per core.
    pub plugin_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(60)),
            body_read_timeout: Dur(Duration::from_secs(30)),
            max_connections: 10_000,
            max_body_bytes: ByteSize::mib(5),
            max_decompressed_bytes: ByteSize::mib(5),
            max_events_per_request: None,
            max_log_bytes: ByteSize::mib(1),
            max_inflight_request_bytes: ByteSize::mib(48),
            max_concurrent_streams: 100,
            plugin_threads: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serves /metrics, /healthz and /readyz. Keep it on loopback or a private network.
    pub address: SocketAddr,
    /// Bearer token the run-time control API (/admin/...) requires; without it that API is off.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:8089".parse().unwrap(),
            token: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `weir=debug`; RUST_LOG overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Checks a tracing filter (`log.level`, `RUST_LOG`). tracing reads a bare word
/// that is not a level (`verbose`, `infox`) as a module name, which silences every
/// log line: refused here, with the levels there are.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None if directive.contains('[') => continue,
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "{level:?} is not a log level: use one of trace, debug, info, warn, error, off, \
                 or `module=level` directives separated by commas (e.g. `weir=debug,info`)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("invalid log filter {filter:?}: {e}"))
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub store: StoreConfig,
    /// An object is written once it holds this many uncompressed bytes...
    #[serde(default = "default_object_bytes")]
    pub max_object_bytes: ByteSize,
    /// ...or once its oldest event is this old.
    #[serde(default = "default_object_age")]
    pub max_object_age: Dur,
    /// gzip level, 0-9.
    #[serde(default = "default_archive_level")]
    pub compression_level: u32,
    /// Memory events may wait in before being compressed into an object; past it, intake answers 503.
    #[serde(default = "default_archive_queue")]
    pub max_queued_bytes: ByteSize,
}

fn yes() -> bool {
    true
}
fn default_object_bytes() -> ByteSize {
    ByteSize::mib(64)
}
fn default_object_age() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_archive_level() -> u32 {
    1
}
fn default_archive_queue() -> ByteSize {
    ByteSize::mib(16)
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// A directory on local disk (written through object_store's LocalFileSystem).
    Local { root: PathBuf },
    /// Amazon S3 or any S3-compatible store (MinIO, Ceph, moto, ...).
    /// Credentials not given here come from the environment (AWS_*), as the AWS SDKs do.
    S3 {
        bucket: String,
        /// Key prefix inside the bucket (no leading or trailing slash).
        #[serde(default)]
        prefix: String,
        region: Option<String>,
        /// For S3-compatible stores: their base URL.
        endpoint: Option<String>,
        /// Path-style URLs (`endpoint/bucket/key`), which most S3-compatible stores need.
        #[serde(default)]
        path_style: bool,
        /// Allow a plain-http endpoint (local test stores only).
        #[serde(default)]
        allow_http: bool,
        access_key_id: Option<Secret>,
        secret_access_key: Option<Secret>,
        session_token: Option<Secret>,
    },
    /// Google Cloud Storage. Credentials: `service_account_path`, or the environment
    /// (GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT).
    Gcs {
        bucket: String,
        #[serde(default)]
        prefix: String,
        service_account_path: Option<PathBuf>,
    },
    /// Azure Blob Storage. Credentials: `access_key`, or the environment (AZURE_STORAGE_*).
    Azure {
        account: String,
        container: String,
        #[serde(default)]
        prefix: String,
        access_key: Option<Secret>,
    },
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Keys agents send (DD-API-KEY); literal or `${ENV_VAR}`.
    pub api_keys: Vec<Secret>,
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

#[derive(Debug, Deserialize, Clone)]
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

#[derive(Debug, Deserialize, Clone)]
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

#[derive(Debug, Deserialize, Clone)]
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

#[derive(Debug, Deserialize, Clone)]
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

/// A config error, located in its file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let original = text;
        let expanded = env::expand(text).map_err(|e| ConfigError {
            file: file.to_string(),
            line: Some(e.line),
            column: Some(e.column),
            field: Locations::index(original).path_at_line(e.line),
            message: e.message,
        })?;
        let text = expanded.as_str();
        let de = serde_yaml::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let loc = inner.location();
            // serde_yaml prefixes its message with the path and suffixes the position; keep the bare reason.
            let mut message = inner.to_string();
            if let Some(l) = &loc {
                let suffix = format!(" at line {} column {}", l.line(), l.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_string();
                }
            }
            // ...and drop serde_yaml's own path prefix (it may stop short of ours, e.g. at a sequence).
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.is_empty() && path.starts_with(prefix) {
                    message = rest.to_string();
                }
            }
            ConfigError {
                file: file.to_string(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                field: (path != "." && !path.is_empty()).then_some(path),
                message,
            }
        })?;
        config.raw = serde_yaml::from_str(text).unwrap_or_default();
        if let Err((field, message)) = config.validate() {
            let locations = Locations::index(original);
            let pos = locations.find(&field);
            return Err(ConfigError {
                file: file.to_string(),
                line: pos.map(|p| p.0),
                column: pos.map(|p| p.1),
                field: Some(field),
                message,
            });
        }
        Ok(config)
    }

    /// Checks what types alone cannot: references, uniqueness, ranges, files.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err((
                "listeners".into(),
                "at least one listener is required".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(&l.name) {
                return Err((
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            match (l.protocol, &l.tls) {
                (ListenerProtocol::Https, None) => {
                    return Err((
                        format!("listeners[{i}].tls"),
                        "protocol https needs a tls section with cert and key".into(),
                    ))
                }
                (ListenerProtocol::Http, Some(_)) => {
                    return Err((
                        format!("listeners[{i}].tls"),
                        "tls is set but protocol is http; use protocol: https".into(),
                    ))
                }
                (ListenerProtocol::Https, Some(tls)) => {
                    for (field, p) in [("cert", &tls.cert), ("key", &tls.key)] {
                        if !p.is_file() {
                            return Err((
                                format!("listeners[{i}].tls.{field}"),
                                format!("file {} does not exist", p.display()),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        check_log_filter(&self.log.level).map_err(|e| ("log.level".to_string(), e))?;
        let lim = &self.limits;
        if lim.max_connections == 0 {
            return Err(("limits.max_connections".into(), "must be at least 1".into()));
        }
        if lim.max_events_per_request == Some(0) {
            return Err((
                "limits.max_events_per_request".into(),
                "must be at least 1".into(),
            ));
        }
        if lim.max_inflight_request_bytes < lim.max_body_bytes {
            return Err((
                "limits.max_inflight_request_bytes".into(),
                "must be at least limits.max_body_bytes".into(),
            ));
        }
        validate_archive(&self.archive, "archive")?;
        self.validate_addresses()?;
        self.validate_durations()?;

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

        let mut tenants = HashSet::new();
        let mut keys = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err((format!("tenants[{i}].name"), format!("{:?}: tenant names use letters, digits, - and _ (they name archive folders)", t.name)));
            }
            if !tenants.insert(t.name.as_str()) {
                return Err((
                    format!("tenants[{i}].name"),
                    format!("duplicate tenant name {:?}", t.name),
                ));
            }
            if t.api_keys.is_empty() {
                return Err((
                    format!("tenants[{i}].api_keys"),
                    "at least one API key is required".into(),
                ));
            }
            for (k, key) in t.api_keys.iter().enumerate() {
                if !keys.insert(key.expose()) {
                    return Err((
                        format!("tenants[{i}].api_keys[{k}]"),
                        "this API key is already used (keys must map to exactly one tenant)".into(),
                    ));
                }
            }
            self.validate_tenant_route(i, t)?;
            if let Some(a) = &t.archive {
                validate_archive(a, &format!("tenants[{i}].archive"))?;
            }
        }
        if self.tenants.is_empty() {
            return Err(("tenants".into(), "at least one tenant is required".into()));
        }
        self.validate_regions()?;
        validate_rules(&self.exclusion_rules, "exclusion_rules")?;
        for (i, t) in self.tenants.iter().enumerate() {
            validate_rules(&t.exclusion_rules, &format!("tenants[{i}].exclusion_rules"))?;
            validate_plugins(&t.plugins, &format!("tenants[{i}].plugins"))?;
            if let Some(r) = &t.rate_limit {
                let at = format!("tenants[{i}].rate_limit");
                if r.events_per_second.is_none() && r.bytes_per_second.is_none() {
                    return Err((at, "set events_per_second, bytes_per_second or both".into()));
                }
                if r.events_per_second == Some(0)
                    || r.bytes_per_second.is_some_and(|b| b.0 == 0)
                    || r.events_burst == Some(0)
                    || r.bytes_burst.is_some_and(|b| b.0 == 0)
                {
                    return Err((at, "rates and bursts must be at least 1".into()));
                }
                if r.bytes_per_second.is_some_and(|b| b.0 > u32::MAX as u64)
                    || r.bytes_burst.is_some_and(|b| b.0 > u32::MAX as u64)
                {
                    return Err((at, "byte rates and bursts are limited to 4 GiB".into()));
                }
            }
            if let Some(q) = &t.daily_quota {
                let at = format!("tenants[{i}].daily_quota");
                if q.max_events.is_none() && q.max_bytes.is_none() && q.overrides.is_empty() {
                    return Err((at, "set max_events, max_bytes or overrides".into()));
                }
                if q.reset_hour_utc > 23 {
                    return Err((format!("{at}.reset_hour_utc"), "must be 0-23".into()));
                }
                if !(q.warning_threshold > 0.0 && q.warning_threshold <= 1.0) {
                    return Err((
                        format!("{at}.warning_threshold"),
                        "must be in (0, 1]".into(),
                    ));
                }
                if !q.overrides.is_empty() && q.partition_by.is_empty() {
                    return Err((
                        format!("{at}.overrides"),
                        "overrides name partition values, so partition_by must be set".into(),
                    ));
                }
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

    fn validate_regions(&self) -> Result<(), (String, String)> {
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

    fn validate_tenant_route(&self, i: usize, t: &TenantConfig) -> Result<(), (String, String)> {
        let at = format!("tenants[{i}]");
        let regions: Vec<_> = self.regions.iter().map(|r| r.name.as_str()).collect();
        match (&t.backend, &t.region) {
            (Some(_), Some(_)) => {
                return Err((format!("{at}.region"), "set either backend (one backend, no failover) or region (its tiers, with failover), not both".into()))
            }
            (None, None) => {
                return Err((format!("{at}.backend"), format!("set backend (one backend) or region (one of {regions:?}) to say where the tenant's events go")))
            }
            (Some(b), None) => {
                if !t.failover_regions.is_empty() {
                    return Err((format!("{at}.failover_regions"), "failover regions need the tenant pinned to a region (region:), not a single backend".into()));
                }
                if self.backend(b).is_none() {
                    let known: Vec<_> = self.backends.iter().map(|b| b.name.as_str()).collect();
                    return Err((format!("{at}.backend"), format!("no backend named {b:?}; defined backends: {known:?}")));
                }
            }
            (None, Some(r)) => {
                if self.region(r).is_none() {
                    return Err((format!("{at}.region"), format!("no region named {r:?}; defined regions: {regions:?}")));
                }
                for (k, f) in t.failover_regions.iter().enumerate() {
                    if self.region(f).is_none() {
                        return Err((format!("{at}.failover_regions[{k}]"), format!("no region named {f:?}; defined regions: {regions:?}")));
                    }
                    if f == r || t.failover_regions[..k].contains(f) {
                        return Err((format!("{at}.failover_regions[{k}]"), format!("region {f:?} is already in the tenant's route")));
                    }
                }
            }
        }
        for (_, tier) in self.route_tiers(t) {
            for b in tier {
                let kind = self.backend(&b).map(|c| c.kind);
                if kind == Some(BackendType::Datadog) && t.upstream_api_key.is_none() {
                    return Err((format!("{at}.upstream_api_key"), format!("backend {b:?} is of type datadog, which needs the tenant's upstream_api_key")));
                }
            }
        }
        Ok(())
    }
}

fn validate_rules(rules: &[ExclusionRuleConfig], at: &str) -> Result<(), (String, String)> {
    let mut names = HashSet::new();
    for (i, r) in rules.iter().enumerate() {
        if !names.insert(r.name.as_str()) {
            return Err((
                format!("{at}[{i}].name"),
                format!("duplicate rule name {:?}", r.name),
            ));
        }
        if let Err(e) = crate::rules::query::Query::parse(&r.query) {
            return Err((
                format!("{at}[{i}].query"),
                format!("invalid query {:?}: {e}", r.query),
            ));
        }
        if !(0.0..=1.0).contains(&r.sample_rate) {
            return Err((
                format!("{at}[{i}].sample_rate"),
                "must be between 0 and 1 (the share of matching events excluded)".into(),
            ));
        }
    }
    Ok(())
}

fn validate_plugins(plugins: &[PluginConfig], at: &str) -> Result<(), (String, String)> {
    let mut names = HashSet::new();
    for (i, p) in plugins.iter().enumerate() {
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return Err((
                format!("{at}[{i}].name"),
                format!(
                    "{:?}: plugin names must be non-empty and unique within the tenant",
                    p.name
                ),
            ));
        }
        if !p.path.is_file() {
            return Err((
                format!("{at}[{i}].path"),
                format!("file {} does not exist", p.path.display()),
            ));
        }
        if p.timeout.0.is_zero() {
            return Err((format!("{at}[{i}].timeout"), "must be more than 0".into()));
        }
        if p.memory_limit.0 < 65536 || p.memory_limit.0 > 4 << 30 {
            return Err((
                format!("{at}[{i}].memory_limit"),
                "must be between 64KiB (one wasm page) and 4GiB".into(),
            ));
        }
        // Cheap: validation only (no compilation); `weir check` and start-up compile and instantiate too.
        if let Err(e) = crate::plugin::validate_file(&p.path) {
            return Err((format!("{at}[{i}].path"), e));
        }
    }
    Ok(())
}

impl Config {
    /// Two sockets cannot share a port on overlapping addresses: caught here rather
    /// than as a bind error at start that blames whichever binds second.
    fn validate_addresses(&self) -> Result<(), (String, String)> {
        let overlap = |a: &SocketAddr, b: &SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, l) in self.listeners.iter().enumerate() {
            if overlap(&self.admin.address, &l.address) {
                return Err((
                    "admin.address".into(),
                    format!(
                        "{} is also listener {:?}'s address ({}); give the admin listener its own port",
                        self.admin.address, l.name, l.address
                    ),
                ));
            }
            if let Some(j) = self.listeners[..i]
                .iter()
                .position(|o| overlap(&o.address, &l.address))
            {
                return Err((
                    format!("listeners[{i}].address"),
                    format!(
                        "{} overlaps listener {:?}'s address ({})",
                        l.address, self.listeners[j].name, self.listeners[j].address
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Durations that cannot be zero: a zero timeout fails every request, a zero
    /// wait or back-off spins.
    fn validate_durations(&self) -> Result<(), (String, String)> {
        let l = &self.limits;
        let mut checks: Vec<(String, Dur)> = vec![
            ("limits.header_read_timeout".into(), l.header_read_timeout),
            ("limits.idle_timeout".into(), l.idle_timeout),
            ("limits.body_read_timeout".into(), l.body_read_timeout),
        ];
        let archives = std::iter::once(("archive".to_string(), &self.archive)).chain(
            self.tenants.iter().enumerate().filter_map(|(i, t)| {
                t.archive
                    .as_ref()
                    .map(|a| (format!("tenants[{i}].archive"), a))
            }),
        );
        for (at, a) in archives {
            checks.push((format!("{at}.max_object_age"), a.max_object_age));
        }
        for (i, b) in self.backends.iter().enumerate() {
            let at = format!("backends[{i}]");
            checks.extend([
                (format!("{at}.request_timeout"), b.request_timeout),
                (format!("{at}.batch.max_wait"), b.batch.max_wait),
                (
                    format!("{at}.retry.initial_backoff"),
                    b.retry.initial_backoff,
                ),
                (format!("{at}.retry.max_backoff"), b.retry.max_backoff),
                (format!("{at}.passive.ejection"), b.passive.ejection),
                (format!("{at}.passive.max_ejection"), b.passive.max_ejection),
            ]);
        }
        match checks.into_iter().find(|(_, d)| d.0.is_zero()) {
            Some((field, _)) => Err((field, "must be greater than zero (e.g. 500ms, 10s)".into())),
            None => Ok(()),
        }
    }
}

fn validate_archive(a: &ArchiveConfig, at: &str) -> Result<(), (String, String)> {
    if a.compression_level > 9 {
        return Err((
            format!("{at}.compression_level"),
            "gzip level must be 0-9".into(),
        ));
    }
    if a.max_object_bytes.0 == 0 {
        return Err((
            format!("{at}.max_object_bytes"),
            "must be at least 1".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED_DEFAULT, "config/weir.yaml").unwrap();
        assert_eq!(c.tenants[0].name, "demo");
        assert_eq!(c.tenants[0].api_keys[0].expose(), "weir-demo-key");
    }

    fn base() -> String {
        "listeners:\n  - name: intake\n    address: 127.0.0.1:0\n    protocol: http\narchive:\n  store: {type: local, root: /tmp/x}\nbackends:\n  - name: out\n    type: file\n    path: /tmp/out\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: out\n".to_string()
    }

    fn error_of(text: &str) -> ConfigError {
        Config::parse(text, "w.yaml").unwrap_err()
    }

    #[test]
    fn a_log_level_that_silences_everything_is_refused() {
        for bad in ["verbose", "infox", "weir=loud", "info,verbose"] {
            let e = error_of(&format!("{}log:\n  level: {bad}\n", base()));
            assert_eq!(e.field.as_deref(), Some("log.level"), "{bad}: {e}");
            assert!(e.message.contains("not a log level"), "{e}");
            assert_eq!(e.line, Some(16), "{e}");
        }
        for good in [
            "info",
            "WARN",
            "weir=debug,info",
            "weir::sink=trace",
            "off",
            "[span]=debug",
        ] {
            check_log_filter(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn admin_address_may_not_be_a_listener_address() {
        let text =
            base().replace("127.0.0.1:0", "127.0.0.1:8088") + "admin:\n  address: 0.0.0.0:8088\n";
        let e = error_of(&text);
        assert_eq!(e.field.as_deref(), Some("admin.address"), "{e}");
        assert!(e.message.contains("listener \"intake\""), "{e}");
        let text = base().replace(
            "listeners:\n",
            "listeners:\n  - {name: other, address: \"127.0.0.1:9000\", protocol: http}\n  - {name: dup, address: \"0.0.0.0:9000\", protocol: http}\n",
        );
        let e = error_of(&text);
        assert_eq!(e.field.as_deref(), Some("listeners[1].address"), "{e}");
    }

    #[test]
    fn zero_durations_that_make_no_sense_are_refused() {
        let text = base().replace(
            "    path: /tmp/out\n",
            "    path: /tmp/out\n    request_timeout: 0s\n",
        );
        let e = error_of(&text);
        assert_eq!(
            e.field.as_deref(),
            Some("backends[0].request_timeout"),
            "{e}"
        );
        assert!(e.message.contains("greater than zero"), "{e}");
        let text = base().replace(
            "    path: /tmp/out\n",
            "    path: /tmp/out\n    batch: {max_wait: 0ms}\n",
        );
        let e = error_of(&text);
        assert_eq!(
            e.field.as_deref(),
            Some("backends[0].batch.max_wait"),
            "{e}"
        );
        let e = error_of(&format!("{}limits:\n  idle_timeout: 0s\n", base()));
        assert_eq!(e.field.as_deref(), Some("limits.idle_timeout"), "{e}");
    }

    /// Two http backends, regions eu (two tiers) and us, and a tenant line to fill in.
    fn regions(tenant: &str) -> String {
        format!("listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive: {{store: {{type: local, root: /tmp/x}}}}\nbackends:\n  - {{name: a, type: http, url: \"http://a/\", weight: 3}}\n  - {{name: b, type: http, url: \"http://b/\", health_check: {{path: /health, interval: 1s}}}}\n  - {{name: c, type: http, url: \"http://c/\"}}\nregions:\n  - {{name: eu, tiers: [[a, b], [c]]}}\n  - {{name: us, tiers: [[c]]}}\ntenants:\n  - {{name: t, api_keys: [k], {tenant}}}\n")
    }

    #[test]
    fn routing_errors_name_the_field_and_explain() {
        let ok = Config::parse(&regions("region: eu, failover_regions: [us]"), "r.yaml").unwrap();
        let tiers = ok.route_tiers(&ok.tenants[0]);
        assert_eq!(
            tiers,
            vec![
                ("eu".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("eu".to_string(), vec!["c".to_string()]),
                ("us".to_string(), vec!["c".to_string()]),
            ]
        );
        assert_eq!(ok.backends[0].weight, 3);
        assert_eq!(
            ok.backends[1]
                .health_check
                .as_ref()
                .unwrap()
                .healthy_threshold,
            2
        );
        for (tenant, field, says) in [
            (
                "region: mars",
                "tenants[0].region",
                "no region named \"mars\"",
            ),
            ("region: eu, backend: a", "tenants[0].region", "not both"),
            (
                "api_keys: [k2]",
                "tenants[0].backend",
                "set backend (one backend) or region",
            ),
            (
                "backend: a, failover_regions: [us]",
                "tenants[0].failover_regions",
                "need the tenant pinned to a region",
            ),
            (
                "region: eu, failover_regions: [eu]",
                "tenants[0].failover_regions[0]",
                "already in the tenant's route",
            ),
            (
                "region: eu, failover_regions: [asia]",
                "tenants[0].failover_regions[0]",
                "no region named \"asia\"",
            ),
        ] {
            let text = regions(tenant).replace("api_keys: [k], api_keys: [k2]", "api_keys: [k2]");
            let e = Config::parse(&text, "r.yaml").unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{tenant}: {e}");
            assert!(e.to_string().contains(says), "{tenant}: {e}");
        }
        let unknown = regions("region: eu").replace("[[a, b], [c]]", "[[a, z]]");
        let e = Config::parse(&unknown, "r.yaml").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("regions[0].tiers[0][1]"));
        assert!(e.to_string().contains("no backend named \"z\""), "{e}");
        let twice = regions("region: eu").replace("[[a, b], [c]]", "[[a], [a]]");
        assert!(Config::parse(&twice, "r.yaml")
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let zero = regions("region: eu").replace("weight: 3", "weight: 0");
        assert_eq!(
            Config::parse(&zero, "r.yaml").unwrap_err().field.as_deref(),
            Some("backends[0].weight")
        );
    }

    #[test]
    fn type_error_names_line_column_and_field() {
        let text = base().replace("max_wait", "x") + "limits:\n  max_body_bytes: lots\n";
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits.max_body_bytes"));
        assert_eq!(e.line, Some(16));
        let s = e.to_string();
        assert!(s.starts_with("w.yaml:16:"), "{s}");
        assert!(s.contains("invalid byte size"), "{s}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let text = base() + "limits:\n  max_bodybytes: 5\n";
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert!(e.message.contains("unknown field `max_bodybytes`"), "{}", e);
        assert_eq!(e.line, Some(16));
    }

    #[test]
    fn dangling_backend_reference_is_located() {
        let text = base().replace("backend: out", "backend: nowhere");
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tenants[0].backend"));
        assert_eq!(e.line, Some(14));
        assert!(e.message.contains("no backend named \"nowhere\""), "{e}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let text = base().replace("[k]", "[\"${WEIR_TEST_UNSET_KEY}\"]");
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert!(
            e.to_string().contains("WEIR_TEST_UNSET_KEY is not set"),
            "{e}"
        );
        assert_eq!(e.field.as_deref(), Some("tenants[0].api_keys[0]"));
    }

    #[test]
    fn a_key_of_digits_is_a_key_quoted_or_not() {
        std::env::set_var("WEIR_TEST_DIGIT_KEY", "00123");
        std::env::set_var("WEIR_TEST_DIGIT_KEY_2", "00456");
        let text = base().replace(
            "[k]",
            "[123456, \"${WEIR_TEST_DIGIT_KEY}\", ${WEIR_TEST_DIGIT_KEY_2}]",
        );
        let c = Config::parse(&text, "w.yaml").unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<&str> = c.tenants[0].api_keys.iter().map(|k| k.expose()).collect();
        assert_eq!(keys, ["123456", "00123", "00456"]);
    }

    #[test]
    fn duplicate_keys_refused() {
        let text = base() + "  - name: u\n    api_keys: [k]\n    backend: out\n";
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tenants[1].api_keys[0]"));
        assert_eq!(e.line, Some(16));
    }

    #[test]
    fn plugin_files_are_checked_at_parse_time() {
        let dir = tempfile::tempdir().unwrap();
        let missing = base() + "    plugins:\n      - {name: p, path: /nonexistent/p.wasm, on_error: drop, timeout: 20ms}\n";
        let e = Config::parse(&missing, "w.yaml").unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("tenants[0].plugins[0].path"),
            "{e}"
        );
        let junk = dir.path().join("junk.wasm");
        std::fs::write(&junk, b"\0asm\x01\0\0\0\x99").unwrap();
        let e = Config::parse(
            &missing.replace("/nonexistent/p.wasm", junk.to_str().unwrap()),
            "w.yaml",
        )
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("tenants[0].plugins[0].path"),
            "{e}"
        );
        let ok = dir.path().join("ok.wat");
        std::fs::write(&ok, "(module)").unwrap();
        let c = Config::parse(
            &missing.replace("/nonexistent/p.wasm", ok.to_str().unwrap()),
            "w.yaml",
        )
        .unwrap();
        let p = &c.tenants[0].plugins[0];
        assert_eq!(
            (p.on_error, p.timeout.0, p.memory_limit.0),
            (PluginOnError::Drop, Duration::from_millis(20), 64 << 20)
        );
    }

    #[test]
    fn datadog_backend_needs_upstream_key() {
        let text = base().replace(
            "type: file\n    path: /tmp/out",
            "type: datadog\n    endpoint: https://example.com",
        );
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tenants[0].upstream_api_key"));
    }
}
