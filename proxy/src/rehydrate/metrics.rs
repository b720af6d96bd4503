//! Rehydration's metrics, registered with the proxy's other series (so
//! `/metrics` shows them) when the first `Rehydrations` is made. Series by
//! tenant exist from the start with 0 for every tenant with an archive.
use crate::telemetry::METRICS;
use prometheus::{IntCounterVec, IntGauge, Opts};
use std::sync::LazyLock;

pub struct Metrics {
    /// Events (and their bytes) a route is done with, by tenant.
    pub events: IntCounterVec,
    pub bytes: IntCounterVec,
    /// Jobs running now (dry runs included).
    pub running: IntGauge,
}

pub static REHYDRATION: LazyLock<Metrics> = LazyLock::new(|| {
    let events = IntCounterVec::new(
        Opts::new(
            "weir_rehydrated_events_total",
            "Archived events a rehydration sent and the route is done with (delivered, or dead-lettered or given up on as for any event)",
        ),
        &["tenant"],
    )
    .unwrap();
    let bytes = IntCounterVec::new(
        Opts::new(
            "weir_rehydrated_bytes_total",
            "Bytes (uncompressed NDJSON lines) of weir_rehydrated_events_total",
        ),
        &["tenant"],
    )
    .unwrap();
    let running = IntGauge::new(
        "weir_rehydrations_running",
        "Rehydration jobs running now, dry runs included",
    )
    .unwrap();
    let r = &METRICS.registry;
    r.register(Box::new(events.clone())).unwrap();
    r.register(Box::new(bytes.clone())).unwrap();
    r.register(Box::new(running.clone())).unwrap();
    Metrics {
        events,
        bytes,
        running,
    }
});

/// Registers the series, with a 0 for each of `tenants`.
pub fn seed<'a>(tenants: impl Iterator<Item = &'a str>) {
    for t in tenants {
        REHYDRATION.events.with_label_values(&[t]);
        REHYDRATION.bytes.with_label_values(&[t]);
    }
}
