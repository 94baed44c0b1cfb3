# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake registry's configuration (the container's environment, set by world/containers.py; start.sh's paths and
ports) and what every part of the front shares: the log, time stamps."""

from __future__ import annotations

import datetime
import os
import sys
import threading


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable."""
    value = os.environ.get(name, '').strip().lower()
    if not value:
        return default
    return value in ('1', 'true', 'yes', 'on')


STATE = os.environ.get('HUB_STATE', '/state')
RUN = os.environ.get('HUB_RUN', '/tmp/hub')  # start.sh's: /tmp/hub/seeded once seeding is done
# Counters and run-time config survive `docker stop/start` (the container's own file system),
# but a new container (world up) starts from zero and from the environment.
RUNTIME = os.environ.get('HUB_RUNTIME', '/var/lib/hub-front/runtime.json')
CERT = os.environ.get('HUB_CERT', '/certs/hub.crt')
KEY = os.environ.get('HUB_KEY', '/certs/hub.key')
RELEASES = os.environ.get('HUB_RELEASES', '/releases')
TLS_PORT = int(os.environ.get('HUB_TLS_PORT', '443'))
RELEASE_PORT = int(os.environ.get('HUB_RELEASE_PORT', '8080'))
# The listeners' address (0.0.0.0 in the container; a local run for tests: 127.0.0.1) and the backend's port.
LISTEN = os.environ.get('HUB_LISTEN', '0.0.0.0')
BACKEND = ('127.0.0.1', int(os.environ.get('HUB_BACKEND_PORT', '5001')))
BACKEND_URL = f'http://127.0.0.1:{BACKEND[1]}'
# Who this fake registry stands for (the defaults: Docker Hub; world-ghcr sets its own, see world/containers.py).
REGISTRY_NAME = os.environ.get('HUB_REGISTRY_NAME', 'hub.actuated.test')  # the registry's name (registry-1.docker.io)
# The token service's name (Docker Hub: auth.docker.io, another host of the same registrable domain); empty: the realm
# is on the registry's own host, as ghcr.io's is.
AUTH_NAME = os.environ.get('HUB_AUTH_NAME', 'auth.actuated.test')
ISSUER = os.environ.get('HUB_ISSUER', 'auth.docker.io')
SERVICE = os.environ.get('HUB_SERVICE', 'registry.docker.io')
BACKEND_REALM = f'https://{REGISTRY_NAME}/token'  # as written in the backend config by start.sh
# The one account (its Docker Hub token), the rate limit and anonymous access at start (POST /_world/config changes
# the last two).
USERNAME = os.environ.get('HUB_USERNAME', '')
PASSWORD = os.environ.get('HUB_TOKEN', '')
RATE_LIMIT = int(os.environ.get('HUB_RATE_LIMIT', '0') or 0)
ALLOW_ANONYMOUS = env_bool('HUB_ANONYMOUS', True)
ANONYMOUS = 'anonymous'
RECENT_MAX = 1000

LOG_LOCK = threading.Lock()


def log(message: str) -> None:
    """Write one line to stdout."""
    with LOG_LOCK:
        sys.stdout.write(message + '\n')
        sys.stdout.flush()


def utc_now() -> str:
    """RFC 3339 time stamp."""
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')
