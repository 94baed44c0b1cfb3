# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_mirror_state: absent removes what the role installed and keeps the cache; installing again serves that
cache without asking Docker Hub. Also: a normal run keeps only the live version's directory.

Runs last (file order: after test_variants.py, whose downgrade and upgrade leave an old version behind without the
cleanup, and test_variants_rollback.py), on amd64 only like every converge with other settings, and leaves the host
converged as it found it (the mirror installed with the scenario's settings, its cache in place)."""
from __future__ import annotations

import difflib

import pytest
from conftest import DEFAULT_VERSION, MIRROR, amd64_only, recap
from hostprint import fingerprint

# Every test takes testinfra's host (parametrized): pytest would otherwise run the tests without it after those with
# it, and these tests must run in the order they are written.
pytestmark = [amd64_only, pytest.mark.usefixtures("host")]

CACHED = f"{MIRROR}/library/alpine:latest"
ABSENT = ("-e", "registry_mirror_state=absent")
# Everything the role puts on a host but the cache and the accounts.
INSTALLED = ("/etc/systemd/system/registry.service", "/etc/systemd/system/registry-cert.path",
             "/etc/systemd/system/registry-cert-reload.service", "/usr/local/lib/registry-mirror", "/usr/local/bin/registry",
             "/etc/registry", "/etc/ansible/facts.d/registry_mirror.fact", "/var/lib/registry-mirror", "/run/registry")
BLOBS = "find /var/lib/registry/docker/registry/v2/blobs -type f -name data -exec sha256sum {} + | sort"


def mirror_answers(vm) -> bool:
    return vm.sh(f"curl -sS --connect-timeout 3 -o /dev/null https://{MIRROR}/v2/", check=False).returncode == 0


@pytest.fixture(scope="module")
def cache(host, vm) -> str:
    """The image the tests pull, in the mirror's cache; the cache's blobs with their checksums."""
    pulled = vm.pull(CACHED, "amd64", "/tmp/absent-pull")
    assert pulled.returncode == 0, pulled.stderr
    blobs = host.check_output(BLOBS)
    assert blobs.count("\n") >= 1, blobs
    return blobs


def test_a_normal_run_kept_only_the_live_version(host):
    """test_variants.py went to 2.8 and back: the 2.8 directory went once the default version served again."""
    arch = host.check_output("dpkg --print-architecture")
    assert host.check_output("ls -A /usr/local/lib/registry-mirror").split() == [f"{DEFAULT_VERSION}-{arch}", "libexec"]
    assert host.check_output("readlink /usr/local/bin/registry") == (
        f"/usr/local/lib/registry-mirror/{DEFAULT_VERSION}-{arch}/registry")


def test_check_mode_changes_nothing(host, converge, vm, cache):
    before = fingerprint(host)
    result = converge("--check", "--diff", *ABSENT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] >= 2  # the units stopped, the files removed: would be
    assert "/usr/local/lib/registry-mirror" in result.stdout and "/etc/registry" in result.stdout  # the diff names them
    after = fingerprint(host)
    assert after == before, "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    assert host.service("registry").is_running and mirror_answers(vm)


def test_absent_removes_the_mirror_and_keeps_the_cache_and_accounts(host, converge, vm, cache):
    result = converge(*ABSENT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] >= 2
    assert host.check_output("systemctl show -p LoadState --value registry.service") == "not-found"
    assert host.check_output("systemctl show -p LoadState --value registry-cert.path") == "not-found"
    assert host.run("systemctl list-unit-files 'registry*' --no-legend").stdout.strip() == ""
    left = [path for path in INSTALLED if host.file(path).exists or host.file(path).is_symlink]
    assert left == []
    assert not mirror_answers(vm)
    assert host.check_output(BLOBS) == cache  # the cache, as it was
    assert host.user("registry").exists and host.group("registry").exists
    assert host.file("/var/lib/actuated/certs/server.key").exists  # actuated's own files untouched
    assert host.file("/etc/ansible/facts.d").is_directory


def test_a_second_removal_changes_nothing(converge):
    result = converge(*ABSENT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] == 0


def test_check_mode_without_the_mirror_and_a_purge_that_would_remove_the_cache(host, converge, cache):
    result = converge("--check", "--diff", *ABSENT, "-e", "registry_mirror_purge_cache=true")
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] == 1  # the cache only: nothing else is left
    assert "/var/lib/registry" in result.stdout
    assert host.check_output(BLOBS) == cache


def test_a_purge_while_installing_is_refused(converge):
    result = converge("-e", "registry_mirror_purge_cache=true")
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # failures go to stderr; messages wrap
    assert "registry_mirror_purge_cache is true but registry_mirror_state is present" in output, output[-3000:]
    assert recap(result.stdout)["changed"] == 0


def test_installing_again_serves_the_cache_without_asking_docker_hub(host, converge, vm, hub, cache):
    result = converge()
    assert result.returncode == 0, result.stdout[-3000:]
    vm.sh(f"for i in $(seq 150); do curl -sf -o /dev/null https://{MIRROR}/v2/ && exit 0; sleep 0.2; done; exit 1")
    assert host.service("registry").is_running and host.service("registry").is_enabled
    hub.reset()
    pulled = vm.pull(CACHED, "amd64", "/tmp/absent-pull")
    assert pulled.returncode == 0, pulled.stderr
    assert sum(hub.pulls().values()) == 0, hub.pulls()


def test_after_the_reinstall_a_run_changes_nothing(converge):
    result = converge()
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] == 0
