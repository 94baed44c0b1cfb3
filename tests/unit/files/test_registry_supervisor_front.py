# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor behind a caching front (nginx): the registries listen on a unix socket the supervisor binds
(listen unix:PATH: checked settings, a stale socket replaced but nothing else, the health probe over the socket, no
hand-over, the socket removed at stop), and the front's per-request log (front_log: syslog datagrams on UDP) counted
into the registry_mirror_front_* metrics. Run as the program it is with fake registries (registry_fakes) where the
socket's life is what is checked; deadlines are hang guards, what is asserted is what happened."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    FILES,
    STARTUP,
    FakeUpstream,
    SupervisorRun,
    free_port,
    load_supervisor,
    pull_through,
    wait_for,
)
from test_registry_supervisor_cache import value

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_listener

# The longest any wait here may take before the test fails: a guard against a hang, not a figure under test.
HANG_GUARD = 20.0
SOCKET = "unix:/run/registry/dockerhub.sock"
# The fake registry records the address it was handed as host:port; a unix socket's is its path.
TCP_ACTIVATED = 'record("activated", addr="%s:%d" % listener.getsockname()[:2])'
UNIX_ACTIVATED = 'record("activated", addr=str(listener.getsockname()))'
FRONT_COUNTERS = ("requests", "cache_hits", "cache_misses", "cache_stale", "cache_revalidated", "cache_bypass",
                  "blobs_from_disk", "bytes_served", "errors")


@pytest.fixture(name="short")
def fixture_short() -> Iterator[Path]:
    """A directory with a short path for unix sockets (pytest's tmp_path may be longer than sun_path allows)."""
    directory = Path(tempfile.mkdtemp(prefix="rsf-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def settings_file(tmp_path: Path, **values: Any) -> Path:
    """A settings file with the required keys and VALUES."""
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": "https://registry-1.docker.io",
                                "version": "3.1.1", **values}), encoding="utf-8")
    return path


def supervisor_for(tmp_path: Path, **values: Any) -> Any:
    """A Supervisor (not running) of settings with VALUES."""
    module = load_supervisor()
    return module.Supervisor(module.Settings.load(str(settings_file(tmp_path, **values))))


def ask(path: Path, timeout: float = HANG_GUARD) -> bytes:
    """A request to the registry on the unix socket PATH, as the front sends it; the answer (the fake's: its pid)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return conn.recv(64)


def stale_socket(path: Path) -> int:
    """A socket file at PATH that nothing listens on (what a killed supervisor leaves); its inode (a file made later
    may get the same number once this one is removed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client, pytest.raises(ConnectionRefusedError):
        client.connect(str(path))
    return os.lstat(path).st_ino


# --- Settings ---------------------------------------------------------------------------------------------------------

# --- The socket itself ------------------------------------------------------------------------------------------------

def test_bind_replaces_a_stale_socket_and_listens_with_mode_0660(tmp_path: Path, short: Path) -> None:
    path = short / "dockerhub.sock"
    stale_socket(path)
    supervisor = supervisor_for(tmp_path, listen=f"unix:{path}", listen_tls=False)
    with supervisor.bind() as sock:
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert sock.family == socket.AF_UNIX
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # it listens: no longer the stale one (whose inode number it may have)
    assert supervisor.unix_file == (info.st_dev, info.st_ino)


def regular_file(path: Path, _elsewhere: Path) -> None:
    """A regular file at PATH."""
    path.write_text("keep", encoding="utf-8")


def directory(path: Path, _elsewhere: Path) -> None:
    """A directory at PATH, not empty."""
    path.mkdir()
    (path / "inside").write_text("keep", encoding="utf-8")


def link_to_a_file(path: Path, elsewhere: Path) -> None:
    """A symbolic link at PATH to a regular file ELSEWHERE."""
    elsewhere.write_text("keep", encoding="utf-8")
    elsewhere.chmod(0o644)
    path.symlink_to(elsewhere)


def link_to_a_socket(path: Path, elsewhere: Path) -> None:
    """A symbolic link at PATH to a (stale) socket ELSEWHERE: still not a socket itself."""
    stale_socket(elsewhere)
    path.symlink_to(elsewhere)


def snapshot(path: Path) -> tuple[Any, ...]:
    """What a file at PATH is (not followed) and, for a file it leads to, its mode and contents."""
    info = os.lstat(path)
    target = path.resolve()
    contents = target.read_text(encoding="utf-8") if target.is_file() else sorted(os.listdir(target)) \
        if target.is_dir() else None
    return (stat.S_IFMT(info.st_mode), info.st_ino, os.readlink(path) if path.is_symlink() else None,
            os.stat(target).st_mode if target.exists() else None, contents)


@pytest.mark.parametrize("make", [regular_file, directory, link_to_a_file, link_to_a_socket])
def test_bind_refuses_what_is_not_a_socket_and_leaves_it_as_it_is(
        tmp_path: Path, short: Path, capsys: pytest.CaptureFixture[str], make: Any) -> None:
    path, elsewhere = short / "dockerhub.sock", short / "elsewhere"
    make(path, elsewhere)
    before = snapshot(path)
    supervisor = supervisor_for(tmp_path, listen=f"unix:{path}", listen_tls=False)
    with pytest.raises(FileExistsError, match="exists and is not a socket"):
        supervisor.bind()
    assert snapshot(path) == before
    # At start, said and the supervisor exits (systemd tries again later), with nothing to remove at stop.
    assert not supervisor.open_socket()
    assert f"ERROR: cannot listen on unix:{path} (" in capsys.readouterr().err
    assert supervisor.socket is None and supervisor.unix_file is None
    supervisor.shut_down()
    assert snapshot(path) == before


def test_no_hand_over_on_a_unix_socket_and_nothing_said(
        tmp_path: Path, short: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = short / "dockerhub.sock"
    supervisor = supervisor_for(tmp_path, listen=f"unix:{path}", listen_tls=False)
    supervisor.socket = supervisor.bind()
    bound = os.lstat(path).st_ino
    try:
        assert supervisor.hand_over() is None
        assert os.lstat(path).st_ino == bound  # the serving socket is not bound over
        assert capsys.readouterr().err == ""
    finally:
        supervisor.socket.close()


def test_at_stop_only_the_socket_the_supervisor_bound_is_removed(tmp_path: Path, short: Path) -> None:
    module = load_supervisor()
    path = short / "dockerhub.sock"
    supervisor = supervisor_for(tmp_path, listen=f"unix:{path}", listen_tls=False)
    supervisor.socket = supervisor.bind()
    supervisor.shut_down()
    assert not path.exists() and not path.is_symlink()
    # Another file took the path meanwhile (another socket, a file): left alone. The supervisor's is moved, not
    # removed: the other cannot get its inode number.
    supervisor.socket = supervisor.bind()
    bound = supervisor.unix_file
    supervisor.socket.close()
    path.rename(short / "moved.sock")
    other = stale_socket(path)
    module.remove_unix_socket(str(path), bound)
    assert os.lstat(path).st_ino == other
    path.unlink()
    path.write_text("keep", encoding="utf-8")
    module.remove_unix_socket(str(path), (os.lstat(path).st_dev, os.lstat(path).st_ino))
    assert path.read_text(encoding="utf-8") == "keep"


def test_the_health_probe_asks_get_v2_over_the_unix_socket_in_plain_http(tmp_path: Path, short: Path) -> None:
    path = short / "dockerhub.sock"
    supervisor = supervisor_for(tmp_path, listen=f"unix:{path}", listen_tls=False, health_timeout=1.0)
    received: list[bytes] = []
    answer = threading.Event()

    def registry(sock: socket.socket) -> None:  # the first connection answered (when ANSWER is set), the next not
        for _number in range(2):
            conn = sock.accept()[0]
            with conn:
                received.append(conn.recv(4096))
                if answer.is_set():
                    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                else:
                    time.sleep(2.0)  # wedged: longer than health_timeout
            answer.clear()

    with supervisor.bind() as sock:
        answer.set()
        thread = threading.Thread(target=registry, args=(sock,), daemon=True)
        thread.start()
        assert supervisor.registry_answers() == (True, "")
        answered, why = supervisor.registry_answers()
        thread.join(HANG_GUARD)
    assert not answered and "timed out" in why
    assert received[0].startswith(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n")
    path.unlink()
    answered, why = supervisor.registry_answers()
    assert not answered and "No such file" in why


# --- Running, with fake registries ------------------------------------------------------------------------------------

class UnixRun(SupervisorRun):
    """A SupervisorRun whose registries get the unix socket PATH (listen unix:PATH, plain HTTP)."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream, path: Path, **settings: Any) -> None:
        self.path = path
        super().__init__(tmp_path, upstream, listen=f"unix:{path}", listen_tls=False, **settings)

    def command(self, env: dict[str, str]) -> list[str]:
        script = self.log.with_name("registry.py")  # Mirror wrote it; no registry has started yet
        text = script.read_text(encoding="utf-8")
        assert TCP_ACTIVATED in text
        script.write_text(text.replace(TCP_ACTIVATED, UNIX_ACTIVATED), encoding="utf-8")
        return super().command(env)


def metrics(port: int) -> str | None:
    """GET /metrics from the supervisor's listener on PORT; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def with_listener(tmp_path: Path, settings: dict[str, Any]) -> int:
    """SETTINGS with the supervisor's loopback listener on a free port and a cache directory; the port."""
    (tmp_path / "storage").mkdir(parents=True)
    settings.setdefault("port", free_port())
    settings["storage"] = str(tmp_path / "storage")
    return int(settings["port"])


def test_registries_serve_on_the_unix_socket_which_is_removed_at_stop(
        tmp_path: Path, short: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    path = short / "dockerhub.sock"
    stale_socket(path)  # a killed supervisor's
    supervisor = UnixRun(tmp_path, upstream, path)
    runs.append(supervisor)
    first = supervisor.serving()
    assert pull_through(first) and first["env"].get("LISTEN_FDS") == "1"
    assert [record["addr"] for record in supervisor.events("activated")] == [str(path)]
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert int(ask(path)) == first["pid"]  # it listens: no longer the stale one
    assert supervisor.stop(timeout=HANG_GUARD) == 0
    assert not path.exists() and not path.is_symlink()
    assert "cannot" not in supervisor.journal(), supervisor.journal()


def test_on_a_unix_socket_requests_made_during_switches_wait_for_the_next_registry(
        tmp_path: Path, short: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    # Each replaced registry drains (answers what it accepted) for 2 s: a switch comes while one still drains.
    path = short / "dockerhub.sock"
    supervisor = UnixRun(tmp_path, upstream, path, drain=2.0, stop_timeout=30.0)
    runs.append(supervisor)
    supervisor.serving()
    answered: list[tuple[float, int]] = []  # when connected, and by which registry
    empty: list[float] = []
    failed: list[str] = []
    stop = threading.Event()

    def request() -> None:
        while not stop.is_set():
            connected = time.time()
            try:
                reply = ask(path)
            except OSError as exc:  # refused, or no socket at the path: never, the supervisor holds it
                failed.append(repr(exc))
                continue
            if reply.strip().isdigit():
                answered.append((connected, int(reply)))
            else:
                empty.append(connected)
            time.sleep(0.01)

    threads = [threading.Thread(target=request) for _number in range(4)]
    for thread in threads:
        thread.start()
    try:
        for count, mode in ((2, "down"), (3, "up"), (4, "down"), (5, "up")):  # four switches
            upstream.set(mode)
            supervisor.serving(count=count, timeout=HANG_GUARD)
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failed, failed[:5]
    starts = {start["pid"]: start["t"] for start in supervisor.starts()}
    assert {pid for _connected, pid in answered} == set(starts), supervisor.starts()  # every registry served some
    # Connections made while no registry accepted waited in the socket's queue for the next one.
    assert any(connected < starts[pid] for connected, pid in answered), answered
    # The only requests not answered: those an old registry read after its SIGTERM (as distribution drops them).
    assert len(empty) <= len(supervisor.events("dropped")), (empty, supervisor.events("dropped"))
    assert supervisor.journal().count("switch done: ") == 4, supervisor.journal()
    for words in ("cannot open a second socket", "cannot steer", "still drains"):
        assert not supervisor.said(words), supervisor.journal()
    assert [record["addr"] for record in supervisor.events("activated")] == [str(path)] * 5


def test_a_wedged_registry_on_a_unix_socket_is_found_by_the_probe_and_replaced(
        tmp_path: Path, short: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    path = short / "dockerhub.sock"
    settings: dict[str, Any] = {"name": "docker-hub", "health_failures": 3, "health_timeout": 1.5,
                                "health_grace": 0.5}
    port = with_listener(tmp_path, settings)
    supervisor = UnixRun(tmp_path, upstream, path, **settings)
    runs.append(supervisor)
    first = supervisor.serving()
    wait_for("the supervisor's listener", lambda: metrics(port), STARTUP)
    time.sleep(2)  # probed over the socket, and answered: never replaced
    assert supervisor.starts() == [first]
    assert value(metrics(port) or "", "registry_mirror_registry_health_failures_total") == 0
    supervisor.wedge.write_text(str(first["pid"]), encoding="utf-8")
    second = supervisor.serving(count=2, timeout=HANG_GUARD)
    line = wait_for("the restart line", lambda: next(
        (line for line in supervisor.journal_lines() if "did not answer" in line), None), HANG_GUARD)
    assert f"the registry (pid {first['pid']}) did not answer 3 health probes in a row on unix:{path}" in line
    assert supervisor.events("wedged", first["pid"])  # the probes reached it through the socket
    assert supervisor.first("signal", first["pid"]) is None  # killed: nothing to drain
    assert int(ask(path)) == second["pid"]
    text = metrics(port) or ""
    assert value(text, "registry_mirror_registry_restarts_total") == 1
    assert value(text, "registry_mirror_registry_health_failures_total") == 3
    assert supervisor.stop(timeout=HANG_GUARD) == 0
    assert not path.exists()


# --- The front's log --------------------------------------------------------------------------------------------------

def front_line(cache: str, kind: str, status: int | str, upstream: str = "-", header: str = "") -> bytes:
    """A datagram of the front's log as nginx sends it (syslog, nohostname, tag registry_front), as its first release
    did: front_line(...) + sent(N) as the current one does."""
    header = header or "<190>Mar  7 09:05:01 registry_front: "
    return f"{header}cache={cache} kind={kind} status={status} upstream={upstream}".encode()


def sent(count: int) -> bytes:
    """The fields the current front logs after its first release's: method, repository, digest and COUNT, the body
    bytes sent."""
    return f" method=GET repo=library/alpine digest=sha256:{'c' * 64} bytes={count}".encode()


REGISTRY = "unix:/run/registry/dockerhub.sock"


def front_metrics(text: str) -> dict[str, float]:
    """The front's counters in a Prometheus exposition, by short name."""
    return {name: value(text, f"registry_mirror_front_{name}_total") for name in FRONT_COUNTERS}


def send(port: int, *datagrams: bytes, source: str = "127.0.0.1") -> None:
    """DATAGRAMS to UDP 127.0.0.1:PORT from SOURCE, as the front sends its log."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


def from_elsewhere(port: int) -> bool:
    """Whether a datagram could be sent from another loopback address than 127.0.0.1 (sent, then)."""
    try:
        send(port, front_line("HIT", "manifest", 200), source="127.0.0.2")
    except OSError:
        return False
    return True


def test_the_front_s_log_is_counted_into_the_metrics_and_junk_is_ignored(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    settings: dict[str, Any] = {"front_log": True}
    port = with_listener(tmp_path, settings)
    supervisor = SupervisorRun(tmp_path, upstream, **settings)
    runs.append(supervisor)
    text = wait_for("the supervisor's listener", lambda: metrics(port), STARTUP)
    assert front_metrics(text) == dict.fromkeys(FRONT_COUNTERS, 0.0)
    assert "# TYPE registry_mirror_front_blobs_from_disk_total counter" in text
    send(port, b"", b"junk", front_line("WARM", "manifest", 200), front_line("HIT", "layer", 200),
         front_line("HIT", "manifest", 200, "-" * 3000), b"\xff" * 100)
    elsewhere = from_elsewhere(port)
    send(port,
         front_line("HIT", "manifest", 200), front_line("HIT", "manifest", 200), front_line("HIT", "blob", 200),
         front_line("MISS", "manifest", 200, REGISTRY), front_line("STALE", "manifest", 200),
         front_line("UPDATING", "manifest", 200), front_line("EXPIRED", "manifest", 200, REGISTRY),
         front_line("REVALIDATED", "manifest", 304, REGISTRY), front_line("BYPASS", "other", 502, REGISTRY),
         front_line("-", "blob", 200), front_line("-", "blob", 206), front_line("-", "blob", 404),
         front_line("-", "blob", 200, REGISTRY), front_line("", "other", 500),
         front_line("MISS", "blob", 200, REGISTRY),  # passed on through the blob lock: no cache miss
         # The bytes the front sent without the registry: from its cache, or a blob from disk; not what it passed on.
         front_line("HIT", "manifest", 200) + sent(1000), front_line("MISS", "manifest", 200, REGISTRY) + sent(20000),
         front_line("-", "blob", 200) + sent(300000), front_line("-", "blob", 200, REGISTRY) + sent(4000000))

    def all_counted() -> dict[str, float] | None:
        found = front_metrics(metrics(port) or "")
        return found if found["requests"] >= 19 else None

    counted = wait_for("19 requests counted", all_counted, HANG_GUARD)
    # In order on loopback: everything sent before the last one was read by then.
    expected = {"requests": 19, "cache_hits": 4, "cache_misses": 2, "cache_stale": 2, "cache_revalidated": 2,
                "cache_bypass": 1, "blobs_from_disk": 3, "bytes_served": 301000, "errors": 2}
    assert counted == expected, (counted, elsewhere)
    assert not supervisor.said("front's log"), supervisor.journal()


def test_without_front_log_no_udp_port_and_no_front_metrics(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    settings: dict[str, Any] = {}
    port = with_listener(tmp_path, settings)
    supervisor = SupervisorRun(tmp_path, upstream, **settings)
    runs.append(supervisor)
    text = wait_for("the supervisor's listener", lambda: metrics(port), STARTUP)
    assert "registry_mirror_front_" not in text
    assert "registry_mirror_read_only" in text
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # free: the supervisor opened none


def test_the_front_s_log_port_taken_is_said_once_and_retried(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    settings: dict[str, Any] = {"front_log": True, "cache_check_interval": 0.2}
    port = with_listener(tmp_path, settings)
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", port))
    try:
        supervisor = SupervisorRun(tmp_path, upstream, **settings)
        runs.append(supervisor)
        wait_for("the refusal", lambda: supervisor.said("cannot read the front's log"), STARTUP)
        wait_for("the listener", lambda: metrics(port), STARTUP)  # TCP: the listener is not concerned
        time.sleep(1.5)  # several cache checks, each a retry
    finally:
        taken.close()
    assert supervisor.journal().count("cannot read the front's log") == 1, supervisor.journal()
    assert supervisor.said(f"ERROR: cannot read the front's log on UDP 127.0.0.1:{port} (")
    wait_for("the front's log read", lambda: supervisor.said(f"reading the front's log on UDP 127.0.0.1:{port} now"),
             HANG_GUARD)
    send(port, front_line("HIT", "manifest", 200))
    wait_for("the request counted", lambda: value(metrics(port) or "", "registry_mirror_front_cache_hits_total") == 1,
             HANG_GUARD)


def test_front_log_without_a_port_exports_nothing(tmp_path: Path) -> None:
    module = load_supervisor()
    settings = module.Settings.load(str(settings_file(tmp_path, front_log=True)))
    assert "registry_mirror_front_" not in registry_listener.Metrics(front=False).text()
    assert module.Supervisor(settings).metrics.names == registry_listener.Metrics().names
    exported = registry_listener.Metrics(front=True).names
    assert [name for name in exported if name.startswith("registry_mirror_front_")] == [
        f"registry_mirror_front_{name}_total" for name in FRONT_COUNTERS]
