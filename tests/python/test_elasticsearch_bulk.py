"""End to end with the real ``elasticsearch`` Python client (8.x): its start-up
calls (``info``, ``ping``, the product check every official client makes)
and ``helpers.bulk`` against weir's ``_bulk`` intake, per-item results
checked; the documents reach the Datadog backend (a test double) and the
archive; a wrong key is refused as Elasticsearch refuses it."""
from __future__ import annotations

import uuid

import pytest
from elasticsearch import AuthenticationException, AuthorizationException, Elasticsearch, helpers

from conftest import AGENT_API_KEY, wait_for


def client(weir, key):
    return Elasticsearch(weir.intake_url, api_key=("weir-test-id", key) if key else None, request_timeout=20)


def test_the_client_starts_and_bulk_items_are_answered_one_by_one(weir, datadog_backend):
    es = client(weir, AGENT_API_KEY)
    info = es.info()
    assert info["version"]["number"].startswith("8.")
    assert es.ping()
    assert es.cluster.health()["status"] == "green"
    # What Filebeat and Logstash do at start: put a template (acknowledged).
    assert es.indices.put_index_template(name="weir-test", index_patterns=["logs-*"])["acknowledged"]

    run = uuid.uuid4().hex[:8]
    docs = [{"_index": "logs-app", "_id": f"{run}-{i}", "_source": {
        "@timestamp": "2026-12-02T10:00:00.000Z", "message": f"{run} order {i} paid",
        "host": {"name": "web-3"}, "service": {"name": "checkout", "version": "2.1"},
        "log": {"level": "info"}, "order": {"id": i, "total": 12.5}}} for i in range(50)]
    ok, errors = helpers.bulk(es, docs)
    assert (ok, errors) == (50, [])

    # An update fails alone, with Elasticsearch's item error; the rest is taken.
    mixed = [{"_index": "logs-app", "_source": {"message": f"{run} extra"}},
             {"_op_type": "update", "_index": "logs-app", "_id": "x", "doc": {"a": 1}},
             {"_op_type": "create", "_index": "logs-app", "_source": {"message": f"{run} created"}}]
    ok, errors = helpers.bulk(es, mixed, raise_on_error=False)
    assert ok == 2
    assert len(errors) == 1 and errors[0]["update"]["status"] == 400, errors
    assert errors[0]["update"]["error"]["type"] == "illegal_argument_exception"

    ours = lambda: [l for l in datadog_backend.logs if l.get("message", "").startswith(run)]
    wait_for(lambda: len(ours()) >= 52, "52 bulk documents at the backend", diagnostics=weir.log)
    assert weir.metric("weir_received_events_total", intake="elasticsearch", tenant="acme") == 52
    # Counted once weir has stopped (SIGTERM sends what is still queued): a duplicate would be there.
    assert weir.stop() == 0, weir.log()
    got = {l["message"]: l for l in ours()}
    assert len(ours()) == 52, "each once"
    first = got[f"{run} order 0 paid"]
    assert first["hostname"] == "web-3"
    assert first["service"] == "checkout"
    assert first["service.version"] == "2.1"
    assert first["status"] == "info"
    assert first["index"] == "logs-app"
    assert first["order"] == {"id": 0, "total": 12.5}
    assert first["timestamp"] == 1796205600000
    assert f"{run} created" in got


@pytest.mark.parametrize("key,error", [(None, AuthenticationException), ("wrong-key", AuthorizationException)])
def test_a_missing_or_wrong_key_is_refused(weir, key, error):
    es = client(weir, key)
    with pytest.raises(error):
        helpers.bulk(es, [{"_index": "logs", "_source": {"message": "nope"}}])
