"""The study file: what to merge, what to search, how to score, where to store.

Everything is validated before a model is loaded, with the key at fault named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from methods import COMPAT_MODES
from optimizer.errors import ConfigError, suggest
from optimizer.merge_config import read_yaml, resolve_model_path
from optimizer.output_folder import DTYPE_NAMES

TOP_KEYS = (
    "study",
    "storage",
    "base_model",
    "models",
    "methods",
    "search_space",
    "granularity",
    "objective",
    "sampler",
    "n_trials",
    "timeout",
    "device",
    "dtype",
    "compat",
    "seed",
    "export",
    "heartbeat_interval",
    "cache_ranks",
    "compile_kernels",
    "allow_pickle",
    "trust_remote_code",
)
OBJECTIVE_KEYS = (
    "tasks",
    "include_paths",
    "num_fewshot",
    "batch_size",
    "limit",
    "multi_objective",
)
TASK_KEYS = ("task", "metric", "weight", "heldout")
SAMPLERS = ("tpe", "cmaes", "nsga2", "gp", "random")
GRANULARITY_KEYS = ("layer_group_size", "filters")


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
    batch_size: int
    limit: int | None
    multi_objective: bool
    sampler: str
    sampler_seed: int
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
    # fuse each candidate's elementwise math with torch.compile on the CPU
    compile_kernels: bool = True
    # unpickling and a model's own Python code can run anything: off unless asked
    allow_pickle: bool = False
    trust_remote_code: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path, storage: str | None = None) -> StudyConfig:
        path = Path(path)
        return cls.from_dict(read_yaml(path, "study file"), path, storage)

    @classmethod
    def from_dict(cls, raw: Any, source: Path, storage: str | None = None) -> StudyConfig:
        where = str(source)
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{where}: expected a mapping (study, base_model, models, objective, ...)"
            )
        _check_keys(raw, TOP_KEYS, where)
        folder = source.parent

        def need(key: str) -> Any:
            if raw.get(key) is None:
                raise ConfigError(f"{where}: '{key}' is required")
            return raw[key]

        name = str(need("study"))
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(
                f"{where}: study name {name!r} may use letters, digits, '_', '.', '-'"
            )
        base = resolve_model_path(str(need("base_model")), folder)
        entries = need("models")
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{where}: 'models' must list the expert model folders")
        models, labels = [], []
        for i, e in enumerate(entries):
            if isinstance(e, Mapping):
                _check_keys(e, ("model",), f"{where}: models[{i}]")
                e = e.get("model")
            if not isinstance(e, str):
                raise ConfigError(f"{where}: models[{i}] must be a model folder path")
            models.append(resolve_model_path(e, folder))
            labels.append(e)

        methods = raw.get("methods")
        if methods is not None and (
            not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)
        ):
            raise ConfigError(f"{where}: 'methods' must be a list of method names")
        space = raw.get("search_space") or {}
        if not isinstance(space, Mapping):
            raise ConfigError(f"{where}: 'search_space' maps METHOD.PARAMETER to a range or value")

        gran = raw.get("granularity") or {}
        if not isinstance(gran, Mapping):
            raise ConfigError(f"{where}: 'granularity' must be a mapping")
        _check_keys(gran, GRANULARITY_KEYS, f"{where}: granularity")
        group = _int(gran.get("layer_group_size", 0), f"{where}: granularity.layer_group_size", 0)
        filters = gran.get("filters") or []
        if not isinstance(filters, list) or not all(isinstance(f, str) and f for f in filters):
            raise ConfigError(
                f"{where}: granularity.filters must be substrings like self_attn, mlp"
            )

        obj = need("objective")
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{where}: 'objective' must be a mapping with 'tasks'")
        _check_keys(obj, OBJECTIVE_KEYS, f"{where}: objective")
        task_entries = obj.get("tasks")
        if not isinstance(task_entries, list) or not task_entries:
            raise ConfigError(f"{where}: objective.tasks must list at least one task")
        tasks = []
        for i, t in enumerate(task_entries):
            if isinstance(t, str):
                t = {"task": t}
            if not isinstance(t, Mapping) or "task" not in t:
                raise ConfigError(f"{where}: objective.tasks[{i}] needs a 'task'")
            _check_keys(t, TASK_KEYS, f"{where}: objective.tasks[{i}]")
            weight = t.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"{where}: objective.tasks[{i}].weight must be a positive number")
            tasks.append(
                TaskSpec(
                    str(t["task"]), str(t.get("metric", "acc")), float(weight), t.get("heldout")
                )
            )
        includes = [
            p if p.is_absolute() else (folder / p)
            for p in (Path(x).expanduser() for x in (obj.get("include_paths") or []))
        ]
        limit = obj.get("limit")
        if limit is not None:
            limit = _int(limit, f"{where}: objective.limit", 1)

        sampler = raw.get("sampler", "tpe")
        sampler_seed = int(raw.get("seed", 0))
        if isinstance(sampler, Mapping):
            _check_keys(sampler, ("name", "seed"), f"{where}: sampler")
            sampler_seed = int(sampler.get("seed", sampler_seed))
            sampler = sampler.get("name", "tpe")
        if sampler not in SAMPLERS:
            raise ConfigError(
                f"{where}: unknown sampler {sampler!r}.{suggest(str(sampler), SAMPLERS)} "
                f"Use one of {', '.join(SAMPLERS)}"
            )
        multi = bool(obj.get("multi_objective", False))
        if multi and sampler in ("cmaes", "gp"):
            raise ConfigError(f"{where}: sampler {sampler} handles one objective; use nsga2 or tpe")

        n_trials = _int(need("n_trials"), f"{where}: n_trials", 1)
        timeout = raw.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError(f"{where}: timeout must be a positive number of seconds")
        compat = raw.get("compat", "paper")
        if compat not in COMPAT_MODES:
            raise ConfigError(f"{where}: compat must be one of {', '.join(COMPAT_MODES)}")
        dtype = raw.get("dtype", "float32")
        if dtype not in DTYPE_NAMES:
            raise ConfigError(f"{where}: dtype must be float32, float16 or bfloat16")
        device = str(raw.get("device", "auto"))
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError(f"{where}: device must be auto, cpu or cuda")
        export = Path(raw.get("export") or f"{name}-best")
        export = export if export.is_absolute() else folder / export
        url = storage or raw.get("storage") or f"sqlite:///{(folder / (name + '.db')).resolve()}"
        return cls(
            name=name,
            source=source,
            base_model=base,
            models=models,
            labels=labels,
            methods=methods,
            search_space=dict(space),
            layer_group_size=group,
            filters=list(filters),
            tasks=tasks,
            include_paths=includes,
            num_fewshot=obj.get("num_fewshot"),
            batch_size=_int(obj.get("batch_size", 16), f"{where}: objective.batch_size", 1),
            limit=limit,
            multi_objective=multi,
            sampler=sampler,
            sampler_seed=sampler_seed,
            n_trials=n_trials,
            timeout=float(timeout) if timeout is not None else None,
            device=device,
            dtype=dtype,
            compat=compat,
            seed=int(raw.get("seed", 0)),
            export=export,
            storage=str(url),
            heartbeat_interval=_int(
                raw.get("heartbeat_interval", 10), f"{where}: heartbeat_interval", 1
            ),
            cache_ranks=bool(raw.get("cache_ranks", True)),
            compile_kernels=bool(raw.get("compile_kernels", True)),
            allow_pickle=raw.get("allow_pickle", False) is True,
            trust_remote_code=raw.get("trust_remote_code", False) is True,
            raw=dict(raw),
        )


def _check_keys(mapping: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r}.{suggest(str(key), known)} Known keys: {', '.join(known)}"
            )


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value
