"""End to end with the real ``fluent-logger`` Python package (Fluentd's forward
protocol, Message mode, seconds and nanosecond EventTime) against a
``fluent_forward`` listener; and, as Fluent Bit's ``forward`` output sends them
with ``Require_ack_response on`` (fluent-logger has no acks), Forward and
CompressedPackedForward messages with a chunk id, answered ``{"ack": chunk}``
once the events are in. The logs reach the Datadog backend (a test double)."""
from __future__ import annotations

import gzip
import socket
import time
import uuid

import msgpack
import pytest
from fluent import sender

from conftest import DEADLINE, WeirProcess, free_port_number, run_until_teardown, wait_for


class ForwardWeir(WeirProcess):
    """weir with a second listener speaking Fluent forward for the tenant."""

    def config_text(self) -> str:
        self.forward_port = free_port_number()
        text = super().config_text()
        listener = f"""  - name: forward
    address: "127.0.0.1:{self.forward_port}"
    protocol: fluent_forward
    tenant: {self.tenant}
admin:"""
        return text.replace("admin:", listener, 1)


@pytest.fixture
def fweir(tmp_path, datadog_backend):
    yield from run_until_teardown(ForwardWeir(tmp_path, datadog_backend.url))


def ours(backend, run):
    return [l for l in backend.logs if run in l.get("message", "")]


@pytest.mark.parametrize("nanos", [False, True])
def test_fluent_logger_events_arrive(fweir, datadog_backend, nanos):
    run = uuid.uuid4().hex[:8]
    s = sender.FluentSender("app", host="127.0.0.1", port=fweir.forward_port, nanosecond_precision=nanos)
    try:
        for i in range(5):
            assert s.emit("web", {"log": f"{run} request {i}", "level": "info", "user": {"id": i}}), s.last_error
    finally:
        s.close()
    wait_for(lambda: len(ours(datadog_backend, run)) >= 5, "5 forward events at the backend", diagnostics=fweir.log)
    got = sorted(ours(datadog_backend, run), key=lambda l: l["user"]["id"])
    assert [l["message"] for l in got] == [f"{run} request {i}" for i in range(5)]
    assert all(l["fluent_tag"] == "app.web" and l["level"] == "info" for l in got)
    assert abs(got[0]["timestamp"] / 1000 - time.time()) < 600
    assert fweir.metric("weir_received_events_total", intake="fluent_forward", tenant="acme") == 5


def exchange(port: int, message: bytes) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
        c.sendall(message)
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            data = c.recv(4096)
            assert data, "the connection closed without an ack"
            unpacker.feed(data)
            for answer in unpacker:
                return answer


def test_chunks_are_acked_once_in(fweir, datadog_backend):
    run = uuid.uuid4().hex[:8]
    now = int(time.time())
    # Forward mode, as Fluent Bit sends a chunk with Require_ack_response on.
    entries = [[now, {"message": f"{run} fwd {i}"}] for i in range(3)]
    answer = exchange(fweir.forward_port, msgpack.packb(["fb.tail", entries, {"chunk": "chunk-1", "size": 3}]))
    assert answer == {"ack": "chunk-1"}
    # CompressedPackedForward: entries back to back, gzip'd.
    packed = b"".join(msgpack.packb([now, {"log": f"{run} packed {i}"}]) for i in range(4))
    message = ["fb.tail", gzip.compress(packed), {"chunk": "chunk-2", "size": 4, "compressed": "gzip"}]
    assert exchange(fweir.forward_port, msgpack.packb(message, use_bin_type=True)) == {"ack": "chunk-2"}
    wait_for(lambda: len(ours(datadog_backend, run)) >= 7, "7 forward events at the backend", diagnostics=fweir.log)
    assert len(ours(datadog_backend, run)) == 7


def test_a_malformed_message_gets_no_ack_and_the_connection_closes(fweir):
    with socket.create_connection(("127.0.0.1", fweir.forward_port), timeout=DEADLINE) as c:
        c.sendall(msgpack.packb(["t", 1, "not a map", {"chunk": "bad"}]))
        assert c.recv(4096) == b"", "closed, no ack"
    assert fweir.metric("weir_rejected_requests_total", intake="fluent_forward", reason="invalid_payload") == 1
