//! Rehydration: replaying a tenant's archived events, filtered by their own
//! timestamp and a query, into its route (or one backend of it), as jobs the
//! admin API starts, shows and cancels (`/admin/rehydrations`, and `weir
//! rehydrate` through it).
//!
//! - spec.rs: the job as asked, checked; its id and the partitions it reads.
//! - reader.rs: listing those partitions and scanning their objects.
//! - run.rs: sending in chunks at the rate, awaiting each, checkpointing.
//! - checkpoint.rs: the files under `data_dir/rehydrate/` a job resumes from.
//! - job.rs: a job's state and counters, as the API shows them.
//!
//! Residency: a job sends only through the tenant's own route, or to a
//! backend that route may use (the router refuses any other), so rehydrated
//! events go only where the tenant's events may go.
mod checkpoint;
mod job;
mod metrics;
mod reader;
mod run;
pub mod spec;

use crate::pipeline::{RejectReason, Rejection};
use crate::plan::Plan;
use crate::sink::router::{LoneRouteError, Router};
use checkpoint::Files;
use http::StatusCode;
use job::{Job, State};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Jobs that may run at once (dry runs included): each reads and decompresses
/// on a blocking thread and holds up to a few MiB of a route's queue.
pub const MAX_ACTIVE: usize = 2;
/// Finished jobs kept for `GET /admin/rehydrations` (their checkpoints stay on disk).
const MAX_KEPT: usize = 100;

pub struct Rehydrations {
    /// The plan at start: the tenants and their archives (a reload changes neither).
    plan: Arc<Plan>,
    /// Routes and residency as the current routing has them.
    router: Arc<Router>,
    data_dir: PathBuf,
    jobs: Mutex<Vec<Arc<Job>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Its own clients of the archive stores (reading does not count toward their health).
    stores: crate::archive::Stores,
    /// Shutting down: no new job.
    stopping: AtomicBool,
}

fn err(status: StatusCode, msg: impl Into<String>) -> Rejection {
    Rejection::new(status, RejectReason::Admin, msg)
}

impl Rehydrations {
    /// Lists the jobs earlier runs left checkpoints of (not resumed: the same
    /// request resumes one).
    pub fn new(plan: Arc<Plan>, router: Arc<Router>) -> Arc<Rehydrations> {
        let data_dir = plan.config.data_dir.clone();
        let archived = plan.tenants.iter().filter(|t| t.archive.enabled);
        metrics::seed(archived.map(|t| t.name.as_str()));
        let mut jobs: Vec<Arc<Job>> = checkpoint::saved(&data_dir)
            .iter()
            .map(|c| Arc::new(Job::from_checkpoint(c)))
            .collect();
        for j in jobs.iter().filter(|j| j.state() == State::Interrupted) {
            let s = j.status.lock().unwrap();
            tracing::warn!(job = %j.id, tenant = %j.spec.tenant, events_sent = s.base.events_sent, "a rehydration did not finish before the proxy stopped; the same request (or `weir rehydrate` with the same arguments) resumes it");
        }
        let excess = jobs.len().saturating_sub(MAX_KEPT);
        jobs.drain(..excess);
        Arc::new(Rehydrations {
            plan,
            router,
            data_dir,
            jobs: Mutex::new(jobs),
            tasks: Mutex::new(Vec::new()),
            stores: Default::default(),
            stopping: AtomicBool::new(false),
        })
    }

    /// `/admin/rehydrations[/{id}]`; `parts` are the path's parts after `rehydrations`.
    pub fn handle(
        &self,
        method: &http::Method,
        parts: &[&str],
        body: &[u8],
    ) -> Result<(StatusCode, Value), Rejection> {
        match (method.as_str(), parts) {
            ("POST", []) => {
                let r: spec::Request = crate::intake::http::parse_json_object(body)?;
                self.start(r)
            }
            ("GET", []) => {
                let jobs = self.jobs.lock().unwrap().clone();
                let list: Vec<Value> = jobs.iter().rev().map(|j| j.view()).collect();
                Ok((StatusCode::OK, json!({ "rehydrations": list })))
            }
            ("GET", [id]) => Ok((StatusCode::OK, self.find(id)?.view())),
            ("DELETE", [id]) => {
                let job = self.find(id)?;
                if job.state().is_active() {
                    tracing::info!(target: "weir::audit", job = %job.id, tenant = %job.spec.tenant, "rehydration cancelled: stops after the chunks already sent are delivered");
                    job.stop(false);
                    return Ok((StatusCode::ACCEPTED, job.view()));
                }
                // Already over: nothing to stop (a cancel racing the end is no error).
                Ok((StatusCode::OK, job.view()))
            }
            _ => Err(err(
                StatusCode::NOT_FOUND,
                format!(
                    "no control endpoint {method} /admin/rehydrations/{}",
                    parts.join("/")
                ),
            )),
        }
    }

    fn find(&self, id: &str) -> Result<Arc<Job>, Rejection> {
        let jobs = self.jobs.lock().unwrap();
        jobs.iter().find(|j| j.id == id).cloned().ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                format!("no rehydration {id:?} (GET /admin/rehydrations lists them)"),
            )
        })
    }

    /// `POST /admin/rehydrations`: starts, resumes or shows the job of `r`.
    fn start(&self, r: spec::Request) -> Result<(StatusCode, Value), Rejection> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                "the proxy is shutting down",
            ));
        }
        let c = spec::check(&r, chrono::Utc::now()).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
        let tenant = self.plan.tenant(&c.spec.tenant).ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                format!("no tenant {:?}", c.spec.tenant),
            )
        })?;
        if !tenant.archive.enabled {
            return Err(err(
                StatusCode::CONFLICT,
                format!(
                    "tenant {:?} has no archive (archive.enabled: false): nothing to rehydrate",
                    tenant.name
                ),
            ));
        }
        self.check_residency(&c.spec)?;
        let id = match c.dry_run {
            true => format!("{}-dry", c.spec.id()),
            false => c.spec.id(),
        };
        // One run of a job at a time; the same request again shows it.
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(running) = jobs.iter().find(|j| j.id == id && j.state().is_active()) {
            if c.restart {
                return Err(err(
                    StatusCode::CONFLICT,
                    format!("rehydration {id} is running: cancel it (DELETE /admin/rehydrations/{id}) before restarting it"),
                ));
            }
            return Ok((StatusCode::OK, running.view()));
        }
        let active = jobs.iter().filter(|j| j.state().is_active()).count();
        if active >= MAX_ACTIVE {
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{active} rehydrations are running, the most at once: wait for one to end or cancel one"),
            ));
        }
        let files = (!c.dry_run).then(|| Files::new(&self.data_dir, &id));
        let (start, listing) = match &files {
            Some(f) => self.resume_point(f, &c)?,
            None => (None, None),
        };
        if let Some(done) = start.as_ref().filter(|s| s.state == "done") {
            // Finished before: sending it again would duplicate every event.
            let job = Arc::new(Job::from_checkpoint(done));
            keep(&mut jobs, job.clone());
            let mut v = job.view();
            v["note"] = json!("this rehydration finished before; nothing was sent again (restart: true sends it again)");
            return Ok((StatusCode::OK, v));
        }
        let stores = tenant
            .archive_stores
            .iter()
            .map(|s| self.stores.get_or_open(s))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        let target = self.target(&c)?;
        let state = match listing.is_some() {
            true => State::Running,
            false => State::Listing,
        };
        let job = Arc::new(Job::new(id, c.spec.clone(), c.rate, c.dry_run, state));
        if let Some(from) = &start {
            // Shown from the first answer: where the job resumes, with what it sent before.
            let mut s = job.status.lock().unwrap();
            s.base = from.counters;
            s.cursor = from.cursor;
        }
        keep(&mut jobs, job.clone());
        drop(jobs);
        tracing::info!(target: "weir::audit", job = %job.id, tenant = %job.spec.tenant, from = %spec::rfc3339_ms(job.spec.from_ms), to = %spec::rfc3339_ms(job.spec.to_ms), query = ?job.spec.query, to_backend = ?job.spec.to_backend, rate = job.rate, dry_run = job.dry_run, resumed = start.is_some(), "rehydration started");
        let ctx = run::Context {
            stores,
            files,
            target,
            start,
            listing,
        };
        let task = tokio::spawn(supervised(job.clone(), ctx));
        let mut tasks = self.tasks.lock().unwrap();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        Ok((StatusCode::ACCEPTED, job.view()))
    }

    /// A `to_backend` must be one the tenant's events may go to.
    fn check_residency(&self, s: &spec::Spec) -> Result<(), Rejection> {
        let Some(backend) = &s.to_backend else {
            return Ok(());
        };
        let allowed = self.router.allowed_backends(&s.tenant).unwrap_or_default();
        if allowed.contains(backend) {
            return Ok(());
        }
        if self.plan.config.backend(backend).is_none() {
            return Err(err(
                StatusCode::NOT_FOUND,
                format!("no backend named {backend:?}"),
            ));
        }
        Err(err(
            StatusCode::FORBIDDEN,
            LoneRouteError::NotAllowed {
                tenant: s.tenant.clone(),
                backend: backend.clone(),
                allowed,
            }
            .to_string(),
        ))
    }

    /// Where a job of `c` sends: its tenant's route, one backend, or nowhere.
    fn target(&self, c: &spec::Checked) -> Result<run::Target, Rejection> {
        if c.dry_run {
            return Ok(run::Target::DryRun);
        }
        match &c.spec.to_backend {
            None => self
                .router
                .slot(&c.spec.tenant)
                .map(run::Target::Route)
                .ok_or_else(|| err(StatusCode::NOT_FOUND, "no route for the tenant")),
            Some(b) => self
                .router
                .backend_route(&c.spec.tenant, b)
                .map(|route| run::Target::Backend {
                    route,
                    router: self.router.clone(),
                    name: b.clone(),
                })
                .map_err(|e| match e {
                    LoneRouteError::NotAllowed { .. } => err(StatusCode::FORBIDDEN, e.to_string()),
                    _ => err(StatusCode::NOT_FOUND, e.to_string()),
                }),
        }
    }

    /// The checkpoint and listing a job resumes from (none: from the start).
    fn resume_point(
        &self,
        f: &Files,
        c: &spec::Checked,
    ) -> Result<
        (
            Option<checkpoint::Checkpoint>,
            Option<Vec<checkpoint::Object>>,
        ),
        Rejection,
    > {
        let fail = |e: String| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e} (restart: true starts the job over, sending again what it sent)"),
            )
        };
        if c.restart {
            f.remove().map_err(fail)?;
            return Ok((None, None));
        }
        let start = f.load().map_err(fail)?;
        let listing = f.load_listing().map_err(fail)?;
        if let Some(s) = &start {
            if s.spec != c.spec {
                return Err(fail(format!(
                    "the checkpoint of {} is of another job",
                    s.id
                )));
            }
            if listing.is_none() && s.state != "done" {
                return Err(fail(format!(
                    "the checkpoint of {} has no object list",
                    s.id
                )));
            }
        }
        Ok((start, listing))
    }

    /// Shutdown: no new jobs; running ones stop at a chunk boundary (their
    /// chunks in flight still delivered by the draining routes). Returns their
    /// tasks, to wait for once the routes have drained.
    pub fn stop_all(&self) -> Vec<JoinHandle<()>> {
        self.stopping.store(true, Ordering::SeqCst);
        for j in self.jobs.lock().unwrap().iter() {
            if j.state().is_active() {
                j.stop(true);
            }
        }
        std::mem::take(&mut *self.tasks.lock().unwrap())
    }
}

/// Waits up to `timeout` for the jobs `stop_all` stopped to save their checkpoints.
pub async fn wait(tasks: Vec<JoinHandle<()>>, timeout: Duration) {
    if tokio::time::timeout(timeout, futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!("shutdown: a rehydration's chunks in flight were not all delivered; the same request resumes it at its checkpoint and may send those chunks again");
    }
}

/// Adds `job` (replacing an older run of the same id), dropping the oldest finished jobs past the limit.
fn keep(jobs: &mut Vec<Arc<Job>>, job: Arc<Job>) {
    jobs.retain(|j| j.id != job.id);
    jobs.push(job);
    while jobs.len() > MAX_KEPT {
        match jobs.iter().position(|j| !j.state().is_active()) {
            Some(i) => {
                jobs.remove(i);
            }
            None => break,
        }
    }
}

/// Runs a job; a panic (a bug) fails the job instead of leaving it `running` forever.
async fn supervised(job: Arc<Job>, ctx: run::Context) {
    use futures::FutureExt;
    metrics::REHYDRATION.running.inc();
    let result = std::panic::AssertUnwindSafe(run::run(job.clone(), ctx))
        .catch_unwind()
        .await;
    metrics::REHYDRATION.running.dec();
    if let Err(panic) = result {
        let msg = crate::telemetry::faults::panic_message(&*panic);
        job.fail(format!("internal error: {msg}"));
    }
}

#[cfg(test)]
mod tests;
