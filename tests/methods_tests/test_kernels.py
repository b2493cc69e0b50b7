"""The fused (torch.compile) candidate path gives the eager, uncached bytes.

The resident engine runs every method through compiled kernels with per-study
caches (rank planes, magnitude orders, Model Stock ratios); a one-shot merge
runs the same kernels eagerly and computes thresholds and ranks from scratch.
On tensors large enough to compile, both must agree bit for bit, for every
method, in both compat modes, trial after trial, also where the engine
launches the kernels of same-shaped tensors (one per layer) stacked, with
per-layer parameter values.
"""

from __future__ import annotations

import pytest
import torch

from methods import METHODS, TensorContext, kernels, run_method
from optimizer.config.merge_config import MergeConfig
from optimizer.config.param_forms import TensorSite
from optimizer.engine.resident import ResidentMerger

NAME = "model.layers.0.mlp.up_proj.weight"
SHAPE = (300, 256)  # 76,800 elements: above kernels.COMPILE_MIN_ELEMENTS
SHAPES = {  # three layers share a shape (stacked), one odd-sized (ranks not packable), a norm
    **{f"model.layers.{n}.mlp.up_proj.weight": SHAPE for n in range(3)},
    "model.layers.1.self_attn.o_proj.weight": (301, 255),
    "model.layers.2.input_layernorm.weight": (256,),
}


def derived_trials(spec) -> list[dict]:
    """Two candidates from the registry (the caches the first fills serve the
    second): the first start point with every searched number as a gradient
    over the layers, then the middle of every range with every switch flipped."""
    start = dict(spec.start_points[0]) if spec.start_points else {}
    first, second = dict(start), {}
    for p in spec.params:
        if p.kind is bool:
            second[p.name] = not p.default
            continue
        if p.name == "weight" or p.reparam is not None or p.search is None:
            continue
        lo, hi = p.search
        first[p.name] = [lo + (hi - lo) / 4, hi - (hi - lo) / 4]
        second[p.name] = (lo + hi) / 2
    return [first, second]


# every method with a kernel path (SLERP computes eagerly and has none),
# plus forms the registry's ranges do not reach
TRIALS = {name: derived_trials(spec) for name, spec in METHODS.items() if spec.inputs != "pair"}
TRIALS["breadcrumbs"].append({"density": 0.7, "gamma": 0.01})  # mergekit's density form
TRIALS["breadcrumbs_ties"].append({"beta": 0.5, "gamma": 0.0})  # no outliers dropped


def _engine(cache_ranks: bool) -> ResidentMerger:
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    experts = []
    for i in range(3):
        expert = {}
        for n, b in base.items():
            delta = torch.randn(b.shape, generator=gen) * 0.01
            if i == 2:  # quantized: runs of equal magnitudes straddle thresholds
                delta = torch.round(delta * 300) / 300
            expert[n] = b + delta
        experts.append(expert)
    return ResidentMerger.in_memory(base, experts, num_layers=3, cache_ranks=cache_ranks)


@pytest.fixture(scope="module")
def engine() -> ResidentMerger:
    return _engine(cache_ranks=True)


@pytest.mark.parametrize("compat", ["paper", "mergekit"])
@pytest.mark.parametrize("method", sorted(TRIALS))
def test_fused_cached_path_equals_eager_uncached(engine, method, compat):
    _assert_fused_equals_eager(engine, method, compat)


# methods whose engine path differs without the per-study caches: thresholds
# computed per trial, Breadcrumbs' eager band masks read by the kernel (keep_where),
# DELLA's packed ranks computed per trial
UNCACHED = ["ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"]


@pytest.mark.parametrize("compat", ["paper", "mergekit"])
@pytest.mark.parametrize("method", UNCACHED)
def test_fused_uncached_path_equals_eager(method, compat):
    engine = _engine(cache_ranks=False)
    _assert_fused_equals_eager(engine, method, compat)
    assert engine.cache_bytes() == 0


def _assert_fused_equals_eager(engine: ResidentMerger, method: str, compat: str) -> None:
    for params in TRIALS[method]:
        models = [
            {"model": f"e{i}", "parameters": {"weight": w}} for i, w in enumerate((0.5, 0.3, -0.2))
        ]
        if "weight" not in METHODS[method].param_names:
            models = [{"model": m["model"]} for m in models]
        cfg = MergeConfig.from_dict(
            {
                "merge_method": method,
                "base_model": "b",
                "models": models,
                "parameters": params,
                "compat": compat,
                "seed": 4,
            }
        )
        engine.materialize(cfg)
        for name in SHAPES:
            fused = engine.targets[name].clone()
            resolved = cfg.tensor_params(TensorSite.of(name, 3))
            eager = run_method(
                METHODS[method],
                engine.base[name],
                [d[name] for d in engine.deltas],
                resolved,
                TensorContext(name, compat, 4),
            )
            assert torch.equal(fused, eager), (method, params, name)
    assert not kernels._compile_failed, "torch.compile failed: the test ran eager twice"
    assert kernels._compiled, "no kernel was compiled"


def test_kernels_write_into_the_given_tensor_without_copies(engine):
    """The candidate lands in the resident parameter itself (no temporary + copy)."""
    cfg = MergeConfig.from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": "b",
            "models": [{"model": f"e{i}"} for i in range(3)],
            "parameters": {"lambda": 0.5},
        }
    )
    target = engine.targets[NAME]
    pointer = target.data_ptr()
    engine.materialize(cfg)
    assert engine.targets[NAME].data_ptr() == pointer
    expected = engine.base[NAME] + sum(d[NAME] for d in engine.deltas) * 0.5
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-6)


def test_same_shaped_tensors_launch_as_one_kernel(engine, monkeypatch):
    """One launch per shape, not per tensor: the three layers' tensors go together."""
    from methods import launch

    sizes = []
    real = launch._launch_run
    monkeypatch.setattr(
        launch, "_launch_run", lambda run, c: sizes.append(len(run)) or real(run, c)
    )
    for method in ("task_arithmetic", "ties", "dare_ties", "della"):
        sizes.clear()
        params = {"weight": 0.3, "density": 0.5, "epsilon": 0.1}
        cfg = MergeConfig.from_dict(
            {
                "merge_method": method,
                "base_model": "b",
                "models": [{"model": f"e{i}"} for i in range(3)],
                "parameters": {k: v for k, v in params.items() if k in METHODS[method].param_names},
            }
        )
        engine.materialize(cfg)
        # the odd-sized tensor has no packable ranks: DELLA masks it eagerly, a launch of its own
        assert sorted(sizes) == [1, 1, 3], (method, sizes)


FALLBACK_SCRIPT = """
import logging, sys, torch
import torch._inductor.config as ic
ic.cpp.cxx = ("/nonexistent/c++",)  # a machine without a working compiler
logging.basicConfig(level=logging.WARNING)
from methods import kernels
from methods.fuse import ExpertInput, fuse
from methods.registry import TensorContext
gen = torch.Generator().manual_seed(0)
base = torch.randn(300, 256, generator=gen)
deltas = [torch.randn(300, 256, generator=gen) * 0.01 for _ in range(2)]
experts = [ExpertInput(d, (), (0.005, float("inf")), (0, 1 << 20), index=i) for i, d in enumerate(deltas)]
rows = [[1.0, 0.5, 1.0], [1.0, 0.7, 1.0]]
from methods.launch import launch
got = fuse(kernels.magnitude_window, kernels.consensus, base, experts, rows, [1.2, 1.0],
           TensorContext("w", compile=True))
want = fuse(kernels.magnitude_window, kernels.consensus, base, experts, rows, [1.2, 1.0],
            TensorContext("w"))
launch([got], True)
launch([want], False)
got, want = got.result, want.result
assert kernels._compile_failed, "the broken compiler was not noticed"
assert torch.equal(got, want)
print("fallback ok")
"""


def test_no_cxx_compiler_falls_back_to_eager_with_a_warning(tmp_path):
    """Without a usable C++ compiler the merge still runs (eagerly), same bytes, warned once."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fallback ok" in done.stdout
    assert "torch.compile unavailable" in done.stderr
    assert done.stderr.count("torch.compile unavailable") == 1


@pytest.mark.parametrize(
    "method,params",
    [
        ("task_arithmetic", {"lambda": 1.5}),
        ("ties", {"density": 0.5}),
        ("dare_ties", {"density": 0.3}),
        ("della_linear", {"density": 0.4, "epsilon": 0.3}),
        ("model_stock", {"filter_wise": True}),
    ],
)
def test_the_finiteness_bound_holds(method, params):
    """The bound that spares a finiteness pass is never below the true result."""
    import methods.fuse as fuse_module

    gen = torch.Generator().manual_seed(5)
    base = torch.randn(40, 30, generator=gen)
    deltas = [torch.randn(40, 30, generator=gen) * s for s in (0.5, 2.0, 0.1)]
    seen = []
    real = fuse_module.result_bound

    def spy(*a, **k):
        seen.append(real(*a, **k))
        return seen[-1]

    fuse_module.result_bound = spy
    try:
        full = {p.name: p.default for p in METHODS[method].params}
        full.update(params)
        for p in METHODS[method].params:
            if p.scope == "model":
                full[p.name] = [full[p.name]] * 3
        out = run_method(METHODS[method], base, deltas, full, TensorContext("w", seed=1))
    finally:
        fuse_module.result_bound = real
    assert seen and float(out.abs().max()) <= seen[0]


def test_a_non_finite_candidate_is_caught_with_or_without_a_bound():
    from optimizer.engine.apply import MergeError, merge_now

    base = torch.ones(4, 4)
    deltas = [torch.full((4, 4), 3e38), torch.full((4, 4), 3e38)]
    p = {"weight": [1.0, 1.0], "lambda": 1.0, "normalize": False}
    with pytest.raises(MergeError, match="NaN or inf"):  # bound above float32: checked
        merge_now(METHODS["task_arithmetic"], base, deltas, p, TensorContext("w"))
    mixed = {"weight": [1.0, -0.999], "lambda": 1.0, "normalize": True, "density": [1.0, 1.0]}
    small = [torch.full((4, 4), 0.5), torch.full((4, 4), 0.5)]
    out = merge_now(METHODS["ties"], base, small, mixed, TensorContext("w", "mergekit"))
    assert torch.isfinite(out).all()  # mixed signs: no bound, the explicit check passes


@pytest.mark.parametrize("compat", ["paper", "mergekit"])
@pytest.mark.parametrize("method", sorted(TRIALS))
def test_eager_kernels_run_in_blocks_give_the_whole_tensor_bytes(method, compat, monkeypatch):
    """Eager kernels run a block of columns at a time (temporaries in cache); the
    draws and tie positions follow each entry's place, so the bytes do not change."""
    from methods import launch

    gen = torch.Generator().manual_seed(3)
    shape = (64, 250)  # not a multiple of the block: the last block is short
    base = torch.randn(shape, generator=gen)
    deltas = [torch.round(torch.randn(shape, generator=gen) * 30) / 300 for _ in range(3)]
    spec = METHODS[method]
    for params in TRIALS[method]:
        cfg = MergeConfig.from_dict(
            {
                "merge_method": method,
                "base_model": "b",
                "models": [{"model": f"e{i}"} for i in range(3)],
                "parameters": params,
                "compat": compat,
                "seed": 2,
            }
        )
        p = cfg.tensor_params(TensorSite.of(NAME, 3))
        ctx = TensorContext(NAME, compat, 2)
        monkeypatch.setattr(launch, "EAGER_BLOCK", 1 << 30)
        whole = run_method(spec, base.clone(), [d.clone() for d in deltas], p, ctx)
        monkeypatch.setattr(launch, "EAGER_BLOCK", 1000)
        blocks = run_method(spec, base.clone(), [d.clone() for d in deltas], p, ctx)
        assert torch.equal(whole, blocks), (method, compat, params)


@pytest.mark.parametrize("normalize", [0.0, 1.0])
def test_the_election_gives_the_same_bytes_compiled_and_eager(normalize):
    """Compiled kernels elect with compares and selects, eager ones with float
    arithmetic (each the faster form there): both on ties of the vote, zero and
    signed-zero task vectors, nobody agreeing, and mixed agreement signs."""
    from methods import kernels

    gen = torch.Generator().manual_seed(5)
    slots, m, e = 3, 400, 3
    base = torch.randn(slots, m, generator=gen)
    base[:, :20] = 0.0
    taus = []
    for t in range(e):
        tau = torch.round(torch.randn(slots, m, generator=gen) * 3) / 4  # many exact zeros
        tau[:, 10:30] = -0.0 if t % 2 else 0.0
        tau[:, 30:40] = (1.0, -1.0, 0.0)[t]  # a tied vote: -1 + 1 + 0
        taus.append(tau)
    c = torch.rand(slots, e, 3, 1, generator=gen)
    c[:, :, 0] = 1.0  # equal vote weights, so the tied vote is exactly 0
    c[0, :, 2] = 1.0
    c[1, :, 2] = torch.tensor([1.0, -1.0, 0.0]).view(e, 1)
    c[2, 1, 1] = 0.0  # a zero merge weight
    g = torch.tensor([[1.3, normalize]]).view(1, 2, 1).expand(slots, 2, 1)
    selects = kernels._consensus_selects(base, taus, c, g)
    arithmetic = kernels._consensus_arithmetic(base, [t.clone() for t in taus], c, g)
    assert torch.equal(selects.view(torch.int32), arithmetic.view(torch.int32))
