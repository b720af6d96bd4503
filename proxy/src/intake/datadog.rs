//! The Datadog logs intake, as the Datadog Agent, Vector's `datadog_logs` sink
//! and Fluent Bit's `datadog` output speak it: `POST /api/v2/logs` with a JSON
//! array of log objects (or one object), or `text/plain` with one log per line;
//! `GET /api/v1/validate`, the key check Vector makes at start. The key is in
//! `DD-API-KEY`, the `dd-api-key` query parameter or a bearer token; the
//! `ddtags` query parameter tags every log of the request. Answers are
//! Datadog's: 202 `{}`, 200 `{"valid":true}`, and `{"errors":["..."]}`.
use super::core::Decode;
use super::http::{
    add_tags, content_type, errors_answer, json_response, query_param, query_tags, Answer,
    Endpoint, HttpProtocol,
};
use super::lines::decode_lines;
use super::Refusal;
use crate::event::{strip_position, DatadogPayload, DecodeStop, Event, Intake, PayloadLimits};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeSeed;
use std::cell::Cell;

pub const LOGS_PATH: &str = "/api/v2/logs";
pub const VALIDATE_PATH: &str = "/api/v1/validate";

pub struct Datadog;

/// One request's body: JSON log objects, or text lines.
pub struct DatadogBody {
    text: bool,
    tags: Vec<String>,
}

impl HttpProtocol for Datadog {
    const INTAKE: Intake = Intake::Datadog;
    const KEY_HINT: &'static str = "send it in the DD-API-KEY header";
    type Body = DatadogBody;

    fn endpoint(&self, method: &Method, path: &str) -> Option<Endpoint> {
        match path {
            LOGS_PATH => Some(Endpoint::Submit),
            VALIDATE_PATH if method == Method::GET => Some(Endpoint::KeyCheck),
            _ => None,
        }
    }

    fn key(&self, head: &Parts) -> Option<String> {
        api_key(&head.headers, head.uri.query())
    }

    fn body(&self, head: &mut Parts) -> Result<DatadogBody, Refusal> {
        Ok(DatadogBody {
            text: content_type(&head.headers).is_some_and(|t| t == "text/plain"),
            tags: query_tags(head.uri.query()),
        })
    }

    fn accepted(&self, endpoint: Endpoint, _head: &Parts) -> Answer {
        match endpoint {
            Endpoint::KeyCheck => {
                json_response(StatusCode::OK, Bytes::from_static(b"{\"valid\":true}"))
            }
            // Its endpoints are Submit and KeyCheck.
            _ => json_response(StatusCode::ACCEPTED, Bytes::from_static(b"{}")),
        }
    }

    fn refused(&self, r: &Refusal, _head: &Parts) -> Answer {
        errors_answer(r)
    }
}

impl Decode for DatadogBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        let mut events = if self.text {
            decode_lines(payload, limits, false, admit)?
        } else {
            decode_json(payload, limits, admit)?
        };
        add_tags(&mut events, &self.tags);
        Ok(events)
    }
}

/// The API key: DD-API-KEY header, `dd-api-key` query parameter, or a bearer token.
pub fn api_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get("dd-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.to_string());
    }
    if let Some(k) = query_param(query, "dd-api-key") {
        return Some(k);
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// A JSON array of Datadog log objects, or one object.
fn decode_json(
    body: &[u8],
    limits: PayloadLimits,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Event>, Refusal> {
    let stop = Cell::new(None);
    // About one event per 256 bytes, as agents send them; the vector grows past that if needed.
    let mut events = Vec::with_capacity(limits.max_events.min(body.len() / 256 + 1).min(4096));
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = DatadogPayload {
        limits,
        stop: &stop,
        admit,
        out: &mut events,
    }
    .deserialize(&mut de)
    .and_then(|_| de.end());
    match (result, stop.get()) {
        (Ok(()), _) => Ok(events),
        (Err(_), Some(DecodeStop::TooMany)) => Err(Refusal::TooManyEvents {
            max: limits.max_events,
        }),
        (Err(_), Some(DecodeStop::NoRoom)) => Err(Refusal::Busy),
        (Err(e), None) => Err(invalid_json(body, &e)),
    }
}

pub(crate) fn invalid_json(body: &[u8], e: &serde_json::Error) -> Refusal {
    // serde_json counts lines from 1 and columns (bytes) from 1.
    let offset: usize = body
        .split(|&b| b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + e.column().saturating_sub(1);
    Refusal::InvalidJson {
        offset,
        line: e.line(),
        column: e.column(),
        reason: strip_position(&e.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_events: 3,
            max_log_bytes: 10,
            received_at_ms: 42,
        }
    }

    #[test]
    fn invalid_json_names_the_byte_offset() {
        let body = b"[{\"message\":\"a\"},\n {\"message\": }]";
        let r = decode_json(body, limits(), &mut |_| true).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let message = r.to_string();
        // serde_json reports the position just past the offending byte.
        assert!(message.contains("near byte offset 32"), "{message}");
        assert!(message.contains("entry 1"), "{message}");
    }

    #[test]
    fn api_key_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h, Some("a=b&dd-api-key=k1")), Some("k1".into()));
        h.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(api_key(&h, None), Some("k2".into()));
        h.insert("DD-API-KEY", "k3".parse().unwrap());
        assert_eq!(api_key(&h, Some("dd-api-key=k1")), Some("k3".into()));
        assert_eq!(api_key(&HeaderMap::new(), None), None);
    }

    #[test]
    fn endpoints() {
        let d = Datadog;
        assert_eq!(d.endpoint(&Method::POST, LOGS_PATH), Some(Endpoint::Submit));
        // Other methods reach the endpoint and are refused there with 405.
        assert_eq!(d.endpoint(&Method::GET, LOGS_PATH), Some(Endpoint::Submit));
        assert_eq!(
            d.endpoint(&Method::GET, VALIDATE_PATH),
            Some(Endpoint::KeyCheck)
        );
        assert_eq!(d.endpoint(&Method::POST, VALIDATE_PATH), None);
        assert_eq!(d.endpoint(&Method::POST, "/v1/input"), None);
    }
}
