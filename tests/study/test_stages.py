"""search: staged — a first share of the trials over every method, then the best
method's values per layer group, starting from the best trial's merge.

Scores come from a scripted rule on the merged weights (how close layer 0's
probe tensor lands to expert e1), so the study runs in seconds and which
trial is best is decided by the merge alone.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import write_study
from optuna.trial import TrialState
from safetensors.torch import load_file

from optimizer.config.merge_config import MergeConfig
from optimizer.config.study_config import StudyConfig
from optimizer.errors import ConfigError
from optimizer.evaluate.fast import FastEvaluator
from optimizer.study.pruning import REUSED_FROM
from optimizer.study.search_space import SearchSpace
from optimizer.study.stages import REFINED, REFINES
from optimizer.study.study import Study

PROBE = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture
def scripted(study_zoo, monkeypatch):
    """Both tasks reward landing near e1 on the probe (layer 0), by different amounts."""
    e1 = load_file(next(study_zoo["e1"].glob("*.safetensors")))[PROBE]
    base = load_file(next(study_zoo["base"].glob("*.safetensors")))[PROBE]
    span = float((e1 - base).norm())

    def score(self, heldout=False):
        w = dict(self.lm.model.named_parameters())[PROBE].detach().float()
        near = max(0.0, 1.0 - float((w - e1).norm()) / span)
        return {"demo_kinds": 0.1 + 0.8 * near, "demo_larger": 0.5 + 0.4 * near}

    monkeypatch.setattr(FastEvaluator, "score", score)


def staged_study(folder, zoo, search, n_trials=14, **overrides):
    return write_study(folder, zoo, n_trials=n_trials, search=search, **overrides)


def completed(study: Study):
    return study.study.get_trials(states=(TrialState.COMPLETE,))


def test_staged_search_refines_the_best_method_per_layer_group(study_zoo, tmp_path, scripted):
    path = staged_study(tmp_path, study_zoo, {"strategy": "staged", "method_share": 0.5})
    study = Study(StudyConfig.from_yaml(path))
    assert study.run().completed == 14
    trials = completed(study)
    first, second = trials[:7], trials[7:]
    # stage one: the joint space, one value for all layers
    assert all(study.space.fits(t.params) for t in first)
    best = max(first, key=lambda t: t.value)
    refined = study.study.user_attrs[REFINED]
    assert refined == {"method": best.params["method"], "from": best.number}
    # stage two opens with the best trial's merge spread over the layer groups:
    # the same merge, so its scores are reused, not computed
    opener = second[0]
    assert opener.user_attrs[REFINES] == best.number
    assert opener.user_attrs[REUSED_FROM] == best.number
    assert opener.value == best.value
    method = refined["method"]
    for t in second:
        assert t.params["method"] == method
        assert not study.space.fits(t.params) and study.refined.fits(t.params)
        assert any(".g1" in name for name in t.params)  # 2 layers: a value per layer
        # the stored merge config is the one its parameters describe, per layer
        assert study.candidate(t.params) == t.user_attrs["config"]
        merge = MergeConfig.from_dict(t.user_attrs["config"])
        assert merge.method.name == method  # a valid merge config
    layered = [
        v
        for t in second[1:]
        for v in t.user_attrs["config"]["models"][0]["parameters"].values()
        if isinstance(v, list)
    ]
    assert layered and all([e["layers"] for e in v] == [[0, 0], [1, 1]] for v in layered)
    # the sampler searched: stage two's trials are not all the opener's merge
    assert len({tuple(sorted(t.params.items())) for t in second}) > 1


def test_a_resumed_staged_study_refines_the_same_method_once(study_zoo, tmp_path, scripted):
    path = staged_study(tmp_path, study_zoo, "staged")
    Study(StudyConfig.from_yaml(path)).run(n_trials=9)
    study = Study(StudyConfig.from_yaml(path))
    chosen = study.study.user_attrs[REFINED]
    assert study.run().ran_this_run == 14 - 9
    trials = completed(study)
    assert len(trials) == 14
    assert study.study.user_attrs[REFINED] == chosen
    assert [t.number for t in trials if REFINES in t.user_attrs] == [7]
    assert {t.params["method"] for t in trials[7:]} == {chosen["method"]}


def test_a_joint_study_never_refines(study_zoo, tmp_path, scripted):
    study = Study(StudyConfig.from_yaml(write_study(tmp_path, study_zoo, n_trials=10)))
    study.run()
    assert REFINED not in study.study.user_attrs
    assert all(study.space.fits(t.params) for t in completed(study))


def test_broadcast_spreads_coarse_groups_over_finer_ones():
    coarse = SearchSpace(["linear"], 2, 4, layer_group_size=2)
    fine = SearchSpace(["linear"], 2, 4, layer_group_size=1)
    params = {"method": "linear"}
    for i in range(2):
        params[f"linear.weight.m{i}.g0"] = 0.1 + i
        params[f"linear.weight.m{i}.g1"] = 0.7 + i
    spread = fine.broadcast(params, coarse)
    assert spread == {
        "method": "linear",
        **{f"linear.weight.m0.g{g}": v for g, v in enumerate([0.1, 0.1, 0.7, 0.7])},
        **{f"linear.weight.m1.g{g}": v for g, v in enumerate([1.1, 1.1, 1.7, 1.7])},
    }
    flat = SearchSpace(["linear"], 2, 4)
    assert fine.broadcast(
        {"method": "linear", "linear.weight.m0": 0.3, "linear.weight.m1": 0.6}, flat
    )["linear.weight.m1.g3"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("search", "extra", "message"),
    [
        ("greedy", {}, r"search: strategy must be one of joint, staged"),
        ({"strategy": "staged", "method_share": 0}, {}, "method_share.*above 0"),
        ({"strategy": "staged", "method_share": 1.5}, {}, "method_share.*at most 1"),
        ({"strategy": "staged", "refine_layer_group_size": -1}, {}, "refine_layer_group_size"),
        ({"strategy": "joint", "bogus": 1}, {}, "bogus"),
        ("staged", {"sampler": "cmaes", "methods": ["linear"]}, "sampler cmaes needs the same"),
    ],
)
def test_bad_search_settings_are_refused_before_anything_is_stored(
    study_zoo, tmp_path, search, extra, message
):
    path = staged_study(tmp_path, study_zoo, search, **extra)
    with pytest.raises(ConfigError, match=message):
        StudyConfig.from_yaml(path)
    assert not list(tmp_path.glob("*.db"))


def test_a_multi_objective_study_cannot_be_staged(study_zoo, tmp_path):
    path = staged_study(tmp_path, study_zoo, "staged")
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"]["multi_objective"] = True
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="multi_objective study has a front"):
        StudyConfig.from_yaml(path)


def test_changing_the_search_of_a_stored_study_is_refused(study_zoo, tmp_path, scripted):
    Study(StudyConfig.from_yaml(write_study(tmp_path, study_zoo, n_trials=3))).run()
    path = staged_study(tmp_path, study_zoo, "staged", n_trials=3)
    with pytest.raises(ConfigError, match="a different search"):
        Study(StudyConfig.from_yaml(path))


def test_only_a_method_with_a_range_to_search_is_refined():
    space = SearchSpace(["model_stock", "linear", "ties"], 2, 4)
    assert not space.searchable("model_stock")  # one switch: nothing to refine
    assert space.searchable("linear") and space.searchable("ties")


def test_per_layer_values_show_group_by_group():
    """Stage two's candidates carry a value per layer group; the run line and
    status show each, not a placeholder (and nothing rich could take for markup)."""
    from optimizer.ui.console import params_text

    per_layer = [{"layers": [0, 0], "value": 0.25}, {"layers": [1, 1], "value": 0.5}]
    config = {
        "parameters": {"lambda": per_layer, "normalize": True},
        "models": [{"parameters": {"weight": per_layer}}, {"parameters": {"weight": 1.0}}],
    }
    assert params_text(config) == "lambda=0.25/0.5 normalize=True weight=[0.25/0.5, 1]"
