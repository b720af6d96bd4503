//! The buffer between intake and the outputs: a write-ahead log on disk (the
//! default) or memory only, when a request is answered, and what happens
//! when the log is full.
use super::units::{ByteSize, Dur};
use super::{invalid, Invalid};
use serde::{de, Deserialize, Deserializer};
use std::time::Duration;

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// `disk`: every accepted request is in a per-tenant log under
    /// `data_dir/wal/<tenant>` until its archive and its route have it;
    /// `memory`: queued in memory only (lost on a crash).
    #[serde(rename = "type", default)]
    pub kind: BufferKind,
    /// When a request is answered 202 (tenants may override it).
    #[serde(default)]
    pub ack: AckMode,
    /// When the log is synced to disk: `every_request` (group commit: requests
    /// arriving during one sync share the next), or a duration (`50ms`).
    #[serde(default)]
    pub sync: SyncSetting,
    /// All tenants' logs together; past it, `when_full` applies.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// One tenant's log.
    #[serde(default = "default_max_tenant_bytes")]
    pub max_bytes_per_tenant: ByteSize,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Events per second each tenant's route sends at most, retries included,
    /// so a backlog after an outage does not flood a recovering backend (none:
    /// as fast as the backends take them). New events share it: set it above
    /// the tenant's normal peak.
    pub drain_rate: Option<u64>,
    /// Segment files are this long; whole segments are deleted once read.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: ByteSize,
    /// `ack: delivered` answers 503 past this wait (the events stay in the
    /// log and are delivered; the agent's retry duplicates them).
    #[serde(default = "default_delivered_timeout")]
    pub delivered_timeout: Dur,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferKind::default(),
            ack: AckMode::default(),
            sync: SyncSetting::default(),
            max_bytes: default_max_bytes(),
            max_bytes_per_tenant: default_max_tenant_bytes(),
            when_full: WhenFull::default(),
            drain_rate: None,
            segment_bytes: default_segment_bytes(),
            delivered_timeout: default_delivered_timeout(),
        }
    }
}

// An hour of a busy tenant (about 500 KB/s) is about 2 GB; four of them fit a small disk.
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(8 * 1024)
}
fn default_max_tenant_bytes() -> ByteSize {
    ByteSize::mib(2 * 1024)
}
fn default_delivered_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_segment_bytes() -> ByteSize {
    ByteSize::mib(32)
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    #[default]
    Disk,
    Memory,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Once the request's events are in the log, per the sync policy.
    #[default]
    Durable,
    /// At once (events not yet synced are lost on a crash).
    Received,
    /// Once the tenant's route delivered them (a backend accepted them).
    Delivered,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Durable => "durable",
            AckMode::Received => "received",
            AckMode::Delivered => "delivered",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncSetting {
    #[default]
    EveryRequest,
    Every(Duration),
}

impl<'de> Deserialize<'de> for SyncSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "every_request" {
            return Ok(SyncSetting::EveryRequest);
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) if !d.is_zero() => Ok(SyncSetting::Every(d)),
            _ => Err(de::Error::custom(format!(
                "invalid sync {s:?}; expected \"every_request\" or a duration such as \"50ms\""
            ))),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// 503 with Retry-After; nothing of the request is taken.
    #[default]
    Block,
    /// The request is answered 202 and its events are dropped, counted.
    DropNewest,
}

pub(super) fn validate_buffer(b: &BufferConfig) -> Result<(), Invalid> {
    let at = |f: &str| format!("buffer.{f}");
    if b.segment_bytes.0 < 1 << 20 {
        return Err(invalid(at("segment_bytes"), "must be at least 1MiB".into()));
    }
    if b.max_bytes_per_tenant.0 < 2 * b.segment_bytes.0 {
        return Err(invalid(
            at("max_bytes_per_tenant"),
            format!(
                "must hold at least two segments ({} bytes each)",
                b.segment_bytes.0
            ),
        ));
    }
    if b.max_bytes < b.max_bytes_per_tenant {
        return Err(invalid(
            at("max_bytes"),
            "must be at least max_bytes_per_tenant".into(),
        ));
    }
    if b.delivered_timeout.0.is_zero() {
        return Err(invalid(at("delivered_timeout"), "must be above 0".into()));
    }
    if b.drain_rate == Some(0) {
        return Err(invalid(
            at("drain_rate"),
            "must be above 0 (or left out)".into(),
        ));
    }
    if b.kind == BufferKind::Memory && b.ack != AckMode::Durable {
        return Err(invalid(
            at("ack"),
            "ack modes need the disk buffer (type: disk)".into(),
        ));
    }
    Ok(())
}
