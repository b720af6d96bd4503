//! Tasks that died: a panic in a route's send, an archive writer or a stage
//! would otherwise vanish with the batch it held. Each is logged with what it
//! was doing, counted in `weir_task_failures_total{task}`, and makes `/readyz`
//! answer 503 (`"status": "degraded"`), so that a load balancer stops sending
//! to an instance that is losing work and an on-call sees why.
use super::METRICS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::task::JoinHandle;

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
    /// A reader of a tenant's disk buffer carrying its records to the archive or the route.
    BufferFeed,
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::RouteSend,
        Task::Route,
        Task::ArchiveWriter,
        Task::Stage,
        Task::BufferFeed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::RouteSend => "route_send",
            Task::Route => "route",
            Task::ArchiveWriter => "archive_writer",
            Task::Stage => "stage",
            Task::BufferFeed => "buffer_feed",
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

/// Watches `task` (`kind`, whose work `what` says): reported as soon as it
/// ends by a panic, not when someone finally joins it (at shutdown). The
/// handle returned ends when `task` does; its own result is always `Ok`.
/// One small task per long-lived task (a route, an archive writer, a feed):
/// nothing per event.
pub fn supervise(kind: Task, what: &str, task: JoinHandle<()>) -> JoinHandle<()> {
    let what = what.to_string();
    tokio::spawn(async move { check_join(kind, &what, task.await) })
}

/// What a caught panic said (its payload, when it is a string).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
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

    #[tokio::test]
    async fn a_supervised_task_that_panics_is_reported_when_it_panics_not_when_joined() {
        let count = || {
            METRICS
                .task_failures
                .with_label_values(&["archive_writer"])
                .get()
        };
        let before = count();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let watched = supervise(
            Task::ArchiveWriter,
            "acme",
            tokio::spawn(async move {
                let _ = wait.await;
                panic!("boom in an archive writer");
            }),
        );
        go.send(()).unwrap();
        // Nobody joins it: the failure is visible anyway, while Weir runs.
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while count() == before {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(seen.is_ok(), "the panic was not reported until joined");
        assert_eq!(count(), before + 1);
        assert!(failures()
            .1
            .is_some_and(|l| l.contains("archive_writer (acme)")));
        // Joined later (at shutdown), it is not counted twice.
        watched.await.unwrap();
        assert_eq!(count(), before + 1);
        // One that ends well is no failure.
        supervise(Task::ArchiveWriter, "acme", tokio::spawn(async {}))
            .await
            .unwrap();
        assert_eq!(count(), before + 1);
    }

    /// `/readyz` as a load balancer reads it, once a task failed.
    #[tokio::test]
    async fn readyz_answers_503_degraded_once_a_task_failed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let config = crate::plan::Plan::parse(
            "listeners: [{name: i, address: \"127.0.0.1:0\", protocol: http}]\narchive: {store: {type: local, root: /nonexistent}}\nbackends: [{name: b, type: http, url: \"http://127.0.0.1:9/in\"}]\ntenants: [{name: t, api_keys: [k], backend: b}]\n",
            "weir.yaml",
        )
        .unwrap()
        .config;
        let control = crate::admin::control::Control::new(
            None,
            crate::admin::control::Overrides::from_config(&config),
            std::sync::Arc::new(crate::rules::exclusion::ExclusionRules::with_global(
                Vec::new(),
            )),
            std::sync::Arc::new(crate::quota::daily::DailyQuotas::new(
                crate::clock::system(),
                &dir.path().join("quota"),
            )),
            dir.path().to_path_buf(),
        )
        .unwrap();
        let health = std::sync::Arc::new(crate::admin::Health::default());
        health.set_ready(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let admin = tokio::spawn(crate::admin::serve(
            listener,
            health,
            std::sync::Arc::new(control),
            stop.clone(),
        ));
        // A long-lived task panics while running; nothing joins it.
        // (A label no other test counts: tests run side by side.)
        let _watched = supervise(
            Task::BufferFeed,
            "readyz-tenant",
            tokio::spawn(async { panic!("boom in a feed") }),
        );
        let mut answer = String::new();
        for _ in 0..200 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: weir\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            answer.clear();
            s.read_to_string(&mut answer).await.unwrap();
            if answer.contains("readyz-tenant") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.cancel();
        let _ = admin.await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"status\":\"degraded\""), "{answer}");
        assert!(
            answer.contains("buffer_feed (readyz-tenant)"),
            "names the failure: {answer}"
        );
    }
}
