# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's care of the cache's disk: the free-space floor (FreeSpace: below it the registry runs
read-only) and the disk budget (Collector: when to collect, and the collection itself, while the registry serves;
registry_cache.py does the storage side), with the usage times written down now and then.

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable

import registry_cache
from registry_journal import say
from registry_listener import Metrics, Usage
from registry_settings import Settings

MIB = 1024 * 1024
# Back to pull-through mode only above the floor plus max(MARGIN_MIN_MB, floor / MARGIN_DIVISOR) MiB.
MARGIN_MIN_MB = 64
MARGIN_DIVISOR = 10
# How often the usage times are written down (and at stop).
USAGE_SAVE_INTERVAL = 60.0


# The caching front's cache files (nginx's proxy_cache_path, levels 1:2): named by the MD5 of their key, which their
# header holds as a line "KEY: <key>" within its first FRONT_HEADER_MAX bytes. The front's key for a manifest:
# "$request_method $uri <class of accepted types>" (front.conf.j2).
FRONT_CACHE_FILE = re.compile(r"[0-9a-f]{32}")
FRONT_HEADER_MAX = 4096
FRONT_MANIFEST_KEY = re.compile(r"(?:GET|HEAD) /v2/(?P<repository>\S+)/manifests/(?P<reference>[^\s/]+) \S*")


def front_cache_key(header: bytes) -> str:
    """The key in the header of one of the front's cache files ("": none found)."""
    start = header.find(b"\nKEY: ")
    end = header.find(b"\n", start + 1) if start >= 0 else -1
    return header[start + len(b"\nKEY: "):end].decode("ascii", "replace") if end > start >= 0 else ""


def purge_front(cache_dir: str, evicted: Iterable[registry_cache.Image]) -> int:
    """Remove from the caching front's cache (CACHE_DIR, "": no front) its copies of the manifests of the EVICTED
    images, by tag and by digest: the front would otherwise go on serving them (by tag for
    registry_mirror_tag_cache_seconds, by digest for a day) while the registry has them no more, and the blobs pulled
    again meanwhile would be swept as referenced by nothing. nginx takes a missing cache file for a miss. The number
    of files removed."""
    wanted = {(image.repository, reference) for image in evicted for reference in (*image.tags, *image.manifests)}
    if not cache_dir or not wanted:
        return 0
    removed = 0
    for root, _dirs, files in os.walk(cache_dir):
        for name in files:
            if not FRONT_CACHE_FILE.fullmatch(name):  # nginx's temporary files end in .0000000001 and the like
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as handle:
                    key = front_cache_key(handle.read(FRONT_HEADER_MAX))
            except OSError:  # gone meanwhile (nginx's cache manager), or unreadable: not ours to judge
                continue
            match = FRONT_MANIFEST_KEY.fullmatch(key)
            if match and (match["repository"], match["reference"]) in wanted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
    return removed


def describe(image: registry_cache.Image) -> str:
    """An evicted image for the journal: repository@sha256:<12 hex> (tags)."""
    tags = f" ({','.join(image.tags)})" if image.tags else ""
    return f"{image.repository}@{image.digest[:19]}{tags}"


class FreeSpace:
    """The free space of the cache's filesystem (STORAGE) against the floor of FLOOR_MB MiB (0: not checked), with
    its margin; each check's figure in METRICS."""

    def __init__(self, storage: str, floor_mb: int, metrics: Metrics) -> None:
        self.storage, self.metrics = storage, metrics
        self.floor_mb = floor_mb if storage else 0  # 0: free space not checked
        self.resume_mb = self.floor_mb + max(MARGIN_MIN_MB, self.floor_mb // MARGIN_DIVISOR)
        self.low = False  # below the floor, and not yet above floor plus margin again
        self.free_mb = 0  # at the last check that worked
        self.error = ""  # the last check's error, said once

    def check(self) -> bool:
        """Whether the cache's filesystem is short of space: below the floor, or not yet above floor plus margin
        after it was; says so when it becomes short. Keeps the last answer when statvfs fails."""
        if not self.floor_mb:
            return False
        try:
            stat = os.statvfs(self.storage)
        except OSError as exc:
            if str(exc) != self.error:
                say(f"cannot check the free space on {self.storage} ({exc}): the mode stays as it is")
            self.error = str(exc)
            return self.low
        self.error = ""
        free = stat.f_bavail * stat.f_frsize  # what the unprivileged service user may still write
        self.free_mb = free // MIB
        self.metrics.set(registry_mirror_free_bytes=free)
        if free < self.floor_mb * MIB and not self.low:
            self.low = True
            say(f"WARNING: {self.free_mb} MiB free on {self.storage}, below the floor of {self.floor_mb} MiB: serving "
                f"the cache read-only and storing nothing new until more than {self.resume_mb} MiB are free")
        elif free > self.resume_mb * MIB:
            self.low = False
        return self.low


class Collector:
    """The disk budget of the cache in STORAGE (settings.budget_*): checked now and then, collected when above it, on
    a schedule and when asked (SIGUSR1: collect_requested), with the usage times (USAGE; None: no storage, nothing
    done) ordering the eviction; each figure in METRICS."""

    def __init__(self, settings: Settings, storage: str, usage: Usage | None, metrics: Metrics) -> None:
        self.settings, self.storage, self.usage, self.metrics = settings, storage, usage, metrics
        self.collect_requested = False  # SIGUSR1
        self.next_cache_check = time.monotonic() + settings.cache_check_interval  # not while the registry starts
        self.next_collection = time.monotonic() + settings.collect_interval
        self.next_usage_save = time.monotonic() + USAGE_SAVE_INTERVAL

    def budget_bytes(self) -> int:
        """The cache's budget: budget_mb, and budget_percent of its filesystem's size; the smaller; 0 for none."""
        limits = [self.settings.budget_mb * MIB] if self.settings.budget_mb else []
        if self.settings.budget_percent:
            try:
                stat = os.statvfs(self.storage)
                limits.append(stat.f_blocks * stat.f_frsize * self.settings.budget_percent // 100)
            except OSError as exc:
                say(f"cannot read the size of the filesystem of {self.storage} ({exc})")
        return min(limits) if limits else 0

    def tend(self, stopping: Callable[[], bool], at_check: Callable[[], None]) -> None:
        """At each tick: save the usage times now and then; collect when asked (SIGUSR1), when the schedule says so
        or when the cache is above its budget. AT_CHECK runs at each check of the cache's size (the supervisor opens
        its ports again if they were refused); a collection's sweep ends early once STOPPING says so."""
        if self.usage is None:
            return
        now = time.monotonic()
        if now >= self.next_usage_save:
            self.next_usage_save = now + USAGE_SAVE_INTERVAL
            self.usage.save()
        reason = ""
        if self.collect_requested:
            reason = "asked for (SIGUSR1)"
        elif self.settings.collect_interval and now >= self.next_collection:
            reason = "scheduled"
        elif now >= self.next_cache_check:
            self.next_cache_check = now + self.settings.cache_check_interval
            at_check()
            budget = self.budget_bytes()
            try:
                size = registry_cache.cache_bytes(self.storage)
            except (OSError, registry_cache.StorageError) as exc:
                say(f"cannot add up the cache in {self.storage} ({exc})")
                return
            self.metrics.set(registry_mirror_cache_bytes=size, registry_mirror_cache_budget_bytes=budget)
            if budget and size > budget:
                reason = f"{size / MIB:.1f} MiB cached, above the budget of {budget / MIB:.1f} MiB"
        if reason:
            self.collect_requested = False
            self.next_collection = now + self.settings.collect_interval
            self.collect(reason, stopping)
            self.next_cache_check = time.monotonic() + self.settings.cache_check_interval

    def collect(self, reason: str, stopping: Callable[[], bool]) -> None:
        """Evict the least recently used images down to the low-water mark when above the budget, then delete the
        blobs nothing references, while the registry serves; say what it did."""
        say(f"cache collection ({reason})")
        try:
            self.collect_now(time.monotonic(), stopping)
        except Exception as exc:  # a failed collection must never take the mirror down
            say(f"ERROR: cache collection failed ({exc!r}); what it deleted left the cache consistent, the rest waits "
                "for the next collection")

    def collect_now(self, started: float, stopping: Callable[[], bool]) -> None:
        """The collection itself."""
        assert self.usage is not None
        budget = self.budget_bytes()
        steps = [time.monotonic()]
        inventory = registry_cache.scan(self.storage, self.usage.snapshot())
        before = inventory.total_bytes()
        evicted = inventory.plan(budget * self.settings.low_water_percent // 100) if budget and before > budget else []
        steps.append(time.monotonic())
        registry_cache.evict(self.storage, evicted, inventory)
        purged = purge_front(self.settings.front_cache, evicted)
        steps.append(time.monotonic())
        reclaimed, blobs = registry_cache.sweep(self.storage, time.time() - self.settings.collect_grace, stopping,
                                                evicted)
        steps.append(time.monotonic())
        after = registry_cache.cache_bytes(self.storage)
        kept = [image for image in inventory.images if image not in evicted]
        self.usage.keep_only({(image.repository, digest) for image in kept for digest in image.manifests})
        self.usage.save()
        seconds = time.monotonic() - started
        self.metrics.add(registry_mirror_cache_collections_total=1, registry_mirror_cache_evictions_total=len(evicted),
                         registry_mirror_cache_reclaimed_bytes_total=reclaimed)
        self.metrics.set(registry_mirror_cache_bytes=after, registry_mirror_cache_budget_bytes=budget,
                         registry_mirror_cache_images=len(kept), registry_mirror_cache_last_collection_seconds=seconds,
                         registry_mirror_cache_last_collection_timestamp_seconds=time.time())
        names = ", ".join(describe(image) for image in evicted[:10])
        more = f" and {len(evicted) - 10} more" if len(evicted) > 10 else ""
        scan, eviction, sweep = (later - earlier for earlier, later in zip(steps, steps[1:]))
        say(f"cache collection done in {seconds:.2f} s (scan {scan:.2f} s, eviction {eviction:.2f} s, sweep "
            f"{sweep:.2f} s): evicted {len(evicted)} images{': ' if names else ''}{names}"
            f"{more}; deleted {blobs} blobs, reclaimed {reclaimed / MIB:.1f} MiB; cache {before / MIB:.1f} -> "
            f"{after / MIB:.1f} MiB, budget " + (f"{budget / MIB:.1f} MiB" if budget else "none")
            + (f"; {purged} of their manifests dropped from the front's cache" if purged else ""))
