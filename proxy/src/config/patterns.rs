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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners:\n  - name: intake\n    address: 127.0.0.1:0\n    protocol: http\narchive:\n  store: {type: local, root: /tmp/x}\nbackends:\n  - name: out\n    type: file\n    path: /tmp/out\ntenants:\n  - name: t\n    api_keys: [k]\n    backend: out\n";

    #[test]
    fn defaults_apply_and_bad_limits_name_their_line_and_field() {
        let c = Config::parse(BASE, "w.yaml").unwrap();
        assert!(c.patterns.enabled);
        assert_eq!(c.patterns.max_patterns_per_tenant, 1000);
        let c = Config::parse(
            &format!("{BASE}patterns:\n  enabled: false\n  max_message_bytes: 4KiB\n"),
            "w.yaml",
        )
        .unwrap();
        assert!(!c.patterns.enabled);
        assert_eq!(c.patterns.max_message_bytes.0, 4096);
        for (bad, field, says) in [
            ("similarity: 1.5", "patterns.similarity", "at most 1"),
            (
                "max_patterns_per_tenant: 0",
                "patterns.max_patterns_per_tenant",
                "between 1",
            ),
            (
                "events_per_second: 0",
                "patterns.events_per_second",
                "enabled: false",
            ),
            ("max_tokens: 5000", "patterns.max_tokens", "1024"),
            (
                "max_message_bytes: 1MiB",
                "patterns.max_message_bytes",
                "64KiB",
            ),
        ] {
            let e = Config::parse(&format!("{BASE}patterns:\n  {bad}\n"), "w.yaml").unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{bad}: {e}");
            assert_eq!(e.line, Some(16), "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
        let e =
            Config::parse(&format!("{BASE}patterns:\n  max_patterns: 5\n"), "w.yaml").unwrap_err();
        assert!(e.to_string().contains("w.yaml:16"), "{e}");
        assert!(e.message.contains("unknown field `max_patterns`"), "{e}");
    }
}
