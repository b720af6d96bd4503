//! Where a job is, on disk, so that it resumes with no duplicates and no gaps.
//!
//! Two files under `data_dir/rehydrate/`, each written atomically:
//! `<id>.objects.json`, the objects the job reads, listed once at its first
//! start (sorted; a resumed job reads exactly these, never a new listing that
//! could shift what "done" means), and `<id>.json`, the checkpoint: the cursor
//! (object index, lines of it consumed) up to which every selected event has
//! been delivered (the route released its chunk), the totals so far and the
//! state. The cursor only moves past a chunk once the route is done with it
//! and every chunk before it ([`Window`]).
use super::spec::Spec;
use crate::wal::Progress;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most objects one job may read (its listing is kept on disk and in memory).
pub const MAX_OBJECTS: usize = 200_000;

/// A position in a job's objects: every line before it was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    /// Index into the listing.
    pub object: usize,
    /// Lines of that object consumed.
    pub line: u64,
}

/// One archive object, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// The store it is in (its name in the tenant's archive; empty: the first
    /// store, as checkpoints written before archives had several say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub store: String,
    /// The path inside the store (below its prefix).
    pub path: String,
    /// Compressed bytes.
    pub size: u64,
}

/// Totals over every run of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Lines read, and their bytes (uncompressed).
    pub events_scanned: u64,
    pub bytes_scanned: u64,
    /// Events in the range that match the query.
    pub events_matched: u64,
    pub bytes_matched: u64,
    /// Matching events the route is done with (delivered, or dead-lettered or
    /// given up on as the route does for any event), and their bytes.
    pub events_sent: u64,
    pub bytes_sent: u64,
    /// Lines that are not a log object (counted, skipped).
    pub events_invalid: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.events_scanned += o.events_scanned;
        self.bytes_scanned += o.bytes_scanned;
        self.events_matched += o.events_matched;
        self.bytes_matched += o.bytes_matched;
        self.events_sent += o.events_sent;
        self.bytes_sent += o.bytes_sent;
        self.events_invalid += o.events_invalid;
    }
}

/// The checkpoint file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: String,
    pub spec: Spec,
    pub cursor: Cursor,
    pub counters: Counters,
    /// `running` while a run may still move it, else how the last run ended.
    pub state: String,
    pub error: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
}

/// A job's files.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
    id: String,
}

impl Files {
    pub fn new(data_dir: &Path, id: &str) -> Files {
        Files {
            dir: data_dir.join("rehydrate"),
            id: id.to_string(),
        }
    }

    fn checkpoint_name(&self) -> String {
        format!("{}.json", self.id)
    }

    fn listing_name(&self) -> String {
        format!("{}.objects.json", self.id)
    }

    pub fn load(&self) -> Result<Option<Checkpoint>, String> {
        read_json(&self.dir.join(self.checkpoint_name()))
    }

    pub fn save(&self, c: &Checkpoint) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(c).expect("a checkpoint serializes");
        crate::durable::write_atomic(&self.dir, &self.checkpoint_name(), &bytes)
            .map_err(|e| format!("writing the checkpoint under {}: {e}", self.dir.display()))
    }

    pub fn load_listing(&self) -> Result<Option<Vec<Object>>, String> {
        read_json(&self.dir.join(self.listing_name()))
    }

    pub fn save_listing(&self, objects: &[Object]) -> Result<(), String> {
        let bytes = serde_json::to_vec(objects).expect("a listing serializes");
        crate::durable::write_atomic(&self.dir, &self.listing_name(), &bytes)
            .map_err(|e| format!("writing the object list under {}: {e}", self.dir.display()))
    }

    /// Drops the listing of a finished job (up to MiBs): a done checkpoint needs none.
    pub fn remove_listing(&self) {
        let _ = std::fs::remove_file(self.dir.join(self.listing_name()));
    }

    /// Forgets the job (a restart): both files.
    pub fn remove(&self) -> Result<(), String> {
        for name in [self.checkpoint_name(), self.listing_name()] {
            match std::fs::remove_file(self.dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing {name}: {e}")),
            }
        }
        Ok(())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Every checkpoint under `data_dir/rehydrate/` (a start lists them as the
/// jobs of earlier runs); unreadable ones are logged and left.
pub fn saved(data_dir: &Path) -> Vec<Checkpoint> {
    let dir = data_dir.join("rehydrate");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("rh-") || !name.ends_with(".json") || name.ends_with(".objects.json") {
            continue;
        }
        match read_json::<Checkpoint>(&e.path()) {
            Ok(Some(c)) => out.push(c),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a rehydration checkpoint that cannot be read; left as it is")
            }
        }
    }
    out.sort_by(|a, b| a.updated_at.cmp(&b.updated_at));
    out
}

/// A chunk handed to the route (or, holding no event, nothing to wait for).
pub struct InFlight {
    /// Where the job is once this chunk and every one before it are done.
    pub end: Cursor,
    /// None: nothing was sent (a stretch of lines with no selected event).
    pub progress: Option<Arc<Progress>>,
    /// What this chunk adds to the totals once done.
    pub counters: Counters,
    /// Objects finished with this chunk.
    pub objects_done: usize,
}

/// The chunks in flight, oldest first. The checkpoint moves only over the
/// done chunks at the front: a later chunk delivered before an earlier one
/// waits for it, so a resume never skips an undelivered chunk.
#[derive(Default)]
pub struct Window {
    chunks: VecDeque<InFlight>,
}

impl Window {
    pub fn push(&mut self, c: InFlight) {
        self.chunks.push_back(c);
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Takes the done chunks at the front: where the job now is, and what they added.
    pub fn settle(&mut self) -> Option<(Cursor, Counters, usize)> {
        let mut done: Option<(Cursor, Counters, usize)> = None;
        while self
            .chunks
            .front()
            .is_some_and(|c| c.progress.as_ref().is_none_or(|p| p.is_done()))
        {
            let c = self.chunks.pop_front().unwrap();
            let (cursor, counters, objects) = done.get_or_insert_with(Default::default);
            *cursor = c.end;
            counters.add(&c.counters);
            *objects += c.objects_done;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    fn chunk(object: usize, line: u64, sent: u64, progress: Option<Arc<Progress>>) -> InFlight {
        InFlight {
            end: Cursor { object, line },
            progress,
            counters: Counters {
                events_sent: sent,
                ..Default::default()
            },
            objects_done: 0,
        }
    }

    #[test]
    fn the_cursor_moves_only_over_a_done_prefix() {
        let notify = Arc::new(Notify::new());
        let (a, b) = (Progress::new(notify.clone()), Progress::new(notify.clone()));
        let mut w = Window::default();
        w.push(chunk(0, 10, 10, Some(a.clone())));
        w.push(chunk(0, 20, 10, None));
        w.push(chunk(1, 5, 5, Some(b.clone())));
        assert!(w.settle().is_none(), "nothing done yet");
        // The later chunk is delivered first: the checkpoint must not pass the earlier one.
        b.release();
        assert!(w.settle().is_none());
        a.release();
        let (cursor, counters, _) = w.settle().unwrap();
        assert_eq!(cursor, Cursor { object: 1, line: 5 });
        assert_eq!(counters.events_sent, 25);
        assert!(w.is_empty());
    }

    #[test]
    fn a_chunk_still_held_by_a_batch_is_not_done() {
        let p = Progress::new(Arc::new(Notify::new()));
        let mut w = Window::default();
        w.push(chunk(0, 3, 3, Some(p.clone())));
        // The route placed the lines in a batch (one hold) and let go of the chunk's own.
        p.hold();
        p.release();
        assert!(w.settle().is_none(), "the batch is not delivered yet");
        p.release();
        assert_eq!(w.settle().unwrap().0, Cursor { object: 0, line: 3 });
    }

    #[test]
    fn checkpoints_and_listings_round_trip_and_restart_forgets_them() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path(), "rh-0123456789abcdef");
        assert_eq!(files.load().unwrap(), None);
        let c = Checkpoint {
            id: "rh-0123456789abcdef".into(),
            spec: Spec {
                tenant: "acme".into(),
                from_ms: 1,
                to_ms: 2,
                query: Some("service:web".into()),
                to_backend: None,
                late_arrival_s: 3600,
            },
            cursor: Cursor { object: 2, line: 7 },
            counters: Counters {
                events_sent: 9,
                ..Default::default()
            },
            state: "cancelled".into(),
            error: None,
            updated_at: "2026-12-03T12:00:00Z".into(),
        };
        files.save(&c).unwrap();
        let objects = vec![Object {
            store: "primary".into(),
            path: "acme/dt=2026-12-03/hour=11/x.ndjson.gz".into(),
            size: 10,
        }];
        files.save_listing(&objects).unwrap();
        assert_eq!(files.load().unwrap(), Some(c.clone()));
        assert_eq!(files.load_listing().unwrap(), Some(objects));
        // The start lists the checkpoint, not the listing.
        assert_eq!(saved(dir.path()), vec![c]);
        files.remove().unwrap();
        assert_eq!(files.load().unwrap(), None);
        assert_eq!(files.load_listing().unwrap(), None);
        assert!(saved(dir.path()).is_empty());
        // A damaged checkpoint is an error, not a fresh start (that would send everything again).
        std::fs::write(
            dir.path()
                .join("rehydrate")
                .join("rh-0123456789abcdef.json"),
            b"{\"id\": ",
        )
        .unwrap();
        assert!(files.load().is_err());
    }
}
