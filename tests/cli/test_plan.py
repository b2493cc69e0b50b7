"""`mergeopt plan` and the residency a study runs in.

The plan is read from the headers before anything loads and leaves the
study's storage alone; the tier `run` takes follows free memory (or the
study's `residency`), and a study held on disk records the same trials as one
held on the device.
"""

from __future__ import annotations

import pytest
from conftest import write_study
from optuna.trial import TrialState

from optimizer.cli import main
from optimizer.config.study_config import StudyConfig
from optimizer.errors import ConfigError
from optimizer.evaluate import memory
from optimizer.study import Study


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_plan_prints_every_tier_and_leaves_the_storage_alone(bf16_zoo, tmp_path, capsys):
    db = tmp_path / "never.db"
    path = write_study(tmp_path, bf16_zoo, storage=f"sqlite:///{db}")
    code, out = cli(capsys, "plan", str(path))
    assert code == 0, out
    assert "held in bfloat16, scored in bfloat16" in out
    assert "│ device" in out and "│ disk" in out and "│ host" not in out  # a CPU: one memory
    assert "residency auto: " in out and "3 bfloat16 models" in out
    assert "a candidate takes at least" in out and "GB/s" in out
    assert not db.exists()


def test_plan_follows_free_memory_down_to_disk_and_then_refuses(
    bf16_zoo, tmp_path, capsys, monkeypatch
):
    path = write_study(tmp_path, bf16_zoo)
    study = Study(StudyConfig.from_yaml(path), connect=False)
    wanted = study.footprint()
    monkeypatch.setattr(memory, "free_bytes", lambda device: wanted.resident - 1)
    code, out = cli(capsys, "plan", str(path))
    assert code == 0, out
    assert "tier disk: 3 bfloat16 models read from their files per candidate" in out, out
    assert "note: the models do not fit on cpu" in out
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    code, out = cli(capsys, "plan", str(path))
    assert code == 2 and "merge fewer experts per study" in out, out
    code, out = cli(capsys, "run", str(path))  # refused before any model loads
    assert code == 2 and "merge fewer experts per study" in out, out


def test_a_bad_residency_is_refused_with_the_choices(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, residency="gpu")
    with pytest.raises(ConfigError, match="residency.*auto.*device.*host.*disk"):
        StudyConfig.from_yaml(path)


def test_a_study_held_on_disk_records_the_device_tiers_trials(bf16_zoo, tmp_path):
    values = {}
    for tier in ("device", "disk"):
        (tmp_path / tier).mkdir()
        path = write_study(tmp_path / tier, bf16_zoo, residency=tier, n_trials=3)
        study = Study(StudyConfig.from_yaml(path))
        study.run(n_trials=3)
        assert study.merger.tier == tier
        done = study.study.get_trials(states=(TrialState.COMPLETE,))
        values[tier] = [(t.params, t.values) for t in done]
    assert len(values["disk"]) == 3 and values["disk"] == values["device"]
