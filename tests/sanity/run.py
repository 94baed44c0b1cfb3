# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Run ``ansible-test sanity`` offline.

ansible-test wants the collection under ``.../ansible_collections/actuated/registry/`` and bootstraps pip in its
per-test virtualenvs with a get-pip script it downloads from a host we cannot reach. We lay out a copy of the
collection (the files git knows) in a temporary tree and put an offline stand-in for get-pip where ansible-test looks
for its cache: it installs the interpreter's bundled pip wheel instead (see README, development section).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The ansible-test of the interpreter running this script: `make sanity` runs it with each tested ansible-core's venv.
ANSIBLE_TEST = os.path.join(sys.prefix, "bin", "ansible-test")

GET_PIP = '''"""Offline stand-in for get-pip.py: installs the pip wheel bundled with this interpreter."""
import glob
import os
import sys
import ensurepip

wheel = glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl"))[0]
sys.path.insert(0, wheel)
from pip._internal.cli.main import main  # noqa: E402

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall", *args]))
'''


def get_pip_version() -> str:
    """The pip version this ansible-test bootstraps its virtualenvs with (it names its get-pip cache file)."""
    import ansible_test  # pylint: disable=import-outside-toplevel

    source = os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")
    with open(source, encoding="utf-8") as handle:
        found = re.search(r"\bpip='([0-9.]+)'", handle.read())
    if not found:
        raise SystemExit(f"cannot find the pip version ansible-test bootstraps in {source}")
    return found.group(1)


def install_get_pip() -> None:
    """Write the offline get-pip stand-in into ansible-test's cache (under HOME: `make sanity` points HOME into the
    test world's cache, so nothing lands in the user's home directory)."""
    cache = os.path.expanduser("~/.ansible/test/cache")
    os.makedirs(cache, exist_ok=True)
    version = get_pip_version()
    with open(os.path.join(cache, f"get_pip_{version.replace('.', '_')}.py"), "w", encoding="utf-8") as handle:
        handle.write(GET_PIP)


def main(argv: list[str]) -> int:
    """Copy the tracked files to a collection tree and run sanity there."""
    install_get_pip()
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="sanity-") as tmp:
        dest = os.path.join(tmp, "ansible_collections", "actuated", "registry")
        for name in files:
            if not os.path.isfile(os.path.join(ROOT, name)):
                continue
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
        cmd = [ANSIBLE_TEST, "sanity", "--venv", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}", *argv]
        print("+", " ".join(cmd), flush=True)
        return subprocess.call(cmd, cwd=dest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
