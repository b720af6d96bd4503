//! Connection limits: slow headers (slowloris) and idle connections are cut.
use crate::harness::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn short_timeouts(cfg: String) -> String {
    cfg + "limits:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n"
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
fn read_until_closed(mut s: std::net::TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    (buf, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&short_timeouts(config(&addr.to_string(), "", ""))).await;
    let port = weir.intake;
    let (answer, took) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Half a request line, then nothing: a slowloris client.
        s.write_all(b"POST /api/v2/logs HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        read_until_closed(s)
    })
    .await
    .unwrap();
    // Closed by the proxy (with or without a 408), not by our 30 s read timeout.
    assert!(
        took < Duration::from_secs(25),
        "connection left open for {took:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&short_timeouts(config(&addr.to_string(), "", ""))).await;
    let port = weir.intake;
    let (answer, took) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = "[{\"message\":\"one\"}]";
        let req = format!("POST /api/v2/logs HTTP/1.1\r\nHost: x\r\nDD-API-KEY: agent-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        // The answer arrives, then the connection idles until the proxy closes it.
        read_until_closed(s)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(
        took < Duration::from_secs(25),
        "idle connection left open for {took:?}"
    );
    let m = weir.metrics().await;
    assert_eq!(
        metric(&m, "weir_open_connections{listener=\"intake\"}"),
        0.0
    );
}
