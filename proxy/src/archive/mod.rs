//! The archive: every accepted event, NDJSON compressed with gzip (or zstd),
//! one writer per tenant.
//! Objects live at `<tenant>/dt=YYYY-MM-DD/hour=HH/<unique>.ndjson.gz` (`.zst`)
//! (partitioned by the UTC hour the events arrived) and are written through
//! object_store, which makes them visible under their final name only once
//! complete. An object is closed when it holds `max_object_bytes`
//! uncompressed, when its oldest event is `max_object_age` old, when the hour
//! changes, and on shutdown.
mod store;
mod stores;

pub use stores::{ArchiveStore, StoreSet, Stores};

use crate::budget::{Budget, Queue, Reservation};
use crate::config::{ArchiveCompression, ArchiveConfig, StoreConfig};
use crate::telemetry::METRICS;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use object_store::path::Path as ObjectPath;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Events for the archive: NDJSON lines, all of which are archived.
pub struct ArchiveChunk {
    pub lines: Bytes,
    pub events: usize,
    pub received_at_ms: i64,
    pub reservation: Reservation,
    /// The log record the lines came from (none: memory buffer), released once written.
    pub progress: Option<Arc<crate::wal::Progress>>,
}

/// The intake side of one tenant's archive writer.
pub type ArchiveHandle = Queue<ArchiveChunk>;

/// Opens the object store an archive config names: a local directory, S3 (or
/// an S3-compatible store), GCS or Azure, under the config's `prefix`.
#[cfg(test)]
pub(crate) fn open_store(cfg: &StoreConfig) -> anyhow::Result<Arc<dyn object_store::ObjectStore>> {
    store::open(cfg)
}

/// Opens every cloud store the tenants' archives name, as a start would
/// (settings and credentials parsed, no request made), so `weir check`
/// finds an unusable key or endpoint. Local stores are not created here.
pub fn check_stores(plan: &crate::plan::Plan) -> anyhow::Result<()> {
    let mut checked: Vec<&StoreConfig> = Vec::new();
    let stores = plan
        .tenants
        .iter()
        .filter(|t| t.archive.enabled)
        .flat_map(|t| &t.archive_stores);
    for s in stores {
        if matches!(s.store, StoreConfig::Local { .. }) || checked.contains(&&s.store) {
            continue;
        }
        store::open(&s.store).map_err(|e| anyhow::anyhow!("archive store {:?}: {e:#}", s.name))?;
        checked.push(&s.store);
    }
    Ok(())
}

/// Starts the archive writer of `tenant`.
pub fn spawn_writer(
    tenant: &str,
    cfg: &ArchiveConfig,
    stores: StoreSet,
    drain: CancellationToken,
) -> (ArchiveHandle, JoinHandle<()>) {
    let budget = Budget::new(
        cfg.max_queued_bytes.as_usize(),
        crate::telemetry::queued_bytes(crate::telemetry::QueueKind::Archive { tenant }),
    );
    let (queue, rx) = Queue::new(budget);
    let writer = Writer {
        tenant: tenant.to_string(),
        stores,
        max_object_bytes: cfg.max_object_bytes.as_usize(),
        max_object_age: cfg.max_object_age.0,
        compression: cfg.compression,
        level: cfg.compression_level,
        open: None,
    };
    let handle = tokio::spawn(writer.run(rx, drain));
    (queue, handle)
}

struct OpenObject {
    /// `dt=YYYY-MM-DD/hour=HH`
    partition: String,
    /// Out only while a delivery thread compresses a chunk into it.
    gz: Option<Encoder>,
    raw_bytes: usize,
    events: usize,
    deadline: Instant,
    /// Its oldest event's arrival (ms).
    oldest_ms: i64,
    /// The log records whose lines it holds, released once it is written.
    progress: Vec<Arc<crate::wal::Progress>>,
}

struct Writer {
    tenant: String,
    stores: StoreSet,
    max_object_bytes: usize,
    max_object_age: Duration,
    compression: ArchiveCompression,
    level: u32,
    open: Option<OpenObject>,
}

/// An object's compressor.
enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// `level` is checked by the config (gzip 0-9, zstd 1-19).
    fn new(compression: ArchiveCompression, level: u32, capacity: usize) -> Encoder {
        let buf = Vec::with_capacity(capacity);
        match compression {
            ArchiveCompression::Gzip => Encoder::Gzip(GzEncoder::new(buf, Compression::new(level))),
            ArchiveCompression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(buf, level as i32)
                    .expect("a zstd level the config checked"),
            ),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        match self {
            Encoder::Gzip(e) => e.write_all(bytes),
            Encoder::Zstd(e) => e.write_all(bytes),
        }
        .expect("compressing into memory cannot fail")
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
        .expect("compressing into memory cannot fail")
    }
}

/// `lines` compressed as one whole archive object (or dead letter) would be.
pub fn compress(compression: ArchiveCompression, level: u32, lines: &[u8]) -> Vec<u8> {
    let mut enc = Encoder::new(compression, level, lines.len() / 4);
    enc.write(lines);
    enc.finish()
}

/// Batches a backend refused as malformed (a 4xx other than 408/429): kept in
/// the tenant's archive store under `dead-letter/<tenant>/`, named after the
/// backend and status, instead of being retried forever or lost.
#[derive(Clone)]
pub struct DeadLetters {
    tenant: String,
    stores: StoreSet,
    compression: ArchiveCompression,
    level: u32,
}

impl DeadLetters {
    pub fn new(tenant: &str, cfg: &ArchiveConfig, stores: StoreSet) -> DeadLetters {
        DeadLetters {
            tenant: tenant.to_string(),
            stores,
            compression: cfg.compression,
            level: cfg.compression_level,
        }
    }

    /// Writes one refused batch (NDJSON lines) as one object; returns its path.
    pub async fn write(
        &self,
        backend: &str,
        status: &str,
        ndjson: &[u8],
    ) -> Result<String, String> {
        let body = Bytes::from(compress(self.compression, self.level, ndjson));
        let suffix = self.compression.suffix();
        let name = object_name(&partition_of(Utc::now().timestamp_millis()), suffix);
        let name = name.trim_end_matches(suffix);
        let path = ObjectPath::from(format!(
            "dead-letter/{}/{name}-{backend}-{status}{suffix}",
            self.tenant
        ));
        // One pass over the archive's stores (the caller retries or counts the loss).
        self.stores
            .try_put(&path, &body, None)
            .await
            .map(|s| format!("{}/{path}", s.name))
    }
}

fn partition_of(ms: i64) -> String {
    let t: DateTime<Utc> = DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now);
    t.format("dt=%Y-%m-%d/hour=%H").to_string()
}

/// Object names: time, this process's random id, a sequence number; unique
/// across restarts and across several proxies writing the same bucket.
fn object_name(partition: &str, suffix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static INSTANCE: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{:016x}", rand::random::<u64>()));
    let now = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    format!(
        "{partition}/{now}-{}-{:06}{suffix}",
        *INSTANCE,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<ArchiveChunk>,
        drain: CancellationToken,
    ) {
        loop {
            let deadline = self.open.as_ref().map(|o| o.deadline);
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(c) => self.add(c).await,
                    None => break,
                },
                _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => self.close_object().await,
                _ = drain.cancelled() => {
                    // Shutdown: take what is queued, then write the last object.
                    rx.close();
                    while let Some(c) = rx.recv().await {
                        self.add(c).await;
                    }
                    break;
                }
            }
        }
        self.close_object().await;
    }

    async fn add(&mut self, chunk: ArchiveChunk) {
        let partition = partition_of(chunk.received_at_ms);
        if self.open.as_ref().is_some_and(|o| o.partition != partition) {
            self.close_object().await;
        }
        let open = self.open.get_or_insert_with(|| OpenObject {
            partition,
            gz: Some(Encoder::new(self.compression, self.level, 256 * 1024)),
            raw_bytes: 0,
            events: 0,
            deadline: Instant::now() + self.max_object_age,
            oldest_ms: chunk.received_at_ms,
            progress: Vec::new(),
        });
        // Compression is CPU work: on delivery's threads, not the async workers.
        let mut gz = open
            .gz
            .take()
            .expect("the object's encoder is back after each chunk");
        let lines = chunk.lines.clone();
        let (workers, lane) = crate::workers::Workers::delivery();
        open.gz = Some(
            workers
                .run(*lane, move || {
                    gz.write(&lines);
                    gz
                })
                .await
                .expect("compressing into memory does not panic"),
        );
        open.oldest_ms = open.oldest_ms.min(chunk.received_at_ms);
        open.raw_bytes += chunk.lines.len();
        open.events += chunk.events;
        // The chunk's hold moves to the object.
        open.progress.extend(chunk.progress);
        drop(chunk.reservation);
        if open.raw_bytes >= self.max_object_bytes {
            self.close_object().await;
        }
    }

    /// Finishes the open object and writes it, retrying until the store takes it.
    async fn close_object(&mut self) {
        let Some(open) = self.open.take() else { return };
        let body = Bytes::from(
            open.gz
                .expect("the object's encoder is back after each chunk")
                .finish(),
        );
        let name = object_name(&open.partition, self.compression.suffix());
        let path = ObjectPath::from(format!("{}/{name}", self.tenant));
        let taken_by = self.stores.put(&path, body.clone(), open.oldest_ms).await;
        crate::wal::release_all(&open.progress);
        METRICS
            .archived_events
            .with_label_values(&[&self.tenant])
            .inc_by(open.events as u64);
        METRICS
            .archived_bytes
            .with_label_values(&[&self.tenant])
            .inc_by(open.raw_bytes as u64);
        METRICS
            .archive_objects
            .with_label_values(&[&self.tenant])
            .inc();
        tracing::debug!(tenant = %self.tenant, store = %taken_by.name, object = %path, events = open.events, bytes = body.len(), "archive object written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, Dur, NamedStore};
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    fn cfg(root: &std::path::Path, max_bytes: u64) -> ArchiveConfig {
        ArchiveConfig {
            enabled: true,
            store: Some(StoreConfig::Local {
                root: root.to_path_buf(),
            }),
            stores: vec![],
            failover: Default::default(),
            max_object_bytes: ByteSize(max_bytes),
            max_object_age: Dur(Duration::from_secs(3600)),
            compression: ArchiveCompression::Gzip,
            compression_level: 1,
            max_queued_bytes: ByteSize::mib(1),
        }
    }

    /// The one local store of `c`, as the writer takes it.
    fn local_set(c: &ArchiveConfig) -> StoreSet {
        let named = NamedStore {
            name: "local".into(),
            store: c.store.clone().unwrap(),
        };
        Stores::default().set("acme", &[named], c.failover).unwrap()
    }

    #[test]
    fn stores_differing_only_in_credentials_are_not_shared() {
        let s3 = |secret: &str| {
            NamedStore {
            name: "s3".into(),
            store: serde_yaml::from_str(&format!(
                "{{type: s3, bucket: logs, endpoint: \"http://127.0.0.1:9\", allow_http: true, path_style: true, \
                 region: us-east-1, access_key_id: AKIA1, secret_access_key: {secret}}}"
            ))
            .unwrap(),
        }
        };
        let stores = Stores::default();
        let a = stores.get_or_open(&s3("first-secret")).unwrap();
        let b = stores.get_or_open(&s3("second-secret")).unwrap();
        assert_eq!(
            stores.len(),
            2,
            "each set of credentials gets its own client"
        );
        assert!(!Arc::ptr_eq(&a, &b));
        let again = stores.get_or_open(&s3("first-secret")).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "equal configs share one client");
        assert_eq!(stores.len(), 2);
    }

    fn objects(root: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    out.push(p)
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn writes_partitioned_objects_by_size_and_on_drain() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), 40);
        let drain = CancellationToken::new();
        let (h, task) = spawn_writer("acme", &c, local_set(&c), drain.clone());
        // 2024-01-02 03:xx UTC
        let t = 1704164645678;
        for i in 0..5 {
            let line = format!("{{\"message\":\"event number {i}\"}}\n");
            let r = h.reserve(line.len()).unwrap();
            h.send(ArchiveChunk {
                lines: Bytes::from(line),
                events: 1,
                received_at_ms: t,
                reservation: r,
                progress: None,
            })
            .unwrap();
        }
        drain.cancel();
        task.await.unwrap();
        let objs = objects(dir.path());
        assert!(objs.len() >= 2, "size limit splits objects: {objs:?}");
        let mut all = String::new();
        for o in &objs {
            let rel = o
                .strip_prefix(dir.path())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(rel.starts_with("acme/dt=2024-01-02/hour=03/"), "{rel}");
            assert!(rel.ends_with(".ndjson.gz"), "{rel}");
            MultiGzDecoder::new(std::fs::File::open(o).unwrap())
                .read_to_string(&mut all)
                .unwrap();
        }
        for i in 0..5 {
            assert!(all.contains(&format!("event number {i}")));
        }
        assert_eq!(all.lines().count(), 5);
    }

    #[tokio::test]
    async fn zstd_objects_hold_the_same_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), 1 << 20);
        c.compression = ArchiveCompression::Zstd;
        c.compression_level = 3;
        let drain = CancellationToken::new();
        let (h, task) = spawn_writer("acme", &c, local_set(&c), drain.clone());
        let lines = "{\"message\":\"one\"}\n{\"message\":\"two\"}\n";
        h.send(ArchiveChunk {
            lines: Bytes::from(lines),
            events: 2,
            received_at_ms: 1704164645678,
            reservation: h.reserve(lines.len()).unwrap(),
            progress: None,
        })
        .unwrap();
        drain.cancel();
        task.await.unwrap();
        let objs = objects(dir.path());
        assert_eq!(objs.len(), 1);
        assert!(
            objs[0].to_str().unwrap().ends_with(".ndjson.zst"),
            "{objs:?}"
        );
        let got = zstd::stream::decode_all(std::fs::File::open(&objs[0]).unwrap()).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), lines);
    }
}
