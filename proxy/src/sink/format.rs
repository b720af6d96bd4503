//! Request bodies in the wire formats of the backends that do not take the
//! Datadog JSON as is: Elasticsearch `_bulk`, Splunk HEC, OTLP/HTTP logs
//! (protobuf) and Loki push. Routes carry batches as NDJSON of Datadog-shaped
//! events; these decode them back and write the target's shape.
use crate::event::{decode_entry, Event, PayloadLimits};
use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The events of an NDJSON batch. The proxy wrote the lines itself, and an
/// event's JSON decodes back to it (Event::adopt_reserved_attributes); should a
/// line not, it travels as the message of an event marked
/// `weir.undecodable_line`, so that delivery never panics and nothing is lost.
pub fn events(ndjson: &[u8]) -> Vec<Event> {
    let limits = PayloadLimits {
        max_events: usize::MAX,
        max_log_bytes: usize::MAX,
        received_at_ms: 0,
    };
    ndjson
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            decode_entry(l, limits).unwrap_or_else(|e| {
                tracing::error!(error = %e, "an event's own JSON did not decode; sent as text");
                let mut ev = Event::from_message(String::from_utf8_lossy(l).into_owned(), 0);
                ev.mark("undecodable_line", Value::Bool(true));
                ev
            })
        })
        .collect()
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `_bulk`: per event a `create` action line naming the index, then the
/// document (the event's JSON with an `@timestamp`). `index` may hold `%Y`,
/// `%m`, `%d`: the event's UTC date (daily indices).
pub fn elasticsearch_bulk(events: &[Event], index: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 320);
    for e in events {
        let idx = if index.contains('%') {
            utc(e.timestamp).format(index).to_string()
        } else {
            index.to_string()
        };
        serde_json::to_writer(&mut out, &json!({"create": {"_index": idx}})).unwrap();
        out.push(b'\n');
        let mut doc = serde_json::to_value(e).unwrap();
        doc["@timestamp"] =
            json!(utc(e.timestamp).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        serde_json::to_writer(&mut out, &doc).unwrap();
        out.push(b'\n');
    }
    out
}

/// Per-item outcome of a `_bulk` answer: (item index, status, reason) of each
/// item that did not succeed (none when the answer says there were no errors).
pub fn elasticsearch_failures(answer: &[u8]) -> Result<Vec<(usize, u16, String)>, String> {
    let v: Value =
        serde_json::from_slice(answer).map_err(|e| format!("unreadable _bulk answer: {e}"))?;
    if v["errors"] != json!(true) {
        return Ok(Vec::new());
    }
    let items = v["items"]
        .as_array()
        .ok_or("a _bulk answer with errors but no items")?;
    Ok(items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let op = item.as_object()?.values().next()?;
            let status = op["status"].as_u64().unwrap_or(500) as u16;
            (status >= 300).then(|| {
                let reason = format!(
                    "{}: {}",
                    op["error"]["type"].as_str().unwrap_or("error"),
                    op["error"]["reason"].as_str().unwrap_or("")
                );
                (i, status, reason)
            })
        })
        .collect())
}

/// HEC: one JSON object per event, concatenated; the event's JSON is the
/// `event`, with `time` (seconds), `host`, `source`, `sourcetype` and `index`.
pub fn splunk_hec(events: &[Event], index: Option<&str>, sourcetype: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.len() * 320);
    for e in events {
        let mut o = json!({
            "time": e.timestamp as f64 / 1000.0,
            "sourcetype": sourcetype,
            "event": e,
        });
        if let Some(h) = &e.host {
            o["host"] = json!(h);
        }
        if let Some(s) = &e.source {
            o["source"] = json!(s);
        }
        if let Some(i) = index {
            o["index"] = json!(i);
        }
        serde_json::to_writer(&mut out, &o).unwrap();
        out.push(b'\n');
    }
    out
}

/// Loki push (JSON): one stream per label set (`tenant` plus the chosen event
/// fields that are present), values `[nanoseconds, line]` in time order; the
/// line is the event's JSON.
pub fn loki_push(events: &[Event], tenant: &str, labels: &[String]) -> Vec<u8> {
    // Label set -> (timestamp, line) of each event with those labels.
    type Streams = BTreeMap<Vec<(String, String)>, Vec<(i64, String)>>;
    let mut streams: Streams = BTreeMap::new();
    for e in events {
        let mut set = vec![("tenant".to_string(), tenant.to_string())];
        for l in labels {
            let v = match l.as_str() {
                "service" => &e.service,
                "source" => &e.source,
                "host" => &e.host,
                "status" => &e.status,
                _ => &None,
            };
            if let Some(v) = v {
                set.push((l.clone(), v.clone()));
            }
        }
        let line = serde_json::to_string(e).unwrap();
        streams.entry(set).or_default().push((e.timestamp, line));
    }
    let streams: Vec<Value> = streams
        .into_iter()
        .map(|(set, mut values)| {
            values.sort_by_key(|(t, _)| *t);
            let labels: serde_json::Map<String, Value> =
                set.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let values: Vec<Value> = values
                .into_iter()
                .map(|(t, line)| json!([(t as i128 * 1_000_000).to_string(), line]))
                .collect();
            json!({"stream": labels, "values": values})
        })
        .collect();
    serde_json::to_vec(&json!({ "streams": streams })).unwrap()
}

fn any(v: &Value) -> AnyValue {
    let value = match v {
        Value::Null => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        }),
        Value::String(s) => Some(any_value::Value::StringValue(s.clone())),
        Value::Array(a) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(any).collect(),
        })),
        Value::Object(m) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: m.iter().map(|(k, v)| kv(k, any(v))).collect(),
        })),
    };
    AnyValue { value }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        ..Default::default()
    }
}

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

/// OTLP severity numbers for Datadog statuses (the OpenTelemetry log data model's ranges).
fn severity(status: Option<&str>) -> i32 {
    match status.map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("trace") => 1,
        Some("debug") => 5,
        Some("info") | Some("notice") | Some("ok") => 9,
        Some("warn") | Some("warning") => 13,
        Some("error") | Some("err") => 17,
        Some("critical") | Some("crit") | Some("alert") | Some("emergency") | Some("emerg")
        | Some("fatal") => 21,
        _ => 0,
    }
}

/// OTLP/HTTP: an `ExportLogsServiceRequest`, one `ResourceLogs` per (host,
/// service) with `host.name` and `service.name`; per event a `LogRecord` with
/// the message as body, the status as severity, and source, tags and
/// attributes as attributes.
pub fn otlp_logs(events: &[Event]) -> Vec<u8> {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64;
    let mut by_resource: BTreeMap<(Option<String>, Option<String>), Vec<LogRecord>> =
        BTreeMap::new();
    for e in events {
        let mut attributes = Vec::new();
        if let Some(s) = &e.source {
            attributes.push(kv("source", string(s)));
        }
        if !e.tags.is_empty() {
            attributes.push(kv(
                "tags",
                AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: e.tags.iter().map(|t| string(t)).collect(),
                    })),
                },
            ));
        }
        attributes.extend(e.attributes.iter().map(|(k, v)| kv(k, any(v))));
        let record = LogRecord {
            time_unix_nano: (e.timestamp.max(0) as u64).saturating_mul(1_000_000),
            observed_time_unix_nano: now,
            severity_number: severity(e.status.as_deref()),
            severity_text: e.status.clone().unwrap_or_default(),
            body: Some(string(&e.message)),
            attributes,
            ..Default::default()
        };
        by_resource
            .entry((e.host.clone(), e.service.clone()))
            .or_default()
            .push(record);
    }
    let resource_logs = by_resource
        .into_iter()
        .map(|((host, service), log_records)| {
            let mut attributes = Vec::new();
            if let Some(h) = host {
                attributes.push(kv("host.name", string(&h)));
            }
            if let Some(s) = service {
                attributes.push(kv("service.name", string(&s)));
            }
            ResourceLogs {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "weir".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }.encode_to_vec()
}

/// Records an OTLP receiver says it rejected (`partial_success`), and why.
pub fn otlp_rejected(answer: &[u8]) -> Option<(u64, String)> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
    let r = ExportLogsServiceResponse::decode(answer).ok()?;
    let p = r.partial_success?;
    (p.rejected_log_records > 0).then_some((p.rejected_log_records as u64, p.error_message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event> {
        let mut a = Event::from_message("GET / 200".into(), 1_700_000_000_123);
        a.host = Some("web-1".into());
        a.service = Some("nginx".into());
        a.status = Some("warn".into());
        a.tags = vec!["env:prod".into()];
        a.attributes
            .insert("http".into(), json!({"status_code": 200, "ok": true}));
        let b = Event::from_message("later".into(), 1_700_000_000_000);
        vec![a, b]
    }

    #[test]
    fn a_line_that_does_not_decode_travels_as_text_instead_of_panicking() {
        let evs = events(b"{\"message\":\"ok\"}\n{\"ddtags\":5}\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].message, "ok");
        assert_eq!(evs[1].message, "{\"ddtags\":5}");
        assert_eq!(evs[1].attributes["weir"]["undecodable_line"], true);
    }

    #[test]
    fn bulk_lines_pair_an_action_with_a_document() {
        let body = elasticsearch_bulk(&sample(), "logs-%Y.%m.%d");
        let lines: Vec<Value> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], json!({"create": {"_index": "logs-2023.11.14"}}));
        assert_eq!(lines[1]["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(lines[1]["http"]["status_code"], 200);
        assert_eq!(lines[3]["message"], "later");
        let answer = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
        ]});
        let f = elasticsearch_failures(answer.to_string().as_bytes()).unwrap();
        assert_eq!(f[0], (1, 400, "mapper_parsing_exception: bad".to_string()));
        assert_eq!((f[1].0, f[1].1), (2, 429));
        assert!(elasticsearch_failures(br#"{"errors":false,"items":[]}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn loki_streams_group_by_labels_in_time_order() {
        let mut evs = sample();
        evs[1].service = Some("nginx".into());
        evs[1].host = Some("web-1".into());
        let v: Value =
            serde_json::from_slice(&loki_push(&evs, "acme", &["service".into()])).unwrap();
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

    #[test]
    fn otlp_round_trips_through_the_proto() {
        let bytes = otlp_logs(&sample());
        let r = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(r.resource_logs.len(), 2);
        let rec = r
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|s| &s.log_records)
            .find(|l| l.severity_text == "warn")
            .unwrap();
        assert_eq!(rec.time_unix_nano, 1_700_000_000_123_000_000);
        assert_eq!(rec.severity_number, 13);
        assert_eq!(
            rec.body.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("GET / 200".into()))
        );
    }
}
