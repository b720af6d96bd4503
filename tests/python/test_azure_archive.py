"""The archive on Azure Blob Storage: weir writes its gzip'd NDJSON objects to
Azurite (Microsoft's emulator, as a process) through the Blob REST API with
SharedKey signatures that Azurite checks, at
``<prefix>/<tenant>/dt=YYYY-MM-DD/hour=HH/<name>.ndjson.gz``; read back with
azure-storage-blob, they hold every event sent, exactly once. A wrong key is
refused by the store, and weir says so without showing either key."""
from __future__ import annotations

import base64
import re
import secrets
import time
import uuid

from cloud_emulators import ARCHIVE_CONTAINER, AZURE_KEY_ENV, AzureWeirProcess
from conftest import DEADLINE, wait_for
from test_s3_archive import assert_archive_holds, send


def events_in_azure(weir: AzureWeirProcess, run: str) -> int:
    return sum(1 for _, e in weir.read_azure_archive() if e.get("run_id") == run)


def test_archive_objects_land_in_azure(azure_weir, azurite):
    weir, run = azure_weir, uuid.uuid4().hex
    t0 = int(time.time() * 1000)

    # Written while weir runs, once an object's oldest event is max_object_age (1s) old.
    first = send(weir, run, [(0, 1), (1, 4), (5, 5)])
    wait_for(lambda: events_in_azure(weir, run) >= len(first), "the first events in Azurite (max_object_age)", timeout=DEADLINE * 2,
             interval=0.25, diagnostics=lambda: f"blobs: {sorted(azurite.blobs())}\nweir log:\n{weir.log()}\nazurite log:\n{azurite.log()}")
    wait_for(lambda: weir.metric("weir_archived_events_total", tenant="acme") == len(first), "weir to count the archived events",
             diagnostics=weir.metrics)

    # Sent just before SIGTERM: the drain writes the last object before weir exits.
    second = send(weir, run, [(10, 3), (13, 2)])
    assert weir.stop() == 0, weir.log()
    t1 = int(time.time() * 1000)

    blobs = azurite.blobs()
    assert blobs and all(re.fullmatch(r"archive/acme/dt=\d{4}-\d{2}-\d{2}/hour=\d{2}/[^/]+\.ndjson\.gz", k) for k in blobs), sorted(blobs)
    assert_archive_holds(weir.read_azure_archive(), first + second, run, (t0, t1))
    # The key came from the environment (${ENV} in the config) and is never logged.
    assert azurite.key not in weir.log()


def test_wrong_key_is_refused_and_not_shown(tmp_path, datadog_backend, azurite, monkeypatch):
    """A wrong account key (valid base64, so weir starts): Azurite refuses every
    write (403, the signature does not match); weir logs the store's refusal and
    shows neither the wrong key nor the right one, in its log or its metrics."""
    wrong_key = base64.b64encode(secrets.token_bytes(64)).decode()
    monkeypatch.setenv(AZURE_KEY_ENV, wrong_key)
    weir = AzureWeirProcess(tmp_path, datadog_backend.url, azurite, shutdown_timeout="2s").start()
    try:
        send(weir, uuid.uuid4().hex, [(0, 3)])
        # One log record (the store's XML answer spans lines), up to its retry_in field.
        failed = wait_for(lambda: re.search(r"archive write failed.*?retry_in=", weir.log(), re.S), "a refused archive write",
                          diagnostics=lambda: f"weir log:\n{weir.log()}\nazurite log:\n{azurite.log()}")
        record = failed[0]
        assert "403 Forbidden" in record and "<Code>AuthorizationFailure</Code>" in record, record
        assert f"azure://{azurite.account}/{ARCHIVE_CONTAINER}/archive" in record, record
        assert weir.metric("weir_archived_events_total", tenant="acme") == 0
        metrics = weir.metrics()
    finally:
        code = weir.stop()
        weir.kill()
    # Events the store would not take are kept in the disk buffer: SIGTERM still exits 0.
    assert code == 0, weir.log()
    assert azurite.blobs() == {}, f"a blob was written with a wrong key: {sorted(azurite.blobs())}"
    for key in (wrong_key, azurite.key):
        assert key not in weir.log(), "an account key is in weir's log"
        assert key not in metrics, "an account key is in weir's metrics"
    # Nor any recognisable part of one (a key's base64 could be cut or re-encoded).
    for key in (wrong_key, azurite.key):
        assert key[8:40] not in weir.log() and base64.b64decode(key).hex()[:32] not in weir.log()
