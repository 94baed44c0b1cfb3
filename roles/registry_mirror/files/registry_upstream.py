# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's requests to its upstreams (Upstreams): whether one answers /v2/ (the probes), and the check
of the credentials the registry will pull with: the token service, or a Basic challenge, asked the way the installed
distribution version will, with what goes wrong said in the journal (naming the variables that hold the account,
never a value). Each request trusts ca_file only for a fleet's tiers and takes no credentials along a redirect to
another origin (registry_realm.OriginRedirects); systemd's SIGTERM interrupts one in flight (Term, Stopping).

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import ssl
import types
import urllib.error
import urllib.parse
import urllib.request

from registry_journal import say
from registry_realm import OriginRedirects, parse_challenge, sends_credentials
from registry_settings import CREDENTIAL_ENV, Settings, same_url

# The name the role gives the Docker Hub mirror in group mode (validate_inputs keeps it from registry_mirror_upstreams).
PRIMARY_NAME = "docker-hub"
# The token scope asked for when checking the token service: any public repository does.
CHECK_SCOPE = "repository:library/alpine:pull"


class Stopping(Exception):
    """systemd stopped the unit during an upstream request."""


class Term:
    """systemd's SIGTERM (and SIGINT) as the supervisor handles them (on_term): whether one came (stopping), and
    whether it interrupts what runs now (interruptible: a request to an upstream, or to the registry, that could keep
    the supervisor until its timeout raises Stopping)."""

    def __init__(self) -> None:
        self.stopping = False
        self.interruptible = False

    def on_term(self, _signum: int, _frame: types.FrameType | None) -> None:
        """systemd stops the unit."""
        self.stopping = True
        if self.interruptible:
            raise Stopping  # do not keep serving (and systemd waiting) until a request to a dead upstream times out


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An upstream the registry may pull through: the settings' upstream (credentials None: the environment's
    REGISTRY_PROXY_USERNAME / _PASSWORD, as the registry reads them), or a fallback (credentials: its prefix, "" for
    anonymous)."""

    url: str
    credentials: str | None

    def account(self) -> tuple[str, str]:
        """Its user name and password ("" and "": anonymous): the upstream's from the environment's
        REGISTRY_PROXY_USERNAME / _PASSWORD, a fallback's from its PREFIX_USERNAME / PREFIX_PASSWORD (both set, or
        none is used)."""
        if self.credentials is None:
            user, password = (os.environ.get(name, "") for name in CREDENTIAL_ENV)
            return user, password
        if not self.credentials:
            return "", ""
        user, password = (os.environ.get(f"{self.credentials}_{part}", "") for part in ("USERNAME", "PASSWORD"))
        return (user, password) if user and password else ("", "")


class Upstreams:
    """The upstreams of SETTINGS (candidates: the upstream first, then the fallbacks: the registry pulls through the
    first that answers) and the supervisor's own requests to them, which TERM's SIGTERM interrupts."""

    def __init__(self, settings: Settings, term: Term) -> None:
        self.settings = settings
        self.term = term
        self.candidates = [Candidate(settings.upstream, None),
                           *(Candidate(fallback.url, fallback.credentials) for fallback in settings.fallbacks)]
        self.tls_contexts: dict[bool, ssl.SSLContext] = {}  # with ca_file's CAs (True) or without
        self.openers: dict[bool, urllib.request.OpenerDirector] = {}

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

    def fetch(self, request: str | urllib.request.Request, timeout: float, read: bool = False,
              upstream: str = "") -> bytes:
        """A request for the UPSTREAM (a URL: whether ca_file is trusted) (its body if READ) that SIGTERM interrupts
        (Stopping); HTTPError for an HTTP error status, OSError or ValueError when it gets no valid answer within
        TIMEOUT seconds."""
        self.term.interruptible = True
        try:
            if self.term.stopping:
                raise Stopping
            with_ca = self.trusts_ca_file(upstream)
            if with_ca not in self.openers:  # the system's proxies as urlopen's, redirects as OriginRedirects does
                self.openers[with_ca] = urllib.request.build_opener(
                    urllib.request.HTTPSHandler(context=self.tls(with_ca)), OriginRedirects(say))
            with self.openers[with_ca].open(request, timeout=timeout) as response:
                body: bytes = response.read() if read else b""
                return body
        except http.client.HTTPException as exc:  # a garbled answer: as good as none
            raise ValueError(f"invalid HTTP answer: {exc!r}") from exc
        finally:
            self.term.interruptible = False

    def answers(self, index: int, timeout: float | None = None) -> tuple[bool, str]:
        """Whether the /v2/ of candidate INDEX gives any HTTP answer (Docker Hub answers 401) within TIMEOUT seconds
        (None: probe_timeout)."""
        url = self.candidates[index].url
        try:
            self.fetch(url + "/v2/", self.settings.probe_timeout if timeout is None else timeout, upstream=url)
            return True, "200"
        except urllib.error.HTTPError as exc:
            return True, str(exc.code)
        except (OSError, ValueError) as exc:
            return False, str(getattr(exc, "reason", exc))
        except Stopping:
            return False, "stopping"

    def variables(self, candidate: Candidate) -> str:
        """Where CANDIDATE's credentials are set, for the journal."""
        if candidate.credentials is None:
            return self.credential_variables()
        if not candidate.credentials:
            return "credentials in its fallbacks entry (a prefix REGISTRY_MIRROR_...)"
        return f"{candidate.credentials}_USERNAME / {candidate.credentials}_PASSWORD"

    def check_token_service(self, index: int) -> None:
        """Ask the token service of candidate INDEX (the upstream pulled through) for a pull token the way the proxy
        will (or, for a Basic challenge that distribution answers, the upstream itself), and say so in the journal
        when that cannot work: distribution itself reports it to clients only as "manifest unknown"."""
        candidate = self.candidates[index]
        upstream = candidate.url
        user, password = candidate.account()
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
        if not sends_credentials(version, "bearer", upstream, realm, say=say):
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
        user, password = candidate.account()
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
