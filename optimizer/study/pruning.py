"""Paired multi-fidelity pruning: every trial scores the same items in the same
order, a chunk at a time, and may stop once it is plainly worse than the best.

Merges of the same models are near-identical, so two candidates' results on
the same item differ little and mostly in the same direction: a paired test
(Optuna's ``WilcoxonPruner``, item by item against the best trial) tells a
worse candidate apart after a fraction of the items, where comparing means
would need them all. ``hyperband`` instead gives each trial a budget of items
by successive halving. The order is shuffled once (seeded by the study's
seed) so any prefix of it is a fair sample of every task. What is reported
is each item's graded result (``ItemScore.graded``: the probability given to
the right choice), not its 0/1 value: on values most pairs tie and the test
learns little from an item.

A pruned trial keeps the mean of the item values it saw as its value (Optuna's
advice for Wilcoxon: the sampler learns from it) and is marked ``pruned``: it
counts toward the budget like any completed trial but is never one of the best
trials, never scored held-out and never exported. Item values are weighted so
that their mean over all items is the objective (the weighted mean of the task
means): a full trial's value is the same whichever way it was scored.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimizer.evaluate.base import Evaluator, Item, TaskObjective

PRUNERS = ("none", "wilcoxon", "hyperband")
# wilcoxon: how p_threshold is used at each look (see ``look_threshold``)
SPENDING = ("none", "pocock")
# wilcoxon: the value a pruned trial is told (see ``paired_estimate``)
PRUNED_VALUES = ("partial", "paired")
# user attribute of a pruned trial: {"items": items scored, "of": all items}
PRUNED = "pruned"
# user attribute of a trial whose merge config equals a completed trial's: its number
REUSED_FROM = "reused_from"
REPEAT_OF = "repeat_of"  # user attr of a sampled repeat (pruned, never scored): its twin


@dataclass(frozen=True)
class PrunerSpec:
    """``objective.pruner`` of the study file."""

    name: str = "none"
    chunk: int = 32  # items scored between two pruning decisions
    p_threshold: float = 0.2  # wilcoxon: prune when the paired test's p-value is below
    spending: str = "none"  # wilcoxon: "pocock" spends p_threshold over the looks
    pruned_value: str = "partial"  # wilcoxon: "paired" tells a paired estimate, not the mean
    min_items: int | None = None  # hyperband: the first rung (default: one chunk)
    reduction_factor: int = 3  # hyperband: 1 in this many trials goes on at each rung

    @property
    def active(self) -> bool:
        return self.name != "none"

    def describe(self) -> dict[str, Any]:
        """The settings a study is fingerprinted with; a setting at what studies
        did before it existed is left out, so those studies still resume."""
        before = {"spending": "none", "pruned_value": "partial"}
        return {k: v for k, v in self.__dict__.items() if v is not None and before.get(k) != v}


def make_pruner(spec: PrunerSpec, n_items: int) -> optuna.pruners.BasePruner:
    if spec.name == "wilcoxon":
        if spec.spending == "pocock":
            return AgainstBestWhole(SpentWilcoxon(spec.p_threshold, n_items, spec.chunk))
        return AgainstBestWhole(optuna.pruners.WilcoxonPruner(p_threshold=spec.p_threshold))
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min(spec.min_items or spec.chunk, n_items),
            max_resource=n_items,
            reduction_factor=spec.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def pocock_spent(alpha: float, fraction: float) -> float:
    """Lan and DeMets' Pocock-type spending function: the share of ``alpha``
    spent once ``fraction`` of the items are seen (all of it at 1)."""
    return alpha * math.log(1 + (math.e - 1) * min(max(fraction, 0.0), 1.0))


def look_threshold(alpha: float, seen: int, n_items: int, chunk: int) -> float:
    """The p-value below which the look after ``seen`` items prunes: what the
    spending function adds between the previous look and this one."""
    before = chunk * ((seen - 1) // chunk)
    return pocock_spent(alpha, seen / n_items) - pocock_spent(alpha, before / n_items)


class SpentWilcoxon(optuna.pruners.BasePruner):
    """Wilcoxon's test with ``p_threshold`` spent over the looks, not used at each.

    A trial is tested once per chunk. At a fixed threshold p, a candidate as
    good as the best may be pruned at any of the looks, so over fifteen looks
    it is pruned far more often than p (about 0.3 at p 0.2 in the tests'
    simulation): the search keeps the merges it already had and loses the
    ones only slightly better, which on a study whose merges differ by a few
    items are the ones that matter.
    Spread over the looks (each look's threshold is what the spending
    function adds since the previous one, so the thresholds sum to
    ``alpha``), such a candidate is pruned with probability at most ``alpha``
    in all, while a plainly worse one still stops at its first looks, where
    its p-value is far below any of them. This is group-sequential testing
    (Lan and DeMets, 1983) with Bonferroni's bound across looks."""

    def __init__(self, alpha: float, n_items: int, chunk: int) -> None:
        self.alpha, self.n_items, self.chunk = alpha, n_items, chunk

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        seen = len(trial.intermediate_values)
        if seen == 0:
            return False
        p = look_threshold(self.alpha, seen, self.n_items, self.chunk)
        return optuna.pruners.WilcoxonPruner(p_threshold=p).prune(study, trial)


def paired_estimate(reference: FrozenTrial, graded: dict[int, float]) -> float | None:
    """What a pruned trial would have scored on every item, estimated from the
    items it saw: the reference's value plus the mean of the trial's
    differences from the reference on those items (weighted graded results,
    the pairs the test used; None without a shared item).

    The mean of the items seen is what Optuna advises telling, but it is the
    mean over a few items, so its noise dwarfs the differences between merges
    (about 0.08 on 16 four-way items, against 0.01 between good merges), and
    it is over other items than the whole trials': after a run of pruning,
    the highest values of the study are lucky partial means, and a sampler
    that models the best values (TPE's good group) is led to where the luck
    was. Paired with the reference on the same items, item difficulty cancels
    and the estimate lands below the reference, as the test just found."""
    ref = reference.intermediate_values
    diffs = [v - ref[position] for position, v in graded.items() if position in ref]
    if not diffs:
        return None
    return reference.value + math.fsum(diffs) / len(diffs)


def pruned_note(pruned: dict[str, Any], value: float, digits: int) -> str:
    """How status, the run and the report show a pruned trial's value."""
    if "partial_mean" in pruned:
        return (
            f"paired estimate {value:.{digits}f}, partial mean {pruned['partial_mean']:.{digits}f}"
        )
    return f"partial mean {value:.{digits}f}"


class _BestIs:
    """The study as a pruner sees it, with ``best`` as its best trial."""

    def __init__(self, study: optuna.Study, best: FrozenTrial) -> None:
        self.direction = study.direction
        self.best_trial = best


def scored_whole(study: optuna.Study) -> list[FrozenTrial]:
    """The completed trials scored on every item (a pruned one's value is a
    partial mean: never a best trial, never a reference for the pruner)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if PRUNED not in t.user_attrs
    ]


def best_whole(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial that was scored on every item (and meets the
    constraints, if any trial does): the trial that scored it, never a trial
    that reused its scores (which holds no item values to pair with)."""
    from optimizer.study.constraints import feasible

    whole = [t for t in scored_whole(study) if REUSED_FROM not in t.user_attrs]
    whole = [t for t in whole if feasible(t)] or whole
    if not whole:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(whole, key=lambda t: t.value)


class AgainstBestWhole(optuna.pruners.BasePruner):
    """A paired pruner that compares with the best trial scored on every item.

    Optuna's ``best_trial`` may be a pruned trial: its value is the mean of
    the items it saw, which can beat the best whole trial's (the pruner looks
    at graded results, the value counts right answers). Compared with it, a
    trial would be paired on that trial's few items only."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        best = best_whole(study)
        if best is None:
            return False
        return self.inner.prune(_BestIs(study, best), trial)


@dataclass
class ItemPlan:
    """The fixed order every trial scores the search items in, in chunks, and
    each item's weight (its task's weight over its task's item count, scaled
    so that the mean of all weighted values is the objective)."""

    order: list[Item]
    weights: dict[str, float]
    chunk: int

    @classmethod
    def build(
        cls, items: Sequence[Item], objectives: Sequence[TaskObjective], seed: int, chunk: int
    ) -> ItemPlan:
        order = list(items)
        random.Random(seed).shuffle(order)
        counts: dict[str, int] = {}
        for name, _ in order:
            counts[name] = counts.get(name, 0) + 1
        total = sum(o.weight for o in objectives if o.name in counts)
        weights = {
            o.name: o.weight * len(order) / (counts[o.name] * total)
            for o in objectives
            if o.name in counts
        }
        return cls(order, weights, chunk)

    def chunks(self) -> list[list[tuple[int, Item]]]:
        """(position in the order, item) in chunks; the position is the item's
        step in Optuna, the same for every trial (the pairing)."""
        at = list(enumerate(self.order))
        return [at[i : i + self.chunk] for i in range(0, len(at), self.chunk)]


@dataclass
class ChunkedScore:
    """What scoring a trial item by item gave: per-task means of the items seen,
    the trial's value, and how many items it saw."""

    scores: dict[str, float]
    value: float
    items: int
    of: int
    raw: dict[str, list[float]] = field(default_factory=dict, repr=False)
    estimate: float | None = None  # pruned, with pruned_value paired: ``paired_estimate``

    @property
    def pruned(self) -> bool:
        return self.items < self.of


def score_in_chunks(
    evaluator: Evaluator,
    plan: ItemPlan,
    objectives: Sequence[TaskObjective],
    trial: optuna.Trial | None = None,
    pruner: str = "none",
    may_prune: bool = True,
    interruptible: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    paired: bool = False,
) -> ChunkedScore:
    """Score the plan's chunks in order, reporting each item to ``trial`` (its
    weighted graded result at its position: Wilcoxon's pairs) or each chunk's
    running mean at the items seen so far (Hyperband's resource), and stop early when
    the study's pruner says so. Without a trial, every item is scored (the
    export check: the same prompts the search saw). A signal may cut the
    scoring (``interruptible``), never the reports: they are storage writes.
    ``paired``: a pruned trial's ``estimate`` is its ``paired_estimate``
    against the best trial scored whole, the pruner's reference."""
    raw: dict[str, list[float]] = {}
    estimate = None
    weighted: list[float] = []
    graded: dict[int, float] = {}  # position -> weighted graded result
    chunks = plan.chunks()
    for k, chunk in enumerate(chunks):
        with interruptible():
            results = evaluator.score_items([item for _, item in chunk])
        for (position, (name, _)), result in zip(chunk, results, strict=True):
            raw.setdefault(name, []).append(result.value)
            weighted.append(result.value * plan.weights[name])
            graded[position] = result.graded * plan.weights[name]
            if trial is not None and pruner == "wilcoxon":
                trial.report(graded[position], position)
        if trial is None:
            continue
        if pruner == "hyperband":
            trial.report(math.fsum(graded.values()) / len(graded), len(graded))
        if may_prune and k + 1 < len(chunks) and trial.should_prune():
            reference = best_whole(trial.study) if paired else None
            estimate = paired_estimate(reference, graded) if reference else None
            break
    scores = {
        o.name: math.fsum(raw[o.name]) / len(raw[o.name]) for o in objectives if o.name in raw
    }
    return ChunkedScore(
        scores, math.fsum(weighted) / len(weighted), len(weighted), len(plan.order), raw, estimate
    )


def score_every_item(
    evaluator: Evaluator, plan: ItemPlan | None, objectives: Sequence[TaskObjective]
) -> dict[str, float]:
    """Every search item's score, in the plan's chunks when the study prunes
    (so with the prompts the search saw), else in one call."""
    if plan is None:
        return evaluator.score()
    return score_in_chunks(evaluator, plan, objectives).scores
