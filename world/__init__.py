# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The offline test world of the actuated.registry collection.

Builds (and caches) everything the tests need on a machine without internet: base images made with debootstrap,
Debian's docker-registry packaged in the upstream release layout, a test CA and certificates, docker networks that
stand in for the actuated bridges, and the containers around the mirror under test (fake Docker Hub, a "VM" client,
an off-network client).

Run it as root from the repository root: ``python3 -m world up`` (``python3 -m world --help`` lists the commands).
Python code imports it as the package ``world`` (the repository root on sys.path: ``make venv`` puts it there for the
project venv) and finds the names other code uses here: ``from world import CACHE, HUB_USERNAME, target_up``.
Importing it has no side effects. One module per concern: config (constants), util, deps, images, releases, certs,
containers, hub, targets, selftest, cli.
"""

from .certs import issue_server_certs
from .cli import command, main
from .config import (APT_PACKAGES, ARCHES, AUTH_NAME, BROKEN_VERSION, CA_CERT, CA_KEY, CACHE, CERTS, CLIENT_IMAGE, CLIENT_PACKAGES,
                     CONTAINERS, DEBS, DOCKER_VM_CONTAINER, DOCKERD_PIDFILE, GHCR_CONTAINER, GHCR_LOCAL_URL, GHCR_NAME, GHCR_TOKEN,
                     GHCR_URL, GHCR_USERNAME, FIXTURE_DEBS, FLEET_EDGES, FLEET_TIERS, HUB_CONTAINER, HUB_DIR, HUB_IPS, HUB_LOCAL_PORT,
                     HUB_LOCAL_URL, HUB_NAME, HUB_READY_URL, HUB_SANS, HUB_STATE, HUB_TOKEN, HUB_URL, HUB_USERNAME, LABEL_CONFIG,
                     LABEL_RECIPE, LABEL_TARGET, LOGS, MOLECULE_CONFIG, NET_BR128, NET_BR129, NET_OFFNET, NET_SITE_A,
                     NET_SITE_B, NETWORKS,
                     OFFNET_CONTAINER, OFFNET_IP, PATCHED_VERSION, REGISTRY_VERSION, RELEASE_VERSIONS, RELEASES, RELEASES_LOCAL,
                     RELEASES_LOCAL_PORT, RELEASES_REMOTE, REPO, ROOTFS_CACHE, SERVER_SANS, SOURCE_VERSION, SUITE, TAMPERED_VERSION,
                     TARGET_IMAGE, TARGET_IPS, TARGET_PACKAGES, UNAME, VM_CONTAINER, VM_IPS, WORLD_DIR, env_vars)
from .containers import CA_TRUST_CMD, wait_ca_trusted
from .releases import release_name, release_path
from .targets import target_down, target_up
from .util import WorldError, file_lock, image_id, image_label, inspect, log, warn

__all__ = [
    "APT_PACKAGES", "ARCHES", "AUTH_NAME", "BROKEN_VERSION", "CACHE", "CA_CERT", "CA_KEY", "CA_TRUST_CMD", "CERTS", "CLIENT_IMAGE",
    "CLIENT_PACKAGES", "CONTAINERS", "DEBS", "DOCKER_VM_CONTAINER", "DOCKERD_PIDFILE", "GHCR_CONTAINER", "GHCR_LOCAL_URL",
    "GHCR_NAME", "GHCR_TOKEN", "GHCR_URL", "GHCR_USERNAME", "FIXTURE_DEBS", "FLEET_EDGES", "FLEET_TIERS", "HUB_CONTAINER", "HUB_DIR", "HUB_IPS",
    "HUB_LOCAL_PORT", "HUB_LOCAL_URL", "HUB_NAME", "HUB_READY_URL", "HUB_SANS", "HUB_STATE", "HUB_TOKEN", "HUB_URL",
    "HUB_USERNAME", "LABEL_CONFIG", "LABEL_RECIPE", "LABEL_TARGET", "LOGS", "MOLECULE_CONFIG", "NETWORKS",
    "NET_BR128", "NET_BR129", "NET_OFFNET", "NET_SITE_A", "NET_SITE_B", "OFFNET_CONTAINER", "OFFNET_IP", "PATCHED_VERSION", "REGISTRY_VERSION",
    "RELEASES", "RELEASES_LOCAL", "RELEASES_LOCAL_PORT", "RELEASES_REMOTE", "RELEASE_VERSIONS", "REPO",
    "ROOTFS_CACHE", "SERVER_SANS", "SOURCE_VERSION", "SUITE", "TAMPERED_VERSION", "TARGET_IMAGE", "TARGET_IPS", "TARGET_PACKAGES",
    "UNAME", "VM_CONTAINER", "VM_IPS", "WORLD_DIR", "WorldError", "command", "env_vars", "file_lock", "image_id",
    "image_label", "inspect", "issue_server_certs", "log", "main", "release_name", "release_path", "target_down",
    "target_up", "wait_ca_trusted", "warn",
]
