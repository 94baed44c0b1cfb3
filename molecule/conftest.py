# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Fixtures shared by every Molecule scenario's testinfra tests: the test world (the `world` package), its VM client,
its fake Docker Hub and a way to run the converge playbook again (check mode, -vvv)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import world

REPO = Path(__file__).resolve().parent.parent

ARCH = os.environ.get("MOLECULE_ARCH", "amd64")
# The distribution version users get: the role's default, which every scenario but the upgrade paths runs.
DEFAULT_VERSION = str(yaml.safe_load((REPO / "roles/registry_mirror/defaults/main.yml").read_text())["registry_mirror_version"])
BRIDGE = os.environ.get("MOLECULE_BRIDGE", "128")
ADDRESS = f"192.168.{BRIDGE}.1"
MIRROR = f"{ADDRESS}:5000"
# The second upstream's mirror (registry_mirror_upstreams in the default scenario: ghcr.io's stand-in).
GHCR_MIRROR = f"{ADDRESS}:5010"
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}[ARCH]
ELF_MACHINE = {"amd64": 0x3E, "arm64": 0xB7}[ARCH]

# Logic that does not depend on the architecture (Ansible output, check mode, warnings) is proven on amd64 only:
# under arm64 emulation every extra playbook run costs minutes of the CI budget.
amd64_only = pytest.mark.skipif(ARCH != "amd64", reason="architecture-independent; proven on amd64 (arm64 is emulated)")


def run(cmd: list[str], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command on the machine that runs the tests."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


class Client:
    """A container of the test world that pulls with skopeo: the VM (on the bridge) or the off-network client."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the container."""
        return run(["docker", "exec", self.name, "sh", "-c", script], check=check, timeout=timeout)

    def raw_manifest(self, ref: str, creds: str = "") -> bytes:
        """The exact manifest bytes a registry serves for REF (docker://...)."""
        flags = f"--creds {creds}" if creds else ""
        return run(["docker", "exec", self.name, "sh", "-c", f"skopeo inspect --raw {flags} {ref}"]).stdout.encode()

    def pull(self, ref: str, arch: str, dest: str) -> subprocess.CompletedProcess[str]:
        """Pull REF for ARCH into an OCI layout DEST, as `docker pull` in a VM would, through the mirror."""
        return self.sh(f"rm -rf {dest} && skopeo copy --retry-times 0 --override-arch {arch} docker://{ref} oci:{dest}:x",
                       check=False)


class Hub:
    """The admin API of a fake registry, the Docker Hub one by default (counters per identity, rate limit, anonymous
    access)."""

    def __init__(self, base_url: str = "") -> None:
        self.base_url = base_url or world.HUB_LOCAL_URL
        self.context = ssl.create_default_context(cafile=str(world.CA_CERT))

    def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or POST with BODY) an admin endpoint and decode its JSON."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}/_world/{path}", data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:  # nosec B310: loopback test server
            text = resp.read().decode()
        return json.loads(text) if text.strip() else None

    def stats(self) -> Any:
        """Counters since the last reset."""
        return self.call("stats")

    def pulls(self) -> dict[str, int]:
        """What Docker Hub would count as pulls (manifest GETs), per identity (user name or "anonymous")."""
        return {name: counters["manifest_get"] for name, counters in self.stats()["identities"].items()}

    def reset(self) -> None:
        """Zero the counters."""
        self.call("reset", {})

    def configure(self, **settings: Any) -> None:
        """Change rate_limit / anonymous at run time."""
        self.call("config", settings)


@pytest.fixture(scope="session")
def vm() -> Client:
    """The actuated VM: on the bridge, trusts actuated's CA."""
    return Client(world.VM_CONTAINER)


@pytest.fixture(scope="session")
def offnet() -> Client:
    """A client that is not on the bridge network."""
    return Client(world.OFFNET_CONTAINER)


@pytest.fixture(scope="session")
def hub() -> Hub:
    """The fake Docker Hub."""
    return Hub()


@pytest.fixture(scope="session")
def ghcr() -> Hub:
    """The second upstream (ghcr.io's stand-in), the same fake registry with its own account and counters."""
    return Hub(world.GHCR_LOCAL_URL)


@pytest.fixture(scope="session")
def converge():
    """Run the scenario's converge playbook again with extra ansible-playbook arguments; returns its output."""

    def _converge(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
        playbook = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]).parent / "shared" / "converge.yml"
        env = {**os.environ, "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1",
               **(extra_env or {})}
        return subprocess.run(["ansible-playbook", "-i", str(ephemeral / "inventory"), str(playbook), *args],
                              capture_output=True, text=True, env=env, timeout=1200, check=False)

    return _converge


def sha256(data: bytes) -> str:
    """sha256:<hex> of DATA, as registries name content."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def recap(output: str) -> dict[str, int]:
    """The PLAY RECAP counters of an ansible-playbook run (one host)."""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines():
        if " : ok=" in line:
            return {k: int(v) for k, v in (part.split("=") for part in line.split(":", 1)[1].split())}
    raise AssertionError("no PLAY RECAP in output:\n" + output[-3000:])


def since(host) -> str:
    """A journalctl --since value for now."""
    return host.check_output("date '+%Y-%m-%d %H:%M:%S'")


def journal(host, start: str) -> str:
    """The registry unit's journal since START."""
    return host.check_output(f"journalctl --no-pager -o cat -u registry --since '{start}'")


def reconverge(converge, vm, *extra: str) -> None:
    """Converge with EXTRA variables and wait until the mirror serves."""
    args = [arg for pair in (("-e", e) for e in extra) for arg in pair]
    result = converge(*args)
    assert result.returncode == 0, result.stdout[-3000:]
    vm.sh(f"for i in $(seq 150); do curl -sf -o /dev/null https://{MIRROR}/v2/ && exit 0; sleep 0.2; done; exit 1")


def registry_pids(host) -> dict[str, str]:
    """The pid of each `registry serve` process, by the configuration file it serves (targets have no ps). Under
    arm64 emulation the command line starts with qemu's; the pattern is put together at run time so that the scanning
    shell's own command line does not match it."""
    script = ('s=serve; for d in /proc/[0-9]*; do c=$(tr "\\0" " " < "$d/cmdline" 2>/dev/null) || continue; '
              'case "$c" in *"/registry $s /"*) echo "${d#/proc/} $c";; esac; done')
    found = {}
    for line in host.check_output(script).splitlines():
        pid, _space, args = line.strip().partition(" ")
        found[args.split()[-1]] = pid
    return found


def metric(text: str, name: str, kind: str = "") -> float:
    """The value of NAME{type="KIND"} (NAME without labels if no KIND) in a Prometheus text exposition (0 when
    absent)."""
    labels = f'{{type="{kind}"}}' if kind else ""
    found = re.search(rf'^{name}{re.escape(labels)} ([0-9.e+]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
