# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""Files on the managed host, as the collection's modules write them: the mode, owner and group options, reading a
regular file without following a link, and an atomic write (a temporary file beside the target with its final owner,
group and mode, optionally checked by a command, then renamed over it). Standard library only."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import tempfile
import typing as t


class FileError(Exception):
    """A problem to report as the module's failure message; REASON: the cause alone, without the path (for a caller's
    own message)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def parse_mode(value: t.Any) -> int:
    """The octal mode of a ``mode`` option: an int (YAML's 0640) or an octal string."""
    if isinstance(value, bool):
        raise FileError(f"mode must be an octal mode such as '0640', not {value!r}")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value.strip()):
        mode = int(value.strip().replace("o", ""), 8)
    else:
        raise FileError(f"mode must be an octal mode such as '0640' (symbolic modes are not supported), not {value!r}")
    if not 0 <= mode <= 0o7777:
        raise FileError(f"mode {value!r} is out of range (0000-7777)")
    return mode


def _resolve(kind: str, value: str | None, lookup: t.Callable[[str], t.Any]) -> int | None:
    """The numeric id of the account VALUE of KIND (owner: a user, group: a group), by name or as a number."""
    if value is None:
        return None
    try:
        return int(lookup(value)[2])  # pw_uid, gr_gid
    except KeyError:
        if value.isdigit():
            return int(value)
    raise FileError(f"{kind} {value!r} does not exist on this host")


def resolve_owner(owner: str | None) -> int | None:
    return _resolve("owner", owner, pwd.getpwnam)


def resolve_group(group: str | None) -> int | None:
    return _resolve("group", group, grp.getgrnam)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def read_existing(path: str) -> tuple[bytes | None, os.stat_result | None]:
    """The content and status of the file at PATH, or (None, None) when there is none. A symbolic link counts as no
    file (it is replaced, never followed); anything else that is not a regular file is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        return None, None
    if not stat.S_ISREG(st.st_mode):
        raise FileError(f"{path} exists and is not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            return handle.read(), st
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror or exc}") from exc


def attributes_differ(st: os.stat_result | None, mode: int, uid: int, gid: int) -> bool:
    """Whether an existing file's mode, owner or group differ from those wanted (no file: they do)."""
    return st is None or (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (mode, uid, gid)


def write_atomically(path: str, content: bytes, mode: int, uid: int | None = None, gid: int | None = None,
                     check: t.Callable[[str], str | None] | None = None, overwrite: bool = True) -> None:
    """Write CONTENT to a temporary file beside PATH with its final mode (and owner and group, when given); when CHECK
    is given, call it with the temporary file's path (it returns a problem, or None); then rename the file over PATH.
    Without OVERWRITE an existing PATH is never replaced (the file is hard-linked into place, which fails when PATH
    exists). Nothing is left behind when a step fails."""
    directory = os.path.dirname(os.path.abspath(path))

    def failed(reason: str) -> FileError:
        return FileError(f"cannot write {path}: {reason}", reason)

    try:
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise failed(f"cannot create a temporary file in {directory}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
            if uid is not None or gid is not None:
                os.fchown(handle.fileno(), -1 if uid is None else uid, -1 if gid is None else gid)
            os.fchmod(handle.fileno(), mode)
        problem = check(tmp_path) if check else None
        if problem:
            raise FileError(problem)
        if overwrite:
            os.replace(tmp_path, path)
        else:
            _link_new(tmp_path, path)
    except OSError as exc:
        raise failed(str(exc.strerror or exc)) from None
    finally:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """Make a rename in DIRECTORY durable; best effort (some file systems refuse to open or sync directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _link_new(tmp_path: str, path: str) -> None:
    """Put TMP_PATH in place at PATH only when nothing is there (a hard link, which fails when PATH exists)."""
    appeared = FileError(f"{path} appeared while it was being created; it was left as it is")
    try:
        os.link(tmp_path, path)
    except FileExistsError:
        raise appeared from None
    except OSError:  # a file system without hard links: the caller's lock makes the check and the rename one step
        if os.path.lexists(path):
            raise appeared from None
        os.replace(tmp_path, path)


def set_attributes(path: str, mode: int, uid: int, gid: int) -> None:
    """Set the owner, group and mode of the regular file at PATH (never through a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise FileError(f"cannot set the owner, group or mode of {path}: {exc.strerror or exc}") from exc
