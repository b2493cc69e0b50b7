"""Optuna studies: wiring and queries (``study``), the worker protocol
(``worker``), the run loop (``loop``), the search space, samplers, storage,
locks, heartbeats and interrupts.

The public surface is ``Study`` (and ``RunSummary``); it is imported on first
use, so that the config layer can read the sampler table without pulling in
the whole study.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunSummary", "Study"]


def __getattr__(name: str) -> Any:
    if name == "Study":
        from optimizer.study.study import Study

        return Study
    if name == "RunSummary":
        from optimizer.study.loop import RunSummary

        return RunSummary
    raise AttributeError(name)
