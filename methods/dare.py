"""DARE: drop task-vector entries at random, rescale the survivors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.family import Sparsifier, Variant, register_family
from methods.fuse import ExpertInput, premasked
from methods.kernels import Sparsify, magnitude_window, random_keep
from methods.masks import draw_key, l1_rescaled, uniform_like
from methods.registry import Mergekit, TensorContext, density_param, rescale_param


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


def reference_drop(
    delta: torch.Tensor, index: int, p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """Keep where the tensor's seeded draw is below d; survivors divided by d
    (paper) or scaled to the task vector's L1 norm (mergekit)."""
    d = float(p["density"][index])
    if delta.dim() == 0 or d >= 1:
        return delta
    kept = torch.where(uniform_like(delta, ctx.seed, ctx.name, index) < d, delta, 0.0)
    if not p["rescale"]:
        return kept
    return l1_rescaled(delta, kept) if ctx.compat == "mergekit" else kept / d


DROP = Sparsifier(
    dropped_inputs,
    reference_drop,
    params=(density_param(0.8, help="probability of keeping each entry (1 - drop rate)"),),
    tail_params=(rescale_param(),),
    random=True,
)

register_family(
    DROP,
    [
        Variant(
            "dare_linear",
            "sum",
            "random drop with keep probability d, rescale, then task arithmetic",
            normalize=False,
            mergekit=Mergekit("dare_linear", {"weight": [1.0, 0.5], "density": 0.6}),
        ),
        Variant(
            "dare_ties",
            "ties",
            "random drop with keep probability d, rescale, then TIES elect+merge",
            normalize=True,
            mergekit_normalize=False,
            mergekit=Mergekit("dare_ties", {"weight": [1.0, 0.5], "density": 0.6}),
        ),
    ],
    lambda_search=(0.5, 1.5),
    start_points=({"density": 0.8, "lambda": 1.0},),
)
