//! Connections per client IP: one address may hold at most
//! `limits.max_connections_per_ip` of a listener's connections, so one
//! client cannot take every slot of `max_connections` from the others.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;

/// Open connections per client IP on one listener.
pub struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// `limit` 0: no limit.
    pub fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit,
            open: Mutex::default(),
        })
    }

    /// A slot for a connection from `ip`, or `None` when it holds its limit.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, permit: OwnedSemaphorePermit) -> Option<Slot> {
        if self.limit > 0 {
            let mut open = self.open.lock().unwrap();
            let n = open.entry(ip).or_default();
            if *n >= self.limit {
                return None;
            }
            *n += 1;
        }
        Some(Slot {
            _permit: permit,
            per_ip: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().unwrap().get(&ip).copied().unwrap_or(0)
    }
}

/// A connection's place: in the listener's `max_connections` and its IP's
/// count, both given back when the connection ends.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.per_ip.limit == 0 {
            return;
        }
        let mut open = self.per_ip.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn an_ip_holds_at_most_its_limit_and_gets_slots_back() {
        let slots = Arc::new(Semaphore::new(10));
        let per_ip = PerIp::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let permit = || slots.clone().try_acquire_owned().unwrap();
        let first = per_ip.enter(a, permit()).unwrap();
        let _second = per_ip.enter(a, permit()).unwrap();
        assert!(
            per_ip.enter(a, permit()).is_none(),
            "a third from the same IP"
        );
        assert!(
            per_ip.enter(b, permit()).is_some(),
            "another IP is not held back"
        );
        drop(first);
        assert_eq!(per_ip.open(a), 1);
        assert!(per_ip.enter(a, permit()).is_some());
        assert_eq!(
            slots.available_permits(),
            10 - 1,
            "only the second still holds one: refused and ended connections gave theirs back"
        );
    }
}
