# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""A host's fingerprint for the bad-input and rollback tests: what a failed run must leave as it was."""
from __future__ import annotations

# The files the role manages (the binary through its link), the directories it touches with their parents, and the
# test's own directories under /srv.
MANAGED = ("/usr/local/bin/registry", "/etc/registry/config.yml", "/etc/registry/proxy.env", "/etc/registry/supervisor.json",
           "/etc/registry/cert-state.json", "/etc/systemd/system/registry.service", "/etc/systemd/system/registry-cert.path",
           "/etc/systemd/system/registry-cert-reload.service", "/etc/ansible/facts.d/registry_mirror.fact")
DIRECTORIES = ("/", "/etc", "/etc/registry", "/etc/ansible", "/etc/ansible/facts.d", "/etc/systemd", "/etc/systemd/system",
               "/var", "/var/lib", "/var/lib/registry", "/usr", "/usr/local", "/usr/local/bin", "/usr/local/lib",
               "/usr/local/lib/registry-mirror", "/srv", "/home", "/root", "/run/registry")
SCRIPT = r"""
for f in {managed}; do
    if [ -L "$f" ]; then echo "link $f -> $(readlink "$f")"; fi
    if [ -e "$f" ]; then echo "file $f $(stat -Lc '%U:%G %a' "$f") $(sha256sum <"$f" | cut -d' ' -f1)"; else echo "absent $f"; fi
done
stat -c 'dir %n %U:%G %a' {directories} 2>&1
echo "# install root and helpers"
find /usr/local/lib/registry-mirror /srv -maxdepth 2 -printf '%p %y %U:%G %m\n' | sort
find /usr/local/lib/registry-mirror/libexec -type f -exec sha256sum {{}} + | sort
echo "# accounts"
getent passwd | sort
getent group | sort
echo "# cache (without scheduler-state.json: distribution 3.x's expiry timers, and registry-supervisor-usage.json:"
echo "# the supervisor's last-use times; both rewritten while the mirror runs)"
find /var/lib/registry ! -name scheduler-state.json ! -name 'registry-supervisor-usage.json*' -printf '%P %y %U:%G %m\n' | sort
find /var/lib/registry -type f ! -name scheduler-state.json ! -name 'registry-supervisor-usage.json*' -exec sha256sum {{}} + | sort
""".format(managed=" ".join(MANAGED), directories=" ".join(DIRECTORIES))


def fingerprint(host) -> str:
    """The managed files' checksums, the owner and mode of every directory the role touches and of its parents, the
    install root's and /srv's entries, every account, and the cache's entries and checksums."""
    return host.check_output(SCRIPT)


def invocation(host) -> str:
    """The registry unit's current invocation id: changes exactly when it (re)starts."""
    return host.check_output("systemctl show -p InvocationID --value registry")
