# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor --bridge (registry_bridge): while a caching front is being turned on, each mirror's unix socket
is served read-only by a registry of the bridge's until the restarted registry's supervisor takes the path over; the
bridge then stops without a request on the socket meeting a refusal. Run as the program it is, with fake registries
(registry_fakes); deadlines are hang guards, what is asserted is what happened."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import FILES, STARTUP, SUPERVISOR, FakeUpstream, Journal, Mirror, read_only, wait_for
from test_registry_supervisor_front import TCP_ACTIVATED, UNIX_ACTIVATED, UnixRun, ask

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_bridge

HANG_GUARD = 20.0


@pytest.fixture(name="short")
def fixture_short() -> Iterator[Path]:
    """A directory with a short path for unix sockets."""
    directory = Path(tempfile.mkdtemp(prefix="rsb-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


class BridgeRun(Journal):
    """`registry-supervisor --bridge` with the settings of MIRRORS, in an environment with credentials and a
    notification endpoint (which its registries must not get)."""

    def __init__(self, mirrors: list[Mirror]) -> None:
        for mirror in mirrors:  # the fake records a unix socket's address as its path
            script = mirror.log.with_name("registry.py")
            script.write_text(script.read_text(encoding="utf-8").replace(TCP_ACTIVATED, UNIX_ACTIVATED),
                              encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(FAKE_REGISTRY_PYTHON=sys.executable, REGISTRY_PROXY_USERNAME="mirror-user",
                   REGISTRY_PROXY_PASSWORD="s3cret", REGISTRY_MIRROR_GHCR_PASSWORD="other-s3cret",
                   REGISTRY_NOTIFICATIONS_ENDPOINTS="[{name: x, headers: {X: ['secret']}}]",
                   REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="/srv/moved")
        self.lines = []
        self.proc = subprocess.Popen([sys.executable, str(SUPERVISOR), "--bridge",
                                      *(str(mirror.settings) for mirror in mirrors)],
                                     env=env, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def end(self, signum: int = signal.SIGTERM) -> int:
        """SIGNUM (SIGTERM: as the role stops the unit; SIGINT: a rollback's); the exit status."""
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=HANG_GUARD)

    def __enter__(self) -> BridgeRun:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def unix_mirror(directory: Path, upstream: FakeUpstream, path: Path, **settings: Any) -> Mirror:
    """A mirror's files whose settings listen on the unix socket PATH."""
    return Mirror(directory, upstream, listen=f"unix:{path}", listen_tls=False, **settings)


def test_each_unix_socket_is_served_read_only_without_credentials_until_the_registry_takes_it_over(
        tmp_path: Path, short: Path, upstream: FakeUpstream) -> None:
    paths = [short / "dockerhub.sock", short / "ghcr.sock"]
    mirrors = [unix_mirror(tmp_path / name, upstream, path, drain=1.0)
               for name, path in zip(("dockerhub", "ghcr"), paths)]
    with BridgeRun(mirrors) as bridge:
        starts = [mirror.serving(timeout=STARTUP) for mirror in mirrors]
        for mirror, start, path in zip(mirrors, starts, paths):
            assert read_only(start), start  # no proxy, storage read-only, no credentials
            assert start["env"]["REGISTRY_HTTP_DEBUG_ADDR"] == ""  # the registry being replaced holds that port
            names = mirror.events("environ", start["pid"])[0]["names"]
            assert [name for name in names if name.startswith("REGISTRY_")] == [
                "REGISTRY_HTTP_DEBUG_ADDR", "REGISTRY_PROXY_REMOTEURL", "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
                "REGISTRY_STORAGE_MAINTENANCE"], names  # no credentials, no notification endpoint; the storage's
            assert [record["addr"] for record in mirror.events("activated")] == [str(path)]
            assert int(ask(path)) == start["pid"]
        wait_for("the bridge to say it serves", lambda: bridge.said("bridge: serving the cache read-only"), HANG_GUARD)
        # The restarted registry's supervisor takes the first path over; the second is never taken (said, and the
        # bridge stops anyway after bind_wait).
        supervisor = UnixRun(tmp_path / "restarted", upstream, paths[0])
        try:
            taken = supervisor.serving(timeout=STARTUP)
            assert bridge.end() == 0
            assert int(ask(paths[0])) == taken["pid"]  # the path is the supervisor's, left in place
            assert not paths[1].exists()  # the bridge's own, removed
        finally:
            supervisor.stop(timeout=HANG_GUARD)
    journal = bridge.journal()
    assert f"bridge: unix:{paths[0]} taken over by the registry" in journal, journal
    assert f"bridge: unix:{paths[1]} not taken over within 0.5 s: stopping anyway" in journal, journal
    assert "s3cret" not in journal
    for mirror in mirrors:  # each bridged registry got SIGTERM and finished
        pid = mirror.starts()[0]["pid"]
        assert mirror.events("signal", pid) and mirror.events("exit", pid), mirror.events()


def test_no_request_on_the_socket_is_refused_while_the_registry_takes_it_over(
        tmp_path: Path, short: Path, upstream: FakeUpstream) -> None:
    """Requests back to back on the path throughout: the bridge's registry answers, then the restarted one's; the
    ones made while it starts wait in its socket's queue."""
    path = short / "dockerhub.sock"
    mirror = unix_mirror(tmp_path / "bridged", upstream, path, drain=1.0)
    bridge = BridgeRun([mirror])
    answered: list[int] = []
    failed: list[str] = []
    stop = threading.Event()

    def request() -> None:
        while not stop.is_set():
            try:
                reply = ask(path)
            except OSError as exc:
                failed.append(repr(exc))
                continue
            if reply.strip().isdigit():
                answered.append(int(reply))
            time.sleep(0.01)

    supervisor = None
    threads = [threading.Thread(target=request) for _number in range(3)]
    try:
        bridged = mirror.serving(timeout=STARTUP)["pid"]
        for thread in threads:
            thread.start()
        supervisor = UnixRun(tmp_path / "restarted", upstream, path)
        assert bridge.end() == 0  # as the role stops it right after the registry's restart
        taken = supervisor.serving(timeout=STARTUP)["pid"]
        wait_for("a request answered by the restarted registry", lambda: taken in answered or None, HANG_GUARD)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if supervisor is not None:
            supervisor.stop(timeout=HANG_GUARD)
        bridge.__exit__()
    assert not failed, failed[:5]  # never refused, never without a socket at the path
    assert bridged in answered and taken in answered
    assert "not taken over" not in bridge.journal()


def test_sigint_stops_at_once_and_removes_the_sockets(tmp_path: Path, short: Path, upstream: FakeUpstream) -> None:
    """A rollback: the registry goes back to the port and never takes the sockets; SIGINT ends the bridge without
    waiting for bind_wait."""
    path = short / "dockerhub.sock"
    mirror = unix_mirror(tmp_path / "bridged", upstream, path, bind_wait=60.0)
    with BridgeRun([mirror]) as bridge:
        mirror.serving(timeout=STARTUP)
        assert bridge.end(signal.SIGINT) == 0
    assert not path.exists()
    assert "not taken over" not in bridge.journal() and "bridge: stopped" in bridge.journal()


def test_a_path_that_is_not_a_socket_is_left_alone_and_the_bridge_fails(
        tmp_path: Path, short: Path, upstream: FakeUpstream) -> None:
    path = short / "dockerhub.sock"
    path.write_text("keep", encoding="utf-8")
    bridge = BridgeRun([unix_mirror(tmp_path / "bridged", upstream, path)])
    assert bridge.proc.wait(timeout=HANG_GUARD) == 1
    assert path.read_text(encoding="utf-8") == "keep"
    assert f"ERROR: bridge: cannot listen on unix:{path}" in bridge.journal()


def test_a_mirror_on_a_tcp_address_is_not_bridged(tmp_path: Path, upstream: FakeUpstream) -> None:
    mirror = Mirror(tmp_path / "tcp", upstream, activation=True)
    with BridgeRun([mirror]) as bridge:
        wait_for("the bridge to say it serves", lambda: bridge.said("bridge: serving the cache read-only on no socket"),
                 HANG_GUARD)
        assert bridge.end() == 0
    assert mirror.starts() == []
    assert "not on a unix socket: not bridged" in bridge.journal()


def test_invalid_settings_are_said_and_nothing_starts(tmp_path: Path) -> None:
    settings = tmp_path / "supervisor.json"
    settings.write_text(json.dumps({"binary": "/r"}), encoding="utf-8")
    done = subprocess.run([sys.executable, str(SUPERVISOR), "--bridge", str(settings)], capture_output=True,
                          text=True, timeout=HANG_GUARD, check=False)
    assert done.returncode == 2 and "ERROR: " in done.stderr


def test_ready_is_sent_to_systemd_s_notify_socket(short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(short / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(short / "notify"))
        registry_bridge.notify_ready()
        listener.settimeout(HANG_GUARD)
        assert listener.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    registry_bridge.notify_ready()  # outside systemd: nothing, no error


def test_the_bridged_environment_keeps_no_registry_variable_but_the_storage() -> None:
    env = registry_bridge.bridged_environment({"PATH": "/bin", "REGISTRY_PROXY_PASSWORD": "x", "REGISTRY_FOO": "y",
                                               "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/s"})
    assert env == {"PATH": "/bin", "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/s", **registry_bridge.LOCAL_ENV,
                   "REGISTRY_HTTP_DEBUG_ADDR": ""}


def test_a_socket_a_registry_serves_already_is_never_taken_from_it(
        tmp_path: Path, short: Path, upstream: FakeUpstream) -> None:
    """A front-mode registry that runs (its front stopped, its unit file new): the bridge leaves its socket alone."""
    path = short / "dockerhub.sock"
    supervisor = UnixRun(tmp_path / "running", upstream, path)
    try:
        serving = supervisor.serving(timeout=STARTUP)["pid"]
        bound = os.lstat(path).st_ino
        mirror = unix_mirror(tmp_path / "bridged", upstream, path)
        with BridgeRun([mirror]) as bridge:
            wait_for("the bridge to say it serves",
                     lambda: bridge.said("bridge: serving the cache read-only on no socket"), HANG_GUARD)
            assert bridge.end() == 0
        assert mirror.starts() == []
        assert os.lstat(path).st_ino == bound and int(ask(path)) == serving
        assert f"bridge: unix:{path} is served already: not bridged" in bridge.journal()
    finally:
        supervisor.stop(timeout=HANG_GUARD)
