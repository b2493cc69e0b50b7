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

from methods.family import Sparsifier, Variant, register_family
from methods.fuse import ExpertInput, premasked
from methods.kernels import (
    Sparsify,
    magnitude_window,
    ranked_random_keep,
    ranked_random_keep_rescaled,
)
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
    Caches,
    Mergekit,
    ParamSpec,
    Reparam,
    TensorContext,
    density_param,
    rescale_param,
)


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


def _room(density: float) -> float:
    return min(density, 1.0 - density)


def check_window_ranges(ranges: Mapping[str, tuple[float, float] | None]) -> str | None:
    """A fixed epsilon must fit every density the study may propose (a searched
    one is a fraction of the room and always fits)."""
    eps, density = ranges.get("epsilon"), ranges.get("density")
    if eps is None or density is None or eps[0] != eps[1]:
        return None
    e, (d_lo, d_hi) = eps[0], density
    if e < d_lo and d_hi + e <= 1:
        return None
    return (
        f"epsilon {e} does not fit every density in [{d_lo}, {d_hi}]: need epsilon < "
        "density and density + epsilon <= 1"
    )


EPSILON = ParamSpec(
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
    reparam=Reparam(
        "epsilon_frac",
        0.0,
        0.99,
        depends_on="density",
        value=lambda frac, d: frac * _room(d),
        searched=lambda eps, d: eps / _room(d) if _room(d) > 0 else 0.0,
    ),
)


def reference_magprune(
    delta: torch.Tensor, index: int, p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """Keep where the seeded draw is below q = d - ε + 2ε · rank / (n - 1), the
    entry's stable magnitude rank in its row; survivors divided by q (paper)
    or scaled to the task vector's L1 norm (mergekit)."""
    d, eps = float(p["density"][index]), float(p["epsilon"][index])
    if delta.dim() == 0 or (d >= 1 and eps == 0):
        return delta
    a, b = _line(delta.shape[-1], d, eps)
    q = a + stable_ranks(delta, True).to(torch.float32) * b
    kept = torch.where(uniform_like(delta, ctx.seed, ctx.name, index) < q, delta, 0.0)
    if not p["rescale"]:
        return kept
    return l1_rescaled(delta, kept) if ctx.compat == "mergekit" else kept / q


MAGPRUNE = Sparsifier(
    pruned_inputs,
    reference_magprune,
    params=(density_param(0.7, help="mean keep probability"), EPSILON),
    tail_params=(rescale_param(),),
    random=True,
    check=check_window,
    caches=Caches(paper=("ranks",), mergekit=("ranks",)),
    ranges_check=check_window_ranges,
)

register_family(
    MAGPRUNE,
    [
        Variant(
            "della",
            "ties",
            "MagPrune (keep prob. d ± ε by magnitude rank), rescale, TIES elect+merge",
            normalize=True,
            mergekit=Mergekit("della", {"weight": [1.0, 0.5], "density": 0.6, "epsilon": 0.1}),
        ),
        Variant(
            "della_linear",
            "sum",
            "MagPrune, rescale, then b + λ Σ w_t δ'_t",
            normalize=False,
            mergekit=Mergekit(
                "della_linear", {"weight": [1.0, 0.5], "density": 0.6, "epsilon": 0.1}
            ),
        ),
    ],
    lambda_search=(0.5, 1.5),
    start_points=({"density": 0.7, "epsilon": 0.07, "lambda": 1.1},),
)
