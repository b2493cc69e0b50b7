"""A self-contained HTML report of a study, its plots drawn by Optuna.

The plots come from ``optuna.visualization`` (plotly) on a *view* of the
study: an in-memory copy where a pruned trial (complete in the database, its
value a partial mean) is marked pruned, so Optuna's best-so-far line and
importances see only trials scored on every item. plotly.js is written into
the file once, so the report opens offline. The tables are the ones `status`
prints (``summary.py``), as HTML.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Iterable
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from optimizer.study.pruning import PRUNED, REPEAT_OF, REUSED_FROM
from optimizer.ui import summary
from optimizer.ui.console import params_text

MIN_TRIALS = 4  # fewer trials of a method: no importances or slices for it


def view(study: optuna.Study, trials: Iterable[FrozenTrial] | None = None) -> optuna.Study:
    """An in-memory single-objective copy (the first objective) of ``trials``
    (default: all, numbered as in the study), a pruned trial marked pruned
    with its partial mean as an intermediate value."""
    out = optuna.create_study(direction=study.directions[0])
    for t in study.get_trials(deepcopy=False) if trials is None else trials:
        pruned = PRUNED in t.user_attrs  # a repeat (Optuna's pruned state) was never scored
        state = TrialState.PRUNED if pruned else t.state
        if state not in (TrialState.COMPLETE, TrialState.PRUNED) or REPEAT_OF in t.user_attrs:
            state = TrialState.FAIL  # kept (not plotted), so trial numbers stay the study's
        out.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=t.values[0] if state == TrialState.COMPLETE else None,
                params=t.params,
                distributions=t.distributions,
                user_attrs=t.user_attrs,
                system_attrs=t.system_attrs,  # the constraints: Optuna greys out breaking trials
                intermediate_values={0: t.values[0]} if pruned and t.values else {},
            )
        )
    return out


def method_trials(study: optuna.Study, method: str) -> optuna.Study:
    """The view of one method's trials, its parameters only."""
    return view(
        study, [t for t in study.get_trials(deepcopy=False) if t.params.get("method") == method]
    )


def importances(study: optuna.Study, method: str) -> dict[str, float]:
    """How much each of ``method``'s parameters decides reaching the best
    scores among its trials scored whole (PED-ANOVA, which looks at the top
    quantile in the view's own direction: a maximized objective ranks what
    makes merges *better*). Empty with too few trials or nothing varied."""
    sub = method_trials(study, method)
    full = sub.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = [p for p in {k for t in full for k in t.params} if p != "method"]
    if len(full) < MIN_TRIALS or not params:
        return {}
    with warnings.catch_warnings():  # "too few trials", "same quantiles": shown as equal bars
        warnings.simplefilter("ignore")
        return dict(
            optuna.importance.get_param_importances(
                sub,
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                params=sorted(params),
            )
        )


def _figures(study, target_name: str) -> list[tuple[str, str, object]]:
    """(title, caption, plotly figure) for every plot the study has data for."""
    import plotly.graph_objects as go
    from optuna import visualization as vis

    raw = study.study
    whole = view(raw)
    out: list[tuple[str, str, object]] = []
    if not whole.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return out
    with warnings.catch_warnings():  # Optuna's "experimental" notes
        warnings.simplefilter("ignore")
        fig = vis.plot_optimization_history(whole, target_name=target_name)
        pruned = [t for t in whole.get_trials(deepcopy=False) if t.state == TrialState.PRUNED]
        if pruned:
            fig.add_trace(
                go.Scatter(
                    x=[t.number for t in pruned],
                    y=[t.intermediate_values[0] for t in pruned],
                    mode="markers",
                    name="Pruned Trial (partial mean)",
                    marker={"symbol": "circle-open", "color": "#999999"},
                    text=[
                        f"trial {t.number}: pruned after {t.user_attrs[PRUNED]['items']}/"
                        f"{t.user_attrs[PRUNED]['of']} items"
                        for t in pruned
                    ],
                )
            )
        fig.update_xaxes(title="trial")
        out.append(
            (
                "Optimization history",
                "Each trial scored on every item, the best so far among those that meet the "
                "constraints (Optuna greys out those that break one), and each pruned trial's "
                "partial mean (hollow).",
                fig,
            )
        )

        counts = summary.per_method(study)
        bars = go.Figure(
            [
                go.Bar(name=kind, x=list(counts), y=[c[kind] for c in counts.values()])
                for kind in ("scored whole", "pruned", "failed")
            ]
        )
        bars.update_layout(barmode="stack", title="Trials per method", yaxis={"tickformat": "d"})
        out.append(
            ("Trials per method", "Completed, pruned and failed trials of each method.", bars)
        )

        methods = [m for m in counts if counts[m]["scored whole"] >= MIN_TRIALS]
        for method in methods:
            imp = importances(raw, method)
            if not imp:
                continue
            fig = vis.plot_param_importances(
                method_trials(raw, method),
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                params=list(imp),
                target_name=target_name,
            )
            fig.update_layout(title=f"Parameter importances: {method}")
            out.append(
                (
                    f"Parameter importances: {method}",
                    f"What decides reaching the best {target_name} among the {counts[method]['scored whole']} "
                    f"{method} trials scored whole (PED-ANOVA on the top 10 %).",
                    fig,
                )
            )

        top = study.best_trials(1)
        best_method = top[0].params.get("method") if top else None
        if best_method in methods:
            sub = method_trials(raw, best_method)
            params = sorted(
                {
                    k
                    for t in sub.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    for k in t.params
                }
                - {"method"}
            )
            if params:
                fig = vis.plot_slice(sub, params=params[:12], target_name=target_name)
                fig.update_layout(title=f"Slices: {best_method}, the best trial's method")
                out.append(
                    (
                        f"Slices: {best_method}",
                        "Each parameter of the best method against the objective, one dot "
                        "per trial scored whole (darker: later).",
                        fig,
                    )
                )

        if len(raw.directions) > 1:
            fig = vis.plot_pareto_front(
                raw, target_names=summary.tasks(study)[: len(raw.directions)]
            )
            out.append(("Pareto front", "Each task's score; the front in red.", fig))
    return out


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _best_table(study) -> str:
    tasks = summary.tasks(study)
    constraints = bool(study.cfg.constraints)
    headers = ["#", "method", "value"]
    for t in tasks:
        headers += [f"{t} (search)", f"{t} (held-out)"]
    headers += ["held-out mean"] + (["constraints"] if constraints else []) + ["merge config"]
    rows = []
    for row in summary.best(study, 10):
        t = row.trial
        config = t.user_attrs.get("config", {})
        twin = t.user_attrs.get(REUSED_FROM)
        value = ", ".join(f"{v:.3f}" for v in t.values)
        if twin is not None:
            value += f" (the merge of trial {twin}: scores reused)"
        cells = [str(t.number), html.escape(t.params.get("method", "")), value]
        for task in tasks:
            cells += [_num(row.search.get(task)), _num(row.heldout.get(task))]
        cells.append(_num(row.heldout_mean()))
        if constraints:
            cells.append(html.escape("breaks " + ", ".join(row.broken) if row.broken else "met"))
        cells.append(
            f"<details><summary>{html.escape(params_text(config))}</summary>"
            f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></details>"
        )
        rows.append(cells)
    if not rows:
        return "<p>No trial scored on every item yet.</p>"
    return _table(headers, rows)


def _comparison_table(study) -> str:
    tasks = summary.tasks(study)
    headers = ["model"]
    for t in tasks:
        headers += [f"{t} (search)", f"{t} (held-out)"]
    rows = [
        [html.escape(r.label)]
        + [c for t in tasks for c in (_num(r.search.get(t)), _num(r.heldout.get(t)))]
        + [_num(r.search_mean(tasks)), _num(r.heldout_mean())]
        for r in summary.comparison(study)
    ]
    return _table(headers + ["search mean", "held-out mean"], rows)


def _timing_table(study) -> str:
    seconds = summary.phase_seconds(study)
    if not seconds:
        return "<p>No timings stored.</p>"
    rows = [
        [label] + [f"{seconds[p][i]:.2f}" for p in summary.PHASES]
        for i, label in enumerate(("mean", "median"))
    ]
    return _table(["", *summary.PHASES], rows)


def _stopped_table(study) -> str:
    rows = [
        [str(t.number), state, html.escape(t.params.get("method", "")), html.escape(why)]
        for t, state, why in summary.stopped(study)
    ]
    return _table(["#", "state", "method", "why"], rows) if rows else "<p>None.</p>"


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;font-size:13px;text-align:right;vertical-align:top}
td:nth-child(2),th:nth-child(2){text-align:left}
pre{text-align:left;font-size:12px;background:#f6f6f6;padding:6px}
td:last-child,th:last-child{text-align:left}
summary{cursor:pointer}
.plot{margin-bottom:1.5em}.caption{color:#555;font-size:13px}"""


def write_report(study, out: Path) -> Path:
    """Write ``out/report.html``; returns its path."""
    from optimizer.io.output_folder import check_output

    check_output(out, force=True)  # a folder (new or not), in a writable place
    out.mkdir(parents=True, exist_ok=True)
    counts = summary.state_counts(study)
    target_name = "objective" if len(study.study.directions) == 1 else "first objective"
    plots = []
    for i, (title, caption, fig) in enumerate(_figures(study, target_name)):
        fig.update_layout(height=420, margin={"t": 50})
        div = fig.to_html(
            full_html=False, include_plotlyjs=i == 0, div_id=f"plot-{i}", default_width="100%"
        )
        plots.append(
            f'<h2>{html.escape(title)}</h2><p class="caption">{html.escape(caption)}</p>'
            f'<div class="plot">{div}</div>'
        )
    constraints = study.cfg.constraints
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>mergeopt study {html.escape(study.cfg.name)}</title>
<style>{STYLE}</style>
</head><body>
<h1>Study {html.escape(study.cfg.name)}</h1>
<p>{", ".join(f"{name}: {n}" for name, n in counts.items() if n)}
{"<br>constraints: " + html.escape("; ".join(c.text for c in constraints)) if constraints else ""}</p>
<h2>Best trials</h2>
<p class="caption">Scored on every item; those that meet the constraints first. Open a row's
parameters for its merge config: save it as a file and run <code>mergeopt merge FILE --out DIR</code>.</p>
{_best_table(study)}
<h2>Best merge beside the base and each expert</h2>{_comparison_table(study)}
{"".join(plots) or "<p>No completed trials to plot.</p>"}
<h2>Seconds per completed trial</h2>{_timing_table(study)}
<h2>Failed and pruned trials</h2>{_stopped_table(study)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
