"""Model soup (linear) and task arithmetic: weighted sums of task vectors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, fuse
from methods.kernels import keep_all, weighted_sum
from methods.registry import (
    MethodSpec,
    TensorContext,
    lambda_param,
    normalize_param,
    register,
    weight_param,
)


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
    sparsify=keep_all,
) -> torch.Tensor:
    """``base_scale`` b + Σ c_t τ_t in one pass (τ_t sparsified by ``sparsify``)."""
    experts = [
        t if isinstance(t, ExpertInput) else ExpertInput(t, index=i) for i, t in enumerate(taus)
    ]
    rows = [[c] for c in coeffs]
    return fuse(sparsify, weighted_sum, base, experts, rows, [base_scale], ctx, out)


def linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
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


def task_arithmetic(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    coeffs = sum_coefficients(p["weight"], float(p["lambda"]), p["normalize"])
    return weighted_merge(base, deltas, coeffs, ctx, out)


register(
    MethodSpec(
        name="linear",
        fn=linear,
        params=(weight_param(), normalize_param(True)),
        summary="model soup: Σ w_t x_t / Σ w_t (the base counts only if listed under models)",
        min_experts=1,
        needs_base=False,
        seed_points=({},),
    )
)

register(
    MethodSpec(
        name="task_arithmetic",
        fn=task_arithmetic,
        params=(weight_param(), lambda_param((0.1, 1.5)), normalize_param(False)),
        summary="b + λ Σ w_t δ_t",
        seed_points=({"lambda": 0.5}, {"lambda": 1.0}),
    )
)
