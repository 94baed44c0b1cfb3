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
from test_registry_supervisor_front import REGISTRY, front_line, sent

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_listener


@pytest.mark.parametrize(("datagram", "parsed"), [
    (front_line("HIT", "manifest", 200), ("HIT", "manifest", 200, "-", 0)),
    (front_line("MISS", "manifest", 200, REGISTRY), ("MISS", "manifest", 200, REGISTRY, 0)),
    (front_line("-", "blob", 206), ("-", "blob", 206, "-", 0)),
    (front_line("", "other", 404), ("-", "other", 404, "-", 0)),
    (front_line("REVALIDATED", "manifest", 304, REGISTRY) + b"\n", ("REVALIDATED", "manifest", 304, REGISTRY, 0)),
    (front_line("MISS", "blob", 502, f"{REGISTRY}, {REGISTRY}"),
     ("MISS", "blob", 502, f"{REGISTRY}, {REGISTRY}", 0)),
    (front_line("STALE", "manifest", 200, header="<190>Dec 31 23:59:59 mirror-1 registry_front: "),
     ("STALE", "manifest", 200, "-", 0)),  # a front configured without nohostname
    # The current front: the body bytes it sent, last.
    (front_line("HIT", "manifest", 200) + sent(1234), ("HIT", "manifest", 200, "-", 1234)),
    (front_line("-", "blob", 206) + sent(0), ("-", "blob", 206, "-", 0)),
    (front_line("MISS", "blob", 200, f"{REGISTRY}, {REGISTRY}") + sent(5 << 30),
     ("MISS", "blob", 200, f"{REGISTRY}, {REGISTRY}", 5 << 30)),
    # A front of the release before: method, repository and digest, no bytes.
    (front_line("HIT", "manifest", 200) + sent(7).rsplit(b" bytes=", 1)[0], ("HIT", "manifest", 200, "-", 0)),
])
def test_the_front_s_log_lines_are_parsed(datagram: bytes, parsed: tuple[str, str, int, str, int]) -> None:
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
    (("MISS", "blob", 200, REGISTRY), []),  # the same, through the front's blob lock (it stores no blob)
    (("HIT", "blob", 200, "-"), ["cache_hits"]),  # from the front's cache, not from the storage
    (("-", "other", 500, "-"), ["errors"]),
    (("MISS", "manifest", 503, REGISTRY), ["cache_misses", "errors"]),
    (("-", "manifest", 499, "-"), []),
])
def test_each_request_counts_where_it_belongs(request_: tuple[str, str, int, str], counters: list[str]) -> None:
    counts = registry_listener.front_counters(*request_)
    assert counts == dict.fromkeys(["registry_mirror_front_requests_total"] + [f"registry_mirror_front_{name}_total"
                                                                               for name in counters], 1)


# (cache, kind, status, upstream): whether the front sent the body itself, without the registry (its bytes served).
SENT_WITHOUT_THE_REGISTRY = [
    (("HIT", "manifest", 200, "-"), True),
    (("STALE", "manifest", 200, REGISTRY), True),  # the registry failed: the stale copy answered
    (("UPDATING", "manifest", 200, "-"), True),
    (("HIT", "blob", 200, "-"), True),  # counted as a cache hit: its bytes too (the front caches no blobs)
    (("-", "blob", 200, "-"), True),
    (("-", "blob", 206, "-"), True),
    # The registry sent these: its own response bytes count them.
    (("MISS", "manifest", 200, REGISTRY), False),
    (("EXPIRED", "manifest", 200, REGISTRY), False),
    (("REVALIDATED", "manifest", 200, REGISTRY), False),
    (("BYPASS", "manifest", 200, REGISTRY), False),
    (("-", "blob", 200, REGISTRY), False),
    (("-", "manifest", 200, REGISTRY), False),  # a manifest by tag with registry_mirror_tag_cache_seconds 0
    # /v2/ is the registry's too; the front's own "{}" while the registry restarts logs the failed attempt's address
    # and is not counted either (2 bytes).
    (("-", "other", 200, REGISTRY), False),
    (("-", "blob", 404, "-"), False),  # not the blob
]


@pytest.mark.parametrize(("request_", "by_the_front"), SENT_WITHOUT_THE_REGISTRY)
def test_the_bytes_the_front_served_without_the_registry_are_counted(request_: tuple[str, str, int, str],
                                                                     by_the_front: bool) -> None:
    counts = registry_listener.front_counters(*request_, 4321)
    assert counts.get("registry_mirror_front_bytes_served_total", 0) == (4321 if by_the_front else 0)
    # Nothing else changes with the bytes: every request counts once, whatever it sent.
    assert {name: count for name, count in counts.items() if name != "registry_mirror_front_bytes_served_total"} \
        == registry_listener.front_counters(*request_)
    assert "registry_mirror_front_bytes_served_total" not in registry_listener.front_counters(*request_, 0)


def test_the_registry_s_bytes_and_the_front_s_add_up_to_all_bytes_served_once() -> None:
    """Each request's body is counted once: by the front's bytes served when the front sent it itself, else by the
    registry's response bytes (registry_http_response_size_bytes_sum) when the registry's answer was sent: an
    upstream address in the front's log, and no answer from the front's cache."""
    served = [request_ for request_, _sent in SENT_WITHOUT_THE_REGISTRY if request_[2] != 404]
    body = {request_: (index + 1) * 1000 for index, request_ in enumerate(served)}
    front = sum(registry_listener.front_counters(*request_, body[request_]).get(
        "registry_mirror_front_bytes_served_total", 0) for request_ in served)
    # What the registry answered: an upstream address in the log, and not an answer from the front's cache.
    registry = sum(body[request_] for request_ in served
                   if request_[3] != "-" and request_[0] not in registry_listener.FRONT_CACHED_ANSWERS)
    assert front + registry == sum(body.values())


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
    (used("HIT") + b" bytes=1532", ("library/alpine", DIGEST)),  # the current front: the bytes it sent, last
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
