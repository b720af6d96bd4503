"""Disaster recovery between an archive's stores (``archive_stores`` and
``archive.stores``): objects go to the first store that is up; when it fails
``failover.after_failures`` writes in a row they go to the next; after
``failover.retry_after`` one object tries it again and, if it takes it, objects
return to it.

The primary is GCS (gcp-storage-emulator behind the JWT-checking double), the
second store Azure (Azurite); see cloud_emulators.py. While agents send events
without pause, the primary's emulator is killed with SIGKILL: objects land in
Azure; it is started again on the same port and the same disk: objects return to
it. After SIGTERM, the two stores, listed with their own SDKs, hold every event
weir acknowledged exactly once, each object in one store only.

The primary is the GCS emulator, not Azurite, because it is the one a kill -9
cannot make lose what it acknowledged: it writes each object and its metadata
before answering, while Azurite (on disk) saves its metadata every 5 s, so a kill
would lose blobs weir was told were written, and the count would fail for a
reason that is not weir's."""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import pytest

from cloud_emulators import ARCHIVE_CONTAINER, ARCHIVE_PREFIX, Azurite, GcsAuthDouble, GcsEmulator, ObjectStoreWeirProcess, azure_store_config, gcs_store_config
from conftest import AGENT_API_KEY, DEADLINE, http_get, partition_of, q, run_until_teardown, wait_for
from test_rehydrate import ADMIN_TOKEN, HOUR, admin_get, finish, iso, received, rehydrate
from test_s3_archive import make_logs

PRIMARY, DR = "primary", "dr"
STORE_SERIES = ("weir_archive_store_up", "weir_archive_store_objects_total", "weir_archive_store_bytes_total",
                "weir_archive_store_failovers_total", "weir_archive_store_errors_total", "weir_archive_store_oldest_unwritten_seconds")


class DrWeirProcess(ObjectStoreWeirProcess):
    """weir whose archive is ``stores: [primary, dr]``: GCS at ``gcs_endpoint``, then
    Azurite; with test_rehydrate's admin token (the rehydration API needs one)."""

    def __init__(self, tmp_path: Path, backend_url: str, gcs_endpoint: str, azurite: Azurite, **kwargs):
        super().__init__(tmp_path, backend_url, prefix=ARCHIVE_PREFIX, max_object_age="500ms", **kwargs)
        self.gcs_endpoint = gcs_endpoint
        self.azurite = azurite

    def config_text(self) -> str:
        text, n = re.subn(r"(?m)^(admin:\n  address: .*)$", lambda m: f"{m[1]}\n  token: {q(ADMIN_TOKEN)}", super().config_text())
        assert n == 1, text
        return text

    def archive_store_config(self) -> str:
        return f"""\
  stores: [{PRIMARY}, {DR}]
  failover:
    after_failures: 2
    retry_after: 2s
"""

    def top_level_config(self) -> str:
        return f"""\
archive_stores:
  - name: {PRIMARY}
    store:
{gcs_store_config(self.gcs_endpoint, indent="      ")}\
  - name: {DR}
    store:
{azure_store_config(self.azurite, indent="      ")}\
"""

    def store_metric(self, name: str, store: str) -> float:
        return self.metric(name, store=store)

    def readyz_stores(self) -> dict[str, dict]:
        status, body = http_get(f"{self.admin_url}/readyz")
        report = json.loads(body)
        assert "archive_stores" in report, f"/readyz ({status}) has no archive_stores: {report}"
        return {s["name"]: s for s in report["archive_stores"]}


class Agent(threading.Thread):
    """Posts batches of events to weir without pause until stopped (or a bound is
    reached), keeping each event's seq by what weir answered: 202 (acknowledged),
    another status (refused whole), or no answer (unknown)."""

    def __init__(self, weir, run: str, batch: int = 5, max_batches: int = 20_000):
        super().__init__(name="agent", daemon=True)
        self.weir, self.run_id, self.batch, self.max_batches = weir, run, batch, max_batches
        self.stopped = threading.Event()
        self.acked: list[int] = []
        self.refused: list[int] = []
        self.unknown: list[int] = []
        self.errors: list[str] = []

    def run(self):
        seq = 0
        for _ in range(self.max_batches):
            if self.stopped.is_set():
                return
            logs = make_logs(self.run_id, seq, self.batch)
            seqs = [log["seq"] for log in logs]
            seq += self.batch
            req = urllib.request.Request(f"{self.weir.intake_url}/api/v2/logs", data=json.dumps(logs).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "DD-API-KEY": AGENT_API_KEY})
            try:
                with urllib.request.urlopen(req, timeout=DEADLINE) as r:
                    (self.acked if r.status == 202 else self.refused).extend(seqs)
            except urllib.error.HTTPError as e:
                self.refused.extend(seqs)
                self.errors.append(f"{e.code} {e.read()[:200]!r}")
            except OSError as e:
                self.unknown.extend(seqs)
                self.errors.append(repr(e))
            time.sleep(0.02)

    def stop(self):
        self.stopped.set()
        self.join(timeout=DEADLINE * 2)
        assert not self.is_alive(), "the agent thread did not stop"


@pytest.fixture
def dr_stores(tmp_path):
    """The primary (GCS emulator on disk, behind the double, trusting the service
    account whose key weir has) and the DR store (Azurite, in memory)."""
    from cloud_emulators import ServiceAccount

    gcs = GcsEmulator(tmp_path)
    azurite = Azurite(tmp_path)
    sa = ServiceAccount.generate()
    double = None
    try:
        gcs.start()
        azurite.start()
        azurite.create_container()
        double = GcsAuthDouble(gcs.url, [sa]).start()
        yield gcs, double, azurite, sa
    finally:
        if double is not None:
            double.stop()
        gcs.stop()
        azurite.stop()


@pytest.fixture
def dr_weir(tmp_path, datadog_backend, dr_stores, monkeypatch):
    from cloud_emulators import AZURE_KEY_ENV, GCS_SA_ENV

    gcs, double, azurite, sa = dr_stores
    monkeypatch.setenv(GCS_SA_ENV, sa.json_text())
    monkeypatch.setenv(AZURE_KEY_ENV, azurite.key)
    w = DrWeirProcess(tmp_path, datadog_backend.url, double.url, azurite)
    yield from run_until_teardown(w)


def diagnostics_of(weir: DrWeirProcess, stores) -> Callable[[], str]:
    gcs, double, azurite, _ = stores
    return lambda: (f"metrics:\n{weir.metrics()}\n/readyz: {http_get(f'{weir.admin_url}/readyz')[1][:3000]!r}\n"
                    f"double:\n{double.summary()}\nweir log:\n{weir.log()}\ngcs emulator log:\n{gcs.log()}")


def objects_in(weir: DrWeirProcess, store: str) -> float:
    return weir.store_metric("weir_archive_store_objects_total", store)


def up(weir: DrWeirProcess, store: str) -> float:
    return weir.store_metric("weir_archive_store_up", store)


def assert_each_acknowledged_event_once(weir: DrWeirProcess, agent: Agent, run: str, in_primary: dict[str, bytes], in_dr: dict[str, bytes]):
    """Every event weir acknowledged is in exactly one object, of one store; no
    object is in both; nothing else is there."""
    both = set(in_primary) & set(in_dr)
    assert not both, f"objects in both stores: {sorted(both)}"
    archived = weir.archive_from(in_primary) + weir.archive_from(in_dr)
    seqs = Counter(e["seq"] for _, e in archived if e.get("run_id") == run)
    assert agent.acked, agent.errors
    missing = sorted(set(agent.acked) - set(seqs))
    twice = sorted(s for s, n in seqs.items() if n > 1)
    assert not missing, f"{len(missing)} acknowledged events in no store: {missing[:50]}"
    assert not twice, f"{len(twice)} events archived more than once: {twice[:50]}"
    assert not set(agent.refused) & set(seqs), "events of refused requests were archived"
    assert set(seqs) <= set(agent.acked) | set(agent.unknown), "archived events that were never sent"
    assert all(e.get("run_id") == run for _, e in archived), "events of another run in the stores"
    print(f"acknowledged {len(agent.acked)} events ({len(agent.refused)} refused, {len(agent.unknown)} unanswered); "
          f"objects: {len(in_primary)} in the primary, {len(in_dr)} in the DR store")


def test_objects_fail_over_to_the_next_store_and_return(dr_weir, dr_stores):
    weir = dr_weir
    gcs, double, azurite, _ = dr_stores
    run = uuid.uuid4().hex
    diagnostics = diagnostics_of(weir, dr_stores)

    # Both stores are known from the start, by name, with every series.
    for name in STORE_SERIES:
        for store in (PRIMARY, DR):
            weir.store_metric(name, store)
    assert up(weir, PRIMARY) == 1 and up(weir, DR) == 1
    stores = weir.readyz_stores()
    assert set(stores) == {PRIMARY, DR}, stores
    for s in stores.values():
        assert set(s) >= {"name", "up", "objects", "bytes", "failovers", "oldest_unwritten_age_ms", "last_error"}, s
        assert s["up"] is True, stores

    agent = Agent(weir, run)
    agent.start()
    try:
        # 1. While the primary is up, objects go to it alone.
        wait_for(lambda: objects_in(weir, PRIMARY) >= 2, "objects in the primary", diagnostics=diagnostics)
        assert objects_in(weir, DR) == 0 and up(weir, PRIMARY) == 1, diagnostics()

        # 2. The primary's emulator is killed mid-load: objects go to the next store.
        primary_before_kill = objects_in(weir, PRIMARY)
        killed_at = time.time()
        gcs.kill()
        wait_for(lambda: up(weir, PRIMARY) == 0, "the primary to be down", diagnostics=diagnostics)
        wait_for(lambda: objects_in(weir, DR) >= 2, "objects in the DR store", diagnostics=diagnostics)
        stores = weir.readyz_stores()
        assert stores[PRIMARY]["up"] is False and stores[PRIMARY]["failovers"] >= 1, stores
        assert stores[PRIMARY]["last_error"], stores
        assert stores[DR]["up"] is True and stores[DR]["objects"] >= 2, stores
        assert weir.store_metric("weir_archive_store_failovers_total", PRIMARY) >= 1
        assert weir.store_metric("weir_archive_store_errors_total", PRIMARY) >= 2
        in_dr = azurite.blobs()
        assert len(in_dr) >= 2, sorted(in_dr)
        # Written after the kill (Azurite's times are whole seconds).
        assert all(t.timestamp() >= int(killed_at) - 1 for t in in_dr.values()), (killed_at, in_dr)

        # 3. Started again (same port, same disk): after retry_after, objects return to it.
        primary_at_return = objects_in(weir, PRIMARY)
        back_at = time.time()
        gcs.start()
        wait_for(lambda: up(weir, PRIMARY) == 1 and objects_in(weir, PRIMARY) >= primary_at_return + 2, "objects back in the primary",
                 diagnostics=diagnostics)
        # Once back, objects no longer go to the DR store (at most one was on its way).
        dr_when_back = objects_in(weir, DR)
        wait_for(lambda: objects_in(weir, PRIMARY) >= primary_at_return + 4, "more objects in the primary", diagnostics=diagnostics)
        assert objects_in(weir, DR) <= dr_when_back + 1, diagnostics()
        stores = weir.readyz_stores()
        assert stores[PRIMARY]["up"] is True and stores[DR]["up"] is True, stores
        written_by_weir = {PRIMARY: objects_in(weir, PRIMARY), DR: objects_in(weir, DR)}
    finally:
        agent.stop()
    assert weir.stop() == 0, weir.log()

    in_primary, in_dr = gcs.objects(), azurite.objects()
    primary_times = gcs.blobs()
    assert sum(1 for t in primary_times.values() if t.timestamp() < killed_at) >= primary_before_kill, \
        "objects the primary took before it was killed are missing"
    assert sum(1 for t in primary_times.values() if t.timestamp() >= back_at) >= 2, "no object in the primary after its return"
    assert len(in_primary) >= written_by_weir[PRIMARY] and len(in_dr) >= written_by_weir[DR], (written_by_weir, len(in_primary), len(in_dr))
    assert_each_acknowledged_event_once(weir, agent, run, in_primary, in_dr)


def test_a_write_the_primary_took_but_failed_is_not_left_in_both_stores(dr_weir, dr_stores):
    """The primary keeps the objects it is sent but its answers are lost (503):
    each failed write left a copy there, and the same object went to the DR store.
    Once the primary takes writes again, weir deletes those copies: in the end
    each object is in one store, and each event archived once."""
    weir = dr_weir
    gcs, double, azurite, _ = dr_stores
    run = uuid.uuid4().hex
    diagnostics = diagnostics_of(weir, dr_stores)

    agent = Agent(weir, run)
    agent.start()
    try:
        wait_for(lambda: objects_in(weir, PRIMARY) >= 1, "objects in the primary", diagnostics=diagnostics)
        double.lose_put_answers = True
        wait_for(lambda: up(weir, PRIMARY) == 0 and objects_in(weir, DR) >= 2, "the primary down, objects in the DR store",
                 diagnostics=diagnostics)
        # The copies the failed writes left, before weir may clean them up.
        copies = set(gcs.blobs()) & set(azurite.blobs())
        assert copies, f"no failed write left a copy in the primary:\n{diagnostics()}"
        double.lose_put_answers = False
        primary_at_return = objects_in(weir, PRIMARY)
        wait_for(lambda: up(weir, PRIMARY) == 1 and objects_in(weir, PRIMARY) >= primary_at_return + 2, "objects back in the primary",
                 diagnostics=diagnostics)
        wait_for(lambda: not set(gcs.blobs()) & set(azurite.blobs()), "weir to delete the copies in the primary",
                 diagnostics=lambda: f"in both stores: {sorted(set(gcs.blobs()) & set(azurite.blobs()))}\n{diagnostics()}")
    finally:
        agent.stop()
    assert weir.stop() == 0, weir.log()
    deleted = {r.path for r in double.requests if r.method == "DELETE" and r.status == 204}
    assert len(deleted) >= len(copies), (copies, double.summary())
    assert_each_acknowledged_event_once(weir, agent, run, gcs.objects(), azurite.objects())


def spread_over_both_stores(weir: DrWeirProcess, gcs: GcsEmulator, diagnostics: Callable[[], str]):
    """While an agent sends: objects in the primary; its emulator killed, objects in
    the DR store; started again, objects in the primary again."""
    wait_for(lambda: objects_in(weir, PRIMARY) >= 2, "objects in the primary", diagnostics=diagnostics)
    gcs.kill()
    wait_for(lambda: up(weir, PRIMARY) == 0 and objects_in(weir, DR) >= 2, "the primary down, objects in the DR store",
             diagnostics=diagnostics)
    primary_at_return = objects_in(weir, PRIMARY)
    gcs.start()
    wait_for(lambda: up(weir, PRIMARY) == 1 and objects_in(weir, PRIMARY) >= primary_at_return + 2, "objects back in the primary",
             diagnostics=diagnostics)


def hours_listed(tenant: str, from_ms: int, to_ms: int, now_ms: int) -> set[str]:
    """``<tenant>/dt=../hour=..`` of the hours a job lists (README, Rehydration): from
    an hour before ``from`` to the late arrival (1 h) after ``to``, never past now."""
    first, last = (from_ms - HOUR) // HOUR * HOUR, min(to_ms - 1 + HOUR, now_ms)
    return {f"{tenant}/{partition_of(t)}" for t in range(first, last + 1, HOUR)}


def in_hours(names, hours: set[str]) -> set[str]:
    """The object names (``<prefix>/<tenant>/dt=../hour=../<name>``) of those hours."""
    return {n for n in names if "/".join(n.split("/")[1:4]) in hours}


def test_a_rehydration_reads_the_objects_of_both_stores(dr_weir, dr_stores, datadog_backend):
    """Objects spread over both stores by a failover and a return; weir still
    running, a rehydration of the run's time range into the tenant's route lists
    the hours in both stores and sends every acknowledged event once more: once
    live, once rehydrated."""
    weir = dr_weir
    gcs, double, azurite, _ = dr_stores
    run = uuid.uuid4().hex
    diagnostics = diagnostics_of(weir, dr_stores)

    from_ms = int(time.time() * 1000) - 1000
    agent = Agent(weir, run)
    agent.start()
    try:
        spread_over_both_stores(weir, gcs, diagnostics)
    finally:
        agent.stop()
    assert agent.acked, agent.errors
    # Every acknowledged event delivered live, and written to a store (the open object
    # is written after max_object_age).
    wait_for(lambda: set(agent.acked) <= {e["seq"] for e in received(datadog_backend, run)}, "every acknowledged event delivered live",
             diagnostics=lambda: f"backend: {datadog_backend.summary()[-3000:]}\n{diagnostics()}")
    wait_for(lambda: weir.metric("weir_archived_events_total", tenant=weir.tenant) >= len(agent.acked),
             "every acknowledged event written to a store", diagnostics=diagnostics)
    # A write the kill cut short may have left a copy in the primary: weir deletes it.
    wait_for(lambda: not set(gcs.blobs()) & set(azurite.blobs()), "no object in both stores",
             diagnostics=lambda: f"in both stores: {sorted(set(gcs.blobs()) & set(azurite.blobs()))}\n{diagnostics()}")
    in_primary, in_dr = gcs.objects(), azurite.objects()
    assert_each_acknowledged_event_once(weir, agent, run, in_primary, in_dr)
    assert len(in_primary) == objects_in(weir, PRIMARY) and len(in_dr) == objects_in(weir, DR), \
        (len(in_primary), len(in_dr), diagnostics())
    archived = Counter(e["seq"] for _, e in weir.archive_from(in_primary) + weir.archive_from(in_dr))
    from_primary = {e["seq"] for _, e in weir.archive_from(in_primary)}
    from_dr = {e["seq"] for _, e in weir.archive_from(in_dr)}
    assert from_primary and from_dr, (len(from_primary), len(from_dr))

    live = len(datadog_backend.logs)
    to_ms = int(time.time() * 1000)
    code, out, err = finish(rehydrate(weir, "--tenant", weir.tenant, "--from", iso(from_ms), "--to", iso(to_ms)))
    assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}\n{diagnostics()}"
    job_id = re.search(r"rehydration (rh-[0-9a-f]{16})", err)[1]
    job = admin_get(weir, f"/admin/rehydrations/{job_id}")
    now_ms = int(time.time() * 1000)

    # The job listed the hours in both stores: every object there, each read.
    listed = in_hours(set(in_primary) | set(in_dr), hours_listed(weir.tenant, from_ms, to_ms, now_ms))
    assert listed == set(in_primary) | set(in_dr), "the run's objects are all in the hours the job lists"
    assert job["state"] == "done" and job["error"] is None, job
    assert job["objects_total"] == len(in_primary) + len(in_dr), (job, len(in_primary), len(in_dr))
    assert job["objects_done"] == job["objects_total"], job
    assert job["events_sent"] == sum(archived.values()), (job, sum(archived.values()))
    assert out.startswith(f"done: {sum(archived.values())} events"), out

    # What arrived after the live delivery is the rehydration: each archived event
    # once, those of the primary's objects and of the DR store's alike.
    rehydrated = Counter(e["seq"] for e in datadog_backend.logs[live:] if e.get("run_id") == run)
    assert len(datadog_backend.logs) - live == sum(rehydrated.values()), "nothing but the run's events"
    twice = sorted(s for s, n in rehydrated.items() if n > 1)
    assert not twice, f"{len(twice)} events rehydrated more than once: {twice[:50]}"
    missing = sorted(set(agent.acked) - set(rehydrated))
    assert not missing, f"{len(missing)} acknowledged events not rehydrated: {missing[:50]}"
    assert rehydrated == archived, "exactly the archived events"
    assert from_primary <= set(rehydrated) and from_dr <= set(rehydrated)
    everything = Counter(e["seq"] for e in received(datadog_backend, run))
    assert all(everything[s] == 2 for s in agent.acked), \
        f"not once live and once rehydrated: {sorted((s, everything[s]) for s in agent.acked if everything[s] != 2)[:50]}"
    # The primary's objects were read from the primary (through the double).
    got_from_primary = {unquote(r.path.split("?")[0]) for r in double.requests if r.method == "GET" and r.status == 200}
    assert {f"/{ARCHIVE_CONTAINER}/{name}" for name in in_primary} <= got_from_primary, double.summary()
    print(f"rehydrated {sum(rehydrated.values())} events from {len(in_primary)} objects in the primary and {len(in_dr)} in the DR store")
