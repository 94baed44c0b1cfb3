# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The role's shell helpers, installed as the role installs them (no extension, side by side), with real openssl
pairs, a fake `registry` for registry-check-config and a fake `systemctl` for registry-cert-reload."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from registry_fakes import FILES

USER = "root"  # the tests run as root (like ExecStartPre=+); the role passes the registry's user and group


@pytest.fixture(name="libexec")
def fixture_libexec(tmp_path: Path) -> Path:
    libexec = tmp_path / "libexec"
    libexec.mkdir()
    for script in FILES.glob("registry-*.sh"):
        shutil.copy(script, libexec / script.stem)
        (libexec / script.stem).chmod(0o755)
    return libexec


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def pair(directory: Path, name: str, key: Path | None = None) -> tuple[Path, Path]:
    """A self-signed certificate DIRECTORY/NAME.crt for KEY (a new EC key when None)."""
    if key is None:
        key = directory / f"{name}.key"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    crt = directory / f"{name}.crt"
    openssl("req", "-x509", "-new", "-key", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}")
    return crt, key


@pytest.fixture(name="certs")
def fixture_certs(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir()
    return certs


def run(*argv: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=False, env=env,
                          timeout=60)


def test_tls_sync_copies_a_valid_pair_for_the_registry_user(libexec: Path, certs: Path, tmp_path: Path) -> None:
    crt, key = pair(certs, "server")
    runtime = tmp_path / "run"
    synced = run(libexec / "registry-tls-sync", crt, key, runtime, USER, USER)
    assert synced.returncode == 0, synced.stderr
    assert "installed certificate" in synced.stderr
    assert (runtime / "server.crt").read_bytes() == crt.read_bytes()
    assert (runtime / "server.key").read_bytes() == key.read_bytes()
    assert stat.S_IMODE((runtime / "server.key").stat().st_mode) == 0o400
    assert stat.S_IMODE((runtime / "server.crt").stat().st_mode) == 0o440
    assert (runtime / ".started").exists()
    unchanged = run(libexec / "registry-tls-sync", "--renew", crt, key, runtime, USER, USER)
    assert unchanged.returncode == 2, unchanged.stderr


# Every name registry-tls-sync (root) writes in DIR, which the registry's user owns, and the names it wrote there
# before.
PLANTED = (".started", "server.crt", "server.key", ".server.crt.new", ".server.key.new")


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_tls_sync_follows_no_link_the_registry_user_plants(libexec: Path, certs: Path, tmp_path: Path,
                                                           kind: str) -> None:
    """A link planted under each name, to a file or to a directory: after a first sync, an unchanged start and a
    renewal, everything outside is as it was (content, owner, mode, time), nothing was created (in a linked directory
    either), and DIR holds regular files."""
    outside = tmp_path / "outside"
    outside.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir()
    existing = {}
    for number, name in enumerate(PLANTED):
        target = outside / f"target{number}"
        if kind == "directory":
            target.mkdir()
            (target / name).write_text(f"root's file {number}\n", encoding="utf-8")  # what a mv into it would replace
            existing[target / name] = (target / name).stat()
        elif number % 2 == 0:  # half of them point at a file that exists, half at one that does not yet
            target.write_text(f"root's file {number}\n", encoding="utf-8")
        if target.is_file():
            os.chown(target, 65534, 65534)
            target.chmod(0o600)
        if target.exists():
            existing[target] = target.stat()
        (runtime / name).symlink_to(target)
    crt, key = pair(certs, "server")
    renewed_crt, renewed_key = pair(certs, "renewed")
    steps = ((crt, key), (crt, key), ("--renew", renewed_crt, renewed_key))
    for number, args in enumerate(steps):
        result = run(libexec / "registry-tls-sync", *args, runtime, USER, USER)
        assert result.returncode == 0, (number, result.stderr)
        for name in PLANTED[:1]:
            (runtime / name).unlink(missing_ok=True)
            (runtime / name).symlink_to(outside / "target0")  # planted again before each step
    assert sorted(str(path) for path in outside.rglob("*")) == sorted(str(path) for path in existing)
    for target, before in existing.items():
        after = target.stat()
        assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime_ns, after.st_size) == (
            before.st_uid, before.st_gid, before.st_mode, before.st_mtime_ns, before.st_size), target
    assert (runtime / "server.crt").read_bytes() == renewed_crt.read_bytes()
    assert (runtime / "server.key").read_bytes() == renewed_key.read_bytes()
    for name in ("server.crt", "server.key"):
        assert stat.S_ISREG((runtime / name).lstat().st_mode)
    assert not list(tmp_path.glob(".registry-tls-sync.*"))  # the staging directory is gone


def test_tls_sync_keeps_the_previous_pair_when_the_key_does_not_belong(
        libexec: Path, certs: Path, tmp_path: Path) -> None:
    crt, key = pair(certs, "server")
    other_crt = pair(certs, "other")[0]
    runtime = tmp_path / "run"
    assert run(libexec / "registry-tls-sync", crt, key, runtime, USER, USER).returncode == 0
    renewed = run(libexec / "registry-tls-sync", "--renew", other_crt, key, runtime, USER, USER)
    assert renewed.returncode == 1
    assert f"key {key} does not belong to certificate {other_crt}" in renewed.stderr
    started = run(libexec / "registry-tls-sync", other_crt, key, runtime, USER, USER)
    assert started.returncode == 0 and "keeping the certificate the mirror already serves" in started.stderr
    assert (runtime / "server.crt").read_bytes() == crt.read_bytes()


def test_helpers_refuse_a_wrong_command_line(libexec: Path) -> None:
    for helper, argc in (("registry-tls-sync", 5), ("registry-cert-reload", 6), ("registry-check-config", 4)):
        called = run(libexec / helper, *["x"] * (argc - 1))
        assert called.returncode == 64 and called.stderr.startswith("usage: "), (helper, called.stderr)


def test_cert_reload_installs_a_renewed_pair_and_restarts_once(libexec: Path, certs: Path, tmp_path: Path) -> None:
    crt, key = pair(certs, "server")
    runtime = tmp_path / "run"
    assert run(libexec / "registry-tls-sync", crt, key, runtime, USER, USER).returncode == 0
    pair(certs, "server", key=key)  # renewed: a new certificate for the same key
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >>{tmp_path}/systemctl.log\n', encoding="utf-8")
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    reloaded = run(libexec / "registry-cert-reload", 1, crt, key, runtime, USER, USER, env=env)
    assert reloaded.returncode == 0, reloaded.stderr
    assert "certificate or key renewed; restarting registry" in reloaded.stderr
    assert (tmp_path / "systemctl.log").read_text(encoding="utf-8") == "restart registry.service\n"
    assert (runtime / "server.crt").read_bytes() == crt.read_bytes()
    again = run(libexec / "registry-cert-reload", 1, crt, key, runtime, USER, USER, env=env)
    assert "unchanged; nothing to do" in again.stderr
    assert (tmp_path / "systemctl.log").read_text(encoding="utf-8") == "restart registry.service\n"


FAKE_REGISTRY = """#!/bin/sh
# Starts like distribution when the TLS pair it is given exists and the upstream is off; fails like it otherwise.
echo "$@ $REGISTRY_HTTP_ADDR remote=[$REGISTRY_PROXY_REMOTEURL]" >>"$0.log"
if [ -r "$REGISTRY_HTTP_TLS_CERTIFICATE" ] && [ -r "$REGISTRY_HTTP_TLS_KEY" ] && [ -z "$REGISTRY_PROXY_REMOTEURL" ]
then
    echo 'level=info msg="listening on 127.0.0.1:41234, tls"'
    exec sleep 30
fi
echo 'panic: open /run/registry/server.crt: no such file or directory'
exit 2
"""


def test_check_config_passes_once_the_registry_listens_with_the_given_pair(libexec: Path, certs: Path,
                                                                           tmp_path: Path) -> None:
    crt, key = pair(certs, "server")
    binary = tmp_path / "registry"
    binary.write_text(FAKE_REGISTRY, encoding="utf-8")
    binary.chmod(0o755)
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\n", encoding="utf-8")
    checked = run(libexec / "registry-check-config", config, binary, crt, key)
    assert checked.returncode == 0, checked.stderr
    assert (tmp_path / "registry.log").read_text(encoding="utf-8") == f"serve {config} 127.0.0.1:0 remote=[]\n"
    failed = run(libexec / "registry-check-config", config, binary, certs / "missing.crt", key)
    assert failed.returncode == 1
    assert f"registry would not start with {config}:" in failed.stderr and "panic: open" in failed.stderr
