"""The admin API's OpenAPI file (proxy/src/admin/openapi.yaml, served by weir at
``/openapi.yaml``) checked against the running server with schemathesis: for
every operation, examples and generated requests (valid and not) must get no
server error, a status the file lists, the content type and the body schema it
gives. The live tail (an answer that never ends) is left to tests/e2e/tail.rs;
the file still describes it, and this test checks that it does."""
from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request

import yaml

from conftest import WeirProcess

TOKEN = "openapi-admin-token"


class AdminWeir(WeirProcess):
    """weir with the control API on, rules and a daily quota to list and change."""

    def config_text(self) -> str:
        text = super().config_text().replace(
            "admin:\n", f"admin:\n  token: {TOKEN}\n", 1)
        return text + """\
    daily_quota: {max_events: 100000, partition_by: [service]}
    exclusion_rules:
      - {name: debug-90, query: "status:debug", sample_rate: 0.9}
exclusion_rules:
  - {name: health, query: "service:synthetics"}
"""


def schemathesis() -> list[str]:
    st = shutil.which("st") or shutil.which("schemathesis")
    return [st] if st else [sys.executable, "-m", "schemathesis.cli"]


def test_the_served_file_is_the_one_in_the_repo_and_lists_every_endpoint(tmp_path, datadog_backend):
    weir = AdminWeir(tmp_path, datadog_backend.url).start()
    try:
        with urllib.request.urlopen(f"{weir.admin_url}/openapi.yaml", timeout=10) as r:
            served = r.read().decode()
            assert r.headers["Content-Type"] == "application/yaml"
        from conftest import REPO
        assert served == (REPO / "proxy/src/admin/openapi.yaml").read_text()
        paths = yaml.safe_load(served)["paths"]
        for path, methods in {
            "/metrics": {"get"}, "/healthz": {"get"}, "/readyz": {"get"}, "/backends": {"get"},
            "/admin/rules": {"get"}, "/admin/rules/{scope}": {"post"},
            "/admin/rules/{scope}/{name}": {"patch", "delete"}, "/admin/quotas": {"get"},
            "/admin/quotas/{tenant}": {"patch"}, "/admin/overrides": {"get", "delete"},
            "/admin/reload": {"post"}, "/admin/config/reload": {"post"}, "/admin/tail": {"get"},
            "/admin/patterns": {"get"}, "/admin/rehydrations": {"get", "post"},
            "/admin/rehydrations/{id}": {"get", "delete"},
        }.items():
            assert methods <= set(paths[path]), (path, set(paths[path]))
    finally:
        weir.stop()


def test_the_server_keeps_to_its_openapi_file(tmp_path, datadog_backend):
    weir = AdminWeir(tmp_path, datadog_backend.url).start()
    try:
        cmd = schemathesis() + [
            "run", f"{weir.admin_url}/openapi.yaml",
            "--url", weir.admin_url,
            "--header", f"Authorization: Bearer {TOKEN}",
            # Not positive_data_acceptance: times, queries and names are checked for meaning
            # (a valid RFC 3339 time, a query that parses, a tenant that exists), which a
            # schema cannot say, so schema-valid data may rightly be refused.
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                        "response_schema_conformance,negative_data_rejection,"
                        "unsupported_method,missing_required_header,ignored_auth",
            "--exclude-path", "/admin/tail",
            "--max-examples", "30",
            "--seed", "17",
            # Hypothesis's own check on how it generates data (the rule name's pattern filters
            # many candidates; which operation trips it moves with any edit of the file under a
            # fixed seed). It says nothing about the server.
            "--suppress-health-check", "filter_too_much",
            "--workers", "1",
            "--request-timeout", "10",
            "--no-color",
        ]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        out = run.stdout + run.stderr
        assert run.returncode == 0, f"schemathesis found failures:\n{out[-20000:]}\n--- weir log tail:\n{weir.log()[-5000:]}"
        # It did run the operations (a run that tested nothing must not pass).
        assert "operations" in out.lower() or "operation" in out.lower(), out[-3000:]
        assert weir.proc.poll() is None, "weir exited during the run"
    finally:
        weir.stop()
