//! What log patterns cost the intake threads, per batch of 500 real OpenSSH
//! lines from loghub (throughput in events, so criterion prints events/s):
//! - `mine_all`: every event mined (a budget that never runs out): masking,
//!   the tree, similarity, the merge, the event's JSON size, the counters;
//! - `over_budget`: the tenant's events_per_second is spent, so the batch is
//!   only counted (what a flood past the budget costs);
//! - `miner_add`: the template miner alone, per message.
//!   cargo bench -p weir --bench patterns
mod common;

use common::events;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir::config::PatternsConfig;
use weir::event::{Batch, BatchMeta, Intake};
use weir::patterns::{Miner, MinerLimits, TenantPatterns};

fn batch() -> Batch {
    Batch::new(
        BatchMeta {
            tenant: "bench".into(),
            intake: Intake::Datadog,
            received_at_ms: 0,
            body_bytes: 0,
        },
        events(500),
    )
}

fn watch(c: &mut Criterion) {
    let mut g = c.benchmark_group("patterns");
    let b = batch();
    g.throughput(Throughput::Elements(b.events.len() as u64));
    let unlimited = PatternsConfig {
        events_per_second: u64::MAX,
        ..PatternsConfig::default()
    };
    let t = TenantPatterns::new("bench", &unlimited, weir::clock::system());
    g.bench_function("mine_all_500_events", |bench| bench.iter(|| t.watch(&b)));
    let spent = PatternsConfig {
        events_per_second: 1,
        ..PatternsConfig::default()
    };
    let t = TenantPatterns::new("bench", &spent, weir::clock::system());
    g.bench_function("over_budget_500_events", |bench| bench.iter(|| t.watch(&b)));
    let mut m: Miner<()> = Miner::new(MinerLimits::default());
    g.bench_function("miner_add_500_messages", |bench| {
        bench.iter(|| {
            for e in &b.events {
                m.add(&e.message, || ());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, watch);
criterion_main!(benches);
