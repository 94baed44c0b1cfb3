# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.actuated.registry.plugins.modules import cert_watch


@pytest.fixture
def run(module_runner: t.Any) -> t.Callable[..., t.Any]:
    def _run(check_mode: bool = False, diff: bool = False, **args: t.Any) -> t.Any:
        return module_runner(cert_watch.main, check_mode=check_mode, diff=diff, **args)

    return _run


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Everything under ``directory``: to prove that a run wrote nothing."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            content = path.read_bytes() if path.is_file() else b""
            found[str(path)] = (st.st_mode, st.st_mtime_ns, content)
    return found


def x509_fingerprint(path: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(path)], check=True, stdout=subprocess.PIPE
    ).stdout.decode()
    return out.strip().split("=", 1)[1]


def reencode_key(path: Path, *options: str) -> None:
    """Rewrite a key file with ``openssl pkey OPTIONS`` (openssl cannot write to the file it reads)."""
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), *options], check=True, stdout=subprocess.PIPE
    ).stdout
    path.write_bytes(out)


@pytest.fixture
def files(workdir: Path) -> dict[str, Path]:
    return {
        "path": workdir / "certs" / "server.crt",
        "key_path": workdir / "certs" / "server.key",
        "state_path": workdir / "state" / "registry" / "cert.json",
    }


# --- the normal life cycle ------------------------------------------------------------------------------


def test_first_run_records_state(run, files, pki) -> None:
    result = run(**files)
    assert not result.failed, result
    assert result["changed"] is True
    assert result["fingerprint"] == pki.fingerprint(pki.server_crt)
    assert result["previous_fingerprint"] is None
    assert result["previous_key_digest"] is None
    key_digest = subprocess.run(
        ["sha256sum", str(files["key_path"])], check=True, stdout=subprocess.PIPE
    ).stdout.decode().split()[0]
    assert result["key_digest"] == key_digest
    assert result["key_matches"] is True
    assert result["chain_verified"] is None
    assert result["subject"] == "O=actuated,CN=192.168.128.1"
    assert result["issuer"] == "CN=Test actuated CA"
    assert result["subject_alt_names"] == ["IP:192.168.128.1", "DNS:localhost"]
    assert result["days_remaining"] == 29
    assert result["not_before"].endswith("Z") and result["not_after"].endswith("Z")
    assert result["not_before"] < result["not_after"]
    assert result["serial"] == result["serial"].upper()
    assert "diff" not in result
    assert result.warnings == []

    state_file = files["state_path"]
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.parent.stat().st_mode) == 0o700
    state = json.loads(state_file.read_text())
    assert set(state) == {"fingerprint", "key_digest", "recorded_at"}
    assert state["fingerprint"] == result["fingerprint"]
    assert state["key_digest"] == key_digest
    assert state["recorded_at"].endswith("Z")
    assert os.listdir(state_file.parent) == ["cert.json"]


def test_second_run_is_unchanged_and_does_not_rewrite(run, files) -> None:
    first = run(**files)
    before = snapshot(files["state_path"].parent)
    second = run(**files)
    assert second["changed"] is False
    assert second["fingerprint"] == first["fingerprint"]
    assert second["previous_fingerprint"] == first["fingerprint"]
    assert second["previous_key_digest"] == first["key_digest"]
    assert snapshot(files["state_path"].parent) == before


def test_rotation_reports_previous_fingerprint(run, files, pki) -> None:
    first = run(**files)
    shutil.copy(pki.renewed_crt, files["path"])
    rotated = run(**files)
    assert rotated["changed"] is True
    assert rotated["previous_fingerprint"] == first["fingerprint"]
    assert rotated["fingerprint"] == pki.fingerprint(pki.renewed_crt) != first["fingerprint"]
    assert rotated["days_remaining"] == 59
    assert json.loads(files["state_path"].read_text())["fingerprint"] == rotated["fingerprint"]
    assert run(**files)["changed"] is False


def test_rotation_of_certificate_and_key(run, files, pki) -> None:
    first = run(**files)
    shutil.copy(pki.other_crt, files["path"])
    shutil.copy(pki.other_key, files["key_path"])
    rotated = run(**files)
    assert rotated["changed"] is True
    assert rotated["key_matches"] is True
    assert rotated["previous_key_digest"] == first["key_digest"] != rotated["key_digest"]


def test_key_file_change_alone_is_a_change(run, files) -> None:
    first = run(**files)
    # The same key re-encoded (PKCS#8 -> SEC1): the registry would load different bytes.
    reencode_key(files["key_path"], "-traditional")
    result = run(**files)
    assert result["changed"] is True
    assert result["key_matches"] is True
    assert result["fingerprint"] == result["previous_fingerprint"] == first["fingerprint"]
    assert result["key_digest"] != first["key_digest"]


def test_without_key(run, files) -> None:
    result = run(path=files["path"], state_path=files["state_path"])
    assert result["changed"] is True
    assert result["key_digest"] is None
    assert result["key_matches"] is None
    assert json.loads(files["state_path"].read_text())["key_digest"] is None
    assert run(path=files["path"], state_path=files["state_path"])["changed"] is False
    # Starting to watch the key too is a change (the recorded state did not cover it).
    assert run(**files)["changed"] is True


def test_chain_file_uses_first_certificate(run, files, pki) -> None:
    shutil.copy(pki.chain_crt, files["path"])
    result = run(**files)
    assert result["fingerprint"] == pki.fingerprint(pki.server_crt)
    assert result["subject"] == "O=actuated,CN=192.168.128.1"
    assert result["key_matches"] is True


def test_certificate_without_san(run, files, pki) -> None:
    shutil.copy(pki.no_san_crt, files["path"])
    assert run(**files)["subject_alt_names"] == []


def test_not_yet_valid_certificate_warns(run, files, pki) -> None:
    shutil.copy(pki.future_crt, files["path"])
    result = run(**files)
    assert not result.failed
    assert len(result.warnings) == 1
    assert f"Certificate {files['path']} is not valid before 2099-12-01T00:00:00Z" in result.warnings[0]


def test_corrupt_state_file_starts_over(run, files) -> None:
    files["state_path"].parent.mkdir(parents=True)
    files["state_path"].write_text("{oops")
    result = run(**files)
    assert result["changed"] is True
    assert result["previous_fingerprint"] is None
    assert len(result.warnings) == 1
    assert f"State file {files['state_path']} is not valid JSON" in result.warnings[0]
    assert json.loads(files["state_path"].read_text())["fingerprint"] == result["fingerprint"]


def test_relative_paths_are_expanded(run, files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files["path"].parent.parent)
    result = run(path="certs/server.crt", key_path="certs/server.key", state_path="st.json")
    assert result["changed"] is True
    assert (files["path"].parent.parent / "st.json").is_file()


# --- check mode and diff mode ---------------------------------------------------------------------------


def test_check_mode_first_run_writes_nothing(run, files, workdir) -> None:
    before = snapshot(workdir)
    result = run(check_mode=True, **files)
    assert result["changed"] is True
    assert result["previous_fingerprint"] is None
    assert not files["state_path"].parent.exists()
    assert snapshot(workdir) == before


def test_check_mode_rotation_writes_nothing(run, files, pki, workdir) -> None:
    first = run(**files)
    shutil.copy(pki.renewed_crt, files["path"])
    before = snapshot(workdir)
    result = run(check_mode=True, **files)
    assert result["changed"] is True
    assert result["previous_fingerprint"] == first["fingerprint"]
    assert snapshot(workdir) == before
    assert run(check_mode=True, **files)["changed"] is True  # still not recorded


def test_check_mode_unchanged(run, files) -> None:
    run(**files)
    assert run(check_mode=True, **files)["changed"] is False


def test_diff_first_run(run, files) -> None:
    result = run(diff=True, path=files["path"], state_path=files["state_path"])
    assert result["diff"] == {"before": "", "after": f"fingerprint: {result['fingerprint']}\n"}


def test_diff_rotation(run, files, pki) -> None:
    first = run(path=files["path"], state_path=files["state_path"])
    shutil.copy(pki.renewed_crt, files["path"])
    result = run(diff=True, path=files["path"], state_path=files["state_path"])
    assert result["diff"] == {
        "before": f"fingerprint: {first['fingerprint']}\n",
        "after": f"fingerprint: {result['fingerprint']}\n",
    }


def test_diff_with_key_and_check_mode(run, files, pki) -> None:
    first = run(**files)
    shutil.copy(pki.renewed_crt, files["path"])
    result = run(check_mode=True, diff=True, **files)
    assert result["changed"] is True
    assert result["diff"] == {
        "before": f"fingerprint: {first['fingerprint']}\nkey_digest: {first['key_digest']}\n",
        "after": f"fingerprint: {result['fingerprint']}\nkey_digest: {result['key_digest']}\n",
    }


def test_diff_unchanged(run, files) -> None:
    run(**files)
    result = run(diff=True, **files)
    assert result["changed"] is False
    assert result["diff"]["before"] == result["diff"]["after"]


# --- min_valid_days -------------------------------------------------------------------------------------


def test_min_valid_days_satisfied(run, files, pki) -> None:
    shutil.copy(pki.soon_crt, files["path"])
    result = run(min_valid_days=2, **files)
    assert not result.failed, result
    assert result["days_remaining"] == 2


@pytest.mark.parametrize("min_valid_days", [3, 30])
def test_min_valid_days_violated(run, files, pki, workdir, min_valid_days: int) -> None:
    shutil.copy(pki.soon_crt, files["path"])
    before = snapshot(workdir)
    result = run(min_valid_days=min_valid_days, **files)
    assert result.failed
    assert result["msg"].startswith(f"Certificate {files['path']} (subject O=actuated,CN=192.168.128.1) expires on ")
    assert f"in 2 day(s), which is less than min_valid_days={min_valid_days}: renew it" in result["msg"]
    assert result["days_remaining"] == 2
    assert "changed" not in result
    assert snapshot(workdir) == before


def test_soon_expiring_without_min_valid_days_is_fine(run, files, pki) -> None:
    shutil.copy(pki.soon_crt, files["path"])
    assert run(**files)["changed"] is True


def test_min_valid_days_negative(run, files, workdir) -> None:
    before = snapshot(workdir)
    result = run(min_valid_days=-1, **files)
    assert result["msg"] == "min_valid_days must be 0 or more, got -1"
    assert snapshot(workdir) == before


# --- failures: nothing may be recorded ------------------------------------------------------------------


@pytest.fixture
def recorded(run, files, workdir) -> t.Callable[[], None]:
    """Record a state first; return a check that neither it nor anything else under workdir changed."""
    run(**files)
    before = snapshot(workdir / "state")

    def unchanged() -> None:
        assert snapshot(workdir / "state") == before

    return unchanged


def test_expired_certificate(run, files, pki, recorded) -> None:
    shutil.copy(pki.expired_crt, files["path"])
    result = run(**files)
    assert result.failed
    assert result["msg"].startswith(
        f"Certificate {files['path']} (subject O=actuated,CN=192.168.128.1) expired on 2020-03-01T00:00:00Z ("
    )
    assert result["msg"].endswith("day(s) ago): renew it before (re)starting the service")
    assert result["not_after"] == "2020-03-01T00:00:00Z"
    assert result["days_remaining"] < 0
    recorded()


def test_expired_certificate_first_run(run, files, pki, workdir) -> None:
    shutil.copy(pki.expired_crt, files["path"])
    result = run(min_valid_days=0, **files)
    assert "expired on 2020-03-01T00:00:00Z" in result["msg"]
    assert not (workdir / "state").exists()


def test_mismatched_key(run, files, pki, recorded) -> None:
    shutil.copy(pki.other_key, files["key_path"])
    result = run(**files)
    assert result.failed
    assert result["msg"] == (
        f"Private key file {files['key_path']} does not belong to the certificate in {files['path']}"
        " (subject O=actuated,CN=192.168.128.1): their public keys differ. Install the key that was issued with"
        " this certificate."
    )
    assert result["key_matches"] is False
    recorded()


def test_missing_certificate(run, files, recorded) -> None:
    files["path"].unlink()
    result = run(**files)
    assert result["msg"] == f"Cannot read certificate file {files['path']}: the file does not exist"
    recorded()


def test_certificate_is_a_directory(run, files, recorded) -> None:
    """Tests run as root, which reads mode-0000 files: a directory stands in for an unreadable file."""
    result = run(**dict(files, path=files["path"].parent))
    assert result["msg"] == f"Cannot read certificate file {files['path'].parent}: it is a directory, not a file"
    recorded()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file with mode 0000")
def test_unreadable_certificate(run, files, recorded) -> None:  # pragma: no cover - the suite runs as root
    files["path"].chmod(0)
    result = run(**files)
    assert "permission denied" in result["msg"]
    recorded()


def test_empty_certificate(run, files, recorded) -> None:
    files["path"].write_bytes(b"")
    result = run(**files)
    assert result["msg"] == f"Cannot use certificate file {files['path']}: the file is empty"
    recorded()


def test_truncated_certificate(run, files, recorded) -> None:
    data = files["path"].read_bytes()
    files["path"].write_bytes(data[: len(data) // 2])
    result = run(**files)
    assert result["msg"].startswith(
        f"Cannot use certificate file {files['path']}: the PEM file is truncated: the CERTIFICATE block that begins"
        " on line 1 has no '-----END CERTIFICATE-----' line"
    )
    recorded()


def test_truncated_chain(run, files, pki, recorded) -> None:
    data = pki.chain_crt.read_bytes()
    files["path"].write_bytes(data[: len(data) - 100])
    result = run(**files)
    assert "the PEM file is truncated: the CERTIFICATE block that begins on line" in result["msg"]
    recorded()


def test_malformed_base64(run, files, recorded) -> None:
    files["path"].write_text(
        "-----BEGIN CERTIFICATE-----\nThis is *not* base64 at all!\n-----END CERTIFICATE-----\n"
    )
    result = run(**files)
    assert result["msg"] == (
        f"Cannot use certificate file {files['path']}: the CERTIFICATE block on line 1 is malformed"
        " (its body is not valid base64)"
    )
    recorded()


def test_valid_base64_of_garbage(run, files, recorded) -> None:
    body = base64.b64encode(b"garbage" * 20).decode()
    files["path"].write_text(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    result = run(**files)
    assert result["msg"].startswith(
        f"Cannot use certificate file {files['path']}: the CERTIFICATE block on line 1 is not a valid certificate:"
    )
    recorded()


def test_der_sequence_that_openssl_rejects(run, files, recorded) -> None:
    body = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    files["path"].write_text(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    result = run(**files)
    assert result["msg"].startswith(f"Cannot parse the certificate in {files['path']}: openssl x509 failed: ")
    assert result["fingerprint"]  # what was learnt before the failure is kept
    recorded()


def test_not_pem(run, files, recorded) -> None:
    files["path"].write_text("hello\n")
    result = run(**files)
    assert result["msg"] == (
        f"Cannot use certificate file {files['path']}: it is not a PEM file (no '-----BEGIN ...-----' line found)"
    )
    recorded()


def test_der_certificate(run, files, recorded) -> None:
    subprocess.run(
        ["openssl", "x509", "-in", str(files["path"]), "-outform", "DER", "-out", str(files["path"])], check=True
    )
    result = run(**files)
    assert "it is not PEM (it looks like binary DER)" in result["msg"]
    recorded()


def test_key_instead_of_certificate(run, files, recorded) -> None:
    result = run(**dict(files, path=files["key_path"]))
    assert result["msg"] == (
        f"Cannot use certificate file {files['key_path']}: it holds a private key, not a certificate"
        " (PEM blocks found: PRIVATE KEY)"
    )
    recorded()


def test_certificate_instead_of_key(run, files, recorded) -> None:
    result = run(**dict(files, key_path=files["path"]))
    assert result["msg"] == (
        f"Cannot use private key file {files['path']}: it holds a certificate, not a private key"
        " (PEM blocks found: CERTIFICATE)"
    )
    recorded()


def test_missing_key(run, files, recorded) -> None:
    files["key_path"].unlink()
    result = run(**files)
    assert result["msg"] == f"Cannot read private key file {files['key_path']}: the file does not exist"
    recorded()


def test_truncated_key(run, files, recorded) -> None:
    data = files["key_path"].read_bytes()
    files["key_path"].write_bytes(data[: len(data) // 2])
    result = run(**files)
    assert result["msg"].startswith(
        f"Cannot use private key file {files['key_path']}: the PEM file is truncated: the PRIVATE KEY block"
    )
    recorded()


def test_encrypted_key(run, files, recorded) -> None:
    reencode_key(files["key_path"], "-aes256", "-passout", "pass:secret")
    result = run(**files)
    assert result["msg"] == (
        f"Cannot use private key file {files['key_path']}: the private key is encrypted (passphrase-protected);"
        " the registry can only load an unencrypted key"
    )
    recorded()


def test_key_that_openssl_rejects(run, files, recorded) -> None:
    body = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    files["key_path"].write_text(f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    result = run(**files)
    assert result["msg"].startswith(f"Cannot read the private key in {files['key_path']}: openssl pkey failed: ")
    recorded()


def test_trusted_certificate_before_certificate(run, files, pki, recorded) -> None:
    """openssl also reads TRUSTED CERTIFICATE blocks, Go (the registry) does not: refuse the ambiguity."""
    trusted = subprocess.run(
        ["openssl", "x509", "-in", str(pki.ca_crt), "-trustout", "-addtrust", "serverAuth"],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    files["path"].write_bytes(trusted + pki.server_crt.read_bytes())
    result = run(**files)
    assert result["msg"] == (
        f"Cannot use certificate file {files['path']}: openssl read a different certificate"
        f" ({x509_fingerprint(pki.ca_crt)}) than the first CERTIFICATE block of the file"
        f" ({pki.fingerprint(pki.server_crt)})"
    )
    recorded()


def test_state_path_is_a_directory(run, files, workdir) -> None:
    files["state_path"].mkdir(parents=True)
    before = snapshot(workdir)
    result = run(**files)
    assert result["msg"] == f"Cannot read state file {files['state_path']}: it is a directory, not a file"
    assert snapshot(workdir) == before


def test_state_path_through_a_file(run, files, workdir) -> None:
    (workdir / "state").write_text("a file where a directory should be")
    before = snapshot(workdir)
    result = run(**files)
    assert result["msg"] == (
        f"Cannot read state file {files['state_path']}: a component of the path is not a directory"
    )
    assert snapshot(workdir) == before


def test_state_directory_cannot_be_created(run, files, workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root can create directories anywhere writable: simulate the EACCES that a non-root user gets."""

    def deny(path: str, mode: int = 0o777) -> t.NoReturn:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "mkdir", deny)
    result = run(**files)
    assert result["msg"] == (
        f"Cannot create state directory {files['state_path'].parent}: {workdir / 'state'}: Permission denied"
    )
    assert not (workdir / "state").exists()


def test_openssl_missing(run, files, workdir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(workdir / "empty"))  # openssl lives in /usr/bin, never in the sbin directories
    result = run(**files)
    assert result.failed
    assert "openssl" in result["msg"]
    assert not (workdir / "state").exists()


# --- ca_path --------------------------------------------------------------------------------------------


def test_chain_verified(run, files, pki) -> None:
    result = run(ca_path=files["path"].parent / "ca.crt", **files)
    assert result["chain_verified"] is True
    assert result["changed"] is True


def test_chain_verified_with_chain_file(run, files, pki) -> None:
    shutil.copy(pki.chain_crt, files["path"])
    assert run(ca_path=pki.ca_crt, **files)["chain_verified"] is True


def test_chain_wrong_ca(run, files, pki, recorded) -> None:
    result = run(ca_path=pki.other_ca_crt, **files)
    assert result["msg"].startswith(f"Certificate {files['path']} does not chain to the CA in {pki.other_ca_crt}: ")
    assert "unable to get local issuer certificate" in result["msg"]
    assert result["chain_verified"] is False
    recorded()


def test_chain_missing_ca(run, files, workdir, recorded) -> None:
    result = run(ca_path=workdir / "nope.crt", **files)
    assert result["msg"] == f"Cannot read CA file {workdir / 'nope.crt'}: the file does not exist"
    recorded()


def test_chain_ca_is_a_key(run, files, recorded) -> None:
    result = run(ca_path=files["key_path"], **files)
    assert result["msg"] == (
        f"Cannot use CA file {files['key_path']}: it holds a private key, not a certificate"
        " (PEM blocks found: PRIVATE KEY)"
    )
    recorded()


# --- unexpected openssl behaviour -----------------------------------------------------------------------


def fake_openssl(monkeypatch: pytest.MonkeyPatch, replies: dict[str, tuple[int, str, str]]) -> None:
    """Answer openssl subcommands from ``replies``; run everything else for real."""
    real = AnsibleModule.run_command

    def run_command(self: AnsibleModule, args: list[str], **kwargs: t.Any) -> tuple[int, str, str]:
        if args[1] in replies:
            return replies[args[1]]
        return real(self, args, **kwargs)

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)


def test_unexpected_x509_output(run, files, monkeypatch: pytest.MonkeyPatch, recorded) -> None:
    fake_openssl(monkeypatch, {"x509": (0, "something else\n", "")})
    result = run(**files)
    assert result["msg"] == (
        f"Cannot parse the certificate in {files['path']}: unexpected openssl output: openssl did not print"
        " notBefore, notAfter, subject, issuer, serial"
    )
    recorded()


def test_x509_failure_without_output(run, files, monkeypatch: pytest.MonkeyPatch, recorded) -> None:
    fake_openssl(monkeypatch, {"x509": (3, "", "")})
    result = run(**files)
    assert result["msg"] == f"Cannot parse the certificate in {files['path']}: openssl x509 failed: exit code 3"
    recorded()


def test_x509_output_without_public_key(run, files, monkeypatch: pytest.MonkeyPatch, recorded) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-dates", "-subject", "-issuer", "-serial", "-in", str(files["path"])],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout.decode()
    fake_openssl(monkeypatch, {"x509": (0, out, "")})
    result = run(**files)
    assert result["msg"] == (
        f"Cannot read the public key of the certificate in {files['path']}: openssl did not print it"
    )
    # Without a key there is nothing to compare the public key with: that works.
    assert run(path=files["path"], state_path=files["state_path"])["changed"] is True


def test_unexpected_pkey_output(run, files, monkeypatch: pytest.MonkeyPatch, recorded) -> None:
    fake_openssl(monkeypatch, {"pkey": (0, "nothing useful\n", "")})
    result = run(**files)
    assert result["msg"] == (
        f"Cannot read the private key in {files['key_path']}: unexpected openssl output: Cannot use public key"
        " (openssl output): it is not a PEM file (no '-----BEGIN ...-----' line found)"
    )
    recorded()


def test_verify_failure_without_output(run, files, monkeypatch: pytest.MonkeyPatch, recorded) -> None:
    fake_openssl(monkeypatch, {"verify": (2, "", "")})
    result = run(ca_path=files["path"].parent / "ca.crt", **files)
    assert result["msg"] == (
        f"Certificate {files['path']} does not chain to the CA in {files['path'].parent / 'ca.crt'}: exit code 2"
    )
    recorded()


def test_state_write_failure(run, files, monkeypatch: pytest.MonkeyPatch, workdir) -> None:
    def deny(*args: t.Any, **kwargs: t.Any) -> t.NoReturn:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", deny)
    result = run(**files)
    assert result["msg"] == f"Cannot write state file {files['state_path']}: Permission denied"
    assert os.listdir(files["state_path"].parent) == []  # no temporary file left behind


def test_openssl_gets_paths_not_key_material(run, files, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    real = AnsibleModule.run_command

    def run_command(self: AnsibleModule, args: list[str], **kwargs: t.Any) -> tuple[int, str, str]:
        calls.append(list(args))
        assert "data" not in kwargs
        return real(self, args, **kwargs)

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    run(ca_path=files["path"].parent / "ca.crt", **files)
    key_text = files["key_path"].read_text()
    assert [call[1] for call in calls] == ["x509", "pkey", "verify"]
    for call in calls:
        assert all(arg not in key_text for arg in call if len(arg) > 20)
    assert str(files["key_path"]) in calls[1]
