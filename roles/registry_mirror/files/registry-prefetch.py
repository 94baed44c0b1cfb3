# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-prefetch.timer's job: keeps the images an operator lists warm in the mirror's cache, for the price of
HEAD requests while nothing changes.

Usage: registry-prefetch SETTINGS.json
       registry-prefetch --check-settings SETTINGS.json    (the role's validate step: exit 2 if invalid, saying why)

Docker Hub counts a GET of a manifest as a pull (against the account's or the address's rate limit); a HEAD of one is
free. Each round this program asks the upstream, with HEAD requests only, which digest each listed tag names now, and
compares it with the digest the mirror's cache holds for the tag (read from distribution's storage, without any
request: docker/registry/v2/repositories/<repo>/_manifests/tags/<tag>/current/link). An unchanged tag costs nothing
more. A changed tag (or one never cached) is pulled THROUGH the mirror, as a client would pull it: the manifest by tag,
the manifests of the wanted platforms by digest (when the tag names an index), then their configs and layers, read and
thrown away, so that the mirror fetches and caches them (one counted pull per manifest, on the mirror's account, once).
The next client's pull is then served from the cache. Whatever the storage already holds (a manifest among the
repository's revisions, a blob linked into the repository) is not asked for again; an unchanged tag whose cached image
misses a wanted platform's manifest or a blob (a platform added to the settings, a pull cut short) gets what it misses.

It does nothing at all while the mirror serves its cache read-only (the upstream does not answer: pulls through it
would fail), when the cache is within 10% of its disk budget (a prefetch would only make the supervisor evict images
that clients use), or when the supervisor's metrics do not answer; those three it learns from the supervisor's metrics
(metrics_url). Within a round it stops warming once what it pulled would bring the cache past 90% of the budget.

SETTINGS is a JSON object written by the role (no secrets; keys starting with "_" are comments):

    mirror       the mirror's own base URL, pulled through: "unix:/run/registry/NAME.sock" (distribution's listener
                 behind the caching front, plain HTTP), "https://HOST:PORT" or "http://HOST:PORT"; no authentication
    ca_file      optional: the PEM CA bundle an https mirror's certificate is verified with (else the system's)
    pin_file     optional: the PEM certificate an https mirror must present, that very one (its first certificate;
                 read at each connection, so a renewal between two rounds is followed): then no CA is needed (the
                 CA that signed it may be readable by root only), and ca_file, if also given, is checked as well
    storage      distribution's storage root (its filesystem rootdirectory, e.g. /var/lib/registry)
    upstream     the upstream's base URL (https://registry-1.docker.io): HEAD requests only
    credentials  optional: PREFIX of the environment variables PREFIX_USERNAME / PREFIX_PASSWORD holding the upstream
                 account ("" or absent: anonymous). They are sent only over https: to the upstream itself when it asks
                 for Basic authentication, and to a bearer token realm on the upstream's host, or on a DNS name under
                 the upstream host's parent domain when that is no public suffix (auth.docker.io for
                 registry-1.docker.io); any other realm gets an anonymous token request (registry_realm.py,
                 next to this program, a module shared with the supervisor, holds this rule and distribution's).
    metrics_url  the supervisor's loopback metrics (http://127.0.0.1:5002/metrics)
    images       [{"repository": "library/alpine", "tags": ["latest"], "platforms": ["linux/amd64"]}, ...]: a name
                 without "/" means library/NAME (as docker pull says); platforms default to this host's
    state        the JSON file where the last round's results are kept (per tag: digest, when checked, when warmed)
    textfile     optional: a Prometheus text file (*.prom, for node_exporter's textfile collector) with the last
                 round's figures (gauges, registry_mirror_prefetch_*)
    allow_http   optional, false: let upstream and token realms be plain http (the unit tests' fakes)
    timeout      optional, 60: seconds a connection may stay silent

Both files are written whole (a temporary file beside them, renamed into place). Journal lines (stderr) start with
"registry-prefetch: ". Exit status: 0, also when some tags failed or the round was skipped; 1 when every tag failed or
the results could not be written; 2 for invalid settings or usage.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.message
import hashlib
import http.client
import json
import os
import platform
import re
import socket
import ssl
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from registry_realm import PUBLIC_SUFFIX_LIST, PublicSuffixList, credentials_allowed, parse_challenge

PROG = "registry-prefetch"
MIB = 1024 * 1024

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What a client pulling a multi-platform image accepts: the upstream then names (and the mirror caches) the index.
ACCEPT = ", ".join((*INDEX_TYPES, *IMAGE_TYPES))

# Budget: the supervisor collects above its budget; a prefetch stops short of it, so that it never makes the
# supervisor evict images clients use for images they may not.
BUDGET_SHARE = 0.9
MAX_MANIFEST = 4 * MIB  # distribution's own limit for a manifest
CHUNK = MIB
DEFAULT_TIMEOUT = 60.0

# distribution's grammar (reference/regexp.go): path components of lower-case alphanumerics and separators, tags.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
ENV_PREFIX_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
PLATFORM_PART_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")

# platform.machine() -> (architecture, variant) as OCI platforms name them.
MACHINES = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""), "arm64": ("arm64", ""), "armv8l": ("arm64", ""),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}

METRICS = {
    "registry_mirror_prefetch_last_run_timestamp_seconds": "When the last prefetch round ran.",
    "registry_mirror_prefetch_skipped": "1 when the last round did nothing: the mirror read-only, the cache near its "
                                        "budget, or the supervisor's metrics not answering.",
    "registry_mirror_prefetch_tags_checked": "Tags whose upstream digest the last round read (HEAD requests).",
    "registry_mirror_prefetch_tags_changed": "Tags of the last round whose upstream digest differed from the cache's.",
    "registry_mirror_prefetch_manifests_pulled": "Manifests the last round pulled through the mirror (each a pull "
                                                 "the upstream counts).",
    "registry_mirror_prefetch_blobs_pulled": "Blobs (configs, layers) the last round pulled through the mirror.",
    "registry_mirror_prefetch_bytes_pulled": "Bytes the last round pulled through the mirror.",
    "registry_mirror_prefetch_errors": "Tags of the last round that failed.",
}


def say(message: str) -> None:
    """One line in the journal."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def mib(size: float) -> str:
    """SIZE bytes in MiB, as the journal says them."""
    return f"{size / MIB:.1f} MiB"


# --- Settings ---------------------------------------------------------------------------------------------------------

class SettingsError(ValueError):
    """Invalid settings: the message names the key."""


@dataclasses.dataclass(frozen=True)
class Platform:
    """An OCI platform; an empty variant matches any variant."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


@dataclasses.dataclass(frozen=True)
class Image:
    """A repository whose tags are kept warm, for these platforms."""

    repository: str
    tags: tuple[str, ...]
    platforms: tuple[Platform, ...]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated settings (see the module's docstring)."""

    mirror: str
    storage: str
    upstream: str
    metrics_url: str
    images: tuple[Image, ...]
    state: str
    credentials: str = ""
    ca_file: str = ""
    pin_file: str = ""
    textfile: str = ""
    allow_http: bool = False
    timeout: float = DEFAULT_TIMEOUT


REQUIRED = ("mirror", "storage", "upstream", "metrics_url", "images", "state")
OPTIONAL = ("credentials", "ca_file", "pin_file", "textfile", "allow_http", "timeout")


def normalize_arch(architecture: str, variant: str) -> tuple[str, str]:
    """ARCHITECTURE and VARIANT as compared: arm64's only variant, v8, is the same as none (containerd's rule)."""
    architecture = {"x86_64": "amd64", "aarch64": "arm64"}.get(architecture, architecture)
    if architecture == "arm64" and variant == "v8":
        variant = ""
    return architecture, variant


def parse_platform(text: str) -> Platform:
    """OS/ARCH[/VARIANT] (linux/arm64, linux/arm/v7); ValueError when it is not one."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(PLATFORM_PART_RE.fullmatch(part) for part in parts):
        raise ValueError(f"{text!r} is not OS/ARCHITECTURE[/VARIANT] (linux/amd64, linux/arm/v7)")
    architecture, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    return Platform(parts[0], architecture, variant)


def host_platform(machine: str | None = None) -> Platform:
    """This host's platform, from platform.machine() (or MACHINE); ValueError for a machine not known here."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in MACHINES:
        raise ValueError(f"this host's machine {machine!r} names no known platform: list the platforms")
    architecture, variant = MACHINES[machine.lower()]
    return Platform("linux", architecture, variant)


def check_url(key: str, value: object, schemes: Sequence[str]) -> str:
    """VALUE as a base URL of one of SCHEMES: host and port only (no path, query, user information)."""
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{key}: a URL ({' or '.join(schemes)}) is required")
    try:
        parts = urllib.parse.urlsplit(value)
        _port = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise SettingsError(f"{key}: {value!r} is not a URL ({exc})") from None
    if parts.scheme not in schemes:
        raise SettingsError(f"{key}: {value!r} must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname or "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SettingsError(f"{key}: {value!r} must be SCHEME://HOST[:PORT], without a path or user information")
    return value.rstrip("/")


def check_path(key: str, value: object) -> str:
    """VALUE as an absolute path."""
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value:
        raise SettingsError(f"{key}: an absolute path is required, not {value!r}")
    return value


def check_tags(key: str, tags: object) -> tuple[str, ...]:
    """An image's tags: a non-empty list of distinct tags."""
    if not isinstance(tags, list) or not tags:
        raise SettingsError(f"{key}: a non-empty list of tags is required")
    for number, tag in enumerate(tags):
        if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
            raise SettingsError(f"{key}[{number}]: {tag!r} is not a tag")
        if tags.index(tag) != number:
            raise SettingsError(f"{key}[{number}]: {tag} is listed twice")
    return tuple(tags)


def check_platforms(key: str, listed: object, machine: str | None) -> tuple[Platform, ...]:
    """An image's platforms (distinct); this host's when not given (None, or an empty list)."""
    if listed is None or listed == []:
        try:
            return (host_platform(machine),)
        except ValueError as exc:
            raise SettingsError(f"{key}: {exc}") from None
    if not isinstance(listed, list):
        raise SettingsError(f"{key}: a list of platforms (linux/amd64, linux/arm64) is required")
    platforms: list[Platform] = []
    for number, text in enumerate(listed):
        try:
            parsed = parse_platform(text if isinstance(text, str) else repr(text))
        except ValueError as exc:
            raise SettingsError(f"{key}[{number}]: {exc}") from None
        if parsed not in platforms:
            platforms.append(parsed)
    return tuple(platforms)


def check_image(key: str, item: object, machine: str | None) -> Image:
    """One entry of images."""
    if not isinstance(item, dict):
        raise SettingsError(f"{key}: an object with repository, tags and (optional) platforms is required")
    unknown = sorted(name for name in item if name not in ("repository", "tags", "platforms")
                     and not name.startswith("_"))
    if unknown:
        raise SettingsError(f"{key}.{unknown[0]}: unknown key")
    repository = item.get("repository")
    if not isinstance(repository, str) or not REPOSITORY_RE.fullmatch(repository) or len(repository) > 255:
        raise SettingsError(f"{key}.repository: {repository!r} is not a repository name (library/alpine)")
    if "/" not in repository:
        repository = f"library/{repository}"  # what docker asks a Docker Hub mirror for `docker pull alpine`
    return Image(repository, check_tags(f"{key}.tags", item.get("tags")),
                 check_platforms(f"{key}.platforms", item.get("platforms"), machine))


def check_images(value: object, machine: str | None) -> tuple[Image, ...]:
    """The images setting: each repository once."""
    if not isinstance(value, list):
        raise SettingsError("images: a list of {repository, tags, platforms} is required")
    images: list[Image] = []
    for number, item in enumerate(value):
        image = check_image(f"images[{number}]", item, machine)
        if any(image.repository == other.repository for other in images):
            raise SettingsError(f"images[{number}].repository: {image.repository} is listed twice")
        images.append(image)
    return tuple(images)


def check_mirror(value: object) -> str:
    """The mirror setting."""
    if isinstance(value, str) and value.startswith("unix:"):
        if not os.path.isabs(value[len("unix:"):]):
            raise SettingsError(f"mirror: {value!r}: unix: must be followed by the socket's absolute path")
        mirror = value
    else:
        mirror = check_url("mirror", value, ("https", "http"))
    return mirror


def check_mirror_file(key: str, value: object, mirror: str) -> str:
    """ca_file or pin_file: "" (none) or an absolute path, for an https mirror only."""
    if value is None or value == "":
        return ""
    if not mirror.startswith("https:"):
        raise SettingsError(f"{key}: only an https mirror's certificate is checked with it")
    return check_path(key, value)


def check_textfile(value: object) -> str:
    """The textfile setting: "" (none) or an absolute path ending with .prom."""
    if value is None or value == "":
        return ""
    textfile = check_path("textfile", value)
    if not textfile.endswith(".prom"):
        raise SettingsError(f"textfile: {textfile!r} must end with .prom (node_exporter reads only those)")
    return textfile


def parse_settings(data: object, machine: str | None = None) -> Settings:
    """Settings from the JSON object DATA; SettingsError naming the first key that is wrong. MACHINE stands for
    platform.machine() (the default platforms)."""
    if not isinstance(data, dict):
        raise SettingsError("the settings must be a JSON object")
    unknown = sorted(key for key in data if key not in REQUIRED + OPTIONAL and not key.startswith("_"))
    if unknown:
        raise SettingsError(f"{unknown[0]}: unknown key")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise SettingsError(f"{missing[0]}: missing")
    # Optional keys given as null are absent (a template's unset variable).
    given = {key: value for key, value in data.items() if value is not None}
    allow_http = given.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise SettingsError("allow_http: true or false")
    mirror = check_mirror(given.get("mirror"))
    ca_file = check_mirror_file("ca_file", given.get("ca_file"), mirror)
    pin_file = check_mirror_file("pin_file", given.get("pin_file"), mirror)
    credentials = given.get("credentials", "")
    if not isinstance(credentials, str) or (credentials and not ENV_PREFIX_RE.fullmatch(credentials)):
        raise SettingsError(f"credentials: {credentials!r} is not an environment variable prefix (REGISTRY_PROXY)")
    timeout = given.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise SettingsError(f"timeout: {timeout!r} is not a number of seconds (0 < timeout <= 3600)")
    return Settings(
        mirror=mirror,
        storage=check_path("storage", given.get("storage")),
        upstream=check_url("upstream", given.get("upstream"), ("https", "http") if allow_http else ("https",)),
        metrics_url=check_metrics_url(given.get("metrics_url")),
        images=check_images(given.get("images"), machine),
        state=check_path("state", given.get("state")),
        credentials=credentials, ca_file=ca_file, pin_file=pin_file, textfile=check_textfile(given.get("textfile")),
        allow_http=allow_http, timeout=float(timeout))


def check_metrics_url(value: object) -> str:
    """The metrics_url setting: http(s)://HOST[:PORT]/PATH."""
    if not isinstance(value, str):
        raise SettingsError("metrics_url: a URL (http://127.0.0.1:5002/metrics) is required")
    try:
        parts = urllib.parse.urlsplit(value)
        _port = parts.port
    except ValueError as exc:
        raise SettingsError(f"metrics_url: {value!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise SettingsError(f"metrics_url: {value!r} must be http://HOST:PORT/PATH")
    return value


def load_settings(path: str, machine: str | None = None) -> Settings:
    """The settings in the JSON file PATH; SettingsError when unreadable or invalid."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read {path} ({exc})") from None
    return parse_settings(data, machine)


# --- The cache on disk ------------------------------------------------------------------------------------------------

def read_link(path: str) -> str | None:
    """The digest a distribution link file names; None when it is missing or holds no sha256 digest."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(200).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if SHA256_RE.fullmatch(text) else None


class Storage:
    """distribution's filesystem storage, read only (registry_cache.py describes the layout)."""

    def __init__(self, root: str) -> None:
        self.v2 = os.path.join(root, "docker", "registry", "v2")

    def repository(self, repository: str) -> str:
        """REPOSITORY's directory (a name validated by the settings: no "..", no absolute path)."""
        return os.path.join(self.v2, "repositories", *repository.split("/"))

    def blob_data(self, digest: str) -> str | None:
        """The path of DIGEST's content; None for a digest the layout cannot hold (not sha256)."""
        if not SHA256_RE.fullmatch(digest):
            return None
        hexa = digest[len("sha256:"):]
        return os.path.join(self.v2, "blobs", "sha256", hexa[:2], hexa, "data")

    def tag_digest(self, repository: str, tag: str) -> str | None:
        """The digest the cache's TAG of REPOSITORY names; None when not cached."""
        return read_link(os.path.join(self.repository(repository), "_manifests", "tags", tag, "current", "link"))

    def linked(self, repository: str, kind: str, digest: str) -> bool:
        """Whether REPOSITORY links DIGEST (KIND: "_layers" or "_manifests/revisions") and its content is stored:
        what distribution's proxy serves from the cache without asking the upstream."""
        data = self.blob_data(digest)
        if data is None:
            return False
        link = os.path.join(self.repository(repository), *kind.split("/"), "sha256", digest[len("sha256:"):], "link")
        return read_link(link) == digest and os.path.isfile(data)

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the mirror serves blob DIGEST of REPOSITORY from its cache."""
        return self.linked(repository, "_layers", digest)

    def manifest(self, repository: str, digest: str) -> bytes | None:
        """Manifest DIGEST as REPOSITORY caches it; None when it does not (or it is unreadable or too large)."""
        data = self.blob_data(digest)
        if data is None or not self.linked(repository, "_manifests/revisions", digest):
            return None
        try:
            with open(data, "rb") as handle:
                content = handle.read(MAX_MANIFEST + 1)
        except OSError:
            return None
        return content if len(content) <= MAX_MANIFEST else None


# --- Manifests --------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Descriptor:
    """What a manifest says of a manifest or blob it references."""

    digest: str
    size: int
    media_type: str = ""
    platform: Platform | None = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed manifest: an index (its child manifests) or an image (its config and layers: blobs)."""

    media_type: str
    children: tuple[Descriptor, ...] = ()
    blobs: tuple[Descriptor, ...] = ()

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def descriptor(value: object, where: str) -> Descriptor:
    """A descriptor of a manifest; ValueError when malformed."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not a descriptor")
    digest, size = value.get("digest"), value.get("size", 0)
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"{where} has no valid digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{where} has no valid size")
    media_type = value.get("mediaType", "")
    found = None
    described = value.get("platform")
    if isinstance(described, dict):
        os_name, architecture, variant = (described.get(key, "") for key in ("os", "architecture", "variant"))
        if isinstance(os_name, str) and isinstance(architecture, str) and isinstance(variant, str):
            architecture, variant = normalize_arch(architecture, variant)
            found = Platform(os_name, architecture, variant)
    return Descriptor(digest, size, media_type if isinstance(media_type, str) else "", found)


def parse_manifest(body: bytes, content_type: str = "") -> Manifest:
    """BODY, a manifest as a registry serves it (with CONTENT_TYPE); ValueError for anything but an OCI index, a
    Docker manifest list, an OCI image manifest or a Docker schema2 manifest. An image's foreign layers (with urls:
    Windows base layers) are left out: no registry serves them."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("the manifest is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the manifest is not a JSON object")
    media_type = data.get("mediaType") or content_type.split(";", maxsplit=1)[0].strip()
    if not isinstance(media_type, str):
        raise ValueError("the manifest's mediaType is not a string")
    if media_type not in INDEX_TYPES + IMAGE_TYPES:  # OCI allows leaving it out: the fields tell
        media_type = OCI_INDEX if "manifests" in data else OCI_MANIFEST if "layers" in data else media_type
    if data.get("schemaVersion") != 2 or media_type not in INDEX_TYPES + IMAGE_TYPES:
        raise ValueError(f"unsupported manifest (mediaType {media_type or 'none'}, schemaVersion "
                         f"{data.get('schemaVersion')})")
    if media_type in INDEX_TYPES:
        listed = data.get("manifests")
        if not isinstance(listed, list):
            raise ValueError("the index has no manifests list")
        return Manifest(media_type, children=tuple(descriptor(item, f"manifests[{number}]")
                                                   for number, item in enumerate(listed)))
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ValueError("the manifest has no layers list")
    blobs = [descriptor(data.get("config"), "config")]
    blobs += [descriptor(layer, f"layers[{number}]") for number, layer in enumerate(layers)
              if not (isinstance(layer, dict) and layer.get("urls"))]
    return Manifest(media_type, blobs=tuple(blobs))


def platform_matches(wanted: Platform, found: Platform | None) -> bool:
    """Whether an index entry for FOUND serves WANTED: the same OS and architecture, and the variant WANTED names
    (when it names one)."""
    if found is None:
        return False
    return (found.os == wanted.os and found.architecture == wanted.architecture
            and (not wanted.variant or found.variant == wanted.variant))


def select_children(index: Manifest, wanted: Sequence[Platform]) -> tuple[list[Descriptor], list[Platform]]:
    """The child manifests of INDEX for the WANTED platforms (the first entry matching each, as a client picks it),
    and the platforms the index has no manifest for."""
    chosen: list[Descriptor] = []
    absent: list[Platform] = []
    for target in wanted:
        match = next((child for child in index.children if platform_matches(target, child.platform)), None)
        if match is None:
            absent.append(target)
        elif match not in chosen:
            chosen.append(match)
    return chosen, absent


# --- Authentication ---------------------------------------------------------------------------------------------------

def load_public_suffixes(path: str = PUBLIC_SUFFIX_LIST) -> PublicSuffixList | None:
    """The Public Suffix List (gzip-compressed, as the supervisor reads it); None when it cannot be read: token realms
    are then compared by the upstream's parent domain alone (credentials_allowed)."""
    try:
        return PublicSuffixList.read(path)
    except (OSError, EOFError, ValueError):
        return None


def read_credentials(prefix: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The account in PREFIX_USERNAME / PREFIX_PASSWORD of ENVIRON; None (anonymous) without a prefix or when one of
    them is empty (said, by the variables' names)."""
    if not prefix:
        return None
    user, password = environ.get(f"{prefix}_USERNAME", ""), environ.get(f"{prefix}_PASSWORD", "")
    if bool(user) != bool(password):
        say(f"only one of {prefix}_USERNAME and {prefix}_PASSWORD is set: asking the upstream anonymously")
    return (user, password) if user and password else None


# --- HTTP -------------------------------------------------------------------------------------------------------------

class PrefetchError(Exception):
    """A request that failed; the message says which and why (never a credential)."""


class OverBudget(Exception):
    """What a tag needs would bring the cache past its share of the budget: not fetched (no error)."""


def registry_error(body: bytes) -> str:
    """The first error code of a registry's error body ("TOOMANYREQUESTS"), or ""."""
    try:
        errors = json.loads(body).get("errors")
        code = errors[0].get("code") if isinstance(errors, list) and errors else ""
    except (ValueError, AttributeError):
        return ""
    return f" {code}" if isinstance(code, str) and code.isprintable() and len(code) < 64 else ""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket: distribution's own listener when the caching front serves the mirror's port."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def pinned_certificate(path: str) -> bytes:
    """The first certificate of the PEM file PATH, in DER; OSError when there is none."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(1024 * 1024)
        found = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.DOTALL)
        if found is None:
            raise ValueError("no PEM certificate in it")
        return ssl.PEM_cert_to_DER_cert(found.group(0))
    except ValueError as exc:
        raise OSError(f"cannot read the pinned certificate {path} ({exc})") from None


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a server that must present the certificate of PIN_FILE (the mirror's own, from registry-tls-sync):
    checked once the handshake is done, before a request is sent."""

    def __init__(self, host: str, port: int | None, timeout: float, context: ssl.SSLContext, pin_file: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.pin_file = pin_file

    def connect(self) -> None:
        pinned = pinned_certificate(self.pin_file)
        super().connect()
        presented = self.sock.getpeercert(binary_form=True) if isinstance(self.sock, ssl.SSLSocket) else None
        if presented != pinned:
            self.close()
            raise OSError(f"the server's certificate is not the one in {self.pin_file}")


class Local:
    """Requests to this host's services (the mirror, the supervisor's metrics): direct connections, never through
    a proxy of the environment, one per request, no redirects followed, no authentication."""

    def __init__(self, base: str, timeout: float, ca_file: str = "", pin_file: str = "") -> None:
        self.base = base
        self.timeout = timeout
        self.ca_file = ca_file
        self.pin_file = pin_file

    def connection(self) -> http.client.HTTPConnection:
        """A connection to the base URL."""
        if self.base.startswith("unix:"):
            return UnixHTTPConnection(self.base[len("unix:"):], self.timeout)
        parts = urllib.parse.urlsplit(self.base)
        host = parts.hostname or ""
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=self.ca_file or None)
            if not self.pin_file:
                return http.client.HTTPSConnection(host, parts.port, timeout=self.timeout, context=context)
            if not self.ca_file:  # the pin alone decides
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return PinnedHTTPSConnection(host, parts.port, self.timeout, context, self.pin_file)
        return http.client.HTTPConnection(host, parts.port, timeout=self.timeout)

    @contextlib.contextmanager
    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Iterator[http.client.HTTPResponse]:
        """GET PATH (with its query); the response, its connection closed after."""
        connection = self.connection()
        try:
            connection.request("GET", path, headers=dict(headers or {}))
            yield connection.getresponse()
        finally:
            connection.close()


class NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but not to plain http unless the settings allow it. Authorization is added
    as an unredirected header, so no redirect takes it anywhere."""

    def __init__(self, allow_http: bool) -> None:
        super().__init__()
        self.allow_http = allow_http

    def redirect_request(  # noqa: PLR0913, PLR0917 (urllib's signature)
            self, req: urllib.request.Request, fp: typing.IO[bytes], code: int, msg: str,
            headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if not self.allow_http and urllib.parse.urlsplit(newurl).scheme.lower() != "https":
            return None  # urllib then raises the redirect as an HTTPError
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Upstream:
    """The upstream, asked for digests with HEAD requests only (never counted as pulls), with a bearer token per
    repository (fetched once per round), or Basic authentication when it asks for that."""

    def __init__(self, settings: Settings, account: tuple[str, str] | None,
                 suffixes: PublicSuffixList | None) -> None:
        self.base = settings.upstream
        self.allow_http = settings.allow_http
        self.timeout = settings.timeout
        self.account = account
        self.suffixes = suffixes
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=ssl.create_default_context()), NoDowngrade(settings.allow_http))
        self.authorization: dict[str, str] = {}  # repository -> Authorization header value
        self.warned: set[str] = set()

    def send(self, url: str, method: str, authorization: str = "") -> tuple[int, email.message.Message, bytes]:
        """METHOD URL: the status, headers and (for a GET, or an error) body; PrefetchError when there is none."""
        request = urllib.request.Request(url, method=method, headers={"Accept": ACCEPT})
        if authorization:
            request.add_unredirected_header("Authorization", authorization)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_MANIFEST) if method == "GET" else b""
                return int(response.status), response.headers, body
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read(65536) if method == "GET" else b""
                return int(exc.code), exc.headers, body
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise PrefetchError(f"{method} {origin_of(url)} failed ({reason})") from None

    def digest(self, repository: str, tag: str) -> str:
        """The digest the upstream's TAG of REPOSITORY names now, by HEAD requests; PrefetchError otherwise."""
        url = f"{self.base}/v2/{repository}/manifests/{tag}"
        status, headers, _body = self.send(url, "HEAD", self.authorization.get(repository, ""))
        if status == 401:
            self.authorization[repository] = self.authorize(repository, headers.get_all("WWW-Authenticate") or [])
            status, headers, _body = self.send(url, "HEAD", self.authorization[repository])
        if status == 401:
            raise PrefetchError("the upstream refused the authorization it asked for (401)")
        if status != 200:
            raise PrefetchError(f"the upstream answered HEAD with {status}")
        digest = (headers.get("Docker-Content-Digest") or "").strip()
        if not DIGEST_RE.fullmatch(digest):
            raise PrefetchError("the upstream's answer to HEAD names no digest (Docker-Content-Digest)")
        return digest

    def authorize(self, repository: str, challenges: Sequence[str]) -> str:
        """The Authorization header value that answers the upstream's CHALLENGES for pulling REPOSITORY."""
        parsed = [parse_challenge(value) for value in challenges]
        for scheme, params in parsed:
            if scheme == "bearer":
                return f"Bearer {self.token(repository, params)}"
        if any(scheme == "basic" for scheme, _params in parsed):
            if self.account is None:
                raise PrefetchError("the upstream asks for Basic authentication and no credentials are set")
            if urllib.parse.urlsplit(self.base).scheme != "https":
                raise PrefetchError("the upstream asks for Basic authentication over plain http: not sending it")
            return basic(*self.account)
        raise PrefetchError("the upstream answered 401 without a Bearer or Basic challenge")

    def token(self, repository: str, params: Mapping[str, str]) -> str:
        """A pull token for REPOSITORY from the challenge's realm: with the credentials only where
        credentials_allowed says so, anonymous elsewhere."""
        realm = params.get("realm", "")
        try:
            scheme = urllib.parse.urlsplit(realm).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            raise PrefetchError(f"the upstream names a token realm that is not an https URL ({origin_of(realm)})")
        query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
        if params.get("service"):
            query = {"service": params["service"], **query}
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        authorization = ""
        if self.account is not None:
            if credentials_allowed(self.base, realm, self.suffixes):
                authorization = basic(*self.account)
            elif realm not in self.warned:
                self.warned.add(realm)
                say(f"not sending the upstream credentials to the token realm {origin_of(realm)} (not https, or "
                    f"not the upstream's domain): asking for an anonymous token")
        status, _headers, body = self.send(url, "GET", authorization)
        if status != 200:
            raise PrefetchError(f"the token realm {origin_of(realm)} answered {status}")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise PrefetchError(f"the token realm {origin_of(realm)} answered no token")
        return token


def basic(user: str, password: str) -> str:
    """The Authorization header value of USER's Basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def origin_of(url: str) -> str:
    """URL's scheme, host and port: what a journal line may name of it (no path, query or user information); a
    unix: URL as it is."""
    if url.startswith("unix:"):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid URL"
    return f"{parts.scheme}://{host}{port}" if parts.scheme and host else "an invalid URL"


class Mirror:
    """The mirror, pulled through as a client pulls: what it fetches from its upstream it caches."""

    def __init__(self, local: Local) -> None:
        self.local = local

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """Manifest REFERENCE (a tag or a digest) of REPOSITORY: its body and content type."""
        try:
            return self.get_manifest(repository, reference)
        except (OSError, http.client.HTTPException) as exc:
            raise PrefetchError(f"the mirror ({origin_of(self.local.base)}) failed ({exc})") from None

    def blob(self, repository: str, blob: Descriptor) -> int:
        """Fetch BLOB of REPOSITORY, read to its end and thrown away; its size."""
        try:
            return self.get_blob(repository, blob)
        except (OSError, http.client.HTTPException) as exc:
            raise PrefetchError(f"the mirror ({origin_of(self.local.base)}) failed ({exc})") from None

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """manifest(), its connection errors raised as they are."""
        with self.local.get(f"/v2/{repository}/manifests/{reference}", {"Accept": ACCEPT}) as response:
            body = response.read(MAX_MANIFEST + 1)
            name = f"{repository}{'@' if ':' in reference else ':'}{reference}"
            if response.status != 200:
                raise PrefetchError(f"the mirror answered {response.status}{registry_error(body)} for the manifest "
                                    f"{name}")
            if len(body) > MAX_MANIFEST:
                raise PrefetchError(f"the mirror's manifest {name} is larger than 4 MiB")
            return body, response.getheader("Content-Type", "")

    def get_blob(self, repository: str, blob: Descriptor) -> int:
        """blob(), its connection errors raised as they are."""
        with self.local.get(f"/v2/{repository}/blobs/{blob.digest}") as response:
            if response.status != 200:
                raise PrefetchError(f"the mirror answered {response.status}{registry_error(response.read(65536))} "
                                    f"for the blob {blob.digest} of {repository}")
            size = 0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
        if blob.size and size != blob.size:
            raise PrefetchError(f"the mirror sent {size} bytes of the blob {blob.digest} of {repository}, "
                                f"not {blob.size}")
        return size


# --- The round --------------------------------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[str, float]:
    """The unlabelled samples of a Prometheus text exposition: name -> value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "{" not in parts[0]:
            with contextlib.suppress(ValueError):
                samples[parts[0]] = float(parts[1])
    return samples


def gate(samples: Mapping[str, float]) -> tuple[str, float | None]:
    """From the supervisor's metrics: why to do nothing ("" to go on), and how many bytes a round may pull (None:
    no budget)."""
    if "registry_mirror_read_only" not in samples:
        return "the supervisor's metrics do not say whether the mirror pulls through its upstream", None
    if samples["registry_mirror_read_only"] >= 1:
        return "the mirror serves its cache read-only (its upstream does not answer, or its disk is full)", None
    budget = samples.get("registry_mirror_cache_budget_bytes", 0.0)
    if budget <= 0:
        return "", None
    used = samples.get("registry_mirror_cache_bytes", 0.0)
    if used >= BUDGET_SHARE * budget:
        return (f"the cache holds {mib(used)}, within {100 - BUDGET_SHARE * 100:.0f}% of its budget of "
                f"{mib(budget)}"), None
    return "", BUDGET_SHARE * budget - used


@dataclasses.dataclass
class TagResult:
    """What a round did for one tag."""

    repository: str
    tag: str
    cached: str | None = None  # the digest the cache named before
    digest: str | None = None  # the upstream's
    changed: bool = False
    manifests: int = 0
    blobs: int = 0
    bytes: int = 0
    error: str = ""
    note: str = ""
    held: bool = False  # stopped short of the budget

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"

    @property
    def pulled(self) -> bool:
        """Whether anything was pulled through the mirror for the tag."""
        return bool(self.manifests or self.blobs)

    @property
    def warmed(self) -> bool:
        """Whether the tag's image was pulled through the mirror, whole."""
        return self.pulled and not self.error and not self.held

    def cost(self) -> str:
        """What the tag cost, as the journal says it."""
        return f"{self.manifests} manifests, {self.blobs} blobs, {mib(self.bytes)}"


class Round:
    """One prefetch round: each tag checked by HEAD, and warmed through the mirror when it changed or its cached
    image misses something wanted."""

    def __init__(self, upstream: Upstream, mirror: Mirror, storage: Storage, headroom: float | None) -> None:
        self.upstream = upstream
        self.mirror = mirror
        self.storage = storage
        self.headroom = headroom  # bytes the round may pull; None: no budget
        self.pulled = 0  # bytes pulled so far

    def tag(self, image: Image, tag: str) -> TagResult:
        """Check and warm TAG of IMAGE; errors are in the result."""
        result = TagResult(image.repository, tag, cached=self.storage.tag_digest(image.repository, tag))
        try:
            result.digest = self.upstream.digest(image.repository, tag)
            result.changed = result.digest != result.cached
            self.warm(image, result)
        except PrefetchError as exc:
            result.error = str(exc)
        except OverBudget as exc:
            result.note, result.held = str(exc), True
        finally:
            self.pulled += result.bytes
        return result

    def afford(self, result: TagResult, need: int) -> None:
        """OverBudget when the round has pulled all the budget leaves it, or NEED more bytes would pass that."""
        if self.headroom is None:
            return
        if self.pulled + result.bytes >= self.headroom or self.pulled + result.bytes + need > self.headroom:
            what = f"its blobs ({mib(need)})" if need else "what the round pulled"
            raise OverBudget(f"not warmed: {what} would bring the cache past {BUDGET_SHARE:.0%} of its budget")

    def root(self, image: Image, result: TagResult) -> bytes:
        """The tag's manifest: from the storage when the cache's tag already names the upstream's digest, else
        through the mirror (a pull the upstream counts)."""
        if not result.changed and result.digest is not None:
            cached = self.storage.manifest(image.repository, result.digest)
            if cached is not None:
                return cached
        self.afford(result, 0)
        body, _content_type = self.mirror.manifest(image.repository, result.tag)
        result.manifests += 1
        result.bytes += len(body)
        served = "sha256:" + hashlib.sha256(body).hexdigest()
        if result.digest is not None and result.digest.startswith("sha256:") and served != result.digest:
            result.note = f"the mirror served {served} (the tag moved meanwhile?)"
            result.digest = served
        return body

    def child(self, image: Image, result: TagResult, child: Descriptor) -> Manifest:
        """A platform's manifest CHILD: from the storage, else through the mirror by digest (a counted pull)."""
        body = self.storage.manifest(image.repository, child.digest)
        if body is None:
            self.afford(result, 0)
            body, content_type = self.mirror.manifest(image.repository, child.digest)
            result.manifests += 1
            result.bytes += len(body)
            if child.digest.startswith("sha256:") and "sha256:" + hashlib.sha256(body).hexdigest() != child.digest:
                raise PrefetchError(f"the mirror served another manifest than {child.digest}")
        else:
            content_type = ""
        try:
            manifest = parse_manifest(body, content_type or child.media_type)
        except ValueError as exc:
            raise PrefetchError(f"{child.digest}: {exc}") from None
        if manifest.is_index:
            raise PrefetchError(f"{child.digest} is an index within an index: not followed")
        return manifest

    def warm(self, image: Image, result: TagResult) -> None:
        """Pull through the mirror what the cache misses of the tag's image for the wanted platforms."""
        try:
            manifest = parse_manifest(self.root(image, result))
        except ValueError as exc:
            raise PrefetchError(str(exc)) from None
        images = [manifest]
        if manifest.is_index:
            chosen, absent = select_children(manifest, image.platforms)
            if absent and result.changed:
                result.note = f"no manifest for {', '.join(map(str, absent))}"
            images = [self.child(image, result, child) for child in chosen]
        missing: list[Descriptor] = []
        for blob in (blob for each in images for blob in each.blobs):
            if blob.digest not in {known.digest for known in missing} and \
                    not self.storage.has_blob(image.repository, blob.digest):
                missing.append(blob)
        if missing:
            self.afford(result, sum(blob.size for blob in missing))
        for blob in missing:
            result.bytes += self.mirror.blob(image.repository, blob)
            result.blobs += 1


@dataclasses.dataclass
class Totals:
    """A round's figures (the textfile's gauges)."""

    tags_checked: int = 0
    tags_changed: int = 0
    manifests_pulled: int = 0
    blobs_pulled: int = 0
    bytes_pulled: int = 0
    errors: int = 0

    def add(self, result: TagResult) -> None:
        self.tags_checked += result.digest is not None
        self.tags_changed += result.changed and result.digest is not None
        self.manifests_pulled += result.manifests
        self.blobs_pulled += result.blobs
        self.bytes_pulled += result.bytes
        self.errors += bool(result.error)


def write_atomically(path: str, text: str) -> None:
    """Write TEXT to PATH whole: into a temporary file beside it, renamed into place (mode 0644)."""
    directory, name = os.path.split(path)
    handle_fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with os.fdopen(handle_fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # node_exporter reads the textfile as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def metrics_text(totals: Totals, started: float, skipped: bool) -> str:
    """The textfile's Prometheus text exposition."""
    values = {"registry_mirror_prefetch_last_run_timestamp_seconds": started,
              "registry_mirror_prefetch_skipped": float(skipped),
              **{f"registry_mirror_prefetch_{key}": float(value)
                 for key, value in dataclasses.asdict(totals).items()}}
    lines = []
    for name, text in METRICS.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {values[name]:.17g}"]
    return "\n".join(lines) + "\n"


def previous_state(path: str) -> dict[str, Any]:
    """The per-tag entries the last round recorded (empty when there are none or they are unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            tags = json.load(handle).get("tags")
    except (OSError, ValueError, AttributeError):
        return {}
    return {key: value for key, value in tags.items() if isinstance(value, dict)} if isinstance(tags, dict) else {}


def record(settings: Settings, started: float, totals: Totals, results: Sequence[TagResult], skipped: str) -> bool:
    """Write the state file and the textfile; False (said) when one cannot be written."""
    tags = previous_state(settings.state)
    if not skipped:  # a skipped round keeps what the last one learnt; a round forgets tags no longer listed
        listed = {f"{image.repository}:{tag}" for image in settings.images for tag in image.tags}
        tags = {key: value for key, value in tags.items() if key in listed}
    for result in results:
        entry = tags.get(result.name, {})
        entry.update(digest=result.digest or entry.get("digest"), checked=started, changed=result.changed,
                     warmed=result.warmed, manifests=result.manifests, blobs=result.blobs, bytes=result.bytes,
                     error=result.error or None, note=result.note or None)
        if result.digest is not None:
            entry["seen"] = started  # when the upstream last told its digest
        if result.warmed:
            entry["warmed_at"] = started
        tags[result.name] = entry
    state = {"version": 1, "started": started, "finished": time.time(), "skipped": skipped or None,
             "totals": dataclasses.asdict(totals), "tags": tags}
    written = True
    for path, text in ((settings.state, json.dumps(state, indent=1, sort_keys=True) + "\n"),
                       (settings.textfile, metrics_text(totals, started, bool(skipped)))):
        if path:
            try:
                write_atomically(path, text)
            except OSError as exc:
                say(f"cannot write {path} ({exc})")
                written = False
    return written


def read_gate(settings: Settings) -> tuple[str, float | None]:
    """Ask the supervisor's metrics whether to go on (gate())."""
    parts = urllib.parse.urlsplit(settings.metrics_url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with Local(base, min(settings.timeout, 10.0)).get(path) as response:
            if response.status != 200:
                return f"the supervisor's metrics ({settings.metrics_url}) answered {response.status}", None
            text = response.read(4 * MIB).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        return f"the supervisor's metrics ({settings.metrics_url}) do not answer ({exc})", None
    return gate(parse_metrics(text))


def run(settings: Settings, environ: Mapping[str, str]) -> int:
    """One round; the exit status."""
    started = time.time()
    totals = Totals()
    skipped, headroom = read_gate(settings)
    if skipped:
        say(f"{skipped}: not prefetching")
        return 0 if record(settings, started, totals, (), skipped) else 1
    suffixes = load_public_suffixes()
    if suffixes is None:
        say(f"cannot read {PUBLIC_SUFFIX_LIST}: comparing token realms by the upstream's parent domain alone")
    upstream = Upstream(settings, read_credentials(settings.credentials, environ), suffixes)
    prefetch = Round(upstream, Mirror(Local(settings.mirror, settings.timeout, settings.ca_file, settings.pin_file)),
                     Storage(settings.storage), headroom)
    results = []
    for image in settings.images:
        for tag in image.tags:
            result = prefetch.tag(image, tag)
            results.append(result)
            totals.add(result)
            if result.warmed:
                say(f"warmed {result.name} {result.digest} ({result.cost()})" +
                    (f": {result.note}" if result.note else ""))
            elif result.error or result.note:
                say(f"{result.name}: {result.error or result.note}" +
                    (f" (after {result.cost()})" if result.pulled else ""))
    summary = (f"checked {totals.tags_checked} tags: {totals.tags_changed} changed, {totals.manifests_pulled} "
               f"manifest pulls, {mib(totals.bytes_pulled)}")
    say(summary + (f", {totals.errors} failed" if totals.errors else ""))
    written = record(settings, started, totals, results, "")
    return 1 if not written or (results and totals.errors == len(results)) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The program: registry-prefetch [--check-settings] SETTINGS.json."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = args[:1] == ["--check-settings"]
    if check:
        args = args[1:]
    if len(args) != 1:
        say("usage: registry-prefetch [--check-settings] SETTINGS.json")
        return 2
    try:
        settings = load_settings(args[0])
    except SettingsError as exc:
        say(f"invalid settings {args[0]}: {exc}")
        return 2
    if check:
        return 0
    return run(settings, os.environ)


if __name__ == "__main__":
    sys.exit(main())
