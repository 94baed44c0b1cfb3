# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The release files the role downloads, in the upstream layout (``v{V}/registry_{V}_linux_{ARCH}.tar.gz`` and
``.sha256`` with the bare digest), made offline from the real Debian packages: ``debs`` downloads docker-registry and
busybox-static for amd64 and arm64, ``releases`` repackages docker-registry as the fixtures of RELEASE_VERSIONS
(see world/README.md)."""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from . import gobuild, gorelease, sources
from .config import (
    APT_REPOS,
    ARCH_ALL_DEBS,
    ARCHES,
    BROKEN_VERSION,
    CACHE,
    DEBS,
    FIXTURE_DEBS,
    FRONT_DEBS,
    LABEL_RECIPE,
    LOGS,
    PATCHED_VERSION,
    REGISTRY_VERSION,
    RELEASE_VERSIONS,
    RELEASES,
    SOURCE_VERSION,
    TAMPERED_VERSION,
    TARGET_APT_REPO,
    TARGET_IMAGE,
)
from .deps import APT_ENV
from .util import (
    WorldError,
    image_label,
    log,
    out,
    read_text,
    recipe_hash,
    reproducible_tarball,
    run,
    sha256_bytes,
    sha256_file,
    step,
    warn,
    write_bytes,
    write_text,
)


def deb_path(package: str, arch: str) -> Path | None:
    """The cached .deb of a package for an architecture (or for all of them: Architecture: all)."""
    found = sorted(DEBS.glob(f"{package}_*_{arch}.deb")) or sorted(DEBS.glob(f"{package}_*_all.deb"))
    return found[-1] if found else None


def cmd_debs() -> None:
    """apt-get download docker-registry, busybox-static and the front's nginx for amd64 and arm64 (only what is
    missing); then the targets' apt repositories (apt_repo)."""
    with step("debs"):
        missing = [(pkg, arch) for pkg in FIXTURE_DEBS + FRONT_DEBS for arch in ARCHES if deb_path(pkg, arch) is None]
        if not missing:
            log(f"debs cached in {DEBS}")
        else:
            download_debs(missing)
        for arch in ARCHES:
            apt_repo(arch)


def apt_repo(arch: str) -> Path:
    """A flat apt repository (APT_REPOS/ARCH: the .debs of FRONT_DEBS, Packages, Release) for a target of ARCH, which
    `deb [trusted=yes] file:DIR ./` names, and the same as one archive (APT_REPOS/ARCH.tar, its files under
    TARGET_APT_REPO's name: molecule/shared/prepare.yml unpacks it in /opt in one step, where a copy of the directory
    costs a round trip per file, half a minute under arm64 emulation). Rewritten only when its .debs change."""
    repo = APT_REPOS / arch
    debs = [deb for deb in (deb_path(pkg, arch) for pkg in FRONT_DEBS) if deb is not None]
    if len(debs) != len(FRONT_DEBS):
        raise WorldError(f"the .debs of {', '.join(FRONT_DEBS)} for {arch} are missing in {DEBS}")
    stanzas = []
    for deb in debs:
        control = out(["dpkg-deb", "-f", str(deb)]).rstrip("\n")
        stanzas.append(f"{control}\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}\nSHA256: {sha256_file(deb)}\n")
    packages = "\n".join(stanzas)
    archive = APT_REPOS / f"{arch}.tar"
    if (repo / "Release").is_file() and archive.is_file() and read_text(repo / "Packages") == packages:
        return repo
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    for deb in debs:
        shutil.copyfile(deb, repo / deb.name)
    write_text(repo / "Packages", packages)
    index = repo / "Packages"
    write_text(repo / "Release", f"Date: Mon, 02 Oct 2023 00:00:00 UTC\nArchitectures: {arch} all\nSHA256:\n"
                                 f" {sha256_file(index)} {index.stat().st_size} Packages\n")
    partial = archive.with_name(f"{archive.name}.partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(repo, arcname=Path(TARGET_APT_REPO).name)
    partial.replace(archive)
    log(f"apt repository for {arch} targets: {repo} and {archive.name} ({', '.join(deb.name for deb in debs)})")
    return repo


def download_debs(missing: list[tuple[str, str]]) -> None:
    """apt-get download each (package, architecture) of MISSING into DEBS."""
    DEBS.mkdir(parents=True, exist_ok=True)
    foreign = {pair[1] for pair in missing} - {out(["dpkg", "--print-architecture"])}
    added = [a for a in sorted(foreign) if a not in out(["dpkg", "--print-foreign-architectures"]).split()]
    try:
        for arch in added:
            run(["dpkg", "--add-architecture", arch])
        run(["apt-get", "update", "-q"], env=APT_ENV, logfile=LOGS / "apt.log")
        with tempfile.TemporaryDirectory(dir=DEBS) as tmp:
            os.chmod(tmp, 0o755)
            names = sorted({pkg if pkg in ARCH_ALL_DEBS else f"{pkg}:{arch}" for pkg, arch in missing})
            log(f"apt-get download {' '.join(names)}")
            run(["apt-get", "download", "-q", *names], env=APT_ENV, cwd=Path(tmp), logfile=LOGS / "apt.log")
            for deb in Path(tmp).glob("*.deb"):
                deb.chmod(0o644)
                deb.replace(DEBS / re.sub(r"_[0-9]+%3a", "_", deb.name))  # pool-style name: no epoch
    finally:
        if added:
            for arch in added:
                run(["dpkg", "--remove-architecture", arch], check=False)
            run(["apt-get", "update", "-q"], env=APT_ENV, logfile=LOGS / "apt.log", check=False)
    still = [f"{pkg}:{arch}" for pkg, arch in missing if deb_path(pkg, arch) is None]
    if still:
        raise WorldError(f"could not download {' '.join(still)}")
    for deb in sorted(DEBS.glob("*.deb")):
        log(f"  {deb.name}")


FIXTURE_MTIME = 1696204800  # 2023-10-02: fixed, so that the tarballs (and their digests) are reproducible
DEBIAN_VERSION_STRING = b"2.8.2+ds1"

# Part of the fixtures' recipe, like NOTES: any edit (even of the "Made by" line, which names the program that was
# world/world.py) rebuilds every fixture and recreates world-hub.
README_TEMPLATE = """# distribution registry {version} for linux/{arch} (actuated-world TEST FIXTURE)

This archive imitates the layout of the upstream release
`registry_{version}_linux_{arch}.tar.gz` of https://github.com/distribution/distribution
(`registry`, `README.md`, `LICENSE` at the archive root).

It is NOT an upstream release. The `registry` binary is Debian's `docker-registry` package
{deb} (distribution 2.8.2), because that is the only build available offline.
{note}
Made by world/world.py of the actuated.registry collection for its tests only.
"""

NOTES = {
    REGISTRY_VERSION: "The binary is unmodified.\n",
    PATCHED_VERSION: "Its embedded version string was patched from 2.8.2+ds1 to 2.8.3+ds1 so that upgrade and\n"
                     "downgrade tests have a second version. The code is still 2.8.2.\n",
    TAMPERED_VERSION: "Negative fixture: the published .sha256 does NOT match this archive (tampered download).\n",
    BROKEN_VERSION: "Negative fixture: this archive has no `registry` member.\n",
}


def extract_deb(deb: Path, dest: Path) -> None:
    """dpkg-deb -x."""
    run(["dpkg-deb", "-x", str(deb), str(dest)])


def patch_version(binary: bytes, version: str) -> bytes:
    """Replace Debian's embedded version string with another one of the same length."""
    new = f"{version}+ds1".encode()
    if len(new) != len(DEBIAN_VERSION_STRING):
        raise WorldError(f"version {version} does not fit in place of {DEBIAN_VERSION_STRING.decode()}")
    count = binary.count(DEBIAN_VERSION_STRING)
    if count == 0:
        raise WorldError(f"{DEBIAN_VERSION_STRING.decode()} not found in the docker-registry binary")
    return binary.replace(DEBIAN_VERSION_STRING, new)


def make_tarball(members: list[tuple[str, bytes, int]]) -> bytes:
    """A fixture tarball: reproducible, with the fixtures' fixed mtime."""
    return reproducible_tarball(members, FIXTURE_MTIME, 9)


def release_name(version: str, arch: str) -> str:
    """Upstream asset name."""
    return f"registry_{version}_linux_{arch}.tar.gz"


def release_path(version: str, arch: str) -> Path:
    """Where a release fixture lives under WORLD_CACHE/releases."""
    return RELEASES / f"v{version}" / release_name(version, arch)


def check_binary_version(binary: Path, arch: str, expected: str) -> None:
    """Run `registry --version` (amd64 natively, arm64 in the arm64 target image under qemu)."""
    if arch == "amd64":
        text = out([str(binary), "--version"])
    else:
        ref = TARGET_IMAGE.format(arch=arch)
        if image_label(ref, LABEL_RECIPE) is None:
            warn(f"{ref} missing: cannot run the {arch} binary to check its version")
            return
        text = out(["docker", "run", "--rm", "--pull", "never", "--platform", f"linux/{arch}", "--network", "none",
                    "-v", f"{binary}:/registry:ro", "--entrypoint", "/registry", ref, "--version"])
    if f" {expected}+ds1" not in f" {text}":
        raise WorldError(f"{binary} --version printed {text!r}, expected {expected}+ds1")
    log(f"  {arch} registry --version: {text}")


def cmd_releases() -> None:
    """The release files in the upstream layout under $WORLD_CACHE/releases (the hub serves them on :8080)."""
    with step("releases"):
        debian_fixtures()
        # After debian_fixtures(), which empties RELEASES whenever its own recipe changes: the default version is put
        # back on every run, from the official files downloaded once, or from the source builds' own cache (0.3 s),
        # built only when their recipe changed (~3 min cold). world/sources.py decides which.
        way, where = sources.decide(SOURCE_VERSION)
        if way == "official":
            for arch in ARCHES:
                name = release_name(SOURCE_VERSION, arch)
                for file in (name, gorelease.sha256_name(name)):
                    write_bytes(RELEASES / f"v{SOURCE_VERSION}" / file, (where / file).read_bytes())
            log(f"distribution {SOURCE_VERSION}: the official release files from {where}")
            return
        gobuild.log = log
        try:
            gobuild.build_releases(SOURCE_VERSION, ARCHES, RELEASES / f"v{SOURCE_VERSION}", CACHE)
        except gorelease.GoBuildError as err:
            raise WorldError(str(err)) from err


def debian_fixtures() -> None:
    """The fixtures made from Debian's docker-registry (RELEASE_VERSIONS), rebuilt when their recipe changes."""
    debs: dict[str, Path] = {}
    for arch in ARCHES:
        deb = deb_path("docker-registry", arch)
        if deb is None:
            raise WorldError(f"docker-registry {arch} .deb missing: run `python3 -m world debs` first")
        debs[arch] = deb
    recipe = recipe_hash({
        "debs": {arch: sha256_file(deb) for arch, deb in debs.items()}, "readme": README_TEMPLATE, "notes": NOTES,
        "mtime": FIXTURE_MTIME, "versions": RELEASE_VERSIONS, "layout": 2,
    })
    stamp = RELEASES / ".recipe"
    expected = [release_path(v, a) for v in RELEASE_VERSIONS for a in ARCHES]
    if read_text(stamp) == recipe and all(p.exists() and p.with_name(p.name + ".sha256").exists() for p in expected):
        log(f"release fixtures cached in {RELEASES} (recipe {recipe})")
        return
    RELEASES.mkdir(parents=True, exist_ok=True)
    # Rebuild in place: the directory itself is bind-mounted into the hub container.
    for child in RELEASES.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for arch, deb in debs.items():
            tree = Path(tmp) / arch
            extract_deb(deb, tree)
            binary = (tree / "usr/bin/docker-registry").read_bytes()
            license_text = (tree / "usr/share/doc/docker-registry/copyright").read_bytes()
            for version in RELEASE_VERSIONS:
                build_release(version, arch, deb.name, binary, license_text, tmp=Path(tmp))
    write_text(stamp, recipe + "\n")
    for path in expected:
        log(f"  {path.relative_to(RELEASES)}  sha256 {read_text(path.with_name(path.name + '.sha256'))[:16]}...")


def build_release(version: str, arch: str, deb_name: str, binary: bytes, license_text: bytes, *, tmp: Path) -> None:
    """One release fixture (tarball + .sha256) for a version and architecture."""
    readme = README_TEMPLATE.format(version=version, arch=arch, deb=deb_name, note=NOTES[version]).encode()
    members = [("README.md", readme, 0o644), ("LICENSE", license_text, 0o644)]
    if version != BROKEN_VERSION:
        patched = binary if version == REGISTRY_VERSION else patch_version(binary, version)
        if version == PATCHED_VERSION:
            check_path = tmp / f"registry-{version}-{arch}"
            write_bytes(check_path, patched, 0o755)
            check_binary_version(check_path, arch, version)
        members.append(("registry", patched, 0o755))
    data = make_tarball(members)
    path = release_path(version, arch)
    write_bytes(path, data)
    digest = sha256_bytes(data)
    if version == TAMPERED_VERSION:
        digest = sha256_bytes(data + b"tampered")  # what the "publisher" announced; the download differs
    write_text(path.with_name(path.name + ".sha256"), digest + "\n")
