# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Each rule of the collection lives once, and the code that needs it imports it. Where a host program (standard library
only, installed alone on hosts) must keep its own copy, this compares the two; where the role once rebuilt what
validate_inputs returns, this fails when it does again."""

from __future__ import annotations

import ast
import re
import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.actuated.registry.plugins.module_utils import _inputs_basic as basic
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_entries as entries
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_fleet as fleet
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_htpasswd as htpasswd
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_upstreams as upstreams
from ansible_collections.actuated.registry.plugins.module_utils import _mirror_inputs as rules
from ansible_collections.actuated.registry.plugins.modules import registry_htpasswd

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "registry_mirror"
SUPERVISOR = ROLE / "files" / "registry-supervisor.py"
SPEC = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))["argument_specs"]["main"]["options"]


def validate(**overrides: t.Any) -> rules.Report:
    """validate() with the role's defaults and OVERRIDES, as the action plugin calls it."""
    values = {name: option.get("default") for name, option in SPEC.items()}
    values.update(overrides)
    return rules.validate(values, SPEC, defined=list(values), home="/home/operator")


def supervisor_constant(name: str) -> t.Any:
    """The value of the supervisor's module-level constant NAME (a literal, or the pattern of re.compile(literal)),
    read from its source or its modules' (registry_*.py beside it, which it imports), where it is defined once: the
    program runs alone on hosts and cannot import the collection."""
    found = []
    for path in [SUPERVISOR, *sorted(SUPERVISOR.parent.glob("registry_*.py"))]:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id == name for target in node.targets):
                value = node.value
                if isinstance(value, ast.Call) and getattr(value.func, "attr", "") == "compile":
                    value = value.args[0]
                found.append(ast.literal_eval(value))
    assert len(found) == 1, f"{SUPERVISOR.name} and its modules define {name} {len(found)} times"
    return found[0]


# ---- copies a host program keeps ------------------------------------------------------------------------------------


def test_the_realm_threshold_is_the_supervisors() -> None:
    """The preflight's warning about distribution before 3.1 and the supervisor's realm check name one release."""
    assert supervisor_constant("RESTRICTED_REALMS") == basic.RESTRICTED_REALMS


def test_the_docker_hub_mirror_has_the_supervisors_primary_name() -> None:
    assert supervisor_constant("PRIMARY_NAME") == entries.PRIMARY_NAME == validate().primary["name"]


@pytest.mark.parametrize("prefix", [upstreams.credentials_env("ghcr"), upstreams.credentials_env("k8s-io"),
                                    upstreams.credentials_env("a" + "-b" * 15)]
                         + [fleet.tier_credentials_env(index) for index in range(1, fleet.MAX_TIERS + 1)])
def test_every_credentials_prefix_is_one_the_supervisor_reads(prefix: str) -> None:
    assert re.fullmatch(supervisor_constant("CREDENTIALS_PREFIX"), prefix)
    for half in ("USERNAME", "PASSWORD"):
        assert re.fullmatch(supervisor_constant("MIRROR_CREDENTIAL_ENV"), f"{prefix}_{half}")


def test_an_edges_tiers_fit_the_supervisors_fallbacks() -> None:
    """An edge's supervisor pulls through the first tier, then the others and Docker Hub (its fallbacks)."""
    assert (fleet.MAX_TIERS - 1) + 1 <= supervisor_constant("MAX_FALLBACKS")


# ---- one implementation ------------------------------------------------------------------------------------------


def test_the_htpasswd_module_uses_the_preflights_rules() -> None:
    assert registry_htpasswd.username_problem is htpasswd.username_problem
    assert registry_htpasswd.password_problems is htpasswd.password_problems
    assert not hasattr(registry_htpasswd, "BCRYPT_MAX_BYTES")


@pytest.mark.parametrize("name", ["edge", "ci@site-2.example", "#ci", "a b", "a:b", "a\tb", "e" * 64, "e" * 65,
                                  "al\u200bice", "\u00e9dge", "", "x#"])
@pytest.mark.parametrize("password", ["fine-pass", "", "a\nb", "a\x00b", "x" * 72, "x" * 73, "\u00e9" * 37])
def test_the_preflight_refuses_what_the_module_refuses(name: str, password: str) -> None:
    """A tier user the preflight accepts is one registry_htpasswd writes, and the other way round."""
    preflight = validate(registry_mirror_mode="tier", registry_mirror_bind_address="10.20.0.5",
                         registry_mirror_tier_users=[{"username": name, "password": password}]).errors
    module = registry_htpasswd.user_problems([{"username": name, "password": password}])
    assert bool(preflight) == bool(module), (preflight, module)


def test_the_default_bind_address_is_an_actuated_bridge() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert defaults["registry_mirror_bind_address"] == SPEC["registry_mirror_bind_address"]["default"] == fleet.ACTUATED_BRIDGES[0]
    assert all(address in SPEC["registry_mirror_bind_address"]["description"][0] for address in fleet.ACTUATED_BRIDGES)


# ---- the role reads the model --------------------------------------------------------------------------------------


def model_facts() -> dict[str, str]:
    """The facts preflight.yml sets from validate_inputs' result: {fact: expression}."""
    tasks = yaml.safe_load((ROLE / "tasks" / "preflight.yml").read_text(encoding="utf-8"))
    facts = {}
    for task in tasks:
        for name, expression in (task.get("ansible.builtin.set_fact") or {}).items():
            if "__registry_mirror_inputs" in str(expression):
                facts[name] = expression
    return facts


def test_the_role_keeps_the_model_validate_inputs_returns() -> None:
    facts = model_facts()
    for fact in ("_registry_mirror_primary", "_registry_mirror_upstreams", "_registry_mirror_tiers",
                 "_registry_mirror_tier_names", "_registry_mirror_bridge_addresses", "_registry_mirror_upstreams_dir",
                 "_registry_mirror_release_base_url"):
        assert fact in facts, fact
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text(encoding="utf-8"))
    rebuilt = {name: role_vars[name] for name in facts if role_vars.get(name) not in (None, [])}
    assert rebuilt == {}, "vars/main.yml builds what validate_inputs returns"


@pytest.mark.parametrize("path", sorted([*ROLE.glob("templates/*.j2"), *ROLE.glob("tasks/*.yml"), ROLE / "vars" / "main.yml"]),
                         ids=lambda path: path.name)
def test_the_role_does_not_shape_the_models_values_again(path: Path) -> None:
    """No trailing-slash strip, tier-name split or secret read by a list position that the model does not give."""
    text = path.read_text(encoding="utf-8")
    assert "regex_replace('/+$'" not in text and not re.search(r"rstrip(?!=false)", text)  # a file lookup's rstrip=false keeps
    assert "split(',')" not in text
    assert "index_var" not in text
    for found in re.finditer(r"registry_mirror_(upstreams|tiers)\[([^\]]*)\]", text):
        assert found.group(2).endswith(".index - 1"), found.group(0)
