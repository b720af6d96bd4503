//! The one event type every stage works on, and its Datadog-shaped JSON form
//! (what the Datadog intake receives, what backends and the archive get).
mod datadog;
pub mod stage;

pub use datadog::{
    decode_entry, decode_sample, DatadogPayload, DecodeStop, PayloadLimits, Reserved,
};
pub(crate) use datadog::{parse_timestamp, split_tags, strip_position};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The status of an event that has none, as Datadog reads it (its status
/// remapper's default): what rules, rate limits and quotas see.
pub const DEFAULT_STATUS: &str = "info";

/// A log event. Intake decoders map each protocol onto it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// Milliseconds since the Unix epoch (the sender's, or the arrival time when it sent none).
    pub timestamp: i64,
    pub message: String,
    pub host: Option<String>,
    pub service: Option<String>,
    pub source: Option<String>,
    /// As sent (none when the sender gave none); read it with
    /// [`Event::status_or_default`], as Datadog does.
    pub status: Option<String>,
    /// `key:value` (or bare `value`) tags.
    pub tags: Vec<String>,
    /// Every other attribute, nested objects included.
    pub attributes: Map<String, Value>,
}

impl Event {
    pub fn from_message(message: String, received_at_ms: i64) -> Event {
        Event {
            timestamp: received_at_ms,
            message,
            ..Default::default()
        }
    }

    /// The event's status, [`DEFAULT_STATUS`] (`info`) when it has none.
    pub fn status_or_default(&self) -> &str {
        self.status.as_deref().unwrap_or(DEFAULT_STATUS)
    }

    /// Records something Weir did to the event under the `weir` attribute object.
    pub fn mark(&mut self, key: &str, value: Value) {
        let entry = self
            .attributes
            .entry("weir")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            // The sender used `weir` for its own data: keep it, nested one level down.
            let theirs = std::mem::take(entry);
            let mut m = Map::new();
            m.insert("original".into(), theirs);
            *entry = Value::Object(m);
        }
        entry.as_object_mut().unwrap().insert(key.into(), value);
    }

    /// Keeps one log within `max` bytes: the message is cut at a character
    /// boundary and the event marked, rather than the whole batch refused.
    /// Returns whether it cut.
    pub fn limit_message(&mut self, max: usize) -> bool {
        if self.message.len() <= max {
            return false;
        }
        let original = self.message.len();
        let mut cut = max;
        while !self.message.is_char_boundary(cut) {
            cut -= 1;
        }
        self.message.truncate(cut);
        self.mark("truncated", Value::Bool(true));
        self.mark("original_message_bytes", Value::from(original));
        true
    }

    pub fn is_truncated(&self) -> bool {
        self.attributes
            .get("weir")
            .and_then(|w| w.get("truncated"))
            .is_some_and(|t| t == &Value::Bool(true))
    }

    /// Moves attributes named like a reserved field (`message`, `service`,
    /// `ddtags`, ...; a plugin such as json-parse may set them) onto the field,
    /// as Datadog's intake would read them: the parsed value replaces the field.
    /// `ddtags` of another type than a string or list is kept under
    /// `weir.invalid_ddtags`. Afterwards the event's JSON has each key once and
    /// decodes back to the same event.
    pub fn adopt_reserved_attributes(&mut self) {
        if !self.attributes.keys().any(|k| Reserved::of(k).is_some()) {
            return;
        }
        for field in Reserved::ALL {
            if let Some(v) = self.attributes.remove(field.key()) {
                if field == Reserved::Tags {
                    // A plugin's tags replace the event's.
                    self.tags.clear();
                }
                if let Err(bad) = datadog::set_reserved(self, field, v) {
                    self.mark("invalid_ddtags", bad);
                }
            }
        }
    }

    /// The trace and span ids the event carries (`otel.trace_id`,
    /// `otel.span_id`, hex, as the OTLP intake keeps them), as bytes; empty
    /// when it has none. The OTLP backend sends them in their own fields.
    pub fn trace_ids(&self) -> (Vec<u8>, Vec<u8>) {
        let id = |key: &str| {
            self.attributes
                .get("otel")
                .and_then(|o| o.get(key))
                .and_then(Value::as_str)
                .and_then(unhex)
                .unwrap_or_default()
        };
        (id("trace_id"), id("span_id"))
    }

    /// Appends the Datadog-shaped JSON of the event to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("serializing to memory cannot fail");
    }
}

/// The intake protocol an event arrived through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    Datadog,
    Generic,
    /// OTLP logs, over HTTP (protobuf or JSON) and gRPC.
    Otlp,
    /// Splunk's HTTP Event Collector.
    Hec,
    /// Elasticsearch's `_bulk` API.
    Elasticsearch,
    /// Fluentd's forward protocol.
    Fluent,
    /// Syslog (RFC 5424 and RFC 3164) over TCP or TLS.
    Syslog,
}

impl Intake {
    /// Every intake protocol, for metrics that exist from start.
    pub const ALL: [Intake; 7] = [
        Intake::Datadog,
        Intake::Generic,
        Intake::Otlp,
        Intake::Hec,
        Intake::Elasticsearch,
        Intake::Fluent,
        Intake::Syslog,
    ];
}

impl Intake {
    pub fn as_str(self) -> &'static str {
        match self {
            Intake::Datadog => "datadog",
            Intake::Generic => "generic",
            Intake::Otlp => "otlp",
            Intake::Hec => "splunk_hec",
            Intake::Elasticsearch => "elasticsearch",
            Intake::Fluent => "fluent_forward",
            Intake::Syslog => "syslog",
        }
    }
}

/// What happens to an event after the stage chain: later stages (exclusion
/// rules, quotas, plugins) change it; everything not dropped is archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Archived and forwarded to the index.
    Index,
    /// Archived only.
    ArchiveOnly,
    /// Neither (an explicit drop).
    Drop,
}

/// Which stage set an event's disposition, and how: what live tail shows
/// beside it. Recorded only while someone looks (`Batch::why`), since it costs
/// a name per event a stage changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// No stage changed it.
    Untouched,
    /// An exclusion rule matched: it excluded the event, or (`kept`) its
    /// sample rate let it through to the index.
    Rule { name: String, kept: bool },
    /// Over the daily quota (archive only or dropped, per its action).
    OverQuota,
    /// A plugin's verdict, or (`failed`) its `on_error` after a failed call.
    Plugin { name: String, failed: bool },
}

/// Facts about a request that no stage may change.
#[derive(Debug, Clone)]
pub struct BatchMeta {
    /// The tenant's name (metric labels, logs). Its stages and outputs are the
    /// chain the batch runs through, which the tenant carries.
    pub tenant: Arc<str>,
    pub intake: Intake,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// Bytes of the request body once decompressed.
    pub body_bytes: usize,
}

/// The events of one request as they travel the stage chain.
#[derive(Debug)]
pub struct Batch {
    pub meta: BatchMeta,
    pub events: Vec<Event>,
    /// One per event, same order.
    pub dispositions: Vec<Disposition>,
    /// What the stages charged for this batch, given back if it is refused after all.
    pub charges: Charges,
    /// One per event, same order, when the chain was asked to explain (live
    /// tail): which stage decided its disposition. None: nobody asked.
    pub why: Option<Vec<Why>>,
}

/// What stages charged for a batch: a batch refused after the stages ran (its
/// archive or backend queue full) gets its daily quota usage back, and rule and
/// quota counters count only batches that were taken.
#[derive(Debug, Default)]
pub struct Charges {
    /// Daily quota usage added, per partition: (partition, events, bytes)...
    pub quota: Vec<(String, u64, u64)>,
    /// ...to the quota day that starts at this time (ms since the epoch).
    pub quota_window_ms: i64,
    /// Events over the daily quota, and the action taken on them.
    pub over_quota: Option<(u64, &'static str)>,
    /// Per exclusion rule that matched: (rule name, matched, excluded).
    pub rules: Vec<(String, u64, u64)>,
}

impl Batch {
    pub fn new(meta: BatchMeta, events: Vec<Event>) -> Batch {
        let dispositions = vec![Disposition::Index; events.len()];
        Batch {
            meta,
            events,
            dispositions,
            charges: Charges::default(),
            why: None,
        }
    }

    /// Records why event `i`'s disposition is what it is, if asked to (`why`).
    pub fn explain(why: &mut Option<Vec<Why>>, i: usize, reason: impl FnOnce() -> Why) {
        if let Some(w) = why.as_mut().and_then(|w| w.get_mut(i)) {
            *w = reason();
        }
    }
}

#[cfg(test)]
impl Batch {
    /// A batch for unit tests: of tenant `name`, arrived at 0 through the
    /// Datadog intake with a body of `body_bytes`.
    pub fn for_test(name: &str, body_bytes: usize, events: Vec<Event>) -> Batch {
        Batch::new(
            BatchMeta {
                tenant: name.into(),
                intake: Intake::Datadog,
                received_at_ms: 0,
                body_bytes,
            },
            events,
        )
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("message", &self.message)?;
        if let Some(v) = &self.status {
            m.serialize_entry("status", v)?;
        }
        m.serialize_entry("timestamp", &self.timestamp)?;
        if let Some(v) = &self.host {
            m.serialize_entry("hostname", v)?;
        }
        if let Some(v) = &self.service {
            m.serialize_entry("service", v)?;
        }
        if let Some(v) = &self.source {
            m.serialize_entry("ddsource", v)?;
        }
        if !self.tags.is_empty() {
            m.serialize_entry("ddtags", &self.tags.join(","))?;
        }
        for (k, v) in &self.attributes {
            // Never a key twice: a reserved name is the field's (see adopt_reserved_attributes).
            if Reserved::of(k).is_none() {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Bytes as lowercase hex (trace and span ids, binary values), by table lookup.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn reserved_attributes_become_fields_and_the_json_decodes_back() {
        let mut ev = Event::from_message("{\"ddtags\":5}".into(), 7);
        ev.tags.push("env:prod".into());
        for (k, v) in [
            ("message", Value::from("parsed message")),
            ("service", Value::from("checkout")),
            ("ddtags", Value::from(5)),
            ("timestamp", Value::from("2024-01-02T03:04:05Z")),
            ("status", Value::from(404)),
            ("user", Value::from("ann")),
        ] {
            ev.attributes.insert(k.into(), v);
        }
        ev.adopt_reserved_attributes();
        assert_eq!(ev.message, "parsed message");
        assert_eq!(ev.service.as_deref(), Some("checkout"));
        assert_eq!(ev.status.as_deref(), Some("404"));
        assert_eq!(ev.timestamp, 1704164645000);
        assert!(
            ev.tags.is_empty(),
            "the plugin's ddtags replace the event's"
        );
        assert_eq!(ev.attributes["weir"]["invalid_ddtags"], 5);
        assert_eq!(ev.attributes["user"], "ann");
        let mut line = Vec::new();
        ev.write_json(&mut line);
        let text = String::from_utf8(line.clone()).unwrap();
        assert_eq!(text.matches("\"message\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"service\"").count(), 1, "{text}");
        let limits = PayloadLimits {
            max_events: 1,
            max_log_bytes: usize::MAX,
            received_at_ms: 0,
        };
        let back = decode_entry(&line, limits).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn a_reserved_name_left_in_attributes_is_never_written_twice() {
        let mut ev = Event::from_message("field".into(), 1);
        ev.attributes
            .insert("message".into(), Value::from("attribute"));
        let mut line = Vec::new();
        ev.write_json(&mut line);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(text, r#"{"message":"field","timestamp":1}"#);
    }
}
