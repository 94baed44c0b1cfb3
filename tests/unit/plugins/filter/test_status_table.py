# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""status_table and status_report: hosts that need attention first, with the reasons in words; registered results that
are no status (unreachable, failed, missing) need attention; Ansible's own keys stay out of the report."""

from __future__ import annotations

import typing as t

from ansible_collections.actuated.registry.plugins.filter.status_table import FilterModule, status_report, status_table

NOW = 1_767_225_600.0
GIB = 2**30


def result(**overrides: t.Any) -> dict:
    """A healthy host's registered registry_status result."""
    mirror = {"name": "docker-hub", "registry": "docker.io", "version": "3.1.1", "mode": "pull-through",
              "mode_since": NOW - 3 * 86400, "upstream": "https://registry-1.docker.io", "upstream_role": "upstream",
              "cache_bytes": 5 * GIB, "budget_bytes": 20 * GIB, "images": 42, "last_collection": NOW - 1800, "hits": None,
              "misses": None, "upstream_pulls": None, "metrics_error": None}
    return {"changed": False, "failed": False, "invocation": {"module_args": {"config_dir": "/etc/registry"}},
            "checked_at": NOW, "unit": "active", "role_mode": "edge", "version": "3.1.1", "mirrors": [mirror],
            "certificates": {"actuated": {"path": "/var/lib/actuated/certs/server.crt", "days_left": 60}}, "errors": [],
            "attention": [], **overrides}


def test_the_filters_are_registered() -> None:
    assert FilterModule().filters() == {"status_table": status_table, "status_report": status_report}


def test_attention_first_then_by_name_and_no_ansible_keys() -> None:
    sick = result(attention=["the registry unit is not running (failed)"])
    report = status_report({"b-ok": result(), "a-ok": result(), "z-sick": sick,
                            "c-gone": {"unreachable": True, "msg": "Failed to connect to the host via ssh\n"},
                            "d-failed": {"failed": True, "msg": "MODULE FAILURE"}, "e-none": {},
                            "f-skipped": {"skipped": True, "changed": False}})
    assert list(report) == ["c-gone", "d-failed", "e-none", "f-skipped", "z-sick", "a-ok", "b-ok"]
    assert report["c-gone"] == {"attention": ["unreachable: Failed to connect to the host via ssh"]}
    assert report["d-failed"] == {"attention": ["the status task failed: MODULE FAILURE"]}
    assert report["e-none"] == {"attention": ["no status: the task did not run on this host"]}
    assert report["f-skipped"] == {"attention": ["the status task failed: skipped"]}
    assert set(report["a-ok"]) == {"checked_at", "unit", "role_mode", "version", "mirrors", "certificates", "errors",
                                   "attention"}


def test_the_table() -> None:
    tier = result(role_mode="tier", certificates={"tier": {"days_left": 9}}, errors=["registry-supervisor: ERROR: x"],
                  attention=["tier certificate expires in 9 days"])
    tier["mirrors"][0].update(hits=120, misses=14, upstream_pulls=3, last_collection=None, budget_bytes=0)
    edge = result()
    edge["mirrors"].append({"name": "ghcr", "mode": "unknown", "mode_since": None, "metrics_error": "refused"})
    assert status_table({"agent-1": edge, "tier-fra": tier, "agent-2": {"unreachable": True, "msg": "timed out"}}) == [
        "HOST      MIRROR      VERSION  MODE          SINCE  UPSTREAM                      CACHE / BUDGET      IMAGES  "
        "COLLECTED   HITS/MISSES  PULLS  CERT  TIER CERT",
        "agent-2   -           -        -             -      -                             -                   -       "
        "-           -            -      -     -",
        "  ! unreachable: timed out",
        "tier-fra  docker-hub  3.1.1    pull-through  3 d    https://registry-1.docker.io  5.0 GiB / none      42      "
        "never       120/14       3      -     9 d",
        "  ! tier certificate expires in 9 days",
        "  | registry-supervisor: ERROR: x",
        "agent-1   docker-hub  3.1.1    pull-through  3 d    https://registry-1.docker.io  5.0 GiB / 20.0 GiB  42      "
        "30 min ago  -            -      60 d  -",
        "agent-1   ghcr        3.1.1    unknown       -      -                             - / none            -       "
        "never       -            -      60 d  -",
        "3 hosts, 2 need attention",
    ]


def test_a_certificate_that_cannot_be_read_and_a_fallback() -> None:
    edge = result(certificates={"actuated": {"error": "missing"}}, attention=["actuated certificate: missing"])
    edge["mirrors"][0].update(upstream_role="fallback")
    lines = status_table({"agent-1": edge})
    assert "fallback https://registry-1.docker.io" in lines[1] and lines[1].split()[-2:] == ["error", "-"]


def test_an_empty_fleet() -> None:
    assert status_table({}) == ["HOST  MIRROR  VERSION  MODE  SINCE  UPSTREAM  CACHE / BUDGET  IMAGES  COLLECTED  "
                                "HITS/MISSES  PULLS  CERT  TIER CERT", "0 hosts, none needs attention"]
    assert status_report({}) == {}
