# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the controller (the validate_inputs action plugin) and on managed hosts (the registry_htpasswd module),
# with the Python standard library alone.

"""What a user name and a password of distribution's htpasswd file may be: the one rule that both the role's preflight
(registry_mirror_tier_users) and the registry_htpasswd module apply, so that what the preflight accepts the module
writes. Problems are sentences that follow the name of what they are about; a password's never show its value, a
character of it or its length."""

from __future__ import annotations

from ansible_collections.actuated.registry.plugins.module_utils._inputs_basic import show

# bcrypt, which hashes the passwords of the htpasswd file, uses only the first 72 bytes of a password.
BCRYPT_MAX_BYTES = 72
MAX_USERNAME = 64
_NEWLINES = "\n\r\x85\u2028\u2029"


def _control(char: str) -> bool:
    """Whether CHAR is a C0 or C1 control character (DEL included)."""
    return ord(char) < 32 or 127 <= ord(char) < 160


def username_problem(name: str) -> str | None:
    """Why NAME cannot be the user name of an htpasswd line, or None. A user name is not secret: it is shown."""
    if name == "":
        return "is empty: give the user name the clients pull with"
    if ":" in name:
        return (f"is {show(name)}, which contains ':': the htpasswd file separates the user name from the password "
                "hash with it")
    found = []
    for char in name:
        what = ("a newline" if char in "\n\r" else "whitespace" if char in " \t"
                else "a control character" if _control(char) else "whitespace" if char.isspace()
                else "a character that is not printable" if not char.isprintable() else None)
        if what and what not in found:
            found.append(what)
    if found:
        return f"is {show(name)}, which contains {' and '.join(found)}"
    if name.startswith("#"):
        return f"is {show(name)}, which starts with '#': distribution reads such a line of the htpasswd file as a comment"
    if len(name) > MAX_USERNAME:
        return f"is {show(name)}, {len(name)} characters long: a user name has at most {MAX_USERNAME}"
    return None


def password_problems(password: str) -> list:
    """What is wrong with a password, by class only: never the value, a character of it or its length."""
    if password == "":
        return ["is empty"]
    problems = []
    for char in password:
        found = "a newline" if char in _NEWLINES else "a control character" if _control(char) else None
        if found and f"contains {found} (its value is not shown)" not in problems:
            problems.append(f"contains {found} (its value is not shown)")
    if len(password.encode("utf-8")) > BCRYPT_MAX_BYTES:
        problems.append(f"is longer than {BCRYPT_MAX_BYTES} bytes (its value is not shown): bcrypt, which hashes it for "
                        f"the htpasswd file, ignores every byte after the {BCRYPT_MAX_BYTES}nd; choose a shorter one")
    return problems
