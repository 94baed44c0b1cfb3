# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The Prometheus rules (extras/prometheus/) and the Grafana dashboard (extras/grafana/) name only metrics the mirror
exports: the supervisor's, as its own metrics code renders them, and distribution's, as its 3.1.1 source names them.
Renaming or dropping a metric in the supervisor fails this test until the rules and the dashboard follow.
`promtool check rules` (make lint) checks the rules' syntax; this checks their vocabulary."""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import types
import typing as t
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "roles" / "registry_mirror" / "files"
RULES = REPO / "extras" / "prometheus" / "registry-mirror.rules.yml"
DASHBOARD = REPO / "extras" / "grafana" / "registry-mirror.json"

# distribution's own metrics, which the supervisor appends to its /metrics when registry_mirror_metrics_enabled
# (config.yml.j2 turns on http.debug.prometheus). Names and types as distribution v3.1.1 defines them, with the
# vendored github.com/docker/go-metrics, which names counters NAME_total and timers NAME_seconds (histograms):
#   registry/proxy/proxymetrics.go      registry_proxy_* (label type: blob, manifest)
#   registry/handlers/app.go (register) + go-metrics namespace.go NewDefaultHttpMetrics: registry_http_* (labels
#                                       handler: base, manifest, blob, tags, catalog, blob_upload...; code; method)
#   notifications/metrics.go            registry_notifications_*
#   registry/storage/driver/base/base.go registry_storage_action_seconds
#   registry/storage/cache/cachedblobdescriptorstore.go registry_storage_cache_*
# Only the metrics of the prometheus namespace of distribution/metrics/prometheus.go exist; check a new one there.
DISTRIBUTION = {
    "registry_proxy_requests_total": "counter",
    "registry_proxy_hits_total": "counter",
    "registry_proxy_misses_total": "counter",
    "registry_proxy_pulled_bytes_total": "counter",
    "registry_proxy_pushed_bytes_total": "counter",
    "registry_http_in_flight_requests": "gauge",
    "registry_http_requests_total": "counter",
    "registry_http_request_duration_seconds": "histogram",
    "registry_http_request_size_bytes": "histogram",
    "registry_http_response_size_bytes": "histogram",
    "registry_notifications_events_total": "counter",
    "registry_notifications_pending_total": "gauge",
    "registry_notifications_status_total": "counter",
    "registry_storage_action_seconds": "histogram",
    "registry_storage_cache_requests_total": "counter",
    "registry_storage_cache_hits_total": "counter",
    "registry_storage_cache_errors_total": "counter",
}
# Series Prometheus itself writes for every scrape target (the rules' "mirror down").
PROMETHEUS = {"up": "gauge"}

# PromQL's functions and aggregation operators (Prometheus 2.x): a name followed by "(" must be one of these.
FUNCTIONS = frozenset((
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg", "avg_over_time",
    "bottomk", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "cos",
    "cosh", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor",
    "group", "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar",
    "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "mad_over_time", "max", "max_over_time", "min", "min_over_time", "minute",
    "month", "pi", "predict_linear", "present_over_time", "quantile", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar",
    "stdvar_over_time", "sum", "sum_over_time", "tan", "tanh", "time", "timestamp", "topk", "vector", "year",
))
KEYWORDS = frozenset(("and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                      "group_right", "inf", "nan"))
# Grafana's template variable queries that take a PromQL series selector first (label_values(SELECTOR, LABEL)).
GRAFANA_QUERY = re.compile(r"^\s*(?:label_values|query_result)\s*\((.*?)(?:,\s*\w+\s*)?\)\s*$", re.DOTALL)

STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGES = re.compile(r"\[[^\[\]]*\]")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
MODIFIERS = re.compile(r"\boffset\s+-?\w+|@\s*(?:start\s*\(\s*\)|end\s*\(\s*\)|[\d.]+)")
VARIABLES = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: every identifier that is not a function, an aggregation, a keyword,
    a label (inside {} or a by/without/on/ignoring/group_x list), a string, a duration or a Grafana variable. A name
    followed by "(" that PromQL does not know fails (a misspelt function would hide a metric)."""
    text = STRINGS.sub('""', expr)
    text = MATCHERS.sub(" ", text)
    text = RANGES.sub(" ", text)
    text = GROUPING.sub(" ", text)
    text = MODIFIERS.sub(" ", text)
    text = VARIABLES.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if name in KEYWORDS:
            continue
        if call:
            assert name in FUNCTIONS, f"{name}(...) is no PromQL function or aggregation: in {expr!r}"
        else:
            names.add(name)
    return names


def load_listener() -> types.ModuleType:
    """registry_listener, the module of registry-supervisor that holds its metrics, as tests/unit/files imports it."""
    if str(FILES) not in sys.path:
        sys.path.insert(0, str(FILES))  # registry_cache and the supervisor's other modules, which it imports
    return importlib.import_module("registry_listener")


def declared_types(exposition: str) -> dict[str, str]:
    """NAME -> TYPE of the `# TYPE NAME TYPE` lines of a Prometheus text exposition."""
    return {line.split()[2]: line.split()[3] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def supervisor_metrics() -> dict[str, str]:
    """What the supervisor's /metrics declares, rendered by its own code (fallbacks set and the caching front's log
    read: every metric it has)."""
    metrics = load_listener().Metrics(fallbacks=True, front=True)
    return declared_types(metrics.text())


def series_names(types_by_name: dict[str, str]) -> set[str]:
    """The names of the series a family exposes: a histogram's _bucket, _sum and _count, a summary's _sum and
    _count besides its own name."""
    names = set()
    for name, kind in types_by_name.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {f"{name}_sum", f"{name}_count"}
    return names


def exported() -> set[str]:
    """Every series name a rule or a panel may select."""
    return series_names({**supervisor_metrics(), **DISTRIBUTION, **PROMETHEUS})


def rule_expressions(rules: dict[str, t.Any]) -> dict[str, str]:
    """Alert or record name -> expression, over every group."""
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_expressions(dashboard: dict[str, t.Any]) -> dict[str, str]:
    """Where -> expression: every target of every panel (rows' nested panels too) and every query variable."""
    found = {}
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        for target in panel.get("targets", []):
            found[f"panel {panel['id']} {panel['title']!r} target {target['refId']}"] = target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = GRAFANA_QUERY.match(query)
            found[f"variable {variable['name']}"] = selector.group(1) if selector else query
    return found


def unknown_metrics(rules: dict[str, t.Any], dashboard: dict[str, t.Any]) -> list[str]:
    """'WHERE: NAME' for each metric a rule or the dashboard names that the mirror does not export."""
    known = exported()
    expressions = {**{f"rule {k}": v for k, v in rule_expressions(rules).items()}, **dashboard_expressions(dashboard)}
    return [f"{where}: {name}" for where, expr in expressions.items() for name in sorted(metric_names(expr) - known)]


def load_rules() -> dict[str, t.Any]:
    """The shipped rules file."""
    rules: dict[str, t.Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return rules


def load_dashboard() -> dict[str, t.Any]:
    """The shipped dashboard."""
    dashboard: dict[str, t.Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


@pytest.mark.parametrize(("expr", "names"), [
    ("up{job=\"registry-mirror\"} == 0", {"up"}),
    ("sum by (instance, mirror) (rate(registry_proxy_hits_total{type=\"blob\", instance=~\"$instance\"}"
     "[$__rate_interval])) / on (instance) group_left (site) sum without (type) (registry_proxy_requests_total)",
     {"registry_proxy_hits_total", "registry_proxy_requests_total"}),
    ("max_over_time(registry_mirror_read_only[1h]) unless registry_mirror_read_only offset 5m",
     {"registry_mirror_read_only"}),
    ("time() - registry_mirror_cache_last_collection_timestamp_seconds > 1.5e3 and bool inf",
     {"registry_mirror_cache_last_collection_timestamp_seconds"}),
    ("histogram_quantile(0.9, sum by (le) (rate(registry_http_request_duration_seconds_bucket[5m:1m])))",
     {"registry_http_request_duration_seconds_bucket"}),
    ("label_replace(registry_mirror_free_bytes, \"host\", \"$1\", \"instance\", \"(.*):.*\") > ${threshold}",
     {"registry_mirror_free_bytes"}),
    ("sum(registry_mirror_read_only{mirror=~\"by|on|rate(x)\"}) or vector(0)", {"registry_mirror_read_only"}),
])
def test_metric_names_finds_metrics_only(expr: str, names: set[str]) -> None:
    """Functions, keywords, labels, strings, durations, numbers and Grafana variables are not metric names."""
    assert metric_names(expr) == names


def test_metric_names_refuses_an_unknown_function() -> None:
    """A name followed by "(" is a function: a misspelt one fails instead of passing unnoticed."""
    with pytest.raises(AssertionError, match="rates"):
        metric_names("rates(registry_proxy_hits_total[5m])")


def test_the_supervisor_renders_its_metrics() -> None:
    """The exported set is read from the supervisor itself: its cache metrics are there (a sanity check of the
    rendering this test relies on, not a list to keep up to date)."""
    names = supervisor_metrics()
    assert "registry_mirror_read_only" in names
    assert "registry_mirror_cache_bytes" in names
    assert all(name.startswith("registry_mirror_") for name in names)


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    """Every metric of every alert, panel and template variable is one the mirror exports."""
    rules, dashboard = load_rules(), load_dashboard()
    assert rule_expressions(rules) and dashboard_expressions(dashboard)
    assert unknown_metrics(rules, dashboard) == []


def _rename_in_rule(rules: dict[str, t.Any], _dashboard: dict[str, t.Any]) -> str:
    rule = rules["groups"][0]["rules"][2]
    rule["expr"] = rule["expr"].replace("registry_mirror_read_only", "registry_mirror_readonly")
    return "registry_mirror_readonly"


def _new_rule(rules: dict[str, t.Any], _dashboard: dict[str, t.Any]) -> str:
    rules["groups"][0]["rules"].append({"alert": "Gone", "expr": "rate(registry_mirror_cache_evicted_total[5m]) > 0"})
    return "registry_mirror_cache_evicted_total"


def _grouped_rule(rules: dict[str, t.Any], _dashboard: dict[str, t.Any]) -> str:
    rules["groups"][0]["rules"][0]["expr"] = "sum by (instance) (registry_proxy_hit_total) unless on (mirror) up"
    return "registry_proxy_hit_total"


def _histogram_suffix(rules: dict[str, t.Any], _dashboard: dict[str, t.Any]) -> str:
    rules["groups"][0]["rules"][0]["expr"] = "rate(registry_http_requests_total_sum[5m]) > 0"
    return "registry_http_requests_total_sum"


def _panel_target(_rules: dict[str, t.Any], dashboard: dict[str, t.Any]) -> str:
    panel = next(panel for panel in dashboard["panels"] if panel.get("targets"))
    panel["targets"][0]["expr"] = "sum(registry_mirror_cache_size_bytes{instance=~\"$instance\"})"
    return "registry_mirror_cache_size_bytes"


def _variable(_rules: dict[str, t.Any], dashboard: dict[str, t.Any]) -> str:
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "instance")
    variable["query"]["query"] = "label_values(registry_mirror_mode{site=~\"$site\"}, instance)"
    return "registry_mirror_mode"


Mutation = t.Callable[[dict[str, t.Any], dict[str, t.Any]], str]


@pytest.mark.parametrize("mutate", [_rename_in_rule, _new_rule, _grouped_rule, _histogram_suffix, _panel_target,
                                    _variable], ids=lambda mutate: mutate.__name__.strip("_"))
def test_a_metric_the_mirror_does_not_export_fails(mutate: Mutation) -> None:
    """The check above fails, naming the metric, when a rule, a panel or a variable names a metric nobody exports."""
    rules, dashboard = copy.deepcopy(load_rules()), copy.deepcopy(load_dashboard())
    missing = mutate(rules, dashboard)
    problems = unknown_metrics(rules, dashboard)
    assert problems and all(problem.endswith(f": {missing}") for problem in problems), problems


def test_every_alert_names_its_host_and_mirror() -> None:
    """Each alert has a severity and a summary and a description that name the host and the mirror."""
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            for text in (rule["annotations"]["summary"], rule["annotations"]["description"]):
                assert "{{ $labels.instance }}" in text and "{{ $labels.mirror }}" in text, rule["alert"]


def test_the_dashboard_is_importable() -> None:
    """The shape Grafana's import and file provisioning need: the data source is the variable DS_PROMETHEUS in every
    panel and target, variables for site, host and mirror, unique panel ids and refIds, panels inside the 24-column
    grid, and per-host and per-site panels for each thing the dashboard promises."""
    dashboard = load_dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"site", "instance", "mirror"} <= set(variables)
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["datasource"] == source for target in panel["targets"]), panel["title"]
        filtered = all("$instance" in target["expr"] and "$site" in target["expr"] for target in panel["targets"])
        assert filtered, panel["title"]
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for promised in ("hit ratio", "pulls made", "saved", "bytes served", "cache size against budget", "mode",
                     "evict", "per site"):
        assert promised in titles, promised


# --- What the dashboard's counts add up to (promtool evaluates its expressions) ---------------------------------------

# promtool as `make rules` finds it: on PATH, or the one `make deps` extracts.
PROMTOOL = shutil.which("promtool") or str(Path(os.environ.get("WORLD_CACHE", "/var/cache/actuated-world"))
                                           / "tools" / "promtool")
# The Grafana variables, as the dashboard's defaults (All) and a 10-minute time range give them.
GRAFANA_VALUES = {"site": ".*", "instance": ".*", "mirror": ".*", "__range": "10m", "__rate_interval": "10m",
                  "__interval": "10m"}
# Each counter's increase per minute for 10 minutes (multiples of 15: per-second rates exact in binary).
# agent-1 (fra): distribution's metrics and the caching front; its front answered 90 requests a minute itself.
FRONT_ON = {
    "registry_proxy_requests_total": {"manifest": 45, "blob": 105},
    "registry_proxy_hits_total": {"manifest": 30, "blob": 60},
    "registry_proxy_misses_total": {"manifest": 15, "blob": 45},
    "registry_http_response_size_bytes_sum": {"manifest": 750, "blob": 7500, "base": 135},
    "registry_mirror_front_requests_total": 165, "registry_mirror_front_cache_hits_total": 45,
    "registry_mirror_front_cache_stale_total": 15, "registry_mirror_front_blobs_from_disk_total": 30,
    "registry_mirror_front_cache_misses_total": 75, "registry_mirror_front_bytes_served_total": 1500,
}
# agent-2 (fra): distribution's metrics, no front (registry_mirror_front: false).
FRONT_OFF = {
    "registry_proxy_requests_total": {"manifest": 15, "blob": 45},
    "registry_proxy_hits_total": {"manifest": 15, "blob": 15},
    "registry_proxy_misses_total": {"manifest": 0, "blob": 30},
    "registry_http_response_size_bytes_sum": {"manifest": 300, "blob": 2700},
}
# agent-3 (ber): the front without distribution's metrics (registry_mirror_metrics_enabled false, the default): the
# panels that need those leave it out, as they did before the front.
FRONT_ONLY = {name: value for name, value in FRONT_ON.items() if name.startswith("registry_mirror_front_")}
# agent-4 (ber): as agent-2, another hit ratio.
FRONT_OFF_2 = {
    "registry_proxy_requests_total": {"manifest": 15, "blob": 45},
    "registry_proxy_hits_total": {"manifest": 15, "blob": 30},
    "registry_http_response_size_bytes_sum": {"manifest": 150, "blob": 1350},
}
# (panel id, refId) of the hit ratio, upstream pulls saved and bytes served: what each gives over the 10 minutes.
HOST_1, HOST_2, HOST_4 = ({"instance": f"agent-{n}", "mirror": "docker-hub"} for n in (1, 2, 4))
COUNTED = {
    # agent-1: (900 + 900 front) / (1500 + 900 front); agent-2: 300 / 600. fra and all: (1800 + 300) / (2400 + 600).
    "with the front": ({"agent-1": ("fra", FRONT_ON), "agent-2": ("fra", FRONT_OFF), "agent-3": ("ber", FRONT_ONLY)}, {
        (2, "A"): [({}, 0.7)], (8, "A"): [({"site": "fra"}, 0.7)],
        (12, "A"): [(HOST_1, 0.75), (HOST_2, 0.5)],
        # Manifests: 300 distribution's hits + 600 the front's (hits and stale) on agent-1, 150 on agent-2.
        (3, "B"): [({}, 1050)], (9, "B"): [({"site": "fra"}, 1050)], (13, "B"): [(HOST_1, 900), (HOST_2, 150)],
        # Bytes: 82500 distribution's + 15000 the front's on agent-1 (per second: / 600), 30000 on agent-2.
        (4, "A"): [({}, 127500)], (10, "A"): [({"site": "fra"}, 127500)], (14, "A"): [(HOST_1, 162.5), (HOST_2, 50)],
    }),
    # Without the front anywhere: distribution's figures alone, as before the front.
    "without the front": ({"agent-2": ("fra", FRONT_OFF), "agent-4": ("ber", FRONT_OFF_2)}, {
        (2, "A"): [({}, 0.625)], (8, "A"): [({"site": "ber"}, 0.75), ({"site": "fra"}, 0.5)],
        (12, "A"): [(HOST_2, 0.5), (HOST_4, 0.75)],
        (3, "B"): [({}, 300)], (9, "B"): [({"site": "ber"}, 150), ({"site": "fra"}, 150)],
        (13, "B"): [(HOST_2, 150), (HOST_4, 150)],
        (4, "A"): [({}, 45000)], (10, "A"): [({"site": "ber"}, 15000), ({"site": "fra"}, 30000)],
        (14, "A"): [(HOST_2, 50), (HOST_4, 25)],
    }),
}


def grafana_free(expr: str) -> str:
    """EXPR with the dashboard's variables replaced by their values (GRAFANA_VALUES)."""
    return re.sub(r"\$(\w+)", lambda variable: GRAFANA_VALUES[variable.group(1)], expr)


def input_series(hosts: dict[str, tuple[str, dict[str, t.Any]]]) -> list[dict[str, str]]:
    """promtool's input series: each host's counters (HOSTS: name -> (site, {metric: per minute, or by type or
    handler})), scraped every minute for 10 minutes."""
    series = []
    for host, (site, counters) in hosts.items():
        labels = f'job="registry-mirror", instance="{host}", mirror="docker-hub", site="{site}"'
        for name, steps in counters.items():
            label = "handler" if name.startswith("registry_http_") else "type"
            for extra, step in (steps.items() if isinstance(steps, dict) else [(None, steps)]):
                selector = f'{name}{{{labels}, {label}="{extra}"}}' if extra else f"{name}{{{labels}}}"
                series.append({"series": selector, "values": f"0+{step}x10"})
    return series


def label_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"


@pytest.mark.parametrize("case", sorted(COUNTED))
def test_the_dashboard_counts_the_front_s_answers_once(case: str, tmp_path: Path) -> None:
    """The hit ratio, the upstream pulls saved and the bytes served, overall, per site and per host, evaluated by
    promtool on counters of known increase: with the front, its own answers are added host by host (a host without
    distribution's metrics stays out, as before); without it, the figures are distribution's alone."""
    if not os.access(PROMTOOL, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"no promtool ({PROMTOOL}): `make deps` extracts it")
        pytest.skip(f"no promtool ({PROMTOOL}): `make deps` extracts it")
    hosts, expected = COUNTED[case]
    targets = {(panel["id"], target["refId"]): target["expr"]
               for panel in load_dashboard()["panels"] for target in panel.get("targets", [])}
    tests = [{"interval": "1m", "input_series": input_series(hosts), "promql_expr_test": [
        {"expr": grafana_free(targets[key]), "eval_time": "10m",
         "exp_samples": [{"labels": label_text(labels), "value": value} for labels, value in samples]}
        for key, samples in expected.items()]}]
    spec = tmp_path / "dashboard.test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests}), encoding="utf-8")
    proc = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
