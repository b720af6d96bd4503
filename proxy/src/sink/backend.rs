//! Backends: where batches are delivered. Each speaks its target's protocol;
//! the route (sink/mod.rs) owns batching, retries and backpressure.
use crate::config::{
    BackendConfig, BackendType, Codec, HealthCheckConfig, HealthCheckType, HttpFormat,
};
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Why a send failed, and whether trying again may help.
#[derive(Debug)]
pub struct SendError {
    pub retryable: bool,
    pub status: Option<StatusCode>,
    pub retry_after: Option<Duration>,
    pub message: String,
}

pub enum Backend {
    Http(Box<HttpBackend>),
    File(FileBackend),
}

pub struct HttpBackend {
    pub name: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    codec: Codec,
    level: Option<i32>,
    pub protocol: Protocol,
    timeout: Duration,
}

/// What an HTTP backend's requests carry (sink/format.rs writes the bodies).
pub enum Protocol {
    /// A JSON array, with each tenant's upstream key.
    Datadog,
    Http(HttpFormat),
    Elasticsearch {
        index: String,
    },
    SplunkHec {
        index: Option<String>,
        sourcetype: String,
    },
    Otlp,
    Loki {
        labels: Vec<String>,
    },
}

/// What a backend did with a batch it answered with success: the lines (by
/// index) it asks to have again, and those it refused for good, with status
/// and reason. Only Elasticsearch's `_bulk` answers per line.
#[derive(Debug, Default)]
pub struct Sent {
    pub retry: Vec<usize>,
    pub rejected: Vec<(usize, u16, String)>,
    /// Records refused without saying which (OTLP `partial_success`): how many, and why.
    pub unnamed_rejected: Option<(u64, String)>,
}

pub struct FileBackend {
    pub name: String,
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl Backend {
    pub fn from_config(cfg: &BackendConfig) -> anyhow::Result<Backend> {
        match cfg.kind {
            BackendType::File => {
                let path = cfg
                    .path
                    .clone()
                    .expect("validated: file backends have a path");
                if path.as_os_str() != "-" {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            anyhow::anyhow!(
                                "backend {}: cannot create {}: {e}",
                                cfg.name,
                                dir.display()
                            )
                        })?;
                    }
                }
                Ok(Backend::File(FileBackend {
                    name: cfg.name.clone(),
                    path,
                    file: Mutex::new(None),
                }))
            }
            kind => {
                let endpoint = || cfg.endpoint.as_deref().unwrap_or("").trim_end_matches('/');
                let (protocol, uri, content_type) = match kind {
                    BackendType::Datadog => (
                        Protocol::Datadog,
                        format!("{}/api/v2/logs", endpoint()),
                        "application/json",
                    ),
                    BackendType::Elasticsearch => (
                        Protocol::Elasticsearch {
                            index: cfg.index.clone().unwrap_or_else(|| "weir-logs".into()),
                        },
                        format!("{}/_bulk", endpoint()),
                        "application/x-ndjson",
                    ),
                    BackendType::SplunkHec => (
                        Protocol::SplunkHec {
                            index: cfg.index.clone(),
                            sourcetype: cfg.sourcetype.clone().unwrap_or_else(|| "_json".into()),
                        },
                        format!("{}/services/collector/event", endpoint()),
                        "application/json",
                    ),
                    BackendType::Otlp => (
                        Protocol::Otlp,
                        format!("{}/v1/logs", endpoint()),
                        "application/x-protobuf",
                    ),
                    BackendType::Loki => (
                        Protocol::Loki {
                            labels: cfg.labels.clone(),
                        },
                        format!("{}/loki/api/v1/push", endpoint()),
                        "application/json",
                    ),
                    _ => (
                        Protocol::Http(cfg.format),
                        cfg.url.clone().unwrap_or_default(),
                        if cfg.format == HttpFormat::Ndjson {
                            "application/x-ndjson"
                        } else {
                            "application/json"
                        },
                    ),
                };
                let uri: Uri = uri.parse()?;
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                if let Some(token) = &cfg.token {
                    let mut v = HeaderValue::try_from(format!("Splunk {}", token.expose()))
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "backend {}: the token is not a valid header value",
                                cfg.name
                            )
                        })?;
                    v.set_sensitive(true);
                    headers.insert(http::header::AUTHORIZATION, v);
                }
                headers.insert(
                    USER_AGENT,
                    HeaderValue::from_static(concat!("weir/", env!("CARGO_PKG_VERSION"))),
                );
                match cfg.compression {
                    Codec::Gzip => {
                        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"))
                    }
                    Codec::Zstd => {
                        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"))
                    }
                    Codec::None => None,
                };
                for (k, v) in &cfg.headers {
                    let name = HeaderName::try_from(k.as_str()).map_err(|_| {
                        anyhow::anyhow!("backend {}: invalid header name {k:?}", cfg.name)
                    })?;
                    let mut value = HeaderValue::try_from(v.expose()).map_err(|_| {
                        anyhow::anyhow!("backend {}: invalid value for header {k:?}", cfg.name)
                    })?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                Ok(Backend::Http(Box::new(HttpBackend {
                    name: cfg.name.clone(),
                    client: http_client(cfg.ca_file.as_deref())?,
                    uri,
                    headers,
                    codec: cfg.compression,
                    level: cfg.compression_level,
                    protocol,
                    timeout: cfg.request_timeout.0,
                })))
            }
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Backend::Http(b) => &b.name,
            Backend::File(b) => &b.name,
        }
    }

    /// Compresses a finished batch body the way this backend takes it (CPU work: run off the async workers).
    pub fn encode(&self, raw: Vec<u8>) -> Bytes {
        match self {
            Backend::Http(b) => compress(b.codec, b.level, raw),
            Backend::File(_) => Bytes::from(raw),
        }
    }

    pub async fn send(&self, body: Bytes, upstream_key: Option<&str>) -> Result<Sent, SendError> {
        match self {
            Backend::Http(b) => b.send(body, upstream_key).await,
            Backend::File(b) => b.send(body).await.map(|()| Sent::default()),
        }
    }

    /// An NDJSON batch in this backend's wire format, for `tenant` (CPU work: run off the async workers).
    pub fn body(&self, ndjson: Vec<u8>, tenant: &str) -> Vec<u8> {
        let Backend::Http(b) = self else {
            return ndjson;
        };
        match &b.protocol {
            Protocol::Http(HttpFormat::Ndjson) => ndjson,
            Protocol::Datadog | Protocol::Http(HttpFormat::JsonArray) => json_array(ndjson),
            Protocol::Elasticsearch { index } => {
                super::format::elasticsearch_bulk(&super::format::events(&ndjson), index)
            }
            Protocol::SplunkHec { index, sourcetype } => super::format::splunk_hec(
                &super::format::events(&ndjson),
                index.as_deref(),
                sourcetype,
            ),
            Protocol::Otlp => super::format::otlp_logs(&super::format::events(&ndjson)),
            Protocol::Loki { labels } => {
                super::format::loki_push(&super::format::events(&ndjson), tenant, labels)
            }
        }
    }
}

/// The same lines as a JSON array: they are compact JSON, so every newline byte is a separator.
fn json_array(mut ndjson: Vec<u8>) -> Vec<u8> {
    if ndjson.last() == Some(&b'\n') {
        ndjson.pop();
    }
    for b in ndjson.iter_mut() {
        if *b == b'\n' {
            *b = b',';
        }
    }
    let mut out = Vec::with_capacity(ndjson.len() + 2);
    out.push(b'[');
    out.extend_from_slice(&ndjson);
    out.push(b']');
    out
}

impl Backend {
    /// One active health check (HTTP request or TCP connect to the backend's host).
    pub async fn probe(&self, cfg: &HealthCheckConfig) -> Result<(), String> {
        let Backend::Http(b) = self else {
            return Ok(());
        };
        let authority = b.uri.authority().ok_or("the backend URL has no host")?;
        let https = b.uri.scheme_str() == Some("https");
        match cfg.kind {
            HealthCheckType::Tcp => {
                let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
                tokio::net::TcpStream::connect((authority.host(), port))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("health check connect: {e}"))
            }
            HealthCheckType::Http => {
                let uri = format!(
                    "{}://{authority}{}",
                    if https { "https" } else { "http" },
                    cfg.path
                );
                let method = Method::from_bytes(cfg.method.as_bytes())
                    .map_err(|_| format!("invalid health check method {:?}", cfg.method))?;
                let req = Request::builder()
                    .method(method)
                    .uri(uri)
                    .header(USER_AGENT, concat!("weir/", env!("CARGO_PKG_VERSION")))
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| format!("health check request: {e}"))?;
                let resp = b
                    .client
                    .request(req)
                    .await
                    .map_err(|e| format!("health check: {}", error_chain(&e)))?;
                if resp.status().as_u16() == cfg.expected_status {
                    Ok(())
                } else {
                    Err(format!(
                        "health check answered {} (expected {})",
                        resp.status().as_u16(),
                        cfg.expected_status
                    ))
                }
            }
        }
    }
}

fn compress(codec: Codec, level: Option<i32>, raw: Vec<u8>) -> Bytes {
    match codec {
        Codec::None => Bytes::from(raw),
        Codec::Gzip => {
            let level = level.unwrap_or(1) as u32;
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::new(level),
            );
            enc.write_all(&raw).expect("in-memory write");
            Bytes::from(enc.finish().expect("in-memory write"))
        }
        Codec::Zstd => Bytes::from(
            zstd::bulk::compress(&raw, level.unwrap_or(1)).expect("zstd compression of a buffer"),
        ),
    }
}

fn http_client(
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        {
            roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

impl HttpBackend {
    async fn send(&self, body: Bytes, upstream_key: Option<&str>) -> Result<Sent, SendError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .expect("valid request");
        *req.headers_mut() = self.headers.clone();
        if let (Protocol::Datadog, Some(key)) = (&self.protocol, upstream_key) {
            let mut v = HeaderValue::try_from(key).map_err(|_| SendError {
                retryable: false,
                status: None,
                retry_after: None,
                message: "the tenant's upstream_api_key is not a valid header value".into(),
            })?;
            v.set_sensitive(true);
            req.headers_mut().insert("dd-api-key", v);
        }
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| SendError {
                retryable: true,
                status: None,
                retry_after: None,
                message: format!("request failed: {}", error_chain(&e)),
            })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(super::retry::parse_retry_after);
            // Read the body so the connection returns to the pool; keep a little for the log.
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            if status.is_success() {
                // A success is only as good as the answer that says what succeeded:
                // an unreadable one is a failed send (sent again: at least once, never lost).
                let body = body.map_err(|e| SendError {
                    retryable: true,
                    status: Some(status),
                    retry_after,
                    message: format!(
                        "backend answered {status} but its answer could not be read: {}",
                        error_chain(&e)
                    ),
                })?;
                return self.per_line(status, &body);
            }
            let body = body.unwrap_or_default();
            let retryable = status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS;
            let snippet = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
            Err(SendError {
                retryable,
                status: Some(status),
                retry_after,
                message: format!("backend answered {status}: {snippet}"),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError {
                retryable: true,
                status: None,
                retry_after: None,
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }
}

impl HttpBackend {
    /// What a successful answer says about single lines: `_bulk` items that
    /// failed (429 and 5xx to send again, the rest refused). An OTLP partial
    /// success cannot name its rejected records: they are only counted.
    fn per_line(&self, status: StatusCode, answer: &[u8]) -> Result<Sent, SendError> {
        Ok(match &self.protocol {
            Protocol::Elasticsearch { .. } => match super::format::elasticsearch_failures(answer) {
                Ok(failures) => {
                    let mut sent = Sent::default();
                    for (i, status, reason) in failures {
                        if status == 429 || status >= 500 {
                            sent.retry.push(i);
                        } else {
                            sent.rejected.push((i, status, reason));
                        }
                    }
                    sent
                }
                // Which items failed is unknown: the whole batch is sent again.
                Err(e) => {
                    return Err(SendError {
                        retryable: true,
                        status: Some(status),
                        retry_after: None,
                        message: format!("backend answered {status} with {e}"),
                    })
                }
            },
            Protocol::Otlp => Sent {
                unnamed_rejected: super::format::otlp_rejected(answer),
                ..Sent::default()
            },
            _ => Sent::default(),
        })
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

impl FileBackend {
    async fn send(&self, body: Bytes) -> Result<(), SendError> {
        let io_err = |e: std::io::Error| SendError {
            retryable: true,
            status: None,
            retry_after: None,
            message: format!("{}: {e}", self.path.display()),
        };
        if self.path.as_os_str() == "-" {
            let mut out = tokio::io::stdout();
            out.write_all(&body).await.map_err(io_err)?;
            return out.flush().await.map_err(io_err);
        }
        let mut guard = self.file.lock().await;
        if guard.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(io_err)?;
            *guard = Some(f);
        }
        let f = guard.as_mut().unwrap();
        let result = async {
            f.write_all(&body).await?;
            f.flush().await
        }
        .await;
        if let Err(e) = result {
            *guard = None; // reopen next time (the file may have been rotated away)
            return Err(io_err(e));
        }
        Ok(())
    }
}
