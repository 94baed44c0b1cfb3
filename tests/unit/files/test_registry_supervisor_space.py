# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's free-space floor, run as the program it is (registry_fakes) with a storage directory whose
free space the test sets (FakeDisk): read-only below the floor, back to pull-through only above the floor plus a
margin and while the upstream answers, said once; on the FAST timings."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from registry_fakes import (
    FAST,
    PROG,
    STARTUP,
    UNREACHABLE,
    FakeDisk,
    FakeUpstream,
    SupervisorRun,
    pull_through,
    read_only,
    start_supervisor,
    wait_for,
)

FLOOR_MB = 1024
RESUME_MB = 1126  # back to pull-through above the floor plus a tenth of it (more than the 64 MiB minimum)


def low_space(free_mb: int, storage: Path) -> str:
    """The journal line of a switch to read-only for want of space."""
    return (f"{PROG}WARNING: {free_mb} MiB free on {storage}, below the floor of {FLOOR_MB} MiB: serving the cache "
            f"read-only and storing nothing new until more than {RESUME_MB} MiB are free")


def space_back(free_mb: int, storage: Path, upstream: FakeUpstream | None = None) -> str:
    """The journal line of the return to pull-through mode once there is space again (and the upstream answers)."""
    answers = f" and upstream {upstream.url} answers (200)" if upstream else ""
    return f"{PROG}{free_mb} MiB free on {storage} again (floor {FLOOR_MB} MiB){answers}: back to pull-through mode"


def still(supervisor: SupervisorRun, count: int, disk: FakeDisk | None = None) -> None:
    """After three more probe ticks (each checked DISK's free space, if given), still COUNT registries started."""
    if disk:
        checks = disk.checks()
        wait_for("three more checks of the free space at the probe ticks", lambda: disk.checks() >= checks + 3,
                 STARTUP)
    else:
        time.sleep(4 * FAST["probe_interval"])
    assert len(supervisor.starts()) == count, (supervisor.starts(), supervisor.journal())


@pytest.mark.parametrize("phase", ["at start", "while serving"])
def test_below_the_floor_the_cache_is_served_read_only_although_the_upstream_answers(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun], phase: str) -> None:
    disk = FakeDisk(tmp_path, free_mb=100 if phase == "at start" else 2000)
    supervisor = start_supervisor(runs, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB)
    count = 1
    if phase == "while serving":
        assert pull_through(supervisor.serving())
        disk.set(100)
        count = 2
    registry = supervisor.serving(count=count)
    assert read_only(registry), registry  # REGISTRY_PROXY_REMOTEURL="", storage read-only, no credentials
    assert all(read_only(r) for r in supervisor.starts()[count - 1:]), supervisor.starts()  # at start: no pull-through
    assert low_space(100, disk.path) in supervisor.journal_lines(), supervisor.journal()
    still(supervisor, count, disk)  # the upstream answers all along
    assert supervisor.journal().count("WARNING") == 1 and UNREACHABLE not in supervisor.journal()


def test_back_to_pull_through_only_above_the_floor_plus_the_margin(tmp_path: Path, upstream: FakeUpstream,
                                                                   runs: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=100)
    supervisor = start_supervisor(runs, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB)
    assert read_only(supervisor.serving())
    disk.set(FLOOR_MB + 76)  # above the floor, not above the margin: stays read-only
    still(supervisor, 1, disk)
    disk.set(RESUME_MB + 1)
    back = supervisor.serving(count=2)
    assert pull_through(back) and back["env"]["REGISTRY_PROXY_PASSWORD"] == "s3cret"
    assert space_back(RESUME_MB + 1, disk.path, upstream) in supervisor.journal_lines(), supervisor.journal()
    disk.set(FLOOR_MB + 76)  # the other side of the margin: above the floor, pull-through stays
    still(supervisor, 2, disk)
    disk.set(FLOOR_MB - 1)
    assert read_only(supervisor.serving(count=3))
    assert low_space(FLOOR_MB - 1, disk.path) in supervisor.journal_lines()


def test_space_and_the_upstream_must_both_be_back(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=100)
    upstream.set("down")
    supervisor = start_supervisor(runs, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB)
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
    assert f"{PROG}upstream {upstream.url} answers again (200): back to pull-through mode" in supervisor.journal_lines()


def test_without_offline_fallback_the_floor_still_applies_without_probes(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=2000)
    supervisor = start_supervisor(runs, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=FLOOR_MB,
                                  offline_fallback=False)
    assert pull_through(supervisor.serving())
    disk.set(0)
    assert read_only(supervisor.serving(count=2))
    assert low_space(0, disk.path) in supervisor.journal_lines()
    disk.set(2000)
    assert pull_through(supervisor.serving(count=3))
    assert space_back(2000, disk.path) in supervisor.journal_lines(), supervisor.journal()
    still(supervisor, 3, disk)
    # The upstream's /v2/ was asked only by the token checks at start and at the return, never by a probe tick.
    assert len(upstream.probes()) == 2, upstream.probes()


def test_floor_0_never_checks(tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=0)
    supervisor = start_supervisor(runs, tmp_path, upstream, disk=disk, storage=str(disk.path), min_free_mb=0)
    assert pull_through(supervisor.serving())
    still(supervisor, 1)
    assert disk.checks() == 0
    assert supervisor.journal() == "", supervisor.journal()


def test_the_environment_s_storage_directory_is_the_one_checked(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun]) -> None:
    """A systemd drop-in moves the storage with REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY: distribution stores there,
    so that is the filesystem that fills up."""
    disk = FakeDisk(tmp_path, free_mb=100, in_environment=True)
    supervisor = start_supervisor(runs, tmp_path, upstream, disk=disk, storage=str(tmp_path / "configured"),
                                  min_free_mb=FLOOR_MB)
    assert read_only(supervisor.serving())
    assert low_space(100, disk.path) in supervisor.journal_lines(), supervisor.journal()


@pytest.mark.parametrize("storage", ["missing", "not set"])
def test_an_unknown_free_space_is_said_once_and_changes_nothing(
        tmp_path: Path, upstream: FakeUpstream, runs: list[SupervisorRun], storage: str) -> None:
    if storage == "missing":
        supervisor = start_supervisor(runs, tmp_path, upstream, min_free_mb=FLOOR_MB, storage=str(tmp_path / "missing"))
    else:
        supervisor = start_supervisor(runs, tmp_path, upstream, min_free_mb=FLOOR_MB)
    assert pull_through(supervisor.serving())
    still(supervisor, 1)
    if storage == "missing":
        expected = f"{PROG}cannot check the free space on {tmp_path / 'missing'} ([Errno 2] No such file or directory: "
    else:
        expected = (f"{PROG}min_free_mb is {FLOOR_MB} but no storage directory is set (storage, "
                    "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY): free space is not checked")
    lines = supervisor.journal_lines()
    assert len(lines) == 1 and lines[0].startswith(expected), supervisor.journal()
