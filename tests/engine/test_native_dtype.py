"""bfloat16 checkpoints are held as stored: half the bytes, the same merges.

Almost every public fine-tune is stored in bfloat16. The engine keeps such a
base and its experts in bfloat16 and forms each task vector in float32 per
tensor inside the candidate's pass, as the one-shot merge does; the scored
model is held in the base's dtype unless ``eval_dtype`` says otherwise.
(That every method merges the one-shot merge's bytes from bfloat16 checkpoints
is tests/engine/test_resident.py's test, run for both stored dtypes.)
"""

from __future__ import annotations

import pytest
import torch
from conftest import write_study
from safetensors.torch import load_file
from test_resident import config

from optimizer.config.merge_config import MergeConfig
from optimizer.engine.footprint import Footprint, of_models, resident_dtype, stored_dtype
from optimizer.engine.resident import ResidentMerger
from optimizer.io.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def merger(bf16_zoo):
    return ResidentMerger(bf16_zoo["base"], [bf16_zoo["e1"], bf16_zoo["e2"]], "cpu")


def test_bfloat16_models_are_held_as_stored(merger, bf16_zoo):
    assert merger.native and merger.store_dtype == torch.bfloat16
    assert merger.eval_dtype == torch.bfloat16 and merger.deltas is None
    assert all(t.dtype == torch.bfloat16 for t in merger.base.values())
    assert all(t.dtype == torch.bfloat16 for e in merger.experts for t in e.values())
    assert next(merger.model.parameters()).dtype == torch.bfloat16
    # held: base, two experts and the scored model, 2 bytes an entry each, and
    # float32 scratch for one tensor's base, 2 task vectors and merge
    fp = merger.footprint
    largest = max(t.numel() for t in merger.base.values())
    assert fp.largest == largest and fp.scratch == 4 * 4 * largest
    assert fp.resident == 4 * 2 * fp.entries + fp.scratch
    stacks = [merger.base, merger.targets, *merger.experts]
    held = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for s in stacks
        for t in s.values()
    }
    scratch = sum(t.untyped_storage().nbytes() for t in merger.formed.scratch)
    assert sum(held.values()) + scratch == fp.resident


def test_the_held_task_vectors_are_the_float32_differences(merger, bf16_zoo):
    """Formed per tensor, in float32: what the one-shot merge and the float32
    layout compute, so the merged float32 values are the same bytes."""
    base = load_file(bf16_zoo["base"] / "model.safetensors")
    e1 = load_file(bf16_zoo["e1"] / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    b, deltas = merger.operands(name)
    assert b.dtype == torch.float32 and torch.equal(b, base[name].float())
    assert torch.equal(deltas[0], e1[name].float() - base[name].float())


def test_float32_scoring_of_bfloat16_models(bf16_zoo):
    """``eval_dtype: float32`` scores in float32; the held models stay bfloat16,
    and the merge is the float32 result itself, not rounded to bfloat16."""
    engine = ResidentMerger(
        bf16_zoo["base"], [bf16_zoo["e1"], bf16_zoo["e2"]], "cpu", eval_dtype=torch.float32
    )
    assert engine.native and engine.eval_dtype == torch.float32
    assert next(engine.model.parameters()).dtype == torch.float32
    cfg = MergeConfig.from_dict(config(bf16_zoo, "task_arithmetic", "paper"))
    engine.materialize(cfg)
    name = "model.layers.1.self_attn.q_proj.weight"
    b, deltas = engine.operands(name)
    expected = b + 0.7 * deltas[0] + 0.4 * deltas[1]
    assert torch.allclose(engine.targets[name], expected, atol=1e-6)
    assert not torch.equal(engine.targets[name], engine.targets[name].bfloat16().float())


def test_float32_and_mixed_checkpoints_keep_the_float32_layout(study_zoo, bf16_zoo):
    f32 = Checkpoint(study_zoo["base"])
    bf16 = [Checkpoint(bf16_zoo[k]) for k in ("base", "e1", "e2")]
    assert stored_dtype(f32) == torch.float32 and stored_dtype(bf16[0]) == torch.bfloat16
    assert resident_dtype(bf16) == torch.bfloat16
    assert resident_dtype([f32, *bf16[1:]]) == torch.float32  # mixed: float32, as before
    plan = of_models(bf16[0], bf16[1:], ("ranks",))
    bf16 = torch.bfloat16
    assert plan == Footprint(plan.entries, 2, ("ranks",), bf16, bf16, plan.largest)
    assert "3 bfloat16 models (task vectors formed per tensor in" in plan.describe()
    engine = ResidentMerger(study_zoo["base"], [bf16_zoo["e1"]], "cpu")
    assert not engine.native and engine.deltas is not None
    assert engine.eval_dtype == torch.float32


def test_a_study_of_bfloat16_models_scores_in_bfloat16_and_keeps_to_it(
    bf16_zoo, tmp_path, monkeypatch
):
    import transformers

    from optimizer.config.study_config import StudyConfig
    from optimizer.errors import ConfigError
    from optimizer.study.export import export_trial
    from optimizer.study.study import Study

    path = write_study(tmp_path, bf16_zoo, n_trials=2)
    study = Study(StudyConfig.from_yaml(path))
    assert "3 bfloat16 models" in study.footprint().describe()
    assert study.run().completed == 2
    assert next(study.merger.model.parameters()).dtype == torch.bfloat16
    assert study.study.user_attrs["mergeopt:fingerprint"]["eval_dtype"] == "bfloat16"
    # the export (dtype auto: bfloat16, the base's) is checked in bfloat16: the
    # very bytes the trial was scored on
    loads = []
    load = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        loads.append(kwargs.get("dtype"))
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    best = export_trial(study, tmp_path / "best")
    assert loads == [torch.bfloat16] and best.reloaded_scores is not None
    exported = load_file(tmp_path / "best" / "model.safetensors")
    study.merger.materialize(
        MergeConfig.from_dict(study.study.trials[best.trial].user_attrs["config"])
    )
    for name, t in study.merger.targets.items():
        assert exported[name].dtype == torch.bfloat16
        assert torch.equal(exported[name], t), name
    # scores in float32 are other numbers: not mixed into this study
    write_study(tmp_path, bf16_zoo, n_trials=2, eval_dtype="float32")
    with pytest.raises(ConfigError, match="different eval_dtype"):
        Study(StudyConfig.from_yaml(path))
