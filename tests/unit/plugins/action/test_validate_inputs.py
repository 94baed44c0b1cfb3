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
    """Templates nothing, except that a value "{{ broken }}" cannot be templated."""

    @staticmethod
    def template(value: t.Any) -> t.Any:
        if value == "{{ broken }}":
            raise ValueError("'broken' is undefined: {{ broken }}")
        return value


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
    "metrics-same-port": ({"registry_mirror_metrics_enabled": True, "registry_mirror_metrics_port": 5000},
                          "registry_mirror_metrics_port", "a port of its own"),
    "storage-is-config": ({"registry_mirror_storage_dir": "/srv/mirror", "registry_mirror_config_dir": "/srv/mirror"},
                          "registry_mirror_storage_dir", "are both /srv/mirror"),
    "start-timeout": ({"registry_mirror_start_timeout": 0}, "registry_mirror_start_timeout", "between 1 and 3600"),
}
VAULTED_TOKEN = TOKEN + " with a space"
SECRETS = (TOKEN, VAULTED_TOKEN, "someone")


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
    vaulted = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--vault-password-file", str(tmp / "vault-password"),
                              VAULTED_TOKEN], check=True, capture_output=True, text=True, env=env).stdout
    hosts = {name: dict(variables) for name, (variables, _v, _p) in E2E.items()}
    inventory = yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "registry_mirror_local_cache_dir": str(tmp / "cache")},
        "children": {"role": {"hosts": hosts},
                     "direct": {"hosts": {"warn": {"registry_mirror_bind_adress": "192.168.128.1",
                                                   "registry_mirror_unknown_variables": "warn"}}}}}})
    # The vaulted token, as a user writes it in host_vars (next to the inventory).
    (tmp / "host_vars").mkdir()
    (tmp / "host_vars" / "token-vaulted.yml").write_text("registry_mirror_dockerhub_token: " + vaulted)
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


def test_no_secret_at_any_verbosity(playbook_run: dict[str, t.Any]) -> None:
    for secret in SECRETS:
        assert secret not in playbook_run["output"]
