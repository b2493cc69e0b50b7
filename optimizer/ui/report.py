"""A self-contained HTML report of a study: history, importances, Pareto front.

Charts are inline SVG written here, so the report needs no plotting package
and opens anywhere.
"""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from optimizer.study.constraints import broken, feasible
from optimizer.study.pruning import PRUNED
from optimizer.study.worker import REUSED_FROM
from optimizer.ui.console import params_text, state_counts

W, H, PAD = 640, 300, 40


def _scale(values: list[float], lo_px: float, hi_px: float):
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return lambda v: lo_px + (v - lo) / span * (hi_px - lo_px)


def _axes(x_label: str, y_label: str, y_lo: float, y_hi: float) -> str:
    return (
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#333"/>'
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>'
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">{x_label}</text>'
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor="middle">{y_label}</text>'
        f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end" font-size="10">{y_lo:.3g}</text>'
        f'<text x="{PAD - 4}" y="16" text-anchor="end" font-size="10">{y_hi:.3g}</text>'
    )


def _dot(x: float, y: float, t) -> str:
    """A full trial as a filled dot, a pruned one (a partial mean) as a hollow
    one, one that breaks a constraint in orange."""
    pruned = t.user_attrs.get(PRUNED)
    breaks = broken(t)
    what = f"pruned after {pruned['items']}/{pruned['of']} items, " if pruned else ""
    what += f"breaks {', '.join(breaks)}, " if breaks else ""
    color = "#ee7733" if breaks else "#4477aa"
    fill = f'fill="none" stroke="{color}"' if pruned else f'fill="{color}"'
    return (
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" {fill}><title>trial {t.number} '
        f"{html.escape(t.params.get('method', ''))}: {what}{t.values[0]:.4f}</title></circle>"
    )


def history_svg(trials) -> str:
    if not trials:
        return "<p>No completed trials.</p>"
    xs = [t.number for t in trials]
    ys = [t.values[0] for t in trials]
    sx = _scale(xs + [0], PAD, W - 20)
    sy = _scale(ys, H - PAD, 20)
    dots = "".join(_dot(sx(x), sy(y), t) for x, y, t in zip(xs, ys, trials))
    best, pts = -math.inf, []
    for x, y, t in zip(xs, ys, trials):
        if PRUNED not in t.user_attrs and feasible(t):  # a full trial's, within the constraints
            best = max(best, y)
        if best > -math.inf:
            pts.append(f"{sx(x):.1f},{sy(best):.1f}")
    line = f'<polyline points="{" ".join(pts)}" fill="none" stroke="#cc3311" stroke-width="2"/>'
    return f'<svg width="{W}" height="{H}">{_axes("trial", "objective", min(ys), max(ys))}{dots}{line}</svg>'


def bars_svg(values: dict[str, float], label: str) -> str:
    if not values:
        return "<p>Not enough trials.</p>"
    top = max(values.values()) or 1.0
    rows = "".join(
        f'<text x="0" y="{22 * i + 15}" font-size="12">{html.escape(k)}</text>'
        f'<rect x="220" y="{22 * i + 4}" width="{380 * v / top:.1f}" height="14" fill="#228833"/>'
        f'<text x="{225 + 380 * v / top:.1f}" y="{22 * i + 15}" font-size="11">{v:.3f}</text>'
        for i, (k, v) in enumerate(values.items())
    )
    return f'<svg width="{W}" height="{22 * len(values) + 10}">{rows}</svg><p>{label}</p>'


def pareto_svg(study, trials) -> str:
    if len(study.directions) != 2:
        return ""
    front = {t.number for t in study.best_trials}
    xs = [t.values[0] for t in trials]
    ys = [t.values[1] for t in trials]
    sx, sy = _scale(xs, PAD, W - 20), _scale(ys, H - PAD, 20)
    dots = "".join(
        f'<circle cx="{sx(t.values[0]):.1f}" cy="{sy(t.values[1]):.1f}" r="{5 if t.number in front else 3}" '
        f'fill="{"#cc3311" if t.number in front else "#999"}"><title>trial {t.number}</title></circle>'
        for t in trials
    )
    return f'<h2>Pareto front</h2><svg width="{W}" height="{H}">{_axes("objective 1", "objective 2", min(ys), max(ys))}{dots}</svg>'


def importances(study, trials) -> tuple[dict[str, float], str]:
    """Parameter importances among the best method's trials (PED-ANOVA)."""
    if len(trials) < 4:
        return {}, ""
    best = max(trials, key=lambda t: t.values[0])
    method = best.params.get("method")
    same = [t for t in trials if t.params.get("method") == method]
    if len(same) < 4:
        return {}, ""
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials(same)
    try:
        with warnings.catch_warnings():  # "low target values": hence the minus
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(
                sub,
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                # PED-ANOVA ranks what leads to *low* targets; objectives are maximized
                target=lambda t: -t.values[0],
            )
    except Exception:  # noqa: BLE001 - too few distinct values etc.
        return {}, ""
    return dict(imp), f"importance of each parameter among the {len(same)} {method} trials"


def _reused(t) -> str:
    twin = t.user_attrs.get(REUSED_FROM)
    return f" (the merge of trial {twin}: scores reused)" if twin is not None else ""


def write_report(study, out: Path) -> Path:
    from optimizer.io.output_folder import check_output

    check_output(out, force=True)  # a folder (new or not), in a writable place
    out.mkdir(parents=True, exist_ok=True)
    trials = study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = state_counts(study)
    by_method: dict[str, int] = {}
    for t in trials:
        by_method[t.params.get("method", "?")] = by_method.get(t.params.get("method", "?"), 0) + 1
    imp, imp_label = importances(study.study, trials)
    rows = "".join(
        f"<tr><td>{t.number}</td><td>{html.escape(t.params.get('method', ''))}</td>"
        f"<td>{', '.join(f'{v:.4f}' for v in t.values)}{_reused(t)}</td>"
        f"<td>{html.escape(str(t.user_attrs.get('scores', {})))}</td>"
        f"<td>{html.escape(str(study.heldout_scores(t) or ''))}</td>"
        f"<td>{html.escape(', '.join(broken(t)) or 'met') if study.cfg.constraints else ''}</td>"
        f"<td>{html.escape(params_text(t.user_attrs.get('config', {})))}</td></tr>"
        for t in study.best_trials(10)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>mergeopt study {html.escape(study.cfg.name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;font-size:13px}}</style>
</head><body>
<h1>Study {html.escape(study.cfg.name)}</h1>
<p>{", ".join(f"{name}: {n}" for name, n in counts.items() if n)}</p>
<h2>Optimization history</h2>{history_svg(trials)}
<p>Blue: each completed trial's objective; orange: a trial that breaks a constraint; hollow: a pruned trial's partial mean; red: best so far (of trials scored on every item that meet the constraints).</p>
<h2>Completed trials per method</h2>{bars_svg(dict(sorted(by_method.items(), key=lambda kv: -kv[1])), "trials per method")}
<h2>Parameter importances</h2>{bars_svg(imp, imp_label)}
{pareto_svg(study.study, trials)}
<h2>Best trials</h2><table><tr><th>#</th><th>method</th><th>value</th><th>search scores</th><th>held-out scores</th><th>constraints</th><th>parameters</th></tr>{rows}</table>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
