"""objective.constraints: a floor on a task's score, absolute or a share of the
base's; a trial breaking one is never the best, never exported, and shown so.

The study tests score with a scripted rule on the merged weights, so which
candidates break a floor is known: demo_kinds rewards landing near expert e1,
demo_larger (the "retention" task) rewards staying near the base.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import write_study
from optuna.trial import TrialState
from safetensors.torch import load_file

from optimizer.config.study_config import StudyConfig
from optimizer.errors import ConfigError
from optimizer.evaluate.fast import FastEvaluator
from optimizer.study.constraints import Constraint, broken, feasible
from optimizer.study.export import InfeasibleStudy, export_trial
from optimizer.study.study import BASE_SCORES, Study

PROBE = "model.layers.0.mlp.down_proj.weight"
TASKS = ["demo_kinds", "demo_larger"]


def constrained_study(folder, zoo, constraints, n_trials=12, **overrides):
    path = write_study(folder, zoo, n_trials=n_trials, **overrides)
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"]["constraints"] = constraints
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def scripted(study_zoo, monkeypatch):
    """demo_kinds = how close the merge lands to e1 (0.1 at the base, 0.9 at
    e1), demo_larger = how close it stays to the base (0.9 at the base, 0.8 at e1,
    lower further out): the two pull apart, as facts and retention do."""
    e1 = load_file(next(study_zoo["e1"].glob("*.safetensors")))[PROBE]
    base = load_file(next(study_zoo["base"].glob("*.safetensors")))[PROBE]
    span = float((e1 - base).norm())

    def score(self, heldout=False):
        w = dict(self.lm.model.named_parameters())[PROBE].detach().float()
        to_e1 = float((w - e1).norm()) / span
        from_base = float((w - base).norm()) / span
        return {
            "demo_kinds": min(0.9, max(0.1, 0.9 - 0.8 * to_e1)),
            "demo_larger": min(0.9, max(0.0, 0.9 - 0.1 * from_base)),
        }

    monkeypatch.setattr(FastEvaluator, "score", score)


def parse(lines):
    from optimizer.study.constraints import parse as parse_constraints

    return parse_constraints(lines, TASKS, "study.yaml: objective.constraints")


def test_constraint_lines_parse_and_measure_their_violation():
    floor, share, ceiling = parse(
        ["demo_larger >= 0.9", "demo_larger >= 0.95 x base", "demo_kinds<=0.5"]
    )
    assert floor == Constraint("demo_larger", ">=", 0.9)
    assert share == Constraint("demo_larger", ">=", 0.95, of_base=True)
    assert ceiling == Constraint("demo_kinds", "<=", 0.5)
    assert parse(["demo_larger >= 0.95 × base"]) == [share]
    scores = {"demo_kinds": 0.75, "demo_larger": 0.8}
    base = {"demo_kinds": 0.1, "demo_larger": 0.9}
    assert math.isclose(floor.violation(scores, base), 0.1)  # 0.1 short: broken
    assert math.isclose(share.violation(scores, base), 0.95 * 0.9 - 0.8)
    assert math.isclose(ceiling.violation(scores, base), 0.25)
    assert floor.violation({"demo_larger": 0.95}, base) < 0  # met
    assert share.text == "demo_larger >= 0.95 x base"
    with pytest.raises(ValueError, match="needs the base model's demo_larger score"):
        share.violation(scores, None)
    # a pruned trial that saw no item of the task is not held against it
    assert floor.violation({"demo_kinds": 0.3}, base) == 0.0


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("demo_larger >= 0.9", "must be a list of lines like"),
        (["demo_larger > 0.9"], r"write TASK >= NUMBER.*for example 'demo_kinds >= 0.9'"),
        (["demo_large >= 0.9"], "is not one of objective.tasks .* Did you mean 'demo_larger'"),
        (["demo_larger >= high"], "write TASK >= NUMBER"),
        (["demo_larger >= 1e999"], "finite number"),
        (["demo_larger <= 0.9 x base"], "a share of the base is a floor"),
        (["demo_larger >= 0 x base"], "a share of the base is a floor with a positive factor"),
        (["demo_larger >= 0.9", "demo_larger>=0.9"], "listed twice"),
    ],
)
def test_bad_constraints_are_refused_naming_the_fix(lines, message):
    with pytest.raises(ConfigError, match=message):
        parse(lines)


def test_a_bad_constraint_is_refused_before_anything_is_stored(study_zoo, tmp_path):
    path = constrained_study(tmp_path, study_zoo, ["demo_larger >= 90%"])
    with pytest.raises(ConfigError, match=r"objective.constraints\[0\] 'demo_larger >= 90%'"):
        StudyConfig.from_yaml(path)
    assert not list(tmp_path.glob("*.db"))


def test_a_trial_breaking_a_floor_is_never_the_best(study_zoo, tmp_path, scripted, capsys):
    from optimizer.cli import main

    path = constrained_study(tmp_path, study_zoo, ["demo_larger >= 0.95 x base"])
    study = Study(StudyConfig.from_yaml(path))
    summary = study.run()
    assert summary.completed == 12
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    base = study.study.user_attrs[BASE_SCORES]
    (base_trial,) = [t for t in complete if t.user_attrs.get("start") == "base"]
    assert base == base_trial.user_attrs["scores"]
    for t in complete:  # each trial stored its violation, as Optuna counts it
        (violation,) = t.constraints.values()
        assert math.isclose(
            violation, 0.95 * base["demo_larger"] - t.user_attrs["scores"]["demo_larger"]
        )
    infeasible = [t for t in complete if not feasible(t)]
    assert infeasible, "the floor must matter in this study"
    assert max(t.value for t in infeasible) > max(t.value for t in complete if feasible(t))
    best = study.best_trials()
    assert feasible(best[0])
    assert best[0].value == max(t.value for t in complete if feasible(t))
    assert all(feasible(t) for t in best[: sum(map(feasible, best))])  # met first
    # Optuna's own query agrees: only feasible trials can be its best
    assert study.study.best_trial.number == best[0].number
    # status shows it
    main(["status", str(path)])
    out = capsys.readouterr().out
    assert "demo_larger >= 0.95 x base" in out and "met" in out

    result = export_trial(study, tmp_path / "best", verify=False)
    assert result.trial == best[0].number and result.broken == []
    record = json.loads((tmp_path / "best" / "mergeopt_trial.json").read_text())
    assert record["constraints"]["demo_larger >= 0.95 x base"]["met"] is True

    # the user may still export a trial that breaks it, and is told so
    worst = infeasible[0]
    result = export_trial(study, tmp_path / "other", worst.number, verify=False)
    assert result.broken == ["demo_larger >= 0.95 x base"] == broken(worst)


def test_no_feasible_trial_means_no_export(study_zoo, tmp_path, scripted, capsys):
    """demo_larger never reaches 0.95 here: the run ends with an error naming the
    closest trial and what it breaks, and the trials stay stored."""
    from optimizer.cli import main

    path = constrained_study(tmp_path, study_zoo, ["demo_larger >= 0.95"], n_trials=5)
    assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "no trial of study 't' meets objective.constraints" in err
    assert "breaks demo_larger >= 0.95" in err and "--trial" in err
    assert not (tmp_path / "t-best").exists()
    study = Study(StudyConfig.from_yaml(path))
    assert study.count(TrialState.COMPLETE) == 5
    with pytest.raises(InfeasibleStudy):
        export_trial(study, tmp_path / "x", verify=False)


def test_a_worker_ahead_of_the_base_trial_scores_the_base_itself(study_zoo, tmp_path, scripted):
    """With several workers a merge can finish before the base start trial: the
    base is then scored once, kept with the study, and equal to the base trial's."""
    path = constrained_study(tmp_path, study_zoo, ["demo_larger >= 0.95 x base"], n_trials=6)
    study = Study(StudyConfig.from_yaml(path))
    study.load_models()
    study.merger.materialize(study.merger.resolve(_merge_of_e1(study)))
    scores = study.base_scores()
    assert study.study.user_attrs[BASE_SCORES] == scores
    study.run()
    (base_trial,) = [
        t
        for t in study.study.get_trials(states=(TrialState.COMPLETE,))
        if t.user_attrs.get("start") == "base"
    ]
    assert base_trial.user_attrs["scores"] == scores


def _merge_of_e1(study):
    from optimizer.config.merge_config import MergeConfig

    (params,) = [p for label, p in study.space.start_trials() if label == "expert 0 alone"]
    return MergeConfig.from_dict(study.candidate(params))


def test_constraints_cannot_change_on_an_existing_study(study_zoo, tmp_path, scripted):
    path = constrained_study(tmp_path, study_zoo, ["demo_larger >= 0.5"], n_trials=4)
    Study(StudyConfig.from_yaml(path)).run()
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"]["constraints"] = ["demo_larger >= 0.8"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="created with a different constraints"):
        Study(StudyConfig.from_yaml(path))


def multi_objective_run(folder, zoo, constraints, n_trials) -> Study:
    path = constrained_study(folder, zoo, constraints, n_trials=n_trials)
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"]["multi_objective"] = True
    path.write_text(yaml.safe_dump(cfg))
    study = Study(StudyConfig.from_yaml(path))
    study.run()
    return study


def test_a_multi_objective_front_holds_only_trials_that_meet_the_constraints(
    study_zoo, tmp_path, scripted
):
    study = multi_objective_run(tmp_path, study_zoo, ["demo_larger >= 0.95 x base"], 8)
    front = study.best_trials()
    assert front and all(feasible(t) for t in front)
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    assert any(not feasible(t) for t in complete)
    # nothing meets an impossible floor: the closest misses come back, not nothing
    (tmp_path / "b").mkdir()
    study = multi_objective_run(tmp_path / "b", study_zoo, ["demo_larger >= 0.95"], 5)
    closest = study.best_trials()
    misses = [t.constraints["demo_larger >= 0.95"] for t in closest]
    assert misses == sorted(misses) and misses[0] > 0
    with pytest.raises(InfeasibleStudy, match="closest, trial"):
        export_trial(study, tmp_path / "x", verify=False)
