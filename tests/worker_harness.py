"""Run ``mergeopt`` in a child process with test hooks around the scoring step.

Tests that kill, interrupt or race workers need each worker at a known point,
whatever the machine's speed or load. Sleeping and polling cannot promise
that; these hooks can, and they live here, not in the product:

- ``MERGEOPT_TEST_PAUSE_AT=N`` with ``MERGEOPT_TEST_PAUSE_FILE=PATH``: when this
  process scores its N-th candidate (0-based; with a pruner, after that
  candidate's first chunk of items), it writes PATH and waits there until it
  is killed or interrupted.
- ``MERGEOPT_TEST_GATE=DIR`` with ``MERGEOPT_TEST_GATE_WORKERS=K``: each worker's
  first candidate waits (up to 120 s) until K workers have reached theirs, so
  the work of a shared study is shared.

Usage: ``python tests/worker_harness.py run study.yaml [options]``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def install() -> None:
    from optimizer.evaluate.harness import HarnessEvaluator as Evaluator
    from optimizer.study import worker

    evaluate, score, score_items = worker.evaluate, Evaluator.score, Evaluator.score_items
    now = {"candidate": -1, "chunks": 0}
    pause_at = int(os.environ.get("MERGEOPT_TEST_PAUSE_AT", "-1"))
    gate = os.environ.get("MERGEOPT_TEST_GATE")
    gate_workers = int(os.environ.get("MERGEOPT_TEST_GATE_WORKERS", "0"))

    def pause() -> None:
        Path(os.environ["MERGEOPT_TEST_PAUSE_FILE"]).write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)

    def hooked_evaluate(study, trial):
        now["candidate"] += 1
        now["chunks"] = 0
        if gate and now["candidate"] == 0:
            Path(gate, str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(os.listdir(gate)) < gate_workers and time.monotonic() < deadline:
                time.sleep(0.01)
        return evaluate(study, trial)

    def hooked_score(self, heldout: bool = False):
        if now["candidate"] == pause_at and not heldout:
            pause()
        return score(self, heldout)

    def hooked_score_items(self, items):
        # a pruning study: the pause comes after the candidate's first chunk
        now["chunks"] += 1
        if now["candidate"] == pause_at and now["chunks"] == 2:
            pause()
        return score_items(self, items)

    worker.evaluate = hooked_evaluate
    Evaluator.score = hooked_score
    Evaluator.score_items = hooked_score_items


if __name__ == "__main__":
    install()
    from optimizer.cli import main

    sys.exit(main(sys.argv[1:]))
