# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations

# The filters' documentation: status_table.yml and status_report.yml (one file per filter, as ansible-doc reads them).

import time
import typing as t

from ansible_collections.actuated.registry.plugins.module_utils._status import duration, size

# What a report keeps of a registered result: what registry_status returns, and nothing of Ansible's own keys.
FIELDS = ("checked_at", "unit", "role_mode", "version", "mirrors", "certificates", "errors", "fact_error", "attention")
COLUMNS = ("HOST", "MIRROR", "VERSION", "MODE", "SINCE", "UPSTREAM", "CACHE / BUDGET", "IMAGES", "COLLECTED",
           "HITS/MISSES", "PULLS", "CERT", "TIER CERT")


def host_report(result: t.Any) -> dict:
    """One host's registered result as a report: registry_status's fields; for a host without a result, unreachable or
    failed, why, in attention."""
    if not isinstance(result, t.Mapping) or not result:
        return {"attention": ["no status: the task did not run on this host"]}
    if result.get("unreachable"):
        return {"attention": [f"unreachable: {str(result.get('msg', '')).strip()}"]}
    if result.get("failed") or result.get("skipped") or "mirrors" not in result:
        why = "skipped" if result.get("skipped") else str(result.get("msg", "no result")).strip()
        return {"attention": [f"the status task failed: {why}"]}
    report = {key: result[key] for key in FIELDS if key in result}
    report["attention"] = list(report.get("attention") or [])
    return report


def status_report(statuses: t.Mapping[str, t.Any]) -> dict:
    """{host: report}, hosts that need attention first, each part by name."""
    reports = {str(host): host_report(result) for host, result in (statuses or {}).items()}
    return {host: reports[host] for host in sorted(reports, key=lambda host: (not reports[host]["attention"], host))}


def _ago(when: t.Any, now: float) -> str:
    return "never" if not when else f"{duration(now - float(when))} ago"


def _days(cert: t.Any) -> str:
    if not isinstance(cert, t.Mapping):
        return "-"
    return "error" if cert.get("error") else f"{cert.get('days_left')} d"


def _count(value: t.Any) -> str:
    return "-" if value is None else str(value)


def mirror_row(host: str, report: t.Mapping[str, t.Any], mirror: t.Mapping[str, t.Any]) -> list[str]:
    """A table row of one mirror of HOST."""
    now = float(report.get("checked_at") or time.time())
    certs = report.get("certificates") or {}
    upstream = mirror.get("upstream") or "-"
    if mirror.get("upstream_role") not in (None, "upstream"):
        upstream = f"{mirror['upstream_role']} {upstream}"
    since = mirror.get("mode_since")
    hits, misses = mirror.get("hits"), mirror.get("misses")
    return [host, str(mirror.get("name", "?")), str(mirror.get("version") or report.get("version") or "-"),
            str(mirror.get("mode", "unknown")), duration(now - float(since)) if since else "-", upstream,
            f"{size(mirror.get('cache_bytes'))} / {size(mirror.get('budget_bytes')) if mirror.get('budget_bytes') else 'none'}",
            _count(mirror.get("images")), _ago(mirror.get("last_collection"), now),
            "-" if hits is None and misses is None else f"{_count(hits)}/{_count(misses)}",
            _count(mirror.get("upstream_pulls")), _days(certs.get("actuated")), _days(certs.get("tier"))]


def status_table(statuses: t.Mapping[str, t.Any]) -> list[str]:
    """The table's lines: a header, then per host its mirrors' rows, its reasons (!) and its journal's lines (|)."""
    reports = status_report(statuses)
    rows: list[tuple[str, t.Any]] = []
    for host, report in reports.items():
        mirrors = report.get("mirrors") or [{}]
        for mirror in mirrors:
            rows.append(("row", mirror_row(host, report, mirror) if report.get("mirrors")
                         else [host] + ["-"] * (len(COLUMNS) - 1)))
        rows.extend(("note", f"  ! {reason}") for reason in report["attention"])
        rows.extend(("note", f"  | {line}") for line in report.get("errors") or [])
    cells = [list(COLUMNS)] + [row for kind, row in rows if kind == "row"]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]

    def line(row: t.Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    attention = sum(1 for report in reports.values() if report["attention"])
    summary = (f"{len(reports)} hosts, {attention} need attention" if attention
               else f"{len(reports)} hosts, none needs attention")
    return [line(COLUMNS)] + [line(row) if kind == "row" else row for kind, row in rows] + [summary]


class FilterModule:
    """actuated.registry's filters for the status playbook."""

    def filters(self) -> dict:
        return {"status_table": status_table, "status_report": status_report}
