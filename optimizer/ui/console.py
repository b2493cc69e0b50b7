"""What the CLI shows: live study progress and the status tables (rich)."""

from __future__ import annotations

import sys
import time
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

console = Console(stderr=False, highlight=False)


def params_text(config: dict[str, Any]) -> str:
    """A compact line of a candidate's parameters: 'lambda=1.1 density=[0.7, 0.55]',
    per layer group 'weight=[0.3/0.5, 0.7/0.6]'."""
    parts = []
    for k, v in (config.get("parameters") or {}).items():
        parts.append(f"{k}={_short(v)}")
    per_model: dict[str, list] = {}
    for m in config.get("models", []):
        for k, v in (m.get("parameters") or {}).items():
            per_model.setdefault(k, []).append(_short(v))
    parts += [f"{k}=[{', '.join(map(str, v))}]" for k, v in per_model.items()]
    return " ".join(parts)


def _short(v: Any) -> Any:
    """A value as the line shows it; per-layer-group values (a list of
    ``{layers, value}`` entries, or a gradient) joined by slashes: 1.1/0.9/1."""
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        return "/".join(str(_short(e.get("value") if isinstance(e, dict) else e)) for e in v)
    return v


class TrialReporter:
    """One line per finished trial, with budget, best so far, time per trial and ETA."""

    def __init__(self, budget: int, multi: bool) -> None:
        self.budget = budget
        self.multi = multi
        self.start = time.monotonic()
        self.finished = 0
        self.best: float | None = None

    def __call__(self, trial: FrozenTrial, counts: dict[TrialState, int]) -> None:
        self.finished += 1
        done = counts[TrialState.COMPLETE]
        per_trial = (time.monotonic() - self.start) / self.finished
        eta = per_trial * max(0, self.budget - done)
        method = trial.params.get("method", "?")
        timing = trial.user_attrs.get("timing", {})
        from optimizer.study.constraints import broken
        from optimizer.study.pruning import PRUNED
        from optimizer.study.worker import REUSED_FROM  # here: the worker imports torch

        pruned = trial.user_attrs.get(PRUNED)
        if trial.state == TrialState.COMPLETE and pruned:
            what = (
                f"[yellow]pruned[/yellow] after {pruned['items']}/{pruned['of']} items "
                f"(partial mean {trial.value:.4f})"
            )
        elif trial.state == TrialState.COMPLETE:
            breaks = broken(trial)
            if not breaks and not self.multi and (self.best is None or trial.value > self.best):
                self.best = trial.value
            value = ", ".join(f"{v:.4f}" for v in trial.values)
            what = f"[green]{value}[/green]"
            if breaks:
                what = f"{value} [red]breaks[/red] {', '.join(breaks)}"
        else:
            what = (
                f"[red]{trial.state.name.lower()}[/red]: {trial.user_attrs.get('fail_reason', '')}"
            )
        best = f" | best {self.best:.4f}" if self.best is not None else ""
        t = (
            f" (materialize {timing['materialize']:.2f} s, evaluate {timing['evaluate']:.2f} s)"
            if timing
            else ""
        )
        if REUSED_FROM in trial.user_attrs:
            t = f" (the merge of trial {trial.user_attrs[REUSED_FROM]}: its scores reused)"

        console.print(
            f"trial {trial.number:>3} {method:<16} {what}{t} | {done}/{self.budget} done"
            f"{best} | {per_trial:.1f} s/trial | ETA {eta / 60:.1f} min",
            soft_wrap=True,
        )
        sys.stdout.flush()


def state_counts(study) -> dict[str, int]:
    """Trials by state, a pruned trial (complete in Optuna: its value is a
    partial mean) counted apart from those scored on every item."""
    counts = study.counts()
    pruned = len(study.pruned())
    out = {s.name.lower(): counts[s] for s in TrialState}
    out["complete"] -= pruned
    out["pruned"] += pruned
    return out


def status_tables(study) -> list[Table]:
    counts = state_counts(study)
    states = Table(
        title=f"study {study.cfg.name}: trials by state",
        caption="the budget (n_trials) counts complete and pruned trials",
    )
    for name in counts:
        states.add_column(name, justify="right")
    states.add_row(*(str(n) for n in counts.values()))
    from optimizer.study.constraints import broken

    tasks = [t.task for t in study.cfg.tasks]
    constraints = study.cfg.constraints
    best = Table(
        title="best trials (search score | held-out score)",
        caption=(
            "constraints: " + "; ".join(c.text for c in constraints) + " (met first)"
            if constraints
            else None
        ),
    )
    best.add_column("#", justify="right")
    best.add_column("method")
    best.add_column("value", justify="right")
    for t in tasks:
        best.add_column(t, justify="right")
    if constraints:
        best.add_column("constraints")
    best.add_column("parameters")
    for trial in study.best_trials():
        scores = trial.user_attrs.get("scores", {})
        held = study.heldout_scores(trial) or {}
        cells = []
        for t in tasks:
            h = held.get(t)
            cells.append(
                f"{scores.get(t, float('nan')):.3f}" + (f" | {h:.3f}" if h is not None else "")
            )
        breaks = broken(trial)
        feasibility = ["[red]breaks[/red] " + ", ".join(breaks) if breaks else "met"]
        best.add_row(
            str(trial.number),
            trial.params.get("method", "?"),
            ", ".join(f"{v:.4f}" for v in trial.values),
            *cells,
            *(feasibility if constraints else []),
            params_text(trial.user_attrs.get("config", {})),
        )
    return [states, best, timing_table(study), comparison_table(study)]


def timing_table(study) -> Table:
    """Mean and median seconds per completed trial (pruned ones included), by phase."""
    import statistics

    trials = study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    table = Table(title="seconds per completed trial")
    for col in ("", "materialize", "evaluate", "rest", "wall"):
        table.add_column(col, justify="right")
    rows = []
    for t in trials:
        timing = t.user_attrs.get("timing")
        if timing and t.datetime_start and t.datetime_complete:
            wall = (t.datetime_complete - t.datetime_start).total_seconds()
            rows.append(
                (
                    timing["materialize"],
                    timing["evaluate"],
                    wall - timing["materialize"] - timing["evaluate"],
                    wall,
                )
            )
    if rows:
        for label, fn in (("mean", statistics.mean), ("median", statistics.median)):
            table.add_row(label, *(f"{fn(col):.2f}" for col in zip(*rows)))
    return table


def comparison_table(study) -> Table:
    """The best merge beside its inputs (the base, each expert alone)."""
    tasks = [t.task for t in study.cfg.tasks]
    table = Table(title="best merge vs the base and each expert (search | held-out)")
    table.add_column("model")
    for t in tasks:
        table.add_column(t, justify="right")
    table.add_column("search mean", justify="right")
    table.add_column("held-out mean", justify="right")
    from optimizer.study.constraints import feasible

    best = study.best_trials(1)
    label = "best merge" if not best or feasible(best[0]) else "closest merge (breaks constraints)"
    rows = ([(f"{label} (trial {best[0].number})", best[0])] if best else []) + (
        study.reference_trials()
    )
    for label, trial in rows:
        scores = trial.user_attrs.get("scores", {})
        held = study.heldout_scores(trial) or {}
        cells = [
            f"{scores.get(t, float('nan')):.3f} | " + (f"{held[t]:.3f}" if t in held else "-")
            for t in tasks
        ]
        search_mean = sum(scores.get(t, 0.0) for t in tasks) / len(tasks)
        held_mean = f"{sum(held.values()) / len(held):.3f}" if held else "-"
        table.add_row(label, *cells, f"{search_mean:.3f}", held_mean)
    return table
