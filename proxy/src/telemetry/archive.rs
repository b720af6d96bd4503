//! Metrics of the archive's stores, by store name (`archive_stores`, or the
//! URL of an inline `store`): what each took, its failures and failovers,
//! whether it is up and how old the oldest event waiting for it is.
use super::computed::ComputedGauge;
use prometheus::IntCounterVec;
use std::sync::LazyLock;

pub struct ArchiveMetrics {
    pub objects: IntCounterVec,
    pub bytes: IntCounterVec,
    pub errors: IntCounterVec,
    pub failovers: IntCounterVec,
    pub up: ComputedGauge,
    pub oldest_unwritten: ComputedGauge,
}

pub static ARCHIVE: LazyLock<ArchiveMetrics> = LazyLock::new(|| {
    let r = &super::METRICS.registry;
    let counter = |name: &str, help: &str| super::counter(r, name, help, &["store"]);
    let computed = |name: &str, help: &str| {
        let g = ComputedGauge::new(name, help, &["store"]);
        r.register(Box::new(g.clone())).unwrap();
        g
    };
    ArchiveMetrics {
        objects: counter("weir_archive_store_objects_total", "Archive objects the store took"),
        bytes: counter("weir_archive_store_bytes_total", "Compressed bytes of the archive objects the store took"),
        errors: counter("weir_archive_store_errors_total", "Archive writes the store failed"),
        failovers: counter("weir_archive_store_failovers_total", "Times the store went down (failover.after_failures failed writes in a row) and objects moved to the next store"),
        up: computed("weir_archive_store_up", "1 while the store takes objects, 0 while it is down (objects go to the next store; retried after failover.retry_after); read at each scrape"),
        oldest_unwritten: computed("weir_archive_store_oldest_unwritten_seconds", "Age of the oldest event in an archive object waiting for the store (0: none waits); read at each scrape"),
    }
});
