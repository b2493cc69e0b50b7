"""Model soup (linear) and task arithmetic: weighted sums of task vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.registry import (
    MethodSpec,
    TensorContext,
    lambda_param,
    normalize_param,
    register,
    weight_param,
)


def weighted_delta_sum(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    normalize: bool,
    extra_weight: float = 0.0,
) -> torch.Tensor:
    """Σ w_t δ_t, divided by Σ w_t (+ ``extra_weight``) when ``normalize``.

    A weight sum within 1e-8 of zero is treated as 1, as mergekit does, so
    opposite weights cannot blow the result up.
    """
    out = torch.zeros_like(deltas[0])
    for delta, w in zip(deltas, weights):
        if w != 0:
            out.add_(delta, alpha=float(w))
    if normalize:
        total = float(sum(weights)) + extra_weight
        if abs(total) >= 1e-8:
            out.div_(total)
    return out


def scaled_base_plus(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    base_scale: float = 1.0,
) -> torch.Tensor:
    """``base_scale`` b + Σ c_t δ_t, accumulated left to right in one fresh tensor.

    One fused add per task vector and no other temporaries: these methods run
    near the memory-bandwidth floor.
    """
    start = base if base_scale == 1.0 else base * base_scale
    out = None
    for delta, c in zip(deltas, coeffs):
        if c == 0:
            continue
        out = (
            torch.add(start, delta, alpha=float(c))
            if out is None
            else out.add_(delta, alpha=float(c))
        )
    return start.clone() if out is None else out


def linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    """Σ w_t x_t / Σ w_t, written as b + Σ w_t δ_t / Σ w_t.

    ``base_weight`` is the reference model's own weight when it is one of the
    averaged inputs (0 when it only anchors the task vectors).
    """
    weights = list(p["weight"])
    base_weight = float(p.get("base_weight", 0.0))
    total = base_weight + sum(weights)
    if p["normalize"]:
        if abs(total) < 1e-12:
            raise ValueError(
                f"linear merge of {ctx.name!r}: the weights sum to zero, so the "
                "normalized average is undefined; give at least one positive weight"
            )
        return scaled_base_plus(base, deltas, [w / total for w in weights])
    return scaled_base_plus(base, deltas, weights, base_scale=total)


def task_arithmetic(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
) -> torch.Tensor:
    weights = [float(w) for w in p["weight"]]
    scale = float(p["lambda"])
    if p["normalize"]:
        total = sum(weights)
        if abs(total) >= 1e-8:  # as weighted_delta_sum: a zero sum is taken as 1
            scale /= total
    return scaled_base_plus(base, deltas, [scale * w for w in weights])


register(
    MethodSpec(
        name="linear",
        fn=linear,
        params=(weight_param(), normalize_param(True)),
        summary="model soup: Σ w_t x_t / Σ w_t (the base counts only if listed under models)",
        min_experts=1,
        needs_base=False,
        seed_points=({},),
        elementwise=True,
    )
)

register(
    MethodSpec(
        name="task_arithmetic",
        fn=task_arithmetic,
        params=(weight_param(), lambda_param((0.1, 1.5)), normalize_param(False)),
        summary="b + λ Σ w_t δ_t",
        seed_points=({"lambda": 0.5}, {"lambda": 1.0}),
        elementwise=True,
    )
)
