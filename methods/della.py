"""DELLA: MagPrune (rank-dependent random drop), rescale, then elect and fuse.

Keep probabilities rise linearly with an entry's magnitude rank within its
row, from d - ε for the smallest to d + ε for the largest (mean d), so large
changes survive more often than small ones. ``epsilon`` is mergekit's
half-width; the paper's window is 2ε, and the blog's Δ is 2ε / (n - 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.linear import weighted_delta_sum
from methods.masks import as_rows, l1_rescaled, stable_ranks, uniform_like
from methods.registry import (
    MethodSpec,
    ParamSpec,
    TensorContext,
    density_param,
    lambda_param,
    normalize_param,
    register,
    rescale_param,
    weight_param,
)
from methods.ties import consensus_merge


def keep_probabilities(ranks: torch.Tensor, n: int, density: float, epsilon: float) -> torch.Tensor:
    """q_r = (d - ε) + 2ε · r / (n - 1); a one-entry row keeps with d."""
    if n <= 1:
        return torch.full(ranks.shape, density, dtype=torch.float32, device=ranks.device)
    step = 2.0 * epsilon / (n - 1)
    return ranks.to(torch.float32).mul_(step).add_(density - epsilon)


def magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    index: int,
    rescale: bool,
    ctx: TensorContext,
) -> torch.Tensor:
    if delta.dim() == 0 or (density >= 1 and epsilon == 0):
        return delta
    n = as_rows(delta, True).shape[-1]
    ranks = ctx.ranks(index, True) if ctx.ranks else None
    if ranks is None:
        ranks = stable_ranks(delta, True)
    q = keep_probabilities(ranks, n, density, epsilon)
    keep = uniform_like(delta, ctx.seed, ctx.name, index) < q
    masked = delta * keep
    if not rescale:
        return masked
    if ctx.compat == "mergekit":
        return l1_rescaled(delta, masked)
    return masked.div_(q)


def _pruned(deltas, p, ctx):
    return [
        magprune(d, p["density"][i], p["epsilon"][i], i, p["rescale"], ctx)
        for i, d in enumerate(deltas)
    ]


def della(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    merged = consensus_merge(_pruned(deltas, p, ctx), p["weight"], ctx.compat, p["normalize"])
    return base + merged.mul_(p["lambda"])


def della_linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    merged = weighted_delta_sum(_pruned(deltas, p, ctx), p["weight"], p["normalize"])
    return base + merged.mul_(p["lambda"])


def check_window(values: Mapping[str, Any]) -> str | None:
    d, eps = values["density"], values["epsilon"]
    if d - eps <= 0 or d + eps > 1:
        room = min(d, 1 - d)
        return (
            f"epsilon {eps:g} is too large for density {d:g}: keep probabilities "
            f"d - epsilon and d + epsilon must lie in (0, 1], so epsilon must be "
            f"below {room:g} here"
        )
    return None


def _params(normalize: bool):
    return (
        weight_param(),
        density_param(0.7, help="mean keep probability"),
        ParamSpec(
            "epsilon",
            "model",
            default=0.07,
            low=0.0,
            high=1.0,
            high_open=True,
            search=(0.0, 1.0),
            help="half-width of the keep-probability window: the smallest entry "
            "is kept with d - ε, the largest with d + ε (searched as a fraction "
            "of min(d, 1 - d))",
        ),
        lambda_param((0.5, 1.5)),
        normalize_param(normalize),
        rescale_param(),
    )


_SEED = ({"density": 0.7, "epsilon": 0.07, "lambda": 1.1},)

register(
    MethodSpec(
        name="della",
        fn=della,
        params=_params(True),
        summary="MagPrune (keep prob. d ± ε by magnitude rank), rescale, TIES elect+merge",
        random=True,
        check=check_window,
        seed_points=_SEED,
    )
)

register(
    MethodSpec(
        name="della_linear",
        fn=della_linear,
        params=_params(False),
        summary="MagPrune, rescale, then b + λ Σ w_t δ'_t",
        random=True,
        check=check_window,
        seed_points=_SEED,
    )
)
