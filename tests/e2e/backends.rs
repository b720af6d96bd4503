//! The backend types against test doubles that check their wire formats:
//! Elasticsearch `_bulk` (action lines, per-item errors), Splunk HEC,
//! OTLP/HTTP logs (protobuf decoded with the opentelemetry-proto definitions)
//! and Loki push.
use crate::harness::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::{json, Value};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the double saw it: path, headers, body decompressed.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

type Answer = Arc<dyn Fn(usize, &Seen) -> (u16, Vec<u8>) + Send + Sync>;

/// A backend double: records every request and answers with `answer(request number, request)`.
#[derive(Clone)]
struct Double {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Double {
    async fn start(answer: Answer) -> (Double, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let d = Double {
            seen: Arc::default(),
        };
        let me = d.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (me, answer) = (me.clone(), answer.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (me, answer) = (me.clone(), answer.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let raw = body.collect().await.unwrap().to_bytes();
                            let body = match parts
                                .headers
                                .get("content-encoding")
                                .map(|v| v.to_str().unwrap())
                            {
                                Some("gzip") => {
                                    let mut out = Vec::new();
                                    flate2::read::MultiGzDecoder::new(&raw[..])
                                        .read_to_end(&mut out)
                                        .unwrap();
                                    out
                                }
                                Some(other) => panic!("unexpected content-encoding {other}"),
                                None => raw.to_vec(),
                            };
                            let seen = Seen {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let n = {
                                let mut all = me.seen.lock().unwrap();
                                all.push(seen.clone());
                                all.len() - 1
                            };
                            let (status, body) = answer(n, &seen);
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (d, addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn weir_for(backend: &str) -> String {
    routed_config(
        &format!(
            "  - name: out\n{backend}    batch: {{max_wait: 50ms}}\n    retry: {{initial_backoff: 20ms, max_backoff: 200ms}}\n"
        ),
        "",
        "  - {name: acme, api_keys: [agent-key], backend: out}\n",
    )
}

async fn send(weir: &Weir, logs: Value) {
    let r = post(
        &weir.url("/api/v2/logs"),
        &[("DD-API-KEY", "agent-key")],
        serde_json::to_vec(&logs).unwrap(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
}

fn logs(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"message": format!("line {i}"), "hostname": "web-1", "service": "nginx",
                           "ddsource": "nginx", "status": "error", "ddtags": "env:prod",
                           "timestamp": 1_700_000_000_000i64 + i as i64, "http": {"status_code": 500 + i}}))
            .collect(),
    )
}

/// An Elasticsearch `_bulk` answer: `item(i)` for each of the request's documents.
fn bulk_answer(seen: &Seen, errors: bool, item: impl Fn(usize) -> Value) -> (u16, Vec<u8>) {
    let docs = seen
        .body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
        / 2;
    let items: Vec<Value> = (0..docs).map(item).collect();
    (
        200,
        serde_json::to_vec(&json!({"took": 3, "errors": errors, "items": items})).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_items_failing_are_retried_or_dead_lettered_one_by_one() {
    // First _bulk: item 0 refused (400, mapping), item 1 throttled (429), the rest created.
    let answer: Answer = Arc::new(|n, seen: &Seen| {
        bulk_answer(seen, n == 0, |i| match (n, i) {
            (0, 0) => {
                json!({"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse [http.status_code]"}}})
            }
            (0, 1) => {
                json!({"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}})
            }
            _ => json!({"create": {"status": 201, "result": "created"}}),
        })
    });
    let (es, addr) = Double::start(answer).await;
    let weir = Weir::start(&weir_for(&format!(
        "    type: elasticsearch\n    endpoint: http://{addr}\n    index: \"logs-%Y.%m.%d\"\n"
    )))
    .await;
    send(&weir, logs(5)).await;
    eventually(
        Duration::from_secs(20),
        "the throttled item sent again",
        || (es.requests().len() >= 2).then_some(()),
    )
    .await;
    let reqs = es.requests();
    assert!(reqs.iter().all(|r| r.path == "/_bulk"));
    assert_eq!(reqs[0].headers["content-type"], "application/x-ndjson");
    // The wire format: an action line naming the index, then the document.
    let lines: Vec<Value> = reqs[0]
        .body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for pair in lines.chunks(2) {
        assert_eq!(pair[0], json!({"create": {"_index": "logs-2023.11.14"}}));
        assert!(pair[1]["@timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20."));
        assert_eq!(pair[1]["service"], "nginx");
    }
    // Only the throttled document is sent again.
    let again: Vec<Value> = reqs[1]
        .body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(again.len(), 2);
    assert_eq!(again[1]["message"], "line 1");
    // The refused one is a dead letter, not retried.
    let dead = "weir_dead_lettered_events_total{backend=\"out\",status=\"400\",tenant=\"acme\"}";
    eventually(
        Duration::from_secs(10),
        "the refused item dead-lettered",
        || {
            let (letters, _) = read_archive(&weir.archive_root().join("dead-letter"));
            (letters.len() == 1).then_some(())
        },
    )
    .await;
    let (letters, objects) = read_archive(&weir.archive_root().join("dead-letter"));
    assert_eq!(letters[0]["message"], "line 0");
    assert!(objects[0].ends_with("-out-400.ndjson.gz"), "{objects:?}");
    assert_eq!(metric(&weir.metrics().await, dead), 1.0);
    // Once the proxy drained, nothing else was sent: the refused item is not retried.
    let mut weir = weir;
    assert!(weir.terminate().success());
    assert_eq!(es.requests().len(), 2, "nothing else is retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_gets_token_authorized_events() {
    let (hec, addr) = Double::start(Arc::new(|_, _| {
        (200, br#"{"text":"Success","code":0}"#.to_vec())
    }))
    .await;
    let weir = Weir::start(&weir_for(&format!(
        "    type: splunk_hec\n    endpoint: http://{addr}\n    token: hec-token-123\n    index: main\n"
    )))
    .await;
    send(&weir, logs(3)).await;
    eventually(Duration::from_secs(10), "a HEC request", || {
        (!hec.requests().is_empty()).then_some(())
    })
    .await;
    let r = &hec.requests()[0];
    assert_eq!(r.path, "/services/collector/event");
    assert_eq!(r.headers["authorization"], "Splunk hec-token-123");
    assert_eq!(r.headers["content-encoding"], "gzip");
    let events: Vec<Value> = serde_json::Deserializer::from_slice(&r.body)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["time"], json!(1_700_000_000.0));
    assert_eq!(events[0]["host"], "web-1");
    assert_eq!(events[0]["source"], "nginx");
    assert_eq!(events[0]["sourcetype"], "_json");
    assert_eq!(events[0]["index"], "main");
    assert_eq!(events[2]["event"]["message"], "line 2");
    assert_eq!(events[2]["event"]["http"]["status_code"], 502);
    assert!(
        !weir.log().contains("hec-token-123"),
        "the token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_arrive_as_protobuf_the_opentelemetry_definitions_decode() {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let (otlp, addr) = Double::start(Arc::new(|_, _| {
        (200, ExportLogsServiceResponse::default().encode_to_vec())
    }))
    .await;
    let weir = Weir::start(&weir_for(&format!(
        "    type: otlp\n    endpoint: http://{addr}\n    compression: none\n"
    )))
    .await;
    send(&weir, logs(2)).await;
    eventually(Duration::from_secs(10), "an OTLP request", || {
        (!otlp.requests().is_empty()).then_some(())
    })
    .await;
    let r = &otlp.requests()[0];
    assert_eq!(r.path, "/v1/logs");
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    let req = ExportLogsServiceRequest::decode(r.body.as_slice())
        .expect("a valid ExportLogsServiceRequest");
    assert_eq!(req.resource_logs.len(), 1);
    let res = req.resource_logs[0].resource.as_ref().unwrap();
    let attr = |k: &str| {
        res.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(attr("service.name"), Some(Any::StringValue("nginx".into())));
    assert_eq!(attr("host.name"), Some(Any::StringValue("web-1".into())));
    let records = &req.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].time_unix_nano, 1_700_000_000_001_000_000);
    assert_eq!(
        (
            records[1].severity_text.as_str(),
            records[1].severity_number
        ),
        ("error", 17)
    );
    assert_eq!(
        records[1].body.as_ref().unwrap().value,
        Some(Any::StringValue("line 1".into()))
    );
    let http = records[1]
        .attributes
        .iter()
        .find(|a| a.key == "http")
        .unwrap();
    let Some(Any::KvlistValue(kv)) = http.value.as_ref().unwrap().value.clone() else {
        panic!("http is a key-value list: {http:?}")
    };
    assert_eq!(kv.values[0].key, "status_code");
    assert_eq!(
        kv.values[0].value.as_ref().unwrap().value,
        Some(Any::IntValue(501))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_gets_labelled_streams_in_time_order() {
    let (loki, addr) = Double::start(Arc::new(|_, _| (204, Vec::new()))).await;
    let weir = Weir::start(&weir_for(&format!(
        "    type: loki\n    endpoint: http://{addr}\n    labels: [service, status]\n"
    )))
    .await;
    send(&weir, logs(3)).await;
    eventually(Duration::from_secs(10), "a Loki push", || {
        (!loki.requests().is_empty()).then_some(())
    })
    .await;
    let r = &loki.requests()[0];
    assert_eq!(r.path, "/loki/api/v1/push");
    assert_eq!(r.headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let streams = v["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        streams[0]["stream"],
        json!({"tenant": "acme", "service": "nginx", "status": "error"})
    );
    let values = streams[0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 3);
    assert_eq!(values[0][0], "1700000000000000000");
    let line: Value = serde_json::from_str(values[2][1].as_str().unwrap()).unwrap();
    assert_eq!(line["message"], "line 2");
    // Counted once the answer is in, after the double has the batch.
    let forwarded = "weir_forwarded_events_total{backend=\"out\",tenant=\"acme\"}";
    let m = weir.metrics_once(forwarded, 3.0).await;
    assert_eq!(metric(&m, forwarded), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_partial_success_rejections_are_counted_as_dropped() {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    // The receiver takes the batch but says it rejected one record, without saying which.
    let (otlp, addr) = Double::start(Arc::new(|_, _| {
        let answer = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 1,
                error_message: "record 2: body too large".into(),
            }),
        };
        (200, answer.encode_to_vec())
    }))
    .await;
    let weir = Weir::start(&weir_for(&format!(
        "    type: otlp\n    endpoint: http://{addr}\n    compression: none\n"
    )))
    .await;
    send(&weir, logs(3)).await;
    let dropped =
        "weir_backend_dropped_events_total{backend=\"out\",reason=\"partial_success\",tenant=\"acme\"}";
    eventually(Duration::from_secs(10), "the rejection counted", || {
        (!otlp.requests().is_empty()).then_some(())
    })
    .await;
    // Dropped is counted just before forwarded, both once the answer is in.
    let forwarded = "weir_forwarded_events_total{backend=\"out\",tenant=\"acme\"}";
    let m = weir.metrics_once(forwarded, 2.0).await;
    assert_eq!(metric(&m, dropped), 1.0, "{m}");
    assert_eq!(metric(&m, forwarded), 2.0, "{m}");
    assert_eq!(
        otlp.requests().len(),
        1,
        "not retried: the answer was a success"
    );
    assert!(weir.log().contains("record 2: body too large"));
}

/// json-parse copies a line's keys into attributes; keys named like Datadog's
/// reserved fields (`message`, `service`, `ddtags: 5`) must become the fields,
/// reach every backend type once, decodable, and the archive with each key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_setting_reserved_fields_reaches_every_backend_type_and_the_archive() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
    let created = |_: usize, seen: &Seen| {
        bulk_answer(
            seen,
            false,
            |_| json!({"create": {"status": 201, "result": "created"}}),
        )
    };
    let doubles: Vec<(&str, Answer)> = vec![
        ("datadog", Arc::new(|_, _| (202, b"{}".to_vec()))),
        ("http", Arc::new(|_, _| (200, b"{}".to_vec()))),
        ("elasticsearch", Arc::new(created)),
        (
            "splunk_hec",
            Arc::new(|_, _| (200, br#"{"text":"Success","code":0}"#.to_vec())),
        ),
        (
            "otlp",
            Arc::new(|_, _| (200, ExportLogsServiceResponse::default().encode_to_vec())),
        ),
        ("loki", Arc::new(|_, _| (204, Vec::new()))),
    ];
    let plugin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/target/wasm32-wasip1/release/json_parse.wasm"
    );
    let mut backends = String::new();
    let mut tenants = String::new();
    let mut started = Vec::new();
    for (kind, answer) in doubles {
        let (d, addr) = Double::start(answer).await;
        let extra = match kind {
            "http" => format!("url: \"http://{addr}/ingest\""),
            "splunk_hec" => format!("endpoint: \"http://{addr}\", token: hec-token"),
            _ => format!("endpoint: \"http://{addr}\""),
        };
        backends +=
            &format!("  - {{name: {kind}, type: {kind}, {extra}, batch: {{max_wait: 100ms}}}}\n");
        started.push((kind, d));
    }
    backends +=
        "  - {name: file, type: file, path: \"{DIR}/sink.ndjson\", batch: {max_wait: 100ms}}\n";
    for kind in [
        "datadog",
        "http",
        "elasticsearch",
        "splunk_hec",
        "otlp",
        "loki",
        "file",
    ] {
        tenants += &format!(
            "  - {{name: t-{kind}, api_keys: [key-{kind}], backend: {kind}, upstream_api_key: up, plugins: [{{name: json, path: \"{plugin}\"}}]}}\n"
        );
    }
    let mut weir = Weir::start(&routed_config(&backends, "", &tenants)).await;
    let line = json!([{"message": r#"{"message":"parsed","service":"svc","ddtags":5,"level":"warn"}"#, "service": "agent"}]);
    for kind in [
        "datadog",
        "http",
        "elasticsearch",
        "splunk_hec",
        "otlp",
        "loki",
        "file",
    ] {
        let key = format!("key-{kind}");
        let r = post(
            &weir.url("/api/v2/logs"),
            &[("DD-API-KEY", key.as_str())],
            serde_json::to_vec(&line).unwrap(),
        )
        .await;
        assert_eq!(r.status, 202, "{kind}: {}", r.text());
    }
    for (kind, d) in &started {
        eventually(Duration::from_secs(20), kind, || {
            (!d.requests().is_empty()).then_some(())
        })
        .await;
    }
    assert!(weir.terminate().success(), "{}", weir.log());
    assert!(!weir.log().contains("panicked"), "{}", weir.log());
    for (kind, d) in &started {
        let reqs = d.requests();
        assert_eq!(reqs.len(), 1, "{kind}: delivered once");
        let body = String::from_utf8_lossy(&reqs[0].body).into_owned();
        match *kind {
            // Protobuf: the body and service are there, as text.
            "otlp" => assert!(
                body.contains("parsed") && body.contains("svc"),
                "{kind}: {body}"
            ),
            _ => {
                assert!(body.contains("parsed"), "{kind}: {body}");
                assert!(
                    !body.contains("\"agent\""),
                    "{kind}: the plugin's service wins: {body}"
                );
            }
        }
    }
    let sink = std::fs::read_to_string(weir.dir.path().join("sink.ndjson")).unwrap();
    let ev: Value = serde_json::from_str(sink.lines().next().unwrap()).unwrap();
    assert_eq!(ev["message"], "parsed");
    assert_eq!(ev["service"], "svc");
    assert_eq!(ev["level"], "warn");
    assert_eq!(ev["weir"]["invalid_ddtags"], 5);
    assert_eq!(
        sink.lines().next().unwrap().matches("\"service\"").count(),
        1
    );
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(archived.len(), 7);
    for e in &archived {
        assert_eq!(e["message"], "parsed");
        assert_eq!(e["service"], "svc");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_bulk_answer_is_a_failed_send_not_a_delivery() {
    // First answer: 200 with a body that is not a _bulk answer (a proxy's error page);
    // then a proper one.
    let answer: Answer = Arc::new(|n, seen: &Seen| {
        if n == 0 {
            return (200, b"<html>gateway hiccup</html>".to_vec());
        }
        bulk_answer(
            seen,
            false,
            |_| json!({"create": {"status": 201, "result": "created"}}),
        )
    });
    let (es, addr) = Double::start(answer).await;
    let mut weir = Weir::start(&weir_for(&format!(
        "    type: elasticsearch\n    endpoint: http://{addr}\n"
    )))
    .await;
    send(&weir, logs(3)).await;
    eventually(Duration::from_secs(20), "the batch sent again", || {
        (es.requests().len() >= 2).then_some(())
    })
    .await;
    assert!(weir.terminate().success());
    assert_eq!(es.requests().len(), 2, "sent again once, then delivered");
    assert_eq!(es.requests()[0].body, es.requests()[1].body);
    let log = weir.log();
    assert!(
        log.contains("could not be read") || log.contains("unreadable _bulk answer"),
        "{log}"
    );
}

// Issue 11: a 2xx that does not account for every document is no delivery.
// Elasticsearch answers `_bulk` with one item per action, always; an answer
// without them (`{}`, a proxy's JSON) or with fewer says nothing of the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_answer_without_an_item_per_document_is_a_failed_send_not_a_delivery() {
    let answer: Answer = Arc::new(|n, seen: &Seen| {
        match n {
        0 => (200, b"{}".to_vec()),
        // errors: true, and an item for the first document only.
        1 => (
            200,
            serde_json::to_vec(&json!({"took": 1, "errors": true, "items": [
                {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}}
            ]}))
            .unwrap(),
        ),
        2 => (200, br#"{"took": 1, "errors": false, "items": []}"#.to_vec()),
        _ => bulk_answer(
            seen,
            false,
            |_| json!({"create": {"status": 201, "result": "created"}}),
        ),
    }
    });
    let (es, addr) = Double::start(answer).await;
    let mut weir = Weir::start(&weir_for(&format!(
        "    type: elasticsearch\n    endpoint: http://{addr}\n"
    )))
    .await;
    send(&weir, logs(3)).await;
    let m = eventually(Duration::from_secs(20), "the batch delivered", || {
        let m = futures::executor::block_on(weir.metrics());
        (metric(
            &m,
            "weir_forwarded_events_total{backend=\"out\",tenant=\"acme\"}",
        ) >= 3.0)
            .then_some(m)
    })
    .await;
    assert!(weir.terminate().success());
    let requests = es.requests();
    assert_eq!(
        requests.len(),
        4,
        "sent whole until an answer named every document"
    );
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    assert_eq!(
        metric(
            &m,
            "weir_forwarded_events_total{backend=\"out\",tenant=\"acme\"}"
        ),
        3.0,
        "counted delivered once, when the answer said so"
    );
    let log = weir.log();
    assert!(log.contains("items"), "says what was wrong: {log}");
}

/// OTLP in, OTLP out: a record's trace and span ids, taken in over OTLP/HTTP,
/// reach the OTLP backend in the record's own fields, with its body,
/// severity and resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_in_otlp_out_keeps_the_trace_and_span_ids() {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    let (otlp, addr) = Double::start(Arc::new(|_, _| {
        (200, ExportLogsServiceResponse::default().encode_to_vec())
    }))
    .await;
    let weir = Weir::start(&weir_for(&format!(
        "    type: otlp\n    endpoint: http://{addr}\n    compression: none\n"
    )))
    .await;
    let string = |s: &str| AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(string("billing")),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_000,
                    severity_number: 13,
                    body: Some(string("card declined")),
                    trace_id: vec![0xab; 16],
                    span_id: vec![0xcd; 8],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = post(
        &weir.url("/v1/logs"),
        &[
            ("Authorization", "Bearer agent-key"),
            ("Content-Type", "application/x-protobuf"),
        ],
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    let answer = ExportLogsServiceResponse::decode(r.body.clone()).unwrap();
    assert_eq!(answer.partial_success, None);
    eventually(Duration::from_secs(10), "an OTLP export", || {
        (!otlp.requests().is_empty()).then_some(())
    })
    .await;
    let sent = ExportLogsServiceRequest::decode(&otlp.requests()[0].body[..]).unwrap();
    let rl = &sent.resource_logs[0];
    let service = rl
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name");
    assert_eq!(service.unwrap().value, Some(string("billing")));
    let record = &rl.scope_logs[0].log_records[0];
    assert_eq!(record.trace_id, vec![0xab; 16]);
    assert_eq!(record.span_id, vec![0xcd; 8]);
    assert_eq!(record.body, Some(string("card declined")));
    assert_eq!(record.severity_number, 13);
    assert_eq!(record.time_unix_nano, 1_700_000_000_000_000_000);
}
