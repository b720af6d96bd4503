//! The admin listener: Prometheus `/metrics`, `/healthz` (the process
//! answers), `/readyz` (it takes traffic: listeners bound, not draining) and
//! the run-time control API under `/admin/` (control.rs).
pub mod control;
mod overrides;
mod tail;

use crate::intake::{error_response, json_response};
use crate::pipeline::{RejectReason, Rejection};
use crate::telemetry;
use bytes::Bytes;
use control::Control;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The OpenAPI description of this listener, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("openapi.yaml");

/// An admin answer's body: whole (JSON, metrics) or a stream (live tail).
pub type AdminBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        telemetry::METRICS.ready.set(ready as i64);
    }
}

pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    control: Arc<Control>,
    stop: CancellationToken,
) {
    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let health = health.clone();
        let control = control.clone();
        let svc = service_fn(move |req| handle(req, health.clone(), control.clone()));
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    health: Arc<Health>,
    control: Arc<Control>,
) -> Result<Response<AdminBody>, Infallible> {
    if let Some(allow) = allowed_methods(req.uri().path()) {
        let method = req.method().as_str();
        if !allow.split(", ").any(|m| m == method) {
            let mut r = whole(error_response(&Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                RejectReason::Admin,
                format!("{} takes {allow}, not {method}", req.uri().path()),
            )));
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            return Ok(r);
        }
    }
    if req.uri().path() == "/admin/tail" && req.method() == Method::GET {
        let answer = control
            .authorize(
                req.headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )
            .and_then(|()| tail::open(req.uri().query(), &control));
        return Ok(answer.unwrap_or_else(|r| whole(error_response(&r))));
    }
    Ok(whole(answer(req, health, control).await))
}

/// The methods a known admin path takes (what a 405 lists in `Allow`); none:
/// no such path (404). Kept in step with openapi.yaml by tests/python/test_openapi.py.
pub(crate) fn allowed_methods(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Some(match parts.as_slice() {
        ["metrics" | "healthz" | "readyz" | "backends" | "openapi.yaml"] => "GET, HEAD",
        ["admin", "rules" | "quotas" | "tail" | "patterns"] => "GET",
        ["admin", "rules", _] => "POST",
        ["admin", "rules", _, _] => "PATCH, DELETE",
        ["admin", "quotas", _] => "PATCH",
        ["admin", "overrides"] => "GET, DELETE",
        ["admin", "reload"] | ["admin", "config", "reload"] => "POST",
        ["admin", "rehydrations"] => "GET, POST",
        ["admin", "rehydrations", _] => "GET, DELETE",
        _ => return None,
    })
}

/// A whole answer as an admin body.
fn whole(r: Response<Full<Bytes>>) -> Response<AdminBody> {
    r.map(|b| b.boxed_unsync())
}

async fn answer(
    req: Request<Incoming>,
    health: Arc<Health>,
    control: Arc<Control>,
) -> Response<Full<Bytes>> {
    if let Some(path) = req.uri().path().strip_prefix("/admin/") {
        let path = path.to_string();
        return match control_request(req, &path, &control).await {
            Ok((status, body)) => {
                json_response(status, Bytes::from(serde_json::to_vec(&body).unwrap()))
            }
            Err(r) => error_response(&r),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(&Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            RejectReason::Admin,
            "admin endpoints take GET",
        ));
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(telemetry::render())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        // Read-only, like /metrics: states and errors, never credentials.
        "/backends" => json_response(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&control.backend_reports()).unwrap()),
        ),
        "/healthz" => json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
        // The admin API's description, as built into this binary (tests/python/test_openapi.py
        // checks the server against it).
        "/openapi.yaml" => {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/yaml"),
            );
            r
        }
        // Ready while listeners are bound and not draining. Quarantined plugins
        // are listed but leave it ready: their batches take `on_error`.
        "/readyz" => {
            let ready = health.ready.load(Ordering::SeqCst);
            // A task that died lost the work it held: out of the load balancer until restarted.
            let (failures, last) = telemetry::faults::failures();
            // A full or failing disk buffer refuses requests: out of the load balancer until it takes writes.
            let (disk_ok, buffer) = control.buffer_health();
            let body = serde_json::json!({
                "status": match (ready, failures, disk_ok) {
                    (false, ..) => "not ready",
                    (true, 0, true) => "ready",
                    (true, ..) => "degraded",
                },
                "task_failures": failures,
                "last_task_failure": last,
                "plugins": control.plugin_health(),
                "buffer": buffer,
                // Redis down does not make an instance unready: the fleet policy applies.
                "fleet": control.fleet_report(),
                // Nor does an archive store down: objects go to the next store, or wait.
                "archive_stores": control.archive_report(),
            });
            let ready = ready && failures == 0 && disk_ok;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(status, Bytes::from(serde_json::to_vec(&body).unwrap()))
        }
        other => error_response(&Rejection::new(
            StatusCode::NOT_FOUND,
            RejectReason::Admin,
            format!("no admin endpoint at {other}; try /metrics, /healthz, /readyz, /backends, /openapi.yaml"),
        )),
    }
}

async fn control_request(
    req: Request<Incoming>,
    path: &str,
    control: &Control,
) -> Result<(StatusCode, serde_json::Value), Rejection> {
    control.authorize(
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )?;
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_string);
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| {
            Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                RejectReason::Admin,
                "control request bodies are limited to 64 KiB",
            )
        })?
        .to_bytes();
    control.handle(&method, path, query.as_deref(), &body)
}
