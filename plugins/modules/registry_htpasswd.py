#!/usr/bin/python
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


DOCUMENTATION = r"""
module: registry_htpasswd
short_description: Write the bcrypt htpasswd file of a distribution registry
version_added: "1.0.0"
description:
  - Writes the file that the distribution registry's C(auth.htpasswd) reads, one C(username:hash) line per user of
    O(users), in the order given. Every hash is a bcrypt hash (C($2b$)), the only kind distribution accepts.
  - The file holds exactly the users of O(users); lines of other users, comments and blank lines are removed.
  - A user keeps its existing line when the password still verifies against the existing hash and that hash has the
    cost O(cost), so that a second run with the same passwords changes nothing. Otherwise the password is hashed anew
    with a fresh random salt.
  - The file is written atomically (a temporary file in the same directory, owner, group and mode set, then renamed
    over O(path)); the directory must exist.
  - Refuses, before writing anything, a user name that is empty, contains a colon, whitespace, a control character or
    another character that is not printable, starts with C(#) or is longer than 64 characters, a duplicate user name,
    an empty password, a password with a newline or a control character and a password longer than 72 bytes in UTF-8
    (bcrypt ignores what follows). The C(actuated.registry.registry_mirror) role checks C(registry_mirror_tier_users)
    with the same rules before it changes anything.
  - Passwords and hashes are never returned, logged or shown in a diff.
author:
  - actuated.registry contributors (@self-actuated)
requirements:
  - A C(libcrypt) with bcrypt support on the managed host (libxcrypt, Debian and Ubuntu's C(libcrypt1), Fedora's
    C(libxcrypt)); the module calls its C(crypt_r) through C(ctypes). Python's C(crypt) module, where it still exists
    (before Python 3.13), is used when the library cannot be loaded.
options:
  path:
    description:
      - Absolute path on the managed host of the htpasswd file, for example V(/etc/registry/htpasswd).
      - A symbolic link at O(path) is replaced by a regular file.
    type: path
    required: true
  users:
    description:
      - The users distribution accepts, in the order of the file's lines.
      - Must not be empty.
    type: list
    elements: dict
    required: true
    suboptions:
      username:
        description:
          - The user name. Must not be empty, contain a colon, whitespace, a control character or another character
            that is not printable, start with C(#) (distribution reads such a line as a comment) or be longer than 64
            characters.
        type: str
        required: true
      password:
        description:
          - The password, at most 72 bytes in UTF-8 (bcrypt's limit), not empty, without a newline or a control
            character.
          - Never logged (the suboption is C(no_log)).
        type: str
        required: true
  owner:
    description:
      - User name or numeric id that owns the file.
      - When not set, an existing file keeps its owner and a new file belongs to the user the module runs as.
    type: str
  group:
    description:
      - Group name or numeric id of the file, for example the group the registry runs as.
      - When not set, an existing file keeps its group and a new file gets the module's primary group.
    type: str
  mode:
    description:
      - Permissions of the file, in octal, as a string (V("0640")) or an octal number as YAML reads it (V(0640)).
      - Symbolic modes (V(u=rw,g=r)) are not supported.
    type: raw
    default: "0640"
  cost:
    description:
      - The bcrypt cost (the logarithm of the number of rounds) of new hashes, from V(4) to V(14).
      - An existing hash with another cost is replaced, with the same password, by one with this cost.
    type: int
    default: 10
extends_documentation_fragment: [actuated.registry.attributes]
attributes:
  check_mode:
    details:
      - In check mode the module reads the file and verifies the passwords against it, but writes nothing.
      - When the directory of O(path) does not exist, check mode reports a change instead of failing.
  diff_mode:
    details:
      - The diff shows the user names before and after, which users get a new hash, and the file's owner, group and
        mode. It never shows a password or a hash.
notes:
  - The module needs only the Python standard library (Python 3.8 or newer, including 3.13 and newer, where Python's
    C(crypt) module no longer exists) and the system's C(libcrypt).
  - distribution (C(golang.org/x/crypto/bcrypt)) accepts C($2a$), C($2b$) and C($2y$) hashes; existing lines with any
    of them are kept when the password verifies. New hashes are C($2b$).
  - The salt of a new hash is 16 bytes from C(os.urandom), in bcrypt's base64 alphabet.
seealso:
  - module: community.general.htpasswd
    description: A general htpasswd module, which needs the C(passlib) Python library on the managed host.
"""

EXAMPLES = r"""
---
- name: Let the edge mirrors pull from this tier mirror
  actuated.registry.registry_htpasswd:
    path: /etc/registry/htpasswd
    users:
      - username: edge
        password: "{{ tier_edge_password }}"
    owner: root
    group: registry
    mode: "0640"
  notify: Restart registry

- name: Two users, a higher cost
  actuated.registry.registry_htpasswd:
    path: /etc/registry/htpasswd
    users:
      - username: edge
        password: "{{ tier_edge_password }}"
      - username: ci
        password: "{{ tier_ci_password }}"
    group: registry
    cost: 12
  register: htpasswd

- name: Show who may pull
  ansible.builtin.debug:
    msg: "{{ htpasswd.users | join(', ') }}"
"""

RETURN = r"""
users:
  description: The user names in the file, in its order (the user names of O(users)).
  returned: success
  type: list
  elements: str
  sample: ["edge", "ci"]
"""

import base64
import ctypes
import ctypes.util
import hmac
import os
import re
import stat
import threading
import typing as t
import warnings

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.actuated.registry.plugins.module_utils._files import (
    FileError, group_name, parse_mode, read_existing, resolve_group, resolve_owner, set_attributes, user_name,
    write_atomically)
from ansible_collections.actuated.registry.plugins.module_utils._inputs_htpasswd import password_problems, username_problem


MIN_COST = 4
MAX_COST = 14
NO_BCRYPT = "this host's libcrypt does not support bcrypt; install libcrypt1 (libxcrypt)"
# A bcrypt hash: $2a$/$2b$/$2y$, two cost digits, 22 salt and 31 hash characters of bcrypt's base64 alphabet.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_STD_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_B64 = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TO_BCRYPT_B64 = bytes.maketrans(_STD_B64, _BCRYPT_B64)
# Room for struct crypt_data: 32 KiB in libxcrypt, about 128 KiB in old glibc's libcrypt.
_CRYPT_DATA_SIZE = 256 * 1024


def bcrypt_salt(cost: int, random: bytes | None = None) -> str:
    """A bcrypt setting: ``$2b$``, the cost in two digits, ``$`` and 16 random bytes in bcrypt's base64.

    bcrypt's base64 has the bit order of standard base64 with another alphabet and no padding, so 16 bytes become
    22 characters; the last carries the last byte's low 2 bits followed by 4 zero bits, one of ``.Oeu``.
    """
    random = os.urandom(16) if random is None else random
    if len(random) != 16:
        raise ValueError("a bcrypt salt is 16 bytes")
    encoded = base64.b64encode(random).rstrip(b"=").translate(_TO_BCRYPT_B64).decode("ascii")
    return f"$2b${cost:02d}${encoded}"


class Crypt:
    """crypt(3) of the system's libcrypt, through ctypes (crypt_r, else crypt under a lock), else Python's crypt."""

    _lock = threading.Lock()

    def __init__(self) -> None:
        self._crypt_r: t.Any = None
        self._crypt: t.Any = None
        self._python_crypt: t.Any = None
        for library in self._libraries():
            crypt_r = getattr(library, "crypt_r", None)
            crypt = getattr(library, "crypt", None)
            if crypt_r is not None:
                crypt_r.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
                crypt_r.restype = ctypes.c_char_p
                self._crypt_r = crypt_r
                return
            if crypt is not None and self._crypt is None:
                crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
                crypt.restype = ctypes.c_char_p
                self._crypt = crypt
        if self._crypt is None:
            self._python_crypt = _python_crypt()

    @staticmethod
    def _libraries() -> t.Iterator[t.Any]:
        names = [ctypes.util.find_library("crypt"), "libcrypt.so.1", "libcrypt.so.2"]
        seen = set()
        for name in names:
            if not name or name in seen:
                continue
            seen.add(name)
            try:
                yield ctypes.CDLL(name)
            except OSError:
                continue
        try:  # musl has crypt_r in libc itself
            yield ctypes.CDLL(None)
        except OSError:
            pass

    @property
    def available(self) -> bool:
        return self._crypt_r is not None or self._crypt is not None or self._python_crypt is not None

    def __call__(self, password: str, setting: str) -> str | None:
        """crypt(password, setting), or None when the library refuses (NULL or a failure token such as ``*0``)."""
        phrase = password.encode("utf-8")
        if self._crypt_r is not None:
            data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
            out = self._crypt_r(phrase, setting.encode("ascii"), data)
        elif self._crypt is not None:
            with self._lock:
                out = self._crypt(phrase, setting.encode("ascii"))
        elif self._python_crypt is not None:
            with self._lock:
                try:
                    text = self._python_crypt.crypt(password, setting)
                except OSError:
                    text = None
            out = text.encode("ascii", "replace") if text else None
        else:
            return None
        if not out or out.startswith(b"*"):
            return None
        return out.decode("ascii", "replace")


def _python_crypt() -> t.Any:
    """Python's crypt module when it exists (it was removed in Python 3.13), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import crypt  # pylint: disable=import-outside-toplevel,deprecated-module
        return crypt
    except ImportError:
        return None


def user_problems(users: t.Sequence[t.Mapping[str, t.Any]]) -> list[str]:
    """Everything wrong with USERS, one sentence each, naming the user (or its position), never the password. The rules
    of a user name and a password are the role's preflight's too (module_utils/_inputs_htpasswd.py)."""
    problems = []
    if not users:
        problems.append("users is empty: distribution would refuse every client; give at least one user")
    seen: set[str] = set()
    for index, user in enumerate(users, 1):
        name = user["username"]
        trouble = username_problem(name)
        if trouble:
            problems.append(f"users[{index}]: the user name {trouble}")
        if name and name in seen:
            problems.append(f"users[{index}]: the user name {name!r} is given more than once")
        seen.add(name)
        problems.extend(f"the password of user {name!r} {text}" for text in password_problems(user["password"]))
    return problems


def parse_htpasswd(text: str) -> dict[str, str]:
    """The users and hashes of an htpasswd file, read as distribution reads it: lines trimmed, blank lines and lines
    starting with '#' skipped, the name up to the first ':'; a later line for a name wins."""
    entries = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, hashed = line.split(":", 1)
        entries[name] = hashed
    return entries


class Htpasswd:
    """One run of the module."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.path: str = module.params["path"]
        self.users: list[dict[str, str]] = module.params["users"]
        self.cost: int = module.params["cost"]
        self.crypt = Crypt()

    def fail(self, msg: str) -> t.NoReturn:
        self.module.fail_json(msg=msg)

    def hash_password(self, password: str) -> str:
        """A new $2b$ hash of PASSWORD with the configured cost and a fresh salt."""
        if not self.crypt.available:
            self.fail(f"cannot hash the passwords: no libcrypt found; {NO_BCRYPT}")
        hashed = self.crypt(password, bcrypt_salt(self.cost))
        if not hashed or not hashed.startswith("$2b$") or len(hashed) != 60:
            self.fail(f"cannot hash the passwords with bcrypt: {NO_BCRYPT}")
        return hashed

    def verifies(self, password: str, hashed: str) -> bool:
        """Whether PASSWORD matches the existing bcrypt HASHED."""
        if not BCRYPT_HASH.match(hashed):
            return False
        again = self.crypt(password, hashed) if self.crypt.available else None
        if again is None:
            return False
        return hmac.compare_digest(again.encode("ascii", "replace"), hashed.encode("ascii", "replace"))

    def read_existing(self) -> tuple[bytes | None, os.stat_result | None]:
        try:
            return read_existing(self.path)
        except FileError as exc:
            self.fail(str(exc))

    def run(self) -> None:
        problems = user_problems(self.users)
        cost = self.cost
        if not MIN_COST <= cost <= MAX_COST:
            problems.insert(0, f"cost must be between {MIN_COST} and {MAX_COST}, not {cost}")
        found: dict[str, t.Any] = {}
        for option, parse in (("mode", parse_mode), ("owner", resolve_owner), ("group", resolve_group)):
            try:
                found[option] = parse(self.module.params[option])
            except FileError as exc:
                problems.append(str(exc))
        if problems:
            self.fail(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} with the arguments; "
                      f"nothing was changed:\n- " + "\n- ".join(problems))

        mode, uid, gid = found["mode"], found["owner"], found["group"]
        names = [user["username"] for user in self.users]
        directory = os.path.dirname(os.path.abspath(self.path))
        directory_missing = not os.path.isdir(directory)
        if directory_missing and not self.module.check_mode:
            self.fail(f"cannot write {self.path}: the directory {directory} does not exist")

        content, st = (None, None) if directory_missing else self.read_existing()
        existing = parse_htpasswd(content.decode("utf-8", "replace")) if content is not None else {}

        lines, rehashed = [], []
        for user in self.users:
            name, password = user["username"], user["password"]
            old = existing.get(name)
            found = BCRYPT_HASH.match(old) if old else None
            verified = bool(old and found and self.verifies(password, old))
            if old and found and verified and int(found.group(1)) == cost:
                lines.append(f"{name}:{old}")
                continue
            if old and found and verified:
                rehashed.append(f"{name} (cost {int(found.group(1))} to {cost})")
            elif old:
                rehashed.append(f"{name} (new password)")
            lines.append(f"{name}:{self.hash_password(password)}")
        new_content = ("\n".join(lines) + "\n").encode("utf-8")
        # Checked as its reader reads it (parse_htpasswd reads as distribution does) before it can land: each user
        # once, in order, with a bcrypt hash.
        read_back = parse_htpasswd(new_content.decode("utf-8"))
        if list(read_back) != names or not all(BCRYPT_HASH.match(hashed) for hashed in read_back.values()):
            self.fail(f"the new {self.path} would not read back as the users given, each once with a bcrypt hash; "
                      "nothing was changed")

        want_uid = uid if uid is not None else (st.st_uid if st else os.geteuid())
        want_gid = gid if gid is not None else (st.st_gid if st else os.getegid())
        content_changed = content != new_content
        attributes_changed = st is None or (
            stat.S_IMODE(st.st_mode) != mode or st.st_uid != want_uid or st.st_gid != want_gid)
        changed = content_changed or attributes_changed

        result: dict[str, t.Any] = {"changed": changed, "users": names}
        if self.module._diff:  # pylint: disable=protected-access
            before = "" if content is None else _summary(
                list(existing), stat.S_IMODE(st.st_mode) if st else None,
                st.st_uid if st else None, st.st_gid if st else None, [])
            after = _summary(names, mode, want_uid, want_gid, rehashed)
            result["diff"] = {"before": before, "after": after,
                              "before_header": f"{self.path} (users)", "after_header": f"{self.path} (users)"}

        if changed and not self.module.check_mode:
            if content_changed:
                self.write(new_content, mode, want_uid, want_gid)
            else:
                self.set_attributes(mode, want_uid, want_gid)
        self.module.exit_json(**result)

    def write(self, content: bytes, mode: int, uid: int, gid: int) -> None:
        """Write CONTENT atomically with its owner, group and mode."""
        try:
            write_atomically(self.path, content, mode, uid, gid)
        except FileError as exc:
            self.fail(str(exc))

    def set_attributes(self, mode: int, uid: int, gid: int) -> None:
        try:
            set_attributes(self.path, mode, uid, gid)
        except FileError as exc:
            self.fail(str(exc))


def _summary(names: t.Sequence[str], mode: int | None, uid: int | None, gid: int | None,
             rehashed: t.Sequence[str]) -> str:
    """The diff's text: user names and file attributes, never a hash or a password."""
    lines = [f"users: {', '.join(names) if names else '(none)'}"]
    if rehashed:
        lines.append(f"new hashes: {', '.join(rehashed)}")
    if mode is not None:
        lines.append(f"mode: {mode:04o}")
    if uid is not None:
        lines.append(f"owner: {user_name(uid)}")
    if gid is not None:
        lines.append(f"group: {group_name(gid)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "users": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "username": {"type": "str", "required": True},
                    "password": {"type": "str", "required": True, "no_log": True},
                },
            },
            "owner": {"type": "str"},
            "group": {"type": "str"},
            "mode": {"type": "raw", "default": "0640"},
            "cost": {"type": "int", "default": 10},
        },
        supports_check_mode=True,
    )
    Htpasswd(module).run()


if __name__ == "__main__":
    main()
