"""The ``hf`` evaluator backend: lm-eval's own ``HFLM`` on the resident model.

Builds tasks and wraps the model once, reusing one HFLM and built tasks.

Building tasks and wrapping the model cost seconds; a trial only changes the
weights in place, so both are made once per study. The request cache stays
off (it keys on the request, not the weights) and so does bootstrapping.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from optimizer.errors import ConfigError
from optimizer.evaluate.base import TaskObjective, weighted_mean

# lm-eval's default few-shot seed (simple_evaluate's fewshot_random_seed)
FEWSHOT_SEED = 1234


def _quiet_hflm() -> type:
    """HFLM without per-call progress bars (lm-eval enables them explicitly)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def _quiet() -> None:
    for name in ("lm_eval", "lm-eval", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _compile_templates_once() -> None:
    """lm-eval compiles a task's Jinja template anew for every document on every
    call (``utils.apply_template``: a few % of a demo trial, docs/benchmarks.md, design measurements); a study
    renders the same few templates every trial, so each is compiled once.
    Rendering is unchanged: same template text, same environment, same output."""
    from lm_eval import utils

    if getattr(utils.apply_template, "compiles_once", False):
        return
    compiled = functools.lru_cache(maxsize=1024)(utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compiled(template).render(**doc)

    apply_template.compiles_once = True
    apply_template.compiled = compiled  # its cache_info() shows the reuse
    utils.apply_template = apply_template


class HarnessEvaluator:
    """Built once per study: tasks are built and checked before any model loads
    (``__init__``), then the resident model is wrapped once (``attach``)."""

    def __init__(
        self,
        objectives: Sequence[TaskObjective],
        limit: int | None = None,
        num_fewshot: int | None = None,
    ) -> None:
        _quiet()
        _compile_templates_once()
        from optimizer.evaluate.tasks import build_tasks, task_metrics

        self.objectives = list(objectives)
        self.limit = limit
        self.search = build_tasks([o.config for o in self.objectives], num_fewshot)
        held = [o.heldout for o in self.objectives if o.heldout is not None]
        self.heldout = build_tasks(held, num_fewshot) if held else None
        for o in self.objectives:
            for tasks, cfg in ((self.search, o.config), (self.heldout, o.heldout)):
                if cfg is None:
                    continue
                task = tasks["tasks"][cfg["task"]]
                metrics = task_metrics(task)
                if o.metric not in metrics:
                    raise ConfigError(
                        f"task {cfg['task']!r} does not produce metric {o.metric!r}; it "
                        f"produces: {', '.join(metrics) or 'none'}"
                    )
                if len(task.eval_docs) == 0:
                    raise ConfigError(
                        f"task {cfg['task']!r} yields no examples: check its data files "
                        "and split names"
                    )
        self.lm: Any = None

    def attach(self, model: Any, tokenizer: Any, batch_size: int = 16) -> HarnessEvaluator:
        self.lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        return self

    def score(self, heldout: bool = False) -> dict[str, float]:
        """Per-task metric values; NaN becomes an error, never a score."""
        from lm_eval.evaluator import evaluate

        tasks = self.heldout if heldout else self.search
        if tasks is None:
            return {}
        for task in tasks["tasks"].values():
            # the same few-shot examples for every trial, as lm-eval's
            # simple_evaluate seeds them per call: unseeded, each call drew others
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        results = evaluate(
            self.lm,
            tasks,
            limit=None if heldout else self.limit,
            cache_requests=False,
            bootstrap_iters=0,
            log_samples=False,
            verbosity="ERROR",
        )["results"]
        scores: dict[str, float] = {}
        for o in self.objectives:
            cfg = o.heldout if heldout else o.config
            if cfg is None:
                continue
            row = results[cfg["task"]]
            key = next((k for k in row if k.split(",")[0] == o.metric), None)
            value = float(row[key]) if key is not None else math.nan
            if not math.isfinite(value):
                raise ValueError(f"task {cfg['task']} gave a non-finite {o.metric}: {value}")
            scores[o.name] = value
        return scores

    def combine(self, scores: Mapping[str, float]) -> float:
        return weighted_mean(self.objectives, scores)
