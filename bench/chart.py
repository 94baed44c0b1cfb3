# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""pulls.png from results.json: pull times per image (median bar, min-max whisker) for the four ways to pull.

Run with the project venv's python (matplotlib): ``.venv/bin/python bench/chart.py RESULTS.json OUT.png``.
bench/run.py calls it; without matplotlib it fails and run.py carries on without a chart.
"""

from __future__ import annotations

import json
import sys

MODES = (("mirror_warm", "mirror,\nwarm", "#2a9d8f"), ("mirror_warm_digest", "mirror, warm\n(by digest)", "#8ab17d"),
         ("mirror_cold", "mirror,\ncold", "#e9c46a"), ("direct", "direct\n(emulated link)", "#e76f51"),
         ("nginx", "nginx, static\n(local limit)", "#264653"),
         ("client_alone", "skopeo alone\n(no network)", "#9aa5b1"))


def main(argv: list[str]) -> int:
    """Draw one panel per image."""
    import matplotlib  # noqa: PLC0415  # pylint: disable=import-outside-toplevel  # only to draw, in the venv
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  # pylint: disable=import-outside-toplevel

    with open(argv[0], encoding="utf-8") as handle:
        results = json.load(handle)
    pulls = results.get("pulls") or {}
    if not pulls:
        print("no pull results to draw", file=sys.stderr)
        return 1
    settings = results["settings"]
    fig, axes = plt.subplots(1, len(pulls), figsize=(max(8.5, 7.0 * len(pulls)), 5.2), squeeze=False)
    for ax, (image, data) in zip(axes[0], pulls.items(), strict=True):
        names, medians, low, high, colors, tops = [], [], [], [], [], []
        for key, label, color in MODES:
            stats = data["seconds"].get(key)
            if not stats:
                continue
            names.append(label)
            medians.append(stats["median"])
            low.append(stats["median"] - stats["min"])
            high.append(stats["max"] - stats["median"])
            colors.append(color)
            tops.append(stats["max"])
        bars = ax.bar(range(len(names)), medians, yerr=[low, high], capsize=5, color=colors)
        for rect, value, top in zip(bars, medians, tops, strict=True):
            ax.annotate(f"{value:.2f} s", (rect.get_x() + rect.get_width() / 2, top), ha="center", va="bottom",
                        xytext=(0, 3), textcoords="offset points", fontsize=9)
        ax.set_ylim(0, max(tops) * 1.1)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("seconds per pull (median; whiskers min-max)")
        ax.set_title(f"library/{image}:latest, linux/amd64 ({data['bytes'] / 1e6:.0f} MB), "
                     f"n={data['seconds']['direct']['n']}")
        ax.grid(axis="y", alpha=0.3)
    machine = results["machine"]
    fig.suptitle(f"skopeo pulls: mirror (distribution {settings['registry_version']}) vs direct over "
                 f"{settings['rtt_ms']:g} ms RTT / {settings['mbit']:g} Mbit/s vs nginx\n"
                 f"{machine['cpu_model']}, {machine['cores']} cores, {machine['date']}, load "
                 f"{machine['loadavg_start'][0]}"
                 f"-{machine.get('loadavg_end', ['?'])[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
