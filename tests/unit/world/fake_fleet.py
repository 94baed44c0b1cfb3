# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""A made-up fleet's /metrics for the tests of world/metrics_capture.py and world/dashboard.py: what a mirror's
supervisor serves (its registry_mirror_* metrics, rendered by its own Metrics class, then distribution's in the Go
client's text format: counters, a histogram, a summary, a gauge) at a moment of a story. Two sites, a tier and edges:
jobs pull, the caches warm up (hits grow, misses stop), a cache passes its budget and collections evict, one edge
serves read-only for a while. Nothing random: the same moment, the same text."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from pathlib import Path

FILES = Path(__file__).resolve().parents[3] / "roles" / "registry_mirror" / "files"
GIB = 1 << 30


def supervisor() -> types.ModuleType:
    """registry-supervisor as a module (as tests/unit/test_alerts_dashboard.py loads it)."""
    name = "registry_supervisor"
    if name not in sys.modules:
        if str(FILES) not in sys.path:
            sys.path.insert(0, str(FILES))
        spec = importlib.util.spec_from_file_location(name, FILES / "registry-supervisor.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclasses.dataclass(frozen=True)
class Host:
    """A mirror host of the story: its labels, how many pulls a minute its jobs make, when (minutes) it serves
    read-only, and its cache's budget."""

    instance: str
    site: str
    pulls_per_minute: float
    read_only: tuple[float, float] = (-1.0, -1.0)
    budget: float = 2 * GIB

    @property
    def labels(self) -> str:
        """The labels the capture gives it."""
        return f"instance={self.instance},mirror=docker-hub,site={self.site}"


FLEET = (Host("tier-a", "a", 6), Host("edge-a1", "a", 4), Host("edge-a2", "a", 3, budget=0.6 * GIB),
         Host("tier-b", "b", 5), Host("edge-b1", "b", 2, read_only=(40.0, 65.0)))


def distribution_text(host: Host, minute: float) -> str:
    """distribution's metrics at MINUTE, in the Go client's text format."""
    pulls = host.pulls_per_minute * minute
    misses = min(pulls, 6 + pulls * 0.05)  # a cold start, then 5 % of requests miss
    manifest_misses = min(pulls / 3, 3 + pulls * 0.02)
    hits, manifest_hits = pulls - misses, pulls / 3 - manifest_misses
    served = pulls * 12e6
    lines = ["# HELP registry_proxy_hits_total The number of total hits", "# TYPE registry_proxy_hits_total counter",
             f'registry_proxy_hits_total{{type="blob"}} {hits:.6f}',
             f'registry_proxy_hits_total{{type="manifest"}} {manifest_hits:.6f}',
             "# HELP registry_proxy_misses_total The number of total misses",
             "# TYPE registry_proxy_misses_total counter",
             f'registry_proxy_misses_total{{type="blob"}} {misses:.6f}',
             f'registry_proxy_misses_total{{type="manifest"}} {manifest_misses:.6f}',
             "# HELP registry_proxy_requests_total The number of total requests",
             "# TYPE registry_proxy_requests_total counter",
             f'registry_proxy_requests_total{{type="blob"}} {pulls:.6f}',
             f'registry_proxy_requests_total{{type="manifest"}} {pulls / 3:.6f}',
             "# HELP registry_proxy_pulled_bytes_total The size of total bytes pulled from the upstream",
             "# TYPE registry_proxy_pulled_bytes_total counter",
             f"registry_proxy_pulled_bytes_total {misses * 12e6:.6f}",
             "# HELP registry_http_response_size_bytes The HTTP response sizes in bytes.",
             "# TYPE registry_http_response_size_bytes histogram"]
    for handler, share in (("blob", 0.97), ("manifest", 0.03)):
        for le in ("1024", "1.048576e+06", "1.073741824e+09", "+Inf"):
            count = pulls if le in ("1.073741824e+09", "+Inf") else pulls * (0.1 if le == "1024" else 0.6)
            lines.append(f'registry_http_response_size_bytes_bucket{{handler="{handler}",le="{le}"}} {count:.6f}')
        lines += [f'registry_http_response_size_bytes_sum{{handler="{handler}"}} {served * share:.6g}',
                  f'registry_http_response_size_bytes_count{{handler="{handler}"}} {pulls:.6f}']
    lines += ["# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.",
              "# TYPE go_gc_duration_seconds summary",
              'go_gc_duration_seconds{quantile="0.5"} 4.2e-05', 'go_gc_duration_seconds{quantile="1"} 0.000311',
              f"go_gc_duration_seconds_sum {minute * 0.001:.6g}", f"go_gc_duration_seconds_count {minute * 3:.6f}",
              "# HELP go_goroutines Number of goroutines that currently exist.", "# TYPE go_goroutines gauge",
              "go_goroutines 31"]
    return "\n".join(lines) + "\n"


def exposition(host: Host, minute: float) -> str:
    """What HOST's supervisor serves at MINUTE of the story: its own metrics, then distribution's, whose counters stand
    still while it serves read-only and start again from 0 after (the supervisor restarts it)."""
    metrics = supervisor().Metrics()
    read_only = host.read_only[0] <= minute < host.read_only[1]
    collections = int(minute // 10)
    grown = min(host.pulls_per_minute * minute * 20e6, 3 * GIB)
    evicted = max(0.0, grown - host.budget * 0.9) if host.budget else 0.0
    metrics.set(registry_mirror_read_only=float(read_only), registry_mirror_cache_budget_bytes=host.budget,
                registry_mirror_cache_bytes=grown - evicted, registry_mirror_free_bytes=40 * GIB - grown + evicted,
                registry_mirror_cache_images=12.0)
    metrics.add(registry_mirror_cache_collections_total=collections,
                registry_mirror_cache_evictions_total=int(evicted / 150e6),
                registry_mirror_cache_reclaimed_bytes_total=evicted)
    text: str = metrics.text()
    start, end = host.read_only
    counted = minute if start < 0 or minute < start else start if minute < end else minute - end
    return text + distribution_text(host, counted)
