"""End to end with the real ``fluent-logger`` Python package (Fluentd's forward
protocol, Message mode, seconds and nanosecond EventTime) against a
``fluent_forward`` listener; and, as Fluent Bit's ``forward`` output sends them
with ``Require_ack_response on`` (fluent-logger has no acks), Forward and
CompressedPackedForward messages with a chunk id, answered ``{"ack": chunk}``
once the events are in. The logs reach the Datadog backend (a test double)."""
from __future__ import annotations

import gzip
import os
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
    assert fweir.stop() == 0, fweir.log()
    assert len(ours(datadog_backend, run)) == 7, "each once"


def test_a_malformed_message_gets_no_ack_and_the_connection_closes(fweir):
    with socket.create_connection(("127.0.0.1", fweir.forward_port), timeout=DEADLINE) as c:
        c.sendall(msgpack.packb(["t", 1, "not a map", {"chunk": "bad"}]))
        assert c.recv(4096) == b"", "closed, no ack"
    assert fweir.metric("weir_rejected_requests_total", intake="fluent_forward", reason="invalid_payload") == 1


# --------------------------------------------------------------------------
# The shared-key handshake, with the PING built as Fluent Bit's forward output
# builds it (plugins/out_forward/forward.c, secure_forward_ping: a 6-array of
# str, the 16 random salt bytes packed as a str, the digest as 128 hex chars,
# empty username and password); Fluent Bit cannot be installed here.
# --------------------------------------------------------------------------

SHARED_KEY = "forward-secret-0123"


class SharedKeyWeir(WeirProcess):
    """weir with a fluent_forward listener whose shared key names tenant ``beta``."""

    def config_text(self) -> str:
        self.forward_port = free_port_number()
        text = super().config_text()
        listener = f"""  - name: forward-keyed
    address: "127.0.0.1:{self.forward_port}"
    protocol: fluent_forward
    shared_keys:
      - {{tenant: beta, key: "{SHARED_KEY}"}}
admin:"""
        beta = f"""  - name: beta
    api_keys: ["beta-http-key"]
    backend: datadog
    upstream_api_key: "{self.upstream_api_key}"
"""
        return text.replace("admin:", listener, 1) + beta


@pytest.fixture
def kweir(tmp_path, datadog_backend):
    yield from run_until_teardown(SharedKeyWeir(tmp_path, datadog_backend.url))


def sha512_hex(*parts: bytes) -> str:
    import hashlib
    h = hashlib.sha512()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def handshake(port: int, key: str, hostname: str = "fluent-bit-node"):
    """HELO in, PING out, PONG in: returns the open socket, the PONG and an unpacker."""
    c = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    unpacker = msgpack.Unpacker(raw=True)

    def next_message():
        while True:
            for m in unpacker:
                return m
            data = c.recv(4096)
            if not data:
                return None
            unpacker.feed(data)

    helo = next_message()
    assert helo[0] == b"HELO", helo
    options = {k.decode(): v for k, v in helo[1].items()}
    nonce = options["nonce"]
    assert len(nonce) == 16 and options["keepalive"] is True, options
    salt = os.urandom(16)
    digest = sha512_hex(salt, hostname.encode(), nonce, key.encode())
    # use_bin_type=False: bytes pack as str, as Fluent Bit packs its salt.
    c.sendall(msgpack.packb(["PING", hostname, salt, digest, "", ""], use_bin_type=False))
    pong = next_message()
    return c, pong, next_message, (salt, nonce)


def test_a_shared_key_names_the_tenant(kweir, datadog_backend):
    run = uuid.uuid4().hex[:8]
    c, pong, next_message, (salt, nonce) = handshake(kweir.forward_port, SHARED_KEY)
    with c:
        assert pong[:4] == [b"PONG", True, b"", b"weir"], pong
        # Weir proves it knows the key too.
        assert pong[4].decode() == sha512_hex(salt, b"weir", nonce, SHARED_KEY.encode())
        entries = [[int(time.time()), {"message": f"{run} keyed {i}"}] for i in range(3)]
        c.sendall(msgpack.packb(["fb.keyed", entries, {"chunk": "k-1", "size": 3}]))
        assert next_message() == {b"ack": b"k-1"}
    wait_for(lambda: len(ours(datadog_backend, run)) >= 3, "3 keyed events at the backend", diagnostics=kweir.log)
    assert kweir.metric("weir_received_events_total", intake="fluent_forward", tenant="beta") == 3


def test_a_wrong_shared_key_is_refused_and_the_connection_closed(kweir, datadog_backend):
    c, pong, next_message, _ = handshake(kweir.forward_port, "not-the-key")
    with c:
        assert pong == [b"PONG", False, b"shared_key mismatch", b"weir", b""], pong
        assert next_message() is None, "closed after the failing PONG"
    assert kweir.metric("weir_rejected_requests_total", intake="fluent_forward", reason="unknown_api_key") == 1
