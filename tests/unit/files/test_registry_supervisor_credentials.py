# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""What registry-supervisor's credential checks do with the upstream account: they take it along a redirect only to
the same origin (scheme, host and port; never to another host or port, never from https to http, and not again once
left behind), and the journal names the variables that hold it, never the user name or the password.

The redirects run in process (Supervisor.fetch and the token check) against two real loopback servers; the journal
is the program's own, run with a fake registry (registry_fakes)."""
from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from registry_fakes import (
    PROG,
    STARTUP,
    FakeUpstream,
    SupervisorRun,
    basic,
    certificates,
    load_supervisor,
    wait_for,
)

# Distinctive values, to be found nowhere in the journal.
USER, SECRET = "hub-user-Hq3Zt7", "hub-secret-Pv9Lk4Wd"
COOKIE = "session=cookie-Rn5Xb2"
LEFT_BEHIND = "leads to another origin"


def in_process(tmp_path: Path, upstream: str, **values: Any) -> Any:
    """A Supervisor of UPSTREAM (nothing started) with the settings VALUES on top of the required ones."""
    sup = load_supervisor()
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": upstream, "version": "3.1.1", **values}),
                    encoding="utf-8")
    return sup.Supervisor(sup.Settings.load(str(path)))


def credentialed(url: str) -> urllib.request.Request:
    """A request with the account and a cookie, as a credential check would send it."""
    request = urllib.request.Request(url)
    request.add_header("Authorization", basic(USER, SECRET))
    request.add_header("Cookie", COOKIE)
    return request


def carried(record: dict[str, Any]) -> tuple[str | None, str | None]:
    """What a request arrived with: its Authorization and Cookie headers."""
    return record["auth"], record["cookie"]


# --- No credentials along a redirect to another origin ----------------------------------------------------------------

@pytest.mark.parametrize("redirect", [(target, status) for target in ("another port", "another host")
                                      for status in (301, 302, 303, 307)], ids=str)
def test_a_redirect_to_another_origin_arrives_without_the_credentials(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, capsys: pytest.CaptureFixture[str],
        redirect: tuple[str, int]) -> None:
    target, status = redirect
    # Another port: a second server. Another host: the same server by another name (localhost for 127.0.0.1).
    server, base = ((other, other.url) if target == "another port"
                    else (upstream, f"http://localhost:{upstream.port}"))
    upstream.redirects["/v2/"] = f"{base}/elsewhere/v2/"
    upstream.redirect_status = status
    supervisor = in_process(tmp_path, upstream.url)
    supervisor.fetch(credentialed(upstream.url + "/v2/"), STARTUP)
    assert carried(upstream.requests[0]) == (basic(USER, SECRET), COOKIE)  # the request itself had them
    arrived = [r for r in server.requests if r["path"] == "/elsewhere/v2/"]
    assert [carried(r) for r in arrived] == [(None, None)], server.requests
    err = capsys.readouterr().err
    assert (f"{PROG}a redirect (HTTP {status}) from {upstream.url} to {base} {LEFT_BEHIND}: the credentials are not "
            "sent there") in err, err
    assert USER not in err and SECRET not in err


@pytest.mark.parametrize("location", ["absolute", "relative"])
def test_a_redirect_on_the_same_origin_keeps_the_credentials(
        tmp_path: Path, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str], location: str) -> None:
    upstream.redirects["/v2/"] = (upstream.url if location == "absolute" else "") + "/moved/v2/"
    supervisor = in_process(tmp_path, upstream.url)
    supervisor.fetch(credentialed(upstream.url + "/v2/"), STARTUP)
    assert [(r["path"], carried(r)) for r in upstream.requests] == [
        ("/v2/", (basic(USER, SECRET), COOKIE)), ("/moved/v2/", (basic(USER, SECRET), COOKIE))]
    assert LEFT_BEHIND not in capsys.readouterr().err


def test_a_redirect_from_https_to_http_never_carries_the_credentials(
        tmp_path: Path, other: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    ca, cert, key = certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure = FakeUpstream(tls=context)
    try:
        assert secure.url.startswith("https://") and other.url.startswith("http://")
        secure.redirects["/v2/"] = other.url + "/v2/"
        supervisor = in_process(tmp_path, secure.url, ca_file=str(ca))
        supervisor.fetch(credentialed(secure.url + "/v2/"), STARTUP)
        assert [carried(r) for r in secure.requests] == [(basic(USER, SECRET), COOKIE)]
        assert [carried(r) for r in other.requests] == [(None, None)], other.requests
        err = capsys.readouterr().err
        assert f"from {secure.url} to {other.url} {LEFT_BEHIND} and from https to http" in err, err
    finally:
        secure.close()


def test_credentials_left_behind_stay_behind_when_a_redirect_comes_back(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream) -> None:
    upstream.redirects["/v2/"] = other.url + "/away/"
    other.redirects["/away/"] = upstream.url + "/back/"
    supervisor = in_process(tmp_path, upstream.url)
    supervisor.fetch(credentialed(upstream.url + "/v2/"), STARTUP)
    assert [(r["path"], carried(r)) for r in upstream.requests] == [
        ("/v2/", (basic(USER, SECRET), COOKIE)), ("/back/", (None, None))]
    assert [carried(r) for r in other.requests] == [(None, None)]


def test_a_token_realm_that_redirects_elsewhere_gets_the_credentials_but_not_the_other_origin(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The realm is on the upstream's host and port (distribution sends the account there), and sends the token
    # request on to another port.
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    upstream.redirects["/token"] = other.url + "/token"
    monkeypatch.setenv("REGISTRY_PROXY_USERNAME", USER)
    monkeypatch.setenv("REGISTRY_PROXY_PASSWORD", SECRET)
    in_process(tmp_path, upstream.url).check_token_service()
    assert [token["auth"] for token in upstream.tokens()] == [basic(USER, SECRET)]
    assert [token["auth"] for token in other.tokens()] == [None], other.requests
    assert "scope=repository%3Alibrary%2Falpine%3Apull" in other.tokens()[0]["path"]  # the query went along
    err = capsys.readouterr().err
    assert f"from {upstream.url} to {other.url} {LEFT_BEHIND}" in err, err
    assert USER not in err and SECRET not in err


# --- The journal names the variables, never the account -----------------------------------------------------------

HUB = "registry_mirror_dockerhub_username/token"
GHCR = "registry_mirror_upstreams[ghcr].username/password"
TIER = "registry_mirror_tiers[0].username/password"


class Failure(NamedTuple):
    """A credential failure the supervisor says at start: the upstream's CHALLENGE ("bearer here": a token realm on
    the upstream that refuses the account; "bearer there": a realm on another port, to which distribution VERSION
    sends no credentials; "basic"), the mirror's SETTINGS, the VARIABLES its line names, and the LINE."""

    challenge: str
    version: str
    settings: dict[str, Any]
    variables: str
    line: str


REFUSED = "ERROR: upstream token service {url}/token refuses the account in {variables} (HTTP 401)"
FAILURES = {
    "Docker Hub, token refused": Failure("bearer here", "3.1.1", {}, HUB, REFUSED),
    "further upstream, token refused": Failure("bearer here", "3.1.1", {"name": "ghcr"}, GHCR, REFUSED),
    "tier of an edge, token refused": Failure("bearer here", "3.1.1", {"fallbacks": True}, TIER, REFUSED),
    "realm elsewhere": Failure("bearer there", "3.1.1", {}, HUB, "ERROR: distribution 3.1.1 will not send the "
                               "credentials of the account in {variables} to the token realm {other}/token"),
    "Basic before 3.1": Failure("basic", "2.8.3", {}, HUB, "ERROR: upstream {url} asks for Basic authentication "
                                "(realm 'r') and distribution 2.8.3 answers only token challenges: it will not send "
                                "the credentials of the account in {variables}"),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_a_credential_failure_names_the_variables_and_never_the_account(
        tmp_path: Path, upstream: FakeUpstream, other: FakeUpstream, runs: list[SupervisorRun],
        failure: Failure) -> None:
    upstream.challenge = {"bearer here": f'Bearer realm="{upstream.url}/token",service="fake"',
                          "bearer there": f'Bearer realm="{other.url}/token",service="fake"',
                          "basic": 'Basic realm="r"'}[failure.challenge]
    upstream.token_status = 401
    settings = dict(failure.settings)
    if settings.pop("fallbacks", False):  # an edge: its first tier is the upstream, then another
        settings["fallbacks"] = [{"url": other.url, "credentials": ""}]
    supervisor = SupervisorRun(tmp_path, upstream, credentials=(USER, SECRET), version=failure.version, **settings)
    runs.append(supervisor)
    expected = failure.line.format(url=upstream.url, other=other.url, variables=failure.variables)
    said = expected.partition(" the account in")[0]  # the line, up to where it names the account
    wait_for(f"a line with {said!r}", lambda: supervisor.said(said), STARTUP)
    assert supervisor.stop() == 0
    journal = supervisor.journal()
    assert USER not in journal and SECRET not in journal, journal
    assert expected in journal, journal
