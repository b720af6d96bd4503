//! Why intake refused a request or chunk, as one typed error. Each variant
//! knows its metric reason (`weir_rejected_requests_total{reason}`), its HTTP
//! status and whether the agent should retry; its text is the message agents
//! and the refusal log get. A protocol turns it into its own answer form (the
//! Datadog `{"errors":[...]}` body, later HEC's `{"text":..,"code":..}`, or a
//! withheld ack on a TCP stream). Refusals of the stage chain (rate limit,
//! quota, backpressure) arrive as [`Refusal::Stage`], unchanged.
use crate::pipeline::{RejectReason, Rejection};
use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No protocol serves the path; `expected` lists what does.
    #[error("no intake at {path}; use {expected}")]
    NotFound {
        path: String,
        expected: &'static str,
    },
    /// The path is served, with another method.
    #[error("{path} takes {allow}")]
    MethodNotAllowed { path: String, allow: &'static str },
    /// No credential; `hint` says where the protocol looks for one.
    #[error("API key missing: {hint}")]
    MissingKey { hint: &'static str },
    #[error("API key is not valid")]
    UnknownKey,
    /// The client certificate names one tenant, the key another.
    #[error("the API key belongs to another tenant than the client certificate")]
    KeyCertificateMismatch,
    /// The client's IP spent its failed-authentication budget.
    #[error("too many failed authentications from this address; retry after {retry_after} s")]
    AuthThrottled { retry_after: u64 },
    #[error("unsupported Content-Encoding {0:?}; use gzip, deflate, zstd or identity")]
    UnsupportedEncoding(String),
    #[error("request body is larger than {max} bytes")]
    BodyTooLarge { max: usize },
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("payload is larger than {max} bytes once decompressed")]
    DecompressedTooLarge { max: usize },
    /// The body is not valid `codec` (gzip, deflate, zstd).
    #[error("body is not valid {codec}: {error}")]
    BadEncoding { codec: &'static str, error: String },
    /// serde_json's error, its position given as a byte offset too.
    #[error("invalid JSON near byte offset {offset} (line {line}, column {column}): {reason}")]
    InvalidJson {
        offset: usize,
        line: usize,
        column: usize,
        reason: String,
    },
    /// A binary or structured body that does not decode as `format` (OTLP protobuf, OTLP JSON).
    #[error("body is not a valid {format}: {error}")]
    InvalidPayload { format: &'static str, error: String },
    /// One event of a batch lacks what the protocol requires (HEC's `event`);
    /// `index` counts from 0.
    #[error("event {index}: {problem}")]
    InvalidEvent { index: usize, problem: &'static str },
    /// A Content-Type the protocol does not take; `expected` lists what it does.
    #[error("unsupported Content-Type {got:?}; use {expected}")]
    UnsupportedContentType { got: String, expected: &'static str },
    #[error("more than {max} log entries in one request")]
    TooManyEvents { max: usize },
    /// The request's events would not fit in the whole memory budget: a retry cannot help.
    #[error(
        "more than {covered} log entries: as events they would take more memory than \
         limits.max_inflight_request_bytes ({capacity} bytes) allows; send fewer per request"
    )]
    EventsNeverFit { covered: usize, capacity: usize },
    /// The memory budget of bodies in flight is used up for now.
    #[error("too many request bodies in memory; retry later")]
    Busy,
    /// No intake thread was free to decode it within `limits.admission_wait`.
    #[error("the proxy is busy decoding other requests; retry later")]
    NoThread,
    /// Refused by a stage of the chain.
    #[error("{}", .0.message)]
    Stage(Rejection),
}

/// The `reason` label value of each kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NotFound,
    MethodNotAllowed,
    MissingApiKey,
    UnknownApiKey,
    KeyCertificateMismatch,
    AuthThrottled,
    UnsupportedEncoding,
    BodyTooLarge,
    BodyTimeout,
    BodyReadError,
    DecompressedTooLarge,
    BadEncoding,
    InvalidJson,
    InvalidPayload,
    UnsupportedContentType,
    TooManyEvents,
    IntakeBusy,
    /// A stage's own reason.
    Stage(RejectReason),
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::MissingApiKey => "missing_api_key",
            Reason::UnknownApiKey => "unknown_api_key",
            Reason::KeyCertificateMismatch => "key_certificate_mismatch",
            Reason::AuthThrottled => "auth_throttled",
            Reason::UnsupportedEncoding => "unsupported_encoding",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodyReadError => "body_read_error",
            Reason::DecompressedTooLarge => "decompressed_too_large",
            Reason::BadEncoding => "bad_encoding",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidPayload => "invalid_payload",
            Reason::UnsupportedContentType => "unsupported_content_type",
            Reason::TooManyEvents => "too_many_events",
            Reason::IntakeBusy => "intake_busy",
            Reason::Stage(r) => r.as_str(),
        }
    }
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::NotFound { .. } => Reason::NotFound,
            Refusal::MethodNotAllowed { .. } => Reason::MethodNotAllowed,
            Refusal::MissingKey { .. } => Reason::MissingApiKey,
            Refusal::UnknownKey => Reason::UnknownApiKey,
            Refusal::KeyCertificateMismatch => Reason::KeyCertificateMismatch,
            Refusal::AuthThrottled { .. } => Reason::AuthThrottled,
            Refusal::UnsupportedEncoding(_) => Reason::UnsupportedEncoding,
            Refusal::BodyTooLarge { .. } => Reason::BodyTooLarge,
            Refusal::BodyTimeout => Reason::BodyTimeout,
            Refusal::BodyRead(_) => Reason::BodyReadError,
            Refusal::DecompressedTooLarge { .. } => Reason::DecompressedTooLarge,
            Refusal::BadEncoding { .. } => Reason::BadEncoding,
            Refusal::InvalidJson { .. } => Reason::InvalidJson,
            Refusal::InvalidPayload { .. } | Refusal::InvalidEvent { .. } => Reason::InvalidPayload,
            Refusal::UnsupportedContentType { .. } => Reason::UnsupportedContentType,
            Refusal::TooManyEvents { .. } | Refusal::EventsNeverFit { .. } => Reason::TooManyEvents,
            Refusal::Busy | Refusal::NoThread => Reason::IntakeBusy,
            Refusal::Stage(r) => Reason::Stage(r.reason),
        }
    }

    /// The HTTP status of the refusal; TCP protocols read it as a class
    /// (4xx: the sender must change something, 429/503: retry later).
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound { .. } => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::MissingKey { .. } => StatusCode::UNAUTHORIZED,
            Refusal::UnknownKey | Refusal::KeyCertificateMismatch => StatusCode::FORBIDDEN,
            Refusal::AuthThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::UnsupportedEncoding(_) | Refusal::UnsupportedContentType { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::BodyTooLarge { .. }
            | Refusal::DecompressedTooLarge { .. }
            | Refusal::TooManyEvents { .. }
            | Refusal::EventsNeverFit { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyRead(_)
            | Refusal::BadEncoding { .. }
            | Refusal::InvalidJson { .. }
            | Refusal::InvalidPayload { .. }
            | Refusal::InvalidEvent { .. } => StatusCode::BAD_REQUEST,
            Refusal::Busy | Refusal::NoThread => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Stage(r) => r.status,
        }
    }

    /// Seconds the sender should wait before retrying, when it should.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::Busy | Refusal::NoThread => Some(1),
            Refusal::AuthThrottled { retry_after } => Some(*retry_after),
            Refusal::Stage(r) => r.retry_after,
            _ => None,
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Refusal {
        Refusal::Stage(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_refusal_keeps_its_answer() {
        let r = Refusal::from(
            Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                RejectReason::RateLimited,
                "slow down",
            )
            .retry_after(3),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.reason().as_str(), "rate_limited");
        assert_eq!(r.retry_after(), Some(3));
        assert_eq!(r.to_string(), "slow down");
        assert_eq!(Refusal::Busy.retry_after(), Some(1));
        assert_eq!(Refusal::Busy.reason().as_str(), "intake_busy");
    }
}
