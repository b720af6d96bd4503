//! What one accepted request leaves in the log: the NDJSON lines the stages
//! kept (every one goes to the archive), which of them are indexed (they go
//! to the route), and when the request arrived (the archive's partition).
//! Written after the stages, so a replayed record is never charged, ruled
//! or run through a plugin again.
//!
//! ```text
//! u8 version (1) | i64 received_at_ms | u32 ranges | ranges × (u32 start, u32 end) | lines
//! ```
//! All little-endian; ranges index into `lines`.
use bytes::Bytes;
use std::ops::Range;

const VERSION: u8 = 1;
const FIXED: usize = 1 + 8 + 4;

pub struct Entry {
    pub lines: Bytes,
    pub indexed: Vec<Range<u32>>,
    pub received_at_ms: i64,
}

pub fn encode(lines: &[u8], indexed: &[Range<u32>], received_at_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + indexed.len() * 8 + lines.len());
    out.push(VERSION);
    out.extend_from_slice(&received_at_ms.to_le_bytes());
    out.extend_from_slice(&(indexed.len() as u32).to_le_bytes());
    for r in indexed {
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.end.to_le_bytes());
    }
    out.extend_from_slice(lines);
    out
}

/// Why a record's payload (whose checksum held) is not a Weir record.
#[derive(Debug, thiserror::Error)]
#[error("a log record of an unknown layout ({0})")]
pub struct Malformed(&'static str);

pub fn decode(payload: Vec<u8>) -> Result<Entry, Malformed> {
    if payload.len() < FIXED {
        return Err(Malformed("too short"));
    }
    if payload[0] != VERSION {
        return Err(Malformed("version"));
    }
    let received_at_ms = i64::from_le_bytes(payload[1..9].try_into().unwrap());
    let n = u32::from_le_bytes(payload[9..13].try_into().unwrap()) as usize;
    let lines_at = n
        .checked_mul(8)
        .and_then(|b| b.checked_add(FIXED))
        .filter(|&at| at <= payload.len())
        .ok_or(Malformed("ranges"))?;
    let lines_len = (payload.len() - lines_at) as u32;
    let mut indexed = Vec::with_capacity(n);
    for i in 0..n {
        let at = FIXED + i * 8;
        let start = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
        let end = u32::from_le_bytes(payload[at + 4..at + 8].try_into().unwrap());
        if start > end || end > lines_len {
            return Err(Malformed("a range outside the lines"));
        }
        indexed.push(start..end);
    }
    let lines = Bytes::from(payload).slice(lines_at..);
    Ok(Entry {
        lines,
        indexed,
        received_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_ranges_outside_the_lines() {
        let lines = b"{\"a\":1}\n{\"b\":2}\n";
        let e = decode(encode(lines, &[0..7, 8..15], 42)).unwrap();
        assert_eq!(&e.lines[..], lines);
        assert_eq!(e.indexed, vec![0..7, 8..15]);
        assert_eq!(e.received_at_ms, 42);
        assert!(decode(encode(lines, &[0..7, 8..99], 42)).is_err());
        assert!(decode(vec![1, 2]).is_err());
        let mut bad = encode(lines, &[], 1);
        bad[9] = 0xff;
        assert!(decode(bad).is_err());
    }
}
