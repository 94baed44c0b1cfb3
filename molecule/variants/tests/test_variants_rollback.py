# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""A run that breaks a working mirror does not leave it broken: when the registry does not serve after the run's
changes, the role puts back the files as they were, restarts it into them, checks that it serves, and fails with the
cause from the journal. Three ways to break it that every check before the restart lets through: a binary that exits
at once, a configuration the registry refuses at start (its metrics port is taken), and a permission problem (a
storage directory the service user cannot reach). Each time: cached pulls are served before and after, the host's
fingerprint (files, directories, accounts, cache) is as it was, and the run ends with one clear error.

Runs after test_variants.py (file order): the mirror is installed and has served."""
from __future__ import annotations

import difflib
import hashlib
import json
import re
import tarfile

import pytest
from conftest import MIRROR, recap
from hostprint import fingerprint, invocation

CACHED = f"{MIRROR}/library/alpine:latest"
# Short waits: each case waits this long for the broken registry, then as long again at most for the restored one.
FAST = ("-e", "registry_mirror_start_timeout=10")


def installed(host) -> dict:
    """The role's local fact: the installed version, architecture and address."""
    return json.loads(host.file("/etc/ansible/facts.d/registry_mirror.fact").content_string)


def served_from_cache(vm, hub) -> bool:
    """A VM pulls the cached image through the mirror, and Docker Hub counts no pull for it."""
    hub.reset()
    pulled = vm.pull(CACHED, "amd64", "/tmp/rollback-pull")
    return pulled.returncode == 0 and sum(hub.pulls().values()) == 0


@pytest.fixture(scope="module", autouse=True)
def cached(vm):
    """The image the cases pull, in the mirror's cache."""
    pulled = vm.pull(CACHED, "amd64", "/tmp/rollback-pull")
    assert pulled.returncode == 0, pulled.stderr


def break_and_roll_back(host, converge, vm, hub, *extra: str) -> str:
    """Run the converge playbook with EXTRA, which breaks the mirror at its restart; check what must hold before and
    after; return the run's output, flattened (messages wrap)."""
    assert served_from_cache(vm, hub)
    before, started = fingerprint(host), invocation(host)
    result = converge(*FAST, *extra)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    counters = recap(result.stdout)
    assert counters["failed"] == 1 and counters["rescued"] == 1, counters
    last_error = output[output.rindex("fatal:"):]  # failures go to stderr
    assert "put back the files as they were" in " ".join(last_error.split()), last_error[-3000:]
    assert "it serves again on https://" in " ".join(last_error.split()), last_error[-3000:]
    assert "Last lines of `journalctl -u registry`" in last_error
    after = fingerprint(host)
    assert after == before, "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    assert invocation(host) != started and host.service("registry").is_running
    assert served_from_cache(vm, hub)
    return " ".join(last_error.split())


def test_a_binary_that_exits_at_once(host, converge, vm, hub, tmp_path_factory):
    """A release whose binary passes the role's checks (it reports the version asked for, and the configuration check
    runs it as root) but exits as soon as the service starts it."""
    now = installed(host)
    major, minor, patch = now["version"].split("-")[0].split(".")
    version, arch = f"{major}.{minor}.{int(patch) + 90}", now["arch"]
    real = host.check_output("readlink -f /usr/local/bin/registry")
    cache = tmp_path_factory.mktemp("release-cache")
    staged = cache / version / arch
    staged.mkdir(parents=True)
    (staged / "registry").write_text(
        "#!/bin/sh\n"
        f"# A fake distribution {version} that exits at once when the registry service (an unprivileged user) runs it.\n"
        f'if [ "${{1:-}}" = --version ]; then echo "registry github.com/distribution/distribution v{version}"; exit 0; fi\n'
        f'if [ "$(id -u)" = 0 ]; then exec {real} "$@"; fi\n'
        f'echo "fake registry {version}: exits at once" >&2\n'
        "exit 3\n")
    (staged / "registry").chmod(0o755)
    tarball = staged / f"registry_{version}_linux_{arch}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(staged / "registry", arcname="registry")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    output = break_and_roll_back(
        host, converge, vm, hub, "-e", f"registry_mirror_version={version}", "-e", "registry_mirror_download_on_host=false",
        "-e", f"registry_mirror_local_cache_dir={cache}", "-e", json.dumps({"registry_mirror_checksums": {arch: digest}}))
    assert f"fake registry {version}: exits at once" in output
    assert host.check_output("readlink -f /usr/local/bin/registry") == real
    assert not host.file(f"/usr/local/lib/registry-mirror/{version}-{arch}").exists


def test_a_configuration_the_registry_refuses(host, converge, vm, hub):
    """The metrics listener's port is taken: the configuration check (which runs without that listener) passes, the
    registry exits at start."""
    host.check_output("systemd-run --unit=rollback-busy-port --collect python3 -m http.server --bind 127.0.0.1 5009")
    try:
        host.check_output("for i in $(seq 100); do ss -Hltn 'sport = :5009' | grep -q . && exit 0; sleep 0.1; done; exit 1")
        output = break_and_roll_back(host, converge, vm, hub, "-e", "registry_mirror_metrics_enabled=true",
                                     "-e", "registry_mirror_metrics_port=5009")
    finally:
        host.run("systemctl stop rollback-busy-port")
    assert "address already in use" in output
    assert "debug:" not in host.file("/etc/registry/config.yml").content_string


def test_a_permission_problem(host, converge, vm, hub):
    """A new storage directory under a parent only root may enter: the role creates it for the service user, who
    cannot reach it, and the registry fails at start."""
    host.check_output("install -d -o root -g root -m 0700 /srv/locked")
    try:
        output = break_and_roll_back(host, converge, vm, hub, "-e", "registry_mirror_storage_dir=/srv/locked/registry")
    finally:
        host.run("rm -rf /srv/locked")
    assert "permission denied" in output.lower()
    assert re.search(r'rootdirectory: "/var/lib/registry"', host.file("/etc/registry/config.yml").content_string)


def test_after_the_rollbacks_a_run_changes_nothing(converge):
    result = converge()
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] == 0
