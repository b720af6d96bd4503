//! The hot functions the overload work changed, each alone:
//! - `request_body`: inflating a gzip'd request of 500 events (what agents send);
//! - `archive_object`: compressing 4 MiB of NDJSON into one archive object, gzip
//!   and zstd at the default level (1);
//! - `wal_read`: a disk-buffer reader taking 8 MiB of records just written, from
//!   the writer's memory (a feed keeping up) against from the segment file (a
//!   feed behind; the page cache is warm, so this is the copy and checksum, not
//!   the disk).
//!
//! - `decode_500_events`: a request's body into events, per intake protocol
//!   (Datadog JSON, OTLP protobuf, OTLP JSON, Splunk HEC), side by side.
//!
//! Events are real OpenSSH lines from loghub (`../shared/data/loghub`).
//!   cargo bench -p weir --bench hot_path
mod common;

use bytes::Bytes;
use common::events;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::io::Write;
use weir::config::ArchiveCompression;
use weir::intake::body::{decompress, Encoding};
use weir::wal::{Wal, WalOptions};

/// `n` events as the pipeline carries them: NDJSON lines.
fn ndjson(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events(n) {
        e.write_json(&mut out);
        out.push(b'\n');
    }
    out
}

fn request_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_body");
    let mut json = b"[".to_vec();
    for (i, line) in ndjson(500)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(line);
    }
    json.push(b']');
    // Agents compress at zlib's default level.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).unwrap();
    let body = Bytes::from(gz.finish().unwrap());
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("inflate_gzip_500_events", |b| {
        b.iter(|| decompress(body.clone(), Encoding::Gzip, 64 << 20).unwrap())
    });
    g.finish();
}

fn archive_object(c: &mut Criterion) {
    let mut g = c.benchmark_group("archive_object");
    g.sample_size(20);
    let lines = ndjson(16_000);
    g.throughput(Throughput::Bytes(lines.len() as u64));
    for (name, codec) in [
        ("gzip", ArchiveCompression::Gzip),
        ("zstd", ArchiveCompression::Zstd),
    ] {
        g.bench_with_input(
            BenchmarkId::new("compress_level_1", name),
            &lines,
            |b, lines| b.iter(|| weir::archive::compress(codec, 1, lines)),
        );
    }
    g.finish();
}

/// A log holding `records` records of a 500-event request each, synced.
fn wal_with(dir: &std::path::Path, payload: &[u8], records: usize) -> Wal {
    let wal = Wal::open(dir, WalOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for _ in 0..records {
        rt.block_on(wal.append(payload.to_vec(), 500, 0)).unwrap();
    }
    wal
}

fn wal_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_read");
    g.sample_size(20);
    let payload = ndjson(500);
    // 8 MiB of records: within what the writer keeps in memory (RECENT_BYTES).
    let records = (8 << 20) / payload.len() - 1;
    g.throughput(Throughput::Bytes((records * payload.len()) as u64));
    for (name, written_after) in [("from_memory", 0), ("from_file", records + 8)] {
        let dir = tempfile::tempdir().unwrap();
        // Writing as much again after them pushes the first records out of memory.
        let wal = wal_with(dir.path(), &payload, records + written_after);
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    wal.reader(&format!("r{n}")).unwrap()
                },
                |mut reader| {
                    for _ in 0..records {
                        let r = reader.read().unwrap().expect("a record");
                        std::hint::black_box(r.payload.len());
                    }
                    let from_memory = reader.from_memory();
                    assert_eq!(from_memory > 0, written_after == 0, "read from {name}");
                    let name = reader.name().to_string();
                    drop(reader);
                    wal.remove_reader(&name).unwrap();
                },
                BatchSize::PerIteration,
            )
        });
        wal.close();
    }
    g.finish();
}

/// The same 500 events as each protocol's body, and its decoder.
fn decode(c: &mut Criterion) {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    use weir::event::PayloadLimits;
    use weir::intake::http::HttpProtocol;
    use weir::intake::Decode;

    let evs = events(500);
    let mut dd_json = b"[".to_vec();
    for (i, e) in evs.iter().enumerate() {
        if i > 0 {
            dd_json.push(b',');
        }
        e.write_json(&mut dd_json);
    }
    dd_json.push(b']');
    let string = |s: &str| {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    };
    let kv = |k: &str, v: Option<AnyValue>| KeyValue {
        key: k.into(),
        value: v,
        ..Default::default()
    };
    let otlp = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("host.name", string("web-001")),
                    kv("service.name", string("sshd")),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: evs
                    .iter()
                    .map(|e| LogRecord {
                        time_unix_nano: e.timestamp as u64 * 1_000_000,
                        severity_number: 9,
                        body: string(&e.message),
                        attributes: vec![
                            kv("source", string("openssh")),
                            kv("env", string("prod")),
                        ],
                        trace_id: vec![7; 16],
                        span_id: vec![9; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let otlp_pb = otlp.encode_to_vec();
    let otlp_json = serde_json::to_vec(&otlp).unwrap();
    let limits = PayloadLimits {
        max_events: usize::MAX,
        max_log_bytes: 1 << 20,
        received_at_ms: 0,
    };
    let head = |ct: &str| {
        http::Request::builder()
            .header("content-type", ct)
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let (mut dd_head, mut pb_head, mut json_head) = (
        head("application/json"),
        head("application/x-protobuf"),
        head("application/json"),
    );
    let mut hec = Vec::new();
    for e in &evs {
        let envelope = serde_json::json!({
            "time": e.timestamp as f64 / 1000.0, "host": e.host, "source": "openssh",
            "sourcetype": "sshd", "event": e.message, "fields": {"env": "prod"},
        });
        serde_json::to_writer(&mut hec, &envelope).unwrap();
    }
    let hec_head = head("application/json");
    let mut hec_head = {
        let mut h = hec_head;
        h.uri = "/services/collector/event".parse().unwrap();
        h
    };
    let hec_protocol = weir::intake::hec::Hec::default();
    let mut g = c.benchmark_group("decode_500_events");
    g.throughput(Throughput::Elements(500));
    g.bench_function("datadog_json", |b| {
        b.iter(|| {
            let body = weir::intake::datadog::Datadog.body(&mut dd_head).unwrap();
            body.decode(&dd_json, limits, &mut |_| true).unwrap()
        })
    });
    g.bench_function("otlp_protobuf", |b| {
        b.iter(|| {
            let body = weir::intake::otlp::Otlp.body(&mut pb_head).unwrap();
            body.decode(&otlp_pb, limits, &mut |_| true).unwrap()
        })
    });
    g.bench_function("otlp_json", |b| {
        b.iter(|| {
            let body = weir::intake::otlp::Otlp.body(&mut json_head).unwrap();
            body.decode(&otlp_json, limits, &mut |_| true).unwrap()
        })
    });
    g.bench_function("splunk_hec", |b| {
        b.iter(|| {
            let body = hec_protocol.body(&mut hec_head).unwrap();
            body.decode(&hec, limits, &mut |_| true).unwrap()
        })
    });
    g.finish();
}

/// The same 500 events again, for the protocols of agents that do not speak
/// Datadog's: Elasticsearch `_bulk` (ECS documents), Fluent forward (a Forward
/// message) and syslog (RFC 5424 and RFC 3164 lines, one per line).
fn decode_more(c: &mut Criterion) {
    use weir::event::PayloadLimits;
    use weir::intake::http::HttpProtocol;
    use weir::intake::Decode;

    let evs = events(500);
    let limits = PayloadLimits {
        max_events: usize::MAX,
        max_log_bytes: 1 << 20,
        received_at_ms: 1_700_000_000_000,
    };
    let mut bulk = Vec::new();
    for e in &evs {
        bulk.extend_from_slice(b"{\"create\":{\"_index\":\"logs\"}}\n");
        let doc = serde_json::json!({
            "@timestamp": "2026-12-02T10:00:00.000Z", "message": e.message,
            "host": {"name": e.host}, "service": {"name": e.service}, "log": {"level": "info"},
            "pid": e.attributes["pid"], "network": e.attributes["network"],
        });
        serde_json::to_writer(&mut bulk, &doc).unwrap();
        bulk.push(b'\n');
    }
    let mut bulk_head = http::Request::post("/_bulk")
        .header("content-type", "application/x-ndjson")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let entries: Vec<rmpv::Value> = evs
        .iter()
        .map(|e| {
            let record = rmpv::Value::Map(vec![
                ("log".into(), e.message.as_str().into()),
                ("host".into(), e.host.as_deref().unwrap_or("").into()),
                ("service".into(), "sshd".into()),
                ("pid".into(), 24200.into()),
            ]);
            rmpv::Value::Array(vec![(e.timestamp / 1000).into(), record])
        })
        .collect();
    let message = rmpv::Value::Array(vec![
        "app.sshd".into(),
        rmpv::Value::Array(entries),
        rmpv::Value::Map(vec![("chunk".into(), "c1".into())]),
    ]);
    let mut forward = Vec::new();
    rmpv::encode::write_value(&mut forward, &message).unwrap();
    let (mut rfc5424, mut rfc3164) = (Vec::new(), Vec::new());
    for (i, e) in evs.iter().enumerate() {
        let host = e.host.as_deref().unwrap_or("-");
        rfc5424.extend(
            format!(
                "<38>1 2026-12-02T10:00:00.{:03}Z {host} sshd {} - - {}\n",
                i % 1000,
                24200 + i % 50,
                e.message
            )
            .as_bytes(),
        );
        rfc3164.extend(
            format!(
                "<38>Dec  2 10:00:00 {host} sshd[{}]: {}\n",
                24200 + i % 50,
                e.message
            )
            .as_bytes(),
        );
    }
    let mut g = c.benchmark_group("decode_500_events");
    g.throughput(Throughput::Elements(500));
    g.bench_function("elasticsearch_bulk", |b| {
        b.iter(|| {
            let body = weir::intake::elasticsearch::Elasticsearch
                .body(&mut bulk_head)
                .unwrap();
            body.decode(&bulk, limits, &mut |_| true).unwrap()
        })
    });
    g.bench_function("fluent_forward", |b| {
        b.iter(|| {
            let body = weir::intake::forward::ForwardBody {
                max_inflated: 1 << 20,
            };
            body.decode(&forward, limits, &mut |_| true).unwrap()
        })
    });
    for (name, lines) in [("syslog_rfc5424", &rfc5424), ("syslog_rfc3164", &rfc3164)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let evs = weir::intake::syslog::SyslogBody
                    .decode(lines, limits, &mut |_| true)
                    .unwrap();
                assert_eq!(evs.len(), 500);
                evs
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    request_body,
    archive_object,
    wal_read,
    decode,
    decode_more
);
criterion_main!(benches);
