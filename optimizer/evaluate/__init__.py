"""Scoring a model: the evaluator protocol (``base``) and its backends, by name.

``objective.backend`` in the study file names the backend; each entry is the
module and class that implement ``base.Evaluator``, imported only when used.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from optimizer.evaluate.base import Evaluator, TaskObjective, weighted_mean

# name -> "module:Class"
BACKENDS: dict[str, str] = {
    "hf": "optimizer.evaluate.harness:HarnessEvaluator",
    "fast": "optimizer.evaluate.fast:FastEvaluator",
}


def make_evaluator(
    backend: str,
    objectives: Sequence[TaskObjective],
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> Evaluator:
    """The backend's evaluator, tasks built and checked (before any model loads)."""
    module, _, name = BACKENDS[backend].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(objectives, limit, num_fewshot)


__all__ = ["BACKENDS", "Evaluator", "TaskObjective", "make_evaluator", "weighted_mean"]
