# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's disk budget and listening socket, run as the program it is (registry_fakes) on a real
distribution storage layout (cache_layout): collections (beside the serving registry, LRU by the registry's pull
notifications, what the journal and the metrics say), and the socket it hands to each registry."""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    EVENTS_SECRET_HEADER,
    FILES,
    STARTUP,
    FakeUpstream,
    SupervisorRun,
    events_secret,
    free_port,
    pull_through,
    read_only,
    wait_for,
)

from world.cache_layout import Layout, layer_bytes

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_cache

MIB = 1024 * 1024
COLLECTED = "cache collection done"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def supervise(runs: list[SupervisorRun], tmp_path: Path, upstream: FakeUpstream, **settings: Any) -> SupervisorRun:
    """A supervisor with its listener on a free port and the cache in tmp_path/storage."""
    settings.setdefault("port", free_port())
    settings.setdefault("storage", str(tmp_path / "storage"))
    supervisor = SupervisorRun(tmp_path, upstream, **settings)
    runs.append(supervisor)
    wait_for("the supervisor's listener", lambda: get(supervisor, "/metrics"), 5)
    return supervisor


def get(supervisor: SupervisorRun, path: str) -> str | None:
    """GET PATH from the supervisor's listener; None when it does not answer."""
    port = json.loads(supervisor.settings.read_text(encoding="utf-8"))["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return str(response.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def post(supervisor: SupervisorRun, body: bytes, path: str = "/events", secret: str | None = None) -> int:
    """POST BODY to the supervisor's listener as distribution's notifications do, with the secret its registry got
    (or SECRET; "": none); the HTTP status."""
    port = json.loads(supervisor.settings.read_text(encoding="utf-8"))["port"]
    headers = {"Content-Type": "application/vnd.docker.distribution.events.v2+json"}
    if secret is None:
        secret = events_secret(supervisor.serving())
    if secret:
        headers[EVENTS_SECRET_HEADER] = secret
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def pulled(repository: str, digest: str, media_type: str = MANIFEST, tag: str = "") -> bytes:
    """A notification envelope: REPOSITORY's DIGEST pulled."""
    target = {"mediaType": media_type, "digest": digest, "repository": repository, "size": 1}
    if tag:
        target["tag"] = tag
    return json.dumps({"events": [{"id": "1", "action": "pull", "target": target}]}).encode()


def value(text: str, name: str) -> float:
    """The value of metric NAME (no labels) in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in:\n{text}")


def image(layout: Layout, number: int) -> str:
    """library/NUMBER (one, two, ...): a tagged image with a 1 MiB layer of its own on a shared 0.5 MiB base layer."""
    name = ("one", "two", "three", "four")[number - 1]
    return layout.image(f"library/{name}", name, [layer_bytes(0, MIB // 2), layer_bytes(number, MIB)], tag="latest")


def three_images(layout: Layout) -> dict[str, str]:
    """library/one..three (3.5 MiB in all)."""
    return {name: image(layout, number) for number, name in enumerate(("one", "two", "three"), 1)}


def test_a_collection_evicts_the_least_recently_pulled_images_while_the_registry_serves(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    layout = Layout(tmp_path / "storage")
    digests = {"one": image(layout, 1), "two": image(layout, 2)}  # 2.5 MiB: under the budget
    supervisor = supervise(runs, tmp_path, upstream, budget_mb=3, low_water_percent=70, collect_grace=0,
                           cache_check_interval=0.3)
    first = supervisor.serving()
    assert pull_through(first)
    # All links are as old; "one" is pulled now: "two" and "three" (the first by name among equals) go, down to 70 %.
    assert post(supervisor, pulled("library/one", digests["one"], tag="latest")) == 200
    time.sleep(1)
    assert supervisor.said("cache collection") is None, "a collection under the budget"
    image(layout, 3)
    wait_for("the collection", lambda: supervisor.said(COLLECTED), 10)
    journal = supervisor.journal()
    assert "above the budget of 3.0 MiB" in journal, journal
    assert "evicted 2 images: library/three@" in journal and "library/two@" in journal, journal
    assert "library/one@" not in journal.split(COLLECTED)[1].split("\n")[0]
    # The registry was not replaced: it served throughout.
    assert supervisor.starts() == [first] and supervisor.first("signal", first["pid"]) is None
    assert not layout.tag_dir("library/two", "latest").exists()
    assert layout.tag_dir("library/one", "latest").exists()
    text = get(supervisor, "/metrics") or ""
    assert value(text, "registry_mirror_cache_evictions_total") == 2
    assert value(text, "registry_mirror_cache_collections_total") == 1
    assert 2 * MIB <= value(text, "registry_mirror_cache_reclaimed_bytes_total") < 2.1 * MIB
    assert value(text, "registry_mirror_cache_budget_bytes") == 3 * MIB
    assert value(text, "registry_mirror_read_only") == 0
    # The usage times are kept in the cache directory for the next start, without the evicted images.
    supervisor.stop()
    saved = json.loads((layout.root / "registry-supervisor-usage.json").read_text(encoding="utf-8"))["used"]
    assert list(saved) == [f"library/one@{digests['one']}"]


def test_an_image_the_layout_writes_brings_its_bytes_last_and_whole(tmp_path: Path) -> None:
    # What the collections below rely on while the supervisor checks the cache every 0.2 s: an image written meanwhile
    # adds its bytes only once it is complete, as when a pull through the mirror caches it (the manifest first, each
    # file whole), so that the collection its bytes start sees the whole image.
    layout = Layout(tmp_path / "storage")
    three_images(layout)
    before = registry_cache.cache_bytes(layout.root)
    seen: list[registry_cache.Inventory] = []  # what a check sees after each file written (its time set, renamed)

    def looking(call: Callable[..., None]) -> Callable[..., None]:
        def then_scan(*args: Any) -> None:
            call(*args)
            seen.append(registry_cache.scan(layout.root))
        return then_scan

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", looking(os.replace))
        patch.setattr(os, "utime", looking(os.utime))
        digest = layout.image("library/four", "four", [layer_bytes(4, 6 * MIB)], tag="latest")
    # The manifest and the config (under 1 KiB) first, the 6 MiB layer last.
    assert all(inventory.total_bytes() < before + 1024 for inventory in seen[:-1])
    assert seen[-1].total_bytes() > before + 6 * MIB
    four = [image for image in seen[-1].images if image.repository == "library/four"]
    assert [(image.digest, image.tags, len(image.blobs)) for image in four] == [(digest, ("latest",), 3)]
    assert not registry_cache.check(layout.root)
    assert not [path for path in layout.files() if path.endswith(".tmp")]


def test_the_budget_crossed_starts_a_collection_by_itself(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    layout = Layout(tmp_path / "storage")
    three_images(layout)
    supervisor = supervise(runs, tmp_path, upstream, budget_mb=8, cache_check_interval=0.2, collect_grace=0)
    time.sleep(1)
    assert supervisor.said("cache collection") is None, "a collection under the budget"
    assert value(get(supervisor, "/metrics") or "", "registry_mirror_cache_bytes") >= 3.5 * MIB
    # 9.5 MiB once its 6 MiB layer is stored, its last write (cache_layout): the collection sees the whole image.
    layout.image("library/four", "four", [layer_bytes(4, 6 * MIB)], tag="latest")
    wait_for("the collection", lambda: supervisor.said(COLLECTED), 10)
    assert "above the budget of 8.0 MiB" in supervisor.journal()
    text = get(supervisor, "/metrics") or ""
    assert value(text, "registry_mirror_cache_bytes") <= 8 * MIB * 0.8


def test_a_collection_while_the_upstream_is_away_keeps_the_read_only_registry(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    layout = Layout(tmp_path / "storage")
    three_images(layout)
    orphan = layout.blob(b"left by an expired manifest")
    supervisor = supervise(runs, tmp_path, upstream, collect_grace=0)
    supervisor.serving()
    upstream.set("down")
    local = supervisor.serving(count=2)
    assert read_only(local)
    supervisor.proc.send_signal(10)
    wait_for("the collection", lambda: supervisor.said(COLLECTED), 10)
    assert "deleted 1 blobs" in supervisor.journal()
    assert not layout.blob_dir(orphan).exists()
    time.sleep(0.5)
    assert supervisor.starts()[-1] == local and supervisor.first("signal", local["pid"]) is None


def test_a_failed_collection_never_takes_the_mirror_down(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "docker").write_text("not a directory", encoding="utf-8")
    supervisor = supervise(runs, tmp_path, upstream, collect_grace=0)
    first = supervisor.serving()
    supervisor.proc.send_signal(10)
    wait_for("the failure", lambda: supervisor.said("ERROR: cache collection failed"), 10)
    time.sleep(0.5)
    assert supervisor.proc.poll() is None
    assert supervisor.starts() == [first] and supervisor.first("signal", first["pid"]) is None


def test_notifications_other_than_manifest_pulls_are_ignored_and_bad_ones_refused(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    Layout(tmp_path / "storage")
    supervisor = supervise(runs, tmp_path, upstream)
    digest = "sha256:" + "a" * 64
    assert post(supervisor, pulled("library/blob", digest, media_type="application/octet-stream")) == 200
    assert post(supervisor, pulled("library/one", digest).replace(b'"pull"', b'"push"')) == 200
    assert post(supervisor, pulled("library/one", digest, media_type="application/vnd.oci.image.index.v1+json")) == 200
    assert post(supervisor, b"{not json") == 400
    assert post(supervisor, pulled("library/one", digest), path="/other") == 404
    assert get(supervisor, "/other") is None
    supervisor.stop()
    saved = json.loads((tmp_path / "storage" / "registry-supervisor-usage.json").read_text(encoding="utf-8"))["used"]
    assert list(saved) == [f"library/one@{digest}"]


def test_distributions_metrics_follow_the_supervisors(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            body = b'registry_proxy_requests_total{type="manifest"} 3\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        supervisor = supervise(runs, tmp_path, upstream,
                               registry_metrics_url=f"http://127.0.0.1:{server.server_address[1]}/metrics")
        text = get(supervisor, "/metrics") or ""
    finally:
        server.shutdown()
    assert "# TYPE registry_mirror_cache_bytes gauge" in text
    assert text.index("registry_mirror_read_only") < text.index('registry_proxy_requests_total{type="manifest"} 3')


def test_with_socket_activation_no_connection_is_refused_while_registries_replace_each_other(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = SupervisorRun(tmp_path, upstream, activation=True)
    runs.append(supervisor)
    supervisor.serving()
    host, port = supervisor.addr.rsplit(":", 1)
    refused, connected, stop = [], [], threading.Event()

    def connect() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=2):
                    connected.append(time.time())
            except OSError as exc:
                refused.append(repr(exc))
            time.sleep(0.005)

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        for count, mode in ((2, "down"), (3, "up"), (4, "down"), (5, "up")):  # four switches
            upstream.set(mode)
            supervisor.serving(count=count, timeout=10)
    finally:
        stop.set()
        thread.join()
    assert not refused, refused[:5]
    assert len(connected) > 50
    activated = supervisor.events("activated")
    assert len(activated) == 5 and {record["addr"] for record in activated} == {supervisor.addr}
    assert all(start["env"].get("LISTEN_FDS") == "1" for start in supervisor.starts())


@pytest.mark.parametrize("drain", [0.3, 0.0])
def test_with_socket_activation_no_request_is_dropped_while_registries_replace_each_other(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun], drain: float) -> None:
    # Clients that take 50 ms between connecting and sending their request (a TLS handshake), four at a time, through
    # four switches. The old registry serves what it accepted for switch_drain seconds while new connections wait for
    # the next one; without that time (DRAIN 0) requests reach the old registry after its SIGTERM and are dropped, as
    # distribution drops them.
    supervisor = SupervisorRun(tmp_path, upstream, activation=True, switch_drain=drain)
    runs.append(supervisor)
    supervisor.serving()
    host, port = supervisor.addr.rsplit(":", 1)
    answered: list[bytes] = []
    failed: list[bytes | str] = []
    stop = threading.Event()

    def request() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=5) as conn:
                    time.sleep(0.05)
                    conn.sendall(b"GET\n")
                    reply = conn.recv(64)
                (answered if reply.strip().isdigit() else failed).append(reply)
            except OSError as exc:
                failed.append(repr(exc))

    threads = [threading.Thread(target=request) for _number in range(4)]
    for thread in threads:
        thread.start()
    try:
        for count, mode in ((2, "down"), (3, "up"), (4, "down"), (5, "up")):
            upstream.set(mode)
            supervisor.serving(count=count, timeout=10)
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    served_by = {int(reply) for reply in answered}
    assert len(served_by) == 5, (served_by, supervisor.events("start"))  # every registry served some
    assert supervisor.journal().count("switch done: ") == 4, supervisor.journal()
    dropped = supervisor.events("dropped")
    if drain:
        assert not failed and not dropped, (failed[:5], dropped)
        assert not any(supervisor.said(words) for words in ("cannot open a second socket", "cannot steer")), \
            supervisor.journal()
    else:  # the case the drain exists for: the test sees it when there is one (dropped, or cut off as it exits)
        assert failed, len(answered)


def test_with_socket_activation_connections_made_while_the_first_registry_starts_wait_for_the_next(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    # Docker Hub away at start: the pull-through registry never accepts (distribution exits when it cannot reach the
    # upstream), and the read-only one replaces it on the same socket, where the early connections waited.
    upstream.set("down")
    answered: list[bytes] = []
    failed: list[bytes | str] = []
    stop = threading.Event()
    supervisor = SupervisorRun(tmp_path, upstream, activation=True)
    runs.append(supervisor)
    host, port = supervisor.addr.rsplit(":", 1)

    def request() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=STARTUP) as conn:
                    conn.sendall(b"GET\n")
                    reply = conn.recv(64)
            except ConnectionRefusedError:  # the supervisor does not listen yet
                time.sleep(0.01)
                continue
            except OSError as exc:
                failed.append(repr(exc))
                continue
            (answered if reply.strip().isdigit() else failed).append(reply)

    threads = [threading.Thread(target=request) for _number in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for("the supervisor to listen", lambda: supervisor.events("start"), STARTUP)
        read_only_registry = supervisor.serving(count=2, timeout=STARTUP)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert read_only(read_only_registry)
    assert not failed, failed[:5]
    assert answered and {int(reply) for reply in answered} == {read_only_registry["pid"]}
    assert "switch done: serving the cache read-only" in supervisor.journal()
    assert not supervisor.said("cannot open a second socket")


def test_without_socket_activation_each_registry_binds_the_address_itself(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = SupervisorRun(tmp_path, upstream)
    runs.append(supervisor)
    supervisor.serving()
    assert not supervisor.events("activated")
    assert "LISTEN_FDS" not in supervisor.starts()[0]["env"]


def test_the_address_taken_stops_the_supervisor_with_the_reason(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        supervisor = SupervisorRun(tmp_path, upstream, listen=f"127.0.0.1:{taken.getsockname()[1]}")
        runs.append(supervisor)
        assert supervisor.proc.wait(timeout=10) == 1
    assert "ERROR: cannot listen on 127.0.0.1:" in supervisor.journal()
    assert "waiting up to 0.5 s" in supervisor.journal()  # tried again for settings.bind_wait first
    assert not supervisor.starts()


def test_an_address_held_by_the_front_being_turned_off_is_taken_once_it_lets_go(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    """registry_mirror_front turned off: the registry starts while nginx still holds the port, and nginx stops
    after it: the supervisor binds as soon as the port is free, and the registry serves there."""
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    supervisor = SupervisorRun(tmp_path, upstream, listen=f"127.0.0.1:{port}", bind_wait=STARTUP)
    runs.append(supervisor)
    try:
        wait_for("the wait for the address", lambda: supervisor.said(f"127.0.0.1:{port} is in use"), STARTUP)
        assert not supervisor.starts() and supervisor.proc.poll() is None
    finally:
        taken.close()
    start = supervisor.serving()
    assert supervisor.said(f"listening on 127.0.0.1:{port}") is not None
    assert pull_through(start) and "cannot listen" not in supervisor.journal()


def test_at_stop_the_address_refuses_at_once_while_the_registry_drains(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    """A connection that arrives after the stop is refused (the client falls back, a caching front being turned on can
    bind the port) instead of waiting, unanswered, in the supervisor's queue until the registry has drained."""
    port = free_port()
    supervisor = SupervisorRun(tmp_path, upstream, listen=f"127.0.0.1:{port}", drain=6.0)  # outlasts the checks
    runs.append(supervisor)
    start = supervisor.serving()
    supervisor.proc.send_signal(signal.SIGTERM)
    wait_for("the registry's SIGTERM", lambda: supervisor.first("signal", start["pid"]), STARTUP)
    refused = wait_for("the address to refuse", lambda: not connects(port), 2)
    assert refused and supervisor.first("exit", start["pid"]) is None  # the registry still drains
    with socket.socket() as again:  # and the address is free for the front
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
    assert supervisor.proc.wait(timeout=STARTUP) == 0


def connects(port: int) -> bool:
    """Whether something accepts a connection on loopback PORT."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
