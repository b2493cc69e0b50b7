"""Merge configs built from the registry: a method at a point, inputs laid out by role.

The parity tests and the mergekit benchmarks merge each method with mergekit
and with mergeopt; both sides need the same config, in mergekit's vocabulary,
with the models arranged as the method merges them (task vectors from a
base, an average of models, a pair). The registry declares each method's
mergekit name and example point (``MethodSpec.mergekit``); this builds the
YAML mapping, so those tables follow the registry instead of repeating it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from methods import MethodSpec


def example_config(
    spec: MethodSpec,
    base: str,
    experts: Sequence[str],
    point: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``spec`` at ``point`` (default: its mergekit example) as a merge config.

    Per-model values are given as lists in expert order (cycled when shorter
    than the experts); everything else is global. A pair takes the base and the
    first expert; an average takes the experts alone.
    """
    if point is None:
        if spec.mergekit is None:
            raise ValueError(f"{spec.name} has no mergekit example")
        point = spec.mergekit.example
    name = spec.mergekit.name if spec.mergekit else spec.name
    experts = list(experts[:1] if spec.inputs == "pair" else experts)
    per_model = {
        k: v for k, v in point.items() if spec.param(k).scope == "model" and isinstance(v, list)
    }
    models = []
    for i, e in enumerate(experts):
        values = {k: v[i % len(v)] for k, v in per_model.items()}
        models.append({"model": e, **({"parameters": values} if values else {})})
    cfg: dict[str, Any] = {"merge_method": name, "models": models}
    if spec.inputs != "average":
        cfg["base_model"] = base
    if spec.inputs == "pair":  # mergekit's slerp lists the base among the models
        cfg["models"] = [{"model": base}, *models]
    common = {k: v for k, v in point.items() if k not in per_model}
    if common:
        cfg["parameters"] = common
    return cfg
