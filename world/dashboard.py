# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""A picture of the Grafana dashboard (extras/grafana/registry-mirror.json) drawn from a capture of real metrics
(world/metrics_capture.py) without Grafana: the capture is backfilled into Prometheus blocks (`promtool tsdb
create-blocks-from openmetrics`), a Prometheus server (Debian's, as `make deps` extracts it) serves them on a loopback
port for as long as the drawing takes, each panel's own PromQL is asked of it with the dashboard's variables
substituted as Grafana would ($site, $instance, $mirror at All; $__range, $__interval, $__rate_interval), and
matplotlib draws every panel where its gridPos puts it: stats, bar gauges, time series, state timelines. A panel type
it cannot draw fails the drawing (no panel is left out silently).

    .venv/bin/python -m world.dashboard --capture docs/dashboard/capture.om.gz --out docs/dashboard/dashboard.png

Writes the PNG and a JSON sidecar beside it (which capture, which dashboard, which Prometheus, each panel's queries
as sent and how many series each returned). `make dashboard` runs it on the committed capture.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import math
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import REPO
from .deps import prometheus, promtool
from .metrics_capture import iso, metadata_path
from .util import WorldError, log, sha256_file, write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DASHBOARD = REPO / "extras" / "grafana" / "registry-mirror.json"
# Grafana's grid: 24 columns; a height unit is 30 px and panels keep a margin between them (here in pixels).
COLUMN_PX = 75
ROW_PX = 36
MARGIN_PX = 8
HEADER_PX = 70
FOOTER_PX = 28
DPI = 100
# Intervals Grafana-like rounding picks from (seconds): $__interval is the smallest of these at least the panel's
# range divided by its width in pixels (its maxDataPoints), and at least the scrape interval.
NICE_INTERVALS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600,
                  7200, 10800, 21600, 43200, 86400)
# The picture's colours (a dark theme like Grafana's default), and what the dashboard's colour names draw as.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2a2d33"
TEXT = "#d8d9da"
MUTED = "#8e9099"
GRID = "#2c3035"
NAMED_COLORS = {"green": "#4caf62", "orange": "#f0a030", "red": "#e5534b", "blue": "#4f8fe0", "purple": "#a875d6",
                "yellow": "#e0c341", "text": TEXT, "transparent": PANEL}
PALETTE = ("#4f8fe0", "#f0a030", "#4caf62", "#e5534b", "#a875d6", "#3fb8c4", "#e0c341", "#d0679b", "#8f9a4a",
           "#c47a4a")
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
CALC_NAMES = {"mean": "Mean", "max": "Max", "min": "Min", "lastNotNull": "Last *", "last": "Last", "sum": "Total"}
SUPPORTED = ("row", "stat", "bargauge", "timeseries", "state-timeline")


class DashboardError(WorldError):
    """What keeps the dashboard from being drawn."""


@dataclasses.dataclass(frozen=True)
class Window:
    """The time range drawn (the capture's), and the scrape interval the capture was made with (seconds)."""

    start: float
    end: float
    scrape: float

    @property
    def range(self) -> float:
        """Seconds drawn."""
        return self.end - self.start


@dataclasses.dataclass
class Series:
    """One series a query returned: its legend name, labels, and points (a vector's: one)."""

    name: str
    labels: dict[str, str]
    times: list[float]
    values: list[float]
    ref: str = ""

    def last(self) -> float | None:
        """The last value that is a number (Grafana's lastNotNull)."""
        return next((v for v in reversed(self.values) if not math.isnan(v)), None)


def duration(seconds: float) -> str:
    """A Prometheus duration: 90s, 15s, 250ms."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def panel_interval(window: Window, width_px: float, min_interval: float) -> float:
    """$__interval of a panel WIDTH_PX wide: the range over its data points (one per pixel), rounded up to a nice
    interval, and at least MIN_INTERVAL (the data source's scrape interval, or the --min-interval asked)."""
    raw = window.range / max(1.0, width_px)
    nice = next((value for value in NICE_INTERVALS if value >= raw), NICE_INTERVALS[-1])
    return max(nice, min_interval)


def seconds(text: object) -> float:
    """A Grafana interval setting (30s, 1m, 2h, 1d; "" or None: 0) in seconds."""
    match = re.fullmatch(r"\s*>?\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(text or "0"))
    if not match:
        raise DashboardError(f"interval {text!r} is not one Grafana knows")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    return float(match.group(1)) * factor


def builtins(window: Window, interval: float) -> dict[str, str]:
    """Grafana's built-in variables a Prometheus query may use, for one panel."""
    rate = max(interval + window.scrape, 4 * window.scrape)
    return {"__range": duration(round(window.range)), "__range_s": str(round(window.range)),
            "__range_ms": str(round(window.range * 1000)), "__interval": duration(interval),
            "__interval_ms": str(round(interval * 1000)), "__rate_interval": duration(rate)}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """EXPR with $name, ${name}, ${name:format} and [[name]] replaced by VARIABLES; an unknown one fails (a query
    sent with a variable left in would be a PromQL error, or worse, a different query)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise DashboardError(f"no value for the variable ${name} in {expr!r}")
        return variables[name]
    return VARIABLE.sub(value, expr)


def regex_values(values: Sequence[str]) -> str:
    """Several values of a multi-value variable, as Grafana gives them to a Prometheus regex matcher."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


LabelValues = Callable[[str, str], list[str]]


def template_values(dashboard: dict[str, Any], label_values: LabelValues,
                    chosen: dict[str, list[str]]) -> dict[str, str]:
    """The value of each template variable: the CHOSEN values (as a regex of them), else the dashboard's current one;
    All is the variable's allValue, or every value its label_values() query finds (LABEL_VALUES(selector, label)).
    A data source variable is the Prometheus the picture is drawn with. A variable type this does not know fails."""
    variables: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable.get("type")
        current = variable.get("current") or {}
        values = chosen.get(name)
        if kind == "datasource":
            variables[name] = "prometheus"
            continue
        if kind not in ("query", "custom", "constant", "textbox"):
            raise DashboardError(f"variable {name}: type {kind!r} is not supported")
        if values is None:
            raw = current.get("value", variable.get("query", "") if kind in ("constant", "textbox") else "")
            values = raw if isinstance(raw, list) else [str(raw)]
        if "$__all" in values or (not values and variable.get("includeAll")):
            if variable.get("allValue"):
                variables[name] = str(variable["allValue"])
                continue
            values = all_values(variable, label_values, variables)
        variables[name] = regex_values(values) if variable.get("multi") or len(values) > 1 else values[0]
    return variables


def all_values(variable: dict[str, Any], label_values: LabelValues, known: dict[str, str]) -> list[str]:
    """Every value of a variable without allValue: a custom one's list, a query one's label_values(SELECTOR, LABEL)."""
    if variable.get("type") == "custom":
        return [v.strip() for v in str(variable.get("query", "")).split(",") if v.strip()]
    query = variable.get("query", "")
    text = query.get("query", "") if isinstance(query, dict) else str(query)
    match = re.fullmatch(r"\s*label_values\s*\((?:(.*),)?\s*(\w+)\s*\)\s*", text, re.DOTALL)
    if not match:
        raise DashboardError(f"variable {variable['name']}: query {text!r} is not label_values(...)")
    found = label_values(substitute(match.group(1) or "", known).strip(), match.group(2))
    if not found:
        raise DashboardError(f"variable {variable['name']}: {text!r} finds no value in the capture")
    return found


def legend_name(fmt: str, labels: dict[str, str]) -> str:
    """A series' display name: the target's legendFormat with {{label}} filled, else its labels as PromQL writes
    them."""
    if fmt and fmt != "__auto":
        return LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()
    name = labels.get("__name__", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{rest}}}" if rest or not name else name


class Prometheus:
    """The HTTP API of a Prometheus server."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        """The data of an API answer; DashboardError for an error."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # our own loopback server
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        except (OSError, ValueError) as exc:
            raise DashboardError(f"{path}: {exc}") from exc
        if body.get("status") != "success":
            raise DashboardError(f"{path} {dict(params).get('query', '')!r}: {body.get('error', body)}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[tuple[dict[str, str],
                                                                                          list[float], list[float]]]:
        """(labels, times, values) per series."""
        data = self.get("/api/v1/query_range", [("query", expr), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"),
                                                ("step", f"{step:g}")])
        return [(item["metric"], [float(t) for t, _v in item["values"]], [float(v) for _t, v in item["values"]])
                for item in data["result"]]

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], list[float], list[float]]]:
        """(labels, [time], [value]) per series of an instant query (a scalar: one series without labels)."""
        data = self.get("/api/v1/query", [("query", expr), ("time", f"{at:.3f}")])
        if data["resultType"] == "scalar":
            return [({}, [float(data["result"][0])], [float(data["result"][1])])]
        return [(item["metric"], [float(item["value"][0])], [float(item["value"][1])]) for item in data["result"]]

    def label_values(self, selector: str, label: str) -> list[str]:
        """The values of LABEL on the series SELECTOR selects (every series: empty)."""
        params = [("match[]", selector)] if selector else []
        return sorted(self.get(f"/api/v1/label/{urllib.parse.quote(label)}/values", params))

    def version(self) -> str:
        """The server's version."""
        return str(self.get("/api/v1/status/buildinfo", []).get("version", "?"))


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def capture_text(capture: Path) -> bytes:
    """The capture's OpenMetrics bytes (.gz: uncompressed)."""
    data = capture.read_bytes()
    return gzip.decompress(data) if capture.suffix == ".gz" else data


def tool(found: Path | None, name: str) -> Path:
    """A tool of Debian's prometheus package, or a DashboardError that says how to get it."""
    if found is None:
        raise DashboardError(f"no {name}: `python3 -m world promtool` (or make deps) extracts it from Debian's "
                             "prometheus package")
    return found


@contextlib.contextmanager
def serve_capture(capture: Path, *, timeout: float = 60) -> Iterator[Prometheus]:
    """A Prometheus server on a free loopback port over the capture's series, for as long as the block lasts: blocks
    made by promtool in a temporary directory, the server started with a configuration of its own (no scrapes), then
    stopped (SIGTERM, then SIGKILL) and the directory removed, whatever happened."""
    promtool_bin, prometheus_bin = tool(promtool(), "promtool"), tool(prometheus(), "prometheus")
    with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
        work = Path(tmp)
        source = work / "capture.om"
        source.write_bytes(capture_text(capture))
        made = subprocess.run([str(promtool_bin), "tsdb", "create-blocks-from", "openmetrics", str(source),
                               str(work / "data")], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise DashboardError(f"promtool refused {capture}: {(made.stderr or made.stdout).strip()[-2000:]}")
        source.unlink()
        (work / "prometheus.yml").write_text("global:\n  evaluation_interval: 1m\n", encoding="utf-8")
        port = free_port()
        with (work / "prometheus.log").open("wb") as logf:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with  # stopped in the finally below
                [str(prometheus_bin), f"--config.file={work / 'prometheus.yml'}",
                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=100y", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            server = Prometheus(f"http://127.0.0.1:{port}")
            wait_ready(server, proc, work / "prometheus.log", timeout)
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(server: Prometheus, proc: subprocess.Popen[bytes], logfile: Path, timeout: float) -> None:
    """Until the server answers /-/ready; DashboardError (with its log) when it exits or takes longer than TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DashboardError(f"prometheus exited with {proc.returncode}: "
                                 f"{logfile.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise DashboardError(f"prometheus not ready in {timeout:g}s: {logfile.read_text(errors='replace')[-2000:]}")


def capture_window(capture: Path, scrape: float | None) -> Window:
    """The capture's time range and scrape interval, from its sidecar (world/metrics_capture.py writes one); without
    one, the first and last timestamps of the file and SCRAPE (default 15 s)."""
    meta = metadata_path(capture)
    if meta.is_file():
        data = json.loads(meta.read_text(encoding="utf-8"))
        return Window(float(data["start_seconds"]), float(data["end_seconds"]),
                      scrape or float(data["interval_seconds"]))
    times = [float(line.rsplit(None, 1)[1]) for line in capture_text(capture).decode().splitlines()
             if line and not line.startswith("#")]
    if not times:
        raise DashboardError(f"{capture}: no sample")
    return Window(min(times), max(times), scrape or 15.0)


# --- values and units ---------------------------------------------------------------------------------------------

def scaled(value: float, steps: Sequence[str], base: float) -> tuple[float, str]:
    """VALUE divided by BASE as often as it stays at least BASE, and the suffix of that step."""
    index = 0
    while abs(value) >= base and index < len(steps) - 1:
        value /= base
        index += 1
    return value, steps[index]


def number(value: float, decimals: int | None) -> str:
    """A number with DECIMALS digits after the point, or as few as it needs (at most 2)."""
    if decimals is not None:
        return f"{value:.{decimals}f}"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_value(value: float | None, unit: str, decimals: int | None = None) -> str:
    """VALUE in the dashboard's UNIT as Grafana shows it (percentunit, percent, bytes and decbytes, Bps and binBps,
    s, short; others as plain numbers)."""
    if value is None or math.isnan(value):
        return "No data"
    text: str
    if unit == "percentunit":
        text = f"{number(value * 100, 1 if decimals is None else decimals)}%"
    elif unit == "percent":
        text = f"{number(value, decimals)}%"
    elif unit in ("bytes", "binBps"):
        size, suffix = scaled(value, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 1024)
        text = f"{number(size, decimals)} {suffix}" + ("/s" if unit == "binBps" else "")
    elif unit in ("decbytes", "Bps"):
        size, suffix = scaled(value, ("B", "kB", "MB", "GB", "TB", "PB"), 1000)
        text = f"{number(size, decimals)} {suffix}" + ("/s" if unit == "Bps" else "")
    elif unit == "s":
        size, suffix = (value / 3600, "h") if abs(value) >= 3600 else (value / 60, "min") if abs(value) >= 60 \
            else (value, "s")
        text = f"{number(size, decimals)} {suffix}"
    elif unit == "short":
        size, suffix = scaled(value, ("", " K", " Mil", " Bil", " Tri"), 1000)
        text = f"{number(size, decimals)}{suffix}"
    else:
        text = number(value, decimals)
    return text


def color_of(name: str | None, fallback: str = TEXT) -> str:
    """A colour of the dashboard (a name, or #rrggbb) as the picture draws it."""
    if not name:
        return fallback
    return NAMED_COLORS.get(name, name if name.startswith("#") else fallback)


def threshold_color(value: float | None, thresholds: dict[str, Any] | None) -> str | None:
    """The colour of the last threshold step VALUE reaches (absolute mode); None without thresholds."""
    steps = (thresholds or {}).get("steps") or []
    if not steps:
        return None
    color = steps[0].get("color")
    for step in steps[1:]:
        if value is not None and not math.isnan(value) and step.get("value") is not None and value >= step["value"]:
            color = step.get("color")
    return color_of(color)


def mapped(value: float, mappings: Sequence[dict[str, Any]]) -> tuple[str, str | None] | None:
    """(text, colour) a value mapping gives VALUE, or None."""
    key = format_value(value, "none", 0) if float(value).is_integer() else str(value)
    for mapping in mappings:
        if mapping.get("type") == "value" and key in mapping.get("options", {}):
            found = mapping["options"][key]
            return str(found.get("text", key)), color_of(found.get("color"), "") or None
    return None


def calc(values: Sequence[float], name: str) -> float | None:
    """A legend calculation over the numbers of VALUES."""
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return None
    result: float | None
    if name == "mean":
        result = sum(numbers) / len(numbers)
    elif name == "max":
        result = max(numbers)
    elif name == "min":
        result = min(numbers)
    elif name == "sum":
        result = sum(numbers)
    elif name in ("lastNotNull", "last"):
        result = numbers[-1]
    else:
        raise DashboardError(f"legend calculation {name!r} is not supported")
    return result


# --- the panels' data ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PanelData:
    """What a panel's queries returned, and the queries as sent."""

    panel: dict[str, Any]
    series: list[Series]
    queries: list[dict[str, Any]]
    step: float


def panel_width_px(panel: dict[str, Any]) -> float:
    """How many pixels wide the picture draws a panel (its maxDataPoints, as in Grafana)."""
    return float(panel["gridPos"]["w"] * COLUMN_PX - 2 * MARGIN_PX)


def panel_data(panel: dict[str, Any], server: Prometheus, window: Window, variables: dict[str, str],
               min_interval: float) -> PanelData:
    """Every target of a panel asked of SERVER: instant ones at the window's end, the others over the window at the
    panel's $__interval (start and end aligned to it, as Grafana does)."""
    interval = panel_interval(window, panel_width_px(panel), max(min_interval, seconds(panel.get("interval"))))
    names = {**variables, **builtins(window, interval)}
    start = math.floor(window.start / interval) * interval
    end = math.ceil(window.end / interval) * interval
    series: list[Series] = []
    queries: list[dict[str, Any]] = []
    for target in panel.get("targets", []):
        if target.get("hide"):
            continue
        expr = substitute(str(target["expr"]), names)
        instant = bool(target.get("instant")) and not target.get("range")
        found = server.query(expr, window.end) if instant else server.query_range(expr, start, end, interval)
        queries.append({"refId": target.get("refId", ""), "expr": expr, "instant": instant, "series": len(found)})
        series += [Series(legend_name(str(target.get("legendFormat", "")), labels), labels, times, values,
                          target.get("refId", "")) for labels, times, values in found]
    return PanelData(panel, series, queries, interval)


# --- drawing ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Box:
    """A rectangle of the figure, in figure fractions."""

    left: float
    bottom: float
    width: float
    height: float


def field(panel: dict[str, Any]) -> dict[str, Any]:
    """The panel's fieldConfig defaults."""
    defaults: dict[str, Any] = panel.get("fieldConfig", {}).get("defaults", {})
    return defaults


def overrides_for(panel: dict[str, Any], name: str) -> dict[str, Any]:
    """The override properties that apply to the series NAME (byName, byRegexp, byFrameRefID matchers)."""
    properties: dict[str, Any] = {}
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        matcher = override.get("matcher", {})
        kind, option = matcher.get("id"), str(matcher.get("options", ""))
        if (kind == "byName" and name == option) or (kind == "byRegexp" and re.fullmatch(option, name)):
            properties.update({prop["id"]: prop.get("value") for prop in override.get("properties", [])})
        elif kind not in ("byName", "byRegexp", "byFrameRefID"):
            raise DashboardError(f"panel {panel.get('title')!r}: override matcher {kind!r} is not supported")
    return properties


def style(panel: dict[str, Any], series: Series) -> dict[str, Any]:
    """A series' drawing settings: the defaults' custom settings and unit, then its overrides."""
    defaults = field(panel)
    settings: dict[str, Any] = {"unit": defaults.get("unit", "short"), **defaults.get("custom", {})}
    for key, value in overrides_for(panel, series.name).items():
        settings[key.removeprefix("custom.")] = value
    refs = [o for o in panel.get("fieldConfig", {}).get("overrides", []) if o["matcher"]["id"] == "byFrameRefID"]
    for override in refs:
        if override["matcher"].get("options") == series.ref:
            settings.update({p["id"].removeprefix("custom."): p.get("value") for p in override["properties"]})
    return settings


def draw_frame(fig: Figure, box: Box, title: str) -> Axes:
    """A panel's background and title; returns the background axes."""
    ax = fig.add_axes((box.left, box.bottom, box.width, box.height))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(BORDER)
    ax.text(0.012, 1 - 14 / (box.height * fig.get_figheight() * DPI), title, transform=ax.transAxes, color=TEXT,
            fontsize=9.5, fontweight="bold", va="center", ha="left")
    return ax


def inner(fig: Figure, box: Box, *, top_px: float = 26, bottom_px: float = 6, left_px: float = 8,
          right_px: float = 8) -> Box:
    """The part of a panel's box below its title, less the given pixels."""
    width_px, height_px = fig.get_figwidth() * DPI, fig.get_figheight() * DPI
    return Box(box.left + left_px / width_px, box.bottom + bottom_px / height_px,
               box.width - (left_px + right_px) / width_px, box.height - (top_px + bottom_px) / height_px)


def blank_axes(fig: Figure, box: Box) -> Axes:
    """Axes without ticks or frame over BOX."""
    ax = fig.add_axes((box.left, box.bottom, box.width, box.height))
    ax.set_axis_off()
    return ax


def no_data(ax: Axes) -> None:
    """Grafana's message for a panel whose queries returned nothing."""
    ax.text(0.5, 0.5, "No data", color=MUTED, fontsize=12, ha="center", va="center", transform=ax.transAxes)


def draw_row(fig: Figure, box: Box, data: PanelData) -> None:
    """A row: its title across the dashboard, over a line."""
    ax = blank_axes(fig, box)
    ax.text(0.0, 0.45, data.panel.get("title", ""), color=TEXT, fontsize=11.5, fontweight="bold", va="center",
            transform=ax.transAxes)
    ax.axhline(0.02, color=BORDER, linewidth=1)


def draw_stat(fig: Figure, box: Box, data: PanelData) -> None:
    """A stat: each series' reduced value (lastNotNull), big, in its colour (thresholds or fixed), its name above
    when the text mode shows names."""
    defaults, options = field(data.panel), data.panel.get("options", {})
    draw_frame(fig, box, data.panel.get("title", ""))
    ax = blank_axes(fig, inner(fig, box))
    if not data.series:
        no_data(ax)
        return
    mode = options.get("textMode", "auto")
    show_names = mode in ("value_and_name", "name") or (mode == "auto" and len(data.series) > 1)
    width = 1 / len(data.series)
    for index, series in enumerate(data.series):
        value = series.last()
        color_mode = defaults.get("color", {}).get("mode")
        color = color_of(defaults.get("color", {}).get("fixedColor")) if color_mode == "fixed" else \
            threshold_color(value, defaults.get("thresholds")) or TEXT
        if options.get("colorMode") == "none":
            color = TEXT
        center = width * (index + 0.5)
        text = format_value(value, defaults.get("unit", "short"), defaults.get("decimals"))
        size = min(30.0, 0.9 * box.width * fig.get_figwidth() * DPI * width / max(4, len(text)) / 0.62 * 0.72)
        ax.text(center, 0.40 if show_names else 0.5, text, color=color, fontsize=size, fontweight="bold",
                ha="center", va="center", transform=ax.transAxes)
        if show_names:
            ax.text(center, 0.86, series.name, color=TEXT, fontsize=9, ha="center", va="center",
                    transform=ax.transAxes)


def draw_bargauge(fig: Figure, box: Box, data: PanelData) -> None:
    """A bar gauge: a horizontal bar per series (its reduced value between min and max), its name on the left and its
    value on the right, coloured by thresholds, the classic palette or a fixed colour; the unfilled part dimmed."""
    defaults = field(data.panel)
    draw_frame(fig, box, data.panel.get("title", ""))
    ax = blank_axes(fig, inner(fig, box, top_px=30))
    if not data.series:
        no_data(ax)
        return
    rows = sorted(data.series, key=lambda s: s.name)
    values = [s.last() for s in rows]
    low = float(defaults.get("min", 0))
    high = float(defaults.get("max", max([v for v in values if v is not None and not math.isnan(v)] + [low + 1.0])))
    mode = defaults.get("color", {}).get("mode", "thresholds")
    count = len(rows)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, count)
    for index, (series, value) in enumerate(zip(rows, values, strict=True)):
        y = count - index - 1
        if mode == "palette-classic":
            color = PALETTE[index % len(PALETTE)]
        elif mode == "fixed":
            color = color_of(defaults.get("color", {}).get("fixedColor"))
        else:
            color = threshold_color(value, defaults.get("thresholds")) or NAMED_COLORS["green"]
        share = 0.0 if value is None or high == low else min(1.0, max(0.0, (value - low) / (high - low)))
        ax.text(0.0, y + 0.5, series.name, color=TEXT, fontsize=8.5, va="center", ha="left")
        ax.barh(y + 0.5, 0.56, left=0.26, height=0.62, color=GRID, alpha=0.6)
        ax.barh(y + 0.5, 0.56 * share, left=0.26, height=0.62, color=color, alpha=0.9)
        ax.text(1.0, y + 0.5, format_value(value, defaults.get("unit", "short"), defaults.get("decimals")),
                color=color, fontsize=10, fontweight="bold", va="center", ha="right")


def time_axis(ax: Axes, window: Window) -> None:
    """The window along the bottom (x in seconds since the epoch), a tick every nice interval, as UTC HH:MM."""
    from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    ax.set_xlim(window.start, window.end)
    every = next((v for v in NICE_INTERVALS if v >= 60 and window.range / v <= 7), NICE_INTERVALS[-1])
    first = math.ceil(window.start / every) * every
    ticks = [first + i * every for i in range(int((window.end - first) // every) + 1)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: datetime.fromtimestamp(value, UTC)
                                               .strftime("%H:%M")))


def dark_axes(ax: Axes) -> None:
    """Ticks, grid and spines of a plot in the picture's theme."""
    ax.set_facecolor(PANEL)
    ax.tick_params(colors=MUTED, labelsize=7.5, length=0)
    ax.grid(color=GRID, linewidth=0.6)
    for spine in ax.spines.values():
        spine.set_visible(False)


def unit_formatter(unit: str) -> Any:
    """A matplotlib tick formatter in UNIT."""
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    return FuncFormatter(lambda value, _pos: format_value(value, unit) if value else "0")


def draw_timeseries(fig: Figure, box: Box, data: PanelData, window: Window) -> None:
    """A time series: lines (filled under, per fillOpacity) or bars (stacked when the stacking mode says so), series
    with the negative-Y transform below the axis, dashed lines, hidden ones only in the legend, a right axis for the
    series placed there; below, the legend table with its calculations."""
    panel = data.panel
    options = panel.get("options", {})
    legend = options.get("legend", {})
    calcs = list(legend.get("calcs", [])) if legend.get("showLegend", True) else []
    draw_frame(fig, box, panel.get("title", ""))
    area = inner(fig, box)
    rows_px = 13.0 * (min(len(data.series), 8) + 1) + 6 if legend.get("showLegend", True) and data.series else 0.0
    height_px = area.height * fig.get_figheight() * DPI
    rows_px = min(rows_px, height_px * 0.5)
    right_axis = any(style(panel, series).get("axisPlacement") == "right" for series in data.series)
    plot_box = inner(fig, area, top_px=0, bottom_px=rows_px + 16, left_px=52, right_px=56 if right_axis else 10)
    ax = fig.add_axes((plot_box.left, plot_box.bottom, plot_box.width, plot_box.height))
    dark_axes(ax)
    time_axis(ax, window)
    defaults = field(panel)
    unit = defaults.get("unit", "short")
    ax.yaxis.set_major_formatter(unit_formatter(unit))
    if not data.series:
        no_data(ax)
        return
    axes, units = {"left": ax}, {"left": unit}
    stacks: dict[tuple[str, bool, bool], dict[float, float]] = {}
    legend_rows: list[tuple[str, str, list[str], bool]] = []
    for index, series in enumerate(sorted(data.series, key=lambda s: (s.ref, s.name))):
        settings = style(panel, series)
        color = PALETTE[index % len(PALETTE)]
        hidden = bool((settings.get("hideFrom") or {}).get("viz"))
        legend_rows.append((series.name, color, [format_value(calc(series.values, c), settings["unit"],
                                                              defaults.get("decimals")) for c in calcs], hidden))
        if not hidden:
            plot_series(axes, series, settings, color=color, stacks=stacks, step=data.step)
            units.setdefault("right" if settings.get("axisPlacement") == "right" else "left", settings["unit"])
    if defaults.get("min") is not None or defaults.get("max") is not None:
        ax.set_ylim(bottom=defaults.get("min"), top=defaults.get("max"))
    for side, side_ax in axes.items():
        binary_ticks(side_ax, units.get(side, ""))
    ax.axhline(0, color=MUTED, linewidth=0.5)
    legend_table(fig, inner(fig, area, top_px=height_px - rows_px, bottom_px=0, left_px=4, right_px=4),
                 [CALC_NAMES.get(c, c) for c in calcs], legend_rows)


def plot_series(axes: dict[str, Axes], series: Series, settings: dict[str, Any], *, color: str,
                stacks: dict[tuple[str, bool, bool], dict[float, float]], step: float) -> None:
    """One series of a time series panel on its axis (AXES["right"] made when the first series placed there comes):
    a line, filled under per fillOpacity and dashed per lineStyle, or bars a step wide, stacked on the others of its
    stacking group, axis and sign (STACKS: their tops per time); below the axis with the negative-Y transform."""
    side = "right" if settings.get("axisPlacement") == "right" else "left"
    if side not in axes:
        axes[side] = axes["left"].twinx()
        dark_axes(axes[side])
        axes[side].grid(False)
        axes[side].yaxis.set_major_formatter(unit_formatter(settings["unit"]))
    target = axes[side]
    sign = -1.0 if settings.get("transform") == "negative-Y" else 1.0
    times = series.times
    values = [sign * v for v in series.values]
    alpha = float(settings.get("fillOpacity", 0)) / 100
    stacking = settings.get("stacking") or {}
    if settings.get("drawStyle") == "bars":
        bottoms = [0.0] * len(values)
        if stacking.get("mode", "none") != "none":
            stack = stacks.setdefault((str(stacking.get("group", "A")), sign < 0, side == "right"), {})
            bottoms = [stack.get(t, 0.0) for t in series.times]
            for t, v, b in zip(series.times, values, bottoms, strict=True):
                stack[t] = b + (0.0 if math.isnan(v) else v)
        target.bar(times, values, bottom=bottoms, width=step * 0.8, color=color, alpha=max(alpha, 0.35), linewidth=0)
        return
    line = target.plot(times, values, color=color, linewidth=float(settings.get("lineWidth", 1)) + 0.3)[0]
    line_style = settings.get("lineStyle") or {}
    if line_style.get("fill") == "dash" and line_style.get("dash"):
        line.set_dashes([float(d) / 2 for d in line_style["dash"]])
    if alpha > 0:
        target.fill_between(times, values, 0, color=color, alpha=alpha, linewidth=0)


def binary_ticks(ax: Axes, unit: str) -> None:
    """Ticks at round binary steps (1, 2, 4, 5, 10, 20, 25, 50 ... times a power of 1024) on an axis in bytes, as
    Grafana places them, instead of decimal ones (953.67 MiB)."""
    from matplotlib.ticker import MultipleLocator  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    if unit not in ("bytes", "binBps"):
        return
    low, high = ax.get_ylim()
    span = max(abs(high - low), 1.0)
    power = 1024 ** max(0, int(math.log(span, 1024)))
    step = next((m * power for m in (0.25, 0.5, 1, 2, 4, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
                 if span / (m * power) <= 6), span)
    ax.yaxis.set_major_locator(MultipleLocator(step))


def legend_table(fig: Figure, box: Box, calcs: list[str], rows: list[tuple[str, str, list[str], bool]]) -> None:
    """A legend as Grafana's table mode draws it: a colour mark and name per series, then a column per calculation;
    the rows that do not fit are counted on the last line."""
    ax = blank_axes(fig, box)
    height_px = box.height * fig.get_figheight() * DPI
    fits = max(1, int(height_px // 13) - 1)
    shown = rows if len(rows) <= fits else rows[: fits - 1]
    line = 1 / max(1, fits + 1)
    columns = [1 - 0.13 * (len(calcs) - i) for i in range(len(calcs))]
    for x, name in zip(columns, calcs, strict=True):
        ax.text(x + 0.12, 1 - line / 2, name, color=MUTED, fontsize=7.5, ha="right", va="center",
                transform=ax.transAxes)
    for index, (name, color, values, hidden) in enumerate(shown):
        y = 1 - line * (index + 1.5)
        ax.plot([0.004, 0.024], [y, y], color=color, linewidth=3, transform=ax.transAxes, alpha=0.35 if hidden else 1)
        ax.text(0.032, y, name + (" (hidden)" if hidden else ""), color=MUTED if hidden else TEXT, fontsize=7.5,
                va="center", transform=ax.transAxes)
        for x, value in zip(columns, values, strict=True):
            ax.text(x + 0.12, y, value, color=TEXT, fontsize=7.5, ha="right", va="center", transform=ax.transAxes)
    if len(shown) < len(rows):
        ax.text(0.032, 1 - line * (len(shown) + 1.5), f"... {len(rows) - len(shown)} more", color=MUTED,
                fontsize=7.5, va="center", transform=ax.transAxes)


def draw_state_timeline(fig: Figure, box: Box, data: PanelData, window: Window) -> None:
    """A state timeline: a row per series, each stretch of one value a bar in its mapped colour (or its threshold
    colour) with its mapped text; no data, no bar. The mappings below as the legend."""
    panel = data.panel
    defaults = field(panel)
    mappings = defaults.get("mappings", [])
    draw_frame(fig, box, panel.get("title", ""))
    area = inner(fig, box)
    plot_box = inner(fig, area, top_px=0, bottom_px=36, left_px=110, right_px=10)
    ax = fig.add_axes((plot_box.left, plot_box.bottom, plot_box.width, plot_box.height))
    dark_axes(ax)
    ax.grid(False)
    time_axis(ax, window)
    if not data.series:
        no_data(ax)
        return
    rows = sorted(data.series, key=lambda s: s.name)
    ax.set_ylim(0, len(rows))
    ax.set_yticks([len(rows) - i - 0.5 for i in range(len(rows))], [s.name for s in rows], color=TEXT)
    row_height = float(panel.get("options", {}).get("rowHeight", 0.9))
    for index, series in enumerate(rows):
        y = len(rows) - index - 1 + (1 - row_height) / 2
        for start, end, value in stretches(series, data.step):
            text, color = mapped(value, mappings) or (format_value(value, defaults.get("unit", "short")), None)
            color = color or threshold_color(value, defaults.get("thresholds")) or PALETTE[0]
            left, width = start, end - start
            ax.broken_barh([(left, width)], (y, row_height), facecolors=color,
                           alpha=float(defaults.get("custom", {}).get("fillOpacity", 80)) / 100)
            if (end - start) / window.range > 0.12:
                ax.text(left + width * 0.01, y + row_height / 2, text, color="#111111", fontsize=8, va="center")
    legend = blank_axes(fig, inner(fig, area, top_px=area.height * fig.get_figheight() * DPI - 16, bottom_px=0))
    entries = [(str(found.get("text", key)), color_of(found.get("color")))
               for mapping in mappings if mapping.get("type") == "value"
               for key, found in sorted(mapping.get("options", {}).items(), key=lambda kv: kv[1].get("index", 0))]
    for index, (text, color) in enumerate(entries):
        legend.plot([0.01 + 0.2 * index, 0.03 + 0.2 * index], [0.5, 0.5], color=color, linewidth=5,
                    transform=legend.transAxes)
        legend.text(0.04 + 0.2 * index, 0.5, text, color=TEXT, fontsize=8, va="center", transform=legend.transAxes)


def stretches(series: Series, step: float) -> list[tuple[float, float, float]]:
    """(start, end, value) of each run of one value (mergeValues); a point holds until the next one, or for a step
    after the last; a gap of more than a step between points ends a run."""
    runs: list[tuple[float, float, float]] = []
    points = [(t, v) for t, v in zip(series.times, series.values, strict=True) if not math.isnan(v)]
    for index, (t, v) in enumerate(points):
        following = points[index + 1][0] if index + 1 < len(points) else t + step
        end = following if following - t <= step * 1.5 else t + step
        if runs and runs[-1][2] == v and abs(runs[-1][1] - t) < 1e-6:
            runs[-1] = (runs[-1][0], end, v)
        else:
            runs.append((t, end, v))
    return runs


Drawer = Callable[["Figure", Box, PanelData, Window], None]


def drawers() -> dict[str, Drawer]:
    """The drawing of each panel type the picture supports."""
    return {"row": lambda fig, box, data, _window: draw_row(fig, box, data),
            "stat": lambda fig, box, data, _window: draw_stat(fig, box, data),
            "bargauge": lambda fig, box, data, _window: draw_bargauge(fig, box, data),
            "timeseries": draw_timeseries, "state-timeline": draw_state_timeline}


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel in grid order (a row's nested panels, when collapsed, after it), each with a type the picture
    draws: DashboardError naming those it cannot draw."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found += panel.get("panels", []) if panel.get("collapsed") else []
    unknown = sorted({f"{p.get('title')!r} ({p.get('type')})" for p in found if p.get("type") not in SUPPORTED})
    if unknown:
        raise DashboardError(f"panel types the picture cannot draw: {', '.join(unknown)}")
    return sorted(found, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


def panel_box(panel: dict[str, Any], fig_width_px: float, fig_height_px: float) -> Box:
    """Where a panel's gridPos puts it in the figure, less a margin all round."""
    grid = panel["gridPos"]
    left = grid["x"] * COLUMN_PX + MARGIN_PX / 2
    top = HEADER_PX + grid["y"] * ROW_PX + MARGIN_PX / 2
    width = grid["w"] * COLUMN_PX - MARGIN_PX
    height = grid["h"] * ROW_PX - MARGIN_PX
    return Box(left / fig_width_px, 1 - (top + height) / fig_height_px, width / fig_width_px, height / fig_height_px)


def draw(dashboard: dict[str, Any], datas: Sequence[PanelData], window: Window, header: str,
         footer: str) -> tuple[Figure, list[int]]:
    """The figure of every panel (DATAS, in the order of panels_of), with the dashboard's title, variables and time
    range on top and where the data came from below; returns it and the ids of the panels drawn."""
    import matplotlib  # noqa: PLC0415  # pylint: disable=import-outside-toplevel  # only to draw, in the venv
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    bottom = max((d.panel["gridPos"]["y"] + d.panel["gridPos"]["h"] for d in datas), default=0)
    width_px, height_px = 24 * COLUMN_PX, HEADER_PX + bottom * ROW_PX + FOOTER_PX
    fig = plt.figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor=BACKGROUND)
    fig.text(MARGIN_PX / width_px, 1 - 22 / height_px, dashboard.get("title", ""), color=TEXT, fontsize=15,
             fontweight="bold", va="center")
    fig.text(MARGIN_PX / width_px, 1 - 50 / height_px, header, color=MUTED, fontsize=9.5, va="center")
    fig.text(1 - MARGIN_PX / width_px, 1 - 22 / height_px,
             f"{iso(window.start)} to {iso(window.end)}".replace("T", " ").replace("Z", " UTC"), color=TEXT,
             fontsize=10, ha="right", va="center")
    fig.text(MARGIN_PX / width_px, 12 / height_px, footer, color=MUTED, fontsize=8, va="center")
    drawn: list[int] = []
    table = drawers()
    for data in datas:
        table[data.panel["type"]](fig, panel_box(data.panel, width_px, height_px), data, window)
        drawn.append(int(data.panel["id"]))
    return fig, drawn


def variables_line(dashboard: dict[str, Any], chosen: dict[str, list[str]]) -> str:
    """The variables as the dashboard's top bar shows them: Label [All] ..."""
    parts = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("hide") == 2:  # Grafana: 2 hides the variable
            continue
        label = variable.get("label") or variable["name"]
        if variable.get("type") == "datasource":
            parts.append(f"{label} [{{version}}]")
            continue
        value = chosen.get(variable["name"])
        parts.append(f"{label} [{', '.join(value) if value else 'All'}]")
    return "    ".join(parts)


def render(capture: Path, dashboard_path: Path, out_png: Path, *, chosen: dict[str, list[str]] | None = None,
           scrape: float | None = None, min_interval: float | None = None) -> dict[str, Any]:
    """Draw DASHBOARD_PATH's panels from CAPTURE into OUT_PNG, and write its sidecar (OUT_PNG with .json); returns the
    sidecar's data."""
    chosen = chosen or {}
    dashboard = json.loads(dashboard_path.read_text(encoding="utf-8"))
    panels = panels_of(dashboard)
    window = capture_window(capture, scrape)
    with serve_capture(capture) as server:
        version = server.version()
        variables = template_values(dashboard, server.label_values, chosen)
        datas = [PanelData(p, [], [], 0) if p["type"] == "row" else
                 panel_data(p, server, window, variables, min_interval or window.scrape) for p in panels]
    header = variables_line(dashboard, chosen).replace("{version}", f"{version}, over the capture")
    footer = (f"Drawn by world/dashboard.py from {relative(capture)} with Prometheus {version} (promtool backfill), "
              f"not by Grafana: each panel's own queries, its layout, units and colours.")
    fig, drawn = draw(dashboard, datas, window, header, footer)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    partial = out_png.with_name(f".{out_png.name}.partial.png")
    fig.savefig(partial, dpi=DPI, facecolor=BACKGROUND, metadata={"Software": None})
    partial.replace(out_png)
    meta_capture = metadata_path(capture)
    data = {
        "picture": out_png.name,
        "capture": relative(capture), "capture_sha256": sha256_file(capture),
        "capture_sidecar": relative(meta_capture) if meta_capture.is_file() else None,
        "dashboard": relative(dashboard_path), "dashboard_sha256": sha256_file(dashboard_path),
        "window": {"start": iso(window.start), "end": iso(window.end), "scrape_interval_seconds": window.scrape},
        "prometheus": version, "variables": variables,
        "panels": [{"id": d.panel["id"], "type": d.panel["type"], "title": d.panel.get("title", ""),
                    "step_seconds": d.step, "queries": d.queries} for d in datas],
        "drawn": drawn,
    }
    write_text(out_png.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    plt.close(fig)
    return data


def relative(path: Path) -> str:
    """PATH relative to the repository when it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def parse_choice(text: str) -> tuple[str, list[str]]:
    """NAME=V1[,V2...] of --var."""
    name, sep, values = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: want NAME=VALUE[,VALUE...]")
    return name, [v for v in values.split(",") if v]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python3 -m world.dashboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", type=Path, required=True, help="an OpenMetrics capture (.gz too)")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD, help="default: the shipped dashboard")
    parser.add_argument("--out", type=Path, required=True, help="the PNG; its sidecar is the same name with .json")
    parser.add_argument("--var", type=parse_choice, action="append", default=[], metavar="NAME=VALUE[,VALUE]",
                        help="a template variable's values instead of its default (All)")
    parser.add_argument("--scrape-interval", type=float, help="the data source's scrape interval in seconds "
                                                              "(default: the capture's interval)")
    parser.add_argument("--min-interval", type=float, help="the smallest $__interval in seconds, as Grafana's "
                                                           "min interval setting (default: the scrape interval)")
    args = parser.parse_args(argv)
    try:
        data = render(args.capture, args.dashboard, args.out, chosen=dict(args.var), scrape=args.scrape_interval,
                      min_interval=args.min_interval)
    except WorldError as exc:
        log(f"ERROR: {exc}")
        return 1
    empty = [p["title"] for p in data["panels"] if p["queries"] and not any(q["series"] for q in p["queries"])]
    log(f"{args.out}: {len(data['drawn'])} panels from {data['capture']} ({data['window']['start']} to "
        f"{data['window']['end']}, Prometheus {data['prometheus']})"
        + (f"; no data in: {', '.join(empty)}" if empty else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
