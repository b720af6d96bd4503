//! Delivery of one batch: to the preferred available backend of its route,
//! failing over on retryable errors, backing off when every backend has
//! failed, dead-lettering what a backend refuses as malformed. Backends are
//! reached through `Transport` (backend.rs), so these rules are tested
//! against a fake backend (deliver_tests.rs), without processes or sleeps.
use super::backend::{SendError, Sent};
use super::health::BackendHealth;
use super::{retry, Member, RouteSettings};
use crate::telemetry::{DropReason, SendOutcome, METRICS};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
pub(super) struct PendingEvents {
    tenant: String,
    backend: String,
    gauge: prometheus::IntGauge,
    events: usize,
}

impl PendingEvents {
    /// Takes over `events` the route already counted as pending on `backend`.
    pub(super) fn adopt(tenant: &str, backend: &str, events: usize) -> PendingEvents {
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

/// What is left after one attempt.
enum Next {
    /// Delivered, dead-lettered or given up on.
    Done,
    /// The batch (or the lines the backend asked for again) goes to the next backend.
    Elsewhere,
}

/// Delivers one NDJSON batch: to the preferred available backend, failing over
/// on retryable errors, backing off when every backend has failed, waiting
/// while none is available. Gives up only on `retry.max_retries`.
pub(super) async fn deliver(
    s: &RouteSettings,
    ndjson: Vec<u8>,
    events: usize,
    pending: PendingEvents,
) {
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
        let Some(at) = choose(s, &mut b) else {
            back_off(s, &mut b).await;
            continue;
        };
        if let Next::Done = attempt(s, &mut b, at).await {
            return;
        }
        b.tried.push(at);
        b.failed_on = Some(s.tiers[at.0][at.1].health.clone());
        b.attempt += 1;
    }
}

/// Every backend failed this round: waits, then starts over from the preferred tier.
async fn back_off(s: &RouteSettings, b: &mut Attempts) {
    let wait = retry::backoff(
        b.attempt,
        s.retry.initial_backoff.0,
        s.retry.max_backoff.0,
        b.round_retry_after.take(),
    );
    tokio::time::sleep(wait).await;
    b.tried.clear();
}

/// One send of the batch to the backend at `at`, and what its outcome leaves to do.
async fn attempt(s: &RouteSettings, b: &mut Attempts, at: (usize, usize)) -> Next {
    let m = &s.tiers[at.0][at.1];
    let name = m.backend.name();
    b.pending.attribute_to(name);
    let body = encode(s, b, at).await;
    match send(s, m, body, b.events).await {
        Ok(sent) => {
            m.health.record_success();
            if !settle(s, b, name, sent).await {
                return Next::Done;
            }
            // Lines the backend asked for again: they are the batch now, retried like a failed one.
            METRICS.backend_retries.with_label_values(&[name]).inc();
            Next::Elsewhere
        }
        Err(e) if !e.retryable() => {
            // The backend is up; it refused this batch's content.
            m.health.record_success();
            let status = e
                .status()
                .map(|c| c.as_u16().to_string())
                .unwrap_or_else(|| "none".into());
            dead_letter(s, name, &status, &b.ndjson, b.events, &e.to_string()).await;
            Next::Done
        }
        Err(e) => failed(s, b, m, &e),
    }
}

/// A retryable failure: counted against the backend's health; the batch is
/// given up on at `retry.max_retries`, otherwise tried again.
fn failed(s: &RouteSettings, b: &mut Attempts, m: &Member, e: &SendError) -> Next {
    let name = m.backend.name();
    m.health.record_failure(&e.to_string());
    if s.retry.max_retries.is_some_and(|max| b.attempt >= max) {
        METRICS
            .backend_dropped_events
            .with_label_values(&[&s.tenant, name, DropReason::RetriesExhausted.as_str()])
            .inc_by(b.events as u64);
        tracing::error!(tenant = %s.tenant, backend = name, events = b.events, attempts = b.attempt + 1, error = %e, "giving up on a batch after its last retry");
        return Next::Done;
    }
    // Only now is it a retry: the batch will be sent again.
    METRICS.backend_retries.with_label_values(&[name]).inc();
    tracing::warn!(tenant = %s.tenant, backend = name, attempt = b.attempt, error = %e, "backend send failed; trying the next backend or again");
    b.round_retry_after = b.round_retry_after.max(e.retry_after());
    Next::Elsewhere
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
    // The wire format and compression are CPU work: off the async workers, on delivery's threads.
    let (workers, lane) = crate::workers::Workers::delivery();
    let body = workers
        .run(*lane, move || backend.encode(raw.to_vec(), &tenant))
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
    events: usize,
) -> Result<Sent, SendError> {
    let name = m.backend.name();
    if let Some(pace) = &s.pace {
        let n = std::num::NonZeroU32::new(events.clamp(1, u32::MAX as usize) as u32).unwrap();
        // The burst holds a whole batch (sink::pace), so this always returns.
        let _ = pace.until_n_ready(n).await;
    }
    let permit = s
        .in_flight
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    let gauge = METRICS.inflight_batches.with_label_values(&[name]);
    gauge.inc();
    let started = std::time::Instant::now();
    let result = m
        .backend
        .send(body, events, s.upstream_key.as_deref())
        .await;
    gauge.dec();
    drop(permit);
    let outcome = match &result {
        Ok(_) => SendOutcome::Ok,
        Err(e) if e.retryable() => SendOutcome::RetryableError,
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
async fn settle(s: &RouteSettings, b: &mut Attempts, name: &str, mut sent: Sent) -> bool {
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
