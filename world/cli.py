# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The command line: ``python3 -m world COMMAND`` (``--help`` lists the commands; world/README.md explains them)."""

from __future__ import annotations

import argparse
import os
import shlex
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from .certs import cmd_cert_issue, cmd_certs, fingerprint
from .config import (
    ARCHES,
    CA_CERT,
    CACHE,
    CERTS,
    CONTAINERS,
    DEBS,
    DOCKERD_PIDFILE,
    HUB_CONTAINER,
    HUB_READY_URL,
    LABEL_RECIPE,
    NETWORKS,
    RELEASES,
    SERVER_SANS,
    env_vars,
)
from .containers import cmd_down, cmd_up
from .deps import binfmt_state, cmd_deps, cmd_promtool, cmd_stop_deps, docker_ready
from .hub import cmd_ghcr_start, cmd_ghcr_stop, cmd_hub_start, cmd_hub_stop, hub_ready
from .images import IMAGES, cmd_images
from .releases import cmd_debs, cmd_releases
from .selftest import cmd_selftest
from .targets import target_down, target_up
from .util import WorldError, image_label, inspect, log, read_text, world_lock

DESCRIPTION = "The offline test world of the actuated.registry collection."


def cmd_status() -> None:
    """What exists and what runs."""
    docker_up = docker_ready()
    pid_text = read_text(DOCKERD_PIDFILE)
    ours = f" (started by the world, pid {pid_text})" if pid_text else ""
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
        present = "present" if inspect("network", name) else "missing"
        print(f"network    {name:16} {subnet:18} gw {gateway:16} {present}")
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


def command(*args: str) -> list[str]:
    """The command line that runs ``python3 -m world ARGS`` with this interpreter (for callers' subprocesses)."""
    return [sys.executable, "-m", "world", *args]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python3 -m world", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("deps", "install apt packages, start dockerd, enable arm64 emulation"),
        ("stop-deps", "stop dockerd if the world started it"),
        ("promtool", "extract promtool (make lint) and prometheus (make dashboard) from Debian's prometheus package"),
        ("images", "build actuated-world/target:{amd64,arm64} and actuated-world/client:amd64"),
        ("debs", "download docker-registry and busybox-static .debs (amd64, arm64)"),
        ("releases", "build the upstream-layout release fixtures"),
        ("certs", "create the test CA, server and hub certificates"),
        ("up", "deps, images, debs, releases, certs, networks, containers"),
        ("down", "remove the world's containers and networks (caches stay)"),
        ("hub-stop", "stop the fake Docker Hub"),
        ("hub-start", "start the fake Docker Hub and wait until ready"),
        ("ghcr-stop", "stop the second upstream (ghcr.io's stand-in)"),
        ("ghcr-start", "start the second upstream and wait until ready"),
        ("status", "show what exists"),
        ("env", "print export lines for eval"),
        ("selftest", "boot both target images; check the vm/offnet network paths"),
    ):
        sub.add_parser(name, help=text, description=text)
    cert = sub.add_parser("cert", help="certificate tools", description="certificate tools")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    issue = cert_sub.add_parser("issue", help="write a new server.crt/server.key (and ca.crt) from the test CA to "
                                              "OUTDIR; "
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
                        help="directory with ca.crt, server.crt, server.key for /var/lib/actuated/certs "
                             "(default: the world's)")
    tgt_up.add_argument("--timeout", type=float, default=300, help="seconds to wait for systemd (default 300)")
    tgt_down = tgt_sub.add_parser("down", help="remove a target made by `target up`")
    tgt_down.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    simple = {
        "deps": cmd_deps, "stop-deps": cmd_stop_deps, "promtool": cmd_promtool, "images": cmd_images, "debs": cmd_debs,
        "releases": cmd_releases, "certs": cmd_certs, "up": cmd_up, "down": cmd_down, "hub-stop": cmd_hub_stop,
        "hub-start": cmd_hub_start, "ghcr-stop": cmd_ghcr_stop, "ghcr-start": cmd_ghcr_start, "selftest": cmd_selftest,
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
