# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The benchmark's own corner of the test world: a private network, hub, link emulator, client, nginx and targets.

Everything here is created by the benchmark and removed by it: network ``actuated-bench`` (192.168.130.0/24,
internal) and containers ``bench-*``. The test world itself (images, certificates, release fixtures, the fake hub's
code and seeded images) is reused, never changed: see bench/README.md for why the benchmark runs a private instance of
the fake hub instead of sharing ``world-hub``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import world

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

NETWORK = "actuated-bench"
SUBNET = "192.168.130.0/24"
GATEWAY = "192.168.130.254"
HUB_IP = "192.168.130.100"  # the hub itself: only the link emulator talks to it
SHAPER_IP = "192.168.130.101"  # answers as hub.actuated.test on this network
CLIENT_IP = "192.168.130.10"
NGINX_IP = "192.168.130.50"
TARGET_PREFIX = "192.168.130."  # targets at .1 .. .8
MAX_TARGETS = 8
TIER = 9  # the fleet tiers measurement's tier mirror: bench-t9 at .9 (its certificate comes from the fleet CA)
ALL_TARGETS = (*range(1, MAX_TARGETS + 1), TIER)

HUB = "bench-hub"
SHAPER = "bench-shaper"
CLIENT = "bench-client"
NGINX = "bench-nginx"
TARGET = "bench-t{n}"
CONTAINERS = (HUB, SHAPER, CLIENT, NGINX)
LABEL = "org.actuated.bench"

BENCH_CACHE = world.CACHE / "bench"
MIRROR_PORT = 5000
STORAGE = "/var/lib/registry"
BLOBS = f"{STORAGE}/docker/registry/v2/blobs/sha256"
FRONT_UNIT = "registry-front.service"  # the caching front (registry_mirror_front) and its manifest cache
FRONT_CACHE = "/var/cache/registry-front/cache"
DROPIN = "/etc/systemd/system/registry.service.d/zz-bench.conf"
SHAPER_STATS = "/tmp/shaper-stats.json"  # bench/shaper.py writes its counters there on SIGUSR1
BENCH_CONFIG = "/etc/registry/bench-config.yml"

# world.CA_TRUST_CMD, plus a marker written only once update-ca-certificates has finished the bundle (the .pem link
# that world.wait_ca_trusted looks for appears before the bundle is complete).
CLIENT_CMD = ("cp /certs/ca.crt /usr/local/share/ca-certificates/actuated-ca.crt && update-ca-certificates >/dev/null "
              "2>&1"
              " && touch /tmp/ca-ready && exec sleep infinity")

_T0 = time.monotonic()


class BenchError(Exception):
    """A failure with a message meant for a person."""


def log(msg: str) -> None:
    """A progress line on stdout."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def sh(cmd: Sequence[str], *, check: bool = True, stdin: bytes | None = None, timeout: float = 900) -> str:
    """Run a command on this machine; return stdout (raise BenchError with its output when it fails)."""
    try:
        proc = subprocess.run(list(cmd), check=False, capture_output=True, input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}") from exc
    if check and proc.returncode != 0:
        text = (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
        raise BenchError(f"command failed (rc={proc.returncode}): {shlex.join(cmd)}\n{text}")
    return proc.stdout.decode(errors="replace")


def dexec(container: str, script: str, *args: str, check: bool = True, timeout: float = 900) -> str:
    """Run a shell script (with positional ARGS) in a container."""
    return sh(["docker", "exec", container, "sh", "-c", script, "sh", *args], check=check, timeout=timeout)


def target_name(n: int) -> str:
    """bench-t1 .. bench-t8 (bench-t9: the tier)."""
    return TARGET.format(n=n)


def target_ip(n: int) -> str:
    """192.168.130.1 .. .8 (.9: the tier)."""
    return f"{TARGET_PREFIX}{n}"


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max (and every value) of a series."""
    return {"n": len(values), "median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def median_counts(runs: list[dict[str, dict[str, int]]]) -> dict[str, float]:
    """Per counter, the median over runs of its sum over identities; plus who was counted."""
    keys = ("manifest_get", "manifest_head", "blob_get", "bytes", "tokens", "requests")
    out: dict[str, Any] = {k: statistics.median([sum(c.get(k, 0) for c in run.values()) for run in runs]) for k in keys}
    out["identities"] = sorted({name for run in runs for name in run})
    return out


class BenchWorld:  # pylint: disable=too-many-instance-attributes
    """The benchmark's containers and the calls the measurements make on them."""

    def __init__(self, work: Path, rtt_ms: float, mbit: float) -> None:
        self.work = work
        self.rtt_ms = rtt_ms
        self.mbit = mbit
        self.certs = work / "certs"
        self.hub_port = 0
        self.release_port = 0
        self.context = ssl.create_default_context(cafile=str(world.CA_CERT))
        self.images: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------------------------------
    # setup and cleanup
    # ---------------------------------------------------------------------------------------------------------------

    @staticmethod
    def cleanup() -> None:
        """Remove every container and the network the benchmark creates (absent ones are fine)."""
        names = [target_name(n) for n in ALL_TARGETS]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
            list(pool.map(lambda name: world.target_down(name, quiet=True), names))
        for name in CONTAINERS:
            info = world.inspect("container", name)
            if info is None:
                continue
            if (info["Config"].get("Labels") or {}).get(LABEL) != "1":
                raise BenchError(f"container {name} exists but was not made by the benchmark: not touching it")
            sh(["docker", "rm", "-f", name])
        info = world.inspect("network", NETWORK)
        if info is not None:
            for endpoint in (info.get("Containers") or {}).values():
                raise BenchError(f"network {NETWORK} is still used by {endpoint.get('Name')}: not removing it")
            sh(["docker", "network", "rm", NETWORK])

    def preflight(self) -> None:
        """What the benchmark needs from the test world (`make bench` / `python3 -m world up` provide it)."""
        if os.geteuid() != 0:
            raise BenchError("run as root (docker, like the test world)")
        missing = [ref for ref in (world.TARGET_IMAGE.format(arch="amd64"), world.CLIENT_IMAGE)
                   if world.image_label(ref, world.LABEL_RECIPE) is None]
        if missing:
            raise BenchError(f"images missing: {', '.join(missing)}: run `make world` (python3 -m world up) first")
        for path in (world.CA_CERT, world.CA_KEY, world.CERTS / "hub.crt", world.HUB_STATE / "seeded",
                     world.RELEASES / f"v{world.SOURCE_VERSION}" / world.release_name(world.SOURCE_VERSION, "amd64")):
            if not path.exists():
                raise BenchError(f"{path} is missing: run `make world` (python3 -m world up) first")
        if not list(world.DEBS.glob("docker-registry_*_amd64.deb")):
            raise BenchError(f"no docker-registry .deb in {world.DEBS}: run `python3 -m world up` first")

    def nginx_root(self) -> Path:
        """Debian's nginx package, unpacked (downloaded once with `apt-get download`; never installed)."""
        root = BENCH_CACHE / "nginx"
        if (root / "usr/sbin/nginx").exists():
            return root
        debs = BENCH_CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not list(debs.glob("nginx_*_amd64.deb")):
            log("apt-get download nginx (once)")
            proc = subprocess.run(["apt-get", "download", "nginx"], cwd=debs, check=False, capture_output=True)
            if proc.returncode != 0:
                sh(["apt-get", "update"])
                subprocess.run(["apt-get", "download", "nginx"], cwd=debs, check=True, capture_output=True)
        deb = sorted(debs.glob("nginx_*_amd64.deb"))[-1]
        tmp = root.with_name("nginx.tmp")
        sh(["rm", "-rf", str(tmp)])
        sh(["dpkg-deb", "-x", str(deb), str(tmp)])
        tmp.replace(root)
        return root

    def setup(self) -> None:
        """Certificates, network, hub, link emulator, client."""
        world.issue_server_certs(self.certs, sans=(*(f"IP:{target_ip(n)}" for n in range(1, MAX_TARGETS + 1)),
                                                   f"IP:{NGINX_IP}",
                                                   "IP:127.0.0.1", "DNS:localhost"))
        self.certs.chmod(0o755)
        sh(["docker", "network", "create", "--internal", "--subnet", SUBNET, "--gateway", GATEWAY, "--label",
            f"{LABEL}=1", NETWORK])
        common = ["--label", f"{LABEL}=1", "--init", "--pull", "never", "--platform", "linux/amd64"]
        # The hub: world/hub's code on the world's seeded state (read-only), published on ephemeral loopback ports.
        sh(["docker", "run", "-d", "--name", HUB, *common, "--hostname", "hub", "-p", "127.0.0.1::443", "-p",
            "127.0.0.1::8080",
            "-v", f"{world.HUB_DIR}:/hub:ro", "-v", f"{world.HUB_STATE}:/state:ro", "-v", f"{world.CERTS}:/certs:ro",
            "-v", f"{world.RELEASES}:/releases:ro", "-v", f"{world.DEBS}:/debs:ro",
            "-e", f"HUB_USERNAME={world.HUB_USERNAME}", "-e", f"HUB_TOKEN={world.HUB_TOKEN}", "-e", "HUB_RATE_LIMIT=0",
            world.CLIENT_IMAGE, "sh", "/hub/start.sh"])
        sh(["docker", "network", "connect", "--ip", HUB_IP, NETWORK, HUB])
        self.hub_port = int(sh(["docker", "port", HUB, "443/tcp"]).split()[0].rsplit(":", 1)[1])
        self.release_port = int(sh(["docker", "port", HUB, "8080/tcp"]).split()[0].rsplit(":", 1)[1])
        # The emulated internet link, answering as hub.actuated.test (and its token service auth.actuated.test).
        sh(["docker", "run", "-d", "--name", SHAPER, *common, "--network", NETWORK, "--ip", SHAPER_IP,
            "--network-alias", world.HUB_NAME, "--network-alias", world.AUTH_NAME, "-v", f"{BENCH}:/bench:ro",
            world.CLIENT_IMAGE,
            "python3", "/bench/shaper.py", "--forward", f"443={HUB_IP}:443", "--forward", f"8080={HUB_IP}:8080",
            "--rtt-ms", str(self.rtt_ms), "--mbit", str(self.mbit), "--stats", SHAPER_STATS])
        # The client (a VM): skopeo, pulling into a tmpfs so that the client's disk is out of the picture.
        sh(["docker", "run", "-d", "--name", CLIENT, *common, "--network", NETWORK, "--ip", CLIENT_IP, "--tmpfs",
            "/pull:size=3g",
            "-v", f"{world.CERTS}:/certs:ro", world.CLIENT_IMAGE, "sh", "-c", CLIENT_CMD])
        self.wait_hub()
        if dexec(CLIENT, "i=0; while [ $i -lt 300 ] && [ ! -e /tmp/ca-ready ]; do sleep 0.1; i=$((i + 1)); done; "
                         "[ -e /tmp/ca-ready ] && echo ready", check=False).strip() != "ready":
            raise BenchError(f"{CLIENT} did not install the test CA")
        self.images = self.hub("images")["images"]

    def wait_hub(self, timeout: float = 120) -> None:
        """Until the private hub answers /_world/ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.hub("ready").get("ready"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise BenchError(f"{HUB} not ready after "
                         f"{timeout:.0f}s:\n{sh(['docker', 'logs', '--tail', '20', HUB], check=False)}")

    # ---------------------------------------------------------------------------------------------------------------
    # the hub's counters
    # ---------------------------------------------------------------------------------------------------------------

    def hub(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or POST) the private hub's admin API."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"https://127.0.0.1:{self.hub_port}/_world/{path}", data=data,
                                     method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self.context,
                                    timeout=30) as resp:  # nosec B310: loopback, our container
            text = resp.read().decode()
        return json.loads(text) if text.strip() else None

    def hub_reset(self) -> None:
        """Zero the hub's counters (the release counters too)."""
        self.hub("reset", {})

    def hub_counts(self) -> dict[str, dict[str, int]]:
        """Per identity: what Docker Hub would count and what crossed the link."""
        stats = self.hub("stats?recent=0")
        keys = ("manifest_get", "manifest_head", "blob_get", "bytes", "tokens", "requests", "rate_limited")
        return {name: {k: int(c.get(k, 0)) for k in keys} for name, c in stats["identities"].items()}

    def link_bytes(self) -> dict[str, int]:
        """The emulated link's byte counters since it started (down: from the hub to the site, the WAN bytes).

        SIGUSR1 makes bench/shaper.py write them with a new sequence number; this waits for that number.
        """
        def read() -> dict[str, Any]:
            text = dexec(SHAPER, f"cat {SHAPER_STATS} 2>/dev/null || true").strip()
            return dict(json.loads(text)) if text else {"seq": -1}
        before = int(read()["seq"])
        sh(["docker", "kill", "--signal", "USR1", SHAPER])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = read()
            if int(stats["seq"]) > before:
                return {"down": int(stats["bytes_down"]), "up": int(stats["bytes_up"]),
                        "connections": int(stats["connections"])}
            time.sleep(0.05)
        raise BenchError(f"{SHAPER} did not write its counters to {SHAPER_STATS} after SIGUSR1")

    def hub_requests(self) -> list[str]:
        """The hub's /v2/ requests since its last reset, oldest first, one line each: identity, method, path (digests
        cut to 12 hex digits), status, bytes sent."""
        out = []
        for r in self.hub("stats")["recent"]:
            if r["path"].startswith("/v2/"):
                path = re.sub(r"sha256:([0-9a-f]{12})[0-9a-f]{52}", r"sha256:\1", r["path"])
                out.append(f"{r['identity']} {r['method']} {path} {r['status']} {r['bytes']}")
        return out

    def release_counts(self) -> dict[str, dict[str, int]]:
        """The release server's counters per path."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.release_port}/_stats",
                                    timeout=30) as resp:  # nosec B310: loopback
            return dict(json.loads(resp.read()))

    def release_reset(self) -> None:
        """Zero the release server's counters."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.release_port}/_reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30):  # nosec B310: loopback
            pass

    # ---------------------------------------------------------------------------------------------------------------
    # images and the client
    # ---------------------------------------------------------------------------------------------------------------

    def image(self, name: str) -> dict[str, Any]:
        """The hub's record of library/NAME:latest, linux/amd64."""
        record = self.images[f"library/{name}:latest"]
        return {"index": record["digest"], "index_type": record["mediaType"], **record["platforms"]["linux/amd64"]}

    def pull(self, registry: str, name: str, *, by_digest: bool = False, dest: str = "/pull/x",
             timeout: float = 900) -> float:
        """One timed `skopeo copy docker://REGISTRY/library/NAME:latest oci:DEST` in the client (linux/amd64).

        BY_DIGEST pulls library/NAME@<index digest> instead of the tag. The time is taken inside the container
        (docker exec's own overhead excluded); the destination is removed before and after. The pulled manifest
        must be the hub's.
        """
        image = self.image(name)
        ref = "docker://" + f"{registry}/library/{name}" + (f"@{image['index']}" if by_digest else ":latest")
        return self.copy(ref, name, dest=dest, timeout=timeout)

    def copy(self, ref: str, name: str, *, dest: str = "/pull/x", keep: bool = False, timeout: float = 900) -> float:
        """The timed `skopeo copy REF oci:DEST:x` behind pull(); REF may also be a local oci: layout."""
        script = ('rm -rf "$2"; s=$(date +%s%N); '
                  'skopeo copy -q --retry-times 0 --override-arch amd64 "$1" "oci:$2:x" >/dev/null || exit 1; '
                  'e=$(date +%s%N); echo "$((e - s))"; jq -r ".manifests[0].digest" "$2/index.json"; [ -n "$3" ] || rm '
                  '-rf "$2"')
        image = self.image(name)
        output = dexec(CLIENT, script, ref, dest, "keep" if keep else "", timeout=timeout).split()
        if len(output) != 2 or output[1] != image["manifest"]:
            raise BenchError(f"pull of {ref} gave manifest {output[1:]} instead of {image['manifest']}")
        return int(output[0]) / 1e9

    def parallel_pulls(self, registry: str, name: str, total: int, parallel: int,
                       timeout: float = 1800) -> tuple[int, float]:
        """TOTAL pulls of the same tag, PARALLEL at a time, in the client. Returns (successes, wall seconds)."""
        script = ('s=$(date +%s%N); seq "$3" | xargs -P "$4" -I{} sh -c \''
                  'd=/pull/par{}; if skopeo copy -q --retry-times 0 --override-arch amd64 "docker://$0" "oci:$d:x" '
                  '>/dev/null 2>&1; '
                  'then echo ok; else echo FAIL; fi; rm -rf "$d"\' "$1"; e=$(date +%s%N); echo "ns $((e - s))"')
        output = dexec(CLIENT, script, f"{registry}/library/{name}:latest", "", str(total), str(parallel),
                       timeout=timeout).split()
        return output.count("ok"), int(output[output.index("ns") + 1]) / 1e9

    def edge_pulls(self, registries: Sequence[str], name: str, *, at_once: bool,
                   timeout: float = 1800) -> dict[str, Any]:
        """One pull of library/NAME:latest (linux/amd64) through each of REGISTRIES, in the client: all at once, or one
        after another (each when the previous one has finished). Returns the wall time and, per pull, its time and
        whether it succeeded with the hub's manifest."""
        script = ('pull() { d=/pull/edge$1; rm -rf "$d"; s=$(date +%s%N); '
                  'if skopeo copy -q --retry-times 0 --override-arch amd64 "docker://$2/library/$3:latest" "oci:$d:x" '
                  '>/dev/null 2>/tmp/edge$1.err; '
                  'then r=$(jq -r ".manifests[0].digest" "$d/index.json"); else r=FAIL; fi; e=$(date +%s%N); '
                  'echo "pull $1 $((e - s)) $r"; rm -rf "$d"; }; '
                  'mode=$1; image=$2; shift 2; s=$(date +%s%N); i=0; '
                  'for reg in "$@"; do i=$((i + 1)); if [ "$mode" = at-once ]; then pull "$i" "$reg" "$image" & else '
                  'pull "$i" "$reg" "$image"; fi; done; '
                  'wait; e=$(date +%s%N); echo "wall $((e - s))"; '
                  'for f in /tmp/edge*.err; do [ -s "$f" ] && { echo "--- $f"; tail -c 600 "$f"; }; rm -f "$f"; done; '
                  'true')
        out = dexec(CLIENT, script, "at-once" if at_once else "one-after-another", name, *registries, timeout=timeout)
        manifest = self.image(name)["manifest"]
        pulls: dict[int, dict[str, Any]] = {}
        wall = 0.0
        for line in out.splitlines():
            words = line.split()
            if len(words) == 4 and words[0] == "pull":
                pulls[int(words[1])] = {"registry": registries[int(words[1]) - 1], "s": round(int(words[2]) / 1e9, 3),
                                        "ok": words[3] == manifest}
            elif len(words) == 2 and words[0] == "wall":
                wall = int(words[1]) / 1e9
        ordered = [pulls[i] for i in sorted(pulls)]
        if len(ordered) != len(registries) or not all(p["ok"] for p in ordered):
            log(f"   pulls through {', '.join(registries)}: some failed:\n{out[-2000:]}")
        return {"wall_s": round(wall, 3), "pulls": ordered, "succeeded": sum(1 for p in ordered if p["ok"])}

    def link_calibration(self) -> dict[str, float]:
        """What the emulated link really does: TLS request timings and the throughput of a 6 MB download."""
        fmt = "%{time_connect} %{time_appconnect} %{time_starttransfer} %{time_total} %{size_download} %{http_code}"
        small = dexec(CLIENT, 'curl -sS -o /dev/null -w "$1" https://hub.actuated.test/v2/', fmt).split()
        release = f"v{world.SOURCE_VERSION}/{world.release_name(world.SOURCE_VERSION, 'amd64')}"
        big = dexec(CLIENT, 'curl -sS -o /dev/null -w "$1" "$2"', fmt,
                    f"http://hub.actuated.test:8080/{release}").split()
        return {
            "tls_handshake_s": round(float(small[1]), 4),
            "first_request_s": round(float(small[3]), 4),
            "download_bytes": int(float(big[4])),
            "download_s": round(float(big[3]), 4),
            "download_mbit_s": round(float(big[4]) * 8 / 1e6 / float(big[3]), 2),
        }

    # ---------------------------------------------------------------------------------------------------------------
    # the mirror on a target
    # ---------------------------------------------------------------------------------------------------------------

    def wait_mirror(self, n: int = 1, timeout: float = 120) -> None:
        """Until https://TARGET:5000/v2/ answers 200 to the client (the tier: 200 or 401, its certificate from the fleet
        CA the client does not trust: it only has to answer)."""
        script = ('i=0; while [ "$i" -lt "$2" ]; do case "$(curl -s $3 -o /dev/null -w "%{http_code}" '
                  '"https://$1/v2/")" in "$4"|"$5") exit 0;; esac; '
                  'i=$((i + 1)); sleep 0.1; done; exit 1')
        tier = ("-k", "200", "401") if n == TIER else ("", "200", "200")
        proc = subprocess.run(["docker", "exec", CLIENT, "sh", "-c", script, "sh", f"{target_ip(n)}:{MIRROR_PORT}",
                               str(int(timeout * 10)),
                               *tier], check=False, capture_output=True)
        if proc.returncode != 0:
            journal = dexec(target_name(n), "journalctl -u registry -n 20 --no-pager -o cat", check=False)
            raise BenchError(f"the mirror on {target_name(n)} does not answer after {timeout:.0f}s:\n{journal}")

    def mirror_clear(self, n: int = 1) -> None:
        """Empty the mirror's storage (and the caching front's, when it has one) and restart it: the next pull is
        cold. Stopping the registry stops its front too (its ExecStopPost), starting it starts the front (Wants)."""
        dexec(target_name(n),
              f"systemctl stop registry && {{ systemctl stop {FRONT_UNIT} 2>/dev/null || true; }} && "
              f"find {STORAGE} -mindepth 1 -delete && "
              f"if [ -d {FRONT_CACHE} ]; then find {FRONT_CACHE} -mindepth 2 -delete; fi && systemctl start registry")
        self.wait_mirror(n)

    def mirrors_clear(self, edges: Sequence[int], tier: bool = False) -> None:
        """Empty the tier (TIER) first, then EDGES in parallel: an edge that restarts while its tier answers pulls
        through it again (one that saw its tier away meanwhile may have moved on to Docker Hub, until it is
        restarted)."""
        if tier:
            self.mirror_clear(TIER)
        if edges:
            with concurrent.futures.ThreadPoolExecutor(max_workers=len(edges)) as pool:
                list(pool.map(self.mirror_clear, edges))

    def mirror_restart(self, n: int = 1) -> None:
        """Restart the registry unit (the cache stays)."""
        dexec(target_name(n), "systemctl daemon-reload && systemctl restart registry")
        self.wait_mirror(n)

    def wait_stored(self, name: str, n: int = 1, timeout: float = 600) -> float:
        """Until the mirror has stored every blob of NAME (amd64) and its manifests; returns the seconds waited.

        distribution 2.8 stores a blob it proxies in the background (a second upstream fetch), which can finish
        after the client's pull.
        """
        image = self.image(name)
        digests = [image["index"], image["manifest"], image["config"], *image["layers"]]
        paths = [f"{BLOBS}/{d.split(':')[1][:2]}/{d.split(':')[1]}/data" for d in digests]
        script = ('i=0; while [ "$i" -lt "$1" ]; do all=1; for p in $ALL; do [ -f "$p" ] || all=0; done; '
                  '[ "$all" = 1 ] && exit 0; i=$((i + 1)); sleep 0.1; done; exit 1')
        start = time.monotonic()
        proc = subprocess.run(["docker", "exec", "-e", f"ALL={' '.join(paths)}", target_name(n), "sh", "-c", script,
                               "sh",
                               str(int(timeout * 10))], check=False, capture_output=True)
        if proc.returncode != 0:
            raise BenchError(f"the mirror did not store library/{name} within {timeout:.0f}s")
        return time.monotonic() - start

    def mirror_variant(self, config_yml: str | None, n: int = 1) -> None:
        """Run the registry with another config.yml (a systemd drop-in; None: back to the role's own) and restart it."""
        target = target_name(n)
        if config_yml is None:
            dexec(target, f"rm -f {DROPIN} {BENCH_CONFIG}")
        else:
            sh(["docker", "exec", "-i", target, "sh", "-c",
                f"cp -p /etc/registry/config.yml {BENCH_CONFIG} && cat > {BENCH_CONFIG}"],
               stdin=config_yml.encode())
            dropin = f"[Service]\nExecStart=\nExecStart=/usr/local/bin/registry serve {BENCH_CONFIG}\n"
            sh(["docker", "exec", "-i", target, "sh", "-c", f"mkdir -p {os.path.dirname(DROPIN)} && cat > {DROPIN}"],
               stdin=dropin.encode())
        self.mirror_restart(n)

    def mirror_config(self, n: int = 1) -> str:
        """The role's config.yml on a target."""
        return dexec(target_name(n), "cat /etc/registry/config.yml")

    def export_blobs(self, dest: Path, n: int = 1) -> Path:
        """Copy the mirror's blob store (what it has cached) to DEST on this machine's disk."""
        dest.mkdir(parents=True, exist_ok=True)
        sh(["docker", "cp", f"{target_name(n)}:{BLOBS}", str(dest)])
        return dest / "sha256"

    def start_nginx(self, root: Path, conf: Path) -> None:
        """nginx (Debian's binary, unpacked) in a client-image container, serving ROOT over TLS on NGINX_IP:443."""
        ngx = self.nginx_root()
        sh(["docker", "run", "-d", "--name", NGINX, "--label", f"{LABEL}=1", "--init", "--pull", "never", "--platform",
            "linux/amd64",
            "--network", NETWORK, "--ip", NGINX_IP, "-v", f"{ngx}:/opt/nginx:ro", "-v", f"{root}:/srv:ro",
            "-v", f"{conf}:/etc/bench-nginx.conf:ro", "-v", f"{self.certs}:/tls:ro", world.CLIENT_IMAGE,
            "/opt/nginx/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/bench-nginx.conf", "-g", "daemon off;"])
        script = ('i=0; while [ "$i" -lt 100 ]; do [ "$(curl -s -o /dev/null -w "%{http_code}" "https://$1/v2/")" = '
                  '200 ] && exit 0; '
                  'i=$((i + 1)); sleep 0.1; done; exit 1')
        if subprocess.run(["docker", "exec", CLIENT, "sh", "-c", script, "sh", NGINX_IP], check=False).returncode != 0:
            raise BenchError(f"nginx does not answer:\n{sh(['docker', 'logs', '--tail', '20', NGINX], check=False)}")

    def versions(self) -> dict[str, str]:
        """Versions of the pieces, for the results."""
        def version(cmd: list[str]) -> str:
            proc = subprocess.run(cmd, check=False, capture_output=True, timeout=60)
            text = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
            found = re.search(r"[0-9]+\.[0-9]+[0-9A-Za-z.+~-]*", text[0]) if proc.returncode == 0 and text else None
            return found.group(0) if found else ""
        return {
            "docker": version(["docker", "version", "--format", "{{.Server.Version}}"]),
            "skopeo": version(["docker", "exec", CLIENT, "skopeo", "--version"]),
            "nginx": version(["docker", "exec", NGINX, "/opt/nginx/usr/sbin/nginx", "-v"]),
            "ansible-core": version([str(REPO / ".venv/bin/ansible"), "--version"]).rstrip("]"),
            "python": sys.version.split()[0],
        }
