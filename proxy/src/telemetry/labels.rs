//! Label values of the metrics, as enums: a value is spelt in one place, and a
//! seeded series (seed.rs) can list every value a label takes.

/// The `outcome` of `weir_backend_requests_total` and `weir_backend_request_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Ok,
    RetryableError,
    Rejected,
}

impl SendOutcome {
    pub const ALL: [SendOutcome; 3] = [Self::Ok, Self::RetryableError, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::RetryableError => "retryable_error",
            Self::Rejected => "rejected",
        }
    }
}

/// The `reason` of `weir_backend_dropped_events_total`: why events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Refused for good by the backend, and the tenant has no archive to dead-letter them to.
    Rejected,
    /// Refused for good, and writing them to the dead-letter prefix failed.
    DeadLetterFailed,
    /// `retry.max_retries` reached.
    RetriesExhausted,
    /// Accepted in part, the rest rejected without naming which (OTLP `partial_success`).
    PartialSuccess,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        Self::Rejected,
        Self::DeadLetterFailed,
        Self::RetriesExhausted,
        Self::PartialSuccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::DeadLetterFailed => "dead_letter_failed",
            Self::RetriesExhausted => "retries_exhausted",
            Self::PartialSuccess => "partial_success",
        }
    }
}

/// What memory `weir_queued_bytes` measures: its `queue` label, with the `tenant`
/// and `backend` labels it applies to (empty where it does not).
#[derive(Debug, Clone, Copy)]
pub enum QueueKind<'a> {
    /// Request bodies being read and decoded, across all tenants.
    Intake,
    /// Events waiting for a tenant's archive writer.
    Archive { tenant: &'a str },
    /// Events waiting in a tenant's route; `backend` is the route's preferred backend.
    Backend { tenant: &'a str, backend: &'a str },
}

impl QueueKind<'_> {
    /// Values of the labels `queue`, `tenant`, `backend`.
    pub fn labels(&self) -> [&str; 3] {
        match *self {
            QueueKind::Intake => ["intake", "", ""],
            QueueKind::Archive { tenant } => ["archive", tenant, ""],
            QueueKind::Backend { tenant, backend } => ["backend", tenant, backend],
        }
    }
}

/// The `outcome` of `weir_intake_request_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeOutcome {
    Accepted,
    Refused,
}

impl IntakeOutcome {
    pub const ALL: [IntakeOutcome; 2] = [Self::Accepted, Self::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
        }
    }
}

/// The `reason` of `weir_plugin_errors_total`: what a plugin call failed on,
/// or that the plugin was quarantined and not called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginErrorReason {
    Timeout,
    Memory,
    Trap,
    BadResult,
    Instantiate,
    Quarantined,
}

impl PluginErrorReason {
    pub const ALL: [PluginErrorReason; 6] = [
        Self::Timeout,
        Self::Memory,
        Self::Trap,
        Self::BadResult,
        Self::Instantiate,
        Self::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Trap => "trap",
            Self::BadResult => "bad_result",
            Self::Instantiate => "instantiate",
            Self::Quarantined => "quarantined",
        }
    }
}

/// The `outcome` of `weir_plugin_reloads_total` and `weir_config_reloads_total`:
/// the new version runs, or it was refused and the running one stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Reloaded,
    Refused,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reloaded => "reloaded",
            Self::Refused => "refused",
        }
    }
}
