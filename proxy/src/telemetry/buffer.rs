//! Metrics of the disk buffer (the write-ahead log), per tenant and, where
//! the log's readers differ, per destination (`archive`, `route`).
use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec};
use std::sync::LazyLock;

pub struct BufferMetrics {
    pub bytes: super::computed::ComputedGauge,
    pub records: IntCounterVec,
    pub oldest_undelivered: IntGaugeVec,
    pub replayed_events: IntCounterVec,
    pub lost_events: IntCounterVec,
    pub damaged: IntCounterVec,
    pub dropped_events: IntCounterVec,
    pub write_errors: IntCounterVec,
    pub sync_seconds: HistogramVec,
}

pub static BUFFER: LazyLock<BufferMetrics> = LazyLock::new(|| {
    let r = &super::METRICS.registry;
    // The registry's own builders (telemetry/mod.rs), as every other metric uses.
    let counter = |name: &str, help: &str, labels: &[&str]| super::counter(r, name, help, labels);
    let gauge = |name: &str, help: &str, labels: &[&str]| super::gauge(r, name, help, labels);
    let sync_seconds = HistogramVec::new(
        HistogramOpts::new(
            "weir_buffer_sync_duration_seconds",
            "Time to write and fsync one group of log records (one group commit)",
        )
        .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap()),
        &["tenant"],
    )
    .unwrap();
    r.register(Box::new(sync_seconds.clone())).unwrap();
    let bytes = super::computed::ComputedGauge::new(
        "weir_buffer_bytes",
        "Bytes of the tenant's log on disk (segments not yet read by every destination); read at each scrape",
        &["tenant"],
    );
    r.register(Box::new(bytes.clone())).unwrap();
    BufferMetrics {
        bytes,
        records: counter("weir_buffer_records_total", "Records (one per accepted request) written to the tenant's log", &["tenant"]),
        oldest_undelivered: gauge("weir_buffer_oldest_undelivered_seconds", "Age of the oldest record a destination has read but not finished (0: none)", &["tenant", "destination"]),
        replayed_events: counter("weir_buffer_replayed_events_total", "Events read again after a restart (written by an earlier run, not yet acknowledged by the destination)", &["tenant", "destination"]),
        lost_events: counter("weir_buffer_lost_events_total", "Events in damaged or missing log records a destination had to skip", &["tenant", "destination"]),
        damaged: counter("weir_buffer_damaged_records_total", "Places in the log where bytes were not a whole valid record (skipped)", &["tenant", "destination"]),
        dropped_events: counter("weir_buffer_dropped_events_total", "Events dropped because the log was full (when_full: drop_newest)", &["tenant"]),
        write_errors: counter("weir_buffer_write_errors_total", "Log writes that failed (disk full or failing); their requests were answered 503", &["tenant"]),
        sync_seconds,
    }
});

/// Every series of `tenant` at 0, so `rate()` sees the first event.
pub fn seed(tenant: &str) {
    let m = &*BUFFER;
    m.records.with_label_values(&[tenant]);
    m.dropped_events.with_label_values(&[tenant]);
    m.write_errors.with_label_values(&[tenant]);
    m.sync_seconds.with_label_values(&[tenant]);
    for d in ["archive", "route"] {
        let l = [tenant, d];
        m.oldest_undelivered.with_label_values(&l);
        m.replayed_events.with_label_values(&l);
        m.lost_events.with_label_values(&l);
        m.damaged.with_label_values(&l);
    }
}
