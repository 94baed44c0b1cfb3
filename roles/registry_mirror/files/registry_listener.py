# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's loopback port: distribution's pull notifications in (POST /events, with the secret each
registry gets), the supervisor's Prometheus metrics out (GET /metrics), and, on the same port number over UDP, the
caching front's per-request log counted into those metrics.

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import contextlib
import hmac
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import typing
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import registry_cache
from registry_journal import say
from registry_settings import Settings

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
# The caching front's per-request log (front_log): nginx's syslog datagrams with nohostname, one per request,
# "<PRI>Mmm dd hh:mm:ss registry_front: MESSAGE" with MESSAGE the front's log_format,
# "cache=$upstream_cache_status kind=$kind status=$status upstream=$upstream_addr method=$request_method
# repo=$repo digest=$sent_http_docker_content_digest bytes=$body_bytes_sent" (nginx writes "-" for an empty variable;
# a front of an earlier release sends no bytes, or no method, repo, digest and bytes). A datagram longer than
# FRONT_LOG_MAX is none of these. A hostname before the tag is tolerated (a front configured without nohostname).
FRONT_LOG_MAX = 2048
FRONT_LOG_LINE = re.compile(r"<[0-9]{1,3}>[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} (?:[^\s:]+ )?"
                            r"registry_front: cache=(\S*) kind=(\S+) status=([0-9]{3}) upstream=(\S.*?)"
                            r"(?: method=([A-Z]+) repo=(\S+) digest=(\S+)(?: bytes=([0-9]{1,20}))?)?")
# The front's answers from its own cache, which distribution never sees (nor notifies as pulls): a manifest pulled so
# counts as a use for the cache's eviction, as distribution's notification of a pull would. The front caches
# manifests only (its blob locations have no proxy_cache: a blob comes from distribution's storage or from
# distribution), so these are manifests; a cached answer of another kind would count the same, as a cache hit.
FRONT_CACHED_ANSWERS = ("HIT", "STALE", "UPDATING")
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
        "registry_mirror_front_bytes_served_total": ("counter", "Body bytes the front sent without the registry: its "
                                                     "cached answers (HIT, STALE, UPDATING) and blobs from the "
                                                     "registry's storage. Add registry_http_response_size_bytes_sum "
                                                     "for all bytes served."),
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

def front_match(datagram: bytes) -> re.Match[str] | None:
    """DATAGRAM matched as one line of the front's log (FRONT_LOG_LINE); None: not one."""
    if len(datagram) > FRONT_LOG_MAX:
        return None
    try:
        text = datagram.decode("ascii")
    except UnicodeDecodeError:
        return None
    return FRONT_LOG_LINE.fullmatch(text.rstrip("\r\n\x00"))


def front_use(datagram: bytes) -> tuple[str, str] | None:
    """The repository and manifest digest of a pull the front answered from its own cache (DATAGRAM: a line of its
    log): a GET of a manifest, 200, HIT or stale; None for anything else, distribution's own answers included (it
    notifies those itself)."""
    match = front_match(datagram)
    if match is None:
        return None
    cache, kind, status, _upstream, method, repository, digest, _sent = match.groups()
    if (cache, kind, status, method) not in {(answer, "manifest", "200", "GET") for answer in FRONT_CACHED_ANSWERS}:
        return None
    return (repository, digest) if valid_event_target(repository, digest) else None


def parse_front_line(datagram: bytes) -> tuple[str, str, int, str, int] | None:
    """The cache status ("-": none), kind, HTTP status, upstream address ("-": none) and body bytes sent (0 when the
    line does not say: a front of an earlier release) of a request the front logged (DATAGRAM: one nginx syslog
    message, FRONT_LOG_LINE); None for anything else."""
    match = front_match(datagram)
    if match is None:
        return None
    cache, kind, status, upstream = match.groups()[:4]
    sent = match.group(8)
    cache = cache or "-"
    if cache not in FRONT_CACHE_STATUSES or kind not in FRONT_KINDS:
        return None
    return cache, kind, int(status), upstream.strip() or "-", int(sent) if sent else 0


def front_blob_from_disk(cache: str, kind: str, status: int, upstream: str) -> bool:
    """Whether the front sent a blob from the registry's storage itself: no cache status and no upstream (one the
    registry served has its address), 200 or 206."""
    return kind == "blob" and cache == "-" and upstream == "-" and status in (200, 206)


def front_counters(cache: str, kind: str, status: int, upstream: str, sent: int = 0) -> dict[str, int]:
    """What a request the front logged (parse_front_line's answer) adds to which counter: 1 to the requests and to
    the counters of its cache status, blob from disk or error; SENT to the bytes served when the front answered
    without the registry (from its cache, or a blob from disk), so that the registry's response bytes and these never
    count the same bytes."""
    names = ["registry_mirror_front_requests_total"]
    # The front stores no blob: the MISS of one it passed on to the registry is its lock's (front.conf), not a miss.
    if cache in FRONT_CACHE_COUNTERS and not (kind == "blob" and cache == "MISS"):
        names.append(FRONT_CACHE_COUNTERS[cache])
    from_disk = front_blob_from_disk(cache, kind, status, upstream)
    if from_disk:
        names.append("registry_mirror_front_blobs_from_disk_total")
    if status >= 500:
        names.append("registry_mirror_front_errors_total")
    counts = dict.fromkeys(names, 1)
    if sent > 0 and (from_disk or cache in FRONT_CACHED_ANSWERS):
        counts["registry_mirror_front_bytes_served_total"] = sent
    return counts


class FrontLog:
    """The front's log port (UDP 127.0.0.1:PORT, the listener's number): a thread counts each request logged into
    METRICS, and records in USAGE (if any) each manifest pulled from the front's cache (front_use). Only datagrams from
    127.0.0.1 count (the front sends from there); anything that is not a front's log line is ignored. OSError when the
    port cannot be bound."""

    def __init__(self, port: int, metrics: Metrics, usage: Usage | None = None) -> None:
        self.metrics = metrics
        self.usage = usage
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
                    self.metrics.add(**front_counters(*parsed))
                    used = front_use(datagram) if self.usage is not None else None
                    if used is not None and self.usage is not None:
                        self.usage.record(*used, time.time())
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
