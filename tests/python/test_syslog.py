"""End to end with real syslog daemons as relays: Debian's ``rsyslog`` and
``syslog-ng``, each started by the test with a config of its own, take the
loghub Linux lines (2,000 lines of a real host's syslog, each given a PRI) on
a TCP input and forward them to weir's ``syslog`` listeners:

* rsyslog over TCP, RFC 3164 (``RSYSLOG_TraditionalForwardFormat``), one per line;
* rsyslog over TLS (``gtls``), RFC 5424, octet-counted;
* syslog-ng's ``network()`` over TCP, RFC 3164, one per line;
* syslog-ng's ``syslog()`` over TLS, RFC 5424, octet-counted.

The TLS cases run the README's rsyslog and syslog-ng snippets, aimed at this
weir. Every line must reach the Datadog backend (a test double) with its host, app
name, process id, severity, facility and message as the line had them.

syslog-ng and rsyslog cannot be installed side by side from Debian (both
provide ``system-log-daemon``): ``tests/run.sh`` installs rsyslog and unpacks
``syslog-ng-core`` into ``target/peers/syslog-ng``, found here through
``$WEIR_SYSLOG_NG`` (or ``syslog-ng`` on the PATH).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import DEADLINE, REPO, WeirProcess, free_port_number, make_pki, run_until_teardown, wait_for

LINUX_LOG = REPO.parent / "shared" / "data" / "loghub" / "Linux_2k.log"
SEVERITIES = ["emerg", "alert", "critical", "error", "warn", "notice", "info", "debug"]
AUTHPRIV = 10
# BSD time, host, tag, [pid], message: 1,992 of the 2,000 lines; the other 8
# ("syslogd 1.4.1: restart.", "combo  -- root[2421]: ...") have no such tag,
# which each relay splits its own way: they are checked by count and host only.
LINE = re.compile(r"^(?P<time>\w{3} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) (?P<app>[^\[: ]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)$")

if os.environ.get("WEIR_SKIP_SYSLOG_PEERS"):
    pytest.skip("rsyslog/syslog-ng could not be installed (see tests/run.sh)", allow_module_level=True)


def readme_block(after: str) -> str:
    """The first fenced block after ``after`` in the README: the TLS snippets are run as the README gives them."""
    text = (REPO / "README.md").read_text()
    rest = text[text.index(after):]
    start = rest.index("```\n") + 4
    return rest[start:rest.index("```", start)]


def loghub_lines() -> list[str]:
    return LINUX_LOG.read_text(encoding="utf-8", errors="replace").splitlines()


class SyslogWeir(WeirProcess):
    """weir with two syslog listeners for the tenant: plain TCP and TLS."""

    pki: dict = {}

    def config_text(self) -> str:
        self.tcp_port, self.tls_port = free_port_number(), free_port_number()
        listeners = f"""  - name: syslog
    address: "127.0.0.1:{self.tcp_port}"
    protocol: syslog
    tenant: {self.tenant}
  - name: syslog-tls
    address: "127.0.0.1:{self.tls_port}"
    protocol: syslog
    tenant: {self.tenant}
    tls:
      cert: "{self.pki['cert']}"
      key: "{self.pki['key']}"
admin:"""
        return super().config_text().replace("admin:", listeners, 1)


@pytest.fixture
def sweir(tmp_path, datadog_backend):
    w = SyslogWeir(tmp_path, datadog_backend.url)
    w.pki = make_pki(tmp_path / "pki")
    yield from run_until_teardown(w)


class Peer:
    """A syslog daemon run in the foreground, stopped with SIGTERM at the end."""

    def __init__(self, name: str, argv: list[str], workdir: Path, in_port: int, env: dict | None = None):
        self.name, self.in_port = name, in_port
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=workdir,
                                         env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, lines: list[str]):
        """Writes each line with a PRI (authpriv, severities in turn) to the daemon's TCP input."""
        def connect():
            try:
                return socket.create_connection(("127.0.0.1", self.in_port), timeout=1)
            except OSError:
                assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
                return None
        c = wait_for(connect, f"{self.name}'s TCP input", diagnostics=self.log)
        with c:
            c.settimeout(DEADLINE)
            c.sendall(b"".join(f"<{AUTHPRIV * 8 + i % 8}>{line}\n".encode() for i, line in enumerate(lines)))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def rsyslog(workdir: Path, target_port: int, tls_ca: Path | None) -> Peer:
    if not shutil.which("rsyslogd"):
        pytest.fail("rsyslogd not found: tests/run.sh installs Debian's rsyslog and rsyslog-gnutls")
    workdir.mkdir(parents=True, exist_ok=True)
    in_port = free_port_number()
    if tls_ca:
        # The README's snippet, aimed at this weir: the certificate's name is localhost.
        snippet = (readme_block("rsyslog (8.2302").replace('target="weir.example.internal"', 'target="127.0.0.1"')
                   .replace("weir.example.internal", "localhost").replace('port="6514"', f'port="{target_port}"')
                   .replace("/etc/ssl/weir-ca.pem", str(tls_ca)))
        ca, action = snippet.split("\n", 1)
    else:
        ca = ""
        action = (f'action(type="omfwd" target="127.0.0.1" port="{target_port}" protocol="tcp" '
                  f'template="RSYSLOG_TraditionalForwardFormat" action.resumeRetryCount="-1" queue.type="LinkedList")')
    (workdir / "rsyslog.conf").write_text(f"""
global(workDirectory="{workdir}")
{ca}
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{in_port}" ruleset="relay")
ruleset(name="relay") {{
{action}
}}
""")
    argv = ["rsyslogd", "-n", "-f", str(workdir / "rsyslog.conf"), "-i", str(workdir / "rsyslog.pid")]
    return Peer("rsyslog", argv, workdir, in_port)


def syslog_ng_binary() -> tuple[str, dict, list[str]]:
    root = os.environ.get("WEIR_SYSLOG_NG") or str(REPO / "target" / "peers" / "syslog-ng")
    unpacked = Path(root) / "usr" / "sbin" / "syslog-ng"
    if unpacked.is_file():
        lib = Path(root) / "usr" / "lib" / "syslog-ng"
        modules = next(p for p in lib.iterdir() if p.is_dir() and p.name[0].isdigit())
        return str(unpacked), {"LD_LIBRARY_PATH": str(lib)}, [f"--module-path={modules}"]
    if shutil.which("syslog-ng"):
        return "syslog-ng", {}, []
    pytest.fail(f"syslog-ng not found at {unpacked} nor on the PATH: tests/run.sh unpacks Debian's syslog-ng-core there")


def syslog_ng(workdir: Path, target_port: int, tls_ca: Path | None) -> Peer:
    binary, env, extra = syslog_ng_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    in_port = free_port_number()
    if tls_ca:
        dest = (readme_block("syslog-ng (3.38)").replace('"weir.example.internal"', '"127.0.0.1"')
                .replace("port(6514)", f"port({target_port})").replace("/etc/ssl/weir-ca.pem", str(tls_ca)))
    else:
        dest = f'destination d_weir {{ network("127.0.0.1" port({target_port}) transport("tcp")); }};'
    (workdir / "syslog-ng.conf").write_text(f"""@version: 3.38
options {{ keep-hostname(yes); chain-hostnames(no); use-dns(no); stats-freq(0); }};
source s_in {{ network(ip("127.0.0.1") port({in_port}) transport("tcp")); }};
{dest}
log {{ source(s_in); destination(d_weir); }};
""")
    argv = [binary, "-F", "-e", "--no-caps", "-f", str(workdir / "syslog-ng.conf"),
            "-R", str(workdir / "persist"), "-p", str(workdir / "pid"), "-c", str(workdir / "ctl"), *extra]
    return Peer("syslog-ng", argv, workdir, in_port, env)


@pytest.mark.parametrize("peer", [rsyslog, syslog_ng], ids=["rsyslog", "syslog-ng"])
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_loghub_linux_lines_arrive_through_a_real_syslog_daemon(sweir, datadog_backend, tmp_path, peer, tls):
    lines = loghub_lines()
    assert len(lines) == 2000
    port = sweir.tls_port if tls else sweir.tcp_port
    relay = peer(tmp_path / "peer", port, sweir.pki["ca"] if tls else None)
    try:
        relay.send(lines)
        wait_for(lambda: len(datadog_backend.logs) >= len(lines), f"{len(lines)} lines at the backend", timeout=60,
                 diagnostics=lambda: f"{relay.name} log:\n{relay.log()}\nweir log:\n{sweir.log()[-4000:]}")
    finally:
        relay.stop()
    assert sweir.metric("weir_received_events_total", intake="syslog", tenant="acme") == 2000
    # Counted once weir has stopped (SIGTERM sends what is queued): a duplicate would be there.
    assert sweir.stop() == 0, sweir.log()
    got = datadog_backend.logs
    assert len(got) == len(lines), "each line once"
    # Relays keep order on one connection; match each line to its event by position.
    checked = 0
    for i, (line, log) in enumerate(zip(lines, got)):
        assert log.get("hostname") == "combo", (line, log)
        m = LINE.match(line)
        if not m:
            assert line.endswith(log["message"].strip()), (line, log)
            continue
        syslog = log["syslog"]
        # Spaces around the text are not kept alike by every relay (rsyslog's
        # RFC 5424 output adds one after the tag's colon; weir drops that one).
        assert log["message"].strip() == m["msg"].strip(), (line, log)
        assert log["service"] == m["app"] and syslog["appname"] == m["app"], (line, log)
        assert syslog.get("procid") == m["pid"], (line, log)
        assert log["status"] == SEVERITIES[i % 8] and syslog["severity"] == i % 8, (line, log)
        assert syslog["facility"] == "authpriv", (line, log)
        # The BSD time of the line (no year: whichever puts it closest to now).
        month_day = time.strftime("%b %d %H:%M:%S", time.gmtime(log["timestamp"] / 1000))
        assert month_day == m["time"].replace("  ", " 0"), (line, log)
        checked += 1
    assert checked == 1992
