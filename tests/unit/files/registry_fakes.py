# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""Real stand-ins for what registry-supervisor talks to: an HTTP upstream in a thread that can be up, down (refusing
connections), hanging, resetting connections, refusing tokens or redirecting, and a fake `registry` binary (a small
Python program) that records how it was started, the signals it got and when it exited, listens on its ports like
distribution (and fails when a port is taken), and contacts the upstream at start in pull-through mode (exiting when it
cannot); a CA and a server certificate for HTTPS upstreams (certificates); and a storage directory whose free space
the test sets (FakeDisk). A supervisor runs with one mirror's files (SupervisorRun), or in group mode with several
(Mirror, GroupRun)."""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[3]
FILES = ROOT / "roles" / "registry_mirror" / "files"
SUPERVISOR = FILES / "registry-supervisor.py"
# The production timings shrunk so that a test takes a second or two.
FAST = {
    "probe_interval": 0.3,
    "probe_timeout": 0.3,
    "confirm_after": 0.15,
    "start_probe_timeout": 0.5,
    "switch_grace": 0.3,
    "switch_drain": 0.3,
    "start_grace": 1.0,
    "stop_timeout": 5,
    "bind_wait": 0.5,
    "poll_interval": 0.03,
    "challenge_timeout": 1,
    "token_timeout": 1,
}
# The supervisor's own requests (urllib's default agent); the fake registry's carry "fake-registry".
PROBE_AGENT = "Python-urllib"
# What the supervisor's journal lines start with, and the words of its switches.
PROG = "registry-supervisor: "
UNREACHABLE = "unreachable"
READ_ONLY_SWITCH = "serving the cache read-only without the proxy"
# How long a program just started (a supervisor, a group and its children) may take to have its registries listening:
# a guard against a hang, not a figure under test. On a busy 2-core machine, starting Python and importing the
# supervisor took 1.9 s, a fake registry's start 1.5 s more, and a group's first line came 4.5 s after its start.
STARTUP = 15.0
T = TypeVar("T")


def load_supervisor() -> types.ModuleType:
    """registry-supervisor as a module (its file name is not an importable name)."""
    name = "registry_supervisor"
    if str(FILES) not in sys.path:
        sys.path.insert(0, str(FILES))  # registry_cache, which it imports
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SUPERVISOR)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def basic(user: str, password: str) -> str:
    """The Authorization header of USER's Basic authentication."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def certificates(directory: Path, dns: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """A CA (its certificate) and a server certificate and key for 127.0.0.1 (and the names DNS) that it signed, made
    by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make certificates")
    names = ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem")
    ca_key, ca, key, request, cert = (directory / name for name in names)
    extensions = directory / "server.ext"
    alt_names = "".join(f",DNS:{name}" for name in dns)
    extensions.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                          f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1{alt_names}\n"
                          "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n", encoding="utf-8")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
            ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["req", "-new", *ec, "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", extensions]):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def gone(pid: int) -> bool:
    """Whether no process (not even a zombie its parent has not reaped) has PID."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """PROBE's first true answer within TIMEOUT seconds; fails the test naming WHAT otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class FakeUpstream:
    """A registry's /v2/ and a token service at /token on one loopback port.

    mode: "up" (answers: 200, or 401 with CHALLENGE), "down" (nothing listens: connections are refused, a request
    in flight is closed without an answer), "hang" (accepts and never answers until closed), "reset" (closes each
    connection without an answer), "fail_once" (resets the supervisor's next request, then is up again).

    With a CHALLENGE, /v2/ answers 200 to a request whose Authorization is one of the accounts (a Basic challenge's
    htpasswd, as a fleet's tier mirror); with TLS (a server context), it speaks HTTPS. A request whose path (without
    its query) is a key of REDIRECTS is answered with REDIRECT_STATUS and that value as its Location, the query kept."""

    def __init__(self, challenge: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.challenge = challenge
        self.accounts: set[str] = set()
        self.token_status = 200
        self.redirects: dict[str, str] = {}
        self.redirect_status = 302
        self.mode = "up"
        self.requests: list[dict[str, Any]] = []
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.listen()

    def listen(self) -> None:
        """Serve on the port (again)."""
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                upstream.handle(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:  # each connection's handshake in its own thread, at its first read
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, mode: str) -> float:
        """Switch to MODE; when (time.time()): every request recorded from then on is answered in MODE (each request
        takes its mode and its record at once)."""
        if mode == "down" and self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        elif mode != "down" and self.server is None:
            self.listen()
        with self.lock:
            self.mode = mode
            return time.time()

    def accept(self, user: str, password: str) -> None:
        """Answer 200 to /v2/ requests with USER and PASSWORD in Basic authentication."""
        self.accounts.add(basic(user, password))

    def close(self) -> None:
        """Release hanging requests and stop serving."""
        self.released.set()
        self.set("down")

    def probes(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The supervisor's requests to /v2/ since SINCE (time.time())."""
        with self.lock:
            return [r for r in self.requests if r["path"] == "/v2/" and r["agent"].startswith(PROBE_AGENT)
                    and r["t"] >= since]

    def tokens(self) -> list[dict[str, Any]]:
        """The requests to the token service."""
        with self.lock:
            return [r for r in self.requests if r["path"].startswith("/token")]

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        """Answer REQUEST as the mode says."""
        agent = request.headers.get("User-Agent", "")
        auth = request.headers.get("Authorization")
        with self.lock:  # the mode it is answered in is the one recorded, whatever set() does meanwhile
            mode = self.mode
            if mode == "fail_once" and agent.startswith(PROBE_AGENT):
                self.mode, mode = "up", "reset"
            self.requests.append({"t": time.time(), "path": request.path, "agent": agent,
                                  "auth": request.headers.get("Authorization"), "cookie": request.headers.get("Cookie"),
                                  "mode": mode})
        if mode == "hang":
            self.released.wait(30)
            return
        if mode in ("reset", "down"):  # "down": it went away while this request was in flight
            request.close_connection = True
            return
        headers: dict[str, str] = {}
        path, query = request.path.partition("?")[::2]
        if path in self.redirects:
            status, body = self.redirect_status, "{}"
            headers = {"Location": self.redirects[path] + (f"?{query}" if query else "")}
        elif request.path.startswith("/token"):
            status, body = self.token_status, json.dumps({"token": "t", "access_token": "t"})
        elif self.challenge is None or auth in self.accounts:
            status, body = 200, "{}"
        else:
            status, body, headers = 401, "{}", {"WWW-Authenticate": self.challenge}
        request.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body.encode())


# How the fake registry was started, recorded by a shell in a millisecond: a registry replaced right after its start
# (the upstream refuses at once) gets SIGTERM before a Python program would have started.
FAKE_REGISTRY_WRAPPER = r'''#!/bin/sh
env=""
for name in REGISTRY_PROXY_REMOTEURL REGISTRY_STORAGE_MAINTENANCE REGISTRY_HTTP_DEBUG_ADDR REGISTRY_PROXY_USERNAME \
        REGISTRY_PROXY_PASSWORD LISTEN_FDS SSL_CERT_DIR REGISTRY_NOTIFICATIONS_ENDPOINTS; do
    eval "isset=\${$name+1} value=\${$name-}"
    if [ -n "$isset" ]; then env="$env${env:+, }\"$name\": \"$value\""; fi
done
printf '{"event": "start", "pid": %s, "t": %s, "argv": ["%s", "%s", "%s"], "env": {%s}}\n' \
    "$$" "$(date +%s.%N)" "$0" "$1" "$2" "$env" >>"$FAKE_REGISTRY_LOG"
exec "$FAKE_REGISTRY_PYTHON" -S "$0.py" "$@"
'''

FAKE_REGISTRY = r'''
import os, signal, sys, time
state = {"serving": False, "term": False}


def record(event, **details):
    import json
    with open(os.environ["FAKE_REGISTRY_LOG"], "a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(event=event, pid=os.getpid(), t=time.time(), **details)) + "\n")


def on_term(signum, _frame):
    record("signal", signal=signum)
    state["term"] = True
    if not state["serving"]:  # still starting: nothing to drain
        record("exit", status=0)
        os._exit(0)


signal.signal(signal.SIGTERM, on_term)
record("environ", names=sorted(os.environ))
import json, socket, urllib.error, urllib.request

with open(sys.argv[2], encoding="utf-8") as handle:
    CONFIG = json.load(handle)


def listen(addr):
    host, port = addr.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen()
    return sock


remote = os.environ.get("REGISTRY_PROXY_REMOTEURL", CONFIG["upstream"])
if remote:  # like distribution in pull-through mode: learn the upstream's challenge, or panic
    request = urllib.request.Request(remote + "/v2/", headers={"User-Agent": "fake-registry"})
    try:
        urllib.request.urlopen(request, timeout=CONFIG["upstream_timeout"]).close()
    except urllib.error.HTTPError:
        pass
    except OSError as exc:
        record("panic", reason=str(exc))
        record("exit", status=2)
        sys.exit(2)
debug_addr = os.environ.get("REGISTRY_HTTP_DEBUG_ADDR", CONFIG["debug_addr"])
try:
    if os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid()):
        listener = socket.socket(fileno=3)  # socket activation, as distribution 3.x supports it
        record("activated", addr="%s:%d" % listener.getsockname()[:2])
    else:
        listener = listen(CONFIG["addr"])
    debug = listen(debug_addr) if debug_addr else None
except OSError as exc:
    record("bind-failed", reason=str(exc))
    record("exit", status=1)
    sys.exit(1)
record("listening", debug=debug_addr)
state["serving"] = True
endpoints = os.environ.get("REGISTRY_NOTIFICATIONS_ENDPOINTS")
if endpoints is not None:  # as distribution logs its notification endpoints at level info: headers and all
    os.write(2, b'level=info msg="configuring endpoints %s"\n' % endpoints.encode())
for number in range(CONFIG.get("chatter", 0)):  # log lines, to stdout and stderr by turns, each in one write
    os.write(1 + number % 2, b"chatter %d %s\n" % (number, b"x" * (number % 200)))


def wedged():
    """Whether this registry is wedged: CONFIG's wedge file names its pid (or "*")."""
    try:
        with open(CONFIG.get("wedge", ""), encoding="utf-8") as handle:
            names = handle.read().split()
    except OSError:
        return False
    return str(os.getpid()) in names or "*" in names


def answer(conn):
    """One request per connection (a line), answered with this registry's pid; like Go's net/http in distribution,
    a request read after SIGTERM is dropped unanswered, even the first of a connection accepted before it. Wedged,
    it accepts connections and never answers them (nor closes them)."""
    if wedged():
        record("wedged")
        held.append(conn)
        return
    try:
        conn.settimeout(2)
        if conn.recv(64):
            if state["term"]:
                record("dropped")
            else:
                conn.sendall(b"%d\n" % os.getpid())
    except OSError:
        pass
    finally:
        conn.close()


import threading
held = []
listener.settimeout(0.02)
while not state["term"]:  # accept connections until SIGTERM, as distribution stops accepting then
    try:
        connection = listener.accept()[0]
    except OSError:  # the timeout, or a connection another registry sharing the socket took first
        continue
    threading.Thread(target=answer, args=(connection,), daemon=True).start()
listener.close()  # new connections go to the next registry at once; the debug port is held until the exit
time.sleep(CONFIG["drain"])
record("exit", status=0)
'''


class FakeDisk:
    """A storage directory whose filesystem has as much free space as the test says: the supervisor runs under a
    launcher that answers os.statvfs for this one directory from a file (every other path gets the real answer), and
    records each such call. IN_ENVIRONMENT: the supervisor's environment names it, as a systemd drop-in that moves the
    storage does (REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY)."""

    def __init__(self, tmp_path: Path, free_mb: float, in_environment: bool = False) -> None:
        self.in_environment = in_environment
        self.path = tmp_path / "storage"
        self.path.mkdir()
        self.control = tmp_path / "storage.free"
        self.log = tmp_path / "storage.statvfs"
        self.set(free_mb)

    def set(self, free_mb: float) -> None:
        """From now on, FREE_MB MiB are free."""
        staged = self.control.with_suffix(".new")
        staged.write_text(str(int(free_mb * 1024 * 1024)), encoding="utf-8")
        staged.replace(self.control)  # the supervisor never reads half a number

    def checks(self) -> int:
        """How many times the supervisor asked for this directory's free space."""
        try:
            return len(self.log.read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return 0

    def env(self) -> dict[str, str]:
        """What the launcher needs to know, and the storage directory for the supervisor if IN_ENVIRONMENT."""
        env = {"FAKE_DISK_DIR": str(self.path), "FAKE_DISK_FREE": str(self.control), "FAKE_DISK_LOG": str(self.log)}
        if self.in_environment:
            env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = str(self.path)
        return env


# Runs registry-supervisor (argv[1], its settings argv[2]) as __main__ with os.statvfs answering from FAKE_DISK_FREE
# (bytes) for FAKE_DISK_DIR only. Fragments (f_frsize) are 4 KiB and blocks (f_bsize) 1 MiB: only f_bavail * f_frsize
# is the space an unprivileged user may still write.
DISK_LAUNCHER = r'''
import os, runpy, sys
real_statvfs = os.statvfs
disk = os.path.realpath(os.environ["FAKE_DISK_DIR"])


def statvfs(path):
    if isinstance(path, int) or os.path.realpath(path) != disk:
        return real_statvfs(path)
    with open(os.environ["FAKE_DISK_LOG"], "a", encoding="utf-8") as log:
        log.write("statvfs\n")
    with open(os.environ["FAKE_DISK_FREE"], encoding="utf-8") as handle:
        fragments = int(handle.read()) // 4096
    return os.statvfs_result((1 << 20, 4096, 1 << 30, fragments + 1280, fragments, 1 << 20, 1 << 19, 1 << 19, 0, 255))


os.statvfs = statvfs
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as when it runs itself: registry_cache beside it
runpy.run_path(sys.argv[0], run_name="__main__")
'''


class RegistryLog:
    """What the fake registries that record to LOG did (start, listening, signal, exit...), each record with its pid."""

    log: Path

    def events(self, event: str | None = None, pid: int | None = None) -> list[dict[str, Any]]:
        """The fake registries' records, oldest first."""
        try:
            text = self.log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        # Whole records only: a registry may be writing its next one (each ends with a newline) as the test reads.
        records = [json.loads(line) for line in text.split("\n")[:-1]]
        return [r for r in records if (event is None or r["event"] == event) and (pid is None or r["pid"] == pid)]

    def starts(self) -> list[dict[str, Any]]:
        """How each registry was started: pull-through or read-only, and its environment."""
        return self.events("start")

    def first(self, event: str, pid: int) -> dict[str, Any] | None:
        """PID's first EVENT record."""
        found = self.events(event, pid)
        return found[0] if found else None

    def serving(self, count: int = 1, timeout: float = STARTUP) -> dict[str, Any]:
        """The start record of the COUNT-th registry, once it listens."""
        def listening() -> dict[str, Any] | None:
            starts = self.starts()
            return starts[count - 1] if len(starts) >= count and self.first("listening", starts[count - 1]["pid"]) \
                else None
        return wait_for(f"registry #{count} to listen", listening, timeout)


class Mirror(RegistryLog):
    """A mirror's files in DIRECTORY: a fake registry (recording to DIRECTORY/registry.log), its config (its own
    address, its upstream) and the supervisor's settings (supervisor.json), FAST timings unless SETTINGS say."""

    def __init__(self, directory: Path, upstream: FakeUpstream, *, drain: float = 0.0, metrics: bool = False,
                 chatter: int = 0, **settings: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "registry.log"
        binary = directory / "registry"
        own_log = f"#!/bin/sh\nFAKE_REGISTRY_LOG='{self.log}'; export FAKE_REGISTRY_LOG\n"
        binary.write_text(FAKE_REGISTRY_WRAPPER.replace("#!/bin/sh\n", own_log, 1), encoding="utf-8")
        binary.chmod(0o755)
        (directory / "registry.py").write_text(FAKE_REGISTRY, encoding="utf-8")
        self.debug_addr = f"127.0.0.1:{free_port()}" if metrics else ""
        self.config = directory / "config.json"
        self.addr = f"127.0.0.1:{free_port()}"
        if settings.pop("activation", False):  # the supervisor listens, and hands the socket to each registry
            settings["listen"] = self.addr
        # Wedge file: a registry whose pid it names (or "*") accepts connections and never answers them.
        self.wedge = directory / "wedge"
        config = {"addr": self.addr, "debug_addr": self.debug_addr, "upstream": upstream.url, "upstream_timeout": 2,
                  "drain": drain, "wedge": str(self.wedge)}
        if chatter:  # CHATTER lines of the registry's own once it listens ("chatter NUMBER xxx...")
            config["chatter"] = chatter
        self.config.write_text(json.dumps(config), encoding="utf-8")
        values = {"_comment": "test", "binary": str(binary), "config": str(self.config), "upstream": upstream.url + "/",
                  "version": "3.1.1", "metrics": metrics, "listen_tls": False, **FAST, **settings}
        self.settings = directory / "supervisor.json"
        self.settings.write_text(json.dumps(values), encoding="utf-8")


class Journal:
    """A program started with stderr=PIPE (proc), and the lines it writes there, read as they come."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))

    def journal(self) -> str:
        """What the supervisor wrote (to the journal, under systemd)."""
        return "\n".join(line for _time, line in self.lines)

    def journal_lines(self) -> list[str]:
        """What the supervisor wrote, line by line."""
        return [line for _time, line in self.lines]

    def said(self, text: str) -> float | None:
        """When the supervisor first wrote a line containing TEXT."""
        return next((t for t, line in self.lines if text in line), None)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, as systemd stops the unit; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


class SupervisorRun(Mirror, Journal):
    """registry-supervisor running as a program with a fake registry and an upstream, and what happened."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream, *, drain: float = 0.0, metrics: bool = False,
                 credentials: tuple[str, str] | None = ("mirror-user", "s3cret"), **settings: Any) -> None:
        super().__init__(tmp_path, upstream, drain=drain, metrics=metrics, **settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(FAKE_REGISTRY_LOG=str(self.log), FAKE_REGISTRY_PYTHON=sys.executable)
        if credentials:
            env.update(REGISTRY_PROXY_USERNAME=credentials[0], REGISTRY_PROXY_PASSWORD=credentials[1])
        self.lines = []
        self.started = time.time()
        self.proc = subprocess.Popen(self.command(env), env=env, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def command(self, _env: dict[str, str]) -> list[str]:
        """The supervisor's command line (ENV: its environment, to add to)."""
        return [sys.executable, str(SUPERVISOR), str(self.settings)]


class GroupRun(Journal):
    """registry-supervisor in group mode with the settings files of MIRRORS (the first the primary), or SETTINGS; its
    environment is the test's without REGISTRY_* variables, plus ENV. What it writes to stdout is kept too (stdout)."""

    def __init__(self, mirrors: list[Mirror], env: dict[str, str] | None = None,
                 settings: list[Path] | None = None) -> None:
        variables = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        variables.update(FAKE_REGISTRY_PYTHON=sys.executable, **(env or {}))
        self.lines = []
        self.stdout: list[str] = []
        self.started = time.time()
        paths = settings if settings is not None else [mirror.settings for mirror in mirrors]
        self.proc = subprocess.Popen([sys.executable, str(SUPERVISOR), *map(str, paths)], env=variables,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        self.stdout.extend(self.proc.stdout)


class SupervisorOnDisk(SupervisorRun):
    """A SupervisorRun whose os.statvfs answers for DISK's directory from the test's figure."""

    def __init__(self, tmp_path: Path, upstream: FakeUpstream, disk: FakeDisk, **options: Any) -> None:
        self.disk = disk
        super().__init__(tmp_path, upstream, **options)

    def command(self, env: dict[str, str]) -> list[str]:
        env.update(self.disk.env())
        return [sys.executable, "-c", DISK_LAUNCHER, *super().command(env)[1:]]


def start_supervisor(runs: list[SupervisorRun], tmp_path: Path, upstream: FakeUpstream, disk: FakeDisk | None = None,
                     **settings: Any) -> SupervisorRun:
    """A supervisor of one mirror in TMP_PATH pulling through UPSTREAM, on DISK's free space if given, with SETTINGS
    on top of the FAST ones; stopped after the test (RUNS: the runs fixture)."""
    supervisor = (SupervisorOnDisk(tmp_path, upstream, disk, **settings) if disk
                  else SupervisorRun(tmp_path, upstream, **settings))
    runs.append(supervisor)
    return supervisor


# The header of the supervisor's notification secret, which each registry gets in REGISTRY_NOTIFICATIONS_ENDPOINTS.
EVENTS_SECRET_HEADER = "X-Registry-Supervisor-Secret"


def events_secret(start: dict[str, Any]) -> str:
    """The notification secret the registry of START got (as distribution reads it: the endpoint's header)."""
    endpoints = start["env"]["REGISTRY_NOTIFICATIONS_ENDPOINTS"]
    marker = EVENTS_SECRET_HEADER + ": ['"
    return str(endpoints[endpoints.index(marker) + len(marker):].split("'", 1)[0])


def pull_through(start: dict[str, Any]) -> bool:
    """Whether a registry was started in pull-through mode (the config's proxy section in effect)."""
    return "REGISTRY_PROXY_REMOTEURL" not in start["env"]


def read_only(start: dict[str, Any]) -> bool:
    """Whether a registry was started read-only without the proxy and without the upstream credentials."""
    env = start["env"]
    return (env.get("REGISTRY_PROXY_REMOTEURL") == "" and "readonly" in env.get("REGISTRY_STORAGE_MAINTENANCE", "")
            and "REGISTRY_PROXY_USERNAME" not in env and "REGISTRY_PROXY_PASSWORD" not in env)
