# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Where the world's copy of the role's default distribution release comes from, decided before anything is built.

In this order:

1. a source tarball (``WORLD_DISTRIBUTION_SOURCE``, or gorelease.default_source(): beside the repository, where CI
   provides it): ``gobuild.py`` builds the release from it, offline;
2. the official release files, at the URL the role itself downloads from (``registry_mirror_release_base_url`` and
   ``registry_mirror_version`` of ``roles/registry_mirror/defaults/main.yml``), each tarball checked against its
   ``.sha256``: downloaded once into ``$WORLD_CACHE/official/`` and used from there afterwards;
3. otherwise the world stops, within seconds and before it builds anything, naming both ways.

The source comes first so that a machine that has it never sends a request off the machine (the tests' network rule).
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.request
from pathlib import Path

from . import gorelease
from .config import ARCHES, CACHE, REPO
from .util import WorldError, log, sha256_file, write_bytes

DEFAULTS = REPO / "roles" / "registry_mirror" / "defaults" / "main.yml"
OFFICIAL = CACHE / "official"
DOWNLOAD_TIMEOUT = 20.0  # seconds per request; a machine without the internet fails at once (no DNS) or after this


def role_default(name: str, defaults: Path = DEFAULTS) -> str:
    """A top-level scalar default of the role (``name: "value"``), read as written."""
    match = re.search(rf'^{re.escape(name)}:\s*"?([^"#\n]*?)"?\s*(?:#.*)?$', defaults.read_text(encoding="utf-8"), re.M)
    if not match or not match.group(1):
        raise WorldError(f"{defaults} has no default for {name}")
    return match.group(1)


def official_url(version: str, arch: str, defaults: Path = DEFAULTS) -> str:
    """The URL of a release tarball, as the role builds it."""
    base = role_default("registry_mirror_release_base_url", defaults).rstrip("/")
    return f"{base}/v{version}/{gorelease.release_name(version, arch)}"


def official_dir(version: str, cache: Path = OFFICIAL) -> Path:
    """Where downloaded official release files are kept."""
    return cache / f"v{version}"


def _complete(directory: Path, version: str, arch: str) -> bool:
    """A downloaded tarball whose digest is the one its .sha256 names."""
    name = gorelease.release_name(version, arch)
    tarball, digest_file = directory / name, directory / gorelease.sha256_name(name)
    if not tarball.is_file() or not digest_file.is_file():
        return False
    return digest_file.read_text(encoding="utf-8").split()[:1] == [sha256_file(tarball)]


def _fetch(url: str, timeout: float) -> bytes:
    """GET URL; WorldError with the reason when it cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # the URL of the role's defaults
            return bytes(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise WorldError(f"{url}: {reason}") from err


def download_official(version: str, arches: tuple[str, ...] = ARCHES, cache: Path = OFFICIAL,
                      timeout: float = DOWNLOAD_TIMEOUT, defaults: Path = DEFAULTS) -> Path:
    """The official release files of VERSION for ARCHES in cache/vVERSION (downloaded when missing, each tarball
    checked against its .sha256); WorldError naming the first one that could not be had or did not match."""
    directory = official_dir(version, cache)
    for arch in arches:
        if _complete(directory, version, arch):
            continue
        url = official_url(version, arch, defaults)
        digest = _fetch(url + ".sha256", timeout).decode("ascii", "replace").split()[:1]
        data = _fetch(url, timeout)
        got = hashlib.sha256(data).hexdigest()
        if digest != [got]:
            raise WorldError(f"{url}: its sha256 is {got}, but {url}.sha256 says {' '.join(digest) or 'nothing'}")
        name = gorelease.release_name(version, arch)
        write_bytes(directory / name, data)
        write_bytes(directory / gorelease.sha256_name(name), (got + "\n").encode())
        log(f"{name}: downloaded from {url} (sha256 {got[:12]}...)")
    return directory


def decide(version: str, arches: tuple[str, ...] = ARCHES, *, cache: Path = OFFICIAL, timeout: float = DOWNLOAD_TIMEOUT,
           defaults: Path = DEFAULTS) -> tuple[str, Path]:
    """("source", tarball) or ("official", directory of downloaded files); WorldError naming both ways when neither
    can be had. Downloads only when no source tarball is there."""
    try:
        return "source", gorelease.source_path(version)
    except gorelease.GoBuildError as err:
        missing_source = str(err)
    try:
        return "official", download_official(version, arches, cache, timeout, defaults)
    except WorldError as err:
        raise WorldError(
            f"no way to the role's default distribution release {version}: (1) {missing_source} (2) the official "
            f"release files could not be downloaded: {err}. Give this machine either the source tarball (set "
            f"{gorelease.SOURCE_ENV}) or access to {role_default('registry_mirror_release_base_url', defaults)}."
        ) from err
