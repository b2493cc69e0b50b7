"""The study file: what to merge, what to search, how to score, where to store.

Everything is validated before a model is loaded, with the key at fault named.
The keys, their types and defaults are declared once, in the tables below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from methods import COMPAT_MODES
from optimizer.config.merge_config import read_yaml, resolve_model_path
from optimizer.config.schema import REQUIRED, Key, at_least, one_of, positive, read_section
from optimizer.engine.footprint import TIERS
from optimizer.errors import ConfigError
from optimizer.evaluate import BACKENDS
from optimizer.io.output_folder import DTYPE_NAMES
from optimizer.study.constraints import Constraint
from optimizer.study.constraints import parse as parse_constraints
from optimizer.study.pruning import PRUNED_VALUES, PRUNERS, SPENDING, PrunerSpec
from optimizer.study.samplers import SAMPLERS
from optimizer.study.stages import REPEATS, STRATEGIES, SearchSpec


def _study_name(name: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return None
    return f"{name!r} may use letters, digits, '_', '.', '-'"


def _device(device: str) -> str | None:
    if device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device):
        return None
    return f"must be auto, cpu, cuda or cuda:N, got {device!r}"


def _batch_size(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value == "auto" else f"must be a number of rows or auto, got {value!r}"
    return at_least(1)(value)


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be above 0 and at most 1"


def _probability(value: float) -> str | None:
    return None if 0 < value < 1 else f"must be between 0 and 1, got {value!r}"


STUDY_KEYS = (
    Key("study", ("str",), REQUIRED, "the study's name in its storage", _study_name),
    Key("storage", ("str",), None, "storage URL (default: sqlite:///STUDY.db beside the file)"),
    Key("base_model", ("str",), REQUIRED, "folder of the model the experts were tuned from"),
    Key("models", ("list",), REQUIRED, "the expert model folders"),
    Key("methods", ("strings",), None, "merge methods to search (default: all that fit)"),
    Key("search_space", ("mapping",), None, "METHOD.PARAMETER: range or fixed value"),
    Key("granularity", ("mapping",), None, "layer_group_size and filters"),
    Key("objective", ("mapping",), REQUIRED, "tasks and how to score them"),
    Key("sampler", ("str", "mapping"), "tpe", "tpe | cmaes | nsga2 | gp | random, or {name, seed}"),
    Key(
        "search",
        ("str", "mapping"),
        "joint",
        "joint | staged, or {strategy, method_share, refine_layer_group_size}",
    ),
    Key("n_trials", ("int",), REQUIRED, "completed trials for the whole study", at_least(1)),
    Key("timeout", ("number",), None, "seconds after which this worker starts no trial", positive),
    Key("device", ("str",), "auto", "auto | cpu | cuda | cuda:N", _device),
    Key(
        "dtype",
        ("str",),
        "auto",
        "dtype of exported merges: auto (eval_dtype's: the bytes that were scored) or a dtype",
        one_of(("auto", *DTYPE_NAMES)),
    ),
    Key(
        "eval_dtype",
        ("str",),
        "auto",
        "dtype the scored model is held in: auto (the base's stored dtype) or a dtype",
        one_of(("auto", *DTYPE_NAMES)),
    ),
    Key("compat", ("str",), "paper", "paper | mergekit numerics", one_of(COMPAT_MODES)),
    Key("seed", ("int",), 0, "seed of random masks (and the sampler's by default)"),
    Key(
        "export", ("str",), None, "folder for the best merge (default: STUDY-best beside the file)"
    ),
    Key("heartbeat_interval", ("int",), 10, "seconds between a trial's heartbeats", at_least(1)),
    Key(
        "max_consecutive_failures",
        ("int",),
        5,
        "a worker stops after this many failed trials in a row",
        at_least(1),
    ),
    Key("cache_ranks", ("bool",), True, "keep row ranks / magnitude orders between trials"),
    Key(
        "residency",
        ("str",),
        "auto",
        "where base and experts wait between candidates: auto (first that fits) | device "
        "| host (host memory, streamed per tensor) | disk (reread from the files)",
        one_of(("auto", *TIERS)),
    ),
    Key("compile_kernels", ("bool",), True, "fuse each candidate's math with torch.compile"),
    Key("allow_pickle", ("bool",), False, "allow .bin/.pt checkpoints (unpickling runs code)"),
    Key("trust_remote_code", ("bool",), False, "allow models that ship their own code"),
)
OBJECTIVE_KEYS = (
    Key("tasks", ("list",), REQUIRED, "the scored tasks"),
    Key("include_paths", ("strings",), None, "folders with task YAMLs (eval_tasks/ is built in)"),
    Key("num_fewshot", ("int",), None, "few-shot examples per prompt", at_least(0)),
    Key(
        "batch_size",
        ("int", "str"),
        16,
        "rows per forward pass, or auto (from free memory)",
        _batch_size,
    ),
    Key("limit", ("int",), None, "examples per task per trial", at_least(1)),
    Key("multi_objective", ("bool",), False, "one objective per task (Pareto front)"),
    Key(
        "backend",
        ("str",),
        "fast",
        "the evaluator backend: fast (each context once) or hf (lm-eval's HFLM)",
        one_of(tuple(BACKENDS)),
    ),
    Key(
        "pruner",
        ("str", "mapping"),
        "none",
        "none | wilcoxon | hyperband, or {name, chunk, ...}: stop plainly worse trials early",
    ),
    Key(
        "constraints",
        ("list",),
        None,
        "floors a merge must meet: TASK >= 0.9, or TASK >= 0.95 x base",
    ),
)
PRUNER_KEYS = (
    Key("name", ("str",), "none", "the pruner", one_of(PRUNERS)),
    Key("chunk", ("int",), 32, "items scored between two pruning decisions", at_least(1)),
    Key(
        "p_threshold",
        ("number",),
        None,
        f"wilcoxon: prune below this p-value (default {PrunerSpec.p_threshold})",
        _probability,
    ),
    Key(
        "spending",
        ("str",),
        None,
        "wilcoxon: none (p_threshold at each look) or pocock (spent over the looks) "
        f"(default {PrunerSpec.spending})",
        one_of(SPENDING),
    ),
    Key(
        "pruned_value",
        ("str",),
        None,
        "wilcoxon: a pruned trial's value, partial (the mean of the items seen) or paired "
        f"(an estimate against the best) (default {PrunerSpec.pruned_value})",
        one_of(PRUNED_VALUES),
    ),
    Key(
        "min_items",
        ("int",),
        None,
        "hyperband: items of the first rung (default: chunk)",
        at_least(1),
    ),
    Key(
        "reduction_factor",
        ("int",),
        None,
        f"hyperband: 1 in this many goes on (default {PrunerSpec.reduction_factor})",
        at_least(2),
    ),
)
# the pruner each of those keys belongs to
PRUNER_OWN_KEYS = {
    "p_threshold": "wilcoxon",
    "spending": "wilcoxon",
    "pruned_value": "wilcoxon",
    "min_items": "hyperband",
    "reduction_factor": "hyperband",
}
TASK_KEYS = (
    Key("task", ("str",), REQUIRED, "task name or YAML path"),
    Key("metric", ("str",), "acc", "the metric scored"),
    Key("weight", ("number",), 1.0, "weight in the objective's mean", positive),
    Key("heldout", ("str",), None, "task scored only for the best trials"),
)
GRANULARITY_KEYS = (
    Key("layer_group_size", ("int",), 0, "layers per searched value (0: one for all)", at_least(0)),
    Key("filters", ("strings",), None, "tensor-name substrings searched apart (self_attn, mlp)"),
)
SAMPLER_KEYS = (
    Key("name", ("str",), "tpe", "the sampler", one_of(tuple(SAMPLERS))),
    Key("seed", ("int",), None, "the sampler's seed (default: the study's seed)"),
)
SEARCH_KEYS = (
    Key(
        "strategy",
        ("str",),
        "joint",
        "joint: every trial over every method; staged: methods, then the best one per layer group",
        one_of(STRATEGIES),
    ),
    Key(
        "method_share",
        ("number",),
        0.5,
        "staged: share of n_trials spent choosing the method",
        _share,
    ),
    Key(
        "refine_layer_group_size",
        ("int",),
        0,
        "staged: layers per value in stage two (0: a third of the layers)",
        at_least(0),
    ),
    Key(
        "repeats",
        ("str",),
        "resample",
        "a sampled merge already scored. resample: ask again (a repeat, not counted in "
        "n_trials); reuse: a trial with its scores",
        one_of(REPEATS),
    ),
)
MODEL_KEYS = (Key("model", ("str",), REQUIRED, "model folder"),)


@dataclass(frozen=True)
class TaskSpec:
    task: str
    metric: str = "acc"
    weight: float = 1.0
    heldout: str | None = None


@dataclass
class StudyConfig:
    name: str
    source: Path
    base_model: Path
    models: list[Path]
    labels: list[str]
    methods: list[str] | None
    search_space: dict[str, Any]
    layer_group_size: int
    filters: list[str]
    tasks: list[TaskSpec]
    include_paths: list[Path]
    num_fewshot: int | None
    batch_size: int | str
    limit: int | None
    multi_objective: bool
    sampler: str
    sampler_seed: int
    search: SearchSpec
    n_trials: int
    timeout: float | None
    device: str
    dtype: str
    compat: str
    seed: int
    export: Path
    storage: str
    heartbeat_interval: int
    cache_ranks: bool
    max_consecutive_failures: int = 5
    backend: str = "fast"  # the evaluator backend (optimizer.evaluate.BACKENDS)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    # floors (and ceilings) on task scores; a trial breaking one is never the best
    constraints: list[Constraint] = field(default_factory=list)
    # fuse each candidate's elementwise math with torch.compile on the CPU
    compile_kernels: bool = True
    # unpickling and a model's own Python code can run anything: off unless asked
    allow_pickle: bool = False
    trust_remote_code: bool = False
    # the scored model's dtype: "auto" is the base's stored dtype
    eval_dtype: str = "auto"
    # the tier base and experts are held in (optimizer.engine.holding); same bytes in each
    residency: str = "auto"
    raw: dict[str, Any] = field(default_factory=dict)
    # what was adjusted in the user's config, said once when a run starts
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path, storage: str | None = None) -> StudyConfig:
        path = Path(path)
        return cls.from_dict(read_yaml(path, "study file"), path, storage)

    @classmethod
    def from_dict(cls, raw: Any, source: Path, storage: str | None = None) -> StudyConfig:
        where = str(source)
        top = read_section(raw, STUDY_KEYS, where, "study, base_model, models, objective, ...")
        folder = source.parent
        name = top["study"]
        base = resolve_model_path(top["base_model"], folder)
        if not top["models"]:
            raise ConfigError(f"{where}: 'models' must list the expert model folders")
        models, labels, notes = [], [], []
        seen: dict[Path, tuple[int, str]] = {}
        for i, e in enumerate(top["models"]):
            if isinstance(e, Mapping):
                e = read_section(e, MODEL_KEYS, f"{where}: models[{i}]")["model"]
            if not isinstance(e, str):
                raise ConfigError(f"{where}: models[{i}] must be a model folder path")
            path = resolve_model_path(e, folder)
            if _same_folder(path, base):
                # as in a one-shot merge: task vectors start at the base, which adds none
                notes.append(f"models[{i}] ({e}) is the base model; it is left out of the experts")
                continue
            if _key(path) in seen:
                j, first = seen[_key(path)]
                raise ConfigError(
                    f"{where}: models[{j}] ({first}) and models[{i}] ({e}) are the same "
                    "model folder; list each expert once"
                )
            seen[_key(path)] = (i, e)
            models.append(path)
            labels.append(e)
        if not models:
            raise ConfigError(f"{where}: 'models' lists no expert besides the base model")

        gran = read_section(top["granularity"] or {}, GRANULARITY_KEYS, f"{where}: granularity")
        obj = read_section(top["objective"], OBJECTIVE_KEYS, f"{where}: objective", "with 'tasks'")
        if not obj["tasks"]:
            raise ConfigError(f"{where}: objective.tasks must list at least one task")
        tasks = []
        for i, t in enumerate(obj["tasks"]):
            t = read_section(
                {"task": t} if isinstance(t, str) else t,
                TASK_KEYS,
                f"{where}: objective.tasks[{i}]",
                "task, metric, weight, heldout",
            )
            tasks.append(TaskSpec(t["task"], t["metric"], float(t["weight"]), t["heldout"]))
        includes = [
            p if p.is_absolute() else (folder / p)
            for p in (Path(x).expanduser() for x in (obj["include_paths"] or []))
        ]

        sampler = top["sampler"]
        if isinstance(sampler, str):
            sampler = {"name": sampler}
        sampler = read_section(sampler, SAMPLER_KEYS, f"{where}: sampler")
        sampler_seed = top["seed"] if sampler["seed"] is None else sampler["seed"]
        multi = obj["multi_objective"]
        if multi and not SAMPLERS[sampler["name"]].multi_objective:
            raise ConfigError(
                f"{where}: sampler {sampler['name']} handles one objective; use nsga2 or tpe"
            )
        search = _search(top["search"], sampler["name"], multi, f"{where}: search")
        pruner = _pruner(obj["pruner"], f"{where}: objective.pruner")
        if pruner.active and multi:
            raise ConfigError(
                f"{where}: objective.pruner {pruner.name} compares one objective value; a "
                "multi_objective study cannot prune. Set pruner: none or drop multi_objective."
            )
        constraints = parse_constraints(
            obj["constraints"], [t.task for t in tasks], f"{where}: objective.constraints"
        )
        timeout = top["timeout"]
        export = Path(top["export"] or f"{name}-best").expanduser()
        export = export if export.is_absolute() else folder / export
        url = storage or top["storage"] or f"sqlite:///{(folder / (name + '.db')).resolve()}"
        return cls(
            name=name,
            source=source,
            base_model=base,
            models=models,
            labels=labels,
            methods=top["methods"],
            search_space=dict(top["search_space"] or {}),
            layer_group_size=gran["layer_group_size"],
            filters=list(gran["filters"] or []),
            tasks=tasks,
            include_paths=includes,
            num_fewshot=obj["num_fewshot"],
            batch_size=obj["batch_size"],
            limit=obj["limit"],
            multi_objective=multi,
            backend=obj["backend"],
            pruner=pruner,
            constraints=constraints,
            sampler=sampler["name"],
            sampler_seed=sampler_seed,
            search=search,
            n_trials=top["n_trials"],
            timeout=float(timeout) if timeout is not None else None,
            device=top["device"],
            dtype=top["dtype"],
            compat=top["compat"],
            seed=top["seed"],
            export=export,
            storage=str(url),
            heartbeat_interval=top["heartbeat_interval"],
            max_consecutive_failures=top["max_consecutive_failures"],
            cache_ranks=top["cache_ranks"],
            compile_kernels=top["compile_kernels"],
            allow_pickle=top["allow_pickle"],
            trust_remote_code=top["trust_remote_code"],
            eval_dtype=top["eval_dtype"],
            residency=top["residency"],
            raw=dict(raw),
            notes=notes,
        )


def _search(raw: Any, sampler: str, multi: bool, where: str) -> SearchSpec:
    """``search: staged`` or ``search: {strategy: staged, method_share: 0.4}``."""
    section = read_section({"strategy": raw} if isinstance(raw, str) else raw, SEARCH_KEYS, where)
    spec = SearchSpec(**section)
    if spec.staged and multi:
        raise ConfigError(
            f"{where}: a staged search refines the best trial's method; a multi_objective "
            "study has a front of best trials, not one. Use search: joint."
        )
    if spec.staged and SAMPLERS[sampler].fixed_parameters:
        raise ConfigError(
            f"{where}: a staged search asks for other parameters in its second stage; "
            f"sampler {sampler} needs the same ones in every trial. Use sampler: tpe."
        )
    return spec


def _pruner(raw: Any, where: str) -> PrunerSpec:
    """``pruner: wilcoxon`` or ``pruner: {name: wilcoxon, chunk: 16}``; a key of
    another pruner (``reduction_factor`` with wilcoxon) is named, not ignored."""
    section = read_section({"name": raw} if isinstance(raw, str) else raw, PRUNER_KEYS, where)
    for key, owner in PRUNER_OWN_KEYS.items():
        if section[key] is not None and section["name"] != owner:
            raise ConfigError(
                f"{where}: {key} applies to the {owner} pruner, not {section['name']!r}"
            )
    given = {k: v for k, v in section.items() if v is not None}
    return PrunerSpec(**given)


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


def _same_folder(a: Path, b: Path) -> bool:
    return _key(a) == _key(b)
