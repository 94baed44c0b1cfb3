# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The summary: what was tried, what held, and that nothing was lost. Printed, and written as JSON to
$MOLECULE_EPHEMERAL_DIRECTORY/resilience-summary.json (which Molecule prunes at destroy) and, when
RESILIENCE_SUMMARY_DIR is set, to resilience-summary-ARCH.json there."""
from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import SUMMARY, cache, compare, summary_table, target, warm  # noqa: F401  pylint: disable=unused-import


def test_nothing_was_lost_over_the_whole_run(target, warm):
    problems = compare(warm, cache(target))
    SUMMARY["lost"]["cached_blobs_lost_or_altered"] = len(problems)
    SUMMARY["lost"]["details"] += problems
    text = json.dumps(SUMMARY, indent=2, default=str) + "\n"
    paths = [Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "resilience-summary.json"]
    if os.environ.get("RESILIENCE_SUMMARY_DIR"):
        paths.append(Path(os.environ["RESILIENCE_SUMMARY_DIR"]) / f"resilience-summary-{SUMMARY['arch']}.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"\n\nRESILIENCE SUMMARY ({SUMMARY['arch']})\n{summary_table()}\n(JSON: {', '.join(map(str, paths))})\n")
    assert not problems, problems
    assert SUMMARY["lost"]["pulls_that_should_have_worked_but_failed"] == 0, SUMMARY["lost"]["details"]
