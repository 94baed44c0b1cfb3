# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""Action plugin of actuated.registry.fleet_ca (documentation: plugins/modules/fleet_ca.py).

Runs on the controller only: keeps the fleet's CA in a directory there and issues each tier mirror's certificate,
with the ``cryptography`` library (a dependency of ansible-core). Key material never leaves the files it is written
to: not in the result, not in a diff, not in a message.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import re
import stat
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.actuated.registry.plugins.module_utils._files import FileError, write_atomically

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as _exc:  # pragma: no cover - ansible-core depends on cryptography
    CRYPTOGRAPHY_IMPORT_ERROR: ImportError | None = _exc
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None


ARGUMENT_SPEC: dict[str, dict[str, t.Any]] = {
    "dir": {"type": "path", "required": True},
    "name": {"type": "str", "required": True},
    "addresses": {"type": "list", "elements": "str", "required": True},
    "ca_common_name": {"type": "str", "default": "actuated.registry fleet CA"},
    "ca_days": {"type": "int", "default": 3650},
    "days": {"type": "int", "default": 397},
    "renew_before_days": {"type": "int", "default": 30},
}

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TIERS = "tiers"
LOCK = ".fleet_ca.lock"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700
# Certificates start a little in the past: a tier or edge whose clock is slightly behind still accepts them.
BACKDATE = datetime.timedelta(hours=1)
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
DNS_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class FleetCaError(Exception):
    """A problem to report as the task's failure message."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def not_after(cert: t.Any) -> datetime.datetime:
    """The certificate's end of validity, timezone-aware (cryptography < 42 has only the naive UTC attribute)."""
    value = getattr(cert, "not_valid_after_utc", None)
    return value if value is not None else cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


# --- input ----------------------------------------------------------------------------------------------------------


def parse_addresses(addresses: t.Sequence[str]) -> tuple[list[str], list[str]]:
    """The subjectAltName entries (``IP:...``, ``DNS:...``) for ADDRESSES, in order without duplicates; and every
    problem found, one sentence each."""
    sans: list[str] = []
    problems: list[str] = []
    if not addresses:
        problems.append("addresses is empty: the certificate must name at least one IP address or DNS name")
    for address in addresses:
        text = str(address).strip()
        try:
            entry = f"IP:{ipaddress.ip_address(text)}"
        except ValueError:
            name = text.lower().rstrip(".")
            labels = name.split(".")
            if labels and labels[0] == "*" and len(labels) > 2:
                labels = labels[1:]
            if not name or len(name) > 253 or not all(DNS_LABEL.match(label) for label in labels):
                problems.append(f"addresses: {address!r} is neither an IP address nor a DNS name")
                continue
            entry = f"DNS:{name}"
        if entry not in sans:
            sans.append(entry)
    return sans, problems


def general_names(sans: t.Sequence[str]) -> list[t.Any]:
    names: list[t.Any] = []
    for entry in sans:
        kind, value = entry.split(":", 1)
        names.append(x509.IPAddress(ipaddress.ip_address(value)) if kind == "IP" else x509.DNSName(value))
    return names


def cert_sans(cert: t.Any) -> list[str]:
    """The certificate's subjectAltName entries in the form of parse_addresses (other kinds as ``other:``)."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    found = []
    for name in extension.value:
        if isinstance(name, x509.IPAddress):
            found.append(f"IP:{name.value}")
        elif isinstance(name, x509.DNSName):
            found.append(f"DNS:{name.value.lower()}")
        else:
            found.append(f"other:{name.value}")
    return found


# --- files ----------------------------------------------------------------------------------------------------------


def write_atomic(path: str, data: bytes, mode: int, overwrite: bool = True) -> None:
    """Write DATA to PATH atomically with MODE (module_utils/_files.write_atomically). Without OVERWRITE an existing
    PATH is never replaced."""
    try:
        write_atomically(path, data, mode, overwrite=overwrite)
    except FileError as exc:
        raise FleetCaError(str(exc)) from None


def make_directory(path: str) -> None:
    """Create PATH with mode 0700 if it is missing (its missing parents as usual); safe when several processes race."""
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)  # whatever the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise FleetCaError(f"cannot create the directory {path}: {exc.strerror or exc}") from None
    if not os.path.isdir(path):
        raise FleetCaError(f"{path} exists and is not a directory")


@contextlib.contextmanager
def locked(directory: str, exclusive: bool) -> t.Iterator[None]:
    """Hold the directory's lock file (flock: between processes and between threads that open it): exclusive to
    create or issue, shared to only read. Without EXCLUSIVE a missing lock file (or directory) is not created."""
    path = os.path.join(directory, LOCK)
    try:
        if exclusive:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), KEY_MODE)
        elif os.path.exists(path):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        else:
            yield
            return
    except OSError as exc:
        raise FleetCaError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FleetCaError(f"cannot read {path}: {exc.strerror or exc}") from None


def public_der(key: t.Any) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key, or of a private key's public key."""
    if not hasattr(key, "public_bytes"):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_pem(key: t.Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(data: bytes, path: str) -> t.Any:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise FleetCaError(f"{path} is an encrypted private key; fleet_ca needs it unencrypted (protect the "
                           f"directory instead)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise FleetCaError(f"{path} is not a PEM private key that can be read: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_cert(data: bytes, path: str) -> t.Any:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise FleetCaError(f"{path} is not a PEM certificate that can be read: {_first_line(exc)}") from None


# --- the CA ---------------------------------------------------------------------------------------------------------


def load_ca(cert_path: str, key_path: str) -> tuple[t.Any, t.Any] | None:
    """The existing CA certificate and key, checked; None when neither file exists."""
    cert_data, key_data = read_bytes(cert_path), read_bytes(key_path)
    if cert_data is None and key_data is None:
        return None
    if cert_data is None or key_data is None:
        present, missing = (key_path, cert_path) if cert_data is None else (cert_path, key_path)
        raise FleetCaError(f"{present} exists but {missing} does not: fleet_ca never replaces part of a CA. Restore "
                           f"{missing}, or move {present} away to create a new CA (every tier and edge must then "
                           f"trust the new one)")
    cert = load_cert(cert_data, cert_path)
    key = load_key(key_data, key_path)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise FleetCaError(f"{key_path} is a {type(key).__name__}: fleet_ca signs with EC or RSA CA keys only")
    if public_der(key) != public_der(cert.public_key()):
        raise FleetCaError(f"{key_path} does not belong to {cert_path} (their public keys differ): restore the key "
                           f"that was created with this CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise FleetCaError(f"{cert_path} is not a CA certificate (it lacks basicConstraints CA:TRUE)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise FleetCaError(f"{cert_path} may not sign certificates (its keyUsage lacks keyCertSign)")
    return cert, key


def create_ca(common_name: str, days: int, now: datetime.datetime) -> tuple[t.Any, t.Any]:
    """A new self-signed EC P-256 CA that can sign only end-entity certificates (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


# --- tier certificates ----------------------------------------------------------------------------------------------


def signed_by(cert: t.Any, ca_cert: t.Any) -> bool:
    """Whether CERT was issued by CA_CERT: the issuer name and the signature."""
    if cert.issuer != ca_cert.subject:
        return False
    verify = getattr(cert, "verify_directly_issued_by", None)  # cryptography >= 40
    try:
        if verify is not None:
            verify(ca_cert)
            return True
        public = ca_cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def issue(ca_cert: t.Any, ca_key: t.Any, name: str, sans: t.Sequence[str], days: int,
          now: datetime.datetime) -> tuple[t.Any, t.Any]:
    """A new EC P-256 server certificate for the tier NAME naming SANS, signed by the CA; it ends DAYS from NOW, or
    with the CA if that comes first."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    end = min(now + datetime.timedelta(days=days), not_after(ca_cert))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(general_names(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def reissue_reason(cert_path: str, key_path: str, ca_cert: t.Any, sans: t.Sequence[str], renew_before_days: int,
                   now: datetime.datetime) -> tuple[str | None, t.Any]:
    """Why the tier certificate must be issued (None: it need not be), and the current certificate if readable."""
    cert_data, key_data = read_bytes(cert_path), read_bytes(key_path)
    if cert_data is None or key_data is None:
        return "missing", None
    try:
        cert = load_cert(cert_data, cert_path)
    except FleetCaError:
        return "the certificate cannot be read", None
    if not signed_by(cert, ca_cert):
        return "not signed by this CA", cert
    try:
        key = load_key(key_data, key_path)
    except FleetCaError:
        return "the key cannot be read", cert
    if public_der(key) != public_der(cert.public_key()):
        return "the key does not belong to the certificate", cert
    if sorted(cert_sans(cert)) != sorted(sans):
        return "the subject alternative names differ", cert
    end = not_after(cert)
    if end - now < datetime.timedelta(days=renew_before_days) and end < not_after(ca_cert):
        return f"it expires within {renew_before_days} days" if end > now else "it has expired", cert
    return None, cert


def summary(cert: t.Any) -> str:
    """A diff's text for CERT: names and dates, never key material."""
    lines = [f"subject: {cert.subject.rfc4514_string()}", f"issuer: {cert.issuer.rfc4514_string()}"]
    sans = cert_sans(cert)
    if sans:
        lines.append(f"sans: {', '.join(sans)}")
    lines.append(f"not_after: {iso(not_after(cert))}")
    return "\n".join(lines) + "\n"


def check_arguments(args: t.Mapping[str, t.Any]) -> list[str]:
    """The subjectAltName entries of the arguments; every problem with them at once, as a FleetCaError."""
    problems = []
    if not NAME.match(args["name"]):
        problems.append(f"name {args['name']!r} cannot name a file: use letters, digits, '.', '_' and '-' (not "
                        f"first: '.' or '-'), at most 200 characters")
    sans, found = parse_addresses(args["addresses"])
    problems += found
    if not 1 <= len(args["ca_common_name"]) <= 64:
        problems.append("ca_common_name must be 1 to 64 characters long")
    for option in ("ca_days", "days"):
        if args[option] < 1:
            problems.append(f"{option} must be at least 1, not {args[option]}")
    if args["renew_before_days"] < 0:
        problems.append(f"renew_before_days must not be negative, not {args['renew_before_days']}")
    elif args["renew_before_days"] >= args["days"]:
        problems.append(f"renew_before_days ({args['renew_before_days']}) must be less than days ({args['days']}),"
                        f" or every run would issue a new certificate")
    if problems:
        raise FleetCaError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} with the arguments; "
                           f"nothing was changed:\n- " + "\n- ".join(problems))
    return sans


def ensure_ca(paths: t.Mapping[str, str], args: t.Mapping[str, t.Any], now: datetime.datetime, check_mode: bool,
              warnings: list[str], diffs: list[dict[str, str]]) -> tuple[t.Any, t.Any, bool]:
    """The CA (certificate, key) and whether it was created now (in check mode: only in memory). Call it holding the
    directory's lock."""
    ca = load_ca(paths["ca_cert"], paths["ca_key"])
    if ca is None:
        ca_cert, ca_key = create_ca(args["ca_common_name"], args["ca_days"], now)
        diffs.append({"before": "", "after": summary(ca_cert),
                      "before_header": paths["ca_cert"], "after_header": paths["ca_cert"]})
        if not check_mode:
            write_atomic(paths["ca_key"], key_pem(ca_key), KEY_MODE, overwrite=False)
            write_atomic(paths["ca_cert"], ca_cert.public_bytes(serialization.Encoding.PEM), CERT_MODE, overwrite=False)
    else:
        ca_cert, ca_key = ca
        key_mode = stat.S_IMODE(os.stat(paths["ca_key"]).st_mode)
        if key_mode & 0o077:
            warnings.append(f"{paths['ca_key']} has mode {key_mode:04o}: other users may read the CA key; make it 0600")
    end = not_after(ca_cert)
    if end <= now:
        raise FleetCaError(f"the fleet CA {paths['ca_cert']} expired on {iso(end)}: move ca.crt and ca.key away to "
                           f"create a new CA (every tier and edge must then trust the new one)")
    if end - now < datetime.timedelta(days=args["renew_before_days"]):
        warnings.append(f"the fleet CA {paths['ca_cert']} expires on {iso(end)}, and the tier certificates with it: "
                        f"plan a new CA")
    return ca_cert, ca_key, ca is None


# --- the plugin -----------------------------------------------------------------------------------------------------


class ActionModule(ActionBase):
    """Create or reuse the fleet CA in a controller directory and issue one tier's server certificate."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp: t.Any = None, task_vars: dict | None = None) -> dict:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        result["changed"] = False
        try:
            if CRYPTOGRAPHY_IMPORT_ERROR is not None:
                raise FleetCaError(f"fleet_ca needs the Python library cryptography on the controller: "
                                   f"{CRYPTOGRAPHY_IMPORT_ERROR}")
            args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
            result.update(self._run(args))
        except AnsibleActionFail as exc:  # the arguments' types (ansible-core 2.21 keeps failed and msg out of .result)
            result.update(exc.result)
            result.update(failed=True, msg=str(exc.message))
        except FleetCaError as exc:
            result.update(failed=True, msg=str(exc))
        return result

    def _run(self, args: dict[str, t.Any]) -> dict[str, t.Any]:
        sans = check_arguments(args)
        directory = os.path.abspath(args["dir"])
        check_mode = bool(self._task.check_mode)
        paths = {
            "ca_cert": os.path.join(directory, CA_CERT),
            "ca_key": os.path.join(directory, CA_KEY),
            "cert": os.path.join(directory, TIERS, f"{args['name']}.crt"),
            "key": os.path.join(directory, TIERS, f"{args['name']}.key"),
        }
        if not check_mode:
            make_directory(directory)
        elif os.path.lexists(directory) and not os.path.isdir(directory):
            raise FleetCaError(f"{directory} exists and is not a directory")

        warnings: list[str] = []
        diffs: list[dict[str, str]] = []
        now = utcnow()
        with locked(directory, exclusive=not check_mode):
            ca_cert, ca_key, ca_created = ensure_ca(paths, args, now, check_mode, warnings, diffs)
            reason, current = ("missing", None) if ca_created else reissue_reason(
                paths["cert"], paths["key"], ca_cert, sans, args["renew_before_days"], now)
            cert = current
            if reason is not None:
                cert, key = issue(ca_cert, ca_key, args["name"], sans, args["days"], now)
                diffs.append({"before": summary(current) if current is not None else "", "after": summary(cert),
                              "before_header": paths["cert"], "after_header": paths["cert"]})
                if not check_mode:
                    make_directory(os.path.join(directory, TIERS))
                    write_atomic(paths["key"], key_pem(key), KEY_MODE)
                    write_atomic(paths["cert"], cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)

        result: dict[str, t.Any] = {
            "changed": ca_created or reason is not None,
            "ca_cert": paths["ca_cert"],
            "cert": paths["cert"],
            "key": paths["key"],
            "ca_created": ca_created,
            "issued": reason is not None,
            "reason": reason,
            "not_after": iso(not_after(cert)),
            "sans": cert_sans(cert),
        }
        if warnings:
            result["warnings"] = warnings
        if self._task.diff and diffs:
            result["diff"] = diffs
        return result
