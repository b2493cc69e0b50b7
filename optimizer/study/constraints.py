"""Floors and ceilings on task scores: ``objective.constraints``.

A retention task is not a term to trade against the others in a mean: a merge
that forgets general knowledge is not wanted at any fact score. A constraint
says so (``general_retention >= 0.9``, or ``>= 0.95 x base``: a share of the
base model's own score), and Optuna's constraint support does the rest: the
samplers that take a ``constraints_func`` (TPE, NSGA-II, GP) steer away from
infeasible regions, and a trial that breaks a constraint is never the best,
never exported and shown as infeasible.

Each trial stores its violation of each constraint with Optuna's
``Trial.set_constraint`` (at most 0 when met, keyed by the constraint's text)
before it is told, so the samplers, Optuna's own best-trial queries,
``status``, the report and export all read the same numbers.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optimizer.errors import ConfigError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

_FORM = re.compile(
    r"^\s*(?P<task>[^\s<>=]+)\s*(?P<op>>=|<=)\s*(?P<bound>[-+0-9.eE]+)"
    r"\s*(?:(?P<times>[x×*])\s*base)?\s*$"
)
SYNTAX = "TASK >= NUMBER, TASK <= NUMBER or TASK >= FACTOR x base"


@dataclass(frozen=True)
class Constraint:
    """``task op bound`` (``of_base``: the bound is a factor of the base's score)."""

    task: str
    op: str
    bound: float
    of_base: bool = False

    @property
    def text(self) -> str:
        bound = f"{self.bound:g} x base" if self.of_base else f"{self.bound:g}"
        return f"{self.task} {self.op} {bound}"

    def limit(self, base: Mapping[str, float] | None) -> float:
        """The score the task must reach (or stay under) for this study."""
        if not self.of_base:
            return self.bound
        if base is None or self.task not in base:
            raise ValueError(f"{self.text} needs the base model's {self.task} score")
        return self.bound * base[self.task]

    def violation(self, scores: Mapping[str, float], base: Mapping[str, float] | None) -> float:
        """How far ``scores`` miss this constraint (<= 0: met), Optuna's convention.
        A pruned trial that saw no item of the task is not held against it (0)."""
        if self.task not in scores:
            return 0.0
        gap = self.limit(base) - scores[self.task]
        return gap if self.op == ">=" else -gap


def parse(raw: object, tasks: Sequence[str], where: str) -> list[Constraint]:
    """``objective.constraints``: a list of ``TASK >= NUMBER`` lines, each naming a
    task of ``objective.tasks``; anything else is refused, naming the fix."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ConfigError(
            f"{where} must be a list of lines like 'general_retention >= 0.9' ({SYNTAX})"
        )
    out = []
    for i, line in enumerate(raw):
        at = f"{where}[{i}] {line!r}"
        m = _FORM.match(line)
        if m is None:
            raise ConfigError(f"{at}: write {SYNTAX}, for example '{tasks[0]} >= 0.9'")
        task = m["task"]
        if task not in tasks:
            close = difflib.get_close_matches(task, tasks, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{at}: {task!r} is not one of objective.tasks ({', '.join(tasks)}).{hint}"
            )
        try:
            bound = float(m["bound"])
        except ValueError:
            raise ConfigError(f"{at}: {m['bound']!r} is not a number") from None
        if not math.isfinite(bound):
            raise ConfigError(f"{at}: the bound must be a finite number")
        of_base = m["times"] is not None
        if of_base and (m["op"] != ">=" or bound <= 0):
            raise ConfigError(
                f"{at}: a share of the base is a floor with a positive factor, "
                f"like '{task} >= 0.95 x base'"
            )
        c = Constraint(task, m["op"], bound, of_base)
        if c in out:
            raise ConfigError(f"{at}: the same constraint is listed twice")
        out.append(c)
    return out


def violations(trial: FrozenTrial) -> dict[str, float]:
    """The trial's stored violation of each constraint, by its text (<= 0: met)."""
    return trial.constraints


def feasible(trial: FrozenTrial) -> bool:
    """Every constraint met (a study without constraints: always)."""
    return all(v <= 0 for v in trial.constraints.values())


def shortfall(trial: FrozenTrial) -> float:
    """How far the trial misses its constraints in all (0 when it meets them)."""
    return sum(max(v, 0.0) for v in trial.constraints.values())


def broken(trial: FrozenTrial) -> list[str]:
    """The constraints ``trial`` breaks, as their text."""
    return [text for text, v in trial.constraints.items() if v > 0]
