"""A study file bound to its storage: wiring, identity and queries.

Data flows one way: the study file is validated, models are loaded once into
a resident model, and each trial is parameters -> merged tensors written in
place -> scores -> the study's storage. Any process can be killed at any
moment; running the same command again continues where it stopped.

This module wires the parts together and answers questions about the study;
the worker protocol (claim, score, record, recover) is ``worker``, the run
loop and the finishing steps are ``loop``, as Optuna keeps its ``Study`` apart
from ``_optimize`` and ``_tell``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from methods.registry import CacheKind
from optimizer.config.merge_config import MergeConfig
from optimizer.config.study_config import StudyConfig
from optimizer.engine.footprint import (
    Footprint,
    cache_kinds,
    dtype_name,
    of_models,
    plan_residency,
    stored_dtype,
)
from optimizer.errors import ConfigError
from optimizer.evaluate import TaskObjective, make_evaluator
from optimizer.evaluate.tasks import index_tasks, resolve_task, task_config
from optimizer.io.checkpoint import Checkpoint, check_compatible, identical_weights
from optimizer.io.resources import builtin_tasks
from optimizer.study import _optuna, loop
from optimizer.study.constraints import feasible, shortfall
from optimizer.study.interrupts import Interrupts
from optimizer.study.lock import study_lock
from optimizer.study.pruning import (
    PRUNED,
    REPEAT_OF,
    ItemPlan,
    make_pruner,
    score_every_item,
    scored_whole,
)
from optimizer.study.samplers import check_sampler, make_sampler
from optimizer.study.search_space import SearchSpace, allowed_methods
from optimizer.study.stages import refined_space
from optimizer.study.storage import mask_url, open_storage
from optimizer.study.worker import start_label

if TYPE_CHECKING:
    import torch

FINGERPRINT = "mergeopt:fingerprint"
MODEL_FILES = "mergeopt:model_files"
HELDOUT = "mergeopt:heldout:"
BASE_SCORES = "mergeopt:base_scores"  # the base's search scores, for "x base" constraints

log = logging.getLogger("mergeopt")


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


class Study:
    """A study file bound to its storage; everything is validated before storing anything."""

    def __init__(self, cfg: StudyConfig, connect: bool = True) -> None:
        """``connect=False``: validated, its storage left alone (``mergeopt plan``)."""
        _optuna.quiet()
        self.cfg = cfg
        self.objectives = objectives_for(cfg)
        # Tasks are built (and metrics checked) before any model is loaded.
        self.evaluator = make_evaluator(cfg.backend, self.objectives, cfg.limit, cfg.num_fewshot)
        # a pruning study scores the same items in the same order in every trial
        self.plan = (
            ItemPlan.build(self.evaluator.items(), self.objectives, cfg.seed, cfg.pruner.chunk)
            if cfg.pruner.active
            else None
        )
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
        check_sampler(cfg.sampler, self.space)
        # a staged search's second stage: the same methods, finer layer groups
        self.refined = (
            refined_space(self.space, cfg.search, base.num_layers) if cfg.search.staged else None
        )
        self.merger = None
        # active only inside a run: a signal then stops the worker between writes
        self.interrupts = Interrupts()
        if not connect:
            return
        # concurrent first connections would race to create the tables
        with study_lock(cfg.storage, "schema").held():
            self.storage = open_storage(cfg.storage)
        self.directions = ["maximize"] * (len(cfg.tasks) if cfg.multi_objective else 1)
        self.lock = study_lock(cfg.storage, cfg.name)
        with self.lock.held():
            self.study = optuna.create_study(
                study_name=cfg.name,
                storage=self.storage,
                sampler=make_sampler(cfg.sampler, cfg.sampler_seed),
                pruner=make_pruner(cfg.pruner, len(self.plan.order) if self.plan else 1),
                directions=self.directions,
                load_if_exists=True,
            )
            self._check_fingerprint()

    # -- identity ----------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        cfg = self.cfg
        # a pruned trial's value is a partial mean: not to be mixed with a study
        # that scored every item (absent when off, as in studies made before it)
        pruner = {"pruner": cfg.pruner.describe()} if cfg.pruner.active else {}
        # each trial stored its violations of these: they cannot change midway
        constraints = {"constraints": [c.text for c in cfg.constraints]} if cfg.constraints else {}
        # a staged study's trials ask for other parameters after stage one
        search = {"search": cfg.search.describe()} if cfg.search.staged else {}
        # scores in another dtype are other numbers (absent for float32, as before it)
        scored = dtype_name(self.scored_dtype())
        scored = {"eval_dtype": scored} if scored != "float32" else {}
        return json.loads(
            json.dumps(
                {
                    **pruner,
                    **constraints,
                    **search,
                    **scored,
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
            parts = [k for k in {**mine, **theirs} if theirs.get(k) != mine.get(k)]
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
        from optimizer.engine.merge import output_bytes, output_specs
        from optimizer.io.output_folder import DTYPE_NAMES, check_free_space, check_output

        out = self.cfg.export
        check_output(out, force=True)
        dtype = DTYPE_NAMES[self.export_dtype()]
        check_free_space(out, output_bytes(output_specs(Checkpoint(self.cfg.base_model), dtype)))

    # -- the engine ----------------------------------------------------------------

    def load_models(self) -> None:
        from optimizer.engine.resident import ResidentMerger

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
                caches=self.cache_kinds(),
                eval_dtype=self.scored_dtype(),
                residency=cfg.residency,
            )
            for note in self.merger.notes:
                log.warning("note: %s", note)
            self.evaluator.attach(self.merger.model, self.merger.tokenizer, self.cfg.batch_size)

    def cache_kinds(self) -> tuple[CacheKind, ...]:
        """The per-study caches this study's methods fill (either stage's)."""
        methods = list(self.space.methods) + (self.refined.methods if self.refined else [])
        return cache_kinds(methods, self.cfg.compat)

    def footprint(self) -> Footprint:
        """What loading the models will hold, from their headers (read in moments)."""
        cfg = self.cfg
        return of_models(
            Checkpoint(cfg.base_model, cfg.allow_pickle),
            [Checkpoint(p, cfg.allow_pickle) for p in cfg.models],
            self.cache_kinds() if cfg.cache_ranks else (),
            self.scored_dtype(),
        )

    def residency(self) -> tuple[Footprint, list[str]]:
        """The tier the models will be held in and what it holds where, with
        notes on what was left out; raises when nothing fits (before loading)."""
        import torch

        from optimizer.engine.resident import pick_device
        from optimizer.evaluate.memory import free_bytes

        device = pick_device(self.cfg.device)
        free_host = free_bytes(torch.device("cpu"))
        return plan_residency(
            self.footprint(), self.cfg.residency, device, free_bytes(device), free_host
        )

    def export_dtype(self) -> str:
        """The dtype name merges are exported in (``dtype``; auto: the dtype
        candidates are scored in, so the export is the very bytes that were
        scored: float32 for float32 checkpoints, as before, bfloat16 for
        bfloat16 ones unless ``eval_dtype`` says otherwise)."""
        return self.cfg.dtype if self.cfg.dtype != "auto" else dtype_name(self.scored_dtype())

    def scored_dtype(self) -> torch.dtype:
        """The dtype candidates are scored in (``eval_dtype``; auto: the base's)."""
        from optimizer.io.output_folder import DTYPE_NAMES

        if self.cfg.eval_dtype != "auto":
            return DTYPE_NAMES[self.cfg.eval_dtype]
        return stored_dtype(Checkpoint(self.cfg.base_model, self.cfg.allow_pickle))

    def candidate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The merge config (stored with the trial) that a trial's parameters describe."""
        cfg = self.cfg
        space = self.space
        if self.refined is not None and not space.fits(params):
            space = self.refined  # a trial of a staged search's second stage
        return space.candidate_config(
            params,
            str(cfg.base_model.resolve()),
            [str(p.resolve()) for p in cfg.models],
            cfg.compat,
            cfg.seed,
            self.export_dtype(),
        )

    # -- running -------------------------------------------------------------------

    def run(
        self,
        n_trials: int | None = None,
        timeout: float | None = None,
        on_trial: loop.OnTrial | None = None,
    ) -> loop.RunSummary:
        """Work on the study until its shared budget is reached (see ``loop.run``)."""
        return loop.run(self, n_trials, timeout, on_trial)

    def finish(self, summary: loop.RunSummary, export: bool, say: Callable[[str], None]):
        """Held-out scores of the best trials, then the export (see ``loop.finish``)."""
        return loop.finish(self, summary, export, say)

    # -- queries -------------------------------------------------------------------

    def count(self, *states: TrialState) -> int:
        """Trials in any of ``states``, read from the storage (not a cached view)."""
        return _optuna.count(self.storage, self.study, states)

    def counts(self) -> dict[TrialState, int]:
        out = dict.fromkeys(TrialState, 0)
        for t in self.study.get_trials(deepcopy=False):
            out[t.state] += 1
        return out

    def pruned(self) -> list[FrozenTrial]:
        """Completed trials stopped early: their values are partial means."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [t for t in complete if PRUNED in t.user_attrs]

    def repeats(self) -> list[FrozenTrial]:
        """Sampled merges already scored, asked again instead (never scored)."""
        pruned = self.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        return [t for t in pruned if REPEAT_OF in t.user_attrs]

    def best_trials(self, limit: int = 5) -> list[FrozenTrial]:
        """The best trials scored on every item (a pruned one never is), those
        that meet the study's constraints first, then the closest misses."""
        complete = scored_whole(self.study)
        if not complete:
            return []

        if self.cfg.multi_objective:  # never pruned (the config refuses it)
            # Optuna's Pareto front holds only trials that meet the constraints
            front = self.study.best_trials
            return (front or sorted(complete, key=shortfall))[:limit]
        return sorted(complete, key=lambda t: (feasible(t), -shortfall(t), t.value), reverse=True)[
            :limit
        ]

    def base_scores(self, fallback: dict[str, float] | None = None) -> dict[str, float]:
        """The base model's search scores, for constraints relative to it: from
        the completed base start trial, or ``fallback`` (the base trial's own
        scores), or scored here once (a worker that got ahead of the one
        scoring the base) and kept with the study."""
        stored = self.study.user_attrs.get(BASE_SCORES)
        if stored is not None:
            return stored
        scores = fallback
        if scores is None:
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if start_label(t) == "base" and PRUNED not in t.user_attrs:
                    scores = t.user_attrs.get("scores")
                    break
        if scores is None:
            self.load_models()
            self.merger.restore_base()
            scores = score_every_item(self.evaluator, self.plan, self.objectives)
        self.study.set_user_attr(BASE_SCORES, scores)
        return scores

    def reference_trials(self) -> list[tuple[str, FrozenTrial]]:
        """The completed start trials that reproduce the base and each expert alone."""
        names = {
            f"expert {i} alone": label for i, label in enumerate(short_labels(self.cfg.labels))
        }
        names["base"] = "base"
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            label = names.get(start_label(t) or "")
            if label and label not in [x for x, _ in out]:
                out.append((label, t))
        return out

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
