"""The study report: Optuna's plots on the right trials, readable tables,
importances that point the right way, optuna-dashboard on a study, and the
page drawn by a real browser.

The study is the tiny zoo's with scripted item scores (``install_scripted``):
a few methods, Wilcoxon pruning, a constraint some trials break and one
evaluation that fails, so every part of the report has something to show.
"""

from __future__ import annotations

import html
import io
import json
import os
import random
import re
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml
from browser import check_page, chromium
from conftest import install_scripted, write_study
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from optimizer.config.merge_config import MergeConfig
from optimizer.config.study_config import StudyConfig
from optimizer.evaluate.fast import FastEvaluator
from optimizer.study.study import Study
from optimizer.ui import report as report_module
from optimizer.ui.report import importances, write_report

OOM = "CUDA out of memory (scripted)"


@pytest.fixture(scope="module")
def reported(study_zoo, tmp_path_factory):
    """(study, report page path) of a 24-trial study with every kind of trial."""
    folder = tmp_path_factory.mktemp("reported")
    path = write_study(
        folder, study_zoo, n_trials=24, methods=["task_arithmetic", "ties", "linear"]
    )
    cfg = yaml.safe_load(path.read_text())
    # p 0.1, not the default: at 0.2 too few trials of any method are scored
    # whole for its importances and slices, which the page must show too
    pruner = {"name": "wilcoxon", "p_threshold": 0.1}
    cfg["objective"].update(limit=40, pruner=pruner, constraints=["demo_kinds >= 0.3"])
    path.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        install_scripted(study_zoo, mp)
        scripted = FastEvaluator.score_items
        calls = 0

        def flaky(self, items):
            nonlocal calls
            calls += 1
            if calls == 30:  # a bad candidate: fails its trial, never the study
                raise RuntimeError(OOM)
            return scripted(self, items)

        mp.setattr(FastEvaluator, "score_items", flaky)
        study = Study(StudyConfig.from_yaml(path))
        study.run()
        study.score_heldout(study.best_trials(3))
    return study, write_report(study, folder / "report")


def _trial(method: str, values: dict[str, float], score: float):
    dists = {"method": CategoricalDistribution([method])}
    dists.update({k: FloatDistribution(0.0, 1.0) for k in values})
    return create_trial(
        value=score, params={"method": method, **values}, distributions=dists, user_attrs={}
    )


def test_importances_rank_what_makes_merges_better():
    """``good`` lifts the best merges, ``harm`` only sinks the worst ones,
    ``noise`` does nothing: a maximized study must rank ``good`` first (PED-ANOVA
    read in the wrong direction ranks ``harm`` first: checked below too)."""
    rng = random.Random(0)
    trials = []
    for _ in range(300):
        v = {f"ties.{k}": rng.random() for k in ("good", "harm", "noise")}
        score = 0.5 + 2 * max(0.0, v["ties.good"] - 0.8) - 2 * max(0.0, 0.2 - v["ties.harm"])
        trials.append(_trial("ties", v, score))
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    study.add_trial(_trial("linear", {"linear.weight": 0.5}, 0.9))  # another method's: left out
    imp = importances(study, "ties")
    print("importances (maximize):", {k: round(v, 3) for k, v in imp.items()})
    assert list(imp)[0] == "ties.good"
    assert imp["ties.noise"] < imp["ties.good"] / 5
    assert "linear.weight" not in imp

    flipped = optuna.create_study(direction="minimize")  # what the old report computed
    flipped.add_trials(trials)
    wrong = importances(flipped, "ties")
    print("importances (minimize):", {k: round(v, 3) for k, v in wrong.items()})
    assert list(wrong)[0] == "ties.harm"


def test_report_plots_come_from_optuna_on_the_right_trials(reported):
    study, _ = reported
    figures = {title: fig for title, _, fig in report_module._figures(study, "objective")}
    assert "Optimization history" in figures and "Trials per method" in figures
    assert any(t.startswith("Parameter importances: ") for t in figures)
    assert any(t.startswith("Slices: ") for t in figures)

    history = {trace.name: trace for trace in figures["Optimization history"].data}
    # the best-so-far line ends at the study's best trial scored whole and
    # meeting the constraints, never a pruned trial's partial mean
    best = study.best_trials(1)[0]
    assert history["Best Value"].y[-1] == pytest.approx(best.value)
    pruned = study.pruned()
    assert pruned, "the study should prune some trials"
    partial = history["Pruned Trial (partial mean)"]
    assert sorted(partial.x) == sorted(t.number for t in pruned)
    assert "Infeasible Trial" in history  # those breaking the constraint, greyed out

    # trials per method: whole numbers that add up to every finished trial
    bars = figures["Trials per method"].data
    total = sum(sum(b.y) for b in bars)
    counts = study.counts()
    assert total == counts[TrialState.COMPLETE] + counts[TrialState.FAIL]
    assert all(isinstance(y, int) for b in bars for y in b.y)
    assert sum(next(b for b in bars if b.name == "failed").y) == 1


def test_report_tables_are_readable(reported):
    study, page_path = reported
    page = page_path.read_text()
    assert page.count("plotly.js v") == 1  # plotly.js written once, offline
    assert "cdn.plot.ly" not in page.split("plotly.js v")[0]
    tables = "".join(re.findall(r"<table>.*?</table>", page, re.S))
    assert "demo_kinds (search)</th><th>demo_kinds (held-out)" in tables
    # scores rounded to 3 digits (parameters to 3 significant ones), no raw dicts
    scores = re.sub(r"<details>.*?</details>", "", tables, flags=re.S)
    assert not re.search(r"\d\.\d{4,}", scores)
    assert "{'" not in tables
    # each best trial's merge config, pasteable into `mergeopt merge`
    configs = [
        yaml.safe_load(html.unescape(c)) for c in re.findall(r"<pre>(.*?)</pre>", tables, re.S)
    ]
    best = study.best_trials(10)
    assert configs == [t.user_attrs["config"] for t in best]
    MergeConfig.from_dict(configs[0])
    # the held-out columns are filled for the trials scored held-out
    assert study.heldout_scores(best[0]) is not None
    first_row = re.search(r"<tr><td>\d+</td>.*?</tr>", tables, re.S).group(0)
    assert f"{study.heldout_scores(best[0])['demo_kinds']:.3f}" in first_row
    # the best merge beside the base and each expert
    beside = page.split("Best merge beside the base and each expert")[1].split("</table>")[0]
    labels = re.findall(r"<tr><td>([^<]*)</td>", beside)
    assert labels == [f"best merge (trial {best[0].number})", "base", "e1", "e2"]
    # failed and pruned trials with their reasons; seconds by phase
    stopped = page.split("Failed and pruned trials")[1]
    assert OOM in stopped and "pruned after" in stopped
    assert "materialize" in page.split("Seconds per completed trial")[1]


def _get(app, path: str, query: str = ""):
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD="GET")
    environ["wsgi.input"] = io.BytesIO()
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


def test_optuna_dashboard_opens_the_study(reported):
    """The study through optuna-dashboard's own WSGI app: the README's
    `optuna-dashboard sqlite:///...` shows the trials, their values and the
    merge configs."""
    from optuna_dashboard import wsgi

    study, _ = reported
    app = wsgi(study.cfg.storage)
    listed = _get(app, "/api/studies")["study_summaries"]
    entry = next(s for s in listed if s["study_name"] == study.study.study_name)
    detail = _get(app, f"/api/studies/{entry['study_id']}", "after=0")
    trials = {t["number"]: t for t in detail["trials"]}
    for t in study.best_trials(3):
        shown = trials[t.number]
        assert shown["values"][0] == pytest.approx(t.values[0])
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert json.loads(attrs["config"]) == t.user_attrs["config"]  # the merge config
    assert len(trials) == len(study.study.get_trials(deepcopy=False))


def test_the_report_draws_in_a_browser(reported):
    browser = chromium()
    if browser is None:
        if os.environ.get("MERGEOPT_REQUIRE_CHROMIUM"):
            pytest.fail("MERGEOPT_REQUIRE_CHROMIUM is set but no Chromium was found")
        pytest.skip("no Chromium: apt-get install chromium-headless-shell (or .ci/chromium.sh)")
    _, page = reported
    seen = check_page(page, browser)
    print("browser saw:", seen)
    assert seen["errors"] == []
    assert len(seen["plots"]) >= 4
    for plot in seen["plots"]:
        assert plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["marks"] > 0, plot
