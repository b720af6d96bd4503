//! The records written last, kept in memory for the readers that follow the
//! writer closely (the usual case: a tenant's feeds read each record right
//! after its sync). A hit costs no read, no copy and no checksum, and the
//! feeds of one tenant share one copy of it; a reader further behind reads
//! the segment file as before. Bounded in bytes: the oldest go first.
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Bytes of payloads kept: about one group commit of 64 requests of 125 KB.
/// More kept more records in memory for longer (peak RSS) for few more hits.
pub const RECENT_BYTES: usize = 8 << 20;

/// One record as written.
#[derive(Clone)]
pub struct Cached {
    pub segment_base: u64,
    /// Where the record starts in its segment file.
    pub offset: u64,
    /// Its length in the file, header included (where the next one starts).
    pub record_len: u64,
    pub first_seq: u64,
    pub events: u32,
    pub flags: u16,
    pub payload: Bytes,
}

#[derive(Default)]
pub struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    records: VecDeque<Cached>,
    bytes: usize,
}

impl Recent {
    /// Adds a synced group's records, in log order.
    pub fn push(&self, records: impl IntoIterator<Item = Cached>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for r in records {
            inner.bytes += r.payload.len();
            inner.records.push_back(r);
        }
        while inner.bytes > RECENT_BYTES {
            match inner.records.pop_front() {
                Some(old) => inner.bytes -= old.payload.len(),
                None => break,
            }
        }
    }

    /// The record starting at `offset` of segment `segment_base`, if kept.
    pub fn get(&self, segment_base: u64, offset: u64) -> Option<Cached> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (segment_base, offset);
        let at = inner
            .records
            .binary_search_by_key(&key, |r| (r.segment_base, r.offset))
            .ok()?;
        Some(inner.records[at].clone())
    }

    /// Forgets everything (a failed write leaves what follows it uncertain).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.records.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(segment_base: u64, offset: u64, len: usize) -> Cached {
        Cached {
            segment_base,
            offset,
            record_len: len as u64 + 32,
            first_seq: offset,
            events: 1,
            flags: 0,
            payload: Bytes::from(vec![7u8; len]),
        }
    }

    #[test]
    fn finds_what_it_holds_and_drops_the_oldest_past_its_bound() {
        let r = Recent::default();
        r.push([rec(1, 16, 10), rec(1, 58, 10)]);
        r.push([rec(9, 16, RECENT_BYTES - 15)]);
        assert!(r.get(1, 16).is_none(), "the oldest went first");
        assert_eq!(r.get(1, 58).unwrap().payload.len(), 10);
        assert_eq!(r.get(9, 16).unwrap().first_seq, 16);
        assert!(r.get(9, 17).is_none());
        r.clear();
        assert!(r.get(9, 16).is_none());
    }
}
