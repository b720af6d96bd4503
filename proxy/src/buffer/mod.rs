//! The disk buffer: each tenant's accepted requests, after its stages, in a
//! write-ahead log of its own (`wal`) under `data_dir/wal/<tenant>`, until
//! both destinations that read it (the tenant's archive writer and its
//! route) have finished with them. A request is answered per the tenant's
//! ack mode: once its record is synced (`durable`), at once (`received`), or
//! once the backend accepted its events (`delivered`).
//!
//! One log per tenant (not one per instance): a tenant whose backends are
//! down fills only its own log, its limit is a directory's size, and one
//! tenant's backlog never holds back another tenant's segments from deletion.
//!
//! This module owns the logs and their limits (`TenantLog`, `Disk`); `feed`
//! owns the readers that carry records to the archive and the route; the
//! record layout is in `record`.
pub mod feed;
pub mod record;

use crate::config::{AckMode, BufferConfig, SyncSetting, WhenFull};
use crate::telemetry::buffer::BUFFER;
use crate::wal::{SeqRange, SyncPolicy, Wal, WalError, WalOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Why a request could not go into its tenant's log.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The tenant's or the whole buffer's size limit (`when_full: block`).
    #[error("the tenant's disk buffer is full ({bytes} of {max} bytes)")]
    Full { bytes: u64, max: u64 },
    /// The write or its sync failed (a full or failing disk).
    #[error("the disk buffer cannot be written: {0}")]
    Failed(WalError),
    /// `ack: delivered` and the destinations did not finish in time (the
    /// events are in the log and will be delivered: a retry duplicates them).
    #[error("the events are safe in the disk buffer but not delivered within {0:?}")]
    NotDelivered(Duration),
}

/// Every tenant's log: the global limit and what `/readyz` reports.
pub struct Disk {
    max_bytes: u64,
    /// Every tenant's log (added at start; read per request, hence a read lock).
    logs: RwLock<Vec<(Arc<str>, Arc<Wal>)>>,
    /// The last write failed (cleared by the next one that succeeds, or by
    /// a probe write: behind a load balancer that heeds `/readyz`, no
    /// request may come to try).
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Where the probe writes (`data_dir/wal`), set when the first log opens.
    probe_dir: std::sync::OnceLock<std::path::PathBuf>,
}

impl Disk {
    pub fn new(config: &BufferConfig) -> Arc<Disk> {
        let disk = Arc::new(Disk {
            max_bytes: config.max_bytes.0,
            logs: RwLock::default(),
            failing: AtomicBool::new(false),
            last_error: Mutex::default(),
            probe_dir: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&disk);
        BUFFER.bytes.set_source(Box::new(move || {
            weak.upgrade().map_or_else(Vec::new, |d| {
                d.logs
                    .read()
                    .unwrap()
                    .iter()
                    .map(|(t, w)| (vec![t.to_string()], w.bytes() as i64))
                    .collect()
            })
        }));
        disk
    }

    /// Bytes of every tenant's log, with what is on its way to disk.
    pub fn bytes(&self) -> u64 {
        let logs = self.logs.read().unwrap();
        logs.iter().map(|(_, w)| w.bytes_with_queued()).sum()
    }

    fn full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Whether the buffer takes writes: not failing, not over its limit.
    pub fn healthy(&self) -> bool {
        !self.failing.load(Ordering::Relaxed) && !self.full()
    }

    /// What `/readyz` says of the buffer.
    pub fn report(&self) -> serde_json::Value {
        let status = if self.failing.load(Ordering::Relaxed) {
            "failing"
        } else if self.full() {
            "full"
        } else {
            "ok"
        };
        serde_json::json!({
            "status": status,
            "bytes": self.bytes(),
            "max_bytes": self.max_bytes,
            "last_error": *self.last_error.lock().unwrap(),
        })
    }

    fn wrote(self: &Arc<Self>, result: &Result<SeqRange, WalError>, tenant: &str) {
        match result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(tenant, "the disk buffer takes writes again");
                }
            }
            // A full writer queue is load, not a failing disk.
            Err(WalError::Full) => {}
            Err(e) => {
                BUFFER.write_errors.with_label_values(&[tenant]).inc();
                *self.last_error.lock().unwrap() = Some(e.to_string());
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(tenant, error = %e, "the disk buffer cannot be written; intake answers 503 until it can");
                    self.probe_until_writable();
                }
            }
        }
    }

    /// While failing, writes and syncs a probe file once a second; the first
    /// that succeeds clears the state. Only on a failing disk, so it costs
    /// nothing otherwise.
    fn probe_until_writable(self: &Arc<Self>) {
        const EVERY: Duration = Duration::from_secs(1);
        let (Some(dir), Ok(rt)) = (
            self.probe_dir.get().cloned(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let disk = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(EVERY).await;
                let Some(d) = disk.upgrade() else { return };
                if !d.failing.load(Ordering::Relaxed) {
                    return; // a request's write succeeded first
                }
                let probe = dir.clone();
                let ok = tokio::task::spawn_blocking(move || probe_write(&probe))
                    .await
                    .is_ok_and(|r| r.is_ok());
                if ok && d.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the disk buffer takes writes again (a probe write succeeded)");
                    return;
                }
            }
        });
    }
}

/// Room for a request's record (1 MiB, written and synced, then removed).
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_data()
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// One tenant's log, as intake writes it.
pub struct TenantLog {
    tenant: Arc<str>,
    wal: Arc<Wal>,
    ack: AckMode,
    max_bytes: u64,
    when_full: WhenFull,
    disk: Arc<Disk>,
    /// The route's done end (every seq below it delivered), for `ack: delivered`.
    route_done: watch::Receiver<u64>,
    delivered_timeout: Duration,
    /// `weir_buffer_records_total` of the tenant (no label lookup per request).
    records: prometheus::IntCounter,
}

/// A request whose record went to the log, answered per its tenant's ack mode.
pub struct Wait {
    written: oneshot::Receiver<Result<SeqRange, WalError>>,
    log: Arc<TenantLog>,
}

impl Wait {
    pub async fn done(self) -> Result<(), BufferError> {
        let Wait { written, log } = self;
        if log.ack == AckMode::Received {
            // Answered at once; a failed write is still counted and reported.
            tokio::spawn(async move {
                let written = written.await.unwrap_or(Err(WalError::Closed));
                log.disk.wrote(&written, &log.tenant);
            });
            return Ok(());
        }
        let written = written.await.unwrap_or(Err(WalError::Closed));
        log.disk.wrote(&written, &log.tenant);
        let range = written.map_err(BufferError::Failed)?;
        if log.ack == AckMode::Delivered {
            log.delivered(range.end).await?;
        }
        Ok(())
    }
}

/// Opens `tenant`'s log under `data_dir/wal/<tenant>` (its feeds read it, its `TenantLog` writes it).
fn open_wal(
    data_dir: &Path,
    tenant: &str,
    config: &BufferConfig,
    disk: &Arc<Disk>,
) -> Result<Arc<Wal>, WalError> {
    let options = WalOptions {
        segment_bytes: config.segment_bytes.0,
        sync: match config.sync {
            SyncSetting::EveryRequest => SyncPolicy::EveryGroup,
            SyncSetting::Every(d) => SyncPolicy::Interval(d),
        },
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(&data_dir.join("wal").join(tenant), options)?);
    let _ = disk.probe_dir.set(data_dir.join("wal"));
    if let Some(e) = wal.start_error() {
        // Open anyway: the feeds drain the log, which frees the disk.
        disk.wrote(&Err(e.clone()), tenant);
    }
    let _ = wal
        .writer_stats()
        .sync_seconds
        .set(BUFFER.sync_seconds.with_label_values(&[tenant]));
    crate::telemetry::buffer::seed(tenant);
    disk.logs
        .write()
        .unwrap()
        .push((tenant.into(), wal.clone()));
    Ok(wal)
}

impl TenantLog {
    /// Whether a request may go in: `Ok(true)` yes, `Ok(false)` its events
    /// are to be dropped (`drop_newest`, counted by the caller), `Err` when
    /// it must be refused (`block`, or a failing disk).
    pub fn admit(&self) -> Result<bool, BufferError> {
        let own = self.wal.bytes_with_queued();
        let all = self.disk.bytes();
        let over = if own >= self.max_bytes {
            Some((own, self.max_bytes))
        } else if all >= self.disk.max_bytes {
            Some((all, self.disk.max_bytes))
        } else {
            None
        };
        match (over, self.when_full) {
            (None, _) => Ok(true),
            (Some((bytes, max)), WhenFull::Block) => Err(BufferError::Full { bytes, max }),
            (Some(_), WhenFull::DropNewest) => Ok(false),
        }
    }

    /// With `when_full: block`, waits (until `deadline`) while the log is at
    /// its size limit, so a request waits unread for the feeds to make room;
    /// still full at `deadline`, the error to refuse it with. Polled: room
    /// comes back as segments are deleted, a few times a second at most.
    pub async fn wait_for_room(&self, deadline: tokio::time::Instant) -> Result<(), BufferError> {
        const POLL: Duration = Duration::from_millis(50);
        loop {
            match self.admit() {
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await
                }
                Ok(_) => return Ok(()),
            }
        }
    }

    /// Counts events dropped by `drop_newest`.
    pub fn dropped(&self, events: usize) {
        BUFFER
            .dropped_events
            .with_label_values(&[&self.tenant])
            .inc_by(events as u64);
    }

    /// Queues one request's record (`events` lines); the answer waits per the ack mode.
    pub fn submit(self: &Arc<Self>, payload: Vec<u8>, events: u32) -> Result<Wait, BufferError> {
        let rx = self.wal.submit(payload, events, 0).map_err(|e| {
            self.disk.wrote(&Err(e.clone()), &self.tenant);
            BufferError::Failed(e)
        })?;
        self.records.inc();
        Ok(Wait {
            written: rx,
            log: self.clone(),
        })
    }

    /// Waits until the route is done with the seqs below `end`.
    async fn delivered(&self, end: u64) -> Result<(), BufferError> {
        let mut done = self.route_done.clone();
        // An error: the feed ended (shutdown); the record is safe in the log.
        let reached = tokio::time::timeout(self.delivered_timeout, done.wait_for(|&e| e >= end))
            .await
            .is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(BufferError::NotDelivered(self.delivered_timeout)),
        }
    }
}

/// One tenant's log with its feeds running.
pub struct Started {
    pub log: Arc<TenantLog>,
    pub feeds: Vec<feed::FeedHandle>,
}

/// Opens `tenant`'s log and starts a feed to its archive (if it has one) and
/// one to its route. A destination the tenant no longer has (an archive
/// since disabled) stops holding the log back.
pub fn start(
    config: &crate::config::Config,
    tenant: &crate::plan::TenantPlan,
    archive: Option<crate::archive::ArchiveHandle>,
    route: crate::sink::RouteSlot,
    disk: &Arc<Disk>,
    stop: &feed::FeedStop,
) -> Result<Started, WalError> {
    let buffer = &config.buffer;
    let wal = open_wal(&config.data_dir, &tenant.name, buffer, disk)?;
    let mut dests = vec![feed::Destination::Route(route)];
    match archive {
        Some(a) => dests.push(feed::Destination::Archive(a)),
        None => wal.remove_reader("archive")?,
    }
    let mut feeds = Vec::new();
    for dest in dests {
        feeds.push(feed::spawn(&tenant.name, wal.clone(), dest, stop.clone())?);
    }
    let log = Arc::new(TenantLog {
        tenant: tenant.name.as_str().into(),
        wal,
        ack: tenant.ack,
        max_bytes: buffer.max_bytes_per_tenant.0,
        when_full: buffer.when_full,
        disk: disk.clone(),
        // `ack: delivered` waits for the backend (the route); the archive has the events in the log.
        route_done: feeds[0].done.clone(),
        delivered_timeout: buffer.delivered_timeout.0,
        records: BUFFER.records.with_label_values(&[&tenant.name]),
    });
    Ok(Started { log, feeds })
}

/// Logs under `data_dir/wal/` of tenants the plan no longer has, with their
/// bytes on disk: nothing reads them, so their events are not delivered.
pub fn orphans(data_dir: &Path, tenants: &[&str]) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("wal")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| !tenants.contains(&name.as_str()))
        .map(|name| {
            let seg = data_dir.join("wal").join(&name).join("seg");
            let bytes = crate::wal::segment::total_bytes(&seg).unwrap_or(0);
            (name, bytes)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_of_tenants_no_longer_configured_are_found() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["kept", "gone"] {
            std::fs::create_dir_all(dir.path().join("wal").join(t).join("seg")).unwrap();
        }
        std::fs::write(
            dir.path().join("wal/gone/seg/00000000000000000001.wal"),
            [0u8; 100],
        )
        .unwrap();
        assert_eq!(
            super::orphans(dir.path(), &["kept"]),
            vec![("gone".to_string(), 100)]
        );
        assert!(super::orphans(&dir.path().join("none"), &["kept"]).is_empty());
    }
}
