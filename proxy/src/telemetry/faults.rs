//! Tasks that died: a panic in a route's send, an archive writer or a stage
//! would otherwise vanish with the batch it held. Each is logged with what it
//! was doing, counted in `weir_task_failures_total{task}`, and makes `/readyz`
//! answer 503 (`"status": "degraded"`), so that a load balancer stops sending
//! to an instance that is losing work and an on-call sees why.
use super::METRICS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What kind of task failed (the metric's `task` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Sending one batch to a backend.
    RouteSend,
    /// A tenant's route (batching, failover).
    Route,
    /// A tenant's archive writer.
    ArchiveWriter,
    /// A request's stage chain on a stage worker thread (a plugin host panic).
    Stage,
}

impl Task {
    pub const ALL: [Task; 4] = [
        Task::RouteSend,
        Task::Route,
        Task::ArchiveWriter,
        Task::Stage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::RouteSend => "route_send",
            Task::Route => "route",
            Task::ArchiveWriter => "archive_writer",
            Task::Stage => "stage",
        }
    }
}

static FAILURES: AtomicU64 = AtomicU64::new(0);
static LAST: Mutex<Option<String>> = Mutex::new(None);

/// Records a failed task: `what` says whose work it was (a tenant, a backend).
pub fn task_failed(task: Task, what: &str, error: &dyn std::fmt::Display) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    METRICS
        .task_failures
        .with_label_values(&[task.as_str()])
        .inc();
    let line = format!("{} ({what}): {error}", task.as_str());
    tracing::error!(task = task.as_str(), what, error = %error, "a task failed; the work it held is lost from memory (see the archive); /readyz now answers 503");
    *LAST.lock().unwrap() = Some(line);
}

/// Failed tasks since start, and the last one.
pub fn failures() -> (u64, Option<String>) {
    (
        FAILURES.load(Ordering::Relaxed),
        LAST.lock().unwrap().clone(),
    )
}

/// The outcome of a joined task, recorded when it failed.
pub fn check_join(task: Task, what: &str, r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        task_failed(task, what, &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_is_counted_and_named() {
        // Counted per task label: other tests may record other tasks meanwhile.
        let count = || METRICS.task_failures.with_label_values(&["stage"]).get();
        let before = count();
        let h = tokio::spawn(async { panic!("boom in a stage") });
        check_join(Task::Stage, "acme", h.await);
        assert_eq!(count(), before + 1);
        assert!(failures().0 >= 1);
        // A task that ended well is not a failure.
        check_join(Task::Stage, "acme", tokio::spawn(async {}).await);
        assert_eq!(count(), before + 1);
    }
}
