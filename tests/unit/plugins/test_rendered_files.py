# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The settings files the role renders pass the checks of the program that reads them - the validate steps of
tasks/configure.yml: each supervisor.json with ``registry-supervisor --check-settings``, each proxy.env with
``--check-env``; the caching front's nginx configuration with ``nginx -t`` (nginx 1.22 out of Debian's package,
extracted by ``make deps``), its branch for nginx 1.23 and later too. Rendered by one ansible-playbook run (no target:
connection local, files written under a temporary directory) from the role's own preflight model, templates and
loops, for a Docker Hub mirror with a further upstream, an edge with tiers and a tier."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "registry_mirror"
SUPERVISOR = ROLE / "files" / "registry-supervisor.py"
BIN = Path(sys.executable).parent
HOSTS = {
    "hub": {"registry_mirror_dockerhub_username": "hubuser", "registry_mirror_dockerhub_token": "dckr_pat_hub",
            "registry_mirror_upstream_url": "https://hub.example.test/",
            "registry_mirror_upstreams": [{"name": "ghcr", "url": "https://GHCR.example.test/", "port": 5010,
                                           "username": "ghuser", "password": "ghtoken"},
                                          {"name": "quay", "url": "https://quay.example.test", "port": 5020}]},
    "edge": {"registry_mirror_bind_address": "10.88.2.21", "registry_mirror_bind_any_private_address": True,
             "registry_mirror_metrics_enabled": True,
             "registry_mirror_tiers": [{"url": "https://10.88.2.10:5000/"},
                                       {"url": "https://tier-c.example.test", "username": "c-edges", "password": "pw-c"}]},
    "tier": {"registry_mirror_mode": "tier", "registry_mirror_bind_address": "10.88.1.10",
             "registry_mirror_dockerhub_username": "hubuser", "registry_mirror_dockerhub_token": "dckr_pat_hub",
             "registry_mirror_tier_users": [{"username": "site-a-edges", "password": "fleet-test-A"}]},
}
# Every host with the caching front; the nginx version front.yml would read on the host (the edge's takes the branch
# for nginx 1.23 and later, which nginx 1.22 parses the same).
FRONT = {"hub": "1.22", "edge": "1.24", "tier": "1.22"}
NGINX = Path(os.environ.get("WORLD_CACHE", "/var/cache/actuated-world")) / "tools" / "nginx"


def _tasks(path: Path) -> t.Iterator[dict]:
    for task in yaml.safe_load(path.read_text(encoding="utf-8")):
        yield from _tasks_in(task)


def _tasks_in(task: dict) -> t.Iterator[dict]:
    if "block" in task:
        for inner in task["block"]:
            yield from _tasks_in(inner)
    else:
        yield task


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Path, str]]]:
    """{host: [(rendered file, its check option)]}, through the role's own tasks (copied, with a task file that runs
    preflight's model tasks and configure's templates with their destinations under the temporary directory)."""
    playbook = BIN / "ansible-playbook"
    if not playbook.exists():
        pytest.skip("ansible-playbook is not next to this Python")
    tmp = tmp_path_factory.mktemp("render")
    collection = tmp / "ansible_collections" / "actuated" / "registry"
    for part in ("plugins", "roles", "meta"):
        shutil.copytree(REPO / part, collection / part)
    shutil.copy(REPO / "galaxy.yml", collection / "galaxy.yml")
    out = tmp / "out"
    tasks = [task for task in _tasks(ROLE / "tasks" / "preflight.yml")
             if "actuated.registry.validate_inputs" in task and not (task["actuated.registry.validate_inputs"] or {})
             or "__registry_mirror_inputs" in str(task.get("ansible.builtin.set_fact", ""))]
    for task in _tasks(ROLE / "tasks" / "configure.yml"):
        written = (task.get("actuated.registry.registry_files") or {}).get("files")
        if not written:
            continue
        # The files of the task that one of the supervisor's checks validates, each under out/HOST/CHECK-OPTION/.
        keep = {key: task[key] for key in ("vars", "when") if key in task}
        files = written.strip().removeprefix("{{").removesuffix("}}")
        keep["loop"] = ("{{ ((" + files + ") | selectattr('validate', 'defined') | selectattr('validate', 'search', ' --check-')"
                        " | list) + ((" + files + ") | selectattr('path', 'search', 'front[.]conf$') | list) }}")
        keep["loop_control"] = {"label": "{{ item.path }}"}
        keep["vars"] = {**keep.get("vars", {}), "__test_dest": (
            f"{out}/{{{{ inventory_hostname }}}}/{{{{ item.validate | default('--nginx') | regex_search('--(check-[a-z]+|nginx)') }}}}"
            "{{ item.path }}")}
        tasks.append({**keep, "name": f"directory of {task['name']}",
                      "ansible.builtin.file": {"path": "{{ __test_dest | dirname }}", "state": "directory"}})
        tasks.append({**keep, "name": f"render {task['name']}",
                      "ansible.builtin.copy": {"content": "{{ item.content }}", "dest": "{{ __test_dest }}"}})
    (collection / "roles" / "registry_mirror" / "tasks" / "zz_test_render.yml").write_text(yaml.safe_dump(tasks, sort_keys=False))
    hosts = {name: {**variables, "_registry_mirror_address": variables.get("registry_mirror_bind_address", "192.168.128.1"),
                    "registry_mirror_front": True, "_registry_mirror_nginx_version": FRONT[name]}
             for name, variables in HOSTS.items()}
    (tmp / "inventory.yml").write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "_registry_mirror_arch": "amd64",
                 "registry_mirror_local_cache_dir": str(tmp / "cache"), "registry_mirror_fleet_ca_dir": str(tmp / "ca")},
        "hosts": hosts}}))
    (tmp / "playbook.yml").write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": True, "gather_subset": ["min"], "tasks": [
        {"ansible.builtin.include_role": {"name": "actuated.registry.registry_mirror", "tasks_from": "zz_test_render.yml"}}]}]))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp / "rtmp"), "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_CONFIG": str(tmp / "none.cfg")}
    # The front's runtime and cache directories under the temporary directory (role variables: extra variables win).
    front = ["-e", f"_registry_mirror_runtime_dir={tmp}/run", "-e", f"_registry_mirror_front_dir={tmp}/front"]
    proc = subprocess.run([str(playbook), "-i", str(tmp / "inventory.yml"), *front, str(tmp / "playbook.yml")], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {host: [(path, path.relative_to(out / host).parts[0]) for path in sorted((out / host).rglob("*")) if path.is_file()]
            for host in HOSTS}


def check(option: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUPERVISOR), option, str(path)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("host,files", [("hub", {"supervisor.json": 3, "proxy.env": 2}),
                                        ("edge", {"supervisor.json": 1, "proxy.env": 1}),
                                        ("tier", {"supervisor.json": 1, "proxy.env": 1})])
def test_every_rendered_file_passes_its_readers_check(rendered: dict, host: str, files: dict, pki: t.Any) -> None:
    found = rendered[host]
    assert {name: sum(path.name == name for path, _o in found) for name in files} == files
    for path, option in found:
        if option == "--nginx":
            continue  # test_the_fronts_configuration_passes_nginx_t
        if option == "--check-settings" and json.loads(path.read_text()).get("ca_file"):
            # An edge's supervisor trusts the tiers' CA, installed before its settings: here a CA of the test's.
            settings = json.loads(path.read_text())
            path.write_text(json.dumps({**settings, "ca_file": str(pki.ca_crt)}))
        proc = check(option, path)
        assert proc.returncode == 0 and proc.stderr == "", (path, proc.stderr)


def test_the_edges_settings_name_its_fallbacks(rendered: dict) -> None:
    settings = [json.loads(path.read_text()) for path, _o in rendered["edge"] if path.name == "supervisor.json"][0]
    assert settings["upstream"] == "https://10.88.2.10:5000"
    assert settings["fallbacks"] == [{"credentials": "REGISTRY_MIRROR_TIER2", "url": "https://tier-c.example.test"},
                                     {"credentials": "", "url": "https://registry-1.docker.io"}]


def test_a_broken_settings_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/usr/local/bin/registry", "config": "/etc/registry/config.yml",
                                "upstream": "https://registry-1.docker.io", "version": "3.1.1", "port": 70000}))
    proc = check("--check-settings", path)
    assert proc.returncode == 2 and proc.stderr == f"registry-supervisor: {path}: port must be at most 65535, not 70000\n"


@pytest.mark.parametrize("text,reason", [
    ('REGISTRY_PROXY_USERNAME="u"\n', "REGISTRY_PROXY_USERNAME is set without REGISTRY_PROXY_PASSWORD"),
    ('REGISTRY_PROXY_USERNAME="u"\nREGISTRY_PROXY_PASSWORD="S3CRET$x"\n', "line 3 is not NAME=\"VALUE\""),
    ('REGISTRY_PROXY_USERNAME="u"\nREGISTRY_PROXY_PASSWORD=S3CRET\n', "line 3 is not NAME=\"VALUE\""),
    ('PATH="S3CRET"\n', "line 2 sets PATH, which is not a credential registry-supervisor reads"),
    ('REGISTRY_MIRROR_GHCR_USERNAME="u"\nREGISTRY_MIRROR_GHCR_PASSWORD="S3CRET"\nREGISTRY_MIRROR_GHCR_PASSWORD="S3CRET"\n',
     "line 4 sets REGISTRY_MIRROR_GHCR_PASSWORD again"),
])
def test_a_broken_credentials_file_is_refused_without_its_values(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "proxy.env"
    path.write_text("# comment\n" + text)
    proc = check("--check-env", path)
    assert proc.returncode == 2 and reason in proc.stderr and "S3CRET" not in proc.stderr


def front_conf(rendered: dict, host: str) -> Path:
    """HOST's rendered front configuration."""
    return next(path for path, option in rendered[host] if option == "--nginx")


@pytest.mark.parametrize("host", sorted(FRONT))
def test_the_fronts_configuration_passes_nginx_t(rendered: dict, host: str, pki: t.Any) -> None:
    if not os.access(NGINX, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{NGINX} is missing: `make deps` extracts it")
        pytest.skip(f"{NGINX} is missing: `make deps` extracts it")
    conf = front_conf(rendered, host)
    text = conf.read_text()
    run = Path(re.search(r"^pid (.+)/front[.]pid;$", text, re.MULTILINE).group(1))
    run.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki.server_crt, run / "server.crt")
    shutil.copy(pki.server_key, run / "server.key")
    front = Path(re.search(r"client_body_temp_path (.+)/tmp/body;", text).group(1))
    for sub in ("tmp", "cache"):
        (front / sub).mkdir(parents=True, exist_ok=True)
    # nginx -t binds the listening sockets: the mirrors' addresses are not this machine's, free loopback ports are.
    ports = iter(free_ports(text.count(" ssl reuseport;")))
    checked = conf.with_name("front-loopback.conf")
    checked.write_text(re.sub(r"listen \S+ ssl reuseport;", lambda _m: f"listen 127.0.0.1:{next(ports)} ssl reuseport;", text))
    proc = subprocess.run([str(NGINX), "-t", "-q", "-e", "stderr", "-p", str(front), "-c", str(checked)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def free_ports(count: int) -> list[int]:
    """COUNT loopback ports free right now."""
    socks = [socket.socket() for _number in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("host", sorted(FRONT))
def test_the_front_keys_its_cache_on_the_method_and_the_accepted_types_and_keeps_heads(rendered: dict, host: str) -> None:
    text = front_conf(rendered, host).read_text()
    assert "proxy_cache_convert_head off;" in text
    keys = re.findall(r"proxy_cache_key (.+);", text)
    stored = [key for key in keys if key != '"blob $uri"']
    assert stored and all(key == '"$request_method $uri $registry_front_accept"' for key in stored), keys
    # Blobs: a key for the lock only, in each mirror's location that passes them on, where nothing is stored.
    blob_locations = re.findall(r"location @registry_front_\w+_blob \{([^}]*)\}", text)
    assert len(blob_locations) == len(keys) - len(stored) == text.count("    server {"), keys
    assert all('proxy_cache_key "blob $uri";' in body and "proxy_no_cache 1;" in body for body in blob_locations)
    assert "proxy_cache_lock on;" in text and "proxy_cache_background_update on;" in text
    assert ("the catalog is not served" in text) and "location = /v2/_catalog" in text  # registry_mirror_catalog false
    first_header_only = 'default "?";' in text
    assert first_header_only == (FRONT[host] == "1.22")
    # Before nginx 1.23 a tier takes the edges' registries (Go's default client, one Accept header per type) for
    # clients that accept every type; no other front does (a Go program in a VM may accept fewer).
    assert ('"~^Go-http-client/" 1;' in text) == (host == "tier"), host


# What nginx would put in the front's log line for a manifest pulled from its cache: each variable of log_format.
LOGGED = {"$upstream_cache_status": "HIT", "$registry_front_kind": "manifest", "$status": "200", "$upstream_addr": "-",
          "$request_method": "GET", "$registry_front_repo": "library/alpine",
          "$sent_http_docker_content_digest": "sha256:" + "d" * 64, "$body_bytes_sent": "1532"}


@pytest.mark.parametrize("host", sorted(FRONT))
def test_the_fronts_log_format_is_what_its_supervisor_parses(rendered: dict, host: str) -> None:
    """A line of the rendered log_format, as nginx sends it over syslog, is parsed by the supervisor: counted as a
    cache hit with its bytes served, and as a use of the image."""
    if str(ROLE / "files") not in sys.path:
        sys.path.insert(0, str(ROLE / "files"))  # the supervisor's modules, which import each other
    registry_listener = importlib.import_module("registry_listener")
    text = front_conf(rendered, host).read_text()
    found = re.search(r"^\s*log_format registry_front ((?:'[^']*'\s*)+);$", text, re.MULTILINE)
    assert found, "no log_format registry_front"
    log_format = "".join(re.findall(r"'([^']*)'", found.group(1)))
    message = re.sub(r"\$\w+", lambda variable: LOGGED[variable.group(0)], log_format)
    datagram = f"<190>Mar  7 09:05:01 registry_front: {message}".encode()
    parsed = registry_listener.parse_front_line(datagram)
    assert parsed == ("HIT", "manifest", 200, "-", 1532), message
    assert registry_listener.front_counters(*parsed) == {
        "registry_mirror_front_requests_total": 1, "registry_mirror_front_cache_hits_total": 1,
        "registry_mirror_front_bytes_served_total": 1532}
    assert registry_listener.front_use(datagram) == ("library/alpine", "sha256:" + "d" * 64)


def test_a_tiers_front_checks_the_edges_accounts_before_serving_anything(rendered: dict) -> None:
    text = front_conf(rendered, "tier").read_text()
    server = text[text.index("    server {"):]
    assert re.search(r"^        auth_basic_user_file .+/htpasswd;$", server, re.MULTILINE)
    assert server.index("auth_basic ") < server.index("location ")
    assert "auth_basic" not in front_conf(rendered, "hub").read_text()


def test_each_mirror_has_a_server_on_its_port_with_its_socket(rendered: dict) -> None:
    text = front_conf(rendered, "hub").read_text()
    assert re.findall(r"listen (\S+) ssl reuseport;", text) == ["192.168.128.1:5000", "192.168.128.1:5010", "192.168.128.1:5020"]
    assert re.findall(r"server unix:(\S+) ", text) == [
        "/run/registry/docker-hub.sock", "/run/registry/ghcr.sock", "/run/registry/quay.sock"]
