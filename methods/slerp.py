"""SLERP: spherical interpolation between two models, tensor by tensor."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.kernels import ensure_finite
from methods.launch import Written
from methods.registry import Mergekit, MethodSpec, ParamSpec, TensorContext, register

DOT_THRESHOLD = 0.9995


def slerp(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> Written:
    """SLERP has no kernel: its plan is the interpolation, computed now."""
    merged = interpolate(base, deltas, p, ctx)
    ensure_finite(merged)
    return Written(merged if out is None else out.copy_(merged), ctx.name)


def interpolate(
    base: torch.Tensor, deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """Interpolate v0 = base and v1 = base + δ along the great circle.

    The angle comes from the normalized flattened tensors; the interpolation
    uses the unnormalized ones. Nearly parallel tensors (|cos| > 0.9995) fall
    back to linear interpolation, where the spherical formula is ill-conditioned.
    Plain torch already: it is also SLERP's reference form.
    """
    t = float(p["t"])
    v0 = base
    v1 = base + deltas[0]
    dot = ctx.remember("slerp_cosine", lambda: _cosine(v0, v1))
    if abs(dot) > DOT_THRESHOLD:
        merged = v0 + deltas[0] * t
    else:
        omega = math.acos(dot)
        s = math.sin(omega)
        merged = v0 * (math.sin((1 - t) * omega) / s) + v1 * (math.sin(t * omega) / s)
    return merged


def _cosine(v0: torch.Tensor, v1: torch.Tensor) -> float:
    """cos of the angle between the flattened tensors, in float64, clamped to [-1, 1]."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    na = float(torch.linalg.vector_norm(a, dtype=torch.float64))
    nb = float(torch.linalg.vector_norm(b, dtype=torch.float64))
    na = na if na > 1e-8 else 1.0
    nb = nb if nb > 1e-8 else 1.0
    dot = float(torch.dot(a.double(), b.double())) / (na * nb) if a.numel() else 1.0
    return max(-1.0, min(1.0, dot))


register(
    MethodSpec(
        name="slerp",
        fn=slerp,
        params=(
            ParamSpec(
                "t",
                "global",
                default=0.5,
                low=0.0,
                high=1.0,
                search=(0.0, 1.0),
                help="0 gives the first model (the base), 1 the second",
            ),
        ),
        summary="spherical interpolation of two models (base as v0 and one expert, or two experts)",
        min_experts=1,
        max_experts=1,
        inputs="pair",
        start_points=({"t": 0.5},),
        mergekit=Mergekit("slerp", {"t": 0.3}),
        reference=interpolate,
    )
)
