# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake registry's admin API for tests (``/_world/...`` on the TLS front): readiness, counters, their reset, the
run-time configuration (rate limit, anonymous access), the seeded images' digests. Admin requests are neither counted
nor listed among the recent requests."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse

from counters import WORLD
from hubconf import BACKEND, RECENT_MAX, RUN, STATE, log
from hubhttp import JsonHandler

ENDPOINTS = ['GET /_world/ready', 'GET /_world/stats[?recent=N]', 'POST /_world/reset', 'GET /_world/config',
             'POST /_world/config {"rate_limit": N, "anonymous": bool}', 'GET /_world/images']


def backend_up() -> bool:
    """True when the token-protected backend answers /v2/."""
    try:
        conn = http.client.HTTPConnection(*BACKEND, timeout=2)
        conn.request('GET', '/v2/')
        status = conn.getresponse().status
        conn.close()
        return status in (200, 401)
    except OSError:
        return False


def config_change(body: bytes) -> dict:
    """The change a POST /_world/config asks for; ValueError naming what is wrong with it."""
    change = json.loads(body or b'{}')
    if not isinstance(change, dict):
        raise ValueError('expected a JSON object')
    unknown = set(change) - {'rate_limit', 'anonymous'}
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    limit = change.get('rate_limit', 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError('rate_limit must be an integer >= 0 (0 = unlimited)')
    if 'anonymous' in change and not isinstance(change['anonymous'], bool):
        raise ValueError('anonymous must be true or false')
    return change


class AdminApi(JsonHandler):
    """``/_world/...`` of the TLS front."""

    def admin(self, url) -> None:
        """/_world/{ready,stats,reset,config,images}."""
        self.identity = '-'
        route = (self.command, url.path)
        if route in (('GET', '/_world/ready'), ('HEAD', '/_world/ready')):
            seeded = os.path.exists(os.path.join(RUN, 'seeded'))
            backend = backend_up()
            ready = seeded and backend
            self.send_json(200 if ready else 503, {'ready': ready, 'seeded': seeded, 'backend': backend})
        elif route == ('GET', '/_world/stats'):
            query = urllib.parse.parse_qs(url.query)
            self.send_json(200, WORLD.stats(int(query.get('recent', [str(RECENT_MAX)])[0])))
        elif route == ('POST', '/_world/reset'):
            self.read_body()
            WORLD.reset()
            self.send_json(200, {'reset': True})
        elif route == ('GET', '/_world/config'):
            self.send_json(200, WORLD.config)
        elif route == ('POST', '/_world/config'):
            self.set_config()
        elif route == ('GET', '/_world/images'):
            try:
                with open(os.path.join(STATE, 'seed.json'), encoding='utf-8') as seed_file:
                    self.send_json(200, json.load(seed_file))
            except (OSError, ValueError):
                self.send_json(404, {'error': 'not seeded yet'})
        else:
            self.read_body()
            self.send_json(404, {'error': 'unknown admin endpoint', 'endpoints': ENDPOINTS})

    def set_config(self) -> None:
        """POST /_world/config: validate, then apply."""
        try:
            change = config_change(self.read_body())
        except ValueError as err:
            self.send_json(400, {'error': str(err)})
            return
        with WORLD.lock:
            WORLD.config.update(change)
            WORLD.changes += 1
            config = dict(WORLD.config)
        log(f'config {json.dumps(config, sort_keys=True)}')
        self.send_json(200, config)
