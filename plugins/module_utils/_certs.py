# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It must run on the managed host with the Python standard library alone (Python 3.8+).

"""Certificate, key and state-file helpers for the ``cert_watch`` module.

Nothing here parses X.509 itself: PEM framing, base64, the outer DER length and SHA-256 are done in pure
Python; everything else (dates, names, extensions, public keys) comes from the ``openssl`` command, whose
text output is parsed by the functions below.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import errno
import hashlib
import ipaddress
import json
import os
import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.actuated.registry.plugins.module_utils._files import FileError, write_atomically


STATE_FILE_MODE = 0o600
STATE_DIR_MODE = 0o700

# PEM labels that hold an X.509 certificate in the form Go's crypto/tls (the registry) and openssl read.
CERTIFICATE_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
PRIVATE_KEY_SUFFIX = "PRIVATE KEY"
ENCRYPTED_PRIVATE_KEY_LABEL = "ENCRYPTED PRIVATE KEY"
PUBLIC_KEY_LABEL = "PUBLIC KEY"

_BEGIN_RE = re.compile(r"^-----BEGIN ([^-]+)-----\s*$")
_END_RE = re.compile(r"^-----END ([^-]*)-----\s*$")
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}
# openssl's default (RFC 822 like) format: "Nov 27 18:00:00 2026 GMT", single-digit days padded with a space.
_OPENSSL_DATE_RE = re.compile(
    r"^(?P<mon>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.\d+)?"
    r"\s+(?P<year>\d{4})(?:\s+(?:GMT|UTC|Z))?$"
)
# ISO 8601 as printed by "openssl x509 -dateopt iso_8601" ("2026-11-27 18:00:00Z") and as this module writes it.
_ISO_DATE_RE = re.compile(
    r"^(?P<year>\d{4})-(?P<mon>\d{2})-(?P<day>\d{2})[T ](?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.\d+)?"
    r"\s*(?:Z|GMT|UTC|\+00:?00)?$"
)
# ASN.1 GeneralizedTime / UTCTime ("20261127180000Z", "261127180000Z").
_ASN1_DATE_RE = re.compile(
    r"^(?P<year>\d{2}|\d{4})(?P<mon>\d{2})(?P<day>\d{2})(?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2})Z$"
)
_SAN_HEADER = "X509v3 Subject Alternative Name:"
# openssl's names for GeneralName types -> the short prefixes used in certificate requests (and community.crypto).
_SAN_PREFIXES = {
    "IP Address": "IP",
    "DNS": "DNS",
    "email": "email",
    "URI": "URI",
    "DirName": "dirName",
    "Registered ID": "RID",
    "othername": "otherName",
}


class CertWatchError(Exception):
    """A problem the user has to fix; the message names the file and what is wrong with it."""


class StateFileCorrupt(CertWatchError):
    """The state file exists but does not hold a state this module wrote."""


@dataclass(frozen=True)
class PemBlock:
    """One ``-----BEGIN X-----`` ... ``-----END X-----`` block of a PEM file."""

    label: str
    der: bytes
    line: int
    headers: t.Tuple[t.Tuple[str, str], ...] = ()

    @property
    def encrypted(self) -> bool:
        """Whether the block is a passphrase-protected private key (PKCS#8 or legacy OpenSSL headers)."""
        if self.label == ENCRYPTED_PRIVATE_KEY_LABEL:
            return True
        return any(name.lower() == "proc-type" and "ENCRYPTED" in value.upper() for name, value in self.headers)


@dataclass
class CertificateInfo:
    """What ``openssl x509 -noout ...`` printed about one certificate."""

    not_before: datetime.datetime
    not_after: datetime.datetime
    subject: str
    issuer: str
    serial: str
    subject_alt_names: t.List[str] = field(default_factory=list)
    fingerprint: t.Optional[str] = None
    public_key_der: t.Optional[bytes] = None


def utcnow() -> datetime.datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def describe_os_error(exc: OSError) -> str:
    """Say what an error from opening a file means, in words that point at the fix."""
    if exc.errno == errno.ENOENT:
        return "the file does not exist"
    if exc.errno == errno.EISDIR:
        return "it is a directory, not a file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied (running as uid {os.geteuid()})"
    if exc.errno == errno.ENOTDIR:
        return "a component of the path is not a directory"
    return exc.strerror or str(exc)


def read_file(path: str, what: str) -> bytes:
    """Read a whole file, turning every OS error into a message that names the file and the problem.

    ``what`` describes the file for the user, for example ``certificate file``.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CertWatchError(f"Cannot read {what} {path}: {describe_os_error(exc)}") from None
    if not data.strip():
        raise CertWatchError(f"Cannot use {what} {path}: the file is empty")
    return data


def split_pem(data: bytes, path: str, what: str) -> t.List[PemBlock]:
    """Split the PEM blocks of a file and decode their base64 bodies.

    Text outside the blocks is ignored, as openssl and Go do. Every block must be complete (a BEGIN line, a
    matching END line) and hold valid base64, so a file that was cut short or damaged is reported here.
    """
    text = data.decode("latin-1")
    lines = text.splitlines()
    blocks: t.List[PemBlock] = []
    label: t.Optional[str] = None
    start = 0
    body: t.List[str] = []
    headers: t.List[t.Tuple[str, str]] = []
    for number, raw_line in enumerate(lines, start=1):
        line = raw_line.strip()
        begin = _BEGIN_RE.match(line)
        end = _END_RE.match(line)
        if label is None:
            if begin:
                label, start, body, headers = begin.group(1).strip(), number, [], []
            elif end:
                raise CertWatchError(
                    f"Cannot use {what} {path}: line {number} ends a PEM block ({line}) that never began"
                )
            continue
        if begin:
            raise CertWatchError(
                f"Cannot use {what} {path}: the PEM file is truncated or damaged: the {label} block that begins"
                f" on line {start} has no END line before the next BEGIN line (line {number})"
            )
        if end:
            if end.group(1).strip() != label:
                raise CertWatchError(
                    f"Cannot use {what} {path}: the PEM file is damaged: the {label} block that begins on line"
                    f" {start} ends with '{line}' on line {number}"
                )
            blocks.append(_decode_block(label, start, body, headers, path, what))
            label = None
            continue
        if ":" in line and not body:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
        elif line:
            body.append(line)
    if label is not None:
        raise CertWatchError(
            f"Cannot use {what} {path}: the PEM file is truncated: the {label} block that begins on line {start}"
            f" has no '-----END {label}-----' line (the file ends at line {len(lines)})"
        )
    if not blocks:
        if data[:1] == b"\x30":
            raise CertWatchError(
                f"Cannot use {what} {path}: it is not PEM (it looks like binary DER); the registry needs PEM,"
                f" convert it with 'openssl x509 -inform der -in {path} -out {path}.pem'"
            )
        raise CertWatchError(
            f"Cannot use {what} {path}: it is not a PEM file (no '-----BEGIN ...-----' line found)"
        )
    return blocks


def _decode_block(
    label: str, start: int, body: t.List[str], headers: t.List[t.Tuple[str, str]], path: str, what: str
) -> PemBlock:
    if not body:
        raise CertWatchError(f"Cannot use {what} {path}: the {label} block on line {start} is empty")
    try:
        der = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise CertWatchError(
            f"Cannot use {what} {path}: the {label} block on line {start} is malformed (its body is not valid"
            f" base64)"
        ) from None
    return PemBlock(label=label, der=der, line=start, headers=tuple(headers))


def der_sequence_problem(der: bytes) -> t.Optional[str]:
    """Check that ``der`` is exactly one DER SEQUENCE (the outer structure of a certificate).

    Returns ``None`` when it is, or a description of the problem. This does not validate the content:
    openssl does that later; the check exists so that damage is reported with the file name, early.
    """
    if len(der) < 2:
        return "it is too short to be a DER structure"
    if der[0] != 0x30:
        return f"it does not start with a DER SEQUENCE (first byte 0x{der[0]:02x})"
    first = der[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            return "its DER length is invalid"
        if len(der) < 2 + count:
            return "it is too short to be a DER structure"
        header, length = 2 + count, int.from_bytes(der[2 : 2 + count], "big")
    if header + length > len(der):
        return f"its DER data is truncated ({len(der)} bytes, {header + length} expected)"
    if header + length < len(der):
        return f"it has {len(der) - header - length} bytes of trailing data after the DER structure"
    return None


def first_certificate(blocks: t.Sequence[PemBlock], path: str, what: str = "certificate file") -> PemBlock:
    """Return the first certificate block of a PEM file: the one the registry serves as its leaf."""
    for block in blocks:
        if block.label in CERTIFICATE_LABELS:
            problem = der_sequence_problem(block.der)
            if problem is not None:
                raise CertWatchError(
                    f"Cannot use {what} {path}: the {block.label} block on line {block.line} is not a valid"
                    f" certificate: {problem}"
                )
            return block
    labels = ", ".join(sorted({block.label for block in blocks}))
    if any(block.label.endswith(PRIVATE_KEY_SUFFIX) for block in blocks):
        raise CertWatchError(
            f"Cannot use {what} {path}: it holds a private key, not a certificate (PEM blocks found: {labels})"
        )
    raise CertWatchError(f"Cannot use {what} {path}: it holds no certificate (PEM blocks found: {labels})")


def first_private_key(blocks: t.Sequence[PemBlock], path: str, what: str = "private key file") -> PemBlock:
    """Return the first private key block of a PEM file, refusing passphrase-protected keys."""
    for block in blocks:
        if block.label.endswith(PRIVATE_KEY_SUFFIX):
            if block.encrypted:
                raise CertWatchError(
                    f"Cannot use {what} {path}: the private key is encrypted (passphrase-protected); the registry"
                    f" can only load an unencrypted key"
                )
            return block
    labels = ", ".join(sorted({block.label for block in blocks}))
    if any(block.label in CERTIFICATE_LABELS for block in blocks):
        raise CertWatchError(
            f"Cannot use {what} {path}: it holds a certificate, not a private key (PEM blocks found: {labels})"
        )
    raise CertWatchError(f"Cannot use {what} {path}: it holds no private key (PEM blocks found: {labels})")


def sha256_fingerprint(der: bytes) -> str:
    """SHA-256 over DER as colon-separated upper-case hex: what ``openssl x509 -fingerprint -sha256`` prints."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def sha256_hex(data: bytes) -> str:
    """SHA-256 as lower-case hex: what ``sha256sum`` prints."""
    return hashlib.sha256(data).hexdigest()


def normalize_fingerprint(value: str) -> str:
    """Bring a fingerprint in any common spelling to the form :func:`sha256_fingerprint` returns."""
    digits = re.sub(r"[^0-9A-Fa-f]", "", value).upper()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def parse_openssl_date(value: str) -> datetime.datetime:
    """Parse a date as openssl prints it (``Nov 27 18:00:00 2026 GMT``) into an aware UTC datetime.

    ISO 8601 (``2026-11-27 18:00:00Z``, openssl's ``-dateopt iso_8601``) and ASN.1 times are accepted too.
    Raises ``ValueError`` for anything else.
    """
    text = value.strip()
    match = _OPENSSL_DATE_RE.match(text)
    if match:
        month = _MONTHS.get(match.group("mon").capitalize())
        if month is None:
            raise ValueError(f"unknown month in date {value!r}")
        year = int(match.group("year"))
    else:
        match = _ISO_DATE_RE.match(text) or _ASN1_DATE_RE.match(text)
        if not match:
            raise ValueError(f"unrecognised date {value!r}")
        month = int(match.group("mon"))
        year = int(match.group("year"))
        if len(match.group("year")) == 2:
            # RFC 5280 UTCTime: 50-99 are 19xx, 00-49 are 20xx.
            year += 1900 if year >= 50 else 2000
    second = min(int(match.group("S")), 59)  # a leap second (":60") is not representable in datetime
    try:
        return datetime.datetime(
            year,
            month,
            int(match.group("day")),
            int(match.group("H")),
            int(match.group("M")),
            second,
            tzinfo=datetime.timezone.utc,
        )
    except ValueError as exc:
        raise ValueError(f"invalid date {value!r}: {exc}") from None


def format_iso8601(moment: datetime.datetime) -> str:
    """Format an aware datetime as ISO 8601 in UTC with second precision: ``2026-11-27T18:00:00Z``."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def days_remaining(not_after: datetime.datetime, now: datetime.datetime) -> int:
    """Whole days from ``now`` until ``not_after``, rounded down (negative once expired)."""
    return (not_after - now) // datetime.timedelta(days=1)


def normalize_san(entry: str) -> str:
    """Turn one entry of openssl's subjectAltName text into the ``TYPE:value`` form (``IP:192.168.128.1``)."""
    kind, sep, value = entry.partition(":")
    if not sep:
        return entry
    prefix = _SAN_PREFIXES.get(kind.strip())
    if prefix is None:
        return entry
    value = value.strip()
    if prefix == "IP":
        try:
            value = str(ipaddress.ip_address(value))  # openssl prints IPv6 uncompressed: 0:0:0:0:0:0:0:1
        except ValueError:
            pass
    return f"{prefix}:{value}"


def parse_subject_alt_names(text: str) -> t.List[str]:
    """Parse the value lines of openssl's ``X509v3 Subject Alternative Name:`` section."""
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return [normalize_san(entry) for entry in joined.split(", ") if entry.strip()]


def parse_x509_output(output: str) -> CertificateInfo:
    """Parse what ``openssl x509 -noout -fingerprint -sha256 -dates -subject -issuer -serial
    -ext subjectAltName -pubkey -nameopt RFC2253`` prints.

    Raises ``ValueError`` naming the missing or unparsable field.
    """
    values: t.Dict[str, str] = {}
    san_lines: t.List[str] = []
    pubkey_lines: t.List[str] = []
    section: t.Optional[str] = None
    for line in output.splitlines():
        stripped = line.strip()
        if section == "pubkey":
            pubkey_lines.append(stripped)
            if stripped.startswith("-----END "):
                section = None
            continue
        if section == "san":
            if line[:1].isspace() and stripped:
                san_lines.append(stripped)
                continue
            section = None
        if not stripped:
            continue
        if stripped.startswith(_SAN_HEADER):
            section = "san"
            continue
        if stripped == f"-----BEGIN {PUBLIC_KEY_LABEL}-----":
            section = "pubkey"
            pubkey_lines = [stripped]
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            continue
        if key.lower().endswith(" fingerprint"):
            values["fingerprint"] = value.strip()
        elif key in ("notBefore", "notAfter", "subject", "issuer", "serial"):
            values[key] = value.strip()
    missing = [key for key in ("notBefore", "notAfter", "subject", "issuer", "serial") if key not in values]
    if missing:
        raise ValueError(f"openssl did not print {', '.join(missing)}")
    public_key_der = None
    if pubkey_lines:
        blocks = split_pem("\n".join(pubkey_lines).encode("ascii", "replace"), "(openssl output)", "public key")
        public_key_der = blocks[0].der
    fingerprint = values.get("fingerprint")
    return CertificateInfo(
        not_before=parse_openssl_date(values["notBefore"]),
        not_after=parse_openssl_date(values["notAfter"]),
        subject=values["subject"],
        issuer=values["issuer"],
        serial=values["serial"].upper(),
        subject_alt_names=parse_subject_alt_names("\n".join(san_lines)),
        fingerprint=normalize_fingerprint(fingerprint) if fingerprint else None,
        public_key_der=public_key_der,
    )


def parse_public_key_output(output: str) -> bytes:
    """Return the DER of the ``PUBLIC KEY`` block that ``openssl pkey -pubout`` (or ``x509 -pubkey``) printed."""
    blocks = split_pem(output.encode("ascii", "replace"), "(openssl output)", "public key")
    for block in blocks:
        if block.label == PUBLIC_KEY_LABEL:
            return block.der
    raise ValueError("openssl printed no PUBLIC KEY block")


_OPENSSL_ERROR_STACK_RE = re.compile(r"^[0-9A-Fa-f]{8,}:error:")


def summarize_openssl_error(rc: int, stdout: str, stderr: str) -> str:
    """Condense what a failed openssl command printed into one line for a task's message.

    openssl 3 follows its explanation with an error stack of library internals
    (``80DB...:error:1608010C:STORE routines:...``): those lines are dropped when there is anything else.
    """
    lines = [line.strip() for line in (stderr or stdout or "").splitlines() if line.strip()]
    readable = [line for line in lines if not _OPENSSL_ERROR_STACK_RE.match(line)]
    return "; ".join(readable or lines) or f"exit code {rc}"


def make_state(fingerprint: str, key_digest: t.Optional[str], now: datetime.datetime) -> t.Dict[str, t.Any]:
    """The record kept in the state file."""
    return {"fingerprint": fingerprint, "key_digest": key_digest, "recorded_at": format_iso8601(now)}


def read_state(path: str) -> t.Optional[t.Dict[str, t.Any]]:
    """Read the recorded state; ``None`` when there is none yet.

    Raises :class:`StateFileCorrupt` when the file exists but is not a state record (the caller decides
    whether to start over), and :class:`CertWatchError` when it cannot be read at all.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise CertWatchError(f"Cannot read state file {path}: {describe_os_error(exc)}") from None
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateFileCorrupt(f"State file {path} is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        raise StateFileCorrupt(f"State file {path} does not hold a recorded certificate fingerprint")
    return state


def ensure_directory(directory: str) -> t.List[str]:
    """Create ``directory`` and any missing parents with mode 0700; return the directories created."""
    missing: t.List[str] = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:  # pragma: no cover - the file system root is always a directory
            break
        current = parent
    created: t.List[str] = []
    for path in reversed(missing):
        try:
            os.mkdir(path, STATE_DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(path):
                raise CertWatchError(
                    f"Cannot create state directory {directory}: {path} exists and is not a directory"
                ) from None
            continue
        except OSError as exc:
            raise CertWatchError(
                f"Cannot create state directory {directory}: {path}: {exc.strerror or exc}"
            ) from None
        os.chmod(path, STATE_DIR_MODE)  # the umask may have removed bits; never leave more than 0700 either
        created.append(path)
    return created


def write_state_atomic(path: str, state: t.Mapping[str, t.Any]) -> None:
    """Write ``state`` as JSON to ``path`` atomically (temporary file in the same directory + ``os.replace``).

    The file gets mode 0600; a missing parent directory is created with mode 0700. On any error the old
    file is left as it was and the temporary file is removed.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    ensure_directory(directory)
    content = json.dumps(dict(state), sort_keys=True, indent=2) + "\n"
    try:
        write_atomically(path, content.encode("utf-8"), STATE_FILE_MODE)
    except FileError as exc:
        raise CertWatchError(f"Cannot write state file {path}: {exc.reason}") from None


def diff_text(fingerprint: t.Optional[str], key_digest: t.Optional[str], with_key: bool) -> str:
    """One side of the module's diff: ``fingerprint: ...`` (and ``key_digest: ...``) lines, empty if unknown."""
    if fingerprint is None:
        return ""
    text = f"fingerprint: {fingerprint}\n"
    if with_key:
        text += f"key_digest: {'null' if key_digest is None else key_digest}\n"
    return text
