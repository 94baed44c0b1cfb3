"""Non-default paths: `auto` on a cloud-hypervisor bridge, host-side download, anonymous mode, upgrade/downgrade,
and bad input (each case fails before the first change and leaves binary, config, service and cache untouched)."""
from __future__ import annotations

import concurrent.futures

import pytest
from conftest import ADDRESS, MIRROR, recap, world

STATE_FILES = "/usr/local/bin/registry /etc/registry/config.yml /etc/systemd/system/registry.service"


def test_auto_picked_the_cloud_hypervisor_bridge(host):
    assert ADDRESS == "192.168.129.1"
    assert f"addr: {ADDRESS}:5000" in host.file("/etc/registry/config.yml").content_string
    assert host.check_output("ss -Hltn | awk '{print $4}' | grep -v '^127.0.0.11:'") == f"{ADDRESS}:5000"


def test_host_side_download_kept_the_verified_tarball_on_the_host(host):
    arch = host.check_output("dpkg --print-architecture")
    tarball = host.file(f"/usr/local/lib/registry-mirror/2.8.2-{arch}/registry_2.8.2_linux_{arch}.tar.gz")
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
    assert pulled.returncode != 0
    journal = host.check_output(f"journalctl --no-pager -o cat -u registry --since '{since}'")
    assert "refuses anonymous pulls (HTTP 401)" in journal, journal[-2000:]


def invocation(host) -> str:
    """The registry unit's current invocation id: changes exactly when it (re)starts."""
    return host.check_output("systemctl show -p InvocationID --value registry")


def test_upgrade_then_downgrade_restart_once_each(host, converge):
    for version in ("2.8.3", "2.8.2"):
        before = invocation(host)
        result = converge("-e", f"registry_mirror_version={version}")
        assert result.returncode == 0, result.stdout[-3000:]
        assert result.stdout.count("RUNNING HANDLER [actuated.registry.registry_mirror : Restart registry]") == 1
        assert invocation(host) != before
        assert host.check_output("/usr/local/bin/registry --version").split()[-1].startswith(version + "+")
        assert host.service("registry").is_running
    again = converge()
    assert recap(again.stdout)["changed"] == 0


BAD_INPUT = {
    "invalid bind address": (["registry_mirror_bind_address=192.168.129.300"], "registry_mirror_bind_address"),
    "bind address the host lacks": (["registry_mirror_bind_address=192.168.128.1"], "is not an address of this host"),
    "bind on every interface": (["registry_mirror_bind_address=0.0.0.0"], "would expose the mirror"),
    "port out of range": (["registry_mirror_port=70000"], "registry_mirror_port"),
    "port not a number": (["registry_mirror_port=http"], "registry_mirror_port"),
    "version that does not exist": (["registry_mirror_version=9.9.7"], "HTTP Error 404"),
    "version with a leading v": (["registry_mirror_version=v2.8.2"], "registry_mirror_version"),
    "tampered tarball": (["registry_mirror_version=9.9.8"], "does not match"),
    "archive without the binary": (["registry_mirror_version=9.9.9"], "has no 'registry'"),
    "bad checksum format": (['{"registry_mirror_checksums": {"amd64": "xyz"}}'], "registry_mirror_checksums"),
    "username without token": (["registry_mirror_dockerhub_username=someone"], "must be set together"),
    "token without username": (["registry_mirror_dockerhub_token=dckr_pat_x"], "must be set together"),
    "certificate missing": (["registry_mirror_tls_certificate=/nonexistent/server.crt"], "/nonexistent/server.crt"),
    "key missing": (["registry_mirror_tls_key=/nonexistent/server.key"], "/nonexistent/server.key"),
    "key of another certificate": (["registry_mirror_tls_key=/root/other.key"], "does not"),
    "upstream not https": (["registry_mirror_upstream_url=http://hub.actuated.test"], "registry_mirror_upstream_allow_http"),
    "upstream with a path": (["registry_mirror_upstream_url=https://hub.actuated.test/v2/"], "no path"),
    "malformed ttl": (["registry_mirror_proxy_ttl=7 days"], "registry_mirror_proxy_ttl"),
    "unknown log level": (["registry_mirror_log_level=verbose"], "registry_mirror_log_level"),
    "boolean that is not one": (["registry_mirror_troubleshooting=perhaps"], "registry_mirror_troubleshooting"),
    "metrics on the mirror's port": (['{"registry_mirror_metrics_enabled": true, "registry_mirror_metrics_port": 5000}'], "must be between"),
}


@pytest.fixture(scope="module")
def bad_input_runs(host, converge):
    """Every BAD_INPUT case run once, three at a time (none may change anything, so they cannot disturb each other),
    between two snapshots: checksums of the binary, config, unit and every cached blob, and the unit's invocation id."""
    host.run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out /root/other.key")

    def snapshot() -> str:
        files = host.check_output(f"sha256sum $(readlink -f /usr/local/bin/registry) {STATE_FILES} && "
                                  "find /var/lib/registry -type f | sort | xargs sha256sum")
        return files + "\n" + invocation(host)

    def run(case: str) -> str:
        extra, _expected = BAD_INPUT[case]
        # Release cases go through the controller-side download, which fails before the host is touched.
        local = ["-e", "registry_mirror_download_on_host=false", "-e", f"registry_mirror_release_base_url={world.RELEASES_LOCAL}"]
        result = converge(*local, *(arg for value in extra for arg in ("-e", value)))
        return f"rc={result.returncode}\n{result.stdout}{result.stderr}"

    before = snapshot()
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        outputs = dict(zip(sorted(BAD_INPUT), pool.map(run, sorted(BAD_INPUT))))
    return outputs, before, snapshot()


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_early_naming_the_problem_and_changes_nothing(case, bad_input_runs):
    outputs, before, after = bad_input_runs
    output = outputs[case]
    assert not output.startswith("rc=0\n"), output[-2000:]
    assert BAD_INPUT[case][1] in output, output[-3000:]
    assert after == before  # the binary, config, unit, cache and running service are those of before every case
