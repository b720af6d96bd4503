//! Weir: an edge ingestion proxy for logs. One folder per stage of the data flow:
//!
//! listen (TCP, TLS, HTTP) → intake (decode, auth, limits) → pipeline (the stage
//! chain and the archive tee) → archive (object storage) and sink (batching,
//! compression, retries to backends). config, tenant, telemetry and admin
//! serve them all.
pub mod admin;
pub mod archive;
pub mod banner;
pub mod budget;
pub mod clock;
pub mod config;
pub mod durable;
pub mod event;
pub mod intake;
pub mod listen;
pub mod pipeline;
pub mod plan;
pub mod plugin;
pub mod quota;
pub mod reload;
pub mod rules;
pub mod sink;
pub mod telemetry;
pub mod tenant;

use anyhow::Context;
use pipeline::{Chain, TenantOutputs};
use plan::Plan;
use std::sync::Arc;
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
    let tenants = tenant::Tenants::from_config(&config);
    let drain = CancellationToken::new();
    let mut workers = Vec::new();

    let mut stores = archive::Stores::default();
    let mut archives = Vec::new();
    let mut all_dead_letters = Vec::new();
    for t in &plan.tenants {
        let archive_cfg = &t.archive;
        let archive = if archive_cfg.enabled {
            let store = stores
                .get_or_open(&archive_cfg.store)
                .with_context(|| format!("tenant {}", t.name))?;
            let dead_letters = archive::DeadLetters::new(&t.name, archive_cfg, store.clone());
            let (handle, task) = archive::spawn_writer(&t.name, archive_cfg, store, drain.clone());
            workers.push(task);
            Some((handle, dead_letters))
        } else {
            None
        };
        let (archive, dead_letters) = archive.unzip();
        archives.push(archive);
        all_dead_letters.push(dead_letters);
    }
    // Backends and one route per tenant: a generation a config reload replaces.
    let router = sink::router::Router::start(&plan, all_dead_letters, drain.clone())?;
    let outputs: Vec<TenantOutputs> = archives
        .into_iter()
        .enumerate()
        .map(|(i, archive)| TenantOutputs {
            archive,
            route: router.slot(i),
        })
        .collect();
    let reloader = reload::ConfigReloader::new(path.clone(), plan.clone(), router.clone());
    reloader.watch(drain.clone());
    // The stage chain, in data-flow order: rate limit, plugins, archive tee
    // marks, exclusion rules, daily quota. Rules and quotas are shared with the admin API.
    let names: Vec<String> = config.tenants.iter().map(|t| t.name.clone()).collect();
    let rate = quota::rate::RateLimits::new(
        &config
            .tenants
            .iter()
            .map(|t| t.rate_limit.clone())
            .collect::<Vec<_>>(),
    );
    let tenant_rules: Vec<(String, Vec<config::ExclusionRuleConfig>)> = config
        .tenants
        .iter()
        .map(|t| (t.name.clone(), t.exclusion_rules.clone()))
        .collect();
    let rules = Arc::new(
        rules::exclusion::ExclusionRules::new(&config.exclusion_rules, &tenant_rules)
            .map_err(|e| anyhow::anyhow!("rule {:?}: {}", e.rule, e.error))?,
    );
    let quota_cfgs: Vec<_> = config
        .tenants
        .iter()
        .map(|t| t.daily_quota.clone())
        .collect();
    let quotas = Arc::new(quota::daily::DailyQuotas::new(
        &names,
        &quota_cfgs,
        clock::system(),
        &config.data_dir.join("quota"),
    ));
    // Plugins run after the rate limit and before the exclusion rules, so what they redact
    // never reaches the archive tee. One that cannot load (compile, link, ABI version,
    // weir_init) stops the start, naming the config field. Later versions of their files
    // are hot reloaded (the watcher, or POST /admin/reload); a version that cannot load
    // is refused and the running one kept.
    let plugins = Arc::new(plugin::Plugins::load(config)?);
    plugins.watch(plugin::WATCH_EVERY);
    let control = Arc::new(
        admin::control::Control::new(
            config.admin.token.clone(),
            admin::control::Overrides::from_config(&config),
            rules.clone(),
            quotas.clone(),
            config.data_dir.clone(),
        )?
        .with_plugins(plugins.clone())
        .with_router(router.clone())
        .with_reloader(reloader.clone()),
    );
    let mut stages: Vec<Box<dyn pipeline::Stage>> = vec![Box::new(rate)];
    if !plugins.is_empty() {
        stages.push(Box::new(plugins.clone()));
    }
    stages.push(Box::new(rules));
    stages.push(Box::new(quotas.clone()));
    let stage_workers = (!plugins.is_empty())
        .then(|| pipeline::workers::Workers::new(plugin::plugin_threads(&config)));
    let chain = Chain::with_workers(stages, outputs, stage_workers);
    let saver = {
        let quotas = quotas.clone();
        let stop = drain.clone();
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
    };
    let intake = intake::Intake::new(tenants, chain, config.limits.clone());

    let health = Arc::new(admin::Health::default());
    let admin_listener = tokio::net::TcpListener::bind(config.admin.address)
        .await
        .with_context(|| format!("admin: cannot bind {}", config.admin.address))?;
    let stop = CancellationToken::new();
    let mut serving = Vec::new();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = listen::Listener::bind(l).await?;
        bound.push((l.name.clone(), l.protocol, listener.local_addr()));
        tracing::info!(listener = %l.name, address = %listener.local_addr(), protocol = l.protocol.as_str(), "listening");
        serving.push(tokio::spawn(listener.serve(
            intake.clone(),
            config.limits.clone(),
            stop.clone(),
            config.shutdown_timeout.0,
        )));
    }
    let admin_addr = admin_listener.local_addr()?;
    tracing::info!(address = %admin_addr, "admin listening (/metrics, /healthz, /readyz)");
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        health.clone(),
        control,
        admin_stop.clone(),
    ));
    drop(intake);
    health.set_ready(true);
    tracing::info!(
        version = %banner::version(),
        tenants = config.tenants.len(),
        backends = config.backends.len(),
        "weir is ready"
    );
    // A readable summary for people; JSON logs keep one event per line.
    if config.log.format == config::LogFormat::Text {
        eprintln!(
            "{}",
            banner::lines(&config, path.as_deref(), &bound, admin_addr).join("\n")
        );
    }

    shutdown_signal().await;
    tracing::info!("shutting down: draining connections, batches and archive objects");
    health.set_ready(false);
    stop.cancel();
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout.0;
    for s in serving {
        let _ = s.await;
    }
    drain.cancel();
    // The archive writers (`workers`) and every route, old generations still
    // sending included, share the deadline. Whether the archives finished
    // tells where events no backend got still are.
    let archives = tokio::time::timeout_at(deadline, futures::future::join_all(workers)).await;
    let archives_done = archives.is_ok();
    for r in archives.into_iter().flatten() {
        telemetry::faults::check_join(telemetry::faults::Task::ArchiveWriter, "archive", r);
    }
    let routes = tokio::time::timeout_at(deadline, futures::future::join_all(router.tasks())).await;
    let routes_done = routes.is_ok();
    for r in routes.into_iter().flatten() {
        telemetry::faults::check_join(telemetry::faults::Task::Route, "route", r);
    }
    let lost = (!archives_done || !routes_done)
        .then(|| sink::shutdown::report(&config, archives_done))
        .flatten();
    let _ = saver.await;
    quotas.save();
    admin_stop.cancel();
    let _ = admin_task.await;
    match lost {
        // main.rs logs it and exits non-zero.
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
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
