"""Sparse families: a sparsifier × a consensus, declared once.

Task arithmetic, TIES, DARE, Breadcrumbs and DELLA are one computation
(mergekit's generalized task arithmetic): a sparsifier decides which entries
of each task vector survive and how they are rescaled, then a consensus
combines the survivors, either as a weighted sum (b + λ Σ w_t τ'_t, divided by
Σ w_t when normalized) or by TIES' sign election and disjoint merge. A family
module declares its sparsifier and the consensus variants it offers, and
``register_family`` registers one method per variant (``dare_linear`` and
``dare_ties``, ``breadcrumbs`` and ``breadcrumbs_ties``, ...): the parameters
every variant shares (weight, λ, normalize) are added here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from methods.combine import (
    REFERENCE_CONSENSUS,
    consensus_merge,
    sum_coefficients,
    weighted_merge,
)
from methods.fuse import ExpertInput
from methods.kernels import Sparsify
from methods.launch import Plan
from methods.registry import (
    Caches,
    CrossCheck,
    Mergekit,
    MethodSpec,
    ParamSpec,
    RangeCheck,
    References,
    TensorContext,
    lambda_param,
    normalize_param,
    register,
    weight_param,
)

Inputs = Callable[
    [Sequence[torch.Tensor], Mapping[str, Any], TensorContext],
    tuple[list[ExpertInput], Sparsify],
]
# (task vector, its index, parameters, context) -> the sparsified, rescaled
# task vector in plain torch: the family's reference form
Reference = Callable[[torch.Tensor, int, Mapping[str, Any], TensorContext], torch.Tensor]


@dataclass(frozen=True)
class Sparsifier:
    """Which entries of each task vector survive, as kernel inputs.

    ``params`` come after the weight and ``tail_params`` after λ and
    normalize (the order a method's parameters are listed and searched in).
    """

    inputs: Inputs
    reference: Reference
    params: tuple[ParamSpec, ...] = ()
    tail_params: tuple[ParamSpec, ...] = ()
    random: bool = False
    check: CrossCheck | None = None
    exclusive: tuple[tuple[str, str], ...] = ()
    ranges_check: RangeCheck | None = None
    caches: Caches = Caches()


@dataclass(frozen=True)
class Variant:
    """One method of a family: its consensus and what differs between variants."""

    name: str
    consensus: Literal["sum", "ties"]
    summary: str
    normalize: bool
    mergekit_normalize: bool | None = None
    mergekit: Mergekit | None = None
    references: References | None = None


def weighted_sum(base, experts, sparsify, p, ctx, out):
    """b + λ Σ w_t τ'_t (÷ Σ w_t when normalized)."""
    coeffs = sum_coefficients(p["weight"], float(p["lambda"]), p["normalize"])
    return weighted_merge(base, experts, coeffs, ctx, out, sparsify=sparsify)


def ties_elect(base, experts, sparsify, p, ctx, out):
    """b + λ · TIES elect + disjoint merge of the τ'_t."""
    return consensus_merge(base, experts, p, ctx, out, sparsify)


CONSENSUS = {"sum": weighted_sum, "ties": ties_elect}


def keep_everything(
    deltas: Sequence[torch.Tensor], p: Mapping[str, Any], ctx: TensorContext
) -> tuple[list[ExpertInput], Sparsify]:
    """No sparsification: every task vector as it is (task arithmetic)."""
    from methods.kernels import keep_all

    return [ExpertInput(d, index=i) for i, d in enumerate(deltas)], keep_all


def reference_keep_everything(
    delta: torch.Tensor, index: int, p: Mapping[str, Any], ctx: TensorContext
) -> torch.Tensor:
    return delta


EVERYTHING = Sparsifier(keep_everything, reference_keep_everything)


def register_family(
    sparsifier: Sparsifier,
    variants: Sequence[Variant],
    lambda_search: tuple[float, float],
    start_points: tuple[Mapping[str, Any], ...],
) -> list[MethodSpec]:
    """Register one method per variant of the family; the specs, in order."""
    specs = []
    for v in variants:
        combine = CONSENSUS[v.consensus]

        def fn(
            base: torch.Tensor,
            deltas: Sequence[torch.Tensor],
            p: Mapping[str, Any],
            ctx: TensorContext,
            out: torch.Tensor | None = None,
            _combine=combine,
        ) -> Plan:
            experts, sparsify = sparsifier.inputs(deltas, p, ctx)
            return _combine(base, experts, sparsify, p, ctx, out)

        def reference(
            base: torch.Tensor,
            deltas: Sequence[torch.Tensor],
            p: Mapping[str, Any],
            ctx: TensorContext,
            _consensus=REFERENCE_CONSENSUS[v.consensus],
        ) -> torch.Tensor:
            kept = [sparsifier.reference(d, i, p, ctx) for i, d in enumerate(deltas)]
            return _consensus(base, kept, p, ctx.compat)

        fn.__name__ = fn.__qualname__ = v.name
        specs.append(
            register(
                MethodSpec(
                    name=v.name,
                    fn=fn,
                    params=(
                        weight_param(),
                        *sparsifier.params,
                        lambda_param(lambda_search),
                        normalize_param(v.normalize, v.mergekit_normalize),
                        *sparsifier.tail_params,
                    ),
                    summary=v.summary,
                    random=sparsifier.random,
                    check=sparsifier.check,
                    exclusive=sparsifier.exclusive,
                    ranges_check=sparsifier.ranges_check,
                    start_points=start_points,
                    references=v.references,
                    mergekit=v.mergekit,
                    caches=sparsifier.caches,
                    reference=reference,
                )
            )
        )
    return specs
