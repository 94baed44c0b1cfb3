# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""What registry-supervisor's credential checks say about the upstream account: the journal names the variables that
hold it, never the user name or the password. The journal is the program's own, run with a fake registry
(registry_fakes). What the checks send where, redirects included, is tested in process: test_registry_upstream.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from registry_fakes import STARTUP, FakeUpstream, SupervisorRun, wait_for

# Distinctive values, to be found nowhere in the journal.
USER, SECRET = "hub-user-Hq3Zt7", "hub-secret-Pv9Lk4Wd"


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
