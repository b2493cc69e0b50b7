"""Every key of a study file and a merge config has its type checked, strictly.

A wrong type is a one-line error naming the key, never a traceback, and a
string is never read as a boolean (``cache_ranks: "no"`` was once true).
"""

from __future__ import annotations

import pytest
import yaml
from conftest import write_study

from optimizer.cli import main
from optimizer.config.study_config import StudyConfig

TASK = {"task": "demo_kinds", "metric": "acc"}

STUDY_CASES = [
    ({"seed": "abc"}, "seed must be an integer, got 'abc' (a string)"),
    ({"sampler": {"name": "tpe", "seed": [1]}}, "sampler: seed must be an integer, got [1]"),
    ({"sampler": {"name": "tpee"}}, "Did you mean 'tpe'"),
    ({"sampler": 3}, "sampler must be a string or a mapping, got 3"),
    ({"cache_ranks": "no"}, "cache_ranks must be true or false, got 'no' (a string)"),
    ({"compile_kernels": "false"}, "compile_kernels must be true or false, got 'false'"),
    ({"allow_pickle": "yes"}, "allow_pickle must be true or false, got 'yes'"),
    ({"trust_remote_code": 1}, "trust_remote_code must be true or false, got 1 (a number)"),
    ({"n_trials": "10"}, "n_trials must be an integer, got '10'"),
    ({"n_trials": 2.5}, "n_trials must be an integer, got 2.5"),
    ({"n_trials": True}, "n_trials must be an integer, got true (a boolean)"),
    ({"timeout": "60"}, "timeout must be a number, got '60'"),
    ({"timeout": -1}, "timeout must be positive, got -1"),
    ({"heartbeat_interval": True}, "heartbeat_interval must be an integer, got true"),
    ({"device": 0}, "device must be a string, got 0"),
    ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"dtype": 16}, "dtype must be a string, got 16"),
    ({"dtype": "float33"}, "dtype must be one of"),
    ({"compat": "papers"}, "Did you mean 'paper'"),
    ({"study": 123}, "study must be a string, got 123"),
    ({"study": "a b"}, "study 'a b' may use letters"),
    ({"base_model": 5}, "base_model must be a string, got 5"),
    ({"models": "e1"}, "models must be a list, got 'e1'"),
    ({"models": [{"model": 7}]}, "models[0]: model must be a string, got 7"),
    ({"methods": "ties"}, "methods must be a list of strings, got 'ties'"),
    ({"search_space": [1]}, "search_space must be a mapping, got [1]"),
    (
        {"search_space": {"ties.density": {"low": "0.1"}}},
        "search_space.ties.density: low must be a number, got '0.1'",
    ),
    (
        {"search_space": {"ties.density": {"low": 0.1, "high": 0.5, "log": "yes"}}},
        "search_space.ties.density: log must be true or false, got 'yes'",
    ),
    (
        {"search_space": {"ties.density": ["0.1", 0.5]}},
        "search_space.ties.density: a range is [low, high] of numbers, got '0.1' (a string)",
    ),
    ({"granularity": {"layer_group_size": "2"}}, "granularity: layer_group_size must be an"),
    ({"granularity": {"filters": "mlp"}}, "granularity: filters must be a list of strings"),
    ({"granularity": 4}, "granularity must be a mapping, got 4"),
    (
        {"objective": {"tasks": [TASK], "batch_size": "16"}},
        "batch_size must be a number of rows or auto, got '16'",
    ),
    ({"objective": {"tasks": [TASK], "batch_size": 0}}, "batch_size must be >= 1"),
    ({"objective": {"tasks": [TASK], "batch_size": 2.5}}, "batch_size must be an integer or a"),
    ({"objective": {"tasks": [TASK], "limit": 0}}, "objective: limit must be >= 1, got 0"),
    ({"objective": {"tasks": [TASK], "multi_objective": "true"}}, "multi_objective must be true"),
    ({"objective": {"tasks": [TASK], "num_fewshot": -1}}, "num_fewshot must be >= 0, got -1"),
    ({"objective": {"tasks": [TASK], "include_paths": "tasks"}}, "include_paths must be a list"),
    ({"objective": {"tasks": "demo_kinds"}}, "objective: tasks must be a list, got 'demo_kinds'"),
    (
        {"objective": {"tasks": [{"task": "demo_kinds", "weight": "2"}]}},
        "objective.tasks[0]: weight must be a number, got '2'",
    ),
    (
        {"objective": {"tasks": [{"task": "demo_kinds", "metric": 1}]}},
        "objective.tasks[0]: metric must be a string, got 1",
    ),
    ({"objective": {"tasks": [{"metric": "acc"}]}}, "objective.tasks[0]: 'task' is required"),
    ({"export": 5}, "export must be a string, got 5"),
    ({"storage": 5}, "storage must be a string, got 5"),
]


def _one_line_error(capsys, needle: str) -> None:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert err.count("\n") == 0, err
    assert err.startswith("mergeopt: error: "), err
    assert needle in err, err


@pytest.mark.parametrize("overrides,needle", STUDY_CASES)
def test_a_study_key_of_the_wrong_type_is_named_in_one_line(
    study_zoo, tmp_path, capsys, overrides, needle
):
    path = write_study(tmp_path, study_zoo, **overrides)
    assert main(["run", str(path)]) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "t.db").exists()  # refused before anything was stored


def test_yaml_booleans_are_booleans_and_quoted_words_are_not(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo)
    text = path.read_text()
    path.write_text(text + "cache_ranks: no\ncompile_kernels: off\nallow_pickle: true\n")
    cfg = StudyConfig.from_yaml(path)
    assert (cfg.cache_ranks, cfg.compile_kernels, cfg.allow_pickle) == (False, False, True)
    path.write_text(text + 'cache_ranks: "no"\n')
    with pytest.raises(Exception, match="cache_ranks must be true or false, got 'no'"):
        StudyConfig.from_yaml(path)


def test_null_keys_take_their_defaults(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, timeout=None, seed=None)
    path.write_text(path.read_text() + "timeout: null\nseed: null\ncache_ranks: null\n")
    cfg = StudyConfig.from_yaml(path)
    assert (cfg.timeout, cfg.seed, cfg.cache_ranks, cfg.sampler_seed) == (None, 0, True, 0)


def _merge_cfg(zoo, **overrides):
    cfg = {
        "merge_method": "ties",
        "base_model": str(zoo["base"]),
        "models": [{"model": str(zoo["math"])}, {"model": str(zoo["code"])}],
    }
    cfg.update(overrides)
    return cfg


MERGE_CASES = [
    ({"seed": "abc"}, "seed must be an integer, got 'abc' (a string)"),
    ({"seed": [1]}, "seed must be an integer, got [1] (a list)"),
    ({"compat": 1}, "compat must be a string, got 1"),
    ({"compat": "mergekt"}, "Did you mean 'mergekit'"),
    ({"dtype": "float33"}, "dtype must be one of"),
    ({"out_dtype": 16}, "out_dtype must be a string, got 16"),
    ({"models": "x"}, "models must be a list, got 'x'"),
    ({"models": [{"model": 5}]}, "models[0]: model must be a string, got 5"),
    ({"models": [{"model": "a", "parameters": [1]}]}, "models[0]: parameters must be a mapping"),
    ({"models": [{"model": "a", "weight": 1}]}, "models[0]: unknown key 'weight'"),
    ({"parameters": [1]}, "parameters must be a mapping, got [1]"),
    ({"parameters": {"density": "0.5"}}, "density"),
    ({"merge_method": 5}, "merge_method must be a string, got 5"),
    ({"tokenizer_source": 1}, "tokenizer_source must be a string, got 1"),
    ({"base_model": 1}, "base_model must be a string, got 1"),
]


@pytest.mark.parametrize("overrides,needle", MERGE_CASES)
def test_a_merge_key_of_the_wrong_type_is_named_in_one_line(
    tiny_zoo, tmp_path, capsys, overrides, needle
):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(_merge_cfg(tiny_zoo, **overrides)))
    assert main(["merge", str(path), "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "out").exists()
