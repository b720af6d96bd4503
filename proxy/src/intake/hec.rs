//! Splunk's HTTP Event Collector, as Splunk's logging libraries, the OTel
//! Collector's `splunk_hec` exporter, Vector's `splunk_hec_logs` sink and
//! Fluent Bit's `splunk` output send to it:
//! - `POST /services/collector/event` (and `/services/collector`, `.../1.0`):
//!   HEC event objects, concatenated (`{"event":..}{"event":..}`, whitespace
//!   between them or not);
//! - `POST /services/collector/raw`: one event per line, metadata in the
//!   query (`host`, `source`, `sourcetype`, `index`);
//! - `GET /services/collector/health`: `{"text":"HEC is healthy","code":17}`;
//! - `POST /services/collector/ack`: indexer acknowledgement (see [`Acks`]).
//!
//! The token is `Authorization: Splunk <token>` (or Basic auth with the
//! token as the password, or a bearer token): a tenant's API key. Answers are
//! HEC's: `{"text":"Success","code":0}` (with `"ackId"` when the request named
//! a channel), errors with HEC's codes and, for a bad event, its index
//! (`"invalid-event-number"`).
//!
//! An event: a string `event` is the message; an object is read as a Datadog
//! log object (`message`, `status`, `service`, ... become the fields, the
//! rest attributes); `time` (epoch seconds) the timestamp, `host` the host,
//! `source` the source, `sourcetype` and `index` attributes, and `fields`
//! (HEC's indexed fields) attributes too.
use super::core::Decode;
use super::http::{json_response, query_param, Answer, Endpoint, HttpProtocol};
use super::Refusal;
use crate::event::{parse_timestamp, Event, Intake, PayloadLimits};
use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use http::request::Parts;
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const EVENT_PATHS: [&str; 4] = [
    "/services/collector",
    "/services/collector/event",
    "/services/collector/1.0",
    "/services/collector/event/1.0",
];
pub const RAW_PATHS: [&str; 2] = ["/services/collector/raw", "/services/collector/raw/1.0"];
pub const HEALTH_PATHS: [&str; 2] = [
    "/services/collector/health",
    "/services/collector/health/1.0",
];
pub const ACK_PATHS: [&str; 2] = ["/services/collector/ack", "/services/collector/ack/1.0"];

/// What a refused HEC event lacked (HEC's codes 12 and 13).
pub const EVENT_REQUIRED: &str = "Event field is required";
pub const EVENT_BLANK: &str = "Event field cannot be blank";
/// A request with no event at all (HEC's code 5).
pub const NO_DATA: &str = "No data";

/// The HEC protocol, with its acknowledgement state.
#[derive(Default)]
pub struct Hec {
    acks: Acks,
}

/// One request's body: events or raw lines, and the query's metadata for raw.
pub struct HecBody {
    raw: bool,
    meta: Meta,
}

/// HEC metadata given in the query string (raw endpoint) or per event.
#[derive(Default, Clone)]
struct Meta {
    host: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    index: Option<String>,
}

impl HttpProtocol for Hec {
    const INTAKE: Intake = Intake::Hec;
    const KEY_HINT: &'static str = "send it as Authorization: Splunk <token>";
    type Body = HecBody;

    fn endpoint(&self, method: &Method, path: &str) -> Option<Endpoint> {
        if EVENT_PATHS.contains(&path) || RAW_PATHS.contains(&path) {
            Some(Endpoint::Submit)
        } else if HEALTH_PATHS.contains(&path) && method == Method::GET {
            Some(Endpoint::Health)
        } else if ACK_PATHS.contains(&path) {
            Some(Endpoint::Query)
        } else {
            None
        }
    }

    fn key(&self, head: &Parts) -> Option<String> {
        token(head)
    }

    fn body(&self, head: &mut Parts) -> Result<HecBody, Refusal> {
        let q = head.uri.query();
        Ok(HecBody {
            raw: RAW_PATHS.contains(&head.uri.path()),
            meta: Meta {
                host: query_param(q, "host"),
                source: query_param(q, "source"),
                sourcetype: query_param(q, "sourcetype"),
                index: query_param(q, "index"),
            },
        })
    }

    fn accepted(&self, endpoint: Endpoint, head: &Parts) -> Answer {
        match endpoint {
            Endpoint::Health => answer(StatusCode::OK, "HEC is healthy", 17),
            _ => match channel(head) {
                // The request's events are in (durable, per the buffer's ack mode) now.
                Some(c) => HecAnswer {
                    ack_id: Some(self.acks.done(&c)),
                    ..HecAnswer::new("Success", 0)
                }
                .reply(StatusCode::OK),
                None => answer(StatusCode::OK, "Success", 0),
            },
        }
    }

    fn refused(&self, r: &Refusal, _head: &Parts) -> Answer {
        let (status, text, code) = match r {
            Refusal::MissingKey { .. } => (StatusCode::UNAUTHORIZED, "Token is required", 2),
            Refusal::UnknownKey => (StatusCode::FORBIDDEN, "Invalid token", 4),
            Refusal::InvalidEvent {
                problem: NO_DATA, ..
            } => (StatusCode::BAD_REQUEST, NO_DATA, 5),
            Refusal::InvalidEvent { index, problem } => {
                let code = if *problem == EVENT_BLANK { 13 } else { 12 };
                return HecAnswer {
                    invalid_event_number: Some(*index),
                    ..HecAnswer::new(problem, code)
                }
                .reply(StatusCode::BAD_REQUEST);
            }
            Refusal::InvalidJson { .. } | Refusal::InvalidPayload { .. } => {
                (StatusCode::BAD_REQUEST, "Invalid data format", 6)
            }
            Refusal::Busy | Refusal::NoThread => {
                (StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9)
            }
            _ if r.status() == StatusCode::TOO_MANY_REQUESTS
                || r.status() == StatusCode::SERVICE_UNAVAILABLE =>
            {
                (StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9)
            }
            // HEC has no code of its own for these: its text with Weir's reason.
            _ => {
                let mut a = HecAnswer::new(&r.to_string(), 8).reply(r.status());
                retry_after(&mut a, r);
                return a;
            }
        };
        let mut a = answer(status, text, code);
        retry_after(&mut a, r);
        a
    }

    /// `/services/collector/ack`: `{"acks":[0,1]}` answered `{"acks":{"0":true,"1":false}}`.
    fn query(&self, head: &Parts, body: &[u8]) -> Answer {
        let Some(c) = channel(head) else {
            return answer(StatusCode::BAD_REQUEST, "Data channel is missing", 10);
        };
        #[derive(Deserialize)]
        struct Query {
            acks: Vec<u64>,
        }
        match serde_json::from_slice::<Query>(body) {
            Ok(q) => {
                let statuses: Map<String, Value> = self
                    .acks
                    .query(&c, &q.acks)
                    .into_iter()
                    .map(|(id, ok)| (id.to_string(), Value::Bool(ok)))
                    .collect();
                json_response(
                    StatusCode::OK,
                    Bytes::from(
                        serde_json::to_vec(&serde_json::json!({ "acks": statuses }))
                            .expect("serializing to memory"),
                    ),
                )
            }
            Err(_) => answer(StatusCode::BAD_REQUEST, "Invalid data format", 6),
        }
    }
}

/// HEC's answer, its fields in HEC's order: `{"text":"Success","code":0}`.
#[derive(serde::Serialize)]
struct HecAnswer<'a> {
    text: &'a str,
    code: u8,
    #[serde(rename = "ackId", skip_serializing_if = "Option::is_none")]
    ack_id: Option<u64>,
    #[serde(
        rename = "invalid-event-number",
        skip_serializing_if = "Option::is_none"
    )]
    invalid_event_number: Option<usize>,
}

impl<'a> HecAnswer<'a> {
    fn new(text: &'a str, code: u8) -> Self {
        HecAnswer {
            text,
            code,
            ack_id: None,
            invalid_event_number: None,
        }
    }

    fn reply(&self, status: StatusCode) -> Answer {
        json_response(
            status,
            Bytes::from(serde_json::to_vec(self).expect("serializing to memory")),
        )
    }
}

fn answer(status: StatusCode, text: &str, code: u8) -> Answer {
    HecAnswer::new(text, code).reply(status)
}

fn retry_after(a: &mut Answer, r: &Refusal) {
    if let Some(secs) = r.retry_after() {
        a.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// The HEC token: `Splunk <token>`, Basic auth's password, or a bearer token.
fn token(head: &Parts) -> Option<String> {
    let auth = head.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, value) = auth.split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("splunk") || scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

/// The request's channel: `X-Splunk-Request-Channel`, or the `channel` query parameter.
fn channel(head: &Parts) -> Option<String> {
    head.headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query_param(head.uri.query(), "channel"))
        .filter(|c| !c.is_empty() && c.len() <= 128)
}

/// Indexer acknowledgement: each accepted request on a channel gets the next
/// id; a query answers `true` for the ids whose events are in (once, as HEC
/// does: an id reported true is forgotten), `false` for the others. Ids are
/// handed out only once the request's events are in the log (or, with
/// `buffer.ack: received`, in memory), so a client polling for its ids finds
/// them true at once. Bounded: at most [`MAX_CHANNELS`] channels, idle ones
/// dropped after [`CHANNEL_IDLE`], and [`MAX_PENDING`] unqueried ids each.
#[derive(Default)]
pub struct Acks {
    channels: Mutex<HashMap<String, Channel>>,
}

pub const MAX_CHANNELS: usize = 10_000;
pub const MAX_PENDING: usize = 10_000;
pub const CHANNEL_IDLE: Duration = Duration::from_secs(600);

struct Channel {
    next: u64,
    done: BTreeSet<u64>,
    used: Instant,
}

impl Acks {
    /// A new id for a request whose events are in.
    pub fn done(&self, channel: &str) -> u64 {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if !channels.contains_key(channel) && channels.len() >= MAX_CHANNELS {
            channels.retain(|_, c| c.used.elapsed() < CHANNEL_IDLE);
            if channels.len() >= MAX_CHANNELS {
                // Still full: the least recently used goes.
                if let Some(oldest) = channels
                    .iter()
                    .min_by_key(|(_, c)| c.used)
                    .map(|(k, _)| k.clone())
                {
                    channels.remove(&oldest);
                }
            }
        }
        let c = channels.entry(channel.to_string()).or_insert(Channel {
            next: 0,
            done: BTreeSet::new(),
            used: Instant::now(),
        });
        let id = c.next;
        c.next += 1;
        c.used = Instant::now();
        c.done.insert(id);
        while c.done.len() > MAX_PENDING {
            c.done.pop_first();
        }
        id
    }

    /// The status of each queried id; those reported true are forgotten.
    pub fn query(&self, channel: &str, ids: &[u64]) -> Vec<(u64, bool)> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = channels.get_mut(channel) else {
            return ids.iter().map(|&id| (id, false)).collect();
        };
        c.used = Instant::now();
        ids.iter().map(|&id| (id, c.done.remove(&id))).collect()
    }
}

impl Decode for HecBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        if self.raw {
            return raw(payload, &self.meta, limits, admit);
        }
        let mut out = Vec::new();
        let stream = serde_json::Deserializer::from_slice(payload).into_iter::<Envelope>();
        for (index, envelope) in stream.enumerate() {
            let envelope = envelope.map_err(|e| Refusal::InvalidPayload {
                format: "Splunk HEC event",
                error: format!("event {index}: {e}"),
            })?;
            if out.len() == limits.max_events {
                return Err(Refusal::TooManyEvents {
                    max: limits.max_events,
                });
            }
            if !admit(out.len()) {
                return Err(Refusal::Busy);
            }
            out.push(envelope.event(index, limits)?);
        }
        if out.is_empty() {
            return Err(Refusal::InvalidEvent {
                index: 0,
                problem: NO_DATA,
            });
        }
        Ok(out)
    }
}

/// One HEC event object; keys HEC does not define are kept as attributes.
#[derive(Deserialize)]
struct Envelope {
    event: Option<Value>,
    time: Option<Value>,
    host: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    index: Option<String>,
    fields: Option<Map<String, Value>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl Envelope {
    fn event(self, index: usize, limits: PayloadLimits) -> Result<Event, Refusal> {
        let mut ev = match self.event {
            None | Some(Value::Null) => {
                return Err(Refusal::InvalidEvent {
                    index,
                    problem: EVENT_REQUIRED,
                })
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Err(Refusal::InvalidEvent {
                    index,
                    problem: EVENT_BLANK,
                })
            }
            Some(Value::String(s)) => Event::from_message(s, limits.received_at_ms),
            // An object reads as a Datadog log object: its reserved names are the fields.
            Some(Value::Object(m)) => {
                let mut ev = Event::from_message(String::new(), limits.received_at_ms);
                ev.attributes = m;
                ev.adopt_reserved_attributes();
                ev
            }
            // A number, a boolean or an array: its JSON text.
            Some(other) => Event::from_message(other.to_string(), limits.received_at_ms),
        };
        if let Some(ms) = self.time.as_ref().and_then(epoch_seconds) {
            ev.timestamp = ms;
        }
        Meta {
            host: self.host,
            source: self.source,
            sourcetype: self.sourcetype,
            index: self.index,
        }
        .apply(&mut ev);
        let extra = self.fields.into_iter().flatten().chain(self.other);
        for (k, v) in extra {
            ev.attributes.entry(k).or_insert(v);
        }
        ev.adopt_reserved_attributes();
        ev.limit_message(limits.max_log_bytes);
        Ok(ev)
    }
}

impl Meta {
    /// Sets what the event does not say itself.
    fn apply(&self, ev: &mut Event) {
        if ev.host.is_none() {
            ev.host.clone_from(&self.host);
        }
        if ev.source.is_none() {
            ev.source.clone_from(&self.source);
        }
        for (key, v) in [("sourcetype", &self.sourcetype), ("index", &self.index)] {
            if let Some(v) = v {
                ev.attributes
                    .entry(key)
                    .or_insert_with(|| Value::String(v.clone()));
            }
        }
    }
}

/// HEC's `time`: epoch seconds with a fraction, as a number or a string.
fn epoch_seconds(v: &Value) -> Option<i64> {
    let secs = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return parse_timestamp(v),
    };
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as i64)
}

/// The raw endpoint: one event per line, the query's metadata on each.
fn raw(
    body: &[u8],
    meta: &Meta,
    limits: PayloadLimits,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Event>, Refusal> {
    let mut events = super::lines::decode_lines(body, limits, false, admit)?;
    if events.is_empty() {
        return Err(Refusal::InvalidEvent {
            index: 0,
            problem: NO_DATA,
        });
    }
    for ev in &mut events {
        meta.apply(ev);
    }
    Ok(events)
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

    fn body(raw: bool) -> HecBody {
        HecBody {
            raw,
            meta: Meta::default(),
        }
    }

    /// Found by the `hec` fuzz target: a `message` key of the event object
    /// (or of `fields`) took the message's place after it was cut.
    #[test]
    fn a_long_message_key_is_cut_too() {
        let long = "x".repeat(2000);
        for payload in [
            format!(r#"{{"event":{{"message":"{long}"}}}}"#),
            format!(r#"{{"event":"short","fields":{{"message":"{long}"}}}}"#),
            format!(r#"{{"event":"{long}"}}"#),
        ] {
            let evs = body(false)
                .decode(payload.as_bytes(), limits(), &mut |_| true)
                .unwrap();
            assert_eq!(evs[0].message.len(), 1000, "{payload:.60}");
            assert!(evs[0].is_truncated());
        }
    }

    #[test]
    fn concatenated_events_of_every_shape() {
        // From Splunk's HEC examples: two events back to back, no separator.
        let payload = br#"{"event": "Hello, world!", "sourcetype": "manual"}{"time": 1426279439.123, "host": "localhost", "source": "datasource", "sourcetype": "txt", "index": "main", "event": {"message": "Something happened", "severity": "INFO"}, "fields": {"region": "us-east"}}"#;
        let evs = body(false)
            .decode(payload, limits(), &mut |_| true)
            .unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].message, "Hello, world!");
        assert_eq!(evs[0].timestamp, 42);
        assert_eq!(evs[0].attributes["sourcetype"], "manual");
        assert_eq!(evs[1].message, "Something happened");
        assert_eq!(evs[1].timestamp, 1_426_279_439_123);
        assert_eq!(evs[1].host.as_deref(), Some("localhost"));
        assert_eq!(evs[1].source.as_deref(), Some("datasource"));
        assert_eq!(evs[1].attributes["severity"], "INFO");
        assert_eq!(evs[1].attributes["index"], "main");
        assert_eq!(evs[1].attributes["region"], "us-east");
    }

    #[test]
    fn a_bad_event_is_named_by_its_index() {
        let r = body(false)
            .decode(br#"{"event":"a"} {"time": 1}"#, limits(), &mut |_| true)
            .unwrap_err();
        assert!(
            matches!(
                r,
                Refusal::InvalidEvent {
                    index: 1,
                    problem: EVENT_REQUIRED
                }
            ),
            "{r:?}"
        );
        let r = body(false)
            .decode(br#"{"event":""}"#, limits(), &mut |_| true)
            .unwrap_err();
        assert!(
            matches!(
                r,
                Refusal::InvalidEvent {
                    index: 0,
                    problem: EVENT_BLANK
                }
            ),
            "{r:?}"
        );
        let r = body(false)
            .decode(br#"{"event":"a"} {"event": "#, limits(), &mut |_| true)
            .unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.to_string().contains("event 1"), "{r}");
    }

    #[test]
    fn acks_are_answered_once() {
        let acks = Acks::default();
        assert_eq!(acks.done("c1"), 0);
        assert_eq!(acks.done("c1"), 1);
        assert_eq!(acks.done("c2"), 0);
        assert_eq!(
            acks.query("c1", &[0, 1, 2]),
            vec![(0, true), (1, true), (2, false)]
        );
        assert_eq!(acks.query("c1", &[0]), vec![(0, false)]);
        assert_eq!(acks.query("nope", &[0]), vec![(0, false)]);
    }
}
