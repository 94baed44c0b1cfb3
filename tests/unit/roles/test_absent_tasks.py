# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""What the registry_mirror role removes, without a host: tasks/absent.yml's list of paths (rendered with
ansible-core's templating from the role's own variables and validate_inputs' model, for what its read-only command
finds on a host), that command and service.yml's listing of old versions, both run here on a tree under a temporary
directory (they take absolute paths as arguments). The removal on a real host: molecule/variants/tests/test_variants_absent.py."""

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from ansible_collections.actuated.registry.plugins.module_utils import _mirror_inputs as rules

ROLE = Path(__file__).resolve().parents[3] / "roles" / "registry_mirror"
SPEC = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
ABSENT = yaml.safe_load((ROLE / "tasks" / "absent.yml").read_text())[0]
UNITS = ["/etc/systemd/system/registry-prefetch.timer", "/etc/systemd/system/registry-prefetch.service",
         "/etc/systemd/system/registry-cert.path", "/etc/systemd/system/registry-cert-reload.service",
         "/etc/systemd/system/registry.service", "/etc/systemd/system/registry-front.service"]
# Always removed (nothing else is in them): the install root (helpers, every version), the fact, the rollback
# snapshot's directory, the runtime copy of the certificate.
ALWAYS = ["/usr/local/lib/registry-mirror"]
AFTER = ["/etc/ansible/facts.d/registry_mirror.fact", "/var/lib/registry-mirror", "/run/registry", "/var/cache/registry-front",
         "/var/lib/registry-prefetch"]
CONFIG_FILES = ["/etc/registry/config.yml", "/etc/registry/proxy.env", "/etc/registry/cert-state.json",
                "/etc/registry/supervisor.json", "/etc/registry/upstreams", "/etc/registry/tier-tls", "/etc/registry/tier-ca",
                "/etc/registry/htpasswd", "/etc/registry/front.conf",
                "/etc/registry/prefetch.json"]
GHCR = {"name": "ghcr", "url": "https://ghcr.io", "port": 5010}


def trusted(value: t.Any) -> t.Any:
    """VALUE with every string a template, as Ansible trusts the role's own files."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, list):
        return [trusted(item) for item in value]
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    return value


def removal(found: list[str], **overrides: t.Any) -> list[str]:
    """The paths absent.yml removes when its command printed FOUND, with the role's variables and OVERRIDES."""
    raw = {name: option.get("default") for name, option in SPEC.items()}
    raw.update(registry_mirror_state="absent", **overrides)
    report = rules.validate(raw, SPEC, defined=list(raw), home="/root")
    assert report.errors == []
    loader = DataLoader()
    role_vars = {**yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
                 **yaml.safe_load((ROLE / "vars" / "main.yml").read_text()), **ABSENT["vars"]}
    variables = {**trusted(role_vars), **raw, "_registry_mirror_primary": report.primary,
                 "_registry_mirror_upstreams": report.upstreams, "_registry_mirror_upstreams_dir": report.paths["upstreams_dir"],
                 "__registry_mirror_installed": {"stdout_lines": found}}
    return Templar(loader=loader, variables=variables).template(trust_as_template("{{ __registry_mirror_remove }}"))


def test_the_roles_own_files_and_directories_go() -> None:
    found = ["unit=registry.service", "unit=registry-cert.path", "link=/usr/local/lib/registry-mirror/3.1.1-amd64/registry",
             "entry=config.yml", "entry=supervisor.json", "entry=proxy.env", "entry=cert-state.json"]
    assert removal(found) == UNITS + ALWAYS + ["/usr/local/bin/registry", "/etc/registry"] + AFTER


def test_a_configuration_directory_with_a_file_of_someone_else_keeps_it() -> None:
    assert removal(["entry=config.yml", "entry=notes.txt"]) == UNITS + ALWAYS + CONFIG_FILES + AFTER
    assert removal(["entry=.keep"]) == UNITS + ALWAYS + CONFIG_FILES + AFTER


@pytest.mark.parametrize("link", ["/opt/distribution/registry", "/usr/local/lib/registry-mirror-other/registry",
                                  "../lib/registry-mirror/3.1.1-amd64/registry"])
def test_a_binary_link_the_role_did_not_make_stays(link: str) -> None:
    assert "/usr/local/bin/registry" not in removal([f"link={link}"])


def test_nothing_found_removes_nothing_of_anyone_else() -> None:
    """A host without the mirror: the same list (each path absent there, so nothing changes), no cache."""
    assert removal([]) == UNITS + ALWAYS + ["/etc/registry"] + AFTER


def test_a_purge_removes_every_listed_cache() -> None:
    removed = removal([], registry_mirror_purge_cache=True, registry_mirror_storage_dir="/srv/hub",
                      registry_mirror_upstreams=[GHCR, {"name": "quay", "url": "https://quay.io", "port": 5020,
                                                        "storage_dir": "/srv/quay"}])
    assert removed[-3:] == ["/srv/hub", "/srv/hub-ghcr", "/srv/quay"]
    kept = removal([], registry_mirror_storage_dir="/srv/hub", registry_mirror_upstreams=[GHCR])
    assert not [path for path in kept if path.startswith("/srv/")]


def test_other_configuration_and_storage_directories() -> None:
    removed = removal(["entry=config.yml", "entry=other"], registry_mirror_config_dir="/srv/etc-registry")
    assert [path for path in removed if "registry/" in path or path.startswith("/srv/")] == [
        path.replace("/etc/registry", "/srv/etc-registry") for path in CONFIG_FILES]


def find_command() -> list[str]:
    """absent.yml's read-only command, without its arguments."""
    task = ABSENT["block"][0]
    assert task["check_mode"] is False and task["changed_when"] is False
    return ["/bin/sh", "-c", task["vars"]["__registry_mirror_find"], "registry-mirror-absent"]


def test_the_command_reports_what_the_list_reads(tmp_path: Path) -> None:
    config = tmp_path / "etc-registry"
    (config / "upstreams" / "ghcr").mkdir(parents=True)
    (config / "config.yml").write_text("")
    (config / ".hidden").write_text("")
    (config / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "registry").symlink_to("/usr/local/lib/registry-mirror/3.1.1-amd64/registry")
    out = subprocess.run([*find_command(), str(config), str(tmp_path / "registry"), "no-such-unit.service"],
                         check=True, capture_output=True, text=True).stdout
    assert sorted(out.splitlines()) == ["entry=.hidden", "entry=config.yml", "entry=dangling", "entry=upstreams",
                                        "link=/usr/local/lib/registry-mirror/3.1.1-amd64/registry"]


def test_the_command_on_a_host_without_the_mirror(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a binary that is not a link, a configuration "directory" that is a file
    (tmp_path / "linked-config").symlink_to(tmp_path)
    for config in (tmp_path / "missing", tmp_path / "file", tmp_path / "linked-config"):
        out = subprocess.run([*find_command(), str(config), str(tmp_path / "file"), "no-such-unit.service"],
                             check=True, capture_output=True, text=True).stdout
        assert out == ""


def versions_command() -> list[str]:
    """service.yml's listing of the versions other than the live one, without its arguments."""
    tasks = yaml.safe_load((ROLE / "tasks" / "service.yml").read_text())
    task = next(task for task in tasks if task["name"] == "Find the installed versions other than the live one")
    assert task["check_mode"] is False and task["changed_when"] is False
    return task["ansible.builtin.command"]["argv"][:4]


def test_old_versions_are_the_others(tmp_path: Path) -> None:
    root = tmp_path / "registry-mirror"
    for name in ("libexec", "2.8.2-amd64", "3.0.0-rc.1-amd64", "3.1.1-amd64", "3.1.2-amd64", "notes", "3.1.1-arm64"):
        (root / name).mkdir(parents=True)
    (root / "3.1.1-amd64" / "registry").write_text("")
    (root / "4.0.0-amd64").symlink_to(root / "2.8.2-amd64")
    (root / "5.0.0-amd64").write_text("")
    link = tmp_path / "registry"
    link.symlink_to(root / "3.1.1-amd64" / "registry")

    def others(current: str, live: str) -> list[str]:
        out = subprocess.run([*versions_command(), str(root), str(root / current), live], check=True, capture_output=True,
                             text=True).stdout
        return sorted(Path(line).name for line in out.splitlines())

    # After an upgrade from 3.1.1 to 3.1.2 the link points to 3.1.2: everything else goes (libexec, links and files stay).
    link.unlink()
    link.symlink_to(root / "3.1.2-amd64" / "registry")
    assert others("3.1.2-amd64", str(link)) == ["2.8.2-amd64", "3.0.0-rc.1-amd64", "3.1.1-amd64", "3.1.1-arm64"]
    # Whatever the link points to stays too; in check mode (no link given) only this run's version stays.
    link.unlink()
    link.symlink_to(root / "3.1.1-amd64" / "registry")
    assert others("3.1.2-amd64", str(link)) == ["2.8.2-amd64", "3.0.0-rc.1-amd64", "3.1.1-arm64"]
    assert others("3.1.2-amd64", "") == ["2.8.2-amd64", "3.0.0-rc.1-amd64", "3.1.1-amd64", "3.1.1-arm64"]
    # No install root yet (check mode on a new host): nothing.
    out = subprocess.run([*versions_command(), str(tmp_path / "none"), str(tmp_path / "none" / "3.1.1-amd64"), ""],
                         check=True, capture_output=True, text=True).stdout
    assert out == ""
