# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Point an actuated microVM's Docker, buildkit and containerd at the registry mirrors of its host, in one step.

Usage: sudo python3 registry-mirror-client.py [--registry HOST[=PORT] ...] [--bridge auto|ADDRESS] [--ca FILE]
                                              [--root DIR] [--dry-run] [--no-docker] [--no-buildkit]
                                              [--no-containerd] [--github-output FILE] [--timeout SECONDS]
                                              [--fail-on-error]

The host's mirrors (actuated.registry's role, one per upstream registry) listen on the VM bridge address of the host,
192.168.128.1 (firecracker) or 192.168.129.1 (cloud-hypervisor), with actuated's TLS certificate. Without --registry
every port of CATALOGUE is probed (GET /v2/, in parallel) and the mirrors that answer are configured; when none
answers nothing changes. Every client keeps falling back to the upstream registry when the mirror fails.

A mirror never breaks a build: whatever is wrong with the mirrors (down, a certificate that is expired or does not
verify, no CA) or with the VM's own client files (a daemon.json that is not a JSON object, a hosts.toml someone else
wrote, a buildkitd.toml it cannot safely edit) is a GitHub warning annotation (one ``::warning::`` line on stdout)
saying what the clients do instead; that mirror or client is left as it was, the others are configured, and the exit
status is 0. --fail-on-error turns those into errors (status 1, or 2 for a file it will not edit; nothing changed).
Mistakes in the command line itself (an unknown registry, a --ca that is not a certificate, a bad --bridge) are
always errors (status 2, an ``::error::`` line on stderr).

Everything is computed and validated before the first file is written, and each file is written atomically (a
temporary file in the same directory, then a rename, keeping the mode of the file it replaces). A second identical run
changes nothing.

Standard library only, Python 3.8 or later. For tests only: REGISTRY_MIRROR_CLIENT_PROC names a directory read instead
of /proc for the route table (net/route); REGISTRY_MIRROR_CLIENT_ROOT is the default of --root (the action's step
passes none; sudo drops it from the environment anyway).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import difflib
import functools
import glob
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
from typing import Callable, NamedTuple, Sequence

if sys.version_info >= (3, 11):
    import tomllib

PROG = "registry-mirror-client"
# Well-known registries: the mirror port the collection's documentation recommends for each, and the upstream that
# works both as the mirror's pull-through upstream and as containerd's fallback server.
CATALOGUE = {
    "docker.io": (5000, "https://registry-1.docker.io"),
    "ghcr.io": (5010, "https://ghcr.io"),
    "quay.io": (5020, "https://quay.io"),
    "registry.k8s.io": (5030, "https://registry.k8s.io"),
    "gcr.io": (5040, "https://gcr.io"),
    "public.ecr.aws": (5050, "https://public.ecr.aws"),
    "mcr.microsoft.com": (5060, "https://mcr.microsoft.com"),
}
# actuated's VM bridge addresses on the host, in the order they are preferred.
BRIDGES = ("192.168.128.1", "192.168.129.1")
# Where actuated's CA may be in a VM, in the order they are tried (globs allowed).
CA_CANDIDATES = (
    "/usr/local/share/ca-certificates/actuated-ca.crt",
    "/usr/local/share/ca-certificates/actuated*.crt",
    "/etc/actuated/ca.crt",
    "/var/lib/actuated/certs/ca.crt",
)
DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_CERTS_D = "/etc/docker/certs.d"
DOCKER_PID = "/var/run/docker.pid"
BUILDKITD_TOML = "/etc/buildkit/buildkitd.toml"
BUILDKIT_CA = "/etc/buildkit/certs/actuated-ca.crt"
CONTAINERD_CERTS_D = "/etc/containerd/certs.d"
CA_COPY_NAME = "actuated-ca.crt"
BEGIN = "# BEGIN actuated.registry mirrors"
END = "# END actuated.registry mirrors"
# The first line of every hosts.toml this script writes; a hosts.toml without it belongs to someone else.
HOSTS_MARKER = "# Written by registry-mirror-client (actuated.registry): replaced on each run."
HOSTS_MARKER_PREFIX = "# Written by registry-mirror-client"
PROC_ENV = "REGISTRY_MIRROR_CLIENT_PROC"
ROOT_ENV = "REGISTRY_MIRROR_CLIENT_ROOT"
# Whether this Python parses TOML (tomllib, 3.11+). Without it buildkitd.toml is checked line by line, and any registry
# table of the user's refuses the edit, since the mirrors' tables could repeat it (tests turn it off).
TOML_PARSER = sys.version_info >= (3, 11)
REGISTRY_STATUSES = (200, 401)
NEW_FILE_MODE = 0o644
RTF_UP = 0x1
RTF_GATEWAY = 0x2
LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class Failure(Exception):
    """A problem the user can act on: printed without a traceback; the exit status is ``code``. About the mirrors or
    the VM it is a warning unless --fail-on-error (Problems.report)."""

    code = 1


class BadInput(Failure):
    """The command line is wrong (a typo in the workflow): always an error, whatever --fail-on-error says."""

    code = 2


class Refused(Failure):
    """A client's file is not what this script can safely change: that client is left as it was."""

    code = 2


def annotation(kind: str, message: str) -> str:
    """MESSAGE as a GitHub Actions workflow command (``::warning::``, ``::error::``): one line, its data escaped."""
    data = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{kind}::{data}"


class Problems:
    """What is wrong with the mirrors or the VM's files. Each is a warning annotation naming what the clients do
    instead (the run goes on without that mirror or client), or, with --fail-on-error, stops the run: the first one
    comes before any file is written."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.warnings = 0

    def report(self, problem: Failure, consequence: str) -> None:
        if self.fail:
            raise problem
        self.warnings += 1
        print(annotation("warning", f"{PROG}: {problem}. {consequence}"), flush=True)


class Registry(NamedTuple):
    """A registry to configure: its name, its mirror's port on the bridge, its upstream (containerd's server)."""

    name: str
    port: int
    upstream: str


class Route(NamedTuple):
    """One line of /proc/net/route."""

    iface: str
    destination: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    flags: int
    mask: ipaddress.IPv4Address


class Answer(NamedTuple):
    """What a mirror port said to GET /v2/: its HTTP status, or why there is none."""

    status: int | None
    error: str


class Found(NamedTuple):
    """The bridge, the registries to configure and what each of their mirror ports said to GET /v2/."""

    bridge: str
    registries: list[Registry]
    answers: dict[int, Answer]


class CaChoice(NamedTuple):
    """The CA clients will trust the mirrors with: a file's PEM (copied next to each client's configuration), or
    None when the system trust store verifies the mirrors."""

    source: str | None
    pem: bytes | None
    why: str


class FileChange(NamedTuple):
    """A file this run manages: its path (under --root), its current content (None: absent) and its new one."""

    path: str
    old: bytes | None
    new: bytes

    @property
    def changed(self) -> bool:
        return self.old != self.new


# ---------------------------------------------------------------------------------------------------- command line

def parse_port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadInput(f"{what}: the port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def valid_host(name: str) -> bool:
    """A registry host name as clients spell it: lower-case DNS labels, optionally ``:PORT``."""
    host, sep, port = name.partition(":")
    if sep and not (port.isdigit() and 1 <= int(port) <= 65535):
        return False
    return 0 < len(host) <= 253 and all(LABEL.match(label) for label in host.split("."))


def parse_registries(values: Sequence[str]) -> list[Registry]:
    """``--registry`` values (each may hold several, separated by commas or spaces) as Registries, in the order given.
    A catalogue registry takes its catalogue port unless ``=PORT`` is given; another registry needs ``=PORT``."""
    registries: list[Registry] = []
    for value in values:
        items = [item for item in re.split(r"[\s,]+", value) if item]
        if not items:
            raise BadInput("--registry: empty value")
        for item in items:
            name, sep, port_text = item.partition("=")
            name = name.lower()
            if not valid_host(name):
                raise BadInput(f"--registry {item}: {name!r} is not a registry host name "
                               "(like ghcr.io or registry.example.com:8443)")
            if sep:
                port = parse_port(port_text, f"--registry {item}")
                upstream = CATALOGUE[name][1] if name in CATALOGUE else f"https://{name}"
            elif name in CATALOGUE:
                port, upstream = CATALOGUE[name]
            else:
                known = ", ".join(CATALOGUE)
                raise BadInput(f"--registry {item}: unknown registry; known registries: {known}. "
                               f"For another registry give its mirror's port: --registry {name}=PORT")
            registries.append(Registry(name, port, upstream))
    unique: dict[str, Registry] = {}
    for registry in registries:
        seen = unique.setdefault(registry.name, registry)
        if seen.port != registry.port:
            raise BadInput(f"--registry: {registry.name} is given with two ports, {seen.port} and {registry.port}")
    by_port: dict[int, str] = {}
    for registry in unique.values():
        other = by_port.setdefault(registry.port, registry.name)
        if other != registry.name:
            raise BadInput(f"--registry: {other} and {registry.name} cannot share the mirror port {registry.port} "
                           "(a mirror serves one upstream registry)")
    return list(unique.values())


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    catalogue = "\n".join(f"  {name:<18} {port:<5} {upstream}" for name, (port, upstream) in CATALOGUE.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Configure this VM's Docker, buildkit and containerd to pull through the registry mirrors of its "
                    "actuated host (actuated.registry), falling back to the upstream registries when a mirror fails.",
        epilog=f"known registries (name, mirror port, upstream):\n{catalogue}\n\n"
               "files written (under --root):\n"
               f"  {DAEMON_JSON} (docker.io only; merged) and {DOCKER_CERTS_D}/BRIDGE:PORT/ca.crt\n"
               f"  {BUILDKITD_TOML} (only the lines between '{BEGIN}'\n"
               f"    and '{END}') and {BUILDKIT_CA}\n"
               f"  {CONTAINERD_CERTS_D}/REGISTRY/hosts.toml and {CA_COPY_NAME} beside it\n\n"
               "a mirror that does not answer or cannot be verified, or a client's file that cannot be changed\n"
               "safely, is a warning (::warning::, that mirror or client left as it was) unless --fail-on-error.\n\n"
               "exit status: 0 done (also with warnings), 2 bad usage (nothing changed), and with --fail-on-error\n"
               "2 a file that cannot be changed safely, 1 any other failure (nothing changed).",
    )
    parser.add_argument(
        "--registry", action="append", default=[], metavar="HOST[=PORT]",
        help="configure this registry (repeatable; commas or spaces separate several). A known registry uses its "
             "catalogue port unless =PORT is given; any other registry needs =PORT. Without --registry every "
             "catalogue port is probed on the bridge and the mirrors that answer are configured.")
    parser.add_argument(
        "--bridge", default="auto", metavar="auto|ADDRESS",
        help="the host's bridge address (IPv4). auto (the default) takes the default gateway when it is "
             f"{' or '.join(BRIDGES)}, else the one this VM is directly connected to (both: the first whose mirror "
             "accepts a connection).")
    parser.add_argument(
        "--ca", metavar="FILE",
        help="actuated's CA certificate (PEM). Default: the first of "
             f"{', '.join(CA_CANDIDATES)} that verifies the mirror's certificate; none, when the system trust store "
             "verifies it.")
    parser.add_argument("--root", default=os.environ.get(ROOT_ENV) or "/", metavar="DIR",
                        help="the file system root the paths are under (default /; for tests and images)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would change (unified diffs) and change nothing")
    parser.add_argument("--no-docker", action="store_true",
                        help=f"leave Docker alone ({DAEMON_JSON}, {DOCKER_CERTS_D})")
    parser.add_argument("--no-buildkit", action="store_true", help=f"leave buildkit alone ({BUILDKITD_TOML})")
    parser.add_argument("--no-containerd", action="store_true",
                        help=f"leave containerd, KinD and nerdctl alone ({CONTAINERD_CERTS_D})")
    parser.add_argument("--github-output", metavar="FILE",
                        help="append buildkitd-config=PATH and registries=NAME,... to FILE (a GitHub Actions "
                             "$GITHUB_OUTPUT)")
    parser.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                        help="how long to wait for each mirror's answer (default 2)")
    parser.add_argument("--fail-on-error", action="store_true",
                        help="fail (nothing changed) instead of warning when a mirror does not answer, or cannot be "
                             "verified, or a client's file cannot be changed safely; the default leaves that mirror "
                             "or client as it was and exits 0")
    args = parser.parse_args(argv)
    if not 0 < args.timeout <= 60:
        parser.error("--timeout: give a number of seconds above 0 and up to 60")
    return args


def under(root: str, path: str) -> str:
    """PATH (absolute, as the VM sees it) under ROOT."""
    return os.path.join(root, path.lstrip("/"))


# ---------------------------------------------------------------------------------------------------------- bridge

def parse_routes(text: str) -> list[Route]:
    """The routes of /proc/net/route's text. Addresses are the kernel's network-order words printed in host order,
    so they are packed back in host order."""
    routes = []
    lines = text.splitlines()
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, mask = (ipaddress.IPv4Address(struct.pack("=I", int(fields[i], 16))) for i in (1, 2, 7))
            routes.append(Route(fields[0], dest, gateway, int(fields[3], 16), mask))
        except (ValueError, struct.error):
            continue
    return routes


def bridge_candidates(routes: Sequence[Route]) -> tuple[list[str], str]:
    """The bridge addresses this VM may use, and why: the default gateway when it is one of BRIDGES, else those of
    BRIDGES in a directly connected network."""
    for route in routes:
        default = int(route.destination) == 0 and int(route.mask) == 0
        if default and route.flags & RTF_UP and route.flags & RTF_GATEWAY and str(route.gateway) in BRIDGES:
            return [str(route.gateway)], "the default gateway"
    connected = []
    for bridge in BRIDGES:
        address = int(ipaddress.IPv4Address(bridge))
        for route in routes:
            direct = route.flags & RTF_UP and not route.flags & RTF_GATEWAY and int(route.mask) != 0
            if direct and address & int(route.mask) == int(route.destination):
                connected.append(bridge)
                break
    return connected, f"directly connected ({', '.join(connected)})" if connected else ""


def tcp_accepts(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_bridge(routes: Sequence[Route], ports: Sequence[int],
                  accepts: Callable[[str, int], bool]) -> tuple[str, str]:
    """The bridge address and why. When several qualify, the first (in BRIDGES order) on which one of PORTS accepts a
    TCP connection (ACCEPTS tells), or the first of all when none does."""
    candidates, why = bridge_candidates(routes)
    if not candidates:
        gateways = sorted({str(r.gateway) for r in routes if int(r.destination) == 0 and int(r.mask) == 0})
        seen = f"default gateway {', '.join(gateways)}" if gateways else "no default gateway"
        raise Failure(f"cannot find actuated's bridge: {seen}, and no route to {' or '.join(BRIDGES)} "
                      "(this is not an actuated VM?): pass --bridge ADDRESS")
    if len(candidates) == 1:
        return candidates[0], why
    pairs = [(bridge, port) for bridge in candidates for port in ports]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(pairs)))) as pool:
        results = dict(zip(pairs, pool.map(lambda pair: accepts(*pair), pairs)))
    for bridge in candidates:
        accepting = [str(port) for port in ports if results[(bridge, port)]]
        if accepting:
            return bridge, f"{why}; accepts connections on port {', '.join(accepting)}"
    port_list = ", ".join(str(port) for port in ports)
    return candidates[0], f"{why}; none accepts a connection on port {port_list}: the first"


def route_table() -> str:
    proc = os.environ.get(PROC_ENV) or "/proc"
    path = os.path.join(proc, "net", "route")
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        raise Failure(f"cannot read the route table {path} ({exc.strerror}): pass --bridge ADDRESS") from None


def parse_bridge(text: str) -> str:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise BadInput(f"--bridge: {text!r} is neither auto nor an IPv4 address") from None
    if address.is_unspecified or address.is_multicast:
        raise BadInput(f"--bridge: {text} is not an address a mirror can listen on")
    return str(address)


# ----------------------------------------------------------------------------------------------------- TLS probes

def describe_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (exc.verify_message or str(exc)).rstrip(".")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def probe(address: str, port: int, timeout: float) -> Answer:
    """GET https://ADDRESS:PORT/v2/ without verifying the certificate (which CA verifies it is decided later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(address, port, timeout=timeout, context=context)
    try:
        conn.request("GET", "/v2/", headers={"User-Agent": PROG})
        response = conn.getresponse()
        response.read()
        return Answer(response.status, "")
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, describe_error(exc, timeout))
    finally:
        conn.close()


def probe_all(address: str, ports: Sequence[int], timeout: float) -> dict[int, Answer]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
        return dict(zip(ports, pool.map(lambda port: probe(address, port, timeout), ports)))


def trust_context(pem: bytes | None) -> ssl.SSLContext:
    """A client context trusting PEM (or the system trust store), verifying the chain and the address like Docker,
    buildkit and containerd (Go) do: without Python's stricter X.509 checks."""
    context = ssl.create_default_context(cadata=pem.decode("ascii")) if pem else ssl.create_default_context()
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def verify(address: str, port: int, context: ssl.SSLContext, timeout: float) -> str:
    """Why the mirror's certificate does not verify with CONTEXT for ADDRESS ("" when it does)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=address):
            return ""
    except (OSError, ValueError) as exc:
        return describe_error(exc, timeout)


def verify_ports(address: str, ports: Sequence[int], pem: bytes | None, timeout: float) -> dict[int, str]:
    """For each of PORTS, why its mirror's certificate does not verify with PEM ("" when it does)."""
    context = trust_context(pem)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
        return dict(zip(ports, pool.map(lambda port: verify(address, port, context, timeout), ports)))


def read_ca(path: str, what: str) -> bytes:
    """The PEM certificate(s) of PATH, checked: no private key, at least one certificate OpenSSL can load."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise BadInput(f"{what} {path}: cannot read it ({exc.strerror})") from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BadInput(f"{what} {path} is not a PEM certificate (not text)") from None
    if "PRIVATE KEY-----" in text:
        raise BadInput(f"{what} {path} holds a private key: give the CA's certificate only")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise BadInput(f"{what} {path} is not a PEM certificate (no BEGIN CERTIFICATE line)")
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise BadInput(f"{what} {path} is not a valid PEM certificate ({exc})") from None
    return data if data.endswith(b"\n") else data + b"\n"


def ca_candidates(root: str) -> list[str]:
    """The candidate CA files that exist under ROOT, in CA_CANDIDATES order, each once."""
    found: list[str] = []
    for pattern in CA_CANDIDATES:
        for path in sorted(glob.glob(under(root, pattern))):
            if os.path.isfile(path) and path not in found:
                found.append(path)
    return found


def ca_trusts(args: argparse.Namespace, given: bytes | None) -> list[tuple[str | None, bytes | None]]:
    """--ca when given, else the candidate CA files found in the VM (those that are not a certificate skipped)."""
    if given is not None:
        return [(args.ca, given)]
    trusts: list[tuple[str | None, bytes | None]] = []
    for candidate in ca_candidates(args.root):
        try:
            trusts.append((candidate, read_ca(candidate, "CA candidate")))
        except BadInput as exc:
            print(f"skipped: {exc}")
    return trusts


def choose_ca(args: argparse.Namespace, bridge: str, answering: Sequence[int],
              given: bytes | None) -> tuple[CaChoice | None, dict[int, str]]:
    """The CA to trust the mirrors with, and for each answering mirror's port why it does not verify that mirror
    ("" when it does). Only --ca is tried when given; else the candidates found in the VM, then the system trust store
    (no CA file then): the first that verifies every answering mirror, else the one that verifies most of them. When no
    mirror answers: --ca, else the first candidate found. None when nothing verifies any answering mirror, or when no
    mirror answers and there is no CA file."""
    trusts = ca_trusts(args, given)
    how = "--ca" if given is not None else "found"
    if not answering:
        if trusts:
            return CaChoice(trusts[0][0], trusts[0][1], f"{how} (not verified: no mirror answers)"), {}
        return None, {}
    if given is None:
        trusts.append((None, None))
    tried: list[tuple[str, dict[int, str]]] = []
    best: CaChoice | None = None
    best_reasons: dict[int, str] = {}
    most = 0
    for path, pem in trusts:
        reasons = verify_ports(bridge, answering, pem, args.timeout)
        verified = [port for port in answering if not reasons[port]]
        mirrors = ", ".join(f"{bridge}:{port}" for port in verified)
        if path is None:
            choice = CaChoice(None, None, f"the system trust store verifies {mirrors}: no CA files written")
        else:
            choice = CaChoice(path, pem, f"{how}, verifies {mirrors}")
        if len(verified) == len(answering):
            return choice, reasons
        tried.append((path or "the system trust store", reasons))
        if len(verified) > most:
            best, best_reasons, most = choice, reasons, len(verified)
    # Each mirror the choice does not verify: why (what --ca said, else what every CA tried said).
    why_not = {port: "" for port in answering if best is not None and not best_reasons[port]}
    for port in answering:
        if port not in why_not:
            why_not[port] = tried[0][1][port] if given is not None else \
                "tried " + "; ".join(f"{label} ({reasons[port]})" for label, reasons in tried)
    return best, why_not


# ---------------------------------------------------------------------------------------------- file contents

def toml_string(value: str) -> str:
    """VALUE as a TOML basic string."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for char in value:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise Failure(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise Failure(f"cannot read {path} ({exc.strerror})") from None


def merged_daemon_json(path: str, old: bytes | None, mirror: str) -> bytes:
    """daemon.json with MIRROR first in registry-mirrors; every other key and mirror kept. OLD unchanged when it
    already says so."""
    config: object = {}
    if old is not None and old.strip():
        def no_constant(name: str) -> object:
            raise ValueError(f"{name} is not JSON")
        try:
            config = json.loads(old.decode("utf-8"), parse_constant=no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused(f"{path} is not valid JSON ({exc}): fix it, or pass --no-docker") from None
    if not isinstance(config, dict):
        raise Refused(f"{path} must hold a JSON object, not {type(config).__name__}: fix it, or pass --no-docker")
    mirrors = config.get("registry-mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(entry, str) for entry in mirrors):
        raise Refused(f"{path}: registry-mirrors must be a list of strings (URLs): fix it, or pass --no-docker")
    wanted = [mirror]
    for entry in mirrors:
        if entry.rstrip("/") != mirror and entry not in wanted:
            wanted.append(entry)
    if old is not None and wanted == mirrors:
        return old
    config["registry-mirrors"] = wanted
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def buildkit_block(bridge: str, registries: Sequence[Registry], ca_path: str | None) -> str:
    lines = [BEGIN, "# Written by registry-mirror-client (actuated.registry): replaced on each run, edit outside it."]
    for registry in registries:
        lines += [f"[registry.{toml_string(registry.name)}]",
                  f"  mirrors = [{toml_string(f'{bridge}:{registry.port}')}]", ""]
    if ca_path:
        for registry in registries:
            lines += [f"[registry.{toml_string(f'{bridge}:{registry.port}')}]", f"  ca = [{toml_string(ca_path)}]", ""]
    if lines[-1] == "":
        lines.pop()
    return "\n".join([*lines, END]) + "\n"


TABLE = re.compile(r"""^\s*\[\[?\s*registry\s*\.\s*("(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)""")
# Any table of the registry key: [registry], [registry."..."], [[registry."...".keypair]], ["registry"].
ANY_REGISTRY_TABLE = re.compile(r"""^\s*\[\[?\s*(?:registry|"registry"|'registry')\s*[.\]]""")
ROOT_REGISTRY_KEY = re.compile(r"""^\s*(?:registry|"registry"|'registry')\s*[.=]""")


def table_key(token: str) -> str:
    if token.startswith('"'):
        try:
            return str(json.loads(token))
        except ValueError:
            return token[1:-1]
    if token.startswith("'"):
        return token[1:-1]
    return token


def check_buildkit_outside(path: str, outside: Sequence[str], names: set[str]) -> None:
    """Refuse a registry table for one of NAMES outside our block, and a `registry` key of the root table."""
    in_root = True
    for line in outside:
        if line.lstrip().startswith("["):
            in_root = False
        found = TABLE.match(line)
        if found and table_key(found.group(1)) in names:
            raise Refused(f"{path}: [registry.{found.group(1)}] outside the lines '{BEGIN}' ... '{END}' conflicts "
                          "with the mirrors this script configures: remove that table, or pass --no-buildkit")
        if in_root and ROOT_REGISTRY_KEY.match(line):
            raise Refused(f"{path}: {line.strip()!r} sets the registry key outside the lines '{BEGIN}' ... '{END}' "
                          "and outside a [registry.\"...\"] table: write it as tables, or pass --no-buildkit")


def buildkit_toml(path: str, old: bytes | None, block: str, expected: dict[str, dict[str, list[str]]]) -> bytes:
    """buildkitd.toml with our block put in the place of the previous one (else appended); the rest kept."""
    try:
        text = old.decode("utf-8") if old is not None else ""
    except UnicodeDecodeError:
        raise Refused(f"{path} is not UTF-8 text: fix it, or pass --no-buildkit") from None
    if TOML_PARSER and text:
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise Refused(f"{path} is not valid TOML ({exc}): fix it, or pass --no-buildkit") from None
    before, after = outside_block(path, text)
    check_buildkit_outside(path, before + after, set(expected))
    if not TOML_PARSER:
        check_buildkit_unparsed(path, before + after)
    new = "".join(before) + block + "".join(after)
    if TOML_PARSER:
        check_buildkit_parsed(path, new, expected)
    return new.encode("utf-8")


def outside_block(path: str, text: str) -> tuple[list[str], list[str]]:
    """The lines of TEXT before and after our block (all of them before it, and a blank line, when it has none)."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) > 1 or len(ends) > 1 or len(begins) != len(ends) or (begins and ends[0] < begins[0]):
        raise Refused(f"{path}: the lines '{BEGIN}' and '{END}' must appear once each, in that order: fix the file")
    if begins:
        before, after = lines[:begins[0]], lines[ends[0] + 1:]
    else:
        before, after = list(lines), []
        if before and not before[-1].endswith("\n"):
            before[-1] += "\n"
        if before and before[-1].strip():
            before.append("\n")
    for line in after:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            if not stripped.startswith("["):
                raise Refused(f"{path}: the line {stripped!r} after '{END}' would belong to the block's last table: "
                              "move it above the block, or pass --no-buildkit")
            break
    return before, after


def check_buildkit_parsed(path: str, new: str, expected: dict[str, dict[str, list[str]]]) -> None:
    """The final text parses (tomllib, Python 3.11+), and our registry tables read what we wrote."""
    try:
        parsed = tomllib.loads(new)
    except tomllib.TOMLDecodeError as exc:
        raise Refused(f"{path} would not be valid TOML with the mirrors ({exc}): fix it, or pass --no-buildkit") \
            from None
    tables = parsed.get("registry", {})
    for name, table in expected.items():
        if tables.get(name) != table:
            raise Refused(f"{path}: [registry.{toml_string(name)}] would read {tables.get(name)!r} instead of "
                          f"{table!r}: fix the file, or pass --no-buildkit")


def check_buildkit_unparsed(path: str, outside: Sequence[str]) -> None:
    """Without a TOML parser (Python 3.8-3.10): refuse any registry table outside our block, which the mirrors'
    tables could repeat or redefine (invalid TOML that buildkit would not start with)."""
    for line in outside:
        if ANY_REGISTRY_TABLE.match(line):
            version = ".".join(str(part) for part in sys.version_info[:2])
            raise Refused(f"{path}: {line.strip()!r} outside the lines '{BEGIN}' ... '{END}': without a TOML parser "
                          f"(Python {version}; tomllib needs 3.11) this script cannot tell whether the mirrors' "
                          "registry tables would repeat it, which is invalid TOML: remove that table, or pass "
                          "--no-buildkit")


def hosts_toml(registry: Registry, bridge: str, ca_path: str | None) -> bytes:
    lines = [HOSTS_MARKER,
             "# containerd tries the mirror first, then the server.",
             f"server = {toml_string(registry.upstream)}",
             "",
             f"[host.{toml_string(f'https://{bridge}:{registry.port}')}]",
             '  capabilities = ["pull", "resolve"]']
    if ca_path:
        lines.append(f"  ca = {toml_string(ca_path)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


class Part:
    """The files of one client (containerd: for one registry), computed and validated before anything is written, and
    written together or not at all."""

    def __init__(self, root: str, client: str, label: str, registries: Sequence[str]) -> None:
        self.root = root
        self.client = client
        self.label = label
        self.registries = list(registries)
        self.changes: list[FileChange] = []

    def add(self, vm_path: str, new: bytes | Callable[[str, bytes | None], bytes]) -> None:
        """Manage VM_PATH: its new content is NEW, or what NEW makes of (path, current content), which may refuse."""
        path = under(self.root, vm_path)
        old = read_file(path)
        self.changes.append(FileChange(path, old, new if isinstance(new, bytes) else new(path, old)))

    def check_writable(self) -> None:
        """Each changed file's directory exists or can be made, and can be written (as the user running this)."""
        for change in self.changes:
            if not change.changed:
                continue
            parent = os.path.dirname(change.path)
            while not os.path.lexists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent):
                raise Failure(f"cannot write {change.path}: {parent} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise Failure(f"cannot write {change.path}: {parent} is not writable (run as root: sudo)")


def plan_files(args: argparse.Namespace, bridge: str, registries: Sequence[Registry], ca: CaChoice,
               problems: Problems) -> list[Part]:
    """Each client's part. A part that cannot be made safely is reported, and that client left as it was."""
    parts: list[Part] = []
    root, pem = args.root, ca.pem

    def plan(part: Part, fill: Callable[[Part], None], instead: str) -> None:
        try:
            fill(part)
            part.check_writable()
        except Failure as exc:
            problems.report(exc, f"{part.label} left as it was (nothing written for it): {instead}")
            return
        parts.append(part)

    if not args.no_docker:
        docker = next((r for r in registries if r.name == "docker.io"), None)

        def fill_docker(part: Part) -> None:
            if pem:
                for registry in registries:
                    part.add(f"{DOCKER_CERTS_D}/{bridge}:{registry.port}/ca.crt", pem)
            if docker:
                mirror = f"https://{bridge}:{docker.port}"
                part.add(DAEMON_JSON, lambda path, old: merged_daemon_json(path, old, mirror))

        plan(Part(root, "docker", "Docker", ["docker.io"] if docker else []), fill_docker,
             "it pulls from the upstream registries as it did, not through this mirror")
    if not args.no_buildkit:
        ca_path = BUILDKIT_CA if pem else None
        expected: dict[str, dict[str, list[str]]] = {r.name: {"mirrors": [f"{bridge}:{r.port}"]} for r in registries}
        if ca_path:
            expected.update({f"{bridge}:{r.port}": {"ca": [ca_path]} for r in registries})
        block = buildkit_block(bridge, registries, ca_path)

        def fill_buildkit(part: Part) -> None:
            if pem:
                part.add(BUILDKIT_CA, pem)
            part.add(BUILDKITD_TOML, lambda path, old: buildkit_toml(path, old, block, expected))

        plan(Part(root, "buildkit", "buildkit", [r.name for r in registries]), fill_buildkit,
             "it pulls from the upstream registries, not through the mirrors (the buildkitd-config output is empty)")
    if not args.no_containerd:
        for registry in registries:
            plan(Part(root, "containerd", f"containerd for {registry.name}", [registry.name]),
                 functools.partial(fill_containerd, registry=registry, bridge=bridge, pem=pem),
                 f"it pulls {registry.name} as that directory says, or from {registry.upstream}, not through the "
                 "mirror")
    return parts


def fill_containerd(part: Part, registry: Registry, bridge: str, pem: bytes | None) -> None:
    directory = f"{CONTAINERD_CERTS_D}/{registry.name}"
    ca_path = f"{directory}/{CA_COPY_NAME}" if pem else None
    if pem:
        part.add(f"{directory}/{CA_COPY_NAME}", pem)
    part.add(f"{directory}/hosts.toml", functools.partial(own_hosts_toml, new=hosts_toml(registry, bridge, ca_path)))


def own_hosts_toml(path: str, old: bytes | None, new: bytes) -> bytes:
    if old is not None and not old.startswith(HOSTS_MARKER_PREFIX.encode()):
        raise Refused(f"{path} exists and was not written by this script: remove it (this script writes one that "
                      "tries the mirror, then the registry), or pass --no-containerd")
    return new


# ------------------------------------------------------------------------------------------------------- writing

def write_atomic(path: str, data: bytes) -> None:
    """Write DATA to PATH through a temporary file in the same directory and a rename, keeping PATH's mode (and
    owner, as root); a new file gets NEW_FILE_MODE."""
    try:
        current: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        current = None
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), current.st_mode & 0o7777 if current else NEW_FILE_MODE)
            if current and os.geteuid() == 0:
                os.fchown(handle.fileno(), current.st_uid, current.st_gid)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def make_dirs(directory: str) -> list[str]:
    """Create DIRECTORY and its missing parents (0755); the ones created, outermost first."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
    return list(reversed(missing))


def apply(changes: Sequence[FileChange]) -> None:
    """Write every changed file; on a failure put back those already written and remove the directories made."""
    written: list[FileChange] = []
    made: list[str] = []
    current = ""
    try:
        for change in changes:
            current = change.path
            made += make_dirs(os.path.dirname(change.path))
            write_atomic(change.path, change.new)
            written.append(change)
    except OSError as exc:
        for change in reversed(written):
            with contextlib.suppress(OSError):
                if change.old is None:
                    os.unlink(change.path)
                else:
                    write_atomic(change.path, change.old)
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise Failure(f"cannot write {current} ({exc.strerror or exc}): the files written before it were put back") \
            from None


def show_diff(change: FileChange) -> str:
    old = (change.old or b"").decode("utf-8", errors="replace").splitlines(keepends=True)
    new = change.new.decode("utf-8", errors="replace").splitlines(keepends=True)
    fromfile = change.path if change.old is not None else "/dev/null"
    lines = list(difflib.unified_diff(old, new, fromfile=fromfile, tofile=change.path))
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def is_dockerd(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            return handle.read().strip() == "dockerd"
    except OSError:
        return False


def reload_docker(root: str) -> str:
    """Make dockerd load registry-mirrors (live-reloadable): systemctl reload when systemd runs it (only for the
    running system, --root /), else SIGHUP to the pid of /var/run/docker.pid."""
    if root == "/" and shutil.which("systemctl"):
        active = subprocess.run(["systemctl", "is-active", "--quiet", "docker"], check=False,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if active.returncode == 0:
            done = subprocess.run(["systemctl", "reload", "docker"], check=False, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
            if done.returncode != 0:
                output = done.stdout.decode(errors="replace").strip()
                raise Failure(f"systemctl reload docker failed ({output}): restart docker to use the mirror")
            return "docker: reloaded (systemctl reload docker)"
    pid_file = under(root, DOCKER_PID)
    try:
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        return f"docker: not running (no {DOCKER_PID}): it reads {DAEMON_JSON} when it starts"
    if pid <= 1 or (root == "/" and not is_dockerd(pid)):
        return f"docker: not running ({DOCKER_PID} names pid {pid}, not dockerd): it reads {DAEMON_JSON} when it starts"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"docker: not running (pid {pid} of {DOCKER_PID} is gone): it reads {DAEMON_JSON} when it starts"
    except PermissionError:
        raise Failure(f"cannot signal dockerd (pid {pid}): run as root, or restart docker to use the mirror") from None
    return f"docker: sent SIGHUP to dockerd (pid {pid}) to load registry-mirrors"


def github_output(path: str, outputs: dict[str, str], dry_run: bool) -> None:
    lines = []
    for key, value in outputs.items():
        if "\n" in value or "\r" in value:
            raise Failure(f"--github-output: {key} would span lines: {value!r}")
        lines.append(f"{key}={value}\n")
    if dry_run:
        print(f"would append to {path}: " + " ".join(line.strip() for line in lines))
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(lines)
    except OSError as exc:
        raise Failure(f"--github-output {path}: cannot append ({exc.strerror})") from None


# ---------------------------------------------------------------------------------------------------------- main

NOTHING = "nothing configured: Docker, buildkit and containerd pull from the upstream registries, as without mirrors"


def find_mirrors(args: argparse.Namespace, requested: Sequence[Registry], bridge_given: str | None,
                 problems: Problems) -> Found | None:
    """The bridge, the registries to configure (those requested, else those whose mirror answers) and what each
    mirror port said; None (reported) when there is no bridge."""
    ports = [r.port for r in requested] or [port for port, _upstream in CATALOGUE.values()]
    if bridge_given is None:
        try:
            routes = parse_routes(route_table())
            bridge, why = choose_bridge(routes, ports, lambda address, port: tcp_accepts(address, port, args.timeout))
        except Failure as exc:
            problems.report(exc, NOTHING)
            return None
    else:
        bridge, why = bridge_given, "--bridge"
    print(f"bridge: {bridge} ({why})")
    answers = probe_all(bridge, ports, args.timeout)
    answering = [port for port in ports if answers[port].status in REGISTRY_STATUSES]
    registries = list(requested)
    if not requested:
        registries = [Registry(name, port, upstream) for name, (port, upstream) in CATALOGUE.items()
                      if port in answering]
        silent = [f"{name} ({port}: {answers[port].error or f'HTTP {answers[port].status}'})"
                  for name, (port, _upstream) in CATALOGUE.items() if port not in answering]
        if silent:
            print(f"no mirror for: {', '.join(silent)}")
    for registry in registries:
        answer = answers[registry.port]
        if answer.status in REGISTRY_STATUSES:
            state = f"answers (HTTP {answer.status})"
        elif answer.status is not None:
            state = f"answers HTTP {answer.status}, not like a registry; clients fall back to {registry.upstream}"
        else:
            state = f"does not answer ({answer.error}); clients fall back to {registry.upstream} until it does"
        print(f"mirror: {registry.name} -> {bridge}:{registry.port} {state}")
    return Found(bridge, registries, answers)


def usable(args: argparse.Namespace, found: Found, ca: CaChoice | None, why_not: dict[int, str],
           problems: Problems) -> list[Registry]:
    """The registries to configure: those whose mirror answers and the CA verifies, and, when there is a CA, those
    whose mirror does not answer (the clients fall back to the upstream until it does). Each other one is reported."""
    chosen: list[Registry] = []
    bridge, registries, answers = found
    for registry in registries:
        mirror = f"the mirror of {registry.name} ({bridge}:{registry.port})"
        not_configured = f"{registry.name} not configured: clients pull from {registry.upstream}, as without a mirror"
        answer = answers[registry.port]
        if answer.status in REGISTRY_STATUSES:
            reason = why_not[registry.port]
            if not reason:
                chosen.append(registry)
            elif args.ca:
                problems.report(Failure(f"--ca {args.ca} does not verify the certificate of {mirror}: {reason}"),
                                not_configured)
            else:
                problems.report(Failure(f"no CA verifies the certificate of {mirror} ({reason}; looked for "
                                        f"{', '.join(CA_CANDIDATES)}): pass --ca FILE with actuated's CA"),
                                not_configured)
            continue
        if answer.status is None:
            state = f"does not answer ({answer.error})"
        else:
            state = f"answers HTTP {answer.status}, not like a registry"
        if ca is not None:
            problems.report(Failure(f"{mirror} {state}"),
                            f"{registry.name} configured anyway: clients fall back to {registry.upstream} until it "
                            "answers")
            chosen.append(registry)
        elif any(why_not.values()):
            problems.report(Failure(f"{mirror} {state}, and no CA verifies this host's other mirrors"),
                            not_configured)
        else:
            problems.report(Failure(f"{mirror} {state}, and no CA found (looked for {', '.join(CA_CANDIDATES)} "
                                    f"under {args.root}) to configure it with: pass --ca FILE"), not_configured)
    return chosen


def carry_out(parts: Sequence[Part], root: str, dry_run: bool, problems: Problems) -> list[Part]:
    """Show (--dry-run) or write the parts' changes; reload dockerd when daemon.json changed. The parts in place."""
    changes = [change for part in parts for change in part.changes]
    changed = [change for change in changes if change.changed]
    for change in changes:
        state = ("would change" if dry_run else "changed") if change.changed else "unchanged"
        print(f"{state}: {change.path}")
    if dry_run:
        for change in changed:
            sys.stdout.write(show_diff(change))
        print(f"dry run: {len(changed)} file(s) would change, nothing changed")
        return list(parts)
    try:
        apply(changed)
    except Failure as exc:
        problems.report(exc, "nothing changed: Docker, buildkit and containerd pull as they did before")
        return []
    if not changed:
        print("nothing changed: the configuration was already in place")
    if any(change.path == under(root, DAEMON_JSON) for change in changed):
        try:
            print(reload_docker(root))
        except Failure as exc:
            problems.report(exc, "Docker uses the mirror once it restarts; until then it pulls as it did before")
    return list(parts)


def configure(args: argparse.Namespace, requested: Sequence[Registry], bridge_given: str | None,
              given: bytes | None, problems: Problems) -> tuple[list[Registry], list[Part]]:
    """The registries chosen and the parts in place."""
    found = find_mirrors(args, requested, bridge_given, problems)
    if found is None:
        return [], []
    bridge, registries, answers = found
    if not registries:
        ports = ", ".join(str(port) for port, _upstream in CATALOGUE.values())
        problems.report(Failure(f"no mirror answers on {bridge} (ports {ports})"), NOTHING)
        return [], []
    answering = [r.port for r in registries if answers[r.port].status in REGISTRY_STATUSES]
    ca, why_not = choose_ca(args, bridge, answering, given)
    if ca is not None:
        print(f"CA: {ca.source or 'none'} ({ca.why})")
    chosen = usable(args, found, ca, why_not, problems)
    if ca is None or not chosen:
        return [], []
    return chosen, carry_out(plan_files(args, bridge, chosen, ca, problems), args.root, args.dry_run, problems)


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    args.root = os.path.abspath(args.root)
    if not os.path.isdir(args.root):
        raise BadInput(f"--root {args.root}: not a directory")
    if args.no_docker and args.no_buildkit and args.no_containerd:
        raise BadInput("--no-docker, --no-buildkit and --no-containerd together leave nothing to configure")
    requested = parse_registries(args.registry)
    bridge_given = None if args.bridge == "auto" else parse_bridge(args.bridge)
    given = read_ca(args.ca, "--ca") if args.ca else None
    problems = Problems(args.fail_on_error)
    chosen, parts = configure(args, requested, bridge_given, given, problems)
    in_place = {name for part in parts for name in part.registries}
    names = [r.name for r in chosen if r.name in in_place]
    clients = {part.client for part in parts}
    outputs = {"buildkitd-config": under(args.root, BUILDKITD_TOML) if "buildkit" in clients else "",
               "registries": ",".join(names)}
    print(f"registries: {outputs['registries'] or 'none configured'}")
    if "containerd" in clients:
        print(f"hint: ctr pull needs --hosts-dir {CONTAINERD_CERTS_D}; containerd and nerdctl need config_path = "
              f"\"{CONTAINERD_CERTS_D}\" (in the registry section of config.toml)")
        print(f"hint: KinD: mount {CONTAINERD_CERTS_D} into each node (extraMounts, same path) and set "
              "config_path with containerdConfigPatches")
    if args.github_output:
        try:
            github_output(args.github_output, outputs, args.dry_run)
        except Failure as exc:
            problems.report(exc, "the step's outputs are not set (later steps see them empty)")
    if problems.warnings:
        print(f"{problems.warnings} warning(s) above: each mirror or client they name was left as it was "
              "(--fail-on-error makes them errors)")
    return 0


def main(argv: Sequence[str]) -> int:
    try:
        return run(argv)
    except Failure as exc:
        sys.stdout.flush()
        print(annotation("error", f"{PROG}: {exc}"), file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
