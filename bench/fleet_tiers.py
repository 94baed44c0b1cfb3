# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Fleet tiers: what a site's tier mirror saves Docker Hub, and what it adds to a pull (README "Fleets").

The targets are converged with the real role (playbooks/site.yml): bench-t9 (192.168.130.9) as the site's tier
(registry_mirror_mode: tier from the site play, the Docker Hub token, one account for the edges, its certificate from
the fleet CA the collection creates in the run's work directory), edges with `registry_mirror_tiers` pointing at it
(no token), and edges without tiers (the token, straight to the hub). Tier and edges are on the site side of the
emulated link; only the hub is behind it.

1. Docker Hub's cost for N edges pulling the same new image, with the tier and without: manifest GETs (what Docker
   Hub counts as pulls) and blob GETs at the hub, the bytes it sent, and the bytes that crossed the link (the
   shaper's counters: TLS, tokens and the mirrors' probes included). Each case starts with every mirror involved
   empty; the N edges pull one after another (a rollout: each pulls when the previous one is done) and, for N > 1,
   all at once (a job fanned out to N servers).
2. Cold pull times: edge -> hub (an edge without tiers, empty), edge -> tier -> hub (edge and tier empty), and an
   empty edge behind a tier that already has the image; interleaved run by run where the set-up allows.

Set-up by the size of the largest fleet N: when 2N targets fit in .1-.8 (smoke: N = 2), one converge makes tier, N
edges with the tier and the edges without tiers the earlier steps did not leave (bench-t1 is one: the single
converge's); otherwise (full: N = 8) the N edges without tiers are measured first (the fleet step's last fleet, or
converged here), then the same N targets are converged again with the tier (the converge a fleet that adopts a tier
runs) and measured with it.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import world
from bench.benchworld import MAX_TARGETS, TIER, BenchError, loadavg, log, median_counts, summary, target_ip, target_name

# Every target with the caching front (registry_mirror_front), the role's default: tiers and edges as users run them.
FRONT = True
MODES = ("edge_hub_cold", "edge_tier_hub_cold", "edge_cold_tier_warm")
LABELS = {"edge_hub_cold": "edge -> hub, cold", "edge_tier_hub_cold": "edge -> tier -> hub, cold",
          "edge_cold_tier_warm": "edge cold, tier warm"}
PATTERNS = {"one_after_another": "one after another", "at_once": "all at once"}


def title(plan: Any) -> str:
    """The step's name."""
    return (f"fleet tiers: {', '.join(map(str, plan.tier_fleet))} edge(s) with a tier and without; cold pulls of "
            f"{', '.join(plan.tier_images)} x{plan.tier_runs}")


def mirror(n: int) -> str:
    """The registry of target N, as the client pulls from it."""
    return f"{target_ip(n)}:5000"


def converge(bench: Any, out: dict[str, Any], label: str, plain: list[int], tiered: list[int]) -> None:
    """Boot what is not up, then one converge: the tier (if TIERED) first, then the edges PLAIN (no tiers) and
    TIERED."""
    up = bench.plain
    boot = [n for n in [*plain, *tiered] if n not in up] + ([TIER] if tiered else [])
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(boot))) as pool:
        futures = [pool.submit(world.target_up, target_name(n), "amd64", "actuated-bench", target_ip(n),
                               certs=bench.bw.certs,
                               timeout=600) for n in boot]
        for future in futures:
            future.result()
    booted = time.monotonic() - start
    hosts = {target_name(n): target_ip(n) for n in [*plain, *tiered]}
    tier = {target_name(TIER): target_ip(TIER)} if tiered else None
    result = bench.converge(hosts, label, bench.work / "release-cache-fleet-tiers", tier=tier,
                            tiered={target_name(n) for n in tiered}, front=FRONT)
    bench.plain = (bench.plain | set(plain)) - set(tiered)
    again = sorted(set(tiered) & set(up))
    log(f"   {label}: converge {result['seconds']:.1f}s: tier {'bench-t9' if tiered else '-'}, edges without tiers "
        f"{plain or '-'}, with the tier {tiered or '-'}" + (f" (converged again: {again})" if again else ""))
    out["converges"][label] = {"seconds": result["seconds"], "tier": bool(tiered), "plain_edges": plain,
                               "tiered_edges": tiered,
                               "converged_again": again, "booted": boot, "boot_s": round(booted, 1),
                               "loadavg": loadavg(),
                               "log": result["log"]}


def cost_case(bench: Any, edges: list[int], image: str, *, tier: bool, at_once: bool) -> dict[str, Any]:
    """Every mirror involved emptied; one pull of IMAGE through each of EDGES; what the hub and the link saw.

    AT_ONCE: every edge at the same time (wall time: the client's, first start to last end). Else one after another,
    each once the previous edge (and the tier) had stored the image: a rollout (wall time: the sum of the pulls)."""
    bw = bench.bw
    bw.mirrors_clear(edges, tier=tier)
    bw.hub_reset()
    before = bw.link_bytes()
    stores = [TIER] if tier else []
    if at_once:
        pulled = bw.edge_pulls([mirror(n) for n in edges], image, at_once=True)
        for n in [*edges, *stores]:  # a blob still being stored may still be coming over the link
            bw.wait_stored(image, n)
    else:
        pulled = {"wall_s": 0.0, "pulls": [], "succeeded": 0}
        for n in edges:
            one = bw.edge_pulls([mirror(n)], image, at_once=False)
            for key in ("wall_s", "succeeded"):
                pulled[key] += one[key]
            pulled["pulls"] += one["pulls"]
            for m in [n, *stores]:
                bw.wait_stored(image, m)
    counts = bw.hub_counts()
    requests = bw.hub_requests()
    after = bw.link_bytes()
    total = {k: sum(c[k] for c in counts.values()) for k in ("manifest_get", "manifest_head", "blob_get", "bytes",
                                                             "tokens")}
    others = {name: c["manifest_get"] + c["blob_get"] for name, c in counts.items()
              if name != world.HUB_USERNAME and c["manifest_get"] + c["blob_get"]}
    return {"edges": len(edges), **total, "identities": counts, "gets_not_by_the_account": others,
            "link_down_bytes": after["down"] - before["down"], "link_up_bytes": after["up"] - before["up"],
            "link_connections": after["connections"] - before["connections"],
            "wall_s": round(pulled["wall_s"], 3), "pull_s": [p["s"] for p in pulled["pulls"]],
            "succeeded": pulled["succeeded"],
            "loadavg_1m": [loadavg()[0]], "requests": requests}


def costs(bench: Any, out: dict[str, Any], key: str, edges: list[int], *, tier: bool) -> None:
    """Every fleet size and pattern, for the edges EDGES (with the tier or without)."""
    image = bench.plan.tier_cost_image
    cases: dict[str, dict[str, Any]] = {}
    for size in bench.plan.tier_fleet:
        cases[str(size)] = {}
        for pattern in ("one_after_another", *(("at_once",) if size > 1 else ())):
            case = cost_case(bench, edges[:size], image, tier=tier, at_once=pattern == "at_once")
            cases[str(size)][pattern] = case
            log(f"   {key.replace('_', ' ')}, {size} edge(s) {PATTERNS[pattern]}: hub manifest GETs "
                f"{case['manifest_get']}, "
                f"blob GETs {case['blob_get']}, hub sent {case['bytes'] / 1e6:.1f} MB, link down "
                f"{case['link_down_bytes'] / 1e6:.1f} MB; "
                f"{case['succeeded']}/{size} pulls ok in {case['wall_s']:.2f}s (load {case['loadavg_1m'][0]})")
            bench.check(f"fleet tiers, {key.replace('_', ' ')}: {size} edge(s) {PATTERNS[pattern]}: every pull "
                        "succeeds",
                        case["succeeded"] == size, f"{case['succeeded']}/{size}")
    out["cost"][key] = cases


def timings(bench: Any, out: dict[str, Any], modes: tuple[str, ...], plain: int, tiered: int) -> None:
    """Cold pull times of each image, the MODES interleaved run by run (edge_cold_tier_warm right after
    edge_tier_hub_cold, whose pull warmed the tier)."""
    bw = bench.bw
    for image in bench.plan.tier_images:
        record = out["pulls"].setdefault(image, {"bytes": bw.image(image)["size"], "seconds": {},
                                                 "upstream_per_pull": {},
                                                 "runs": {}})
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        upstream: dict[str, list[dict[str, dict[str, int]]]] = {mode: [] for mode in modes}
        loads = []
        for run in range(bench.plan.tier_runs):
            for mode in modes:
                if mode == "edge_hub_cold":
                    bw.mirrors_clear([plain])
                elif mode == "edge_tier_hub_cold":
                    bw.mirrors_clear([tiered], tier=True)
                else:
                    bw.mirrors_clear([tiered])  # the tier keeps what the previous pull cached
                bw.hub_reset()
                edge = plain if mode == "edge_hub_cold" else tiered
                times[mode].append(bw.pull(mirror(edge), image))
                bw.wait_stored(image, edge)
                if mode == "edge_tier_hub_cold":
                    bw.wait_stored(image, TIER)
                upstream[mode].append(bw.hub_counts())
            loads.append(loadavg()[0])
            log(f"   {image} run {run + 1}/{bench.plan.tier_runs}: "
                + "  ".join(f"{LABELS[m]} {times[m][-1]:.2f}s" for m in modes) + f" (load {loads[-1]})")
        for mode in modes:
            record["seconds"][mode] = summary(times[mode])
            record["upstream_per_pull"][mode] = median_counts(upstream[mode])
            record["runs"][mode] = {"loadavg_1m": loads}
        if "edge_cold_tier_warm" in modes:
            gets = [sum(c["manifest_get"] + c["blob_get"] for c in run.values())
                    for run in upstream["edge_cold_tier_warm"]]
            bench.check(f"fleet tiers: {image}: an empty edge behind a warm tier GETs nothing from the hub",
                        not any(gets),
                        f"hub GETs per run {gets}")
        if "edge_tier_hub_cold" in modes:
            others = [sorted(name for name, c in run.items()
                             if name != world.HUB_USERNAME and c["manifest_get"] + c["blob_get"])
                      for run in upstream["edge_tier_hub_cold"]]
            bench.check(f"fleet tiers: {image}: an edge with a tier never pulls the hub itself (only the tier's "
                        "account GETs)",
                        not any(others), f"other identities with GETs per run: {others}")


def checks(bench: Any, out: dict[str, Any]) -> None:
    """What must hold whatever the speed: one hub pull for the site with a tier (one edge after another), one per
    edge without, and nothing but the tier's account at the hub when the edges have a tier."""
    sizes = [str(s) for s in bench.plan.tier_fleet]
    for key in ("with_tier", "without_tier"):
        cases = out["cost"].get(key)
        if not cases:
            continue
        one = cases[sizes[0]]["one_after_another"]
        for size in sizes[1:]:
            case = cases[size]["one_after_another"]
            if key == "with_tier":
                bench.check(f"fleet tiers: with a tier, Hub manifest GETs for {size} edges (one after another) == "
                            "those for 1 edge",
                            case["manifest_get"] == one["manifest_get"] and case["blob_get"] == one["blob_get"],
                            f"manifest GETs {case['manifest_get']} vs {one['manifest_get']}, blob GETs "
                            f"{case['blob_get']} vs "
                            f"{one['blob_get']}")
            else:
                bench.check(f"fleet tiers: without a tier, {size} edges (one after another) pull the hub {size} times "
                            "as often as 1",
                            case["manifest_get"] == int(size) * one["manifest_get"],
                            f"manifest GETs {case['manifest_get']} vs {one['manifest_get']} for 1 edge")
        if key == "with_tier" and FRONT:
            for size in sizes[1:]:
                case, alone = cases[size]["at_once"], cases[sizes[0]]["one_after_another"]
                bench.check(f"fleet tiers: with a tier behind the front, {size} edges at once cost the hub what 1 "
                            "edge does (one GET per manifest and per blob)",
                            case["manifest_get"] == alone["manifest_get"] and case["blob_get"] == alone["blob_get"],
                            f"manifest GETs {case['manifest_get']} vs {alone['manifest_get']}, blob GETs "
                            f"{case['blob_get']} vs {alone['blob_get']}")
        if key == "with_tier":
            others = {f"{size} {pattern}": case["gets_not_by_the_account"] for size, patterns in cases.items()
                      for pattern, case in patterns.items() if case["gets_not_by_the_account"]}
            bench.check("fleet tiers: with a tier, only the tier's account GETs from the hub (edges hold no token, "
                        "never went direct)",
                        not others, f"{others or 'none'}")


def run(bench: Any) -> None:
    """The whole measurement; results in bench.results["fleet_tiers"]."""
    plan = bench.plan
    if not plan.tier_fleet or not plan.tier_images:
        raise BenchError("fleet tiers: the plan names no fleet sizes or images")
    largest = max(plan.tier_fleet)
    if largest > MAX_TARGETS:
        raise BenchError(f"fleet tiers: at most {MAX_TARGETS} edges (the bench certificate names .1-.{MAX_TARGETS})")
    plain = list(range(1, largest + 1))
    together = 2 * largest <= MAX_TARGETS
    tiered = list(range(largest + 1, 2 * largest + 1)) if together else plain
    out: dict[str, Any] = {
        "sizes": list(plan.tier_fleet), "cost_image": f"library/{plan.tier_cost_image}:latest (linux/amd64)",
        "cost_image_bytes": bench.bw.image(plan.tier_cost_image)["size"], "images": list(plan.tier_images),
        "runs": plan.tier_runs, "front": FRONT,
        "tier": target_name(TIER), "edges_without_tier": [target_name(n) for n in plain],
        "edges_with_tier": [target_name(n) for n in tiered],
        "design": ("one converge: tier, edges with it and edges without it side by side; pull modes interleaved"
                   if together else
                   "edges without tiers measured first, then the same targets converged again with the tier and "
                   "measured"),
        "loadavg_start": loadavg(), "converges": {}, "cost": {}, "pulls": {},
    }
    bench.results["fleet_tiers"] = out
    missing = [n for n in plain if n not in bench.plain]
    if together:
        converge(bench, out, "fleet-tiers", missing, tiered)
        costs(bench, out, "without_tier", plain, tier=False)
        costs(bench, out, "with_tier", tiered, tier=True)
        timings(bench, out, MODES, plain[0], tiered[0])
    else:
        if missing:
            converge(bench, out, "fleet-tiers-edges", missing, [])
        costs(bench, out, "without_tier", plain, tier=False)
        timings(bench, out, MODES[:1], plain[0], tiered[0])
        converge(bench, out, "fleet-tiers-with-tier", [], tiered)
        costs(bench, out, "with_tier", tiered, tier=True)
        timings(bench, out, MODES[1:], plain[0], tiered[0])
    checks(bench, out)
    for record in out["pulls"].values():
        med = {mode: stats["median"] for mode, stats in record["seconds"].items()}
        if med.get("edge_hub_cold"):
            record["tier_cold_vs_edge_alone"] = round(med["edge_tier_hub_cold"] / med["edge_hub_cold"], 2)
            record["tier_warm_vs_edge_alone"] = round(med["edge_cold_tier_warm"] / med["edge_hub_cold"], 2)
    out["loadavg_end"] = loadavg()


# --------------------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------------------


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['median']:.2f} s ({stats['min']:.2f}-{stats['max']:.2f})"


def section(res: dict[str, Any]) -> str:
    """The report's section: Docker Hub's cost per fleet size, then the cold pull times."""
    ft = res.get("fleet_tiers")
    if not ft or not ft.get("cost"):
        return ""
    without, with_tier = ft["cost"].get("without_tier", {}), ft["cost"].get("with_tier", {})
    rows = []
    for size in map(str, ft["sizes"]):
        for pattern, label in PATTERNS.items():
            a, b = without.get(size, {}).get(pattern), with_tier.get(size, {}).get(pattern)
            if not a and not b:
                continue

            def pair(key: str, fmt: Any = str, a: Any = a, b: Any = b) -> str:
                return f"{fmt(a[key]) if a else '-'} / {fmt(b[key]) if b else '-'}"
            rows.append([size, label, f"**{pair('manifest_get')}**", pair("blob_get"), pair("bytes", _mb),
                         pair("link_down_bytes", _mb),
                         pair("wall_s", lambda v: f"{v:.2f} s")])
    text = (f"\n## Fleet tiers: Docker Hub's cost for N edges pulling one new image, without / with a site tier\n\n"
            f"{ft['cost_image']} ({_mb(ft['cost_image_bytes'])}), every mirror empty at the start of each case; edges "
            "and tier on the "
            "site side of the emulated link, the hub behind it. Each cell: without a tier (each edge straight to the "
            "hub with the "
            "token) / with the tier (edges pull from it with its account, it pulls the hub with the token). Converged "
            "by the "
            f"role: {ft['design']}"
            + ("; every mirror with the caching front (registry_mirror_front, the role's default)" if ft.get("front")
               else "; without the caching front") + ".\n\n")
    text += _table(["edges", "pulls", "hub manifest GETs (Docker Hub pulls)", "hub blob GETs", "bytes the hub sent",
                    "bytes down the link (WAN)", "wall time"], rows)
    largest = str(max(ft["sizes"]))
    seq_a = without.get(largest, {}).get("one_after_another")
    seq_b = with_tier.get(largest, {}).get("one_after_another")
    par_b = with_tier.get(largest, {}).get("at_once")
    one_b = with_tier.get(str(min(ft["sizes"])), {}).get("one_after_another")
    if seq_a and seq_b and one_b:
        same = seq_b["manifest_get"] == one_b["manifest_get"]
        text += (f"\nWith the tier, {largest} edges pulling one after another cost Docker Hub {seq_b['manifest_get']} "
                 "counted pulls and "
                 f"{_mb(seq_b['link_down_bytes'])} over the link, {'the same as' if same else 'against'} one edge's "
                 f"{one_b['manifest_get']} and "
                 f"{_mb(one_b['link_down_bytes'])}; without it {seq_a['manifest_get']} and "
                 f"{_mb(seq_a['link_down_bytes'])}"
                 + (f". All at once, the tier passed {par_b['manifest_get']} manifest GETs and {par_b['blob_get']} "
                    "blob GETs to the hub: "
                    + ("what one edge costs: its caching front holds concurrent first requests for a manifest or a "
                       "blob until the first has been answered"
                       if (par_b["manifest_get"], par_b["blob_get"]) == (one_b["manifest_get"], one_b["blob_get"])
                       else "distribution's pull-through cache lets concurrent first requests for an uncached image "
                            "each reach the upstream before the first has stored it") if par_b else "")
                 + ". Link bytes include TLS, tokens and the mirrors' upstream probes.\n")
        one_a = without.get(str(min(ft["sizes"])), {}).get("one_after_another")
        if one_a and one_b["blob_get"] > one_a["blob_get"]:
            text += (f"\nOne edge's cold pull through the empty tier made the hub serve {one_b['blob_get']} blob GETs "
                     f"({_mb(one_b['bytes'])}) where an edge alone needs {one_a['blob_get']} ({_mb(one_a['bytes'])}): "
                     "the tier "
                     "fetched a blob more than once (`requests` in results.json lists the hub's requests of each "
                     "case).\n")
    pulls = ft.get("pulls") or {}
    if pulls:
        prow = []
        for image, d in pulls.items():
            sec = d["seconds"]
            prow.append([f"library/{image}", _mb(d["bytes"]), *(_fmt(sec.get(mode)) for mode in MODES),
                         d.get("tier_cold_vs_edge_alone", "-"), d.get("tier_warm_vs_edge_alone", "-")])
        # The hub's manifest requests (a tag check is a HEAD) and tokens per warm pull; a mirror's /v2/ probe is not
        # the pull's.
        warm_hub = {}
        for image, d in pulls.items():
            counts = (d.get("upstream_per_pull") or {}).get("edge_cold_tier_warm") or {}
            warm_hub[image] = sum(counts.get(key) or 0 for key in ("manifest_head", "manifest_get", "tokens"))
        if all(n == 0 for n in warm_hub.values()):
            warm_check = ("its caching front answers the tag from its cache: no manifest or token request reached the "
                          "hub, upstream_per_pull in results.json")
            warm_cost = "and the tag check"
        else:
            warm_check = ("the tier checks the tag at the hub: "
                          + ", ".join(f"{image} {n}" for image, n in warm_hub.items())
                          + " manifest and token request(s) per pull over the link")
            warm_cost = "but not the tier's tag check"
        text += ("\n### Cold pull through edge -> tier -> hub vs edge -> hub\n\n"
                 f"Medians of {ft['runs']} run(s) (min-max), the client pulling through one edge: an empty edge "
                 "without tiers; an empty "
                 f"edge and an empty tier; an empty edge behind a tier that has the image ({warm_check}).\n\n")
        text += _table(["image", "size (amd64)", *(LABELS[m] for m in MODES), "tier cold / edge alone",
                        "tier warm / edge alone"], prow)
        ratios = "; ".join(f"{image} {d.get('tier_cold_vs_edge_alone', '-')} cold, "
                           f"{d.get('tier_warm_vs_edge_alone', '-')} warm"
                           for image, d in pulls.items())
        text += (f"\nTime against an edge pulling the hub itself (1 = the same): {ratios}. Cold, the image still "
                 "crosses the "
                 "link, plus the tier's hop on the site network and any blob the tier fetches twice (the hub's blob "
                 "GETs per pull are "
                 f"in results.json); warm, the edge skips the link's bandwidth {warm_cost}.\n")
    converges = ft.get("converges") or {}
    if converges:
        text += ("\nConverges of this measurement (playbooks/site.yml, tier play then edge play): "
                 + "; ".join(f"{label} {c['seconds']:.0f} s (tier {'yes' if c['tier'] else 'no'}, "
                             f"{len(c['plain_edges'])} edge(s) "
                             f"without tiers, {len(c['tiered_edges'])} with"
                             + (f", {len(c['converged_again'])} of them converged again" if c["converged_again"]
                                else "") + ")"
                             for label, c in converges.items())
                 + f"; load average {ft.get('loadavg_start', '-')} at the start, {ft.get('loadavg_end', '-')} at the "
                   "end.\n")
    return text
