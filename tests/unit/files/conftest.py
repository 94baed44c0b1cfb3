# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Fixtures of the supervisor's tests (registry_fakes has the stand-ins themselves): the upstreams a mirror pulls
through, and the programs a test starts, each stopped after it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from registry_fakes import FakeUpstream, Journal


@pytest.fixture(name="upstream")
def fixture_upstream() -> Iterator[FakeUpstream]:
    """The mirror's upstream: a registry that answers /v2/ with 200 (no challenge), until the test says otherwise."""
    upstream = FakeUpstream(challenge=None)
    yield upstream
    upstream.close()


@pytest.fixture(name="other")
def fixture_other() -> Iterator[FakeUpstream]:
    """A second upstream (ghcr.io, say), as the first."""
    upstream = FakeUpstream(challenge=None)
    yield upstream
    upstream.close()


@pytest.fixture(name="runs")
def fixture_runs() -> Iterator[list[Journal]]:
    """Supervisors (SupervisorRun) and groups (GroupRun) the test starts with runs.append(...): each is stopped after
    the test, as systemd stops the unit."""
    started: list[Journal] = []
    yield started
    for program in started:
        program.stop(timeout=20)
