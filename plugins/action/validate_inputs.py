# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""Action plugin of actuated.registry.validate_inputs (documentation: plugins/modules/validate_inputs.py)."""

from __future__ import annotations

import os
import typing as t

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.actuated.registry.plugins.module_utils import _mirror_inputs as rules


class ActionModule(ActionBase):
    """Check the registry_mirror role's variables on the controller, then (with host_report) what the host has."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _VALID_ARGS = frozenset(("argument_spec", "host_report"))

    def run(self, tmp: t.Any = None, task_vars: dict | None = None) -> dict:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        del tmp
        result["changed"] = False
        spec = self._task.args.get("argument_spec") or self._role_options()
        values, errors = self._values(spec, task_vars)
        report = self._task.args.get("host_report")
        found = rules.Report([], [], [])
        if report is None:
            found = rules.validate(values, spec, defined=list(task_vars), home=os.path.expanduser("~"))
            if found.warnings:
                result["warnings"] = found.warnings
            result["controller_dirs"] = dict(found.controller_dirs)
            what = "input"
        else:
            host = rules.parse_host_report(to_native(report))
            result.update(user_exists=host.user is not None, group_exists=host.group is not None,
                          unit_installed=host.unit_installed, mirror_active=host.active == "active")
            if not errors:
                found = rules.validate_host(values, spec, host)
            what = "host"
        errors += found.errors
        result["errors"] = errors
        if not errors:
            # The model the role renders from: registry_mirror_upstreams with every default filled in and without its
            # secrets, registry_mirror_tiers without its secrets, the user names of registry_mirror_tier_users and
            # (the input checks) the Docker Hub mirror in the upstreams' shape, the tier's names, the images the Docker
            # Hub mirror keeps warm (registry_mirror_prefetch normalised) and the role's paths.
            result.update(upstreams=list(found.upstreams), tiers=list(found.tiers), tier_users=list(found.tier_users))
            if what == "input":
                result.update(primary=dict(found.primary), tier_names=list(found.tier_names),
                              prefetch=list(found.prefetch), **found.paths)
        if errors:
            result["failed"] = True
            result["msg"] = (f"{len(errors)} problem{'s' if len(errors) > 1 else ''} with the registry_mirror "
                             f"{'variables' if what == 'input' else 'host'}; nothing was changed:\n- " + "\n- ".join(errors))
        else:
            result["msg"] = f"the {what} checks passed"
        return result

    def _role_options(self) -> dict:
        """The options of the calling role's main entry point (meta/argument_specs.yml)."""
        role = getattr(self._task, "_role", None)
        if role is None:
            raise AnsibleError("validate_inputs needs argument_spec when it does not run in a role")
        path = os.path.join(role.get_role_path(), "meta", "argument_specs.yml")
        data = self._loader.load_from_file(path) or {}
        return dict(data["argument_specs"]["main"]["options"])

    def _values(self, spec: t.Mapping[str, t.Any], task_vars: t.Mapping[str, t.Any]) -> tuple[dict, list]:
        """The role's variables, templated one by one: one that cannot be (an undefined reference, a vault without
        its password) is a problem named after it, without its value or, for a secret, the templating error."""
        values, errors = {}, []
        for name in spec:
            if name not in task_vars:
                continue
            try:
                value = self._templar.template(task_vars[name])
                if name in rules.SECRET_VARIABLES and value is not None:
                    value = to_native(value)
                elif name in rules.ENTRY_LISTS:
                    value = _plain(value)
                values[name] = value
            except Exception as exc:  # pylint: disable=broad-exception-caught
                located = self._entry_errors(name, task_vars[name]) if name in rules.ENTRY_LISTS else []
                detail = "" if name in rules.VARIABLES_WITH_SECRETS else f": {_first_line(exc)}"
                errors.extend(located or [f"{name} could not be evaluated{detail}"])
        return values, errors

    def _entry_errors(self, variable: str, raw: t.Any) -> list:
        """Which values of VARIABLE, a list of dictionaries (registry_mirror_upstreams, registry_mirror_tiers,
        registry_mirror_tier_users), cannot be templated, each named after its entry and key; the templating error only
        for a key that is not a secret. Empty when that cannot be told entry by entry."""
        kind = rules.ENTRY_LISTS[variable]
        errors = []
        try:
            items = list(raw) if isinstance(raw, (list, tuple)) else []
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                label = f"{variable}[{index}]"
                if kind.label_key:
                    try:
                        label = rules.entry_label(variable, index,
                                                  {kind.label_key: _plain(self._templar.template(item.get(kind.label_key)))})
                    except Exception:  # pylint: disable=broad-exception-caught
                        pass  # reported below, as its key
                for key in item:
                    try:
                        _plain(self._templar.template(item[key]))
                    except Exception as exc:  # pylint: disable=broad-exception-caught
                        secret = key in kind.secrets or key not in kind.options
                        errors.append(f"{label}.{key} could not be evaluated{'' if secret else ': ' + _first_line(exc)}")
        except Exception:  # pylint: disable=broad-exception-caught
            return []
        return errors


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message."""
    return to_native(exc).splitlines()[0] if to_native(exc) else type(exc).__name__


def _plain(value: t.Any) -> t.Any:
    """VALUE with only plain Python data: a vaulted string decrypted into a str (inside the caller's try: one without
    its password raises there)."""
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return to_native(value)
