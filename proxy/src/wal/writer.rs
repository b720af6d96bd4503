//! The writer thread: group commit. It takes one append off the channel,
//! drains whatever else is waiting (up to a group's limits), encodes the
//! group into one buffer, does one write and one `sync_data`, then answers
//! every append with its seq range and publishes the new durable end.
use super::format::{RecordHeader, SegmentHeader, SEGMENT_HEADER_LEN};
use super::segment::{segment_path, sync_dir};
use super::{Durable, SeqRange, SyncPolicy, WalError, WalOptions};
use crossbeam_channel::Receiver;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// One request's record, waiting for the writer.
pub struct Append {
    pub payload: Vec<u8>,
    pub events: u32,
    pub flags: u16,
    pub reply: oneshot::Sender<Result<SeqRange, WalError>>,
}

/// Counters the writer keeps, for tests and the buffer's metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Groups committed: one write and one sync each.
    pub groups: AtomicU64,
    pub records: AtomicU64,
    pub failed_groups: AtomicU64,
    /// Bytes of the log's segment files on disk.
    pub bytes: AtomicU64,
    /// Payload bytes submitted and not yet written (or failed).
    pub queued: AtomicU64,
    /// Where each group's write-and-sync time goes, when the owner set one.
    pub sync_seconds: std::sync::OnceLock<prometheus::Histogram>,
    /// Makes the next group's write short and failed (tests only).
    #[cfg(test)]
    pub(crate) fail_next_write: std::sync::atomic::AtomicBool,
}

/// The active segment and what of it is committed.
pub struct Writer {
    seg_dir: PathBuf,
    options: WalOptions,
    /// The active segment; `None` when it could not be created at open (a
    /// full disk): the first group creates it, as after a failed sync.
    file: Option<File>,
    base_seq: u64,
    /// Bytes of the active segment that are written and synced.
    committed_len: u64,
    next_seq: u64,
    /// After a failed sync, the segment is sealed and a new one started.
    must_roll: bool,
    durable: watch::Sender<Durable>,
    stats: Arc<WriterStats>,
    /// Each synced record, for readers close behind.
    recent: Arc<super::recent::Recent>,
}

/// Segment directories where creating a segment fails as on a full disk (tests only).
#[cfg(test)]
pub(crate) static FULL_DISK: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Segment directories whose writer waits before it gathers a group (tests only:
/// appends pile up, as they do behind a slow sync).
#[cfg(test)]
pub(crate) static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Creates `seg/<base>.wal` with its header, syncs it and the directory.
fn create_segment(seg_dir: &Path, base_seq: u64) -> Result<File, WalError> {
    let path = segment_path(seg_dir, base_seq);
    let err = WalError::io("creating segment", &path);
    #[cfg(test)]
    if FULL_DISK.lock().unwrap().iter().any(|d| d == seg_dir) {
        return Err(err(std::io::Error::from_raw_os_error(28))); // ENOSPC
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(&err)?;
    let written = file
        .write_all_at(&SegmentHeader { base_seq }.encode(), 0)
        .and_then(|()| file.sync_all())
        .map_err(&err)
        .and_then(|()| sync_dir(seg_dir));
    if let Err(e) = written {
        // A full disk: no half-made segment is left to block the next try.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

impl Writer {
    /// Starts a new segment at `next_seq` and publishes it as the durable end.
    /// A segment that cannot be created (a full disk) does not stop the
    /// start: readers still drain what is in the log, which is what frees the
    /// disk, and the first group tries again. The error is returned with it.
    pub fn start(
        seg_dir: &Path,
        next_seq: u64,
        options: WalOptions,
        stats: Arc<WriterStats>,
        recent: Arc<super::recent::Recent>,
    ) -> (Writer, watch::Receiver<Durable>, Option<WalError>) {
        let (file, error) = match create_segment(seg_dir, next_seq) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        let durable = Durable {
            segment_base: next_seq,
            end_offset: SEGMENT_HEADER_LEN as u64,
            next_seq,
        };
        let (tx, rx) = watch::channel(durable);
        let file_missing = file.is_none();
        let writer = Writer {
            seg_dir: seg_dir.to_path_buf(),
            options,
            file,
            base_seq: next_seq,
            committed_len: SEGMENT_HEADER_LEN as u64,
            next_seq,
            must_roll: file_missing,
            durable: tx,
            stats,
            recent,
        };
        (writer, rx, error)
    }

    /// Runs until every sender is gone, then returns after the last group.
    pub fn run(mut self, inbox: Receiver<Append>) {
        while let Ok(first) = inbox.recv() {
            #[cfg(test)]
            while HELD.lock().unwrap().contains(&self.seg_dir) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // EveryGroup: what is already waiting; Interval: what arrives until the deadline.
            let deadline = match self.options.sync {
                SyncPolicy::EveryGroup => None,
                SyncPolicy::Interval(every) => Some(std::time::Instant::now() + every),
            };
            let mut bytes = first.payload.len();
            let mut group = vec![first];
            while group.len() < self.options.max_group_appends
                && bytes < self.options.max_group_bytes
            {
                let next = match deadline {
                    None => inbox.try_recv().ok(),
                    Some(d) => inbox.recv_deadline(d).ok(),
                };
                match next {
                    Some(a) => {
                        bytes += a.payload.len();
                        group.push(a);
                    }
                    None => break,
                }
            }
            self.commit(group);
        }
    }

    /// Writes and syncs one group, then answers each append.
    fn commit(&mut self, group: Vec<Append>) {
        let written = self.write_group(&group);
        let payload: u64 = group.iter().map(|a| a.payload.len() as u64).sum();
        self.stats.queued.fetch_sub(payload, Ordering::Relaxed);
        let (ranges, offsets) = match written {
            Ok(written) => written,
            Err(e) => {
                self.recent.clear();
                self.stats.failed_groups.fetch_add(1, Ordering::Relaxed);
                for a in group {
                    let _ = a.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        // Kept before the readers hear of them: the payloads move, nothing is copied.
        let mut replies = Vec::with_capacity(group.len());
        let segment_base = self.base_seq;
        let records = group.into_iter().zip(ranges.iter().zip(offsets)).map(
            |(a, (range, (offset, record_len)))| {
                replies.push((a.reply, *range));
                super::recent::Cached {
                    segment_base,
                    offset,
                    record_len,
                    first_seq: range.first,
                    events: a.events,
                    flags: a.flags,
                    payload: bytes::Bytes::from(a.payload),
                }
            },
        );
        self.recent.push(records);
        self.durable.send_replace(Durable {
            segment_base: self.base_seq,
            end_offset: self.committed_len,
            next_seq: self.next_seq,
        });
        for (reply, range) in replies {
            let _ = reply.send(Ok(range));
        }
    }

    /// On a write or sync error the segment is cut back to its committed
    /// length (the group's bytes never count) and the group fails.
    /// Each record's seq range, and where it starts in the segment and its length there.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &mut self,
        group: &[Append],
    ) -> Result<(Vec<SeqRange>, Vec<(u64, u64)>), WalError> {
        if self.must_roll || self.committed_len >= self.options.segment_bytes {
            self.roll()?;
        }
        let mut buf = Vec::with_capacity(group.iter().map(|a| a.payload.len() + 32).sum());
        let mut ranges = Vec::with_capacity(group.len());
        let mut offsets = Vec::with_capacity(group.len());
        let mut seq = self.next_seq;
        for a in group {
            let at = buf.len();
            RecordHeader::encode_record(seq, a.events, a.flags, &a.payload, &mut buf);
            offsets.push((self.committed_len + at as u64, (buf.len() - at) as u64));
            let end = seq + u64::from(a.events);
            ranges.push(SeqRange { first: seq, end });
            seq = end;
        }
        let started = std::time::Instant::now();
        let written = self.write_and_sync(&buf);
        if let Some(h) = self.stats.sync_seconds.get() {
            h.observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = written {
            // Never sync the same bytes again after a failure (fsyncgate): cut, seal, roll.
            if let Some(f) = &self.file {
                let _ = f.set_len(self.committed_len);
            }
            self.must_roll = true;
            return Err(WalError::Write(Arc::new(e)));
        }
        self.committed_len += buf.len() as u64;
        self.stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.next_seq = seq;
        Ok((ranges, offsets))
    }

    fn write_and_sync(&self, buf: &[u8]) -> std::io::Result<()> {
        // Set by a successful roll, which a group without a segment does first.
        let Some(file) = &self.file else {
            return Err(std::io::Error::other("no active segment"));
        };
        #[cfg(test)]
        if self.stats.fail_next_write.swap(false, Ordering::Relaxed) {
            // Half the bytes land, then the error (as a full disk does it).
            file.write_all_at(&buf[..buf.len() / 2], self.committed_len)?;
            return Err(std::io::Error::other("injected write failure"));
        }
        file.write_all_at(buf, self.committed_len)
            .and_then(|()| file.sync_data())
    }

    /// Seals the active segment and starts the next one at `next_seq`.
    fn roll(&mut self) -> Result<(), WalError> {
        if self.committed_len == SEGMENT_HEADER_LEN as u64 {
            if !self.must_roll {
                return Ok(());
            }
            // No record in it: the new segment takes its name.
            let path = segment_path(&self.seg_dir, self.base_seq);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(WalError::io("removing empty segment", &path)(e));
                }
                Ok(()) => {
                    self.stats
                        .bytes
                        .fetch_sub(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        self.file = Some(create_segment(&self.seg_dir, self.next_seq)?);
        self.stats
            .bytes
            .fetch_add(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
        self.base_seq = self.next_seq;
        self.committed_len = SEGMENT_HEADER_LEN as u64;
        self.must_roll = false;
        Ok(())
    }
}
