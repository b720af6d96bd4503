//! Delivery against a fake backend: a `Transport` that answers from a script
//! and records each send, on tokio's paused clock (backoffs and ejections
//! pass at once, and their lengths are still measured).
use super::backend::{Backend, ProbeError, Protocol, SendError, Sent, Transport};
use super::deliver::{deliver, PendingEvents};
use super::health::BackendHealth;
use super::{Member, RouteSettings};
use crate::archive::DeadLetters;
use crate::config::{
    ArchiveConfig, Dur, ElasticsearchConfig, HealthCheckConfig, PassiveHealthConfig, RetryConfig,
};
use crate::telemetry::METRICS;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::StatusCode;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

type Answer = Box<dyn Fn() -> Result<Sent, SendError> + Send + Sync>;

/// One send the fake received: when, and the lines it carried.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    lines: Vec<String>,
}

/// Answers each send with the next answer of its script (the last one repeats).
struct Fake {
    script: Mutex<VecDeque<Answer>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Transport for Fake {
    fn encode(&self, ndjson: Vec<u8>, _tenant: &str) -> Bytes {
        Bytes::from(ndjson)
    }

    fn send<'a>(
        &'a self,
        body: Bytes,
        _: usize,
        _: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        let lines = String::from_utf8(body.to_vec()).unwrap();
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            lines: lines.lines().map(str::to_string).collect(),
        });
        let mut script = self.script.lock().unwrap();
        let answer = if script.len() > 1 {
            script.pop_front().unwrap()()
        } else {
            script[0]()
        };
        futures::future::ready(answer).boxed()
    }

    fn probe<'a>(&'a self, _: &'a HealthCheckConfig) -> BoxFuture<'a, Result<(), ProbeError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

fn ok() -> Answer {
    Box::new(|| Ok(Sent::default()))
}

fn status(code: u16, retry_after_s: Option<u64>) -> Answer {
    Box::new(move || {
        Err(SendError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after_s.map(Duration::from_secs),
            snippet: String::new(),
        })
    })
}

/// A fake backend named `name` and the record of its sends.
struct FakeBackend {
    member: Member,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeBackend {
    fn new(name: &str, passive: PassiveHealthConfig, script: Vec<Answer>) -> FakeBackend {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            script: Mutex::new(script.into()),
            calls: calls.clone(),
        };
        FakeBackend {
            member: Member {
                backend: Arc::new(Backend::new(name, Box::new(fake))),
                health: BackendHealth::new(name, passive),
                weight: 1,
            },
            calls,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn name(&self) -> &str {
        self.member.backend.name()
    }
}

fn passive(max_failures: u32, ejection_s: u64) -> PassiveHealthConfig {
    PassiveHealthConfig {
        max_failures,
        ejection: Dur(Duration::from_secs(ejection_s)),
        max_ejection: Dur(Duration::from_secs(ejection_s * 4)),
    }
}

fn route(
    tenant: &str,
    tiers: &[&[&FakeBackend]],
    dead_letters: Option<DeadLetters>,
) -> RouteSettings {
    RouteSettings {
        tenant: tenant.to_string(),
        preferred: tiers[0][0].name().to_string(),
        upstream_key: None,
        tiers: tiers
            .iter()
            .map(|t| t.iter().map(|f| f.member.clone()).collect())
            .collect(),
        max_events: 1000,
        max_bytes: 1 << 20,
        max_wait: Duration::from_secs(1),
        retry: RetryConfig {
            initial_backoff: Dur(Duration::from_millis(100)),
            max_backoff: Dur(Duration::from_secs(30)),
            max_retries: None,
        },
        in_flight: Arc::new(Semaphore::new(8)),
        pace: None,
        dead_letters,
    }
}

/// Delivers `lines` as one batch, as the route would.
async fn send_batch(s: &RouteSettings, lines: &[&str]) {
    let mut ndjson = Vec::new();
    for l in lines {
        ndjson.extend_from_slice(l.as_bytes());
        ndjson.push(b'\n');
    }
    METRICS
        .pending_events
        .with_label_values(&[&s.tenant, &s.preferred])
        .add(lines.len() as i64);
    let pending = PendingEvents::adopt(&s.tenant, &s.preferred, lines.len());
    deliver(s, ndjson, lines.len(), pending).await;
}

fn dead_letters(tenant: &str) -> (DeadLetters, Arc<InMemory>) {
    let store = Arc::new(InMemory::new());
    let cfg: ArchiveConfig = serde_yaml::from_str("{store: {type: local, root: /unused}}").unwrap();
    let set = crate::archive::StoreSet::one(tenant, store.clone());
    (DeadLetters::new(tenant, &cfg, set), store)
}

/// The NDJSON lines of every object in `store`.
async fn stored_lines(store: &InMemory) -> Vec<String> {
    use futures::TryStreamExt;
    use std::io::Read;
    let objects: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut lines = Vec::new();
    for o in objects {
        let gz = store.get(&o.location).await.unwrap().bytes().await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

fn failovers(tenant: &str, from: &str, to: &str) -> u64 {
    METRICS
        .backend_failovers
        .with_label_values(&[tenant, from, to])
        .get()
}

#[tokio::test(start_paused = true)]
async fn failover_goes_through_the_tiers_then_the_failover_region_in_order() {
    // Region eu: tiers [eu-a1, eu-a2] then [eu-b]; failover region us: [us-c].
    let a1 = FakeBackend::new("fo-eu-a1", passive(3, 5), vec![status(503, None)]);
    let a2 = FakeBackend::new("fo-eu-a2", passive(3, 5), vec![status(502, None)]);
    let b = FakeBackend::new("fo-eu-b", passive(3, 5), vec![status(500, None)]);
    let c = FakeBackend::new("fo-us-c", passive(3, 5), vec![ok()]);
    let s = route("fo-t", &[&[&a1, &a2], &[&b], &[&c]], None);
    send_batch(&s, &["{\"message\":\"m\"}"]).await;
    let first = |f: &FakeBackend| f.calls()[0].at;
    assert_eq!(
        (
            a1.calls().len(),
            a2.calls().len(),
            b.calls().len(),
            c.calls().len()
        ),
        (1, 1, 1, 1),
        "each backend tried once, no backoff needed"
    );
    assert!(
        first(&a1).max(first(&a2)) <= first(&b),
        "the first tier first"
    );
    assert!(
        first(&b) <= first(&c),
        "the region's tiers before the failover region"
    );
    assert_eq!(failovers("fo-t", "fo-eu-b", "fo-us-c"), 1);
    assert_eq!(c.calls()[0].lines, ["{\"message\":\"m\"}"]);
}

#[tokio::test(start_paused = true)]
async fn an_ejected_backend_is_passed_over_until_its_ejection_ends() {
    let a = FakeBackend::new("ej-a", passive(1, 10), vec![status(503, None), ok()]);
    let b = FakeBackend::new("ej-b", passive(3, 10), vec![ok()]);
    let s = route("ej-t", &[&[&a], &[&b]], None);
    send_batch(&s, &["{\"message\":\"1\"}"]).await;
    assert_eq!((a.calls().len(), b.calls().len()), (1, 1), "failed over");
    assert_eq!(a.member.health.report().state, "ejected");

    send_batch(&s, &["{\"message\":\"2\"}"]).await;
    assert_eq!(a.calls().len(), 1, "ejected: passed over");
    assert_eq!(b.calls().len(), 2);
    assert_eq!(failovers("ej-t", "ej-a", "ej-b"), 2);

    tokio::time::sleep(Duration::from_secs(11)).await;
    send_batch(&s, &["{\"message\":\"3\"}"]).await;
    assert_eq!(a.calls().len(), 2, "the ejection ended: traffic returns");
    assert_eq!(b.calls().len(), 2);
    assert_eq!(a.member.health.report().state, "up");
}

#[tokio::test(start_paused = true)]
async fn a_4xx_is_dead_lettered_not_retried_nor_failed_over() {
    let a = FakeBackend::new("dl-a", passive(1, 10), vec![status(400, None)]);
    let b = FakeBackend::new("dl-b", passive(1, 10), vec![ok()]);
    let (dl, store) = dead_letters("dl-t");
    let s = route("dl-t", &[&[&a], &[&b]], Some(dl));
    send_batch(&s, &["{\"message\":\"x\"}", "{\"message\":\"y\"}"]).await;
    assert_eq!((a.calls().len(), b.calls().len()), (1, 0));
    assert_eq!(
        a.member.health.report().state,
        "up",
        "a refusal is not a failure"
    );
    assert_eq!(
        stored_lines(&store).await,
        ["{\"message\":\"x\"}", "{\"message\":\"y\"}"]
    );
    let dead = METRICS
        .dead_lettered_events
        .with_label_values(&["dl-t", "dl-a", "400"])
        .get();
    assert_eq!(dead, 2);
}

#[tokio::test(start_paused = true)]
async fn a_5xx_and_a_429_are_retried_honouring_retry_after() {
    let a = FakeBackend::new(
        "ra-a",
        passive(10, 10),
        vec![status(429, Some(7)), status(503, None), ok()],
    );
    let s = route("ra-t", &[&[&a]], None);
    send_batch(&s, &["{\"message\":\"m\"}"]).await;
    let calls = a.calls();
    assert_eq!(calls.len(), 3, "sent until delivered");
    assert!(
        calls[1].at - calls[0].at >= Duration::from_secs(7),
        "waited for Retry-After: {:?}",
        calls[1].at - calls[0].at
    );
    assert!(
        calls[2].at - calls[1].at <= Duration::from_millis(400),
        "then the jittered backoff of the second retry (at most 100ms doubled twice)"
    );
    assert_eq!(
        METRICS.backend_retries.with_label_values(&["ra-a"]).get(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn partial_success_retries_what_was_asked_again_and_dead_letters_the_refused() {
    // A `_bulk` answer read by the Elasticsearch protocol: item 1 refused, item 2 to send again.
    let es = super::elasticsearch::Elasticsearch::new(&ElasticsearchConfig {
        endpoint: "http://es".into(),
        index: "i".into(),
        headers: Default::default(),
    });
    let answer = serde_json::json!({"errors": true, "items": [
        {"create": {"status": 201}},
        {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
        {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
    ]})
    .to_string();
    let partial = es
        .read_answer(StatusCode::OK, answer.as_bytes(), 3)
        .unwrap();
    let partial = Mutex::new(Some(partial));
    let first: Answer = Box::new(move || Ok(partial.lock().unwrap().take().unwrap_or_default()));
    let a = FakeBackend::new("ps-a", passive(3, 10), vec![first, ok()]);
    let (dl, store) = dead_letters("ps-t");
    let s = route("ps-t", &[&[&a]], Some(dl));
    let lines = [
        "{\"message\":\"0\"}",
        "{\"message\":\"1\"}",
        "{\"message\":\"2\"}",
    ];
    send_batch(&s, &lines).await;
    let calls = a.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].lines, [lines[2]], "only the line asked for again");
    assert_eq!(stored_lines(&store).await, [lines[1]]);
    let forwarded = METRICS
        .forwarded_events
        .with_label_values(&["ps-t", "ps-a"])
        .get();
    assert_eq!(forwarded, 2, "line 0, then line 2");
}

#[tokio::test(start_paused = true)]
async fn retries_end_at_max_retries_and_the_batch_is_counted_dropped() {
    let a = FakeBackend::new("mr-a", passive(10, 10), vec![status(503, None)]);
    let mut s = route("mr-t", &[&[&a]], None);
    s.retry.max_retries = Some(2);
    send_batch(&s, &["{\"message\":\"m\"}"]).await;
    assert_eq!(a.calls().len(), 3, "the first send and 2 retries");
    let dropped = METRICS
        .backend_dropped_events
        .with_label_values(&["mr-t", "mr-a", "retries_exhausted"])
        .get();
    assert_eq!(dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn a_tier_shares_batches_by_weight() {
    let mut heavy = FakeBackend::new("wt-heavy", passive(3, 10), vec![ok()]);
    heavy.member.weight = 3;
    let light = FakeBackend::new("wt-light", passive(3, 10), vec![ok()]);
    let s = route("wt-t", &[&[&heavy, &light]], None);
    for _ in 0..400 {
        send_batch(&s, &["{\"message\":\"m\"}"]).await;
    }
    let (h, l) = (heavy.calls().len(), light.calls().len());
    assert_eq!(h + l, 400);
    assert!(
        (240..=360).contains(&h),
        "about 3 in 4 to the heavier: {h} / {l}"
    );
}

#[tokio::test(start_paused = true)]
async fn records_refused_without_being_named_are_counted_dropped() {
    // An OTLP `partial_success`, read by the OTLP protocol.
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    use prost::Message;
    let answer = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 1,
            error_message: "too old".into(),
        }),
    }
    .encode_to_vec();
    let otlp = super::otlp::Otlp::new(&crate::config::OtlpConfig {
        endpoint: "http://otel".into(),
        headers: Default::default(),
    });
    let partial = Mutex::new(Some(otlp.read_answer(StatusCode::OK, &answer, 2).unwrap()));
    let first: Answer = Box::new(move || Ok(partial.lock().unwrap().take().unwrap_or_default()));
    let a = FakeBackend::new("up-a", passive(3, 10), vec![first]);
    let s = route("up-t", &[&[&a]], None);
    send_batch(&s, &["{\"message\":\"0\"}", "{\"message\":\"1\"}"]).await;
    assert_eq!(
        a.calls().len(),
        1,
        "nothing to send again: it did not say which"
    );
    let counter =
        |m: &prometheus::IntCounterVec, labels: &[&str]| m.with_label_values(labels).get();
    assert_eq!(
        counter(
            &METRICS.backend_dropped_events,
            &["up-t", "up-a", "partial_success"]
        ),
        1
    );
    assert_eq!(counter(&METRICS.forwarded_events, &["up-t", "up-a"]), 1);
}

#[tokio::test(start_paused = true)]
async fn a_send_that_panics_is_reported_at_once_and_lets_go_of_its_log_records() {
    let _counting = super::reap_tests::ROUTE_SEND_COUNT.lock().await;
    let count = || {
        METRICS
            .task_failures
            .with_label_values(&["route_send"])
            .get()
    };
    let bug: Answer = Box::new(|| panic!("a bug in a send"));
    let a = FakeBackend::new("pn-a", passive(3, 10), vec![bug]);
    let s = Arc::new(route("pn-t", &[&[&a]], None));
    // A log record whose lines went into this batch: the batch's hold only.
    let record = crate::wal::Progress::new(Arc::default());
    record.hold();
    record.release();
    METRICS
        .pending_events
        .with_label_values(&["pn-t", "pn-a"])
        .add(2);
    let before = count();
    let batch = super::Pending {
        body: b"{\"message\":\"0\"}\n{\"message\":\"1\"}\n".to_vec(),
        events: 2,
        holds: Vec::new(),
        progress: vec![record.clone()],
        deadline: Instant::now(),
    };
    let send = super::dispatch(&s, batch);
    while !send.is_finished() {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        count(),
        before + 1,
        "reported when it happened, not when the route next reaps its sends"
    );
    assert!(
        record.is_done(),
        "the feed moves past the record instead of stalling the tenant's log until a restart"
    );
    assert_eq!(
        METRICS
            .pending_events
            .with_label_values(&["pn-t", "pn-a"])
            .get(),
        0
    );
    // The route reaps it later: not counted twice.
    let mut sends = vec![send];
    super::reap(
        crate::telemetry::faults::Task::RouteSend,
        "pn-t",
        &mut sends,
    );
    assert_eq!(count(), before + 1);
}
