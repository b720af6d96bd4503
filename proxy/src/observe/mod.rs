//! Looking at a tenant's events once the stage chain decided where they go,
//! without changing them: live tail (tail.rs) and log patterns (patterns/).
//! The chain hands every batch it took to each of its tenant's watchers, on
//! the intake thread that ran it, so a watcher must be quick and never block:
//! each bounds its own cost under load (it looks at a share of the events).
pub mod tail;

use crate::event::Batch;

/// One observer of a tenant's taken batches.
pub trait Watcher: Send + Sync {
    /// Whether the next batch should carry why each event went where it did
    /// (`Batch::why`): it costs a name per event a stage changes, so only
    /// while someone looks.
    fn wants_reasons(&self) -> bool {
        false
    }

    /// A batch the chain took: its events, their dispositions (and why, when
    /// asked). Runs on an intake thread: quick, never blocking.
    fn watch(&self, batch: &Batch);
}
