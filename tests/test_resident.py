"""The resident engine writes exactly the bytes the one-shot merge writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from methods import METHODS
from optimizer.merge import run_merge
from optimizer.merge_config import MergeConfig
from optimizer.resident import ResidentMerger

PARAMS = {
    "ties": {"density": 0.4},
    "dare_ties": {"density": 0.6},
    "dare_linear": {"density": 0.6},
    "breadcrumbs": {"beta": 0.1, "gamma": 0.05},
    "breadcrumbs_ties": {"density": 0.8, "gamma": 0.05},
    "della": {"density": 0.6, "epsilon": 0.1},
    "della_linear": {"density": 0.6, "epsilon": 0.1},
}


@pytest.fixture(scope="module")
def merger(study_zoo):
    return ResidentMerger(study_zoo["base"], [study_zoo["e1"], study_zoo["e2"]], "cpu")


@pytest.mark.parametrize("compat", ["paper", "mergekit"])
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"slerp"}))
def test_resident_equals_one_shot(method, compat, merger, study_zoo, tmp_path):
    cfg = {
        "merge_method": method,
        "base_model": str(study_zoo["base"]),
        "models": [
            {"model": str(study_zoo["e1"]), "parameters": {"weight": 0.7}},
            {"model": str(study_zoo["e2"]), "parameters": {"weight": 0.4}},
        ],
        "compat": compat,
        "seed": 5,
    }
    if "weight" not in METHODS[method].param_names:
        cfg["models"] = [{"model": m["model"]} for m in cfg["models"]]
    if PARAMS.get(method):
        cfg["parameters"] = PARAMS[method]
    # twice: the second pass uses the rank cache the first one filled
    for _ in range(2):
        merger.materialize(MergeConfig.from_dict(cfg))
        resident = {n: t.detach().clone() for n, t in merger.targets.items()}
    out = tmp_path / "o"
    run_merge(MergeConfig.from_dict(cfg), out)
    disk = load_file(out / "model.safetensors")
    assert set(disk) == set(resident)
    for name, t in disk.items():
        assert torch.equal(t, resident[name]), name
    merger.restore_base()
    base = load_file(study_zoo["base"] / "model.safetensors")
    assert all(torch.equal(base[n], t) for n, t in merger.targets.items())


def test_chunked_row_ranks_equal_whole_tensor_ranks():
    from methods.masks import stable_ranks
    from optimizer.resident import row_ranks_int16

    d = torch.randint(-5, 6, (37, 11), generator=torch.Generator().manual_seed(0)).float()
    got = row_ranks_int16(d, chunk_elements=30)  # 2 rows per block, 19 blocks
    assert got.dtype == torch.int16
    assert torch.equal(got.long(), stable_ranks(d, True))


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
@pytest.mark.parametrize("normalize", [True, False])
def test_sliced_elementwise_methods_equal_the_whole_tensor_math(method, normalize):
    """Tensors larger than a slice go through the sliced path: same bytes as unsliced."""
    from methods import TensorContext
    from optimizer.merge import SLICE_ELEMENTS
    from optimizer.param_forms import TensorSite

    name = "model.layers.0.mlp.up_proj.weight"
    gen = torch.Generator().manual_seed(0)
    shape = (SLICE_ELEMENTS // 1000 * 3 + 7, 1000)  # three slices and a ragged tail
    base = torch.randn(shape, generator=gen)
    experts = [{name: base + torch.randn(shape, generator=gen) * 0.01} for _ in range(3)]
    engine = ResidentMerger.in_memory({name: base}, experts, num_layers=1)
    cfg = MergeConfig.from_dict(
        {
            "merge_method": method,
            "base_model": "b",
            "models": [
                {"model": f"e{i}", "parameters": {"weight": w}}
                for i, w in enumerate((0.5, 0.3, 0.4))
            ],
            "parameters": {"normalize": normalize},
        }
    )
    engine.materialize(cfg)
    params = cfg.tensor_params(TensorSite.of(name, 1))
    expected = METHODS[method].fn(
        engine.base[name], [d[name] for d in engine.deltas], params, TensorContext(name)
    )
    assert torch.equal(engine.targets[name], expected)
