# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The fleet_ca action plugin, with a stub task, on a temporary controller directory: the CA's life (created once,
reused, never overwritten, refused when broken), the tier certificates' (issued, kept, reissued for the right
reasons), check and diff mode, several hosts at once, and openssl's opinion of what it wrote."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import threading
import typing as t
from pathlib import Path
from unittest import mock

import pytest
from ansible.errors import AnsibleActionFail
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.actuated.registry.plugins.action import fleet_ca
from ansible_collections.actuated.registry.plugins.action.fleet_ca import ActionModule

ADDRESSES = ["192.168.128.10", "tier-1.registry.test"]


def action(args: dict[str, t.Any], check_mode: bool = False, diff: bool = False) -> ActionModule:
    task = mock.MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = check_mode
    task.diff = diff
    return ActionModule(task, mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), mock.MagicMock())


def run(directory: Path, name: str = "tier-1", check_mode: bool = False, diff: bool = False,
        **args: t.Any) -> dict[str, t.Any]:
    args = {"dir": str(directory), "name": name, "addresses": ADDRESSES, **args}
    return action(args, check_mode, diff).run(task_vars={})


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Everything under DIRECTORY (mode, mtime, content): to prove that a run wrote nothing."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            found[str(path)] = (st.st_mode, st.st_mtime_ns, path.read_bytes() if path.is_file() else b"")
    return found


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def openssl_verify(ca: Path, cert: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), *options, str(cert)],
                          capture_output=True, text=True, check=False)


def self_signed_ca(directory: Path, *, start: datetime.datetime, end: datetime.datetime) -> None:
    """A CA (with cryptography, which can back-date) as DIRECTORY/ca.crt + ca.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Short-lived CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "fleet" / "ca"


@pytest.fixture(autouse=True)
def _needs_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to check the certificates")


# --- the first run --------------------------------------------------------------------------------------------------


def test_first_run_creates_the_ca_and_issues_the_tier_certificate(ca_dir: Path) -> None:
    result = run(ca_dir)
    assert not result.get("failed"), result
    assert result["changed"] is True and result["ca_created"] is True and result["issued"] is True
    assert result["reason"] == "missing"
    assert result["ca_cert"] == str(ca_dir / "ca.crt")
    assert result["cert"] == str(ca_dir / "tiers" / "tier-1.crt")
    assert result["key"] == str(ca_dir / "tiers" / "tier-1.key")
    assert result["sans"] == ["IP:192.168.128.10", "DNS:tier-1.registry.test"]
    assert mode(ca_dir) == 0o700 and mode(ca_dir / "tiers") == 0o700
    assert mode(ca_dir / "ca.key") == 0o600 and mode(ca_dir / "ca.crt") == 0o644
    assert mode(ca_dir / "tiers" / "tier-1.key") == 0o600 and mode(ca_dir / "tiers" / "tier-1.crt") == 0o644
    assert not list(ca_dir.rglob("*.tmp")), "temporary files left behind"


def test_the_ca_certificate_is_a_ca(ca_dir: Path) -> None:
    run(ca_dir)
    ca = load(ca_dir / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature
    assert ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.subject.rfc4514_string() == "CN=actuated.registry fleet CA" == ca.issuer.rfc4514_string()
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    days = (fleet_ca.not_after(ca) - datetime.datetime.now(datetime.timezone.utc)).days
    assert 3648 <= days <= 3650


def test_the_tier_certificate_is_a_server_certificate_of_the_ca(ca_dir: Path) -> None:
    result = run(ca_dir, name="tier-1", addresses=["192.168.128.10", "Tier-1.Registry.Test.", "fd00::10"])
    ca, cert = load(ca_dir / "ca.crt"), load(ca_dir / "tiers" / "tier-1.crt")
    assert cert.subject.rfc4514_string() == "CN=tier-1" and cert.issuer == ca.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.key_encipherment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.168.128.10", "fd00::10"]
    assert san.get_values_for_type(x509.DNSName) == ["tier-1.registry.test"]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert result["sans"] == ["IP:192.168.128.10", "DNS:tier-1.registry.test", "IP:fd00::10"]
    days = (fleet_ca.not_after(cert) - datetime.datetime.now(datetime.timezone.utc)).days
    assert 395 <= days <= 397
    assert result["not_after"] == fleet_ca.not_after(cert).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = serialization.load_pem_private_key((ca_dir / "tiers" / "tier-1.key").read_bytes(), password=None)
    assert fleet_ca.public_der(key) == fleet_ca.public_der(cert.public_key())


def test_openssl_verifies_the_tier_certificate_with_its_san_ip_and_name(ca_dir: Path) -> None:
    run(ca_dir)
    ca, cert = ca_dir / "ca.crt", ca_dir / "tiers" / "tier-1.crt"
    for options in ([], ["-purpose", "sslserver"], ["-verify_ip", "192.168.128.10"],
                    ["-verify_hostname", "tier-1.registry.test"]):
        proc = openssl_verify(ca, cert, *options)
        assert proc.returncode == 0 and proc.stdout.strip().endswith(": OK"), (options, proc.stdout, proc.stderr)
    for options in (["-verify_ip", "192.168.128.11"], ["-verify_hostname", "other.registry.test"]):
        assert openssl_verify(ca, cert, *options).returncode != 0, options


# --- idempotence and reuse ------------------------------------------------------------------------------------------


def test_second_run_changes_nothing(ca_dir: Path) -> None:
    first = run(ca_dir)
    before = snapshot(ca_dir)
    second = run(ca_dir)
    assert second["changed"] is False and second["ca_created"] is False and second["issued"] is False
    assert second["reason"] is None
    assert second["not_after"] == first["not_after"] and second["sans"] == first["sans"]
    assert snapshot(ca_dir) == before


def test_the_order_of_the_addresses_and_duplicates_do_not_matter(ca_dir: Path) -> None:
    run(ca_dir)
    before = snapshot(ca_dir)
    result = run(ca_dir, addresses=["TIER-1.registry.test", "192.168.128.10", "192.168.128.10"])
    assert result["changed"] is False
    assert snapshot(ca_dir) == before


def test_the_ca_is_reused_for_every_tier(ca_dir: Path) -> None:
    run(ca_dir, name="tier-1")
    ca = (ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes()
    result = run(ca_dir, name="tier-2", addresses=["192.168.128.20"])
    assert result["ca_created"] is False and result["issued"] is True and result["changed"] is True
    assert ((ca_dir / "ca.crt").read_bytes(), (ca_dir / "ca.key").read_bytes()) == ca
    assert openssl_verify(ca_dir / "ca.crt", ca_dir / "tiers" / "tier-2.crt", "-verify_ip", "192.168.128.20").returncode == 0


def test_an_existing_ca_made_elsewhere_is_used_and_never_overwritten(ca_dir: Path, pki: t.Any) -> None:
    ca_dir.mkdir(parents=True)
    shutil.copy(pki.ca_crt, ca_dir / "ca.crt")
    shutil.copy(pki.ca_key, ca_dir / "ca.key")
    result = run(ca_dir, ca_common_name="another name", ca_days=1)
    assert not result.get("failed"), result
    assert result["ca_created"] is False and result["issued"] is True
    assert (ca_dir / "ca.crt").read_bytes() == pki.ca_crt.read_bytes()
    assert (ca_dir / "ca.key").read_bytes() == pki.ca_key.read_bytes()
    assert load(ca_dir / "tiers" / "tier-1.crt").issuer.rfc4514_string() == "CN=Test actuated CA"
    assert openssl_verify(pki.ca_crt, ca_dir / "tiers" / "tier-1.crt", "-verify_ip", "192.168.128.10").returncode == 0


# --- a CA that cannot be used ---------------------------------------------------------------------------------------


def broken_ca(ca_dir: Path, crt: Path | None, key: Path | None) -> dict[str, tuple[int, int, bytes]]:
    ca_dir.mkdir(parents=True)
    if crt is not None:
        shutil.copy(crt, ca_dir / "ca.crt")
    if key is not None:
        shutil.copy(key, ca_dir / "ca.key")
    return snapshot(ca_dir)


def test_a_ca_key_that_does_not_match_fails_and_nothing_changes(ca_dir: Path, pki: t.Any) -> None:
    before = broken_ca(ca_dir, pki.ca_crt, pki.other_ca_key)
    result = run(ca_dir)
    assert result["failed"] and result["changed"] is False
    assert result["msg"] == (f"{ca_dir}/ca.key does not belong to {ca_dir}/ca.crt (their public keys differ): "
                             f"restore the key that was created with this CA certificate")
    assert {k: v for k, v in snapshot(ca_dir).items() if not k.endswith(".lock")} == before


def test_a_certificate_that_is_not_a_ca_fails(ca_dir: Path, pki: t.Any) -> None:
    before = broken_ca(ca_dir, pki.server_crt, pki.server_key)
    result = run(ca_dir)
    assert result["failed"]
    assert result["msg"] == f"{ca_dir}/ca.crt is not a CA certificate (it lacks basicConstraints CA:TRUE)"
    assert {k: v for k, v in snapshot(ca_dir).items() if not k.endswith(".lock")} == before


@pytest.mark.parametrize("present", ["ca.crt", "ca.key"])
def test_half_a_ca_fails_and_is_not_completed(ca_dir: Path, pki: t.Any, present: str) -> None:
    before = broken_ca(ca_dir, pki.ca_crt if present == "ca.crt" else None, pki.ca_key if present == "ca.key" else None)
    result = run(ca_dir)
    assert result["failed"]
    missing = "ca.key" if present == "ca.crt" else "ca.crt"
    assert result["msg"].startswith(f"{ca_dir}/{present} exists but {ca_dir}/{missing} does not: fleet_ca never "
                                    f"replaces part of a CA.")
    assert {k: v for k, v in snapshot(ca_dir).items() if not k.endswith(".lock")} == before


def test_an_encrypted_ca_key_fails(ca_dir: Path, pki: t.Any, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki.ca_key), "-aes256", "-passout", "pass:pw", "-out", str(encrypted)],
                   check=True)
    broken_ca(ca_dir, pki.ca_crt, encrypted)
    result = run(ca_dir)
    assert result["failed"] and result["msg"].startswith(f"{ca_dir}/ca.key is an encrypted private key")


def test_damaged_ca_files_fail(ca_dir: Path, pki: t.Any, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    broken_ca(ca_dir, garbage, pki.ca_key)
    result = run(ca_dir)
    assert result["failed"] and result["msg"].startswith(f"{ca_dir}/ca.crt is not a PEM certificate")


def test_an_expired_ca_fails(ca_dir: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    self_signed_ca(ca_dir, start=now - datetime.timedelta(days=30), end=now - datetime.timedelta(days=1))
    result = run(ca_dir)
    assert result["failed"] and f"the fleet CA {ca_dir}/ca.crt expired on" in result["msg"]
    assert not (ca_dir / "tiers").exists()


def test_a_ca_that_expires_soon_caps_the_certificate_and_warns_without_reissuing_forever(ca_dir: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    self_signed_ca(ca_dir, start=now - datetime.timedelta(days=1), end=now + datetime.timedelta(days=20))
    first = run(ca_dir)
    ca_end = fleet_ca.not_after(load(ca_dir / "ca.crt"))
    assert first["issued"] and fleet_ca.not_after(load(ca_dir / "tiers" / "tier-1.crt")) == ca_end
    assert any("expires on" in warning and "plan a new CA" in warning for warning in first["warnings"])
    second = run(ca_dir)
    assert second["changed"] is False and second["warnings"]


# --- reissuing ------------------------------------------------------------------------------------------------------


def test_changed_addresses_reissue(ca_dir: Path) -> None:
    run(ca_dir)
    old = load(ca_dir / "tiers" / "tier-1.crt")
    result = run(ca_dir, addresses=["192.168.128.11"])
    assert result["changed"] and result["issued"] and not result["ca_created"]
    assert result["reason"] == "the subject alternative names differ"
    assert result["sans"] == ["IP:192.168.128.11"]
    new = load(ca_dir / "tiers" / "tier-1.crt")
    assert new.serial_number != old.serial_number
    assert openssl_verify(ca_dir / "ca.crt", ca_dir / "tiers" / "tier-1.crt", "-verify_ip", "192.168.128.11").returncode == 0
    assert run(ca_dir, addresses=["192.168.128.11"])["changed"] is False


def test_a_certificate_near_its_end_is_reissued(ca_dir: Path) -> None:
    first = run(ca_dir, days=10, renew_before_days=5)
    assert first["issued"]
    assert run(ca_dir, days=10, renew_before_days=5)["changed"] is False
    result = run(ca_dir)  # renew_before_days 30 > the 10 days left
    assert result["issued"] and result["reason"] == "it expires within 30 days"
    assert result["not_after"] > first["not_after"]
    assert run(ca_dir)["changed"] is False


@pytest.mark.parametrize("damage", ["other CA", "other key", "no key", "no certificate", "garbage"])
def test_a_tier_certificate_that_does_not_belong_is_reissued(ca_dir: Path, pki: t.Any, damage: str) -> None:
    run(ca_dir)
    crt, key = ca_dir / "tiers" / "tier-1.crt", ca_dir / "tiers" / "tier-1.key"
    if damage == "other CA":
        shutil.copy(pki.server_crt, crt)
        shutil.copy(pki.server_key, key)
    elif damage == "other key":
        shutil.copy(pki.other_key, key)
    elif damage == "no key":
        key.unlink()
    elif damage == "no certificate":
        crt.unlink()
    else:
        crt.write_text("garbage\n")
    result = run(ca_dir)
    assert result["issued"] and not result["ca_created"]
    assert result["reason"] == {"other CA": "not signed by this CA", "other key": "the key does not belong to the certificate",
                                "no key": "missing", "no certificate": "missing",
                                "garbage": "the certificate cannot be read"}[damage]
    assert openssl_verify(ca_dir / "ca.crt", crt).returncode == 0
    assert mode(key) == 0o600
    assert run(ca_dir)["changed"] is False


# --- check and diff mode --------------------------------------------------------------------------------------------


def test_check_mode_on_a_new_directory_writes_nothing(ca_dir: Path) -> None:
    result = run(ca_dir, check_mode=True, diff=True)
    assert result["changed"] and result["ca_created"] and result["issued"]
    assert result["sans"] == ["IP:192.168.128.10", "DNS:tier-1.registry.test"]
    assert not ca_dir.exists() and not ca_dir.parent.exists()
    assert [d["before_header"] for d in result["diff"]] == [str(ca_dir / "ca.crt"), str(ca_dir / "tiers" / "tier-1.crt")]


def test_check_mode_reports_a_reissue_but_writes_nothing(ca_dir: Path) -> None:
    run(ca_dir)
    before = snapshot(ca_dir)
    result = run(ca_dir, check_mode=True, addresses=["192.168.128.11"])
    assert result["changed"] and result["issued"] and not result["ca_created"]
    assert result["reason"] == "the subject alternative names differ"
    assert snapshot(ca_dir) == before
    assert run(ca_dir, check_mode=True)["changed"] is False


def test_check_mode_does_not_create_the_lock_file(ca_dir: Path, pki: t.Any) -> None:
    ca_dir.mkdir(parents=True)
    shutil.copy(pki.ca_crt, ca_dir / "ca.crt")
    shutil.copy(pki.ca_key, ca_dir / "ca.key")
    before = snapshot(ca_dir)
    assert run(ca_dir, check_mode=True)["issued"]
    assert snapshot(ca_dir) == before


def test_the_diff_is_a_summary_without_key_material(ca_dir: Path) -> None:
    run(ca_dir)
    result = run(ca_dir, diff=True, addresses=["192.168.128.11", "tier-1.registry.test"])
    (diff,) = result["diff"]
    assert diff["before"].splitlines()[0] == "subject: CN=tier-1"
    assert "sans: IP:192.168.128.10, DNS:tier-1.registry.test" in diff["before"]
    assert "sans: IP:192.168.128.11, DNS:tier-1.registry.test" in diff["after"]
    assert f"not_after: {result['not_after']}" in diff["after"]
    dumped = json.dumps(result)
    for path in (ca_dir / "ca.key", ca_dir / "tiers" / "tier-1.key"):
        body = "".join(path.read_text().splitlines()[1:-1])
        assert body[:40] not in dumped
    assert "PRIVATE" not in dumped and "BEGIN" not in dumped


def test_no_result_ever_holds_key_material(ca_dir: Path, pki: t.Any) -> None:
    results = [run(ca_dir, diff=True), run(ca_dir, diff=True, addresses=["10.0.0.1"]),
               run(ca_dir, diff=True, check_mode=True, name="tier-2")]
    shutil.copy(pki.other_ca_key, ca_dir / "ca.key")
    results.append(run(ca_dir, diff=True))
    dumped = json.dumps(results)
    keys = [ca_dir / "tiers" / "tier-1.key", pki.other_ca_key]
    assert "PRIVATE" not in dumped
    for path in keys:
        for line in path.read_text().splitlines()[1:-1]:
            assert line not in dumped


def test_no_diff_without_diff_mode(ca_dir: Path) -> None:
    assert "diff" not in run(ca_dir)


# --- arguments ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    ({"name": "../evil"}, "name '../evil' cannot name a file"),
    ({"name": ".hidden"}, "name '.hidden' cannot name a file"),
    ({"addresses": []}, "addresses is empty"),
    ({"addresses": ["192.168.128.10/24"]}, "addresses: '192.168.128.10/24' is neither an IP address nor a DNS name"),
    ({"addresses": ["bad name"]}, "addresses: 'bad name' is neither an IP address nor a DNS name"),
    ({"addresses": ["[::1]"]}, "addresses: '[::1]' is neither an IP address nor a DNS name"),
    ({"days": 30}, "renew_before_days (30) must be less than days (30)"),
    ({"renew_before_days": -1}, "renew_before_days must not be negative"),
    ({"ca_days": 0}, "ca_days must be at least 1"),
    ({"ca_common_name": ""}, "ca_common_name must be 1 to 64 characters long"),
])
def test_bad_arguments_fail_before_anything_is_written(ca_dir: Path, args: dict[str, t.Any], message: str) -> None:
    result = run(ca_dir, **args)
    assert result["failed"] and result["changed"] is False
    assert result["msg"].startswith("1 problem with the arguments; nothing was changed:\n- ")
    assert message in result["msg"]
    assert not ca_dir.exists()


def test_every_argument_problem_at_once(ca_dir: Path) -> None:
    result = run(ca_dir, name="a/b", addresses=["x y"], days=1)
    assert result["msg"].startswith("3 problems with the arguments; nothing was changed:")


@pytest.mark.parametrize(("args", "message"), [
    ({"bogus": 1}, "bogus"),
    ({"days": "many"}, "days"),
])
def test_argument_types_are_checked(ca_dir: Path, args: dict[str, t.Any], message: str) -> None:
    result = run(ca_dir, **args)
    assert result["failed"] and message in result["msg"]
    assert not ca_dir.exists()


def test_a_required_argument_is_missing(ca_dir: Path) -> None:
    result = action({"dir": str(ca_dir), "name": "tier-1"}).run(task_vars={})
    assert result["failed"] and "addresses" in result["msg"]


def test_a_file_where_the_directory_should_be_fails(tmp_path: Path) -> None:
    (tmp_path / "ca").write_text("")
    for check_mode in (False, True):
        result = run(tmp_path / "ca", check_mode=check_mode)
        assert result["failed"] and result["msg"] == f"{tmp_path / 'ca'} exists and is not a directory"


def test_write_atomic_never_replaces_when_told_not_to(tmp_path: Path) -> None:
    target = tmp_path / "ca.key"
    target.write_bytes(b"first")
    with pytest.raises(fleet_ca.FleetCaError, match="appeared while it was being created"):
        fleet_ca.write_atomic(str(target), b"second", 0o600, overwrite=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key"]
    fleet_ca.write_atomic(str(target), b"second", 0o640)
    assert target.read_bytes() == b"second" and mode(target) == 0o640


def test_unknown_option_raises_nothing_else(ca_dir: Path) -> None:
    """Unknown options are reported as a failed result (validate_argument_spec), not as an exception."""
    try:
        result = run(ca_dir, other="x")
    except AnsibleActionFail as exc:  # pragma: no cover - would be a regression
        pytest.fail(f"raised {exc}")
    assert result["failed"]


# --- several hosts at once ------------------------------------------------------------------------------------------


def _in_a_process(directory: str, name: str, address: str, barrier: t.Any, queue: t.Any) -> None:
    barrier.wait()
    result = run(Path(directory), name=name, addresses=[address])
    queue.put((name, result.get("failed"), result.get("msg"), result.get("ca_created")))


def _check_one_ca(ca_dir: Path, outcomes: list[tuple[str, t.Any, t.Any, t.Any]], count: int) -> None:
    assert len(outcomes) == count
    assert [outcome for outcome in outcomes if outcome[1]] == [], outcomes
    assert sum(1 for outcome in outcomes if outcome[3]) == 1
    for outcome in outcomes:
        name = outcome[0]
        proc = openssl_verify(ca_dir / "ca.crt", ca_dir / "tiers" / f"{name}.crt")
        assert proc.returncode == 0, proc.stderr
    assert not list(ca_dir.rglob("*.tmp"))


def test_parallel_processes_create_one_ca(ca_dir: Path) -> None:
    """Ansible's forks: one worker process per host, all on the same directory at the same moment."""
    context = multiprocessing.get_context("fork")
    count = 6
    barrier, queue = context.Barrier(count), context.Queue()
    workers = [context.Process(target=_in_a_process, args=(str(ca_dir), f"tier-{i}", f"192.168.128.{10 + i}", barrier, queue))
               for i in range(count)]
    for worker in workers:
        worker.start()
    outcomes = [queue.get(timeout=60) for _worker in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    _check_one_ca(ca_dir, outcomes, count)


def test_parallel_threads_create_one_ca(ca_dir: Path) -> None:
    count = 6
    barrier = threading.Barrier(count)
    outcomes: list[tuple[str, t.Any, t.Any, t.Any]] = []

    def worker(index: int) -> None:
        barrier.wait()
        result = run(ca_dir, name=f"tier-{index}", addresses=[f"192.168.128.{10 + index}"])
        outcomes.append((f"tier-{index}", result.get("failed"), result.get("msg"), result.get("ca_created")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    _check_one_ca(ca_dir, outcomes, count)
