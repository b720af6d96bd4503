//! The MessagePack shapes of plugin ABI v1 (sdk/ABI.md): the batch the host
//! sends, the result it reads back.
use crate::event::Event;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which event fields a plugin sees and may change: the bits of the optional
/// `weir_fields` export (sdk/ABI.md). A plugin without it gets all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields(pub u32);

impl Fields {
    pub const TIMESTAMP: u32 = 1;
    pub const MESSAGE: u32 = 2;
    pub const HOST: u32 = 4;
    pub const SERVICE: u32 = 8;
    pub const SOURCE: u32 = 16;
    pub const STATUS: u32 = 32;
    pub const TAGS: u32 = 64;
    pub const ATTRIBUTES: u32 = 128;
    pub const ALL: Fields = Fields(255);

    /// From the export's value; bits this host does not know are ignored.
    pub fn from_bits(bits: i32) -> Fields {
        Fields(bits as u32 & Fields::ALL.0)
    }

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// The batch as MessagePack, in the shape rmp-serde's `to_vec_named` gives
/// (maps with string keys, fields in declaration order), with only the fields
/// the plugin asked for. Written directly with `rmp`: this runs for every
/// event of every batch, and skipping serde's intermediate structs halves it.
pub fn encode_batch(events: &[Event], fields: Fields) -> Vec<u8> {
    let avg = events.first().map_or(0, |e| e.message.len() + 128);
    let mut out = Vec::with_capacity(16 + events.len() * avg);
    write_map_len(&mut out, 1);
    write_str(&mut out, "events");
    rmp::encode::write_array_len(&mut out, events.len() as u32).unwrap();
    let n = fields.0.count_ones();
    for e in events {
        write_map_len(&mut out, n);
        if fields.has(Fields::TIMESTAMP) {
            write_str(&mut out, "timestamp");
            rmp::encode::write_sint(&mut out, e.timestamp).unwrap();
        }
        if fields.has(Fields::MESSAGE) {
            write_str(&mut out, "message");
            write_str(&mut out, &e.message);
        }
        for (bit, key, value) in [
            (Fields::HOST, "host", &e.host),
            (Fields::SERVICE, "service", &e.service),
            (Fields::SOURCE, "source", &e.source),
            (Fields::STATUS, "status", &e.status),
        ] {
            if fields.has(bit) {
                write_str(&mut out, key);
                match value {
                    Some(v) => write_str(&mut out, v),
                    None => rmp::encode::write_nil(&mut out).unwrap(),
                }
            }
        }
        if fields.has(Fields::TAGS) {
            write_str(&mut out, "tags");
            rmp::encode::write_array_len(&mut out, e.tags.len() as u32).unwrap();
            for t in &e.tags {
                write_str(&mut out, t);
            }
        }
        if fields.has(Fields::ATTRIBUTES) {
            write_str(&mut out, "attributes");
            write_object(&mut out, &e.attributes);
        }
    }
    out
}

fn write_map_len(out: &mut Vec<u8>, n: u32) {
    rmp::encode::write_map_len(out, n).unwrap();
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).unwrap();
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    write_map_len(out, map.len() as u32);
    for (k, v) in map {
        write_str(out, k);
        write_value(out, v);
    }
}

/// A JSON value as rmp-serde writes it: integers in their smallest form, floats as f64.
fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => rmp::encode::write_nil(out).unwrap(),
        Value::Bool(b) => rmp::encode::write_bool(out, *b).unwrap(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmp::encode::write_uint(out, u).unwrap();
            } else if let Some(i) = n.as_i64() {
                rmp::encode::write_sint(out, i).unwrap();
            } else {
                rmp::encode::write_f64(out, n.as_f64().unwrap_or(0.0)).unwrap();
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            rmp::encode::write_array_len(out, items.len() as u32).unwrap();
            for i in items {
                write_value(out, i);
            }
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// A plugin's config value as MessagePack (nil when absent).
pub fn encode_config(
    config: Option<&serde_yaml::Value>,
) -> Result<Vec<u8>, super::error::LoadError> {
    rmp_serde::to_vec_named(&config).map_err(|e| super::error::LoadError::Config(e.to_string()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Keep,
    Drop,
    ArchiveOnly,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::Drop => "drop",
            Verdict::ArchiveOnly => "archive_only",
        }
    }
}

#[derive(Deserialize)]
struct ResultIn {
    results: Vec<EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    verdict: Verdict,
    #[serde(default)]
    event: Option<EventIn>,
}

/// An event as a plugin returns it. Only the fields the plugin asked for are
/// taken (the others keep the original's); among those, a missing `timestamp`
/// or `message` keeps the original's and the rest are taken as given (absent = none).
#[derive(Deserialize)]
struct EventIn {
    timestamp: Option<i64>,
    message: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

impl EventIn {
    fn merge(self, orig: &Event, f: Fields) -> Event {
        let pick = |bit: u32, new: Option<String>, old: &Option<String>| {
            if f.has(bit) {
                new
            } else {
                old.clone()
            }
        };
        Event {
            timestamp: self
                .timestamp
                .filter(|_| f.has(Fields::TIMESTAMP))
                .unwrap_or(orig.timestamp),
            message: match self.message {
                Some(m) if f.has(Fields::MESSAGE) => m,
                _ => orig.message.clone(),
            },
            host: pick(Fields::HOST, self.host, &orig.host),
            service: pick(Fields::SERVICE, self.service, &orig.service),
            source: pick(Fields::SOURCE, self.source, &orig.source),
            status: pick(Fields::STATUS, self.status, &orig.status),
            tags: if f.has(Fields::TAGS) {
                self.tags
            } else {
                orig.tags.clone()
            },
            attributes: if f.has(Fields::ATTRIBUTES) {
                self.attributes
            } else {
                orig.attributes.clone()
            },
        }
    }
}

/// One entry of a result: the verdict and, for `keep`, a replacement event.
pub type Outcome = (Verdict, Option<Event>);

/// Decodes a result; it must have exactly one entry per input event.
pub fn decode_result(
    bytes: &[u8],
    input: &[Event],
    fields: Fields,
) -> Result<Vec<Outcome>, String> {
    let r: ResultIn = rmp_serde::from_slice(bytes)
        .map_err(|e| format!("result is not a valid MessagePack result: {e}"))?;
    if r.results.len() != input.len() {
        return Err(format!(
            "result has {} entries for {} events",
            r.results.len(),
            input.len()
        ));
    }
    Ok(r.results
        .into_iter()
        .zip(input)
        .map(|(entry, orig)| {
            let ev = match (entry.verdict, entry.event) {
                (Verdict::Keep, Some(e)) => {
                    let mut ev = e.merge(orig, fields);
                    // An attribute named like a field (json-parse copies parsed keys) sets the field.
                    ev.adopt_reserved_attributes();
                    Some(ev)
                }
                _ => None,
            };
            (entry.verdict, ev)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::from_message("hello".into(), 7);
        e.host = Some("h".into());
        e.tags = vec!["a:b".into()];
        e.attributes.insert(
            "n".into(),
            serde_json::json!({"x": [1, -2, 2.5, u64::MAX, "s", null, true]}),
        );
        e
    }

    #[test]
    fn batch_round_trips_through_the_result_shape() {
        let e = sample();
        let bytes = encode_batch(std::slice::from_ref(&e), Fields::ALL);
        // What the SDK decodes (rmp-serde) is the event, field for field.
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"events": [{
                "timestamp": 7, "message": "hello", "host": "h", "service": null, "source": null,
                "status": null, "tags": ["a:b"],
                "attributes": {"n": {"x": [1, -2, 2.5, u64::MAX, "s", null, true]}},
            }]})
        );
        // The batch's event decoded as a result's event is the same event.
        let result = serde_json::json!({"results": [{"verdict": "keep", "event": v["events"][0]}]});
        let out = decode_result(
            &rmp_serde::to_vec_named(&result).unwrap(),
            std::slice::from_ref(&e),
            Fields::ALL,
        )
        .unwrap();
        assert_eq!(out[0].1.as_ref().unwrap(), &e);
        let bad = rmp_serde::to_vec_named(&serde_json::json!({"results": []})).unwrap();
        assert!(decode_result(&bad, std::slice::from_ref(&e), Fields::ALL)
            .unwrap_err()
            .contains("0 entries for 1 events"));
    }

    #[test]
    fn a_plugin_sees_and_changes_only_the_fields_it_asked_for() {
        let e = sample();
        let f = Fields(Fields::MESSAGE | Fields::ATTRIBUTES);
        let v: serde_json::Value =
            rmp_serde::from_slice(&encode_batch(std::slice::from_ref(&e), f)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"events": [{"message": "hello", "attributes": {"n": {"x": [1, -2, 2.5, u64::MAX, "s", null, true]}}}]})
        );
        let none: serde_json::Value =
            rmp_serde::from_slice(&encode_batch(&[e.clone(), e.clone()], Fields(0))).unwrap();
        assert_eq!(none, serde_json::json!({"events": [{}, {}]}));
        // A returned event changes what was asked for; the rest stays the original's,
        // even when the plugin sends other fields.
        let result = serde_json::json!({"results": [{"verdict": "keep", "event": {
            "message": "changed", "host": "other", "tags": [], "attributes": {"k": 1}}}]});
        let out = decode_result(
            &rmp_serde::to_vec_named(&result).unwrap(),
            std::slice::from_ref(&e),
            f,
        )
        .unwrap();
        let got = out[0].1.as_ref().unwrap();
        assert_eq!(got.message, "changed");
        assert_eq!(got.attributes.get("k"), Some(&serde_json::json!(1)));
        assert!(!got.attributes.contains_key("n"));
        assert_eq!(
            (got.host.as_deref(), &got.tags, got.timestamp),
            (Some("h"), &e.tags, 7)
        );
    }
}
