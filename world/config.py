# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The test world's names, addresses, paths, versions and package lists, and env_vars(), the environment they make for
the tests. Constants only: importing this has no side effects."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORLD_DIR = REPO / "world"
HUB_DIR = WORLD_DIR / "hub"
# The one definition of a server under test: Molecule's platform, which `target up` reads too (world/targets.py).
MOLECULE_CONFIG = REPO / ".config" / "molecule" / "config.yml"

CACHE = Path(os.environ.get("WORLD_CACHE", "/var/cache/actuated-world"))
CERTS = CACHE / "certs"
CA_CERT = CERTS / "ca.crt"
CA_KEY = CERTS / "ca.key"
RELEASES = CACHE / "releases"
DEBS = CACHE / "debs"
HUB_STATE = CACHE / "hub"
GHCR_STATE = CACHE / "ghcr"
ROOTFS_CACHE = CACHE / "rootfs"
LOGS = CACHE / "logs"
DOCKERD_PIDFILE = CACHE / "dockerd.pid"
# promtool for `make lint`, taken out of Debian's prometheus package by `deps` (world/deps.py says why not installed).
PROMTOOL = CACHE / "tools" / "promtool"
PROMTOOL_PACKAGE = "prometheus"
# The Prometheus server of the same package, the same way: world/dashboard.py evaluates the dashboard's queries with it
# (docs/dashboard/) and the unit tests of that drawing start one on a loopback port.
PROMETHEUS_TOOL = CACHE / "tools" / "prometheus"
# nginx for the unit tests that check the caching front's configuration (`nginx -t`), out of Debian's nginx package the
# same way (installing it would start an nginx on port 80).
NGINX_TOOL = CACHE / "tools" / "nginx"
NGINX_PACKAGE = "nginx"

SUITE = "bookworm"

# The test Docker Hub account: fake, test-only values (the fake hub accepts exactly these).
HUB_USERNAME = "actuated-ci"
HUB_TOKEN = "dckr_pat_WORLD-test-token-7c1e9a52"

HUB_NAME = "hub.actuated.test"
# The token service's name: another host of the hub's registrable domain, as auth.docker.io is for registry-1.docker.io
# (distribution 3.1 sends its upstream credentials only to such a realm or to the registry's own host:port).
AUTH_NAME = "auth.actuated.test"
HUB_URL = f"https://{HUB_NAME}"
HUB_LOCAL_PORT = 15443
RELEASES_LOCAL_PORT = 18080
HUB_LOCAL_URL = f"https://127.0.0.1:{HUB_LOCAL_PORT}"
HUB_READY_URL = f"{HUB_LOCAL_URL}/_world/ready"
RELEASES_LOCAL = f"http://127.0.0.1:{RELEASES_LOCAL_PORT}"

# A second upstream standing in for ghcr.io: the same fake registry code (world/hub/) in a container of its own, with
# its own account, token service (its realm on its own host, as ghcr.io's is), storage and counters, seeded with the
# small image set.
GHCR_USERNAME = "actuated-ghcr"
GHCR_TOKEN = "ghp_WORLDtestTokenForGhcr7c1e9a52b3d4"
GHCR_NAME = "ghcr.actuated.test"
GHCR_URL = f"https://{GHCR_NAME}"
GHCR_LOCAL_PORT = 15444
GHCR_LOCAL_URL = f"https://127.0.0.1:{GHCR_LOCAL_PORT}"
GHCR_READY_URL = f"{GHCR_LOCAL_URL}/_world/ready"
# The public names a VM's clients use, which world-docker-vm resolves to the fake registries (its /etc/hosts): with the
# mirror stopped, Docker and containerd fall back to "Docker Hub" and "ghcr.io" as they would in a real VM.
PUBLIC_NAMES = {"registry-1.docker.io": "hub", "ghcr.io": "ghcr"}
RELEASES_REMOTE = f"http://{HUB_NAME}:8080"

# Docker networks standing in for the actuated bridges (firecracker: br128, cloud-hypervisor: br129) and a network
# that has no route to either of them.
NET_BR128 = "actuated-br128"
NET_BR129 = "actuated-br129"
NET_OFFNET = "actuated-offnet"
# A fleet's two sites (the fleet scenario): each site's private network holds its tier mirror and its servers (edges).
# The fake Docker Hub is on both (the WAN), and so is world-vm (the client that pulls through each edge).
NET_SITE_A = "actuated-site-a"
NET_SITE_B = "actuated-site-b"
NETWORKS: dict[str, tuple[str, str]] = {
    NET_BR128: ("192.168.128.0/24", "192.168.128.254"),
    NET_BR129: ("192.168.129.0/24", "192.168.129.254"),
    NET_OFFNET: ("192.168.200.0/24", "192.168.200.254"),
    NET_SITE_A: ("10.88.1.0/24", "10.88.1.254"),
    NET_SITE_B: ("10.88.2.0/24", "10.88.2.254"),
}
# The fleet scenario's hosts (molecule/fleet/molecule.yml gives them these addresses): per site a tier, and edges that
# listen on their site address (standing in for their bridge: one docker network cannot give three hosts 192.168.128.1).
FLEET_TIERS = {"tier-a": "10.88.1.10", "tier-b": "10.88.2.10"}
FLEET_EDGES = {"edge-a1": "10.88.1.21", "edge-a2": "10.88.1.22", "edge-b1": "10.88.2.21"}
# Where Molecule puts the server under test (the actuated bridge address); the world never creates it.
TARGET_IPS = {NET_BR128: "192.168.128.1", NET_BR129: "192.168.129.1"}
HUB_IPS = {NET_BR128: "192.168.128.100", NET_BR129: "192.168.129.100", NET_SITE_A: "10.88.1.100",
           NET_SITE_B: "10.88.2.100"}
GHCR_IPS = {NET_BR128: "192.168.128.101", NET_BR129: "192.168.129.101"}
VM_IPS = {NET_BR128: "192.168.128.2", NET_BR129: "192.168.129.2", NET_SITE_A: "10.88.1.2", NET_SITE_B: "10.88.2.2"}
DOCKER_VM_IPS = {NET_BR128: "192.168.128.3", NET_BR129: "192.168.129.3"}
OFFNET_IP = "192.168.200.2"

HUB_CONTAINER = "world-hub"
VM_CONTAINER = "world-vm"
OFFNET_CONTAINER = "world-offnet"
GHCR_CONTAINER = "world-ghcr"
# A VM with a real Docker daemon and containerd (Debian's docker.io and containerd, the host's own packages mounted
# read-only into the client image): for the client set-up (clients/registry-mirror-client.py).
DOCKER_VM_CONTAINER = "world-docker-vm"
CONTAINERS = (HUB_CONTAINER, VM_CONTAINER, OFFNET_CONTAINER, GHCR_CONTAINER, DOCKER_VM_CONTAINER)
# The host's binaries world-docker-vm runs (world deps installs docker.io, which brings containerd and runc).
DOCKER_VM_BINARIES = ("/usr/sbin/dockerd", "/usr/bin/docker", "/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc",
                      "/usr/bin/containerd-shim-runc-v2")

TARGET_IMAGE = "actuated-world/target:{arch}"
CLIENT_IMAGE = "actuated-world/client:amd64"
ARCHES = ("amd64", "arm64")
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}

# Release fixtures (upstream layout: v{V}/registry_{V}_linux_{ARCH}.tar.gz and .sha256 with the bare digest).
SOURCE_VERSION = "3.1.1"  # built from distribution's source (world/gobuild.py): the role's default version
REGISTRY_VERSION = "2.8.2"  # Debian's docker-registry, repackaged: the older version upgrade tests start from
PATCHED_VERSION = "2.8.3"  # the same binary with its version string patched: a test fixture, not upstream 2.8.3
TAMPERED_VERSION = "9.9.8"  # .sha256 does not match the tarball
BROKEN_VERSION = "9.9.9"  # correct .sha256, but the tarball has no `registry` member
RELEASE_VERSIONS = (REGISTRY_VERSION, PATCHED_VERSION, TAMPERED_VERSION, BROKEN_VERSION)

SERVER_SANS = ("IP:192.168.128.1", "IP:192.168.129.1", "DNS:localhost", "IP:127.0.0.1",
               *(f"IP:{ip}" for ip in FLEET_EDGES.values()))
# One certificate for both fake registries, also valid for the public names world-docker-vm resolves to them.
HUB_SANS = (f"DNS:{HUB_NAME}", f"DNS:{AUTH_NAME}", "IP:192.168.128.100", "IP:192.168.129.100", "IP:127.0.0.1",
            "DNS:localhost",
            f"DNS:{GHCR_NAME}", "IP:192.168.128.101", "IP:192.168.129.101", *(f"DNS:{name}" for name in PUBLIC_NAMES))

LABEL_RECIPE = "org.actuated.world.recipe"
LABEL_CONFIG = "org.actuated.world.config"
# On containers made by `python3 -m world target up` (value: the architecture).
LABEL_TARGET = "org.actuated.world.target"

APT_PACKAGES = (
    "docker.io", "skopeo", "umoci", "debootstrap", "qemu-user-static", "binfmt-support", "openssl",
    "debian-archive-keyring", "gpgv", "shellcheck",
)
TARGET_PACKAGES = ("systemd", "systemd-sysv", "python3", "sudo", "ca-certificates", "curl", "iproute2", "openssl")
# netavark: skopeo needs the virtual package container-network-stack, which debootstrap cannot resolve by itself.
CLIENT_PACKAGES = ("skopeo", "netavark", "umoci", "python3", "openssl", "curl", "ca-certificates", "jq", "iproute2",
                   "procps")
FIXTURE_DEBS = ("docker-registry", "busybox-static")
# The caching front's nginx: an apt repository per architecture (APT_REPOS / ARCH) that the targets install from, as a
# host installs the package from its Debian mirror (the targets reach no mirror).
# With python3-apt, which Ansible's apt module needs (Debian and Ubuntu servers have it; the minimal images do not).
FRONT_DEBS = ("nginx", "nginx-common", "python3-apt", "python-apt-common", "distro-info-data")
# Architecture: all (apt-get download takes no :ARCH for them)
ARCH_ALL_DEBS = ("nginx-common", "python-apt-common", "distro-info-data")
APT_REPOS = CACHE / "apt"
TARGET_APT_REPO = "/opt/actuated-world-apt"


def env_vars() -> dict[str, str]:
    """The environment the tests read (``eval "$(python3 -m world env)"``)."""
    return {
        "WORLD_CACHE": str(CACHE),
        "WORLD_CA": str(CA_CERT),
        "WORLD_CERTS": str(CERTS),
        "WORLD_RELEASES_DIR": str(RELEASES),
        "WORLD_DEBS_DIR": str(DEBS),
        "WORLD_HUB_URL": HUB_URL,
        "WORLD_HUB_LOCAL_URL": HUB_LOCAL_URL,
        "WORLD_RELEASES_LOCAL": RELEASES_LOCAL,
        "WORLD_RELEASES_REMOTE": RELEASES_REMOTE,
        "WORLD_HUB_USERNAME": HUB_USERNAME,
        "WORLD_HUB_TOKEN": HUB_TOKEN,
        "WORLD_GHCR_URL": GHCR_URL,
        "WORLD_GHCR_LOCAL_URL": GHCR_LOCAL_URL,
        "WORLD_GHCR_USERNAME": GHCR_USERNAME,
        "WORLD_GHCR_TOKEN": GHCR_TOKEN,
    }
