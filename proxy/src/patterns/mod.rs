//! Log patterns: per tenant, a running clustering of messages into templates
//! (a Drain-style miner, `drain.rs`), with events and bytes per pattern over
//! the last minute and hour, split by what the stage chain decided (indexed,
//! excluded to the archive only, dropped), and for the top patterns a
//! ready-made exclusion-rule query (`query.rs`) and what excluding them would
//! save per day. `GET /admin/patterns?tenant=T` and `weir patterns` show it.
//!
//! It watches each batch after the stage chain on the intake threads, so it
//! is built never to wait and to bound its cost: a tenant mines at most
//! `events_per_second` events (an even stride through each batch); past that,
//! and whenever another thread holds the tenant's miner, events are only
//! counted. Counts are scaled per minute by events seen / events mined, and
//! the report says which fraction was mined.
mod drain;
pub mod mask;
#[cfg(test)]
mod quality;
pub mod query;
mod report;
mod window;

pub use drain::{tokenize, Miner, MinerLimits};
pub use report::Report;

use crate::clock::Clock;
use crate::config::PatternsConfig;
use crate::event::Batch;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use window::{Counts, Window};

/// Examples kept per pattern: the query of every pattern is checked on them.
pub const EXAMPLES: usize = 3;
/// Tenants a [`Patterns`] keeps at most (names come from the config's tenants).
const MAX_TENANTS: usize = 10_000;

/// Every tenant's patterns.
pub struct Patterns {
    config: PatternsConfig,
    clock: Arc<dyn Clock>,
    tenants: Mutex<HashMap<String, Arc<TenantPatterns>>>,
}

impl Patterns {
    pub fn new(config: &PatternsConfig, clock: Arc<dyn Clock>) -> Patterns {
        Patterns {
            config: config.clone(),
            clock,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Tenant `name`'s patterns, made on first use.
    pub fn tenant(&self, name: &str) -> Arc<TenantPatterns> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get(name) {
            return t.clone();
        }
        let t = Arc::new(TenantPatterns::new(name, &self.config, self.clock.clone()));
        if tenants.len() < MAX_TENANTS {
            tenants.insert(name.to_string(), t.clone());
        }
        t
    }

    /// The top `limit` patterns of `tenant` by bytes in the last hour; None
    /// for a tenant it does not know.
    pub fn report(&self, tenant: &str, limit: usize) -> Option<Report> {
        let t = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()?;
        Some(t.report(limit))
    }
}

/// What a pattern keeps besides its template.
#[derive(Default)]
pub(crate) struct Stats {
    window: Window<Counts>,
    total: Counts,
    examples: Vec<Box<str>>,
}

/// Events a tenant sent and events mined, per minute: the scale of the counts.
#[derive(Default, Clone, Copy)]
pub(crate) struct Traffic {
    seen: u64,
    mined: u64,
}

pub(crate) struct State {
    miner: Miner<Stats>,
    traffic: Window<Traffic>,
    seen_total: u64,
    mined_total: u64,
    started_ms: i64,
}

/// One tenant's patterns: its miner, behind a lock the intake threads only try.
pub struct TenantPatterns {
    name: String,
    clock: Arc<dyn Clock>,
    per_second: u64,
    /// The second the budget is for, and how much of it was taken.
    budget_second: AtomicI64,
    budget_used: AtomicU64,
    /// Events counted while another thread held the state, added on next lock.
    unseen: AtomicU64,
    state: Mutex<State>,
}

/// Counts the bytes of an event's JSON without keeping them (what quotas count).
struct ByteCounter(u64);
impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn event_bytes(ev: &crate::event::Event) -> u64 {
    let mut c = ByteCounter(0);
    serde_json::to_writer(&mut c, ev).expect("counting cannot fail");
    c.0 + 1
}

impl TenantPatterns {
    pub fn new(name: &str, config: &PatternsConfig, clock: Arc<dyn Clock>) -> TenantPatterns {
        let limits = MinerLimits {
            max_patterns: config.max_patterns_per_tenant,
            max_tokens: config.max_tokens,
            max_message_bytes: config.max_message_bytes.0 as usize,
            similarity: config.similarity,
            ..MinerLimits::default()
        };
        let now = clock.now_ms();
        TenantPatterns {
            name: name.to_string(),
            clock,
            per_second: config.events_per_second,
            budget_second: AtomicI64::new(i64::MIN),
            budget_used: AtomicU64::new(0),
            unseen: AtomicU64::new(0),
            state: Mutex::new(State {
                miner: Miner::new(limits),
                traffic: Window::default(),
                seen_total: 0,
                mined_total: 0,
                started_ms: now,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many of `n` events this second's budget lets us mine.
    fn take_budget(&self, now_ms: i64, n: u64) -> u64 {
        let second = now_ms.div_euclid(1000);
        if self.budget_second.swap(second, Ordering::Relaxed) != second {
            // A new second (a race here only lends a few events of budget).
            self.budget_used.store(0, Ordering::Relaxed);
        }
        let before = self.budget_used.fetch_add(n, Ordering::Relaxed);
        self.per_second.saturating_sub(before).min(n)
    }

    /// Mines what the budget allows of `batch` and counts all of it. Never
    /// waits: when another thread is mining this tenant, the batch is counted
    /// as seen and not mined.
    pub fn watch(&self, batch: &Batch) {
        let n = batch.events.len() as u64;
        if n == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let k = self.take_budget(now, n);
        if k == 0 {
            self.unseen.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let mut state = match self.state.try_lock() {
            Ok(s) => s,
            // A panic while mining leaves counts, not broken invariants: go on.
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.unseen.fetch_add(n, Ordering::Relaxed);
                return;
            }
        };
        let seen = n + self.unseen.swap(0, Ordering::Relaxed);
        let stride = n.div_ceil(k) as usize;
        let mut mined = 0;
        for (ev, d) in batch.events.iter().zip(&batch.dispositions).step_by(stride) {
            mined += 1;
            let bytes = event_bytes(ev);
            let added = state.miner.add(&ev.message, Stats::default);
            let c = state
                .miner
                .get_mut(added.slot)
                .expect("the slot add returned");
            c.data.window.at(now).add(*d, bytes);
            c.data.total.add(*d, bytes);
            if c.data.examples.len() < EXAMPLES {
                let mut cut = added.used;
                while !ev.message.is_char_boundary(cut) {
                    cut -= 1;
                }
                c.data.examples.push(ev.message[..cut].into());
            }
        }
        let t = state.traffic.at(now);
        t.seen += seen;
        t.mined += mined;
        state.seen_total += seen;
        state.mined_total += mined;
    }
}

#[cfg(test)]
mod tests;

impl crate::observe::Watcher for TenantPatterns {
    fn watch(&self, batch: &Batch) {
        TenantPatterns::watch(self, batch)
    }
}
