"""TIES: trim each task vector, elect a sign per entry, average the agreeing.

The trim (keep each task vector's top-d magnitudes, through a magnitude
window) is this module's sparsifier; mergekit-mode Breadcrumbs reuses its
windows. The elect and disjoint-merge steps are ``methods.combine``'s
consensus, shared by every ``*_ties`` method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods.family import Sparsifier, Variant, register_family
from methods.fuse import ExpertInput
from methods.kernels import Sparsify, magnitude_window
from methods.magnitudes import Window, keep_ranks
from methods.masks import count, stable_ranks
from methods.registry import Caches, Mergekit, TensorContext, density_param


def window_input(delta: torch.Tensor, w: Window, index: int) -> ExpertInput:
    """Task vector ``index`` under a magnitude window, as the magnitude_window kernel's input."""
    return ExpertInput(delta, (), (w.lo, w.hi), (w.lo_pos, w.hi_pos), index=index)


def tensor_windows(
    deltas: Sequence[torch.Tensor], bands: Sequence[tuple[int, int]], ctx: TensorContext
) -> list[Window]:
    """Each task vector's window keeping its whole-tensor stable ranks first..last."""
    cached = [ctx.magnitudes(i) if ctx.magnitudes else None for i in range(len(deltas))]
    return keep_ranks(list(deltas), list(bands), cached, ctx.compile)


def trim_band(delta: torch.Tensor, density: float, ctx: TensorContext) -> tuple[int, int]:
    """The ranks of the k = ⌊d·n⌋ (at least one) largest magnitudes of the tensor."""
    n = delta.numel()
    if delta.dim() == 0 or density >= 1:
        return 0, n - 1
    return n - max(1, count(density, n, ctx.compat)), n - 1


def trimmed_inputs(
    deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> tuple[list[ExpertInput], Sparsify]:
    """TIES step 1: each task vector keeps its top-d magnitudes."""
    bands = [trim_band(d, p["density"][i], ctx) for i, d in enumerate(deltas)]
    windows = tensor_windows(deltas, bands, ctx)
    experts = [window_input(d, w, i) for i, (d, w) in enumerate(zip(deltas, windows))]
    return experts, magnitude_window


def reference_trim(
    delta: torch.Tensor, index: int, p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    """Keep the k = ⌊d·n⌋ (at least one) entries of highest stable magnitude rank."""
    n, density = delta.numel(), p["density"][index]
    if delta.dim() == 0 or density >= 1:
        return delta
    k = max(1, count(density, n, ctx.compat))
    return torch.where(stable_ranks(delta, per_row=False) >= n - k, delta, 0.0)


MAGNITUDE = Sparsifier(
    trimmed_inputs,
    reference_trim,
    params=(density_param(0.2, help="fraction of largest-magnitude entries kept"),),
    caches=Caches(paper=("orders",), mergekit=("orders",)),
)

register_family(
    MAGNITUDE,
    [
        Variant(
            "ties",
            "ties",
            "trim to the top-d magnitudes, elect signs, average the agreeing, × λ",
            normalize=True,
            mergekit=Mergekit("ties", {"weight": [1.0, 0.5], "density": 0.4, "lambda": 1.2}),
        )
    ],
    lambda_search=(0.5, 1.8),
    start_points=({"density": 0.2, "lambda": 1.0},),
)
