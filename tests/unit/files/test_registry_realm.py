# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Where distribution sends its upstream credentials, as registry-supervisor predicts it, and what it says at start.

3.1.x: to a bearer token realm on the upstream's host and port, or on a DNS name of the upstream's registrable domain
(never an IP address or localhost), and to Basic challenges. Before 3.1.0: to any bearer realm, never to Basic."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_fakes import FILES, FakeUpstream, SupervisorRun, wait_for

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_realm


@pytest.mark.parametrize(("upstream", "realm", "allowed"), [
    # The same host and port.
    ("https://registry.example.com", "https://registry.example.com/token", True),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/token", True),
    ("http://localhost:5000", "http://localhost:5000/token", True),
    ("https://[::1]:5000", "https://[::1]:5000/token", True),
    ("https://Registry.Example.com", "https://registry.example.COM/token", True),
    # Ports differ: only DNS names of one registrable domain still pass.
    ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token", False),
    ("http://localhost:5000", "http://localhost:5001/token", False),
    ("https://127.0.0.1", "https://127.0.0.1:443/token", False),  # compared as written, like distribution
    ("https://registry.example.com:5000", "https://registry.example.com:5001/token", True),
    # IP addresses and localhost are never a registrable domain.
    ("https://10.0.0.1", "https://10.0.0.2/token", False),
    ("https://registry.example.com", "https://10.0.0.2/token", False),
    ("https://10.0.0.1", "https://auth.example.com/token", False),
    ("https://[fd00::1]", "https://[fd00::2]/token", False),
    ("https://registry.example.com", "https://localhost/token", False),
    # Registrable domains by the public suffix list, multi-label suffixes included.
    ("https://registry-1.docker.io", "https://auth.docker.io/token", True),
    ("https://registry.example.co.uk", "https://auth.example.co.uk/token", True),
    ("https://registry.example.co.uk", "https://auth.evil.co.uk/token", False),
    ("https://registry.example.com.au", "https://auth.example.com.au/token", True),
    ("https://registry.example.com.au", "https://auth.other.com.au/token", False),
    ("https://registry.example.com", "https://auth.example.net/token", False),
    ("https://a.github.io", "https://b.github.io/token", False),  # the list's private section counts
    # No realm host, or no URL at all.
    ("https://registry.example.com", "/token", False),
    ("https://registry.example.com", "", False),
    # Hosts without a registrable domain compare equal (distribution compares the empty results of its errors).
    ("https://registry:5000", "https://auth:5001/token", True),
])
def test_realm_rule_of_distribution_3_1(upstream: str, realm: str, allowed: bool) -> None:
    assert registry_realm.realm_allowed(upstream, realm) is allowed
    assert registry_realm.sends_credentials("3.1.1", "bearer", upstream, realm) is allowed


@pytest.mark.parametrize("version", ["2.8.2", "2.8.3", "v2.8.2+ds1", "3.0.0"])
def test_before_3_1_any_bearer_realm_gets_the_credentials_and_basic_none(version: str) -> None:
    assert registry_realm.sends_credentials(version, "bearer", "http://127.0.0.1:5000", "http://127.0.0.1:5001/token")
    assert registry_realm.sends_credentials(version, "bearer", "https://registry.example.co.uk", "https://auth.evil.co.uk/t")
    assert not registry_realm.sends_credentials(version, "basic", "http://127.0.0.1:5000", "")


@pytest.mark.parametrize("version", ["3.1.0", "3.1.1", "3.2.0", "4.0.0"])
def test_from_3_1_basic_challenges_get_the_credentials(version: str) -> None:
    assert registry_realm.sends_credentials(version, "basic", "http://127.0.0.1:5000", "")
    assert not registry_realm.sends_credentials(version, "bearer", "http://127.0.0.1:5000", "http://127.0.0.1:5001/token")


# The Public Suffix List project's own test vectors (checkPublicSuffix; public domain): host -> registrable domain.
PSL_VECTORS = [
    ("COM", None), ("example.COM", "example.com"), ("WwW.example.COM", "example.com"),
    (".com", None), (".example", None), (".example.com", None), (".example.example", None),
    ("example", None), ("example.example", "example.example"), ("b.example.example", "example.example"),
    ("a.b.example.example", "example.example"),
    ("biz", None), ("domain.biz", "domain.biz"), ("b.domain.biz", "domain.biz"), ("a.b.domain.biz", "domain.biz"),
    ("com", None), ("example.com", "example.com"), ("b.example.com", "example.com"),
    ("a.b.example.com", "example.com"), ("uk.com", None), ("example.uk.com", "example.uk.com"),
    ("b.example.uk.com", "example.uk.com"), ("a.b.example.uk.com", "example.uk.com"), ("test.ac", "test.ac"),
    ("mm", None), ("c.mm", None), ("b.c.mm", "b.c.mm"), ("a.b.c.mm", "b.c.mm"),
    ("jp", None), ("test.jp", "test.jp"), ("www.test.jp", "test.jp"), ("ac.jp", None),
    ("test.ac.jp", "test.ac.jp"), ("www.test.ac.jp", "test.ac.jp"), ("kyoto.jp", None),
    ("test.kyoto.jp", "test.kyoto.jp"), ("ide.kyoto.jp", None), ("b.ide.kyoto.jp", "b.ide.kyoto.jp"),
    ("a.b.ide.kyoto.jp", "b.ide.kyoto.jp"), ("c.kobe.jp", None), ("b.c.kobe.jp", "b.c.kobe.jp"),
    ("a.b.c.kobe.jp", "b.c.kobe.jp"), ("city.kobe.jp", "city.kobe.jp"), ("www.city.kobe.jp", "city.kobe.jp"),
    ("ck", None), ("test.ck", None), ("b.test.ck", "b.test.ck"), ("a.b.test.ck", "b.test.ck"),
    ("www.ck", "www.ck"), ("www.www.ck", "www.ck"),
    ("us", None), ("test.us", "test.us"), ("www.test.us", "test.us"), ("ak.us", None),
    ("test.ak.us", "test.ak.us"), ("www.test.ak.us", "test.ak.us"), ("k12.ak.us", None),
    ("test.k12.ak.us", "test.k12.ak.us"), ("www.test.k12.ak.us", "test.k12.ak.us"),
    ("食狮.com.cn", "食狮.com.cn"), ("食狮.公司.cn", "食狮.公司.cn"), ("www.食狮.公司.cn", "食狮.公司.cn"),
    ("shishi.公司.cn", "shishi.公司.cn"), ("公司.cn", None), ("食狮.中国", "食狮.中国"),
    ("www.食狮.中国", "食狮.中国"), ("shishi.中国", "shishi.中国"), ("中国", None),
    ("xn--85x722f.com.cn", "xn--85x722f.com.cn"), ("xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("www.xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"), ("shishi.xn--55qx5d.cn", "shishi.xn--55qx5d.cn"),
    ("xn--55qx5d.cn", None), ("xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"),
    ("www.xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"), ("shishi.xn--fiqs8s", "shishi.xn--fiqs8s"),
    ("xn--fiqs8s", None),
]


def test_registrable_domains_of_the_public_suffix_list_test_vectors() -> None:
    psl = registry_realm.public_suffix_list()
    wrong = {host: (psl.registrable_domain(host), expected) for host, expected in PSL_VECTORS
             if psl.registrable_domain(host) != registry_realm.to_ascii(expected or "")}
    assert not wrong, wrong


def test_rule_kinds_on_a_small_list() -> None:
    psl = registry_realm.PublicSuffixList("// comment\ncom\nco.uk\n*.ck\n!www.ck\n\nuk\n")
    assert psl.registrable_domain("a.b.example.co.uk") == "example.co.uk"  # the longest rule wins
    assert psl.registrable_domain("a.b.test.ck") == "b.test.ck"  # wildcard
    assert psl.registrable_domain("a.www.ck") == "www.ck"  # the exception beats the wildcard
    assert psl.registrable_domain("a.b.example.org") == "example.org"  # the default rule "*"
    assert psl.registrable_domain("co.uk") == ""


# --- registry-prefetch's own rule (credentials_allowed): stricter than distribution's --------------------------

@pytest.mark.parametrize(("upstream", "realm", "allowed"), [
    ("https://registry-1.docker.io", "https://auth.docker.io/token", True),
    ("https://registry-1.docker.io", "https://docker.io/token", True),
    ("https://registry-1.docker.io", "https://registry-1.docker.io/token", True),
    ("https://registry-1.docker.io", "https://a.b.docker.io/token", True),
    ("https://hub.actuated.test", "https://auth.actuated.test/token", True),
    ("https://registry.example.co.uk", "https://auth.example.co.uk/token", True),
    ("https://127.0.0.1:5000", "https://127.0.0.1:5000/token", True),
    ("https://Registry-1.Docker.IO", "https://AUTH.docker.io/token", True),
    # Never over plain http, never elsewhere.
    ("https://registry-1.docker.io", "http://auth.docker.io/token", False),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/token", False),
    ("https://registry-1.docker.io", "https://auth.evil.io/token", False),
    ("https://registry-1.docker.io", "https://evildocker.io/token", False),
    ("https://registry-1.docker.io", "https://docker.io.evil.com/token", False),
    ("https://registry-1.docker.io", "https://user@auth.docker.io/token", False),
    ("https://docker.io", "https://auth.docker.io/token", False),  # the parent, io, is a public suffix
    ("https://example.co.uk", "https://evil.co.uk/token", False),
    ("https://foo.github.io", "https://bar.github.io/token", False),
    ("https://127.0.0.1:5000", "https://127.0.0.1:5001/token", False),
    ("https://10.0.0.1", "https://10.0.0.2/token", False),
    ("https://registry.localhost", "https://auth.localhost/token", False),
    ("https://registry-1.docker.io", "not a url", False),
    ("https://registry-1.docker.io", "https://[::1/token", False),
])
def test_credentials_allowed(upstream: str, realm: str, allowed: bool) -> None:
    assert registry_realm.credentials_allowed(upstream, realm, registry_realm.PublicSuffixList.read()) is allowed


def test_public_suffixes() -> None:
    rules = registry_realm.PublicSuffixList.read()
    assert rules.is_public_suffix("io")
    assert rules.is_public_suffix("co.uk")
    assert rules.is_public_suffix("github.io")
    assert not rules.is_public_suffix("docker.io")
    assert not rules.is_public_suffix("actuated.test")
    assert rules.is_public_suffix("anything.kawasaki.jp")  # *.kawasaki.jp
    assert not rules.is_public_suffix("city.kawasaki.jp")  # !city.kawasaki.jp


def test_parse_challenge() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/alpine:pull"')
    assert registry_realm.parse_challenge(header) == (
        "bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                   "scope": "repository:library/alpine:pull"})
    assert registry_realm.parse_challenge('Basic realm="a \\"b\\" c"') == ("basic", {"realm": 'a "b" c'})
    assert registry_realm.parse_challenge("Bearer realm=https://x/token, service=x") == (
        "bearer", {"realm": "https://x/token", "service": "x"})


def test_localhost_subdomains_are_local_for_the_prefetch_s_rule_only() -> None:
    assert registry_realm.literal_or_local("localhost") and registry_realm.literal_or_local("::1")
    assert registry_realm.literal_or_local("10.0.0.1", localhost_subdomains=True)
    assert not registry_realm.literal_or_local("registry.localhost")
    assert registry_realm.literal_or_local("registry.localhost", localhost_subdomains=True)
    assert not registry_realm.literal_or_local("registry.example.com", localhost_subdomains=True)


@pytest.mark.parametrize(("upstream", "realm", "distribution", "prefetch"), [
    ("https://registry-1.docker.io", "https://auth.docker.io/token", True, True),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000/token", True, False),  # the prefetch: https only
    ("https://127.0.0.1", "https://127.0.0.1:443/token", False, True),  # as written, or with the default port
    ("https://registry:5000", "https://auth:5001/token", True, False),  # no registrable domain, or no parent
    ("https://docker.io", "https://auth.docker.io/token", True, False),  # the prefetch: under the parent, io
])
def test_distribution_s_rule_and_the_prefetch_s_share_the_list_but_differ(
        upstream: str, realm: str, distribution: bool, prefetch: bool) -> None:
    psl = registry_realm.public_suffix_list()
    assert registry_realm.realm_allowed(upstream, realm, psl) is distribution
    assert registry_realm.credentials_allowed(upstream, realm, psl) is prefetch


def test_an_unreadable_list_is_said_and_leaves_the_default_rule(tmp_path: Path) -> None:
    said: list[str] = []
    psl = registry_realm.PublicSuffixList.load(str(tmp_path / "missing.dat.gz"), said.append)
    assert said and said[0].startswith("cannot read the public suffix list (")
    assert said[0].endswith("): comparing domains by their last two labels")
    assert psl.registrable_domain("registry.example.co.uk") == "co.uk"
    with pytest.raises(OSError):
        registry_realm.PublicSuffixList.read(str(tmp_path / "missing.dat.gz"))


# --- What the supervisor says at start -----------------------------------------------------------------------------

# How the journal names the Docker Hub mirror's account: by its variables, never by the user name.
HUB_ACCOUNT = "the account in registry_mirror_dockerhub_username/token"


@pytest.fixture(name="hub")
def fixture_hub() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    """An upstream and a token service on another port of the same address."""
    upstream, tokens = FakeUpstream(), FakeUpstream()
    yield upstream, tokens
    upstream.close()
    tokens.close()


def started(tmp_path: Path, upstream: FakeUpstream, version: str, **kwargs: object) -> SupervisorRun:
    supervisor = SupervisorRun(tmp_path, upstream, version=version, **kwargs)  # type: ignore[arg-type]
    supervisor.serving()
    return supervisor


def settled(supervisor: SupervisorRun) -> str:
    """The journal once the start-up checks are done."""
    time.sleep(0.5)
    supervisor.stop()
    return supervisor.journal()


def test_3_1_logs_an_error_naming_realm_and_upstream_when_it_will_not_send_the_credentials(
        tmp_path: Path, hub: tuple[FakeUpstream, FakeUpstream]) -> None:
    upstream, tokens = hub
    upstream.challenge = f'Bearer realm="{tokens.url}/token",service="fake"'
    journal = settled(started(tmp_path, upstream, "3.1.1"))
    assert (f"ERROR: distribution 3.1.1 will not send the credentials of {HUB_ACCOUNT} to the token realm "
            f"{tokens.url}/token that upstream {upstream.url} names") in journal, journal
    assert "accepts" not in journal and not tokens.tokens()


def test_3_1_logs_an_error_for_an_anonymous_mirror_too(tmp_path: Path,
                                                       hub: tuple[FakeUpstream, FakeUpstream]) -> None:
    upstream, tokens = hub
    upstream.challenge = f'Bearer realm="{tokens.url}/token",service="fake"'
    journal = settled(started(tmp_path, upstream, "3.1.1", credentials=None))
    expected = f"ERROR: distribution 3.1.1 will not ask for anonymous tokens at the token realm {tokens.url}/token"
    assert expected in journal, journal
    assert not tokens.tokens()


def test_2_8_sends_the_credentials_to_any_bearer_realm(
        tmp_path: Path, hub: tuple[FakeUpstream, FakeUpstream]) -> None:
    upstream, tokens = hub
    upstream.challenge = f'Bearer realm="{tokens.url}/token",service="fake"'
    supervisor = started(tmp_path, upstream, "2.8.3")
    wait_for("the token request", tokens.tokens, 3)
    journal = settled(supervisor)
    assert f"upstream token service accepts {HUB_ACCOUNT}" in journal, journal
    assert "ERROR" not in journal
    request = tokens.tokens()[0]
    assert request["auth"] == "Basic bWlycm9yLXVzZXI6czNjcmV0"  # mirror-user:s3cret
    assert "service=fake" in request["path"] and "scope=repository%3Alibrary%2Falpine%3Apull" in request["path"]


def test_a_realm_on_the_upstreams_host_and_port_gets_the_credentials(tmp_path: Path,
                                                                     hub: tuple[FakeUpstream, FakeUpstream]) -> None:
    upstream = hub[0]
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    journal = settled(started(tmp_path, upstream, "3.1.1"))
    assert f"upstream token service accepts {HUB_ACCOUNT}" in journal, journal
    assert upstream.tokens()[0]["auth"] == "Basic bWlycm9yLXVzZXI6czNjcmV0"


@pytest.mark.parametrize(("credentials", "who"), [(("mirror-user", "wrong"), HUB_ACCOUNT),
                                                  (None, "anonymous pulls")])
def test_a_refusing_token_service_is_an_error(tmp_path: Path, hub: tuple[FakeUpstream, FakeUpstream],
                                              credentials: tuple[str, str] | None, who: str) -> None:
    upstream = hub[0]
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    upstream.token_status = 401
    journal = settled(started(tmp_path, upstream, "3.1.1", credentials=credentials))
    assert f"ERROR: upstream token service {upstream.url}/token refuses {who} (HTTP 401)" in journal, journal


@pytest.mark.parametrize(("version", "error"), [("2.8.3", True), ("3.1.1", False)])
def test_basic_authentication_upstream(tmp_path: Path, hub: tuple[FakeUpstream, FakeUpstream], version: str,
                                       error: bool) -> None:
    upstream = hub[0]
    upstream.challenge = 'Basic realm="Registry Realm"'
    journal = settled(started(tmp_path, upstream, version))
    assert (f"ERROR: upstream {upstream.url} asks for Basic authentication (realm 'Registry Realm') and "
            f"distribution {version} answers only token challenges" in journal) is error, journal
