"""Rehydration from a real S3-compatible store (moto's server, as a process):
archive objects are put with boto3 at the layout weir writes
(``<prefix>/<tenant>/dt=YYYY-MM-DD/hour=HH/<name>.ndjson.gz``), or written by
weir itself, and ``weir rehydrate`` (the real binary, through the admin API)
sends them to a Datadog intake double that speaks the real protocol.

Checked: exactly the selected events arrive (time range on the events' own
timestamps, query; not other tenants', not dead letters, late arrivals found);
a run interrupted with Ctrl-C (SIGINT to the CLI, which cancels the job)
resumes with the command the CLI prints, with no duplicates and no gaps;
residency refuses a backend outside the tenant's region; a dry run counts and
sends nothing; the README's example works as written."""
from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import (AGENT_API_KEY, DEADLINE, REPO, S3_BUCKET, S3_PREFIX, UPSTREAM_API_KEY, WEIR_BIN, DatadogIntake,
                      S3WeirProcess, partition_of, q, run_until_teardown, wait_for)

ADMIN_TOKEN = "rehydrate-admin-token-5e6f7a8b"
HOUR = 3_600_000


class RehydrateWeir(S3WeirProcess):
    """weir archiving to S3, with an admin token and two regions: its tenant is
    pinned to ``eu`` (backend ``datadog``); ``us`` has ``datadog-us``."""

    def __init__(self, tmp_path: Path, backend_url: str, endpoint: str, us_backend_url: str, **kwargs):
        super().__init__(tmp_path, backend_url, endpoint, **kwargs)
        self.us_backend_url = us_backend_url

    def config_text(self) -> str:
        text = super().config_text()
        text, n = re.subn(r"(?m)^(admin:\n  address: .*)$", lambda m: f"{m[1]}\n  token: {q(ADMIN_TOKEN)}", text)
        assert n == 1, text
        us = f"""\
  - name: datadog-us
    type: datadog
    endpoint: {q(self.us_backend_url)}
    batch:
      max_wait: 200ms
tenants:"""
        text, n = re.subn(r"(?m)^tenants:$", lambda _: us, text)
        assert n == 1, text
        text, n = re.subn(r"(?m)^    backend: datadog$", "    region: eu", text)
        assert n == 1, text
        return text + "regions:\n  - {name: eu, tiers: [[datadog]]}\n  - {name: us, tiers: [[datadog-us]]}\n"


@pytest.fixture
def us_backend():
    intake = DatadogIntake(UPSTREAM_API_KEY).start()
    yield intake
    intake.stop()


@pytest.fixture
def rh_weir(tmp_path, datadog_backend, us_backend, s3_server, s3_credentials_env):
    s3_server.create_bucket()
    w = RehydrateWeir(tmp_path, datadog_backend.url, s3_server.url, us_backend.url)
    yield from run_until_teardown(w)


def rehydrate(weir, *args: str, **popen) -> subprocess.Popen:
    """``weir rehydrate ARGS --admin <weir's>``, the token in the environment."""
    env = dict(os.environ, WEIR_ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.Popen([str(WEIR_BIN), "rehydrate", *args, "--admin", f"127.0.0.1:{weir.admin_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def finish(p: subprocess.Popen, timeout: float = DEADLINE * 3) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def admin_get(weir, path: str) -> dict:
    req = urllib.request.Request(f"{weir.admin_url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=DEADLINE) as r:
        return json.loads(r.read())


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def put_object(s3, tenant: str, partition: str, name: str, events: list[dict], prefix: str = S3_PREFIX):
    body = gzip.compress("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events).encode())
    s3.client().put_object(Bucket=S3_BUCKET, Key=f"{prefix}/{tenant}/{partition}/{name}.ndjson.gz", Body=body)


def seed(s3, run: str, t0: int, count: int) -> list[dict]:
    """``count`` events 5 s apart from ``t0``, in objects of at most 150 per
    arrival hour (plus one event that arrived 40 minutes late, in the next
    hour's partition); and events that must never be sent: another tenant's,
    a dead letter, and ones just outside the range. Returns the events in range."""
    events = [{
        "timestamp": t0 + i * 5000,
        "message": f"order {i} shipped",
        "service": "db" if i % 3 == 0 else "web",
        "status": "error" if i % 4 == 0 else "info",
        "hostname": f"web-{i % 2}",
        "ddtags": "env:test,team:storage",
        "run_id": run,
        "seq": i,
    } for i in range(count)]
    # One that `service:web status:error` selects.
    late = events.pop(next(i for i in range(count // 2, count) if i % 4 == 0 and i % 3 != 0))
    by_partition: dict[str, list[dict]] = {}
    for e in events:
        by_partition.setdefault(partition_of(e["timestamp"]), []).append(e)
    n = 0
    for partition, evs in sorted(by_partition.items()):
        for k in range(0, len(evs), 150):
            put_object(s3, "acme", partition, f"{iso(evs[k]['timestamp']).replace(':', '')}-0000000000000001-{n:06d}", evs[k:k + 150])
            n += 1
    put_object(s3, "acme", partition_of(late["timestamp"] + 40 * 60_000), f"zz-late-{n:06d}", [late])
    outside = [dict(events[0], seq=-1, timestamp=t0 - 1), dict(events[0], seq=-2, timestamp=t0 + count * 5000 + HOUR)]
    put_object(s3, "acme", partition_of(t0), "zz-outside", outside)
    put_object(s3, "other", partition_of(t0), "zz-other", [dict(e, seq=-3) for e in events[:10]])
    put_object(s3, "dead-letter/acme", partition_of(t0), "zz-dead-datadog-400", [dict(e, seq=-4) for e in events[:10]])
    return sorted(events + [late], key=lambda e: e["seq"])


def received(backend, run: str) -> list[dict]:
    return [log for log in backend.logs if log.get("run_id") == run]


def selected(events: list[dict], start: int, end: int) -> list[dict]:
    """`service:web status:error` between ``start`` (included) and ``end`` (excluded)."""
    return [e for e in events if start <= e["timestamp"] < end and e["service"] == "web" and e["status"] == "error"]


def test_rehydrate_from_s3_exactly_the_selected_events_and_an_interrupted_run_resumes(rh_weir, s3_server, datadog_backend):
    weir, run = rh_weir, uuid.uuid4().hex
    t0 = int(time.time() * 1000) // HOUR * HOUR - 4 * HOUR + 17 * 60_000
    events = seed(s3_server, run, t0, 2400)  # 3 h 20 min of events over 4 arrival hours
    start, end = t0 + 10 * 60_000, t0 + 190 * 60_000 + 1234
    want = selected(events, start, end)
    assert 300 < len(want) < 400 and any(e["seq"] == 1204 for e in want), "the late one is in the selection"

    # 40 events/s: ~9 s in all; interrupted with Ctrl-C once some have arrived.
    p = rehydrate(weir, "--tenant", "acme", "--from", iso(start), "--to", iso(end), "--query", "service:web status:error",
                  "--rate", "40")
    wait_for(lambda: len(received(datadog_backend, run)) >= 60 or p.poll() is not None, "the first chunks at the backend",
             diagnostics=lambda: f"{datadog_backend.summary()}\n{weir.log()[-3000:]}")
    assert p.poll() is None, finish(p)
    p.send_signal(signal.SIGINT)
    code, out, err = finish(p)
    assert code == 1, (code, out, err)
    assert "cancelled after" in err and "resume with:" in err, err
    job_id = re.search(r"rehydration (rh-[0-9a-f]{16})", err)[1]
    job = admin_get(weir, f"/admin/rehydrations/{job_id}")
    assert job["state"] == "cancelled", job
    assert 0 < job["events_sent"] < len(want), job
    # Every chunk sent before the cancel was delivered, and nothing after it.
    time.sleep(1.0)
    got = received(datadog_backend, run)
    assert len(got) == job["events_sent"], (len(got), job)
    assert len({e["seq"] for e in got}) == len(got), "no duplicates so far"

    # The command the CLI printed resumes the job where it stopped.
    resume = err.split("resume with:\n", 1)[1].strip().splitlines()[0]
    argv = shlex.split(resume)
    assert argv[:2] == ["weir", "rehydrate"], resume
    args = argv[2:]
    if "--admin" in args:  # the helper gives it
        i = args.index("--admin")
        del args[i:i + 2]
    p = rehydrate(weir, *args)
    code, out, err = finish(p)
    assert code == 0, (code, out, err)
    assert "resuming after" in err and out.startswith("done: "), (out, err)

    got = received(datadog_backend, run)
    seqs = [e["seq"] for e in got]
    assert len(seqs) == len(set(seqs)), f"duplicates: {sorted(s for s in set(seqs) if seqs.count(s) > 1)}"
    assert sorted(seqs) == [e["seq"] for e in want], "exactly the selected events, none missing"
    by_seq = {e["seq"]: e for e in got}
    for e in want:
        assert by_seq[e["seq"]] == e, "sent as archived, field for field"
    job = admin_get(weir, f"/admin/rehydrations/{job_id}")
    assert job["state"] == "done" and job["events_sent"] == len(want), job
    # Every object of the tenant's partitions, never the other tenant's or the dead letter.
    assert job["objects_total"] == len(s3_server.objects(prefix=f"{S3_PREFIX}/acme/")), job
    assert weir.metric("weir_rehydrated_events_total", tenant="acme") == len(want)
    assert weir.metric("weir_rehydrations_running") == 0
    assert ADMIN_TOKEN not in weir.log()


def test_residency_refuses_a_backend_outside_the_tenants_region(rh_weir, s3_server, datadog_backend, us_backend):
    weir, run = rh_weir, uuid.uuid4().hex
    t0 = int(time.time() * 1000) // HOUR * HOUR - 2 * HOUR
    seed(s3_server, run, t0, 100)
    code, out, err = finish(rehydrate(weir, "--tenant", "acme", "--from", iso(t0), "--to", iso(t0 + HOUR), "--to-backend", "datadog-us"))
    assert code == 1 and "403" in err and "residency" in err and '"datadog"' in err, err
    code, out, err = finish(rehydrate(weir, "--tenant", "acme", "--from", iso(t0), "--to", iso(t0 + HOUR), "--to-backend", "nowhere"))
    assert code == 1 and "no backend named" in err, err
    time.sleep(0.5)
    assert received(datadog_backend, run) == [] and received(us_backend, run) == [], "nothing sent anywhere"
    # Its own region's backend by name is fine.
    code, out, err = finish(rehydrate(weir, "--tenant", "acme", "--from", iso(t0), "--to", iso(t0 + HOUR), "--to-backend", "datadog",
                                      "--query", "@seq:<10"))
    assert code == 0, err
    assert sorted(e["seq"] for e in received(datadog_backend, run)) == list(range(10))
    assert received(us_backend, run) == []


def readme_commands() -> list[str]:
    """The `weir rehydrate` lines of the README's Rehydration example."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Rehydration"):]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("weir rehydrate")]


def test_the_readme_example_dry_run_then_rehydrate(rh_weir, s3_server, datadog_backend):
    weir, run = rh_weir, uuid.uuid4().hex
    now = int(time.time() * 1000)
    events = seed(s3_server, run, now - 3 * HOUR + 5 * 60_000, 1200)  # 100 minutes, inside -3h .. -1h
    want = selected(events, now - 3 * HOUR, now - HOUR)
    dry, real = readme_commands()
    assert "--dry-run" in dry and "--dry-run" not in real, (dry, real)

    code, out, err = finish(rehydrate(weir, *shlex.split(dry)[2:]))
    assert code == 0, err
    assert out.startswith(f"dry run: {len(want)} events"), out
    time.sleep(0.5)
    assert received(datadog_backend, run) == [], "a dry run sends nothing"

    code, out, err = finish(rehydrate(weir, *shlex.split(real)[2:]))
    assert code == 0, err
    assert out.startswith(f"done: {len(want)} events"), out
    assert sorted(e["seq"] for e in received(datadog_backend, run)) == [e["seq"] for e in want]


def post_logs(weir, logs: list[dict]):
    req = urllib.request.Request(f"{weir.intake_url}/api/v2/logs", data=json.dumps(logs).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "DD-API-KEY": AGENT_API_KEY})
    with urllib.request.urlopen(req, timeout=DEADLINE) as r:
        assert r.status == 202


def test_rehydrates_what_weir_itself_archived_to_s3(rh_weir, s3_server, datadog_backend):
    """The layout weir writes is the one it reads: events sent through weir
    (delivered live once) are archived to S3 and rehydrated (once more)."""
    weir, run = rh_weir, uuid.uuid4().hex
    logs = [{"message": f"live {i}", "service": "web", "run_id": run, "seq": i} for i in range(20)]
    post_logs(weir, logs)
    wait_for(lambda: len(received(datadog_backend, run)) == 20, "live delivery")
    wait_for(lambda: sum(1 for k, body in s3_server.objects(prefix=f"{S3_PREFIX}/acme/").items()
                         if run.encode() in gzip.decompress(body)), "the archive object in S3", interval=0.25)
    code, out, err = finish(rehydrate(weir, "--tenant", "acme", "--from", "-10m", "--to", "now", "--query", f"@run_id:{run}"))
    assert code == 0, err
    assert out.startswith("done: 20 events"), out
    seqs = sorted(e["seq"] for e in received(datadog_backend, run))
    assert seqs == sorted(list(range(20)) * 2), "each event once live and once rehydrated"


def seqs_of(backend, run: str) -> list[int]:
    return [e["seq"] for e in received(backend, run)]


def test_a_job_survives_the_proxy_stopping_and_being_killed(tmp_path, datadog_backend, us_backend, s3_server, s3_credentials_env):
    """SIGTERM to the proxy mid-run: the job stops at a chunk boundary, the
    next start lists it `interrupted`, and the same command resumes it with no
    duplicate and no gap. `kill -9` mid-run: the resumed job has no gap, and
    sends again at most the chunks that were in flight (4 of 40 events here)."""
    s3_server.create_bucket()
    weir = RehydrateWeir(tmp_path, datadog_backend.url, s3_server.url, us_backend.url).start()
    try:
        run = uuid.uuid4().hex
        t0 = int(time.time() * 1000) // HOUR * HOUR - 3 * HOUR
        events = seed(s3_server, run, t0, 1800)
        web = [e["seq"] for e in selected(events, t0, t0 + 3 * HOUR)]
        args = ["--tenant", "acme", "--from", iso(t0), "--to", iso(t0 + 3 * HOUR), "--query", "service:web status:error"]

        p = rehydrate(weir, *args, "--rate", "40")
        wait_for(lambda: len(received(datadog_backend, run)) >= 60, "the first chunks")
        assert weir.stop() == 0, weir.log()
        code, out, err = finish(p)
        assert code == 1 and "resume with" in err, (code, out, err)
        before = seqs_of(datadog_backend, run)
        assert 0 < len(before) < len(web) and len(set(before)) == len(before)

        weir.start()
        jobs = admin_get(weir, "/admin/rehydrations")["rehydrations"]
        assert [j["state"] for j in jobs] == ["interrupted"], jobs
        assert jobs[0]["events_sent"] == len(before), (jobs, len(before))
        code, out, err = finish(rehydrate(weir, *args))
        assert code == 0 and f"resuming after {len(before)} events sent" in err, (code, out, err)
        after = seqs_of(datadog_backend, run)
        assert sorted(after) == web, "no duplicate, no gap across a proxy restart"

        # The db errors this time, killed for real.
        db = [e["seq"] for e in events if e["service"] == "db" and e["status"] == "error"]
        args = ["--tenant", "acme", "--from", iso(t0), "--to", iso(t0 + 3 * HOUR), "--query", "service:db status:error"]
        p = rehydrate(weir, *args, "--rate", "40")
        wait_for(lambda: len(set(seqs_of(datadog_backend, run)) & set(db)) >= 60, "the first db chunks")
        weir.kill()
        finish(p)
        weir.start()
        code, out, err = finish(rehydrate(weir, *args))
        assert code == 0, (code, out, err)
        got = [s for s in seqs_of(datadog_backend, run) if s in set(db)]
        assert sorted(set(got)) == db, "no gap after kill -9"
        assert len(got) - len(db) <= 4 * 40, f"{len(got) - len(db)} sent twice: more than the chunks in flight"
    finally:
        if weir.running:
            assert weir.stop() == 0, weir.log()
        weir.kill()
