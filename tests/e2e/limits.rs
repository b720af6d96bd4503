//! Connection limits: slow headers (slowloris) and idle connections are cut,
//! each by its own timer (each test fails if the other timer did the cutting).
use crate::harness::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn timeouts(cfg: String, header: &str, idle: &str) -> String {
    cfg + &format!("limits:\n  header_read_timeout: {header}\n  idle_timeout: {idle}\n")
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
    // The idle timeout is far off: only the header timer can cut this one early.
    let weir = Weir::start(&timeouts(config(&addr.to_string(), "", ""), "1s", "60s")).await;
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
    // Closed by the header timer (1 s), long before the idle one (60 s) or our 30 s read timeout.
    assert!(
        took < Duration::from_secs(20),
        "connection left open for {took:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed_by_the_idle_timer_not_the_header_one() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&timeouts(config(&addr.to_string(), "", ""), "1s", "4s")).await;
    let port = weir.intake;
    let (answer, open_after_2s, took) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = "[{\"message\":\"one\"}]";
        let req = format!("POST /api/v2/logs HTTP/1.1\r\nHost: x\r\nDD-API-KEY: agent-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).unwrap();
        let mut answer = vec![0u8; 4096];
        let n = s.read(&mut answer).unwrap();
        answer.truncate(n);
        let idle_from = Instant::now();
        // Past the header timeout (1 s), short of the idle one (4 s): still open.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let open_after_2s = matches!(
            s.read(&mut [0u8; 16]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut
        );
        let (_, _) = read_until_closed(s);
        (answer, open_after_2s, idle_from.elapsed())
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    assert!(
        open_after_2s,
        "closed between requests before the idle timeout"
    );
    assert!(
        took < Duration::from_secs(25),
        "idle connection left open for {took:?}"
    );
    // The gauge goes down just after the socket is closed.
    eventually(Duration::from_secs(5), "the connection uncounted", || {
        let m = futures::executor::block_on(weir.metrics());
        (metric(&m, "weir_open_connections{listener=\"intake\"}") == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&timeouts(config(&addr.to_string(), "", ""), "1s", "2s")).await;
    // h2c with prior knowledge, a client that PINGs every 200 ms and sends no request.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", weir.intake))
        .await
        .unwrap();
    let (_send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping_pong");
    let driver = tokio::spawn(conn);
    let start = Instant::now();
    let mut answered = 0;
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match pings.ping(h2::Ping::opaque()).await {
            Ok(_pong) => answered += 1,
            Err(_) => break start.elapsed(),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "an idle HTTP/2 connection is kept open by pings ({answered} answered)"
        );
    };
    assert!(
        answered >= 3,
        "the server answered pings until it closed: {answered}"
    );
    assert!(closed >= Duration::from_secs(2), "{closed:?}");
    let _ = driver.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_body_read_timeout_gets_408() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir =
        Weir::start(&(config(&addr.to_string(), "", "") + "limits:\n  body_read_timeout: 1s\n"))
            .await;
    let port = weir.intake;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Headers promise 100 bytes; 10 arrive, then nothing.
        s.write_all(b"POST /api/v2/logs HTTP/1.1\r\nHost: x\r\nDD-API-KEY: agent-key\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{\"message\"")
            .unwrap();
        read_until_closed(s).0
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request body not received in time"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_wait_their_turn() {
    let (dd, addr) = FakeDatadog::start().await;
    let weir =
        Weir::start(&(config(&addr.to_string(), "", "") + "limits:\n  max_connections: 1\n")).await;
    // The one slot, held by an open connection that sends nothing yet.
    let holder = std::net::TcpStream::connect(("127.0.0.1", weir.intake)).unwrap();
    let url = weir.url("/api/v2/logs");
    let waiting = tokio::spawn(async move {
        post(
            &url,
            &[
                ("DD-API-KEY", "agent-key"),
                ("Content-Type", "application/json"),
            ],
            r#"[{"message":"second"}]"#,
        )
        .await
        .status
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past max_connections");
    assert_eq!(dd.count(), 0);
    let open = "weir_open_connections{listener=\"intake\"}";
    let m = weir.metrics_once(open, 1.0).await;
    assert_eq!(metric(&m, open), 1.0);
    drop(holder);
    assert_eq!(waiting.await.unwrap(), 202, "served once the slot is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_served_on_a_plain_listener() {
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::post(weir.url("/api/v2/logs"))
        .header("DD-API-KEY", "agent-key")
        .header("Content-Type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"[{"message":"over h2c"}]"#,
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 202);
    eventually(Duration::from_secs(10), "the event", || {
        (dd.count() == 1).then_some(())
    })
    .await;
}

/// A stream listener's message that does not arrive whole within
/// `body_read_timeout` ends its connection, while the idle timer alone would
/// let a sender trickle a byte a second forever: Fluent forward refuses it
/// (no ack), syslog takes what came as a last line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_trickled_past_the_read_timeout_ends_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dd, addr) = FakeDatadog::start().await;
    let limits = "limits:\n  body_read_timeout: 1s\n  idle_timeout: 60s\n";
    for (protocol, partial, intake) in [
        ("fluent_forward", &b"\x93\xa3tag\xce"[..], "fluent_forward"),
        ("syslog", &b"<13>1 - h app - - - half a line"[..], "syslog"),
    ] {
        let cfg = config(&addr.to_string(), "", limits).replace(
            "    protocol: http\n",
            &format!("    protocol: {protocol}\n    tenant: acme\n"),
        );
        let weir = Weir::start(&cfg).await;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", weir.intake))
            .await
            .unwrap();
        s.write_all(partial).await.unwrap();
        let start = std::time::Instant::now();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest))
            .await
            .expect("closed by weir, well before the idle timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "{protocol}: nothing answered");
        assert!(start.elapsed() < Duration::from_secs(30));
        let series =
            format!("weir_rejected_requests_total{{intake=\"{intake}\",reason=\"body_timeout\"}}");
        let m = weir.metrics_once(&series, 1.0).await;
        assert_eq!(metric(&m, &series), 1.0, "{protocol}");
        if protocol == "syslog" {
            let got = eventually(Duration::from_secs(10), "the half line", || {
                (dd.count() >= 1).then(|| dd.take())
            })
            .await;
            assert_eq!(got.len(), 1);
            assert_eq!(got[0]["message"], "half a line");
        }
    }
}
