# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The registry_mirror role's input and host rules (plugins/module_utils/_mirror_inputs.py and _inputs_*.py), without
a host.

Each bad-input case asserts that the run would stop (at least one error), that an error names the variable and the
problem, that every error starts with the name of a variable, and that no message holds a secret's value."""

from __future__ import annotations

import re
import subprocess
import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.actuated.registry.plugins.module_utils import _inputs_basic as basic
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_entries as entry_rules
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_fleet as fleet
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_host as host_rules
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_htpasswd as htpasswd
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_upstreams as upstream_rules
from ansible_collections.actuated.registry.plugins.module_utils import _mirror_inputs as rules

ROLE = Path(__file__).resolve().parents[4] / "roles" / "registry_mirror"
SPEC = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
HOME = "/home/operator"
HEX = "0123456789abcdef" * 4
TOKEN = "dckr_pat_S3CRETVALUE"  # a valid token: the secret cases below hide this inside broken ones
USER = "mirroruser"
BIND_ANY = "registry_mirror_bind_any_private_address"


def others(report: t.Any) -> list:
    """The report's warnings but the one every run with an upstream account gives (tested on its own)."""
    return [warning for warning in report.warnings if "private ones included" not in warning]


def run(overrides: dict[str, t.Any], *, defined: t.Iterable[str] | None = None) -> rules.Report:
    """validate() with the role's defaults and OVERRIDES, as the action plugin calls it."""
    values = {name: option.get("default") for name, option in SPEC.items()}
    values.update(overrides)
    return rules.validate(values, SPEC, defined=list(values) if defined is None else defined, home=HOME)


# (overrides, variable the error must name, text the error must hold)
BAD_INPUT: dict[str, tuple[dict[str, t.Any], str, str]] = {
    # --- paths
    "storage is /": ({"registry_mirror_storage_dir": "/"}, "registry_mirror_storage_dir", "the root directory"),
    "storage is /etc": ({"registry_mirror_storage_dir": "/etc"}, "registry_mirror_storage_dir", "a system directory"),
    "storage is /var/lib": ({"registry_mirror_storage_dir": "/var/lib"}, "registry_mirror_storage_dir", "a system directory"),
    "storage is /home": ({"registry_mirror_storage_dir": "/home"}, "registry_mirror_storage_dir", "a system directory"),
    "storage is /usr/lib64": ({"registry_mirror_storage_dir": "/usr/lib64"}, "registry_mirror_storage_dir", "a system directory"),
    "storage is /usr/local": ({"registry_mirror_storage_dir": "/usr/local"}, "registry_mirror_storage_dir", "a system directory"),
    "storage is /var (a parent)": ({"registry_mirror_storage_dir": "/var"}, "registry_mirror_storage_dir", "system directory"),
    "storage is relative": ({"registry_mirror_storage_dir": "var/lib/registry"}, "registry_mirror_storage_dir", "a relative path"),
    "storage has a trailing slash": ({"registry_mirror_storage_dir": "/var/lib/registry/"}, "registry_mirror_storage_dir",
                                     "not normalised: write /var/lib/registry"),
    "storage has ..": ({"registry_mirror_storage_dir": "/var/lib/../registry"}, "registry_mirror_storage_dir", "not normalised"),
    "storage starts with //": ({"registry_mirror_storage_dir": "//var/lib/registry"}, "registry_mirror_storage_dir", "not normalised"),
    "storage under /home": ({"registry_mirror_storage_dir": "/home/ci/registry"}, "registry_mirror_storage_dir", "ProtectHome"),
    "storage under /tmp": ({"registry_mirror_storage_dir": "/tmp/registry"}, "registry_mirror_storage_dir", "PrivateTmp"),
    "storage under actuated's": ({"registry_mirror_storage_dir": "/var/lib/actuated/cache"}, "registry_mirror_storage_dir",
                                 "actuated's own directory"),
    "storage under the binaries": ({"registry_mirror_storage_dir": "/usr/local/lib/registry-mirror/cache"},
                                   "registry_mirror_storage_dir", "binaries"),
    "config is /etc": ({"registry_mirror_config_dir": "/etc"}, "registry_mirror_config_dir", "a system directory"),
    "config is actuated's": ({"registry_mirror_config_dir": "/var/lib/actuated"}, "registry_mirror_config_dir", "a system directory"),
    "config under /run": ({"registry_mirror_config_dir": "/run/registry"}, "registry_mirror_config_dir", "emptied at every boot"),
    "certificate is /etc": ({"registry_mirror_tls_certificate": "/etc"}, "registry_mirror_tls_certificate", "a system directory"),
    "key is relative": ({"registry_mirror_tls_key": "server.key"}, "registry_mirror_tls_key", "a relative path"),
    "CA is empty": ({"registry_mirror_tls_ca": ""}, "registry_mirror_tls_ca", "is empty"),
    "download cache is /": ({"registry_mirror_local_cache_dir": "/"}, "registry_mirror_local_cache_dir", "the root directory"),
    "download cache is /var/cache": ({"registry_mirror_local_cache_dir": "/var/cache"}, "registry_mirror_local_cache_dir",
                                     "a system directory"),
    "download cache is relative": ({"registry_mirror_local_cache_dir": "cache"}, "registry_mirror_local_cache_dir", "a relative path"),
    "download cache is ~'s parent (/home)": ({"registry_mirror_local_cache_dir": "~/.."}, "registry_mirror_local_cache_dir",
                                             "is /home, a system directory"),
    # --- accounts
    "user root": ({"registry_mirror_user": "root"}, "registry_mirror_user", "is root"),
    "group root": ({"registry_mirror_group": "root"}, "registry_mirror_group", "is root"),
    "user with capitals": ({"registry_mirror_user": "Registry"}, "registry_mirror_user", "not a valid user name"),
    "user numeric": ({"registry_mirror_user": "1000"}, "registry_mirror_user", "not a valid user name"),
    "group with a space": ({"registry_mirror_group": "reg istry"}, "registry_mirror_group", "not a valid group name"),
    "existing accounts name another": ({"registry_mirror_existing_accounts": ["nobody"]}, "registry_mirror_existing_accounts",
                                       "neither registry_mirror_user"),
    "existing accounts name root": ({"registry_mirror_existing_accounts": ["root"]}, "registry_mirror_existing_accounts",
                                    "other than root"),
    # --- URLs and ports
    "release over ftp": ({"registry_mirror_release_base_url": "ftp://mirror.example.com/releases"},
                         "registry_mirror_release_base_url", "the scheme ftp://"),
    "release without a scheme": ({"registry_mirror_release_base_url": "github.com/distribution"}, "registry_mirror_release_base_url",
                                 "not a URL"),
    "release without a host": ({"registry_mirror_release_base_url": "https://:8080/releases"}, "registry_mirror_release_base_url",
                               "no host name"),
    "release on port 0": ({"registry_mirror_release_base_url": "https://mirror.example.com:0/r"}, "registry_mirror_release_base_url",
                          "between 1 and 65535"),
    "release with a password": ({"registry_mirror_release_base_url": "https://bob:hunter2@mirror.example.com/r"},
                                "registry_mirror_release_base_url", "user name or password"),
    "release with a query": ({"registry_mirror_release_base_url": "https://mirror.example.com/r?sig=1"},
                             "registry_mirror_release_base_url", "query or fragment"),
    "upstream on port 99999": ({"registry_mirror_upstream_url": "https://hub.example.com:99999"}, "registry_mirror_upstream_url",
                               "between 1 and 65535"),
    "upstream over http": ({"registry_mirror_upstream_url": "http://hub.example.com"}, "registry_mirror_upstream_url",
                           "registry_mirror_upstream_allow_http"),
    "upstream with a path": ({"registry_mirror_upstream_url": "https://hub.example.com/v2/"}, "registry_mirror_upstream_url",
                             "no path"),
    "upstream with a password": ({"registry_mirror_upstream_url": "https://bob:hunter2@hub.example.com"},
                                 "registry_mirror_upstream_url", "user name or password"),
    "upstream with a bad host": ({"registry_mirror_upstream_url": "https://-hub-.example.com"}, "registry_mirror_upstream_url",
                                 "invalid host name"),
    "upstream with a broken IPv6": ({"registry_mirror_upstream_url": "https://[::1"}, "registry_mirror_upstream_url", "IPv6"),
    "upstream over ftp": ({"registry_mirror_upstream_url": "ftp://hub.example.com"}, "registry_mirror_upstream_url", "the scheme ftp://"),
    "port 99999": ({"registry_mirror_port": 99999}, "registry_mirror_port", "between 1024 and 65535"),
    "port 0": ({"registry_mirror_port": 0}, "registry_mirror_port", "between 1024 and 65535"),
    "port 443 (privileged)": ({"registry_mirror_port": 443}, "registry_mirror_port", "below 1024"),
    "port not a number": ({"registry_mirror_port": "http"}, "registry_mirror_port", "must be an integer"),
    "metrics port 70000": ({"registry_mirror_metrics_port": 70000}, "registry_mirror_metrics_port", "between 1024 and 65535"),
    # --- versions and checksums
    "version with a leading v": ({"registry_mirror_version": "v2.8.2"}, "registry_mirror_version", "leading v: write 2.8.2"),
    "version latest": ({"registry_mirror_version": "latest"}, "registry_mirror_version", "not a distribution version"),
    "version without a patch": ({"registry_mirror_version": "2.8"}, "registry_mirror_version", "not a distribution version"),
    "version as a float": ({"registry_mirror_version": 3.1}, "registry_mirror_version", "not a distribution version"),
    "checksum not hex": ({"registry_mirror_checksums": {"amd64": "xyz"}}, "registry_mirror_checksums", "not a SHA-256 digest"),
    "checksum for x86_64": ({"registry_mirror_checksums": {"x86_64": HEX}}, "registry_mirror_checksums", "did you mean amd64?"),
    "checksum with a prefix": ({"registry_mirror_checksums": {"amd64": "sha256:" + HEX}}, "registry_mirror_checksums",
                               "sha256: prefix"),
    "checksum in upper case": ({"registry_mirror_checksums": {"arm64": HEX.upper()}}, "registry_mirror_checksums", "lower case"),
    "checksums not a dict": ({"registry_mirror_checksums": "abc"}, "registry_mirror_checksums", "must be a dictionary"),
    # --- durations
    "ttl in days": ({"registry_mirror_proxy_ttl": "7 days"}, "registry_mirror_proxy_ttl", "not a Go duration"),
    "ttl with d": ({"registry_mirror_proxy_ttl": "1d"}, "registry_mirror_proxy_ttl", "not a Go duration"),
    "ttl negative": ({"registry_mirror_proxy_ttl": "-1h"}, "registry_mirror_proxy_ttl", "not a Go duration"),
    "probe interval 0": ({"registry_mirror_upstream_probe_interval": 0}, "registry_mirror_upstream_probe_interval",
                         "between 1 and 3600 seconds"),
    "probe interval not a number": ({"registry_mirror_upstream_probe_interval": "fast"}, "registry_mirror_upstream_probe_interval",
                                    "must be an integer"),
    "start timeout 0": ({"registry_mirror_start_timeout": 0}, "registry_mirror_start_timeout", "between 1 and 3600 seconds"),
    "start timeout a day": ({"registry_mirror_start_timeout": 86400}, "registry_mirror_start_timeout", "between 1 and 3600"),
    "negative validity": ({"registry_mirror_cert_min_valid_days": -1}, "registry_mirror_cert_min_valid_days", "between 0 and 3650"),
    "negative free-space floor": ({"registry_mirror_min_free_space_mb": -1}, "registry_mirror_min_free_space_mb",
                                  "between 0 and 10485760 MiB"),
    "free-space floor above 10 TiB": ({"registry_mirror_min_free_space_mb": 10485761}, "registry_mirror_min_free_space_mb",
                                      "between 0 and 10485760 MiB"),
    "free-space floor with a unit": ({"registry_mirror_min_free_space_mb": "2G"}, "registry_mirror_min_free_space_mb",
                                     "must be an integer"),
    "cache budget negative": ({"registry_mirror_cache_budget_mb": -1}, "registry_mirror_cache_budget_mb", "between 0 and"),
    "cache budget with a unit": ({"registry_mirror_cache_budget_mb": "40G"}, "registry_mirror_cache_budget_mb",
                                 "must be an integer"),
    "cache share of the whole disk": ({"registry_mirror_cache_budget_percent": 100}, "registry_mirror_cache_budget_percent",
                                      "between 0 and 90 percent"),
    "low-water mark at the budget": ({"registry_mirror_cache_low_water_percent": 100},
                                     "registry_mirror_cache_low_water_percent", "between 10 and 95 percent"),
    "collection interval negative": ({"registry_mirror_cache_collect_interval": -24}, "registry_mirror_cache_collect_interval",
                                     "between 0 and 8760 hours"),
    "supervisor port privileged": ({"registry_mirror_supervisor_port": 80}, "registry_mirror_supervisor_port", "below 1024"),
    "tag cache over a day": ({"registry_mirror_tag_cache_seconds": 86401}, "registry_mirror_tag_cache_seconds", "86400"),
    # --- addresses
    "bind address out of range": ({"registry_mirror_bind_address": "192.168.129.300"}, "registry_mirror_bind_address",
                                  "not an IPv4 address"),
    "bind address with a leading zero": ({"registry_mirror_bind_address": "192.168.128.01"}, "registry_mirror_bind_address",
                                         "not an IPv4 address"),
    "bind on every interface": ({"registry_mirror_bind_address": "0.0.0.0"}, "registry_mirror_bind_address", "would expose the mirror"),
    "bind on loopback": ({"registry_mirror_bind_address": "127.0.0.1"}, "registry_mirror_bind_address", "loopback"),
    "bind on multicast": ({"registry_mirror_bind_address": "224.0.0.1"}, "registry_mirror_bind_address", "not a unicast address"),
    "bind on broadcast": ({"registry_mirror_bind_address": "255.255.255.255"}, "registry_mirror_bind_address", "not a unicast address"),
    "bind on IPv6": ({"registry_mirror_bind_address": "fe80::1"}, "registry_mirror_bind_address", "an IPv6 address"),
    "bind on a host name": ({"registry_mirror_bind_address": "bridge.local"}, "registry_mirror_bind_address", "not an IPv4 address"),
    "bind on 'this network'": ({"registry_mirror_bind_address": "0.1.2.3"}, "registry_mirror_bind_address", "not a unicast address"),
    "bind on a public address": ({"registry_mirror_bind_address": "8.8.8.8"}, "registry_mirror_bind_address",
                                 "is 8.8.8.8, a globally routable address: a mirror there would serve anyone on the internet"),
    "bind on a public address with the opt-in": ({"registry_mirror_bind_address": "172.32.0.1", BIND_ANY: True},
                                                 "registry_mirror_bind_address", "a globally routable address"),
    "bind on the issue's documentation address": ({"registry_mirror_bind_address": "203.0.113.7"}, "registry_mirror_bind_address",
                                                  "is 203.0.113.7, a documentation address (RFC 5737)"),
    "bind on TEST-NET-1": ({"registry_mirror_bind_address": "192.0.2.10", BIND_ANY: True}, "registry_mirror_bind_address",
                           "a documentation address"),
    "edge on a site address": ({"registry_mirror_bind_address": "10.88.1.21"}, "registry_mirror_bind_address",
                               "is 10.88.1.21, which is not actuated's VM bridge (192.168.128.1 or 192.168.129.1): an edge serves "
                               f"its VMs there, without authentication; give the bridge address or auto, or set {BIND_ANY}: true"),
    "edge on another private address, as a string": ({"registry_mirror_bind_address": "172.16.0.10", BIND_ANY: "no"},
                                                     "registry_mirror_bind_address", f"set {BIND_ANY}: true"),
    "edge on the shared range": ({"registry_mirror_bind_address": "100.64.0.5"}, "registry_mirror_bind_address",
                                 "is 100.64.0.5, which is not a private address (RFC 1918's 10.0.0.0/8, 172.16.0.0/12, "
                                 "192.168.0.0/16, or link-local 169.254.0.0/16): an edge listens on actuated's VM bridge"),
    "edge on the shared range with the opt-in": ({"registry_mirror_bind_address": "100.127.255.254", BIND_ANY: True},
                                                 "registry_mirror_bind_address", f"{BIND_ANY} allows private addresses only"),
    "edge on the benchmarking range with the opt-in": ({"registry_mirror_bind_address": "198.18.0.5", BIND_ANY: True},
                                                       "registry_mirror_bind_address", "not a private address"),
    "opt-in that is not a boolean": ({BIND_ANY: "perhaps"}, BIND_ANY, "must be true or false"),
    # --- secrets (the value must never appear: see test_no_message_holds_a_secret)
    "user name without token": ({"registry_mirror_dockerhub_username": USER}, "registry_mirror_dockerhub_token",
                                "is empty while registry_mirror_dockerhub_username is set"),
    "token without user name": ({"registry_mirror_dockerhub_token": TOKEN}, "registry_mirror_dockerhub_username",
                                "is empty while registry_mirror_dockerhub_token is set"),
    "token with a newline": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + "\nX=1"},
                             "registry_mirror_dockerhub_token", "contains a newline"),
    "token with a carriage return": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + "\r"},
                                     "registry_mirror_dockerhub_token", "contains a newline"),
    "token with a control character": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + "\x07"},
                                       "registry_mirror_dockerhub_token", "contains a control character"),
    "token with a space": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + " x"},
                           "registry_mirror_dockerhub_token", "contains whitespace"),
    "token with a tab": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": "\t" + TOKEN},
                         "registry_mirror_dockerhub_token", "contains whitespace"),
    "token with a no-break space": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + "\u00a0"},
                                    "registry_mirror_dockerhub_token", "contains whitespace"),
    "token with an accent": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + "\u00e9"},
                             "registry_mirror_dockerhub_token", "contains a non-ASCII character"),
    "token with a quote": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN + '"'},
                           "registry_mirror_dockerhub_token", "a quote, backslash, dollar sign or backtick"),
    "token with a dollar": ({"registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": "$" + TOKEN},
                            "registry_mirror_dockerhub_token", "a quote, backslash, dollar sign or backtick"),
    "user name with @": ({"registry_mirror_dockerhub_username": USER + "@example.com", "registry_mirror_dockerhub_token": TOKEN},
                         "registry_mirror_dockerhub_username", "a character other than letters, digits"),
    "user name with a newline": ({"registry_mirror_dockerhub_username": USER + "\n", "registry_mirror_dockerhub_token": TOKEN},
                                 "registry_mirror_dockerhub_username", "contains a newline"),
    # --- injection into a unit, an environment file or YAML
    "storage adds a unit line": ({"registry_mirror_storage_dir": "/var/lib/registry\nExecStartPre=/bin/sh"},
                                 "registry_mirror_storage_dir", "contains a newline"),
    "storage with a specifier": ({"registry_mirror_storage_dir": "/var/lib/registry%n"}, "registry_mirror_storage_dir", "'%'"),
    "storage with a space": ({"registry_mirror_storage_dir": "/var/lib/my registry"}, "registry_mirror_storage_dir", "whitespace"),
    "storage with a dollar": ({"registry_mirror_storage_dir": "/var/lib/re$gistry"}, "registry_mirror_storage_dir", "'$'"),
    "config with a quote": ({"registry_mirror_config_dir": '/etc/reg"istry'}, "registry_mirror_config_dir", "'\"'"),
    "certificate adds a path line": ({"registry_mirror_tls_certificate": "/var/lib/actuated/certs/server.crt\nPathChanged=/"},
                                     "registry_mirror_tls_certificate", "contains a newline"),
    "user adds a unit line": ({"registry_mirror_user": "registry\nGroup=root"}, "registry_mirror_user", "not a valid user name"),
    "upstream adds a YAML key": ({"registry_mirror_upstream_url": "https://hub.example.com\n  ttl: 0"}, "registry_mirror_upstream_url",
                                 "contains a newline"),
    "release with CRLF": ({"registry_mirror_release_base_url": "https://mirror.example.com/r\r\n"}, "registry_mirror_release_base_url",
                          "contains a newline"),
    "ttl adds a YAML key": ({"registry_mirror_proxy_ttl": "168h\n  remoteurl: https://evil"}, "registry_mirror_proxy_ttl",
                            "not a Go duration"),
    "version adds a line": ({"registry_mirror_version": "2.8.2\n"}, "registry_mirror_version", "not a distribution version"),
    "log level adds a YAML key": ({"registry_mirror_log_level": "warn\nhttp: {}"}, "registry_mirror_log_level", "must be one of"),
    # --- unknown variables
    "misspelt bind address": ({"registry_mirror_bind_adress": "192.168.128.1"}, "registry_mirror_bind_adress",
                              "is not a variable of this role; did you mean registry_mirror_bind_address?"),
    "misspelt token": ({"registry_mirror_dockerhub_tokn": TOKEN}, "registry_mirror_dockerhub_tokn",
                       "did you mean registry_mirror_dockerhub_token?"),
    "capitalised name": ({"Registry_Mirror_Port": 5000}, "Registry_Mirror_Port", "did you mean registry_mirror_port?"),
    "unrelated name": ({"registry_mirror_zzzzzzzz": 1}, "registry_mirror_zzzzzzzz", "is not a variable of this role"),
    # --- conflicting combinations
    "storage is the config dir": ({"registry_mirror_storage_dir": "/srv/registry", "registry_mirror_config_dir": "/srv/registry"},
                                  "registry_mirror_storage_dir", "are both /srv/registry"),
    "storage inside the config dir": ({"registry_mirror_storage_dir": "/etc/registry/cache"}, "registry_mirror_storage_dir", "nested"),
    "config inside the storage dir": ({"registry_mirror_config_dir": "/var/lib/registry/etc"}, "registry_mirror_config_dir", "nested"),
    "metrics on the mirror's port": ({"registry_mirror_metrics_enabled": True, "registry_mirror_metrics_port": 5000},
                                     "registry_mirror_metrics_port", "a port of its own"),
    "supervisor on the mirror's port": ({"registry_mirror_supervisor_port": 5000}, "registry_mirror_supervisor_port",
                                        "a port of its own"),
    "supervisor on the metrics port": ({"registry_mirror_metrics_enabled": True, "registry_mirror_supervisor_port": 5001},
                                       "registry_mirror_supervisor_port", "a port of its own"),
    # The metrics port is refused while metrics are off too: turning them on would break the mirror.
    "metrics on the mirror's port, metrics off": ({"registry_mirror_metrics_port": 5000}, "registry_mirror_metrics_port",
                                                  "is 5000, the same as registry_mirror_port: the metrics listener needs a port of "
                                                  "its own (while registry_mirror_metrics_enabled is false too"),
    "supervisor on the metrics port, metrics off": ({"registry_mirror_supervisor_port": 5001, "registry_mirror_metrics_enabled": "no"},
                                                    "registry_mirror_supervisor_port",
                                                    "is 5001, the same as registry_mirror_metrics_port: the supervisor's listener "
                                                    "needs a port of its own (while registry_mirror_metrics_enabled is false too"),
    "expiry failure without days": ({"registry_mirror_cert_fail_when_expiring": True, "registry_mirror_cert_min_valid_days": 0},
                                    "registry_mirror_cert_fail_when_expiring", "turns the expiry check off"),
    "boolean that is not one": ({"registry_mirror_troubleshooting": "perhaps"}, "registry_mirror_troubleshooting",
                                "must be true or false"),
    "unknown log level": ({"registry_mirror_log_level": "verbose"}, "registry_mirror_log_level", "must be one of error, warn"),
    "unknown-variable mode": ({"registry_mirror_unknown_variables": "ignore"}, "registry_mirror_unknown_variables", "must be one of"),
    # --- removing the mirror
    "unknown state": ({"registry_mirror_state": "removed"}, "registry_mirror_state", "must be one of present, absent"),
    "state in capitals": ({"registry_mirror_state": "Absent"}, "registry_mirror_state", "must be one of present, absent"),
    "state as a boolean": ({"registry_mirror_state": False}, "registry_mirror_state", "must be one of present, absent"),
    "purge that is not a boolean": ({"registry_mirror_state": "absent", "registry_mirror_purge_cache": "everything"},
                                    "registry_mirror_purge_cache", "must be true or false"),
    "purge while installing": ({"registry_mirror_purge_cache": True}, "registry_mirror_purge_cache",
                               "is true but registry_mirror_state is present: a run that installs the mirror never removes"),
}


# ---- registry_mirror_upstreams -----------------------------------------------------------------------------------

UP_USER = "ghcr-bot-Q7ZX"  # valid, distinctive: no message may hold them, whatever else is wrong
UP_PASSWORD = "ghp_UPSTR3AMS3CRET42"
GHCR = {"name": "ghcr", "url": "https://ghcr.io", "port": 5010}
U = "registry_mirror_upstreams"


def up(**keys: t.Any) -> dict[str, t.Any]:
    """The ghcr entry with KEYS changed (a value of None removes the key)."""
    entry = {**GHCR, **keys}
    return {key: value for key, value in entry.items() if value is not None}


def ups(*entries: t.Any, **overrides: t.Any) -> dict[str, t.Any]:
    """The overrides that set registry_mirror_upstreams to ENTRIES."""
    return {U: list(entries), **overrides}


QUAY = {"name": "quay", "url": "https://quay.io", "port": 5020}
CREDS = {"username": UP_USER, "password": UP_PASSWORD}

UPSTREAM_BAD_INPUT: dict[str, tuple[dict[str, t.Any], str, str]] = {
    # --- shape
    "upstreams a dictionary": ({U: GHCR}, U, "must be a list"),
    "upstream a string": (ups("ghcr"), f"{U}[0]", "must be a dictionary with name, url and port (got str)"),
    "upstream a list": (ups(["ghcr", "https://ghcr.io"]), f"{U}[0]", "must be a dictionary"),
    "upstream without a port": (ups(up(port=None)), f"{U}[ghcr].port", "is missing: every upstream needs name, url and port"),
    "upstream without a name": (ups(up(name=None)), f"{U}[0].name", "is missing"),
    "upstream without a url": (ups(up(url=None, **CREDS)), f"{U}[ghcr].url", "is missing"),
    "upstream with an empty url": (ups(up(url="")), f"{U}[ghcr].url", "is empty"),
    "upstream with a misspelt key": (ups(up(usrname=UP_USER, password=UP_PASSWORD)), f"{U}[ghcr]",
                                     "has the key 'usrname', which is not an option of an upstream; did you mean username?"),
    "upstream with a token key": (ups(up(username=UP_USER, token=UP_PASSWORD)), f"{U}[ghcr]", "'token'"
                                  ", which is not an option of an upstream; did you mean password?"),
    "upstream with an unrelated key": (ups(up(colour="blue")), f"{U}[ghcr]", "not an option of an upstream (name, url,"),
    # --- name
    "upstream name in capitals": (ups(up(name="GHCR")), f"{U}[0].name", "'GHCR', which is not a valid upstream name"),
    "upstream name ending in -": (ups(up(name="ghcr-")), f"{U}[0].name", "not ending in -"),
    "upstream name starting with a digit": (ups(up(name="1ghcr")), f"{U}[0].name", "not a valid upstream name"),
    "upstream name of 32 characters": (ups(up(name="g" * 32)), f"{U}[0].name", "not a valid upstream name"),
    "upstream name with a slash": (ups(up(name="../etc")), f"{U}[0].name", "not a valid upstream name"),
    "upstream name with a newline": (ups(up(name="ghcr\nx")), f"{U}[0].name", "not a valid upstream name"),
    "upstream named docker-hub": (ups(up(name="docker-hub")), f"{U}[0].name", "the name of the Docker Hub mirror"),
    "upstream name a number": (ups(up(name=7)), f"{U}[0].name", "not a valid upstream name"),
    "two upstreams of one name": (ups(GHCR, up(url="https://quay.io", port=5020)), f"{U}[1].name",
                                  "is 'ghcr', the same as registry_mirror_upstreams[ghcr].name"),
    # --- url
    "upstream over http": (ups(up(url="http://ghcr.lab.test")), f"{U}[ghcr].url",
                           "a plain http:// URL: the upstream must use https://, or set registry_mirror_upstreams[ghcr].allow_http: true"),
    "upstream with a path": (ups(up(url="https://ghcr.io/v2/")), f"{U}[ghcr].url", "with no path"),
    "upstream with a password in the url": (ups(up(url=f"https://{UP_USER}:{UP_PASSWORD}@ghcr.io")), f"{U}[ghcr].url",
                                            "(use registry_mirror_upstreams[ghcr].username and registry_mirror_upstreams[ghcr].password)"),
    "upstream over ftp": (ups(up(url="ftp://ghcr.io")), f"{U}[ghcr].url", "the scheme ftp://"),
    "upstream without a scheme": (ups(up(url="ghcr.io")), f"{U}[ghcr].url", "not a URL"),
    "upstream on port 0": (ups(up(url="https://ghcr.io:0")), f"{U}[ghcr].url", "between 1 and 65535"),
    "upstream with a query": (ups(up(url="https://ghcr.io?x=1")), f"{U}[ghcr].url", "query or fragment"),
    "upstream url a list": (ups(up(url=["https://ghcr.io"])), f"{U}[ghcr].url", "must be a string (got a list)"),
    "upstream is Docker Hub's": (ups(up(url="https://registry-1.docker.io")), f"{U}[ghcr].url",
                                 "is https://registry-1.docker.io, the same as registry_mirror_upstream_url"),
    "upstream is Docker Hub's, spelt otherwise": (ups(up(url="HTTPS://Registry-1.Docker.IO/")), f"{U}[ghcr].url",
                                                  "the same as registry_mirror_upstream_url"),
    "two upstreams of one url": (ups(GHCR, {**QUAY, "url": "https://GHCR.io/"}), f"{U}[quay].url",
                                 "is https://ghcr.io, the same as registry_mirror_upstreams[ghcr].url"),
    # --- registry
    "upstream registry with a port": (ups(up(registry="ghcr.io:443")), f"{U}[ghcr].registry", "not a host name"),
    "upstream registry docker.io": (ups(up(registry="docker.io")), f"{U}[ghcr].registry", "is docker.io, which is Docker Hub"),
    "upstream registry Docker.IO.": (ups(up(registry="Docker.IO.")), f"{U}[ghcr].registry", "which is Docker Hub"),
    "upstream on an IPv6 address without a registry": (ups(up(url="https://[fd00::1]:8443")), f"{U}[ghcr].registry",
                                                       "is not set, and the host of url ([fd00::1]) is not a host name"),
    "two upstreams of one registry": (ups(up(registry="GHCR.io"), {**QUAY, "registry": "ghcr.io"}), f"{U}[quay].registry",
                                      "is ghcr.io, the same as registry_mirror_upstreams[ghcr].registry"),
    "two upstreams of one default registry": (ups(GHCR, {**QUAY, "url": "https://ghcr.io:8443"}),
                                              f"{U}[quay].registry (not set: the host of url by default)",
                                              "is ghcr.io, the same as registry_mirror_upstreams[ghcr].registry"),
    # --- credentials
    "upstream user name without password": (ups(up(username=UP_USER)), f"{U}[ghcr].password",
                                            "is empty while registry_mirror_upstreams[ghcr].username is set"),
    "upstream password without user name": (ups(up(password=UP_PASSWORD)), f"{U}[ghcr].username",
                                            "is empty while registry_mirror_upstreams[ghcr].password is set"),
    "upstream password with a newline": (ups(up(username=UP_USER, password=UP_PASSWORD + "\nX=1")), f"{U}[ghcr].password",
                                         "contains a newline (its value is not shown)"),
    "upstream password with a space": (ups(up(username=UP_USER, password=UP_PASSWORD + " x")), f"{U}[ghcr].password",
                                       "contains whitespace"),
    "upstream password with a quote": (ups(up(username=UP_USER, password='"' + UP_PASSWORD)), f"{U}[ghcr].password",
                                       "a quote, backslash, dollar sign or backtick"),
    "upstream password with a control character": (ups(up(username=UP_USER, password=UP_PASSWORD + "\x07")),
                                                   f"{U}[ghcr].password", "a control character"),
    "upstream password with an accent": (ups(up(username=UP_USER, password=UP_PASSWORD + "\u00e9")), f"{U}[ghcr].password",
                                         "a non-ASCII character"),
    "upstream password a dictionary": (ups(up(username=UP_USER, password={"value": UP_PASSWORD})), f"{U}[ghcr].password",
                                       "must be a string (got a dictionary)"),
    "upstream user name with @": (ups(up(username=UP_USER + "@example.com", password=UP_PASSWORD)), f"{U}[ghcr].username",
                                  "a character other than letters, digits"),
    "upstream user name with a newline": (ups(up(username=UP_USER + "\n", password=UP_PASSWORD)), f"{U}[ghcr].username",
                                          "contains a newline"),
    # --- the other keys
    "upstream port 80": (ups(up(port=80, **CREDS)), f"{U}[ghcr].port", "below 1024"),
    "upstream port 70000": (ups(up(port=70000)), f"{U}[ghcr].port", "between 1024 and 65535"),
    "upstream port not a number": (ups(up(port="http", **CREDS)), f"{U}[ghcr].port", "must be an integer (got 'http')"),
    "upstream port true": (ups(up(port=True)), f"{U}[ghcr].port", "must be an integer"),
    "upstream port 65535 (metrics beyond)": (ups(up(port=65535)), f"{U}[ghcr].metrics_port (not set: port + 1 by default)",
                                             "is 65536: a port must be between 1024 and 65535"),
    "upstream supervisor port 22": (ups(up(supervisor_port=22)), f"{U}[ghcr].supervisor_port", "below 1024"),
    "upstream metrics port 70000": (ups(up(metrics_port=70000)), f"{U}[ghcr].metrics_port", "between 1024 and 65535"),
    "upstream ttl in words": (ups(up(ttl="1 week", **CREDS)), f"{U}[ghcr].ttl", "not a Go duration"),
    "upstream budget -1 MiB": (ups(up(cache_budget_mb=-1)), f"{U}[ghcr].cache_budget_mb", "between 0 and 1073741824 MiB"),
    "upstream budget 95 percent": (ups(up(cache_budget_percent=95)), f"{U}[ghcr].cache_budget_percent",
                                   "between 0 and 90 percent"),
    "upstream allow_http perhaps": (ups(up(allow_http="perhaps")), f"{U}[ghcr].allow_http", "must be true or false"),
    # --- storage
    "upstream storage relative": (ups(up(storage_dir="var/lib/ghcr")), f"{U}[ghcr].storage_dir", "a relative path"),
    "upstream storage /etc": (ups(up(storage_dir="/etc")), f"{U}[ghcr].storage_dir", "a system directory"),
    "upstream storage under /tmp": (ups(up(storage_dir="/tmp/ghcr", **CREDS)), f"{U}[ghcr].storage_dir", "PrivateTmp"),
    "upstream storage with a space": (ups(up(storage_dir="/srv/gh cr")), f"{U}[ghcr].storage_dir", "contains whitespace"),
    "upstream default storage a system directory": (ups(up(name="mirror")),
                                                    f"{U}[mirror].storage_dir (not set: registry_mirror_storage_dir + '-' + name by default)",
                                                    "is /var/lib/registry-mirror, a system directory"),
    "upstream storage is the Docker Hub cache": (ups(up(storage_dir="/var/lib/registry", **CREDS)), f"{U}[ghcr].storage_dir",
                                                 "is /var/lib/registry, the same as registry_mirror_storage_dir"),
    "upstream storage in the Docker Hub cache": (ups(up(storage_dir="/var/lib/registry/ghcr")), f"{U}[ghcr].storage_dir",
                                                 "is /var/lib/registry/ghcr, nested in registry_mirror_storage_dir (/var/lib/registry)"),
    "upstream storage holds the Docker Hub cache": (ups(up(storage_dir="/srv/cache"), registry_mirror_storage_dir="/srv/cache/hub"),
                                                    f"{U}[ghcr].storage_dir",
                                                    "is /srv/cache, which contains registry_mirror_storage_dir (/srv/cache/hub)"),
    "upstream storage is the configuration": (ups(up(storage_dir="/etc/registry")), f"{U}[ghcr].storage_dir",
                                              "the same as registry_mirror_config_dir"),
    "upstream storage in the configuration": (ups(up(storage_dir="/etc/registry/upstreams/ghcr")), f"{U}[ghcr].storage_dir",
                                              "nested in registry_mirror_config_dir (/etc/registry)"),
    "upstream default storage in the configuration": (ups(GHCR, registry_mirror_storage_dir="/srv/reg",
                                                          registry_mirror_config_dir="/srv/reg-ghcr/etc"),
                                                      f"{U}[ghcr].storage_dir (not set: registry_mirror_storage_dir + '-' + name by default)",
                                                      "is /srv/reg-ghcr, which contains registry_mirror_config_dir (/srv/reg-ghcr/etc)"),
    "two upstreams of one storage": (ups(up(storage_dir="/srv/c"), {**QUAY, "storage_dir": "/srv/c"}), f"{U}[quay].storage_dir",
                                     "is /srv/c, the same as registry_mirror_upstreams[ghcr].storage_dir"),
    "upstream storage in another's": (ups(up(storage_dir="/srv/c"), {**QUAY, "storage_dir": "/srv/c/quay"}),
                                      f"{U}[quay].storage_dir", "nested in registry_mirror_upstreams[ghcr].storage_dir (/srv/c)"),
    "upstream storage holding another's": (ups(up(storage_dir="/srv/c/ghcr"), {**QUAY, "storage_dir": "/srv/c"}),
                                           f"{U}[quay].storage_dir",
                                           "which contains registry_mirror_upstreams[ghcr].storage_dir (/srv/c/ghcr)"),
    # --- ports of every listener
    "upstream on the mirror's port": (ups(up(port=5000, **CREDS)), f"{U}[ghcr].port",
                                      "is 5000, the same as registry_mirror_port: every listener needs a port of its own"),
    "upstream on the supervisor's port": (ups(up(port=5002)), f"{U}[ghcr].port", "is 5002, the same as registry_mirror_supervisor_port"),
    "upstream's default supervisor port taken": (ups(up(port=4998)), f"{U}[ghcr].supervisor_port (not set: port + 2 by default)",
                                                 "is 5000, the same as registry_mirror_port"),
    "upstream on the metrics port": (ups(up(port=5001), registry_mirror_metrics_enabled=True), f"{U}[ghcr].port",
                                     "is 5001, the same as registry_mirror_metrics_port"),
    "upstream metrics on the mirror's port": (ups(up(metrics_port=5000), registry_mirror_metrics_enabled=True),
                                              f"{U}[ghcr].metrics_port", "is 5000, the same as registry_mirror_port"),
    "upstream supervisor on another's port": (ups(GHCR, {**QUAY, "supervisor_port": 5010}), f"{U}[quay].supervisor_port",
                                              "is 5010, the same as registry_mirror_upstreams[ghcr].port"),
    "upstream on another's default supervisor port": (ups(GHCR, {**QUAY, "port": 5012}), f"{U}[quay].port",
                                                      "is 5012, the same as registry_mirror_upstreams[ghcr].supervisor_port"),
    "upstream on another's default metrics port": (ups(GHCR, {**QUAY, "port": 5011}, registry_mirror_metrics_enabled=True),
                                                   f"{U}[quay].port", "is 5011, the same as registry_mirror_upstreams[ghcr].metrics_port"),
    # ... and while metrics are off
    "upstream on the metrics port, metrics off": (ups(up(port=5001, **CREDS)), f"{U}[ghcr].port",
                                                  "is 5001, the same as registry_mirror_metrics_port: every listener needs a port "
                                                  "of its own (metrics ports count while registry_mirror_metrics_enabled is false"),
    "upstream metrics on the mirror's port, metrics off": (ups(up(metrics_port=5000)), f"{U}[ghcr].metrics_port",
                                                           "is 5000, the same as registry_mirror_port"),
    "upstream metrics on the supervisor's port, metrics off": (ups(up(metrics_port=5002)), f"{U}[ghcr].metrics_port",
                                                               "is 5002, the same as registry_mirror_supervisor_port"),
    "upstream on another's default metrics port, metrics off": (ups(GHCR, {**QUAY, "port": 5011}), f"{U}[quay].port",
                                                                "is 5011, the same as registry_mirror_upstreams[ghcr].metrics_port"),
    "upstream metrics on another's port, metrics off": (ups(GHCR, {**QUAY, "metrics_port": 5010}), f"{U}[quay].metrics_port",
                                                        "is 5010, the same as registry_mirror_upstreams[ghcr].port"),
}
BAD_INPUT.update(UPSTREAM_BAD_INPUT)


# ---- the fleet: registry_mirror_mode, tiers and edges ------------------------------------------------------------

T, TU = "registry_mirror_tiers", "registry_mirror_tier_users"
TIER_LOGIN = "edge-login-K4WQ"  # an edge's credentials on its tier: as secret as an upstream's
TIER_PASSWORD = "tier_PASSW0RD_S3CRET"
TU_PASSWORD = "tu pa55 'S3CRET' word"  # a tier's account: spaces and quotes are fine in an htpasswd file
TIER = {"url": "https://tier1.site.test:5000"}
TIER_CREDS = {"username": TIER_LOGIN, "password": TIER_PASSWORD}
TIER_MODE = {"registry_mirror_mode": "tier", "registry_mirror_bind_address": "10.20.0.5"}
EDGE_USER = {"username": "edge", "password": TU_PASSWORD}


def tiers(*entries: t.Any, **overrides: t.Any) -> dict[str, t.Any]:
    """The overrides that set registry_mirror_tiers to ENTRIES (an edge's)."""
    return {T: list(entries), **overrides}


def tier_users(*entries: t.Any, **overrides: t.Any) -> dict[str, t.Any]:
    """The overrides of a tier whose registry_mirror_tier_users are ENTRIES."""
    return {**TIER_MODE, TU: list(entries), **overrides}


def on_tier(**overrides: t.Any) -> dict[str, t.Any]:
    """The overrides of a tier with OVERRIDES (names with _ for registry_mirror_)."""
    return {**TIER_MODE, **{"registry_mirror_" + name: value for name, value in overrides.items()}}


FLEET_BAD_INPUT: dict[str, tuple[dict[str, t.Any], str, str]] = {
    # --- the mode, and the variables of the other one
    "unknown mode": ({"registry_mirror_mode": "hub"}, "registry_mirror_mode", "must be one of edge, tier"),
    "mode in capitals": ({"registry_mirror_mode": "Tier"}, "registry_mirror_mode", "must be one of edge, tier"),
    "tier on the firecracker bridge": ({"registry_mirror_mode": "tier"}, "registry_mirror_bind_address",
                                       "is 192.168.128.1, actuated's VM bridge, but registry_mirror_mode is tier: a tier "
                                       "listens on the site's private network: name its address there"),
    "tier on the cloud-hypervisor bridge": ({"registry_mirror_mode": "tier", "registry_mirror_bind_address": "192.168.129.1"},
                                            "registry_mirror_bind_address", "a tier listens on the site's private network"),
    "tier on auto": ({"registry_mirror_mode": "tier", "registry_mirror_bind_address": "auto"}, "registry_mirror_bind_address",
                     "is auto, which picks actuated's VM bridge, but registry_mirror_mode is tier"),
    "tier on every interface": (on_tier(bind_address="0.0.0.0"), "registry_mirror_bind_address", "would expose the mirror"),
    "tier on a public address": (tier_users(EDGE_USER, registry_mirror_bind_address="8.8.4.4"), "registry_mirror_bind_address",
                                 "a globally routable address"),
    "tier on the issue's public address": (on_tier(bind_address="203.0.113.7"), "registry_mirror_bind_address",
                                           "a documentation address"),
    "open tier on the shared range": (on_tier(bind_address="100.64.0.5"), "registry_mirror_bind_address",
                                      "is 100.64.0.5, which is not a private address (RFC 1918's 10.0.0.0/8, 172.16.0.0/12, "
                                      "192.168.0.0/16, or link-local 169.254.0.0/16), and registry_mirror_tier_users is empty: "
                                      "the tier would serve whoever reaches that address, with the operator's Docker Hub token"),
    "open tier on the benchmarking range": (on_tier(bind_address="198.19.0.5", tier_users=[]), "registry_mirror_bind_address",
                                            "and registry_mirror_tier_users is empty"),
    "tier users on an edge": ({TU: [EDGE_USER]}, TU, "is set, but registry_mirror_mode is edge: it applies to tiers only"),
    "tier certificate on an edge": ({"registry_mirror_tier_tls_certificate": "/srv/tier/fullchain.pem",
                                     "registry_mirror_tier_tls_key": "/srv/tier/key.pem"},
                                    "registry_mirror_tier_tls_certificate", "it applies to tiers only"),
    "tier key on an edge": ({"registry_mirror_tier_tls_key": "/srv/tier/key.pem"}, "registry_mirror_tier_tls_key",
                            "it applies to tiers only"),
    "tier names on an edge": ({"registry_mirror_tier_names": ["tier1.site.test"]}, "registry_mirror_tier_names",
                              "it applies to tiers only"),
    "tier names on an edge, as a string": ({"registry_mirror_tier_names": "tier1.site.test"}, "registry_mirror_tier_names",
                                           "it applies to tiers only"),
    "tiers on a tier": ({**TIER_MODE, T: [TIER]}, T,
                        "is set, but registry_mirror_mode is tier: a tier pulls from Docker Hub itself (chained tiers are not supported)"),
    "tier CA on a tier": (on_tier(tier_ca="/srv/fleet/ca.crt"), "registry_mirror_tier_ca", "chained tiers are not supported"),
    # --- registry_mirror_tiers: shape
    "tiers a dictionary": ({T: TIER}, T, "must be a list (got dict)"),
    "tier a string": (tiers("https://tier1.site.test"), f"{T}[0]",
                      "must be a dictionary with url and, optionally, username and password (got str)"),
    "nine tiers": (tiers(*({"url": f"https://tier{n}.site.test"} for n in range(9))), T, "lists 9 tiers: at most 8"),
    "tier without a url": (tiers(TIER_CREDS), f"{T}[0].url", "is missing: every tier needs url"),
    "tier with an empty url": (tiers({"url": ""}), f"{T}[0].url", "is empty: every tier needs url"),
    "tier with a misspelt key": (tiers({**TIER, "usrname": TIER_LOGIN, "password": TIER_PASSWORD}), f"{T}[0]",
                                 "has the key 'usrname', which is not an option of a tier; did you mean username?"),
    "tier with a token key": (tiers({**TIER, "username": TIER_LOGIN, "token": TIER_PASSWORD}), f"{T}[0]",
                              "has the key 'token', which is not an option of a tier; did you mean password?"),
    "tier with an upstream's key": (tiers({**TIER, "port": 5000}), f"{T}[0]", "not an option of a tier (url, username, password)"),
    # --- url
    "tier over http": (tiers({"url": "http://tier1.site.test:5000"}), f"{T}[0].url",
                       "a plain http:// URL: the upstream must use https://, or set registry_mirror_upstream_allow_http: true"),
    "tier with a path": (tiers({"url": "https://tier1.site.test/v2/"}), f"{T}[0].url", "with no path"),
    "tier with a password in the url": (tiers({"url": f"https://{TIER_LOGIN}:{TIER_PASSWORD}@tier1.site.test"}), f"{T}[0].url",
                                        "with a user name or password in it: the role does not put credentials in URLs (use "
                                        "registry_mirror_tiers[0].username and registry_mirror_tiers[0].password)"),
    "tier over ftp": (tiers({"url": "ftp://tier1.site.test"}), f"{T}[0].url", "the scheme ftp://"),
    "tier without a scheme": (tiers({"url": "tier1.site.test:5000"}), f"{T}[0].url", "not a URL"),
    "tier on port 70000": (tiers({"url": "https://tier1.site.test:70000"}), f"{T}[0].url", "between 1 and 65535"),
    "tier with a query": (tiers({"url": "https://tier1.site.test?x=1"}), f"{T}[0].url", "query or fragment"),
    "tier with a newline": (tiers({"url": "https://tier1.site.test\n  ttl: 0"}), f"{T}[0].url", "contains a newline"),
    "tier url a list": (tiers({"url": ["https://tier1.site.test"]}), f"{T}[0].url", "must be a string (got a list)"),
    "two tiers of one url": (tiers(TIER, {"url": "HTTPS://Tier1.Site.test:5000/"}), f"{T}[1].url",
                             "is https://tier1.site.test:5000, the same as registry_mirror_tiers[0].url: every tier needs a url "
                             "of its own"),
    "tier is Docker Hub": (tiers({"url": "https://registry-1.docker.io/"}), f"{T}[0].url",
                           "is https://registry-1.docker.io, the same as registry_mirror_upstream_url (Docker Hub)"),
    "tier is an upstream": (tiers({"url": "https://GHCR.io"}, **ups(GHCR)), f"{T}[0].url",
                            "is https://ghcr.io, the same as registry_mirror_upstreams[ghcr].url: a tier mirrors Docker Hub, "
                            "not a further upstream"),
    # --- credentials
    "tier user name without password": (tiers({**TIER, "username": TIER_LOGIN}), f"{T}[0].password",
                                        "is empty while registry_mirror_tiers[0].username is set: set both"),
    "tier password without user name": (tiers({**TIER, "password": TIER_PASSWORD}), f"{T}[0].username",
                                        "is empty while registry_mirror_tiers[0].password is set"),
    "tier password with a newline": (tiers({**TIER, "username": TIER_LOGIN, "password": TIER_PASSWORD + "\nX=1"}),
                                     f"{T}[0].password", "contains a newline (its value is not shown)"),
    "tier password with a space": (tiers({**TIER, "username": TIER_LOGIN, "password": TIER_PASSWORD + " x"}), f"{T}[0].password",
                                   "contains whitespace"),
    "tier password with a quote": (tiers({**TIER, "username": TIER_LOGIN, "password": '"' + TIER_PASSWORD}), f"{T}[0].password",
                                   "a quote, backslash, dollar sign or backtick"),
    "tier password with an accent": (tiers({**TIER, "username": TIER_LOGIN, "password": TIER_PASSWORD + "\u00e9"}),
                                     f"{T}[0].password", "a non-ASCII character"),
    "tier password a dictionary": (tiers({**TIER, "username": TIER_LOGIN, "password": {"value": TIER_PASSWORD}}),
                                   f"{T}[0].password", "must be a string (got a dictionary)"),
    "tier login with @": (tiers({**TIER, "username": TIER_LOGIN + "@site", "password": TIER_PASSWORD}), f"{T}[0].username",
                          "a character other than letters, digits"),
    "tier login with a newline": (tiers({**TIER, "username": TIER_LOGIN + "\n", "password": TIER_PASSWORD}),
                                  f"{T}[0].username", "contains a newline"),
    "edge with tiers and a Docker Hub token": (tiers(TIER, registry_mirror_dockerhub_username=USER, registry_mirror_dockerhub_token=TOKEN),
                                               "registry_mirror_dockerhub_username",
                                               "and registry_mirror_dockerhub_token are set while registry_mirror_tiers names the "
                                               "site's tiers: the Docker Hub token belongs on the tiers only: an edge pulls Docker "
                                               "Hub directly only anonymously, when no tier answers"),
    "edge with tiers and a broken token": (tiers(TIER, registry_mirror_dockerhub_token=TOKEN + "\n"), "registry_mirror_dockerhub_token",
                                           "is set while registry_mirror_tiers names the site's tiers: the Docker Hub token belongs "
                                           "on the tiers only"),
    "upstream named as a tier's credentials": (tiers({**TIER, **TIER_CREDS}, **ups({**QUAY, "name": "tier1", **CREDS})),
                                               f"{U}[tier1].name", "its credentials would use the environment variables "
                                               "REGISTRY_MIRROR_TIER1_USERNAME and _PASSWORD, as registry_mirror_tiers[0]'s do"),
    # --- registry_mirror_tier_ca, registry_mirror_fleet_ca_dir
    "tier CA relative": (tiers(TIER, registry_mirror_tier_ca="fleet/ca.crt"), "registry_mirror_tier_ca", "a relative path"),
    "tier CA is /etc": (tiers(TIER, registry_mirror_tier_ca="/etc"), "registry_mirror_tier_ca", "a system directory"),
    "tier CA with a newline": ({"registry_mirror_tier_ca": "/srv/ca.crt\n"}, "registry_mirror_tier_ca", "contains a newline"),
    "fleet CA dir is /": ({"registry_mirror_fleet_ca_dir": "/"}, "registry_mirror_fleet_ca_dir", "the root directory"),
    "fleet CA dir is /etc": ({"registry_mirror_fleet_ca_dir": "/etc"}, "registry_mirror_fleet_ca_dir",
                             "a system directory: choose a directory of its own, such as ~/.local/share/actuated.registry/fleet-ca"),
    "fleet CA dir relative": ({"registry_mirror_fleet_ca_dir": "fleet-ca"}, "registry_mirror_fleet_ca_dir", "a relative path"),
    "fleet CA dir is ~'s parent": ({"registry_mirror_fleet_ca_dir": "~/.."}, "registry_mirror_fleet_ca_dir",
                                   "is /home, a system directory"),
    "fleet CA dir empty": ({"registry_mirror_fleet_ca_dir": ""}, "registry_mirror_fleet_ca_dir", "is empty"),
    # --- registry_mirror_tier_users
    "tier users a dictionary": ({**TIER_MODE, TU: EDGE_USER}, TU, "must be a list (got dict)"),
    "tier user a string": (tier_users("edge"), f"{TU}[0]", "must be a dictionary with username and password (got str)"),
    "101 tier users": (tier_users(*({"username": f"edge{n}", "password": TU_PASSWORD} for n in range(101))), TU,
                       "lists 101 accounts: at most 100"),
    "tier user without password": (tier_users({"username": "edge"}), f"{TU}[edge].password",
                                   "is missing: every tier user needs username and password"),
    "tier user without user name": (tier_users({"password": TU_PASSWORD}), f"{TU}[0].username", "is missing"),
    "tier user with an empty password": (tier_users({"username": "edge", "password": ""}), f"{TU}[edge].password", "is empty"),
    "tier user with an empty user name": (tier_users({"username": "", "password": TU_PASSWORD}), f"{TU}[0].username", "is empty"),
    "tier user with a misspelt key": (tier_users({**EDGE_USER, "pasword": TU_PASSWORD}), f"{TU}[edge]",
                                      "has the key 'pasword', which is not an option of a tier user; did you mean password?"),
    "tier user with a name key": (tier_users({"name": "edge", "password": TU_PASSWORD}), f"{TU}[0]",
                                  "has the key 'name', which is not an option of a tier user; did you mean username?"),
    "tier user name with a colon": (tier_users({**EDGE_USER, "username": "edge:1"}), f"{TU}[0].username",
                                    "is 'edge:1', which contains ':': the htpasswd file separates the user name"),
    "tier user name with a space": (tier_users({**EDGE_USER, "username": "edge one"}), f"{TU}[0].username", "contains whitespace"),
    "tier user name with a tab": (tier_users({**EDGE_USER, "username": "edge\t1"}), f"{TU}[0].username", "contains whitespace"),
    "tier user name with a newline": (tier_users({**EDGE_USER, "username": "edge\nroot"}), f"{TU}[0].username",
                                      "contains a newline"),
    "tier user name with a control character": (tier_users({**EDGE_USER, "username": "edge\x07"}), f"{TU}[0].username",
                                                "contains a control character"),
    "tier user name of 65 characters": (tier_users({**EDGE_USER, "username": "e" * 65}), f"{TU}[0].username",
                                        "65 characters long: a user name has at most 64"),
    "tier user name a list": (tier_users({**EDGE_USER, "username": ["edge"]}), f"{TU}[0].username", "must be a string"),
    "two tier users of one name": (tier_users(EDGE_USER, {"username": "edge", "password": "other"}), f"{TU}[1].username",
                                   "is 'edge', the same as registry_mirror_tier_users[edge].username: every account needs a user "
                                   "name of its own"),
    "tier user password with a newline": (tier_users({**EDGE_USER, "password": TU_PASSWORD + "\n"}), f"{TU}[edge].password",
                                          "contains a newline (its value is not shown)"),
    "tier user password with a carriage return": (tier_users({**EDGE_USER, "password": "\r" + TU_PASSWORD}),
                                                  f"{TU}[edge].password", "contains a newline"),
    "tier user password with a tab": (tier_users({**EDGE_USER, "password": TU_PASSWORD + "\t"}), f"{TU}[edge].password",
                                      "contains a control character (its value is not shown)"),
    "tier user password with a DEL": (tier_users({**EDGE_USER, "password": TU_PASSWORD + "\x7f"}), f"{TU}[edge].password",
                                      "contains a control character"),
    "tier user password over 72 bytes": (tier_users({**EDGE_USER, "password": TU_PASSWORD * 4}), f"{TU}[edge].password",
                                         "is longer than 72 bytes (its value is not shown): bcrypt, which hashes it for the "
                                         "htpasswd file, ignores every byte after the 72nd"),
    "tier user password of 37 two-byte letters": (tier_users({**EDGE_USER, "password": "\u00e9" * 37}), f"{TU}[edge].password",
                                                  "is longer than 72 bytes"),
    "tier user password a dictionary": (tier_users({**EDGE_USER, "password": {"value": TU_PASSWORD}}), f"{TU}[edge].password",
                                        "must be a string (got a dictionary)"),
    # --- the tier's certificate
    "tier certificate without its key": (on_tier(tier_tls_certificate="/srv/tier/fullchain.pem"), "registry_mirror_tier_tls_key",
                                         "is empty while registry_mirror_tier_tls_certificate is set: give both"),
    "tier key without its certificate": (on_tier(tier_tls_key="/srv/tier/key.pem"), "registry_mirror_tier_tls_certificate",
                                         "is empty while registry_mirror_tier_tls_key is set"),
    "tier certificate relative": (on_tier(tier_tls_certificate="tier.pem", tier_tls_key="/srv/tier/key.pem"),
                                  "registry_mirror_tier_tls_certificate", "a relative path"),
    "tier key with a newline": (on_tier(tier_tls_certificate="/srv/tier.pem", tier_tls_key="/srv/tier.key\nx"),
                                "registry_mirror_tier_tls_key", "contains a newline"),
    "tier key is /root": (on_tier(tier_tls_certificate="/srv/tier.pem", tier_tls_key="/root"), "registry_mirror_tier_tls_key",
                          "a system directory"),
    # --- registry_mirror_tier_names
    "tier names a dictionary": (on_tier(tier_names={"a": "tier1.site.test"}), "registry_mirror_tier_names", "must be a list"),
    "tier name a wildcard": (on_tier(tier_names=["*.site.test"]), "registry_mirror_tier_names",
                             "lists '*.site.test', a wildcard: the fleet CA names each host"),
    "tier name with a trailing dot": (on_tier(tier_names=["tier1.site.test."]), "registry_mirror_tier_names",
                                      "with a trailing dot: write 'tier1.site.test'"),
    "tier name an IPv6 address in brackets": (on_tier(tier_names=["[fd00::5]"]), "registry_mirror_tier_names",
                                              "an IPv6 address in brackets: write it without them (fd00::5)"),
    "tier name with an underscore": (on_tier(tier_names=["tier_1.site.test"]), "registry_mirror_tier_names",
                                     "which is neither a DNS name"),
    "tier name starting with -": (on_tier(tier_names=["-tier.site.test"]), "registry_mirror_tier_names", "neither a DNS name"),
    "tier name with a label of 64": (on_tier(tier_names=["t" * 64 + ".site.test"]), "registry_mirror_tier_names",
                                     "neither a DNS name"),
    "tier name a broken IPv4": (on_tier(tier_names=["10.20.0.256"]), "registry_mirror_tier_names", "nor an IP address"),
    "tier name with a port": (on_tier(tier_names=["tier1.site.test:5000"]), "registry_mirror_tier_names", "nor an IP address"),
    "tier name a URL": (on_tier(tier_names=["https://tier1.site.test"]), "registry_mirror_tier_names", "nor an IP address"),
    "tier name a number": (on_tier(tier_names=[10]), "registry_mirror_tier_names", "lists 10, which is not a string (got int)"),
    "tier names twice": (on_tier(tier_names=["tier1.site.test", "TIER1.site.test"]), "registry_mirror_tier_names",
                         "lists 'TIER1.site.test', the same name as 'tier1.site.test': give each name once"),
    "tier addresses twice": (on_tier(tier_names=["fd00::5", "fd00:0:0::5"]), "registry_mirror_tier_names",
                             "the same name as 'fd00::5'"),
    # --- unknown variables
    "misspelt tier users": ({"registry_mirror_tier_user": []}, "registry_mirror_tier_user",
                            "did you mean registry_mirror_tier_users?"),
    "misspelt tiers": ({"registry_mirror_teirs": []}, "registry_mirror_teirs", "did you mean registry_mirror_tiers?"),
    "tier certificate cut short": ({"registry_mirror_tier_tls_cert": "/srv/tier.pem"}, "registry_mirror_tier_tls_cert",
                                   "did you mean registry_mirror_tier_tls_certificate?"),
    "fleet CA cut short": ({"registry_mirror_fleet_ca": "/srv/ca"}, "registry_mirror_fleet_ca",
                           "did you mean registry_mirror_fleet_ca_dir?"),
}
BAD_INPUT.update(FLEET_BAD_INPUT)

# ---- registry_mirror_prefetch (tests/unit/plugins/module_utils/test_inputs_prefetch.py has every case) ---------------

P = "registry_mirror_prefetch"
PREFETCH_BAD_INPUT: dict[str, tuple[dict[str, t.Any], str, str]] = {
    "prefetch not a list": ({P: {"repository": "alpine"}}, P, "must be a list (got dict)"),
    "prefetch with a tag in the repository": ({P: [{"repository": "alpine:3.20"}]}, f"{P}[0].repository",
                                              "with a tag: give the repository alone ('alpine') and the tag in tags"),
    "prefetch of another registry": ({P: [{"repository": "ghcr.io/actuated/app"}]}, f"{P}[0].repository",
                                     "an image of the registry 'ghcr.io'"),
    "prefetch tag not a tag": ({P: [{"repository": "alpine", "tags": ["latest", "-rc"]}]}, f"{P}[0].tags[1]", "which is not a tag"),
    "prefetch platform in capitals": ({P: [{"repository": "alpine", "platforms": ["Linux/AMD64"]}]}, f"{P}[0].platforms[0]",
                                      "write 'linux/amd64'"),
    "prefetch the same repository twice": ({P: [{"repository": "alpine"}, {"repository": "library/alpine"}]},
                                           f"{P}[1].repository", "the same as registry_mirror_prefetch[0].repository"),
    "prefetch a misspelt key": ({P: [{"repository": "alpine", "tag": ["3.20"]}]}, f"{P}[0]",
                                "has the key 'tag', which is not an option of an image to prefetch; did you mean tags?"),
    "prefetch on an edge with tiers": ({P: [{"repository": "alpine"}], T: [TIER]}, P,
                                       "set registry_mirror_prefetch on the site's tiers (registry_mirror_mode: tier): an edge "
                                       "pulls through them"),
    "prefetch on a tier with accounts without the front": (
        {P: [{"repository": "alpine"}], **tier_users(EDGE_USER), "registry_mirror_front": False}, P,
        "needs the caching front (registry_mirror_front: true)"),
    "prefetch interval below 5 minutes": ({"registry_mirror_prefetch_interval": 4}, "registry_mirror_prefetch_interval",
                                          "is 4: it must be between 5 and 1440 minutes"),
    "prefetch interval over a day": ({"registry_mirror_prefetch_interval": 1441}, "registry_mirror_prefetch_interval",
                                     "between 5 and 1440 minutes"),
    "prefetch interval with a unit": ({"registry_mirror_prefetch_interval": "1h"}, "registry_mirror_prefetch_interval",
                                      "must be an integer"),
}
BAD_INPUT.update(PREFETCH_BAD_INPUT)
SECRETS = (TOKEN, USER, UP_USER, UP_PASSWORD, TIER_LOGIN, TIER_PASSWORD, TU_PASSWORD)


DEFAULT_CONTROLLER_DIRS = {"registry_mirror_local_cache_dir": f"{HOME}/.cache/actuated.registry",
                           "registry_mirror_fleet_ca_dir": f"{HOME}/.local/share/actuated.registry/fleet-ca"}
# The Docker Hub mirror of the defaults, in the shape of a normalised upstream.
DEFAULT_PRIMARY = {
    "name": "docker-hub", "url": "https://registry-1.docker.io", "registry": "docker.io", "port": 5000, "metrics_port": 5001,
    "supervisor_port": 5002, "ttl": "168h", "storage_dir": "/var/lib/registry", "cache_budget_mb": 40960,
    "cache_budget_percent": 25, "allow_http": False, "credentials": False, "credentials_env": "", "index": 0, "fallbacks": [],
    "config_file": "/etc/registry/config.yml", "settings_file": "/etc/registry/supervisor.json",
    "env_file": "/etc/registry/proxy.env", "socket": "/run/registry/docker-hub.sock"}
DEFAULT_PATHS = {"upstreams_dir": "/etc/registry/upstreams",
                 "release_base_url": "https://github.com/distribution/distribution/releases/download",
                 "bridge_addresses": ["192.168.128.1", "192.168.129.1"]}
DEFAULT_REPORT = rules.Report([], [], [], controller_dirs=DEFAULT_CONTROLLER_DIRS, primary=DEFAULT_PRIMARY, paths=DEFAULT_PATHS)


def test_the_defaults_pass() -> None:
    assert run({}) == DEFAULT_REPORT


def test_a_controller_directory_written_with_dots_is_resolved_by_the_controller(tmp_path) -> None:
    """{{ playbook_dir }}/../x (the demo's own cache) is what a user writes: resolved, through symbolic links, as the
    controller's file system resolves it; a host path so written is still refused (the host could resolve it otherwise)."""
    (tmp_path / "fleet" / "playbooks").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    found = run({"registry_mirror_local_cache_dir": f"{tmp_path}/fleet/playbooks/../.cache/release-cache",
                 "registry_mirror_fleet_ca_dir": f"{tmp_path}/link/../fleet-ca/"})
    assert found.errors == []
    assert found.controller_dirs == {"registry_mirror_local_cache_dir": f"{tmp_path}/fleet/.cache/release-cache",
                                     "registry_mirror_fleet_ca_dir": f"{tmp_path}/fleet-ca"}
    refused = run({"registry_mirror_storage_dir": f"{tmp_path}/fleet/../registry"})
    assert refused.errors == [f"registry_mirror_storage_dir is {basic.show(f'{tmp_path}/fleet/../registry')}, which is not "
                              "normalised: "
                              f"write {tmp_path}/registry (on the host, a .. after a symbolic link would lead elsewhere "
                              "than it reads)"]


@pytest.mark.parametrize("overrides", [
    {"registry_mirror_bind_address": "auto"},
    {"registry_mirror_bind_address": "192.168.129.1", "registry_mirror_port": "5000"},
    {"registry_mirror_upstream_url": "http://hub.lab.test:8080", "registry_mirror_upstream_allow_http": "true"},
    {"registry_mirror_upstream_url": "https://[fd00::1]:5000/"},
    {"registry_mirror_upstream_url": "https://10.0.0.5"},
    {"registry_mirror_release_base_url": "http://127.0.0.1:18080/"},
    {"registry_mirror_checksums": {"amd64": HEX, "arm64": HEX}},
    {"registry_mirror_proxy_ttl": "72h30m"},
    {"registry_mirror_proxy_ttl": "0"},
    {"registry_mirror_storage_dir": "/srv/registry/cache", "registry_mirror_config_dir": "/srv/registry/etc"},
    {"registry_mirror_local_cache_dir": "~/.cache/actuated.registry"},
    {"registry_mirror_local_cache_dir": "/root/.cache/molecule/variants/default/release-cache"},
    {"registry_mirror_user": "svc-mirror", "registry_mirror_group": "svc", "registry_mirror_existing_accounts": ["svc-mirror", "svc"]},
    {"registry_mirror_dockerhub_username": "actuated-ci", "registry_mirror_dockerhub_token": "dckr_pat_AbC-1_2.x~!#%&'()*+,/:;<=>?@[]^{|}"},
    {"registry_mirror_metrics_enabled": True, "registry_mirror_metrics_port": 5001},
    {"registry_mirror_version": "3.0.0-rc.1"},
    {"registry_mirror_min_free_space_mb": 0},
    {"registry_mirror_min_free_space_mb": "10485760"},
    {"registry_mirror_cache_budget_mb": 0, "registry_mirror_cache_budget_percent": 0, "registry_mirror_cache_collect_interval": 0},
    {"registry_mirror_supervisor_port": 5003},
    {"registry_mirror_metrics_port": 5003, "registry_mirror_supervisor_port": 5001},
    {"registry_mirror_bind_address": "10.88.1.21", "registry_mirror_bind_any_private_address": True},
    {"registry_mirror_bind_address": "192.168.200.2", "registry_mirror_bind_any_private_address": "yes"},
    {"registry_mirror_bind_address": "169.254.10.1", "registry_mirror_bind_any_private_address": True},
    {"registry_mirror_bind_address": "auto", "registry_mirror_bind_any_private_address": True},
    {"registry_mirror_state": "absent"},
    {"registry_mirror_state": "absent", "registry_mirror_purge_cache": True},
    {"registry_mirror_state": "absent", "registry_mirror_purge_cache": "yes"},
    {"registry_mirror_state": "present", "registry_mirror_purge_cache": False},
    {"registry_mirror_prefetch": [{"repository": "alpine"}], "registry_mirror_prefetch_interval": 5},
    {"registry_mirror_prefetch": [{"repository": "alpine"}], "registry_mirror_prefetch_interval": "1440"},
    {"registry_mirror_prefetch": [{"repository": "alpine"}], "registry_mirror_mode": "tier",
     "registry_mirror_bind_address": "10.20.0.5"},
    {"registry_mirror_prefetch": [], "registry_mirror_tiers": [{"url": "https://tier1.site.test"}]},
    {"registry_mirror_prefetch": None},
], ids=",".join)
def test_good_input_passes(overrides: dict[str, t.Any]) -> None:
    assert run(overrides).errors == []


def test_there_are_at_least_50_cases_in_every_class() -> None:
    assert len(BAD_INPUT) >= 50


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_names_the_variable_and_the_problem(case: str) -> None:
    overrides, variable, problem = BAD_INPUT[case]
    errors = run(overrides).errors
    assert errors, f"{case}: accepted"
    assert any(error.startswith(variable + " ") and problem in error for error in errors), errors
    known = tuple(SPEC) + tuple(name for name in overrides if name not in SPEC)
    for error in errors:
        first = error.split(" ", 1)[0]
        # An upstream's problem names the entry (by name, or by index without a valid one of its own) and the key.
        # A tier's by index, a tier user's by user name or index.
        # An image to prefetch by index, and a tag or platform by its index in the entry's list.
        assert first in known or re.fullmatch(r"registry_mirror_upstreams\[([a-z][a-z0-9-]*|[0-9]+)\](\.[a-z_]+)?", first) or (
            re.fullmatch(r"registry_mirror_(tiers\[[0-9]+\]|tier_users\[[A-Za-z0-9._@+-]+\])(\.[a-z_]+)?", first)) or (
            re.fullmatch(r"registry_mirror_prefetch\[[0-9]+\](\.(repository|tags|platforms)(\[[0-9]+\])?)?", first)), (
            f"an error that does not start with a variable's name: {error}")


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_no_message_holds_a_secret(case: str) -> None:
    overrides, _variable, _problem = BAD_INPUT[case]
    report = run(overrides)
    text = "\n".join(report.errors + report.warnings)
    for name in basic.SECRET_VARIABLES:
        value = str(overrides.get(name, ""))
        if value:
            assert value not in text
    for secret in SECRETS:
        assert secret not in text


def test_every_problem_is_reported_at_once() -> None:
    report = run({
        "registry_mirror_storage_dir": "/etc", "registry_mirror_config_dir": "relative", "registry_mirror_user": "root",
        "registry_mirror_upstream_url": "https://hub:99999", "registry_mirror_release_base_url": "ftp://x/y",
        "registry_mirror_port": 70000, "registry_mirror_proxy_ttl": "1 week", "registry_mirror_version": "v1.0.0",
        "registry_mirror_dockerhub_username": USER, "registry_mirror_bind_adress": "1.2.3.4",
    })
    named = {error.split(" ", 1)[0] for error in report.errors}
    assert named == {"registry_mirror_storage_dir", "registry_mirror_config_dir", "registry_mirror_user",
                     "registry_mirror_upstream_url", "registry_mirror_release_base_url", "registry_mirror_port",
                     "registry_mirror_proxy_ttl", "registry_mirror_version", "registry_mirror_dockerhub_token",
                     "registry_mirror_bind_adress"}


def test_the_issues_message_for_a_misspelt_variable() -> None:
    errors = run({"registry_mirror_bind_adress": "192.168.128.1"}).errors
    assert errors[0].startswith("registry_mirror_bind_adress is not a variable of this role; "
                                "did you mean registry_mirror_bind_address?")


def test_unknown_variables_can_be_warnings() -> None:
    report = run({"registry_mirror_bind_adress": "192.168.128.1", "registry_mirror_unknown_variables": "warn"})
    assert report.errors == []
    assert report.warnings == ["registry_mirror_bind_adress is not a variable of this role; did you mean "
                               "registry_mirror_bind_address?"]


def test_other_roles_variables_are_not_ours() -> None:
    assert run({}, defined=["registry_mirrors", "docker_registry_mirror", "_registry_mirror_arch", "ansible_facts"]).errors == []


def test_an_old_version_with_a_token_warns() -> None:
    report = run({"registry_mirror_version": "2.8.2", "registry_mirror_dockerhub_username": USER,
                  "registry_mirror_dockerhub_token": TOKEN})
    assert report.errors == [] and "CVE-2026-33540" in others(report)[0]


def test_a_url_with_a_password_is_shown_without_it() -> None:
    errors = run({"registry_mirror_upstream_url": "https://bob:hunter2@hub.example.com/v2"}).errors
    assert errors and all("hunter2" not in error and "bob" not in error for error in errors)


@pytest.mark.parametrize("value", ["a\nb", "a\x00b", "a b", "a\u2028b", "a\u00e9b", 'a"b', "a\\b", "a`b", "a$b"])
def test_secret_problems_name_a_class_not_the_character(value: str) -> None:
    for text in basic.secret_problems(value, username=False):
        assert text.startswith(("a ", "whitespace")) and value not in text


# ---- registry_mirror_upstreams: what passes, and what the role gets -------------------------------------------


@pytest.mark.parametrize("entries,overrides", [
    ([GHCR], {}),
    ([{**GHCR, **CREDS}, QUAY, {"name": "k8s", "url": "https://registry.k8s.io", "port": 5030}], {}),
    ([{"name": "lab", "url": "http://registry.lab.test:8080", "port": "5040", "allow_http": "yes"}], {}),
    ([{"name": "v6", "url": "https://[fd00::1]:8443/", "port": 5050, "registry": "v6.lab.test"}], {}),
    ([{"name": "ip", "url": "https://10.0.0.5:8443", "port": 5060}], {}),
    ([{"name": "a" + "-b" * 15, "url": "https://a.example.com", "port": 6000}], {}),
    ([{**GHCR, "registry": None, "ttl": None, "username": None, "password": None, "storage_dir": None}], {}),
    ([{**GHCR, **CREDS, "registry": "ghcr.io", "ttl": "0", "storage_dir": "/srv/ghcr", "cache_budget_mb": 0,
       "cache_budget_percent": 0, "metrics_port": 6001, "supervisor_port": 6002, "allow_http": False}], {}),
    # Metrics off or on, every metrics port is its own (turning metrics on must not break the mirror).
    ([GHCR, {**QUAY, "metrics_port": 5013, "port": 5014}], {}),
    ([GHCR, {**QUAY, "metrics_port": 5013, "port": 5014}], {"registry_mirror_metrics_enabled": True}),
    # Next to the Docker Hub cache, and next to each other, but never inside one another.
    ([{**GHCR, "storage_dir": "/srv/cache/ghcr"}, {**QUAY, "storage_dir": "/srv/cache/quay"}],
     {"registry_mirror_storage_dir": "/srv/cache/hub"}),
], ids=["one", "three with credentials", "http lab", "IPv6 with a registry", "IPv4", "31 characters", "nulls", "every key",
        "metrics off", "metrics on", "siblings"])
def test_good_upstreams_pass(entries: list[dict[str, t.Any]], overrides: dict[str, t.Any]) -> None:
    report = run({**ups(*entries), **overrides})
    assert report.errors == [] and others(report) == []
    assert [entry["name"] for entry in report.upstreams] == [entry["name"] for entry in entries]


def test_upstreams_are_normalised_with_every_default() -> None:
    report = run(ups({**GHCR, "url": "HTTPS://GHCR.io/", **CREDS},
                     {"name": "k8s-io", "url": "https://registry.k8s.io:443", "port": "5030", "ttl": "72h",
                      "storage_dir": "/srv/k8s", "cache_budget_mb": "100", "cache_budget_percent": 5, "metrics_port": 6031,
                      "supervisor_port": 6032, "allow_http": "no", "registry": "Registry.K8s.IO"},
                     registry_mirror_proxy_ttl="24h", registry_mirror_storage_dir="/srv/hub", registry_mirror_cache_budget_mb=2048))
    assert report.errors == []
    assert report.upstreams == [
        {"name": "ghcr", "url": "https://ghcr.io", "registry": "ghcr.io", "port": 5010, "metrics_port": 5011,
         "supervisor_port": 5012, "ttl": "24h", "storage_dir": "/srv/hub-ghcr", "cache_budget_mb": 2048,
         "cache_budget_percent": 10, "allow_http": False, "credentials": True, "credentials_env": "REGISTRY_MIRROR_GHCR",
         "index": 1, "fallbacks": [], "config_file": "/etc/registry/upstreams/ghcr/config.yml",
         "settings_file": "/etc/registry/upstreams/ghcr/supervisor.json", "env_file": "/etc/registry/upstreams/ghcr/proxy.env",
         "socket": "/run/registry/ghcr.sock"},
        {"name": "k8s-io", "url": "https://registry.k8s.io:443", "registry": "registry.k8s.io", "port": 5030,
         "metrics_port": 6031, "supervisor_port": 6032, "ttl": "72h", "storage_dir": "/srv/k8s", "cache_budget_mb": 100,
         "cache_budget_percent": 5, "allow_http": False, "credentials": False, "credentials_env": "REGISTRY_MIRROR_K8S_IO",
         "index": 2, "fallbacks": [], "config_file": "/etc/registry/upstreams/k8s-io/config.yml",
         "settings_file": "/etc/registry/upstreams/k8s-io/supervisor.json",
         "env_file": "/etc/registry/upstreams/k8s-io/proxy.env",
         "socket": "/run/registry/k8s-io.sock"},
    ]
    # Every key, in the same order, whatever the entry sets; never a secret.
    for entry in report.upstreams:
        assert list(entry) == [key for key in entry_rules.UPSTREAM_OPTIONS if key not in entry_rules.UPSTREAM_SECRETS] + [
            "credentials", "credentials_env", "index", "fallbacks", "config_file", "settings_file", "env_file",
            "socket"]
    # The Docker Hub mirror has the same keys, in the same order.
    assert list(report.primary) == list(report.upstreams[0])
    assert UP_USER not in repr(report) and UP_PASSWORD not in repr(report)


def test_no_upstreams_is_docker_hub_alone() -> None:
    assert run({}).upstreams == [] and run({U: None}).upstreams == []
    assert run({U: []}) == DEFAULT_REPORT


def test_the_normalisation_depends_on_the_variables_alone() -> None:
    """The host checks normalise again: the same variables give the same list, entry for entry."""
    overrides = ups({**GHCR, **CREDS}, QUAY, registry_mirror_storage_dir="/srv/hub")
    values, errors = rules.effective({**{name: option.get("default") for name, option in SPEC.items()}, **overrides}, SPEC)
    assert errors == []
    assert upstream_rules.normalise_upstreams(values).upstreams == run(overrides).upstreams == upstream_rules.normalise_upstreams(values).upstreams


def test_a_bad_entry_leaves_no_list() -> None:
    report = run(ups(GHCR, {**QUAY, "port": 80}))
    assert report.errors and [entry["name"] for entry in report.upstreams] == ["ghcr"]


def test_a_bad_variable_an_entry_derives_from_is_reported_once() -> None:
    """A wrong registry_mirror_storage_dir is its own error, not one more per upstream that derives from it."""
    errors = run(ups(GHCR, registry_mirror_storage_dir="/etc")).errors
    assert [error.split(" ", 1)[0] for error in errors] == ["registry_mirror_storage_dir"]


def test_every_upstream_problem_is_reported_at_once() -> None:
    errors = run(ups({**GHCR, "port": 5000, "url": "http://ghcr.io", "ttl": "week", "colour": 1},
                     {"name": "Quay", "url": "https://quay.io", "port": 5020, "password": UP_PASSWORD}, "k8s")).errors
    named = [error.split(" ", 1)[0] for error in errors]
    assert named == [f"{U}[ghcr]", f"{U}[ghcr].url", f"{U}[ghcr].ttl", f"{U}[1].name", f"{U}[1].username", f"{U}[2]",
                     f"{U}[ghcr].port", f"{U}[ghcr].supervisor_port", f"{U}[ghcr].metrics_port"]


@pytest.mark.parametrize("shares,warned", [
    ([10] * 6, False),  # 25 + 60
    ([10] * 7, True),  # 25 + 70
    ([65], False),  # 25 + 65 = 90: not more than 90
    ([60, 6], True),
])
def test_cache_budgets_over_90_percent_warn(shares: list[int], warned: bool) -> None:
    entries = [{"name": f"u{index}", "url": f"https://u{index}.example.com", "port": 6000 + 10 * index,
                "cache_budget_percent": share, **CREDS} for index, share in enumerate(shares)]
    report = run(ups(*entries))
    assert report.errors == []
    assert bool(others(report)) == warned
    if warned:
        assert others(report)[0].startswith(f"{U}: the caches' budgets add up to {25 + sum(shares)} percent")
        assert "registry_mirror_cache_budget_percent 25" in others(report)[0] and f"{U}[u0].cache_budget_percent" in others(report)[0]
        assert UP_PASSWORD not in others(report)[0] and UP_USER not in others(report)[0]


@pytest.mark.parametrize("name,prefix", [("ghcr", "REGISTRY_MIRROR_GHCR"), ("k8s-io", "REGISTRY_MIRROR_K8S_IO"),
                                         ("a-b-c9", "REGISTRY_MIRROR_A_B_C9")])
def test_credentials_env(name: str, prefix: str) -> None:
    assert upstream_rules.credentials_env(name) == prefix


def test_the_upstream_keys_are_the_specs() -> None:
    option = SPEC[U]
    assert (option["type"], option["elements"], option["default"]) == ("list", "dict", [])
    assert {key: sub["type"] for key, sub in option["options"].items()} == entry_rules.UPSTREAM_OPTIONS
    assert {key for key, sub in option["options"].items() if sub.get("required")} == set(entry_rules.UPSTREAM_REQUIRED)
    assert {key for key, sub in option["options"].items() if sub.get("no_log")} == {"password"}
    assert option["options"]["cache_budget_percent"]["default"] == upstream_rules.UPSTREAM_BUDGET_PERCENT


# ---- consistency with the role ---------------------------------------------------------------------------------


def test_release_architectures_are_the_roles() -> None:
    arch_map = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["_registry_mirror_arch_map"]
    assert set(arch_map.values()) == set(basic.RELEASE_ARCHITECTURES)


def test_the_account_comment_is_the_roles() -> None:
    assert yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["_registry_mirror_account_comment"] == basic.ACCOUNT_COMMENT


def test_every_variable_has_a_bad_input_case() -> None:
    """A new variable needs a rule and a case here (or is a plain boolean)."""
    covered = {name for overrides, _v, _p in BAD_INPUT.values() for name in overrides}
    plain = {name for name, option in SPEC.items() if option.get("type") == "bool"}
    assert set(SPEC) - covered - plain == set()


def test_the_defaults_file_and_the_spec_agree() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert set(defaults) == set(SPEC)


# ---- the fleet: what passes, and what the role gets ------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    tiers(TIER),
    tiers({**TIER, **TIER_CREDS}, {"url": "https://10.20.0.6"}, {"url": "https://[fd00::6]:5000/"},
          registry_mirror_tier_ca="/srv/fleet/ca.crt"),
    tiers(*({"url": f"https://tier{n}.site.test"} for n in range(8))),
    tiers({"url": "http://tier.lab.test:5000"}, registry_mirror_upstream_allow_http=True),
    tiers({**TIER, "username": None, "password": None}),
    # An upstream whose name is tierN may have credentials when tier N has none, or there is no tier N.
    tiers({**TIER, **TIER_CREDS}, **ups({**GHCR, **CREDS}, {**QUAY, "name": "tier2", **CREDS})),
    tiers(TIER, **ups({**QUAY, "name": "tier1", **CREDS})),
    # Empty values of the tier's variables are not set.
    tiers(TIER, registry_mirror_tier_users=[], registry_mirror_tier_tls_certificate="", registry_mirror_tier_tls_key=None,
          registry_mirror_tier_names=""),
    # A tier: Docker Hub with the token, its accounts, names and certificate.
    TIER_MODE,
    {**TIER_MODE, "registry_mirror_bind_address": "172.16.0.10", "registry_mirror_port": 5443},
    on_tier(bind_address="100.64.0.5", tier_users=[EDGE_USER]),
    on_tier(bind_address="192.168.200.10", bind_any_private_address=True),
    tier_users(EDGE_USER, {"username": "ci@site-2.example", "password": "\u00e9" * 36}, {"username": "e" * 64, "password": "x"},
               registry_mirror_dockerhub_username=USER, registry_mirror_dockerhub_token=TOKEN,
               registry_mirror_tier_names=["tier1.site.test", "TIER1", "10.20.0.5", "fd00::5", "a-1.b-2.site.test"],
               registry_mirror_tiers=[], registry_mirror_tier_ca=""),
    on_tier(tier_tls_certificate="/srv/tier/fullchain.pem", tier_tls_key="/srv/tier/key.pem"),
    on_tier(tier_names="tier1.site.test, 10.20.0.5"),
    {"registry_mirror_fleet_ca_dir": "/srv/fleet-ca"},
    {"registry_mirror_fleet_ca_dir": "~/fleet ca"},
], ids=["one tier", "three with credentials", "eight", "http lab", "nulls", "upstreams beside", "tier1 without credentials",
        "empty tier variables", "a tier", "a tier on 5443", "a shared-range tier with accounts", "a tier with the opt-in",
        "a tier with everything", "a tier with its own certificate",
        "names as a string", "fleet CA dir", "fleet CA dir in ~"])
def test_good_fleet_input_passes(overrides: dict[str, t.Any]) -> None:
    report = run(overrides)
    assert report.errors == [] and others(report) == []


def test_tiers_are_normalised_without_secrets() -> None:
    report = run(tiers({"url": "HTTPS://Tier1.Site.test:5000/", **TIER_CREDS}, {"url": "https://tier2.site.test"}))
    assert report.errors == [] and report.tier_users == []
    assert report.tiers == [
        {"url": "https://tier1.site.test:5000", "index": 1, "credentials": True, "credentials_env": "REGISTRY_MIRROR_TIER1"},
        {"url": "https://tier2.site.test", "index": 2, "credentials": False, "credentials_env": "REGISTRY_MIRROR_TIER2"},
    ]
    assert TIER_LOGIN not in repr(report) and TIER_PASSWORD not in repr(report)


# ---- the model the role renders from --------------------------------------------------------------------------------


def test_the_docker_hub_mirror_is_an_entry_like_the_upstreams() -> None:
    """Its URL keeps the case it was given, without the trailing slash; its numbers are numbers."""
    report = run({"registry_mirror_upstream_url": "https://Hub.Example.TEST:8443/", "registry_mirror_port": "5005",
                  "registry_mirror_cache_budget_mb": "100", "registry_mirror_dockerhub_username": USER,
                  "registry_mirror_dockerhub_token": TOKEN, "registry_mirror_config_dir": "/srv/etc/registry",
                  "registry_mirror_release_base_url": "https://releases.example.test/dist//", **ups(GHCR)})
    assert report.errors == []
    assert report.primary == {**DEFAULT_PRIMARY, "url": "https://Hub.Example.TEST:8443", "port": 5005, "cache_budget_mb": 100,
                              "credentials": True, "config_file": "/srv/etc/registry/config.yml",
                              "settings_file": "/srv/etc/registry/supervisor.json", "env_file": "/srv/etc/registry/proxy.env",
                              "socket": "/run/registry/docker-hub.sock"}
    assert report.paths == {**DEFAULT_PATHS, "upstreams_dir": "/srv/etc/registry/upstreams",
                            "release_base_url": "https://releases.example.test/dist"}
    assert report.upstreams[0]["settings_file"] == "/srv/etc/registry/upstreams/ghcr/supervisor.json"
    assert TOKEN not in repr(report) and USER not in repr(report)


def test_an_edge_pulls_through_its_tiers_then_docker_hub() -> None:
    report = run(tiers({"url": "https://Tier1.site.test:5000/"}, {**TIER, "url": "https://tier2.site.test", **TIER_CREDS},
                       registry_mirror_upstream_url="https://hub.example.test/"))
    assert report.errors == []
    assert report.primary["url"] == "https://tier1.site.test:5000" and report.primary["credentials"] is True
    assert report.primary["fallbacks"] == [{"url": "https://tier2.site.test", "credentials": "REGISTRY_MIRROR_TIER2"},
                                           {"url": "https://hub.example.test", "credentials": ""}]
    anonymous = run(tiers(TIER)).primary
    assert anonymous["credentials"] is False and anonymous["fallbacks"] == [{"url": "https://registry-1.docker.io", "credentials": ""}]
    assert TIER_LOGIN not in repr(report) and TIER_PASSWORD not in repr(report)


@pytest.mark.parametrize("names,listed", [("tier1.site.test, 10.20.0.6,, tier1", ["tier1.site.test", "10.20.0.6", "tier1"]),
                                          (["tier1.site.test"], ["tier1.site.test"]), (None, []), ("", [])])
def test_the_tier_names_are_a_list(names: t.Any, listed: list[str]) -> None:
    report = run(on_tier(tier_names=names))
    assert report.errors == [] and report.tier_names == listed


@pytest.mark.parametrize("name,problem", [("#ci", "which starts with '#': distribution reads such a line"),
                                          ("c\u200bi", "which contains a character that is not printable")])
def test_the_preflight_refuses_a_user_name_the_htpasswd_module_refuses(name: str, problem: str) -> None:
    errors = run(tier_users({**EDGE_USER, "username": name})).errors
    assert len(errors) == 1 and errors[0].startswith(f"{TU}[0].username is ") and problem in errors[0]


def test_tier_users_are_their_names() -> None:
    report = run(tier_users(EDGE_USER, {"username": "ci@site-2", "password": TU_PASSWORD + "2"}))
    assert report.errors == [] and report.tiers == [] and report.tier_users == ["edge", "ci@site-2"]
    assert TU_PASSWORD not in repr(report)


def test_without_fleet_variables_there_are_no_tiers() -> None:
    assert run({}).tiers == [] and run({}).tier_users == []
    assert run({T: None, TU: None}) == DEFAULT_REPORT


def test_a_tier_with_a_certificate_and_names_warns() -> None:
    report = run(on_tier(tier_tls_certificate="/srv/tier.pem", tier_tls_key="/srv/tier.key", tier_names=["tier1.site.test"]))
    assert report.errors == []
    assert report.warnings == ["registry_mirror_tier_names is set while registry_mirror_tier_tls_certificate is too: the names "
                               "go only into a certificate the fleet CA issues; the operator's certificate is served as it is"]


def test_the_variables_of_the_other_mode_are_each_named() -> None:
    edge = run({TU: [EDGE_USER], "registry_mirror_tier_tls_certificate": "/srv/t.pem", "registry_mirror_tier_tls_key": "/srv/t.key",
                "registry_mirror_tier_names": ["tier1.site.test"]}).errors
    assert [error.split(" ", 1)[0] for error in edge] == list(fleet.TIER_ONLY)
    assert all("registry_mirror_mode is edge: it applies to tiers only" in error for error in edge)
    tier = run({**TIER_MODE, T: [TIER], "registry_mirror_tier_ca": "/srv/ca.crt"}).errors
    assert [error.split(" ", 1)[0] for error in tier] == list(fleet.EDGE_ONLY)
    assert TU_PASSWORD not in "\n".join(edge)


def test_every_fleet_problem_is_reported_at_once() -> None:
    errors = run({**tiers({"url": "http://t1.site.test"}, {"url": "https://t1.site.test", "password": TIER_PASSWORD}, "t3"),
                  "registry_mirror_dockerhub_username": USER, "registry_mirror_dockerhub_token": TOKEN,
                  "registry_mirror_fleet_ca_dir": "/usr", "registry_mirror_tier_names": ["*.site.test"]}).errors
    assert [error.split(" ", 1)[0] for error in errors] == [
        "registry_mirror_fleet_ca_dir", "registry_mirror_tier_names", f"{T}[0].url", f"{T}[1].username", f"{T}[2]",
        "registry_mirror_tier_names", "registry_mirror_dockerhub_username"]
    assert not any(secret in "\n".join(errors) for secret in SECRETS)


@pytest.mark.parametrize("password", ["", "a\nb", "a\rb", "a\x00b", "a\tb", "a\x7fb", "a\u0085b", "a\u2028b", "x" * 73,
                                      "\u00e9" * 37, "\U0001f512" * 19])
def test_tier_password_problems_name_a_class_not_the_value(password: str) -> None:
    problems = htpasswd.password_problems(password)
    assert problems and (password or problems == ["is empty"])
    for text in problems if password else ():
        assert "(its value is not shown)" in text and (not password or password not in text)
        assert str(len(password)) not in text.replace("72", "") and str(len(password.encode())) not in text.replace("72", "")


@pytest.mark.parametrize("password", ["x" * 72, "\u00e9" * 36, " spaces and 'quotes' \"$`\\ are fine ", "\U0001f512" * 18])
def test_tier_passwords_that_pass(password: str) -> None:
    assert htpasswd.password_problems(password) == []


@pytest.mark.parametrize("index,item,taken,label", [
    (0, {"username": "edge"}, (), f"{TU}[edge]"),
    (3, {"username": "edge"}, ("edge",), f"{TU}[3]"),
    (1, {"username": "a]b"}, (), f"{TU}[1]"),
    (1, {"username": "\u00e9dge"}, (), f"{TU}[1]"),
    (2, {"username": "a:b"}, (), f"{TU}[2]"),
    (0, {"url": "https://tier1.site.test"}, (), f"{T}[0]"),
    (4, "edge", (), f"{TU}[4]"),
])
def test_entry_labels(index: int, item: t.Any, taken: tuple[str, ...], label: str) -> None:
    assert entry_rules.entry_label(label.split("[", 1)[0], index, item, taken) == label


def test_the_fleet_keys_are_the_specs() -> None:
    assert SPEC["registry_mirror_mode"]["choices"] == ["edge", "tier"] and SPEC["registry_mirror_mode"]["default"] == "edge"
    for variable, options, required in ((T, entry_rules.TIER_OPTIONS, entry_rules.TIER_REQUIRED),
                                        (TU, entry_rules.TIER_USER_OPTIONS, entry_rules.TIER_USER_REQUIRED)):
        option = SPEC[variable]
        assert (option["type"], option["elements"], option["default"]) == ("list", "dict", [])
        assert {key: sub["type"] for key, sub in option["options"].items()} == options
        assert {key for key, sub in option["options"].items() if sub.get("required")} == set(required)
        assert {key for key, sub in option["options"].items() if sub.get("no_log")} == {"password"}
    assert set(entry_rules.TIER_SECRETS) == {"username", "password"} and entry_rules.TIER_USER_SECRETS == ("password",)
    for name in fleet.TIER_ONLY + fleet.EDGE_ONLY:
        assert SPEC[name]["default"] in ("", []), name


def test_the_fleet_defaults() -> None:
    """Every fleet variable is unset by default: an edge without tiers, as before."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["registry_mirror_mode"] == "edge"
    assert all(defaults[name] in ("", []) for name in fleet.TIER_ONLY + fleet.EDGE_ONLY)
    assert defaults["registry_mirror_fleet_ca_dir"].endswith("/.local/share/actuated.registry/fleet-ca")
    assert SPEC["registry_mirror_fleet_ca_dir"]["default"] == "~/.local/share/actuated.registry/fleet-ca"


# ---- where a mirror listens -------------------------------------------------------------------------------------


# address: accepted on (an edge, an edge with the opt-in, a tier without accounts, a tier with accounts)
@pytest.mark.parametrize("address,accepted", [
    ("192.168.128.1", (True, True, False, False)),  # actuated's bridges: edges only
    ("192.168.129.1", (True, True, False, False)),
    ("auto", (True, True, False, False)),
    ("10.88.1.21", (False, True, True, True)),  # RFC 1918, and its edges
    ("10.255.255.254", (False, True, True, True)),
    ("172.16.0.1", (False, True, True, True)),
    ("172.31.255.254", (False, True, True, True)),
    ("192.168.0.1", (False, True, True, True)),
    ("169.254.10.1", (False, True, True, True)),  # link-local
    ("100.64.0.1", (False, False, False, True)),  # shared (carrier-grade NAT): not private
    ("100.127.255.254", (False, False, False, True)),
    ("198.18.0.1", (False, False, False, True)),  # benchmarking: not private
    ("172.15.255.254", (False, False, False, False)),  # just outside RFC 1918: public
    ("172.32.0.1", (False, False, False, False)),
    ("11.0.0.1", (False, False, False, False)),
    ("100.128.0.1", (False, False, False, False)),  # just outside the shared range
    ("8.8.8.8", (False, False, False, False)),
    ("192.0.2.1", (False, False, False, False)),  # documentation (RFC 5737)
    ("198.51.100.1", (False, False, False, False)),
    ("203.0.113.7", (False, False, False, False)),
])
def test_where_each_mode_may_listen(address: str, accepted: tuple[bool, bool, bool, bool]) -> None:
    cases = ({"registry_mirror_bind_address": address}, {"registry_mirror_bind_address": address, BIND_ANY: True},
             on_tier(bind_address=address), on_tier(bind_address=address, tier_users=[EDGE_USER]))
    for overrides, expected in zip(cases, accepted):
        errors = run(overrides).errors
        assert (errors == []) == expected, (overrides, errors)
        assert all(error.startswith("registry_mirror_bind_address is ") for error in errors), errors


def test_an_edge_off_the_bridge_is_told_about_the_opt_in_only_when_it_helps() -> None:
    private = run({"registry_mirror_bind_address": "10.88.1.21"}).errors
    assert len(private) == 1 and f"set {BIND_ANY}: true" in private[0]
    for address in ("100.64.0.1", "8.8.8.8", "203.0.113.7"):
        errors = run({"registry_mirror_bind_address": address}).errors
        assert len(errors) == 1 and f"set {BIND_ANY}" not in errors[0], errors


def test_the_opt_in_is_documented_and_off_by_default() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults[BIND_ANY] is False and SPEC[BIND_ANY] == {**SPEC[BIND_ANY], "type": "bool", "default": False}
    text = " ".join(SPEC[BIND_ANY]["description"])
    assert all(str(network) in text for network in basic.PRIVATE_NETWORKS) and "100.64.0.0/10" in text
    assert fleet.BIND_ANY == BIND_ANY


# ---- user names that look like tokens ---------------------------------------------------------------------------

# A token of each kind that a user name may hold by mistake (made up here, none valid anywhere).
TOKEN_LIKE = {
    "Docker Hub personal access token": "dckr_pat_" + "Xq3vLr8Tz0WmKb4NcYh2Pj7",
    "Docker Hub organization access token": "dckr_oat_" + "b7Yw2QmZr4Lx9TcVk1Hn0Pd",
    "GitHub personal access token": "ghp_" + "Z8xK2mQ7wR4tY1uB6nV3cL9pS0dF5gH2jA7e",
    "GitHub fine-grained token": "github_pat_" + "11ABCDE7Q0" + "x" * 12 + "_" + "Yk3" * 10,
    "GitHub OAuth token": "gho_" + "q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8",
    "long random string": "r3PO3nHwTiumXf4yEENpwawyxsta3xci",
    "long run of hexadecimal characters": "6f1e0c3b9a2d4e5f60718293a4b5c6d7e8f90a1b",
}
# Names that are not tokens: no warning (an Azure service principal's id, long readable names, registries' fixed names).
PLAIN_NAMES = ("actuated-ci", "ghcr-bot-Q7ZX", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "ServicePrincipalForBuildAgents2024",
               "GitHubActionsRunnerServiceAccount01", "robot_myorg_buildkite_agent_readonly_2024", "AWS", "oauth2accesstoken",
               "_json_key", "ghost", "deadbeefdeadbeefdeadbeefdeadbeef")


def user_name_cases(name: str) -> dict[str, tuple[dict[str, t.Any], str]]:
    """Every variable that holds a user name, set to NAME in otherwise valid variables: {case: (overrides, its name)}."""
    return {
        "Docker Hub": ({"registry_mirror_dockerhub_username": name, "registry_mirror_dockerhub_token": TOKEN},
                       "registry_mirror_dockerhub_username"),
        "upstream": (ups(up(username=name, password=UP_PASSWORD)), f"{U}[ghcr].username"),
        "tier": (tiers({**TIER, "username": name, "password": TIER_PASSWORD}), f"{T}[0].username"),
        "tier user": (tier_users({"username": name, "password": TU_PASSWORD}), f"{TU}[0].username"),
    }


@pytest.mark.parametrize("where", sorted(user_name_cases("x")))
@pytest.mark.parametrize("kind", sorted(TOKEN_LIKE))
def test_a_user_name_that_looks_like_a_token_warns_without_showing_it(where: str, kind: str) -> None:
    value = TOKEN_LIKE[kind]
    overrides, variable = user_name_cases(value)[where]
    report = run(overrides)
    assert report.errors == []
    assert [warning.split(" ", 1)[0] for warning in others(report)] == [variable]
    assert others(report)[0].startswith(f"{variable} looks like a") and kind in others(report)[0]
    assert "(its value is not shown)" in others(report)[0]
    assert value not in "\n".join(others(report)) and value[-12:] not in "\n".join(others(report))


@pytest.mark.parametrize("where", sorted(user_name_cases("x")))
@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_a_plain_user_name_does_not_warn(where: str, name: str) -> None:
    overrides, _variable = user_name_cases(name)[where]
    report = run(overrides)
    assert report.errors == [] and others(report) == []


def test_a_tier_user_that_looks_like_a_token_is_never_shown() -> None:
    """A tier user's name is shown (it is not secret), except when it looks like a token: its entry is then named by
    index, and problems about the name do not show it either (a github_pat_ token is longer than a user name may be)."""
    value = TOKEN_LIKE["GitHub fine-grained token"] + "Yk3" * 5
    cases = (tier_users({"username": value, "password": TU_PASSWORD}),
             tier_users({"username": value, "password": TU_PASSWORD + "\n"}),
             tier_users({"username": TOKEN_LIKE["long random string"], "password": "a"},
                        {"username": TOKEN_LIKE["long random string"], "password": "b"}))
    for overrides in cases:
        report = run(overrides)
        assert report.errors and report.warnings
        text = "\n".join(report.errors + report.warnings)
        assert value not in text and TOKEN_LIKE["long random string"] not in text and value[11:30] not in text
        assert all(re.match(rf"{re.escape(TU)}\[[0-9]+\]", line) for line in report.errors + report.warnings), text


def test_token_prefixes_are_matched_as_prefixes_only() -> None:
    assert basic.token_kind("ci-ghp_user") is None and basic.token_kind("my_dckr_pat_") is None
    assert basic.token_kind("dckr_pat_x") == "a Docker Hub personal access token"


# ---- host rules ------------------------------------------------------------------------------------------------

OURS = f"user\tregistry:x:998:998:{basic.ACCOUNT_COMMENT}:/var/lib/registry:/usr/sbin/nologin\ngroup\tregistry:x:998:\n"
FRESH = "user\t\ngroup\t\n"
ABSENT = "path\t{0}\t{0}\t-\t-\t-\t-\t-\t-\t{1}\tdirectory\n"
PRESENT = "path\t{0}\t{0}\t-\tdirectory\t{1}\t{2}\t{3}\t{4}\t{0}\tdirectory\n"
STORAGE, CONFIG = "/var/lib/registry", "/etc/registry"
ROLE_DIRS = PRESENT.format(STORAGE, 998, 998, "registry", "registry") + PRESENT.format(CONFIG, 0, 998, "root", "registry")
NEW_DIRS = ABSENT.format(STORAGE, "/var/lib") + ABSENT.format(CONFIG, "/etc")
VALUES = {"registry_mirror_user": "registry", "registry_mirror_group": "registry", "registry_mirror_storage_dir": STORAGE,
          "registry_mirror_config_dir": CONFIG, "registry_mirror_existing_accounts": []}

# (report, overrides, variable, problem)
BAD_HOST: dict[str, tuple[str, dict[str, t.Any], str, str]] = {
    "user of someone else": ("user\tregistry:x:1000:1000:Jane:/home/jane:/bin/bash\ngroup\tregistry:x:1000:\n" + NEW_DIRS, {},
                             "registry_mirror_user", "did not create"),
    "user with uid 0": ("user\ttoor:x:0:0::/root:/bin/sh\ngroup\t\n" + NEW_DIRS, {"registry_mirror_user": "toor"},
                        "registry_mirror_user", "uid 0"),
    "group with gid 0": ("user\t\ngroup\twheel:x:0:\n" + NEW_DIRS, {"registry_mirror_group": "wheel"},
                         "registry_mirror_group", "gid 0"),
    "group of someone else": (FRESH.replace("group\t", "group\tusers:x:100:") + NEW_DIRS, {"registry_mirror_group": "users"},
                              "registry_mirror_group", "did not create"),
    "user's group differs": (OURS.replace("group\tregistry:x:998:", "group\tnogroup:x:65534:") + ROLE_DIRS,
                             {"registry_mirror_group": "nogroup"}, "registry_mirror_group", "primary group gid 998"),
    "user's group missing": (OURS.replace("group\tregistry:x:998:", "group\t") + NEW_DIRS, {}, "registry_mirror_group",
                             "does not exist"),
    "storage of someone else": (FRESH + PRESENT.format(STORAGE, 1000, 1000, "jane", "jane") + ABSENT.format(CONFIG, "/etc"), {},
                                "registry_mirror_storage_dir", "belongs to jane:jane"),
    "storage of root": (OURS + PRESENT.format(STORAGE, 0, 0, "root", "root") + PRESENT.format(CONFIG, 0, 998, "root", "registry"),
                        {}, "registry_mirror_storage_dir", "not to the service user registry"),
    "config of someone else": (OURS + PRESENT.format(STORAGE, 998, 998, "registry", "registry")
                               + PRESENT.format(CONFIG, 0, 0, "root", "root"), {}, "registry_mirror_config_dir",
                               "not to root:registry"),
    "storage is a link": (FRESH + f"path\t{STORAGE}\t/etc\tlink\tdirectory\t0\t0\troot\troot\t/etc\tdirectory\n"
                          + ABSENT.format(CONFIG, "/etc"), {}, "registry_mirror_storage_dir", "a symbolic link"),
    "storage resolves to /etc": (FRESH + "path\t/srv/x/etc\t/etc\t-\tdirectory\t0\t0\troot\troot\t/etc\tdirectory\n"
                                 + ABSENT.format(CONFIG, "/etc"), {"registry_mirror_storage_dir": "/srv/x/etc"},
                                 "registry_mirror_storage_dir", "resolves to /etc"),
    "storage under a file": (FRESH + f"path\t{STORAGE}\t{STORAGE}\t-\t-\t-\t-\t-\t-\t/var/lib\tregular file\n"
                             + ABSENT.format(CONFIG, "/etc"), {}, "registry_mirror_storage_dir", "/var/lib is a regular file"),
    "storage is a file": (FRESH + PRESENT.format(STORAGE, 0, 0, "root", "root").replace("directory", "regular file", 1)
                          + ABSENT.format(CONFIG, "/etc"), {}, "registry_mirror_storage_dir", "not a directory"),
    "storage cannot be resolved": (FRESH + f"path\t{STORAGE}\t\t-\t-\t-\t-\t-\t-\t\t\n" + ABSENT.format(CONFIG, "/etc"), {},
                                   "registry_mirror_storage_dir", "cannot be resolved"),
}


@pytest.mark.parametrize("case", sorted(BAD_HOST))
def test_bad_host_names_the_variable_and_the_problem(case: str) -> None:
    report, overrides, variable, problem = BAD_HOST[case]
    errors = host_rules.check_host({**VALUES, **overrides}, host_rules.parse_host_report(report))
    assert any(error.startswith(variable + " ") and problem in error for error in errors), errors


@pytest.mark.parametrize("report,overrides", [
    (FRESH + NEW_DIRS, {}),
    (OURS + ROLE_DIRS, {}),
    (OURS + NEW_DIRS.replace(CONFIG, "/srv/new"), {"registry_mirror_config_dir": "/srv/new"}),
    ("user\tsvc:x:1500:1500:LDAP:/home/svc:/bin/false\ngroup\tsvc:x:1500:\n"
     + PRESENT.format(STORAGE, 1500, 1500, "svc", "svc") + PRESENT.format(CONFIG, 0, 1500, "root", "svc"),
     {"registry_mirror_user": "svc", "registry_mirror_group": "svc", "registry_mirror_existing_accounts": ["svc"]}),
    (FRESH.replace("group\t", "group\tmirror:x:1600:") + NEW_DIRS,
     {"registry_mirror_group": "mirror", "registry_mirror_existing_accounts": ["mirror"]}),
], ids=["fresh host", "the role's own", "a new config dir", "an allowed existing account", "an allowed existing group"])
def test_good_host_passes(report: str, overrides: dict[str, t.Any]) -> None:
    assert host_rules.check_host({**VALUES, **overrides}, host_rules.parse_host_report(report)) == []


# registry_mirror_state absent: the configuration directory, where the role removes its files, is checked as for an
# install; the accounts and the caches only when registry_mirror_purge_cache removes the caches.
REMOVE = {"registry_mirror_state": "absent", "registry_mirror_purge_cache": False}
PURGE = {"registry_mirror_state": "absent", "registry_mirror_purge_cache": True}
JANE = "user\tregistry:x:1000:1000:Jane:/home/jane:/bin/bash\ngroup\tregistry:x:1000:\n"


@pytest.mark.parametrize("report,overrides", [
    (OURS + ROLE_DIRS, REMOVE),
    (OURS + ROLE_DIRS, PURGE),
    (FRESH + NEW_DIRS, REMOVE),
    (FRESH + NEW_DIRS, PURGE),
    # An account the role did not create, or one whose group is gone: an install refuses it, a removal that keeps the
    # caches does not use it.
    (JANE + NEW_DIRS, REMOVE),
    (OURS.replace("group\tregistry:x:998:", "group\tnogroup:x:65534:") + NEW_DIRS, {**REMOVE, "registry_mirror_group": "nogroup"}),
    # A cache that is not the service user's is left alone when it is kept.
    (OURS + PRESENT.format(STORAGE, 1000, 1000, "jane", "jane") + PRESENT.format(CONFIG, 0, 998, "root", "registry"), REMOVE),
    # Nothing to remove: a configuration directory under a file is no problem.
    (OURS + ABSENT.format(STORAGE, "/var/lib") + f"path\t{CONFIG}\t{CONFIG}\t-\t-\t-\t-\t-\t-\t/etc\tregular file\n", REMOVE),
], ids=["the role's own", "the role's own, purged", "nothing installed", "nothing installed, purged", "another's account",
        "another group", "another's cache, kept", "a config dir under a file"])
def test_removal_passes_the_host_checks(report: str, overrides: dict[str, t.Any]) -> None:
    assert host_rules.check_host({**VALUES, **overrides}, host_rules.parse_host_report(report)) == []


@pytest.mark.parametrize("report,overrides,variable,problem", [
    # The role removes its files from the configuration directory: only from one that is the role's.
    (OURS + ROLE_DIRS.replace("\t0\t998\troot\tregistry", "\t0\t0\troot\troot"), REMOVE, "registry_mirror_config_dir",
     "not to root:registry"),
    (OURS + PRESENT.format(STORAGE, 998, 998, "registry", "registry")
     + f"path\t{CONFIG}\t/etc\tlink\tdirectory\t0\t0\troot\troot\t/etc\tdirectory\n", REMOVE, "registry_mirror_config_dir",
     "a symbolic link"),
    # A purge removes only caches of the mirror's own service user.
    (OURS + PRESENT.format(STORAGE, 1000, 1000, "jane", "jane") + PRESENT.format(CONFIG, 0, 998, "root", "registry"), PURGE,
     "registry_mirror_storage_dir", "belongs to jane:jane"),
    (JANE + PRESENT.format(STORAGE, 1000, 1000, "registry", "registry") + ABSENT.format(CONFIG, "/etc"), PURGE,
     "registry_mirror_user", "did not create"),
    (OURS + f"path\t{STORAGE}\t/srv/data\tlink\tdirectory\t998\t998\tregistry\tregistry\t/srv/data\tdirectory\n"
     + PRESENT.format(CONFIG, 0, 998, "root", "registry"), PURGE, "registry_mirror_storage_dir", "a symbolic link"),
], ids=["a config dir of root's group", "a config dir that is a link", "another's cache, purged", "another's account, purged",
        "a cache that is a link, purged"])
def test_removal_refuses_what_is_not_the_roles(report: str, overrides: dict[str, t.Any], variable: str, problem: str) -> None:
    errors = host_rules.check_host({**VALUES, **overrides}, host_rules.parse_host_report(report))
    assert any(error.startswith(variable + " ") and problem in error for error in errors), errors


def test_a_purge_checks_every_listed_upstreams_cache() -> None:
    report = OURS + ROLE_DIRS + PRESENT.format(GHCR_DIR, 0, 0, "root", "root") + ABSENT.format(QUAY_DIR, "/srv")
    assert host_rules.check_host(upstream_values(**REMOVE), host_rules.parse_host_report(report)) == []
    errors = host_rules.check_host(upstream_values(**PURGE), host_rules.parse_host_report(report))
    assert [error.split(" ", 1)[0] for error in errors] == [f"{U}[ghcr].storage_dir"], errors


def test_the_state_keys_are_the_specs() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert SPEC["registry_mirror_state"]["choices"] == ["present", "absent"]
    assert SPEC["registry_mirror_state"]["default"] == defaults["registry_mirror_state"] == "present"
    assert SPEC["registry_mirror_purge_cache"]["type"] == "bool"
    assert SPEC["registry_mirror_purge_cache"]["default"] is defaults["registry_mirror_purge_cache"] is False


def test_the_report_says_whether_the_mirror_runs() -> None:
    host = host_rules.parse_host_report(OURS + "unit\tinstalled\tactive\n" + ROLE_DIRS)
    assert host.unit_installed and host.active == "active" and host.user and host.group


# Each upstream's cache gets the checks of registry_mirror_storage_dir, at its normalised path (the inspection command
# reports one path line for each).
GHCR_DIR, QUAY_DIR = "/var/lib/registry-ghcr", "/srv/quay"


def upstream_values(**overrides: t.Any) -> dict[str, t.Any]:
    """Every variable as its type (as the host checks get them), with ghcr (default storage) and quay (/srv/quay)."""
    raw = {name: option.get("default") for name, option in SPEC.items()}
    raw.update(ups({**GHCR, **CREDS}, {**QUAY, "storage_dir": QUAY_DIR}), **overrides)
    values, errors = rules.effective(raw, SPEC)
    assert errors == []
    return values


UPSTREAM_DIRS = ABSENT.format(GHCR_DIR, "/var/lib") + ABSENT.format(QUAY_DIR, "/srv")

# (report, variable, problem)
BAD_UPSTREAM_HOST: dict[str, tuple[str, str, str]] = {
    "upstream storage of someone else": (OURS + ROLE_DIRS + PRESENT.format(GHCR_DIR, 1000, 1000, "jane", "jane")
                                         + ABSENT.format(QUAY_DIR, "/srv"), f"{U}[ghcr].storage_dir",
                                         "is /var/lib/registry-ghcr, which exists and belongs to jane:jane (uid 1000, gid 1000), "
                                         "not to the service user registry"),
    "upstream storage of root": (OURS + ROLE_DIRS + ABSENT.format(GHCR_DIR, "/var/lib") + PRESENT.format(QUAY_DIR, 0, 0, "root", "root"),
                                 f"{U}[quay].storage_dir", "not to the service user registry"),
    "upstream storage existing before the user": (FRESH + NEW_DIRS + PRESENT.format(GHCR_DIR, 998, 998, "998", "998")
                                                  + ABSENT.format(QUAY_DIR, "/srv"), f"{U}[ghcr].storage_dir",
                                                  "not to the service user registry"),
    "upstream storage is a link": (OURS + ROLE_DIRS + f"path\t{GHCR_DIR}\t/var/lib/registry\tlink\tdirectory\t998\t998\tregistry"
                                   f"\tregistry\t/var/lib/registry\tdirectory\n" + ABSENT.format(QUAY_DIR, "/srv"),
                                   f"{U}[ghcr].storage_dir", "a symbolic link on this host (to /var/lib/registry)"),
    "upstream storage resolves to /usr": (OURS + ROLE_DIRS + ABSENT.format(GHCR_DIR, "/var/lib")
                                          + f"path\t{QUAY_DIR}\t/usr\t-\tdirectory\t0\t0\troot\troot\t/usr\tdirectory\n",
                                          f"{U}[quay].storage_dir", "resolves to /usr on this host"),
    "upstream storage under a file": (OURS + ROLE_DIRS + ABSENT.format(GHCR_DIR, "/var/lib")
                                      + f"path\t{QUAY_DIR}\t{QUAY_DIR}\t-\t-\t-\t-\t-\t-\t/srv\tregular file\n",
                                      f"{U}[quay].storage_dir", "/srv is a regular file on this host"),
    "upstream storage is a file": (OURS + ROLE_DIRS + PRESENT.format(GHCR_DIR, 998, 998, "registry", "registry")
                                   .replace("directory", "regular file", 1) + ABSENT.format(QUAY_DIR, "/srv"),
                                   f"{U}[ghcr].storage_dir", "which is a regular file on this host, not a directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPSTREAM_HOST))
def test_bad_upstream_storage_on_the_host(case: str) -> None:
    report, variable, problem = BAD_UPSTREAM_HOST[case]
    errors = host_rules.check_host(upstream_values(), host_rules.parse_host_report(report))
    assert any(error.startswith(variable + " ") and problem in error for error in errors), errors
    assert UP_USER not in "\n".join(errors) and UP_PASSWORD not in "\n".join(errors)


@pytest.mark.parametrize("report", [
    FRESH + NEW_DIRS + UPSTREAM_DIRS,
    OURS + ROLE_DIRS + PRESENT.format(GHCR_DIR, 998, 998, "registry", "registry") + PRESENT.format(QUAY_DIR, 998, 998, "registry",
                                                                                                   "registry"),
    # The role's older inspection command, without the upstreams' paths: nothing to check there.
    OURS + ROLE_DIRS,
], ids=["fresh host", "the role's own", "no path lines"])
def test_good_upstream_storage_on_the_host(report: str) -> None:
    assert host_rules.check_host(upstream_values(), host_rules.parse_host_report(report)) == []


def test_the_host_checks_use_the_normalised_storage_dir() -> None:
    """A storage_dir that derives from registry_mirror_storage_dir is looked up at the derived path."""
    values = upstream_values(registry_mirror_storage_dir="/srv/hub")
    report = OURS + PRESENT.format("/srv/hub", 998, 998, "registry", "registry") + PRESENT.format(CONFIG, 0, 998, "root", "registry")
    report += PRESENT.format("/srv/hub-ghcr", 0, 0, "root", "root") + ABSENT.format(QUAY_DIR, "/srv")
    errors = host_rules.check_host(values, host_rules.parse_host_report(report))
    assert errors == [f"{U}[ghcr].storage_dir is /srv/hub-ghcr, which exists and belongs to root:root (uid 0, gid 0), not to the "
                      "service user registry: the role only takes over directories it created for the mirror; choose a "
                      "directory that does not exist yet"]


def inspection_script() -> list[str]:
    """The argv of the role's read-only inspection command (tasks/preflight.yml), without its arguments."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    task = next(task for task in tasks if task["name"].startswith("Inspect the accounts"))
    argv = task["ansible.builtin.command"]["argv"]
    if isinstance(argv, list):
        return argv[:4]
    # argv as a template (it appends each upstream's storage_dir): the script is one of the task's vars.
    script = next(value for value in task.get("vars", {}).values() if "printf 'path" in str(value))
    return ["/bin/sh", "-c", script, "registry-mirror-inspect"]


def test_the_inspection_command_reports_what_the_rules_read(tmp_path: Path) -> None:
    """The real command on this machine (read-only), on directories made for the test."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    paths = [str(tmp_path / "dir"), str(tmp_path / "link"), str(tmp_path / "file" / "sub"), str(tmp_path / "new" / "sub")]
    out = subprocess.run([*inspection_script(), "root", "root", *paths], check=True, capture_output=True, text=True).stdout
    host = host_rules.parse_host_report(out)
    assert host.user is not None and host.user.id == 0 and host.group is not None and host.group.id == 0
    made = host.paths[paths[0]]
    assert made.kind == "directory" and not made.link and made.real == paths[0]
    linked = host.paths[paths[1]]
    assert linked.link and linked.real == paths[0]
    under_file = host.paths[paths[2]]
    assert under_file.kind == "-" and under_file.ancestor == str(tmp_path / "file") and "file" in under_file.ancestor_kind
    new = host.paths[paths[3]]
    assert new.kind == "-" and new.ancestor == str(tmp_path) and new.ancestor_kind == "directory"
