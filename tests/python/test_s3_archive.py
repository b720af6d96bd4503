"""The archive on S3: weir writes its gzip'd NDJSON objects to a real
S3-compatible server (moto's, as a process) through the S3 protocol, at
``<prefix>/<tenant>/dt=YYYY-MM-DD/hour=HH/<name>.ndjson.gz``; read back with
boto3, they hold every event sent, exactly once. When the store is down,
weir keeps every event and writes it once the store is back."""
from __future__ import annotations

import gzip
import json
import re
import time
import urllib.request
import uuid

from conftest import (AGENT_API_KEY, DEADLINE, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3WeirProcess, partition_of,
                      wait_for)


def make_logs(run: str, start: int, count: int) -> list[dict]:
    return [{
        "message": f"{run} order {i} shipped \"quoted\" ünïcødé 🚀\nsecond line",
        "ddsource": "python",
        "ddtags": "env:test,team:storage",
        "hostname": f"web-{i % 2}",
        "service": "shipping",
        "status": "info",
        "run_id": run,
        "seq": i,
        "order": {"id": f"o-{i}", "items": [{"sku": "A-1", "qty": 2}], "paid": i % 2 == 0, "note": None},
        "duration_ms": 1.5 * (i + 1),
    } for i in range(start, start + count)]


def post_logs(weir, logs: list[dict], compress: bool = False):
    """POST /api/v2/logs as an agent does; asserts the 202."""
    body = json.dumps(logs).encode()
    headers = {"Content-Type": "application/json", "DD-API-KEY": AGENT_API_KEY}
    if compress:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    req = urllib.request.Request(f"{weir.intake_url}/api/v2/logs", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=DEADLINE) as r:
        assert r.status == 202, r.read()


def send(weir, run: str, batches: list[tuple[int, int]]) -> list[dict]:
    sent = []
    for n, (start, count) in enumerate(batches):
        logs = make_logs(run, start, count)
        post_logs(weir, logs, compress=n % 2 == 1)
        sent.extend(logs)
    return sent


def assert_archive_holds(archived: list[tuple[str, dict]], sent: list[dict], run: str, window: tuple[int, int]):
    """Every sent event is archived exactly once, field for field (plus weir's
    arrival timestamp), in the partition of that timestamp."""
    mine = [(rel, e) for rel, e in archived if e.get("run_id") == run]
    seqs = sorted(e["seq"] for _, e in mine)
    assert seqs == sorted(log["seq"] for log in sent), f"archived seqs {seqs}"
    by_seq = {e["seq"]: (rel, e) for rel, e in mine}
    for log in sent:
        rel, event = by_seq[log["seq"]]
        event = dict(event)
        ts = event.pop("timestamp", None)
        assert isinstance(ts, int), f"timestamp {ts!r} is not integer milliseconds: {event}"
        # Clock-sanity window, not a latency bound.
        assert window[0] - 60_000 <= ts <= window[1] + 60_000, (ts, window)
        assert rel.startswith(f"acme/{partition_of(ts)}/"), (rel, ts)
        assert set(event.pop("ddtags").split(",")) == set(log["ddtags"].split(","))
        assert event == {k: v for k, v in log.items() if k != "ddtags"}


def events_in_s3(weir: S3WeirProcess, s3, run: str) -> int:
    return sum(1 for _, e in weir.read_s3_archive(s3) if e.get("run_id") == run)


def test_archive_objects_land_in_s3(s3_weir, s3_server):
    weir, run = s3_weir, uuid.uuid4().hex
    t0 = int(time.time() * 1000)

    # Written while weir runs, once an object's oldest event is max_object_age (1s) old.
    first = send(weir, run, [(0, 1), (1, 4), (5, 5)])
    wait_for(lambda: events_in_s3(weir, s3_server, run) >= len(first), "the first events in S3 (max_object_age)", timeout=DEADLINE * 2,
             interval=0.25, diagnostics=lambda: f"objects: {sorted(s3_server.objects())}\nweir log:\n{weir.log()}")
    wait_for(lambda: weir.metric("weir_archived_events_total", tenant="acme") == len(first), "weir to count the archived events",
             diagnostics=weir.metrics)

    # Sent just before SIGTERM: the drain writes the last object before weir exits.
    second = send(weir, run, [(10, 3), (13, 2)])
    assert weir.stop() == 0, weir.log()
    t1 = int(time.time() * 1000)

    objects = s3_server.objects()
    assert objects and all(re.fullmatch(r"archive/acme/dt=\d{4}-\d{2}-\d{2}/hour=\d{2}/[^/]+\.ndjson\.gz", k) for k in objects), sorted(objects)
    assert_archive_holds(weir.read_s3_archive(s3_server), first + second, run, (t0, t1))
    # The credentials came from the environment (${ENV} in the config) and are never logged.
    for secret in (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY):
        assert secret not in weir.log()


def test_store_down_at_first_loses_nothing(tmp_path, datadog_backend, moto_s3, s3_credentials_env):
    """weir starts while nothing answers at the S3 endpoint (connections are
    refused): it accepts events, keeps retrying the write, and once the store
    is up (and the bucket exists) writes every event; SIGTERM flushes the rest."""
    weir = S3WeirProcess(tmp_path, datadog_backend.url, moto_s3.url, shutdown_timeout="90s").start()
    try:
        run = uuid.uuid4().hex
        t0 = int(time.time() * 1000)
        sent = send(weir, run, [(0, 3), (3, 4)])
        # The write was attempted and failed: the object_store client's own retries,
        # or weir's once those are spent.
        wait_for(lambda: re.search(r"Encountered transport error|archive write failed", weir.log()), "a failed archive write",
                 diagnostics=weir.log)
        assert weir.metric("weir_archived_events_total", tenant="acme") == 0

        moto_s3.start()
        moto_s3.create_bucket()
        sent += send(weir, run, [(7, 2)])
        code = weir.stop(timeout=120)
    finally:
        weir.kill()
    assert code == 0, weir.log()
    t1 = int(time.time() * 1000)
    assert_archive_holds(weir.read_s3_archive(moto_s3), sent, run, (t0, t1))
