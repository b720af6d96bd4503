//! One run of a job: list (or take the saved listing), scan from the
//! checkpoint, send the selected events in chunks at the rate limit, and move
//! the checkpoint over each chunk once the route is done with it.
//!
//! Chunks go straight to the tenant's route (or a route to one backend), as
//! the disk buffer's feed sends them: not through the stage chain, so they are
//! not archived again, and exclusion rules, quotas and rate limits do not apply
//! (they were applied when the events arrived; a rehydration is an operator's
//! explicit ask, paced by its own rate).
use super::checkpoint::{Checkpoint, Counters, Cursor, Files, InFlight, Object, Window};
use super::job::{Job, State};
use super::reader::{self, Filter, Piece, PieceLimits};
use super::spec::rfc3339;
use crate::sink::{ForwardChunk, RouteHandle, RouteSlot};
use crate::wal::Progress;
use bytes::Bytes;
use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, Instant};

/// Chunks sent and not yet done, at most: what a `kill -9` may send twice.
pub const MAX_IN_FLIGHT: usize = 4;
/// A chunk holds at most this many events (fewer when the rate is lower) and bytes.
pub const CHUNK_EVENTS: usize = 1000;
pub const CHUNK_BYTES: usize = 1 << 20;
/// A chunk with events is sent at the latest this long after its first one
/// (the scan may be crossing a long stretch with nothing selected).
const CHUNK_WAIT: Duration = Duration::from_secs(1);
/// A checkpoint that only moves over lines with nothing selected is written at most this often.
const IDLE_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Where the chunks go.
pub enum Target {
    /// The tenant's route, as it is now (a reload may swap it).
    Route(RouteSlot),
    /// A route to one backend, which ends when the run drops it; the router
    /// says, before each chunk, whether the tenant may still send there (a
    /// reload may have changed its regions).
    Backend {
        route: RouteHandle,
        router: Arc<crate::sink::router::Router>,
        name: String,
    },
    /// Nowhere: a dry run counts.
    DryRun,
}

pub struct Context {
    /// The tenant's archive stores, in order.
    pub stores: Vec<Arc<crate::archive::ArchiveStore>>,
    /// None for a dry run (it keeps no state).
    pub files: Option<Files>,
    pub target: Target,
    /// Where to start (a checkpoint's cursor and totals) and the saved listing.
    pub start: Option<Checkpoint>,
    pub listing: Option<Vec<Object>>,
}

/// Runs `job` to its end; its state says how it ended.
pub async fn run(job: Arc<Job>, ctx: Context) {
    let end = match run_inner(&job, ctx).await {
        Ok(state) => state,
        Err(e) => {
            job.fail(e);
            State::Failed
        }
    };
    if end != State::Failed {
        job.set_state(end);
    }
    let s = job.status.lock().unwrap().clone();
    tracing::info!(job = %job.id, tenant = %job.spec.tenant, state = end.as_str(), events_sent = s.totals().events_sent, events_matched = s.base.events_matched + s.read.events_matched, dry_run = job.dry_run, "rehydration ended");
}

async fn run_inner(job: &Arc<Job>, ctx: Context) -> Result<State, String> {
    let start = ctx.start.as_ref().map(|c| c.cursor).unwrap_or_default();
    if let Some(c) = &ctx.start {
        job.status.lock().unwrap().base = c.counters;
    }
    let objects = match ctx.listing {
        Some(l) => l,
        None => {
            let listing = tokio::select! {
                l = reader::list(&ctx.stores, &job.spec, chrono::Utc::now()) => l?,
                _ = job.cancel.cancelled() => return Ok(job.stopped_state()),
            };
            if let Some(files) = &ctx.files {
                files.save_listing(&listing)?;
            }
            listing
        }
    };
    let objects = Arc::new(objects);
    {
        let mut s = job.status.lock().unwrap();
        s.objects_total = objects.len();
        s.objects_done = start.object.min(objects.len());
        s.archive_bytes_total = objects.iter().map(|o| o.size).sum();
        s.archive_bytes_done = objects[..s.objects_done].iter().map(|o| o.size).sum();
        s.bytes_done_at_start = s.archive_bytes_done;
        s.cursor = start;
        s.run_started = std::time::Instant::now();
        if s.state == State::Listing {
            s.state = State::Running;
        }
    }
    let filter = Filter::new(&job.spec)?;
    let chunk_events = CHUNK_EVENTS.min(job.rate as usize).max(1);
    let limits = PieceLimits {
        events: chunk_events,
        bytes: CHUNK_BYTES,
    };
    let (tx, rx) = mpsc::channel(2);
    let (rt, store, list) = (
        tokio::runtime::Handle::current(),
        ctx.stores.clone(),
        objects.clone(),
    );
    let scanner = tokio::task::spawn_blocking(move || {
        reader::scan(rt, store, list, start, filter, limits, tx)
    });
    let mut sender = Sender {
        job: job.clone(),
        target: ctx.target,
        files: ctx.files,
        objects,
        notify: Arc::new(Notify::new()),
        window: Window::default(),
        pace: governor::RateLimiter::direct(crate::quota::rate::quota(
            job.rate,
            Some(chunk_events as u64),
        )),
        chunk: Chunk::new(start),
        chunk_events,
        last_save: Instant::now(),
        unsaved: false,
    };
    let outcome = sender.pump(rx).await;
    // Whatever happened, what was sent is awaited and checkpointed: a resume sends none of it again.
    let drained = sender.drain().await;
    // The receiver is gone: the scanner stops if it was still reading.
    let scanned = scanner
        .await
        .unwrap_or_else(|e| Err(format!("the archive reader stopped: {e}")));
    let ended = drained.and(outcome).and_then(|o| match o {
        Pumped::All => scanned.map(|_| State::Done),
        Pumped::Stopped => Ok(job.stopped_state()),
    });
    match ended {
        Ok(state) => {
            sender.save(state)?;
            if let (State::Done, Some(files)) = (state, &sender.files) {
                files.remove_listing();
            }
            Ok(state)
        }
        Err(e) => {
            // Saved as failed, at the position reached: a later run resumes there.
            job.status.lock().unwrap().error = Some(e.clone());
            if let Err(save) = sender.save(State::Failed) {
                tracing::warn!(job = %job.id, error = %save, "rehydration: the failed job's checkpoint was not saved");
            }
            Err(e)
        }
    }
}

/// How the pumping ended.
enum Pumped {
    /// Every object read and every chunk sent.
    All,
    /// Cancelled (by a user, or a shutdown).
    Stopped,
}

/// The chunk being filled.
struct Chunk {
    lines: Vec<u8>,
    ranges: Vec<Range<u32>>,
    end: Cursor,
    counters: Counters,
    objects_done: usize,
    first_at: Option<Instant>,
}

impl Chunk {
    fn new(at: Cursor) -> Chunk {
        Chunk {
            lines: Vec::new(),
            ranges: Vec::new(),
            end: at,
            counters: Counters::default(),
            objects_done: 0,
            first_at: None,
        }
    }

    fn add(&mut self, p: Piece) {
        let base = self.lines.len() as u32;
        self.ranges
            .extend(p.ranges.iter().map(|r| r.start + base..r.end + base));
        self.lines.extend_from_slice(&p.lines);
        self.end = p.end;
        self.counters.events_scanned += p.scanned;
        self.counters.bytes_scanned += p.scanned_bytes;
        self.counters.events_invalid += p.invalid;
        self.counters.events_matched += p.ranges.len() as u64;
        self.counters.bytes_matched += p.matched_bytes;
        self.objects_done += p.objects_done;
        if !self.ranges.is_empty() && self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
    }
}

struct Sender {
    job: Arc<Job>,
    target: Target,
    files: Option<Files>,
    objects: Arc<Vec<Object>>,
    /// Woken when a chunk's last hold is released.
    notify: Arc<Notify>,
    window: Window,
    pace: governor::DefaultDirectRateLimiter,
    chunk: Chunk,
    chunk_events: usize,
    last_save: Instant,
    /// The checkpoint moved over lines with nothing selected since the last save.
    unsaved: bool,
}

impl Sender {
    /// Takes pieces until the scan ends or the job is cancelled.
    async fn pump(&mut self, mut rx: mpsc::Receiver<Piece>) -> Result<Pumped, String> {
        loop {
            let flush_at = self.chunk.first_at.map(|t| t + CHUNK_WAIT);
            tokio::select! {
                biased;
                _ = self.job.cancel.cancelled() => return Ok(Pumped::Stopped),
                _ = async { sleep_until(flush_at.unwrap()).await }, if flush_at.is_some() => {
                    if !self.flush().await? { return Ok(Pumped::Stopped) }
                }
                piece = rx.recv() => match piece {
                    None => {
                        return Ok(match self.flush().await? {
                            true => Pumped::All,
                            false => Pumped::Stopped,
                        });
                    }
                    Some(p) => if !self.take(p).await? { return Ok(Pumped::Stopped) },
                },
            }
            self.settle(false)?;
            while self.window.len() >= MAX_IN_FLIGHT {
                tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = self.job.cancel.cancelled() => return Ok(Pumped::Stopped),
                }
                self.settle(false)?;
            }
        }
    }

    /// Adds a piece to the chunk, sending the chunk first if the piece would
    /// not fit, and after if it is full. False: cancelled before a send.
    async fn take(&mut self, p: Piece) -> Result<bool, String> {
        self.note_read(&p);
        let would_overflow = self.chunk.ranges.len() + p.ranges.len() > self.chunk_events
            || self.chunk.lines.len() + p.lines.len() > CHUNK_BYTES;
        if would_overflow && !self.flush().await? {
            return Ok(false);
        }
        self.chunk.add(p);
        // A stretch with nothing selected is done at once: the position and progress move on.
        let full = self.chunk.ranges.is_empty()
            || self.chunk.ranges.len() >= self.chunk_events
            || self.chunk.lines.len() >= CHUNK_BYTES;
        if full && !self.flush().await? {
            return Ok(false);
        }
        Ok(true)
    }

    fn note_read(&self, p: &Piece) {
        let mut s = self.job.status.lock().unwrap();
        s.read.events_scanned += p.scanned;
        s.read.bytes_scanned += p.scanned_bytes;
        s.read.events_invalid += p.invalid;
        s.read.events_matched += p.ranges.len() as u64;
        s.read.bytes_matched += p.matched_bytes;
    }

    /// Hands the chunk to the route (a dry run or a chunk with no event: it
    /// is done at once). False: cancelled before it was sent (it was not).
    async fn flush(&mut self) -> Result<bool, String> {
        let at = self.chunk.end;
        let chunk = std::mem::replace(&mut self.chunk, Chunk::new(at));
        let events = chunk.ranges.len();
        let mut counters = chunk.counters;
        let mut progress = None;
        let route = match &self.target {
            Target::DryRun => None,
            _ if events == 0 => None,
            Target::Route(slot) => Some(slot.read().unwrap().clone()),
            Target::Backend {
                route,
                router,
                name,
            } => {
                let allowed = router.allowed_backends(&self.job.spec.tenant);
                if !allowed.is_some_and(|a| a.contains(name)) {
                    return Err(format!("residency: a config reload took backend {name:?} out of tenant {:?}'s route; nothing more is sent there", self.job.spec.tenant));
                }
                Some(route.clone())
            }
        };
        if let Some(route) = route {
            let n = NonZeroU32::new(events as u32).expect("a chunk with events");
            let bytes = chunk.lines.len();
            let reservation = tokio::select! {
                biased;
                _ = self.job.cancel.cancelled() => return Ok(false),
                r = async {
                    // A chunk never holds more events than the limiter's burst.
                    let _ = self.pace.until_n_ready(n).await;
                    route.reserve_wait(bytes).await
                } => r,
            };
            let p = Progress::new(self.notify.clone());
            counters.events_sent = events as u64;
            counters.bytes_sent = chunk.ranges.iter().map(|r| (r.end - r.start) as u64).sum();
            route
                .send(ForwardChunk {
                    lines: Bytes::from(chunk.lines),
                    ranges: chunk.ranges,
                    reservation,
                    progress: Some(p.clone()),
                })
                .map_err(|_| {
                    "the proxy is shutting down: the route no longer takes events".to_string()
                })?;
            self.job.status.lock().unwrap().in_flight_events += events as u64;
            progress = Some(p);
        }
        self.window.push(InFlight {
            end: chunk.end,
            progress,
            counters,
            objects_done: chunk.objects_done,
        });
        Ok(true)
    }

    /// Moves the checkpoint over the done chunks at the window's front, and saves it.
    fn settle(&mut self, force: bool) -> Result<(), String> {
        if let Some((cursor, counters, objects)) = self.window.settle() {
            let mut s = self.job.status.lock().unwrap();
            s.settled.add(&counters);
            s.in_flight_events = s.in_flight_events.saturating_sub(counters.events_sent);
            s.cursor = cursor;
            s.objects_done += objects;
            let done = s.objects_done.min(self.objects.len());
            s.archive_bytes_done = self.objects[..done].iter().map(|o| o.size).sum();
            drop(s);
            self.unsaved = true;
            let tenant = [self.job.spec.tenant.as_str()];
            let m = &super::metrics::REHYDRATION;
            m.events
                .with_label_values(&tenant)
                .inc_by(counters.events_sent);
            m.bytes
                .with_label_values(&tenant)
                .inc_by(counters.bytes_sent);
            if counters.events_sent > 0 {
                return self.save(State::Running);
            }
        }
        if self.unsaved && (force || self.last_save.elapsed() >= IDLE_SAVE_EVERY) {
            self.save(State::Running)?;
        }
        Ok(())
    }

    /// Waits for every chunk in flight to be done (the route delivers them
    /// even while the proxy drains), checkpointing as they finish.
    async fn drain(&mut self) -> Result<(), String> {
        self.settle(false)?;
        while !self.window.is_empty() {
            self.notify.notified().await;
            self.settle(false)?;
        }
        self.settle(true)
    }

    fn save(&mut self, state: State) -> Result<(), String> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let s = self.job.status.lock().unwrap().clone();
        files.save(&Checkpoint {
            id: self.job.id.clone(),
            spec: self.job.spec.clone(),
            cursor: s.cursor,
            counters: s.totals(),
            state: state.as_str().to_string(),
            error: s.error.clone(),
            updated_at: rfc3339(chrono::Utc::now()),
        })?;
        self.last_save = Instant::now();
        self.unsaved = false;
        Ok(())
    }
}
