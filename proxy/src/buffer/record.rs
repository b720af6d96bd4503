//! What one accepted request leaves in the log: the NDJSON lines the stages
//! kept (every one goes to the archive), which of them are indexed (they go
//! to the route), and when the request arrived (the archive's partition).
//! Written after the stages, so a replayed record is never charged, ruled
//! or run through a plugin again.
//!
//! ```text
//! u8 version (1) | i64 received_at_ms | u32 lines length | lines | u32 ranges | ranges × (u32 start, u32 end)
//! ```
//! All little-endian; ranges index into `lines`. The lines come first so the
//! stages' output is serialized straight into the record, never copied.
use bytes::Bytes;
use std::ops::Range;

const VERSION: u8 = 1;
/// Where the lines start.
const LINES_AT: usize = 1 + 8 + 4;

pub struct Entry {
    pub lines: Bytes,
    pub indexed: Vec<Range<u32>>,
    pub received_at_ms: i64,
}

/// A record's head, with room for `lines` bytes of lines: write them after it, then [`finish`].
pub fn begin(received_at_ms: i64, lines: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(LINES_AT + lines + 64);
    out.push(VERSION);
    out.extend_from_slice(&received_at_ms.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// Completes a record [`begin`] started, whose lines are what follows the head.
pub fn finish(record: &mut Vec<u8>, indexed: &[Range<u32>]) {
    let lines = (record.len() - LINES_AT) as u32;
    record[9..LINES_AT].copy_from_slice(&lines.to_le_bytes());
    record.reserve(4 + indexed.len() * 8);
    record.extend_from_slice(&(indexed.len() as u32).to_le_bytes());
    for r in indexed {
        record.extend_from_slice(&r.start.to_le_bytes());
        record.extend_from_slice(&r.end.to_le_bytes());
    }
}

/// Why a record's payload (whose checksum held) is not a Weir record.
#[derive(Debug, thiserror::Error)]
#[error("a log record of an unknown layout ({0})")]
pub struct Malformed(&'static str);

pub fn decode(payload: Bytes) -> Result<Entry, Malformed> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            payload.get(at..at + 4)?.try_into().unwrap(),
        ))
    };
    if payload.len() < LINES_AT {
        return Err(Malformed("too short"));
    }
    if payload[0] != VERSION {
        return Err(Malformed("version"));
    }
    let received_at_ms = i64::from_le_bytes(payload[1..9].try_into().unwrap());
    let lines_len = u32_at(9).unwrap();
    let lines_end = LINES_AT + lines_len as usize;
    let n = u32_at(lines_end).ok_or(Malformed("lines"))? as usize;
    let ranges_at = lines_end + 4;
    if n.checked_mul(8).and_then(|b| b.checked_add(ranges_at)) != Some(payload.len()) {
        return Err(Malformed("ranges"));
    }
    let mut indexed = Vec::with_capacity(n);
    for i in 0..n {
        let at = ranges_at + i * 8;
        let (start, end) = (u32_at(at).unwrap(), u32_at(at + 4).unwrap());
        if start > end || end > lines_len {
            return Err(Malformed("a range outside the lines"));
        }
        indexed.push(start..end);
    }
    let lines = payload.slice(LINES_AT..lines_end);
    Ok(Entry {
        lines,
        indexed,
        received_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(lines: &[u8], indexed: &[Range<u32>], at: i64) -> Vec<u8> {
        let mut r = begin(at, lines.len());
        r.extend_from_slice(lines);
        finish(&mut r, indexed);
        r
    }

    #[test]
    fn round_trips_and_refuses_ranges_outside_the_lines() {
        let lines = b"{\"a\":1}\n{\"b\":2}\n";
        let e = decode(encode(lines, &[0..7, 8..15], 42).into()).unwrap();
        assert_eq!(&e.lines[..], lines);
        assert_eq!(e.indexed, vec![0..7, 8..15]);
        assert_eq!(e.received_at_ms, 42);
        assert!(decode(encode(lines, &[0..7, 8..99], 42).into()).is_err());
        assert!(decode(vec![1, 2].into()).is_err());
        let mut bad = encode(lines, &[], 1);
        bad[9] = 0xff;
        assert!(decode(bad.into()).is_err());
    }
}
