//! The stage chain of one tenant. A request's events travel as one `Batch`
//! through the tenant's ordered list of stages (rate limit, Wasm plugins,
//! exclusion rules, daily quota), each holding that tenant's state, each of
//! which may change events, set their disposition, or refuse the request.
//! Every tenant has its own chain, which the authenticated tenant carries, so
//! no stage looks its tenant up per batch. What a stage is (`Stage`,
//! `Rejection`) lives beside the batch, in event/stage.rs.
//!
//! Room is found before the request is decoded (`Chain::ready`), so a refusal
//! costs nothing; what the stages charged is committed only when the batch is
//! taken (given back otherwise). Where the batch goes then depends on the
//! tenant's buffer:
//! - `buffer.type: disk` (the default): every event not dropped goes,
//!   serialized once, into the tenant's log (buffer/) as one record, answered
//!   per the ack mode (`Chain::settle`); the log's feeds carry the record to
//!   the archive and the backend route. `ready` waits while the log is full.
//! - `buffer.type: memory`: the archive tee sends every event not dropped to
//!   the tenant's archive queue and every event still marked `Index` to its
//!   backend route queue, in which `ready` took room.

use crate::archive::{ArchiveChunk, ArchiveHandle};
use crate::budget::Reservation;
use crate::buffer::{record, BufferError, TenantLog, Wait};
use crate::event::{Batch, Disposition, Why};
use crate::observe::Watcher;
use crate::sink::{ForwardChunk, RouteSlot};
use crate::workers::{Lane, Workers};
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;

/// The stage seam lives beside the batch (event/stage.rs), so the stages need
/// not depend on the chain; re-exported for the chain's callers.
pub use crate::event::stage::{RejectReason, Rejection, Stage};

/// Where a tenant's events go after the stages.
pub struct TenantOutputs {
    pub archive: Option<ArchiveHandle>,
    pub route: RouteSlot,
    /// The tenant's disk buffer: when set, batches go into it, and its feeds
    /// carry them to `archive` and `route` (none: straight to their memory queues).
    pub log: Option<Arc<TenantLog>>,
}

/// A batch the chain took. `Chain::settle` answers it: at once, or once its
/// log record is synced (or delivered), committing what the stages charged
/// only then.
pub struct Taken {
    pub dispatched: Dispatched,
    wait: Option<(Wait, Batch)>,
}

impl Taken {
    /// Whether answering it waits (for its log record).
    pub fn waits(&self) -> bool {
        self.wait.is_some()
    }
}

/// Room in a tenant's memory queues taken before its request was decoded
/// ([`Chain::ready`]); [`Chain::run`] takes what is missing.
#[derive(Default)]
pub struct Room {
    archive: Option<Reservation>,
    /// With the route it was taken in (a reload may swap the tenant's route meanwhile).
    route: Option<(crate::sink::RouteHandle, Reservation)>,
}

/// One tenant's stages and outputs.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    outputs: TenantOutputs,
    /// Where the batches run when a stage blocks (none: none does), and the
    /// tenant's queue there.
    workers: Option<(Arc<Workers>, Lane)>,
    /// Who looks at the batches taken (live tail, patterns).
    watchers: Vec<Arc<dyn Watcher>>,
}

/// How many events of a batch went where.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    pub archived: usize,
    pub indexed: usize,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>, outputs: TenantOutputs) -> Arc<Chain> {
        Chain::with_workers(stages, outputs, None, Vec::new())
    }

    /// A chain whose batches run on `workers` (each chain gets a queue of its
    /// own there; none: where they are submitted), shown to `watchers` once taken.
    pub fn with_workers(
        stages: Vec<Box<dyn Stage>>,
        outputs: TenantOutputs,
        workers: Option<Arc<Workers>>,
        watchers: Vec<Arc<dyn Watcher>>,
    ) -> Arc<Chain> {
        let workers = workers.map(|w| {
            let lane = w.lane();
            (w, lane)
        });
        Arc::new(Chain {
            stages,
            outputs,
            workers,
            watchers,
        })
    }

    /// Runs `f` (a request's decoding and [`Chain::run`]) where the tenant's
    /// batches belong: on its intake threads (right here without them, in tests).
    pub async fn place<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<R, Rejection> + Send + 'static,
    ) -> Result<R, Rejection> {
        match &self.workers {
            Some((w, lane)) => w.run(*lane, f).await.unwrap_or_else(|| {
                crate::telemetry::faults::task_failed(
                    crate::telemetry::faults::Task::Stage,
                    "a tenant's stage worker",
                    &"a stage panicked on a request's batch (nothing of it was taken)",
                );
                Err(Rejection::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    RejectReason::InternalError,
                    "a pipeline stage failed unexpectedly; retry later",
                ))
            }),
            _ => f(),
        }
    }

    /// Takes room for about `bytes` in the tenant's archive and route queues,
    /// waiting for it until `deadline`; with a disk buffer, waits while it is
    /// full (`when_full: block`). So a request meeting a full queue waits with
    /// its body undecoded, and one that finds no room by `deadline` is refused
    /// before it is decoded: a refusal costs next to nothing.
    pub async fn ready(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Room, Rejection> {
        let out = &self.outputs;
        if let Some(log) = &out.log {
            log.wait_for_room(deadline)
                .await
                .map_err(|e| buffer_refusal(&e))?;
            return Ok(Room::default());
        }
        let route = out.route.read().unwrap().clone();
        let archive =
            match &out.archive {
                Some(a) => Some(a.reserve_until(bytes, deadline).await.ok_or_else(|| {
                    busy(RejectReason::ArchiveBackpressure, "the archive is behind")
                })?),
                None => None,
            };
        let taken = route
            .reserve_until(bytes, deadline)
            .await
            .ok_or_else(|| busy(RejectReason::BackendBackpressure, "the backend is behind"))?;
        Ok(Room {
            archive,
            route: Some((route, taken)),
        })
    }

    /// Runs every stage, then tees the batch to archive and backend. Either all
    /// of the batch is taken or none of it (a Rejection), and a refused batch
    /// costs its tenant nothing: room in the archive and backend queues (or in
    /// the disk buffer) is checked before any stage charges a rate limit or a
    /// quota (so a full queue refuses first), and what the stages charged is
    /// given back if the batch is refused after all (it grew past the room
    /// taken, its log write failed, or the proxy is shutting down).
    pub fn run(&self, batch: Batch, room: Room) -> Result<Taken, Rejection> {
        match &self.outputs.log {
            Some(log) => self.run_logged(batch, log),
            None => self.run_in_memory(batch, room).map(|dispatched| Taken {
                dispatched,
                wait: None,
            }),
        }
    }

    /// Answers a taken batch: waits for its log record per the ack mode,
    /// then commits what its stages charged (or gives it back and refuses).
    pub async fn settle(&self, taken: Taken) -> Result<Dispatched, Rejection> {
        let Some((wait, batch)) = taken.wait else {
            return Ok(taken.dispatched);
        };
        match wait.done().await {
            Ok(()) => {
                self.stages.iter().for_each(|s| s.commit(&batch));
                Ok(taken.dispatched)
            }
            // In the log, so delivered later: charged as taken, though answered 503.
            Err(e @ BufferError::NotDelivered(_)) => {
                self.stages.iter().for_each(|s| s.commit(&batch));
                Err(buffer_refusal(&e))
            }
            Err(e) => {
                self.stages.iter().for_each(|s| s.refund(&batch));
                Err(buffer_refusal(&e))
            }
        }
    }

    fn run_stages(&self, batch: &mut Batch) -> Result<(), Rejection> {
        if self.watchers.iter().any(|w| w.wants_reasons()) {
            batch.why = Some(vec![Why::Untouched; batch.events.len()]);
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if let Err(r) = stage.process(batch) {
                self.stages[..i].iter().for_each(|s| s.refund(batch));
                return Err(r);
            }
        }
        Ok(())
    }

    /// The disk buffer: the batch's kept lines go into the tenant's log as one
    /// record, which the log's feeds carry to the archive and the route.
    fn run_logged(&self, mut batch: Batch, log: &Arc<TenantLog>) -> Result<Taken, Rejection> {
        if !log.admit().map_err(|e| buffer_refusal(&e))? {
            // drop_newest: answered, nothing of it kept or charged.
            log.dropped(batch.events.len());
            return Ok(Taken {
                dispatched: Dispatched::default(),
                wait: None,
            });
        }
        self.run_stages(&mut batch)?;
        // The lines go straight into the log record.
        let mut payload = record::begin(batch.meta.received_at_ms, lines_estimate(&batch));
        let (indexed, kept) = serialize(&batch, &mut payload);
        let dispatched = Dispatched {
            archived: if self.outputs.archive.is_some() {
                kept
            } else {
                0
            },
            indexed: indexed.len(),
        };
        if kept == 0 {
            self.stages.iter().for_each(|s| s.commit(&batch));
            self.show(&batch);
            return Ok(Taken {
                dispatched,
                wait: None,
            });
        }
        record::finish(&mut payload, &indexed);
        let wait = match log.submit(payload, kept as u32) {
            Ok(w) => w,
            Err(e) => {
                self.stages.iter().for_each(|s| s.refund(&batch));
                return Err(buffer_refusal(&e));
            }
        };
        self.show(&batch);
        // What commit and refund need is in the charges: the events can go now.
        batch.events = Vec::new();
        Ok(Taken {
            dispatched,
            wait: Some((wait, batch)),
        })
    }

    /// The memory buffer: room in the archive and route queues is taken first
    /// (what `room` does not hold yet).
    fn run_in_memory(&self, mut batch: Batch, room: Room) -> Result<Dispatched, Rejection> {
        let out = &self.outputs;
        // One route for the whole batch (a config reload may swap it meanwhile):
        // the reservation belongs to the route that gets the chunk.
        let (route, route_res) = match room.route {
            Some((route, r)) => (route, Some(r)),
            None => (out.route.read().unwrap().clone(), None),
        };
        // The events as NDJSON take about what the request's JSON took.
        let estimate = batch.meta.body_bytes.max(batch.events.len() * 64);
        let archive_res =
            match (&out.archive, room.archive) {
                (Some(_), Some(r)) => Some(r),
                (Some(a), None) => Some(a.reserve(estimate).ok_or_else(|| {
                    busy(RejectReason::ArchiveBackpressure, "the archive is behind")
                })?),
                (None, _) => None,
            };
        let route_res = match route_res {
            Some(r) => r,
            None => route
                .reserve(estimate)
                .ok_or_else(|| busy(RejectReason::BackendBackpressure, "the backend is behind"))?,
        };
        self.run_stages(&mut batch)?;
        match self.dispatch(&batch, &route, archive_res, route_res) {
            Ok(d) => {
                self.stages.iter().for_each(|s| s.commit(&batch));
                self.show(&batch);
                Ok(d)
            }
            Err(r) => {
                self.stages.iter().for_each(|s| s.refund(&batch));
                Err(r)
            }
        }
    }

    /// Shows a taken batch to the tenant's watchers.
    fn show(&self, batch: &Batch) {
        self.watchers.iter().for_each(|w| w.watch(batch));
    }

    fn dispatch(
        &self,
        batch: &Batch,
        route: &crate::sink::RouteHandle,
        mut archive_res: Option<Reservation>,
        mut route_res: Reservation,
    ) -> Result<Dispatched, Rejection> {
        let out = &self.outputs;
        let mut buf = Vec::with_capacity(lines_estimate(batch));
        let (indexed_ranges, kept) = serialize(batch, &mut buf);
        let lines = Bytes::from(buf);
        let archived = if out.archive.is_some() { kept } else { 0 };
        let indexed = indexed_ranges.len();

        // Make the room taken earlier what the lines need: give back the excess,
        // or take more if there is; a refusal here still takes nothing.
        if let (Some(a), Some(res)) = (&out.archive, archive_res.as_mut()) {
            let need = if archived > 0 { lines.len() } else { 0 };
            if !a.resize(res, need) {
                return Err(busy(
                    RejectReason::ArchiveBackpressure,
                    "the archive is behind",
                ));
            }
        }
        let need = if indexed > 0 { lines.len() } else { 0 };
        if !route.resize(&mut route_res, need) {
            return Err(busy(
                RejectReason::BackendBackpressure,
                "the backend is behind",
            ));
        }

        if let (Some(a), Some(res)) = (&out.archive, archive_res) {
            if archived > 0 {
                // The archive takes every kept event: all lines, in order.
                a.send(ArchiveChunk {
                    lines: lines.clone(),
                    events: archived,
                    received_at_ms: batch.meta.received_at_ms,
                    reservation: res,
                    progress: None,
                })
                .map_err(|_| busy(RejectReason::ShuttingDown, "the proxy is shutting down"))?;
            }
        }
        if indexed > 0 {
            route
                .send(ForwardChunk {
                    lines,
                    ranges: indexed_ranges,
                    reservation: route_res,
                    progress: None,
                })
                .map_err(|_| busy(RejectReason::ShuttingDown, "the proxy is shutting down"))?;
        }
        Ok(Dispatched { archived, indexed })
    }
}

/// Each event not dropped as one NDJSON line (serialized once: the archive
/// and the backend share the bytes), appended to `out`: the ranges of the
/// indexed ones (from where the lines start in `out`), and how many were kept.
fn serialize(batch: &Batch, out: &mut Vec<u8>) -> (Vec<std::ops::Range<u32>>, usize) {
    let base = out.len();
    let mut kept = 0usize;
    let mut indexed = Vec::with_capacity(batch.events.len());
    for (ev, disp) in batch.events.iter().zip(&batch.dispositions) {
        if *disp == Disposition::Drop {
            continue;
        }
        let start = (out.len() - base) as u32;
        ev.write_json(out);
        let end = (out.len() - base) as u32;
        out.push(b'\n');
        kept += 1;
        if *disp == Disposition::Index {
            indexed.push(start..end);
        }
    }
    (indexed, kept)
}

/// The lines take about what the request's JSON took.
fn lines_estimate(batch: &Batch) -> usize {
    batch.meta.body_bytes + batch.events.len() * 64
}

fn buffer_refusal(e: &BufferError) -> Rejection {
    let reason = match e {
        BufferError::Full { .. } => RejectReason::BufferFull,
        BufferError::Failed(_) => RejectReason::BufferFailed,
        BufferError::NotDelivered(_) => RejectReason::NotDelivered,
    };
    busy(reason, &e.to_string())
}

fn busy(reason: RejectReason, what: &str) -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        reason,
        format!("{what}; retry later"),
    )
    .retry_after(1)
}

#[cfg(test)]
impl Chain {
    /// A chain with no stage and a route nobody reads.
    pub fn for_test() -> Arc<Chain> {
        let gauge = prometheus::IntGauge::new("test_route_bytes", "test").unwrap();
        let (route, _) = crate::budget::Queue::new(crate::budget::Budget::new(1 << 20, gauge));
        Chain::new(
            vec![],
            TenantOutputs {
                archive: None,
                route: Arc::new(std::sync::RwLock::new(route)),
                log: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::event::{BatchMeta, Event, Intake};
    use tokio_util::sync::CancellationToken;

    /// A stage setting dispositions as the exclusion rules do: by message, it
    /// drops, archives only, keeps or refuses.
    struct ByMessage;
    impl Stage for ByMessage {
        fn name(&self) -> &'static str {
            "by-message"
        }
        fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
            for (ev, d) in batch.events.iter().zip(batch.dispositions.iter_mut()) {
                *d = match ev.message.as_str() {
                    "drop me" => Disposition::Drop,
                    "archive me" => Disposition::ArchiveOnly,
                    "refuse" => {
                        return Err(Rejection::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            RejectReason::RateLimited,
                            "refused",
                        ))
                    }
                    _ => Disposition::Index,
                };
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn tee_follows_dispositions_and_refusals_take_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            "listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\narchive: {{store: {{type: local, root: {d}/archive}}}}\nbackends: [{{name: b, type: file, path: {d}/sink.ndjson, batch: {{max_wait: 1h}}}}]\ntenants: [{{name: t, api_keys: [k], backend: b}}]\n"
        );
        let config = Config::parse(&text, "t.yaml").unwrap();
        let drain = CancellationToken::new();
        let store = crate::archive::open_store(config.archive.store.as_ref().unwrap()).unwrap();
        let set = crate::archive::StoreSet::one("t", store);
        let (archive, a_task) =
            crate::archive::spawn_writer("t", &config.archive, set, drain.clone());
        let backend =
            Arc::new(crate::sink::backend::Backend::from_config(&config.backends[0]).unwrap());
        let member = crate::sink::Member {
            backend,
            health: crate::sink::health::BackendHealth::new("b", Default::default()),
            weight: 1,
        };
        let (route, r_task) = crate::sink::spawn_route(
            "t",
            None,
            vec![vec![member]],
            &config.backends[0],
            crate::sink::RouteLimits {
                max_events: 1000,
                max_bytes: 1 << 20,
                events_per_second: None,
            },
            None,
            drain.clone(),
        );
        let chain = Chain::new(
            vec![Box::new(ByMessage)],
            TenantOutputs {
                archive: Some(archive),
                route: Arc::new(std::sync::RwLock::new(route)),
                log: None,
            },
        );
        let meta = BatchMeta {
            tenant: "t".into(),
            intake: Intake::Generic,
            received_at_ms: 1_700_000_000_000,
            body_bytes: 100,
        };
        let batch = |msgs: &[&str]| {
            Batch::new(
                meta.clone(),
                msgs.iter()
                    .map(|m| Event::from_message(m.to_string(), 1))
                    .collect(),
            )
        };

        let done = chain
            .run(
                batch(&["drop me", "archive me", "index me"]),
                Room::default(),
            )
            .unwrap()
            .dispatched;
        assert_eq!(
            done,
            Dispatched {
                archived: 2,
                indexed: 1
            }
        );
        let refused = chain
            .run(batch(&["index me too", "refuse"]), Room::default())
            .err()
            .unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);

        drain.cancel();
        a_task.await.unwrap();
        r_task.await.unwrap();
        let sink = std::fs::read_to_string(dir.path().join("sink.ndjson")).unwrap();
        assert_eq!(sink.lines().count(), 1);
        assert!(sink.contains("\"index me\""));
        let archived: Vec<String> = walk(&dir.path().join("archive"))
            .into_iter()
            .flat_map(|p| {
                let mut s = String::new();
                std::io::Read::read_to_string(
                    &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(p).unwrap()),
                    &mut s,
                )
                .unwrap();
                s.lines().map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(archived.len(), 2);
        assert!(archived[0].contains("archive me") && archived[1].contains("\"index me\""));
    }

    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        if p.is_dir() {
            std::fs::read_dir(p)
                .unwrap()
                .flat_map(|e| walk(&e.unwrap().path()))
                .collect()
        } else {
            vec![p.to_path_buf()]
        }
    }
}
