# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The cache never fills the disk: a disk budget of a share of a small filesystem, filled with
more images than fit in a known order; the least recently used are evicted whole, the recent ones pull without asking
Docker Hub, pulls during collections succeed, no manifest loses a blob, and a full disk is served read-only.

The mirror is converged onto the platform's 128 MiB tmpfs (/srv/registry-small) with a budget of 25 % of it (32 MiB;
the 40 GiB default in MiB is the larger limit), a low-water mark of 75 % (24 MiB) and a 16 MiB free-space floor. The
library/fill1..6 images each hold an 8 MiB layer of their own on a shared base layer. The file's name sorts last: the
scenario's other tests run before it, and it leaves the mirror so (a converge back would cost minutes on arm64).
"""
from __future__ import annotations

import time

import pytest
from conftest import ARCH, MIRROR, amd64_only, journal, metric, reconverge, registry_pids, since, world

SMALL_FS = "/srv/registry-small"
STORAGE = f"{SMALL_FS}/cache"
BUDGET = 32 * 1024 * 1024
LOW_WATER = 24 * 1024 * 1024
CACHE_TOOL = "python3 /usr/local/lib/registry-mirror/libexec/registry_cache.py"
METRICS = "curl -sS http://127.0.0.1:5002/metrics"
COLLECTED = "cache collection done"
DOCKER_HUB = "[docker-hub] registry-supervisor: "  # the Docker Hub mirror's lines (ghcr.io's has its own)
SETTINGS = (f"registry_mirror_storage_dir={STORAGE}", "registry_mirror_cache_budget_percent=25",
            "registry_mirror_cache_low_water_percent=75", "registry_mirror_min_free_space_mb=16",
            "registry_mirror_upstream_probe_interval=3", "registry_mirror_metrics_enabled=true")


def fill(number: int) -> str:
    """The mirror's reference of library/fillNUMBER."""
    return f"{MIRROR}/library/fill{number}:latest"


def pull(vm, number: int) -> None:
    """Pull library/fillNUMBER for the scenario's architecture through the mirror; it must succeed."""
    result = vm.pull(fill(number), ARCH, "/tmp/fill")
    assert result.returncode == 0, result.stderr


def wait_in_journal(host, start: str, text: str, timeout: float = 60) -> str:
    """The registry unit's journal since START, once it holds TEXT."""
    deadline = time.monotonic() + timeout
    while True:
        logged = journal(host, start)
        if text in logged or time.monotonic() > deadline:
            assert text in logged, f"no {text!r} in the journal within {timeout} s:\n{logged[-3000:]}"
            return logged
        time.sleep(1)


def upstream_requests(hub, number: int) -> tuple[int, int]:
    """(manifest GETs of library/fillNUMBER, blob GETs) Docker Hub answered the mirror's account since the reset."""
    counters = hub.stats()["identities"].get(world.HUB_USERNAME, {})
    manifests = sum(count for name, count in counters.get("manifests", {}).items()
                    if name.startswith(f"library/fill{number}"))
    return manifests, counters.get("blob_get", 0)


def no_broken_images(host) -> None:
    """A walk of the storage finds every manifest whole (tags, revisions, configs and layers present)."""
    walk = host.run(f"{CACHE_TOOL} check {STORAGE}")
    assert walk.rc == 0, walk.stdout + walk.stderr


# The budget is the supervisor's and registry_cache.py's logic (Python of the standard library, the same on every
# architecture) over distribution's storage layout (the same on every architecture): proven on amd64. Its second
# converge onto the small filesystem cost 188 s of the arm64 run under emulation, where the platform (install, unit,
# sandbox, TLS, pulls, renewal) is what must be proven.
pytestmark = amd64_only


@pytest.fixture(scope="module")
def budget(converge, vm, host):
    """The mirror on the small filesystem with its budget (left so: these tests run last)."""
    reconverge(converge, vm, *SETTINGS)
    yield
    host.run(f"rm -f {SMALL_FS}/filler")


def test_the_budget_evicts_the_least_recently_used_images_whole(host, vm, hub, budget):
    start = since(host)
    for number in (1, 2, 3):  # about 26 MiB: under the budget
        pull(vm, number)
    assert COLLECTED not in journal(host, start)
    time.sleep(1.5)
    pull(vm, 1)  # fill1 used again: fill2 is now the least recently used
    time.sleep(1.5)
    pull(vm, 4)  # about 35 MiB: above the budget
    logged = wait_in_journal(host, start, COLLECTED)
    assert "above the budget of 32.0 MiB" in logged, logged[-2000:]
    assert "evicted 2 images: library/fill2@" in logged and "library/fill3@" in logged, logged[-2000:]
    # The caching front forgets them too (else it would serve their manifests on, and nothing would keep their blobs).
    assert "of their manifests dropped from the front's cache" in logged, logged[-2000:]
    text = host.check_output(METRICS)
    assert metric(text, "registry_mirror_cache_budget_bytes") == BUDGET
    assert 0 < metric(text, "registry_mirror_cache_bytes") <= LOW_WATER
    assert metric(text, "registry_mirror_cache_evictions_total") == 2
    assert metric(text, "registry_mirror_cache_reclaimed_bytes_total") >= 16 * 1024 * 1024
    assert metric(text, "registry_mirror_cache_last_collection_seconds") > 0
    assert metric(text, "registry_proxy_requests_total", "manifest") >= 1, "distribution's own metrics follow"
    no_broken_images(host)

    hub.reset()
    for number in (1, 4):  # kept: served from the cache, Docker Hub not asked for anything
        pull(vm, number)
        assert upstream_requests(hub, number) == (0, 0), hub.stats()["identities"]
    pull(vm, 2)  # evicted: pulled again through Docker Hub, its own layer with it
    manifests, blobs = upstream_requests(hub, 2)
    assert manifests >= 1 and blobs >= 1, hub.stats()["identities"]
    no_broken_images(host)


def test_a_pull_during_a_collection_succeeds(host, vm, budget):
    start = since(host)
    serving = registry_pids(host)
    loop = ("ok=0; end=$(($(date +%s) + 8)); while [ $(date +%s) -lt $end ]; do "
            f"skopeo copy --retry-times 0 --override-arch {ARCH} docker://{fill(1)} oci:/tmp/during:x >/dev/null "
            "|| { echo FAILED; exit 1; }; ok=$((ok + 1)); done; echo $ok")
    vm.sh(f"rm -rf /tmp/during; ({loop}) > /tmp/during.out 2>&1 &")
    for _collection in range(3):  # three collections while the VM pulls
        time.sleep(2)
        host.check_output("systemctl kill -s USR1 --kill-whom=main registry")
    vm.sh("for i in $(seq 60); do grep -qE '^[0-9]+$|FAILED' /tmp/during.out && exit 0; sleep 0.5; done; exit 1")
    logged = journal(host, start)
    pulls = vm.sh("cat /tmp/during.out").stdout.strip()
    assert pulls.isdigit() and int(pulls) >= 3, f"cached pulls during the collections: {pulls}\n{logged}"
    assert logged.count(f"{DOCKER_HUB}{COLLECTED} in ") == 3, logged  # and ghcr's mirror's 3
    # The collections ran beside the registries: the same processes served throughout.
    assert registry_pids(host) == serving
    no_broken_images(host)


def test_a_full_disk_is_served_read_only_and_never_stores_a_partial_image(host, vm, hub, budget):
    start = since(host)
    free_mb = int(host.check_output(f"df -m --output=avail {SMALL_FS} | tail -1"))
    host.check_output(f"fallocate -l {max(free_mb - 8, 1)}M {SMALL_FS}/filler")
    try:
        logged = wait_in_journal(host, start, f"{DOCKER_HUB}switch done: serving the cache read-only")
        assert "below the floor of 16 MiB" in logged, logged[-2000:]
        pull(vm, 1)  # cached: served
        hub.reset()
        assert vm.pull(fill(5), ARCH, "/tmp/fill").returncode != 0  # not cached: refused, nothing stored
        assert upstream_requests(hub, 5) == (0, 0)
        no_broken_images(host)
    finally:
        host.check_output(f"rm -f {SMALL_FS}/filler")
    logged = wait_in_journal(host, start, f"{DOCKER_HUB}switch done: pulling through")
    assert "back to pull-through mode" in logged, logged[-2000:]
    pull(vm, 5)  # the registry that replaced the read-only one serves every new connection
    assert upstream_requests(hub, 5)[0] >= 1
    no_broken_images(host)
