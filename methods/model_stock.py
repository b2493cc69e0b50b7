"""Model Stock: interpolate between the experts' mean and the base by how much
the experts' task vectors agree (their mean pairwise cosine)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, fuse
from methods.kernels import keep_all, mean_scaled
from methods.launch import KernelCall
from methods.registry import Mergekit, MethodSpec, ParamSpec, TensorContext, register


def interpolation_ratio(
    deltas: Sequence[torch.Tensor], filter_wise: bool, compat: str
) -> torch.Tensor:
    """t = N cos θ / (1 + (N - 1) cos θ), per tensor or per row (filter_wise).

    cos θ is the mean pairwise cosine. paper clamps t to [0, 1] (a negative
    cosine gives the base); mergekit leaves it unclamped. Where the denominator
    vanishes t is 0 (mergekit's rule), never an infinity.
    """

    def rows(t: torch.Tensor) -> torch.Tensor:
        if filter_wise and t.dim() >= 1:
            return t.reshape(-1, t.shape[-1])
        return t.reshape(1, -1)

    flat = [rows(d) for d in deltas]
    norms = [torch.linalg.vector_norm(f, dim=-1) for f in flat]
    n = len(flat)
    cos_sum = torch.zeros_like(norms[0])
    pairs = 0
    for i in range(n):
        for j in range(i + 1, n):
            dot = (flat[i] * flat[j]).sum(dim=-1)
            cos_sum += (dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
            pairs += 1
    cos = cos_sum / pairs
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denom))
    if compat != "mergekit":
        t = t.clamp(0.0, 1.0)
    return t


def model_stock(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> KernelCall:
    """t · mean(x_t) + (1 - t) · b, computed as b + t · mean(δ_t).

    t depends only on the task vectors, so a study computes it once per tensor.
    """
    filter_wise = bool(p["filter_wise"])
    t = ctx.remember(
        ("model_stock", filter_wise), lambda: interpolation_ratio(deltas, filter_wise, ctx.compat)
    )
    shape = base.shape
    rows = (-1, shape[-1]) if filter_wise and base.dim() >= 1 else (1, -1)
    experts = [ExpertInput(d.reshape(rows), index=i) for i, d in enumerate(deltas)]
    if out is None:
        out = torch.empty_like(base)
    target = out.view(rows)
    return fuse(
        keep_all,
        mean_scaled,
        base.reshape(rows),
        experts,
        [],
        [],
        ctx,
        target,
        t.unsqueeze(-1),
        out,
    )


def reference_model_stock(
    base: torch.Tensor, deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """b + t · mean(δ_t), t per tensor or per row."""
    filter_wise = bool(p["filter_wise"])
    t = interpolation_ratio(deltas, filter_wise, ctx.compat)
    rows = (-1, base.shape[-1]) if filter_wise and base.dim() >= 1 else (1, -1)
    mean = sum(deltas) / len(deltas)
    return (base.reshape(rows) + mean.reshape(rows) * t.unsqueeze(-1)).reshape(base.shape)


register(
    MethodSpec(
        name="model_stock",
        fn=model_stock,
        params=(
            ParamSpec(
                "filter_wise",
                "global",
                kind=bool,
                default=False,
                search=(False, True),
                help="compute the cosine per row instead of per tensor",
            ),
        ),
        summary="t·mean(x_t) + (1-t)·b with t from the experts' mean pairwise cosine",
        min_experts=2,
        start_points=({"filter_wise": False},),
        mergekit=Mergekit("model_stock", {}),
        reference=reference_model_stock,
    )
)
