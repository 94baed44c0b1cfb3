# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake registry's token service (``/token``, as auth.docker.io answers it): RS256 JWTs the backend's
``auth.token`` accepts, granting at most pull, to the one account (Basic auth on GET, OAuth2 password grant on POST)
or anonymously; and how the proxy reads a token's subject."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.parse
import uuid

from counters import WORLD
from hubconf import ANONYMOUS, ISSUER, SERVICE, STATE, utc_now
from hubhttp import JsonHandler

TOKEN_TTL = 300


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs use it."""
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def b64url_decode(text: str) -> bytes:
    """Inverse of b64url."""
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


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


SIGNER = Signer(os.path.join(STATE, 'auth', 'signing.key'), os.path.join(STATE, 'auth', 'signing.crt'))


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


class TokenService(JsonHandler):
    """``/token`` of the TLS front."""

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
        answer = SIGNER.issue(identity, parse_scopes(scopes))
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
