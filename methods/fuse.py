"""From a method's per-expert decisions to one kernel call that writes ``out``.

A method decides, per task vector, what the kernel sparsifies (the vector
itself, or a form masked eagerly where the fused rule cannot express it), with
which per-element inputs and scalars, and how the results combine; this module
lays the tensors out as a ``methods.launch.KernelCall``: the method's plan,
which its caller launches (the engine stacks the calls of same-shaped
tensors into one launch per candidate; a one-shot merge launches each).

A candidate with NaN or inf must fail its trial, but checking the result costs
a pass over it. With finite inputs, the kernels can only overflow: so a
bound on |result| from the inputs' largest magnitudes (kept per study) and the
scalars proves most candidates finite for free, and only the rest (weights
of mixed signs under TIES normalization, huge scalars) are checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from methods.kernels import (
    PAIRED,
    Combine,
    Sparsify,
    consensus,
    mean_scaled,
    weighted_sum,
)
from methods.launch import KernelCall, pack_scalars
from methods.registry import TensorContext


@dataclass(frozen=True)
class ExpertInput:
    """One task vector as the kernel sees it: per-element inputs and its rows
    of float (``s``) and integer (``i``) scalars."""

    tau: torch.Tensor
    aux: tuple[torch.Tensor, ...] = ()
    s: tuple[float, ...] = ()
    i: tuple[int, ...] = ()
    # |sparsified τ| <= gain · max|tau| (1 / smallest keep probability when rescaling)
    gain: float = 1.0
    # tau is task vector ``index`` itself (its max|.| is kept per study), not a masked copy
    index: int | None = None


def premasked(tau: torch.Tensor) -> ExpertInput:
    """An eagerly masked task vector: the magnitude window (-1, inf) keeps all of it."""
    return ExpertInput(tau, (), (-1.0, float("inf")), (0, max(1, tau.numel())))


# results provably below this magnitude are finite (float32 max is 3.4e38)
SAFE_BOUND = 1e37


def _absmax(t: torch.Tensor, key, ctx: TensorContext) -> float:
    def build() -> float:  # max |t| from one pass without a |t| temporary
        if not t.numel():
            return 0.0
        lo, hi = torch.aminmax(t)
        return max(-float(lo), float(hi))

    return build() if key is None else ctx.remember(("absmax", key), build)


def result_bound(
    combine: Combine,
    base: torch.Tensor,
    experts: Sequence[ExpertInput],
    c_rows: Sequence[Sequence[float]],
    g: Sequence[float],
    ctx: TensorContext,
    c: torch.Tensor | None,
) -> float:
    """An upper bound on |result| (inf when none is cheap), inputs finite."""
    b = _absmax(base, "base", ctx)
    taus = [e.gain * _absmax(e.tau, e.index, ctx) for e in experts]
    if combine is weighted_sum:
        return abs(g[0]) * b + sum(abs(r[0]) * t for r, t in zip(c_rows, taus))
    if combine is mean_scaled:
        return b + float(c.abs().max()) * sum(taus) / len(taus)
    if combine is consensus:
        weights = [r[1] for r in c_rows if r[1] != 0]
        num = sum(abs(r[1]) * t for r, t in zip(c_rows, taus))
        if g[1] > 0 and weights:  # normalized: divided by the agreeing weights' sum
            if not (all(w > 0 for w in weights) or all(w < 0 for w in weights)):
                return float("inf")  # mixed signs: that sum can come near zero
            num /= min(abs(w) for w in weights)
        return b + abs(g[0]) * num
    return float("inf")


def fuse(
    sparsify: Sparsify,
    combine: Combine,
    base: torch.Tensor,
    experts: Sequence[ExpertInput],
    c_rows: Sequence[Sequence[float]],
    g: Sequence[float],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    result: torch.Tensor | None = None,
) -> KernelCall:
    """The kernel call that writes ``out`` (allocated when None, shaped like ``base``).

    ``c`` replaces ``c_rows`` by a tensor that broadcasts against ``base``
    (Model Stock's per-row ratios); the tensors then keep their shape.
    ``result`` is what the caller receives (default ``out``), when ``out`` is a
    reshaped view of it.
    """
    if base.numel() >= 1 << 31:
        raise ValueError(
            f"{ctx.name} has {base.numel()} entries; merges support tensors below 2^31 entries"
        )
    if out is None:
        out = torch.empty_like(base)
    layout = base.shape if c is not None else (2, -1) if sparsify in PAIRED else (-1,)

    def view(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(layout)

    floats, ints = pack_scalars(
        [e.s for e in experts],
        [e.i for e in experts],
        [[]] * len(experts) if c is not None else c_rows,
        g,
    )
    bound = result_bound(combine, base, experts, c_rows, g, ctx, c)
    call = KernelCall(
        sparsify,
        combine,
        view(base),
        out.view(layout),  # a view: the result lands in ``out`` itself
        [view(e.tau) for e in experts],
        [a for e in experts for a in e.aux],
        len(experts[0].aux) if experts else 0,
        floats,
        ints,
        extra=c,
        name=ctx.name,
        check=not math.isfinite(bound) or bound >= SAFE_BOUND,
        result=out if result is None else result,
    )
    return call
