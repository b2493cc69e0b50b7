"""A search in two stages: first which method, then that method's values per layer group.

Spread over every method, a small budget gives the sampler one to three
observations per method when it must choose, and per-layer-group values
multiply each method's parameters by the number of groups. So the ``staged``
strategy spends the first share of the trials (``method_share`` of
``n_trials``) on the joint space as ``joint`` does, then fixes the best
method so far and searches only its parameters, each one per group of
``refine_layer_group_size`` layers, starting from the best trial's values (that
point is enqueued first: its merge is the best trial's, so its scores are
reused, not computed again).

Which method won is stored with the study the first time a worker asks, so
every worker and every resumed run refines the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

if TYPE_CHECKING:
    from optimizer.study.search_space import SearchSpace
    from optimizer.study.study import Study

STRATEGIES = ("joint", "staged")
REPEATS = ("resample", "reuse")
# study attribute: {"method": the refined method, "from": the trial it starts at}
REFINED = "mergeopt:refined"
# trial attribute of stage two's first trial: the trial whose values it spreads
REFINES = "refines"


@dataclass(frozen=True)
class SearchSpec:
    """``search`` of the study file."""

    strategy: str = "joint"
    method_share: float = 0.5  # staged: share of n_trials searching over methods
    refine_layer_group_size: int = 0  # staged: layers per value in stage two (0: a third)
    # a sampled merge already scored: ask the sampler again, or take its scores
    repeats: str = "resample"

    @property
    def staged(self) -> bool:
        return self.strategy == "staged"

    def describe(self) -> dict[str, Any]:
        """What a resumed study must keep (how repeats are handled may change)."""
        return {k: v for k, v in self.__dict__.items() if k != "repeats"}

    def first_stage_trials(self, n_trials: int) -> int:
        return max(1, math.ceil(self.method_share * n_trials))

    def group_size(self, num_layers: int) -> int:
        """Stage two's layers per value: as given, else a third of the layers."""
        return self.refine_layer_group_size or max(1, math.ceil(num_layers / 3))


def refined_space(space: SearchSpace, spec: SearchSpec, num_layers: int) -> SearchSpace:
    """The joint space with stage two's layer groups (same methods, filters and
    overrides; only the refined method's part of it is ever asked for). A
    study whose groups are already that fine keeps them."""
    from optimizer.study.search_space import CATCH_ALL, SearchSpace

    size = spec.group_size(num_layers)
    current = space.groups[0][1] - space.groups[0][0] + 1
    return SearchSpace(
        [m.name for m in space.methods],
        space.n_experts,
        num_layers,
        min(size, current),
        [c for c in space.classes if c != CATCH_ALL],
        space.raw_overrides,
    )


def refined_method(study: Study, completed: int) -> str | None:
    """The method stage two refines, or None while the study is in stage one
    or has nothing to refine (called under the study's lock, so the choice is
    made once, by the first worker past stage one). Stage one lasts
    ``method_share`` of ``n_trials``, and at least until every start point
    was taken.

    The method is the best trial's (those meeting the constraints first)
    among methods with values to search (Model Stock has none)."""
    spec = study.cfg.search
    if not spec.staged:
        return None
    stored = study.study.user_attrs.get(REFINED)
    if stored is not None:
        return stored["method"]
    if completed < spec.first_stage_trials(study.cfg.n_trials) or study.count(TrialState.WAITING):
        return None  # stage one, or its start points are still queued
    ranked = study.best_trials(completed)
    best = next((t for t in ranked if study.refined.searchable(t.params["method"])), None)
    if best is None:
        if ranked:  # only unsearchable methods scored whole: nothing to refine
            study.study.set_user_attr(REFINED, {"method": None, "from": None})
        return None
    method = best.params["method"]
    start = study.refined.broadcast(best.params, study.space)
    study.study.enqueue_trial(start, user_attrs={REFINES: best.number})
    study.study.set_user_attr(REFINED, {"method": method, "from": best.number})
    return method


def stage_two_sampler(
    method: str, base: optuna.samplers.BaseSampler
) -> optuna.samplers.BaseSampler:
    """The study's sampler with the method fixed (Optuna keeps the method's
    choices the same in every trial; only its value is pinned)."""
    return optuna.samplers.PartialFixedSampler({"method": method}, base)
