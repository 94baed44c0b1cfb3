# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_listener: what the supervisor's loopback port takes in (pull events, the caching front's log lines) and
what it exports (metrics), without processes. The listener at work, with registries posting to it, is in
test_registry_supervisor_cache.py, test_registry_supervisor_hardening.py and test_registry_supervisor_front.py."""
from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
from registry_fakes import FILES, free_port
from test_registry_supervisor_front import REGISTRY, front_line

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_listener


@pytest.mark.parametrize(("datagram", "parsed"), [
    (front_line("HIT", "manifest", 200), ("HIT", "manifest", 200, "-")),
    (front_line("MISS", "manifest", 200, REGISTRY), ("MISS", "manifest", 200, REGISTRY)),
    (front_line("-", "blob", 206), ("-", "blob", 206, "-")),
    (front_line("", "other", 404), ("-", "other", 404, "-")),
    (front_line("REVALIDATED", "manifest", 304, REGISTRY) + b"\n", ("REVALIDATED", "manifest", 304, REGISTRY)),
    (front_line("MISS", "blob", 502, f"{REGISTRY}, {REGISTRY}"), ("MISS", "blob", 502, f"{REGISTRY}, {REGISTRY}")),
    (front_line("STALE", "manifest", 200, header="<190>Dec 31 23:59:59 mirror-1 registry_front: "),
     ("STALE", "manifest", 200, "-")),  # a front configured without nohostname
])
def test_the_front_s_log_lines_are_parsed(datagram: bytes, parsed: tuple[str, str, int, str]) -> None:
    assert registry_listener.parse_front_line(datagram) == parsed


@pytest.mark.parametrize("datagram", [
    b"",
    b"hello",
    front_line("HIT", "manifest", 200).replace(b"registry_front", b"nginx"),  # another tag
    front_line("HIT", "manifest", 200)[len(b"<190>Mar  7 09:05:01 "):],  # no syslog header
    front_line("WARM", "manifest", 200),
    front_line("hit", "manifest", 200),
    front_line("HIT", "layer", 200),
    front_line("HIT", "manifest", "20"),
    front_line("HIT", "manifest", "2000"),
    front_line("HIT", "manifest", 200, ""),
    front_line("HIT", "manifest", 200) + b" extra=1\x00" + b"\xff",  # not ASCII
    front_line("HIT", "manifest", 200, "-" + " " * 3000),  # longer than a log line can be
    b"cache=HIT kind=manifest status=200 upstream=-",
])
def test_anything_else_is_not_a_front_log_line(datagram: bytes) -> None:
    assert registry_listener.parse_front_line(datagram) is None


@pytest.mark.parametrize(("request_", "counters"), [
    (("HIT", "manifest", 200, "-"), ["cache_hits"]),
    (("MISS", "manifest", 200, REGISTRY), ["cache_misses"]),
    (("STALE", "manifest", 200, "-"), ["cache_stale"]),
    (("UPDATING", "manifest", 200, "-"), ["cache_stale"]),
    (("EXPIRED", "manifest", 200, REGISTRY), ["cache_revalidated"]),
    (("REVALIDATED", "manifest", 304, REGISTRY), ["cache_revalidated"]),
    (("BYPASS", "other", 200, REGISTRY), ["cache_bypass"]),
    (("-", "blob", 200, "-"), ["blobs_from_disk"]),
    (("-", "blob", 206, "-"), ["blobs_from_disk"]),
    (("-", "blob", 404, "-"), []),
    (("-", "blob", 200, REGISTRY), []),  # the registry served it
    (("HIT", "blob", 200, "-"), ["cache_hits"]),  # from the front's cache, not from the storage
    (("-", "other", 500, "-"), ["errors"]),
    (("MISS", "manifest", 503, REGISTRY), ["cache_misses", "errors"]),
    (("-", "manifest", 499, "-"), []),
])
def test_each_request_counts_where_it_belongs(request_: tuple[str, str, int, str], counters: list[str]) -> None:
    names = registry_listener.front_counters(*request_)
    assert names == ["registry_mirror_front_requests_total"] + [f"registry_mirror_front_{name}_total"
                                                                for name in counters]


@pytest.mark.parametrize(("repository", "digest", "valid"), [
    ("library/alpine", "sha256:" + "a" * 64, True),
    ("ghcr.io/owner/image", "sha512:" + "0" * 128, True),
    ("localhost:5000/a/b", "sha384:" + "f" * 96, True),
    ("library/Alpine", "sha256:" + "a" * 64, False),  # upper case in a path component (a host may have it)
    ("Registry.Example/alpine", "sha256:" + "a" * 64, True),
    ("library/alpine", "sha256:" + "A" * 64, False),
    ("library/alpine", "sha256:" + "a" * 63, False),
    ("library/alpine", "md5:" + "a" * 32, False),
    ("a" * 256, "sha256:" + "a" * 64, False),  # longer than REPOSITORY_MAX
    (None, "sha256:" + "a" * 64, False),
    ("library/alpine", 5, False),
])
def test_pull_events_name_a_repository_and_a_digest_distribution_could_send(repository: object, digest: object,
                                                                            valid: bool) -> None:
    assert registry_listener.valid_event_target(repository, digest) is valid


def test_usage_times_are_kept_across_restarts_and_forgotten_once_evicted(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    usage = registry_listener.Usage(str(path))
    assert usage.snapshot() == {}
    usage.record("library/alpine", "sha256:" + "a" * 64, 100.0)
    usage.record("library/busybox", "sha256:" + "b" * 64, 200.0)
    usage.save()
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 1
    again = registry_listener.Usage(str(path))
    assert again.snapshot() == usage.snapshot()
    again.keep_only({("library/busybox", "sha256:" + "b" * 64)})
    again.save()
    assert registry_listener.Usage(str(path)).snapshot() == {("library/busybox", "sha256:" + "b" * 64): 200.0}


def test_metrics_export_the_upstream_index_only_with_fallbacks() -> None:
    assert "registry_mirror_upstream_index" not in registry_listener.Metrics().text()
    metrics = registry_listener.Metrics(fallbacks=True)
    metrics.set(registry_mirror_upstream_index=2)
    metrics.add(registry_mirror_events_invalid_total=3)
    metrics.add(registry_mirror_events_invalid_total=1)
    text = metrics.text()
    assert "# TYPE registry_mirror_upstream_index gauge\nregistry_mirror_upstream_index 2\n" in text
    assert "# TYPE registry_mirror_events_invalid_total counter\nregistry_mirror_events_invalid_total 4\n" in text


# --- Uses of the cache the front answered itself ----------------------------------------------------------------------

DIGEST = "sha256:" + "c" * 64


def used(cache: str, **fields: str | int) -> bytes:
    """A line of the front's log with the method, repository and digest of the request (FIELDS: kind, status,
    upstream, method, repo, digest instead of a manifest GET of library/alpine answered 200)."""
    line = {"kind": "manifest", "status": 200, "upstream": "-", "method": "GET", "repo": "library/alpine",
            "digest": DIGEST, **fields}
    return (front_line(cache, str(line["kind"]), line["status"], str(line["upstream"]))
            + f" method={line['method']} repo={line['repo']} digest={line['digest']}".encode())


@pytest.mark.parametrize(("datagram", "use"), [
    (used("HIT"), ("library/alpine", DIGEST)),
    (used("STALE", repo="owner/app/tool"), ("owner/app/tool", DIGEST)),
    (used("UPDATING"), ("library/alpine", DIGEST)),
    # distribution answered: it notifies the pull itself.
    (used("MISS", upstream=REGISTRY), None),
    (used("EXPIRED", upstream=REGISTRY), None),
    (used("BYPASS", upstream=REGISTRY), None),
    # not a pull of a manifest the front served.
    (used("HIT", method="HEAD"), None),
    (used("HIT", status=304), None),
    (used("-", kind="blob"), None),
    (used("HIT", repo="-"), None),
    (used("HIT", digest="-"), None),
    (used("HIT", repo="../etc"), None),
    (used("HIT", digest="sha256:short"), None),
    (front_line("HIT", "manifest", 200), None),  # a front of an earlier release: no repository, no digest
])
def test_a_manifest_pulled_from_the_front_s_cache_is_a_use(datagram: bytes, use: tuple[str, str] | None) -> None:
    assert registry_listener.front_use(datagram) == use
    # The counters read the same line either way.
    assert registry_listener.parse_front_line(datagram) is not None


def test_the_front_s_log_records_uses_for_the_cache_s_eviction(tmp_path: Path) -> None:
    """FrontLog with a Usage: each manifest the front served from its cache is recorded as pulled, nothing else."""
    port = free_port()
    usage = registry_listener.Usage(str(tmp_path / "usage.json"))
    metrics = registry_listener.Metrics()
    log = registry_listener.FrontLog(port, metrics, usage)
    try:
        before = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for datagram in (used("MISS", upstream=REGISTRY, repo="library/miss"), used("HIT", method="HEAD"),
                             used("STALE", repo="library/stale"), used("HIT")):
                sock.sendto(datagram, ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while len(usage.snapshot()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # anything else sent would have been read by now
        times = usage.snapshot()
    finally:
        log.close()
    assert set(times) == {("library/stale", DIGEST), ("library/alpine", DIGEST)}, times
    assert all(when >= before for when in times.values())
