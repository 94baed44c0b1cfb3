# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake Docker Hub container (world-hub, code in world/hub/): readiness, stop and start. How the container is
made is in world/containers.py, with the other world containers."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request

from .config import CA_CERT, HUB_CONTAINER, HUB_DIR, HUB_READY_URL
from .util import WorldError, inspect, log, run, step, warn


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


def cmd_hub_stop() -> None:
    """Stop the fake Docker Hub (an unreachable upstream)."""
    with step(f"stopping {HUB_CONTAINER}"):
        run(["docker", "stop", "-t", "10", HUB_CONTAINER], quiet=True)


def cmd_hub_start() -> None:
    """Start the fake Docker Hub again and wait until it is ready."""
    with step(f"starting {HUB_CONTAINER}"):
        run(["docker", "start", HUB_CONTAINER], quiet=True)
        wait_hub_ready()
