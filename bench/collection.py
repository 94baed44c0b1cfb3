# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The disk budget's cost: collections of caches of growing size on the bench's mirror, and cached pulls meanwhile.

For each size the mirror starts empty, pulls library/alpine (the image the client keeps pulling), and gets SIZE
synthetic images (bench/synthN:latest, two unique layers each, written as distribution writes them and older than
alpine: the least recently used) copied into its storage. The supervisor's settings get a budget of half the cache
(the role's file is put back afterwards); the client pulls alpine by tag in a loop while `SIGUSR1` starts a
collection beside the serving registry, which evicts the synthetic images down to the low-water mark and deletes
their blobs. The figures come from the supervisor's journal line (total, scan, eviction and sweep times, images
evicted, blobs deleted, bytes reclaimed) and from the client's pulls (each one's start, end and status, on the
machine's one clock).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from bench.benchworld import CLIENT, STORAGE, BenchError, dexec, log, target_name
from world.cache_layout import Layout

SETTINGS = "/etc/registry/supervisor.json"
SAVED_SETTINGS = "/etc/registry/supervisor.json.bench"
CACHE_TOOL = "/usr/local/lib/registry-mirror/libexec/registry_cache.py"
LAYER_BYTES = 32 * 1024
MIB = 1024 * 1024
DONE = re.compile(r"cache collection done in ([0-9.]+) s \(scan ([0-9.]+) s, eviction ([0-9.]+) s, "
                  r"sweep ([0-9.]+) s\): evicted (\d+) images.*deleted (\d+) blobs, reclaimed ([0-9.]+) MiB; "
                  r"cache ([0-9.]+) -> ([0-9.]+) MiB")
# The client's loop: one line per pull of library/alpine by tag: start and end (ns since the epoch) and skopeo's status.
PULL_LOOP = ('rm -f /tmp/stop-loop; while [ ! -e /tmp/stop-loop ]; do s=$(date +%s%N); '
             'skopeo copy -q --retry-times 0 --override-arch amd64 "docker://$1/library/alpine:latest" '
             'oci:/pull/loop:x '
             '>/dev/null 2>&1; r=$?; echo "$s $(date +%s%N) $r"; rm -rf /pull/loop; done')


def synthetic_cache(work: Path, images: int) -> Path:
    """A tar of a storage holding IMAGES synthetic tagged images (two unique LAYER_BYTES layers each)."""
    root = work / f"synthetic-{images}"
    layout = Layout(root)  # the writer of distribution storages the unit tests use too
    for number in range(images):
        layers = [(f"{number}-{layer}-".encode() * LAYER_BYTES)[:LAYER_BYTES] for layer in (1, 2)]
        layout.image(f"bench/synth{number}", f"synth{number}", layers, tag="latest")
    archive = work / f"synthetic-{images}.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root / "docker", arcname="docker")
    return archive


def journal_since(target: str, since: float) -> list[tuple[float, str]]:
    """The registry unit's journal lines since SINCE (epoch seconds), with their times."""
    out = dexec(target, 'journalctl --no-pager -o short-unix -u registry --since "@$1"', f"{since:.3f}")
    lines = []
    for line in out.splitlines():
        stamp, _space, text = line.partition(" ")
        try:
            lines.append((float(stamp), text))
        except ValueError:
            continue
    return lines


def measure(bw: Any, work: Path, images: int, mirror: str, n: int = 1) -> dict[str, Any]:
    """One cache size: fill, baseline pulls, a collection under pulls; the figures."""
    target = target_name(n)
    bw.mirror_clear(n)
    bw.pull(mirror, "alpine")
    bw.wait_stored("alpine")
    archive = synthetic_cache(work, images)
    with archive.open("rb") as handle:
        subprocess.run(["docker", "exec", "-i", target, "tar", "-x", "-C", STORAGE], stdin=handle, check=True,
                       capture_output=True)
    archive.unlink()
    dexec(target, f"chown -R registry:registry {STORAGE}")
    files = int(dexec(target, f"find {STORAGE}/docker -type f | wc -l").strip())
    # The blob data, as the budget counts it (du would count every directory's 4 KiB too).
    cache_mib = int(dexec(target, f"python3 {CACHE_TOOL} du {STORAGE}").split()[0]) / MIB
    budget_mb = max(1, int(cache_mib / 2))
    dexec(target, f'cp -p {SETTINGS} {SAVED_SETTINGS} && python3 -c "$1" {SETTINGS} {budget_mb}',
          "import json, sys; p = sys.argv[1]; s = json.load(open(p)); "
          "s.update(budget_mb=int(sys.argv[2]), budget_percent=0, cache_check_interval=3600); "
          "json.dump(s, open(p, 'w'), indent=2)")
    try:
        bw.mirror_restart(n)
        baseline = [bw.pull(mirror, "alpine") for _run in range(5)]
        start = time.time()
        loop = subprocess.Popen(["docker", "exec", CLIENT, "sh", "-c", PULL_LOOP, "sh", mirror],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        dexec(target, "systemctl kill -s USR1 --kill-whom=main registry")
        deadline = time.monotonic() + 600
        while not any("cache collection done" in text for _when, text in journal_since(target, start)):
            if time.monotonic() > deadline:
                raise BenchError(f"no collection of the {images}-image cache within 600 s")
            time.sleep(0.5)
        time.sleep(2)
        dexec(CLIENT, "touch /tmp/stop-loop")
        output, _errors = loop.communicate(timeout=120)
        problems = dexec(target, f"python3 {CACHE_TOOL} check {STORAGE}", check=False).strip()
    finally:
        dexec(target, f"mv {SAVED_SETTINGS} {SETTINGS}")
        bw.mirror_restart(n)
    lines = journal_since(target, start)
    began = next(t for t, text in lines if "cache collection (asked for" in text)
    back = next(t for t, text in lines if "cache collection done" in text)
    done = next((DONE.search(text) for _when, text in lines if DONE.search(text)), None)
    if done is None:
        raise BenchError("no 'cache collection done' line in the journal:\n"
                         + "\n".join(t for _when, t in lines)[-2000:])
    total, scan, eviction, sweep = (float(done.group(i)) for i in range(1, 5))
    pulls = [(int(s) / 1e9, int(e) / 1e9, int(r)) for s, e, r in (line.split() for line in output.splitlines())]
    during = [(s, e, r) for s, e, r in pulls if s <= back and e >= began]
    result = {
        "images": images, "files": files, "cache_mib": round(cache_mib, 1), "budget_mib": budget_mb,
        "collection_s": total, "scan_s": scan, "eviction_s": eviction, "sweep_s": sweep,
        "window_s": round(back - began, 2),
        "evicted": int(done.group(5)), "blobs_deleted": int(done.group(6)), "reclaimed_mib": float(done.group(7)),
        "cache_after_mib": float(done.group(9)),
        "baseline_pull_s": round(statistics.median(baseline), 3),
        "pulls": len(pulls), "pulls_failed": sum(1 for _start, _end, r in pulls if r),
        "pulls_during": len(during), "pulls_during_failed": sum(1 for _start, _end, r in during if r),
        "pull_during_s": round(statistics.median([e - s for s, e, _status in during]), 3) if during else None,
        "pull_during_max_s": round(max(e - s for s, e, _status in during), 3) if during else None,
        "problems_after": problems if problems != "no problems" else "",
    }
    log(f"   {images} images ({files} files, {cache_mib:.0f} MiB): collection {total:.2f} s (scan {scan:.2f}, eviction "
        f"{eviction:.2f}, sweep {sweep:.2f}), evicted {result['evicted']}, reclaimed {result['reclaimed_mib']} MiB; "
        f"{result['pulls_during']} pulls during it ({result['pulls_during_failed']} failed), median "
        f"{result['pull_during_s']} s vs {result['baseline_pull_s']} s before")
    return result


def section(res: dict[str, Any]) -> str:
    """The report's section."""
    runs = res.get("collections")
    if not runs:
        return ""
    rows = [[r["images"], r["files"], f"{r['cache_mib']:.0f} -> {r['cache_after_mib']:.0f} MiB", r["evicted"],
             f"{r['reclaimed_mib']:.0f} MiB", f"**{r['collection_s']:.2f} s**",
             f"{r['scan_s']:.2f} / {r['eviction_s']:.2f} / {r['sweep_s']:.2f}",
             f"{r['pulls_during'] - r['pulls_during_failed']}/{r['pulls_during']}",
             f"{r['pull_during_s'] if r['pull_during_s'] is not None else '-'} s (max {r['pull_during_max_s']}) vs "
             f"{r['baseline_pull_s']} s"] for r in runs]
    header = ["images cached", "files", "cache (before -> after)", "evicted", "reclaimed", "collection",
              "scan / eviction / sweep (s)", "alpine pulls during it (ok/all)",
              "pull time during it (median) vs before"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    biggest = runs[-1]
    return ("\n## Disk budget: collections of caches of growing size\n\n"
            "Each cache holds library/alpine plus N synthetic images (two 32 KiB layers each) older than it; the "
            "budget "
            "is half the cache and the collection (SIGUSR1) evicts the synthetic images down to 80 % of it while the "
            "client pulls library/alpine by tag in a loop; the registry serves beside the collection, in pull-through "
            "mode. Pull time during it: the pulls that overlapped the collection, against the median of five "
            "before.\n\n"
            + "\n".join(lines) + "\n\n"
            f"On the biggest cache ({biggest['images']} images, {biggest['files']} files) the collection took "
            f"{biggest['collection_s']:.2f} s; every cached pull during it "
            + ("succeeded" if not biggest["pulls_during_failed"] else f"but {biggest['pulls_during_failed']} succeeded")
            + ". The time grows with the number of files (the scan reads every link and manifest; the sweep deletes "
            "file by file), not with the bytes.\n")


def run(bench: Any, sizes: tuple[int, ...], mirror: str) -> None:
    """Every size; results in bench.results["collections"], checks that no pull failed and nothing broke."""
    out = []
    for images in sizes:
        result = measure(bench.bw, bench.work, images, mirror)
        out.append(result)
        bench.check(f"collection of {images} images: every cached pull during it succeeds",
                    result["pulls_during_failed"] == 0 and result["pulls_failed"] == 0,
                    f"{result['pulls_during_failed']} of {result['pulls_during']} during, {result['pulls_failed']} of "
                    f"{result['pulls']} in all failed")
        bench.check(f"collection of {images} images: it evicted, the cache is under the budget and whole",
                    result["evicted"] > 0 and result["cache_after_mib"] <= result["budget_mib"]
                    and not result["problems_after"],
                    f"{result['cache_after_mib']} MiB of {result['budget_mib']} MiB; "
                    f"{result['problems_after'] or 'no problems'}")
    bench.results["collections"] = out
