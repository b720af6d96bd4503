//! A memory budget in bytes. Requests reserve what they will hold before any
//! of their events is taken; when the budget is spent the request is refused
//! whole (503 + Retry-After), so memory stays bounded and an agent's retry
//! never duplicates events.
use prometheus::IntGauge;
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// The intake side of a worker (an archive writer, a backend route): items
/// travel with the reservation of the memory they hold, so the queue is
/// bounded in bytes rather than in items.
pub struct Queue<T> {
    tx: mpsc::UnboundedSender<T>,
    budget: Budget,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        }
    }
}

impl<T> Queue<T> {
    pub fn new(budget: Budget) -> (Queue<T>, mpsc::UnboundedReceiver<T>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Queue { tx, budget }, rx)
    }

    pub fn reserve(&self, bytes: usize) -> Option<Reservation> {
        self.budget.try_reserve(bytes)
    }

    /// Waits until `bytes` (at most the whole budget) are free, then holds them.
    pub async fn reserve_wait(&self, bytes: usize) -> Reservation {
        self.budget.reserve_wait(bytes).await
    }

    /// Reserves `bytes`, waiting for them until `deadline` (none: no room by then).
    pub async fn reserve_until(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Option<Reservation> {
        self.budget.reserve_until(bytes, deadline).await
    }

    /// Makes `r` hold `bytes`; false (and `r` unchanged) when growing finds no room.
    pub fn resize(&self, r: &mut Reservation, bytes: usize) -> bool {
        self.budget.resize(r, bytes)
    }

    /// Fails only once the worker has stopped taking items (shutdown).
    pub fn send(&self, item: T) -> Result<(), WorkerStopped> {
        self.tx.send(item).map_err(|_| WorkerStopped)
    }
}

/// The worker behind a queue has stopped (the proxy is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the worker has stopped taking items")]
pub struct WorkerStopped;

#[derive(Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    capacity: usize,
    gauge: IntGauge,
}

/// Bytes held; given back when dropped.
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    gauge: IntGauge,
}

impl Budget {
    pub fn new(capacity: usize, gauge: IntGauge) -> Budget {
        let capacity = capacity.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        Budget {
            sem: Arc::new(Semaphore::new(capacity)),
            capacity,
            gauge,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves `bytes` now, or returns None when that much is not free.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let bytes = bytes.min(self.capacity);
        let permit = if bytes == 0 {
            None
        } else {
            Some(self.sem.clone().try_acquire_many_owned(bytes as u32).ok()?)
        };
        self.gauge.add(bytes as i64);
        Some(Reservation {
            _permit: permit,
            bytes,
            gauge: self.gauge.clone(),
        })
    }
}

impl Budget {
    /// Waits until `bytes` (at most the capacity) are free, then holds them.
    pub async fn reserve_wait(&self, bytes: usize) -> Reservation {
        let bytes = bytes.min(self.capacity);
        let permit = if bytes == 0 {
            None
        } else {
            Some(
                self.sem
                    .clone()
                    .acquire_many_owned(bytes as u32)
                    .await
                    .expect("the budget's semaphore is never closed"),
            )
        };
        self.gauge.add(bytes as i64);
        Reservation {
            _permit: permit,
            bytes,
            gauge: self.gauge.clone(),
        }
    }

    /// Reserves `bytes`, waiting for them until `deadline` (none: no room by then).
    pub async fn reserve_until(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Option<Reservation> {
        if let Some(r) = self.try_reserve(bytes) {
            return Some(r);
        }
        tokio::time::timeout_at(deadline, self.reserve_wait(bytes))
            .await
            .ok()
    }

    /// Makes `r` (taken from this budget) hold `bytes`: gives back the excess, or
    /// takes the difference if it is free. False, with `r` unchanged, when it is not.
    pub fn resize(&self, r: &mut Reservation, bytes: usize) -> bool {
        let bytes = bytes.min(self.capacity);
        if bytes < r.bytes {
            let give_back = r.bytes - bytes;
            if let Some(p) = r._permit.as_mut() {
                drop(p.split(give_back));
            }
            if bytes == 0 {
                r._permit = None;
            }
            self.gauge.sub(give_back as i64);
            r.bytes = bytes;
        } else if bytes > r.bytes {
            let extra = bytes - r.bytes;
            let Ok(more) = self.sem.clone().try_acquire_many_owned(extra as u32) else {
                return false;
            };
            match r._permit.as_mut() {
                Some(p) => p.merge(more),
                None => r._permit = Some(more),
            }
            self.gauge.add(extra as i64);
            r.bytes = bytes;
        }
        true
    }
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_capacity_and_gives_back_on_drop() {
        let g = IntGauge::new("t", "t").unwrap();
        let b = Budget::new(100, g.clone());
        let r1 = b.try_reserve(60).unwrap();
        assert!(b.try_reserve(50).is_none());
        assert_eq!(g.get(), 60);
        drop(r1);
        assert_eq!(g.get(), 0);
        assert!(b.try_reserve(100).is_some());
    }

    #[test]
    fn a_reservation_grows_only_into_free_room_and_shrinks_back() {
        let g = IntGauge::new("t", "t").unwrap();
        let b = Budget::new(100, g.clone());
        let mut r = b.try_reserve(40).unwrap();
        let other = b.try_reserve(30).unwrap();
        assert!(b.resize(&mut r, 70));
        assert_eq!((r.bytes(), g.get()), (70, 100));
        assert!(!b.resize(&mut r, 71), "no room left");
        assert_eq!(r.bytes(), 70);
        assert!(b.resize(&mut r, 10));
        assert_eq!(g.get(), 40);
        assert!(b.try_reserve(60).is_some(), "the excess was given back");
        assert!(b.resize(&mut r, 0));
        drop((r, other));
        assert_eq!(g.get(), 0);
        assert!(b.try_reserve(100).is_some());
    }
}
