//! Forwarding: one route per tenant to its backend. The route batches events
//! (max events, max bytes, max wait), compresses each batch once, keeps a
//! bounded number of requests in flight and retries retryable failures with
//! backoff until delivered. Memory is bounded by the route's budget: while a
//! backend is down, batches wait, the budget fills, and intake answers 503.
pub mod backend;
pub mod retry;

use crate::config::{BackendConfig, RetryConfig};
use crate::pipeline::budget::{Budget, Queue, Reservation};
use crate::telemetry::METRICS;
use backend::Backend;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Events for a backend: the serialized lines of one request and which of them to forward.
pub struct ForwardChunk {
    pub lines: Bytes,
    pub ranges: Vec<Range<u32>>,
    pub reservation: Reservation,
}

/// The intake side of one tenant's route.
pub type RouteHandle = Queue<ForwardChunk>;

struct RouteSettings {
    tenant: String,
    upstream_key: Option<String>,
    backend: Arc<Backend>,
    max_events: usize,
    max_bytes: usize,
    max_wait: Duration,
    retry: RetryConfig,
    in_flight: Arc<Semaphore>,
}

/// Starts the route carrying `tenant`'s indexed events to `backend`.
pub fn spawn_route(
    tenant: &str,
    upstream_key: Option<String>,
    backend: Arc<Backend>,
    cfg: &BackendConfig,
    drain: CancellationToken,
) -> (RouteHandle, JoinHandle<()>) {
    let budget = Budget::new(
        cfg.max_queued_bytes.as_usize(),
        METRICS
            .queued_bytes
            .with_label_values(&[&format!("backend:{}:{tenant}", cfg.name)]),
    );
    let (queue, rx) = Queue::new(budget);
    let settings = Arc::new(RouteSettings {
        tenant: tenant.to_string(),
        upstream_key,
        backend,
        max_events: cfg.batch.max_events,
        max_bytes: cfg.batch.max_bytes.as_usize(),
        max_wait: cfg.batch.max_wait.0,
        retry: cfg.retry.clone(),
        in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
    });
    let handle = tokio::spawn(run_route(settings, rx, drain));
    (queue, handle)
}

/// A batch being filled.
struct Pending {
    body: Vec<u8>,
    events: usize,
    /// Keeps the reservations of the chunks this batch holds lines of.
    holds: Vec<Arc<Reservation>>,
    deadline: Instant,
}

async fn run_route(
    s: Arc<RouteSettings>,
    mut rx: mpsc::UnboundedReceiver<ForwardChunk>,
    drain: CancellationToken,
) {
    let ndjson = s.backend.ndjson();
    let mut pending: Option<Pending> = None;
    let mut sends: Vec<JoinHandle<()>> = Vec::new();
    let mut draining = false;
    loop {
        let deadline = pending.as_ref().map(|p| p.deadline);
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                if let Some(p) = pending.take() {
                    sends.push(dispatch(&s, p, ndjson));
                }
                continue;
            }
            _ = drain.cancelled(), if !draining => {
                // Shutdown: stop taking new chunks; what is queued is still sent.
                draining = true;
                rx.close();
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        let hold = Arc::new(chunk.reservation);
        for r in chunk.ranges {
            let line = &chunk.lines[r.start as usize..r.end as usize];
            if let Some(p) = &pending {
                if p.events + 1 > s.max_events
                    || (p.events > 0 && p.body.len() + line.len() + 2 > s.max_bytes)
                {
                    sends.push(dispatch(&s, pending.take().unwrap(), ndjson));
                }
            }
            let p = pending.get_or_insert_with(|| Pending {
                // Start small (below the allocator's mmap threshold); it grows as needed.
                body: Vec::with_capacity(s.max_bytes.min(96 * 1024)),
                events: 0,
                holds: Vec::new(),
                deadline: Instant::now() + s.max_wait,
            });
            if !ndjson {
                p.body.push(if p.events == 0 { b'[' } else { b',' });
            }
            p.body.extend_from_slice(line);
            if ndjson {
                p.body.push(b'\n');
            }
            p.events += 1;
            if !p.holds.last().is_some_and(|h| Arc::ptr_eq(h, &hold)) {
                p.holds.push(hold.clone());
            }
        }
        sends.retain(|h| !h.is_finished());
    }
    if let Some(p) = pending.take() {
        sends.push(dispatch(&s, p, ndjson));
    }
    for h in sends {
        let _ = h.await;
    }
}

/// Sends the batch in its own task: compress first (off the async workers),
/// then wait for an in-flight slot, so a slot covers only the HTTP exchange.
fn dispatch(s: &Arc<RouteSettings>, mut p: Pending, ndjson: bool) -> JoinHandle<()> {
    if !ndjson {
        p.body.push(b']');
    }
    let s = s.clone();
    tokio::spawn(async move {
        let raw_len = p.body.len();
        let events = p.events;
        let backend = s.backend.clone();
        let body = tokio::task::spawn_blocking(move || backend.encode(p.body))
            .await
            .expect("compression does not panic");
        let permit = s
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let name = s.backend.name().to_string();
        let gauge = METRICS.inflight_batches.with_label_values(&[&name]);
        gauge.inc();
        deliver(&s, &name, body, events, raw_len).await;
        gauge.dec();
        drop(p.holds);
        drop(permit);
    })
}

async fn deliver(s: &RouteSettings, backend: &str, body: Bytes, events: usize, raw_len: usize) {
    let mut attempt = 0u32;
    loop {
        let started = std::time::Instant::now();
        let result = s
            .backend
            .send(body.clone(), s.upstream_key.as_deref())
            .await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(e) if e.retryable => "retryable_error",
            Err(_) => "rejected",
        };
        METRICS
            .backend_latency
            .with_label_values(&[backend, outcome])
            .observe(started.elapsed().as_secs_f64());
        METRICS
            .backend_requests
            .with_label_values(&[backend, outcome])
            .inc();
        match result {
            Ok(()) => {
                METRICS
                    .forwarded_events
                    .with_label_values(&[&s.tenant, backend])
                    .inc_by(events as u64);
                METRICS
                    .forwarded_bytes
                    .with_label_values(&[&s.tenant, backend])
                    .inc_by(raw_len as u64);
                return;
            }
            Err(e) if !e.retryable => {
                let status = e
                    .status
                    .map(|c| c.as_u16().to_string())
                    .unwrap_or_else(|| "none".into());
                METRICS
                    .backend_dropped_events
                    .with_label_values(&[&s.tenant, backend, &status])
                    .inc_by(events as u64);
                tracing::error!(tenant = %s.tenant, backend, events, error = %e.message, "backend refused a batch; not retrying it");
                return;
            }
            Err(e) => {
                if s.retry.max_retries.is_some_and(|m| attempt >= m) {
                    METRICS
                        .backend_dropped_events
                        .with_label_values(&[&s.tenant, backend, "retries_exhausted"])
                        .inc_by(events as u64);
                    tracing::error!(tenant = %s.tenant, backend, events, attempts = attempt + 1, error = %e.message, "giving up on a batch after its last retry");
                    return;
                }
                let wait = retry::backoff(
                    attempt,
                    s.retry.initial_backoff.0,
                    s.retry.max_backoff.0,
                    e.retry_after,
                );
                tracing::warn!(tenant = %s.tenant, backend, attempt, retry_in = ?wait, error = %e.message, "backend send failed; will retry");
                METRICS.backend_retries.with_label_values(&[backend]).inc();
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}
