//! The write-ahead log: what intake has acknowledged lives here on disk until
//! every reader (the archive writer, the tenant's route) has acknowledged it.
//! This module owns one log directory: its segment files, the writer thread
//! (group commit), the readers and their positions, the deletion of segments
//! every reader has passed, and the lock that keeps a second process out.
//! The disk buffer (buffer/) opens one per tenant and owns what is policy: admission,
//! size limits, ack modes, metrics and `/readyz`.
//!
//! # On disk
//! ```text
//! <dir>/LOCK                        flock(LOCK_EX | LOCK_NB): one process per log
//! <dir>/seg/<20-digit base>.wal     segments, named by the seq of their first event
//! <dir>/readers/<name>.pos          one position file per reader (see `position`)
//! ```
//! A segment is a 32-byte header then records, each a 32-byte header (marker
//! `WREC`, header CRC32C, payload length and CRC32C, first seq, events, flags)
//! and its payload; the layouts are in `format`. Seqs count events: a
//! record's first seq is the previous record's plus its events, so a gap a
//! reader jumps is an exact count of lost events.
//!
//! # Rules
//! - Every open starts a new segment (on a full disk the first write
//!   creates it; until then readers drain the rest); the previous last segment's torn tail
//!   is cut off when no valid record follows it (otherwise readers skip it).
//!   A record cut short (a crash mid-write, never acknowledged) is simply
//!   gone; one written whole and damaged since keeps its seqs, so every
//!   reader counts its events lost.
//! - The writer publishes the durable end (a watch) after each group's
//!   `sync_data`; readers never read past it.
//! - Segments roll at [`WalOptions::segment_bytes`]; a new segment and its
//!   directory are synced before any record goes into it.
//! - A sealed segment is deleted once every registered reader's persisted
//!   position is in a later segment: positions are synced first, then the
//!   file is unlinked, then the directory synced.
//!
//! Syncs: once per group (group commit), or once per interval
//! ([`SyncPolicy`]).
pub mod format;
pub mod position;
pub mod progress;
pub mod reader;
pub mod segment;
pub mod writer;

#[cfg(test)]
mod tests;

pub use position::Position;
pub use progress::{release_all, Progress};
pub use reader::{Reader, ReaderStats, Record};
pub use writer::WriterStats;
mod recent;

use crossbeam_channel::{Sender, TrySendError};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};
use writer::{Append, Writer};

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("wal: {context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("wal: {0} is locked by another process")]
    Locked(PathBuf),
    #[error("wal: a record of {size} bytes is over the limit of {max}")]
    TooLarge { size: usize, max: u32 },
    #[error("wal: the write failed; nothing of the group was committed: {0}")]
    Write(Arc<std::io::Error>),
    #[error("wal: the writer's queue is full")]
    Full,
    #[error("wal: the log is closed")]
    Closed,
    #[error("wal: reader {0:?} is already open")]
    ReaderOpen(String),
    #[error("wal: {0:?} is not a reader name (letters, digits, '-' and '_')")]
    ReaderName(String),
}

impl WalError {
    /// Wraps an I/O error with what was being done, and to which file.
    pub fn io(
        context: &'static str,
        path: impl AsRef<Path>,
    ) -> impl Fn(std::io::Error) -> WalError {
        let path = path.as_ref().to_path_buf();
        move |e| WalError::Io {
            context,
            path: path.clone(),
            source: Arc::new(e),
        }
    }
}

/// The events `first .. end` of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub end: u64,
}

/// How far the log is written and synced: readers never read past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The active segment.
    pub segment_base: u64,
    /// Its synced length.
    pub end_offset: u64,
    pub next_seq: u64,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is sealed and a new one started once it is this long (it
    /// may exceed it by one group).
    pub segment_bytes: u64,
    pub max_record_bytes: u32,
    /// A group stops growing at this many payload bytes or appends.
    pub max_group_bytes: usize,
    pub max_group_appends: usize,
    /// Appends waiting for the writer before [`WalError::Full`].
    pub queue: usize,
    /// When the writer syncs.
    pub sync: SyncPolicy,
}

/// When appends become durable (and are answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// One sync per group: appends that arrive while a sync runs form the
    /// next group (group commit; the lowest latency).
    EveryGroup,
    /// A group gathers appends for this long, then one sync: at most one
    /// sync per interval, an answer within about the interval.
    Interval(std::time::Duration),
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 32 << 20,
            max_record_bytes: format::MAX_RECORD_BYTES,
            max_group_bytes: 4 << 20,
            max_group_appends: 1024,
            queue: 4096,
            sync: SyncPolicy::EveryGroup,
        }
    }
}

/// What the log and its readers share.
pub(crate) struct Shared {
    seg_dir: PathBuf,
    readers_dir: PathBuf,
    max_record_bytes: u32,
    /// Every registered reader's persisted position (open or not).
    positions: Mutex<HashMap<String, Position>>,
    open_readers: Mutex<HashSet<String>>,
    /// The records written last, for readers close behind the writer.
    recent: Arc<recent::Recent>,
    /// Held (flocked) while anything of the log is alive.
    _lock: File,
}

impl Shared {
    fn persisted(&self, name: &str, p: Position) {
        let mut positions = self.positions.lock().expect("positions lock");
        positions.insert(name.to_string(), p);
    }

    fn close_reader(&self, name: &str) {
        self.open_readers.lock().expect("readers lock").remove(name);
    }
}

/// One open log: appends go to its writer thread.
pub struct Wal {
    shared: Arc<Shared>,
    inbox: Option<Sender<Append>>,
    thread: Option<std::thread::JoinHandle<()>>,
    durable: watch::Receiver<Durable>,
    stats: Arc<WriterStats>,
    deleting: Mutex<()>,
    /// Why the open could not start a new segment (a full disk): the log
    /// is open, its readers drain it, and writes fail until one can.
    start_error: Option<WalError>,
}

impl Wal {
    /// Opens (creating) the log in `dir`: takes the lock, recovers the last
    /// segment's tail, loads the reader positions, starts a new segment and
    /// the writer thread, and deletes segments every reader has passed.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        let seg_dir = dir.join("seg");
        let readers_dir = dir.join("readers");
        for d in [dir, &seg_dir, &readers_dir] {
            std::fs::create_dir_all(d).map_err(WalError::io("creating", d))?;
        }
        let lock = take_lock(dir)?;
        let next_seq = recover(&seg_dir, options.max_record_bytes)?;
        let positions = load_positions(&readers_dir)?;
        let stats = Arc::new(WriterStats::default());
        let recent = Arc::new(recent::Recent::default());
        let (writer, durable, start_error) = Writer::start(
            &seg_dir,
            next_seq,
            options.clone(),
            stats.clone(),
            recent.clone(),
        );
        stats.bytes.store(
            segment::total_bytes(&seg_dir)?,
            std::sync::atomic::Ordering::Relaxed,
        );
        let (tx, rx) = crossbeam_channel::bounded(options.queue);
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(WalError::io("starting the writer for", dir))?;
        let wal = Wal {
            shared: Arc::new(Shared {
                seg_dir,
                readers_dir,
                max_record_bytes: options.max_record_bytes,
                positions: Mutex::new(positions),
                open_readers: Mutex::default(),
                recent,
                _lock: lock,
            }),
            inbox: Some(tx),
            thread: Some(thread),
            durable,
            stats,
            deleting: Mutex::new(()),
            start_error,
        };
        wal.delete_passed()?;
        Ok(wal)
    }

    /// Why the open could not start its new segment, if it could not.
    pub fn start_error(&self) -> Option<&WalError> {
        self.start_error.as_ref()
    }

    /// Queues one record; the receiver answers with its seq range once it
    /// is synced, or with the error that failed its group.
    pub fn submit(
        &self,
        payload: Vec<u8>,
        events: u32,
        flags: u16,
    ) -> Result<oneshot::Receiver<Result<SeqRange, WalError>>, WalError> {
        if payload.len() > self.shared.max_record_bytes as usize {
            return Err(WalError::TooLarge {
                size: payload.len(),
                max: self.shared.max_record_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        let append = Append {
            payload,
            events,
            flags,
            reply,
        };
        let inbox = self.inbox.as_ref().ok_or(WalError::Closed)?;
        let len = append.payload.len() as u64;
        self.stats
            .queued
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        inbox.try_send(append).map_err(|e| {
            self.stats
                .queued
                .fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => WalError::Full,
                TrySendError::Disconnected(_) => WalError::Closed,
            }
        })?;
        Ok(rx)
    }

    /// Appends one record and waits until it is durable.
    pub async fn append(
        &self,
        payload: Vec<u8>,
        events: u32,
        flags: u16,
    ) -> Result<SeqRange, WalError> {
        self.submit(payload, events, flags)?
            .await
            .map_err(|_| WalError::Closed)?
    }

    /// The durable end, as the writer publishes it.
    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// Bytes of the log's segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes on disk and on their way there (submitted, not yet written):
    /// what the log's size limits count.
    pub fn bytes_with_queued(&self) -> u64 {
        self.bytes() + self.stats.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Opens reader `name` at its persisted position; a reader without a
    /// valid position file starts at the oldest segment (duplicates, never
    /// loss) and is registered: from then on it holds segments back.
    pub fn reader(&self, name: &str) -> Result<Reader, WalError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(WalError::ReaderName(name.to_string()));
        }
        if !self
            .shared
            .open_readers
            .lock()
            .expect("readers lock")
            .insert(name.to_string())
        {
            return Err(WalError::ReaderOpen(name.to_string()));
        }
        let opened = self.open_position(name);
        if opened.is_err() {
            self.shared.close_reader(name);
        }
        let (file, pos) = opened?;
        self.shared.persisted(name, pos);
        Ok(Reader::new(
            name.to_string(),
            self.shared.clone(),
            self.durable.clone(),
            file,
            pos,
        ))
    }

    fn open_position(&self, name: &str) -> Result<(position::PositionFile, Position), WalError> {
        let oldest = segment::list(&self.shared.seg_dir)?
            .first()
            .copied()
            .unwrap_or(self.durable.borrow().segment_base);
        let initial = Position {
            segment_base: oldest,
            offset: format::SEGMENT_HEADER_LEN as u64,
            next_seq: oldest,
        };
        let path = position::PositionFile::path(&self.shared.readers_dir, name);
        position::PositionFile::open(&path, initial)
    }

    /// Forgets reader `name` (a destination that is gone): it no longer
    /// holds segments back.
    pub fn remove_reader(&self, name: &str) -> Result<(), WalError> {
        if self
            .shared
            .open_readers
            .lock()
            .expect("readers lock")
            .contains(name)
        {
            return Err(WalError::ReaderOpen(name.to_string()));
        }
        let path = position::PositionFile::path(&self.shared.readers_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => segment::sync_dir(&self.shared.readers_dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalError::io("removing", &path)(e)),
        }
        self.shared
            .positions
            .lock()
            .expect("positions lock")
            .remove(name);
        Ok(())
    }

    /// Deletes the sealed segments every registered reader's persisted
    /// position has passed (none while no reader is registered), then
    /// syncs the directory. Returns the deleted segments' bases.
    pub fn delete_passed(&self) -> Result<Vec<u64>, WalError> {
        let min = {
            let positions = self.shared.positions.lock().expect("positions lock");
            match positions.values().map(|p| p.segment_base).min() {
                Some(min) => min,
                None => return Ok(Vec::new()),
            }
        };
        let active = self.durable.borrow().segment_base;
        // Readers on several threads call this: one deletes at a time.
        let _one = self.deleting.lock().expect("deleting lock");
        let mut deleted = Vec::new();
        for base in segment::list(&self.shared.seg_dir)? {
            if base >= min || base >= active {
                break;
            }
            let path = segment::segment_path(&self.shared.seg_dir, base);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            std::fs::remove_file(&path).map_err(WalError::io("deleting", &path))?;
            self.stats
                .bytes
                .fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
            deleted.push(base);
        }
        if !deleted.is_empty() {
            segment::sync_dir(&self.shared.seg_dir)?;
        }
        Ok(deleted)
    }

    /// Stops taking appends, lets the writer commit what is queued, and
    /// waits for it.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.inbox = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

fn take_lock(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(WalError::io("opening", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(WalError::io("locking", &path)(e)),
    }
}

/// Recovers the last segment and returns the seq the new segment starts at.
/// A last segment without a valid record is removed (the new one may take
/// its name).
fn recover(seg_dir: &Path, max_record_bytes: u32) -> Result<u64, WalError> {
    let Some(&last) = segment::list(seg_dir)?.last() else {
        return Ok(1);
    };
    let path = segment::segment_path(seg_dir, last);
    let tail = segment::recover_tail(&path, last, max_record_bytes)?;
    if tail.truncated > 0 {
        tracing::warn!(segment = ?path, bytes = tail.truncated, "wal: cut off a torn tail");
    }
    if tail.records == 0 {
        std::fs::remove_file(&path).map_err(WalError::io("removing empty", &path))?;
        segment::sync_dir(seg_dir)?;
    }
    Ok(tail.end_seq.max(last))
}

/// The persisted position of every reader with a file in `readers_dir`; an
/// unreadable one holds every segment (its reader restarts at the oldest).
fn load_positions(readers_dir: &Path) -> Result<HashMap<String, Position>, WalError> {
    let mut positions = HashMap::new();
    let entries = std::fs::read_dir(readers_dir).map_err(WalError::io("listing", readers_dir))?;
    for entry in entries {
        let entry = entry.map_err(WalError::io("listing", readers_dir))?;
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pos"))
        else {
            continue;
        };
        let p = position::PositionFile::load(&path)?.unwrap_or(Position {
            segment_base: 0,
            offset: 0,
            next_seq: 0,
        });
        positions.insert(name.to_string(), p);
    }
    Ok(positions)
}
