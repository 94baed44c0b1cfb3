# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Run a command and record how long it took: ``timed.py NAME -- CMD...``; ``timed.py --summary`` prints the table
(and forgets it); ``timed.py --reset`` forgets without printing.

Used by the Makefile so every run of ``make test`` ends with the time each stage took.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

LOG = os.path.join(os.path.dirname(__file__), "..", "..", ".cache", "timings.tsv")


def summary() -> int:
    """Print the recorded stages and forget them."""
    if not os.path.exists(LOG):
        return 0
    with open(LOG, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    os.remove(LOG)
    print("\n== stage timings (stages may overlap or nest: the wall-clock line is the run's length) ==")
    for name, seconds, status, *_start in rows:
        print(f"{name:<32} {float(seconds):8.1f} s  {status}")
    spans = [(float(r[3]), float(r[3]) + float(r[1])) for r in rows if len(r) > 3]
    if spans:
        wall = max(end for _begin, end in spans) - min(begin for begin, _end in spans)
        print(f"{'wall clock':<32} {wall:8.1f} s  ({wall / 60:.1f} min)")
    return 0


def main(argv: list[str]) -> int:
    """Entry point."""
    if argv[:1] == ["--summary"]:
        return summary()
    if argv[:1] == ["--reset"]:  # forget stages recorded by runs that never printed their summary
        if os.path.exists(LOG):
            os.remove(LOG)
        return 0
    name, sep, command = argv[0], argv[1], argv[2:]
    if sep != "--" or not command:
        print("usage: timed.py NAME -- CMD... | timed.py --summary | timed.py --reset", file=sys.stderr)
        return 2
    print(f"==> {name}", flush=True)
    started_at = time.time()
    start = time.monotonic()
    rc = subprocess.call(command)
    took = time.monotonic() - start
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(f"{name}\t{took:.1f}\t{'ok' if rc == 0 else f'FAILED rc={rc}'}\t{started_at:.1f}\n")
    print(f"<== {name}: {took:.1f} s{'' if rc == 0 else f' (FAILED rc={rc})'}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
