"""Find and build lm-eval tasks from local YAML files, offline.

Tasks stay data (lm-eval YAML). Two things lm-eval does not do for us: data
files named relative to the YAML are resolved against the YAML's folder (lm-eval
resolves them against the working directory), and tasks are looked up only in
our include paths, never in lm-eval's thousands of built-in tasks (indexing
them takes seconds: docs/benchmarks.md, design measurements).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from optimizer.errors import ConfigError, suggest


def _load_yaml(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        return load_yaml(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's YAML
        raise ConfigError(f"cannot read task file {path}: {e}") from None


def index_tasks(include_paths: Iterable[Path]) -> dict[str, Path]:
    """Task name -> YAML file, for every task YAML under the include paths."""
    found: dict[str, Path] = {}
    for root in include_paths:
        if not root.is_dir():
            raise ConfigError(f"task include path not found: {root}")
        for path in sorted(root.rglob("*.yaml")):
            try:
                head = yaml.safe_load(path.read_text().split("\n---")[0]) or {}
            except Exception:  # noqa: BLE001 - !function tags etc.: full loader below
                head = _load_yaml(path)
            name = head.get("task") if isinstance(head, dict) else None
            if isinstance(name, str):
                found.setdefault(name, path)
    return found


def _absolute(value: Any, folder: Path) -> Any:
    if isinstance(value, str):
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (folder / p).resolve())
    if isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, folder) for k, v in value.items()}
    return value


def task_config(path: Path) -> dict[str, Any]:
    """The task's config with local data paths made absolute and checked."""
    cfg = _load_yaml(path)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        kwargs["data_files"] = _absolute(kwargs["data_files"], path.parent)
        files = kwargs["data_files"]
        flat = (
            [files]
            if isinstance(files, str)
            else files
            if isinstance(files, list)
            else [f for v in files.values() for f in (v if isinstance(v, list) else [v])]
        )
        missing = [f for f in flat if not Path(f).is_file()]
        if missing:
            raise ConfigError(
                f"task {cfg.get('task')!r} ({path}): data file(s) not found: {missing}"
            )
        empty = [f for f in flat if not Path(f).read_bytes().strip()]
        if empty:
            raise ConfigError(
                f"task {cfg.get('task')!r} ({path}) yields no examples: data file(s) "
                f"{empty} are empty"
            )
        cfg["dataset_kwargs"] = kwargs
    return cfg


def resolve_task(spec: str, index: dict[str, Path], folder: Path | None = None) -> Path:
    """A task given by name (looked up in the index) or as a path to its YAML
    (relative paths are taken from ``folder``, the study file's, when given)."""
    if spec.endswith((".yaml", ".yml")):
        path = Path(spec).expanduser()
        if not path.is_absolute() and folder is not None:
            path = folder / path
        if not path.is_file():
            raise ConfigError(f"task file not found: {spec}")
        return path
    if spec not in index:
        raise ConfigError(
            f"unknown task {spec!r}.{suggest(spec, index)} Tasks found in the include "
            f"paths: {', '.join(sorted(index)) or 'none'}. Add the folder holding its "
            "YAML to objective.include_paths."
        )
    return index[spec]


def build_tasks(configs: Sequence[dict[str, Any]], num_fewshot: int | None) -> dict[str, Any]:
    """Build lm-eval Task objects once; they are reused for every trial."""
    from optimizer.runtime import setup_process

    setup_process()  # offline: before lm-eval imports datasets
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False)
    try:
        loaded = manager.load(list(configs))
    except Exception as e:  # noqa: BLE001 - datasets/lm-eval errors, named and explained
        names = ", ".join(repr(c.get("task")) for c in configs)
        raise ConfigError(
            f"lm-eval could not build task(s) {names}: {type(e).__name__}: {e}. Check the "
            "task YAML (splits, fields, templates) and its data files."
        ) from None
    for task in loaded["tasks"].values():
        if num_fewshot is not None:
            task.set_config(key="num_fewshot", value=num_fewshot)
    return loaded


def task_metrics(task: Any) -> list[str]:
    return [m["metric"] if isinstance(m, dict) else str(m) for m in task.config.metric_list or []]
