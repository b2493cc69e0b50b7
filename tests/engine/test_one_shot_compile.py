"""One-shot merges compile a kernel only where one launch repays it, same bytes.

Each kernel of a one-shot merge runs once per tensor, so compiling it costs
more than it saves, except for the random draws of DARE and DELLA, whose
eager form builds a full-size temporary per hash operation
(``engine.apply.worth_compiling_once``; measured in docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch

from methods import METHODS
from optimizer.engine import merge as one_shot

NAME = "model.layers.0.mlp.up_proj.weight"


def inputs(n: int = 2):
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(300, 256, generator=gen)  # above kernels.COMPILE_MIN_ELEMENTS
    return ref, [ref + torch.randn(300, 256, generator=gen) * 0.01 for _ in range(n)]


def params(method: str, n: int = 2) -> dict:
    spec = METHODS[method]
    point = spec.start_points[0]
    return {
        p.name: [point.get(p.name, p.default)] * n
        if p.scope == "model"
        else point.get(p.name, p.default)
        for p in spec.params
    }


@pytest.mark.parametrize("method", ["dare_ties", "della", "ties", "breadcrumbs", "model_stock"])
def test_compile_modes_give_the_same_bytes(method):
    ref, experts = inputs()
    out = {
        mode: one_shot.merge_tensor(
            METHODS[method],
            NAME,
            ref,
            [e.clone() for e in experts],
            params(method),
            "paper",
            3,
            compile=mode,
        )
        for mode in ("never", "always", "auto")
    }
    assert torch.equal(out["never"], out["always"]) and torch.equal(out["auto"], out["never"])


def test_auto_compiles_only_the_random_draws(monkeypatch):
    compiled = {}
    real = one_shot.launch_plans

    def spy(plans, compile, method):
        compiled[method.name] = compile
        return real(plans, compile, method)

    monkeypatch.setattr(one_shot, "launch_plans", spy)
    ref, experts = inputs()
    for method in ("linear", "task_arithmetic", "ties", "breadcrumbs", "dare_ties", "della"):
        one_shot.merge_tensor(
            METHODS[method], NAME, ref, [e.clone() for e in experts], params(method), "paper", 3
        )
    assert compiled == {
        "linear": False,
        "task_arithmetic": False,
        "ties": False,
        "breadcrumbs": False,
        "dare_ties": True,
        "della": True,
    }
