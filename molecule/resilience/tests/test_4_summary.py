"""The summary: what was tried, what held, and that nothing was lost. Printed and written to
$MOLECULE_EPHEMERAL_DIRECTORY/resilience-summary.json."""
from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import SUMMARY, cache, compare, summary_table, target, warm  # noqa: F401  pylint: disable=unused-import


def test_nothing_was_lost_over_the_whole_run(target, warm):
    problems = compare(warm, cache(target))
    SUMMARY["lost"]["cached_blobs_lost_or_altered"] = len(problems)
    SUMMARY["lost"]["details"] += problems
    path = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "resilience-summary.json"
    path.write_text(json.dumps(SUMMARY, indent=2, default=str) + "\n")
    print("\n\nRESILIENCE SUMMARY (" + SUMMARY["arch"] + ")\n" + summary_table() + f"\n(written to {path})\n")
    assert not problems, problems
    assert SUMMARY["lost"]["pulls_that_should_have_worked_but_failed"] == 0, SUMMARY["lost"]["details"]
