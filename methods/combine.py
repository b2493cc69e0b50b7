"""The two consensus steps every task-vector method ends with.

A weighted sum, b_scale · b + Σ c_t τ'_t (linear, task arithmetic and the
``*_linear`` variants), or TIES' sign election and disjoint merge (TIES and
the ``*_ties`` variants). Both run as the combine stage of one fused kernel
after the sparsifier (``methods.kernels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, fuse
from methods.kernels import Sparsify, consensus, keep_all, weighted_sum
from methods.launch import KernelCall
from methods.registry import TensorContext


def sum_coefficients(
    weights: Sequence[float], scale: float, normalize: bool, extra_weight: float = 0.0
) -> list[float]:
    """scale · w_t, divided by Σ w_t (+ ``extra_weight``) when ``normalize``.

    A weight sum within 1e-8 of zero is treated as 1, as mergekit does, so
    opposite weights cannot blow the result up.
    """
    total = float(sum(weights)) + extra_weight
    if normalize and abs(total) >= 1e-8:
        scale = scale / total
    return [scale * float(w) for w in weights]


def weighted_merge(
    base: torch.Tensor,
    taus: Sequence[torch.Tensor | ExpertInput],
    coeffs: Sequence[float],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
    base_scale: float = 1.0,
    sparsify: Sparsify = keep_all,
) -> KernelCall:
    """``base_scale`` b + Σ c_t τ_t in one pass (τ_t sparsified by ``sparsify``)."""
    experts = [
        t if isinstance(t, ExpertInput) else ExpertInput(t, index=i) for i, t in enumerate(taus)
    ]
    rows = [[c] for c in coeffs]
    return fuse(sparsify, weighted_sum, base, experts, rows, [base_scale], ctx, out)


def consensus_rows(
    weights: Sequence[float], compat: str, lam: float, normalize: bool
) -> tuple[list[list[float]], list[float]]:
    """The kernel's scalars for TIES steps 2-3: elect s = sign(Σ τ) (0 counts as +),
    merge the agreeing.

    paper: the vote uses the unweighted τ_t and an entry joins when τ_t ≠ 0
    and its sign is s. mergekit: the vote uses w_t τ_t and an entry joins when
    sign(w_t τ_t) = s. Entries where nobody agrees get 0.
    """
    rows = []
    for w in map(float, weights):
        if compat == "mergekit":
            rows.append([w, w, float((w > 0) - (w < 0))])
        else:
            rows.append([1.0, w, 1.0])
    return rows, [float(lam), 1.0 if normalize else 0.0]


def consensus_merge(
    base: torch.Tensor,
    experts: Sequence[ExpertInput],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None,
    sparsify: Sparsify,
) -> KernelCall:
    """b + λ · TIES(elect, disjoint merge) of the sparsified task vectors."""
    rows, g = consensus_rows(p["weight"], ctx.compat, p["lambda"], p["normalize"])
    return fuse(sparsify, consensus, base, experts, rows, g, ctx, out)


# -- plain-torch reference forms (readable math, no kernels; the tests hold the
# fused path to them)


def reference_sum(
    base: torch.Tensor, taus: Sequence[torch.Tensor], p: Mapping[str, Any], compat: str
) -> torch.Tensor:
    """b + λ Σ w_t τ_t, divided by Σ w_t when normalized (a ~0 sum counts as 1)."""
    coeffs = sum_coefficients(p["weight"], float(p["lambda"]), p["normalize"])
    return base + sum(c * tau for c, tau in zip(coeffs, taus))


def reference_ties(
    base: torch.Tensor, taus: Sequence[torch.Tensor], p: Mapping[str, Any], compat: str
) -> torch.Tensor:
    """TIES elect and disjoint merge.

    paper: the elected sign is that of Σ τ_t (0 counts as +); τ_t joins where it
    is non-zero with that sign. mergekit: the vote is Σ w_t τ_t and τ_t joins
    where w_t τ_t has the elected sign. Joined entries give Σ w_t τ_t, divided
    by the joined weights' sum when normalized; b + λ times that.
    """
    weights = [float(w) for w in p["weight"]]
    if compat == "mergekit":
        vote = sum(w * tau for w, tau in zip(weights, taus))
    else:
        vote = sum(taus)
    sign = torch.where(vote >= 0, 1.0, -1.0)
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for w, tau in zip(weights, taus):
        voter = w * tau if compat == "mergekit" else tau
        joins = voter * sign > 0
        num = num + torch.where(joins, w * tau, 0.0)
        den = den + torch.where(joins, w, 0.0)
    merged = num / torch.where(den == 0, 1.0, den) if p["normalize"] else num
    return base + float(p["lambda"]) * merged


REFERENCE_CONSENSUS = {"sum": reference_sum, "ties": reference_ties}
