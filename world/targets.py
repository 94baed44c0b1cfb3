# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Servers under test outside Molecule (``target up`` / ``target down``; the demo and the benchmark use them).

A target is made from Molecule's own platform (the ``platforms`` entry of .config/molecule/config.yml, the one
definition every scenario inherits) and prepared as molecule/shared/prepare.yml prepares it, so the two cannot drift:
a platform key this module does not know fails ``target up`` instead of being skipped.
"""

from __future__ import annotations

import importlib
import io
import re
import shlex
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import (
    APT_REPOS,
    ARCHES,
    CA_CERT,
    CERTS,
    LABEL_RECIPE,
    LABEL_TARGET,
    MOLECULE_CONFIG,
    TARGET_APT_REPO,
    WORLD_DIR,
)
from .util import WorldError, image_label, inspect, log, out, run, warn

TARGET_CA_PATH = "/usr/local/share/ca-certificates/actuated-world-ca.crt"  # the name molecule/shared/prepare.yml uses
TRUST_CA_SH = WORLD_DIR / "trust-ca.sh"  # update-ca-certificates for one certificate, fast under emulation
ACTUATED_CERTS_DIR = "/var/lib/actuated/certs"

# Platform keys a target made here takes from its caller instead: its name, its network and address; `groups` only
# places the host in Ansible's inventory.
REPLACED_KEYS = frozenset({"name", "networks", "groups"})

# Molecule's interpolation in its config files: $$, ${VAR}, ${VAR-default} (unset) and ${VAR:-default} (unset or empty).
_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\})")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """TEXT with Molecule's variables resolved from ENV (a missing variable without a default becomes '')."""
    def resolve(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name, operator, default = match.group(2), match.group(3), match.group(4) or ""
        value = env.get(name)
        if (operator == ":-" and not value) or (operator == "-" and value is None):
            return default
        return value or ""
    return _VARIABLE.sub(resolve, text)


def molecule_platform(arch: str) -> dict[str, Any]:
    """The platform of .config/molecule/config.yml as Molecule sees it with MOLECULE_ARCH=ARCH (other variables at
    their defaults)."""
    try:
        yaml = importlib.import_module("yaml")
    except ImportError as exc:
        raise WorldError("reading the Molecule platform needs PyYAML: use the project venv (`make venv`) "
                         "or `apt-get install python3-yaml`") from exc
    config = yaml.safe_load(interpolate(MOLECULE_CONFIG.read_text(encoding="utf-8"), {"MOLECULE_ARCH": arch}))
    platforms = (config or {}).get("platforms") or []
    if len(platforms) != 1 or not isinstance(platforms[0], dict):
        raise WorldError(f"{MOLECULE_CONFIG}: expected exactly one platform, found {len(platforms)}")
    return dict(platforms[0])


def run_options(platform: Mapping[str, Any]) -> tuple[list[str], str, list[str]]:
    """`docker run` options, image and command for a Molecule docker platform (name and network excluded): what
    molecule-plugins' docker driver asks community.docker.docker_container for."""
    options: list[str] = []
    image, command = "", []
    for key, value in platform.items():
        if key in REPLACED_KEYS:
            continue
        if key == "image":
            image = str(value)
        elif key == "platform":
            options += ["--platform", str(value)]
        elif key == "pre_build_image":
            if value is not True:
                raise WorldError(f"{MOLECULE_CONFIG}: targets use the world's image (pre_build_image: true)")
        elif key == "pull":
            if value is not False:
                raise WorldError(f"{MOLECULE_CONFIG}: nothing may be pulled here (pull: false)")
            options += ["--pull", "never"]
        elif key == "command":
            command = shlex.split(str(value))
        elif key in ("tmpfs", "volumes"):
            flag = "--tmpfs" if key == "tmpfs" else "-v"
            options += [arg for item in value for arg in (flag, str(item))]
        else:
            raise WorldError(f"{MOLECULE_CONFIG}: platform key {key!r} is unknown to world/targets.py: add what it "
                             "means for `docker run` to run_options(), so that `target up` keeps making targets as "
                             "Molecule does")
    if not image or not command:
        raise WorldError(f"{MOLECULE_CONFIG}: the platform needs an image and a command")
    return options, image, command


def target_run_args(arch: str) -> tuple[list[str], str, list[str]]:
    """run_options() of the Molecule platform for ARCH; the image must exist."""
    if arch not in ARCHES:
        raise WorldError(f"--arch must be one of {', '.join(ARCHES)} (got {arch})")
    options, image, command = run_options(molecule_platform(arch))
    if image_label(image, LABEL_RECIPE) is None:
        raise WorldError(f"image {image} is missing: run `python3 -m world up` (or `images`) first")
    return options, image, command


# The targets reach no Debian mirror: apt installs from the world's repository of their architecture (the caching
# front's nginx), as molecule/shared/prepare.yml sets it up.
TARGET_APT_SOURCES = f"deb [trusted=yes] file:{TARGET_APT_REPO} ./\n"


def target_tar(certs: Path, arch: str) -> bytes:
    """A tar stream (for `docker cp -`) with actuated's certificate directory, the test CA for the trust store, and
    the world's apt repository for ARCH as the only apt source."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        repo = APT_REPOS / arch
        if not (repo / "Packages").is_file():
            raise WorldError(f"{repo} is missing (`python3 -m world debs`)")
        tar.add(repo, arcname=TARGET_APT_REPO.lstrip("/"))
        sources = TARGET_APT_SOURCES.encode()
        info = tarfile.TarInfo("etc/apt/sources.list")
        info.size, info.mode, info.mtime = len(sources), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(sources))
        for path, mode in (("var/lib/actuated", 0o755), (ACTUATED_CERTS_DIR.lstrip("/"), 0o700)):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
            tar.addfile(info)
        files = [(f"{ACTUATED_CERTS_DIR.lstrip('/')}/{name}", certs / name, mode)
                 for name, mode in (("ca.crt", 0o644), ("server.crt", 0o644), ("server.key", 0o600))]
        files.append((TARGET_CA_PATH.lstrip("/"), CA_CERT, 0o644))
        for path, source, mode in files:
            if not source.is_file():
                raise WorldError(f"{source} is missing (`python3 -m world certs`, or "
                                 "`python3 -m world cert issue DIR`)")
            data = source.read_bytes()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wait_system_running(name: str, timeout: float) -> str:
    """Wait until systemd in a container has booted; return `running` or `degraded`."""
    start = time.monotonic()
    state = ""
    while time.monotonic() - start < timeout:
        proc = run(["docker", "exec", name, "timeout", str(max(1, int(timeout - (time.monotonic() - start)))),
                    "systemctl", "is-system-running", "--wait"], check=False, capture=True)
        state = proc.stdout.decode(errors="replace").strip()
        if state in ("running", "degraded"):
            return state
        info = inspect("container", name)
        if info is None or not info["State"].get("Running"):
            raise WorldError(f"target {name} stopped while booting (docker logs {name})")
        time.sleep(0.5)
    raise WorldError(f"target {name}: systemd is {state or 'not answering'!r} after {timeout:.0f}s")


def target_up(name: str, arch: str, network: str, ip: str, *, certs: Path = CERTS, timeout: float = 300) -> str:
    """Create (or replace) a systemd target container exactly as Molecule does and prepare it as an actuated host.

    The platform of .config/molecule/config.yml for ARCH (image actuated-world/target:ARCH, `--platform linux/ARCH`,
    `--pull never`, command /sbin/init, its tmpfs mounts, /sys/fs/cgroup read-only, never privileged), named NAME, on
    NETWORK with address IP. Waits until systemd says running/degraded, then copies ca.crt, server.crt and server.key
    (0600) from CERTS to /var/lib/actuated/certs (0700) and installs the test CA in the system trust store, as
    molecule/shared/prepare.yml does. Returns systemd's state. Replaces only a container that `target up` made
    (label org.actuated.world.target).
    """
    options, image, command = target_run_args(arch)
    if inspect("network", network) is None:
        raise WorldError(f"network {network} does not exist")
    payload = target_tar(certs, arch)
    start = time.monotonic()
    target_down(name, quiet=True)
    run(["docker", "run", "-d", "--name", name, "--hostname", name, "--label", f"{LABEL_TARGET}={arch}", *options,
         "--network", network, "--ip", ip, image, *command], quiet=True)
    try:
        state = wait_system_running(name, timeout)
        run(["docker", "cp", "-", f"{name}:/"], stdin=payload, quiet=True)
        run(["docker", "exec", "-i", name, "sh", "-s", "--", TARGET_CA_PATH], stdin=TRUST_CA_SH.read_bytes(),
            quiet=True)
        run(["docker", "exec", name, "apt-get", "update", "-q"], quiet=True)  # a server has its package lists
    except WorldError:
        failed = out(["docker", "exec", name, "systemctl", "--failed", "--no-legend", "--plain"], check=False)
        if failed:
            warn(f"target {name}: failed units: {failed}")
        raise
    log(f"target {name} ({arch}) up at {ip} on {network}: systemd {state}, certificates from {certs} "
        f"in {time.monotonic() - start:.1f}s")
    return state


def target_down(name: str, *, quiet: bool = False) -> bool:
    """Remove a target container made by target_up (absent: nothing to do). Returns whether one was removed."""
    info = inspect("container", name)
    if info is None:
        return False
    if LABEL_TARGET not in (info["Config"].get("Labels") or {}):
        raise WorldError(f"container {name} was not made by `python3 -m world target up`: not touching it")
    run(["docker", "rm", "-f", "-v", name], quiet=True)
    if not quiet:
        log(f"target {name} removed")
    return True
