# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_cache on real distribution filesystem storages built in a temporary directory (Layout): blobs named by
the sha256 of their content, manifests as JSON blobs, links written where and as distribution writes them."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from world.cache_layout import GRACE_END, T0, Layout, layer_bytes

FILES = Path(__file__).resolve().parents[3] / "roles" / "registry_mirror" / "files"
if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_cache  # noqa: E402
from registry_cache import Image, Inventory  # noqa: E402


def unknown_digest(seed: str) -> str:
    """The digest of content the store does not have."""
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def by_key(inventory: Inventory) -> dict[tuple[str, str], Image]:
    """The images of INVENTORY by (repository, digest)."""
    return {(image.repository, image.digest): image for image in inventory.images}


def only(inventory: Inventory, repository: str) -> Image:
    """The one image of REPOSITORY."""
    images = [image for image in inventory.images if image.repository == repository]
    assert len(images) == 1, images
    return images[0]


@pytest.fixture(name="layout")
def fixture_layout(tmp_path: Path) -> Layout:
    """An empty storage root (registry's rootdirectory) with the files distribution and the supervisor keep there."""
    layout = Layout(tmp_path / "registry")
    (layout.root / "scheduler-state.json").write_text("{}")
    (layout.root / registry_cache.USAGE_FILE).write_text('{"version": 1, "used": {}}')
    return layout


def test_scan_reads_images_tags_manifests_blobs_and_sizes(layout: Layout) -> None:
    """An image's fields come from the links and the manifest, the blob sizes from the data files; a blob directory
    without data is no blob; a blob no manifest references counts in the total, not in what the images reference."""
    digest = layout.image("library/alpine", "alpine", [layer_bytes(1, 1000), layer_bytes(2, 500)], tag="3.20")
    layout.tag("library/alpine", "latest", digest)
    manifest = json.loads((layout.blob_dir(digest) / "data").read_bytes())
    config, layers = manifest["config"]["digest"], [layer["digest"] for layer in manifest["layers"]]
    stray = layout.layer("library/alpine", b"pulled, not referenced")
    (layout.blob_dir(unknown_digest("partial"))).mkdir(parents=True)

    inventory = registry_cache.scan(layout.root, {})

    assert inventory.images == [Image("library/alpine", digest, ("3.20", "latest"), frozenset({digest}),
                                      frozenset({digest, config, *layers}), T0)]
    sizes = {blob: (layout.blob_dir(blob) / "data").stat().st_size for blob in (digest, config, *layers, stray)}
    assert inventory.blob_sizes == sizes
    assert inventory.blob_sizes[layers[0]] == 1000
    assert inventory.total_bytes() == sum(sizes.values()) == registry_cache.cache_bytes(layout.root)
    assert inventory.referenced_bytes(inventory.images) == inventory.total_bytes() - sizes[stray]


@pytest.mark.parametrize(("usage_delay", "tag_delay", "revision_delay", "expected"), [
    (None, 0, 0, T0),
    (None, 30, 0, T0 + 30),       # pulled by tag: distribution rewrote the tag's current link
    (None, 0, 40, T0 + 40),       # cached later than its tag was written (another tag named it first)
    (50, 30, 0, T0 + 50),         # the supervisor's usage time (a pull notification)
    (10, 30, 0, T0 + 30),         # the latest of them
])
def test_last_used_is_the_latest_of_the_usage_the_tag_links_and_the_revision_link(
        layout: Layout, usage_delay: float | None, tag_delay: float, revision_delay: float, expected: float) -> None:
    """last_used: the max of the usage time of any manifest, the tags' current links and the root revision link."""
    digest = layout.image("library/alpine", "alpine", [b"layer"], tag="3.20")
    os.utime(layout.tag_dir("library/alpine", "3.20") / "current" / "link", (T0, T0 + tag_delay))
    os.utime(layout.revision_dir("library/alpine", digest) / "link", (T0, T0 + revision_delay))
    usage = {} if usage_delay is None else {("library/alpine", digest): T0 + usage_delay}
    usage[("library/busybox", digest)] = T0 + 1000  # another repository's use of the same manifest does not count

    assert only(registry_cache.scan(layout.root, usage), "library/alpine").last_used == expected


def test_a_pull_of_an_index_child_counts_for_its_image(layout: Layout) -> None:
    """A pull by digest of a platform's manifest (the usage of a child) makes its index's image recent."""
    child = layout.image("library/alpine", "alpine-amd64", [b"layer"])
    root = layout.index("library/alpine", [child], tag="3.20")

    image = only(registry_cache.scan(layout.root, {("library/alpine", child): T0 + 70}), "library/alpine")

    assert (image.digest, image.last_used) == (root, T0 + 70)


def three_images(layout: Layout) -> tuple[str, str, str]:
    """library/a, b and c, each with a 10000-byte layer of its own; their digests."""
    digests = [layout.image(f"library/{name}", name, [layer_bytes(seed, 10000)], tag="latest")
               for seed, name in enumerate("abc")]
    return digests[0], digests[1], digests[2]


def test_plan_evicts_the_least_recently_used_images_first_by_usage(layout: Layout) -> None:
    """With usage times b < c < a, b goes first, then c; a target below everything evicts all in that order."""
    a, b, c = three_images(layout)
    usage = {("library/a", a): T0 + 300, ("library/b", b): T0 + 100, ("library/c", c): T0 + 200}
    inventory = registry_cache.scan(layout.root, usage)
    total = inventory.referenced_bytes(inventory.images)

    assert [image.repository for image in inventory.plan(total - 1)] == ["library/b"]
    assert [image.repository for image in inventory.plan(total - 20001)] == ["library/b", "library/c"]
    assert [image.repository for image in inventory.plan(0)] == ["library/b", "library/c", "library/a"]


def test_plan_evicts_the_least_recently_used_images_first_by_link_times(layout: Layout) -> None:
    """Without usage times the link times decide (c's tag rewritten last, a cached after b); equal times go by
    repository name."""
    a, b, _c = three_images(layout)
    os.utime(layout.revision_dir("library/a", a) / "link", (T0, T0 + 20))
    os.utime(layout.tag_dir("library/c", "latest") / "current" / "link", (T0, T0 + 30))
    os.utime(layout.revision_dir("library/b", b) / "link", (T0, T0 + 10))
    assert [image.repository for image in registry_cache.scan(layout.root).plan(0)] == [
        "library/b", "library/a", "library/c"]


def test_images_used_at_the_same_time_go_by_repository_then_digest(layout: Layout) -> None:
    """Equal last-use times: by repository name, then by digest within a repository (here library/y's first image
    has a smaller digest than library/x's, so that neither order alone would do)."""
    x = layout.image("library/x", "x", [b"x"])
    y = [layout.image("library/y", "y0", [b"y"])]
    while y[-1] > x:
        y.append(layout.image("library/y", f"y{len(y)}", [b"y"]))
    y.append(layout.image("library/y", "last", [b"y"]))

    assert [image.digest for image in registry_cache.scan(layout.root).plan(0)] == [x, *sorted(y)]


def test_plan_stops_as_soon_as_the_images_left_fit(layout: Layout) -> None:
    """Nothing when the images already fit (total = target); each image just enough, never one more."""
    three_images(layout)
    inventory = registry_cache.scan(layout.root)
    ordered = [image for image, _left in inventory.evictions()]
    total = inventory.referenced_bytes(inventory.images)
    without_first = inventory.referenced_bytes(ordered[1:])

    assert inventory.plan(total) == []
    assert inventory.plan(10**12) == []
    assert inventory.plan(total - 1) == ordered[:1]
    assert inventory.plan(without_first) == ordered[:1]
    assert inventory.plan(without_first - 1) == ordered[:2]


@pytest.mark.parametrize("other", ["library/a", "library/b"])
def test_a_blob_shared_with_a_kept_image_stays_and_is_not_counted_as_freed(layout: Layout, other: str) -> None:
    """A (least recently used) and B share a big base layer, in the same repository or in two: evicting A frees
    only what is A's own, the base layer stays (with its _layers link in the same repository)."""
    base = layer_bytes(7, 50000)
    a = layout.image("library/a", "a", [base, layer_bytes(1, 100)], tag="old", mtime=T0)
    b = layout.image(other, "b", [base, layer_bytes(2, 100)], tag="new", mtime=T0 + 100)
    base_digest = "sha256:" + hashlib.sha256(base).hexdigest()
    inventory = registry_cache.scan(layout.root)
    image_a, image_b = by_key(inventory)[("library/a", a)], by_key(inventory)[(other, b)]
    kept_bytes = inventory.referenced_bytes([image_b])

    assert inventory.plan(kept_bytes - 1) == [image_a, image_b]  # A's eviction alone cannot go below B's bytes
    assert inventory.plan(kept_bytes) == [image_a]

    registry_cache.evict(layout.root, [image_a], inventory)
    assert registry_cache.sweep(layout.root, GRACE_END) == (inventory.total_bytes() - kept_bytes, 3)

    assert (layout.blob_dir(base_digest) / "data").read_bytes() == base
    assert (layout.layer_dir(other, base_digest) / "link").is_file()
    assert registry_cache.check(layout.root) == []
    assert registry_cache.cache_bytes(layout.root) == kept_bytes
    assert registry_cache.scan(layout.root).images == [image_b]


@pytest.mark.parametrize("absent_child_blob", [False, True])
def test_an_index_is_one_image_with_the_children_cached(layout: Layout, absent_child_blob: bool) -> None:
    """An index with two platforms, one pulled (revision, config, layers) and one not: one image with the pulled
    child; when the other child's blob happens to be stored (without a revision) it belongs to the image too."""
    pulled = layout.image("library/alpine", "amd64", [layer_bytes(1, 2000)])
    if absent_child_blob:
        other = unknown_digest("arm64 manifest, never pulled")
    else:
        other = layout.blob(json.dumps({"schemaVersion": 2, "layers": []}).encode())
    root = layout.index("library/alpine", [pulled, other], tag="3.20")
    child = json.loads((layout.blob_dir(pulled) / "data").read_bytes())
    child_blobs = {child["config"]["digest"], *(layer["digest"] for layer in child["layers"])}

    inventory = registry_cache.scan(layout.root)

    expected_blobs = {root, pulled, *child_blobs} | (set() if absent_child_blob else {other})
    assert inventory.images == [Image("library/alpine", root, ("3.20",), frozenset({root, pulled}),
                                      frozenset(expected_blobs), T0)]
    assert registry_cache.check(layout.root) == []
    assert registry_cache.sweep(layout.root, GRACE_END) == (0, 0)  # the stored child's blob is referenced

    done = registry_cache.evict(layout.root, inventory.images, inventory)

    assert done == registry_cache.Evicted(tags=1, revisions=2, layer_links=2, repositories=1)
    assert not (layout.v2 / "repositories" / "library").exists()
    assert registry_cache.sweep(layout.root, GRACE_END).blobs_removed == len(expected_blobs)
    assert registry_cache.cache_bytes(layout.root) == 0


def test_evict_removes_the_images_links_and_leaves_the_others(layout: Layout) -> None:
    """Evicting alpine:3.19 removes its tag, its revision and the _layers links of its own blobs; alpine:3.20 (which
    shares its base layer) and busybox keep all theirs; a repository is removed with its last image, its parent
    directory with its last repository, never repositories/ itself."""
    base = layer_bytes(9, 3000)
    old = layout.image("library/alpine", "alpine 3.19", [base, layer_bytes(1, 100)], tag="3.19", mtime=T0)
    new = layout.image("library/alpine", "alpine 3.20", [base, layer_bytes(2, 100)], tag="3.20", mtime=T0 + 10)
    busybox = layout.image("library/busybox", "busybox", [layer_bytes(3, 100)], tag="latest", mtime=T0 + 5)
    (layout.repository("library/busybox") / "_uploads" / "abandoned").mkdir(parents=True)
    inventory = registry_cache.scan(layout.root)
    images = by_key(inventory)
    old_image, new_image = images[("library/alpine", old)], images[("library/alpine", new)]
    before = layout.files()

    done = registry_cache.evict(layout.root, [old_image], inventory)

    assert done == registry_cache.Evicted(tags=1, revisions=1, layer_links=2, repositories=0)
    assert not (layout.v2 / registry_cache.TRASH).exists()
    after = layout.files()
    removed = {Path(path) for path in before if path not in after}
    alpine = layout.repository("library/alpine").relative_to(layout.root)
    assert {str(path.relative_to(alpine)) for path in removed if path.parent not in removed} == {
        "_manifests/tags/3.19", f"_manifests/revisions/sha256/{layout.hex(old)}",
        *(f"_layers/sha256/{layout.hex(blob)}" for blob in old_image.blobs - new_image.blobs - {old})}
    assert registry_cache.check(layout.root) == []  # unreferenced blobs are not problems: sweep deletes them
    assert {(image.repository, image.digest) for image in registry_cache.scan(layout.root).images} == {
        ("library/alpine", new), ("library/busybox", busybox)}

    inventory = registry_cache.scan(layout.root)
    busybox_image = by_key(inventory)[("library/busybox", busybox)]
    assert registry_cache.evict(layout.root, [busybox_image], inventory).repositories == 1
    assert not layout.repository("library/busybox").exists()
    assert layout.repository("library/alpine").is_dir()

    inventory = registry_cache.scan(layout.root)
    registry_cache.evict(layout.root, inventory.images, inventory)
    assert list((layout.v2 / "repositories").iterdir()) == []
    assert registry_cache.sweep(layout.root, GRACE_END).blobs_removed == len(inventory.blob_sizes)
    assert registry_cache.cache_bytes(layout.root) == 0
    assert (layout.root / "scheduler-state.json").is_file()


def test_a_tag_on_a_child_shared_with_a_kept_index_stays(layout: Layout) -> None:
    """Two indexes (old, new) share the amd64 manifest, tagged by digest as `pinned`: evicting the old index keeps
    the shared child's revision and its tag; the new index is whole."""
    shared = layout.image("library/alpine", "amd64", [layer_bytes(1, 100)], tag="pinned")
    arm = layout.image("library/alpine", "arm64", [layer_bytes(2, 100)])
    old = layout.index("library/alpine", [shared, arm], tag="old", mtime=T0)
    new = layout.index("library/alpine", [shared], tag="new", mtime=T0 + 10)
    inventory = registry_cache.scan(layout.root)
    images = by_key(inventory)
    assert images[("library/alpine", old)].tags == ("old", "pinned")
    assert images[("library/alpine", new)].tags == ("new", "pinned")

    done = registry_cache.evict(layout.root, [images[("library/alpine", old)]], inventory)

    assert (done.tags, done.revisions) == (1, 2)  # old; the old index and arm64
    assert layout.tag_dir("library/alpine", "pinned").is_dir()
    assert layout.revision_dir("library/alpine", shared).is_dir()
    registry_cache.sweep(layout.root, GRACE_END)
    assert registry_cache.check(layout.root) == []
    assert [image.digest for image in registry_cache.scan(layout.root).images] == [new]


def failing_after(remove: Callable[[str, str], bool], limit: int) -> Callable[[str, str], bool]:
    """REMOVE (registry_cache._remove), failing from its LIMIT + 1st call on."""
    calls = [0]

    def counting(v2: str, path: str) -> bool:
        calls[0] += 1
        if calls[0] > limit:
            raise OSError("interrupted")
        return remove(v2, path)

    return counting


def test_nested_repositories_survive_their_parents_removal(layout: Layout) -> None:
    """a/b and a/b/c are two repositories: evicting a/b's only image removes its own directories, not a/b/c."""
    parent = layout.image("a/b", "b", [layer_bytes(1, 100)], tag="latest")
    nested = layout.image("a/b/c", "c", [layer_bytes(2, 100)], tag="latest")
    (layout.repository("a/b") / "_uploads" / "some-upload").mkdir(parents=True)
    inventory = registry_cache.scan(layout.root)
    assert sorted(by_key(inventory)) == [("a/b", parent), ("a/b/c", nested)]

    assert registry_cache.evict(layout.root, [by_key(inventory)[("a/b", parent)]], inventory).repositories == 1

    assert sorted(path.name for path in layout.repository("a/b").iterdir()) == ["c"]
    registry_cache.sweep(layout.root, GRACE_END)
    assert registry_cache.check(layout.root) == []
    inventory = registry_cache.scan(layout.root)
    assert [(image.repository, image.digest) for image in inventory.images] == [("a/b/c", nested)]

    registry_cache.evict(layout.root, inventory.images, inventory)
    assert list((layout.v2 / "repositories").iterdir()) == []


class Listing:
    """os.scandir's context manager, its entries sorted by name."""

    scandir = os.scandir

    def __init__(self, path: str) -> None:
        self.entries = sorted(Listing.scandir(path), key=lambda entry: entry.name)

    def __enter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self.entries)

    def __iter__(self) -> Iterator[os.DirEntry[str]]:  # pathlib's walk iterates it directly (Python 3.12+)
        return iter(self.entries)

    def __exit__(self, *_: object) -> None:
        return None


def test_an_interrupted_eviction_leaves_every_image_whole(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after each of its removals in turn, an eviction leaves no tag naming a missing revision, no tag
    without its current link (directories list by name here: a tag's current before its index), no manifest without
    its blobs or links."""
    monkeypatch.setattr(os, "scandir", Listing)
    shared = layout.image("library/alpine", "amd64", [layer_bytes(1, 100)])
    arm = layout.image("library/alpine", "arm64", [layer_bytes(2, 100)])
    layout.index("library/alpine", [shared, arm], tag="3.19")
    layout.tag("library/alpine", "3", layout.index("library/alpine", [shared, arm, unknown_digest("s390x")]))
    layout.image("library/alpine", "edge", [layer_bytes(3, 100)], tag="edge", mtime=T0 + 10)
    pristine = {path: (layout.root / path).read_bytes() for path in layout.files() if (layout.root / path).is_file()}
    remove = registry_cache._remove
    interrupted_at = []
    for limit in range(100):
        for path, content in pristine.items():  # back to the layout before the eviction
            Layout.write(layout.root / path, content, T0)
        inventory = registry_cache.scan(layout.root)
        monkeypatch.setattr(registry_cache, "_remove", failing_after(remove, limit))
        try:
            registry_cache.evict(layout.root, inventory.plan(0)[:2], inventory)
        except OSError:
            interrupted_at.append(limit)
        else:
            break
        finally:
            monkeypatch.setattr(registry_cache, "_remove", remove)
        assert registry_cache.check(layout.root) == [], f"interrupted after {limit} removals"
    assert len(interrupted_at) > 10  # the eviction was interrupted at each of its removals, then ran through


def sweep_layout(layout: Layout) -> dict[str, str]:
    """Two kept images, three blobs nothing references (linked in one repository or the other): two old, one young;
    their digests, and a digest for a _layers link whose blob is gone."""
    kept = layout.image("library/alpine", "alpine", [layer_bytes(1, 100)], tag="latest")
    layout.image("library/busybox", "busybox", [layer_bytes(5, 100)], tag="latest")
    return {
        "kept": kept,
        "old": layout.layer("library/alpine", layer_bytes(2, 700), mtime=T0),
        "older": layout.layer("library/busybox", layer_bytes(3, 800), mtime=T0 - 5),
        "young": layout.layer("library/alpine", layer_bytes(4, 900), mtime=T0 + 100),
        "dangling": unknown_digest("expired by the proxy's TTL"),
    }


def test_sweep_deletes_only_unreferenced_blobs_older_than_the_grace(layout: Layout) -> None:
    """Unreferenced blobs written before the grace go with their _layers links, in any repository; referenced and
    young ones stay; a link to a blob already gone goes too."""
    digests = sweep_layout(layout)
    layout.link(layout.layer_dir("library/alpine", digests["dangling"]), digests["dangling"])
    referenced = by_key(registry_cache.scan(layout.root))[("library/alpine", digests["kept"])].blobs

    assert registry_cache.sweep(layout.root, T0 + 50) == (700 + 800, 2)

    assert not layout.blob_dir(digests["old"]).exists() and not layout.blob_dir(digests["older"]).exists()
    assert not layout.layer_dir("library/alpine", digests["old"]).exists()
    assert not layout.layer_dir("library/busybox", digests["older"]).exists()
    assert not layout.layer_dir("library/alpine", digests["dangling"]).exists()
    assert (layout.blob_dir(digests["young"]) / "data").is_file()
    assert (layout.layer_dir("library/alpine", digests["young"]) / "link").is_file()
    assert all((layout.blob_dir(blob) / "data").is_file() for blob in referenced)
    assert all((layout.layer_dir("library/alpine", blob) / "link").is_file() for blob in referenced - {digests["kept"]})
    assert registry_cache.check(layout.root) == []
    assert registry_cache.sweep(layout.root, T0 + 50) == (0, 0)
    assert registry_cache.sweep(layout.root, T0 + 101) == (900, 1)


def test_sweep_stops_between_deletions_when_asked(layout: Layout) -> None:
    """should_stop is asked before each deletion: stopping after the first leaves the rest for the next sweep."""
    digests = sweep_layout(layout)
    orphans = {digests[name]: (repository, size) for name, repository, size in (
        ("old", "library/alpine", 700), ("older", "library/busybox", 800), ("young", "library/alpine", 900))}
    asked = []

    def stop_after_one() -> bool:
        """True from the second question on."""
        asked.append(True)
        return len(asked) > 1

    assert registry_cache.sweep(layout.root, GRACE_END, lambda: True) == (0, 0)
    assert all(layout.blob_dir(digest).exists() for digest in orphans)
    reclaimed, removed = registry_cache.sweep(layout.root, GRACE_END, stop_after_one)
    gone = [digest for digest in orphans if not layout.blob_dir(digest).exists()]
    assert (len(asked), removed, len(gone)) == (2, 1, 1)
    assert reclaimed == orphans[gone[0]][1]
    assert registry_cache.sweep(layout.root, GRACE_END) == (700 + 800 + 900 - reclaimed, 2)
    assert not any(layout.blob_dir(digest).exists() or layout.layer_dir(orphans[digest][0], digest).exists()
                   for digest in orphans)
    assert registry_cache.check(layout.root) == []


def broken_layout(layout: Layout) -> dict[str, str]:
    """One problem of each kind, in repositories of their own; their digests."""
    layout.image("library/clean", "clean", [b"fine"], tag="latest")
    layout.tag("dangling/tag", "gone", unknown_digest("a manifest never stored"))
    layout.image("dangling/tag", "kept", [b"ok"], tag="ok")
    missing = unknown_digest("manifest blob deleted")
    layout.link(layout.revision_dir("missing/manifest", missing), missing)
    garbage = layout.blob(b"\x00not json")
    layout.link(layout.revision_dir("garbage/manifest", garbage), garbage)
    config_gone = layout.image("missing/config", "c", [b"layer"])
    layer_gone = layout.image("missing/layer", "l", [b"only here"])
    unlinked = layout.image("unlinked/layer", "u", [b"pulled elsewhere"])
    foreign_layer = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar",
                     "digest": unknown_digest("windows"), "urls": ["https://x"]}
    foreign_config = layout.layer("foreign/layer", b"config")
    foreign = layout.revision("foreign/layer", {"schemaVersion": 2, "config": {"digest": foreign_config},
                                                "layers": [foreign_layer]})
    digests = {"missing": missing, "garbage": garbage, "config_gone": config_gone, "layer_gone": layer_gone,
               "unlinked": unlinked, "foreign": foreign}
    for name, digest in (("config_gone", config_gone), ("layer_gone", layer_gone), ("unlinked", unlinked)):
        manifest = json.loads((layout.blob_dir(digest) / "data").read_bytes())
        digests[f"{name}_blob"] = manifest["config"]["digest"] if name == "config_gone" else manifest["layers"][0][
            "digest"]
    (layout.blob_dir(digests["config_gone_blob"]) / "data").unlink()
    (layout.blob_dir(digests["layer_gone_blob"]) / "data").unlink()
    for path in layout.layer_dir("unlinked/layer", digests["unlinked_blob"]).iterdir():
        path.unlink()
    return digests


def test_check_finds_each_kind_of_problem_and_none_on_a_clean_store(layout: Layout) -> None:
    """Each problem names its repository and digest; a foreign layer (never stored by a registry) is no problem."""
    assert registry_cache.check(layout.root) == []
    layout.image("library/clean", "clean", [b"fine"], tag="latest")
    assert registry_cache.check(layout.root) == []
    digests = broken_layout(layout)

    problems = registry_cache.check(layout.root)

    assert problems == [
        f"dangling/tag:gone: the tag names {unknown_digest('a manifest never stored')}, which has no revision in the "
        "repository",
        f"garbage/manifest@{digests['garbage']}: the manifest's blob is not JSON",
        f"missing/config@{digests['config_gone']}: its config {digests['config_gone_blob']} is missing from the blob "
        "store",
        f"missing/layer@{digests['layer_gone']}: its layer {digests['layer_gone_blob']} is missing from the blob store",
        f"missing/manifest@{digests['missing']}: the manifest's blob is missing",
        f"unlinked/layer@{digests['unlinked']}: its layer {digests['unlinked_blob']} is not linked in the repository "
        "(no _layers link): the read-only registry cannot serve it",
    ]


def test_check_reports_a_tag_without_a_readable_current_link(layout: Layout) -> None:
    """A tag directory whose current link is missing or holds no digest."""
    layout.image("library/alpine", "alpine", [b"layer"], tag="ok")
    (layout.tag_dir("library/alpine", "empty") / "current").mkdir(parents=True)
    Layout.write(layout.tag_dir("library/alpine", "junk") / "current" / "link", b"sha256:xyz", T0)

    assert registry_cache.check(layout.root) == [f"library/alpine:{tag}: the tag's current link is missing or names no "
                                                 "sha256 digest" for tag in ("empty", "junk")]


def rich_layout(layout: Layout) -> None:
    """Repositories with shared layers, an index with a platform not pulled, nested repositories, usage times."""
    base = layer_bytes(100, 4000)
    for number in range(4):
        layout.image("library/fill", f"fill{number}", [base, layer_bytes(number, 1000 * (number + 1))],
                     tag=f"v{number}", mtime=T0 + number)
    amd = layout.image("library/python", "amd64", [base, layer_bytes(10, 3000)])
    arm = layout.image("library/python", "arm64", [layer_bytes(11, 3000)])
    layout.index("library/python", [amd, arm, unknown_digest("s390x")], tag="3.12", mtime=T0 + 2.5)
    layout.image("org/app", "app", [base, layer_bytes(12, 500)], tag="latest", mtime=T0 + 1.5)
    layout.image("org/app/worker", "worker", [layer_bytes(12, 500), layer_bytes(13, 700)], tag="latest",
                 mtime=T0 + 0.5)


@pytest.mark.parametrize("fraction", [1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
def test_no_kept_manifest_loses_a_blob_after_evict_and_sweep(layout: Layout, fraction: float) -> None:
    """For budgets from everything to nothing: the plan's images evicted and a sweep leave a store check() finds
    whole, holding exactly the kept images with all their blobs, and no more bytes than the plan said."""
    rich_layout(layout)
    inventory = registry_cache.scan(layout.root)
    target = int(inventory.referenced_bytes(inventory.images) * fraction)
    evicted = inventory.plan(target)
    kept = [image for image in inventory.images if image not in evicted]

    registry_cache.evict(layout.root, evicted, inventory)
    registry_cache.sweep(layout.root, GRACE_END)

    assert registry_cache.check(layout.root) == []
    after = registry_cache.scan(layout.root)
    assert {(image.repository, image.digest, image.manifests, image.blobs) for image in after.images} == {
        (image.repository, image.digest, image.manifests, image.blobs) for image in kept}
    assert registry_cache.cache_bytes(layout.root) == inventory.referenced_bytes(kept)
    assert inventory.referenced_bytes(kept) <= target or not kept
    assert bool(evicted) == (fraction < 1.0)


def test_an_empty_or_missing_storage_is_an_empty_cache(tmp_path: Path) -> None:
    """No storage root, an empty one, an empty layout: nothing to scan, plan, evict, sweep or report."""
    empty_layout = tmp_path / "layout"
    (empty_layout / "docker" / "registry" / "v2" / "blobs").mkdir(parents=True)
    (empty_layout / "docker" / "registry" / "v2" / "repositories").mkdir()
    for root in (tmp_path / "missing", tmp_path, empty_layout):
        inventory = registry_cache.scan(root, {})
        assert (inventory.images, inventory.blob_sizes, inventory.total_bytes()) == ([], {}, 0)
        assert inventory.plan(0) == []
        assert registry_cache.evict(root, [], inventory) == registry_cache.Evicted()
        assert registry_cache.sweep(root, GRACE_END) == (0, 0)
        assert registry_cache.check(root) == []
        assert registry_cache.cache_bytes(root) == 0


def test_files_vanishing_during_the_walk_are_gone(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob deleted, a repository's directory removed between the listing and the read: no error."""
    digest = layout.image("library/alpine", "alpine", [layer_bytes(1, 100)], tag="latest")
    vanishing = layout.layer("library/alpine", b"vanishing")
    stat, scandir = os.lstat, os.scandir

    def lstat(path: str | os.PathLike[str]) -> os.stat_result:
        """os.lstat, as if the data of the vanishing blob was deleted after its directory was listed."""
        if str(path).endswith(os.path.join(layout.hex(vanishing), "data")):
            raise FileNotFoundError(path)
        return stat(path)

    def listing(path: str) -> object:
        """os.scandir, as if the tags directory was removed after its repository was listed."""
        if str(path).endswith(os.path.join("_manifests", "tags")):
            raise FileNotFoundError(path)
        return scandir(path)

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "scandir", listing)
    inventory = registry_cache.scan(layout.root)

    assert vanishing not in inventory.blob_sizes
    assert [(image.digest, image.tags) for image in inventory.images] == [(digest, ())]
    assert registry_cache.cache_bytes(layout.root) == inventory.total_bytes()


def test_symbolic_links_are_never_followed(layout: Layout, tmp_path: Path) -> None:
    """A repository or a blob that is a symbolic link to elsewhere is not part of the cache: not scanned, not
    deleted, not counted; a symbolic link in place of a layout directory is an error."""
    layout.image("library/alpine", "alpine", [b"layer"], tag="latest")
    outside = Layout(tmp_path / "outside")
    foreign_image = outside.image("library/evil", "evil", [b"outside layer"], tag="latest")
    foreign_blob = outside.blob(b"outside blob")
    os.symlink(outside.repository("library/evil"), layout.repository("library/evil"))
    link_dir = layout.blob_dir(foreign_blob)
    link_dir.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside.blob_dir(foreign_blob), link_dir)
    before = outside.files()

    assert [image.repository for image in registry_cache.scan(layout.root).images] == ["library/alpine"]
    assert foreign_blob not in registry_cache.scan(layout.root).blob_sizes
    assert registry_cache.sweep(layout.root, GRACE_END) == (0, 0)
    assert outside.files() == before and (outside.blob_dir(foreign_image) / "data").is_file()

    repositories = layout.v2 / "repositories"
    repositories.rename(layout.v2 / "real-repositories")
    os.symlink(layout.v2 / "real-repositories", repositories)
    actions: list[Callable[[Path], object]] = [registry_cache.scan, registry_cache.check,
                                               lambda root: registry_cache.sweep(root, GRACE_END)]
    for action in actions:
        with pytest.raises(registry_cache.StorageError, match="repositories is a symbolic link"):
            action(layout.root)
    assert outside.files() == before


def test_manifest_formats() -> None:
    """Docker manifest lists, schema 2 and schema 1 manifests reference their blobs; malformed digests and non-manifest
    JSON are ignored or reported."""
    digest_a, digest_b = unknown_digest("a"), unknown_digest("b")
    manifest_list = registry_cache._parse_manifest(json.dumps({
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"digest": digest_a}, {"digest": "sha256:short"}, "junk"]}).encode())
    schema2 = registry_cache._parse_manifest(json.dumps({
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json", "config": {"digest": digest_a},
        "layers": [{"digest": digest_b}, {"digest": digest_b}, {"digest": 5}]}).encode())
    schema1_document = json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": digest_b}]})
    schema1 = registry_cache._parse_manifest(schema1_document.encode())

    assert (manifest_list.children, manifest_list.blobs, manifest_list.error) == ((digest_a,), (), "")
    assert (schema2.children, schema2.blobs) == ((), (("config", digest_a), ("layer", digest_b)))
    assert schema1.references() == (digest_b,)
    assert registry_cache._parse_manifest(b"[1]").error == "is not a JSON object"
    assert registry_cache._parse_manifest(b'{"errors": []}').error.startswith("has none of")
    assert registry_cache._parse_manifest(b"\xff\xfe").error == "is not JSON"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the command line ARGV, run in this process."""
    try:
        status = registry_cache.main(list(argv))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_check(layout: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    """check: `no problems` and 0 on a whole cache, the problems and 1 otherwise."""
    layout.image("library/alpine", "alpine", [b"layer"], tag="latest")
    assert run_cli(capsys, "check", str(layout.root)) == (0, "no problems\n", "")
    digests = broken_layout(layout)
    status, out, err = run_cli(capsys, "check", str(layout.root))
    assert (status, len(out.splitlines()), err) == (1, 6, "")
    assert f"missing/manifest@{digests['missing']}: the manifest's blob is missing" in out.splitlines()


def test_cli_du_and_plan_change_nothing(layout: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    """du: bytes, blobs, images; plan: the images in eviction order (the usage file's times first), what each frees,
    sizes with unit suffixes; nothing on disk changes."""
    a, b, c = three_images(layout)
    (layout.root / registry_cache.USAGE_FILE).write_text(json.dumps({"version": 1, "used": {
        f"library/a@{a}": T0 + 300, f"library/b@{b}": T0 + 100, f"library/c@{c}": T0 + 200}}))
    inventory = registry_cache.scan(layout.root)
    total = inventory.total_bytes()
    before = layout.files()

    assert run_cli(capsys, "du", str(layout.root)) == (
        0, f"{total} bytes in 9 blobs; 3 images reference {total} bytes\n", "")
    status, out, _err = run_cli(capsys, "plan", str(layout.root), str(total - 20001))
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3, out
    assert lines[0].startswith(f"evict library/b@{b} (latest): last used 2023-11-14 22:15:00Z, frees ")
    assert lines[1].startswith(f"evict library/c@{c} (latest)")
    assert lines[2].startswith("would evict 2 of 3 images: ")
    assert run_cli(capsys, "plan", str(layout.root), "1M")[1].startswith("nothing to evict: the 3 images reference ")
    assert layout.files() == before


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("1536", 1536), ("20G", 20 << 30), ("3 MiB", 3 << 20),
                                                ("2k", 2048), ("7B", 7), ("1T", 1 << 40)])
def test_sizes(text: str, expected: int) -> None:
    """plan's BYTES: bytes or powers of 1024."""
    assert registry_cache.parse_size(text) == expected


def test_cli_errors(tmp_path: Path, layout: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 with a message naming the problem: no such directory, the v2 directory itself, another directory, a
    size that is not one; an empty root (nothing cached yet, a filesystem of its own) is an empty cache."""
    layout.image("library/alpine", "alpine", [b"layer"])
    other = tmp_path / "other"
    (other / "some-directory").mkdir(parents=True)
    status, _out, err = run_cli(capsys, "du", str(tmp_path / "missing"))
    assert (status, err) == (2, f"registry_cache: {tmp_path / 'missing'}: no such directory (give the registry's "
                                "storage rootdirectory, e.g. /var/lib/registry)\n")
    status, _out, err = run_cli(capsys, "check", str(layout.v2))
    assert status == 2 and "looks like the storage's docker/registry/v2 directory itself" in err
    status, _out, err = run_cli(capsys, "plan", str(other), "1G")
    assert status == 2 and "is not a distribution filesystem storage" in err
    status, _out, err = run_cli(capsys, "plan", str(layout.root), "lots")
    assert status == 2 and "'lots' is not a size" in err
    assert run_cli(capsys, "check", str(layout.root))[0] == 0
    fresh = tmp_path / "fresh"
    (fresh / "lost+found").mkdir(parents=True)
    assert run_cli(capsys, "du", str(fresh)) == (0, "0 bytes in 0 blobs; 0 images reference 0 bytes\n", "")


def test_cli_as_a_program(layout: Layout) -> None:
    """The file runs as a program (as operators run it on the host)."""
    layout.image("library/alpine", "alpine", [b"layer"], tag="latest")
    layout.tag("library/alpine", "gone", unknown_digest("never stored"))
    result = subprocess.run([sys.executable, str(FILES / "registry_cache.py"), "check", str(layout.root)],
                            capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.startswith("library/alpine:gone: the tag names ")


def test_evict_refuses_names_outside_the_layout(layout: Layout) -> None:
    """An image whose repository or digest is not one of the layout's cannot make evict remove anything else."""
    inventory = registry_cache.scan(layout.root)
    for image in (Image("../../..", unknown_digest("x"), (), frozenset({unknown_digest("x")}), frozenset(), T0),
                  Image("library/alpine", "sha256:../../x", (), frozenset({"sha256:../../x"}), frozenset(), T0)):
        with pytest.raises(ValueError, match="is not a"):
            registry_cache.evict(layout.root, [image], inventory)


def test_sweep_spares_what_a_pull_cached_between_its_walks(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry serves during a collection: an evicted image pulled again after the first walk (its manifest
    cached, its blobs linked) keeps every blob, the evicted one included; the other evicted image's blobs go."""
    again = layout.image("library/again", "again", [layer_bytes(1, 300)], tag="latest")
    gone = layout.image("library/gone", "gone", [layer_bytes(2, 400)], tag="latest")
    inventory = registry_cache.scan(layout.root)
    evicted = [image for image in inventory.images if image.repository in ("library/again", "library/gone")]
    registry_cache.evict(layout.root, evicted, inventory)
    real_marked = registry_cache._Store.marked
    walks: list[set[str]] = []

    def marked_then_pulled(store: object) -> set[str]:
        """The first walk, then a pull of library/again (manifest and tag cached again) before the second."""
        result = real_marked(store)  # type: ignore[arg-type]
        if not walks:
            layout.link(layout.revision_dir("library/again", again), again)
            layout.tag("library/again", "latest", again)
        walks.append(result)
        return result

    monkeypatch.setattr(registry_cache._Store, "marked", marked_then_pulled)
    registry_cache.sweep(layout.root, GRACE_END, evicted=evicted)

    assert len(walks) == 2
    kept = by_key(registry_cache.scan(layout.root))[("library/again", again)]
    assert all((layout.blob_dir(blob) / "data").is_file() for blob in kept.blobs | {again})
    assert not layout.blob_dir(gone).exists()
