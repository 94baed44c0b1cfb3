# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The registry_htpasswd module: in-process for the logic, and as a real module process (stdin arguments, JSON on
stdout, Ansible's own no_log handling) where the whole output must be free of secrets."""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import json
import os
import pwd
import re
import stat
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from ansible.module_utils import basic

from ansible_collections.actuated.registry.plugins.modules import registry_htpasswd


ALICE = {"username": "alice", "password": "correct horse battery staple"}
BOB = {"username": "bob", "password": "Tr0ub4dor&3"}
# What distribution's Go bcrypt reads: $2a$/$2b$/$2y$, two cost digits, 53 characters of bcrypt's base64.
Run = t.Callable[..., t.Dict[str, t.Any]]
HASH = re.compile(r"^\$2b\$(\d\d)\$[./A-Za-z0-9]{53}$")
# ansible-core 2.21 returns the module's arguments (the invocation) only when asked; older ones always do.
INJECT_INVOCATION = "_ansible_inject_invocation" in Path(basic.__file__).read_text(encoding="utf-8")


@pytest.fixture
def run(module_runner: t.Any) -> t.Callable[..., dict[str, t.Any]]:
    def _run(check_mode: bool = False, diff: bool = False, **args: t.Any) -> dict[str, t.Any]:
        args.setdefault("cost", 4)  # the fastest cost; test_the_hash_is_what_distribution_reads uses 10
        return dict(module_runner(registry_htpasswd.main, check_mode=check_mode, diff=diff, **args))

    return _run


def run_process(*, check_mode: bool = False, diff: bool = False, **args: t.Any) -> tuple[dict[str, t.Any], str]:
    """The module as Ansible runs it: a process reading its arguments, printing its whole result as JSON."""
    module_args = {key: (str(value) if isinstance(value, Path) else value) for key, value in args.items()}
    module_args.setdefault("cost", 4)
    module_args.update(_ansible_check_mode=check_mode, _ansible_diff=diff)
    if INJECT_INVOCATION:
        module_args["_ansible_inject_invocation"] = True
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.actuated.registry.plugins.modules.registry_htpasswd"],
        input=json.dumps({"ANSIBLE_MODULE_ARGS": module_args}), capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return json.loads(proc.stdout), proc.stdout + proc.stderr


def libcrypt_crypt(password: str, setting: str) -> str:
    """crypt(3) of the system's libcrypt, independently of the module's own ctypes code."""
    library = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    library.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    library.crypt.restype = ctypes.c_char_p
    out = library.crypt(password.encode(), setting.encode())
    assert out is not None
    return t.cast(bytes, out).decode()


def entries(path: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "registry" / "htpasswd"


@pytest.fixture(autouse=True)
def _needs_bcrypt() -> None:
    if not registry_htpasswd.Crypt().available or registry_htpasswd.Crypt()("x", registry_htpasswd.bcrypt_salt(4)) is None:
        pytest.skip("this host's libcrypt has no bcrypt")


# --- hashes ---------------------------------------------------------------------------------------------------------


def test_the_hash_is_what_distribution_reads(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    result = run(path=path, users=[ALICE, BOB], cost=10)
    assert result["changed"] is True and result["users"] == ["alice", "bob"]
    lines = path.read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["alice", "bob"]
    assert path.read_text().endswith("\n")
    for line, user in zip(lines, (ALICE, BOB)):
        hashed = line.split(":", 1)[1]
        assert HASH.match(hashed) and hashed.startswith("$2b$10$") and len(hashed) == 60
        assert hashed[28] in ".Oeu"  # the salt's last character carries 2 bits
        assert libcrypt_crypt(user["password"], hashed) == hashed
        assert libcrypt_crypt(user["password"] + "x", hashed) != hashed
    assert lines[0].split(":", 1)[1][7:29] != lines[1].split(":", 1)[1][7:29], "two users got the same salt"


def test_the_python_bcrypt_library_agrees(run: Run, path: Path) -> None:
    bcrypt = pytest.importorskip("bcrypt")
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE], cost=10)
    hashed = entries(path)["alice"]
    assert bcrypt.checkpw(ALICE["password"].encode(), hashed.encode())
    assert not bcrypt.checkpw(b"wrong", hashed.encode())


def test_bcrypt_salts() -> None:
    assert registry_htpasswd.bcrypt_salt(10, bytes(16)) == "$2b$10$" + "." * 22
    assert registry_htpasswd.bcrypt_salt(4, b"\xff" * 16) == "$2b$04$" + "9" * 21 + "u"
    assert registry_htpasswd.bcrypt_salt(12, bytes(range(16))) == "$2b$12$..CA.uOD/eaGAOmJB.yMBu"
    for _attempt in range(50):
        salt = registry_htpasswd.bcrypt_salt(10)
        assert re.fullmatch(r"\$2b\$10\$[./A-Za-z0-9]{21}[.Oeu]", salt), salt
    with pytest.raises(ValueError):
        registry_htpasswd.bcrypt_salt(10, b"short")


def test_crypt_agrees_with_the_system_library() -> None:
    crypt = registry_htpasswd.Crypt()
    hashed = crypt("pw", registry_htpasswd.bcrypt_salt(4))
    assert hashed is not None and HASH.match(hashed)
    assert libcrypt_crypt("pw", hashed) == hashed
    assert crypt("pw", "$2b$04$invalid") is None  # the library's failure token is not a hash


def test_a_libcrypt_without_bcrypt_fails_clearly(run: Run, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.parent.mkdir(parents=True)
    monkeypatch.setattr(registry_htpasswd.Crypt, "__call__", lambda self, password, setting: None)
    result = run(path=path, users=[ALICE])
    assert result["failed"]
    assert result["msg"].endswith("this host's libcrypt does not support bcrypt; install libcrypt1 (libxcrypt)")
    assert not path.exists()
    # A library that answers with something else than a $2b$ hash (old glibc: DES) is refused the same way.
    monkeypatch.setattr(registry_htpasswd.Crypt, "__call__", lambda self, password, setting: "$2abcdefgh")
    assert run(path=path, users=[ALICE])["msg"].endswith("install libcrypt1 (libxcrypt)")
    assert not path.exists()


# --- idempotence ----------------------------------------------------------------------------------------------------


def test_a_second_run_changes_nothing(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE, BOB])
    before = path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino
    result = run(path=path, users=[ALICE, BOB])
    assert result == {"changed": False, "users": ["alice", "bob"]}
    assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_ino) == before


def test_removing_a_user_keeps_the_others_hash(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE, BOB])
    alice = entries(path)["alice"]
    result = run(path=path, users=[ALICE])
    assert result["changed"] is True and result["users"] == ["alice"]
    assert entries(path) == {"alice": alice}


def test_a_new_password_is_hashed_anew_and_the_others_are_kept(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE, BOB])
    old = entries(path)
    result = run(path=path, users=[ALICE, {"username": "bob", "password": "new password"}])
    assert result["changed"] is True
    new = entries(path)
    assert new["alice"] == old["alice"] and new["bob"] != old["bob"]
    assert libcrypt_crypt("new password", new["bob"]) == new["bob"]


def test_the_order_is_the_order_given(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE, BOB])
    old = entries(path)
    assert run(path=path, users=[BOB, ALICE])["changed"] is True
    assert list(entries(path)) == ["bob", "alice"] and entries(path) == old


def test_another_cost_rehashes(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE])
    result = run(path=path, users=[ALICE], cost=5, diff=True)
    assert result["changed"] is True and entries(path)["alice"].startswith("$2b$05$")
    assert "new hashes: alice (cost 4 to 5)" in result["diff"]["after"]
    assert run(path=path, users=[ALICE], cost=5)["changed"] is False


@pytest.mark.parametrize("prefix", ["$2y$", "$2a$"])
def test_an_existing_2y_or_2a_line_that_verifies_is_kept(run: Run, path: Path, prefix: str) -> None:
    """htpasswd -B (Apache) writes $2y$; distribution reads it; a line that verifies is left alone."""
    path.parent.mkdir(parents=True)
    hashed = libcrypt_crypt(ALICE["password"], prefix + registry_htpasswd.bcrypt_salt(4)[4:])
    assert hashed.startswith(prefix)
    path.write_text(f"alice:{hashed}\n")
    path.chmod(0o640)
    result = run(path=path, users=[ALICE])
    assert result["changed"] is False
    assert path.read_text() == f"alice:{hashed}\n"


def test_lines_that_are_not_bcrypt_or_not_given_are_replaced(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("# a comment\n\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nmallory:$2y$05$abcdefghijklmnopqrstuu"
                    "0123456789012345678901234567890\n")
    result = run(path=path, users=[ALICE])
    assert result["changed"] is True
    assert list(entries(path)) == ["alice"] and HASH.match(entries(path)["alice"])
    assert len(path.read_text().splitlines()) == 1


# --- the file -------------------------------------------------------------------------------------------------------


def test_the_default_mode_is_0640_and_the_file_is_replaced_atomically(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE])
    assert mode(path) == 0o640
    inode = path.stat().st_ino
    run(path=path, users=[BOB])
    assert path.stat().st_ino != inode, "the file was rewritten in place, not renamed into place"
    assert sorted(p.name for p in path.parent.iterdir()) == ["htpasswd"], "temporary files left behind"


@pytest.mark.parametrize(("given", "expected"), [("0600", 0o600), ("644", 0o644), (0o440, 0o440), ("0o640", 0o640)])
def test_mode(run: Run, path: Path, given: t.Any, expected: int) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE], mode=given)
    assert mode(path) == expected


def test_only_the_mode_changes(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    run(path=path, users=[ALICE])
    content = path.read_bytes()
    result = run(path=path, users=[ALICE], mode="0600", diff=True)
    assert result["changed"] is True and mode(path) == 0o600 and path.read_bytes() == content
    assert "mode: 0640" in result["diff"]["before"] and "mode: 0600" in result["diff"]["after"]
    path.chmod(0o644)
    assert run(path=path, users=[ALICE], check_mode=True)["changed"] is True
    assert mode(path) == 0o644
    assert run(path=path, users=[ALICE])["changed"] is True and mode(path) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owner_and_group(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    owner = pwd.getpwnam("nobody")
    group = grp.getgrgid(owner.pw_gid)
    result = run(path=path, users=[ALICE], owner="nobody", group=group.gr_name)
    assert result["changed"] is True
    st = path.stat()
    assert (st.st_uid, st.st_gid, mode(path)) == (owner.pw_uid, group.gr_gid, 0o640)
    assert run(path=path, users=[ALICE], owner="nobody", group=group.gr_name)["changed"] is False
    # Without owner and group, a rewritten file keeps them.
    run(path=path, users=[BOB])
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (owner.pw_uid, group.gr_gid)
    # Numeric ids are accepted.
    assert run(path=path, users=[BOB], owner="0", group="0")["changed"] is True
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 0)


def test_a_missing_directory_fails_but_check_mode_reports_a_change(run: Run, path: Path) -> None:
    result = run(path=path, users=[ALICE])
    assert result["failed"] and result["msg"] == f"cannot write {path}: the directory {path.parent} does not exist"
    assert run(path=path, users=[ALICE], check_mode=True) == {"changed": True, "users": ["alice"]}
    assert not path.parent.exists()


def test_a_directory_at_path_fails(run: Run, path: Path) -> None:
    path.mkdir(parents=True)
    result = run(path=path, users=[ALICE])
    assert result["failed"] and result["msg"] == f"{path} exists and is not a regular file"


# --- check mode and diff --------------------------------------------------------------------------------------------


def test_check_mode_writes_nothing(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    assert run(path=path, users=[ALICE], check_mode=True)["changed"] is True
    assert not path.exists() and list(path.parent.iterdir()) == []
    run(path=path, users=[ALICE, BOB])
    before = path.read_bytes(), path.stat().st_mtime_ns
    assert run(path=path, users=[ALICE], check_mode=True)["changed"] is True
    assert run(path=path, users=[ALICE, {"username": "bob", "password": "other"}], check_mode=True)["changed"] is True
    assert run(path=path, users=[ALICE, BOB], check_mode=True)["changed"] is False
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_the_diff_shows_user_names_only(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    first = run(path=path, users=[ALICE, BOB], diff=True)
    assert first["diff"]["before"] == ""
    assert first["diff"]["after"].splitlines()[:2] == ["users: alice, bob", "mode: 0640"]
    result = run(path=path, users=[{"username": "alice", "password": "changed"}], diff=True)
    assert result["diff"]["before"].splitlines()[0] == "users: alice, bob"
    assert result["diff"]["after"].splitlines()[:2] == ["users: alice", "new hashes: alice (new password)"]
    assert "$2" not in json.dumps(result)


@pytest.mark.parametrize("check_mode", [False, True])
def test_no_password_or_hash_anywhere_in_the_whole_output(path: Path, check_mode: bool) -> None:
    """The module's real output (a separate process, Ansible's no_log masking included), with diff, in both modes:
    neither a password nor any part of a hash, old or new."""
    path.parent.mkdir(parents=True)
    users = [ALICE, BOB]
    first, output = run_process(path=path, users=users, diff=True)
    old = entries(path)
    changed = [ALICE, {"username": "bob", "password": "an entirely new secret"}, {"username": "carol", "password": "pw3"}]
    second, output2 = run_process(path=path, users=changed, diff=True, check_mode=check_mode)
    assert first["changed"] and second["changed"] and not first.get("failed") and not second.get("failed")
    assert second["users"] == ["alice", "bob", "carol"]
    assert second["diff"]["after"].startswith("users: alice, bob, carol\nnew hashes: bob (new password)\n")
    everything = output + output2
    for secret in ["correct horse battery staple", "Tr0ub4dor&3", "an entirely new secret"]:
        assert secret not in everything
    for hashed in list(old.values()) + list(entries(path).values()):
        assert hashed not in everything and hashed[29:] not in everything and hashed[7:29] not in everything
    assert "$2b$" not in everything
    invocation_users = second["invocation"]["module_args"]["users"]
    assert {user["password"] for user in invocation_users} == {"VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"}


def test_no_password_in_the_output_of_a_failure(path: Path) -> None:
    path.parent.mkdir(parents=True)
    long_password = "é" * 37  # 74 bytes
    result, output = run_process(path=path, users=[ALICE, {"username": "bob", "password": long_password}])
    assert result["failed"] and "the password of user 'bob' is longer than 72 bytes" in result["msg"]
    assert long_password not in output and ALICE["password"] not in output
    assert not path.exists()


# --- refused input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("users", "message"), [
    ([{"username": "al:ice", "password": "pw"}],
     "users[1]: the user name is 'al:ice', which contains ':': the htpasswd file separates the user name from the "
     "password hash with it"),
    ([{"username": "al ice", "password": "pw"}], "users[1]: the user name is 'al ice', which contains whitespace"),
    ([{"username": "alice\n", "password": "pw"}], "users[1]: the user name is 'alice\\n', which contains a newline"),
    ([{"username": "al\x07ice", "password": "pw"}],
     "users[1]: the user name is 'al\\x07ice', which contains a control character"),
    ([{"username": "al\u200bice", "password": "pw"}],
     "users[1]: the user name is 'al\\u200bice', which contains a character that is not printable"),
    ([{"username": "#alice", "password": "pw"}],
     "users[1]: the user name is '#alice', which starts with '#': distribution reads such a line of the htpasswd file "
     "as a comment"),
    ([{"username": "a" * 65, "password": "pw"}],
     f"users[1]: the user name is '{'a' * 65}', 65 characters long: a user name has at most 64"),
    ([{"username": "", "password": "pw"}], "users[1]: the user name is empty: give the user name the clients pull with"),
    ([ALICE, {"username": "alice", "password": "other"}], "users[2]: the user name 'alice' is given more than once"),
    ([{"username": "alice", "password": ""}], "the password of user 'alice' is empty"),
    ([{"username": "alice", "password": "a\0b"}],
     "the password of user 'alice' contains a control character (its value is not shown)"),
    ([{"username": "alice", "password": "a\nb"}], "the password of user 'alice' contains a newline (its value is not shown)"),
    ([{"username": "alice", "password": "x" * 73}],
     "the password of user 'alice' is longer than 72 bytes (its value is not shown): bcrypt, which hashes it for the "
     "htpasswd file, ignores every byte after the 72nd; choose a shorter one"),
    ([], "users is empty: distribution would refuse every client; give at least one user"),
])
def test_bad_users_are_refused_before_writing(run: Run, path: Path, users: list[dict[str, str]], message: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("keep: me\n")
    result = run(path=path, users=users)
    assert result["failed"]
    assert result["msg"] == f"1 problem with the arguments; nothing was changed:\n- {message}"
    assert path.read_text() == "keep: me\n"


def test_a_file_that_would_not_read_back_is_not_written(run: Run, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new file is read as distribution reads it before it lands: here the reader loses a user."""
    path.parent.mkdir(parents=True)
    path.write_text("keep: me\n")
    monkeypatch.setattr(registry_htpasswd, "parse_htpasswd",
                        lambda text: {} if "alice" in text else dict(line.split(":", 1) for line in text.splitlines()))
    result = run(path=path, users=[ALICE])
    assert result["failed"] and result["msg"] == (f"the new {path} would not read back as the users given, each once with "
                                                  "a bcrypt hash; nothing was changed")
    assert path.read_text() == "keep: me\n"


def test_a_72_byte_password_is_accepted(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    password = "é" * 36  # 72 bytes
    assert not run(path=path, users=[{"username": "alice", "password": password}]).get("failed")
    hashed = entries(path)["alice"]
    assert libcrypt_crypt(password, hashed) == hashed


@pytest.mark.parametrize(("args", "message"), [
    ({"cost": 3}, "cost must be between 4 and 14, not 3"),
    ({"cost": 15}, "cost must be between 4 and 14, not 15"),
    ({"mode": "u=rw,g=r"}, "mode must be an octal mode such as '0640' (symbolic modes are not supported), not 'u=rw,g=r'"),
    ({"mode": "0999"}, "mode must be an octal mode such as '0640'"),
    ({"owner": "no-such-user-here"}, "owner 'no-such-user-here' does not exist on this host"),
    ({"group": "no-such-group-here"}, "group 'no-such-group-here' does not exist on this host"),
])
def test_bad_options_are_refused(run: Run, path: Path, args: dict[str, t.Any], message: str) -> None:
    path.parent.mkdir(parents=True)
    result = run(path=path, users=[ALICE], **args)
    assert result["failed"] and message in result["msg"]
    assert not path.exists()


def test_every_problem_at_once(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    result = run(path=path, users=[{"username": "a b", "password": ""}, {"username": "a b", "password": "x"}], cost=2)
    assert result["msg"].splitlines() == [
        "5 problems with the arguments; nothing was changed:",
        "- cost must be between 4 and 14, not 2",
        "- users[1]: the user name is 'a b', which contains whitespace",
        "- the password of user 'a b' is empty",
        "- users[2]: the user name is 'a b', which contains whitespace",
        "- users[2]: the user name 'a b' is given more than once",
    ]


def test_every_option_problem_at_once(run: Run, path: Path) -> None:
    path.parent.mkdir(parents=True)
    result = run(path=path, users=[ALICE], mode="rw", owner="no-such-user-here", group="no-such-group-here")
    assert result["msg"].splitlines() == [
        "3 problems with the arguments; nothing was changed:",
        "- mode must be an octal mode such as '0640' (symbolic modes are not supported), not 'rw'",
        "- owner 'no-such-user-here' does not exist on this host",
        "- group 'no-such-group-here' does not exist on this host",
    ]
    assert not path.exists()
