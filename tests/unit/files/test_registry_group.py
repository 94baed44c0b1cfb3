# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_group without processes: each mirror's back-off (on a clock of the test's), and the environment each
child supervisor gets. Group mode at work, with child supervisors and fake registries, is in
test_registry_supervisor_group.py."""
from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import FILES, SUPERVISOR
from test_registry_supervisor_fallbacks import ENV, TIERB, TIERB_SECRET, TIERB_USER

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_group
import registry_settings


def test_back_off_doubles_up_to_60_s_and_starts_again_at_2_s_after_a_run_of_60_s(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1"}),
                    encoding="utf-8")
    member = registry_group.Member(str(path), registry_settings.Settings.load(str(path)), {}, primary=False)
    group = registry_group.Group([member], str(SUPERVISOR))
    delays = []
    for _exit in range(8):
        member.started = time.monotonic() - 1
        delays.append(group.schedule(member))
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    member.started = time.monotonic() - 60
    assert group.schedule(member) == 2
    assert member.label == str(path)


class GroupClock:
    """The group's time: it stands still but for the group's own sleeps, and stops the group once it reaches STOP_AT
    (as SIGTERM would)."""

    def __init__(self, group: Any, stop_at: float) -> None:
        self.now, self.group, self.stop_at = 0.0, group, stop_at

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 6)
        if self.now >= self.stop_at:
            self.group.stopping = True


class FailingChild:
    """A child supervisor that has exited with status 1 (a mirror that cannot start)."""

    returncode = 1

    def poll(self) -> int:
        return 1

    def send_signal(self, _signum: int) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return 1


def clocked_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  stop_at: float) -> tuple[Any, GroupClock, list[float]]:
    """Group mode with one mirror whose supervisor always exits at once, on a GroupClock; the times it was started."""
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1"}),
                    encoding="utf-8")
    member = registry_group.Member(str(path), registry_settings.Settings.load(str(path)), {}, primary=False)
    group = registry_group.Group([member], str(SUPERVISOR))
    clock = GroupClock(group, stop_at)
    starts: list[float] = []

    def start(member: Any) -> None:
        member.started = clock.now
        member.proc = FailingChild()
        starts.append(clock.now)

    monkeypatch.setattr(registry_group, "time", types.SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    monkeypatch.setattr(registry_group, "kill_group", lambda _proc: None)
    monkeypatch.setattr(group, "start", start)
    return group, clock, starts


def test_a_mirror_is_started_again_only_once_its_back_off_has_passed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    group, _clock, starts = clocked_group(tmp_path, monkeypatch, stop_at=40)
    tick = registry_group.GROUP_TICK
    assert group.run() == 0
    # Each exit is seen at the group's next tick, and the next start waits for the whole back-off: 2, 4, 8, 16 s.
    expected = [0.0]
    for delay in (2, 4, 8, 16):
        expected.append(round(expected[-1] + tick + delay, 6))
    assert starts == expected
    said = [line.rsplit(" restarting in ", 1)[1] for line in capsys.readouterr().err.splitlines()
            if " restarting in " in line]
    assert said == ["2 s", "4 s", "8 s", "16 s", "32 s"]


def test_sigterm_during_a_back_off_ends_the_group_without_waiting_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group, clock, starts = clocked_group(tmp_path, monkeypatch, stop_at=1.0)  # SIGTERM 1 s into the first back-off
    assert group.run() == 0
    assert starts == [0.0] and clock.now < group.members[0].restart_at


def test_group_mode_environments_carry_the_fallbacks_variables_to_their_own_child_only(tmp_path: Path) -> None:
    parent = {"PATH": "/usr/bin", "REGISTRY_PROXY_USERNAME": "hub", "REGISTRY_PROXY_PASSWORD": "hub-secret",
              "REGISTRY_LOG_LEVEL": "debug", **ENV,
              "REGISTRY_MIRROR_GHCR_USERNAME": "ghcr", "REGISTRY_MIRROR_GHCR_PASSWORD": "ghcr-secret",
              "REGISTRY_MIRROR_TIER2_USERNAME": "tier2", "REGISTRY_MIRROR_TIER2_PASSWORD": "tier2-secret"}

    def settings(name: str, **values: Any) -> Any:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": f"https://{name}.example",
                                    "version": "3.1.1", **values}), encoding="utf-8")
        return registry_settings.Settings.load(str(path))

    primary = settings("docker-hub", fallbacks=[{"url": "https://tier2.example:5000", "credentials":
                                                 "REGISTRY_MIRROR_TIER2"}, {"url": "https://other.example"}])
    env, note = registry_group.child_environment(parent, primary, primary=True)
    assert note == ""
    assert {name for name in env if name.startswith("REGISTRY_MIRROR_")} == {
        "REGISTRY_MIRROR_TIER2_USERNAME", "REGISTRY_MIRROR_TIER2_PASSWORD"}
    assert env["REGISTRY_PROXY_PASSWORD"] == "hub-secret" and env["REGISTRY_LOG_LEVEL"] == "debug"
    further = settings("ghcr", credentials="REGISTRY_MIRROR_GHCR",
                       fallbacks=[{"url": "https://tierb.example", "credentials": TIERB}])
    env, note = registry_group.child_environment(parent, further, primary=False)
    assert note == ""
    assert {name: value for name, value in env.items() if name.startswith("REGISTRY_")} == {
        "REGISTRY_PROXY_USERNAME": "ghcr", "REGISTRY_PROXY_PASSWORD": "ghcr-secret",
        f"{TIERB}_USERNAME": TIERB_USER, f"{TIERB}_PASSWORD": TIERB_SECRET}
    without = settings("quay")
    env, _note = registry_group.child_environment(parent, without, primary=False)
    assert not [name for name in env if name.startswith("REGISTRY_")]


def test_a_credentials_file_of_whole_pairs_passes_and_a_lone_half_is_named(tmp_path: Path) -> None:
    path = tmp_path / "proxy.env"
    path.write_text('# comment\n\nREGISTRY_PROXY_USERNAME="u"\nREGISTRY_PROXY_PASSWORD="p"\n'
                    'REGISTRY_MIRROR_GHCR_USERNAME="g"\nREGISTRY_MIRROR_GHCR_PASSWORD="S3CRET"\n', encoding="utf-8")
    registry_group.check_env_file(str(path))
    path.write_text('REGISTRY_MIRROR_GHCR_PASSWORD="S3CRET"\n', encoding="utf-8")
    with pytest.raises(registry_settings.SettingsError, match="REGISTRY_MIRROR_GHCR_PASSWORD is set without "
                                                              "REGISTRY_MIRROR_GHCR_USERNAME") as raised:
        registry_group.check_env_file(str(path))
    assert "S3CRET" not in str(raised.value)
