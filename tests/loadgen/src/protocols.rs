//! The same generated events in each intake protocol's own form, so events/s
//! can be compared across protocols: a Datadog body is built first (see
//! `events`) and each of its events rendered again in the protocol's shape,
//! with the same message, time, host, service, status and attributes.
use serde_json::{json, Map, Value};
use std::fmt::Write;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `POST /api/v2/logs`, a JSON array.
    Datadog,
    /// `POST /v1/input`, NDJSON.
    Input,
    /// `POST /v1/logs`, OTLP JSON: one resource (the first event's host and
    /// service) per request, as one SDK process exports.
    Otlp,
    /// `POST /services/collector/event`, HEC objects concatenated.
    Hec,
    /// `POST /_bulk`, a `create` action line before each document (ECS fields).
    Elasticsearch,
    /// RFC 5424 lines over TCP (a `syslog` listener).
    Syslog,
    /// Fluent forward, Forward mode with a chunk id, each answered with its ack
    /// before the next (Fluent Bit's `require_ack_response on`).
    Fluent,
}

/// How an HTTP protocol's requests are sent.
pub struct HttpForm {
    pub path: &'static str,
    pub content_type: &'static str,
    /// (header, value prefix before the key).
    pub auth: (&'static str, &'static str),
    /// Takes `?ddtags=weir_req:N` (the per-request loss check).
    pub tags_in_query: bool,
}

impl Protocol {
    pub fn is_stream(self) -> bool {
        matches!(self, Protocol::Syslog | Protocol::Fluent)
    }

    pub fn http(self) -> Option<HttpForm> {
        let form = |path, content_type, auth, tags_in_query| {
            Some(HttpForm {
                path,
                content_type,
                auth,
                tags_in_query,
            })
        };
        match self {
            Protocol::Datadog => form("/api/v2/logs", "application/json", ("dd-api-key", ""), true),
            Protocol::Input => form(
                "/v1/input",
                "application/x-ndjson",
                ("dd-api-key", ""),
                true,
            ),
            Protocol::Otlp => form(
                "/v1/logs",
                "application/json",
                ("authorization", "Bearer "),
                false,
            ),
            Protocol::Hec => form(
                "/services/collector/event",
                "application/json",
                ("authorization", "Splunk "),
                false,
            ),
            Protocol::Elasticsearch => form(
                "/_bulk",
                "application/x-ndjson",
                ("authorization", "Bearer "),
                false,
            ),
            Protocol::Syslog | Protocol::Fluent => None,
        }
    }

    /// A Datadog JSON array of events, as this protocol's body.
    pub fn render(self, datadog_body: &str, chunk: &str) -> Vec<u8> {
        if self == Protocol::Datadog {
            return datadog_body.as_bytes().to_vec();
        }
        let events: Vec<Map<String, Value>> =
            serde_json::from_str(datadog_body).expect("the generator's own JSON");
        match self {
            Protocol::Datadog => unreachable!(),
            Protocol::Input => lines(events.iter().map(|e| serde_json::to_string(e).unwrap())),
            Protocol::Otlp => otlp(&events),
            Protocol::Hec => events.iter().map(hec).collect::<String>().into_bytes(),
            Protocol::Elasticsearch => lines(
                events
                    .iter()
                    .flat_map(|e| [r#"{"create":{"_index":"logs"}}"#.to_string(), bulk_doc(e)]),
            ),
            Protocol::Syslog => lines(events.iter().map(syslog)),
            Protocol::Fluent => forward(&events, chunk),
        }
    }
}

fn lines(it: impl Iterator<Item = String>) -> Vec<u8> {
    let mut out = String::new();
    for l in it {
        out.push_str(&l);
        out.push('\n');
    }
    out.into_bytes()
}

fn s<'a>(e: &'a Map<String, Value>, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or("")
}

fn ms(e: &Map<String, Value>) -> i64 {
    e.get("timestamp").and_then(Value::as_i64).unwrap_or(0)
}

/// What is not a reserved field: the event's own attributes.
fn attributes(e: &Map<String, Value>) -> Map<String, Value> {
    let reserved = [
        "message",
        "status",
        "timestamp",
        "hostname",
        "service",
        "ddsource",
        "ddtags",
    ];
    e.iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn otlp(events: &[Map<String, Value>]) -> Vec<u8> {
    let kv = |k: &str, v: Value| json!({"key": k, "value": v});
    let first = &events[0];
    let records: Vec<Value> = events
        .iter()
        .map(|e| {
            let severity = match s(e, "status") {
                "debug" => 5,
                "warn" => 13,
                "error" => 17,
                _ => 9,
            };
            let attrs: Vec<Value> = attributes(e)
                .into_iter()
                .map(|(k, v)| match v {
                    Value::Number(n) => kv(&k, json!({"intValue": n.to_string()})),
                    Value::Object(o) => kv(
                        &k,
                        json!({"kvlistValue": {"values": o.iter().map(|(k, v)| kv(k, json!({"intValue": v.to_string()}))).collect::<Vec<_>>()}}),
                    ),
                    other => kv(&k, json!({"stringValue": other.to_string()})),
                })
                .collect();
            json!({
                "timeUnixNano": (ms(e) * 1_000_000).to_string(),
                "severityNumber": severity,
                "severityText": s(e, "status").to_uppercase(),
                "body": {"stringValue": s(e, "message")},
                "attributes": attrs,
            })
        })
        .collect();
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [
            kv("service.name", json!({"stringValue": s(first, "service")})),
            kv("host.name", json!({"stringValue": s(first, "hostname")})),
        ]},
        "scopeLogs": [{"scope": {"name": "weir-loadgen"}, "logRecords": records}],
    }]});
    serde_json::to_vec(&body).unwrap()
}

fn hec(e: &Map<String, Value>) -> String {
    let mut event = attributes(e);
    event.insert("message".into(), json!(s(e, "message")));
    event.insert("status".into(), json!(s(e, "status")));
    event.insert("service".into(), json!(s(e, "service")));
    let obj = json!({
        "time": ms(e) as f64 / 1000.0,
        "host": s(e, "hostname"),
        "source": s(e, "ddsource"),
        "event": event,
    });
    serde_json::to_string(&obj).unwrap()
}

fn bulk_doc(e: &Map<String, Value>) -> String {
    let mut doc = attributes(e);
    let at = chrono_like_iso(ms(e));
    doc.insert("@timestamp".into(), json!(at));
    doc.insert("message".into(), json!(s(e, "message")));
    doc.insert("host".into(), json!({"name": s(e, "hostname")}));
    doc.insert("service".into(), json!({"name": s(e, "service")}));
    doc.insert("log".into(), json!({"level": s(e, "status")}));
    serde_json::to_string(&doc).unwrap()
}

/// RFC 3339 UTC with milliseconds, from ms since the epoch (no date crate needed).
fn chrono_like_iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = String::new();
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    );
    out
}

fn syslog(e: &Map<String, Value>) -> String {
    let severity = match s(e, "status") {
        "debug" => 7,
        "warn" => 4,
        "error" => 3,
        _ => 6,
    };
    // local0 (16).
    format!(
        "<{}>1 {} {} {} - - - {}",
        16 * 8 + severity,
        chrono_like_iso(ms(e)),
        s(e, "hostname"),
        s(e, "service"),
        s(e, "message")
    )
}

fn forward(events: &[Map<String, Value>], chunk: &str) -> Vec<u8> {
    let entries: Vec<Value> = events.iter().map(|e| json!([ms(e) / 1000, e])).collect();
    let message = json!(["loadgen", entries, {"chunk": chunk, "size": events.len()}]);
    rmp_serde::to_vec(&message).expect("msgpack of JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        assert_eq!(
            chrono_like_iso(1_796_245_200_123),
            "2026-12-02T21:00:00.123Z"
        );
        assert_eq!(chrono_like_iso(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_form_renders() {
        let body = r#"[{"message":"GET /x 200","status":"warn","timestamp":1796245200123,"hostname":"web-1","service":"cart","ddsource":"nginx","ddtags":"env:prod","http":{"status_code":404},"duration_ms":12}]"#;
        let syslog = String::from_utf8(Protocol::Syslog.render(body, "c")).unwrap();
        assert_eq!(
            syslog,
            "<132>1 2026-12-02T21:00:00.123Z web-1 cart - - - GET /x 200\n"
        );
        let bulk = String::from_utf8(Protocol::Elasticsearch.render(body, "c")).unwrap();
        assert!(bulk.starts_with("{\"create\""), "{bulk}");
        assert!(bulk.contains("\"log\":{\"level\":\"warn\"}"), "{bulk}");
        let otlp: Value = serde_json::from_slice(&Protocol::Otlp.render(body, "c")).unwrap();
        let rec = &otlp["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["body"]["stringValue"], "GET /x 200");
        let hec: Value = serde_json::from_slice(&Protocol::Hec.render(body, "c")).unwrap();
        assert_eq!(hec["event"]["http"]["status_code"], 404);
        let fwd: Value = rmp_serde::from_slice(&Protocol::Fluent.render(body, "c-1")).unwrap();
        assert_eq!(fwd[2]["chunk"], "c-1");
    }
}
