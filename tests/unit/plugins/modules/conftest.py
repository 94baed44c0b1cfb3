# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""Running a module of the collection in-process: its arguments as Ansible passes them, its exit or failure caught."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args


class AnsibleExitJson(Exception):
    """Raised instead of exiting when the module succeeds."""


class AnsibleFailJson(Exception):
    """Raised instead of exiting when the module fails."""


class Result(dict):
    """The module's result, plus whether it failed and what it warned about."""

    warnings: list[str]

    @property
    def failed(self) -> bool:
        return bool(self.get("failed"))


ModuleRunner = t.Callable[..., Result]


@pytest.fixture
def module_runner(monkeypatch: pytest.MonkeyPatch) -> ModuleRunner:
    """module_runner(main, check_mode=False, diff=False, **args): the result of the module whose entry point is main."""
    warnings: list[str] = []

    def exit_json(self: AnsibleModule, **kwargs: t.Any) -> t.NoReturn:
        raise AnsibleExitJson(kwargs)

    def fail_json(self: AnsibleModule, msg: str, **kwargs: t.Any) -> t.NoReturn:
        kwargs.update(failed=True, msg=msg)
        raise AnsibleFailJson(kwargs)

    def warn(self: AnsibleModule, warning: str, *args: t.Any, **kwargs: t.Any) -> None:
        warnings.append(warning)

    monkeypatch.setattr(AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(AnsibleModule, "warn", warn)

    def _run(main: t.Callable[[], None], check_mode: bool = False, diff: bool = False, **args: t.Any) -> Result:
        del warnings[:]
        module_args = {key: (str(value) if isinstance(value, Path) else value) for key, value in args.items()}
        module_args.update(_ansible_check_mode=check_mode, _ansible_diff=diff)
        with patch_module_args(module_args):
            with pytest.raises((AnsibleExitJson, AnsibleFailJson)) as excinfo:
                main()
        result = Result(excinfo.value.args[0])
        result.warnings = list(warnings)
        return result

    return _run
