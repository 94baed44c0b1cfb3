# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Render the role's variable table in README.md from meta/argument_specs.yml (the one source of truth).

``readme_vars.py`` rewrites the table between the markers; ``readme_vars.py --check`` fails when it is stale.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "roles" / "registry_mirror" / "meta" / "argument_specs.yml"
README = ROOT / "README.md"
BEGIN, END = "<!-- BEGIN registry_mirror variables (make docs) -->", "<!-- END registry_mirror variables -->"


def render() -> str:
    """The Markdown table of every option."""
    options = yaml.safe_load(SPECS.read_text(encoding="utf-8"))["argument_specs"]["main"]["options"]
    rows = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, spec in options.items():
        default = spec.get("default")
        default = str(default).lower() if isinstance(default, bool) else default
        shown = '`""`' if default == "" else f"`{default}`" if default not in (None, {}) else "`{}`" if default == {} else ""
        kind = spec["type"] + (f" ({', '.join(spec['choices'])})" if "choices" in spec else "")
        text = " ".join(spec["description"]) if isinstance(spec["description"], list) else spec["description"]
        text = re.sub(r"[CI]\(([^)]*)\)", r"`\1`", text)
        rows.append(f"| `{name}` | {kind} | {shown} | {' '.join(text.split())} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    """Rewrite or check README.md."""
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    updated = f"{head}{BEGIN}\n{render()}\n{END}{tail}"
    if argv[:1] == ["--check"]:
        if updated != text:
            print("README.md's variable table is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
