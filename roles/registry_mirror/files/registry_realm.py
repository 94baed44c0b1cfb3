# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Where upstream credentials may go: the Public Suffix List, token challenges, token realms and redirects.

A module of registry-supervisor and registry-prefetch, installed beside them (Python 3.8+, standard library only). Two
rules share the list and the parsing here, and stay distinct on purpose:

- realm_allowed / sends_credentials: the rule distribution 3.1+ applies to where its proxy sends the upstream
  credentials (a token realm on the upstream's host and port as written, or on the upstream's registrable domain),
  which the supervisor predicts and checks at start.
- credentials_allowed: registry-prefetch's own, stricter rule for its own requests (https only, the upstream's host
  and port, or a DNS name under the upstream host's parent domain when that parent is no public suffix).

public_suffix_list.dat.gz, next to this module, decides which hosts share a registrable domain.
"""
from __future__ import annotations

import gzip
import http.client
import ipaddress
import os
import re
import typing
import urllib.parse
import urllib.request
from collections.abc import Callable

PUBLIC_SUFFIX_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "public_suffix_list.dat.gz")
# The first distribution release that restricts where the proxy sends its upstream credentials: only to a token realm
# on the upstream's host and port or on the upstream's registrable domain, and that also answers Basic challenges.
# Earlier releases send them to any token realm the upstream names and never to a Basic challenge.
RESTRICTED_REALMS = (3, 1)
# What a request of the supervisor's credential checks may carry that is meant for one origin only: along a redirect
# to another origin (scheme, host, port; so from https to http too) it is left behind. Go's client (distribution's)
# leaves it behind for another host but keeps it for a subdomain: this is the stricter rule.
ORIGIN_HEADERS = ("authorization", "cookie")
DEFAULT_PORTS = {"http": 80, "https": 443}


def quiet(_message: str) -> None:
    """Say nothing (a caller without a journal)."""


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
    def read(cls, path: str = PUBLIC_SUFFIX_LIST) -> PublicSuffixList:
        """The list in PATH (gzip-compressed); OSError, EOFError or ValueError when it cannot be read."""
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return cls(handle.read())

    @classmethod
    def load(cls, path: str = PUBLIC_SUFFIX_LIST, say: Callable[[str], None] = quiet) -> PublicSuffixList:
        """The list in PATH (gzip-compressed); without it, only the default rule (every TLD is a public suffix), which
        SAY tells the journal."""
        try:
            return cls.read(path)
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

    def is_public_suffix(self, name: str) -> bool:
        """Whether the DNS NAME (as given: lower case, ASCII to match an internationalized rule) is itself a public
        suffix (co.uk, github.io, test) by one rule of the list: anyone may register names under it."""
        if "." not in name:
            return True  # the list's default rule, "*"
        if name in self.exceptions:
            return False  # an exception to a wildcard (city.kawasaki.jp under *.kawasaki.jp)
        return name in self.rules or name.split(".", 1)[1] in self.wildcards


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


def public_suffix_list(say: Callable[[str], None] = quiet) -> PublicSuffixList:
    """The list next to this module, read when first needed (most upstreams name a realm on their own host); SAY tells
    the journal when it cannot be read."""
    if not _LOADED:
        _LOADED.append(PublicSuffixList.load(say=say))
    return _LOADED[0]


def literal_or_local(host: str, localhost_subdomains: bool = False) -> bool:
    """Whether HOST is an IP address or localhost (and, with LOCALHOST_SUBDOMAINS, any name under .localhost): never a
    registrable domain. distribution's rule (realm_allowed) names localhost alone; registry-prefetch's
    (credentials_allowed) its subdomains too."""
    if host == "localhost" or (localhost_subdomains and host.endswith(".localhost")):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_port(url: urllib.parse.SplitResult) -> str:
    """URL's host[:port] as written (Go's url.URL.Host), without user information."""
    return url.netloc.rpartition("@")[2].lower()


def realm_allowed(upstream: str, realm: str, psl: PublicSuffixList | None = None,
                  say: Callable[[str], None] = quiet) -> bool:
    """distribution 3.1+: whether the proxy for UPSTREAM sends its credentials to the token REALM: the realm's host
    and port are the upstream's, or both hosts are DNS names (no IP address, no localhost) with the same registrable
    domain (auth.docker.io for registry-1.docker.io, but not auth.evil.co.uk for registry.example.co.uk). Without PSL,
    the list next to this module (SAY: where a failure to read it is said)."""
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
        psl = public_suffix_list(say)
    return psl.registrable_domain(remote_host) == psl.registrable_domain(realm_host)


def distribution_version(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a distribution version such as 3.1.1, v2.8.2 or 2.8.2+ds1; None for anything else."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def sends_credentials(version: str, scheme: str, upstream: str, realm: str,  # noqa: PLR0913, PLR0917 (+ psl, say)
                      psl: PublicSuffixList | None = None, say: Callable[[str], None] = quiet) -> bool:
    """Whether distribution VERSION answers UPSTREAM's challenge (SCHEME "bearer" with a token REALM, or "basic")
    with its upstream credentials (PSL and SAY: as realm_allowed's). ValueError for a VERSION that is none."""
    parsed = distribution_version(version)
    if parsed is None:
        raise ValueError(f"version {version!r} is not a distribution version")
    restricted = parsed[:2] >= RESTRICTED_REALMS
    if scheme == "basic":
        return restricted
    return not restricted or realm_allowed(upstream, realm, psl, say)


def credentials_allowed(upstream: str, realm: str, suffixes: PublicSuffixList | None) -> bool:
    """registry-prefetch's rule: whether the upstream credentials may go to the token REALM that UPSTREAM named: only
    over https, and only to the upstream's own host and port, or to a DNS name under the upstream host's parent domain
    (auth.docker.io for registry-1.docker.io), when that parent is no public suffix (SUFFIXES, the Public Suffix List;
    without it, a parent of at least two labels)."""
    try:
        remote, target = urllib.parse.urlsplit(upstream), urllib.parse.urlsplit(realm)
        remote_host, realm_host = (remote.hostname or "").lower(), (target.hostname or "").lower()
        remote_port = remote.port or (443 if remote.scheme == "https" else 80)
        realm_port = target.port or 443
    except ValueError:
        return False
    if target.scheme.lower() != "https" or not remote_host or not realm_host or "@" in target.netloc:
        return False
    if (remote_host, remote_port) == (realm_host, realm_port):
        return True
    if any(literal_or_local(host, localhost_subdomains=True) for host in (remote_host, realm_host)) \
            or remote_host.count(".") < 2:
        return False
    parent = remote_host.split(".", 1)[1]
    if suffixes is not None and suffixes.is_public_suffix(parent):
        return False
    return realm_host == parent or realm_host.endswith(f".{parent}")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of one WWW-Authenticate header value."""
    scheme, _space, rest = header.strip().partition(" ")
    params = {key.lower(): value[1:-1].replace('\\"', '"') if value.startswith('"') else value
              for key, value in re.findall(r'([\w-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)', rest)}
    return scheme.lower(), params


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
    Says so with SAY (origins only: no path, no query, no value)."""

    def __init__(self, say: Callable[[str], None] = quiet) -> None:
        super().__init__()
        self.say = say

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
            self.say(f"a redirect (HTTP {code}) from {show_origin(req.full_url)} to {show_origin(new.full_url)} "
                     f"leads to another origin{downgrade}: the credentials are not sent there")
        return new


def show_origin(url: str) -> str:
    """URL without user information, path, query or fragment, for the journal."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{host_port(parts)}"
    except ValueError:
        return "an invalid URL"
