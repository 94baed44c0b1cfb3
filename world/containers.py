# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""``up`` and ``down``: the docker networks standing in for the actuated bridges and the world's containers
(world-hub, world-ghcr, world-vm, world-docker-vm, world-offnet), each recreated only when its configuration
changes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from .certs import cmd_certs
from .config import (
    AUTH_NAME,
    CA_CERT,
    CACHE,
    CERTS,
    CLIENT_IMAGE,
    CONTAINERS,
    DEBS,
    DOCKER_VM_BINARIES,
    DOCKER_VM_CONTAINER,
    DOCKER_VM_IPS,
    GHCR_CONTAINER,
    GHCR_IPS,
    GHCR_LOCAL_PORT,
    GHCR_LOCAL_URL,
    GHCR_NAME,
    GHCR_READY_URL,
    GHCR_STATE,
    GHCR_TOKEN,
    GHCR_USERNAME,
    HUB_CONTAINER,
    HUB_DIR,
    HUB_IPS,
    HUB_LOCAL_PORT,
    HUB_LOCAL_URL,
    HUB_NAME,
    HUB_STATE,
    HUB_TOKEN,
    HUB_USERNAME,
    LABEL_CONFIG,
    NET_BR128,
    NET_BR129,
    NET_OFFNET,
    NETWORKS,
    OFFNET_CONTAINER,
    OFFNET_IP,
    PUBLIC_NAMES,
    RELEASES,
    RELEASES_LOCAL,
    RELEASES_LOCAL_PORT,
    RELEASES_REMOTE,
    TARGET_IMAGE,
    TARGET_IPS,
    VM_CONTAINER,
    VM_IPS,
    WORLD_DIR,
)
from .deps import cmd_deps
from .hub import wait_hub_ready
from .images import cmd_images
from .releases import cmd_debs, cmd_releases
from .util import (
    WorldError,
    image_id,
    inspect,
    log,
    ok,
    read_text,
    recipe_hash,
    run,
    sha256_file,
    step,
    tree_hash,
    warn,
)


def detach_all(network: str, info: dict[str, Any]) -> None:
    """Disconnect every container from a network (so it can be removed)."""
    for endpoint in (info.get("Containers") or {}).values():
        name = endpoint.get("Name", "")
        if name not in CONTAINERS:
            warn(f"disconnecting {name} from {network}")
        ok(["docker", "network", "disconnect", "-f", network, name])


def ensure_network(name: str, subnet: str, gateway: str) -> None:
    """Create an internal network, or recreate it when its settings differ."""
    info = inspect("network", name)
    if info is not None:
        config = (info.get("IPAM") or {}).get("Config") or [{}]
        if info.get("Internal") and config[0].get("Subnet") == subnet and config[0].get("Gateway") == gateway:
            return
        warn(f"network {name} has other settings: recreating it")
        detach_all(name, info)
        run(["docker", "network", "rm", name], quiet=True)
    run(["docker", "network", "create", "--internal", "--subnet", subnet, "--gateway", gateway, name], quiet=True)
    log(f"network {name} {subnet} gateway {gateway} (internal)")


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """How one world container is made."""

    name: str
    image: str
    network: str
    ip: str
    options: tuple[str, ...]
    command: tuple[str, ...]
    connects: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (network, ip, aliases)
    inputs: tuple[str, ...] = ()  # extra values whose change must recreate the container

    def config_hash(self) -> str:
        """Hash of the whole spec plus the image id."""
        return recipe_hash({"spec": dataclasses.asdict(self), "image": image_id(self.image)})


CA_TRUST_CMD = ("sh", "-c", ("cp /certs/ca.crt /usr/local/share/ca-certificates/actuated-ca.crt"
                             " && update-ca-certificates >/dev/null 2>&1 && exec sleep infinity"))


def container_specs() -> list[ContainerSpec]:
    """The world's containers."""
    start_sh = HUB_DIR / "start.sh"
    hub_cmd = ("sh", "/hub/start.sh") if start_sh.exists() else ("sleep", "infinity")
    certs_hash = sha256_file(CA_CERT)[:16] if CA_CERT.exists() else ""
    hub_cert_hash = sha256_file(CERTS / "hub.crt")[:16] if (CERTS / "hub.crt").exists() else ""
    hub_inputs = (tree_hash(HUB_DIR), certs_hash, hub_cert_hash, read_text(RELEASES / ".recipe"))
    common = ("--init", "--pull", "never", "--platform", "linux/amd64")
    return [
        ContainerSpec(
            HUB_CONTAINER, CLIENT_IMAGE, "bridge", "",
            (*common, "--hostname", "hub", "-p", f"127.0.0.1:{HUB_LOCAL_PORT}:443",
             "-p", f"127.0.0.1:{RELEASES_LOCAL_PORT}:8080",
             "-v", f"{HUB_DIR}:/hub:ro", "-v", f"{HUB_STATE}:/state", "-v", f"{CERTS}:/certs:ro",
             "-v", f"{RELEASES}:/releases:ro", "-v", f"{DEBS}:/debs:ro",
             "-e", f"HUB_USERNAME={HUB_USERNAME}", "-e", f"HUB_TOKEN={HUB_TOKEN}", "-e", "HUB_RATE_LIMIT=0"),
            hub_cmd,
            connects=tuple((net, ip, (HUB_NAME, AUTH_NAME)) for net, ip in HUB_IPS.items()),
            inputs=hub_inputs,
        ),
        # The second upstream (ghcr.io's stand-in): the same registry code with its own names, account, token service
        # (realm on its own host), storage and the small image set.
        ContainerSpec(
            GHCR_CONTAINER, CLIENT_IMAGE, "bridge", "",
            (*common, "--hostname", "ghcr", "-p", f"127.0.0.1:{GHCR_LOCAL_PORT}:443",
             "-v", f"{HUB_DIR}:/hub:ro", "-v", f"{GHCR_STATE}:/state", "-v", f"{CERTS}:/certs:ro",
             "-v", f"{RELEASES}:/releases:ro", "-v", f"{DEBS}:/debs:ro",
             "-e", f"HUB_USERNAME={GHCR_USERNAME}", "-e", f"HUB_TOKEN={GHCR_TOKEN}", "-e", "HUB_RATE_LIMIT=0",
             "-e", f"HUB_REGISTRY_NAME={GHCR_NAME}", "-e", "HUB_AUTH_NAME=", "-e", "HUB_SERVICE=ghcr.io",
             "-e", "HUB_ISSUER=ghcr.io", "-e", "HUB_SEED=minimal"),
            hub_cmd,
            connects=tuple((net, ip, (GHCR_NAME,)) for net, ip in GHCR_IPS.items()),
            inputs=hub_inputs,
        ),
        # A VM with Docker and containerd. SYS_ADMIN: unpacking a layer needs a mount namespace. Safe here because
        # nothing in it touches cgroups (no systemd, no cgroup volume: see the machine facts in CONTRIBUTING.md).
        ContainerSpec(
            DOCKER_VM_CONTAINER, CLIENT_IMAGE, NET_BR128, DOCKER_VM_IPS[NET_BR128],
            (*common, "--hostname", "docker-vm", "--cap-add", "SYS_ADMIN", "-v", f"{CERTS}:/certs:ro",
             "-v", f"{WORLD_DIR / 'docker-vm.sh'}:/docker-vm.sh:ro",
             *(arg for binary in DOCKER_VM_BINARIES for arg in ("-v", f"{binary}:{binary}:ro")),
             *(arg for name, which in PUBLIC_NAMES.items()
               for arg in ("--add-host", f"{name}:{(HUB_IPS if which == 'hub' else GHCR_IPS)[NET_BR128]}"))),
            ("sh", "/docker-vm.sh"),
            connects=((NET_BR129, DOCKER_VM_IPS[NET_BR129], ()),),
            inputs=(certs_hash, sha256_file(WORLD_DIR / "docker-vm.sh")[:16],
                    *(sha256_file(Path(binary))[:16] for binary in DOCKER_VM_BINARIES if Path(binary).exists())),
        ),
        ContainerSpec(
            VM_CONTAINER, CLIENT_IMAGE, NET_BR128, VM_IPS[NET_BR128],
            (*common, "--hostname", "vm", "-v", f"{CERTS}:/certs:ro"),
            CA_TRUST_CMD,
            connects=tuple((net, ip, ()) for net, ip in VM_IPS.items() if net != NET_BR128),
            inputs=(certs_hash,),
        ),
        ContainerSpec(
            OFFNET_CONTAINER, CLIENT_IMAGE, NET_OFFNET, OFFNET_IP,
            (*common, "--hostname", "offnet", "-v", f"{CERTS}:/certs:ro"),
            CA_TRUST_CMD,
            inputs=(certs_hash,),
        ),
    ]


def ensure_container(spec: ContainerSpec) -> bool:
    """Create/start a container; recreate it when its config changed. Returns True when it was (re)started."""
    config = spec.config_hash()
    info = inspect("container", spec.name)
    if info is not None:
        labels = info["Config"].get("Labels") or {}
        if labels.get(LABEL_CONFIG) == config:
            if info["State"].get("Running"):
                return False
            run(["docker", "start", spec.name], quiet=True)
            log(f"{spec.name}: started again")
            return True
        log(f"{spec.name}: configuration changed: recreating")
        run(["docker", "rm", "-f", spec.name], quiet=True)
    create = ["docker", "create", "--name", spec.name, "--label", f"{LABEL_CONFIG}={config}", "--network", spec.network]
    if spec.ip:
        create += ["--ip", spec.ip]
    run([*create, *spec.options, spec.image, *spec.command], quiet=True)
    for network, ip, aliases in spec.connects:
        alias_args = [arg for alias in aliases for arg in ("--alias", alias)]
        run(["docker", "network", "connect", "--ip", ip, *alias_args, network, spec.name], quiet=True)
    run(["docker", "start", spec.name], quiet=True)
    log(f"{spec.name}: created and started")
    return True


def wait_ca_trusted(name: str) -> None:
    """Wait until a client container has installed the test CA: CA_TRUST_CMD execs `sleep` once
    update-ca-certificates has written the bundle (the .pem link alone appears before the bundle is complete)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ok(["docker", "exec", name, "sh", "-c", "grep -qx sleep /proc/[0-9]*/comm"]):
            return
        time.sleep(0.3)
    raise WorldError(f"{name}: the test CA did not get installed (docker logs {name})")


def cmd_up() -> None:
    """Everything: deps, images, debs, releases, certs, networks, containers."""
    start = time.monotonic()
    cmd_deps()
    cmd_images()
    cmd_debs()
    cmd_releases()
    cmd_certs()
    with step("networks and containers"):
        HUB_STATE.mkdir(parents=True, exist_ok=True)
        GHCR_STATE.mkdir(parents=True, exist_ok=True)
        for name, (subnet, gateway) in NETWORKS.items():
            ensure_network(name, subnet, gateway)
        started = {spec.name: ensure_container(spec) for spec in container_specs()}
        for name in (VM_CONTAINER, OFFNET_CONTAINER, DOCKER_VM_CONTAINER):
            if started[name]:
                wait_ca_trusted(name)
        wait_hub_ready()
        wait_hub_ready(GHCR_CONTAINER, GHCR_READY_URL)
    log(f"up: done in {time.monotonic() - start:.1f}s")
    print_summary()


def print_summary() -> None:
    """Addresses, ports and environment of the world."""
    docker_vm = f"{DOCKER_VM_IPS[NET_BR128]} ({NET_BR128}), {DOCKER_VM_IPS[NET_BR129]} ({NET_BR129})"
    targets = f"{TARGET_IMAGE.format(arch='amd64|arm64')} at {TARGET_IPS[NET_BR128]} / {TARGET_IPS[NET_BR129]}"
    print(f"""actuated-world is up (cache {CACHE})
  {HUB_CONTAINER:13} {HUB_NAME}  {HUB_IPS[NET_BR128]} ({NET_BR128}), {HUB_IPS[NET_BR129]} ({NET_BR129})
                registry https://{HUB_NAME} (:443) -> {HUB_LOCAL_URL};  releases {RELEASES_REMOTE} -> {RELEASES_LOCAL}
  {GHCR_CONTAINER:13} {GHCR_NAME}  {GHCR_IPS[NET_BR128]} ({NET_BR128}), {GHCR_IPS[NET_BR129]} ({NET_BR129})
                registry https://{GHCR_NAME} (:443) -> {GHCR_LOCAL_URL}  (ghcr.io's stand-in)
  {DOCKER_VM_CONTAINER:13} {docker_vm}; dockerd + containerd
  {VM_CONTAINER:13} {VM_IPS[NET_BR128]} ({NET_BR128}), {VM_IPS[NET_BR129]} ({NET_BR129}); trusts {CA_CERT}
  {OFFNET_CONTAINER:13} {OFFNET_IP} ({NET_OFFNET}): no route to the actuated bridges
  targets       (Molecule) {targets}
  environment   eval "$(python3 -m world env)\"""")


def cmd_down() -> None:
    """Remove the world's containers and networks (the caches stay)."""
    with step("down"):
        for name in CONTAINERS:
            if inspect("container", name) is not None:
                run(["docker", "rm", "-f", name], quiet=True)
                log(f"removed container {name}")
        for name in NETWORKS:
            info = inspect("network", name)
            if info is not None:
                detach_all(name, info)
                run(["docker", "network", "rm", name], quiet=True)
                log(f"removed network {name}")
