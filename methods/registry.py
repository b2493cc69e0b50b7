"""One place that declares every merge method and its parameters.

Configs are validated against these declarations and the optimizer builds its
search space from them, so a parameter's name, scope, valid range and default
search range live here and nowhere else (the mergekit habit of declaring a
method's parameters next to its registration).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

Scope = Literal["model", "global"]
Compat = Literal["paper", "mergekit"]
COMPAT_MODES: tuple[str, ...] = ("paper", "mergekit")
# what a method merges: the experts' task vectors from the base; an average of
# models (the base is an input only when listed among them); a pair of models
Inputs = Literal["task_vectors", "average", "pair"]


@dataclass(frozen=True)
class Reparam:
    """A parameter searched in another form, so that every proposal is valid.

    DELLA's epsilon must stay below min(d, 1 - d) for the density d at the same
    place: it is searched as ``name`` (a fraction of that room) in
    [low, high], and ``value(searched, d)`` turns a proposal into epsilon
    (``searched(value, d)`` the other way, for start points).
    """

    name: str
    low: float
    high: float
    depends_on: str
    value: Callable[[float, float], float]
    searched: Callable[[float, float], float]


@dataclass(frozen=True)
class References:
    """How a method reproduces its inputs, for the study's reference trials:
    with one expert's weight 1 and the others 0, plus ``alone``, it gives that
    expert; with every weight 0, plus ``base`` (None: it cannot), the base."""

    alone: Mapping[str, Any]
    base: Mapping[str, Any] | None = None


CacheKind = Literal["ranks", "orders"]


@dataclass(frozen=True)
class Caches:
    """The per-study caches a method makes the resident engine fill, per compat
    mode: ``ranks`` (packed row ranks, 2 bytes an entry per expert) or
    ``orders`` (magnitude orders, 4 bytes). The engine's memory plan counts
    only the caches its study's methods use."""

    paper: tuple[CacheKind, ...] = ()
    mergekit: tuple[CacheKind, ...] = ()

    def of(self, compat: str) -> tuple[CacheKind, ...]:
        return self.mergekit if compat == "mergekit" else self.paper


@dataclass(frozen=True)
class Mergekit:
    """The method's name in mergekit and a point in mergekit's own vocabulary
    (the parity tests merge it with both and compare)."""

    name: str
    example: Mapping[str, Any]


@dataclass(frozen=True)
class ParamSpec:
    """A tunable or fixed parameter of a merge method.

    ``low``/``high`` bound the valid values (``low_open``/``high_open`` exclude
    the bound itself); ``search`` is the default range the optimizer explores.
    ``mergekit_default`` overrides ``default`` under ``compat: mergekit`` where
    mergekit's default differs from the paper's.
    """

    name: str
    scope: Scope
    kind: type = float
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    search: tuple[float, float] | tuple[bool, ...] | None = None
    log: bool = False
    help: str = ""
    mergekit_default: Any = None
    reparam: Reparam | None = None

    def default_for(self, compat: str) -> Any:
        if compat == "mergekit" and self.mergekit_default is not None:
            return self.mergekit_default
        return self.default

    def range_text(self) -> str:
        if self.kind is bool:
            return "true or false"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{lo}{low}, {high}{hi}"

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is invalid for this parameter, or None."""
        if self.kind is bool:
            if not isinstance(value, bool):
                return f"must be true or false, got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if value != value:  # NaN
            return "must be a number, got NaN"
        if self.kind is int and int(value) != value:
            return f"must be an integer, got {value!r}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"{value!r} is outside the valid range {self.range_text()}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"{value!r} is outside the valid range {self.range_text()}"
        return None


@dataclass(frozen=True)
class TensorContext:
    """What a method may know about the tensor it merges besides its values.

    The optional providers are per-study caches (the optimizer fills them once
    and keeps them between trials); a method falls back to computing what it
    needs when one is None or returns None. ``compile`` lets the final
    elementwise pass run as one fused torch.compile kernel on large CPU tensors.
    """

    name: str
    compat: str = "paper"
    seed: int = 0
    # (model index, per_row) -> that task vector's stable magnitude ranks
    # (methods.masks.PackedRanks) per row, or None where it keeps none
    ranks: Callable[[int, bool], Any] | None = None
    # model index -> methods.magnitudes.MagnitudeOrder of that task vector
    magnitudes: Callable[[int], Any] | None = None
    # (key, build) -> build() once per study and tensor, then the kept result
    memo: Callable[[Hashable, Callable[[], Any]], Any] | None = None
    compile: bool = False

    def remember(self, key: Hashable, build: Callable[[], Any]) -> Any:
        return build() if self.memo is None else self.memo(key, build)


# fn(base, deltas, params, ctx, out=None) -> methods.launch.Plan: how to write the
# merged tensor (into ``out`` when one is given: the resident model's
# parameter); the caller launches it (methods.launch.launch, run_method)
MergeFn = Callable[..., Any]
CrossCheck = Callable[[Mapping[str, Any]], "str | None"]
# (param -> (lowest, highest) value a study may propose) -> why some proposal
# in those ranges would be invalid, or None
RangeCheck = Callable[[Mapping[str, tuple[float, float]]], "str | None"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method.

    ``fn(base, deltas, params, ctx, out=None)`` gets float32 tensors — the
    reference tensor and one task vector per expert — and per-tensor resolved
    parameters (per-model ones as lists in expert order) and returns its plan
    (``methods.launch.Plan``): the kernel call that writes the merged float32
    tensor (into ``out`` when given), which the caller launches.

    Everything the rest of mergeopt needs to know about a method is declared
    here: what it merges (``inputs``), how many experts it takes
    (``min_experts``/``max_experts`` count task vectors, or models besides the
    base), combinations of one model's values it forbids (``check``:
    ``beta + gamma < 1``), parameters that exclude each other (``exclusive``),
    search ranges that would allow a forbidden combination (``ranges_check``),
    where a search starts (``start_points``), how it reproduces its inputs
    (``references``), its mergekit counterpart (``mergekit``) and the
    per-study caches it fills (``caches``).
    """

    name: str
    fn: MergeFn
    params: tuple[ParamSpec, ...]
    summary: str
    min_experts: int = 1
    max_experts: int | None = None
    inputs: Inputs = "task_vectors"
    random: bool = False
    check: CrossCheck | None = None
    exclusive: tuple[tuple[str, str], ...] = ()
    ranges_check: RangeCheck | None = None
    start_points: tuple[Mapping[str, Any], ...] = ()
    references: References | None = None
    mergekit: Mergekit | None = None
    caches: Caches = Caches()
    # the same math in plain torch (no kernels, no caches): what the fused
    # path is tested against; fn's arguments without ``out``
    reference: Callable[..., torch.Tensor] | None = None

    @property
    def needs_base(self) -> bool:
        return self.inputs == "task_vectors"

    @property
    def study_min_experts(self) -> int:
        """Experts a study needs: an average takes two models, and in a study the
        base is never one of them."""
        return max(self.min_experts, 2) if self.inputs == "average" else self.min_experts

    def fits(self, n_experts: int) -> bool:
        """Can a study merge a base and ``n_experts`` experts with it?"""
        return self.study_min_experts <= n_experts and (
            self.max_experts is None or n_experts <= self.max_experts
        )

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise UnknownParameterError(self.name, name, [p.name for p in self.params])

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


class UnknownMethodError(ValueError):
    def __init__(self, name: str) -> None:
        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown merge method {name!r}.{hint} Known methods: {', '.join(METHODS)}."
        )


class UnknownParameterError(ValueError):
    def __init__(self, method: str, name: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown parameter {name!r} for merge method {method!r}.{hint} "
            f"Its parameters are: {', '.join(known)}."
        )


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"merge method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(name) from None


# Shared parameter declarations, so every method names and bounds them alike.


def weight_param(search: tuple[float, float] = (0.0, 1.0)) -> ParamSpec:
    return ParamSpec(
        "weight",
        "model",
        default=1.0,
        search=search,
        help="how much of this model's task vector (or, for linear, of the model) goes in",
    )


def density_param(
    default: float | None,
    search: tuple[float, float] | None = (0.1, 0.9),
    help: str = "",
) -> ParamSpec:
    return ParamSpec(
        "density",
        "model",
        default=default,
        low=0.0,
        high=1.0,
        low_open=True,
        search=search,
        help=help or "fraction of the task vector's entries kept",
    )


def lambda_param(search: tuple[float, float]) -> ParamSpec:
    return ParamSpec(
        "lambda",
        "global",
        default=1.0,
        search=search,
        help="scale of the merged task vector (the alpha of Breadcrumbs)",
    )


def normalize_param(default: bool, mergekit_default: bool | None = None) -> ParamSpec:
    return ParamSpec(
        "normalize",
        "global",
        kind=bool,
        default=default,
        mergekit_default=mergekit_default,
        help="divide by the sum of the weights that contribute",
    )


def rescale_param() -> ParamSpec:
    return ParamSpec(
        "rescale",
        "global",
        kind=bool,
        default=True,
        help="rescale surviving entries (paper: by 1/keep probability; "
        "mergekit: to the task vector's L1 norm)",
    )
