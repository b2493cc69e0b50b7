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
from conftest import write_study
from optuna.trial import TrialState

from optimizer.errors import ConfigError, MergeoptError
from optimizer.study import Study
from optimizer.study_config import StudyConfig

TASKS = Path(__file__).resolve().parents[1] / "eval_tasks" / "demo"


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


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one may write in, root included (immutable attribute when root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a read-only folder")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


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


def test_timeout_mid_trial_finishes_that_trial_then_stops(study_zoo, tmp_path, capsys):
    objective = {"tasks": [{"task": "demo_kinds"}, {"task": "demo_larger"}], "batch_size": 1}
    path = write_study(tmp_path, study_zoo, n_trials=5, objective=objective)
    study = open_study(path)
    study.load_models()  # so the timeout covers trials only
    summary = study.run(timeout=0.3)
    assert summary.timed_out and summary.completed == 1
    trials = [t for t in study.study.get_trials() if t.state != TrialState.WAITING]
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert trials[0].duration.total_seconds() > 0.3  # it outlived the timeout and was kept

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
