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
from optimizer.evaluate.base import Item, ItemScore, TaskObjective, weighted_mean

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


def _metric_key(row: Mapping[str, Any], metric: str) -> str | None:
    """The key of ``metric`` in a task's results row ("acc,none": metric, filter)."""
    return next((k for k in row if k.split(",")[0] == metric), None)


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


def graded(sample: Mapping[str, Any], metric: str, value: float) -> float:
    """The probability the model gives a multiple-choice item's right answer
    among its choices, from the log-likelihoods lm-eval logged, ranked as the
    metric ranks them (``acc_norm``: per character of the choice, as lm-eval
    does); ``value`` for any other item or metric."""
    target, resps = sample.get("target"), sample.get("filtered_resps")
    if metric not in ("acc", "acc_norm") or not isinstance(target, int):
        return value
    try:
        lls = [float(r[0]) for r in resps]
        if metric == "acc_norm":
            lls = [
                ll / max(len(arg[1]), 1) for ll, arg in zip(lls, sample["arguments"], strict=True)
            ]
    except (TypeError, IndexError, KeyError, ValueError):
        return value
    if not 0 <= target < len(lls) or not all(math.isfinite(x) for x in lls):
        return value
    top = max(lls)
    return math.exp(lls[target] - top) / math.fsum(math.exp(x - top) for x in lls)


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
        self._requests: dict[str, dict[int, list[Any]]] | None = None

    def attach(self, model: Any, tokenizer: Any, batch_size: int | str = 16) -> HarnessEvaluator:
        # "auto": HFLM's own search, from its max_batch_size down on out-of-memory
        self.lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        return self

    def _evaluate(self, tasks: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        from lm_eval.evaluator import evaluate

        for task in tasks["tasks"].values():
            # the same few-shot examples for every trial, as lm-eval's
            # simple_evaluate seeds them per call: unseeded, each call drew others
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        return evaluate(
            self.lm,
            tasks,
            cache_requests=False,
            bootstrap_iters=0,
            verbosity="ERROR",
            **kwargs,
        )

    def score(self, heldout: bool = False) -> dict[str, float]:
        """Per-task metric values; NaN becomes an error, never a score."""
        tasks = self.heldout if heldout else self.search
        if tasks is None:
            return {}
        results = self._evaluate(tasks, limit=None if heldout else self.limit, log_samples=False)[
            "results"
        ]
        scores: dict[str, float] = {}
        for o in self.objectives:
            cfg = o.heldout if heldout else o.config
            if cfg is None:
                continue
            key = _metric_key(results[cfg["task"]], o.metric)
            value = float(results[cfg["task"]][key]) if key is not None else math.nan
            if not math.isfinite(value):
                raise ValueError(f"task {cfg['task']} gave a non-finite {o.metric}: {value}")
            scores[o.name] = value
        return scores

    def items(self) -> list[Item]:
        out: list[Item] = []
        for o in self.objectives:
            task = self.search["tasks"][o.config["task"]]
            how = task.aggregation().get(o.metric)
            if getattr(how, "__name__", None) != "mean":
                raise ConfigError(
                    f"objective.pruner scores a few items at a time, so each task's metric "
                    f"must be a mean over its items; task {o.config['task']!r} aggregates "
                    f"{o.metric} with {getattr(how, '__name__', how)!r}. Use pruner: none "
                    "for this study."
                )
            n = len(task.eval_docs)
            out += [(o.name, i) for i in range(min(n, self.limit or n))]
        return out

    def _prepared(self) -> dict[str, dict[int, list[Any]]]:
        """Every search item's lm-eval requests (``Instance``s, by task and document),
        built once: they hold the prompts, never the weights, and building them
        (lm-eval walks each task's whole dataset to pick the documents) was a
        cost of every chunk when each chunk built its own. Built in one
        pass over each task's first documents, as ``score`` builds them, so an
        item gets the same prompt (few-shot examples included) in any chunk."""
        if self._requests is None:
            self._requests = {}
            for name, docs in self._items_by_task(self.items()).items():
                task = self.search["tasks"][self._task_of(name)]
                task.set_fewshot_seed(seed=FEWSHOT_SEED)
                chosen = sorted(docs)
                task.build_all_requests(samples=chosen, cache_requests=False)
                by_doc: dict[int, list[Any]] = {}
                for inst in task.instances:  # doc_id: the position among ``chosen``
                    by_doc.setdefault(chosen[inst.doc_id], []).append(inst)
                for group in by_doc.values():
                    group.sort(key=lambda inst: inst.idx)
                self._requests[name] = by_doc
        return self._requests

    def _task_of(self, name: str) -> str:
        return next(o.config["task"] for o in self.objectives if o.name == name)

    @staticmethod
    def _items_by_task(items: Sequence[Item]) -> dict[str, list[int]]:
        wanted: dict[str, list[int]] = {}
        for name, doc in items:
            wanted.setdefault(name, []).append(doc)
        return wanted

    def score_items(self, items: Sequence[Item]) -> list[ItemScore]:
        """The chosen items' requests (built once, ``_prepared``) through the LM,
        then lm-eval's own filters and ``process_results`` per document: what
        ``evaluate`` does with them, for these documents only."""
        prepared = self._prepared()
        wanted = self._items_by_task(items)
        by_type: dict[str, list[Any]] = {}
        for name, docs in wanted.items():
            for doc in docs:
                for inst in prepared[name][doc]:
                    inst.resps, inst.filtered_resps = [], {}
                    by_type.setdefault(inst.request_type, []).extend([inst] * inst.repeats)
        for request_type, requests in by_type.items():
            for inst, resp in zip(requests, getattr(self.lm, request_type)(requests), strict=True):
                inst.resps.append(resp)
        values: dict[Item, ItemScore] = {}
        by_name = {o.name: o for o in self.objectives}
        for name, docs in wanted.items():
            o, task = by_name[name], self.search["tasks"][self._task_of(name)]
            groups = [prepared[name][doc] for doc in docs]
            for ensemble in task._filters:
                ensemble.apply([inst for group in groups for inst in group])
            chosen = task._filters[0].name  # the first filter's row, as ``score`` reads
            for doc, group in zip(docs, groups, strict=True):
                resps = [inst.filtered_resps[chosen] for inst in group]
                value = float(task.process_results(group[0].doc, resps)[o.metric])
                if not math.isfinite(value):
                    raise ValueError(
                        f"task {o.config['task']} gave a non-finite {o.metric} on document "
                        f"{doc}: {value}"
                    )
                sample = {
                    "target": task.doc_to_target(group[0].doc),
                    "filtered_resps": resps,
                    "arguments": [inst.args for inst in group],
                }
                values[(name, doc)] = ItemScore(value, graded(sample, o.metric, value))
        return [values[item] for item in items]

    def combine(self, scores: Mapping[str, float]) -> float:
        return weighted_mean(self.objectives, scores)
