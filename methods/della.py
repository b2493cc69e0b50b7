"""DELLA: MagPrune (rank-dependent random drop), rescale, then elect and fuse.

Keep probabilities rise linearly with an entry's magnitude rank within its
row, from d - ε for the smallest to d + ε for the largest (mean d), so large
changes survive more often than small ones. ``epsilon`` is mergekit's
half-width; the paper's window is 2ε, and the blog's Δ is 2ε / (n - 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.fuse import ExpertInput, premasked
from methods.kernels import (
    Sparsify,
    magnitude_window,
    ranked_random_keep,
    ranked_random_keep_rescaled,
)
from methods.linear import sum_coefficients, weighted_merge
from methods.masks import (
    as_rows,
    draw_key,
    l1_rescaled,
    packable,
    row_ranks_packed,
    stable_ranks,
    uniform_like,
)
from methods.registry import (
    MethodSpec,
    ParamSpec,
    TensorContext,
    density_param,
    lambda_param,
    normalize_param,
    register,
    rescale_param,
    weight_param,
)
from methods.ties import consensus_merge


def _line(n: int, density: float, epsilon: float) -> tuple[float, float]:
    """q_r = a + b · r as (a, b)."""
    if n <= 1:
        return density, 0.0
    return density - epsilon, 2.0 * epsilon / (n - 1)


def pruned_inputs(
    deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> tuple[list[ExpertInput], Sparsify]:
    """MagPrune: keep with q_r by magnitude rank within each row, drawn per tensor and model.

    paper: survivors divided by their own q_r, inside the fused pass, with the
    row ranks packed (cached per study, or computed here); mergekit: one
    L1-matching factor per tensor, which needs the whole mask first, so those
    tensors (and tensors whose ranks cannot be packed) are pruned eagerly.
    """
    lines = []
    for i, delta in enumerate(deltas):
        d, eps = float(p["density"][i]), float(p["epsilon"][i])
        whole = delta.dim() == 0 or (d >= 1 and eps == 0)
        lines.append((1.0, 0.0) if whole else _line(as_rows(delta, True).shape[-1], d, eps))
    fused = not (ctx.compat == "mergekit" and p["rescale"]) and packable(deltas[0])
    if fused:
        experts = []
        for i, (delta, (a, b)) in enumerate(zip(deltas, lines)):
            packed = ctx.ranks(i, True) if ctx.ranks else None
            if packed is None:
                packed = row_ranks_packed(delta)
            key = draw_key(ctx.seed, ctx.name, i)
            gain = 1.0 / a if p["rescale"] else 1.0  # q >= a = d - epsilon > 0
            experts.append(ExpertInput(delta, (packed.words,), (a, b), key, gain, index=i))
        return experts, ranked_random_keep_rescaled if p["rescale"] else ranked_random_keep
    experts = []
    for i, (delta, (a, b)) in enumerate(zip(deltas, lines)):
        if (a, b) == (1.0, 0.0):
            experts.append(premasked(delta))
            continue
        packed = ctx.ranks(i, True) if ctx.ranks else None
        ranks = packed.ranks() if packed is not None else stable_ranks(delta, True)
        q = a + ranks.to(torch.float32) * b
        masked = torch.where(uniform_like(delta, ctx.seed, ctx.name, i) < q, delta, 0.0)
        if not p["rescale"]:
            experts.append(premasked(masked))
        elif ctx.compat == "mergekit":
            experts.append(premasked(l1_rescaled(delta, masked)))
        else:
            experts.append(premasked(masked / q))
    return experts, magnitude_window


def della(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    experts, sparsify = pruned_inputs(deltas, p, ctx)
    return consensus_merge(base, experts, p, ctx, out, sparsify)


def della_linear(
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    p: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    experts, sparsify = pruned_inputs(deltas, p, ctx)
    coeffs = sum_coefficients(p["weight"], float(p["lambda"]), p["normalize"])
    return weighted_merge(base, experts, coeffs, ctx, out, sparsify=sparsify)


def check_window(values: Mapping[str, Any]) -> str | None:
    d, eps = values["density"], values["epsilon"]
    if d - eps <= 0 or d + eps > 1:
        room = min(d, 1 - d)
        return (
            f"epsilon {eps:g} is too large for density {d:g}: keep probabilities "
            f"d - epsilon and d + epsilon must lie in (0, 1], so epsilon must be "
            f"below {room:g} here"
        )
    return None


def _params(normalize: bool):
    return (
        weight_param(),
        density_param(0.7, help="mean keep probability"),
        ParamSpec(
            "epsilon",
            "model",
            default=0.07,
            low=0.0,
            high=1.0,
            high_open=True,
            search=(0.0, 1.0),
            help="half-width of the keep-probability window: the smallest entry "
            "is kept with d - ε, the largest with d + ε (searched as a fraction "
            "of min(d, 1 - d))",
        ),
        lambda_param((0.5, 1.5)),
        normalize_param(normalize),
        rescale_param(),
    )


_SEED = ({"density": 0.7, "epsilon": 0.07, "lambda": 1.1},)

register(
    MethodSpec(
        name="della",
        fn=della,
        params=_params(True),
        summary="MagPrune (keep prob. d ± ε by magnitude rank), rescale, TIES elect+merge",
        random=True,
        check=check_window,
        seed_points=_SEED,
    )
)

register(
    MethodSpec(
        name="della_linear",
        fn=della_linear,
        params=_params(False),
        summary="MagPrune, rescale, then b + λ Σ w_t δ'_t",
        random=True,
        check=check_window,
        seed_points=_SEED,
    )
)
