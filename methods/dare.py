"""DARE: drop task-vector entries at random, rescale the survivors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, premasked
from methods.kernels import Sparsify, magnitude_window, random_keep
from methods.linear import sum_coefficients, weighted_merge
from methods.masks import draw_key, l1_rescaled, uniform_like
from methods.registry import (
    MethodSpec,
    TensorContext,
    density_param,
    lambda_param,
    normalize_param,
    register,
    rescale_param,
    weight_param,
)
from methods.ties import consensus_merge


def dropped_inputs(
    deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> tuple[list[ExpertInput], Sparsify]:
    """Keep each entry with probability ``density``, drawn per tensor and model.

    paper: survivors are divided by ``density`` (unbiased), inside the fused
    pass; mergekit: the masked tensor is scaled to the L1 norm of the original,
    which needs the whole mask first, so those tensors are masked eagerly.
    """
    densities = [float(d) for d in p["density"]]
    if ctx.compat == "mergekit" and p["rescale"]:
        experts = []
        for i, (delta, d) in enumerate(zip(deltas, densities)):
            if delta.dim() == 0 or d >= 1:
                experts.append(premasked(delta))
                continue
            keep = uniform_like(delta, ctx.seed, ctx.name, i) < d
            experts.append(premasked(l1_rescaled(delta, torch.where(keep, delta, 0.0))))
        return experts, magnitude_window
    experts = []
    for i, (delta, d) in enumerate(zip(deltas, densities)):
        q = 1.0 if delta.dim() == 0 else min(d, 1.0)
        key = draw_key(ctx.seed, ctx.name, i)
        scale = q if p["rescale"] else 1.0
        experts.append(ExpertInput(delta, (), (q, scale), key, gain=1.0 / scale, index=i))
    return experts, random_keep


def dare_linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    experts, sparsify = dropped_inputs(deltas, p, ctx)
    coeffs = sum_coefficients(p["weight"], float(p["lambda"]), p["normalize"])
    return weighted_merge(base, experts, coeffs, ctx, out, sparsify=sparsify)


def dare_ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    experts, sparsify = dropped_inputs(deltas, p, ctx)
    return consensus_merge(base, experts, p, ctx, out, sparsify)


def _dare_params(normalize: bool, mergekit_normalize: bool | None):
    return (
        weight_param(),
        density_param(0.8, help="probability of keeping each entry (1 - drop rate)"),
        lambda_param((0.5, 1.5)),
        normalize_param(normalize, mergekit_normalize),
        rescale_param(),
    )


register(
    MethodSpec(
        name="dare_linear",
        fn=dare_linear,
        params=_dare_params(False, None),
        summary="random drop with keep probability d, rescale, then task arithmetic",
        random=True,
        seed_points=({"density": 0.8, "lambda": 1.0},),
    )
)

register(
    MethodSpec(
        name="dare_ties",
        fn=dare_ties,
        params=_dare_params(True, False),
        summary="random drop with keep probability d, rescale, then TIES elect+merge",
        random=True,
        seed_points=({"density": 0.8, "lambda": 1.0},),
    )
)
