//! Listeners, input limits, the admin listener and logging: how Weir meets its
//! clients and its operators.
use super::units::{ByteSize, Dur, Secret};
use super::{invalid, Config, Invalid};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Required when `protocol: https`; optional with `fluent_forward` and `syslog`.
    pub tls: Option<TlsConfig>,
    /// The tenant every event of this listener belongs to: required for
    /// `fluent_forward` (unless `shared_keys` are set) and `syslog` (their
    /// senders send no key).
    #[serde(default)]
    pub tenant: Option<String>,
    /// `fluent_forward`: the shared-key handshake on every connection, each
    /// key naming the tenant of the connections that prove it.
    #[serde(default)]
    pub shared_keys: Vec<SharedKey>,
    /// `fluent_forward` with `shared_keys`: the name Weir gives in the
    /// handshake (senders refuse their own); default `weir`.
    #[serde(default)]
    pub self_hostname: Option<String>,
    /// A header holding the tenant's key on this listener, for senders that
    /// can add a header but not the protocol's own (an OTLP exporter's
    /// `X-Weir-Key`); looked at first, then where each protocol looks.
    #[serde(default)]
    pub key_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedKey {
    pub tenant: String,
    pub key: Secret,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    Http,
    Https,
    /// Fluentd's forward protocol (Fluent Bit's and Fluentd's `forward`
    /// output), MessagePack over TCP, or TLS with a `tls` section.
    FluentForward,
    /// Syslog, RFC 5424 or RFC 3164, over TCP, or TLS with a `tls` section.
    Syslog,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
            ListenerProtocol::FluentForward => "fluent_forward",
            ListenerProtocol::Syslog => "syslog",
        }
    }

    /// Not HTTP: a protocol framed over the TCP (or TLS) stream itself.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            ListenerProtocol::FluentForward | ListenerProtocol::Syslog
        )
    }
}

/// A listener's TLS. The files are read again when they change (certificate
/// rotation), for new connections; open ones keep their session.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of the CAs whose client certificates are accepted: with
    /// it, the listener asks for a client certificate (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` (no certificate, no connection) or
    /// `optional` (a client without one authenticates with a key).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The oldest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Cipher suites by their IANA names (`TLS13_AES_256_GCM_SHA384`, ...);
    /// empty: rustls's defaults, all of them AEAD with forward secrecy.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The cipher suites `tls.cipher_suites` may name (rustls's, with the ring provider).
pub const CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

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
    /// Connections one client IP may hold open at once per listener; past
    /// it a new connection is closed at once (counted). High by default:
    /// a whole fleet may sit behind one NAT address. 0: no limit.
    pub max_connections_per_ip: usize,
    /// Request headers: their total size (HTTP/1.1 read buffer, HTTP/2
    /// header list) and their number. Past either, 431.
    pub max_header_bytes: ByteSize,
    pub max_headers: usize,
    /// Failed authentications (missing or unknown key) one client IP may
    /// make per minute (as a burst, refilled evenly); past it, every request
    /// from that IP is answered 429 with Retry-After, after a delay, without
    /// looking at its key, until the budget refills. 0: no limit.
    pub auth_failures_per_ip_per_minute: u32,
    /// Largest request body as sent (compressed).
    pub max_body_bytes: ByteSize,
    /// Largest request body once decompressed (zip bombs stop here).
    pub max_decompressed_bytes: ByteSize,
    /// Most log entries in one request; none by default: requests are bounded by
    /// their bytes and by the memory their events take (see intake).
    pub max_events_per_request: Option<usize>,
    /// Largest single log; longer messages are truncated and marked.
    pub max_log_bytes: ByteSize,
    /// Memory all requests being read and decoded may hold at once; past it,
    /// a request waits (its body unread) up to `admission_wait`, then 503.
    pub max_inflight_request_bytes: ByteSize,
    /// How long a request may wait for room (memory, its tenant's queues or
    /// disk buffer, a thread to decode it) before it is refused with 503.
    /// Waiting, its body is not read (or not decoded), so overload slows agents
    /// down instead of spending the CPU on requests that are then refused.
    /// 0: refuse at once.
    pub admission_wait: Dur,
    /// Threads that decode requests and run the stages of tenants without
    /// plugins, at a lower CPU priority than delivery; 0: one per core.
    pub intake_threads: usize,
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
            max_connections_per_ip: 1_000,
            max_header_bytes: ByteSize::kib(64),
            max_headers: 100,
            auth_failures_per_ip_per_minute: 30,
            max_body_bytes: ByteSize::mib(5),
            max_decompressed_bytes: ByteSize::mib(5),
            max_events_per_request: None,
            max_log_bytes: ByteSize::mib(1),
            max_inflight_request_bytes: ByteSize::mib(16),
            admission_wait: Dur(Duration::from_secs(5)),
            intake_threads: 0,
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
    /// Live tails (`GET /admin/tail`) open at once; one more is refused (429).
    pub max_tails: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:8089".parse().unwrap(),
            token: None,
            max_tails: 16,
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

impl ListenerConfig {
    fn validate_shared_keys(&self, i: usize, config: &Config) -> Result<(), Invalid> {
        let at = |field: &str| format!("listeners[{i}].{field}");
        if self.shared_keys.is_empty() {
            if self.self_hostname.is_some() {
                return Err(invalid(
                    at("self_hostname"),
                    "only a listener with shared_keys has a self_hostname".into(),
                ));
            }
            return Ok(());
        }
        if self.protocol != ListenerProtocol::FluentForward {
            return Err(invalid(
                at("shared_keys"),
                "only fluent_forward listeners take shared keys".into(),
            ));
        }
        if self.tenant.is_some() {
            return Err(invalid(
                at("tenant"),
                "name the tenant here or in shared_keys, not both".into(),
            ));
        }
        for (j, k) in self.shared_keys.iter().enumerate() {
            if !config.tenants.iter().any(|t| t.name == k.tenant) {
                return Err(invalid(
                    at(&format!("shared_keys[{j}].tenant")),
                    format!("no tenant named {:?}", k.tenant),
                ));
            }
            if self.shared_keys[..j].iter().any(|o| o.key == k.key) {
                return Err(invalid(
                    at(&format!("shared_keys[{j}].key")),
                    "the same key is given twice: it would name two tenants".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Listener names, TLS, the log filter and input limits.
    pub(super) fn validate_listeners(&self) -> Result<(), Invalid> {
        if self.listeners.is_empty() {
            return Err(invalid(
                "listeners".into(),
                "at least one listener is required".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(&l.name) {
                return Err(invalid(
                    format!("listeners[{i}].name"),
                    format!("duplicate listener name {:?}", l.name),
                ));
            }
            l.validate_shared_keys(i, self)?;
            match (l.protocol, &l.tenant) {
                (ListenerProtocol::FluentForward, None) if !l.shared_keys.is_empty() => {}
                (p, None) if p.is_stream() => {
                    return Err(invalid(
                        format!("listeners[{i}].tenant"),
                        format!(
                            "protocol {} needs the tenant its events belong to",
                            p.as_str()
                        ),
                    ))
                }
                (p, Some(t)) if p.is_stream() && !self.tenants.iter().any(|c| &c.name == t) => {
                    return Err(invalid(
                        format!("listeners[{i}].tenant"),
                        format!("no tenant named {t:?}"),
                    ))
                }
                (ListenerProtocol::Http | ListenerProtocol::Https, Some(_)) => {
                    return Err(invalid(
                        format!("listeners[{i}].tenant"),
                        "only fluent_forward and syslog listeners name a tenant; HTTP senders send a key"
                            .into(),
                    ))
                }
                _ => {}
            }
            if let Some(h) = &l.key_header {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(invalid(
                        format!("listeners[{i}].key_header"),
                        format!("{h:?} is not a valid HTTP header name"),
                    ));
                }
            }
            match (l.protocol, &l.tls) {
                (ListenerProtocol::Https, None) => {
                    return Err(invalid(
                        format!("listeners[{i}].tls"),
                        "protocol https needs a tls section with cert and key".into(),
                    ))
                }
                (ListenerProtocol::Http, Some(_)) => {
                    return Err(invalid(
                        format!("listeners[{i}].tls"),
                        "tls is set but protocol is http; use protocol: https".into(),
                    ))
                }
                (p, Some(tls)) if p == ListenerProtocol::Https || p.is_stream() => {
                    validate_tls(i, tls)?
                }
                _ => {}
            }
        }
        check_log_filter(&self.log.level).map_err(|e| invalid("log.level".to_string(), e))?;
        let lim = &self.limits;
        if lim.max_connections == 0 {
            return Err(invalid(
                "limits.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if lim.max_header_bytes.0 < 8192 || lim.max_headers == 0 {
            return Err(invalid(
                "limits.max_header_bytes".into(),
                "must be at least 8KiB, with max_headers at least 1 (HTTP/1.1 reads headers in an 8 KiB buffer at least)".into(),
            ));
        }
        if lim.max_events_per_request == Some(0) {
            return Err(invalid(
                "limits.max_events_per_request".into(),
                "must be at least 1".into(),
            ));
        }
        if lim.max_inflight_request_bytes < lim.max_body_bytes {
            return Err(invalid(
                "limits.max_inflight_request_bytes".into(),
                "must be at least limits.max_body_bytes".into(),
            ));
        }
        Ok(())
    }

    /// Two sockets cannot share a port on overlapping addresses: caught here rather
    /// than as a bind error at start that blames whichever binds second.
    pub(super) fn validate_addresses(&self) -> Result<(), Invalid> {
        let overlap = |a: &SocketAddr, b: &SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, l) in self.listeners.iter().enumerate() {
            if overlap(&self.admin.address, &l.address) {
                return Err(invalid(
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
                return Err(invalid(
                    format!("listeners[{i}].address"),
                    format!(
                        "{} overlaps listener {:?}'s address ({})",
                        l.address, self.listeners[j].name, self.listeners[j].address
                    ),
                ));
            }
        }
        if !self.admin.address.ip().is_loopback() && self.admin.token.is_none() {
            return Err(invalid(
                "admin.address".into(),
                format!(
                    "{} is reachable from other hosts, and there is no admin.token: set one (the /admin API then needs it; /metrics, /healthz and /readyz stay open for scrapers and probes), or bind 127.0.0.1",
                    self.admin.address
                ),
            ));
        }
        Ok(())
    }
}

/// A listener's `tls` section: its files exist, its suites are known, and
/// the TLS 1.3 minimum leaves at least one suite.
fn validate_tls(i: usize, tls: &TlsConfig) -> Result<(), Invalid> {
    let files = [
        ("cert", Some(&tls.cert)),
        ("key", Some(&tls.key)),
        ("client_ca", tls.client_ca.as_ref()),
    ];
    for (field, p) in files {
        if let Some(p) = p.filter(|p| !p.is_file()) {
            return Err(invalid(
                format!("listeners[{i}].tls.{field}"),
                format!("file {} does not exist", p.display()),
            ));
        }
    }
    if let Some(bad) = tls
        .cipher_suites
        .iter()
        .find(|s| !CIPHER_SUITES.contains(&s.as_str()))
    {
        return Err(invalid(
            format!("listeners[{i}].tls.cipher_suites"),
            format!(
                "unknown cipher suite {bad:?}; known: {}",
                CIPHER_SUITES.join(", ")
            ),
        ));
    }
    let tls13 = |s: &String| s.starts_with("TLS13_");
    if tls.min_version == TlsVersion::Tls13
        && !tls.cipher_suites.is_empty()
        && !tls.cipher_suites.iter().any(tls13)
    {
        return Err(invalid(
            format!("listeners[{i}].tls.cipher_suites"),
            "min_version 1.3 needs at least one TLS13_ suite".into(),
        ));
    }
    Ok(())
}
