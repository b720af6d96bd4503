//! Refused requests in the log, at info: each with the peer, listener, tenant
//! (when the key was known) and reason, so an on-call sees why an agent's data
//! is not arriving. A flood of refusals must not flood the log: at most
//! [`PER_SECOND`] lines a second, and the next line says how many were left out.
use super::Refusal;
use crate::event::Intake;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Refusal lines logged per second at most.
pub const PER_SECOND: u64 = 10;

/// The `intake` label of `weir_rejected_requests_total` and of the refusal
/// log: the protocol that refused, or the kind of request that was no submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedAt {
    Protocol(Intake),
    /// A key check (`GET /api/v1/validate`).
    KeyCheck,
    /// A request no protocol serves.
    NoIntake,
}

impl RefusedAt {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedAt::Protocol(p) => p.as_str(),
            RefusedAt::KeyCheck => "validate",
            RefusedAt::NoIntake => "none",
        }
    }
}

/// Where a request came from: its listener and the client's address.
#[derive(Clone)]
pub struct Origin {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// The listener's `key_header`, if it names one.
    pub key_header: Option<http::HeaderName>,
    /// The client certificate's names, on a mutual-TLS listener.
    pub client: Option<Arc<crate::tenant::ClientIdentity>>,
}

impl Origin {
    /// The tenant's key in the listener's `key_header`, if it has one and the request sent it.
    pub fn key(&self, headers: &http::HeaderMap) -> Option<String> {
        let v = headers.get(self.key_header.as_ref()?)?.to_str().ok()?;
        Some(v.trim().to_string())
    }
}

#[derive(Default)]
pub struct RefusalLog {
    /// The second (since the epoch) the counts below are for.
    second: AtomicU64,
    logged: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    pub fn record(&self, origin: &Origin, at: RefusedAt, tenant: Option<&str>, r: &Refusal) {
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
            intake = at.as_str(),
            tenant = tenant.unwrap_or("-"),
            status = r.status().as_u16(),
            reason = r.reason().as_str(),
            suppressed_since_last = suppressed,
            "request refused: {r}"
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
            client: None,
            listener: "intake".into(),
            key_header: None,
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let r = Refusal::UnknownKey;
        for _ in 0..100 {
            log.record(&origin, RefusedAt::Protocol(Intake::Datadog), None, &r);
        }
        // Unless the second turned over mid-loop, 90 were left out.
        let suppressed = log.suppressed.load(Ordering::Relaxed);
        assert!(suppressed >= 100 - 2 * PER_SECOND, "{suppressed}");
    }
}
