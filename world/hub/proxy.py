# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake registry's ``/v2/`` reverse proxy to the token-protected backend: counts what each identity pulls the way
Docker Hub does, enforces the rate limit and anonymous access, and rewrites the backend's realm and locations to the
name the client used."""

from __future__ import annotations

import http.client
import re

from counters import WORLD
from hubconf import ANONYMOUS, AUTH_NAME, BACKEND, BACKEND_REALM, BACKEND_URL, REGISTRY_NAME, SERVICE
from hubhttp import JsonHandler
from tokens import token_subject

RATE_WINDOW = 21600  # Docker Hub's window (6 h), only shown in the ratelimit headers
CHUNK = 256 * 1024
HOP_BY_HOP = frozenset(('connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection',
                        'te', 'trailer', 'trailers', 'transfer-encoding', 'upgrade', 'expect'))
MANIFEST_RE = re.compile(r'^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$')
BLOB_RE = re.compile(r'^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$')
TOO_MANY = ('You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: '
            'https://www.docker.com/increase-rate-limit')


class RegistryProxy(JsonHandler):
    """``/v2/...`` of the TLS front."""

    def host(self) -> str:
        """Host (and port) the client used to reach us, for redirects."""
        host = (self.headers.get('Host') or '').strip()
        if not host or not re.match(r'^[A-Za-z0-9.:\[\]-]+$', host):
            host = REGISTRY_NAME
        return host

    def realm(self) -> str:
        """The token realm, named the way Docker Hub names it: registry-1.docker.io sends clients to auth.docker.io,
        another host of the same registrable domain (distribution 3.1 sends its upstream credentials only to such a
        realm, or to the registry's own host:port). Clients that reached us by address get the same host:port."""
        host = self.host()
        name, sep, port = host.partition(':')
        if name == REGISTRY_NAME and AUTH_NAME:
            host = AUTH_NAME + sep + port
        return f'https://{host}/token'

    def proxy(self, url) -> None:
        """Forward /v2/... to the backend, counting pulls per identity and enforcing the rate limit."""
        identity, has_token = token_subject(self.headers.get('Authorization') or '')
        self.identity = identity
        manifest = MANIFEST_RE.match(url.path)
        blob = BLOB_RE.match(url.path)
        extra = {}
        reserved = False

        if has_token and identity == ANONYMOUS and not WORLD.config['anonymous']:
            self.refuse_anonymous(manifest or blob)
            self.count(identity)
            return

        if manifest and self.command == 'GET' and has_token:
            allowed, limit, remaining = WORLD.take_pull(identity)
            if limit > 0:
                extra = self.ratelimit_headers(identity, limit, remaining)
            if not allowed:
                self.send_json(429, {'errors': [{'code': 'TOOMANYREQUESTS', 'message': TOO_MANY}]}, extra)
                self.count(identity)
                return
            reserved = True
        elif manifest and self.command == 'HEAD':
            limit, remaining = WORLD.remaining(identity)
            if limit > 0:
                extra = self.ratelimit_headers(identity, limit, remaining)

        try:
            self.forward(url, extra)
        finally:
            ok = 200 <= self.status < 300
            if reserved and not ok:
                WORLD.give_back_pull(identity)
            self.count(identity, manifest, blob, reserved, ok)

    def refuse_anonymous(self, match) -> None:
        """401 to a request with an anonymous token while anonymous access is off (MATCH: its manifest or blob)."""
        self.drain_body()
        challenge = f'Bearer realm="{self.realm()}",service="{SERVICE}"'
        if match:
            challenge += f',scope="repository:{match.group("name")}:pull"'
        error = {'code': 'UNAUTHORIZED', 'message': 'authentication required', 'detail': None}
        self.send_json(401, {'errors': [error]}, {'Www-Authenticate': challenge})

    @staticmethod
    def ratelimit_headers(identity: str, limit: int, remaining: int) -> dict:
        """Docker Hub's rate limit headers."""
        return {'ratelimit-limit': f'{limit};w={RATE_WINDOW}', 'ratelimit-remaining': f'{remaining};w={RATE_WINDOW}',
                'docker-ratelimit-source': identity}

    def count(self, identity: str, manifest=None, blob=None, reserved: bool = False, ok: bool = False) -> None:
        """Update the identity's counters after a /v2/ request."""
        with WORLD.lock:
            counters = WORLD.identity(identity)
            counters['requests'] += 1
            counters['bytes'] += self.sent
            if not ok:
                return
            if manifest and self.command == 'GET':
                if not reserved:
                    counters['manifest_get'] += 1
                ref = manifest.group('ref')
                counters['manifests'][manifest.group('name') + ('@' if ':' in ref else ':') + ref] += 1
            elif manifest and self.command == 'HEAD':
                counters['manifest_head'] += 1
            elif blob and self.command == 'GET':
                counters['blob_get'] += 1
                WORLD.blobs[blob.group('digest')] += 1

    def drain_body(self) -> None:
        """Discard a request body we will not forward, so the connection stays usable."""
        length = int(self.headers.get('Content-Length') or 0)
        while length > 0:
            data = self.rfile.read(min(length, CHUNK))
            if not data:
                break
            length -= len(data)
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            self.close_connection = True

    def request_body(self):
        """Generator over the request body (Content-Length or chunked), in chunks."""
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            while True:
                size = int(self.rfile.readline().split(b';', 1)[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return
                remaining = size
                while remaining > 0:
                    data = self.rfile.read(min(remaining, CHUNK))
                    if not data:
                        return
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        length = int(self.headers.get('Content-Length') or 0)
        while length > 0:
            data = self.rfile.read(min(length, CHUNK))
            if not data:
                return
            length -= len(data)
            yield data

    def forward(self, url, extra: dict) -> None:
        """Send the request to the backend and stream its answer back."""
        target = url.path + ('?' + url.query if url.query else '')
        chunked_in = 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower()
        has_body = chunked_in or int(self.headers.get('Content-Length') or 0) > 0
        backend = http.client.HTTPConnection(*BACKEND, timeout=300)
        try:
            try:
                backend.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                backend.putheader('Host', f'{BACKEND[0]}:{BACKEND[1]}')
                for key, value in self.headers.items():
                    lower = key.lower()
                    if lower in HOP_BY_HOP or lower == 'host' or (chunked_in and lower == 'content-length'):
                        continue
                    backend.putheader(key, value)
                if chunked_in:
                    backend.putheader('Transfer-Encoding', 'chunked')
                backend.endheaders()
                if has_body:
                    for data in self.request_body():
                        backend.send(b'%x\r\n%s\r\n' % (len(data), data) if chunked_in else data)
                    if chunked_in:
                        backend.send(b'0\r\n\r\n')
                response = backend.getresponse()
            except OSError as err:
                self.close_connection = True
                self.send_json(503, {'errors': [{'code': 'UNAVAILABLE', 'message': f'backend unavailable: {err}'}]})
                return
            self.relay(response, extra)
        finally:
            backend.close()

    def relayed_headers(self, response) -> tuple:
        """The backend's headers as the client gets them (realms and locations rewritten), and its Content-Length
        (None: none)."""
        host = self.host()
        headers = []
        length = None
        for key, value in response.getheaders():
            lower = key.lower()
            if lower in HOP_BY_HOP:
                continue
            relayed = value
            if lower == 'www-authenticate':
                relayed = value.replace(BACKEND_REALM, self.realm())
            elif lower == 'location' and value.startswith(BACKEND_URL):
                relayed = f'https://{host}{value[len(BACKEND_URL):]}'
            elif lower == 'content-length':
                length = value
            headers.append((key, relayed))
        return headers, length

    def relay(self, response, extra: dict) -> None:
        """Stream the backend's response to the client, rewriting realms and locations."""
        self.status = response.status
        self.send_response_only(response.status, response.reason)
        headers, length = self.relayed_headers(response)
        for key, value in [*headers, *extra.items()]:
            self.send_header(key, value)
        bodyless = self.command == 'HEAD' or response.status in (204, 304) or response.status < 200
        chunked_out = not bodyless and length is None
        if chunked_out:
            self.send_header('Transfer-Encoding', 'chunked')
        self.end_headers()
        if bodyless:
            return
        try:
            while True:
                data = response.read(CHUNK)
                if not data:
                    break
                self.wfile.write(b'%x\r\n%s\r\n' % (len(data), data) if chunked_out else data)
                self.sent += len(data)
            if chunked_out:
                self.wfile.write(b'0\r\n\r\n')
        except OSError:
            self.close_connection = True  # client went away (or the backend did): this connection is done
        if length is not None and self.sent != int(length):
            self.close_connection = True
