//! OTLP logs, as OpenTelemetry SDKs and the Collector's `otlphttp` exporter
//! send them: `POST /v1/logs` with an `ExportLogsServiceRequest` in protobuf
//! (`application/x-protobuf`) or OTLP's JSON (`application/json`), gzip or not.
//! gRPC (`LogsService/Export`) is in `otlp_grpc` and decodes the same way.
//! The key is a bearer token (`Authorization: Bearer <key>`) or `DD-API-KEY`.
//! Answers follow the OTLP/HTTP spec: 200 with an `ExportLogsServiceResponse`
//! in the request's encoding, and on a refusal a `google.rpc.Status` with the
//! HTTP status (429 and 503 with Retry-After: the exporter retries those).
//!
//! One `LogRecord` becomes one event: the body is the message (a structured
//! body as its JSON text), severity the status, `host.name` and
//! `service.name` the host and service, the other resource attributes and
//! the record's attributes the event's attributes (the record's win), and
//! `otel.trace_id`/`otel.span_id` (hex) with `dd.trace_id`/`dd.span_id`
//! (decimal, Datadog's log-to-trace correlation) keep logs with their traces.
use super::core::Decode;
use super::datadog::{api_key, invalid_json};
use super::http::{content_type, json_response, Answer, Endpoint, HttpProtocol};
use super::Refusal;
use crate::event::{hex, Event, Intake, PayloadLimits};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use serde_json::{Map, Number, Value};

pub const LOGS_PATH: &str = "/v1/logs";
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

pub struct Otlp;

/// How a request's body is encoded (and its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Protobuf,
    Json,
}

impl Form {
    /// The form the request's Content-Type names; protobuf when it names none.
    fn of(head: &Parts) -> Result<Form, Refusal> {
        match content_type(&head.headers).as_deref() {
            None | Some(PROTOBUF) | Some("application/protobuf") => Ok(Form::Protobuf),
            Some(JSON) => Ok(Form::Json),
            Some(other) => Err(Refusal::UnsupportedContentType {
                got: other.to_string(),
                expected: "application/x-protobuf or application/json",
            }),
        }
    }

    /// The form to answer in: the request's, or protobuf when it named one we do not take.
    fn answer(head: &Parts) -> Form {
        Form::of(head).unwrap_or(Form::Protobuf)
    }
}

/// One request's body, in its form.
pub struct OtlpBody(pub Form);

impl HttpProtocol for Otlp {
    const INTAKE: Intake = Intake::Otlp;
    const KEY_HINT: &'static str = "send it as Authorization: Bearer <key>";
    type Body = OtlpBody;

    fn endpoint(&self, _method: &Method, path: &str) -> Option<Endpoint> {
        (path == LOGS_PATH).then_some(Endpoint::Submit)
    }

    fn key(&self, head: &Parts) -> Option<String> {
        api_key(&head.headers, None)
    }

    fn body(&self, head: &mut Parts) -> Result<OtlpBody, Refusal> {
        Form::of(head).map(OtlpBody)
    }

    fn accepted(&self, _endpoint: Endpoint, head: &Parts) -> Answer {
        // Everything decoded was taken: no partial success to report.
        let answer = ExportLogsServiceResponse {
            partial_success: None,
        };
        match Form::answer(head) {
            Form::Protobuf => protobuf_response(StatusCode::OK, answer.encode_to_vec()),
            // OTLP's JSON leaves out a field that is not set: `{}`.
            Form::Json => json_response(StatusCode::OK, Bytes::from_static(b"{}")),
        }
    }

    fn refused(&self, r: &Refusal, head: &Parts) -> Answer {
        let status = RpcStatus {
            code: grpc_code(r) as i32,
            message: r.to_string(),
        };
        let mut resp = match Form::answer(head) {
            Form::Protobuf => protobuf_response(r.status(), status.encode_to_vec()),
            Form::Json => json_response(
                r.status(),
                Bytes::from(
                    serde_json::to_vec(&serde_json::json!({
                        "code": status.code,
                        "message": status.message,
                    }))
                    .expect("serializing to memory"),
                ),
            ),
        };
        if let Some(secs) = r.retry_after() {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Answer {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    resp
}

/// `google.rpc.Status`, the error body of OTLP/HTTP (details left empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The gRPC status code of a refusal, by what the OTLP spec asks the
/// exporter to do with it: UNAVAILABLE is retried, the others are not.
pub fn grpc_code(r: &Refusal) -> tonic::Code {
    match r.status() {
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => tonic::Code::Unimplemented,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted,
        StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        s if s.is_client_error() => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    }
}

impl Decode for OtlpBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        let request = match self.0 {
            Form::Protobuf => {
                ExportLogsServiceRequest::decode(payload).map_err(|e| Refusal::InvalidPayload {
                    format: "OTLP ExportLogsServiceRequest (protobuf)",
                    error: e.to_string(),
                })?
            }
            Form::Json => serde_json::from_slice(payload).map_err(|e| invalid_json(payload, &e))?,
        };
        events(request, limits, admit)
    }
}

/// The events of an export request, one per log record.
pub fn events(
    request: ExportLogsServiceRequest,
    limits: PayloadLimits,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Event>, Refusal> {
    let mut out = Vec::new();
    for rl in request.resource_logs {
        let mut common = Map::new();
        let (mut host, mut service) = (None, None);
        for kv in rl.resource.map(|r| r.attributes).unwrap_or_default() {
            match (kv.key.as_str(), json(kv.value)) {
                ("host.name", Value::String(h)) => host = Some(h),
                ("service.name", Value::String(s)) => service = Some(s),
                (_, v) => {
                    common.insert(kv.key, v);
                }
            }
        }
        for sl in rl.scope_logs {
            let scope = sl.scope.filter(|s| !s.name.is_empty()).map(|s| {
                let mut m = Map::new();
                m.insert("name".into(), Value::String(s.name));
                if !s.version.is_empty() {
                    m.insert("version".into(), Value::String(s.version));
                }
                Value::Object(m)
            });
            for record in sl.log_records {
                if out.len() == limits.max_events {
                    return Err(Refusal::TooManyEvents {
                        max: limits.max_events,
                    });
                }
                if !admit(out.len()) {
                    return Err(Refusal::Busy);
                }
                let mut ev = event(record, &common, scope.as_ref(), limits);
                ev.host.clone_from(&host);
                ev.service.clone_from(&service);
                // Attributes named like a Datadog field (`service`, `status`, ...) set it.
                ev.adopt_reserved_attributes();
                ev.limit_message(limits.max_log_bytes);
                out.push(ev);
            }
        }
    }
    Ok(out)
}

fn event(
    r: LogRecord,
    resource: &Map<String, Value>,
    scope: Option<&Value>,
    limits: PayloadLimits,
) -> Event {
    let nanos = if r.time_unix_nano > 0 {
        r.time_unix_nano
    } else {
        r.observed_time_unix_nano
    };
    let timestamp = if nanos > 0 {
        (nanos / 1_000_000) as i64
    } else {
        limits.received_at_ms
    };
    let message = match r.body.and_then(|b| b.value) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s,
        // As Datadog indexes a structured message: its JSON text.
        Some(other) => value(other).to_string(),
    };
    let mut ev = Event::from_message(message, timestamp);
    ev.status = status(r.severity_number, &r.severity_text);
    let mut attributes = resource.clone();
    for kv in r.attributes {
        let v = json(kv.value);
        attributes.insert(kv.key, v);
    }
    let mut otel = Map::new();
    let mut dd = Map::new();
    if r.trace_id.len() == 16 && r.trace_id.iter().any(|&b| b != 0) {
        otel.insert("trace_id".into(), Value::String(hex(&r.trace_id)));
        dd.insert("trace_id".into(), Value::String(low_u64(&r.trace_id)));
    }
    if r.span_id.len() == 8 && r.span_id.iter().any(|&b| b != 0) {
        otel.insert("span_id".into(), Value::String(hex(&r.span_id)));
        dd.insert("span_id".into(), Value::String(low_u64(&r.span_id)));
    }
    if r.flags != 0 {
        otel.insert("flags".into(), Value::from(r.flags));
    }
    if r.severity_number != 0 {
        otel.insert("severity_number".into(), Value::from(r.severity_number));
    }
    if let Some(s) = scope {
        otel.insert("scope".into(), s.clone());
    }
    merge(&mut attributes, "otel", otel);
    merge(&mut attributes, "dd", dd);
    // Kept as sent: an event's attributes take the record's, then the resource's.
    ev.attributes = attributes;
    ev
}

/// Adds `fields` under `key`, into the object already there if the sender used the name.
fn merge(attributes: &mut Map<String, Value>, key: &str, fields: Map<String, Value>) {
    if fields.is_empty() {
        return;
    }
    match attributes.get_mut(key) {
        Some(Value::Object(existing)) => existing.extend(fields),
        Some(_) => {
            // The sender's own non-object value under that name: keep both.
            let theirs = attributes.remove(key).expect("present");
            let mut m = fields;
            m.insert("value".into(), theirs);
            attributes.insert(key.into(), Value::Object(m));
        }
        None => {
            attributes.insert(key.into(), Value::Object(fields));
        }
    }
}

/// A Datadog status from OTLP's severity number (its ranges in the log data
/// model), or the severity text when there is no number.
fn status(number: i32, text: &str) -> Option<String> {
    let s = match number {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "critical",
        _ if !text.is_empty() => return Some(text.to_ascii_lowercase()),
        _ => return None,
    };
    Some(s.into())
}

fn json(v: Option<AnyValue>) -> Value {
    v.and_then(|v| v.value).map_or(Value::Null, value)
}

/// An OTLP value as JSON; bytes as lowercase hex.
fn value(v: any_value::Value) -> Value {
    match v {
        any_value::Value::StringValue(s) => Value::String(s),
        any_value::Value::BoolValue(b) => Value::Bool(b),
        any_value::Value::IntValue(i) => Value::from(i),
        any_value::Value::DoubleValue(d) => Number::from_f64(d).map_or(Value::Null, Value::Number),
        any_value::Value::ArrayValue(a) => {
            Value::Array(a.values.into_iter().map(|v| json(Some(v))).collect())
        }
        any_value::Value::KvlistValue(kvs) => Value::Object(
            kvs.values
                .into_iter()
                .map(|KeyValue { key, value, .. }| (key, json(value)))
                .collect(),
        ),
        any_value::Value::BytesValue(b) => Value::String(hex(&b)),
        // A newer OTLP's reference into a dictionary this version does not carry.
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

/// The low 64 bits of an id, in decimal: how Datadog correlates logs with traces.
fn low_u64(id: &[u8]) -> String {
    let low: [u8; 8] = id[id.len() - 8..].try_into().expect("8 bytes");
    u64::from_be_bytes(low).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_events: 10,
            max_log_bytes: 1000,
            received_at_ms: 42,
        }
    }

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("host.name", s("web-1")),
                        kv("service.name", s("checkout")),
                        kv("deployment.environment", s("prod")),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "app.logger".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Found by the `otlp` fuzz target: a `message` attribute replaced the
    /// body after it was cut, and the truncation mark was lost.
    #[test]
    fn a_long_message_is_cut_and_marked_wherever_it_comes_from() {
        let long = "x".repeat(2000);
        for record in [
            LogRecord {
                body: Some(AnyValue {
                    value: Some(s(&long)),
                }),
                ..Default::default()
            },
            LogRecord {
                body: Some(AnyValue {
                    value: Some(s("short")),
                }),
                attributes: vec![kv("message", s(&long))],
                ..Default::default()
            },
        ] {
            let body = request(vec![record]).encode_to_vec();
            let evs = OtlpBody(Form::Protobuf)
                .decode(&body, limits(), &mut |_| true)
                .unwrap();
            assert_eq!(evs[0].message.len(), 1000);
            assert!(evs[0].is_truncated());
        }
    }

    #[test]
    fn a_record_keeps_its_fields_attributes_and_trace() {
        let record = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: Some(AnyValue {
                value: Some(s("payment failed")),
            }),
            attributes: vec![
                kv("http.status_code", any_value::Value::IntValue(502)),
                kv("deployment.environment", s("canary")),
            ],
            trace_id: (1..=16).collect(),
            span_id: vec![0, 0, 0, 0, 0, 0, 1, 2],
            ..Default::default()
        };
        let body = request(vec![record]).encode_to_vec();
        let evs = OtlpBody(Form::Protobuf)
            .decode(&body, limits(), &mut |_| true)
            .unwrap();
        let e = &evs[0];
        assert_eq!(e.message, "payment failed");
        assert_eq!(e.timestamp, 1_700_000_000_123);
        assert_eq!(e.status.as_deref(), Some("error"));
        assert_eq!(e.host.as_deref(), Some("web-1"));
        assert_eq!(e.service.as_deref(), Some("checkout"));
        assert_eq!(e.attributes["http.status_code"], 502);
        assert_eq!(e.attributes["deployment.environment"], "canary");
        assert_eq!(
            e.attributes["otel"]["trace_id"],
            "0102030405060708090a0b0c0d0e0f10"
        );
        assert_eq!(e.attributes["otel"]["span_id"], "0000000000000102");
        assert_eq!(e.attributes["otel"]["scope"]["name"], "app.logger");
        assert_eq!(e.attributes["dd"]["span_id"], "258");
        assert_eq!(
            e.attributes["dd"]["trace_id"],
            u64::from_be_bytes([9, 10, 11, 12, 13, 14, 15, 16]).to_string()
        );
        let (t, sp) = e.trace_ids();
        assert_eq!(t, (1..=16).collect::<Vec<u8>>());
        assert_eq!(sp, vec![0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn otlp_json_decodes_like_protobuf() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
          "scopeLogs":[{"logRecords":[{"timeUnixNano":"1700000000000000000","severityNumber":9,
          "body":{"kvlistValue":{"values":[{"key":"user","value":{"stringValue":"ann"}},{"key":"n","value":{"intValue":"3"}}]}},
          "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;
        let evs = OtlpBody(Form::Json)
            .decode(body, limits(), &mut |_| true)
            .unwrap();
        let e = &evs[0];
        assert_eq!(e.service.as_deref(), Some("api"));
        assert_eq!(e.status.as_deref(), Some("info"));
        assert_eq!(e.timestamp, 1_700_000_000_000);
        let structured: Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(structured, serde_json::json!({"user": "ann", "n": 3}));
        assert_eq!(
            e.attributes["otel"]["trace_id"],
            "5b8efff798038103d269b633813fc60c"
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_what_was_wrong() {
        let r = OtlpBody(Form::Protobuf)
            .decode(b"\xff\xff\xff", limits(), &mut |_| true)
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.to_string().contains("OTLP"), "{r}");
        let r = OtlpBody(Form::Json)
            .decode(b"{\"resourceLogs\": 5}", limits(), &mut |_| true)
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let many = request((0..11).map(|_| LogRecord::default()).collect()).encode_to_vec();
        let r = OtlpBody(Form::Protobuf)
            .decode(&many, limits(), &mut |_| true)
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(grpc_code(&Refusal::Busy), tonic::Code::Unavailable);
        assert_eq!(
            grpc_code(&Refusal::UnknownKey),
            tonic::Code::PermissionDenied
        );
    }
}
