"""The resident engine writes exactly the bytes the one-shot merge writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from methods import METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.merge import run_merge
from optimizer.engine.resident import ResidentMerger
from optimizer.errors import ModelError

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


def config(zoo, method: str, compat: str) -> dict:
    """A merge of the zoo's two experts by ``method`` at the parameters above."""
    cfg = {
        "merge_method": method,
        "base_model": str(zoo["base"]),
        "models": [
            {"model": str(zoo["e1"]), "parameters": {"weight": 0.7}},
            {"model": str(zoo["e2"]), "parameters": {"weight": 0.4}},
        ],
        "compat": compat,
        "seed": 5,
    }
    if "weight" not in METHODS[method].param_names:
        cfg["models"] = [{"model": m["model"]} for m in cfg["models"]]
    if PARAMS.get(method):
        cfg["parameters"] = PARAMS[method]
    return cfg


@pytest.fixture(scope="module")
def bf16_merger(bf16_zoo):
    """Checkpoints stored in bfloat16: held as stored, task vectors formed per tensor."""
    return ResidentMerger(bf16_zoo["base"], [bf16_zoo["e1"], bf16_zoo["e2"]], "cpu")


@pytest.mark.parametrize("compat", ["paper", "mergekit"])
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"slerp"}))
@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_resident_equals_one_shot(method, compat, stored, request, tmp_path):
    zoo = request.getfixturevalue("study_zoo" if stored == "float32" else "bf16_zoo")
    merger = request.getfixturevalue("merger" if stored == "float32" else "bf16_merger")
    cfg = config(zoo, method, compat)
    # twice: the second pass uses the caches the first one filled
    for _ in range(2):
        merger.materialize(MergeConfig.from_dict(cfg))
        resident = {n: t.detach().clone() for n, t in merger.targets.items()}
    out = tmp_path / "o"
    run_merge(MergeConfig.from_dict(cfg), out)
    disk = load_file(out / "model.safetensors")
    assert set(disk) == set(resident)
    base = load_file(zoo["base"] / "model.safetensors")
    changed = 0
    for name, t in disk.items():
        assert t.dtype == base[name].dtype and torch.equal(t, resident[name]), name
        changed += not torch.equal(t, base[name])
    assert changed  # a merge, not the base written back
    merger.restore_base()
    assert all(torch.equal(base[n], t) for n, t in merger.targets.items())


@pytest.mark.parametrize(
    "rows,cols,chunk",
    [
        (38, 11, 30),  # 2 rows per block, the halves meet between rows 18 and 19
        (37, 12, 30),  # the halves meet inside row 18
        (3, 40_000, 1 << 22),  # one block; ranks over 32767 set the words' sign bit
        (3, 40_000, 30_000),  # a row per block, the middle row split between halves
    ],
)
def test_chunked_packed_row_ranks_equal_whole_tensor_ranks(rows, cols, chunk):
    from methods.masks import PackedRanks, row_ranks_packed, stable_ranks

    gen = torch.Generator().manual_seed(0)
    d = torch.randint(-5, 6, (rows, cols), generator=gen).float()
    got = row_ranks_packed(d, chunk_elements=chunk)
    assert got.words.dtype == torch.int32 and got.nbytes == 2 * d.numel()
    assert torch.equal(got.words, PackedRanks.of(stable_ranks(d, True)).words)
    assert torch.equal(got.ranks().long(), stable_ranks(d, True))
    assert row_ranks_packed(torch.zeros(2, 70_000)) is None  # rows too long to pack
    assert row_ranks_packed(torch.zeros(3, 5)) is None  # odd size


def test_resident_model_holds_the_base_in_the_shared_buffers(merger, study_zoo):
    """The model's parameters were moved into the engine's buffers, not copied
    beside the old ones: each is a view of its shape's buffer and holds the base."""
    base = load_file(study_zoo["base"] / "model.safetensors")
    merger.restore_base()
    params = dict(merger.model.named_parameters())
    for name, t in merger.targets.items():
        assert t.untyped_storage().data_ptr() in merger._stacked, name
        assert torch.equal(t, base[name])
        if name in params:
            assert params[name].data_ptr() == t.data_ptr()


def test_a_model_converted_on_load_is_refused(study_zoo, monkeypatch):
    """If transformers changes a weight while loading (fused or permuted layouts),
    merges of the checkpoints cannot be written into it: refuse, naming the tensor."""
    from transformers import AutoModelForCausalLM

    load = AutoModelForCausalLM.from_pretrained

    def converted(*args, **kwargs):
        model = load(*args, **kwargs)
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight.mul_(-1.0)
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", converted)
    with pytest.raises(ModelError, match=r"model.layers.0.mlp.up_proj.weight: the loaded model"):
        ResidentMerger(study_zoo["base"], [study_zoo["e1"]], "cpu")
