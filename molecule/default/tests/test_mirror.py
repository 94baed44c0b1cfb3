# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The default scenario's promises: a Docker Hub pull-through mirror on actuated's bridge, on amd64 and arm64."""
from __future__ import annotations

import json
import struct

import pytest
from conftest import ADDRESS, ARCH, DEFAULT_VERSION, ELF_MACHINE, MIRROR, UNAME, amd64_only, recap, sha256, world

TOKEN = world.HUB_TOKEN
ALPINE = "library/alpine"


def test_target_runs_the_architecture_it_claims(host):
    assert host.check_output("uname -m") == UNAME
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_binary_is_host_architecture_and_requested_version(host):
    elf = host.file("/usr/local/bin/registry").content[:20]
    assert elf[:4] == b"\x7fELF"
    assert struct.unpack("<H", elf[18:20])[0] == ELF_MACHINE
    assert host.check_output("/usr/local/bin/registry --version").split()[-1].lstrip("v") == DEFAULT_VERSION
    fact = json.loads(host.file("/etc/ansible/facts.d/registry_mirror.fact").content_string)
    assert fact["version"] == DEFAULT_VERSION
    assert fact["arch"] == ARCH


def test_service_is_active_enabled_and_not_root(host):
    service = host.service("registry")
    assert service.is_running
    assert service.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value registry")
    assert host.check_output(f"stat -c %U /proc/{pid}") == "registry"
    assert host.user("registry").shell == "/usr/sbin/nologin"
    assert host.file("/var/lib/registry").user == "registry"


def test_listens_only_on_the_bridge(host):
    # Every TCP listener but Docker's embedded DNS (127.0.0.11): the mirrors (Docker Hub, and ghcr.io's stand-in on
    # 5010), only on the bridge, and their supervisors' notifications and metrics, only on loopback.
    # One line per socket: the front listens with reuseport, a socket per nginx worker.
    listeners = set(host.check_output("ss -Hltn | awk '{print $4}' | grep -v '^127.0.0.11:'").split())
    assert sorted(listeners) == sorted([f"{ADDRESS}:5000", "127.0.0.1:5002", f"{ADDRESS}:5010", "127.0.0.1:5012"])


def test_sandbox_exposure_is_low(host):
    line = host.check_output("systemd-analyze security registry.service | tail -1")
    exposure = float(line.split("level for registry.service:")[1].split()[0])
    print(f"systemd-analyze security registry.service: {exposure}")
    assert exposure <= 2.5


def test_tls_key_is_readable_by_the_service_only(host):
    original = host.file("/var/lib/actuated/certs/server.key")
    assert original.user == "root" and original.mode == 0o600
    copy = host.file("/run/registry/server.key")
    assert copy.user == "registry" and copy.mode == 0o400
    assert host.run("runuser -u nobody -- cat /run/registry/server.key").rc != 0


def test_tls_validates_against_actuateds_ca_without_credentials(vm):
    code = vm.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' https://{MIRROR}/v2/").stdout
    assert code == "200"


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_vm_pulls_alpine_through_the_mirror_with_upstream_digests(vm, host, arch):
    upstream_index = vm.raw_manifest(f"docker://{world.HUB_NAME}/{ALPINE}:latest", creds=f"{world.HUB_USERNAME}:{TOKEN}")
    mirror_index = vm.raw_manifest(f"docker://{MIRROR}/{ALPINE}:latest")
    assert sha256(mirror_index) == sha256(upstream_index)
    pulled = vm.pull(f"{MIRROR}/{ALPINE}:latest", arch, f"/tmp/alpine-{arch}")
    assert pulled.returncode == 0, pulled.stderr
    manifest_digest = next(m["digest"] for m in json.loads(mirror_index)["manifests"] if m["platform"]["architecture"] == arch)
    layout = json.loads(vm.sh(f"cat /tmp/alpine-{arch}/index.json").stdout)
    assert layout["manifests"][0]["digest"] == manifest_digest
    manifest = json.loads(vm.sh(f"cat /tmp/alpine-{arch}/blobs/sha256/{manifest_digest.split(':')[1]}").stdout)
    repo = "/var/lib/registry/docker/registry/v2"
    for blob in [manifest["config"], *manifest["layers"]]:
        hexdigest = blob["digest"].split(":")[1]
        assert vm.sh(f"sha256sum /tmp/alpine-{arch}/blobs/sha256/{hexdigest}").stdout.split()[0] == hexdigest
        assert host.file(f"{repo}/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data").exists
        assert host.file(f"{repo}/repositories/{ALPINE}/_layers/sha256/{hexdigest}/link").exists


def test_catalog_is_refused_to_vms_and_listed_on_the_host(vm, host):
    """registry_mirror_catalog is false: what other jobs pulled is not listed to a VM (the front answers 404); the
    host's root still reads it from distribution's unix socket."""
    refused = vm.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' https://{MIRROR}/v2/_catalog").stdout
    assert refused == "404"
    catalog = json.loads(host.check_output("curl -sS --unix-socket /run/registry/docker-hub.sock http://registry/v2/_catalog"))
    assert ALPINE in catalog["repositories"]


def test_upstream_received_the_configured_credentials(vm, hub):
    hub.reset()
    pulled = vm.pull(f"{MIRROR}/library/small1:latest", "amd64", "/tmp/small1")
    assert pulled.returncode == 0, pulled.stderr
    counted = hub.pulls()
    assert counted.get(world.HUB_USERNAME, 0) >= 1, counted
    assert counted.get("anonymous", 0) == 0, counted


def test_mirror_refuses_push(vm):
    pushed = vm.sh(f"skopeo copy --retry-times 0 oci:/tmp/alpine-amd64:x docker://{MIRROR}/library/pushed:latest", check=False)
    assert pushed.returncode != 0
    assert "unsupported" in pushed.stderr.lower() or "denied" in pushed.stderr.lower() or "405" in pushed.stderr, pushed.stderr


def test_mirror_refuses_delete(vm):
    code = vm.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' -X DELETE https://{MIRROR}/v2/{ALPINE}/manifests/latest").stdout
    assert code in {"405", "401", "403"}, code


def test_off_network_client_cannot_connect(offnet):
    tried = offnet.sh(f"curl -sS --connect-timeout 3 https://{MIRROR}/v2/", check=False)
    assert tried.returncode in {7, 28}, (tried.returncode, tried.stderr)


@pytest.mark.parametrize(("token", "env_file"), [(TOKEN, "/etc/registry/proxy.env"),
                                                 (world.GHCR_TOKEN, "/etc/registry/upstreams/ghcr/proxy.env")])
def test_token_absent_from_journal_and_world_readable_files(host, token, env_file):
    assert token not in host.check_output("journalctl --no-pager -o cat -u registry -u registry-cert-reload")
    found = host.run(f"grep -rlF {token} /etc /run /var/lib/registry /var/lib/registry-ghcr /usr/local /var/log /tmp /root")
    assert found.stdout.split() == [env_file]
    assert host.file(env_file).user == "root" and host.file(env_file).mode == 0o600


@amd64_only
def test_converged_check_diff_at_vvv_changes_nothing_and_never_shows_the_token(converge):
    result = converge("--check", "--diff", "-vvv")
    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result.stdout)["changed"] == 0
    assert TOKEN not in result.stdout + result.stderr
    assert world.GHCR_TOKEN not in result.stdout + result.stderr
