# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor, run as the program it is, with a fake registry binary and a fake upstream (registry_fakes),
on shrunk timings (registry_fakes.FAST: probes every 0.3 s, a failure confirmed 0.15 s later)."""
from __future__ import annotations

import json
import os
import signal
import time
import types
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    FAST,
    PROG,
    READ_ONLY_SWITCH,
    STARTUP,
    UNREACHABLE,
    FakeUpstream,
    SupervisorRun,
    gone,
    load_supervisor,
    pull_through,
    read_only,
    start_supervisor,
    wait_for,
)

NO_METRICS = "no metrics listener until the next switch or restart"


def settled(supervisor: SupervisorRun, upstream: FakeUpstream) -> dict[str, Any]:
    """The first registry, once it listens and the supervisor has the start probe's answer: the token check, which
    follows that answer in pull-through mode, has asked the upstream too. From then on what the upstream does reaches
    the periodic probes. The registry may listen before the start probe is even sent (loading the trust store first
    takes the supervisor a while on a busy machine), and a start probe that fails switches at once, giving the
    registry start_grace to exit, not switch_grace."""
    registry = supervisor.serving()
    wait_for("the start probe's answer (the token check's request)", lambda: len(upstream.probes()) >= 2, 5)
    return registry


@pytest.mark.parametrize(("outage", "reason"), [("down", "Connection refused"), ("hang", "timed out")])
def test_start_with_the_upstream_away_starts_pull_through_at_once_then_read_only(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun], outage: str, reason: str) -> None:
    upstream.set(outage)
    supervisor = start_supervisor(runs, tmp_path, upstream)
    second = supervisor.serving(count=2)
    first = supervisor.starts()[0]
    # Pull-through at once (VMs do not wait for the probe), with the credentials...
    assert pull_through(first) and first["env"]["REGISTRY_PROXY_USERNAME"] == "mirror-user"
    # ... replaced by read-only without them as soon as the start probe failed (refused, or given up on: a hanging
    # upstream got no other request of the supervisor's before the switch), with no periodic probe to confirm it.
    assert read_only(second), second
    switch = [line for line in supervisor.journal_lines() if UNREACHABLE in line]
    assert len(switch) == 1 and switch[0].startswith(f"{PROG}upstream {upstream.url} {UNREACHABLE} ("), switch
    assert switch[0].endswith(f"{reason}): {READ_ONLY_SWITCH}"), switch
    if outage == "hang":
        assert len([probe for probe in upstream.probes() if probe["t"] < second["t"]]) == 1, upstream.probes()
    time.sleep(3 * FAST["probe_interval"])  # the read-only registry stays while the upstream is away
    assert len(supervisor.starts()) == 2, supervisor.starts()


def settings_file(tmp_path: Path, **values: Any) -> Path:
    """A supervisor.json with VALUES on top of what every one needs."""
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1",
                                **values}), encoding="utf-8")
    return path


def test_the_start_probe_waits_start_probe_timeout_then_replaces_the_starting_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_supervisor()
    path = settings_file(tmp_path, probe_timeout=0.3, start_probe_timeout=0.7, start_grace=1.5, switch_grace=0.2)
    supervisor = module.Supervisor(module.Settings.load(str(path)))
    timeouts: list[float] = []
    replaced: list[tuple[object, ...]] = []

    def fetch(_request: object, timeout: float, read: bool = False, upstream: str = "") -> bytes:
        timeouts.append(timeout)
        raise OSError("timed out")

    def replace(child: object, local: bool, grace: float, serving: bool = True) -> str:
        replaced.append((child, local, grace, serving))
        return "the read-only registry"

    monkeypatch.setattr(supervisor.upstreams, "fetch", fetch)
    monkeypatch.setattr(supervisor, "replace", replace)
    supervisor.start_probe("the starting registry")
    # One request, with the start probe's own timeout; the registry, still starting, gets start_grace to exit, and its
    # socket is kept (not serving yet: nothing to hand over).
    assert timeouts == [0.7]
    assert replaced == [("the starting registry", True, 1.5, False)]
    assert supervisor.child == "the read-only registry" and supervisor.local


def test_a_failed_probe_is_confirmed_confirm_after_later_and_only_a_confirmed_failure_switches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_supervisor()
    path = settings_file(tmp_path, probe_interval=15, confirm_after=1.5)
    supervisor = module.Supervisor(module.Settings.load(str(path)))
    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: 1000.0, time=time.time,
                                                              sleep=time.sleep))  # a clock that stands still
    answers = iter([False, True, False, False])  # the upstream's, probe after probe
    switched: list[bool] = []

    def fetch(_request: object, _timeout: float, read: bool = False, upstream: str = "") -> bytes:
        if not next(answers):
            raise ConnectionResetError("reset")
        return b""

    def switch(local: bool) -> None:
        switched.append(local)

    monkeypatch.setattr(supervisor.upstreams, "fetch", fetch)
    monkeypatch.setattr(supervisor, "switch", switch)
    supervisor.next_probe = 1015.0
    supervisor.probe_active()  # a failure: the next probe comes confirm_after later, not a probe interval later
    assert (supervisor.failures, supervisor.next_probe, switched) == (1, 1001.5, [])
    supervisor.probe_active()  # it answers: the failure is forgotten
    assert (supervisor.failures, switched) == (0, [])
    supervisor.probe_active()
    assert (supervisor.failures, supervisor.next_probe, switched) == (1, 1001.5, [])
    supervisor.probe_active()  # the second failure in a row confirms it: read-only
    assert switched == [True]
    assert capsys.readouterr().err.splitlines() == [
        f"{PROG}upstream https://u {UNREACHABLE} (reset): {READ_ONLY_SWITCH}"]


def test_switch_to_read_only_only_after_the_failure_is_confirmed(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = start_supervisor(runs, tmp_path, upstream, probe_interval=1.0, confirm_after=0.3)
    settled(supervisor, upstream)
    down = upstream.set("reset")
    second = supervisor.serving(count=2, timeout=8)
    assert read_only(second)
    # Not at the first failed probe: the second one confirmed it, and the switch followed that one (when the next
    # probe comes is the test above's).
    failed = [probe["t"] for probe in upstream.probes(since=down)]
    assert len([t for t in failed if t < second["t"]]) == 2, (failed, second["t"])
    switch = [line for line in supervisor.journal_lines() if UNREACHABLE in line]
    assert len(switch) == 1 and switch[0].endswith(READ_ONLY_SWITCH), supervisor.journal()


def test_a_single_failed_probe_does_not_switch(tmp_path: Path, upstream: FakeUpstream,
                                               runs: list[SupervisorRun]) -> None:
    supervisor = start_supervisor(runs, tmp_path, upstream)
    settled(supervisor, upstream)
    blip = upstream.set("fail_once")
    wait_for("three probes after the blip", lambda: len(upstream.probes(since=blip)) >= 3, 5)
    assert len(supervisor.starts()) == 1, supervisor.starts()
    assert UNREACHABLE not in supervisor.journal()


def test_back_to_pull_through_when_the_upstream_answers_again(tmp_path: Path, runs: list[SupervisorRun]) -> None:
    upstream = FakeUpstream()
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    try:
        upstream.set("down")
        supervisor = start_supervisor(runs, tmp_path, upstream)
        assert read_only(supervisor.serving(count=2))
        back = upstream.set("up")
        third = supervisor.serving(count=3)
        assert pull_through(third) and third["env"]["REGISTRY_PROXY_PASSWORD"] == "s3cret"
        # The first probe that found it answering decided, with no other to confirm it: then the token check asked.
        assert len([probe for probe in upstream.probes(since=back) if probe["t"] < third["t"]]) == 2, \
            upstream.probes(since=back)
        assert supervisor.said(f"upstream {upstream.url} answers again (401): back to pull-through mode") is not None
        # The token check runs again with the return, with the credentials.
        wait_for("the token check", lambda: supervisor.said("upstream token service accepts the account in"),
                 3)
        assert upstream.tokens()[-1]["auth"].startswith("Basic ")
    finally:
        upstream.close()


def test_a_switch_stops_the_old_registry_gently_and_starts_the_new_one_while_it_drains(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    supervisor = start_supervisor(runs, tmp_path, upstream, drain=1.0)
    old = settled(supervisor, upstream)
    upstream.set("down")
    new = supervisor.serving(count=2)
    term = supervisor.first("signal", old["pid"])
    assert term is not None and term["signal"] == signal.SIGTERM
    # The new registry starts once the old one let go of the port (after SIGTERM), without waiting for the drain...
    assert term["t"] <= new["t"]
    assert supervisor.first("bind-failed", new["pid"]) is None
    # ... and the old one is left to finish: it exits by itself (its own exit record: a registry killed has none),
    # after its drain, while the new one already serves, and is never killed.
    exit_record = wait_for("the old registry to exit", lambda: supervisor.first("exit", old["pid"]), 5)
    assert exit_record["status"] == 0 and new["t"] < exit_record["t"]
    wait_for("the supervisor to reap the old registry", lambda: gone(old["pid"]), 2)


@pytest.mark.parametrize(("metrics", "drain"), [(True, 1.0), (True, 0.0), (False, 1.0)])
def test_metrics_listener_handover(tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun],
                                   metrics: bool, drain: float) -> None:
    # The old registry exits at once (DRAIN 0) and has all the time it needs to, or drains longer than the grace.
    grace = FAST["switch_grace"] if drain else STARTUP
    supervisor = start_supervisor(runs, tmp_path, upstream, metrics=metrics, drain=drain, switch_grace=grace)
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
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun], phase: str) -> None:
    # The probe would hang for ten minutes: a supervisor that ends (0) before the upstream is released did not wait
    # for it.
    since = time.time()
    if phase == "start probe":
        upstream.set("hang")
    supervisor = start_supervisor(runs, tmp_path, upstream, probe_timeout=600, start_probe_timeout=600)
    if phase == "periodic probe":
        settled(supervisor, upstream)
        since = upstream.set("hang")
    wait_for("a probe in flight", lambda: upstream.probes(since=since), STARTUP)
    time.sleep(0.2)
    assert supervisor.stop() == 0
    assert not upstream.released.is_set() and len(upstream.probes(since=since)) == 1
    assert UNREACHABLE not in supervisor.journal()  # the probe never ended: nothing was decided on it
    for registry in supervisor.starts():  # the registries were stopped with it
        assert supervisor.first("signal", registry["pid"]) is not None


def test_registry_exit_while_the_upstream_answers_fails_the_unit(tmp_path: Path, upstream: FakeUpstream,
                                                                 runs: list[SupervisorRun]) -> None:
    supervisor = start_supervisor(runs, tmp_path, upstream)
    os.kill(supervisor.serving()["pid"], signal.SIGKILL)
    assert supervisor.proc.wait(timeout=5) != 0  # systemd restarts the unit
    assert "registry exited with status -9" in supervisor.journal()


def test_registry_exit_while_the_upstream_is_away_serves_read_only(tmp_path: Path, upstream: FakeUpstream,
                                                                   runs: list[SupervisorRun]) -> None:
    supervisor = start_supervisor(runs, tmp_path, upstream, probe_interval=60)
    first = settled(supervisor, upstream)
    upstream.set("down")
    os.kill(first["pid"], signal.SIGKILL)
    assert read_only(supervisor.serving(count=2))
    assert f"registry exited and upstream {upstream.url} is unreachable" in supervisor.journal()


def test_without_offline_fallback_the_registry_runs_alone(tmp_path: Path, upstream: FakeUpstream,
                                                          runs: list[SupervisorRun]) -> None:
    upstream.set("down")
    supervisor = start_supervisor(runs, tmp_path, upstream, offline_fallback=False)
    assert supervisor.proc.wait(timeout=5) == 2  # distribution's panic: systemd restarts the unit
    assert "registry exited with status 2" in supervisor.journal()
    assert len(supervisor.starts()) == 1 and not upstream.probes()
