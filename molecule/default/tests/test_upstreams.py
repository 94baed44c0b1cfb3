# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_mirror_upstreams: a second upstream (ghcr.io's stand-in, world-ghcr, with an account of its own) mirrored
on port 5010 beside Docker Hub on 5000, under the one `registry` unit, on amd64 and arm64."""
from __future__ import annotations

import json
import subprocess
import time

from conftest import ADDRESS, GHCR_MIRROR, MIRROR, journal, registry_pids, since, world

GHCR_SETTINGS = "/etc/registry/upstreams/ghcr/supervisor.json"


def wait_journal(host, start: str, text: str, timeout: float = 60) -> str:
    """The registry unit's journal since START once it contains TEXT; fails after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = journal(host, start)
        if text in lines:
            return lines
        time.sleep(1)
    raise AssertionError(f"no {text!r} in the journal within {timeout} s:\n{journal(host, start)[-3000:]}")


def test_each_upstream_runs_its_own_registry_port_and_storage_under_the_one_unit(host):
    exec_start = host.check_output("systemctl show -p ExecStart --value registry")
    assert "/etc/registry/supervisor.json" in exec_start and GHCR_SETTINGS in exec_start
    pids = registry_pids(host)
    assert sorted(pids) == ["/etc/registry/config.yml", "/etc/registry/upstreams/ghcr/config.yml"], pids
    main_pid = host.check_output("systemctl show -p MainPID --value registry")
    cgroup = host.check_output(f"cat /proc/{main_pid}/cgroup")
    for pid in pids.values():
        assert host.check_output(f"cat /proc/{pid}/cgroup") == cgroup  # the same unit
        assert host.check_output(f"stat -c %U /proc/{pid}") == "registry"
    config = host.file("/etc/registry/upstreams/ghcr/config.yml").content_string
    assert f'"{world.GHCR_URL}"' in config and '"/var/lib/registry-ghcr"' in config and '"/run/registry/ghcr.sock"' in config
    assert f"{ADDRESS}:5010" not in config  # the caching front serves the port
    storage = host.file("/var/lib/registry-ghcr")
    assert storage.is_directory and storage.user == "registry" and storage.mode == 0o750
    settings = json.loads(host.file(GHCR_SETTINGS).content_string)
    assert settings["credentials"] == "REGISTRY_MIRROR_GHCR" and settings["port"] == 5012
    fact = json.loads(host.file("/etc/ansible/facts.d/registry_mirror.fact").content_string)
    assert fact["upstreams"] == [{"name": "ghcr", "registry": "ghcr.io", "url": world.GHCR_URL, "port": 5010}]


def counted(registry) -> dict[str, int]:
    """Manifest GETs (what Docker Hub and ghcr.io count as pulls) per identity, leaving out identities with none (the
    supervisors' probes of /v2/)."""
    return {name: count for name, count in registry.pulls().items() if count}


def test_pulls_through_each_mirror_reach_its_own_upstream_with_its_own_account(vm, host, hub, ghcr):
    hub.reset()
    ghcr.reset()
    # Each test of this scenario pulls images no other test pulls through the same mirror (testinfra may reorder
    # them), so that every pull here reaches the upstream.
    pulled = vm.pull(f"{GHCR_MIRROR}/library/alpine:latest", "amd64", "/tmp/ghcr-alpine")
    assert pulled.returncode == 0, pulled.stderr
    assert set(counted(ghcr)) == {world.GHCR_USERNAME}
    assert counted(hub) == {}  # Docker Hub saw nothing of it
    ghcr.reset()
    pulled = vm.pull(f"{MIRROR}/library/fill5:latest", "amd64", "/tmp/hub-fill5")  # not cached before
    assert pulled.returncode == 0, pulled.stderr
    assert set(counted(hub)) == {world.HUB_USERNAME}
    assert counted(ghcr) == {}
    catalog = json.loads(host.check_output("curl -sS --unix-socket /run/registry/ghcr.sock http://registry/v2/_catalog"))["repositories"]
    assert "library/alpine" in catalog and "library/fill5" not in catalog


def test_each_registry_holds_only_its_own_upstreams_credentials(host):
    pids = registry_pids(host)
    # As the service user: root in the target lacks CAP_SYS_PTRACE, which reading another user's environment needs.
    hub_env = host.check_output(f"runuser -u registry -- cat /proc/{pids['/etc/registry/config.yml']}/environ")
    ghcr_env = host.check_output(f"runuser -u registry -- cat /proc/{pids['/etc/registry/upstreams/ghcr/config.yml']}/environ")
    assert f"REGISTRY_PROXY_PASSWORD={world.HUB_TOKEN}" in hub_env.split("\0")
    assert world.GHCR_TOKEN not in hub_env
    assert f"REGISTRY_PROXY_PASSWORD={world.GHCR_TOKEN}" in ghcr_env.split("\0")
    assert world.HUB_TOKEN not in ghcr_env


def test_one_upstream_down_leaves_the_others_pulling_through(host, vm, hub, ghcr):
    assert vm.pull(f"{GHCR_MIRROR}/library/small2:latest", "amd64", "/tmp/ghcr-down").returncode == 0  # cached
    start = since(host)
    before = registry_pids(host)
    subprocess.run(world.command("ghcr-stop"), check=True, capture_output=True)
    try:
        lines = wait_journal(host, start, f"[ghcr] registry-supervisor: upstream {world.GHCR_URL} unreachable")
        assert "[docker-hub] registry-supervisor: upstream" not in lines
        # ghcr's cache still serves; Docker Hub's mirror still pulls new content through (counted there).
        assert vm.pull(f"{GHCR_MIRROR}/library/small2:latest", "amd64", "/tmp/ghcr-down").returncode == 0
        hub.reset()
        pulled = vm.pull(f"{MIRROR}/library/fill4:latest", "arm64", "/tmp/hub-while-ghcr-down")
        assert pulled.returncode == 0, pulled.stderr
        assert counted(hub).get(world.HUB_USERNAME, 0) >= 1
        assert registry_pids(host)["/etc/registry/config.yml"] == before["/etc/registry/config.yml"]
    finally:
        subprocess.run(world.command("ghcr-start"), check=True, capture_output=True)
        back = wait_journal(host, start, "[ghcr] registry-supervisor: switch done: pulling through", timeout=90)
        assert "[ghcr] registry-supervisor: upstream token service accepts" in back, back[-3000:]
    ghcr.reset()
    pulled = vm.pull(f"{GHCR_MIRROR}/library/small1:latest", "amd64", "/tmp/ghcr-back")
    assert pulled.returncode == 0, pulled.stderr
    assert counted(ghcr) == {world.GHCR_USERNAME: 1}
