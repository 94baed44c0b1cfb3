# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""The input rules of the ``registry_mirror`` role, as pure functions, behind one ``validate``.

Nothing here touches a host, reads a file or prints a value of a secret: the functions get the role's variables
(already templated) and, for the host rules, the text that the role's inspection command printed on the host, and
return problems as sentences that start with the name of the variable they are about. ``validate`` runs every rule
that needs only the input and returns the model the role renders from; ``validate_host`` every rule that needs what
the host has (accounts, directories). The rules live by concern: ``_inputs_basic`` (characters, types, paths, URLs,
numbers, versions, secrets, unknown variables), ``_inputs_htpasswd`` (tier users, shared with the registry_htpasswd
module), ``_inputs_entries`` (the lists of dictionaries), ``_inputs_upstreams`` (registry_mirror_upstreams and each
mirror's entry of the model), ``_inputs_fleet`` (tiers and edges), ``_inputs_prefetch`` (the images the Docker Hub
mirror keeps warm), ``_inputs_host`` (what the host has).
"""

from __future__ import annotations

import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import (
    CONTROLLER_DIRS, RANGES, RESTRICTED_REALMS, SECRET_VARIABLES, account_exposure_warning, check_account,
    check_bind_address, check_checksums, check_credentials, check_duration, check_path, check_range, check_url,
    check_version, coerce, controller_path, show, token_username_warnings, unknown_variables, version_tuple)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_entries import (
    ENTRY_LISTS, VARIABLES_WITH_SECRETS, entry_label)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_fleet import (
    ACTUATED_BRIDGES, check_tier_names, fleet_conflicts, normalise_tier_users, normalise_tiers)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_host import HostReport, check_host, parse_host_report
from ansible_collections.actuated.registry.plugins.module_utils._inputs_prefetch import normalise_prefetch, prefetch_conflicts
from ansible_collections.actuated.registry.plugins.module_utils._inputs_upstreams import (
    normalise_upstreams, primary_mirror, upstreams_dir)

# What the action plugin uses besides validate() and validate_host().
__all__ = ["ENTRY_LISTS", "SECRET_VARIABLES", "VARIABLES_WITH_SECRETS", "Report", "entry_label", "parse_host_report",
           "validate", "validate_host"]


class Report(t.NamedTuple):
    """What validate() found: errors stop the run, warnings do not; the rest is the model the role renders from,
    complete only without errors. UPSTREAMS: registry_mirror_upstreams normalised (normalise_upstreams()), TIERS:
    registry_mirror_tiers normalised (normalise_tiers()), TIER_USERS: the user names of registry_mirror_tier_users,
    CONTROLLER_DIRS: the controller's directories (the download cache, the fleet CA) as the controller resolves them
    (controller_path()), keyed by variable name; PRIMARY: the Docker Hub mirror in the shape of an upstream
    (primary_mirror()); TIER_NAMES: registry_mirror_tier_names as a list; PATHS: upstreams_dir (where each further
    upstream's directory is), release_base_url (without a trailing /) and bridge_addresses (actuated's VM bridges, which
    registry_mirror_bind_address auto chooses from); PREFETCH: registry_mirror_prefetch normalised (normalise_prefetch()),
    filled, as PRIMARY, only without errors."""

    errors: list
    warnings: list
    upstreams: list
    tiers: list = []  # (the defaults are never changed in place)
    tier_users: list = []
    controller_dirs: dict = {}
    primary: dict = {}
    tier_names: list = []
    paths: dict = {}
    prefetch: list = []


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
    for name, (lowest, highest, unit) in RANGES.items():
        rule(name, check_range, lowest, highest, unit)
    for name, text in check_credentials(values.get("registry_mirror_dockerhub_username", ""),
                                        values.get("registry_mirror_dockerhub_token", "")):
        problem(name, text)
    warnings.extend(token_username_warnings("registry_mirror_dockerhub_username",
                                            values.get("registry_mirror_dockerhub_username", ""),
                                            "registry_mirror_dockerhub_token"))
    if values.get("registry_mirror_dockerhub_username") and values.get("registry_mirror_dockerhub_token"):
        warnings.append(account_exposure_warning("registry_mirror_dockerhub_username",
                                                 "a Docker Hub access token with the 'Public repos only' scope"))
    valid = {name: value for name, value in values.items() if name not in failed}
    errors.extend(_conflicts(valid))
    upstreams = normalise_upstreams(valid)
    errors.extend(upstreams.errors)
    warnings.extend(upstreams.warnings)
    tiers, tier_users = normalise_tiers(valid), normalise_tier_users(valid)
    errors.extend(tiers.errors + tier_users.errors)
    warnings.extend(tiers.warnings + tier_users.warnings)
    fleet_errors, fleet_warnings = fleet_conflicts(values, valid, tiers.entries)
    errors.extend(fleet_errors)
    warnings.extend(fleet_warnings)
    prefetch = normalise_prefetch(valid)
    errors.extend(prefetch.errors + prefetch_conflicts(values))
    unknown = unknown_variables(defined, spec)
    if values.get("registry_mirror_unknown_variables", "fail") == "warn":
        warnings.extend(unknown)
    else:
        errors.extend(message + " (registry_mirror_unknown_variables: warn turns this into a warning)" for message in unknown)
    if (values.get("registry_mirror_dockerhub_username") and not check_version(values.get("registry_mirror_version", ""))
            and version_tuple(values["registry_mirror_version"])[:2] < RESTRICTED_REALMS):
        warnings.append(f"registry_mirror_version {values['registry_mirror_version']} is older than 3.1.0: with a Docker "
                        "Hub token configured, its proxy may send the token to whatever token realm the upstream names "
                        "(CVE-2026-33540). Use 3.1.1 or later.")
    controller_dirs = {name: controller_path(valid[name], home) for name in CONTROLLER_DIRS if name in valid}
    if errors:
        return Report(errors, warnings, upstreams.upstreams, tiers.entries, tier_users.entries, controller_dirs)
    paths = {"upstreams_dir": upstreams_dir(valid["registry_mirror_config_dir"]),
             "release_base_url": valid["registry_mirror_release_base_url"].rstrip("/"),
             "bridge_addresses": list(ACTUATED_BRIDGES)}
    return Report(errors, warnings, upstreams.upstreams, tiers.entries, tier_users.entries, controller_dirs,
                  primary_mirror(valid, tiers.entries), list(valid["registry_mirror_tier_names"]), paths, prefetch.entries)


def validate_host(raw: t.Mapping[str, t.Any], spec: t.Mapping[str, t.Mapping[str, t.Any]], host: HostReport) -> Report:
    """Every rule that needs what the HOST has (parse_host_report()), for the variables RAW that validate() passed:
    the accounts and the directories the role would create or take over. Its upstreams, tiers and tier users are
    validate()'s."""
    values, errors = effective(raw, spec)
    if errors:
        return Report(errors, [], [])
    upstreams, tiers, tier_users = normalise_upstreams(values), normalise_tiers(values), normalise_tier_users(values)
    errors = upstreams.errors + tiers.errors + tier_users.errors or check_host(values, host)
    return Report(errors, [], upstreams.upstreams, tiers.entries, tier_users.entries)


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
    # The metrics port counts while metrics are off too: the day they are turned on, it would be taken.
    off = "" if get("registry_mirror_metrics_enabled") else (
        " (while registry_mirror_metrics_enabled is false too: the day it is turned on, the port would be taken)")
    if get("registry_mirror_metrics_port", -1) == get("registry_mirror_port"):
        errors.append(f"registry_mirror_metrics_port is {get('registry_mirror_port')}, the same as "
                      f"registry_mirror_port: the metrics listener needs a port of its own{off}")
    supervisor_port = get("registry_mirror_supervisor_port", -1)
    for name in ("registry_mirror_port", "registry_mirror_metrics_port"):
        if supervisor_port == get(name):
            errors.append(f"registry_mirror_supervisor_port is {supervisor_port}, the same as {name}: the supervisor's "
                          "listener needs a port of its own" + (off if name == "registry_mirror_metrics_port" else ""))
    if get("registry_mirror_purge_cache") and get("registry_mirror_state") == "present":
        errors.append("registry_mirror_purge_cache is true but registry_mirror_state is present: a run that installs "
                      "the mirror never removes its caches; set registry_mirror_state to absent to remove the mirror "
                      "and its caches")
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
