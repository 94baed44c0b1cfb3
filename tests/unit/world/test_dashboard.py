# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""world/dashboard.py: Grafana's variables substituted into the shipped dashboard's queries as Grafana would, every
panel of it drawn (each of its types, with data and without), and the whole way from a capture to a PNG with the real
promtool and Prometheus: blocks, a server on a loopback port, each panel's queries, the picture and its sidecar, and
nothing left running or on disk."""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import fake_fleet
import pytest

from world import dashboard as dash
from world import deps
from world import metrics_capture as mc

SHIPPED = json.loads(dash.DASHBOARD.read_text(encoding="utf-8"))
HOUR = dash.Window(1.7e9, 1.7e9 + 7200, 15.0)


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found, queue = [], list(dashboard["panels"])
    while queue:
        panel = queue.pop(0)
        found.append(panel)
        queue += panel.get("panels", [])
    return found


@pytest.mark.parametrize(("expr", "expected"), [
    ('x{site=~"$site", instance=~"${instance}"}[$__rate_interval]', 'x{site=~".*", instance=~"a|b"}[60s]'),
    ("increase(x[$__range]) / increase(y[$__range_s])", "increase(x[7200s]) / increase(y[7200])"),
    ("rate(x[$__interval]) + [[mirror]] + ${mirror:regex}", "rate(x[15s]) + docker-hub + docker-hub"),
])
def test_variables_are_substituted(expr: str, expected: str) -> None:
    """$name, ${name}, ${name:format}, [[name]] and the built-ins (a longer name is never read as a shorter one:
    $__range_s is not $__range followed by _s)."""
    names = {"site": ".*", "instance": "a|b", "mirror": "docker-hub", **dash.builtins(HOUR, 15)}
    assert dash.substitute(expr, names) == expected


def test_an_unknown_variable_fails() -> None:
    """A query is never sent with a variable left in."""
    with pytest.raises(dash.DashboardError, match=r"\$cluster"):
        dash.substitute('x{cluster="$cluster"}', {"site": ".*"})


def test_intervals_as_grafana_computes_them() -> None:
    """$__interval: the range over the panel's width in pixels, rounded up to a nice interval, never below the scrape
    interval nor the panel's own min interval; $__rate_interval: at least four scrapes."""
    assert dash.panel_interval(HOUR, 900, 15) == 15  # 8 s a pixel: the scrape interval
    assert dash.panel_interval(dash.Window(0, 86400, 15), 900, 15) == 120  # 96 s a pixel
    assert dash.builtins(HOUR, 15)["__rate_interval"] == "60s"
    assert dash.builtins(HOUR, 120)["__rate_interval"] == "135s"
    assert dash.builtins(dash.Window(0, 1.5, 0.25), 0.25)["__interval"] == "250ms"
    assert [dash.seconds(x) for x in ("1m", "30s", ">2h", "", None, "500ms")] == [60, 30, 7200, 0, 0, 0.5]
    with pytest.raises(dash.DashboardError):
        dash.seconds("soon")


def test_the_shipped_dashboards_variables_at_all() -> None:
    """Site, host and mirror at All are their allValue; the data source is the Prometheus drawn with; values chosen
    are a regex of them, escaped."""
    def no_lookup(selector: str, label: str) -> list[str]:
        raise AssertionError(f"allValue set: no label_values({selector}, {label})")
    assert dash.template_values(SHIPPED, no_lookup, {}) == {"DS_PROMETHEUS": "prometheus", "site": ".*",
                                                            "instance": ".*", "mirror": ".*"}
    chosen = dash.template_values(SHIPPED, no_lookup, {"instance": ["edge-a1", "tier.a"], "site": ["a"]})
    assert chosen["instance"] == r"(edge-a1|tier\.a)" and chosen["site"] == "a"


def test_all_without_allvalue_asks_for_the_label_values() -> None:
    """A multi-value variable at All without allValue: every value its label_values() query finds, the variables
    before it substituted into the selector."""
    dashboard = json.loads(json.dumps(SHIPPED))
    for variable in dashboard["templating"]["list"]:
        variable.pop("allValue", None)
    asked: list[tuple[str, str]] = []

    def label_values(selector: str, label: str) -> list[str]:
        asked.append((selector, label))
        return {"site": ["a", "b"], "instance": ["edge-a1"], "mirror": ["docker-hub", "ghcr"]}[label]
    found = dash.template_values(dashboard, label_values, {})
    assert found["site"] == "(a|b)" and found["instance"] == "edge-a1" and found["mirror"] == "(docker-hub|ghcr)"
    assert asked[1] == ('registry_mirror_read_only{site=~"(a|b)"}', "instance")


@pytest.mark.parametrize(("value", "unit", "decimals", "text"), [
    (0.9312, "percentunit", 1, "93.1%"), (3 * 1024**3, "bytes", None, "3 GiB"), (1536, "bytes", None, "1.5 KiB"),
    (2.5e6, "Bps", None, "2.5 MB/s"), (12, "short", 0, "12"), (15300, "short", None, "15.3 K"),
    (None, "short", None, "No data"), (math.nan, "bytes", None, "No data"), (90, "s", None, "1.5 min"),
])
def test_units(value: float | None, unit: str, decimals: int | None, text: str) -> None:
    """Values in the dashboard's units as Grafana shows them."""
    assert dash.format_value(value, unit, decimals) == text


def test_every_panel_type_of_the_dashboard_can_be_drawn() -> None:
    """Each type the shipped dashboard uses has a drawing; a type the picture cannot draw fails, naming the panel."""
    assert {p["type"] for p in all_panels(SHIPPED)} <= set(dash.SUPPORTED) == set(dash.drawers())
    pie = {"type": "piechart", "title": "Pie", "id": 99, "gridPos": {"x": 0, "y": 40, "w": 4, "h": 4}}
    broken = {"panels": [*SHIPPED["panels"], pie]}
    with pytest.raises(dash.DashboardError, match="'Pie' \\(piechart\\)"):
        dash.panels_of(broken)


def made_up(panel: dict[str, Any], window: dash.Window, *, empty: bool) -> dash.PanelData:
    """Two series per target, as a query of the panel could return them (or none)."""
    series = []
    times = [window.start + i * 60 for i in range(int(window.range // 60) + 1)]
    for target in [] if empty else panel.get("targets", []):
        for host in ("edge-a1", "tier-b"):
            labels = {"instance": host, "mirror": "docker-hub", "site": host[-1]}
            values = [float(i % 2) if panel["type"] == "state-timeline" else 1e6 * (1 + math.sin(i / 9))
                      for i in range(len(times))]
            series.append(dash.Series(dash.legend_name(target.get("legendFormat", ""), labels), labels, times,
                                      values, target["refId"]))
    return dash.PanelData(panel, series, [], 60)


@pytest.mark.parametrize("empty", [False, True], ids=["data", "no-data"])
def test_every_panel_is_drawn(empty: bool) -> None:
    """Every panel of the shipped dashboard, rows too, is drawn, with data and with none (No data)."""
    panels = dash.panels_of(SHIPPED)
    assert len(panels) == len(all_panels(SHIPPED))
    datas = [made_up(panel, HOUR, empty=empty) for panel in panels]
    fig, drawn = dash.draw(SHIPPED, datas, HOUR, "Site [All]", "made up")
    assert sorted(drawn) == sorted(p["id"] for p in all_panels(SHIPPED))
    texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    titles = [p["title"] for p in all_panels(SHIPPED)]
    assert all(title in texts for title in titles)
    assert ("No data" in texts) == empty


def test_overrides_apply_by_regexp() -> None:
    """The dashboard's overrides: saved pulls and pulled bytes below the axis, the budget dashed, free space hidden,
    bytes reclaimed on the right axis in bytes."""
    by_title = {p["title"]: p for p in all_panels(SHIPPED)}

    def settings(title: str, name: str) -> dict[str, Any]:
        return dash.style(by_title[title], dash.Series(name, {}, [], []))
    assert settings("Upstream pulls made and saved", "edge-a1 docker-hub saved")["transform"] == "negative-Y"
    assert "transform" not in settings("Upstream pulls made and saved", "edge-a1 docker-hub made")
    assert settings("Cache size against budget", "h m budget")["lineStyle"]["fill"] == "dash"
    assert settings("Cache size against budget", "h m free")["hideFrom"]["viz"] is True
    reclaimed = settings("Evictions and collections", "h m reclaimed")
    assert reclaimed["axisPlacement"] == "right" and reclaimed["unit"] == "bytes"


def tools_or_skip() -> None:
    if deps.promtool() is None or deps.prometheus() is None:
        pytest.skip("no promtool or prometheus (make deps, or python3 -m world promtool, extracts them from Debian's "
                    "prometheus package)")


def synthetic_capture(path: Path, start: float) -> None:
    """Two hours of the made-up fleet every minute, through the capture's own code."""
    keep = mc.dashboard_names(mc.DASHBOARD) | {"up"}
    capture = mc.Capture(keep.__contains__)
    sources = [mc.Source(mc.parse_source_labels(host.labels, mc.JOB), url="synthetic") for host in fake_fleet.FLEET]
    for host, source in zip(fake_fleet.FLEET, sources, strict=True):
        for minute in range(121):
            capture.add(mc.parse_exposition(fake_fleet.exposition(host, minute)), source.labels, start + minute * 60)
            capture.up(source.labels, start + minute * 60, 1.0)
    mc.write_capture(path, capture, sources, {"start_seconds": start, "end_seconds": start + 7200,
                                              "interval_seconds": 60})


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("dashboard-*")}


def test_render_end_to_end_with_prometheus(tmp_path: Path) -> None:
    """A capture made long ago (older than any retention) to a PNG: every panel drawn, every query answered with
    series, the sidecar naming the capture and the dashboard; the server stopped and its directory gone after. (A
    min interval of three scrapes: increase(...[$__interval]) needs two samples in its window, as in Grafana.)"""
    tools_or_skip()
    before = leftovers()
    capture = tmp_path / "capture.om.gz"
    synthetic_capture(capture, 1.6e9)
    out = tmp_path / "dashboard.png"
    data = dash.render(capture, dash.DASHBOARD, out, min_interval=180)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(data["drawn"]) == sorted(p["id"] for p in all_panels(SHIPPED))
    assert data["variables"]["instance"] == ".*" and data["prometheus"]
    queries = [q for p in data["panels"] for q in p["queries"]]
    assert len(queries) == sum(len(p.get("targets", [])) for p in all_panels(SHIPPED))
    assert all(q["series"] > 0 for q in queries), [q["expr"] for q in queries if not q["series"]]
    assert all("$" not in q["expr"] for q in queries)
    assert json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) == data
    assert data["capture_sidecar"] and data["window"]["start"] == "2020-09-13T12:26:40Z"
    assert leftovers() == before


def test_the_server_is_stopped_even_when_drawing_fails(tmp_path: Path) -> None:
    """An error inside the block (a query Prometheus refuses) stops the server and removes its directory."""
    tools_or_skip()
    before = leftovers()
    capture = tmp_path / "capture.om"
    synthetic_capture(capture, 1.7e9)
    port = 0
    with pytest.raises(dash.DashboardError, match="parse error"), dash.serve_capture(capture) as server:
        port = int(server.url.rsplit(":", 1)[1])
        assert server.label_values("up", "instance") == sorted(h.instance for h in fake_fleet.FLEET)
        server.query("rate(up[", 1.7e9)
    assert port and leftovers() == before
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_capture_promtool_refuses_fails_clearly(tmp_path: Path) -> None:
    """promtool's own words, and nothing started."""
    tools_or_skip()
    capture = tmp_path / "bad.om"
    capture.write_text("this is no exposition\n", encoding="utf-8")
    with pytest.raises(dash.DashboardError, match="promtool refused"), dash.serve_capture(capture):
        pass
    assert os.path.exists(capture)
