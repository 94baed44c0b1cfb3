#!/usr/bin/python
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


DOCUMENTATION = r"""
module: registry_status
short_description: Report the state of a host's registry mirrors, and why the host needs attention
version_added: "1.0.0"
description:
  - Reads, on the managed host, what the C(actuated.registry.registry_mirror) role installed and what its mirrors say,
    and changes nothing. Per mirror (Docker Hub's and each of C(registry_mirror_upstreams)) - the distribution version,
    the mode (pulling through which upstream, tier or fallback, or serving its cache read-only) and since when, the
    cache's size against its disk budget, its images, the last collection, and, with C(registry_mirror_metrics_enabled),
    distribution's cache hits (with the answers of the caching front, which distribution never sees) and misses and
    the manifests pulled from the upstream since the registry started.
  - Per host - whether the C(registry) unit is active, the days left on actuated's certificate and on a tier's, and the
    last warning and error lines of the unit's journal.
  - RV(attention) lists, in words, why the host needs attention - the unit is not active; a certificate expires in
    fewer than O(cert_min_days) days or cannot be read; a mirror has served read-only for more than
    O(read_only_max_seconds); a mirror's cache is over its budget; a mirror's supervisor does not answer while the unit
    runs. The module does not fail for these - the C(actuated.registry.status) playbook does.
  - The mirrors are found from the role's local fact file and settings files (O(config_dir)); their metrics are read
    from each supervisor's loopback port.
author:
  - actuated.registry contributors (@self-actuated)
requirements:
  - systemd (C(systemctl), C(journalctl)) and C(openssl) on the managed host.
options:
  config_dir:
    description:
      - The role's configuration directory (C(registry_mirror_config_dir)) - the mirrors' C(supervisor.json) files and
        a tier's certificate in C(tier-tls/).
    type: path
    default: /etc/registry
  fact_file:
    description:
      - The local fact file the role writes (version, architecture, mode, tiers, further upstreams).
    type: path
    default: /etc/ansible/facts.d/registry_mirror.fact
  tls_certificate:
    description:
      - actuated's certificate (C(registry_mirror_tls_certificate)), which an edge serves. Reported when present; on an
        edge, a missing one needs attention.
    type: path
    default: /var/lib/actuated/certs/server.crt
  unit:
    description:
      - The systemd unit of the mirrors.
    type: str
    default: registry
  cert_min_days:
    description:
      - A certificate with fewer days left needs attention.
    type: int
    default: 14
  read_only_max_seconds:
    description:
      - A mirror read-only for longer needs attention.
    type: int
    default: 3600
  error_lines:
    description:
      - How many of the journal's last warning and error lines to return (the unit's lines at priority warning or
        worse, and the supervisor's lines that say ERROR or WARNING). Anything that looks like a password or a token
        in them is replaced by C([secret]).
    type: int
    default: 5
extends_documentation_fragment: [actuated.registry.attributes]
attributes:
  check_mode:
    details: The module never changes anything; check mode runs it the same.
  diff_mode:
    support: none
    details: It changes nothing, so there is no diff.
  idempotent:
    details: It changes nothing.
notes:
  - It takes no secret and returns none - the settings it reads hold none, and journal lines are filtered.
  - When a mirror does not export when its mode began, the module reads it from the unit's journal (its last
    2000 lines) - the first line of the current stretch announcing the mode, after the unit's last start.
seealso:
  - module: actuated.registry.cert_watch
"""

EXAMPLES = r"""
---
- name: Read the state of the mirrors
  actuated.registry.registry_status:
  become: true
  register: registry_state

- name: Say why the host needs attention
  ansible.builtin.debug:
    msg: "{{ registry_state.attention }}"
  when: registry_state.attention | length > 0

# The whole fleet in one table: ansible-playbook actuated.registry.status
"""

RETURN = r"""
checked_at:
  description: When the state was read, in seconds since the epoch (the ages in the result are counted from it).
  returned: always
  type: float
  sample: 1767225600.0
unit:
  description: What C(systemctl is-active) says of the unit (active, inactive, failed, activating...).
  returned: always
  type: str
  sample: active
role_mode:
  description: The fact file's C(mode) - edge or tier; null without the fact file.
  returned: always
  type: str
  sample: edge
version:
  description: The distribution version the role installed (the fact file's); null without it.
  returned: always
  type: str
  sample: 3.1.1
mirrors:
  description: One entry per mirror, Docker Hub's first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description:
        - The mirror's name - docker-hub, or the entry's name in registry_mirror_upstreams.
      type: str
      returned: always
    registry:
      description:
        - The registry it mirrors.
      type: str
      returned: always
    version:
      description:
        - The distribution version of its settings.
      type: str
      returned: always
    mode:
      description:
        - pull-through, read-only, or unknown (its metrics did not answer).
      type: str
      returned: always
    mode_since:
      description:
        - When that mode began (epoch seconds); null when unknown.
      type: float
      returned: always
    upstream:
      description:
        - The URL it pulls through; null when read-only.
      type: str
      returned: always
    upstream_role:
      description:
        - upstream, tier N (an edge's tiers, in order), or fallback.
      type: str
      returned: always
    cache_bytes:
      description:
        - Bytes of blob data in its cache.
      type: int
      returned: always
    budget_bytes:
      description:
        - Its disk budget in bytes (0 - none).
      type: int
      returned: always
    images:
      description:
        - Images at the last collection.
      type: int
      returned: always
    last_collection:
      description:
        - When the last collection ended (epoch seconds); null before the first.
      type: float
      returned: always
    hits:
      description:
        - Requests served from the cache since the registry started - distribution's (registry_proxy_hits_total,
          blobs and manifests) and the caching front's own answers, which distribution never sees (manifests from its
          cache, fresh or stale, and blobs it sent from the cache's storage - registry_mirror_front_cache_hits_total,
          _cache_stale_total, _blobs_from_disk_total); null unless registry_mirror_metrics_enabled.
      type: int
      returned: always
    misses:
      description:
        - Requests fetched from the upstream since the registry started (registry_proxy_misses_total); null unless
          registry_mirror_metrics_enabled.
      type: int
      returned: always
    upstream_pulls:
      description:
        - Manifests fetched from the upstream since the registry started - what Docker Hub counts; null unless
          registry_mirror_metrics_enabled.
      type: int
      returned: always
    metrics_error:
      description:
        - Why its metrics could not be read; null when they were.
      type: str
      returned: always
  sample:
    - {name: docker-hub, registry: docker.io, version: 3.1.1, mode: pull-through, mode_since: 1767222000.0,
       upstream: "https://registry-1.docker.io", upstream_role: upstream, cache_bytes: 1073741824,
       budget_bytes: 21474836480, images: 42, last_collection: 1767225000.0, hits: 120, misses: 14, upstream_pulls: 3,
       metrics_error: null}
certificates:
  description: The certificates found - C(actuated) (O(tls_certificate)) and C(tier) (O(config_dir)/tier-tls/server.crt)
    - each with its path, not_after (ISO 8601), days_left, or an error.
  returned: always
  type: dict
  sample: {actuated: {path: /var/lib/actuated/certs/server.crt, not_after: "2026-03-01T12:00:00Z", days_left: 59}}
errors:
  description: The journal's last warning and error lines of the unit, oldest first, secrets replaced.
  returned: always
  type: list
  elements: str
  sample: ["[ghcr] registry-supervisor: ERROR: upstream token service https://ghcr.io/token refuses ..."]
fact_error:
  description: Why the fact file could not be read (the role has not run on the host); the host then needs attention.
  returned: when the fact file is missing or not JSON
  type: str
attention:
  description: Why the host needs attention, in words; empty when it does not.
  returned: always
  type: list
  elements: str
  sample: ["actuated certificate expires in 9 days", "ghcr: read-only for 2 h 5 min"]
"""

import datetime
import json
import os
import time
import typing as t
import urllib.request

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.actuated.registry.plugins.module_utils._certs import days_remaining, format_iso8601, parse_openssl_date
from ansible_collections.actuated.registry.plugins.module_utils._inputs_upstreams import mirror_files
from ansible_collections.actuated.registry.plugins.module_utils._status import (
    PRIMARY_NAME, PRIMARY_REGISTRY, attention, mirror_label, mirror_name, mirror_state, mode_since, parse_metrics, trouble_lines)

# How far back the journal is read for the mode's start and the error lines.
JOURNAL_LINES = 2000
METRICS_TIMEOUT = 5
_C_LOCALE = {"LC_ALL": "C", "LANG": "C"}


def read_json(path: str) -> t.Any:
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def fetch_metrics(port: int) -> str:
    """The supervisor's /metrics on loopback (no proxy, whatever the environment says)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=METRICS_TIMEOUT) as response:
        return str(response.read().decode("utf-8", "replace"))


def journal_entry(line: str) -> dict | None:
    """One line of journalctl -o json as message, priority, message_id and time (epoch seconds)."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    message = fields.get("MESSAGE")
    if isinstance(message, list):  # journald's form of a message that is not UTF-8
        message = bytes(b & 0xFF for b in message if isinstance(b, int)).decode("utf-8", "replace")
    try:
        when = int(fields.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        priority = int(fields.get("PRIORITY", 6))
    except (TypeError, ValueError):
        when, priority = 0.0, 6
    return {"message": str(message or ""), "priority": priority, "message_id": fields.get("MESSAGE_ID"), "time": when}


class Status:
    """One reading of the host."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.now = time.time()

    def command(self, name: str, args: list[str]) -> tuple[int, str]:
        """rc and stdout of the command NAME found on PATH (127 when it is not)."""
        path = self.module.get_bin_path(name)
        if not path:
            return 127, ""
        rc, out, _err = self.module.run_command([path] + args, environ_update=_C_LOCALE)
        return rc, out

    def unit_state(self) -> str:
        rc, out = self.command("systemctl", ["is-active", self.params["unit"]])
        return (out.strip().splitlines() or ["unknown"])[0] if rc != 127 else "unknown (no systemctl)"

    def journal(self) -> list[dict]:
        rc, out = self.command("journalctl", ["-u", self.params["unit"], "-n", str(JOURNAL_LINES), "--no-pager",
                                              "-o", "json"])
        entries = [journal_entry(line) for line in out.splitlines()] if rc == 0 else []
        return [entry for entry in entries if entry is not None]

    def certificate(self, path: str, needed: bool) -> dict | None:
        """PATH's expiry, None when it is absent and not NEEDED."""
        if not os.path.exists(path):
            return {"path": path, "error": "missing"} if needed else None
        rc, out = self.command("openssl", ["x509", "-enddate", "-noout", "-in", path])
        if rc != 0 or "=" not in out:
            return {"path": path, "error": "not a readable PEM certificate"}
        try:
            not_after = parse_openssl_date(out.strip().split("=", 1)[1])
        except ValueError as exc:
            return {"path": path, "error": str(exc)}
        now = datetime.datetime.fromtimestamp(self.now, tz=datetime.timezone.utc)
        return {"path": path, "not_after": format_iso8601(not_after), "days_left": days_remaining(not_after, now)}

    def settings_files(self, fact: dict) -> list[tuple[str, str]]:
        """Every mirror's name and supervisor.json: Docker Hub's, then each further upstream's the fact file names."""
        names = [""] + [str(entry.get("name")) for entry in fact.get("upstreams") or [] if entry.get("name")]
        return [(name or PRIMARY_NAME, mirror_files(self.params["config_dir"], name)["settings_file"]) for name in names]

    def mirror(self, name: str, path: str, fact: dict, journal: list[dict]) -> dict:
        registries = {entry.get("name"): entry.get("registry") for entry in fact.get("upstreams") or []}
        result: dict = {"name": name, "registry": registries.get(name, PRIMARY_REGISTRY), "mode": "unknown",
                        "mode_since": None}
        try:
            settings = read_json(path)
        except (OSError, ValueError) as exc:
            result["metrics_error"] = f"cannot read {path} ({exc.__class__.__name__})"
            return result
        result.update({"name": mirror_name(settings),
                       "version": settings.get("version") or fact.get("version")})
        try:
            samples = parse_metrics(fetch_metrics(int(settings.get("port", 0))))
            result["metrics_error"] = None
        except (OSError, ValueError) as exc:
            samples = None
            result["metrics_error"] = f"127.0.0.1:{settings.get('port')}: {getattr(exc, 'reason', exc)}"
        result.update(mirror_state(samples, settings, [str(url) for url in fact.get("tiers") or []]))
        if result["mode"] in ("read-only", "pull-through") and result.get("mode_since") is None:
            result["mode_since"] = mode_since(journal, mirror_label(settings), result["mode"] == "read-only")
        return result

    def run(self) -> dict:
        try:
            fact = read_json(self.params["fact_file"])
        except (OSError, ValueError):
            fact = {}
        fact = fact if isinstance(fact, dict) else {}
        journal = self.journal()
        tier = fact.get("mode") == "tier"
        certificates = {
            "actuated": self.certificate(self.params["tls_certificate"], needed=bool(fact) and not tier),
            "tier": self.certificate(os.path.join(self.params["config_dir"], "tier-tls", "server.crt"), needed=tier),
        }
        result = {
            "changed": False, "checked_at": self.now, "unit": self.unit_state(), "role_mode": fact.get("mode"),
            "version": fact.get("version"),
            "mirrors": [self.mirror(name, path, fact, journal) for name, path in self.settings_files(fact)],
            "certificates": {which: cert for which, cert in certificates.items() if cert is not None},
            "errors": trouble_lines(journal, self.params["error_lines"]),
        }
        if not fact:
            result["fact_error"] = f"no readable fact file {self.params['fact_file']}: has the role run on this host?"
        result["attention"] = attention(result, self.params["cert_min_days"], self.params["read_only_max_seconds"],
                                        self.now)
        return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config_dir": {"type": "path", "default": "/etc/registry"},
            "fact_file": {"type": "path", "default": "/etc/ansible/facts.d/registry_mirror.fact"},
            "tls_certificate": {"type": "path", "default": "/var/lib/actuated/certs/server.crt"},
            "unit": {"type": "str", "default": "registry"},
            "cert_min_days": {"type": "int", "default": 14},
            "read_only_max_seconds": {"type": "int", "default": 3600},
            "error_lines": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )
    module.exit_json(**Status(module).run())


if __name__ == "__main__":
    main()
