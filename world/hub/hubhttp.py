# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The front's HTTP plumbing: a threading server that does each TLS handshake in the request's own thread, and the
request handler every part of the TLS front builds on (HTTP/1.1 keep-alive, JSON answers, one log line per request,
the recent request list)."""

from __future__ import annotations

import http.server
import json
import ssl
import sys
import time

from counters import WORLD
from hubconf import log, utc_now


class Server(http.server.ThreadingHTTPServer):
    """Threading server that does the TLS handshake in the request thread, and logs errors in one line."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None

    def handle_error(self, request, client_address) -> None:
        err = sys.exc_info()[1]
        log(f'{client_address[0]} error {type(err).__name__}: {err}')


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """Shared helpers: HTTP/1.1 keep-alive, JSON answers, one log line per request."""

    protocol_version = 'HTTP/1.1'
    server_version = 'hub'
    sys_version = ''
    timeout = 300

    status = 0
    sent = 0
    identity = '-'
    started = 0.0

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request.settimeout(30)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_request(self, code='-', size='-') -> None:
        """Logged by done() instead (with identity, bytes and time)."""

    def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
        log(f'{self.client_address[0]} {format % args}')

    def begin(self) -> None:
        """Per-request state."""
        self.status = 0
        self.sent = 0
        self.identity = '-'
        self.started = time.monotonic()

    def done(self, record: bool = True) -> None:
        """Log the request (never headers, never bodies) and keep it in the recent list."""
        millis = int((time.monotonic() - self.started) * 1000)
        log(f'{self.client_address[0]} {self.identity} {self.command} {self.path} {self.status} {self.sent} {millis}ms')
        if record:
            WORLD.record({'time': utc_now(), 'remote': self.client_address[0], 'identity': self.identity,
                          'method': self.command, 'path': self.path, 'status': self.status, 'bytes': self.sent,
                          'ms': millis})

    def read_body(self, limit: int = 1 << 20) -> bytes:
        """Read a small request body (admin API, OAuth form)."""
        length = int(self.headers.get('Content-Length') or 0)
        if length > limit:
            raise ValueError('body too large')
        return self.rfile.read(length) if length else b''

    def send_json(self, status: int, obj, headers: dict | None = None) -> None:
        """Answer with a JSON document."""
        body = (json.dumps(obj, indent=1, sort_keys=True) + '\n').encode()
        self.status = status
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)
            self.sent = len(body)
