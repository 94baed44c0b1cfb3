# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's group mode (several settings files: one mirror per upstream under the one unit), run as the
program it is with fake registries and upstreams (registry_fakes) on the FAST timings: each mirror with its own port,
config and credentials, restarted alone when it cannot start, stopped and asked to collect together."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    FAST,
    PROG,
    STARTUP,
    FakeUpstream,
    GroupRun,
    Mirror,
    basic,
    pull_through,
    read_only,
    wait_for,
)

# Distinctive values, to be found nowhere in the output.
HUB_USER, HUB_SECRET = "hub-user-5kq", "hub-secret-Zr8Tq2vN"
GHCR_USER, GHCR_SECRET = "ghcr-user-jm4", "ghcr-secret-Wp7Xv9cB"
QUAY_USER, QUAY_SECRET = "quay-user-bn2", "quay-secret-Hs3Lk6dM"
SECRETS = {
    "REGISTRY_PROXY_USERNAME": HUB_USER, "REGISTRY_PROXY_PASSWORD": HUB_SECRET,
    "REGISTRY_MIRROR_GHCR_USERNAME": GHCR_USER, "REGISTRY_MIRROR_GHCR_PASSWORD": GHCR_SECRET,
    "REGISTRY_MIRROR_QUAY_USERNAME": QUAY_USER, "REGISTRY_MIRROR_QUAY_PASSWORD": QUAY_SECRET,
}
GHCR = "REGISTRY_MIRROR_GHCR"
RESTARTING = "the mirror's supervisor exited with status 1; restarting in"
# The first restart's delay (registry-supervisor's BACKOFF_MIN), after which a mirror's supervisor starts as at first.
FIRST_BACKOFF = 2


def supervise(runs: list[GroupRun], mirrors: list[Mirror], env: dict[str, str] | None = None) -> GroupRun:
    """A group of MIRRORS (the first the primary) with the unit's credentials SECRETS, and ENV; stopped after the
    test (the runs fixture)."""
    run = GroupRun(mirrors, env={**SECRETS, **(env or {})})
    runs.append(run)
    return run


def environment(mirror: Mirror, start: dict[str, Any]) -> list[str]:
    """The names of the environment variables the registry of START had."""
    record = wait_for("the registry's environment", lambda: mirror.first("environ", start["pid"]), 5)
    names: list[str] = record["names"]
    return names


def connects(mirror: Mirror) -> bool:
    """Whether something accepts connections on MIRROR's address."""
    host, port = mirror.addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def output(run: GroupRun) -> str:
    """Everything the group wrote, stderr (the journal) and stdout."""
    return run.journal() + "\n" + "".join(run.stdout)


def test_each_mirror_serves_on_its_own_port_with_its_own_config_and_only_its_own_credentials(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr", credentials=GHCR)
    quay = Mirror(tmp_path / "quay", other, name="quay")  # its REGISTRY_MIRROR_QUAY_* are not named: none for it
    supervise(runs, [hub, ghcr, quay])
    registries = {mirror: mirror.serving() for mirror in (hub, ghcr, quay)}
    assert len({mirror.addr for mirror in registries}) == 3
    for mirror, start in registries.items():
        assert start["argv"][1:] == ["serve", str(mirror.config)]
        assert pull_through(start) and connects(mirror)
    env = {mirror: start["env"] for mirror, start in registries.items()}
    names = {mirror: environment(mirror, start) for mirror, start in registries.items()}
    # The primary: the unit's REGISTRY_PROXY_* as in single mode, none of the other mirrors' credentials.
    assert (env[hub]["REGISTRY_PROXY_USERNAME"], env[hub]["REGISTRY_PROXY_PASSWORD"]) == (HUB_USER, HUB_SECRET)
    assert not [name for name in names[hub] if name.startswith("REGISTRY_MIRROR_")], names[hub]
    # ghcr: its own, mapped from REGISTRY_MIRROR_GHCR_*, and nothing else of the unit's.
    assert (env[ghcr]["REGISTRY_PROXY_USERNAME"], env[ghcr]["REGISTRY_PROXY_PASSWORD"]) == (GHCR_USER, GHCR_SECRET)
    assert not [name for name in names[ghcr] if name.startswith("REGISTRY_MIRROR_")], names[ghcr]
    # quay, without credentials in its settings: none at all.
    assert "REGISTRY_PROXY_USERNAME" not in env[quay] and "REGISTRY_PROXY_PASSWORD" not in env[quay]
    assert not [name for name in names[quay] if name.startswith("REGISTRY_")], names[quay]


def test_a_mirror_that_cannot_start_is_restarted_with_back_off_and_never_stops_the_others(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr", credentials=GHCR)
    host, port = ghcr.addr.rsplit(":", 1)
    with socket.socket() as taken:  # ghcr's port is someone else's
        taken.bind((host, int(port)))
        taken.listen()
        run = supervise(runs, [hub, ghcr])
        serving = hub.serving()
        first = wait_for("ghcr's first exit", lambda: run.said(f"[ghcr] {PROG}{RESTARTING} 2 s"), STARTUP)
        assert len(ghcr.events("bind-failed")) == 1
        # Started again after the back-off (how long it waits: the tests with a clock of their own, below), failed
        # again, and the next back-off is twice as long.
        retried = wait_for("ghcr's second start", lambda: ghcr.starts()[1:], FIRST_BACKOFF + STARTUP)[0]
        assert retried["t"] > first
        wait_for("ghcr's second exit", lambda: run.said(f"[ghcr] {PROG}{RESTARTING} 4 s"), STARTUP)  # doubled
        assert len(ghcr.events("bind-failed")) == 2 and len(ghcr.starts()) == 2
        # The primary served all along: never stopped, never restarted; nor was the group.
        assert hub.starts() == [serving] and hub.first("signal", serving["pid"]) is None
        assert connects(hub) and run.proc.poll() is None
        assert "[docker-hub] " + PROG + "the mirror's supervisor exited" not in run.journal()


def test_a_mirror_whose_supervisor_dies_is_restarted_without_what_it_left_running(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    """SIGKILL (the OOM killer, say) gives the supervisor no time to stop its registry, which would keep the port."""
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr")
    run = supervise(runs, [hub, ghcr])
    serving, orphan = hub.serving(), ghcr.serving()
    os.kill(parent(orphan["pid"]), signal.SIGKILL)
    wait_for("the restart", lambda: run.said(f"[ghcr] {PROG}the mirror's supervisor exited with status -9; "
                                             "restarting in 2 s"), 5)
    # SIGKILL is delivered asynchronously: on a loaded machine the orphan may take a moment to end, but it must end
    # well before the restart (2 s later), or the new registry could not bind (asserted below)
    wait_for("the orphaned registry to end", lambda: not alive(orphan["pid"]), FIRST_BACKOFF / 2)
    again = ghcr.serving(count=2, timeout=FIRST_BACKOFF + STARTUP)
    assert ghcr.first("bind-failed", again["pid"]) is None
    assert hub.starts() == [serving] and hub.first("signal", serving["pid"]) is None


def parent(pid: int) -> int:
    """PID's parent process."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def alive(pid: int) -> bool:
    """Whether PID runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_one_upstream_down_sends_its_mirror_read_only_while_the_other_stays_pull_through(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr", credentials=GHCR)
    run = supervise(runs, [hub, ghcr])
    serving = hub.serving()
    assert pull_through(ghcr.serving())
    other.set("down")
    local = ghcr.serving(count=2)
    assert read_only(local), local
    time.sleep(4 * FAST["probe_interval"])
    assert hub.starts() == [serving] and pull_through(serving) and hub.first("signal", serving["pid"]) is None
    assert run.said(f"[ghcr] {PROG}upstream {other.url} unreachable") is not None
    assert "unreachable" not in "\n".join(line for _t, line in run.lines if line.startswith("[docker-hub] "))


def test_sigterm_stops_every_mirror_and_exits_0(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    mirrors = [Mirror(tmp_path / "hub", upstream, name="docker-hub", drain=0.5),
               Mirror(tmp_path / "ghcr", other, name="ghcr", credentials=GHCR, drain=0.5)]
    run = supervise(runs, mirrors)
    registries = [(mirror, mirror.serving()) for mirror in mirrors]
    assert run.stop() == 0
    for mirror, start in registries:  # each stopped gently by its supervisor (it drained), not killed
        term = mirror.first("signal", start["pid"])
        assert term is not None and term["signal"] == signal.SIGTERM
        assert mirror.first("exit", start["pid"]) is not None
        assert not connects(mirror)
    assert "restarting" not in run.journal() and "killed" not in run.journal()


def test_sigterm_during_a_back_off_stops_at_once(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr")
    host, port = ghcr.addr.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        run = supervise(runs, [hub, ghcr])
        serving = hub.serving()
        wait_for("ghcr's back-off", lambda: run.said(f"[ghcr] {PROG}{RESTARTING} 2 s"), STARTUP)
        assert run.stop() == 0
    # Not started again to be stopped (that the group does not wait for the back-off's end: the clock tests below).
    assert len(ghcr.starts()) == 1
    assert hub.first("exit", serving["pid"]) is not None and "killed" not in run.journal()


def test_sigusr1_reaches_every_mirror(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    for name in ("hub", "ghcr"):
        (tmp_path / f"{name}-storage").mkdir()
    mirrors = [Mirror(tmp_path / "hub", upstream, name="docker-hub", storage=str(tmp_path / "hub-storage")),
               Mirror(tmp_path / "ghcr", other, name="ghcr", storage=str(tmp_path / "ghcr-storage"))]
    run = supervise(runs, mirrors)
    registries = [mirror.serving() for mirror in mirrors]
    run.proc.send_signal(signal.SIGUSR1)
    wait_for("both collections", lambda: run.said(f"[docker-hub] {PROG}cache collection done")
             and run.said(f"[ghcr] {PROG}cache collection done"), 5)
    for name in ("docker-hub", "ghcr"):
        assert run.said(f"[{name}] {PROG}cache collection (asked for (SIGUSR1))") is not None
    # Collected beside the serving registries, which go on; the group and its children too.
    assert [mirror.starts() for mirror in mirrors] == [[start] for start in registries]
    assert run.proc.poll() is None and "restarting" not in run.journal()


def test_sigusr1_while_the_mirrors_start_ends_none_of_them(
        tmp_path: Path, upstream: FakeUpstream, runs: list[GroupRun]) -> None:
    """SIGUSR1's default action ends a process: a child gets it only once it handles it."""
    mirrors = [Mirror(tmp_path / name, upstream, name=name) for name in ("docker-hub", "ghcr")]
    run = supervise(runs, mirrors)
    wait_for("the group's handlers", lambda: run.lines, STARTUP)  # its first line: it handles SIGUSR1 from now on
    for _signal in range(100):  # while the children start, and after
        run.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.01)
    for mirror in mirrors:
        assert mirror.starts() == [mirror.serving()], mirror.events()
    assert "exited" not in run.journal() and run.proc.poll() is None, run.journal()


def test_journal_lines_carry_the_mirror_s_name_and_no_secret(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    for server in (upstream, other):  # the token checks run, with the credentials
        server.challenge = f'Bearer realm="{server.url}/token",service="fake"'
    other.token_status = 401
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr", credentials=GHCR)
    nameless = Mirror(tmp_path / "quay", other, credentials="REGISTRY_MIRROR_QUAY")
    run = supervise(runs, [hub, ghcr, nameless], env={"REGISTRY_MIRROR_QUAY_PASSWORD": ""})
    for mirror in (hub, ghcr, nameless):
        mirror.serving()
    quay = f"[{nameless.settings}] {PROG}"
    wait_for("the token checks", lambda: run.said(f"[docker-hub] {PROG}upstream token service accepts")
             and run.said(f"[ghcr] {PROG}ERROR: upstream token service") and run.said(f"{quay}ERROR: upstream token"),
             5)
    assert run.stop() == 0
    lines = [line for _t, line in run.lines]
    assert lines[0] == f"{PROG}3 mirrors, a supervisor each: docker-hub, ghcr, {nameless.settings}"
    assert all(line.startswith(("[docker-hub] ", "[ghcr] ", f"[{nameless.settings}] ")) for line in lines[1:]), lines
    assert (f"[docker-hub] {PROG}upstream token service accepts the account in "
            "registry_mirror_dockerhub_username/token") in lines
    refused = run.said(f"[ghcr] {PROG}ERROR: upstream token service {other.url}/token refuses the account in "
                       "registry_mirror_upstreams[ghcr].username/password (HTTP 401)")
    assert refused is not None
    assert next(line for line in lines if line.startswith("[ghcr] ") and "(HTTP 401)" in line).endswith(
        "check registry_mirror_upstreams[ghcr].username/password")
    # The unnamed one: its path in the prefix; its password unset: anonymous, said without a value.
    assert (f"{quay}REGISTRY_MIRROR_QUAY_PASSWORD not set in the unit's environment: pulling from the upstream "
            "anonymously") in lines
    assert f"{quay}ERROR: upstream token service {other.url}/token refuses anonymous pulls (HTTP 401)" in run.journal()
    # Each token service got its own mirror's account (and the nameless mirror's, none).
    assert {token["auth"] for token in upstream.tokens()} == {basic(HUB_USER, HUB_SECRET)}
    assert {token["auth"] for token in other.tokens()} == {basic(GHCR_USER, GHCR_SECRET), None}
    everything = output(run)
    for secret in (HUB_SECRET, HUB_USER, GHCR_SECRET, GHCR_USER, QUAY_SECRET, QUAY_USER):
        assert secret not in everything


def test_lines_are_relayed_whole_each_with_its_mirror_s_prefix(
        tmp_path: Path, upstream: FakeUpstream, runs: list[GroupRun]) -> None:
    """Three registries write at once, each to stdout and stderr by turns: every line arrives whole, once, prefixed."""
    count = 3000
    names = ("docker-hub", "ghcr", "quay")
    run = supervise(runs, [Mirror(tmp_path / name, upstream, name=name, chatter=count) for name in names])
    last = {f"[{name}] chatter {count - 1} " + "x" * ((count - 1) % 200) for name in names}
    wait_for("every line", lambda: last <= {line for _t, line in run.lines}, 10)
    chatter = [line for _t, line in run.lines if " chatter " in line]
    expected = {f"[{name}] chatter {number} " + "x" * (number % 200) for name in names for number in range(count)}
    assert len(chatter) == len(expected) and set(chatter) == expected


@pytest.mark.parametrize(("content", "error"), [
    ({"probe_intervall": 3}, "unknown setting 'probe_intervall'"),
    ({"credentials": "GHCR"}, "credentials must be an environment variable prefix REGISTRY_MIRROR_"),
    ({"name": "gh cr"}, "name must have no spaces or control characters"),
    ({"version": "latest"}, "version 'latest' is not a distribution version"),
    (None, "cannot read settings"),
])
def test_an_invalid_settings_file_is_refused_naming_it_and_nothing_starts(
        tmp_path: Path, upstream: FakeUpstream, runs: list[GroupRun], content: dict[str, Any] | None,
        error: str) -> None:
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", upstream, name="ghcr")
    if content is None:
        ghcr.settings.unlink()
    else:
        ghcr.settings.write_text(json.dumps({**json.loads(ghcr.settings.read_text(encoding="utf-8")), **content}),
                                 encoding="utf-8")
    run = supervise(runs, [hub, ghcr])
    assert run.proc.wait(timeout=10) == 2
    time.sleep(0.2)
    assert [line for _t, line in run.lines] == [line for _t, line in run.lines if line.startswith(f"{PROG}ERROR: ")]
    assert len(run.lines) == 1 and str(ghcr.settings) in run.journal() and error in run.journal(), run.journal()
    assert not hub.starts() and not ghcr.starts()


def test_the_primary_s_storage_override_does_not_reach_the_other_mirrors(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[GroupRun]) -> None:
    hub = Mirror(tmp_path / "hub", upstream, name="docker-hub")
    ghcr = Mirror(tmp_path / "ghcr", other, name="ghcr", credentials=GHCR)
    override = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "moved"),
                "REGISTRY_LOG_LEVEL": "debug"}
    supervise(runs, [hub, ghcr], env=override)
    assert set(override) <= set(environment(hub, hub.serving()))
    assert not set(override) & set(environment(ghcr, ghcr.serving()))


def test_one_settings_file_is_single_mode_whatever_credentials_says(
        tmp_path: Path, upstream: FakeUpstream, runs: list[GroupRun]) -> None:
    """The unit's environment reaches the registry as it is (the mapping is group mode's), and no line is prefixed."""
    mirror = Mirror(tmp_path / "ghcr", upstream, name="ghcr", credentials=GHCR)
    run = GroupRun([], env=SECRETS, settings=[mirror.settings])
    runs.append(run)
    start = mirror.serving()
    assert (start["env"]["REGISTRY_PROXY_USERNAME"], start["env"]["REGISTRY_PROXY_PASSWORD"]) == (HUB_USER, HUB_SECRET)
    assert set(SECRETS) <= set(environment(mirror, start))
    assert run.stop() == 0
    assert run.journal() == "", run.journal()
