# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The registry_mirror role's input and host rules (plugins/module_utils/_mirror_inputs.py), without a host.

Each bad-input case asserts that the run would stop (at least one error), that an error names the variable and the
problem, that every error starts with the name of a variable, and that no message holds a secret's value."""

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.actuated.registry.plugins.module_utils import _mirror_inputs as rules

ROLE = Path(__file__).resolve().parents[4] / "roles" / "registry_mirror"
SPEC = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
HOME = "/home/operator"
HEX = "0123456789abcdef" * 4
TOKEN = "dckr_pat_S3CRETVALUE"  # a valid token: the secret cases below hide this inside broken ones
USER = "mirroruser"


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
    "download cache is ~ itself (/home/operator)": ({"registry_mirror_local_cache_dir": "~/.."}, "registry_mirror_local_cache_dir",
                                                    "not normalised"),
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
    "expiry failure without days": ({"registry_mirror_cert_fail_when_expiring": True, "registry_mirror_cert_min_valid_days": 0},
                                    "registry_mirror_cert_fail_when_expiring", "turns the expiry check off"),
    "boolean that is not one": ({"registry_mirror_troubleshooting": "perhaps"}, "registry_mirror_troubleshooting",
                                "must be true or false"),
    "unknown log level": ({"registry_mirror_log_level": "verbose"}, "registry_mirror_log_level", "must be one of error, warn"),
    "unknown-variable mode": ({"registry_mirror_unknown_variables": "ignore"}, "registry_mirror_unknown_variables", "must be one of"),
}
SECRETS = (TOKEN, USER)


def test_the_defaults_pass() -> None:
    assert run({}) == rules.Report([], [])


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
    {"registry_mirror_supervisor_port": 5001},
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
        assert error.split(" ", 1)[0] in known, f"an error that does not start with a variable's name: {error}"


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_no_message_holds_a_secret(case: str) -> None:
    overrides, _variable, _problem = BAD_INPUT[case]
    report = run(overrides)
    text = "\n".join(report.errors + report.warnings)
    for name in rules.SECRET_VARIABLES:
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
    assert report.errors == [] and "CVE-2026-33540" in report.warnings[0]


def test_a_url_with_a_password_is_shown_without_it() -> None:
    errors = run({"registry_mirror_upstream_url": "https://bob:hunter2@hub.example.com/v2"}).errors
    assert errors and all("hunter2" not in error and "bob" not in error for error in errors)


@pytest.mark.parametrize("value", ["a\nb", "a\x00b", "a b", "a\u2028b", "a\u00e9b", 'a"b', "a\\b", "a`b", "a$b"])
def test_secret_problems_name_a_class_not_the_character(value: str) -> None:
    for text in rules.secret_problems(value, username=False):
        assert text.startswith(("a ", "whitespace")) and value not in text


# ---- consistency with the role ---------------------------------------------------------------------------------


def test_release_architectures_are_the_roles() -> None:
    arch_map = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["_registry_mirror_arch_map"]
    assert set(arch_map.values()) == set(rules.RELEASE_ARCHITECTURES)


def test_the_account_comment_is_the_roles() -> None:
    assert yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["_registry_mirror_account_comment"] == rules.ACCOUNT_COMMENT


def test_every_variable_has_a_bad_input_case() -> None:
    """A new variable needs a rule and a case here (or is a plain boolean)."""
    covered = {name for overrides, _v, _p in BAD_INPUT.values() for name in overrides}
    plain = {name for name, option in SPEC.items() if option.get("type") == "bool"}
    assert set(SPEC) - covered - plain == set()


def test_the_defaults_file_and_the_spec_agree() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert set(defaults) == set(SPEC)


# ---- host rules ------------------------------------------------------------------------------------------------

OURS = f"user\tregistry:x:998:998:{rules.ACCOUNT_COMMENT}:/var/lib/registry:/usr/sbin/nologin\ngroup\tregistry:x:998:\n"
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
    errors = rules.check_host({**VALUES, **overrides}, rules.parse_host_report(report))
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
    assert rules.check_host({**VALUES, **overrides}, rules.parse_host_report(report)) == []


def test_the_report_says_whether_the_mirror_runs() -> None:
    host = rules.parse_host_report(OURS + "unit\tinstalled\tactive\n" + ROLE_DIRS)
    assert host.unit_installed and host.active == "active" and host.user and host.group


def inspection_script() -> list[str]:
    """The argv of the role's read-only inspection command (tasks/preflight.yml), without its arguments."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text())
    task = next(task for task in tasks if task["name"].startswith("Inspect the accounts"))
    return task["ansible.builtin.command"]["argv"][:4]


def test_the_inspection_command_reports_what_the_rules_read(tmp_path: Path) -> None:
    """The real command on this machine (read-only), on directories made for the test."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    paths = [str(tmp_path / "dir"), str(tmp_path / "link"), str(tmp_path / "file" / "sub"), str(tmp_path / "new" / "sub")]
    out = subprocess.run([*inspection_script(), "root", "root", *paths], check=True, capture_output=True, text=True).stdout
    host = rules.parse_host_report(out)
    assert host.user is not None and host.user.id == 0 and host.group is not None and host.group.id == 0
    made = host.paths[paths[0]]
    assert made.kind == "directory" and not made.link and made.real == paths[0]
    linked = host.paths[paths[1]]
    assert linked.link and linked.real == paths[0]
    under_file = host.paths[paths[2]]
    assert under_file.kind == "-" and under_file.ancestor == str(tmp_path / "file") and "file" in under_file.ancestor_kind
    new = host.paths[paths[3]]
    assert new.kind == "-" and new.ancestor == str(tmp_path) and new.ancestor_kind == "directory"
