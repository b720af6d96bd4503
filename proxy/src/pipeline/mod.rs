//! The stage chain. A request's events travel as one `Batch` through an
//! ordered list of stages (later: rate limits, Wasm plugins, exclusion rules,
//! daily quotas), each of which may change events, set their disposition, or
//! refuse the request. The dispatcher at the end is the archive tee: every
//! event not dropped goes to the tenant's archive, every event still marked
//! `Index` to the tenant's backend route.
pub mod budget;

use crate::archive::{ArchiveChunk, ArchiveHandle};
use crate::event::{Batch, Disposition};
use crate::sink::{ForwardChunk, RouteHandle};
use bytes::Bytes;
use http::StatusCode;
use std::sync::Arc;

/// A request refused by a stage: the HTTP answer and the metric reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    /// Short, stable label for `weir_rejected_requests_total{reason}`.
    pub reason: &'static str,
    pub message: String,
    /// Seconds an agent should wait before retrying.
    pub retry_after: Option<u64>,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Rejection {
        Rejection { status, reason, message: message.into(), retry_after: None }
    }

    pub fn retry_after(mut self, secs: u64) -> Rejection {
        self.retry_after = Some(secs);
        self
    }
}

/// One step of the data flow between intake and the archive tee.
pub trait Stage: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs on the whole batch of one request, before anything of it is accepted.
    fn process(&self, batch: &mut Batch) -> Result<(), Rejection>;
}

/// Where each tenant's events go after the stages: indexed by `Tenant::index`.
pub struct TenantOutputs {
    pub archive: Option<ArchiveHandle>,
    pub route: RouteHandle,
}

pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    outputs: Vec<TenantOutputs>,
}

/// How many events of a batch went where.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    pub archived: usize,
    pub indexed: usize,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>, outputs: Vec<TenantOutputs>) -> Arc<Chain> {
        Arc::new(Chain { stages, outputs })
    }

    /// Runs every stage, then tees the batch to archive and backend. Either all
    /// of the batch is taken or none of it (a Rejection).
    pub fn run(&self, mut batch: Batch) -> Result<Dispatched, Rejection> {
        for stage in &self.stages {
            stage.process(&mut batch)?;
        }
        self.dispatch(batch)
    }

    fn dispatch(&self, batch: Batch) -> Result<Dispatched, Rejection> {
        let out = &self.outputs[batch.meta.tenant.index];
        // Serialize each event once; the archive and the backend share the bytes.
        let mut buf = Vec::with_capacity(batch.meta.body_bytes + batch.events.len() * 64);
        let mut kept_ranges = Vec::with_capacity(batch.events.len());
        let mut indexed_ranges = Vec::with_capacity(batch.events.len());
        for (ev, disp) in batch.events.iter().zip(&batch.dispositions) {
            if *disp == Disposition::Drop {
                continue;
            }
            let start = buf.len();
            ev.write_json(&mut buf);
            let range = start as u32..buf.len() as u32;
            buf.push(b'\n');
            kept_ranges.push(range.clone());
            if *disp == Disposition::Index {
                indexed_ranges.push(range);
            }
        }
        let lines = Bytes::from(buf);
        let archived = if out.archive.is_some() { kept_ranges.len() } else { 0 };
        let indexed = indexed_ranges.len();

        // Reserve everything first, so a refusal takes nothing.
        let archive_res = match &out.archive {
            Some(a) if archived > 0 => Some(a.reserve(lines.len()).ok_or_else(|| busy("archive_backpressure", "the archive is behind"))?),
            _ => None,
        };
        let route_res = if indexed > 0 {
            Some(out.route.reserve(lines.len()).ok_or_else(|| busy("backend_backpressure", "the backend is behind"))?)
        } else {
            None
        };

        if let (Some(a), Some(res)) = (&out.archive, archive_res) {
            // The archive takes every kept event: all lines, in order.
            a.send(ArchiveChunk { lines: lines.clone(), events: archived, received_at_ms: batch.meta.received_at_ms, reservation: res })
                .map_err(|_| busy("shutting_down", "the proxy is shutting down"))?;
        }
        if let Some(res) = route_res {
            out.route
                .send(ForwardChunk { lines, ranges: indexed_ranges, reservation: res })
                .map_err(|_| busy("shutting_down", "the proxy is shutting down"))?;
        }
        Ok(Dispatched { archived, indexed })
    }
}

fn busy(reason: &'static str, what: &str) -> Rejection {
    Rejection::new(StatusCode::SERVICE_UNAVAILABLE, reason, format!("{what}; retry later")).retry_after(1)
}
