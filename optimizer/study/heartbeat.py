"""Heartbeats of running trials, stored with the trial itself.

Any worker, on any machine, can then tell a trial whose worker vanished
(SIGKILL, pre-emption, a lost machine) from one that is merely slow, on every
storage: SQLite, PostgreSQL, MySQL and journal files alike. Optuna's own
heartbeats exist for RDB storages only.
"""

from __future__ import annotations

import contextlib
import threading
import time

import optuna

from optimizer.study import _optuna

HEARTBEAT = "mergeopt:heartbeat"


def beat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    _optuna.set_system_attr(storage, trial_id, HEARTBEAT, time.time())


def seconds_since_beat(trial: optuna.trial.FrozenTrial, now: float | None = None) -> float | None:
    last = _optuna.system_attr(trial, HEARTBEAT)
    if last is None:
        return None
    return (now or time.time()) - float(last)


class TrialHeartbeat:
    """A daemon thread that stamps one trial every ``interval`` seconds while it runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float):
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mergeopt-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            # the trial may have been finished elsewhere; the worker learns it at tell()
            with contextlib.suppress(Exception):
                beat(self.storage, self.trial_id)

    def __enter__(self) -> TrialHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
