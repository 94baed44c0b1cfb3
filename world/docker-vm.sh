#!/bin/sh
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
# world-docker-vm's entry point: an actuated VM's container runtimes. Trusts the test CA (as actuated's VMs trust
# actuated's), starts Debian's containerd and Docker daemon (the host's packages, mounted read-only), and sleeps once
# both answer. The daemon's own settings are in /etc/docker/daemon.json, as a VM image's would be: clients of the
# mirror must merge into that file, not replace it. Storage driver vfs: overlayfs cannot stack on the container's own.
set -eu
# Names: the world's registries are in /etc/hosts (--add-host); nothing else resolves offline. Docker's embedded DNS,
# which has no upstream here, lets a lookup of any other name wait 10 s (dockerd makes one before each pull: every
# `docker pull` took 10 s before it asked the mirror anything). A nameserver that refuses fails them at once, as a
# VM's resolver answers at once where it can reach one.
printf 'nameserver 127.0.0.1\noptions ndots:0\n' >/etc/resolv.conf
cp /certs/ca.crt /usr/local/share/ca-certificates/actuated-ca.crt
update-ca-certificates >/dev/null 2>&1
mkdir -p /etc/docker
cat >/etc/docker/daemon.json <<'JSON'
{
  "storage-driver": "vfs",
  "iptables": false,
  "ip-masq": false,
  "bridge": "none",
  "log-level": "warn"
}
JSON
wait_until() {  # NAME LOG COMMAND...: until COMMAND succeeds (30 s at most)
    name=$1 log=$2
    shift 2
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt 300 ] || { echo "$name did not start:"; tail -n 20 "$log"; exit 1; }
        sleep 0.1
    done
}
containerd >/var/log/containerd.log 2>&1 &
wait_until containerd /var/log/containerd.log ctr version
dockerd --containerd /run/containerd/containerd.sock --pidfile /var/run/docker.pid >/var/log/dockerd.log 2>&1 &
wait_until dockerd /var/log/dockerd.log docker info
echo "containerd and dockerd are running"
exec sleep infinity
