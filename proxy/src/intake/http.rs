//! The HTTP adapter over the intake core: hands each request to the protocol
//! that serves its path, and runs the steps every HTTP protocol shares (method
//! check, key, body read within its size, time and memory limits, decoding and
//! submission through the core) with the protocol's own pieces: where its key
//! is, how its body decodes, how it answers.
use super::body::Encoding;
use super::core::{Core, Decode, Payload};
use super::refusals::{Origin, RefusedAt};
use super::{datadog, elasticsearch, input, otlp, Refusal};
use crate::event::{split_tags, Event, Intake};
use crate::pipeline::{RejectReason, Rejection};
use crate::tenant::Tenant;
use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::sync::Arc;

pub type Answer = Response<Full<Bytes>>;

/// What a protocol serves at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST`: the body is decoded into a batch and submitted.
    Submit,
    /// Answers whether the request's key is a tenant's, reading no body.
    KeyCheck,
    /// Answers whether the intake is up, without a key (HEC's health).
    Health,
    /// Answers from the protocol's own state, given a key and a small body
    /// (HEC's acknowledgement query): see [`HttpProtocol::query`].
    Query,
}

/// The largest body of a [`Endpoint::Query`] request.
const MAX_QUERY_BYTES: usize = 1 << 20;

/// One HTTP intake protocol: the seam each protocol module implements.
pub trait HttpProtocol: Sync {
    /// The protocol's label in metrics, logs and each batch's metadata.
    const INTAKE: Intake;
    /// Where the protocol looks for a key, for the refusal of a request without one.
    const KEY_HINT: &'static str;
    /// The decoder of one request's body.
    type Body: Decode;
    /// Whether a submission may come as PUT too (Elasticsearch's `_bulk` does).
    const TAKES_PUT: bool = false;

    /// What the protocol serves for `method` at `path`; `None` if not its path.
    fn endpoint(&self, method: &Method, path: &str) -> Option<Endpoint>;
    /// The tenant's key in the request's head.
    fn key(&self, head: &Parts) -> Option<String>;
    /// The decoder for this request's body, from its head (content type,
    /// query); refused before the body is read when the head rules it out.
    /// A decoder that learns what the answer must say (per-item results)
    /// leaves it in the head's extensions, which [`HttpProtocol::accepted`] reads.
    fn body(&self, head: &mut Parts) -> Result<Self::Body, Refusal>;
    /// The answer to an accepted submission or a key that checked out
    /// (in the form the request's head asks for).
    fn accepted(&self, endpoint: Endpoint, head: &Parts) -> Answer;
    /// The answer to a refusal, in the protocol's form.
    fn refused(&self, r: &Refusal, head: &Parts) -> Answer;
    /// The answer to a [`Endpoint::Query`] from a tenant's key, given its body.
    fn query(&self, head: &Parts, _body: &[u8]) -> Answer {
        self.refused(
            &Refusal::NotFound {
                path: head.uri.path().to_string(),
                expected: EXPECTED,
            },
            head,
        )
    }
}

/// What a request to a path no protocol serves is told to use.
const EXPECTED: &str =
    "POST /api/v2/logs, POST /v1/input, POST /v1/logs (OTLP), POST /services/collector (Splunk HEC) or POST /_bulk (Elasticsearch)";

/// The HTTP protocols, with their state, asked in turn for each request.
#[derive(Default)]
pub struct Protocols {
    pub hec: super::hec::Hec,
}

/// Answers one HTTP request: each protocol is asked in turn whether it serves the path.
pub async fn handle(
    core: &Arc<Core>,
    protocols: &Protocols,
    req: Request<Incoming>,
    origin: &Origin,
) -> Answer {
    let (method, path) = (req.method(), req.uri().path());
    if let Some(e) = datadog::Datadog.endpoint(method, path) {
        return serve(core, &datadog::Datadog, e, req, origin).await;
    }
    if let Some(e) = input::Input.endpoint(method, path) {
        return serve(core, &input::Input, e, req, origin).await;
    }
    if let Some(e) = otlp::Otlp.endpoint(method, path) {
        return serve(core, &otlp::Otlp, e, req, origin).await;
    }
    if let Some(e) = protocols.hec.endpoint(method, path) {
        return serve(core, &protocols.hec, e, req, origin).await;
    }
    // Last: it serves `/` and `/_...` (the probes Elasticsearch clients make).
    if let Some(e) = elasticsearch::Elasticsearch.endpoint(method, path) {
        return serve(core, &elasticsearch::Elasticsearch, e, req, origin).await;
    }
    let r = Refusal::NotFound {
        path: path.to_string(),
        expected: EXPECTED,
    };
    core.refused(origin, RefusedAt::NoIntake, None, &r);
    errors_answer(&r)
}

async fn serve<P: HttpProtocol>(
    core: &Arc<Core>,
    p: &P,
    endpoint: Endpoint,
    req: Request<Incoming>,
    origin: &Origin,
) -> Answer {
    let (mut head, body) = req.into_parts();
    if endpoint == Endpoint::Health {
        return p.accepted(endpoint, &head);
    }
    if endpoint == Endpoint::Query {
        let answer = async {
            core.authenticate(origin, key(p, &head, origin).as_deref(), P::KEY_HINT)
                .await?;
            read_body(body, MAX_QUERY_BYTES, core.read_timeout()).await
        };
        return match answer.await {
            Ok(bytes) => p.query(&head, &bytes),
            Err(r) => {
                core.refused(origin, RefusedAt::Protocol(P::INTAKE), None, &r);
                p.refused(&r, &head)
            }
        };
    }
    if endpoint == Endpoint::KeyCheck {
        return match core
            .authenticate(origin, key(p, &head, origin).as_deref(), P::KEY_HINT)
            .await
        {
            Ok(_) => p.accepted(endpoint, &head),
            Err(r) => {
                core.refused(origin, RefusedAt::KeyCheck, None, &r);
                p.refused(&r, &head)
            }
        };
    }
    if head.method != Method::POST && !(P::TAKES_PUT && head.method == Method::PUT) {
        let r = Refusal::MethodNotAllowed {
            path: head.uri.path().to_string(),
            allow: if P::TAKES_PUT { "POST, PUT" } else { "POST" },
        };
        core.refused(origin, RefusedAt::Protocol(P::INTAKE), None, &r);
        return p.refused(&r, &head);
    }
    // weir_intake_request_duration_seconds: from here to the answer.
    let started = std::time::Instant::now();
    let mut tenant = None;
    let result = submit(core, p, &mut head, body, origin, &mut tenant).await;
    core.finish(origin, P::INTAKE, tenant.as_deref(), started, &result);
    match result {
        Ok(()) => p.accepted(endpoint, &head),
        Err(r) => p.refused(&r, &head),
    }
}

/// Authenticates, reads the body within its limits and has the core take it.
async fn submit<P: HttpProtocol>(
    core: &Arc<Core>,
    p: &P,
    head: &mut Parts,
    body: Incoming,
    origin: &Origin,
    known_tenant: &mut Option<Arc<Tenant>>,
) -> Result<(), Refusal> {
    let tenant = core
        .authenticate(origin, key(p, head, origin).as_deref(), P::KEY_HINT)
        .await?;
    *known_tenant = Some(tenant.clone());
    let decoder = p.body(head)?;
    let encoding = Encoding::parse(header(&head.headers, CONTENT_ENCODING))?;
    let declared = header(&head.headers, CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let reservation = core.reserve_payload(declared).await?;
    let bytes = read_body(body, core.max_payload(), core.read_timeout()).await?;
    let payload = Payload {
        bytes,
        encoding,
        reservation,
    };
    core.take(P::INTAKE, tenant, payload, decoder).await
}

/// The tenant's key: in the listener's `key_header` when it names one and
/// the request sent it, else where the protocol looks.
fn key<P: HttpProtocol>(p: &P, head: &Parts, origin: &Origin) -> Option<String> {
    origin.key(&head.headers).or_else(|| p.key(head))
}

/// Reads a whole body of at most `max` bytes within `timeout`.
async fn read_body(
    body: Incoming,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Refusal> {
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refusal::BodyTooLarge { max })
        }
        Ok(Err(e)) => Err(Refusal::BodyRead(e.to_string())),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The media type of the request's Content-Type, lowercase, without parameters.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = header(headers, CONTENT_TYPE)?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Datadog's `ddtags` query parameter: tags for every log of the request.
pub fn query_tags(query: Option<&str>) -> Vec<String> {
    query_param(query, "ddtags")
        .map(|t| split_tags(&t).collect::<Vec<_>>())
        .unwrap_or_default()
}

/// Adds the request's tags (from [`query_tags`]) to each of its events.
pub fn add_tags(events: &mut [Event], tags: &[String]) {
    if !tags.is_empty() {
        for ev in events {
            ev.tags.extend(tags.iter().cloned());
        }
    }
}

/// A query parameter's value, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
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

pub fn json_response(status: StatusCode, body: Bytes) -> Answer {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Weir's error answer, Datadog's form: `{"errors":["..."]}`, with
/// Retry-After when the sender should retry.
fn errors_json(status: StatusCode, message: &str, retry_after: Option<u64>) -> Answer {
    let body = serde_json::to_vec(&serde_json::json!({ "errors": [message] }))
        .expect("serializing a string");
    let mut resp = json_response(status, Bytes::from(body));
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A refusal in Weir's error form; a 405 names the method allowed.
pub fn errors_answer(r: &Refusal) -> Answer {
    let mut resp = errors_json(r.status(), &r.to_string(), r.retry_after());
    if let Refusal::MethodNotAllowed { allow, .. } = r {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// A stage's or the admin API's refusal in Weir's error form.
pub fn error_response(r: &Rejection) -> Answer {
    errors_json(r.status, &r.message, r.retry_after)
}

/// An admin request's body: one JSON object. (serde would also read a struct
/// from a JSON array, by position: `[null, null]` as a quota change removed
/// both limits.)
pub fn parse_json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad_body(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(bad_body(
            "invalid JSON body: expected an object ({...})".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| bad_body(format!("invalid JSON body: {e}")))
}

fn bad_body(message: String) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, RejectReason::Admin, message)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_refusal_answers_in_the_errors_form() {
        let r = Refusal::MethodNotAllowed {
            path: "/v1/input".into(),
            allow: "POST",
        };
        let a = errors_answer(&r);
        assert_eq!(a.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(a.headers()[ALLOW], "POST");
        let a = errors_answer(&Refusal::Busy);
        assert_eq!(a.headers()[RETRY_AFTER], "1");
    }
}
