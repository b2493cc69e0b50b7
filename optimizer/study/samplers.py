"""Samplers by name: one table entry each, with what it can do and what it needs.

The study file names a sampler; the table turns the name into an Optuna
sampler object and says, before anything is stored, whether it fits the study
(one objective or several, a single method with continuous parameters). A new
sampler is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from optimizer.study.search_space import SearchSpace


@dataclass(frozen=True)
class SamplerKind:
    name: str
    make: Callable[[int], optuna.samplers.BaseSampler]
    multi_objective: bool
    # why the search space does not suit it, or None
    unsuited: Callable[[SearchSpace], str | None] = lambda space: None
    requires: str | None = None  # an importable module it needs
    # it models a fixed set of parameters, the same in every trial: it cannot
    # follow a staged search, whose second stage asks for other ones
    fixed_parameters: bool = False


def _tpe(seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def _cmaes(seed: int) -> Any:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _nsga2(seed: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def _gp(seed: int) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


def _random(seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _one_continuous_method(space: SearchSpace) -> str | None:
    if len(space.methods) == 1 and not any(
        p.kind is bool for p in space.searched(space.methods[0])
    ):
        return None
    return "needs one fixed method with only continuous parameters: set methods: [one method]"


SAMPLERS: dict[str, SamplerKind] = {
    k.name: k
    for k in (
        SamplerKind("tpe", _tpe, multi_objective=True),
        SamplerKind(
            "cmaes",
            _cmaes,
            multi_objective=False,
            unsuited=_one_continuous_method,
            fixed_parameters=True,
        ),
        SamplerKind("nsga2", _nsga2, multi_objective=True),
        SamplerKind("gp", _gp, multi_objective=False, requires="scipy", fixed_parameters=True),
        SamplerKind("random", _random, multi_objective=True),
    )
}


def check_sampler(name: str, space: SearchSpace) -> None:
    """Refuse a sampler that cannot serve this search space, naming the fix."""
    import importlib.util

    from optimizer.errors import ConfigError

    kind = SAMPLERS[name]
    why = kind.unsuited(space)
    if why:
        raise ConfigError(f"sampler {name} {why}")
    if kind.requires and importlib.util.find_spec(kind.requires) is None:
        raise ConfigError(f"sampler {name} needs {kind.requires}: pip install {kind.requires}")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name].make(seed)


def trial_seed(sampler_seed: int, n_trials: int) -> int:
    """The sampler's seed for the study's next trial (``n_trials`` exist already).

    One seed per trial number, not per process: workers sharing a study with
    one seed would draw the very same candidates, and a resumed run draws what
    an uninterrupted one would have.
    """
    import hashlib

    digest = hashlib.blake2b(f"{sampler_seed}:{n_trials}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")
