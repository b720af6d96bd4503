//! The YAML configuration as written: one serde struct per section, defaults
//! that suit an edge proxy, and the checks that need nothing but the config
//! itself (references between sections, uniqueness, ranges, files that must
//! exist). Errors name the file, line, column and field to fix.
//!
//! This module depends on nothing above it: what needs the rest of Weir to
//! check (exclusion-rule queries, plugin modules) is checked where the config
//! is resolved into the runtime plan (the `plan` module).
mod archive;
mod backend;
mod buffer;
mod env;
mod fleet;
mod listen;
pub(crate) mod locate;
mod patterns;
mod tenant;
pub mod units;

pub use archive::*;
pub use backend::*;
pub use buffer::*;
pub use fleet::{FleetConfig, RedisConfig, Unavailable};
pub use listen::*;
use locate::Locations;
pub use patterns::PatternsConfig;
pub use tenant::*;
pub use units::{ByteSize, Dur, Secret};

use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The local default that `weir run` uses when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/weir.yaml");
/// How errors and `weir check` name the embedded default config.
pub const EMBEDDED_NAME: &str = "<embedded config/weir.yaml>";

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
    /// The archive every tenant writes to unless it names its own (or its region does).
    pub archive: ArchiveConfig,
    /// Object stores archives and regions name (`stores: [name, ...]`).
    #[serde(default)]
    pub archive_stores: Vec<NamedStore>,
    /// The write-ahead log between intake and the outputs (or memory only).
    #[serde(default)]
    pub buffer: BufferConfig,
    pub backends: Vec<BackendConfig>,
    /// Regions: ordered tiers of backends a tenant pinned to the region fails over between.
    #[serde(default)]
    pub regions: Vec<RegionConfig>,
    pub tenants: Vec<TenantConfig>,
    /// Exclusion rules every tenant's events are checked against first.
    #[serde(default)]
    pub exclusion_rules: Vec<ExclusionRuleConfig>,
    /// Log patterns mined per tenant (`GET /admin/patterns`, `weir patterns`).
    #[serde(default)]
    pub patterns: PatternsConfig,
    /// Instances sharing quotas, rate limits and run-time changes through Redis.
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
    /// How long a SIGTERM may take to flush batches and archive objects.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// The YAML as written (environment expanded), for reload's field-by-field comparison.
    #[serde(skip)]
    pub raw: serde_yaml::Value,
    /// The file and its text, to locate errors found after parsing (the plan's).
    #[serde(skip)]
    pub origin: Origin,
}

/// Where a config came from: the name errors give it and its text as written
/// (before `${ENV}` expansion, so no secret from the environment is in it).
#[derive(Default, Clone)]
pub struct Origin {
    pub file: String,
    text: String,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({:?})", self.file)
    }
}

impl Origin {
    pub fn new(file: &str, text: &str) -> Origin {
        Origin {
            file: file.to_string(),
            text: text.to_string(),
        }
    }

    /// `e` as an error of this file, at the line and column of its field (or
    /// of the nearest enclosing field the YAML has).
    pub fn locate(&self, e: Invalid) -> ConfigError {
        let pos = Locations::index(&self.text).find(&e.field);
        ConfigError {
            file: self.file.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            field: Some(e.field),
            message: e.reason,
        }
    }
}

/// A value the config refuses: the field path (`tenants[0].rate_limit`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

/// An [`Invalid`] at `field`.
pub fn invalid(field: String, reason: String) -> Invalid {
    Invalid { field, reason }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./weir-data")
}
fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// A config error, located in its file.
#[derive(Debug, thiserror::Error)]
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
            let mut pos = loc.as_ref().map(|l| (l.line(), l.column()));
            // A struct checked once read (a backend, against its type) names the field in the message.
            let (path, message) = match message
                .strip_prefix("field `")
                .and_then(|m| m.split_once("`: "))
            {
                Some((field, why)) => {
                    let path = format!("{path}.{field}");
                    pos = Locations::index(original).find(&path).or(pos);
                    (path, why.to_string())
                }
                None => (path, message),
            };
            ConfigError {
                file: file.to_string(),
                line: pos.map(|p| p.0),
                column: pos.map(|p| p.1),
                field: (path != "." && !path.is_empty()).then_some(path),
                message,
            }
        })?;
        config.raw = serde_yaml::from_str(text).unwrap_or_default();
        config.origin = Origin::new(file, original);
        config.validate().map_err(|e| config.origin.locate(e))?;
        Ok(config)
    }

    /// Checks what types alone cannot: references, uniqueness, ranges, files.
    fn validate(&self) -> Result<(), Invalid> {
        self.validate_listeners()?;
        validate_archive_stores(self)?;
        validate_archive(&self.archive, "archive", &self.archive_stores)?;
        buffer::validate_buffer(&self.buffer)?;
        patterns::validate_patterns(&self.patterns)?;
        if let Some(f) = &self.fleet {
            fleet::validate_fleet(f)?;
        }
        self.validate_addresses()?;
        self.validate_durations()?;
        self.validate_backends()?;
        self.validate_tenants()?;
        self.validate_regions()?;
        self.validate_tenant_stages()
    }
}

impl Config {
    /// Durations that cannot be zero: a zero timeout fails every request, a zero
    /// wait or back-off spins.
    fn validate_durations(&self) -> Result<(), Invalid> {
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
            checks.push((format!("{at}.failover.retry_after"), a.failover.retry_after));
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
            Some((field, _)) => Err(invalid(
                field,
                "must be greater than zero (e.g. 500ms, 10s)".into(),
            )),
            None => Ok(()),
        }
    }
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
    fn tls_settings_are_checked_and_client_names_belong_to_one_tenant() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["c.pem", "k.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let d = dir.path().display();
        let https = |tls_extra: &str| {
            base().replace(
                "    protocol: http\n",
                &format!(
                    "    protocol: https\n    tls: {{cert: {d}/c.pem, key: {d}/k.pem{tls_extra}}}\n"
                ),
            )
        };
        let e = error_of(&https(", cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]"));
        assert_eq!(
            e.field.as_deref(),
            Some("listeners[0].tls.cipher_suites"),
            "{e}"
        );
        assert!(
            e.message.contains("TLS13_AES_256_GCM_SHA384"),
            "lists the known: {e}"
        );
        let e = error_of(&https(
            ", min_version: \"1.3\", cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]",
        ));
        assert_eq!(
            e.field.as_deref(),
            Some("listeners[0].tls.cipher_suites"),
            "{e}"
        );
        let e = error_of(&https(&format!(", client_ca: {d}/missing.pem")));
        assert_eq!(
            e.field.as_deref(),
            Some("listeners[0].tls.client_ca"),
            "{e}"
        );
        Config::parse(
            &https(&format!(
                ", client_ca: {d}/c.pem, client_auth: optional, min_version: \"1.3\""
            )),
            "t.yaml",
        )
        .unwrap();

        let two = base().replace(
            "    api_keys: [k]\n",
            "    api_keys: [k]\n    client_names: [a.example]\n",
        ) + "  - {name: u, client_names: [a.example], backend: out}\n";
        let e = error_of(&two);
        assert_eq!(
            e.field.as_deref(),
            Some("tenants[1].client_names[0]"),
            "{e}"
        );
        let certs_only = base().replace("api_keys: [k]", "client_names: [a.example]");
        Config::parse(&certs_only, "t.yaml").unwrap();
        let neither = base().replace("api_keys: [k]", "api_keys: []");
        assert_eq!(
            error_of(&neither).field.as_deref(),
            Some("tenants[0].api_keys")
        );
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
    fn datadog_backend_needs_upstream_key() {
        let text = base().replace(
            "type: file\n    path: /tmp/out",
            "type: datadog\n    endpoint: https://example.com",
        );
        let e = Config::parse(&text, "w.yaml").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tenants[0].upstream_api_key"));
    }
}
