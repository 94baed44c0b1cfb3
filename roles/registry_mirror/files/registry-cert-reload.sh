#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
#
# Usage: registry-cert-reload [--front] TICKS CERT KEY DIR USER GROUP
# Started by registry-cert.path when actuated rewrites its certificate CERT or key KEY. Waits until both files have
# been quiet for TICKS quarter-seconds (a renewal writes the certificate, then the key), then restarts the registry
# once, and only into a valid pair (registry-tls-sync, next to this script, checks and copies it: CERT to USER are
# its arguments). With --front (registry_mirror_front), the caching front serves the certificate: it is reloaded
# (graceful: no connection is dropped) instead of restarting the registry, which no longer serves TLS.
set -eu
unit=registry.service action=restart
if [ "${1:-}" = --front ]; then unit=registry-front.service action=reload; shift; fi
if [ "$#" -ne 6 ]; then
    echo "usage: registry-cert-reload [--front] TICKS CERT KEY DIR USER GROUP" >&2
    exit 64
fi
settle=$1
shift
stamp() { cat "$1" "$2" 2>/dev/null | sha256sum; }
last=$(stamp "$1" "$2"); quiet=0; waited=0
while [ "$quiet" -lt "$settle" ] && [ "$waited" -lt 240 ]; do
    sleep 0.25; waited=$((waited + 1)); now=$(stamp "$1" "$2")
    if [ "$now" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; last=$now; fi
done
rc=0
"$(dirname "$0")/registry-tls-sync" --renew "$@" || rc=$?
case $rc in
    0) echo "registry-cert-reload: certificate or key renewed; ${action}ing ${unit%.service}" >&2
       exec systemctl "$action" "$unit" ;;
    2) echo "registry-cert-reload: certificate and key unchanged; nothing to do" >&2 ;;
    *) echo "registry-cert-reload: not ${action}ing ${unit%.service}; the mirror keeps serving the previous certificate" >&2 ;;
esac
