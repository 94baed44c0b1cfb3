# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Build the collection tarball, check that dev-only files stay out of it, install it into an empty collections
path and check that ansible-doc lists its module and renders the role's argument_specs."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
FORBIDDEN = ("tests/", "molecule/", "world/", "bench/", "demo/", ".github/", ".ci/", ".config/", "Makefile",
             "requirements-dev.txt", ".venv/", ".cache/")


def main() -> int:
    """Build, inspect, install, document."""
    with tempfile.TemporaryDirectory(prefix="build-") as tmp:
        subprocess.run([BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", tmp, str(ROOT)], check=True)
        tarball = next(Path(tmp).glob("actuated-registry-*.tar.gz"))
        with tarfile.open(tarball) as archive:
            names = [member.name for member in archive.getmembers() if member.isfile()]
        tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split())
        untracked = sorted(n for n in names if n not in tracked and n not in ("MANIFEST.json", "FILES.json"))
        if untracked:
            print(f"{tarball.name} contains files git does not track: {untracked[:10]}", file=sys.stderr)
            return 1
        leaked = sorted(n for n in names if n.startswith(FORBIDDEN))
        if leaked:
            print(f"{tarball.name} contains dev-only files: {leaked[:10]}", file=sys.stderr)
            return 1
        print(f"{tarball.name}: {len(names)} files, {tarball.stat().st_size} bytes, no dev-only files")
        install = Path(tmp) / "collections"
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(install)}
        subprocess.run([BIN / "ansible-galaxy", "collection", "install", "--offline", "--force", "-p", str(install), str(tarball)],
                       check=True, env=env)
        listed = subprocess.run([BIN / "ansible-doc", "-l", "actuated.registry"], env=env, check=True, capture_output=True, text=True).stdout
        role = subprocess.run([BIN / "ansible-doc", "-t", "role", "actuated.registry.registry_mirror"], env=env, check=True,
                              capture_output=True, text=True).stdout
        module = subprocess.run([BIN / "ansible-doc", "actuated.registry.cert_watch"], env=env, check=True, capture_output=True, text=True).stdout
        checks = {"module listed": "actuated.registry.cert_watch" in listed,
                  "role options rendered": "registry_mirror_dockerhub_token" in role,
                  "module documented": "min_valid_days" in module,
                  "alert rules and dashboard shipped": {"extras/prometheus/registry-mirror.rules.yml",
                                                        "extras/grafana/registry-mirror.json"} <= set(names),
                  "playbooks shipped (actuated.registry.site, .status)": {"playbooks/site.yml",
                                                                          "playbooks/status.yml"} <= set(names)}
        for what, ok in checks.items():
            print(f"{'ok' if ok else 'FAILED'}: {what}")
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
