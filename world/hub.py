# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake Docker Hub container (world-hub, code in world/hub/): readiness, stop and start. How the container is
made is in world/containers.py, with the other world containers."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request

from .config import CA_CERT, GHCR_CONTAINER, GHCR_READY_URL, HUB_CONTAINER, HUB_DIR, HUB_READY_URL
from .util import WorldError, inspect, log, run, step, warn


def hub_ready(context: ssl.SSLContext, url: str = HUB_READY_URL) -> bool:
    """Whether a fake registry answers its readiness URL with 200."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:  # nosec: loopback only
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def wait_hub_ready(container: str = HUB_CONTAINER, ready_url: str = HUB_READY_URL, timeout: float = 600) -> None:
    """Wait until a fake registry (the hub, or world-ghcr) is seeded and serving (or explain why it is not)."""
    if not (HUB_DIR / "start.sh").exists():
        warn(f"{HUB_DIR / 'start.sh'} does not exist yet: world-hub only sleeps; not waiting for it")
        return
    context = ssl.create_default_context(cafile=str(CA_CERT))
    start = time.monotonic()
    last_report = start
    while True:
        if hub_ready(context, ready_url):
            log(f"{container}: ready ({ready_url}) after {time.monotonic() - start:.1f}s")
            return
        state = inspect("container", container)
        if state is None or not state["State"].get("Running"):
            logs = run(["docker", "logs", "--tail", "30", container], check=False, capture=True)
            text = (logs.stdout + logs.stderr).decode(errors="replace")
            raise WorldError(f"{container} is not running; its last log lines:\n{text}")
        now = time.monotonic()
        if now - start > timeout:
            raise WorldError(f"{container} not ready after {timeout:.0f}s (docker logs {container})")
        if now - last_report >= 15:
            last_report = now
            logs = run(["docker", "logs", "--tail", "1", container], check=False, capture=True)
            line = (logs.stdout + logs.stderr).decode(errors="replace").strip().splitlines()[-1:] or [""]
            log(f"{container}: waiting for ready ({now - start:.0f}s): {line[0][:120]}")
        time.sleep(2)


def stop_registry(container: str) -> None:
    """Stop a fake registry (an unreachable upstream)."""
    with step(f"stopping {container}"):
        run(["docker", "stop", "-t", "10", container], quiet=True)


def start_registry(container: str, ready_url: str) -> None:
    """Start a fake registry again and wait until it is ready."""
    with step(f"starting {container}"):
        run(["docker", "start", container], quiet=True)
        wait_hub_ready(container, ready_url)


def cmd_hub_stop() -> None:
    """Stop the fake Docker Hub."""
    stop_registry(HUB_CONTAINER)


def cmd_hub_start() -> None:
    """Start the fake Docker Hub again."""
    start_registry(HUB_CONTAINER, HUB_READY_URL)


def cmd_ghcr_stop() -> None:
    """Stop the second upstream (ghcr.io's stand-in)."""
    stop_registry(GHCR_CONTAINER)


def cmd_ghcr_start() -> None:
    """Start the second upstream again."""
    start_registry(GHCR_CONTAINER, GHCR_READY_URL)
