# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

# This module util is PRIVATE to the actuated.registry collection: its interface can change at any time.
# It runs on the managed host (the registry_status module) with the Python standard library alone (Python 3.8+), and
# on the controller (the status_table filter). Pure functions: no file, process or network here.

"""A mirror's state as the registry_status module reports it: its supervisor's metrics text parsed, the mode and since
when from the journal, the journal's warning lines without secrets, and the reasons a host needs attention."""

from __future__ import annotations

import re
import typing as t

# The Docker Hub mirror's name (registry-supervisor's PRIMARY_NAME; its settings name it only next to further upstreams).
PRIMARY_NAME = "docker-hub"
PRIMARY_REGISTRY = "docker.io"

# systemd's catalogue id of "unit started" (SD_MESSAGE_UNIT_STARTED): a start of registry.service ends a mode's stretch.
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
# The supervisor's journal lines that announce a mode: it serves read-only from now on, or pulls through an upstream.
# "still ..." repeats the mode it is in and announces nothing.
_READ_ONLY = re.compile(r"(?<!still )serving the cache read-only")
_PULLING = re.compile(r"(?<!still )pulling through \S+|back to pull-through mode")
# A line worth showing when its priority says nothing (the supervisor writes to stderr: priority info).
_TROUBLE = re.compile(r"\b(ERROR|WARNING|[Ff]ailed)\b")
# What could carry a secret in a line of the journal: user:password@ in a URL, an Authorization header or a token.
_SECRETS = (
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s@]*@"), r"\1[secret]@"),
    (re.compile(r"(?i)\b(proxy-)?authorization\b\s*[:=]\s*.*"), "Authorization: [secret]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}"), r"\1 [secret]"),
    (re.compile(r"(?i)(password|passwd|token|secret)(\s*[:=]\s*)(?!\[secret\])\S+"), r"\1\2[secret]"),
    (re.compile(r"\bdckr_pat_[A-Za-z0-9_-]+"), "[secret]"),
)

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')

Samples = t.Dict[str, t.List[t.Tuple[t.Dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition: {metric name: [(labels, value)]}. Comments and lines that are not samples are
    skipped, as is a value that is not a number."""
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.lstrip().startswith("#"):
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        pairs = {key: raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                 for key, raw in _LABEL.findall(labels or "")}
        samples.setdefault(name, []).append((pairs, number))
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of NAME's samples whose labels include LABELS; None when none is exported."""
    values = [value for found, value in samples.get(name, []) if all(found.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)


# The requests the caching front answered itself, which distribution never sees: from its cache (HIT, STALE,
# UPDATING) and blobs sent from distribution's storage. Hits as the dashboard counts them: distribution's and these.
FRONT_HITS = ("registry_mirror_front_cache_hits_total", "registry_mirror_front_cache_stale_total",
              "registry_mirror_front_blobs_from_disk_total")


def all_hits(samples: Samples) -> float | None:
    """Requests served from the cache: distribution's hits (registry_proxy_hits_total), and the front's answers
    (FRONT_HITS: none without the front); None when distribution exports no hits (registry_mirror_metrics_enabled
    false), as its misses then."""
    found = metric(samples, "registry_proxy_hits_total")
    if found is None:
        return None
    return found + sum(metric(samples, name) or 0.0 for name in FRONT_HITS)


def mirror_label(settings: t.Mapping[str, t.Any]) -> str:
    """The prefix of a mirror's lines in the journal, as the supervisor writes it: its name in group mode (the role
    names every mirror then), else none."""
    return str(settings.get("name") or "")


def mirror_name(settings: t.Mapping[str, t.Any]) -> str:
    return str(settings.get("name") or PRIMARY_NAME)


def _belongs(message: str, label: str) -> bool:
    """Whether a journal line is about the mirror with LABEL (every line when the unit runs one mirror)."""
    return not label or message.startswith(f"[{label}] ")


def mode_since(entries: t.Sequence[t.Mapping[str, t.Any]], label: str, read_only: bool) -> float | None:
    """When the mirror with LABEL entered its current mode (READ_ONLY or pulling through), in seconds since the epoch,
    from the journal ENTRIES (oldest first, each with message, time and optionally message_id): the first line of the
    current stretch that announces that mode, the stretch ending at the last line announcing the other mode or at the
    last start of the unit. None when no line of the stretch announces it (a mirror that started pulling through says
    nothing: then the unit's last start)."""
    since = None
    for entry in reversed(entries):
        message = str(entry.get("message", ""))
        if entry.get("message_id") == UNIT_STARTED:
            return since if read_only else entry.get("time")
        if not _belongs(message, label):
            continue
        if _READ_ONLY.search(message):
            if not read_only:
                return None
            since = entry.get("time")
        elif _PULLING.search(message):
            return since if read_only else entry.get("time")
    return since


def redact(line: str) -> str:
    """LINE without anything that looks like a secret (user:password@, Authorization, a token)."""
    for pattern, replacement in _SECRETS:
        line = pattern.sub(replacement, line)
    return line


def trouble_lines(entries: t.Sequence[t.Mapping[str, t.Any]], count: int) -> list[str]:
    """The last COUNT lines of ENTRIES (oldest first) at priority warning or worse, or that say ERROR or WARNING,
    redacted."""
    found = [str(entry.get("message", "")) for entry in entries
             if int(entry.get("priority", 6)) <= 4 or _TROUBLE.search(str(entry.get("message", "")))]
    return [redact(line) for line in found[-count:]] if count > 0 else []


def mirror_state(samples: Samples | None, settings: t.Mapping[str, t.Any], tiers: t.Sequence[str]) -> dict:
    """What a mirror's metrics say (SAMPLES None: they did not answer): its mode, the upstream it pulls through (with
    its role: the settings' upstream, a tier of TIERS, a fallback), its cache and counters. Distribution's counters
    (hits, misses, upstream pulls) are None unless registry_mirror_metrics_enabled adds them; hits include the caching
    front's answers (all_hits())."""
    state: dict = {"mode": "unknown", "upstream": None, "upstream_role": None}
    if samples is None:
        return state
    read_only = metric(samples, "registry_mirror_read_only")
    index = metric(samples, "registry_mirror_upstream_index")
    candidates = [str(settings.get("upstream", ""))] + [str(f.get("url", "")) for f in settings.get("fallbacks") or []]
    if read_only is not None:
        state["mode"] = "read-only" if read_only else "pull-through"
    if read_only == 0:
        active = int(index) if index is not None and 0 <= index < len(candidates) else 0
        state["upstream"] = candidates[active]
        tier = [i for i, url in enumerate(tiers) if url.rstrip("/") == candidates[active].rstrip("/")]
        state["upstream_role"] = f"tier {tier[0] + 1}" if tier else ("upstream" if active == 0 else "fallback")
    state.update(
        cache_bytes=_whole(metric(samples, "registry_mirror_cache_bytes")),
        budget_bytes=_whole(metric(samples, "registry_mirror_cache_budget_bytes")),
        images=_whole(metric(samples, "registry_mirror_cache_images")),
        last_collection=metric(samples, "registry_mirror_cache_last_collection_timestamp_seconds") or None,
        hits=_whole(all_hits(samples)),
        misses=_whole(metric(samples, "registry_proxy_misses_total")),
        upstream_pulls=_whole(metric(samples, "registry_proxy_misses_total", type="manifest")),
        # When the current mode began (registry-supervisor exports it; for an older one, the journal says it).
        mode_since=metric(samples, "registry_mirror_mode_since_timestamp_seconds") or None,
    )
    return state


def attention(status: t.Mapping[str, t.Any], cert_min_days: int, read_only_max_seconds: int, now: float) -> list[str]:
    """Why a host's STATUS (the registry_status module's result) needs attention, in words; [] when it does not."""
    reasons = [str(status["fact_error"])] if status.get("fact_error") else []
    unit = status.get("unit")
    if unit != "active":
        reasons.append(f"the registry unit is not running ({unit or 'unknown'})")
    for which, cert in sorted((status.get("certificates") or {}).items()):
        days = cert.get("days_left")
        if cert.get("error"):
            reasons.append(f"{which} certificate: {cert['error']}")
        elif days is not None and days < cert_min_days:
            reasons.append(f"{which} certificate expires in {days} days" if days >= 0
                           else f"{which} certificate expired {-days} days ago")
    for mirror in status.get("mirrors") or []:
        name = mirror.get("name", "?")
        if mirror.get("metrics_error") and unit == "active":
            reasons.append(f"{name}: its supervisor does not answer ({mirror['metrics_error']})")
        since = mirror.get("mode_since")
        if mirror.get("mode") == "read-only" and since is not None and now - since > read_only_max_seconds:
            reasons.append(f"{name}: read-only for {duration(now - since)}")
        used, budget = mirror.get("cache_bytes"), mirror.get("budget_bytes")
        if used is not None and budget and used > budget:
            reasons.append(f"{name}: cache over its budget ({size(used)} of {size(budget)})")
    return reasons


def duration(seconds: float) -> str:
    """SECONDS in words, to the largest unit or two: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min" if minutes % 60 else f"{hours} h"
    return f"{days} d {hours % 24} h" if hours % 24 else f"{days} d"


def size(count: float | None) -> str:
    """A byte count in binary units (KiB, MiB, GiB, TiB), one decimal; '-' for None."""
    if count is None:
        return "-"
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
