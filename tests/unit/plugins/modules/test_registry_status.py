# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""registry_status on a host laid out as the role lays it out (in a temporary directory): the fact file, each mirror's
supervisor.json, actuated's certificate, each supervisor's /metrics served on loopback with the text its own Metrics
class renders, systemctl and journalctl replaced by scripts on PATH. Then playbooks/status.yml as ansible-playbook runs
it, against localhost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ansible_collections.actuated.registry.plugins.modules import registry_status

REPO = Path(__file__).resolve().parents[4]
GIB = 2**30
HOUR = 3600
SECRET = "s3cr3t-pw"


class Host(t.NamedTuple):
    """The fake host: its files, and the arguments that point the module at them."""

    root: Path
    args: dict
    bin: Path


def serve(text: str) -> ThreadingHTTPServer:
    """An http.server on 127.0.0.1 (port 0) answering GET /metrics with TEXT."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            body = text.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: t.Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def script(path: Path, text: str) -> None:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)


@pytest.fixture
def host(tmp_path: Path, pki: t.Any, supervisor_metrics: t.Callable[..., str]) -> t.Iterator[Host]:
    """An edge with a tier, pulling Docker Hub's images through it (20 GiB budget, 5 used; its caching front answered
    28 requests itself), and a ghcr mirror read-only for two hours and over its budget; the unit active, actuated's
    certificate valid for 30 days."""
    now = time.time()
    hub = serve(supervisor_metrics(registry_mirror_read_only=0, registry_mirror_upstream_index=0,
                                   registry_mirror_cache_bytes=5 * GIB, registry_mirror_cache_budget_bytes=20 * GIB,
                                   registry_mirror_cache_images=42,
                                   registry_mirror_cache_last_collection_timestamp_seconds=now - 600,
                                   front=True, registry_mirror_front_requests_total=35,
                                   registry_mirror_front_cache_hits_total=20, registry_mirror_front_cache_stale_total=1,
                                   registry_mirror_front_blobs_from_disk_total=7,
                                   registry_mirror_front_cache_misses_total=4)
                + '# TYPE registry_proxy_hits_total counter\nregistry_proxy_hits_total{type="blob"} 40\n'
                  'registry_proxy_hits_total{type="manifest"} 12\nregistry_proxy_misses_total{type="blob"} 9\n'
                  'registry_proxy_misses_total{type="manifest"} 3\n')
    ghcr = serve(supervisor_metrics(fallbacks=False, registry_mirror_read_only=1, registry_mirror_cache_bytes=3 * GIB,
                                    registry_mirror_cache_budget_bytes=2 * GIB, registry_mirror_cache_images=7))
    etc = tmp_path / "etc"
    (etc / "upstreams" / "ghcr").mkdir(parents=True)
    (etc / "supervisor.json").write_text(json.dumps({
        "name": "docker-hub", "upstream": "https://10.1.0.10:5000", "version": "3.1.1", "port": hub.server_address[1],
        "fallbacks": [{"url": "https://registry-1.docker.io", "credentials": ""}]}))
    (etc / "upstreams" / "ghcr" / "supervisor.json").write_text(json.dumps({
        "name": "ghcr", "upstream": "https://ghcr.io", "version": "3.1.1", "port": ghcr.server_address[1],
        "credentials": "REGISTRY_MIRROR_GHCR"}))
    fact = tmp_path / "registry_mirror.fact"
    fact.write_text(json.dumps({"version": "3.1.1", "arch": "amd64", "address": "192.168.128.1", "port": 5000,
                                "upstream": "https://registry-1.docker.io", "mode": "edge",
                                "tiers": ["https://10.1.0.10:5000"],
                                "upstreams": [{"name": "ghcr", "registry": "ghcr.io", "url": "https://ghcr.io",
                                               "port": 5010}]}))
    cert = tmp_path / "server.crt"
    shutil.copy(pki.server_crt, cert)
    journal = [
        {"MESSAGE": "Started registry.service - registry mirror.", "PRIORITY": "6",
         "MESSAGE_ID": "39f53479d3a045ac8e11786248231fbf", "__REALTIME_TIMESTAMP": str(int((now - 10 * HOUR) * 1e6))},
        {"MESSAGE": f"[ghcr] registry-supervisor: ERROR: upstream https://bot:{SECRET}@ghcr.io refuses the account",
         "PRIORITY": "6", "__REALTIME_TIMESTAMP": str(int((now - 3 * HOUR) * 1e6))},
        {"MESSAGE": "[ghcr] registry-supervisor: upstream https://ghcr.io is unreachable (timed out): serving the cache "
                    "read-only without the proxy", "PRIORITY": "6", "__REALTIME_TIMESTAMP": str(int((now - 2 * HOUR) * 1e6))},
    ]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "journal.json").write_text("".join(json.dumps(entry) + "\n" for entry in journal))
    (tmp_path / "unit-state").write_text("active\n")
    script(bin_dir / "systemctl", f'[ "$1 $2" = "is-active registry" ] || exit 4\ncat {tmp_path / "unit-state"}\n'
                                  f'grep -qx active {tmp_path / "unit-state"}\n')
    script(bin_dir / "journalctl", f'case "$*" in *"-u registry"*"-o json"*) cat {tmp_path / "journal.json"};; '
                                   '*) exit 1;; esac\n')
    args = {"config_dir": etc, "fact_file": fact, "tls_certificate": cert}
    try:
        yield Host(tmp_path, args, bin_dir)
    finally:
        hub.shutdown()
        ghcr.shutdown()


@pytest.fixture
def run(host: Host, module_runner: t.Callable[..., t.Any], monkeypatch: pytest.MonkeyPatch) -> t.Callable[..., t.Any]:
    monkeypatch.setenv("PATH", f"{host.bin}{os.pathsep}{os.environ['PATH']}")
    return lambda **args: module_runner(registry_status.main, **{**host.args, **args})


def test_every_mirror_and_why_the_host_needs_attention(run: t.Callable[..., t.Any], host: Host) -> None:
    result = run()
    assert not result.failed and result["changed"] is False and result.warnings == []
    hub, ghcr = result["mirrors"]
    assert {key: hub[key] for key in ("name", "registry", "version", "mode", "upstream", "upstream_role", "cache_bytes",
                                      "budget_bytes", "images", "hits", "misses", "upstream_pulls", "metrics_error")} == {
        "name": "docker-hub", "registry": "docker.io", "version": "3.1.1", "mode": "pull-through",
        "upstream": "https://10.1.0.10:5000", "upstream_role": "tier 1", "cache_bytes": 5 * GIB,
        "budget_bytes": 20 * GIB, "images": 42, "hits": 80, "misses": 12, "upstream_pulls": 3, "metrics_error": None}
    assert round(result["checked_at"] - hub["mode_since"]) == 10 * HOUR  # since the unit started: it said nothing
    assert round(result["checked_at"] - hub["last_collection"]) == 600
    assert (ghcr["name"], ghcr["registry"], ghcr["mode"], ghcr["upstream"]) == ("ghcr", "ghcr.io", "read-only", None)
    assert round(result["checked_at"] - ghcr["mode_since"]) == 2 * HOUR
    assert ghcr["hits"] is ghcr["misses"] is ghcr["upstream_pulls"] is None
    assert result["unit"] == "active" and result["role_mode"] == "edge" and result["version"] == "3.1.1"
    assert result["certificates"]["actuated"]["days_left"] in (29, 30) and "tier" not in result["certificates"]
    assert result["errors"] == ["[ghcr] registry-supervisor: ERROR: upstream https://[secret]@ghcr.io refuses the account"]
    assert result["attention"] == ["ghcr: read-only for 2 h", "ghcr: cache over its budget (3.0 GiB of 2.0 GiB)"]
    assert SECRET not in json.dumps(result)


def test_check_mode_is_the_same_reading(run: t.Callable[..., t.Any]) -> None:
    result = run(check_mode=True)
    assert result["changed"] is False and len(result["mirrors"]) == 2 and result["attention"]


def test_thresholds_and_a_certificate_about_to_expire(run: t.Callable[..., t.Any], host: Host, pki: t.Any) -> None:
    shutil.copy(pki.soon_crt, host.args["tls_certificate"])
    result = run(read_only_max_seconds=3 * HOUR, cert_min_days=14)
    assert result["attention"] == ["actuated certificate expires in 2 days",
                                   "ghcr: cache over its budget (3.0 GiB of 2.0 GiB)"]


def test_a_stopped_unit_and_silent_supervisors(run: t.Callable[..., t.Any], host: Host) -> None:
    (host.root / "unit-state").write_text("failed\n")
    for settings in host.args["config_dir"].rglob("supervisor.json"):
        settings.write_text(json.dumps({**json.loads(settings.read_text()), "port": 1}))
    result = run(error_lines=0)
    assert result["unit"] == "failed" and result["errors"] == []
    assert [mirror["mode"] for mirror in result["mirrors"]] == ["unknown", "unknown"]
    assert all(mirror["metrics_error"].startswith("127.0.0.1:1: ") for mirror in result["mirrors"])
    assert result["attention"] == ["the registry unit is not running (failed)"]


def test_a_host_the_role_has_not_run_on(run: t.Callable[..., t.Any], host: Host) -> None:
    result = run(fact_file=host.root / "none.fact", config_dir=host.root / "nothing",
                 tls_certificate=host.root / "none.crt")
    assert result["mirrors"] == [{"name": "docker-hub", "registry": "docker.io", "mode": "unknown", "mode_since": None,
                                  "metrics_error": f"cannot read {host.root}/nothing/supervisor.json (FileNotFoundError)"}]
    assert result["certificates"] == {}
    assert result["attention"][0] == f"no readable fact file {host.root}/none.fact: has the role run on this host?"


def test_a_tiers_certificate(run: t.Callable[..., t.Any], host: Host, pki: t.Any) -> None:
    fact = json.loads(host.args["fact_file"].read_text())
    host.args["fact_file"].write_text(json.dumps({**fact, "mode": "tier"}))
    (host.args["config_dir"] / "tier-tls").mkdir()
    (host.args["config_dir"] / "tier-tls" / "server.crt").write_text("not a certificate\n")
    result = run(tls_certificate=host.root / "no-actuated-here.crt")
    assert result["certificates"] == {"tier": {"path": f"{host.args['config_dir']}/tier-tls/server.crt",
                                               "error": "not a readable PEM certificate"}}
    assert "tier certificate: not a readable PEM certificate" in result["attention"]


# ---- the playbook, as ansible-playbook runs it ------------------------------------------------------------------------


def playbook(host: Host, *extra: str) -> subprocess.CompletedProcess:
    """playbooks/status.yml of a copy of the collection, against localhost (connection local, no become), pointed at
    the fake host's files through the inventory's variables, with the fake systemctl and journalctl on PATH."""
    binary = Path(sys.executable).parent / "ansible-playbook"
    if not binary.exists():
        pytest.skip("ansible-playbook is not next to this Python")
    tree = host.root / "collections"
    collection = tree / "ansible_collections" / "actuated" / "registry"
    if not collection.exists():
        for part in ("plugins", "playbooks", "meta"):
            shutil.copytree(REPO / part, collection / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "galaxy.yml", collection / "galaxy.yml")
    (host.root / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"agent-1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False,
        "registry_mirror_config_dir": str(host.args["config_dir"]),
        "registry_mirror_tls_certificate": str(host.args["tls_certificate"]),
        "status_fact_file": str(host.args["fact_file"])}}}}))
    env = {**os.environ, "PATH": f"{host.bin}{os.pathsep}{os.environ['PATH']}", "ANSIBLE_COLLECTIONS_PATH": str(tree),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(host.root / "tmp"), "ANSIBLE_CONFIG": str(host.root / "none.cfg"),
           "ANSIBLE_REMOTE_TEMP": str(host.root / "rtmp"), "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    return subprocess.run([str(binary), "-i", str(host.root / "inventory.yml"), "actuated.registry.status",
                           "-e", "status_hosts=agent-1", *extra], cwd=host.root, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def table(stdout: str) -> list[str]:
    """The table's lines, as the debug task printed them."""
    start = stdout.index('"msg": [') + len('"msg": [')
    return json.loads("[" + stdout[start:stdout.index("]\n}", start)] + "]")


def test_the_playbook_prints_the_table_and_fails_naming_the_host(host: Host) -> None:
    proc = playbook(host, "--check")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = table(proc.stdout)
    print("\n".join(lines))  # the README's example (pytest -s)
    assert lines[0].split() == ["HOST", "MIRROR", "VERSION", "MODE", "SINCE", "UPSTREAM", "CACHE", "/", "BUDGET",
                                "IMAGES", "COLLECTED", "HITS/MISSES", "PULLS", "CERT", "TIER", "CERT"]
    assert lines[1].split()[:6] == ["agent-1", "docker-hub", "3.1.1", "pull-through", "10", "h"]
    assert lines[1].split()[18:20] == ["80/12", "3"]  # distribution's 52 hits and the front's 28 answers
    assert lines[2].split()[:5] == ["agent-1", "ghcr", "3.1.1", "read-only", "2"]
    assert lines[3:6] == ["  ! ghcr: read-only for 2 h", "  ! ghcr: cache over its budget (3.0 GiB of 2.0 GiB)",
                          "  | [ghcr] registry-supervisor: ERROR: upstream https://[secret]@ghcr.io refuses the account"]
    assert lines[-1] == "1 hosts, 1 need attention"
    assert "1 host(s) need attention: agent-1 (ghcr: read-only for 2 h; ghcr: cache over its budget" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert "changed=0" in proc.stdout


def test_the_playbook_in_json_and_a_healthy_host(host: Host, supervisor_metrics: t.Callable[..., str]) -> None:
    ghcr = host.args["config_dir"] / "upstreams" / "ghcr" / "supervisor.json"
    healthy = serve(supervisor_metrics(fallbacks=False, registry_mirror_cache_bytes=GIB,
                                       registry_mirror_cache_budget_bytes=2 * GIB))
    try:
        ghcr.write_text(json.dumps({**json.loads(ghcr.read_text()), "port": healthy.server_address[1]}))
        proc = playbook(host, "-e", "status_format=json", "-v")
    finally:
        healthy.shutdown()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    start = proc.stdout.index('"msg": {') + len('"msg": ')
    report = json.JSONDecoder().raw_decode(proc.stdout[start:])[0]
    assert list(report) == ["agent-1"] and report["agent-1"]["attention"] == []
    assert [mirror["mode"] for mirror in report["agent-1"]["mirrors"]] == ["pull-through", "pull-through"]
    assert "invocation" not in report["agent-1"] and SECRET not in proc.stdout + proc.stderr
