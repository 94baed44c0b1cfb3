# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_mirror_prefetch: a timer keeps listed images warm, asking Docker Hub with HEADs (free) and pulling through
the mirror only what changed. The fake Docker Hub's counters are the assertions. The program is the same on every
architecture: amd64 only. library/fill1 has never been pulled by this scenario before (test_x_disk_budget pulls it
later into a cache of its own); library/alpine has."""
from __future__ import annotations

import json
import time

import pytest
from conftest import MIRROR, amd64_only, reconverge, world

pytestmark = [amd64_only, pytest.mark.usefixtures("host")]

PREFETCH = [{"repository": "alpine"}, {"repository": "fill1", "tags": ["latest"]}]


def account(hub) -> dict[str, int]:
    """The fake Docker Hub's counters for the mirror's account."""
    return hub.stats()["identities"].get(world.HUB_USERNAME, {})


def a_round(host) -> str:
    """One round of the timer's service (oneshot: systemctl returns when it ends); its journal lines."""
    time.sleep(1.1)  # journalctl --since counts whole seconds: not the second the previous round ended in
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    host.check_output("systemctl start registry-prefetch.service")
    return host.check_output(f"journalctl --no-pager -o cat -u registry-prefetch --since '{since}'")


# Since the converge that turned prefetch on: the timer starts then, and its first round may come at any moment of its
# randomized delay (the host booted more than OnBootSec ago), before or while the tests below start one themselves.
SINCE: dict[str, str] = {}


def test_prefetch_installs_its_timer(converge, vm, host, hub):
    time.sleep(1.1)
    SINCE["journal"] = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    hub.reset()
    reconverge(converge, vm, json.dumps({"registry_mirror_prefetch": PREFETCH}))
    assert host.service("registry-prefetch.timer").is_enabled
    assert host.service("registry-prefetch.timer").is_running
    settings = json.loads(host.file("/etc/registry/prefetch.json").content_string)
    assert [image["repository"] for image in settings["images"]] == ["library/alpine", "library/fill1"]
    assert world.HUB_TOKEN not in host.file("/etc/registry/prefetch.json").content_string


def test_a_round_costs_one_docker_hub_pull_per_changed_manifest_and_nothing_for_an_unchanged_tag(host, hub):
    """Counted since the converge: this round, and the timer's own if it came first (then this one finds nothing)."""
    a_round(host)
    lines = host.check_output(f"journalctl --no-pager -o cat -u registry-prefetch --since '{SINCE['journal']}'")
    counted = account(hub)
    # library/fill1 (not cached): its index and its amd64 manifest; library/alpine (cached, unchanged): HEADs only.
    assert counted.get("manifest_get", 0) == 2, (counted, lines)
    assert "warmed library/fill1:latest" in lines, lines
    assert "warmed library/alpine" not in lines, lines
    assert world.HUB_TOKEN not in lines


def test_the_next_round_costs_no_pull(host, hub):
    hub.reset()
    lines = a_round(host)
    assert account(hub).get("manifest_get", 0) == 0, lines
    assert "warmed" not in lines, lines


def test_the_next_jobs_pull_is_warm(vm, hub):
    hub.reset()
    pulled = vm.pull(f"{MIRROR}/library/fill1:latest", "amd64", "/tmp/prefetched")
    assert pulled.returncode == 0, pulled.stderr
    counted = account(hub)
    assert counted.get("manifest_get", 0) == 0 and counted.get("blob_get", 0) == 0, counted


def test_prefetch_goes_when_the_list_is_emptied(converge, vm, host):
    reconverge(converge, vm, json.dumps({"registry_mirror_prefetch": []}))
    for path in ("/etc/systemd/system/registry-prefetch.timer", "/etc/systemd/system/registry-prefetch.service",
                 "/etc/registry/prefetch.json", "/var/lib/registry-prefetch"):
        assert not host.file(path).exists, path
