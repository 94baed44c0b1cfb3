# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake Docker Hub's front (world/hub/front.py and the modules beside it), run as the program it is on loopback
ports, in front of a small fake backend instead of distribution: the token service (JWTs signed with the state's key),
the /v2/ proxy (realms and locations rewritten, counting per identity, the rate limit, anonymous access switched off),
the admin API, the release file server, and the counters kept across a restart."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
FRONT = REPO / "world" / "hub" / "front.py"
USER, TOKEN = "ci-user", "dckr_pat_unit-test"
BACKEND_REALM = "https://hub.actuated.test/token"
MANIFEST = b'{"schemaVersion": 2, "layers": []}'
BLOB = b"layer-data " * 1000
RELEASE = b"release tarball bytes"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the hub signs its tokens with openssl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Backend:
    """distribution's part, as the front sees it: /v2/ challenges, one manifest, one blob (sent chunked), an upload
    whose Location names the backend, everything else 404. Records what reached it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                backend.answer(self)

            def do_HEAD(self) -> None:
                backend.answer(self)

            def do_POST(self) -> None:
                backend.answer(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def body(request: BaseHTTPRequestHandler) -> bytes:
        """A chunked request body (the front forwards an upload so); nothing for any other."""
        body = b""
        if request.headers.get("Transfer-Encoding") == "chunked":
            while size := int(request.rfile.readline().strip() or b"0", 16):
                body += request.rfile.read(size)
                request.rfile.readline()
            request.rfile.readline()
        return body

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        body = self.body(request)
        self.requests.append({"method": request.command, "path": request.path, "body": body,
                              "headers": dict(request.headers.items())})
        headers = {"Content-Type": "application/json"}
        chunks: list[bytes] = []
        if request.path == "/v2/":
            status, data = 401, b"{}"
            headers["Www-Authenticate"] = f'Bearer realm="{BACKEND_REALM}",service="registry.docker.io"'
        elif request.path == "/v2/library/alpine/manifests/latest":
            status, data = 200, MANIFEST
        elif request.path == "/v2/library/alpine/blobs/sha256:" + "b" * 64:
            status, data, chunks = 200, b"", [BLOB[:4000], BLOB[4000:]]
        elif request.path == "/v2/library/alpine/blobs/uploads/" and request.command == "POST":
            status, data = 202, b""
            headers["Location"] = f"http://127.0.0.1:{self.port}/v2/library/alpine/blobs/uploads/u1?_state=x"
        else:
            status, data = 404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}'
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        if chunks:
            request.send_header("Transfer-Encoding", "chunked")
        else:
            request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if request.command == "HEAD":
            return
        if chunks:
            for chunk in chunks:
                request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            request.wfile.write(b"0\r\n\r\n")
        else:
            request.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Hub:
    """front.py as start.sh runs it, on loopback ports, with the files of its contract in a temporary directory."""

    def __init__(self, root: Path, backend: Backend) -> None:
        self.root = root
        self.cert = root / "hub.crt"
        self.tls_port, self.release_port = free_port(), free_port()
        self.env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HUB_STATE": str(root / "state"),
                    "HUB_RUN": str(root / "run"), "HUB_RUNTIME": str(root / "runtime" / "runtime.json"),
                    "HUB_CERT": str(self.cert), "HUB_KEY": str(root / "hub.key"),
                    "HUB_RELEASES": str(root / "releases"), "HUB_TLS_PORT": str(self.tls_port),
                    "HUB_RELEASE_PORT": str(self.release_port), "HUB_LISTEN": "127.0.0.1",
                    "HUB_BACKEND_PORT": str(backend.port), "HUB_USERNAME": USER, "HUB_TOKEN": TOKEN,
                    "HUB_RATE_LIMIT": "0"}
        self.context = ssl.create_default_context(cafile=str(self.cert)) if self.cert.exists() else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = root / "front.log"

    def start(self) -> None:
        with self.output.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(FRONT)], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.context = ssl.create_default_context(cafile=str(self.cert))
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.tls_port), timeout=1), \
                        socket.create_connection(("127.0.0.1", self.release_port), timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, self.output.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, "the front does not listen"
                time.sleep(0.05)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
             releases: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One request on a new connection: (status, headers with lower-case names, body)."""
        if releases:
            conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", self.release_port, timeout=10)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.tls_port, timeout=10, context=self.context)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, _headers, body = self.call(method, path, **kwargs)
        return status, json.loads(body)

    def token(self, scope: str = "repository:library/alpine:pull", user: str | None = USER,
              password: str = TOKEN) -> str:
        headers = {"Authorization": basic(user, password)} if user else {}
        status, answer = self.json("GET", f"/token?service=registry.docker.io&scope={scope}", headers=headers)
        assert status == 200, answer
        return str(answer["token"])

    def stats(self) -> dict[str, Any]:
        status, stats = self.json("GET", "/_world/stats")
        assert status == 200
        return dict(stats)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def unpadded(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(name="files", scope="module")
def fixture_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The front's certificate and the token-signing key (as start.sh makes it), made once."""
    root = tmp_path_factory.mktemp("hub-files")
    for name, subject, extra in (("hub", "/CN=127.0.0.1", ["-addext", "subjectAltName=IP:127.0.0.1"]),
                                 ("signing", "/CN=token signer", [])):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject, *extra,
                "-keyout", str(root / f"{name}.key"), "-out", str(root / f"{name}.crt"))
    return root


def new_hub(root: Path, files: Path, backend: Backend) -> Hub:
    for name in ("hub.crt", "hub.key"):
        shutil.copy(files / name, root / name)
    (root / "state" / "auth").mkdir(parents=True)
    for name in ("signing.crt", "signing.key"):
        shutil.copy(files / name, root / "state" / "auth" / name)
    (root / "state" / "seed.json").write_text('{"library/alpine:latest": "sha256:1"}', encoding="utf-8")
    (root / "run").mkdir()
    (root / "releases" / "v1.0.0").mkdir(parents=True)
    (root / "releases" / "v1.0.0" / "registry_1.0.0_linux_amd64.tar.gz").write_bytes(RELEASE)
    hub = Hub(root, backend)
    hub.start()
    return hub


@pytest.fixture(name="backend", scope="module")
def fixture_backend() -> Iterator[Backend]:
    backend = Backend()
    yield backend
    backend.close()


@pytest.fixture(name="shared", scope="module")
def fixture_shared(tmp_path_factory: pytest.TempPathFactory, files: Path, backend: Backend) -> Iterator[Hub]:
    hub = new_hub(tmp_path_factory.mktemp("hub"), files, backend)
    yield hub
    hub.stop()


@pytest.fixture(name="hub")
def fixture_hub(shared: Hub, backend: Backend) -> Hub:
    """The module's hub with zeroed counters, its first configuration and a fresh backend record."""
    assert shared.json("POST", "/_world/config", body=b'{"rate_limit": 0, "anonymous": true}')[0] == 200
    assert shared.json("POST", "/_world/reset")[0] == 200
    backend.requests.clear()
    return shared


def test_tokens_grant_pull_only_to_the_account_or_anonymous_and_are_signed_with_the_state_s_key(hub: Hub) -> None:
    token = hub.token("repository:library/alpine:pull,push")
    header, claims, signature = token.split(".")
    head = json.loads(unpadded(header))
    signing_cert = hub.root / "state" / "auth" / "signing.crt"
    assert head["alg"] == "RS256" and head["x5c"][0] in signing_cert.read_text(encoding="utf-8").replace("\n", "")
    payload = json.loads(unpadded(claims))
    assert (payload["sub"], payload["iss"], payload["aud"]) == (USER, "auth.docker.io", "registry.docker.io")
    assert payload["access"] == [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}]
    assert payload["exp"] - payload["iat"] == 300
    (hub.root / "signed").write_bytes(f"{header}.{claims}".encode())
    (hub.root / "signature").write_bytes(unpadded(signature))
    openssl("x509", "-in", str(signing_cert), "-pubkey", "-noout", "-out", str(hub.root / "public.pem"))
    openssl("dgst", "-sha256", "-verify", str(hub.root / "public.pem"), "-signature", str(hub.root / "signature"),
            str(hub.root / "signed"))
    anonymous = json.loads(unpadded(hub.token("repository:library/alpine:push", user=None).split(".")[1]))
    assert anonymous["sub"] == "anonymous" and anonymous["access"][0]["actions"] == []
    status, denied = hub.json("GET", "/token?scope=repository:x:pull", headers={"Authorization": basic(USER, "no")})
    assert status == 401 and denied["errors"][0]["code"] == "UNAUTHORIZED"
    form = f"grant_type=password&username={USER}&password={TOKEN}&scope=repository:library/alpine:pull"
    status, oauth = hub.json("POST", "/token", body=form.encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and oauth["scope"] == "repository:library/alpine:pull"
    assert hub.json("POST", "/token", body=b"grant_type=refresh_token")[0] == 400
    identities = hub.stats()["identities"]
    assert identities[USER]["tokens"] == 2 and identities["anonymous"]["tokens"] == 1
    assert identities[f"invalid:{USER}"]["tokens_denied"] == 1
    assert TOKEN not in (hub.root / "front.log").read_text(encoding="utf-8")


def test_the_proxy_rewrites_the_realm_to_the_name_the_client_used(hub: Hub) -> None:
    for host, realm in (("hub.actuated.test", "https://auth.actuated.test/token"),
                        ("hub.actuated.test:15443", "https://auth.actuated.test:15443/token"),
                        (None, f"https://127.0.0.1:{hub.tls_port}/token")):
        status, headers, _body = hub.call("GET", "/v2/", headers={"Host": host} if host else {})
        assert status == 401
        assert headers["www-authenticate"] == f'Bearer realm="{realm}",service="registry.docker.io"'
    assert hub.stats()["identities"]["anonymous"]["requests"] == 3


def test_pulls_are_counted_per_identity_as_docker_hub_counts_them(hub: Hub, backend: Backend) -> None:
    token = hub.token()
    status, headers, body = hub.call("GET", "/v2/library/alpine/manifests/latest", headers=bearer(token))
    assert (status, body) == (200, MANIFEST) and "ratelimit-limit" not in headers
    assert hub.call("HEAD", "/v2/library/alpine/manifests/latest", headers=bearer(token))[0] == 200
    status, _headers, body = hub.call("GET", "/v2/library/alpine/blobs/sha256:" + "b" * 64, headers=bearer(token))
    assert (status, body) == (200, BLOB)
    assert hub.call("GET", "/v2/library/alpine/manifests/missing", headers=bearer(token))[0] == 404
    counters = hub.stats()["identities"][USER]
    assert {key: counters[key] for key in ("manifest_get", "manifest_head", "blob_get", "requests", "tokens")} == \
        {"manifest_get": 1, "manifest_head": 1, "blob_get": 1, "requests": 4, "tokens": 1}
    assert counters["manifests"] == {"library/alpine:latest": 1}
    assert counters["bytes"] == len(MANIFEST) + len(BLOB) + len(b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
    assert hub.stats()["blobs"] == {"sha256:" + "b" * 64: 1}
    forwarded = backend.requests[0]["headers"]
    assert forwarded["Host"] == f"127.0.0.1:{backend.port}" and forwarded["Authorization"] == "Bearer " + token
    recent = hub.stats()["recent"]
    assert [(r["method"], r["status"], r["identity"]) for r in recent] == [
        ("GET", 200, USER), ("GET", 200, USER), ("HEAD", 200, USER), ("GET", 200, USER), ("GET", 404, USER)]


def test_the_rate_limit_answers_429_once_an_identity_has_its_pulls(hub: Hub) -> None:
    status, config = hub.json("POST", "/_world/config", body=b'{"rate_limit": 2}')
    assert status == 200 and config == {"rate_limit": 2, "anonymous": True}
    token = hub.token()
    path = "/v2/library/alpine/manifests/latest"
    answers = [hub.call("GET", path, headers=bearer(token)) for _pull in range(3)]
    assert [status for status, _headers, _body in answers] == [200, 200, 429]
    assert [headers["ratelimit-remaining"] for _status, headers, _body in answers] == ["1;w=21600", "0;w=21600",
                                                                                       "0;w=21600"]
    assert answers[0][1]["ratelimit-limit"] == "2;w=21600" and answers[0][1]["docker-ratelimit-source"] == USER
    assert json.loads(answers[2][2])["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert hub.call("HEAD", path, headers=bearer(token))[0] == 200  # HEADs are not limited
    counters = hub.stats()["identities"][USER]
    assert (counters["manifest_get"], counters["rate_limited"], counters["manifest_head"]) == (2, 1, 1)
    assert hub.json("POST", "/_world/reset")[0] == 200
    assert hub.call("GET", path, headers=bearer(token))[0] == 200  # counts only go down with a reset


def test_with_anonymous_access_off_anonymous_tokens_are_refused(hub: Hub, backend: Backend) -> None:
    anonymous = hub.token(user=None)
    assert hub.json("POST", "/_world/config", body=b'{"anonymous": false}')[1]["anonymous"] is False
    assert hub.call("GET", "/token?scope=repository:library/alpine:pull")[0] == 401
    status, headers, _body = hub.call("GET", "/v2/library/alpine/manifests/latest", headers=bearer(anonymous))
    assert status == 401 and headers["www-authenticate"].endswith(',scope="repository:library/alpine:pull"')
    assert hub.call("GET", "/v2/library/alpine/manifests/latest", headers=bearer(hub.token()))[0] == 200
    counters = hub.stats()["identities"]["anonymous"]
    assert (counters["tokens"], counters["tokens_denied"], counters["manifest_get"]) == (1, 1, 0)
    assert len(backend.requests) == 1  # only the account's pull reached the backend


def test_uploads_are_forwarded_whole_and_their_location_names_the_front(hub: Hub, backend: Backend) -> None:
    body = b"x" * 300_000
    conn = http.client.HTTPSConnection("127.0.0.1", hub.tls_port, timeout=10, context=hub.context)
    conn.request("POST", "/v2/library/alpine/blobs/uploads/", body=iter([body[:100_000], body[100_000:]]),
                 headers={"Host": "hub.actuated.test", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 202
    assert response.getheader("Location") == "https://hub.actuated.test/v2/library/alpine/blobs/uploads/u1?_state=x"
    assert [(r["method"], r["body"]) for r in backend.requests] == [("POST", body)]


def test_the_admin_api(hub: Hub) -> None:
    status, ready = hub.json("GET", "/_world/ready")
    assert status == 503 and ready == {"ready": False, "seeded": False, "backend": True}
    (hub.root / "run" / "seeded").touch()
    try:
        assert hub.json("GET", "/_world/ready") == (200, {"ready": True, "seeded": True, "backend": True})
    finally:
        (hub.root / "run" / "seeded").unlink()
    assert hub.json("GET", "/_world/images") == (200, {"library/alpine:latest": "sha256:1"})
    for change, error in ((b'{"rate_limit": -1}', "rate_limit must be an integer"),
                          (b'{"rate_limit": true}', "rate_limit must be an integer"),
                          (b'{"anonymous": "no"}', "anonymous must be true or false"),
                          (b'{"burst": 1}', "unknown keys: burst"), (b"[]", "expected a JSON object")):
        status, answer = hub.json("POST", "/_world/config", body=change)
        assert status == 400 and error in answer["error"], (change, answer)
    assert hub.json("GET", "/_world/config") == (200, {"rate_limit": 0, "anonymous": True})
    assert hub.json("GET", "/_world/nothing")[0] == 404
    assert hub.call("GET", "/elsewhere")[0] == 404
    stats = hub.stats()
    assert [r["path"] for r in stats["recent"]] == ["/elsewhere"]  # admin requests are not listed
    assert hub.json("GET", "/_world/stats?recent=0")[1]["recent"] == []


def test_the_release_server_serves_and_counts_files(hub: Hub) -> None:
    path = "/v1.0.0/registry_1.0.0_linux_amd64.tar.gz"
    assert hub.call("GET", path, releases=True)[::2] == (200, RELEASE)
    status, headers, body = hub.call("HEAD", path, releases=True)
    assert (status, headers["content-length"], body) == (200, str(len(RELEASE)), b"")
    assert hub.call("GET", "/v1.0.0/missing.sha256", releases=True)[0] == 404
    expected = {path: {"GET": 1, "HEAD": 1, "errors": 0}, "/v1.0.0/missing.sha256": {"GET": 0, "HEAD": 0, "errors": 1}}
    assert json.loads(hub.call("GET", "/_stats", releases=True)[2]) == expected
    assert hub.stats()["releases"] == expected
    assert hub.call("POST", "/_reset", releases=True)[0] == 204
    assert json.loads(hub.call("GET", "/_stats", releases=True)[2]) == {}


def test_counters_and_config_survive_a_restart(tmp_path: Path, files: Path, backend: Backend) -> None:
    hub = new_hub(tmp_path, files, backend)
    try:
        token = hub.token()
        assert hub.call("GET", "/v2/library/alpine/manifests/latest", headers=bearer(token))[0] == 200
        assert hub.json("POST", "/_world/config", body=b'{"rate_limit": 5}')[0] == 200
    finally:
        assert hub.stop() == 0
    hub.start()
    try:
        stats = hub.stats()
        assert stats["config"] == {"rate_limit": 5, "anonymous": True}
        assert stats["identities"][USER]["manifests"] == {"library/alpine:latest": 1}
        assert hub.call("GET", "/v2/library/alpine/manifests/latest", headers=bearer(token))[0] == 200
        assert hub.stats()["identities"][USER]["manifest_get"] == 2
    finally:
        assert hub.stop() == 0
