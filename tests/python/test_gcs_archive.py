"""The archive on Google Cloud Storage: weir writes its gzip'd NDJSON objects
through object_store's GCS client (XML API, a service account's self-signed JWT
as bearer token) to a GCS emulator behind a double that authenticates the token
as GCS does (cloud_emulators.py), at
``<prefix>/<tenant>/dt=YYYY-MM-DD/hour=HH/<name>.ndjson.gz``; read back with
google-cloud-storage, they hold every event sent, exactly once. A token signed
with the wrong key is refused, a key that is not one is refused at start, and
weir shows no key."""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest

from cloud_emulators import ARCHIVE_CONTAINER, GCS_SA_ENV, GcsWeirProcess, ServiceAccount
from conftest import DEADLINE, WEIR_BIN, free_port_number, wait_for
from test_s3_archive import assert_archive_holds, send


def events_in_gcs(weir: GcsWeirProcess, emulator, run: str) -> int:
    return sum(1 for _, e in weir.read_gcs_archive(emulator) if e.get("run_id") == run)


def assert_no_secret(text: str, where: str, *accounts: ServiceAccount, tokens: list[str] = ()):
    for sa in accounts:
        for fragment in sa.secret_fragments():
            assert fragment not in text, f"a line of a service account's private key is in {where}"
    for token in tokens:
        assert token not in text, f"a bearer token weir sent is in {where}"
        assert token.split(".")[2][:40] not in text, f"a bearer token's signature is in {where}"


def test_archive_objects_land_in_gcs(gcs_weir, gcs_emulator, gcs_double, service_account):
    """The key given as text (``service_account_key: ${ENV}``)."""
    weir, run = gcs_weir, uuid.uuid4().hex
    t0 = int(time.time() * 1000)

    first = send(weir, run, [(0, 1), (1, 4), (5, 5)])
    wait_for(lambda: events_in_gcs(weir, gcs_emulator, run) >= len(first), "the first events in GCS (max_object_age)", timeout=DEADLINE * 2,
             interval=0.25, diagnostics=lambda: f"objects: {sorted(gcs_emulator.blobs())}\ndouble:\n{gcs_double.summary()}\nweir log:\n{weir.log()}")
    wait_for(lambda: weir.metric("weir_archived_events_total", tenant="acme") == len(first), "weir to count the archived events",
             diagnostics=weir.metrics)

    second = send(weir, run, [(10, 3), (13, 2)])
    assert weir.stop() == 0, weir.log()
    t1 = int(time.time() * 1000)

    objects = gcs_emulator.blobs()
    assert objects and all(re.fullmatch(r"archive/acme/dt=\d{4}-\d{2}-\d{2}/hour=\d{2}/[^/]+\.ndjson\.gz", k) for k in objects), sorted(objects)
    assert_archive_holds(weir.read_gcs_archive(gcs_emulator), first + second, run, (t0, t1))
    # Every request weir made was authenticated by its key (as GCS would), one PUT per object.
    seen = gcs_double.requests
    assert seen and all(r.refused is None for r in seen), gcs_double.summary()
    assert sum(1 for r in seen if r.method == "PUT" and r.status == 200) == len(objects), gcs_double.summary()
    assert_no_secret(weir.log(), "weir's log", service_account, tokens=sorted({r.bearer for r in seen}))


def test_token_signed_with_a_wrong_key_is_refused(tmp_path, datadog_backend, gcs_emulator, gcs_double, service_account):
    """The key file (``service_account_path``) names the account and key id GCS
    knows, but holds another private key: the JWT's signature does not verify, GCS
    answers 401 Invalid Credentials, nothing is written, and weir's log and
    metrics show neither key nor token."""
    wrong = service_account.with_other_key()
    sa_path = tmp_path / "service-account.json"
    sa_path.write_text(wrong.json_text())
    weir = GcsWeirProcess(tmp_path, datadog_backend.url, gcs_double.url, sa_path=sa_path, shutdown_timeout="2s").start()
    try:
        send(weir, uuid.uuid4().hex, [(0, 3)])
        failed = wait_for(lambda: re.search(r"archive write failed.*?retry_in=", weir.log(), re.S), "a refused archive write",
                          diagnostics=lambda: f"double:\n{gcs_double.summary()}\nweir log:\n{weir.log()}")
        record = failed[0]
        assert "401 Unauthorized" in record and "Invalid Credentials" in record, record
        assert f"gs://{ARCHIVE_CONTAINER}/archive" in record, record
        assert weir.metric("weir_archived_events_total", tenant="acme") == 0
        metrics = weir.metrics()
    finally:
        code = weir.stop()
        weir.kill()
    assert code == 0, weir.log()
    seen = gcs_double.requests
    assert seen and all(r.refused == "bad signature" and r.status == 401 for r in seen), gcs_double.summary()
    assert gcs_emulator.blobs() == {}, "an object was written with a wrong key"
    tokens = sorted({r.bearer for r in seen})
    assert_no_secret(weir.log(), "weir's log", wrong, service_account, tokens=tokens)
    assert_no_secret(metrics, "weir's metrics", wrong, service_account, tokens=tokens)


def malformed_key_config(tmp_path, monkeypatch, given_as: str) -> tuple[GcsWeirProcess, str]:
    """A weir config whose service account's private_key is not a PEM key (given as
    a file or as text in the environment), and that private_key."""
    not_a_key = f"weir-not-a-pem-key-{uuid.uuid4().hex}"
    sa = ServiceAccount.generate().as_dict()
    sa["private_key"] = not_a_key
    sa_path = None
    if given_as == "service_account_path":
        sa_path = tmp_path / "service-account.json"
        sa_path.write_text(json.dumps(sa))
    else:
        monkeypatch.setenv(GCS_SA_ENV, json.dumps(sa))
    weir = GcsWeirProcess(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9", sa_path=sa_path)
    weir.intake_port, weir.admin_port = free_port_number(), free_port_number()
    weir.config_path.write_text(weir.config_text())
    return weir, not_a_key


@pytest.mark.parametrize("given_as", ["service_account_path", "service_account_key"])
def test_malformed_key_is_refused_by_weir_check(tmp_path, monkeypatch, given_as):
    """``weir check`` refuses the config, exits non-zero, names the store and does not quote the key."""
    weir, not_a_key = malformed_key_config(tmp_path, monkeypatch, given_as)
    check = subprocess.run([str(WEIR_BIN), "check", "--config", str(weir.config_path)], capture_output=True, text=True,
                           timeout=DEADLINE, cwd=tmp_path)
    said = check.stdout + check.stderr
    assert check.returncode != 0, f"weir check accepted a service account whose private_key is not a key:\n{said}"
    assert f"gs://{ARCHIVE_CONTAINER}/archive" in said, said
    assert not_a_key not in said, f"weir check quoted the key:\n{said}"


@pytest.mark.parametrize("given_as", ["service_account_path", "service_account_key"])
def test_malformed_key_is_refused_by_weir_run(tmp_path, monkeypatch, given_as):
    """``weir run`` does not start: it exits non-zero, naming the store, without quoting the key."""
    weir, not_a_key = malformed_key_config(tmp_path, monkeypatch, given_as)
    with open(weir.log_path, "wb") as log:
        run = subprocess.Popen([str(WEIR_BIN), "run", "--config", str(weir.config_path)], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=log, cwd=tmp_path)
    try:
        code = run.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=DEADLINE)
    said = weir.log()
    assert code is not None and code != 0, f"weir run started with a service account whose private_key is not a key:\n{said}"
    assert f"gs://{ARCHIVE_CONTAINER}/archive" in said, said
    assert not_a_key not in said, f"weir run quoted the key:\n{said}"
