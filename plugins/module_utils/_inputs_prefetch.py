# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""registry_mirror_prefetch (the Docker Hub images the mirror keeps warm) checked and normalised, alone and with the
fleet's variables."""

from __future__ import annotations

import re
import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import show
from ansible_collections.actuated.registry.plugins.module_utils._inputs_entries import (
    ENTRY_LISTS, TIER_USERS, TIERS, EntryKind, entry_label, given_fields, unknown_keys)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_fleet import MODE

PREFETCH = "registry_mirror_prefetch"
FRONT = "registry_mirror_front"
# The keys of an entry and their argument_specs types, in the order of a normalised entry (meta/argument_specs.yml
# lists the same keys as the option's suboptions, with the same defaults: a test compares them).
PREFETCH_OPTIONS = {"repository": "str", "tags": "list", "platforms": "list"}
PREFETCH_REQUIRED = ("repository",)
PREFETCH_DEFAULT_TAGS = ("latest",)
MAX_PREFETCH = 100
MAX_PREFETCH_TAGS = 20
# distribution's limit on a repository name (reference.NameTotalLengthMax).
MAX_REPOSITORY_LENGTH = 255
# The namespace of Docker Hub's official images: what a repository without one means.
OFFICIAL_NAMESPACE = "library"
# The registry host names a user may write in front of a Docker Hub repository (docker pull docker.io/alpine).
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
# distribution's repository name grammar: path components joined by /.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_COMPONENT_TEXT = ("path components of lower-case letters and digits, separated inside by ., _, __ or -, joined by /, "
                   f"at most {MAX_REPOSITORY_LENGTH} characters")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_TAG_TEXT = "a letter, digit or _, then up to 127 letters, digits, _, . or -"
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9]+(?:/[a-z0-9]+)?")
_PLATFORM_TEXT = "os/arch or os/arch/variant in lower case, such as linux/amd64 or linux/arm64/v8"
# Architectures as uname or distributions name them, and how OCI platforms (Docker Hub's image indexes) do.
_ARCHITECTURE_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armv7": "arm/v7", "armv7l": "arm/v7",
                         "armhf": "arm/v7", "armv6": "arm/v6", "armv6l": "arm/v6", "i386": "386", "i686": "386"}
# Keys people write for another one (difflib would not find these).
_PREFETCH_KEY_ALIASES = {"image": "repository", "name": "repository", "repo": "repository", "tag": "tags",
                         "version": "tags", "versions": "tags", "platform": "platforms", "arch": "platforms",
                         "archs": "platforms", "architecture": "platforms", "architectures": "platforms"}
# The entries' checks shared with the other lists of dictionaries (unknown keys, types, required keys, labels) and
# the action plugin's entry-by-entry templating errors. An entry is named by its index: a repository holds a /, which
# no label in brackets has; nothing in an entry is secret.
ENTRY_LISTS.setdefault(PREFETCH, EntryKind("an image to prefetch", PREFETCH_OPTIONS, PREFETCH_REQUIRED, (), "",
                                           lambda _v: "", _PREFETCH_KEY_ALIASES))


class Prefetch(t.NamedTuple):
    """What normalise_prefetch() found: the entries without problems (normalised) and errors."""

    entries: list
    errors: list


def repository_key(value: str) -> tuple[str, str | None]:
    """A Docker Hub repository as users write it (alpine, bitnami/redis, docker.io/library/alpine) as Docker Hub names
    it (library/alpine, bitnami/redis), or why it is none (a sentence that follows the entry's key)."""
    shown = show(value)
    if value == "":
        return "", "is empty: give a Docker Hub repository, such as alpine or bitnami/redis"
    if "@" in value:
        return "", (f"is {shown}, with a digest: give the repository alone (prefetch follows tags; give them in "
                    "tags)")
    rest = value
    first, slash, after = value.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if first.lower() not in DOCKER_HUB_HOSTS:
            return "", (f"is {shown}, an image of the registry {show(first)}: {PREFETCH} keeps images of Docker Hub warm "
                        "(the mirror of registry_mirror_upstream_url) only")
        rest = after
    name, colon, tag = rest.rpartition(":") if ":" in rest.rpartition("/")[2] else (rest, "", "")
    if colon:
        return "", (f"is {shown}, with a tag: give the repository alone ({show(name)}) and the tag in tags "
                    f"([{show(tag)}])")
    key = rest if "/" in rest else f"{OFFICIAL_NAMESPACE}/{rest}"
    components = key.split("/")
    if not all(_COMPONENT.fullmatch(part) for part in components):
        if all(_COMPONENT.fullmatch(part) for part in key.lower().split("/")):
            return "", f"is {shown}, with upper-case letters: Docker Hub's repository names are lower-case; write {show(value.lower())}"
        return "", f"is {shown}, which is not a Docker Hub repository name ({_COMPONENT_TEXT})"
    if len(key) > MAX_REPOSITORY_LENGTH:
        return "", f"is {len(key)} characters long ({key[:40]}...): a repository name has at most {MAX_REPOSITORY_LENGTH}"
    return key, None


def _tag_problem(value: t.Any) -> tuple[str, str | None]:
    """A tag as given (a string, or an integer YAML read from an unquoted one), or why it is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return "", (f"is {show(value)}, which is not a string (got {type(value).__name__}): quote tags in YAML "
                    "(unquoted, 1.10 is the number 1.1)")
    if value.startswith("sha256:"):
        return "", f"is {show(value)}, a digest: give tag names (prefetch follows tags)"
    if value.startswith(":") and _TAG.fullmatch(value[1:]):
        return "", f"is {show(value)}: write {show(value[1:])}, without the :"
    if not _TAG.fullmatch(value):
        return "", f"is {show(value)}, which is not a tag ({_TAG_TEXT})"
    return value, None


def _platform_problem(value: t.Any) -> tuple[str, str | None]:
    """A platform as given, or why it is none."""
    if not isinstance(value, str):
        return "", f"is {show(value)}, which is not a string (got {type(value).__name__}): give {_PLATFORM_TEXT}"
    parts = value.lower().split("/")
    if len(parts) == 2 and parts[1] in _ARCHITECTURE_ALIASES:  # before the grammar: linux/aarch64 would pass it
        fixed = f"{parts[0]}/{_ARCHITECTURE_ALIASES[parts[1]]}"
        return "", f"is {show(value)}: Docker Hub's image indexes call that platform {fixed}; write {show(fixed)}"
    if _PLATFORM.fullmatch(value):
        return value, None
    if _PLATFORM.fullmatch(value.lower()):
        return "", f"is {show(value)}, with upper-case letters: write {show(value.lower())}"
    return "", f"is {show(value)}, which is not a platform: give {_PLATFORM_TEXT}"


def _values(label: str, key: str, items: list, check: t.Callable[[t.Any], tuple[str, str | None]],
            what: str) -> tuple[list, list]:
    """The valid values of the list KEY of an entry (LABEL), each once, and the problems of the others."""
    found, problems = [], []
    seen: dict = {}
    for index, item in enumerate(items):
        value, trouble = check(item)
        if trouble:
            problems.append(f"{label}.{key}[{index}] {trouble}")
        elif value in seen:
            problems.append(f"{label}.{key}[{index}] is {show(value)}, the same as {label}.{key}[{seen[value]}]: give "
                            f"each {what} once")
        else:
            seen[value] = index
            found.append(value)
    return found, problems


def _entry(label: str, item: dict) -> tuple[str, dict, list]:
    """One entry: its repository normalised ("" when it has none that is valid), the entry normalised ({} when it has a
    problem) and its problems."""
    problems = unknown_keys(label, item, PREFETCH)
    fields, wrong_type = given_fields(label, item, PREFETCH)
    problems += wrong_type
    repository = ""
    if "repository" in fields:
        repository, trouble = repository_key(fields["repository"])
        if trouble:
            problems.append(f"{label}.repository {trouble}")
    tags: list = list(PREFETCH_DEFAULT_TAGS)
    if "tags" in fields:
        if not fields["tags"]:
            problems.append(f"{label}.tags is empty: give at least one tag (leave tags out for "
                            f"{', '.join(PREFETCH_DEFAULT_TAGS)})")
        elif len(fields["tags"]) > MAX_PREFETCH_TAGS:
            problems.append(f"{label}.tags lists {len(fields['tags'])} tags: at most {MAX_PREFETCH_TAGS} per repository")
        tags, found = _values(label, "tags", fields["tags"], _tag_problem, "tag")
        problems += found
    platforms, found = _values(label, "platforms", fields.get("platforms", []), _platform_problem, "platform")
    problems += found
    if problems or not repository:
        return repository, {}, problems
    return repository, {"repository": repository, "tags": tags, "platforms": platforms}, []


def normalise_prefetch(values: t.Mapping[str, t.Any]) -> Prefetch:
    """registry_mirror_prefetch checked and normalised. VALUES: the role's variables as their types (effective()),
    without those that are not valid. Each normalised entry: repository (as Docker Hub names it: alpine is
    library/alpine), tags (["latest"] when not given) and platforms ([]: the host's own), in the order given."""
    items = values.get(PREFETCH) or []
    errors = []
    if len(items) > MAX_PREFETCH:
        errors.append(f"{PREFETCH} lists {len(items)} images: at most {MAX_PREFETCH}")
    repositories: dict = {}
    entries = []
    for index, item in enumerate(items):
        label = entry_label(PREFETCH, index, item)
        if not isinstance(item, dict):
            errors.append(f"{label} must be a dictionary with repository and, optionally, tags and platforms (got "
                          f"{type(item).__name__})"
                          + (f": write {{repository: {show(item)}}}" if isinstance(item, str) else ""))
            continue
        repository, entry, problems = _entry(label, item)
        if repository:
            if repository in repositories:
                given = item["repository"]
                problems.append(f"{label}.repository is {show(given)}"
                                + ("" if given == repository else f" ({repository})")
                                + f", the same as {repositories[repository]}.repository: give each repository once, "
                                "with all its tags")
            else:
                repositories[repository] = label
        errors.extend(problems)
        if not problems and entry:
            entries.append(entry)
    return Prefetch(entries, errors)


def prefetch_conflicts(values: t.Mapping[str, t.Any]) -> list:
    """What registry_mirror_prefetch cannot be with the fleet's variables. VALUES: every variable of the right type (a
    set but invalid one is still set)."""
    if not values.get(PREFETCH):
        return []
    mode = values.get(MODE)
    if mode == "edge" and values.get(TIERS):
        return [(f"{PREFETCH} is set while {TIERS} names the site's tiers: set {PREFETCH} on the site's tiers "
                 f"({MODE}: tier): an edge pulls through them")]
    if mode == "tier" and values.get(TIER_USERS) and not values.get(FRONT, True):
        # Without the front the tier's registry itself asks the edges' accounts, of the prefetch too; behind it, the
        # front asks them and the prefetch pulls through the registry's root-only socket.
        return [f"{PREFETCH} on a tier whose registry asks for accounts ({TIER_USERS}) needs the caching front "
                f"({FRONT}: true): without it the prefetch would need one of the edges' accounts"]
    return []
