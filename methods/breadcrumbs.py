"""Model Breadcrumbs: drop both tails of each task vector's magnitudes.

Small entries are noise and the largest are outliers that interfere; the band
in between is kept. The blog's worked example masks in sorted order and applies
the mask to unsorted positions; here the mask follows each entry's stable rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.family import Sparsifier, Variant, register_family
from methods.fuse import ExpertInput, premasked
from methods.kernels import Sparsify, keep_where, magnitude_window, rank_window
from methods.masks import band_mask, floor_count, stable_ranks
from methods.registry import Caches, Mergekit, ParamSpec, TensorContext, density_param
from methods.ties import tensor_windows, window_input

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


def check_tail_ranges(ranges: Mapping[str, tuple[float, float] | None]) -> str | None:
    """The search must never propose beta + gamma >= 1."""
    beta, gamma = ranges.get("beta"), ranges.get("gamma")
    if beta is None or gamma is None or beta[1] + gamma[1] < 1:
        return None
    return (
        f"its beta and gamma ranges allow beta + gamma >= 1 ({beta[1]} + {gamma[1]}); "
        "lower one of them"
    )


def reference_tails(
    delta: torch.Tensor, index: int, p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """Keep the band of stable magnitude ranks between the two dropped tails:
    per row (paper) or over the whole tensor (mergekit)."""
    if delta.dim() == 0:
        return delta
    per_row = ctx.compat != "mergekit"
    n = delta.shape[-1] if per_row else delta.numel()
    low, high = _tails(n, index, p, ctx)
    ranks = stable_ranks(delta, per_row)
    return torch.where((ranks >= low) & (ranks < n - high), delta, 0.0)


TAILS = Sparsifier(
    _inputs,
    reference_tails,
    params=(
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
    ),
    check=check_tails,
    exclusive=(("beta", "density"),),
    ranges_check=check_tail_ranges,
    caches=Caches(paper=("ranks",), mergekit=("orders",)),
)

register_family(
    TAILS,
    [
        Variant(
            "breadcrumbs",
            "sum",
            "drop the β smallest and γ largest magnitudes, then b + λ Σ w_t δ_t",
            normalize=False,
            mergekit=Mergekit("breadcrumbs", {"weight": [1.0, 1.0], "density": 0.8, "gamma": 0.05}),
        ),
        Variant(
            "breadcrumbs_ties",
            "ties",
            "Breadcrumbs masks, then TIES elect + disjoint merge",
            normalize=True,
            mergekit_normalize=False,
            mergekit=Mergekit(
                "breadcrumbs_ties", {"weight": [0.7, 1.0], "density": 0.7, "gamma": 0.1}
            ),
        ),
    ],
    lambda_search=(0.1, 1.5),
    start_points=({"beta": 0.09, "gamma": 0.01, "lambda": 1.0},),
)
