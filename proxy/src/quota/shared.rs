//! Quotas shared by a fleet: what the quota and rate-limit stages read about
//! the other instances, written by the fleet's sync (the `fleet` module).
//!
//! A partition's daily limit Q holds for the whole fleet. Each instance
//! indexes against the others' usage at its last sync plus its own, and may
//! get at most `max_unsynced_events` (A) ahead of what it last told the
//! others. So the fleet indexes at most Q + (N − 1) × A: what the other N − 1
//! instances indexed that this one had not yet heard of.
use super::daily::Usage;
use crate::config::Unavailable;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tokio::sync::Notify;

/// How this instance enforces shared limits now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redis answers: the fleet's usage as last synced.
    Shared,
    /// Redis does not answer: a share of what remained at the last sync.
    Local,
    /// Redis does not answer: every limited event is over.
    FailClosed,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Local => "local",
            Mode::FailClosed => "fail_closed",
        }
    }
}

/// The fleet as the stages see it; one per process.
pub struct FleetView {
    policy: Unavailable,
    pub max_unsynced_events: u64,
    degraded: AtomicBool,
    instances: AtomicU32,
    expected_instances: u32,
    /// Wakes the sync early when a partition nears `max_unsynced_events`.
    pub wake: Notify,
}

impl FleetView {
    pub fn new(
        policy: Unavailable,
        max_unsynced_events: u64,
        expected_instances: u32,
    ) -> FleetView {
        FleetView {
            policy,
            max_unsynced_events,
            // Until the first sync, nothing is known of the others.
            degraded: AtomicBool::new(true),
            instances: AtomicU32::new(expected_instances.max(1)),
            expected_instances: expected_instances.max(1),
            wake: Notify::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        match (self.degraded.load(Ordering::Relaxed), self.policy) {
            (false, _) => Mode::Shared,
            (true, Unavailable::Local) => Mode::Local,
            (true, Unavailable::FailClosed) => Mode::FailClosed,
        }
    }

    /// What `on_unavailable` makes of a limit.
    pub fn unavailable_mode(&self) -> Mode {
        match self.policy {
            Unavailable::Local => Mode::Local,
            Unavailable::FailClosed => Mode::FailClosed,
        }
    }

    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Relaxed);
    }

    /// Instances live at the last sync (this one included).
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed)
    }

    pub fn set_instances(&self, n: u32) {
        self.instances.store(n.max(1), Ordering::Relaxed);
    }
}

/// One tenant's view of the fleet's usage in the current quota day.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetShare {
    /// The other instances' usage per partition, at the last sync.
    pub others: HashMap<String, Usage>,
    /// This instance's usage as it last told the others.
    pub synced: HashMap<String, Usage>,
    /// Instances live at the last sync (0: never synced).
    pub instances: u32,
    /// The last sync of this tenant failed (Redis answered others): its
    /// limits follow the policy for an unreachable Redis.
    #[serde(default)]
    pub stale: bool,
}

impl FleetShare {
    /// The most this instance's own usage of `key` may reach, given the
    /// partition's fleet-wide limits.
    pub fn own_limits(
        &self,
        view: &FleetView,
        key: &str,
        max_events: Option<u64>,
        max_bytes: Option<u64>,
    ) -> (Option<u64>, Option<u64>) {
        let others = self.others.get(key).copied().unwrap_or_default();
        let synced = self.synced.get(key).copied().unwrap_or_default();
        let mode = match self.stale {
            true => view.unavailable_mode(),
            false => view.mode(),
        };
        match mode {
            Mode::Shared => {
                // The cap on unsynced events bounds a byte limit's overshoot too.
                let cap = synced.events + view.max_unsynced_events;
                let events = match (max_events, max_bytes) {
                    (Some(m), _) => Some(m.saturating_sub(others.events).min(cap)),
                    (None, Some(_)) => Some(cap),
                    (None, None) => None,
                };
                (events, max_bytes.map(|m| m.saturating_sub(others.bytes)))
            }
            Mode::Local => {
                // What remained at the last sync, shared out equally.
                let n = match self.instances {
                    0 => view.expected_instances,
                    n => n,
                } as u64;
                let share = |m: u64, others: u64, synced: u64| {
                    synced + m.saturating_sub(others + synced) / n
                };
                (
                    max_events.map(|m| share(m, others.events, synced.events)),
                    max_bytes.map(|m| share(m, others.bytes, synced.bytes)),
                )
            }
            Mode::FailClosed => (max_events.map(|_| 0), max_bytes.map(|_| 0)),
        }
    }

    /// Whether `key` is halfway to `max_unsynced_events`: time to sync early.
    pub fn should_sync(&self, view: &FleetView, key: &str, own: Usage) -> bool {
        let synced = self.synced.get(key).map_or(0, |u| u.events);
        own.events.saturating_sub(synced) * 2 >= view.max_unsynced_events
    }

    /// The fleet's usage of every partition: the others' plus `own`.
    pub fn totals(&self, own: &HashMap<String, Usage>) -> HashMap<String, Usage> {
        let mut all = self.others.clone();
        for (k, u) in own {
            let t = all.entry(k.clone()).or_default();
            t.events += u.events;
            t.bytes += u.bytes;
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(events: u64) -> Usage {
        Usage { events, bytes: 0 }
    }

    #[test]
    fn each_mode_bounds_own_usage() {
        let view = FleetView::new(Unavailable::Local, 100, 4);
        let mut share = FleetShare::default();
        share.others.insert("".into(), usage(600));
        share.synced.insert("".into(), usage(200));
        share.instances = 3;
        view.set_degraded(false);
        // Shared: Q − others = 400, but at most 100 past what was told.
        assert_eq!(
            share.own_limits(&view, "", Some(1000), None),
            (Some(300), None)
        );
        assert_eq!(share.own_limits(&view, "", Some(750), None).0, Some(150));
        // A byte limit alone still caps the events not yet synced.
        assert_eq!(
            share.own_limits(&view, "", None, Some(5000)),
            (Some(300), Some(5000))
        );
        // Local: 200 remained, a third of it each.
        view.set_degraded(true);
        assert_eq!(share.own_limits(&view, "", Some(1000), None).0, Some(266));
        // Never synced: the expected count shares the whole quota.
        let fresh = FleetShare::default();
        assert_eq!(fresh.own_limits(&view, "", Some(1000), None).0, Some(250));
        let closed = FleetView::new(Unavailable::FailClosed, 100, 4);
        assert_eq!(
            share.own_limits(&closed, "", Some(1000), Some(5)),
            (Some(0), Some(0))
        );
        // No limit stays no limit in every mode.
        assert_eq!(share.own_limits(&closed, "", None, None), (None, None));
        // One tenant whose own sync failed follows the policy while Redis answers.
        let mut stale = share.clone();
        stale.stale = true;
        view.set_degraded(false);
        assert_eq!(stale.own_limits(&view, "", Some(1000), None).0, Some(266));
    }

    /// Instance `i` syncs: tells Redis its own usage, hears the others'.
    fn sync(i: usize, own: &[u64], redis: &mut [u64], shares: &mut [FleetShare]) {
        redis[i] = own[i];
        let others: u64 = redis
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| v)
            .sum();
        shares[i].others.insert("".into(), usage(others));
        shares[i].synced.insert("".into(), usage(own[i]));
        shares[i].instances = own.len() as u32;
    }

    /// N instances admitting in random interleavings, syncing at random
    /// moments: the fleet never indexes more than Q + (N − 1) × A, and with
    /// demand to spare, uses the quota up.
    #[test]
    fn the_fleet_stays_within_the_stated_bound() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        for round in 0..100 {
            let n = rng.random_range(2..6usize);
            let a = rng.random_range(1..50u64);
            let q = rng.random_range(100..5000u64);
            let view = FleetView::new(Unavailable::Local, a, n as u32);
            view.set_degraded(false);
            let mut own = vec![0u64; n];
            let mut shares = vec![FleetShare::default(); n];
            let mut redis = vec![0u64; n];
            for _ in 0..20_000 {
                let i = rng.random_range(0..n);
                if rng.random_bool(0.05) {
                    sync(i, &own, &mut redis, &mut shares);
                } else {
                    let (limit, _) = shares[i].own_limits(&view, "", Some(q), None);
                    if own[i] < limit.unwrap() {
                        own[i] += 1;
                    }
                }
            }
            let total: u64 = own.iter().sum();
            assert!(
                total <= q + (n as u64 - 1) * a,
                "round {round}: {total} > {q} + ({n} - 1) × {a}"
            );
            // With demand to spare, syncing and admitting in turns uses the quota up.
            for _ in 0..=(q / a + 1) {
                for i in 0..n {
                    sync(i, &own, &mut redis, &mut shares);
                    let (limit, _) = shares[i].own_limits(&view, "", Some(q), None);
                    own[i] = own[i].max(limit.unwrap());
                }
            }
            let total: u64 = own.iter().sum();
            assert!(
                total >= q,
                "round {round}: {total} < {q}: the quota was not used up"
            );
            assert!(
                total <= q + (n as u64 - 1) * a,
                "round {round}: {total} over the bound"
            );
        }
    }
}
