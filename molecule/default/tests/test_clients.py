# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The VM side: clients/registry-mirror-client.py, run in world-docker-vm (a VM with Debian's real Docker daemon and
containerd), points Docker, buildkit and containerd at every mirror the host serves in one step; pulls then go through
the mirrors under the mirrors' accounts, and straight to the upstreams when the mirror is stopped. What the script
does is the same whatever the server's architecture: amd64 only (the server side of both mirrors is proven on arm64 in
test_upstreams.py)."""
from __future__ import annotations

import json
import tomllib

import pytest
from conftest import ADDRESS, GHCR_MIRROR, MIRROR, REPO, Client, amd64_only, run, world

pytestmark = amd64_only

SCRIPT = "/usr/local/bin/registry-mirror-client"
# The VM image's own Docker settings (as world/docker-vm.sh writes them) and a mirror of its own (one that refuses at
# once: a name to resolve would cost every pull the internal network's DNS timeout): the script must keep both.
OWN_DAEMON = {"storage-driver": "vfs", "iptables": False, "ip-masq": False, "bridge": "none", "log-level": "warn",
              "registry-mirrors": ["https://127.0.0.1:5999"]}
CONFIG_DIRS = "/etc/docker /etc/buildkit /etc/containerd"
CTR = "ctr -n mirror-test images pull --snapshotter native --hosts-dir /etc/containerd/certs.d"


def reset(vm: Client) -> None:
    """The VM as its image made it: its own daemon.json (loaded), no buildkit or containerd mirror configuration, no
    images."""
    vm.sh(f"rm -rf /etc/buildkit /etc/containerd/certs.d /etc/docker/certs.d && cat >/etc/docker/daemon.json <<'EOF'\n"
          f"{json.dumps(OWN_DAEMON, indent=2)}\nEOF\n"
          "kill -HUP $(cat /var/run/docker.pid) && docker image prune -af >/dev/null && "
          "ctr -n mirror-test images ls -q | xargs -r ctr -n mirror-test images rm >/dev/null")


@pytest.fixture(scope="module")
def dvm():
    """world-docker-vm with the collection's client script installed, reset before and after."""
    vm = Client(world.DOCKER_VM_CONTAINER)
    run(["docker", "cp", str(REPO / "clients" / "registry-mirror-client.py"), f"{vm.name}:{SCRIPT}"])
    reset(vm)
    yield vm
    reset(vm)


def snapshot(vm: Client) -> str:
    """Every file under the VM's Docker, buildkit and containerd configuration, with its checksum and mode."""
    return vm.sh(f"find {CONFIG_DIRS} -type f -exec stat -c '%n %a' {{}} \\; -exec sha256sum {{}} \\; 2>/dev/null | sort").stdout


def read(vm: Client, path: str) -> str:
    """A file of the VM."""
    return vm.sh(f"cat {path}").stdout


def counted(registry) -> dict[str, int]:
    """Manifest GETs per identity, without the identities that made none (the supervisors' /v2/ probes)."""
    return {name: count for name, count in registry.pulls().items() if count}


def test_one_step_configures_docker_buildkit_and_containerd_for_every_mirror(dvm):
    done = dvm.sh(f"python3 {SCRIPT}")  # the bridge, actuated's CA and the mirrors: all found by itself
    print(done.stdout)
    daemon = json.loads(read(dvm, "/etc/docker/daemon.json"))
    assert daemon["registry-mirrors"] == [f"https://{MIRROR}", "https://127.0.0.1:5999"]
    assert {key: daemon[key] for key in OWN_DAEMON if key != "registry-mirrors"} == {
        key: value for key, value in OWN_DAEMON.items() if key != "registry-mirrors"}
    loaded = json.loads(dvm.sh("docker info --format '{{json .RegistryConfig.Mirrors}}'").stdout)
    assert loaded[0].rstrip("/") == f"https://{MIRROR}"  # reloaded by the script (SIGHUP), no restart
    buildkit = tomllib.loads(read(dvm, "/etc/buildkit/buildkitd.toml"))["registry"]
    assert buildkit["docker.io"]["mirrors"] == [MIRROR] and buildkit["ghcr.io"]["mirrors"] == [GHCR_MIRROR]
    for registry, server, mirror in (("docker.io", "https://registry-1.docker.io", MIRROR), ("ghcr.io", "https://ghcr.io", GHCR_MIRROR)):
        hosts = tomllib.loads(read(dvm, f"/etc/containerd/certs.d/{registry}/hosts.toml"))
        assert hosts["server"] == server  # the fallback
        assert hosts["host"][f"https://{mirror}"]["capabilities"] == ["pull", "resolve"]
    before = snapshot(dvm)
    again = dvm.sh(f"python3 {SCRIPT}")
    assert snapshot(dvm) == before, again.stdout  # idempotent
    assert ADDRESS in done.stdout


def test_docker_and_containerd_pull_through_the_mirrors_under_the_mirrors_accounts(dvm, hub, ghcr):
    dvm.sh(f"python3 {SCRIPT} --registry docker.io --registry ghcr.io=5010")
    hub.reset()
    pulled = dvm.sh("docker pull fill6", check=False)  # docker.io/library/fill6: never cached by the mirror before
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert set(counted(hub)) == {world.HUB_USERNAME}  # through the mirror: Docker itself would be anonymous
    ghcr.reset()
    pulled = dvm.sh(f"{CTR} ghcr.io/library/small3:latest", check=False)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert set(counted(ghcr)) == {world.GHCR_USERNAME}


def test_with_the_mirror_stopped_docker_and_containerd_fall_back_to_the_upstreams(host, dvm, hub, ghcr):
    dvm.sh(f"python3 {SCRIPT} --registry docker.io --registry ghcr.io=5010")
    dvm.sh("docker image prune -af >/dev/null; ctr -n mirror-test images ls -q | xargs -r ctr -n mirror-test images rm")
    host.check_output("systemctl stop registry")
    try:
        hub.reset()
        ghcr.reset()
        pulled = dvm.sh("docker pull small2", check=False)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert set(counted(hub)) == {"anonymous"}  # Docker Hub itself (the world's stand-in), as the VM's own client
        pulled = dvm.sh(f"{CTR} ghcr.io/library/small2:latest", check=False)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert set(counted(ghcr)) == {"anonymous"}
    finally:
        host.check_output("systemctl start registry")
        dvm.sh(f"for i in $(seq 150); do curl -sf -o /dev/null https://{MIRROR}/v2/ && "
               f"curl -sf -o /dev/null https://{GHCR_MIRROR}/v2/ && exit 0; sleep 0.2; done; exit 1")


# (prepare, arguments, what the message names, a typo in the command line: an error whatever --fail-on-error says; else
# the VM's own file: a warning and exit 0, an error only with --fail-on-error)
BAD_INPUT = {
    "malformed daemon.json": ("printf '{\"storage-driver\": \"vfs\",' >/etc/docker/daemon.json", "--registry docker.io",
                              "daemon.json", False),
    "unknown registry": ("", "--registry registry.example.invalid", "registry.example.invalid", True),
    "a CA that is not a certificate": ("echo nonsense >/tmp/not-a-ca.crt", "--ca /tmp/not-a-ca.crt", "/tmp/not-a-ca.crt",
                                       True),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_names_the_problem_and_leaves_the_vm_configuration_as_it_was(dvm, case):
    prepare, args, named, typo = BAD_INPUT[case]
    reset(dvm)
    dvm.sh(f"python3 {SCRIPT} --registry docker.io")  # a configured VM
    if prepare:
        dvm.sh(prepare)
    before = snapshot(dvm)
    if not typo:
        warned = dvm.sh(f"python3 {SCRIPT} {args}", check=False)
        assert warned.returncode == 0, warned.stdout + warned.stderr
        warnings = [line for line in warned.stdout.splitlines() if line.startswith("::warning::")]
        assert len(warnings) == 1 and named in warnings[0], warned.stdout
        assert "Traceback" not in warned.stderr and "::error::" not in warned.stderr, warned.stderr
        assert snapshot(dvm) == before
        args += " --fail-on-error"
    tried = dvm.sh(f"python3 {SCRIPT} {args}", check=False)
    assert tried.returncode == 2, tried.stdout + tried.stderr
    assert named in tried.stderr and "Traceback" not in tried.stderr, tried.stderr
    assert tried.stderr.startswith("::error::"), tried.stderr
    assert snapshot(dvm) == before
