# Copyright (c) actuated.registry contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The offline test world of the actuated.registry collection.

Builds (and caches) everything the tests need on a machine without internet: base images made with debootstrap,
Debian's docker-registry packaged in the upstream release layout, a test CA and certificates, docker networks that
stand in for the actuated bridges, and the containers around the mirror under test (fake Docker Hub, a "VM" client,
an off-network client).

Run it as root with the system interpreter: ``python3 world/world.py up``. ``python3 world/world.py --help`` lists
the commands. Importing it (``from world import CACHE, HUB_USERNAME``) has no side effects.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import fcntl
import glob
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request

from pathlib import Path
from typing import Iterator, Sequence

# --------------------------------------------------------------------------------------------------------------------
# Public constants (importable; keep this block free of side effects)
# --------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
WORLD_DIR = REPO / "world"
HUB_DIR = WORLD_DIR / "hub"

CACHE = Path(os.environ.get("WORLD_CACHE", "/var/cache/actuated-world"))
CERTS = CACHE / "certs"
CA_CERT = CERTS / "ca.crt"
CA_KEY = CERTS / "ca.key"
RELEASES = CACHE / "releases"
DEBS = CACHE / "debs"
HUB_STATE = CACHE / "hub"
ROOTFS_CACHE = CACHE / "rootfs"
LOGS = CACHE / "logs"
DOCKERD_PIDFILE = CACHE / "dockerd.pid"

SUITE = "bookworm"

# The test Docker Hub account: fake, test-only values (the fake hub accepts exactly these).
HUB_USERNAME = "actuated-ci"
HUB_TOKEN = "dckr_pat_WORLD-test-token-7c1e9a52"

HUB_NAME = "hub.actuated.test"
HUB_URL = f"https://{HUB_NAME}"
HUB_LOCAL_PORT = 15443
RELEASES_LOCAL_PORT = 18080
HUB_LOCAL_URL = f"https://127.0.0.1:{HUB_LOCAL_PORT}"
HUB_READY_URL = f"{HUB_LOCAL_URL}/_world/ready"
RELEASES_LOCAL = f"http://127.0.0.1:{RELEASES_LOCAL_PORT}"
RELEASES_REMOTE = f"http://{HUB_NAME}:8080"

# Docker networks standing in for the actuated bridges (firecracker: br128, cloud-hypervisor: br129) and a network
# that has no route to either of them.
NET_BR128 = "actuated-br128"
NET_BR129 = "actuated-br129"
NET_OFFNET = "actuated-offnet"
NETWORKS: dict[str, tuple[str, str]] = {
    NET_BR128: ("192.168.128.0/24", "192.168.128.254"),
    NET_BR129: ("192.168.129.0/24", "192.168.129.254"),
    NET_OFFNET: ("192.168.200.0/24", "192.168.200.254"),
}
# Where Molecule puts the server under test (the actuated bridge address); the world never creates it.
TARGET_IPS = {NET_BR128: "192.168.128.1", NET_BR129: "192.168.129.1"}
HUB_IPS = {NET_BR128: "192.168.128.100", NET_BR129: "192.168.129.100"}
VM_IPS = {NET_BR128: "192.168.128.2", NET_BR129: "192.168.129.2"}
OFFNET_IP = "192.168.200.2"

HUB_CONTAINER = "world-hub"
VM_CONTAINER = "world-vm"
OFFNET_CONTAINER = "world-offnet"
CONTAINERS = (HUB_CONTAINER, VM_CONTAINER, OFFNET_CONTAINER)

TARGET_IMAGE = "actuated-world/target:{arch}"
CLIENT_IMAGE = "actuated-world/client:amd64"
ARCHES = ("amd64", "arm64")
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}

# Release fixtures (upstream layout: v{V}/registry_{V}_linux_{ARCH}.tar.gz and .sha256 with the bare digest).
REGISTRY_VERSION = "2.8.2"  # Debian's docker-registry, repackaged
PATCHED_VERSION = "2.8.3"  # the same binary with its version string patched: a test fixture, not upstream 2.8.3
TAMPERED_VERSION = "9.9.8"  # .sha256 does not match the tarball
BROKEN_VERSION = "9.9.9"  # correct .sha256, but the tarball has no `registry` member
RELEASE_VERSIONS = (REGISTRY_VERSION, PATCHED_VERSION, TAMPERED_VERSION, BROKEN_VERSION)

SERVER_SANS = ("IP:192.168.128.1", "IP:192.168.129.1", "DNS:localhost", "IP:127.0.0.1")
HUB_SANS = (f"DNS:{HUB_NAME}", "IP:192.168.128.100", "IP:192.168.129.100", "IP:127.0.0.1", "DNS:localhost")

LABEL_RECIPE = "org.actuated.world.recipe"
LABEL_CONFIG = "org.actuated.world.config"
LABEL_TARGET = "org.actuated.world.target"  # on containers made by `world.py target up` (value: the architecture)

APT_PACKAGES = (
    "docker.io", "skopeo", "umoci", "debootstrap", "qemu-user-static", "binfmt-support", "openssl",
    "debian-archive-keyring", "gpgv",
)
TARGET_PACKAGES = ("systemd", "systemd-sysv", "python3", "sudo", "ca-certificates", "curl", "iproute2", "openssl")
# netavark: skopeo needs the virtual package container-network-stack, which debootstrap cannot resolve by itself.
CLIENT_PACKAGES = ("skopeo", "netavark", "umoci", "python3", "openssl", "curl", "ca-certificates", "jq", "iproute2", "procps")
FIXTURE_DEBS = ("docker-registry", "busybox-static")


def env_vars() -> dict[str, str]:
    """The environment the tests read (``eval "$(python3 world/world.py env)"``)."""
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
    }


# --------------------------------------------------------------------------------------------------------------------
# Small helpers: logging, commands, hashing
# --------------------------------------------------------------------------------------------------------------------

_T0 = time.monotonic()
_LOG_LOCK = threading.Lock()


class WorldError(Exception):
    """A failure with a message meant for a person."""


def log(msg: str) -> None:
    """Print a progress line (stderr, so stdout stays clean for ``env``)."""
    with _LOG_LOCK:
        print(f"[world {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """Print a warning line."""
    log(f"WARNING: {msg}")


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log the start and the duration of a step."""
    start = time.monotonic()
    log(f"{name} ...")
    yield
    log(f"{name}: done in {time.monotonic() - start:.1f}s")


def run(cmd: Sequence[str], *, check: bool = True, capture: bool = False, quiet: bool = False,
        stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path | None = None,
        logfile: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command; raise WorldError (with its output) when it fails and check is set."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    if shutil.which(cmd[0]) is None:
        raise WorldError(f"{cmd[0]} not found: run `python3 world/world.py deps` first")
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with logfile.open("ab") as handle:
            handle.write(f"$ {shlex.join(cmd)}\n".encode())
            handle.flush()
            proc = subprocess.run(list(cmd), check=False, stdout=handle, stderr=subprocess.STDOUT, input=stdin,
                                  env=full_env, cwd=cwd)
    else:
        want_output = capture or quiet
        proc = subprocess.run(list(cmd), check=False, input=stdin, env=full_env, cwd=cwd,
                              stdout=subprocess.PIPE if want_output else None,
                              stderr=subprocess.PIPE if want_output else None)
    if check and proc.returncode != 0:
        detail = ""
        if logfile is not None:
            detail = "\n" + tail(logfile, 30)
        elif proc.stderr or proc.stdout:
            detail = "\n" + ((proc.stdout or b"") + (proc.stderr or b"")).decode(errors="replace")[-3000:]
        raise WorldError(f"command failed (rc={proc.returncode}): {shlex.join(cmd)}{detail}")
    return proc


def out(cmd: Sequence[str], *, check: bool = True) -> str:
    """Run a command and return its stripped stdout."""
    return run(cmd, check=check, capture=True).stdout.decode(errors="replace").strip()


def ok(cmd: Sequence[str]) -> bool:
    """Whether a command succeeds (its output is discarded; a missing program is a failure)."""
    try:
        return subprocess.run(list(cmd), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False


def tail(path: Path, lines: int) -> str:
    """The last lines of a text file."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def recipe_hash(recipe: object) -> str:
    """A short stable hash of a JSON-able recipe."""
    return sha256_bytes(json.dumps(recipe, sort_keys=True).encode())[:16]


def tree_hash(root: Path) -> str:
    """Hash of every file (path and content) under a directory; empty string when it does not exist."""
    if not root.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file atomically (same directory, then rename) with a mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a binary file atomically with a mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def read_text(path: Path) -> str:
    """Read a text file, or '' when it is missing."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


@contextlib.contextmanager
def file_lock(path: Path, holder: str) -> Iterator[None]:
    """An exclusive flock on PATH for the block; says that it waits when HOLDER (what else holds it) is running."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {holder} ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def world_lock() -> contextlib.AbstractContextManager[None]:
    """Serialise commands that change the world (two `up`s at once would fight)."""
    return file_lock(CACHE / ".lock", "another world.py")


# --------------------------------------------------------------------------------------------------------------------
# deps: apt packages, dockerd, binfmt
# --------------------------------------------------------------------------------------------------------------------

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def dpkg_installed(package: str) -> bool:
    """Whether a Debian package is installed."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], check=False, capture_output=True)
    return proc.returncode == 0 and proc.stdout.decode().endswith("install ok installed")


def docker_ready() -> bool:
    """Whether the docker daemon answers."""
    return ok(["docker", "info"])


def pid_alive(pid: int, name: str) -> bool:
    """Whether a process with that pid runs and its command name is `name`."""
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip() == name
    except OSError:
        return False


def record_dockerd_pid(pid: int) -> None:
    """Remember that this tool started dockerd (so stop-deps stops only what we started)."""
    write_text(DOCKERD_PIDFILE, f"{pid}\n")


def start_dockerd() -> None:
    """Start dockerd in the background and wait until it answers."""
    LOGS.mkdir(parents=True, exist_ok=True)
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    with (LOGS / "dockerd.log").open("ab") as logf:
        proc = subprocess.Popen([dockerd], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                                start_new_session=True)
    record_dockerd_pid(proc.pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if docker_ready():
            log(f"dockerd started (pid {proc.pid}, log {LOGS / 'dockerd.log'})")
            return
        if proc.poll() is not None:
            DOCKERD_PIDFILE.unlink(missing_ok=True)
            raise WorldError(f"dockerd exited with {proc.returncode}:\n{tail(LOGS / 'dockerd.log', 20)}")
        time.sleep(0.5)
    raise WorldError(f"dockerd did not become ready in 60s:\n{tail(LOGS / 'dockerd.log', 20)}")


def ensure_binfmt() -> None:
    """Make arm64 binaries run under qemu-user (binfmt_misc + qemu-aarch64 enabled)."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
        log("mounted binfmt_misc")
    if binfmt_state() != "enabled":
        run(["update-binfmts", "--enable", "qemu-aarch64"], quiet=True)
        log("enabled binfmt qemu-aarch64")
    if binfmt_state() != "enabled":
        raise WorldError("binfmt qemu-aarch64 is not enabled: arm64 images cannot run")


def binfmt_state() -> str:
    """'enabled', 'disabled' or 'missing' for the qemu-aarch64 binfmt entry."""
    lines = read_text(Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")).splitlines()
    return lines[0] if lines else "missing"


def cmd_deps() -> None:
    """Install and start what the world needs (idempotent)."""
    with step("deps"):
        missing = [pkg for pkg in APT_PACKAGES if not dpkg_installed(pkg)]
        if missing:
            log(f"installing {' '.join(missing)}")
            run(["apt-get", "update", "-q"], env=APT_ENV, logfile=LOGS / "apt.log")
            run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=APT_ENV,
                logfile=LOGS / "apt.log")
            # On a machine without systemd, docker.io's postinst may start dockerd through its init script:
            # that one is ours too.
            docker_pid = read_text(Path("/var/run/docker.pid"))
            if "docker.io" in missing and docker_pid.isdigit() and pid_alive(int(docker_pid), "dockerd"):
                record_dockerd_pid(int(docker_pid))
                log(f"dockerd was started by the docker.io package (pid {docker_pid}); recorded as ours")
        if not docker_ready():
            start_dockerd()
        ensure_binfmt()


def cmd_stop_deps() -> None:
    """Stop dockerd if (and only if) this tool started it."""
    pid_text = read_text(DOCKERD_PIDFILE)
    if not pid_text.isdigit():
        log("dockerd was not started by world.py: leaving it alone")
        return
    pid = int(pid_text)
    if not pid_alive(pid, "dockerd"):
        log(f"dockerd (pid {pid}) is not running any more")
        DOCKERD_PIDFILE.unlink(missing_ok=True)
        return
    with step(f"stopping dockerd (pid {pid})"):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while pid_alive(pid, "dockerd") and time.monotonic() < deadline:
            time.sleep(0.5)
        if pid_alive(pid, "dockerd"):
            warn("dockerd ignored SIGTERM for 60s: sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
        DOCKERD_PIDFILE.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------------
# images: debootstrap rootfs -> docker images
# --------------------------------------------------------------------------------------------------------------------

# Applied on the host to a fresh debootstrap tree: $1 = rootfs, $2 = 1 for a systemd image.
CUSTOMIZE_SH = r"""
set -eu
root=$1
systemd=$2
# Empty machine-id: systemd makes a transient one at boot (each container gets its own).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# debootstrap copies the host's files; docker bind-mounts its own over these.
rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
: > "$root/etc/resolv.conf"
echo localhost > "$root/etc/hostname"
# Docker provides /dev; downloaded packages and indexes are useless offline.
rm -rf "$root"/dev/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
mkdir -p "$root/var/lib/apt/lists/partial"
rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root/var/log/bootstrap.log"
if [ "$systemd" = 1 ]; then
    # Under qemu-user emulation (arm64) units using systemd credentials fail with 243/CREDENTIALS.
    # An empty LoadCredential= drops them; harmless on amd64, so both arches get it.
    for unit in systemd-sysusers systemd-tmpfiles-setup systemd-tmpfiles-setup-dev; do
        mkdir -p "$root/etc/systemd/system/$unit.service.d"
        printf '[Service]\nLoadCredential=\n' > "$root/etc/systemd/system/$unit.service.d/world-no-credentials.conf"
    done
    # Nothing logs in on a console in a container; nothing needs these either.
    for unit in getty.target console-getty.service getty@.service serial-getty@.service \
                systemd-remount-fs.service systemd-firstboot.service sys-kernel-config.mount \
                sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
                systemd-update-utmp-runlevel.service e2scrub_all.timer e2scrub_reap.service \
                apt-daily.timer apt-daily-upgrade.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
fi
"""

DOCKERFILE_TARGET = """FROM scratch
ADD rootfs.tar /
ENV container=docker PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL {label}="{recipe}"
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""

DOCKERFILE_CLIENT = """FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL {label}="{recipe}"
CMD ["sleep", "infinity"]
"""


@dataclasses.dataclass(frozen=True)
class ImageRecipe:
    """One debootstrap-built image."""

    key: str
    ref: str
    arch: str
    packages: tuple[str, ...]
    systemd: bool

    @property
    def platform(self) -> str:
        """Docker platform string."""
        return f"linux/{self.arch}"

    def dockerfile(self, recipe: str) -> str:
        """The Dockerfile (recipe label filled in)."""
        template = DOCKERFILE_TARGET if self.systemd else DOCKERFILE_CLIENT
        return template.format(label=LABEL_RECIPE, recipe=recipe)

    def recipe(self) -> str:
        """Hash of everything that shapes the image (not the mirror it was fetched from)."""
        return recipe_hash({
            "suite": SUITE, "variant": "minbase", "arch": self.arch, "packages": sorted(self.packages),
            "systemd": self.systemd, "customize": CUSTOMIZE_SH, "dockerfile": self.dockerfile(""),
        })


IMAGES = (
    ImageRecipe("target-amd64", TARGET_IMAGE.format(arch="amd64"), "amd64", TARGET_PACKAGES, True),
    ImageRecipe("client-amd64", CLIENT_IMAGE, "amd64", CLIENT_PACKAGES, False),
    ImageRecipe("target-arm64", TARGET_IMAGE.format(arch="arm64"), "arm64", TARGET_PACKAGES, True),
)


def parse_deb822_uris(text: str) -> list[str]:
    """URIs of deb822 stanzas (apt .sources) that carry the main Debian suite."""
    uris: list[str] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            uris.extend(fields.get("uris", "").split())
    return uris


def apt_mirror() -> str:
    """The Debian mirror apt already uses (deb822 .sources first, then sources.list)."""
    for source in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        uris = parse_deb822_uris(Path(source).read_text(encoding="utf-8"))
        if uris:
            return uris[0]
    for source in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        for line in read_text(Path(source)).splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            rest = line[4:].strip()
            if rest.startswith("["):
                rest = rest.split("]", 1)[1]
            words = rest.split()
            if len(words) >= 2 and words[1] == SUITE:
                return words[0]
    raise WorldError(f"no '{SUITE}' mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")


def image_label(ref: str, label: str) -> str | None:
    """A label of a local image, or None when the image is missing."""
    if shutil.which("docker") is None:
        return None
    proc = subprocess.run(["docker", "image", "inspect", ref], check=False, capture_output=True)
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout)[0]["Config"].get("Labels") or {}
    return str(labels.get(label, ""))


def image_id(ref: str) -> str:
    """The id of a local image ('' when missing)."""
    return out(["docker", "image", "inspect", "-f", "{{.Id}}", ref], check=False)


def debootstrap_recipe(img: ImageRecipe) -> str:
    """Hash of what debootstrap alone produces (customisations can change without a new debootstrap)."""
    return recipe_hash({"suite": SUITE, "variant": "minbase", "arch": img.arch, "packages": sorted(img.packages)})


def debootstrap(img: ImageRecipe, mirror: str) -> Path:
    """A pristine debootstrap tree as a tarball (cached by its own recipe)."""
    tarball = ROOTFS_CACHE / f"{img.key}-debootstrap.tar"
    stamp = ROOTFS_CACHE / f"{img.key}-debootstrap.recipe"
    recipe = debootstrap_recipe(img)
    if tarball.exists() and read_text(stamp) == recipe:
        log(f"{img.key}: cached debootstrap tree {tarball.name}")
        return tarball
    work = CACHE / "build" / f"{img.key}-debootstrap"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    debcache = CACHE / "debootstrap-cache" / img.arch
    debcache.mkdir(parents=True, exist_ok=True)
    logfile = LOGS / f"{img.key}-debootstrap.log"
    logfile.unlink(missing_ok=True)
    start = time.monotonic()
    log(f"{img.key}: debootstrap {SUITE} {img.arch} from {mirror} (log {logfile})")
    run(["debootstrap", "--variant=minbase", f"--arch={img.arch}", f"--include={','.join(img.packages)}",
         f"--cache-dir={debcache}", SUITE, str(work), mirror], logfile=logfile)
    log(f"{img.key}: debootstrap done in {time.monotonic() - start:.1f}s")
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = tarball.with_name(tarball.name + ".tmp")
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(work), "-cf", str(tmp), "."], logfile=logfile)
    tmp.replace(tarball)
    write_text(stamp, recipe + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return tarball


def build_rootfs(img: ImageRecipe, recipe: str, mirror: str) -> Path:
    """The customised rootfs tarball of an image (cached by the image recipe)."""
    tarball = ROOTFS_CACHE / f"{img.key}.tar"
    stamp = ROOTFS_CACHE / f"{img.key}.recipe"
    if tarball.exists() and read_text(stamp) == recipe:
        log(f"{img.key}: cached rootfs {tarball.name}")
        return tarball
    pristine = debootstrap(img, mirror)
    root = CACHE / "build" / f"{img.key}-rootfs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    logfile = LOGS / f"{img.key}-customize.log"
    logfile.unlink(missing_ok=True)
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-xf", str(pristine)], logfile=logfile)
    run(["sh", "-s", "--", str(root), "1" if img.systemd else "0"], stdin=CUSTOMIZE_SH.encode(), logfile=logfile)
    tmp = tarball.with_name(tarball.name + ".tmp")
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(tmp), "."], logfile=logfile)
    tmp.replace(tarball)
    write_text(stamp, recipe + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return tarball


def build_image(img: ImageRecipe, mirror: str) -> None:
    """Build one image unless an image with the same recipe label exists; verify its architecture."""
    recipe = img.recipe()
    if image_label(img.ref, LABEL_RECIPE) == recipe:
        log(f"{img.key}: {img.ref} is up to date (recipe {recipe})")
        return
    start = time.monotonic()
    tarball = build_rootfs(img, recipe, mirror)
    old_id = image_id(img.ref)
    ctx = CACHE / "build" / f"{img.key}-ctx"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    os.link(tarball, ctx / "rootfs.tar")
    write_text(ctx / "Dockerfile", img.dockerfile(recipe))
    log(f"{img.key}: docker build {img.ref}")
    run(["docker", "build", "--platform", img.platform, "-t", img.ref, str(ctx)], env={"DOCKER_BUILDKIT": "0"},
        logfile=LOGS / f"{img.key}-build.log")
    shutil.rmtree(ctx, ignore_errors=True)
    verify_image(img)
    new_id = image_id(img.ref)
    if old_id and old_id != new_id:
        ok(["docker", "image", "rm", old_id])  # the previous recipe's image, if nothing uses it
    log(f"{img.key}: built {img.ref} (recipe {recipe}) in {time.monotonic() - start:.1f}s")


def verify_image(img: ImageRecipe) -> None:
    """The image must be labelled with, and really run as, its architecture."""
    arch = out(["docker", "image", "inspect", "-f", "{{.Architecture}}", img.ref])
    machine = out(["docker", "run", "--rm", "--pull", "never", "--platform", img.platform, "--network", "none",
                   "--entrypoint", "uname", img.ref, "-m"])
    if arch != img.arch or machine != UNAME[img.arch]:
        raise WorldError(f"{img.ref}: image architecture {arch!r}, uname -m {machine!r}; expected {img.arch}")
    log(f"{img.key}: verified architecture {arch}, uname -m {machine}")


def cmd_images() -> None:
    """Build the three images (amd64 ones sequentially, arm64 alongside)."""
    with step("images"):
        todo = [img for img in IMAGES if image_label(img.ref, LABEL_RECIPE) != img.recipe()]
        if not todo:
            for img in IMAGES:
                log(f"{img.key}: {img.ref} is up to date (recipe {img.recipe()})")
            return
        mirror = apt_mirror()
        groups = [[img for img in todo if img.arch == arch] for arch in ARCHES]
        groups = [group for group in groups if group]

        def build_group(group: list[ImageRecipe]) -> None:
            for img in group:
                build_image(img, mirror)

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(build_group, group) for group in groups]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise WorldError("; ".join(str(e) for e in errors))


# --------------------------------------------------------------------------------------------------------------------
# debs: the real Debian packages the fixtures are made from
# --------------------------------------------------------------------------------------------------------------------


def deb_path(package: str, arch: str) -> Path | None:
    """The cached .deb of a package for an architecture."""
    found = sorted(DEBS.glob(f"{package}_*_{arch}.deb"))
    return found[-1] if found else None


def cmd_debs() -> None:
    """apt-get download docker-registry and busybox-static for amd64 and arm64 (only what is missing)."""
    with step("debs"):
        missing = [(pkg, arch) for pkg in FIXTURE_DEBS for arch in ARCHES if deb_path(pkg, arch) is None]
        if not missing:
            log(f"debs cached in {DEBS}")
            return
        DEBS.mkdir(parents=True, exist_ok=True)
        foreign = {pair[1] for pair in missing} - {out(["dpkg", "--print-architecture"])}
        added = [a for a in sorted(foreign) if a not in out(["dpkg", "--print-foreign-architectures"]).split()]
        try:
            for arch in added:
                run(["dpkg", "--add-architecture", arch])
            run(["apt-get", "update", "-q"], env=APT_ENV, logfile=LOGS / "apt.log")
            with tempfile.TemporaryDirectory(dir=DEBS) as tmp:
                os.chmod(tmp, 0o755)
                names = [f"{pkg}:{arch}" for pkg, arch in missing]
                log(f"apt-get download {' '.join(names)}")
                run(["apt-get", "download", "-q", *names], env=APT_ENV, cwd=Path(tmp), logfile=LOGS / "apt.log")
                for deb in Path(tmp).glob("*.deb"):
                    deb.chmod(0o644)
                    deb.replace(DEBS / re.sub(r"_[0-9]+%3a", "_", deb.name))  # pool-style name: no epoch
        finally:
            if added:
                for arch in added:
                    run(["dpkg", "--remove-architecture", arch], check=False)
                run(["apt-get", "update", "-q"], env=APT_ENV, logfile=LOGS / "apt.log", check=False)
        still = [f"{pkg}:{arch}" for pkg, arch in missing if deb_path(pkg, arch) is None]
        if still:
            raise WorldError(f"could not download {' '.join(still)}")
        for deb in sorted(DEBS.glob("*.deb")):
            log(f"  {deb.name}")


# --------------------------------------------------------------------------------------------------------------------
# releases: upstream-layout release fixtures made from the Debian binaries
# --------------------------------------------------------------------------------------------------------------------

FIXTURE_MTIME = 1696204800  # 2023-10-02: fixed, so that the tarballs (and their digests) are reproducible
DEBIAN_VERSION_STRING = b"2.8.2+ds1"

README_TEMPLATE = """# distribution registry {version} for linux/{arch} (actuated-world TEST FIXTURE)

This archive imitates the layout of the upstream release
`registry_{version}_linux_{arch}.tar.gz` of https://github.com/distribution/distribution
(`registry`, `README.md`, `LICENSE` at the archive root).

It is NOT an upstream release. The `registry` binary is Debian's `docker-registry` package
{deb} (distribution 2.8.2), because that is the only build available offline.
{note}
Made by world/world.py of the actuated.registry collection for its tests only.
"""

NOTES = {
    REGISTRY_VERSION: "The binary is unmodified.\n",
    PATCHED_VERSION: "Its embedded version string was patched from 2.8.2+ds1 to 2.8.3+ds1 so that upgrade and\n"
                     "downgrade tests have a second version. The code is still 2.8.2.\n",
    TAMPERED_VERSION: "Negative fixture: the published .sha256 does NOT match this archive (tampered download).\n",
    BROKEN_VERSION: "Negative fixture: this archive has no `registry` member.\n",
}


def extract_deb(deb: Path, dest: Path) -> None:
    """dpkg-deb -x."""
    run(["dpkg-deb", "-x", str(deb), str(dest)])


def patch_version(binary: bytes, version: str) -> bytes:
    """Replace Debian's embedded version string with another one of the same length."""
    new = f"{version}+ds1".encode()
    if len(new) != len(DEBIAN_VERSION_STRING):
        raise WorldError(f"version {version} does not fit in place of {DEBIAN_VERSION_STRING.decode()}")
    count = binary.count(DEBIAN_VERSION_STRING)
    if count == 0:
        raise WorldError(f"{DEBIAN_VERSION_STRING.decode()} not found in the docker-registry binary")
    return binary.replace(DEBIAN_VERSION_STRING, new)


def make_tarball(members: list[tuple[str, bytes, int]]) -> bytes:
    """A reproducible .tar.gz: sorted members, fixed mtime and owner, gzip header without name or time."""
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data, mode in sorted(members):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = mode
                info.mtime = FIXTURE_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def release_name(version: str, arch: str) -> str:
    """Upstream asset name."""
    return f"registry_{version}_linux_{arch}.tar.gz"


def release_path(version: str, arch: str) -> Path:
    """Where a release fixture lives under WORLD_CACHE/releases."""
    return RELEASES / f"v{version}" / release_name(version, arch)


def check_binary_version(binary: Path, arch: str, expected: str) -> None:
    """Run `registry --version` (amd64 natively, arm64 in the arm64 target image under qemu)."""
    if arch == "amd64":
        text = out([str(binary), "--version"])
    else:
        ref = TARGET_IMAGE.format(arch=arch)
        if image_label(ref, LABEL_RECIPE) is None:
            warn(f"{ref} missing: cannot run the {arch} binary to check its version")
            return
        text = out(["docker", "run", "--rm", "--pull", "never", "--platform", f"linux/{arch}", "--network", "none",
                    "-v", f"{binary}:/registry:ro", "--entrypoint", "/registry", ref, "--version"])
    if f" {expected}+ds1" not in f" {text}":
        raise WorldError(f"{binary} --version printed {text!r}, expected {expected}+ds1")
    log(f"  {arch} registry --version: {text}")


def cmd_releases() -> None:
    """Build the release fixtures in the upstream layout."""
    with step("releases"):
        debs: dict[str, Path] = {}
        for arch in ARCHES:
            deb = deb_path("docker-registry", arch)
            if deb is None:
                raise WorldError(f"docker-registry {arch} .deb missing: run `python3 world/world.py debs` first")
            debs[arch] = deb
        recipe = recipe_hash({
            "debs": {arch: sha256_file(deb) for arch, deb in debs.items()}, "readme": README_TEMPLATE, "notes": NOTES,
            "mtime": FIXTURE_MTIME, "versions": RELEASE_VERSIONS, "layout": 2,
        })
        stamp = RELEASES / ".recipe"
        expected = [release_path(v, a) for v in RELEASE_VERSIONS for a in ARCHES]
        if read_text(stamp) == recipe and all(p.exists() and p.with_name(p.name + ".sha256").exists() for p in expected):
            log(f"release fixtures cached in {RELEASES} (recipe {recipe})")
            return
        RELEASES.mkdir(parents=True, exist_ok=True)
        # Rebuild in place: the directory itself is bind-mounted into the hub container.
        for child in RELEASES.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        with tempfile.TemporaryDirectory() as tmp:
            for arch, deb in debs.items():
                tree = Path(tmp) / arch
                extract_deb(deb, tree)
                binary = (tree / "usr/bin/docker-registry").read_bytes()
                license_text = (tree / "usr/share/doc/docker-registry/copyright").read_bytes()
                for version in RELEASE_VERSIONS:
                    build_release(version, arch, deb.name, binary, license_text, Path(tmp))
        write_text(stamp, recipe + "\n")
        for path in expected:
            log(f"  {path.relative_to(RELEASES)}  sha256 {read_text(path.with_name(path.name + '.sha256'))[:16]}...")


def build_release(version: str, arch: str, deb_name: str, binary: bytes, license_text: bytes, tmp: Path) -> None:
    """One release fixture (tarball + .sha256) for a version and architecture."""
    readme = README_TEMPLATE.format(version=version, arch=arch, deb=deb_name, note=NOTES[version]).encode()
    members = [("README.md", readme, 0o644), ("LICENSE", license_text, 0o644)]
    if version != BROKEN_VERSION:
        patched = binary if version == REGISTRY_VERSION else patch_version(binary, version)
        if version == PATCHED_VERSION:
            check_path = tmp / f"registry-{version}-{arch}"
            write_bytes(check_path, patched, 0o755)
            check_binary_version(check_path, arch, version)
        members.append(("registry", patched, 0o755))
    data = make_tarball(members)
    path = release_path(version, arch)
    write_bytes(path, data)
    digest = sha256_bytes(data)
    if version == TAMPERED_VERSION:
        digest = sha256_bytes(data + b"tampered")  # what the "publisher" announced; the download differs
    write_text(path.with_name(path.name + ".sha256"), digest + "\n")


# --------------------------------------------------------------------------------------------------------------------
# certs: a test CA, the actuated server certificate and the hub certificate
# --------------------------------------------------------------------------------------------------------------------

CA_SUBJECT = "actuated-world test CA"
CERT_RECIPE = {"ca": CA_SUBJECT, "key": "rsa2048", "server": SERVER_SANS, "hub": HUB_SANS, "layout": 1}

CA_CONFIG = """[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

LEAF_CONFIG = """[ca]
default_ca = world_ca
[world_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
certificate = {ca_crt}
private_key = {ca_key}
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
[policy_any]
commonName = supplied
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
subjectAltName = {sans}
"""


def new_key(path: Path) -> None:
    """A fresh RSA 2048 private key (PKCS#8 PEM, mode 0600)."""
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)], quiet=True)
    path.chmod(0o600)


def openssl_time(moment: datetime.datetime) -> str:
    """GeneralizedTime for openssl ca -startdate/-enddate."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def issue_cert(key: Path, crt: Path, cn: str, sans: Sequence[str], *, days: int = 90, expired: bool = False) -> None:
    """Sign a server certificate for `key` with the test CA (openssl ca, so the validity window can be set)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        start, end = now - datetime.timedelta(days=days + 1), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "index.txt").write_text("", encoding="utf-8")
        (work / "serial").write_text(os.urandom(16).hex().upper() + "\n", encoding="utf-8")
        config = work / "openssl.cnf"
        config.write_text(LEAF_CONFIG.format(dir=work, ca_crt=CA_CERT, ca_key=CA_KEY, cn=cn, sans=",".join(sans)),
                          encoding="utf-8")
        csr = work / "leaf.csr"
        run(["openssl", "req", "-new", "-config", str(config), "-key", str(key), "-out", str(csr)], quiet=True)
        tmp_crt = work / "leaf.crt"
        run(["openssl", "ca", "-batch", "-notext", "-config", str(config), "-extensions", "leaf",
             "-startdate", openssl_time(start), "-enddate", openssl_time(end), "-in", str(csr), "-out", str(tmp_crt)],
            quiet=True)
        write_bytes(crt, tmp_crt.read_bytes(), 0o644)


def fingerprint(crt: Path) -> str:
    """SHA-256 fingerprint as openssl prints it (AA:BB:...)."""
    return out(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(crt)]).split("=", 1)[1]


def cert_valid_for(crt: Path, seconds: int) -> bool:
    """Whether a certificate exists and is still valid `seconds` from now."""
    return crt.exists() and ok(["openssl", "x509", "-noout", "-checkend", str(seconds), "-in", str(crt)])


def cmd_certs() -> None:
    """Create the CA, server and hub certificates once (again when the recipe changes or they near expiry)."""
    with step("certs"):
        recipe = recipe_hash(CERT_RECIPE)
        stamp = CERTS / ".recipe"
        fresh = read_text(stamp) == recipe and cert_valid_for(CA_CERT, 30 * 86400)
        if fresh and cert_valid_for(CERTS / "server.crt", 7 * 86400) and cert_valid_for(CERTS / "hub.crt", 7 * 86400):
            log(f"certificates cached in {CERTS}")
            return
        CERTS.mkdir(parents=True, exist_ok=True)
        CERTS.chmod(0o755)
        if not fresh:
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "ca.cnf"
                config.write_text(CA_CONFIG.format(cn=CA_SUBJECT), encoding="utf-8")
                new_key(CA_KEY)
                run(["openssl", "req", "-x509", "-new", "-config", str(config), "-key", str(CA_KEY), "-sha256",
                     "-days", "3650", "-out", str(CA_CERT)], quiet=True)
                CA_CERT.chmod(0o644)
            log(f"new test CA {fingerprint(CA_CERT)}")
        for name, sans in (("server", SERVER_SANS), ("hub", HUB_SANS)):
            new_key(CERTS / f"{name}.key")
            cn = HUB_NAME if name == "hub" else "actuated"
            issue_cert(CERTS / f"{name}.key", CERTS / f"{name}.crt", cn, sans)
            log(f"{name}.crt {fingerprint(CERTS / f'{name}.crt')}  ({', '.join(sans)})")
        write_text(stamp, recipe + "\n")


def issue_server_certs(outdir: Path, *, sans: Sequence[str] = SERVER_SANS, mismatch: bool = False, days: int = 90,
                       expired: bool = False) -> str:
    """Write server.key, server.crt (from the test CA, for SANS) and ca.crt into OUTDIR; return the fingerprint."""
    if not CA_CERT.exists() or not CA_KEY.exists():
        raise WorldError(f"no test CA in {CERTS}: run `world.py certs` first")
    if days < 1:
        raise WorldError("--days must be at least 1")
    bad = [san for san in sans if not re.fullmatch(r"(IP:[0-9a-fA-F.:]+|DNS:[A-Za-z0-9*.-]+)", san)]
    if bad or not sans:
        raise WorldError(f"SANs must look like IP:192.168.130.1 or DNS:name (got {', '.join(bad) or 'none'})")
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "server.key"
        new_key(key)
        issue_cert(key, outdir / "server.crt", "actuated", sans, days=days, expired=expired)
        if mismatch:
            new_key(key)  # a different key: it does not belong to the certificate
        write_bytes(outdir / "server.key", key.read_bytes(), 0o600)
    write_bytes(outdir / "ca.crt", CA_CERT.read_bytes(), 0o644)
    enddate = out(["openssl", "x509", "-noout", "-enddate", "-in", str(outdir / "server.crt")]).split("=", 1)[1]
    what = "expired " if expired else ""
    log(f"issued {what}{outdir / 'server.crt'} (until {enddate}; {', '.join(sans)})"
        f"{' with a MISMATCHED server.key' if mismatch else ''}")
    return fingerprint(outdir / "server.crt")


def cmd_cert_issue(outdir: Path, *, mismatch: bool, days: int, expired: bool, sans: Sequence[str] = ()) -> None:
    """A new key and certificate from the test CA, as actuated's renewal would write them."""
    print(issue_server_certs(outdir, sans=tuple(sans) or SERVER_SANS, mismatch=mismatch, days=days, expired=expired))


# --------------------------------------------------------------------------------------------------------------------
# up / down: networks and containers
# --------------------------------------------------------------------------------------------------------------------


def inspect(kind: str, name: str) -> dict | None:  # type: ignore[type-arg]
    """docker {kind} inspect NAME as a dict, or None when it does not exist."""
    if shutil.which("docker") is None:
        return None
    proc = subprocess.run(["docker", kind, "inspect", name], check=False, capture_output=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def detach_all(network: str, info: dict) -> None:  # type: ignore[type-arg]
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


CA_TRUST_CMD = ("sh", "-c", "cp /certs/ca.crt /usr/local/share/ca-certificates/actuated-ca.crt"
                " && update-ca-certificates >/dev/null 2>&1 && exec sleep infinity")


def container_specs() -> list[ContainerSpec]:
    """The three world containers."""
    start_sh = HUB_DIR / "start.sh"
    hub_cmd = ("sh", "/hub/start.sh") if start_sh.exists() else ("sleep", "infinity")
    certs_hash = sha256_file(CA_CERT)[:16] if CA_CERT.exists() else ""
    hub_inputs = (tree_hash(HUB_DIR), certs_hash, sha256_file(CERTS / "hub.crt")[:16] if (CERTS / "hub.crt").exists() else "",
                  read_text(RELEASES / ".recipe"))
    common = ("--init", "--pull", "never", "--platform", "linux/amd64")
    return [
        ContainerSpec(
            HUB_CONTAINER, CLIENT_IMAGE, "bridge", "",
            (*common, "--hostname", "hub", "-p", f"127.0.0.1:{HUB_LOCAL_PORT}:443", "-p", f"127.0.0.1:{RELEASES_LOCAL_PORT}:8080",
             "-v", f"{HUB_DIR}:/hub:ro", "-v", f"{HUB_STATE}:/state", "-v", f"{CERTS}:/certs:ro",
             "-v", f"{RELEASES}:/releases:ro", "-v", f"{DEBS}:/debs:ro",
             "-e", f"HUB_USERNAME={HUB_USERNAME}", "-e", f"HUB_TOKEN={HUB_TOKEN}", "-e", "HUB_RATE_LIMIT=0"),
            hub_cmd,
            connects=tuple((net, ip, (HUB_NAME,)) for net, ip in HUB_IPS.items()),
            inputs=hub_inputs,
        ),
        ContainerSpec(
            VM_CONTAINER, CLIENT_IMAGE, NET_BR128, VM_IPS[NET_BR128],
            (*common, "--hostname", "vm", "-v", f"{CERTS}:/certs:ro"),
            CA_TRUST_CMD,
            connects=((NET_BR129, VM_IPS[NET_BR129], ()),),
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


def hub_ready(context: ssl.SSLContext) -> bool:
    """Whether the fake hub answers its readiness URL with 200."""
    try:
        with urllib.request.urlopen(HUB_READY_URL, timeout=5, context=context) as response:  # nosec: loopback only
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def wait_hub_ready(timeout: float = 600) -> None:
    """Wait until the fake hub is seeded and serving (or explain why it is not)."""
    if not (HUB_DIR / "start.sh").exists():
        warn(f"{HUB_DIR / 'start.sh'} does not exist yet: world-hub only sleeps; not waiting for it")
        return
    context = ssl.create_default_context(cafile=str(CA_CERT))
    start = time.monotonic()
    last_report = start
    while True:
        if hub_ready(context):
            log(f"{HUB_CONTAINER}: ready ({HUB_READY_URL}) after {time.monotonic() - start:.1f}s")
            return
        state = inspect("container", HUB_CONTAINER)
        if state is None or not state["State"].get("Running"):
            logs = run(["docker", "logs", "--tail", "30", HUB_CONTAINER], check=False, capture=True)
            text = (logs.stdout + logs.stderr).decode(errors="replace")
            raise WorldError(f"{HUB_CONTAINER} is not running; its last log lines:\n{text}")
        now = time.monotonic()
        if now - start > timeout:
            raise WorldError(f"{HUB_CONTAINER} not ready after {timeout:.0f}s (docker logs {HUB_CONTAINER})")
        if now - last_report >= 15:
            last_report = now
            logs = run(["docker", "logs", "--tail", "1", HUB_CONTAINER], check=False, capture=True)
            line = (logs.stdout + logs.stderr).decode(errors="replace").strip().splitlines()[-1:] or [""]
            log(f"{HUB_CONTAINER}: waiting for ready ({now - start:.0f}s): {line[0][:120]}")
        time.sleep(2)


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
        for name, (subnet, gateway) in NETWORKS.items():
            ensure_network(name, subnet, gateway)
        started = {spec.name: ensure_container(spec) for spec in container_specs()}
        for name in (VM_CONTAINER, OFFNET_CONTAINER):
            if started[name]:
                wait_ca_trusted(name)
        wait_hub_ready()
    log(f"up: done in {time.monotonic() - start:.1f}s")
    print_summary()


def print_summary() -> None:
    """Addresses, ports and environment of the world."""
    print(f"""actuated-world is up (cache {CACHE})
  {HUB_CONTAINER:13} {HUB_NAME}  {HUB_IPS[NET_BR128]} ({NET_BR128}), {HUB_IPS[NET_BR129]} ({NET_BR129})
                registry https://{HUB_NAME} (:443) -> {HUB_LOCAL_URL};  releases {RELEASES_REMOTE} -> {RELEASES_LOCAL}
  {VM_CONTAINER:13} {VM_IPS[NET_BR128]} ({NET_BR128}), {VM_IPS[NET_BR129]} ({NET_BR129}); trusts {CA_CERT}
  {OFFNET_CONTAINER:13} {OFFNET_IP} ({NET_OFFNET}): no route to the actuated bridges
  targets       (Molecule) {TARGET_IMAGE.format(arch='amd64|arm64')} at {TARGET_IPS[NET_BR128]} / {TARGET_IPS[NET_BR129]}
  environment   eval "$(python3 world/world.py env)\"""")


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


def cmd_hub_stop() -> None:
    """Stop the fake Docker Hub (an unreachable upstream)."""
    with step(f"stopping {HUB_CONTAINER}"):
        run(["docker", "stop", "-t", "10", HUB_CONTAINER], quiet=True)


def cmd_hub_start() -> None:
    """Start the fake Docker Hub again and wait until it is ready."""
    with step(f"starting {HUB_CONTAINER}"):
        run(["docker", "start", HUB_CONTAINER], quiet=True)
        wait_hub_ready()


def cmd_status() -> None:
    """What exists and what runs."""
    docker_up = docker_ready()
    pid_text = read_text(DOCKERD_PIDFILE)
    ours = f" (started by world.py, pid {pid_text})" if pid_text else ""
    print(f"cache      {CACHE}")
    print(f"dockerd    {'running' if docker_up else 'NOT running'}{ours}")
    print(f"binfmt     qemu-aarch64 {binfmt_state()}")
    if not docker_up:
        return
    for img in IMAGES:
        label = image_label(img.ref, LABEL_RECIPE)
        state = "missing" if label is None else ("up to date" if label == img.recipe() else f"STALE ({label})")
        print(f"image      {img.ref:32} {state}")
    debs = sorted(p.name for p in DEBS.glob("*.deb")) if DEBS.is_dir() else []
    print(f"debs       {', '.join(debs) or 'none'}")
    releases = sorted(str(p.relative_to(RELEASES)) for p in RELEASES.glob("v*/*.tar.gz")) if RELEASES.is_dir() else []
    print(f"releases   {len(releases)} tarballs ({', '.join(sorted({r.split('/')[0] for r in releases})) or 'none'})")
    if CA_CERT.exists():
        print(f"certs      ca {fingerprint(CA_CERT)}")
    else:
        print("certs      none")
    for name, (subnet, gateway) in NETWORKS.items():
        print(f"network    {name:16} {subnet:18} gw {gateway:16} {'present' if inspect('network', name) else 'missing'}")
    for name in CONTAINERS:
        info = inspect("container", name)
        print(f"container  {name:16} {info['State']['Status'] if info else 'missing'}")
    if inspect("container", HUB_CONTAINER) and CA_CERT.exists():
        ready = hub_ready(ssl.create_default_context(cafile=str(CA_CERT)))
        print(f"hub        {HUB_READY_URL} {'ready' if ready else 'NOT ready'}")


def cmd_env() -> None:
    """Shell export lines for `eval`."""
    for key, value in env_vars().items():
        print(f"export {key}={shlex.quote(value)}")


# --------------------------------------------------------------------------------------------------------------------
# target: a server under test, made the way Molecule makes it and prepared like molecule/shared/prepare.yml
# --------------------------------------------------------------------------------------------------------------------

TARGET_CA_PATH = "/usr/local/share/ca-certificates/actuated-world-ca.crt"  # the name molecule/shared/prepare.yml uses
TRUST_CA_SH = WORLD_DIR / "trust-ca.sh"  # update-ca-certificates for one certificate, fast under emulation
ACTUATED_CERTS_DIR = "/var/lib/actuated/certs"


def target_tar(certs: Path) -> bytes:
    """A tar stream (for `docker cp -`) with actuated's certificate directory and the test CA for the trust store."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, mode in (("var/lib/actuated", 0o755), (ACTUATED_CERTS_DIR.lstrip("/"), 0o700)):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
            tar.addfile(info)
        files = [(f"{ACTUATED_CERTS_DIR.lstrip('/')}/{name}", certs / name, mode)
                 for name, mode in (("ca.crt", 0o644), ("server.crt", 0o644), ("server.key", 0o600))]
        files.append((TARGET_CA_PATH.lstrip("/"), CA_CERT, 0o644))
        for path, source, mode in files:
            if not source.is_file():
                raise WorldError(f"{source} is missing (`world.py certs`, or `world.py cert issue DIR`)")
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

    Image actuated-world/target:ARCH, `--platform linux/ARCH`, `--pull never`, command /sbin/init, tmpfs /run and
    /run/lock, /sys/fs/cgroup read-only, never privileged; on NETWORK with address IP. Waits until systemd says
    running/degraded, then copies ca.crt, server.crt and server.key (0600) from CERTS to /var/lib/actuated/certs
    (0700) and installs the test CA in the system trust store, as molecule/shared/prepare.yml does.
    Returns systemd's state. Replaces only a container that `target up` made (label org.actuated.world.target).
    """
    if arch not in ARCHES:
        raise WorldError(f"--arch must be one of {', '.join(ARCHES)} (got {arch})")
    image = TARGET_IMAGE.format(arch=arch)
    if image_label(image, LABEL_RECIPE) is None:
        raise WorldError(f"image {image} is missing: run `python3 world/world.py up` (or `images`) first")
    if inspect("network", network) is None:
        raise WorldError(f"network {network} does not exist")
    payload = target_tar(certs)
    start = time.monotonic()
    target_down(name, quiet=True)
    run(["docker", "run", "-d", "--name", name, "--hostname", name, "--label", f"{LABEL_TARGET}={arch}",
         "--pull", "never", "--platform", f"linux/{arch}", "--network", network, "--ip", ip,
         "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", image, "/sbin/init"], quiet=True)
    try:
        state = wait_system_running(name, timeout)
        run(["docker", "cp", "-", f"{name}:/"], stdin=payload, quiet=True)
        run(["docker", "exec", "-i", name, "sh", "-s", "--", TARGET_CA_PATH], stdin=TRUST_CA_SH.read_bytes(), quiet=True)
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
        raise WorldError(f"container {name} was not made by `world.py target up`: not touching it")
    run(["docker", "rm", "-f", "-v", name], quiet=True)
    if not quiet:
        log(f"target {name} removed")
    return True


# --------------------------------------------------------------------------------------------------------------------
# selftest: the checks that prove the world works
# --------------------------------------------------------------------------------------------------------------------


def boot_check(arch: str) -> None:
    """Boot a target image the way Molecule does and require a running system with no failed unit."""
    ref = TARGET_IMAGE.format(arch=arch)
    name = f"world-selftest-{arch}"
    ok(["docker", "rm", "-f", name])
    run(["docker", "run", "-d", "--name", name, "--pull", "never", "--platform", f"linux/{arch}", "--network", "none",
         "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", ref, "/sbin/init"],
        quiet=True)
    try:
        start = time.monotonic()
        state = ""
        while time.monotonic() - start < 120:
            state = out(["docker", "exec", name, "systemctl", "is-system-running"], check=False)
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        failed = out(["docker", "exec", name, "systemctl", "--failed", "--no-legend", "--plain"], check=False)
        log(f"{ref}: systemd {state!r} after {time.monotonic() - start:.1f}s; failed units: {failed or 'none'}")
        if state != "running" or failed:
            raise WorldError(f"{ref} does not boot cleanly: {state!r}, failed: {failed}")
    finally:
        ok(["docker", "rm", "-f", name])


def cmd_selftest() -> None:
    """Boot both targets; check the network paths of the running world."""
    with step("selftest"):
        failures: list[str] = []
        for arch in ARCHES:
            try:
                boot_check(arch)
            except WorldError as exc:
                failures.append(str(exc))
        curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
        if (HUB_DIR / "start.sh").exists():
            for url in (f"https://{HUB_IPS[NET_BR128]}/v2/", f"https://{HUB_IPS[NET_BR129]}/v2/", f"{HUB_URL}/v2/",
                        f"{RELEASES_REMOTE}/v{REGISTRY_VERSION}/{release_name(REGISTRY_VERSION, 'amd64')}.sha256"):
                code = out(["docker", "exec", VM_CONTAINER, *curl, url], check=False)
                log(f"{VM_CONTAINER} -> {url}: HTTP {code}")
                if code in ("", "000"):
                    failures.append(f"{VM_CONTAINER} cannot reach {url}")
        else:
            warn("no world/hub/start.sh: skipping the vm -> hub checks")
        # A listener on world-vm's bridge addresses makes the off-network check meaningful (it ends by itself).
        run(["docker", "exec", "-d", VM_CONTAINER, "timeout", "30", "python3", "-m", "http.server", "18099"])
        time.sleep(1)
        for addr in VM_IPS.values():
            code = out(["docker", "exec", VM_CONTAINER, *curl, f"http://{addr}:18099/"], check=False)
            if code != "200":
                failures.append(f"{VM_CONTAINER}: its own listener on {addr}:18099 does not answer ({code})")
        targets = [f"{ip}:18099" for ip in VM_IPS.values()] + [f"{ip}:{port}" for ip in HUB_IPS.values() for port in (443, 8080)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            procs = pool.map(lambda target: run(["docker", "exec", OFFNET_CONTAINER, "curl", "-sS", "--max-time", "3", "-o",
                                                 "/dev/null", f"http://{target}/"], check=False, quiet=True), targets)
            for target, proc in zip(targets, procs):
                if proc.returncode == 0:
                    failures.append(f"{OFFNET_CONTAINER} reached {target}: it must not")
                else:
                    log(f"{OFFNET_CONTAINER} -> {target}: unreachable as intended ({proc.stderr.decode(errors='replace').strip()[:70]})")
        if failures:
            raise WorldError("selftest failed:\n  " + "\n  ".join(failures))


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python3 world/world.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("deps", "install apt packages, start dockerd, enable arm64 emulation"),
        ("stop-deps", "stop dockerd if world.py started it"),
        ("images", "build actuated-world/target:{amd64,arm64} and actuated-world/client:amd64"),
        ("debs", "download docker-registry and busybox-static .debs (amd64, arm64)"),
        ("releases", "build the upstream-layout release fixtures"),
        ("certs", "create the test CA, server and hub certificates"),
        ("up", "deps, images, debs, releases, certs, networks, containers"),
        ("down", "remove the world's containers and networks (caches stay)"),
        ("hub-stop", "stop the fake Docker Hub"),
        ("hub-start", "start the fake Docker Hub and wait until ready"),
        ("status", "show what exists"),
        ("env", "print export lines for eval"),
        ("selftest", "boot both target images; check the vm/offnet network paths"),
    ):
        sub.add_parser(name, help=text, description=text)
    cert = sub.add_parser("cert", help="certificate tools", description="certificate tools")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    issue = cert_sub.add_parser("issue", help="write a new server.crt/server.key (and ca.crt) from the test CA to OUTDIR; "
                                              "prints the SHA-256 fingerprint")
    issue.add_argument("outdir", type=Path)
    issue.add_argument("--mismatch", action="store_true", help="server.key does not belong to server.crt")
    issue.add_argument("--days", type=int, default=90, help="validity in days (default 90)")
    issue.add_argument("--expired", action="store_true", help="a certificate that expired yesterday")
    issue.add_argument("--san", action="append", default=[], metavar="SAN",
                       help="subjectAltName (IP:A.B.C.D or DNS:name), repeatable; replaces the default "
                            f"{','.join(SERVER_SANS)}")
    tgt = sub.add_parser("target", help="create/remove a server under test as Molecule does",
                         description="create/remove a server under test as Molecule does")
    tgt_sub = tgt.add_subparsers(dest="target_command", required=True, metavar="ACTION")
    tgt_up = tgt_sub.add_parser("up", help="create (or replace) a target and prepare it as an actuated host")
    tgt_up.add_argument("name")
    tgt_up.add_argument("--arch", choices=ARCHES, default="amd64")
    tgt_up.add_argument("--network", required=True, help="an existing docker network (e.g. actuated-br128)")
    tgt_up.add_argument("--ip", required=True, help="the target's address on it (e.g. 192.168.128.1)")
    tgt_up.add_argument("--certs", type=Path, default=CERTS,
                        help="directory with ca.crt, server.crt, server.key for /var/lib/actuated/certs (default: the world's)")
    tgt_up.add_argument("--timeout", type=float, default=300, help="seconds to wait for systemd (default 300)")
    tgt_down = tgt_sub.add_parser("down", help="remove a target made by `target up`")
    tgt_down.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    simple = {
        "deps": cmd_deps, "stop-deps": cmd_stop_deps, "images": cmd_images, "debs": cmd_debs,
        "releases": cmd_releases, "certs": cmd_certs, "up": cmd_up, "down": cmd_down, "hub-stop": cmd_hub_stop,
        "hub-start": cmd_hub_start, "selftest": cmd_selftest,
    }
    try:
        if args.command == "env":
            cmd_env()
        elif args.command == "status":
            cmd_status()
        elif args.command == "cert":
            with world_lock():
                cmd_cert_issue(args.outdir, mismatch=args.mismatch, days=args.days, expired=args.expired, sans=args.san)
        elif args.command == "target":
            # No world lock: targets are independent of each other and of `up`, and callers create several at once.
            if os.geteuid() != 0:
                raise WorldError("run as root")
            if args.target_command == "up":
                target_up(args.name, args.arch, args.network, args.ip, certs=args.certs, timeout=args.timeout)
            else:
                target_down(args.name)
        else:
            if os.geteuid() != 0:
                raise WorldError("run as root")
            with world_lock():
                simple[args.command]()
    except WorldError as exc:
        log(f"ERROR: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
