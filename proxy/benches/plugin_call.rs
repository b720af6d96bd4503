//! The cost of the plugin stage, split into its parts: encoding a batch, a
//! call of the `empty` plugin on 1 event (the per-batch overhead of a call),
//! on 500 events (plus the per-event MessagePack round trip), and `redact`.
//!
//! Events are real OpenSSH lines from loghub with Datadog-agent-like fields.
//! Needs `../shared/data/loghub` and the plugins built for wasm32-wasip1:
//!   (cd plugins && cargo build --release --target wasm32-wasip1)
//!   cargo bench -p weir --bench plugin_call
mod common;

use common::{events, repo};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use weir::config::PluginOnError;
use weir::plugin::{wire, Plugin, PluginSettings};

fn plugin(name: &str) -> Plugin {
    let path = repo().join(format!("plugins/target/wasm32-wasip1/release/{name}.wasm"));
    let wasm = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first: (cd plugins && cargo build --release --target wasm32-wasip1)",
            path.display()
        )
    });
    let settings = PluginSettings {
        tenant: "bench".into(),
        name: name.into(),
        on_error: PluginOnError::Pass,
        timeout: Duration::from_secs(5),
        memory_limit: 256 << 20,
        quarantine_after: u32::MAX,
        quarantine_base: Duration::from_secs(1),
        instances: 1,
    };
    Plugin::load(&wasm, None, settings).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plugin");
    for n in [1usize, 500] {
        let batch = events(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("encode_batch", n), &batch, |b, batch| {
            b.iter(|| wire::encode_batch(batch, wire::Fields::ALL))
        });
        for name in ["empty", "redact"] {
            let p = plugin(name);
            g.bench_with_input(BenchmarkId::new(name, n), &batch, |b, batch| {
                b.iter(|| p.call(batch).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
