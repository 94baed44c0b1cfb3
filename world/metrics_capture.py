# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""A capture of mirrors' metrics over time, as Prometheus would have scraped them: every INTERVAL seconds for DURATION
seconds, each source's exposition (the supervisor's /metrics: its own metrics, then distribution's) is read, given the
labels the alert rules and the dashboard expect (job, instance, mirror, site; README "Alerts and dashboard") and kept
with its time. The result is one OpenMetrics file with timestamps, which `promtool tsdb create-blocks-from
openmetrics` turns into Prometheus blocks (world/dashboard.py draws the dashboard from it), and a JSON sidecar that
says what was captured, when, from where and how each source fared.

A source is a URL, or a command whose stdout is the exposition: a mirror's metrics listen on loopback inside its host,
so a test-world target is read with `docker exec` (--docker builds that command). Like a Prometheus scrape, each read
adds a series `up` (1: read, 0: failed) for the source.

    python3 -m world.metrics_capture --out docs/dashboard/capture.om.gz --duration 1800 --interval 15 \\
        --docker instance=tier-a,mirror=docker-hub,site=a tier-a http://127.0.0.1:5002/metrics ...

Standard library only (the system python3 runs it). Only the series the dashboard reads are kept by default (the
file stays small enough to commit): --keep adds a pattern, --all keeps everything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from .config import REPO
from .util import WorldError, log, warn, write_bytes, write_text

DASHBOARD = REPO / "extras" / "grafana" / "registry-mirror.json"
JOB = "registry-mirror"
# The labels a source may set (README "Alerts and dashboard": what the agent's scrape configuration gives).
SOURCE_LABELS = ("job", "instance", "mirror", "site")
# What `docker exec CONTAINER python3 -c FETCH URL` runs in a target (python3 is in every target image): the
# exposition of URL on stdout, exit 1 when it cannot be read.
DOCKER_FETCH = ("import sys, urllib.request\n"
                "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n")
FETCH_TIMEOUT = 10.0

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})?\s+(\S+)(?:\s+(-?\d+(?:\.\d+)?))?\s*$")
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:\\.|[^"\\])*)"\s*,?')
IDENTIFIER = re.compile(NAME)
# The suffixes of a family's samples besides its own name, by type (OpenMetrics input: a counter x has x_total).
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count"),
            "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "counter": ("_total",), "info": ("_info",)}
OM_TYPES = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "summary": "summary",
            "untyped": "unknown", "unknown": "unknown", "gaugehistogram": "gaugehistogram", "info": "info",
            "stateset": "stateset"}

Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One line of an exposition: a sample's name, labels and value."""

    name: str
    labels: Labels
    value: float


@dataclasses.dataclass
class Family:
    """A metric family of an exposition: its name as the text format declares it, type, help, samples."""

    name: str
    kind: str = "unknown"
    help: str = ""
    samples: list[Sample] = dataclasses.field(default_factory=list)


def unescape(text: str) -> str:
    """A label value or HELP text of the text format, unescaped (\\\\, \\n, \\")."""
    return re.sub(r'\\(.)', lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def escape(text: str) -> str:
    """A label value or HELP text escaped for OpenMetrics (backslash, double quote, line feed)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_labels(text: str) -> Labels:
    """The labels inside a sample's braces."""
    labels, pos = [], 0
    while pos < len(text.rstrip()):
        match = LABEL.match(text, pos)
        if not match:
            raise ValueError(f"bad labels {{{text}}}")
        labels.append((match.group(1), unescape(match.group(2))))
        pos = match.end()
    return tuple(labels)


def parse_value(text: str) -> float:
    """A sample's value (Go writes NaN, +Inf, -Inf, 1.5e+06)."""
    return float({"+Inf": "inf", "-Inf": "-inf", "Inf": "inf"}.get(text, text))


def family_of(name: str, families: dict[str, Family]) -> Family:
    """The declared family a sample belongs to (a histogram's _bucket its histogram's, an OpenMetrics counter's
    x_total its x's), else its own, new, unknown one."""
    for suffix in ("_bucket", "_sum", "_count", "_gsum", "_gcount", "_total", "_info"):
        family = families.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
        if family is not None and suffix in SUFFIXES.get(family.kind, ()):
            return family
    return families.setdefault(name, Family(name))


def parse_exposition(text: str) -> list[Family]:
    """The families of a Prometheus text exposition (format 0.0.4; OpenMetrics input is read as well): HELP, TYPE and
    samples; other comments, UNIT and EOF are skipped. ValueError for a line that is none of those."""
    families: dict[str, Family] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], Family(parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    family.help = unescape(rest)
                else:
                    family.kind = OM_TYPES.get(rest.strip().lower(), "unknown")
            continue
        match = SAMPLE.match(line)
        if not match:
            raise ValueError(f"line {number}: not a sample: {line[:200]!r}")
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        try:
            sample = Sample(name, parse_labels(labels), parse_value(value))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}: {line[:200]!r}") from exc
        family_of(name, families).samples.append(sample)
    return list(families.values())


def dashboard_names(dashboard: Path) -> set[str]:
    """Every identifier of the dashboard's queries (targets and variables): the series it reads are among them."""
    data = json.loads(dashboard.read_text(encoding="utf-8"))
    texts: list[str] = []
    panels = list(data.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        texts += [str(target.get("expr", "")) for target in panel.get("targets", [])]
    for variable in data.get("templating", {}).get("list", []):
        query = variable.get("query", "")
        texts.append(str(query.get("query", "") if isinstance(query, dict) else query))
    return {name for text in texts for name in IDENTIFIER.findall(text)}


def format_value(value: float) -> str:
    """A value as OpenMetrics writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def format_labels(labels: Labels) -> str:
    """{a="x",b="y"}, or nothing without labels."""
    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in labels) + "}" if labels else ""


def with_source_labels(labels: Labels, source: Labels) -> Labels:
    """A sample's labels with the source's added, sorted. A label of the exposition that the source also sets is kept
    as exported_NAME, as Prometheus does without honor_labels."""
    names = dict(source)
    own = {(f"exported_{name}" if name in names else name): value for name, value in labels}
    return tuple(sorted({**own, **names}.items()))


@dataclasses.dataclass
class OutFamily:
    """A family of the capture: its OpenMetrics name, type and help, and its metrics' points (per label set without
    le/quantile: time -> the samples of that point)."""

    name: str
    kind: str
    help: str
    points: dict[Labels, dict[float, list[Sample]]] = dataclasses.field(default_factory=dict)


def om_family(family: Family, kept: list[Sample]) -> list[tuple[str, str, str, list[Sample]]]:
    """(OpenMetrics name, type, help, samples) for the kept samples of a family. A counter is named without _total (its
    samples keep it); a counter without _total cannot be one in OpenMetrics and becomes unknown; a family of which only
    some sample names are kept (a histogram's _sum) becomes one unknown family per kept name."""
    names = {sample.name for sample in family.samples}
    if {sample.name for sample in kept} != names:
        by_name: dict[str, list[Sample]] = {}
        for sample in kept:
            by_name.setdefault(sample.name, []).append(sample)
        return [(name, "unknown", family.help, samples) for name, samples in by_name.items()]
    if family.kind == "counter":
        if family.name.endswith("_total") and names == {family.name}:
            return [(family.name[:-6], "counter", family.help, kept)]
        if not family.name.endswith("_total") and names == {f"{family.name}_total"}:
            return [(family.name, "counter", family.help, kept)]
        return [(family.name, "unknown", family.help, kept)]
    return [(family.name, family.kind, family.help, kept)]


class Capture:
    """The samples read so far, per OpenMetrics family and metric, with their times."""

    def __init__(self, keep: Callable[[str], bool]) -> None:
        self.keep = keep
        self.families: dict[str, OutFamily] = {}
        self.lock = threading.Lock()
        self.conflicts: set[str] = set()

    def add(self, families: Iterable[Family], source: Labels, timestamp: float) -> None:
        """The families of one read of SOURCE at TIMESTAMP (seconds)."""
        with self.lock:
            for family in families:
                kept = [sample for sample in family.samples if self.keep(sample.name)]
                if not kept:
                    continue
                for name, kind, text, samples in om_family(family, kept):
                    out = self.families.setdefault(name, OutFamily(name, kind, text))
                    if out.kind != kind:
                        if name not in self.conflicts:
                            warn(f"{name}: {kind} in one source, {out.kind} in another: the {kind} samples are "
                                 "left out")
                        self.conflicts.add(name)
                        continue
                    for sample in samples:
                        labels = with_source_labels(sample.labels, source)
                        metric = tuple(label for label in labels if label[0] not in ("le", "quantile"))
                        point = out.points.setdefault(metric, {}).setdefault(timestamp, [])
                        point.append(Sample(sample.name, labels, sample.value))

    def up(self, source: Labels, timestamp: float, value: float) -> None:
        """Prometheus's `up` for one read: 1 when the source answered, 0 when not."""
        self.add([Family("up", "gauge", "1 when the source was read, 0 when not (the capture's own).",
                         [Sample("up", (), value)])], source, timestamp)

    def openmetrics(self) -> str:
        """The capture as an OpenMetrics text: families in order of name, metrics in order of labels, each metric's
        points in increasing time, then # EOF."""
        lines: list[str] = []
        with self.lock:
            for name in sorted(self.families):
                family = self.families[name]
                if family.help:
                    lines.append(f"# HELP {name} {escape(family.help)}")
                lines.append(f"# TYPE {name} {family.kind}")
                for metric in sorted(family.points):
                    points = family.points[metric]
                    for timestamp in sorted(points):
                        lines += [f"{sample.name}{format_labels(sample.labels)} {format_value(sample.value)} "
                                  f"{timestamp:.3f}" for sample in points[timestamp]]
        lines.append("# EOF")
        return "\n".join(lines) + "\n"

    def counts(self) -> tuple[int, int]:
        """(series, samples) so far."""
        with self.lock:
            series = samples = 0
            for family in self.families.values():
                for points in family.points.values():
                    series += len({(sample.name, sample.labels) for point in points.values() for sample in point})
                    samples += sum(len(point) for point in points.values())
            return series, samples


@dataclasses.dataclass
class Source:
    """Where one mirror's exposition is read: a URL, or a command whose stdout is the exposition; the labels its
    series get."""

    labels: Labels
    url: str | None = None
    command: tuple[str, ...] = ()
    shown: str = ""
    reads: int = 0
    failures: int = 0
    last_error: str = ""

    def describe(self) -> str:
        """The URL, or the command line (or what stands for it)."""
        return self.url if self.url is not None else self.shown or shlex.join(self.command)

    def fetch(self) -> str:
        """The exposition; OSError, ValueError or subprocess errors when it cannot be read."""
        if self.url is not None:
            with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT) as response:  # a metrics URL
                body: bytes = response.read()
                return body.decode("utf-8")
        proc = subprocess.run(list(self.command), capture_output=True, timeout=FETCH_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise OSError(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
        return proc.stdout.decode("utf-8")


def parse_source_labels(text: str, job: str) -> Labels:
    """instance=NAME,mirror=NAME[,site=NAME][,job=NAME] -> sorted labels (instance needed, mirror default
    docker-hub, job default JOB)."""
    labels = {"job": job, "mirror": "docker-hub"}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in SOURCE_LABELS or not value:
            raise argparse.ArgumentTypeError(f"{part!r}: want NAME=VALUE with NAME one of {', '.join(SOURCE_LABELS)}")
        labels[name] = value
    if "instance" not in labels:
        raise argparse.ArgumentTypeError(f"{text!r}: no instance=HOST")
    return tuple(sorted(labels.items()))


def read_source(source: Source, capture: Capture) -> None:
    """One read of one source into the capture (its up too); a failure counts and is said once per new message."""
    timestamp = time.time()
    try:
        families = parse_exposition(source.fetch())
    except (OSError, ValueError, UnicodeDecodeError, subprocess.SubprocessError) as exc:
        source.failures += 1
        message = str(exc) or type(exc).__name__
        if message != source.last_error:
            warn(f"{source.describe()}: {message}")
        source.last_error = message
        capture.up(source.labels, timestamp, 0.0)
        return
    source.reads += 1
    capture.add(families, source.labels, timestamp)
    capture.up(source.labels, timestamp, 1.0)


def metadata_path(capture_path: Path) -> Path:
    """The JSON sidecar of a capture file: capture.om.gz, capture.om -> capture.json."""
    name = capture_path.name.removesuffix(".gz").removesuffix(".om").removesuffix(".txt")
    return capture_path.with_name(f"{name}.json")


def iso(seconds: float) -> str:
    """UTC time, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_capture(path: Path, capture: Capture, sources: Sequence[Source],
                  meta: dict[str, object]) -> dict[str, object]:
    """The OpenMetrics file (gzip when PATH ends in .gz, with no name or time in its header: the same capture, the same
    bytes) and its sidecar; returns the sidecar's data."""
    text = capture.openmetrics().encode()
    write_bytes(path, gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
    series, samples = capture.counts()
    data = {**meta, "file": path.name, "format": "OpenMetrics 1.0 text, timestamps in seconds",
            "series": series, "samples": samples,
            "sources": [{"labels": dict(source.labels), "read": source.describe(), "reads": source.reads,
                         "failures": source.failures, "last_error": source.last_error} for source in sources]}
    write_text(metadata_path(path), json.dumps(data, indent=2) + "\n")
    return data


def run_capture(sources: Sequence[Source], capture: Capture, *, duration: float, interval: float,
                stop: threading.Event) -> tuple[float, float, int]:
    """Read every source at once every INTERVAL seconds until DURATION has passed (or STOP is set): (first read, last
    read, rounds)."""
    started = ended = time.time()
    begin = time.monotonic()
    rounds = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(sources))) as pool:
        while not stop.is_set():
            ended = time.time()
            list(pool.map(lambda source: read_source(source, capture), sources))
            rounds += 1
            if rounds == 1 or rounds % max(1, round(60 / interval)) == 0:
                series, samples = capture.counts()
                log(f"capture: round {rounds}, {series} series, {samples} samples")
            following = begin + rounds * interval
            if following - begin > duration:
                break
            stop.wait(max(0.0, following - time.monotonic()))
    return started, ended, rounds


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python3 -m world.metrics_capture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="the OpenMetrics file (.gz: compressed); its sidecar is NAME.json beside it")
    parser.add_argument("--duration", type=float, default=1800, help="seconds (default 1800); Ctrl-C ends it early "
                                                                     "and keeps what was read")
    parser.add_argument("--interval", type=float, default=15, help="seconds between reads (default 15)")
    parser.add_argument("--job", default=JOB, help=f"the job label (default {JOB})")
    parser.add_argument("--url", nargs=2, action="append", default=[], metavar=("LABELS", "URL"),
                        help="a source read over HTTP; LABELS: instance=HOST,mirror=NAME[,site=NAME]")
    parser.add_argument("--command", nargs=2, action="append", default=[], metavar=("LABELS", "COMMAND"),
                        help="a source read from a command's stdout (COMMAND split as a shell would, not run by one)")
    parser.add_argument("--docker", nargs=3, action="append", default=[], metavar=("LABELS", "CONTAINER", "URL"),
                        help="a source read inside a container: docker exec CONTAINER python3 -c FETCH URL")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD,
                        help="keep the series this dashboard's queries name (default: the shipped one)")
    parser.add_argument("--keep", default="", help="also keep the series whose names match this regular expression")
    parser.add_argument("--all", action="store_true", help="keep every series")
    return parser


def sources_from(args: argparse.Namespace) -> list[Source]:
    """The sources the command line names, in its order per kind."""
    sources = [Source(parse_source_labels(labels, args.job), url=url) for labels, url in args.url]
    sources += [Source(parse_source_labels(labels, args.job), command=tuple(shlex.split(command)))
                for labels, command in args.command]
    sources += [Source(parse_source_labels(labels, args.job),
                       command=("docker", "exec", container, "python3", "-c", DOCKER_FETCH, url),
                       shown=f"docker exec {container} python3 (urllib) {url}")
                for labels, container, url in args.docker]
    seen = [dict(source.labels) for source in sources]
    duplicates = {f"{s['instance']}/{s['mirror']}" for s in seen if seen.count(s) > 1}
    if duplicates:
        raise WorldError(f"two sources with the same labels: {', '.join(sorted(duplicates))}")
    return sources


def keeper(args: argparse.Namespace) -> Callable[[str], bool]:
    """Which series names the capture keeps."""
    if args.all:
        return lambda name: True
    names = dashboard_names(args.dashboard) | {"up"}
    extra = re.compile(args.keep) if args.keep else None
    return lambda name: name in names or (extra is not None and extra.fullmatch(name) is not None)


def main(argv: Sequence[str] | None = None) -> int:
    """Capture, then write (also after Ctrl-C or SIGTERM: what was read so far)."""
    args = build_parser().parse_args(argv)
    try:
        sources = sources_from(args)
        if not sources:
            raise WorldError("no source: give --url, --command or --docker")
        if args.interval <= 0 or args.duration < 0:
            raise WorldError("--interval must be above 0 and --duration not below 0")
        capture = Capture(keeper(args))
        stop = threading.Event()

        def stopping(signum: int, _frame: FrameType | None) -> None:
            log(f"signal {signum}: writing what was read so far")
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        log(f"capture: {len(sources)} sources every {args.interval:g}s for {args.duration:g}s into {args.out}")
        started, ended, rounds = run_capture(sources, capture, duration=args.duration, interval=args.interval,
                                             stop=stop)
        data = write_capture(args.out, capture, sources, {
            "started": iso(started), "ended": iso(ended), "start_seconds": round(started, 3),
            "end_seconds": round(ended, 3), "interval_seconds": args.interval, "rounds": rounds,
            "kept": "every series" if args.all else f"the series {args.dashboard.name} names, up"
                    + (f", and /{args.keep}/" if args.keep else "")})
        log(f"capture: {data['series']} series, {data['samples']} samples in {args.out} "
            f"({args.out.stat().st_size} bytes) and {metadata_path(args.out).name}")
        failed = [source.describe() for source in sources if source.reads == 0]
        if failed:
            raise WorldError(f"never read: {'; '.join(failed)}")
    except WorldError as exc:
        log(f"ERROR: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
