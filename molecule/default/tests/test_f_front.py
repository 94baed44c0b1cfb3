# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The caching front (registry_mirror_front, on by default): checked on this host, which then converges without it
and back to the default (the downgrade and the upgrade keep the cache). Counters of the fake Docker Hub are the
assertions, never timings. The front is the same nginx configuration on every architecture: amd64 only here (the
other tests of the scenario run through it on both)."""
from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time

import pytest
from conftest import ADDRESS, GHCR_MIRROR, MIRROR, REPO, Client, amd64_only, reconverge, registry_pids, world
from test_w_cert_rotation import CERTS, issue, now, starts, wait_for

# The host fixture keeps the tests in file order (testinfra's parametrized `host` makes pytest group by it otherwise).
pytestmark = [amd64_only, pytest.mark.usefixtures("host")]

# One Accept header with every type, as containerd, buildkit and skopeo send it.
ACCEPT = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
SINGLE = "application/vnd.oci.image.manifest.v1+json"


def fetch(vm: Client, path: str, accept: str = ACCEPT, method: str = "GET") -> dict[str, str]:
    """The status and headers of one request from the VM to the Docker Hub mirror (lower-case names)."""
    head = "-I" if method == "HEAD" else ""
    out = vm.sh(f"curl -s {head} -o /dev/null -D - -H 'Accept: {accept}' https://{MIRROR}{path}", check=False).stdout
    lines = out.replace("\r", "").splitlines()
    found = {"status": lines[0].split()[1] if lines and len(lines[0].split()) > 1 else "none"}
    for line in lines[1:]:
        name, _colon, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return found


def gets(hub, name: str = "actuated-ci") -> int:
    """Manifest GETs (counted pulls) the fake Docker Hub saw from the mirror's account."""
    return hub.pulls().get(name, 0)


# The listening sockets with their processes: as the service user, who may read the descriptors of its own processes
# (root in the container may not: Docker gives it no CAP_SYS_PTRACE, and `ss -p` then names no process).
SS_AS_SERVICE_USER = "runuser -u registry -- ss -Hltnp"


def test_front_holds_the_mirror_ports_and_distribution_only_unix_sockets(host, vm):
    listening = host.check_output(SS_AS_SERVICE_USER)
    for port in (5000, 5010):
        assert f"{ADDRESS}:{port} " in listening, listening
        server = vm.sh(f"curl -s -o /dev/null -D - https://{ADDRESS}:{port}/v2/ | tr -d '\\r' | grep -i '^server:'",
                       check=False).stdout
        assert "nginx" in server, server  # distribution sends no Server header
    # Only the supervisors' loopback ports besides the front's: no registry on the bridge.
    # A set: the front listens with reuseport, a socket per nginx worker.
    assert sorted({line.split()[3] for line in listening.splitlines() if not line.split()[3].startswith("127.0.0.11:")}) == sorted(
        [f"{ADDRESS}:5000", f"{ADDRESS}:5010", "127.0.0.1:5002", "127.0.0.1:5012"]), listening
    # Every socket on the bridge is nginx's (a registry could listen beside it: SO_REUSEPORT, the same user).
    bridge = [line for line in listening.splitlines() if line.split()[3].startswith(f"{ADDRESS}:")]
    assert bridge and all('"nginx"' in line and '"registry"' not in line for line in bridge), listening
    for name in ("docker-hub", "ghcr"):
        sock = host.file(f"/run/registry/{name}.sock")
        assert sock.is_socket and sock.user == "registry" and sock.mode == 0o660


def test_front_runs_unprivileged_and_leaves_the_packages_nginx_disabled(host):
    front = host.service("registry-front")
    assert front.is_running and front.is_enabled
    assert host.check_output("systemctl show -p User --value registry-front") == "registry"
    assert not host.service("nginx").is_running and not host.service("nginx").is_enabled
    assert not host.file("/etc/nginx/sites-enabled/default").exists


def test_a_cached_tag_answers_from_the_front_without_asking_docker_hub(vm, hub):
    first = fetch(vm, "/v2/library/alpine/manifests/latest")
    assert first["status"] == "200", first
    before = hub.stats()["identities"].get("actuated-ci", {})
    again = fetch(vm, "/v2/library/alpine/manifests/latest")
    after = hub.stats()["identities"].get("actuated-ci", {})
    assert again["status"] == "200" and again["x-registry-mirror-cache"] == "HIT", again
    assert again["docker-content-digest"] == first["docker-content-digest"]
    assert again["content-type"] == first["content-type"] == "application/vnd.oci.image.index.v1+json"
    assert again["content-length"] == first["content-length"]
    assert after.get("manifest_get", 0) == before.get("manifest_get", 0)
    assert after.get("manifest_head", 0) == before.get("manifest_head", 0)


def test_a_client_that_accepts_only_single_manifests_is_not_served_the_cached_index(vm):
    """The media types accepted are in the cache key: the index cached above does not answer a client that accepts a
    single-platform manifest only; distribution does (what it gives is its own answer)."""
    index = fetch(vm, "/v2/library/alpine/manifests/latest")
    assert index["x-registry-mirror-cache"] == "HIT", index
    single = fetch(vm, "/v2/library/alpine/manifests/latest", accept=SINGLE)
    # MISS, or BYPASS with nginx before 1.23, which sees only the first Accept header (front.conf.j2 says why).
    assert single["status"] == "200" and single["x-registry-mirror-cache"] in ("MISS", "BYPASS"), single


def test_a_head_is_cached_apart_and_a_cached_one_asks_docker_hub_nothing(vm, hub):
    first = fetch(vm, "/v2/library/fill3/manifests/latest", method="HEAD")
    assert first["status"] == "200", first
    before = hub.stats()["identities"].get("actuated-ci", {})
    again = fetch(vm, "/v2/library/fill3/manifests/latest", method="HEAD")
    after = hub.stats()["identities"].get("actuated-ci", {})
    assert again["x-registry-mirror-cache"] == "HIT", again
    assert again["content-length"] == first["content-length"] and again["docker-content-digest"] == first["docker-content-digest"]
    assert (after.get("manifest_get", 0), after.get("manifest_head", 0)) == (before.get("manifest_get", 0), before.get("manifest_head", 0))


def test_a_burst_of_first_pulls_costs_one_docker_hub_pull_per_manifest(vm, hub):
    before = gets(hub)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _i: fetch(vm, "/v2/library/fill4/manifests/latest"), range(20)))
    assert [a["status"] for a in answers] == ["200"] * 20, answers
    assert len({a["docker-content-digest"] for a in answers}) == 1
    assert gets(hub) - before == 1


def test_cached_blobs_are_sent_from_the_registrys_storage(vm, host):
    pulled = vm.pull(f"{MIRROR}/library/small3:latest", "amd64", "/tmp/front-small3")
    assert pulled.returncode == 0, pulled.stderr
    layer = vm.sh("jq -r '.layers[0].digest' /tmp/front-small3/blobs/sha256/$(jq -r '.manifests[0].digest' "
                  "/tmp/front-small3/index.json | cut -d: -f2)").stdout.strip()
    answer = fetch(vm, f"/v2/library/small3/blobs/{layer}")
    assert answer["status"] == "200" and answer["docker-content-digest"] == layer, answer
    assert "x-registry-mirror-cache" not in answer  # not a proxied answer
    # A repository that does not hold the blob does not get it from the disk (distribution answers for it).
    other = fetch(vm, f"/v2/library/alpine/blobs/{layer}")
    assert other["status"] != "200" or other.get("docker-content-digest") == layer


def skopeo_loop(vm: Client, rounds: int) -> list[int]:
    """Pulls of the cached alpine back to back by skopeo, which never retries: each one's exit status."""
    return [vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", f"/tmp/front-loop{i}").returncode for i in range(rounds)]


def test_registry_restarts_fail_no_pull_of_a_cached_image(vm, host):
    """actuated's `systemctl restart registry` (its renewal), twice, under pulls by a client that never retries."""
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-warm").returncode == 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loop = pool.submit(skopeo_loop, vm, 16)
        for _restart in range(2):
            time.sleep(1)
            host.check_output("systemctl restart registry")
        codes = loop.result()
    assert codes == [0] * 16, codes


def test_a_renewal_reaches_clients_by_a_reload_and_fails_no_pull(vm, host):
    """The certificate watch reloads the front (graceful): the registry is not restarted, and pulls go on."""
    fingerprint = issue(host)
    time.sleep(1.1)  # journalctl --since counts whole seconds: not the second of the last restart above
    since = now(host)
    time.sleep(1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        loop = pool.submit(skopeo_loop, vm, 12)
        time.sleep(1)
        host.check_output(f"cat /tmp/renewed/server.crt > {CERTS}/server.crt && cat /tmp/renewed/server.key > {CERTS}/server.key")
        wait_for(vm, fingerprint)
        codes = loop.result()
    assert codes == [0] * 12, codes
    assert starts(host, since) == 0
    assert "Reloaded registry-front.service" in host.check_output(f"journalctl --no-pager -o cat -u registry-front --since '{since}'")


@pytest.fixture(name="dvm", scope="module")
def fixture_dvm() -> Client:
    """world-docker-vm's Docker daemon pointed at the mirror by the collection's client script, as a job's first step
    would."""
    dvm = Client(world.DOCKER_VM_CONTAINER)
    script = "/usr/local/bin/registry-mirror-client"
    subprocess.run(["docker", "cp", str(REPO / "clients" / "registry-mirror-client.py"), f"{dvm.name}:{script}"], check=True)
    dvm.sh(f"python3 {script} --registry docker.io")
    return dvm


def test_a_real_docker_pulling_across_registry_restarts_fails_nothing_and_never_falls_back(dvm, host, hub):
    """Across two restarts of the registry every pull succeeds, and none went to Docker Hub directly (Docker's own
    fallback: anonymous)."""
    try:
        assert dvm.sh("docker pull -q alpine", check=False).returncode == 0
        before = hub.pulls().get("anonymous", 0)
        # Back to back for 16 s, the registry restarted after 3 s and again 6 s later: how many succeeded, of how many.
        loop = ("ok=0; n=0; end=$(( $(date +%s) + 16 )); while [ $(date +%s) -lt $end ]; do n=$((n + 1)); "
                "docker rmi -f alpine >/dev/null 2>&1; docker pull -q alpine >/dev/null 2>&1 && ok=$((ok + 1)); "
                "done; echo $ok $n")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pulled = pool.submit(dvm.sh, loop)
            for delay in (3, 6):
                time.sleep(delay)
                host.check_output("systemctl restart registry")
            succeeded, count = (int(n) for n in pulled.result().stdout.split())
        print(f"docker pulls back to back across two registry restarts: {succeeded} of {count} succeeded")
        assert count >= 10 and succeeded == count, f"{count - succeeded} of {count} pulls failed"
        assert hub.pulls().get("anonymous", 0) == before
    finally:
        dvm.sh("docker rmi -f alpine >/dev/null 2>&1; true")


def test_a_cached_tag_is_served_while_docker_hub_is_away_and_an_uncached_one_fails(vm):
    """With the fake Docker Hub stopped, the front answers a cached tag (from its cache, fresh or stale), and a tag it
    never cached fails (the client falls back)."""
    assert fetch(vm, "/v2/library/alpine/manifests/latest")["status"] == "200"
    subprocess.run(world.command("hub-stop"), check=True, capture_output=True)
    try:
        cached = fetch(vm, "/v2/library/alpine/manifests/latest")
        assert cached["status"] == "200" and cached["x-registry-mirror-cache"] in ("HIT", "STALE", "UPDATING"), cached
        never = fetch(vm, "/v2/library/fill2/manifests/latest")
        assert never["status"] != "200", never
    finally:
        subprocess.run(world.command("hub-start"), check=True, capture_output=True)


def test_stopping_the_registry_stops_the_front_and_the_port_refuses(vm, host):
    """An operator's `systemctl stop registry` leaves no front answering with nothing behind it: the port refuses, so
    clients (and a tier's edges) fall back at once; starting the registry starts the front again."""
    host.check_output("systemctl stop registry")
    try:
        assert not host.service("registry-front").is_running
        refused = vm.sh(f"curl -s -o /dev/null -w '%{{http_code}}' https://{MIRROR}/v2/", check=False)
        assert refused.returncode == 7 and refused.stdout == "000", refused  # 7: could not connect
    finally:
        host.check_output("systemctl start registry")
    # The front answers /v2/ itself while distribution starts (X-Registry-Mirror-Front): wait for distribution's own
    # answer, so that the next test starts with a registry behind the front.
    vm.sh(f"for i in $(seq 300); do h=$(curl -sf -D - -o /dev/null https://{MIRROR}/v2/) && "
          f"! printf %s \"$h\" | grep -qi '^x-registry-mirror-front:' && exit 0; sleep 0.2; done; exit 1")
    assert host.service("registry-front").is_running
    assert "/etc/registry/config.yml" in registry_pids(host)


def test_a_wedged_registry_fails_no_cached_pull_and_is_replaced(vm, host):
    """A registry that accepts and never answers (SIGSTOP): the front keeps serving the cached image (its cache and
    distribution's storage), and the supervisor's health probe (over the unix socket) replaces the registry, saying
    so in the journal. Pulls by a client that never retries, back to back, throughout."""
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-wedge").returncode == 0
    wedged = registry_pids(host)["/etc/registry/config.yml"]
    time.sleep(1.1)
    since = now(host)
    host.check_output(f"kill -STOP {wedged}")
    replaced = ""
    with PullLoop(vm) as loop:
        # What the front has not cached costs a client the front's read timeout for tags (10 s), then a fast error.
        uncached = vm.sh(f"curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}' -H 'Accept: {ACCEPT}' "
                         f"https://{MIRROR}/v2/library/wedge-probe/manifests/latest", check=False).stdout.split()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "did not answer" not in replaced:
            time.sleep(1)
            replaced = host.check_output(f"journalctl --no-pager -o cat -u registry --since '{since}'")
    codes = loop.codes
    assert f"the registry (pid {wedged}) did not answer" in replaced, replaced[-3000:]
    assert codes and codes == [0] * len(codes), codes
    assert uncached[0] == "504", uncached  # the front's own timeout answered (the time is printed, not asserted)
    print(f"pulls of the cached image while the registry was wedged and replaced: {len(codes)}, all succeeded; "
          f"an uncached tag: HTTP {uncached[0]} after {uncached[1]} s")
    assert registry_pids(host)["/etc/registry/config.yml"] != wedged
    assert vm.pull(f"{MIRROR}/library/small2:latest", "amd64", "/tmp/front-unwedged").returncode == 0


def test_a_crashed_supervisor_leaves_the_front_serving_the_cache(vm, host):
    """The supervisor killed (SIGKILL): systemd restarts the registry unit after RestartSec, and the front, which only
    an operator's stop job stops, goes on serving the cached image meanwhile to a client that never retries."""
    front = host.check_output("systemctl show registry-front -p MainPID --value")
    restarts = int(host.check_output("systemctl show registry -p NRestarts --value"))
    with PullLoop(vm) as loop:
        time.sleep(1)
        host.check_output("kill -KILL $(systemctl show registry -p MainPID --value)")
        host.check_output("for i in $(seq 150); do [ \"$(systemctl show registry -p NRestarts --value)\" -gt "
                          f"{restarts} ] && systemctl -q is-active registry && exit 0; sleep 0.2; done; exit 1")
        time.sleep(1)
    codes = loop.codes
    assert codes and codes == [0] * len(codes), codes
    assert host.check_output("systemctl show registry-front -p MainPID --value") == front  # never stopped
    print(f"pulls of the cached image across a crash of the supervisor: {len(codes)}, all succeeded")


def test_front_metrics_count_cache_hits_and_blobs_sent_from_disk(vm, host):
    """The supervisor counts the front's per-request log (since its last start: the restarts above reset it)."""
    assert vm.pull(f"{MIRROR}/library/small3:latest", "amd64", "/tmp/front-metrics").returncode == 0
    assert vm.pull(f"{MIRROR}/library/small3:latest", "amd64", "/tmp/front-metrics").returncode == 0
    time.sleep(1)
    page = host.check_output("curl -s http://127.0.0.1:5002/metrics")
    values = {line.split()[0]: float(line.split()[1]) for line in page.splitlines()
              if line.startswith("registry_mirror_front_")}
    # Each request once: a hit, or a stale answer (a tag cached more than registry_mirror_tag_cache_seconds ago).
    assert values["registry_mirror_front_cache_hits_total"] + values["registry_mirror_front_cache_stale_total"] >= 1, values
    assert values["registry_mirror_front_blobs_from_disk_total"] >= 1, values
    # The bytes of those answers, which distribution never sent.
    assert values["registry_mirror_front_bytes_served_total"] >= 1, values
    assert values["registry_mirror_front_requests_total"] >= values["registry_mirror_front_cache_hits_total"]


def test_the_ghcr_mirror_is_served_by_the_front_too(vm):
    answer = vm.sh(f"curl -s -o /dev/null -w '%{{http_code}}' https://{GHCR_MIRROR}/v2/", check=False).stdout
    assert answer == "200"


class PullLoop:
    """Within the block, skopeo (which never retries) pulls the cached alpine back to back: CODES, each pull's exit
    status."""

    def __init__(self, vm: Client) -> None:
        self.vm = vm
        self.codes: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop)

    def loop(self) -> None:
        while not self.done.is_set():
            self.codes.append(self.vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-loop").returncode)

    def __enter__(self) -> PullLoop:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join()


def converge_under_pulls(converge, vm, *extra: str) -> list[int]:
    """Converge with EXTRA under a PullLoop: each pull's exit status, printed."""
    with PullLoop(vm) as loop:
        reconverge(converge, vm, *extra)
    codes = loop.codes
    print(f"pulls during the converge with {extra or 'the defaults'}: {len(codes)}, failed: {sum(1 for c in codes if c)}")
    return codes


def test_front_goes_and_distribution_takes_the_port_back_with_its_cache_failing_no_pull(converge, vm, host, hub):
    """The registry restarts first, its supervisor listening beside the front (SO_REUSEPORT, the same user), and the
    front stops after it: the port never closes, and no pull fails."""
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-before").returncode == 0
    codes = converge_under_pulls(converge, vm, "registry_mirror_front=false")
    assert len(codes) >= 10 and not any(codes), f"{sum(1 for c in codes if c)} of {len(codes)} pulls failed"
    assert not host.file("/etc/systemd/system/registry-front.service").exists
    listening = host.check_output(SS_AS_SERVICE_USER)
    bridge = [line for line in listening.splitlines() if line.split()[3] == f"{ADDRESS}:5000"]
    assert bridge and all('"registry"' in line and '"nginx"' not in line for line in bridge), listening
    before = gets(hub)
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-after").returncode == 0
    assert gets(hub) == before  # served from the cache distribution kept


def test_without_the_front_a_renewal_restarts_the_registry_once(vm, host):
    fingerprint = issue(host)
    time.sleep(1.1)
    since = now(host)
    time.sleep(1)
    host.check_output(f"cat /tmp/renewed/server.crt > {CERTS}/server.crt && cat /tmp/renewed/server.key > {CERTS}/server.key")
    wait_for(vm, fingerprint)
    time.sleep(3)
    assert starts(host, since) == 1
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-renewed").returncode == 0


def test_a_failed_turn_on_puts_the_mirror_back_on_the_port_without_front_or_bridge(converge, vm, host):
    """A run that turns the front on and whose registry then never serves (its metrics port is taken: distribution
    exits at start) is rolled back: the registry serves the port again without the front, and neither the front nor
    the bridge, its sockets or its unit, is left."""
    host.check_output("systemd-run --unit=front-busy-port --collect python3 -m http.server --bind 127.0.0.1 5009")
    try:
        host.check_output("for i in $(seq 100); do ss -Hltn 'sport = :5009' | grep -q . && exit 0; sleep 0.1; done; exit 1")
        result = converge("-e", "registry_mirror_front=true", "-e", "registry_mirror_start_timeout=10",
                          "-e", "registry_mirror_metrics_enabled=true", "-e", "registry_mirror_metrics_port=5009")
    finally:
        host.run("systemctl stop front-busy-port")
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and "put back the files as they were" in output, output[-3000:]
    assert not host.service("registry-front").is_running
    assert not host.file("/etc/systemd/system/registry-front.service").exists
    assert host.run("systemctl is-active registry-bridge").stdout.strip() != "active"
    assert host.check_output("find /run/registry -maxdepth 1 -type s") == ""
    assert "net: unix" not in host.file("/etc/registry/config.yml").content_string
    listening = host.check_output(SS_AS_SERVICE_USER)
    port = [line for line in listening.splitlines() if line.split()[3] == f"{ADDRESS}:5000"]
    assert port and all('"registry"' in line for line in port), listening
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-rolled-back").returncode == 0


def test_front_comes_back_with_the_default_and_the_cache_is_kept(converge, vm, host, hub):
    """Turning the front on fails no pull either: ahead of the registry's restart, a bridge serves the cache read-only
    on the new unix sockets and the front starts beside the registry on the port (SO_REUSEPORT); the restarted
    registry takes the sockets over from the bridge, which then stops, saying so."""
    time.sleep(1.1)
    since = now(host)
    codes = converge_under_pulls(converge, vm)
    assert len(codes) >= 10 and not any(codes), f"{sum(1 for c in codes if c)} of {len(codes)} pulls failed"
    assert host.service("registry-front").is_running
    bridge = host.check_output(f"journalctl --no-pager -o cat -u registry-bridge --since '{since}'")
    assert "bridge: unix:/run/registry/docker-hub.sock taken over by the registry" in bridge, bridge[-3000:]
    assert "not taken over" not in bridge, bridge[-3000:]
    assert not host.service("registry-bridge").is_running
    before = gets(hub)
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-back").returncode == 0
    assert gets(hub) == before
