//! Splunk HTTP Event Collector (`<endpoint>/services/collector/event`, with
//! the HEC token): one JSON object per event, the event's JSON as `event`.
use super::backend::{BuildError, Protocol};
use super::client::{insert_headers, join};
use super::lines::heads;
use crate::config::SplunkHecConfig;
use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;

pub struct SplunkHec {
    cfg: SplunkHecConfig,
}

impl SplunkHec {
    pub fn new(cfg: &SplunkHecConfig) -> SplunkHec {
        SplunkHec { cfg: cfg.clone() }
    }
}

impl Protocol for SplunkHec {
    fn url(&self) -> String {
        join(&self.cfg.endpoint, "/services/collector/event")
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn headers(&self, name: &str, out: &mut HeaderMap) -> Result<(), BuildError> {
        let mut v = HeaderValue::try_from(format!("Splunk {}", self.cfg.token.expose()))
            .map_err(|_| BuildError::Token(name.to_string()))?;
        v.set_sensitive(true);
        out.insert(AUTHORIZATION, v);
        insert_headers(name, &self.cfg.headers, out)
    }

    fn body(&self, ndjson: Vec<u8>, _tenant: &str) -> Vec<u8> {
        hec(&ndjson, self.cfg.index.as_deref(), &self.cfg.sourcetype)
    }
}

/// Per event `time` (seconds), `sourcetype`, the event's JSON as it is as
/// `event`, then `host`, `source` and `index` where known.
pub fn hec(ndjson: &[u8], index: Option<&str>, sourcetype: &str) -> Vec<u8> {
    let lines = heads(ndjson);
    let mut out = Vec::with_capacity(ndjson.len() + lines.len() * 96);
    let sourcetype = serde_json::to_string(sourcetype).unwrap();
    let index = index.map(|i| serde_json::to_string(i).unwrap());
    for l in &lines {
        out.extend_from_slice(b"{\"time\":");
        serde_json::to_writer(&mut out, &(l.timestamp as f64 / 1000.0)).unwrap();
        out.extend_from_slice(b",\"sourcetype\":");
        out.extend_from_slice(sourcetype.as_bytes());
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(l.json.as_bytes());
        for (key, value) in [("host", &l.host), ("source", &l.source)] {
            if let Some(v) = value {
                out.extend_from_slice(format!(",\"{key}\":").as_bytes());
                serde_json::to_writer(&mut out, v).unwrap();
            }
        }
        if let Some(i) = &index {
            out.extend_from_slice(b",\"index\":");
            out.extend_from_slice(i.as_bytes());
        }
        out.extend_from_slice(b"}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::lines::tests::{ndjson, sample};
    use super::*;
    use serde_json::Value;

    #[test]
    fn each_event_is_an_object_with_its_metadata() {
        let body = hec(&ndjson(&sample()), Some("main"), "_json");
        let objects: Vec<Value> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["time"], 1_700_000_000.123);
        assert_eq!(objects[0]["host"], "web-1");
        assert_eq!(objects[0]["index"], "main");
        assert_eq!(objects[0]["sourcetype"], "_json");
        assert_eq!(objects[0]["event"]["message"], "GET / 200");
        assert!(objects[1].get("host").is_none());
    }
}
