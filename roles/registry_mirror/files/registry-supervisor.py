# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry.service's main process: keeps the mirror serving whether or not Docker Hub answers.

Usage: registry-supervisor SETTINGS.json [SETTINGS.json ...]
       registry-supervisor --check-settings SETTINGS.json    (the role's validate step: load it as at start, exit 2 if
                                                              invalid, saying why)
       registry-supervisor --check-env ENVIRONMENT_FILE      (the same for a credentials file, proxy.env: never a value)

distribution in pull-through mode contacts its upstream while starting and exits when it cannot, so a mirror
(re)started during an upstream outage (a reboot, a certificate renewal, an upgrade) would serve nothing, although its
cache could. This supervisor runs the registry in pull-through mode while the upstream answers, and the same binary,
config and storage read-only without the proxy section while it does not (cached images keep pulling fast, without a
stalled upstream lookup per tag), probing the upstream and switching back by itself. The old process drains its
in-flight requests in the background. With `listen` set (distribution 3.x), the supervisor holds the mirror's
listening socket itself and hands it to each registry by systemd's socket-activation protocol (LISTEN_FDS): while one
registry replaces another, new connections wait in a socket's queue for the next one instead of being refused; a
switch first steers them to a second socket and gives the old process switch_drain seconds to answer what it already
accepted (Supervisor.replace), and says "switch done" once the next one takes them. listen may also name a unix
socket (unix:/run/registry/NAME.sock: the registry then serves plain HTTP to a caching front, nginx, on the same host):
the supervisor binds it (mode 0660; a stale socket at the path is replaced, anything else there is refused and left
alone), hands it to each registry the same way (LISTEN_FDS), probes the registry's health through it in plain HTTP,
and removes it at stop. A unix socket has no SO_REUSEPORT group: a switch replaces the registry on the same socket,
where new connections wait in the queue while the next registry starts.

SETTINGS is a JSON object written by the role (no secrets: the upstream credentials come from the environment,
REGISTRY_PROXY_USERNAME / REGISTRY_PROXY_PASSWORD, as for the registry itself). Required: binary, config, upstream,
version. The other keys (see Settings) have defaults; keys starting with "_" are comments.

At start, and whenever it returns to pull-through mode, the supervisor asks the upstream's token service for a pull
token the way the installed distribution version will, and says in the journal when that cannot work: the token
service refuses the account, or distribution will not send the credentials to the realm the upstream names
(public_suffix_list.dat.gz, next to this program, decides which hosts share a registrable domain). distribution 3.1+
also answers a Basic challenge (a fleet's tier mirror, another distribution behind htpasswd) with the credentials:
the supervisor then tries them on the upstream's /v2/ and says when it refuses the account, or when it asks for
credentials and the mirror has none.

Fallbacks (fallbacks: a list of {"url": ..., "credentials": PREFIX or ""}, tried in order after upstream; a fleet's
edge mirror pulls from its site's tier mirror, and from Docker Hub anonymously when no tier answers): the registry
pulls through one upstream at a time, the first that answers, with its URL in REGISTRY_PROXY_REMOTEURL (the config
names upstream) and only its credentials (upstream: REGISTRY_PROXY_USERNAME / _PASSWORD from the environment; a
fallback: PREFIX_USERNAME / PREFIX_PASSWORD, or none when credentials is ""), and read-only only while none answers.
The upstream pulled through is probed as above; a confirmed failure moves on to the next that answers; and while a
fallback (or the read-only cache) serves, every probe tick also probes the upstreams before it, in order, and one
answer is enough to go back. Each switch says in the journal which upstream it leaves and which it takes. ca_file: a
PEM bundle of CAs that the supervisor's own HTTPS requests trust besides the system store; ca_dir: the directory the
registry gets as SSL_CERT_DIR (Go reads it besides the system bundle); both only for the upstreams of ca_upstreams (a
fleet's tiers): a registry pulling from Docker Hub, from another upstream or read-only never trusts the fleet CA.

Free-space floor (min_free_mb > 0): at start and at every probe tick the supervisor reads the free space of the
cache's filesystem (statvfs of REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY when the environment sets it, as
distribution does, else of the storage setting). Below the floor it runs the registry read-only even while the
upstream answers: distribution 3.1 in pull-through mode rewrites a tag's link at every lookup, and on a full disk that
write fails every pull by tag, cached images included, while read-only it serves them. It returns to pull-through mode
once more than the floor plus a margin (a tenth of the floor, at least 64 MiB) is free and the upstream answers: the
margin keeps a mirror that frees a little space by itself from switching at every tick.

Disk budget (budget_mb and/or budget_percent of the cache's filesystem; the smaller wins): every cache_check_interval
the supervisor adds up the cache's blob data (registry_cache.py, next to this program); above the budget, on a
schedule (collect_interval) and on SIGUSR1 it collects while the registry goes on serving: it evicts the least
recently used images (tag links first, so that a pull finds an image whole or not at all) until the cache is under
the low-water mark (low_water_percent of the budget), deletes the blobs no manifest references any more (a second
walk right before the deletions spares what a pull cached meanwhile; a pull that still races one falls back to the
upstream, as for any blob the mirror lacks), and puts the duration and the bytes reclaimed in the journal. The
registry is not replaced for it: a switch of processes makes new connections wait about a second. It learns
which images are used from distribution's pull notifications, which each registry sends to its loopback port (port):
the supervisor hands it the endpoint in its environment (REGISTRY_NOTIFICATIONS_ENDPOINTS) with a secret header it
draws at each start (never on a command line or in a file; blanked in the registry's lines, which pass through the
supervisor, as distribution logs endpoint headers at level info). /events refuses a request without the secret (401),
without a plain Content-Length within MAX_EVENTS_BODY (4xx, unread), and ignores pull events whose repository name or
digest distribution could not have sent; each is counted in the metrics. It keeps those times in the cache directory
(registry_cache.USAGE_FILE). The same port serves, without a secret, its Prometheus metrics (/metrics), followed by
distribution's own when registry_metrics_url names them. A connection to the port gets listener_timeout seconds in all.
With front_log, the same port number over UDP receives the caching front's per-request log (nginx's syslog output, a
datagram per request, from 127.0.0.1 only; see parse_front_line), counted into the registry_mirror_front_* metrics:
cache hits and misses, blobs the front served from the registry's storage, errors.

Health (with listen): every probe_interval the supervisor sends GET /v2/ to its own registry; after health_failures
misses in a row (health_timeout each, confirm_after apart) it kills it and starts another in the same mode on the same
socket, saying so with the mirror's name: with the defaults, at most probe_interval + 3 x (health_timeout +
confirm_after) = 33 s after a registry stops answering. A replaced registry still running stop_timeout seconds after
its SIGTERM is killed; while one drains, a switch does not hand the port over to a second socket (the group's order
would not be known) but replaces the registry on the same socket.

Group mode (several SETTINGS files: one mirror per upstream, as distribution proxies one upstream per process): all
files are validated first (an invalid one: exit 2, nothing started), then each gets a child supervisor of its own
(this program with that one file) under the one unit, whose lines go to the journal prefixed with "[NAME] " (the
setting name, else the file's path). A child that exits is restarted after a back-off (2 s doubling up to 60 s,
2 s again once it ran 60 s): one mirror that cannot start never stops the others. SIGTERM and SIGUSR1 are forwarded
to every child. The first file is the primary (Docker Hub): its child gets the unit's environment as in single mode.
The others get none of its REGISTRY_* variables, and REGISTRY_PROXY_USERNAME / _PASSWORD from PREFIX_USERNAME /
PREFIX_PASSWORD when their setting credentials names PREFIX (REGISTRY_MIRROR_...): each credential reaches only its
own registry. A child whose settings name fallbacks also gets the PREFIX_USERNAME / PREFIX_PASSWORD they name, as
they are: its supervisor hands them to its registry while it pulls through that fallback.
"""
from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import errno
import gzip
import hmac
import http.client
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from stat import S_ISSOCK
from typing import Any

import registry_cache

PROG = "registry-supervisor"
PROGRAM = os.path.abspath(__file__)  # what group mode runs for each mirror
PUBLIC_SUFFIX_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "public_suffix_list.dat.gz")
# Read-only mode: the same config without the proxy section, storage read-only, no upstream credentials.
LOCAL_ENV = {
    "REGISTRY_PROXY_REMOTEURL": "",
    "REGISTRY_STORAGE_MAINTENANCE": "{readonly: {enabled: true}}",
}
CREDENTIAL_ENV = ("REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD")
# The name the role gives the Docker Hub mirror in group mode (validate_inputs keeps it from registry_mirror_upstreams).
PRIMARY_NAME = "docker-hub"
# The first distribution release that restricts where the proxy sends its upstream credentials: only to a token realm
# on the upstream's host and port or on the upstream's registrable domain, and that also answers Basic challenges.
# Earlier releases send them to any token realm the upstream names and never to a Basic challenge.
RESTRICTED_REALMS = (3, 1)
# The token scope asked for when checking the token service: any public repository does.
CHECK_SCOPE = "repository:library/alpine:pull"
# distribution's override of its storage directory, honoured by the free-space check too (systemd drop-ins set it).
STORAGE_ENV = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"
MIB = 1024 * 1024
# Back to pull-through mode only above the floor plus max(MARGIN_MIN_MB, floor / MARGIN_DIVISOR) MiB.
MARGIN_MIN_MB = 64
MARGIN_DIVISOR = 10
# How often the usage times are written down (and at stop).
USAGE_SAVE_INTERVAL = 60.0
# Starts the registry with the listening socket (file descriptor $1) as descriptor 3 and the socket-activation
# variables naming the registry's own process ($$: the shell's process, which exec turns into the registry).
LAUNCHER = ('fd=$1; shift; [ "$fd" = 3 ] || { eval "exec 3<&$fd $fd<&-"; }; '
            'LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec "$@"')
# The listening socket's queue: connections that arrive while one registry replaces another wait there.
LISTEN_BACKLOG = 1024
# A listen on a unix socket: "unix:" and the socket's absolute path, shorter than sun_path (108 bytes with the
# terminating NUL). The socket's mode: the front (nginx, the same user) connects, nobody else.
UNIX_LISTEN = "unix:"
SUN_PATH_MAX = 108
UNIX_SOCKET_MODE = 0o660
# A switch hands the port over (Supervisor.hand_over): the next registry gets a new socket in the SO_REUSEPORT group
# of the mirror's address, and this classic BPF program, attached to the group (socket(7),
# SO_ATTACH_REUSEPORT_CBPF), sends every new connection to the group's second socket: the newest, while the old one
# is still in the group. Once the old socket is closed the newest is the only one, and the index, out of range, falls
# back to the kernel's hash over the one socket. The program is one instruction: BPF_RET | BPF_K, 1.
SO_ATTACH_REUSEPORT_CBPF = 51
STEER_TO_NEWEST = struct.pack("=HBBI", 0x06, 0, 0, 1)
# The biggest notification body accepted (distribution sends a few events per request).
MAX_EVENTS_BODY = 1 << 20
# distribution's notification endpoint, handed to each registry in its environment (the whole list: distribution 2.8
# and 3.x both read a struct field's value as YAML; 3.x alone could also set one endpoint's headers) with the secret the
# supervisor draws at start in EVENTS_SECRET_HEADER: any local process reaches the loopback port, and only a registry
# of this supervisor knows the secret. No double quote or backslash in it: the value is also an ordinary shell word.
NOTIFICATIONS_ENV = "REGISTRY_NOTIFICATIONS_ENDPOINTS"
EVENTS_SECRET_HEADER = "X-Registry-Supervisor-Secret"
NOTIFICATION_ENDPOINTS = ("[{{name: registry-supervisor, url: 'http://127.0.0.1:{port}/events', "
                          "headers: {{" + EVENTS_SECRET_HEADER + ": ['{secret}']}}, timeout: 2s, threshold: 5, "
                          "backoff: 5s, ignoredmediatypes: [application/octet-stream], "
                          "ignore: {{actions: [push, delete, mount]}}}}]")
# What a pull event must name to be recorded (anything else is counted and ignored, so that a forged or garbled event
# cannot skew the eviction): a digest of go-digest's algorithms, lower-case hex of the algorithm's length, and a
# repository name of distribution's grammar (github.com/distribution/reference: an optional host[:port]/, then
# lower-case path components), at most REPOSITORY_MAX characters.
EVENT_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_NAME = re.compile(rf"(?:(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?/)?"
                             rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
REPOSITORY_MAX = 255
# The registry's lines pass through the supervisor, which blanks the notification secret in them: distribution logs
# its endpoints' headers at level info.
REDACTED = "[secret]"
# Group mode: a child that exits is restarted after BACKOFF_MIN seconds, doubled at each exit up to BACKOFF_MAX, and
# BACKOFF_MIN again once a child ran BACKOFF_RESET seconds. GROUP_TICK: how often the children are looked at (and how
# soon SIGTERM ends a back-off). At stop, the children get the largest stop_timeout plus GROUP_STOP_MARGIN seconds.
BACKOFF_MIN = 2.0
BACKOFF_MAX = 60.0
BACKOFF_RESET = 60.0
GROUP_TICK = 0.1
GROUP_STOP_MARGIN = 5.0
# The further mirrors' upstream credentials in the unit's environment (PREFIX_USERNAME, PREFIX_PASSWORD): each reaches
# only the child whose settings name PREFIX (credentials), as REGISTRY_PROXY_USERNAME / REGISTRY_PROXY_PASSWORD.
CREDENTIALS_PREFIX = re.compile(r"REGISTRY_MIRROR_[A-Z0-9_]+")
MIRROR_CREDENTIAL_ENV = re.compile(r"REGISTRY_MIRROR_[A-Z0-9_]+_(USERNAME|PASSWORD)")
# The most fallbacks a settings file may name: each costs a probe per tick while a preferred upstream is away.
MAX_FALLBACKS = 8
# The caching front's per-request log (front_log): nginx's syslog datagrams with nohostname, one per request,
# "<PRI>Mmm dd hh:mm:ss registry_front: MESSAGE" with MESSAGE the front's log_format,
# "cache=$upstream_cache_status kind=$kind status=$status upstream=$upstream_addr" (nginx writes "-" for an empty
# variable). A datagram longer than FRONT_LOG_MAX is none of these. A hostname before the tag is tolerated (a front
# configured without nohostname).
FRONT_LOG_MAX = 2048
FRONT_LOG_LINE = re.compile(r"<[0-9]{1,3}>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} (?:[^\s:]+ )?"
                            r"registry_front: cache=(\S*) kind=(\S+) status=([0-9]{3}) upstream=(\S.*)")
FRONT_CACHE_STATUSES = ("MISS", "BYPASS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "HIT", "-")
FRONT_KINDS = ("manifest", "blob", "other")
# Which counter each cache status adds to, besides registry_mirror_front_requests_total ("-": not cached by the front).
FRONT_CACHE_COUNTERS = {
    "HIT": "registry_mirror_front_cache_hits_total",
    "MISS": "registry_mirror_front_cache_misses_total",
    "STALE": "registry_mirror_front_cache_stale_total",
    "UPDATING": "registry_mirror_front_cache_stale_total",
    "REVALIDATED": "registry_mirror_front_cache_revalidated_total",
    "EXPIRED": "registry_mirror_front_cache_revalidated_total",
    "BYPASS": "registry_mirror_front_cache_bypass_total",
}
# The receive buffer asked for: a burst of requests (a cluster pulling at once) sends a datagram each, and a datagram
# that finds the buffer full is lost, uncounted. The kernel caps it at net.core.rmem_max.
FRONT_LOG_BUFFER = 1 << 20
# Lines of the journal are written whole: group mode writes its children's from several threads.
OUTPUT_LOCK = threading.Lock()


class SettingsError(Exception):
    """The settings file is missing, unreadable or invalid."""


class Stopping(Exception):
    """systemd stopped the unit during an upstream request."""


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
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not match:
        raise SettingsError(f"version {version!r} is not a distribution version")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


# --- Where distribution sends its upstream credentials --------------------------------------------------------------

class PublicSuffixList:
    """The Public Suffix List's rules (ICANN and private sections), to find a host's registrable domain the way
    distribution's Go code does (golang.org/x/net/publicsuffix.EffectiveTLDPlusOne)."""

    def __init__(self, text: str) -> None:
        self.rules: set[str] = set()
        self.wildcards: set[str] = set()  # "*.ck" is stored as "ck"
        self.exceptions: set[str] = set()  # "!www.ck" is stored as "www.ck"
        for line in text.splitlines():
            words = line.split()
            if not words or words[0].startswith("//"):
                continue
            rule = words[0].lower()
            if rule.startswith("!"):
                self.exceptions.add(to_ascii(rule[1:]))
            elif rule.startswith("*."):
                self.wildcards.add(to_ascii(rule[2:]))
            else:
                self.rules.add(to_ascii(rule))

    @classmethod
    def load(cls, path: str = PUBLIC_SUFFIX_LIST) -> PublicSuffixList:
        """The list in PATH (gzip-compressed); without it, only the default rule (every TLD is a public suffix)."""
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return cls(handle.read())
        except (OSError, EOFError, ValueError) as exc:
            say(f"cannot read the public suffix list ({exc}): comparing domains by their last two labels")
            return cls("")

    def public_suffix_labels(self, labels: list[str]) -> int:
        """How many of LABELS (a host name's, in order) form its public suffix: an exception rule prevails, then the
        matching rule with the most labels, and the default rule "*" matches any single last label."""
        count = len(labels)
        longest = 1
        for size in range(1, count + 1):
            suffix = ".".join(labels[count - size:])
            if suffix in self.exceptions:
                return size - 1
            if suffix in self.rules or (size > 1 and ".".join(labels[count - size + 1:]) in self.wildcards):
                longest = size
        return longest

    def registrable_domain(self, host: str) -> str:
        """HOST's public suffix plus one label (eTLD+1), in ASCII; "" when there is none (HOST is itself a public
        suffix, or has an empty label), which is what distribution compares when its Go code reports an error."""
        if not host or host.startswith(".") or host.endswith(".") or ".." in host:
            return ""
        labels = to_ascii(host.lower()).split(".")
        suffix = self.public_suffix_labels(labels)
        if suffix >= len(labels):
            return ""
        return ".".join(labels[-suffix - 1:])


def to_ascii(name: str) -> str:
    """NAME with its non-ASCII labels in their IDNA (punycode) form, as the list is compared in."""
    if name.isascii():
        return name
    labels = []
    for label in name.split("."):
        try:
            labels.append(label.encode("idna").decode("ascii") if label and not label.isascii() else label)
        except UnicodeError:
            labels.append(label)
    return ".".join(labels)


_LOADED: list[PublicSuffixList] = []


def public_suffix_list() -> PublicSuffixList:
    """The list next to this program, read when first needed (most upstreams name a realm on their own host)."""
    if not _LOADED:
        _LOADED.append(PublicSuffixList.load())
    return _LOADED[0]


def literal_or_local(host: str) -> bool:
    """Whether HOST is an IP address or localhost: never a registrable domain."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_port(url: urllib.parse.SplitResult) -> str:
    """URL's host[:port] as written (Go's url.URL.Host), without user information."""
    return url.netloc.rpartition("@")[2].lower()


def realm_allowed(upstream: str, realm: str, psl: PublicSuffixList | None = None) -> bool:
    """distribution 3.1+: whether the proxy for UPSTREAM sends its credentials to the token REALM: the realm's host
    and port are the upstream's, or both hosts are DNS names (no IP address, no localhost) with the same registrable
    domain (auth.docker.io for registry-1.docker.io, but not auth.evil.co.uk for registry.example.co.uk)."""
    try:
        remote, target = urllib.parse.urlsplit(upstream), urllib.parse.urlsplit(realm)
        remote_host, realm_host = remote.hostname or "", target.hostname or ""
    except ValueError:
        return False
    if not host_port(remote) or not host_port(target):
        return False
    if host_port(remote) == host_port(target):
        return True
    if not remote_host or not realm_host or literal_or_local(remote_host) or literal_or_local(realm_host):
        return False
    if psl is None:
        psl = public_suffix_list()
    return psl.registrable_domain(remote_host) == psl.registrable_domain(realm_host)


def sends_credentials(version: str, scheme: str, upstream: str, realm: str,
                      psl: PublicSuffixList | None = None) -> bool:
    """Whether distribution VERSION answers UPSTREAM's challenge (SCHEME "bearer" with a token REALM, or "basic")
    with its upstream credentials."""
    restricted = parse_version(version)[:2] >= RESTRICTED_REALMS
    if scheme == "basic":
        return restricted
    return not restricted or realm_allowed(upstream, realm, psl)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of one WWW-Authenticate header value."""
    scheme, _space, rest = header.strip().partition(" ")
    params = {key.lower(): value[1:-1].replace('\\"', '"') if value.startswith('"') else value
              for key, value in re.findall(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)', rest)}
    return scheme.lower(), params


# --- The supervisor ---------------------------------------------------------------------------------------------------

def say(message: str) -> None:
    """One line in the journal."""
    with OUTPUT_LOCK:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# What a request of the supervisor's credential checks may carry that is meant for one origin only: along a redirect
# to another origin (scheme, host, port; so from https to http too) it is left behind. Go's client (distribution's)
# leaves it behind for another host but keeps it for a subdomain: this is the stricter rule.
ORIGIN_HEADERS = ("authorization", "cookie")
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """URL's origin: scheme, host and port (the scheme's default when not written), lower case; None if invalid."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, DEFAULT_PORTS[scheme] if port is None else port


class OriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but never takes Authorization or Cookie along to another origin (scheme,
    host and port, so never from https to http either); once left behind, they stay behind for the rest of the chain.
    Says so in the journal (origins only: no path, no query, no value)."""

    def redirect_request(  # noqa: PLR0913, PLR0917 (urllib's signature)
            self, req: urllib.request.Request, fp: typing.IO[bytes], code: int, msg: str,
            headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        source, target = origin(req.full_url), origin(new.full_url)
        if source is not None and source == target:
            return new
        carried = [name for name in (*new.headers, *new.unredirected_hdrs) if name.lower() in ORIGIN_HEADERS]
        for name in carried:
            new.remove_header(name)
        if carried:
            downgrade = " and from https to http" if source and target and (source[0], target[0]) == (
                "https", "http") else ""
            say(f"a redirect (HTTP {code}) from {show_origin(req.full_url)} to {show_origin(new.full_url)} leads to "
                f"another origin{downgrade}: the credentials are not sent there")
        return new


def show_origin(url: str) -> str:
    """URL without user information, path, query or fragment, for the journal."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{host_port(parts)}"
    except ValueError:
        return "an invalid URL"


def describe(image: registry_cache.Image) -> str:
    """An evicted image for the journal: repository@sha256:<12 hex> (tags)."""
    tags = f" ({','.join(image.tags)})" if image.tags else ""
    return f"{image.repository}@{image.digest[:19]}{tags}"


def manifest_media_type(media_type: str) -> bool:
    """Whether a notification's target is a manifest (image manifest, index or list), not a blob."""
    return "manifest" in media_type or "image.index" in media_type


class Usage:
    """When each cached manifest was last pulled, per repository: filled from distribution's pull notifications (in
    the listener's threads), read by collections, kept in the cache directory across restarts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.times: dict[tuple[str, str], float] = {}
        self.dirty = False
        self.times = registry_cache.read_usage(path)  # none when missing or unreadable: ordered by when cached

    def record(self, repository: str, digest: str, when: float) -> None:
        """REPOSITORY's manifest DIGEST was pulled at WHEN."""
        with self.lock:
            self.times[(repository, digest)] = when
            self.dirty = True

    def snapshot(self) -> dict[tuple[str, str], float]:
        """A copy of the times."""
        with self.lock:
            return dict(self.times)

    def keep_only(self, present: set[tuple[str, str]]) -> None:
        """Forget the manifests that are no longer cached (evicted, expired)."""
        with self.lock:
            before = len(self.times)
            self.times = {key: when for key, when in self.times.items() if key in present}
            self.dirty = self.dirty or len(self.times) != before

    def save(self) -> None:
        """Write the times down (atomically) when they changed."""
        with self.lock:
            if not self.dirty:
                return
            data = {f"{repo}@{digest}": when for (repo, digest), when in self.times.items()}
            self.dirty = False
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump({"version": 1, "used": data}, handle)
            os.replace(temporary, self.path)
        except OSError as exc:
            say(f"cannot write {self.path} ({exc})")


class Metrics:
    """The supervisor's Prometheus metrics (written by the main thread, read by the listener's)."""

    HELP: typing.ClassVar[dict[str, tuple[str, str]]] = {
        "registry_mirror_read_only": ("gauge", "1 while the registry serves the cache read-only without the proxy."),
        "registry_mirror_upstream_index": ("gauge", "The upstream the registry pulls through: 0 the upstream, 1 and "
                                           "on the fallbacks in order, -1 none (read-only)."),
        "registry_mirror_mode_since_timestamp_seconds": ("gauge", "When the registry began serving in its current mode "
                                                         "(read-only, or through its current upstream)."),
        "registry_mirror_free_bytes": ("gauge", "Free bytes on the cache's filesystem at the last check."),
        "registry_mirror_cache_bytes": ("gauge", "Bytes of blob data in the cache at the last check."),
        "registry_mirror_cache_budget_bytes": ("gauge", "The cache's disk budget in bytes (0: none)."),
        "registry_mirror_cache_images": ("gauge", "Images (root manifests per repository) at the last collection."),
        "registry_mirror_cache_collections_total": ("counter", "Collections run."),
        "registry_mirror_cache_evictions_total": ("counter", "Images evicted to keep the cache under its budget."),
        "registry_mirror_cache_reclaimed_bytes_total": ("counter", "Bytes of blob data deleted by collections."),
        "registry_mirror_cache_last_collection_seconds": ("gauge", "How long the last collection took."),
        "registry_mirror_cache_last_collection_timestamp_seconds": ("gauge", "When the last collection ended."),
        "registry_mirror_events_unauthorized_total": ("counter", "Notifications refused (401) for a missing or wrong "
                                                      "secret."),
        "registry_mirror_events_refused_total": ("counter", "Notifications refused for their length or body (4xx)."),
        "registry_mirror_events_invalid_total": ("counter", "Pull events ignored: no valid repository name or digest."),
        "registry_mirror_listener_timeouts_total": ("counter", "Loopback connections cut at listener_timeout."),
        "registry_mirror_registry_health_failures_total": ("counter", "Health probes the registry did not answer."),
        "registry_mirror_registry_restarts_total": ("counter", "Registries killed and started again because they "
                                                    "stopped answering."),
        "registry_mirror_registry_drain_kills_total": ("counter", "Replaced registries killed because they still ran "
                                                       "stop_timeout seconds after their SIGTERM."),
        "registry_mirror_front_requests_total": ("counter", "Requests the caching front answered, as its log says (a "
                                                 "log datagram lost is a request not counted)."),
        "registry_mirror_front_cache_hits_total": ("counter", "Front requests answered from its cache (HIT)."),
        "registry_mirror_front_cache_misses_total": ("counter", "Front requests not in its cache, fetched from the "
                                                     "registry (MISS)."),
        "registry_mirror_front_cache_stale_total": ("counter", "Front requests answered from an expired copy in its "
                                                    "cache while the registry failed or a refresh ran (STALE, "
                                                    "UPDATING)."),
        "registry_mirror_front_cache_revalidated_total": ("counter", "Front requests whose expired copy was asked of "
                                                          "the registry again (EXPIRED, REVALIDATED)."),
        "registry_mirror_front_cache_bypass_total": ("counter", "Front requests passed to the registry past its cache "
                                                     "(BYPASS)."),
        "registry_mirror_front_blobs_from_disk_total": ("counter", "Blobs the front served from the registry's storage "
                                                        "itself, without the registry (200 or 206)."),
        "registry_mirror_front_errors_total": ("counter", "Front requests answered with a 5xx status."),
    }

    # Exported only when the settings name fallbacks.
    FALLBACKS_ONLY = ("registry_mirror_upstream_index",)
    # Exported only when the supervisor reads the front's log (front_log and port).
    FRONT_ONLY = tuple(name for name in HELP if name.startswith("registry_mirror_front_"))

    def __init__(self, fallbacks: bool = False, front: bool = False) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = dict.fromkeys(self.HELP, 0.0)
        self.names = [name for name in self.HELP if (fallbacks or name not in self.FALLBACKS_ONLY)
                      and (front or name not in self.FRONT_ONLY)]

    def set(self, **values: float) -> None:
        """Set gauges."""
        with self.lock:
            self.values.update(values)

    def add(self, **values: float) -> None:
        """Increase counters."""
        with self.lock:
            for name, value in values.items():
                self.values[name] += value

    def text(self) -> str:
        """The Prometheus text exposition."""
        with self.lock:
            values = dict(self.values)
        lines = []
        for name in self.names:
            kind, text = self.HELP[name]
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {values[name]:.17g}"]
        return "\n".join(lines) + "\n"


class Listener(ThreadingHTTPServer):
    """The supervisor's loopback port (SETTINGS.port): distribution's notifications in (with SECRET), metrics out.
    Each connection gets listener_timeout seconds in all (a watchdog cuts it after that), and each read as long."""

    daemon_threads = True

    def __init__(self, settings: Settings, usage: Usage, metrics: Metrics, secret: str) -> None:
        self.usage, self.metrics, self.registry_metrics_url = usage, metrics, settings.registry_metrics_url
        self.secret, self.deadline = secret.encode(), settings.listener_timeout
        self.connections: dict[socket.socket, float] = {}  # each open connection: when it is cut
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", settings.port), ListenerHandler)
        threading.Thread(target=self.watch, daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections[request] = time.monotonic() + self.deadline
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)

    def watch(self) -> None:
        """Cut the connections older than the deadline: a socket timeout alone lets a client that sends a byte now
        and then hold its thread for ever."""
        while True:
            time.sleep(min(1.0, self.deadline / 4))
            now = time.monotonic()
            with self.connections_lock:
                late = [sock for sock, end in self.connections.items() if end <= now]
                for sock in late:
                    del self.connections[sock]
            for sock in late:
                self.metrics.add(registry_mirror_listener_timeouts_total=1)
                with contextlib.suppress(OSError):  # its handler then reads the end of the stream and returns
                    sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or cut off: nothing to say (socketserver would print a traceback); anything else in a line."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            say(f"the loopback listener failed to answer a request ({error!r})")


class ListenerHandler(BaseHTTPRequestHandler):
    """POST /events (distribution's notification envelopes, with the secret) and GET /metrics (open on loopback)."""

    server: Listener

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.deadline)  # each read of the connection

    def refuse(self, status: int, counter: str) -> None:
        """Answer STATUS without reading the body (the connection is closed after it), and count it."""
        self.server.metrics.add(**{counter: 1})
        self.close_connection = True
        self.send_error(status)

    def body_length(self) -> int | None:
        """The length of the body, when the request states it once, in ASCII digits, within MAX_EVENTS_BODY; None when
        it was refused (411 without a Content-Length or with a Transfer-Encoding, 413 too large, else 400)."""
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths or self.headers.get("Transfer-Encoding") is not None:
            self.refuse(411, "registry_mirror_events_refused_total")
            return None
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,12}", lengths[0].strip()):
            self.refuse(400, "registry_mirror_events_refused_total")
            return None
        length = int(lengths[0])
        if length > MAX_EVENTS_BODY:
            self.refuse(413, "registry_mirror_events_refused_total")
            return None
        return length

    def authorized(self) -> bool:
        """Whether the request carries the secret, once (compared in constant time)."""
        given = self.headers.get_all(EVENTS_SECRET_HEADER) or []
        return len(given) == 1 and hmac.compare_digest(given[0].strip().encode("utf-8", "surrogateescape"),
                                                       self.server.secret)

    def do_POST(self) -> None:  # the name http.server calls
        """Record the manifest pulls of a notification envelope from a registry of this supervisor."""
        if self.path != "/events":
            self.send_error(404)
            return
        if not self.authorized():
            self.refuse(401, "registry_mirror_events_unauthorized_total")
            return
        length = self.body_length()
        if length is None:
            return
        try:
            body = self.rfile.read(length)
        except OSError:  # timed out, or cut at the deadline
            self.close_connection = True
            return
        try:
            if len(body) != length:
                raise ValueError("short body")
            events = json.loads(body).get("events", [])
        except (ValueError, AttributeError):
            self.refuse(400, "registry_mirror_events_refused_total")
            return
        now = time.time()
        invalid = 0
        for event in events if isinstance(events, list) else []:
            target = event.get("target") if isinstance(event, dict) else None
            if not isinstance(target, dict) or event.get("action") != "pull" \
                    or not manifest_media_type(str(target.get("mediaType", ""))):
                continue
            repository, digest = target.get("repository"), target.get("digest")
            if valid_event_target(repository, digest):
                assert isinstance(repository, str) and isinstance(digest, str)
                self.server.usage.record(repository, digest, now)
            else:
                invalid += 1
        if invalid:
            self.server.metrics.add(registry_mirror_events_invalid_total=invalid)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # the name http.server calls
        """The supervisor's metrics, then distribution's."""
        if self.path != "/metrics":
            self.send_error(404)
            return
        text = self.server.metrics.text()
        if self.server.registry_metrics_url:
            try:
                with urllib.request.urlopen(self.server.registry_metrics_url, timeout=5) as response:
                    text += response.read().decode("utf-8", "replace")
            except (OSError, ValueError, http.client.HTTPException) as exc:
                text += f"# distribution's metrics ({self.server.registry_metrics_url}) did not answer: {exc}\n"
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        """No access log: distribution posts at every pull."""


def valid_event_target(repository: object, digest: object) -> bool:
    """Whether a pull event's REPOSITORY and DIGEST are a repository name and a digest distribution could send."""
    return (isinstance(repository, str) and len(repository) <= REPOSITORY_MAX
            and REPOSITORY_NAME.fullmatch(repository) is not None
            and isinstance(digest, str) and EVENT_DIGEST.fullmatch(digest) is not None)


# --- The caching front's per-request log -----------------------------------------------------------------------------

def parse_front_line(datagram: bytes) -> tuple[str, str, int, str] | None:
    """The cache status ("-": none), kind, HTTP status and upstream address ("-": none) of a request the front logged
    (DATAGRAM: one nginx syslog message, FRONT_LOG_LINE); None for anything else."""
    if len(datagram) > FRONT_LOG_MAX:
        return None
    try:
        text = datagram.decode("ascii")
    except UnicodeDecodeError:
        return None
    match = FRONT_LOG_LINE.fullmatch(text.rstrip("\r\n\x00"))
    if match is None:
        return None
    cache, kind, status, upstream = match.groups()
    cache = cache or "-"
    if cache not in FRONT_CACHE_STATUSES or kind not in FRONT_KINDS:
        return None
    return cache, kind, int(status), upstream.strip() or "-"


def front_counters(cache: str, kind: str, status: int, upstream: str) -> list[str]:
    """The counters a request the front logged adds 1 to (parse_front_line's answer). A blob the front served from
    the registry's storage has no cache status and no upstream; one the registry served has its address."""
    names = ["registry_mirror_front_requests_total"]
    if cache in FRONT_CACHE_COUNTERS:
        names.append(FRONT_CACHE_COUNTERS[cache])
    if kind == "blob" and cache == "-" and upstream == "-" and status in (200, 206):
        names.append("registry_mirror_front_blobs_from_disk_total")
    if status >= 500:
        names.append("registry_mirror_front_errors_total")
    return names


class FrontLog:
    """The front's log port (UDP 127.0.0.1:PORT, the listener's number): a thread counts each request logged into
    METRICS. Only datagrams from 127.0.0.1 count (the front sends from there); anything that is not a front's log line
    is ignored. OSError when the port cannot be bound."""

    def __init__(self, port: int, metrics: Metrics) -> None:
        self.metrics = metrics
        self.closed = False
        self.failed = False  # a datagram could not be counted: said once
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):  # the default buffer then: fewer requests in a burst are counted
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FRONT_LOG_BUFFER)
            self.sock.bind(("127.0.0.1", port))
        except OSError:
            self.sock.close()
            raise
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        """Count each datagram until the socket is closed; a datagram's trouble never ends the thread."""
        while not self.closed:
            try:
                datagram, sender = self.sock.recvfrom(FRONT_LOG_MAX + 1)  # a longer one arrives cut: longer still
            except OSError:  # closed at stop
                return
            if self.closed:  # woken up by close()
                return
            try:
                loopback = isinstance(sender, tuple) and sender[0] == "127.0.0.1"
                parsed = parse_front_line(datagram) if loopback else None
                if parsed is not None:
                    self.metrics.add(**dict.fromkeys(front_counters(*parsed), 1))
            except Exception as exc:  # one datagram's trouble must not end the counting
                if not self.failed:
                    say(f"cannot count a line of the front's log ({exc!r}); said once")
                self.failed = True

    def close(self) -> None:
        """Stop reading: the thread, woken up, ends."""
        self.closed = True
        with contextlib.suppress(OSError):  # ENOTCONN, but a blocked receive wakes up all the same
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An upstream the registry may pull through: the settings' upstream (credentials None: the environment's
    REGISTRY_PROXY_USERNAME / _PASSWORD, as the registry reads them), or a fallback (credentials: its prefix, "" for
    anonymous)."""

    url: str
    credentials: str | None


class Supervisor:
    """Runs the registry in the mode the upstreams allow until systemd stops the unit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The upstream first, then the fallbacks: the registry pulls through the first that answers.
        self.candidates = [Candidate(settings.upstream, None),
                           *(Candidate(fallback.url, fallback.credentials) for fallback in settings.fallbacks)]
        self.active = 0  # the candidate pulled through when not self.local
        # Whether the upstreams are probed: to serve read-only while none answers, or to choose among several.
        self.probing = settings.offline_fallback or len(self.candidates) > 1
        self.stopping = False
        self.interruptible = False
        self.tls_contexts: dict[bool, ssl.SSLContext] = {}  # with ca_file's CAs (True) or without
        self.openers: dict[bool, urllib.request.OpenerDirector] = {}
        self.child: subprocess.Popen[bytes] | None = None
        # Replaced registries that still drain, each with when it is killed (stop_timeout after its SIGTERM).
        self.draining: dict[subprocess.Popen[bytes], float] = {}
        # Drawn at each start, never written anywhere: each registry gets it in its environment (NOTIFICATIONS_ENV).
        self.secret = secrets.token_hex(32)
        # The current registry's health (check_health): since when it runs, whether it ever answered, misses in a row.
        self.child_started = 0.0
        self.child_answered = False
        self.health_misses = 0
        # The mode the registry serves in (read-only; which upstream): a restart in the same mode keeps its since.
        self.mode: tuple[bool, int] | None = None
        self.next_health = 0.0
        self.local = False  # serving read-only from the cache, without the proxy
        self.failures = 0  # failed probes in a row
        self.next_probe = 0.0
        self.storage = os.environ.get(STORAGE_ENV) or settings.storage
        self.floor_mb = settings.min_free_mb if self.storage else 0  # 0: free space not checked
        self.resume_mb = self.floor_mb + max(MARGIN_MIN_MB, self.floor_mb // MARGIN_DIVISOR)
        self.low_space = False  # below the floor, and not yet above floor plus margin again
        self.free_mb = 0  # at the last check that worked
        self.space_error = ""  # the last check's error, said once
        # Read-only, and the free space is what keeps it so: the upstream answered at the last probe (or was not
        # probed since the switch for space).
        self.held_for_space = False
        self.metrics = Metrics(fallbacks=len(self.candidates) > 1, front=settings.front_log and bool(settings.port))
        self.usage = Usage(os.path.join(self.storage, registry_cache.USAGE_FILE)) if self.storage else None
        self.listener: Listener | None = None
        self.front_log: FrontLog | None = None
        self.front_log_refused = False  # the front's log port could not be bound: said once, retried
        self.socket: socket.socket | None = None  # the mirror's listening socket, when the supervisor holds it
        # A unix socket's path, and the file the supervisor bound there (device, inode): removed at stop if still so.
        self.unix_path = unix_path(settings.listen)
        self.unix_file: tuple[int, int] | None = None
        self.collect_requested = False  # SIGUSR1
        self.next_cache_check = time.monotonic() + settings.cache_check_interval  # not while the registry starts
        self.next_collection = time.monotonic() + settings.collect_interval
        self.next_usage_save = time.monotonic() + USAGE_SAVE_INTERVAL

    def tls(self, with_ca: bool) -> ssl.SSLContext:
        """The system trust store, and the CAs of ca_file WITH_CA; each loaded once: loading the store costs most of a
        second on a slow (emulated) CPU."""
        if with_ca not in self.tls_contexts:
            context = ssl.create_default_context()
            if with_ca and self.settings.ca_file:
                try:
                    context.load_verify_locations(cafile=self.settings.ca_file)
                except (OSError, ValueError) as exc:
                    say(f"cannot load the CAs of {self.settings.ca_file} ({exc}): trusting the system store only")
            self.tls_contexts[with_ca] = context
        return self.tls_contexts[with_ca]

    def fleet_ca(self, url: str) -> bool:
        """Whether the CAs of ca_file and ca_dir vouch for the upstream URL: one of ca_upstreams (a fleet's tiers);
        without ca_upstreams, ca_file's vouch for every upstream and ca_dir's for none."""
        if not self.settings.ca_upstreams:
            return False
        return any(same_url(url, tier) for tier in self.settings.ca_upstreams)

    def trusts_ca_file(self, url: str) -> bool:
        """Whether the supervisor's own requests to the upstream URL trust ca_file."""
        return bool(self.settings.ca_file) and (not self.settings.ca_upstreams or self.fleet_ca(url))

    def on_usr1(self, _signum: int, _frame: types.FrameType | None) -> None:
        """An operator (or a test) asks for a collection now."""
        self.collect_requested = True

    def on_term(self, _signum: int, _frame: types.FrameType | None) -> None:
        """systemd stops the unit."""
        self.stopping = True
        if self.interruptible:
            raise Stopping  # do not keep serving (and systemd waiting) until a request to a dead upstream times out

    def fetch(self, request: str | urllib.request.Request, timeout: float, read: bool = False,
              upstream: str = "") -> bytes:
        """A request for the UPSTREAM (a URL: whether ca_file is trusted) (its body if READ) that SIGTERM interrupts
        (Stopping); HTTPError for an HTTP error status, OSError or ValueError when it gets no valid answer within
        TIMEOUT seconds."""
        self.interruptible = True
        try:
            if self.stopping:
                raise Stopping
            with_ca = self.trusts_ca_file(upstream)
            if with_ca not in self.openers:  # the system's proxies as urlopen's, redirects as OriginRedirects does
                self.openers[with_ca] = urllib.request.build_opener(
                    urllib.request.HTTPSHandler(context=self.tls(with_ca)), OriginRedirects())
            with self.openers[with_ca].open(request, timeout=timeout) as response:
                body: bytes = response.read() if read else b""
                return body
        except http.client.HTTPException as exc:  # a garbled answer: as good as none
            raise ValueError(f"invalid HTTP answer: {exc!r}") from exc
        finally:
            self.interruptible = False

    def upstream_answers(self, timeout: float | None = None, index: int | None = None) -> tuple[bool, str]:
        """Whether the /v2/ of candidate INDEX (the active one if None) gives any HTTP answer (Docker Hub answers 401)
        within TIMEOUT seconds."""
        url = self.candidates[self.active if index is None else index].url
        try:
            self.fetch(url + "/v2/", self.settings.probe_timeout if timeout is None else timeout, upstream=url)
            return True, "200"
        except urllib.error.HTTPError as exc:
            return True, str(exc.code)
        except (OSError, ValueError) as exc:
            return False, str(getattr(exc, "reason", exc))
        except Stopping:
            return False, "stopping"

    def account(self, candidate: Candidate) -> tuple[str, str]:
        """CANDIDATE's user name and password ("" and "": anonymous): the upstream's from the environment's
        REGISTRY_PROXY_USERNAME / _PASSWORD, a fallback's from its PREFIX_USERNAME / PREFIX_PASSWORD (both set, or
        none is used)."""
        if candidate.credentials is None:
            user, password = (os.environ.get(name, "") for name in CREDENTIAL_ENV)
            return user, password
        if not candidate.credentials:
            return "", ""
        user, password = (os.environ.get(f"{candidate.credentials}_{part}", "") for part in ("USERNAME", "PASSWORD"))
        return (user, password) if user and password else ("", "")

    def variables(self, candidate: Candidate) -> str:
        """Where CANDIDATE's credentials are set, for the journal."""
        if candidate.credentials is None:
            return self.credential_variables()
        if not candidate.credentials:
            return "credentials in its fallbacks entry (a prefix REGISTRY_MIRROR_...)"
        return f"{candidate.credentials}_USERNAME / {candidate.credentials}_PASSWORD"

    def check_token_service(self) -> None:
        """Ask the active upstream's token service for a pull token the way the proxy will (or, for a Basic
        challenge that distribution answers, the upstream itself), and say so in the journal when that cannot work:
        distribution itself reports it to clients only as "manifest unknown"."""
        candidate = self.candidates[self.active]
        upstream = candidate.url
        user, password = self.account(candidate)
        # Named by the variables that hold it, never by a value: the role treats the user name as a secret too.
        who = f"the account in {self.variables(candidate)}" if user else "anonymous pulls"
        try:
            self.fetch(upstream + "/v2/", self.settings.challenge_timeout, upstream=upstream)
            return
        except urllib.error.HTTPError as exc:
            challenges = [parse_challenge(value) for value in exc.headers.get_all("WWW-Authenticate") or []]
        except (OSError, ValueError, Stopping):
            return
        version = self.settings.version
        bearer = [params for scheme, params in challenges if scheme == "bearer"]
        basic = [params for scheme, params in challenges if scheme == "basic"]
        if basic and self.basic_challenge(candidate, who, basic[0], bearer):
            return
        if not bearer:
            return
        realm = bearer[0].get("realm", "")
        if not sends_credentials(version, "bearer", upstream, realm):
            refused = f"send the credentials of {who} to" if user else "ask for anonymous tokens at"
            say(f"ERROR: distribution {version} will not {refused} the token realm {realm} that upstream "
                f"{upstream} names (the realm must be on the upstream's host and port, or both must be DNS names "
                "of one registrable domain): pulls of images that are not cached will fail")
            return
        query = urllib.parse.urlencode({"service": bearer[0].get("service", ""), "scope": CHECK_SCOPE})
        request = urllib.request.Request(f"{realm}{'&' if '?' in realm else '?'}{query}")
        if user:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            json.loads(self.fetch(request, self.settings.token_timeout, read=True, upstream=upstream))
            say(f"upstream token service accepts {who}")
        except urllib.error.HTTPError as exc:
            say(f"ERROR: upstream token service {realm} refuses {who} (HTTP {exc.code}): pulls of images that are not "
                f"cached will fail (clients see 'manifest unknown'); check {self.variables(candidate)}")
        except (OSError, ValueError) as exc:
            say(f"upstream token service {realm} did not answer ({exc})")
        except Stopping:
            return

    def basic_challenge(self, candidate: Candidate, who: str, params: dict[str, str],
                        bearer: list[dict[str, str]]) -> bool:
        """CANDIDATE asks for Basic authentication (PARAMS; BEARER: its token challenges, if any): whether that was
        said to fail (distribution before 3.1 answers none with the credentials of WHO) or was checked (3.1+, without
        a token challenge)."""
        version, realm = self.settings.version, params.get("realm", "")
        user, password = self.account(candidate)
        if not sends_credentials(version, "basic", candidate.url, ""):
            if not user:
                return False
            say(f"ERROR: upstream {candidate.url} asks for Basic authentication (realm {realm!r}) and distribution "
                f"{version} answers only token challenges: it will not send the credentials of {who}, and pulls of "
                "images that are not cached will fail")
            return True
        if bearer:
            return False
        self.check_basic(candidate, user, password, realm)
        return True

    def check_basic(self, candidate: Candidate, user: str, password: str, realm: str) -> None:
        """distribution 3.1+ answers a Basic challenge of CANDIDATE (a fleet's tier mirror, say) with the credentials
        USER and PASSWORD: try them on /v2/ and say in the journal when they cannot work (no value, only where they
        are set)."""
        upstream, variables = candidate.url, self.variables(candidate)
        if not user:
            say(f"ERROR: upstream {upstream} requires credentials (Basic authentication, realm {realm!r}) and the "
                f"mirror pulls from it anonymously: pulls of images that are not cached will fail; set {variables}")
            return
        request = urllib.request.Request(upstream + "/v2/")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            self.fetch(request, self.settings.challenge_timeout, upstream=upstream)
            say(f"upstream {upstream} accepts the account in {variables} (Basic authentication)")
        except urllib.error.HTTPError as exc:
            say(f"ERROR: upstream {upstream} refuses the account in {variables} (HTTP {exc.code} to Basic "
                "authentication): pulls of images that are not cached will fail (clients see 'manifest unknown')")
        except (OSError, ValueError) as exc:
            say(f"upstream {upstream} did not answer the check of the account in {variables} ({exc})")
        except Stopping:
            return

    def credential_variables(self) -> str:
        """The role's variables that hold this upstream's credentials."""
        name, prefix = self.settings.name, self.settings.credentials
        if prefix and not name:  # a further upstream's settings without a name: its environment's variables
            return f"{prefix}_USERNAME / {prefix}_PASSWORD"
        if prefix or (name and name != PRIMARY_NAME):  # a further upstream, not Docker Hub
            return f"registry_mirror_upstreams[{name}].username/password"
        if self.settings.fallbacks:  # an edge of a fleet: its upstream is its site's first tier
            return "registry_mirror_tiers[0].username/password"
        return "registry_mirror_dockerhub_username/token"

    def start(self, local: bool, debug: bool = True) -> subprocess.Popen[bytes]:
        """The registry, in pull-through mode or read-only without the proxy; without its debug (metrics) listener
        when DEBUG is false: an older process that still drains keeps that port until it exits, and distribution
        exits when it cannot bind it."""
        self.metrics.set(registry_mirror_read_only=float(local),
                         registry_mirror_upstream_index=-1.0 if local else float(self.active))
        if self.mode != (local, self.active):
            self.mode = (local, self.active)
            self.metrics.set(registry_mirror_mode_since_timestamp_seconds=time.time())
        env = self.registry_environment(local)
        if not debug:
            env["REGISTRY_HTTP_DEBUG_ADDR"] = ""
        command = [self.settings.binary, "serve", self.settings.config]
        self.child_started, self.child_answered, self.health_misses = time.monotonic(), False, 0
        self.next_health = self.child_started + self.settings.probe_interval
        # Its output reaches the journal through the supervisor, with the notification secret blanked.
        pass_fds: tuple[int, ...] = ()
        if self.socket is not None:
            pass_fds = (self.socket.fileno(),)
            command = ["/bin/sh", "-c", LAUNCHER, "registry-launch", str(pass_fds[0]), *command]
        proc = subprocess.Popen(command, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        threading.Thread(target=relay_redacted, args=(proc.stdout, self.secret), daemon=True).start()
        return proc

    def registry_environment(self, local: bool) -> dict[str, str]:
        """The registry's environment: the supervisor's; read-only (LOCAL) without the proxy and any credentials;
        through a fallback with its URL (REGISTRY_PROXY_REMOTEURL) and its credentials only. With fallbacks, the
        registry never sees their prefixed variables: only the REGISTRY_PROXY_* of the upstream it pulls through."""
        env = dict(os.environ)
        if len(self.candidates) > 1:
            env = {name: value for name, value in env.items() if not MIRROR_CREDENTIAL_ENV.fullmatch(name)}
        if self.settings.port:
            env[NOTIFICATIONS_ENV] = NOTIFICATION_ENDPOINTS.format(port=self.settings.port, secret=self.secret)
        # The fleet's CA only while pulling through a tier: never for Docker Hub, another upstream or read-only.
        tier = not local and self.fleet_ca(self.candidates[self.active].url)
        dirs = cert_dirs(env.get("SSL_CERT_DIR", ""), self.settings.ca_dir, tier)
        if dirs:
            env["SSL_CERT_DIR"] = dirs
        else:
            env.pop("SSL_CERT_DIR", None)
        if local:
            env.update(LOCAL_ENV)
            for name in CREDENTIAL_ENV:
                env.pop(name, None)
        elif self.active:
            candidate = self.candidates[self.active]
            for name in CREDENTIAL_ENV:
                env.pop(name, None)
            env["REGISTRY_PROXY_REMOTEURL"] = candidate.url
            user, password = self.account(candidate)
            if user:
                env.update(zip(CREDENTIAL_ENV, (user, password)))
        return env

    def bind(self) -> socket.socket:
        """A socket listening on the mirror's address (settings.listen), in its SO_REUSEPORT group, or on its unix
        socket (bind_unix); OSError or ValueError when that fails."""
        if self.unix_path:
            sock = bind_unix(self.unix_path)
            try:
                info = os.lstat(self.unix_path)
            except OSError:
                sock.close()
                raise
            self.unix_file = info.st_dev, info.st_ino
            return sock
        host, _colon, port = self.settings.listen.rpartition(":")
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, int(port)))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock

    def open_socket(self) -> bool:
        """Listen on the mirror's address for the registries (settings.listen); False (said) when that fails."""
        if not self.settings.listen:
            return True
        try:
            self.socket = self.bind()
        except (OSError, ValueError) as exc:
            say(f"ERROR: cannot listen on {self.settings.listen} ({exc})")
            return False
        return True

    def hand_over(self) -> socket.socket | None:
        """A new socket on the mirror's address that every new connection goes to from now on (they wait in its queue
        for the next registry), while the registry on self.socket serves those it already accepted; None (said) when
        the supervisor holds no socket or the kernel refuses. None, quietly, for a unix socket: it has no SO_REUSEPORT
        group (and binding its path again would take it from the serving registry). The registry is then replaced on
        the same socket, which the supervisor keeps open: new connections wait in its queue while the next registry
        starts, and a request the old one accepted right before its SIGTERM may be dropped."""
        if self.socket is None or self.unix_path:
            return None
        try:
            sock = self.bind()
        except (OSError, ValueError) as exc:
            say(f"cannot open a second socket on {self.settings.listen} ({exc}): the registry is replaced on the "
                "same socket, and a connection it accepted just before may be dropped")
            return None
        program = ctypes.create_string_buffer(STEER_TO_NEWEST, len(STEER_TO_NEWEST))
        try:  # struct sock_fprog: the instruction count, then a pointer to the instructions
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                            struct.pack("@HP", 1, ctypes.addressof(program)))
        except OSError as exc:
            sock.close()
            say(f"cannot steer new connections to a second socket ({exc}): the registry is replaced on the same "
                "socket, and a connection it accepted just before may be dropped")
            return None
        return sock

    def replace(self, child: subprocess.Popen[bytes], local: bool, grace: float,
                serving: bool = True) -> subprocess.Popen[bytes]:
        """Replace CHILD with the registry read-only (LOCAL) or pulling through the active upstream. When CHILD is
        SERVING, new connections go to a new socket at once (hand_over) and wait there while CHILD serves what it
        accepted for settings.switch_drain seconds; one still starting may never accept, and what waits in its socket's
        queue would be reset with it: the next registry takes that socket over instead, as it always does on a unix
        socket. CHILD then stops (it lets go of the port at once); the new registry starts once CHILD has exited or
        GRACE seconds have passed (a CHILD still draining requests stays in self.draining)."""
        self.reap_draining()
        # A registry still draining may hold an older socket of the group (one that does not close its listener when
        # it stops, or is wedged): the steering program's "second socket" could then be CHILD's, and the group's
        # order changes as sockets leave it. The next registry then takes CHILD's socket over, as at start.
        if serving and self.socket is not None and self.draining and child.poll() is None and not self.unix_path:
            say(f"a previous registry (pid {', '.join(str(old.pid) for old in self.draining)}) still drains: the "
                "registry is replaced on the same socket, and a connection it accepted just before may be dropped")
            serving = False
        handed = self.hand_over() if serving and child.poll() is None else None
        if handed is not None:
            time.sleep(self.settings.switch_drain)
        stop(child)
        stopped = time.monotonic()
        if handed is not None and self.socket is not None:
            self.socket.close()  # CHILD closes its own copy as it stops: then the old socket leaves the group
            self.socket = handed
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.draining[child] = stopped + self.settings.stop_timeout
        self.reap_draining()
        if self.draining and self.settings.metrics:
            say("the previous registry still drains requests: no metrics listener until the next switch or restart")
        started = self.start(local, debug=not self.draining)
        # The mode said before a switch takes effect now: new connections reach this registry.
        say("switch done: " + ("serving the cache read-only" if local
                               else f"pulling through {self.candidates[self.active].url}"))
        return started

    def reap_draining(self) -> None:
        """Forget the replaced registries that exited; kill those still running stop_timeout seconds after their
        SIGTERM (distribution's own drain, http.draintimeout, is shorter): one that never exits would hold its
        socket, its debug port and its memory for ever."""
        now = time.monotonic()
        for proc, kill_at in list(self.draining.items()):
            if proc.poll() is None and now >= kill_at:
                say(f"WARNING: {self.mirror()}: a replaced registry (pid {proc.pid}) still runs "
                    f"{self.settings.stop_timeout:g} s after its SIGTERM: killed")
                proc.kill()
                proc.wait()
                self.metrics.add(registry_mirror_registry_drain_kills_total=1)
            if proc.poll() is not None:
                del self.draining[proc]

    def mirror(self) -> str:
        """The mirror, for the journal: its name, else its address, else its upstream."""
        return f"mirror {self.settings.name or self.settings.listen or self.settings.upstream}"

    def registry_answers(self) -> tuple[bool, str]:
        """Whether the current registry answers GET /v2/ on the mirror's address (settings.listen, over TLS unless
        listen_tls is false; a unix socket in plain HTTP) with anything within health_timeout seconds; why not.
        SIGTERM ends the wait (an answer, then: nothing is decided on it)."""
        host, _colon, port = self.settings.listen.rpartition(":")
        host = host.strip("[]")
        if self.unix_path:
            host = "localhost"
        elif host in ("", "0.0.0.0", "::"):  # an address the registry binds: connect to loopback instead
            host = "::1" if host == "::" else "127.0.0.1"
        timeout = self.settings.health_timeout
        deadline = time.monotonic() + timeout
        self.interruptible = True
        try:
            with self.connect_registry(host, port, timeout) as raw:
                conn: socket.socket = raw
                if self.settings.listen_tls and not self.unix_path:  # its own registry: the certificate is not checked
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    raw.settimeout(max(0.001, deadline - time.monotonic()))
                    conn = context.wrap_socket(raw)
                conn.settimeout(max(0.001, deadline - time.monotonic()))
                conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUser-Agent: " + PROG.encode()
                             + b"\r\nConnection: close\r\n\r\n")
                if not conn.recv(1):
                    return False, "the connection was closed without an answer"
            return True, ""
        except Stopping:
            return True, "stopping"
        except (OSError, ValueError) as exc:
            return False, str(exc) or type(exc).__name__
        finally:
            self.interruptible = False

    def connect_registry(self, host: str, port: str, timeout: float) -> socket.socket:
        """A connection to the mirror's address (HOST and PORT), or to its unix socket, within TIMEOUT seconds."""
        if not self.unix_path:
            return socket.create_connection((host, int(port)), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)  # a full queue makes connect wait
            sock.connect(self.unix_path)
        except BaseException:  # Stopping too
            sock.close()
            raise
        return sock

    def check_health(self) -> None:
        """Probe the current registry when due (settings.health_*); after health_failures misses in a row, kill it
        and start another in the same mode (said, naming the mirror)."""
        settings = self.settings
        child = self.child
        if not settings.listen or not settings.health_failures or child is None or child.poll() is not None \
                or time.monotonic() < self.next_health:
            return
        self.next_health = time.monotonic() + settings.probe_interval
        answered, why = self.registry_answers()
        if self.stopping or child.poll() is not None:  # an exit is after_exit's
            return
        if answered:
            self.child_answered, self.health_misses = True, 0
            return
        if not self.child_answered and time.monotonic() - self.child_started < settings.health_grace:
            return  # still starting
        self.health_misses += 1
        self.metrics.add(registry_mirror_registry_health_failures_total=1)
        if self.health_misses < settings.health_failures:
            self.next_health = time.monotonic() + min(settings.confirm_after, settings.probe_interval)
            return
        say(f"ERROR: {self.mirror()}: the registry (pid {child.pid}) did not answer {self.health_misses} health probes "
            f"in a row on {settings.listen} (last: {why}): killing it and starting another")
        child.kill()  # what waits in the socket's queue stays there for the next registry
        child.wait()
        self.metrics.add(registry_mirror_registry_restarts_total=1)
        self.reap_draining()
        self.child = self.start(self.local, debug=not self.draining)
        say(f"restart done: {self.mirror()}: " + ("serving the cache read-only" if self.local
                                                  else f"pulling through {self.candidates[self.active].url}"))

    def run(self) -> int:
        """Supervise until systemd stops the unit; the exit status for systemd."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGUSR1, self.on_usr1)
        try:
            if not self.open_socket():
                return 1
            self.listen()
            self.begin()
            while not self.stopping:
                time.sleep(self.settings.poll_interval)
                self.reap_draining()
                if self.child is not None and self.child.poll() is not None:
                    status = self.after_exit(self.child.returncode)
                    if status is not None:
                        return status
                elif (self.probing or self.floor_mb) and time.monotonic() >= self.next_probe:
                    self.probe()
                if not self.stopping:
                    self.check_health()
                if not self.stopping:
                    self.tend_cache()
            return 0
        except Stopping:  # SIGTERM right at the end of an upstream request
            return 0
        finally:
            self.shut_down()

    def shut_down(self) -> None:
        """At the end: stop the registries, close the ports, remove the unix socket, save the usage times."""
        self.stop_all()
        if self.listener is not None:
            self.listener.shutdown()
        if self.front_log is not None:
            self.front_log.close()
        if self.socket is not None:
            self.socket.close()
        if self.unix_file is not None:  # the registries are gone: nothing listens there any more
            remove_unix_socket(self.unix_path, self.unix_file)
        if self.usage is not None:
            self.usage.save()

    def listen(self) -> None:
        """Open the loopback port for distribution's notifications and the metrics, and the front's log port (each
        retried at each cache check)."""
        self.open_front_log()
        if not self.settings.port or self.listener is not None or self.usage is None:
            return
        try:
            self.listener = Listener(self.settings, self.usage, self.metrics, self.secret)
        except OSError as exc:
            say(f"ERROR: cannot listen on 127.0.0.1:{self.settings.port} ({exc}): no usage times from the registry's "
                "notifications (eviction falls back to when images were cached) and no metrics; retrying")
            return
        threading.Thread(target=self.listener.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()

    def open_front_log(self) -> None:
        """Read the front's log on UDP 127.0.0.1:port (settings.front_log), unless it is read already; a refusal is
        said once (the front's datagrams are lost meanwhile) and when it ends."""
        if not self.settings.front_log or not self.settings.port or self.front_log is not None:
            return
        try:
            self.front_log = FrontLog(self.settings.port, self.metrics)
        except OSError as exc:
            if not self.front_log_refused:
                say(f"ERROR: cannot read the front's log on UDP 127.0.0.1:{self.settings.port} ({exc}): its requests "
                    "are not counted; retrying at each cache check")
            self.front_log_refused = True
            return
        if self.front_log_refused:
            say(f"reading the front's log on UDP 127.0.0.1:{self.settings.port} now")
            self.front_log_refused = False

    def begin(self) -> None:
        """Most starts find the upstream answering: start in pull-through mode at once and probe meanwhile, so that
        VMs do not wait for the probe as well as for the registry's own start; when it does not answer, the first
        fallback that does, else read-only. Below the free-space floor, start read-only at once."""
        if self.settings.min_free_mb and not self.floor_mb:
            say(f"min_free_mb is {self.settings.min_free_mb} but no storage directory is set (storage, {STORAGE_ENV}): "
                "free space is not checked")
        if (self.settings.budget_mb or self.settings.budget_percent) and not self.storage:
            say(f"a disk budget is set but no storage directory (storage, {STORAGE_ENV}): the cache is not collected")
        if self.settings.front_log and not self.settings.port:
            say("front_log is set but port is 0: the front's log is not read")
        for fallback in self.settings.fallbacks:
            names = [f"{fallback.credentials}_{part}" for part in ("USERNAME", "PASSWORD")] if fallback.credentials \
                else []
            unset = [name for name in names if not os.environ.get(name)]
            if unset:
                say(f"{' and '.join(unset)} not set in the environment: pulling from {fallback.url} anonymously")
        if self.check_space():
            self.local = self.held_for_space = True
            self.child = self.start(local=True)
        else:
            self.child = self.start(local=False)
            if self.probing:
                self.start_probe(self.child)
        if not self.local and not self.stopping:
            self.check_token_service()
        self.next_probe = time.monotonic() + self.settings.probe_interval

    def start_probe(self, child: subprocess.Popen[bytes]) -> None:
        """Probe the upstream while CHILD, the registry pulling through it, starts; when it does not answer, replace
        CHILD with one pulling through the first fallback that does, else with a read-only one."""
        timeout = self.settings.start_probe_timeout
        reachable, why = self.upstream_answers(timeout)
        if reachable or self.stopping:
            return
        index, _answer, failed = self.first_answering(range(1, len(self.candidates)), timeout)
        if self.stopping:
            return
        failed = [(self.candidates[0].url, why), *failed]
        if index is not None:
            say(f"{unreachable(failed)}: pulling through {self.candidates[index].url}")
            self.active = index
        elif self.settings.offline_fallback:
            say(f"{unreachable(failed)}: serving the cache read-only without the proxy")
            self.local = True
        else:  # no read-only mode: distribution exits if it cannot reach the upstream either
            say(f"{unreachable(failed)}: no upstream answers, pulling through {self.candidates[0].url}")
            return
        # It was starting: wait longer for it, and keep its socket (it may not have accepted anything yet).
        self.child = self.replace(child, self.local, self.settings.start_grace, serving=False)

    def first_answering(self, indices: typing.Iterable[int], timeout: float | None = None) \
            -> tuple[int | None, str, list[tuple[str, str]]]:
        """Probe the candidates INDICES in order: the first that answers (None: none, or SIGTERM) and its answer, and
        the URL and error of each that did not before it."""
        failed: list[tuple[str, str]] = []
        for index in indices:
            reachable, why = self.upstream_answers(timeout, index)
            if self.stopping:
                break
            if reachable:
                return index, why, failed
            failed.append((self.candidates[index].url, why))
        return None, "", failed

    def after_exit(self, status: int) -> int | None:
        """The registry exited with STATUS: pull through the next upstream that answers, or serve the cache read-only,
        if the upstream is why; else the supervisor's exit status (systemd restarts the unit); None when it goes
        on."""
        if self.probing and not self.local:
            reachable, why = self.upstream_answers()
            if self.stopping:
                return 0
            if not reachable:
                others = [index for index in range(len(self.candidates)) if index != self.active]
                index, _answer, failed = self.first_answering(others)
                if self.stopping:
                    return 0
                away = f"registry exited and upstream {self.candidates[self.active].url} is unreachable ({why})" \
                    + "".join(f", {url} unreachable ({reason})" for url, reason in failed)
                if index is not None:
                    say(f"{away}: pulling through {self.candidates[index].url}")
                    self.active, self.failures = index, 0
                    self.child = self.start(self.local, debug=not self.draining)
                    self.check_token_service()  # nothing serves until the new registry does: start it first
                    return None
                if self.settings.offline_fallback:
                    say(f"{away}: serving the cache read-only")
                    self.local, self.failures = True, 0
                    self.child = self.start(self.local, debug=not self.draining)
                    return None
        say(f"registry exited with status {status}")
        return status or 1

    def probe(self) -> None:
        """Check the free space and probe the upstreams; switch to read-only below the free-space floor or when no
        upstream answers (a failure of the active one confirmed), to the next upstream that answers after a confirmed
        failure of the active one, to a preferred one as soon as it answers, and from read-only to the first that
        answers when there is space."""
        settings = self.settings
        self.next_probe = time.monotonic() + settings.probe_interval
        was_low = self.low_space
        if self.check_space() and not self.local:
            self.held_for_space = True
            self.switch(local=True)
            return
        if self.local:
            found = self.first_answering(range(len(self.candidates))) if self.probing else (0, "", [])
            if not self.stopping and self.may_leave_read_only(*found, space_back=was_low and not self.low_space):
                assert found[0] is not None
                self.take(found[0])
        elif self.probing and not self.back_to_preferred() and not self.stopping:
            self.probe_active()

    def back_to_preferred(self) -> bool:
        """Whether an upstream before the one pulled through answers (taken, and said)."""
        index, why, _failed = self.first_answering(range(self.active))
        if index is None or self.stopping:
            return False
        say(f"upstream {self.candidates[index].url} answers again ({why}): pulling through it instead of "
            f"{self.candidates[self.active].url}")
        self.take(index)
        return True

    def probe_active(self) -> None:
        """Probe the upstream pulled through; after a confirmed failure, pull through the next that answers, else
        serve read-only."""
        settings = self.settings
        leaving = self.candidates[self.active].url
        reachable, why = self.upstream_answers()
        if self.stopping:
            return
        self.failures = 0 if reachable else self.failures + 1
        if self.failures:
            self.next_probe = time.monotonic() + min(settings.confirm_after, settings.probe_interval)
        if self.failures < settings.failures_before_fallback:
            return
        index, _answer, failed = self.first_answering(range(self.active + 1, len(self.candidates)))
        if self.stopping:
            return
        failed = [(leaving, why), *failed]
        if index is not None:
            say(f"{unreachable(failed)}: pulling through {self.candidates[index].url}")
            self.take(index)
        elif settings.offline_fallback:
            say(f"{unreachable(failed)}: serving the cache read-only without the proxy")
            self.switch(local=True)
        elif self.failures == settings.failures_before_fallback:  # no read-only mode: keep it, say so once
            say(f"{unreachable(failed)}: no upstream answers, still pulling through {leaving}")

    def take(self, index: int) -> None:
        """Pull through candidate INDEX instead of the active one (its token service checked first)."""
        self.active = index
        self.check_token_service()
        self.switch(local=False)

    def switch(self, local: bool) -> None:
        """Replace the registry with one read-only (LOCAL) or pulling through the active upstream."""
        self.local = local
        self.failures = 0
        self.next_probe = time.monotonic() + self.settings.probe_interval
        if self.child is not None:
            self.child = self.replace(self.child, self.local, self.settings.switch_grace)

    def check_space(self) -> bool:
        """Whether the cache's filesystem is short of space: below the floor, or not yet above floor plus margin
        after it was; says so when it becomes short. Keeps the last answer when statvfs fails."""
        if not self.floor_mb:
            return False
        try:
            stat = os.statvfs(self.storage)
        except OSError as exc:
            if str(exc) != self.space_error:
                say(f"cannot check the free space on {self.storage} ({exc}): the mode stays as it is")
            self.space_error = str(exc)
            return self.low_space
        self.space_error = ""
        free = stat.f_bavail * stat.f_frsize  # what the unprivileged service user may still write
        self.free_mb = free // MIB
        self.metrics.set(registry_mirror_free_bytes=free)
        if free < self.floor_mb * MIB and not self.low_space:
            self.low_space = True
            say(f"WARNING: {self.free_mb} MiB free on {self.storage}, below the floor of {self.floor_mb} MiB: serving "
                f"the cache read-only and storing nothing new until more than {self.resume_mb} MiB are free")
        elif free > self.resume_mb * MIB:
            self.low_space = False
        return self.low_space

    def may_leave_read_only(self, index: int | None, why: str, failed: list[tuple[str, str]],
                            space_back: bool) -> bool:
        """Whether to return to pull-through mode (said in the journal): candidate INDEX answers (WHY; None: none
        does, FAILED says why) and, with a floor, there is space. SPACE_BACK: free space rose above floor plus margin
        at this tick."""
        space = f"{self.free_mb} MiB free on {self.storage} again (floor {self.floor_mb} MiB)"
        url = self.candidates[index].url if index is not None else ""
        if self.low_space:
            if index is not None and not self.held_for_space:
                say(f"upstream {url} answers again ({why}), but only {self.free_mb} MiB are free on "
                    f"{self.storage} (more than {self.resume_mb} MiB needed): still serving the cache read-only")
            self.held_for_space = index is not None
            return False
        if index is None:
            if space_back:
                say(f"{space}, but {unreachable(failed, 'is ')}: still serving the cache read-only")
            self.held_for_space = False
            return False
        if self.held_for_space or space_back:
            answers = f" and upstream {url} answers ({why})" if self.probing else ""
            say(f"{space}{answers}: back to pull-through mode")
        else:
            say(f"upstream {url} answers again ({why}): back to pull-through mode")
        self.held_for_space = False
        return True

    # --- The disk budget ---------------------------------------------------------------------------------------------

    def budget_bytes(self) -> int:
        """The cache's budget: budget_mb, and budget_percent of its filesystem's size; the smaller; 0 for none."""
        limits = [self.settings.budget_mb * MIB] if self.settings.budget_mb else []
        if self.settings.budget_percent:
            try:
                stat = os.statvfs(self.storage)
                limits.append(stat.f_blocks * stat.f_frsize * self.settings.budget_percent // 100)
            except OSError as exc:
                say(f"cannot read the size of the filesystem of {self.storage} ({exc})")
        return min(limits) if limits else 0

    def tend_cache(self) -> None:
        """At each tick: save the usage times now and then; collect when asked (SIGUSR1), when the schedule says so
        or when the cache is above its budget."""
        if self.usage is None:
            return
        now = time.monotonic()
        if now >= self.next_usage_save:
            self.next_usage_save = now + USAGE_SAVE_INTERVAL
            self.usage.save()
        reason = ""
        if self.collect_requested:
            reason = "asked for (SIGUSR1)"
        elif self.settings.collect_interval and now >= self.next_collection:
            reason = "scheduled"
        elif now >= self.next_cache_check:
            self.next_cache_check = now + self.settings.cache_check_interval
            self.listen()
            budget = self.budget_bytes()
            try:
                size = registry_cache.cache_bytes(self.storage)
            except (OSError, registry_cache.StorageError) as exc:
                say(f"cannot add up the cache in {self.storage} ({exc})")
                return
            self.metrics.set(registry_mirror_cache_bytes=size, registry_mirror_cache_budget_bytes=budget)
            if budget and size > budget:
                reason = f"{size / MIB:.1f} MiB cached, above the budget of {budget / MIB:.1f} MiB"
        if reason:
            self.collect_requested = False
            self.next_collection = now + self.settings.collect_interval
            self.collect(reason)
            self.next_cache_check = time.monotonic() + self.settings.cache_check_interval

    def collect(self, reason: str) -> None:
        """Evict the least recently used images down to the low-water mark when above the budget, then delete the
        blobs nothing references, while the registry serves; say what it did."""
        say(f"cache collection ({reason})")
        try:
            self.collect_now(time.monotonic())
        except Exception as exc:  # a failed collection must never take the mirror down
            say(f"ERROR: cache collection failed ({exc!r}); what it deleted left the cache consistent, the rest waits "
                "for the next collection")

    def collect_now(self, started: float) -> None:
        """The collection itself."""
        assert self.usage is not None
        budget = self.budget_bytes()
        steps = [time.monotonic()]
        inventory = registry_cache.scan(self.storage, self.usage.snapshot())
        before = inventory.total_bytes()
        evicted = inventory.plan(budget * self.settings.low_water_percent // 100) if budget and before > budget else []
        steps.append(time.monotonic())
        registry_cache.evict(self.storage, evicted, inventory)
        steps.append(time.monotonic())
        reclaimed, blobs = registry_cache.sweep(self.storage, time.time() - self.settings.collect_grace,
                                                lambda: self.stopping, evicted)
        steps.append(time.monotonic())
        after = registry_cache.cache_bytes(self.storage)
        kept = [image for image in inventory.images if image not in evicted]
        self.usage.keep_only({(image.repository, digest) for image in kept for digest in image.manifests})
        self.usage.save()
        seconds = time.monotonic() - started
        self.metrics.add(registry_mirror_cache_collections_total=1, registry_mirror_cache_evictions_total=len(evicted),
                         registry_mirror_cache_reclaimed_bytes_total=reclaimed)
        self.metrics.set(registry_mirror_cache_bytes=after, registry_mirror_cache_budget_bytes=budget,
                         registry_mirror_cache_images=len(kept), registry_mirror_cache_last_collection_seconds=seconds,
                         registry_mirror_cache_last_collection_timestamp_seconds=time.time())
        names = ", ".join(describe(image) for image in evicted[:10])
        more = f" and {len(evicted) - 10} more" if len(evicted) > 10 else ""
        scan, eviction, sweep = (later - earlier for earlier, later in zip(steps, steps[1:]))
        say(f"cache collection done in {seconds:.2f} s (scan {scan:.2f} s, eviction {eviction:.2f} s, sweep "
            f"{sweep:.2f} s): evicted {len(evicted)} images{': ' if names else ''}{names}"
            f"{more}; deleted {blobs} blobs, reclaimed {reclaimed / MIB:.1f} MiB; cache {before / MIB:.1f} -> "
            f"{after / MIB:.1f} MiB, budget " + (f"{budget / MIB:.1f} MiB" if budget else "none"))

    def stop_all(self) -> None:
        """Stop the registry and any process still draining; kill what has not exited after the stop timeout."""
        procs = [proc for proc in (self.child, *self.draining) if proc is not None]
        for proc in procs:
            stop(proc)
        for proc in procs:
            try:
                proc.wait(timeout=self.settings.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


def unreachable(failed: list[tuple[str, str]], verb: str = "") -> str:
    """The journal's words for the upstreams FAILED (URL and error each, in the order tried) that did not answer."""
    first, *others = failed
    return f"upstream {first[0]} {verb}unreachable ({first[1]})" + "".join(
        f", {url} {verb}unreachable ({why})" for url, why in others)


def cert_dirs(current: str, ca_dir: str, tier: bool) -> str:
    """SSL_CERT_DIR (CURRENT: the environment's, a list separated by ":") with CA_DIR first if TIER, and without it
    otherwise; "" for none."""
    dirs = [entry for entry in current.split(":") if entry
            and not (ca_dir and os.path.normpath(entry) == os.path.normpath(ca_dir))]
    return ":".join(([ca_dir] if tier and ca_dir else []) + dirs)


def bind_unix(path: str) -> socket.socket:
    """A unix stream socket listening at PATH, mode UNIX_SOCKET_MODE. A socket already there (a stale one: a
    supervisor that was killed leaves its own) is replaced; anything else there (a file, a directory, a symbolic link,
    never followed) is left as it is: OSError, as distribution does."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not S_ISSOCK(mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket (left as it is)", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Before listen: until then a connection is refused whatever the mode (bind's follows the umask).
        os.chmod(path, UNIX_SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def remove_unix_socket(path: str, bound: tuple[int, int]) -> None:
    """Remove the socket file at PATH if it is still the one the supervisor bound (device and inode BOUND)."""
    with contextlib.suppress(OSError):  # gone already, or its directory
        info = os.lstat(path)
        if S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == bound:
            os.unlink(path)


def relay_redacted(stream: typing.IO[bytes], secret: str) -> None:
    """Copy STREAM (a registry's output) to the journal line by line, with SECRET blanked."""
    with stream:
        for raw in iter(stream.readline, b""):
            relay_line(raw.decode("utf-8", "replace").rstrip("\n").replace(secret, REDACTED))


def stop(child: subprocess.Popen[bytes]) -> None:
    """Ask CHILD to stop: it closes its listener at once and drains in-flight requests."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)


# --- Group mode: one child supervisor per mirror ----------------------------------------------------------------------

def child_environment(parent: Mapping[str, str], settings: Settings, primary: bool) -> tuple[dict[str, str], str]:
    """The environment of a child supervisor in group mode, and what to say about its credentials ("": nothing). The
    PRIMARY's is PARENT's without the other mirrors' credentials; another's has none of PARENT's REGISTRY_* variables
    (the unit's credentials and overrides are the primary's), but its own credentials when its settings name them.
    Each gets the PREFIX_USERNAME / PREFIX_PASSWORD its fallbacks name as they are (its supervisor hands them to its
    registry while it pulls through that fallback)."""
    fallbacks = {f"{fallback.credentials}_{part}" for fallback in settings.fallbacks if fallback.credentials
                 for part in ("USERNAME", "PASSWORD")}
    if primary:
        return {name: value for name, value in parent.items()
                if not MIRROR_CREDENTIAL_ENV.fullmatch(name) or name in fallbacks}, ""
    env = {name: value for name, value in parent.items() if not name.startswith("REGISTRY_") or name in fallbacks}
    if not settings.credentials:
        return env, ""
    names = [f"{settings.credentials}_{part}" for part in ("USERNAME", "PASSWORD")]
    values = [parent.get(name, "") for name in names]
    if not all(values):
        unset = " and ".join(name for name, value in zip(names, values) if not value)
        return env, f"{unset} not set in the unit's environment: pulling from the upstream anonymously"
    env.update(zip(CREDENTIAL_ENV, values))
    return env, ""


class Member:
    """One mirror of a group: its settings, its child supervisor, and when to start that again."""

    def __init__(self, path: str, settings: Settings, parent: Mapping[str, str], primary: bool) -> None:
        self.path, self.settings = path, settings
        self.env, self.note = child_environment(parent, settings, primary)
        self.label = settings.name or path
        self.proc: subprocess.Popen[bytes] | None = None
        self.relay: threading.Thread | None = None
        self.started = 0.0  # time.monotonic()
        self.restart_at = 0.0
        self.backoff = BACKOFF_MIN

    def tell(self, message: str) -> None:
        """A line of the group's own about this mirror."""
        relay_line(f"[{self.label}] {PROG}: {message}")


def relay_line(line: str) -> None:
    """Write LINE whole to the journal; a journal that is gone loses it (a child must never block on its pipe)."""
    with OUTPUT_LOCK:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def relay(label: str, stream: typing.IO[bytes]) -> None:
    """Copy STREAM (a child's output) to the journal line by line, each prefixed with [LABEL]."""
    with stream:
        for raw in iter(stream.readline, b""):
            relay_line(f"[{label}] " + raw.decode("utf-8", "replace").rstrip("\n"))


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill whatever is left of PROC's process group (PROC and the registries it started)."""
    with contextlib.suppress(OSError):  # nothing left
        os.killpg(proc.pid, signal.SIGKILL)


class Group:
    """Runs one child supervisor per mirror until systemd stops the unit, restarting each that exits."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.stopping = False
        self.collect_requested = False

    def on_term(self, _signum: int, _frame: types.FrameType | None) -> None:
        """systemd stops the unit (KillMode=mixed: the children hear it from here)."""
        self.stopping = True

    def on_usr1(self, _signum: int, _frame: types.FrameType | None) -> None:
        """An operator asks every mirror for a collection now."""
        self.collect_requested = True

    def run(self) -> int:
        """Supervise the children until SIGTERM; always 0: no child's failure is the group's."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGUSR1, self.on_usr1)
        say(f"{len(self.members)} mirrors, a supervisor each: {', '.join(member.label for member in self.members)}")
        for member in self.members:
            if member.note:
                member.tell(member.note)
        try:
            while not self.stopping:
                if self.collect_requested:
                    self.collect_requested = False
                    self.signal_all(signal.SIGUSR1)
                for member in self.members:
                    if member.proc is None:
                        if time.monotonic() >= member.restart_at and not self.stopping:
                            self.start(member)
                    elif member.proc.poll() is not None:
                        self.exited(member)
                time.sleep(GROUP_TICK)
        finally:
            self.stop_all()
        return 0

    def start(self, member: Member) -> None:
        """Start MEMBER's child supervisor (its own process group: what it leaves behind can be killed). It starts
        with SIGUSR1 ignored, until it handles it: SIGUSR1's default action would end it."""
        member.started = time.monotonic()
        handler = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            member.proc = subprocess.Popen([sys.executable, PROGRAM, member.path], env=member.env,
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            member.tell(f"cannot start the mirror's supervisor ({exc})")
            self.schedule(member)
            return
        finally:
            signal.signal(signal.SIGUSR1, handler)
        assert member.proc.stdout is not None
        member.relay = threading.Thread(target=relay, args=(member.label, member.proc.stdout), daemon=True)
        member.relay.start()

    def exited(self, member: Member) -> None:
        """MEMBER's child supervisor exited: say so after its last lines, and start it again after the back-off."""
        assert member.proc is not None
        kill_group(member.proc)  # a registry a crashed supervisor left would hold the mirror's port and the pipe
        if member.relay is not None:
            member.relay.join(timeout=1)
        status = member.proc.returncode
        member.proc = member.relay = None
        delay = self.schedule(member)
        member.tell(f"the mirror's supervisor exited with status {status}; restarting in {delay:g} s")

    def schedule(self, member: Member) -> float:
        """When MEMBER starts again: the back-off, reset by a long enough run, then doubled for the next time."""
        if time.monotonic() - member.started >= BACKOFF_RESET:
            member.backoff = BACKOFF_MIN
        delay = member.backoff
        member.backoff = min(delay * 2, BACKOFF_MAX)
        member.restart_at = time.monotonic() + delay
        return delay

    def signal_all(self, signum: int) -> None:
        """Send SIGNUM to every child supervisor that runs (not to its registries: they hear from it)."""
        for member in self.members:
            if member.proc is not None:
                member.proc.send_signal(signum)  # nothing when it has exited

    def stop_all(self) -> None:
        """Stop every child (each stops its registries); kill what still runs after the largest stop_timeout plus a
        margin."""
        self.signal_all(signal.SIGTERM)
        limit = max(member.settings.stop_timeout for member in self.members) + GROUP_STOP_MARGIN
        deadline = time.monotonic() + limit
        for member in self.members:
            if member.proc is None:
                continue
            try:
                member.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.tell(f"still running {limit:g} s after SIGTERM: killed")
            kill_group(member.proc)
            member.proc.wait()
        for member in self.members:
            if member.relay is not None:
                member.relay.join(timeout=1)


# A line of a credentials file the role writes for systemd (EnvironmentFile=): NAME="VALUE", the value without what
# systemd would interpret inside double quotes or anything that could end the line.
ENV_ASSIGNMENT = re.compile(r'([A-Z][A-Z0-9_]*)="[^"\\$`\x00-\x1f\x7f]*"')


def check_env_file(path: str) -> None:
    """Check a credentials file (proxy.env) before it replaces the live one: comments, blank lines and NAME="VALUE"
    lines of the credentials this program reads (CREDENTIAL_ENV, MIRROR_CREDENTIAL_ENV), each once, each user name with
    its password. Raises SettingsError naming the line or variable, never a value."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    names: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        match = ENV_ASSIGNMENT.fullmatch(line)
        if not match:
            raise SettingsError(f'{path}: line {number} is not NAME="VALUE" with a value free of quotes, backslashes, '
                                "dollar signs, backticks and control characters (its value is not shown)")
        name = match.group(1)
        if name not in CREDENTIAL_ENV and not MIRROR_CREDENTIAL_ENV.fullmatch(name):
            raise SettingsError(f"{path}: line {number} sets {name}, which is not a credential {PROG} reads")
        if name in names:
            raise SettingsError(f"{path}: line {number} sets {name} again")
        names.append(name)
    for name in names:
        stem, _sep, half = name.rpartition("_")
        partner = f"{stem}_{'PASSWORD' if half == 'USERNAME' else 'USERNAME'}"
        if partner not in names:
            raise SettingsError(f"{path}: {name} is set without {partner}")


def load_group(paths: list[str], parent: Mapping[str, str]) -> list[Member] | None:
    """The mirrors of group mode, the first file the primary; None when a file is invalid (said, each)."""
    members: list[Member] = []
    for index, path in enumerate(paths):
        try:
            members.append(Member(path, Settings.load(path), parent, primary=index == 0))
        except SettingsError as exc:
            message = str(exc)
            say(f"ERROR: {message if path in message else f'{path}: {message}'}")
    return members if len(members) == len(paths) else None


def main(argv: list[str]) -> int:
    """Read the settings named on the command line and supervise: one mirror, or a group of them."""
    paths = argv[1:]
    if len(paths) == 2 and paths[0] in ("--check-settings", "--check-env"):
        try:
            if paths[0] == "--check-settings":
                Settings.load(paths[1])
            else:
                check_env_file(paths[1])
        except SettingsError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        return 0
    if not paths:
        print(f"usage: {PROG} SETTINGS.json [SETTINGS.json ...] | --check-settings SETTINGS.json | --check-env FILE",
              file=sys.stderr)
        return 2
    if len(paths) > 1:
        members = load_group(paths, os.environ)
        return Group(members).run() if members is not None else 2
    try:
        settings = Settings.load(paths[0])
    except SettingsError as exc:
        say(f"ERROR: {exc}")
        return 2
    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
