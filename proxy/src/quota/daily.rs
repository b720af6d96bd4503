//! Daily quotas on what each tenant indexes, counted after the exclusion
//! rules. A quota day starts at `reset_hour_utc`. Over quota, events are
//! `archive_only` (the default: still archived), `drop`ped, or the request is
//! `reject`ed with 429. Usage is saved under the data directory every second
//! and at shutdown, so a restart never hands a tenant a fresh quota.
//!
//! Each tenant's stage ([`DailyQuota`]) holds its own quota cell; the
//! registry ([`DailyQuotas`]) holds every cell too, for the admin API (which
//! changes limits at run time, by tenant name) and for saving usage.
use crate::clock::Clock;
use crate::config::{DailyQuotaConfig, QuotaAction, QuotaLimit};
use crate::event::stage::{RejectReason, Rejection, Stage};
use crate::event::{Batch, Disposition, Event, Why};
use crate::quota::rate::field_value;
use crate::quota::shared::{FleetShare, FleetView, Mode};
use crate::telemetry::METRICS;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The start (ms since epoch) of the quota day holding `now`.
pub fn window_start(now_ms: i64, reset_hour_utc: u32) -> i64 {
    let offset = reset_hour_utc as i64 * HOUR_MS;
    (now_ms - offset).div_euclid(DAY_MS) * DAY_MS + offset
}

/// Usage of one partition in the current quota day.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub events: u64,
    pub bytes: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    window_start_ms: i64,
    usage: BTreeMap<String, Usage>,
    /// In a fleet: the others' usage at the last sync, so a restart while
    /// Redis is down still knows its share.
    #[serde(default)]
    fleet: FleetShare,
}

struct State {
    window_start_ms: i64,
    usage: HashMap<String, Usage>,
    warned: HashSet<String>,
    dirty: bool,
    /// The other instances' usage (fleet mode; empty otherwise).
    fleet: FleetShare,
}

struct TenantQuota {
    name: String,
    settings: RwLock<DailyQuotaConfig>,
    state: Mutex<State>,
}

/// A snapshot for the admin API.
#[derive(Debug, Serialize)]
pub struct QuotaView {
    pub tenant: String,
    pub max_events: Option<u64>,
    pub max_bytes: Option<u64>,
    pub reset_hour_utc: u32,
    pub action: QuotaAction,
    pub window_start_ms: i64,
    pub usage: BTreeMap<String, Usage>,
    /// In a fleet: every instance's usage together, as of the last sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetUsage>,
}

#[derive(Debug, Serialize)]
pub struct FleetUsage {
    pub usage: BTreeMap<String, Usage>,
    pub instances: u32,
    pub mode: &'static str,
}

/// One tenant's usage to send to the fleet.
pub struct OwnUsage {
    pub tenant: String,
    pub window_start_ms: i64,
    pub usage: Vec<(String, Usage)>,
}

/// Every tenant's quota cell, for the admin API and saving.
pub struct DailyQuotas {
    tenants: Vec<Arc<QuotaCell>>,
    shared: Arc<Shared>,
}

/// One tenant's quota: empty until it has one (from the YAML or set at run time).
pub struct QuotaCell {
    name: String,
    quota: OnceLock<TenantQuota>,
}

/// What every tenant's quota reads: the time and where usage is saved.
struct Shared {
    clock: Arc<dyn Clock>,
    dir: PathBuf,
    /// Set in fleet mode: the limits hold for all instances together.
    fleet: Option<Arc<FleetView>>,
}

/// The daily-quota stage of one tenant.
pub struct DailyQuota {
    cell: Arc<QuotaCell>,
    shared: Arc<Shared>,
}

/// Counts bytes written without keeping them.
struct ByteCounter(usize);
impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn event_bytes(ev: &Event) -> u64 {
    let mut c = ByteCounter(0);
    serde_json::to_writer(&mut c, ev).expect("counting cannot fail");
    c.0 as u64 + 1
}

impl DailyQuotas {
    /// No tenant yet; saved usage is read from `dir`.
    pub fn new(clock: Arc<dyn Clock>, dir: &Path) -> DailyQuotas {
        DailyQuotas {
            tenants: Vec::new(),
            shared: Arc::new(Shared {
                clock,
                dir: dir.to_path_buf(),
                fleet: None,
            }),
        }
    }

    /// Makes every limit the fleet's; before any tenant is added.
    pub fn share_with_fleet(&mut self, view: Arc<FleetView>) {
        Arc::get_mut(&mut self.shared)
            .expect("before any tenant is added")
            .fleet = Some(view);
    }

    /// Adds tenant `name`, with its quota if it has one, and returns its stage.
    pub fn add(&mut self, name: &str, config: Option<&DailyQuotaConfig>) -> DailyQuota {
        let cell = Arc::new(QuotaCell {
            name: name.to_string(),
            quota: OnceLock::new(),
        });
        if let Some(cfg) = config {
            self.shared.install(&cell, cfg.clone());
        }
        self.tenants.push(cell.clone());
        DailyQuota {
            cell,
            shared: self.shared.clone(),
        }
    }
}

impl Shared {
    /// Starts the tenant's quota, with the usage saved earlier in the same quota day.
    fn install<'a>(&self, cell: &'a QuotaCell, cfg: DailyQuotaConfig) -> &'a TenantQuota {
        let name = &cell.name;
        cell.quota.get_or_init(|| {
            let current = window_start(self.clock.now_ms(), cfg.reset_hour_utc);
            let saved: Option<Saved> = std::fs::read(self.dir.join(format!("{name}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let (usage, fleet) = match saved {
                Some(s) if s.window_start_ms == current => {
                    tracing::info!(tenant = %name, partitions = s.usage.len(), "daily quota usage restored");
                    (s.usage.into_iter().collect(), s.fleet)
                }
                _ => (HashMap::new(), FleetShare::default()),
            };
            let q = TenantQuota {
                name: name.clone(),
                settings: RwLock::new(cfg),
                state: Mutex::new(State {
                    window_start_ms: current,
                    usage,
                    warned: HashSet::new(),
                    dirty: false,
                    fleet,
                }),
            };
            q.publish_all();
            q
        })
    }
}

impl DailyQuotas {
    fn active(&self) -> impl Iterator<Item = &TenantQuota> {
        self.tenants.iter().filter_map(|c| c.quota.get())
    }

    /// Writes every changed tenant's usage (atomically: temp file, then rename).
    pub fn save(&self) {
        for q in self.active() {
            let saved = {
                let mut st = q.state.lock().unwrap();
                if !st.dirty {
                    continue;
                }
                st.dirty = false;
                Saved {
                    window_start_ms: st.window_start_ms,
                    usage: st.usage.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    fleet: st.fleet.clone(),
                }
            };
            if let Err(e) = crate::durable::write_atomic(
                &self.shared.dir,
                &format!("{}.json", q.name),
                &serde_json::to_vec(&saved).unwrap(),
            ) {
                q.state.lock().unwrap().dirty = true;
                tracing::warn!(tenant = %q.name, error = %e, "could not save daily quota usage");
            }
        }
    }

    pub fn views(&self) -> Vec<QuotaView> {
        self.active()
            .map(|q| {
                let s = q.settings.read().unwrap();
                let st = q.state.lock().unwrap();
                QuotaView {
                    tenant: q.name.clone(),
                    max_events: s.max_events,
                    max_bytes: s.max_bytes.map(|b| b.0),
                    reset_hour_utc: s.reset_hour_utc,
                    action: s.action,
                    window_start_ms: st.window_start_ms,
                    usage: st.usage.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    fleet: self.shared.fleet.as_ref().map(|view| FleetUsage {
                        usage: st.fleet.totals(&st.usage).into_iter().collect(),
                        instances: view.instances(),
                        mode: view.mode().as_str(),
                    }),
                }
            })
            .collect()
    }

    /// Every tenant's own usage in its current quota day, for the fleet sync.
    /// With `pressing_only`, just the tenants with a partition halfway to
    /// `max_unsynced_events` (an early sync).
    pub fn own_usage(&self, pressing_only: bool) -> Vec<OwnUsage> {
        let view = self.shared.fleet.as_deref();
        self.active()
            .filter_map(|q| {
                let st = q.state.lock().unwrap();
                if pressing_only {
                    let view = view?;
                    if !st
                        .usage
                        .iter()
                        .any(|(k, u)| st.fleet.should_sync(view, k, *u))
                    {
                        return None;
                    }
                }
                Some(OwnUsage {
                    tenant: q.name.clone(),
                    window_start_ms: st.window_start_ms,
                    usage: st.usage.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })
            })
            .collect()
    }

    /// A tenant's sync failed: its limits follow `fleet.on_unavailable` until
    /// one succeeds (the others' usage it knows may be stale).
    pub fn sync_failed(&self, tenant: &str) {
        if let Some(q) = self.active().find(|q| q.name == tenant) {
            q.state.lock().unwrap().fleet.stale = true;
        }
    }

    /// What a sync learnt: `sent` reached the others, whose usage is `others`.
    /// Ignored if the tenant's quota day turned meanwhile.
    /// `recorded`: what Redis held for this instance before this sync; on
    /// the first sync after a start it may be ahead of the saved usage (saved
    /// once a second, a crash loses up to a second), and is taken.
    pub fn synced(
        &self,
        sent: OwnUsage,
        others: HashMap<String, Usage>,
        instances: u32,
        recorded: Option<HashMap<String, Usage>>,
    ) {
        let Some(q) = self.active().find(|q| q.name == sent.tenant) else {
            return;
        };
        let mut st = q.state.lock().unwrap();
        if st.window_start_ms != sent.window_start_ms {
            return;
        }
        for (k, r) in recorded.into_iter().flatten() {
            let u = st.usage.entry(k).or_default();
            if r.events > u.events || r.bytes > u.bytes {
                u.events = u.events.max(r.events);
                u.bytes = u.bytes.max(r.bytes);
                st.dirty = true;
            }
        }
        let share = FleetShare {
            others,
            synced: sent.usage.into_iter().collect(),
            instances,
            stale: false,
        };
        // Saved with the usage (a restart during an outage keeps its share).
        if st.fleet != share {
            st.fleet = share;
            st.dirty = true;
        }
    }

    /// Changes a tenant's default daily limits at run time; false when the tenant has no quota.
    /// Sets a tenant's limits; a tenant without a quota gets one with the defaults
    /// (reset at 14:00 UTC, warning at 0.8, `archive_only`). False: no such tenant.
    pub fn set_limits(
        &self,
        tenant: &str,
        max_events: Option<u64>,
        max_bytes: Option<u64>,
    ) -> bool {
        let Some(cell) = self.tenants.iter().find(|c| c.name == tenant) else {
            return false;
        };
        let q = match cell.quota.get() {
            Some(q) => q,
            None => self.shared.install(
                cell,
                DailyQuotaConfig {
                    max_events,
                    max_bytes: max_bytes.map(crate::config::ByteSize),
                    ..DailyQuotaConfig::default()
                },
            ),
        };
        {
            let mut s = q.settings.write().unwrap();
            s.max_events = max_events;
            s.max_bytes = max_bytes.map(crate::config::ByteSize);
        }
        let mut st = q.state.lock().unwrap();
        // A raised limit may bring a partition back under its warning threshold.
        st.warned.clear();
        drop(st);
        q.publish_all();
        true
    }
}

impl TenantQuota {
    fn limit_for(settings: &DailyQuotaConfig, key: &str) -> (Option<u64>, Option<u64>) {
        match settings.overrides.get(key) {
            Some(QuotaLimit {
                max_events,
                max_bytes,
            }) => (*max_events, max_bytes.map(|b| b.0)),
            None => (settings.max_events, settings.max_bytes.map(|b| b.0)),
        }
    }

    /// Refreshes the usage and limit gauges of every known partition.
    fn publish_all(&self) {
        let s = self.settings.read().unwrap();
        let st = self.state.lock().unwrap();
        let mut keys: HashSet<&str> = st.usage.keys().map(String::as_str).collect();
        if s.partition_by.is_empty() {
            keys.insert("");
        }
        keys.extend(s.overrides.keys().map(String::as_str));
        for k in keys {
            let u = st.usage.get(k).copied().unwrap_or_default();
            self.publish(&s, k, u);
        }
    }

    fn publish(&self, s: &DailyQuotaConfig, key: &str, u: Usage) {
        let labels = [self.name.as_str(), key];
        METRICS
            .quota_usage_events
            .with_label_values(&labels)
            .set(u.events as i64);
        METRICS
            .quota_usage_bytes
            .with_label_values(&labels)
            .set(u.bytes as i64);
        // No limit, no series: a sentinel value would read as a limit to
        // `usage / limit` and to an alert comparing the two.
        let (e, b) = Self::limit_for(s, key);
        for (gauge, limit) in [
            (&METRICS.quota_limit_events, e),
            (&METRICS.quota_limit_bytes, b),
        ] {
            match limit {
                Some(v) => gauge.with_label_values(&labels).set(v as i64),
                None => {
                    let _ = gauge.remove_label_values(&labels);
                }
            }
        }
    }
}

impl TenantQuota {
    /// What the batch's indexed events add to each partition, and how many
    /// are over the limit (their disposition already set by the action).
    fn decide(
        s: &DailyQuotaConfig,
        st: &State,
        fleet: Option<&FleetView>,
        batch: &mut Batch,
    ) -> (HashMap<String, Usage>, u64) {
        let count_bytes =
            s.max_bytes.is_some() || s.overrides.values().any(|o| o.max_bytes.is_some());
        let mut delta: HashMap<String, Usage> = HashMap::new();
        let mut over = 0u64;
        // The partition key is built in one reused buffer; a String is allocated once per partition.
        let mut key = String::new();
        let why = &mut batch.why;
        for (n, (ev, disp)) in batch
            .events
            .iter()
            .zip(batch.dispositions.iter_mut())
            .enumerate()
        {
            if *disp != Disposition::Index {
                continue;
            }
            key.clear();
            for (i, f) in s.partition_by.iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                key.push_str(field_value(ev, f).as_deref().unwrap_or(""));
            }
            let size = if count_bytes { event_bytes(ev) } else { 0 };
            let (max_e, max_b) = TenantQuota::limit_for(s, &key);
            let (max_e, max_b) = match fleet {
                Some(view) => st.fleet.own_limits(view, &key, max_e, max_b),
                None => (max_e, max_b),
            };
            let used = st.usage.get(&key).copied().unwrap_or_default();
            if !delta.contains_key(&key) {
                delta.insert(key.clone(), Usage::default());
            }
            let d = delta.get_mut(&key).expect("inserted above");
            let is_over = max_e.is_some_and(|m| used.events + d.events + 1 > m)
                || max_b.is_some_and(|m| used.bytes + d.bytes + size > m);
            if is_over {
                over += 1;
                Batch::explain(why, n, || Why::OverQuota);
                match s.action {
                    QuotaAction::ArchiveOnly => *disp = Disposition::ArchiveOnly,
                    QuotaAction::Drop => *disp = Disposition::Drop,
                    QuotaAction::Reject => {}
                }
            } else {
                d.events += 1;
                d.bytes += size;
            }
        }
        (delta, over)
    }

    /// Adds `delta` to the usage (and to the batch's charges, for a refund),
    /// raising the warning where a partition crosses its threshold.
    fn record(
        &self,
        s: &DailyQuotaConfig,
        st: &mut State,
        fleet: Option<&FleetView>,
        batch: &mut Batch,
        delta: HashMap<String, Usage>,
    ) {
        for (key, d) in delta {
            if d.events == 0 {
                continue;
            }
            batch.charges.quota.push((key.clone(), d.events, d.bytes));
            batch.charges.quota_window_ms = st.window_start_ms;
            let u = st.usage.entry(key.clone()).or_default();
            u.events += d.events;
            u.bytes += d.bytes;
            let u = *u;
            st.dirty = true;
            self.publish(s, &key, u);
            if let Some(view) = fleet {
                if view.mode() == Mode::Shared && st.fleet.should_sync(view, &key, u) {
                    view.wake.notify_one();
                }
            }
            let (max_e, max_b) = TenantQuota::limit_for(s, &key);
            let crossed = max_e.is_some_and(|m| u.events as f64 >= m as f64 * s.warning_threshold)
                || max_b.is_some_and(|m| u.bytes as f64 >= m as f64 * s.warning_threshold);
            if crossed && st.warned.insert(key.clone()) {
                METRICS
                    .quota_warning
                    .with_label_values(&[&self.name, &key])
                    .set(1);
                tracing::warn!(tenant = %self.name, partition = %key, events = u.events, bytes = u.bytes, "daily quota warning threshold crossed");
            }
        }
    }
}

impl Stage for DailyQuota {
    fn name(&self) -> &'static str {
        "daily_quota"
    }

    fn commit(&self, batch: &Batch) {
        if let Some((over, action)) = batch.charges.over_quota {
            METRICS
                .over_quota_events
                .with_label_values(&[&*batch.meta.tenant, action])
                .inc_by(over);
        }
    }

    /// Takes back the usage `process` added, unless the quota day turned since.
    fn refund(&self, batch: &Batch) {
        if batch.charges.quota.is_empty() {
            return;
        }
        let Some(q) = self.cell.quota.get() else {
            return;
        };
        let s = q.settings.read().unwrap();
        let mut st = q.state.lock().unwrap();
        if st.window_start_ms != batch.charges.quota_window_ms {
            return;
        }
        for (key, events, bytes) in &batch.charges.quota {
            if let Some(u) = st.usage.get_mut(key) {
                u.events = u.events.saturating_sub(*events);
                u.bytes = u.bytes.saturating_sub(*bytes);
                let u = *u;
                st.dirty = true;
                q.publish(&s, key, u);
            }
        }
    }

    fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
        let Some(q) = self.cell.quota.get() else {
            return Ok(());
        };
        let s = q.settings.read().unwrap();
        let now = self.shared.clock.now_ms();
        let current = window_start(now, s.reset_hour_utc);

        let mut st = q.state.lock().unwrap();
        if st.window_start_ms != current {
            tracing::info!(tenant = %q.name, "daily quota reset");
            st.window_start_ms = current;
            st.usage.clear();
            st.warned.clear();
            st.fleet = FleetShare::default();
            st.dirty = true;
            drop(st);
            drop(s);
            q.publish_all();
            return self.process(batch);
        }

        // Decide first, commit after: a rejected request counts nothing.
        let fleet = self.shared.fleet.as_deref();
        let (delta, over) = TenantQuota::decide(&s, &st, fleet, batch);
        let action = s.action.as_str();
        if over > 0 {
            if s.action == QuotaAction::Reject {
                METRICS
                    .over_quota_events
                    .with_label_values(&[&q.name, action])
                    .inc_by(over);
                let wait = ((current + DAY_MS - now) / 1000).max(1) as u64;
                return Err(Rejection::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    RejectReason::DailyQuota,
                    format!(
                        "tenant {} is over its daily quota; it resets in {wait}s",
                        q.name
                    ),
                )
                .retry_after(wait));
            }
            // Counted once the batch is taken (commit).
            batch.charges.over_quota = Some((over, action));
        }
        q.record(&s, &mut st, fleet, batch, delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::ByteSize;

    // 2024-01-02 10:00 UTC
    const T0: i64 = 1_704_189_600_000;

    fn cfg(max_events: u64, action: QuotaAction) -> DailyQuotaConfig {
        DailyQuotaConfig {
            max_events: Some(max_events),
            max_bytes: None,
            reset_hour_utc: 14,
            warning_threshold: 0.8,
            action,
            partition_by: vec![],
            overrides: BTreeMap::new(),
        }
    }

    fn batch(services: &[&str]) -> Batch {
        let events = services
            .iter()
            .map(|s| Event {
                service: Some(s.to_string()),
                message: "hello".into(),
                ..Default::default()
            })
            .collect();
        Batch::for_test("acme", 10, events)
    }

    /// The registry of `names` and the first one's stage.
    fn quotas(
        names: &[String],
        configs: &[Option<DailyQuotaConfig>],
        clock: Arc<dyn Clock>,
        dir: &Path,
    ) -> (DailyQuotas, DailyQuota) {
        let mut q = DailyQuotas::new(clock, dir);
        let mut stages: Vec<DailyQuota> = names
            .iter()
            .zip(configs)
            .map(|(n, c)| q.add(n, c.as_ref()))
            .collect();
        (q, stages.remove(0))
    }

    fn indexed(b: &Batch) -> usize {
        b.dispositions
            .iter()
            .filter(|d| **d == Disposition::Index)
            .count()
    }

    #[test]
    fn windows_start_at_the_reset_hour() {
        assert_eq!(window_start(T0, 14), T0 - 20 * HOUR_MS); // 10:00 belongs to the day that began yesterday 14:00
        assert_eq!(window_start(T0 + 4 * HOUR_MS, 14), T0 + 4 * HOUR_MS); // 14:00 sharp starts a new one
        assert_eq!(window_start(T0, 0), T0 - 10 * HOUR_MS);
    }

    #[test]
    fn a_sync_after_a_crash_takes_what_redis_recorded_and_a_failed_one_makes_the_tenant_follow_the_policy(
    ) {
        use crate::config::Unavailable;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let mut q = DailyQuotas::new(clock.clone(), dir.path());
        let view = Arc::new(FleetView::new(Unavailable::FailClosed, 100, 2));
        view.set_degraded(false);
        q.share_with_fleet(view.clone());
        let s = q.add("acme", Some(&cfg(1000, QuotaAction::ArchiveOnly)));
        let mut b = batch(&["a"; 3]);
        s.process(&mut b).unwrap();
        let own = q.own_usage(false).remove(0);
        assert_eq!(
            own.usage,
            vec![(
                String::new(),
                Usage {
                    events: 3,
                    bytes: 0
                }
            )]
        );
        // Redis had 7 for this instance (indexed before a crash, after the last save).
        let recorded = [(
            String::new(),
            Usage {
                events: 7,
                bytes: 0,
            },
        )]
        .into_iter()
        .collect();
        q.synced(own, HashMap::new(), 2, Some(recorded));
        assert_eq!(q.views()[0].usage[""].events, 7);
        // Later syncs never take Redis's figure (a refund may have lowered the usage since).
        let own = q.own_usage(false).remove(0);
        q.synced(own, HashMap::new(), 2, None);
        assert_eq!(q.views()[0].usage[""].events, 7);
        // This tenant's sync fails while Redis answers the rest: fail_closed for it alone.
        q.sync_failed("acme");
        let mut b = batch(&["a"; 2]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 0);
        let own = q.own_usage(false).remove(0);
        q.synced(own, HashMap::new(), 2, None);
        let mut b = batch(&["a"; 2]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 2);
    }

    #[test]
    fn over_quota_is_archive_only_and_resets_at_the_hour() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let (_q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(5, QuotaAction::ArchiveOnly))],
            clock.clone(),
            dir.path(),
        );
        let mut b = batch(&["a"; 3]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 3);
        let mut b = batch(&["a"; 3]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 2);
        assert_eq!(b.dispositions[2], Disposition::ArchiveOnly);
        // 13:59:59: still the same day.
        clock.set(T0 + 4 * HOUR_MS - 1000);
        let mut b = batch(&["a"]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 0);
        // 14:00: a fresh quota.
        clock.set(T0 + 4 * HOUR_MS);
        let mut b = batch(&["a"; 5]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 5);
    }

    #[test]
    fn a_refused_batch_gets_its_usage_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let (q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(5, QuotaAction::ArchiveOnly))],
            clock.clone(),
            dir.path(),
        );
        let mut refused = batch(&["a"; 4]);
        s.process(&mut refused).unwrap();
        assert_eq!(refused.charges.quota, vec![(String::new(), 4, 0)]);
        s.refund(&refused);
        assert_eq!(q.views()[0].usage[""].events, 0);
        // All five fit again.
        let mut taken = batch(&["a"; 5]);
        s.process(&mut taken).unwrap();
        assert_eq!(indexed(&taken), 5);
        // A refund after the quota day turned takes nothing from the new day.
        clock.set(T0 + 4 * HOUR_MS);
        let mut fresh = batch(&["a"; 2]);
        s.process(&mut fresh).unwrap();
        s.refund(&taken);
        assert_eq!(q.views()[0].usage[""].events, 2);
    }

    #[test]
    fn drop_and_reject_actions() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let (_q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(2, QuotaAction::Drop))],
            clock.clone(),
            dir.path(),
        );
        let mut b = batch(&["a"; 3]);
        s.process(&mut b).unwrap();
        assert_eq!(b.dispositions[2], Disposition::Drop);

        let (_q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(2, QuotaAction::Reject))],
            clock.clone(),
            &dir.path().join("r"),
        );
        let mut b = batch(&["a"; 3]);
        let r = s.process(&mut b).unwrap_err();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.retry_after, Some(4 * 3600), "until 14:00");
        // The refused request counted nothing: two still fit.
        let mut b = batch(&["a"; 2]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 2);
    }

    #[test]
    fn partitions_overrides_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let mut c = cfg(2, QuotaAction::ArchiveOnly);
        c.partition_by = vec!["service".into()];
        c.overrides.insert(
            "big".into(),
            QuotaLimit {
                max_events: Some(4),
                max_bytes: None,
            },
        );
        let (_q, s) = quotas(&["acme".into()], &[Some(c)], clock.clone(), dir.path());
        let mut b = batch(&["web", "web", "web", "db", "big", "big", "big", "big", "big"]);
        s.process(&mut b).unwrap();
        let d = &b.dispositions;
        assert_eq!(
            (d[2], d[3], d[7], d[8]),
            (
                Disposition::ArchiveOnly,
                Disposition::Index,
                Disposition::Index,
                Disposition::ArchiveOnly
            )
        );

        let mut c = cfg(1000, QuotaAction::ArchiveOnly);
        // An event's size is its JSON line as indexed, newline included; written
        // out here rather than computed by the function under test.
        let one = r#"{"message":"hello","timestamp":0,"service":"x"}"#.len() as u64 + 1;
        c.max_bytes = Some(ByteSize(one * 2));
        let (q, s) = quotas(&["acme".into()], &[Some(c)], clock, &dir.path().join("b"));
        let mut b = batch(&["x", "x", "x"]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 2);
        assert_eq!(q.views()[0].usage[""].bytes, one * 2);
    }

    #[test]
    fn an_event_without_status_counts_against_info() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let mut c = cfg(100, QuotaAction::ArchiveOnly);
        c.partition_by = vec!["status".into()];
        c.overrides.insert(
            "info".into(),
            QuotaLimit {
                max_events: Some(2),
                max_bytes: None,
            },
        );
        let (q, s) = quotas(&["acme".into()], &[Some(c)], clock, dir.path());
        let events = [None, None, Some("info"), Some("error")]
            .iter()
            .map(|s| Event {
                status: s.map(str::to_string),
                message: "hello".into(),
                ..Default::default()
            })
            .collect();
        let mut b = Batch::for_test("acme", 10, events);
        s.process(&mut b).unwrap();
        assert_eq!(
            b.dispositions,
            [
                Disposition::Index,
                Disposition::Index,
                Disposition::ArchiveOnly,
                Disposition::Index
            ]
        );
        let usage = &q.views()[0].usage;
        assert_eq!((usage["info"].events, usage["error"].events), (2, 1));
        assert!(!usage.contains_key(""), "{usage:?}");
    }

    #[test]
    fn warning_threshold_is_raised_once() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let mut c = cfg(10, QuotaAction::ArchiveOnly);
        c.warning_threshold = 0.5;
        let name = "warn-tenant".to_string();
        let (q, s) = quotas(std::slice::from_ref(&name), &[Some(c)], clock, dir.path());
        let mut b = batch(&["a"; 4]);
        b.meta.tenant = name.as_str().into();
        s.process(&mut b).unwrap();
        assert_eq!(
            METRICS.quota_warning.with_label_values(&[&name, ""]).get(),
            0
        );
        let mut b2 = batch(&["a"]);
        b2.meta.tenant = b.meta.tenant.clone();
        s.process(&mut b2).unwrap();
        assert_eq!(
            METRICS.quota_warning.with_label_values(&[&name, ""]).get(),
            1
        );
        assert_eq!(
            q.tenants[0]
                .quota
                .get()
                .unwrap()
                .state
                .lock()
                .unwrap()
                .warned
                .len(),
            1
        );
    }

    #[test]
    fn usage_survives_a_restart_within_the_day_only() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at(T0);
        let (q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(5, QuotaAction::ArchiveOnly))],
            clock.clone(),
            dir.path(),
        );
        s.process(&mut batch(&["a"; 4])).unwrap();
        q.save();
        drop(q);
        // Restarted later the same quota day: 4 of 5 are used.
        clock.advance_ms(HOUR_MS);
        let (q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(5, QuotaAction::ArchiveOnly))],
            clock.clone(),
            dir.path(),
        );
        let mut b = batch(&["a"; 3]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 1);
        q.save();
        drop(q);
        // Restarted after the reset: a fresh day.
        clock.advance_ms(4 * HOUR_MS);
        let (_q, s) = quotas(
            &["acme".into()],
            &[Some(cfg(5, QuotaAction::ArchiveOnly))],
            clock,
            dir.path(),
        );
        let mut b = batch(&["a"; 5]);
        s.process(&mut b).unwrap();
        assert_eq!(indexed(&b), 5);
    }
}
