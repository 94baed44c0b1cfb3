# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""The fleet's variables (registry_mirror_mode, registry_mirror_tiers, registry_mirror_tier_users, the tier's
certificate and names) checked and normalised, alone and together."""

from __future__ import annotations

import ipaddress
import re
import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import (
    HOSTNAME, PRIVATE_TEXT, check_url, credential_problems, private_address, show, token_kind, token_username_warnings)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_entries import (
    TIER_USERS, TIERS, UPSTREAMS, entry_label, given_fields, unknown_keys)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_htpasswd import password_problems, username_problem
from ansible_collections.actuated.registry.plugins.module_utils._inputs_upstreams import normalise_upstreams, url_key

MODE = "registry_mirror_mode"
BIND = "registry_mirror_bind_address"
# An edge's opt-in to listen on a private address of the host other than actuated's bridges.
BIND_ANY = "registry_mirror_bind_any_private_address"
MAX_TIERS = 8
MAX_TIER_USERS = 100
# actuated's VM bridges: where an edge listens (registry_mirror_bind_address auto picks the one the host has), never a
# tier.
ACTUATED_BRIDGES = ("192.168.128.1", "192.168.129.1")
# Variables that only a tier uses, and those that only an edge uses (set: a non-empty value).
TIER_ONLY = ("registry_mirror_tier_users", "registry_mirror_tier_tls_certificate", "registry_mirror_tier_tls_key",
             "registry_mirror_tier_names")
EDGE_ONLY = (TIERS, "registry_mirror_tier_ca")


class Normalised(t.NamedTuple):
    """What normalise_tiers() or normalise_tier_users() found: the entries without problems (normalised), errors and
    warnings."""

    entries: list
    errors: list
    warnings: list = []  # (never changed in place)


def tier_credentials_env(index: int) -> str:
    """The prefix of the environment variables (PREFIX_USERNAME, PREFIX_PASSWORD) of the credentials of the INDEXth
    tier (1-based) in the edge's root-only proxy.env."""
    return f"REGISTRY_MIRROR_TIER{index}"


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
    warnings: list = []
    for index, item in enumerate(items):
        label = entry_label(TIERS, index, item)
        if not isinstance(item, dict):
            errors.append(f"{label} must be a dictionary with url and, optionally, username and password (got "
                          f"{type(item).__name__})")
            continue
        problems = unknown_keys(label, item, TIERS)
        fields, wrong_type = given_fields(label, item, TIERS)
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
        warnings.extend(token_username_warnings(f"{label}.username", fields.get("username", ""), f"{label}.password"))
        errors.extend(problems)
        if not problems and "url" in fields:
            entries.append({"url": fields["url"], "index": index + 1, "credentials": bool(fields.get("username")),
                            "credentials_env": tier_credentials_env(index + 1)})
    return Normalised(entries, errors, warnings)


def normalise_tier_users(values: t.Mapping[str, t.Any]) -> Normalised:
    """registry_mirror_tier_users checked. Its normalised entries are the user names alone, in the order given."""
    items = values.get(TIER_USERS) or []
    errors = []
    if len(items) > MAX_TIER_USERS:
        errors.append(f"{TIER_USERS} lists {len(items)} accounts: at most {MAX_TIER_USERS} (the edges of a site share "
                      "a few accounts)")
    names: dict = {}
    entries = []
    warnings: list = []
    for index, item in enumerate(items):
        label = entry_label(TIER_USERS, index, item, names)
        if not isinstance(item, dict):
            errors.append(f"{label} must be a dictionary with username and password (got {type(item).__name__})")
            continue
        problems = unknown_keys(label, item, TIER_USERS)
        fields, wrong_type = given_fields(label, item, TIER_USERS)
        problems += wrong_type
        name = fields.get("username")
        if name is not None:
            # A user name is shown, unless it looks like a token (its label is then the index: entry_label()).
            secretish = token_kind(name) is not None
            shown = "a token-like name (not shown)" if secretish else show(name)
            trouble = username_problem(name)
            if trouble:
                hidden = "is not a valid user name, and looks like a token (its value is not shown)"
                problems.append(f"{label}.username {hidden if secretish else trouble}")
            elif name in names:
                problems.append(f"{label}.username is {shown}, the same as {names[name]}.username: every account "
                                "needs a user name of its own")
            else:
                names[name] = label
            warnings.extend(token_username_warnings(
                f"{label}.username", name, f"{label}.password",
                advice="a tier user's name is not secret (the edges' inventories hold it, and the run's result lists "
                       f"it); choose a plain name, and keep the secret in {label}.password"))
        if fields.get("password"):
            problems.extend(f"{label}.password {text}" for text in password_problems(fields["password"]))
        errors.extend(problems)
        if not problems and name is not None and fields.get("password"):
            entries.append(name)
    return Normalised(entries, errors, warnings)


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
    if not HOSTNAME.fullmatch(name) or re.fullmatch(r"[0-9.]+", name):
        return "", ("which is neither a DNS name (labels of letters, digits and -, not starting or ending with -, "
                    "separated by dots) nor an IP address")
    return name.lower(), None


def _is_set(value: t.Any) -> bool:
    """Whether a variable of the other mode is set: a non-empty value (empty: "", [], {}, None)."""
    return value not in (None, "", [], {})


def bind_problems(values: t.Mapping[str, t.Any], valid: t.Mapping[str, t.Any]) -> list:
    """Where each mode may listen, besides what check_bind_address() refuses in every mode (VALUES, VALID: as
    fleet_conflicts()'s). An edge: actuated's bridge or auto, or (with BIND_ANY) a private address of the host. A tier:
    an address other than actuated's bridge, and one that is not private only with registry_mirror_tier_users (without
    accounts, a tier serves whoever reaches it, with the operator's Docker Hub token)."""
    bind, mode = valid.get(BIND), values.get(MODE)
    if bind is None or bind == "auto" or bind in ACTUATED_BRIDGES:
        return []
    private = private_address(bind)
    bridges = " or ".join(ACTUATED_BRIDGES)
    if mode == "edge" and not private:
        return [f"{BIND} is {bind}, which is not a private address ({PRIVATE_TEXT}): an edge listens on actuated's VM "
                f"bridge ({bridges}) or auto"
                + (f"; {BIND_ANY} allows private addresses only" if values.get(BIND_ANY) else "")]
    if mode == "edge" and not values.get(BIND_ANY):
        return [f"{BIND} is {bind}, which is not actuated's VM bridge ({bridges}): an edge serves its VMs there, "
                f"without authentication; give the bridge address or auto, or set {BIND_ANY}: true to listen on this "
                "private address (anyone who reaches it can then pull through the mirror)"]
    if mode == "tier" and not private and not _is_set(values.get(TIER_USERS)):
        return [f"{BIND} is {bind}, which is not a private address ({PRIVATE_TEXT}), and {TIER_USERS} is empty: the "
                "tier would serve whoever reaches that address, with the operator's Docker Hub token (an open proxy); "
                f"set {TIER_USERS}, or listen on a private address"]
    return []


def fleet_conflicts(values: t.Mapping[str, t.Any], valid: t.Mapping[str, t.Any], tiers: list) -> tuple[list, list]:
    """Errors and warnings of the fleet variables together: the variables of the other mode, where each mode listens
    (bind_problems()), an edge's Docker Hub token, both or neither of the tier's certificate and key. VALUES: every variable of the
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
        bind = valid.get(BIND)
        if bind == "auto" or bind in ACTUATED_BRIDGES:
            what = "auto, which picks actuated's VM bridge" if bind == "auto" else f"{bind}, actuated's VM bridge"
            errors.append(f"{BIND} is {what}, but {MODE} is tier: a tier listens on the site's "
                          "private network: name its address there")
    errors.extend(bind_problems(values, valid))
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
