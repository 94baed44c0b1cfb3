# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Seed the fake Docker Hub with real OCI images (built with umoci, pushed with skopeo).

``python3 seed.py check`` exits 0 when the storage already holds this recipe's images.
``python3 seed.py seed --registry HOST:PORT`` builds and pushes them to an auth-less backend
that shares the storage (start.sh runs one on 127.0.0.1:5002 while seeding), then writes
``/state/seed.json`` (digests of every image, per platform) and the recipe marker.

Images:

* ``library/alpine:latest`` and ``:3.20``: OCI index, linux/amd64 + linux/arm64/v8, one layer each
  made from the matching busybox-static .deb (/bin/busybox, applet symlinks, /etc/os-release).
* ``library/big:latest``: OCI index, linux/amd64 + linux/arm64/v8: the alpine image of the arch plus
  five 24 MiB layers of random data (the same blobs for both arches); > 120 MB per pull.
* ``library/small1..3:latest``: single-arch linux/amd64 manifests, one tiny unique layer each.
* ``library/fill1..6:latest``: OCI index, linux/amd64 + linux/arm64/v8: the alpine image of the arch plus one 8 MiB
  random layer of its own (the same blob for both arches): images of a known size that share a base layer, to fill a
  cache's disk budget in a known order.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

STATE = os.environ.get('HUB_STATE', '/state')
DEBS = os.environ.get('HUB_DEBS', '/debs')
STORAGE = os.path.join(STATE, 'storage')
MARKER = os.path.join(STATE, 'seeded')
SEED_JSON = os.path.join(STATE, 'seed.json')
ARCHES = ('amd64', 'arm64')
VARIANTS = {'arm64': 'v8'}
BIG_LAYERS = 5
BIG_LAYER_MB = 24
SMALL_IMAGES = ('small1', 'small2', 'small3')
FILL_IMAGES = tuple(f'fill{number}' for number in range(1, 7))
FILL_LAYER_MB = 8
ALPINE_TAGS = ('latest', '3.20')
# HUB_SEED=minimal (world-ghcr): alpine and small1..3 only.
MINIMAL = os.environ.get('HUB_SEED', 'full') == 'minimal'
APPLETS = ('[', 'ash', 'basename', 'cat', 'chmod', 'cp', 'cut', 'date', 'df', 'dirname', 'du', 'echo', 'env', 'false',
           'find', 'grep', 'head', 'hostname', 'id', 'ln', 'ls', 'mkdir', 'mv', 'printf', 'ps', 'pwd', 'rm', 'sed',
           'sh', 'sleep', 'sort', 'tail', 'tar', 'test', 'touch', 'tr', 'true', 'uname', 'uniq', 'wc', 'wget', 'which')
MEDIA_INDEX = 'application/vnd.oci.image.index.v1+json'
MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
ACCEPT = ', '.join((MEDIA_INDEX, MEDIA_MANIFEST, 'application/vnd.docker.distribution.manifest.list.v2+json',
                    'application/vnd.docker.distribution.manifest.v2+json'))
REF_NAME = 'org.opencontainers.image.ref.name'


def say(message: str) -> None:
    """Progress line."""
    print('seed: ' + message, flush=True)


def run(*args: str) -> None:
    """Run a command, failing loudly."""
    subprocess.run(args, check=True)


def busybox_debs() -> dict:
    """arch -> path of the busybox-static .deb in /debs."""
    debs = {}
    for arch in ARCHES:
        found = sorted(glob.glob(os.path.join(DEBS, f'busybox-static_*_{arch}.deb')))
        if not found:
            raise SystemExit(f'seed: no {DEBS}/busybox-static_*_{arch}.deb')
        debs[arch] = found[-1]
    return debs


def recipe_hash() -> str:
    """Changes whenever this file or the busybox packages change."""
    digest = hashlib.sha256()
    with open(__file__, 'rb') as source:
        digest.update(source.read())
    for arch, path in sorted(busybox_debs().items()):
        digest.update(f'{arch} {os.path.basename(path)} {os.path.getsize(path)}\n'.encode())
    digest.update(b'minimal' if MINIMAL else b'full')
    return digest.hexdigest()


def repositories() -> tuple:
    """The repositories (under library/) this seed set holds."""
    return ('alpine',) + SMALL_IMAGES + (() if MINIMAL else ('big', *FILL_IMAGES))


def seeded() -> bool:
    """True when the marker matches this recipe and the storage still holds the repositories."""
    try:
        with open(MARKER, encoding='ascii') as marker:
            if marker.read().strip() != recipe_hash():
                return False
    except OSError:
        return False
    repos = os.path.join(STORAGE, 'docker', 'registry', 'v2', 'repositories', 'library')
    return all(os.path.isdir(os.path.join(repos, name)) for name in repositories())


def make_rootfs(deb: str, arch: str, dest: str) -> None:
    """A busybox rootfs: /bin/busybox, applet symlinks, /etc/os-release naming it a test image."""
    extracted = dest + '.deb'
    run('dpkg-deb', '-x', deb, extracted)
    for directory in ('bin', 'etc', 'root', 'tmp', 'var/tmp'):
        os.makedirs(os.path.join(dest, directory), exist_ok=True)
    os.chmod(os.path.join(dest, 'tmp'), 0o1777)
    shutil.copy2(os.path.join(extracted, 'bin', 'busybox'), os.path.join(dest, 'bin', 'busybox'))
    shutil.rmtree(extracted)
    for applet in APPLETS:
        os.symlink('busybox', os.path.join(dest, 'bin', applet))
    files = {
        'etc/os-release': ('NAME="actuated test world"\nID=actuated-test\nVERSION_ID=3.20\n'
                           f'PRETTY_NAME="actuated test image (busybox-static, linux/{arch}), not Alpine Linux"\n'
                           'HOME_URL="https://example.invalid/actuated-test-world"\n'),
        'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
        'etc/group': 'root:x:0:\nnogroup:x:65534:\n',
        'etc/hostname': 'actuated-test\n',
    }
    for name, text in files.items():
        with open(os.path.join(dest, name), 'w', encoding='ascii') as handle:
            handle.write(text)


def umoci_config(layout: str, tag: str, arch: str) -> None:
    """Set platform and defaults of LAYOUT:TAG."""
    run('umoci', 'config', '--image', f'{layout}:{tag}', '--architecture', arch, '--os', 'linux',
        '--config.cmd', '/bin/sh', '--config.env', 'PATH=/bin', '--author', 'actuated test world')


def build_alpine(layout: str, work: str, rootfs: dict) -> dict:
    """alpine-ARCH tags: umoci new / unpack / copy the rootfs / repack / config."""
    tags = {}
    for arch in ARCHES:
        tag = 'alpine-' + arch
        bundle = os.path.join(work, 'bundle-' + arch)
        run('umoci', 'new', '--image', f'{layout}:{tag}')
        run('umoci', 'unpack', '--image', f'{layout}:{tag}', bundle)
        shutil.copytree(rootfs[arch], os.path.join(bundle, 'rootfs'), symlinks=True, dirs_exist_ok=True)
        run('umoci', 'repack', '--image', f'{layout}:{tag}', bundle)
        shutil.rmtree(bundle)
        umoci_config(layout, tag, arch)
        tags[arch] = tag
    return tags


def random_file(path: str, size_mb: int) -> str:
    """PATH filled with SIZE_MB MiB of random data (incompressible: the layer is as big as the file)."""
    with open(path, 'wb') as handle:
        for _chunk in range(size_mb):
            handle.write(os.urandom(1 << 20))
    os.utime(path, (1700000000, 1700000000))
    return path


def build_big(layout: str, work: str, alpine: dict, name: str = 'big', shape: tuple = (BIG_LAYERS, BIG_LAYER_MB)) \
        -> dict:
    """NAME-ARCH tags: the alpine-ARCH image plus SHAPE's random layers (how many, MiB each; the same files for both
    arches)."""
    layers, layer_mb = shape
    files = [random_file(os.path.join(work, f'random{number}.bin'), layer_mb) for number in range(1, layers + 1)]
    tags = {}
    for arch in ARCHES:
        tag = name + '-' + arch
        source = alpine[arch]
        for number, data in enumerate(files, 1):
            run('umoci', 'insert', '--image', f'{layout}:{source}', '--tag', tag, data, f'/data/random{number}.bin')
            source = tag
        tags[arch] = tag
    for data in files:
        os.unlink(data)
    return tags


def build_small(layout: str, work: str, name: str) -> str:
    """NAME: one tiny layer holding a unique file, linux/amd64."""
    tag = name
    content = os.path.join(work, name + '.txt')
    with open(content, 'w', encoding='ascii') as handle:
        handle.write(f'{name} {os.urandom(16).hex()}\n')
    run('umoci', 'new', '--image', f'{layout}:{tag}')
    run('umoci', 'insert', '--image', f'{layout}:{tag}', content, f'/{name}.txt')
    umoci_config(layout, tag, 'amd64')
    return tag


def add_index(layout: str, tag: str, per_arch: dict) -> None:
    """Write an OCI image index over the per-arch manifests of PER_ARCH into LAYOUT and tag it TAG."""
    with open(os.path.join(layout, 'index.json'), encoding='utf-8') as handle:
        top = json.load(handle)
    by_tag = {m.get('annotations', {}).get(REF_NAME): m for m in top['manifests']}
    manifests = []
    for arch, arch_tag in per_arch.items():
        platform = {'architecture': arch, 'os': 'linux'}
        if arch in VARIANTS:
            platform['variant'] = VARIANTS[arch]
        source = by_tag[arch_tag]
        manifests.append({'mediaType': MEDIA_MANIFEST, 'digest': source['digest'], 'size': source['size'],
                          'platform': platform})
    blob = json.dumps({'schemaVersion': 2, 'mediaType': MEDIA_INDEX, 'manifests': manifests}, indent=2).encode()
    digest = hashlib.sha256(blob).hexdigest()
    with open(os.path.join(layout, 'blobs', 'sha256', digest), 'wb') as handle:
        handle.write(blob)
    top['manifests'] = [m for m in top['manifests'] if m.get('annotations', {}).get(REF_NAME) != tag]
    top['manifests'].append({'mediaType': MEDIA_INDEX, 'digest': 'sha256:' + digest, 'size': len(blob),
                             'annotations': {REF_NAME: tag}})
    with open(os.path.join(layout, 'index.json'), 'w', encoding='utf-8') as handle:
        json.dump(top, handle)


def push(layout: str, tag: str, registry: str, repo: str, repo_tag: str) -> None:
    """skopeo copy (all platforms) from the layout to the auth-less seeding backend."""
    run('skopeo', 'copy', '--quiet', '--all', '--dest-tls-verify=false', f'oci:{layout}:{tag}',
        f'docker://{registry}/{repo}:{repo_tag}')


def fetch_manifest(registry: str, repo: str, ref: str) -> tuple:
    """(digest, document) of a manifest as the registry serves it."""
    request = urllib.request.Request(f'http://{registry}/v2/{repo}/manifests/{ref}', headers={'Accept': ACCEPT})
    with urllib.request.urlopen(request, timeout=30) as response:  # loopback only
        body = response.read()
        return response.headers['Docker-Content-Digest'], json.loads(body)


def describe(registry: str, repo: str, tag: str) -> dict:
    """Digests of REPO:TAG as pushed: index/manifest, and per platform the config and layers."""
    digest, document = fetch_manifest(registry, repo, tag)
    entry = {'digest': digest, 'mediaType': document.get('mediaType', MEDIA_MANIFEST), 'platforms': {}}
    children = document.get('manifests')
    if children is None:
        children = [{'digest': digest, 'platform': {'os': 'linux', 'architecture': 'amd64'}}]
    for child in children:
        platform = child['platform']
        key = '/'.join(filter(None, (platform['os'], platform['architecture'], platform.get('variant'))))
        manifest = document if child['digest'] == digest else fetch_manifest(registry, repo, child['digest'])[1]
        entry['platforms'][key] = {
            'manifest': child['digest'],
            'config': manifest['config']['digest'],
            'layers': [layer['digest'] for layer in manifest['layers']],
            'size': sum(layer['size'] for layer in manifest['layers']) + manifest['config']['size'],
        }
    return entry


def describe_all(registry: str, fills: tuple) -> dict:
    """The digests of every image pushed (seed.json's images)."""
    images = {}
    for repo_tag in ALPINE_TAGS:
        images['library/alpine:' + repo_tag] = describe(registry, 'library/alpine', repo_tag)
    if not MINIMAL:
        images['library/big:latest'] = describe(registry, 'library/big', 'latest')
    for name in SMALL_IMAGES + fills:
        images[f'library/{name}:latest'] = describe(registry, 'library/' + name, 'latest')
    return images


def seed(registry: str) -> None:
    """Build every image, push it, record digests, write the marker."""
    started = time.monotonic()
    recipe = recipe_hash()
    debs = busybox_debs()
    os.makedirs(STATE, exist_ok=True)
    for stale in glob.glob(os.path.join(STATE, 'seed-work.*')):  # left by an interrupted seeding
        shutil.rmtree(stale, ignore_errors=True)
    work = tempfile.mkdtemp(prefix='seed-work.', dir=STATE)
    try:
        layout = os.path.join(work, 'oci')
        run('umoci', 'init', '--layout', layout)
        rootfs = {}
        for arch in ARCHES:
            rootfs[arch] = os.path.join(work, 'rootfs-' + arch)
            make_rootfs(debs[arch], arch, rootfs[arch])

        say('building library/alpine')
        alpine = build_alpine(layout, work, rootfs)
        add_index(layout, 'alpine', alpine)
        fills = () if MINIMAL else FILL_IMAGES
        if not MINIMAL:
            say(f'building library/big ({BIG_LAYERS} x {BIG_LAYER_MB} MiB random layers)')
            add_index(layout, 'big', build_big(layout, work, alpine))
        small = [(name, build_small(layout, work, name)) for name in SMALL_IMAGES]
        if fills:
            say(f'building library/fill1..{len(fills)} (one {FILL_LAYER_MB} MiB random layer each)')
        for name in fills:
            add_index(layout, name, build_big(layout, work, alpine, name, (1, FILL_LAYER_MB)))
        run('umoci', 'gc', '--layout', layout)
        say(f'built in {time.monotonic() - started:.1f} s; pushing to {registry}')

        for repo_tag in ALPINE_TAGS:
            push(layout, 'alpine', registry, 'library/alpine', repo_tag)
        if not MINIMAL:
            push(layout, 'big', registry, 'library/big', 'latest')
        for name, tag in small:
            push(layout, tag, registry, 'library/' + name, 'latest')
        for name in fills:
            push(layout, name, registry, 'library/' + name, 'latest')

        with open(SEED_JSON + '.tmp', 'w', encoding='utf-8') as handle:
            json.dump({'recipe': recipe, 'seeded_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                       'images': describe_all(registry, fills)}, handle, indent=1, sort_keys=True)
        os.replace(SEED_JSON + '.tmp', SEED_JSON)
        with open(MARKER + '.tmp', 'w', encoding='ascii') as handle:
            handle.write(recipe + '\n')
        os.replace(MARKER + '.tmp', MARKER)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f'done in {time.monotonic() - started:.1f} s')


def main() -> None:
    """CLI."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('check', help='exit 0 when already seeded with this recipe')
    seed_parser = sub.add_parser('seed', help='build and push the images')
    seed_parser.add_argument('--registry', default='127.0.0.1:5002', help='auth-less backend sharing the storage')
    args = parser.parse_args()
    if args.command == 'check':
        sys.exit(0 if seeded() else 1)
    seed(args.registry)


if __name__ == '__main__':
    main()
