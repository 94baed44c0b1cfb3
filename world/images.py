# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The world's images, built with debootstrap from the apt mirror of this machine: actuated-world/target:{amd64,arm64}
(systemd, the server under test) and actuated-world/client:amd64 (hub, VM, off-network client).

Each image carries the hash of its recipe (label org.actuated.world.recipe) and is rebuilt only when the recipe
changes; the pristine debootstrap tree and the customised rootfs are cached under $WORLD_CACHE/rootfs by their own
recipes. Changing CUSTOMIZE_SH, a Dockerfile template or a package list rebuilds the image (a customisation-only
change reuses the debootstrap tree).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import shutil
import time
from pathlib import Path

from .config import (
    ARCHES,
    CACHE,
    CLIENT_IMAGE,
    CLIENT_PACKAGES,
    LABEL_RECIPE,
    LOGS,
    ROOTFS_CACHE,
    SUITE,
    TARGET_IMAGE,
    TARGET_PACKAGES,
    UNAME,
)
from .util import WorldError, image_id, image_label, log, ok, out, read_text, recipe_hash, run, step, write_text

# Applied on the host to a fresh debootstrap tree: $1 = rootfs, $2 = 1 for a systemd image.
CUSTOMIZE_SH = r"""
set -eu
root=$1
systemd=$2
# Empty machine-id: systemd makes a transient one at boot (each container gets its own).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# debootstrap copies the host's files; docker bind-mounts its own over these.
rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
: > "$root/etc/resolv.conf"
echo localhost > "$root/etc/hostname"
# Docker provides /dev; downloaded packages and indexes are useless offline.
rm -rf "$root"/dev/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
mkdir -p "$root/var/lib/apt/lists/partial"
rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root/var/log/bootstrap.log"
if [ "$systemd" = 1 ]; then
    # Under qemu-user emulation (arm64) units using systemd credentials fail with 243/CREDENTIALS.
    # An empty LoadCredential= drops them; harmless on amd64, so both arches get it.
    for unit in systemd-sysusers systemd-tmpfiles-setup systemd-tmpfiles-setup-dev; do
        mkdir -p "$root/etc/systemd/system/$unit.service.d"
        printf '[Service]\nLoadCredential=\n' > "$root/etc/systemd/system/$unit.service.d/world-no-credentials.conf"
    done
    # Nothing logs in on a console in a container; nothing needs these either.
    for unit in getty.target console-getty.service getty@.service serial-getty@.service \
                systemd-remount-fs.service systemd-firstboot.service sys-kernel-config.mount \
                sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
                systemd-update-utmp-runlevel.service e2scrub_all.timer e2scrub_reap.service \
                apt-daily.timer apt-daily-upgrade.timer; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
fi
"""

DOCKERFILE_TARGET = """FROM scratch
ADD rootfs.tar /
ENV container=docker PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL {label}="{recipe}"
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
"""

DOCKERFILE_CLIENT = """FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL {label}="{recipe}"
CMD ["sleep", "infinity"]
"""


@dataclasses.dataclass(frozen=True)
class ImageRecipe:
    """One debootstrap-built image."""

    key: str
    ref: str
    arch: str
    packages: tuple[str, ...]
    systemd: bool

    @property
    def platform(self) -> str:
        """Docker platform string."""
        return f"linux/{self.arch}"

    def dockerfile(self, recipe: str) -> str:
        """The Dockerfile (recipe label filled in)."""
        template = DOCKERFILE_TARGET if self.systemd else DOCKERFILE_CLIENT
        return template.format(label=LABEL_RECIPE, recipe=recipe)

    def recipe(self) -> str:
        """Hash of everything that shapes the image (not the mirror it was fetched from)."""
        return recipe_hash({
            "suite": SUITE, "variant": "minbase", "arch": self.arch, "packages": sorted(self.packages),
            "systemd": self.systemd, "customize": CUSTOMIZE_SH, "dockerfile": self.dockerfile(""),
        })


IMAGES = (
    ImageRecipe("target-amd64", TARGET_IMAGE.format(arch="amd64"), "amd64", TARGET_PACKAGES, True),
    ImageRecipe("client-amd64", CLIENT_IMAGE, "amd64", CLIENT_PACKAGES, False),
    ImageRecipe("target-arm64", TARGET_IMAGE.format(arch="arm64"), "arm64", TARGET_PACKAGES, True),
)


def parse_deb822_uris(text: str) -> list[str]:
    """URIs of deb822 stanzas (apt .sources) that carry the main Debian suite."""
    uris: list[str] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            uris.extend(fields.get("uris", "").split())
    return uris


def apt_mirror() -> str:
    """The Debian mirror apt already uses (deb822 .sources first, then sources.list)."""
    for source in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        uris = parse_deb822_uris(Path(source).read_text(encoding="utf-8"))
        if uris:
            return uris[0]
    for source in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        for raw in read_text(Path(source)).splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            rest = line[4:].strip()
            if rest.startswith("["):
                rest = rest.split("]", 1)[1]
            words = rest.split()
            if len(words) >= 2 and words[1] == SUITE:
                return words[0]
    raise WorldError(f"no '{SUITE}' mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")


def debootstrap_recipe(img: ImageRecipe) -> str:
    """Hash of what debootstrap alone produces (customisations can change without a new debootstrap)."""
    return recipe_hash({"suite": SUITE, "variant": "minbase", "arch": img.arch, "packages": sorted(img.packages)})


def debootstrap(img: ImageRecipe, mirror: str) -> Path:
    """A pristine debootstrap tree as a tarball (cached by its own recipe)."""
    tarball = ROOTFS_CACHE / f"{img.key}-debootstrap.tar"
    stamp = ROOTFS_CACHE / f"{img.key}-debootstrap.recipe"
    recipe = debootstrap_recipe(img)
    if tarball.exists() and read_text(stamp) == recipe:
        log(f"{img.key}: cached debootstrap tree {tarball.name}")
        return tarball
    work = CACHE / "build" / f"{img.key}-debootstrap"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    debcache = CACHE / "debootstrap-cache" / img.arch
    debcache.mkdir(parents=True, exist_ok=True)
    logfile = LOGS / f"{img.key}-debootstrap.log"
    logfile.unlink(missing_ok=True)
    start = time.monotonic()
    log(f"{img.key}: debootstrap {SUITE} {img.arch} from {mirror} (log {logfile})")
    run(["debootstrap", "--variant=minbase", f"--arch={img.arch}", f"--include={','.join(img.packages)}",
         f"--cache-dir={debcache}", SUITE, str(work), mirror], logfile=logfile)
    log(f"{img.key}: debootstrap done in {time.monotonic() - start:.1f}s")
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    return store_tree(work, tarball, stamp, recipe, logfile)


def build_rootfs(img: ImageRecipe, recipe: str, mirror: str) -> Path:
    """The customised rootfs tarball of an image (cached by the image recipe)."""
    tarball = ROOTFS_CACHE / f"{img.key}.tar"
    stamp = ROOTFS_CACHE / f"{img.key}.recipe"
    if tarball.exists() and read_text(stamp) == recipe:
        log(f"{img.key}: cached rootfs {tarball.name}")
        return tarball
    pristine = debootstrap(img, mirror)
    root = CACHE / "build" / f"{img.key}-rootfs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    logfile = LOGS / f"{img.key}-customize.log"
    logfile.unlink(missing_ok=True)
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-xf", str(pristine)], logfile=logfile)
    run(["sh", "-s", "--", str(root), "1" if img.systemd else "0"], stdin=CUSTOMIZE_SH.encode(), logfile=logfile)
    return store_tree(root, tarball, stamp, recipe, logfile)


def store_tree(root: Path, tarball: Path, stamp: Path, recipe: str, logfile: Path) -> Path:
    """Tar ROOT into TARBALL (complete or not at all), record its RECIPE in STAMP, remove ROOT."""
    tmp = tarball.with_name(tarball.name + ".tmp")
    run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(tmp), "."], logfile=logfile)
    tmp.replace(tarball)
    write_text(stamp, recipe + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return tarball


def build_image(img: ImageRecipe, mirror: str) -> None:
    """Build one image unless an image with the same recipe label exists; verify its architecture."""
    recipe = img.recipe()
    if image_label(img.ref, LABEL_RECIPE) == recipe:
        log(f"{img.key}: {img.ref} is up to date (recipe {recipe})")
        return
    start = time.monotonic()
    tarball = build_rootfs(img, recipe, mirror)
    old_id = image_id(img.ref)
    ctx = CACHE / "build" / f"{img.key}-ctx"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    os.link(tarball, ctx / "rootfs.tar")
    write_text(ctx / "Dockerfile", img.dockerfile(recipe))
    log(f"{img.key}: docker build {img.ref}")
    run(["docker", "build", "--platform", img.platform, "-t", img.ref, str(ctx)], env={"DOCKER_BUILDKIT": "0"},
        logfile=LOGS / f"{img.key}-build.log")
    shutil.rmtree(ctx, ignore_errors=True)
    verify_image(img)
    new_id = image_id(img.ref)
    if old_id and old_id != new_id:
        ok(["docker", "image", "rm", old_id])  # the previous recipe's image, if nothing uses it
    log(f"{img.key}: built {img.ref} (recipe {recipe}) in {time.monotonic() - start:.1f}s")


def verify_image(img: ImageRecipe) -> None:
    """The image must be labelled with, and really run as, its architecture."""
    arch = out(["docker", "image", "inspect", "-f", "{{.Architecture}}", img.ref])
    machine = out(["docker", "run", "--rm", "--pull", "never", "--platform", img.platform, "--network", "none",
                   "--entrypoint", "uname", img.ref, "-m"])
    if arch != img.arch or machine != UNAME[img.arch]:
        raise WorldError(f"{img.ref}: image architecture {arch!r}, uname -m {machine!r}; expected {img.arch}")
    log(f"{img.key}: verified architecture {arch}, uname -m {machine}")


def cmd_images() -> None:
    """Build the three images (amd64 ones sequentially, arm64 alongside)."""
    with step("images"):
        todo = [img for img in IMAGES if image_label(img.ref, LABEL_RECIPE) != img.recipe()]
        if not todo:
            for img in IMAGES:
                log(f"{img.key}: {img.ref} is up to date (recipe {img.recipe()})")
            return
        mirror = apt_mirror()
        groups = [[img for img in todo if img.arch == arch] for arch in ARCHES]
        groups = [group for group in groups if group]

        def build_group(group: list[ImageRecipe]) -> None:
            for img in group:
                build_image(img, mirror)

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(build_group, group) for group in groups]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise WorldError("; ".join(str(e) for e in errors))
