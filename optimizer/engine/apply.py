"""A method's plan for one tensor, and its launch, with the engine's errors.

Methods return plans (``methods.launch.Plan``); whoever merges decides when
to launch them: the resident engine collects a candidate's plans and launches
same-shaped tensors stacked, a one-shot merge launches each tensor's plan at
once. Either way a NaN or inf result, or a parameter a method cannot use,
becomes a MergeError naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from methods import MethodSpec, Plan, TensorContext
from methods.engine_api import HASHED_DRAWS, KernelCall, NotFiniteError, launch
from optimizer.errors import MergeoptError

NOT_FINITE = (
    "tensor {}: {} produced NaN or inf values from finite inputs; check the parameters "
    "(weights summing to zero, extreme lambda)"
)


class MergeError(MergeoptError):
    """A merge produced an unusable tensor (NaN/inf) or failed mid-way."""


def plan_tensor(
    method: MethodSpec,
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    params: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> Plan:
    """``method``'s plan for one tensor (writing ``out`` when given)."""
    try:
        return method.fn(base, deltas, params, ctx, out=out)
    except NotFiniteError:  # computed while planning (SLERP's eager math)
        raise MergeError(NOT_FINITE.format(ctx.name, method.name)) from None
    except ValueError as e:
        raise MergeError(f"tensor {ctx.name}: {e}") from None


def launch_plans(plans: Sequence[Plan], compile: bool, method: MethodSpec) -> None:
    """Launch ``plans`` (stacked where their tensors allow); NaN or inf is an error."""
    try:
        launch(plans, compile)
    except NotFiniteError as e:
        raise MergeError(NOT_FINITE.format(e.tensor, method.name)) from None


def merge_now(
    method: MethodSpec,
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    params: Mapping[str, Any],
    ctx: TensorContext,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One tensor merged now (planned, launched): the result, in ``out`` when given."""
    plan = plan_tensor(method, base, deltas, params, ctx, out)
    launch_plans([plan], ctx.compile, method)
    return plan.result


def worth_compiling_once(plan: Plan) -> bool:
    """Whether a kernel launched once (a one-shot merge) repays its compilation.

    Eager torch runs a fused kernel as separate whole-tensor ops. For weighted
    sums, magnitude windows, TIES' election and Model Stock those are a few
    memory-bound passes, cheaper than compiling a kernel used once per shape.
    The random draws of DARE and DELLA are not: eagerly, each of the counter
    hash's integer ops builds a full-size temporary, several times the compile
    cost. ``bench/merge_vs_mergekit.py --compile auto|always|never`` measures
    the choice (docs/benchmarks.md).
    """
    return isinstance(plan, KernelCall) and plan.sparsify in HASHED_DRAWS
