# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Front of the fake Docker Hub (test world of actuated.registry).

One process, two listeners:

* TLS :443 -- ``/token`` (Docker-style token service), ``/v2/...`` (reverse proxy to the
  token-protected distribution backend on 127.0.0.1:5001, with Docker Hub-like pull
  counting and rate limiting) and ``/_world/...`` (admin API for tests).
* HTTP :8080 -- the release fixtures in /releases as static files, with per-path
  download counters at ``/_stats``.

Standard library only. Never logs Authorization headers, tokens or passwords.
"""

from __future__ import annotations

import base64
import collections
import datetime
import hmac
import http.client
import http.server
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

STATE = os.environ.get('HUB_STATE', '/state')
RUN = '/tmp/hub'
# Counters and run-time config survive `docker stop/start` (the container's own file system),
# but a new container (world up) starts from zero and from the environment.
RUNTIME = os.environ.get('HUB_RUNTIME', '/var/lib/hub-front/runtime.json')
CERT = os.environ.get('HUB_CERT', '/certs/hub.crt')
KEY = os.environ.get('HUB_KEY', '/certs/hub.key')
RELEASES = os.environ.get('HUB_RELEASES', '/releases')
TLS_PORT = int(os.environ.get('HUB_TLS_PORT', '443'))
RELEASE_PORT = int(os.environ.get('HUB_RELEASE_PORT', '8080'))
BACKEND = ('127.0.0.1', 5001)
BACKEND_URL = 'http://127.0.0.1:5001'
# Who this fake registry stands for (the defaults: Docker Hub; world-ghcr sets its own, see world/containers.py).
REGISTRY_NAME = os.environ.get('HUB_REGISTRY_NAME', 'hub.actuated.test')  # the registry's name (registry-1.docker.io)
# The token service's name (Docker Hub: auth.docker.io, another host of the same registrable domain); empty: the realm
# is on the registry's own host, as ghcr.io's is.
AUTH_NAME = os.environ.get('HUB_AUTH_NAME', 'auth.actuated.test')
ISSUER = os.environ.get('HUB_ISSUER', 'auth.docker.io')
SERVICE = os.environ.get('HUB_SERVICE', 'registry.docker.io')
BACKEND_REALM = 'https://%s/token' % REGISTRY_NAME  # as written in the backend config by start.sh
TOKEN_TTL = 300
RATE_WINDOW = 21600  # Docker Hub's window (6 h), only shown in the ratelimit headers
CHUNK = 256 * 1024
RECENT_MAX = 1000
ANONYMOUS = 'anonymous'
HOP_BY_HOP = frozenset(('connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection',
                        'te', 'trailer', 'trailers', 'transfer-encoding', 'upgrade', 'expect'))
MANIFEST_RE = re.compile(r'^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$')
BLOB_RE = re.compile(r'^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$')
TOO_MANY = ('You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: '
            'https://www.docker.com/increase-rate-limit')

LOG_LOCK = threading.Lock()


def log(message: str) -> None:
    """Write one line to stdout."""
    with LOG_LOCK:
        sys.stdout.write(message + '\n')
        sys.stdout.flush()


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs use it."""
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def b64url_decode(text: str) -> bytes:
    """Inverse of b64url."""
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable."""
    value = os.environ.get(name, '').strip().lower()
    if not value:
        return default
    return value in ('1', 'true', 'yes', 'on')


def utc_now() -> str:
    """RFC 3339 time stamp."""
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class Signer:
    """Issues RS256 JWTs the backend's ``auth.token`` accepts (x5c = the rootcertbundle certificate)."""

    def __init__(self, key_path: str, cert_path: str) -> None:
        self.key_path = key_path
        self.cert_path = cert_path
        self.header = ''

    def jwt_header(self) -> str:
        """The encoded JWT header, read from the signing certificate on first use."""
        if not self.header:
            with open(self.cert_path, encoding='ascii') as cert_file:
                pem = cert_file.read()
            body = pem.split('-----BEGIN CERTIFICATE-----', 1)[1].split('-----END CERTIFICATE-----', 1)[0]
            header = {'typ': 'JWT', 'alg': 'RS256', 'x5c': [''.join(body.split())]}
            self.header = b64url(json.dumps(header, separators=(',', ':')).encode())
        return self.header

    def issue(self, subject: str, access: list) -> dict:
        """Return the token service's JSON answer for SUBJECT with ACCESS."""
        now = int(time.time())
        claims = {
            'iss': ISSUER,
            'sub': subject,
            'aud': SERVICE,
            'exp': now + TOKEN_TTL,
            'nbf': now - 10,
            'iat': now,
            'jti': uuid.uuid4().hex,
            'access': access,
        }
        signing_input = self.jwt_header() + '.' + b64url(json.dumps(claims, separators=(',', ':')).encode())
        signature = subprocess.run(['openssl', 'dgst', '-sha256', '-sign', self.key_path],
                                   input=signing_input.encode('ascii'), stdout=subprocess.PIPE, check=True).stdout
        token = signing_input + '.' + b64url(signature)
        return {'token': token, 'access_token': token, 'expires_in': TOKEN_TTL, 'issued_at': utc_now()}


def parse_scopes(scopes: list) -> list:
    """Turn ``repository:NAME:ACTIONS`` scopes into JWT access entries granting at most pull."""
    access = []
    for scope in scopes:
        for item in scope.split(' '):
            parts = item.split(':')
            if len(parts) < 3 or parts[0] != 'repository':
                continue  # registry:catalog:* and friends: nothing granted
            name = ':'.join(parts[1:-1])
            wanted = parts[-1].split(',')
            actions = ['pull'] if ('pull' in wanted or '*' in wanted) else []
            access.append({'type': 'repository', 'name': name, 'actions': actions})
    return access


def token_subject(authorization: str) -> tuple:
    """(identity, has_token) from a request's Authorization header; the JWT is ours, so only decode it."""
    if not authorization.lower().startswith('bearer '):
        return ANONYMOUS, False
    try:
        payload = authorization.split(None, 1)[1].split('.')[1]
        return str(json.loads(b64url_decode(payload)).get('sub') or ANONYMOUS), True
    except (IndexError, ValueError, AttributeError):
        return ANONYMOUS, True


class World:
    """Run-time configuration and counters, shared by all request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config = {
            'rate_limit': int(os.environ.get('HUB_RATE_LIMIT', '0') or 0),
            'anonymous': env_bool('HUB_ANONYMOUS', True),
        }
        self.signer = Signer(os.path.join(STATE, 'auth', 'signing.key'), os.path.join(STATE, 'auth', 'signing.crt'))
        self.username = os.environ.get('HUB_USERNAME', '')
        self.password = os.environ.get('HUB_TOKEN', '')
        self.identities: dict = {}
        self.blobs: collections.Counter = collections.Counter()
        self.releases: dict = {}
        self.recent: collections.deque = collections.deque(maxlen=RECENT_MAX)
        self.since = utc_now()
        self.changes = 0

    def reset(self) -> None:
        """Zero every counter."""
        with self.lock:
            self.identities = {}
            self.blobs = collections.Counter()
            self.releases = {}
            self.recent.clear()
            self.since = utc_now()
            self.changes += 1

    def load(self, path: str) -> None:
        """Restore counters and config saved by save() before a container restart."""
        try:
            with open(path, encoding='utf-8') as handle:
                saved = json.load(handle)
        except (OSError, ValueError):
            return
        with self.lock:
            self.config.update(saved['config'])
            self.identities = saved['identities']
            for counters in self.identities.values():
                counters['manifests'] = collections.Counter(counters['manifests'])
            self.blobs = collections.Counter(saved['blobs'])
            self.releases = saved['releases']
            self.recent.extend(saved['recent'])
            self.since = saved['since']
        log('front: counters and config restored from %s' % path)

    def save(self, path: str, last: int) -> int:
        """Write counters and config to PATH if anything changed since LAST; return the change number."""
        if self.changes == last:
            return last
        with self.lock:
            changes = self.changes
            snapshot = self.stats(RECENT_MAX, locked=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + '.tmp', 'w', encoding='utf-8') as handle:
            json.dump(snapshot, handle)
        os.replace(path + '.tmp', path)
        return changes

    def identity(self, name: str) -> dict:
        """Counters of one identity (call with the lock held)."""
        if name not in self.identities:
            self.identities[name] = {
                'tokens': 0, 'tokens_denied': 0, 'manifest_get': 0, 'manifest_head': 0, 'blob_get': 0,
                'bytes': 0, 'rate_limited': 0, 'requests': 0, 'manifests': collections.Counter(),
            }
        return self.identities[name]

    def check_credentials(self, username: str, password: str) -> bool:
        """True for the one configured Docker Hub account."""
        if not self.username or not self.password:
            return False
        return (hmac.compare_digest(username.encode(), self.username.encode())
                and hmac.compare_digest(password.encode(), self.password.encode()))

    def take_pull(self, name: str) -> tuple:
        """Reserve one pull (manifest GET) for NAME: (allowed, limit, remaining after it)."""
        with self.lock:
            limit = self.config['rate_limit']
            counters = self.identity(name)
            if 0 < limit <= counters['manifest_get']:
                counters['rate_limited'] += 1
                return False, limit, 0
            counters['manifest_get'] += 1
            return True, limit, max(limit - counters['manifest_get'], 0)

    def give_back_pull(self, name: str) -> None:
        """Undo take_pull for a manifest GET that did not succeed."""
        with self.lock:
            self.identity(name)['manifest_get'] -= 1

    def remaining(self, name: str) -> tuple:
        """(limit, remaining) of NAME without taking anything."""
        with self.lock:
            limit = self.config['rate_limit']
            return limit, max(limit - self.identity(name)['manifest_get'], 0)

    def record(self, entry: dict) -> None:
        """Append to the recent request list."""
        with self.lock:
            self.recent.append(entry)
            self.changes += 1

    def count_release(self, path: str, method: str, status: int) -> None:
        """Count a release server request."""
        with self.lock:
            counters = self.releases.setdefault(path, {'GET': 0, 'HEAD': 0, 'errors': 0})
            if 200 <= status < 300 and method in counters:
                counters[method] += 1
            else:
                counters['errors'] += 1
            self.changes += 1

    def stats(self, recent: int, locked: bool = False) -> dict:
        """JSON-able snapshot of every counter."""
        if not locked:
            with self.lock:
                return self.stats(recent, locked=True)
        return {
            'since': self.since,
            'config': dict(self.config),
            'identities': json.loads(json.dumps(self.identities)),
            'blobs': dict(self.blobs),
            'releases': json.loads(json.dumps(self.releases)),
            'recent': list(self.recent)[-recent:] if recent > 0 else [],
        }


WORLD = World()


class Server(http.server.ThreadingHTTPServer):
    """Threading server that does the TLS handshake in the request thread, and logs errors in one line."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None

    def handle_error(self, request, client_address) -> None:
        err = sys.exc_info()[1]
        log('%s error %s: %s' % (client_address[0], type(err).__name__, err))


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
        log('%s %s' % (self.client_address[0], format % args))

    def begin(self) -> None:
        """Per-request state."""
        self.status = 0
        self.sent = 0
        self.identity = '-'
        self.started = time.monotonic()

    def done(self, record: bool = True) -> None:
        """Log the request (never headers, never bodies) and keep it in the recent list."""
        millis = int((time.monotonic() - self.started) * 1000)
        log('%s %s %s %s %s %d %dms' % (self.client_address[0], self.identity, self.command, self.path, self.status,
                                        self.sent, millis))
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


class FrontHandler(JsonHandler):
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
        return 'https://%s/token' % host

    # --- token service ---------------------------------------------------------------------------------

    def token(self, url) -> None:
        """Docker token service: GET with Basic auth (or none), POST OAuth2 password grant."""
        query = urllib.parse.parse_qs(url.query)
        scopes = query.get('scope', [])
        username = password = None
        if self.command == 'POST':
            form = urllib.parse.parse_qs(self.read_body().decode('utf-8', 'replace'))
            grant = form.get('grant_type', [''])[0]
            if grant != 'password':
                self.send_json(400, {'error': 'unsupported_grant_type'})
                return
            username = form.get('username', [''])[0]
            password = form.get('password', [''])[0]
            scopes = scopes + form.get('scope', [])
        elif self.command in ('GET', 'HEAD'):
            authorization = self.headers.get('Authorization') or ''
            if authorization.lower().startswith('basic '):
                try:
                    username, _sep, password = base64.b64decode(authorization.split(None, 1)[1]).decode().partition(':')
                except (ValueError, IndexError):
                    username, password = '', ''
        else:
            self.send_json(405, {'errors': [{'code': 'UNSUPPORTED', 'message': 'method not allowed'}]})
            return

        if username is None:
            identity = ANONYMOUS
            if not WORLD.config['anonymous']:
                self.identity = ANONYMOUS
                self.deny_token('anonymous access is disabled: authentication required')
                return
        elif WORLD.check_credentials(username, password or ''):
            identity = username
        else:
            self.identity = 'invalid:' + re.sub(r'[^A-Za-z0-9._-]', '?', username)[:64]
            self.deny_token('incorrect username or password')
            return
        self.identity = identity
        answer = WORLD.signer.issue(identity, parse_scopes(scopes))
        with WORLD.lock:
            WORLD.identity(identity)['tokens'] += 1
        if self.command == 'POST':
            answer['scope'] = ' '.join(scopes)
        self.send_json(200, answer)

    def deny_token(self, message: str) -> None:
        """401 from the token service, Docker Hub style."""
        with WORLD.lock:
            WORLD.identity(self.identity)['tokens_denied'] += 1
        self.send_json(401, {'errors': [{'code': 'UNAUTHORIZED', 'message': message, 'detail': None}],
                             'details': message})

    # --- registry proxy --------------------------------------------------------------------------------

    def proxy(self, url) -> None:
        """Forward /v2/... to the backend, counting pulls per identity and enforcing the rate limit."""
        identity, has_token = token_subject(self.headers.get('Authorization') or '')
        self.identity = identity
        manifest = MANIFEST_RE.match(url.path)
        blob = BLOB_RE.match(url.path)
        extra = {}
        reserved = False

        if has_token and identity == ANONYMOUS and not WORLD.config['anonymous']:
            self.drain_body()
            name = manifest.group('name') if manifest else (blob.group('name') if blob else '')
            challenge = 'Bearer realm="%s",service="%s"' % (self.realm(), SERVICE)
            if name:
                challenge += ',scope="repository:%s:pull"' % name
            self.send_json(401, {'errors': [{'code': 'UNAUTHORIZED', 'message': 'authentication required', 'detail': None}]},
                           {'Www-Authenticate': challenge})
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

    @staticmethod
    def ratelimit_headers(identity: str, limit: int, remaining: int) -> dict:
        """Docker Hub's rate limit headers."""
        return {'ratelimit-limit': '%d;w=%d' % (limit, RATE_WINDOW), 'ratelimit-remaining': '%d;w=%d' % (remaining, RATE_WINDOW),
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
                backend.putheader('Host', '%s:%d' % BACKEND)
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
                self.send_json(503, {'errors': [{'code': 'UNAVAILABLE', 'message': 'backend unavailable: %s' % err}]})
                return
            self.relay(response, extra)
        finally:
            backend.close()

    def relay(self, response, extra: dict) -> None:
        """Stream the backend's response to the client, rewriting realms and locations."""
        self.status = response.status
        self.send_response_only(response.status, response.reason)
        host = self.host()
        length = None
        for key, value in response.getheaders():
            lower = key.lower()
            if lower in HOP_BY_HOP:
                continue
            if lower == 'www-authenticate':
                value = value.replace(BACKEND_REALM, self.realm())
            elif lower == 'location' and value.startswith(BACKEND_URL):
                value = 'https://%s%s' % (host, value[len(BACKEND_URL):])
            elif lower == 'content-length':
                length = value
            self.send_header(key, value)
        for key, value in extra.items():
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

    # --- admin API ---------------------------------------------------------------------------------------

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
            self.send_json(404, {'error': 'unknown admin endpoint', 'endpoints': [
                'GET /_world/ready', 'GET /_world/stats[?recent=N]', 'POST /_world/reset', 'GET /_world/config',
                'POST /_world/config {"rate_limit": N, "anonymous": bool}', 'GET /_world/images']})

    def set_config(self) -> None:
        """POST /_world/config: validate, then apply."""
        try:
            change = json.loads(self.read_body() or b'{}')
            if not isinstance(change, dict):
                raise ValueError('expected a JSON object')
            unknown = set(change) - {'rate_limit', 'anonymous'}
            if unknown:
                raise ValueError('unknown keys: %s' % ', '.join(sorted(unknown)))
            if 'rate_limit' in change and (not isinstance(change['rate_limit'], int) or isinstance(change['rate_limit'], bool) or change['rate_limit'] < 0):
                raise ValueError('rate_limit must be an integer >= 0 (0 = unlimited)')
            if 'anonymous' in change and not isinstance(change['anonymous'], bool):
                raise ValueError('anonymous must be true or false')
        except ValueError as err:
            self.send_json(400, {'error': str(err)})
            return
        with WORLD.lock:
            WORLD.config.update(change)
            WORLD.changes += 1
            config = dict(WORLD.config)
        log('config %s' % json.dumps(config, sort_keys=True))
        self.send_json(200, config)


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
        log('%s releases %s %s %s' % (self.client_address[0], self.command, path, status))

    def log_message(self, format, *args) -> None:  # pylint: disable=redefined-builtin
        log('%s releases %s' % (self.client_address[0], format % args))


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
    front = Server(('0.0.0.0', TLS_PORT), FrontHandler)
    front.tls = tls
    releases = Server(('0.0.0.0', RELEASE_PORT), ReleaseHandler)
    WORLD.load(RUNTIME)
    log('front: https on :%d (rate_limit=%d, anonymous=%s, account=%s), releases on :%d from %s' % (
        TLS_PORT, WORLD.config['rate_limit'], WORLD.config['anonymous'], WORLD.username or '-', RELEASE_PORT, RELEASES))
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
