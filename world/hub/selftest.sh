#!/usr/bin/env bash
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
# Self-test of the fake Docker Hub, run on the host against its published port.
#
#   world/hub/selftest.sh [--url https://127.0.0.1:15443] [--releases http://127.0.0.1:18080]
#                         [--ca FILE] [--container world-hub]
#
# Credentials come from HUB_USERNAME / HUB_TOKEN, else from the container's environment;
# the CA from HUB_CA / --ca, else from the container's /certs mount. TLS is always verified.
# It resets the hub's counters and restores the hub's config at the end: do not run it while
# a test that reads the counters is running.
set -euo pipefail

URL=https://127.0.0.1:15443
RELEASES=http://127.0.0.1:18080
CONTAINER=world-hub
CA=${HUB_CA:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --url) URL=$2; shift 2 ;;
        --releases) RELEASES=$2; shift 2 ;;
        --ca) CA=$2; shift 2 ;;
        --container) CONTAINER=$2; shift 2 ;;
        *) echo "usage: $0 [--url URL] [--releases URL] [--ca FILE] [--container NAME]" >&2; exit 2 ;;
    esac
done

container_env() {  # NAME: a variable of the hub container's environment
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$CONTAINER" 2>/dev/null | sed -n "s/^$1=//p"
}
USERNAME=${HUB_USERNAME:-$(container_env HUB_USERNAME)}
PASSWORD=${HUB_TOKEN:-$(container_env HUB_TOKEN)}
if [ -z "$CA" ]; then
    certs=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/certs"}}{{.Source}}{{end}}{{end}}' "$CONTAINER" 2>/dev/null || true)
    CA=${certs:+$certs/ca.crt}
fi
if [ -z "$USERNAME" ] || [ -z "$PASSWORD" ]; then
    echo "no HUB_USERNAME/HUB_TOKEN (nor a $CONTAINER container)" >&2
    exit 2
fi
[ -r "$CA" ] || { echo "no CA file (--ca or HUB_CA)" >&2; exit 2; }

TMP=$(mktemp -d)
mkdir -p "$TMP/certs"
cp "$CA" "$TMP/certs/ca.crt"
REGISTRY=${URL#https://}
FAILED=0
SAVED_CONFIG=""

cleanup() {
    if [ -n "$SAVED_CONFIG" ]; then
        curl -sf --cacert "$CA" -X POST -d "$SAVED_CONFIG" "$URL/_world/config" >/dev/null || true
        curl -sf --cacert "$CA" -X POST "$URL/_world/reset" >/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILED=$((FAILED + 1)); }
check() {  # DESCRIPTION EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then pass "$1 ($3)"; else fail "$1: expected '$2', got '$3'"; fi
}
json() {  # PYTHON-EXPRESSION over d (the JSON document on stdin)
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1"
}
claims() {  # the claims of the JWT in a token answer on stdin
    python3 -c 'import base64, json, sys; p = json.load(sys.stdin)["token"].split(".")[1]; print(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)).decode())'
}
hub() {  # curl ARGS... against the hub, TLS verified
    curl -s --cacert "$CA" "$@"
}
admin() {  # METHOD PATH [JSON]
    hub -X "$1" ${3:+-d "$3"} "$URL$2"
}
skopeo_() {
    if command -v skopeo >/dev/null; then
        skopeo "$@"
    else
        docker run --rm --network host -v "$TMP:$TMP" "$(docker inspect -f '{{.Config.Image}}' "$CONTAINER")" skopeo "$@"
    fi
}

echo "hub $URL, account $USERNAME, CA $CA"
started=$(date +%s)
until [ "$(hub -o /dev/null -w '%{http_code}' "$URL/_world/ready")" = 200 ]; do
    [ $(($(date +%s) - started)) -lt 180 ] || { fail "hub not ready after 180 s"; exit 1; }
    sleep 1
done
pass "ready after $(($(date +%s) - started)) s"
SAVED_CONFIG=$(admin GET /_world/config)
admin POST /_world/config '{"rate_limit": 0, "anonymous": true}' >/dev/null
admin POST /_world/reset >/dev/null

# --- token service ---------------------------------------------------------------------------------
scope='service=registry.docker.io&scope=repository:library/alpine:pull,push'
check "/v2/ challenges with a bearer realm on the same host:port" \
    "Bearer realm=\"$URL/token\",service=\"registry.docker.io\"" \
    "$(hub -D - -o /dev/null "$URL/v2/" | sed -n 's/^[Ww]ww-[Aa]uthenticate: //p' | tr -d '\r')"
answer=$(hub "$URL/token?$scope")
check "anonymous token: sub" anonymous "$(claims <<<"$answer" | json 'd["sub"]')"
check "anonymous token: pull only, even when push is asked" "['pull']" "$(claims <<<"$answer" | json 'd["access"][0]["actions"]')"
check "anonymous token: expires_in" 300 "$(json 'd["expires_in"]' <<<"$answer")"
answer=$(hub -u "$USERNAME:$PASSWORD" "$URL/token?$scope")
check "account token: sub" "$USERNAME" "$(claims <<<"$answer" | json 'd["sub"]')"
check "account token: pull only" "['pull']" "$(claims <<<"$answer" | json 'd["access"][0]["actions"]')"
check "account token: iss/aud" "auth.docker.io registry.docker.io" "$(claims <<<"$answer" | json 'd["iss"] + " " + d["aud"]')"
check "wrong password: 401" 401 "$(hub -o "$TMP/denied" -w '%{http_code}' -u "$USERNAME:wrong" "$URL/token?$scope")"
check "wrong password: UNAUTHORIZED" UNAUTHORIZED "$(json 'd["errors"][0]["code"]' <"$TMP/denied")"
answer=$(hub -X POST -d "grant_type=password&service=registry.docker.io&scope=repository:library/alpine:pull&username=$USERNAME&password=$PASSWORD" "$URL/token")
check "OAuth2 POST /token (containerd style): sub" "$USERNAME" "$(claims <<<"$answer" | json 'd["sub"]')"

# --- registry through the front with real OCI clients --------------------------------------------------
platforms=$(skopeo_ inspect --raw --cert-dir "$TMP/certs" --creds "$USERNAME:$PASSWORD" "docker://$REGISTRY/library/alpine:latest" \
    | json '" ".join(sorted(m["platform"]["architecture"] for m in d["manifests"]))')
check "alpine:latest is an index of" "amd64 arm64" "$platforms"
if skopeo_ copy -q --src-cert-dir "$TMP/certs" --src-creds "$USERNAME:$PASSWORD" --override-arch arm64 \
        "docker://$REGISTRY/library/alpine:latest" "oci:$TMP/alpine-arm64:latest"; then
    manifest=$(json 'd["manifests"][0]["digest"].split(":")[1]' <"$TMP/alpine-arm64/index.json")
    config=$(json 'd["config"]["digest"].split(":")[1]' <"$TMP/alpine-arm64/blobs/sha256/$manifest")
    check "skopeo copy --override-arch arm64: config architecture" arm64 "$(json 'd["architecture"]' <"$TMP/alpine-arm64/blobs/sha256/$config")"
else
    fail "skopeo copy --override-arch arm64 with --creds"
fi
check "anonymous skopeo inspect works" 0 "$(skopeo_ inspect --raw --cert-dir "$TMP/certs" --no-creds "docker://$REGISTRY/library/small1:latest" >/dev/null; echo $?)"

stats=$(admin GET '/_world/stats?recent=0')
check "stats: manifest GETs of $USERNAME (index + arm64 + inspect)" 3 "$(json "d['identities']['$USERNAME']['manifest_get']" <<<"$stats")"
check "stats: anonymous manifest GETs" 1 "$(json "d['identities']['anonymous']['manifest_get']" <<<"$stats")"
check "stats: $USERNAME blob GETs (arm64 config + layer)" 2 "$(json "d['identities']['$USERNAME']['blob_get']" <<<"$stats")"

# --- rate limit --------------------------------------------------------------------------------------
admin POST /_world/reset >/dev/null
admin POST /_world/config '{"rate_limit": 2}' >/dev/null
token=$(hub -u "$USERNAME:$PASSWORD" "$URL/token?service=registry.docker.io&scope=repository:library/small2:pull" | json 'd["token"]')
codes=""
for _ in 1 2 3; do
    codes="$codes $(hub -o "$TMP/manifest" -D "$TMP/headers" -w '%{http_code}' -H "Authorization: Bearer $token" \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$URL/v2/library/small2/manifests/latest")"
done
check "rate limit 2: three manifest GETs" " 200 200 429" "$codes"
check "429 body" TOOMANYREQUESTS "$(json 'd["errors"][0]["code"]' <"$TMP/manifest")"
check "429 ratelimit-remaining" "0;w=21600" "$(sed -n 's/^ratelimit-remaining: //Ip' "$TMP/headers" | tr -d '\r')"
check "HEAD is not limited" 200 "$(hub -o /dev/null -w '%{http_code}' -I -H "Authorization: Bearer $token" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$URL/v2/library/small2/manifests/latest")"
check "stats: rate_limited" 1 "$(admin GET '/_world/stats?recent=0' | json "d['identities']['$USERNAME']['rate_limited']")"

# --- anonymous switched off ----------------------------------------------------------------------------
admin POST /_world/config '{"rate_limit": 0, "anonymous": false}' >/dev/null
check "anonymous disabled: token 401" 401 "$(hub -o /dev/null -w '%{http_code}' "$URL/token?$scope")"
check "anonymous disabled: account still works" 200 "$(hub -o /dev/null -w '%{http_code}' -u "$USERNAME:$PASSWORD" "$URL/token?$scope")"
check "config validation" 400 "$(hub -o /dev/null -w '%{http_code}' -X POST -d '{"rate_limit": -1}' "$URL/_world/config")"

# --- reset ---------------------------------------------------------------------------------------------
admin POST /_world/reset >/dev/null
check "reset: no identities left" 0 "$(admin GET '/_world/stats?recent=0' | json 'len(d["identities"])')"

# --- release server --------------------------------------------------------------------------------------
if curl -sf "$RELEASES/_stats" >/dev/null; then
    file=$(curl -s "$RELEASES/" | sed -n 's/.*href="\([^"]*\/\)".*/\1/p' | head -n 1)
    file=$file$(curl -s "$RELEASES/$file" | sed -n 's/.*href="\([^"]*\.tar\.gz\)".*/\1/p' | head -n 1)
    if [ "$file" != "${file%.tar.gz}" ]; then
        size=$(curl -sI "$RELEASES/$file" | sed -n 's/^Content-Length: //Ip' | tr -d '\r')
        check "release HEAD Content-Length = GET size ($file)" "$size" "$(curl -s "$RELEASES/$file" | wc -c | tr -d ' ')"
        check "release download counted once" 1 "$(curl -s "$RELEASES/_stats" | json "d['/$file']['GET']")"
    else
        echo "SKIP  no release tarball served"
    fi
else
    fail "release server $RELEASES/_stats"
fi

if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED check(s) FAILED"
    exit 1
fi
echo "all checks passed"
