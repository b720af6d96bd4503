//! Reading a tenant's archive for a job: listing the objects of the hours it
//! covers (by their `dt=/hour=` prefixes, never the whole bucket), and
//! scanning them, in the listing's order, for the events it selects.
//!
//! Scanning runs on a blocking thread (decompression and JSON are CPU work):
//! it fetches one object at a time, decompresses it as a stream, and hands
//! the selected lines over a small bounded channel in [`Piece`]s, each ending
//! at a [`Cursor`]; the job's sender waits for the route, so a slow backend
//! slows the reading, and memory stays at a few pieces.
use super::checkpoint::{Cursor, Object, MAX_OBJECTS};
use super::spec::Spec;
use crate::archive::ArchiveStore;
use crate::event::{decode_entry, PayloadLimits};
use crate::rules::query::Query;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The largest object read (compressed); the writer's objects are 64 MiB
/// uncompressed by default, a few MiB compressed.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;
/// The longest line read; longer ones are counted invalid and skipped.
pub const MAX_LINE_BYTES: usize = 8 << 20;
/// A piece is handed over after at most this many lines read, matched or not,
/// so the job's position moves through stretches with nothing selected.
const LINES_PER_PIECE: u64 = 20_000;

/// The objects of `spec`'s partitions across the archive's `stores` (an object
/// goes to one store, whichever was up; a name found in two is read from the
/// first), sorted by path (partition, then the writer's UTC time in the
/// name): the order every run reads them in. A store that cannot be listed
/// fails the job: reading the others only would miss its hours silently.
pub async fn list(
    stores: &[Arc<ArchiveStore>],
    spec: &Spec,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Object>, String> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (s, prefix) in stores
        .iter()
        .flat_map(|s| spec.partitions(now).into_iter().map(move |p| (s, p)))
    {
        let p = ObjectPath::from(prefix.as_str());
        let mut listing = s.store.list(Some(&p));
        while let Some(meta) = listing.try_next().await.map_err(|e| {
            let e = s.mask(e.to_string());
            format!("listing {prefix} in archive store {}: {e}", s.name)
        })? {
            let path = meta.location.to_string();
            // Objects being written (local stores stage them under another name) are not archive objects yet.
            if !(path.ends_with(".ndjson.gz") || path.ends_with(".ndjson.zst")) {
                continue;
            }
            if !seen.insert(path.clone()) {
                continue;
            }
            out.push(Object {
                store: s.name.clone(),
                path,
                size: meta.size,
            });
            if out.len() > MAX_OBJECTS {
                return Err(format!(
                    "more than {MAX_OBJECTS} archive objects in the range: split it into shorter jobs"
                ));
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// What the scanner selects: events in the range that match the query.
pub struct Filter {
    pub spec: Spec,
    pub query: Option<Query>,
}

impl Filter {
    pub fn new(spec: &Spec) -> Result<Filter, String> {
        let query = match &spec.query {
            None => None,
            Some(q) => Some(Query::parse(q).map_err(|e| format!("query {q:?}: {e}"))?),
        };
        Ok(Filter {
            spec: spec.clone(),
            query,
        })
    }

    /// Whether the NDJSON line `line` is selected; None when it is not a log object.
    pub fn select(&self, line: &[u8]) -> Option<bool> {
        let limits = PayloadLimits {
            max_events: 1,
            max_log_bytes: usize::MAX,
            // An archived event always has its timestamp; one without is outside every range.
            received_at_ms: i64::MIN,
        };
        let ev = decode_entry(line, limits).ok()?;
        Some(self.spec.in_range(ev.timestamp) && self.query.as_ref().is_none_or(|q| q.matches(&ev)))
    }
}

/// Selected lines read up to `end`.
#[derive(Default)]
pub struct Piece {
    /// The selected lines, each followed by `\n`.
    pub lines: Vec<u8>,
    /// Each selected line in `lines`, without its `\n`.
    pub ranges: Vec<Range<u32>>,
    /// Every line before this was read.
    pub end: Cursor,
    /// Lines read and their bytes; lines that were not a log object.
    pub scanned: u64,
    pub scanned_bytes: u64,
    pub invalid: u64,
    /// Bytes of the selected lines (without their `\n`).
    pub matched_bytes: u64,
    /// Objects this piece finished.
    pub objects_done: usize,
}

/// How big a piece may grow before it is handed over.
#[derive(Debug, Clone, Copy)]
pub struct PieceLimits {
    pub events: usize,
    pub bytes: usize,
}

/// The job's reading side, on a blocking thread: from `start`, every object of
/// `objects` in order. Returns once all are read (the last piece ends at
/// `objects.len()`), or the job stopped listening (the receiver was dropped).
pub fn scan(
    rt: tokio::runtime::Handle,
    stores: Vec<Arc<ArchiveStore>>,
    objects: Arc<Vec<Object>>,
    start: Cursor,
    filter: Filter,
    limits: PieceLimits,
    tx: mpsc::Sender<Piece>,
) -> Result<(), String> {
    for index in start.object..objects.len() {
        let object = &objects[index];
        let listed = match object.store.as_str() {
            "" => stores.first(),
            name => stores.iter().find(|s| s.name == name),
        }
        .ok_or_else(|| format!("{}: its archive store {:?} is no longer in the tenant's archive; run the job again with restart to list again", object.path, object.store))?;
        // The store it was listed in first; the others if it is gone from
        // there (a second copy a failed write left, cleaned up since).
        let order: Vec<&ArchiveStore> = std::iter::once(listed.as_ref())
            .chain(
                stores
                    .iter()
                    .filter(|s| !Arc::ptr_eq(s, listed))
                    .map(|s| s.as_ref()),
            )
            .collect();
        let body = rt.block_on(fetch(&order, object))?;
        let skip = if index == start.object { start.line } else { 0 };
        if !scan_object(object, index, &body, skip, &filter, limits, &tx)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads one object (compressed) from the first of `stores` that has it, with
/// a few retries for a store that hiccups.
async fn fetch(stores: &[&ArchiveStore], object: &Object) -> Result<bytes::Bytes, String> {
    if object.size > MAX_OBJECT_BYTES {
        return Err(format!(
            "{}: {} bytes, more than the {MAX_OBJECT_BYTES} an object may have",
            object.path, object.size
        ));
    }
    let path = ObjectPath::from(object.path.as_str());
    for s in stores {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            let got = async { s.store.get(&path).await?.bytes().await }.await;
            match got {
                Ok(b) => return Ok(b),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) if attempt >= 4 => {
                    let e = s.mask(e.to_string());
                    return Err(format!(
                        "reading {} from archive store {}: {e}",
                        object.path, s.name
                    ));
                }
                Err(e) => {
                    tracing::warn!(object = %object.path, store = %s.name, error = %s.mask(e.to_string()), retry_in = ?wait, "rehydration: reading an archive object failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }
    Err(format!(
        "{}: the object is gone from the archive (deleted since the job listed it); run the job again with restart to list again",
        object.path
    ))
}

/// The decompressed stream of an object, by its name's suffix.
fn decoder<'a>(object: &Object, body: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    if object.path.ends_with(".gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(body)))
    } else {
        zstd::stream::read::Decoder::new(body)
            .map(|d| Box::new(d) as Box<dyn Read>)
            .map_err(|e| format!("{}: {e}", object.path))
    }
}

/// Scans object `index` past its first `skip` lines. False: the job stopped listening.
fn scan_object(
    object: &Object,
    index: usize,
    body: &[u8],
    skip: u64,
    filter: &Filter,
    limits: PieceLimits,
    tx: &mpsc::Sender<Piece>,
) -> Result<bool, String> {
    let mut reader = BufReader::with_capacity(256 * 1024, decoder(object, body)?);
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut piece = Piece::default();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("{}: line {}: {e}", object.path, number + 1))?;
        if n == 0 {
            break;
        }
        let overlong = line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n');
        if overlong {
            // Read the rest of the overlong line so the next one starts where it should.
            let mut sink = Vec::new();
            loop {
                sink.clear();
                let m = (&mut reader)
                    .take(MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut sink)
                    .map_err(|e| format!("{}: line {}: {e}", object.path, number + 1))?;
                if m == 0 || sink.last() == Some(&b'\n') {
                    break;
                }
            }
            line.clear();
        }
        number += 1;
        if number <= skip {
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        piece.scanned += 1;
        piece.scanned_bytes += text.len() as u64;
        match (text.is_empty(), filter.select(text)) {
            (true, _) if overlong => piece.invalid += 1,
            (true, _) => {}
            (false, None) => piece.invalid += 1,
            (false, Some(false)) => {}
            (false, Some(true)) => {
                let start = piece.lines.len() as u32;
                piece.lines.extend_from_slice(text);
                piece.ranges.push(start..piece.lines.len() as u32);
                piece.lines.push(b'\n');
                piece.matched_bytes += text.len() as u64;
            }
        }
        if piece.ranges.len() >= limits.events
            || piece.lines.len() >= limits.bytes
            || piece.scanned >= LINES_PER_PIECE
        {
            piece.end = Cursor {
                object: index,
                line: number,
            };
            if tx.blocking_send(std::mem::take(&mut piece)).is_err() {
                return Ok(false);
            }
        }
    }
    piece.end = Cursor {
        object: index + 1,
        line: 0,
    };
    piece.objects_done = 1;
    Ok(tx.blocking_send(piece).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    fn spec(from: &str, to: &str, query: Option<&str>) -> Spec {
        let ms = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_millis()
        };
        Spec {
            tenant: "acme".into(),
            from_ms: ms(from),
            to_ms: ms(to),
            query: query.map(String::from),
            to_backend: None,
            late_arrival_s: 3600,
        }
    }

    fn gz(lines: &str) -> Vec<u8> {
        crate::archive::compress(crate::config::ArchiveCompression::Gzip, 1, lines.as_bytes())
    }

    fn line(ts: &str, service: &str, n: u32) -> String {
        format!("{{\"timestamp\":\"{ts}\",\"service\":\"{service}\",\"message\":\"m{n}\"}}\n")
    }

    /// `store` as an archive's one store.
    fn wrap(store: Arc<dyn ObjectStore>) -> Vec<Arc<ArchiveStore>> {
        let cfg = crate::config::StoreConfig::Local {
            root: "/nonexistent".into(),
        };
        vec![Arc::new(ArchiveStore::new("primary", &cfg, store))]
    }

    #[tokio::test]
    async fn lists_across_stores_each_name_once_and_reads_each_from_its_store() {
        let (a, b) = (Arc::new(InMemory::new()), Arc::new(InMemory::new()));
        let p = |n: &str| format!("acme/dt=2026-12-03/hour=09/20261203T0910{n}.000Z-a-0.ndjson.gz");
        put(&a, &p("01"), gz(&line("2026-12-03T09:10:01Z", "web", 1))).await;
        put(&b, &p("02"), gz(&line("2026-12-03T09:10:02Z", "web", 2))).await;
        put(&a, &p("03"), gz(&line("2026-12-03T09:10:03Z", "web", 3))).await;
        // Written to both (a write that failed ambiguously, then went to the next store).
        put(&a, &p("04"), gz(&line("2026-12-03T09:10:04Z", "web", 4))).await;
        put(&b, &p("04"), gz(&line("2026-12-03T09:10:04Z", "web", 4))).await;
        let cfg = crate::config::StoreConfig::Local {
            root: "/nonexistent".into(),
        };
        let stores = vec![
            Arc::new(ArchiveStore::new(
                "primary",
                &cfg,
                a.clone() as Arc<dyn ObjectStore>,
            )),
            Arc::new(ArchiveStore::new("dr", &cfg, b as Arc<dyn ObjectStore>)),
        ];
        let s = spec("2026-12-03T09:00:00Z", "2026-12-03T10:00:00Z", None);
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .to_utc();
        let objects = list(&stores, &s, now).await.unwrap();
        let got: Vec<(&str, &str)> = objects
            .iter()
            .map(|o| (o.store.as_str(), o.path.as_str()))
            .collect();
        let want = [
            ("primary", p("01")),
            ("dr", p("02")),
            ("primary", p("03")),
            ("primary", p("04")),
        ];
        let want: Vec<(&str, &str)> = want.iter().map(|(s, p)| (*s, p.as_str())).collect();
        assert_eq!(got, want);
        // The first store's copy of 04 is cleaned up after the listing: read from the other.
        a.delete(&ObjectPath::from(p("04"))).await.unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        let rt = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            scan(
                rt,
                stores,
                Arc::new(objects),
                Cursor::default(),
                Filter::new(&s).unwrap(),
                PieceLimits {
                    events: 100,
                    bytes: 1 << 20,
                },
                tx,
            )
        });
        let mut lines = 0;
        while let Some(piece) = rx.recv().await {
            lines += piece.ranges.len();
        }
        task.await.unwrap().unwrap();
        assert_eq!(lines, 4, "each event once");
    }

    async fn put(store: &InMemory, path: &str, body: Vec<u8>) {
        store
            .put(&ObjectPath::from(path), PutPayload::from(body))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn lists_only_the_partitions_of_the_range_in_a_stable_order() {
        let store = InMemory::new();
        for p in [
            "acme/dt=2026-12-03/hour=09/20261203T091000.000Z-b-000002.ndjson.gz",
            "acme/dt=2026-12-03/hour=09/20261203T090500.000Z-a-000001.ndjson.zst",
            "acme/dt=2026-12-03/hour=08/20261203T085900.000Z-a-000000.ndjson.gz",
            "acme/dt=2026-12-03/hour=10/20261203T100100.000Z-a-000003.ndjson.gz",
            // Outside: too early, too late, another tenant, a dead letter, a staging file.
            "acme/dt=2026-12-03/hour=07/x.ndjson.gz",
            "acme/dt=2026-12-03/hour=11/x.ndjson.gz",
            "acme2/dt=2026-12-03/hour=09/x.ndjson.gz",
            "dead-letter/acme/dt=2026-12-03/hour=09/x-b-400.ndjson.gz",
            "acme/dt=2026-12-03/hour=09/y.ndjson.gz#1",
        ] {
            put(&store, p, gz("")).await;
        }
        let s = spec("2026-12-03T09:00:00Z", "2026-12-03T09:30:00Z", None);
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .to_utc();
        let got: Vec<String> = list(&wrap(Arc::new(store)), &s, now)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.path)
            .collect();
        assert_eq!(
            got,
            vec![
                "acme/dt=2026-12-03/hour=08/20261203T085900.000Z-a-000000.ndjson.gz",
                "acme/dt=2026-12-03/hour=09/20261203T090500.000Z-a-000001.ndjson.zst",
                "acme/dt=2026-12-03/hour=09/20261203T091000.000Z-b-000002.ndjson.gz",
                "acme/dt=2026-12-03/hour=10/20261203T100100.000Z-a-000003.ndjson.gz",
            ]
        );
    }

    #[test]
    fn the_filter_reads_the_events_own_timestamp_and_the_query() {
        let f = Filter::new(&spec(
            "2026-12-03T09:00:00Z",
            "2026-12-03T10:00:00Z",
            Some("service:web"),
        ))
        .unwrap();
        let sel = |l: String| f.select(l.trim_end().as_bytes());
        assert_eq!(sel(line("2026-12-03T09:00:00Z", "web", 0)), Some(true));
        assert_eq!(sel(line("2026-12-03T09:59:59.999Z", "web", 0)), Some(true));
        assert_eq!(sel(line("2026-12-03T10:00:00Z", "web", 0)), Some(false));
        assert_eq!(sel(line("2026-12-03T08:59:59Z", "web", 0)), Some(false));
        assert_eq!(sel(line("2026-12-03T09:30:00Z", "db", 0)), Some(false));
        assert_eq!(
            f.select(b"{\"message\":\"no timestamp\",\"service\":\"web\"}"),
            Some(false)
        );
        assert_eq!(f.select(b"not json"), None);
    }

    /// Scans `objects` of `store` from `start`; the pieces in order.
    async fn scan_all(
        store: Arc<dyn ObjectStore>,
        objects: Vec<Object>,
        start: Cursor,
        filter: Filter,
        limits: PieceLimits,
    ) -> Vec<Piece> {
        let (tx, mut rx) = mpsc::channel(2);
        let rt = tokio::runtime::Handle::current();
        let objects = Arc::new(objects);
        let task = tokio::task::spawn_blocking(move || {
            scan(rt, wrap(store), objects, start, filter, limits, tx)
        });
        let mut out = Vec::new();
        while let Some(p) = rx.recv().await {
            out.push(p);
        }
        task.await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn scanning_resumes_at_a_cursor_without_duplicates_or_gaps() {
        let mem = Arc::new(InMemory::new());
        let mut objects = Vec::new();
        let mut n = 0;
        for (i, zst) in [(0, false), (1, true), (2, false)] {
            let mut text = String::new();
            for _ in 0..7 {
                let service = if n % 2 == 0 { "web" } else { "db" };
                text.push_str(&line("2026-12-03T09:10:00Z", service, n));
                n += 1;
            }
            text.push_str("garbage line\n");
            let (body, suffix) = match zst {
                true => (zstd::encode_all(text.as_bytes(), 3).unwrap(), "zst"),
                false => (gz(&text), "gz"),
            };
            let path = format!("acme/dt=2026-12-03/hour=09/{i}.ndjson.{suffix}");
            objects.push(Object {
                store: String::new(),
                path: path.clone(),
                size: body.len() as u64,
            });
            put(&mem, &path, body).await;
        }
        let s = spec(
            "2026-12-03T09:00:00Z",
            "2026-12-03T10:00:00Z",
            Some("service:web"),
        );
        let limits = PieceLimits {
            events: 2,
            bytes: 1 << 20,
        };
        let store: Arc<dyn ObjectStore> = mem;
        let all = scan_all(
            store.clone(),
            objects.clone(),
            Cursor::default(),
            Filter::new(&s).unwrap(),
            limits,
        )
        .await;
        let messages = |pieces: &[Piece]| -> Vec<String> {
            pieces
                .iter()
                .flat_map(|p| {
                    p.ranges.iter().map(|r| {
                        let v: serde_json::Value =
                            serde_json::from_slice(&p.lines[r.start as usize..r.end as usize])
                                .unwrap();
                        v["message"].as_str().unwrap().to_string()
                    })
                })
                .collect()
        };
        let every: Vec<String> = (0..21)
            .filter(|n| n % 2 == 0)
            .map(|n| format!("m{n}"))
            .collect();
        assert_eq!(messages(&all), every);
        assert!(all.iter().all(|p| p.ranges.len() <= 2));
        assert_eq!(all.iter().map(|p| p.invalid).sum::<u64>(), 3);
        assert_eq!(all.iter().map(|p| p.objects_done).sum::<usize>(), 3);
        assert_eq!(all.last().unwrap().end, Cursor { object: 3, line: 0 });

        // From every piece's end, the rest is exactly what follows it.
        for k in 0..all.len() {
            let start = all[k].end;
            let rest = scan_all(
                store.clone(),
                objects.clone(),
                start,
                Filter::new(&s).unwrap(),
                limits,
            )
            .await;
            assert_eq!(
                messages(&rest),
                messages(&all[k + 1..]),
                "resumed at {start:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_deleted_object_fails_the_scan_by_name() {
        let objects = vec![Object {
            store: String::new(),
            path: "acme/dt=2026-12-03/hour=09/gone.ndjson.gz".into(),
            size: 10,
        }];
        let s = spec("2026-12-03T09:00:00Z", "2026-12-03T10:00:00Z", None);
        let (tx, _rx) = mpsc::channel(2);
        let rt = tokio::runtime::Handle::current();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let e = tokio::task::spawn_blocking(move || {
            scan(
                rt,
                wrap(store),
                Arc::new(objects),
                Cursor::default(),
                Filter::new(&s).unwrap(),
                PieceLimits {
                    events: 10,
                    bytes: 1 << 20,
                },
                tx,
            )
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            e.contains("gone.ndjson.gz") && e.contains("gone from the archive"),
            "{e}"
        );
    }
}
