# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The registry_files module: content, owner, group and mode of several files in one call; check and diff mode; the
validate command; links replaced, never followed; bad arguments refused before anything is written."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import typing as t
from pathlib import Path

import pytest

from ansible_collections.actuated.registry.plugins.modules import registry_files


ME = pwd.getpwuid(os.geteuid()).pw_name
MY_GROUP = grp.getgrgid(os.getegid()).gr_name


@pytest.fixture
def run(module_runner: t.Any) -> t.Callable[..., t.Any]:
    def _run(files: list[dict[str, t.Any]], check_mode: bool = False, diff: bool = False,
             directories: list[dict[str, t.Any]] | None = None, absent: list[Path] | None = None) -> t.Any:
        return module_runner(registry_files.main, check_mode=check_mode, diff=diff,
                             files=[{**f, "path": str(f["path"])} for f in files],
                             directories=[{**d, "path": str(d["path"])} for d in directories or []],
                             absent=[str(path) for path in absent or []])

    return _run


def spec(path: Path, content: str, mode: str = "0640", **extra: t.Any) -> dict[str, t.Any]:
    return {"path": path, "content": content, "mode": mode, "owner": ME, "group": MY_GROUP, **extra}


def test_writes_every_file_then_a_second_run_changes_nothing(run: t.Any, tmp_path: Path) -> None:
    files = [spec(tmp_path / "a.yml", "a: 1\n"), spec(tmp_path / "b.service", "[Unit]\n", "0644")]
    first = run(files)
    assert first["changed"] and first["changed_files"] == [str(tmp_path / "a.yml"), str(tmp_path / "b.service")]
    assert (tmp_path / "a.yml").read_text() == "a: 1\n"
    assert stat.S_IMODE((tmp_path / "b.service").stat().st_mode) == 0o644
    again = run(files)
    assert not again["changed"] and again["changed_files"] == []


def test_only_the_files_that_differ_are_written(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "same").write_text("same\n")
    os.chmod(tmp_path / "same", 0o640)
    (tmp_path / "old").write_text("old\n")
    os.chmod(tmp_path / "old", 0o640)
    same_inode = (tmp_path / "same").stat().st_ino
    result = run([spec(tmp_path / "same", "same\n"), spec(tmp_path / "old", "new\n")])
    assert result["changed_files"] == [str(tmp_path / "old")]
    assert (tmp_path / "same").stat().st_ino == same_inode
    assert (tmp_path / "old").read_text() == "new\n"


def test_a_wrong_mode_alone_is_set_in_place(run: t.Any, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x\n")
    os.chmod(target, 0o600)
    inode = target.stat().st_ino
    result = run([spec(target, "x\n", "0644")], diff=True)
    assert result["changed"] and stat.S_IMODE(target.stat().st_mode) == 0o644 and target.stat().st_ino == inode
    assert "mode: 0600" in result["diff"][0]["before"] and "mode: 0644" in result["diff"][0]["after"]


def test_check_mode_reports_and_writes_nothing(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("old\n")
    result = run([spec(tmp_path / "f", "new\n"), spec(tmp_path / "missing-dir" / "g", "g\n")], check_mode=True)
    assert result["changed"] and len(result["changed_files"]) == 2
    assert (tmp_path / "f").read_text() == "old\n" and not (tmp_path / "missing-dir").exists()


def test_diff_mode_gives_one_diff_per_changed_file(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("old\n")
    os.chmod(tmp_path / "f", 0o640)
    result = run([spec(tmp_path / "f", "new\n"), spec(tmp_path / "g", "g\n")], diff=True)
    assert [d["after_header"] for d in result["diff"]] == [str(tmp_path / "f"), str(tmp_path / "g")]
    assert result["diff"][0]["before"] == "old\n" and result["diff"][0]["after"] == "new\n"
    assert result["diff"][1]["before"] == ""


def test_validate_sees_the_new_content_and_a_refusal_keeps_the_old_file(run: t.Any, tmp_path: Path) -> None:
    target = tmp_path / "config.yml"
    target.write_text("good\n")
    check = "grep -qx good %s"
    refused = run([spec(target, "bad\n", validate=check)])
    assert refused.failed and str(target) in refused["msg"] and "check refused it (exit 1)" in refused["msg"]
    assert target.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yml"], "the temporary file was left behind"
    accepted = run([spec(target, "good\n", "0600", validate=check)])
    assert accepted["changed"] and target.read_text() == "good\n"


def test_validate_is_not_run_when_the_content_is_right(run: t.Any, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x\n")
    os.chmod(target, 0o640)
    assert not run([spec(target, "x\n", validate="false %s")])["changed"]


def test_a_link_at_the_path_is_replaced_and_its_target_untouched(run: t.Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep\n")
    os.chmod(outside, 0o600)
    link = tmp_path / "dir"
    link.mkdir()
    (link / "f").symlink_to(outside)
    run([spec(link / "f", "mine\n", "0644")])
    assert not (link / "f").is_symlink() and (link / "f").read_text() == "mine\n"
    assert outside.read_text() == "keep\n" and stat.S_IMODE(outside.stat().st_mode) == 0o600


def test_bad_arguments_are_refused_before_any_file_is_written(run: t.Any, tmp_path: Path) -> None:
    result = run([spec(tmp_path / "first", "1\n"), spec(tmp_path / "second", "2\n", "u=rw"),
                  spec(tmp_path / "third", "3\n", owner="no-such-user-here"),
                  spec(tmp_path / "fourth", "4\n", validate="true"), spec(tmp_path / "first", "again\n")])
    assert result.failed and "4 problems" in result["msg"]
    for word in ("symbolic modes", "no-such-user-here", "must contain %s", "listed twice"):
        assert word in result["msg"]
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_fails_naming_the_file_and_what_was_written(run: t.Any, tmp_path: Path) -> None:
    result = run([spec(tmp_path / "a", "a\n"), spec(tmp_path / "nope" / "b", "b\n")])
    assert result.failed and str(tmp_path / "nope" / "b") in result["msg"]
    assert result["changed"] and result["changed_files"] == [str(tmp_path / "a")]


def test_the_output_shows_a_digest_of_each_content_never_the_content(run: t.Any, tmp_path: Path) -> None:
    content = "a long helper script\n" * 100
    result = run([spec(tmp_path / "f", content)])
    shown = result["invocation"]["module_args"]["files"][0]["content"]
    assert content not in str(result)
    assert shown == f"({len(content)} bytes, sha256:{hashlib.sha256(content.encode()).hexdigest()})"


def directory(path: Path, mode: str = "0750") -> dict[str, t.Any]:
    return {"path": path, "mode": mode, "owner": ME, "group": MY_GROUP}


def test_directories_then_removals_then_files_in_one_step(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "old-tree" / "sub").mkdir(parents=True)
    (tmp_path / "old-tree" / "sub" / "f").write_text("x")
    (tmp_path / "old-file").write_text("x")
    new_dir = tmp_path / "etc" / "registry" / "upstreams"
    result = run([spec(new_dir / "config.yml", "a: 1\n")], directories=[directory(new_dir)],
                 absent=[tmp_path / "old-tree", tmp_path / "old-file", tmp_path / "never-there"], diff=True)
    assert result["changed_files"] == [str(new_dir), str(tmp_path / "old-tree"), str(tmp_path / "old-file"),
                                       str(new_dir / "config.yml")]
    assert stat.S_IMODE(new_dir.stat().st_mode) == 0o750 and (new_dir / "config.yml").read_text() == "a: 1\n"
    assert not (tmp_path / "old-tree").exists() and not (tmp_path / "old-file").exists()
    assert result["diff"][0]["before"] == "(absent)\n" and result["diff"][1]["after"] == "(absent)\n"
    again = run([spec(new_dir / "config.yml", "a: 1\n")], directories=[directory(new_dir)],
                absent=[tmp_path / "old-tree", tmp_path / "old-file"])
    assert not again["changed"]


def test_a_directory_gets_its_mode_and_keeps_its_contents(run: t.Any, tmp_path: Path) -> None:
    target = tmp_path / "storage"
    target.mkdir(mode=0o700)
    (target / "blob").write_text("cached")
    assert run([], directories=[directory(target, "0750")])["changed"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o750 and (target / "blob").read_text() == "cached"


def test_a_removal_takes_the_link_never_its_target(run: t.Any, tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "f").write_text("keep")
    (tmp_path / "link").symlink_to(kept)
    run([], absent=[tmp_path / "link"])
    assert not (tmp_path / "link").is_symlink() and (kept / "f").read_text() == "keep"


def test_check_mode_creates_and_removes_nothing(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    result = run([spec(tmp_path / "new" / "f", "f\n")], directories=[directory(tmp_path / "new")],
                 absent=[tmp_path / "old"], check_mode=True)
    assert result["changed_files"] == [str(tmp_path / "new"), str(tmp_path / "old"), str(tmp_path / "new" / "f")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_file_where_a_directory_belongs_fails_naming_it(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "d").write_text("not a directory")
    result = run([], directories=[directory(tmp_path / "d")])
    assert result.failed and f"{tmp_path / 'd'} exists and is not a directory" in result["msg"]
    assert not result["changed"]


@pytest.mark.parametrize("path", ["/", "relative/path"])
def test_removing_the_root_or_a_relative_path_is_refused(run: t.Any, path: str) -> None:
    result = run([], absent=[path])
    assert result.failed and "must be absolute, and not /" in result["msg"]


def test_check_mode_takes_an_account_the_run_would_create(run: t.Any, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("f\n")
    files = [spec(tmp_path / "f", "f\n", owner="registry-not-created-yet", group="registry-not-created-yet")]
    checked = run(files, check_mode=True, diff=True, directories=[
        {**directory(tmp_path / "d"), "owner": "registry-not-created-yet"}])
    assert not checked.failed and checked["changed_files"] == [str(tmp_path / "d"), str(tmp_path / "f")]
    assert "owner: (an account not created yet)" in checked["diff"][0]["after"]
    refused = run(files)
    assert refused.failed and "owner 'registry-not-created-yet' does not exist on this host" in refused["msg"]
