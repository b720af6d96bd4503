//! Datadog's log object: reserved attributes (message, status, timestamp,
//! hostname, service, ddsource, ddtags) become event fields; every other
//! attribute is kept as is. Decoding is streaming (no intermediate JSON tree
//! for the whole payload) and enforces the entry and size limits as it goes.
use super::Event;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::cell::Cell;
use std::fmt;

#[derive(Debug, Clone, Copy)]
pub struct PayloadLimits {
    pub max_events: usize,
    pub max_log_bytes: usize,
    pub received_at_ms: i64,
}

/// Why decoding stopped before the end of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeStop {
    /// More than `max_events` entries.
    TooMany,
    /// The caller's `admit` refused the next entry (no memory for it now).
    NoRoom,
}

/// A JSON array of log objects, or a single object.
pub struct DatadogPayload<'a> {
    pub limits: PayloadLimits,
    /// Set when decoding stopped early, and why.
    pub stop: &'a Cell<Option<DecodeStop>>,
    /// Asked after each entry is decoded, with its index: false stops decoding with `NoRoom`
    /// (intake charges the memory events hold to its budget here).
    pub admit: &'a mut dyn FnMut(usize) -> bool,
    pub out: &'a mut Vec<Event>,
}

impl<'de> DeserializeSeed<'de> for DatadogPayload<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DatadogPayload<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of log objects, or one log object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            if index == self.limits.max_events {
                // One more entry than allowed refuses the whole payload.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.stop.set(Some(DecodeStop::TooMany));
                    return Err(de::Error::custom(format!(
                        "more than {} log entries in one payload",
                        self.limits.max_events
                    )));
                }
                return Ok(());
            }
            let seed = EntrySeed {
                limits: self.limits,
            };
            match seq.next_element_seed(seed) {
                Ok(Some(_)) if !(self.admit)(index) => {
                    self.stop.set(Some(DecodeStop::NoRoom));
                    return Err(de::Error::custom("no memory for more entries now"));
                }
                Ok(Some(ev)) => self.out.push(ev),
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(de::Error::custom(format!(
                        "entry {index}: {}",
                        strip_position(&e.to_string())
                    )))
                }
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let ev = EntrySeed {
            limits: self.limits,
        }
        .visit_map(map)?;
        if !(self.admit)(0) {
            self.stop.set(Some(DecodeStop::NoRoom));
            return Err(de::Error::custom("no memory for more entries now"));
        }
        self.out.push(ev);
        Ok(())
    }
}

/// Decodes one log object (e.g. one NDJSON line).
pub fn decode_entry(json: &[u8], limits: PayloadLimits) -> Result<Event, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let ev = EntrySeed { limits }.deserialize(&mut de)?;
    de.end()?;
    Ok(ev)
}

/// Sample logs for offline tools (`weir query`): a JSON array of log objects,
/// one object, or NDJSON; no size limits, arrival time now.
pub fn decode_sample(text: &[u8]) -> Result<Vec<Event>, String> {
    let limits = PayloadLimits {
        max_events: usize::MAX,
        max_log_bytes: usize::MAX,
        received_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let stop = Cell::new(None);
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_slice(text);
        DatadogPayload {
            limits,
            stop: &stop,
            admit: &mut |_| true,
            out: &mut out,
        }
        .deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| format!("invalid JSON: {e}"))?;
        return Ok(out);
    }
    let mut out = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.push(decode_entry(line, limits).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}

struct EntrySeed {
    limits: PayloadLimits,
}

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = Event;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    type Value = Event;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a log object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut ev = Event {
            timestamp: self.limits.received_at_ms,
            ..Default::default()
        };
        // Marked once the whole object is read, so a `weir` attribute in it cannot replace the mark.
        let mut bad_timestamp = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let v = map.next_value::<Value>()?;
            match Reserved::of(&key) {
                None => {
                    ev.attributes.insert(key.into_owned(), v);
                }
                Some(Reserved::Timestamp) => match parse_timestamp(&v) {
                    Some(ms) => ev.timestamp = ms,
                    None if v.is_null() => {}
                    None => bad_timestamp = Some(v),
                },
                Some(field) => set_reserved(&mut ev, field, v).map_err(|bad| {
                    de::Error::custom(format!(
                        "ddtags must be a string of comma-separated tags, got {bad}"
                    ))
                })?,
            }
        }
        if let Some(v) = bad_timestamp {
            ev.mark("invalid_timestamp", v);
        }
        ev.limit_message(self.limits.max_log_bytes);
        Ok(ev)
    }
}

/// Datadog's reserved attributes: event fields rather than attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Message,
    Status,
    Hostname,
    Service,
    Source,
    Tags,
    Timestamp,
}

impl Reserved {
    pub const ALL: [Reserved; 7] = [
        Reserved::Message,
        Reserved::Status,
        Reserved::Hostname,
        Reserved::Service,
        Reserved::Source,
        Reserved::Tags,
        Reserved::Timestamp,
    ];

    /// The reserved attribute `key` names, if any (one `match`: this runs for every key decoded).
    pub fn of(key: &str) -> Option<Reserved> {
        Some(match key {
            "message" => Reserved::Message,
            "status" => Reserved::Status,
            "hostname" => Reserved::Hostname,
            "service" => Reserved::Service,
            "ddsource" => Reserved::Source,
            "ddtags" => Reserved::Tags,
            "timestamp" => Reserved::Timestamp,
            _ => return None,
        })
    }

    /// The attribute's name in Datadog's JSON.
    pub fn key(self) -> &'static str {
        match self {
            Reserved::Message => "message",
            Reserved::Status => "status",
            Reserved::Hostname => "hostname",
            Reserved::Service => "service",
            Reserved::Source => "ddsource",
            Reserved::Tags => "ddtags",
            Reserved::Timestamp => "timestamp",
        }
    }
}

/// Sets the field a reserved attribute names, as Datadog's intake reads it.
/// A timestamp that does not parse is kept under `weir.invalid_timestamp`;
/// `ddtags` that are neither a string nor a list are handed back.
pub fn set_reserved(ev: &mut Event, field: Reserved, v: Value) -> Result<(), Value> {
    match field {
        Reserved::Message => match v {
            Value::String(s) => ev.message = s,
            Value::Null => {}
            // Datadog indexes a structured message as its JSON text.
            other => ev.message = other.to_string(),
        },
        Reserved::Status => ev.status = string_field(v),
        Reserved::Hostname => ev.host = string_field(v),
        Reserved::Service => ev.service = string_field(v),
        Reserved::Source => ev.source = string_field(v),
        Reserved::Tags => match v {
            Value::String(s) => ev.tags.extend(split_tags(&s)),
            Value::Array(items) => {
                for item in items {
                    if let Some(s) = string_field(item) {
                        ev.tags.extend(split_tags(&s));
                    }
                }
            }
            Value::Null => {}
            other => return Err(other),
        },
        Reserved::Timestamp => match parse_timestamp(&v) {
            Some(ms) => ev.timestamp = ms,
            None if v.is_null() => {}
            None => ev.mark("invalid_timestamp", v),
        },
    }
    Ok(())
}

/// serde_json appends " at line L column C" to its messages; the outer error
/// gets the position again, so the inner one drops it.
pub(crate) fn strip_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => &msg[..i],
        _ => msg,
    }
}

fn string_field(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `a:b, c` → `["a:b", "c"]`: Datadog's comma-separated tag lists.
pub(crate) fn split_tags(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// Milliseconds since the epoch from a number (ms) or an RFC 3339 / numeric string.
pub(crate) fn parse_timestamp(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => {
            if let Ok(n) = s.parse::<i64>() {
                return Some(n);
            }
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_events: 3,
            max_log_bytes: 16,
            received_at_ms: 1_700_000_000_000,
        }
    }

    fn decode(json: &str) -> Result<Vec<Event>, (bool, String)> {
        decode_admitting(json, usize::MAX)
            .map_err(|(stop, e)| (stop == Some(DecodeStop::TooMany), e))
    }

    /// Decodes, admitting entries while their index is below `room`.
    fn decode_admitting(
        json: &str,
        room: usize,
    ) -> Result<Vec<Event>, (Option<DecodeStop>, String)> {
        let stop = Cell::new(None);
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(json);
        DatadogPayload {
            limits: limits(),
            stop: &stop,
            admit: &mut |i| i < room,
            out: &mut out,
        }
        .deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| (stop.get(), e.to_string()))?;
        Ok(out)
    }

    #[test]
    fn admit_refusal_stops_decoding() {
        let (stop, _) = decode_admitting(r#"[{},{},{}]"#, 2).unwrap_err();
        assert_eq!(stop, Some(DecodeStop::NoRoom));
        let (stop, _) = decode_admitting(r#"{"message":"one"}"#, 0).unwrap_err();
        assert_eq!(stop, Some(DecodeStop::NoRoom));
        assert_eq!(decode_admitting(r#"[{},{}]"#, 2).unwrap().len(), 2);
    }

    #[test]
    fn reserved_attributes_become_fields() {
        let evs = decode(r#"[{"message":"hi","status":"warn","timestamp":1700000000123,"hostname":"h1","service":"web","ddsource":"nginx","ddtags":"env:prod, team:core,,solo","http":{"status_code":500},"other":[1,2]}]"#).unwrap();
        let e = &evs[0];
        assert_eq!(e.message, "hi");
        assert_eq!(e.status.as_deref(), Some("warn"));
        assert_eq!(e.timestamp, 1700000000123);
        assert_eq!(e.host.as_deref(), Some("h1"));
        assert_eq!(e.service.as_deref(), Some("web"));
        assert_eq!(e.source.as_deref(), Some("nginx"));
        assert_eq!(e.tags, vec!["env:prod", "team:core", "solo"]);
        assert_eq!(e.attributes["http"]["status_code"], 500);
        assert_eq!(e.attributes["other"][1], 2);
    }

    #[test]
    fn single_object_and_iso_timestamp() {
        let evs = decode(r#"{"message":"one","timestamp":"2024-01-02T03:04:05.678Z"}"#).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].timestamp, 1704164645678);
    }

    #[test]
    fn missing_timestamp_uses_arrival_and_bad_one_is_kept() {
        let evs = decode(r#"[{"message":"a"},{"message":"b","timestamp":"yesterday"}]"#).unwrap();
        assert_eq!(evs[0].timestamp, limits().received_at_ms);
        assert_eq!(evs[1].timestamp, limits().received_at_ms);
        assert_eq!(evs[1].attributes["weir"]["invalid_timestamp"], "yesterday");
    }

    #[test]
    fn too_many_entries_flagged() {
        let (too_many, msg) = decode(r#"[{},{},{},{}]"#).unwrap_err();
        assert!(too_many);
        assert!(msg.contains("more than 3"), "{msg}");
        assert!(decode(r#"[{},{},{}]"#).is_ok());
    }

    #[test]
    fn errors_name_the_entry() {
        let (too_many, msg) = decode(r#"[{"message":"ok"},{"message":"x",}]"#).unwrap_err();
        assert!(!too_many);
        assert!(msg.contains("entry 1"), "{msg}");
        let (_, msg) = decode(r#"[{"message":"ok"}, 7]"#).unwrap_err();
        assert!(msg.contains("entry 1"), "{msg}");
    }

    #[test]
    fn long_message_truncated_and_marked() {
        let evs = decode(r#"[{"message":"ééééééééééééééééé"}]"#).unwrap();
        assert!(evs[0].message.len() <= 16);
        assert_eq!(evs[0].message, "éééééééé");
        assert_eq!(evs[0].attributes["weir"]["truncated"], true);
        assert_eq!(evs[0].attributes["weir"]["original_message_bytes"], 34);
    }

    #[test]
    fn round_trips_through_datadog_json() {
        let src = r#"{"message":"m","status":"info","timestamp":5,"hostname":"h","service":"s","ddsource":"src","ddtags":"a:b,c:d","x":{"y":1}}"#;
        let evs = decode(src).unwrap();
        let mut out = Vec::new();
        evs[0].write_json(&mut out);
        let back = decode(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(back[0], evs[0]);
    }
}
