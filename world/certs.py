# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The test CA and its certificates (openssl): actuated's server certificate, the fake hub's, and new ones on demand
(``cert issue``) as actuated's renewal would write them."""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .config import CA_CERT, CA_KEY, CERTS, HUB_NAME, HUB_SANS, SERVER_SANS
from .util import WorldError, log, ok, out, read_text, recipe_hash, run, step, write_bytes, write_text

CA_SUBJECT = "actuated-world test CA"
CERT_RECIPE = {"ca": CA_SUBJECT, "key": "rsa2048", "server": SERVER_SANS, "hub": HUB_SANS, "layout": 1}

CA_CONFIG = """[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

LEAF_CONFIG = """[ca]
default_ca = world_ca
[world_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
certificate = {ca_crt}
private_key = {ca_key}
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
[policy_any]
commonName = supplied
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
subjectAltName = {sans}
"""


def new_key(path: Path) -> None:
    """A fresh RSA 2048 private key (PKCS#8 PEM, mode 0600)."""
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)], quiet=True)
    path.chmod(0o600)


def openssl_time(moment: datetime.datetime) -> str:
    """GeneralizedTime for openssl ca -startdate/-enddate."""
    return moment.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%SZ")


def issue_cert(key: Path, crt: Path, cn: str, sans: Sequence[str], *, days: int = 90, expired: bool = False) -> None:
    """Sign a server certificate for `key` with the test CA (openssl ca, so the validity window can be set)."""
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        start, end = now - datetime.timedelta(days=days + 1), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "index.txt").write_text("", encoding="utf-8")
        (work / "serial").write_text(os.urandom(16).hex().upper() + "\n", encoding="utf-8")
        config = work / "openssl.cnf"
        config.write_text(LEAF_CONFIG.format(dir=work, ca_crt=CA_CERT, ca_key=CA_KEY, cn=cn, sans=",".join(sans)),
                          encoding="utf-8")
        csr = work / "leaf.csr"
        run(["openssl", "req", "-new", "-config", str(config), "-key", str(key), "-out", str(csr)], quiet=True)
        tmp_crt = work / "leaf.crt"
        run(["openssl", "ca", "-batch", "-notext", "-config", str(config), "-extensions", "leaf",
             "-startdate", openssl_time(start), "-enddate", openssl_time(end), "-in", str(csr), "-out", str(tmp_crt)],
            quiet=True)
        write_bytes(crt, tmp_crt.read_bytes(), 0o644)


def fingerprint(crt: Path) -> str:
    """SHA-256 fingerprint as openssl prints it (AA:BB:...)."""
    return out(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(crt)]).split("=", 1)[1]


def cert_valid_for(crt: Path, seconds: int) -> bool:
    """Whether a certificate exists and is still valid `seconds` from now."""
    return crt.exists() and ok(["openssl", "x509", "-noout", "-checkend", str(seconds), "-in", str(crt)])


def cmd_certs() -> None:
    """Create the CA, server and hub certificates once (again when the recipe changes or they near expiry)."""
    with step("certs"):
        recipe = recipe_hash(CERT_RECIPE)
        stamp = CERTS / ".recipe"
        fresh = read_text(stamp) == recipe and cert_valid_for(CA_CERT, 30 * 86400)
        if fresh and cert_valid_for(CERTS / "server.crt", 7 * 86400) and cert_valid_for(CERTS / "hub.crt", 7 * 86400):
            log(f"certificates cached in {CERTS}")
            return
        CERTS.mkdir(parents=True, exist_ok=True)
        CERTS.chmod(0o755)
        if not fresh:
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "ca.cnf"
                config.write_text(CA_CONFIG.format(cn=CA_SUBJECT), encoding="utf-8")
                new_key(CA_KEY)
                run(["openssl", "req", "-x509", "-new", "-config", str(config), "-key", str(CA_KEY), "-sha256",
                     "-days", "3650", "-out", str(CA_CERT)], quiet=True)
                CA_CERT.chmod(0o644)
            log(f"new test CA {fingerprint(CA_CERT)}")
        for name, sans in (("server", SERVER_SANS), ("hub", HUB_SANS)):
            new_key(CERTS / f"{name}.key")
            cn = HUB_NAME if name == "hub" else "actuated"
            issue_cert(CERTS / f"{name}.key", CERTS / f"{name}.crt", cn, sans)
            log(f"{name}.crt {fingerprint(CERTS / f'{name}.crt')}  ({', '.join(sans)})")
        write_text(stamp, recipe + "\n")


def issue_server_certs(outdir: Path, *, sans: Sequence[str] = SERVER_SANS, mismatch: bool = False, days: int = 90,
                       expired: bool = False) -> str:
    """Write server.key, server.crt (from the test CA, for SANS) and ca.crt into OUTDIR; return the fingerprint."""
    if not CA_CERT.exists() or not CA_KEY.exists():
        raise WorldError(f"no test CA in {CERTS}: run `python3 -m world certs` first")
    if days < 1:
        raise WorldError("--days must be at least 1")
    bad = [san for san in sans if not re.fullmatch(r"(IP:[0-9a-fA-F.:]+|DNS:[A-Za-z0-9*.-]+)", san)]
    if bad or not sans:
        raise WorldError(f"SANs must look like IP:192.168.130.1 or DNS:name (got {', '.join(bad) or 'none'})")
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "server.key"
        new_key(key)
        issue_cert(key, outdir / "server.crt", "actuated", sans, days=days, expired=expired)
        if mismatch:
            new_key(key)  # a different key: it does not belong to the certificate
        write_bytes(outdir / "server.key", key.read_bytes(), 0o600)
    write_bytes(outdir / "ca.crt", CA_CERT.read_bytes(), 0o644)
    enddate = out(["openssl", "x509", "-noout", "-enddate", "-in", str(outdir / "server.crt")]).split("=", 1)[1]
    what = "expired " if expired else ""
    log(f"issued {what}{outdir / 'server.crt'} (until {enddate}; {', '.join(sans)})"
        f"{' with a MISMATCHED server.key' if mismatch else ''}")
    return fingerprint(outdir / "server.crt")


def cmd_cert_issue(outdir: Path, *, mismatch: bool, days: int, expired: bool, sans: Sequence[str] = ()) -> None:
    """A new key and certificate from the test CA, as actuated's renewal would write them."""
    print(issue_server_certs(outdir, sans=tuple(sans) or SERVER_SANS, mismatch=mismatch, days=days, expired=expired))
