//! Weir: an edge ingestion proxy for logs. One folder per stage of the data flow:
//!
//! listen (TCP, TLS, HTTP) → intake (decode, auth, limits) → pipeline (the stage
//! chain) → buffer and wal (each tenant's log on disk; or, with the memory
//! buffer, the archive tee) → archive (object storage) and sink (batching,
//! compression, retries to backends). config (the YAML as written), plan
//! (the config resolved once: one plan per tenant), tenant (each carries its
//! own stage chain), telemetry and admin serve them all.
pub mod admin;
pub mod archive;
pub mod banner;
pub mod budget;
pub mod buffer;
pub mod clock;
pub mod config;
pub mod durable;
pub mod event;
pub mod fleet;
pub mod intake;
pub mod listen;
pub mod observe;
pub mod patterns;
pub mod pipeline;
pub mod plan;
pub mod plugin;
pub mod quota;
pub mod rehydrate;
pub mod reload;
pub mod rules;
pub mod sink;
pub mod telemetry;
pub mod tenant;
pub mod wal;
pub mod watch;
pub mod workers;

use anyhow::Context;
use archive::{ArchiveHandle, DeadLetters};
use pipeline::{Chain, Stage, TenantOutputs};
use plan::{Plan, TenantPlan};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs the proxy until SIGTERM or SIGINT, then drains: stops accepting,
/// finishes open requests, sends queued batches and writes archive objects.
///
/// `path` is the file `plan` came from (none: the embedded default); its
/// routing is reloaded on SIGHUP, on change, and on `POST /admin/config/reload`.
pub async fn run(plan: Plan, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let plan = Arc::new(plan);
    let config = &plan.config;
    let _ = std::fs::create_dir_all(&config.data_dir);
    let drain = CancellationToken::new();
    let (mut archives, writers, archive_stores) = open_archives(&plan, &drain)?;
    // Backends and one route per tenant: a generation a config reload replaces.
    let dead_letters = archives
        .iter()
        .map(|(name, (_, dl))| (name.clone(), dl.clone()))
        .collect();
    let router = sink::router::Router::start(&plan, dead_letters, drain.clone())?;
    let reloader = reload::ConfigReloader::new(path.clone(), plan.clone(), router.clone());
    reloader.reload_on_sighup(drain.clone());
    let fleet = match &config.fleet {
        Some(f) => Some(fleet::Fleet::new(f, &config.data_dir)?),
        None => None,
    };
    let mut shared = Shared::new(&plan, fleet.as_ref().map(|(f, _)| f.clone()));
    let mut tenants = tenant::Tenants::default();
    let mut buffers = Buffers::new(&plan);
    for t in &plan.tenants {
        let archive = archives.remove(&t.name).map(|(handle, _)| handle);
        let route = router.slot(&t.name).expect("the router has every tenant");
        let log = buffers.start(config, t, archive.clone(), route.clone())?;
        let outputs = TenantOutputs {
            archive,
            route,
            log,
        };
        let tenant = shared
            .tenant(t, outputs)
            .map_err(|e| anyhow::anyhow!("{}", config.origin.locate(e)))?;
        tenants.add_client_names(&t.client_names, &tenant);
        tenants.add(&t.api_keys, tenant);
    }
    let Shared {
        rules,
        quotas,
        plugins,
        tails,
        patterns,
        ..
    } = shared;
    let (quotas, plugins) = (Arc::new(quotas), Arc::new(plugins));
    // One poller reloads the config file and the plugin modules when they change.
    let watched: Vec<std::sync::Weak<dyn watch::Watched>> = vec![
        Arc::downgrade(&reloader) as _,
        Arc::downgrade(&plugins) as _,
    ];
    watch::spawn(watched, watch::WATCH_EVERY, drain.clone());
    let rehydrations = rehydrate::Rehydrations::new(plan.clone(), router.clone());
    let control = Arc::new(
        admin::control::Control::new(
            config.admin.token.clone(),
            admin::control::Overrides::from_config(config),
            Arc::new(rules),
            quotas.clone(),
            config.data_dir.clone(),
        )?
        .with_plugins(plugins.clone())
        .with_router(router.clone())
        .with_reloader(reloader.clone())
        .with_disk(buffers.disk.clone())
        .with_rehydrations(rehydrations.clone())
        .with_tails(tails)
        .with_patterns(patterns)
        .with_archive_stores(archive_stores),
    );
    let saver = save_quotas_every_second(quotas.clone(), drain.clone());
    let fleet_sync = fleet.map(|(f, pushes)| {
        control.set_fleet(f.clone());
        let changes: Arc<dyn fleet::changes::SharedChanges> = control.clone();
        tokio::spawn(fleet::changes::watch(
            f.clone(),
            changes,
            pushes,
            drain.clone(),
        ));
        tokio::spawn(f.run_sync(quotas.clone(), drain.clone()))
    });
    let intake = intake::Intake::new(tenants, config.limits.clone());
    let mut serving = serve(&plan, path.as_deref(), intake, control).await?;

    shutdown_signal().await;
    // Rehydrations stop at a chunk boundary; the routes deliver their chunks in flight as they drain.
    let rehydrating = rehydrations.stop_all();
    let lost = serving.drain(&plan, writers, &router, buffers, drain).await;
    rehydrate::wait(rehydrating, std::time::Duration::from_secs(2)).await;
    let _ = saver.await;
    if let Some(sync) = fleet_sync {
        let _ = sync.await;
    }
    quotas.save();
    serving.stop_admin().await;
    match lost {
        // main.rs logs it and exits non-zero.
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// The disk buffer: every tenant's log and its feeds (none with `buffer.type: memory`).
struct Buffers {
    disk: Option<Arc<buffer::Disk>>,
    feeds: Vec<buffer::feed::FeedHandle>,
    stop: buffer::feed::FeedStop,
}

impl Buffers {
    fn new(plan: &Plan) -> Buffers {
        let config = &plan.config;
        let names: Vec<&str> = plan.tenants.iter().map(|t| t.name.as_str()).collect();
        for (tenant, bytes) in buffer::orphans(&config.data_dir, &names) {
            tracing::warn!(tenant, bytes, "a disk buffer of a tenant no longer configured: its events are not delivered; add the tenant back to deliver them, or delete its directory under data_dir/wal");
        }
        Buffers {
            disk: (config.buffer.kind == config::BufferKind::Disk)
                .then(|| buffer::Disk::new(&config.buffer)),
            feeds: Vec::new(),
            stop: Default::default(),
        }
    }

    /// Opens tenant `t`'s log and starts its feeds to `archive` and `route`.
    fn start(
        &mut self,
        config: &config::Config,
        t: &TenantPlan,
        archive: Option<ArchiveHandle>,
        route: sink::RouteSlot,
    ) -> anyhow::Result<Option<Arc<buffer::TenantLog>>> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let started = buffer::start(config, t, archive, route, disk, &self.stop)
            .with_context(|| format!("tenant {}: opening its disk buffer", t.name))?;
        self.feeds.extend(started.feeds);
        Ok(Some(started.log))
    }
}

/// Every tenant's archive writer, by tenant name, with where its
/// undeliverable events go; the writer tasks to wait for at shutdown; and the
/// stores they write to.
type Archives = HashMap<String, (ArchiveHandle, DeadLetters)>;

fn open_archives(
    plan: &Plan,
    drain: &CancellationToken,
) -> anyhow::Result<(Archives, Vec<JoinHandle<()>>, Arc<archive::Stores>)> {
    let stores = Arc::new(archive::Stores::default());
    stores.export_gauges();
    let mut archives = HashMap::new();
    let mut writers = Vec::new();
    for t in plan.tenants.iter().filter(|t| t.archive.enabled) {
        let set = stores
            .set(&t.name, &t.archive_stores, t.archive.failover)
            .with_context(|| format!("tenant {}", t.name))?;
        let dead_letters = archive::DeadLetters::new(&t.name, &t.archive, set.clone());
        let (handle, task) = archive::spawn_writer(&t.name, &t.archive, set, drain.clone());
        // A writer that dies is reported when it does, not at shutdown.
        let what = format!("tenant {}", t.name);
        writers.push(telemetry::faults::supervise(
            telemetry::faults::Task::ArchiveWriter,
            &what,
            task,
        ));
        archives.insert(t.name.clone(), (handle, dead_letters));
    }
    Ok((archives, writers, stores))
}

/// What the tenants' stages share, filled in one tenant at a time: the rule
/// lists and quotas (which the admin API changes at run time), the plugins
/// (which the file watcher reloads) and the intake threads the chains run on.
struct Shared {
    rules: rules::exclusion::ExclusionRules,
    quotas: quota::daily::DailyQuotas,
    plugins: plugin::Plugins,
    /// Tenants with plugins run on these, so a slow plugin holds up no other tenant.
    plugin_workers: Option<Arc<workers::Workers>>,
    /// The other tenants' requests are decoded and staged on these.
    intake_workers: Arc<workers::Workers>,
    threads: usize,
    /// Every tenant's live tails (`GET /admin/tail`).
    tails: Arc<observe::tail::Tails>,
    /// Every tenant's log patterns (`GET /admin/patterns`); none when turned off.
    patterns: Option<Arc<patterns::Patterns>>,
    /// Fleet mode: quotas and rate limits hold for all instances together.
    fleet: Option<Arc<fleet::Fleet>>,
}

impl Shared {
    fn new(plan: &Plan, fleet: Option<Arc<fleet::Fleet>>) -> Shared {
        let config = &plan.config;
        let mut quotas =
            quota::daily::DailyQuotas::new(clock::system(), &config.data_dir.join("quota"));
        if let Some(f) = &fleet {
            quotas.share_with_fleet(f.view.clone());
        }
        let threads = plugin::plugin_threads(config);
        let any_plugin = plan.tenants.iter().any(|t| !t.plugins.is_empty());
        Shared {
            rules: rules::exclusion::ExclusionRules::with_global(plan.global_rules.clone()),
            quotas,
            plugins: plugin::Plugins::new(Some(&config.data_dir)),
            plugin_workers: any_plugin.then(|| workers::Workers::new("weir-stage", threads)),
            intake_workers: workers::Workers::new(
                "weir-intake",
                match config.limits.intake_threads {
                    0 => workers::Workers::default_threads(),
                    n => n,
                },
            ),
            threads,
            tails: observe::tail::Tails::new(config.admin.max_tails),
            patterns: config
                .patterns
                .enabled
                .then(|| Arc::new(patterns::Patterns::new(&config.patterns, clock::system()))),
            fleet,
        }
    }

    /// Tenant `t`'s stage chain, in data-flow order: rate limit, plugins,
    /// exclusion rules, daily quota, then the archive tee to `outputs`.
    /// Plugins run after the rate limit and before the exclusion rules, so
    /// what they redact never reaches the archive tee. One that cannot load
    /// (compile, link, ABI version, weir_init) stops the start, naming its
    /// config field; later versions of their files are hot reloaded (the
    /// watcher, or POST /admin/reload), a version that cannot load refused.
    fn tenant(
        &mut self,
        t: &TenantPlan,
        outputs: TenantOutputs,
    ) -> Result<Arc<tenant::Tenant>, config::Invalid> {
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        if let Some(limit) = &t.rate_limit {
            let mut stage = quota::rate::RateLimit::new(Some(limit));
            if let Some(f) = &self.fleet {
                stage = stage.shared_with(f.view.clone(), f.config().sync_interval.0);
            }
            stages.push(Box::new(stage));
        }
        let at = format!("{}.plugins", t.at);
        if let Some(p) = self.plugins.add(&t.name, &at, &t.plugins, self.threads)? {
            stages.push(Box::new(p));
        }
        // Every tenant has these two: the admin API may give it rules or a quota at run time.
        stages.push(Box::new(self.rules.add(&t.name, t.exclusion_rules.clone())));
        stages.push(Box::new(self.quotas.add(&t.name, t.daily_quota.as_ref())));
        let workers = match stages.iter().any(|s| s.blocks()) {
            true => self.plugin_workers.clone(),
            false => Some(self.intake_workers.clone()),
        };
        let mut watchers: Vec<Arc<dyn observe::Watcher>> = vec![self.tails.tenant(&t.name)];
        if let Some(p) = &self.patterns {
            watchers.push(p.tenant(&t.name));
        }
        Ok(Arc::new(tenant::Tenant {
            name: t.name.as_str().into(),
            chain: Chain::with_workers(stages, outputs, workers, watchers),
        }))
    }
}

/// Writes the daily quotas' usage every second until `stop`.
fn save_quotas_every_second(
    quotas: Arc<quota::daily::DailyQuotas>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let q = quotas.clone();
            let _ = tokio::task::spawn_blocking(move || q.save()).await;
        }
    })
}

/// The listeners and the admin endpoint, serving.
struct Serving {
    listeners: Vec<JoinHandle<()>>,
    /// Stops the listeners from accepting.
    stop: CancellationToken,
    health: Arc<admin::Health>,
    admin: JoinHandle<()>,
    admin_stop: CancellationToken,
}

/// Binds the admin endpoint and every listener, then says Weir is ready.
async fn serve(
    plan: &Plan,
    path: Option<&std::path::Path>,
    intake: Arc<intake::Intake>,
    control: Arc<admin::control::Control>,
) -> anyhow::Result<Serving> {
    let config = &plan.config;
    let health = Arc::new(admin::Health::default());
    let admin_listener = tokio::net::TcpListener::bind(config.admin.address)
        .await
        .with_context(|| format!("admin: cannot bind {}", config.admin.address))?;
    let stop = CancellationToken::new();
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = listen::Listener::bind(l).await?;
        bound.push((l.name.clone(), l.protocol, listener.local_addr()));
        tracing::info!(listener = %l.name, address = %listener.local_addr(), protocol = l.protocol.as_str(), "listening");
        listeners.push(tokio::spawn(listener.serve(
            intake.clone(),
            config.limits.clone(),
            stop.clone(),
            config.shutdown_timeout.0,
        )));
    }
    let admin_addr = admin_listener.local_addr()?;
    tracing::info!(address = %admin_addr, "admin listening (/metrics, /healthz, /readyz)");
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        health.clone(),
        control,
        admin_stop.clone(),
    ));
    tracing::info!(
        version = %banner::version(),
        tenants = plan.tenants.len(),
        backends = config.backends.len(),
        "weir is ready"
    );
    // A readable summary for people; JSON logs keep one event per line.
    if config.log.format == config::LogFormat::Text {
        eprintln!(
            "{}",
            banner::lines(plan, path, &bound, admin_addr).join("\n")
        );
    }
    // Ready only once announced: whoever waits on /readyz finds the banner written.
    health.set_ready(true);
    Ok(Serving {
        listeners,
        stop,
        health,
        admin,
        admin_stop,
    })
}

impl Serving {
    /// Stops accepting, finishes open requests, then lets the archive writers
    /// and every route (old generations still sending included) finish within
    /// the shutdown timeout. `Some`: where events no backend got still are.
    async fn drain(
        &mut self,
        plan: &Plan,
        writers: Vec<JoinHandle<()>>,
        router: &sink::router::Router,
        buffers: Buffers,
        drain: CancellationToken,
    ) -> Option<anyhow::Error> {
        use telemetry::faults::{check_join, Task};
        tracing::info!("shutting down: draining connections, batches and archive objects");
        self.health.set_ready(false);
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + plan.config.shutdown_timeout.0;
        for s in std::mem::take(&mut self.listeners) {
            let _ = s.await;
        }
        // Intake has stopped: the feeds carry what is in the logs to the
        // archives and routes, which then finish. What they do not finish in
        // time stays in the logs, for the next start.
        buffers.stop.reading.cancel();
        let read = futures::future::join_all(buffers.feeds.iter().map(|f| f.read_all.cancelled()));
        let _ = tokio::time::timeout_at(deadline, read).await;
        drain.cancel();
        // The archive writers and every route, old generations still sending
        // included, share the deadline. Whether the archives finished tells
        // where events no backend got still are.
        let archives = tokio::time::timeout_at(deadline, futures::future::join_all(writers)).await;
        let archives_done = archives.is_ok();
        for r in archives.into_iter().flatten() {
            check_join(Task::ArchiveWriter, "archive", r);
        }
        let routes =
            tokio::time::timeout_at(deadline, futures::future::join_all(router.tasks())).await;
        let routes_done = routes.is_ok();
        for r in routes.into_iter().flatten() {
            check_join(Task::Route, "route", r);
        }
        // The feeds persist how far their destinations got.
        buffers.stop.now.cancel();
        let (feeds, backlogs): (Vec<_>, Vec<_>) = buffers
            .feeds
            .into_iter()
            .map(|f| (f.task, f.backlog))
            .unzip();
        // A moment past the deadline for the last positions to be saved; then go regardless.
        let saved = tokio::time::timeout_at(
            deadline + std::time::Duration::from_secs(2),
            futures::future::join_all(feeds),
        )
        .await;
        match saved {
            Ok(results) => {
                for (r, b) in results.into_iter().zip(&backlogs) {
                    check_join(Task::BufferFeed, &b.what(), r);
                }
            }
            Err(_) => tracing::warn!("shutdown: the disk buffer's positions were not all saved in time; the next start reads the last records again (duplicates, never loss)"),
        }
        if buffers.disk.is_some() && (!archives_done || !routes_done) {
            buffer_report(plan, &backlogs);
            return None;
        }
        (!archives_done || !routes_done)
            .then(|| sink::shutdown::report(plan, archives_done))
            .flatten()
    }

    async fn stop_admin(self) {
        self.admin_stop.cancel();
        let _ = self.admin.await;
    }
}

/// Logs, per tenant and destination, the events a shutdown that timed out
/// left in the disk buffer, and where: exit 0, since they are safe there and
/// the next start delivers them.
fn buffer_report(plan: &Plan, backlogs: &[buffer::feed::Backlog]) {
    let timeout = plan.config.shutdown_timeout.0;
    let wal = plan.config.data_dir.join("wal");
    let mut total = 0;
    for b in backlogs {
        let events = b.events();
        if events == 0 {
            continue;
        }
        total += events;
        let log = wal.join(&b.tenant);
        tracing::warn!(
            tenant = %b.tenant,
            destination = b.destination,
            events,
            log = %log.display(),
            "shutdown timed out: events this destination had not finished with are safe in the disk buffer (for the route counted as written: those not to be indexed are read past, not sent); the next start delivers them"
        );
    }
    tracing::warn!(
        ?timeout,
        events = total,
        buffer = %wal.display(),
        "shutdown timed out: undelivered events are safe in the disk buffer (exit 0); the next start delivers them"
    );
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
