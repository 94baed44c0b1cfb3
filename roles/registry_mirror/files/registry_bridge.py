# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The registries' unix sockets behind a caching front: binding one and removing it (registry-supervisor's), and the
bridge (`registry-supervisor --bridge SETTINGS.json ...`) that serves them while a front is being turned on.

Turning the front on changes where distribution listens: from the mirror's port on the bridge to a unix socket that
the front (nginx) connects to. systemd restarts a unit by stopping it first, so the registry that will serve the socket
starts only once the one serving the port has drained, and a front started before it would answer every manifest it
has not cached (all of them, the first time) with an error. The role runs this bridge, as a transient unit, before
that restart: one registry per mirror, read-only from the cache (no proxy, no upstream credentials, storage read-only:
nothing is written beside the registry that still pulls through), each on the unix socket its mirror's settings name.
The front then starts beside the running registry (SO_REUSEPORT), the registry restarts into its new settings, and its
supervisor binds a new socket at each path (bind_unix replaces a socket file): new connections queue there until its
registry accepts them. At SIGTERM the bridge waits (up to each mirror's bind_wait) until every path has been taken
over that way, then stops its registries, which finish what they accepted; SIGINT stops them at once (a rollback).

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import threading
import time
import types
from stat import S_ISSOCK

from registry_journal import say
from registry_settings import Settings, unix_path

# Starts the registry with the listening socket (file descriptor $1) as descriptor 3 and the socket-activation
# variables naming the registry's own process ($$: the shell's process, which exec turns into the registry).
LAUNCHER = ('fd=$1; shift; [ "$fd" = 3 ] || { eval "exec 3<&$fd $fd<&-"; }; '
            'LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec "$@"')
# The listening socket's queue: connections that arrive while one registry replaces another wait there.
LISTEN_BACKLOG = 1024
# A unix socket's mode: the front (nginx, the same user) connects, nobody else.
UNIX_SOCKET_MODE = 0o660
# Read-only mode: the same config without the proxy section, storage read-only, no upstream credentials.
LOCAL_ENV = {
    "REGISTRY_PROXY_REMOTEURL": "",
    "REGISTRY_STORAGE_MAINTENANCE": "{readonly: {enabled: true}}",
}
# The one REGISTRY_* variable a bridged registry keeps from the bridge's environment: where its storage is (a drop-in
# may move it). Every other (credentials, notification endpoints) is left out.
STORAGE_ENV = "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"
# How often the bridge looks whether the registry has taken its sockets over.
TAKE_OVER_POLL = 0.05


def bind_unix(path: str) -> socket.socket:
    """A unix stream socket listening at PATH, mode UNIX_SOCKET_MODE. A socket already there (a stale one: a
    supervisor that was killed leaves its own; the bridge's, which the registry takes over) is replaced; anything
    else there (a file, a directory, a symbolic link, never followed) is left as it is: OSError, as distribution
    does."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not S_ISSOCK(mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket (left as it is)", path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Before listen: until then a connection is refused whatever the mode (bind's follows the umask).
        os.chmod(path, UNIX_SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def socket_file(path: str) -> tuple[int, int] | None:
    """The socket file at PATH (device, inode); None when there is none (or something else is there)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if S_ISSOCK(info.st_mode) else None


def listened_on(path: str) -> bool:
    """Whether something accepts connections on the unix socket at PATH (a registry already serves it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def remove_unix_socket(path: str, bound: tuple[int, int]) -> None:
    """Remove the socket file at PATH if it is still the one bound there (device and inode BOUND)."""
    with contextlib.suppress(OSError):  # gone already, or its directory
        if socket_file(path) == bound:
            os.unlink(path)


def bridged_environment(parent: dict[str, str]) -> dict[str, str]:
    """A bridged registry's environment: PARENT's without any REGISTRY_* variable but the storage's, read-only
    without the proxy (LOCAL_ENV), without its debug listener (the registry being replaced holds that port)."""
    env = {name: value for name, value in parent.items() if not name.startswith("REGISTRY_") or name == STORAGE_ENV}
    env.update(LOCAL_ENV)
    env["REGISTRY_HTTP_DEBUG_ADDR"] = ""
    return env


def notify_ready() -> None:
    """Tell systemd the bridge serves (Type=notify: systemd-run returns then), when it runs under systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


class Bridged:
    """One mirror the bridge serves: its settings, its socket (and the file bound for it) and its registry."""

    def __init__(self, settings: Settings, path: str) -> None:
        self.settings = settings
        self.path = path
        self.sock = bind_unix(path)
        self.bound = socket_file(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        """The registry, read-only, with the socket as its descriptor 3 (socket activation)."""
        fd = self.sock.fileno()
        self.proc = subprocess.Popen(["/bin/sh", "-c", LAUNCHER, "registry-bridge", str(fd), self.settings.binary,
                                      "serve", self.settings.config], env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL)

    def taken_over(self) -> bool:
        """Whether another socket (the restarted registry's) is at the path now."""
        return socket_file(self.path) != self.bound

    def close(self) -> None:
        """Let go of the socket; its file goes if nothing took the path over."""
        self.sock.close()
        if self.bound is not None:
            remove_unix_socket(self.path, self.bound)


class Bridge:
    """`registry-supervisor --bridge`: the registries of SETTINGS that listen on a unix socket, read-only, until
    SIGTERM (once the registry has taken the sockets over) or SIGINT (at once)."""

    def __init__(self, settings: list[Settings]) -> None:
        self.settings = settings
        self.members: list[Bridged] = []
        self.signalled = threading.Event()
        self.at_once = False

    def on_signal(self, signum: int, _frame: types.FrameType | None) -> None:
        """SIGTERM: hand over, then stop; SIGINT: stop now."""
        if signum == signal.SIGINT:
            self.at_once = True
        self.signalled.set()

    def run(self) -> int:
        """Serve until a signal; 0 once every registry has exited, 1 when a socket could not be bound."""
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        env = bridged_environment(dict(os.environ))
        try:
            for settings in self.settings:
                path = unix_path(settings.listen)
                if not path:
                    say(f"bridge: {settings.config} listens on {settings.listen}, not on a unix socket: not bridged")
                    continue
                if listened_on(path):  # the registry serves the front already: never taken from it
                    say(f"bridge: unix:{path} is served already: not bridged")
                    continue
                try:
                    member = Bridged(settings, path)
                except OSError as exc:
                    say(f"ERROR: bridge: cannot listen on unix:{path} ({exc.strerror or exc})")
                    return 1
                self.members.append(member)
                member.start(env)
            notify_ready()
            say("bridge: serving the cache read-only on " + (", ".join(f"unix:{m.path}" for m in self.members) or
                                                             "no socket") + " until the registry takes over")
            while not self.signalled.wait(0.5):
                pass
            if not self.at_once:
                self.wait_for_take_over()
            return 0
        finally:
            self.stop()

    def wait_for_take_over(self) -> None:
        """Until each socket has been taken over, at most its mirror's bind_wait seconds (SIGINT ends the wait);
        said for each."""
        started = time.monotonic()
        waiting = list(self.members)
        while waiting and not self.at_once:
            for member in list(waiting):
                if member.taken_over():
                    say(f"bridge: unix:{member.path} taken over by the registry")
                    waiting.remove(member)
                elif time.monotonic() - started >= member.settings.bind_wait:
                    say(f"bridge: unix:{member.path} not taken over within {member.settings.bind_wait:g} s: "
                        "stopping anyway")
                    waiting.remove(member)
            time.sleep(TAKE_OVER_POLL)

    def stop(self) -> None:
        """Close the sockets (new connections go to the registry that took them over), then stop the registries:
        SIGTERM, and what still runs after its mirror's stop_timeout is killed."""
        for member in self.members:
            member.close()
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.proc is None:
                continue
            try:
                member.proc.wait(timeout=member.settings.stop_timeout)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()
        say("bridge: stopped")
