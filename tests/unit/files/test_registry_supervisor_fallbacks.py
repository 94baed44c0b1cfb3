# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's fallbacks (a fleet's tiers): an edge mirror pulls through its site's tier mirror
(the setting upstream, HTTPS with Basic authentication), another tier, or Docker Hub anonymously, one at a time, the
first that answers, and back through a preferred one as soon as it answers again; read-only only while none does.
Run as the program it is with fake registries and upstreams (registry_fakes) on the FAST timings, except the checks of
settings, metrics and group-mode environments, which need no process (the TLS trust of the supervisor's own requests:
test_registry_upstream.py)."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import (
    PROG,
    READ_ONLY_SWITCH,
    STARTUP,
    FakeDisk,
    FakeUpstream,
    GroupRun,
    Mirror,
    SupervisorOnDisk,
    SupervisorRun,
    basic,
    certificates,
    free_port,
    load_supervisor,
    read_only,
    wait_for,
)

# Distinctive values, to be found nowhere in the output, each only where it belongs.
TIER_USER, TIER_SECRET = "tier-a-user-q7", "tier-a-secret-Vb5Np2"  # the upstream's: REGISTRY_PROXY_*
TIERB_USER, TIERB_SECRET = "tier-b-user-k3", "tier-b-secret-Lm8Rw4"
TIERB = "REGISTRY_MIRROR_TIERB"
OTHER_USER, OTHER_SECRET = "other-user-z9", "other-secret-Yt6Qe1"  # a prefix no fallback here names
ENV = {f"{TIERB}_USERNAME": TIERB_USER, f"{TIERB}_PASSWORD": TIERB_SECRET,
       "REGISTRY_MIRROR_OTHER_USERNAME": OTHER_USER, "REGISTRY_MIRROR_OTHER_PASSWORD": OTHER_SECRET}
SECRETS = (TIER_SECRET, TIERB_SECRET, TIERB_USER, OTHER_SECRET, OTHER_USER)
BASIC = 'Basic realm="tier"'


class Run(SupervisorRun):
    """A SupervisorRun whose environment has ENV too (the unit's proxy.env with the fallbacks' credentials)."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream, env: dict[str, str], **options: Any) -> None:
        self.extra = env
        super().__init__(tmp_path, upstream, **options)

    def command(self, env: dict[str, str]) -> list[str]:
        env.update(self.extra)
        return super().command(env)


class RunOnDisk(Run, SupervisorOnDisk):
    """A Run with a FakeDisk (disk=...)."""


def tier_mirror(user: str, password: str) -> Iterator[FakeUpstream]:
    """A tier mirror: a distribution behind htpasswd (Basic) that knows the edge's account USER."""
    upstream = FakeUpstream(challenge=BASIC)
    upstream.accept(user, password)
    yield upstream
    upstream.close()


@pytest.fixture(name="tier")
def fixture_tier() -> Iterator[FakeUpstream]:
    """The site's tier mirror, the upstream."""
    yield from tier_mirror(TIER_USER, TIER_SECRET)


@pytest.fixture(name="tierb")
def fixture_tierb() -> Iterator[FakeUpstream]:
    """Another tier, the first fallback, with an account of its own."""
    yield from tier_mirror(TIERB_USER, TIERB_SECRET)


@pytest.fixture(name="hub")
def fixture_hub() -> Iterator[FakeUpstream]:
    """Docker Hub, the last fallback, pulled from anonymously (its token service on its own host)."""
    upstream = FakeUpstream()
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    yield upstream
    upstream.close()


def supervise(runs: list[SupervisorRun], tmp_path: Path, tier: FakeUpstream, fallbacks: list[FakeUpstream],
              disk: FakeDisk | None = None, **settings: Any) -> Run:
    """An edge mirror pulling through TIER with the tier account, then through FALLBACKS in order: the second tier
    with its prefix, any other anonymously."""
    entries = [{"url": f.url, "credentials": TIERB if f.accounts == {basic(TIERB_USER, TIERB_SECRET)} else ""}
               for f in fallbacks]
    options: dict[str, Any] = {"credentials": (TIER_USER, TIER_SECRET), "fallbacks": entries, **settings}
    run = RunOnDisk(tmp_path, tier, ENV, disk=disk, **options) if disk else Run(tmp_path, tier, ENV, **options)
    runs.append(run)
    return run


def source(start: dict[str, Any]) -> str:
    """The upstream a registry was started to pull through ("" read-only; the config's, REMOTEURL unset: "config")."""
    return str(start["env"].get("REGISTRY_PROXY_REMOTEURL", "config"))


def account(start: dict[str, Any]) -> tuple[str, str] | None:
    """The upstream credentials a registry was started with."""
    env = start["env"]
    if "REGISTRY_PROXY_USERNAME" not in env and "REGISTRY_PROXY_PASSWORD" not in env:
        return None
    return env.get("REGISTRY_PROXY_USERNAME", ""), env.get("REGISTRY_PROXY_PASSWORD", "")


def check_registry(run: Mirror, start: dict[str, Any], upstream: FakeUpstream | None, serves: bool = True) -> None:
    """START pulls through UPSTREAM (None: read-only) with that upstream's credentials only, and (if it SERVES: one
    replaced while it starts may be gone before it can tell) its environment names no fallback's variables."""
    if upstream is None:
        assert read_only(start), start
    elif upstream.accounts == {basic(TIER_USER, TIER_SECRET)}:  # the upstream: the config's URL, the unit's account
        assert source(start) == "config" and account(start) == (TIER_USER, TIER_SECRET), start
    elif upstream.accounts == {basic(TIERB_USER, TIERB_SECRET)}:
        assert source(start) == upstream.url and account(start) == (TIERB_USER, TIERB_SECRET), start
    else:
        assert source(start) == upstream.url and account(start) is None, start
    if not serves:
        return
    names = wait_for("the registry's environment", lambda: run.first("environ", start["pid"]), STARTUP)["names"]
    assert not [name for name in names if name.startswith("REGISTRY_MIRROR_")], names


def no_secret(run: Run) -> None:
    """Nothing the supervisor wrote holds a password, or a fallback's user name."""
    journal = run.journal()
    for secret in SECRETS:
        assert secret not in journal, (secret, journal)


def auth_seen(*upstreams: FakeUpstream) -> dict[str, set[str | None]]:
    """The Authorization headers each upstream got (from the supervisor and the registries), by its URL."""
    return {upstream.url: {request["auth"] for request in upstream.requests} for upstream in upstreams}


@pytest.mark.parametrize("offline_fallback", [True, False])
def test_tier_down_at_start_pulls_from_docker_hub_anonymously_then_back_through_the_tier_with_its_account(
        tmp_path: Path, tier: FakeUpstream, hub: FakeUpstream, runs: list[SupervisorRun],
        offline_fallback: bool) -> None:
    tier.set("down")
    storage = tmp_path / "storage"
    storage.mkdir()
    port = free_port()
    run = supervise(runs, tmp_path, tier, [hub], offline_fallback=offline_fallback, storage=str(storage), port=port)
    second = run.serving(count=2)
    first = run.starts()[0]
    check_registry(run, first, tier, serves=False)  # at once, through the tier, while the start probe runs
    check_registry(run, second, hub)
    assert run.said(f"{PROG}upstream {tier.url} unreachable (") is not None
    assert run.said(f"): pulling through {hub.url}") is not None
    wait_for("Docker Hub's token check", lambda: run.said("upstream token service accepts anonymous pulls"), STARTUP)
    assert metric(port, "registry_mirror_upstream_index") == 1
    assert metric(port, "registry_mirror_read_only") == 0
    through_hub_since = metric(port, "registry_mirror_mode_since_timestamp_seconds")
    tier.set("up")
    third = run.serving(count=3)
    check_registry(run, third, tier)
    assert run.said(f"{PROG}upstream {tier.url} answers again (401): pulling through it instead of {hub.url}")
    wait_for("the tier's account check", lambda: run.said(
        f"{PROG}upstream {tier.url} accepts the account in registry_mirror_tiers[0].username/password (Basic "
        "authentication)"), STARTUP)  # an edge's upstream is its first tier: the role's variable that holds it
    assert metric(port, "registry_mirror_upstream_index") == 0
    assert metric(port, "registry_mirror_mode_since_timestamp_seconds") > through_hub_since  # another upstream
    time.sleep(1)
    assert len(run.starts()) == 3, run.starts()  # it stays
    assert auth_seen(hub)[hub.url] == {None}
    assert auth_seen(tier)[tier.url] <= {None, basic(TIER_USER, TIER_SECRET)}
    no_secret(run)


def metric(port: int, name: str) -> float:
    """The value of the supervisor's metric NAME (it listens on 127.0.0.1:PORT)."""
    def text() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                body: str = response.read().decode()
                return body
        except OSError:
            return None
    return next(float(line.split()[1]) for line in wait_for("the metrics", text, STARTUP).splitlines()
                if line.startswith(f"{name} "))


def test_all_down_serves_read_only_then_the_first_that_answers_and_then_the_preferred_one(
        tmp_path: Path, tier: FakeUpstream, hub: FakeUpstream, runs: list[SupervisorRun]) -> None:
    tier.set("down")
    hub.set("down")
    run = supervise(runs, tmp_path, tier, [hub])
    check_registry(run, run.serving(count=2), None)
    assert run.said(f"{PROG}upstream {tier.url} unreachable (") is not None
    line = next(line for _t, line in run.lines if READ_ONLY_SWITCH in line)
    assert line.startswith(f"{PROG}upstream {tier.url} unreachable (") and f", {hub.url} unreachable (" in line, line
    hub.set("up")
    check_registry(run, run.serving(count=3), hub)
    assert run.said(f"{PROG}upstream {hub.url} answers again (401): back to pull-through mode") is not None
    tier.set("up")
    check_registry(run, run.serving(count=4), tier)
    assert run.said(f"{PROG}upstream {tier.url} answers again (401): pulling through it instead of {hub.url}")
    no_secret(run)


def test_a_confirmed_failure_moves_on_in_order_and_a_preferred_upstream_is_taken_back_at_once(
        tmp_path: Path, tier: FakeUpstream, tierb: FakeUpstream, hub: FakeUpstream,
        runs: list[SupervisorRun]) -> None:
    run = supervise(runs, tmp_path, tier, [tierb, hub])
    check_registry(run, run.serving(), tier)
    wait_for("the tier's account check", lambda: run.said(f"upstream {tier.url} accepts the account"), STARTUP)
    tier.set("down")  # the next in order: the second tier, with its own account
    check_registry(run, run.serving(count=2), tierb)
    assert run.said(f"{PROG}upstream {tier.url} unreachable (") is not None
    assert run.said(f"): pulling through {tierb.url}") is not None
    wait_for("the second tier's account check", lambda: run.said(
        f"{PROG}upstream {tierb.url} accepts the account in {TIERB}_USERNAME / {TIERB}_PASSWORD (Basic "
        "authentication)"), STARTUP)
    tierb.set("down")  # then Docker Hub, anonymously; the tier, still down, is passed over
    check_registry(run, run.serving(count=3), hub)
    assert run.said(f"{PROG}upstream {tierb.url} unreachable (") is not None
    tierb.set("up")  # a preferred one answers: back at once, though Docker Hub answers too
    check_registry(run, run.serving(count=4), tierb)
    assert run.said(f"{PROG}upstream {tierb.url} answers again (401): pulling through it instead of {hub.url}")
    tier.set("up")
    check_registry(run, run.serving(count=5), tier)
    assert run.said(f"{PROG}upstream {tier.url} answers again (401): pulling through it instead of {tierb.url}")
    time.sleep(1)
    assert len(run.starts()) == 5, run.starts()
    # Each upstream saw its own account only: the registries' and the supervisor's requests alike.
    assert auth_seen(tier, tierb, hub) == {tier.url: {None, basic(TIER_USER, TIER_SECRET)},
                                           tierb.url: {None, basic(TIERB_USER, TIERB_SECRET)}, hub.url: {None}}
    no_secret(run)


def test_a_registry_that_exits_while_its_upstream_is_away_is_replaced_by_one_through_the_next(
        tmp_path: Path, tier: FakeUpstream, hub: FakeUpstream, runs: list[SupervisorRun]) -> None:
    run = supervise(runs, tmp_path, tier, [hub], probe_interval=60)
    first = run.serving()
    wait_for("the tier's account check", lambda: run.said(f"upstream {tier.url} accepts the account"), STARTUP)
    tier.set("down")
    os.kill(first["pid"], signal.SIGKILL)
    check_registry(run, run.serving(count=2), hub)
    assert run.said(f"{PROG}registry exited and upstream {tier.url} is unreachable (") is not None
    assert run.said(f"): pulling through {hub.url}") is not None
    assert run.proc.poll() is None


def test_the_free_space_floor_still_forces_read_only_and_space_back_takes_the_first_that_answers(
        tmp_path: Path, tier: FakeUpstream, hub: FakeUpstream, runs: list[SupervisorRun]) -> None:
    disk = FakeDisk(tmp_path, free_mb=2000)
    tier.set("down")
    run = supervise(runs, tmp_path, tier, [hub], disk=disk, storage=str(disk.path), min_free_mb=1024)
    check_registry(run, run.serving(count=2), hub)
    disk.set(100)
    check_registry(run, run.serving(count=3), None)
    assert run.said(f"{PROG}WARNING: 100 MiB free on {disk.path}, below the floor of 1024 MiB") is not None
    disk.set(5000)
    check_registry(run, run.serving(count=4), hub)
    assert run.said(f"{PROG}5000 MiB free on {disk.path} again (floor 1024 MiB) and upstream {hub.url} answers "
                    "(401): back to pull-through mode") is not None


# What the journal says about a fallback tier's account, by what the supervisor has for it.
FALLBACK_ACCOUNT = {
    "good": f"upstream {{url}} accepts the account in {TIERB}_USERNAME / {TIERB}_PASSWORD (Basic authentication)",
    "wrong": f"ERROR: upstream {{url}} refuses the account in {TIERB}_USERNAME / {TIERB}_PASSWORD (HTTP 401 to Basic "
             "authentication): pulls of images that are not cached will fail (clients see 'manifest unknown')",
    "none": "ERROR: upstream {url} requires credentials (Basic authentication, realm 'tier') and the mirror pulls "
            "from it anonymously: pulls of images that are not cached will fail; set credentials in its fallbacks "
            "entry (a prefix REGISTRY_MIRROR_...)",
    "unset": f"ERROR: upstream {{url}} requires credentials (Basic authentication, realm 'tier') and the mirror pulls "
             f"from it anonymously: pulls of images that are not cached will fail; set {TIERB}_USERNAME / "
             f"{TIERB}_PASSWORD",
}


@pytest.mark.parametrize("credentials", list(FALLBACK_ACCOUNT))
def test_a_fallback_tier_s_basic_challenge_is_checked_with_its_own_account(
        tmp_path: Path, hub: FakeUpstream, tierb: FakeUpstream, runs: list[SupervisorRun], credentials: str) -> None:
    """Docker Hub is the upstream here, away; the tier is the fallback (distribution 3.1 answers Basic challenges)."""
    hub.set("down")
    entry = {"url": tierb.url, "credentials": "" if credentials == "none" else TIERB}
    env = {**ENV, f"{TIERB}_PASSWORD": "wrong-password-Jc2"} if credentials == "wrong" else ENV
    if credentials == "unset":
        env = {name: value for name, value in ENV.items() if name != f"{TIERB}_PASSWORD"}
    run = Run(tmp_path, hub, env, credentials=("hub-user", "hub-secret-Xa4"), fallbacks=[entry])
    runs.append(run)
    start = run.serving(count=2)
    assert source(start) == tierb.url
    assert account(start) == ((TIERB_USER, env[f"{TIERB}_PASSWORD"]) if credentials in ("good", "wrong") else None)
    message = PROG + FALLBACK_ACCOUNT[credentials].format(url=tierb.url)
    wait_for("the account check", lambda: run.said(message), STARTUP)
    if credentials == "unset":
        assert run.said(f"{PROG}{TIERB}_PASSWORD not set in the environment: pulling from {tierb.url} anonymously")
    journal = run.journal()
    for secret in (TIERB_SECRET, TIERB_USER, "wrong-password-Jc2", "hub-secret-Xa4"):
        assert secret not in journal, journal
    # The tier never saw Docker Hub's account.
    assert basic("hub-user", "hub-secret-Xa4") not in auth_seen(tierb)[tierb.url]


@pytest.mark.parametrize(("password", "expected"), [
    (TIER_SECRET, "upstream {url} accepts the account in registry_mirror_dockerhub_username/token (Basic "
                  "authentication)"),
    ("wrong-Gh7", "ERROR: upstream {url} refuses the account in registry_mirror_dockerhub_username/token (HTTP 401 "
                  "to Basic authentication)"),
    (None, "ERROR: upstream {url} requires credentials (Basic authentication, realm 'tier') and the mirror pulls from "
           "it anonymously: pulls of images that are not cached will fail; set "
           "registry_mirror_dockerhub_username/token"),
])
def test_the_upstream_s_basic_challenge_is_checked_from_3_1(
        tmp_path: Path, tier: FakeUpstream, runs: list[SupervisorRun], password: str | None, expected: str) -> None:
    run = SupervisorRun(tmp_path, tier, credentials=(TIER_USER, password) if password else None)
    runs.append(run)
    run.serving()
    wait_for("the account check", lambda: run.said(PROG + expected.format(url=tier.url)), STARTUP)
    assert "wrong-Gh7" not in run.journal() and TIER_SECRET not in run.journal()


def test_group_mode_a_further_mirror_pulls_through_its_fallback_with_that_fallback_s_account(
        tmp_path: Path, tier: FakeUpstream, tierb: FakeUpstream, hub: FakeUpstream) -> None:
    hub_mirror = Mirror(tmp_path / "hub", hub, name="docker-hub")
    tier.set("down")
    edge = Mirror(tmp_path / "tier", tier, name="tier", credentials="REGISTRY_MIRROR_TIER",
                  fallbacks=[{"url": tierb.url, "credentials": TIERB}])
    env = {**ENV, "REGISTRY_PROXY_USERNAME": "hub-user", "REGISTRY_PROXY_PASSWORD": "hub-secret-Xa4",
           "REGISTRY_MIRROR_TIER_USERNAME": TIER_USER, "REGISTRY_MIRROR_TIER_PASSWORD": TIER_SECRET}
    run = GroupRun([hub_mirror, edge], env=env)
    try:
        hub_mirror.serving()
        second = edge.serving(count=2)
        first = edge.starts()[0]
        check_registry(edge, first, tier, serves=False)
        check_registry(edge, second, tierb)
        assert run.said(f"[tier] {PROG}upstream {tier.url} unreachable (") is not None
        # The primary's registry got none of the mirrors' variables.
        names = wait_for("the environment", lambda: hub_mirror.first("environ", hub_mirror.starts()[0]["pid"]), 5)
        assert not [name for name in names["names"] if name.startswith("REGISTRY_MIRROR_")]
    finally:
        run.stop(timeout=20)
    for secret in SECRETS:
        assert secret not in run.journal()


# --- Without processes ------------------------------------------------------------------------------------------------

VALID = {"binary": "/r", "config": "/c", "upstream": "https://tier-a.example:5000", "version": "3.1.1"}


@pytest.mark.parametrize(("values", "error"), [
    ({"fallbacks": {"url": "https://h"}}, "fallbacks must be a list of objects"),
    ({"fallbacks": ["https://h"]}, r"fallbacks\[0\] must be an object with url and credentials"),
    ({"fallbacks": [{"url": "https://h", "user": "x"}]}, r"fallbacks\[0\] has an unknown key 'user'"),
    ({"fallbacks": [{"credentials": ""}]}, r"fallbacks\[0\] has no url"),
    ({"fallbacks": [{"url": "ftp://h"}]}, r"fallbacks\[0\].url must be an http or https URL with a host"),
    ({"fallbacks": [{"url": "https://"}]}, r"fallbacks\[0\].url must be an http or https URL with a host"),
    ({"fallbacks": [{"url": 5}]}, r"fallbacks\[0\].url must be an http or https URL without spaces"),
    ({"fallbacks": [{"url": "https://h /"}]}, r"fallbacks\[0\].url must be an http or https URL without spaces"),
    ({"fallbacks": [{"url": "https://u:p@h"}]}, r"fallbacks\[0\].url must carry no credentials"),
    ({"fallbacks": [{"url": "https://h/v2"}]}, r"fallbacks\[0\].url must have no path, query or fragment"),
    ({"fallbacks": [{"url": "https://h?a=b"}]}, r"fallbacks\[0\].url must have no path, query or fragment"),
    ({"fallbacks": [{"url": "https://h:99999"}]}, r"fallbacks\[0\].url is not a URL"),
    ({"fallbacks": [{"url": "https://h", "credentials": "TIER"}]},
     r"fallbacks\[0\].credentials must be \"\" \(anonymous\) or an environment variable prefix REGISTRY_MIRROR_"),
    ({"fallbacks": [{"url": "https://h", "credentials": None}]}, r"fallbacks\[0\].credentials must be"),
    ({"fallbacks": [{"url": "https://h"}, {"url": "HTTPS://H/"}]},
     r"fallbacks\[1\].url HTTPS://H is also fallbacks\[0\].url"),
    ({"fallbacks": [{"url": "https://TIER-A.example:5000/"}]}, r"fallbacks\[0\].url .* is the upstream"),
    ({"fallbacks": [{"url": f"https://h{number}"} for number in range(9)]},
     "fallbacks must have at most 8 entries, not 9"),
    ({"ca_file": "ca.pem"}, 'ca_file must be an absolute path or "", not \'ca.pem\''),
    ({"ca_file": None}, "ca_file must be an absolute path or"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file /nonexistent/ca.pem: no CA certificates loaded"),
    ({"ca_file": "EMPTY"}, "ca_file .*: no CA certificates loaded"),
])
def test_invalid_fallbacks_and_ca_file_exit_2_naming_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict[str, Any], error: str) -> None:
    module = load_supervisor()
    if values.get("ca_file") == "EMPTY":
        values = {"ca_file": str(tmp_path / "empty.pem")}
        (tmp_path / "empty.pem").write_text("not a certificate\n", encoding="utf-8")
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({**VALID, **values}), encoding="utf-8")
    with pytest.raises(module.SettingsError, match=error):
        module.Settings.load(str(path))
    assert module.main(["registry-supervisor", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}ERROR: {path}: "), lines


def test_valid_fallbacks_and_ca_file_as_the_role_writes_them(tmp_path: Path) -> None:
    module = load_supervisor()
    ca_file = certificates(tmp_path)[0]
    fallbacks = [{"url": "https://tier-b.example:5000/", "credentials": TIERB},
                 {"url": "https://registry-1.docker.io", "credentials": ""}, {"url": "http://10.0.0.7:5000"}]
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({**VALID, "fallbacks": fallbacks, "ca_file": str(ca_file)}), encoding="utf-8")
    settings = module.Settings.load(str(path))
    assert [(f.url, f.credentials) for f in settings.fallbacks] == [
        ("https://tier-b.example:5000", TIERB), ("https://registry-1.docker.io", ""), ("http://10.0.0.7:5000", "")]
    assert settings.ca_file == str(ca_file)
    for values in ({}, {"fallbacks": [], "ca_file": ""}):  # absent or empty: one upstream, the system store
        path.write_text(json.dumps({**VALID, **values}), encoding="utf-8")
        settings = module.Settings.load(str(path))
        assert (settings.fallbacks, settings.ca_file) == ((), "")
        supervisor = module.Supervisor(settings)
        assert len(supervisor.candidates) == 1
        assert "registry_mirror_upstream_index" not in supervisor.metrics.text()
