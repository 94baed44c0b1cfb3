# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_budget without processes: the free-space floor and its margin (FreeSpace), the disk budget's size and
when a collection runs (Collector), on a filesystem whose figures the test sets. The collection itself, on real
storages and with a running supervisor: test_registry_supervisor_cache.py and test_registry_supervisor_space.py."""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import FILES

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_budget
import registry_cache
import registry_listener
import registry_settings

MIB = 1024 * 1024
PROG = "registry-supervisor: "


def fake_disk(monkeypatch: pytest.MonkeyPatch, path: Path, free_mb: list[int], size_mb: int = 10_000) -> list[str]:
    """os.statvfs answering for PATH with free_mb[0] MiB free (the test changes it) of SIZE_MB; the paths asked."""
    real, asked = os.statvfs, []

    def statvfs(where: str) -> os.statvfs_result:
        if os.path.realpath(where) != os.path.realpath(path):
            return real(where)
        asked.append(where)
        fragments = free_mb[0] * MIB // 4096
        return os.statvfs_result((4096, 4096, size_mb * MIB // 4096, fragments, fragments, 0, 0, 0, 0, 255))

    monkeypatch.setattr(os, "statvfs", statvfs)
    return asked


def test_below_the_floor_until_above_floor_plus_margin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    free = [1000]
    fake_disk(monkeypatch, tmp_path, free)
    metrics = registry_listener.Metrics()
    space = registry_budget.FreeSpace(str(tmp_path), 500, metrics)
    assert space.resume_mb == 564  # the margin: at least 64 MiB
    answers = []
    for free[0] in (1000, 499, 400, 550, 564, 565, 499):
        answers.append(space.check())
    assert answers == [False, True, True, True, True, False, True]
    assert metrics.values["registry_mirror_free_bytes"] == 499 * MIB
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"{PROG}WARNING: 499 MiB free on {tmp_path}, below the floor of 500 MiB: serving the cache "
                     "read-only and storing nothing new until more than 564 MiB are free"] * 2


def test_the_margin_is_a_tenth_of_a_large_floor_and_no_storage_means_no_floor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_disk(monkeypatch, tmp_path, [0])
    assert registry_budget.FreeSpace(str(tmp_path), 2048, registry_listener.Metrics()).resume_mb == 2048 + 204
    unchecked = registry_budget.FreeSpace("", 2048, registry_listener.Metrics())
    assert (unchecked.floor_mb, unchecked.check()) == (0, False)
    assert not registry_budget.FreeSpace(str(tmp_path), 0, registry_listener.Metrics()).check()
    assert asked == []


def test_a_failing_statvfs_keeps_the_last_answer_and_is_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    free = [100]
    fake_disk(monkeypatch, tmp_path, free)
    space = registry_budget.FreeSpace(str(tmp_path), 500, registry_listener.Metrics())
    assert space.check()
    capsys.readouterr()

    def failing(_path: str) -> os.statvfs_result:
        raise OSError("gone")

    monkeypatch.setattr(os, "statvfs", failing)
    assert space.check() and space.check()
    said = f"{PROG}cannot check the free space on {tmp_path} (gone): the mode stays as it is\n"
    assert capsys.readouterr().err == said


def collector(tmp_path: Path, values: dict[str, Any] | None = None, usage: bool = True) -> registry_budget.Collector:
    """A Collector of the cache in TMP_PATH with the settings VALUES, with usage times (USAGE) or without."""
    settings = registry_settings.Settings(binary="/r", config="/c", upstream="https://u", version="3.1.1",
                                          **(values or {}))
    used = registry_listener.Usage(str(tmp_path / "usage.json")) if usage else None
    return registry_budget.Collector(settings, str(tmp_path), used, registry_listener.Metrics())


@pytest.mark.parametrize(("values", "budget_mb"), [
    ({}, 0),
    ({"budget_mb": 300}, 300),
    ({"budget_percent": 5}, 500),  # of 10 000 MiB
    ({"budget_mb": 300, "budget_percent": 5}, 300),  # the smaller wins
    ({"budget_mb": 900, "budget_percent": 5}, 500),
])
def test_the_budget_is_the_smaller_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, int],
                                         budget_mb: int) -> None:
    fake_disk(monkeypatch, tmp_path, [0])
    assert collector(tmp_path, values).budget_bytes() == budget_mb * MIB


def recorded(monkeypatch: pytest.MonkeyPatch, tending: registry_budget.Collector) -> list[str]:
    """The reasons of the collections TENDING runs (instead of running them)."""
    reasons: list[str] = []

    def collect(reason: str, _stopping: Callable[[], bool]) -> None:
        reasons.append(reason)

    monkeypatch.setattr(tending, "collect", collect)
    return reasons


def test_a_collection_runs_when_asked_when_scheduled_and_above_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tending = collector(tmp_path, {"budget_mb": 1, "collect_interval": 0, "cache_check_interval": 3600})
    reasons, checks = recorded(monkeypatch, tending), []
    tending.tend(lambda: False, lambda: checks.append(1))
    assert (reasons, checks) == ([], [])  # nothing due yet
    tending.collect_requested = True
    tending.tend(lambda: False, lambda: checks.append(1))
    assert (reasons, tending.collect_requested) == (["asked for (SIGUSR1)"], False)
    monkeypatch.setattr(registry_cache, "cache_bytes", lambda _storage: 3 * MIB)
    tending.next_cache_check = 0.0
    tending.tend(lambda: False, lambda: checks.append(1))
    assert reasons[1:] == ["3.0 MiB cached, above the budget of 1.0 MiB"] and checks == [1]
    assert tending.metrics.values["registry_mirror_cache_bytes"] == 3 * MIB
    scheduled = collector(tmp_path, {"collect_interval": 60})
    reasons = recorded(monkeypatch, scheduled)
    scheduled.next_collection = 0.0
    scheduled.tend(lambda: False, lambda: None)
    assert reasons == ["scheduled"]


def test_without_usage_times_nothing_is_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tending = collector(tmp_path, usage=False)
    reasons = recorded(monkeypatch, tending)
    tending.collect_requested = True
    tending.tend(lambda: False, lambda: None)
    assert reasons == []


# --- The caching front's copies of evicted manifests -------------------------------------------------------------

def front_entry(cache: Path, key: str, body: bytes = b"{}") -> Path:
    """A file of the front's cache as nginx writes it (levels 1:2: named by the MD5 of KEY, a binary header, then the
    key's line, the upstream's headers and the body)."""
    name = hashlib.md5(key.encode()).hexdigest()  # nginx's own naming, not a security hash
    path = cache / name[-1] / name[-3:-1] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x05\x00\x00\x00" + bytes(range(40)) + b"\nKEY: " + key.encode() + b"\nHTTP/1.1 200 OK\r\n"
                     b"Docker-Content-Digest: sha256:" + b"0" * 64 + b"\r\n\r\n" + body)
    return path


def image(repository: str, digest: str, tags: tuple[str, ...], *children: str) -> registry_cache.Image:
    """An evicted image of REPOSITORY: root DIGEST, its TAGS and child manifests."""
    return registry_cache.Image(repository=repository, digest=digest, tags=tags,
                                manifests=frozenset({digest, *children}), blobs=frozenset(), last_used=0.0)


def test_an_eviction_drops_the_front_s_copies_of_the_evicted_manifests_only(tmp_path: Path) -> None:
    cache = tmp_path / "docker-hub"
    index, child, other = ("sha256:" + c * 64 for c in "abc")
    gone = [front_entry(cache, f"GET /v2/library/fill2/manifests/latest {accept}") for accept in ("X", "LIDO", "O")]
    gone += [front_entry(cache, "HEAD /v2/library/fill2/manifests/latest X"),
             front_entry(cache, f"GET /v2/library/fill2/manifests/{index} X"),
             front_entry(cache, f"GET /v2/library/fill2/manifests/{child} O")]
    kept = [front_entry(cache, "GET /v2/library/fill2/manifests/3.20 X"),  # another image of the repository
            front_entry(cache, f"GET /v2/library/fill2/manifests/{other} X"),
            front_entry(cache, "GET /v2/library/fill3/manifests/latest X"),  # another repository
            front_entry(cache, "GET /v2/library/fill22/manifests/latest X"),
            front_entry(cache, "GET /v2/owner/library/fill2/manifests/latest X"),
            front_entry(cache, f"GET /v2/library/fill2/blobs/{index} X")]  # not a manifest
    temporary = gone[0].with_name(gone[0].name + ".0000000001")  # nginx's, being written: not a cache file yet
    temporary.write_bytes(gone[0].read_bytes())
    junk = cache / "f" / "ff" / ("f" * 32)
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"no key here")
    evicted = [image("library/fill2", index, ("latest",), child)]
    assert registry_budget.purge_front(str(cache), evicted) == len(gone)
    assert [path for path in gone if path.exists()] == []
    assert all(path.exists() for path in [*kept, temporary, junk])
    assert registry_budget.purge_front(str(cache), evicted) == 0  # nothing left to drop
    assert registry_budget.purge_front("", evicted) == 0  # no front (front_cache left out of the settings)
    assert registry_budget.purge_front(str(tmp_path / "missing"), evicted) == 0


@pytest.mark.parametrize(("header", "key"), [
    (b"\x00\x01\nKEY: GET /v2/a/manifests/b X\nHTTP/1.1 200 OK\r\n", "GET /v2/a/manifests/b X"),
    (b"\x00\x01\nKEY: GET /v2/a/manifests/b X", ""),  # cut before the end of the line
    (b"KEY: GET /v2/a/manifests/b X\n", ""),  # not after the binary header
    (b"", ""),
])
def test_the_key_of_a_front_cache_file(header: bytes, key: str) -> None:
    assert registry_budget.front_cache_key(header) == key


def test_front_cache_must_be_an_absolute_path(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    for value, ok in (("/var/cache/registry-front/cache/docker-hub", True), ("cache/docker-hub", False)):
        settings.write_text('{"binary": "/bin/true", "config": "/etc/registry/config.yml", "upstream": "https://x",'
                            f' "version": "3.1.1", "front_cache": "{value}"}}', encoding="utf-8")
        if ok:
            assert registry_settings.Settings.load(str(settings)).front_cache == value
        else:
            with pytest.raises(registry_settings.SettingsError, match="front_cache must be an absolute path"):
                registry_settings.Settings.load(str(settings))
