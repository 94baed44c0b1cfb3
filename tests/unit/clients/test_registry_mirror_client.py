# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""clients/registry-mirror-client.py run as a VM's root would run it: a subprocess with --root in a temporary
directory, against real TLS servers on loopback that answer /v2/ like a registry (401), with a CA and certificates
made by the openssl command at test time. Each test is named after a promise of the script: a mirror or a VM file
in a bad state is a warning annotation and exit 0 (an error only with --fail-on-error), a typo in the command line an
error."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml  # type: ignore[import-untyped]  # (no stubs in the toolchain)

if sys.version_info >= (3, 11):
    import tomllib

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "clients" / "registry-mirror-client.py"
ACTION = REPO / "action.yml"
LOOPBACK = "127.0.0.1"
# A loopback address of its own for the probe: every catalogue port (5000-5060) is probed there.
PROBE_ADDRESS = "127.0.83.1"
# A loopback address nothing listens on.
SILENT_ADDRESS = "127.0.84.1"
CANDIDATE = "/usr/local/share/ca-certificates/actuated-ca.crt"
BEGIN = "# BEGIN actuated.registry mirrors"
END = "# END actuated.registry mirrors"
DAEMON_JSON = "/etc/docker/daemon.json"
BUILDKITD_TOML = "/etc/buildkit/buildkitd.toml"
BUILDKIT_CA = "/etc/buildkit/certs/actuated-ca.crt"
HUP_RECORDER = """
import signal, sys, time
def hup(signum, frame):
    with open(sys.argv[1], "a") as handle:
        handle.write("HUP\\n")
signal.signal(signal.SIGHUP, hup)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


class Pki:
    """actuated's CA and the mirror's certificate (for 127.0.0.1 and PROBE_ADDRESS), another CA, in ROOT; and two
    certificates of actuated's CA that do not verify: one expired, one for another address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = self.new_ca(root, "ca", "Test actuated CA")
        self.other_ca = self.new_ca(root, "other-ca", "Another CA")
        self.key = root / "server.key"
        self.crt = self.leaf("server", f"IP:{LOOPBACK}, IP:{PROBE_ADDRESS}")
        self.expired = self.leaf("expired", f"IP:{LOOPBACK}", dates=("20200101000000Z", "20200201000000Z"))
        self.mismatched = self.leaf("mismatched", "IP:10.83.0.1")

    def leaf(self, name: str, names: str, dates: tuple[str, str] | None = None) -> Path:
        """A server certificate of actuated's CA for NAMES (subjectAltName), with self.key; valid for 30 days from
        now, or between DATES (openssl ca, which takes past dates)."""
        root = self.root
        crt, csr, ext = root / f"{name}.crt", root / f"{name}.csr", root / f"{name}.ext"
        ext.write_text(f"subjectAltName = {names}\nbasicConstraints = CA:FALSE\n"
                       "extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\n"
                       "authorityKeyIdentifier = keyid\n")
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(self.key)]
        openssl("req", "-new", *(["-key", str(self.key)] if self.key.exists() else key), "-out", str(csr),
                "-subj", "/CN=mirror")
        if dates is None:
            openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(root / "ca.key"),
                    "-set_serial", str(4242 + len(list(root.glob("*.crt")))), "-days", "30", "-extfile", str(ext),
                    "-out", str(crt))
            return crt
        database = root / f"{name}-db"
        database.mkdir()
        (database / "index.txt").write_text("")
        (database / "serial").write_text("2000\n")
        config = root / f"{name}.cnf"
        config.write_text(f"[ca]\ndefault_ca = test\n[test]\ndatabase = {database}/index.txt\n"
                          f"new_certs_dir = {database}\nserial = {database}/serial\ndefault_md = sha256\n"
                          "policy = any\nunique_subject = no\n[any]\ncommonName = supplied\n")
        openssl("ca", "-batch", "-config", str(config), "-cert", str(self.ca), "-keyfile", str(root / "ca.key"),
                "-in", str(csr), "-out", str(crt), "-startdate", dates[0], "-enddate", dates[1], "-extfile", str(ext),
                "-notext")
        return crt

    @staticmethod
    def new_ca(root: Path, name: str, common_name: str) -> Path:
        crt = root / f"{name}.crt"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(root / f"{name}.key"), "-out", str(crt), "-days", "30", "-subj", f"/CN={common_name}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        return crt


class RegistryHandler(BaseHTTPRequestHandler):
    """/v2/ answers 401 with a Bearer challenge, as distribution does in front of a token service."""

    def do_GET(self) -> None:
        status = 401 if self.path == "/v2/" else 404
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("WWW-Authenticate", 'Bearer realm="https://auth.example/token",service="registry"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TLSRegistry(ThreadingHTTPServer):
    """A registry's /v2/ over TLS; the handshake happens in the request's thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, RegistryHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except OSError:
            return
        try:
            RegistryHandler(tls, client_address, self)
        finally:
            tls.close()


def serve(address: str, port: int, pki: Pki, crt: Path | None = None) -> TLSRegistry:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(crt or pki.crt), str(pki.key))
    server = TLSRegistry((address, port), context)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class Mirrors(NamedTuple):
    docker: int
    ghcr: int
    refused: int
    expired: int
    mismatched: int


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def mirrors(pki: Pki) -> Iterator[Mirrors]:
    """Two mirrors on 127.0.0.1 (for docker.io and ghcr.io), a port that refuses connections, and two mirrors whose
    certificates do not verify (expired; for another address)."""
    servers = [serve(LOOPBACK, 0, pki, crt) for crt in (pki.crt, pki.crt, pki.expired, pki.mismatched)]
    ports = [server.server_address[1] for server in servers]
    yield Mirrors(ports[0], ports[1], free_port(), ports[2], ports[3])
    for server in servers:
        server.shutdown()
        server.server_close()


class Vm:
    """A VM's file system under ROOT, and the script run on it."""

    def __init__(self, root: Path, mirrors: Mirrors) -> None:
        self.root = root
        self.mirrors = mirrors
        self.both = ["--registry", f"docker.io={mirrors.docker}", "--registry", f"ghcr.io={mirrors.ghcr}"]

    def path(self, vm_path: str) -> Path:
        return self.root / vm_path.lstrip("/")

    def read(self, vm_path: str) -> str:
        return self.path(vm_path).read_text(encoding="utf-8")

    def write(self, vm_path: str, content: str | bytes, mode: int = 0o644) -> Path:
        path = self.path(vm_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        path.chmod(mode)
        return path

    def run(self, *args: str, bridge: str | None = LOOPBACK, env: dict[str, str] | None = None,
            python: str = sys.executable) -> subprocess.CompletedProcess[str]:
        command = [python, str(SCRIPT), "--root", str(self.root), "--timeout", "2"]
        if bridge:
            command += ["--bridge", bridge]
        clean = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        proc = subprocess.run([*command, *args], capture_output=True, text=True, check=False, timeout=60,
                              env={**clean, **(env or {})})
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def snapshot(self) -> dict[str, tuple[str, int, bytes]]:
        """Every file and directory under the root: kind, mode, content."""
        found: dict[str, tuple[str, int, bytes]] = {}
        for path in sorted(self.root.rglob("*")):
            stat = path.lstat()
            kind = "dir" if path.is_dir() else "file"
            found[str(path.relative_to(self.root))] = (kind, stat.st_mode, b"" if kind == "dir" else path.read_bytes())
        return found


@pytest.fixture
def vm(tmp_path: Path, pki: Pki, mirrors: Mirrors) -> Vm:
    """An actuated VM: actuated's CA where actuated puts it."""
    machine = Vm(tmp_path / "vm", mirrors)
    machine.root.mkdir()
    machine.write(CANDIDATE, pki.ca.read_bytes())
    return machine


@pytest.fixture
def bare_vm(tmp_path: Path, mirrors: Mirrors) -> Vm:
    """A VM without actuated's CA."""
    machine = Vm(tmp_path / "bare", mirrors)
    machine.root.mkdir()
    return machine


def toml(text: str) -> dict[str, Any]:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads(text)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "::error::" not in proc.stderr, proc.stderr
    return proc.stdout


def warnings(out: str) -> list[str]:
    """The warning annotations of a run's output (each a whole line)."""
    return [line for line in out.splitlines() if line.startswith("::warning::registry-mirror-client: ")]


def no_warning(proc: subprocess.CompletedProcess[str]) -> str:
    out = ok(proc)
    assert warnings(out) == [], out
    assert "::warning::" not in out
    return out


def failed(proc: subprocess.CompletedProcess[str], code: int, *named: str) -> None:
    """The run failed with CODE, one error annotation on stderr naming NAMED, no warning (it stopped instead)."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("::error::registry-mirror-client: ")]
    assert len(errors) == 1, proc.stderr
    for name in named:
        assert name in errors[0], errors[0]
    assert "::warning::" not in proc.stdout


def load_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("registry_mirror_client", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------- what it writes

def test_docker_buildkit_and_containerd_point_at_the_mirrors_with_actuateds_ca(vm: Vm, pki: Pki) -> None:
    out = ok(vm.run(*vm.both))
    docker, ghcr = f"{LOOPBACK}:{vm.mirrors.docker}", f"{LOOPBACK}:{vm.mirrors.ghcr}"
    assert f"bridge: {LOOPBACK} (--bridge)" in out
    assert f"CA: {vm.path(CANDIDATE)} (found, verifies {docker}, {ghcr})" in out
    assert "registries: docker.io,ghcr.io" in out
    assert json.loads(vm.read("/etc/docker/daemon.json")) == {"registry-mirrors": [f"https://{docker}"]}
    ca = pki.ca.read_text()
    for copy in (f"/etc/docker/certs.d/{docker}/ca.crt", f"/etc/docker/certs.d/{ghcr}/ca.crt",
                 "/etc/buildkit/certs/actuated-ca.crt", "/etc/containerd/certs.d/docker.io/actuated-ca.crt",
                 "/etc/containerd/certs.d/ghcr.io/actuated-ca.crt"):
        assert vm.read(copy) == ca, copy
        assert vm.path(copy).stat().st_mode & 0o777 == 0o644
    buildkit = toml(vm.read("/etc/buildkit/buildkitd.toml"))
    assert buildkit == {"registry": {
        "docker.io": {"mirrors": [docker]}, "ghcr.io": {"mirrors": [ghcr]},
        docker: {"ca": ["/etc/buildkit/certs/actuated-ca.crt"]}, ghcr: {"ca": ["/etc/buildkit/certs/actuated-ca.crt"]},
    }}
    assert "changed:" in out
    assert "hint: KinD" in out
    assert "--hosts-dir /etc/containerd/certs.d" in out


def test_hosts_toml_tries_the_mirror_then_the_upstream(vm: Vm) -> None:
    ok(vm.run(*vm.both))
    text = vm.read("/etc/containerd/certs.d/docker.io/hosts.toml")
    assert text.startswith("# Written by registry-mirror-client")
    assert toml(text) == {
        "server": "https://registry-1.docker.io",
        "host": {f"https://{LOOPBACK}:{vm.mirrors.docker}": {
            "capabilities": ["pull", "resolve"],
            "ca": "/etc/containerd/certs.d/docker.io/actuated-ca.crt",
        }},
    }
    assert toml(vm.read("/etc/containerd/certs.d/ghcr.io/hosts.toml"))["server"] == "https://ghcr.io"


def test_another_registry_with_a_port_falls_back_to_its_own_host(vm: Vm) -> None:
    ok(vm.run("--registry", f"registry.example.com:8443={vm.mirrors.ghcr}", "--no-docker"))
    hosts = toml(vm.read("/etc/containerd/certs.d/registry.example.com:8443/hosts.toml"))
    assert hosts["server"] == "https://registry.example.com:8443"
    assert not vm.path("/etc/docker/daemon.json").exists()


def test_merge_keeps_existing_daemon_json_keys_and_mirrors(vm: Vm) -> None:
    mirror = f"https://{LOOPBACK}:{vm.mirrors.docker}"
    existing = {"log-driver": "json-file", "registry-mirrors": ["https://mirror.gcr.io", mirror + "/"],
                "features": {"buildkit": True}, "insecure-registries": ["10.0.0.1:5000"]}
    vm.write("/etc/docker/daemon.json", json.dumps(existing), mode=0o600)
    ok(vm.run(*vm.both))
    merged = json.loads(vm.read("/etc/docker/daemon.json"))
    assert merged == {**existing, "registry-mirrors": [mirror, "https://mirror.gcr.io"]}
    assert list(merged) == list(existing)
    assert vm.path("/etc/docker/daemon.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", [
    '{"registry-mirrors": ["https://mirror.gcr.io"],}',
    "[]",
    '{"registry-mirrors": "https://mirror.gcr.io"}',
    '{"registry-mirrors": [5000]}',
    '{"debug": NaN}',
])
def test_malformed_daemon_json_is_a_warning_docker_left_as_it_was_the_others_configured(
        vm: Vm, content: str, tmp_path: Path) -> None:
    daemon = vm.write(DAEMON_JSON, content)
    before = vm.snapshot()
    # --fail-on-error: an error naming the file (exit 2, as before), and nothing changed.
    failed(vm.run(*vm.both, "--fail-on-error"), 2, str(daemon), "--no-docker")
    assert vm.snapshot() == before
    output = tmp_path / "github_output"
    out = ok(vm.run(*vm.both, "--github-output", str(output)))
    [warning] = warnings(out)
    assert str(daemon) in warning
    assert "--no-docker" in warning
    assert "Docker left as it was (nothing written for it)" in warning
    assert daemon.read_text() == content
    assert not vm.path("/etc/docker/certs.d").exists()  # no half of Docker's part either
    assert set(toml(vm.read(BUILDKITD_TOML))["registry"]) >= {"docker.io", "ghcr.io"}
    assert vm.path("/etc/containerd/certs.d/docker.io/hosts.toml").exists()
    assert output.read_text() == f"buildkitd-config={vm.path(BUILDKITD_TOML)}\nregistries=docker.io,ghcr.io\n"


def test_second_identical_run_changes_nothing_and_says_so(vm: Vm) -> None:
    ok(vm.run(*vm.both))
    before = vm.snapshot()
    out = ok(vm.run(*vm.both))
    assert "nothing changed" in out
    states = [line.split(":")[0] for line in out.splitlines() if line.startswith(("changed:", "unchanged:"))]
    assert states == ["unchanged"] * 9
    assert vm.snapshot() == before


def test_dry_run_changes_nothing_and_shows_diffs(vm: Vm) -> None:
    vm.write("/etc/docker/daemon.json", '{"debug": true}\n')
    before = vm.snapshot()
    out = ok(vm.run(*vm.both, "--dry-run"))
    assert vm.snapshot() == before
    assert f"--- {vm.path('/etc/docker/daemon.json')}" in out
    assert f'+    "https://{LOOPBACK}:{vm.mirrors.docker}"' in out
    assert f"--- /dev/null\n+++ {vm.path('/etc/buildkit/buildkitd.toml')}" in out
    assert "would change:" in out
    assert "nothing changed" in out


def test_requested_mirror_that_does_not_answer_is_a_warning_and_configured_with_its_fallback(vm: Vm) -> None:
    before = vm.snapshot()
    failed(vm.run("--registry", f"quay.io={vm.mirrors.refused}", "--fail-on-error"), 1,
           f"the mirror of quay.io ({LOOPBACK}:{vm.mirrors.refused}) does not answer (connection refused)")
    assert vm.snapshot() == before
    out = ok(vm.run("--registry", f"quay.io={vm.mirrors.refused}"))
    assert "does not answer (connection refused); clients fall back to https://quay.io" in out
    assert "not verified: no mirror answers" in out
    assert warnings(out) == [
        f"::warning::registry-mirror-client: the mirror of quay.io ({LOOPBACK}:{vm.mirrors.refused}) does not answer "
        "(connection refused). quay.io configured anyway: clients fall back to https://quay.io until it answers"]
    assert toml(vm.read("/etc/containerd/certs.d/quay.io/hosts.toml"))["server"] == "https://quay.io"
    assert "registries: quay.io" in out


# ------------------------------------------------------------------------------------------------------ bad input

def test_unknown_registry_exits_2_listing_the_known_ones(vm: Vm) -> None:
    before = vm.snapshot()
    proc = vm.run("--registry", "docker.io", "--registry", "registry.example.com")
    failed(proc, 2, "--registry registry.example.com: unknown registry")  # a typo: an error without --fail-on-error
    for known in ("docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "gcr.io", "public.ecr.aws",
                  "mcr.microsoft.com"):
        assert known in proc.stderr
    assert "--registry registry.example.com=PORT" in proc.stderr
    assert vm.snapshot() == before


@pytest.mark.parametrize(("args", "message"), [
    (["--registry", "docker.io=0"], "from 1 to 65535"),
    (["--registry", "docker.io=5000,docker.io=5001"], "two ports"),
    (["--registry", "ghcr.io=5000", "--registry", "docker.io"], "cannot share the mirror port 5000"),
    (["--registry", "bad_host=5000"], "not a registry host name"),
    (["--registry", " , "], "empty"),
    (["--bridge", "mirror.internal"], "neither auto nor an IPv4 address"),
    (["--no-docker", "--no-buildkit", "--no-containerd"], "nothing to configure"),
    (["--timeout", "0"], "--timeout"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bad_usage_exits_2_changing_nothing(vm: Vm, args: list[str], message: str) -> None:
    before = vm.snapshot()
    proc = vm.run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert vm.snapshot() == before


def test_no_ca_that_verifies_the_mirrors_is_a_warning_per_mirror_and_nothing_configured(
        bare_vm: Vm, tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    out = ok(bare_vm.run(*bare_vm.both, "--github-output", str(output)))
    found = warnings(out)
    assert len(found) == 2, out
    for warning, (name, port, upstream) in zip(found, [("docker.io", bare_vm.mirrors.docker, "https://registry-1.docker.io"),
                                                       ("ghcr.io", bare_vm.mirrors.ghcr, "https://ghcr.io")]):
        assert f"no CA verifies the certificate of the mirror of {name} ({LOOPBACK}:{port}) (tried the system trust " \
               "store (" in warning
        assert "pass --ca FILE" in warning
        assert warning.endswith(f"{name} not configured: clients pull from {upstream}, as without a mirror")
    assert bare_vm.snapshot() == {}
    assert "registries: none configured" in out
    assert output.read_text() == "buildkitd-config=\nregistries=\n"
    failed(bare_vm.run(*bare_vm.both, "--fail-on-error"), 1, "no CA verifies the certificate", "pass --ca FILE")
    assert bare_vm.snapshot() == {}


def test_registries_given_mirror_down_and_no_ca_file_is_a_warning_and_nothing_configured(bare_vm: Vm) -> None:
    out = ok(bare_vm.run("--registry", f"docker.io={bare_vm.mirrors.refused}"))
    [warning] = warnings(out)
    assert f"the mirror of docker.io ({LOOPBACK}:{bare_vm.mirrors.refused}) does not answer (connection refused), " \
           "and no CA found" in warning
    assert "pass --ca FILE" in warning
    assert warning.endswith("docker.io not configured: clients pull from https://registry-1.docker.io, as without a "
                            "mirror")
    assert bare_vm.snapshot() == {}
    failed(bare_vm.run("--registry", f"docker.io={bare_vm.mirrors.refused}", "--fail-on-error"), 1, "no CA found",
           "pass --ca FILE")
    assert bare_vm.snapshot() == {}


@pytest.mark.parametrize(("certificate", "reason"), [
    ("expired", "certificate has expired"),
    ("mismatched", f"IP address mismatch, certificate is not valid for '{LOOPBACK}'"),
])
def test_mirror_whose_certificate_does_not_verify_is_a_warning_and_left_out_the_others_configured(
        vm: Vm, certificate: str, reason: str) -> None:
    port = getattr(vm.mirrors, certificate)
    args = ["--registry", f"docker.io={port}", "--registry", f"ghcr.io={vm.mirrors.ghcr}"]
    before = vm.snapshot()
    failed(vm.run(*args, "--fail-on-error"), 1, f"the mirror of docker.io ({LOOPBACK}:{port})", reason)
    assert vm.snapshot() == before
    out = ok(vm.run(*args))
    [warning] = warnings(out)
    assert f"no CA verifies the certificate of the mirror of docker.io ({LOOPBACK}:{port}) (tried " \
           f"{vm.path(CANDIDATE)} ({reason})" in warning
    assert warning.endswith("docker.io not configured: clients pull from https://registry-1.docker.io, as without a "
                            "mirror")
    ghcr = f"{LOOPBACK}:{vm.mirrors.ghcr}"
    assert f"CA: {vm.path(CANDIDATE)} (found, verifies {ghcr})" in out
    assert "registries: ghcr.io" in out
    assert not vm.path(DAEMON_JSON).exists()
    assert sorted(p.name for p in vm.path("/etc/containerd/certs.d").iterdir()) == ["ghcr.io"]
    assert toml(vm.read(BUILDKITD_TOML)) == {"registry": {"ghcr.io": {"mirrors": [ghcr]}, ghcr: {"ca": [BUILDKIT_CA]}}}


@pytest.mark.parametrize("what", ["private key", "text", "binary", "broken"])
def test_ca_that_is_not_a_pem_certificate_is_refused(bare_vm: Vm, pki: Pki, tmp_path: Path, what: str) -> None:
    bad = tmp_path / "bad.crt"
    pem = pki.ca.read_text()
    bad.write_bytes({"private key": pki.key.read_bytes(), "text": b"actuated CA\n", "binary": b"\x30\x82\x01\xff",
                     "broken": pem.replace(pem.splitlines()[3], "A" * 64).encode()}[what])
    proc = bare_vm.run(*bare_vm.both, "--ca", str(bad))
    failed(proc, 2, f"--ca {bad}")  # a typo in the workflow: an error without --fail-on-error
    assert bare_vm.snapshot() == {}


def test_given_ca_that_does_not_verify_the_mirror_is_a_warning_and_nothing_configured(bare_vm: Vm, pki: Pki) -> None:
    out = ok(bare_vm.run(*bare_vm.both, "--ca", str(pki.other_ca)))
    found = warnings(out)
    assert len(found) == 2
    assert f"--ca {pki.other_ca} does not verify the certificate of the mirror of docker.io " \
           f"({LOOPBACK}:{bare_vm.mirrors.docker}): " in found[0]
    assert bare_vm.snapshot() == {}
    failed(bare_vm.run(*bare_vm.both, "--ca", str(pki.other_ca), "--fail-on-error"), 1,
           f"--ca {pki.other_ca} does not verify the certificate")
    assert bare_vm.snapshot() == {}


def test_given_ca_is_used(bare_vm: Vm, pki: Pki) -> None:
    out = ok(bare_vm.run(*bare_vm.both, "--ca", str(pki.ca)))
    assert f"CA: {pki.ca} (--ca, verifies" in out
    assert bare_vm.read("/etc/buildkit/certs/actuated-ca.crt") == pki.ca.read_text()


def test_ca_found_by_itself_among_candidates_and_verified(bare_vm: Vm, pki: Pki) -> None:
    bare_vm.write(CANDIDATE, pki.other_ca.read_bytes())                       # a CA, not the mirror's
    bare_vm.write("/usr/local/share/ca-certificates/actuated-old.crt", b"not a certificate\n")
    bare_vm.write("/etc/actuated/ca.crt", pki.key.read_bytes())                # a key: skipped, never copied
    bare_vm.write("/var/lib/actuated/certs/ca.crt", pki.ca.read_bytes())      # the one that verifies
    out = ok(bare_vm.run(*bare_vm.both))
    assert f"CA: {bare_vm.path('/var/lib/actuated/certs/ca.crt')} (found, verifies" in out
    assert "skipped: CA candidate" in out
    for copy in ("/etc/buildkit/certs/actuated-ca.crt", "/etc/containerd/certs.d/ghcr.io/actuated-ca.crt"):
        assert bare_vm.read(copy) == pki.ca.read_text()


def test_system_trust_store_verifying_the_mirror_writes_no_ca_files(bare_vm: Vm, pki: Pki) -> None:
    out = ok(bare_vm.run(*bare_vm.both, env={"SSL_CERT_FILE": str(pki.ca)}))
    assert "CA: none (the system trust store verifies" in out
    assert "no CA files written" in out
    written = sorted(str(Path(name)) for name, (kind, _mode, _data) in bare_vm.snapshot().items() if kind == "file")
    assert written == ["etc/buildkit/buildkitd.toml", "etc/containerd/certs.d/docker.io/hosts.toml",
                       "etc/containerd/certs.d/ghcr.io/hosts.toml", "etc/docker/daemon.json"]
    assert "ca" not in toml(bare_vm.read("/etc/containerd/certs.d/docker.io/hosts.toml"))["host"][
        f"https://{LOOPBACK}:{bare_vm.mirrors.docker}"]
    assert set(toml(bare_vm.read("/etc/buildkit/buildkitd.toml"))["registry"]) == {"docker.io", "ghcr.io"}


# -------------------------------------------------------------------------------------------------------- buildkit

USER_BUILDKIT = """# my buildkit settings
debug = true

[worker.oci]
  max-parallelism = 4

[registry."quay.io"]
  mirrors = ["mirror.example.com"]
"""


def test_buildkit_block_is_replaced_not_duplicated_and_user_content_kept(vm: Vm) -> None:
    vm.write("/etc/buildkit/buildkitd.toml", USER_BUILDKIT)
    ok(vm.run(*vm.both))
    first = vm.read("/etc/buildkit/buildkitd.toml")
    assert first.startswith(USER_BUILDKIT + "\n" + BEGIN + "\n")
    ok(vm.run("--registry", f"ghcr.io={vm.mirrors.ghcr}"))
    second = vm.read("/etc/buildkit/buildkitd.toml")
    assert second.count(BEGIN) == 1
    assert second.count(END) == 1
    assert second.startswith(USER_BUILDKIT)
    ghcr = f"{LOOPBACK}:{vm.mirrors.ghcr}"
    assert toml(second) == {
        "debug": True, "worker": {"oci": {"max-parallelism": 4}},
        "registry": {"quay.io": {"mirrors": ["mirror.example.com"]}, "ghcr.io": {"mirrors": [ghcr]},
                     ghcr: {"ca": ["/etc/buildkit/certs/actuated-ca.crt"]}},
    }
    # The user adds a table after the block: the next run keeps it there.
    vm.write("/etc/buildkit/buildkitd.toml", second + '\n[registry."gcr.io"]\n  mirrors = ["m.example.com"]\n')
    ok(vm.run("--registry", f"ghcr.io={vm.mirrors.ghcr}"))
    third = toml(vm.read("/etc/buildkit/buildkitd.toml"))
    assert third["registry"]["gcr.io"] == {"mirrors": ["m.example.com"]}


def buildkit_refused(vm: Vm, content: str, message: str, *args: str, python: str = sys.executable) -> None:
    """With CONTENT in buildkitd.toml: --fail-on-error is an error (exit 2) changing nothing; without it, one warning
    naming the file and MESSAGE, buildkit's files left as they were, Docker and containerd configured, and the
    buildkitd-config output empty."""
    config = vm.write(BUILDKITD_TOML, content)
    before = vm.snapshot()
    failed(vm.run(*vm.both, *args, "--fail-on-error", python=python), 2, str(config), message)
    assert vm.snapshot() == before
    output = vm.root.parent / "github_output"
    out = ok(vm.run(*vm.both, *args, "--github-output", str(output), python=python))
    [warning] = warnings(out)
    assert str(config) in warning and message in warning
    assert warning.endswith("buildkit left as it was (nothing written for it): it pulls from the upstream registries, "
                            "not through the mirrors (the buildkitd-config output is empty)")
    assert config.read_text() == content
    assert not vm.path(BUILDKIT_CA).exists()
    assert json.loads(vm.read(DAEMON_JSON))["registry-mirrors"] == [f"https://{LOOPBACK}:{vm.mirrors.docker}"]
    assert vm.path("/etc/containerd/certs.d/ghcr.io/hosts.toml").exists()
    assert output.read_text() == "buildkitd-config=\nregistries=docker.io,ghcr.io\n"


@pytest.mark.parametrize("table", [
    '[registry."docker.io"]\n  mirrors = ["mirror.gcr.io"]\n',
    "[registry.'ghcr.io']\n  insecure = true\n",
    '[registry."127.0.0.1:{port}"]\n  ca = ["/etc/ssl/certs/mine.pem"]\n',
    '[[registry."docker.io".keypair]]\n  key = "/k.pem"\n  cert = "/c.pem"\n',
    'registry = {{ "docker.io" = {{ mirrors = ["m"] }} }}\n',
])
def test_buildkit_table_outside_the_block_is_a_conflict_buildkit_left_as_it_was(vm: Vm, table: str) -> None:
    buildkit_refused(vm, "debug = true\n" + table.format(port=vm.mirrors.docker), "--no-buildkit")
    ok(vm.run(*vm.both, "--no-buildkit", "--fail-on-error"))


def test_buildkit_markers_out_of_order_are_refused_buildkit_left_as_it_was(vm: Vm) -> None:
    buildkit_refused(vm, f"{END}\n{BEGIN}\n", "must appear once each, in that order")


# A [registry] table of the user's that the mirrors' tables repeat: invalid TOML once they are added.
REGISTRY_TABLE_REPEATED = '[registry]\n  "docker.io" = { mirrors = ["mirror.gcr.io"] }\n'
# Registry tables of the user's that the mirrors' tables do not repeat.
REGISTRY_TABLES_APART = [
    '[registry]\n  "quay.io" = { mirrors = ["mirror.example.com"] }\n',
    '[registry."quay.io"]\n  mirrors = ["mirror.example.com"]\n',
    '["registry".\'quay.io\']\n  mirrors = ["mirror.example.com"]\n',
]


def test_buildkit_registry_table_the_mirrors_would_repeat_is_refused_with_tomllib(vm: Vm) -> None:
    if not load_script().TOML_PARSER:
        pytest.skip("tomllib needs Python 3.11")
    buildkit_refused(vm, "debug = true\n" + REGISTRY_TABLE_REPEATED, "would not be valid TOML with the mirrors")


def buildkit_edit(script: types.ModuleType, tmp_path: Path, content: str) -> str:
    """buildkitd.toml with CONTENT as SCRIPT's buildkit_toml makes it for docker.io's mirror."""
    block = script.buildkit_block("192.168.128.1", [script.Registry("docker.io", 5000, "https://registry-1.docker.io")],
                                  None)
    expected = {"docker.io": {"mirrors": ["192.168.128.1:5000"]}}
    new: bytes = script.buildkit_toml(str(tmp_path / "buildkitd.toml"), content.encode(), block, expected)
    return new.decode()


@pytest.mark.parametrize("table", REGISTRY_TABLES_APART)
def test_buildkit_registry_table_apart_from_the_mirrors_is_kept_with_tomllib(tmp_path: Path, table: str) -> None:
    script = load_script()
    if not script.TOML_PARSER:
        pytest.skip("tomllib needs Python 3.11")
    assert toml(buildkit_edit(script, tmp_path, table))["registry"] == {
        "quay.io": {"mirrors": ["mirror.example.com"]}, "docker.io": {"mirrors": ["192.168.128.1:5000"]}}


@pytest.mark.parametrize("table", [REGISTRY_TABLE_REPEATED, *REGISTRY_TABLES_APART,
                                   '[[ registry . "quay.io" . keypair ]]\n  key = "/k.pem"\n'])
def test_buildkit_any_registry_table_outside_the_block_is_refused_without_tomllib(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    """Python 3.8-3.10 (forced here): no parser to tell a repeated table, so any registry table of the user's is
    refused rather than risked."""
    script = load_script()
    monkeypatch.setattr(script, "TOML_PARSER", False)
    with pytest.raises(script.Refused, match=r"without a TOML parser .*: remove that table, or pass --no-buildkit"):
        buildkit_edit(script, tmp_path, "debug = true\n" + table)
    # What is not a registry table still is edited.
    assert "[worker.oci]" in buildkit_edit(script, tmp_path, '[worker.oci]\n  registry = "x"\n')


def test_buildkit_without_tomllib_a_registry_table_is_a_warning_and_left_as_it_was(
        vm: Vm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The whole run in this process with the fallback forced: exit 0, one warning, buildkitd.toml as it was."""
    script = load_script()
    monkeypatch.setattr(script, "TOML_PARSER", False)
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(variable, raising=False)
    content = "debug = true\n" + REGISTRY_TABLE_REPEATED
    config = vm.write(BUILDKITD_TOML, content)
    output = tmp_path / "github_output"
    args = ["--root", str(vm.root), "--bridge", LOOPBACK, *vm.both, "--github-output", str(output)]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    [warning] = warnings(out)
    assert f"{config}: '[registry]' outside the lines" in warning
    assert config.read_text() == content
    assert vm.path("/etc/containerd/certs.d/docker.io/hosts.toml").exists()
    assert output.read_text() == "buildkitd-config=\nregistries=docker.io,ghcr.io\n"
    assert script.main([*args, "--fail-on-error"]) == 2
    assert "::error::registry-mirror-client: " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ containerd

def test_foreign_hosts_toml_is_not_overwritten_a_warning_and_the_other_registries_configured(vm: Vm) -> None:
    foreign = vm.write("/etc/containerd/certs.d/ghcr.io/hosts.toml", 'server = "https://ghcr.io"\n')
    before = vm.snapshot()
    failed(vm.run(*vm.both, "--fail-on-error"), 2,
           f"{foreign} exists and was not written by this script", "--no-containerd")
    assert vm.snapshot() == before
    out = ok(vm.run(*vm.both))
    [warning] = warnings(out)
    assert f"{foreign} exists and was not written by this script" in warning
    assert warning.endswith("containerd for ghcr.io left as it was (nothing written for it): it pulls ghcr.io as that "
                            "directory says, or from https://ghcr.io, not through the mirror")
    assert foreign.read_text() == 'server = "https://ghcr.io"\n'
    assert sorted(p.name for p in foreign.parent.iterdir()) == ["hosts.toml"]  # not even the CA copy
    assert vm.read("/etc/containerd/certs.d/docker.io/hosts.toml").startswith("# Written by registry-mirror-client")
    assert set(toml(vm.read(BUILDKITD_TOML))["registry"]) >= {"docker.io", "ghcr.io"}
    assert "registries: docker.io,ghcr.io" in out  # ghcr.io: through buildkit and Docker's certs.d
    no_warning(vm.run(*vm.both, "--no-containerd"))
    assert foreign.read_text() == 'server = "https://ghcr.io"\n'


@pytest.mark.parametrize(("in_the_way", "client", "state"), [
    (DAEMON_JSON, "Docker", "is a directory"),
    ("/etc/containerd/certs.d", "containerd for docker.io", "(Not a directory)"),
    ("/etc/buildkit/certs", "buildkit", "(Not a directory)"),
])
def test_vm_file_in_the_way_is_a_warning_and_that_client_left_as_it_was(
        vm: Vm, in_the_way: str, client: str, state: str) -> None:
    if in_the_way == DAEMON_JSON:
        vm.path(in_the_way).mkdir(parents=True)
    else:
        vm.write(in_the_way, "not a directory\n")
    args = ["--registry", f"docker.io={vm.mirrors.docker}"]
    before = vm.snapshot()
    failed(vm.run(*args, "--fail-on-error"), 1, state)
    assert vm.snapshot() == before
    out = ok(vm.run(*args))
    [warning] = warnings(out)
    assert state in warning and f"{client} left as it was (nothing written for it)" in warning
    after = vm.snapshot()
    assert {name: entry for name, entry in after.items() if name in before} == before
    assert len(after) > len(before)  # the other clients configured


# ------------------------------------------------------------------------------------------------------ probe mode

@pytest.fixture(scope="session")
def probe_mirrors(pki: Pki) -> Iterator[list[int]]:
    """Mirrors for docker.io (5000) and quay.io (5020) on PROBE_ADDRESS; the other catalogue ports refuse."""
    try:
        servers = [serve(PROBE_ADDRESS, port, pki) for port in (5000, 5020)]
    except OSError as exc:
        pytest.skip(f"cannot listen on {PROBE_ADDRESS}:5000/5020: {exc}")
    yield [5000, 5020]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_probe_mode_configures_only_the_mirrors_that_answer(vm: Vm, probe_mirrors: list[int], tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    out = ok(vm.run("--github-output", str(output), bridge=PROBE_ADDRESS))
    assert "mirror: docker.io -> 127.0.83.1:5000 answers (HTTP 401)" in out
    assert "mirror: quay.io -> 127.0.83.1:5020 answers (HTTP 401)" in out
    assert "ghcr.io (5010: connection refused)" in out
    config = vm.path("/etc/buildkit/buildkitd.toml")
    assert output.read_text() == f"buildkitd-config={config}\nregistries=docker.io,quay.io\n"
    assert sorted(p.name for p in vm.path("/etc/containerd/certs.d").iterdir()) == ["docker.io", "quay.io"]
    assert set(toml(vm.read("/etc/buildkit/buildkitd.toml"))["registry"]) == {
        "docker.io", "quay.io", f"{PROBE_ADDRESS}:5000", f"{PROBE_ADDRESS}:5020"}


def test_probe_mode_with_no_mirror_answering_is_a_warning_exits_0_changing_nothing(vm: Vm, tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    before = vm.snapshot()
    out = ok(vm.run("--github-output", str(output), bridge=SILENT_ADDRESS))
    assert warnings(out) == [
        f"::warning::registry-mirror-client: no mirror answers on {SILENT_ADDRESS} (ports 5000, 5010, 5020, 5030, "
        "5040, 5050, 5060). nothing configured: Docker, buildkit and containerd pull from the upstream registries, "
        "as without mirrors"]
    assert vm.snapshot() == before
    assert output.read_text() == "buildkitd-config=\nregistries=\n"
    failed(vm.run("--github-output", str(output), "--fail-on-error", bridge=SILENT_ADDRESS), 1,
           f"no mirror answers on {SILENT_ADDRESS}")
    assert vm.snapshot() == before
    assert output.read_text() == "buildkitd-config=\nregistries=\n"


# ---------------------------------------------------------------------------------------------- docker, outputs

def hups(record: Path, expected: int, wait: float = 2.0) -> int:
    """The SIGHUPs recorded so far, once EXPECTED have arrived or after WAIT seconds."""
    deadline = time.monotonic() + wait
    while True:
        count = record.read_text().count("HUP") if record.exists() else 0
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def test_sighup_goes_to_the_docker_pid_only_when_daemon_json_changed(vm: Vm, tmp_path: Path) -> None:
    record = tmp_path / "hups"
    dockerd = subprocess.Popen([sys.executable, "-c", HUP_RECORDER, str(record)], stdout=subprocess.PIPE, text=True)
    try:
        assert dockerd.stdout and dockerd.stdout.readline().strip() == "ready"
        vm.write("/var/run/docker.pid", f"{dockerd.pid}\n")
        out = ok(vm.run(*vm.both))
        assert f"docker: sent SIGHUP to dockerd (pid {dockerd.pid})" in out
        assert hups(record, 1) == 1
        out = ok(vm.run(*vm.both))
        assert "SIGHUP" not in out
        vm.write("/etc/docker/daemon.json", '{"debug": true}\n')
        ok(vm.run(*vm.both, "--no-buildkit", "--no-containerd"))
        assert hups(record, 2) == 2
        ok(vm.run("--registry", f"ghcr.io={vm.mirrors.ghcr}"))  # no docker.io: daemon.json left alone
        assert hups(record, 3, wait=0.3) == 2
        assert dockerd.poll() is None
    finally:
        dockerd.kill()
        dockerd.wait()


def test_docker_not_running_is_said_not_an_error(vm: Vm) -> None:
    vm.write("/var/run/docker.pid", "999999999\n")
    out = ok(vm.run(*vm.both))
    assert "docker: not running (pid 999999999 of /var/run/docker.pid is gone)" in out


def test_github_output_lines(vm: Vm, tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    output.write_text("earlier=1\n")
    ok(vm.run(*vm.both, "--github-output", str(output)))
    ok(vm.run(*vm.both, "--no-buildkit", "--github-output", str(output)))
    assert output.read_text() == (f"earlier=1\nbuildkitd-config={vm.path('/etc/buildkit/buildkitd.toml')}\n"
                                  "registries=docker.io,ghcr.io\nbuildkitd-config=\nregistries=docker.io,ghcr.io\n")


# -------------------------------------------------------------------------------------------------------- bridge

# /proc/net/route of a VM: addresses are network-order words printed in host (here little-endian) order.
ROUTES_GATEWAY = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0181A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0081A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
# The test world's VM: connected to both bridges' networks, its default gateway .254.
ROUTES_BOTH = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\tFE80A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0080A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t0081A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""
ROUTES_NONE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0
"""


@pytest.mark.skipif(sys.byteorder != "little", reason="the sample route tables are little-endian")
def test_bridge_auto_reads_the_route_table() -> None:
    script = load_script()
    routes = script.parse_routes(ROUTES_GATEWAY)
    assert [(r.iface, str(r.destination), str(r.gateway), r.flags, str(r.mask)) for r in routes] == [
        ("eth0", "0.0.0.0", "192.168.129.1", 3, "0.0.0.0"),
        ("eth0", "192.168.129.0", "0.0.0.0", 1, "255.255.255.0")]
    asked: list[tuple[str, int]] = []

    def accepts(address: str, port: int) -> bool:
        asked.append((address, port))
        return address == "192.168.129.1"

    assert script.choose_bridge(routes, [5000], accepts) == ("192.168.129.1", "the default gateway")
    assert asked == []
    both = script.parse_routes(ROUTES_BOTH)
    assert script.choose_bridge(both, [5010], accepts)[0] == "192.168.129.1"
    assert sorted(asked) == [("192.168.128.1", 5010), ("192.168.129.1", 5010)]
    assert script.choose_bridge(both, [5000], lambda address, port: True)[0] == "192.168.128.1"
    assert script.choose_bridge(both, [5000], lambda address, port: False)[0] == "192.168.128.1"
    only_128 = [r for r in both if r.iface != "eth1"]
    assert script.choose_bridge(only_128, [5000], accepts) == ("192.168.128.1", "directly connected (192.168.128.1)")
    with pytest.raises(script.Failure, match="pass --bridge"):
        script.choose_bridge(script.parse_routes(ROUTES_NONE), [5000], accepts)


@pytest.mark.skipif(sys.byteorder != "little", reason="the sample route tables are little-endian")
def test_bridge_auto_without_an_actuated_route_asks_for_bridge(vm: Vm, tmp_path: Path) -> None:
    proc_dir = tmp_path / "proc"
    (proc_dir / "net").mkdir(parents=True)
    (proc_dir / "net" / "route").write_text(ROUTES_NONE)
    before = vm.snapshot()
    proc = vm.run(*vm.both, "--fail-on-error", bridge=None, env={"REGISTRY_MIRROR_CLIENT_PROC": str(proc_dir)})
    failed(proc, 1, "cannot find actuated's bridge: default gateway 10.0.0.1", "pass --bridge ADDRESS")
    assert vm.snapshot() == before
    out = ok(vm.run(*vm.both, bridge=None, env={"REGISTRY_MIRROR_CLIENT_PROC": str(proc_dir)}))
    [warning] = warnings(out)
    assert "cannot find actuated's bridge: default gateway 10.0.0.1" in warning
    assert warning.endswith("nothing configured: Docker, buildkit and containerd pull from the upstream registries, "
                            "as without mirrors")
    assert vm.snapshot() == before


def test_toml_strings_are_escaped() -> None:
    script = load_script()
    value = 'a"b\\c\nd\te\x01'
    assert toml(f"key = {script.toml_string(value)}") == {"key": value}


def oldest_python() -> str | None:
    """A Python 3.8 interpreter, the oldest the script promises to run on, when this machine has one."""
    for candidate in [shutil.which("python3.8"), *sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python3.8"))]:
        if candidate and subprocess.run([str(candidate), "-c", ""], capture_output=True, check=False).returncode == 0:
            return str(candidate)
    return None


def test_runs_on_python_3_8(vm: Vm) -> None:
    python = oldest_python()
    if python is None:
        pytest.skip("no Python 3.8 here")
    out = ok(vm.run(*vm.both, python=python))
    assert "registries: docker.io,ghcr.io" in out


def test_on_python_3_8_a_registry_table_outside_the_block_is_refused(vm: Vm) -> None:
    """The real fallback: Python 3.8 has no tomllib, and the mirrors' [registry."docker.io"] would repeat the user's
    (invalid TOML, which buildkit refuses to start with)."""
    python = oldest_python()
    if python is None:
        pytest.skip("no Python 3.8 here")
    buildkit_refused(vm, "debug = true\n" + REGISTRY_TABLE_REPEATED, "without a TOML parser (Python 3.8", python=python)


def test_annotations_are_one_line() -> None:
    script = load_script()
    assert script.annotation("warning", "100% of\r\nit") == "::warning::100%25 of%0D%0Ait"


# ------------------------------------------------------------------------------------------------------ action.yml

def run_action(tmp_path: Path, inputs: dict[str, str], root: Path | None = None,
               crash: int = 0) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """action.yml's step run by bash as the runner would, with the inputs in its env; `sudo` is a stand-in that
    records its arguments and, with ROOT, runs them (python3: this interpreter) with the script's files under ROOT
    (REGISTRY_MIRROR_CLIENT_ROOT); without ROOT it runs nothing (the real one would configure this machine), or, with
    CRASH, exits with that code as a script that failed unexpectedly would. The arguments, or None when not called."""
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    step = action["runs"]["steps"][0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "sudo-args.json"
    record.unlink(missing_ok=True)
    sudo = bin_dir / "sudo"
    sudo.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
                    + ("os.execvp(sys.argv[1], sys.argv[1:])\n" if root else "")
                    + (f"sys.exit({crash})\n" if crash else ""))
    sudo.chmod(0o755)
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GITHUB_ACTION_PATH": str(REPO),
           "GITHUB_OUTPUT": str(tmp_path / "github_output")}
    if root:
        env["REGISTRY_MIRROR_CLIENT_ROOT"] = str(root)
    for variable, template in step["env"].items():
        name = re.fullmatch(r"\$\{\{ inputs\.([a-z-]+) \}\}", template)
        assert name, f"{variable}: {template}"
        env[variable] = inputs.get(name.group(1), action["inputs"][name.group(1)]["default"])
    proc = subprocess.run(["bash", "-c", step["run"]], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    return proc, json.loads(record.read_text()) if record.exists() else None


def test_action_passes_inputs_as_arguments_never_as_code(tmp_path: Path) -> None:
    action = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    step = action["runs"]["steps"][0]
    assert "${{" not in step["run"]
    assert {template.split(".")[1].rstrip(" }") for template in step["env"].values()} == set(action["inputs"])
    assert action["outputs"]["buildkitd-config"]["value"] == "${{ steps.configure.outputs.buildkitd-config }}"
    base = ["python3", str(SCRIPT), "--bridge", "auto", "--github-output", str(tmp_path / "github_output")]
    proc, args = run_action(tmp_path, {})
    assert (proc.returncode, args) == (0, base), proc.stderr
    hostile = "docker.io, ghcr.io=5010 $(touch pwned) `touch pwned`"
    proc, args = run_action(tmp_path, {"registries": hostile, "ca": "/etc/x ca.crt", "docker": "false",
                                       "containerd": "false", "bridge": "192.168.129.1"})
    assert proc.returncode == 0, proc.stderr
    assert args == ["python3", str(SCRIPT), "--bridge", "192.168.129.1", "--github-output",
                    str(tmp_path / "github_output"), "--registry", hostile, "--ca", "/etc/x ca.crt", "--no-docker",
                    "--no-containerd"]
    assert not (tmp_path / "pwned").exists()
    proc, args = run_action(tmp_path, {"registries": " ,\n "})
    assert args == base
    proc, args = run_action(tmp_path, {"buildkit": "yes"})
    assert proc.returncode == 2
    assert args is None
    assert "input buildkit must be true or false" in proc.stderr
    proc, args = run_action(tmp_path, {"fail-on-error": "true"})
    assert (proc.returncode, args) == (0, [*base, "--fail-on-error"]), proc.stderr
    proc, args = run_action(tmp_path, {"fail-on-error": "yes"})
    assert (proc.returncode, args) == (2, None)
    assert "::error::input fail-on-error must be true or false" in proc.stderr


def test_action_step_survives_the_script_failing_unexpectedly_unless_fail_on_error(tmp_path: Path) -> None:
    """A script that fails for any reason but a mistake in the inputs (exit 2) fails no job: one warning, exit 0; with
    fail-on-error the step fails with the script's code."""
    proc, args = run_action(tmp_path, {}, crash=1)
    assert args is not None and proc.returncode == 0, proc.stderr
    assert warnings(proc.stdout) == ["::warning::registry-mirror-client: exited with 1; the clients keep their "
                                     "configuration and pull from the upstream registries"]
    proc, args = run_action(tmp_path, {"fail-on-error": "true"}, crash=1)
    assert proc.returncode == 1 and warnings(proc.stdout) == [] and args is not None
    proc, args = run_action(tmp_path, {}, crash=2)
    assert proc.returncode == 2 and warnings(proc.stdout) == []


def test_action_step_with_the_mirror_down_and_no_ca_warns_and_succeeds_unless_fail_on_error(
        tmp_path: Path, mirrors: Mirrors) -> None:
    """The action's own step, run for real on a VM root without actuated's CA, registries: set, the mirror down."""
    root = tmp_path / "vm"
    root.mkdir()
    output = tmp_path / "github_output"
    inputs = {"registries": f"docker.io={mirrors.refused}", "bridge": LOOPBACK}
    proc, args = run_action(tmp_path, inputs, root=root)
    assert args and "--fail-on-error" not in args
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [warning] = warnings(proc.stdout)
    assert f"the mirror of docker.io ({LOOPBACK}:{mirrors.refused}) does not answer (connection refused), and no " \
           "CA found" in warning
    assert warning.endswith("docker.io not configured: clients pull from https://registry-1.docker.io, as without a "
                            "mirror")
    assert output.read_text() == "buildkitd-config=\nregistries=\n"
    assert list(root.iterdir()) == []
    output.unlink()
    proc, args = run_action(tmp_path, {**inputs, "fail-on-error": "true"}, root=root)
    assert args and args[-1] == "--fail-on-error"
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"::error::registry-mirror-client: the mirror of docker.io ({LOOPBACK}:{mirrors.refused}) does not " \
           "answer (connection refused), and no CA found" in proc.stderr
    assert "::warning::" not in proc.stdout
    assert not output.exists()
    assert list(root.iterdir()) == []


def test_action_step_with_the_mirror_down_configures_the_fallback_and_sets_the_outputs(
        vm: Vm, tmp_path: Path) -> None:
    """The action's own step, run for real on a VM root with actuated's CA: the mirror down is a warning, it is
    configured with the upstream as fallback, and the outputs name it; fail-on-error: true fails, changing nothing."""
    inputs = {"registries": f"docker.io={vm.mirrors.refused}", "bridge": LOOPBACK, "containerd": "false"}
    before = vm.snapshot()
    proc, _args = run_action(tmp_path, {**inputs, "fail-on-error": "true"}, root=vm.root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert vm.snapshot() == before
    proc, _args = run_action(tmp_path, inputs, root=vm.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [warning] = warnings(proc.stdout)
    assert warning.endswith("docker.io configured anyway: clients fall back to https://registry-1.docker.io until it "
                            "answers")
    assert (tmp_path / "github_output").read_text() == \
        f"buildkitd-config={vm.path(BUILDKITD_TOML)}\nregistries=docker.io\n"
    assert json.loads(vm.read(DAEMON_JSON)) == {"registry-mirrors": [f"https://{LOOPBACK}:{vm.mirrors.refused}"]}
    assert not vm.path("/etc/containerd").exists()
