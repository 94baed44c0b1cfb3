# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""world/sources.py: the source tarball first (no request leaves the machine), else the official release files at the
role's own URL, checked against their .sha256, else a stop that names both ways, before anything is written."""
from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from world import gorelease, sources
from world.util import WorldError

VERSION = "3.1.1"


class Releases(http.server.ThreadingHTTPServer):
    """Release files on loopback, in the upstream layout, with a count of the requests."""

    files: dict[str, bytes]
    requests: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Releases

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        del args


@pytest.fixture
def releases() -> Iterator[Releases]:
    server = Releases(("127.0.0.1", 0), Handler)
    server.files, server.requests = {}, []
    for arch in ("amd64", "arm64"):
        data = f"registry {VERSION} {arch}".encode()
        name = gorelease.release_name(VERSION, arch)
        server.files[f"/v{VERSION}/{name}"] = data
        server.files[f"/v{VERSION}/{name}.sha256"] = hashlib.sha256(data).hexdigest().encode() + b"\n"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def defaults(tmp_path: Path, releases: Releases) -> Path:
    """A copy of the role's defaults whose release URL is the loopback server (with a trailing / and a comment)."""
    path = tmp_path / "defaults.yml"
    path.write_text(f'---\nregistry_mirror_version: "{VERSION}"\n'
                    f'registry_mirror_release_base_url: "http://127.0.0.1:{releases.server_address[1]}/"  # releases\n',
                    encoding="utf-8")
    return path


@pytest.fixture
def no_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    missing = tmp_path / "missing.tar.gz"
    monkeypatch.setenv(gorelease.SOURCE_ENV, str(missing))
    return missing


def test_the_role_default_url_is_read_from_the_role() -> None:
    assert sources.official_url(VERSION, "arm64") == (
        "https://github.com/distribution/distribution/releases/download/v3.1.1/registry_3.1.1_linux_arm64.tar.gz")


def test_a_source_tarball_is_used_without_any_request(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      releases: Releases, defaults: Path) -> None:
    source = tmp_path / "distribution-v3.1.1.tar.gz"
    source.write_bytes(b"source")
    monkeypatch.setenv(gorelease.SOURCE_ENV, str(source))
    assert sources.decide(VERSION, cache=tmp_path / "official", defaults=defaults) == ("source", source)
    assert releases.requests == []
    assert not (tmp_path / "official").exists()


def test_without_a_source_the_official_files_are_downloaded_once_and_checked(
        tmp_path: Path, releases: Releases, defaults: Path, no_source: Path) -> None:
    way, where = sources.decide(VERSION, cache=tmp_path / "official", defaults=defaults)
    assert way == "official" and where == tmp_path / "official" / f"v{VERSION}"
    for arch in ("amd64", "arm64"):
        name = gorelease.release_name(VERSION, arch)
        assert (where / name).read_bytes() == releases.files[f"/v{VERSION}/{name}"]
        assert (where / f"{name}.sha256").read_bytes() == releases.files[f"/v{VERSION}/{name}.sha256"]
    assert len(releases.requests) == 4
    assert sources.decide(VERSION, cache=tmp_path / "official", defaults=defaults) == (way, where)
    assert len(releases.requests) == 4  # the second time from the cache


def test_a_tarball_that_does_not_match_its_digest_is_refused(tmp_path: Path, releases: Releases, defaults: Path,
                                                             no_source: Path) -> None:
    name = gorelease.release_name(VERSION, "arm64")
    releases.files[f"/v{VERSION}/{name}"] = b"tampered"
    with pytest.raises(WorldError, match=f"{name}: its sha256 is {hashlib.sha256(b'tampered').hexdigest()}"):
        sources.decide(VERSION, cache=tmp_path / "official", defaults=defaults)
    assert not (tmp_path / "official" / f"v{VERSION}" / name).exists()


def test_with_neither_the_world_stops_naming_both_ways_and_writes_nothing(tmp_path: Path, releases: Releases,
                                                                          defaults: Path, no_source: Path) -> None:
    releases.files.clear()
    with pytest.raises(WorldError) as raised:
        sources.decide(VERSION, cache=tmp_path / "official", defaults=defaults)
    message = str(raised.value)
    assert str(no_source) in message and gorelease.SOURCE_ENV in message
    assert "Not Found" in message and f"access to http://127.0.0.1:{releases.server_address[1]}/" in message
    assert not (tmp_path / "official").exists()
