# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Non-default paths: `auto` on a cloud-hypervisor bridge, host-side download, anonymous mode, upgrade/downgrade,
and the bad input that needs a host (each case fails before the first change, naming the variable and the problem,
and leaves the host's fingerprint as it was: files, directories, accounts, cache, the running service). The bad input
that needs no host is in tests/unit (make unit); the rollback of a run that breaks the mirror in test_variants_rollback.py."""
from __future__ import annotations

import concurrent.futures
import json

import pytest
from conftest import ADDRESS, DEFAULT_VERSION, MIRROR, recap, registry_pids, world
from hostprint import fingerprint, invocation


def test_auto_picked_the_cloud_hypervisor_bridge(host):
    assert ADDRESS == "192.168.129.1"
    # The caching front listens there; distribution on its unix socket.
    assert f"listen {ADDRESS}:5000 ssl reuseport;" in host.file("/etc/registry/front.conf").content_string
    assert 'addr: "/run/registry/docker-hub.sock"' in host.file("/etc/registry/config.yml").content_string
    # One line per socket: the front listens with reuseport, a socket per nginx worker.
    listeners = set(host.check_output("ss -Hltn | awk '{print $4}' | grep -v '^127.0.0.11:'").split())
    assert sorted(listeners) == sorted([f"{ADDRESS}:5000", "127.0.0.1:5002"])  # the supervisor's: loopback only


def test_without_further_upstreams_the_unit_runs_one_mirror_as_before(host):
    exec_start = host.check_output("systemctl show -p ExecStart --value registry")
    assert exec_start.count(".json") == 1 and "/etc/registry/supervisor.json" in exec_start
    assert not host.file("/etc/registry/upstreams").exists
    assert "name" not in json.loads(host.file("/etc/registry/supervisor.json").content_string)
    assert list(registry_pids(host)) == ["/etc/registry/config.yml"]


def test_an_upstream_added_then_removed_leaves_one_mirror_and_keeps_its_cache(host, vm, ghcr, converge):
    upstream = {"name": "ghcr", "url": world.GHCR_URL, "registry": "ghcr.io", "port": 5010}
    added = converge("-e", json.dumps({"registry_mirror_upstreams": [upstream]}))
    assert added.returncode == 0, added.stdout[-3000:]
    ghcr_mirror = f"{ADDRESS}:5010"
    ghcr.reset()
    pulled = vm.pull(f"{ghcr_mirror}/library/small1:latest", "amd64", "/tmp/added-ghcr")
    assert pulled.returncode == 0, pulled.stderr
    assert ghcr.pulls().get("anonymous", 0) == 1  # no credentials: anonymous, as configured
    removed = converge()
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not host.file("/etc/registry/upstreams").exists
    assert host.check_output("systemctl show -p ExecStart --value registry").count(".json") == 1
    assert vm.sh(f"curl -sS --connect-timeout 3 https://{ghcr_mirror}/v2/", check=False).returncode == 7  # refused
    assert host.file("/var/lib/registry-ghcr/docker/registry/v2/repositories/library/small1").is_directory  # cache kept
    host.check_output("rm -rf /var/lib/registry-ghcr")  # the bad-input fingerprint includes /var/lib


def test_host_side_download_kept_the_verified_tarball_on_the_host(host):
    arch = host.check_output("dpkg --print-architecture")
    tarball = host.file(f"/usr/local/lib/registry-mirror/{DEFAULT_VERSION}-{arch}/registry_{DEFAULT_VERSION}_linux_{arch}.tar.gz")
    assert tarball.exists


def test_anonymous_mirror_pulls_as_anonymous(host, vm, hub):
    assert not host.file("/etc/registry/proxy.env").exists
    hub.reset()
    pulled = vm.pull(f"{MIRROR}/library/alpine:latest", "arm64", "/tmp/anon-alpine")
    assert pulled.returncode == 0, pulled.stderr
    pulls = hub.pulls()
    assert pulls.get("anonymous", 0) >= 1 and pulls.get(world.HUB_USERNAME, 0) == 0, pulls


def test_upstream_refusal_is_reported_in_the_mirrors_errors(host, vm, hub):
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    hub.configure(anonymous=False)
    try:
        host.check_output("systemctl restart registry")
        vm.sh(f"for i in $(seq 150); do curl -sf -o /dev/null https://{MIRROR}/v2/ && exit 0; sleep 0.2; done; exit 1")
        pulled = vm.pull(f"{MIRROR}/library/small2:latest", "amd64", "/tmp/refused")
    finally:
        hub.configure(anonymous=True)
        host.check_output("systemctl restart registry")
        vm.sh(f"for i in $(seq 150); do curl -sf -o /dev/null https://{MIRROR}/v2/ && exit 0; sleep 0.2; done; exit 1")
    assert pulled.returncode != 0
    journal = host.check_output(f"journalctl --no-pager -o cat -u registry --since '{since}'")
    assert "refuses anonymous pulls (HTTP 401)" in journal, journal[-2000:]


def cached_pull_costs_no_upstream_pull(vm, hub) -> bool:
    """alpine (cached by the anonymous test) pulls from the cache: Docker Hub counts no manifest GET for it."""
    hub.reset()
    pulled = vm.pull(f"{MIRROR}/library/alpine:latest", "arm64", "/tmp/kept-alpine")
    assert pulled.returncode == 0, pulled.stderr
    return sum(hub.pulls().values()) == 0


def switch_version(host, converge, *args: str) -> str:
    """Converge with ARGS; the registry restarted exactly once and serves; returns the version it runs."""
    before = invocation(host)
    result = converge(*args)
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count("RUNNING HANDLER [actuated.registry.registry_mirror : Restart registry]") == 1
    assert invocation(host) != before
    assert host.service("registry").is_running
    return host.check_output("/usr/local/bin/registry --version").split()[-1].lstrip("v").split("+")[0]


def test_downgrade_to_2_8_then_upgrade_to_the_default_keep_the_cache_and_restart_once_each(host, vm, hub, converge):
    assert cached_pull_costs_no_upstream_pull(vm, hub)
    assert switch_version(host, converge, "-e", f"registry_mirror_version={world.REGISTRY_VERSION}") == world.REGISTRY_VERSION
    assert "ttl:" not in host.file("/etc/registry/config.yml").content_string  # 2.8 has no proxy.ttl
    assert cached_pull_costs_no_upstream_pull(vm, hub)
    assert switch_version(host, converge) == DEFAULT_VERSION
    assert cached_pull_costs_no_upstream_pull(vm, hub)
    again = converge()
    assert recap(again.stdout)["changed"] == 0


SECRET = "dckr_pat_V4R1ANTS3CRET"
# case: (extra variables, what the message must name: the variable or the value, the problem). Each runs the converge
# playbook against the working mirror. The first group needs the host; the second is the list of values that
# need no host (tests/unit proves those without a target), run here once against a real mirror.
BAD_INPUT = {
    # --- the host: accounts and directories (made by bad_input_runs before the first fingerprint)
    "storage dir of another account": (["registry_mirror_storage_dir=/srv/foreign"], "registry_mirror_storage_dir",
                                       "belongs to nobody:nogroup"),
    "config dir of another account": (["registry_mirror_config_dir=/srv/foreign-etc"], "registry_mirror_config_dir",
                                      "not to root:registry"),
    "storage dir is a symbolic link": (["registry_mirror_storage_dir=/srv/link-to-etc"], "registry_mirror_storage_dir",
                                       "a symbolic link"),
    "storage dir through a link to /": (["registry_mirror_storage_dir=/srv/rootlink/etc"], "registry_mirror_storage_dir",
                                        "resolves to /etc"),
    "storage dir under a file": (["registry_mirror_storage_dir=/srv/afile/registry"], "registry_mirror_storage_dir",
                                 "/srv/afile is a regular"),
    "user the role did not create": (["registry_mirror_user=nobody"], "registry_mirror_user", "did not create"),
    "user with uid 0": (["registry_mirror_user=toor"], "registry_mirror_user", "uid 0"),
    "group with gid 0": (["registry_mirror_group=wheel0"], "registry_mirror_group", "gid 0"),
    "group other than the user's": (["registry_mirror_group=nogroup"], "registry_mirror_group", "primary group"),
    "group the role did not create": (["registry_mirror_user=newsvc", "registry_mirror_group=users"], "registry_mirror_group",
                                      "did not create"),
    "bind address the host lacks": (["registry_mirror_bind_address=192.168.128.1"], "registry_mirror_bind_address",
                                    "is not an address of this host"),
    "certificate missing": (["registry_mirror_tls_certificate=/nonexistent/server.crt"], "registry_mirror_tls_certificate",
                            "/nonexistent/server.crt"),
    "key missing": (["registry_mirror_tls_key=/nonexistent/server.key"], "registry_mirror_tls_key", "/nonexistent/server.key"),
    "key of another certificate": (["registry_mirror_tls_key=/root/other.key"], "/root/other.key", "does not"),
    "version that does not exist": (["registry_mirror_version=9.9.7"], "9.9.7", "HTTP Error 404"),
    "tampered tarball": (["registry_mirror_version=9.9.8"], "9.9.8", "does not match"),
    "archive without the binary": (["registry_mirror_version=9.9.9"], "9.9.9", "has no 'registry'"),
    # --- no host needed: the twelve, and the earlier input cases
    "storage dir is /": (["registry_mirror_storage_dir=/"], "registry_mirror_storage_dir", "the root directory"),
    "storage dir is /etc": (["registry_mirror_storage_dir=/etc"], "registry_mirror_storage_dir", "a system directory"),
    "config dir is /var/lib": (["registry_mirror_config_dir=/var/lib"], "registry_mirror_config_dir", "a system directory"),
    "storage dir is /home": (["registry_mirror_storage_dir=/home"], "registry_mirror_storage_dir", "a system directory"),
    "user root": (["registry_mirror_user=root"], "registry_mirror_user", "is root"),
    "group root": (["registry_mirror_group=root"], "registry_mirror_group", "is root"),
    "relative storage dir": (["registry_mirror_storage_dir=var/lib/registry"], "registry_mirror_storage_dir", "a relative path"),
    "release over ftp": (["registry_mirror_release_base_url=ftp://releases.actuated.test/d"], "registry_mirror_release_base_url",
                         "the scheme ftp://"),
    "upstream port 99999": (["registry_mirror_upstream_url=https://hub.actuated.test:99999"], "registry_mirror_upstream_url",
                            "between 1 and 65535"),
    "misspelt variable": (["registry_mirror_bind_adress=192.168.129.1"], "registry_mirror_bind_adress",
                          "is not a variable of this role; did you mean registry_mirror_bind_address?"),
    "username without token": (["registry_mirror_dockerhub_username=someone"], "registry_mirror_dockerhub_token",
                               "is empty while registry_mirror_dockerhub_username is set"),
    "token with a newline": ([json.dumps({"registry_mirror_dockerhub_username": "someone",
                                          "registry_mirror_dockerhub_token": SECRET + "\nX=1"})],
                             "registry_mirror_dockerhub_token", "contains a newline"),
    "token without username": ([f"registry_mirror_dockerhub_token={SECRET}"], "registry_mirror_dockerhub_username",
                               "is empty while registry_mirror_dockerhub_token is set"),
    "invalid bind address": (["registry_mirror_bind_address=192.168.129.300"], "registry_mirror_bind_address", "not an IPv4 address"),
    "bind on every interface": (["registry_mirror_bind_address=0.0.0.0"], "registry_mirror_bind_address", "would expose the mirror"),
    "port out of range": (["registry_mirror_port=70000"], "registry_mirror_port", "between 1024 and 65535"),
    "port not a number": (["registry_mirror_port=http"], "registry_mirror_port", "unable to convert to int"),
    "version with a leading v": (["registry_mirror_version=v2.8.2"], "registry_mirror_version", "leading v"),
    "bad checksum format": (['{"registry_mirror_checksums": {"amd64": "xyz"}}'], "registry_mirror_checksums", "not a SHA-256 digest"),
    "upstream not https": (["registry_mirror_upstream_url=http://hub.actuated.test"], "registry_mirror_upstream_url",
                           "registry_mirror_upstream_allow_http"),
    "upstream with a path": (["registry_mirror_upstream_url=https://hub.actuated.test/v2/"], "registry_mirror_upstream_url", "no path"),
    "malformed ttl": (["registry_mirror_proxy_ttl=7 days"], "registry_mirror_proxy_ttl", "not a Go duration"),
    "unknown log level": (["registry_mirror_log_level=verbose"], "registry_mirror_log_level", "one of"),
    "boolean that is not one": (["registry_mirror_troubleshooting=perhaps"], "registry_mirror_troubleshooting", "bool"),
    "metrics on the mirror's port": (['{"registry_mirror_metrics_enabled": true, "registry_mirror_metrics_port": 5000}'],
                                     "registry_mirror_metrics_port", "a port of its own"),
    "upstream storage owned by another user": (
        [json.dumps({"registry_mirror_upstreams": [{"name": "ghcr", "url": "https://ghcr.io", "port": 5010,
                                                    "storage_dir": "/srv/foreign"}]})],
        "registry_mirror_upstreams[ghcr].storage_dir", "belongs to nobody:nogroup"),
    "upstream on the Docker Hub mirror's port": (
        [json.dumps({"registry_mirror_upstreams": [{"name": "ghcr", "url": "https://ghcr.io", "port": 5000}]})],
        "registry_mirror_upstreams[ghcr].port", "registry_mirror_port"),
    "upstream token without user": (
        [json.dumps({"registry_mirror_upstreams": [{"name": "quay", "url": "https://quay.io", "port": 5020,
                                                    "password": SECRET}]})],
        "registry_mirror_upstreams[quay]", "username"),
}
# What bad_input_runs makes on the host before the first fingerprint, and removes after the last.
HOST_SETUP = """
set -e
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out /root/other.key 2>/dev/null
install -d -o nobody -g nogroup -m 0750 /srv/foreign
install -d -o root -g root -m 0755 /srv/foreign-etc
ln -sfn /etc /srv/link-to-etc
ln -sfn / /srv/rootlink
: >/srv/afile
getent passwd toor >/dev/null ||
    useradd --non-unique --uid 0 --gid 0 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin toor
getent group wheel0 >/dev/null || groupadd --non-unique --gid 0 wheel0
"""
HOST_TEARDOWN = ("rm -rf /root/other.key /srv/foreign /srv/foreign-etc /srv/link-to-etc /srv/rootlink /srv/afile; "
                 "userdel --force toor; groupdel --force wheel0")


@pytest.fixture(scope="module")
def bad_input_runs(host, converge):
    """Every BAD_INPUT case run once, three at a time (none may change anything, so they cannot disturb each other),
    between two fingerprints of the host (hostprint.py) and the unit's invocation id."""
    host.check_output(HOST_SETUP)

    def run(case: str) -> str:
        extra, _name, _problem = BAD_INPUT[case]
        # Release cases go through the controller-side download, which fails before the host is touched.
        local = ["-e", "registry_mirror_download_on_host=false", "-e", f"registry_mirror_release_base_url={world.RELEASES_LOCAL}"]
        result = converge(*local, *(arg for value in extra for arg in ("-e", value)))
        return f"rc={result.returncode}\n{result.stdout}{result.stderr}"

    try:
        before = fingerprint(host), invocation(host)
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            outputs = dict(zip(sorted(BAD_INPUT), pool.map(run, sorted(BAD_INPUT))))
        after = fingerprint(host), invocation(host)
    finally:
        host.run(HOST_TEARDOWN)
    return outputs, before, after


def test_every_case_was_run_once_and_each_run_was_refused_naming_its_variable(bad_input_runs):
    outputs, _before, _after = bad_input_runs
    assert sorted(outputs) == sorted(BAD_INPUT)  # one run per case, none skipped
    refused = [case for case, output in outputs.items() if not output.startswith("rc=0\n")]
    named = [case for case in refused if BAD_INPUT[case][1] in " ".join(outputs[case].split())]
    assert len(refused) == len(BAD_INPUT), sorted(set(BAD_INPUT) - set(refused))
    assert len(named) == len(BAD_INPUT), sorted(set(BAD_INPUT) - set(named))


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_early_naming_the_problem_and_changes_nothing(case, bad_input_runs):
    outputs, before, after = bad_input_runs
    output = outputs[case]
    _extra, name, problem = BAD_INPUT[case]
    assert not output.startswith("rc=0\n"), output[-2000:]
    flat = " ".join(output.split())  # messages wrap; compare without the line breaks
    assert name in flat and problem in flat, output[-3000:]
    assert SECRET not in output
    assert after[0] == before[0]  # files, directories and their parents, accounts, cache: as before every case
    assert after[1] == before[1]  # and the registry was not restarted
