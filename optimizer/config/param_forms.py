"""mergekit's three ways to write a parameter, resolved per tensor.

A value is a scalar, a list of numbers interpolated linearly over the layers
(a "gradient"), or a list of ``{filter: substring, value: ...}`` entries where
the first entry whose filter occurs in the tensor name wins (an entry without
``filter`` matches everything). Tensors outside the numbered layers take the
gradient's ends: embeddings the first value, everything else (final norm,
lm_head) the last.

mergeopt adds one key to filter entries, ``layers: [first, last]`` (inclusive),
so a study's per-layer-group values can be written back as a plain config; for
it, embeddings count as layer 0 and the final norm and lm_head as the last layer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from methods.registry import ParamSpec
from optimizer.errors import ConfigError

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EMBED = re.compile(r"embed|wte|wpe|word_embeddings|tok_embeddings")


def layer_index(tensor_name: str) -> int | None:
    m = _LAYER.search(tensor_name)
    return int(m.group(1)) if m else None


def effective_layer(tensor_name: str, num_layers: int) -> int:
    """The layer a tensor belongs to; embeddings 0, final norm and lm_head the last."""
    idx = layer_index(tensor_name)
    if idx is None:
        return 0 if _EMBED.search(tensor_name) else max(0, num_layers - 1)
    return idx


def layer_position(tensor_name: str, num_layers: int) -> float:
    """Where a tensor sits in depth, in [0, 1]."""
    if num_layers <= 1:
        return 0.0
    return min(1.0, effective_layer(tensor_name, num_layers) / (num_layers - 1))


@dataclass(frozen=True)
class TensorSite:
    """What parameter forms look at: the name, depth in [0, 1] and layer index."""

    name: str
    position: float
    layer: int

    @classmethod
    def of(cls, tensor_name: str, num_layers: int) -> TensorSite:
        return cls(
            tensor_name,
            layer_position(tensor_name, num_layers),
            effective_layer(tensor_name, num_layers),
        )


def interpolate(values: list[float], position: float) -> float:
    if len(values) == 1:
        return float(values[0])
    x = position * (len(values) - 1)
    i = min(int(x), len(values) - 2)
    frac = x - i
    return float(values[i]) * (1 - frac) + float(values[i + 1]) * frac


def _is_filter_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping)


def resolve(value: Any, site: TensorSite, default: Any) -> Any:
    """The value of one parameter for one tensor."""
    if _is_filter_list(value):
        for entry in value:
            flt = entry.get("filter")
            layers = entry.get("layers")
            if (flt is None or flt in site.name) and (
                layers is None or layers[0] <= site.layer <= layers[1]
            ):
                return resolve(entry["value"], site, default)
        return default
    if isinstance(value, list):
        return interpolate(value, site.position)
    return value


def check_form(value: Any, spec: ParamSpec, where: str) -> None:
    """Reject malformed forms and out-of-range numbers, naming ``where``."""

    def fail(why: str) -> None:
        raise ConfigError(f"{where}: {why}")

    def check_scalar(v: Any, at: str) -> None:
        if spec.kind is not bool and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        why = spec.check(v)
        if why:
            fail(f"{at}{why}" + (f" ({spec.help})" if spec.help else ""))

    if _is_filter_list(value):
        for i, entry in enumerate(value):
            if not isinstance(entry, Mapping) or "value" not in entry:
                fail(
                    f"entry {i} of the filter list needs a 'value' (and optionally "
                    "a 'filter' substring), e.g. [{filter: self_attn, value: 0.5}, {value: 0.3}]"
                )
            extra = set(entry) - {"filter", "value", "layers"}
            if extra:
                fail(f"entry {i} of the filter list has unknown key(s) {sorted(extra)}")
            if entry.get("filter") is not None and not isinstance(entry["filter"], str):
                fail(f"entry {i}: 'filter' must be a substring of tensor names")
            layers = entry.get("layers")
            if layers is not None and not (
                isinstance(layers, list)
                and len(layers) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
                and layers[0] <= layers[1]
            ):
                fail(f"entry {i}: 'layers' must be [first, last] layer indices, got {layers!r}")
            if _is_filter_list(entry["value"]):
                fail(f"entry {i}: filter lists cannot be nested")
            check_form(entry["value"], spec, f"{where}[{i}].value")
        return
    if isinstance(value, list):
        if not value:
            fail("an empty list is not a value; give a number or a list of numbers")
        if spec.kind is bool:
            fail("a true/false parameter cannot vary over layers")
        for i, v in enumerate(value):
            check_scalar(v, f"layer-gradient value {i}: ")
        return
    if isinstance(value, Mapping):
        fail(
            "a mapping is not a parameter value; use a number, a list of numbers "
            "(interpolated over layers) or a list of {filter, value} entries"
        )
    check_scalar(value, "")
