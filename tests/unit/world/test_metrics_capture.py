# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""world/metrics_capture.py: the text exposition read as Prometheus reads it (counters, gauges, histograms,
summaries, untyped samples, escapes), the labels of the source added, and the result an OpenMetrics file that the real
promtool turns into blocks holding every sample; sources read over HTTP (a loopback server) and from a command."""
from __future__ import annotations

import argparse
import gzip
import http.server
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import fake_fleet
import pytest

from world import deps
from world import metrics_capture as mc


def promtool_or_skip() -> Path:
    found = deps.promtool()
    if found is None:
        pytest.skip("no promtool (make deps, or python3 -m world promtool, extracts it from Debian's prometheus)")
    return found


def backfill(path: Path, tmp_path: Path) -> int:
    """promtool's blocks of an OpenMetrics file: the number of samples they hold (promtool must accept the file)."""
    text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    source = tmp_path / "backfill.om"
    source.write_bytes(text)
    proc = subprocess.run([str(promtool_or_skip()), "tsdb", "create-blocks-from", "openmetrics", str(source),
                           str(tmp_path / "blocks")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert rows, proc.stdout
    return sum(int(row[-4]) for row in rows)  # NUM SAMPLES, NUM CHUNKS, NUM SERIES, SIZE


def test_the_exposition_is_read_as_prometheus_reads_it() -> None:
    """The supervisor's own text and distribution's (Go client format): each sample in its family, with its type."""
    families = {f.name: f for f in mc.parse_exposition(fake_fleet.exposition(fake_fleet.FLEET[0], 30))}
    assert families["registry_mirror_read_only"].kind == "gauge"
    assert families["registry_mirror_cache_evictions_total"].kind == "counter"
    histogram = families["registry_http_response_size_bytes"]
    assert histogram.kind == "histogram"
    assert {s.name for s in histogram.samples} == {f"registry_http_response_size_bytes_{x}" for x in
                                                   ("bucket", "sum", "count")}
    summary = families["go_gc_duration_seconds"]
    assert summary.kind == "summary" and len(summary.samples) == 4
    hits = families["registry_proxy_hits_total"]
    assert [dict(s.labels) for s in hits.samples] == [{"type": "blob"}, {"type": "manifest"}]
    loose = mc.parse_exposition('# a comment\nloose_metric{a="x\\"y\\\\z\\n"} +Inf 1700000000000\n')
    assert loose[0].kind == "unknown" and loose[0].samples[0].labels == (("a", 'x"y\\z\n'),)
    assert loose[0].samples[0].value == float("inf")
    with pytest.raises(ValueError, match="line 1"):
        mc.parse_exposition("not a sample at all\n")


def test_openmetrics_names_types_and_escapes() -> None:
    """A counter's family drops _total (its samples keep it); a histogram of which only _sum is kept becomes an
    unknown family of that name; labels of the source are added and sorted, an exposition's own label of the same
    name kept as exported_NAME; HELP and label values escaped; # EOF last; each series in increasing time."""
    capture = mc.Capture(lambda name: not name.endswith(("_bucket", "_count")))
    text = ('# HELP c_total A "quoted" help\\\\.\n# TYPE c_total counter\nc_total{instance="inner",v="a\\"b"} 1\n'
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# TYPE g gauge\ng 5\n")
    source = mc.parse_source_labels("instance=host-1,site=x", "registry-mirror")
    for timestamp in (20.5, 10.25):  # read out of order: written in order
        capture.add(mc.parse_exposition(text), source, timestamp)
    out = capture.openmetrics()
    assert out.endswith("# EOF\n")
    assert '# HELP c A \\"quoted\\" help\\\\.\n# TYPE c counter\n' in out
    assert ('c_total{exported_instance="inner",instance="host-1",job="registry-mirror",mirror="docker-hub",'
            'site="x",v="a\\"b"} 1 10.250\n') in out
    assert "# TYPE h_sum unknown\nh_sum{" in out and "h_bucket" not in out and "# TYPE h " not in out
    times = [float(line.rsplit(None, 1)[1]) for line in out.splitlines() if line.startswith("g{")]
    assert times == [10.25, 20.5]


def test_a_counter_without_total_is_not_a_counter_in_openmetrics() -> None:
    """OpenMetrics counters end in _total: an exposition's counter that does not stays a series of the same name,
    typed unknown (renaming it would change what the dashboard selects)."""
    capture = mc.Capture(lambda name: True)
    capture.add(mc.parse_exposition("# TYPE odd counter\nodd 4\n"), (("instance", "h"),), 1.0)
    assert "# TYPE odd unknown\nodd{instance=\"h\"} 4 1.000\n" in capture.openmetrics()


def test_a_synthetic_fleet_capture_is_accepted_whole_by_promtool(tmp_path: Path) -> None:
    """Two hours of five hosts (every series, counter resets, histograms, summaries): promtool's blocks hold every
    sample written (none dropped as out of order or malformed)."""
    capture = mc.Capture(lambda name: True)
    sources = [mc.Source(mc.parse_source_labels(host.labels, mc.JOB), url="synthetic") for host in fake_fleet.FLEET]
    for host, source in zip(fake_fleet.FLEET, sources, strict=True):
        for step in range(0, 121, 2):
            capture.add(mc.parse_exposition(fake_fleet.exposition(host, step)), source.labels, 1.7e9 + step * 60)
            capture.up(source.labels, 1.7e9 + step * 60, 1.0)
    out = tmp_path / "capture.om.gz"
    data = mc.write_capture(out, capture, sources, {"interval_seconds": 120})
    assert json.loads(mc.metadata_path(out).read_text()) == data
    assert backfill(out, tmp_path) == data["samples"] > 0


class Exposition(http.server.ThreadingHTTPServer):
    """A mirror's /metrics on loopback: the story's next minute at each read."""

    reads: int


class Handler(http.server.BaseHTTPRequestHandler):
    server: Exposition

    def do_GET(self) -> None:
        body = fake_fleet.exposition(fake_fleet.FLEET[1], self.server.reads).encode()
        self.server.reads += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        del args


@pytest.fixture
def metrics_url() -> Iterator[str]:
    server = Exposition(("127.0.0.1", 0), Handler)
    server.reads = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_capture_from_a_url_and_a_command(tmp_path: Path, metrics_url: str) -> None:
    """The command line reads an HTTP source and a command's stdout every interval, keeps by default the series the
    dashboard names (and up), and writes a file promtool takes whole, and a sidecar that says what was read."""
    exposition = tmp_path / "exposition.txt"
    exposition.write_text(fake_fleet.exposition(fake_fleet.FLEET[4], 50), encoding="utf-8")
    out = tmp_path / "capture.om"
    command = f"{sys.executable} -c 'import sys; sys.stdout.write(open(sys.argv[1]).read())' {exposition}"
    rc = mc.main(["--out", str(out), "--duration", "0.5", "--interval", "0.25",
                  "--url", "instance=edge-a1,site=a", metrics_url,
                  "--command", "instance=edge-b1,site=b,mirror=ghcr", command])
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    names = {line.split("{", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert "registry_proxy_hits_total" in names and "up" in names and "registry_mirror_read_only" in names
    assert "go_goroutines" not in names and "registry_http_response_size_bytes_bucket" not in names
    assert names <= mc.dashboard_names(mc.DASHBOARD) | {"up"}
    assert re.search(r'^registry_mirror_read_only\{instance="edge-b1",job="registry-mirror",mirror="ghcr",site="b"\} '
                     r"1 \d+\.\d{3}$", text, re.MULTILINE)
    meta = json.loads(mc.metadata_path(out).read_text(encoding="utf-8"))
    assert [s["reads"] for s in meta["sources"]] == [3, 3] and meta["rounds"] == 3
    assert meta["sources"][1]["labels"] == {"instance": "edge-b1", "job": "registry-mirror", "mirror": "ghcr",
                                            "site": "b"}
    assert backfill(out, tmp_path) == meta["samples"]


def test_a_source_that_does_not_answer_is_down(tmp_path: Path) -> None:
    """A source that cannot be read gets up 0 at each read (as a failed scrape does), is counted in the sidecar, and
    the command fails when a source was never read: the file is written all the same."""
    out = tmp_path / "capture.om.gz"
    rc = mc.main(["--out", str(out), "--duration", "0.2", "--interval", "0.2",
                  "--command", "instance=gone", f"{sys.executable} -c 'raise SystemExit(3)'"])
    assert rc == 1
    text = gzip.decompress(out.read_bytes()).decode()
    assert [line.split()[1] for line in text.splitlines() if line.startswith("up{")] == ["0", "0"]
    meta = json.loads(mc.metadata_path(out).read_text(encoding="utf-8"))
    assert meta["sources"][0]["failures"] == 2 and "exit 3" in meta["sources"][0]["last_error"]


def test_source_labels_and_duplicates() -> None:
    """LABELS needs instance, takes only job, instance, mirror and site; two sources with the same labels fail."""
    assert dict(mc.parse_source_labels("instance=a", "j")) == {"instance": "a", "job": "j", "mirror": "docker-hub"}
    for bad in ("mirror=x", "instance=a,zone=b", "instance"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"instance|NAME"):
            mc.parse_source_labels(bad, "j")
    args = mc.build_parser().parse_args(["--out", "x", "--url", "instance=a", "http://127.0.0.1:1/",
                                         "--docker", "instance=a", "c", "http://127.0.0.1:5002/metrics"])
    with pytest.raises(mc.WorldError, match="a/docker-hub"):
        mc.sources_from(args)


def test_docker_sources_fetch_inside_the_container(metrics_url: str) -> None:
    """--docker LABELS CONTAINER URL runs `docker exec CONTAINER python3 -c FETCH URL`; FETCH (here run by this
    Python, no container) prints the exposition of a loopback URL, as inside a target."""
    args = mc.build_parser().parse_args(["--out", "x", "--docker", "instance=tier-a,site=a", "tier-a", metrics_url])
    [source] = mc.sources_from(args)
    assert source.command[:5] == ("docker", "exec", "tier-a", "python3", "-c")
    local = mc.Source(source.labels, command=(sys.executable, *source.command[4:]))
    families = {family.name for family in mc.parse_exposition(local.fetch())}
    assert {"registry_mirror_read_only", "registry_proxy_hits_total"} <= families
