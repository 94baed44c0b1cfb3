#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
#
# Usage: registry-check-config CONFIG BINARY CERT KEY
# distribution has no config check command and silently ignores unknown keys. This runs BINARY with CONFIG the way
# registry.service would, but on a loopback port, with throw-away storage, without the upstream (the proxy contacts it
# at start) and with actuated's certificate CERT and key KEY, and passes once it is listening. It fails on what would
# break start-up: YAML errors, invalid values, an unknown storage driver or log level, a TLS pair that does not load.
set -u
if [ "$#" -ne 4 ]; then
    echo "usage: registry-check-config CONFIG BINARY CERT KEY" >&2
    exit 64
fi
config=$1
binary=$2
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
env -i PATH=/usr/bin:/bin OTEL_TRACES_EXPORTER=none \
    REGISTRY_LOG_LEVEL=info \
    REGISTRY_HTTP_NET=tcp \
    REGISTRY_HTTP_ADDR=127.0.0.1:0 \
    REGISTRY_HTTP_DEBUG_ADDR= \
    REGISTRY_HTTP_TLS_CERTIFICATE="$3" \
    REGISTRY_HTTP_TLS_KEY="$4" \
    REGISTRY_PROXY_REMOTEURL= \
    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$tmp/storage" \
    "$binary" serve "$config" >"$tmp/log" 2>&1 &
pid=$!
i=0
while [ "$i" -lt 300 ]; do
    if grep -q 'listening on' "$tmp/log"; then exit 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "registry would not start with $config:" >&2
        grep -v '^$' "$tmp/log" | tail -n 5 >&2
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
echo "registry did not start listening within 30 s with $config:" >&2
tail -n 5 "$tmp/log" >&2
exit 1
