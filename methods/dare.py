"""DARE: drop task-vector entries at random, rescale the survivors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.linear import weighted_delta_sum
from methods.masks import l1_rescaled, uniform_like
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


def random_drop(
    delta: torch.Tensor,
    density: float,
    index: int,
    rescale: bool,
    ctx: TensorContext,
) -> torch.Tensor:
    """Keep each entry with probability ``density`` (seeded per tensor and model).

    paper: survivors are divided by ``density`` (unbiased); mergekit: the masked
    tensor is scaled to the L1 norm of the original.
    """
    if delta.dim() == 0 or density >= 1:
        return delta
    keep = uniform_like(delta, ctx.seed, ctx.name, index) < density
    masked = delta * keep
    if not rescale:
        return masked
    if ctx.compat == "mergekit":
        return l1_rescaled(delta, masked)
    return masked.div_(density)


def _dropped(deltas, p, ctx):
    return [random_drop(d, p["density"][i], i, p["rescale"], ctx) for i, d in enumerate(deltas)]


def dare_linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    merged = weighted_delta_sum(_dropped(deltas, p, ctx), p["weight"], p["normalize"])
    return base + merged.mul_(p["lambda"])


def dare_ties(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    taus = _dropped(deltas, p, ctx)
    merged = consensus_merge(taus, p["weight"], ctx.compat, p["normalize"])
    return base + merged.mul_(p["lambda"])


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
