//! One poller for the files Weir reloads when they change: the config file
//! (reload.rs) and the plugin modules (plugin/slot.rs). Each tells whether its
//! file changed by a [`FileStamp`] (modification time and size), polled every
//! [`WATCH_EVERY`] on one background thread. Polling rather than inotify: it
//! behaves the same on every filesystem, network mounts and the symlink swaps
//! of Kubernetes ConfigMaps included, and costs two `stat`s a second.
use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How often watched files are checked for a change.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A file as last seen: cheap to take, and changed by any write or replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    /// `None` when the file cannot be read (missing, no permission).
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
        })
    }
}

/// Something whose files the watcher polls.
pub trait Watched: Send + Sync {
    /// Checks its files and reloads what changed. Runs on the watcher's own
    /// thread, so blocking (reading, compiling) holds up no request.
    fn poll(&self);
}

/// Polls `watched` every `every` on one thread, until `stop` or until every
/// watched item is gone.
pub fn spawn(
    watched: Vec<Weak<dyn Watched>>,
    every: Duration,
    stop: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("weir-watch".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            if stop.is_cancelled() {
                return;
            }
            let live: Vec<_> = watched.iter().filter_map(Weak::upgrade).collect();
            if live.is_empty() {
                return;
            }
            for w in live {
                w.poll();
            }
        })
        .expect("spawning the file watcher")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counting(AtomicUsize);
    impl Watched for Counting {
        fn poll(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_stamp_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert_eq!(FileStamp::of(&path), None);
        std::fs::write(&path, "one").unwrap();
        let first = FileStamp::of(&path).unwrap();
        std::fs::write(&path, "longer").unwrap();
        assert_ne!(FileStamp::of(&path).unwrap(), first);
    }

    #[test]
    fn polls_until_stopped_or_dropped() {
        let item = Arc::new(Counting(AtomicUsize::new(0)));
        let weak = Arc::downgrade(&item) as Weak<dyn Watched>;
        let stop = CancellationToken::new();
        let thread = spawn(vec![weak.clone()], Duration::from_millis(1), stop.clone());
        while item.0.load(Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        stop.cancel();
        thread.join().unwrap();

        // With no stop: the thread ends once the item is dropped.
        let thread = spawn(
            vec![weak],
            Duration::from_millis(1),
            CancellationToken::new(),
        );
        drop(item);
        thread.join().unwrap();
    }
}
