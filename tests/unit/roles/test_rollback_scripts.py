# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The registry_mirror role's rollback: files/registry-rollback-snapshot.sh (run by tasks/snapshot.yml) and
files/registry-rollback-restore.sh (run by tasks/rollback.yml), run here as ansible.builtin.script runs them there
(`/bin/sh FILE ARGS`) on a tree under a temporary directory (they take absolute paths as arguments)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROLE = Path(__file__).resolve().parents[3] / "roles" / "registry_mirror"
FILES = ROLE / "files"
SNAPSHOT = FILES / "registry-rollback-snapshot.sh"
RESTORE = FILES / "registry-rollback-restore.sh"


def state(root: Path) -> list[tuple[str, ...]]:
    """Every path under ROOT (but the snapshot) with its type, mode, owner, link target and content."""
    found = []
    for path in sorted(root.rglob("*")):
        if "rollback" in path.parts:
            continue
        info = path.lstat()
        target = os.readlink(path) if path.is_symlink() else ""
        content = path.read_bytes().hex() if path.is_file() and not path.is_symlink() else ""
        found.append((str(path), oct(info.st_mode), str(info.st_uid), str(info.st_gid), target, content))
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A host's worth of managed files, links and directories."""
    (tmp_path / "etc/registry").mkdir(parents=True)
    (tmp_path / "etc/registry/config.yml").write_text("old config\n")
    (tmp_path / "etc/registry/proxy.env").write_text("REGISTRY_PROXY_PASSWORD=old\n")
    (tmp_path / "lib/libexec").mkdir(parents=True)
    (tmp_path / "lib/libexec/registry-supervisor").write_text("old helper\n")
    (tmp_path / "lib/2.8.2-amd64").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/registry").symlink_to(tmp_path / "lib/2.8.2-amd64/registry")
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage/blob").write_text("cached\n")
    os.chmod(tmp_path / "etc/registry", 0o750)
    os.chmod(tmp_path / "storage", 0o750)
    return tmp_path


def snapshot(root: Path, config: str = "etc/registry", storage: str = "storage", version: str = "lib/3.1.1-amd64") -> None:
    files = [f"{config}/config.yml", f"{config}/proxy.env", f"{config}/supervisor.json", "lib/libexec", "bin/registry"]
    args = [str(root / "rollback"), *(str(root / f) for f in files), "--dirs", str(root / config), str(root / storage),
            "--staged", str(root / version)]
    subprocess.run(["/bin/sh", str(SNAPSHOT), *args], check=True)


def restore(root: Path) -> None:
    subprocess.run(["/bin/sh", str(RESTORE), str(root / "rollback")], check=True)


def test_a_run_that_changed_everything_is_put_back(tree: Path) -> None:
    before = state(tree)
    snapshot(tree)
    (tree / "etc/registry/config.yml").write_text("new config\n")
    (tree / "etc/registry/proxy.env").unlink()
    (tree / "etc/registry/supervisor.json").write_text("{}\n")
    (tree / "lib/libexec/registry-supervisor").write_text("new helper\n")
    (tree / "lib/libexec/public_suffix_list.dat").write_text("new file\n")
    (tree / "lib/3.1.1-amd64").mkdir()
    (tree / "lib/3.1.1-amd64/registry").write_text("new binary\n")
    (tree / "bin/registry").unlink()
    (tree / "bin/registry").symlink_to(tree / "lib/3.1.1-amd64/registry")
    os.chmod(tree / "etc/registry", 0o755)
    os.chmod(tree / "storage", 0o700)
    restore(tree)
    assert state(tree) == before


def test_new_directories_go_when_empty_and_the_cache_is_never_touched(tree: Path) -> None:
    before = state(tree)
    snapshot(tree, config="etc/mirror", storage="srv/locked/registry")
    (tree / "etc/mirror").mkdir()
    (tree / "etc/mirror/config.yml").write_text("new\n")
    (tree / "srv/locked/registry").mkdir(parents=True)
    restore(tree)
    assert not (tree / "etc/mirror").exists() and not (tree / "srv/locked/registry").exists()
    (tree / "srv/locked").rmdir()
    (tree / "srv").rmdir()
    assert state(tree) == before


def test_a_snapshot_is_root_only_and_holds_no_unlisted_file(tree: Path) -> None:
    snapshot(tree)
    assert oct((tree / "rollback").stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in (tree / "rollback").iterdir())
    listed = archived(tree / "rollback/files.tar")
    assert not any("storage" in name or "2.8.2-amd64" in name for name in listed)
    # The directories alone, without their contents (the cache).
    assert archived(tree / "rollback/dirs.tar") == [str(tree / d).lstrip("/") for d in ("etc/registry", "storage")]


def archived(tar: Path) -> list[str]:
    listed = subprocess.run(["tar", "-tf", str(tar)], check=True, capture_output=True, text=True).stdout
    return sorted(name.rstrip("/") for name in listed.splitlines())


@pytest.mark.parametrize(("script", "task_file"), [(SNAPSHOT, "snapshot.yml"), (RESTORE, "rollback.yml")])
def test_the_role_runs_these_files_and_they_refuse_a_wrong_command_line(script: Path, task_file: str) -> None:
    assert f"{script.name} " in (ROLE / "tasks" / task_file).read_text()
    wrong = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=False)
    assert wrong.returncode == 64 and wrong.stderr.startswith("usage: "), wrong
