//! Prometheus metrics (all `weir_`-prefixed, tenant-labelled where it applies;
//! never a key or credential) and structured logging.
//!
//! Every series whose label values the config names (tenants, intakes,
//! backends, rules, plugins, listeners) exists from the start with 0
//! (seed.rs), so `increase()` and `rate()` see the first burst. Gauges that
//! describe a state are read from it at scrape time (computed.rs), so they
//! cannot go stale.
pub mod archive;
pub mod buffer;
pub mod computed;
pub mod faults;
pub mod fleet;
pub mod labels;
pub mod seed;

use crate::config::{LogConfig, LogFormat};
use computed::ComputedGauge;
pub use labels::{
    DropReason, IntakeOutcome, PluginErrorReason, QueueKind, ReloadOutcome, SendOutcome,
};
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
pub use seed::seed;
use std::sync::LazyLock;

pub struct Metrics {
    pub registry: Registry,
    pub received_events: IntCounterVec,
    pub received_bytes: IntCounterVec,
    pub accepted_requests: IntCounterVec,
    pub intake_latency: HistogramVec,
    pub truncated_events: IntCounterVec,
    pub rejected_requests: IntCounterVec,
    pub forwarded_events: IntCounterVec,
    pub forwarded_bytes: IntCounterVec,
    pub backend_requests: IntCounterVec,
    pub backend_latency: HistogramVec,
    pub backend_retries: IntCounterVec,
    pub backend_dropped_events: IntCounterVec,
    pub backend_up: ComputedGauge,
    pub backend_failovers: IntCounterVec,
    pub dead_lettered_events: IntCounterVec,
    pub pending_events: IntGaugeVec,
    pub inflight_batches: IntGaugeVec,
    pub archived_events: IntCounterVec,
    pub archived_bytes: IntCounterVec,
    pub archive_objects: IntCounterVec,
    pub archive_errors: IntCounterVec,
    pub queued_bytes: IntGaugeVec,
    pub open_connections: IntGaugeVec,
    pub tls_handshake_failures: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub refused_connections: IntCounterVec,
    pub rate_limited_requests: IntCounterVec,
    pub rule_matched: IntCounterVec,
    pub rule_excluded: IntCounterVec,
    pub rule_kept: IntCounterVec,
    pub quota_usage_events: IntGaugeVec,
    pub quota_usage_bytes: IntGaugeVec,
    pub quota_limit_events: IntGaugeVec,
    pub quota_limit_bytes: IntGaugeVec,
    pub quota_warning: IntGaugeVec,
    pub over_quota_events: IntCounterVec,
    pub plugin_calls: IntCounterVec,
    pub plugin_errors: IntCounterVec,
    pub plugin_duration: HistogramVec,
    pub plugin_quarantined: IntGaugeVec,
    pub plugin_counter: IntCounterVec,
    pub ready: IntGauge,
    pub tails_open: IntGauge,
    pub task_failures: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("process collector");
    let backend_latency = HistogramVec::new(
        HistogramOpts::new(
            "weir_backend_request_duration_seconds",
            "Time for one request to a backend, by outcome",
        )
        .buckets(exponential_buckets(0.001, 2.0, 16).unwrap()),
        &["backend", "outcome"],
    )
    .unwrap();
    r.register(Box::new(backend_latency.clone())).unwrap();
    let plugin_duration = HistogramVec::new(
        HistogramOpts::new(
            "weir_plugin_call_duration_seconds",
            "Time for one plugin call (one batch), failed ones included",
        )
        .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap()),
        &["tenant", "plugin"],
    )
    .unwrap();
    r.register(Box::new(plugin_duration.clone())).unwrap();
    let intake_latency = HistogramVec::new(
        HistogramOpts::new(
            "weir_intake_request_duration_seconds",
            "Time from a request's arrival at an intake to its answer (accepted or refused), reading and decoding the body and the stage chain included",
        )
        .buckets(exponential_buckets(0.0005, 2.0, 16).unwrap()),
        &["intake", "outcome"],
    )
    .unwrap();
    r.register(Box::new(intake_latency.clone())).unwrap();
    let ready = IntGauge::new(
        "weir_ready",
        "1 while the proxy takes traffic (/readyz answers 200); 0 while starting and while draining at shutdown",
    )
    .unwrap();
    r.register(Box::new(ready.clone())).unwrap();
    let tails_open = IntGauge::new(
        "weir_tails_open",
        "Live tails (GET /admin/tail) open now; admin.max_tails caps them",
    )
    .unwrap();
    r.register(Box::new(tails_open.clone())).unwrap();
    build_info(&r);
    let backend_up = ComputedGauge::new(
        "weir_backend_up",
        "1 while a backend takes traffic, 0 while it is ejected (failed sends) or down (health check); read from its health at each scrape",
        &["backend"],
    );
    r.register(Box::new(backend_up.clone())).unwrap();
    Metrics {
        received_events: counter(
            &r,
            "weir_received_events_total",
            "Events accepted at intake",
            &["tenant", "intake"],
        ),
        received_bytes: counter(
            &r,
            "weir_received_bytes_total",
            "Decompressed request bytes accepted at intake",
            &["tenant", "intake"],
        ),
        accepted_requests: counter(
            &r,
            "weir_accepted_requests_total",
            "Requests accepted at intake (answered 202)",
            &["tenant", "intake"],
        ),
        intake_latency,
        truncated_events: counter(
            &r,
            "weir_truncated_events_total",
            "Events whose message was cut to the size limit",
            &["tenant"],
        ),
        rejected_requests: counter(
            &r,
            "weir_rejected_requests_total",
            "Requests refused, by reason",
            &["intake", "reason"],
        ),
        forwarded_events: counter(
            &r,
            "weir_forwarded_events_total",
            "Events delivered to a backend",
            &["tenant", "backend"],
        ),
        forwarded_bytes: counter(
            &r,
            "weir_forwarded_bytes_total",
            "Uncompressed bytes delivered to a backend",
            &["tenant", "backend"],
        ),
        backend_requests: counter(
            &r,
            "weir_backend_requests_total",
            "Requests to backends, by outcome",
            &["backend", "outcome"],
        ),
        backend_latency,
        backend_retries: counter(
            &r,
            "weir_backend_retries_total",
            "Batches (or the part of one a backend asked for again) sent once more after a retryable failure on this backend; a last attempt given up on is not one",
            &["backend"],
        ),
        backend_dropped_events: counter(
            &r,
            "weir_backend_dropped_events_total",
            "Events lost, by reason: rejected (refused for good, no archive to dead-letter to), dead_letter_failed, retries_exhausted, partial_success (rejected without naming which)",
            &["tenant", "backend", "reason"],
        ),
        backend_up,
        backend_failovers: counter(
            &r,
            "weir_backend_failovers_total",
            "Batches sent to another backend than the one they were meant for: after failing on it, or because it was ejected or its health check had it down",
            &["tenant", "from", "to"],
        ),
        dead_lettered_events: counter(
            &r,
            "weir_dead_lettered_events_total",
            "Events of batches a backend refused as malformed, written to the archive's dead-letter prefix",
            &["tenant", "backend", "status"],
        ),
        pending_events: gauge(
            &r,
            "weir_pending_events",
            "Events a tenant's route holds and has not yet delivered or given up on, by the backend last tried (before any try: the route's preferred backend)",
            &["tenant", "backend"],
        ),
        inflight_batches: gauge(
            &r,
            "weir_inflight_batches",
            "Batches being sent to a backend",
            &["backend"],
        ),
        archived_events: counter(
            &r,
            "weir_archived_events_total",
            "Events written to archive objects",
            &["tenant"],
        ),
        archived_bytes: counter(
            &r,
            "weir_archived_bytes_total",
            "Uncompressed bytes written to archive objects",
            &["tenant"],
        ),
        archive_objects: counter(
            &r,
            "weir_archive_objects_total",
            "Archive objects written",
            &["tenant"],
        ),
        archive_errors: counter(
            &r,
            "weir_archive_errors_total",
            "Failed archive object writes (retried)",
            &["tenant"],
        ),
        queued_bytes: gauge(
            &r,
            "weir_queued_bytes",
            "Bytes held in memory: queue=intake (request bodies being decoded), archive (per tenant) or backend (per tenant route, named by its preferred backend)",
            &["queue", "tenant", "backend"],
        ),
        open_connections: gauge(
            &r,
            "weir_open_connections",
            "Client connections open",
            &["listener"],
        ),
        tls_handshake_failures: counter(
            &r,
            "weir_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out",
            &["listener"],
        ),
        refused_connections: counter(
            &r,
            "weir_refused_connections_total",
            "Connections closed at once, by reason (per_ip_limit: the client IP held limits.max_connections_per_ip)",
            &["listener", "reason"],
        ),
        tls_reloads: counter(
            &r,
            "weir_tls_reloads_total",
            "Listener certificate, key and CA reloads after their files changed, by outcome (ok, error: the previous ones kept)",
            &["listener", "outcome"],
        ),
        rate_limited_requests: counter(
            &r,
            "weir_rate_limited_requests_total",
            "Requests refused with 429 by a tenant's rate limit",
            &["tenant"],
        ),
        rule_matched: counter(
            &r,
            "weir_rule_matched_events_total",
            "Events an exclusion rule's query matched",
            &["tenant", "rule"],
        ),
        rule_excluded: counter(
            &r,
            "weir_rule_excluded_events_total",
            "Events an exclusion rule kept from the index",
            &["tenant", "rule"],
        ),
        rule_kept: counter(
            &r,
            "weir_rule_kept_events_total",
            "Matched events sampling let through to the index",
            &["tenant", "rule"],
        ),
        quota_usage_events: gauge(
            &r,
            "weir_quota_usage_events",
            "Events indexed in the current quota day",
            &["tenant", "partition"],
        ),
        quota_usage_bytes: gauge(
            &r,
            "weir_quota_usage_bytes",
            "Bytes indexed in the current quota day",
            &["tenant", "partition"],
        ),
        quota_limit_events: gauge(
            &r,
            "weir_quota_limit_events",
            "Daily event quota; no series while the partition has no event limit",
            &["tenant", "partition"],
        ),
        quota_limit_bytes: gauge(
            &r,
            "weir_quota_limit_bytes",
            "Daily byte quota; no series while the partition has no byte limit",
            &["tenant", "partition"],
        ),
        quota_warning: gauge(
            &r,
            "weir_quota_warning",
            "1 once usage passed the warning threshold this quota day",
            &["tenant", "partition"],
        ),
        over_quota_events: counter(
            &r,
            "weir_over_quota_events_total",
            "Events over the daily quota, by the action taken",
            &["tenant", "action"],
        ),
        plugin_calls: counter(
            &r,
            "weir_plugin_calls_total",
            "Plugin calls (one per batch)",
            &["tenant", "plugin"],
        ),
        plugin_errors: counter(
            &r,
            "weir_plugin_errors_total",
            "Batches a plugin failed on (or skipped while quarantined), by reason",
            &["tenant", "plugin", "reason"],
        ),
        plugin_duration,
        plugin_quarantined: gauge(
            &r,
            "weir_plugin_quarantined",
            "1 while a plugin is quarantined after repeated failures",
            &["tenant", "plugin"],
        ),
        plugin_counter: counter(
            &r,
            "weir_plugin_custom_total",
            "A plugin's own counters, by the name it adds to through weir.counter_add",
            &["tenant", "plugin", "name"],
        ),
        ready,
        tails_open,
        task_failures: counter(
            &r,
            "weir_task_failures_total",
            "Tasks that failed (panicked), by task: route_send, route, archive_writer, stage; /readyz answers 503 after one",
            &["task"],
        ),
        registry: r,
    }
});

// ---- Plugin verdicts (counted in plugin/, by `plugin::VerdictLabel`) ----

/// `weir_plugin_events_total{tenant, plugin, verdict}`: the events each plugin returned, by what it said of
/// them: `kept` (unchanged), `modified` (kept, changed), `dropped`, `archive_only`, or `on_error` (events of a
/// batch the plugin failed, or skipped while quarantined, which took the plugin's `on_error` policy).
pub static PLUGIN_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        &METRICS.registry,
        "weir_plugin_events_total",
        "Events through each plugin, by verdict: kept, modified, dropped, archive_only, on_error",
        &["tenant", "plugin", "verdict"],
    )
});

// ---- end of plugin verdicts ----

/// `weir_build_info{version, commit}`, always 1: joins a series to the build that exported it.
fn build_info(r: &Registry) {
    let g = IntGaugeVec::new(
        Opts::new(
            "weir_build_info",
            "Always 1; the labels name the version and the git commit of the running build",
        ),
        &["version", "commit"],
    )
    .unwrap();
    g.with_label_values(&[env!("CARGO_PKG_VERSION"), build_commit()])
        .set(1);
    r.register(Box::new(g)).unwrap();
}

/// The short commit hash proxy/build.rs puts in `WEIR_BUILD_COMMIT` (` (abc1234 2026-12-02)`), or `unknown`.
fn build_commit() -> &'static str {
    option_env!("WEIR_BUILD_COMMIT")
        .and_then(|s| s.trim().trim_start_matches('(').split_whitespace().next())
        .unwrap_or("unknown")
}

/// The gauge of `weir_queued_bytes` for one queue.
pub fn queued_bytes(kind: QueueKind) -> IntGauge {
    METRICS.queued_bytes.with_label_values(&kind.labels())
}

/// Counts one answered intake request in `weir_intake_request_duration_seconds`.
pub fn observe_intake(intake: &str, outcome: IntakeOutcome, started: std::time::Instant) {
    METRICS
        .intake_latency
        .with_label_values(&[intake, outcome.as_str()])
        .observe(started.elapsed().as_secs_f64());
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut out)
        .expect("encoding metrics");
    out
}

/// Installs the global tracing subscriber. RUST_LOG, when set, wins over the config's
/// level; a filter that would silence everything (`RUST_LOG=infox`) is refused.
pub fn init_logging(cfg: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            crate::config::check_log_filter(&env).map_err(|e| format!("RUST_LOG: {e}"))?;
            EnvFilter::new(env)
        }
        _ => {
            crate::config::check_log_filter(&cfg.level).map_err(|e| format!("log.level: {e}"))?;
            EnvFilter::new(&cfg.level)
        }
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}
