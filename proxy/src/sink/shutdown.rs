//! What a shutdown that ran out of time leaves undelivered, and where those
//! events still are: every event a route forwards was also handed to the
//! tenant's archive (when it has one), so once the archive writers have
//! finished, what no backend got is in the archive, to be rehydrated.
use crate::plan::Plan;
use crate::telemetry::METRICS;

/// Events that routes hold and have not delivered or given up on, as
/// (tenant, backend last tried, events), read from `weir_pending_events`.
pub fn undelivered() -> Vec<(String, String, u64)> {
    use prometheus::core::Collector;
    let mut out = Vec::new();
    for family in METRICS.pending_events.collect() {
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map_or_else(String::new, |l| l.value().to_string())
            };
            let events = m.get_gauge().value() as u64;
            if events > 0 {
                out.push((label("tenant"), label("backend"), events));
            }
        }
    }
    out.sort();
    out
}

/// Where a tenant's archive objects are written (each store of its archive, in order).
pub fn archive_location(plan: &Plan, tenant: &str) -> Option<String> {
    let t = plan.tenant(tenant)?;
    if !t.archive.enabled {
        return None;
    }
    let places: Vec<String> = t
        .archive_stores
        .iter()
        .map(|s| format!("{}/{tenant}/", s.store.url()))
        .collect();
    Some(places.join(" or "))
}

/// Logs, per tenant and backend, the events the routes did not deliver
/// before the shutdown timeout and where they still are; `archives_done`:
/// every archive writer wrote out what it held. The error is what `run`
/// returns (the exit status is non-zero); none when nothing is left.
pub fn report(plan: &Plan, archives_done: bool) -> Option<anyhow::Error> {
    let left = undelivered();
    let timeout = plan.config.shutdown_timeout.0;
    if !archives_done {
        tracing::error!(?timeout, "shutdown timed out before the archive writers wrote out what they held; those events are lost");
    }
    let total: u64 = left.iter().map(|(_, _, n)| n).sum();
    let mut archived = 0;
    for (tenant, backend, events) in &left {
        match archive_location(plan, tenant) {
            Some(archive) if archives_done => {
                archived += events;
                tracing::error!(tenant, backend, events, archive, "shutdown timed out: events not delivered to the backend; they are in the tenant's archive (rehydrate them from there)");
            }
            Some(archive) => {
                tracing::error!(tenant, backend, events, archive, "shutdown timed out: events not delivered to the backend, and the archive writer had not finished: they may not be archived");
            }
            None => {
                tracing::error!(tenant, backend, events, "shutdown timed out: events not delivered to the backend; the tenant has no archive: they are lost");
            }
        }
    }
    if total == 0 && archives_done {
        return None;
    }
    Some(anyhow::anyhow!(
        "shutdown timed out after {timeout:?}: {total} events not delivered to their backends ({archived} of them in archives){}",
        if archives_done { "" } else { "; archive writers had not finished" }
    ))
}
