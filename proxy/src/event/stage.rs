//! What a stage of the chain is (`Stage`: one step between intake and the
//! tee, run on a whole `Batch`) and how it refuses a request (`Rejection`,
//! with its metric reason). Here, beside the batch, so the stages (quota,
//! rules, plugin) depend on the event alone and not on the chain that runs
//! them (pipeline), which depends on the buffer, the archive and the sinks.

use super::Batch;
use http::StatusCode;
use std::sync::Arc;

/// Why a stage (or the admin API) refused a request: the `reason` label of
/// `weir_rejected_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The tenant's rate limit (429).
    RateLimited,
    /// The tenant's daily quota with `action: reject` (429).
    DailyQuota,
    /// No room in the tenant's archive queue (503).
    ArchiveBackpressure,
    /// No room in the tenant's backend route queue (503).
    BackendBackpressure,
    /// The tenant's disk buffer is at its size limit (503, `when_full: block`).
    BufferFull,
    /// The disk buffer could not be written (503: a full or failing disk).
    BufferFailed,
    /// `ack: delivered` timed out; the events are safe in the log (503).
    NotDelivered,
    ShuttingDown,
    /// A stage task failed (503-class 500).
    InternalError,
    /// An admin API answer (never counted as an intake refusal).
    Admin,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::DailyQuota => "daily_quota",
            Self::ArchiveBackpressure => "archive_backpressure",
            Self::BackendBackpressure => "backend_backpressure",
            Self::BufferFull => "buffer_full",
            Self::BufferFailed => "buffer_write_failed",
            Self::NotDelivered => "not_delivered",
            Self::ShuttingDown => "shutting_down",
            Self::InternalError => "internal_error",
            Self::Admin => "admin",
        }
    }
}

/// A request refused by a stage: the HTTP answer and the metric reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: RejectReason,
    pub message: String,
    /// Seconds an agent should wait before retrying.
    pub retry_after: Option<u64>,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: RejectReason, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Rejection {
        self.retry_after = Some(secs);
        self
    }
}

/// One step of the data flow between intake and the archive tee.
pub trait Stage: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs on the whole batch of one request, before anything of it is accepted.
    fn process(&self, batch: &mut Batch) -> Result<(), Rejection>;
    /// The batch was taken: count what `process` recorded in `batch.charges`.
    fn commit(&self, _batch: &Batch) {}
    /// The batch was refused after `process` ran: give back what it charged.
    fn refund(&self, _batch: &Batch) {}
    /// Whether `process` may hold the CPU for long (a Wasm call, up to its
    /// deadline): the chain then runs on its workers.
    fn blocks(&self) -> bool {
        false
    }
}

/// A stage shared with another owner (the admin API changes rules and quotas at run time).
impl<S: Stage> Stage for Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
        (**self).process(batch)
    }
    fn commit(&self, batch: &Batch) {
        (**self).commit(batch)
    }
    fn refund(&self, batch: &Batch) {
        (**self).refund(batch)
    }
    fn blocks(&self) -> bool {
        (**self).blocks()
    }
}
