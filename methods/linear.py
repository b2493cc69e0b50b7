"""Model soup (linear) and task arithmetic: weighted sums.

Linear averages whole models; task arithmetic is the sparse family with no
sparsifier (every entry of every task vector survives) and a weighted sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.combine import weighted_merge
from methods.family import EVERYTHING, Variant, register_family
from methods.launch import KernelCall
from methods.registry import (
    Mergekit,
    MethodSpec,
    References,
    TensorContext,
    normalize_param,
    register,
    weight_param,
)


def linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> KernelCall:
    """Σ w_t x_t / Σ w_t, written as b + Σ w_t δ_t / Σ w_t.

    ``base_weight`` is the reference model's own weight when it is one of the
    averaged inputs (0 when it only anchors the task vectors).
    """
    weights = [float(w) for w in p["weight"]]
    base_weight = float(p.get("base_weight", 0.0))
    total = base_weight + sum(weights)
    if p["normalize"]:
        if abs(total) < 1e-12:
            raise ValueError(
                f"linear merge of {ctx.name!r}: the weights sum to zero, so the "
                "normalized average is undefined; give at least one positive weight"
            )
        return weighted_merge(base, deltas, [w / total for w in weights], ctx, out)
    return weighted_merge(base, deltas, weights, ctx, out, base_scale=total)


def reference_linear(
    base: torch.Tensor, deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """(w_b b + Σ w_t x_t) / (w_b + Σ w_t) over the models x_t = b + δ_t."""
    weights = [float(w) for w in p["weight"]]
    base_weight = float(p.get("base_weight", 0.0))
    acc = base_weight * base + sum(w * (base + d) for w, d in zip(weights, deltas))
    return acc / (base_weight + sum(weights)) if p["normalize"] else acc


register(
    MethodSpec(
        name="linear",
        fn=linear,
        params=(weight_param(), normalize_param(True)),
        summary="model soup: Σ w_t x_t / Σ w_t (the base counts only if listed under models)",
        min_experts=1,
        inputs="average",
        start_points=({},),
        references=References(alone={}),
        mergekit=Mergekit("linear", {"weight": [0.3, 0.7]}),
        reference=reference_linear,
    )
)

register_family(
    EVERYTHING,
    [
        Variant(
            "task_arithmetic",
            "sum",
            "b + λ Σ w_t δ_t",
            normalize=False,
            mergekit=Mergekit("task_arithmetic", {"weight": [0.6, 0.9], "lambda": 0.8}),
            references=References(alone={"lambda": 1.0}, base={"lambda": 1.0}),
        )
    ],
    lambda_search=(0.1, 1.5),
    start_points=({"lambda": 0.5}, {"lambda": 1.0}),
)
