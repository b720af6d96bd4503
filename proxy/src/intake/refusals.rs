//! Refused requests in the log, at info: each with the peer, listener, tenant
//! (when the key was known) and reason, so an on-call sees why an agent's data
//! is not arriving. A flood of refusals must not flood the log: at most
//! [`PER_SECOND`] lines a second, and the next line says how many were left out.
use crate::pipeline::Rejection;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Refusal lines logged per second at most.
pub const PER_SECOND: u64 = 10;

/// Where a request came from: its listener and the client's address.
#[derive(Clone)]
pub struct Origin {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
}

#[derive(Default)]
pub struct RefusalLog {
    /// The second (since the epoch) the counts below are for.
    second: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    pub fn record(&self, origin: &Origin, intake: &str, tenant: Option<&str>, r: &Rejection) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.logged.store(0, Ordering::Relaxed);
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) >= PER_SECOND {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::info!(
            peer = %origin.peer,
            listener = %origin.listener,
            intake,
            tenant = tenant.unwrap_or("-"),
            status = r.status.as_u16(),
            reason = r.reason,
            suppressed_since_last = suppressed,
            "request refused: {}",
            r.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_second_lines_are_logged() {
        let log = RefusalLog::default();
        let origin = Origin {
            listener: "intake".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let r = Rejection::new(http::StatusCode::FORBIDDEN, "unknown_api_key", "no");
        for _ in 0..100 {
            log.record(&origin, "datadog", None, &r);
        }
        // Unless the second turned over mid-loop, 90 were left out.
        let suppressed = log.suppressed.load(Ordering::Relaxed);
        assert!(suppressed >= 100 - 2 * PER_SECOND, "{suppressed}");
    }
}
