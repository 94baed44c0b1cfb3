# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry.service's main process: keeps the mirror serving whether or not Docker Hub answers.

Usage: registry-supervisor SETTINGS.json [SETTINGS.json ...]
       registry-supervisor --check-settings SETTINGS.json    (the role's validate step: load it as at start, exit 2 if
                                                              invalid, saying why)
       registry-supervisor --check-env ENVIRONMENT_FILE      (the same for a credentials file, proxy.env: never a value)
       registry-supervisor --bridge SETTINGS.json [...]      (while a caching front is being turned on: each mirror's
                                                              unix socket served read-only until the registry, restarted
                                                              into them, takes the sockets over; registry_bridge)

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
cache hits and misses, blobs the front served from the registry's storage, the bytes it served without the
registry, errors. With front_cache (the front's cache directory of the mirror), a collection also removes the front's
copies of the manifests it evicted (registry_budget.purge_front).

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

This program keeps the mirror's lifecycle (start, probes, switches, the socket's hand-over, health, draining); the
rest lives in modules beside it, imported from its own directory: registry_settings (the settings file),
registry_upstream (its requests to the upstreams: probes, the token service and credential checks, SIGTERM during a
request), registry_realm (where credentials go; shared with registry-prefetch), registry_listener (the loopback port
and the front's log), registry_budget (free-space floor, disk budget), registry_group (group mode, --check-env),
registry_journal (the journal's lines), registry_cache (the cache's storage) and registry_bridge (the unix
sockets, and the bridge that serves them while a caching front is being turned on).
"""
from __future__ import annotations

import ctypes
import errno
import os
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

import registry_cache
from registry_bridge import LAUNCHER, LISTEN_BACKLOG, LOCAL_ENV, Bridge, bind_unix, remove_unix_socket
from registry_budget import Collector, FreeSpace
from registry_group import Group, check_env_file, load_group
from registry_journal import PROG, relay_line, say
from registry_listener import NOTIFICATION_ENDPOINTS, NOTIFICATIONS_ENV, FrontLog, Listener, Metrics, Usage
from registry_settings import CREDENTIAL_ENV, MIRROR_CREDENTIAL_ENV, Settings, SettingsError, unix_path
from registry_upstream import Stopping, Term, Upstreams

PROGRAM = os.path.abspath(__file__)  # what group mode runs for each mirror
# distribution's override of its storage directory, honoured by the free-space check too (systemd drop-ins set it).
STORAGE_ENV = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"
# While another process holds the mirror's address at start (settings.bind_wait), the supervisor tries again this often.
BIND_RETRY = 0.02
# A switch hands the port over (Supervisor.hand_over): the next registry gets a new socket in the SO_REUSEPORT group
# of the mirror's address, and this classic BPF program, attached to the group (socket(7),
# SO_ATTACH_REUSEPORT_CBPF), sends every new connection to the group's second socket: the newest, while the old one
# is still in the group. Once the old socket is closed the newest is the only one, and the index, out of range, falls
# back to the kernel's hash over the one socket. The program is one instruction: BPF_RET | BPF_K, 1.
SO_ATTACH_REUSEPORT_CBPF = 51
STEER_TO_NEWEST = struct.pack("=HBBI", 0x06, 0, 0, 1)
# The registry's lines pass through the supervisor, which blanks the notification secret in them: distribution logs
# its endpoints' headers at level info.
REDACTED = "[secret]"


class Supervisor:
    """Runs the registry in the mode the upstreams allow until systemd stops the unit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.term = Term()  # systemd's SIGTERM: whether it came, and whether it interrupts a request now
        # The upstream first, then the fallbacks: the registry pulls through the first that answers.
        self.upstreams = Upstreams(settings, self.term)
        self.candidates = self.upstreams.candidates
        self.active = 0  # the candidate pulled through when not self.local
        # Whether the upstreams are probed: to serve read-only while none answers, or to choose among several.
        self.probing = settings.offline_fallback or len(self.candidates) > 1
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
        self.metrics = Metrics(fallbacks=len(self.candidates) > 1, front=settings.front_log and bool(settings.port))
        self.space = FreeSpace(self.storage, settings.min_free_mb, self.metrics)
        # Read-only, and the free space is what keeps it so: the upstream answered at the last probe (or was not
        # probed since the switch for space).
        self.held_for_space = False
        self.usage = Usage(os.path.join(self.storage, registry_cache.USAGE_FILE)) if self.storage else None
        self.listener: Listener | None = None
        self.front_log: FrontLog | None = None
        self.front_log_refused = False  # the front's log port could not be bound: said once, retried
        self.socket: socket.socket | None = None  # the mirror's listening socket, when the supervisor holds it
        # A unix socket's path, and the file the supervisor bound there (device, inode): removed at stop if still so.
        self.unix_path = unix_path(settings.listen)
        self.unix_file: tuple[int, int] | None = None
        self.collector = Collector(settings, self.storage, self.usage, self.metrics)

    def on_usr1(self, _signum: int, _frame: types.FrameType | None) -> None:
        """An operator (or a test) asks for a collection now."""
        self.collector.collect_requested = True

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
        tier = not local and self.upstreams.fleet_ca(self.candidates[self.active].url)
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
            user, password = candidate.account()
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
        """Listen on the mirror's address for the registries (settings.listen); False (said) when that fails. An
        address in use is tried again for settings.bind_wait seconds: the caching front that is being turned off
        holds it until this registry has started (SIGTERM meanwhile: Stopping)."""
        if not self.settings.listen:
            return True
        deadline = time.monotonic() + self.settings.bind_wait
        waiting = False
        while True:
            try:
                self.socket = self.bind()
            except (OSError, ValueError) as exc:
                if (isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE and not self.unix_path
                        and time.monotonic() < deadline):
                    if not waiting:
                        waiting = True
                        say(f"{self.settings.listen} is in use (the caching front, when it is being turned off, "
                            f"lets go of it once this registry has started): waiting up to "
                            f"{self.settings.bind_wait:g} s")
                    if self.term.stopping:
                        raise Stopping() from exc
                    time.sleep(BIND_RETRY)
                    continue
                say(f"ERROR: cannot listen on {self.settings.listen} ({exc})")
                return False
            if waiting:
                say(f"listening on {self.settings.listen}")
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
        self.term.interruptible = True
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
            self.term.interruptible = False

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
        if self.term.stopping or child.poll() is not None:  # an exit is after_exit's
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
        signal.signal(signal.SIGTERM, self.term.on_term)
        signal.signal(signal.SIGINT, self.term.on_term)
        signal.signal(signal.SIGUSR1, self.on_usr1)
        try:
            if not self.open_socket():
                return 1
            self.listen()
            self.begin()
            while not self.term.stopping:
                time.sleep(self.settings.poll_interval)
                self.reap_draining()
                if self.child is not None and self.child.poll() is not None:
                    status = self.after_exit(self.child.returncode)
                    if status is not None:
                        return status
                elif (self.probing or self.space.floor_mb) and time.monotonic() >= self.next_probe:
                    self.probe()
                if not self.term.stopping:
                    self.check_health()
                if not self.term.stopping:
                    self.collector.tend(lambda: self.term.stopping, self.listen)
            return 0
        except Stopping:  # SIGTERM right at the end of an upstream request
            return 0
        finally:
            self.shut_down()

    def shut_down(self) -> None:
        """At the end: let go of the mirror's address, stop the registries, close the other ports, remove the unix
        socket, save the usage times. The address first: a registry closes its listener at its SIGTERM, and what
        arrives after that would wait in the supervisor's queue, unanswered, until the registry has drained; refused
        at once, a client falls back (a caching front, its 502 answered from its cache; and a front being turned on
        binds the port sooner)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        self.stop_all()
        if self.listener is not None:
            self.listener.shutdown()
        if self.front_log is not None:
            self.front_log.close()
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
            self.front_log = FrontLog(self.settings.port, self.metrics, self.usage)
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
        if self.settings.min_free_mb and not self.space.floor_mb:
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
        if self.space.check():
            self.local = self.held_for_space = True
            self.child = self.start(local=True)
        else:
            self.child = self.start(local=False)
            if self.probing:
                self.start_probe(self.child)
        if not self.local and not self.term.stopping:
            self.upstreams.check_token_service(self.active)
        self.next_probe = time.monotonic() + self.settings.probe_interval

    def start_probe(self, child: subprocess.Popen[bytes]) -> None:
        """Probe the upstream while CHILD, the registry pulling through it, starts; when it does not answer, replace
        CHILD with one pulling through the first fallback that does, else with a read-only one."""
        timeout = self.settings.start_probe_timeout
        reachable, why = self.upstreams.answers(self.active, timeout)
        if reachable or self.term.stopping:
            return
        index, _answer, failed = self.first_answering(range(1, len(self.candidates)), timeout)
        if self.term.stopping:
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
            reachable, why = self.upstreams.answers(index, timeout)
            if self.term.stopping:
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
            reachable, why = self.upstreams.answers(self.active)
            if self.term.stopping:
                return 0
            if not reachable:
                others = [index for index in range(len(self.candidates)) if index != self.active]
                index, _answer, failed = self.first_answering(others)
                if self.term.stopping:
                    return 0
                away = f"registry exited and upstream {self.candidates[self.active].url} is unreachable ({why})" \
                    + "".join(f", {url} unreachable ({reason})" for url, reason in failed)
                if index is not None:
                    say(f"{away}: pulling through {self.candidates[index].url}")
                    self.active, self.failures = index, 0
                    self.child = self.start(self.local, debug=not self.draining)
                    # Nothing serves until the new registry does: start it first.
                    self.upstreams.check_token_service(self.active)
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
        was_low = self.space.low
        if self.space.check() and not self.local:
            self.held_for_space = True
            self.switch(local=True)
            return
        if self.local:
            found = self.first_answering(range(len(self.candidates))) if self.probing else (0, "", [])
            if not self.term.stopping and self.may_leave_read_only(*found, space_back=was_low and not self.space.low):
                assert found[0] is not None
                self.take(found[0])
        elif self.probing and not self.back_to_preferred() and not self.term.stopping:
            self.probe_active()

    def back_to_preferred(self) -> bool:
        """Whether an upstream before the one pulled through answers (taken, and said)."""
        index, why, _failed = self.first_answering(range(self.active))
        if index is None or self.term.stopping:
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
        reachable, why = self.upstreams.answers(self.active)
        if self.term.stopping:
            return
        self.failures = 0 if reachable else self.failures + 1
        if self.failures:
            self.next_probe = time.monotonic() + min(settings.confirm_after, settings.probe_interval)
        if self.failures < settings.failures_before_fallback:
            return
        index, _answer, failed = self.first_answering(range(self.active + 1, len(self.candidates)))
        if self.term.stopping:
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
        self.upstreams.check_token_service(self.active)
        self.switch(local=False)

    def switch(self, local: bool) -> None:
        """Replace the registry with one read-only (LOCAL) or pulling through the active upstream."""
        self.local = local
        self.failures = 0
        self.next_probe = time.monotonic() + self.settings.probe_interval
        if self.child is not None:
            self.child = self.replace(self.child, self.local, self.settings.switch_grace)

    def may_leave_read_only(self, index: int | None, why: str, failed: list[tuple[str, str]],
                            space_back: bool) -> bool:
        """Whether to return to pull-through mode (said in the journal): candidate INDEX answers (WHY; None: none
        does, FAILED says why) and, with a floor, there is space. SPACE_BACK: free space rose above floor plus margin
        at this tick."""
        free = self.space
        space = f"{free.free_mb} MiB free on {free.storage} again (floor {free.floor_mb} MiB)"
        url = self.candidates[index].url if index is not None else ""
        if free.low:
            if index is not None and not self.held_for_space:
                say(f"upstream {url} answers again ({why}), but only {free.free_mb} MiB are free on "
                    f"{free.storage} (more than {free.resume_mb} MiB needed): still serving the cache read-only")
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


def relay_redacted(stream: typing.IO[bytes], secret: str) -> None:
    """Copy STREAM (a registry's output) to the journal line by line, with SECRET blanked."""
    with stream:
        for raw in iter(stream.readline, b""):
            relay_line(raw.decode("utf-8", "replace").rstrip("\n").replace(secret, REDACTED))


def stop(child: subprocess.Popen[bytes]) -> None:
    """Ask CHILD to stop: it closes its listener at once and drains in-flight requests."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)


def check(option: str, path: str) -> int:
    """--check-settings / --check-env (OPTION): load PATH as at start; 2, saying why, when it is invalid."""
    try:
        if option == "--check-settings":
            Settings.load(path)
        else:
            check_env_file(path)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


def bridge(paths: list[str]) -> int:
    """--bridge: serve the unix sockets of the mirrors of PATHS (settings files) read-only until the registry takes
    them over (registry_bridge)."""
    try:
        return Bridge([Settings.load(path) for path in paths]).run()
    except SettingsError as exc:
        say(f"ERROR: {exc}")
        return 2


def main(argv: list[str]) -> int:
    """Read the settings named on the command line and supervise: one mirror, or a group of them."""
    paths = argv[1:]
    if len(paths) == 2 and paths[0] in ("--check-settings", "--check-env"):
        return check(paths[0], paths[1])
    if paths[:1] == ["--bridge"] and len(paths) > 1:
        return bridge(paths[1:])
    if not paths or paths[0].startswith("--"):
        print(f"usage: {PROG} SETTINGS.json [SETTINGS.json ...] | --bridge SETTINGS.json [SETTINGS.json ...] | "
              "--check-settings SETTINGS.json | --check-env FILE", file=sys.stderr)
        return 2
    if len(paths) > 1:
        members = load_group(paths, os.environ)
        return Group(members, PROGRAM).run() if members is not None else 2
    try:
        settings = Settings.load(paths[0])
    except SettingsError as exc:
        say(f"ERROR: {exc}")
        return 2
    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
