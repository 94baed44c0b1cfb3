#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
# trust-ca.sh CRT: add CRT (already in /usr/local/share/ca-certificates/) to the system trust store, as
# update-ca-certificates would for one new certificate, without re-linking the ~140 bundled ones, which takes 45 s
# under arm64 emulation. Used on targets by molecule/shared/prepare.yml and `python3 -m world target up`. Idempotent.
set -eu
crt=$1
name=$(basename "$crt" .crt)
case $crt in /usr/local/share/ca-certificates/*.crt) ;; *) echo "trust-ca.sh: $crt is not in /usr/local/share/ca-certificates" >&2; exit 2 ;; esac
hash=$(openssl x509 -hash -noout -in "$crt")
ln -sfn "$crt" "/etc/ssl/certs/$name.pem"
ln -sfn "$name.pem" "/etc/ssl/certs/$hash.0"
bundle=/etc/ssl/certs/ca-certificates.crt
if ! grep -qF "$(sed -n 2p "$crt")" "$bundle"; then
    cat "$crt" >> "$bundle"
    echo "trust-ca.sh: added $name to $bundle"
fi
