//! Grafana Loki push API (`<endpoint>/loki/api/v1/push`, JSON): one stream
//! per label set (`tenant` plus the chosen event fields that are present),
//! values `[nanoseconds, line]` in time order; the line is the event's JSON.
use super::backend::{BuildError, Protocol};
use super::client::{insert_headers, join};
use super::lines::heads;
use crate::config::LokiConfig;
use http::HeaderMap;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub struct Loki {
    cfg: LokiConfig,
}

impl Loki {
    pub fn new(cfg: &LokiConfig) -> Loki {
        Loki { cfg: cfg.clone() }
    }
}

impl Protocol for Loki {
    fn url(&self) -> String {
        join(&self.cfg.endpoint, "/loki/api/v1/push")
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn headers(&self, name: &str, out: &mut HeaderMap) -> Result<(), BuildError> {
        insert_headers(name, &self.cfg.headers, out)
    }

    fn body(&self, ndjson: Vec<u8>, tenant: &str) -> Vec<u8> {
        push(&ndjson, tenant, &self.cfg.labels)
    }
}

pub fn push(ndjson: &[u8], tenant: &str, labels: &[String]) -> Vec<u8> {
    // Label set -> (timestamp, line) of each event with those labels.
    type Streams<'a> = BTreeMap<Vec<(&'a str, String)>, Vec<(i64, &'a str)>>;
    let lines = heads(ndjson);
    let mut streams: Streams = BTreeMap::new();
    for l in &lines {
        let mut set = vec![("tenant", tenant.to_string())];
        for label in labels {
            let v = match label.as_str() {
                "service" => &l.service,
                "source" => &l.source,
                "host" => &l.host,
                "status" => &l.status,
                _ => &None,
            };
            // No status is info, as Datadog reads it.
            let v = match (label.as_str(), v) {
                ("status", None) => Some(crate::event::DEFAULT_STATUS),
                (_, v) => v.as_deref(),
            };
            if let Some(v) = v {
                set.push((label.as_str(), v.to_string()));
            }
        }
        streams
            .entry(set)
            .or_default()
            .push((l.timestamp, l.json.as_ref()));
    }
    let streams: Vec<Value> = streams
        .into_iter()
        .map(|(set, mut values)| {
            values.sort_by_key(|(t, _)| *t);
            let labels: serde_json::Map<String, Value> = set
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let values: Vec<Value> = values
                .into_iter()
                .map(|(t, line)| json!([(t as i128 * 1_000_000).to_string(), line]))
                .collect();
            json!({"stream": labels, "values": values})
        })
        .collect();
    serde_json::to_vec(&json!({ "streams": streams })).unwrap()
}

#[cfg(test)]
mod tests {
    use super::super::lines::tests::{ndjson, sample};
    use super::*;

    #[test]
    fn an_event_without_a_status_is_labelled_info() {
        let mut evs = sample();
        for e in &mut evs {
            e.status = None;
        }
        let v: Value =
            serde_json::from_slice(&push(&ndjson(&evs), "acme", &["status".into()])).unwrap();
        for s in v["streams"].as_array().unwrap() {
            assert_eq!(s["stream"]["status"], "info", "{s}");
        }
    }

    #[test]
    fn loki_streams_group_by_labels_in_time_order() {
        let mut evs = sample();
        evs[1].service = Some("nginx".into());
        evs[1].host = Some("web-1".into());
        let v: Value =
            serde_json::from_slice(&push(&ndjson(&evs), "acme", &["service".into()])).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(
            streams[0]["stream"],
            json!({"tenant": "acme", "service": "nginx"})
        );
        let values = streams[0]["values"].as_array().unwrap();
        assert_eq!(values[0][0], "1700000000000000000", "earliest first");
        assert_eq!(values[1][0], "1700000000123000000");
    }
}
