# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The main job end to end on the built-in local example (``make demo``).

1. an actuated-like host: a systemd container at 192.168.128.1 on the test world's bridge, with actuated's certs;
2. the real playbook (playbooks/site.yml) with the inventory and vaulted token in demo/;
3. a VM on the bridge pulls library/alpine:latest (amd64 and arm64) through the mirror with skopeo;
4. what was pulled, what the mirror now caches, and what the (fake) Docker Hub counted;
5. a VM with Docker and containerd is pointed at both mirrors (Docker Hub's and ghcr.io's stand-in) in one step by
   clients/registry-mirror-client.py, then pulls with `docker pull` and `ctr`; what each upstream counted.
The host stays up afterwards for exploring; ``python3 -m world target down demo-agent`` removes it.
Run it from the repository root: ``python3 -m demo.run``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import world

DEMO = Path(__file__).resolve().parent
REPO = DEMO.parent

HOST = "demo-agent"
ARCH = os.environ.get("DEMO_ARCH", "amd64")
MIRROR = "192.168.128.1:5000"
IMAGE = "library/alpine:latest"


def step(title: str) -> None:
    """Announce a step."""
    print(f"\n=== {title}", flush=True)


def sh(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run CMD, failing loudly."""
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload]


def vm(script: str) -> str:
    """Run SCRIPT in the VM (world-vm) and return its output."""
    return sh(["docker", "exec", world.VM_CONTAINER, "sh", "-c", script], capture_output=True).stdout


def counted(admin_url: str, account: str) -> None:
    """Print what a fake registry counted since its last reset, per identity (manifest GETs = pulls); fail when anyone
    but the mirror's ACCOUNT pulled (a VM's client went around the mirror, or the mirror pulled anonymously)."""
    stats = json.loads(sh(["curl", "-sS", "--cacert", str(world.CA_CERT), f"{admin_url}/_world/stats"],
                          capture_output=True).stdout)
    busy = {name: counters for name, counters in stats["identities"].items() if counters["manifest_get"] or counters["blob_get"]}
    for name, counters in busy.items():
        print(f"  {name}: {counters['manifest_get']} pull(s), {counters['blob_get']} blob GET(s)")
    if not busy:
        print("  nothing: the mirror served it from its cache")
    others = sorted(set(busy) - {account})
    if others:
        raise SystemExit(f"the upstream at {admin_url} was pulled from by {', '.join(others)}, not only by the mirror's "
                         f"account {account}")


def reset(admin_url: str) -> None:
    """Zero a fake registry's counters."""
    sh(["curl", "-sS", "-o", "/dev/null", "--cacert", str(world.CA_CERT), "-X", "POST", f"{admin_url}/_world/reset"])


def docker_vm(script: str) -> str:
    """Run SCRIPT in the VM with Docker and containerd (world-docker-vm) and return its output."""
    return sh(["docker", "exec", world.DOCKER_VM_CONTAINER, "sh", "-c", script], capture_output=True).stdout


def main() -> int:
    """Run the demo; with DEMO_DOWN=1 (make test) remove its host afterwards, whatever happened."""
    try:
        return demo()
    finally:
        if os.environ.get("DEMO_DOWN") == "1":
            subprocess.run(world.command("target", "down", HOST), check=False)


def demo() -> int:
    """The demo's steps."""
    step(f"An actuated-like host ({ARCH}) at 192.168.128.1 on the VM bridge")
    sh(world.command("target", "up", HOST, "--arch", ARCH, "--network", "actuated-br128", "--ip", "192.168.128.1"))

    step("ansible-playbook playbooks/site.yml -l actuated_agents (token from Ansible Vault)")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".cache" / "collections")}
    playbook = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(DEMO / "inventory.yml"),
                "--vault-password-file", str(DEMO / "vault-password.txt"), str(REPO / "playbooks" / "site.yml"),
                "-l", "actuated_agents"]
    started = time.monotonic()
    sh(playbook, env=env)
    print(f"converged in {time.monotonic() - started:.1f} s")

    step(f"A VM pulls {IMAGE} through https://{MIRROR} (skopeo, trusting actuated's CA)")
    reset(world.HUB_LOCAL_URL)
    for arch in ("amd64", "arm64"):
        started = time.monotonic()
        vm(f"rm -rf /tmp/demo-{arch} && skopeo copy -q --override-arch {arch} docker://{MIRROR}/{IMAGE} oci:/tmp/demo-{arch}:latest")
        took = time.monotonic() - started
        index = json.loads(vm(f"cat /tmp/demo-{arch}/index.json"))
        digest = index["manifests"][0]["digest"]
        manifest = json.loads(vm(f"cat /tmp/demo-{arch}/blobs/sha256/{digest.split(':')[1]}"))
        size = sum(layer["size"] for layer in manifest["layers"])
        print(f"pulled {IMAGE} for linux/{arch} in {took:.2f} s: manifest {digest[:19]}..., "
              f"{len(manifest['layers'])} layer(s), {size} bytes")

    step("What the mirror now caches")
    refused = vm(f"curl -sS -o /dev/null -w '%{{http_code}}' https://{MIRROR}/v2/_catalog").strip()
    print(f"GET /v2/_catalog from the VM -> {refused} (registry_mirror_catalog is false: jobs do not see what others pulled)")
    listed = sh(["docker", "exec", HOST, "curl", "-sS", "--unix-socket", "/run/registry/docker-hub.sock",
                 "http://registry/v2/_catalog"], capture_output=True).stdout.strip()
    print(f"GET /v2/_catalog on {HOST}, from distribution's socket behind the caching front -> {listed}")
    cached = sh(["docker", "exec", HOST, "sh", "-c",
                 "du -sh /var/lib/registry | cut -f1; find /var/lib/registry -path '*/blobs/*' -name data | wc -l"],
                capture_output=True).stdout.split()
    print(f"/var/lib/registry on {HOST}: {cached[0]} in {cached[1]} blobs")

    step("What the (fake) Docker Hub counted, per identity (manifest GETs = Docker Hub pulls)")
    counted(world.HUB_LOCAL_URL, world.HUB_USERNAME)

    step("Another VM (Docker and containerd) pointed at both mirrors in one step: clients/registry-mirror-client.py")
    sh(["docker", "cp", str(REPO / "clients" / "registry-mirror-client.py"), f"{world.DOCKER_VM_CONTAINER}:/usr/local/bin/"])
    print(docker_vm("python3 /usr/local/bin/registry-mirror-client.py").rstrip())

    step("docker pull alpine and ctr pull ghcr.io/library/alpine in that VM: through the mirrors")
    reset(world.HUB_LOCAL_URL)
    reset(world.GHCR_LOCAL_URL)
    docker_vm("docker rmi -f alpine >/dev/null 2>&1; docker pull -q alpine && ctr -n demo images pull --snapshotter native "
              "--hosts-dir /etc/containerd/certs.d ghcr.io/library/alpine:latest >/dev/null")
    print("Docker Hub (fake) counted:")
    counted(world.HUB_LOCAL_URL, world.HUB_USERNAME)
    print("ghcr.io (fake) counted:")
    counted(world.GHCR_LOCAL_URL, world.GHCR_USERNAME)
    print("(the mirrors' accounts: the VM's own clients would have been anonymous)")
    if os.environ.get("DEMO_DOWN") != "1":
        print(f"\nThe mirror keeps running on {HOST}. Explore: docker exec -it {HOST} journalctl -u registry")
        print(f"Remove it: python3 -m world target down {HOST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
