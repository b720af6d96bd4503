//! The largest requests real agents send, replayed byte for byte against the real
//! binary, and what they ask of the intake besides logs (Vector's key check).
//!
//! None of these agents can be installed here, so each request is rebuilt from
//! the agent's own source: the headers in the order it writes them and a body of
//! its shape, filled with real log lines (loghub).
//! - Fluent Bit 5.1, `out_datadog` (plugins/out_datadog/datadog.c): one JSON array
//!   per chunk (a tail of a 2,000-line file is one chunk), keys `timestamp`,
//!   `ddsource`, `service`, `hostname`, the record's `log` renamed `message`,
//!   `ddtags`; gzip with `compress gzip`.
//! - Datadog Agent 7: up to 1,000 entries and 5,000,000 bytes per payload
//!   (`logs_config.batch_max_size`, `batch_max_content_size`), gzip.
//! - Vector 0.57 `datadog_logs` sink: up to 1,000 events and 4,250,000 bytes per
//!   request, gzip; `GET /api/v1/validate` with `dd-api-key` at start.
use crate::harness::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn loghub(name: &str) -> Vec<String> {
    let path = format!(
        "{}/../../shared/data/loghub/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Sends `head` (request line and headers, without Content-Length) and `body` on
/// a fresh TCP connection, as the agent writes them; returns status and body.
async fn raw_post(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = head.replace("{LEN}", &body.len().to_string()).into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the answer (headers and a small JSON body), then stop.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("an answer within 30s")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluent_bit_chunk_of_2000_entries_is_accepted_and_delivered() {
    let (fake, addr) = FakeDatadog::start().await;
    let mut weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let lines = loghub("Apache_2k.log");
    assert_eq!(lines.len(), 2000);
    let entries: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{{\"timestamp\":{},\"ddsource\":\"apache\",\"service\":\"httpd\",\"hostname\":\"node-1\",\"message\":{},\"ddtags\":\"env:prod,team:web\"}}",
                1764650000000i64 + i as i64,
                json_str(l)
            )
        })
        .collect();
    let body = gzip(format!("[{}]", entries.join(",")).as_bytes());
    let head = format!(
        "POST /api/v2/logs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {{LEN}}\r\nUser-Agent: Fluent-Bit\r\nDD-API-KEY: agent-key\r\nDD-EVP-ORIGIN: Fluent-Bit\r\nDD-EVP-ORIGIN-VERSION: 5.1.0\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n\r\n",
        port = weir.intake
    );
    let (status, answer) = raw_post(weir.intake, &head, &body).await;
    assert_eq!(status, 202, "{answer}");

    eventually(Duration::from_secs(20), "all 2000 events forwarded", || {
        (fake.count() >= 2000).then_some(())
    })
    .await;
    assert!(weir.terminate().success());
    let got = fake.take();
    let messages: Vec<&str> = got.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert_eq!(messages.len(), 2000, "no duplicates");
    let want: std::collections::HashSet<&str> = lines.iter().map(String::as_str).collect();
    let seen: std::collections::HashSet<&str> = messages.iter().copied().collect();
    // loghub's Apache sample repeats some lines; every distinct line arrived.
    assert_eq!(seen, want);
    // The backend's batches keep their own limit (1000 by default).
    let sizes = fake.requests.lock().unwrap().len();
    assert!(sizes >= 2, "2000 events need at least two backend batches");
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(archived.len(), 2000);
}

/// A payload of `n` entries of about `size` bytes each, in the shape `fields` writes.
fn payload(n: usize, size: usize, lines: &[String], fields: &str) -> Vec<u8> {
    let mut out = String::from("[");
    for i in 0..n {
        let mut msg = format!("{i} {}", lines[i % lines.len()]);
        while msg.len() < size {
            msg.push(' ');
            msg.push_str(&lines[(i * 7 + msg.len()) % lines.len()]);
        }
        msg.truncate(size);
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{{\"message\":{},{fields}}}", json_str(&msg)));
    }
    out.push(']');
    out.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_agent_and_vector_largest_payloads_are_accepted() {
    let (fake, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let lines = loghub("OpenSSH_2k.log");
    // Datadog Agent 7: 1,000 entries, just under 5,000,000 bytes uncompressed.
    let agent = payload(
        1000,
        4_840,
        &lines,
        "\"status\":\"info\",\"timestamp\":1764650000000,\"hostname\":\"i-0abc\",\"service\":\"sshd\",\"ddsource\":\"sshd\",\"ddtags\":\"env:prod,filename:auth.log\"",
    );
    assert!(
        agent.len() <= 5_000_000 && agent.len() > 4_900_000,
        "{}",
        agent.len()
    );
    let r = post(
        &weir.url("/api/v2/logs"),
        &[
            ("DD-API-KEY", "agent-key"),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("DD-PROTOCOL", "agent-json"),
            ("DD-EVP-ORIGIN", "agent"),
            ("DD-EVP-ORIGIN-VERSION", "7.60.0"),
            ("User-Agent", "datadog-agent/7.60.0"),
        ],
        gzip(&agent),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // Vector 0.57 datadog_logs: 1,000 events, up to 4,250,000 bytes.
    let vector = payload(
        1000,
        4_100,
        &lines,
        "\"timestamp\":1764650000000,\"hostname\":\"vector-1\",\"service\":\"sshd\",\"ddsource\":\"vector\",\"ddtags\":\"env:prod\",\"status\":\"info\"",
    );
    assert!(vector.len() <= 4_250_000, "{}", vector.len());
    let r = post(
        &weir.url("/api/v2/logs"),
        &[
            ("dd-api-key", "agent-key"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("dd-evp-origin", "vector"),
            ("dd-evp-origin-version", "0.57.0"),
        ],
        gzip(&vector),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    eventually(Duration::from_secs(30), "2000 events forwarded", || {
        (fake.count() >= 2000).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_validate_probe_is_answered_per_key() {
    let (_fake, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let url = weir.url("/api/v1/validate");
    let r = request(
        http::Method::GET,
        &url,
        &[("dd-api-key", "agent-key")],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"valid": true}));
    let r = request(
        http::Method::GET,
        &url,
        &[("dd-api-key", "not-a-key")],
        bytes::Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert!(r.error().contains("not valid"), "{}", r.text());
    let r = request(http::Method::GET, &url, &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tiny_entries_are_bounded_by_memory_not_by_count() {
    let (fake, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(
        &addr.to_string(),
        "",
        "limits:\n  max_body_bytes: 1MiB\n  max_decompressed_bytes: 1MiB\n  max_inflight_request_bytes: 2MiB\n",
    ))
    .await;
    let url = weir.url("/api/v2/logs");
    let headers = [
        ("DD-API-KEY", "agent-key"),
        ("Content-Type", "application/json"),
    ];
    // 3,000 small entries fit: no count limit by default.
    let small: Vec<String> = (0..3000)
        .map(|i| format!("{{\"message\":\"m{i}\"}}"))
        .collect();
    let r = post(&url, &headers, format!("[{}]", small.join(","))).await;
    assert_eq!(r.status, 202, "{}", r.text());
    // 300,000 empty entries (900 KB) would take far more memory as events than the
    // 2 MiB budget: refused whole, with a 413 that says why, not decoded into gigabytes.
    let tiny = format!("[{}]", vec!["{}"; 300_000].join(","));
    let r = post(&url, &headers, tiny).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("memory"), "{}", r.error());
    eventually(Duration::from_secs(20), "the 3000 events", || {
        (fake.count() >= 3000).then_some(())
    })
    .await;
    assert_eq!(fake.count(), 3000);
}
