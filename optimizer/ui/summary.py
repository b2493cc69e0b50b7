"""What `status` and the report both show, as plain values.

One home for each number, two renderers: rich tables in the terminal
(``console.py``) and HTML in the report (``report.py``), so the two never
disagree on which trial is best or what a phase cost.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from optimizer.study.constraints import broken, feasible
from optimizer.study.pruning import PRUNED, pruned_note

PHASES = ("materialize", "evaluate", "rest", "wall")


@dataclass(frozen=True)
class ScoredTrial:
    """A completed trial with its search and held-out scores per task."""

    label: str
    trial: FrozenTrial
    search: dict[str, float]
    heldout: dict[str, float]

    @property
    def broken(self) -> list[str]:
        return broken(self.trial)

    def search_mean(self, tasks: list[str]) -> float:
        return sum(self.search.get(t, 0.0) for t in tasks) / len(tasks)

    def heldout_mean(self) -> float | None:
        return sum(self.heldout.values()) / len(self.heldout) if self.heldout else None


def _scored(study, label: str, trial: FrozenTrial) -> ScoredTrial:
    return ScoredTrial(
        label, trial, trial.user_attrs.get("scores", {}), study.heldout_scores(trial) or {}
    )


def tasks(study) -> list[str]:
    return [t.task for t in study.cfg.tasks]


def state_counts(study) -> dict[str, int]:
    """Trials by state, a pruned trial (complete in Optuna: its value is a
    partial mean) counted apart from those scored on every item, and the
    sampler's repeats (pruned in Optuna, never scored) apart from both."""
    counts = study.counts()
    pruned = len(study.pruned())
    repeats = len(study.repeats())
    out = {s.name.lower(): counts[s] for s in TrialState}
    out["complete"] -= pruned
    out["pruned"] += pruned - repeats
    out["repeat"] = repeats
    return out


def best(study, limit: int = 5) -> list[ScoredTrial]:
    """The study's best trials (those that meet the constraints first)."""
    return [_scored(study, f"trial {t.number}", t) for t in study.best_trials(limit)]


def comparison(study) -> list[ScoredTrial]:
    """The best merge beside its inputs: the base and each expert alone."""
    top = study.best_trials(1)
    rows = []
    if top:
        what = "best merge" if feasible(top[0]) else "closest merge (breaks constraints)"
        rows.append(_scored(study, f"{what} (trial {top[0].number})", top[0]))
    return rows + [_scored(study, label, t) for label, t in study.reference_trials()]


def phase_seconds(study) -> dict[str, tuple[float, float]]:
    """Mean and median seconds per completed trial (pruned ones included), by
    phase; empty when no trial has timings (all reused, say)."""
    rows = []
    for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        timing = t.user_attrs.get("timing")
        if timing and t.datetime_start and t.datetime_complete:
            wall = (t.datetime_complete - t.datetime_start).total_seconds()
            m, e = timing["materialize"], timing["evaluate"]
            rows.append((m, e, wall - m - e, wall))
    if not rows:
        return {}
    cols = list(zip(*rows))
    return {p: (statistics.mean(c), statistics.median(c)) for p, c in zip(PHASES, cols)}


def stopped(study) -> list[tuple[FrozenTrial, str, str]]:
    """Trials not scored on every item, with why: (trial, state, reason)."""
    out = []
    for t in study.study.get_trials(deepcopy=False):
        pruned = t.user_attrs.get(PRUNED)
        if t.state == TrialState.COMPLETE and pruned:
            note = pruned_note(pruned, t.value, 3)
            why = f"pruned after {pruned['items']}/{pruned['of']} items ({note})"
            out.append((t, "pruned", why))
        elif t.state == TrialState.FAIL:
            out.append((t, "fail", t.user_attrs.get("fail_reason", "no reason stored")))
    return out


def per_method(study) -> dict[str, dict[str, int]]:
    """Trials of each method by outcome: scored whole, pruned, failed."""
    out: dict[str, dict[str, int]] = {}
    for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        method = t.params.get("method", "?")
        kind = (
            "failed"
            if t.state == TrialState.FAIL
            else "pruned"
            if PRUNED in t.user_attrs
            else "scored whole"
        )
        row = out.setdefault(method, {"scored whole": 0, "pruned": 0, "failed": 0})
        row[kind] += 1
    return dict(sorted(out.items(), key=lambda kv: -sum(kv[1].values())))
