//! Reader positions: one 4 KiB file per reader holding two checksummed
//! 64-byte slots (at offsets 0 and 512), written alternately in place.
//!
//! ```text
//! slot: 0 magic "WPOS" · 4 version u16 · 6 pad u16 · 8 generation u64 · 16 segment_base u64
//!       24 offset u64 · 32 next_seq u64 · 40 updated_ms u64 · 48 reserved (12) · 60 crc32c(bytes 0..60) u32
//! ```
//! An update overwrites the slot not holding the newest generation, with
//! generation + 1, then syncs; loading takes the valid slot with the higher
//! generation, so a torn write leaves the previous position (duplicates,
//! never loss). Overwriting preallocated blocks needs no new space, so
//! positions still advance (and segments can be freed) on a full disk.
use super::format::{crc32c, VERSION};
use super::WalError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const FILE_LEN: u64 = 4096;
const SLOT_LEN: usize = 64;
const SLOT_OFFSETS: [u64; 2] = [0, 512];
const MAGIC: &[u8; 4] = b"WPOS";

/// Where a reader resumes: the byte offset of the next record in segment
/// `segment_base`, and the seq it expects there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment_base: u64,
    pub offset: u64,
    pub next_seq: u64,
}

fn encode(generation: u64, p: &Position) -> [u8; SLOT_LEN] {
    let mut b = [0u8; SLOT_LEN];
    b[0..4].copy_from_slice(MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&generation.to_le_bytes());
    b[16..24].copy_from_slice(&p.segment_base.to_le_bytes());
    b[24..32].copy_from_slice(&p.offset.to_le_bytes());
    b[32..40].copy_from_slice(&p.next_seq.to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    b[40..48].copy_from_slice(&now.to_le_bytes());
    let crc = crc32c(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, Position)> {
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    if b.len() < SLOT_LEN
        || &b[0..4] != MAGIC
        || b[4..6] != VERSION.to_le_bytes()
        || b[60..64] != crc32c(&b[0..60]).to_le_bytes()
    {
        return None;
    }
    let position = Position {
        segment_base: u64_at(16),
        offset: u64_at(24),
        next_seq: u64_at(32),
    };
    Some((u64_at(8), position))
}

/// A reader's open position file.
pub struct PositionFile {
    path: PathBuf,
    file: File,
    /// The newest generation on disk and the slot holding it.
    generation: u64,
    slot: usize,
}

impl PositionFile {
    /// `<readers dir>/<name>.pos`.
    pub fn path(readers_dir: &Path, name: &str) -> PathBuf {
        readers_dir.join(format!("{name}.pos"))
    }

    /// The newest valid position in the file at `path`, if any.
    pub fn load(path: &Path) -> Result<Option<Position>, WalError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io("reading position", path)(e)),
        };
        Ok(newest(&file, path)?.map(|(_, _, p)| p))
    }

    /// Opens the file at `path`, creating it (preallocated, synced, its
    /// directory synced) holding `initial` when it has no valid slot.
    pub fn open(path: &Path, initial: Position) -> Result<(PositionFile, Position), WalError> {
        let err = WalError::io("opening position", path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(&err)?;
        if let Some((generation, slot, position)) = newest(&file, path)? {
            let pf = PositionFile {
                path: path.to_path_buf(),
                file,
                generation,
                slot,
            };
            return Ok((pf, position));
        }
        file.set_len(FILE_LEN).map_err(&err)?;
        let mut pf = PositionFile {
            path: path.to_path_buf(),
            file,
            generation: 0,
            slot: 1,
        };
        pf.store(&initial)?;
        pf.file.sync_all().map_err(&err)?;
        if let Some(dir) = path.parent() {
            super::segment::sync_dir(dir)?;
        }
        Ok((pf, initial))
    }

    /// Writes `p` over the older slot and syncs it.
    pub fn store(&mut self, p: &Position) -> Result<(), WalError> {
        let slot = 1 - self.slot;
        let generation = self.generation + 1;
        self.file
            .write_all_at(&encode(generation, p), SLOT_OFFSETS[slot])
            .and_then(|()| self.file.sync_data())
            .map_err(WalError::io("writing position", &self.path))?;
        self.generation = generation;
        self.slot = slot;
        Ok(())
    }
}

/// The valid slot with the higher generation: (generation, slot, position).
fn newest(file: &File, path: &Path) -> Result<Option<(u64, usize, Position)>, WalError> {
    let mut best: Option<(u64, usize, Position)> = None;
    for (slot, at) in SLOT_OFFSETS.iter().enumerate() {
        let mut buf = [0u8; SLOT_LEN];
        match file.read_exact_at(&mut buf, *at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(WalError::io("reading position", path)(e)),
        }
        if let Some((generation, p)) = decode(&buf) {
            if best.is_none_or(|(g, _, _)| generation > g) {
                best = Some((generation, slot, p));
            }
        }
    }
    Ok(best)
}
