# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""The rules that need what the host has (accounts, directories): the role's inspection command's output, parsed and
checked."""

from __future__ import annotations

import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import (
    ACCOUNT_COMMENT, forbidden_tree, system_directory)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_entries import UPSTREAMS
from ansible_collections.actuated.registry.plugins.module_utils._inputs_upstreams import normalise_upstreams


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
    """Every rule that needs what the host has: the accounts and the directories the role would create or take.

    With registry_mirror_state absent the role removes its files from the configuration directory, so that directory
    is checked as for an install (root's and the mirror group's: the role's); the accounts, which only an install runs
    as, and the caches, which it leaves alone, are checked only when registry_mirror_purge_cache removes the caches
    (each must then belong to the mirror's service user, an account of the mirror's)."""
    found_user, found_group = host.user, host.group
    removing = values.get("registry_mirror_state") == "absent"
    caches = not removing or bool(values.get("registry_mirror_purge_cache"))
    errors = _check_accounts(values, host) if caches else []
    user, group = values["registry_mirror_user"], values["registry_mirror_group"]
    directories = [("registry_mirror_config_dir", values["registry_mirror_config_dir"], False)]
    if caches:
        directories.insert(0, ("registry_mirror_storage_dir", values["registry_mirror_storage_dir"], True))
        # Each further upstream's cache, as the input checks normalised it (the inspection command reports the same paths).
        directories += [(f"{UPSTREAMS}[{entry['name']}].storage_dir", entry["storage_dir"], True)
                        for entry in normalise_upstreams(values).upstreams]
    for name, path, cache in directories:
        state = host.paths.get(path)
        if state is not None and not (removing and state.kind == "-"):  # nothing to remove there
            errors.extend(f"{name} {text}" for text in _check_directory(cache, state, found_user, found_group, user, group))
    return errors


def _check_accounts(values: t.Mapping[str, t.Any], host: HostReport) -> list:
    """The accounts the mirror runs as: never root, and existing ones only when the role created them or
    registry_mirror_existing_accounts lists them."""
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
