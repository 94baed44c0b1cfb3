# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The release file server (plain HTTP :8080): the release fixtures in /releases as static files (GET, HEAD with the
right Content-Length, listings, keep-alive), counted per path; ``GET /_stats`` gives the counters, ``POST /_reset``
zeroes them."""

from __future__ import annotations

import http.server
import json
import urllib.parse

from counters import WORLD
from hubconf import RELEASES, log


class ReleaseHandler(http.server.SimpleHTTPRequestHandler):
    """Static files from /releases (HEAD, Content-Length, keep-alive), counted per path; /_stats, /_reset."""

    protocol_version = 'HTTP/1.1'
    server_version = 'hub-releases'
    sys_version = ''
    timeout = 300

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=RELEASES, **kwargs)

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        """GET: a file, a listing, or the counters."""
        if urllib.parse.urlsplit(self.path).path == '/_stats':
            body = (json.dumps(WORLD.stats(0)['releases'], indent=1, sort_keys=True) + '\n').encode()
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """POST /_reset zeroes the release counters."""
        length = int(self.headers.get('Content-Length') or 0)
        if length:
            self.rfile.read(length)
        if urllib.parse.urlsplit(self.path).path != '/_reset':
            self.send_error(404)
            return
        with WORLD.lock:
            WORLD.releases = {}
        self.send_response(204)
        self.send_header('Content-Length', '0')
        self.end_headers()

    def log_request(self, code='-', size='-') -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        try:
            status = int(code)
        except (TypeError, ValueError):
            status = 0
        if not path.startswith('/_'):
            WORLD.count_release(path, self.command, status)
        log(f'{self.client_address[0]} releases {self.command} {path} {status}')

    def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
        log(f'{self.client_address[0]} releases {format % args}')
