"""Paired multi-fidelity pruning: items in a fixed order, chunk by chunk, a
pruned trial's partial mean kept, counted, never best, never exported.

The study tests score items with a scripted rule on the merged weights (a
candidate's quality is how close it lands to expert e1, each item passed with
that probability from a fixed draw), so which candidates are worse is known;
the item scoring of lm-eval itself is checked against whole-task scores on
real models.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import yaml
from conftest import demo_words, write_study
from optuna.trial import TrialState
from tiny_models import build_tokenizer, tiny_llama

from optimizer.config.study_config import StudyConfig
from optimizer.errors import ConfigError, MergeoptError
from optimizer.evaluate import TaskObjective, make_evaluator
from optimizer.study.export import export_trial
from optimizer.study.pruning import PRUNED, ItemPlan
from optimizer.study.study import Study
from optimizer.study.worker import is_reference, start_label


def pruning_study(folder, zoo, pruner, n_trials=14, **overrides):
    path = write_study(folder, zoo, n_trials=n_trials, **overrides)
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"]["limit"] = 40  # 40 + 40 items
    cfg["objective"]["pruner"] = pruner
    path.write_text(yaml.safe_dump(cfg))
    return path


def open_study(path) -> Study:
    return Study(StudyConfig.from_yaml(path))


def pruned_and_whole(study: Study) -> tuple[list, list]:
    """The completed trials, (pruned, scored whole); both kinds must be there."""
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    pruned = [t for t in complete if PRUNED in t.user_attrs]
    full = [t for t in complete if PRUNED not in t.user_attrs]
    assert pruned and full
    return pruned, full


def test_item_values_average_to_each_task_score():
    """``score_items`` gives lm-eval's per-document values: their mean is the
    task's score, and an item scored within any subset gets the same value."""
    from optimizer.evaluate.tasks import index_tasks, task_config
    from optimizer.io.resources import builtin_tasks

    index = index_tasks([builtin_tasks()])
    objectives = [
        TaskObjective(t, task_config(index[t]), "acc", w)
        for t, w in (("demo_kinds", 1.0), ("demo_larger", 2.0))
    ]
    tok = build_tokenizer(demo_words())
    model = tiny_llama(len(tok), hidden=32, layers=2, seed=1).eval()
    for backend in ("fast", "hf"):
        ev = make_evaluator(backend, objectives, 30, None).attach(model, tok, 8)
        items = ev.items()
        assert len(items) == 60  # the limit holds per task
        results = ev.score_items(items)
        values = [r.value for r in results]
        assert set(values) <= {0.0, 1.0}
        whole = ev.score()
        for o in objectives:
            mine = [v for (n, _), v in zip(items, values) if n == o.name]
            assert math.isclose(sum(mine) / len(mine), whole[o.name])
        # graded: the right choice's probability among the choices; the top
        # one (at least 1/n) when the item is right, under 1/2 when it is wrong
        n_choices = {"demo_kinds": 2, "demo_larger": 2}
        for (name, _), r in zip(items, results):
            assert 0.0 < r.graded < 1.0
            if r.value == 1.0:
                assert r.graded >= 1 / n_choices[name]
            else:
                assert r.graded <= 0.5
        subset = random.Random(0).sample(range(len(items)), 17)
        again = ev.score_items([items[i] for i in subset])
        assert [r.value for r in again] == [values[i] for i in subset]
        assert [r.graded for r in again] == pytest.approx([results[i].graded for i in subset])


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_items_get_the_prompts_and_values_of_a_whole_lm_eval_run(backend):
    """The requests ``score_items`` builds once give each item what lm-eval's own
    ``evaluate`` over the whole task gives that document: the same value and
    graded result, few-shot prompts included, in whatever chunks it is scored."""
    from optimizer.evaluate.harness import graded
    from optimizer.evaluate.tasks import index_tasks, task_config
    from optimizer.io.resources import builtin_tasks

    index = index_tasks([builtin_tasks()])
    objectives = [
        TaskObjective(t, task_config(index[t]), "acc") for t in ("demo_kinds", "demo_larger")
    ]
    tok = build_tokenizer(demo_words())
    model = tiny_llama(len(tok), hidden=32, layers=2, seed=3).eval()
    ev = make_evaluator(backend, objectives, 12, 2).attach(model, tok, 8)
    items = ev.items()
    order = random.Random(1).sample(items, len(items))
    chunked = {}
    for start in range(0, len(order), 5):
        part = order[start : start + 5]
        chunked.update(zip(part, ev.score_items(part), strict=True))
    whole = ev._evaluate(ev.search, limit=12, log_samples=True)["samples"]
    for o in objectives:
        samples = [s for s in whole[o.config["task"]] if s["filter"] == "none"]
        assert len(samples) == 12
        for sample in samples:
            mine = chunked[(o.name, sample["doc_id"])]
            assert mine.value == sample["acc"]
            assert mine.graded == pytest.approx(graded(sample, "acc", sample["acc"]), abs=1e-6)


def test_graded_is_the_right_choices_probability_as_the_metric_ranks():
    from optimizer.evaluate.harness import graded

    lls = [(-1.0, False), (-2.0, False), (-3.0, False)]
    args = [("Q:", " a"), ("Q:", " bbbbbbb"), ("Q:", " cc")]
    sample = {"target": 0, "filtered_resps": lls, "arguments": args}
    z = math.exp(-1) + math.exp(-2) + math.exp(-3)
    assert graded(sample, "acc", 1.0) == pytest.approx(math.exp(-1) / z)
    # acc_norm ranks by log-likelihood per character of the choice
    per_char = [-1 / 2, -2 / 8, -3 / 3]
    z = sum(math.exp(x) for x in per_char)
    assert graded({**sample, "target": 1}, "acc_norm", 1.0) == pytest.approx(math.exp(-2 / 8) / z)
    # anything else keeps the metric's own value
    assert graded(sample, "exact_match", 1.0) == 1.0
    assert graded({**sample, "target": [0, 1]}, "acc", 0.0) == 0.0
    assert graded({**sample, "target": 7}, "acc", 0.0) == 0.0


def test_a_metric_that_is_not_a_mean_cannot_be_scored_by_item(tmp_path):
    from optimizer.evaluate.tasks import task_config

    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    yaml_path = tmp_path / "f1task.yaml"
    yaml_path.write_text(
        "task: f1task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: f1\n    aggregation: f1\n    higher_is_better: true\n"
    )
    ev = make_evaluator("fast", [TaskObjective("f1task", task_config(yaml_path), "f1")])
    with pytest.raises(ConfigError, match="must be a mean over its items"):
        ev.items()


def test_the_plan_is_fixed_and_its_weighted_mean_is_the_objective():
    objectives = [TaskObjective("a", {}, "acc", 1.0), TaskObjective("b", {}, "acc", 2.0)]
    items = [("a", i) for i in range(10)] + [("b", i) for i in range(30)]
    plan = ItemPlan.build(items, objectives, seed=3, chunk=7)
    assert plan.order == ItemPlan.build(items, objectives, 3, 7).order != items
    assert sorted(plan.order) == sorted(items)
    assert [len(c) for c in plan.chunks()] == [7, 7, 7, 7, 7, 5]
    values = {it: random.Random(str(it)).random() for it in items}
    mean_a = sum(values[("a", i)] for i in range(10)) / 10
    mean_b = sum(values[("b", i)] for i in range(30)) / 30
    weighted = [values[it] * plan.weights[it[0]] for it in plan.order]
    assert math.isclose(sum(weighted) / len(weighted), (mean_a + 2 * mean_b) / 3)


def test_wilcoxon_prunes_worse_trials_and_keeps_their_partial_mean(
    study_zoo, tmp_path, scripted, capsys
):
    from optimizer.cli import main

    path = pruning_study(tmp_path, study_zoo, {"name": "wilcoxon", "chunk": 8})
    study = open_study(path)
    summary = study.run()
    pruned, full = pruned_and_whole(study)
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    assert summary.completed == len(complete) == 14  # pruned trials count
    best = max(t.value for t in full)
    for t in pruned:
        seen = t.user_attrs[PRUNED]
        assert seen["of"] == 80 and seen["items"] < 80 and seen["items"] % 8 == 0
        # its value is the mean of the item values it reported, below the best
        steps = t.intermediate_values
        assert len(steps) == seen["items"]
        assert math.isclose(t.value, sum(steps.values()) / len(steps))
        assert t.value < best
        # the references are scored whole; a method's start point may be pruned
        assert not is_reference(t)
    assert {start_label(t) for t in full} >= {"base", "expert 0 alone", "expert 1 alone"}
    assert any(start_label(t) for t in pruned)  # a start point worse than the best
    # every trial saw the same items in the same order: the same steps
    order = list(study.plan.order)
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
    assert len(order) == 80
    # items actually skipped: fewer than 14 trials × 80 items were scored
    assert sum(scripted) == sum(t.user_attrs.get(PRUNED, {"items": 80})["items"] for t in complete)
    assert sum(scripted) < 14 * 80
    # never among the best, never exported
    assert all(PRUNED not in t.user_attrs for t in study.best_trials(20))
    with pytest.raises(ConfigError, match="pruned after"):
        export_trial(study, tmp_path / "x", pruned[0].number)
    # status and the report show them
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pruned" in out.splitlines()[1] + out.splitlines()[2] + out
    row = [line for line in out.splitlines() if line.count("│") >= 5][0]
    assert str(len(pruned)) in row
    from optimizer.ui.report import write_report

    page = write_report(study, tmp_path / "report").read_text()
    assert f"pruned: {len(pruned)}" in page and "pruned after" in page


def test_hyperband_reports_running_means_at_item_counts(study_zoo, tmp_path, scripted):
    path = pruning_study(tmp_path, study_zoo, {"name": "hyperband", "chunk": 8})
    study = open_study(path)
    assert study.run().completed == 14
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    pruned = [t for t in complete if PRUNED in t.user_attrs]
    assert pruned
    for t in complete:
        steps = sorted(t.intermediate_values)
        assert steps == list(range(8, 8 * len(steps) + 1, 8))
        assert math.isclose(t.value, t.intermediate_values[steps[-1]])


def test_export_and_resume_with_pruning(study_zoo, tmp_path, scripted):
    path = pruning_study(tmp_path, study_zoo, {"name": "wilcoxon", "chunk": 8}, n_trials=8)
    first = open_study(path)
    first.run()
    second = open_study(path)
    summary = second.run(n_trials=12)
    assert (summary.completed, summary.ran_this_run) == (12, 4)
    assert second.plan.order == first.plan.order  # the same items, the same order
    # the export check scores every item of the reloaded folder, as the search did
    calls = len(scripted)
    result = export_trial(second, tmp_path / "best")
    assert result.reloaded_scores == result.study_scores
    assert sum(scripted[calls:]) == 80


def test_a_study_cannot_change_its_pruner(study_zoo, tmp_path, scripted):
    path = pruning_study(tmp_path, study_zoo, "none", n_trials=1)
    open_study(path).run()
    path = pruning_study(tmp_path, study_zoo, "wilcoxon", n_trials=1)
    with pytest.raises(ConfigError, match="different pruner"):
        open_study(path)


def test_a_reused_merge_takes_its_twins_scores_and_is_never_the_reference(
    study_zoo, tmp_path, scripted
):
    path = pruning_study(tmp_path, study_zoo, "wilcoxon", n_trials=5, methods=["model_stock"])
    study = open_study(path)
    study.run()
    trials = study.study.get_trials(states=(TrialState.COMPLETE,))
    from optimizer.study.pruning import REUSED_FROM, best_whole

    reused = [t for t in trials if REUSED_FROM in t.user_attrs]
    assert reused
    for t in reused:
        twin = study.study.trials[t.user_attrs[REUSED_FROM]]
        assert t.value == twin.value
        assert t.user_attrs["scores"] == twin.user_attrs["scores"]
        assert t.intermediate_values == {}  # no storage write per item
        assert twin.intermediate_values
    reference = best_whole(study.study)
    assert REUSED_FROM not in reference.user_attrs
    assert reference.intermediate_values


@pytest.mark.parametrize(
    "pruner, needle",
    [
        ("wilcox", "Did you mean 'wilcoxon'"),
        ({"name": "wilcoxon", "reduction_factor": 3}, "applies to the hyperband pruner"),
        ({"name": "hyperband", "p_threshold": 0.05}, "applies to the wilcoxon pruner"),
        ({"name": "hyperband", "spending": "pocock"}, "applies to the wilcoxon pruner"),
        ({"name": "wilcoxon", "spending": "pokock"}, "Did you mean 'pocock'"),
        ({"name": "wilcoxon", "p_threshold": 1.5}, "between 0 and 1"),
        ({"name": "wilcoxon", "chunk": 0}, "chunk must be >= 1"),
        ({"name": "hyperband", "reduction_factor": 1}, "reduction_factor must be >= 2"),
        ({"name": "hyperband", "min_items": "4"}, "min_items must be an integer"),
        ({"nme": "wilcoxon"}, "Did you mean 'name'"),
        (3, "pruner must be a string or a mapping"),
    ],
)
def test_bad_pruner_settings_fail_fast(study_zoo, tmp_path, pruner, needle):
    path = pruning_study(tmp_path, study_zoo, pruner)
    with pytest.raises(MergeoptError, match=needle):
        open_study(path)
    assert not (tmp_path / "t.db").exists()


def test_a_multi_objective_study_cannot_prune(study_zoo, tmp_path):
    path = pruning_study(tmp_path, study_zoo, "wilcoxon", sampler="nsga2")
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"]["multi_objective"] = True
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="multi_objective study cannot prune"):
        open_study(path)


def test_a_trial_killed_mid_evaluation_is_retried_from_the_first_item(study_zoo, tmp_path):
    """The worker is killed inside its third trial's scoring; the retry scores
    the items from the first one again, and completed trials keep theirs."""
    import os
    import signal

    from test_study import worker_paused_in_third_trial

    path = pruning_study(tmp_path, study_zoo, {"name": "wilcoxon", "chunk": 8}, n_trials=10)
    proc = worker_paused_in_third_trial(path, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    study = open_study(path)
    (killed,) = study.study.get_trials(states=(TrialState.RUNNING,))
    assert sorted(killed.intermediate_values) == list(range(8))  # one chunk in
    assert study.run().completed == 10
    retry = next(
        t for t in study.study.get_trials() if t.user_attrs.get("retry_of") == killed.number
    )
    assert retry.state == TrialState.COMPLETE
    steps = sorted(retry.intermediate_values)  # from the first item of the order again
    assert steps == list(range(len(steps))) and len(steps) % 8 == 0
    assert torch.tensor(list(retry.intermediate_values.values())).isfinite().all()


def test_wilcoxon_compares_with_the_best_trial_scored_whole():
    """A pruned trial's value (the right answers among the items it saw) can
    beat every whole trial's, making it Optuna's best trial; the paired test
    must still be against the best whole trial, on all its items."""
    import optuna
    from optuna.trial import create_trial

    from optimizer.study.pruning import PrunerSpec, best_whole, make_pruner

    def study_with(pruner):
        study = optuna.create_study(direction="maximize", pruner=pruner)
        steps = {i: 0.6 for i in range(40)}
        study.add_trial(create_trial(value=0.6, intermediate_values=steps))
        lucky = {i: 0.2 for i in range(8)}
        attrs = {PRUNED: {"items": 8, "of": 40}}
        study.add_trial(create_trial(value=0.9, intermediate_values=lucky, user_attrs=attrs))
        return study

    def prunes(study) -> bool:
        trial = study.ask()
        for i in range(20):
            trial.report(0.5, i)  # better than the lucky one, worse than the whole one
        return trial.should_prune()

    ours = study_with(make_pruner(PrunerSpec("wilcoxon"), 40))
    assert ours.best_trial.number == 1  # Optuna's best: the pruned one
    assert best_whole(ours).number == 0
    assert prunes(ours)
    assert not prunes(study_with(optuna.pruners.WilcoxonPruner()))


def test_pocock_spending_golden_thresholds():
    """alpha * ln(1 + (e - 1) t) at t = 16/40, 32/40, 40/40, as increments:
    the looks' thresholds sum to alpha, the first is the largest share."""
    from optimizer.study.pruning import look_threshold

    looks = [look_threshold(0.2, seen, 40, 16) for seen in (16, 32, 40)]
    assert looks[0] == pytest.approx(0.2 * math.log(1 + (math.e - 1) * 0.4))
    assert looks[1] == pytest.approx(
        0.2 * (math.log(1 + (math.e - 1) * 0.8) - math.log(1 + (math.e - 1) * 0.4))
    )
    assert sum(looks) == pytest.approx(0.2)
    assert looks[0] > looks[1] > looks[2] > 0
    # a look part way through a chunk (a retried report) is that chunk's look
    assert look_threshold(0.2, 20, 40, 16) < looks[1]


def _prunes_at(pruner, best_values, values, chunk) -> int | None:
    """Where ``pruner`` stops a trial reporting ``values`` against a best whole
    trial that reported ``best_values``, looking after each chunk (None: never)."""
    import optuna
    from optuna.trial import create_trial

    from optimizer.study.pruning import _BestIs

    study = optuna.create_study(direction="maximize")
    best = create_trial(value=0.0, intermediate_values=dict(enumerate(best_values)))
    for seen in range(chunk, len(values), chunk):
        trial = create_trial(
            state=TrialState.RUNNING, intermediate_values=dict(enumerate(values[:seen]))
        )
        if pruner.prune(_BestIs(study, best), trial):
            return seen
    return None


def test_pocock_spending_keeps_candidates_as_good_as_the_best():
    """Candidates drawn like the best (paired noise around its item values):
    at p 0.2 at every one of 15 looks over a quarter are pruned, with the 0.2
    spent over the looks under half as many. A plainly worse candidate is
    still pruned at the first look either way."""
    import optuna

    from optimizer.study.pruning import SpentWilcoxon

    n, chunk, alpha = 240, 16, 0.2
    rng = random.Random(0)
    best = [rng.random() for _ in range(n)]
    each = optuna.pruners.WilcoxonPruner(p_threshold=alpha)
    spent = SpentWilcoxon(alpha, n, chunk)
    equal = [[v + rng.gauss(0, 0.05) for v in best] for _ in range(60)]
    pruned_each = sum(_prunes_at(each, best, c, chunk) is not None for c in equal)
    pruned_spent = sum(_prunes_at(spent, best, c, chunk) is not None for c in equal)
    assert pruned_each >= 14, pruned_each  # 17 of 60
    assert pruned_spent <= pruned_each / 2, (pruned_spent, pruned_each)  # 7
    worse = [v - 0.1 + rng.gauss(0, 0.05) for v in best]
    assert _prunes_at(spent, best, worse, chunk) == chunk
    assert _prunes_at(each, best, worse, chunk) == chunk


def test_spending_none_is_the_default_spelled_out(study_zoo, tmp_path):
    """Same study, same fingerprint: ``spending: none`` and ``pruned_value:
    partial`` resume a study made before those keys; ``pocock`` is another
    pruner and is refused, naming it."""
    open_study(pruning_study(tmp_path, study_zoo, "wilcoxon"))
    open_study(pruning_study(tmp_path, study_zoo, {"name": "wilcoxon", "spending": "none"}))
    spelled = {"name": "wilcoxon", "spending": "none", "pruned_value": "partial"}
    open_study(pruning_study(tmp_path, study_zoo, spelled))
    path = pruning_study(tmp_path, study_zoo, {"name": "wilcoxon", "spending": "pocock"})
    with pytest.raises(ConfigError, match="created with a different pruner"):
        open_study(path)


def test_paired_estimate_golden():
    from optuna.trial import create_trial

    from optimizer.study.pruning import paired_estimate

    ref = create_trial(value=0.8, intermediate_values={0: 0.5, 1: 0.7, 2: 0.9})
    # the reference's 0.8, plus the mean of (0.4 - 0.5, 0.6 - 0.7)
    assert paired_estimate(ref, {0: 0.4, 1: 0.6}) == pytest.approx(0.7)
    assert paired_estimate(ref, {5: 0.4}) is None  # no item in common


def test_a_pruned_trial_told_its_paired_estimate(study_zoo, tmp_path, scripted):
    """``pruned_value: paired``: each pruned trial's value is the paired
    estimate against a whole trial before it (the best then), below the best;
    its partial mean is kept beside it and the report shows both."""
    from optimizer.study.pruning import paired_estimate

    spec = {"name": "wilcoxon", "chunk": 8, "pruned_value": "paired"}
    path = pruning_study(tmp_path, study_zoo, spec)
    study = open_study(path)
    study.run()
    pruned, full = pruned_and_whole(study)
    best = max(t.value for t in full)
    for t in pruned:
        seen = t.user_attrs[PRUNED]
        steps = t.intermediate_values
        assert math.isclose(seen["partial_mean"], sum(steps.values()) / len(steps))
        assert t.value < best
        earlier = [w for w in full if w.number < t.number]
        estimates = [paired_estimate(w, steps) for w in earlier]
        assert any(math.isclose(t.value, e) for e in estimates), (t.value, estimates)
    from optimizer.ui.report import write_report

    page = write_report(study, tmp_path / "report").read_text()
    assert "paired estimate" in page and "partial mean" in page
