"""What an evaluator backend is: the protocol every backend implements.

A study needs three things from an evaluator: wrap the resident model once
(``attach``), score it as it is now on the search splits or the held-out
ones (``score``), and fold per-task scores into the objective (``combine``).
A study that prunes also scores a few search items at a time: ``items``
lists them and ``score_items`` gives each one's metric value (and a graded
version of it the pruner compares), so a trial can be stopped after any
chunk (``optimizer.study.pruning``).
Tasks are lm-eval task configs (data, not code) whatever the backend; a new
backend (a faster scorer, a remote server) is one class with these methods,
registered by name in ``optimizer.evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol


@dataclass(frozen=True)
class TaskObjective:
    """One scored task: its search config, optional held-out config, metric, weight."""

    name: str
    config: dict[str, Any]
    metric: str
    weight: float = 1.0
    heldout: dict[str, Any] | None = None


# one search item: (the objective's task name, the index of its document)
Item = tuple[str, int]


class ItemScore(NamedTuple):
    """One item's result. ``value`` is the task metric on it (1 or 0 for
    accuracy): the means of these are the scores. ``graded`` is the same
    judgement with its confidence, in [0, 1] like the value: for a
    multiple-choice item, the probability the model gives the right choice
    among the choices (by the scores the metric ranks them by); otherwise the
    value. Two merges of the same models agree on most items' values, so a
    paired test on values sees mostly ties; the graded results differ on every
    item and tell a worse merge apart after fewer items."""

    value: float
    graded: float


class Evaluator(Protocol):
    objectives: list[TaskObjective]

    def attach(self, model: Any, tokenizer: Any, batch_size: int | str = 16) -> Evaluator:
        """Wrap the resident model once; its weights then change in place per trial.
        ``batch_size`` is a number of rows or "auto" (picked from free memory)."""

    def score(self, heldout: bool = False) -> dict[str, float]:
        """Per-task metric values of the model as it is now; NaN is an error."""

    def items(self) -> list[Item]:
        """Every search item, task by task; a ConfigError if a task's metric is
        not a mean over its items (then items cannot be scored apart)."""

    def score_items(self, items: Sequence[Item]) -> list[ItemScore]:
        """Each item's result, in the order given; the mean of a task's items'
        values over all of them is that task's ``score``."""


def weighted_mean(objectives: Sequence[TaskObjective], scores: Mapping[str, float]) -> float:
    """The weighted mean of the per-task scores: a trial's objective value."""
    total = sum(o.weight for o in objectives if o.name in scores)
    return sum(o.weight * scores[o.name] for o in objectives if o.name in scores) / total
