//! Jobs through the admin API's handler, against a real router whose backend
//! is a file (NDJSON appended per batch) and a local archive.
use super::*;
use chrono::{Duration as Span, Utc};
use http::Method;

struct Setup {
    dir: tempfile::TempDir,
    rehydrations: Arc<Rehydrations>,
    router: Arc<Router>,
    drain: tokio_util::sync::CancellationToken,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(Setup::plan(dir.path(), "eu"));
        let drain = tokio_util::sync::CancellationToken::new();
        let router = Router::start(&plan, Default::default(), drain.clone()).unwrap();
        Setup {
            rehydrations: Rehydrations::new(plan, router.clone()),
            router,
            dir,
            drain,
        }
    }

    /// The config with tenant acme pinned to `region`.
    fn plan(dir: &std::path::Path, region: &str) -> Plan {
        let d = dir.display();
        let text = format!(
            "data_dir: {d}/data
listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]
archive: {{store: {{type: local, root: {d}/archive}}}}
backends:
  - {{name: eu-file, type: file, path: {d}/eu.ndjson, batch: {{max_wait: 20ms}}}}
  - {{name: eu-file-2, type: file, path: {d}/eu2.ndjson, batch: {{max_wait: 20ms}}}}
  - {{name: us-file, type: file, path: {d}/us.ndjson, batch: {{max_wait: 20ms}}}}
regions:
  - {{name: eu, tiers: [[eu-file], [eu-file-2]]}}
  - {{name: us, tiers: [[us-file]]}}
tenants: [{{name: acme, api_keys: [k], region: {region}}}]
"
        );
        Plan::parse(&text, "weir.yaml").unwrap()
    }

    /// Writes `events` (timestamp ms, service) as one archive object in the hour of the first.
    fn archive(&self, name: &str, events: &[(i64, &str, usize)]) {
        let mut text = String::new();
        for (ts, service, n) in events {
            text.push_str(&format!(
                "{{\"timestamp\":{ts},\"service\":\"{service}\",\"message\":\"event {n}\"}}\n"
            ));
        }
        let t = chrono::DateTime::from_timestamp_millis(events[0].0).unwrap();
        let dir = self
            .dir
            .path()
            .join("archive/acme")
            .join(t.format("dt=%Y-%m-%d/hour=%H").to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let body =
            crate::archive::compress(crate::config::ArchiveCompression::Gzip, 1, text.as_bytes());
        std::fs::write(dir.join(format!("{name}.ndjson.gz")), body).unwrap();
    }

    fn call(
        &self,
        method: Method,
        path: &[&str],
        body: Value,
    ) -> Result<(StatusCode, Value), (StatusCode, String)> {
        self.rehydrations
            .handle(&method, path, body.to_string().as_bytes())
            .map_err(|r| (r.status, r.message.clone()))
    }

    async fn wait_for(&self, id: &str, states: &[&str]) -> Value {
        for _ in 0..1000 {
            let (_, v) = self.call(Method::GET, &[id], Value::Null).unwrap();
            if states.contains(&v["state"].as_str().unwrap()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never reached {states:?}");
    }

    /// The messages the file backend `file` got, in order.
    fn received(&self, file: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

fn job(from: i64, to: i64) -> Value {
    json!({"tenant": "acme", "from": spec::rfc3339_ms(from), "to": spec::rfc3339_ms(to)})
}

/// 3 objects over two hours, 2 hours ago: events 0..300, every third `db`, one a minute apart... at 10 s steps.
fn seed(s: &Setup) -> (i64, Vec<(i64, &'static str, usize)>) {
    let t0 = (Utc::now() - Span::hours(3)).timestamp_millis() / 3_600_000 * 3_600_000;
    let events: Vec<(i64, &str, usize)> = (0..300)
        .map(|n| {
            (
                t0 + n as i64 * 20_000,
                if n % 3 == 0 { "db" } else { "web" },
                n,
            )
        })
        .collect();
    s.archive("20260101T000000.000Z-a-000000", &events[..100]);
    s.archive("20260101T000001.000Z-a-000001", &events[100..180]);
    s.archive("20260101T000002.000Z-a-000002", &events[180..]);
    (t0, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_selected_events_go_to_the_route() {
    let s = Setup::new();
    let (_, events) = seed(&s);
    // From event 50 to event 250 (excluded), service web.
    let mut body = job(events[50].0, events[250].0);
    body["query"] = json!("service:web");
    let (status, v) = s.call(Method::POST, &[], body.clone()).unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let v = s.wait_for(&id, &["done", "failed"]).await;
    assert_eq!(v["state"], "done", "{v}");
    let want: Vec<String> = (50..250)
        .filter(|n| n % 3 != 0)
        .map(|n| format!("event {n}"))
        .collect();
    let mut got = s.received("eu.ndjson");
    got.sort_by_key(|m| m[6..].parse::<u32>().unwrap());
    assert_eq!(got, want);
    assert_eq!(v["events_sent"], want.len());
    assert_eq!(v["events_matched"], want.len());
    assert_eq!(v["events_scanned"], 300);
    assert_eq!(v["objects_done"], 3);
    let dir = s.dir.path().join("data/rehydrate");
    assert!(dir.join(format!("{id}.json")).exists());
    assert!(
        !dir.join(format!("{id}.objects.json")).exists(),
        "a done job keeps no listing"
    );
    // The same request again: already done, nothing sent twice.
    let (status, v) = s.call(Method::POST, &[], body).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["state"], "done");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.received("eu.ndjson").len(), want.len());
    s.drain.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_resumes_without_duplicates_or_gaps() {
    let s = Setup::new();
    let (_, events) = seed(&s);
    let mut body = job(events[0].0, events[299].0 + 1);
    // 60 events a second, chunks of 60: a few seconds in all.
    body["rate"] = json!(60);
    let (_, v) = s.call(Method::POST, &[], body.clone()).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    // Cancelled once some are sent, mid-way.
    for _ in 0..500 {
        if s.received("eu.ndjson").len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = s.call(Method::DELETE, &[&id], Value::Null).unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let v = s.wait_for(&id, &["cancelled"]).await;
    let sent = v["events_sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < 300, "{v}");
    // Every chunk sent before the cancel was awaited: the backend has exactly what the job counts.
    assert_eq!(s.received("eu.ndjson").len() as u64, sent);
    // The same request resumes from the checkpoint.
    body["rate"] = json!(100_000);
    let (status, v) = s.call(Method::POST, &[], body).unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["resumed_from_events_sent"].as_u64().unwrap(), sent, "{v}");
    let v = s.wait_for(&id, &["done", "failed"]).await;
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["resumed_from_events_sent"].as_u64().unwrap(), sent);
    let mut got = s.received("eu.ndjson");
    got.sort_by_key(|m| m[6..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..300).map(|n| format!("event {n}")).collect();
    assert_eq!(got, want, "each event once");
    assert_eq!(v["events_sent"], 300);
    s.drain.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residency_refuses_a_backend_outside_the_tenants_regions() {
    let s = Setup::new();
    let (_, events) = seed(&s);
    let mut body = job(events[0].0, events[10].0);
    body["to_backend"] = json!("us-file");
    let (status, msg) = s.call(Method::POST, &[], body.clone()).unwrap_err();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        msg.contains("residency") && msg.contains("eu-file"),
        "{msg}"
    );
    // Not even a dry run.
    body["dry_run"] = json!(true);
    assert_eq!(
        s.call(Method::POST, &[], body.clone()).unwrap_err().0,
        StatusCode::FORBIDDEN
    );
    body["to_backend"] = json!("nowhere");
    assert_eq!(
        s.call(Method::POST, &[], body.clone()).unwrap_err().0,
        StatusCode::NOT_FOUND
    );
    // The failover tier of its own region is allowed, and gets only what was asked.
    body["to_backend"] = json!("eu-file-2");
    body["dry_run"] = json!(false);
    let (_, v) = s.call(Method::POST, &[], body).unwrap();
    let v = s
        .wait_for(v["id"].as_str().unwrap(), &["done", "failed"])
        .await;
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(s.received("eu2.ndjson").len(), 10);
    assert!(s.received("eu.ndjson").is_empty() && s.received("us.ndjson").is_empty());
    s.drain.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_the_tenant_stops_a_job_to_one_backend() {
    let s = Setup::new();
    let (_, events) = seed(&s);
    let mut body = job(events[0].0, events[299].0 + 1);
    body["to_backend"] = json!("eu-file-2");
    body["rate"] = json!(20);
    let (_, v) = s.call(Method::POST, &[], body).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    for _ in 0..500 {
        if !s.received("eu2.ndjson").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The tenant now lives in the US: eu-file-2 is no longer a place its events may go.
    s.router.reload(&Setup::plan(s.dir.path(), "us")).unwrap();
    let v = s.wait_for(&id, &["failed", "done"]).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("residency: "),
        "{v}"
    );
    let sent = v["events_sent"].as_u64().unwrap();
    assert!(sent < 300, "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.received("eu2.ndjson").len() as u64,
        sent,
        "nothing after the reload"
    );
    assert!(s.received("us.ndjson").is_empty());
    s.drain.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_and_sends_nothing() {
    let s = Setup::new();
    let (_, events) = seed(&s);
    let mut body = job(events[0].0, events[150].0);
    body["dry_run"] = json!(true);
    body["rate"] = json!(10);
    body["query"] = json!("service:db");
    let (status, v) = s.call(Method::POST, &[], body).unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(v["id"].as_str().unwrap().ends_with("-dry"));
    let v = s
        .wait_for(v["id"].as_str().unwrap(), &["done", "failed"])
        .await;
    assert_eq!(v["estimate"]["events"], 50, "{v}");
    assert_eq!(v["estimate"]["seconds_at_rate"], 5);
    assert_eq!(v["events_sent"], 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.received("eu.ndjson").is_empty());
    assert!(
        !s.dir.path().join("data/rehydrate").exists(),
        "a dry run keeps no state"
    );
    s.drain.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_the_cap_on_jobs() {
    let s = Setup::new();
    let (_, events) = seed(&s);
    let e = s
        .call(Method::POST, &[], json!({"tenant": "acme", "from": "-1h"}))
        .unwrap_err();
    assert_eq!(e.0, StatusCode::BAD_REQUEST);
    let e = s
        .call(
            Method::POST,
            &[],
            json!({"tenant": "nope", "from": "-1h", "to": "now"}),
        )
        .unwrap_err();
    assert_eq!(e.0, StatusCode::NOT_FOUND);
    let e = s
        .call(
            Method::POST,
            &[],
            json!({"tenant": "acme", "from": "now", "to": "-1h"}),
        )
        .unwrap_err();
    assert!(
        e.0 == StatusCode::BAD_REQUEST && e.1.contains("before"),
        "{e:?}"
    );
    assert_eq!(
        s.call(Method::GET, &["rh-nope"], Value::Null)
            .unwrap_err()
            .0,
        StatusCode::NOT_FOUND
    );
    // Two slow jobs run; a third waits its turn.
    for n in 0..MAX_ACTIVE {
        let mut body = job(events[n].0, events[299].0);
        body["rate"] = json!(1);
        let (status, v) = s.call(Method::POST, &[], body.clone()).unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
        // The same request again (a CLI started anew) shows the running job; restarting it is refused.
        let (status, again) = s.call(Method::POST, &[], body.clone()).unwrap();
        assert_eq!((status, &again["id"]), (StatusCode::OK, &v["id"]));
        body["restart"] = json!(true);
        let e = s.call(Method::POST, &[], body).unwrap_err();
        assert_eq!(e.0, StatusCode::CONFLICT);
    }
    let e = s
        .call(Method::POST, &[], job(events[5].0, events[299].0))
        .unwrap_err();
    assert_eq!(e.0, StatusCode::TOO_MANY_REQUESTS, "{e:?}");
    let (_, list) = s.call(Method::GET, &[], Value::Null).unwrap();
    assert_eq!(list["rehydrations"].as_array().unwrap().len(), MAX_ACTIVE);
    for j in s.rehydrations.stop_all() {
        j.await.unwrap();
    }
    let (_, list) = s.call(Method::GET, &[], Value::Null).unwrap();
    assert!(
        list["rehydrations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "interrupted"),
        "{list}"
    );
    // A shutting-down proxy starts no job.
    assert_eq!(
        s.call(Method::POST, &[], job(events[5].0, events[299].0))
            .unwrap_err()
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    s.drain.cancel();
}
