//! A reader: reads records in log order from its own position up to the
//! durable end, across segments, skipping and counting damage, and keeps
//! its acknowledged position in its position file.
use super::format::SEGMENT_HEADER_LEN;
use super::position::{Position, PositionFile};
use super::segment::{self, segment_path, At, SegmentFile};
use super::{Durable, Shared, WalError};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// One record as read: its events are seqs `first_seq .. first_seq + events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub first_seq: u64,
    pub events: u32,
    pub flags: u16,
    pub payload: bytes::Bytes,
    /// Events lost (damaged, torn or missing records) just before this one.
    pub lost_before: u64,
}

impl Record {
    /// The seq after the record's last event: what [`Reader::ack`] takes.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.events)
    }
}

/// What a reader skipped, since it was opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReaderStats {
    /// Events lost: the sum of the seq gaps the reader jumped.
    pub lost_events: u64,
    /// Places where bytes were not a whole valid record (damage or a torn end).
    pub damaged: u64,
    pub skipped_bytes: u64,
    /// Valid records below the expected seq (already read), skipped.
    pub stale_records: u64,
    /// Segments a position pointed into that no longer exist.
    pub missing_segments: u64,
}

enum Opened {
    Ready,
    /// The segment was missing; the position moved to the next one.
    Moved,
    /// The segment was missing and none follows.
    Stuck,
}

/// One named reader of the log (from [`Wal::reader`](super::Wal::reader)):
/// [`read`](Self::read) returns records in log order, [`ack`](Self::ack)
/// persists how far it has delivered. One per name at a time.
pub struct Reader {
    name: String,
    shared: Arc<Shared>,
    durable: watch::Receiver<Durable>,
    /// The next record to read.
    pos: Position,
    seg: Option<SegmentFile>,
    sealed: bool,
    /// Positions after records read but not yet acknowledged: (end seq, position).
    pending: VecDeque<(u64, Position)>,
    acked: Position,
    file: PositionFile,
    lost_pending: u64,
    stats: ReaderStats,
    /// Records taken from memory, just written, without a read.
    from_memory: u64,
}

impl Reader {
    pub(super) fn new(
        name: String,
        shared: Arc<Shared>,
        durable: watch::Receiver<Durable>,
        file: PositionFile,
        pos: Position,
    ) -> Reader {
        Reader {
            name,
            shared,
            durable,
            pos,
            seg: None,
            sealed: false,
            pending: VecDeque::new(),
            acked: pos,
            file,
            lost_pending: 0,
            stats: ReaderStats::default(),
            from_memory: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Records read from memory (just written) rather than from the file.
    pub fn from_memory(&self) -> u64 {
        self.from_memory
    }

    /// The persisted position: where a reopened reader starts.
    pub fn acked(&self) -> Position {
        self.acked
    }

    /// Waits until the durable end moves (after [`read`](Self::read) gave `None`).
    pub async fn changed(&mut self) -> Result<(), WalError> {
        self.durable.changed().await.map_err(|_| WalError::Closed)
    }

    /// The next record, or `None` when the reader is at the durable end.
    /// Damage is skipped: every step moves forward by at least one byte or
    /// to the next segment, so this always returns.
    pub fn read(&mut self) -> Result<Option<Record>, WalError> {
        loop {
            let durable = *self.durable.borrow_and_update();
            if self.pos.segment_base > durable.segment_base {
                return Ok(None);
            }
            match self.open_segment(&durable)? {
                Opened::Ready => {}
                Opened::Moved => continue,
                Opened::Stuck => return Ok(None),
            }
            let seg = self.seg.as_ref().expect("opened");
            // Just written: taken from memory, without a read.
            let cached = (self.pos.offset < seg.limit)
                .then(|| self.shared.recent.get(seg.base_seq, self.pos.offset))
                .flatten();
            if let Some(c) = cached {
                self.from_memory += 1;
                if let Some(r) = self.found(c.first_seq, c.events, c.flags, c.record_len, c.payload)
                {
                    return Ok(Some(r));
                }
                continue;
            }
            let err = WalError::io("reading", segment_path(&self.shared.seg_dir, seg.base_seq));
            match seg.record_at(self.pos.offset).map_err(&err)? {
                At::Record(found) => {
                    let h = found.header;
                    let payload = bytes::Bytes::from(found.payload);
                    if let Some(r) =
                        self.found(h.first_seq, h.events, h.flags, h.record_len(), payload)
                    {
                        return Ok(Some(r));
                    }
                }
                At::End if self.sealed => {
                    if !self.next_segment()? {
                        return Ok(None);
                    }
                }
                At::End => return Ok(None),
                At::Damaged => {
                    self.stats.damaged += 1;
                    let limit = seg.limit;
                    let from = self.pos.offset;
                    match seg.resync(from + 1, self.pos.next_seq).map_err(&err)? {
                        Some(at) => self.pos.offset = at,
                        // Nothing valid after it: the end (a sealed segment then moves on).
                        None => self.pos.offset = limit.max(from + 1),
                    }
                    self.stats.skipped_bytes += self.pos.offset - from;
                }
            }
        }
    }

    /// Moves past a record found at the position: the record, or none when it
    /// was read before (stale, below the position's seq).
    fn found(
        &mut self,
        first_seq: u64,
        events: u32,
        flags: u16,
        record_len: u64,
        payload: bytes::Bytes,
    ) -> Option<Record> {
        self.pos.offset += record_len;
        let end_seq = first_seq + u64::from(events);
        if first_seq < self.pos.next_seq {
            self.stats.stale_records += 1;
            return None;
        }
        let gap = first_seq - self.pos.next_seq;
        self.stats.lost_events += gap;
        self.pos.next_seq = end_seq;
        self.pending.push_back((end_seq, self.pos));
        let lost_before = std::mem::take(&mut self.lost_pending) + gap;
        Some(Record {
            first_seq,
            events,
            flags,
            payload,
            lost_before,
        })
    }

    /// Opens (or refreshes the readable end of) the segment the position is
    /// in. When its file is missing the position moves to the next segment,
    /// counting the events in between as lost.
    fn open_segment(&mut self, durable: &Durable) -> Result<Opened, WalError> {
        let sealed = self.pos.segment_base < durable.segment_base;
        if let Some(seg) = &mut self.seg {
            if seg.base_seq == self.pos.segment_base && self.sealed == sealed {
                if !sealed {
                    seg.limit = durable.end_offset;
                }
                return Ok(Opened::Ready);
            }
        }
        let path = segment_path(&self.shared.seg_dir, self.pos.segment_base);
        let limit = (!sealed).then_some(durable.end_offset);
        match SegmentFile::open(
            &path,
            self.pos.segment_base,
            limit,
            self.shared.max_record_bytes,
        ) {
            Ok(seg) => {
                self.seg = Some(seg);
                self.sealed = sealed;
                self.pos.offset = self.pos.offset.max(SEGMENT_HEADER_LEN as u64);
                Ok(Opened::Ready)
            }
            // The active segment not created yet (a full disk at open): nothing is missing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sealed => Ok(Opened::Stuck),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.stats.missing_segments += 1;
                self.seg = None;
                Ok(match self.next_segment()? {
                    true => Opened::Moved,
                    false => Opened::Stuck,
                })
            }
            Err(e) => Err(WalError::io("opening", &path)(e)),
        }
    }

    /// Moves to the first segment after the current one; the seqs between
    /// the expected one and its base are lost. `false`: there is none.
    fn next_segment(&mut self) -> Result<bool, WalError> {
        let bases = segment::list(&self.shared.seg_dir)?;
        let Some(&base) = bases.iter().find(|&&b| b > self.pos.segment_base) else {
            return Ok(false);
        };
        let gap = base.saturating_sub(self.pos.next_seq);
        self.stats.lost_events += gap;
        self.lost_pending += gap;
        self.pos = Position {
            segment_base: base,
            offset: SEGMENT_HEADER_LEN as u64,
            next_seq: self.pos.next_seq.max(base),
        };
        self.pending.push_back((self.pos.next_seq, self.pos));
        Ok(true)
    }

    /// Acknowledges every event below `end` (a record's [`end_seq`](Record::end_seq)):
    /// the position after the last such record is persisted (synced), and
    /// the log may delete segments every reader has passed.
    pub fn ack(&mut self, end: u64) -> Result<(), WalError> {
        let mut newest = None;
        while let Some(&(e, p)) = self.pending.front() {
            if e > end {
                break;
            }
            newest = Some(p);
            self.pending.pop_front();
        }
        let Some(p) = newest else {
            return Ok(());
        };
        self.file.store(&p)?;
        self.acked = p;
        self.shared.persisted(&self.name, p);
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.close_reader(&self.name);
    }
}
