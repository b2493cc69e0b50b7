"""The resident engine's memory plan: read from the headers, exact, and acted on
before any model loads (a study that cannot fit fails at once; caches that
cannot fit are left out, with a note)."""

from __future__ import annotations

import pytest
import torch
import transformers

from methods import COMPAT_MODES, METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.footprint import Footprint, cache_kinds, keeps_caches
from optimizer.engine.resident import ResidentMerger
from optimizer.errors import ModelError
from optimizer.evaluate import memory

SHAPES = {
    "model.layers.0.mlp.up_proj.weight": (64, 32),
    "model.layers.1.mlp.up_proj.weight": (64, 32),
    "model.layers.1.input_layernorm.weight": (32,),
}


def searched_point(spec) -> dict:
    """The method's first start point, each searched number moved to the middle
    of its range (a start point may keep everything and so need no cache)."""
    point = dict(spec.start_points[0]) if spec.start_points else {}
    for p in spec.params:
        if p.kind is bool or p.name == "weight" or p.reparam is not None or p.search is None:
            continue
        point[p.name] = sum(p.search) / 2
    return point


@pytest.mark.parametrize("compat", COMPAT_MODES)
@pytest.mark.parametrize("method", sorted(n for n, s in METHODS.items() if s.inputs != "pair"))
def test_each_method_fills_exactly_the_caches_it_declares(method, compat):
    spec = METHODS[method]
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    experts = [{n: b + 0.01 * torch.randn(b.shape, generator=gen) for n, b in base.items()}]
    experts.append({n: b + 0.01 * torch.randn(b.shape, generator=gen) for n, b in base.items()})
    engine = ResidentMerger.in_memory(base, experts, num_layers=2, compile_kernels=False)
    models = [{"model": f"e{i}"} for i in range(2)]
    if "weight" in spec.param_names:
        models = [{**m, "parameters": {"weight": 0.5}} for m in models]
    cfg = {
        "merge_method": method,
        "base_model": "b",
        "models": models,
        "parameters": searched_point(spec),
        "compat": compat,
        "seed": 1,
    }
    engine.materialize(MergeConfig.from_dict(cfg))
    filled = {"ranks": any(r is not None for r in engine._ranks.values())}
    filled["orders"] = bool(engine._magnitudes)
    assert tuple(k for k, used in filled.items() if used) == spec.caches.of(compat)
    assert cache_kinds([spec], compat) == spec.caches.of(compat)


def test_pair_methods_fill_no_cache():
    for spec in METHODS.values():
        if spec.inputs == "pair":
            assert spec.caches.of("paper") == spec.caches.of("mergekit") == ()


def test_the_footprint_is_what_the_engine_holds(study_zoo):
    engine = ResidentMerger(study_zoo["base"], [study_zoo["e1"], study_zoo["e2"]], "cpu")
    stacks = [engine.base, engine.targets, *engine.deltas]
    held = sum(v.nbytes for stack in stacks for v in stack.values())
    assert engine.footprint.resident == held
    assert engine.footprint.entries * 4 == sum(v.nbytes for v in engine.base.values())
    # every cache kind counted (no study said which): 2 + 4 bytes an entry per expert
    assert engine.footprint.cache_bytes == 2 * 6 * engine.footprint.entries
    assert engine.notes == []


def test_what_must_be_resident_fails_at_once_and_caches_are_dropped_with_a_note(
    study_zoo, monkeypatch
):
    probe = ResidentMerger(study_zoo["base"], [study_zoo["e1"], study_zoo["e2"]], "cpu")
    entries, resident = probe.footprint.entries, probe.footprint.resident

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr(memory, "free_bytes", lambda device: resident - 1)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    with pytest.raises(ModelError, match=r"4 float32 models.*fewer experts"):
        ResidentMerger(study_zoo["base"], [study_zoo["e1"], study_zoo["e2"]], "cpu")
    monkeypatch.undo()

    # room for the models, not for DELLA's rank caches: trials run without them
    monkeypatch.setattr(memory, "free_bytes", lambda device: resident + entries)
    engine = ResidentMerger(
        study_zoo["base"], [study_zoo["e1"], study_zoo["e2"]], "cpu", caches=("ranks",)
    )
    assert not engine.cache_ranks
    assert len(engine.notes) == 1 and "do not fit" in engine.notes[0], engine.notes
    cfg = MergeConfig.from_dict(
        {
            "merge_method": "della",
            "base_model": str(study_zoo["base"]),
            "models": [
                {"model": str(study_zoo[e]), "parameters": {"weight": 0.5}} for e in ("e1", "e2")
            ],
            "parameters": {"density": 0.5, "epsilon": 0.1},
        }
    )
    engine.materialize(cfg)
    assert engine.cache_bytes() == 0


def test_keeps_caches_when_both_fit():
    fp = Footprint(entries=1000, experts=3, caches=("ranks", "orders"))
    assert fp.resident == 5 * 4000 and fp.cache_bytes == 3 * 6000
    assert keeps_caches(fp, fp.resident + fp.cache_bytes, "cpu")
    assert not keeps_caches(fp, fp.resident + fp.cache_bytes - 1, "cpu")
    with pytest.raises(ModelError):
        keeps_caches(fp, fp.resident - 1, "cpu")


def test_the_readmes_memory_table_is_the_planners():
    import re
    from pathlib import Path

    from optimizer.engine.footprint import size_table

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(
        r"<!-- memory-table: begin -->\n(.*?)\n<!-- memory-table: end -->", text, re.S
    )
    assert block, "README.md lacks the memory-table block"
    assert block.group(1).strip() == size_table().strip(), (
        "README.md's memory table differs from the planner's; paste the output of "
        "`python -m optimizer.engine.footprint` between the markers"
    )
