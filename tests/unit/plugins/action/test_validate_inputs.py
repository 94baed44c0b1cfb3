# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""The validate_inputs action plugin: alone (stub task and templar), then through the role in a real ansible-playbook
run without a target - every host of a throw-away inventory with one wrong value, all of them in one run of a few
seconds, in check mode, stopped before the first task that would contact a host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path
from unittest import mock

import pytest
import yaml

from ansible_collections.actuated.registry.plugins.action.validate_inputs import ActionModule

REPO = Path(__file__).resolve().parents[4]
SPEC = yaml.safe_load((REPO / "roles/registry_mirror/meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
BIN = Path(sys.executable).parent
TOKEN = "dckr_pat_T0PS3CRET"


class Templar:
    """Templates nothing, except that a value "{{ broken }}" (or a list or dictionary holding one) cannot be templated."""

    @classmethod
    def template(cls, value: t.Any) -> t.Any:
        if value == "{{ broken }}":
            raise ValueError("'broken' is undefined: {{ broken }}")
        for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            cls.template(item)
        return value


class Vaulted:
    """A stand-in for a vaulted string after templating: not a str, decrypted by str() (or failing there, without
    the vault password)."""

    def __init__(self, plaintext: str | None) -> None:
        self.plaintext = plaintext

    def __str__(self) -> str:
        if self.plaintext is None:
            raise ValueError("Decryption failed (no vault secrets were found that could decrypt)")
        return self.plaintext


def action(args: dict[str, t.Any] | None = None, role: bool = True) -> ActionModule:
    """The plugin with a stub task (in the role, unless ROLE is false) and the Templar stub."""
    task = mock.MagicMock()
    task.args = args or {}
    task.async_val = 0
    task.check_mode = False
    task._role = None  # pylint: disable=protected-access
    if role:
        task._role = mock.MagicMock()  # pylint: disable=protected-access
        task._role.get_role_path.return_value = str(REPO / "roles/registry_mirror")  # pylint: disable=protected-access
    loader = mock.MagicMock()
    loader.load_from_file.side_effect = lambda path: yaml.safe_load(Path(path).read_text())
    return ActionModule(task, mock.MagicMock(), mock.MagicMock(), loader, Templar(), mock.MagicMock())


def run(task_vars: dict[str, t.Any], args: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    return action(args).run(task_vars=task_vars)


def test_defaults_pass() -> None:
    result = run({"inventory_hostname": "a"})
    assert not result.get("failed") and result["errors"] == [] and result["changed"] is False


def test_every_problem_in_one_message_one_line_each() -> None:
    result = run({"registry_mirror_storage_dir": "/etc", "registry_mirror_bind_adress": "x", "registry_mirror_user": "root"})
    assert result["failed"]
    lines = result["msg"].splitlines()
    assert lines[0] == "3 problems with the registry_mirror variables; nothing was changed:"
    assert [line[2:].split(" ", 1)[0] for line in lines[1:]] == [
        "registry_mirror_storage_dir", "registry_mirror_user", "registry_mirror_bind_adress"]


def test_warn_turns_unknown_variables_into_warnings() -> None:
    result = run({"registry_mirror_bind_adress": "x", "registry_mirror_unknown_variables": "warn"})
    assert not result.get("failed")
    assert result["warnings"] == ["registry_mirror_bind_adress is not a variable of this role; did you mean "
                                  "registry_mirror_bind_address?"]


@pytest.mark.parametrize("token", [TOKEN + "\n", TOKEN + " ", '"' + TOKEN, "{{ broken }}"])
def test_a_secret_never_reaches_the_result(token: str) -> None:
    result = run({"registry_mirror_dockerhub_username": "someone", "registry_mirror_dockerhub_token": token})
    assert result["failed"]
    dumped = json.dumps(result)
    assert TOKEN not in dumped and "broken" not in dumped and "someone" not in dumped
    assert any(error.startswith("registry_mirror_dockerhub_token ") for error in result["errors"])


def test_a_value_that_cannot_be_templated_is_named() -> None:
    result = run({"registry_mirror_storage_dir": "{{ broken }}"})
    assert result["errors"] == ["registry_mirror_storage_dir could not be evaluated: 'broken' is undefined: {{ broken }}"]


def test_outside_a_role_the_spec_is_an_argument() -> None:
    result = action({"argument_spec": SPEC}, role=False).run(task_vars={"registry_mirror_port": 80})
    assert result["failed"] and result["errors"][0].startswith("registry_mirror_port is 80")


HOST_REPORT = ("user\tregistry:x:998:998:distribution registry mirror:/var/lib/registry:/usr/sbin/nologin\n"
               "group\tregistry:x:998:\nunit\tinstalled\tactive\n"
               "path\t/var/lib/registry\t/var/lib/registry\t-\tdirectory\t998\t998\tregistry\tregistry\t/var/lib/registry\tdirectory\n"
               "path\t/etc/registry\t/etc/registry\t-\tdirectory\t0\t0\troot\troot\t/etc/registry\tdirectory\n")


def test_the_host_checks_report_what_the_host_has() -> None:
    result = run({}, {"host_report": HOST_REPORT})
    assert result["user_exists"] and result["group_exists"] and result["unit_installed"] and result["mirror_active"]
    assert result["failed"] and result["errors"] == [
        "registry_mirror_config_dir is /etc/registry, which exists and belongs to root:root (uid 0, gid 0), not to "
        "root:registry: the role only takes over directories it created for the mirror; choose a directory that does "
        "not exist yet"]
    assert result["msg"].startswith("1 problem with the registry_mirror host; nothing was changed:")


# ---- registry_mirror_upstreams ------------------------------------------------------------------------------------

UP_USER = "ghcr-bot-Q7ZX"
UP_PASSWORD = "ghp_UPSTR3AMS3CRET42"
GHCR = {"name": "ghcr", "url": "https://ghcr.io/", "port": 5010}
GHCR_NORMALISED = {"name": "ghcr", "url": "https://ghcr.io", "registry": "ghcr.io", "port": 5010, "metrics_port": 5011,
                   "supervisor_port": 5012, "ttl": "168h", "storage_dir": "/var/lib/registry-ghcr", "cache_budget_mb": 40960,
                   "cache_budget_percent": 10, "allow_http": False, "credentials": True, "credentials_env": "REGISTRY_MIRROR_GHCR",
                   "index": 1, "fallbacks": [], "config_file": "/etc/registry/upstreams/ghcr/config.yml",
                   "settings_file": "/etc/registry/upstreams/ghcr/supervisor.json",
                   "env_file": "/etc/registry/upstreams/ghcr/proxy.env",
                   "socket": "/run/registry/ghcr.sock"}


def test_upstreams_are_returned_normalised_without_secrets() -> None:
    result = run({"registry_mirror_upstreams": [{**GHCR, "username": UP_USER, "password": Vaulted(UP_PASSWORD)},
                                                {"name": "quay", "url": "https://quay.io", "port": "5020"}]})
    assert not result.get("failed") and result["errors"] == []
    assert result["upstreams"] == [GHCR_NORMALISED, {
        "name": "quay", "url": "https://quay.io", "registry": "quay.io", "port": 5020, "metrics_port": 5021, "supervisor_port": 5022,
        "ttl": "168h", "storage_dir": "/var/lib/registry-quay", "cache_budget_mb": 40960, "cache_budget_percent": 10,
        "allow_http": False, "credentials": False, "credentials_env": "REGISTRY_MIRROR_QUAY", "index": 2, "fallbacks": [],
        "config_file": "/etc/registry/upstreams/quay/config.yml", "settings_file": "/etc/registry/upstreams/quay/supervisor.json",
        "env_file": "/etc/registry/upstreams/quay/proxy.env",
        "socket": "/run/registry/quay.sock"}]
    dumped = json.dumps(result)
    assert UP_USER not in dumped and UP_PASSWORD not in dumped


def test_without_upstreams_the_list_is_empty() -> None:
    assert run({})["upstreams"] == []


@pytest.mark.parametrize("password", [UP_PASSWORD + "\n", UP_PASSWORD + " x", "'" + UP_PASSWORD + '"', Vaulted(UP_PASSWORD + "$"),
                                      {"value": UP_PASSWORD}, "", Vaulted(None), "{{ broken }}"])
def test_an_upstream_secret_never_reaches_the_result(password: t.Any) -> None:
    result = run({"registry_mirror_upstreams": [{**GHCR, "port": 5000, "username": UP_USER, "password": password}]})
    assert result["failed"] and "upstreams" not in result
    dumped = json.dumps(result)
    assert UP_USER not in dumped and UP_PASSWORD not in dumped and "broken" not in dumped and "Decryption" not in dumped
    assert any(error.startswith("registry_mirror_upstreams[ghcr].") for error in result["errors"]), result["errors"]


@pytest.mark.parametrize("upstreams,errors", [
    ([{**GHCR, "username": UP_USER, "password": "{{ broken }}"}], ["registry_mirror_upstreams[ghcr].password could not be evaluated"]),
    ([{**GHCR, "username": UP_USER, "password": Vaulted(None)}], ["registry_mirror_upstreams[ghcr].password could not be evaluated"]),
    ([GHCR, {"name": "quay", "url": "{{ broken }}", "port": 5020}],
     ["registry_mirror_upstreams[quay].url could not be evaluated: 'broken' is undefined: {{ broken }}"]),
    ([{**GHCR, "tokn": "{{ broken }}"}], ["registry_mirror_upstreams[ghcr].tokn could not be evaluated"]),
    ([{**GHCR, "name": "{{ broken }}"}], ["registry_mirror_upstreams[0].name could not be evaluated: 'broken' is undefined: {{ broken }}"]),
    ("{{ broken }}", ["registry_mirror_upstreams could not be evaluated"]),
], ids=["password", "vaulted password", "url", "unknown key", "name", "the whole list"])
def test_an_upstream_that_cannot_be_templated_is_named(upstreams: t.Any, errors: list[str]) -> None:
    result = run({"registry_mirror_upstreams": upstreams})
    assert result["failed"] and result["errors"] == errors
    assert UP_USER not in json.dumps(result)


def test_upstream_problems_fail_with_every_one_named() -> None:
    result = run({"registry_mirror_upstreams": [{**GHCR, "port": 5000, "url": "http://ghcr.io"}, "quay"],
                  "registry_mirror_metrics_enabled": True})
    assert result["failed"] and "upstreams" not in result
    assert result["msg"].splitlines()[1:] == ["- " + error for error in result["errors"]]
    assert result["errors"] == [
        "registry_mirror_upstreams[ghcr].url is 'http://ghcr.io', a plain http:// URL: the upstream must use https://, or set "
        "registry_mirror_upstreams[ghcr].allow_http: true for a lab upstream you control",
        "registry_mirror_upstreams[1] must be a dictionary with name, url and port (got str)",
        "registry_mirror_upstreams[ghcr].port is 5000, the same as registry_mirror_port: every listener needs a port of its own",
        "registry_mirror_upstreams[ghcr].supervisor_port (not set: port + 2 by default) is 5002, the same as "
        "registry_mirror_supervisor_port: every listener needs a port of its own",
        "registry_mirror_upstreams[ghcr].metrics_port (not set: port + 1 by default) is 5001, the same as "
        "registry_mirror_metrics_port: every listener needs a port of its own"]


def test_the_budget_warning_does_not_fail() -> None:
    result = run({"registry_mirror_upstreams": [{**GHCR, "cache_budget_percent": 70}]})
    assert not result.get("failed") and result["upstreams"][0]["cache_budget_percent"] == 70
    assert result["warnings"][0].startswith("registry_mirror_upstreams: the caches' budgets add up to 95 percent")


def test_a_token_in_a_user_name_warns_without_reaching_the_result() -> None:
    pasted = "dckr_pat_" + "PastedAsTheUserName42"
    result = run({"registry_mirror_dockerhub_username": pasted, "registry_mirror_dockerhub_token": TOKEN,
                  "registry_mirror_upstreams": [{**GHCR, "username": "ghp_" + "Q" * 36, "password": "x"}]})
    assert not result.get("failed")
    tokens = [warning for warning in result["warnings"] if "looks like a" in warning]
    assert [warning.split(" ", 1)[0] for warning in tokens] == [
        "registry_mirror_dockerhub_username", "registry_mirror_upstreams[ghcr].username"]
    assert all("(its value is not shown)" in warning for warning in tokens)
    assert pasted not in json.dumps(result) and "Q" * 36 not in json.dumps(result)


@pytest.mark.parametrize(("docker_hub", "ghcr", "warned"), [
    (False, False, []),
    (True, False, ["registry_mirror_dockerhub_username"]),
    (False, True, ["registry_mirror_upstreams[ghcr].username"]),
    (True, True, ["registry_mirror_dockerhub_username", "registry_mirror_upstreams[ghcr].username"]),
])
def test_every_run_with_an_upstream_account_warns_who_can_read_what(
        docker_hub: bool, ghcr: bool, warned: list[str]) -> None:
    values: dict[str, t.Any] = {"registry_mirror_upstreams": [
        {**GHCR, "username": "octo-reader", "password": "x" * 20} if ghcr else GHCR]}
    if docker_hub:
        values.update(registry_mirror_dockerhub_username="mirror-account", registry_mirror_dockerhub_token=TOKEN)
    result = run(values)
    assert not result.get("failed")
    exposure = [warning for warning in result.get("warnings", []) if "private ones included" in warning]
    assert [warning.split(" ", 1)[0] for warning in exposure] == warned
    assert all("every job on the host" in warning and "README: Security" in warning for warning in exposure)
    assert "octo-reader" not in json.dumps(result) and "mirror-account" not in json.dumps(result)


GOOD_HOST = ("user\tregistry:x:998:998:distribution registry mirror:/var/lib/registry:/usr/sbin/nologin\n"
             "group\tregistry:x:998:\nunit\tinstalled\tactive\n"
             "path\t/var/lib/registry\t/var/lib/registry\t-\tdirectory\t998\t998\tregistry\tregistry\t/var/lib/registry\tdirectory\n"
             "path\t/etc/registry\t/etc/registry\t-\tdirectory\t0\t998\troot\tregistry\t/etc/registry\tdirectory\n")


def test_the_host_checks_check_each_upstreams_storage() -> None:
    upstreams = [{**GHCR, "username": UP_USER, "password": UP_PASSWORD}]
    fine = run({"registry_mirror_upstreams": upstreams}, {"host_report": GOOD_HOST + (
        "path\t/var/lib/registry-ghcr\t/var/lib/registry-ghcr\t-\tdirectory\t998\t998\tregistry\tregistry\t"
        "/var/lib/registry-ghcr\tdirectory\n")})
    assert not fine.get("failed") and fine["upstreams"] == [GHCR_NORMALISED]
    taken = run({"registry_mirror_upstreams": upstreams}, {"host_report": GOOD_HOST + (
        "path\t/var/lib/registry-ghcr\t/var/lib/registry-ghcr\t-\tdirectory\t1000\t1000\tjane\tjane\t"
        "/var/lib/registry-ghcr\tdirectory\n")})
    assert taken["failed"] and "upstreams" not in taken and taken["errors"] == [
        "registry_mirror_upstreams[ghcr].storage_dir is /var/lib/registry-ghcr, which exists and belongs to jane:jane (uid 1000, "
        "gid 1000), not to the service user registry: the role only takes over directories it created for the mirror; choose a "
        "directory that does not exist yet"]
    assert taken["msg"].startswith("1 problem with the registry_mirror host; nothing was changed:")
    assert UP_PASSWORD not in json.dumps(taken) + json.dumps(fine)


# ---- the fleet: registry_mirror_tiers, registry_mirror_tier_users -------------------------------------------------

TIER_LOGIN = "edge-login-K4WQ"
TIER_PASSWORD = "tier_PASSW0RD_S3CRET"
TU_PASSWORD = "tu pa55 'S3CRET' word"
TIER_MODE = {"registry_mirror_mode": "tier", "registry_mirror_bind_address": "10.20.0.5"}
TIERS_NORMALISED = [
    {"url": "https://tier1.site.test:5000", "index": 1, "credentials": True, "credentials_env": "REGISTRY_MIRROR_TIER1"},
    {"url": "https://tier2.site.test", "index": 2, "credentials": False, "credentials_env": "REGISTRY_MIRROR_TIER2"}]


def test_tiers_are_returned_without_secrets() -> None:
    result = run({"registry_mirror_tiers": [{"url": "https://Tier1.site.test:5000/", "username": TIER_LOGIN,
                                             "password": Vaulted(TIER_PASSWORD)}, {"url": "https://tier2.site.test"}]})
    assert not result.get("failed") and result["errors"] == []
    assert result["tiers"] == TIERS_NORMALISED and result["tier_users"] == [] and result["upstreams"] == []
    dumped = json.dumps(result)
    assert TIER_LOGIN not in dumped and TIER_PASSWORD not in dumped


def test_tier_users_are_returned_as_names() -> None:
    result = run({**TIER_MODE, "registry_mirror_tier_users": [{"username": "edge", "password": Vaulted(TU_PASSWORD)},
                                                              {"username": "ci", "password": TU_PASSWORD + "2"}]})
    assert not result.get("failed") and result["errors"] == []
    assert result["tier_users"] == ["edge", "ci"] and result["tiers"] == []
    assert TU_PASSWORD not in json.dumps(result)


def test_without_fleet_variables_the_lists_are_empty() -> None:
    result = run({})
    assert result["tiers"] == [] and result["tier_users"] == []


def test_the_host_checks_return_the_tiers_too() -> None:
    tiers = [{"url": "https://tier1.site.test:5000", "username": TIER_LOGIN, "password": TIER_PASSWORD},
             {"url": "https://tier2.site.test"}]
    result = run({"registry_mirror_tiers": tiers}, {"host_report": GOOD_HOST})
    assert not result.get("failed") and result["tiers"] == TIERS_NORMALISED and result["tier_users"] == []
    assert TIER_PASSWORD not in json.dumps(result) and TIER_LOGIN not in json.dumps(result)


@pytest.mark.parametrize("password", [TIER_PASSWORD + "\n", TIER_PASSWORD + " x", '"' + TIER_PASSWORD, Vaulted(TIER_PASSWORD + "$"),
                                      {"value": TIER_PASSWORD}, "", Vaulted(None), "{{ broken }}"])
def test_a_tier_secret_never_reaches_the_result(password: t.Any) -> None:
    result = run({"registry_mirror_tiers": [{"url": "https://tier1.site.test", "username": TIER_LOGIN, "password": password}]})
    assert result["failed"] and "tiers" not in result
    dumped = json.dumps(result)
    assert TIER_LOGIN not in dumped and TIER_PASSWORD not in dumped and "broken" not in dumped and "Decryption" not in dumped
    assert any(error.startswith("registry_mirror_tiers[0].") for error in result["errors"]), result["errors"]


@pytest.mark.parametrize("password", [TU_PASSWORD + "\n", TU_PASSWORD * 4, Vaulted(TU_PASSWORD + "\t"), {"value": TU_PASSWORD},
                                      Vaulted(None), "{{ broken }}"])
def test_a_tier_users_password_never_reaches_the_result(password: t.Any) -> None:
    result = run({**TIER_MODE, "registry_mirror_tier_users": [{"username": "edge", "password": password}]})
    assert result["failed"] and "tier_users" not in result
    dumped = json.dumps(result)
    assert TU_PASSWORD not in dumped and "broken" not in dumped and "Decryption" not in dumped
    assert any(error.startswith("registry_mirror_tier_users[edge].password ") for error in result["errors"]), result["errors"]


@pytest.mark.parametrize("variables,errors", [
    ({"registry_mirror_tiers": [{"url": "https://tier1.site.test", "username": TIER_LOGIN, "password": "{{ broken }}"}]},
     ["registry_mirror_tiers[0].password could not be evaluated"]),
    ({"registry_mirror_tiers": [{"url": "https://tier1.site.test"}, {"url": "{{ broken }}"}]},
     ["registry_mirror_tiers[1].url could not be evaluated: 'broken' is undefined: {{ broken }}"]),
    ({"registry_mirror_tiers": [{"url": "https://tier1.site.test", "username": "{{ broken }}", "password": TIER_PASSWORD}]},
     ["registry_mirror_tiers[0].username could not be evaluated"]),
    ({"registry_mirror_tiers": "{{ broken }}"}, ["registry_mirror_tiers could not be evaluated"]),
    ({**TIER_MODE, "registry_mirror_tier_users": [{"username": "edge", "password": "{{ broken }}"}]},
     ["registry_mirror_tier_users[edge].password could not be evaluated"]),
    ({**TIER_MODE, "registry_mirror_tier_users": [{"username": "{{ broken }}", "password": TU_PASSWORD}]},
     ["registry_mirror_tier_users[0].username could not be evaluated: 'broken' is undefined: {{ broken }}"]),
    ({**TIER_MODE, "registry_mirror_tier_users": [{"username": "edge", "passwd": "{{ broken }}"}]},
     ["registry_mirror_tier_users[edge].passwd could not be evaluated"]),
    ({**TIER_MODE, "registry_mirror_tier_users": "{{ broken }}"}, ["registry_mirror_tier_users could not be evaluated"]),
], ids=["tier password", "tier url", "tier user name", "the whole tier list", "tier user's password", "tier user's name",
        "unknown key", "the whole user list"])
def test_a_fleet_value_that_cannot_be_templated_is_named(variables: dict[str, t.Any], errors: list[str]) -> None:
    result = run(variables)
    assert result["failed"] and result["errors"] == errors
    assert TIER_LOGIN not in json.dumps(result) and TIER_PASSWORD not in json.dumps(result) and TU_PASSWORD not in json.dumps(result)


def test_fleet_problems_fail_with_every_one_named() -> None:
    result = run({"registry_mirror_mode": "tier", "registry_mirror_tiers": [{"url": "https://tier1.site.test"}],
                  "registry_mirror_tier_users": [{"username": "edge:1", "password": TU_PASSWORD}]})
    assert result["failed"] and "tiers" not in result and "tier_users" not in result
    assert result["errors"] == [
        "registry_mirror_tier_users[0].username is 'edge:1', which contains ':': the htpasswd file separates the user name "
        "from the password hash with it",
        "registry_mirror_tiers is set, but registry_mirror_mode is tier: a tier pulls from Docker Hub itself (chained tiers are "
        "not supported); it applies to edges only",
        "registry_mirror_bind_address is 192.168.128.1, actuated's VM bridge, but registry_mirror_mode is tier: a tier listens "
        "on the site's private network: name its address there"]
    assert TU_PASSWORD not in json.dumps(result)


# ---- registry_mirror_prefetch -------------------------------------------------------------------------------------


def test_prefetch_is_returned_normalised() -> None:
    result = run({"registry_mirror_prefetch": [{"repository": "alpine"},
                                               {"repository": "bitnami/redis", "tags": ["7.2"], "platforms": ["linux/arm64/v8"]}],
                  "registry_mirror_prefetch_interval": "30"})
    assert not result.get("failed") and result["errors"] == []
    assert result["prefetch"] == [{"repository": "library/alpine", "tags": ["latest"], "platforms": []},
                                  {"repository": "bitnami/redis", "tags": ["7.2"], "platforms": ["linux/arm64/v8"]}]
    assert run({})["prefetch"] == []
    assert "prefetch" not in run({}, {"host_report": HOST_REPORT})  # the input checks' model, as primary


def test_prefetch_problems_fail_without_the_list() -> None:
    result = run({"registry_mirror_prefetch": [{"repository": "alpine:3.20"}, {"repository": "redis", "tags": ["a b"]}],
                  "registry_mirror_tiers": [{"url": "https://tier1.site.test"}]})
    assert result["failed"] and "prefetch" not in result
    assert result["errors"] == [
        "registry_mirror_prefetch[0].repository is 'alpine:3.20', with a tag: give the repository alone ('alpine') and the tag "
        "in tags (['3.20'])",
        "registry_mirror_prefetch[1].tags[0] is 'a b', which is not a tag (a letter, digit or _, then up to 127 letters, "
        "digits, _, . or -)",
        "registry_mirror_prefetch is set while registry_mirror_tiers names the site's tiers: set registry_mirror_prefetch on "
        "the site's tiers (registry_mirror_mode: tier): an edge pulls through them"]


@pytest.mark.parametrize("prefetch,errors", [
    ([{"repository": "alpine", "tags": "{{ broken }}"}],
     ["registry_mirror_prefetch[0].tags could not be evaluated: 'broken' is undefined: {{ broken }}"]),
    ([{"repository": "alpine"}, {"repository": "{{ broken }}"}],
     ["registry_mirror_prefetch[1].repository could not be evaluated: 'broken' is undefined: {{ broken }}"]),
    ("{{ broken }}", ["registry_mirror_prefetch could not be evaluated: 'broken' is undefined: {{ broken }}"]),
], ids=["tags", "repository", "the whole list"])
def test_a_prefetch_value_that_cannot_be_templated_is_named(prefetch: t.Any, errors: list[str]) -> None:
    """Nothing in registry_mirror_prefetch is secret: the templating error is shown."""
    result = run({"registry_mirror_prefetch": prefetch})
    assert result["failed"] and result["errors"] == errors


# ---- Through the role, without a target ---------------------------------------------------------------------------

# host name: (variables, variable the error names, problem); the variables are YAML (a vaulted value is added below).
E2E: dict[str, tuple[dict[str, t.Any], str, str]] = {
    "port-not-int": ({"registry_mirror_port": "http"}, "registry_mirror_port", "unable to convert to int"),
    "bool-not-bool": ({"registry_mirror_troubleshooting": "perhaps"}, "registry_mirror_troubleshooting", "bool"),
    "log-level": ({"registry_mirror_log_level": "verbose"}, "registry_mirror_log_level", "one of"),
    "storage-root": ({"registry_mirror_storage_dir": "/"}, "registry_mirror_storage_dir", "the root directory"),
    "storage-etc": ({"registry_mirror_storage_dir": "/etc"}, "registry_mirror_storage_dir", "a system directory"),
    "storage-var-lib": ({"registry_mirror_storage_dir": "/var/lib"}, "registry_mirror_storage_dir", "a system directory"),
    "storage-home": ({"registry_mirror_storage_dir": "/home"}, "registry_mirror_storage_dir", "a system directory"),
    "storage-relative": ({"registry_mirror_storage_dir": "var/lib/registry"}, "registry_mirror_storage_dir", "a relative path"),
    "storage-newline": ({"registry_mirror_storage_dir": "/var/lib/registry\nExecStartPre=/bin/sh"}, "registry_mirror_storage_dir",
                        "contains a newline"),
    "config-etc": ({"registry_mirror_config_dir": "/etc"}, "registry_mirror_config_dir", "a system directory"),
    "user-root": ({"registry_mirror_user": "root"}, "registry_mirror_user", "is root"),
    "group-root": ({"registry_mirror_group": "root"}, "registry_mirror_group", "is root"),
    "release-ftp": ({"registry_mirror_release_base_url": "ftp://releases.example.com/d"}, "registry_mirror_release_base_url",
                    "the scheme ftp://"),
    "upstream-port": ({"registry_mirror_upstream_url": "https://hub.example.com:99999"}, "registry_mirror_upstream_url",
                      "between 1 and 65535"),
    "upstream-http": ({"registry_mirror_upstream_url": "http://hub.example.com"}, "registry_mirror_upstream_url",
                      "registry_mirror_upstream_allow_http"),
    "misspelt": ({"registry_mirror_bind_adress": "192.168.128.1"}, "registry_mirror_bind_adress",
                 "is not a variable of this role; did you mean registry_mirror_bind_address?"),
    "user-no-token": ({"registry_mirror_dockerhub_username": "someone"}, "registry_mirror_dockerhub_token",
                      "is empty while registry_mirror_dockerhub_username is set"),
    "token-newline": ({"registry_mirror_dockerhub_username": "someone", "registry_mirror_dockerhub_token": TOKEN + "\nX=1"},
                      "registry_mirror_dockerhub_token", "contains a newline"),
    "token-vaulted": ({"registry_mirror_dockerhub_username": "someone"}, "registry_mirror_dockerhub_token", "contains whitespace"),
    "version-v": ({"registry_mirror_version": "v2.8.2"}, "registry_mirror_version", "leading v"),
    "checksum": ({"registry_mirror_checksums": {"amd64": "xyz"}}, "registry_mirror_checksums", "not a SHA-256 digest"),
    "ttl": ({"registry_mirror_proxy_ttl": "7 days"}, "registry_mirror_proxy_ttl", "not a Go duration"),
    "bind-any": ({"registry_mirror_bind_address": "0.0.0.0"}, "registry_mirror_bind_address", "would expose the mirror"),
    "bind-public": ({"registry_mirror_bind_address": "203.0.113.7"}, "registry_mirror_bind_address", "a documentation address"),
    "edge-off-bridge": ({"registry_mirror_bind_address": "10.88.1.21"}, "registry_mirror_bind_address",
                        "set registry_mirror_bind_any_private_address: true"),
    "metrics-off-same-port": ({"registry_mirror_metrics_port": 5000}, "registry_mirror_metrics_port",
                              "while registry_mirror_metrics_enabled is false too"),
    "metrics-same-port": ({"registry_mirror_metrics_enabled": True, "registry_mirror_metrics_port": 5000},
                          "registry_mirror_metrics_port", "a port of its own"),
    "storage-is-config": ({"registry_mirror_storage_dir": "/srv/mirror", "registry_mirror_config_dir": "/srv/mirror"},
                          "registry_mirror_storage_dir", "are both /srv/mirror"),
    "start-timeout": ({"registry_mirror_start_timeout": 0}, "registry_mirror_start_timeout", "between 1 and 3600"),
    # registry_mirror_upstreams: the role's argument_specs accept these (strings for numbers and booleans, a vaulted
    # password), then validate_inputs names the entry and the key ...
    "upstream-name": ({"registry_mirror_upstreams": [{"name": "GHCR", "url": "https://ghcr.io", "port": "5010", "allow_http": "no",
                                                      "ttl": "24h", "registry": "ghcr.io", "cache_budget_percent": "5"}]},
                      "registry_mirror_upstreams[0].name", "not a valid upstream name"),
    "upstreams-port": ({"registry_mirror_upstreams": [{"name": "ghcr", "url": "https://ghcr.io", "port": 5000}]},
                       "registry_mirror_upstreams[ghcr].port", "is 5000, the same as registry_mirror_port"),
    "upstream-storage": ({"registry_mirror_upstreams": [{"name": "ghcr", "url": "https://ghcr.io", "port": 5010,
                                                         "storage_dir": "/var/lib/registry/ghcr"}]},
                         "registry_mirror_upstreams[ghcr].storage_dir", "nested in registry_mirror_storage_dir"),
    "upstream-vaulted": ({}, "registry_mirror_upstreams[ghcr].password", "contains whitespace (its value is not shown)"),
    # ... and refuse these themselves (ansible's words), without a value either.
    "upstream-no-port": ({"registry_mirror_upstreams": [{"name": "ghcr", "url": "https://ghcr.io"}]}, "registry_mirror_upstreams",
                         "missing required arguments: port"),
    "upstream-misspelt": ({"registry_mirror_upstreams": [{"name": "ghcr", "url": "https://ghcr.io", "port": 5010,
                                                          "username": "someone", "passwrod": "misspelt-S3CRET-key"}]},
                          "registry_mirror_upstreams.passwrod", "Supported parameters include"),
    # The fleet: argument_specs accept these, then validate_inputs names the variable, the entry and the key ...
    "tier-on-bridge": ({"registry_mirror_mode": "tier"}, "registry_mirror_bind_address",
                       "a tier listens on the site's private network: name its address there"),
    "tier-users-on-edge": ({"registry_mirror_tier_users": [{"username": "edge", "password": "tu-S3CRET-e2e"}]},
                           "registry_mirror_tier_users", "is set, but registry_mirror_mode is edge: it applies to tiers only"),
    "tiers-with-token": ({"registry_mirror_tiers": [{"url": "https://tier1.site.test"}], "registry_mirror_dockerhub_username": "someone",
                          "registry_mirror_dockerhub_token": TOKEN}, "registry_mirror_dockerhub_username",
                         "the Docker Hub token belongs on the tiers only"),
    "tier-vaulted": ({}, "registry_mirror_tiers[0].password", "contains whitespace (its value is not shown)"),
    "tier-user-vaulted": ({"registry_mirror_mode": "tier", "registry_mirror_bind_address": "10.20.0.5"},
                          "registry_mirror_tier_users[edge].password", "is longer than 72 bytes (its value is not shown)"),
    "open-tier-shared": ({"registry_mirror_mode": "tier", "registry_mirror_bind_address": "100.64.0.5"},
                         "registry_mirror_bind_address", "and registry_mirror_tier_users is empty"),
    # ... and these ansible refuses itself.
    "mode-unknown": ({"registry_mirror_mode": "hub"}, "registry_mirror_mode", "one of"),
    "tier-no-url": ({"registry_mirror_tiers": [{"username": TIER_LOGIN, "password": "tier-S3CRET-nourl"}]}, "registry_mirror_tiers",
                    "missing required arguments: url"),
    "tier-user-no-password": ({"registry_mirror_mode": "tier", "registry_mirror_bind_address": "10.20.0.5",
                               "registry_mirror_tier_users": [{"username": "edge"}]}, "registry_mirror_tier_users",
                              "missing required arguments: password"),
    "tier-misspelt": ({"registry_mirror_tiers": [{"url": "https://tier1.site.test", "username": TIER_LOGIN,
                                                  "passwrod": "misspelt-S3CRET-tier"}]},
                      "registry_mirror_tiers.passwrod", "Supported parameters include"),
    # registry_mirror_prefetch: argument_specs accept these, then validate_inputs names the entry and the key ...
    "prefetch-tag": ({"registry_mirror_prefetch": [{"repository": "alpine:3.20"}]}, "registry_mirror_prefetch[0].repository",
                     "with a tag: give the repository alone"),
    "prefetch-edge-tiers": ({"registry_mirror_prefetch": [{"repository": "alpine", "tags": ["3.20", 3]}],
                             "registry_mirror_tiers": [{"url": "https://tier1.site.test"}]}, "registry_mirror_prefetch",
                            "set registry_mirror_prefetch on the site's tiers"),
    "prefetch-interval": ({"registry_mirror_prefetch_interval": 2}, "registry_mirror_prefetch_interval",
                          "between 5 and 1440 minutes"),
    # ... and this ansible refuses itself.
    "prefetch-no-repository": ({"registry_mirror_prefetch": [{"tags": ["latest"]}]}, "registry_mirror_prefetch",
                               "missing required arguments: repository"),
}
VAULTED_TOKEN = TOKEN + " with a space"
VAULTED_UP_PASSWORD = UP_PASSWORD + " with a space"
VAULTED_TIER_PASSWORD = TIER_PASSWORD + " with a space"
VAULTED_TU_PASSWORD = "tu-S3CRET-" * 8  # 80 bytes
SECRETS = (TOKEN, VAULTED_TOKEN, "someone", UP_USER, UP_PASSWORD, "misspelt-S3CRET-key", "tu-S3CRET-e2e", TIER_LOGIN, TIER_PASSWORD,
           "tier-S3CRET-nourl", "misspelt-S3CRET-tier", "tu-S3CRET-")
# The hosts whose role run must get past argument_specs and fail at validate_inputs (ok=1).
PAST_ARGUMENT_SPECS = ("upstream-name", "upstreams-port", "upstream-storage", "upstream-vaulted", "tier-on-bridge",
                       "tier-users-on-edge", "tiers-with-token", "tier-vaulted", "tier-user-vaulted", "bind-public",
                       "edge-off-bridge", "metrics-off-same-port", "open-tier-shared", "prefetch-tag", "prefetch-edge-tiers",
                       "prefetch-interval")
# A valid list with a vaulted password, through the action alone: what the role's tasks get.
UPSTREAMS_OK = {"name": "ghcr", "url": "https://GHCR.io/", "port": "5010", "username": UP_USER, "allow_http": "false"}
TIERS_OK = {"url": "https://Tier1.site.test:5000/", "username": TIER_LOGIN}


@pytest.fixture(scope="module")
def playbook_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, t.Any]:
    """One ansible-playbook run (check mode, -vvvv) over every E2E host, plus a play that runs the action alone with
    registry_mirror_unknown_variables=warn. Returns its output, the recap and each host's failure."""
    playbook = BIN / "ansible-playbook"
    if not playbook.exists():
        pytest.skip("ansible-playbook is not next to this Python")
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "ansible_collections" / "actuated").mkdir(parents=True)
    (tmp / "ansible_collections" / "actuated" / "registry").symlink_to(REPO)
    (tmp / "vault-password").write_text("test-only\n")
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(tmp), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp"), "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_CONFIG": str(tmp / "none.cfg")}

    def vault(plaintext: str) -> str:
        return subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(tmp / "vault-password"),
                               plaintext], check=True, capture_output=True, text=True, env=env).stdout

    vaulted = vault(VAULTED_TOKEN)
    hosts = {name: dict(variables) for name, (variables, _v, _p) in E2E.items()}
    inventory = yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "registry_mirror_local_cache_dir": str(tmp / "cache")},
        "children": {"role": {"hosts": hosts},
                     "direct": {"hosts": {"warn": {"registry_mirror_bind_adress": "192.168.128.1",
                                                   "registry_mirror_unknown_variables": "warn"},
                                          "upstreams-ok": {}, "tiers-ok": {}}}}}})
    # The vaulted token, as a user writes it in host_vars (next to the inventory).
    (tmp / "host_vars").mkdir()
    (tmp / "host_vars" / "token-vaulted.yml").write_text("registry_mirror_dockerhub_token: " + vaulted)
    # Vaulted passwords, inside an entry of a list.
    for host, variable, entry, password in (
            ("upstream-vaulted", "registry_mirror_upstreams", {"name": "ghcr", "url": "https://ghcr.io", "port": 5010,
                                                               "username": UP_USER}, VAULTED_UP_PASSWORD),
            ("upstreams-ok", "registry_mirror_upstreams", UPSTREAMS_OK, UP_PASSWORD),
            ("tier-vaulted", "registry_mirror_tiers", {"url": "https://tier1.site.test", "username": TIER_LOGIN}, VAULTED_TIER_PASSWORD),
            ("tier-user-vaulted", "registry_mirror_tier_users", {"username": "edge"}, VAULTED_TU_PASSWORD),
            ("tiers-ok", "registry_mirror_tiers", TIERS_OK, TIER_PASSWORD)):
        entry_yaml = "".join(f"    {key}: {json.dumps(value)}\n" for key, value in entry.items())
        (tmp / "host_vars" / f"{host}.yml").write_text(f"{variable}:\n  - password: " + vault(password) + entry_yaml)
    assert "$ANSIBLE_VAULT" in vaulted
    (tmp / "inventory.yml").write_text(inventory)
    (tmp / "playbook.yml").write_text(yaml.safe_dump([
        {"name": "The action alone", "hosts": "direct", "gather_facts": False,
         "tasks": [{"name": "Check the variables", "actuated.registry.validate_inputs": {"argument_spec": SPEC},
                    "tags": ["registry_mirror_preflight"]}]},
        {"name": "The role", "hosts": "role", "gather_facts": False, "roles": ["actuated.registry.registry_mirror"]},
    ], sort_keys=False))
    proc = subprocess.run([str(playbook), "-i", str(tmp / "inventory.yml"), str(tmp / "playbook.yml"), "--check", "-vvvv",
                           "--tags", "registry_mirror_preflight", "--forks", "40",
                           "--vault-password-file", str(tmp / "vault-password")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    recap = {match[0]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[1])}
             for match in re.findall(r"^(\S+)\s+: (ok=.*)$", proc.stdout, re.M)}
    failures = {}
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^fatal: \[([^\]]+)\]: FAILED! => ", proc.stdout, re.M):
        failures[match[1]] = decoder.raw_decode(proc.stdout, match.end())[0]
    return {"rc": proc.returncode, "output": output, "recap": recap, "failures": failures}


def test_the_run_fails_and_warns(playbook_run: dict[str, t.Any]) -> None:
    assert playbook_run["rc"] != 0, playbook_run["output"][-3000:]
    assert playbook_run["recap"]["warn"] == {**playbook_run["recap"]["warn"], "ok": 1, "failed": 0}
    assert ("registry_mirror_bind_adress is not a variable of this role; did you mean registry_mirror_bind_address?"
            in " ".join(playbook_run["output"].split()))


@pytest.mark.parametrize("host", sorted(E2E))
def test_each_wrong_value_stops_the_role_before_the_host_naming_it(host: str, playbook_run: dict[str, t.Any]) -> None:
    _variables, variable, problem = E2E[host]
    recap = playbook_run["recap"][host]
    # Failed at the argument_specs check (ok=0) or at the role's first task (ok=1): nothing ran on the host.
    assert recap["failed"] == 1 and recap["changed"] == 0 and recap["ok"] <= 1, recap
    failure = playbook_run["failures"][host]
    errors = failure.get("errors") or failure.get("argument_errors") or [failure.get("msg", "")]
    assert any(variable in error and problem in error for error in errors), errors


@pytest.mark.parametrize("host", PAST_ARGUMENT_SPECS)
def test_valid_upstream_shapes_pass_argument_specs(host: str, playbook_run: dict[str, t.Any]) -> None:
    assert playbook_run["recap"][host]["ok"] == 1, playbook_run["recap"][host]
    assert "errors" in playbook_run["failures"][host]


def test_upstreams_through_ansible(playbook_run: dict[str, t.Any]) -> None:
    """A real run (vaulted password, numbers and booleans as strings): the action returns the list normalised."""
    assert playbook_run["recap"]["upstreams-ok"] == {**playbook_run["recap"]["upstreams-ok"], "ok": 1, "failed": 0}
    match = re.search(r"^ok: \[upstreams-ok\] => ", playbook_run["output"], re.M)
    assert match, playbook_run["output"][-3000:]
    result = json.JSONDecoder().raw_decode(playbook_run["output"], match.end())[0]
    assert result["upstreams"] == [GHCR_NORMALISED]


def test_tiers_through_ansible(playbook_run: dict[str, t.Any]) -> None:
    """A real run with a vaulted tier password: the action returns the tiers without secrets."""
    assert playbook_run["recap"]["tiers-ok"] == {**playbook_run["recap"]["tiers-ok"], "ok": 1, "failed": 0}
    match = re.search(r"^ok: \[tiers-ok\] => ", playbook_run["output"], re.M)
    assert match, playbook_run["output"][-3000:]
    result = json.JSONDecoder().raw_decode(playbook_run["output"], match.end())[0]
    assert result["tiers"] == [{"url": "https://tier1.site.test:5000", "index": 1, "credentials": True,
                                "credentials_env": "REGISTRY_MIRROR_TIER1"}]
    assert result["tier_users"] == [] and result["upstreams"] == []


def test_no_secret_at_any_verbosity(playbook_run: dict[str, t.Any]) -> None:
    for secret in SECRETS:
        assert secret not in playbook_run["output"]
