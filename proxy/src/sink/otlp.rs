//! OpenTelemetry OTLP/HTTP logs (`<endpoint>/v1/logs`, protobuf): one
//! `ResourceLogs` per (host, service), a `LogRecord` per event. A receiver
//! may accept a batch in part (`partial_success`) without naming the records
//! it refused: they are counted, not retried.
use super::backend::{BuildError, Protocol, SendError, Sent};
use super::client::{insert_headers, join};
use super::lines::events;
use crate::config::OtlpConfig;
use crate::event::Event;
use chrono::Utc;
use http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;

pub struct Otlp {
    cfg: OtlpConfig,
}

impl Otlp {
    pub fn new(cfg: &OtlpConfig) -> Otlp {
        Otlp { cfg: cfg.clone() }
    }
}

impl Protocol for Otlp {
    fn url(&self) -> String {
        join(&self.cfg.endpoint, "/v1/logs")
    }

    fn content_type(&self) -> &'static str {
        "application/x-protobuf"
    }

    fn headers(&self, name: &str, out: &mut HeaderMap) -> Result<(), BuildError> {
        insert_headers(name, &self.cfg.headers, out)
    }

    fn body(&self, ndjson: Vec<u8>, _tenant: &str) -> Vec<u8> {
        logs(&events(&ndjson))
    }

    fn read_answer(
        &self,
        _status: StatusCode,
        answer: &[u8],
        _events: usize,
    ) -> Result<Sent, SendError> {
        Ok(Sent {
            unnamed_rejected: rejected(answer),
            ..Sent::default()
        })
    }
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
pub fn logs(events: &[Event]) -> Vec<u8> {
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
        // Logs that came in over OTLP go out tied to their traces again.
        let (trace_id, span_id) = e.trace_ids();
        let record = LogRecord {
            trace_id,
            span_id,
            time_unix_nano: (e.timestamp.max(0) as u64).saturating_mul(1_000_000),
            observed_time_unix_nano: now,
            // No status is info, as Datadog reads it.
            severity_number: severity(Some(e.status_or_default())),
            severity_text: e.status_or_default().to_string(),
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
pub fn rejected(answer: &[u8]) -> Option<(u64, String)> {
    let r = ExportLogsServiceResponse::decode(answer).ok()?;
    let p = r.partial_success?;
    (p.rejected_log_records > 0).then_some((p.rejected_log_records as u64, p.error_message))
}

#[cfg(test)]
mod tests {
    use super::super::lines::tests::sample;
    use super::*;

    #[test]
    fn an_event_without_a_status_goes_out_as_info() {
        let mut evs = sample();
        for e in &mut evs {
            e.status = None;
        }
        let r = ExportLogsServiceRequest::decode(logs(&evs).as_slice()).unwrap();
        let recs: Vec<_> = r
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|s| &s.log_records)
            .collect();
        assert!(!recs.is_empty());
        for rec in recs {
            assert_eq!(rec.severity_text, "info");
            assert_eq!(rec.severity_number, severity(Some("info")));
        }
    }

    #[test]
    fn otlp_round_trips_through_the_proto() {
        let bytes = logs(&sample());
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
