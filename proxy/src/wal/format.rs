//! The bytes on disk: the segment header and the record header, both 32
//! bytes, little-endian, each with its own CRC32C (Castagnoli).
//!
//! ```text
//! segment header: 0 magic "WEIRSEG1" · 8 version u16 · 10 header_len u16 · 12 reserved u32
//!                 16 base_seq u64 · 24 reserved u32 · 28 crc32c(bytes 0..28) u32
//! record header:  0 marker "WREC" · 4 hdr_crc u32 = crc32c(bytes 8..32) · 8 payload_len u32
//!                 12 payload_crc u32 · 16 first_seq u64 · 24 events u32 · 28 flags u16 · 30 reserved u16
//! ```

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WEIRSEG1";
/// The first bytes of every record: what a reader scans for past damage.
pub const RECORD_MARKER: &[u8; 4] = b"WREC";
pub const VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 32;
pub const RECORD_HEADER_LEN: usize = 32;
/// The largest payload a record may carry unless the options say less.
pub const MAX_RECORD_BYTES: u32 = 64 << 20;

/// CRC32C (iSCSI / Castagnoli) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("two bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

/// The header at the start of every segment; `base_seq` repeats the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base_seq: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        b[16..24].copy_from_slice(&self.base_seq.to_le_bytes());
        let crc = crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` when the magic, version, length or checksum is wrong.
    pub fn decode(b: &[u8]) -> Option<SegmentHeader> {
        if b.len() < SEGMENT_HEADER_LEN
            || &b[0..8] != SEGMENT_MAGIC
            || u16_at(b, 8) != VERSION
            || u16_at(b, 10) as usize != SEGMENT_HEADER_LEN
            || u32_at(b, 28) != crc32c(&b[0..28])
        {
            return None;
        }
        Some(SegmentHeader {
            base_seq: u64_at(b, 16),
        })
    }
}

/// The header in front of every record's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: u32,
    pub payload_crc: u32,
    /// The sequence number of the record's first event; the next record's
    /// is `first_seq + events`, so a gap is an exact count of lost events.
    pub first_seq: u64,
    pub events: u32,
    pub flags: u16,
}

/// Why bytes that should start a record do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDamage {
    /// Fewer than a header's bytes are left.
    Short,
    Marker,
    Checksum,
    /// A checksummed length over the limit (written by a build with a larger one).
    TooLong,
}

impl RecordHeader {
    /// The record's header followed by its payload, appended to `out`.
    pub fn encode_record(
        first_seq: u64,
        events: u32,
        flags: u16,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        let header = RecordHeader {
            payload_len: payload.len() as u32,
            payload_crc: crc32c(payload),
            first_seq,
            events,
            flags,
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(payload);
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(RECORD_MARKER);
        b[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.events.to_le_bytes());
        b[28..30].copy_from_slice(&self.flags.to_le_bytes());
        let crc = crc32c(&b[8..32]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The header at the start of `b`, checked against its own checksum and
    /// `max_payload`; the payload's checksum is checked by [`payload_ok`](Self::payload_ok).
    pub fn decode(b: &[u8], max_payload: u32) -> Result<RecordHeader, HeaderDamage> {
        if b.len() < RECORD_HEADER_LEN {
            return Err(HeaderDamage::Short);
        }
        if &b[0..4] != RECORD_MARKER {
            return Err(HeaderDamage::Marker);
        }
        if u32_at(b, 4) != crc32c(&b[8..32]) {
            return Err(HeaderDamage::Checksum);
        }
        let header = RecordHeader {
            payload_len: u32_at(b, 8),
            payload_crc: u32_at(b, 12),
            first_seq: u64_at(b, 16),
            events: u32_at(b, 24),
            flags: u16_at(b, 28),
        };
        if header.payload_len > max_payload {
            return Err(HeaderDamage::TooLong);
        }
        Ok(header)
    }

    pub fn payload_ok(&self, payload: &[u8]) -> bool {
        payload.len() == self.payload_len as usize && crc32c(payload) == self.payload_crc
    }

    /// Header and payload bytes.
    pub fn record_len(&self) -> u64 {
        (RECORD_HEADER_LEN as u64) + u64::from(self.payload_len)
    }

    /// The sequence number after the record's last event.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"Hello world!"), 0x7b98_e751);
    }

    #[test]
    fn headers_round_trip_and_refuse_damage() {
        let s = SegmentHeader { base_seq: 42 };
        assert_eq!(SegmentHeader::decode(&s.encode()), Some(s));
        let mut bad = s.encode();
        bad[17] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), None);

        let mut rec = Vec::new();
        RecordHeader::encode_record(7, 3, 1, b"payload", &mut rec);
        let h = RecordHeader::decode(&rec, 1024).unwrap();
        assert_eq!((h.first_seq, h.events, h.flags, h.end_seq()), (7, 3, 1, 10));
        assert!(h.payload_ok(&rec[RECORD_HEADER_LEN..]));
        assert_eq!(RecordHeader::decode(&rec, 4), Err(HeaderDamage::TooLong));
        rec[9] ^= 1;
        assert_eq!(
            RecordHeader::decode(&rec, 1024),
            Err(HeaderDamage::Checksum)
        );
        rec[0] = b'X';
        assert_eq!(RecordHeader::decode(&rec, 1024), Err(HeaderDamage::Marker));
        assert_eq!(
            RecordHeader::decode(&rec[..10], 1024),
            Err(HeaderDamage::Short)
        );
    }
}
