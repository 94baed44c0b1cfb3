# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Things the repository states twice, or promises everywhere, checked to agree: the Molecule matrix of the Makefile
and of CI, one Molecule platform for every scenario and for `python3 -m world target up`, the licence header of every
development file, no references to files outside the repository or to issue numbers."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from world import targets

REPO = Path(__file__).resolve().parents[2]
HEADER = ["# Copyright (c) actuated.registry contributors", "# SPDX-License-Identifier: MIT"]


def makefile_variable(name: str) -> list[str]:
    """The words of a simple variable assignment (NAME ?= / := / = words) in the Makefile."""
    found = re.search(rf"^{name}\s*[?:]?=(.*)$", (REPO / "Makefile").read_text(encoding="utf-8"), re.MULTILINE)
    assert found, f"no {name} in the Makefile"
    return found.group(1).split()


def scenario_config(name: str) -> dict:
    """A scenario's molecule.yml."""
    return yaml.safe_load((REPO / "molecule" / name / "molecule.yml").read_text(encoding="utf-8")) or {}


def repo_files(*paths: str) -> list[Path]:
    """Files of the working tree under PATHS that git tracks or would track (new ones included, ignored ones not)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *paths], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout.split()
    return [REPO / name for name in sorted(set(listed)) if (REPO / name).is_file()]


def test_ci_runs_the_makefile_matrix():
    """.github/workflows/ci.yml's molecule jobs are MATRIX of the Makefile, in the same order."""
    workflow = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text(encoding="utf-8"))
    ci = [f"{run['scenario']}:{run['arch']}" for run in workflow["jobs"]["molecule"]["strategy"]["matrix"]["include"]]
    assert ci == makefile_variable("MATRIX")


def test_ci_tests_every_ansible_core_of_the_makefile():
    """The `cores` jobs are CORES of the Makefile but the first (the `static` job's), each on its Python."""
    workflow = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text(encoding="utf-8"))
    ci = [f"{run['core']}:python{run['python']}" for run in workflow["jobs"]["cores"]["strategy"]["matrix"]["include"]]
    assert ci == makefile_variable("CORES")[1:]


def test_requires_ansible_is_the_oldest_tested_core():
    """meta/runtime.yml claims no ansible-core older than the first of CORES; each has its requirements file."""
    cores = [entry.split(":")[0] for entry in makefile_variable("CORES")]
    runtime = yaml.safe_load((REPO / "meta/runtime.yml").read_text(encoding="utf-8"))
    assert runtime["requires_ansible"] == f">={cores[0]}.0"
    pinned = re.search(r"^ansible-core==(\d+\.\d+)\.", (REPO / "requirements-dev.txt").read_text(encoding="utf-8"), re.M)
    assert pinned and pinned.group(1) == cores[0]
    for core in cores[1:]:
        text = (REPO / f"tests/requirements/core-{core}.txt").read_text(encoding="utf-8")
        assert re.search(rf"^ansible-core=={re.escape(core)}\.\d+$", text, re.M), core


def test_every_scenario_of_the_matrix_exists():
    """MATRIX and BRIDGE_129 name scenarios that exist; every scenario is in MATRIX."""
    scenarios = {path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml")}
    matrix = {run.split(":")[0] for run in makefile_variable("MATRIX")}
    assert matrix == scenarios
    assert set(makefile_variable("BRIDGE_129")) <= scenarios


# Scenarios of several hosts (Molecule replaces the shared platform list with a scenario's own): each of their hosts
# is the shared platform with its own name, networks, groups and architecture, nothing else.
MULTI_HOST_SCENARIOS = ("fleet",)


@pytest.mark.parametrize("scenario", sorted(path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml")))
def test_scenarios_inherit_the_one_platform(scenario):
    """No scenario repeats the platform (Molecule would replace the shared one with it) or picks a bridge itself
    (MOLECULE_BRIDGE comes from the environment, so that the platform, Ansible and the tests agree); a scenario of
    several hosts makes each of them from the shared platform."""
    config = scenario_config(scenario)
    if scenario in MULTI_HOST_SCENARIOS:
        shared = yaml.safe_load((REPO / ".config" / "molecule" / "config.yml").read_text(encoding="utf-8"))["platforms"][0]
        for platform in config["platforms"]:
            arch = platform["platform"].split("/")[-1]
            expected = {key: (value.replace("${MOLECULE_ARCH:-amd64}", arch) if isinstance(value, str) else value)
                        for key, value in shared.items() if key not in targets.REPLACED_KEYS}
            assert {key: value for key, value in platform.items() if key not in targets.REPLACED_KEYS} == expected
    else:
        assert "platforms" not in config
    for section in ("provisioner", "verifier"):
        assert "MOLECULE_BRIDGE" not in ((config.get(section) or {}).get("env") or {})


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_target_up_makes_targets_from_the_molecule_platform(arch):
    """world/targets.py understands every key of the shared platform and makes what systemd targets need here:
    the world's image for ARCH, /sbin/init, read-only cgroups, no pulls, nothing privileged."""
    options, image, command = targets.run_options(targets.molecule_platform(arch))
    assert image == f"actuated-world/target:{arch}"
    assert command == ["/sbin/init"]
    assert options[options.index("--platform") + 1] == f"linux/{arch}"
    assert options[options.index("--pull") + 1] == "never"
    assert "/sys/fs/cgroup:/sys/fs/cgroup:ro" in options
    assert {"/run", "/run/lock"} <= {options[i + 1] for i, flag in enumerate(options) if flag == "--tmpfs"}
    assert not any(flag in options for flag in ("--privileged", "--cap-add", "--cgroupns"))


def test_target_up_refuses_a_platform_key_it_does_not_know():
    """A key added to the Molecule platform fails `target up` until targets.py knows what it means."""
    platform = {**targets.molecule_platform("amd64"), "capabilities": ["SYS_ADMIN"]}
    with pytest.raises(targets.WorldError, match="capabilities"):
        targets.run_options(platform)


def test_molecule_interpolation():
    """The subset of Molecule's interpolation the platform uses."""
    env = {"SET": "x", "EMPTY": ""}
    assert targets.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET} $$", env) == "x d  d  $"


def test_licence_headers():
    """Every Python file of the development tree, and the shell scripts of world/ and bench/, start (after a shebang)
    with the project's MIT header."""
    wrong = []
    for path in repo_files("world", "bench", "demo", "molecule", "tests"):
        if path.suffix != ".py" and not (path.suffix == ".sh" and path.relative_to(REPO).parts[0] in ("world", "bench")):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        start = 1 if lines and lines[0].startswith("#!") else 0
        if lines[start:start + 2] != HEADER:
            wrong.append(str(path.relative_to(REPO)))
    assert not wrong, f"these files need the header {HEADER}"


# What no development file may mention: files beside the repository (one exception: the world's default path to the
# distribution source, overridable with WORLD_DISTRIBUTION_SOURCE), and this project's issue numbers (upstream
# projects' issues, which have 4+ digits, may be cited).
OUTSIDE = re.compile(r"\.\./shared/(?:FACTS|upstream)|FACTS\.md|shared/upstream")
ISSUE = re.compile(r"\b[Ii]ssue\s+#?\d{1,3}\b|(?<![\w&/\"'#-])#\d{1,3}\b")
ALLOWED_OUTSIDE = {"world/gobuild.py": "distribution-v"}


def test_no_references_outside_the_repository_or_to_issues():
    """No `../shared/...`, FACTS.md or issue numbers in world/, bench/, demo/, molecule/, tests/, Makefile, CI."""
    found = []
    for path in repo_files("world", "bench", "demo", "molecule", "tests", "Makefile", ".github", ".ci", ".config"):
        name = str(path.relative_to(REPO))
        if path.suffix in (".png", ".json") or name == "tests/unit/test_repo_consistency.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            outside = OUTSIDE.search(line) and ALLOWED_OUTSIDE.get(name, "\0") not in line
            if outside or ISSUE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_readme_table_of_registries_is_the_client_scripts_catalogue():
    """The README's table of commonly mirrored registries (URL and port) is what clients/registry-mirror-client.py
    knows: a user who follows one gets what the other expects."""
    spec = importlib.util.spec_from_file_location("registry_mirror_client", REPO / "clients" / "registry-mirror-client.py")
    assert spec is not None and spec.loader is not None
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([a-z0-9.-]+) \| `(https://[^`]+)` \| (\d+) \|", readme, re.MULTILINE)
    assert {name: (int(port), url) for name, url, port in rows} == dict(client.CATALOGUE)


def test_every_module_the_host_programs_import_is_installed_beside_them():
    """Each module of roles/registry_mirror/files/ that a program or module there imports (they import each other
    from their own directory) is in _registry_mirror_modules, which tasks/configure.yml installs into libexec with its
    name, not executable, while the programs lose their extension and are executable; tasks/service.yml restarts the
    registry when one changed, and files/README.md lists each. The list names nothing else."""
    files = REPO / "roles" / "registry_mirror" / "files"
    local = {path.stem for path in files.glob("*.py")}
    imported = set()
    for path in files.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names} & local
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {node.module.split(".")[0]} & local
    role_vars = yaml.safe_load((REPO / "roles/registry_mirror/vars/main.yml").read_text(encoding="utf-8"))
    modules = role_vars["_registry_mirror_modules"]
    assert sorted(modules) == sorted(f"{name}.py" for name in imported)
    tasks = yaml.safe_load((REPO / "roles/registry_mirror/tasks/configure.yml").read_text(encoding="utf-8"))
    install = next(task for task in tasks if task.get("name") == "Install the helper scripts")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    env.filters["regex_replace"] = lambda value, pattern, replacement: re.sub(pattern, replacement, value)
    rendered = env.from_string(install["vars"]["__registry_mirror_files"]).render(
        _registry_mirror_libexec="/libexec", _registry_mirror_modules=modules, lookup=lambda *_args, **_kw: "")
    installed = {entry["path"]: entry["mode"] for entry in json.loads(rendered)}
    for module in modules:
        assert installed.get(f"/libexec/{module}") == "0644", module
    for program in ("registry-supervisor", "registry-prefetch"):
        assert installed.get(f"/libexec/{program}") == "0755", program
    service = (REPO / "roles/registry_mirror/tasks/service.yml").read_text(encoding="utf-8")
    assert "_registry_mirror_modules | map('regex_replace', '^', _registry_mirror_libexec ~ '/')" in service
    table = (files / "README.md").read_text(encoding="utf-8")
    assert not [module for module in modules if f"| `{module}` | `{module}` |" not in table]
