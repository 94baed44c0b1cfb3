# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry.service's main process: keeps the mirror serving whether or not Docker Hub answers.

Usage: registry-supervisor SETTINGS.json

distribution in pull-through mode contacts its upstream while starting and exits when it cannot, so a mirror
(re)started during an upstream outage (a reboot, a certificate renewal, an upgrade) would serve nothing, although its
cache could. This supervisor runs the registry in pull-through mode while the upstream answers, and the same binary,
config and storage read-only without the proxy section while it does not (cached images keep pulling fast, without a
stalled upstream lookup per tag), probing the upstream and switching back by itself. The switch takes a fraction of a
second: the old process stops listening at once and drains its in-flight requests in the background.

SETTINGS is a JSON object written by the role (no secrets: the upstream credentials come from the environment,
REGISTRY_PROXY_USERNAME / REGISTRY_PROXY_PASSWORD, as for the registry itself). Required: binary, config, upstream,
version. The other keys (see Settings) have defaults; keys starting with "_" are comments.

At start, and whenever it returns to pull-through mode, the supervisor asks the upstream's token service for a pull
token the way the installed distribution version will, and says in the journal when that cannot work: the token
service refuses the account, or distribution will not send the credentials to the realm the upstream names
(public_suffix_list.dat.gz, next to this program, decides which hosts share a registrable domain).

Free-space floor (min_free_mb > 0): at start and at every probe tick the supervisor reads the free space of the
cache's filesystem (statvfs of REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY when the environment sets it, as
distribution does, else of the storage setting). Below the floor it runs the registry read-only even while the
upstream answers: distribution 3.1 in pull-through mode rewrites a tag's link at every lookup, and on a full disk that
write fails every pull by tag, cached images included, while read-only it serves them. It returns to pull-through mode
once more than the floor plus a margin (a tenth of the floor, at least 64 MiB) is free and the upstream answers: the
margin keeps a mirror that frees a little space by itself from switching at every tick.
"""
from __future__ import annotations

import base64
import dataclasses
import gzip
import http.client
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

PROG = "registry-supervisor"
PUBLIC_SUFFIX_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "public_suffix_list.dat.gz")
# Read-only mode: the same config without the proxy section, storage read-only, no upstream credentials.
LOCAL_ENV = {
    "REGISTRY_PROXY_REMOTEURL": "",
    "REGISTRY_STORAGE_MAINTENANCE": "{readonly: {enabled: true}}",
}
CREDENTIAL_ENV = ("REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD")
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
        settings = cls(**values)
        parse_version(settings.version)
        return settings


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
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Runs the registry in the mode the upstream allows until systemd stops the unit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstream = settings.upstream
        self.stopping = False
        self.interruptible = False
        self.tls_context: ssl.SSLContext | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.draining: list[subprocess.Popen[bytes]] = []
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

    def tls(self) -> ssl.SSLContext:
        """The system trust store, loaded once: loading it costs most of a second on a slow (emulated) CPU."""
        if self.tls_context is None:
            self.tls_context = ssl.create_default_context()
        return self.tls_context

    def on_term(self, _signum: int, _frame: types.FrameType | None) -> None:
        """systemd stops the unit."""
        self.stopping = True
        if self.interruptible:
            raise Stopping  # do not keep serving (and systemd waiting) until a request to a dead upstream times out

    def fetch(self, request: str | urllib.request.Request, timeout: float, read: bool = False) -> bytes:
        """An upstream request (its body if READ) that SIGTERM interrupts (Stopping); HTTPError for an HTTP error
        status, OSError or ValueError when it gets no valid answer within TIMEOUT seconds."""
        self.interruptible = True
        try:
            if self.stopping:
                raise Stopping
            with urllib.request.urlopen(request, timeout=timeout, context=self.tls()) as response:
                body: bytes = response.read() if read else b""
                return body
        except http.client.HTTPException as exc:  # a garbled answer: as good as none
            raise ValueError(f"invalid HTTP answer: {exc!r}") from exc
        finally:
            self.interruptible = False

    def upstream_answers(self, timeout: float | None = None) -> tuple[bool, str]:
        """Whether the upstream's /v2/ gives any HTTP answer (Docker Hub answers 401) within TIMEOUT seconds."""
        try:
            self.fetch(self.upstream + "/v2/", self.settings.probe_timeout if timeout is None else timeout)
            return True, "200"
        except urllib.error.HTTPError as exc:
            return True, str(exc.code)
        except (OSError, ValueError) as exc:
            return False, str(getattr(exc, "reason", exc))
        except Stopping:
            return False, "stopping"

    def check_token_service(self) -> None:
        """Ask the upstream's token service for a pull token the way the proxy will, and say so in the journal when
        that cannot work: distribution itself reports it to clients only as "manifest unknown"."""
        user, password = (os.environ.get(name, "") for name in CREDENTIAL_ENV)
        who = f"the configured account {user!r}" if user else "anonymous pulls"
        try:
            self.fetch(self.upstream + "/v2/", self.settings.challenge_timeout)
            return
        except urllib.error.HTTPError as exc:
            challenges = [parse_challenge(value) for value in exc.headers.get_all("WWW-Authenticate") or []]
        except (OSError, ValueError, Stopping):
            return
        version = self.settings.version
        for scheme, params in challenges:
            if scheme == "basic" and user and not sends_credentials(version, scheme, self.upstream, ""):
                say(f"ERROR: upstream {self.upstream} asks for Basic authentication (realm {params.get('realm', '')!r})"
                    f" and distribution {version} answers only token challenges: it will not send the credentials of "
                    f"{who}, and pulls of images that are not cached will fail")
                return
        bearer = [params for scheme, params in challenges if scheme == "bearer"]
        if not bearer:
            return
        realm = bearer[0].get("realm", "")
        if not sends_credentials(version, "bearer", self.upstream, realm):
            refused = f"send the credentials of {who} to" if user else "ask for anonymous tokens at"
            say(f"ERROR: distribution {version} will not {refused} the token realm {realm} that upstream "
                f"{self.upstream} names (the realm must be on the upstream's host and port, or both must be DNS names "
                "of one registrable domain): pulls of images that are not cached will fail")
            return
        query = urllib.parse.urlencode({"service": bearer[0].get("service", ""), "scope": CHECK_SCOPE})
        request = urllib.request.Request(f"{realm}{'&' if '?' in realm else '?'}{query}")
        if user:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        try:
            json.loads(self.fetch(request, self.settings.token_timeout, read=True))
            say(f"upstream token service accepts {who}")
        except urllib.error.HTTPError as exc:
            say(f"ERROR: upstream token service {realm} refuses {who} (HTTP {exc.code}): pulls of images that are not "
                "cached will fail (clients see 'manifest unknown'); check registry_mirror_dockerhub_username/token")
        except (OSError, ValueError) as exc:
            say(f"upstream token service {realm} did not answer ({exc})")
        except Stopping:
            return

    def start(self, local: bool, debug: bool = True) -> subprocess.Popen[bytes]:
        """The registry, in pull-through mode or read-only without the proxy; without its debug (metrics) listener
        when DEBUG is false: an older process that still drains keeps that port until it exits, and distribution
        exits when it cannot bind it."""
        env = dict(os.environ)
        if local:
            env.update(LOCAL_ENV)
            for name in CREDENTIAL_ENV:
                env.pop(name, None)
        if not debug:
            env["REGISTRY_HTTP_DEBUG_ADDR"] = ""
        return subprocess.Popen([self.settings.binary, "serve", self.settings.config], env=env)

    def replace(self, child: subprocess.Popen[bytes], local: bool, grace: float) -> subprocess.Popen[bytes]:
        """Stop CHILD and start the registry in the other mode once CHILD has exited or GRACE seconds have passed
        (it lets go of the port at once; a CHILD still draining requests stays in self.draining)."""
        stop(child)
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.draining.append(child)
        self.draining = [old for old in self.draining if old.poll() is None]
        if self.draining and self.settings.metrics:
            say("the previous registry still drains requests: no metrics listener until the next switch or restart")
        return self.start(local, debug=not self.draining)

    def run(self) -> int:
        """Supervise until systemd stops the unit; the exit status for systemd."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        try:
            self.begin()
            while not self.stopping:
                time.sleep(self.settings.poll_interval)
                self.draining = [old for old in self.draining if old.poll() is None]
                if self.child is not None and self.child.poll() is not None:
                    status = self.after_exit(self.child.returncode)
                    if status is not None:
                        return status
                elif (self.settings.offline_fallback or self.floor_mb) and time.monotonic() >= self.next_probe:
                    self.probe()
            return 0
        except Stopping:  # SIGTERM right at the end of an upstream request
            return 0
        finally:
            self.stop_all()

    def begin(self) -> None:
        """Most starts find the upstream answering: start in pull-through mode at once and probe meanwhile, so that
        VMs do not wait for the probe as well as for the registry's own start. Below the free-space floor, start
        read-only at once."""
        if self.settings.min_free_mb and not self.floor_mb:
            say(f"min_free_mb is {self.settings.min_free_mb} but no storage directory is set (storage, {STORAGE_ENV}): "
                "free space is not checked")
        if self.check_space():
            self.local = self.held_for_space = True
            self.child = self.start(local=True)
        else:
            self.child = self.start(local=False)
        if self.settings.offline_fallback and not self.local:
            reachable, why = self.upstream_answers(self.settings.start_probe_timeout)
            if not reachable and not self.stopping:
                say(f"upstream {self.upstream} unreachable ({why}): serving the cache read-only without the proxy")
                self.local = True
                # It was starting, not serving: wait for it.
                self.child = self.replace(self.child, self.local, self.settings.start_grace)
        if not self.local and not self.stopping:
            self.check_token_service()
        self.next_probe = time.monotonic() + self.settings.probe_interval

    def after_exit(self, status: int) -> int | None:
        """The registry exited with STATUS: serve the cache read-only if the upstream is why, else the supervisor's
        exit status (systemd restarts the unit); None when it goes on."""
        if self.settings.offline_fallback and not self.local:
            reachable, why = self.upstream_answers()
            if self.stopping:
                return 0
            if not reachable:
                say(f"registry exited and upstream {self.upstream} is unreachable ({why}): serving the cache read-only")
                self.local, self.failures = True, 0
                self.child = self.start(self.local, debug=not self.draining)
                return None
        say(f"registry exited with status {status}")
        return status or 1

    def probe(self) -> None:
        """Check the free space and probe the upstream; switch to read-only below the free-space floor or after a
        confirmed upstream failure, and back when there is space again and the upstream answers."""
        settings = self.settings
        self.next_probe = time.monotonic() + settings.probe_interval
        was_low = self.low_space
        if self.check_space() and not self.local:
            self.held_for_space = True
            self.switch()
            return
        reachable, why = self.upstream_answers() if settings.offline_fallback else (True, "")
        if self.stopping:
            return
        self.failures = 0 if reachable else self.failures + 1
        if self.failures and not self.local:
            self.next_probe = time.monotonic() + min(settings.confirm_after, settings.probe_interval)
        if self.local:
            if not self.may_leave_read_only(reachable, why, space_back=was_low and not self.low_space):
                return
            self.check_token_service()
        elif self.failures >= settings.failures_before_fallback:
            say(f"upstream {self.upstream} unreachable ({why}): serving the cache read-only without the proxy")
        else:
            return
        self.switch()

    def switch(self) -> None:
        """Replace the registry with one in the other mode."""
        self.local = not self.local
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
        if free < self.floor_mb * MIB and not self.low_space:
            self.low_space = True
            say(f"WARNING: {self.free_mb} MiB free on {self.storage}, below the floor of {self.floor_mb} MiB: serving "
                f"the cache read-only and storing nothing new until more than {self.resume_mb} MiB are free")
        elif free > self.resume_mb * MIB:
            self.low_space = False
        return self.low_space

    def may_leave_read_only(self, reachable: bool, why: str, space_back: bool) -> bool:
        """Whether to return to pull-through mode (said in the journal): the upstream answers and, with a floor,
        there is space. SPACE_BACK: free space rose above floor plus margin at this tick."""
        space = f"{self.free_mb} MiB free on {self.storage} again (floor {self.floor_mb} MiB)"
        if self.low_space:
            if reachable and not self.held_for_space:
                say(f"upstream {self.upstream} answers again ({why}), but only {self.free_mb} MiB are free on "
                    f"{self.storage} (more than {self.resume_mb} MiB needed): still serving the cache read-only")
            self.held_for_space = reachable
            return False
        if not reachable:
            if space_back:
                say(f"{space}, but upstream {self.upstream} is unreachable ({why}): still serving the cache read-only")
            self.held_for_space = False
            return False
        if self.held_for_space or space_back:
            answers = f" and upstream {self.upstream} answers ({why})" if self.settings.offline_fallback else ""
            say(f"{space}{answers}: back to pull-through mode")
        else:
            say(f"upstream {self.upstream} answers again ({why}): back to pull-through mode")
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


def stop(child: subprocess.Popen[bytes]) -> None:
    """Ask CHILD to stop: it closes its listener at once and drains in-flight requests."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)


def main(argv: list[str]) -> int:
    """Read the settings named on the command line and supervise."""
    if len(argv[1:]) != 1:
        print(f"usage: {PROG} SETTINGS.json", file=sys.stderr)
        return 2
    try:
        settings = Settings.load(argv[-1])
    except SettingsError as exc:
        say(f"ERROR: {exc}")
        return 2
    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
