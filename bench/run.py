# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Benchmark of actuated.registry: pulls through the mirror against the alternatives, and the role itself.

``make bench`` runs ``python3 -m bench.run`` (the full benchmark, about half an hour here) and writes
bench/results/{results.json,report.md,pulls.png}. ``python3 -m bench.run --smoke`` is the quick check `make test`
runs (small image, few runs, no fleet, no arm64; a few minutes at most) and writes bench/results/smoke/ (git-ignored).
Needs the test world (``python3 -m world up``) and the project venv (``make venv``); runs from the repository root.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import world
from bench import collection, fleet_tiers, report, static_registry
from bench.benchworld import (
    ALL_TARGETS,
    BENCH,
    BENCH_CACHE,
    NGINX_IP,
    REPO,
    SHAPER,
    BenchError,
    BenchWorld,
    loadavg,
    log,
    median_counts,
    sh,
    summary,
    target_ip,
    target_name,
)

VENV_BIN = REPO / ".venv" / "bin"
COLLECTIONS = REPO / ".cache" / "collections"
MIRROR = f"{target_ip(1)}:5000"
UPSTREAM = world.HUB_NAME  # on the bench network this name is the emulated link in front of the hub
MODES = ("direct", "mirror_cold", "mirror_warm", "mirror_warm_digest", "nginx", "client_alone")
# --only SECTION: that section alone, merged into the last run's results
ONLY = ("collections", "fleet-tiers", "role", "front")
TIER_USER = {"username": "bench-edges", "password": "bench-tier-8c1f5d"}  # the tier's one account (Basic auth)
FRONT_TAG_CACHE_S = 60  # registry_mirror_tag_cache_seconds: the role's default, which front() converges with


@dataclasses.dataclass(frozen=True)
class Plan:  # pylint: disable=too-many-instance-attributes
    """What one mode of the benchmark measures."""

    mode: str
    runs: int
    images: tuple[str, ...]
    converge_runs: int
    idempotent: bool
    fleet: tuple[int, ...]
    arm64: bool
    no_pipelining: bool
    tuning: tuple[str, ...]
    tuning_runs: int
    upstream_total: int
    upstream_parallel: int
    cache_sizes: tuple[int, ...]
    out: Path
    tier_fleet: tuple[int, ...] = ()  # fleet tiers: the numbers of edges pulling one new image, with a tier and without
    tier_cost_image: str = "alpine"  # ... that image
    # fleet tiers: the images of the cold pull times (edge -> tier -> hub vs edge -> hub)
    tier_images: tuple[str, ...] = ()
    tier_runs: int = 1  # ... runs of each


FULL = Plan("full", 5, ("alpine", "big"), 5, True, (1, 4, 8), True, True, ("inmemory", "troubleshooting"), 5, 100, 20,
            (250, 1000, 4000), BENCH / "results", (1, 4, 8), "fill1", ("alpine", "big"), 3)
SMOKE = Plan("smoke", 3, ("alpine",), 1, False, (), False, False, ("inmemory",), 1, 20, 5, (100,),
             BENCH / "results" / "smoke",
             (1,), "alpine", ("alpine",), 1)


class Bench:  # pylint: disable=too-many-instance-attributes
    """One run of the benchmark: the plan, the bench world, and the results as they come in."""

    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        BENCH_CACHE.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f"run-{plan.mode}-", dir=BENCH_CACHE))
        self.logs = BENCH_CACHE / "logs" / plan.mode
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.bw = BenchWorld(self.work, args.rtt_ms, args.mbit)
        self.plain: set[int] = set()  # the targets that are up and converged as edges without tiers (numbers)
        self.start = time.monotonic()
        self.results: dict[str, Any] = {
            "schema": 1,
            "mode": plan.mode,
            "machine": machine(),
            "settings": {"runs": plan.runs, "images": list(plan.images), "rtt_ms": args.rtt_ms, "mbit": args.mbit,
                         "converge_runs": plan.converge_runs, "fleet": list(plan.fleet),
                         "registry_version": world.SOURCE_VERSION,
                         "upstream_pulls": plan.upstream_total, "upstream_parallel": plan.upstream_parallel,
                         "tier_fleet": list(plan.tier_fleet), "tier_runs": plan.tier_runs},
            "durations_s": {},
            "checks": [],
            "errors": [],
        }

    # ---------------------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Log a step, its duration and the load average around it."""
        start = time.monotonic()
        log(f"== {name} (load {loadavg()[0]})")
        yield
        took = time.monotonic() - start
        self.results["durations_s"][name] = round(took, 1)
        log(f"== {name}: {took:.1f}s")

    def check(self, name: str, passed: bool, detail: str) -> None:
        """Record a correctness check (a failed one fails the run: these never depend on speed)."""
        self.results["checks"].append({"name": name, "ok": bool(passed), "detail": detail})
        if not passed:
            log(f"CHECK FAILED: {name}: {detail}")

    # ---------------------------------------------------------------------------------------------------------------
    # the role
    # ---------------------------------------------------------------------------------------------------------------

    def converge(self, hosts: dict[str, str], label: str, cache: Path, *, pipelining: bool = True,
                 tier: dict[str, str] | None = None, tiered: Collection[str] = (),
                 front: bool = False) -> dict[str, Any]:
        """ansible-playbook playbooks/site.yml on HOSTS ({container: bind address}); wall time and recap per host.

        TIER ({container: address}): converged first as the site's tier (group registry_tiers: the fleet CA issues its
        certificate; the Docker Hub token and one account for the edges); the hosts of HOSTS named in TIERED are edges
        pulling from it, without the token (README "Fleets"). The others pull Docker Hub with the token, as always.
        FRONT: with the caching front (registry_mirror_front).
        """
        hub = {"registry_mirror_dockerhub_username": world.HUB_USERNAME,
               "registry_mirror_dockerhub_token": world.HUB_TOKEN}
        edges: dict[str, dict[str, Any]] = {}
        for name, ip in hosts.items():
            # The bench's edges listen on addresses of its own network, not actuated's bridge: a private address
            # opted in.
            edges[name] = {"registry_mirror_bind_address": ip, "registry_mirror_bind_any_private_address": True}
            if name in tiered and tier:
                edges[name]["registry_mirror_tiers"] = [{"url": f"https://{address}:5000",
                                                         **TIER_USER} for address in tier.values()]
            else:
                edges[name].update(hub)
        common = {
            "ansible_connection": "community.docker.docker",
            "registry_mirror_version": world.SOURCE_VERSION,
            "registry_mirror_release_base_url": f"http://127.0.0.1:{self.bw.release_port}",
            "registry_mirror_upstream_url": world.HUB_URL,
            "registry_mirror_local_cache_dir": str(cache),
            "registry_mirror_front": front,
        }
        groups: dict[str, Any] = {"actuated_agents": {"hosts": edges}}
        if tier:
            common["registry_mirror_fleet_ca_dir"] = str(self.work / "fleet-ca")
            groups["registry_tiers"] = {"hosts": {name: {"registry_mirror_bind_address": ip,
                                                         "registry_mirror_tier_users": [TIER_USER],
                                                         **hub} for name, ip in tier.items()}}
        inventory = self.work / f"inventory-{label}.yml"
        inventory.write_text(json.dumps({"all": {"vars": common, "children": groups}}, indent=1), encoding="utf-8")
        every = {**hosts, **(tier or {})}
        cfg = self.work / f"ansible-{label}.cfg"
        cfg.write_text("[defaults]\ninterpreter_python = /usr/bin/python3\nretry_files_enabled = False\n"
                       f"forks = {max(5, len(every))}\n[connection]\npipelining = {pipelining}\n", encoding="utf-8")
        env = {**os.environ, "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
               "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        logfile = self.logs / f"{label}.log"
        start = time.monotonic()
        with logfile.open("wb") as handle:
            proc = subprocess.Popen([str(VENV_BIN / "ansible-playbook"), "-i", str(inventory),
                                     "playbooks/site.yml"],  # pylint: disable=consider-using-with
                                    cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
            last = start
            while proc.poll() is None:
                time.sleep(0.5)
                if time.monotonic() - last >= 30:
                    last = time.monotonic()
                    tasks = re.findall(r"^TASK \[(.*)\]", logfile.read_text(errors="replace"), re.M)
                    log(f"   {label}: {last - start:.0f}s, at: {tasks[-1] if tasks else '-'}")
                if time.monotonic() - start > 3600:
                    proc.kill()
        seconds = time.monotonic() - start
        text = logfile.read_text(errors="replace")
        recap = {m[0]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m[1])}
                 for m in re.findall(r"^(\S+)\s+: (ok=.*)$", text, re.M)}
        if proc.returncode != 0 or set(recap) != set(every):
            raise BenchError(f"converge {label} failed (rc={proc.returncode}); {logfile}:\n"
                             + "\n".join(text.splitlines()[-25:]))
        return {"seconds": round(seconds, 2), "recap": recap, "log": str(logfile)}

    def tarball_gets(self) -> dict[str, int]:
        """Release tarball downloads (GET) the release server saw since its last reset, per path."""
        return {path: c["GET"] for path, c in self.bw.release_counts().items()
                if path.endswith(".tar.gz") and c.get("GET")}

    def first_converge(self, hosts: dict[str, str], arch: str, label: str, *, pipelining: bool = True,
                       idempotent: bool = True, front: bool = False) -> dict[str, Any]:
        """Fresh targets (made by world.target_up), a fresh controller cache: first converge, then a re-run."""
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            futures = [pool.submit(world.target_up, name, arch, "actuated-bench", ip, certs=self.bw.certs, timeout=600)
                       for name, ip in hosts.items()]
            for future in futures:
                future.result()
        boot = time.monotonic() - start
        cache = self.work / f"release-cache-{label}"
        self.bw.release_reset()
        first = self.converge(hosts, f"{label}-first", cache, pipelining=pipelining, front=front)
        downloads = self.tarball_gets()
        changed = sum(r.get("changed", 0) for r in first["recap"].values())
        log(f"   {label}: first converge {first['seconds']:.1f}s on {len(hosts)} {arch} host(s) ({changed} changes), "
            f"tarball downloads {sum(downloads.values())}")
        self.check(f"{label}: one tarball download per version and architecture", list(downloads.values()) == [1],
                   f"{downloads}")
        out: dict[str, Any] = {"hosts": len(hosts), "arch": arch, "pipelining": pipelining,
                               "target_boot_s": round(boot, 1), "first": first, "tarball_downloads": downloads,
                               "loadavg": loadavg()}
        if idempotent:
            again = self.converge(hosts, f"{label}-again", cache, pipelining=pipelining, front=front)
            changed = {h: r.get("changed", 0) for h, r in again["recap"].items()}
            log(f"   {label}: idempotent re-run {again['seconds']:.1f}s, changed {changed}")
            self.check(f"{label}: re-run changes nothing", not any(changed.values()), f"changed={changed}")
            out["again"] = again
        return out

    def role_single(self) -> None:
        """First converge + idempotent re-run on one amd64 target, plan.converge_runs times. Leaves bench-t1 up."""
        runs = []
        for i in range(self.plan.converge_runs):
            hosts = {target_name(1): target_ip(1)}
            runs.append(self.first_converge(hosts, "amd64", f"single-amd64-{i + 1}", idempotent=self.plan.idempotent))
        self.plain = {1}
        self.results["role"] = {"single_amd64": {
            "runs": runs,
            "first_s": summary([r["first"]["seconds"] for r in runs]),
            "again_s": summary([r["again"]["seconds"] for r in runs]) if self.plan.idempotent else None,
            "target_boot_s": summary([r["target_boot_s"] for r in runs]),
        }}

    # ---------------------------------------------------------------------------------------------------------------
    # pulls
    # ---------------------------------------------------------------------------------------------------------------

    def prepare_nginx(self) -> None:
        """Fill the mirror with every image, copy its blobs out, lay them out as a static registry, start nginx."""
        self.bw.mirror_clear()
        for name in self.plan.images:
            self.bw.pull(MIRROR, name)
            self.bw.wait_stored(name)
        blobs = self.bw.export_blobs(self.work / "mirror-blobs")
        root = self.work / "static"
        locations = static_registry.build(blobs, root, {name: self.bw.image(name) for name in self.plan.images})
        conf = self.work / "nginx.conf"
        conf.write_text(static_registry.nginx_conf(locations), encoding="utf-8")
        conf.chmod(0o644)
        self.work.chmod(0o755)
        self.bw.start_nginx(root, conf)

    def pulls(self) -> None:
        """Per image and run, interleaved: direct over the link, cold mirror, warm mirror, nginx."""
        self.prepare_nginx()
        out: dict[str, Any] = {}
        for name in self.plan.images:
            # The client's own limit: skopeo copying a local OCI layout (in the same tmpfs) with no network at all.
            local = f"/pull/local-{name}"
            self.bw.copy(f"docker://{NGINX_IP}/library/{name}:latest", name, dest=local, keep=True)
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            upstream: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES[:4]}
            fills: list[float] = []
            loads = []
            for i in range(self.plan.runs):
                self.bw.hub_reset()
                times["direct"].append(self.bw.pull(UPSTREAM, name))
                upstream["direct"].append(self.bw.hub_counts())
                self.bw.mirror_clear()
                self.bw.hub_reset()
                times["mirror_cold"].append(self.bw.pull(MIRROR, name))
                fills.append(round(self.bw.wait_stored(name), 2))
                upstream["mirror_cold"].append(self.bw.hub_counts())
                self.bw.hub_reset()
                times["mirror_warm"].append(self.bw.pull(MIRROR, name))
                upstream["mirror_warm"].append(self.bw.hub_counts())
                self.bw.hub_reset()
                times["mirror_warm_digest"].append(self.bw.pull(MIRROR, name, by_digest=True))
                upstream["mirror_warm_digest"].append(self.bw.hub_counts())
                times["nginx"].append(self.bw.pull(NGINX_IP, name))
                times["client_alone"].append(self.bw.copy(f"oci:{local}:x", name))
                loads.append(loadavg()[0])
                log(f"   {name} run {i + 1}/{self.plan.runs}: " + "  ".join(f"{m} {times[m][-1]:.2f}s" for m in MODES)
                    + f"  (cold: stored {fills[-1]:.1f}s after the pull; load {loads[-1]})")
            gets = [sum(c["manifest_get"] + c["blob_get"] for c in run.values()) for run in upstream["mirror_warm"]]
            self.check(f"{name}: warm mirror pulls by tag GET nothing from the upstream", not any(gets),
                       f"GETs per run {gets}")
            requests = [sum(c["requests"] + c["tokens"] for c in run.values())
                        for run in upstream["mirror_warm_digest"]]
            self.check(f"{name}: warm mirror pulls by digest do not contact the upstream", not any(requests),
                       f"upstream requests per run {requests}")
            med = {mode: statistics.median(times[mode]) for mode in MODES}
            out[name] = {
                "bytes": self.bw.image(name)["size"],
                "seconds": {mode: summary(times[mode]) for mode in MODES},
                "upstream_per_pull": {mode: median_counts(upstream[mode]) for mode in upstream},
                "cold_stored_after_pull_s": summary(fills),
                "loadavg_1m": loads,
                "warm_speedup_vs_direct": round(med["direct"] / med["mirror_warm"], 2),
                "warm_vs_nginx": round(med["mirror_warm"] / med["nginx"], 2),
                "warm_digest_vs_nginx": round(med["mirror_warm_digest"] / med["nginx"], 2),
                "cold_vs_direct": round(med["mirror_cold"] / med["direct"], 2),
            }
        self.results["pulls"] = out

    def front(self) -> None:
        """The pulls and upstream cost measurements against a mirror converged with the caching front (its first
        converge and re-run measured too); under results["front"], their checks named "front: ..."."""
        first_check = len(self.results["checks"])
        role = self.first_converge({target_name(1): target_ip(1)}, "amd64", "front-amd64", front=True)
        self.plain = {1}
        self.pulls()
        self.upstream_cost()
        cost = self.results["upstream_cost"]
        self.check("a burst of first pulls costs one Docker Hub pull per manifest (the index and amd64's)",
                   cost["mirror_cold_start"]["manifest_get"] == 2, f"{cost['mirror_cold_start']['manifest_get']} GETs")
        outage = self.front_outage()
        self.check("an outage of Docker Hub fails no cached pull through the front",
                   None not in outage["first_cached_s"] + outage["after_tag_expiry_s"], json.dumps(outage))
        self.results["front"] = {"role": role, "pulls": self.results.pop("pulls"),
                                 "upstream_cost": self.results.pop("upstream_cost"), "outage": outage}
        for check in self.results["checks"][first_check:]:
            check["name"] = "front: " + check["name"]

    def front_outage(self) -> dict[str, Any]:
        """Docker Hub vanishes under a warm mirror with the front: the emulated link is frozen (docker pause: every
        connection hangs, as with a host that stops answering, the slowest way to fail). Timed: the first cached pulls
        at once, and again once the tag's cache entry has expired (the front answers with its stale copy while it asks
        distribution in the background). None: a pull that failed."""
        name = self.plan.images[0]
        self.bw.pull(MIRROR, name)

        def timed() -> float | None:
            try:
                return round(self.bw.pull(MIRROR, name, timeout=120), 3)
            except BenchError as exc:
                log(f"   cached pull of {name} during the outage failed: {exc}")
                return None

        out: dict[str, Any] = {"image": name, "tag_cache_seconds": FRONT_TAG_CACHE_S}
        sh(["docker", "pause", SHAPER])
        try:
            out["first_cached_s"] = [timed() for _pull in range(3)]
            time.sleep(FRONT_TAG_CACHE_S + 2)
            out["after_tag_expiry_s"] = [timed() for _pull in range(3)]
        finally:
            sh(["docker", "unpause", SHAPER])
        log(f"   Docker Hub away: cached pulls of {name} {out['first_cached_s']} s at once, "
            f"{out['after_tag_expiry_s']} s once the tag's cache entry expired")
        return out

    def tuning(self) -> None:
        """Warm pulls with the role's config against variants of it (a drop-in; the role is not changed)."""
        base = self.bw.mirror_config()
        variants: dict[str, str | None] = {"baseline": None}
        for name in self.plan.tuning:
            variants[name] = tune(base, name)
        out: dict[str, Any] = {"variants": {name: describe(name) for name in variants}, "images": {}}
        try:
            for image in self.plan.images:
                times: dict[str, list[float]] = {name: [] for name in variants}
                runs = self.plan.tuning_runs
                for i in range(runs):
                    for name, config in variants.items():  # interleaved, so that a load change hits every variant
                        self.bw.mirror_variant(config)
                        # By digest: only the mirror's own work, without the jitter of the upstream tag check.
                        self.bw.pull(MIRROR, image, by_digest=True)  # fills the variant's in-memory state; not measured
                        times[name].append(self.bw.pull(MIRROR, image, by_digest=True))
                    log(f"   {image} run {i + 1}/{runs}: " + "  ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()))
                base_med = statistics.median(times["baseline"])
                out["images"][image] = {name: {**summary(t), "vs_baseline": round(statistics.median(t) / base_med, 3)}
                                        for name, t in times.items()}
        finally:
            self.bw.mirror_variant(None)
        self.results["tuning"] = out

    def upstream_cost(self) -> None:
        """What Docker Hub would count for N pulls of one tag from P parallel clients, without and with the mirror."""
        total, parallel = self.plan.upstream_total, self.plan.upstream_parallel
        out: dict[str, Any] = {"image": "library/alpine:latest (linux/amd64)", "pulls": total, "parallel": parallel}
        cases = (("direct", UPSTREAM, False), ("mirror_cold_start", MIRROR, True), ("mirror_cached", MIRROR, False))
        for case, registry, clear in cases:
            if clear:
                self.bw.mirror_clear()
            self.bw.hub_reset()
            oks, wall = self.bw.parallel_pulls(registry, "alpine", total, parallel)
            if registry == MIRROR:
                self.bw.wait_stored("alpine")
            counts = self.bw.hub_counts()
            out[case] = {"succeeded": oks, "wall_s": round(wall, 2), "identities": counts,
                         "manifest_get": sum(c["manifest_get"] for c in counts.values()),
                         "manifest_head": sum(c["manifest_head"] for c in counts.values())}
            self.check(f"upstream cost {case}: every pull succeeds", oks == total, f"{oks}/{total}")
            log(f"   {case}: {oks}/{total} pulls in {wall:.1f}s; upstream manifest GETs {out[case]['manifest_get']} "
                f"HEADs {out[case]['manifest_head']} ({', '.join(counts) or 'nobody'})")
        self.results["upstream_cost"] = out

    # ---------------------------------------------------------------------------------------------------------------

    def fleet(self, keep: bool = False) -> None:
        """Fleets of N amd64 targets converged in one play: wall time and release downloads. KEEP: leave the last
        fleet up (the fleet tiers measurement pulls through it)."""
        out = {}
        for size in self.plan.fleet:
            self.remove_targets()
            hosts = {target_name(n): target_ip(n) for n in range(1, size + 1)}
            out[str(size)] = self.first_converge(hosts, "amd64", f"fleet-{size}", idempotent=False)
            self.plain = set(range(1, size + 1))
        if not keep:
            self.remove_targets()
        self.results.setdefault("role", {})["fleet"] = out

    def single_extra(self, key: str, arch: str, pipelining: bool) -> None:
        """One first converge + re-run on a fresh single target (arm64, or amd64 without pipelining)."""
        self.remove_targets()
        hosts = {target_name(1): target_ip(1)}
        self.results.setdefault("role", {})[key] = self.first_converge(hosts, arch, key, pipelining=pipelining)
        self.remove_targets()

    def remove_targets(self) -> None:
        """Remove bench-t1..9."""
        names = [target_name(n) for n in ALL_TARGETS]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(lambda name: world.target_down(name, quiet=True), names))
        self.plain = set()

    # ---------------------------------------------------------------------------------------------------------------

    def run(self) -> bool:
        """Every step; returns whether the run had no error and no failed check."""
        plan = self.plan
        try:
            with self.step("preflight and cleanup of an earlier run"):
                self.bw.preflight()
                preflight_venv()
                self.bw.cleanup()
                self.bw.nginx_root()
            with self.step("setup: network, private hub, emulated link, client"):
                self.bw.setup()
                self.results["link"] = self.bw.link_calibration()
                log(f"   link: {self.results['link']}")
            if self.args.only == "collections":
                with self.step("role: first converge on one amd64 target"):
                    self.first_converge({target_name(1): target_ip(1)}, "amd64", "single-amd64", idempotent=False)
                with self.step(f"disk budget: collections of {', '.join(map(str, plan.cache_sizes))}-image caches"):
                    collection.run(self, plan.cache_sizes, MIRROR)
            elif self.args.only == "fleet-tiers":
                with self.step(fleet_tiers.title(plan)):
                    fleet_tiers.run(self)
            elif self.args.only == "front":
                with self.step(f"caching front: pulls of {', '.join(plan.images)} x{plan.runs} and the upstream cost "
                               f"of {plan.upstream_total} pulls, through a mirror with registry_mirror_front"):
                    self.front()
            elif self.args.only == "role":
                with self.step(f"role: first converge + re-run on one amd64 target x{plan.converge_runs}"):
                    self.role_single()
            else:
                self.measurements()
        except (BenchError, world.WorldError) as exc:
            self.results["errors"].append(str(exc))
            log(f"ERROR: {exc}")
        except KeyboardInterrupt as exc:
            self.results["errors"].append(f"interrupted {exc}".strip())
            log(f"interrupted {exc}".strip())
        finally:
            self.finish()
        return not self.results["errors"] and all(c["ok"] for c in self.results["checks"])

    def measurements(self) -> None:
        """Every measurement of the plan, in order (after the set-up)."""
        plan = self.plan
        with self.step(f"role: first converge + re-run on one amd64 target x{plan.converge_runs}"):
            self.role_single()
        with self.step(f"pulls: {', '.join(plan.images)} x{plan.runs} (direct, mirror cold/warm, nginx, skopeo alone)"):
            self.pulls()
        with self.step(f"tuning: {', '.join(plan.tuning)} vs the role's config"):
            self.tuning()
        with self.step(f"upstream cost: {plan.upstream_total} pulls, {plan.upstream_parallel} in parallel"):
            self.upstream_cost()
        if plan.cache_sizes:
            with self.step(f"disk budget: collections of {', '.join(map(str, plan.cache_sizes))}-image caches"):
                collection.run(self, plan.cache_sizes, MIRROR)
        tiers = bool(plan.tier_fleet) and not self.args.no_fleet_tiers
        if plan.fleet:
            with self.step(f"role: fleets of {', '.join(map(str, plan.fleet))} amd64 targets"):
                self.fleet(keep=tiers)
        if tiers:
            with self.step(fleet_tiers.title(plan)):
                fleet_tiers.run(self)
            self.remove_targets()
        if plan.no_pipelining:
            with self.step("role: one amd64 target without pipelining"):
                self.single_extra("single_amd64_no_pipelining", "amd64", False)
        if plan.arm64 and not self.args.no_arm64:
            with self.step("role: one arm64 target (qemu)"):
                self.single_extra("single_arm64", "arm64", True)

    def finish(self) -> None:
        """Versions, cleanup (unless --keep), the run's total time."""
        with contextlib.suppress(BenchError, world.WorldError, OSError):
            self.results["versions"] = self.bw.versions()
        if not self.args.keep:
            try:
                self.bw.cleanup()
            except (BenchError, world.WorldError) as exc:
                self.results["errors"].append(f"cleanup: {exc}")
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log(f"--keep: containers, network and {self.work} left in place (python3 -m bench.run --cleanup removes "
                "them)")
        self.results["machine"]["loadavg_end"] = loadavg()
        self.results["durations_s"]["total"] = round(time.monotonic() - self.start, 1)
        self.results["logs"] = str(self.logs)

    def write(self, passed: bool) -> Path:
        """results.json, report.md, pulls.png. A failed full run never replaces the committed results."""
        out = self.plan.out
        if self.plan.mode == "full" and not passed:
            out = BENCH_CACHE / "failed-full"
        out.mkdir(parents=True, exist_ok=True)
        results = self.results
        only = self.args.only
        if only:  # into the last run's results, beside its other measurements (its checks of that section replaced)
            key = only.replace("-", "_")
            last = out / "results.json"
            results = json.loads(last.read_text(encoding="utf-8")) if passed and last.exists() else {}
            if passed and results:
                results[key] = self.results.get(key)
                prefix = {"collections": "collection of ", "fleet_tiers": "fleet tiers",
                          "role": "single-amd64-", "front": "front: "}[key]  # its checks' names begin so
                results["checks"] = [c for c in results.get("checks", [])
                                     if c.get("section") != key and not c["name"].startswith(prefix)] + [
                    {**c, "section": key} for c in self.results["checks"]]
                results.setdefault("durations_s", {})[key] = self.results["durations_s"]
                results.setdefault("settings", {}).update(
                    {k: v for k, v in self.results["settings"].items() if k not in results["settings"]})
            else:
                out = BENCH_CACHE / f"failed-{only}" if not passed else out
                out.mkdir(parents=True, exist_ok=True)
                results = self.results
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        render(out)
        return out


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


def render(out: Path) -> None:
    """report.md and pulls.png from OUT/results.json (the chart with the venv's matplotlib)."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    chart = out / "pulls.png"
    chart.unlink(missing_ok=True)
    python = VENV_BIN / "python"
    proc = subprocess.run([str(python if python.exists() else sys.executable), str(BENCH / "chart.py"),
                           str(out / "results.json"),
                           str(chart)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"WARNING: no chart ({(proc.stdout + proc.stderr).strip()[-300:]})")
    earlier_path = BENCH / "results" / "distribution-2.8.2" / "results.json"  # the last run on Debian's 2.8.2, kept
    earlier = json.loads(earlier_path.read_text(encoding="utf-8")) if earlier_path.exists() else None
    (out / "report.md").write_text(report.render(results, chart.name if chart.exists() else None, earlier),
                                   encoding="utf-8")


def tune(config: str, variant: str) -> str:
    """The role's config.yml with one change."""
    if variant == "inmemory":
        new = config.replace("\nstorage:\n", "\nstorage:\n  cache:\n    blobdescriptor: inmemory\n", 1)
    elif variant == "troubleshooting":
        new = re.sub(r"(?m)^  level: \w+$", "  level: debug", config.replace("    disabled: true",
                                                                             "    disabled: false", 1), count=1)
    else:
        raise BenchError(f"unknown tuning variant {variant}")
    if new == config:
        raise BenchError(f"could not apply {variant} to the role's config.yml:\n{config}")
    return new


def describe(variant: str) -> str:
    """One line per variant for the report."""
    return {
        "baseline": "the role's config.yml (log level warn, access log off, no blob descriptor cache)",
        "inmemory": "storage.cache.blobdescriptor: inmemory",
        "troubleshooting": "registry_mirror_troubleshooting: true (log level debug, access log on)",
    }[variant]


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal")), 0)
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    osname = ""
    with contextlib.suppress(OSError):
        osname = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                       if line.startswith("PRETTY_NAME=")), "")
    return {"cpu_model": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(), "os": osname,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "loadavg_start": loadavg(),
            "note": "2 cores; other test jobs may have run at the same time: see the load averages"}


def preflight_venv() -> None:
    """ansible-playbook from the project venv, and the collection where Ansible finds it."""
    if not (VENV_BIN / "ansible-playbook").exists():
        raise BenchError(f"{VENV_BIN / 'ansible-playbook'} is missing: run `make venv` first")
    link = COLLECTIONS / "ansible_collections" / "actuated" / "registry"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)


def bench_lock() -> contextlib.AbstractContextManager[None]:
    """One benchmark at a time on this machine (they share names and addresses)."""
    return world.file_lock(BENCH_CACHE / ".lock", "another benchmark")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="quick mode for `make test`: small image, few runs (bench/results/smoke/)")
    parser.add_argument("--runs", type=int, help="runs per pull and tuning measurement (full: 5, smoke: 3 and 1)")
    parser.add_argument("--rtt-ms", type=float, default=40.0,
                        help="emulated round-trip time to the upstream (default 40)")
    parser.add_argument("--mbit", type=float, default=100.0,
                        help="emulated link bandwidth, Mbit/s per direction (default 100)")
    parser.add_argument("--no-arm64", action="store_true", help="skip the arm64 converge (full mode)")
    parser.add_argument("--no-fleet", action="store_true", help="skip the fleets of 1/4/8 targets (full mode)")
    parser.add_argument("--no-fleet-tiers", action="store_true",
                        help="skip the fleet tiers measurement (edges with and without a tier)")
    parser.add_argument("--only", choices=ONLY,
                        help="only this section (after the set-up), merged into the last run's results.json "
                             "(with --smoke: the smoke's)")
    parser.add_argument("--collections-only", action="store_true", help="the same as --only collections")
    parser.add_argument("--keep", action="store_true", help="leave the containers and network for inspection")
    parser.add_argument("--cleanup", action="store_true", help="only remove what an earlier --keep run left")
    parser.add_argument("--render", action="store_true",
                        help="only redraw report.md and pulls.png from results.json (with --smoke: the smoke's)")
    args = parser.parse_args(argv)
    if args.collections_only:
        args.only = "collections"
    if args.render:
        render((SMOKE if args.smoke else FULL).out)
        return 0
    if args.cleanup:
        with bench_lock():
            BenchWorld.cleanup()
            for path in BENCH_CACHE.glob("run-*"):
                shutil.rmtree(path, ignore_errors=True)
        return 0
    plan = SMOKE if args.smoke else FULL

    def terminated(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)  # clean up and keep the partial results, as on Ctrl-C
    if args.runs:
        plan = dataclasses.replace(plan, runs=max(1, args.runs), tuning_runs=max(1, args.runs),
                                   tier_runs=max(1, args.runs))
    if args.no_fleet:
        plan = dataclasses.replace(plan, fleet=())
    with bench_lock():
        bench = Bench(plan, args)
        log(f"benchmark ({plan.mode}): results to {plan.out}, logs to {bench.logs}")
        passed = bench.run()
        out = bench.write(passed)
    total = bench.results["durations_s"]["total"]
    if passed:
        log(f"done in {total:.0f}s: {out / 'report.md'}")
        return 0
    failed = [c["name"] for c in bench.results["checks"] if not c["ok"]]
    log(f"FAILED after {total:.0f}s: errors {bench.results['errors']}, failed checks {failed}; results in {out}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
