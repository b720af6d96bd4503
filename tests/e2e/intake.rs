//! The Datadog and generic intakes: encodings, shapes, limits, error answers.
use crate::harness::*;
use serde_json::json;
use std::io::Write;
use std::time::Duration;

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");
const JSON: (&str, &str) = ("Content-Type", "application/json");

fn batch(tag: &str, n: usize) -> Vec<u8> {
    json_logs(n, |i| {
        json!({
            "message": format!("{tag} event {i}"),
            "status": "error",
            "hostname": "web-1",
            "service": "checkout",
            "ddsource": "nginx",
            "ddtags": "env:prod,team:payments",
            "http": {"status_code": 502, "url": "/pay"},
            "id": format!("{tag}-{i}"),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_is_delivered_and_archived() {
    let (dd, addr) = FakeDatadog::start().await;
    let mut weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let url = weir.url("/api/v2/logs");

    let plain = batch("none", 3);
    assert_eq!(post(&url, &[KEY, JSON], plain).await.status, 202);
    let r = post(
        &url,
        &[KEY, JSON, ("Content-Encoding", "gzip")],
        gzip(&batch("gzip", 3)),
    )
    .await;
    assert_eq!((r.status, r.text()), (202, "{}".to_string()));
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&batch("deflate", 3)).unwrap();
    assert_eq!(
        post(
            &url,
            &[KEY, JSON, ("Content-Encoding", "deflate")],
            z.finish().unwrap()
        )
        .await
        .status,
        202
    );
    let zs = zstd::bulk::compress(&batch("zstd", 3), 3).unwrap();
    assert_eq!(
        post(&url, &[KEY, JSON, ("Content-Encoding", "zstd")], zs)
            .await
            .status,
        202
    );
    // One object instead of an array; the key as a query parameter.
    let one = serde_json::to_vec(&json!({"message": "single", "id": "single-0"})).unwrap();
    assert_eq!(
        post(&format!("{url}?dd-api-key=agent-key"), &[JSON], one)
            .await
            .status,
        202
    );
    // text/plain: one log per line.
    let text = "text line 0\ntext line 1\r\n\ntext line 2\n";
    assert_eq!(
        post(&url, &[KEY, ("Content-Type", "text/plain")], text)
            .await
            .status,
        202
    );
    // The generic intake: NDJSON objects and raw lines mixed.
    let ndjson = "{\"message\":\"generic json\",\"service\":\"svc\",\"id\":\"generic-0\"}\nraw generic line\n";
    assert_eq!(
        post(&weir.url("/v1/input"), &[KEY], ndjson).await.status,
        202
    );

    let total = 4 * 3 + 1 + 3 + 2;
    eventually(Duration::from_secs(20), "all events at the backend", || {
        (dd.count() >= total).then_some(())
    })
    .await;
    // SIGTERM sends what is still queued and writes the open archive object:
    // counted after it, a duplicate delivery (a retried batch) is seen.
    assert!(weir.terminate().success(), "{}", weir.log());
    let got = dd.take();
    assert_eq!(got.len(), total, "no duplicates");
    for codec in ["none", "gzip", "deflate", "zstd"] {
        for i in 0..3 {
            let e = got
                .iter()
                .find(|e| e["id"] == format!("{codec}-{i}"))
                .unwrap_or_else(|| panic!("{codec}-{i} missing"));
            assert_eq!(e["message"], format!("{codec} event {i}"));
            assert_eq!(e["status"], "error");
            assert_eq!(e["hostname"], "web-1");
            assert_eq!(e["service"], "checkout");
            assert_eq!(e["ddsource"], "nginx");
            assert_eq!(e["ddtags"], "env:prod,team:payments");
            assert_eq!(e["http"], json!({"status_code": 502, "url": "/pay"}));
            assert!(e["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
        }
    }
    for m in [
        "single",
        "text line 0",
        "text line 1",
        "text line 2",
        "generic json",
        "raw generic line",
    ] {
        assert!(got.iter().any(|e| e["message"] == m), "{m} missing");
    }
    // The backend got the tenant's upstream key, never the agent's.
    for h in dd.requests.lock().unwrap().iter() {
        assert_eq!(h["dd-api-key"], "upstream-secret");
        assert_eq!(h["content-encoding"], "gzip");
    }

    // The archive holds exactly what was forwarded.
    let (archived, objects) = read_archive(&weir.archive_root());
    assert!(!objects.is_empty());
    for o in &objects {
        let parts: Vec<_> = o.split('/').collect();
        assert_eq!(parts[0], "acme", "{o}");
        assert!(
            parts[1].starts_with("dt=")
                && parts[2].starts_with("hour=")
                && o.ends_with(".ndjson.gz"),
            "{o}"
        );
    }
    let mut a: Vec<String> = archived.iter().map(|e| e.to_string()).collect();
    let mut f: Vec<String> = got.iter().map(|e| e.to_string()).collect();
    a.sort();
    f.sort();
    assert_eq!(a, f, "archive and backend hold the same events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_precise_with_json_bodies() {
    let (_dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(
        &addr.to_string(),
        "",
        "limits:\n  max_body_bytes: 1MiB\n  max_decompressed_bytes: 1MiB\n  max_events_per_request: 1000\n",
    ))
    .await;
    let url = weir.url("/api/v2/logs");

    let r = post(&url, &[JSON], "[]").await;
    assert_eq!(r.status, 401);
    assert!(r.error().contains("API key missing"));
    let r = post(&url, &[("DD-API-KEY", "agent-kez"), JSON], "[]").await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("not valid"));
    assert_eq!(r.headers["content-type"], "application/json");

    let r = post(
        &url,
        &[KEY, JSON],
        "[{\"message\":\"ok\"},{\"message\":oops}]",
    )
    .await;
    assert_eq!(r.status, 400);
    let e = r.error();
    // The offending byte is at offset 29; serde_json's position is within a byte of it.
    let offset: usize = e
        .split("byte offset ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (28..=30).contains(&offset) && e.contains("entry 1") && e.contains("expected value"),
        "{e}"
    );
    let r = post(&url, &[KEY, JSON], "").await;
    assert_eq!(r.status, 400);
    let r = post(
        &url,
        &[KEY, JSON, ("Content-Encoding", "gzip")],
        "not gzip at all",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("gzip"));
    let r = post(&url, &[KEY, JSON, ("Content-Encoding", "br")], "[]").await;
    assert_eq!(r.status, 415);

    // 1001 entries, past a configured max_events_per_request (none by default).
    let r = post(&url, &[KEY, JSON], batch("many", 1001)).await;
    assert_eq!(r.status, 413);
    assert!(r.error().contains("more than 1000"), "{}", r.error());
    // Larger than max_body_bytes as sent.
    let r = post(&url, &[KEY, JSON], vec![b' '; 1024 * 1024 + 1]).await;
    assert_eq!(r.status, 413);
    assert!(
        r.error().contains("larger than 1048576 bytes"),
        "{}",
        r.error()
    );

    let r = post(&weir.url("/api/v1/nothing"), &[KEY], "[]").await;
    assert_eq!(r.status, 404);
    let r = request(http::Method::GET, &url, &[KEY], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");

    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"unknown_api_key\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"datadog\",reason=\"too_many_events\"}"
        ),
        1.0
    );
    assert!(
        !m.contains("agent-key") && !m.contains("upstream-secret"),
        "no keys in metrics"
    );
    assert!(
        !weir.log().contains("agent-key") && !weir.log().contains("upstream-secret"),
        "no keys in logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_bomb_is_refused_with_bounded_memory() {
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    // 32 gzip members of 64 MiB of zeros each: ~2 MB sent, 2 GiB inflated.
    let member = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    let bomb: Vec<u8> = member
        .iter()
        .copied()
        .cycle()
        .take(member.len() * 32)
        .collect();
    assert!(
        bomb.len() < 5 * 1024 * 1024,
        "bomb fits the body limit: {}",
        bomb.len()
    );
    let r = post(
        &weir.url("/api/v2/logs"),
        &[KEY, JSON, ("Content-Encoding", "gzip")],
        bomb,
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(r.error().contains("decompressed"), "{}", r.error());
    // Memory stayed near the 5 MiB decompression limit, far from 2 GiB.
    let peak = weir.peak_rss();
    assert!(peak < 200 * 1024 * 1024, "peak RSS {peak}");
    // And the proxy carries on.
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY, JSON], batch("after", 1))
            .await
            .status,
        202
    );
    eventually(Duration::from_secs(20), "event after the bomb", || {
        (dd.count() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_log_is_truncated_and_marked() {
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let big = "x".repeat(1_500_000);
    let body = serde_json::to_vec(
        &json!([{"message": big, "id": "big"}, {"message": "small", "id": "small"}]),
    )
    .unwrap();
    assert_eq!(
        post(&weir.url("/api/v2/logs"), &[KEY, JSON], body)
            .await
            .status,
        202
    );
    eventually(Duration::from_secs(20), "both events", || {
        (dd.count() == 2).then_some(())
    })
    .await;
    let got = dd.take();
    let e = got.iter().find(|e| e["id"] == "big").unwrap();
    assert_eq!(e["message"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(e["weir"]["truncated"], true);
    assert_eq!(e["weir"]["original_message_bytes"], 1_500_000);
    let s = got.iter().find(|e| e["id"] == "small").unwrap();
    assert!(s.get("weir").is_none());
    let m = weir.metrics().await;
    assert_eq!(
        metric(&m, "weir_truncated_events_total{tenant=\"acme\"}"),
        1.0
    );
}

/// OTLP/HTTP answers in its own forms: a `google.rpc.Status` in the request's
/// encoding (protobuf or JSON) with the precise HTTP status, Retry-After where
/// the exporter should retry, and 415 for a Content-Type it does not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_refusals_are_rpc_statuses_in_the_request_encoding() {
    use prost::Message;
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let url = weir.url("/v1/logs");
    let bearer = ("Authorization", "Bearer agent-key");
    let protobuf = ("Content-Type", "application/x-protobuf");

    // Not protobuf: 400, INVALID_ARGUMENT (3), as protobuf.
    let r = post(&url, &[bearer, protobuf], &b"\xff\xff\xff"[..]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["content-type"], "application/x-protobuf");
    let status = RpcStatus::decode(r.body.clone()).unwrap();
    assert_eq!(status.code, 3);
    assert!(
        status.message.contains("ExportLogsServiceRequest"),
        "{status:?}"
    );

    // Bad JSON: the same, as JSON, with where it went wrong.
    let r = post(&url, &[bearer, JSON], &b"{\"resourceLogs\": [ }"[..]).await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["code"], 3);
    assert!(
        v["message"].as_str().unwrap().contains("invalid JSON"),
        "{v}"
    );

    // No key, a wrong key, an unsupported Content-Type.
    let r = post(&url, &[JSON], &b"{}"[..]).await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (401, Some(16)));
    let r = post(&url, &[("Authorization", "Bearer nope"), JSON], &b"{}"[..]).await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (403, Some(7)));
    let r = post(&url, &[bearer, ("Content-Type", "text/plain")], &b"hi"[..]).await;
    assert_eq!(r.status, 415);
    assert!(RpcStatus::decode(r.body.clone())
        .unwrap()
        .message
        .contains("application/json"));

    // An empty export is a success with an empty answer; a JSON one answers JSON.
    let r = post(&url, &[bearer, JSON], &b"{\"resourceLogs\":[]}"[..]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json(), json!({}));
    assert_eq!(dd.count(), 0);
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"otlp\",reason=\"invalid_payload\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "weir_rejected_requests_total{intake=\"otlp\",reason=\"unsupported_content_type\"}"
        ),
        1.0
    );
}

/// Splunk HEC, with the requests and answers of Splunk's HEC documentation
/// ("Format events for HTTP Event Collector", "HTTP Event Collector examples",
/// "About HTTP Event Collector Indexer Acknowledgment"), answer bytes compared
/// whole, and an acknowledgement round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_answers_as_splunk_documents_it() {
    let (dd, addr) = FakeDatadog::start().await;
    let weir = Weir::start(&config(&addr.to_string(), "", "")).await;
    let token = ("Authorization", "Splunk agent-key");
    let exact = |r: &Reply, status: u16, body: &str| {
        assert_eq!((r.status, r.text().as_str()), (status, body));
        assert_eq!(r.headers["content-type"], "application/json");
    };

    let r = post(
        &weir.url("/services/collector/event"),
        &[token],
        r#"{"event": "hello world"}"#,
    )
    .await;
    exact(&r, 200, r#"{"text":"Success","code":0}"#);
    // Batched: events concatenated, no separator.
    let batch = r#"{"event": "Pony 1 has left the barn"}{"event": "Pony 2 has left the barn"}{"event": "Pony 3 has left the barn", "nested": {"key1": "value1"}}"#;
    let r = post(&weir.url("/services/collector"), &[token], batch).await;
    exact(&r, 200, r#"{"text":"Success","code":0}"#);
    // Metadata and indexed fields.
    let full = r#"{"time": 1426279439, "host": "localhost", "source": "random-data-generator", "sourcetype": "my_sample_data", "index": "main", "event": "Hello world!", "fields": {"club":"glee", "wins":["regionals","nationals"]}}"#;
    let r = post(&weir.url("/services/collector/event"), &[token], full).await;
    exact(&r, 200, r#"{"text":"Success","code":0}"#);
    // Raw, metadata in the query.
    let r = post(
        &weir.url("/services/collector/raw?channel=00872DC6-AC83-4EDE-8AFE-8413C3825C4C&sourcetype=splunkd_access&index=main"),
        &[token],
        "1, 2, 3... Hello, world!\nline two\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Indexer acknowledgement: an ackId per request on a channel, true once.
    let channel = "FE0ECFAD-13D5-401B-847D-77833BD77131";
    let url = weir.url(&format!("/services/collector/event?channel={channel}"));
    let r = post(&url, &[token], r#"{"event": "ack me"}"#).await;
    exact(&r, 200, r#"{"text":"Success","code":0,"ackId":0}"#);
    let r = post(
        &url,
        &[token, ("X-Splunk-Request-Channel", channel)],
        r#"{"event": "and me"}"#,
    )
    .await;
    exact(&r, 200, r#"{"text":"Success","code":0,"ackId":1}"#);
    let ack = weir.url(&format!("/services/collector/ack?channel={channel}"));
    let r = post(&ack, &[token], r#"{"acks": [0, 1, 2]}"#).await;
    exact(&r, 200, r#"{"acks":{"0":true,"1":true,"2":false}}"#);
    let r = post(&ack, &[token], r#"{"acks": [0]}"#).await;
    exact(&r, 200, r#"{"acks":{"0":false}}"#);
    let r = post(
        &weir.url("/services/collector/ack"),
        &[token],
        r#"{"acks": [0]}"#,
    )
    .await;
    exact(&r, 400, r#"{"text":"Data channel is missing","code":10}"#);

    // Health, and the documented errors.
    let r = get(&weir.url("/services/collector/health")).await.unwrap();
    exact(&r, 200, r#"{"text":"HEC is healthy","code":17}"#);
    let hec = weir.url("/services/collector/event");
    exact(
        &post(&hec, &[], r#"{"event": "x"}"#).await,
        401,
        r#"{"text":"Token is required","code":2}"#,
    );
    exact(
        &post(
            &hec,
            &[("Authorization", "Splunk wrong")],
            r#"{"event": "x"}"#,
        )
        .await,
        403,
        r#"{"text":"Invalid token","code":4}"#,
    );
    exact(
        &post(&hec, &[token], "").await,
        400,
        r#"{"text":"No data","code":5}"#,
    );
    exact(
        &post(&hec, &[token], r#"{"event": "ok"}{"time": 1426279439}"#).await,
        400,
        r#"{"text":"Event field is required","code":12,"invalid-event-number":1}"#,
    );
    exact(
        &post(&hec, &[token], r#"{"event": ""}"#).await,
        400,
        r#"{"text":"Event field cannot be blank","code":13,"invalid-event-number":0}"#,
    );
    exact(
        &post(&hec, &[token], r#"{"event": "#).await,
        400,
        r#"{"text":"Invalid data format","code":6}"#,
    );
    // Basic auth with the token as the password, as some HEC clients send it.
    let r = post(
        &hec,
        &[("Authorization", "Basic eDphZ2VudC1rZXk=")],
        r#"{"event": "basic"}"#,
    )
    .await;
    exact(&r, 200, r#"{"text":"Success","code":0}"#);

    // What was accepted arrives, nothing refused does: 1 + 3 + 1 + 2 + 2 + 1.
    let got = eventually(
        Duration::from_secs(10),
        "10 HEC events at the backend",
        || (dd.count() >= 10).then(|| dd.take()),
    )
    .await;
    assert_eq!(got.len(), 10);
    let by_message = |m: &str| {
        got.iter()
            .find(|e| e["message"] == m)
            .unwrap_or_else(|| panic!("{m}: {got:?}"))
    };
    assert_eq!(
        by_message("Pony 3 has left the barn")["nested"]["key1"],
        "value1"
    );
    let hello = by_message("Hello world!");
    assert_eq!(hello["hostname"], "localhost");
    assert_eq!(hello["ddsource"], "random-data-generator");
    assert_eq!(hello["sourcetype"], "my_sample_data");
    assert_eq!(hello["index"], "main");
    assert_eq!(hello["club"], "glee");
    assert_eq!(hello["timestamp"], 1_426_279_439_000i64);
    assert_eq!(by_message("line two")["sourcetype"], "splunkd_access");
    let m = weir.metrics().await;
    assert_eq!(
        metric(
            &m,
            "weir_received_events_total{intake=\"splunk_hec\",tenant=\"acme\"}"
        ),
        10.0
    );
}
