"""TIES: trim each task vector, elect a sign per entry, average the agreeing.

The elect and disjoint-merge steps are shared by every ``*_ties`` method
(DARE-TIES, Breadcrumbs-TIES, DELLA), which differ only in how they sparsify;
they run as ``methods.kernels.consensus`` inside the fused pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, fuse
from methods.kernels import Sparsify, consensus, magnitude_window
from methods.magnitudes import Window, keep_ranks
from methods.masks import count
from methods.registry import (
    MethodSpec,
    TensorContext,
    density_param,
    lambda_param,
    normalize_param,
    register,
    weight_param,
)


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
) -> torch.Tensor:
    """b + λ · TIES(elect, disjoint merge) of the sparsified task vectors."""
    rows, g = consensus_rows(p["weight"], ctx.compat, p["lambda"], p["normalize"])
    return fuse(sparsify, consensus, base, experts, rows, g, ctx, out)


def window_input(delta: torch.Tensor, w: Window, index: int) -> ExpertInput:
    """Task vector ``index`` under a magnitude window, as the magnitude_window kernel's input."""
    return ExpertInput(delta, (), (w.lo, w.hi), (w.lo_pos, w.hi_pos), index=index)


def tensor_windows(
    deltas: Sequence[torch.Tensor], bands: Sequence[tuple[int, int]], ctx: TensorContext
) -> list[Window]:
    """Each task vector's window keeping its whole-tensor stable ranks first..last."""
    cached = [ctx.magnitudes(i) if ctx.magnitudes else None for i in range(len(deltas))]
    return keep_ranks(list(deltas), list(bands), cached, ctx.compile)


def trim_band(delta: torch.Tensor, density: float, ctx: TensorContext) -> tuple[int, int]:
    """The ranks of the k = ⌊d·n⌋ (at least one) largest magnitudes of the tensor."""
    n = delta.numel()
    if delta.dim() == 0 or density >= 1:
        return 0, n - 1
    return n - max(1, count(density, n, ctx.compat)), n - 1


def ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    bands = [trim_band(d, p["density"][i], ctx) for i, d in enumerate(deltas)]
    windows = tensor_windows(deltas, bands, ctx)
    experts = [window_input(d, w, i) for i, (d, w) in enumerate(zip(deltas, windows))]
    return consensus_merge(base, experts, p, ctx, out, magnitude_window)


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
