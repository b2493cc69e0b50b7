"""Model Breadcrumbs: drop both tails of each task vector's magnitudes.

Small entries are noise and the largest are outliers that interfere; the band
in between is kept. The blog's worked example masks in sorted order and applies
the mask to unsorted positions; here the mask follows each entry's stable rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, premasked
from methods.kernels import Sparsify, keep_where, magnitude_window, rank_window
from methods.linear import sum_coefficients, weighted_merge
from methods.masks import band_mask, floor_count
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
from methods.ties import consensus_merge, tensor_windows, window_input

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


def _tails(n: int, index: int, p: Mapping[str, Any], ctx: TensorContext) -> tuple[int, int]:
    beta, density = p.get("beta"), p.get("density")
    return tail_counts(
        n,
        None if beta is None else beta[index],
        None if density is None else density[index],
        p["gamma"][index],
        ctx.compat,
    )


def _inputs(
    deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> tuple[list[ExpertInput], Sparsify]:
    """The masked task vectors m_t ⊙ δ_t as kernel inputs.

    paper: per row, by the cached row ranks (an eager band mask without a
    cache); mergekit: per tensor, by magnitude thresholds.
    """
    if deltas[0].dim() == 0:
        return [premasked(d) for d in deltas], magnitude_window
    if ctx.compat == "mergekit":
        n = deltas[0].numel()
        bands = []
        for i in range(len(deltas)):
            low, high = _tails(n, i, p, ctx)
            bands.append((low, n - high - 1))
        windows = tensor_windows(deltas, bands, ctx)
        experts = [window_input(d, w, i) for i, (d, w) in enumerate(zip(deltas, windows))]
        return experts, magnitude_window
    n = deltas[0].shape[-1]
    tails = [_tails(n, i, p, ctx) for i in range(len(deltas))]
    packed = [ctx.ranks(i, True) if ctx.ranks else None for i in range(len(deltas))]
    if all(r is not None for r in packed):
        experts = [
            ExpertInput(d, (r.words,), (), (low, n - high), index=i)
            for i, (d, r, (low, high)) in enumerate(zip(deltas, packed, tails))
        ]
        return experts, rank_window
    experts = [
        ExpertInput(d, (band_mask(d, low, high, True).reshape(-1),), index=i)
        for i, (d, (low, high)) in enumerate(zip(deltas, tails))
    ]
    return experts, keep_where


def breadcrumbs(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    experts, sparsify = _inputs(deltas, p, ctx)
    coeffs = sum_coefficients(p["weight"], float(p["lambda"]), p["normalize"])
    return weighted_merge(base, experts, coeffs, ctx, out, sparsify=sparsify)


def breadcrumbs_ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    experts, sparsify = _inputs(deltas, p, ctx)
    return consensus_merge(base, experts, p, ctx, out, sparsify)


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
