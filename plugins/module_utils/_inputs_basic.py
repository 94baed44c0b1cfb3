# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller (the validate_inputs action plugin) and in modules, with the Python standard library alone.

"""The basic input rules of the ``registry_mirror`` role, as pure functions: characters, types, paths, URLs, addresses,
ports and other numbers, versions, checksums, durations, accounts, secrets, unknown variables.

Nothing here touches a host, reads a file or prints a value of a secret: each rule gets a value (already templated and
of its type) and returns its problems as sentences that follow the name of the variable they are about.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import posixpath
import re
import typing as t

PREFIX = "registry_mirror_"
# Never shown in a message, whatever is wrong with them: a token pasted into the user name is as secret as the token.
SECRET_VARIABLES = frozenset(("registry_mirror_dockerhub_username", "registry_mirror_dockerhub_token"))
# The release architectures distribution publishes (the values of the role's _registry_mirror_arch_map).
RELEASE_ARCHITECTURES = ("amd64", "arm64", "armv6", "armv7", "ppc64le", "s390x", "riscv64")
ARCHITECTURE_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armv7", "armv6l": "armv6"}
# The comment of the service user the role creates: how a later run knows that it created that account.
ACCOUNT_COMMENT = "distribution registry mirror"
LOWEST_UNPRIVILEGED_PORT = 1024

# Directories that must never be the storage, configuration or download directory, nor a parent of one. A path that
# matches _SYSTEM_PATTERN (/lib, /lib64, /usr/lib32, ...) counts too.
SYSTEM_DIRECTORIES = frozenset((
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin",
    "/snap", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/include", "/usr/libexec", "/usr/local",
    "/usr/local/bin", "/usr/local/etc", "/usr/local/include", "/usr/local/lib", "/usr/local/sbin", "/usr/local/share",
    "/usr/local/src", "/usr/sbin", "/usr/share", "/usr/src", "/var", "/var/backups", "/var/cache", "/var/lib",
    "/var/local", "/var/lock", "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",
    "/etc/ansible", "/etc/ansible/facts.d", "/etc/ssl", "/etc/systemd", "/etc/systemd/system", "/run/user",
    "/var/lib/apt", "/var/lib/containerd", "/var/lib/docker", "/var/lib/dpkg", "/var/lib/systemd",
    # actuated's own
    "/etc/actuated", "/var/lib/actuated", "/var/lib/actuated/certs",
    # this role's own (binaries and helpers; the rollback snapshot, which holds the token)
    "/usr/local/lib/registry-mirror", "/usr/local/lib/registry-mirror/libexec", "/var/lib/registry-mirror",
))
_SYSTEM_PATTERN = re.compile(r"^/(usr/)?lib[^/]*$")
# Where the storage and configuration directories cannot live: the registry runs sandboxed (ProtectHome=yes,
# PrivateTmp=yes), and some trees are virtual, emptied at boot or belong to someone else.
_NOT_INSIDE = (
    ("/proc", "a virtual file system"),
    ("/sys", "a virtual file system"),
    ("/dev", "the device tree"),
    ("/run", "emptied at every boot"),
    ("/tmp", "private to each service (PrivateTmp=yes) and emptied"),
    ("/var/tmp", "private to each service (PrivateTmp=yes)"),
    ("/home", "hidden from the registry (ProtectHome=yes)"),
    ("/root", "hidden from the registry (ProtectHome=yes)"),
    ("/boot", "the boot partition"),
    ("/etc/actuated", "actuated's own directory"),
    ("/var/lib/actuated", "actuated's own directory"),
    ("/usr/local/lib/registry-mirror", "where the role keeps the registry's binaries"),
    ("/var/lib/registry-mirror", "where the role keeps its rollback snapshot"),
)
# Paths that end up in systemd units and scripts: no whitespace (a unit splits on it), no "%" or "$" (specifiers,
# variables), no quotes or backslashes.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._+@/-]+$")
_SAFE_PATH_TEXT = "letters, digits and . _ - + @ /"
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_GO_DURATION = re.compile(r"^(0|([0-9]+(\.[0-9]+)?(ns|us|\u00b5s|ms|s|m|h))+)$")
_IPV4 = re.compile(r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_USERNAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Characters a systemd environment file interprets inside double quotes.
_ENV_SPECIAL = frozenset('"\\$`')
# Integer ranges: (lowest, highest, unit).
RANGES = {
    "registry_mirror_port": (LOWEST_UNPRIVILEGED_PORT, 65535, "port"),
    "registry_mirror_metrics_port": (LOWEST_UNPRIVILEGED_PORT, 65535, "port"),
    "registry_mirror_upstream_probe_interval": (1, 3600, "seconds"),
    "registry_mirror_start_timeout": (1, 3600, "seconds"),
    "registry_mirror_cert_min_valid_days": (0, 3650, "days"),
    "registry_mirror_min_free_space_mb": (0, 10 * 1024 * 1024, "MiB"),
    "registry_mirror_cache_budget_mb": (0, 1024 * 1024 * 1024, "MiB"),
    "registry_mirror_cache_budget_percent": (0, 90, "percent"),
    "registry_mirror_cache_low_water_percent": (10, 95, "percent"),
    "registry_mirror_cache_collect_interval": (0, 8760, "hours"),
    "registry_mirror_supervisor_port": (LOWEST_UNPRIVILEGED_PORT, 65535, "port"),
    "registry_mirror_tag_cache_seconds": (0, 86400, "seconds"),
    "registry_mirror_prefetch_interval": (5, 1440, "minutes"),
}
_TRUE = frozenset(("true", "yes", "on", "1", "y", "t"))
_FALSE = frozenset(("false", "no", "off", "0", "n", "f"))


def show(value: t.Any, limit: int = 80) -> str:
    """VALUE for a message: quoted, control characters escaped, shortened. Never call it with a secret."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = repr(value if isinstance(value, str) else str(value))
    return text if len(text) <= limit else text[:limit - 4] + "...'"


def redact_url(url: str) -> str:
    """URL without the user name and password it may hold."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return scheme + sep + netloc + slash + tail


# ---- Characters ------------------------------------------------------------------------------------------------


def character_class(char: str) -> str:
    """The class of an unexpected character, as said in messages about secrets."""
    code = ord(char)
    if char in "\n\r":
        return "a newline"
    if char in " \t":
        return "whitespace"
    if code < 32 or 127 <= code < 160:
        return "a control character"
    if char.isspace():
        return "whitespace"
    if code > 127:
        return "a non-ASCII character"
    if char in _ENV_SPECIAL:
        return "a quote, backslash, dollar sign or backtick"
    return "a character other than letters, digits, '.', '_' and '-'"


def unsafe_characters(value: str, allowed: t.Callable[[str], bool]) -> list:
    """The classes of the characters of VALUE that ALLOWED refuses, in order of first appearance, without repeats."""
    classes = []
    for char in value:
        if not allowed(char):
            found = character_class(char)
            if found not in classes:
                classes.append(found)
    return classes


def _describe_characters(value: str, pattern: re.Pattern) -> str:
    """Which characters of a non-secret VALUE fall outside PATTERN: classes for invisible ones, the others quoted."""
    shown = []
    for char in value:
        if pattern.fullmatch(char):
            continue
        what = character_class(char) if (ord(char) < 33 or ord(char) > 126) else repr(char)
        if what not in shown:
            shown.append(what)
    return ", ".join(shown)


# ---- Types ---------------------------------------------------------------------------------------------------------


def coerce(name: str, value: t.Any, kind: str) -> tuple[t.Any, str | None]:
    """VALUE as the argument_specs type KIND (int, bool, str, path, dict, list), or a problem."""
    secret = name in SECRET_VARIABLES
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE, None
        return None, "must be true or false" + ("" if secret else f" (got {show(value)})")
    if kind == "int":
        if isinstance(value, bool):
            return None, f"must be an integer (got {show(value)})"
        if isinstance(value, int):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            return int(value), None
        return None, "must be an integer" + ("" if secret else f" (got {show(value)})")
    if kind in ("str", "path"):
        if value is None:
            return "", None
        if isinstance(value, (dict, list)):
            return None, f"must be a string (got a {'dictionary' if isinstance(value, dict) else 'list'})"
        return str(value), None
    if kind == "dict":
        if value is None:
            return {}, None
        if not isinstance(value, dict):
            return None, f"must be a dictionary (got {type(value).__name__})"
        return dict(value), None
    if kind == "list":
        if value is None:
            return [], None
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()], None
        if not isinstance(value, (list, tuple)):
            return None, f"must be a list (got {type(value).__name__})"
        return list(value), None
    return value, None


# ---- Paths ---------------------------------------------------------------------------------------------------------


def system_directory(path: str) -> str | None:
    """Why the normalised absolute PATH cannot be one of the role's directories, or None."""
    if path == "/":
        return "the root directory"
    if path in SYSTEM_DIRECTORIES or _SYSTEM_PATTERN.fullmatch(path):
        return "a system directory"
    below = sorted(d for d in SYSTEM_DIRECTORIES if d.startswith(path + "/"))
    if below:
        return f"a parent of the system directory {below[0]}"
    return None


def forbidden_tree(path: str) -> str | None:
    """Why the storage or configuration directory cannot be PATH (inside a tree the registry cannot use), or None."""
    for top, why in _NOT_INSIDE:
        if path == top or path.startswith(top + "/"):
            return f"inside {top}, {why}"
    return None


# What to do instead of a system directory, by kind of path.
_PATH_ADVICE = {
    "directory": "the role would give it to the mirror (owner and mode); choose a directory of the mirror's own (the "
                 "defaults are /var/lib/registry and /etc/registry)",
    "file": "give the path of the file",
    "cache": "choose a directory of its own, such as ~/.cache/actuated.registry",
}


# The role's directories on the controller: validate() returns them resolved, and the role uses only those.
CONTROLLER_DIRS = ("registry_mirror_local_cache_dir", "registry_mirror_fleet_ca_dir")


def controller_path(value: str, home: str = "") -> str:
    """An absolute path on the controller (where the input checks run) as the controller resolves it: a leading ~ is
    HOME, and a path that is not normalised (``{{ playbook_dir }}/../cache``, ``//x``, ``x/``) is resolved through its
    symbolic links, so that ``..`` means what the file system makes of it. A normalised path is returned as given."""
    if home and (value == "~" or value.startswith("~/")):
        value = home.rstrip("/") + value[1:]
    if not value.startswith("/") or "/" + posixpath.normpath(value).lstrip("/") == value:
        return value
    return os.path.realpath(value)


def check_path(value: str, kind: str = "directory", home: str = "", advice: str = "") -> list:
    """Problems of a path: absolute, normalised, not a system directory or a parent of one. KIND: "directory" (the
    storage or configuration directory: in systemd units, so safe characters only, and not inside a tree the sandboxed
    registry cannot use), "file" (a certificate or key, in systemd units too) or "cache" (a directory of the
    controller's, such as the download cache, where a leading ~ means HOME and a path that is not normalised is resolved
    as controller_path() does). ADVICE: what to do instead of a system
    directory, when not the KIND's usual advice."""
    if value == "":
        return ["is empty: give an absolute path"]
    if kind == "cache":
        value = controller_path(value, home)
    bad = unsafe_characters(value, lambda c: character_class(c) not in ("a newline", "a control character"))
    if bad:
        return [f"contains {' and '.join(bad)} ({show(value)})"]
    if not value.startswith("/"):
        return [f"is {show(value)}, a relative path: give an absolute path"]
    fixed = "/" + posixpath.normpath(value).lstrip("/")
    if fixed != value:
        return [f"is {show(value)}, which is not normalised: write {fixed} (on the host, a .. after a symbolic link "
                "would lead elsewhere than it reads)"]
    problems = []
    if kind != "cache" and not _SAFE_PATH.fullmatch(value):
        problems.append(f"is {show(value)}, which contains {_describe_characters(value, _SAFE_PATH)}: a path the role "
                        f"writes into systemd units may hold only {_SAFE_PATH_TEXT}")
    reason = system_directory(value)
    if reason:
        problems.append(f"is {value}, {reason}: {advice or _PATH_ADVICE[kind]}")
    elif kind == "directory":
        inside = forbidden_tree(value)
        if inside:
            problems.append(f"is {value}, {inside}: choose another directory (the defaults are /var/lib/registry "
                            "and /etc/registry)")
    return problems


# ---- URLs, addresses, ports ----------------------------------------------------------------------------------------


def split_host_port(netloc: str) -> tuple[str, str | None]:
    """HOST and PORT (text, or None) of a URL's network location without user information."""
    if netloc.startswith("["):
        host, bracket, rest = netloc.partition("]")
        if not bracket:
            return netloc, None
        return host + "]", rest[1:] if rest.startswith(":") else (rest if rest else None)
    host, colon, port = netloc.rpartition(":")
    if not colon:
        return netloc, None
    return host, port


def _host_problem(host: str) -> str | None:
    """Why HOST is not a DNS name, an IPv4 address or a bracketed IPv6 address, or None."""
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "!")
            return None
        except ValueError:
            return f"has an invalid IPv6 address {show(host)}"
    if not host:
        return "has no host name"
    if _IPV4.fullmatch(host) or (HOSTNAME.fullmatch(host) and not re.fullmatch(r"[0-9.]+", host)):
        return None
    return f"has an invalid host name {show(host)}"


def check_url(value: str, *, schemes: t.Sequence[str], path_allowed: bool, allow_http: bool = True,
              http_switch: str = "registry_mirror_upstream_allow_http",
              credentials: str = "registry_mirror_dockerhub_username and registry_mirror_dockerhub_token") -> list:
    """Problems of a URL: scheme among SCHEMES, a valid host, a port between 1 and 65535, no user information,
    query or fragment, and (unless PATH_ALLOWED) no path. HTTP_SWITCH and CREDENTIALS: the options a message about
    a plain http:// upstream or one with a password points to."""
    if value == "":
        return ["is empty"]
    bad = unsafe_characters(value, lambda c: 32 < ord(c) < 127)
    shown = show(redact_url(value))
    if bad:
        return [f"contains {' and '.join(bad)} ({shown})"]
    scheme, sep, rest = value.partition("://")
    if not sep:
        return [f"is {shown}, which is not a URL: write {schemes[0]}://HOST[:PORT]{'/PATH' if path_allowed else ''}"]
    scheme = scheme.lower()
    if scheme not in schemes:
        return [f"is {shown}, with the scheme {scheme}://: the role can only use {' or '.join(s + '://' for s in schemes)}"]
    problems = []
    if scheme == "http" and not allow_http:
        problems.append(f"is {shown}, a plain http:// URL: the upstream must use https://, or set "
                        f"{http_switch}: true for a lab upstream you control")
    netloc, _slash, tail = rest.partition("/")
    path = "/" + tail if _slash else ""
    if "?" in netloc or "#" in netloc or "?" in path or "#" in path:
        problems.append(f"is {shown}, with a query or fragment: give only {scheme}://HOST[:PORT]"
                        f"{'/PATH' if path_allowed else ''}")
        netloc = re.split(r"[?#]", netloc)[0]
        path = re.split(r"[?#]", path)[0]
    if "@" in netloc:
        problems.append(f"is {shown}, with a user name or password in it: the role does not put credentials in URLs"
                        + (f" (use {credentials})" if not path_allowed else ""))
        netloc = netloc.rpartition("@")[2]
    host, port = split_host_port(netloc)
    trouble = _host_problem(host)
    if trouble:
        problems.append(f"is {shown}, which {trouble}")
    if port is not None and (not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535):
        problems.append(f"is {shown}, with the port {show(port)}: a port must be between 1 and 65535")
    if not path_allowed and path not in ("", "/"):
        problems.append(f"is {shown}, with a path ({show(path)}): give only {scheme}://HOST[:PORT], with no path")
    return problems


# Where a mirror may listen, by IPv4 range (RFC 6890's special-purpose registry). PRIVATE_NETWORKS: RFC 1918's, and
# link-local (RFC 3927), which no router forwards: an edge listens there only with
# registry_mirror_bind_any_private_address, a tier with or without registry_mirror_tier_users. DOCUMENTATION_NETWORKS
# (RFC 5737) stand for public addresses in examples: refused, as globally routable ones are. The other ranges that are
# not global (shared address space, RFC 6598, the carrier-grade NAT range that the provider's other customers reach;
# benchmarking, RFC 2544; IETF protocol assignments) are not private: no edge, and a tier only with accounts.
PRIVATE_NETWORKS = tuple(ipaddress.IPv4Network(network) for network in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"))
PRIVATE_TEXT = "RFC 1918's 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, or link-local 169.254.0.0/16"
DOCUMENTATION_NETWORKS = tuple(ipaddress.IPv4Network(network) for network in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def private_address(value: str) -> bool:
    """Whether VALUE, a valid IPv4 address, is in one of PRIVATE_NETWORKS."""
    address = ipaddress.IPv4Address(value)
    return any(address in network for network in PRIVATE_NETWORKS)


def check_bind_address(value: str) -> list:
    """Problems of the address to listen on, whatever the mode: 'auto' or one unicast IPv4 address that is not globally
    routable (what each mode allows besides: _inputs_fleet.bind_problems())."""
    if value == "auto":
        return []
    if not _IPV4.fullmatch(value):
        try:
            ipaddress.IPv6Address(value.strip("[]"))
            return [f"is {show(value)}, an IPv6 address: actuated's bridge is IPv4 (192.168.128.1 or 192.168.129.1), "
                    "or use auto"]
        except ValueError:
            return [f"is {show(value)}, which is not an IPv4 address: give the bridge address (192.168.128.1 or "
                    "192.168.129.1) or auto"]
    address = ipaddress.IPv4Address(value)
    if address.is_unspecified:
        return [f"is {value}, every interface: that would expose the mirror beyond the VMs; give the bridge address"]
    if address.is_loopback:
        return [f"is {value}, a loopback address: the VMs could not reach the mirror"]
    if address.is_multicast or value == "255.255.255.255" or address.is_reserved or address in _THIS_NETWORK:
        return [f"is {value}, which is not a unicast address a registry can listen on"]
    if any(address in network for network in DOCUMENTATION_NETWORKS):
        return [f"is {value}, a documentation address (RFC 5737), which stands for a public one in examples: a mirror "
                "never listens on a public address; give actuated's bridge address (or auto) on an edge, the host's "
                "private address on a tier"]
    if address.is_global:
        return [f"is {value}, a globally routable address: a mirror there would serve anyone on the internet (an open "
                "pull-through proxy, with the operator's credentials when it has any); give actuated's bridge address "
                f"(or auto) on an edge, the host's private address ({PRIVATE_TEXT}) on a tier"]
    return []


def check_range(value: int, lowest: int, highest: int, unit: str) -> list:
    """Problems of an integer that must lie between LOWEST and HIGHEST."""
    if lowest <= value <= highest:
        return []
    if unit == "port" and 1 <= value < lowest:
        return [f"is {value}: the registry runs as an unprivileged user without capabilities and cannot listen on a "
                f"port below {lowest}; a port must be between {lowest} and {highest}"]
    what = "a port" if unit == "port" else "it"
    suffix = "" if unit == "port" else f" {unit}"
    return [f"is {value}: {what} must be between {lowest} and {highest}{suffix}"]


# ---- Versions, checksums, durations, accounts ----------------------------------------------------------------------


def check_version(value: str) -> list:
    """Problems of a distribution version."""
    if _VERSION.fullmatch(value):
        return []
    if value[:1] in ("v", "V") and _VERSION.fullmatch(value[1:]):
        return [f"is {show(value)}, with a leading v: write {value[1:]}"]
    return [f"is {show(value)}, which is not a distribution version such as 3.1.1"]


# The first distribution release (major, minor) that sends the proxy's upstream credentials only to a token realm on
# the upstream's host or registrable domain (CVE-2026-33540 before it). registry-supervisor, a program of its own on the
# host, keeps a copy (RESTRICTED_REALMS): a test compares them.
RESTRICTED_REALMS = (3, 1)


def version_tuple(value: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a valid version."""
    major, minor, patch = value.split("-")[0].split(".")
    return int(major), int(minor), int(patch)


def check_checksums(value: dict) -> list:
    """Problems of the digests by release architecture."""
    problems = []
    for arch in sorted(value, key=str):
        digest = value[arch]
        if arch not in RELEASE_ARCHITECTURES:
            hint = ARCHITECTURE_ALIASES.get(str(arch)) or next(iter(difflib.get_close_matches(str(arch), RELEASE_ARCHITECTURES, 1)), "")
            problems.append(f"has an entry for {show(arch)}, which is not a release architecture"
                            + (f" (did you mean {hint}?)" if hint else f" ({', '.join(RELEASE_ARCHITECTURES)})"))
            continue
        text = digest if isinstance(digest, str) else ""
        if _DIGEST.fullmatch(text):
            continue
        if text.lower().startswith("sha256:") and _DIGEST.fullmatch(text[7:].lower()):
            problems.append(f"[{arch}] has a sha256: prefix: give only the 64 hexadecimal characters")
        elif _DIGEST.fullmatch(text.lower()):
            problems.append(f"[{arch}] has upper-case letters: write the SHA-256 digest in lower case")
        else:
            problems.append(f"[{arch}] is {show(digest)}, which is not a SHA-256 digest (64 lower-case hexadecimal "
                            "characters)")
    return problems


def check_duration(value: str) -> list:
    """Problems of a Go duration (distribution's proxy.ttl)."""
    if _GO_DURATION.fullmatch(value):
        return []
    return [f"is {show(value)}, which is not a Go duration such as 168h, 72h30m or 0"]


def check_account(value: str, what: str) -> list:
    """Problems of a user or group name: a valid system account name, never root."""
    if value == "root":
        return [f"is root: the registry must run as an unprivileged {what} of its own"]
    if not _ACCOUNT.fullmatch(value):
        return [f"is {show(value)}, which is not a valid {what} name (a lower-case letter or _, then up to 31 "
                "lower-case letters, digits, _ or -)"]
    return []


# ---- Secrets -------------------------------------------------------------------------------------------------------


def secret_problems(value: str, *, username: bool) -> list:
    """What is wrong with a user name or token, by class only: never the value, a character of it or its length."""
    if username:
        return unsafe_characters(value, lambda c: bool(_USERNAME.fullmatch(c)))
    return unsafe_characters(value, lambda c: 32 < ord(c) < 127 and c not in _ENV_SPECIAL)


# Prefixes of access tokens that a user name never has: (prefix, what it is), a longer prefix before its own prefixes.
TOKEN_PREFIXES = (
    ("dckr_pat_", "a Docker Hub personal access token"), ("dckr_oat_", "a Docker Hub organization access token"),
    ("github_pat_", "a GitHub fine-grained token"), ("ghp_", "a GitHub personal access token"),
    ("gho_", "a GitHub OAuth token"), ("ghu_", "a GitHub App user token"), ("ghs_", "a GitHub App installation token"),
    ("ghr_", "a GitHub refresh token"), ("glpat-", "a GitLab personal access token"),
)
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{32,}")
_TOKEN_CHARACTERS = re.compile(r"^[A-Za-z0-9_-]{24,}$")
# A random-looking string: the kind of character (lower, upper, digit, other) changes between at least this share of
# neighbours (about 0.6 for random letters and digits, at most 0.35 for names such as BuildAgentsServiceAccount2024),
# with at least this many bits of entropy per character.
_RANDOM_CHANGES = 0.4
_RANDOM_BITS = 3.5


def _kind_of(char: str) -> str:
    """The kind of a character, for token_kind()."""
    return "lower" if char.islower() else "upper" if char.isupper() else "digit" if char.isdigit() else "other"


def token_kind(value: str) -> str | None:
    """What the user name VALUE looks like when it looks like a token rather than a name, or None: a known token
    prefix (TOKEN_PREFIXES), a run of 32 or more hexadecimal characters with letters and digits, or a long
    random-looking string (24 or more letters, digits, _ and -, mixing lower- and upper-case letters and digits). The
    answer never holds a part of VALUE."""
    for prefix, what in TOKEN_PREFIXES:
        if value.startswith(prefix):
            return what
    for run in _HEX_RUN.findall(value):
        if re.search("[0-9]", run) and re.search("[A-Fa-f]", run):
            return "a key (a long run of hexadecimal characters)"
    if not _TOKEN_CHARACTERS.fullmatch(value) or {"lower", "upper", "digit"} - {_kind_of(char) for char in value}:
        return None
    changes = sum(_kind_of(one) != _kind_of(two) for one, two in zip(value, value[1:])) / (len(value) - 1)
    counts = [value.count(char) for char in set(value)]
    bits = -sum(count / len(value) * math.log2(count / len(value)) for count in counts)
    if changes >= _RANDOM_CHANGES and bits >= _RANDOM_BITS:
        return "a token (a long random string)"
    return None


def token_username_warnings(user_var: str, username: str, secret_var: str, advice: str = "") -> list:
    """A warning when USERNAME, the value of USER_VAR, looks like a token (token_kind()), naming the variable and never
    showing the value. SECRET_VAR: where the token belongs; ADVICE: what to do instead, when not the usual."""
    kind = token_kind(username) if isinstance(username, str) else None
    if not kind:
        return []
    return [f"{user_var} looks like {kind}, not a user name (its value is not shown): "
            + (advice or f"give the account's user name there, and the token in {secret_var}")]


def account_exposure_warning(user_var: str, advice: str) -> str:
    """The warning of every run with an upstream account (USER_VAR set): who can read what through the mirror.
    ADVICE: the kind of account to use instead."""
    return (f"{user_var} is set: the mirror pulls with that account and serves every VM without asking who it is, so "
            "any image the account can read, private ones included, can be pulled by every job on the host (and "
            f"/v2/_catalog lists what was cached). Use {advice} (README: Security)")


def check_credentials(username: str, token: str) -> list:
    """(variable, problem) pairs for the Docker Hub user name and token."""
    return credential_problems("registry_mirror_dockerhub_username", username, "registry_mirror_dockerhub_token", token,
                               "a Docker Hub account")


def credential_problems(user_var: str, username: str, token_var: str, token: str, account: str,
                        neither: str = "an anonymous mirror") -> list:
    """(variable, problem) pairs for a user name and its token or password: both or neither, and characters that the
    environment file could not hold, by class only. ACCOUNT: what the two are, NEITHER: what having neither means (for
    the messages)."""
    problems = []
    if username and not token:
        problems.append((token_var, f"is empty while {user_var} is set: set both ({account}), or neither ({neither})"))
    if token and not username:
        problems.append((user_var, f"is empty while {token_var} is set: set both ({account}), or neither ({neither})"))
    for var, value, is_user in ((user_var, username, True), (token_var, token, False)):
        for found in secret_problems(value, username=is_user):
            problems.append((var, f"contains {found} (its value is not shown)"))
    return problems


# ---- Unknown variables ---------------------------------------------------------------------------------------------


def unknown_variables(names: t.Iterable[str], known: t.Iterable[str]) -> list:
    """Messages about every registry_mirror_* name of NAMES that is not in KNOWN, with the closest known name."""
    known = sorted(set(known))
    messages = []
    for name in sorted(set(names)):
        if name in known or not name.lower().startswith(PREFIX):
            continue
        # Compare what follows the prefix, which every name shares.
        suffixes = {option[len(PREFIX):]: option for option in known if option.startswith(PREFIX)}
        typed = name.lower()[len(PREFIX):]
        # A name cut short (registry_mirror_tier_tls_cert) means the shortest one it begins; else the most similar.
        longer = sorted((suffix for suffix in suffixes if len(typed) >= 4 and suffix.startswith(typed)), key=len)
        close = longer[:1] or difflib.get_close_matches(typed, list(suffixes), n=1, cutoff=0.6)
        messages.append(f"{name} is not a variable of this role"
                        + (f"; did you mean {suffixes[close[0]]}?" if close
                           else " (meta/argument_specs.yml lists the role's variables)"))
    return messages
