//! Per-tenant rate limits (governor's GCRA): events/s and bytes/s, each with
//! a burst, optionally one limit per value of a field. A request over the
//! limit is refused whole with 429 and Retry-After right after decoding,
//! before any of its events is taken, so the agent backs off and resends.
use crate::config::RateLimitConfig;
use crate::event::stage::{RejectReason, Rejection, Stage};
use crate::event::{Batch, Event};
use crate::quota::shared::{FleetView, Mode};
use crate::telemetry::METRICS;
use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::StatusCode;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

type Limiter<C> = RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    C,
    NoOpMiddleware<<C as GovernorClock>::Instant>,
>;

struct TenantLimits<C: GovernorClock> {
    events: Option<Limiter<C>>,
    bytes: Option<Limiter<C>>,
    partition_by: Option<String>,
    checks: AtomicU64,
    config: RateLimitConfig,
}

/// The rate-limit stage of one tenant (none configured: every batch passes).
pub struct RateLimit<C: GovernorClock = DefaultClock> {
    limits: RwLock<Option<Arc<TenantLimits<C>>>>,
    clock: C,
    /// In a fleet, this instance enforces the limit divided by the live
    /// instances, rebuilt when their number changes.
    fleet: Option<FleetPart>,
}

/// How this instance takes its part of a fleet-wide limit.
struct FleetPart {
    view: Arc<FleetView>,
    config: RateLimitConfig,
    divisor: AtomicU32,
    retry_after_secs: u64,
}

/// A GCRA quota of `per_second` (at least 1) with `burst` (default: one second's worth).
pub(crate) fn quota(per_second: u64, burst: Option<u64>) -> Quota {
    let rate = NonZeroU32::new(per_second.clamp(1, u32::MAX as u64) as u32).unwrap();
    let burst =
        NonZeroU32::new(burst.unwrap_or(per_second).clamp(1, u32::MAX as u64) as u32).unwrap();
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimit<DefaultClock> {
    pub fn new(config: Option<&RateLimitConfig>) -> RateLimit<DefaultClock> {
        RateLimit::with_clock(config, DefaultClock::default())
    }
}

impl<C: GovernorClock + Clone> RateLimit<C> {
    pub fn with_clock(config: Option<&RateLimitConfig>, clock: C) -> RateLimit<C> {
        let limits = config.map(|c| Arc::new(Self::build(c, &clock, 1)));
        RateLimit {
            limits: RwLock::new(limits),
            clock,
            fleet: None,
        }
    }

    /// Shares the limit with the fleet: each instance takes its part.
    pub fn shared_with(mut self, view: Arc<FleetView>, sync_interval: Duration) -> RateLimit<C> {
        let Some(config) = self.config() else {
            return self;
        };
        self.fleet = Some(FleetPart {
            view,
            config,
            divisor: AtomicU32::new(1),
            retry_after_secs: sync_interval.as_secs().max(1),
        });
        self
    }

    fn config(&self) -> Option<RateLimitConfig> {
        self.limits
            .read()
            .unwrap()
            .as_ref()
            .map(|l| l.config.clone())
    }

    /// Limiters for a `divisor`-th of `c` (a fleet of `divisor` instances).
    fn build(c: &RateLimitConfig, clock: &C, divisor: u32) -> TenantLimits<C> {
        // Rounded down: the instances' parts never add up to more than the limit.
        let part = |v: u64| (v / divisor as u64).max(1);
        TenantLimits {
            events: c.events_per_second.map(|r| {
                RateLimiter::new(
                    quota(part(r as u64), c.events_burst.map(|b| part(b as u64))),
                    DefaultKeyedStateStore::default(),
                    clock.clone(),
                )
            }),
            bytes: c.bytes_per_second.map(|r| {
                RateLimiter::new(
                    quota(part(r.0), c.bytes_burst.map(|b| part(b.0))),
                    DefaultKeyedStateStore::default(),
                    clock.clone(),
                )
            }),
            partition_by: c.partition_by.clone(),
            checks: AtomicU64::new(0),
            config: c.clone(),
        }
    }

    /// The limiters to check now: in a fleet, rebuilt when the number of
    /// instances changed (a rebuild starts with a full burst); `Err` when the
    /// fleet's store is down and the policy is to fail closed.
    fn current(&self) -> Result<Option<Arc<TenantLimits<C>>>, u64> {
        if let Some(f) = &self.fleet {
            if f.view.mode() == Mode::FailClosed {
                return Err(f.retry_after_secs);
            }
            let n = f.view.instances();
            if f.divisor.load(Ordering::Relaxed) != n {
                // Checked again under the lock: two batches seeing the change build once.
                let mut limits = self.limits.write().unwrap();
                if f.divisor.load(Ordering::Relaxed) != n {
                    *limits = Some(Arc::new(Self::build(&f.config, &self.clock, n)));
                    f.divisor.store(n, Ordering::Relaxed);
                }
            }
        }
        Ok(self.limits.read().unwrap().clone())
    }

    /// Takes `n` from `limiter` for `key`, or says how long to wait.
    fn take(&self, limiter: &Limiter<C>, key: &String, n: u64) -> Result<(), Duration> {
        // A request larger than the whole burst takes the whole burst rather than waiting forever.
        let n = NonZeroU32::new(n.clamp(1, u32::MAX as u64) as u32).unwrap();
        match limiter.check_key_n(key, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            Err(insufficient) => {
                match limiter.check_key_n(key, NonZeroU32::new(insufficient.0).unwrap()) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
                    Err(_) => Ok(()),
                }
            }
        }
    }
}

/// The value of `field` on an event: a reserved attribute, a tag key, or an
/// attribute path. An event without a status has `info`, as the query matcher
/// and Datadog read it.
pub fn field_value<'a>(ev: &'a Event, field: &str) -> Option<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    match field {
        "service" => ev.service.as_deref().map(Cow::Borrowed),
        "host" | "hostname" => ev.host.as_deref().map(Cow::Borrowed),
        "source" | "ddsource" => ev.source.as_deref().map(Cow::Borrowed),
        "status" => Some(Cow::Borrowed(ev.status_or_default())),
        _ => {
            if let Some(path) = field.strip_prefix('@') {
                let mut parts = path.split('.');
                let mut v = ev.attributes.get(parts.next()?)?;
                for p in parts {
                    v = v.get(p)?;
                }
                return Some(match v {
                    serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
                    other => Cow::Owned(other.to_string()),
                });
            }
            ev.tags.iter().find_map(|t| {
                t.strip_prefix(field)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(Cow::Borrowed)
            })
        }
    }
}

impl<C: GovernorClock + Clone + Send + Sync> Stage for RateLimit<C>
where
    C::Instant: Send + Sync,
{
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
        let limits = match self.current() {
            Ok(Some(limits)) => limits,
            Ok(None) => return Ok(()),
            Err(secs) => {
                METRICS
                    .rate_limited_requests
                    .with_label_values(&[&*batch.meta.tenant])
                    .inc();
                return Err(Rejection::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    RejectReason::RateLimited,
                    format!(
                        "tenant {} is rate limited for the whole fleet, whose shared state cannot be reached (fleet.on_unavailable: fail_closed); retry in {secs}s",
                        batch.meta.tenant
                    ),
                )
                .retry_after(secs));
            }
        };
        // Count (events, bytes) per partition; bytes are shared out by message size.
        let mut parts: HashMap<String, (u64, u64)> = HashMap::new();
        match &limits.partition_by {
            None => {
                parts.insert(
                    String::new(),
                    (batch.events.len() as u64, batch.meta.body_bytes as u64),
                );
            }
            Some(field) => {
                let total_msg: usize = batch
                    .events
                    .iter()
                    .map(|e| e.message.len() + 1)
                    .sum::<usize>()
                    .max(1);
                for ev in &batch.events {
                    let value = field_value(ev, field);
                    let key = value.as_deref().unwrap_or("");
                    // Look up by &str first: a String is allocated once per partition, not per event.
                    if !parts.contains_key(key) {
                        parts.insert(key.to_string(), (0, 0));
                    }
                    let e = parts.get_mut(key).expect("inserted above");
                    e.0 += 1;
                    e.1 += ((ev.message.len() + 1) as u64 * batch.meta.body_bytes as u64)
                        / total_msg as u64;
                }
            }
        }
        let mut wait = Duration::ZERO;
        for (key, (events, bytes)) in &parts {
            if let Some(l) = &limits.events {
                if let Err(w) = self.take(l, key, *events) {
                    wait = wait.max(w);
                }
            }
            if let Some(l) = &limits.bytes {
                if let Err(w) = self.take(l, key, *bytes) {
                    wait = wait.max(w);
                }
            }
        }
        // Forget partitions idle for longer than their burst now and then, so the key map stays small.
        if limits.partition_by.is_some()
            && limits.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 0
        {
            if let Some(l) = &limits.events {
                l.retain_recent();
            }
            if let Some(l) = &limits.bytes {
                l.retain_recent();
            }
        }
        if wait > Duration::ZERO {
            METRICS
                .rate_limited_requests
                .with_label_values(&[&*batch.meta.tenant])
                .inc();
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                RejectReason::RateLimited,
                format!(
                    "tenant {} is over its rate limit; retry in {secs}s",
                    batch.meta.tenant
                ),
            )
            .retry_after(secs));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use governor::clock::FakeRelativeClock;

    fn batch(tenant: usize, services: &[&str], bytes: usize) -> Batch {
        let events = services
            .iter()
            .map(|s| Event {
                service: Some(s.to_string()),
                message: "m".into(),
                ..Default::default()
            })
            .collect();
        Batch::for_test(&format!("t{tenant}"), bytes, events)
    }

    fn limits(events: u32, burst: u32, partition: Option<&str>) -> RateLimitConfig {
        RateLimitConfig {
            events_per_second: Some(events),
            events_burst: Some(burst),
            bytes_per_second: None,
            bytes_burst: None,
            partition_by: partition.map(str::to_string),
        }
    }

    #[test]
    fn over_the_rate_is_429_with_retry_after_and_refills() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimit::with_clock(Some(&limits(10, 10, None)), clock.clone());
        let other = RateLimit::with_clock(None, clock.clone());
        assert!(rl.process(&mut batch(0, &["a"; 6], 10)).is_ok());
        let r = rl.process(&mut batch(0, &["a"; 6], 10)).unwrap_err();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.retry_after, Some(1));
        // The other tenant has no limit.
        for _ in 0..100 {
            assert!(other.process(&mut batch(1, &["a"; 50], 10)).is_ok());
        }
        clock.advance(Duration::from_millis(200)); // 2 more tokens: 4 + 2 = 6
        assert!(rl.process(&mut batch(0, &["a"; 6], 10)).is_ok());
        assert!(rl.process(&mut batch(0, &["a"], 10)).is_err());
    }

    #[test]
    fn partitions_have_their_own_budget() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimit::with_clock(Some(&limits(5, 5, Some("service"))), clock.clone());
        assert!(rl.process(&mut batch(0, &["web"; 5], 10)).is_ok());
        assert!(rl.process(&mut batch(0, &["web"], 10)).is_err());
        assert!(rl.process(&mut batch(0, &["db"; 5], 10)).is_ok());
    }

    #[test]
    fn an_event_without_status_is_in_the_info_partition() {
        let no_status = Event::default();
        assert_eq!(field_value(&no_status, "status").as_deref(), Some("info"));
        let statuses = |s: &[Option<&str>]| {
            let events = s
                .iter()
                .map(|s| Event {
                    status: s.map(str::to_string),
                    message: "m".into(),
                    ..Default::default()
                })
                .collect();
            Batch::for_test("t0", 10, events)
        };
        let clock = FakeRelativeClock::default();
        let rl = RateLimit::with_clock(Some(&limits(5, 5, Some("status"))), clock);
        assert!(rl.process(&mut statuses(&[Some("info"); 4])).is_ok());
        assert!(rl.process(&mut statuses(&[None])).is_ok());
        // Five taken from `info`: an event without a status is over its budget too.
        assert!(rl.process(&mut statuses(&[None])).is_err());
        assert!(rl.process(&mut statuses(&[Some("error"); 5])).is_ok());
    }

    #[test]
    fn bytes_limit_and_oversized_requests() {
        let clock = FakeRelativeClock::default();
        let cfg = RateLimitConfig {
            events_per_second: None,
            events_burst: None,
            bytes_per_second: Some(ByteSize(1000)),
            bytes_burst: None,
            partition_by: None,
        };
        let rl = RateLimit::with_clock(Some(&cfg), clock.clone());
        assert!(rl.process(&mut batch(0, &["a"], 600)).is_ok());
        assert!(rl.process(&mut batch(0, &["a"], 600)).is_err());
        clock.advance(Duration::from_secs(2));
        // Larger than the whole burst: takes the whole burst instead of waiting forever.
        assert!(rl.process(&mut batch(0, &["a"], 5000)).is_ok());
        assert!(rl.process(&mut batch(0, &["a"], 1)).is_err());
    }
}
