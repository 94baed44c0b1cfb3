# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor, run as the program it is, with a fake registry binary and a fake upstream (registry_fakes),
on shrunk timings (registry_fakes.FAST: probes every 0.3 s, a failure confirmed 0.15 s later)."""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    FAST,
    STARTUP,
    FakeDisk,
    FakeUpstream,
    SupervisorOnDisk,
    SupervisorRun,
    load_supervisor,
    pull_through,
    read_only,
    wait_for,
)

UNREACHABLE = "unreachable"
READ_ONLY_SWITCH = "serving the cache read-only without the proxy"
NO_METRICS = "no metrics listener until the next switch or restart"
PROG = "registry-supervisor: "
FLOOR_MB = 1024
RESUME_MB = 1126  # back to pull-through above the floor plus a tenth of it (more than the 64 MiB minimum)


@pytest.fixture(name="upstream")
def fixture_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(challenge=None)
    yield upstream
    upstream.close()


@pytest.fixture(name="run")
def fixture_run(tmp_path: Path, upstream: FakeUpstream) -> Iterator[list[SupervisorRun]]:
    """Start supervisors with run.append(SupervisorRun(...)); each is stopped after the test."""
    runs: list[SupervisorRun] = []
    yield runs
    for supervisor in runs:
        supervisor.stop()


def start(runs: list[SupervisorRun], tmp_path: Path, upstream: FakeUpstream, disk: FakeDisk | None = None,
          **kwargs: object) -> SupervisorRun:
    """A supervisor, with DISK's free space if given."""
    supervisor = (SupervisorOnDisk(tmp_path, upstream, disk, **kwargs) if disk
                  else SupervisorRun(tmp_path, upstream, **kwargs))  # type: ignore[arg-type]
    runs.append(supervisor)
    return supervisor


def settled(supervisor: SupervisorRun, upstream: FakeUpstream) -> dict[str, Any]:
    """The first registry, once it listens and the supervisor has the start probe's answer: the token check, which
    follows that answer in pull-through mode, has asked the upstream too. From then on what the upstream does reaches
    the periodic probes. The registry may listen before the start probe is even sent (loading the trust store first
    takes the supervisor a while on a busy machine), and a start probe that fails switches at once, giving the
    registry start_grace to exit, not switch_grace."""
    registry = supervisor.serving()
    wait_for("the start probe's answer (the token check's request)", lambda: len(upstream.probes()) >= 2, 5)
    return registry


@pytest.mark.parametrize("outage", ["down", "hang"])
def test_start_with_the_upstream_away_starts_pull_through_at_once_then_read_only(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun], outage: str) -> None:
    upstream.set(outage)
    supervisor = start(run, tmp_path, upstream)
    second = supervisor.serving(count=2)
    first = supervisor.starts()[0]
    # Pull-through at once (VMs do not wait for the probe), with the credentials...
    assert pull_through(first) and first["env"]["REGISTRY_PROXY_USERNAME"] == "mirror-user"
    # ... replaced by read-only without them once the start probe failed, within its timeout. Timed from the first
    # registry's start (the start probe's), not from the supervisor's: a busy machine takes more than a second to start
    # Python and import the supervisor.
    assert read_only(second), second
    assert second["t"] - first["t"] < FAST["start_probe_timeout"] + 1.0
    if outage == "hang":  # no answer: the probe gave up after start_probe_timeout, not before
        assert second["t"] - first["t"] >= FAST["start_probe_timeout"]
    assert supervisor.said(f"upstream {upstream.url} {UNREACHABLE}") is not None
    assert READ_ONLY_SWITCH in supervisor.journal()
    time.sleep(3 * FAST["probe_interval"])
    assert len(supervisor.starts()) == 2, supervisor.starts()


def test_switch_to_read_only_only_after_the_failure_is_confirmed(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    supervisor = start(run, tmp_path, upstream, probe_interval=1.0, confirm_after=0.3)
    settled(supervisor, upstream)
    down = upstream.set("reset")
    second = supervisor.serving(count=2, timeout=8)
    assert read_only(second)
    failed = [probe["t"] for probe in upstream.probes(since=down)]
    assert len(failed) >= 2, failed
    # Not at the first failed probe: only after the second one confirmed it...
    assert failed[1] < second["t"] < failed[1] + 0.5, (failed, second["t"])
    # ... which came confirm_after later, not a whole probe interval.
    assert 0.25 < failed[1] - failed[0] < 0.7, failed
    assert supervisor.said(READ_ONLY_SWITCH) is not None


def test_a_single_failed_probe_does_not_switch(tmp_path: Path, upstream: FakeUpstream,
                                               run: list[SupervisorRun]) -> None:
    supervisor = start(run, tmp_path, upstream)
    settled(supervisor, upstream)
    blip = upstream.set("fail_once")
    wait_for("three probes after the blip", lambda: len(upstream.probes(since=blip)) >= 3, 5)
    assert len(supervisor.starts()) == 1, supervisor.starts()
    assert UNREACHABLE not in supervisor.journal()


def test_back_to_pull_through_when_the_upstream_answers_again(tmp_path: Path, run: list[SupervisorRun]) -> None:
    upstream = FakeUpstream()
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    try:
        upstream.set("down")
        supervisor = start(run, tmp_path, upstream)
        assert read_only(supervisor.serving(count=2))
        back = time.time()
        upstream.set("up")
        third = supervisor.serving(count=3)
        assert pull_through(third) and third["env"]["REGISTRY_PROXY_PASSWORD"] == "s3cret"
        assert third["t"] - back < FAST["probe_interval"] + FAST["probe_timeout"] + 1.0
        assert supervisor.said(f"upstream {upstream.url} answers again (401): back to pull-through mode") is not None
        # The token check runs again with the return, with the credentials.
        wait_for("the token check", lambda: supervisor.said("upstream token service accepts the configured account"),
                 3)
        assert upstream.tokens()[-1]["auth"].startswith("Basic ")
    finally:
        upstream.close()


def test_a_switch_stops_the_old_registry_gently_and_starts_the_new_one_while_it_drains(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    supervisor = start(run, tmp_path, upstream, drain=1.0)
    old = settled(supervisor, upstream)
    upstream.set("down")
    new = supervisor.serving(count=2)
    term = supervisor.first("signal", old["pid"])
    assert term is not None and term["signal"] == signal.SIGTERM
    # The new registry starts once the old one let go of the port (after SIGTERM), without waiting for the drain...
    assert term["t"] <= new["t"] < term["t"] + FAST["switch_grace"] + 0.5
    assert supervisor.first("bind-failed", new["pid"]) is None
    # ... and the old one is left to finish: it exits by itself, after its drain, and is never killed.
    exit_record = wait_for("the old registry to exit", lambda: supervisor.first("exit", old["pid"]), 5)
    assert exit_record["t"] - term["t"] >= 0.9
    assert new["t"] < exit_record["t"]
    wait_for("the supervisor to reap the old registry", lambda: gone(old["pid"]), 2)


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie its parent has not reaped) has PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("metrics", "drain"), [(True, 1.0), (True, 0.0), (False, 1.0)])
def test_metrics_listener_handover(tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun],
                                   metrics: bool, drain: float) -> None:
    # The old registry exits at once (DRAIN 0) and has all the time it needs to, or drains longer than the grace.
    grace = FAST["switch_grace"] if drain else STARTUP
    supervisor = start(run, tmp_path, upstream, metrics=metrics, drain=drain, switch_grace=grace)
    old = settled(supervisor, upstream)  # the switch comes from a periodic probe: switch_grace, shorter than the drain
    upstream.set("down")
    new = supervisor.serving(count=2)
    assert supervisor.first("bind-failed", new["pid"]) is None, supervisor.events()
    listening = supervisor.first("listening", new["pid"])
    assert listening is not None
    if drain:
        # The old registry holds the debug port while it drains: the new one, started before the old one's exit,
        # starts without that listener.
        assert new["env"].get("REGISTRY_HTTP_DEBUG_ADDR") == ""
        exit_record = wait_for("the old registry to exit", lambda: supervisor.first("exit", old["pid"]), 5)
        assert new["t"] < exit_record["t"]
    else:
        # The old one exited within the grace: the new one gets the listener back.
        assert "REGISTRY_HTTP_DEBUG_ADDR" not in new["env"]
        assert listening["debug"] == supervisor.debug_addr
    assert (NO_METRICS in supervisor.journal()) == (metrics and drain > 0), supervisor.journal()


@pytest.mark.parametrize("phase", ["start probe", "periodic probe"])
def test_sigterm_during_a_probe_stops_the_supervisor_at_once(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun], phase: str) -> None:
    since = time.time()
    if phase == "start probe":
        upstream.set("hang")
    supervisor = start(run, tmp_path, upstream, probe_timeout=20, start_probe_timeout=20)
    if phase == "periodic probe":
        settled(supervisor, upstream)
        since = upstream.set("hang")
    wait_for("a probe in flight", lambda: upstream.probes(since=since), STARTUP)
    time.sleep(0.2)
    stopped = time.monotonic()
    assert supervisor.stop() == 0
    assert time.monotonic() - stopped < 1.5
    for registry in supervisor.starts():  # the registries were stopped with it
        assert supervisor.first("signal", registry["pid"]) is not None


def test_registry_exit_while_the_upstream_answers_fails_the_unit(tmp_path: Path, upstream: FakeUpstream,
                                                                 run: list[SupervisorRun]) -> None:
    supervisor = start(run, tmp_path, upstream)
    os.kill(supervisor.serving()["pid"], signal.SIGKILL)
    assert supervisor.proc.wait(timeout=5) != 0  # systemd restarts the unit
    assert "registry exited with status -9" in supervisor.journal()


def test_registry_exit_while_the_upstream_is_away_serves_read_only(tmp_path: Path, upstream: FakeUpstream,
                                                                   run: list[SupervisorRun]) -> None:
    supervisor = start(run, tmp_path, upstream, probe_interval=60)
    first = settled(supervisor, upstream)
    upstream.set("down")
    os.kill(first["pid"], signal.SIGKILL)
    assert read_only(supervisor.serving(count=2))
    assert f"registry exited and upstream {upstream.url} is unreachable" in supervisor.journal()


def test_without_offline_fallback_the_registry_runs_alone(tmp_path: Path, upstream: FakeUpstream,
                                                          run: list[SupervisorRun]) -> None:
    upstream.set("down")
    supervisor = start(run, tmp_path, upstream, offline_fallback=False)
    assert supervisor.proc.wait(timeout=5) == 2  # distribution's panic: systemd restarts the unit
    assert "registry exited with status 2" in supervisor.journal()
    assert len(supervisor.starts()) == 1 and not upstream.probes()


# --- The free-space floor ---------------------------------------------------------------------------------------------

def low_space(free_mb: int, storage: Path) -> str:
    """The journal line of a switch to read-only for want of space."""
    return (f"{PROG}WARNING: {free_mb} MiB free on {storage}, below the floor of {FLOOR_MB} MiB: serving the cache "
            f"read-only and storing nothing new until more than {RESUME_MB} MiB are free")


def space_back(free_mb: int, storage: Path, upstream: FakeUpstream | None = None) -> str:
    """The journal line of the return to pull-through mode once there is space again (and the upstream answers)."""
    answers = f" and upstream {upstream.url} answers (200)" if upstream else ""
    return f"{PROG}{free_mb} MiB free on {storage} again (floor {FLOOR_MB} MiB){answers}: back to pull-through mode"


def lines(supervisor: SupervisorRun) -> list[str]:
    return supervisor.journal().splitlines()


def still(supervisor: SupervisorRun, count: int, disk: FakeDisk | None = None) -> None:
    """After several more probe ticks (that checked the disk), still COUNT registries started."""
    checks = disk.checks() if disk else 0
    time.sleep(4 * FAST["probe_interval"])
    assert len(supervisor.starts()) == count, (supervisor.starts(), supervisor.journal())
    if disk:
        assert disk.checks() >= checks + 2, "the free space was not checked at the probe ticks"


@pytest.mark.parametrize("phase", ["at start", "while serving"])
def test_below_the_floor_the_cache_is_served_read_only_although_the_upstream_answers(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun], phase: str) -> None:
    disk = FakeDisk(tmp_path, free_mb=100 if phase == "at start" else 2000)
    supervisor = start(run, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB)
    count = 1
    if phase == "while serving":
        assert pull_through(supervisor.serving())
        disk.set(100)
        count = 2
    registry = supervisor.serving(count=count)
    assert read_only(registry), registry  # REGISTRY_PROXY_REMOTEURL="", storage read-only, no credentials
    assert all(read_only(r) for r in supervisor.starts()[count - 1:]), supervisor.starts()  # at start: no pull-through
    assert low_space(100, disk.path) in lines(supervisor), supervisor.journal()
    still(supervisor, count, disk)  # the upstream answers all along
    assert supervisor.journal().count("WARNING") == 1 and UNREACHABLE not in supervisor.journal()


def test_back_to_pull_through_only_above_the_floor_plus_the_margin(tmp_path: Path, upstream: FakeUpstream,
                                                                   run: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=100)
    supervisor = start(run, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB)
    assert read_only(supervisor.serving())
    disk.set(FLOOR_MB + 76)  # above the floor, not above the margin: stays read-only
    still(supervisor, 1, disk)
    disk.set(RESUME_MB + 1)
    back = supervisor.serving(count=2)
    assert pull_through(back) and back["env"]["REGISTRY_PROXY_PASSWORD"] == "s3cret"
    assert space_back(RESUME_MB + 1, disk.path, upstream) in lines(supervisor), supervisor.journal()
    disk.set(FLOOR_MB + 76)  # the other side of the margin: above the floor, pull-through stays
    still(supervisor, 2, disk)
    disk.set(FLOOR_MB - 1)
    assert read_only(supervisor.serving(count=3))
    assert low_space(FLOOR_MB - 1, disk.path) in lines(supervisor)


def test_space_and_the_upstream_must_both_be_back(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=100)
    upstream.set("down")
    supervisor = start(run, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB)
    assert read_only(supervisor.serving())
    still(supervisor, 1, disk)
    # The upstream returns, the disk is still full: said once, read-only stays.
    upstream.set("up")
    wait_for("the upstream's return", lambda: supervisor.said(
        f"upstream {upstream.url} answers again (200), but only 100 MiB are free on {disk.path} (more than "
        f"{RESUME_MB} MiB needed): still serving the cache read-only"), 3)
    still(supervisor, 1, disk)
    assert supervisor.journal().count("answers again") == 1
    # The upstream goes away, then space is back: read-only stays, waiting for the upstream.
    upstream.set("down")
    disk.set(5000)  # the first tick that sees the space probes the upstream after this
    wait_for("the space's return", lambda: supervisor.said(
        f"5000 MiB free on {disk.path} again (floor {FLOOR_MB} MiB), but upstream {upstream.url} is unreachable ("), 3)
    still(supervisor, 1, disk)
    upstream.set("up")
    assert pull_through(supervisor.serving(count=2))
    assert f"{PROG}upstream {upstream.url} answers again (200): back to pull-through mode" in lines(supervisor)


def test_without_offline_fallback_the_floor_still_applies_without_probes(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=2000)
    supervisor = start(run, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB,
                       offline_fallback=False)
    assert pull_through(supervisor.serving())
    disk.set(0)
    assert read_only(supervisor.serving(count=2))
    assert low_space(0, disk.path) in lines(supervisor)
    disk.set(2000)
    assert pull_through(supervisor.serving(count=3))
    assert space_back(2000, disk.path) in lines(supervisor), supervisor.journal()
    still(supervisor, 3, disk)
    # The upstream's /v2/ was asked only by the token checks at start and at the return, never by a probe tick.
    assert len(upstream.probes()) == 2, upstream.probes()


def test_floor_0_never_checks(tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=0)
    supervisor = start(run, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=0)
    assert pull_through(supervisor.serving())
    still(supervisor, 1)
    assert disk.checks() == 0
    assert supervisor.journal() == "", supervisor.journal()


def test_the_environment_s_storage_directory_is_the_one_checked(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    """A systemd drop-in moves the storage with REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: distribution stores there,
    so that is the filesystem that fills up."""
    disk = FakeDisk(tmp_path, free_mb=100, in_environment=True)
    supervisor = start(run, tmp_path, upstream, disk=disk, storage=str(tmp_path / "configured"), min_free_mb=FLOOR_MB)
    assert read_only(supervisor.serving())
    assert low_space(100, disk.path) in lines(supervisor), supervisor.journal()


@pytest.mark.parametrize("storage", ["missing", "not set"])
def test_an_unknown_free_space_is_said_once_and_changes_nothing(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun], storage: str) -> None:
    if storage == "missing":
        supervisor = start(run, tmp_path, upstream, min_free_mb=FLOOR_MB, storage=str(tmp_path / "missing"))
    else:
        supervisor = start(run, tmp_path, upstream, min_free_mb=FLOOR_MB)
    assert pull_through(supervisor.serving())
    still(supervisor, 1)
    if storage == "missing":
        expected = f"{PROG}cannot check the free space on {tmp_path / 'missing'} ([Errno 2] No such file or directory: "
    else:
        expected = (f"{PROG}min_free_mb is {FLOOR_MB} but no storage directory is set (storage, "
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY): free space is not checked")
    assert [line for line in lines(supervisor) if line.startswith(expected)] == lines(supervisor), supervisor.journal()
    assert len(lines(supervisor)) == 1


@pytest.mark.parametrize(("content", "error"), [
    ({"binary": "/r", "config": "/c", "upstream": "https://u"}, "missing version"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "probe_intervall": 3},
     "unknown setting 'probe_intervall'"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "metrics": "yes"},
     "metrics must be true or false"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "min_free_mb": -1},
     "min_free_mb must be a whole number >= 0"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "storage": ""},
     "storage must be a non-empty string"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "latest"}, "not a distribution version"),
])
def test_invalid_settings_are_refused_naming_the_problem(tmp_path: Path, content: dict[str, object],
                                                         error: str) -> None:
    supervisor = load_supervisor()
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(supervisor.SettingsError, match=error):
        supervisor.Settings.load(str(path))


def test_settings_as_the_role_writes_them(tmp_path: Path) -> None:
    supervisor = load_supervisor()
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"_comment": "Ansible managed", "binary": "/usr/local/bin/registry",
                                "config": "/etc/registry/config.yml", "upstream": "https://registry-1.docker.io/",
                                "version": "3.1.1", "offline_fallback": True, "metrics": False,
                                "probe_interval": 15, "storage": "/var/lib/registry", "min_free_mb": 2048}),
                    encoding="utf-8")
    settings = supervisor.Settings.load(str(path))
    assert settings.upstream == "https://registry-1.docker.io"
    assert (settings.probe_interval, settings.probe_timeout, settings.confirm_after) == (15, 3.0, 1.0)
    assert (settings.start_probe_timeout, settings.failures_before_fallback, settings.stop_timeout) == (2.0, 2, 70.0)
    assert (settings.storage, settings.min_free_mb) == ("/var/lib/registry", 2048)
