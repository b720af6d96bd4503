//! Backends: where batches are delivered. Two seams keep a backend type to
//! one module (datadog.rs, http.rs, elasticsearch.rs, splunk_hec.rs,
//! otlp.rs, loki.rs, file.rs):
//! - `Protocol`, what an HTTP backend type knows: its URL and headers, the
//!   body it takes for a batch, and what its answer says about each event;
//!   client.rs sends it over HTTP.
//! - `Transport`, what delivery (deliver.rs) sees of a backend: encode a
//!   batch, send it, probe health. client.rs and file.rs implement it for
//!   real; the delivery tests implement it with a fake that answers from a
//!   script, without processes or sleeps.
//!
//! `Backend::from_config` picks the module for the config's type.
use super::client::HttpTransport;
use super::{datadog, elasticsearch, file, http as plain, loki, otlp, splunk_hec};
use crate::config::{BackendConfig, BackendKind, HealthCheckConfig};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use std::time::Duration;

/// A backend as a route sees it: its name and its transport.
pub struct Backend {
    name: String,
    transport: Box<dyn Transport>,
}

/// The seam between delivery and a backend's network (or file).
pub trait Transport: Send + Sync {
    /// An NDJSON batch framed and compressed as this backend takes it, for
    /// `tenant` (CPU work: run off the async workers).
    fn encode(&self, ndjson: Vec<u8>, tenant: &str) -> Bytes;

    /// One request with an encoded body of `events` events; a 2xx answer
    /// read into what happened to each event.
    fn send<'a>(
        &'a self,
        body: Bytes,
        events: usize,
        upstream_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Sent, SendError>>;

    /// One active health check.
    fn probe<'a>(&'a self, check: &'a HealthCheckConfig) -> BoxFuture<'a, Result<(), ProbeError>>;
}

/// What one HTTP backend type knows (one module per type implements it).
pub trait Protocol: Send + Sync + 'static {
    /// Where batches are POSTed.
    fn url(&self) -> String;

    fn content_type(&self) -> &'static str;

    /// Headers every request of this backend carries besides Content-Type,
    /// Content-Encoding and User-Agent (credentials, the user's `headers`).
    fn headers(&self, _name: &str, _out: &mut HeaderMap) -> Result<(), BuildError> {
        Ok(())
    }

    /// Headers of one tenant's requests (Datadog's upstream key).
    fn tenant_headers(
        &self,
        _upstream_key: Option<&str>,
        _out: &mut HeaderMap,
    ) -> Result<(), SendError> {
        Ok(())
    }

    /// The body for an NDJSON batch of `tenant`'s events, before compression.
    fn body(&self, ndjson: Vec<u8>, tenant: &str) -> Vec<u8>;

    /// What a 2xx answer to a body of `events` events says about single
    /// events (by default: all delivered).
    fn read_answer(
        &self,
        _status: StatusCode,
        _answer: &[u8],
        _events: usize,
    ) -> Result<Sent, SendError> {
        Ok(Sent::default())
    }
}

/// What a backend did with a batch it answered with success: the lines (by
/// index) it asks to have again, and those it refused for good, with status
/// and reason. Elasticsearch's `_bulk` answers per line; OTLP counts refusals.
#[derive(Debug, Default)]
pub struct Sent {
    pub retry: Vec<usize>,
    pub rejected: Vec<(usize, u16, String)>,
    /// Records refused without saying which (OTLP `partial_success`): how many, and why.
    pub unnamed_rejected: Option<(u64, String)>,
}

/// Why a send failed; `retryable` says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer (connect, TLS, reset).
    #[error("request failed: {0}")]
    Request(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A non-2xx answer, with the start of its body.
    #[error("backend answered {status}: {snippet}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        snippet: String,
    },
    /// A 2xx answer that does not say what succeeded: sent again (at least once, never lost).
    #[error("backend answered {status} {why}")]
    Answer {
        status: StatusCode,
        retry_after: Option<Duration>,
        why: String,
    },
    #[error("the tenant's upstream_api_key is not a valid header value")]
    UpstreamKey,
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl SendError {
    pub fn retryable(&self) -> bool {
        match self {
            SendError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            SendError::UpstreamKey => false,
            _ => true,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            SendError::Status { status, .. } | SendError::Answer { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The backend's Retry-After, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Status { retry_after, .. } | SendError::Answer { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// Why a backend could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("backend {backend}: cannot create {dir}: {source}")]
    Directory {
        backend: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("backend {0}: the token is not a valid header value")]
    Token(String),
    #[error("backend {backend}: invalid header name {header:?}")]
    HeaderName { backend: String, header: String },
    #[error("backend {backend}: invalid value for header {header:?}")]
    HeaderValue { backend: String, header: String },
    #[error(transparent)]
    Url(#[from] http::uri::InvalidUri),
    /// A CA, client certificate or key file that does not load.
    #[error("{path}: {message}")]
    CaFile { path: String, message: String },
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

/// Why an active health check failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the backend URL has no host")]
    NoHost,
    #[error("health check connect: {0}")]
    Connect(std::io::Error),
    #[error("invalid health check method {0:?}")]
    Method(String),
    #[error("health check request: {0}")]
    Request(String),
    #[error("health check: {0}")]
    Failed(String),
    #[error("health check answered {got} (expected {expected})")]
    Status { got: u16, expected: u16 },
    #[error("health check timed out after {0:?}")]
    TimedOut(Duration),
}

impl Backend {
    /// The backend of `cfg`'s type.
    pub fn from_config(cfg: &BackendConfig) -> Result<Backend, BuildError> {
        let transport: Box<dyn Transport> = match &cfg.kind {
            BackendKind::Datadog(c) => HttpTransport::boxed(cfg, datadog::Datadog::new(c))?,
            BackendKind::Http(c) => HttpTransport::boxed(cfg, plain::Http::new(c))?,
            BackendKind::Elasticsearch(c) => {
                HttpTransport::boxed(cfg, elasticsearch::Elasticsearch::new(c))?
            }
            BackendKind::SplunkHec(c) => HttpTransport::boxed(cfg, splunk_hec::SplunkHec::new(c))?,
            BackendKind::Otlp(c) => HttpTransport::boxed(cfg, otlp::Otlp::new(c))?,
            BackendKind::Loki(c) => HttpTransport::boxed(cfg, loki::Loki::new(c))?,
            BackendKind::File(c) => Box::new(file::FileTransport::new(&cfg.name, c)?),
        };
        Ok(Backend::new(&cfg.name, transport))
    }

    pub fn new(name: &str, transport: Box<dyn Transport>) -> Backend {
        Backend {
            name: name.to_string(),
            transport,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn encode(&self, ndjson: Vec<u8>, tenant: &str) -> Bytes {
        self.transport.encode(ndjson, tenant)
    }

    pub async fn send(
        &self,
        body: Bytes,
        events: usize,
        upstream_key: Option<&str>,
    ) -> Result<Sent, SendError> {
        self.transport.send(body, events, upstream_key).await
    }

    pub async fn probe(&self, check: &HealthCheckConfig) -> Result<(), ProbeError> {
        self.transport.probe(check).await
    }
}
