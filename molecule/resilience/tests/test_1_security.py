# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Security: only the VMs' bridge reaches the mirror, it runs unprivileged and sandboxed, the Docker Hub token shows up
nowhere, it refuses pushes and deletes, it fetches from its one upstream only, and its metrics stay on loopback."""
from __future__ import annotations

import json
import subprocess
import time

from conftest import ADDRESS, MIRROR, amd64_only, run, world
from helpers import ALPINE, cache, pull, record, target, warm  # noqa: F401  pylint: disable=unused-import

TOKEN = world.HUB_TOKEN
OTHER_TOKEN = "dckr_pat_RESILIENCE-rotated-token-0b7d31"
DECOY = "192.168.129.2:8443"  # a listener in the VM: the address an attacker would like the mirror to fetch from

DECOY_SCRIPT = r"""
import os, socket, sys
stop = sys.argv[1]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8443))
server.listen(16)
server.settimeout(0.2)
print("listening", flush=True)
accepted = 0
while not os.path.exists(stop):
    try:
        conn, _ = server.accept()
    except socket.timeout:
        continue
    accepted += 1
    conn.close()
print(accepted)
"""


def vm_curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl in the VM (status code on stdout)."""
    return run(["docker", "exec", world.VM_CONTAINER, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "--max-time", "20", *args], check=False)


def test_only_the_bridge_network_reaches_the_mirror(target, vm, offnet):
    networks = json.loads(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", target.name]).stdout)
    listeners = set(target.out("ss -Hltn | awk '{print $4}' | grep -v '^127.0.0.11:'").split())
    from_vm = vm_curl(f"https://{MIRROR}/v2/").stdout
    from_offnet = offnet.sh(f"curl -sS --connect-timeout 3 https://{MIRROR}/v2/", check=False)
    ok = (list(networks) == ["actuated-br129"] and listeners == {f"{ADDRESS}:5000", "127.0.0.1:5001", "127.0.0.1:5002"}
          and from_vm == "200" and from_offnet.returncode in {7, 28})
    record("security", "only the bridge reaches the mirror", ok, target_networks=list(networks),
           listeners=sorted(listeners), vm_status=from_vm, offnet_curl_exit=from_offnet.returncode)
    assert list(networks) == ["actuated-br129"]
    assert listeners == {f"{ADDRESS}:5000", "127.0.0.1:5001", "127.0.0.1:5002"}
    assert from_vm == "200"
    assert from_offnet.returncode in {7, 28}, (from_offnet.returncode, from_offnet.stderr)


def test_service_runs_unprivileged_without_capabilities(target):
    uid = target.out("id -u registry")
    procs = target.state()["procs"]
    kinds = sorted("registry serve" if "serve" in p["cmd"] else "supervisor" for p in procs)
    ok = (kinds == ["registry serve", "supervisor"] and all(set(p["uid"]) == {uid} for p in procs)
          and all(int(p["cap_eff"], 16) == 0 for p in procs) and all(p["no_new_privs"] == "1" for p in procs))
    record("security", "runs as an unprivileged user, no capabilities", ok,
           processes=[f"{'registry serve' if 'serve' in p['cmd'] else 'supervisor'}: uid {p['uid'][0]}, CapEff {p['cap_eff']}, "
                      f"NoNewPrivs {p['no_new_privs']}" for p in procs])
    assert kinds == ["registry serve", "supervisor"], procs  # the unit's processes: exactly these two
    for proc in procs:
        assert set(proc["uid"]) == {uid}, proc
        assert int(proc["cap_eff"], 16) == 0, proc
        assert proc["no_new_privs"] == "1", proc


def test_service_is_sandboxed_with_a_low_exposure_score(target):
    line = target.out("systemd-analyze security registry.service | tail -n 1")
    exposure = float(line.split("level for registry.service:")[1].split()[0])
    record("security", "sandboxed (systemd-analyze security)", exposure <= 2.5, exposure=exposure,
           verdict=line.split(":", 1)[1].strip())
    assert exposure <= 2.5, line


@amd64_only
def test_token_never_appears_at_vvv_with_diff_even_when_it_changes(converge):
    # Check mode with another token: the credentials file would change, so --diff has something to show.
    result = converge("--check", "--diff", "-vvv", "-e", f"registry_mirror_dockerhub_token={OTHER_TOKEN}")
    output = result.stdout + result.stderr
    credentials_task = output.split("TASK [actuated.registry.registry_mirror : Write the credentials of the mirrors", 1)[-1][:3000]
    would_change = "changed: [" in credentials_task.split("TASK [", 1)[0]
    ok = result.returncode == 0 and would_change and TOKEN not in output and OTHER_TOKEN not in output
    record("security", "token absent from -vvv --check --diff output (token changed)", ok, output_bytes=len(output),
           credentials_file_would_change=would_change)
    assert result.returncode == 0, result.stdout[-3000:]
    assert would_change, credentials_task[:2000]
    assert TOKEN not in output
    assert OTHER_TOKEN not in output


def test_token_is_absent_from_the_journal_and_anything_an_unprivileged_user_can_read(target):
    in_journal = TOKEN in target.out("journalctl --no-pager -o cat")
    readable = target.sh(f"runuser -u nobody -- grep -rlsF {TOKEN} /etc /var /run /usr/local /tmp /srv /opt /home /root",
                         check=False).stdout.split()
    on_command_lines = TOKEN in target.out("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
    env_file = target.out("stat -c '%U %a' /etc/registry/proxy.env")
    ok = not in_journal and not readable and not on_command_lines and env_file == "root 600"
    record("security", "token absent from journal, command lines, world-readable files", ok,
           journal=in_journal, readable_by_nobody=readable, command_lines=on_command_lines, proxy_env=env_file)
    assert not in_journal
    assert not readable
    assert not on_command_lines
    assert env_file == "root 600"


# What distribution answers a write to a pull-through cache (its blob and manifest stores refuse: UNSUPPORTED) and a
# delete while deletes are disabled (the default): 405 Method Not Allowed. The mirror has no accounts, so never 401.
REFUSED = "405"


def test_mirror_refuses_pushes_and_deletes(target, warm):
    index = json.loads(run(["docker", "exec", world.VM_CONTAINER, "skopeo", "inspect", "--raw",
                            f"docker://{MIRROR}/{ALPINE}"]).stdout)
    manifest = index["manifests"][0]["digest"]
    layer_dir = "/tmp/resilience-push-src"
    run(["docker", "exec", world.VM_CONTAINER, "sh", "-c",
         f"rm -rf {layer_dir} && skopeo copy --override-arch amd64 docker://{MIRROR}/{ALPINE} oci:{layer_dir}:x"])
    blob = next(iter(warm["blobs"]))
    pushed = run(["docker", "exec", world.VM_CONTAINER, "skopeo", "copy", "--retry-times", "0", f"oci:{layer_dir}:x",
                  f"docker://{MIRROR}/library/pushed:latest"], check=False)
    codes = {
        "start upload": vm_curl("-X", "POST", f"https://{MIRROR}/v2/library/pushed/blobs/uploads/").stdout,
        "put manifest": vm_curl("-X", "PUT", "-H", "Content-Type: application/vnd.oci.image.manifest.v1+json",
                                "--data", "{}", f"https://{MIRROR}/v2/library/alpine/manifests/latest").stdout,
        "delete manifest": vm_curl("-X", "DELETE", f"https://{MIRROR}/v2/library/alpine/manifests/{manifest}").stdout,
        "delete blob": vm_curl("-X", "DELETE", f"https://{MIRROR}/v2/library/alpine/blobs/sha256:{blob}").stdout,
    }
    run(["docker", "exec", world.VM_CONTAINER, "rm", "-rf", layer_dir])
    stored = target.sh("ls /var/lib/registry/docker/registry/v2/repositories/library/", check=False).stdout.split()
    still = pull(ALPINE)
    intact = cache(target)
    ok = (pushed.returncode != 0 and set(codes.values()) == {REFUSED} and "pushed" not in stored
          and still["ok"] and blob in intact["blobs"])
    record("security", "refuses pushes and deletes", ok, skopeo_push_exit=pushed.returncode, http_status=codes)
    assert pushed.returncode != 0
    for what, code in codes.items():
        assert code == REFUSED, (what, code)
    assert "pushed" not in stored
    assert still["ok"], still
    assert blob in intact["blobs"]


# Requests the mirror answers itself, from its own upstream, ignoring what names another registry: an absolute-form
# request for /v2/ (the authority is ignored), and distribution 3.x ignores containerd's ns= parameter (it serves the
# image of the same name from its one upstream). The decoy counting no connection is what proves the rule.
ANSWERED_BY_THE_MIRROR = ("absolute URL as request target", "containerd ns= parameter")


def test_mirror_fetches_from_its_one_upstream_only(target, hub, warm):
    stop = "/tmp/resilience-decoy-stop"
    decoy = subprocess.Popen(["docker", "exec", world.VM_CONTAINER, "python3", "-c", DECOY_SCRIPT, stop],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert decoy.stdout is not None and decoy.stdout.readline().strip() == "listening"
    since = time.time()
    base = f"https://{MIRROR}/v2"
    attempts = {
        "upstream host as repository prefix": [f"{base}/hub.actuated.test/library/alpine/manifests/latest"],
        "decoy address as repository prefix": [f"{base}/{DECOY}/library/alpine/manifests/latest"],
        "containerd ns= parameter": [f"{base}/library/alpine/manifests/latest?ns={DECOY}"],
        "absolute URL as request target": ["--request-target", f"https://{DECOY}/v2/library/alpine/manifests/latest",
                                           f"{base}/"],
        "Host header": ["-H", f"Host: {DECOY}", f"{base}/library/small9/manifests/latest"],
        "X-Forwarded-Host header": ["-H", f"X-Forwarded-Host: {DECOY}", f"{base}/library/small9/manifests/latest"],
        "dot-dot path": ["--path-as-is", f"{base}/library/../../{DECOY}/v2/library/alpine/manifests/latest"],
        "encoded URL as repository": [f"{base}/https%3A%2F%2F{DECOY.replace(':', '%3A')}%2Fx/manifests/latest"],
    }
    try:
        codes = {what: vm_curl(*args).stdout for what, args in attempts.items()}
    finally:
        run(["docker", "exec", world.VM_CONTAINER, "touch", stop])
        out = decoy.communicate(timeout=30)[0]
        run(["docker", "exec", world.VM_CONTAINER, "rm", "-f", stop])
    decoy_connections = int(out.split()[-1])
    upstream_paths = sorted({r["path"] for r in hub.call("stats")["recent"]
                             if r["remote"] == "192.168.129.1" and r.get("time", "") >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since))})
    ok = decoy_connections == 0 and all(code != "200" or what in ANSWERED_BY_THE_MIRROR for what, code in codes.items())
    record("security", "fetches only from the one configured upstream", ok, decoy_connections=decoy_connections,
           http_status=codes, paths_the_upstream_saw=upstream_paths)
    assert decoy_connections == 0
    for what, code in codes.items():
        assert code != "200" or what in ANSWERED_BY_THE_MIRROR, (what, code)


def test_metrics_listen_on_loopback_only_and_count_proxy_traffic(target, vm, warm):
    listeners = target.out("ss -Hltn | awk '{print $4}'").split()
    from_vm = vm.sh(f"curl -sS --connect-timeout 3 http://{ADDRESS}:5001/metrics", check=False)
    metrics = target.out("curl -sS http://127.0.0.1:5001/metrics")
    expvar = json.loads(target.out("curl -sS http://127.0.0.1:5001/debug/vars"))
    proxy_prometheus = sorted({line.split("{")[0].split()[0] for line in metrics.splitlines() if line.startswith("registry_proxy_")})
    proxy_expvar = expvar.get("registry", {}).get("proxy", {})
    ok = ("127.0.0.1:5001" in listeners and not any(l.endswith(":5001") and not l.startswith("127.0.0.1:") for l in listeners)
          and from_vm.returncode == 7 and "registry_http_requests_total" in metrics
          and "registry_proxy_requests_total" in proxy_prometheus)
    record("security", "metrics on loopback only", ok, vm_curl_exit=from_vm.returncode,
           prometheus_registry_proxy=proxy_prometheus or "none",
           expvar_proxy=proxy_expvar)
    assert "127.0.0.1:5001" in listeners
    assert not any(l.endswith(":5001") and not l.startswith("127.0.0.1:") for l in listeners), listeners
    assert from_vm.returncode == 7, (from_vm.returncode, from_vm.stderr)  # refused: nothing listens on the bridge
    assert "registry_http_requests_total" in metrics
    # distribution 3.x counts proxy traffic as registry_proxy_* in /metrics (2.8 only in /debug/vars).
    assert "registry_proxy_requests_total" in proxy_prometheus, (proxy_prometheus, proxy_expvar)
