"""TIES: trim each task vector, elect a sign per entry, average the agreeing.

The elect and disjoint-merge steps are shared by every ``*_ties`` method
(DARE-TIES, Breadcrumbs-TIES, DELLA), which differ only in how they sparsify.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.masks import band_mask, count
from methods.registry import (
    MethodSpec,
    TensorContext,
    density_param,
    lambda_param,
    normalize_param,
    register,
    weight_param,
)


def consensus_merge(
    taus: Sequence[torch.Tensor],
    weights: Sequence[float],
    compat: str,
    normalize: bool,
) -> torch.Tensor:
    """TIES steps 2-3: elect s = sign(Σ τ) (0 counts as +), merge the agreeing.

    paper: the vote uses the unweighted τ_t and an entry joins when τ_t ≠ 0
    and its sign is s. mergekit: the vote uses w_t τ_t and an entry joins when
    sign(w_t τ_t) = s. Entries where nobody agrees get 0.
    """
    votes = torch.zeros_like(taus[0])
    for tau, w in zip(taus, weights):
        if compat == "mergekit":
            votes.add_(tau, alpha=float(w))
        else:
            votes.add_(tau)
    # elected sign as ±1 (a zero vote counts as +), in place of the votes
    elected = votes.ge_(0).to(taus[0].dtype).mul_(2).sub_(1)
    num = torch.zeros_like(taus[0])
    den = torch.zeros_like(taus[0])
    for tau, w in zip(taus, weights):
        # sign(x) == s for s = ±1 exactly when x·s > 0 (x = 0 never agrees)
        side = elected * tau
        if compat == "mergekit" and w < 0:
            side.neg_()
        agree = side.gt_(0)
        num.addcmul_(tau, agree, value=float(w))
        den.add_(agree, alpha=float(w))
    if normalize:
        den[den == 0] = 1.0
        num.div_(den)
    return num


def magnitude_trim(
    delta: torch.Tensor, density: float, index: int, ctx: TensorContext
) -> torch.Tensor:
    """Keep the k = ⌊d·n⌋ (at least one) largest-magnitude entries of the tensor."""
    if delta.dim() == 0 or density >= 1:
        return delta
    n = delta.numel()
    k = max(1, count(density, n, ctx.compat))
    ranks = ctx.ranks(index, False) if ctx.ranks else None
    return delta * band_mask(delta, n - k, 0, per_row=False, ranks=ranks)


def ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    taus = [magnitude_trim(d, p["density"][i], i, ctx) for i, d in enumerate(deltas)]
    merged = consensus_merge(taus, p["weight"], ctx.compat, p["normalize"])
    return base + merged.mul_(p["lambda"])


register(
    MethodSpec(
        name="ties",
        fn=ties,
        params=(
            weight_param(),
            density_param(0.2, help="fraction of largest-magnitude entries kept"),
            lambda_param((0.5, 1.8)),
            normalize_param(True),
        ),
        summary="trim to the top-d magnitudes, elect signs, average the agreeing, × λ",
        seed_points=({"density": 0.2, "lambda": 1.0},),
    )
)
