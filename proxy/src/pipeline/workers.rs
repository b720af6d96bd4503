//! Threads for stage chains that may block: a Wasm plugin call runs on the
//! CPU for up to its deadline, which must not happen on an async worker.
//!
//! A fixed number of threads, so at most that many plugin calls run at once,
//! each plugin needs at most that many warm instances, and each thread keeps
//! its allocator caches (`block_in_place` instead spawned replacement runtime
//! threads under load, each with heaps of its own: RSS grew past 500 MB).
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

type Job = Box<dyn FnOnce() + Send>;

pub struct Workers {
    jobs: crossbeam_channel::Sender<Job>,
    threads: usize,
}

impl Workers {
    /// Starts `threads` threads (at least one). They end when the `Workers` is dropped.
    pub fn new(threads: usize) -> Arc<Workers> {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("weir-stage-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                    }
                })
                .expect("spawning a stage worker thread");
        }
        Arc::new(Workers { jobs: tx, threads })
    }

    /// Threads to use when the config leaves it to us: one per core.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a worker thread and waits for it without blocking the
    /// async runtime. `None` if `f` panicked (the thread survives).
    ///
    /// Jobs queue without a bound of their own: what waits here is already
    /// bounded by the in-flight request budget and the connection limit.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)).ok());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_survives_a_panic() {
        let w = Workers::new(2);
        let on = w
            .run(|| {
                (
                    tokio::runtime::Handle::try_current().is_err(),
                    std::thread::current().name().map(str::to_string),
                )
            })
            .await
            .unwrap();
        assert!(on.0, "a job must not run inside the async runtime");
        assert!(on.1.unwrap().starts_with("weir-stage-"));
        assert_eq!(w.run(|| -> u8 { panic!("boom") }).await, None);
        // Both threads are still there and take work.
        let all = futures::future::join_all((0..8u32).map(|i| w.run(move || i * 2))).await;
        assert_eq!(all, (0..8u32).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}
