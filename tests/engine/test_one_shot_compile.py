"""One-shot merges compile a kernel only where one launch repays it, same bytes.

Each kernel of a one-shot merge runs once per tensor, so compiling it costs
more than it saves, except for the random draws of DARE and DELLA (a dozen
integer ops per entry) on models of billions of parameters
(``engine.apply.worth_compiling_once``; measured in docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from methods import METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine import merge as one_shot
from optimizer.engine.apply import COMPILE_DRAWS_MIN_ENTRIES

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


def merge_one(method: str, **options) -> torch.Tensor:
    """One tensor merged the one-shot way at the method's start point."""
    ref, experts = inputs()
    return one_shot.merge_tensor(
        METHODS[method], NAME, ref, experts, params(method), "paper", 3, **options
    )


@pytest.mark.parametrize("method", ["dare_ties", "della", "ties", "breadcrumbs", "model_stock"])
def test_compile_modes_give_the_same_bytes(method):
    out = {mode: merge_one(method, compile=mode) for mode in ("never", "always", "auto")}
    assert torch.equal(out["never"], out["always"]) and torch.equal(out["auto"], out["never"])


@pytest.mark.parametrize("large", [False, True])
def test_auto_compiles_only_the_random_draws_of_large_merges(monkeypatch, large):
    compiled = {}
    real = one_shot.launch_plans

    def spy(plans, compile, method):
        compiled[method.name] = compile
        return real(plans, compile, method)

    monkeypatch.setattr(one_shot, "launch_plans", spy)
    entries = COMPILE_DRAWS_MIN_ENTRIES if large else COMPILE_DRAWS_MIN_ENTRIES - 1
    for method in ("linear", "task_arithmetic", "ties", "breadcrumbs", "dare_ties", "della"):
        merge_one(method, merge_entries=entries)
    assert compiled == {
        "linear": False,
        "task_arithmetic": False,
        "ties": False,
        "breadcrumbs": False,
        "dare_ties": large,
        "della": large,
    }


def test_a_small_one_shot_merge_compiles_nothing(monkeypatch, tmp_path):
    """SmolLM2-sized merges stay eager: run_merge passes the whole model's
    task-vector entries, not one tensor's."""
    seen = []
    real = one_shot.worth_compiling_once

    def spy(plan, merge_entries):
        seen.append(merge_entries)
        return real(plan, merge_entries)

    monkeypatch.setattr(one_shot, "worth_compiling_once", spy)
    from tiny_models import build_tokenizer, perturbed_copy, save_model, tiny_llama

    tok = build_tokenizer(["a", "b"])
    model = tiny_llama(len(tok))
    base = save_model(model, tok, tmp_path / "b")
    e1 = save_model(perturbed_copy(model, 0.01, 1), tok, tmp_path / "e1")
    e2 = save_model(perturbed_copy(model, 0.01, 2), tok, tmp_path / "e2")
    cfg = MergeConfig.from_dict(
        {
            "merge_method": "dare_ties",
            "base_model": str(base),
            "models": [{"model": str(e1)}, {"model": str(e2)}],
            "parameters": {"density": 0.5, "weight": 0.5},
        }
    )
    one_shot.run_merge(cfg, tmp_path / "out")
    floats = sum(t.numel() for t in load_file(base / "model.safetensors").values())
    assert seen and set(seen) == {2 * floats}
