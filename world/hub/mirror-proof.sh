#!/usr/bin/env bash
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
# Proof that a REAL distribution 2.8.2 pull-through mirror uses the fake hub like Docker Hub:
# with proxy.username/password its pulls count against the account, without them against
# `anonymous`. Runs two throwaway mirror containers and one client container next to the hub
# (same docker network, hub.actuated.test -> the hub's address there), all TLS-verified.
#
#   world/hub/mirror-proof.sh [--container world-hub] [--image IMAGE] [--network NET]
#
# It resets the hub's counters: do not run it while a test that reads them is running.
set -euo pipefail

HUB=world-hub
IMAGE=""
NETWORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --container) HUB=$2; shift 2 ;;
        --image) IMAGE=$2; shift 2 ;;
        --network) NETWORK=$2; shift 2 ;;
        *) echo "usage: $0 [--container NAME] [--image IMAGE] [--network NET]" >&2; exit 2 ;;
    esac
done

inspect() { docker inspect -f "$1" "$HUB"; }
mount_of() { inspect "{{range .Mounts}}{{if eq .Destination \"$1\"}}{{.Source}}{{end}}{{end}}"; }
IMAGE=${IMAGE:-$(inspect '{{.Config.Image}}')}
# The hub's network to join: docker's default bridge when the hub is on it (keeps the actuated networks
# untouched), else its first network. Containers are addressed by IP (no DNS on the default bridge).
# shellcheck disable=SC2016  # Go templates and scripts for containers: nothing to expand here
NETWORKS=$(inspect '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}')
case " $NETWORKS " in
    *" bridge "*) NETWORK=${NETWORK:-bridge} ;;
    *) NETWORK=${NETWORK:-${NETWORKS%% *}} ;;
esac
HUB_IP=$(inspect "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}")
CERTS=$(mount_of /certs)
DEBS=$(mount_of /debs)
USERNAME=$(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^HUB_USERNAME=//p')
PASSWORD=$(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed -n 's/^HUB_TOKEN=//p')
PREFIX=hubproof-$$
echo "hub $HUB at $HUB_IP on $NETWORK, image $IMAGE, account $USERNAME"

cleanup() {
    docker rm -f "$PREFIX-auth" "$PREFIX-anon" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# A distribution 2.8.2 mirror (Debian's docker-registry from /debs), trusting the world CA.
# shellcheck disable=SC2016
MIRROR_SCRIPT='
set -eu
for deb in /debs/docker-registry_*_amd64.deb; do :; done
dpkg-deb -x "$deb" /tmp/pkg
cp /certs/ca.crt /usr/local/share/ca-certificates/world-ca.crt
update-ca-certificates >/dev/null 2>&1
{
    printf "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
    printf "storage:\n  filesystem:\n    rootdirectory: /tmp/cache\nhttp:\n  addr: :5000\n"
    printf "proxy:\n  remoteurl: https://hub.actuated.test\n"
    if [ -n "${PROXY_USERNAME:-}" ]; then
        printf "  username: %s\n  password: %s\n" "$PROXY_USERNAME" "$PROXY_PASSWORD"
    fi
} > /tmp/mirror.yml
exec /tmp/pkg/usr/bin/docker-registry serve /tmp/mirror.yml
'
run_mirror() {  # NAME [ENV...]
    local name=$1
    shift
    docker run -d --name "$name" --network "$NETWORK" --add-host "hub.actuated.test:$HUB_IP" \
        -v "$CERTS:/certs:ro" -v "$DEBS:/debs:ro" "$@" "$IMAGE" sh -c "$MIRROR_SCRIPT" >/dev/null
}
run_mirror "$PREFIX-auth" -e PROXY_USERNAME="$USERNAME" -e PROXY_PASSWORD="$PASSWORD"
run_mirror "$PREFIX-anon"
ip_of() { docker inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$1"; }
AUTH_IP=$(ip_of "$PREFIX-auth")
ANON_IP=$(ip_of "$PREFIX-anon")
echo "mirrors: with credentials $AUTH_IP:5000, anonymous $ANON_IP:5000 (distribution 2.8.2, proxy to https://hub.actuated.test)"

# The client: skopeo through each mirror, both architectures, twice; the hub's counters after each round.
# shellcheck disable=SC2016
CLIENT_SCRIPT='
set -eu
hub() { curl -sf --cacert /certs/ca.crt "$@"; }
counts() {
    hub "https://hub.actuated.test/_world/stats?recent=0" | python3 -c "
import json, sys
d = json.load(sys.stdin)
for who, c in sorted(d[\"identities\"].items()):
    print(\"   %-14s manifest_get=%d manifest_head=%d blob_get=%d tokens=%d bytes=%d\" % (
        who, c[\"manifest_get\"], c[\"manifest_head\"], c[\"blob_get\"], c[\"tokens\"], c[\"bytes\"]))
"
}
for pair in "$@"; do
    mirror=${pair#*=}
    i=0
    until curl -s -o /dev/null "http://$mirror:5000/v2/"; do
        i=$((i + 1)); [ "$i" -lt 100 ] || { echo "mirror $mirror did not start"; exit 1; }; sleep 0.1
    done
done
hub -X POST https://hub.actuated.test/_world/reset >/dev/null
for round in first second; do
    for pair in "$@"; do
        mirror=${pair#*=}
        for arch in amd64 arm64; do
            start=$(date +%s%N)
            skopeo copy -q --src-tls-verify=false --override-arch "$arch" \
                "docker://$mirror:5000/library/alpine:latest" "oci:/tmp/$mirror-$arch-$round:latest"
            echo "$round pull via the ${pair%%=*} mirror ($mirror), linux/$arch: $((($(date +%s%N) - start) / 1000000)) ms"
        done
    done
    echo "hub counters after the $round round:"
    counts
done
hub "https://hub.actuated.test/_world/stats?recent=0" > /tmp/stats.json
python3 - "$PROXY_USERNAME" <<EOF
import json, sys
d = json.load(open("/tmp/stats.json"))["identities"]
user = sys.argv[1]
ok = d.get(user, {}).get("manifest_get") == 3 and d.get("anonymous", {}).get("manifest_get") == 3
print("RESULT: %s (expected 3 manifest GETs for %s and 3 for anonymous: index + 2 platform manifests)" % (
    "PASS" if ok else "FAIL", user))
sys.exit(0 if ok else 1)
EOF
'
docker run --rm --network "$NETWORK" --add-host "hub.actuated.test:$HUB_IP" -v "$CERTS:/certs:ro" \
    -e PROXY_USERNAME="$USERNAME" "$IMAGE" sh -c "$CLIENT_SCRIPT" client "credentialed=$AUTH_IP" "anonymous=$ANON_IP"
