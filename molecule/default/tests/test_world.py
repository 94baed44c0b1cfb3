# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The test world is what the other promises are proven on: prove it first (runs in the default scenario)."""
from __future__ import annotations

import hashlib
import json
import urllib.request

import pytest
from conftest import MIRROR, amd64_only, world

CREDS = f"{world.HUB_USERNAME}:{world.HUB_TOKEN}"
ALPINE = f"docker://{world.HUB_NAME}/library/alpine:latest"


def fetch(url: str) -> bytes:
    """GET from the release server on loopback."""
    with urllib.request.urlopen(url, timeout=30) as resp:  # nosec B310: the test world's loopback server
        return resp.read()


@pytest.mark.parametrize("version", [world.REGISTRY_VERSION, world.PATCHED_VERSION, world.BROKEN_VERSION])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_release_server_tarballs_match_their_sha256(version, arch):
    base = f"{world.RELEASES_LOCAL}/v{version}/registry_{version}_linux_{arch}.tar.gz"
    expected = fetch(base + ".sha256").decode()
    assert expected.endswith("\n") and len(expected.strip()) == 64
    assert hashlib.sha256(fetch(base)).hexdigest() == expected.strip()


def test_tampered_release_does_not_match_its_sha256():
    base = f"{world.RELEASES_LOCAL}/v{world.TAMPERED_VERSION}/registry_{world.TAMPERED_VERSION}_linux_amd64.tar.gz"
    assert hashlib.sha256(fetch(base)).hexdigest() != fetch(base + ".sha256").decode().strip()


def test_fake_hub_serves_alpine_for_both_architectures_with_the_configured_token(vm):
    index = json.loads(vm.raw_manifest(ALPINE, creds=CREDS))
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}
    for arch in ("amd64", "arm64"):
        pulled = vm.sh(f"rm -rf /tmp/hub-{arch} && skopeo copy --src-creds {CREDS} --override-arch {arch} {ALPINE} oci:/tmp/hub-{arch}:x",
                       check=False)
        assert pulled.returncode == 0, pulled.stderr


def test_fake_hub_tells_the_account_from_anonymous_and_refuses_a_wrong_token(vm, hub):
    hub.reset()
    vm.raw_manifest(ALPINE, creds=CREDS)
    vm.raw_manifest(ALPINE)
    assert hub.pulls() == {world.HUB_USERNAME: 1, "anonymous": 1}
    wrong = vm.sh(f"skopeo inspect --raw --creds {world.HUB_USERNAME}:wrong {ALPINE}", check=False)
    assert wrong.returncode != 0


# The third manifest GET, anonymous, by curl (skopeo would back off for 30 s on the 429 before failing): the token from
# the realm the hub's challenge names, then the manifest; the status and the body.
THIRD_GET = (
    'ch=$(curl -s -o /dev/null -D - https://{hub}/v2/ | tr -d "\\r" | grep -i "^www-authenticate:"); '
    """realm=$(printf %s "$ch" | sed 's/.*realm="\\([^"]*\\)".*/\\1/'); """
    """service=$(printf %s "$ch" | sed 's/.*service="\\([^"]*\\)".*/\\1/'); """
    """token=$(curl -s "$realm?service=$service&scope=repository:library/alpine:pull" | sed 's/.*"token": *"\\([^"]*\\)".*/\\1/'); """
    'curl -s -w " %{{http_code}}" -H "Authorization: Bearer $token" '
    '-H "Accept: application/vnd.oci.image.index.v1+json" https://{hub}/v2/library/alpine/manifests/latest')


@amd64_only  # the world's hub and VM are the same whichever target runs: once
def test_fake_hub_rate_limits_when_asked(vm, hub):
    hub.reset()
    hub.configure(rate_limit=2)
    try:
        codes = [vm.sh(f"skopeo inspect --raw {ALPINE}", check=False) for _attempt in range(2)]
        third = vm.sh(THIRD_GET.format(hub=world.HUB_NAME), check=False).stdout
    finally:
        hub.configure(rate_limit=0)
    assert [c.returncode for c in codes] == [0, 0]
    assert third.endswith(" 429") and "TOOMANYREQUESTS" in third, third
    assert hub.pulls() == {"anonymous": 2}


def test_bridge_is_reachable_from_the_vm_but_not_from_off_network(vm, offnet):
    assert vm.sh(f"curl -sS -o /dev/null https://{MIRROR}/v2/", check=False).returncode == 0
    assert offnet.sh(f"curl -sS -o /dev/null --connect-timeout 3 https://{MIRROR}/v2/", check=False).returncode in {7, 28}
