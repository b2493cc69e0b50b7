"""The worker protocol: claim a trial, score it, record it, recover the dead.

Any number of workers (processes, GPUs, machines) share one study. The
read-decide-write steps (enqueueing seeds, "is there budget left? then start a
trial", recording a result, failing a dead worker's trial) happen under the
study's lock, so the budget is exact, seeds go in once and a dead trial is
queued again once; the trial itself runs unlocked, heartbeating.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimizer.config.merge_config import MergeConfig
from optimizer.errors import ConfigError, MergeoptError
from optimizer.study import _optuna
from optimizer.study.heartbeat import TrialHeartbeat, beat, seconds_since_beat
from optimizer.study.pruning import PRUNED, REPEAT_OF, REUSED_FROM, score_in_chunks
from optimizer.study.samplers import make_sampler, trial_seed
from optimizer.study.stages import REFINES, refined_method, stage_two_sampler

if TYPE_CHECKING:
    from optimizer.study.study import Study

HOST = socket.gethostname()
STARTED = "mergeopt:seeded"  # stored name of "the start points are queued" (kept for old studies)
# sampled repeats in a row before one is taken as a trial with its twin's scores
# (a space this small is used up; the budget still ends the study)
MAX_REPEATS = 10
START = "start"  # user attr naming a start trial: "base", "expert 0 alone", "ties start point"

log = logging.getLogger("mergeopt")


class CandidateFailed(Exception):
    """One candidate could not be merged or scored: its trial fails, the study goes on.

    ``config_fault``: the failure comes from the study's config, not from this
    candidate's values, so every candidate would fail the same way.
    """

    def __init__(self, why: str, config_fault: bool = False) -> None:
        super().__init__(why)
        self.config_fault = config_fault


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mine(t: FrozenTrial) -> bool:
    w = t.user_attrs.get("worker") or {}
    return w.get("host") == HOST and w.get("pid") == os.getpid()


# -- seeds and recovery ----------------------------------------------------------


def start_label(t: FrozenTrial) -> str | None:
    """The start trial ``t`` is ("base", "expert 0 alone", ...), or None; studies
    made before the start points had their name stored it under "seed"."""
    return t.user_attrs.get(START, t.user_attrs.get("seed"))


def is_reference(t: FrozenTrial) -> bool:
    """Whether ``t`` reproduces the base or an expert alone: the references every
    merge is shown beside, so they are always scored whole."""
    label = start_label(t) or ""
    return label == "base" or (label.startswith("expert ") and label.endswith(" alone"))


def enqueue_start_points_once(study: Study) -> int:
    """Start trials go in once per study, however many workers start together.

    Under the lock; a worker killed half-way leaves STARTED unset and the next
    one adds only the missing ones (``skip_if_exists``).
    """
    with study.lock.held():
        if study.study.user_attrs.get(STARTED):
            return 0
        starts = study.space.start_trials()
        for label, params in starts:
            study.study.enqueue_trial(params, user_attrs={START: label}, skip_if_exists=True)
        study.study.set_user_attr(STARTED, True)
        return len(starts)


def dead_reason(study: Study, t: FrozenTrial, now: float) -> str | None:
    """Why RUNNING trial ``t`` has no live worker, or None if it may still be alive.

    Called under the lock: a trial is asked for and stamped with its worker
    while the lock is held, so an unstamped one lost its worker right there.
    """
    w = t.user_attrs.get("worker")
    if w is None:
        return "its worker died while starting it"
    if mine(t):
        return None
    if w.get("host") == HOST and not pid_alive(int(w.get("pid", 0))):
        return "its worker process died"
    silent = seconds_since_beat(t, now)
    if silent is not None and silent > 3 * study.cfg.heartbeat_interval:
        return f"its worker on {w.get('host')} sent no heartbeat for {silent:.0f} s"
    return None


def recover_dead_trials(study: Study) -> int:
    """Fail RUNNING trials whose worker is gone and queue their parameters again."""
    recovered = 0
    now = time.time()
    with study.lock.held():
        for t in _optuna.trials(study.storage, study.study, (TrialState.RUNNING,)):
            reason = dead_reason(study, t, now)
            if reason is not None:
                recovered += fail_and_retry(study, t, reason)
    return recovered


def fail_and_retry(study: Study, t: FrozenTrial, reason: str) -> bool:
    """Fail RUNNING trial ``t`` and queue its parameters again, exactly once.

    Under the lock. Whichever worker notices first does it; any later one
    (another worker, a second recovery path) finds the trial finished, and a
    retry already queued for it is never queued twice. The retry is queued
    before the trial is failed: a worker killed between the two writes leaves
    the trial RUNNING with its retry waiting, and the next recovery only fails
    it. The other order lost the candidate (failed, never queued again, and no
    longer RUNNING for any recovery to find).
    """
    storage = study.storage
    with study.lock.held():
        if storage.get_trial(_optuna.trial_id(t)).state != TrialState.RUNNING:
            return False  # finished meanwhile (by its worker, or recovered already)
        params = t.params or _optuna.enqueued_params(t)
        queued = any(
            x.user_attrs.get("retry_of") == t.number for x in _optuna.trials(storage, study.study)
        )
        if params and not queued:
            label = start_label(t)  # a retried start trial is still that reference
            attrs = {"retry_of": t.number, **({START: label} if label else {})}
            study.study.enqueue_trial(params, user_attrs=attrs)
        try:
            storage.set_trial_user_attr(_optuna.trial_id(t), "fail_reason", reason)
            return storage.set_trial_state_values(_optuna.trial_id(t), TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished meanwhile by its worker
            return False


def fail_own_running(study: Study, reason: str) -> None:
    """Fail and queue again every RUNNING trial this process claimed (after an
    interrupt, wherever it landed: nothing is left RUNNING that nothing runs)."""
    with study.lock.held():
        for t in _optuna.trials(study.storage, study.study, (TrialState.RUNNING,)):
            if mine(t):
                fail_and_retry(study, t, reason)


# -- one trial -----------------------------------------------------------------


def claim(study: Study, budget: int) -> optuna.Trial | str:
    """Start a trial if the shared budget allows: "done", "wait" or the new trial.

    Counting and asking happen under the lock, so concurrent workers never
    start more trials than ``budget`` minus the completed and running ones.
    The trial is stamped with its worker and its parameters are drawn before
    the lock is released. A sampled merge that was already scored is not a
    trial (``search.repeats: resample``): it is stored as a pruned repeat, not
    counted in the budget, and the sampler is asked again.
    """
    cfg = study.cfg
    with study.lock.held():
        recover_dead_trials(study)
        done = study.count(TrialState.COMPLETE)
        if done >= budget:
            return "done"
        if done + study.count(TrialState.RUNNING) >= budget:
            return "wait"  # the last trials are running elsewhere
        refining = refined_method(study, done)
        resample = cfg.search.repeats == "resample"
        for tries in range(MAX_REPEATS + 1):
            trial = _ask(study, refining)
            twin = sampled_repeat(study, trial) if resample and tries < MAX_REPEATS else None
            if twin is None:
                break
            log.debug("trial %d repeats trial %d: asking again", trial.number, twin.number)
            trial.set_user_attr(REPEAT_OF, twin.number)
            study.study.tell(trial, state=TrialState.PRUNED)
        log.debug("trial %d claimed", trial.number)
        return trial


def _ask(study: Study, refining: str | None) -> optuna.Trial:
    """A new trial from the study's sampler (seeded by the trial's number), its
    parameters drawn, stamped with this worker."""
    n = _optuna.count(study.storage, study.study)
    sampler = make_sampler(study.cfg.sampler, trial_seed(study.cfg.sampler_seed, n))
    if refining is not None:
        sampler = stage_two_sampler(refining, sampler)
    study.study.sampler = sampler
    trial = study.study.ask()
    trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
    beat(study.storage, _optuna.trial_id(trial))
    (study.space if refining is None else study.refined).suggest(trial)
    return trial


def sampled_repeat(study: Study, trial: optuna.Trial) -> FrozenTrial | None:
    """The completed trial whose merge a sampled ``trial`` repeats, or None.

    Told with the twin's value, a repeat teaches the sampler nothing and pulls
    it further to the same point (TPE kept drawing Model Stock, which has
    nothing to search, once it led); told pruned, it counts against that
    point. Queued trials (start points, retries, a refined best) are never
    repeats: they are asked for on purpose.
    """
    if _optuna.enqueued_params(study.storage.get_trial(_optuna.trial_id(trial))):
        return None
    try:
        config = study.candidate(trial.params)
    except (MergeoptError, ValueError, KeyError):
        return None  # an invalid candidate fails as a trial, with its reason
    return completed_twin(study, config)


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def completed_twin(study: Study, config: dict) -> FrozenTrial | None:
    """A completed trial whose stored merge config (method, values, seed) is
    ``config``: the merge would give the same bytes, so its scores stand
    without materializing or evaluating again (Model Stock has no parameter
    to search, so each of its trials is one)."""
    key = _canonical(json.loads(json.dumps(config)))  # as the storage gives it back
    for t in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        stored = t.user_attrs.get("config")
        if stored is not None and "scores" in t.user_attrs and _canonical(stored) == key:
            return t
    return None


def score_trial(study: Study, trial: optuna.Trial) -> float | list[float]:
    """Materialize the trial's candidate into the resident model and score it."""
    import torch

    start = time.perf_counter()
    cand = study.candidate(trial.params)
    trial.set_user_attr("config", cand)
    twin = completed_twin(study, cand)
    if twin is None and REFINES in trial.user_attrs:  # the best trial's merge, in finer groups
        twin = study.study.get_trials(deepcopy=False)[trial.user_attrs[REFINES]]
    if twin is not None:  # the same merge: the same bytes, the same scores
        log.debug("trial %d reuses trial %d", trial.number, twin.number)
        return reuse(study, trial, twin)

    def fail(why: str, config_fault: bool = False) -> None:
        trial.set_user_attr("fail_reason", why)
        raise CandidateFailed(why, config_fault)

    log.debug("trial %d materialize", trial.number)
    try:
        candidate = study.merger.resolve(MergeConfig.from_dict(cand))
        with study.interrupts.interruptible():
            materialize = study.merger.materialize(candidate)
    except torch.OutOfMemoryError:
        fail("out of memory while materializing the candidate")
    except ConfigError as e:  # the study's own candidate is invalid: every one will be
        fail(f"the study's config gives invalid candidates: {e}", config_fault=True)
    except (MergeoptError, ValueError, RuntimeError) as e:
        fail(f"merge failed: {e}")
    t_eval = time.perf_counter()
    log.debug("trial %d evaluate", trial.number)
    try:
        scores, pruned_value = evaluate(study, trial)
    except torch.OutOfMemoryError:
        fail("out of memory while evaluating the candidate")
    except Exception as e:  # noqa: BLE001 - any evaluation error fails only this trial
        fail(f"evaluation failed: {type(e).__name__}: {e}")
    evaluate_s = time.perf_counter() - t_eval
    trial.set_user_attr("scores", scores)
    set_constraints(study, trial, scores)
    trial.set_user_attr(
        "timing",
        {
            "materialize": round(materialize, 4),
            "evaluate": round(evaluate_s, 4),
            "other": round(time.perf_counter() - start - materialize - evaluate_s, 4),
        },
    )
    if pruned_value is not None:
        return pruned_value
    if study.cfg.multi_objective:
        return [scores[t.task] for t in study.cfg.tasks]
    return study.evaluator.combine(scores)


def evaluate(study: Study, trial: optuna.Trial) -> tuple[dict[str, float], float | None]:
    """The candidate's per-task scores, and if it was pruned the value it is
    told: its partial mean, or with ``pruned_value: paired`` its paired estimate.

    Without a pruner every item is scored at once. With one, the items go in
    the study's fixed order a chunk at a time, reported to Optuna; a reference
    (the base, an expert alone) is never pruned, a method's start point may be.
    """
    if study.plan is None:
        with study.interrupts.interruptible():
            return study.evaluator.score(), None
    result = score_in_chunks(
        study.evaluator,
        study.plan,
        study.objectives,
        trial,
        study.cfg.pruner.name,
        may_prune=not is_reference(trial),
        interruptible=study.interrupts.interruptible,
        paired=study.cfg.pruner.pruned_value == "paired",
    )
    if not result.pruned:
        return result.scores, None
    log.debug("trial %d pruned after %d of %d items", trial.number, result.items, result.of)
    pruned = {"items": result.items, "of": result.of}
    if result.estimate is not None:
        trial.set_user_attr(PRUNED, {**pruned, "partial_mean": result.value})
        return result.scores, result.estimate
    trial.set_user_attr(PRUNED, pruned)
    return result.scores, result.value


def set_constraints(study: Study, trial: optuna.Trial, scores: dict[str, float]) -> None:
    """Store the trial's violation of each of the study's constraints (Optuna's
    ``set_constraint``) before it is told, so its sampler sees them."""
    constraints = study.cfg.constraints
    if not constraints:
        return
    base = None
    if any(c.of_base for c in constraints):
        base = study.base_scores(scores if start_label(trial) == "base" else None)
    for c in constraints:
        trial.set_constraint(c.text, c.violation(scores, base))


def reuse(study: Study, trial: optuna.Trial, twin: FrozenTrial) -> float | list[float]:
    """Take a completed twin's scores, value, pruned mark and constraints. Not
    the item values it reported: a pruner compares with the twin itself (a
    reused trial is never its reference), and copying them cost one storage
    write per item, about as long as the twin's merge took to materialize."""
    trial.set_user_attr(REUSED_FROM, twin.number)
    trial.set_user_attr("scores", twin.user_attrs["scores"])
    if PRUNED in twin.user_attrs:
        trial.set_user_attr(PRUNED, twin.user_attrs[PRUNED])
    for text, violation in twin.constraints.items():
        trial.set_constraint(text, violation)
    return twin.values if study.cfg.multi_objective else twin.value


def run_trial(study: Study, trial: optuna.Trial) -> tuple[float | list[float] | None, bool]:
    """Score one claimed trial; a bad candidate or any error fails only this trial.

    Returns the values (None: failed) and whether a failure is the config's fault.
    """
    interval = study.cfg.heartbeat_interval
    with TrialHeartbeat(study.storage, _optuna.trial_id(trial), interval):
        try:
            return score_trial(study, trial), False
        except CandidateFailed as e:
            return None, e.config_fault
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except Exception as e:  # noqa: BLE001 - a bug or an odd candidate: keep going
            log.exception("trial %d failed", trial.number)
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
            return None, False


def record(
    study: Study, trial: optuna.Trial, values: float | list[float] | None, budget: int
) -> tuple[FrozenTrial | None, bool]:
    """Tell the result; True with it if this result completed the budget."""
    if values is not None and not all(
        math.isfinite(v) for v in (values if isinstance(values, list) else [values])
    ):
        trial.set_user_attr("fail_reason", f"the score is not a finite number: {values}")
        values = None
    state = TrialState.COMPLETE if values is not None else TrialState.FAIL
    log.debug("trial %d record %s", trial.number, state.name)
    with study.lock.held():
        try:
            frozen = study.study.tell(trial, values, state=state)
            log.debug("trial %d recorded", trial.number)
        except Exception as e:  # noqa: BLE001 - failed meanwhile as dead by a worker
            log.warning("trial %d was finished elsewhere, result dropped: %s", trial.number, e)
            return None, False
        completed_budget = (
            frozen.state == TrialState.COMPLETE and study.count(TrialState.COMPLETE) == budget
        )
    return frozen, completed_budget
