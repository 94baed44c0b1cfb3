# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller only (the validate_inputs action plugin), with the Python standard library alone.

"""The variables that are lists of dictionaries (registry_mirror_upstreams, registry_mirror_tiers,
registry_mirror_tier_users): the keys of their entries, which of them are secrets, how messages name an entry, and
the checks every entry gets (unknown keys, types, required keys)."""

from __future__ import annotations

import difflib
import re
import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import (
    SECRET_VARIABLES, coerce, show, token_kind)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_htpasswd import username_problem

UPSTREAMS = "registry_mirror_upstreams"
TIERS = "registry_mirror_tiers"
TIER_USERS = "registry_mirror_tier_users"
# The keys of an upstream and their argument_specs types, in the order of a normalised entry (meta/argument_specs.yml
# lists the same keys as the option's suboptions).
UPSTREAM_OPTIONS = {
    "name": "str", "url": "str", "registry": "str", "port": "int", "metrics_port": "int", "supervisor_port": "int",
    "ttl": "str", "storage_dir": "path", "cache_budget_mb": "int", "cache_budget_percent": "int", "allow_http": "bool",
    "username": "str", "password": "str",
}
UPSTREAM_REQUIRED = ("name", "url", "port")
# Never shown, never returned: the normalised entry says only whether it has them (credentials), under which
# environment variable prefix the role writes them (credentials_env) and where they are (index).
UPSTREAM_SECRETS = ("username", "password")
# The name of the Docker Hub mirror in the model (validate()'s primary) and in registry-supervisor's group mode (its
# PRIMARY_NAME): no upstream may take it.
PRIMARY_NAME = "docker-hub"
_UPSTREAM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# Keys people write for another one (difflib would not find these).
_UPSTREAM_KEY_ALIASES = {"token": "password", "user": "username", "remoteurl": "url", "proxy_ttl": "ttl",
                         "storage": "storage_dir", "host": "registry"}
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
_TIER_KEY_ALIASES = {"token": "password", "user": "username", "remoteurl": "url", "host": "url", "address": "url",
                     "name": "url"}
_TIER_USER_KEY_ALIASES = {"token": "password", "user": "username", "name": "username", "login": "username",
                          "pass": "password", "passwd": "password"}


def upstream_name_problem(name: str) -> str | None:
    """Why NAME cannot name an upstream, or None."""
    if not _UPSTREAM_NAME.fullmatch(name) or name.endswith("-"):
        return (f"is {show(name)}, which is not a valid upstream name: a lower-case letter, then up to 30 lower-case "
                "letters, digits or -, not ending in - (it names the upstream's directories and journal lines)")
    if name == PRIMARY_NAME:
        return f"is {name}, the name of the Docker Hub mirror (registry_mirror_upstream_url): choose another name"
    return None


class EntryKind(t.NamedTuple):
    """The entries of a variable that is a list of dictionaries."""

    what: str  # one entry, in messages ("an upstream")
    options: t.Mapping[str, str]  # key: argument_specs type
    required: tuple
    secrets: tuple  # never shown, never returned
    label_key: str  # the key whose valid value names the entry in messages; "" for the index
    label_problem: t.Callable[[str], t.Optional[str]]  # why a value of label_key cannot label the entry
    aliases: t.Mapping[str, str]  # keys people write for another one


ENTRY_LISTS = {
    UPSTREAMS: EntryKind("an upstream", UPSTREAM_OPTIONS, UPSTREAM_REQUIRED, UPSTREAM_SECRETS, "name",
                         upstream_name_problem, _UPSTREAM_KEY_ALIASES),
    TIERS: EntryKind("a tier", TIER_OPTIONS, TIER_REQUIRED, TIER_SECRETS, "", lambda _v: "", _TIER_KEY_ALIASES),
    TIER_USERS: EntryKind("a tier user", TIER_USER_OPTIONS, TIER_USER_REQUIRED, TIER_USER_SECRETS, "username",
                          username_problem, _TIER_USER_KEY_ALIASES),
}
# Variables that hold a secret somewhere inside: a templating error about them is not shown either.
VARIABLES_WITH_SECRETS = SECRET_VARIABLES | set(ENTRY_LISTS)
# A label shown inside [...]: no bracket, quote, space or anything a terminal would interpret.
_LABEL = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")


def entry_label(variable: str, index: int, item: t.Any, taken: t.Container[str] = ()) -> str:
    """How messages name an entry of the list VARIABLE (a key of ENTRY_LISTS): VARIABLE[LABEL] when the entry has a
    valid label of its own (an upstream's name, a tier user's user name) that no earlier entry took and that does not
    look like a token (token_kind(): never shown), else VARIABLE[INDEX] (0-based, as in a template)."""
    kind = ENTRY_LISTS[variable]
    label = item.get(kind.label_key) if kind.label_key and isinstance(item, dict) else None
    if (isinstance(label, str) and kind.label_problem(label) is None and _LABEL.fullmatch(label) and label not in taken
            and token_kind(label) is None):
        return f"{variable}[{label}]"
    return f"{variable}[{index}]"


def unknown_keys(label: str, item: dict, variable: str) -> list:
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


def given_fields(label: str, item: dict, variable: str) -> tuple[dict, list]:
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
