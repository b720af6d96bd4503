//! Threads for intake's CPU work: decompressing and decoding requests and
//! running their stages. Two pools: one for tenants with plugins (a Wasm call
//! runs on the CPU for up to its deadline, which must not happen on an async
//! worker, nor hold up tenants without plugins), one for the others.
//!
//! A fixed number of threads, so at most that many plugin calls run at once,
//! each plugin needs at most that many warm instances, and each thread keeps
//! its allocator caches (`block_in_place` instead spawned replacement runtime
//! threads under load, each with heaps of its own: RSS grew past 500 MB).
//!
//! Intake's threads run at a lower CPU priority ([`NICER`]) than the async
//! runtime and the delivery threads: when the CPU is short, delivering what
//! was taken comes first and intake gets the rest, so an overloaded proxy
//! slows its agents down (their requests wait, unread) instead of taking
//! events faster than it can deliver them (at 64 connections intake had
//! starved delivery to a third of what it carried at 8).
//!
//! Delivery's CPU work (a backend's wire format and compression) runs on a
//! pool of its own too, at normal priority ([`Workers::delivery`]): tokio's
//! blocking pool grows a thread per waiting job, and under load each of
//! dozens of threads kept its own allocator heap (peak RSS 600 MB).
//!
//! Jobs wait in one queue per lane (each tenant's chain has one) and the
//! threads take the lanes in turn, so a tenant flooding the threads with slow batches delays another
//! tenant's batch by at most the jobs already running, not by its backlog.
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A queue of the workers: one tenant's chain queues its jobs in its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane(usize);

type Job = Box<dyn FnOnce() + Send>;

/// How much nicer than the rest of the process the threads are (Linux nice
/// levels; +5 gives them about a third of the CPU time of a busy normal thread).
pub const NICER: i32 = 5;

/// Lowers the calling thread's priority by [`NICER`] (Linux keeps a nice level
/// per thread). Lowering needs no privilege; failing, the thread runs as is.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread's own id, no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICER).min(19));
    }
}

pub struct Workers {
    queues: Arc<Mutex<Queues>>,
    /// One token per queued job: a thread takes a token, then a job (the
    /// channel is the hand-off the threads had before the per-tenant queues).
    tokens: crossbeam_channel::Sender<()>,
    threads: usize,
    /// Lanes handed out so far.
    lanes: AtomicUsize,
}

#[derive(Default)]
struct Queues {
    /// Waiting jobs, by lane.
    by_tenant: Vec<VecDeque<Job>>,
    /// The tenants with waiting jobs (each once), in the order they get a thread.
    turns: VecDeque<usize>,
}

impl Queues {
    fn push(&mut self, tenant: usize, job: Job) {
        if self.by_tenant.len() <= tenant {
            self.by_tenant.resize_with(tenant + 1, VecDeque::new);
        }
        let queue = &mut self.by_tenant[tenant];
        queue.push_back(job);
        if queue.len() == 1 {
            self.turns.push_back(tenant);
        }
    }

    /// The next tenant's oldest job; that tenant goes to the back of the turns.
    fn next(&mut self) -> Option<Job> {
        let tenant = self.turns.pop_front()?;
        let queue = &mut self.by_tenant[tenant];
        let job = queue.pop_front().expect("a tenant in turns has a job");
        if !queue.is_empty() {
            self.turns.push_back(tenant);
        }
        Some(job)
    }
}

impl Workers {
    /// Starts `threads` intake threads (at least one), named `<name>-<i>`, at
    /// the lower priority. They end when the `Workers` is dropped, once the
    /// queued jobs are done.
    pub fn new(name: &str, threads: usize) -> Arc<Workers> {
        Workers::start(name, threads, true)
    }

    /// The process's delivery threads (one per core, normal priority), with
    /// the one queue they take jobs from.
    pub fn delivery() -> &'static (Arc<Workers>, Lane) {
        static DELIVERY: std::sync::LazyLock<(Arc<Workers>, Lane)> =
            std::sync::LazyLock::new(|| {
                let w = Workers::start("weir-deliver", Workers::default_threads(), false);
                let lane = w.lane();
                (w, lane)
            });
        &DELIVERY
    }

    fn start(name: &str, threads: usize, nicer: bool) -> Arc<Workers> {
        let threads = threads.max(1);
        let queues = Arc::new(Mutex::new(Queues::default()));
        let (tokens, rx) = crossbeam_channel::unbounded::<()>();
        for i in 0..threads {
            let (rx, queues) = (rx.clone(), queues.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    if nicer {
                        lower_priority();
                    }
                    // A job is queued before its token is sent, so there is one for every token.
                    for () in rx {
                        let job = queues.lock().unwrap().next();
                        job.expect("a job for every token")();
                    }
                })
                .expect("spawning a stage worker thread");
        }
        Arc::new(Workers {
            queues,
            tokens,
            threads,
            lanes: AtomicUsize::new(0),
        })
    }

    /// A new queue, for one tenant's chain.
    pub fn lane(&self) -> Lane {
        Lane(self.lanes.fetch_add(1, Ordering::Relaxed))
    }

    /// Threads to use when the config leaves it to us: one per core.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` in `lane` on a worker thread and waits for it
    /// without blocking the async runtime. `None` if `f` panicked (the thread
    /// survives).
    ///
    /// Jobs queue without a bound of their own: what waits here is already
    /// bounded by the in-flight request budget and the connection limit.
    pub async fn run<R: Send + 'static>(
        &self,
        lane: Lane,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)).ok());
        });
        self.queues.lock().unwrap().push(lane.0, job);
        self.tokens.send(()).ok()?;
        rx.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_survives_a_panic() {
        let w = Workers::new("weir-stage", 2);
        let on = w
            .run(w.lane(), || {
                (
                    tokio::runtime::Handle::try_current().is_err(),
                    std::thread::current().name().map(str::to_string),
                )
            })
            .await
            .unwrap();
        assert!(on.0, "a job must not run inside the async runtime");
        assert!(on.1.unwrap().starts_with("weir-stage-"));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: reads the nice level of the calling thread.
            let (here, there) = (
                unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) },
                w.run(w.lane(), || unsafe {
                    libc::getpriority(libc::PRIO_PROCESS, 0)
                })
                .await
                .unwrap(),
            );
            assert_eq!(there, (here + NICER).min(19), "intake threads run nicer");
        }
        let lanes = [w.lane(), w.lane(), w.lane()];
        assert_eq!(w.run(lanes[0], || -> u8 { panic!("boom") }).await, None);
        // Both threads are still there and take work.
        let all = futures::future::join_all(
            (0..8u32).map(|i| w.run(lanes[i as usize % 3], move || i * 2)),
        )
        .await;
        assert_eq!(all, (0..8u32).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_tenant_backlog_does_not_hold_up_another_tenant() {
        let w = Workers::new("weir-stage", 1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        // The one thread is busy with tenant 0; ten more of its jobs wait, then one of tenant 1.
        let (a, b) = (w.lane(), w.lane());
        let busy = w.run(a, move || hold.recv().unwrap());
        let backlog = futures::future::join_all((0..10).map(|i| {
            let order = order.clone();
            w.run(a, move || order.lock().unwrap().push(format!("a{i}")))
        }));
        let other = {
            let order = order.clone();
            w.run(b, move || order.lock().unwrap().push("b".to_string()))
        };
        let all = async { futures::join!(busy, backlog, other) };
        tokio::pin!(all);
        // One poll queues every job (in the order above); none can finish yet.
        assert!(futures::poll!(&mut all).is_pending());
        release.send(()).unwrap();
        all.await;
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 11);
        // Tenant 1 waits for at most one more job of tenant 0 (depending on
        // whether the thread took the busy job before the others were queued),
        // not for all ten as in one queue.
        let b = order.iter().position(|j| j == "b").unwrap();
        assert!(b <= 1, "{order:?}");
    }
}
