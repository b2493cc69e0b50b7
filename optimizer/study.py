"""Run, resume and inspect an optimization study.

Data flows one way: the study file is validated, models are loaded once into
a resident model, and each trial is parameters -> merged tensors written in
place -> lm-eval scores -> the study's storage. Any process can be killed at
any moment; running the same command again continues where it stopped.

Any number of workers (processes, GPUs, machines) may run the same study
file against one storage. The read-decide-write steps (stamping the
fingerprint, enqueueing seeds, "is there budget left? then start a trial",
recording a result) happen under the study's lock, so the budget is exact and
seeds are enqueued once; the trial itself runs unlocked, heartbeating.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from optimizer.checkpoint import Checkpoint, check_compatible, identical_weights
from optimizer.errors import ConfigError, MergeoptError
from optimizer.evaluate import Evaluator, TaskObjective
from optimizer.heartbeat import TrialHeartbeat, beat, seconds_since_beat
from optimizer.interrupts import Interrupts
from optimizer.merge_config import MergeConfig
from optimizer.resources import builtin_tasks
from optimizer.search_space import SearchSpace, allowed_methods
from optimizer.storage import mask_url, open_storage
from optimizer.study_config import StudyConfig
from optimizer.study_lock import study_lock
from optimizer.tasks import index_tasks, resolve_task, task_config

HOST = socket.gethostname()
SEEDED = "mergeopt:seeded"
FINGERPRINT = "mergeopt:fingerprint"
MODEL_FILES = "mergeopt:model_files"
HELDOUT = "mergeopt:heldout:"
EXPORTED = "mergeopt:exported"

log = logging.getLogger("mergeopt")

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class CandidateFailed(Exception):
    """One candidate could not be merged or scored: its trial fails, the study goes on.

    ``config_fault``: the failure comes from the study's config, not from this
    candidate's values, so every candidate would fail the same way.
    """

    def __init__(self, why: str, config_fault: bool = False) -> None:
        super().__init__(why)
        self.config_fault = config_fault


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


def objectives_for(cfg: StudyConfig) -> list[TaskObjective]:
    index = index_tasks([builtin_tasks(), *cfg.include_paths])
    out = []
    for t in cfg.tasks:
        folder = cfg.source.parent
        held = task_config(resolve_task(t.heldout, index, folder)) if t.heldout else None
        out.append(
            TaskObjective(
                t.task, task_config(resolve_task(t.task, index, folder)), t.metric, t.weight, held
            )
        )
    return out


def model_files(paths: list[Path]) -> dict[str, list]:
    """Size and mtime of every weight file: a cheap check that models did not change."""
    out = {}
    for p in paths:
        files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
        out[str(p.resolve())] = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return out


def trial_seed(sampler_seed: int, n_trials: int) -> int:
    """The sampler's seed for the study's next trial (``n_trials`` exist already).

    One seed per trial number, not per process: workers sharing a study with
    one seed would draw the very same candidates, and a resumed run draws what
    an uninterrupted one would have.
    """
    digest = hashlib.blake2b(f"{sampler_seed}:{n_trials}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def make_sampler(
    cfg: StudyConfig, space: SearchSpace, seed: int | None = None
) -> optuna.samplers.BaseSampler:
    seed = cfg.sampler_seed if seed is None else seed
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )
    if cfg.sampler == "cmaes":
        if len(space.methods) != 1 or any(p.kind is bool for p in space.searched(space.methods[0])):
            raise ConfigError(
                "sampler cmaes needs one fixed method with only continuous parameters: "
                "set methods: [one method]"
            )
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if cfg.sampler == "gp":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise ConfigError("sampler gp needs scipy: pip install scipy") from None
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def short_labels(labels: list[str]) -> list[str]:
    """Each model's folder name where those are unique (tables stay narrow), else as given."""
    names = [Path(label).name or label for label in labels]
    return names if len(set(names)) == len(names) else list(labels)


def refuse_identical(cfg: StudyConfig, checkpoints: list[Checkpoint]) -> None:
    """No expert may repeat another input's weights: the study would search a
    weight per copy (or a zero task vector, for a copy of the base)."""
    names = [f"base_model ({cfg.raw.get('base_model')})"] + [
        f"expert {label}" for label in cfg.labels
    ]
    for i, j in identical_weights(checkpoints):
        if i == 0:
            raise ConfigError(
                f"{cfg.source}: {names[j]} holds the same weights as the {names[0]}: its "
                "task vector is zero. Remove it from models."
            )
        raise ConfigError(
            f"{cfg.source}: {names[i]} and {names[j]} hold byte-identical weights; list each "
            "expert once"
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunSummary:
    completed: int
    failed_this_run: int
    ran_this_run: int
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


class Study:
    """A study file bound to its storage; ``prepare`` validates everything first."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        self.objectives = objectives_for(cfg)
        # Tasks are built (and metrics checked) before any model is loaded.
        self.evaluator = Evaluator(self.objectives, cfg.limit, cfg.num_fewshot)
        base = Checkpoint(cfg.base_model, cfg.allow_pickle)
        experts = [Checkpoint(p, cfg.allow_pickle) for p in cfg.models]
        check_compatible(base, experts)
        refuse_identical(cfg, [base, *experts])
        if base.config.get("auto_map") and not cfg.trust_remote_code:
            raise ConfigError(
                f"{cfg.base_model} needs its own Python code (auto_map in config.json); "
                "mergeopt runs no remote code unless the study file sets "
                "trust_remote_code: true"
            )
        methods = cfg.methods if cfg.methods is not None else allowed_methods(len(cfg.models))
        self.space = SearchSpace(
            methods,
            len(cfg.models),
            base.num_layers,
            cfg.layer_group_size,
            cfg.filters,
            cfg.search_space,
        )
        self.sampler = make_sampler(cfg, self.space)
        # concurrent first connections would race to create the tables
        with study_lock(cfg.storage, "schema").held():
            self.storage = open_storage(cfg.storage)
        self.directions = ["maximize"] * (len(cfg.tasks) if cfg.multi_objective else 1)
        self.lock = study_lock(cfg.storage, cfg.name)
        with self.lock.held():
            self.study = optuna.create_study(
                study_name=cfg.name,
                storage=self.storage,
                sampler=self.sampler,
                directions=self.directions,
                load_if_exists=True,
            )
            self._check_fingerprint()
        self.merger = None
        # active only inside run(): a signal then stops the worker between writes
        self.interrupts = Interrupts()

    # -- identity ----------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        cfg = self.cfg
        return json.loads(
            json.dumps(
                {
                    "search_space": self.space.describe(),
                    "models": [str(p.resolve()) for p in [cfg.base_model, *cfg.models]],
                    "tasks": [[t.task, t.metric, t.weight, t.heldout] for t in cfg.tasks],
                    "limit": cfg.limit,
                    "num_fewshot": cfg.num_fewshot,
                    "compat": cfg.compat,
                    "seed": cfg.seed,
                    "directions": self.directions,
                }
            )
        )

    def _check_fingerprint(self) -> None:
        attrs = self.study.user_attrs
        mine = self.fingerprint()
        files = model_files([self.cfg.base_model, *self.cfg.models])
        if FINGERPRINT not in attrs:
            self.study.set_user_attr(FINGERPRINT, mine)
            self.study.set_user_attr(MODEL_FILES, files)
            return
        theirs = attrs[FINGERPRINT]
        if theirs != mine:
            parts = [k for k in mine if theirs.get(k) != mine.get(k)]
            raise ConfigError(
                f"study {self.cfg.name!r} in {mask_url(self.cfg.storage)} was created with "
                f"a different {', '.join(parts)}; its trials cannot be mixed with this "
                "config's. Use a new study name, or restore the original settings."
            )
        if attrs.get(MODEL_FILES) != files:
            raise ConfigError(
                f"the model files of study {self.cfg.name!r} changed on disk since it "
                "started (size or modification time differ); scores of old and new "
                "trials would not be comparable. Restore the files or start a new study."
            )

    def check_export_target(self) -> None:
        """Fail now, not after hours of search, if the best merge could not be exported."""
        from optimizer.merge import output_bytes, output_specs
        from optimizer.output_folder import DTYPE_NAMES, check_free_space, check_output

        out = self.cfg.export
        check_output(out, force=True)
        dtype = DTYPE_NAMES.get(self.cfg.dtype) if self.cfg.dtype else None
        check_free_space(out, output_bytes(output_specs(Checkpoint(self.cfg.base_model), dtype)))

    # -- seeds and recovery ------------------------------------------------------

    def enqueue_seeds_once(self) -> int:
        """Seeds go in once per study, however many workers start together.

        Under the lock; a worker killed half-way leaves SEEDED unset and the
        next one adds only the missing seeds (``skip_if_exists``).
        """
        with self.lock.held():
            if self.study.user_attrs.get(SEEDED):
                return 0
            seeds = self.space.seed_trials()
            for label, params in seeds:
                self.study.enqueue_trial(params, user_attrs={"seed": label}, skip_if_exists=True)
            self.study.set_user_attr(SEEDED, True)
            return len(seeds)

    def _count(self, *states: TrialState) -> int:
        return self.storage.get_n_trials(self.study._study_id, states)

    def dead_reason(self, t: FrozenTrial, now: float) -> str | None:
        """Why RUNNING trial ``t`` has no live worker, or None if it may still be alive.

        Called under the lock: a trial is asked for and stamped with its worker
        while the lock is held, so an unstamped one lost its worker right there.
        """
        w = t.user_attrs.get("worker")
        if w is None:
            return "its worker died while starting it"
        if w.get("host") == HOST and w.get("pid") == os.getpid():
            return None
        if w.get("host") == HOST and not pid_alive(int(w.get("pid", 0))):
            return "its worker process died"
        silent = seconds_since_beat(t, now)
        if silent is not None and silent > 3 * self.cfg.heartbeat_interval:
            return f"its worker on {w.get('host')} sent no heartbeat for {silent:.0f} s"
        return None

    def recover_dead_trials(self) -> int:
        """Fail RUNNING trials whose worker is gone and queue their parameters again."""
        recovered = 0
        now = time.time()
        with self.lock.held():
            running = self.storage.get_all_trials(
                self.study._study_id, deepcopy=False, states=(TrialState.RUNNING,)
            )
            for t in running:
                reason = self.dead_reason(t, now)
                if reason is not None:
                    recovered += self._fail_and_retry(t, reason)
        return recovered

    def _fail_and_retry(self, t: FrozenTrial, reason: str) -> bool:
        """Fail RUNNING trial ``t`` and queue its parameters again, exactly once.

        Under the lock. Whichever worker notices first does it; any later one
        (another worker, a second recovery path) finds the trial finished, and
        a retry already queued for it is never queued twice.
        """
        with self.lock.held():
            try:
                self.storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
                if not self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    return False
            except Exception:  # noqa: BLE001 - finished meanwhile by its worker
                return False
            params = t.params or t.system_attrs.get("fixed_params")
            queued = any(
                x.user_attrs.get("retry_of") == t.number
                for x in self.storage.get_all_trials(self.study._study_id, deepcopy=False)
            )
            if params and not queued:
                self.study.enqueue_trial(params, user_attrs={"retry_of": t.number})
            return True

    def _fail_own_running(self, reason: str) -> None:
        """Fail and queue again every RUNNING trial this process claimed (after an
        interrupt, wherever it landed: nothing is left RUNNING that nothing runs)."""
        with self.lock.held():
            for t in self.storage.get_all_trials(
                self.study._study_id, deepcopy=False, states=(TrialState.RUNNING,)
            ):
                w = t.user_attrs.get("worker") or {}
                if w.get("host") == HOST and w.get("pid") == os.getpid():
                    self._fail_and_retry(t, reason)

    # -- trials ------------------------------------------------------------------

    def load_models(self) -> None:
        from optimizer.resident import ResidentMerger

        if self.merger is None:
            cfg = self.cfg
            self.merger = ResidentMerger(
                cfg.base_model,
                cfg.models,
                cfg.device,
                cfg.cache_ranks,
                allow_pickle=cfg.allow_pickle,
                trust_remote_code=cfg.trust_remote_code,
                compile_kernels=cfg.compile_kernels,
            )
            self.evaluator.attach(self.merger.model, self.merger.tokenizer, self.cfg.batch_size)

    def candidate(self, params: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return self.space.candidate_config(
            params,
            str(cfg.base_model.resolve()),
            [str(p.resolve()) for p in cfg.models],
            cfg.compat,
            cfg.seed,
            cfg.dtype,
        )

    def _score_trial(self, trial: optuna.Trial) -> float | list[float]:
        import torch

        start = time.perf_counter()
        cand = self.candidate(trial.params)
        trial.set_user_attr("config", cand)

        def fail(why: str, config_fault: bool = False) -> None:
            trial.set_user_attr("fail_reason", why)
            raise CandidateFailed(why, config_fault)

        log.debug("trial %d materialize", trial.number)
        try:
            merge_config = MergeConfig.from_dict(cand)
            with self.interrupts.interruptible():
                materialize = self.merger.materialize(merge_config)
        except torch.OutOfMemoryError:
            fail("out of memory while materializing the candidate")
        except ConfigError as e:  # the study's own candidate is invalid: every one will be
            fail(f"the study's config gives invalid candidates: {e}", config_fault=True)
        except (MergeoptError, ValueError, RuntimeError) as e:
            fail(f"merge failed: {e}")
        t_eval = time.perf_counter()
        log.debug("trial %d evaluate", trial.number)
        try:
            with self.interrupts.interruptible():
                scores = self.evaluator.score()
        except torch.OutOfMemoryError:
            fail("out of memory while evaluating the candidate")
        except Exception as e:  # noqa: BLE001 - any evaluation error fails only this trial
            fail(f"evaluation failed: {type(e).__name__}: {e}")
        evaluate = time.perf_counter() - t_eval
        trial.set_user_attr("scores", scores)
        trial.set_user_attr(
            "timing",
            {
                "materialize": round(materialize, 4),
                "evaluate": round(evaluate, 4),
                "other": round(time.perf_counter() - start - materialize - evaluate, 4),
            },
        )
        if self.cfg.multi_objective:
            return [scores[t.task] for t in self.cfg.tasks]
        return self.evaluator.combine(scores)

    def counts(self) -> dict[TrialState, int]:
        out = dict.fromkeys(TrialState, 0)
        for t in self.study.get_trials(deepcopy=False):
            out[t.state] += 1
        return out

    def best_trials(self, limit: int = 5) -> list[FrozenTrial]:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return []
        if self.cfg.multi_objective:
            return self.study.best_trials[:limit]
        return sorted(complete, key=lambda t: t.value, reverse=True)[:limit]

    def reference_trials(self) -> list[tuple[str, FrozenTrial]]:
        """The completed seed trials that reproduce the base and each expert alone."""
        names = {
            f"expert {i} alone": label for i, label in enumerate(short_labels(self.cfg.labels))
        }
        names["base"] = "base"
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            label = names.get(t.user_attrs.get("seed", ""))
            if label and label not in [x for x, _ in out]:
                out.append((label, t))
        return out

    def _claim(self, budget: int) -> optuna.Trial | str:
        """Start a trial if the shared budget allows: "done", "wait" or the new trial.

        Counting and asking happen under the lock, so concurrent workers never
        start more trials than ``budget`` minus the completed and running ones.
        The trial is stamped with its worker and its parameters are drawn
        before the lock is released.
        """
        with self.lock.held():
            self.recover_dead_trials()
            done = self._count(TrialState.COMPLETE)
            if done >= budget:
                return "done"
            if done + self._count(TrialState.RUNNING) >= budget:
                return "wait"  # the last trials are running elsewhere
            n = self.storage.get_n_trials(self.study._study_id)
            self.study.sampler = make_sampler(
                self.cfg, self.space, trial_seed(self.cfg.sampler_seed, n)
            )
            trial = self.study.ask()
            trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
            beat(self.storage, trial._trial_id)
            self.space.suggest(trial)
            log.debug("trial %d claimed", trial.number)
            return trial

    def _record(
        self, trial: optuna.Trial, values: float | list[float] | None, budget: int
    ) -> tuple[FrozenTrial | None, bool]:
        """Tell the result; True with it if this result completed the budget."""
        if values is not None and not all(
            math.isfinite(v) for v in (values if isinstance(values, list) else [values])
        ):
            trial.set_user_attr("fail_reason", f"the score is not a finite number: {values}")
            values = None
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        log.debug("trial %d record %s", trial.number, state.name)
        with self.lock.held():
            try:
                frozen = self.study.tell(trial, values, state=state)
                log.debug("trial %d recorded", trial.number)
            except Exception as e:  # noqa: BLE001 - failed meanwhile as dead by a worker
                log.warning("trial %d was finished elsewhere, result dropped: %s", trial.number, e)
                return None, False
            completed_budget = (
                frozen.state == TrialState.COMPLETE and self._count(TrialState.COMPLETE) == budget
            )
        return frozen, completed_budget

    def _run_trial(self, trial: optuna.Trial) -> tuple[float | list[float] | None, bool]:
        """Score one claimed trial; a bad candidate or any error fails only this trial.

        Returns the values (None: failed) and whether a failure is the config's fault.
        """
        with TrialHeartbeat(self.storage, trial._trial_id, self.cfg.heartbeat_interval):
            try:
                return self._score_trial(trial), False
            except CandidateFailed as e:
                return None, e.config_fault
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                raise
            except Exception as e:  # noqa: BLE001 - a bug or an odd candidate: keep going
                log.exception("trial %d failed", trial.number)
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}")
                return None, False

    def run(
        self,
        n_trials: int | None = None,
        timeout: float | None = None,
        on_trial: Callable[[FrozenTrial, dict[TrialState, int]], None] | None = None,
    ) -> RunSummary:
        """Work on the study until its shared budget of completed trials is reached.

        ``timeout`` stops this worker from starting trials after it expires; a
        trial already running finishes and is recorded (as Optuna does).
        """
        budget = n_trials or self.cfg.n_trials
        timeout = timeout or self.cfg.timeout
        deadline = time.monotonic() + timeout if timeout else None
        ran = failed = 0
        summary = RunSummary(0, 0, 0)
        streak = FailureStreak(self.cfg.max_consecutive_failures)
        done_on_arrival = False
        with Interrupts() as self.interrupts:
            try:
                self.enqueue_seeds_once()
                done_on_arrival = self._count(TrialState.COMPLETE) >= budget
                while True:
                    self.interrupts.check()  # a signal that came while recording
                    if deadline is not None and time.monotonic() >= deadline:
                        summary.timed_out = True
                        break
                    if self._count(TrialState.COMPLETE) >= budget:
                        break
                    with self.interrupts.interruptible():
                        self.load_models()
                    if deadline is not None and time.monotonic() >= deadline:
                        summary.timed_out = True  # loading the models used it up
                        break
                    trial = self._claim(budget)
                    if trial == "done":
                        break
                    if trial == "wait":
                        with self.interrupts.interruptible():
                            time.sleep(min(2.0, self.cfg.heartbeat_interval))
                        continue
                    values, config_fault = self._run_trial(trial)
                    frozen, completed_budget = self._record(trial, values, budget)
                    ran += 1
                    summary.finisher = completed_budget
                    if frozen is None:
                        continue
                    failed += frozen.state == TrialState.FAIL
                    if on_trial:
                        on_trial(frozen, self.counts())
                    if streak.add(frozen, config_fault):
                        summary.failing = streak
                        break
                self.interrupts.check()
            except KeyboardInterrupt:
                summary.interrupted = True
                self._fail_own_running("interrupted")
        summary.completed = self._count(TrialState.COMPLETE)
        summary.ran_this_run, summary.failed_this_run = ran, failed
        summary.finisher = summary.finisher or done_on_arrival
        summary.best = self.best_trials()
        return summary

    # -- held-out ----------------------------------------------------------------

    def heldout_scores(self, trial: FrozenTrial) -> dict[str, float] | None:
        return self.study.user_attrs.get(f"{HELDOUT}{trial.number}")

    def score_heldout(self, trials: list[FrozenTrial]) -> None:
        """Score the held-out split for the best trials only (never used for search)."""
        if not any(t.heldout for t in self.cfg.tasks):
            return
        todo = [t for t in trials if self.heldout_scores(t) is None]
        if not todo:
            return
        self.load_models()
        for t in todo:
            self.merger.materialize(MergeConfig.from_dict(t.user_attrs["config"]))
            self.study.set_user_attr(f"{HELDOUT}{t.number}", self.evaluator.score(heldout=True))
