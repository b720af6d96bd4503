//! The HTTP transport every HTTP backend type shares: one pooled client per
//! backend (TLS with the public roots and the backend's `ca_file`), the
//! request a `Protocol` describes, compression, the time limit, Retry-After,
//! and active health checks against the backend's host.
use super::backend::{BuildError, ProbeError, Protocol, SendError, Sent, Transport};
use crate::config::{BackendConfig, Codec, HealthCheckConfig, HealthCheckType, Secret};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct HttpTransport<P> {
    client: HttpClient,
    uri: Uri,
    headers: HeaderMap,
    codec: Codec,
    level: Option<i32>,
    timeout: Duration,
    protocol: P,
}

const AGENT: &str = concat!("weir/", env!("CARGO_PKG_VERSION"));

impl<P: Protocol> HttpTransport<P> {
    pub fn boxed(cfg: &BackendConfig, protocol: P) -> Result<Box<dyn Transport>, BuildError> {
        let uri: Uri = protocol.url().parse()?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(protocol.content_type()),
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        match cfg.compression {
            Codec::Gzip => headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            Codec::Zstd => headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd")),
            Codec::None => None,
        };
        protocol.headers(&cfg.name, &mut headers)?;
        Ok(Box::new(HttpTransport {
            client: http_client(cfg)?,
            uri,
            headers,
            codec: cfg.compression,
            level: cfg.compression_level,
            timeout: cfg.request_timeout.0,
            protocol,
        }))
    }

    async fn send(
        &self,
        body: Bytes,
        events: usize,
        upstream_key: Option<&str>,
    ) -> Result<Sent, SendError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .expect("valid request");
        *req.headers_mut() = self.headers.clone();
        self.protocol
            .tenant_headers(upstream_key, req.headers_mut())?;
        match tokio::time::timeout(self.timeout, self.exchange(req, events)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(self.timeout)),
        }
    }

    /// The request and its whole answer (read so the connection returns to the pool).
    async fn exchange(&self, req: Request<Full<Bytes>>, events: usize) -> Result<Sent, SendError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| SendError::Request(error_chain(&e)))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(super::retry::parse_retry_after);
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        if status.is_success() {
            // A success is only as good as the answer that says what succeeded.
            let body = body.map_err(|e| SendError::Answer {
                status,
                retry_after,
                why: format!("but its answer could not be read: {}", error_chain(&e)),
            })?;
            return self.protocol.read_answer(status, &body, events);
        }
        let body = body.unwrap_or_default();
        Err(SendError::Status {
            status,
            retry_after,
            snippet: String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned(),
        })
    }

    /// An HTTP request or TCP connect to the backend's host.
    async fn probe(&self, cfg: &HealthCheckConfig) -> Result<(), ProbeError> {
        let authority = self.uri.authority().ok_or(ProbeError::NoHost)?;
        let https = self.uri.scheme_str() == Some("https");
        if cfg.kind == HealthCheckType::Tcp {
            let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
            return tokio::net::TcpStream::connect((authority.host(), port))
                .await
                .map(|_| ())
                .map_err(ProbeError::Connect);
        }
        let uri = format!(
            "{}://{authority}{}",
            if https { "https" } else { "http" },
            cfg.path
        );
        let method = Method::from_bytes(cfg.method.as_bytes())
            .map_err(|_| ProbeError::Method(cfg.method.clone()))?;
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(USER_AGENT, AGENT)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ProbeError::Request(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| ProbeError::Failed(error_chain(&e)))?;
        if resp.status().as_u16() == cfg.expected_status {
            Ok(())
        } else {
            Err(ProbeError::Status {
                got: resp.status().as_u16(),
                expected: cfg.expected_status,
            })
        }
    }
}

impl<P: Protocol> Transport for HttpTransport<P> {
    fn encode(&self, ndjson: Vec<u8>, tenant: &str) -> Bytes {
        compress(self.codec, self.level, self.protocol.body(ndjson, tenant))
    }

    fn send<'a>(
        &'a self,
        body: Bytes,
        events: usize,
        upstream_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        HttpTransport::send(self, body, events, upstream_key).boxed()
    }

    fn probe<'a>(&'a self, check: &'a HealthCheckConfig) -> BoxFuture<'a, Result<(), ProbeError>> {
        HttpTransport::probe(self, check).boxed()
    }
}

/// The user's `headers` (sensitive: never logged), over any set before.
pub fn insert_headers(
    backend: &str,
    headers: &BTreeMap<String, Secret>,
    out: &mut HeaderMap,
) -> Result<(), BuildError> {
    for (k, v) in headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|_| BuildError::HeaderName {
            backend: backend.to_string(),
            header: k.clone(),
        })?;
        let mut value = HeaderValue::try_from(v.expose()).map_err(|_| BuildError::HeaderValue {
            backend: backend.to_string(),
            header: k.clone(),
        })?;
        value.set_sensitive(true);
        out.insert(name, value);
    }
    Ok(())
}

/// `endpoint` without its trailing slashes, then `path`.
pub fn join(endpoint: &str, path: &str) -> String {
    format!("{}{path}", endpoint.trim_end_matches('/'))
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

/// The backend's HTTP client: the public roots and `ca_file`; with
/// `client_cert` and `client_key`, presenting that certificate (mutual TLS).
fn http_client(cfg: &crate::config::BackendConfig) -> Result<HttpClient, BuildError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca_file = cfg.ca_file.as_deref();
    let ca_error = |path: &std::path::Path, e: &dyn std::fmt::Display| BuildError::CaFile {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(path, &e))? {
            roots.add(cert.map_err(|e| ca_error(path, &e))?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let tls = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ca_error(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ca_error(key, &e))?;
            tls.with_client_auth_cert(chain, key)?
        }
        // The config checks they go together.
        _ => tls.with_no_client_auth(),
    };
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

/// An error and its sources, as one line.
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

#[cfg(test)]
mod tests {
    use super::super::backend::Backend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend on `addr` as the config resolves it.
    fn backend(kind: &str, addr: std::net::SocketAddr) -> Backend {
        let plan = crate::plan::Plan::parse(
            &format!(
                "listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]
archive: {{store: {{type: local, root: /nonexistent}}}}
backends: [{{name: b, type: {kind}, endpoint: \"http://{addr}\", compression: none}}]
tenants: [{{name: t, api_keys: [k], backend: b}}]
"
            ),
            "weir.yaml",
        )
        .unwrap();
        Backend::from_config(&plan.config.backends[0]).unwrap()
    }

    /// Answers one request with `head` and `body`, then closes the connection.
    async fn answer_once(head: &'static str, body: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // The whole request first (head, then Content-Length bytes).
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                assert!(n > 0, "the request ended early");
            }
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn a_2xx_whose_answer_is_cut_off_is_a_failed_send_not_a_delivery() {
        // 200 promising 120 bytes of _bulk answer; the connection closes after 34.
        let addr = answer_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 120\r\n\r\n",
            r#"{"took":1,"errors":false,"items":["#,
        )
        .await;
        let es = backend("elasticsearch", addr);
        let body = es.encode(b"{\"message\":\"m\"}\n".to_vec(), "t");
        let e = es.send(body, 1, None).await.expect_err("not a delivery");
        assert!(e.retryable(), "sent again: {e}");
        assert!(e.to_string().contains("could not be read"), "{e}");
    }

    #[tokio::test]
    async fn a_2xx_bulk_answer_read_whole_is_a_delivery() {
        let addr = answer_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 61\r\n\r\n",
            r#"{"took":1,"errors":false,"items":[{"create":{"status":201}}]}"#,
        )
        .await;
        let es = backend("elasticsearch", addr);
        let body = es.encode(b"{\"message\":\"m\"}\n".to_vec(), "t");
        let sent = es.send(body, 1, None).await.unwrap();
        assert!(sent.retry.is_empty() && sent.rejected.is_empty());
    }
}
