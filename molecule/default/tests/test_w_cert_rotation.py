# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Certificate rotation: a renewal is served by every mirror without Ansible, with one graceful reload of the caching
front per rotation (the registry is not restarted), never a mismatched pair. How long it took is printed, not
asserted. (Without the front, a rotation restarts the registry once: test_f_front.py.)"""
from __future__ import annotations

import subprocess
import tempfile
import time

import pytest
from conftest import GHCR_MIRROR, MIRROR, amd64_only, recap, world

CERTS = "/var/lib/actuated/certs"
HANDLER = "RUNNING HANDLER [actuated.registry.registry_mirror : Reload the caching front]"
RESTART = "RUNNING HANDLER [actuated.registry.registry_mirror : Restart registry]"
# The mirrors of the one unit (molecule.yml: Docker Hub's and the second upstream's).
MIRRORS = (MIRROR, GHCR_MIRROR)
# How long a wait for the renewal may last before it fails the run: a guard against a hang, not a limit the renewal has
# to meet (it takes seconds; under arm64 emulation a dozen).
HANG_GUARD = 120.0


def served_fingerprint(vm, mirror: str = MIRROR) -> str:
    """SHA-256 fingerprint of the certificate a mirror presents to a VM (empty when it does not answer)."""
    got = vm.sh(f"echo | timeout 5 openssl s_client -connect {mirror} 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
                check=False)
    return got.stdout.strip().split("=")[-1]


def issue(host, *flags: str) -> str:
    """A renewed pair from the test CA, copied into the target's /tmp/renewed; returns its fingerprint."""
    with tempfile.TemporaryDirectory() as tmp:
        fingerprint = subprocess.run(world.command("cert", "issue", tmp, *flags),
                                     check=True, capture_output=True, text=True).stdout.strip().split()[-1]
        name = host.backend.get_hostname()
        host.run("rm -rf /tmp/renewed")
        subprocess.run(["docker", "cp", tmp + "/.", f"{name}:/tmp/renewed"], check=True)
    return fingerprint.split("=")[-1]


def served(vm) -> dict[str, str]:
    """The fingerprint each mirror of the unit serves."""
    return {mirror: served_fingerprint(vm, mirror) for mirror in MIRRORS}


def wait_for(vm, fingerprint: str) -> float:
    """Seconds until every mirror of the unit serves FINGERPRINT (for the output); fails after HANG_GUARD."""
    start = time.monotonic()
    pending = list(MIRRORS)
    while pending and time.monotonic() - start < HANG_GUARD:
        pending = [mirror for mirror in pending if served_fingerprint(vm, mirror) != fingerprint]
        if pending:
            time.sleep(0.25)
    if pending:
        raise AssertionError(f"after {HANG_GUARD:.0f} s the mirrors serve {served(vm)}, not {fingerprint}")
    return time.monotonic() - start


def starts(host, since: str) -> int:
    """How many times the registry unit started since SINCE (a journalctl timestamp; journalctl must succeed)."""
    lines = host.check_output(f"journalctl --no-pager -o cat -u registry --since '{since}'").splitlines()
    return sum(line.startswith("Started registry.service") for line in lines)


def reloads(host, since: str) -> int:
    """How many times the caching front was reloaded since SINCE."""
    lines = host.check_output(f"journalctl --no-pager -o cat -u registry-front --since '{since}'").splitlines()
    return sum(line.startswith("Reloaded registry-front.service") for line in lines)


def now(host) -> str:
    """The target's clock, in a form journalctl --since accepts."""
    return host.check_output("date '+%Y-%m-%d %H:%M:%S'")


def pulls(vm) -> bool:
    """The VM can still pull through every mirror."""
    return all(vm.pull(f"{mirror}/library/alpine:latest", "amd64", "/tmp/rot-alpine").returncode == 0
               for mirror in MIRRORS)


@pytest.mark.parametrize("how", ["in-place write", "atomic rename"])
def test_renewal_without_ansible_is_served_by_every_mirror_after_one_reload(host, vm, how):
    fingerprint = issue(host)
    since = now(host)
    time.sleep(1)
    if how == "in-place write":
        host.check_output(f"cat /tmp/renewed/server.crt > {CERTS}/server.crt && cat /tmp/renewed/server.key > {CERTS}/server.key")
    else:
        host.check_output(f"cp /tmp/renewed/server.crt {CERTS}/.crt.new && cp /tmp/renewed/server.key {CERTS}/.key.new && "
                          f"chmod 600 {CERTS}/.key.new && mv {CERTS}/.crt.new {CERTS}/server.crt && mv {CERTS}/.key.new {CERTS}/server.key")
    took = wait_for(vm, fingerprint)
    print(f"{how}: new certificate served by {len(MIRRORS)} mirrors after {took:.1f} s")
    time.sleep(3)
    assert (starts(host, since), reloads(host, since)) == (0, 1)
    assert served(vm) == dict.fromkeys(MIRRORS, fingerprint)  # still the new one once the restart settled
    assert pulls(vm)


def test_a_burst_of_writes_gives_one_reload_into_the_complete_pair(host, vm):
    fingerprint = issue(host)
    since = now(host)
    time.sleep(1)
    host.check_output(f"cat /tmp/renewed/server.crt > {CERTS}/server.crt; sleep 0.7; "
                      f"cat /tmp/renewed/server.key > {CERTS}/server.key; sleep 0.3; touch {CERTS}/server.crt")
    wait_for(vm, fingerprint)
    time.sleep(4)
    assert (starts(host, since), reloads(host, since)) == (0, 1)
    assert "does not belong" not in host.check_output(f"journalctl --no-pager -o cat --since '{since}'")


# Two playbook runs (about 5 minutes under arm64 emulation) for logic that does not depend on the architecture: the
# renewal itself is proven on arm64 by the tests above, a second run changing nothing by the fleet scenario's arm64
# edge.
@amd64_only
def test_playbook_after_a_renewal_reloads_the_front_exactly_once(host, vm, converge):
    host.check_output("systemctl stop registry-cert.path")
    try:
        fingerprint = issue(host)
        host.check_output(f"cp /tmp/renewed/server.crt {CERTS}/server.crt && cp /tmp/renewed/server.key {CERTS}/server.key")
        before = host.check_output("systemctl show -p InvocationID --value registry")
        result = converge("--diff")
        assert result.returncode == 0, result.stdout[-3000:]
        assert result.stdout.count(HANDLER) == 1 and RESTART not in result.stdout
        assert "fingerprint:" in result.stdout  # the module's diff: before/after fingerprints
        assert host.check_output("systemctl show -p InvocationID --value registry") == before
        wait_for(vm, fingerprint)
    finally:
        host.check_output("systemctl start registry-cert.path")
    again = converge()
    assert recap(again.stdout)["changed"] == 0
    assert HANDLER not in again.stdout


@amd64_only  # registry-cert-reload's check and the role's are shell and openssl: the same on every architecture
def test_mismatched_key_keeps_the_previous_certificate(host, vm, converge):
    previous = served(vm)
    assert all(previous.values()), previous
    issue(host, "--mismatch")
    since = now(host)
    time.sleep(1)
    host.check_output(f"cp {CERTS}/server.crt /tmp/good.crt && cp {CERTS}/server.key /tmp/good.key")
    try:
        host.check_output(f"cat /tmp/renewed/server.crt > {CERTS}/server.crt && cat /tmp/renewed/server.key > {CERTS}/server.key")
        # The reload decides once the pair has been quiet: wait for its word (HANG_GUARD only guards against a hang).
        deadline = time.monotonic() + HANG_GUARD
        journal = ""
        while "does not belong to certificate" not in journal and time.monotonic() < deadline:
            time.sleep(0.5)
            journal = host.check_output(f"journalctl --no-pager -o cat --since '{since}'")
        assert "does not belong to certificate" in journal, journal[-2000:]
        time.sleep(1)
        assert (starts(host, since), reloads(host, since)) == (0, 0)
        assert served(vm) == previous
        result = converge()
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "does not" in output and "server.key" in output, output[-3000:]
        assert served(vm) == previous
        assert pulls(vm)
    finally:
        host.check_output(f"cat /tmp/good.crt > {CERTS}/server.crt && cat /tmp/good.key > {CERTS}/server.key")
        time.sleep(4)


@amd64_only
def test_expiring_certificate_warns_and_optionally_fails(host, converge):
    issue(host, "--days", "5")
    host.check_output(f"cp {CERTS}/server.crt /tmp/good.crt && cp {CERTS}/server.key /tmp/good.key")
    try:
        host.check_output(f"cp /tmp/renewed/server.crt {CERTS}/server.crt && cp /tmp/renewed/server.key {CERTS}/server.key")
        warned = converge()
        assert warned.returncode == 0
        assert "within registry_mirror_cert_min_valid_days" in warned.stdout
        failed = converge("-e", "registry_mirror_cert_fail_when_expiring=true")
        assert failed.returncode != 0
        assert "within registry_mirror_cert_min_valid_days" in failed.stdout + failed.stderr
    finally:
        host.check_output(f"cat /tmp/good.crt > {CERTS}/server.crt && cat /tmp/good.key > {CERTS}/server.key")
    assert converge().returncode == 0
