# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The caching front (registry_mirror_front): this host converges with it, is checked, and converges back
without it, so the other tests of the scenario see the default again. Counters of the fake Docker Hub are the
assertions, never timings. The front is the same nginx configuration on every architecture: amd64 only here."""
from __future__ import annotations

import concurrent.futures

import pytest
from conftest import ADDRESS, GHCR_MIRROR, MIRROR, Client, amd64_only, reconverge

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


def test_front_converges_on_a_host_that_had_none(converge, vm):
    reconverge(converge, vm, "registry_mirror_front=true")


def test_front_holds_the_mirror_ports_and_distribution_only_unix_sockets(host, vm):
    listening = host.check_output("ss -Hltn")
    for port in (5000, 5010):
        assert f"{ADDRESS}:{port} " in listening, listening
        server = vm.sh(f"curl -s -o /dev/null -D - https://{ADDRESS}:{port}/v2/ | tr -d '\\r' | grep -i '^server:'",
                       check=False).stdout
        assert "nginx" in server, server  # distribution sends no Server header
    # Only the supervisors' loopback ports besides the front's: no registry on the bridge.
    assert sorted(line.split()[3] for line in listening.splitlines() if not line.split()[3].startswith("127.0.0.11:")) == sorted(
        [f"{ADDRESS}:5000", f"{ADDRESS}:5010", "127.0.0.1:5002", "127.0.0.1:5012"]), listening
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
    pulled = vm.pull(f"{MIRROR}/library/small1:latest", "amd64", "/tmp/front-small1")
    assert pulled.returncode == 0, pulled.stderr
    layer = vm.sh("jq -r '.layers[0].digest' /tmp/front-small1/blobs/sha256/$(jq -r '.manifests[0].digest' "
                  "/tmp/front-small1/index.json | cut -d: -f2)").stdout.strip()
    answer = fetch(vm, f"/v2/library/small1/blobs/{layer}")
    assert answer["status"] == "200" and answer["docker-content-digest"] == layer, answer
    assert "x-registry-mirror-cache" not in answer  # not a proxied answer
    # A repository that does not hold the blob does not get it from the disk (distribution answers for it).
    other = fetch(vm, f"/v2/library/alpine/blobs/{layer}")
    assert other["status"] != "200" or other.get("docker-content-digest") == layer


def test_catalog_is_refused_to_vms(vm):
    answer = fetch(vm, "/v2/_catalog")
    assert answer["status"] == "404", answer


def test_the_ghcr_mirror_is_served_by_the_front_too(vm):
    answer = vm.sh(f"curl -s -o /dev/null -w '%{{http_code}}' https://{GHCR_MIRROR}/v2/", check=False).stdout
    assert answer == "200"


def test_front_goes_again_and_distribution_takes_the_port_back(converge, vm, host):
    reconverge(converge, vm, "registry_mirror_front=false")
    assert not host.file("/etc/systemd/system/registry-front.service").exists
    listening = host.check_output("ss -Hltnp")
    assert '"nginx"' not in listening
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/front-after").returncode == 0
