//! One job as the admin API shows it: its spec, state and counters, updated by
//! its run (run.rs) and read by `GET /admin/rehydrations[/{id}]`.
use super::checkpoint::{Checkpoint, Counters, Cursor};
use super::spec::{rfc3339, rfc3339_ms, Spec};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Listing the archive objects of the range.
    Listing,
    Running,
    /// Asked to stop: waiting for the chunks already sent to be delivered.
    Cancelling,
    Done,
    Cancelled,
    Failed,
    /// Stopped by a shutdown of the proxy, or found as such at start.
    Interrupted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Listing => "listing",
            State::Running => "running",
            State::Cancelling => "cancelling",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> State {
        match s {
            "done" => State::Done,
            "cancelled" => State::Cancelled,
            "failed" => State::Failed,
            // A checkpoint left `running` is a run that did not end: the proxy stopped.
            _ => State::Interrupted,
        }
    }

    /// Still moving (counts against the cap on jobs at once).
    pub fn is_active(self) -> bool {
        matches!(self, State::Listing | State::Running | State::Cancelling)
    }
}

pub struct Job {
    pub id: String,
    pub spec: Spec,
    /// Events per second at most.
    pub rate: u64,
    pub dry_run: bool,
    pub cancel: CancellationToken,
    /// The cancel came from a shutdown of the proxy, not from a user.
    pub shutting_down: AtomicBool,
    pub status: Mutex<Status>,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    pub error: Option<String>,
    pub objects_total: usize,
    pub objects_done: usize,
    /// Compressed bytes of every object, and of those done.
    pub archive_bytes_total: u64,
    pub archive_bytes_done: u64,
    /// Totals of earlier runs (from the checkpoint this run started at).
    pub base: Counters,
    /// This run: done chunks (what the checkpoint holds beyond `base`).
    pub settled: Counters,
    /// This run: read so far, sent or not (scanned, matched, invalid).
    pub read: Counters,
    pub in_flight_events: u64,
    pub cursor: Cursor,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When this run started, and the archive bytes done then (rates and ETA).
    pub run_started: Instant,
    pub bytes_done_at_start: u64,
}

impl Status {
    pub fn new(state: State) -> Status {
        Status {
            state,
            error: None,
            objects_total: 0,
            objects_done: 0,
            archive_bytes_total: 0,
            archive_bytes_done: 0,
            base: Counters::default(),
            settled: Counters::default(),
            read: Counters::default(),
            in_flight_events: 0,
            cursor: Cursor::default(),
            started_at: Utc::now(),
            finished_at: None,
            run_started: Instant::now(),
            bytes_done_at_start: 0,
        }
    }

    /// What the checkpoint holds: earlier runs and this run's done chunks.
    pub fn totals(&self) -> Counters {
        let mut t = self.base;
        t.add(&self.settled);
        t
    }
}

impl Job {
    pub fn new(id: String, spec: Spec, rate: u64, dry_run: bool, state: State) -> Job {
        Job {
            id,
            spec,
            rate,
            dry_run,
            cancel: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            status: Mutex::new(Status::new(state)),
        }
    }

    /// A job of an earlier run of the proxy, as its checkpoint left it.
    pub fn from_checkpoint(c: &Checkpoint) -> Job {
        let job = Job::new(
            c.id.clone(),
            c.spec.clone(),
            0,
            false,
            State::parse(&c.state),
        );
        {
            let mut s = job.status.lock().unwrap();
            s.base = c.counters;
            s.cursor = c.cursor;
            s.error = c.error.clone();
            s.finished_at = DateTime::parse_from_rfc3339(&c.updated_at)
                .ok()
                .map(|t| t.to_utc());
        }
        job
    }

    pub fn state(&self) -> State {
        self.status.lock().unwrap().state
    }

    pub fn set_state(&self, state: State) {
        let mut s = self.status.lock().unwrap();
        s.state = state;
        if !state.is_active() {
            s.finished_at = Some(Utc::now());
        }
    }

    pub fn fail(&self, error: String) {
        tracing::warn!(job = %self.id, tenant = %self.spec.tenant, %error, "rehydration failed");
        self.status.lock().unwrap().error = Some(error);
        self.set_state(State::Failed);
    }

    /// Asks the job to stop at a chunk boundary (what is sent is still awaited).
    pub fn stop(&self, shutdown: bool) {
        if shutdown {
            self.shutting_down.store(true, Ordering::SeqCst);
        }
        let mut s = self.status.lock().unwrap();
        if s.state.is_active() {
            s.state = State::Cancelling;
        }
        drop(s);
        self.cancel.cancel();
    }

    /// How a run that stopped early ends: cancelled by a user, or interrupted by a shutdown.
    pub fn stopped_state(&self) -> State {
        match self.shutting_down.load(Ordering::SeqCst) {
            true => State::Interrupted,
            false => State::Cancelled,
        }
    }

    /// The job as `GET /admin/rehydrations/{id}` shows it. No credential is in
    /// it: the spec names the tenant and backend, errors name objects.
    pub fn view(&self) -> Value {
        let s = self.status.lock().unwrap().clone();
        let t = s.totals();
        let elapsed = s.run_started.elapsed().as_secs_f64();
        let rate_of = |n: u64| {
            (s.state.is_active() && elapsed > 0.5).then(|| (n as f64 / elapsed).round() as u64)
        };
        let per_second = rate_of(s.settled.events_sent).filter(|_| !self.dry_run);
        // Time left, from how fast this run got through the archive's bytes.
        let done_now = s.archive_bytes_done.saturating_sub(s.bytes_done_at_start);
        let left = s.archive_bytes_total.saturating_sub(s.archive_bytes_done);
        let eta = match s.state {
            State::Running if done_now > 0 && elapsed > 0.5 => {
                Some((left as f64 * elapsed / done_now as f64).ceil() as u64)
            }
            State::Running if left == 0 && s.objects_total > 0 => Some(0),
            _ => None,
        };
        let mut v = json!({
            "id": self.id,
            "tenant": self.spec.tenant,
            "from": rfc3339_ms(self.spec.from_ms),
            "to": rfc3339_ms(self.spec.to_ms),
            "query": self.spec.query,
            "to_backend": self.spec.to_backend,
            "late_arrival_s": self.spec.late_arrival_s,
            "rate": (self.rate > 0).then_some(self.rate),
            "dry_run": self.dry_run,
            "state": s.state.as_str(),
            "error": s.error,
            "objects_total": s.objects_total,
            "objects_done": s.objects_done,
            "archive_bytes_total": s.archive_bytes_total,
            "archive_bytes_done": s.archive_bytes_done,
            "events_scanned": s.base.events_scanned + s.read.events_scanned,
            "bytes_scanned": s.base.bytes_scanned + s.read.bytes_scanned,
            "events_matched": s.base.events_matched + s.read.events_matched,
            "bytes_matched": s.base.bytes_matched + s.read.bytes_matched,
            "events_invalid": s.base.events_invalid + s.read.events_invalid,
            "events_sent": t.events_sent,
            "bytes_sent": t.bytes_sent,
            "events_in_flight": s.in_flight_events,
            "events_per_second": per_second,
            "scanned_per_second": rate_of(s.read.events_scanned),
            "eta_seconds": eta,
            "resumed_from_events_sent": s.base.events_sent,
            "checkpoint": {"object": s.cursor.object, "line": s.cursor.line},
            "started_at": rfc3339(s.started_at),
            "finished_at": s.finished_at.map(rfc3339),
        });
        if self.dry_run {
            let matched = s.read.events_matched;
            v["estimate"] = json!({
                "events": matched,
                "bytes": s.read.bytes_matched,
                "seconds_at_rate": (matched as f64 / self.rate.max(1) as f64).ceil() as u64,
                "complete": s.state == State::Done,
            });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            tenant: "acme".into(),
            from_ms: 1_764_752_400_000,
            to_ms: 1_764_756_000_000,
            query: None,
            to_backend: None,
            late_arrival_s: 3600,
        }
    }

    #[test]
    fn a_dry_run_estimates_time_at_the_rate() {
        let job = Job::new("rh-x".into(), spec(), 100, true, State::Running);
        {
            let mut s = job.status.lock().unwrap();
            s.read.events_matched = 250;
            s.read.bytes_matched = 25_000;
            s.state = State::Done;
        }
        let v = job.view();
        assert_eq!(v["estimate"]["events"], 250);
        assert_eq!(v["estimate"]["bytes"], 25_000);
        assert_eq!(v["estimate"]["seconds_at_rate"], 3);
        assert_eq!(v["estimate"]["complete"], true);
        assert_eq!(v["from"], "2025-12-03T09:00:00Z");
    }

    #[test]
    fn totals_add_earlier_runs_and_a_stop_says_who_stopped() {
        let job = Job::new("rh-x".into(), spec(), 100, false, State::Running);
        {
            let mut s = job.status.lock().unwrap();
            s.base.events_sent = 10;
            s.settled.events_sent = 5;
        }
        assert_eq!(job.view()["events_sent"], 15);
        assert_eq!(job.view()["resumed_from_events_sent"], 10);
        job.stop(false);
        assert_eq!(job.state(), State::Cancelling);
        assert_eq!(job.stopped_state(), State::Cancelled);
        job.stop(true);
        assert_eq!(job.stopped_state(), State::Interrupted);
        assert_eq!(State::parse("running"), State::Interrupted);
    }
}
