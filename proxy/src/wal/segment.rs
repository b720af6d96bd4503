//! Segment files: their names, listing them, and reading records out of one
//! with the checks every reader (and the tail recovery at open) shares.
use super::format::{RecordHeader, RECORD_HEADER_LEN, RECORD_MARKER, SEGMENT_HEADER_LEN};
use super::WalError;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How much a resync scan reads at a time.
const SCAN_WINDOW: usize = 64 << 10;

/// `<seg dir>/<20-digit base seq>.wal`: names sort in log order.
pub fn segment_path(seg_dir: &Path, base_seq: u64) -> PathBuf {
    seg_dir.join(format!("{base_seq:020}.wal"))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The base seqs of the segments in `seg_dir`, in order. Other names are
/// ignored (never deleted).
pub fn list(seg_dir: &Path) -> Result<Vec<u64>, WalError> {
    let entries = std::fs::read_dir(seg_dir).map_err(WalError::io("listing", seg_dir))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(WalError::io("listing", seg_dir))?;
        match entry.file_name().to_str().and_then(parse_name) {
            Some(base) => bases.push(base),
            None => {
                tracing::warn!(file = ?entry.path(), "wal: ignoring a file that is not a segment")
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Bytes of every segment file in `seg_dir`.
pub fn total_bytes(seg_dir: &Path) -> Result<u64, WalError> {
    let mut total = 0;
    for base in list(seg_dir)? {
        let path = segment_path(seg_dir, base);
        total += std::fs::metadata(&path)
            .map_err(WalError::io("reading the size of", &path))?
            .len();
    }
    Ok(total)
}

/// Makes a directory's entries (created, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(WalError::io("syncing directory", dir))
}

/// A record read whole and checked.
#[derive(Debug)]
pub struct Found {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

/// What is at an offset of a segment.
#[derive(Debug)]
pub enum At {
    Record(Found),
    /// Nothing more: the offset is the readable end.
    End,
    /// Not a whole valid record (bad marker, header checksum, length, payload
    /// checksum, or bytes running past the readable end: torn).
    Damaged,
}

/// One segment file opened for reading up to `limit` bytes.
pub struct SegmentFile {
    pub base_seq: u64,
    file: File,
    pub limit: u64,
    max_payload: u32,
}

impl SegmentFile {
    pub fn open(
        path: &Path,
        base_seq: u64,
        limit: Option<u64>,
        max_payload: u32,
    ) -> std::io::Result<SegmentFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let limit = limit.map_or(len, |l| l.min(len));
        Ok(SegmentFile {
            base_seq,
            file,
            limit,
            max_payload,
        })
    }

    /// Up to `len` bytes at `off`, never past the limit.
    fn read(&self, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let len = len.min(self.limit.saturating_sub(off) as usize);
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// The record at `off`, checked.
    pub fn record_at(&self, off: u64) -> std::io::Result<At> {
        if off >= self.limit {
            return Ok(At::End);
        }
        let head = self.read(off, RECORD_HEADER_LEN)?;
        let Ok(header) = RecordHeader::decode(&head, self.max_payload) else {
            return Ok(At::Damaged);
        };
        if off + header.record_len() > self.limit {
            return Ok(At::Damaged);
        }
        let payload = self.read(off + RECORD_HEADER_LEN as u64, header.payload_len as usize)?;
        if !header.payload_ok(&payload) {
            return Ok(At::Damaged);
        }
        Ok(At::Record(Found { header, payload }))
    }

    /// The header of the record at `off` when it was written whole (its
    /// header checks out and all its bytes are there) even though the record
    /// is damaged: its payload changed after the write. `None` for a record cut
    /// short, which a crash mid-write leaves and which was never acknowledged.
    pub fn whole_damaged_header(&self, off: u64) -> std::io::Result<Option<RecordHeader>> {
        if off >= self.limit {
            return Ok(None);
        }
        let head = self.read(off, RECORD_HEADER_LEN)?;
        Ok(RecordHeader::decode(&head, self.max_payload)
            .ok()
            .filter(|h| off + h.record_len() <= self.limit))
    }

    /// The offset of the first whole valid record at or after `from` whose
    /// first seq is at least `min_seq`, scanning for the record marker.
    pub fn resync(&self, from: u64, min_seq: u64) -> std::io::Result<Option<u64>> {
        let mut start = from.max(SEGMENT_HEADER_LEN as u64);
        while start < self.limit {
            let window = self.read(start, SCAN_WINDOW)?;
            for hit in memchr::memmem::find_iter(&window, RECORD_MARKER) {
                let off = start + hit as u64;
                if let At::Record(found) = self.record_at(off)? {
                    if found.header.first_seq >= min_seq {
                        return Ok(Some(off));
                    }
                }
            }
            if window.len() < SCAN_WINDOW {
                break;
            }
            // Overlap so a marker split between two windows is still seen.
            start += (SCAN_WINDOW - RECORD_MARKER.len() + 1) as u64;
        }
        Ok(None)
    }
}

/// What the open found in the last segment of the previous run.
#[derive(Debug, PartialEq, Eq)]
pub struct Tail {
    /// The seq after the last valid record (the base when there is none).
    pub end_seq: u64,
    pub records: u64,
    /// Bytes cut off the end: a torn or damaged tail no valid record follows.
    pub truncated: u64,
}

/// Scans the last segment: finds the end of its last valid record and cuts
/// off what follows when no valid record comes after the damage. Damage
/// with valid records after it is kept for the readers to skip and count.
pub fn recover_tail(path: &Path, base_seq: u64, max_payload: u32) -> Result<Tail, WalError> {
    let err = WalError::io("recovering", path);
    let seg = SegmentFile::open(path, base_seq, None, max_payload).map_err(&err)?;
    let mut off = SEGMENT_HEADER_LEN as u64;
    let mut tail = Tail {
        end_seq: base_seq,
        records: 0,
        truncated: 0,
    };
    loop {
        match seg.record_at(off).map_err(&err)? {
            At::Record(found) => {
                tail.end_seq = tail.end_seq.max(found.header.end_seq());
                tail.records += 1;
                off += found.header.record_len();
            }
            At::End => break,
            At::Damaged => match seg.resync(off + 1, 0).map_err(&err)? {
                Some(next) => off = next,
                None => {
                    // A record written whole may have been acknowledged: its seqs
                    // stay used, so the next segment starts after them and every
                    // reader counts its events lost (the seq gap).
                    if let Some(h) = seg.whole_damaged_header(off).map_err(&err)? {
                        tail.end_seq = tail.end_seq.max(h.end_seq());
                    }
                    let keep = off.max(SEGMENT_HEADER_LEN as u64).min(seg.limit);
                    tail.truncated = seg.limit - keep;
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(&err)?;
                    file.set_len(keep)
                        .and_then(|()| file.sync_all())
                        .map_err(&err)?;
                    break;
                }
            },
        }
    }
    Ok(tail)
}
