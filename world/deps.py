# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""What the world needs on the machine: apt packages, a running dockerd (stopped again only if the world started
it), arm64 emulation (binfmt_misc + qemu-aarch64), promtool for `make lint` and the Prometheus server that draws the
dashboard's picture (`make dashboard`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from . import sources
from .config import (
    APT_PACKAGES,
    DOCKERD_PIDFILE,
    LOGS,
    NGINX_PACKAGE,
    NGINX_TOOL,
    PROMETHEUS_TOOL,
    PROMTOOL,
    PROMTOOL_PACKAGE,
    SOURCE_VERSION,
)
from .util import WorldError, log, ok, out, read_text, run, step, tail, warn, write_text

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


def promtool() -> Path | None:
    """The promtool `make lint` runs: one on PATH (Debian's prometheus package installed), else the one `deps`
    extracted; None: neither."""
    found = shutil.which("promtool")
    if found:
        return Path(found)
    return PROMTOOL if os.access(PROMTOOL, os.X_OK) else None


def ensure_promtool() -> None:
    """promtool (`promtool check rules` and `test rules` in `make lint`) out of Debian's prometheus package, which is
    not installed: its postinst enables and starts a Prometheus server (prometheus.service, or its init script where
    systemd does not run) that neither a developer's machine nor CI should be left running. The Debian binary needs
    libc only."""
    if promtool() is not None:
        return
    extract_tool(PROMTOOL_PACKAGE, "usr/bin/promtool", PROMTOOL)
    log(f"{out([str(PROMTOOL), '--version']).splitlines()[0]} in {PROMTOOL} (not installed)")


def prometheus() -> Path | None:
    """The Prometheus server world/dashboard.py queries: one on PATH, else the one `deps` extracted; None: neither."""
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    return PROMETHEUS_TOOL if os.access(PROMETHEUS_TOOL, os.X_OK) else None


def ensure_prometheus() -> None:
    """The Prometheus server (`make dashboard`, and the unit tests of world/dashboard.py) out of the same Debian package
    as promtool, not installed for the same reason. Only the binary: the dashboard's drawing asks its HTTP API, never
    its web pages, and gives it a configuration of its own."""
    if prometheus() is not None:
        return
    extract_tool(PROMTOOL_PACKAGE, "usr/bin/prometheus", PROMETHEUS_TOOL)
    log(f"{out([str(PROMETHEUS_TOOL), '--version']).splitlines()[0]} in {PROMETHEUS_TOOL} (not installed)")


def ensure_nginx_tool() -> None:
    """nginx for `make unit` (tests/unit/roles/test_front_conf.py: `nginx -t` of the front's rendered configuration),
    out of Debian's nginx package, which is not installed: its postinst would start an nginx on port 80. The binary
    needs libraries every Debian host has (libc, libcrypt, libpcre2, libssl, zlib)."""
    if os.access(NGINX_TOOL, os.X_OK):
        return
    extract_tool(NGINX_PACKAGE, "usr/sbin/nginx", NGINX_TOOL)
    version = subprocess.run([str(NGINX_TOOL), "-v"], capture_output=True, text=True, check=False).stderr.strip()
    log(f"{version} in {NGINX_TOOL} (not installed)")


def extract_tool(package: str, member_path: str, dest: Path) -> None:
    """The file MEMBER_PATH of Debian's PACKAGE (`apt-get download`; apt's package lists refreshed only when it
    fails), and nothing else of the package, as the executable DEST."""
    with tempfile.TemporaryDirectory(prefix=f"{dest.name}-") as tmp:
        download = ["apt-get", "download", "-q", package]
        if run(download, env=APT_ENV, cwd=Path(tmp), logfile=LOGS / "apt.log", check=False).returncode != 0:
            run(["apt-get", "update", "-q"], env=APT_ENV, logfile=LOGS / "apt.log")
            run(download, env=APT_ENV, cwd=Path(tmp), logfile=LOGS / "apt.log")
        deb = next(Path(tmp).glob(f"{package}_*.deb"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f"{dest.name}.partial")
        found = False
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                for member in archive:  # read to the end: dpkg-deb must not die of a closed pipe
                    source = archive.extractfile(member) if member.name.lstrip("./") == member_path else None
                    if source is not None:
                        partial.write_bytes(source.read())
                        found = True
        if proc.returncode != 0 or not found:
            partial.unlink(missing_ok=True)
            raise WorldError(f"no {member_path} in {deb.name} (dpkg-deb exited with {proc.returncode})")
        partial.chmod(0o755)
        partial.replace(dest)


def cmd_promtool() -> None:
    """promtool only (CI's static job, which needs nothing else of the world), and the tools of the unit tests: nginx,
    the Prometheus server."""
    with step("promtool"):
        ensure_promtool()
        ensure_nginx_tool()
        ensure_prometheus()
        log(f"promtool: {promtool()}")


def cmd_deps() -> None:
    """Install and start what the world needs (idempotent)."""
    with step("deps"):
        # First, within seconds: where the default release will come from (nothing is installed or built without one).
        way, where = sources.decide(SOURCE_VERSION)
        how = f"built from {where}" if way == "source" else f"official release files in {where}"
        log(f"distribution {SOURCE_VERSION}: {how}")
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
        ensure_promtool()
        ensure_nginx_tool()
        ensure_prometheus()


def cmd_stop_deps() -> None:
    """Stop dockerd if (and only if) this tool started it."""
    pid_text = read_text(DOCKERD_PIDFILE)
    if not pid_text.isdigit():
        log("dockerd was not started by the world: leaving it alone")
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
