# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's defences, run as the program it is with fake registries (registry_fakes): its loopback
listener (a deadline per connection, the body's length, pull events checked, the notification secret that only its
registries get and that never reaches the journal), the fleet CA trusted by the registry for tiers only, a wedged
registry killed and replaced, a replaced registry killed once it has drained too long, and no socket hand-over while
one drains. Deadlines here are hang guards; what is asserted is what happened and how often."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    EVENTS_SECRET_HEADER,
    PROG,
    FakeUpstream,
    SupervisorRun,
    events_secret,
    gone,
    pull_through,
    read_only,
    wait_for,
)
from test_registry_supervisor_cache import MANIFEST, get, post, pulled, supervise, value

# The longest any wait here may take before the test fails: a guard against a hang, not a figure under test.
HANG_GUARD = 15.0
DIGEST = "sha256:" + "a" * 64


def listening(runs: list[SupervisorRun], tmp_path: Path, upstream: FakeUpstream, **settings: Any) -> SupervisorRun:
    """A supervisor with its listener, and a cache directory for the usage times."""
    (tmp_path / "storage").mkdir(parents=True)
    return supervise(runs, tmp_path, upstream, **settings)


def port_of(supervisor: SupervisorRun) -> int:
    """The supervisor's loopback port."""
    return int(json.loads(supervisor.settings.read_text(encoding="utf-8"))["port"])


def raw_request(supervisor: SupervisorRun, head: str, body: bytes = b"") -> int:
    """Send HEAD (request line and headers, without the blank line) and BODY to the listener as they are; the status
    of the answer (0: none)."""
    with socket.create_connection(("127.0.0.1", port_of(supervisor)), timeout=HANG_GUARD) as conn:
        conn.sendall(head.encode() + b"\r\n\r\n" + body)
        answer = b""
        while not answer.endswith(b"\n") or b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0


def saved_usage(tmp_path: Path) -> list[str]:
    """The manifests the stopped supervisor kept as pulled (repository@digest)."""
    path = tmp_path / "storage" / "registry-supervisor-usage.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["used"])


def closed(conn: socket.socket) -> bool:
    """Whether the listener closed CONN (it answers nothing to a request it never got); fails after HANG_GUARD."""
    conn.settimeout(HANG_GUARD)
    try:
        data = conn.recv(4096)
        while data and b"HTTP/" in data[:5] and conn.recv(4096):  # an error page, then the end
            pass
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return True


def test_an_idle_or_trickling_client_is_cut_at_the_deadline_while_others_are_served(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    # Long enough for the answers to others on a busy machine (make test runs the unit tests beside Molecule).
    supervisor = listening(runs, tmp_path, upstream, listener_timeout=2.0)
    idle = socket.create_connection(("127.0.0.1", port_of(supervisor)), timeout=HANG_GUARD)
    trickling = socket.create_connection(("127.0.0.1", port_of(supervisor)), timeout=HANG_GUARD)
    sent: list[int] = []
    cut = threading.Event()

    def trickle() -> None:  # a byte of a header every 0.1 s: never silent for a whole read timeout
        try:
            trickling.sendall(b"POST /events HTTP/1.1\r\n")
            for _byte in range(int(HANG_GUARD * 10)):
                trickling.sendall(b"X")
                sent.append(1)
                time.sleep(0.1)
        except OSError:
            cut.set()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        # Meanwhile the listener answers others.
        assert "registry_mirror_read_only" in (get(supervisor, "/metrics") or "")
        assert post(supervisor, pulled("library/one", DIGEST)) == 200
        assert closed(idle)
        assert cut.wait(HANG_GUARD), "the trickling client was never cut off"
    finally:
        idle.close()
        trickling.close()
    assert len(sent) < HANG_GUARD * 10
    assert value(get(supervisor, "/metrics") or "", "registry_mirror_listener_timeouts_total") >= 1
    supervisor.stop()
    assert saved_usage(tmp_path) == [f"library/one@{DIGEST}"]


@pytest.mark.parametrize("case", [
    ("", b'{"events": []}', 411),  # no Content-Length: refused, nothing read
    ("Transfer-Encoding: chunked", b"e\r\n{\"events\": []}\r\n0\r\n\r\n", 411),
    ("Content-Length: 1_4", b'{"events": []}', 400),  # Python's int() would take it
    ("Content-Length: +14", b'{"events": []}', 400),
    ("Content-Length: 14\r\nContent-Length: 14", b'{"events": []}', 400),
    ("Content-Length: -1", b"", 400),
    (f"Content-Length: {(1 << 20) + 1}", b"", 413),  # larger than MAX_EVENTS_BODY: refused before a byte is read
    ("Content-Length: 14", b'{"events": []}', 200),
])
def test_a_body_without_a_plain_length_within_the_cap_is_refused_unread(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun], case: tuple[str, bytes, int]) -> None:
    headers, body, status = case
    supervisor = listening(runs, tmp_path, upstream)
    secret = events_secret(supervisor.serving())
    head = f"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\n{EVENTS_SECRET_HEADER}: {secret}" + (
        f"\r\n{headers}" if headers else "")
    assert raw_request(supervisor, head, body) == status
    refused = value(get(supervisor, "/metrics") or "", "registry_mirror_events_refused_total")
    assert refused == (0 if status == 200 else 1)


def test_pull_events_with_a_malformed_repository_or_digest_are_ignored_and_counted(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = listening(runs, tmp_path, upstream)
    forged = [("library/one", "sha256:" + "a" * 63), ("library/one", "sha256:" + "A" * 64),
              ("library/one", "md5:" + "a" * 32), ("library/one", "sha256:" + "a" * 64 + "\n"),
              ("../../etc", DIGEST), ("Library/One", DIGEST), ("library//one", DIGEST), ("a" * 256, DIGEST),
              ("library/one", 7), (["library/one"], DIGEST)]
    events = [{"action": "pull", "target": {"mediaType": MANIFEST, "repository": repository, "digest": digest}}
              for repository, digest in forged]
    good = [("library/two", "sha512:" + "b" * 128), ("registry.example:5000/team/app", DIGEST),
            ("library/one", DIGEST)]
    events += [{"action": "pull", "target": {"mediaType": MANIFEST, "repository": repository, "digest": digest}}
               for repository, digest in good]
    assert post(supervisor, json.dumps({"events": events}).encode()) == 200
    assert value(get(supervisor, "/metrics") or "", "registry_mirror_events_invalid_total") == len(forged)
    supervisor.stop()
    assert sorted(saved_usage(tmp_path)) == sorted(f"{repository}@{digest}" for repository, digest in good)


def test_events_need_the_secret_only_the_registries_get_and_the_journal_never_shows_it(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = listening(runs, tmp_path, upstream)
    start = supervisor.serving()
    secret = events_secret(start)
    assert len(secret) == 64 and int(secret, 16) >= 0
    # The registry's endpoint: the supervisor's loopback port, with the secret in the header.
    endpoints = start["env"]["REGISTRY_NOTIFICATIONS_ENDPOINTS"]
    assert f"url: 'http://127.0.0.1:{port_of(supervisor)}/events'" in endpoints
    assert post(supervisor, pulled("library/forged", DIGEST), secret="") == 401
    assert post(supervisor, pulled("library/forged", DIGEST), secret="0" * 64) == 401
    assert post(supervisor, pulled("library/forged", DIGEST), secret=secret[:-1]) == 401
    assert post(supervisor, pulled("library/one", DIGEST)) == 200
    assert get(supervisor, "/metrics") is not None  # open on loopback, no secret
    assert value(get(supervisor, "/metrics") or "", "registry_mirror_events_unauthorized_total") == 3
    # The registry logged its endpoints as distribution does at level info: the supervisor relayed the line blanked.
    wait_for("the registry's endpoint line", lambda: supervisor.said("configuring endpoints"), HANG_GUARD)
    # Nowhere but in the registry's environment: not on a command line, not in a file the role writes.
    with open(f"/proc/{start['pid']}/cmdline", "rb") as handle:
        assert secret.encode() not in handle.read()
    with open(f"/proc/{supervisor.proc.pid}/cmdline", "rb") as handle:
        assert secret.encode() not in handle.read()
    for path in (supervisor.settings, supervisor.config):
        assert secret not in path.read_text(encoding="utf-8")
    supervisor.stop()
    assert secret not in supervisor.journal()
    assert "[secret]" in next(line for line in supervisor.journal_lines() if "configuring endpoints" in line)
    assert saved_usage(tmp_path) == [f"library/one@{DIGEST}"]
    # Each start draws another.
    again = listening(runs, tmp_path / "again", upstream)
    assert events_secret(again.serving()) != secret


class EdgeRun(SupervisorRun):
    """A SupervisorRun whose environment has SSL_CERT_DIR (as the unit set it before: the fleet CA's directory, and
    another directory an operator added)."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream, cert_dir: str, **options: Any) -> None:
        self.cert_dir = cert_dir
        super().__init__(tmp_path, upstream, **options)

    def command(self, env: dict[str, str]) -> list[str]:
        env["SSL_CERT_DIR"] = self.cert_dir
        return super().command(env)


def test_only_a_registry_pulling_through_a_tier_trusts_the_fleet_ca(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[SupervisorRun]) -> None:
    tier, hub = upstream, other  # the edge's first tier, then Docker Hub
    ca_dir = str(tmp_path / "tier-ca")
    supervisor = EdgeRun(tmp_path / "edge", tier, f"{ca_dir}:/opt/operator-ca", fallbacks=[{"url": hub.url}],
                         ca_dir=ca_dir, ca_upstreams=[tier.url + "/"])
    runs.append(supervisor)
    through_tier = supervisor.serving()
    assert pull_through(through_tier) and through_tier["env"]["SSL_CERT_DIR"] == f"{ca_dir}:/opt/operator-ca"
    tier.set("down")
    through_hub = supervisor.serving(count=2)
    assert through_hub["env"]["REGISTRY_PROXY_REMOTEURL"] == hub.url
    assert through_hub["env"]["SSL_CERT_DIR"] == "/opt/operator-ca"  # the operator's, without the fleet CA
    hub.set("down")
    local = supervisor.serving(count=3)
    assert read_only(local) and local["env"]["SSL_CERT_DIR"] == "/opt/operator-ca"
    tier.set("up")
    back = supervisor.serving(count=4)
    assert pull_through(back) and back["env"]["SSL_CERT_DIR"] == f"{ca_dir}:/opt/operator-ca"


def test_without_another_directory_a_registry_pulling_elsewhere_has_no_ssl_cert_dir(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[SupervisorRun]) -> None:
    ca_dir = str(tmp_path / "tier-ca")
    upstream.set("down")  # the tier: Docker Hub at once
    supervisor = EdgeRun(tmp_path / "edge", upstream, ca_dir, fallbacks=[{"url": other.url}], ca_dir=ca_dir,
                         ca_upstreams=[upstream.url])
    runs.append(supervisor)
    hub = supervisor.serving(count=2)
    assert hub["env"]["REGISTRY_PROXY_REMOTEURL"] == other.url and "SSL_CERT_DIR" not in hub["env"]


def test_a_wedged_registry_is_killed_and_replaced_in_the_same_mode_naming_the_mirror(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = listening(runs, tmp_path, upstream, activation=True, name="docker-hub", health_failures=3,
                           health_timeout=1.5, health_grace=0.5)  # a healthy one answers in time on a busy machine
    first = supervisor.serving()
    time.sleep(1)  # healthy: probed, never replaced
    assert supervisor.starts() == [first]
    since = value(get(supervisor, "/metrics") or "", "registry_mirror_mode_since_timestamp_seconds")
    assert since > 0
    supervisor.wedge.write_text(str(first["pid"]), encoding="utf-8")
    second = supervisor.serving(count=2, timeout=HANG_GUARD)
    assert pull_through(second)
    line = wait_for("the restart line", lambda: next(
        (line for line in supervisor.journal_lines() if "did not answer" in line), None), HANG_GUARD)
    assert line.startswith(f"{PROG}ERROR: mirror docker-hub: the registry (pid {first['pid']}) did not answer 3 "
                           f"health probes in a row on {supervisor.addr}"), line
    assert supervisor.said("restart done: mirror docker-hub: pulling through")
    # Killed (no SIGTERM to drain, no exit of its own), on the socket the next one took over.
    assert supervisor.events("wedged", first["pid"])
    assert supervisor.first("signal", first["pid"]) is None and supervisor.first("exit", first["pid"]) is None
    assert second["env"].get("LISTEN_FDS") == "1"
    host, port = supervisor.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=HANG_GUARD) as conn:
        conn.sendall(b"GET\n")
        assert int(conn.recv(64)) == second["pid"]
    time.sleep(1)  # the new one answers: not replaced again
    assert len(supervisor.starts()) == 2
    text = get(supervisor, "/metrics") or ""
    assert value(text, "registry_mirror_registry_restarts_total") == 1
    assert value(text, "registry_mirror_registry_health_failures_total") == 3
    # The same mode: it began when the first registry started, not at the restart.
    assert value(text, "registry_mirror_mode_since_timestamp_seconds") == since


def test_a_replaced_registry_still_draining_after_stop_timeout_is_killed(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = SupervisorRun(tmp_path, upstream, drain=60.0, stop_timeout=1.0)  # it would drain a minute
    runs.append(supervisor)
    old = supervisor.serving()
    upstream.set("down")
    supervisor.serving(count=2)
    wait_for("the old registry to be killed", lambda: gone(old["pid"]), HANG_GUARD)
    assert supervisor.first("signal", old["pid"]) is not None and supervisor.first("exit", old["pid"]) is None
    assert supervisor.said(f"a replaced registry (pid {old['pid']}) still runs 1 s after its SIGTERM: killed")


def test_no_socket_hand_over_while_a_previous_registry_still_drains(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    # The first one drains 6 s (the test's second switch comes well before), and is never killed meanwhile.
    supervisor = SupervisorRun(tmp_path, upstream, activation=True, drain=6.0, stop_timeout=30.0)
    runs.append(supervisor)
    first = supervisor.serving()
    upstream.set("down")
    supervisor.serving(count=2)  # handed over: nothing drained before
    assert not supervisor.said("still drains")
    upstream.set("up")
    third = supervisor.serving(count=3)
    assert supervisor.said(f"a previous registry (pid {first['pid']}) still drains: the registry is replaced on the "
                           "same socket")
    assert supervisor.journal().count("switch done: ") == 2
    host, port = supervisor.addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=HANG_GUARD) as conn:
        conn.sendall(b"GET\n")
        assert int(conn.recv(64)) == third["pid"]
