"""Studies end to end on a tiny zoo: run, resume, seeds, failures, export, report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_study
from optuna.trial import TrialState

from optimizer.config.study_config import StudyConfig
from optimizer.engine.apply import MergeError
from optimizer.errors import ConfigError, MergeoptError
from optimizer.study.export import export_trial
from optimizer.study.study import Study


def open_study(path: Path) -> Study:
    return Study(StudyConfig.from_yaml(path))


def test_end_to_end_study_export_and_report(study_zoo, tmp_path):
    study = open_study(write_study(tmp_path, study_zoo))
    summary = study.run()
    assert summary.completed == 4
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    for t in complete:
        scores = t.user_attrs["scores"]
        assert set(scores) == {"demo_kinds", "demo_larger"}
        # weighted objective: (1·kinds + 2·larger) / 3
        assert math.isclose(t.value, (scores["demo_kinds"] + 2 * scores["demo_larger"]) / 3)
        assert t.user_attrs["timing"]["materialize"] > 0
    # start trials first: the base, each expert alone, each method's start point
    labels = [t.user_attrs.get("start") for t in study.study.get_trials()]
    assert labels[:7] == [
        "base",
        "expert 0 alone",
        "expert 1 alone",
        "task_arithmetic start point",
        "task_arithmetic start point",
        "ties start point",
        "della start point",
    ]
    study.score_heldout(summary.best[:1])
    held = study.heldout_scores(summary.best[0])
    assert set(held) == {"demo_kinds"}
    result = export_trial(study, tmp_path / "best")
    assert result.reloaded_scores == result.study_scores
    assert (tmp_path / "best" / "mergeopt_config.yaml").is_file()
    info = json.loads((tmp_path / "best" / "mergeopt_trial.json").read_text())
    assert info["trial"] == result.trial
    from optimizer.ui.report import write_report

    page = write_report(study, tmp_path / "report").read_text()
    assert 'id="plot-0"' in page and "Optimization history" in page


def test_export_detects_a_mismatch(study_zoo, tmp_path, monkeypatch):
    study = open_study(write_study(tmp_path, study_zoo, n_trials=1))
    study.run()
    trial = study.best_trials(1)[0]
    from optimizer.evaluate.harness import HarnessEvaluator as Evaluator

    real = Evaluator.score
    monkeypatch.setattr(
        Evaluator,
        "score",
        lambda self, heldout=False: {k: v + 0.5 for k, v in real(self, heldout).items()},
    )
    with pytest.raises(MergeoptError, match="not the model trial"):
        export_trial(study, tmp_path / "x", trial.number)


def test_resume_continues_to_the_budget_and_seeds_once(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=3)
    first = open_study(path)
    first.run()
    seeds = len(first.space.start_trials())
    second = open_study(path)
    summary = second.run(n_trials=9)
    assert summary.completed == 9
    assert summary.ran_this_run == 6
    seeded = [t for t in second.study.get_trials() if "start" in t.user_attrs]
    assert len(seeded) == seeds  # enqueued once, not again on resume


def test_only_one_worker_finishes_when_others_complete_the_budget(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=2)
    late, other = open_study(path), open_study(path)
    real_load = late.load_models

    def others_finish_while_loading():
        other.run()  # the whole budget is completed by another worker meanwhile
        real_load()

    late.load_models = others_finish_while_loading
    summary = late.run()
    assert (summary.completed, summary.ran_this_run) == (2, 0)
    assert not summary.finisher  # it must not export a second time
    rerun = open_study(path).run()  # run again on a finished study: it exports
    assert rerun.finisher and rerun.ran_this_run == 0


def test_failed_candidates_fail_only_their_trial(study_zoo, tmp_path):
    study = open_study(write_study(tmp_path, study_zoo, n_trials=3))
    study.load_models()
    real_materialize, real_score = study.merger.materialize, study.evaluator.score
    calls = {"m": 0, "s": 0}

    def flaky_materialize(cfg):
        calls["m"] += 1
        if calls["m"] == 1:
            raise MergeError("tensor x: produced NaN or inf values")
        return real_materialize(cfg)

    def flaky_score(heldout=False):
        calls["s"] += 1
        if calls["s"] == 1:
            raise RuntimeError("lm-eval broke")
        return real_score(heldout)

    study.merger.materialize = flaky_materialize
    study.evaluator.score = flaky_score
    summary = study.run()
    assert summary.completed == 3
    failed = study.study.get_trials(states=(TrialState.FAIL,))
    reasons = sorted(t.user_attrs["fail_reason"] for t in failed)
    assert len(failed) == 2
    assert "NaN" in reasons[1] and "evaluation failed: RuntimeError: lm-eval broke" in reasons[0]


def test_conditional_space_never_proposes_invalid_values(study_zoo, tmp_path):
    import optuna

    from optimizer.config.merge_config import MergeConfig
    from optimizer.config.param_forms import TensorSite
    from optimizer.study.search_space import SearchSpace, allowed_methods

    space = SearchSpace(
        allowed_methods(2), 2, num_layers=4, layer_group_size=2, filters=["self_attn", "mlp"]
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.3.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    seen = set()
    for _ in range(400):
        trial = study.ask()
        space.suggest(trial)
        cand = space.candidate_config(
            trial.params,
            str(study_zoo["base"]),
            [str(study_zoo["e1"]), str(study_zoo["e2"])],
            "paper",
            0,
        )
        cfg = MergeConfig.from_dict(cand)
        seen.add(cfg.method.name)
        for n in names:
            params = cfg.tensor_params(TensorSite.of(n, 4))
            cfg.check_tensor_params(n, params)  # raises on an invalid combination
            if cfg.method.name.startswith("della"):
                for d, e in zip(params["density"], params["epsilon"]):
                    assert 0 < d - e and d + e <= 1
            if cfg.method.name.startswith("breadcrumbs"):
                assert all(b + g < 1 for b, g in zip(params["beta"], params["gamma"]))
        study.tell(trial, 0.0)
    assert seen == set(allowed_methods(2))


def test_layer_groups_and_filters_reach_the_right_tensors(study_zoo):
    from optimizer.config.merge_config import MergeConfig
    from optimizer.config.param_forms import TensorSite
    from optimizer.study.search_space import SearchSpace

    space = SearchSpace(
        ["task_arithmetic"],
        2,
        num_layers=4,
        layer_group_size=2,
        filters=["mlp"],
        overrides={"task_arithmetic.lambda": 1.0},
    )
    params = {"method": "task_arithmetic"}
    for name in space.distributions(space.methods[0]):
        # encode the site in the value: group 0/1, mlp/other
        params[name] = 0.1 * (1 + ("g1" in name)) + (0.5 if name.endswith("mlp") else 0.0)
    cfg = MergeConfig.from_dict(
        space.candidate_config(
            params, str(study_zoo["base"]), [str(study_zoo["e1"]), str(study_zoo["e2"])], "paper", 0
        )
    )
    w = lambda n: cfg.tensor_params(TensorSite.of(n, 4))["weight"][0]  # noqa: E731
    assert w("model.layers.0.mlp.up_proj.weight") == pytest.approx(0.6)
    assert w("model.layers.1.self_attn.q_proj.weight") == pytest.approx(0.1)
    assert w("model.layers.3.mlp.up_proj.weight") == pytest.approx(0.7)
    assert w("model.layers.2.self_attn.o_proj.weight") == pytest.approx(0.2)
    assert w("model.embed_tokens.weight") == pytest.approx(0.1)  # layer 0
    assert w("lm_head.weight") == pytest.approx(0.2)  # last layer
    assert cfg.parameters["lambda"] == 1.0


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"objective": {"tasks": [{"task": "demo_kindz"}]}}, "Did you mean 'demo_kinds'"),
        (
            {"objective": {"tasks": [{"task": "demo_kinds", "metric": "f1"}]}},
            "does not produce metric 'f1'",
        ),
        ({"methods": ["tiez"]}, "Did you mean 'ties'"),
        ({"models": ["/nonexistent/model"]}, "model folder not found"),
        (
            {"storage": "postgresql://user:hunter2@127.0.0.1:1/db"},
            "cannot open storage postgresql://user:***@127.0.0.1:1/db",
        ),
        ({"storage": "not-a-url"}, "is not a database URL"),
        ({"n_trial": 3}, "Did you mean 'n_trials'"),
        ({"n_trials": 0}, "n_trials must be >= 1, got 0"),
        ({"sampler": "tpee"}, "Did you mean 'tpe'"),
        ({"search_space": {"della.epsilon": 0.5}}, "does not fit every density"),
        (
            {
                "methods": ["breadcrumbs"],
                "search_space": {"breadcrumbs.beta": {"low": 0.1, "high": 0.98}},
            },
            "allow beta + gamma >= 1",
        ),
        ({"search_space": {"ties.densty": [0.1, 0.2]}}, "Did you mean 'density'"),
    ],
)
def test_bad_study_configs_fail_fast(study_zoo, tmp_path, overrides, needle):
    path = write_study(tmp_path, study_zoo, **overrides)
    with pytest.raises(MergeoptError) as exc:
        open_study(path)
    assert needle in str(exc.value)
    assert "hunter2" not in str(exc.value)
    # refused before the study's storage was created, let alone a model loaded
    assert not (tmp_path / "t.db").exists()


HARNESS = Path(__file__).resolve().parents[1] / "worker_harness.py"


def worker_paused_in_third_trial(path: Path, tmp_path: Path, log=subprocess.DEVNULL):
    """``mergeopt run`` in a child that stops inside its third candidate's scoring
    (two trials complete, the third materialized) and waits there to be killed."""
    paused = tmp_path / "paused"
    env = dict(os.environ, MERGEOPT_TEST_PAUSE_AT="2", MERGEOPT_TEST_PAUSE_FILE=str(paused))
    cmd = [sys.executable, str(HARNESS), "run", str(path), "--no-export"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 300
    while not paused.exists():
        assert proc.poll() is None, "the worker ended before its third trial"
        assert time.monotonic() < deadline, "the worker never reached its third trial"
        time.sleep(0.01)
    return proc


def test_sigkill_mid_trial_then_resume(study_zoo, tmp_path):
    # 7 seed trials are queued first; the retry queues behind them, so the
    # budget leaves room for it to run
    path = write_study(tmp_path, study_zoo, n_trials=10)
    proc = worker_paused_in_third_trial(path, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    study = open_study(path)
    before = {t.number: t.values for t in study.study.get_trials(states=(TrialState.COMPLETE,))}
    killed = study.study.get_trials(states=(TrialState.RUNNING,))
    assert len(before) == 2 and len(killed) == 1
    summary = study.run()
    assert summary.completed == 10
    after = {t.number: t.values for t in study.study.get_trials(states=(TrialState.COMPLETE,))}
    assert all(after[n] == v for n, v in before.items())  # no completed trial lost
    dead = study.study.trials[killed[0].number]
    assert (
        dead.state == TrialState.FAIL
        and dead.user_attrs["fail_reason"] == "its worker process died"
    )
    retries = [t for t in study.study.get_trials() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert {k: v for k, v in retries[0].params.items() if k in dead.params} == dead.params


def test_changed_space_is_refused(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=1)
    open_study(path).run()
    path = write_study(tmp_path, study_zoo, n_trials=1, methods=["ties"])
    with pytest.raises(ConfigError, match="different search_space"):
        open_study(path)


def test_cli_run_status_export_report(study_zoo, tmp_path, capsys):
    from optimizer.cli import main

    path = write_study(tmp_path, study_zoo, n_trials=3, export=str(tmp_path / "exported"))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3/3 done" in out and "best merge vs the base" in out
    assert (tmp_path / "exported" / "mergeopt_trial.json").is_file()
    assert main(["status", str(path)]) == 0
    assert "trials by state" in capsys.readouterr().out
    assert main(["export", str(path), "--trial", "0", "--out", str(tmp_path / "t0")]) == 0
    assert "match" in capsys.readouterr().out
    assert main(["export", str(path), "--trial", "0", "--out", str(tmp_path / "t0")]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    assert main(["run", str(path), "--n-trials", "0"]) == 2


def test_cmaes_needs_one_method_and_nsga2_gives_a_pareto_front(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, sampler="cmaes")
    with pytest.raises(ConfigError, match="cmaes needs one fixed method"):
        open_study(path)
    path = write_study(tmp_path, study_zoo, sampler="cmaes", methods=["ties"], n_trials=3)
    assert open_study(path).run().completed == 3
    objective = {
        "tasks": [{"task": "demo_kinds"}, {"task": "demo_larger"}],
        "limit": 8,
        "multi_objective": True,
    }
    path = write_study(
        tmp_path, study_zoo, study="mo", sampler="nsga2", objective=objective, n_trials=4
    )
    study = open_study(path)
    summary = study.run()
    assert summary.completed == 4
    assert all(len(t.values) == 2 for t in summary.best)
    from optimizer.ui.report import write_report

    assert "Pareto front" in write_report(study, tmp_path / "r").read_text()


def test_ctrl_c_keeps_finished_trials_and_retries_the_interrupted_one(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=10)
    log = (tmp_path / "out.log").open("w+")
    proc = worker_paused_in_third_trial(path, tmp_path, log)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    out = (tmp_path / "out.log").read_text()
    assert proc.returncode == 130, out
    assert "run the same command to continue" in out
    study = open_study(path)
    interrupted = [
        t for t in study.study.get_trials() if t.user_attrs.get("fail_reason") == "interrupted"
    ]
    assert len(interrupted) == 1
    retry = [
        t for t in study.study.get_trials() if t.user_attrs.get("retry_of") == interrupted[0].number
    ]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert study.run().completed == 10


def test_journal_file_storage(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=2, storage=f"journal:///{tmp_path}/j.log")
    assert open_study(path).run().completed == 2
    assert open_study(path).run(n_trials=3).completed == 3
    assert (tmp_path / "j.log").stat().st_size > 0


def test_task_given_as_a_yaml_path_beside_the_study(study_zoo, tmp_path):
    import shutil

    src = Path(__file__).resolve().parents[2] / "eval_tasks" / "demo"
    mine = tmp_path / "mytasks"
    mine.mkdir()
    shutil.copy(src / "kinds_search.jsonl", mine)
    (mine / "k.yaml").write_text(
        (src / "demo_kinds.yaml").read_text().replace("demo_kinds", "my_kinds")
    )
    objective = {"tasks": [{"task": "mytasks/k.yaml", "metric": "acc"}], "limit": 4}
    study = open_study(write_study(tmp_path, study_zoo, n_trials=1, objective=objective))
    assert study.run().completed == 1
    assert set(study.best_trials(1)[0].user_attrs["scores"]) == {"mytasks/k.yaml"}


def _sampled(study: Study) -> list[dict]:
    return [t.params for t in study.study.get_trials() if "start" not in t.user_attrs]


def test_workers_never_draw_the_same_candidate_and_a_resume_draws_what_a_run_would(
    study_zoo, tmp_path
):
    # one process runs 7 seeds and a first sampled trial; a fresh process (a
    # second worker, or a restart) draws the next: it must not repeat it
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    path = write_study(tmp_path / "a", study_zoo)
    open_study(path).run(n_trials=8)
    second = open_study(path)
    second.run(n_trials=9)
    first_draw, second_draw = _sampled(second)
    assert first_draw != second_draw
    # the same study run without the restart draws the same two candidates
    straight = open_study(write_study(tmp_path / "b", study_zoo))
    straight.run(n_trials=9)
    assert _sampled(straight) == [first_draw, second_draw]


def test_a_run_prints_no_third_party_progress_bars(study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo, n_trials=2)
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer.cli", "run", str(path)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"},
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout + proc.stderr
    assert "2/2 done" in proc.stdout and "exported trial" in proc.stdout
    # the memory plan, printed before loading: base, model, 2 task vectors; TIES' and DELLA's caches
    assert "memory: tier device: " in proc.stdout, proc.stdout
    assert "resident (3 float32 models + the scored model in float32) + " in proc.stdout
    assert "a candidate takes at least" in proc.stdout and "measured now" in proc.stdout
    assert "of caches (ranks and orders) on cpu" in proc.stdout, proc.stdout
    assert "it/s]" not in printed and "%|" not in printed, printed  # tqdm's marks


def scoring_calls(study) -> list[bool]:
    """Each scoring of the study's evaluator from now on (its ``heldout`` flag)."""
    calls: list[bool] = []
    score = study.evaluator.score
    study.evaluator.score = lambda heldout=False: calls.append(heldout) or score(heldout)
    return calls


def test_a_repeated_merge_reuses_the_scores_without_evaluating(study_zoo, tmp_path, capsys):
    """Model Stock has nothing to search: after its first trial, each of its
    trials is the same merge, scored once."""
    from optimizer.cli import main
    from optimizer.study.pruning import REUSED_FROM

    path = write_study(tmp_path, study_zoo, methods=["model_stock"], n_trials=6)
    study = open_study(path)
    calls = scoring_calls(study)
    assert study.run().completed == 6
    trials = study.study.get_trials(states=(TrialState.COMPLETE,))
    reused = [t for t in trials if REUSED_FROM in t.user_attrs]
    assert reused  # the budget is larger than the distinct merges
    by_number = {t.number: t for t in trials}
    for t in reused:
        twin = by_number[t.user_attrs[REUSED_FROM]]
        assert REUSED_FROM not in twin.user_attrs
        assert t.user_attrs["config"] == twin.user_attrs["config"]
        assert (t.value, t.user_attrs["scores"]) == (twin.value, twin.user_attrs["scores"])
        assert "timing" not in t.user_attrs  # kept out of the per-trial timings
    assert calls.count(False) == 6 - len(reused)  # one scoring per distinct merge
    distinct = {json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials}
    assert len(distinct) == 6 - len(reused)
    # a resumed run shows it
    assert main(["run", str(path), "--n-trials", "7", "--no-export"]) == 0
    assert "its scores reused" in capsys.readouterr().out


@pytest.mark.parametrize("repeats", ["resample", "reuse"])
def test_a_sampled_repeat_is_asked_again_and_not_counted(study_zoo, tmp_path, repeats):
    """Model Stock has two merges (filter_wise or not). A third trial can only
    repeat one: with ``resample`` the sampler is asked again, each repeat
    stored pruned (so TPE counts it against that point), never scored, not
    in the budget, until after 10 in a row one is taken with its twin's
    scores; with ``reuse`` (the earlier behaviour) the first repeat is."""
    from optimizer.study.pruning import REPEAT_OF, REUSED_FROM
    from optimizer.study.worker import MAX_REPEATS
    from optimizer.ui.summary import state_counts

    path = write_study(
        tmp_path, study_zoo, methods=["model_stock"], n_trials=3, search={"repeats": repeats}
    )
    study = open_study(path)
    calls = scoring_calls(study)
    assert study.run().completed == 3
    complete = study.study.get_trials(states=(TrialState.COMPLETE,))
    distinct = {json.dumps(t.user_attrs["config"], sort_keys=True) for t in complete}
    assert calls.count(False) == len(distinct)  # one scoring per distinct merge
    repeats_ = study.repeats()
    assert state_counts(study)["repeat"] == len(repeats_)
    if repeats == "reuse":
        assert repeats_ == [] and len(study.study.trials) == 3
        return
    assert len(distinct) == 2  # a repeat never took the place of the other merge
    by_number = {t.number: t for t in complete}
    (reused,) = [t for t in complete if REUSED_FROM in t.user_attrs]
    # every repeat after the second distinct merge, then the 11th draw is reused
    assert len(repeats_) >= MAX_REPEATS
    assert [t.number for t in repeats_[-MAX_REPEATS:]] == list(
        range(reused.number - MAX_REPEATS, reused.number)
    )
    for t in repeats_:
        assert t.state == TrialState.PRUNED and "scores" not in t.user_attrs
        twin = by_number[t.user_attrs[REPEAT_OF]]
        assert study.candidate(t.params) == twin.user_attrs["config"]
    # the status shows them apart from pruned trials; the report draws them nowhere
    from optimizer.ui.report import view

    assert state_counts(study)["pruned"] == 0
    assert len(view(study.study).get_trials(states=(TrialState.PRUNED,))) == 0


def test_a_sqlite_study_commits_without_waiting_for_the_disk(tmp_path):
    """A pruning trial reports every item: SQLite runs in write-ahead-log mode,
    synced at checkpoints, not at every commit."""
    from sqlalchemy import text

    from optimizer.study.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    with storage.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_counting_trials_asks_the_database_not_every_trial(tmp_path):
    """The worker counts trials several times per trial: a database count, the
    same number Optuna's get_n_trials gives, without loading every reported value."""
    import optuna
    from optuna.trial import TrialState

    from optimizer.study import _optuna
    from optimizer.study.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="c", storage=storage)
    for i in range(5):
        trial = study.ask()
        for step in range(50):
            trial.report(float(step), step)
        if i < 3:
            study.tell(trial, float(i))
        elif i == 3:
            study.tell(trial, state=TrialState.FAIL)
    sid = _optuna.study_id(study)
    for states in (None, (TrialState.COMPLETE,), (TrialState.RUNNING,), tuple(TrialState)):
        assert _optuna.count(storage, study, states) == storage.get_n_trials(sid, states)
    assert _optuna.count(storage, study, (TrialState.COMPLETE, TrialState.FAIL)) == 4
    loads = []
    real = storage.get_all_trials
    storage.get_all_trials = lambda *a, **k: loads.append(1) or real(*a, **k)
    _optuna.count(storage, study, (TrialState.COMPLETE,))
    assert not loads
