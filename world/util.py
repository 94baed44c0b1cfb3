# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Small helpers of the test world: logging, commands, hashing, atomic files, locks, docker look-ups."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import CACHE

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
        raise WorldError(f"{cmd[0]} not found: run `python3 -m world deps` first")
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
        status = subprocess.run(list(cmd), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        return status == 0
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
    return file_lock(CACHE / ".lock", "another `python3 -m world` command")


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


def inspect(kind: str, name: str) -> dict[str, Any] | None:
    """docker {kind} inspect NAME as a dict, or None when it does not exist."""
    if shutil.which("docker") is None:
        return None
    proc = subprocess.run(["docker", kind, "inspect", name], check=False, capture_output=True)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def reproducible_tarball(members: Sequence[tuple[str, bytes, int]], mtime: int, compresslevel: int) -> bytes:
    """A .tar.gz of (name, data, mode) members that is the same bytes every time: sorted by name, one mtime,
    root:root, a gzip header without file name or time."""
    raw = io.BytesIO()
    with (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz,
          tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar):
        for name, data, mode in sorted(members, key=lambda member: member[0]):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()
