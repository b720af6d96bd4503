//! Fleet mode: instances behind one load balancer share each tenant's daily
//! quota and rate limit, and the run-time rule and quota changes, through
//! Redis (`fleet:` in the config). Redis is never on an event's path: each
//! instance decides locally (quota/shared.rs) and syncs in the background
//! every `sync_interval`, or sooner when a partition nears
//! `max_unsynced_events`.
//!
//! Each sync writes this instance's absolute usage for the quota day into the
//! tenant's hash (one field per partition and instance) and reads the whole
//! hash back, in one pipeline. Absolute values make a retried write harmless
//! and rebuild the fleet's totals when Redis comes back empty.
pub mod changes;
pub mod store;

use crate::config::FleetConfig;
use crate::quota::daily::{DailyQuotas, Usage};
use crate::quota::shared::{FleetView, Mode};
use crate::telemetry::fleet::FLEET;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use store::{Keys, Store};
use tokio_util::sync::CancellationToken;

const DAY_MS: i64 = 86_400_000;
/// Tenants synced at once (each one pipeline).
const SYNC_CONCURRENCY: usize = 64;

pub struct Fleet {
    pub view: Arc<FleetView>,
    pub store: Arc<Store>,
    pub keys: Keys,
    pub instance: String,
    cfg: FleetConfig,
    last_sync_ms: AtomicI64,
    /// Tenants synced at least once by this process.
    synced_once: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Fleet {
    /// The fleet of `cfg`; connects lazily. The pub/sub receiver goes to the
    /// change watcher ([`changes::watch`]).
    pub fn new(
        cfg: &FleetConfig,
        data_dir: &Path,
    ) -> anyhow::Result<(
        Arc<Fleet>,
        tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    )> {
        let instance = match &cfg.instance_id {
            Some(id) => id.clone(),
            None => instance_id(data_dir)?,
        };
        let (store, pushes) = Store::new(cfg);
        let view = Arc::new(FleetView::new(
            cfg.on_unavailable,
            cfg.max_unsynced_events,
            cfg.expected_instances,
        ));
        let fleet = Fleet {
            view,
            store: Arc::new(store),
            keys: Keys::new(&cfg.key_prefix),
            instance,
            cfg: cfg.clone(),
            last_sync_ms: AtomicI64::new(0),
            synced_once: Default::default(),
        };
        fleet.publish_mode();
        Ok((Arc::new(fleet), pushes))
    }

    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    fn publish_mode(&self) {
        let mode = self.view.mode();
        for m in [Mode::Shared, Mode::Local, Mode::FailClosed] {
            FLEET
                .mode
                .with_label_values(&[m.as_str()])
                .set((m == mode) as i64);
        }
        FLEET.instances.set(self.view.instances() as i64);
    }

    /// For `/readyz`: never a reason to refuse traffic (an outage of Redis
    /// must not empty the load balancer), but what the fleet looks like here.
    pub fn report(&self) -> Value {
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        json!({
            "instance": self.instance,
            "store": if self.store.up() { "up" } else { "down" },
            "mode": self.view.mode().as_str(),
            "instances": self.view.instances(),
            "last_sync_age_ms": (last > 0).then(|| now_ms() - last),
        })
    }

    /// Syncs every `sync_interval` (or when woken early) until `stop`, then once more.
    pub async fn run_sync(self: Arc<Self>, quotas: Arc<DailyQuotas>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.sync_interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let early = tokio::select! {
                _ = tick.tick() => false,
                _ = self.view.wake.notified() => true,
                _ = stop.cancelled() => {
                    self.sync_once(&quotas).await;
                    self.leave().await;
                    return;
                }
            };
            if early {
                self.sync_tenants(&quotas, true).await;
            } else {
                self.sync_once(&quotas).await;
            }
        }
    }

    /// One round: say this instance is alive and count the live ones, then
    /// send and read every tenant's usage. Redis not answering the first:
    /// every limit follows the policy until a round succeeds; a tenant whose
    /// own sync failed: that tenant's.
    pub async fn sync_once(&self, quotas: &DailyQuotas) {
        let now = now_ms();
        let ok = match self.heartbeat(now).await {
            Ok(n) => {
                self.view.set_instances(n);
                self.sync_tenants(quotas, false).await;
                true
            }
            Err(_) => false,
        };
        if ok {
            self.last_sync_ms.store(now, Ordering::Relaxed);
        }
        self.view.set_degraded(!ok);
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        FLEET.last_sync_age.set(if last > 0 {
            (now_ms() - last) / 1000
        } else {
            -1
        });
        self.publish_mode();
    }

    /// Records this instance in the members set; the number seen within
    /// three sync intervals (at least 3 s), this one included.
    async fn heartbeat(&self, now: i64) -> Result<u32, store::StoreError> {
        let key = self.keys.members();
        let me = self.instance.clone();
        let stale = now - (3 * self.cfg.sync_interval.0.as_millis() as i64).max(3000);
        self.store
            .call("heartbeat", |mut c| async move {
                let (n,): (u32,) = redis::pipe()
                    .zadd(&key, &me, now)
                    .ignore()
                    .zrembyscore(&key, "-inf", stale)
                    .ignore()
                    .zcard(&key)
                    .query_async(&mut c)
                    .await?;
                Ok(n)
            })
            .await
    }

    /// At shutdown: out of the members at once, so that the others' rate
    /// limit shares grow now rather than when this one goes stale.
    async fn leave(&self) {
        let key = self.keys.members();
        let me = self.instance.clone();
        let _ = self
            .store
            .call("heartbeat", |mut c| async move {
                redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&me)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }

    /// Syncs every tenant with a quota, or (`pressing_only`) those with a
    /// partition halfway to `max_unsynced_events`.
    async fn sync_tenants(&self, quotas: &DailyQuotas, pressing_only: bool) {
        futures::stream::iter(quotas.own_usage(pressing_only))
            .map(|o| self.sync_tenant(quotas, o))
            .buffer_unordered(SYNC_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    async fn sync_tenant(&self, quotas: &DailyQuotas, own: crate::quota::daily::OwnUsage) {
        let key = self.keys.quota(&own.tenant, own.window_start_ms);
        let me = self.instance.clone();
        let fields: Vec<(String, String)> = own
            .usage
            .iter()
            .map(|(p, u)| (field(p, &me), format!("{} {}", u.events, u.bytes)))
            .collect();
        // Kept a day past the quota day's end, for late syncs and inspection.
        let expire_at = own.window_start_ms + 2 * DAY_MS;
        let all = self
            .store
            .call("quota_sync", |mut c| async move {
                // Read before writing: what Redis held for this instance too.
                let mut p = redis::pipe();
                p.hgetall(&key);
                if !fields.is_empty() {
                    p.hset_multiple(&key, &fields).ignore();
                }
                let (all,): (HashMap<String, String>,) = p
                    .pexpire_at(&key, expire_at)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(all)
            })
            .await;
        match all {
            Ok(all) => {
                let others = others_usage(&all, &self.instance);
                // The first sync of this process takes what Redis recorded for it.
                let first = self.synced_once.lock().unwrap().insert(own.tenant.clone());
                let recorded = first.then(|| own_recorded(&all, &self.instance));
                quotas.synced(own, others, self.view.instances(), recorded);
            }
            Err(_) => quotas.sync_failed(&own.tenant),
        }
    }
}

/// A hash field: partition and instance (no instance id holds \x1f).
fn field(partition: &str, instance: &str) -> String {
    format!("{partition}\x1f{instance}")
}

/// The other instances' usage per partition, from a tenant's hash.
fn others_usage(all: &HashMap<String, String>, me: &str) -> HashMap<String, Usage> {
    usage_where(all, |instance| instance != me)
}

/// This instance's usage per partition as Redis recorded it.
fn own_recorded(all: &HashMap<String, String>, me: &str) -> HashMap<String, Usage> {
    usage_where(all, |instance| instance == me)
}

/// The usage per partition of the instances `pick` takes, from a tenant's hash.
fn usage_where(
    all: &HashMap<String, String>,
    pick: impl Fn(&str) -> bool,
) -> HashMap<String, Usage> {
    let mut others: HashMap<String, Usage> = HashMap::new();
    for (f, v) in all {
        let Some((partition, instance)) = f.rsplit_once('\x1f') else {
            continue;
        };
        if !pick(instance) {
            continue;
        }
        let mut it = v.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        let (events, bytes) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let u = others.entry(partition.to_string()).or_default();
        u.events += events;
        u.bytes += bytes;
    }
    others
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// This instance's id: made once (host name and random) and kept in the
/// data directory, whose saved usage it names.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(64)
        .collect();
    let id = format!(
        "{}-{:08x}",
        if host.is_empty() { "weir" } else { &host },
        rand::random::<u32>()
    );
    std::fs::create_dir_all(data_dir)?;
    crate::durable::write_atomic(data_dir, "instance-id", id.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_summed_by_partition_without_this_instance() {
        let all: HashMap<String, String> = [
            (field("", "a"), "10 100".to_string()),
            (field("", "b"), "5 50".to_string()),
            (field("web", "b"), "7 70".to_string()),
            (field("web", "c"), "1 10".to_string()),
        ]
        .into_iter()
        .collect();
        let o = others_usage(&all, "a");
        assert_eq!(
            o[""],
            Usage {
                events: 5,
                bytes: 50
            }
        );
        assert_eq!(
            o["web"],
            Usage {
                events: 8,
                bytes: 80
            }
        );
    }

    #[test]
    fn the_instance_id_is_made_once_per_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let a = instance_id(d.path()).unwrap();
        assert_eq!(instance_id(d.path()).unwrap(), a);
        assert_ne!(instance_id(tempfile::tempdir().unwrap().path()).unwrap(), a);
    }
}
