"""Run ``mergeopt`` in a child process with test hooks around the scoring step.

Tests that kill, interrupt or race workers need each worker at a known point,
whatever the machine's speed or load. Sleeping and polling cannot promise
that; these hooks can, and they live here, not in the product:

- ``MERGEOPT_TEST_PAUSE_AT=N`` with ``MERGEOPT_TEST_PAUSE_FILE=PATH``: when this
  process scores its N-th candidate (0-based), it writes PATH and waits there
  until it is killed or interrupted.
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

    score = Evaluator.score
    scored = {"n": 0}
    pause_at = int(os.environ.get("MERGEOPT_TEST_PAUSE_AT", "-1"))
    gate = os.environ.get("MERGEOPT_TEST_GATE")
    gate_workers = int(os.environ.get("MERGEOPT_TEST_GATE_WORKERS", "0"))

    def hooked(self, heldout: bool = False):
        n = scored["n"]
        scored["n"] += 1
        if n == pause_at:
            Path(os.environ["MERGEOPT_TEST_PAUSE_FILE"]).write_text(str(os.getpid()))
            while True:
                time.sleep(0.05)
        if gate and n == 0:
            Path(gate, str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(os.listdir(gate)) < gate_workers and time.monotonic() < deadline:
                time.sleep(0.01)
        return score(self, heldout)

    Evaluator.score = hooked


if __name__ == "__main__":
    install()
    from optimizer.cli import main

    sys.exit(main(sys.argv[1:]))
