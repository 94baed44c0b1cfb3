#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
#
# Usage: registry-tls-sync [--renew | --keep-mark] CERT KEY DIR USER GROUP
# Copies actuated's certificate CERT and key KEY into DIR for the registry's USER and GROUP, and only when they form a
# valid pair: a key that does not belong to the certificate, or an expired certificate, keeps the previous copy (the
# mirror keeps serving) and says why. Run as root by registry.service (ExecStartPre=+) and by registry-cert-reload.
#   registry-tls-sync ...          sync; exit 0 when the runtime copy is usable afterwards. Touches DIR/.started, which
#                                  the role compares with its files to restart a registry that predates them.
#   registry-tls-sync --keep-mark ...  the same without touching DIR/.started (the caching front, registry-front:
#                                  the marker is the registry's start, not the front's)
#   registry-tls-sync --renew ...  sync; exit 0 if a valid new pair was copied (the registry must restart to serve it),
#                                  2 if nothing changed, 1 if the pair is invalid (the previous copy stays)
#
# DIR (/run/registry) belongs to the registry's user, and this runs as root: nothing here follows a name in DIR. Every
# file it puts there is made, owned and moded in a root-owned directory beside DIR (same file system), then renamed
# into DIR with mv -T: rename(2) replaces whatever the user left under that name (a symbolic link included, to a file
# or to a directory) and writes nothing through it. What it reads there, it reads only when it is a regular file (not a
# link, not a FIFO that would hold the start up).
set -eu
renew=false mark=true
case ${1:-} in
    --renew) renew=true; shift ;;
    --keep-mark) mark=false; shift ;;
esac
if [ "$#" -ne 5 ]; then
    echo "usage: registry-tls-sync [--renew | --keep-mark] CERT KEY DIR USER GROUP" >&2
    exit 64
fi
cert=$1 key=$2 dir=$3 user=$4 group=$5

say() { echo "registry-tls-sync: $*" >&2; }
# A regular file of DIR, not a symbolic link: what this reads there.
regular() { [ -f "$1" ] && [ ! -L "$1" ]; }

staging=
cleanup() { [ -z "$staging" ] || rm -rf "$staging"; }
trap cleanup EXIT
# A root-owned directory beside DIR for the files this run puts into DIR.
stage() {
    [ -n "$staging" ] || staging=$(mktemp -d "$(dirname "$dir")/.registry-tls-sync.XXXXXX")
}
# Mark the start, for the role (it compares the mtime with its files'): a new empty file renamed over DIR/.started.
started() {
    [ "$mark" = true ] || return 0
    stage
    : > "$staging/.started"
    mv -fT "$staging/.started" "$dir/.started"
}

invalid() {
    if [ "$renew" = true ]; then say "$*"; exit 1; fi
    if regular "$dir/server.crt" && regular "$dir/server.key" && [ -s "$dir/server.crt" ] && [ -s "$dir/server.key" ]; then
        say "$*; keeping the certificate the mirror already serves"
        exit 0
    fi
    say "$*; no previous certificate to fall back to"
    exit 1
}

[ -r "$cert" ] || invalid "cannot read certificate $cert"
[ -r "$key" ] || invalid "cannot read key $key"
# The runtime copy only ever holds a pair validated when it was copied: when nothing changed, start at once.
if regular "$dir/server.crt" && regular "$dir/server.key" && cmp -s "$cert" "$dir/server.crt" && cmp -s "$key" "$dir/server.key"; then
    [ "$renew" = true ] && exit 2
    started
    exit 0
fi
# One openssl process per file: each start costs most of a second under emulation, and this runs at every renewal.
expired=0
x509=$(openssl x509 -in "$cert" -noout -fingerprint -sha256 -pubkey -checkend 0 2>/dev/null) || expired=1
cert_pub=$(printf '%s\n' "$x509" | sed -n '/-BEGIN PUBLIC KEY-/,/-END PUBLIC KEY-/p')
fingerprint=$(printf '%s\n' "$x509" | sed -n 's/^[Ss][Hh][Aa]256 Fingerprint=//p')
[ -n "$cert_pub" ] || invalid "$cert is not a PEM certificate"
key_pub=$(openssl pkey -in "$key" -pubout 2>/dev/null) || invalid "$key is not a PEM private key"
[ "$cert_pub" = "$key_pub" ] || invalid "key $key does not belong to certificate $cert"
[ "$expired" = 0 ] || invalid "certificate $cert has expired"

mkdir -p "$dir"
stage
install -o "$user" -g "$group" -m 0440 "$cert" "$staging/server.crt"
install -o "$user" -g "$group" -m 0400 "$key" "$staging/server.key"
mv -fT "$staging/server.crt" "$dir/server.crt"
mv -fT "$staging/server.key" "$dir/server.key"
[ "$renew" = true ] || started
say "installed certificate $fingerprint for the registry"
