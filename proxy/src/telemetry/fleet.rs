//! Metrics of fleet mode: the shared store (Redis), how this instance
//! enforces quotas and rate limits now, and the shared run-time changes.
use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

pub struct FleetMetrics {
    pub store_up: IntGauge,
    pub store_seconds: HistogramVec,
    pub store_errors: IntCounterVec,
    pub mode: IntGaugeVec,
    pub instances: IntGauge,
    pub config_version: IntGauge,
    pub last_sync_age: IntGauge,
}

pub static FLEET: LazyLock<FleetMetrics> = LazyLock::new(|| {
    let r = &super::METRICS.registry;
    let counter = |name: &str, help: &str, labels: &[&str]| super::counter(r, name, help, labels);
    let gauge = |name: &str, help: &str, labels: &[&str]| super::gauge(r, name, help, labels);
    let plain = |name: &str, help: &str| {
        let g = IntGauge::new(name, help).unwrap();
        r.register(Box::new(g.clone())).unwrap();
        g
    };
    let store_seconds = HistogramVec::new(
        HistogramOpts::new(
            "weir_fleet_store_duration_seconds",
            "Time of one call to the fleet's Redis, failed ones included, by operation",
        )
        .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap()),
        &["op"],
    )
    .unwrap();
    r.register(Box::new(store_seconds.clone())).unwrap();
    FleetMetrics {
        store_up: plain("weir_fleet_store_up", "1 while the fleet's Redis answers, 0 while it does not (quotas and rate limits then follow fleet.on_unavailable)"),
        store_seconds,
        store_errors: counter("weir_fleet_store_errors_total", "Calls to the fleet's Redis that failed, by operation and kind (timeout, io, response)", &["op", "kind"]),
        mode: gauge("weir_fleet_mode", "1 for how this instance enforces shared quotas now: shared (Redis answers), local (its share) or fail_closed", &["mode"]),
        instances: plain("weir_fleet_instances", "Instances seen in the fleet at the last sync (this one included)"),
        config_version: plain("weir_fleet_config_version", "Version of the fleet's shared rules and quotas applied here (0: none yet)"),
        last_sync_age: plain("weir_fleet_last_sync_age_seconds", "Seconds since this instance last synced quota usage with the fleet"),
    }
});
