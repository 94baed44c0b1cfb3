# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""registry_mirror_upstreams checked and normalised, and every mirror's entry of the model the role renders from."""

from __future__ import annotations

import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import (
    HOSTNAME, RANGES, account_exposure_warning, check_duration, check_path, check_range, check_url, credential_problems,
    show, split_host_port, token_username_warnings)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_entries import (
    PRIMARY_NAME, UPSTREAM_OPTIONS, UPSTREAM_SECRETS, UPSTREAMS, entry_label, given_fields, unknown_keys,
    upstream_name_problem)

# An upstream's share of its filesystem when its entry does not set cache_budget_percent (argument_specs documents the
# same default; a test compares them).
UPSTREAM_BUDGET_PERCENT = 10
# What clients call Docker Hub: the mirror of registry_mirror_upstream_url serves it.
PRIMARY_REGISTRY = "docker.io"
PRIMARY_REGISTRIES = (PRIMARY_REGISTRY, "index.docker.io")
# The registry unit's runtime directory (RuntimeDirectory=registry; the role's _registry_mirror_runtime_dir, a test
# compares them): each mirror's socket for the caching front.
RUNTIME_DIR = "/run/registry"
_UPSTREAM_RANGES = {
    "port": RANGES["registry_mirror_port"],
    "metrics_port": RANGES["registry_mirror_metrics_port"],
    "supervisor_port": RANGES["registry_mirror_supervisor_port"],
    "cache_budget_mb": RANGES["registry_mirror_cache_budget_mb"],
    "cache_budget_percent": RANGES["registry_mirror_cache_budget_percent"],
}


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


def _defaults(given: dict, values: t.Mapping[str, t.Any]) -> dict:
    """How each optional key that ITEM does not set gets its value: {key: (value, how)}; a value is None when what it
    derives from is not valid (that has its own error)."""
    name, port, url = given.get("name"), given.get("port"), given.get("url")
    storage = values.get("registry_mirror_storage_dir")
    host = None
    if url is not None and not check_url(url, schemes=("https", "http"), path_allowed=False):
        host = split_host_port(url.partition("://")[2].rstrip("/"))[0].lower()
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
        if not HOSTNAME.fullmatch(value):
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
    problems = unknown_keys(label, item, UPSTREAMS)
    given, wrong_type = given_fields(label, item, UPSTREAMS)
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
    secrets, then credentials (whether it has a user name and password), credentials_env, index (its position in
    registry_mirror_upstreams from 1: where a template finds its user name and password), fallbacks (none) and its
    files (mirror_files()): the shape of primary_mirror()'s entry too."""
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
    config_dir = values.get("registry_mirror_config_dir")
    for index, (_label, fields, _defaulted, fine) in enumerate(entries):
        if fine:
            entry = {key: fields[key] for key in UPSTREAM_OPTIONS if key not in UPSTREAM_SECRETS}
            entry.update(credentials=bool(fields["username"]), credentials_env=credentials_env(fields["name"]),
                         index=index + 1, fallbacks=[])
            if config_dir is not None:  # else it has an error of its own
                entry.update(mirror_files(config_dir, fields["name"]))
            upstreams.append(entry)
    warnings = [text for label, fields, _defaulted, _fine in entries
                for text in token_username_warnings(f"{label}.username", fields.get("username", ""),
                                                    f"{label}.password")]
    warnings += [account_exposure_warning(f"{label}.username", "an account that can read public images only (for "
                                          "ghcr.io, an account with no private packages)")
                 for label, fields, _defaulted, fine in entries if fine and fields.get("username")]
    return Upstreams(upstreams, errors, warnings + _budget_warnings(values, entries))


def upstreams_dir(config_dir: str) -> str:
    """The directory of the further upstreams' directories (one per entry, named after it)."""
    return f"{config_dir}/upstreams"


def mirror_files(config_dir: str, name: str = "") -> dict:
    """Where a mirror's files are: the Docker Hub mirror's (NAME "") in the configuration directory, a further
    upstream's in its own directory below upstreams_dir(); the unix socket its registry serves the caching front on, in
    the registry unit's runtime directory (RUNTIME_DIR)."""
    where = f"{upstreams_dir(config_dir)}/{name}" if name else config_dir
    return {"config_file": f"{where}/config.yml", "settings_file": f"{where}/supervisor.json",
            "env_file": f"{where}/proxy.env", "socket": f"{RUNTIME_DIR}/{name or PRIMARY_NAME}.sock"}


def primary_mirror(values: t.Mapping[str, t.Any], tiers: t.Sequence[t.Mapping[str, t.Any]]) -> dict:
    """The Docker Hub mirror as an entry of the same shape as a normalised upstream's. VALUES: the role's variables,
    all valid; TIERS: registry_mirror_tiers normalised. On an edge with tiers it pulls through the first tier, then
    the others in order (fallbacks), then Docker Hub anonymously; its credentials (whether proxy.env is written) are
    the tiers' then, else the Docker Hub account's. index 0: not an entry of registry_mirror_upstreams."""
    hub = values["registry_mirror_upstream_url"].rstrip("/")
    fallbacks = [{"url": tier["url"], "credentials": tier["credentials_env"] if tier["credentials"] else ""}
                 for tier in tiers[1:]] + [{"url": hub, "credentials": ""}] if tiers else []
    return {
        "name": PRIMARY_NAME, "url": tiers[0]["url"] if tiers else hub, "registry": PRIMARY_REGISTRY,
        "port": values["registry_mirror_port"], "metrics_port": values["registry_mirror_metrics_port"],
        "supervisor_port": values["registry_mirror_supervisor_port"], "ttl": values["registry_mirror_proxy_ttl"],
        "storage_dir": values["registry_mirror_storage_dir"], "cache_budget_mb": values["registry_mirror_cache_budget_mb"],
        "cache_budget_percent": values["registry_mirror_cache_budget_percent"],
        "allow_http": values["registry_mirror_upstream_allow_http"],
        "credentials": (any(tier["credentials"] for tier in tiers) if tiers
                        else bool(values["registry_mirror_dockerhub_username"])),
        "credentials_env": "", "index": 0, "fallbacks": fallbacks, **mirror_files(values["registry_mirror_config_dir"]),
    }


def _port_conflicts(values: t.Mapping[str, t.Any], entries: list) -> list:
    """Every listener's port must be its own: the Docker Hub mirror's (registry_mirror_port, _supervisor_port,
    _metrics_port) and each upstream's (port, supervisor_port, metrics_port); the metrics ports too while metrics are
    off, which would break the day they are turned on. The conflicts among the Docker Hub mirror's own ports are
    _conflicts()'."""
    owners = [(name, values[name], True)
              for name in ("registry_mirror_port", "registry_mirror_supervisor_port", "registry_mirror_metrics_port")
              if name in values]
    for label, fields, defaulted, _fine in entries:
        for key in ("port", "supervisor_port", "metrics_port"):
            if key in fields:
                owners.append((f"{label}.{key}{_by_default(key, defaulted)}", fields[key], False))
    first: dict = {}
    errors = []
    for owner, port, primary in owners:
        if port not in first:
            first[port] = (owner.split(" ", 1)[0], primary)
        elif not (primary and first[port][1]):
            errors.append(f"{owner} is {port}, the same as {first[port][0]}: every listener needs a port of its own"
                          + _metrics_off(values, owner, first[port][0]))
    return errors


def _metrics_off(values: t.Mapping[str, t.Any], *owners: str) -> str:
    """For a message about a port that one of OWNERS, metrics ports among them, shares while metrics are off: why."""
    if values.get("registry_mirror_metrics_enabled") or not any("metrics_port" in owner for owner in owners):
        return ""
    return (" (metrics ports count while registry_mirror_metrics_enabled is false too: the day it is turned on, the "
            "port would be taken)")


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
    highest = RANGES["registry_mirror_cache_budget_percent"][1]
    if primary is None or not shares or primary + sum(share for _l, share in shares) <= highest:
        return []
    total = primary + sum(share for _l, share in shares)
    parts = ", ".join(f"{label}.cache_budget_percent {share}" for label, share in shares)
    return [f"{UPSTREAMS}: the caches' budgets add up to {total} percent of a filesystem (registry_mirror_cache_budget_percent "
            f"{primary}, {parts}): if they share one filesystem the caches could take more than {highest} percent of it; "
            "lower the shares, or give the upstreams a storage_dir on another filesystem"]
