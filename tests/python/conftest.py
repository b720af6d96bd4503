"""Shared fixtures for the Python end-to-end tests.

They run the real ``weir`` binary as a process (``$WEIR_BIN``, default
``<repo>/target/debug/weir``), in front of a test double of Datadog's logs
intake, and talk to it with the real ``datadog-api-client`` package.

* ``free_port``        -- a callable returning a TCP port free on 127.0.0.1.
* ``datadog_backend``  -- the Datadog intake double (``DatadogIntake``).
* ``weir_settings``    -- options for the weir config; tests may parametrize it.
* ``weir``             -- a running weir (``WeirProcess``), stopped with SIGTERM
                          on teardown, which asserts it exited with code 0.
* ``logs_api``         -- a factory of ``datadog_api_client`` ``LogsApi``s aimed at weir.
* ``moto_s3``, ``s3_server``, ``s3_weir`` -- an S3-compatible store (moto's server)
                          and weir archiving to it; see the S3 section at the end.
* ``azurite``, ``gcs_emulator``, ``gcs_double``, ... -- Azure's and Google's storage
                          emulators as processes, for the archive; in cloud_emulators.py,
                          loaded as a plugin (``pytest_plugins`` below).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import pytest
import zstandard

# Fixtures of the Azure and GCS emulators (cloud_emulators.py imports from here).
pytest_plugins = ["cloud_emulators"]

REPO = Path(__file__).resolve().parents[2]
WEIR_BIN = Path(os.environ.get("WEIR_BIN") or REPO / "target" / "debug" / "weir")

# Generous: a loaded CI machine may be slow; nothing is asserted on timings.
DEADLINE = 20.0

TENANT = "acme"
AGENT_API_KEY = "agent-key-0123456789abcdef"
UPSTREAM_API_KEY = "upstream-key-fedcba9876543210"

# <tenant>/dt=YYYY-MM-DD/hour=HH/<unique>.ndjson.gz
ARCHIVE_OBJECT = re.compile(r"^(?P<tenant>[A-Za-z0-9_-]+)/dt=(?P<dt>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/[^/]+\.ndjson\.gz$")


def free_port_number() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE, interval: float = 0.05, diagnostics: Callable[[], str] = lambda: ""):
    """Polls ``predicate`` until it returns something truthy (returned), or fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{diagnostics()}")
        time.sleep(interval)


def read_request_body(h: BaseHTTPRequestHandler) -> bytes:
    """A test double's request body, whole: chunked or by Content-Length."""
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


# --------------------------------------------------------------------------
# The Datadog logs intake double
# --------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    path: str
    headers: dict  # lower-cased names
    status: int
    logs: list = field(default_factory=list)
    error: Optional[str] = None

    @property
    def api_key(self) -> Optional[str]:
        return self.headers.get("dd-api-key")


class HttpDouble:
    """A test double served by a ThreadingHTTPServer on its own thread: the
    subclass sets ``_server``, ``_thread``, ``_lock`` and ``_requests`` (what it
    received, in order)."""

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=DEADLINE)

    @property
    def requests(self) -> list:
        with self._lock:
            return list(self._requests)


class DatadogIntake(HttpDouble):
    """Speaks Datadog's logs intake protocol: POST /api/v2/logs with a JSON array
    of log objects (or one object), optionally gzip/deflate/zstd-compressed, and
    the organization's key in DD-API-KEY. Answers 202 ``{}``, 403 for a wrong or
    missing key, 400/415 for bodies it cannot read. Records every request."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        intake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _read_body(self) -> bytes:
                return read_request_body(self)

            def _answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self._read_body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                path = urlsplit(self.path).path
                status, logs, error = intake._handle(path, headers, raw)
                with intake._lock:
                    intake._requests.append(ReceivedRequest(path, headers, status, logs, error))
                self._answer(status, {} if status == 202 else {"errors": [error]})

            def do_GET(self):
                self._answer(405, {"errors": ["the logs intake takes POST"]})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="datadog-intake", daemon=True)

    def _handle(self, path: str, headers: dict, raw: bytes):
        if path != "/api/v2/logs":
            return 404, [], f"no endpoint at {path}"
        if headers.get("dd-api-key") != self.api_key:
            return 403, [], "Forbidden"
        encoding = headers.get("content-encoding", "identity").strip().lower()
        try:
            if encoding in ("", "identity"):
                plain = raw
            elif encoding == "gzip":
                plain = gzip.decompress(raw)
            elif encoding == "deflate":
                plain = zlib.decompress(raw)
            elif encoding == "zstd":
                plain = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            else:
                return 415, [], f"unsupported Content-Encoding {encoding!r}"
        except Exception as e:  # noqa: BLE001 - any decoding failure is the sender's
            return 400, [], f"body is not valid {encoding}: {e}"
        try:
            payload = json.loads(plain)
        except ValueError as e:
            return 400, [], f"invalid JSON: {e}"
        if isinstance(payload, dict):
            payload = [payload]
        if not isinstance(payload, list) or not all(isinstance(x, dict) for x in payload):
            return 400, [], "body must be a JSON array of log objects"
        return 202, payload, None

    @property
    def logs(self) -> list[dict]:
        """Every log object of every accepted request, in arrival order."""
        with self._lock:
            return [log for r in self._requests if r.status == 202 for log in r.logs]

    def wait_for_logs(self, count: int, timeout: float = DEADLINE, diagnostics: Callable[[], str] = lambda: "") -> list[dict]:
        wait_for(lambda: len(self.logs) >= count, f"{count} logs at the Datadog intake double", timeout,
                 diagnostics=lambda: f"received so far: {self.summary()}\n{diagnostics()}")
        return self.logs

    def summary(self) -> str:
        return "; ".join(f"{r.status} {r.path} key={r.api_key!r} enc={r.headers.get('content-encoding')} logs={len(r.logs)} {r.error or ''}" for r in self.requests) or "nothing"


# --------------------------------------------------------------------------
# weir as a process
# --------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def q(value: Any) -> str:
    """A YAML scalar (JSON strings are valid YAML double-quoted scalars)."""
    return json.dumps(str(value))


def make_pki(d: Path) -> dict:
    """A CA and a server certificate for localhost and 127.0.0.1, made with openssl."""
    d.mkdir(parents=True, exist_ok=True)
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=weir test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem",
        "-days", "2", "-extfile", "ext.cnf")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


class WeirProcess:
    def __init__(self, tmp_path: Path, backend_url: str, *, tenant: str = TENANT, api_key: str = AGENT_API_KEY,
                 upstream_api_key: str = UPSTREAM_API_KEY, backend_compression: str = "gzip", max_object_age: str = "1s"):
        self.dir = tmp_path
        self.backend_url = backend_url
        self.tenant = tenant
        self.api_key = api_key
        self.upstream_api_key = upstream_api_key
        self.backend_compression = backend_compression
        self.max_object_age = max_object_age
        self.archive_root = tmp_path / "archive"
        self.config_path = tmp_path / "weir.yaml"
        self.log_path = tmp_path / "weir.log"
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.intake_port = self.admin_port = 0

    @property
    def intake_url(self) -> str:
        return f"http://127.0.0.1:{self.intake_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def config_text(self) -> str:
        d = self.dir
        return f"""\
data_dir: {q(d / "data")}
listeners:
  - name: intake
    address: {q(f"127.0.0.1:{self.intake_port}")}
    protocol: http
    key_header: x-weir-key
admin:
  address: {q(f"127.0.0.1:{self.admin_port}")}
log:
  level: "weir=debug,info"
  format: text
shutdown_timeout: 30s
archive:
  store:
    type: local
    root: {q(self.archive_root)}
  max_object_age: {self.max_object_age}
backends:
  - name: datadog
    type: datadog
    endpoint: {q(self.backend_url)}
    compression: {self.backend_compression}
    batch:
      max_wait: 200ms
    retry:
      initial_backoff: 50ms
      max_backoff: 1s
tenants:
  - name: {q(self.tenant)}
    api_keys: [{q(self.api_key)}]
    backend: datadog
    upstream_api_key: {q(self.upstream_api_key)}
"""

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "WeirProcess":
        if not WEIR_BIN.is_file():
            pytest.fail(f"weir binary not found at {WEIR_BIN}; build it with `cargo build -p weir` or set WEIR_BIN")
        # A port found free may be taken before weir binds it: then try fresh ports.
        for attempt in range(3):
            self.intake_port, self.admin_port = free_port_number(), free_port_number()
            while self.admin_port == self.intake_port:
                self.admin_port = free_port_number()
            self.config_path.write_text(self.config_text())
            env = dict(os.environ)
            env["RUST_LOG"] = "weir=debug,info"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([str(WEIR_BIN), "run", "--config", str(self.config_path)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.dir)
            if self._wait_ready():
                return self
            if "cannot bind" not in self.log() or attempt == 2:
                break
        raise AssertionError(f"weir did not become ready (exit code {self.proc.poll()}); log:\n{self.log()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if http_get(f"{self.admin_url}/readyz", timeout=1.0)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then waits for the exit; returns the exit code."""
        if self.proc is None:
            raise AssertionError("weir was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"weir did not exit within {timeout}s of SIGTERM; log:\n{self.log()}")
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)

    def metrics(self) -> str:
        return http_get(f"{self.admin_url}/metrics")[1].decode()

    def metric(self, name: str, default: Optional[float] = None, **labels: str) -> float:
        """The value of the Prometheus sample ``name{labels}`` (label order free). A series
        that is not there fails the test: a misspelt name must not read as 0. Pass
        ``default`` only for a series that appears with its first event (a label value
        known only then, such as a backend's answer status)."""
        seen = []
        for line in self.metrics().splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
            if not m or m[1] != name:
                continue
            found = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m[2] or ""))
            if found == labels:
                return float(m[3])
            seen.append(found)
        if default is not None:
            return default
        raise AssertionError(f"no series {name}{labels}; its series: {seen[:20]}")

    def archive_objects(self) -> list[Path]:
        """Every file under the archive root but the dead letters, sorted."""
        if not self.archive_root.exists():
            return []
        dead = self.archive_root / "dead-letter"
        return sorted(p for p in self.archive_root.rglob("*") if p.is_file() and dead not in p.parents)

    def dead_letters(self) -> list[tuple[str, dict]]:
        """(object path under dead-letter/, event) for every batch a backend refused."""
        dead = self.archive_root / "dead-letter"
        out = []
        for p in sorted(dead.rglob("*.ndjson.gz")) if dead.exists() else []:
            for line in gzip.decompress(p.read_bytes()).decode("utf-8").splitlines():
                out.append((p.relative_to(dead).as_posix(), json.loads(line)))
        return out

    def read_archive(self, strict: bool = True) -> list[tuple[str, dict]]:
        """(object path relative to the archive root, event) for every archived event.
        Asserts every file is a complete gzip'd NDJSON object at a well-formed path.
        While weir runs, pass ``strict=False``: objects being written (staged under a
        temporary name until complete) are skipped."""
        out = []
        for p in self.archive_objects():
            rel = p.relative_to(self.archive_root).as_posix()
            if not strict and not rel.endswith(".ndjson.gz"):
                continue
            m = ARCHIVE_OBJECT.match(rel)
            assert m, f"unexpected file in the archive: {rel}"
            assert m["tenant"] == self.tenant, rel
            text = gzip.decompress(p.read_bytes()).decode("utf-8")
            assert text == "" or text.endswith("\n"), f"{rel}: the last NDJSON line is not terminated"
            for line in text.splitlines():
                out.append((rel, json.loads(line)))
        return out

    def archived_events(self, strict: bool = True) -> list[dict]:
        return [e for _, e in self.read_archive(strict)]


def partition_of(timestamp_ms: int) -> str:
    t = datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc)
    return t.strftime("dt=%Y-%m-%d/hour=%H")


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def free_port() -> Callable[[], int]:
    return free_port_number


@pytest.fixture
def datadog_backend():
    intake = DatadogIntake(UPSTREAM_API_KEY).start()
    yield intake
    intake.stop()


@pytest.fixture
def weir_settings() -> dict:
    """Keyword arguments for WeirProcess; parametrize this fixture to change them."""
    return {}


def run_until_teardown(w):
    """Starts `w`, yields it to the test, then stops it with SIGTERM and checks it exited 0."""
    try:
        w.start()
        yield w
    finally:
        if w.running:
            code = w.stop()
        else:
            code = w.returncode if w.returncode is not None else (w.proc.returncode if w.proc else None)
        w.kill()
    assert code == 0, f"weir exited with {code} after SIGTERM; log:\n{w.log()}"


@pytest.fixture
def weir(tmp_path, datadog_backend, weir_settings):
    w = WeirProcess(tmp_path, datadog_backend.url, **weir_settings)
    yield from run_until_teardown(w)


@pytest.fixture
def logs_api(monkeypatch):
    """``logs_api(host, api_key)`` -> a LogsApi of the real datadog-api-client aimed at ``host``.
    ``api_key=None`` sends no key. Answers come back as (data, status, headers)."""
    from datadog_api_client import ApiClient, Configuration
    from datadog_api_client.v2.api.logs_api import LogsApi

    # The client falls back to these; a developer's shell must not change what is sent.
    for var in ("DD_API_KEY", "DD_APP_KEY", "DD_SITE"):
        monkeypatch.delenv(var, raising=False)
    clients = []

    def make(host: str, api_key: Optional[str]) -> LogsApi:
        configuration = Configuration(host=host, return_http_data_only=False, request_timeout=DEADLINE)
        if api_key is not None:
            configuration.api_key["apiKeyAuth"] = api_key
        client = ApiClient(configuration)
        clients.append(client)
        api = LogsApi(client)
        # What the client put on the wire (headers and body bytes, compressed as sent);
        # the request itself still goes through urllib3 untouched.
        api.wire = []
        pool = client.rest_client.pool_manager
        real_request = pool.request

        def recording_request(method, url, **kwargs):
            api.wire.append({"method": method, "url": url, "headers": dict(kwargs.get("headers") or {}), "body": kwargs.get("body")})
            return real_request(method, url, **kwargs)

        pool.request = recording_request
        return api

    yield make
    for c in clients:
        c.close()


# --------------------------------------------------------------------------
# An S3-compatible store for the archive: moto's standalone server
# --------------------------------------------------------------------------
#
# * ``moto_s3``    -- a ``MotoS3`` on a reserved port, not started yet (the test
#                     starts it, e.g. after weir, to play a store that is down).
# * ``s3_server``  -- the same, started.
# * ``s3_weir``    -- weir archiving to ``s3_server`` (bucket created first),
#                     credentials given as ``${ENV}`` references; stopped with
#                     SIGTERM on teardown, which asserts it exited with code 0.

S3_BUCKET = "weir-archive"
S3_PREFIX = "archive"
S3_REGION = "us-east-1"
# moto accepts any credentials; distinctive ones show whether they leak into weir's log.
S3_ACCESS_KEY_ID = "AKIAWEIRTESTKEY0001"
S3_SECRET_ACCESS_KEY = "weir-test-secret-0f9e8d7c6b5a"
S3_KEY_ID_ENV = "WEIR_TEST_S3_ACCESS_KEY_ID"
S3_SECRET_ENV = "WEIR_TEST_S3_SECRET_ACCESS_KEY"


class MotoS3:
    """moto's server (``python -m moto.server``, what ``moto_server`` runs) as a
    subprocess on 127.0.0.1. Until started, its port is held by a bound socket
    that does not listen, so connections to it are refused (a store that is
    down) and no other process can take the port."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._reserved: Optional[socket.socket] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._reserved.bind(("127.0.0.1", 0))
        self.port = self._reserved.getsockname()[1]
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "MotoS3":
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"moto's server exited with {self.proc.returncode}; log:\n{self.log()}")
            try:
                return http_get(f"{self.url}/", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_for(up, f"moto's server on {self.url}", diagnostics=self.log)
        return self

    def stop(self):
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=DEADLINE)

    def client(self):
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.client("s3", endpoint_url=self.url, region_name=S3_REGION, aws_access_key_id=S3_ACCESS_KEY_ID,
                            aws_secret_access_key=S3_SECRET_ACCESS_KEY, config=BotoConfig(s3={"addressing_style": "path"}))

    def create_bucket(self, bucket: str = S3_BUCKET):
        self.client().create_bucket(Bucket=bucket)

    def objects(self, bucket: str = S3_BUCKET, prefix: str = "") -> dict[str, bytes]:
        """key -> body of every object in ``bucket`` under ``prefix``."""
        s3 = self.client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        return out


class ObjectStoreWeirProcess(WeirProcess):
    """weir whose archive writes to an object store: ``archive_store_config()`` gives
    what replaces the local ``store:`` in the ``archive:`` section (indented by two),
    ``top_level_config()`` what is added at the top level (e.g. ``archive_stores:``)."""

    def __init__(self, tmp_path: Path, backend_url: str, *, prefix: str = S3_PREFIX, shutdown_timeout: str = "30s", **kwargs):
        super().__init__(tmp_path, backend_url, **kwargs)
        self.prefix = prefix
        self.shutdown_timeout = shutdown_timeout

    def archive_store_config(self) -> str:
        raise NotImplementedError

    def top_level_config(self) -> str:
        return ""

    def config_text(self) -> str:
        store = self.archive_store_config()
        text, n = re.subn(r"(?m)^  store:\n    type: local\n    root: .*\n", lambda _: store, super().config_text())
        assert n == 1, f"no local archive store to replace in:\n{text}"
        text, n = re.subn(r"(?m)^shutdown_timeout: .*$", lambda _: f"shutdown_timeout: {self.shutdown_timeout}", text)
        assert n == 1, f"no shutdown_timeout to replace in:\n{text}"
        return text + self.top_level_config()

    def archive_from(self, objects: dict[str, bytes]) -> list[tuple[str, dict]]:
        """(key relative to the prefix, event) for every archived event in ``objects``
        (key -> body, as a store lists them). Asserts every object is a complete
        gzip'd NDJSON object at a well-formed key under the prefix."""
        out = []
        for key, body in sorted(objects.items()):
            assert key.startswith(f"{self.prefix}/"), f"object outside the prefix {self.prefix!r}: {key}"
            rel = key[len(self.prefix) + 1:]
            m = ARCHIVE_OBJECT.match(rel)
            assert m, f"unexpected object in the archive: {key}"
            assert m["tenant"] == self.tenant, key
            text = gzip.decompress(body).decode("utf-8")
            assert text == "" or text.endswith("\n"), f"{key}: the last NDJSON line is not terminated"
            for line in text.splitlines():
                out.append((rel, json.loads(line)))
        return out


class S3WeirProcess(ObjectStoreWeirProcess):
    """weir whose archive is ``s3://bucket/prefix`` at ``endpoint`` (path-style, plain
    http), with the credentials as ``${ENV}`` references (set them in weir's environment)."""

    def __init__(self, tmp_path: Path, backend_url: str, endpoint: str, *, bucket: str = S3_BUCKET, **kwargs):
        super().__init__(tmp_path, backend_url, **kwargs)
        self.endpoint = endpoint
        self.bucket = bucket

    def archive_store_config(self) -> str:
        return f"""\
  store:
    type: s3
    bucket: {q(self.bucket)}
    prefix: {q(self.prefix)}
    endpoint: {q(self.endpoint)}
    region: {q(S3_REGION)}
    path_style: true
    allow_http: true
    access_key_id: "${{{S3_KEY_ID_ENV}}}"
    secret_access_key: "${{{S3_SECRET_ENV}}}"
"""

    def read_s3_archive(self, s3: MotoS3) -> list[tuple[str, dict]]:
        """(key relative to the prefix, event) for every archived event in the bucket."""
        return self.archive_from(s3.objects(self.bucket))


@pytest.fixture
def moto_s3(tmp_path):
    server = MotoS3(tmp_path / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_server(moto_s3):
    return moto_s3.start()


@pytest.fixture
def s3_credentials_env(monkeypatch):
    """The archive's S3 credentials in the environment weir inherits."""
    monkeypatch.setenv(S3_KEY_ID_ENV, S3_ACCESS_KEY_ID)
    monkeypatch.setenv(S3_SECRET_ENV, S3_SECRET_ACCESS_KEY)


@pytest.fixture
def s3_weir(tmp_path, datadog_backend, s3_server, s3_credentials_env, weir_settings):
    s3_server.create_bucket()
    w = S3WeirProcess(tmp_path, datadog_backend.url, s3_server.url, **weir_settings)
    yield from run_until_teardown(w)
