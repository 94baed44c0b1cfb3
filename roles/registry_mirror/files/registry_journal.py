# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry-supervisor's journal: its own lines and those it relays (its registries', its children's in group mode),
each written whole.

A module of registry-supervisor, installed beside it (Python 3.8+, standard library only).
"""
from __future__ import annotations

import sys
import threading

PROG = "registry-supervisor"
# Lines of the journal are written whole: group mode writes its children's from several threads.
OUTPUT_LOCK = threading.Lock()


def say(message: str) -> None:
    """One line in the journal."""
    with OUTPUT_LOCK:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def relay_line(line: str) -> None:
    """Write LINE whole to the journal; a journal that is gone loses it (a child must never block on its pipe)."""
    with OUTPUT_LOCK:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
