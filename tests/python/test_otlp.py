"""End to end with the real OpenTelemetry Python SDK: its logging handler,
inside a span, exporting with ``opentelemetry-exporter-otlp-proto-http`` and
``-proto-grpc`` to weir's OTLP intake (``POST /v1/logs``, and gRPC
``LogsService/Export`` on the same listener, HTTP/2 cleartext). The logs reach
the Datadog backend (a test double) with their service, host, status,
attributes and the trace and span ids of the span they were logged in, and
land in the archive; a wrong key is refused and the exporter says so."""
from __future__ import annotations

import logging
import uuid

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from conftest import AGENT_API_KEY, WeirProcess, make_pki, run_until_teardown, wait_for

# The SDK's LoggingHandler is deprecated in favour of an instrumentation package; it is what apps use today.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Recording:
    """Wraps an exporter and keeps what each export returned."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, batch):
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self):
        self.inner.shutdown()


def exporter(kind: str, weir, key: str, header: str):
    value = f"Bearer {key}" if header == "authorization" else key
    if kind == "http":
        return HttpLogExporter(endpoint=f"{weir.intake_url}/v1/logs", headers={header: value},
                               compression=HttpCompression.Gzip, timeout=10)
    return GrpcLogExporter(endpoint=f"127.0.0.1:{weir.intake_port}", insecure=True,
                           headers=((header, value),), compression=grpc.Compression.Gzip, timeout=10)


def log_in_a_span(kind: str, weir, key: str, run: str, count: int, header: str = "authorization"):
    """Logs ``count`` records through the SDK's logging handler inside one span;
    returns the exporter's results and the span's context."""
    recording = Recording(exporter(kind, weir, key, header))
    provider = LoggerProvider(resource=Resource.create({
        "service.name": "checkout", "host.name": "web-7.example.internal", "deployment.environment": "prod"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(recording))
    logger = logging.getLogger(f"weir-test-{run}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    logger.addHandler(handler)
    tracer = TracerProvider().get_tracer("weir-test")
    try:
        with tracer.start_as_current_span("charge") as span:
            for i in range(count):
                level = logging.ERROR if i % 2 else logging.INFO
                logger.log(level, "%s payment %d for order %s", run, i, f"o-{i}", extra={"order_id": i, "amount": 9.5})
            ctx = span.get_span_context()
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    return recording.results, ctx


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_sdk_logs_reach_the_backend_with_their_trace(kind, weir, datadog_backend):
    run = uuid.uuid4().hex[:8]
    results, ctx = log_in_a_span(kind, weir, AGENT_API_KEY, run, 6)
    assert results and all(r.name == "SUCCESS" for r in results), results
    ours = lambda: [l for l in datadog_backend.logs if l.get("message", "").startswith(run)]
    wait_for(lambda: len(ours()) >= 6, "6 OTLP logs at the backend", diagnostics=weir.log)
    assert weir.metric("weir_received_events_total", intake="otlp", tenant="acme") == 6
    # Counted once weir has stopped (SIGTERM sends what is queued, writes the open
    # archive object): a duplicate would be there.
    assert weir.stop() == 0, weir.log()
    logs = sorted(ours(), key=lambda l: l["order_id"])
    assert len(logs) == 6, "each once"
    trace_hex, span_hex = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    for i, l in enumerate(logs):
        assert l["message"] == f"{run} payment {i} for order o-{i}"
        assert l["service"] == "checkout"
        assert l["hostname"] == "web-7.example.internal"
        assert l["status"] == ("error" if i % 2 else "info")
        assert l["order_id"] == i and l["amount"] == 9.5
        assert l["deployment.environment"] == "prod"
        assert l["otel"]["trace_id"] == trace_hex
        assert l["otel"]["span_id"] == span_hex
        # Datadog correlates logs with traces by the low 64 bits, in decimal.
        assert l["dd"]["trace_id"] == str(ctx.trace_id & (2**64 - 1))
        assert l["dd"]["span_id"] == str(ctx.span_id)
    archived = [e for e in weir.archived_events() if e.get("message", "").startswith(run)]
    assert len(archived) == 6
    assert {e["otel"]["trace_id"] for e in archived} == {trace_hex}


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_a_wrong_key_is_refused_and_the_exporter_reports_it(kind, weir, datadog_backend):
    run = uuid.uuid4().hex[:8]
    results, _ = log_in_a_span(kind, weir, "not-a-tenant-key", run, 2)
    assert results and all(r.name == "FAILURE" for r in results), results
    assert not [l for l in datadog_backend.logs if l.get("message", "").startswith(run)]
    refused = weir.metric("weir_rejected_requests_total", intake="otlp", reason="unknown_api_key")
    assert refused == len(results)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_the_listener_key_header_carries_the_key(kind, weir, datadog_backend):
    """The harness's listener sets ``key_header: x-weir-key``: an exporter that can add
    a header but not an Authorization one sends the tenant's key there."""
    run = uuid.uuid4().hex[:8]
    results, _ = log_in_a_span(kind, weir, AGENT_API_KEY, run, 2, header="x-weir-key")
    assert results and all(r.name == "SUCCESS" for r in results), results
    wait_for(lambda: len([l for l in datadog_backend.logs if l.get("message", "").startswith(run)]) == 2,
             "2 OTLP logs at the backend", diagnostics=weir.log)
    results, _ = log_in_a_span(kind, weir, "not-a-tenant-key", run, 1, header="x-weir-key")
    assert all(r.name == "FAILURE" for r in results), results


class TlsWeir(WeirProcess):
    """weir whose listener is HTTPS (rustls, ALPN h2 and http/1.1): OTLP/HTTP and gRPC over TLS."""

    pki: dict = {}

    def config_text(self) -> str:
        tls = f"""    protocol: https
    tls:
      cert: "{self.pki['cert']}"
      key: "{self.pki['key']}"
"""
        return super().config_text().replace("    protocol: http\n", tls, 1)


@pytest.fixture
def tls_weir(tmp_path, datadog_backend):
    w = TlsWeir(tmp_path, datadog_backend.url)
    w.pki = make_pki(tmp_path / "pki")
    yield from run_until_teardown(w)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_sdk_logs_arrive_over_tls(kind, tls_weir, datadog_backend, monkeypatch):
    """The exporters verify weir's certificate against the test CA (no insecure mode)."""
    # requests lets these override the exporter's own CA file (its session's verify).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    run = uuid.uuid4().hex[:8]
    ca = tls_weir.pki["ca"]
    if kind == "http":
        inner = HttpLogExporter(endpoint=f"https://localhost:{tls_weir.intake_port}/v1/logs",
                                headers={"authorization": f"Bearer {AGENT_API_KEY}"}, certificate_file=str(ca),
                                compression=HttpCompression.Gzip, timeout=10)
    else:
        inner = GrpcLogExporter(endpoint=f"localhost:{tls_weir.intake_port}", insecure=False,
                                credentials=grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()),
                                headers=(("authorization", f"Bearer {AGENT_API_KEY}"),), timeout=10)
    recording = Recording(inner)
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(recording))
    logger = logging.getLogger(f"weir-tls-{run}")
    logger.propagate = False
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger.addHandler(handler)
    try:
        for i in range(3):
            logger.warning("%s over tls %d", run, i)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    assert recording.results and all(r.name == "SUCCESS" for r in recording.results), recording.results
    ours = lambda: [l for l in datadog_backend.logs if l.get("message", "").startswith(run)]
    wait_for(lambda: len(ours()) >= 3, "3 OTLP logs over TLS at the backend", diagnostics=tls_weir.log)
    assert sorted(l["message"] for l in ours()) == [f"{run} over tls {i}" for i in range(3)]
    assert all(l["service"] == "checkout" and l["status"] == "warn" for l in ours())


class SmallLimitsWeir(WeirProcess):
    def config_text(self) -> str:
        return super().config_text() + "limits:\n  max_body_bytes: 64KiB\n  max_decompressed_bytes: 64KiB\n"


@pytest.fixture
def small_weir(tmp_path, datadog_backend):
    yield from run_until_teardown(SmallLimitsWeir(tmp_path, datadog_backend.url))


def test_a_grpc_message_over_the_limit_is_refused_and_counted(small_weir, datadog_backend):
    """tonic refuses a message over limits.max_decompressed_bytes before weir's
    handler runs (RESOURCE_EXHAUSTED); the refusal is counted all the same."""
    inner = GrpcLogExporter(endpoint=f"127.0.0.1:{small_weir.intake_port}", insecure=True,
                            headers=(("authorization", f"Bearer {AGENT_API_KEY}"),), timeout=2)
    recording = Recording(inner)
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(recording))
    logger = logging.getLogger(f"weir-big-{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger.addHandler(handler)
    try:
        logger.warning("x" * (100 << 10))
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
    assert recording.results and all(r.name == "FAILURE" for r in recording.results), recording.results
    wait_for(lambda: small_weir.metric("weir_rejected_requests_total", intake="otlp", reason="decompressed_too_large", default=0) >= 1,
             "the refusal counted", diagnostics=small_weir.log)
    assert not datadog_backend.logs
