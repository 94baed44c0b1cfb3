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
        if report is None:
            found = rules.validate(values, spec, defined=list(task_vars), home=os.path.expanduser("~"))
            errors += found.errors
            if found.warnings:
                result["warnings"] = found.warnings
            what = "input"
        else:
            host = rules.parse_host_report(to_native(report))
            result.update(user_exists=host.user is not None, group_exists=host.group is not None,
                          unit_installed=host.unit_installed, mirror_active=host.active == "active")
            values, problems = rules.effective(values, spec)
            errors += problems
            if not errors:
                errors = rules.check_host(values, host)
            what = "host"
        result["errors"] = errors
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
                values[name] = self._templar.template(task_vars[name])
                if name in rules.SECRET_VARIABLES and values[name] is not None:
                    values[name] = to_native(values[name])
            except Exception as exc:  # pylint: disable=broad-exception-caught
                detail = "" if name in rules.SECRET_VARIABLES else f": {to_native(exc).splitlines()[0]}"
                errors.append(f"{name} could not be evaluated{detail}")
        return values, errors
