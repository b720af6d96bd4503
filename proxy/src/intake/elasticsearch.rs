//! Elasticsearch's `_bulk` API, as Filebeat, Logstash, Fluent Bit's `es`
//! output, Vector's `elasticsearch` sink and the Elasticsearch clients'
//! bulk helpers send logs: `POST /_bulk` or `/{index}/_bulk`, NDJSON of an
//! action line (`index` or `create`) and a document line per event. Each
//! item is answered in Elasticsearch's form (`{"took":..,"errors":..,
//! "items":[..]}`): `update` and `delete` (logs are appended, not changed)
//! and documents that are not JSON objects fail alone, with status 400, and
//! the rest are taken. The few endpoints those clients probe at start are
//! answered well enough for them to proceed: `GET /` (cluster info),
//! `/_license`, `/_cluster/health`, and index templates, ILM policies and
//! ingest pipelines (acknowledged, not kept). Every answer carries
//! `X-Elastic-Product: Elasticsearch`, which the official clients require.
//!
//! The key: `Authorization: ApiKey <base64 id:key>` (the key part), Basic
//! auth's password, or a bearer token. A document reads as a Datadog log
//! object, and Elasticsearch's usual fields fill what it does not say:
//! `@timestamp` the timestamp, `host.name` the host, `service.name` the
//! service (its other keys kept as `service.<key>`), `log.level` the status;
//! the index is kept as `index`.
use super::core::Decode;
use super::http::{json_response, Answer, Endpoint, HttpProtocol};
use super::Refusal;
use crate::event::{parse_timestamp, Event, Intake, PayloadLimits};
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};

/// The Elasticsearch version Weir answers as: what the 8.x clients, Filebeat
/// and Logstash check for.
const VERSION: &str = "8.17.0";

pub struct Elasticsearch;

/// One `_bulk` request's body: its default index, and where the per-item
/// results go for the answer.
pub struct BulkBody {
    index: Option<String>,
    items: Arc<Mutex<Vec<Item>>>,
}

/// The per-item results of a bulk request, left in its head for the answer.
#[derive(Clone)]
struct Items(Arc<Mutex<Vec<Item>>>);

/// One item's result, written into the answer as Elasticsearch writes it
/// (`{"create": {"_index":..,"_id":..,"status":201,..}}`) when the request is
/// answered: kept this small, a bulk of 500 costs a tenth of what one JSON
/// value per item did.
#[derive(Debug, Clone)]
struct Item {
    action: String,
    index: String,
    id: Option<String>,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// Taken as the `seq`th event; without an `_id`, one is made from the
    /// arrival time and `seq`.
    Created {
        seq: usize,
        received_at_ms: i64,
    },
    Refused {
        kind: &'static str,
        reason: String,
    },
}

impl Item {
    fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Refused { .. })
    }
}

impl serde::Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Result<'a>(&'a Item);
        impl serde::Serialize for Result<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let it = self.0;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("_index", &it.index)?;
                match &it.outcome {
                    Outcome::Created {
                        seq,
                        received_at_ms,
                    } => {
                        match &it.id {
                            Some(id) => m.serialize_entry("_id", id)?,
                            None => {
                                m.serialize_entry("_id", &format!("{received_at_ms:x}{seq:06x}"))?
                            }
                        }
                        m.serialize_entry("_version", &1)?;
                        m.serialize_entry("result", "created")?;
                        m.serialize_entry("_shards", &Shards)?;
                        m.serialize_entry("_seq_no", seq)?;
                        m.serialize_entry("_primary_term", &1)?;
                        m.serialize_entry("status", &201)?;
                    }
                    Outcome::Refused { kind, reason } => {
                        m.serialize_entry("_id", &it.id)?;
                        m.serialize_entry("status", &400)?;
                        m.serialize_entry("error", &Error { kind, reason })?;
                    }
                }
                m.end()
            }
        }
        #[derive(serde::Serialize)]
        struct Error<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            reason: &'a str,
        }
        struct Shards;
        impl serde::Serialize for Shards {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("total", &1)?;
                m.serialize_entry("successful", &1)?;
                m.serialize_entry("failed", &0)?;
                m.end()
            }
        }
        let mut outer = s.serialize_map(Some(1))?;
        outer.serialize_entry(&self.action, &Result(self))?;
        outer.end()
    }
}

impl HttpProtocol for Elasticsearch {
    const INTAKE: Intake = Intake::Elasticsearch;
    const KEY_HINT: &'static str = "send it as Authorization: ApiKey <key>";
    type Body = BulkBody;
    const TAKES_PUT: bool = true;

    fn endpoint(&self, method: &Method, path: &str) -> Option<Endpoint> {
        if path == "/_bulk" || path.ends_with("/_bulk") {
            return Some(Endpoint::Submit);
        }
        let probe = path == "/"
            || ["/_license", "/_cluster/health", "/_xpack", "/_nodes"]
                .iter()
                .any(|p| path.starts_with(p))
            || is_setup(path);
        (probe && method != Method::DELETE).then_some(Endpoint::KeyCheck)
    }

    fn key(&self, head: &Parts) -> Option<String> {
        let auth = head.headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, value) = auth.split_once(' ')?;
        let value = value.trim();
        let decoded = || {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()?;
            String::from_utf8(bytes).ok()
        };
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Some(value.to_string()),
            // `id:key`; a bare key is taken as it is.
            "apikey" => Some(match decoded() {
                Some(d) => d.split_once(':').map_or(d.clone(), |(_, k)| k.to_string()),
                None => value.to_string(),
            }),
            "basic" => decoded()?.split_once(':').map(|(_, p)| p.to_string()),
            _ => None,
        }
    }

    fn body(&self, head: &mut Parts) -> Result<BulkBody, Refusal> {
        let path = head.uri.path();
        let index = path
            .strip_suffix("/_bulk")
            .map(|i| i.trim_start_matches('/'))
            .filter(|i| !i.is_empty())
            .map(str::to_string);
        let items = Arc::new(Mutex::new(Vec::new()));
        head.extensions.insert(Items(items.clone()));
        Ok(BulkBody { index, items })
    }

    fn accepted(&self, endpoint: Endpoint, head: &Parts) -> Answer {
        if endpoint == Endpoint::Submit {
            let items = head
                .extensions
                .get::<Items>()
                .map(|i| std::mem::take(&mut *i.0.lock().unwrap_or_else(|e| e.into_inner())))
                .unwrap_or_default();
            let errors = items.iter().any(Item::failed);
            return answer(
                StatusCode::OK,
                json!({"took": 1, "errors": errors, "items": items}),
            );
        }
        probe(&head.method, head.uri.path())
    }

    fn refused(&self, r: &Refusal, _head: &Parts) -> Answer {
        let kind = match r.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "security_exception",
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                "es_rejected_execution_exception"
            }
            StatusCode::PAYLOAD_TOO_LARGE => "content_too_long_exception",
            _ => "illegal_argument_exception",
        };
        // Elasticsearch answers a full queue with 429, which every client retries.
        let status = match r.status() {
            StatusCode::SERVICE_UNAVAILABLE => StatusCode::TOO_MANY_REQUESTS,
            s => s,
        };
        let reason = r.to_string();
        let mut a = answer(
            status,
            json!({"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
                   "status": status.as_u16()}),
        );
        if let Some(secs) = r.retry_after() {
            a.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        a
    }
}

/// Setting-up calls Filebeat, Logstash and Vector make: acknowledged, not kept.
fn is_setup(path: &str) -> bool {
    [
        "/_index_template",
        "/_template",
        "/_component_template",
        "/_ilm",
        "/_ingest/pipeline",
        "/_data_stream",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

fn probe(method: &Method, path: &str) -> Answer {
    match path {
        "/" => answer(
            StatusCode::OK,
            json!({
                "name": "weir", "cluster_name": "weir", "cluster_uuid": "weir-edge-proxy",
                "version": {"number": VERSION, "build_flavor": "default", "build_type": "weir",
                            "lucene_version": "9.12.0", "minimum_wire_compatibility_version": "7.17.0",
                            "minimum_index_compatibility_version": "7.0.0"},
                "tagline": "You Know, for Search"
            }),
        ),
        p if p.starts_with("/_license") => answer(
            StatusCode::OK,
            json!({"license": {"status": "active", "uid": "weir", "type": "basic", "mode": "basic"}}),
        ),
        p if p.starts_with("/_cluster/health") => answer(
            StatusCode::OK,
            json!({"cluster_name": "weir", "status": "green", "timed_out": false, "number_of_nodes": 1,
                   "number_of_data_nodes": 1, "active_shards_percent_as_number": 100.0}),
        ),
        p if is_setup(p) && (method == Method::PUT || method == Method::POST) => {
            answer(StatusCode::OK, json!({"acknowledged": true}))
        }
        // Not kept, so not found: a client that checks first then puts it.
        _ => answer(StatusCode::NOT_FOUND, json!({})),
    }
}

fn answer(status: StatusCode, body: Value) -> Answer {
    let mut a = json_response(
        status,
        Bytes::from(serde_json::to_vec(&body).expect("serializing to memory")),
    );
    a.headers_mut().insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    a
}

impl Decode for BulkBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        let mut events = Vec::new();
        let mut items = Vec::new();
        let mut lines = payload
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
        while let Some((n, line)) = lines.next() {
            let (action, meta) = action(line).ok_or_else(|| Refusal::InvalidPayload {
                format: "Elasticsearch bulk request",
                error: format!(
                    "malformed action/metadata line [{}]: expected an object naming one action",
                    n + 1
                ),
            })?;
            let index = meta
                .index
                .or_else(|| self.index.clone())
                .unwrap_or_default();
            let id = meta.id.as_ref().and_then(Value::as_str).map(str::to_string);
            // Every action but delete carries a document line.
            let doc = if action == "delete" {
                None
            } else {
                Some(
                    lines
                        .next()
                        .map(|(_, l)| l)
                        .ok_or_else(|| Refusal::InvalidPayload {
                            format: "Elasticsearch bulk request",
                            error: format!("the action on line [{}] has no document line", n + 1),
                        })?,
                )
            };
            let mut item = Item {
                action,
                index,
                id,
                outcome: Outcome::Refused {
                    kind: "illegal_argument_exception",
                    reason: String::new(),
                },
            };
            if item.action != "index" && item.action != "create" {
                item.outcome = Outcome::Refused {
                    kind: "illegal_argument_exception",
                    reason: format!(
                        "{} is not taken: logs are appended (index, create), not changed",
                        item.action
                    ),
                };
                items.push(item);
                continue;
            }
            let doc = doc.expect("index and create have a document");
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(doc) else {
                item.outcome = Outcome::Refused {
                    kind: "document_parsing_exception",
                    reason: "the document is not a JSON object".into(),
                };
                items.push(item);
                continue;
            };
            if events.len() == limits.max_events {
                return Err(Refusal::TooManyEvents {
                    max: limits.max_events,
                });
            }
            if !admit(events.len()) {
                return Err(Refusal::Busy);
            }
            let mut ev = event(fields, limits);
            if !item.index.is_empty() {
                ev.attributes
                    .entry("index")
                    .or_insert_with(|| Value::String(item.index.clone()));
            }
            item.outcome = Outcome::Created {
                seq: events.len(),
                received_at_ms: limits.received_at_ms,
            };
            events.push(ev);
            items.push(item);
        }
        *self.items.lock().unwrap_or_else(|e| e.into_inner()) = items;
        Ok(events)
    }
}

/// An action line's metadata: what Weir reads of it (the rest, `routing`,
/// `pipeline` and the like, is not used).
#[derive(serde::Deserialize, Default)]
struct Meta {
    #[serde(rename = "_index")]
    index: Option<String>,
    #[serde(rename = "_id")]
    id: Option<Value>,
}

/// An action line: `{"index": {...}}` and the like; its name and metadata.
fn action(line: &[u8]) -> Option<(String, Meta)> {
    let m: std::collections::BTreeMap<String, Option<Meta>> = serde_json::from_slice(line).ok()?;
    let mut it = m.into_iter();
    let (name, meta) = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some((name, meta.unwrap_or_default()))
}

/// A document as an event: Datadog's reserved names first, then Elasticsearch's usual fields.
fn event(mut fields: Map<String, Value>, limits: PayloadLimits) -> Event {
    let mut ev = Event::from_message(String::new(), limits.received_at_ms);
    // ECS's `service` is an object (`service.name`, `service.version`): the name
    // is the service, the rest kept under dotted names (`service` is reserved).
    if let Some(Value::Object(service)) = fields
        .get("service")
        .is_some_and(Value::is_object)
        .then(|| fields.remove("service"))
        .flatten()
    {
        for (k, v) in service {
            match (k.as_str(), v) {
                ("name", Value::String(name)) => ev.service = Some(name),
                (_, v) => {
                    fields.insert(format!("service.{k}"), v);
                }
            }
        }
    }
    ev.attributes = fields;
    ev.adopt_reserved_attributes();
    if let Some(ms) = ev.attributes.get("@timestamp").and_then(parse_timestamp) {
        ev.timestamp = ms;
    }
    let nested = |ev: &Event, a: &str, b: &str| {
        ev.attributes
            .get(a)
            .and_then(|v| v.get(b))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if ev.host.is_none() {
        ev.host = nested(&ev, "host", "name");
    }
    if ev.status.is_none() {
        ev.status = nested(&ev, "log", "level");
    }
    ev.limit_message(limits.max_log_bytes);
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_events: 10,
            max_log_bytes: 1000,
            received_at_ms: 42,
        }
    }

    fn decode(index: Option<&str>, body: &[u8]) -> (Result<Vec<Event>, Refusal>, Vec<Value>) {
        let items = Arc::new(Mutex::new(Vec::new()));
        let b = BulkBody {
            index: index.map(str::to_string),
            items: items.clone(),
        };
        let r = b.decode(body, limits(), &mut |_| true);
        let items = items.lock().unwrap().clone();
        (
            r,
            items
                .iter()
                .map(|i| serde_json::to_value(i).unwrap())
                .collect(),
        )
    }

    #[test]
    fn every_item_is_answered_and_the_good_ones_taken() {
        let body = br#"{"index":{"_index":"logs-a","_id":"1"}}
{"@timestamp":"2026-12-02T10:00:00.000Z","message":"one","host":{"name":"web-1"},"log":{"level":"warn"}}
{"create":{}}
{"message":"two","service":{"name":"api"}}
{"delete":{"_index":"logs-a","_id":"1"}}
{"update":{"_id":"2"}}
{"doc":{"x":1}}
{"index":{}}
"not an object"
"#;
        let (evs, items) = decode(Some("logs-default"), body);
        let evs = evs.unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].message, "one");
        assert_eq!(evs[0].host.as_deref(), Some("web-1"));
        assert_eq!(evs[0].status.as_deref(), Some("warn"));
        assert_eq!(evs[0].timestamp, 1_796_205_600_000);
        assert_eq!(evs[0].attributes["index"], "logs-a");
        assert_eq!(evs[1].service.as_deref(), Some("api"));
        assert_eq!(evs[1].attributes["index"], "logs-default");
        let statuses: Vec<_> = items
            .iter()
            .map(|i| {
                i.as_object().unwrap().values().next().unwrap()["status"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(statuses, vec![201, 201, 400, 400, 400]);
        assert_eq!(items[0]["index"]["_id"], "1");
        assert_eq!(
            items[2]["delete"]["error"]["type"],
            "illegal_argument_exception"
        );
    }

    #[test]
    fn a_malformed_action_line_refuses_the_request() {
        let (r, _) = decode(None, b"{\"index\":{}}\n{\"message\":\"a\"}\nnot json\n");
        let r = r.unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.to_string().contains("line [3]"), "{r}");
    }

    #[test]
    fn keys_from_every_scheme() {
        let head = |v: &str| {
            http::Request::builder()
                .header("authorization", v)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let es = Elasticsearch;
        assert_eq!(
            es.key(&head(&format!("ApiKey {}", b64("id1:k1"))))
                .as_deref(),
            Some("k1")
        );
        assert_eq!(
            es.key(&head(&format!("Basic {}", b64("elastic:k2"))))
                .as_deref(),
            Some("k2")
        );
        assert_eq!(es.key(&head("Bearer k3")).as_deref(), Some("k3"));
    }
}
