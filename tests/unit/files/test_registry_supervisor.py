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

import pytest
from registry_fakes import FAST, FakeUpstream, SupervisorRun, load_supervisor, pull_through, read_only, wait_for

UNREACHABLE = "unreachable"
READ_ONLY_SWITCH = "serving the cache read-only without the proxy"
NO_METRICS = "no metrics listener until the next switch or restart"


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


def start(runs: list[SupervisorRun], tmp_path: Path, upstream: FakeUpstream, **kwargs: object) -> SupervisorRun:
    supervisor = SupervisorRun(tmp_path, upstream, **kwargs)  # type: ignore[arg-type]
    runs.append(supervisor)
    return supervisor


@pytest.mark.parametrize("outage", ["down", "hang"])
def test_start_with_the_upstream_away_starts_pull_through_at_once_then_read_only(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun], outage: str) -> None:
    upstream.set(outage)
    supervisor = start(run, tmp_path, upstream)
    second = supervisor.serving(count=2)
    first = supervisor.starts()[0]
    # Pull-through at once (VMs do not wait for the probe), with the credentials...
    assert pull_through(first) and first["env"]["REGISTRY_PROXY_USERNAME"] == "mirror-user"
    assert first["t"] - supervisor.started < 1.0
    # ... replaced by read-only without them once the start probe failed, within its timeout.
    assert read_only(second), second
    assert second["t"] - supervisor.started < FAST["start_probe_timeout"] + 1.0
    if outage == "hang":  # no answer: the probe gave up after start_probe_timeout, not before
        assert second["t"] - first["t"] >= FAST["start_probe_timeout"]
    assert supervisor.said(f"upstream {upstream.url} {UNREACHABLE}") is not None
    assert READ_ONLY_SWITCH in supervisor.journal()
    time.sleep(3 * FAST["probe_interval"])
    assert len(supervisor.starts()) == 2, supervisor.starts()


def test_switch_to_read_only_only_after_the_failure_is_confirmed(
        tmp_path: Path, upstream: FakeUpstream, run: list[SupervisorRun]) -> None:
    supervisor = start(run, tmp_path, upstream, probe_interval=1.0, confirm_after=0.3)
    supervisor.serving()
    down = time.time()
    upstream.set("reset")
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
    supervisor.serving()
    blip = time.time()
    upstream.set("fail_once")
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
    old = supervisor.serving()
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
    supervisor = start(run, tmp_path, upstream, metrics=metrics, drain=drain)
    old = supervisor.serving()
    upstream.set("down")
    new = supervisor.serving(count=2)
    assert supervisor.first("bind-failed", new["pid"]) is None, supervisor.events()
    listening = supervisor.first("listening", new["pid"])
    assert listening is not None
    if drain:
        # The old registry holds the debug port while it drains: the new one starts without that listener.
        assert new["env"].get("REGISTRY_HTTP_DEBUG_ADDR") == ""
        assert supervisor.first("exit", old["pid"]) is None
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
        supervisor.serving()
        since = time.time()
        upstream.set("hang")
    wait_for("a probe in flight", lambda: upstream.probes(since=since), 5)
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
    first = supervisor.serving()
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


@pytest.mark.parametrize(("content", "error"), [
    ({"binary": "/r", "config": "/c", "upstream": "https://u"}, "missing version"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "probe_intervall": 3},
     "unknown setting 'probe_intervall'"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "metrics": "yes"},
     "metrics must be true or false"),
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
                                "probe_interval": 15}), encoding="utf-8")
    settings = supervisor.Settings.load(str(path))
    assert settings.upstream == "https://registry-1.docker.io"
    assert (settings.probe_interval, settings.probe_timeout, settings.confirm_after) == (15, 3.0, 1.0)
    assert (settings.start_probe_timeout, settings.failures_before_fallback, settings.stop_timeout) == (2.0, 2, 70.0)
