#!/usr/bin/python
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


DOCUMENTATION = r"""
module: registry_files
short_description: Write a set of files and directories with their owner, group and mode in one step
version_added: "1.0.0"
description:
  - Makes each directory of O(directories) exist with its owner, group and mode, removes each path of O(absent), and
    makes each file of O(files) hold exactly its O(files[].content), with its owner, group and mode, in that order, in
    one call on the managed host. A run that changes nothing costs one round trip, however many paths (a loop of
    M(ansible.builtin.template), M(ansible.builtin.copy) or M(ansible.builtin.file) costs one or two per path).
  - A file whose content differs is written atomically (a temporary file in the same directory, with the final owner,
    group and mode, checked by O(files[].validate) when given, then renamed over the path). A file whose content is
    right but whose owner, group or mode is not gets them set. A symbolic link at a path is replaced by a regular file,
    never followed.
  - Every file's arguments are checked before anything is written. Files are written in the order given; when one
    fails (its directory is missing, its check refuses it), the files before it stay written and the module fails
    naming the file; the C(actuated.registry.registry_mirror) role puts back every file of a failed run.
  - With C(no_log) on the task, nothing of the contents appears in the output at any verbosity; without it, the
    module's C(invocation) shows each content's size and SHA-256, never the content.
author:
  - actuated.registry contributors (@self-actuated)
options:
  directories:
    description:
      - Directories to create (with missing parents, which get mode V(0755) and the module's user and group) or whose
        owner, group and mode to set. A symbolic link to a directory is followed, as M(ansible.builtin.file) does.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path of the directory.
        type: path
        required: true
      mode:
        description: Permissions, in octal, as a string (V("0750")) or an octal number.
        type: raw
        required: true
      owner:
        description: User name or numeric id that owns it; not set, an existing directory keeps its owner.
        type: str
      group:
        description: Group name or numeric id; not set, an existing directory keeps its group.
        type: str
  absent:
    description:
      - Paths to remove, each a file or a symbolic link (not its target), or a directory with everything in it.
    type: list
    elements: path
    default: []
  files:
    description:
      - The files, each with its absolute path and content.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description:
          - Absolute path of the file on the managed host. Its directory must exist.
        type: path
        required: true
      content:
        description:
          - The file's text, written as UTF-8, for example from C(lookup('ansible.builtin.template', ...)).
        type: str
        required: true
      mode:
        description:
          - Permissions of the file, in octal, as a string (V("0640")) or an octal number as YAML reads it (V(0640)).
        type: raw
        required: true
      owner:
        description:
          - User name or numeric id that owns the file. When not set, an existing file keeps its owner and a new one
            belongs to the user the module runs as.
        type: str
      group:
        description:
          - Group name or numeric id of the file. When not set, an existing file keeps its group and a new one gets
            the module's primary group.
        type: str
      validate:
        description:
          - A command that checks the new content before it replaces the file, run only when the content changes.
            C(%s) in it is replaced by the path of the temporary file (required). It runs without a shell; a non-zero
            exit refuses the file and leaves the old one.
        type: str
extends_documentation_fragment: [actuated.registry.attributes]
attributes:
  check_mode:
    details:
      - In check mode the module reads the files and reports what would change; it writes nothing and runs no
        O(files[].validate) command. An owner or group that does not exist yet (the run would create it) is not an
        error in check mode; every path that should have it is reported as changing.
  diff_mode:
    details:
      - One diff per changed file, with the content before and after (a file that is not text shows its size), and its
        owner, group and mode when they change. Use C(diff=false) on a task whose files hold secrets.
notes:
  - Standard library only on the managed host (Python 3.8 or newer).
seealso:
  - module: ansible.builtin.template
  - module: ansible.builtin.copy
"""

EXAMPLES = r"""
---
- name: Install the units in one step
  actuated.registry.registry_files:
    files:
      - path: /etc/systemd/system/registry.service
        content: "{{ lookup('ansible.builtin.template', 'registry.service.j2') }}"
        owner: root
        group: root
        mode: "0644"
      - path: /etc/registry/config.yml
        content: "{{ lookup('ansible.builtin.template', 'config.yml.j2') }}"
        group: registry
        mode: "0640"
        validate: /usr/local/bin/registry-check-config %s
  notify: Restart registry
"""

RETURN = r"""
changed_files:
  description: The paths that were created, written, removed or got another owner, group or mode (in check mode, that
    would be).
  returned: success
  type: list
  elements: str
  sample: [/etc/systemd/system/registry.service]
"""

import hashlib
import os
import shlex
import shutil
import stat
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.actuated.registry.plugins.module_utils._files import (
    FileError, attributes_differ, group_name, parse_mode, read_existing, resolve_group, resolve_owner, set_attributes,
    user_name, write_atomically)


class Wanted(t.NamedTuple):
    """One path as the arguments ask for it, checked: a file (content bytes) or a directory (content None)."""

    path: str
    content: bytes | None
    mode: int
    uid: int | None
    gid: int | None
    validate: list[str] | None


# In check mode, the id of an owner or group that does not exist yet (the run that creates it is being checked): every
# path that should have it differs.
NOT_YET_CREATED = -2


def wanted_paths(params: dict[str, t.Any], check_mode: bool = False) -> tuple[list[Wanted], list[Wanted], list[str]]:
    """The directories and the files of the arguments, and every problem with them (all of them, before anything is
    written)."""
    out: dict[str, list[Wanted]] = {"directories": [], "files": []}
    problems: list[str] = []
    seen: set[str] = set()
    for option in ("directories", "files"):
        for entry in params[option]:
            path = entry["path"]
            found: dict[str, t.Any] = {}
            if not os.path.isabs(path):
                problems.append(f"{path}: the path must be absolute")
            if path in seen:
                problems.append(f"{path}: listed twice")
            seen.add(path)
            for key, parse in (("mode", parse_mode), ("owner", resolve_owner), ("group", resolve_group)):
                try:
                    found[key] = parse(entry[key])
                except FileError as exc:
                    if check_mode and key != "mode" and str(exc).endswith("does not exist on this host"):
                        found[key] = NOT_YET_CREATED
                    else:
                        problems.append(f"{path}: {exc}")
            argv = None
            if entry.get("validate"):
                argv = shlex.split(entry["validate"])
                if not any("%s" in arg for arg in argv):
                    problems.append(f"{path}: validate must contain %s (the new file's path)")
            if len(found) == 3:
                content = entry["content"].encode("utf-8") if option == "files" else None
                out[option].append(Wanted(path, content, found["mode"], found["owner"], found["group"], argv))
    for path in params["absent"]:
        if not os.path.isabs(path) or os.path.normpath(path) == "/":
            problems.append(f"{path}: a path to remove must be absolute, and not /")
        if path in seen:
            problems.append(f"{path}: listed twice")
        seen.add(path)
    return out["directories"], out["files"], problems


def _text(content: bytes | None) -> str:
    if content is None:
        return ""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(content)} bytes, not UTF-8 text)\n"


def _attributes(mode: int, uid: int, gid: int) -> str:
    def name(number: int, lookup: t.Callable[[int], str]) -> str:
        return "(an account not created yet)" if number == NOT_YET_CREATED else lookup(number)

    return f"mode: {mode:04o}, owner: {name(uid, user_name)}, group: {name(gid, group_name)}"


class Files:
    """One run of the module."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.changed: list[str] = []
        self.diffs: list[dict[str, str]] = []

    def fail(self, msg: str) -> t.NoReturn:
        """Fail naming what was already changed."""
        self.module.fail_json(msg=msg, changed=bool(self.changed), changed_files=self.changed,
                              invocation=self.invocation())

    def invocation(self) -> dict[str, t.Any]:
        """The arguments as the output shows them: each content as its size and digest (nothing with no_log)."""
        if self.module.no_log:
            return {}
        shown = []
        for entry in self.module.params["files"]:
            data = entry["content"].encode("utf-8")
            shown.append({**entry, "content": f"({len(data)} bytes, sha256:{hashlib.sha256(data).hexdigest()})"})
        return {"module_args": {**self.module.params, "files": shown}}

    def note(self, path: str, before: str, after: str) -> None:
        """PATH changes (or would, in check mode), from BEFORE to AFTER (the diff's texts)."""
        self.changed.append(path)
        if self.module._diff:  # pylint: disable=protected-access
            self.diffs.append({"before": before, "after": after, "before_header": path, "after_header": path})

    def run_check(self, argv: list[str], tmp_path: str) -> str | None:
        """Run a validate command on the temporary file; the problem when it refuses it."""
        rc, out, err = self.module.run_command([arg.replace("%s", tmp_path) for arg in argv])
        if rc == 0:
            return None
        said = (err or out).strip().splitlines()
        return f"the check refused it (exit {rc}){': ' + said[-1] if said else ''}"

    def directory(self, want: Wanted) -> None:
        """Create the directory WANT, or set its owner, group and mode."""
        try:
            st = os.stat(want.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise FileError(f"cannot inspect {want.path}: {exc.strerror or exc}") from exc
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise FileError(f"{want.path} exists and is not a directory")
        uid = want.uid if want.uid is not None else (st.st_uid if st else os.geteuid())
        gid = want.gid if want.gid is not None else (st.st_gid if st else os.getegid())
        if not attributes_differ(st, want.mode, uid, gid):
            return
        before = "(absent)\n" if st is None else f"directory, {_attributes(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)}\n"
        self.note(want.path, before, f"directory, {_attributes(want.mode, uid, gid)}\n")
        if self.module.check_mode:
            return
        try:
            if st is None:
                os.makedirs(want.path, mode=0o755)  # missing parents: 0755 (less the umask), as mkdir -p
            os.chown(want.path, uid, gid)
            os.chmod(want.path, want.mode)
        except OSError as exc:
            raise FileError(f"cannot create or set up the directory {want.path}: {exc.strerror or exc}") from exc

    def remove(self, path: str) -> None:
        """Remove the file, link or directory tree at PATH when there is one."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise FileError(f"cannot inspect {path}: {exc.strerror or exc}") from exc
        tree = stat.S_ISDIR(st.st_mode)
        self.note(path, "directory (with its contents)\n" if tree else "present\n", "(absent)\n")
        if self.module.check_mode:
            return
        try:
            if tree:
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as exc:
            raise FileError(f"cannot remove {path}: {exc.strerror or exc}") from exc

    def file(self, want: Wanted) -> None:
        """Make the file WANT hold its content, owner, group and mode."""
        if want.content is None:  # wanted_paths() gives every file its content
            raise FileError(f"{want.path}: no content")
        directory = os.path.dirname(want.path)
        if not os.path.isdir(directory):
            if not self.module.check_mode:
                raise FileError(f"cannot write {want.path}: the directory {directory} does not exist")
            self.note(want.path, "", _text(want.content))
            return
        content, st = read_existing(want.path)
        uid = want.uid if want.uid is not None else (st.st_uid if st else os.geteuid())
        gid = want.gid if want.gid is not None else (st.st_gid if st else os.getegid())
        content_changed = content != want.content
        attributes_changed = attributes_differ(st, want.mode, uid, gid)
        if not content_changed and not attributes_changed:
            return
        before, after = _text(content), _text(want.content)
        if st is not None and attributes_changed:
            before += f"# {_attributes(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)}\n"
            after += f"# {_attributes(want.mode, uid, gid)}\n"
        self.note(want.path, before, after)
        if self.module.check_mode:
            return
        if content_changed:
            argv = want.validate
            write_atomically(want.path, want.content, want.mode, uid, gid,
                             check=(lambda tmp: self.run_check(argv, tmp)) if argv else None)
        else:
            set_attributes(want.path, want.mode, uid, gid)

    def run(self) -> None:
        directories, files, problems = wanted_paths(self.module.params, self.module.check_mode)
        if problems:
            self.fail(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} with the arguments; nothing was "
                      f"changed:\n- " + "\n- ".join(problems))
        steps: list[tuple[t.Callable[[t.Any], None], t.Any]] = [
            *((self.directory, want) for want in directories),
            *((self.remove, path) for path in self.module.params["absent"]),
            *((self.file, want) for want in files)]
        for step, what in steps:
            done = len(self.changed)
            try:
                step(what)
            except FileError as exc:
                del self.changed[done:]  # the failed one did not change
                path = getattr(what, "path", what)
                self.fail(str(exc) if str(exc).startswith("cannot") else f"cannot write {path}: {exc}")
        result: dict[str, t.Any] = {"changed": bool(self.changed), "changed_files": self.changed,
                                    "invocation": self.invocation()}
        if self.diffs:
            result["diff"] = self.diffs
        self.module.exit_json(**result)


def main() -> None:
    attributes = {"mode": {"type": "raw", "required": True}, "owner": {"type": "str"}, "group": {"type": "str"}}
    module = AnsibleModule(
        argument_spec={
            "directories": {"type": "list", "elements": "dict", "default": [],
                            "options": {"path": {"type": "path", "required": True}, **attributes}},
            "absent": {"type": "list", "elements": "path", "default": []},
            "files": {"type": "list", "elements": "dict", "default": [],
                      "options": {"path": {"type": "path", "required": True},
                                  "content": {"type": "str", "required": True},
                                  "validate": {"type": "str"}, **attributes}},
        },
        supports_check_mode=True,
    )
    Files(module).run()


if __name__ == "__main__":
    main()
