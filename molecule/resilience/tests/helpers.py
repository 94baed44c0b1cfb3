# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Helpers of the resilience scenario: the target seen through `docker exec` (fast enough to time things), a poller
that measures how long VMs see no mirror, a pull runner inside the VM, cache integrity checks, the fake Docker Hub's
counters and the summary every test adds to.

Imported as `helpers` (molecule/conftest.py owns the module name `conftest`).
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import ARCH, DEFAULT_VERSION, MIRROR, Hub, run, world

# The tests assert behaviour and counts, never durations (those are recorded for the summary). A wait for something
# the mirror must do ends at HANG_GUARD only so that a hang fails the run instead of blocking it: it is no limit the
# mirror has to meet. The arm64 target runs under qemu user emulation (about 3x slower).
SLOW = 3.0 if ARCH == "arm64" else 1.0
HANG_GUARD = 120 * SLOW
STORAGE = "/var/lib/registry"
SMALL_FS = "/srv/registry-small"  # a 128 MiB tmpfs of the target (.config/molecule/config.yml), for the disk-full case
CERTS = "/var/lib/actuated/certs"
ALPINE = "library/alpine:latest"
ALPINE_320 = "library/alpine:3.20"  # same content as latest, another tag: uncached until something pulls it
SMALL1, SMALL2, SMALL3 = (f"library/small{i}:latest" for i in (1, 2, 3))
ARCHES = ("amd64", "arm64")

SUMMARY: dict[str, Any] = {
    "arch": ARCH,
    "faults": [],
    "load": [],
    "security": [],
    "lost": {"cached_blobs_lost_or_altered": None, "pulls_that_should_have_worked_but_failed": 0, "details": []},
    "bad_input": "covered by tests/unit (no host) and molecule/variants (against a working mirror: fail early, change nothing; rollback)",
    "details": {},
}


def record(section: str, case: str, ok: bool, **figures: Any) -> None:
    """Add one case to the summary (replacing an earlier entry of the same name)."""
    SUMMARY[section] = [row for row in SUMMARY[section] if row["case"] != case]
    SUMMARY[section].append({"case": case, "ok": ok, **figures})


def lost_pull(what: str) -> None:
    """Count a pull that should have worked and did not."""
    SUMMARY["lost"]["pulls_that_should_have_worked_but_failed"] += 1
    SUMMARY["lost"]["details"].append(what)


# --------------------------------------------------------------------------------------------------------------------
# The target, through docker exec
# --------------------------------------------------------------------------------------------------------------------

STATE_SCRIPT = r"""
import json, os, subprocess
main = int(subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "registry"], capture_output=True,
                          text=True).stdout.strip() or 0)
def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields
procs = []
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        with open(f"/proc/{entry}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        if int(entry) != main and int(stat[1]) != main:
            continue
        st = status(entry)
    except (OSError, IndexError, ValueError):
        continue
    cmd = [c.decode(errors="replace") for c in cmd if c]
    if cmd and "binfmt" in cmd[0]:  # qemu-user emulation (binfmt_misc with the P flag): interpreter, path, argv
        cmd = cmd[2:]
    procs.append({"pid": int(entry), "ppid": int(stat[1]), "start": int(stat[19]), "cmd": cmd,
                  "uid": st.get("Uid", "").split(), "cap_eff": st.get("CapEff"), "no_new_privs": st.get("NoNewPrivs"),
                  "hwm_kb": int(st.get("VmHWM", "0 kB").split()[0]), "rss_kb": int(st.get("VmRSS", "0 kB").split()[0])})
print(json.dumps({"main": main, "procs": procs}))
"""


class Target:
    """The server under test, driven with `docker exec` (faster than testinfra's Ansible backend when timing)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell script as root on the target."""
        return run(["docker", "exec", self.name, "sh", "-c", script], check=check, timeout=timeout)

    def out(self, script: str, timeout: float = 120) -> str:
        """Stdout of a script that must succeed."""
        return self.sh(script, timeout=timeout).stdout.strip()

    def py(self, script: str, *args: str, timeout: float = 120) -> Any:
        """Run a Python script on the target and decode the JSON it prints."""
        proc = run(["docker", "exec", self.name, "python3", "-c", script, *args], timeout=timeout)
        return json.loads(proc.stdout)

    def state(self) -> dict[str, Any]:
        """registry.service's supervisor and `registry serve` children: pid, mode, privileges, peak memory."""
        return self.py(STATE_SCRIPT)

    def serving_child(self) -> dict[str, Any] | None:
        """The newest `registry serve` child (an older one may still be draining after a switch)."""
        state = self.state()
        children = [p for p in state["procs"] if p["ppid"] == state["main"] and "serve" in p["cmd"]]
        return max(children, key=lambda p: p["start"]) if children else None

    def mode(self) -> str:
        """pull-through, read-only (the supervisor's cache-only mode) or down, from the supervisor's last word in the
        journal of the unit's current run (root cannot read the service user's /proc/PID/environ without
        CAP_SYS_PTRACE)."""
        if self.serving_child() is None:
            return "down"
        said = self.out("journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID=$(systemctl show -p InvocationID --value registry)"
                        " | grep -E 'serving the cache read-only|back to pull-through mode|switch done: ' | tail -n 1")
        if "back to pull-through mode" in said:  # decided: the read-only registry serves until the switch is done
            return "read-only"
        return "read-only" if "read-only" in said else "pull-through"

    def wait_switch_done(self, since: str, mode: str, timeout: float) -> str:
        """The journal since SINCE once the supervisor said that its switch to MODE ("serving the cache read-only",
        "pulling through") is done: from then on new connections reach the new registry."""
        text = f"switch done: {mode}"
        wait_for(text, lambda: text in self.journal(since), timeout, interval=0.5)
        return self.journal(since)

    def now(self) -> str:
        """The target's clock, for journalctl --since."""
        return self.out("date '+%Y-%m-%d %H:%M:%S'")

    @staticmethod
    def mark() -> str:
        """A journalctl --since value for this instant, to the microsecond (the target shares this machine's clock):
        a count of journal lines from it includes nothing logged before."""
        return f"@{time.time():.6f}"

    def restarts(self) -> int:
        """How many times systemd restarted registry.service by itself (Restart=) since the target booted."""
        return int(self.out("systemctl show -p NRestarts --value registry"))

    def starts(self, since: str) -> int:
        """How many times registry.service started since SINCE (journalctl --since)."""
        return sum(line.startswith("Started registry.service") for line in self.journal(since).splitlines())

    def front_reloads(self, since: str) -> int:
        """How many times the caching front (registry-front.service) was reloaded since SINCE."""
        return sum(line.startswith("Reloaded registry-front.service")
                   for line in self.journal(since, "registry-front").splitlines())

    def journal(self, since: str, unit: str = "registry") -> str:
        """Journal lines of UNIT since SINCE."""
        return self.out(f"journalctl --no-pager -o cat -u {unit} --since '{since}'")


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Seconds until PREDICATE holds; AssertionError naming WHAT after TIMEOUT."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"{what}: not after {timeout:.0f} s")


# --------------------------------------------------------------------------------------------------------------------
# The VM: pulls (timed inside the VM) and the availability poller
# --------------------------------------------------------------------------------------------------------------------

PULLS_SCRIPT = r"""
import concurrent.futures, json, os, shutil, subprocess, sys, threading, time
cfg = json.loads(sys.argv[1])
results, lock = [], threading.Lock()
def pull(ref, arch, dest):
    start = time.time()
    proc = subprocess.run(["skopeo", "copy", "--retry-times", str(cfg["retries"]), "--override-arch", arch,
                           f"docker://{cfg['mirror']}/{ref}", f"oci:{dest}:x"], capture_output=True, text=True)
    end = time.time()
    if not cfg.get("keep"):
        shutil.rmtree(dest, ignore_errors=True)
    row = {"ref": ref, "arch": arch, "ok": proc.returncode == 0, "s": round(end - start, 3), "start": start, "end": end,
           "retries": proc.stderr.lower().count("retrying"), "err": proc.stderr.strip()[-400:] if proc.returncode else ""}
    with lock:
        results.append(row)
def worker(n):
    i = 0
    while True:
        if cfg.get("stop_file"):
            if os.path.exists(cfg["stop_file"]) or time.time() - t0 > cfg["max_seconds"]:
                return
            job = cfg["jobs"][i % len(cfg["jobs"])]
        else:
            with lock:
                if not queue:
                    return
                job = queue.pop()
        pull(job[0], job[1], f"{cfg['dir']}/{n}-{i}")
        i += 1
        time.sleep(cfg.get("pause", 0))
t0 = time.time()
queue = [tuple(j) for j in cfg["jobs"]] * cfg.get("repeat", 1)
shutil.rmtree(cfg["dir"], ignore_errors=True)
os.makedirs(cfg["dir"])
with concurrent.futures.ThreadPoolExecutor(cfg["workers"]) as pool:
    list(pool.map(worker, range(cfg["workers"])))
if not cfg.get("keep"):
    shutil.rmtree(cfg["dir"], ignore_errors=True)
print(json.dumps(results))
"""


def pulls(jobs: list[tuple[str, str]], *, workers: int = 1, repeat: int = 1, retries: int = 0, keep: bool = False,
          timeout: float = 600) -> list[dict[str, Any]]:
    """Run skopeo pulls of JOBS ((ref, arch) through the mirror) in the VM, WORKERS at a time, each REPEAT times.

    Every pull goes to its own OCI layout; each result has ok, s (seconds, measured in the VM), retries and err."""
    cfg = {"jobs": jobs, "workers": workers, "repeat": repeat, "retries": retries, "keep": keep, "mirror": MIRROR,
           "dir": f"/tmp/resilience-{uuid.uuid4().hex[:8]}"}
    proc = run(["docker", "exec", world.VM_CONTAINER, "python3", "-c", PULLS_SCRIPT, json.dumps(cfg)], check=False,
               timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"the pull runner failed in {world.VM_CONTAINER}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def pull(ref: str, arch: str = "amd64", retries: int = 0) -> dict[str, Any]:
    """One timed pull of REF through the mirror, from the VM."""
    return pulls([(ref, arch)], retries=retries)[0]


@contextlib.contextmanager
def pull_loop(jobs: list[tuple[str, str]], *, workers: int, retries: int, max_seconds: float) -> Iterator[list[dict[str, Any]]]:
    """VM clients pulling JOBS in a loop (WORKERS in parallel, 0.2 s between a client's pulls) for as long as the
    block runs; the list fills at exit."""
    stop = f"/tmp/resilience-stop-{uuid.uuid4().hex[:8]}"
    cfg = {"jobs": jobs, "workers": workers, "retries": retries, "mirror": MIRROR, "stop_file": stop, "pause": 0.2,
           "max_seconds": max_seconds, "dir": f"/tmp/resilience-{uuid.uuid4().hex[:8]}"}
    proc = subprocess.Popen(["docker", "exec", world.VM_CONTAINER, "python3", "-c", PULLS_SCRIPT, json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results: list[dict[str, Any]] = []
    try:
        yield results
    finally:
        run(["docker", "exec", world.VM_CONTAINER, "touch", stop])
        stdout, stderr = proc.communicate(timeout=max_seconds + 120)
        run(["docker", "exec", world.VM_CONTAINER, "rm", "-f", stop])
        if proc.returncode != 0:
            raise AssertionError(f"pull loop failed: {stderr[-2000:]}")
        results.extend(json.loads(stdout))


POLL_SCRIPT = r"""
import http.client, json, os, socket, ssl, sys, time, urllib.error, urllib.request
url, stop, max_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = ssl.create_default_context()
def why(exc):
    if isinstance(exc, urllib.error.HTTPError):
        return f"http {exc.code}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason).lower():
        return "timeout"
    if isinstance(reason, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                           http.client.IncompleteRead)) or "eof" in str(reason).lower():
        return "dropped"
    return f"{type(reason).__name__}: {str(reason)[:80]}"
samples, t0 = [], time.time()
print("polling", flush=True)
while not os.path.exists(stop) and time.time() - t0 < max_seconds:
    start = time.time()
    try:
        with urllib.request.urlopen(url, timeout=1, context=ctx) as resp:
            failure = "" if resp.status == 200 else f"http {resp.status}"
    except Exception as exc:  # every failure is kept, by kind
        failure = why(exc)
    samples.append([round(start, 3), not failure, failure])
    time.sleep(max(0.0, 0.1 - (time.time() - start)))
print(json.dumps(samples))
"""


class Poller:
    """The VM asks https://MIRROR/v2/ every 100 ms (a new TLS connection each time, 1 s timeout) while the block runs.

    `gap(start, end)` is the longest time the VM saw no mirror in that window: from the first failed request of a run
    of failures to the next answer (resolution 0.1 s). `failures(start, end)` counts the failed requests by kind:
    "timeout" (no answer within 1 s: the connection waited, e.g. in the socket's queue for the next registry),
    "refused" (nothing listened), "dropped" (the connection was closed without an answer), "http NNN", or the error."""

    def __init__(self, max_seconds: float = 600) -> None:
        self.max_seconds = max_seconds
        self.stop = f"/tmp/resilience-poll-{uuid.uuid4().hex[:8]}"
        self.samples: list[tuple[float, bool, str]] = []
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Poller:
        self.proc = subprocess.Popen(["docker", "exec", world.VM_CONTAINER, "python3", "-c", POLL_SCRIPT,
                                      f"https://{MIRROR}/v2/", self.stop, str(self.max_seconds)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "polling": the first request is under way
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        run(["docker", "exec", world.VM_CONTAINER, "touch", self.stop])
        stdout = self.proc.communicate(timeout=60)[0]
        run(["docker", "exec", world.VM_CONTAINER, "rm", "-f", self.stop])
        self.samples = [tuple(sample) for sample in json.loads(stdout.strip().splitlines()[-1])]

    def gaps(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """Every no-mirror interval that began in [START, END] (seconds), longest first."""
        found, first_fail = [], None
        for when, ok, _failure in self.samples:
            if not ok and first_fail is None:
                first_fail = when
            elif ok and first_fail is not None:
                if start <= first_fail <= end:
                    found.append(round(when - first_fail, 2))
                first_fail = None
        if first_fail is not None and start <= first_fail <= end:
            found.append(float("inf"))
        return sorted(found, reverse=True)

    def gap(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest no-mirror interval that began in [START, END] (0 if the VM always found the mirror)."""
        return (self.gaps(start, end) or [0.0])[0]

    def failures(self, start: float = 0.0, end: float = float("inf")) -> dict[str, int]:
        """How many requests begun in [START, END] failed, by kind."""
        return dict(collections.Counter(failure for when, ok, failure in self.samples if not ok and start <= when <= end))


def serves(timeout: float = 2) -> bool:
    """The VM gets 200 from https://MIRROR/v2/."""
    got = run(["docker", "exec", world.VM_CONTAINER, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
               "--max-time", str(timeout), f"https://{MIRROR}/v2/"], check=False)
    return got.stdout == "200"


def served_fingerprint() -> str:
    """SHA-256 fingerprint of the certificate the mirror presents to the VM (empty when it does not answer)."""
    got = run(["docker", "exec", world.VM_CONTAINER, "sh", "-c",
               f"echo | timeout 5 openssl s_client -connect {MIRROR} 2>/dev/null | openssl x509 -noout -fingerprint -sha256"],
              check=False)
    return got.stdout.strip().split("=")[-1]


# --------------------------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------------------------

CACHE_SCRIPT = r"""
import hashlib, json, os, re, sys
root = os.path.join(sys.argv[1], "docker/registry/v2")
blobs, bad_blobs, bad_links = {}, [], []
base = os.path.join(root, "blobs/sha256")
for prefix in sorted(os.listdir(base)) if os.path.isdir(base) else []:
    for hexdigest in sorted(os.listdir(os.path.join(base, prefix))):
        path = os.path.join(base, prefix, hexdigest, "data")
        if not os.path.exists(path):
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        blobs[hexdigest] = h.hexdigest()
        if h.hexdigest() != hexdigest:
            bad_blobs.append(hexdigest)
links = {}
for dirpath, _, files in os.walk(os.path.join(root, "repositories")):
    if "link" in files:
        with open(os.path.join(dirpath, "link")) as f:
            text = f.read()
        path = os.path.relpath(dirpath, root)
        links[path] = text[:80]
        m = re.fullmatch(r"sha256:([0-9a-f]{64})", text)
        if not m or m.group(1) not in blobs:
            bad_links.append([path, text[:80]])
print(json.dumps({"blobs": blobs, "bad_blobs": bad_blobs, "bad_links": bad_links, "links": links}))
"""


def cache(target: Target, root: str = STORAGE) -> dict[str, Any]:
    """Every cached blob's sha256 (which must equal its name), and every repository link (which must name a blob)."""
    return target.py(CACHE_SCRIPT, root)


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What BEFORE cached that AFTER lost or altered (blobs and repository links), and any blob in AFTER whose content
    does not match its digest."""
    problems = [f"blob {h[:12]} lost" for h in before["blobs"] if h not in after["blobs"]]
    problems += [f"blob {h[:12]} altered" for h, s in before["blobs"].items() if h in after["blobs"] and after["blobs"][h] != s]
    problems += [f"blob {h[:12]} does not match its digest" for h in after["bad_blobs"]]
    problems += [f"link {p} lost" for p in before["links"] if p not in after["links"]]
    problems += [f"link {p} altered ({after['links'][p]!r})" for p, t in before["links"].items()
                 if p in after["links"] and after["links"][p] != t]
    return problems


def leftovers(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Repository links that AFTER added and that name no blob (an empty link left by a failed write)."""
    return [f"{path} = {text!r}" for path, text in after["bad_links"] if path not in before["links"]]


# --------------------------------------------------------------------------------------------------------------------
# The fake Docker Hub: outages and counters
# --------------------------------------------------------------------------------------------------------------------


def world_cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """python3 -m world ARGS."""
    return run(world.command(*args), timeout=timeout)


HOSTS_PIN = f"192.168.129.100 {world.HUB_NAME}  # resilience: pinned while the hub is stopped"


@contextlib.contextmanager
def hub_down(target: Target) -> Iterator[float]:
    """The fake Docker Hub stopped for the duration of the block (always started again); yields when it stopped.

    The target pins the hub's name in /etc/hosts meanwhile: with the hub's container stopped, Docker's DNS forwards
    the name to the machine's own resolver (traffic off the machine, and 10 s lookups), whereas Docker Hub's name
    still resolves while it is down. So the upstream is what an outage usually is: a known address that does not
    answer (here: no route to host)."""
    target.sh(f"grep -qF '{HOSTS_PIN}' /etc/hosts || echo '{HOSTS_PIN}' >> /etc/hosts")
    try:
        world_cmd("hub-stop")
        yield time.time()
    finally:
        try:
            world_cmd("hub-start", timeout=300)
        finally:
            target.sh(f"grep -vF '{HOSTS_PIN}' /etc/hosts > /tmp/hosts && cat /tmp/hosts > /etc/hosts && rm -f /tmp/hosts")


def hub_counts(hub: Hub, before: dict[str, Any], after: dict[str, Any], repo_tag: str, digests: list[str]) -> dict[str, Any]:
    """What the hub served between two /_world/stats snapshots: manifest GETs of REPO_TAG (all identities) and GETs
    of each blob in DIGESTS."""
    def manifest_gets(stats: dict[str, Any]) -> int:
        return sum(ident.get("manifests", {}).get(repo_tag, 0) for ident in stats["identities"].values())

    del hub
    return {"manifest_get": manifest_gets(after) - manifest_gets(before),
            "blob_get": {d[:19]: after["blobs"].get(d, 0) - before["blobs"].get(d, 0) for d in digests}}


def percentile(values: list[float], pct: float) -> float:
    """The PCT percentile (nearest rank) of VALUES."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(pct / 100 * len(ordered) + 0.5)) - 1))]


def median(values: list[float]) -> float:
    """The median of VALUES, rounded to ms."""
    return round(statistics.median(values), 3)


def release_checksum() -> str:
    """The SHA-256 of the release tarball the scenario installs (the default version, this architecture)."""
    path = Path(os.environ["WORLD_RELEASES_DIR"]) / f"v{DEFAULT_VERSION}" / f"registry_{DEFAULT_VERSION}_linux_{ARCH}.tar.gz.sha256"
    return path.read_text().split()[0]


def summary_table() -> str:
    """The summary as text that stays readable in Molecule's 80-column output: one line per case, its figures below."""
    def short(value: Any) -> str:
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        return text if len(text) <= 66 else text[:63] + "..."

    lines = []
    for section in ("faults", "load", "security"):
        for row in SUMMARY[section]:
            lines.append(f"{'ok ' if row['ok'] else 'NO '} {section:8} {row['case']}")
            lines += [f"        {key}: {short(value)}" for key, value in row.items() if key not in {"case", "ok"}]
    faults, loads, checks, lost = SUMMARY["faults"], SUMMARY["load"], SUMMARY["security"], SUMMARY["lost"]
    lines += ["-" * 76,
              f"cases tried       {len(faults) + len(loads) + len(checks)} (faults {len(faults)}, load {len(loads)}, "
              f"security {len(checks)})",
              f"faults survived   {sum(r['ok'] for r in faults)}/{len(faults)}",
              f"load held         {sum(r['ok'] for r in loads)}/{len(loads)}",
              f"security checks   {sum(r['ok'] for r in checks)}/{len(checks)}",
              f"lost              {lost['cached_blobs_lost_or_altered']} cached blobs lost or altered, "
              f"{lost['pulls_that_should_have_worked_but_failed']} pulls failed that should have worked",
              f"bad input         {SUMMARY['bad_input']}"]
    lines += [f"                  lost: {detail[:58]}" for detail in lost["details"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Fixtures shared by the scenario's test modules (imported into each: pytest finds them in the module's namespace)
# --------------------------------------------------------------------------------------------------------------------

_BASELINE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def target(host) -> Target:
    """The target, by its inventory name (the container's name)."""
    return Target(host.backend.get_hostname())


@pytest.fixture(scope="module")
def warm(target: Target) -> dict[str, Any]:
    """The cache every case starts from (alpine for amd64 and arm64, small1), pulled once through the mirror; its blob
    checksums are the baseline of "nothing lost"."""
    if not _BASELINE:
        results = pulls([(ALPINE, "amd64"), (ALPINE, "arm64"), (SMALL1, "amd64")], workers=3)
        assert all(r["ok"] for r in results), results
        _BASELINE.update(cache(target))
        assert _BASELINE["blobs"] and not _BASELINE["bad_blobs"] and not _BASELINE["bad_links"], _BASELINE
    return _BASELINE
