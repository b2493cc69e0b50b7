"""A worker that dies while recovering a dead worker's trial loses no candidate.

Recovery is several storage writes (queue the retry, store the reason, fail
the trial). A worker SIGKILLed between any two of them must leave a state the
next recovery completes: the dead trial failed, its parameters queued again
exactly once. (The kill test of test_workers.py met the one bad order by
chance: the trial failed, its retry never queued, the candidate lost.)
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from optimizer.study.lock import StudyLock
from optimizer.study.worker import recover_dead_trials

WRITES = (
    "create_new_trial",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_trial_state_values",
)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def study_with_a_dead_trial(tmp_path) -> tuple[SimpleNamespace, int]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))
    )
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    trial.suggest_float("weight", 0.0, 1.0)
    trial.set_user_attr("worker", {"host": "this", "pid": dead_pid()})
    fake = SimpleNamespace(
        storage=storage, study=study, lock=StudyLock(), cfg=SimpleNamespace(heartbeat_interval=5)
    )
    return fake, trial.number


def die_at_write(storage: optuna.storages.BaseStorage, k: int) -> None:
    """The storage's ``k``-th write from now on kills the caller."""
    count = {"writes": 0}
    for name in WRITES:
        real = getattr(storage, name)

        def write(*args, _real=real, **kwargs):
            if count["writes"] == k:
                raise Killed
            count["writes"] += 1
            return _real(*args, **kwargs)

        setattr(storage, name, write)


def restore(storage: optuna.storages.BaseStorage) -> None:
    for name in WRITES:
        vars(storage).pop(name, None)


@pytest.mark.parametrize("k", range(4))
def test_a_worker_killed_at_any_write_of_a_recovery_loses_no_candidate(tmp_path, monkeypatch, k):
    import optimizer.study.worker as worker

    monkeypatch.setattr(worker, "HOST", "this")
    fake, number = study_with_a_dead_trial(tmp_path)
    params = fake.study.trials[number].params
    die_at_write(fake.storage, k)
    try:
        recover_dead_trials(fake)
    except Killed:
        pass
    restore(fake.storage)
    recover_dead_trials(fake)  # the next worker's claim
    recover_dead_trials(fake)  # and the one after: nothing left to do
    trials = fake.study.get_trials(deepcopy=False)
    assert trials[number].state == TrialState.FAIL
    assert "died" in trials[number].user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert len(retries) == 1, f"{len(retries)} retries queued for trial {number}"
    assert retries[0].state == TrialState.WAITING
    assert retries[0].system_attrs["fixed_params"] == params


def test_a_recovery_leaves_a_trial_that_finished_meanwhile_alone(tmp_path, monkeypatch):
    import optimizer.study.worker as worker

    monkeypatch.setattr(worker, "HOST", "this")
    fake, number = study_with_a_dead_trial(tmp_path)
    running = fake.study.get_trials(deepcopy=False)[number]
    fake.study.tell(number, 0.5)  # its worker recorded it after all
    assert not worker.fail_and_retry(fake, running, "its worker process died")
    trials = fake.study.get_trials(deepcopy=False)
    assert trials[number].state == TrialState.COMPLETE and len(trials) == 1
