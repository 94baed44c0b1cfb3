# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's group mode: one child supervisor per mirror (per SETTINGS file) under the one unit, each
with only its own credentials, restarted after a back-off when it exits; and the check of the credentials file
(`registry-supervisor --check-env`).

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import typing
from collections.abc import Mapping

from registry_journal import PROG, relay_line, say
from registry_settings import CREDENTIAL_ENV, MIRROR_CREDENTIAL_ENV, Settings, SettingsError

# Group mode: a child that exits is restarted after BACKOFF_MIN seconds, doubled at each exit up to BACKOFF_MAX, and
# BACKOFF_MIN again once a child ran BACKOFF_RESET seconds. GROUP_TICK: how often the children are looked at (and how
# soon SIGTERM ends a back-off). At stop, the children get the largest stop_timeout plus GROUP_STOP_MARGIN seconds.
BACKOFF_MIN = 2.0
BACKOFF_MAX = 60.0
BACKOFF_RESET = 60.0
GROUP_TICK = 0.1
GROUP_STOP_MARGIN = 5.0


def child_environment(parent: Mapping[str, str], settings: Settings, primary: bool) -> tuple[dict[str, str], str]:
    """The environment of a child supervisor in group mode, and what to say about its credentials ("": nothing). The
    PRIMARY's is PARENT's without the other mirrors' credentials; another's has none of PARENT's REGISTRY_* variables
    (the unit's credentials and overrides are the primary's), but its own credentials when its settings name them.
    Each gets the PREFIX_USERNAME / PREFIX_PASSWORD its fallbacks name as they are (its supervisor hands them to its
    registry while it pulls through that fallback)."""
    fallbacks = {f"{fallback.credentials}_{part}" for fallback in settings.fallbacks if fallback.credentials
                 for part in ("USERNAME", "PASSWORD")}
    if primary:
        return {name: value for name, value in parent.items()
                if not MIRROR_CREDENTIAL_ENV.fullmatch(name) or name in fallbacks}, ""
    env = {name: value for name, value in parent.items() if not name.startswith("REGISTRY_") or name in fallbacks}
    if not settings.credentials:
        return env, ""
    names = [f"{settings.credentials}_{part}" for part in ("USERNAME", "PASSWORD")]
    values = [parent.get(name, "") for name in names]
    if not all(values):
        unset = " and ".join(name for name, value in zip(names, values) if not value)
        return env, f"{unset} not set in the unit's environment: pulling from the upstream anonymously"
    env.update(zip(CREDENTIAL_ENV, values))
    return env, ""


class Member:
    """One mirror of a group: its settings, its child supervisor, and when to start that again."""

    def __init__(self, path: str, settings: Settings, parent: Mapping[str, str], primary: bool) -> None:
        self.path, self.settings = path, settings
        self.env, self.note = child_environment(parent, settings, primary)
        self.label = settings.name or path
        self.proc: subprocess.Popen[bytes] | None = None
        self.relay: threading.Thread | None = None
        self.started = 0.0  # time.monotonic()
        self.restart_at = 0.0
        self.backoff = BACKOFF_MIN

    def tell(self, message: str) -> None:
        """A line of the group's own about this mirror."""
        relay_line(f"[{self.label}] {PROG}: {message}")


def relay(label: str, stream: typing.IO[bytes]) -> None:
    """Copy STREAM (a child's output) to the journal line by line, each prefixed with [LABEL]."""
    with stream:
        for raw in iter(stream.readline, b""):
            relay_line(f"[{label}] " + raw.decode("utf-8", "replace").rstrip("\n"))


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill whatever is left of PROC's process group (PROC and the registries it started)."""
    with contextlib.suppress(OSError):  # nothing left
        os.killpg(proc.pid, signal.SIGKILL)


class Group:
    """Runs one child supervisor (PROGRAM) per mirror until systemd stops the unit, restarting each that exits."""

    def __init__(self, members: list[Member], program: str) -> None:
        self.members = members
        self.program = program  # the supervisor, run with one member's settings file
        self.stopping = False
        self.collect_requested = False

    def on_term(self, _signum: int, _frame: types.FrameType | None) -> None:
        """systemd stops the unit (KillMode=mixed: the children hear it from here)."""
        self.stopping = True

    def on_usr1(self, _signum: int, _frame: types.FrameType | None) -> None:
        """An operator asks every mirror for a collection now."""
        self.collect_requested = True

    def run(self) -> int:
        """Supervise the children until SIGTERM; always 0: no child's failure is the group's."""
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGUSR1, self.on_usr1)
        say(f"{len(self.members)} mirrors, a supervisor each: {', '.join(member.label for member in self.members)}")
        for member in self.members:
            if member.note:
                member.tell(member.note)
        try:
            while not self.stopping:
                if self.collect_requested:
                    self.collect_requested = False
                    self.signal_all(signal.SIGUSR1)
                for member in self.members:
                    if member.proc is None:
                        if time.monotonic() >= member.restart_at and not self.stopping:
                            self.start(member)
                    elif member.proc.poll() is not None:
                        self.exited(member)
                time.sleep(GROUP_TICK)
        finally:
            self.stop_all()
        return 0

    def start(self, member: Member) -> None:
        """Start MEMBER's child supervisor (its own process group: what it leaves behind can be killed). It starts
        with SIGUSR1 ignored, until it handles it: SIGUSR1's default action would end it."""
        member.started = time.monotonic()
        handler = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            member.proc = subprocess.Popen([sys.executable, self.program, member.path], env=member.env,
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            member.tell(f"cannot start the mirror's supervisor ({exc})")
            self.schedule(member)
            return
        finally:
            signal.signal(signal.SIGUSR1, handler)
        assert member.proc.stdout is not None
        member.relay = threading.Thread(target=relay, args=(member.label, member.proc.stdout), daemon=True)
        member.relay.start()

    def exited(self, member: Member) -> None:
        """MEMBER's child supervisor exited: say so after its last lines, and start it again after the back-off."""
        assert member.proc is not None
        kill_group(member.proc)  # a registry a crashed supervisor left would hold the mirror's port and the pipe
        if member.relay is not None:
            member.relay.join(timeout=1)
        status = member.proc.returncode
        member.proc = member.relay = None
        delay = self.schedule(member)
        member.tell(f"the mirror's supervisor exited with status {status}; restarting in {delay:g} s")

    def schedule(self, member: Member) -> float:
        """When MEMBER starts again: the back-off, reset by a long enough run, then doubled for the next time."""
        if time.monotonic() - member.started >= BACKOFF_RESET:
            member.backoff = BACKOFF_MIN
        delay = member.backoff
        member.backoff = min(delay * 2, BACKOFF_MAX)
        member.restart_at = time.monotonic() + delay
        return delay

    def signal_all(self, signum: int) -> None:
        """Send SIGNUM to every child supervisor that runs (not to its registries: they hear from it)."""
        for member in self.members:
            if member.proc is not None:
                member.proc.send_signal(signum)  # nothing when it has exited

    def stop_all(self) -> None:
        """Stop every child (each stops its registries); kill what still runs after the largest stop_timeout plus a
        margin."""
        self.signal_all(signal.SIGTERM)
        limit = max(member.settings.stop_timeout for member in self.members) + GROUP_STOP_MARGIN
        deadline = time.monotonic() + limit
        for member in self.members:
            if member.proc is None:
                continue
            try:
                member.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.tell(f"still running {limit:g} s after SIGTERM: killed")
            kill_group(member.proc)
            member.proc.wait()
        for member in self.members:
            if member.relay is not None:
                member.relay.join(timeout=1)


# A line of a credentials file the role writes for systemd (EnvironmentFile=): NAME="VALUE", the value without what
# systemd would interpret inside double quotes or anything that could end the line.
ENV_ASSIGNMENT = re.compile(r'([A-Z][A-Z0-9_]*)="[^"\\$`\x00-\x1f\x7f]*"')


def check_env_file(path: str) -> None:
    """Check a credentials file (proxy.env) before it replaces the live one: comments, blank lines and NAME="VALUE"
    lines of the credentials this program reads (CREDENTIAL_ENV, MIRROR_CREDENTIAL_ENV), each once, each user name with
    its password. Raises SettingsError naming the line or variable, never a value."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    names: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        match = ENV_ASSIGNMENT.fullmatch(line)
        if not match:
            raise SettingsError(f'{path}: line {number} is not NAME="VALUE" with a value free of quotes, backslashes, '
                                "dollar signs, backticks and control characters (its value is not shown)")
        name = match.group(1)
        if name not in CREDENTIAL_ENV and not MIRROR_CREDENTIAL_ENV.fullmatch(name):
            raise SettingsError(f"{path}: line {number} sets {name}, which is not a credential {PROG} reads")
        if name in names:
            raise SettingsError(f"{path}: line {number} sets {name} again")
        names.append(name)
    for name in names:
        stem, _sep, half = name.rpartition("_")
        partner = f"{stem}_{'PASSWORD' if half == 'USERNAME' else 'USERNAME'}"
        if partner not in names:
            raise SettingsError(f"{path}: {name} is set without {partner}")


def load_group(paths: list[str], parent: Mapping[str, str]) -> list[Member] | None:
    """The mirrors of group mode, the first file the primary; None when a file is invalid (said, each)."""
    members: list[Member] = []
    for index, path in enumerate(paths):
        try:
            members.append(Member(path, Settings.load(path), parent, primary=index == 0))
        except SettingsError as exc:
            message = str(exc)
            say(f"ERROR: {message if path in message else f'{path}: {message}'}")
    return members if len(members) == len(paths) else None
