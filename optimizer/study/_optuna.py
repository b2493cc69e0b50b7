"""The few Optuna internals mergeopt relies on, in one place.

Optuna's public API has no "count the trials in these states" or "the
storage's id of this trial"; the worker protocol needs both, straight from
the storage (under the study's lock, never from a cached view). An Optuna
upgrade that renames them breaks this module alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def quiet() -> None:
    """Optuna's per-trial info lines and experimental-feature warnings off (the CLI
    prints its own line per trial)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def count(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    states: Sequence[TrialState] | None = None,
) -> int:
    """Trials in ``states`` (all trials when None), read from the storage itself.

    A database counts them (``SELECT count``): Optuna's ``get_n_trials`` loads
    every trial with all its reported values to count them, which costs
    seconds per call in a pruning study (a value per item per trial), and the
    worker counts several times per trial."""
    if isinstance(storage, optuna.storages.RDBStorage):
        return _rdb_count(storage, study_id(study), states)
    return storage.get_n_trials(study_id(study), None if states is None else tuple(states))


def _rdb_count(
    storage: optuna.storages.RDBStorage, study_id_: int, states: Sequence[TrialState] | None
) -> int:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy import func

    with _create_scoped_session(storage.scoped_session) as session:
        query = session.query(func.count(models.TrialModel.trial_id)).filter(
            models.TrialModel.study_id == study_id_
        )
        if states is not None:
            query = query.filter(models.TrialModel.state.in_(tuple(states)))
        return int(query.scalar())


def trials(
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    states: Sequence[TrialState] | None = None,
) -> list[FrozenTrial]:
    return storage.get_all_trials(
        study_id(study), deepcopy=False, states=None if states is None else tuple(states)
    )


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters a trial was queued with (empty for a sampled trial)."""
    return system_attr(trial, "fixed_params") or {}


def system_attr(trial: FrozenTrial, key: str) -> Any:
    return trial.system_attrs.get(key)


def set_system_attr(
    storage: optuna.storages.BaseStorage, trial_id_: int, key: str, value: Any
) -> None:
    """An attribute users do not see (Optuna's own kind), written to the storage."""
    storage.set_trial_system_attr(trial_id_, key, value)
