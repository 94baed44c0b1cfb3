# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_journal: the supervisor's own lines carry its name; relayed lines are written whole, and lost (never
raised) when the journal is gone."""
from __future__ import annotations

import sys
import threading

import pytest
from registry_fakes import FILES

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_journal


def test_own_lines_are_prefixed_with_the_program_s_name(capsys: pytest.CaptureFixture[str]) -> None:
    registry_journal.say("switch done: serving the cache read-only")
    registry_journal.relay_line("[ghcr] a relayed line")
    assert capsys.readouterr().err == ("registry-supervisor: switch done: serving the cache read-only\n"
                                       "[ghcr] a relayed line\n")


def test_lines_from_several_threads_are_written_whole(capsys: pytest.CaptureFixture[str]) -> None:
    def write(label: str) -> None:
        for number in range(200):
            registry_journal.relay_line(f"[{label}] line {number} " + label * 50)

    threads = [threading.Thread(target=write, args=(label,)) for label in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 800
    assert all(line == f"[{line[1]}] line {line.split()[2]} " + line[1] * 50 for line in lines)


class GoneJournal:
    """stderr once the journal has gone away."""

    def write(self, _text: str) -> int:
        raise BrokenPipeError("gone")

    def flush(self) -> None:
        raise BrokenPipeError("gone")


def test_a_relayed_line_to_a_journal_that_is_gone_is_lost_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", GoneJournal())
    registry_journal.relay_line("[ghcr] lost")  # no exception: a child must never block on its pipe
