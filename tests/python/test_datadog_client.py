"""End to end with the real ``datadog-api-client``: logs submitted to weir as
to Datadog's intake reach the Datadog backend (a test double) field for
field, under the tenant's upstream key, and land in the archive."""
from __future__ import annotations

import gzip
import json
import random
import time
import urllib.error
import urllib.request
import uuid
import zlib

import pytest
from datadog_api_client.exceptions import ForbiddenException, UnauthorizedException
from datadog_api_client.v2.model.content_encoding import ContentEncoding
from datadog_api_client.v2.model.http_log import HTTPLog
from datadog_api_client.v2.model.http_log_item import HTTPLogItem

from conftest import AGENT_API_KEY, DEADLINE, UPSTREAM_API_KEY, WeirProcess, partition_of, wait_for

TAGS = "env:prod,version:1.2"


def make_logs(run: str, start: int, count: int) -> list[dict]:
    """Log objects as an application would send them: the reserved attributes
    plus nested attributes of every JSON type."""
    logs = []
    for i in range(start, start + count):
        logs.append({
            "message": f"{run} GET /api/orders/{i} answered 200 \"quoted\" ünïcødé ✓ 🚀\nsecond line\ttab",
            "ddsource": "python",
            "ddtags": TAGS,
            "hostname": f"web-{i % 2}.example.internal",
            "service": "checkout",
            "status": "warn" if i % 2 else "info",
            "run_id": run,
            "seq": i,
            "http": {
                "method": "GET",
                "status_code": 200,
                "url": {"path": f"/api/orders/{i}", "query": {"page": i, "filters": ["paid", "open"]}},
                "headers": {"user-agent": "curl/8.5", "x-request-id": f"{run}-{i}"},
            },
            "usr": {"id": f"u-{i}", "roles": ["admin", "ops"], "active": i % 2 == 0, "manager": None},
            "duration_ms": 12.5 * (i + 1),
            "ratio": 0.1,
            "tiny": 1e-7,
            "negative": -42,
            "int_limits": [2**53 + 1, 2**63 - 1, -(2**63)],
            "items": [{"sku": "A-1", "qty": 2, "price": 9.99}, {"sku": "B-2", "qty": 1, "price": 0.5}],
            "empty_obj": {},
            "empty_list": [],
            "flag": False,
        })
    return logs


def submit(api, logs: list[dict], encoding):
    kwargs = {} if encoding is None else {"content_encoding": encoding}
    data, status, _headers = api.submit_log(body=HTTPLog([HTTPLogItem(**log) for log in logs]), **kwargs)
    return data, status


def assert_same_event(received: dict, sent: dict, window: tuple[int, int]):
    """``received`` is ``sent`` as weir forwards it: every field as sent, the
    tags as the same set, plus the arrival timestamp weir adds (in ms)."""
    received = dict(received)
    ts = received.pop("timestamp", None)
    assert isinstance(ts, int), f"timestamp {ts!r} is not integer milliseconds: {received}"
    # Clock-sanity window, not a latency bound: weir stamps the arrival time.
    assert window[0] - 60_000 <= ts <= window[1] + 60_000, (ts, window)
    got_tags, sent_tags = received.pop("ddtags", ""), sent["ddtags"]
    assert set(got_tags.split(",")) == set(sent_tags.split(",")), (got_tags, sent_tags)
    expected = {k: v for k, v in sent.items() if k != "ddtags"}
    assert received == expected


def by_seq(events: list[dict], run: str) -> dict[int, dict]:
    """The events of ``run`` by their ``seq``; fails on a duplicate, which it can
    only see in what weir has finished sending (call it once weir has stopped)."""
    mine = [e for e in events if e.get("run_id") == run]
    seqs = [e["seq"] for e in mine]
    assert len(seqs) == len(set(seqs)), f"duplicated events: {sorted(seqs)}"
    return {e["seq"]: e for e in mine}


# (how the client compresses its request, how weir compresses what it forwards)
ROUND_TRIPS = [
    pytest.param(None, {"backend_compression": "gzip"}, id="client-plain/backend-gzip"),
    pytest.param(ContentEncoding.GZIP, {"backend_compression": "gzip"}, id="client-gzip/backend-gzip"),
    pytest.param(ContentEncoding.DEFLATE, {"backend_compression": "zstd"}, id="client-deflate/backend-zstd"),
    pytest.param(ContentEncoding.GZIP, {"backend_compression": "none"}, id="client-gzip/backend-none"),
]


@pytest.mark.parametrize("encoding, weir_settings", ROUND_TRIPS)
def test_logs_arrive_intact_and_are_archived(weir, datadog_backend, logs_api, encoding, weir_settings):
    api = logs_api(weir.intake_url, AGENT_API_KEY)
    run = uuid.uuid4().hex
    sent = []
    t0 = int(time.time() * 1000)
    for start, count in [(0, 1), (1, 3), (4, 5)]:
        logs = make_logs(run, start, count)
        data, status = submit(api, logs, encoding)
        assert status == 202
        assert data == {}
        sent.extend(logs)
    t1 = int(time.time() * 1000)

    # The client really sent what it was asked to: compressed bodies, the agent's key.
    assert len(api.wire) == 3
    for request in api.wire:
        assert request["url"] == f"{weir.intake_url}/api/v2/logs"
        assert request["headers"]["DD-API-KEY"] == AGENT_API_KEY
        assert request["headers"].get("Content-Encoding") == (None if encoding is None else encoding.value)
        decode = {None: str.encode, "gzip": gzip.decompress, "deflate": zlib.decompress}[None if encoding is None else encoding.value]
        assert isinstance(json.loads(decode(request["body"])), list)

    # Delivered to the backend, field for field, under the tenant's upstream key.
    datadog_backend.wait_for_logs(len(sent), diagnostics=weir.log)
    requests = datadog_backend.requests
    assert requests and all(r.status == 202 for r in requests), datadog_backend.summary()
    expected_encoding = {"gzip": "gzip", "zstd": "zstd", "none": None}[weir_settings["backend_compression"]]
    for r in requests:
        assert r.path == "/api/v2/logs"
        assert r.api_key == UPSTREAM_API_KEY
        assert r.headers.get("content-type", "").startswith("application/json")
        assert r.headers.get("content-encoding") == expected_encoding
    # Objects are written once their oldest event is max_object_age old, before any shutdown.
    wait_for(lambda: len(weir.archived_events(strict=False)) >= len(sent), "the archive objects (max_object_age)",
             diagnostics=lambda: f"archive: {weir.archive_objects()}\n{weir.log()}")

    # SIGTERM: weir drains and exits 0; then the backend and the archive hold every event exactly once.
    assert weir.stop() == 0, weir.log()
    forwarded = by_seq(datadog_backend.logs, run)
    assert sorted(forwarded) == [log["seq"] for log in sent]
    for log in sent:
        assert_same_event(forwarded[log["seq"]], log, (t0, t1))
    archived = weir.read_archive()
    assert len(archived) == len(sent), [rel for rel, _ in archived]
    for rel, event in archived:
        assert rel.startswith(f"{weir.tenant}/{partition_of(event['timestamp'])}/"), (rel, event["timestamp"])
    in_archive = by_seq([e for _, e in archived], run)
    assert sorted(in_archive) == [log["seq"] for log in sent]
    for log in sent:
        assert_same_event(in_archive[log["seq"]], log, (t0, t1))
        # Archive and backend got the very same event (same arrival timestamp too).
        assert in_archive[log["seq"]] == forwarded[log["seq"]]
    # Nothing more reached the backend while draining.
    assert len(datadog_backend.logs) == len(sent)


def _accepted_barrier(weir, datadog_backend, logs_api) -> dict:
    """Sends one valid log and waits for it at the backend: whatever was refused
    before it had every chance to (wrongly) arrive first."""
    barrier = {"message": f"barrier {uuid.uuid4().hex}", "service": "barrier", "ddtags": "kind:barrier"}
    data, status = submit(logs_api(weir.intake_url, AGENT_API_KEY), [barrier], None)
    assert status == 202
    wait_for(lambda: any(l.get("message") == barrier["message"] for l in datadog_backend.logs), "the barrier log", diagnostics=weir.log)
    return barrier


def assert_error_body(exc, status: int):
    assert exc.status == status
    assert isinstance(exc.body, dict), f"error body is not JSON: {exc.body!r}"
    errors = exc.body.get("errors")
    assert isinstance(errors, list) and errors and all(isinstance(e, str) and e for e in errors), exc.body
    assert exc.headers and exc.headers.get("Content-Type", exc.headers.get("content-type", "")).startswith("application/json")


@pytest.mark.parametrize("bad_key", [
    pytest.param("not-a-tenant-key", id="unknown-key"),
    pytest.param(AGENT_API_KEY + "x", id="key-with-suffix"),
    pytest.param(UPSTREAM_API_KEY, id="upstream-key-is-no-agent-key"),
])
@pytest.mark.parametrize("encoding", [None, ContentEncoding.GZIP], ids=["plain", "gzip"])
def test_wrong_api_key_is_forbidden(weir, datadog_backend, logs_api, bad_key, encoding):
    api = logs_api(weir.intake_url, bad_key)
    with pytest.raises(ForbiddenException) as info:
        submit(api, [{"message": "must not pass", "service": "intruder", "ddtags": TAGS}], encoding)
    assert_error_body(info.value, 403)

    barrier = _accepted_barrier(weir, datadog_backend, logs_api)
    assert [l["message"] for l in datadog_backend.logs] == [barrier["message"]]
    assert weir.stop() == 0, weir.log()
    assert [e["message"] for e in weir.archived_events()] == [barrier["message"]]


def test_missing_api_key_is_unauthorized(weir, datadog_backend, logs_api):
    api = logs_api(weir.intake_url, None)
    with pytest.raises(UnauthorizedException) as info:
        submit(api, [{"message": "no key", "service": "anonymous"}], ContentEncoding.GZIP)
    assert_error_body(info.value, 401)
    # A blank key is no key either (the client refuses to send one, so plain HTTP here).
    req = urllib.request.Request(f"{weir.intake_url}/api/v2/logs", data=b'[{"message":"blank key"}]', method="POST",
                                 headers={"Content-Type": "application/json", "DD-API-KEY": "  "})
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(req, timeout=DEADLINE)
    assert http_error.value.code == 401
    assert json.loads(http_error.value.read())["errors"]

    barrier = _accepted_barrier(weir, datadog_backend, logs_api)
    assert [l["message"] for l in datadog_backend.logs] == [barrier["message"]]
    assert weir.stop() == 0, weir.log()
    assert [e["message"] for e in weir.archived_events()] == [barrier["message"]]


def test_backend_gets_the_tenants_upstream_key_never_the_agents(weir, datadog_backend, logs_api):
    api = logs_api(weir.intake_url, AGENT_API_KEY)
    run = uuid.uuid4().hex
    sent = make_logs(run, 0, 4)
    for encoding in (None, ContentEncoding.GZIP):
        for log in sent[:2] if encoding is None else sent[2:]:
            assert submit(api, [log], encoding)[1] == 202
    datadog_backend.wait_for_logs(len(sent), diagnostics=weir.log)
    metrics = weir.metrics()
    assert weir.stop() == 0, weir.log()

    requests = datadog_backend.requests
    assert requests, "the backend received nothing"
    for r in requests:
        assert r.api_key == UPSTREAM_API_KEY, datadog_backend.summary()
        assert r.status == 202, datadog_backend.summary()
        for name, value in r.headers.items():
            assert AGENT_API_KEY not in value, f"the agent's key leaked upstream in header {name}"
    assert all(AGENT_API_KEY not in str(log) for log in datadog_backend.logs)
    assert len(by_seq(datadog_backend.logs, run)) == len(sent)
    # Neither key is written to weir's own log (at debug level) or its metrics.
    log = weir.log()
    for key in (AGENT_API_KEY, UPSTREAM_API_KEY):
        assert key not in log and key not in metrics


def test_wrong_upstream_key_is_refused_by_backend_not_retried(tmp_path, datadog_backend, logs_api):
    """A tenant whose upstream key the backend refuses (403): weir sends that
    key (not the agent's), does not retry the refused batch but dead-letters it to
    the archive, still archives the events, and shuts down cleanly."""
    w = WeirProcess(tmp_path, datadog_backend.url, upstream_api_key="revoked-upstream-key").start()
    try:
        run = uuid.uuid4().hex
        sent = make_logs(run, 0, 2)
        assert submit(logs_api(w.intake_url, AGENT_API_KEY), sent, ContentEncoding.GZIP)[1] == 202
        wait_for(lambda: datadog_backend.requests, "a request at the backend", diagnostics=w.log)
        wait_for(lambda: w.metric("weir_dead_lettered_events_total", default=0, tenant="acme", backend="datadog", status="403") == len(sent),
                 "weir to dead-letter the refused batch", diagnostics=lambda: w.metrics() + w.log())
        assert w.metric("weir_backend_retries_total", backend="datadog") == 0
    finally:
        code = w.stop()
        w.kill()
    assert code == 0, w.log()
    assert all(r.status == 403 and r.api_key == "revoked-upstream-key" for r in datadog_backend.requests), datadog_backend.summary()
    assert datadog_backend.logs == []
    assert sorted(by_seq(w.archived_events(), run)) == [0, 1]
    letters = w.dead_letters()
    assert sorted(by_seq([e for _, e in letters], run)) == [0, 1]
    assert all(path.startswith("acme/dt=") and path.endswith("-datadog-403.ndjson.gz") for path, _ in letters), letters


# Doubles that Rust's serde_json parsed one ULP off before weir enabled its
# `float_roundtrip` feature (e.g. 449.49106478873813 -> 449.4910647887382); plus a
# deterministic spread of ordinary measurements (latencies, ratios, coordinates).
FLOATS = [449.49106478873813, 945.2706955539223, 21.489705265908874, 0.1, 0.30000000000000004, 12.5, 1e-7]
_rng = random.Random(7)
FLOATS += [_rng.uniform(0, 1000) for _ in range(200)] + [_rng.uniform(-180, 180) for _ in range(100)]


def test_float_attributes_survive_exactly(weir, datadog_backend, logs_api):
    api = logs_api(weir.intake_url, AGENT_API_KEY)
    log = {"message": f"floats {uuid.uuid4().hex}", "service": "metrics", "latencies_ms": FLOATS, "nested": {"lat": FLOATS[0], "lon": FLOATS[1]}}
    assert submit(api, [log], ContentEncoding.GZIP)[1] == 202
    datadog_backend.wait_for_logs(1, diagnostics=weir.log)
    assert weir.stop() == 0, weir.log()
    [forwarded] = datadog_backend.logs
    [archived] = weir.archived_events()
    for event in (forwarded, archived):
        assert event["nested"] == log["nested"]
        wrong = [(sent, got) for sent, got in zip(log["latencies_ms"], event["latencies_ms"]) if sent != got]
        assert wrong == [], f"{len(wrong)} of {len(FLOATS)} doubles altered, e.g. {wrong[:3]}"


def test_ddtags_query_parameter_tags_every_log(weir, datadog_backend, logs_api):
    """``submit_log(ddtags=...)`` sends tags in the query string; they join each log's own tags."""
    api = logs_api(weir.intake_url, AGENT_API_KEY)
    logs = [{"message": f"query tags {i} {uuid.uuid4().hex}", "service": "qt", "ddtags": "own:tag"} for i in range(2)]
    _data, status, _h = api.submit_log(body=HTTPLog([HTTPLogItem(**log) for log in logs]), ddtags="team:core,env:qa")
    assert status == 202
    got = datadog_backend.wait_for_logs(2, diagnostics=weir.log)
    for event in got:
        assert set(event["ddtags"].split(",")) == {"own:tag", "team:core", "env:qa"}, event


def test_the_largest_request_the_api_documents_is_accepted_whole(weir, datadog_backend, logs_api):
    """Datadog's logs API takes up to 1,000 entries and 5 MB uncompressed per request; the
    client library sends what it is given in one request. All of it is taken and delivered."""
    api = logs_api(weir.intake_url, AGENT_API_KEY)
    run = uuid.uuid4().hex
    filler = "x" * 4_800
    logs = [{"message": f"big {i} {filler}", "service": "bulk", "ddsource": "python", "run_id": run, "seq": i}
            for i in range(1000)]
    assert submit(api, logs, ContentEncoding.GZIP)[1] == 202
    datadog_backend.wait_for_logs(1000, diagnostics=weir.log)
    assert weir.stop() == 0, weir.log()
    assert sorted(by_seq(datadog_backend.logs, run)) == list(range(1000))
