//! The MessagePack shapes of plugin ABI v1 (sdk/ABI.md): the batch the host
//! sends, the result it reads back.
use crate::event::Event;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Serialize)]
struct BatchOut<'a> {
    events: Vec<EventOut<'a>>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    timestamp: i64,
    message: &'a str,
    host: Option<&'a str>,
    service: Option<&'a str>,
    source: Option<&'a str>,
    status: Option<&'a str>,
    tags: &'a [String],
    attributes: &'a Map<String, Value>,
}

/// The batch as MessagePack (`to_vec_named`: maps with string keys).
pub fn encode_batch(events: &[Event]) -> Vec<u8> {
    let batch = BatchOut {
        events: events
            .iter()
            .map(|e| EventOut {
                timestamp: e.timestamp,
                message: &e.message,
                host: e.host.as_deref(),
                service: e.service.as_deref(),
                source: e.source.as_deref(),
                status: e.status.as_deref(),
                tags: &e.tags,
                attributes: &e.attributes,
            })
            .collect(),
    };
    rmp_serde::to_vec_named(&batch).expect("encoding to memory cannot fail")
}

/// A plugin's config value as MessagePack (nil when absent).
pub fn encode_config(config: Option<&serde_yaml::Value>) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(&config)
        .map_err(|e| format!("config cannot be encoded as MessagePack: {e}"))
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

/// An event as a plugin returns it. Missing `timestamp` and `message` keep the
/// original's; the other fields are taken as given (absent = none).
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

/// One entry of a result: the verdict and, for `keep`, a replacement event.
pub type Outcome = (Verdict, Option<Event>);

/// Decodes a result; it must have exactly one entry per input event.
pub fn decode_result(bytes: &[u8], input: &[Event]) -> Result<Vec<Outcome>, String> {
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
                (Verdict::Keep, Some(e)) => Some(Event {
                    timestamp: e.timestamp.unwrap_or(orig.timestamp),
                    message: e.message.unwrap_or_else(|| orig.message.clone()),
                    host: e.host,
                    service: e.service,
                    source: e.source,
                    status: e.status,
                    tags: e.tags,
                    attributes: e.attributes,
                }),
                _ => None,
            };
            (entry.verdict, ev)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_through_the_result_shape() {
        let mut e = Event::from_message("hello".into(), 7);
        e.host = Some("h".into());
        e.tags = vec!["a:b".into()];
        e.attributes.insert(
            "n".into(),
            serde_json::json!({"x": [1, 2.5, "s", null, true]}),
        );
        let bytes = encode_batch(std::slice::from_ref(&e));
        // The batch's event decoded as a result's event is the same event.
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        let result = serde_json::json!({"results": [{"verdict": "keep", "event": v["events"][0]}]});
        let out = decode_result(
            &rmp_serde::to_vec_named(&result).unwrap(),
            std::slice::from_ref(&e),
        )
        .unwrap();
        assert_eq!(out[0].1.as_ref().unwrap(), &e);
        let bad = rmp_serde::to_vec_named(&serde_json::json!({"results": []})).unwrap();
        assert!(decode_result(&bad, std::slice::from_ref(&e))
            .unwrap_err()
            .contains("0 entries for 1 events"));
    }
}
