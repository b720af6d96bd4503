//! Intake: HTTP requests in, batches of events out. Checks the API key, the
//! body's size, encoding and shape, maps the protocol onto events and hands
//! them to the stage chain. Every refusal is a precise status with a JSON
//! body `{"errors":["..."]}`, as Datadog's intake answers.
pub mod body;
pub mod refusals;

use crate::budget::{Budget, Reservation};
use crate::config::Limits;
use crate::event::{
    decode_entry, split_tags, strip_position, Batch, BatchMeta, DatadogPayload, DecodeStop, Event,
    Intake as Protocol, PayloadLimits,
};
use crate::pipeline::Rejection;
use crate::telemetry::METRICS;
use crate::tenant::{AuthError, Tenants};
use body::{decompress, Encoding};
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use refusals::{Origin, RefusalLog};
use serde::de::DeserializeSeed;
use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;

pub const DATADOG_LOGS_PATH: &str = "/api/v2/logs";
pub const GENERIC_PATH: &str = "/v1/input";
pub const DATADOG_VALIDATE_PATH: &str = "/api/v1/validate";

pub struct Intake {
    /// Each carries its stage chain.
    tenants: Tenants,
    limits: Limits,
    /// Memory held by request bodies being read and decoded, across all connections.
    request_budget: Budget,
    refusals: RefusalLog,
}

impl Intake {
    pub fn new(tenants: Tenants, limits: Limits) -> Arc<Intake> {
        let request_budget = Budget::new(
            limits.max_inflight_request_bytes.as_usize(),
            crate::telemetry::queued_bytes(crate::telemetry::QueueKind::Intake),
        );
        Arc::new(Intake {
            tenants,
            limits,
            request_budget,
            refusals: RefusalLog::default(),
        })
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let protocol = match req.uri().path() {
            DATADOG_LOGS_PATH => Protocol::Datadog,
            GENERIC_PATH => Protocol::Generic,
            DATADOG_VALIDATE_PATH if req.method() == Method::GET => {
                return Ok(self.validate_key(&req, &origin))
            }
            other => {
                let r = Rejection::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "no intake at {other}; use POST {DATADOG_LOGS_PATH} or POST {GENERIC_PATH}"
                    ),
                );
                return Ok(self.refuse(&origin, "none", None, r));
            }
        };
        if req.method() != Method::POST {
            let r = Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} takes POST", req.uri().path()),
            );
            let mut resp = self.refuse(&origin, protocol.as_str(), None, r);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return Ok(resp);
        }
        // weir_intake_request_duration_seconds (telemetry): from here to the answer.
        let started = std::time::Instant::now();
        let mut tenant = None;
        let result = self.clone().accept(protocol, req, &mut tenant).await;
        let outcome = match result {
            Ok(()) => crate::telemetry::IntakeOutcome::Accepted,
            Err(_) => crate::telemetry::IntakeOutcome::Refused,
        };
        crate::telemetry::observe_intake(protocol.as_str(), outcome, started);
        match result {
            Ok(()) => Ok(json_response(
                StatusCode::ACCEPTED,
                Bytes::from_static(b"{}"),
            )),
            Err(r) => Ok(self.refuse(
                &origin,
                protocol.as_str(),
                tenant.as_ref().map(|t| &*t.name),
                r,
            )),
        }
    }

    /// The tenant whose API key the request carries.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Arc<crate::tenant::Tenant>, Rejection> {
        self.tenants
            .authenticate(api_key(headers, query).as_deref())
            .map_err(|e| match e {
                AuthError::Missing => Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "API key missing: send it in the DD-API-KEY header",
                ),
                AuthError::Unknown => Rejection::new(
                    StatusCode::FORBIDDEN,
                    "unknown_api_key",
                    "API key is not valid",
                ),
            })
    }

    /// `GET /api/v1/validate`: Datadog's API key check, which Vector's `datadog_logs`
    /// sink calls at start. 200 `{"valid":true}` for a tenant's key.
    fn validate_key(&self, req: &Request<Incoming>, origin: &Origin) -> Response<Full<Bytes>> {
        match self.authenticate(req.headers(), req.uri().query()) {
            Ok(_) => json_response(StatusCode::OK, Bytes::from_static(b"{\"valid\":true}")),
            Err(r) => self.refuse(origin, "validate", None, r),
        }
    }

    fn refuse(
        &self,
        origin: &Origin,
        intake: &str,
        tenant: Option<&str>,
        r: Rejection,
    ) -> Response<Full<Bytes>> {
        METRICS
            .rejected_requests
            .with_label_values(&[intake, r.reason])
            .inc();
        self.refusals.record(origin, intake, tenant, &r);
        error_response(&r)
    }

    async fn accept(
        self: Arc<Self>,
        protocol: Protocol,
        req: Request<Incoming>,
        known_tenant: &mut Option<Arc<crate::tenant::Tenant>>,
    ) -> Result<(), Rejection> {
        let (parts, body) = req.into_parts();
        let tenant = self.authenticate(&parts.headers, parts.uri.query())?;
        *known_tenant = Some(tenant.clone());
        let encoding = Encoding::parse(
            parts
                .headers
                .get(http::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
        )?;
        let max_body = self.limits.max_body_bytes.as_usize();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Err(body_too_large(max_body));
        }
        // Reserve the memory before reading a byte, so overload refuses the request whole.
        let _body_res = self
            .request_budget
            .try_reserve(declared.unwrap_or(max_body))
            .ok_or_else(intake_busy)?;
        let raw = match tokio::time::timeout(
            self.limits.body_read_timeout.0,
            Limited::new(body, max_body).collect(),
        )
        .await
        {
            Err(_) => {
                return Err(Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "request body not received in time",
                ))
            }
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(body_too_large(max_body))
            }
            Ok(Err(e)) => {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "body_read_error",
                    format!("could not read the request body: {e}"),
                ))
            }
            Ok(Ok(c)) => c.to_bytes(),
        };
        let text = content_type(&parts.headers).is_some_and(|t| t == "text/plain");
        let query = parts.uri.query().map(str::to_string);
        // Decoding and the stages run where the tenant's batches belong: on the
        // stage workers when a plugin may hold the CPU, so events are also
        // allocated and freed on one thread; else right here.
        let chain = tenant.chain.clone();
        chain
            .place(move || {
                let _body_res = _body_res;
                self.take(protocol, tenant, raw, encoding, text, query.as_deref())
            })
            .await
    }

    /// Decompresses and decodes a request body and runs its batch through the chain.
    fn take(
        &self,
        protocol: Protocol,
        tenant: Arc<crate::tenant::Tenant>,
        raw: Bytes,
        encoding: Encoding,
        text: bool,
        query: Option<&str>,
    ) -> Result<(), Rejection> {
        let received_at_ms = chrono::Utc::now().timestamp_millis();
        let max_plain = self.limits.max_decompressed_bytes.as_usize();
        let plain = decompress(raw, encoding, max_plain)?;
        let _plain_res = match encoding {
            Encoding::Identity => None,
            _ => Some(
                self.request_budget
                    .try_reserve(plain.len())
                    .ok_or_else(intake_busy)?,
            ),
        };

        let limits = PayloadLimits {
            max_events: self.limits.max_events_per_request.unwrap_or(usize::MAX),
            max_log_bytes: self.limits.max_log_bytes.as_usize(),
            received_at_ms,
        };
        // Held until the batch is in the stages' queues, which charge it again.
        let mut charge = EventCharge::new(&self.request_budget);
        let admit = &mut |i| charge.admit(i);
        let decoded = match protocol {
            Protocol::Datadog if text => decode_lines(&plain, limits, false, admit),
            Protocol::Datadog => decode_datadog_json(&plain, limits, admit),
            Protocol::Generic => decode_lines(&plain, limits, true, admit),
        };
        let events = match decoded {
            Err(_) if charge.never_fits => {
                return Err(Rejection::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_events",
                    format!(
                        "more than {} log entries: as events they would take more memory than \
                         limits.max_inflight_request_bytes ({} bytes) allows; send fewer per request",
                        charge.covered,
                        self.request_budget.capacity()
                    ),
                ))
            }
            other => other?,
        };
        let mut events = events;
        // Datadog's `ddtags` query parameter: tags for every log of the request.
        let query_tags = query_param(query, "ddtags")
            .map(|t| split_tags(&t).collect::<Vec<_>>())
            .unwrap_or_default();
        if !query_tags.is_empty() {
            for ev in &mut events {
                ev.tags.extend(query_tags.iter().cloned());
            }
        }
        let n = events.len();
        let truncated = events.iter().filter(|e| e.is_truncated()).count();
        let batch = Batch::new(
            BatchMeta {
                tenant: tenant.name.clone(),
                intake: protocol,
                received_at_ms,
                body_bytes: plain.len(),
            },
            events,
        );
        tenant.chain.run(batch)?;
        METRICS
            .accepted_requests
            .with_label_values(&[&*tenant.name, protocol.as_str()])
            .inc();
        METRICS
            .received_events
            .with_label_values(&[&*tenant.name, protocol.as_str()])
            .inc_by(n as u64);
        METRICS
            .received_bytes
            .with_label_values(&[&*tenant.name, protocol.as_str()])
            .inc_by(plain.len() as u64);
        if truncated > 0 {
            METRICS
                .truncated_events
                .with_label_values(&[&*tenant.name])
                .inc_by(truncated as u64);
        }
        Ok(())
    }
}

/// Memory a decoded event holds besides its text (the struct, its tag vector and
/// attribute map). Requests are not limited by an entry count that agents do not
/// know about (Fluent Bit sends whole chunks of thousands), but a body of many tiny
/// entries must not multiply into gigabytes: each event is charged to the request
/// budget as it is decoded. A request that finds no room now is refused with 503;
/// one whose events could never fit, with 413.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Event>() + 64;
/// Events charged at a time, so the budget is not touched per event.
const CHARGE_EVERY: usize = 256;

/// The memory a request's decoded events hold: one reservation, grown a block at a time.
struct EventCharge<'a> {
    budget: &'a Budget,
    held: Option<Reservation>,
    /// Events the reservation covers.
    covered: usize,
    /// The request's events would not fit even in the whole budget: a retry cannot help.
    never_fits: bool,
}

impl<'a> EventCharge<'a> {
    fn new(budget: &'a Budget) -> Self {
        EventCharge {
            budget,
            held: None,
            covered: 0,
            never_fits: false,
        }
    }

    /// Admits entry `index`, growing the reservation by a block when it reaches its end.
    fn admit(&mut self, index: usize) -> bool {
        if index < self.covered {
            return true;
        }
        let covered = self.covered + CHARGE_EVERY;
        let bytes = covered * EVENT_OVERHEAD;
        // The body itself holds a reservation too, hence the half.
        if bytes > self.budget.capacity() / 2 {
            self.never_fits = true;
            return false;
        }
        let grown = match self.held.as_mut() {
            Some(r) => self.budget.resize(r, bytes),
            None => self
                .budget
                .try_reserve(bytes)
                .map(|r| self.held = Some(r))
                .is_some(),
        };
        if grown {
            self.covered = covered;
        }
        grown
    }
}

/// The API key: DD-API-KEY header, `dd-api-key` query parameter, or a bearer token.
fn api_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
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

/// A query parameter's value, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k.eq_ignore_ascii_case(name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// A JSON array of Datadog log objects, or one object.
fn decode_datadog_json(
    body: &[u8],
    limits: PayloadLimits,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Event>, Rejection> {
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
        (Err(_), Some(DecodeStop::TooMany)) => Err(too_many_events(limits.max_events)),
        (Err(_), Some(DecodeStop::NoRoom)) => Err(intake_busy()),
        (Err(e), None) => Err(invalid_json(body, &e)),
    }
}

/// One event per line: raw text, or (for the generic intake) a JSON object.
fn decode_lines(
    body: &[u8],
    limits: PayloadLimits,
    json_objects: bool,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Event>, Rejection> {
    let mut events = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if events.len() == limits.max_events {
            return Err(too_many_events(limits.max_events));
        }
        if !admit(events.len()) {
            return Err(intake_busy());
        }
        let trimmed = line.trim_ascii_start();
        if json_objects && trimmed.first() == Some(&b'{') {
            if let Ok(ev) = decode_entry(line, limits) {
                events.push(ev);
                continue;
            }
            // Not valid JSON after all: kept as the text it is, nothing lost.
        }
        let mut ev = Event::from_message(
            String::from_utf8_lossy(line).into_owned(),
            limits.received_at_ms,
        );
        ev.limit_message(limits.max_log_bytes);
        events.push(ev);
    }
    Ok(events)
}

fn invalid_json(body: &[u8], e: &serde_json::Error) -> Rejection {
    let msg = e.to_string();
    let reason = strip_position(&msg);
    // serde_json counts lines from 1 and columns (bytes) from 1.
    let offset: usize = body
        .split(|&b| b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + e.column().saturating_sub(1);
    Rejection::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!(
            "invalid JSON near byte offset {offset} (line {}, column {}): {reason}",
            e.line(),
            e.column()
        ),
    )
}

fn too_many_events(max: usize) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_events",
        format!("more than {max} log entries in one request"),
    )
}

fn body_too_large(max: usize) -> Rejection {
    Rejection::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than {max} bytes"),
    )
}

fn intake_busy() -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "intake_busy",
        "too many request bodies in memory; retry later",
    )
    .retry_after(1)
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn error_response(r: &Rejection) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&serde_json::json!({ "errors": [r.message] }))
        .expect("serializing a string");
    let mut resp = json_response(r.status, Bytes::from(body));
    if let Some(secs) = r.retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
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
        let r = decode_datadog_json(body, limits(), &mut |_| true).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        // serde_json reports the position just past the offending byte.
        assert!(r.message.contains("near byte offset 32"), "{}", r.message);
        assert!(r.message.contains("entry 1"), "{}", r.message);
    }

    #[test]
    fn lines_and_generic_ndjson() {
        let body = b"plain one\r\n\n{\"message\":\"json\",\"service\":\"s\"}\n{not json\n";
        let evs = decode_lines(body, limits(), true, &mut |_| true).unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].message, "plain one");
        assert_eq!(evs[1].message, "json");
        assert_eq!(evs[1].service.as_deref(), Some("s"));
        assert_eq!(evs[2].message, "{not json");
        // The Datadog text/plain intake takes JSON-looking lines as text.
        let evs = decode_lines(b"{\"message\":\"x\"}", limits(), false, &mut |_| true).unwrap();
        assert_eq!(evs[0].message, "{\"message\"");
        assert!(evs[0].is_truncated());
    }

    #[test]
    fn line_count_is_limited() {
        let r = decode_lines(b"a\nb\nc\nd\n", limits(), false, &mut |_| true).unwrap_err();
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param(Some("ddtags=env%3Aprod%2Cteam%3Acore&x=1"), "ddtags").as_deref(),
            Some("env:prod,team:core")
        );
        assert_eq!(
            query_param(Some("ddtags=a+b"), "ddtags").as_deref(),
            Some("a b")
        );
        assert_eq!(
            query_param(Some("ddtags=100%"), "ddtags").as_deref(),
            Some("100%")
        );
        assert_eq!(
            query_param(Some("ddtags=%4"), "ddtags").as_deref(),
            Some("%4")
        );
        assert_eq!(query_param(Some("other=1"), "ddtags"), None);
        assert_eq!(
            split_tags(" a:b, ,c ").collect::<Vec<_>>(),
            vec!["a:b", "c"]
        );
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
}
