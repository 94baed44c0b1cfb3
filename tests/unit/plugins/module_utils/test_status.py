# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""_status: the supervisor's metrics as its own Metrics class renders them (a renamed metric fails here), the mode and
since when from the journal, the journal's trouble lines without secrets, and the reasons a host needs attention."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.actuated.registry.plugins.module_utils import _inputs_entries as entries
from ansible_collections.actuated.registry.plugins.module_utils import _status as status

HOUR = 3600.0
NOW = 1_767_225_600.0  # 2026-01-01 00:00 UTC
SETTINGS = {"upstream": "https://10.1.0.10:5000", "port": 5002, "version": "3.1.1",
            "fallbacks": [{"url": "https://10.2.0.10:5000", "credentials": ""},
                          {"url": "https://registry-1.docker.io", "credentials": ""}]}
TIERS = ["https://10.1.0.10:5000", "https://10.2.0.10:5000"]
# distribution's own counters, as its /metrics (appended by the supervisor with registry_mirror_metrics_enabled) has them.
DISTRIBUTION = """# HELP registry_proxy_hits_total The number of total proxy request hits
# TYPE registry_proxy_hits_total counter
registry_proxy_hits_total{type="blob"} 40
registry_proxy_hits_total{type="manifest"} 12
# TYPE registry_proxy_misses_total counter
registry_proxy_misses_total{type="blob"} 9
registry_proxy_misses_total{type="manifest"} 3
"""


def test_the_supervisors_metrics_give_every_field(supervisor_metrics: t.Callable[..., str]) -> None:
    text = supervisor_metrics(registry_mirror_read_only=0, registry_mirror_upstream_index=1,
                              registry_mirror_cache_bytes=5 * 2**30, registry_mirror_cache_budget_bytes=20 * 2**30,
                              registry_mirror_cache_images=42,
                              registry_mirror_cache_last_collection_timestamp_seconds=NOW - 600)
    state = status.mirror_state(status.parse_metrics(text + DISTRIBUTION), SETTINGS, TIERS)
    assert state == {"mode": "pull-through", "upstream": "https://10.2.0.10:5000", "upstream_role": "tier 2",
                     "cache_bytes": 5 * 2**30, "budget_bytes": 20 * 2**30, "images": 42, "last_collection": NOW - 600,
                     "hits": 52, "misses": 12, "upstream_pulls": 3, "mode_since": None}


# The caching front's answers (registry_mirror_front_*, with the front on): from its cache and blobs from disk.
FRONT = {"registry_mirror_front_requests_total": 160, "registry_mirror_front_cache_hits_total": 20,
         "registry_mirror_front_cache_stale_total": 1, "registry_mirror_front_blobs_from_disk_total": 7,
         "registry_mirror_front_cache_misses_total": 5, "registry_mirror_front_cache_revalidated_total": 2,
         "registry_mirror_front_bytes_served_total": 9 * 2**20}


def test_hits_include_the_answers_of_the_front(supervisor_metrics: t.Callable[..., str]) -> None:
    """Hits: distribution's (52), and what the front answered itself, which distribution never sees: its cache hits,
    its stale answers and the blobs it sent from disk (28). Its misses and revalidations reached distribution, whose
    own hits or misses count them: not again."""
    text = supervisor_metrics(front=True, registry_mirror_read_only=0, **FRONT)
    state = status.mirror_state(status.parse_metrics(text + DISTRIBUTION), SETTINGS, TIERS)
    assert (state["hits"], state["misses"], state["upstream_pulls"]) == (80, 12, 3)
    # The front on and nothing answered by it yet: distribution's alone.
    text = supervisor_metrics(front=True, registry_mirror_read_only=0)
    state = status.mirror_state(status.parse_metrics(text + DISTRIBUTION), SETTINGS, TIERS)
    assert (state["hits"], state["misses"]) == (52, 12)
    # Without distribution's metrics (registry_mirror_metrics_enabled false): no hits, as no misses.
    state = status.mirror_state(status.parse_metrics(supervisor_metrics(front=True, **FRONT)), SETTINGS, TIERS)
    assert state["hits"] is state["misses"] is None


def test_read_only_from_the_supervisors_metrics_without_distributions(supervisor_metrics: t.Callable[..., str]) -> None:
    text = supervisor_metrics(fallbacks=False, registry_mirror_read_only=1, registry_mirror_cache_images=3)
    state = status.mirror_state(status.parse_metrics(text), {"upstream": "https://registry-1.docker.io"}, [])
    assert state["mode"] == "read-only" and state["upstream"] is None and state["images"] == 3
    assert state["hits"] is state["misses"] is state["upstream_pulls"] is state["last_collection"] is None


@pytest.mark.parametrize("index,upstream,role", [
    (0, "https://10.1.0.10:5000", "tier 1"),
    (2, "https://registry-1.docker.io", "fallback"),
    (7, "https://10.1.0.10:5000", "tier 1"),  # an index the settings do not know: the upstream
])
def test_the_upstream_pulled_through_and_its_role(supervisor_metrics: t.Callable[..., str], index: int,
                                                  upstream: str, role: str) -> None:
    text = supervisor_metrics(registry_mirror_read_only=0, registry_mirror_upstream_index=index)
    state = status.mirror_state(status.parse_metrics(text), SETTINGS, TIERS)
    assert (state["upstream"], state["upstream_role"]) == (upstream, role)


def test_a_mirror_without_tiers_pulls_through_its_upstream(supervisor_metrics: t.Callable[..., str]) -> None:
    state = status.mirror_state(status.parse_metrics(supervisor_metrics(fallbacks=False)), {"upstream": "https://ghcr.io"}, [])
    assert (state["mode"], state["upstream"], state["upstream_role"]) == ("pull-through", "https://ghcr.io", "upstream")


def test_metrics_that_did_not_answer() -> None:
    assert status.mirror_state(None, SETTINGS, TIERS) == {"mode": "unknown", "upstream": None, "upstream_role": None}


def test_parse_metrics_labels_comments_and_junk() -> None:
    samples = status.parse_metrics('# distribution\'s metrics did not answer: timed out\nnot a sample\n'
                                   'a{x="1",y="q\\"uote"} 2.5 1700000000\nb NaN\nb 1e3\nc{} +Inf\nd notanumber\n')
    assert samples["a"] == [({"x": "1", "y": 'q"uote'}, 2.5)]
    assert status.metric(samples, "b") != status.metric(samples, "b")  # NaN + 1000: NaN, as Prometheus would say
    assert status.metric(samples, "c") == float("inf") and "d" not in samples
    assert status.metric(samples, "a", x="2") is None and status.metric(samples, "zz") is None


def entry(when: float, message: str, **extra: t.Any) -> dict:
    return {"time": when, "message": message, "priority": 6, **extra}


STARTED = {"message_id": status.UNIT_STARTED}
JOURNAL = [
    entry(NOW - 10 * HOUR, "Started registry.service - registry mirror.", **STARTED),
    entry(NOW - 9 * HOUR, "[ghcr] registry-supervisor: upstream https://ghcr.io is unreachable (timed out): serving the "
                          "cache read-only without the proxy"),
    entry(NOW - 8 * HOUR, "[docker-hub] registry-supervisor: upstream https://10.1.0.10:5000 is unreachable (HTTP 503): "
                          "pulling through https://10.2.0.10:5000"),
    entry(NOW - 7 * HOUR, "[ghcr] registry-supervisor: switch done: serving the cache read-only"),
    entry(NOW - 2 * HOUR, "[ghcr] registry-supervisor: 80 MiB free on /var/lib/registry-ghcr again (floor 100 MiB), but "
                          "upstream https://ghcr.io is unreachable: still serving the cache read-only"),
]


@pytest.mark.parametrize("journal,label,read_only,since", [
    (JOURNAL, "ghcr", True, NOW - 9 * HOUR),  # the first announcement of the stretch; "still" announces nothing
    (JOURNAL, "docker-hub", False, NOW - 8 * HOUR),  # its last switch of upstream
    (JOURNAL, "quay", False, NOW - 10 * HOUR),  # said nothing since the unit started: since then
    (JOURNAL[1:], "quay", False, None),  # nor before the journal's window
    (JOURNAL + [entry(NOW - HOUR, "[ghcr] registry-supervisor: upstream https://ghcr.io answers again (HTTP 200): back "
                                  "to pull-through mode")], "ghcr", False, NOW - HOUR),
    (JOURNAL + [entry(NOW - HOUR, "Started registry.service.", **STARTED),
                entry(NOW - HOUR + 5, "[ghcr] registry-supervisor: ...: serving the cache read-only without the proxy")],
     "ghcr", True, NOW - HOUR + 5),  # a restart begins a new stretch, as the alert's `for` does
    (JOURNAL, "quay", True, None),  # read-only and nothing says since when
    (JOURNAL[:2], "docker-hub", False, NOW - 10 * HOUR),
    ([entry(NOW - HOUR, "registry-supervisor: WARNING: 12 MiB free on /var/lib/registry, below the floor of 100 MiB: "
                        "serving the cache read-only and storing nothing new until more than 200 MiB are free")],
     "", True, NOW - HOUR),  # one mirror: every line is its own
])
def test_mode_since_from_the_journal(journal: list, label: str, read_only: bool, since: float | None) -> None:
    assert status.mode_since(journal, label, read_only) == since


def test_the_journal_contradicting_the_metrics_gives_no_time() -> None:
    assert status.mode_since(JOURNAL, "ghcr", read_only=False) is None


@pytest.mark.parametrize("line,shown", [
    ("upstream https://user:s3cr3t@ghcr.io/v2/ refused", "upstream https://[secret]@ghcr.io/v2/ refused"),
    ("sent Authorization: Bearer abc.def.ghi", "sent Authorization: [secret]"),
    ("header authorization=Basic dXNlcjpwYXNz", "header Authorization: [secret]"),
    ("got token dckr_pat_AbC-123_x", "got token [secret]"),
    ("REGISTRY_PROXY_PASSWORD=hunter2 password: hunter2", "REGISTRY_PROXY_PASSWORD=[secret] password: [secret]"),
    ("token=abc123 and Bearer eyJhbGciOiJIUzI1", "token=[secret] and Bearer [secret]"),
    ("plain line, nothing secret", "plain line, nothing secret"),
])
def test_redact(line: str, shown: str) -> None:
    assert status.redact(line) == shown


def test_the_environment_variable_form_is_redacted_too() -> None:
    assert "hunter2" not in status.redact("REGISTRY_PROXY_PASSWORD = hunter2")
    assert status.redact("REGISTRY_PROXY_PASSWORD=hunter2") == "REGISTRY_PROXY_PASSWORD=[secret]"


def test_trouble_lines_are_the_last_warnings_and_errors() -> None:
    journal = [entry(1, "registry-supervisor: ERROR: one"), entry(2, "fine"), entry(3, "systemd says", priority=4),
               entry(4, "[ghcr] registry-supervisor: WARNING: https://u:p@x.test"), entry(5, "info", priority=5),
               entry(6, "registry.service: Failed with result 'exit-code'.")]
    assert status.trouble_lines(journal, 3) == ["systemd says", "[ghcr] registry-supervisor: WARNING: https://[secret]@x.test",
                                                "registry.service: Failed with result 'exit-code'."]
    assert status.trouble_lines(journal, 0) == [] and status.trouble_lines([], 5) == []


def host(**overrides: t.Any) -> dict:
    """A healthy host's status, with OVERRIDES."""
    mirror = {"name": "docker-hub", "mode": "pull-through", "mode_since": NOW - 5 * HOUR, "cache_bytes": 2**30,
              "budget_bytes": 2**31, "metrics_error": None}
    return {"unit": "active", "mirrors": [mirror], "certificates": {"actuated": {"days_left": 60}}, **overrides}


@pytest.mark.parametrize("changes,reasons", [
    ({}, []),
    ({"unit": "failed"}, ["the registry unit is not running (failed)"]),
    ({"unit": None}, ["the registry unit is not running (unknown)"]),
    ({"fact_error": "no readable fact file /x: has the role run on this host?"},
     ["no readable fact file /x: has the role run on this host?"]),
    ({"certificates": {"actuated": {"days_left": 13}, "tier": {"days_left": 14}}},
     ["actuated certificate expires in 13 days"]),
    ({"certificates": {"tier": {"days_left": -2}}}, ["tier certificate expired 2 days ago"]),
    ({"certificates": {"actuated": {"error": "missing"}}}, ["actuated certificate: missing"]),
    ({"mirrors": [{"name": "ghcr", "mode": "read-only", "mode_since": NOW - HOUR - 1}]}, ["ghcr: read-only for 1 h"]),
    ({"mirrors": [{"name": "ghcr", "mode": "read-only", "mode_since": NOW - HOUR}]}, []),  # an hour: not over it
    ({"mirrors": [{"name": "ghcr", "mode": "read-only", "mode_since": None}]}, []),  # unknown: the journal lost it
    ({"mirrors": [{"name": "quay", "cache_bytes": 2**31 + 1, "budget_bytes": 2**31}]},
     ["quay: cache over its budget (2.0 GiB of 2.0 GiB)"]),
    ({"mirrors": [{"name": "quay", "cache_bytes": 2**40, "budget_bytes": 0}]}, []),  # no budget
    ({"mirrors": [{"name": "quay", "metrics_error": "127.0.0.1:5022: refused"}]},
     ["quay: its supervisor does not answer (127.0.0.1:5022: refused)"]),
    ({"unit": "inactive", "mirrors": [{"name": "quay", "metrics_error": "127.0.0.1:5022: refused"}]},
     ["the registry unit is not running (inactive)"]),  # said once: the unit
])
def test_attention(changes: dict, reasons: list) -> None:
    assert status.attention(host(**changes), cert_min_days=14, read_only_max_seconds=3600, now=NOW) == reasons


def test_attention_thresholds_are_the_callers() -> None:
    sick = host(certificates={"actuated": {"days_left": 20}},
                mirrors=[{"name": "ghcr", "mode": "read-only", "mode_since": NOW - 120}])
    assert status.attention(sick, cert_min_days=30, read_only_max_seconds=60, now=NOW) == [
        "actuated certificate expires in 20 days", "ghcr: read-only for 2 min"]


@pytest.mark.parametrize("seconds,words", [(-5, "0 s"), (59, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"),
                                           (3660, "1 h 1 min"), (86400, "1 d"), (90000, "1 d 1 h")])
def test_duration(seconds: float, words: str) -> None:
    assert status.duration(seconds) == words


@pytest.mark.parametrize("count,words", [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (20 * 2**30, "20.0 GiB"), (3 * 2**50, "3072.0 TiB")])
def test_size(count: int | None, words: str) -> None:
    assert status.size(count) == words


def test_the_docker_hub_mirror_has_the_supervisors_primary_name() -> None:
    assert status.PRIMARY_NAME == entries.PRIMARY_NAME
    assert status.mirror_name({}) == "docker-hub" and status.mirror_name({"name": "ghcr"}) == "ghcr"
    assert status.mirror_label({}) == "" and status.mirror_label({"name": "docker-hub"}) == "docker-hub"
