//! A feed: one reader of a tenant's log carrying its records, in order, to
//! one destination (the archive writer or the route), as fast as the
//! destination's memory queue has room (the backlog stays on disk), and
//! acknowledging a record in the log only once the destination is done with
//! it (written in an archive object; delivered, dead-lettered or given up on
//! by the route). Acknowledged positions are persisted at most every
//! [`PERSIST_EVERY`]; a crash in between reads those records again
//! (duplicates, never loss).
//!
//! Position syncs and segment deletions run on the blocking pool (an fsync
//! each, per feed and interval: with many tenants they would stall the
//! async workers); record reads stay on the async worker (page-cache reads).
use super::record;
use crate::archive::{ArchiveChunk, ArchiveHandle};
use crate::budget::{Queue, Reservation};
use crate::sink::{ForwardChunk, RouteSlot};
use crate::telemetry::buffer::BUFFER;
use crate::telemetry::faults::{self, Task};
use crate::wal::{Durable, Progress, Reader, Record, Wal};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a feed persists its acknowledged position (and deletes passed segments).
pub const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// Bytes of records a route's feed holds in memory at most: carried to the
/// route and not yet delivered (within the route's own queue limit). The
/// backlog stays on disk; this much ahead keeps the route's requests in
/// flight, and bounds memory. (The archive writer compresses what it is
/// given at once, so its queue limit bounds what its feed holds: the records
/// waiting for their object to be written are no longer in memory.)
pub const READ_AHEAD: usize = 8 << 20;

/// Where a feed carries records.
pub enum Destination {
    Archive(ArchiveHandle),
    Route(RouteSlot),
}

impl Destination {
    fn name(&self) -> &'static str {
        match self {
            Destination::Archive(_) => "archive",
            Destination::Route(_) => "route",
        }
    }
}

/// A running feed.
pub struct FeedHandle {
    /// Ends with the feed; a feed that panics is reported when it does
    /// (`weir_task_failures_total{task="buffer_feed"}`, `/readyz` degraded).
    pub task: JoinHandle<()>,
    /// Up to which seq the destination is done (for `ack: delivered`).
    pub done: watch::Receiver<u64>,
    /// Cancelled once the feed reads no more (after `FeedStop::reading`).
    pub read_all: CancellationToken,
    /// What the destination has left in the log (readable after the feed ended).
    pub backlog: Backlog,
}

/// The events of a tenant's log that one destination has not finished with:
/// from its done position to the log's durable end.
#[derive(Clone)]
pub struct Backlog {
    pub tenant: String,
    /// `archive` or `route`.
    pub destination: &'static str,
    done: watch::Receiver<u64>,
    end: watch::Receiver<Durable>,
}

impl Backlog {
    /// Events in the log past what the destination is done with. For the
    /// route these are counted as written, before the exclusion rules' say:
    /// the part not to be indexed is not sent, only read past.
    pub fn events(&self) -> u64 {
        let end = self.end.borrow().next_seq;
        end.saturating_sub(*self.done.borrow())
    }

    /// Whose feed it is, as task failures name it.
    pub fn what(&self) -> String {
        format!(
            "tenant {}, disk buffer to its {}",
            self.tenant, self.destination
        )
    }
}

/// When a feed stops.
#[derive(Clone, Default)]
pub struct FeedStop {
    /// Read to the log's end, then read no more (intake has stopped).
    pub reading: CancellationToken,
    /// Persist what is done and end (the destinations have finished or timed out).
    pub now: CancellationToken,
}

/// Starts the feed of `tenant`'s log to `dest`.
pub fn spawn(
    tenant: &str,
    wal: Arc<Wal>,
    dest: Destination,
    stop: FeedStop,
) -> Result<FeedHandle, crate::wal::WalError> {
    let reader = wal.reader(dest.name())?;
    let start = reader.acked().next_seq;
    let (done_tx, done_rx) = watch::channel(start);
    let durable = wal.durable();
    let replay_end = durable.borrow().next_seq;
    let feed = Feed {
        tenant: tenant.to_string(),
        wal,
        reader: Arc::new(Mutex::new(reader)),
        durable,
        dest,
        in_flight: VecDeque::new(),
        carried: 0,
        finished: Arc::new(Notify::new()),
        done_tx,
        replay_end,
        last_lost: 0,
        last_damaged: 0,
        unsaved: false,
        saved_done: start,
    };
    let read_all = CancellationToken::new();
    let backlog = Backlog {
        tenant: tenant.to_string(),
        destination: feed.dest.name(),
        done: done_rx.clone(),
        end: feed.durable.clone(),
    };
    let task = tokio::spawn(feed.run(stop, read_all.clone()));
    Ok(FeedHandle {
        task: faults::supervise(Task::BufferFeed, &backlog.what(), task),
        done: done_rx,
        read_all,
        backlog,
    })
}

struct Feed {
    tenant: String,
    wal: Arc<Wal>,
    /// Shared with the blocking pool while its position is persisted.
    reader: Arc<Mutex<Reader>>,
    /// Wakes the feed when the log's durable end moves.
    durable: watch::Receiver<Durable>,
    dest: Destination,
    /// Records handed to the destination, oldest first: (end seq, progress, received at, bytes).
    in_flight: VecDeque<(u64, Arc<Progress>, i64, usize)>,
    /// The bytes of `in_flight` (at most about [`READ_AHEAD`]).
    carried: usize,
    /// Wakes the feed when a record's progress is done.
    finished: Arc<Notify>,
    done_tx: watch::Sender<u64>,
    /// Records below this seq were written before this run: replayed.
    replay_end: u64,
    last_lost: u64,
    last_damaged: u64,
    /// Read since the position was last saved (an idle feed saves nothing).
    unsaved: bool,
    saved_done: u64,
}

impl Feed {
    async fn run(mut self, stop: FeedStop, read_all: CancellationToken) {
        let mut persist = tokio::time::interval(PERSIST_EVERY);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reading = true;
        loop {
            let room = self.carried < READ_AHEAD || matches!(self.dest, Destination::Archive(_));
            if reading && room {
                // Seen before reading: a record synced meanwhile wakes the wait below.
                self.durable.borrow_and_update();
                let read = self.reader.lock().unwrap_or_else(|e| e.into_inner()).read();
                // A read may move the reader into the next segment: a position to save.
                self.unsaved = true;
                match read {
                    Ok(Some(r)) => {
                        if !self.carry(r, &stop.reading).await {
                            reading = false;
                        }
                        self.take_done();
                        continue;
                    }
                    Ok(None) if stop.reading.is_cancelled() => reading = false,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(tenant = %self.tenant, destination = self.dest.name(), error = %e, "reading the disk buffer failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            // Shutting down: what was read and finished is still persisted.
                            _ = stop.now.cancelled() => break,
                        }
                    }
                }
            }
            if !reading {
                read_all.cancel();
                if self.in_flight.is_empty() {
                    break;
                }
            }
            tokio::select! {
                r = self.durable.changed(), if reading && room => {
                    if r.is_err() {
                        // The log closed: nothing more will be written.
                        reading = false;
                    }
                }
                _ = stop.reading.cancelled(), if reading => {}
                _ = self.finished.notified() => self.take_done(),
                _ = persist.tick() => self.persist().await,
                _ = stop.now.cancelled() => break,
            }
        }
        read_all.cancel();
        self.persist().await;
    }

    /// Hands one record to the destination once its queue has room; false
    /// when the feed was told to stop reading first (the record stays
    /// unacknowledged, read again at the next start).
    async fn carry(&mut self, r: Record, stop: &CancellationToken) -> bool {
        self.count_damage();
        let labels = [self.tenant.as_str(), self.dest.name()];
        if r.first_seq < self.replay_end {
            BUFFER
                .replayed_events
                .with_label_values(&labels)
                .inc_by(u64::from(r.events));
        }
        if r.lost_before > 0 {
            tracing::error!(tenant = %self.tenant, destination = self.dest.name(), events = r.lost_before, "skipped damaged or missing records in the disk buffer; their events are lost");
        }
        let end = r.end_seq();
        let entry = match record::decode(r.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(tenant = %self.tenant, destination = self.dest.name(), events = r.events, error = %e, "skipped a log record that does not decode; its events are lost");
                BUFFER
                    .lost_events
                    .with_label_values(&labels)
                    .inc_by(u64::from(r.events));
                let p = Progress::new(self.finished.clone());
                p.release();
                self.in_flight.push_back((end, p, 0, 0));
                return true;
            }
        };
        let progress = Progress::new(self.finished.clone());
        let at = entry.received_at_ms;
        let bytes = entry.lines.len();
        let sent = match &self.dest {
            Destination::Archive(archive) => {
                let archive = archive.clone();
                let Some(room) = self.wait_for_room(&archive, entry.lines.len(), stop).await else {
                    return false;
                };
                archive
                    .send(ArchiveChunk {
                        lines: entry.lines,
                        events: r.events as usize,
                        received_at_ms: at,
                        reservation: room,
                        progress: Some(progress.clone()),
                    })
                    .is_ok()
            }
            Destination::Route(slot) if !entry.indexed.is_empty() => {
                // The route of now (a reload may have swapped it).
                let route = slot.read().unwrap().clone();
                let Some(room) = self.wait_for_room(&route, entry.lines.len(), stop).await else {
                    return false;
                };
                route
                    .send(ForwardChunk {
                        lines: entry.lines,
                        ranges: entry.indexed,
                        reservation: room,
                        progress: Some(progress.clone()),
                    })
                    .is_ok()
            }
            // Nothing of it is indexed: done with at once.
            Destination::Route(_) => {
                progress.release();
                true
            }
        };
        if !sent {
            // The destination stopped (shutdown): read again at the next start.
            return false;
        }
        self.in_flight.push_back((end, progress, at, bytes));
        self.carried += bytes;
        true
    }

    /// Waits for room in the destination's queue (none: told to stop first),
    /// meanwhile settling what finishes and keeping the metrics current.
    async fn wait_for_room<T>(
        &mut self,
        queue: &Queue<T>,
        bytes: usize,
        stop: &CancellationToken,
    ) -> Option<Reservation> {
        let queue = queue.clone(); // the wait must not borrow the feed, which persists meanwhile
        let room = async move { queue.reserve_wait(bytes).await };
        tokio::pin!(room);
        // Room first: told to stop reading, a feed still carries what fits.
        let mut tick = tokio::time::interval_at(Instant::now() + PERSIST_EVERY, PERSIST_EVERY);
        loop {
            tokio::select! {
                biased;
                r = &mut room => return Some(r),
                _ = stop.cancelled() => return None,
                _ = tick.tick() => self.persist().await,
            }
        }
    }

    /// Takes the finished records off the front: the destination is done up to there.
    fn take_done(&mut self) {
        let mut end = None;
        while self.in_flight.front().is_some_and(|(_, p, ..)| p.is_done()) {
            if let Some((e, _, _, bytes)) = self.in_flight.pop_front() {
                self.carried -= bytes;
                end = Some(e);
            }
        }
        if let Some(end) = end {
            self.done_tx.send_replace(end);
        }
    }

    /// Persists how far the destination is done and deletes the segments
    /// every reader has passed (on the blocking pool), and updates the age gauge.
    async fn persist(&mut self) {
        self.take_done();
        let labels = [self.tenant.as_str(), self.dest.name()];
        let oldest = self.in_flight.front().map_or(0, |(_, _, at, _)| {
            (chrono::Utc::now().timestamp_millis() - at).max(0) / 1000
        });
        BUFFER
            .oldest_undelivered
            .with_label_values(&labels)
            .set(oldest);
        let done = *self.done_tx.borrow();
        if !self.unsaved && done == self.saved_done {
            return;
        }
        (self.unsaved, self.saved_done) = (false, done);
        let (reader, wal) = (self.reader.clone(), self.wal.clone());
        let saved = tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|e| e.into_inner());
            let before = reader.acked();
            // Also when `done` did not move: the reader may have moved into the next segment.
            reader.ack(done)?;
            let moved = reader.acked().segment_base != before.segment_base;
            drop(reader);
            if moved {
                if let Err(e) = wal.delete_passed() {
                    tracing::warn!(error = %e, "deleting read log segments failed; retrying later");
                }
            }
            Ok::<(), crate::wal::WalError>(())
        })
        .await;
        let failed = match saved {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.unsaved = true; // try again at the next interval
        tracing::error!(tenant = %self.tenant, destination = self.dest.name(), error = %failed, "persisting the disk buffer position failed (records will be read again)");
    }

    fn count_damage(&mut self) {
        let stats = self
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats();
        let labels = [self.tenant.as_str(), self.dest.name()];
        BUFFER
            .lost_events
            .with_label_values(&labels)
            .inc_by(stats.lost_events - self.last_lost);
        BUFFER
            .damaged
            .with_label_values(&labels)
            .inc_by(stats.damaged - self.last_damaged);
        self.last_lost = stats.lost_events;
        self.last_damaged = stats.damaged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;
    use crate::wal::WalOptions;

    /// A record of `events` lines, each to be indexed.
    fn record(events: u32) -> Vec<u8> {
        let lines: Vec<u8> = (0..events)
            .flat_map(|i| format!("{{\"message\":\"{i}\"}}\n").into_bytes())
            .collect();
        let mut r = record::begin(0, lines.len());
        r.extend_from_slice(&lines);
        let mut ranges = Vec::new();
        let mut at = 0u32;
        for l in lines.split_inclusive(|&b| b == b'\n') {
            ranges.push(at..at + l.len() as u32 - 1);
            at += l.len() as u32;
        }
        record::finish(&mut r, &ranges);
        r
    }

    #[tokio::test]
    async fn the_backlog_counts_the_events_a_destination_has_not_finished_with() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(dir.path(), WalOptions::default()).unwrap());
        wal.append(record(3), 3, 0).await.unwrap();
        wal.append(record(2), 2, 0).await.unwrap();
        // A route that takes the chunks and delivers only what the test says.
        let gauge = prometheus::IntGauge::new("feed_test_queued", "test").unwrap();
        let (queue, mut route) = Queue::new(Budget::new(1 << 20, gauge));
        let stop = FeedStop::default();
        let feed = spawn(
            "backlog-t",
            wal.clone(),
            Destination::Route(Arc::new(std::sync::RwLock::new(queue))),
            stop.clone(),
        )
        .unwrap();
        let first = route.recv().await.unwrap();
        let _second = route.recv().await.unwrap();
        assert_eq!(feed.backlog.events(), 5);
        assert_eq!(feed.backlog.destination, "route");
        first.progress.unwrap().release();
        for _ in 0..500 {
            if feed.backlog.events() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(feed.backlog.events(), 2, "the first record delivered");
        // Told to stop with the second still at the route: it is what is left.
        stop.reading.cancel();
        stop.now.cancel();
        feed.task.await.unwrap();
        assert_eq!(feed.backlog.events(), 2, "readable once the feed ended");
    }
}
