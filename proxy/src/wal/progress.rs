//! How far one log record has got through one destination (its archive or
//! its route), so the reader acknowledges only what is really done.
//!
//! A record starts with one hold, the chunk's own. The route takes a hold for
//! each batch the record's lines go into and releases the chunk's once all
//! its lines are placed; each batch releases its hold once delivered (or
//! dead-lettered, or given up on and counted). The archive moves the chunk's
//! hold to the object and releases it once the object is written. Nothing
//! is released on a drop: a chunk lost at shutdown stays unacknowledged and
//! is read again at the next start.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct Progress {
    holds: AtomicUsize,
    /// Wakes the reader that waits for its records.
    done: Arc<Notify>,
}

impl Progress {
    pub fn new(done: Arc<Notify>) -> Arc<Progress> {
        Arc::new(Progress {
            holds: AtomicUsize::new(1),
            done,
        })
    }

    /// One more part of the record is somewhere (a batch).
    pub fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    /// One part is finished with.
    pub fn release(&self) {
        if self.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    pub fn is_done(&self) -> bool {
        self.holds.load(Ordering::Acquire) == 0
    }
}

/// Releases each of `progress` (a batch or an object was delivered or written).
pub fn release_all(progress: &[Arc<Progress>]) {
    progress.iter().for_each(|p| p.release());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_only_once_every_hold_is_released() {
        let p = Progress::new(Arc::default());
        p.hold();
        p.hold();
        p.release(); // the chunk's own
        assert!(!p.is_done());
        p.release();
        assert!(!p.is_done());
        p.release();
        assert!(p.is_done());
    }
}
