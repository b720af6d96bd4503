//! `fleet:`: many Weir instances behind one load balancer sharing each
//! tenant's daily quota and rate limit, and run-time rule and quota changes,
//! through Redis (or Valkey). Absent, every instance is on its own.
use super::units::{Dur, Secret};
use super::{invalid, Invalid};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    pub redis: RedisConfig,
    /// This instance's name in the shared state; it must live as long as the
    /// data directory (its saved usage is counted under it). Default: made once
    /// and kept in `data_dir/instance-id`. In Kubernetes, the pod's name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Every key and channel starts with it, so fleets can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How often each instance sends its usage and reads the others'.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// Events a partition may index on one instance between two syncs. The
    /// fleet indexes at most quota + (instances - 1) × this.
    #[serde(default = "default_max_unsynced")]
    pub max_unsynced_events: u64,
    /// What a quota or rate limit does while Redis cannot be reached.
    #[serde(default)]
    pub on_unavailable: Unavailable,
    /// The share `local` gives before any sync told how many instances run.
    #[serde(default = "default_expected")]
    pub expected_instances: u32,
    /// How long one Redis call may take before it counts as failed.
    #[serde(default = "default_op_timeout")]
    pub op_timeout: Dur,
    /// How often the shared rules and quotas are read even if no change was
    /// announced (announcements over pub/sub can be lost).
    #[serde(default = "default_config_poll")]
    pub config_poll: Dur,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One node: `redis://[[user]:password@]host:port[/db]`.
    #[serde(default)]
    pub url: Option<Secret>,
    /// A Redis Cluster: its seed nodes' URLs.
    #[serde(default)]
    pub cluster_nodes: Vec<Secret>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// Each instance goes on with its share of what remained at the last sync.
    #[default]
    Local,
    /// Quota tenants' events are over quota; rate-limited tenants get 429.
    FailClosed,
}

impl Unavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Local => "local",
            Unavailable::FailClosed => "fail_closed",
        }
    }
}

fn default_prefix() -> String {
    "weir".into()
}
fn default_sync_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_max_unsynced() -> u64 {
    10_000
}
fn default_expected() -> u32 {
    3
}
fn default_op_timeout() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_config_poll() -> Dur {
    Dur(Duration::from_secs(5))
}

pub(super) fn validate_fleet(f: &FleetConfig) -> Result<(), Invalid> {
    let field = |f: &str| format!("fleet.{f}");
    match (&f.redis.url, f.redis.cluster_nodes.is_empty()) {
        (None, true) => {
            return Err(invalid(
                field("redis"),
                "needs `url` (one node) or `cluster_nodes` (a Redis Cluster)".into(),
            ))
        }
        (Some(_), false) => {
            return Err(invalid(
                field("redis"),
                "`url` and `cluster_nodes` exclude each other: give one".into(),
            ))
        }
        _ => {}
    }
    let urls = f.redis.url.iter().chain(&f.redis.cluster_nodes);
    for (i, u) in urls.enumerate() {
        let name = if f.redis.url.is_some() {
            field("redis.url")
        } else {
            format!("fleet.redis.cluster_nodes[{i}]")
        };
        let s = u.expose();
        if s.starts_with("rediss://") {
            return Err(invalid(
                name,
                "TLS to Redis (rediss://) is not built in yet: reach Redis over a private network or through a TLS sidecar, with redis://".into(),
            ));
        }
        if !s.starts_with("redis://") {
            // The value may hold a password: it is not repeated.
            return Err(invalid(name, "must start with redis://".into()));
        }
        if redis::Client::open(s).is_err() {
            return Err(invalid(name, "is not a valid Redis URL".into()));
        }
    }
    if let Some(id) = &f.instance_id {
        if id.is_empty()
            || id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                field("instance_id"),
                "must be 1 to 128 letters, digits, '-', '_' or '.'".into(),
            ));
        }
    }
    if f.key_prefix.is_empty() || f.key_prefix.len() > 64 || f.key_prefix.contains(['{', '}', ' '])
    {
        return Err(invalid(
            field("key_prefix"),
            "must be 1 to 64 characters, without braces or spaces".into(),
        ));
    }
    let ms = |d: Dur| d.0.as_millis() as u64;
    if !(10..=60_000).contains(&ms(f.sync_interval)) {
        return Err(invalid(
            field("sync_interval"),
            "must be between 10ms and 60s".into(),
        ));
    }
    if !(10..=30_000).contains(&ms(f.op_timeout)) {
        return Err(invalid(
            field("op_timeout"),
            "must be between 10ms and 30s".into(),
        ));
    }
    if !(100..=600_000).contains(&ms(f.config_poll)) {
        return Err(invalid(
            field("config_poll"),
            "must be between 100ms and 10m".into(),
        ));
    }
    if f.max_unsynced_events < 1 {
        return Err(invalid(
            field("max_unsynced_events"),
            "must be at least 1".into(),
        ));
    }
    if !(1..=10_000).contains(&f.expected_instances) {
        return Err(invalid(
            field("expected_instances"),
            "must be between 1 and 10000".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners:\n  - name: intake\n    address: 127.0.0.1:0\n    protocol: http\narchive:\n  store: {type: local, root: /tmp/x}\nbackends:\n  - name: out\n    type: file\n    path: /tmp/out\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: out\n";

    #[test]
    fn defaults_apply_and_errors_name_the_field_without_the_secret() {
        let c = Config::parse(
            &format!("{BASE}fleet:\n  redis:\n    url: redis://127.0.0.1:6390/\n"),
            "w.yaml",
        )
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.max_unsynced_events, 10_000);
        assert_eq!(f.on_unavailable, super::Unavailable::Local);
        let e = Config::parse(
            &format!("{BASE}fleet:\n  redis:\n    url: http://:hunter2@h:1/\n"),
            "w.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fleet.redis.url"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = Config::parse(&format!("{BASE}fleet:\n  redis: {{}}\n"), "w.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("w.yaml:") && e.contains("fleet.redis"), "{e}");
        let e = Config::parse(
            &format!("{BASE}fleet:\n  redis:\n    url: redis://h:1/\n  on_unavailable: open\n"),
            "w.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("on_unavailable"), "{e}");
    }
}
