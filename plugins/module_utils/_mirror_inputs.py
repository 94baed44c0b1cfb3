# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""The input rules of the ``registry_mirror`` role, as pure functions.

Nothing here touches a host, reads a file or prints a value of a secret: the functions get the role's variables
(already templated) and, for the host rules, the text that the role's inspection command printed on the host, and
return problems as sentences that start with the name of the variable they are about. ``validate`` runs every rule
that needs only the input, ``check_host`` every rule that needs what the host has (accounts, directories).
"""

from __future__ import annotations

import difflib
import ipaddress
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
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_USERNAME = re.compile(r"^[A-Za-z0-9._-]+$")
# Characters a systemd environment file interprets inside double quotes.
_ENV_SPECIAL = frozenset('"\\$`')
# Integer ranges: (lowest, highest, unit).
_RANGES = {
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
}
_TRUE = frozenset(("true", "yes", "on", "1", "y", "t"))
_FALSE = frozenset(("false", "no", "off", "0", "n", "f"))


class Report(t.NamedTuple):
    """What validate() found: errors stop the run, warnings do not; UPSTREAMS: registry_mirror_upstreams normalised
    (normalise_upstreams()), TIERS: registry_mirror_tiers normalised (normalise_tiers()), TIER_USERS: the user names of
    registry_mirror_tier_users, CONTROLLER_DIRS: the controller's directories (the download cache, the fleet CA) as the
    controller resolves them (controller_path()), keyed by variable name; each complete only without errors."""

    errors: list
    warnings: list
    upstreams: list
    tiers: list = []  # (the defaults are never changed in place)
    tier_users: list = []
    controller_dirs: dict = {}


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


def _split_host_port(netloc: str) -> tuple[str, str | None]:
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
    if _IPV4.fullmatch(host) or (_HOSTNAME.fullmatch(host) and not re.fullmatch(r"[0-9.]+", host)):
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
    host, port = _split_host_port(netloc)
    trouble = _host_problem(host)
    if trouble:
        problems.append(f"is {shown}, which {trouble}")
    if port is not None and (not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535):
        problems.append(f"is {shown}, with the port {show(port)}: a port must be between 1 and 65535")
    if not path_allowed and path not in ("", "/"):
        problems.append(f"is {shown}, with a path ({show(path)}): give only {scheme}://HOST[:PORT], with no path")
    return problems


def check_bind_address(value: str) -> list:
    """Problems of the address to listen on: 'auto' or one unicast IPv4 address the VMs can reach."""
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
    if address.is_multicast or value == "255.255.255.255" or address.is_reserved:
        return [f"is {value}, which is not a unicast address a registry can listen on"]
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


# ---- Further upstreams (registry_mirror_upstreams) ----------------------------------------------------------------

UPSTREAMS = "registry_mirror_upstreams"
# The keys of an entry and their argument_specs types, in the order of a normalised entry (meta/argument_specs.yml
# lists the same keys as the option's suboptions).
UPSTREAM_OPTIONS = {
    "name": "str", "url": "str", "registry": "str", "port": "int", "metrics_port": "int", "supervisor_port": "int",
    "ttl": "str", "storage_dir": "path", "cache_budget_mb": "int", "cache_budget_percent": "int", "allow_http": "bool",
    "username": "str", "password": "str",
}
UPSTREAM_REQUIRED = ("name", "url", "port")
# Never shown, never returned: the normalised entry says only whether it has them (credentials) and under which
# environment variable prefix the role writes them (credentials_env).
UPSTREAM_SECRETS = ("username", "password")
UPSTREAM_BUDGET_PERCENT = 10
# The role's name for the Docker Hub mirror (vars/main.yml, _registry_mirror_primary): no upstream may take it.
PRIMARY_NAME = "docker-hub"
# What clients call Docker Hub: the mirror of registry_mirror_upstream_url serves it.
PRIMARY_REGISTRIES = ("docker.io", "index.docker.io")
_UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_UPSTREAM_RANGES = {
    "port": _RANGES["registry_mirror_port"],
    "metrics_port": _RANGES["registry_mirror_metrics_port"],
    "supervisor_port": _RANGES["registry_mirror_supervisor_port"],
    "cache_budget_mb": _RANGES["registry_mirror_cache_budget_mb"],
    "cache_budget_percent": _RANGES["registry_mirror_cache_budget_percent"],
}
# Keys people write for another one (difflib would not find these).
_UPSTREAM_KEY_ALIASES = {"token": "password", "user": "username", "remoteurl": "url", "proxy_ttl": "ttl",
                         "storage": "storage_dir", "host": "registry"}


class Upstreams(t.NamedTuple):
    """What normalise_upstreams() found: the entries without problems (normalised), errors and warnings."""

    upstreams: list
    errors: list
    warnings: list


def url_key(url: str) -> str:
    """A valid upstream URL (no path) as compared and returned: lower-case scheme and host, no trailing slash."""
    scheme, _sep, rest = url.partition("://")
    return scheme.lower() + "://" + rest.rstrip("/").lower()


def credentials_env(name: str) -> str:
    """The prefix of the environment variables (PREFIX_USERNAME, PREFIX_PASSWORD) of an upstream's credentials."""
    return "REGISTRY_MIRROR_" + name.upper().replace("-", "_")


def entry_label(variable: str, index: int, item: t.Any, taken: t.Container[str] = ()) -> str:
    """How messages name an entry of the list VARIABLE (a key of ENTRY_LISTS): VARIABLE[LABEL] when the entry has a
    valid label of its own (an upstream's name, a tier user's user name) that no earlier entry took, else
    VARIABLE[INDEX] (0-based, as in a template)."""
    kind = ENTRY_LISTS[variable]
    label = item.get(kind.label_key) if kind.label_key and isinstance(item, dict) else None
    if isinstance(label, str) and kind.label_problem(label) is None and _LABEL.fullmatch(label) and label not in taken:
        return f"{variable}[{label}]"
    return f"{variable}[{index}]"


def upstream_name_problem(name: str) -> str | None:
    """Why NAME cannot name an upstream, or None."""
    if not _UPSTREAM_NAME.fullmatch(name) or name.endswith("-"):
        return (f"is {show(name)}, which is not a valid upstream name: a lower-case letter, then up to 30 lower-case "
                "letters, digits or -, not ending in - (it names the upstream's directories and journal lines)")
    if name == PRIMARY_NAME:
        return f"is {name}, the name of the Docker Hub mirror (registry_mirror_upstream_url): choose another name"
    return None


def _unknown_keys(label: str, item: dict, variable: str = UPSTREAMS) -> list:
    """Messages about the keys of ITEM that an entry of VARIABLE does not have (never with their values)."""
    kind = ENTRY_LISTS[variable]
    known = list(kind.options)
    messages = []
    for key in item:
        if key in kind.options:
            continue
        text = str(key)
        hint = kind.aliases.get(text.lower()) or next(iter(difflib.get_close_matches(text.lower(), known, 1)), "")
        messages.append(f"{label} has the key {show(text)}, which is not an option of {kind.what}"
                        + (f"; did you mean {hint}?" if hint else f" ({', '.join(known)})"))
    return messages


def _and(words: t.Sequence[str]) -> str:
    """WORDS as a list in a sentence: "a", "a and b", "a, b and c"."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _given(label: str, item: dict, variable: str = UPSTREAMS) -> tuple[dict, list]:
    """The keys ITEM (an entry of VARIABLE) sets (a null counts as not set), as their types, and the problems of those
    of the wrong type (which never show a secret's value: coerce() shows none for strings)."""
    kind = ENTRY_LISTS[variable]
    values, problems = {}, []
    for key, option_type in kind.options.items():
        if item.get(key) is None:
            continue
        value, trouble = coerce(key, item[key], option_type)
        if trouble:
            problems.append(f"{label}.{key} {trouble}")
        else:
            values[key] = value
    for key in kind.required:
        if key not in item or item[key] is None or (kind.options[key] != "int" and values.get(key) == ""):
            problems.append(f"{label}.{key} is {'empty' if key in item and item[key] is not None else 'missing'}: "
                            f"every {kind.what.split(' ', 1)[1]} needs {_and(kind.required)}")
            values.pop(key, None)
    return values, problems


def _defaults(given: dict, values: t.Mapping[str, t.Any]) -> dict:
    """How each optional key that ITEM does not set gets its value: {key: (value, how)}; a value is None when what it
    derives from is not valid (that has its own error)."""
    name, port, url = given.get("name"), given.get("port"), given.get("url")
    storage = values.get("registry_mirror_storage_dir")
    host = None
    if url is not None and not check_url(url, schemes=("https", "http"), path_allowed=False):
        host = _split_host_port(url.partition("://")[2].rstrip("/"))[0].lower()
    return {
        "registry": (host, "the host of url"),
        "metrics_port": (None if port is None else port + 1, "port + 1"),
        "supervisor_port": (None if port is None else port + 2, "port + 2"),
        "ttl": (values.get("registry_mirror_proxy_ttl"), "registry_mirror_proxy_ttl"),
        "storage_dir": (None if storage is None or name is None else f"{storage}-{name}",
                        "registry_mirror_storage_dir + '-' + name"),
        "cache_budget_mb": (values.get("registry_mirror_cache_budget_mb"), "registry_mirror_cache_budget_mb"),
        "cache_budget_percent": (UPSTREAM_BUDGET_PERCENT, str(UPSTREAM_BUDGET_PERCENT)),
        "allow_http": (False, "false"),
        "username": ("", ""),
        "password": ("", ""),
    }


def _by_default(key: str, defaulted: t.Mapping[str, str]) -> str:
    """For a message about a value the entry does not set: where it comes from."""
    return f" (not set: {defaulted[key]} by default)" if key in defaulted else ""


def _entry_problems(key: str, value: t.Any, fields: t.Mapping[str, t.Any], label: str) -> list:
    """Problems of the valid-typed VALUE of KEY alone (FIELDS: the entry's other values, for allow_http)."""
    if key == "name":
        trouble = upstream_name_problem(value)
        return [trouble] if trouble else []
    if key == "url":
        return check_url(value, schemes=("https", "http"), path_allowed=False, allow_http=bool(fields.get("allow_http")),
                         http_switch=f"{label}.allow_http", credentials=f"{label}.username and {label}.password")
    if key == "registry":
        if not _HOSTNAME.fullmatch(value):
            return [f"is {show(value)}, which is not a host name: give the name clients pull from, such as ghcr.io"]
        if value.lower().rstrip(".") in PRIMARY_REGISTRIES:
            return [f"is {value}, which is Docker Hub: the mirror of registry_mirror_upstream_url serves docker.io; "
                    "give the registry this upstream serves"]
        return []
    if key in _UPSTREAM_RANGES:
        return check_range(value, *_UPSTREAM_RANGES[key])
    if key == "ttl":
        return check_duration(value)
    if key == "storage_dir":
        return check_path(value, "directory")
    return []


def _upstream(index: int, item: t.Any, values: t.Mapping[str, t.Any], taken: t.Container[str]) -> tuple[str, dict, dict, list]:
    """One entry: its label, its valid fields (given or default), which fields are defaults, and its problems."""
    label = entry_label(UPSTREAMS, index, item, taken)
    if not isinstance(item, dict):
        return label, {}, {}, [f"{label} must be a dictionary with name, url and port (got {type(item).__name__})"]
    problems = _unknown_keys(label, item)
    given, wrong_type = _given(label, item)
    problems += wrong_type
    defaults = _defaults(given, values)
    fields, defaulted = {}, {}
    for key in UPSTREAM_OPTIONS:
        if key in given:
            fields[key] = given[key]
        elif key in defaults and defaults[key][0] is not None:
            fields[key], defaulted[key] = defaults[key]
    for key in [key for key in fields if key not in UPSTREAM_SECRETS]:
        found = _entry_problems(key, fields[key], fields, label)
        if key == "registry" and key in defaulted and found:
            problems.append(f"{label}.registry is not set, and the host of url ({fields[key]}) is not a host name "
                            "clients can pull from: set registry to the name they use")
        else:
            problems.extend(f"{label}.{key}{_by_default(key, defaulted)} {text}" for text in found)
        if found:
            del fields[key]
    problems.extend(f"{var} {text}" for var, text in credential_problems(
        f"{label}.username", fields["username"], f"{label}.password", fields["password"], "an account on the upstream"))
    if "registry" in fields:
        fields["registry"] = fields["registry"].lower().rstrip(".")
    if "url" in fields:
        fields["url"] = url_key(fields["url"])
    return label, fields, defaulted, problems


def normalise_upstreams(values: t.Mapping[str, t.Any]) -> Upstreams:
    """registry_mirror_upstreams checked and normalised. VALUES: the role's variables as their types (effective()),
    without those that are not valid. The same variables always give the same entries: the role relies on it in the
    input and the host checks. Each normalised entry has every key of UPSTREAM_OPTIONS (defaults filled in) except the
    secrets, then credentials (whether it has a user name and password) and credentials_env."""
    errors: list = []
    entries = []
    names: dict = {}
    urls: dict = {}
    registries: dict = {}
    primary_url = values.get("registry_mirror_upstream_url")
    if primary_url is not None:
        urls[url_key(primary_url)] = "registry_mirror_upstream_url"
    for index, item in enumerate(values.get(UPSTREAMS) or []):
        label, fields, defaulted, problems = _upstream(index, item, values, names)
        for key, seen in (("name", names), ("url", urls), ("registry", registries)):
            if key not in fields:
                continue
            if fields[key] in seen:
                owner = seen[fields[key]]
                owner = owner if owner == "registry_mirror_upstream_url" else f"{owner}.{key}"
                problems.append(f"{label}.{key}{_by_default(key, defaulted)} is "
                                f"{show(fields[key]) if key == 'name' else fields[key]}, the same as {owner}: every "
                                f"upstream needs a {key} of its own")
            else:
                seen[fields[key]] = label
        errors.extend(problems)
        # Complete only when every key has a valid value (one a variable it derives from lacks is not).
        entries.append((label, fields, defaulted, not problems and all(key in fields for key in UPSTREAM_OPTIONS)))
    errors.extend(_port_conflicts(values, entries))
    errors.extend(_storage_conflicts(values, entries))
    upstreams = []
    for _label, fields, _defaulted, fine in entries:
        if fine:
            entry = {key: fields[key] for key in UPSTREAM_OPTIONS if key not in UPSTREAM_SECRETS}
            entry["credentials"] = bool(fields["username"])
            entry["credentials_env"] = credentials_env(fields["name"])
            upstreams.append(entry)
    return Upstreams(upstreams, errors, _budget_warnings(values, entries))


def _port_conflicts(values: t.Mapping[str, t.Any], entries: list) -> list:
    """Every listener's port must be its own: the Docker Hub mirror's (registry_mirror_port, _supervisor_port and,
    with metrics, _metrics_port) and each upstream's (port, supervisor_port and, with metrics, metrics_port). The
    conflicts among the Docker Hub mirror's own ports are _conflicts()'."""
    metrics = bool(values.get("registry_mirror_metrics_enabled"))
    owners = [(name, values[name], True)
              for name in ("registry_mirror_port", "registry_mirror_supervisor_port")
              + (("registry_mirror_metrics_port",) if metrics else ()) if name in values]
    for label, fields, defaulted, _fine in entries:
        for key in ("port", "supervisor_port") + (("metrics_port",) if metrics else ()):
            if key in fields:
                owners.append((f"{label}.{key}{_by_default(key, defaulted)}", fields[key], False))
    first: dict = {}
    errors = []
    for owner, port, primary in owners:
        if port not in first:
            first[port] = (owner.split(" ", 1)[0], primary)
        elif not (primary and first[port][1]):
            errors.append(f"{owner} is {port}, the same as {first[port][0]}: every listener needs a port of its own")
    return errors


def _storage_conflicts(values: t.Mapping[str, t.Any], entries: list) -> list:
    """Each upstream's storage_dir is neither registry_mirror_storage_dir, registry_mirror_config_dir nor another
    upstream's, nor nested in one of them, nor a parent of one."""
    taken = [(name, values[name]) for name in ("registry_mirror_storage_dir", "registry_mirror_config_dir") if name in values]
    why = "each mirror's cache needs a directory of its own, apart from the other caches and the configuration"
    errors = []
    for label, fields, defaulted, _fine in entries:
        if "storage_dir" not in fields:
            continue
        mine, me = fields["storage_dir"], f"{label}.storage_dir"
        described = me + _by_default("storage_dir", defaulted)
        for other, path in taken:
            if mine == path:
                errors.append(f"{described} is {mine}, the same as {other}: {why}")
            elif mine.startswith(path.rstrip("/") + "/"):
                errors.append(f"{described} is {mine}, nested in {other} ({path}): {why}")
            elif path.startswith(mine.rstrip("/") + "/"):
                errors.append(f"{described} is {mine}, which contains {other} ({path}): {why}")
        taken.append((me, mine))
    return errors


def _budget_warnings(values: t.Mapping[str, t.Any], entries: list) -> list:
    """A warning when the caches' shares of a filesystem add up to more than the most one cache may take."""
    primary = values.get("registry_mirror_cache_budget_percent")
    shares = [(label, fields["cache_budget_percent"]) for label, fields, _d, _f in entries if "cache_budget_percent" in fields]
    highest = _RANGES["registry_mirror_cache_budget_percent"][1]
    if primary is None or not shares or primary + sum(share for _l, share in shares) <= highest:
        return []
    total = primary + sum(share for _l, share in shares)
    parts = ", ".join(f"{label}.cache_budget_percent {share}" for label, share in shares)
    return [f"{UPSTREAMS}: the caches' budgets add up to {total} percent of a filesystem (registry_mirror_cache_budget_percent "
            f"{primary}, {parts}): if they share one filesystem the caches could take more than {highest} percent of it; "
            "lower the shares, or give the upstreams a storage_dir on another filesystem"]


# ---- The fleet: tiers and edges (registry_mirror_mode) -------------------------------------------------------------

MODE = "registry_mirror_mode"
TIERS = "registry_mirror_tiers"
TIER_USERS = "registry_mirror_tier_users"
# An entry of registry_mirror_tiers (an edge's upstream) and of registry_mirror_tier_users (an account on a tier), with
# their argument_specs types (meta/argument_specs.yml lists the same keys as the options' suboptions).
TIER_OPTIONS = {"url": "str", "username": "str", "password": "str"}
TIER_REQUIRED = ("url",)
# A tier's credentials, as an upstream's: never shown, never returned.
TIER_SECRETS = ("username", "password")
TIER_USER_OPTIONS = {"username": "str", "password": "str"}
TIER_USER_REQUIRED = ("username", "password")
# A tier user's name is not secret (the edges' inventories hold it, the result lists it); the password is.
TIER_USER_SECRETS = ("password",)
MAX_TIERS = 8
MAX_TIER_USERS = 100
MAX_TIER_USERNAME = 64
# bcrypt, which hashes the passwords for the tier's htpasswd file, uses only the first 72 bytes of a password.
BCRYPT_MAX_BYTES = 72
# actuated's VM bridges: where an edge listens, never a tier.
ACTUATED_BRIDGES = ("192.168.128.1", "192.168.129.1")
# Variables that only a tier uses, and those that only an edge uses (set: a non-empty value).
TIER_ONLY = ("registry_mirror_tier_users", "registry_mirror_tier_tls_certificate", "registry_mirror_tier_tls_key",
             "registry_mirror_tier_names")
EDGE_ONLY = (TIERS, "registry_mirror_tier_ca")
_TIER_KEY_ALIASES = {"token": "password", "user": "username", "remoteurl": "url", "host": "url", "address": "url",
                     "name": "url"}
_TIER_USER_KEY_ALIASES = {"token": "password", "user": "username", "name": "username", "login": "username",
                          "pass": "password", "passwd": "password"}


class Normalised(t.NamedTuple):
    """What normalise_tiers() or normalise_tier_users() found: the entries without problems (normalised) and errors."""

    entries: list
    errors: list


def tier_credentials_env(index: int) -> str:
    """The prefix of the environment variables (PREFIX_USERNAME, PREFIX_PASSWORD) of the credentials of the INDEXth
    tier (1-based) in the edge's root-only proxy.env."""
    return f"REGISTRY_MIRROR_TIER{index}"


def tier_username_problem(name: str) -> str | None:
    """Why NAME cannot be the user name of an account on a tier (an htpasswd line), or None. Not a secret."""
    if name == "":
        return "is empty: give the user name the edges pull with"
    if ":" in name:
        return (f"is {show(name)}, which contains ':': the htpasswd file separates the user name from the password "
                "hash with it")
    bad = unsafe_characters(name, lambda c: not (c.isspace() or ord(c) < 32 or 127 <= ord(c) < 160))
    if bad:
        return f"is {show(name)}, which contains {' and '.join(bad)}"
    if len(name) > MAX_TIER_USERNAME:
        return f"is {show(name)}, {len(name)} characters long: a user name has at most {MAX_TIER_USERNAME}"
    return None


def tier_password_problems(password: str) -> list:
    """What is wrong with a tier user's password, by class only: never the value, a character of it or its length."""
    problems = []
    for char in password:
        found = ("a newline" if char in "\n\r\x85\u2028\u2029"
                 else "a control character" if ord(char) < 32 or 127 <= ord(char) < 160 else None)
        if found and f"contains {found} (its value is not shown)" not in problems:
            problems.append(f"contains {found} (its value is not shown)")
    if len(password.encode("utf-8")) > BCRYPT_MAX_BYTES:
        problems.append(f"is longer than {BCRYPT_MAX_BYTES} bytes (its value is not shown): bcrypt, which hashes it for "
                        f"the tier's htpasswd file, ignores every byte after the {BCRYPT_MAX_BYTES}nd; choose a shorter "
                        "one")
    return problems


def _tier_url_owners(values: t.Mapping[str, t.Any]) -> dict:
    """The URLs a tier's cannot be ({url_key: (who, why)}): Docker Hub's and each further upstream's (valid ones)."""
    owners = {}
    primary = values.get("registry_mirror_upstream_url")
    if primary is not None:
        owners[url_key(primary)] = ("registry_mirror_upstream_url (Docker Hub)",
                                    "a tier is a mirror on the site's network, and an edge pulls Docker Hub itself only "
                                    "when no tier answers")
    taken: list = []
    for index, item in enumerate(values.get(UPSTREAMS) or []):
        label = entry_label(UPSTREAMS, index, item, taken)
        taken.append(label[len(UPSTREAMS) + 1:-1])
        url = item.get("url") if isinstance(item, dict) else None
        if isinstance(url, str) and not check_url(url, schemes=("https", "http"), path_allowed=False):
            owners.setdefault(url_key(url), (f"{label}.url", "a tier mirrors Docker Hub, not a further upstream"))
    return owners


def normalise_tiers(values: t.Mapping[str, t.Any]) -> Normalised:
    """registry_mirror_tiers checked and normalised. VALUES: the role's variables as their types (effective()), without
    those that are not valid. Each normalised entry: url (lower-case scheme and host, no trailing /), index (1-based,
    the order in which an edge tries them), credentials (whether it has a user name and password) and credentials_env;
    never a secret."""
    items = values.get(TIERS) or []
    errors = []
    if len(items) > MAX_TIERS:
        errors.append(f"{TIERS} lists {len(items)} tiers: at most {MAX_TIERS} (an edge tries them in order, then Docker "
                      "Hub)")
    owners = _tier_url_owners(values)
    allow_http = bool(values.get("registry_mirror_upstream_allow_http"))
    entries = []
    for index, item in enumerate(items):
        label = entry_label(TIERS, index, item)
        if not isinstance(item, dict):
            errors.append(f"{label} must be a dictionary with url and, optionally, username and password (got "
                          f"{type(item).__name__})")
            continue
        problems = _unknown_keys(label, item, TIERS)
        fields, wrong_type = _given(label, item, TIERS)
        problems += wrong_type
        if "url" in fields:
            found = check_url(fields["url"], schemes=("https", "http"), path_allowed=False, allow_http=allow_http,
                              credentials=f"{label}.username and {label}.password")
            problems.extend(f"{label}.url {text}" for text in found)
            if not found:
                url = url_key(fields["url"])
                if url in owners:
                    who, why = owners[url]
                    problems.append(f"{label}.url is {url}, the same as {who}: {why}")
                else:
                    owners[url] = (f"{label}.url", "every tier needs a url of its own")
                fields["url"] = url
            else:
                del fields["url"]
        problems.extend(f"{var} {text}" for var, text in credential_problems(
            f"{label}.username", fields.get("username", ""), f"{label}.password", fields.get("password", ""),
            "an account on the tier, one of its registry_mirror_tier_users", "a tier open to its private network"))
        errors.extend(problems)
        if not problems and "url" in fields:
            entries.append({"url": fields["url"], "index": index + 1, "credentials": bool(fields.get("username")),
                            "credentials_env": tier_credentials_env(index + 1)})
    return Normalised(entries, errors)


def normalise_tier_users(values: t.Mapping[str, t.Any]) -> Normalised:
    """registry_mirror_tier_users checked. Its normalised entries are the user names alone, in the order given."""
    items = values.get(TIER_USERS) or []
    errors = []
    if len(items) > MAX_TIER_USERS:
        errors.append(f"{TIER_USERS} lists {len(items)} accounts: at most {MAX_TIER_USERS} (the edges of a site share "
                      "a few accounts)")
    names: dict = {}
    entries = []
    for index, item in enumerate(items):
        label = entry_label(TIER_USERS, index, item, names)
        if not isinstance(item, dict):
            errors.append(f"{label} must be a dictionary with username and password (got {type(item).__name__})")
            continue
        problems = _unknown_keys(label, item, TIER_USERS)
        fields, wrong_type = _given(label, item, TIER_USERS)
        problems += wrong_type
        name = fields.get("username")
        if name is not None:
            trouble = tier_username_problem(name)
            if trouble:
                problems.append(f"{label}.username {trouble}")
            elif name in names:
                problems.append(f"{label}.username is {show(name)}, the same as {names[name]}.username: every account "
                                "needs a user name of its own")
            else:
                names[name] = label
        if fields.get("password"):
            problems.extend(f"{label}.password {text}" for text in tier_password_problems(fields["password"]))
        errors.extend(problems)
        if not problems and name is not None and fields.get("password"):
            entries.append(name)
    return Normalised(entries, errors)


def check_tier_names(value: list) -> list:
    """Problems of the extra names of a tier's certificate: DNS names (RFC 1123, no wildcard) or IP addresses, each
    once."""
    problems = []
    seen: dict = {}
    for item in value:
        if not isinstance(item, str):
            problems.append(f"lists {show(item)}, which is not a string (got {type(item).__name__}): give DNS names or "
                            "IP addresses")
            continue
        key, trouble = _tier_name(item)
        if trouble:
            problems.append(f"lists {show(item)}, {trouble}")
        elif key in seen:
            problems.append(f"lists {show(item)}, the same name as {show(seen[key])}: give each name once")
        else:
            seen[key] = item
    return problems


def _tier_name(name: str) -> tuple[str, str | None]:
    """A certificate name as compared (lower-case DNS name, or the address in its usual form), or why it is none."""
    try:
        return str(ipaddress.ip_address(name)), None
    except ValueError:
        pass
    if name.startswith("[") and name.endswith("]"):
        try:
            return "", f"an IPv6 address in brackets: write it without them ({ipaddress.IPv6Address(name[1:-1])})"
        except ValueError:
            pass
    if name.startswith("*."):
        return "", "a wildcard: the fleet CA names each host of a tier's certificate; list every name"
    if name.endswith("."):
        return "", f"with a trailing dot: write {show(name.rstrip('.'))}"
    if not _HOSTNAME.fullmatch(name) or re.fullmatch(r"[0-9.]+", name):
        return "", ("which is neither a DNS name (labels of letters, digits and -, not starting or ending with -, "
                    "separated by dots) nor an IP address")
    return name.lower(), None


class EntryKind(t.NamedTuple):
    """The entries of a variable that is a list of dictionaries."""

    what: str  # one entry, in messages ("an upstream")
    options: t.Mapping[str, str]  # key: argument_specs type
    required: tuple
    secrets: tuple  # never shown, never returned
    label_key: str  # the key whose valid value names the entry in messages; "" for the index
    label_problem: t.Callable[[str], str | None]  # why a value of label_key cannot label the entry
    aliases: t.Mapping[str, str]  # keys people write for another one


ENTRY_LISTS = {
    UPSTREAMS: EntryKind("an upstream", UPSTREAM_OPTIONS, UPSTREAM_REQUIRED, UPSTREAM_SECRETS, "name",
                         upstream_name_problem, _UPSTREAM_KEY_ALIASES),
    TIERS: EntryKind("a tier", TIER_OPTIONS, TIER_REQUIRED, TIER_SECRETS, "", lambda _v: "", _TIER_KEY_ALIASES),
    TIER_USERS: EntryKind("a tier user", TIER_USER_OPTIONS, TIER_USER_REQUIRED, TIER_USER_SECRETS, "username",
                          tier_username_problem, _TIER_USER_KEY_ALIASES),
}
# Variables that hold a secret somewhere inside: a templating error about them is not shown either.
VARIABLES_WITH_SECRETS = SECRET_VARIABLES | set(ENTRY_LISTS)
# A label shown inside [...]: no bracket, quote, space or anything a terminal would interpret.
_LABEL = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")


def _is_set(value: t.Any) -> bool:
    """Whether a variable of the other mode is set: a non-empty value (empty: "", [], {}, None)."""
    return value not in (None, "", [], {})


def _fleet_conflicts(values: t.Mapping[str, t.Any], valid: t.Mapping[str, t.Any], tiers: list) -> tuple[list, list]:
    """Errors and warnings of the fleet variables together: the variables of the other mode, where a tier listens,
    an edge's Docker Hub token, both or neither of the tier's certificate and key. VALUES: every variable of the
    right type (a set but invalid one is still set); VALID: those without a problem of their own; TIERS: the tiers
    normalised."""
    mode = values.get(MODE)
    errors: list = []
    warnings: list = []
    if mode == "edge":
        for name in TIER_ONLY:
            if _is_set(values.get(name)):
                errors.append(f"{name} is set, but {MODE} is edge: it applies to tiers only ({MODE}: tier, a site's tier "
                              "mirror); remove it from the edges' variables")
    elif mode == "tier":
        for name in EDGE_ONLY:
            # On a tier with the operator's certificate, registry_mirror_tier_ca is that certificate's CA: the role
            # checks the tier with it once it serves.
            if name == "registry_mirror_tier_ca" and values.get("registry_mirror_tier_tls_certificate"):
                continue
            if _is_set(values.get(name)):
                errors.append(f"{name} is set, but {MODE} is tier: a tier pulls from Docker Hub itself (chained tiers "
                              "are not supported); it applies to edges only"
                              + (" (or, with registry_mirror_tier_tls_certificate, names that certificate's CA)"
                                 if name == "registry_mirror_tier_ca" else ""))
        bind = valid.get("registry_mirror_bind_address")
        if bind == "auto" or bind in ACTUATED_BRIDGES:
            what = "auto, which picks actuated's VM bridge" if bind == "auto" else f"{bind}, actuated's VM bridge"
            errors.append(f"registry_mirror_bind_address is {what}, but {MODE} is tier: a tier listens on the site's "
                          "private network: name its address there")
    if mode == "edge" and _is_set(values.get(TIERS)):
        hub = [name for name in ("registry_mirror_dockerhub_username", "registry_mirror_dockerhub_token") if values.get(name)]
        if hub:
            errors.append(f"{' and '.join(hub)} {'are' if len(hub) > 1 else 'is'} set while {TIERS} names the site's "
                          "tiers: the Docker Hub token belongs on the tiers only: an edge pulls Docker Hub directly only "
                          "anonymously, when no tier answers; leave both empty on the edges")
        envs = {entry["credentials_env"]: f"{TIERS}[{entry['index'] - 1}]" for entry in tiers if entry["credentials"]}
        for entry in normalise_upstreams(valid).upstreams:
            if entry["credentials"] and entry["credentials_env"] in envs:
                errors.append(f"{UPSTREAMS}[{entry['name']}].name is {entry['name']}: its credentials would use the "
                              f"environment variables {entry['credentials_env']}_USERNAME and _PASSWORD, as "
                              f"{envs[entry['credentials_env']]}'s do; choose another name")
    certificate, key = (values.get(f"registry_mirror_tier_tls_{part}", "") for part in ("certificate", "key"))
    for name, other, value, partner in (("certificate", "key", certificate, key), ("key", "certificate", key, certificate)):
        if partner and not value and mode != "edge":  # on an edge, setting either is the error
            errors.append(f"registry_mirror_tier_tls_{name} is empty while registry_mirror_tier_tls_{other} is set: give "
                          "both (the operator's certificate and its key), or neither (the fleet CA issues the tier's "
                          "certificate)")
    if certificate and _is_set(values.get("registry_mirror_tier_names")) and mode == "tier":
        warnings.append("registry_mirror_tier_names is set while registry_mirror_tier_tls_certificate is too: the names "
                        "go only into a certificate the fleet CA issues; the operator's certificate is served as it is")
    return errors, warnings


# ---- Everything that needs only the input --------------------------------------------------------------------------


def effective(raw: t.Mapping[str, t.Any], spec: t.Mapping[str, t.Mapping[str, t.Any]]) -> tuple[dict, list]:
    """The value of every option of SPEC (RAW's, or the default) as its type, and the problems of those that have
    the wrong type or are not among their choices (left out of the values)."""
    values = {}
    errors = []
    for name, option in spec.items():
        value = raw[name] if name in raw else option.get("default")
        value, trouble = coerce(name, value, option.get("type", "str"))
        choices = option.get("choices")
        if not trouble and choices and value not in choices:
            trouble = f"is {show(value)}: it must be one of {', '.join(str(c) for c in choices)}"
        if trouble:
            errors.append(f"{name} {trouble}")
        else:
            values[name] = value
    return values, errors


def validate(raw: t.Mapping[str, t.Any], spec: t.Mapping[str, t.Mapping[str, t.Any]], *,
             defined: t.Iterable[str] = (), home: str = "") -> Report:
    """Every rule that needs only the input. RAW: the role's variables (templated), SPEC: argument_specs options,
    DEFINED: the names of every variable defined for the host (for unknown ones), HOME: the controller's home."""
    values, errors = effective(raw, spec)
    warnings = []
    failed = {error.split(" ", 1)[0] for error in errors}

    def problem(name: str, text: str) -> None:
        errors.append(f"{name} {text}")
        failed.add(name)

    def rule(name: str, check: t.Callable[..., list], *args: t.Any, **kwargs: t.Any) -> None:
        if name in values:
            for text in check(values[name], *args, **kwargs):
                problem(name, text)

    rule("registry_mirror_version", check_version)
    rule("registry_mirror_release_base_url", check_url, schemes=("https", "http"), path_allowed=True)
    rule("registry_mirror_checksums", check_checksums)
    rule("registry_mirror_local_cache_dir", check_path, "cache", home)
    rule("registry_mirror_bind_address", check_bind_address)
    for name in ("registry_mirror_tls_certificate", "registry_mirror_tls_key", "registry_mirror_tls_ca"):
        rule(name, check_path, "file")
    for name in ("registry_mirror_storage_dir", "registry_mirror_config_dir"):
        rule(name, check_path, "directory")
    for name in ("registry_mirror_tier_tls_certificate", "registry_mirror_tier_tls_key", "registry_mirror_tier_ca"):
        if values.get(name):  # "" : not given
            rule(name, check_path, "file")
    rule("registry_mirror_fleet_ca_dir", check_path, "cache", home,
         advice="choose a directory of its own, such as ~/.local/share/actuated.registry/fleet-ca")
    rule("registry_mirror_tier_names", check_tier_names)
    rule("registry_mirror_upstream_url", check_url, schemes=("https", "http"), path_allowed=False,
         allow_http=bool(values.get("registry_mirror_upstream_allow_http")))
    rule("registry_mirror_proxy_ttl", check_duration)
    rule("registry_mirror_user", check_account, "user")
    rule("registry_mirror_group", check_account, "group")
    for name, (lowest, highest, unit) in _RANGES.items():
        rule(name, check_range, lowest, highest, unit)
    for name, text in check_credentials(values.get("registry_mirror_dockerhub_username", ""),
                                        values.get("registry_mirror_dockerhub_token", "")):
        problem(name, text)
    valid = {name: value for name, value in values.items() if name not in failed}
    errors.extend(_conflicts(valid))
    upstreams = normalise_upstreams(valid)
    errors.extend(upstreams.errors)
    warnings.extend(upstreams.warnings)
    tiers, tier_users = normalise_tiers(valid), normalise_tier_users(valid)
    errors.extend(tiers.errors + tier_users.errors)
    fleet_errors, fleet_warnings = _fleet_conflicts(values, valid, tiers.entries)
    errors.extend(fleet_errors)
    warnings.extend(fleet_warnings)
    unknown = unknown_variables(defined, spec)
    if values.get("registry_mirror_unknown_variables", "fail") == "warn":
        warnings.extend(unknown)
    else:
        errors.extend(message + " (registry_mirror_unknown_variables: warn turns this into a warning)" for message in unknown)
    if (values.get("registry_mirror_dockerhub_username") and not check_version(values.get("registry_mirror_version", ""))
            and version_tuple(values["registry_mirror_version"]) < (3, 1, 0)):
        warnings.append(f"registry_mirror_version {values['registry_mirror_version']} is older than 3.1.0: with a Docker "
                        "Hub token configured, its proxy may send the token to whatever token realm the upstream names "
                        "(CVE-2026-33540). Use 3.1.1 or later.")
    controller_dirs = {name: controller_path(valid[name], home) for name in CONTROLLER_DIRS if name in valid}
    return Report(errors, warnings, upstreams.upstreams, tiers.entries, tier_users.entries, controller_dirs)


def _conflicts(values: t.Mapping[str, t.Any]) -> list:
    """Values that are valid alone but not together."""
    errors = []
    get = values.get
    storage, config = get("registry_mirror_storage_dir"), get("registry_mirror_config_dir")
    if storage and config:
        if storage == config:
            errors.append(f"registry_mirror_storage_dir and registry_mirror_config_dir are both {storage}: the cache "
                          "(the service user's) and the configuration (root's) need directories of their own")
        else:
            for inner, outer in (("storage", "config"), ("config", "storage")):
                inner_dir, outer_dir = get(f"registry_mirror_{inner}_dir"), get(f"registry_mirror_{outer}_dir")
                if inner_dir.startswith(outer_dir + "/"):
                    errors.append(f"registry_mirror_{inner}_dir ({inner_dir}) is nested in registry_mirror_{outer}_dir "
                                  f"({outer_dir}): the cache (the service user's) and the configuration (root's) need "
                                  "separate directories")
    if get("registry_mirror_metrics_enabled") and get("registry_mirror_metrics_port", -1) == get("registry_mirror_port"):
        errors.append(f"registry_mirror_metrics_port is {get('registry_mirror_port')}, the same as registry_mirror_port: "
                      "the metrics listener needs a port of its own")
    supervisor_port = get("registry_mirror_supervisor_port", -1)
    for name in ("registry_mirror_port", "registry_mirror_metrics_port"):
        if supervisor_port == get(name) and (name == "registry_mirror_port" or get("registry_mirror_metrics_enabled")):
            errors.append(f"registry_mirror_supervisor_port is {supervisor_port}, the same as {name}: the supervisor's "
                          "listener needs a port of its own")
    if get("registry_mirror_cert_fail_when_expiring") and get("registry_mirror_cert_min_valid_days") == 0:
        errors.append("registry_mirror_cert_fail_when_expiring is true but registry_mirror_cert_min_valid_days is 0, "
                      "which turns the expiry check off: set a number of days")
    user, group = get("registry_mirror_user"), get("registry_mirror_group")
    for name in get("registry_mirror_existing_accounts") or []:
        if not isinstance(name, str) or check_account(name, "account"):
            errors.append(f"registry_mirror_existing_accounts lists {show(name)}, which is not a valid account name "
                          "other than root")
        elif name not in (user, group):
            errors.append(f"registry_mirror_existing_accounts lists {show(name)}, which is neither registry_mirror_user "
                          f"({user}) nor registry_mirror_group ({group})")
    return errors


# ---- What the host has ---------------------------------------------------------------------------------------------


class Account(t.NamedTuple):
    """A passwd or group entry."""

    name: str
    id: int
    gid: int
    comment: str


class PathState(t.NamedTuple):
    """What the host has at a path the role would create (the inspection command's "path" line)."""

    given: str
    real: str
    link: bool
    kind: str
    uid: int
    gid: int
    owner: str
    group: str
    ancestor: str
    ancestor_kind: str


class HostReport(t.NamedTuple):
    """The inspection command's output, parsed."""

    user: Account | None
    group: Account | None
    paths: dict
    unit_installed: bool
    active: str


def parse_host_report(text: str) -> HostReport:
    """Parse the output of the role's inspection command: tab-separated lines

        user   <getent passwd line, or nothing>
        group  <getent group line, or nothing>
        unit   installed|absent   <systemctl is-active>
        path   GIVEN REAL link|- KIND UID GID OWNER GROUP ANCESTOR ANCESTOR_KIND   (KIND '-' when absent)
    """
    user = group = None
    paths = {}
    unit_installed, active = False, "unknown"
    for line in text.splitlines():
        fields = line.split("\t")
        tag = fields[0]
        if tag == "user" and len(fields) > 1 and fields[1].count(":") >= 6:
            name, _x, uid, gid, comment = fields[1].split(":")[:5]
            user = Account(name, int(uid), int(gid), comment.split(",")[0])
        elif tag == "group" and len(fields) > 1 and fields[1].count(":") >= 3:
            name, _x, gid = fields[1].split(":")[:3]
            group = Account(name, int(gid), int(gid), "")
        elif tag == "unit" and len(fields) >= 3:
            unit_installed, active = fields[1] == "installed", fields[2] or "unknown"
        elif tag == "path" and len(fields) >= 11:
            given, real, link, kind, uid, gid, owner, grp, ancestor, ancestor_kind = fields[1:11]
            paths[given] = PathState(given, real, link == "link", kind,
                                     int(uid) if uid.isdigit() else -1, int(gid) if gid.isdigit() else -1,
                                     owner, grp, ancestor, ancestor_kind)
    return HostReport(user, group, paths, unit_installed, active)


def check_host(values: t.Mapping[str, t.Any], host: HostReport) -> list:
    """Every rule that needs what the host has: the accounts and the directories the role would create or take."""
    errors = []
    user, group = values["registry_mirror_user"], values["registry_mirror_group"]
    allowed = set(values.get("registry_mirror_existing_accounts") or [])
    hint = "choose another name, or list it in registry_mirror_existing_accounts to run the mirror as it (the role never changes it)"
    found_user, found_group = host.user, host.group
    ours = found_user is not None and found_user.comment == ACCOUNT_COMMENT
    if found_user is not None and found_user.id == 0:
        errors.append(f"registry_mirror_user is {user}, an account with uid 0 (root): the registry must run unprivileged")
    elif found_user is not None and not ours and user not in allowed:
        errors.append(f"registry_mirror_user is {user}, an existing account (uid {found_user.id}) that this role did not "
                      f"create: {hint}")
    if found_group is not None and found_group.id == 0:
        errors.append(f"registry_mirror_group is {group}, a group with gid 0 (root): the registry must run unprivileged")
    elif found_user is not None and (found_group is None or found_group.id != found_user.gid):
        errors.append(f"registry_mirror_group is {group}"
                      + (", which does not exist," if found_group is None else f" (gid {found_group.id})")
                      + f" but the existing user {user} has the primary group gid {found_user.gid}: the role never changes "
                      "an existing account; set registry_mirror_group to that group")
    elif found_group is not None and found_user is None and group not in allowed:
        errors.append(f"registry_mirror_group is {group}, an existing group (gid {found_group.id}) that this role did not "
                      f"create: {hint}")
    directories = [("registry_mirror_storage_dir", values["registry_mirror_storage_dir"], True),
                   ("registry_mirror_config_dir", values["registry_mirror_config_dir"], False)]
    # Each further upstream's cache, as the input checks normalised it (the inspection command reports the same paths).
    directories += [(f"{UPSTREAMS}[{entry['name']}].storage_dir", entry["storage_dir"], True)
                    for entry in normalise_upstreams(values).upstreams]
    for name, path, cache in directories:
        state = host.paths.get(path)
        if state is not None:
            errors.extend(f"{name} {text}" for text in _check_directory(cache, state, found_user, found_group, user, group))
    return errors


def _check_directory(cache: bool, state: PathState, found_user: Account | None, found_group: Account | None,
                     user: str, group: str) -> list:
    """Problems of a directory the role would create, or take over when it already made it. CACHE: a storage
    directory (the service user's), else the configuration directory (root's)."""
    given = state.given
    if not state.real:
        return [f"is {given}, which cannot be resolved on this host (a symbolic link loop?)"]
    if state.link:
        return [f"is {given}, a symbolic link on this host (to {state.real}): give the real directory"]
    if state.real != given:
        reason = system_directory(state.real) or forbidden_tree(state.real)
        if reason:
            return [f"is {given}, which resolves to {state.real} on this host (through a symbolic link), {reason}"]
    if state.kind == "-":
        if state.ancestor_kind != "directory":
            return [f"is {given}, but {state.ancestor} is a {state.ancestor_kind} on this host, not a directory"]
        return []
    if state.kind != "directory":
        return [f"is {given}, which is a {state.kind} on this host, not a directory"]
    owner = f"{state.owner}:{state.group} (uid {state.uid}, gid {state.gid})"
    advice = "the role only takes over directories it created for the mirror; choose a directory that does not exist yet"
    if cache:
        if found_user is None or state.uid != found_user.id:
            return [f"is {given}, which exists and belongs to {owner}, not to the service user {user}: {advice}"]
    elif state.uid != 0 or found_group is None or state.gid != found_group.id:
        return [f"is {given}, which exists and belongs to {owner}, not to root:{group}: {advice}"]
    return []
