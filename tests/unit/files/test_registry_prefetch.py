# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-prefetch: keeps listed tags warm in the mirror's cache, asking the upstream with HEAD requests only until
a tag changes. Run in-process against a fake hub (a registry on loopback that wants a bearer token and counts every
request; a manifest GET is a counted pull, as on Docker Hub), a fake mirror on a unix socket (or TCP) that serves the
hub's content and caches what it fetches into a real distribution storage layout (world.cache_layout), and the
supervisor's metrics (a loopback page the test writes)."""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import types
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import FILES, basic, free_port
from registry_fakes import certificates as signed_certificates

from world.cache_layout import Layout

PREFETCH = FILES / "registry-prefetch.py"
PROG = "registry-prefetch: "
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
USER, PASSWORD = "hubuser", "s3cret-Passw0rd"


def load_prefetch() -> types.ModuleType:
    """registry-prefetch as a module (its file name is not an importable name)."""
    name = "registry_prefetch"
    if str(FILES) not in sys.path:
        sys.path.insert(0, str(FILES))  # registry_realm, which it imports
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PREFETCH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


pf = load_prefetch()


def sha(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def layer(seed: str, size: int = 1000) -> bytes:
    """Layer content of SIZE bytes, distinct per SEED."""
    return (seed.encode() * (size // max(len(seed), 1) + 1))[:size]


# --- The fake hub -----------------------------------------------------------------------------------------------------

class Hub:
    """A registry's content (manifests as exact bytes, tags, blobs) and what was asked of it: counts["HEAD manifest"],
    counts["GET manifest"] (over HTTP), counts["pull"] (every manifest GET, over HTTP or by the fake mirror: what
    Docker Hub counts), counts["GET blob"], and the token requests with their Authorization header."""

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.tags: dict[tuple[str, str], str] = {}
        self.blobs: dict[str, bytes] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    def store(self, body: bytes, media_type: str) -> str:
        digest = sha(body)
        self.manifests[digest] = (body, media_type)
        return digest

    def image(self, layers: list[bytes], arch: str = "amd64", media_type: str = OCI_MANIFEST) -> str:
        """An image manifest with a config of its own and LAYERS; its digest."""
        config = json.dumps({"architecture": arch, "os": "linux", "layers": [sha(c) for c in layers]}).encode()
        self.blobs[sha(config)] = config
        for content in layers:
            self.blobs[sha(content)] = content
        blob_type = "application/vnd.oci.image.layer.v1.tar+gzip"
        return self.store(json.dumps({
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                       "size": len(config)},
            "layers": [{"mediaType": blob_type, "digest": sha(c), "size": len(c)} for c in layers]}).encode(),
            media_type)

    def push(self, repository: str, tag: str, arches: dict[str, list[bytes]]) -> str:
        """TAG of REPOSITORY naming an index of one image per architecture of ARCHES (and an attestation manifest, for
        no platform); the index's digest."""
        entries: list[dict[str, Any]] = []
        for arch, layers in arches.items():
            variant = {"variant": "v8"} if arch == "arm64" else {}
            child = self.image(layers, arch)
            entries.append({"mediaType": OCI_MANIFEST, "digest": child, "size": len(self.manifests[child][0]),
                            "platform": {"os": "linux", "architecture": arch, **variant}})
        attestation = self.image([layer(f"attestation {tag} {len(self.manifests)}", 100)], "unknown")
        entries.append({"mediaType": OCI_MANIFEST, "digest": attestation, "size": 1,
                        "platform": {"os": "unknown", "architecture": "unknown"}})
        digest = self.store(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode(),
                            OCI_INDEX)
        self.tags[repository, tag] = digest
        return digest

    def push_single(self, repository: str, tag: str, layers: list[bytes]) -> str:
        """TAG of REPOSITORY naming a single Docker schema2 image; its digest."""
        digest = self.image(layers, media_type=DOCKER_MANIFEST)
        self.tags[repository, tag] = digest
        return digest

    def children(self, digest: str) -> dict[str, str]:
        """Architecture -> child manifest digest of index DIGEST."""
        index = json.loads(self.manifests[digest][0])
        return {entry["platform"]["architecture"]: entry["digest"] for entry in index["manifests"]}

    def resolve(self, repository: str, reference: str) -> str | None:
        return reference if reference.startswith("sha256:") else self.tags.get((repository, reference))

    def pull(self, repository: str, reference: str) -> tuple[bytes, str, str] | None:
        """A counted manifest GET: body, media type, digest."""
        self.count("pull")
        return self.lookup(repository, reference)

    def lookup(self, repository: str, reference: str) -> tuple[bytes, str, str] | None:
        """Manifest REFERENCE of REPOSITORY (a HEAD: not counted): body, media type, digest."""
        digest = self.resolve(repository, reference)
        if digest is None or digest not in self.manifests:
            return None
        body, media_type = self.manifests[digest]
        return body, media_type, digest


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
          head: bool = False) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


class HubServer:
    """The hub over HTTP (or HTTPS with TLS) on loopback: /v2/ wants a bearer token from REALM (default: its own
    /token), which hands one to anyone and checks Basic credentials when some come (accounts)."""

    def __init__(self, hub: Hub, tls: ssl.SSLContext | None = None) -> None:
        self.hub = hub
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.realm = f"{self.url}/token"
        self.challenge = "bearer"
        self.accounts = {basic(USER, PASSWORD)}
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the names http.server calls
                server.handle(self, head=False)

            def do_HEAD(self) -> None:
                server.handle(self, head=True)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: BaseHTTPRequestHandler, head: bool) -> None:
        method = "HEAD" if head else "GET"
        path, _sep, query = request.path.partition("?")
        auth = request.headers.get("Authorization", "")
        self.requests.append((method, path))
        if path == "/token":
            self.token_requests.append({"auth": request.headers.get("Authorization"),
                                        "query": dict(urllib.parse.parse_qsl(query))})
            if auth and auth not in self.accounts:
                reply(request, 401, b'{"details": "incorrect username or password"}', head=head)
                return
            token = secrets.token_hex(8)
            self.tokens.add(token)
            reply(request, 200, json.dumps({"token": token}).encode(), {"Content-Type": "application/json"}, head)
            return
        parts = path.split("/")
        if len(parts) < 5 or parts[1] != "v2" or parts[-2] not in ("manifests", "blobs"):
            reply(request, 404, head=head)
            return
        repository, kind, reference = "/".join(parts[2:-2]), parts[-2], parts[-1]
        authorized = (auth.startswith("Bearer ") and auth[len("Bearer "):] in self.tokens
                      if self.challenge == "bearer" else auth in self.accounts)
        if not authorized:
            challenge = (f'Bearer realm="{self.realm}",service="fake-hub",scope="repository:{repository}:pull"'
                         if self.challenge == "bearer" else 'Basic realm="fake hub"')
            reply(request, 401, b'{"errors": [{"code": "UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge}, head)
            return
        if kind == "blobs":
            self.hub.count(f"{method} blob")
            content = self.hub.blobs.get(reference)
            reply(request, 404 if content is None else 200, content or b"", head=head)
            return
        self.hub.count(f"{method} manifest")
        found = self.hub.lookup(repository, reference) if head else self.hub.pull(repository, reference)
        if found is None:
            reply(request, 404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}', head=head)
            return
        body, media_type, digest = found
        reply(request, 200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest}, head)


# --- The fake mirror --------------------------------------------------------------------------------------------------

class ThreadingUnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeMirror:
    """distribution in pull-through mode, as far as the prefetch sees it: serves the hub's manifests and blobs,
    from its storage (a real layout) when cached there, else fetched from the hub (a manifest: a counted pull) and
    cached. Records the requests it gets; status (when set) answers every request with it."""

    def __init__(self, hub: Hub, storage: Path, unix: Path | None, tls: ssl.SSLContext | None = None) -> None:
        self.hub = hub
        self.layout = Layout(storage)
        self.requests: list[tuple[str, str]] = []
        self.status = 0
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.handle(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server: socketserver.BaseServer
        if unix is not None:
            self.server = ThreadingUnixHTTPServer(str(unix), Handler)
            self.url = f"unix:{unix}"
        else:
            port = free_port()
            server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
            server.daemon_threads = True
            if tls is not None:
                server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
            self.server = server
            self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def manifests(self) -> list[str]:
        return [path for _method, path in self.requests if "/manifests/" in path]

    def blobs(self) -> list[str]:
        return [path for _method, path in self.requests if "/blobs/" in path]

    def cached_manifest(self, repository: str, digest: str) -> bytes | None:
        link = self.layout.revision_dir(repository, digest) / "link"
        data = self.layout.blob_dir(digest) / "data"
        return data.read_bytes() if link.exists() and data.exists() else None

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        self.requests.append(("GET", request.path))
        if self.status:
            reply(request, self.status, b'{"errors": [{"code": "UNAVAILABLE"}]}')
            return
        parts = request.path.split("/")
        repository, kind, reference = "/".join(parts[2:-2]), parts[-2], parts[-1]
        if kind == "blobs":
            link = self.layout.layer_dir(repository, reference) / "link"
            if link.exists():
                content = (self.layout.blob_dir(reference) / "data").read_bytes()
            else:
                fetched = self.hub.blobs.get(reference)
                if fetched is None:
                    reply(request, 404)
                    return
                content = fetched
                self.layout.layer(repository, content)
            reply(request, 200, content, {"Content-Type": "application/octet-stream"})
            return
        # By tag, distribution's proxy asks the upstream for the digest (a HEAD: free), then serves it from the cache
        # or fetches it (a counted pull).
        digest = self.hub.resolve(repository, reference)
        if digest is None:
            reply(request, 404)
            return
        body = self.cached_manifest(repository, digest)
        media_type = self.hub.manifests[digest][1]
        if body is None:
            pulled = self.hub.pull(repository, digest)
            assert pulled is not None
            body = pulled[0]
            self.layout.link(self.layout.revision_dir(repository, self.layout.blob(body)), digest)
        if not reference.startswith("sha256:"):
            self.layout.tag(repository, reference, digest)
        reply(request, 200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})


class MetricsServer:
    """The supervisor's metrics page, with the TEXT the test sets."""

    def __init__(self) -> None:
        self.text = "registry_mirror_read_only 0\nregistry_mirror_cache_bytes 0\nregistry_mirror_cache_budget_bytes 0\n"
        self.requests = 0
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page.requests += 1
                reply(self, 200, page.text.encode(), {"Content-Type": "text/plain; version=0.0.4"})

            def log_message(self, *_args: Any) -> None:
                pass

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def set(self, read_only: int = 0, cache: int = 0, budget: int = 0) -> None:
        self.text = (f"# HELP registry_mirror_read_only x\n# TYPE registry_mirror_read_only gauge\n"
                     f"registry_mirror_read_only {read_only}\nregistry_mirror_cache_bytes {cache}\n"
                     f"registry_mirror_cache_budget_bytes {budget}\n")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Rig:
    """A hub, a mirror and the supervisor's metrics, with the prefetch's settings in DIRECTORY."""

    def __init__(self, directory: Path, socket_dir: Path, hub_tls: ssl.SSLContext | None = None,
                 mirror_over_tcp: bool = False, mirror_tls: ssl.SSLContext | None = None) -> None:
        self.directory = directory
        self.storage = directory / "storage"
        self.hub = Hub()
        self.upstream = HubServer(self.hub, hub_tls)
        self.mirror = FakeMirror(self.hub, self.storage, None if mirror_over_tcp or mirror_tls else
                                 socket_dir / "mirror.sock", mirror_tls)
        self.metrics = MetricsServer()
        self.state = directory / "state" / "prefetch.json"
        self.textfile = directory / "textfile" / "registry_prefetch.prom"
        self.state.parent.mkdir()
        self.textfile.parent.mkdir()
        self.images: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def close(self) -> None:
        for server in (self.upstream, self.mirror, self.metrics):
            server.close()

    def settings(self) -> dict[str, Any]:
        return {"mirror": self.mirror.url, "storage": str(self.storage), "upstream": self.upstream.url,
                "metrics_url": self.metrics.url, "images": self.images, "state": str(self.state),
                "textfile": str(self.textfile), "allow_http": self.upstream.url.startswith("http:"), **self.extra}

    def run(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
        """One round: its exit status and journal lines (without the prefix, which every line has)."""
        path = self.directory / "prefetch.json"
        path.write_text(json.dumps(self.settings()), encoding="utf-8")
        self.mirror.requests.clear()
        self.upstream.requests.clear()
        self.hub.counts.clear()
        status = pf.main([str(path)])
        captured = capsys.readouterr()
        lines = (captured.out + captured.err).splitlines()
        assert all(line.startswith(PROG) for line in lines), lines
        return status, [line[len(PROG):] for line in lines]

    def read_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state.read_text(encoding="utf-8"))
        return state

    def read_textfile(self) -> dict[str, float]:
        return {line.split()[0]: float(line.split()[1]) for line in self.textfile.read_text(encoding="utf-8")
                .splitlines() if not line.startswith("#")}


@pytest.fixture(name="socket_dir")
def fixture_socket_dir() -> Iterator[Path]:
    """A short directory for unix sockets (a socket's path has at most 107 bytes; tmp_path's may be longer)."""
    directory = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def fixture_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's loopback servers are asked directly, whatever proxy the machine running the tests names."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(name="rig")
def fixture_rig(tmp_path: Path, socket_dir: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, socket_dir)
    yield rig
    rig.close()


def certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate (with its key) for 127.0.0.1 and localhost (the other-domain realm)."""
    return signed_certificates(directory, dns=("localhost",))


@pytest.fixture(name="tls_rig")
def fixture_tls_rig(tmp_path: Path, socket_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """A rig whose hub speaks HTTPS with a certificate of a CA the prefetch trusts (SSL_CERT_FILE), and the
    prefetch's credentials in the environment (REGISTRY_PROXY_USERNAME / _PASSWORD)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = certificates(certs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setenv("REGISTRY_PROXY_USERNAME", USER)
    monkeypatch.setenv("REGISTRY_PROXY_PASSWORD", PASSWORD)
    rig = Rig(tmp_path, socket_dir, hub_tls=context)
    rig.extra["credentials"] = "REGISTRY_PROXY"
    yield rig
    rig.close()


def alpine(rig: Rig, tags: tuple[str, ...] = ("latest",),
           platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64")) -> None:
    rig.images.append({"repository": "library/alpine", "tags": list(tags), "platforms": list(platforms)})


# --- Rounds -----------------------------------------------------------------------------------------------------------

def test_changed_tag_costs_a_pull_per_manifest_once_then_nothing(rig: Rig,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    shared = layer("shared base layer", 1536 * 1024)
    index = rig.hub.push("library/alpine", "latest", {"amd64": [shared, layer("amd64 top")],
                                                      "arm64": [shared, layer("arm64 top")],
                                                      "s390x": [layer("s390x base"), layer("s390x top")]})
    children = rig.hub.children(index)
    alpine(rig)

    status, lines = rig.run(capsys)

    assert status == 0
    # The upstream: HEAD requests only (the first one refused for want of a token), and a token.
    assert rig.hub.counts["GET manifest"] == 0
    assert rig.hub.counts["HEAD manifest"] == 1
    assert rig.upstream.requests == [("HEAD", "/v2/library/alpine/manifests/latest"), ("GET", "/token"),
                                     ("HEAD", "/v2/library/alpine/manifests/latest")]
    # Through the mirror: the index by tag and each wanted platform's manifest by digest, once each: 3 counted pulls.
    assert rig.mirror.manifests() == ["/v2/library/alpine/manifests/latest",
                                      f"/v2/library/alpine/manifests/{children['amd64']}",
                                      f"/v2/library/alpine/manifests/{children['arm64']}"]
    assert rig.hub.counts["pull"] == 3
    # Each missing blob once: 2 configs, the shared layer, the 2 top layers; nothing of s390x or the attestation.
    blobs = rig.mirror.blobs()
    assert len(blobs) == len(set(blobs)) == 5
    assert f"/v2/library/alpine/blobs/{sha(shared)}" in blobs
    assert f"/v2/library/alpine/blobs/{sha(layer('s390x top'))}" not in blobs
    pulled = sum(len(rig.hub.manifests[d][0]) for d in (index, children["amd64"], children["arm64"])) + sum(
        len(rig.hub.blobs[path.rsplit("/", 1)[1]]) for path in blobs)
    assert lines == [f"warmed library/alpine:latest {index} (3 manifests, 5 blobs, {pf.mib(pulled)})",
                     f"checked 1 tags: 1 changed, 3 manifest pulls, {pf.mib(pulled)}"]
    assert pf.mib(pulled) == "1.5 MiB"
    assert rig.read_textfile()["registry_mirror_prefetch_bytes_pulled"] == pulled

    # The next round: the cache names the upstream's digest; a HEAD, nothing through the mirror, no pull.
    status, lines = rig.run(capsys)
    assert status == 0
    assert rig.mirror.requests == []
    assert rig.hub.counts == {"HEAD manifest": 1}
    assert lines == ["checked 1 tags: 0 changed, 0 manifest pulls, 0.0 MiB"]


def test_unchanged_tag_cached_by_a_client_costs_only_heads(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """A tag a client pulled through the mirror (the layout written as distribution caches it), two tags of one
    repository: a token once, a HEAD per tag, nothing else."""
    index = rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")], "arm64": [layer("b")]})
    rig.hub.tags["library/alpine", "3.20"] = index
    for tag in ("latest", "3.20"):  # a client's pulls of both platforms
        fake_pull(rig, "library/alpine", tag, ("amd64", "arm64"))
    alpine(rig, tags=("latest", "3.20"))

    status, lines = rig.run(capsys)

    assert status == 0
    assert rig.mirror.requests == []
    assert rig.hub.counts == {"HEAD manifest": 2}
    # The first HEAD answered 401: a token, then one HEAD per tag with it.
    assert [method for method, _path in rig.upstream.requests] == ["HEAD", "GET", "HEAD", "HEAD"]
    assert len(rig.upstream.token_requests) == 1
    assert lines == ["checked 2 tags: 0 changed, 0 manifest pulls, 0.0 MiB"]
    assert rig.read_textfile() == pytest.approx({
        "registry_mirror_prefetch_last_run_timestamp_seconds": rig.read_state()["started"],
        "registry_mirror_prefetch_skipped": 0, "registry_mirror_prefetch_tags_checked": 2,
        "registry_mirror_prefetch_tags_changed": 0, "registry_mirror_prefetch_manifests_pulled": 0,
        "registry_mirror_prefetch_blobs_pulled": 0, "registry_mirror_prefetch_bytes_pulled": 0,
        "registry_mirror_prefetch_errors": 0})


def fake_pull(rig: Rig, repository: str, tag: str, arches: tuple[str, ...]) -> None:
    """A client's pull of TAG through the mirror, for ARCHES: the index, the platforms' manifests, their blobs."""
    index = rig.hub.tags[repository, tag]
    paths = [f"/v2/{repository}/manifests/{tag}"]
    for arch in arches:
        child = rig.hub.children(index)[arch]
        manifest = json.loads(rig.hub.manifests[child][0])
        paths.append(f"/v2/{repository}/manifests/{child}")
        paths += [f"/v2/{repository}/blobs/{blob['digest']}" for blob in [manifest["config"], *manifest["layers"]]]
    for path in paths:
        client_get(rig.mirror, path)


def client_get(mirror: FakeMirror, path: str) -> None:
    """GET PATH from the mirror as a client would (through its unix socket)."""
    connection = pf.UnixHTTPConnection(mirror.url[len("unix:"):], 5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, path
    finally:
        connection.close()


def test_a_changed_tag_pulls_only_the_manifests_and_blobs_that_changed(rig: Rig,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    base = layer("base")
    rig.hub.push("library/alpine", "latest", {"amd64": [base, layer("amd64 v1")], "arm64": [base, layer("arm64")]})
    alpine(rig)
    assert rig.run(capsys)[0] == 0
    # A new release rebuilt amd64 only: its index and amd64 manifest are new, arm64's is the same.
    index = rig.hub.push("library/alpine", "latest", {"amd64": [base, layer("amd64 v2")],
                                                      "arm64": [base, layer("arm64")]})
    amd64 = rig.hub.children(index)["amd64"]
    new_config = json.loads(rig.hub.manifests[amd64][0])["config"]["digest"]

    status, lines = rig.run(capsys)

    assert status == 0
    assert rig.mirror.manifests() == ["/v2/library/alpine/manifests/latest", f"/v2/library/alpine/manifests/{amd64}"]
    assert rig.hub.counts["pull"] == 2
    assert sorted(rig.mirror.blobs()) == sorted([f"/v2/library/alpine/blobs/{new_config}",
                                                 f"/v2/library/alpine/blobs/{sha(layer('amd64 v2'))}"])
    assert lines[0].startswith(f"warmed library/alpine:latest {index} (2 manifests, 2 blobs, ")
    assert lines[1].startswith("checked 1 tags: 1 changed, 2 manifest pulls, ")
    # And then it is warm.
    rig.run(capsys)
    assert rig.mirror.requests == []
    assert rig.hub.counts["pull"] == 0


def test_a_platform_added_to_the_settings_is_warmed_although_the_tag_did_not_change(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    index = rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")], "arm64": [layer("b")]})
    alpine(rig, platforms=("linux/amd64",))
    rig.run(capsys)
    rig.images.clear()
    alpine(rig, platforms=("linux/amd64", "linux/arm64/v8"))

    status, lines = rig.run(capsys)

    arm64 = rig.hub.children(index)["arm64"]
    assert status == 0
    assert rig.mirror.manifests() == [f"/v2/library/alpine/manifests/{arm64}"]  # the index is read from the storage
    assert len(rig.mirror.blobs()) == 2
    assert lines[0].startswith(f"warmed library/alpine:latest {index} (1 manifests, 2 blobs, ")
    assert lines[1].startswith("checked 1 tags: 0 changed, 1 manifest pulls, ")


def test_a_single_image_manifest(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    digest = rig.hub.push_single("example/tool", "v1", [layer("one"), layer("two")])
    rig.images.append({"repository": "example/tool", "tags": ["v1"], "platforms": ["linux/arm64"]})

    status, lines = rig.run(capsys)

    assert status == 0
    assert rig.mirror.manifests() == ["/v2/example/tool/manifests/v1"]
    assert len(rig.mirror.blobs()) == 3
    assert lines[0].startswith(f"warmed example/tool:v1 {digest} (1 manifests, 3 blobs, ")
    rig.run(capsys)
    assert rig.mirror.requests == []


def test_a_mirror_over_tcp(tmp_path: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = Rig(tmp_path, socket_dir, mirror_over_tcp=True)
    try:
        rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
        rig.images.append({"repository": "alpine", "tags": ["latest"], "platforms": ["linux/amd64"]})
        status, lines = rig.run(capsys)
        assert status == 0
        assert rig.mirror.url.startswith("http://127.0.0.1:")
        assert len(rig.mirror.manifests()) == 2
        assert lines[-1].startswith("checked 1 tags: 1 changed, 2 manifest pulls, ")
    finally:
        rig.close()


@pytest.fixture(name="tls_files")
def fixture_tls_files(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A CA, a server certificate it signed and a server context presenting that certificate."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = certificates(certs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return ca, cert, context


@pytest.mark.parametrize("check", ["pin_file", "ca_file", "both"])
def test_an_https_mirror(tmp_path: Path, socket_dir: Path, capsys: pytest.CaptureFixture[str],
                         tls_files: tuple[Path, Path, ssl.SSLContext], check: str) -> None:
    """The mirror's port over TLS: its certificate pinned (the one registry-tls-sync gave it), or verified with a
    CA, or both."""
    ca, cert, context = tls_files
    rig = Rig(tmp_path, socket_dir, mirror_tls=context)
    try:
        rig.extra.update({"pin_file": str(cert)} if check == "pin_file" else {"ca_file": str(ca)} if
                         check == "ca_file" else {"pin_file": str(cert), "ca_file": str(ca)})
        rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
        alpine(rig, platforms=("linux/amd64",))
        status, lines = rig.run(capsys)
        assert status == 0
        assert rig.mirror.url.startswith("https://127.0.0.1:")
        pulled = rig.read_state()["totals"]["bytes_pulled"]
        assert lines[-1] == f"checked 1 tags: 1 changed, 2 manifest pulls, {pf.mib(pulled)}"
    finally:
        rig.close()


def test_an_https_mirror_presenting_another_certificate(tmp_path: Path, socket_dir: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        tls_files: tuple[Path, Path, ssl.SSLContext]) -> None:
    """Not the pinned certificate: no request is sent."""
    ca, _cert, context = tls_files
    rig = Rig(tmp_path, socket_dir, mirror_tls=context)
    try:
        rig.extra["pin_file"] = str(ca)  # a certificate, but not the mirror's
        rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
        alpine(rig, platforms=("linux/amd64",))
        status, lines = rig.run(capsys)
        assert status == 1
        assert rig.mirror.requests == []
        assert lines[0] == (f"library/alpine:latest: the mirror ({rig.mirror.url}) failed (the server's certificate "
                            f"is not the one in {ca})")
        (tmp_path / "empty.pem").write_text("", encoding="ascii")
        rig.extra["pin_file"] = str(tmp_path / "empty.pem")
        status, lines = rig.run(capsys)
        assert status == 1
        assert "cannot read the pinned certificate" in lines[0]
        assert rig.mirror.requests == []
    finally:
        rig.close()


# --- Doing nothing ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("metrics", "said"), [
    ({"read_only": 1}, "the mirror serves its cache read-only"),
    ({"cache": 95, "budget": 100}, "within 10% of its budget"),
    ({"cache": 90, "budget": 100}, "within 10% of its budget"),
])
def test_nothing_while_read_only_or_near_the_budget(rig: Rig, capsys: pytest.CaptureFixture[str],
                                                    metrics: dict[str, int], said: str) -> None:
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)
    rig.metrics.set(**metrics)

    status, lines = rig.run(capsys)

    assert status == 0
    assert rig.upstream.requests == []
    assert rig.mirror.requests == []
    assert len(lines) == 1
    assert said in lines[0]
    assert lines[0].endswith(": not prefetching")
    assert rig.read_state()["skipped"]
    assert rig.read_textfile()["registry_mirror_prefetch_skipped"] == 1
    assert rig.read_textfile()["registry_mirror_prefetch_tags_checked"] == 0


def test_a_skipped_round_keeps_what_the_last_one_learnt(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    index = rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)
    rig.run(capsys)
    rig.metrics.set(read_only=1)
    rig.run(capsys)
    assert rig.read_state()["tags"]["library/alpine:latest"]["digest"] == index


def test_nothing_when_the_metrics_do_not_answer(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)
    rig.metrics.close()

    status, lines = rig.run(capsys)

    assert status == 0
    assert rig.upstream.requests == []
    assert rig.mirror.requests == []
    assert len(lines) == 1
    assert "do not answer" in lines[0]


def test_a_round_stops_warming_at_the_budget(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """The cache may grow by 0.9 x budget - cache bytes: a tag whose blobs would pass that is not warmed."""
    rig.hub.push("library/small", "latest", {"amd64": [layer("small", 1000)]})
    rig.hub.push("library/large", "latest", {"amd64": [layer("large", 100_000)]})
    rig.images += [{"repository": "library/small", "tags": ["latest"], "platforms": ["linux/amd64"]},
                   {"repository": "library/large", "tags": ["latest"], "platforms": ["linux/amd64"]}]
    rig.metrics.set(cache=10_000, budget=100_000)  # 80 000 bytes to go

    status, lines = rig.run(capsys)

    assert status == 0
    assert [path for path in rig.mirror.blobs() if "large" in path] == []
    assert sha(layer("large", 100_000)) not in " ".join(rig.mirror.blobs())
    assert lines[0].startswith("warmed library/small:latest")
    assert lines[1] == ("library/large:latest: not warmed: its blobs (0.1 MiB) would bring the cache past 90% of its "
                        "budget (after 2 manifests, 0 blobs, 0.0 MiB)")
    assert rig.read_state()["tags"]["library/large:latest"]["warmed"] is False
    assert rig.read_textfile()["registry_mirror_prefetch_errors"] == 0


# --- Failures ---------------------------------------------------------------------------------------------------------

def test_upstream_down_every_tag_failed(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig, tags=("latest", "edge"))
    rig.upstream.close()

    status, lines = rig.run(capsys)

    assert status == 1
    assert rig.mirror.requests == []
    assert [line.split(":", 2)[:2] for line in lines[:2]] == [["library/alpine", "latest"], ["library/alpine", "edge"]]
    assert "failed" in lines[0]
    assert lines[2] == "checked 0 tags: 0 changed, 0 manifest pulls, 0.0 MiB, 2 failed"
    assert rig.read_textfile()["registry_mirror_prefetch_errors"] == 2
    assert rig.read_state()["tags"]["library/alpine:edge"]["error"]


def test_one_tag_failing_does_not_stop_the_others(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    index = rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig, tags=("gone", "latest"))

    status, lines = rig.run(capsys)

    assert status == 0
    assert lines[0] == "library/alpine:gone: the upstream answered HEAD with 404"
    assert lines[1].startswith(f"warmed library/alpine:latest {index}")
    assert lines[2].endswith(", 1 failed")
    state = rig.read_state()
    assert state["totals"] == {"tags_checked": 1, "tags_changed": 1, "manifests_pulled": 2, "blobs_pulled": 2,
                               "bytes_pulled": state["totals"]["bytes_pulled"], "errors": 1}
    assert state["tags"]["library/alpine:latest"]["warmed"] is True
    assert state["tags"]["library/alpine:latest"]["digest"] == index


def test_mirror_failing(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)
    rig.mirror.status = 503

    status, lines = rig.run(capsys)

    assert status == 1
    assert lines[0] == ("library/alpine:latest: the mirror answered 503 UNAVAILABLE for the manifest "
                        "library/alpine:latest")
    assert rig.hub.counts["pull"] == 0


def test_mirror_socket_missing(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)
    rig.mirror.close()
    os.unlink(rig.mirror.url[len("unix:"):])

    status, lines = rig.run(capsys)

    assert status == 1
    assert lines[0].startswith(f"library/alpine:latest: the mirror ({rig.mirror.url}) failed (")


# --- Credentials ------------------------------------------------------------------------------------------------------

def no_secret_anywhere(rig: Rig, lines: list[str]) -> None:
    for text in ("\n".join(lines), rig.state.read_text(encoding="utf-8"), rig.textfile.read_text(encoding="utf-8")):
        assert PASSWORD not in text
        assert USER not in text
        assert basic(USER, PASSWORD).split()[1] not in text


def test_credentials_go_to_the_upstreams_realm_over_https(tls_rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    tls_rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(tls_rig)

    status, lines = tls_rig.run(capsys)

    assert status == 0
    assert [request["auth"] for request in tls_rig.upstream.token_requests] == [basic(USER, PASSWORD)]
    assert tls_rig.upstream.token_requests[0]["query"] == {"service": "fake-hub",
                                                           "scope": "repository:library/alpine:pull"}
    assert lines[-1].startswith("checked 1 tags: 1 changed")
    no_secret_anywhere(tls_rig, lines)


def test_no_credentials_to_a_realm_of_another_domain(tls_rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    tls_rig.upstream.realm = f"https://localhost:{tls_rig.upstream.port}/token"
    tls_rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(tls_rig)

    status, lines = tls_rig.run(capsys)

    assert status == 0
    assert [request["auth"] for request in tls_rig.upstream.token_requests] == [None]
    assert lines[0] == (f"not sending the upstream credentials to the token realm https://localhost:"
                        f"{tls_rig.upstream.port} (not https, or not the upstream's domain): asking for an anonymous "
                        f"token")
    assert lines[-1].startswith("checked 1 tags: 1 changed")
    no_secret_anywhere(tls_rig, lines)


def test_no_credentials_over_plain_http(rig: Rig, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_PROXY_USERNAME", USER)
    monkeypatch.setenv("REGISTRY_PROXY_PASSWORD", PASSWORD)
    rig.extra["credentials"] = "REGISTRY_PROXY"
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)

    status, lines = rig.run(capsys)  # the realm is the hub's own, over http

    assert status == 0
    assert [request["auth"] for request in rig.upstream.token_requests] == [None]
    assert "not sending the upstream credentials" in lines[0]
    no_secret_anywhere(rig, lines)

    rig.upstream.challenge = "basic"  # a tier mirror behind htpasswd, over http: not answered either
    status, lines = rig.run(capsys)
    assert status == 1
    assert lines[0] == ("library/alpine:latest: the upstream asks for Basic authentication over plain http: "
                        "not sending it")
    assert all(method == "HEAD" for method, _path in rig.upstream.requests)
    no_secret_anywhere(rig, lines)


def test_basic_authentication_over_https(tls_rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    tls_rig.upstream.challenge = "basic"
    tls_rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(tls_rig)

    status, lines = tls_rig.run(capsys)

    assert status == 0
    assert tls_rig.hub.counts["HEAD manifest"] == 1  # the one with the credentials (the first was refused)
    assert lines[-1].startswith("checked 1 tags: 1 changed")
    no_secret_anywhere(tls_rig, lines)


def test_wrong_credentials(tls_rig: Rig, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_PROXY_PASSWORD", "not-" + PASSWORD)
    tls_rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(tls_rig)

    status, lines = tls_rig.run(capsys)

    assert status == 1
    assert lines[0] == (f"library/alpine:latest: the token realm https://127.0.0.1:{tls_rig.upstream.port} "
                        f"answered 401")
    assert "not-" + PASSWORD not in "\n".join(lines)


def test_credentials_allowed_without_the_public_suffix_list(tmp_path: Path) -> None:
    assert pf.load_public_suffixes(str(tmp_path / "missing.dat.gz")) is None
    assert pf.credentials_allowed("https://registry-1.docker.io", "https://auth.docker.io/t", None)
    assert not pf.credentials_allowed("https://docker.io", "https://auth.docker.io/t", None)


def test_read_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert pf.read_credentials("", {"X_USERNAME": "u", "X_PASSWORD": "p"}) is None
    assert pf.read_credentials("X", {"X_USERNAME": "u", "X_PASSWORD": "p"}) == ("u", "p")
    assert pf.read_credentials("X", {}) is None
    assert capsys.readouterr().err == ""
    assert pf.read_credentials("X", {"X_USERNAME": "u"}) is None
    assert capsys.readouterr().err == (f"{PROG}only one of X_USERNAME and X_PASSWORD is set: asking the upstream "
                                       f"anonymously\n")


# --- Settings ---------------------------------------------------------------------------------------------------------

def valid_settings() -> dict[str, Any]:
    return {"mirror": "unix:/run/registry/docker-hub.sock", "storage": "/var/lib/registry",
            "upstream": "https://registry-1.docker.io", "credentials": "REGISTRY_PROXY",
            "metrics_url": "http://127.0.0.1:5002/metrics", "state": "/var/lib/registry-prefetch/state.json",
            "textfile": "/var/lib/node_exporter/registry_prefetch.prom", "_comment": "by the role",
            "images": [{"repository": "library/alpine", "tags": ["latest", "3.20"],
                        "platforms": ["linux/amd64", "linux/arm64"]}]}


def test_settings() -> None:
    settings = pf.parse_settings(valid_settings(), machine="x86_64")
    assert settings.mirror == "unix:/run/registry/docker-hub.sock"
    assert settings.images == (pf.Image("library/alpine", ("latest", "3.20"),
                                        (pf.Platform("linux", "amd64"), pf.Platform("linux", "arm64"))),)
    assert settings.timeout == 60
    assert settings.allow_http is False
    data = valid_settings()
    data["images"] = [{"repository": "alpine", "tags": ["latest"]},
                      {"repository": "ghcr/x-y__z.w", "tags": ["1"], "platforms": []}]
    data.update(mirror="https://192.168.128.1:5000/", ca_file="/etc/registry/ca.pem", textfile=None, timeout=5)
    settings = pf.parse_settings(data, machine="aarch64")
    assert settings.images[0] == pf.Image("library/alpine", ("latest",), (pf.Platform("linux", "arm64"),))
    assert settings.images[1] == pf.Image("ghcr/x-y__z.w", ("1",), (pf.Platform("linux", "arm64"),))
    assert (settings.mirror, settings.ca_file, settings.textfile) == ("https://192.168.128.1:5000",
                                                                      "/etc/registry/ca.pem", "")
    data.update(pin_file="/run/registry/server.crt")
    assert pf.parse_settings(data).pin_file == "/run/registry/server.crt"
    data = valid_settings()
    data.update(upstream="http://127.0.0.1:5000", allow_http=True)
    assert pf.parse_settings(data).upstream == "http://127.0.0.1:5000"


@pytest.mark.parametrize(("change", "key"), [
    ({"mirror": None}, "mirror:"),
    ({"mirror": "unix:relative.sock"}, "mirror:"),
    ({"mirror": "ftp://x"}, "mirror:"),
    ({"mirror": "https://host:5000/path"}, "mirror:"),
    ({"mirror": "https://user:pw@host:5000"}, "mirror:"),
    ({"mirror": "https://host:99999"}, "mirror:"),
    ({"ca_file": "/etc/ca.pem"}, "ca_file:"),  # with a unix mirror
    ({"storage": "relative"}, "storage:"),
    ({"upstream": "http://registry-1.docker.io"}, "upstream:"),  # without allow_http
    ({"upstream": 5}, "upstream:"),
    ({"allow_http": "yes"}, "allow_http:"),
    ({"credentials": "lower-case"}, "credentials:"),
    ({"credentials": 1}, "credentials:"),
    ({"metrics_url": "127.0.0.1:5002"}, "metrics_url:"),
    ({"state": 1}, "state:"),
    ({"textfile": "/x/metrics.txt"}, "textfile:"),
    ({"timeout": 0}, "timeout:"),
    ({"timeout": True}, "timeout:"),
    ({"images": {}}, "images:"),
    ({"images": ["alpine"]}, "images[0]:"),
    ({"images": [{"repository": "Alpine", "tags": ["x"]}]}, "images[0].repository:"),
    ({"images": [{"repository": "a/../b", "tags": ["x"]}]}, "images[0].repository:"),
    ({"images": [{"repository": "/abs", "tags": ["x"]}]}, "images[0].repository:"),
    ({"images": [{"tags": ["x"]}]}, "images[0].repository:"),
    ({"images": [{"repository": "a/b", "tags": []}]}, "images[0].tags:"),
    ({"images": [{"repository": "a/b", "tags": ["ok", ".hidden"]}]}, "images[0].tags[1]:"),
    ({"images": [{"repository": "a/b", "tags": ["a/b"]}]}, "images[0].tags[0]:"),
    ({"images": [{"repository": "a/b", "tags": ["x", "x"]}]}, "images[0].tags[1]:"),
    ({"images": [{"repository": "a/b", "tags": ["x"], "platforms": "linux/amd64"}]}, "images[0].platforms:"),
    ({"pin_file": "/run/registry/server.crt"}, "pin_file:"),  # with a unix mirror
    ({"mirror": "http://127.0.0.1:5000", "pin_file": "/run/registry/server.crt"}, "pin_file:"),
    ({"mirror": "https://127.0.0.1:5000", "pin_file": "server.crt"}, "pin_file:"),
    ({"images": [{"repository": "a/b", "tags": ["x"], "platforms": ["amd64"]}]}, "images[0].platforms[0]:"),
    ({"images": [{"repository": "a/b", "tags": ["x"], "platforms": [3]}]}, "images[0].platforms[0]:"),
    ({"images": [{"repository": "a/b", "tags": ["x"], "platform": ["linux/amd64"]}]}, "images[0].platform:"),
    ({"images": [{"repository": "alpine", "tags": ["x"]}, {"repository": "library/alpine", "tags": ["y"]}]},
     "images[1].repository:"),
    ({"unknown_key": 1}, "unknown_key:"),
])
def test_settings_errors_name_the_key(change: dict[str, Any], key: str) -> None:
    data = {**valid_settings(), **change}
    with pytest.raises(pf.SettingsError) as caught:
        pf.parse_settings(data, machine="x86_64")
    assert str(caught.value).startswith(key)


@pytest.mark.parametrize("key", ["mirror", "storage", "upstream", "metrics_url", "images", "state"])
def test_settings_missing_key(key: str) -> None:
    data = valid_settings()
    del data[key]
    with pytest.raises(pf.SettingsError, match=f"^{key}: missing$"):
        pf.parse_settings(data)


def test_unknown_machine_needs_platforms() -> None:
    data = valid_settings()
    data["images"] = [{"repository": "a/b", "tags": ["x"]}]
    with pytest.raises(pf.SettingsError, match=r"^images\[0\]\.platforms: this host's machine 'mips'"):
        pf.parse_settings(data, machine="mips")


def test_main_with_invalid_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "settings.json"
    data = valid_settings()
    path.write_text(json.dumps(data), encoding="utf-8")
    assert pf.main(["--check-settings", str(path)]) == 0
    data["timeout"] = -1
    path.write_text(json.dumps(data), encoding="utf-8")
    assert pf.main([str(path)]) == 2
    assert pf.main(["--check-settings", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{PROG}invalid settings {path}: timeout: -1 is not a number of "
                                                    f"seconds (0 < timeout <= 3600)"] * 2
    path.write_text("{", encoding="utf-8")
    assert pf.main([str(path)]) == 2
    assert pf.main([]) == 2
    assert pf.main([str(tmp_path / "missing.json")]) == 2


def test_the_program_runs_as_a_program(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**valid_settings(), "images": "none"}), encoding="utf-8")
    done = subprocess.run([sys.executable, str(PREFETCH), str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert done.stderr == (f"{PROG}invalid settings {path}: images: a list of {{repository, tags, platforms}} is "
                           f"required\n")


# --- Pure functions ---------------------------------------------------------------------------------------------------

def test_platforms() -> None:
    assert pf.parse_platform("linux/arm64/v8") == pf.Platform("linux", "arm64")
    assert pf.parse_platform("linux/arm/v7") == pf.Platform("linux", "arm", "v7")
    assert pf.parse_platform("linux/x86_64") == pf.Platform("linux", "amd64")
    assert str(pf.Platform("linux", "arm", "v7")) == "linux/arm/v7"
    for text in ("linux", "linux/", "linux/arm/v7/x", "Linux/amd64", ""):
        with pytest.raises(ValueError, match="OS/ARCHITECTURE"):
            pf.parse_platform(text)
    assert pf.host_platform("x86_64") == pf.Platform("linux", "amd64")
    assert pf.host_platform("aarch64") == pf.Platform("linux", "arm64")
    assert pf.host_platform("armv7l") == pf.Platform("linux", "arm", "v7")


def test_select_children() -> None:
    def entry(digest: str, os_name: str, arch: str, variant: str = "") -> dict[str, Any]:
        platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
        return {"mediaType": OCI_MANIFEST, "digest": f"sha256:{digest * 64}", "size": 10, "platform": platform}

    index = pf.parse_manifest(json.dumps({"schemaVersion": 2, "manifests": [
        entry("a", "linux", "amd64"), entry("b", "linux", "arm", "v6"), entry("c", "linux", "arm", "v7"),
        entry("d", "linux", "arm64", "v8"), entry("e", "unknown", "unknown"), entry("f", "windows", "amd64")]})
        .encode(), "application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8")
    assert index.is_index
    wanted = [pf.Platform("linux", "arm64"), pf.Platform("linux", "arm", "v7"), pf.Platform("linux", "amd64"),
              pf.Platform("linux", "s390x"), pf.Platform("linux", "amd64", "v2")]
    chosen, absent = pf.select_children(index, wanted)
    assert [child.digest[7] for child in chosen] == ["d", "c", "a"]
    assert absent == [pf.Platform("linux", "s390x"), pf.Platform("linux", "amd64", "v2")]
    chosen, _absent = pf.select_children(index, [pf.Platform("linux", "arm"), pf.Platform("linux", "arm", "v6")])
    assert [child.digest[7] for child in chosen] == ["b"]  # the first match of each, once


def test_parse_manifest() -> None:
    digest = "sha256:" + "1" * 64
    image = pf.parse_manifest(json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "x", "digest": digest, "size": 5},
        "layers": [{"mediaType": "l", "digest": "sha256:" + "2" * 64, "size": 7},
                   {"mediaType": "foreign", "digest": "sha256:" + "3" * 64, "size": 9, "urls": ["https://x"]}]})
        .encode())
    assert not image.is_index
    assert [(blob.digest[7], blob.size) for blob in image.blobs] == [("1", 5), ("2", 7)]
    # No mediaType: the content type, else the fields tell.
    assert pf.parse_manifest(b'{"schemaVersion": 2, "manifests": []}').is_index
    assert not pf.parse_manifest(b'{"schemaVersion": 2, "config": {"digest": "sha256:%s", "size": 1}, "layers": []}'
                                 % (b"a" * 64)).is_index
    for body, message in (
            (b"not json", "not JSON"), (b"[]", "not a JSON object"),
            (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', "unsupported manifest"),
            (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}', "no manifests list"),
            (b'{"schemaVersion": 2, "mediaType": "%s", "layers": []}' % OCI_MANIFEST.encode(), "config"),
            (b'{"schemaVersion": 2, "manifests": [{"digest": "../../etc", "size": 1}]}', "no valid digest"),
            (b'{"schemaVersion": 2, "manifests": [{"digest": "%s", "size": -1}]}' % digest.encode(), "no valid size")):
        with pytest.raises(ValueError, match=message):
            pf.parse_manifest(body)


def test_storage(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "storage")
    content = layer("x")
    image = layout.image("library/alpine", "alpine", [content], tag="latest")
    storage = pf.Storage(str(layout.root))
    assert storage.tag_digest("library/alpine", "latest") == image
    assert storage.tag_digest("library/alpine", "other") is None
    assert storage.tag_digest("library/other", "latest") is None
    assert storage.manifest("library/alpine", image) is not None
    assert storage.manifest("library/other", image) is None  # stored, but not linked in that repository
    assert storage.has_blob("library/alpine", sha(content))
    assert not storage.has_blob("library/other", sha(content))
    assert not storage.has_blob("library/alpine", "sha512:" + "0" * 128)
    (layout.blob_dir(sha(content)) / "data").unlink()
    assert not storage.has_blob("library/alpine", sha(content))  # linked, but its data is gone


def test_read_link(tmp_path: Path) -> None:
    path = tmp_path / "link"
    assert pf.read_link(str(path)) is None
    path.write_text("sha256:" + "a" * 64 + "\n", encoding="ascii")
    assert pf.read_link(str(path)) == "sha256:" + "a" * 64
    path.write_text("sha256:../../x", encoding="ascii")
    assert pf.read_link(str(path)) is None
    path.write_bytes(b"\xff" * 10)
    assert pf.read_link(str(path)) is None


def test_gate() -> None:
    metrics = pf.parse_metrics("# HELP registry_mirror_read_only x\nregistry_mirror_read_only 0\n"
                               'registry_mirror_cache_bytes 2.5e+02\nregistry_mirror_cache_budget_bytes 1000\n'
                               'labelled{x="1"} 5\nbroken\nbad_value x\n')
    assert metrics == {"registry_mirror_read_only": 0, "registry_mirror_cache_bytes": 250,
                       "registry_mirror_cache_budget_bytes": 1000}
    assert pf.gate(metrics) == ("", 650)
    assert pf.gate({"registry_mirror_read_only": 0}) == ("", None)
    assert pf.gate({"registry_mirror_read_only": 0, "registry_mirror_cache_budget_bytes": 0,
                    "registry_mirror_cache_bytes": 10**12}) == ("", None)
    assert pf.gate({"registry_mirror_read_only": 1})[0].startswith("the mirror serves its cache read-only")
    assert "do not say" in pf.gate({})[0]


def test_state_and_textfile_are_written_whole(rig: Rig, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    renames: list[tuple[str, str]] = []
    replace = os.replace

    def recording(source: str, target: str) -> None:
        renames.append((str(source), str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording)
    index = rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig, platforms=("linux/amd64",))
    rig.state.write_text(json.dumps({"tags": {"library/gone:latest": {"digest": "x"}}}), encoding="utf-8")

    status, _lines = rig.run(capsys)

    assert status == 0
    renames = [(source, target) for source, target in renames if "storage" not in target]  # the fake mirror's
    assert [target for _source, target in renames] == [str(rig.state), str(rig.textfile)]
    for source, target in renames:
        assert os.path.dirname(source) == os.path.dirname(target)
        assert not source.endswith(".prom")
    assert sorted(os.listdir(rig.state.parent)) == [rig.state.name]
    assert sorted(os.listdir(rig.textfile.parent)) == [rig.textfile.name]
    assert oct(rig.textfile.stat().st_mode & 0o777) == oct(0o644)
    state = rig.read_state()
    assert set(state["tags"]) == {"library/alpine:latest"}  # a tag no longer listed is forgotten
    entry = state["tags"]["library/alpine:latest"]
    assert entry["digest"] == index
    assert entry["changed"] is True
    assert entry["warmed"] is True
    assert entry["warmed_at"] == entry["checked"] == state["started"]
    assert (entry["manifests"], entry["blobs"]) == (2, 2)
    textfile = rig.read_textfile()
    assert textfile["registry_mirror_prefetch_manifests_pulled"] == 2
    assert textfile["registry_mirror_prefetch_blobs_pulled"] == 2
    assert textfile["registry_mirror_prefetch_bytes_pulled"] == state["totals"]["bytes_pulled"] == entry["bytes"]
    assert textfile["registry_mirror_prefetch_tags_changed"] == 1
    assert set(textfile) == set(pf.METRICS)
    text = rig.textfile.read_text(encoding="utf-8")
    assert "# TYPE registry_mirror_prefetch_errors gauge" in text

    rig.run(capsys)  # the next round: unchanged; when it was last warmed stays
    entry = rig.read_state()["tags"]["library/alpine:latest"]
    assert entry["warmed"] is False
    assert entry["warmed_at"] == state["started"]


def test_results_that_cannot_be_written(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    rig.hub.push("library/alpine", "latest", {"amd64": [layer("a")]})
    alpine(rig)
    rig.extra["state"] = str(rig.directory / "missing" / "state.json")
    status, lines = rig.run(capsys)
    assert status == 1
    assert any(line.startswith(f"cannot write {rig.directory / 'missing' / 'state.json'}") for line in lines)


def test_unix_connection_refused(socket_dir: Path) -> None:
    connection = pf.UnixHTTPConnection(str(socket_dir / "nothing.sock"), 1)
    with pytest.raises(OSError):
        connection.request("GET", "/v2/")
    assert connection.sock is None
