# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_upstream in process, against real loopback upstreams (registry_fakes.FakeUpstream): what its requests
send where (the account along a redirect only to the same origin: scheme, host and port; never to another host or
port, never from https to http, and not again once left behind), which CAs they trust, SIGTERM interrupting one in
flight, the token check's outcome, and the accounts and the variables the journal names. The checks as the running
supervisor says them: test_registry_supervisor_credentials.py and test_registry_supervisor_fallbacks.py."""
from __future__ import annotations

import dataclasses
import os
import signal
import ssl
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import FILES, PROG, STARTUP, FakeUpstream, basic, certificates, wait_for
from test_registry_supervisor import settings_file
from test_registry_supervisor_credentials import SECRET, USER
from test_registry_supervisor_fallbacks import BASIC, VALID

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_settings
import registry_upstream

COOKIE = "session=cookie-Rn5Xb2"
LEFT_BEHIND = "leads to another origin"
PREFIX = "REGISTRY_MIRROR_GHCR"


def upstreams_of(tmp_path: Path, upstream: str, term: registry_upstream.Term | None = None,
                 **values: Any) -> registry_upstream.Upstreams:
    """The Upstreams of a mirror of UPSTREAM with the settings VALUES on top of the required ones (TERM: a fresh one
    by default)."""
    settings = registry_settings.Settings.load(str(settings_file(tmp_path, upstream=upstream, **values)))
    return registry_upstream.Upstreams(settings, term or registry_upstream.Term())


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
    upstreams_of(tmp_path, upstream.url).fetch(credentialed(upstream.url + "/v2/"), STARTUP)
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
    upstreams_of(tmp_path, upstream.url).fetch(credentialed(upstream.url + "/v2/"), STARTUP)
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
        upstreams_of(tmp_path, secure.url, ca_file=str(ca)).fetch(credentialed(secure.url + "/v2/"), STARTUP)
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
    upstreams_of(tmp_path, upstream.url).fetch(credentialed(upstream.url + "/v2/"), STARTUP)
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
    upstreams_of(tmp_path, upstream.url).check_token_service(0)
    assert [token["auth"] for token in upstream.tokens()] == [basic(USER, SECRET)]
    assert [token["auth"] for token in other.tokens()] == [None], other.requests
    assert "scope=repository%3Alibrary%2Falpine%3Apull" in other.tokens()[0]["path"]  # the query went along
    err = capsys.readouterr().err
    assert f"from {upstream.url} to {other.url} {LEFT_BEHIND}" in err, err
    assert USER not in err and SECRET not in err


# --- The token check ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("account", [True, False], ids=["account", "anonymous"])
def test_the_token_service_is_asked_with_the_account_or_anonymously(
        tmp_path: Path, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        account: bool) -> None:
    upstream.challenge = f'Bearer realm="{upstream.url}/token",service="fake"'
    if account:
        monkeypatch.setenv("REGISTRY_PROXY_USERNAME", USER)
        monkeypatch.setenv("REGISTRY_PROXY_PASSWORD", SECRET)
    upstreams_of(tmp_path, upstream.url).check_token_service(0)
    assert [token["auth"] for token in upstream.tokens()] == [basic(USER, SECRET) if account else None]
    who = "the account in registry_mirror_dockerhub_username/token" if account else "anonymous pulls"
    assert capsys.readouterr().err == f"{PROG}upstream token service accepts {who}\n"


def test_an_upstream_without_a_challenge_is_not_checked_further(
        tmp_path: Path, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    upstreams_of(tmp_path, upstream.url).check_token_service(0)
    assert [r["path"] for r in upstream.requests] == ["/v2/"]
    assert not capsys.readouterr().err


# --- SIGTERM --------------------------------------------------------------------------------------------------------

def test_sigterm_interrupts_a_request_in_flight_and_no_request_starts_after_it(
        tmp_path: Path, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]) -> None:
    upstream.set("hang")  # it would answer nothing for 30 s
    term = registry_upstream.Term()
    upstreams = upstreams_of(tmp_path, upstream.url, term)

    def terminate() -> None:
        wait_for("the request in flight", lambda: upstream.requests, STARTUP)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, term.on_term)
    sender = threading.Thread(target=terminate, daemon=True)
    try:
        sender.start()
        began = time.monotonic()
        assert upstreams.answers(0, STARTUP) == (False, "stopping")
        assert time.monotonic() - began < STARTUP
    finally:
        sender.join(STARTUP)
        signal.signal(signal.SIGTERM, previous)
    assert term.stopping and not term.interruptible
    # Stopping: no request leaves any more, and the token check says nothing.
    assert upstreams.answers(0) == (False, "stopping")
    upstreams.check_token_service(0)
    assert len(upstream.requests) == 1
    assert not capsys.readouterr().err


def test_sigterm_outside_a_request_only_says_stopping() -> None:
    term = registry_upstream.Term()
    term.on_term(signal.SIGTERM, None)
    assert term.stopping
    term.interruptible = True
    with pytest.raises(registry_upstream.Stopping):
        term.on_term(signal.SIGTERM, None)


# --- TLS trust --------------------------------------------------------------------------------------------------------

def test_ca_file_is_trusted_by_the_supervisor_s_own_requests(tmp_path: Path) -> None:
    ca, cert, key = certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tier = FakeUpstream(challenge=BASIC, tls=context)
    try:
        assert tier.url.startswith("https://")
        answers = {ca_file: upstreams_of(tmp_path, tier.url, ca_file=ca_file).answers(0, STARTUP)
                   for ca_file in ("", str(ca))}
        assert answers[str(ca)] == (True, "401")  # a 401 answers
        assert not answers[""][0] and "CERTIFICATE_VERIFY_FAILED" in answers[""][1], answers
    finally:
        tier.close()


def test_the_supervisor_s_own_requests_trust_ca_file_for_the_tiers_only(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("", encoding="utf-8")  # not loaded here: which context a request gets is what is checked
    upstreams = upstreams_of(tmp_path, "https://tier-a.example:5000",
                             fallbacks=[{"url": "https://registry-1.docker.io"}],
                             ca_upstreams=["https://tier-a.example:5000"])
    upstreams.settings = dataclasses.replace(upstreams.settings, ca_file=str(ca_file))
    assert upstreams.trusts_ca_file("https://tier-a.example:5000")
    assert not upstreams.trusts_ca_file("https://registry-1.docker.io")
    assert upstreams.fleet_ca("https://tier-a.example:5000/")
    assert not upstreams.fleet_ca("https://registry-1.docker.io")


def test_a_ca_file_that_cannot_be_loaded_leaves_the_system_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "ca.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n", encoding="utf-8")
    upstreams = upstreams_of(tmp_path, "https://tier-a.example:5000")
    upstreams.settings = dataclasses.replace(upstreams.settings, ca_file=str(broken))
    context = upstreams.tls(True)
    assert upstreams.tls(True) is context and upstreams.tls(False) is not context  # each loaded once
    assert capsys.readouterr().err.startswith(f"{PROG}cannot load the CAs of {broken} (")


# --- Accounts and the variables the journal names -------------------------------------------------------------------

@pytest.mark.parametrize(("candidate", "env", "expected"), [
    (None, {"REGISTRY_PROXY_USERNAME": USER, "REGISTRY_PROXY_PASSWORD": SECRET}, (USER, SECRET)),
    (None, {}, ("", "")),
    (PREFIX, {f"{PREFIX}_USERNAME": USER, f"{PREFIX}_PASSWORD": SECRET}, (USER, SECRET)),
    (PREFIX, {f"{PREFIX}_USERNAME": USER}, ("", "")),  # both, or none is used
    ("", {"REGISTRY_PROXY_USERNAME": USER, "REGISTRY_PROXY_PASSWORD": SECRET}, ("", "")),  # anonymous
], ids=["upstream", "upstream anonymous", "fallback", "fallback half set", "fallback anonymous"])
def test_each_candidate_s_account_comes_from_its_own_variables(
        monkeypatch: pytest.MonkeyPatch, candidate: str | None, env: dict[str, str],
        expected: tuple[str, str]) -> None:
    for name in ("REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD", f"{PREFIX}_USERNAME", f"{PREFIX}_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert registry_upstream.Candidate("https://u", candidate).account() == expected


@pytest.mark.parametrize(("values", "expected"), [
    ({}, "registry_mirror_dockerhub_username/token"),
    ({"name": "docker-hub"}, "registry_mirror_dockerhub_username/token"),
    ({"name": "ghcr", "credentials": PREFIX}, "registry_mirror_upstreams[ghcr].username/password"),
    ({"credentials": PREFIX}, f"{PREFIX}_USERNAME / {PREFIX}_PASSWORD"),
    ({"fallbacks": [{"url": "https://registry-1.docker.io"}]}, "registry_mirror_tiers[0].username/password"),
], ids=["docker hub", "docker hub by name", "further upstream", "unnamed prefix", "edge"])
def test_the_variables_named_for_the_upstream_s_account(tmp_path: Path, values: dict[str, Any], expected: str) -> None:
    upstreams = upstreams_of(tmp_path, VALID["upstream"], **values)
    assert upstreams.variables(upstreams.candidates[0]) == expected


def test_the_variables_named_for_a_fallback_s_account(tmp_path: Path) -> None:
    fallbacks = [{"url": "https://tier-b.example:5000", "credentials": PREFIX}, {"url": "https://registry-1.docker.io"}]
    upstreams = upstreams_of(tmp_path, VALID["upstream"], fallbacks=fallbacks)
    assert [upstreams.variables(candidate) for candidate in upstreams.candidates[1:]] == [
        f"{PREFIX}_USERNAME / {PREFIX}_PASSWORD", "credentials in its fallbacks entry (a prefix REGISTRY_MIRROR_...)"]
