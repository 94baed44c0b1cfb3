# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""A fleet: one Docker Hub pull per image and architecture per site, edges that never break when their tier does.

Two sites (molecule.yml): tier-a with edge-a1 and edge-a2, tier-b with edge-b1 (arm64). The fake Docker Hub records
every request with its source address, so what each tier (and each edge, directly) asked for is counted per host.
These tests address the hosts by name (docker exec) rather than through testinfra's `host`, which would run each
test once per host of the inventory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Client, Hub, world

TIERS = world.FLEET_TIERS
EDGES = world.FLEET_EDGES
SITE = {"edge-a1": "tier-a", "edge-a2": "tier-a", "edge-b1": "tier-b"}
MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/?]+)")
BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})")
PROBE_WAIT = 60  # probes every 5 s (molecule.yml); a failure is confirmed before a switch; emulated arm64 is slow


def node(name: str) -> Client:
    """A host of the fleet (its container), to run commands in."""
    return Client(name)


def mirror(edge: str) -> str:
    return f"{EDGES[edge]}:5000"


def requests(hub: Hub) -> list[dict]:
    """Every /v2/ request the fake Docker Hub answered since its last reset, oldest first."""
    return [r for r in hub.stats()["recent"] if r["path"].startswith("/v2/")]


def manifest_gets(hub: Hub, remote: str) -> Counter:
    """Manifest GETs answered 200 to REMOTE, by repository and reference (what Docker Hub counts as pulls)."""
    found = Counter()
    for r in requests(hub):
        match = MANIFEST.match(r["path"])
        if match and r["remote"] == remote and r["method"] == "GET" and r["status"] == 200:
            found[f"{match['name']}:{match['ref']}"] += 1
    return found


def blob_gets(hub: Hub, remote: str) -> Counter:
    found = Counter()
    for r in requests(hub):
        match = BLOB.match(r["path"])
        if match and r["remote"] == remote and r["method"] == "GET" and r["status"] == 200:
            found[match["digest"]] += 1
    return found


def pull(vm: Client, edge: str, image: str, arch: str = "amd64") -> None:
    pulled = vm.pull(f"{mirror(edge)}/{image}", arch, f"/tmp/fleet-{edge}")
    assert pulled.returncode == 0, f"{image} ({arch}) through {edge}: {pulled.stderr[-1500:]}"


def journal_since(name: str, start: str) -> str:
    return node(name).sh(f"journalctl --no-pager -o cat -u registry --since '{start}'").stdout


def now(name: str) -> str:
    return node(name).sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()


def wait_journal(name: str, start: str, text: str, timeout: float = PROBE_WAIT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        lines = journal_since(name, start)
        if text in lines:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: no {text!r} in the journal after {timeout} s:\n{lines[-3000:]}")
        time.sleep(1)


@pytest.fixture(name="vm", scope="module")
def fixture_vm() -> Client:
    return Client(world.VM_CONTAINER)


@pytest.fixture(name="tier_down")
def fixture_tier_down():
    """Stops a tier's registry for a test; always starts it again."""
    stopped: list[str] = []

    def stop(tier: str) -> None:
        node(tier).sh("systemctl stop registry")
        stopped.append(tier)

    yield stop
    for tier in stopped:
        node(tier).sh("systemctl start registry")
        node(tier).sh(f"for i in $(seq 120); do curl -s -o /dev/null --cacert /etc/registry/tier-tls/ca.crt "
                      f"https://{TIERS[tier]}:5000/v2/ && exit 0; sleep 0.5; done; exit 1")


def test_every_edge_of_a_site_costs_one_docker_hub_pull_per_image_and_architecture_per_site(vm, hub):
    hub.reset()
    # A multi-architecture image: each site's edges pull both architectures; a single-architecture one, three times.
    pull(vm, "edge-a1", "library/fill1:latest", "amd64")
    first_edge = (manifest_gets(hub, TIERS["tier-a"]), blob_gets(hub, TIERS["tier-a"]))
    pull(vm, "edge-a2", "library/fill1:latest", "amd64")
    # The site's second edge cost the Hub nothing: its tier served it from its cache.
    assert (manifest_gets(hub, TIERS["tier-a"]), blob_gets(hub, TIERS["tier-a"])) == first_edge
    for edge, arch in (("edge-a2", "arm64"), ("edge-a1", "arm64"), ("edge-b1", "arm64"), ("edge-b1", "amd64")):
        pull(vm, edge, "library/fill1:latest", arch)
    for edge in EDGES:
        pull(vm, edge, "library/small1:latest")
    for tier, address in TIERS.items():
        gets = manifest_gets(hub, address)
        # The index by tag once, each architecture's manifest once, the single-architecture image once.
        assert sum(1 for ref in gets if ref.startswith("library/fill1:")) == 3, (tier, gets)
        assert gets["library/small1:latest"] == 1, (tier, gets)
        assert set(gets.values()) == {1}, (tier, gets)
    # The same manifests for both sites, and each blob downloaded once per site: distribution 3.1.1 answers an edge's
    # HEAD of a blob it lacks only once it has fetched and stored the whole blob, and the tier's front holds the
    # requests for that blob meanwhile (its blob lock), which distribution would stream from Docker Hub a second time
    # (registry/proxy/proxyblobstore.go's inflight).
    assert manifest_gets(hub, TIERS["tier-a"]) == manifest_gets(hub, TIERS["tier-b"])
    for address in TIERS.values():
        assert blob_gets(hub, address) and set(blob_gets(hub, address).values()) == {1}, blob_gets(hub, address)
    # Nothing from the edges themselves, and every counted pull under the tiers' one account.
    for address in EDGES.values():
        assert not [r for r in requests(hub) if r["remote"] == address], address
    # Two sites, each: fill1's index and its two manifests, small1's manifest.
    assert {name: count for name, count in hub.pulls().items() if count} == {world.HUB_USERNAME: 8}, hub.pulls()


def test_the_docker_hub_token_exists_only_on_the_tiers(vm):
    for name in (*TIERS, *EDGES):
        found = node(name).sh(f"grep -rl -- '{world.HUB_TOKEN}' /etc /var/lib/registry /run 2>/dev/null; "
                              f"for e in /proc/[0-9]*/environ; do grep -l -- '{world.HUB_TOKEN}' $e 2>/dev/null; done; true"
                              ).stdout.split()
        if name in TIERS:
            assert "/etc/registry/proxy.env" in found, (name, found)
        else:
            assert found == [], (name, found)
    # An edge holds its site's account only, root-only.
    for edge, tier in SITE.items():
        env = node(edge).sh("stat -c '%U %a' /etc/registry/proxy.env && cat /etc/registry/proxy.env").stdout
        assert env.startswith("root 600"), env
        own, other = ("site-a-edges", "site-b-edges") if tier == "tier-a" else ("site-b-edges", "site-a-edges")
        assert f'REGISTRY_PROXY_USERNAME="{own}"' in env and other not in env, env.splitlines()[-2:-1]


@pytest.fixture(name="fleet_ca", scope="module")
def fixture_fleet_ca(vm) -> str:
    """The fleet CA the collection created on the controller, copied into the VM: what the edges trust."""
    source = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "fleet-ca" / "ca.crt"
    subprocess.run(["docker", "cp", str(source), f"{world.VM_CONTAINER}:/tmp/fleet-ca.crt"], check=True)
    return "/tmp/fleet-ca.crt"


def test_a_tier_serves_the_fleet_cas_certificate_and_refuses_pulls_without_its_sites_account(vm, fleet_ca):
    names = {"tier-a": {"IP Address:10.88.1.10"},
             "tier-b": {"IP Address:10.88.2.10", "DNS:tier-b.fleet.test", "DNS:tier-b"}}  # its names: one string
    for tier, address in TIERS.items():
        served = vm.sh(f"echo | openssl s_client -connect {address}:5000 -CAfile {fleet_ca} 2>/dev/null "
                       "| openssl x509 -noout -ext subjectAltName").stdout
        assert set(served.split("\n", 1)[-1].strip().split(", ")) == names[tier], (tier, served)
        curl = f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {fleet_ca}"
        anonymous = vm.sh(f"{curl} https://{address}:5000/v2/library/small1/manifests/latest"
                          " -H 'Accept: application/vnd.oci.image.manifest.v1+json'", check=False).stdout
        assert anonymous == "401", (tier, anonymous)
        wrong = "site-b-edges:fleet-test-B-41c0aa" if tier == "tier-a" else "site-a-edges:fleet-test-A-7d3e9b"
        other_site = vm.sh(f"{curl} -u {wrong} https://{address}:5000/v2/", check=False).stdout
        assert other_site == "401", (tier, other_site)
        # Read-only for its edges too: no push.
        right = "site-a-edges:fleet-test-A-7d3e9b" if tier == "tier-a" else "site-b-edges:fleet-test-B-41c0aa"
        assert vm.sh(f"{curl} -u {right} https://{address}:5000/v2/", check=False).stdout == "200", tier
        push = vm.sh(f"{curl} -u {right} -X POST "
                     f"https://{address}:5000/v2/library/pushed/blobs/uploads/", check=False).stdout
        assert push in ("401", "405"), (tier, push)


def test_the_tier_listens_only_on_its_site_address():
    for tier, address in TIERS.items():
        listening = node(tier).sh("ss -Hltn").stdout
        ports = {line.split()[3] for line in listening.splitlines()}
        assert f"{address}:5000" in ports, (tier, ports)
        assert not [p for p in ports if p.endswith(":5000") and p != f"{address}:5000"], (tier, ports)


def test_a_stopped_tier_leaves_its_edges_serving_the_cache_and_pulling_docker_hub_then_back(vm, hub, tier_down):
    pull(vm, "edge-a1", "library/small2:latest")  # cached at edge-a1 (and tier-a)
    start = now("edge-a1")
    hub.reset()
    tier_down("tier-a")
    # At once: the cache serves, before any probe noticed.
    pull(vm, "edge-a1", "library/small2:latest")
    wait_journal("edge-a1", start, "switch done: pulling through " + world.HUB_URL)
    # A new image comes from Docker Hub directly, anonymously (the edge holds no Docker Hub token).
    pull(vm, "edge-a1", "library/small3:latest")
    assert manifest_gets(hub, EDGES["edge-a1"])["library/small3:latest"] == 1
    assert world.HUB_USERNAME not in hub.pulls()
    # The tier returns: the edge goes back to it by itself.
    node("tier-a").sh("systemctl start registry")
    assert "answers again" in wait_journal("edge-a1", start, f"switch done: pulling through https://{TIERS['tier-a']}")
    hub.reset()
    pull(vm, "edge-a1", "library/fill2:latest")
    assert manifest_gets(hub, TIERS["tier-a"]), hub.stats()["recent"][-10:]
    assert not manifest_gets(hub, EDGES["edge-a1"])


def test_an_edge_restarted_while_its_tier_is_down_serves_its_cache_and_pulls_docker_hub(vm, hub, tier_down):
    pull(vm, "edge-b1", "library/small2:latest")
    tier_down("tier-b")
    node("edge-b1").sh("systemctl restart registry")
    node("edge-b1").sh(f"for i in $(seq 240); do curl -s -o /dev/null https://{mirror('edge-b1')}/v2/ && exit 0; "
                       "sleep 0.5; done; exit 1")
    pull(vm, "edge-b1", "library/small2:latest")
    hub.reset()
    pull(vm, "edge-b1", "library/fill3:latest", "arm64")
    assert manifest_gets(hub, EDGES["edge-b1"]), hub.stats()["recent"][-10:]


def test_a_tier_restarted_while_its_edges_pull_never_breaks_a_pull(vm):
    pull(vm, "edge-a2", "library/fill4:latest")  # cached at the edge: every pull below asks the tier for the tag
    loop = (f"n=0; fails=0; end=$(( $(date +%s) + 25 )); while [ $(date +%s) -lt $end ]; do n=$((n+1)); "
            f"skopeo copy --retry-times 0 docker://{mirror('edge-a2')}/library/fill4:latest oci:/tmp/fleet-load:x "
            ">/dev/null 2>&1 || fails=$((fails+1)); done; echo \"$fails $n\" > /tmp/fleet-load.out")
    vm.sh("rm -f /tmp/fleet-load.out")
    subprocess.run(["docker", "exec", "-d", world.VM_CONTAINER, "sh", "-c", loop], check=True)
    time.sleep(4)
    node("tier-a").sh("systemctl restart registry")
    done = vm.sh("for i in $(seq 90); do [ -s /tmp/fleet-load.out ] && cat /tmp/fleet-load.out && exit 0; sleep 1; done; exit 1")
    fails, count = (int(n) for n in done.stdout.split())
    assert count > 3 and fails == 0, f"{fails} of {count} pulls failed while the tier restarted"


def test_content_expiring_on_the_tier_is_fetched_again_and_never_breaks_an_edge(vm, hub, converge, fleet_ca):
    """tier-a with a short proxy TTL: an image edge-a1 pulled expires on the tier, which fetches it from Docker Hub
    again when asked for it; edge-a1 (which has it) and edge-a2 (which never had it) pull it throughout."""
    ttl = 10
    result = converge("--limit", "tier-a", "-e", f"registry_mirror_proxy_ttl={ttl}s")
    assert result.returncode == 0, result.stdout[-3000:]
    try:
        node("tier-a").sh(f"for i in $(seq 120); do curl -s -o /dev/null --cacert /etc/registry/tier-tls/ca.crt "
                          f"https://{TIERS['tier-a']}:5000/v2/ && exit 0; sleep 0.5; done; exit 1")
        hub.reset()
        pull(vm, "edge-a1", "library/fill5:latest")
        assert manifest_gets(hub, TIERS["tier-a"])["library/fill5:latest"] == 1
        # Ask the tier itself (as an edge would) until it has fetched the index again: its copy expired.
        ask = (f"curl -sf -o /dev/null --cacert {fleet_ca} -u site-a-edges:fleet-test-A-7d3e9b "
               "-H 'Accept: application/vnd.oci.image.index.v1+json' "
               f"https://{TIERS['tier-a']}:5000/v2/library/fill5/manifests/latest")
        deadline = time.monotonic() + ttl + 60
        while time.monotonic() < deadline and manifest_gets(hub, TIERS["tier-a"])["library/fill5:latest"] == 1:
            time.sleep(3)
            assert vm.sh(ask, check=False).returncode == 0
            pull(vm, "edge-a1", "library/fill5:latest")
        assert manifest_gets(hub, TIERS["tier-a"])["library/fill5:latest"] == 2, "the tier's copy never expired"
        pull(vm, "edge-a2", "library/fill5:latest")
    finally:
        result = converge("--limit", "tier-a")
        assert result.returncode == 0, result.stdout[-3000:]


def test_check_and_diff_at_vvv_change_nothing_and_show_no_secret(converge):
    result = converge("--check", "--diff", "-vvv", "--limit", "tier-a,edge-a1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for secret in (world.HUB_TOKEN, "fleet-test-A-7d3e9b", "fleet-test-B-41c0aa"):
        assert secret not in output
    recaps = [line for line in output.splitlines() if " : ok=" in line]
    assert len(recaps) == 2 and all(" changed=0 " in line for line in recaps), recaps
    # The fleet CA's key on the controller: its owner only.
    key = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "fleet-ca" / "ca.key"
    assert key.stat().st_mode & 0o777 == 0o600


def status(*args: str) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook actuated.registry.status` against the fleet (the scenario's inventory), at -vvv."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    env = {**os.environ, "ANSIBLE_CONFIG": str(ephemeral / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(["ansible-playbook", "-i", str(ephemeral / "inventory"), "actuated.registry.status", "-vvv",
                           *args], capture_output=True, text=True, env=env, timeout=600, check=False)


def test_the_fleet_status_in_one_command_names_the_host_that_needs_attention(tier_down):
    healthy = status()
    output = healthy.stdout + healthy.stderr
    assert healthy.returncode == 0, output[-3000:]
    # The table is the debug task's message: one quoted line each.
    rows = [found.group(1).split() for found in re.finditer(r'^\s*"((?:tier|edge)-[ab]\d?\s+docker-hub\s[^"]*)",?$',
                                                            output, re.MULTILINE)]
    assert sorted(row[0] for row in rows) == sorted([*TIERS, *EDGES]), output[-3000:]
    assert all(row[3] == "pull-through" for row in rows), rows
    assert "5 hosts, none needs attention" in output
    tier_down("tier-b")
    failing = status("-e", "status_format=json")
    output = failing.stdout + failing.stderr
    assert failing.returncode != 0
    assert re.search(r"1 host\(s\) need attention: tier-b \(the registry unit is not running", output), output[-3000:]
    for secret in (world.HUB_TOKEN, "fleet-test-A-7d3e9b", "fleet-test-B-41c0aa"):
        assert secret not in output


def test_a_tier_with_accounts_keeps_listed_images_warm_for_its_edges(vm, hub, converge):
    """registry_mirror_prefetch on tier-b, whose front asks the edges' accounts (registry_mirror_tier_users): the
    prefetch pulls through the tier's registry on its root-only socket, which asks no account behind the front. A
    changed (never cached) tag costs one counted pull per manifest, the next round none, and the site's edge then pulls
    it warm. Last in this file: tier-b keeps its prefetch until the scenario's destroy."""
    tier = node("tier-b")
    prefetch = {"registry_mirror_prefetch": [{"repository": "fill6", "platforms": ["linux/amd64", "linux/arm64"]}]}
    # Counted from before the converge: the timer's first round may come at any moment after it (OnBootSec is long
    # past in a container), before or while this test starts one.
    hub.reset()
    since = now("tier-b")
    time.sleep(1.1)  # journalctl --since counts whole seconds
    result = converge("--limit", "tier-b", "-e", json.dumps(prefetch))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "htpasswd" not in tier.sh("cat /etc/registry/config.yml").stdout, "behind the front the front asks accounts"
    tier.sh("systemctl start registry-prefetch.service")
    lines = tier.sh(f"journalctl --no-pager -o cat -u registry-prefetch --since '{since}'").stdout
    gets = manifest_gets(hub, TIERS["tier-b"])
    # fill6's index and its two architectures' manifests, once, whichever round warmed them.
    assert sum(1 for ref in gets if ref.startswith("library/fill6:")) == 3 and set(gets.values()) == {1}, (gets, lines)
    assert "warmed library/fill6:latest" in lines, lines
    assert world.HUB_TOKEN not in lines and "fleet-test-B-41c0aa" not in lines
    hub.reset()
    since = now("tier-b")
    time.sleep(1.1)
    tier.sh("systemctl start registry-prefetch.service")
    lines = tier.sh(f"journalctl --no-pager -o cat -u registry-prefetch --since '{since}'").stdout
    assert not manifest_gets(hub, TIERS["tier-b"]) and "warmed" not in lines, lines
    # The site's edge pulls it warm: its tier asks Docker Hub for nothing.
    pull(vm, "edge-b1", "library/fill6:latest", "arm64")
    assert not manifest_gets(hub, TIERS["tier-b"]) and not blob_gets(hub, TIERS["tier-b"]), requests(hub)[-20:]
