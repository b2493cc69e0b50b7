"""A candidate merge, resolved: the method and every tensor's parameter values.

A merge config (the record stored with each trial, mergekit's YAML) writes a
value once for many tensors: a scalar, a gradient over the layers or a
filter list. The engines need it per tensor. ``resolve`` does that once per
candidate, checking every tensor's combination of values (β + γ < 1, DELLA's
window) before any tensor is touched; the engines then only look values up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from methods import MethodSpec
from optimizer.config.merge_config import MergeConfig
from optimizer.config.param_forms import TensorSite


@dataclass(frozen=True)
class Candidate:
    method: MethodSpec
    compat: str
    seed: int
    n_experts: int
    values: Mapping[str, Mapping[str, Any]]  # tensor name -> parameter -> value

    @classmethod
    def resolve(cls, cfg: MergeConfig, names: Iterable[str], num_layers: int) -> Candidate:
        values = {}
        for name in names:
            params = cfg.tensor_params(TensorSite.of(name, num_layers))
            cfg.check_tensor_params(name, params)
            values[name] = params
        return cls(cfg.method, cfg.compat, cfg.seed, len(cfg.experts), values)
