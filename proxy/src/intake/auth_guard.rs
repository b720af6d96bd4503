//! Failed authentications per client IP (credential stuffing): each unknown
//! key spends one of the IP's `limits.auth_failures_per_ip_per_minute` (a
//! burst of that many, refilled evenly over a minute). While the IP has no
//! room for one more failure, every request from it is answered 429 with
//! Retry-After, after [`SLOWDOWN`], without its key being looked at: a right
//! guess is not told apart from a wrong one. A request without any key does
//! not count: it guesses nothing.
//!
//! GCRA by hand rather than governor's: the check here must ask "is there
//! room?" without spending it, which governor's limiters cannot.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a throttled IP's answer is held back: a guesser's rate drops to
/// its connections per second (which `max_connections_per_ip` bounds).
pub const SLOWDOWN: Duration = Duration::from_secs(1);
/// IPs remembered at most; when full, those whose budget is whole again go.
const MAX_TRACKED: usize = 100_000;

pub struct AuthGuard {
    /// Time one failure's room takes to come back (a minute / the limit).
    interval: Duration,
    /// The burst: the limit's worth of intervals.
    burst: Duration,
    /// Per IP, the GCRA's theoretical arrival time: room for another
    /// failure while it is at most `burst - interval` ahead of now.
    tat: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthGuard {
    /// `per_minute` 0: no limit.
    pub fn new(per_minute: u32) -> AuthGuard {
        let interval = match per_minute {
            0 => Duration::ZERO,
            n => Duration::from_secs(60) / n,
        };
        AuthGuard {
            interval,
            burst: interval * per_minute,
            tat: Mutex::default(),
        }
    }

    /// How long until `ip` has room for a failure again, if it has none now.
    pub fn throttled(&self, ip: IpAddr) -> Option<Duration> {
        if self.interval.is_zero() {
            return None;
        }
        let tat = *self.tat.lock().unwrap().get(&ip)?;
        let ahead = tat.saturating_duration_since(Instant::now());
        let room_at = self.burst - self.interval;
        (ahead > room_at).then(|| ahead - room_at)
    }

    /// Counts a failed authentication from `ip` (answered as such; the
    /// requests after it are throttled if it left no room).
    pub fn failed(&self, ip: IpAddr) {
        if self.interval.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut tats = self.tat.lock().unwrap();
        if tats.len() >= MAX_TRACKED && !tats.contains_key(&ip) {
            tats.retain(|_, tat| *tat > now);
            if tats.len() >= MAX_TRACKED {
                return; // a flood of addresses: the per-IP connection limit still holds
            }
        }
        let tat = tats.entry(ip).or_insert(now);
        *tat = (*tat).max(now) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_is_throttled_once_its_failures_are_spent_and_others_are_not() {
        let g = AuthGuard::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..2 {
            g.failed(a);
            assert_eq!(g.throttled(a), None);
        }
        g.failed(a);
        let wait = g.throttled(a).expect("three failures leave no room");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            g.throttled(a).is_some(),
            "asking spends nothing: still throttled"
        );
        assert_eq!(g.throttled(b), None);
        g.failed(b);
        assert_eq!(g.throttled(b), None);
    }

    #[test]
    fn zero_is_no_limit() {
        let g = AuthGuard::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            g.failed(a);
        }
        assert_eq!(g.throttled(a), None);
    }
}
