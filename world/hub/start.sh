#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
# Fake Docker Hub of the test world: entry point of the `world-hub` container.
#
#   backend  distribution 2.8.2 (Debian's docker-registry) on 127.0.0.1:5001,
#            token auth (realm /token on the front), storage in /state/storage
#   front    front.py: TLS :443 (token service + /v2/ proxy + /_world admin API)
#            and plain HTTP :8080 (release fixtures from /releases)
#   seeding  seed.py, once per recipe, against a second, auth-less backend on
#            127.0.0.1:5002 that runs only while seeding
#
# Everything that must survive a container restart lives in /state.
set -eu

HUB_DIR=${HUB_DIR:-/hub}
STATE=${HUB_STATE:-/state}
RUN=/tmp/hub
CHILDREN=""
SLEEPER=""

log() {
    echo "hub: $*"
}

stop() {  # [EXIT_CODE]
    trap - TERM INT
    log "stopping"
    for pid in $CHILDREN $SLEEPER; do
        kill "$pid" 2>/dev/null || true
    done
    wait
    exit "${1:-0}"
}
trap stop TERM INT

wait_http() {  # URL: until the registry answers /v2/ (401 or 200)
    i=0
    while [ "$i" -lt 100 ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)
        case "$code" in
            200|401) return 0 ;;
        esac
        i=$((i + 1))
        sleep 0.1
    done
    log "no answer from $1"
    return 1
}

rm -rf "$RUN"
mkdir -p "$RUN" "$STATE/auth" "$STATE/storage"

# Debian's distribution 2.8.2 (dynamically linked against glibc only).
deb=""
for f in /debs/docker-registry_*_amd64.deb; do
    [ -e "$f" ] && deb=$f
done
if [ -z "$deb" ]; then
    log "no /debs/docker-registry_*_amd64.deb"
    exit 1
fi
dpkg-deb -x "$deb" "$RUN/pkg"
REGISTRY="$RUN/pkg/usr/bin/docker-registry"

# Token-signing key and its self-signed certificate (the backend's rootcertbundle):
# generated once, so tokens and the backend agree across restarts.
if [ ! -s "$STATE/auth/signing.key" ] || [ ! -s "$STATE/auth/signing.crt" ]; then
    log "generating the token-signing key"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -subj "/CN=hub.actuated.test token signer" \
        -keyout "$STATE/auth/signing.key.tmp" -out "$STATE/auth/signing.crt.tmp" 2>/dev/null
    mv "$STATE/auth/signing.key.tmp" "$STATE/auth/signing.key"
    mv "$STATE/auth/signing.crt.tmp" "$STATE/auth/signing.crt"
fi

registry_config() {  # ADDR AUTH(yes|no) LOGLEVEL > file
    cat <<EOF
version: 0.1
log:
  level: $3
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STATE/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $1
  relativeurls: true
  secret: actuated-world-hub
EOF
    if [ "$2" = yes ]; then
        cat <<EOF
auth:
  token:
    realm: https://${HUB_REGISTRY_NAME:-hub.actuated.test}/token
    service: ${HUB_SERVICE:-registry.docker.io}
    issuer: ${HUB_ISSUER:-auth.docker.io}
    rootcertbundle: $STATE/auth/signing.crt
EOF
    fi
}
registry_config 127.0.0.1:5001 yes error > "$RUN/registry.yml"
registry_config 127.0.0.1:5002 no error > "$RUN/registry-seed.yml"

# The front answers /_world/ready with 503 until seeding is done and the backend is up.
python3 "$HUB_DIR/front.py" &
CHILDREN="$!"

if ! python3 "$HUB_DIR/seed.py" check; then
    log "seeding images (once per recipe)"
    started=$(date +%s)
    "$REGISTRY" serve "$RUN/registry-seed.yml" >"$RUN/seed-registry.log" 2>&1 &
    seed_registry=$!
    CHILDREN="$CHILDREN $seed_registry"
    wait_http http://127.0.0.1:5002/v2/ || { cat "$RUN/seed-registry.log"; stop 1; }
    # In the background: a foreground command would delay the TERM trap until it ends.
    python3 "$HUB_DIR/seed.py" seed --registry 127.0.0.1:5002 &
    seeder=$!
    CHILDREN="$CHILDREN $seeder"
    if ! wait "$seeder"; then
        log "seeding FAILED; the seeding registry said:"
        tail -n 20 "$RUN/seed-registry.log"
        stop 1
    fi
    kill "$seed_registry"
    wait "$seed_registry" 2>/dev/null || true
    CHILDREN="${CHILDREN%% *}"
    log "seeded in $(($(date +%s) - started)) s"
fi
touch "$RUN/seeded"

"$REGISTRY" serve "$RUN/registry.yml" &
CHILDREN="$CHILDREN $!"
wait_http http://127.0.0.1:5001/v2/ || stop 1
log "ready"

# Run until TERM/INT, or until the front or the backend dies (then the container stops).
alive=yes
while [ "$alive" = yes ]; do
    for pid in $CHILDREN; do
        kill -0 "$pid" 2>/dev/null || alive=no
    done
    sleep 1 &
    SLEEPER=$!
    wait "$SLEEPER" || true
done
log "a hub process died"
for pid in $CHILDREN; do
    kill "$pid" 2>/dev/null || true
done
exit 1
