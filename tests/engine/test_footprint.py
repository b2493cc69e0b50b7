"""The resident engine's memory plan: read from the headers, exact, and acted on
before any model loads (a study that cannot fit fails at once; caches that
cannot fit are left out, with a note)."""

from __future__ import annotations

import pytest
import torch
import transformers

from methods import COMPAT_MODES, METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.footprint import Footprint, cache_kinds, plan_residency
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
    with pytest.raises(
        ModelError, match=r"3 float32 models.*scored model in float32.*fewer experts"
    ):
        ResidentMerger(
            study_zoo["base"], [study_zoo["e1"], study_zoo["e2"]], "cpu", residency="device"
        )
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


CPU = torch.device("cpu")


def test_keeps_caches_when_both_fit():
    fp = Footprint(entries=1000, experts=3, caches=("ranks", "orders"))
    assert fp.resident == 5 * 4000 and fp.cache_bytes == 3 * 6000
    planned, notes = plan_residency(fp, "auto", CPU, fp.resident + fp.cache_bytes, 0)
    assert planned == fp and notes == []
    planned, notes = plan_residency(fp, "auto", CPU, fp.resident + fp.cache_bytes - 1, 0)
    assert planned.tier == "device" and planned.caches == () and "do not fit" in notes[0]
    with pytest.raises(ModelError, match="residency: disk"):
        plan_residency(fp, "device", CPU, fp.resident - 1, 0)


def test_auto_falls_back_tier_by_tier():
    """A CUDA device too small takes the host tier, a host too small the disk
    tier; on a CPU (one memory) auto goes from the device straight to disk."""
    bf16 = torch.bfloat16
    fp = Footprint(entries=10_000, experts=2, stored=bf16, scored=bf16, largest=1000)
    gpu = torch.device("cuda")
    device = plan_residency(fp, "auto", gpu, 10**9, 10**9)[0]
    assert device.tier == "device" and device.resident == 4 * 2 * 10_000 + 4 * 4 * 1000
    host, notes = plan_residency(fp, "auto", gpu, device.resident - 1, 10**9)
    # on the GPU: the scored model, float32 scratch, two bfloat16 staging sets
    assert host.tier == "host" and host.resident == 2 * 10_000 + 4 * 4 * 1000 + 2 * 3 * 2 * 1000
    assert host.host == 3 * 2 * 10_000 and "tier host" in notes[0]
    disk = plan_residency(fp, "auto", gpu, host.resident, host.host - 1)[0]
    assert disk.tier == "disk" and disk.resident == host.resident
    assert disk.host == 2 * 3 * 2 * 1000  # two pinned read sets
    on_cpu = plan_residency(fp, "auto", CPU, device.resident - 1, 10**9)[0]
    assert on_cpu.tier == "disk" and on_cpu.host == 2 * 1000  # one read buffer
    with pytest.raises(ModelError, match="merge fewer experts"):
        plan_residency(fp, "auto", CPU, on_cpu.resident + on_cpu.host - 1, 0)
    # float32 checkpoints held off the device form their task vectors too
    wide = Footprint(entries=10_000, experts=2, largest=1000)
    assert not wide.forms_task_vectors and wide.scratch == 0
    held = plan_residency(wide, "host", gpu, 10**9, 10**9)[0]
    # (scored in float32: the merge is written straight into the model, no room for it)
    assert held.forms_task_vectors and held.scratch == 3 * 4 * 1000 and held.host == 3 * 4 * 10_000


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
