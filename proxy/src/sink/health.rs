//! Backend health, shared by every tenant route that uses the backend.
//!
//! Passive: each send reports its outcome; `passive.max_failures` failures in
//! a row eject the backend for `passive.ejection`, doubling (up to
//! `max_ejection`) each time it fails again right after coming back. When an
//! ejection ends the backend is on probation: the next send decides.
//!
//! Active (optional `health_check`): an HTTP request or TCP connect every
//! `interval`; `unhealthy_threshold` failures in a row take it down,
//! `healthy_threshold` passes in a row bring it back. A backend is used when
//! it is neither ejected nor down: the thresholds and the growing ejection are
//! the hysteresis that keeps traffic from flapping back to a sick backend.
//!
//! `weir_backend_up` and `GET /backends` read the same state at the time they
//! are asked (`Router` sets the gauge's source), so an ejection that ran out
//! while no batch came by shows as up in both.
use crate::config::{HealthCheckConfig, PassiveHealthConfig};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
// tokio's clock (std's outside a runtime): delivery tests pause it to see ejections end.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct BackendHealth {
    pub name: String,
    passive: PassiveHealthConfig,
    state: Mutex<State>,
}

struct State {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    next_ejection: Duration,
    /// An ejection ended and no send has succeeded since.
    probation: bool,
    /// Taken down by the active check.
    check_down: bool,
    check_streak: u32,
    last_error: Option<String>,
    last_change: SystemTime,
    ejections: u64,
    failovers_away: u64,
}

/// Whether a backend takes traffic, as `GET /backends` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Up,
    /// Taken out by failed sends (passive), for a while.
    Ejected,
    /// Taken out by the active check.
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Ejected => "ejected",
            HealthState::Down => "down",
        }
    }
}

impl PartialEq<&str> for HealthState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl State {
    /// The state at `now`, and the ejection time left. An ejection that ran
    /// out is over here even before a send ends it.
    fn phase(&self, now: Instant) -> (HealthState, Option<Duration>) {
        let left = self
            .ejected_until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero());
        let state = if self.check_down {
            HealthState::Down
        } else if left.is_some() {
            HealthState::Ejected
        } else {
            HealthState::Up
        };
        (state, left)
    }
}

/// What `GET /backends` shows of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub backend: String,
    /// `up`, `ejected` (passive, with the seconds left) or `down` (active check).
    pub state: HealthState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_s: Option<u64>,
    pub consecutive_failures: u32,
    pub ejections: u64,
    /// Batches that failed here and moved to another backend.
    pub failovers_away: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the state last changed (RFC 3339).
    pub last_change: String,
}

impl BackendHealth {
    pub fn new(name: &str, passive: PassiveHealthConfig) -> Arc<BackendHealth> {
        Arc::new(BackendHealth {
            name: name.to_string(),
            state: Mutex::new(State {
                consecutive_failures: 0,
                ejected_until: None,
                next_ejection: passive.ejection.0,
                probation: false,
                check_down: false,
                check_streak: 0,
                last_error: None,
                last_change: SystemTime::now(),
                ejections: 0,
                failovers_away: 0,
            }),
            passive,
        })
    }

    /// Whether sends may go here now (ending an ejection that is over).
    pub fn available(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        if let Some(until) = s.ejected_until {
            if Instant::now() < until {
                return false;
            }
            s.ejected_until = None;
            s.probation = true;
            s.last_change = SystemTime::now();
            tracing::info!(backend = %self.name, "backend ejection over; trying it again");
        }
        !s.check_down
    }

    /// When the soonest ejection ends (for a route with nothing available to wait on).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.state.lock().unwrap().ejected_until
    }

    pub fn record_success(&self) {
        let mut s = self.state.lock().unwrap();
        s.consecutive_failures = 0;
        if s.probation {
            s.probation = false;
            s.next_ejection = self.passive.ejection.0;
            s.last_change = SystemTime::now();
            tracing::info!(backend = %self.name, "backend healthy again");
        }
    }

    pub fn record_failure(&self, error: &str) {
        let mut s = self.state.lock().unwrap();
        s.consecutive_failures += 1;
        s.last_error = Some(error.chars().take(300).collect());
        if s.ejected_until.is_none()
            && (s.probation || s.consecutive_failures >= self.passive.max_failures)
        {
            let d = s.next_ejection;
            s.ejected_until = Some(Instant::now() + d);
            s.next_ejection = (d * 2).min(self.passive.max_ejection.0.max(d));
            s.probation = false;
            s.consecutive_failures = 0;
            s.ejections += 1;
            s.last_change = SystemTime::now();
            tracing::error!(backend = %self.name, ejected_for = ?d, error, "backend ejected after failed sends; its traffic fails over");
        }
    }

    pub fn record_failover(&self) {
        self.state.lock().unwrap().failovers_away += 1;
    }

    fn record_check(&self, ok: bool, cfg: &HealthCheckConfig, error: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if let Some(e) = error {
            s.last_error = Some(e);
        }
        // The streak counts checks that disagree with the current state.
        if ok != s.check_down {
            s.check_streak = 0;
            return;
        }
        s.check_streak += 1;
        let threshold = if s.check_down {
            cfg.healthy_threshold
        } else {
            cfg.unhealthy_threshold
        };
        if s.check_streak >= threshold {
            s.check_down = !ok;
            s.check_streak = 0;
            s.last_change = SystemTime::now();
            if ok {
                // Passing checks also end a passive ejection.
                s.ejected_until = None;
                s.probation = true;
                tracing::info!(backend = %self.name, "backend health check passing again");
            } else {
                tracing::error!(backend = %self.name, error = s.last_error.as_deref().unwrap_or(""), "backend health check failing; its traffic fails over");
            }
        }
    }

    /// Up (neither down nor ejected) now; what `weir_backend_up` shows.
    pub fn is_up(&self) -> bool {
        let s = self.state.lock().unwrap();
        s.phase(Instant::now()).0 == HealthState::Up
    }

    pub fn report(&self) -> HealthReport {
        let s = self.state.lock().unwrap();
        let (state, left) = s.phase(Instant::now());
        HealthReport {
            backend: self.name.clone(),
            state,
            ejected_for_s: left.map(|d| d.as_secs_f64().ceil() as u64),
            consecutive_failures: s.consecutive_failures,
            ejections: s.ejections,
            failovers_away: s.failovers_away,
            last_error: s.last_error.clone(),
            last_change: chrono::DateTime::<chrono::Utc>::from(s.last_change).to_rfc3339(),
        }
    }
}

/// Runs `cfg`'s active check against `backend` every interval until `stop`.
pub fn spawn_check(
    health: Arc<BackendHealth>,
    backend: Arc<super::backend::Backend>,
    cfg: HealthCheckConfig,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let result = tokio::time::timeout(cfg.timeout.0, backend.probe(&cfg)).await;
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(super::backend::ProbeError::TimedOut(cfg.timeout.0).to_string()),
            };
            health.record_check(error.is_none(), &cfg, error);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn passive(max: u32, ms: u64) -> PassiveHealthConfig {
        PassiveHealthConfig {
            max_failures: max,
            ejection: Dur(Duration::from_millis(ms)),
            max_ejection: Dur(Duration::from_millis(ms * 4)),
        }
    }

    #[test]
    fn failures_eject_then_probation_decides_and_ejections_grow() {
        let h = BackendHealth::new("t-passive", passive(2, 40));
        h.record_failure("boom");
        assert!(h.available());
        h.record_failure("boom");
        assert!(!h.available(), "2 failures in a row eject");
        assert_eq!(h.report().state, "ejected");
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.available(), "the ejection ended: probation");
        h.record_failure("still down");
        assert!(!h.available(), "one failure on probation ejects again");
        let until = h.ejected_until().unwrap();
        assert!(
            until > Instant::now() + Duration::from_millis(60),
            "the second ejection is twice as long"
        );
        std::thread::sleep(Duration::from_millis(90));
        assert!(h.available());
        h.record_success();
        h.record_failure("one");
        assert!(h.available(), "after a success it takes max_failures again");
        assert_eq!(h.report().ejections, 2);
    }

    #[test]
    fn an_ejection_that_ran_out_reads_up_without_a_send() {
        let h = BackendHealth::new("t-expiry", passive(1, 30));
        h.record_failure("boom");
        assert!(!h.is_up());
        std::thread::sleep(Duration::from_millis(40));
        // No `available()` call (no batch came by): the state is still read as up.
        assert!(h.is_up());
        assert_eq!(h.report().state, "up");
    }

    #[test]
    fn active_checks_need_their_thresholds_both_ways() {
        let h = BackendHealth::new("t-active", passive(3, 1000));
        let cfg: HealthCheckConfig =
            serde_yaml::from_str("{healthy_threshold: 3, unhealthy_threshold: 2}").unwrap();
        h.record_check(false, &cfg, Some("refused".into()));
        assert!(h.available());
        h.record_check(false, &cfg, Some("refused".into()));
        assert!(!h.available());
        assert_eq!(h.report().state, "down");
        h.record_check(true, &cfg, None);
        h.record_check(true, &cfg, None);
        h.record_check(false, &cfg, Some("flap".into()));
        assert!(!h.available(), "a failure restarts the count");
        for _ in 0..3 {
            h.record_check(true, &cfg, None);
        }
        assert!(h.available());
        assert_eq!(h.report().last_error.as_deref(), Some("flap"));
    }
}
