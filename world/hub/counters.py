# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The fake registry's run-time configuration and counters (per identity, per blob, per release file, the recent
requests), shared by every request thread; saved before a restart of the container and restored after it."""

from __future__ import annotations

import collections
import hmac
import json
import os
import threading

from hubconf import ALLOW_ANONYMOUS, PASSWORD, RATE_LIMIT, RECENT_MAX, USERNAME, log, utc_now


class World:
    """Run-time configuration and counters, shared by all request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config = {'rate_limit': RATE_LIMIT, 'anonymous': ALLOW_ANONYMOUS}
        self.username = USERNAME
        self.password = PASSWORD
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
        log(f'front: counters and config restored from {path}')

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
