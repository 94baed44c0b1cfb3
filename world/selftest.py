# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""``selftest``: the checks that prove the running world works (targets boot cleanly on both arches, world-vm
reaches the hub on both bridges, world-offnet reaches nothing on them)."""

from __future__ import annotations

import concurrent.futures
import time

from .config import (
    ARCHES,
    HUB_DIR,
    HUB_IPS,
    HUB_URL,
    NET_BR128,
    NET_BR129,
    OFFNET_CONTAINER,
    REGISTRY_VERSION,
    RELEASES_REMOTE,
    VM_CONTAINER,
    VM_IPS,
)
from .releases import release_name
from .targets import target_run_args
from .util import WorldError, log, ok, out, run, step, warn


def boot_check(arch: str) -> None:
    """Boot a target image the way Molecule does and require a running system with no failed unit."""
    options, ref, command = target_run_args(arch)
    name = f"world-selftest-{arch}"
    ok(["docker", "rm", "-f", name])
    run(["docker", "run", "-d", "--name", name, *options, "--network", "none", ref, *command], quiet=True)
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
        targets = [f"{ip}:18099" for ip in VM_IPS.values()]
        targets += [f"{ip}:{port}" for ip in HUB_IPS.values() for port in (443, 8080)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            procs = pool.map(lambda target: run(["docker", "exec", OFFNET_CONTAINER, "curl", "-sS", "--max-time", "3",
                                                 "-o", "/dev/null", f"http://{target}/"], check=False, quiet=True),
                             targets)
            for target, proc in zip(targets, procs, strict=True):
                if proc.returncode == 0:
                    failures.append(f"{OFFNET_CONTAINER} reached {target}: it must not")
                else:
                    why = proc.stderr.decode(errors="replace").strip()[:70]
                    log(f"{OFFNET_CONTAINER} -> {target}: unreachable as intended ({why})")
        if failures:
            raise WorldError("selftest failed:\n  " + "\n  ".join(failures))
