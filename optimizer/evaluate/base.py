"""What an evaluator backend is: the protocol every backend implements.

A study needs three things from an evaluator: wrap the resident model once
(``attach``), score it as it is now on the search splits or the held-out
ones (``score``), and fold per-task scores into the objective (``combine``).
Tasks are lm-eval task configs (data, not code) whatever the backend; a new
backend (a faster scorer, a remote server) is one class with these methods,
registered by name in ``optimizer.evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class TaskObjective:
    """One scored task: its search config, optional held-out config, metric, weight."""

    name: str
    config: dict[str, Any]
    metric: str
    weight: float = 1.0
    heldout: dict[str, Any] | None = None


class Evaluator(Protocol):
    objectives: list[TaskObjective]

    def attach(self, model: Any, tokenizer: Any, batch_size: int = 16) -> Evaluator:
        """Wrap the resident model once; its weights then change in place per trial."""

    def score(self, heldout: bool = False) -> dict[str, float]:
        """Per-task metric values of the model as it is now; NaN is an error."""


def weighted_mean(objectives: Sequence[TaskObjective], scores: Mapping[str, float]) -> float:
    """The weighted mean of the per-task scores: a trial's objective value."""
    total = sum(o.weight for o in objectives if o.name in scores)
    return sum(o.weight * scores[o.name] for o in objectives if o.name in scores) / total
