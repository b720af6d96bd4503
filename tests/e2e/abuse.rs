//! Abuse limits at the edge: credential stuffing from one address is slowed
//! and refused while another address's agent is unaffected, connections per
//! client IP, header size and count, and an admin listener reachable from
//! other hosts refused without a token. Two client addresses on one machine:
//! 127.0.0.2 and 127.0.0.3 (all of 127/8 is loopback on Linux).
use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection to `port` from the address `from`.
async fn connect_from(from: &str, port: u16) -> Result<Sender, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(local).map_err(|e| e.to_string())?;
    let tcp = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

/// One request on `send`: its status and Retry-After, or the error.
async fn post_on(
    send: &mut Sender,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>), String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/api/v2/logs")
        .header("Host", "localhost")
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from_static(b"[{\"message\":\"m\"}]")))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((resp.status().as_u16(), retry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_stuffing_from_one_ip_is_slowed_and_refused_while_another_ip_is_served() {
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = config(&addr.to_string(), "", "").replace(
        "admin:\n",
        "limits: {auth_failures_per_ip_per_minute: 10}\nadmin:\n",
    );
    let weir = Weir::start(&cfg).await;
    let port = weir.intake;

    let attacker = tokio::spawn(async move {
        let mut send = connect_from("127.0.0.2", port).await.unwrap();
        let mut answers = Vec::new();
        for i in 0..25 {
            let guess = format!("guess-{i:04}");
            answers.push(post_on(&mut send, &[("DD-API-KEY", &guess)]).await.unwrap());
        }
        // Throttled, even a right key is not looked at: a good guess is not told apart.
        // Sent right after a guess that spent the budget's refill, so throttled for sure.
        for _ in 0..30 {
            let (s, _) = post_on(&mut send, &[("DD-API-KEY", "another-guess")])
                .await
                .unwrap();
            if s == 403 {
                break;
            }
        }
        let right = post_on(&mut send, &[("DD-API-KEY", "agent-key")])
            .await
            .unwrap();
        (answers, right)
    });
    let agent = tokio::spawn(async move {
        let mut send = connect_from("127.0.0.3", port).await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(
                post_on(&mut send, &[("DD-API-KEY", "agent-key")])
                    .await
                    .unwrap()
                    .0,
            );
        }
        statuses
    });
    let (answers, right) = attacker.await.unwrap();
    let agent = agent.await.unwrap();

    assert!(
        agent.iter().all(|s| *s == 202),
        "the other IP's agent: {agent:?}"
    );
    let forbidden = answers.iter().take_while(|(s, _)| *s == 403).count();
    assert_eq!(
        forbidden, 10,
        "a burst of 10 failures is answered 403: {answers:?}"
    );
    for (status, retry) in &answers[10..] {
        match status {
            429 => {
                let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
                assert!((1..=60).contains(&secs), "{secs}");
            }
            // The budget refills at 10 a minute: one more guess every 6 s, no burst.
            403 => {}
            s => panic!("{s}: {answers:?}"),
        }
    }
    let late_guesses = answers[10..].iter().filter(|(s, _)| *s == 403).count();
    let throttled = answers[10..].len() - late_guesses;
    assert!(
        late_guesses < throttled,
        "past the burst, most guesses are refused unread: {answers:?}"
    );
    assert_eq!(
        answers[10].0, 429,
        "the 11th failure in a minute is throttled"
    );
    assert_eq!(right.0, 429, "a right key from a throttled IP");
    let m = weir.metrics().await;
    assert!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"auth_throttled\"}"
        ) >= 16.0
    );
    eventually(Duration::from_secs(20), "the agent's 40 events", || {
        (dd.count() >= 40).then_some(())
    })
    .await;
    assert_eq!(dd.count(), 40, "nothing of the attacker's got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_holds_at_most_its_connections_and_headers_are_bounded() {
    let (_dd, addr) = FakeDatadog::start().await;
    let cfg = config(&addr.to_string(), "", "").replace(
        "admin:\n",
        "limits: {max_connections_per_ip: 2, max_headers: 20, max_header_bytes: 16KiB}\nadmin:\n",
    );
    let weir = Weir::start(&cfg).await;
    let key = [("DD-API-KEY", "agent-key")];
    let mut first = connect_from("127.0.0.2", weir.intake).await.unwrap();
    let mut second = connect_from("127.0.0.2", weir.intake).await.unwrap();
    assert_eq!(post_on(&mut first, &key).await.unwrap().0, 202);
    assert_eq!(post_on(&mut second, &key).await.unwrap().0, 202);
    // The third from the same address is closed at once; another address is served.
    let third = match connect_from("127.0.0.2", weir.intake).await {
        Ok(mut s) => post_on(&mut s, &key).await,
        Err(e) => Err(e),
    };
    assert!(
        third.is_err(),
        "a third connection from 127.0.0.2: {third:?}"
    );
    let mut other = connect_from("127.0.0.3", weir.intake).await.unwrap();
    assert_eq!(post_on(&mut other, &key).await.unwrap().0, 202);
    let m = weir
        .metrics_once(
            "weir_refused_connections_total{listener=\"intake\",reason=\"per_ip_limit\"}",
            1.0,
        )
        .await;
    assert_eq!(
        metric(
            &m,
            "weir_refused_connections_total{listener=\"intake\",reason=\"per_ip_limit\"}"
        ),
        1.0
    );
    // One connection closed: the address may open another.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(mut s) = connect_from("127.0.0.2", weir.intake).await {
            if let Ok((202, _)) = post_on(&mut s, &key).await {
                again = Some(s);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a slot given back when a connection ends");

    // Headers: too many, or too large together: 431.
    let many: Vec<(String, String)> = (0..30).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let mut headers: Vec<(&str, &str)> =
        many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    headers.push(key[0]);
    let r = post(&weir.url("/api/v2/logs"), &headers, "[{\"message\":\"m\"}]").await;
    assert_eq!(r.status, 431, "30 headers past max_headers 20");
    let big = "b".repeat(20 * 1024);
    let r = post(
        &weir.url("/api/v2/logs"),
        &[key[0], ("x-big", &big)],
        "[{\"message\":\"m\"}]",
    )
    .await;
    assert_eq!(r.status, 431, "a 20 KiB header past max_header_bytes 16KiB");
    let r = post(&weir.url("/api/v2/logs"), &key, "[{\"message\":\"m\"}]").await;
    assert_eq!(r.status, 202, "an ordinary request still passes");
}

#[test]
fn an_admin_listener_other_hosts_can_reach_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| {
        let path = dir.path().join("weir.yaml");
        let text = text
            .replace("{DIR}", dir.path().to_str().unwrap())
            .replace("{INTAKE}", &free_port().to_string())
            .replace("{ADMIN}", &free_port().to_string());
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let open = config("127.0.0.1:9", "", "").replace(
        "admin:\n  address: 127.0.0.1:{ADMIN}",
        "admin:\n  address: 0.0.0.0:{ADMIN}",
    );
    let (code, _, err) = weir_cli(&["check", "--config", &write(&open)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("field `admin.address`") && err.contains("admin.token"),
        "{err}"
    );
    let with_token = open.replace(
        "admin:\n  address: 0.0.0.0:{ADMIN}",
        "admin:\n  address: 0.0.0.0:{ADMIN}\n  token: a-long-admin-token",
    );
    let (code, out, err) = weir_cli(&["check", "--config", &write(&with_token)]);
    assert_eq!(code, 0, "{out}{err}");
}
