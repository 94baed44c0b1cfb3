# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""Test PKI for the cert_watch and registry_status tests, generated with the openssl command line tool at test time;
the supervisor's metrics text as its own Metrics class renders it (registry_status)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest


SERVER_SAN = "IP:192.168.128.1,DNS:localhost"


def openssl(*args: str, cwd: Path | None = None) -> str:
    """Run openssl, failing the test run with its output when it fails."""
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def new_key(path: Path) -> Path:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    return path


class Pki:
    """A CA and certificates for the server key, in one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key = new_key(root / "ca.key")
        self.ca_crt = root / "ca.crt"
        openssl(
            "req", "-x509", "-new", "-key", str(self.ca_key), "-out", str(self.ca_crt), "-days", "3650",
            "-subj", "/CN=Test actuated CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        self.other_ca_key = new_key(root / "other-ca.key")
        self.other_ca_crt = root / "other-ca.crt"
        openssl(
            "req", "-x509", "-new", "-key", str(self.other_ca_key), "-out", str(self.other_ca_crt),
            "-days", "3650", "-subj", "/CN=Another CA",
        )
        self.server_key = new_key(root / "server.key")
        self.other_key = new_key(root / "other.key")
        self._ca_dir = root / "ca"
        (self._ca_dir / "newcerts").mkdir(parents=True)
        (self._ca_dir / "index.txt").write_text("")
        (self._ca_dir / "serial").write_text("1000\n")
        (self._ca_dir / "ca.cnf").write_text(
            "[ca]\n"
            "default_ca = ca_default\n"
            "[ca_default]\n"
            f"database = {self._ca_dir / 'index.txt'}\n"
            f"new_certs_dir = {self._ca_dir / 'newcerts'}\n"
            f"serial = {self._ca_dir / 'serial'}\n"
            "default_md = sha256\n"
            "policy = policy_any\n"
            "copy_extensions = copy\n"
            "unique_subject = no\n"
            "[policy_any]\n"
            "commonName = supplied\n"
            "organizationName = optional\n"
        )
        self.server_crt = self.issue("server.crt", self.server_key, days=30)
        self.renewed_crt = self.issue("renewed.crt", self.server_key, days=60)
        self.other_crt = self.issue("other.crt", self.other_key, days=60)
        self.soon_crt = self.issue("soon.crt", self.server_key, days=3)
        self.expired_crt = self.issue(
            "expired.crt", self.server_key, startdate="20200101000000Z", enddate="20200301000000Z"
        )
        self.future_crt = self.issue(
            "future.crt", self.server_key, startdate="20991201000000Z", enddate="20991231000000Z"
        )
        self.no_san_crt = self.issue("no-san.crt", self.server_key, days=30, san=None)
        self.chain_crt = root / "chain.crt"
        self.chain_crt.write_bytes(self.server_crt.read_bytes() + self.ca_crt.read_bytes())

    def issue(
        self,
        name: str,
        key: Path,
        *,
        days: int | None = None,
        startdate: str | None = None,
        enddate: str | None = None,
        san: str | None = SERVER_SAN,
        subject: str = "/CN=192.168.128.1/O=actuated",
    ) -> Path:
        """Issue a certificate for ``key`` signed by the CA, with ``openssl ca`` (which can back-date)."""
        csr = self.root / f"{name}.csr"
        crt = self.root / name
        req = ["req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject]
        if san:
            req += ["-addext", f"subjectAltName={san}"]
        openssl(*req)
        sign = [
            "ca", "-batch", "-notext", "-rand_serial", "-config", str(self._ca_dir / "ca.cnf"),
            "-cert", str(self.ca_crt), "-keyfile", str(self.ca_key), "-in", str(csr), "-out", str(crt),
        ]
        if days is not None:
            sign += ["-days", str(days)]
        else:
            assert startdate and enddate
            sign += ["-startdate", startdate, "-enddate", enddate]
        openssl(*sign)
        return crt

    def fingerprint(self, crt: Path) -> str:
        """What openssl says the SHA-256 fingerprint of ``crt`` is."""
        out = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(crt))
        return out.strip().split("=", 1)[1]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to generate test certificates")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def workdir(tmp_path: Path, pki: Pki) -> t.Iterator[Path]:
    """A writable copy of the live files, as actuated lays them out: certs/server.{crt,key}, certs/ca.crt."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.server_crt, certs / "server.crt")
    shutil.copy(pki.server_key, certs / "server.key")
    shutil.copy(pki.ca_crt, certs / "ca.crt")
    yield tmp_path


MetricsText = t.Callable[..., str]


@pytest.fixture(scope="session")
def supervisor_metrics() -> MetricsText:
    """supervisor_metrics(fallbacks=True, front=False, **values): the /metrics text of registry-supervisor's own part
    with VALUES set, rendered by its Metrics class (loaded as the host-program tests load it; FRONT: with the caching
    front's counters): a renamed metric shows."""
    files = str(Path(__file__).resolve().parents[1] / "files")
    if files not in sys.path:
        sys.path.insert(0, files)
    import registry_fakes  # pylint: disable=import-outside-toplevel,import-error

    def render(fallbacks: bool = True, front: bool = False, **values: float) -> str:
        metrics = registry_fakes.load_supervisor().Metrics(fallbacks=fallbacks, front=front)
        metrics.set(**values)
        return str(metrics.text())

    return render
