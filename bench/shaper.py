# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""An emulated internet link in user space: a TCP proxy that adds latency and caps bandwidth.

The kernel here has no netem, so the benchmark puts this proxy between the clients (and the mirror) and the fake
Docker Hub. It forwards bytes unchanged (TLS passes through: clients still verify the hub's certificate).

Model (documented in bench/README.md):

* Latency: every chunk is delivered RTT/2 after it was read, in each direction. A new connection waits one RTT
  before its first byte is forwarded (the TCP handshake a real link would cost; the local accept is instant).
* Bandwidth: one token bucket per direction, shared by every connection (one access link, e.g. 100 Mbit/s, not a
  cap per connection). The bucket admits bytes when they are read; a short burst (64 KiB) is allowed.

Usage: ``python3 shaper.py --forward 443=192.168.130.100:443 --rtt-ms 40 --mbit 100``.
Standard library only (it runs in the test world's client image). SIGTERM stops it and prints its counters; SIGUSR1
writes them (with a sequence number that grows at each signal) to the --stats file, atomically: the benchmark reads the
bytes that crossed the link in each direction, i.e. the WAN bytes of a measurement, as the difference of two readings.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import sys
import time

CHUNK = 64 * 1024
QUEUE_CHUNKS = 512  # at most 32 MiB in flight per direction and connection


class Bucket:
    """A token bucket (virtual scheduling): admits `rate` bytes per second, with a burst of `burst` bytes."""

    def __init__(self, mbit: float, burst: int = 64 * 1024) -> None:
        self.rate = mbit * 1e6 / 8  # bytes per second; 0 = unlimited
        self.burst_s = burst / self.rate if self.rate else 0.0
        self.tat = 0.0  # theoretical arrival time of the next byte
        self.bytes = 0

    async def take(self, size: int) -> None:
        """Wait until SIZE bytes may pass."""
        self.bytes += size
        if not self.rate:
            return
        now = time.monotonic()
        self.tat = max(self.tat, now) + size / self.rate
        wait = self.tat - now - self.burst_s
        if wait > 0:
            await asyncio.sleep(wait)


class Link:
    """One direction pair (up, down) of the emulated link and its counters."""

    def __init__(self, rtt_ms: float, mbit: float) -> None:
        self.one_way = rtt_ms / 2000.0
        self.rtt = rtt_ms / 1000.0
        self.up = Bucket(mbit)
        self.down = Bucket(mbit)
        self.connections = 0
        self.active = 0
        self.errors = 0
        self.seq = 0

    def stats(self) -> dict[str, float | int]:
        """Counters for the log."""
        return {"connections": self.connections, "active": self.active, "errors": self.errors,
                "bytes_up": self.up.bytes, "bytes_down": self.down.bytes}

    def write_stats(self, path: str) -> None:
        """The counters and a new sequence number, to PATH (atomically: a reader never sees half a file)."""
        self.seq += 1
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"seq": self.seq, **self.stats()}, handle)
        os.replace(tmp, path)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: Bucket, delay: float) -> None:
    """Copy one direction: admit by the bucket, then deliver each chunk DELAY seconds after it was read."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS)

    async def produce() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                await queue.put(None)
                return
            await bucket.take(len(data))
            await queue.put((time.monotonic() + delay, data))

    async def consume() -> None:
        while True:
            item = await queue.get()
            if item is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    await asyncio.gather(produce(), consume())


async def handle(link: Link, target: tuple[str, int], client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter) -> None:
    """One client connection: wait the handshake RTT, connect to the target, shape both directions."""
    link.connections += 1
    link.active += 1
    server_w = None
    try:
        await asyncio.sleep(link.rtt)
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(pump(client_r, server_w, link.up, link.one_way),
                             pump(server_r, client_w, link.down, link.one_way))
    except (OSError, asyncio.IncompleteReadError):
        link.errors += 1
    finally:
        link.active -= 1
        for w in (client_w, server_w):
            if w is not None:
                w.close()


async def serve(forwards: list[tuple[int, tuple[str, int]]], link: Link, stats: str) -> None:
    """Listen on every forwarded port until SIGTERM/SIGINT; SIGUSR1 writes the counters to STATS."""
    servers = []
    for port, target in forwards:
        server = await asyncio.start_server(functools.partial(handle, link, target),
                                            "0.0.0.0", port, backlog=512)  # nosec B104: inside a container
        servers.append(server)
        print(f"shaper: :{port} -> {target[0]}:{target[1]}  rtt {link.rtt * 1000:.0f} ms, "
              f"{link.up.rate * 8 / 1e6:g} Mbit/s per direction", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, link.write_stats, stats)
    link.write_stats(stats)
    await stop.wait()
    for server in servers:
        server.close()
    print("shaper: stopped " + json.dumps(link.stats()), flush=True)


def parse_forward(text: str) -> tuple[int, tuple[str, int]]:
    """PORT=HOST:PORT."""
    try:
        port, target = text.split("=", 1)
        host, target_port = target.rsplit(":", 1)
        return int(port), (host, int(target_port))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--forward wants LISTEN_PORT=HOST:PORT, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forward", type=parse_forward, action="append", required=True, metavar="PORT=HOST:PORT")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time to add (default 40)")
    parser.add_argument("--mbit", type=float, default=100.0,
                        help="bandwidth per direction in Mbit/s, 0 = unlimited (default 100)")
    parser.add_argument("--stats", default="/tmp/shaper-stats.json",
                        help="where SIGUSR1 writes the counters (default %(default)s)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.forward, Link(args.rtt_ms, args.mbit), args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
