# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Real distribution filesystem storages built in a temporary directory (Layout): blobs named by the sha256 of their
content, manifests as JSON blobs, links written where and as distribution writes them: every file whole (written
beside, renamed into place), an image in the order a pull through the mirror caches it. A supervisor that watches the
storage while a test writes never sees a half-written file, or an image's bytes before its manifest. Shared by the
unit tests of registry_cache and of the supervisor's collections (tests/unit/files) and by the benchmark's collection
runs (bench/collection.py); standard library only."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

# Every file of a Layout is written at T0 unless the test says otherwise; a sweep with GRACE_END keeps nothing for
# its age.
T0 = 1_700_000_000.0
GRACE_END = T0 + 10**9
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Layout:
    """A distribution filesystem storage under ROOT (created, empty), written as distribution 3.1 writes it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = root / "docker" / "registry" / "v2"
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def hex(digest: str) -> str:
        """The hex part of DIGEST."""
        return digest.split(":", 1)[1]

    def blob_dir(self, digest: str) -> Path:
        """The directory of blob DIGEST."""
        return self.v2 / "blobs" / "sha256" / self.hex(digest)[:2] / self.hex(digest)

    def repository(self, name: str) -> Path:
        """The directory of repository NAME."""
        return self.v2 / "repositories" / name

    def revision_dir(self, repository: str, digest: str) -> Path:
        """The revision directory of manifest DIGEST in REPOSITORY."""
        return self.repository(repository) / "_manifests" / "revisions" / "sha256" / self.hex(digest)

    def tag_dir(self, repository: str, tag: str) -> Path:
        """The directory of TAG in REPOSITORY."""
        return self.repository(repository) / "_manifests" / "tags" / tag

    def layer_dir(self, repository: str, digest: str) -> Path:
        """The _layers link directory of blob DIGEST in REPOSITORY."""
        return self.repository(repository) / "_layers" / "sha256" / self.hex(digest)

    @staticmethod
    def write(path: Path, content: bytes, mtime: float) -> None:
        """Write CONTENT to PATH (directories created) with the modification time MTIME, at once: as distribution
        3.1 writes a file (its filesystem driver's PutContent, and an upload's commit), into a temporary file beside
        it (PATH.<uuid>.tmp, which the layout's walks never read) renamed into place, its time already set."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{uuid.uuid4()}.tmp")
        try:
            temporary.write_bytes(content)
            os.utime(temporary, (mtime, mtime))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def blob(self, content: bytes, mtime: float = T0) -> str:
        """Store CONTENT in the blob store; its digest."""
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        self.write(self.blob_dir(digest) / "data", content, mtime)
        return digest

    def link(self, path: Path, digest: str, mtime: float = T0) -> None:
        """A link file naming DIGEST (no newline, as distribution writes it)."""
        self.write(path / "link", digest.encode(), mtime)

    def layer(self, repository: str, content: bytes, mtime: float = T0) -> str:
        """A blob pulled through REPOSITORY: linked in its _layers and stored, the data last (distribution links it
        right after storing it): the blob's bytes appear with everything that comes with them."""
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        self.link(self.layer_dir(repository, digest), digest, mtime)
        self.blob(content, mtime)
        return digest

    def revision(self, repository: str, manifest: dict[str, object], mtime: float = T0) -> str:
        """A manifest cached in REPOSITORY: its blob and its revision link."""
        digest = self.blob(json.dumps(manifest, indent=3).encode(), mtime)
        self.link(self.revision_dir(repository, digest), digest, mtime)
        return digest

    def tag(self, repository: str, tag: str, digest: str, mtime: float = T0) -> None:
        """TAG of REPOSITORY naming DIGEST: its current link and its index entry."""
        self.link(self.tag_dir(repository, tag) / "current", digest, mtime)
        self.link(self.tag_dir(repository, tag) / "index" / "sha256" / self.hex(digest), digest, mtime)

    def image(self, repository: str, name: str, layers: Iterable[bytes], tag: str | None = None,
              mtime: float = T0) -> str:
        """An image manifest cached in REPOSITORY with a config of its own (NAME) and LAYERS, all pulled through
        REPOSITORY; tagged TAG when given. Its digest. Written as a pull through the mirror caches it: the manifest
        and its tag first (distribution stores them when the client fetches the manifest), then the config and the
        layers (as the client fetches them), so that the image is complete when its last blob appears."""
        blobs = [json.dumps({"architecture": "amd64", "name": name}).encode(), *layers]
        config, *digests = ["sha256:" + hashlib.sha256(content).hexdigest() for content in blobs]
        descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(content),
                        "digest": digest} for content, digest in zip(blobs[1:], digests, strict=True)]
        digest = self.revision(repository, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": descriptors}, mtime)
        if tag:
            self.tag(repository, tag, digest, mtime)
        for content in blobs:
            self.layer(repository, content, mtime)
        return digest

    def index(self, repository: str, children: Iterable[str], tag: str | None = None, mtime: float = T0) -> str:
        """An image index listing CHILDREN cached in REPOSITORY, tagged TAG when given. Its digest."""
        digest = self.revision(repository, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": 1, "platform": {"os": "linux", "architecture": arch}}
            for child, arch in zip(children, ("amd64", "arm64", "s390x"), strict=False)]}, mtime)
        if tag:
            self.tag(repository, tag, digest, mtime)
        return digest

    def files(self) -> dict[str, float]:
        """Every file and directory under the root -> its modification time."""
        return {str(path.relative_to(self.root)): path.lstat().st_mtime for path in self.root.rglob("*")}


def layer_bytes(seed: int, size: int) -> bytes:
    """Layer content of SIZE bytes, distinct per SEED."""
    return bytes([seed % 256]) * (size - 1) + bytes([seed // 256])
