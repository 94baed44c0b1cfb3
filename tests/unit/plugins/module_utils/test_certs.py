# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations

import base64
import datetime
import errno
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from ansible_collections.actuated.registry.plugins.module_utils import _files
from ansible_collections.actuated.registry.plugins.module_utils._certs import (
    CertWatchError,
    PemBlock,
    StateFileCorrupt,
    days_remaining,
    der_sequence_problem,
    diff_text,
    ensure_directory,
    first_certificate,
    first_private_key,
    format_iso8601,
    make_state,
    normalize_fingerprint,
    normalize_san,
    parse_openssl_date,
    parse_public_key_output,
    parse_subject_alt_names,
    parse_x509_output,
    read_file,
    read_state,
    sha256_fingerprint,
    sha256_hex,
    split_pem,
    summarize_openssl_error,
    utcnow,
    write_state_atomic,
)


UTC = datetime.timezone.utc
X509_ARGS = [
    "x509", "-noout", "-fingerprint", "-sha256", "-dates", "-subject", "-issuer", "-serial",
    "-ext", "subjectAltName", "-pubkey", "-nameopt", "RFC2253",
]


def pem(label: str, der: bytes, *, headers: str = "") -> bytes:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (f"-----BEGIN {label}-----\n{headers}" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


def x509_output(path: Path) -> str:
    return subprocess.run(
        ["openssl", *X509_ARGS, "-in", str(path)], check=True, stdout=subprocess.PIPE
    ).stdout.decode()


def pubkey_der(path: Path) -> bytes:
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"], check=True, stdout=subprocess.PIPE
    ).stdout
    return out


# --- read_file -----------------------------------------------------------------------------------------


def test_read_file_returns_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data\n")
    assert read_file(str(path), "certificate file") == b"data\n"


def test_read_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "missing.crt"
    with pytest.raises(CertWatchError, match=f"Cannot read certificate file {path}: the file does not exist"):
        read_file(str(path), "certificate file")


def test_read_file_directory(tmp_path: Path) -> None:
    with pytest.raises(CertWatchError, match="it is a directory, not a file"):
        read_file(str(tmp_path), "certificate file")


def test_read_file_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CertWatchError, match="a component of the path is not a directory"):
        read_file(str(tmp_path / "file" / "server.crt"), "certificate file")


def test_read_file_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(CertWatchError, match=f"Cannot read private key file {loop}: Too many levels"):
        read_file(str(loop), "private key file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file with mode 0000")
def test_read_file_unreadable(tmp_path: Path) -> None:  # pragma: no cover - the suite runs as root
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(CertWatchError, match="permission denied"):
        read_file(str(path), "certificate file")


def test_read_file_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, which can read anything: simulate the EACCES that a non-root user gets."""

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(CertWatchError, match=r"Cannot read certificate file /x: permission denied \(running as uid"):
        read_file("/x", "certificate file")


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_read_file_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.crt"
    path.write_bytes(content)
    with pytest.raises(CertWatchError, match=f"Cannot use certificate file {path}: the file is empty"):
        read_file(str(path), "certificate file")


# --- split_pem ------------------------------------------------------------------------------------------


def test_split_pem_chain_and_text_outside_blocks(pki) -> None:
    data = b"Bag Attributes\n  friendlyName: x\n" + pki.chain_crt.read_bytes() + b"trailing words\n"
    blocks = split_pem(data, "chain.crt", "certificate file")
    assert [b.label for b in blocks] == ["CERTIFICATE", "CERTIFICATE"]
    assert blocks[0].line == 3
    assert blocks[0].der[:1] == b"\x30"
    assert blocks[0].headers == ()


def test_split_pem_crlf_and_indentation() -> None:
    data = pem("CERTIFICATE", b"\x30\x00").replace(b"\n", b"\r\n").replace(b"MAA=", b"  MAA=  ")
    (block,) = split_pem(data, "f", "certificate file")
    assert block.der == b"\x30\x00"


def test_split_pem_headers() -> None:
    data = pem("RSA PRIVATE KEY", b"\x30\x00", headers="Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n")
    (block,) = split_pem(data, "k", "private key file")
    assert block.headers == (("Proc-Type", "4,ENCRYPTED"), ("DEK-Info", "AES-128-CBC,00"))
    assert block.encrypted


def test_split_pem_end_without_begin() -> None:
    data = b"MAA=\n-----END CERTIFICATE-----\n"
    with pytest.raises(CertWatchError, match="f: line 2 ends a PEM block .* that never began"):
        split_pem(data, "f", "certificate file")


def test_split_pem_begin_inside_block(pki) -> None:
    crt = pki.server_crt.read_bytes()
    data = crt[: len(crt) // 2] + b"\n" + pki.ca_crt.read_bytes()
    with pytest.raises(
        CertWatchError, match="truncated or damaged: the CERTIFICATE block that begins on line 1 has no END line"
    ):
        split_pem(data, "f", "certificate file")


def test_split_pem_mismatched_end() -> None:
    data = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END PRIVATE KEY-----\n"
    with pytest.raises(CertWatchError, match="ends with '-----END PRIVATE KEY-----' on line 3"):
        split_pem(data, "f", "certificate file")


def test_split_pem_truncated(pki) -> None:
    crt = pki.server_crt.read_bytes()
    data = crt[: len(crt) // 2]
    with pytest.raises(
        CertWatchError,
        match=r"f: the PEM file is truncated: the CERTIFICATE block that begins on line 1 has no "
        r"'-----END CERTIFICATE-----' line \(the file ends at line \d+\)",
    ):
        split_pem(data, "f", "certificate file")


def test_split_pem_der(pki, tmp_path: Path) -> None:
    der = tmp_path / "server.der"
    subprocess.run(["openssl", "x509", "-in", str(pki.server_crt), "-outform", "DER", "-out", str(der)], check=True)
    with pytest.raises(CertWatchError, match="it is not PEM \\(it looks like binary DER\\)"):
        split_pem(der.read_bytes(), str(der), "certificate file")


def test_split_pem_no_block() -> None:
    with pytest.raises(CertWatchError, match=r"Cannot use certificate file f: it is not a PEM file \(no"):
        split_pem(b"hello world\n", "f", "certificate file")


def test_split_pem_empty_block() -> None:
    with pytest.raises(CertWatchError, match="the CERTIFICATE block on line 1 is empty"):
        split_pem(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "f", "certificate file")


@pytest.mark.parametrize("body", ["this is not base64!", "MAA", "MA=A"])
def test_split_pem_malformed_base64(body: str) -> None:
    data = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()
    with pytest.raises(CertWatchError, match="block on line 1 is malformed \\(its body is not valid base64\\)"):
        split_pem(data, "f", "certificate file")


# --- DER and block selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "der, problem",
    [
        (b"\x30\x00", None),
        (b"\x30\x03\x02\x01\x01", None),
        (b"\x30\x81\x01\x00", None),
        (b"\x30\x82\x00\x01\x00", None),
        (b"\x30", "too short"),
        (b"\x04\x00", "does not start with a DER SEQUENCE (first byte 0x04)"),
        (b"\x30\x80\x00\x00", "DER length is invalid"),
        (b"\x30\x85\x00\x00\x00\x00\x01\x00", "DER length is invalid"),
        (b"\x30\x82\x01", "too short"),
        (b"\x30\x05\x02\x01", "truncated (4 bytes, 7 expected)"),
        (b"\x30\x00\x00", "1 bytes of trailing data"),
    ],
)
def test_der_sequence_problem(der: bytes, problem: str | None) -> None:
    result = der_sequence_problem(der)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_first_certificate_of_chain(pki) -> None:
    blocks = split_pem(pki.chain_crt.read_bytes(), "chain", "certificate file")
    assert first_certificate(blocks, "chain") is blocks[0]


def test_first_certificate_skips_other_blocks(pki) -> None:
    data = pki.server_key.read_bytes() + pki.server_crt.read_bytes()
    blocks = split_pem(data, "combined", "certificate file")
    assert first_certificate(blocks, "combined") is blocks[1]


def test_first_certificate_accepts_x509_certificate_label() -> None:
    (block,) = split_pem(pem("X509 CERTIFICATE", b"\x30\x00"), "f", "certificate file")
    assert first_certificate([block], "f") is block


def test_first_certificate_invalid_der() -> None:
    blocks = split_pem(pem("CERTIFICATE", b"\x30\x05garbage"), "f", "certificate file")
    with pytest.raises(
        CertWatchError, match="Cannot use certificate file f: the CERTIFICATE block on line 1 is not a valid"
    ):
        first_certificate(blocks, "f")


def test_first_certificate_private_key(pki) -> None:
    blocks = split_pem(pki.server_key.read_bytes(), "server.key", "certificate file")
    with pytest.raises(
        CertWatchError, match=r"server.key: it holds a private key, not a certificate \(PEM blocks found: PRIVATE KEY\)"
    ):
        first_certificate(blocks, "server.key")


def test_first_certificate_nothing_usable() -> None:
    blocks = split_pem(pem("PUBLIC KEY", b"\x30\x00") + pem("TRUSTED CERTIFICATE", b"\x30\x00"), "f", "CA file")
    with pytest.raises(
        CertWatchError,
        match=r"Cannot use CA file f: it holds no certificate \(PEM blocks found: PUBLIC KEY, TRUSTED CERTIFICATE\)",
    ):
        first_certificate(blocks, "f", "CA file")


def test_first_private_key_after_parameters() -> None:
    data = pem("EC PARAMETERS", b"\x06\x00") + pem("EC PRIVATE KEY", b"\x30\x00")
    blocks = split_pem(data, "k", "private key file")
    assert first_private_key(blocks, "k") is blocks[1]


@pytest.mark.parametrize(
    "block",
    [
        PemBlock("ENCRYPTED PRIVATE KEY", b"\x30\x00", 1),
        PemBlock("RSA PRIVATE KEY", b"\x30\x00", 1, (("Proc-Type", "4,ENCRYPTED"),)),
    ],
)
def test_first_private_key_encrypted(block: PemBlock) -> None:
    with pytest.raises(CertWatchError, match="k: the private key is encrypted"):
        first_private_key([block], "k")


def test_first_private_key_certificate(pki) -> None:
    blocks = split_pem(pki.server_crt.read_bytes(), "server.crt", "private key file")
    with pytest.raises(CertWatchError, match="server.crt: it holds a certificate, not a private key"):
        first_private_key(blocks, "server.crt")


def test_first_private_key_nothing_usable() -> None:
    with pytest.raises(CertWatchError, match=r"it holds no private key \(PEM blocks found: PUBLIC KEY\)"):
        first_private_key([PemBlock("PUBLIC KEY", b"\x30\x00", 1)], "k")


def test_pem_block_not_encrypted() -> None:
    assert not PemBlock("RSA PRIVATE KEY", b"", 1, (("Comment", "hello"),)).encrypted


# --- digests --------------------------------------------------------------------------------------------


def test_sha256_fingerprint_matches_openssl(pki) -> None:
    blocks = split_pem(pki.chain_crt.read_bytes(), "chain", "certificate file")
    assert sha256_fingerprint(first_certificate(blocks, "chain").der) == pki.fingerprint(pki.chain_crt)
    assert pki.fingerprint(pki.chain_crt) == pki.fingerprint(pki.server_crt)


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("value", ["ab:cd:EF", "ABCDEF", "ab cd ef"])
def test_normalize_fingerprint(value: str) -> None:
    assert normalize_fingerprint(value) == "AB:CD:EF"


# --- dates ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Nov 27 18:00:00 2026 GMT", (2026, 11, 27, 18, 0, 0)),
        ("Feb  3 01:02:03 2027 GMT", (2027, 2, 3, 1, 2, 3)),
        ("  Feb 3 1:02:03 2027 GMT\n", (2027, 2, 3, 1, 2, 3)),
        ("Dec 31 23:59:59.123 9999 GMT", (9999, 12, 31, 23, 59, 59)),
        ("jun 30 23:59:60 2015", (2015, 6, 30, 23, 59, 59)),
        ("2026-11-27 18:00:00Z", (2026, 11, 27, 18, 0, 0)),
        ("2026-11-27T18:00:00Z", (2026, 11, 27, 18, 0, 0)),
        ("2026-11-27T18:00:00.5+00:00", (2026, 11, 27, 18, 0, 0)),
        ("20261127180000Z", (2026, 11, 27, 18, 0, 0)),
        ("491231235959Z", (2049, 12, 31, 23, 59, 59)),
        ("500101000000Z", (1950, 1, 1, 0, 0, 0)),
    ],
)
def test_parse_openssl_date(value: str, expected: tuple[int, ...]) -> None:
    assert parse_openssl_date(value) == datetime.datetime(*expected, tzinfo=UTC)


@pytest.mark.parametrize(
    "value, message",
    [
        ("Foo 27 18:00:00 2026 GMT", "unknown month"),
        ("27 Nov 2026", "unrecognised date"),
        ("", "unrecognised date"),
        ("Feb 30 18:00:00 2026 GMT", "invalid date"),
        ("2026-13-01 00:00:00Z", "invalid date"),
        ("Nov 27 18:00:00 2026 CET", "unrecognised date"),
    ],
)
def test_parse_openssl_date_invalid(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_openssl_date(value)


def test_format_iso8601_converts_to_utc() -> None:
    cet = datetime.timezone(datetime.timedelta(hours=1))
    assert format_iso8601(datetime.datetime(2026, 11, 27, 19, 0, 0, 999, tzinfo=cet)) == "2026-11-27T18:00:00Z"


def test_utcnow_is_aware() -> None:
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == datetime.timedelta(0)


@pytest.mark.parametrize(
    "delta, expected",
    [
        (datetime.timedelta(days=3), 3),
        (datetime.timedelta(days=3) - datetime.timedelta(seconds=1), 2),
        (datetime.timedelta(seconds=1), 0),
        (datetime.timedelta(seconds=-1), -1),
        (datetime.timedelta(days=-10), -10),
    ],
)
def test_days_remaining(delta: datetime.timedelta, expected: int) -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert days_remaining(now + delta, now) == expected


# --- openssl output -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("IP Address:192.168.128.1", "IP:192.168.128.1"),
        ("IP Address:0:0:0:0:0:0:0:1", "IP:::1"),
        ("IP Address:not-an-ip", "IP:not-an-ip"),
        ("DNS:localhost", "DNS:localhost"),
        ("email:a@example.com", "email:a@example.com"),
        ("URI:https://example.com/x", "URI:https://example.com/x"),
        ("DirName:/CN=x", "dirName:/CN=x"),
        ("Registered ID:1.2.3.4", "RID:1.2.3.4"),
        ("othername:<unsupported>", "otherName:<unsupported>"),
        ("Custom:thing", "Custom:thing"),
        ("no separator", "no separator"),
    ],
)
def test_normalize_san(entry: str, expected: str) -> None:
    assert normalize_san(entry) == expected


def test_parse_subject_alt_names_wrapped() -> None:
    assert parse_subject_alt_names("  DNS:a, IP Address:10.0.0.1,\n  DNS:b\n\n") == ["DNS:a", "IP:10.0.0.1", "DNS:b"]
    assert parse_subject_alt_names("") == []


def test_parse_x509_output_real(pki) -> None:
    info = parse_x509_output(x509_output(pki.server_crt))
    assert info.fingerprint == pki.fingerprint(pki.server_crt)
    assert info.subject == "O=actuated,CN=192.168.128.1"
    assert info.issuer == "CN=Test actuated CA"
    assert info.subject_alt_names == ["IP:192.168.128.1", "DNS:localhost"]
    assert info.public_key_der == pubkey_der(pki.server_key)
    assert info.not_before.tzinfo is UTC
    assert datetime.timedelta(days=29) < info.not_after - utcnow() <= datetime.timedelta(days=30)
    serial = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(pki.server_crt)], check=True, stdout=subprocess.PIPE
    ).stdout.decode()
    assert info.serial == serial.strip().split("=", 1)[1]


def test_parse_x509_output_without_san(pki) -> None:
    info = parse_x509_output(x509_output(pki.no_san_crt))
    assert info.subject_alt_names == []


def test_parse_x509_output_old_openssl_spelling() -> None:
    out = (
        "SHA256 Fingerprint=ab:cd\n"
        "notBefore=Jan  1 00:00:00 2026 GMT\n"
        "notAfter=Jan  1 00:00:00 2027 GMT\n"
        "subject=\n"
        "issuer=CN=ca\n"
        "serial=0a\n"
        "X509v3 Subject Alternative Name: critical\n"
        "    DNS:a, DNS:b\n"
        "\n"
        "unknown line\n"
        "other=value\n"
    )
    info = parse_x509_output(out)
    assert info.fingerprint == "AB:CD"
    assert info.subject == ""
    assert info.serial == "0A"
    assert info.subject_alt_names == ["DNS:a", "DNS:b"]
    assert info.public_key_der is None
    assert info.not_after == datetime.datetime(2027, 1, 1, tzinfo=UTC)


def test_parse_x509_output_missing_fields() -> None:
    with pytest.raises(ValueError, match="openssl did not print notAfter, serial"):
        parse_x509_output("notBefore=Jan  1 00:00:00 2026 GMT\nsubject=CN=a\nissuer=CN=b\n")


def test_parse_x509_output_bad_date() -> None:
    out = "notBefore=soon\nnotAfter=later\nsubject=CN=a\nissuer=CN=b\nserial=01\n"
    with pytest.raises(ValueError, match="unrecognised date 'soon'"):
        parse_x509_output(out)


def test_parse_public_key_output(pki) -> None:
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(pki.server_key), "-pubout"], check=True, stdout=subprocess.PIPE
    ).stdout.decode()
    assert parse_public_key_output(out) == pubkey_der(pki.server_key)


def test_parse_public_key_output_without_public_key() -> None:
    with pytest.raises(ValueError, match="openssl printed no PUBLIC KEY block"):
        parse_public_key_output(pem("PRIVATE KEY", b"\x30\x00").decode())


@pytest.mark.parametrize(
    "rc, stdout, stderr, expected",
    [
        (
            1,
            "",
            "Could not read certificate from x\n"
            "801BBD426A7F0000:error:1608010C:STORE routines:ossl_store_handle_load_result:unsupported:x.c:149:\n"
            "Unable to load certificate\n",
            "Could not read certificate from x; Unable to load certificate",
        ),
        (
            1,
            "",
            "801BBD426A7F0000:error:1608010C:STORE routines:unsupported\n",
            "801BBD426A7F0000:error:1608010C:STORE routines:unsupported",
        ),
        (2, "x.crt: verification failed\n", "", "x.crt: verification failed"),
        (3, "", "", "exit code 3"),
    ],
)
def test_summarize_openssl_error(rc: int, stdout: str, stderr: str, expected: str) -> None:
    assert summarize_openssl_error(rc, stdout, stderr) == expected


# --- state file -----------------------------------------------------------------------------------------


def test_make_state() -> None:
    now = datetime.datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)
    assert make_state("AB", None, now) == {"fingerprint": "AB", "key_digest": None, "recorded_at": "2026-11-27T18:00:00Z"}


def test_read_state_missing(tmp_path: Path) -> None:
    assert read_state(str(tmp_path / "nothing" / "state.json")) is None


def test_read_state_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = {"fingerprint": "AB:CD", "key_digest": "ff", "recorded_at": "2026-11-27T18:00:00Z"}
    write_state_atomic(str(path), state)
    assert read_state(str(path)) == state


def test_read_state_directory(tmp_path: Path) -> None:
    with pytest.raises(CertWatchError, match=f"Cannot read state file {tmp_path}: it is a directory"):
        read_state(str(tmp_path))


def test_read_state_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(CertWatchError, match="Cannot read state file /s: permission denied"):
        read_state("/s")


def test_read_state_other_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(CertWatchError, match="Cannot read state file .*: Too many levels of symbolic links"):
        read_state(str(loop))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[]", "does not hold a recorded certificate fingerprint"),
        (b'{"key_digest": null}', "does not hold a recorded certificate fingerprint"),
        (b'{"fingerprint": 1}', "does not hold a recorded certificate fingerprint"),
    ],
)
def test_read_state_corrupt(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileCorrupt, match=message):
        read_state(str(path))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_ensure_directory_creates_0700(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "a" / "b" / "c"
    old = os.umask(umask)
    try:
        created = ensure_directory(str(target))
    finally:
        os.umask(old)
    assert created == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(target)]
    for path in created:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert ensure_directory(str(target)) == []


def test_ensure_directory_blocked_by_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CertWatchError, match=f"{tmp_path / 'file'} exists and is not a directory"):
        ensure_directory(str(tmp_path / "file" / "sub"))


def test_ensure_directory_created_concurrently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = os.mkdir

    def racing_mkdir(path: str, mode: int = 0o777) -> None:
        real_mkdir(path, mode)
        raise FileExistsError(errno.EEXIST, "File exists", path)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    assert ensure_directory(str(tmp_path / "new")) == []
    assert (tmp_path / "new").is_dir()


def test_ensure_directory_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(path: str, mode: int = 0o777) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "mkdir", deny)
    with pytest.raises(CertWatchError, match=f"Cannot create state directory {tmp_path / 'new'}: .*: Permission denied"):
        ensure_directory(str(tmp_path / "new"))


def test_write_state_atomic_mode_and_content(tmp_path: Path) -> None:
    path = tmp_path / "state" / "server.json"
    write_state_atomic(str(path), {"fingerprint": "AB", "key_digest": None, "recorded_at": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"fingerprint": "AB", "key_digest": None, "recorded_at": "x"}
    assert os.listdir(path.parent) == ["server.json"]


def test_write_state_atomic_replaces_and_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_text("old")
    path.chmod(0o644)
    inode = path.stat().st_ino
    write_state_atomic(str(path), {"fingerprint": "AB"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert json.loads(path.read_text()) == {"fingerprint": "AB"}


def test_write_state_atomic_cannot_create_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", deny)
    with pytest.raises(CertWatchError, match=f"cannot create a temporary file in {tmp_path}: Permission denied"):
        write_state_atomic(str(tmp_path / "s.json"), {"fingerprint": "AB"})


@pytest.mark.parametrize("unlink_fails", [False, True])
def test_write_state_atomic_replace_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unlink_fails: bool) -> None:
    target = tmp_path / "s.json"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty directory cannot be replaced by a file
    if unlink_fails:
        real_unlink = os.unlink

        def failing_unlink(path: str) -> None:
            real_unlink(path)
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "unlink", failing_unlink)
    with pytest.raises(CertWatchError, match=f"Cannot write state file {target}: Is a directory"):
        write_state_atomic(str(target), {"fingerprint": "AB"})
    assert sorted(os.listdir(tmp_path)) == ["s.json"]  # the temporary file is gone


def test_fsync_directory_best_effort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_open(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    def no_fsync(fd: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    with monkeypatch.context() as m:
        m.setattr(os, "open", no_open)
        _files.fsync_directory(str(tmp_path))
    real_fsync = os.fsync
    calls: list[int] = []

    def fsync_dir_fails(fd: int) -> None:
        calls.append(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            no_fsync(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_dir_fails)
    write_state_atomic(str(tmp_path / "s.json"), {"fingerprint": "AB"})
    assert len(calls) == 2
    assert read_state(str(tmp_path / "s.json")) == {"fingerprint": "AB"}


# --- diff -----------------------------------------------------------------------------------------------


def test_diff_text() -> None:
    assert diff_text(None, None, False) == ""
    assert diff_text(None, "ff", True) == ""
    assert diff_text("AB", None, False) == "fingerprint: AB\n"
    assert diff_text("AB", "ff", False) == "fingerprint: AB\n"
    assert diff_text("AB", "ff", True) == "fingerprint: AB\nkey_digest: ff\n"
    assert diff_text("AB", None, True) == "fingerprint: AB\nkey_digest: null\n"
