"""Model Breadcrumbs: drop both tails of each task vector's magnitudes.

Small entries are noise and the largest are outliers that interfere; the band
in between is kept. The blog's worked example masks in sorted order and applies
the mask to unsorted positions; here the mask follows each entry's stable rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.linear import weighted_delta_sum
from methods.masks import as_rows, band_mask, floor_count
from methods.registry import (
    MethodSpec,
    ParamSpec,
    TensorContext,
    density_param,
    lambda_param,
    normalize_param,
    register,
    weight_param,
)
from methods.ties import consensus_merge

DEFAULT_BETA = 0.09  # with the default gamma 0.01: mergekit users' density 0.9


def tail_counts(
    n: int, beta: float | None, density: float | None, gamma: float, compat: str
) -> tuple[int, int]:
    """How many of ``n`` entries to drop at the small and the large end.

    paper: ⌊β·n⌋ and ⌊γ·n⌋, with β = 1 - density - γ when density is given.
    mergekit: keep int(density·n), drop int(γ·n) at the top and the rest at
    the bottom (its ``magnitude_outliers``).
    """
    if beta is None and density is None:
        beta = DEFAULT_BETA
    if compat == "mergekit":
        d = density if density is not None else 1.0 - beta - gamma
        if d >= 1:
            return 0, 0
        kept, top = int(d * n), int(gamma * n)
        return max(0, n - kept - top), top
    b = beta if beta is not None else 1.0 - density - gamma
    return floor_count(b, n), floor_count(gamma, n)


def breadcrumbs_mask(
    delta: torch.Tensor, index: int, p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """The masked task vector m_t ⊙ δ_t (per row in paper mode, per tensor in mergekit's)."""
    if delta.dim() == 0:
        return delta
    per_row = ctx.compat != "mergekit"
    n = as_rows(delta, per_row).shape[-1]
    beta = p.get("beta")
    density = p.get("density")
    low, high = tail_counts(
        n,
        None if beta is None else beta[index],
        None if density is None else density[index],
        p["gamma"][index],
        ctx.compat,
    )
    if low == 0 and high == 0:
        return delta
    ranks = ctx.ranks(index, per_row) if ctx.ranks else None
    return delta * band_mask(delta, low, high, per_row, ranks)


def breadcrumbs(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    masked = [breadcrumbs_mask(d, i, p, ctx) for i, d in enumerate(deltas)]
    merged = weighted_delta_sum(masked, p["weight"], p["normalize"])
    return base + merged.mul_(p["lambda"])


def breadcrumbs_ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    masked = [breadcrumbs_mask(d, i, p, ctx) for i, d in enumerate(deltas)]
    merged = consensus_merge(masked, p["weight"], ctx.compat, p["normalize"])
    return base + merged.mul_(p["lambda"])


def check_tails(values: Mapping[str, Any]) -> str | None:
    beta, density, gamma = values.get("beta"), values.get("density"), values["gamma"]
    if beta is not None and density is not None:
        return (
            "give either beta (the dropped small tail) or density (the kept "
            "fraction), not both: beta = 1 - density - gamma"
        )
    if beta is None and density is None:
        beta = DEFAULT_BETA
    if beta is not None and beta + gamma >= 1:
        return f"beta + gamma must be below 1, got {beta:g} + {gamma:g}"
    if density is not None and density + gamma > 1:
        return (
            f"density + gamma must be at most 1 (beta = 1 - density - gamma "
            f"cannot be negative), got {density:g} + {gamma:g}"
        )
    return None


def _params(normalize: bool, mergekit_normalize: bool | None):
    return (
        weight_param(),
        ParamSpec(
            "beta",
            "model",
            default=None,
            low=0.0,
            high=1.0,
            high_open=True,
            search=(0.0, 0.9),
            help="fraction of smallest-magnitude entries dropped (default 0.09 "
            "when neither beta nor density is given)",
        ),
        density_param(
            None,
            search=None,
            help="fraction kept (mergekit's name; beta = 1 - density - gamma)",
        ),
        ParamSpec(
            "gamma",
            "model",
            default=0.01,
            low=0.0,
            high=1.0,
            high_open=True,
            search=(0.0, 0.05),
            help="fraction of largest-magnitude entries dropped (outliers)",
        ),
        lambda_param((0.1, 1.5)),
        normalize_param(normalize, mergekit_normalize),
    )


_SEED = ({"beta": 0.09, "gamma": 0.01, "lambda": 1.0},)

register(
    MethodSpec(
        name="breadcrumbs",
        fn=breadcrumbs,
        params=_params(False, None),
        summary="drop the β smallest and γ largest magnitudes, then b + λ Σ w_t δ_t",
        check=check_tails,
        seed_points=_SEED,
    )
)

register(
    MethodSpec(
        name="breadcrumbs_ties",
        fn=breadcrumbs_ties,
        params=_params(True, False),
        summary="Breadcrumbs masks, then TIES elect + disjoint merge",
        check=check_tails,
        seed_points=_SEED,
    )
)
