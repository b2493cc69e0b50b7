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


# Task-vector entries a one-shot merge must draw random masks for before
# compiling the draws repays it: a cold compile costs 30-45 s (two graphs per
# kernel: the first shape, then the dynamic one), eager draws about 8-11 ns per
# entry more than compiled ones (docs/benchmarks.md, design measurements).
COMPILE_DRAWS_MIN_ENTRIES = 5 * 10**9


def worth_compiling_once(plan: Plan, merge_entries: int) -> bool:
    """Whether a kernel a one-shot merge launches once per tensor repays its
    compilation; ``merge_entries``: task-vector entries of the whole merge
    (float entries of the model times experts).

    Run eagerly a block at a time (methods.launch), weighted sums, magnitude
    windows, TIES' election and Model Stock stay near memory speed: never worth
    a compile. The counter hash of DARE's and DELLA's draws is a dozen integer
    ops per entry: compiled, it repays the compilation on models of a few
    billion parameters (``COMPILE_DRAWS_MIN_ENTRIES``), not below.
    ``bench/merge_vs_mergekit.py --compile auto,never,always`` measures it.
    """
    return (
        isinstance(plan, KernelCall)
        and plan.sparsify in HASHED_DRAWS
        and merge_entries >= COMPILE_DRAWS_MIN_ENTRIES
    )
