"""The run loop of one worker, and what the worker that finishes a study does last.

A worker claims, scores and records trials until the study's shared budget
of completed trials is reached, its timeout expires, it is interrupted, or
its trials keep failing. The worker that completes the budget (or finds it
complete) then scores the held-out splits of the best trials and exports the
best merge; the others just stop.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from optimizer.study import worker
from optimizer.study.interrupts import Interrupts

if TYPE_CHECKING:
    from optimizer.study.export import ExportResult
    from optimizer.study.study import Study

OnTrial = Callable[[FrozenTrial, dict[TrialState, int]], None]


@dataclass
class FailureStreak:
    """Consecutive failed trials of one run, to stop a study that cannot succeed."""

    limit: int
    trials: list[tuple[int, str]] = field(default_factory=list)
    config_fault: bool = False

    def add(self, trial: FrozenTrial, config_fault: bool) -> bool:
        """Count a finished trial; True once the run must stop."""
        if trial.state != TrialState.FAIL:
            self.trials.clear()
            return False
        self.trials.append((trial.number, trial.user_attrs.get("fail_reason", "unknown")))
        self.config_fault = config_fault
        return config_fault or len(self.trials) >= self.limit

    def message(self) -> str:
        reasons = Counter(reason for _, reason in self.trials)
        reason, count = reasons.most_common(1)[0]
        numbers = ", ".join(str(n) for n, _ in self.trials)
        if self.config_fault:
            return (
                f"stopped: trial {numbers} failed because of the study's config, and every "
                f"trial would: {reason}. Fix the study file and run again."
            )
        return (
            f"stopped after {len(self.trials)} consecutive failed trials ({numbers}); "
            f"the most common reason ({count} of them): {reason}. The failed trials stay "
            "recorded; fix the cause (models, parameters, tasks) and run again "
            "(max_consecutive_failures in the study file sets the limit)."
        )


@dataclass
class RunSummary:
    budget: int
    completed: int = 0
    failed_this_run: int = 0
    ran_this_run: int = 0
    interrupted: bool = False
    timed_out: bool = False
    # set when the run stopped because trials kept failing
    failing: FailureStreak | None = None
    # this worker recorded the trial that completed the budget, or found the
    # budget already reached when it started: it scores held-out splits and
    # exports, the others do not (a worker that ran nothing because the others
    # finished meanwhile is not a finisher)
    finisher: bool = False
    best: list[FrozenTrial] = field(default_factory=list)


def run(
    study: Study,
    n_trials: int | None = None,
    timeout: float | None = None,
    on_trial: OnTrial | None = None,
) -> RunSummary:
    """Work on the study until its shared budget of completed trials is reached.

    ``timeout`` stops this worker from starting trials after it expires; a
    trial already running finishes and is recorded (as Optuna does).
    """
    budget = n_trials or study.cfg.n_trials
    timeout = timeout or study.cfg.timeout
    deadline = time.monotonic() + timeout if timeout else None
    ran = failed = 0
    summary = RunSummary(budget)
    streak = FailureStreak(study.cfg.max_consecutive_failures)
    done_on_arrival = False
    with Interrupts() as study.interrupts:
        try:
            worker.enqueue_start_points_once(study)
            done_on_arrival = study.count(TrialState.COMPLETE) >= budget
            while True:
                study.interrupts.check()  # a signal that came while recording
                if deadline is not None and time.monotonic() >= deadline:
                    summary.timed_out = True
                    break
                if study.count(TrialState.COMPLETE) >= budget:
                    break
                with study.interrupts.interruptible():
                    study.load_models()
                if deadline is not None and time.monotonic() >= deadline:
                    summary.timed_out = True  # loading the models used it up
                    break
                trial = worker.claim(study, budget)
                if trial == "done":
                    break
                if trial == "wait":
                    with study.interrupts.interruptible():
                        time.sleep(min(2.0, study.cfg.heartbeat_interval))
                    continue
                values, config_fault = worker.run_trial(study, trial)
                frozen, completed_budget = worker.record(study, trial, values, budget)
                ran += 1
                summary.finisher = completed_budget
                if frozen is None:
                    continue
                failed += frozen.state == TrialState.FAIL
                if on_trial:
                    on_trial(frozen, study.counts())
                if streak.add(frozen, config_fault):
                    summary.failing = streak
                    break
            study.interrupts.check()
        except KeyboardInterrupt:
            summary.interrupted = True
            worker.fail_own_running(study, "interrupted")
    summary.completed = study.count(TrialState.COMPLETE)
    summary.ran_this_run, summary.failed_this_run = ran, failed
    summary.finisher = summary.finisher or done_on_arrival
    summary.best = study.best_trials()
    return summary


def finish(
    study: Study, summary: RunSummary, export: bool, say: Callable[[str], None] = lambda s: None
) -> ExportResult | None:
    """The finishing worker's last steps: score the held-out splits of the best
    trials and the references, then export the best merge (when ``export``
    and the budget is complete). The export, or None."""
    if not summary.best:
        return None
    say("scoring the held-out splits of the best trials and the references")
    study.score_heldout(summary.best[:3] + [t for _, t in study.reference_trials()])
    if not export or summary.completed < summary.budget:
        return None
    from optimizer.study.export import export_trial

    say(f"exporting the best merge to {study.cfg.export}")
    return export_trial(study, Path(study.cfg.export), force=True)
