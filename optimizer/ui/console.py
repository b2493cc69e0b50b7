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
        from optimizer.study.pruning import PRUNED, REUSED_FROM, pruned_note

        pruned = trial.user_attrs.get(PRUNED)
        if trial.state == TrialState.COMPLETE and pruned:
            what = (
                f"[yellow]pruned[/yellow] after {pruned['items']}/{pruned['of']} items "
                f"({pruned_note(pruned, trial.value, 4)})"
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


def _cells(row, tasks: list[str]) -> list[str]:
    """Each task's search score and, where scored, held-out score: '0.680 | 0.700'."""
    return [
        f"{row.search.get(t, float('nan')):.3f}"
        + (f" | {row.heldout[t]:.3f}" if t in row.heldout else "")
        for t in tasks
    ]


def status_tables(study) -> list[Table]:
    from optimizer.ui import summary

    counts = summary.state_counts(study)
    states = Table(
        title=f"study {study.cfg.name}: trials by state",
        caption=(
            "the budget (n_trials) counts complete and pruned trials; a repeat (a merge "
            "already scored, drawn again) is not scored and not counted"
        ),
    )
    for name in counts:
        states.add_column(name, justify="right")
    states.add_row(*(str(n) for n in counts.values()))

    tasks = summary.tasks(study)
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
    for row in summary.best(study):
        trial = row.trial
        feasibility = ["[red]breaks[/red] " + ", ".join(row.broken) if row.broken else "met"]
        best.add_row(
            str(trial.number),
            trial.params.get("method", "?"),
            ", ".join(f"{v:.4f}" for v in trial.values),
            *_cells(row, tasks),
            *(feasibility if constraints else []),
            params_text(trial.user_attrs.get("config", {})),
        )
    return [states, best, timing_table(study), comparison_table(study)]


def timing_table(study) -> Table:
    """Mean and median seconds per completed trial (pruned ones included), by phase."""
    from optimizer.ui.summary import PHASES, phase_seconds

    table = Table(title="seconds per completed trial")
    for col in ("", *PHASES):
        table.add_column(col, justify="right")
    seconds = phase_seconds(study)
    if seconds:
        for i, label in enumerate(("mean", "median")):
            table.add_row(label, *(f"{seconds[p][i]:.2f}" for p in PHASES))
    return table


def comparison_table(study) -> Table:
    """The best merge beside its inputs (the base, each expert alone)."""
    from optimizer.ui.summary import comparison, tasks

    names = tasks(study)
    table = Table(title="best merge vs the base and each expert (search | held-out)")
    table.add_column("model")
    for t in names:
        table.add_column(t, justify="right")
    table.add_column("search mean", justify="right")
    table.add_column("held-out mean", justify="right")
    for row in comparison(study):
        cells = [c if " | " in c else c + " | -" for c in _cells(row, names)]
        held = row.heldout_mean()
        table.add_row(
            row.label,
            *cells,
            f"{row.search_mean(names):.3f}",
            f"{held:.3f}" if held is not None else "-",
        )
    return table
