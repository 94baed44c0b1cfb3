# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The mirror's cache on disk: what distribution's filesystem storage holds, which images to evict to bring it under
a disk budget, and the sweep that deletes the blobs nothing references any more.

Usage: registry_cache.py check ROOT       the problems of the cache (exit 1 when there are any)
       registry_cache.py du ROOT          bytes of blob data, blobs, images
       registry_cache.py plan ROOT BYTES  the images an eviction down to BYTES (e.g. 20G) would remove; changes nothing

ROOT is distribution's storage root (its filesystem `rootdirectory`, e.g. /var/lib/registry). The module reads the
storage's layout directly (distribution 2.x and 3.x, layout v2, sha256 digests; registry/storage/paths.go):

    <ROOT>/docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data                  blob content (manifests are blobs too)
    <ROOT>/docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link      the cached manifests
    <ROOT>/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link           what a tag names
    <ROOT>/docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link    blobs the repository may serve

A directory of repositories/ is a repository when it has a _manifests directory; a repository may hold nested ones
(a/b and a/b/c). Anything else under ROOT (scheduler-state.json, the supervisor's usage file) is not looked at.

distribution itself never evicts by use (its proxy only expires content after a fixed TTL, and `registry
garbage-collect` deletes only what nothing references), so the disk budget is kept here, in three steps that
registry-supervisor runs while the registry serves the cache read-only (nothing is written meanwhile):

- scan(): the images of the cache. An image is the eviction unit: a root manifest of one repository (a revision that
  is not the child of an index revision of the same repository) with its child manifests cached there, its tags and
  every blob it references (manifests, configs, layers). It was last used at the latest of: the pulls of any of its
  manifests the supervisor learnt from distribution's notifications (the usage map), the modification times of its
  tags' current links (distribution 3.1 rewrites them at every pull by tag) and that of its root's revision link (when
  it was cached). Inventory.plan() picks the least recently used images whose eviction brings the bytes the remaining
  images reference under a target; a blob a kept image also references is not counted as freed.
- evict(): removes the links of those images: their tags first, then their revisions, then the _layers links of
  their blobs, so that an interruption never leaves a tag naming a missing revision (what another kept image of the
  repository needs stays), and the repositories left without revisions. A tag, and a repository's _manifests, are
  first moved out of distribution's sight (into v2/.registry_cache-trash), so that none is ever seen half deleted.
- sweep(): a mark and sweep as `registry garbage-collect` does: marks every blob a revision of any repository
  references (the manifest, an image manifest's config and layers, an index's child manifests), deletes the other
  blobs unless written recently (a pull in progress may not have stored its manifest yet) and the _layers links that
  named them. It stops between two deletions when asked to; what it did leaves the cache consistent.

check() finds what keeps a cached image from being served whole: a tag naming no revision, a manifest blob missing
or not a manifest (it then references nothing: a sweep keeps none of its blobs), a config or layer missing from the
blob store or not linked in the repository (read-only, distribution serves only linked blobs); cache_bytes() is the
cheap size check the supervisor runs every few seconds.

The walk never follows a symbolic link (a link where a directory of the layout should be is an error, StorageError),
never deletes outside <ROOT>/docker/registry/v2, takes a missing storage as an empty cache and files vanishing
meanwhile as gone. Other errors (permissions, I/O) are raised; sweep() reads the whole layout before it deletes
anything, so a walk it cannot finish deletes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import itertools
import json
import os
import re
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

PROG = "registry_cache"
# Where distribution's filesystem driver keeps the layout, under its rootdirectory.
LAYOUT = ("docker", "registry", "v2")
# The supervisor's usage file in the storage root ({"version": 1, "used": {"REPOSITORY@DIGEST": epoch seconds}}):
# `plan` orders images as the supervisor would.
USAGE_FILE = "registry-supervisor-usage.json"
ALGORITHM = "sha256"
HEX = re.compile(r"[0-9a-f]{64}\Z")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
# distribution and Docker Hub accept manifests of up to 4 MiB: a "manifest" blob twice as large is not one (and is not
# read whole).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
# Layers that registries do not store (Windows base layers, fetched from their URLs): never missing from a cache.
FOREIGN_MEDIA_TYPES = ("foreign", "nondistributable")
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Where evict() moves a tag or a repository's _manifests before deleting it, so that distribution never sees one half
# deleted (its walks start at blobs/ and repositories/); it exists only while evict() runs.
TRASH = ".registry_cache-trash"
_DISCARDED = itertools.count()
SIZE = re.compile(r"(\d+)\s*(?:([KMGT])(?:i?B)?|B)?\Z", re.IGNORECASE)


class StorageError(Exception):
    """The directory is not a distribution filesystem storage, or its layout has a symbolic link where a directory
    should be."""


@dataclasses.dataclass(frozen=True)
class Image:
    """An eviction unit: a root manifest of one repository and what comes with it there (digests as sha256:<hex>)."""

    repository: str
    # The root manifest: an index (manifest list) or an image manifest that no index of the repository lists.
    digest: str
    # The tags whose current link names one of its manifests (almost always the root).
    tags: tuple[str, ...]
    # The root and the child manifests (recursively) that have a revision in the repository.
    manifests: frozenset[str]
    # Every blob present in the store that it references: its manifests, their configs and layers, and the blobs of
    # the index children that have no revision.
    blobs: frozenset[str]
    # Epoch seconds.
    last_used: float

    def name(self) -> str:
        """REPOSITORY@DIGEST."""
        return f"{self.repository}@{self.digest}"


@dataclasses.dataclass
class Inventory:
    """The images of a cache and its blobs."""

    images: list[Image]
    # Every blob present: digest -> bytes of its data.
    blob_sizes: dict[str, int]

    def total_bytes(self) -> int:
        """The bytes of all blob data, referenced or not."""
        return sum(self.blob_sizes.values())

    def referenced_bytes(self, images: Iterable[Image]) -> int:
        """The bytes of the blobs IMAGES reference, each blob counted once."""
        return sum(self.blob_sizes.get(digest, 0) for digest in {blob for image in images for blob in image.blobs})

    def plan(self, target_bytes: int) -> list[Image]:
        """The least recently used images to evict, in eviction order, so that the images left reference at most
        TARGET_BYTES of blobs; none when they already do."""
        if self.referenced_bytes(self.images) <= target_bytes:
            return []
        chosen = []
        for image, remaining in self.evictions():
            chosen.append(image)
            if remaining <= target_bytes:
                break
        return chosen

    def evictions(self) -> Iterator[tuple[Image, int]]:
        """Every image, least recently used first (ties: by repository, then digest), each with the bytes the
        images after it still reference."""
        users = Counter(blob for image in self.images for blob in image.blobs)
        remaining = sum(self.blob_sizes.get(blob, 0) for blob in users)
        for image in sorted(self.images, key=lambda image: (image.last_used, image.repository, image.digest)):
            for blob in image.blobs:
                users[blob] -= 1
                if not users[blob]:
                    remaining -= self.blob_sizes.get(blob, 0)
            yield image, remaining


@dataclasses.dataclass
class Evicted:
    """What evict() removed: tag directories, revision directories, _layers links and emptied repositories."""

    tags: int = 0
    revisions: int = 0
    layer_links: int = 0
    repositories: int = 0


class Swept(NamedTuple):
    """What sweep() deleted."""

    bytes_reclaimed: int
    blobs_removed: int


@dataclasses.dataclass(frozen=True)
class _Blob:
    """A blob present in the store: its directory, the size and modification time of its data."""

    path: str
    size: int
    mtime: float


@dataclasses.dataclass(frozen=True)
class _Manifest:
    """What a manifest blob references: an index's children, an image manifest's (role, digest) blobs ("config",
    "layer", "foreign layer"); error says why the blob is not a manifest."""

    children: tuple[str, ...] = ()
    blobs: tuple[tuple[str, str], ...] = ()
    error: str = ""

    def references(self) -> tuple[str, ...]:
        """Every digest it references."""
        return self.children + tuple(digest for _role, digest in self.blobs)


@dataclasses.dataclass
class _Repository:
    """A repository's links, as digests: revisions (-> modification time of the link), tags (-> the digest the
    current link names, None when missing or not a digest, and the link's modification time) and _layers links."""

    name: str
    path: str
    revisions: dict[str, float]
    tags: dict[str, tuple[str | None, float]]
    layers: set[str]


class _Store:
    """One walk of a storage: the repositories (read first: a blob stored during the walk is then either seen with
    its links or too young for a sweep), the blobs, and the manifests parsed on demand."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.v2 = layout_directory(root)
        self.repositories = list(_repositories(self.v2))
        self.blobs = {digest: _Blob(path, info.st_size, info.st_mtime) for digest, path, info in _blob_files(self.v2)}
        self.parsed: dict[str, _Manifest | None] = {}

    def manifest(self, digest: str) -> _Manifest | None:
        """The manifest in blob DIGEST; None when the blob is missing."""
        if digest not in self.parsed:
            blob = self.blobs.get(digest)
            self.parsed[digest] = None if blob is None else _read_manifest(os.path.join(blob.path, "data"))
        return self.parsed[digest]

    def marked(self) -> set[str]:
        """Every digest a revision of any repository references, the revisions included."""
        marked: set[str] = set()
        for repository in self.repositories:
            for digest in repository.revisions:
                marked.add(digest)
                manifest = self.manifest(digest)
                if manifest is not None:
                    marked.update(manifest.references())
        return marked


def layout_directory(root: str | os.PathLike[str]) -> str:
    """<ROOT>/docker/registry/v2 as an absolute path (it may not exist: an empty cache); StorageError when one of its
    directories is a symbolic link or not a directory."""
    path = os.path.abspath(os.fspath(root))
    for part in LAYOUT:
        path = os.path.join(path, part)
        _require_directory(path)
    return path


def _require_directory(path: str) -> bool:
    """Whether the layout's directory PATH exists; StorageError when it is a symbolic link or not a directory."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISLNK(info.st_mode):
        raise StorageError(f"{path} is a symbolic link: the cache's layout must be real directories "
                           "(links are never followed)")
    if not stat.S_ISDIR(info.st_mode):
        raise StorageError(f"{path} is not a directory: not a distribution filesystem storage")
    return True


def _subdirectories(path: str) -> list[os.DirEntry[str]]:
    """The directories in PATH (not symbolic links), by name; none when PATH is missing."""
    try:
        with os.scandir(path) as entries:
            found = [entry for entry in entries if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(found, key=lambda entry: entry.name)


def _digest_directories(path: str) -> Iterator[tuple[str, str]]:
    """(sha256:<hex>, directory) for the <hex> directories in PATH (revisions, _layers, tag index)."""
    for entry in _subdirectories(path):
        if HEX.match(entry.name):
            yield f"{ALGORITHM}:{entry.name}", entry.path


def _file_info(path: str) -> os.stat_result | None:
    """The lstat of the regular file PATH; None when it is missing or not a regular file."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _read(path: str, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The content (at most LIMIT + 1 bytes) and status of the regular file PATH, not following a symbolic link;
    None when it is missing, a symbolic link or not a regular file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link: not followed, not a file of the layout
            return None
        raise
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        return (handle.read(limit + 1), info) if stat.S_ISREG(info.st_mode) else None


def _read_link(path: str) -> tuple[str | None, float] | None:
    """(the digest the link file PATH names, None when it names none; its modification time), None when missing."""
    read = _read(path, 200)
    if read is None:
        return None
    content, info = read
    text = content.decode("ascii", "replace").strip()
    return (text if DIGEST.match(text) else None), info.st_mtime


def _repositories(v2: str) -> Iterator[_Repository]:
    """The repositories under V2/repositories, nested ones included, by name."""
    top = os.path.join(v2, "repositories")
    if not _require_directory(top):
        return
    pending = [(top, "")]
    while pending:
        path, name = pending.pop()
        directories = _subdirectories(path)
        if name and any(entry.name == "_manifests" for entry in directories):
            yield _read_repository(name, path)
        # Repository name components never start with "_": those are the repository's own directories.
        pending.extend((entry.path, f"{name}/{entry.name}" if name else entry.name)
                       for entry in reversed(directories) if not entry.name.startswith("_"))


def _read_repository(name: str, path: str) -> _Repository:
    """The links of repository NAME in PATH."""
    manifests = os.path.join(path, "_manifests")
    revisions = {}
    for digest, directory in _digest_directories(os.path.join(manifests, "revisions", ALGORITHM)):
        info = _file_info(os.path.join(directory, "link"))
        if info is not None:
            revisions[digest] = info.st_mtime
    tags = {}
    for entry in _subdirectories(os.path.join(manifests, "tags")):
        tags[entry.name] = _read_link(os.path.join(entry.path, "current", "link")) or (None, 0.0)
    layers = {digest for digest, directory in _digest_directories(os.path.join(path, "_layers", ALGORITHM))
              if _file_info(os.path.join(directory, "link")) is not None}
    return _Repository(name, path, revisions, tags, layers)


def _blob_files(v2: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(digest, blob directory, lstat of its data) for every blob of the store."""
    top = os.path.join(v2, "blobs", ALGORITHM)
    if not (_require_directory(os.path.join(v2, "blobs")) and _require_directory(top)):
        return
    for prefix in _subdirectories(top):
        for digest, directory in _digest_directories(prefix.path):
            info = _file_info(os.path.join(directory, "data"))
            if info is not None and digest.startswith(f"{ALGORITHM}:{prefix.name}"):
                yield digest, directory, info


def _digest_in(descriptor: object, key: str = "digest") -> str | None:
    """The sha256 digest of a manifest's DESCRIPTOR (a JSON object), if it has one."""
    value = descriptor.get(key) if isinstance(descriptor, dict) else None
    return value if isinstance(value, str) and DIGEST.match(value) else None


def _list_in(document: dict[str, Any], key: str) -> list[Any]:
    """The list DOCUMENT[KEY], empty when it is not a list."""
    value = document.get(key)
    return value if isinstance(value, list) else []


def _parse_manifest(content: bytes) -> _Manifest:
    """What the manifest CONTENT references: an image index or manifest list (manifests), an OCI or Docker schema 2
    image manifest (config, layers) or a Docker schema 1 manifest (fsLayers)."""
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _Manifest(error="is not JSON")
    if not isinstance(document, dict):
        return _Manifest(error="is not a JSON object")
    if not any(key in document for key in ("manifests", "config", "layers", "fsLayers")):
        return _Manifest(error="has none of manifests, config, layers, fsLayers")
    children = tuple(digest for digest in map(_digest_in, _list_in(document, "manifests")) if digest)
    blobs = []
    config = _digest_in(document.get("config"))
    if config:
        blobs.append(("config", config))
    for layer in _list_in(document, "layers"):
        digest = _digest_in(layer)
        if digest:
            media_type = str(layer.get("mediaType", "")).lower()
            foreign = bool(layer.get("urls")) or any(word in media_type for word in FOREIGN_MEDIA_TYPES)
            blobs.append(("foreign layer" if foreign else "layer", digest))
    blobs.extend(("layer", digest) for digest in (_digest_in(layer, "blobSum")
                                                  for layer in _list_in(document, "fsLayers")) if digest)
    return _Manifest(children, tuple(dict.fromkeys(blobs)))


def _read_manifest(path: str) -> _Manifest | None:
    """The manifest in the blob data file PATH; None when it is missing."""
    read = _read(path, MAX_MANIFEST_BYTES)
    if read is None:
        return None
    content, _info = read
    if len(content) > MAX_MANIFEST_BYTES:
        return _Manifest(error=f"is larger than {MAX_MANIFEST_BYTES} bytes")
    return _parse_manifest(content)


def _images(store: _Store, repository: _Repository, usage: Mapping[tuple[str, str], float]) -> Iterator[Image]:
    """The images of REPOSITORY."""
    children = {}
    for digest in repository.revisions:
        manifest = store.manifest(digest)
        children[digest] = manifest.children if manifest else ()
    listed = {child for digest in repository.revisions for child in children[digest]
              if child in repository.revisions and child != digest}
    for root in sorted(set(repository.revisions) - listed):
        manifests: set[str] = set()
        pending = [root]
        while pending:
            digest = pending.pop()
            if digest not in manifests:
                manifests.add(digest)
                pending.extend(child for child in children[digest] if child in repository.revisions)
        blobs: set[str] = set()
        for digest in manifests:
            manifest = store.manifest(digest)
            blobs.update(ref for ref in (digest, *(manifest.references() if manifest else ())) if ref in store.blobs)
        tags = tuple(sorted(tag for tag, (target, _mtime) in repository.tags.items() if target in manifests))
        times = [repository.revisions[root]]
        times += [repository.tags[tag][1] for tag in tags]
        times += [usage[(repository.name, digest)] for digest in manifests if (repository.name, digest) in usage]
        yield Image(repository.name, root, tags, frozenset(manifests), frozenset(blobs), max(times))


def scan(root: str | os.PathLike[str], usage: Mapping[tuple[str, str], float] | None = None) -> Inventory:
    """The images and blobs of the storage ROOT; USAGE: (repository, manifest digest) -> when it was last pulled."""
    store = _Store(root)
    images = [image for repository in store.repositories for image in _images(store, repository, usage or {})]
    return Inventory(images, {digest: blob.size for digest, blob in store.blobs.items()})


def cache_bytes(root: str | os.PathLike[str]) -> int:
    """The bytes of all blob data in the storage ROOT (a quick walk of the blob store only)."""
    return sum(info.st_size for _digest, _path, info in _blob_files(layout_directory(root)))


def _remove(v2: str, path: str) -> bool:
    """Remove the file or directory tree PATH inside V2 without following links; False when it was already gone."""
    if os.path.commonpath([v2, path]) != v2 or path == v2:
        raise ValueError(f"refusing to remove {path}: not inside {v2}")
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if stat.S_ISDIR(info.st_mode):
        try:
            with os.scandir(path) as entries:
                inside = [entry.path for entry in entries]
        except FileNotFoundError:
            return False
        for entry in inside:
            _remove(v2, entry)
        remove: Callable[[str], None] = os.rmdir
    else:
        remove = os.unlink
    try:
        remove(path)
    except FileNotFoundError:
        return False
    return True


def _discard(v2: str, path: str) -> bool:
    """Remove the tree PATH inside V2 at once for distribution: moved into the trash, then deleted there; False when
    it was already gone."""
    trash = os.path.join(v2, TRASH)
    os.makedirs(trash, exist_ok=True)
    _require_directory(trash)
    target = os.path.join(trash, f"{os.getpid()}-{next(_DISCARDED)}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # a repository on a file system of its own: deleted in place
            raise
        return _remove(v2, path)
    _remove(v2, target)
    return True


def _repository_path(v2: str, name: str) -> str:
    """The directory of repository NAME; ValueError when NAME is not a repository name of the layout."""
    parts = name.split("/")
    if not all(parts) or any(part in (".", "..") or part.startswith("_") for part in parts):
        raise ValueError(f"{name!r} is not a repository name")
    return os.path.join(v2, "repositories", *parts)


def _digest_path(directory: str, digest: str) -> str:
    """DIRECTORY/sha256/<hex> for DIGEST; ValueError when it is not a sha256 digest."""
    if not DIGEST.match(digest):
        raise ValueError(f"{digest!r} is not a sha256 digest")
    return os.path.join(directory, ALGORITHM, digest.split(":", 1)[1])


def evict(root: str | os.PathLike[str], images: Iterable[Image], inventory: Inventory) -> Evicted:
    """Remove the links of IMAGES (from INVENTORY, the scan of ROOT) and the repositories left without revisions;
    the blobs stay for sweep(). What another image of INVENTORY needs in the same repository stays."""
    v2 = layout_directory(root)
    doomed = list(images)
    keys = {(image.repository, image.digest) for image in doomed}
    kept_manifests: dict[str, set[str]] = {}
    kept_blobs: dict[str, set[str]] = {}
    for image in inventory.images:
        if (image.repository, image.digest) not in keys:
            kept_manifests.setdefault(image.repository, set()).update(image.manifests)
            kept_blobs.setdefault(image.repository, set()).update(image.blobs)
    manifests: dict[str, set[str]] = {}
    blobs: dict[str, set[str]] = {}
    for image in doomed:
        keep = kept_manifests.get(image.repository, set()), kept_blobs.get(image.repository, set())
        manifests.setdefault(image.repository, set()).update(image.manifests - keep[0])
        blobs.setdefault(image.repository, set()).update(image.blobs - keep[1])
    paths = {name: _repository_path(v2, name) for name in sorted(manifests)}
    done = Evicted()
    _remove(v2, os.path.join(v2, TRASH))  # what an interrupted eviction left
    # Tags first (those that name a manifest going away, as the disk says now), then revisions, then _layers links.
    for name, path in paths.items():
        for entry in _subdirectories(os.path.join(path, "_manifests", "tags")):
            link = _read_link(os.path.join(entry.path, "current", "link"))
            if link is not None and link[0] in manifests[name] and _discard(v2, entry.path):
                done.tags += 1
    for name, path in paths.items():
        revisions = os.path.join(path, "_manifests", "revisions")
        done.revisions += sum(_remove(v2, _digest_path(revisions, digest)) for digest in sorted(manifests[name]))
    for name, path in paths.items():
        layers = os.path.join(path, "_layers")
        done.layer_links += sum(_remove(v2, _digest_path(layers, digest)) for digest in sorted(blobs[name]))
    for path in paths.values():
        if _has_revisions(path) or not _discard(v2, os.path.join(path, "_manifests")):
            continue
        done.repositories += 1
        for own in ("_layers", "_uploads"):
            _remove(v2, os.path.join(path, own))
        _remove_empty_parents(v2, path)
    _remove(v2, os.path.join(v2, TRASH))
    return done


def _has_revisions(path: str) -> bool:
    """Whether the repository in PATH still has a revision (of any digest algorithm)."""
    revisions = os.path.join(path, "_manifests", "revisions")
    return any(_subdirectories(algorithm.path) for algorithm in _subdirectories(revisions))


def _remove_empty_parents(v2: str, path: str) -> None:
    """Remove PATH and its parents up to V2/repositories (excluded) while they are empty: a directory that still
    holds a nested repository stays."""
    top = os.path.join(v2, "repositories")
    while os.path.commonpath([top, path]) == top and path != top:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:  # not empty
            return
        path = os.path.dirname(path)


def _never() -> bool:
    """Never asks to stop."""
    return False


def sweep(root: str | os.PathLike[str], keep_newer_than: float, should_stop: Callable[[], bool] = _never,
          evicted: Iterable[Image] = ()) -> Swept:
    """Delete the blobs of the storage ROOT that no revision of any repository references and whose data was written
    before KEEP_NEWER_THAN (epoch seconds), or that belonged to an EVICTED image whatever their age, then the _layers
    links to blobs gone and unreferenced; SHOULD_STOP is asked before each deletion."""
    doomed = {digest for image in evicted for digest in image.blobs}
    store = _Store(root)
    marked = store.marked()
    # The registry may go on serving (and storing) while this runs: whatever a manifest cached meanwhile references
    # (an evicted image pulled again, say) is marked by a second walk, right before the deletions.
    candidates = [digest for digest, blob in store.blobs.items()
                  if digest not in marked and (blob.mtime < keep_newer_than or digest in doomed)]
    if candidates:
        marked |= _Store(root).marked()
    deleted: set[str] = set()
    reclaimed = 0
    for digest in sorted(candidates):
        blob = store.blobs[digest]
        if digest in marked:
            continue
        if should_stop():
            return Swept(reclaimed, len(deleted))
        if _remove(store.v2, blob.path):
            deleted.add(digest)
            reclaimed += blob.size
    # Also the links an interrupted sweep or an earlier expiry left (blob gone, nothing references it).
    for repository in store.repositories:
        for digest in sorted(repository.layers):
            if digest in deleted or (digest not in store.blobs and digest not in marked):
                if should_stop():
                    return Swept(reclaimed, len(deleted))
                _remove(store.v2, _digest_path(os.path.join(repository.path, "_layers"), digest))
    return Swept(reclaimed, len(deleted))


def check(root: str | os.PathLike[str]) -> list[str]:
    """The problems of the storage ROOT that keep a cached image from being served whole, each naming its repository
    and digest: a tag naming no revision, a revision whose manifest blob is missing or not a manifest, an image
    manifest whose config or layer is missing from the blob store or not linked in the repository (the read-only
    registry serves only linked blobs). An index child without a revision is fine: a proxy caches only the platforms
    pulled."""
    store = _Store(root)
    problems = []
    for repository in store.repositories:
        name = repository.name
        for tag, (target, _mtime) in sorted(repository.tags.items()):
            if target is None:
                problems.append(f"{name}:{tag}: the tag's current link is missing or names no sha256 digest")
            elif target not in repository.revisions:
                problems.append(f"{name}:{tag}: the tag names {target}, which has no revision in the repository")
        for digest in sorted(repository.revisions):
            manifest = store.manifest(digest)
            if manifest is None:
                problems.append(f"{name}@{digest}: the manifest's blob is missing")
            elif manifest.error:
                problems.append(f"{name}@{digest}: the manifest's blob {manifest.error}")
            else:
                problems += [_blob_problem(store, repository, digest, role, blob) for role, blob in manifest.blobs
                             if role != "foreign layer" and (blob not in store.blobs or blob not in repository.layers)]
    return problems


def _blob_problem(store: _Store, repository: _Repository, digest: str, role: str, blob: str) -> str:
    """The problem with the ROLE blob BLOB of manifest DIGEST in REPOSITORY."""
    where = f"{repository.name}@{digest}: its {role} {blob}"
    if blob not in store.blobs:
        return f"{where} is missing from the blob store"
    return f"{where} is not linked in the repository (no _layers link): the read-only registry cannot serve it"


def read_usage(path: str) -> dict[tuple[str, str], float]:
    """The usage times in the supervisor's usage file PATH; none when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            used = json.load(handle).get("used", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(used, dict):
        return {}
    times = {}
    for key, when in used.items():
        repository, _at, digest = key.partition("@")
        if digest and isinstance(when, (int, float)) and not isinstance(when, bool):
            times[(repository, digest)] = float(when)
    return times


def parse_size(text: str) -> int:
    """A number of bytes: a whole number, optionally followed by K, M, G or T (powers of 1024; KiB, MB... too)."""
    match = SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give bytes, or a whole number followed by K, M, G "
                                         "or T (powers of 1024)")
    return int(match.group(1)) << 10 * ("KMGT".find((match.group(2) or "?").upper()) + 1)


def require_storage(root: str) -> None:
    """StorageError unless ROOT is a distribution filesystem storage root (or an empty one: nothing cached yet)."""
    if not os.path.isdir(root):
        raise StorageError(f"{root}: no such directory (give the registry's storage rootdirectory, e.g. "
                           "/var/lib/registry)")
    if os.path.isdir(layout_directory(root)):
        return
    if os.path.isdir(os.path.join(root, "blobs")) or os.path.isdir(os.path.join(root, "repositories")):
        raise StorageError(f"{root} looks like the storage's docker/registry/v2 directory itself: give the storage "
                           f"root, the directory that holds docker/")
    if any(entry.name != "lost+found" for entry in _subdirectories(root)):  # a filesystem of its own has one
        raise StorageError(f"{root} is not a distribution filesystem storage: it has no docker/registry/v2 directory")


def _when(epoch: float) -> str:
    """EPOCH as a UTC time."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def _describe(image: Image) -> str:
    """REPOSITORY@DIGEST (tags), as the supervisor's journal names images."""
    return image.name() + (f" ({', '.join(image.tags)})" if image.tags else "")


def _print_plan(root: str, target: int) -> None:
    """What an eviction of ROOT down to TARGET bytes would remove (the usage file's times, when there is one)."""
    inventory = scan(root, read_usage(os.path.join(root, USAGE_FILE)))
    before = inventory.referenced_bytes(inventory.images)
    chosen = inventory.plan(target)
    if not chosen:
        print(f"nothing to evict: the {len(inventory.images)} images reference {before} bytes, target {target}")
        return
    previous = before
    for image, remaining in inventory.evictions():
        print(f"evict {_describe(image)}: last used {_when(image.last_used)}, frees {previous - remaining} bytes")
        previous = remaining
        if image is chosen[-1]:
            break
    print(f"would evict {len(chosen)} of {len(inventory.images)} images: {before} -> {previous} bytes referenced "
          f"(target {target}); a sweep would then delete {inventory.total_bytes() - previous} bytes of blobs")


def main(argv: list[str] | None = None) -> int:
    """The command line: check, du, plan. Exit 0, 1 when check finds problems, 2 on errors."""
    parser = argparse.ArgumentParser(prog=PROG, description="The registry mirror's cache (distribution's filesystem "
                                     "storage): check it, measure it, plan an eviction. Nothing is changed.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command, text in (("check", "list the problems that keep cached images from being served whole"),
                          ("du", "bytes of blob data, blobs and images"),
                          ("plan", "the least recently used images an eviction down to BYTES would remove")):
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("root", metavar="ROOT", help="the storage's rootdirectory, e.g. /var/lib/registry")
        if command == "plan":
            sub.add_argument("target", metavar="BYTES", type=parse_size,
                             help="bytes the images left may reference (K, M, G, T suffixes: powers of 1024)")
    args = parser.parse_args(argv)
    try:
        require_storage(args.root)
        if args.command == "check":
            problems = check(args.root)
            print("\n".join(problems) if problems else "no problems")
            return 1 if problems else 0
        if args.command == "du":
            inventory = scan(args.root)
            print(f"{inventory.total_bytes()} bytes in {len(inventory.blob_sizes)} blobs; {len(inventory.images)} "
                  f"images reference {inventory.referenced_bytes(inventory.images)} bytes")
        else:
            _print_plan(args.root, args.target)
    except (StorageError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
