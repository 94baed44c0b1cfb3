# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Front of the fake Docker Hub (test world of actuated.registry): start.sh runs ``python3 front.py``.

One process, two listeners:

* TLS :443 -- ``/token`` (Docker-style token service: tokens.py), ``/v2/...`` (reverse proxy to the
  token-protected distribution backend on 127.0.0.1:5001, with Docker Hub-like pull counting and rate
  limiting: proxy.py) and ``/_world/...`` (admin API for tests: admin.py).
* HTTP :8080 -- the release fixtures in /releases as static files, with per-path download counters at
  ``/_stats`` (release_files.py).

The counters and the run-time configuration (counters.py) are shared by both; hubconf.py reads the environment,
hubhttp.py has the HTTP plumbing. Standard library only. Never logs Authorization headers, tokens or passwords.
"""

from __future__ import annotations

import signal
import ssl
import sys
import threading
import time
import urllib.parse

from admin import AdminApi
from counters import WORLD
from hubconf import CERT, KEY, LISTEN, RELEASE_PORT, RELEASES, RUNTIME, TLS_PORT, log
from hubhttp import Server
from proxy import RegistryProxy
from release_files import ReleaseHandler
from tokens import TokenService


class FrontHandler(TokenService, RegistryProxy, AdminApi):
    """TLS front: token service, registry proxy, admin API."""

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        """GET."""
        self.dispatch()

    def do_HEAD(self) -> None:  # pylint: disable=invalid-name
        """HEAD."""
        self.dispatch()

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """POST."""
        self.dispatch()

    def do_PUT(self) -> None:  # pylint: disable=invalid-name
        """PUT."""
        self.dispatch()

    def do_PATCH(self) -> None:  # pylint: disable=invalid-name
        """PATCH."""
        self.dispatch()

    def do_DELETE(self) -> None:  # pylint: disable=invalid-name
        """DELETE."""
        self.dispatch()

    def dispatch(self) -> None:
        """Route one request."""
        self.begin()
        url = urllib.parse.urlsplit(self.path)
        if url.path == '/token':
            self.token(url)
            self.done()
        elif url.path == '/v2' or url.path.startswith('/v2/'):
            self.proxy(url)
            self.done()
        elif url.path.startswith('/_world/'):
            self.admin(url)
            self.done(record=False)
        else:
            self.send_json(404, {'errors': [{'code': 'NOT_FOUND', 'message': 'not found'}]})
            self.done()


def serve(server: Server, name: str) -> threading.Thread:
    """Run SERVER in a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread


def main() -> None:
    """Start both listeners and run until killed."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(CERT, KEY)
    tls.set_alpn_protocols(['http/1.1'])
    front = Server((LISTEN, TLS_PORT), FrontHandler)
    front.tls = tls
    releases = Server((LISTEN, RELEASE_PORT), ReleaseHandler)
    WORLD.load(RUNTIME)
    log(f"front: https on :{TLS_PORT} (rate_limit={WORLD.config['rate_limit']}, anonymous={WORLD.config['anonymous']}, "
        f"account={WORLD.username or '-'}), releases on :{RELEASE_PORT} from {RELEASES}")
    threads = [serve(front, 'front'), serve(releases, 'releases')]

    def terminate(_signum, _frame) -> None:
        WORLD.save(RUNTIME, -1)
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    saved = 0
    while all(thread.is_alive() for thread in threads):
        time.sleep(1)
        saved = WORLD.save(RUNTIME, saved)
    sys.exit(1)


if __name__ == '__main__':
    main()
