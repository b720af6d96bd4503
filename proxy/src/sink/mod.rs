//! Forwarding: one route per tenant. The route batches events (max events,
//! max bytes, max wait) and sends each batch to the first available backend
//! of its tiers: the tenant's backend, or its region's tiers in order, then
//! those of the regions it may fail over to. Within a tier, backends share
//! batches by weight. A batch that fails on a backend moves at once to the
//! next available one (the rest of the tier, then the next tiers); when all
//! have failed it backs off and starts again from the preferred tier, so
//! traffic returns there once it is healthy (health.rs: ejections, checks).
//! When nothing is available, batches wait in memory up to the route's
//! budget, and intake answers 503. A batch a backend refuses as malformed
//! goes to the tenant archive's dead-letter prefix.
//!
//! This module owns the route (batching, dispatch); deliver.rs the delivery
//! of one batch; backend.rs the seams to each backend type's module.
pub mod backend;
mod client;
mod datadog;
mod deliver;
#[cfg(test)]
mod deliver_tests;
mod elasticsearch;
mod file;
pub mod health;
mod http;
mod lines;
mod loki;
mod otlp;
pub mod retry;
pub mod router;
pub mod shutdown;
mod splunk_hec;

use crate::archive::DeadLetters;
use crate::budget::{Budget, Queue, Reservation};
use crate::config::{BackendConfig, RetryConfig};
use crate::telemetry::faults::{self, Task};
use crate::telemetry::{queued_bytes, QueueKind, METRICS};
use backend::Backend;
use bytes::Bytes;
use deliver::{deliver, PendingEvents};
use health::BackendHealth;
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
    /// The log record the lines came from (none: memory buffer).
    pub progress: Option<Arc<crate::wal::Progress>>,
}

/// The intake side of one tenant's route.
pub type RouteHandle = Queue<ForwardChunk>;

/// A tenant's current route, replaced when a config reload changes routing.
pub type RouteSlot = Arc<std::sync::RwLock<RouteHandle>>;

/// A backend as one tier of a route sees it.
#[derive(Clone)]
pub struct Member {
    pub backend: Arc<Backend>,
    pub health: Arc<BackendHealth>,
    pub weight: u32,
}

struct RouteSettings {
    tenant: String,
    /// The route's first backend: events not yet tried anywhere count as pending there.
    preferred: String,
    upstream_key: Option<String>,
    /// In order of preference.
    tiers: Vec<Vec<Member>>,
    max_events: usize,
    max_bytes: usize,
    max_wait: Duration,
    retry: RetryConfig,
    in_flight: Arc<Semaphore>,
    dead_letters: Option<DeadLetters>,
    /// At most this many events per second sent (`buffer.drain_rate`), retries included.
    pace: Option<governor::DefaultDirectRateLimiter>,
}

/// What a route's batches may hold and how fast it sends.
#[derive(Debug, Clone, Copy)]
pub struct RouteLimits {
    /// The fewest events and bytes any backend of the route takes in one batch.
    pub max_events: usize,
    pub max_bytes: usize,
    /// Events per second at most (none: as fast as the backends take them).
    pub events_per_second: Option<u64>,
}

/// Starts the route carrying `tenant`'s indexed events over `tiers`. Queue
/// size, batch wait, requests in flight and retry backoff are the settings of
/// `cfg`, the route's preferred backend; a batch holds at most the fewest
/// events and bytes any backend of the route takes (`limits`), so it fits
/// wherever it fails over to.
pub fn spawn_route(
    tenant: &str,
    upstream_key: Option<String>,
    tiers: Vec<Vec<Member>>,
    cfg: &BackendConfig,
    limits: RouteLimits,
    dead_letters: Option<DeadLetters>,
    drain: CancellationToken,
) -> (RouteHandle, JoinHandle<()>) {
    let budget = Budget::new(
        cfg.max_queued_bytes.as_usize(),
        queued_bytes(QueueKind::Backend {
            tenant,
            backend: &cfg.name,
        }),
    );
    let (queue, rx) = Queue::new(budget);
    let settings = Arc::new(RouteSettings {
        tenant: tenant.to_string(),
        preferred: cfg.name.clone(),
        upstream_key,
        tiers,
        max_events: limits.max_events,
        max_bytes: limits.max_bytes,
        max_wait: cfg.batch.max_wait.0,
        retry: cfg.retry.clone(),
        in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
        dead_letters,
        pace: limits
            .events_per_second
            .map(|rate| pace(rate, limits.max_events)),
    });
    // A route that dies is reported when it does, not at shutdown.
    let handle = faults::supervise(
        Task::Route,
        tenant,
        tokio::spawn(run_route(settings, rx, drain)),
    );
    (queue, handle)
}

/// A limiter of `rate` events per second whose burst holds a whole batch.
fn pace(rate: u64, max_events: usize) -> governor::DefaultDirectRateLimiter {
    let burst = rate.max(max_events as u64);
    governor::RateLimiter::direct(crate::quota::rate::quota(rate, Some(burst)))
}

/// A batch being filled.
struct Pending {
    body: Vec<u8>,
    events: usize,
    /// Keeps the reservations of the chunks this batch holds lines of.
    holds: Vec<Arc<Reservation>>,
    /// The log records it holds lines of, released once it is delivered.
    progress: Vec<Arc<crate::wal::Progress>>,
    deadline: Instant,
}

async fn run_route(
    s: Arc<RouteSettings>,
    mut rx: mpsc::UnboundedReceiver<ForwardChunk>,
    drain: CancellationToken,
) {
    let mut pending: Option<Pending> = None;
    let mut sends: Vec<JoinHandle<()>> = Vec::new();
    let mut draining = false;
    loop {
        let deadline = pending.as_ref().map(|p| p.deadline);
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                if let Some(p) = pending.take() {
                    sends.push(dispatch(&s, p));
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
        // Pending from here until delivered or given up on (PendingEvents).
        METRICS
            .pending_events
            .with_label_values(&[&s.tenant, &s.preferred])
            .add(chunk.ranges.len() as i64);
        let hold = Arc::new(chunk.reservation);
        for r in chunk.ranges {
            let line = &chunk.lines[r.start as usize..r.end as usize];
            if let Some(p) = &pending {
                if p.events + 1 > s.max_events
                    || (p.events > 0 && p.body.len() + line.len() + 2 > s.max_bytes)
                {
                    sends.push(dispatch(&s, pending.take().unwrap()));
                }
            }
            let p = pending.get_or_insert_with(|| Pending {
                // Start small (below the allocator's mmap threshold); it grows as needed.
                body: Vec::with_capacity(s.max_bytes.min(96 * 1024)),
                events: 0,
                holds: Vec::new(),
                progress: Vec::new(),
                deadline: Instant::now() + s.max_wait,
            });
            // NDJSON whatever the backend: each backend frames it its own way when sent.
            p.body.extend_from_slice(line);
            p.body.push(b'\n');
            p.events += 1;
            if !p.holds.last().is_some_and(|h| Arc::ptr_eq(h, &hold)) {
                p.holds.push(hold.clone());
                if let Some(progress) = &chunk.progress {
                    progress.hold();
                    p.progress.push(progress.clone());
                }
            }
        }
        // Every line is in a batch now: the chunk's own hold goes.
        if let Some(progress) = &chunk.progress {
            progress.release();
        }
        reap(Task::RouteSend, &s.tenant, &mut sends);
    }
    if let Some(p) = pending.take() {
        sends.push(dispatch(&s, p));
    }
    for h in sends {
        faults::check_join(Task::RouteSend, &s.tenant, h.await);
    }
}

/// Takes the finished tasks out of `tasks`; one that panicked is reported, never dropped silently.
fn reap(task: Task, what: &str, tasks: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < tasks.len() {
        if !tasks[i].is_finished() {
            i += 1;
            continue;
        }
        let h = tasks.swap_remove(i);
        if let Some(r) = futures::FutureExt::now_or_never(h) {
            faults::check_join(task, what, r);
        }
    }
}

/// Sends the batch in its own task, holding its memory reservation until it is delivered.
///
/// A send that panics (a bug) is reported at once, and lets go of its log
/// records as if given up on: otherwise the tenant's feed would wait for them
/// until a restart, its log growing and `ack: delivered` timing out. Its
/// events are in the archive (the archive's feed reads the log on its own).
fn dispatch(s: &Arc<RouteSettings>, p: Pending) -> JoinHandle<()> {
    use futures::FutureExt;
    let s = s.clone();
    tokio::spawn(async move {
        let pending = PendingEvents::adopt(&s.tenant, &s.preferred, p.events);
        let sent = std::panic::AssertUnwindSafe(deliver(&s, p.body, p.events, pending))
            .catch_unwind()
            .await;
        if let Err(panic) = sent {
            let what = format!("tenant {}, a batch of {} events", s.tenant, p.events);
            faults::task_failed(Task::RouteSend, &what, &faults::panic_message(&*panic));
        }
        crate::wal::release_all(&p.progress);
        drop(p.holds);
    })
}

#[cfg(test)]
mod reap_tests {
    use super::*;

    /// Held by the tests that count `weir_task_failures_total{task="route_send"}` (tests run side by side).
    pub(super) static ROUTE_SEND_COUNT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn a_send_that_panicked_is_reported_not_dropped() {
        let _counting = ROUTE_SEND_COUNT.lock().await;
        let count = || {
            METRICS
                .task_failures
                .with_label_values(&["route_send"])
                .get()
        };
        let before = count();
        let mut sends = vec![
            tokio::spawn(async { panic!("a send panicked") }),
            tokio::spawn(std::future::pending::<()>()),
        ];
        while !sends[0].is_finished() {
            tokio::task::yield_now().await;
        }
        reap(Task::RouteSend, "acme", &mut sends);
        assert_eq!(
            sends.len(),
            1,
            "the finished one is taken out, the running one kept"
        );
        assert_eq!(count(), before + 1);
        sends[0].abort();
    }
}
