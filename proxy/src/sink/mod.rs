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
pub mod backend;
pub mod format;
pub mod health;
pub mod retry;
pub mod router;
pub mod shutdown;

use crate::archive::DeadLetters;
use crate::budget::{Budget, Queue, Reservation};
use crate::config::{BackendConfig, RetryConfig};
use crate::telemetry::faults::{self, Task};
use crate::telemetry::{queued_bytes, DropReason, QueueKind, SendOutcome, METRICS};
use backend::Backend;
use bytes::Bytes;
use health::BackendHealth;
use std::collections::BTreeMap;
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
}

/// Starts the route carrying `tenant`'s indexed events over `tiers`. Queue
/// size, batch wait, requests in flight and retry backoff are the settings of
/// `cfg`, the route's preferred backend; a batch holds at most the fewest
/// events and bytes any backend of the route takes (`batch_limits`), so it
/// fits wherever it fails over to.
pub fn spawn_route(
    tenant: &str,
    upstream_key: Option<String>,
    tiers: Vec<Vec<Member>>,
    cfg: &BackendConfig,
    batch_limits: (usize, usize),
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
        max_events: batch_limits.0,
        max_bytes: batch_limits.1,
        max_wait: cfg.batch.max_wait.0,
        retry: cfg.retry.clone(),
        in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
        dead_letters,
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
                deadline: Instant::now() + s.max_wait,
            });
            // NDJSON whatever the backend: each backend frames it its own way when sent.
            p.body.extend_from_slice(line);
            p.body.push(b'\n');
            p.events += 1;
            if !p.holds.last().is_some_and(|h| Arc::ptr_eq(h, &hold)) {
                p.holds.push(hold.clone());
            }
        }
        reap(&s.tenant, &mut sends);
    }
    if let Some(p) = pending.take() {
        sends.push(dispatch(&s, p));
    }
    for h in sends {
        faults::check_join(Task::RouteSend, &s.tenant, h.await);
    }
}

/// Takes the finished sends out of `sends`; one that panicked is reported, never dropped silently.
fn reap(tenant: &str, sends: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < sends.len() {
        if !sends[i].is_finished() {
            i += 1;
            continue;
        }
        let h = sends.swap_remove(i);
        if let Some(r) = futures::FutureExt::now_or_never(h) {
            faults::check_join(Task::RouteSend, tenant, r);
        }
    }
}

/// Sends the batch in its own task, holding its memory reservation until it is delivered.
fn dispatch(s: &Arc<RouteSettings>, p: Pending) -> JoinHandle<()> {
    let s = s.clone();
    tokio::spawn(async move {
        let pending = PendingEvents::adopt(&s.tenant, &s.preferred, p.events);
        deliver(&s, p.body, p.events, pending).await;
        drop(p.holds);
    })
}

impl RouteSettings {
    /// The first tier with a backend not yet tried in this round (an available
    /// one, or with `any`, ejected or down ones too), and a backend of it,
    /// chosen by weight.
    fn pick(&self, tried: &[(usize, usize)], any: bool) -> Option<(usize, usize)> {
        for (ti, tier) in self.tiers.iter().enumerate() {
            let open: Vec<usize> = (0..tier.len())
                .filter(|mi| !tried.contains(&(ti, *mi)) && (any || tier[*mi].health.available()))
                .collect();
            let total: u64 = open.iter().map(|&mi| tier[mi].weight as u64).sum();
            if total == 0 {
                continue;
            }
            let mut r = rand::random_range(0..total);
            for &mi in &open {
                let w = tier[mi].weight as u64;
                if r < w {
                    return Some((ti, mi));
                }
                r -= w;
            }
        }
        None
    }
}

/// The events of one batch in `weir_pending_events`, by the backend last
/// tried; they stop being pending when this is dropped (delivered, dead-lettered or dropped).
struct PendingEvents {
    tenant: String,
    backend: String,
    gauge: prometheus::IntGauge,
    events: usize,
}

impl PendingEvents {
    /// Takes over `events` the route already counted as pending on `backend`.
    fn adopt(tenant: &str, backend: &str, events: usize) -> PendingEvents {
        PendingEvents {
            tenant: tenant.to_string(),
            backend: backend.to_string(),
            gauge: METRICS.pending_events.with_label_values(&[tenant, backend]),
            events,
        }
    }

    fn attribute_to(&mut self, backend: &str) {
        if backend != self.backend {
            self.gauge.sub(self.events as i64);
            self.backend = backend.to_string();
            self.gauge = METRICS
                .pending_events
                .with_label_values(&[&self.tenant, backend]);
            self.gauge.add(self.events as i64);
        }
    }

    /// Fewer events are left (the others were settled).
    fn set(&mut self, events: usize) {
        self.gauge.sub(self.events as i64 - events as i64);
        self.events = events;
    }
}

impl Drop for PendingEvents {
    fn drop(&mut self) {
        self.gauge.sub(self.events as i64);
    }
}

/// One batch being delivered, across its attempts.
struct Attempts {
    ndjson: Arc<Vec<u8>>,
    raw_len: usize,
    events: usize,
    attempt: u32,
    /// Backends tried in this round, as (tier, member).
    tried: Vec<(usize, usize)>,
    /// The backend the last attempt failed on.
    failed_on: Option<Arc<BackendHealth>>,
    /// The longest Retry-After a backend answered in this round.
    round_retry_after: Option<Duration>,
    /// Bodies already framed and compressed, by backend (a retry on the same backend reuses it).
    encoded: Vec<((usize, usize), Bytes)>,
    pending: PendingEvents,
}

/// Delivers one NDJSON batch: to the preferred available backend, failing over
/// on retryable errors, backing off when every backend has failed, waiting
/// while none is available. Gives up only on `retry.max_retries`.
async fn deliver(s: &RouteSettings, ndjson: Vec<u8>, events: usize, pending: PendingEvents) {
    let mut b = Attempts {
        raw_len: ndjson.len(),
        ndjson: Arc::new(ndjson),
        events,
        attempt: 0,
        tried: Vec::new(),
        failed_on: None,
        round_retry_after: None,
        encoded: Vec::new(),
        pending,
    };
    loop {
        let Some((ti, mi)) = choose(s, &mut b) else {
            // Every backend failed this round: back off, then start over from the preferred tier.
            let wait = retry::backoff(
                b.attempt,
                s.retry.initial_backoff.0,
                s.retry.max_backoff.0,
                b.round_retry_after.take(),
            );
            tokio::time::sleep(wait).await;
            b.tried.clear();
            continue;
        };
        let m = &s.tiers[ti][mi];
        let name = m.backend.name();
        b.pending.attribute_to(name);
        let body = encode(s, &mut b, (ti, mi)).await;
        match send(s, m, body).await {
            Ok(sent) => {
                m.health.record_success();
                if !settle(s, &mut b, name, sent).await {
                    return;
                }
                // Lines the backend asked for again: they are the batch now, retried like a failed one.
                METRICS.backend_retries.with_label_values(&[name]).inc();
            }
            Err(e) if !e.retryable => {
                // The backend is up; it refused this batch's content.
                m.health.record_success();
                let status = e
                    .status
                    .map(|c| c.as_u16().to_string())
                    .unwrap_or_else(|| "none".into());
                dead_letter(s, name, &status, &b.ndjson, b.events, &e.message).await;
                return;
            }
            Err(e) => {
                m.health.record_failure(&e.message);
                if s.retry.max_retries.is_some_and(|max| b.attempt >= max) {
                    METRICS
                        .backend_dropped_events
                        .with_label_values(&[
                            &s.tenant,
                            name,
                            DropReason::RetriesExhausted.as_str(),
                        ])
                        .inc_by(b.events as u64);
                    tracing::error!(tenant = %s.tenant, backend = name, events = b.events, attempts = b.attempt + 1, error = %e.message, "giving up on a batch after its last retry");
                    return;
                }
                // Only now is it a retry: the batch will be sent again.
                METRICS.backend_retries.with_label_values(&[name]).inc();
                tracing::warn!(tenant = %s.tenant, backend = name, attempt = b.attempt, error = %e.message, "backend send failed; trying the next backend or again");
                b.round_retry_after = b.round_retry_after.max(e.retry_after);
            }
        }
        b.tried.push((ti, mi));
        b.failed_on = Some(m.health.clone());
        b.attempt += 1;
    }
}

/// The backend for the next attempt, or none when every one was tried this
/// round. The batch is meant for a backend by preference and weight among
/// those not yet tried; an ejected or down one is passed over for an
/// available one while any is left. Leaving the backend the last attempt
/// failed on, or passing over the one the batch was meant for, is a failover.
fn choose(s: &RouteSettings, b: &mut Attempts) -> Option<(usize, usize)> {
    let meant = s.pick(&b.tried, true)?;
    let health = |(ti, mi): (usize, usize)| &s.tiers[ti][mi].health;
    let chosen = if health(meant).available() {
        meant
    } else {
        // None available: health decides where batches go first, never whether they are delivered.
        s.pick(&b.tried, false).unwrap_or(meant)
    };
    let to = s.tiers[chosen.0][chosen.1].backend.name();
    let failed_on = b.failed_on.take();
    let failed_there = failed_on.is_some();
    let from = failed_on.or_else(|| (chosen != meant).then(|| health(meant).clone()));
    if let Some(from) = from.filter(|f| f.name != to) {
        from.record_failover();
        METRICS
            .backend_failovers
            .with_label_values(&[&s.tenant, &from.name, to])
            .inc();
        if failed_there {
            tracing::warn!(tenant = %s.tenant, from = %from.name, to, events = b.events, "batch failing over to another backend");
        } else {
            tracing::debug!(tenant = %s.tenant, from = %from.name, to, events = b.events, "batch sent past a backend that is ejected or down");
        }
    }
    Some(chosen)
}

/// The batch framed and compressed for the backend at `at` (cached per backend).
async fn encode(s: &RouteSettings, b: &mut Attempts, at: (usize, usize)) -> Bytes {
    if let Some((_, body)) = b.encoded.iter().find(|(k, _)| *k == at) {
        return body.clone();
    }
    let backend = s.tiers[at.0][at.1].backend.clone();
    let (raw, tenant) = (b.ndjson.clone(), s.tenant.clone());
    // The wire format and compression are CPU work: off the async workers.
    let body =
        tokio::task::spawn_blocking(move || backend.encode(backend.body(raw.to_vec(), &tenant)))
            .await
            .expect("compression does not panic");
    b.encoded.push((at, body.clone()));
    body
}

/// One request to `m`, within the route's in-flight limit, counted by outcome.
async fn send(
    s: &RouteSettings,
    m: &Member,
    body: Bytes,
) -> Result<backend::Sent, backend::SendError> {
    let name = m.backend.name();
    let permit = s
        .in_flight
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    let gauge = METRICS.inflight_batches.with_label_values(&[name]);
    gauge.inc();
    let started = std::time::Instant::now();
    let result = m.backend.send(body, s.upstream_key.as_deref()).await;
    gauge.dec();
    drop(permit);
    let outcome = match &result {
        Ok(_) => SendOutcome::Ok,
        Err(e) if e.retryable => SendOutcome::RetryableError,
        Err(_) => SendOutcome::Rejected,
    }
    .as_str();
    METRICS
        .backend_latency
        .with_label_values(&[name, outcome])
        .observe(started.elapsed().as_secs_f64());
    METRICS
        .backend_requests
        .with_label_values(&[name, outcome])
        .inc();
    result
}

/// Counts what a backend took, dead-letters what it refused line by line, and
/// makes the lines it asked for again the batch. True when lines are left to retry.
async fn settle(s: &RouteSettings, b: &mut Attempts, name: &str, mut sent: backend::Sent) -> bool {
    let events = b.events;
    // Only items that name a line of this batch, once, in order.
    sent.retry.retain(|&i| i < events);
    sent.retry.dedup();
    sent.rejected
        .retain(|(i, ..)| *i < events && !sent.retry.contains(i));
    sent.rejected.dedup_by_key(|(i, ..)| *i);
    // Refused without naming which: nothing to dead-letter or retry, so counted as dropped.
    let unnamed = sent.unnamed_rejected.as_ref().map_or(0, |(n, _)| {
        (*n as usize).min(events - sent.retry.len() - sent.rejected.len())
    });
    if let Some((_, why)) = &sent.unnamed_rejected {
        METRICS
            .backend_dropped_events
            .with_label_values(&[&s.tenant, name, DropReason::PartialSuccess.as_str()])
            .inc_by(unnamed as u64);
        tracing::error!(tenant = %s.tenant, backend = name, rejected = unnamed, error = %why, "the backend accepted a batch but rejected some of its records without naming them; counted as dropped");
    }
    let done = events - sent.retry.len() - sent.rejected.len() - unnamed;
    METRICS
        .forwarded_events
        .with_label_values(&[&s.tenant, name])
        .inc_by(done as u64);
    METRICS
        .forwarded_bytes
        .with_label_values(&[&s.tenant, name])
        .inc_by(b.raw_len as u64);
    // Lines refused one by one: dead letters, grouped by status.
    let mut by_status: BTreeMap<u16, (Vec<usize>, String)> = BTreeMap::new();
    for (i, status, why) in sent.rejected {
        let e = by_status.entry(status).or_insert_with(|| (Vec::new(), why));
        e.0.push(i);
    }
    for (status, (lines, why)) in by_status {
        let ndjson = select_lines(&b.ndjson, &lines);
        dead_letter(s, name, &status.to_string(), &ndjson, lines.len(), &why).await;
    }
    if sent.retry.is_empty() {
        return false;
    }
    tracing::warn!(tenant = %s.tenant, backend = name, lines = sent.retry.len(), "backend asked for part of a batch again");
    b.ndjson = Arc::new(select_lines(&b.ndjson, &sent.retry));
    b.events = sent.retry.len();
    b.raw_len = b.ndjson.len();
    b.pending.set(b.events);
    b.encoded.clear();
    true
}

/// The lines of an NDJSON batch at `indices` (ascending), as NDJSON.
fn select_lines(ndjson: &[u8], indices: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut want = indices.iter().peekable();
    for (i, line) in ndjson.split(|&b| b == b'\n').enumerate() {
        if want.peek() == Some(&&i) {
            out.extend_from_slice(line);
            out.push(b'\n');
            want.next();
        }
    }
    out
}

/// Keeps a refused batch in the tenant's archive (`dead-letter/<tenant>/`), or counts it dropped without one.
async fn dead_letter(
    s: &RouteSettings,
    backend: &str,
    status: &str,
    ndjson: &[u8],
    events: usize,
    why: &str,
) {
    let Some(dl) = &s.dead_letters else {
        METRICS
            .backend_dropped_events
            .with_label_values(&[&s.tenant, backend, DropReason::Rejected.as_str()])
            .inc_by(events as u64);
        tracing::error!(tenant = %s.tenant, backend, status, events, error = %why, "backend refused a batch; no archive to dead-letter it to, dropped");
        return;
    };
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        match dl.write(backend, status, ndjson).await {
            Ok(path) => {
                METRICS
                    .dead_lettered_events
                    .with_label_values(&[&s.tenant, backend, status])
                    .inc_by(events as u64);
                tracing::error!(tenant = %s.tenant, backend, status, events, object = %path, error = %why, "backend refused a batch as malformed; dead-lettered to the archive, not retried");
                return;
            }
            Err(e) => {
                tracing::warn!(tenant = %s.tenant, backend, error = %e, "dead-letter write failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    METRICS
        .backend_dropped_events
        .with_label_values(&[&s.tenant, backend, DropReason::DeadLetterFailed.as_str()])
        .inc_by(events as u64);
    tracing::error!(tenant = %s.tenant, backend, status, events, "backend refused a batch and the dead-letter write failed; dropped");
}

#[cfg(test)]
mod reap_tests {
    use super::*;

    #[tokio::test]
    async fn a_send_that_panicked_is_reported_not_dropped() {
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
        reap("acme", &mut sends);
        assert_eq!(
            sends.len(),
            1,
            "the finished one is taken out, the running one kept"
        );
        assert_eq!(count(), before + 1);
        sends[0].abort();
    }
}
