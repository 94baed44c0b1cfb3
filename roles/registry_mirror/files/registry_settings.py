# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's settings: the JSON file the role writes (Settings.load), checked as a whole before anything
starts (`registry-supervisor --check-settings`), and the environment variables that carry upstream credentials.

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import ssl
import urllib.parse
from typing import Any

from registry_realm import distribution_version

CREDENTIAL_ENV = ("REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD")
# A listen on a unix socket: "unix:" and the socket's absolute path, shorter than sun_path (108 bytes with the
# terminating NUL).
UNIX_LISTEN = "unix:"
SUN_PATH_MAX = 108
# The further mirrors' upstream credentials in the unit's environment (PREFIX_USERNAME, PREFIX_PASSWORD): each reaches
# only the child whose settings name PREFIX (credentials), as REGISTRY_PROXY_USERNAME / REGISTRY_PROXY_PASSWORD.
CREDENTIALS_PREFIX = re.compile(r"REGISTRY_MIRROR_[A-Z0-9_]+")
MIRROR_CREDENTIAL_ENV = re.compile(r"REGISTRY_MIRROR_[A-Z0-9_]+_(USERNAME|PASSWORD)")
# The most fallbacks a settings file may name: each costs a probe per tick while a preferred upstream is away.
MAX_FALLBACKS = 8


class SettingsError(Exception):
    """The settings file is missing, unreadable or invalid."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the role decides; durations in seconds. The defaults of the optional keys are the production timings."""

    binary: str
    config: str
    upstream: str
    version: str
    # The mirror's address (host:port) when the supervisor holds its socket (distribution 3.x reads it by socket
    # activation); "": each registry binds the configured address itself. unix:PATH (an absolute path shorter than
    # SUN_PATH_MAX bytes): a unix socket for a caching front on the same host, plain HTTP (listen_tls must be false).
    listen: str = ""
    offline_fallback: bool = True
    metrics: bool = False
    probe_interval: float = 15.0
    # Docker Hub answers GET /v2/ in well under a second; a probe that gets no answer in this long counts as failed.
    probe_timeout: float = 3.0
    # After a failed probe in pull-through mode, confirm soon (at most one interval later): until the switch, each
    # tag lookup stalls on the upstream.
    confirm_after: float = 1.0
    failures_before_fallback: int = 2
    # At start the registry (pull-through mode) and the first probe run together; when the upstream is away, VMs get
    # the read-only cache after this long.
    start_probe_timeout: float = 2.0
    # How long a switch waits for the old process to exit before starting the new one (it lets go of the port at
    # once); at start, the pull-through process was still starting, not serving, so it gets longer.
    switch_grace: float = 0.3
    # Before a switch stops the old registry, how long it keeps serving the connections it already accepted while new
    # ones wait for the next registry: distribution (Go's net/http) drops, unanswered, a request that reaches it
    # after its SIGTERM, even the first one of a connection it accepted just before (a client's EOF). A TLS handshake
    # takes well under this, under emulation too.
    switch_drain: float = 1.0
    start_grace: float = 2.0
    # At stop, how long each registry may drain before it is killed (systemd's TimeoutStopSec is longer).
    stop_timeout: float = 70.0
    # At start, how long the supervisor waits for the mirror's address (listen) while another process holds it: the
    # caching front lets go of it only after this registry has started, when registry_mirror_front is turned off (so
    # that the port never closes). After that it fails (systemd starts it again).
    bind_wait: float = 30.0
    poll_interval: float = 0.2
    challenge_timeout: float = 5.0
    token_timeout: float = 10.0
    # The cache's directory (distribution's storage root; STORAGE_ENV in the environment takes precedence) and the free
    # space on its filesystem below which the registry runs read-only (0: not checked).
    storage: str = ""
    min_free_mb: int = 0
    # The supervisor's loopback port: distribution's pull notifications (POST /events) and its metrics (GET /metrics);
    # 0: no listener (no usage times: images are evicted by when they were cached). distribution's own Prometheus
    # endpoint, appended to the supervisor's metrics ("": none).
    port: int = 0
    registry_metrics_url: str = ""
    # The disk budget: MiB, and/or a percentage of the cache's filesystem (0: no such limit; the smaller wins); a
    # collection evicts down to low_water_percent of it. Checked every cache_check_interval; a collection also runs
    # every collect_interval (0: only above the budget or on SIGUSR1). Unreferenced blobs younger than collect_grace
    # are kept, but an evicted image's (a pull may not have stored its manifest yet).
    budget_mb: int = 0
    budget_percent: int = 0
    low_water_percent: int = 80
    cache_check_interval: float = 30.0
    collect_interval: float = 86400.0
    collect_grace: float = 600.0
    # The upstream's short name (ghcr, quay, ...): the prefix of the mirror's lines in group mode, and in messages.
    name: str = ""
    # Group mode, a mirror other than the first: the prefix (REGISTRY_MIRROR_...) of the unit's environment variables
    # PREFIX_USERNAME and PREFIX_PASSWORD, its upstream credentials. No effect in single mode.
    credentials: str = ""
    # The upstreams tried after `upstream`, in order, when it does not answer (at most MAX_FALLBACKS; in the file a
    # list of objects {"url": "https://...", "credentials": "REGISTRY_MIRROR_..."}): the registry pulls through the
    # first that answers, with that one's credentials only (PREFIX_USERNAME / PREFIX_PASSWORD from the environment;
    # credentials "" or left out: anonymous), and back through a preferred one as soon as it answers again.
    fallbacks: tuple[Fallback, ...] = ()
    # A PEM bundle of CAs that the supervisor's own HTTPS requests (probes, token and Basic checks) trust besides the
    # system store ("": none): for the upstreams of ca_upstreams only, or, without ca_upstreams, for every upstream.
    ca_file: str = ""
    # A directory of CA certificates (a fleet's CA) that the registry trusts besides the system store (SSL_CERT_DIR)
    # while it pulls through one of ca_upstreams (a fleet's tiers: URLs of the upstream and of fallbacks), and never
    # while it pulls through any other upstream (Docker Hub) or serves read-only. ca_dir needs ca_upstreams.
    ca_dir: str = ""
    ca_upstreams: tuple[str, ...] = ()
    # The registry's own health (with listen: the supervisor knows the mirror's address): every probe_interval, and
    # confirm_after after a miss, the supervisor sends GET /v2/ there (over TLS, not verified, unless listen_tls is
    # false) and waits health_timeout seconds for any answer. After health_failures misses in a row (0: never) it kills
    # the registry (SIGKILL: a registry that answers nothing has nothing to drain) and starts another in the same mode
    # on the same socket. Misses count once the registry answered once, or health_grace seconds after its start (a
    # registry in pull-through mode asks its upstream first, which may take that long).
    health_timeout: float = 5.0
    health_failures: int = 3
    health_grace: float = 60.0
    listen_tls: bool = True
    # The loopback listener: a connection that has not been answered after this long is cut (a client that sends
    # nothing, or a byte at a time, holds no thread longer).
    listener_timeout: float = 10.0
    # With port: read the caching front's per-request log (nginx's syslog datagrams) on UDP 127.0.0.1:port and export
    # its counts (the registry_mirror_front_* metrics). Without port, nothing.
    front_log: bool = False
    # The caching front's cache directory of this mirror (nginx's proxy_cache_path; "": no front): a collection removes
    # the front's copies of the manifests it evicts from the registry.
    front_cache: str = ""

    @classmethod
    def load(cls, path: str) -> Settings:
        """The settings in the JSON file PATH."""
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read settings {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: not a JSON object")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key not in fields:
                raise SettingsError(f"{path}: unknown setting {key!r}")
            if key in ("fallbacks", "ca_file", "ca_dir", "ca_upstreams"):
                values[key] = {"fallbacks": parse_fallbacks, "ca_file": parse_ca_file, "ca_dir": parse_ca_dir,
                               "ca_upstreams": parse_ca_upstreams}[key](path, value)
                continue
            expected = str(fields[key].type)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
            valid = {"bool": isinstance(value, bool), "int": number and isinstance(value, int), "float": number,
                     "str": isinstance(value, str) and value != ""}[expected]
            if not valid:
                wanted = {"bool": "true or false", "int": "a whole number >= 0", "float": "a number >= 0",
                          "str": "a non-empty string"}[expected]
                raise SettingsError(f"{path}: {key} must be {wanted}, not {value!r}")
            values[key] = value
        missing = [name for name, field in fields.items()
                   if name not in values and field.default is dataclasses.MISSING]
        if missing:
            raise SettingsError(f"{path}: missing {', '.join(missing)}")
        values["upstream"] = values["upstream"].rstrip("/")
        check_values(path, values)
        settings = cls(**values)
        parse_version(settings.version)
        return settings


def check_values(path: str, values: dict[str, Any]) -> None:
    """Check what the types of the settings VALUES of the file PATH do not say."""
    for key, top in (("budget_percent", 100), ("low_water_percent", 100), ("port", 65535)):
        if values.get(key, 0) > top:
            raise SettingsError(f"{path}: {key} must be at most {top}, not {values[key]!r}")
    if values.get("low_water_percent") == 0:
        raise SettingsError(f"{path}: low_water_percent must be at least 1")
    if "name" in values and not re.fullmatch(r"[^\s\x00-\x1f\x7f]+", values["name"]):
        raise SettingsError(f"{path}: name must have no spaces or control characters, not {values['name']!r}")
    if "credentials" in values and not CREDENTIALS_PREFIX.fullmatch(values["credentials"]):
        raise SettingsError(f"{path}: credentials must be an environment variable prefix REGISTRY_MIRROR_ followed "
                            f"by capital letters, digits and _, not {values['credentials']!r}")
    for index, fallback in enumerate(values.get("fallbacks", ())):
        if same_url(fallback.url, values["upstream"]):
            raise SettingsError(f"{path}: fallbacks[{index}].url {fallback.url} is the upstream")
    urls = [values["upstream"], *(fallback.url for fallback in values.get("fallbacks", ()))]
    for index, url in enumerate(values.get("ca_upstreams", ())):
        if not any(same_url(url, known) for known in urls):
            raise SettingsError(f"{path}: ca_upstreams[{index}] {url} is neither the upstream nor a fallback's url")
    if values.get("ca_dir") and not values.get("ca_upstreams"):
        raise SettingsError(f"{path}: ca_dir needs ca_upstreams, the upstreams its CAs are trusted for")
    if values.get("front_cache") and not os.path.isabs(values["front_cache"]):
        raise SettingsError(f'{path}: front_cache must be an absolute path or "", not {values["front_cache"]!r}')
    if values.get("listener_timeout", 1) <= 0 or values.get("health_timeout", 1) <= 0:
        raise SettingsError(f"{path}: listener_timeout and health_timeout must be more than 0")
    check_listen(path, values)


def check_listen(path: str, values: dict[str, Any]) -> None:
    """Check the settings VALUES' listen (of the file PATH) when it names a unix socket."""
    listen = values.get("listen", "")
    if listen.startswith(UNIX_LISTEN):
        socket_path = unix_path(listen)
        if not os.path.isabs(socket_path) or socket_path.endswith("/") or "\x00" in socket_path:
            raise SettingsError(f"{path}: listen {listen!r}: a unix socket must be unix: followed by an absolute path "
                                "of a file, without NUL")
        if len(os.fsencode(socket_path)) >= SUN_PATH_MAX:
            raise SettingsError(f"{path}: listen {listen!r}: a unix socket's path must be shorter than "
                                f"{SUN_PATH_MAX} bytes, not {len(os.fsencode(socket_path))}")
        if values.get("listen_tls", True):
            raise SettingsError(f"{path}: listen_tls must be false with a unix socket in listen (the registry serves "
                                "plain HTTP to the front on it)")


def unix_path(listen: str) -> str:
    """The path of the unix socket LISTEN (a listen setting) names; "" when it names no unix socket."""
    return listen[len(UNIX_LISTEN):] if listen.startswith(UNIX_LISTEN) else ""


@dataclasses.dataclass(frozen=True)
class Fallback:
    """An upstream tried after the settings' upstream: its URL (no trailing /) and the prefix of its credentials'
    environment variables ("": anonymous)."""

    url: str
    credentials: str = ""


def parse_ca_file(path: str, value: object) -> str:
    """The setting ca_file of the file PATH, checked: "" or an absolute path of a file with PEM certificates."""
    if not isinstance(value, str) or (value and not os.path.isabs(value)):
        raise SettingsError(f'{path}: ca_file must be an absolute path or "", not {value!r}')
    if value:
        try:  # the file alone, not the system store: that costs most of a second on a slow CPU
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=value)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{path}: ca_file {value}: no CA certificates loaded ({exc})") from exc
    return value


def parse_ca_dir(path: str, value: object) -> str:
    """The setting ca_dir of the file PATH, checked: "" or an absolute path without ":" (SSL_CERT_DIR is a list
    separated by ":"). It may not exist yet: the role installs the CA after the settings' check."""
    if not isinstance(value, str) or (value and (not os.path.isabs(value) or ":" in value)):
        raise SettingsError(f'{path}: ca_dir must be an absolute path without ":" or "", not {value!r}')
    return value


def parse_ca_upstreams(path: str, value: object) -> tuple[str, ...]:
    """The setting ca_upstreams of the file PATH, checked as far as it goes alone: a list of URLs."""
    if not isinstance(value, list) or not all(isinstance(url, str) and url for url in value):
        raise SettingsError(f"{path}: ca_upstreams must be a list of upstream URLs, not {value!r}")
    return tuple(url.rstrip("/") for url in value)


def same_url(one: str, other: str) -> bool:
    """Whether two upstream URLs name one upstream (scheme and host compared in any case, a trailing / ignored)."""
    return one.rstrip("/").lower() == other.rstrip("/").lower()


def parse_fallbacks(path: str, value: object) -> tuple[Fallback, ...]:
    """The setting fallbacks of the file PATH, checked: a list of at most MAX_FALLBACKS objects with a url (http or
    https, a host, no credentials, no path) and optionally credentials ("" or a prefix REGISTRY_MIRROR_...), no URL
    twice."""
    shape = 'a list of objects {"url": "https://...", "credentials": "REGISTRY_MIRROR_..."}'
    if not isinstance(value, list):
        raise SettingsError(f"{path}: fallbacks must be {shape}, not {value!r}")
    if len(value) > MAX_FALLBACKS:
        raise SettingsError(f"{path}: fallbacks must have at most {MAX_FALLBACKS} entries, not {len(value)}")
    fallbacks: list[Fallback] = []
    for index, entry in enumerate(value):
        where = f"fallbacks[{index}]"
        if not isinstance(entry, dict):
            raise SettingsError(f"{path}: {where} must be an object with url and credentials, not {entry!r}")
        unknown = sorted(set(entry) - {"url", "credentials"})
        if unknown:
            raise SettingsError(f"{path}: {where} has an unknown key {unknown[0]!r} (only url and credentials)")
        if "url" not in entry:
            raise SettingsError(f"{path}: {where} has no url")
        url = fallback_url(path, where, entry["url"])
        credentials = entry.get("credentials", "")
        if not isinstance(credentials, str) or (credentials and not CREDENTIALS_PREFIX.fullmatch(credentials)):
            raise SettingsError(f'{path}: {where}.credentials must be "" (anonymous) or an environment variable prefix '
                                f"REGISTRY_MIRROR_ followed by capital letters, digits and _, not {credentials!r}")
        for earlier, other in enumerate(fallbacks):
            if same_url(url, other.url):
                raise SettingsError(f"{path}: {where}.url {url} is also fallbacks[{earlier}].url")
        fallbacks.append(Fallback(url, credentials))
    return tuple(fallbacks)


def fallback_url(path: str, where: str, url: object) -> str:
    """URL, the url of the entry WHERE of PATH's fallbacks, checked and without a trailing /."""
    problem = ""
    if not isinstance(url, str) or not re.fullmatch(r"[^\s\x00-\x1f\x7f]+", url):
        problem = "must be an http or https URL without spaces or control characters"
    else:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port that is no number in 0-65535)
        except ValueError as exc:
            problem = f"is not a URL ({exc})"
        else:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problem = "must be an http or https URL with a host"
            elif "@" in parts.netloc:
                problem = "must carry no credentials (credentials names their variables)"
            elif parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
                problem = "must have no path, query or fragment"
    if problem:
        raise SettingsError(f"{path}: {where}.url {problem}, not {url!r}")
    assert isinstance(url, str)
    return url.rstrip("/")


def parse_version(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a distribution version such as 3.1.1, v2.8.2 or 2.8.2+ds1."""
    parsed = distribution_version(version)
    if parsed is None:
        raise SettingsError(f"version {version!r} is not a distribution version")
    return parsed
