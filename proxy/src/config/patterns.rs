//! `patterns:`: log patterns mined per tenant (see the `patterns` module), and
//! the limits that bound their memory and their cost on the intake threads.
use super::units::ByteSize;
use super::{invalid, Invalid};
use serde::Deserialize;

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PatternsConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Patterns kept per tenant; past it the least recently seen is evicted.
    #[serde(default = "default_max_patterns")]
    pub max_patterns_per_tenant: usize,
    /// Events mined per second per tenant; the rest are counted and scaled.
    #[serde(default = "default_events_per_second")]
    pub events_per_second: u64,
    /// Share of a pattern's tokens a message must equal to join it (0 to 1).
    #[serde(default = "default_similarity")]
    pub similarity: f64,
    /// Tokens a template keeps; a longer message ends in one `<*>`.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Bytes of a message looked at (cut at whitespace); also an example's size.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
}

impl Default for PatternsConfig {
    fn default() -> Self {
        PatternsConfig {
            enabled: true,
            max_patterns_per_tenant: default_max_patterns(),
            events_per_second: default_events_per_second(),
            similarity: default_similarity(),
            max_tokens: default_max_tokens(),
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_max_patterns() -> usize {
    1000
}
// About 2 µs each: a few milliseconds of one core per second per busy tenant.
fn default_events_per_second() -> u64 {
    2000
}
fn default_similarity() -> f64 {
    0.4
}
fn default_max_tokens() -> usize {
    64
}
fn default_max_message_bytes() -> ByteSize {
    ByteSize::kib(1)
}

/// Ranges that keep a tenant's patterns within a few MB and the miner meaningful.
pub(super) fn validate_patterns(p: &PatternsConfig) -> Result<(), Invalid> {
    let field = |f: &str| format!("patterns.{f}");
    if !(1..=100_000).contains(&p.max_patterns_per_tenant) {
        return Err(invalid(
            field("max_patterns_per_tenant"),
            "must be between 1 and 100000".into(),
        ));
    }
    if !(1..=10_000_000).contains(&p.events_per_second) {
        return Err(invalid(
            field("events_per_second"),
            "must be between 1 and 10000000 (to stop mining, set `enabled: false`)".into(),
        ));
    }
    if !(p.similarity > 0.0 && p.similarity <= 1.0) {
        return Err(invalid(
            field("similarity"),
            "must be greater than 0 and at most 1 (e.g. 0.4)".into(),
        ));
    }
    if !(1..=1024).contains(&p.max_tokens) {
        return Err(invalid(
            field("max_tokens"),
            "must be between 1 and 1024".into(),
        ));
    }
    if !(16..=65_536).contains(&p.max_message_bytes.0) {
        return Err(invalid(
            field("max_message_bytes"),
            "must be between 16B and 64KiB".into(),
        ));
    }
    Ok(())
}
