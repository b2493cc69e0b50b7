"""Bad inputs around a study's run: each refused early and clearly, nothing stored lost."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import with_non_finite, write_study
from optuna.trial import TrialState

from optimizer.config.study_config import StudyConfig
from optimizer.errors import ConfigError, MergeoptError
from optimizer.study.study import Study

TASKS = Path(__file__).resolve().parents[2] / "eval_tasks" / "demo"


def open_study(path: Path) -> Study:
    return Study(StudyConfig.from_yaml(path))


def completed(path: Path) -> dict[int, list[float]]:
    study = open_study(path)
    return {t.number: t.values for t in study.study.get_trials(states=(TrialState.COMPLETE,))}


def test_model_files_changed_on_disk_are_refused(study_zoo, tmp_path):
    zoo = {k: tmp_path / k for k in study_zoo}
    for k, src in study_zoo.items():
        shutil.copytree(src, zoo[k])
    path = write_study(tmp_path, zoo, n_trials=2)
    open_study(path).run()
    before = completed(path)
    weights = next((zoo["e2"]).glob("*.safetensors"))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # e.g. re-downloaded
    with pytest.raises(ConfigError, match="model files of study 't' changed on disk"):
        open_study(path)
    os.utime(weights, ns=(time.time_ns(), time.time_ns()))
    with pytest.raises(ConfigError, match="changed on disk"):
        open_study(path)
    # restoring the study's view of the files lets it continue, trials intact
    shutil.copy2(study_zoo["e2"] / weights.name, weights)
    assert len(before) == 2


def test_task_without_examples_is_refused(study_zoo, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "none.jsonl").write_text("")
    (tasks / "empty.yaml").write_text(
        (TASKS / "demo_kinds.yaml")
        .read_text()
        .replace("demo_kinds", "empty_task")
        .replace("kinds_search.jsonl", "none.jsonl")
    )
    objective = {"tasks": [{"task": "tasks/empty.yaml"}], "limit": 4}
    path = write_study(tmp_path, study_zoo, objective=objective)
    with pytest.raises(MergeoptError, match="yields no examples"):
        open_study(path)
    assert not (tmp_path / "t.db").exists()  # refused before the study was created


def test_unwritable_export_folder_is_refused_before_any_trial(study_zoo, tmp_path, read_only_dir):
    from optimizer.cli import main

    path = write_study(tmp_path, study_zoo, export=str(read_only_dir / "best"))
    assert main(["run", str(path)]) == 2
    study = open_study(path)
    assert study.study.get_trials() == []  # refused before the search started


def test_full_disk_is_refused_before_any_trial(study_zoo, tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    from optimizer.cli import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 1000, 1000))
    path = write_study(tmp_path, study_zoo)
    assert main(["run", str(path)]) == 2
    assert "not enough free space" in capsys.readouterr().err
    assert open_study(path).study.get_trials() == []


def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_export_that_runs_out_of_space_leaves_no_half_folder(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=2)
    open_study(path).run()
    before = completed(path)
    out = tmp_path / "exported"
    # the weights file cannot grow past 4 kB: the write fails half-way (EFBIG)
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "export", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(4096),
    )
    assert proc.returncode == 2, proc.stderr
    assert "File too large" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".exported*"))
    assert completed(path) == before  # the study is intact
    from optimizer.cli import main

    assert main(["export", str(path), "--out", str(out)]) == 0  # space back: it works


class StudyClock:
    """``time`` as the run loop (optimizer.study.loop) sees it, with a monotonic clock that moves only
    when a trial is scored: a trial outlives a timeout by construction, however
    fast or loaded the machine is."""

    def __init__(self, trial_seconds: float) -> None:
        self.now = 0.0
        self.trial_seconds = trial_seconds

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_timeout_mid_trial_finishes_that_trial_then_stops(study_zoo, tmp_path, capsys, monkeypatch):
    import optimizer.study.loop

    path = write_study(tmp_path, study_zoo, n_trials=5)
    study = open_study(path)
    clock = StudyClock(trial_seconds=1.0)
    monkeypatch.setattr(optimizer.study.loop, "time", clock)
    score = study.evaluator.score

    def slow_score(*args, **kwargs):
        clock.now += clock.trial_seconds  # the deadline passes while the trial is scored
        return score(*args, **kwargs)

    monkeypatch.setattr(study.evaluator, "score", slow_score)
    summary = study.run(timeout=0.3)
    assert summary.timed_out and summary.completed == 1
    trials = [t for t in study.study.get_trials() if t.state != TrialState.WAITING]
    assert [t.state for t in trials] == [TrialState.COMPLETE]  # it outlived the timeout, kept
    assert clock.now == 1.0  # one trial was scored, none started after the deadline
    monkeypatch.undo()

    from optimizer.cli import main

    assert main(["run", str(path), "--timeout", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "timeout reached: 1/5 trials completed; run the same command to continue" in out
    assert not (tmp_path / "t-best").exists()  # an unfinished study is not exported


def _pickled_copy(src: Path, dst: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    torch.save(load_file(next(src.glob("*.safetensors"))), dst / "pytorch_model.bin")
    return dst


def test_pickle_experts_and_remote_code_need_an_explicit_yes(study_zoo, tmp_path):
    zoo = dict(study_zoo)
    zoo["e2"] = _pickled_copy(study_zoo["e2"], tmp_path / "pickled")
    path = write_study(tmp_path, zoo, n_trials=1)
    with pytest.raises(MergeoptError, match="allow_pickle: true"):
        open_study(path)
    path = write_study(tmp_path, zoo, n_trials=1, allow_pickle=True)
    assert open_study(path).run().completed == 1  # asked for explicitly: it works

    import json

    remote = tmp_path / "remote"
    shutil.copytree(study_zoo["base"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    zoo = dict(study_zoo, base=remote)
    path = write_study(tmp_path, zoo, study="r", n_trials=1)
    with pytest.raises(ConfigError, match="trust_remote_code: true"):
        open_study(path)


def _states(path: Path) -> list[TrialState]:
    return [t.state for t in open_study(path).study.get_trials()]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_expert_is_refused_when_the_models_are_read(
    study_zoo, tmp_path, capsys, value
):
    from optimizer.cli import main

    bad, tensor = with_non_finite(study_zoo["e2"], tmp_path / "bad", value, count=2)
    path = write_study(tmp_path, {**study_zoo, "e2": bad}, methods=["ties", "task_arithmetic"])
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: tensor {tensor} holds 2 non-finite value(s)" in err, err
    # refused before any candidate: no trial ran, failed or was trimmed into a "success"
    assert set(_states(path)) == {TrialState.WAITING}


def test_the_same_expert_twice_is_refused_in_a_study(study_zoo, tmp_path):
    e1 = str(study_zoo["e1"])
    path = write_study(tmp_path, study_zoo, models=[e1, str(study_zoo["e2"]), e1])
    with pytest.raises(
        ConfigError, match=r"models\[0\] \(.*e1\) and models\[2\] \(.*e1\) are the same"
    ):
        open_study(path)
    copy = tmp_path / "e1-copy"
    shutil.copytree(study_zoo["e1"], copy)
    path = write_study(tmp_path, study_zoo, models=[e1, str(study_zoo["e2"]), str(copy)])
    with pytest.raises(ConfigError, match=f"expert {e1} and expert {copy} hold byte-identical"):
        open_study(path)
    base_copy = tmp_path / "base-copy"
    shutil.copytree(study_zoo["base"], base_copy)
    path = write_study(tmp_path, study_zoo, models=[e1, str(base_copy)])
    with pytest.raises(ConfigError, match=f"expert {base_copy} holds the same weights as the base"):
        open_study(path)
    assert not (tmp_path / "t.db").exists()  # refused before the study was created


def test_the_base_among_the_experts_is_left_out_with_a_note(study_zoo, tmp_path, capsys):
    from optimizer.cli import main

    models = [str(study_zoo["base"]), str(study_zoo["e1"]), str(study_zoo["e2"])]
    path = write_study(tmp_path, study_zoo, models=models, n_trials=3)
    assert main(["run", str(path), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert f"note: models[0] ({study_zoo['base']}) is the base model; it is left out" in out
    assert "3/3 done" in out
    assert _states(path).count(TrialState.COMPLETE) == 3
    assert TrialState.FAIL not in _states(path)


def test_a_study_whose_trials_keep_failing_stops_and_says_why(
    study_zoo, tmp_path, capsys, monkeypatch
):
    from optimizer.cli import main
    from optimizer.evaluate.harness import HarnessEvaluator as Evaluator

    def broken(self, heldout=False):
        raise RuntimeError("lm-eval broke")

    path = write_study(tmp_path, study_zoo, n_trials=4, max_consecutive_failures=3)
    with monkeypatch.context() as m:
        m.setattr(Evaluator, "score", broken)
        assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "stopped after 3 consecutive failed trials (0, 1, 2)" in err, err
    assert (
        "the most common reason (3 of them): evaluation failed: RuntimeError: lm-eval broke" in err
    )
    assert _states(path).count(TrialState.FAIL) == 3
    # the next run starts afresh, the failed trials stay recorded
    assert main(["run", str(path), "--no-export"]) == 0
    states = _states(path)
    assert states.count(TrialState.FAIL) == 3 and states.count(TrialState.COMPLETE) == 4


def test_a_failure_that_is_the_configs_fault_stops_at_the_first_trial(
    study_zoo, tmp_path, capsys, monkeypatch
):
    from optimizer.cli import main
    from optimizer.engine.resident import ResidentMerger

    def misfit(self, cfg):
        raise ConfigError("the candidate has 2 experts, the resident model 3")

    monkeypatch.setattr(ResidentMerger, "materialize", misfit)
    path = write_study(tmp_path, study_zoo, n_trials=4)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "trial 0 failed because of the study's config" in err
    assert "the candidate has 2 experts, the resident model 3" in err
    assert _states(path).count(TrialState.FAIL) == 1
