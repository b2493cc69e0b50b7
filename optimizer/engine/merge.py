"""One-shot merges: model folders in, a model folder out, tensor by tensor.

Only one tensor of each model is in memory at a time, so peak memory stays
near (models + 1) × the largest tensor whatever the model size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from methods import MethodSpec, TensorContext
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.apply import launch_plans, plan_tensor, worth_compiling_once
from optimizer.engine.candidate import Candidate
from optimizer.errors import ConfigError, ModelError
from optimizer.io.checkpoint import Checkpoint, check_compatible, identical_weights
from optimizer.io.model_card import write_model_card
from optimizer.io.output_folder import (
    check_free_space,
    check_output,
    copy_support_files,
    staged_folder,
    write_config,
)
from optimizer.io.safetensors_writer import ShardedWriter
from optimizer.ui.progress import tensor_progress

DEFAULT_SHARD_BYTES = 5 * 1024**3


def work_dtype(stored: torch.dtype) -> torch.dtype:
    """Merges are computed in float32, or float64 for float64 checkpoints."""
    return torch.float64 if stored == torch.float64 else torch.float32


def merge_tensor(
    method: MethodSpec,
    name: str,
    reference: torch.Tensor,
    experts: Sequence[torch.Tensor],
    params: Mapping[str, Any],
    compat: str,
    seed: int,
    device: torch.device | str = "cpu",
    compile: str = "auto",
    merge_entries: int | None = None,
) -> torch.Tensor:
    """The merged tensor in the working dtype; NaN or inf is an error.

    ``compile``: "auto" compiles a kernel only where one launch per tensor
    repays it (``worth_compiling_once``, given the whole merge's task-vector
    entries ``merge_entries``, by default this tensor's), "always" or "never"
    (the same bytes either way).
    """
    wd = work_dtype(reference.dtype)
    base = reference.to(device=device, dtype=wd)
    # Checkpoint.get returns fresh tensors: experts become task vectors in place.
    deltas = [x.to(device=device, dtype=wd).sub_(base) for x in experts]
    ctx = TensorContext(name, compat, seed)
    plan = plan_tensor(method, base, deltas, params, ctx)
    if merge_entries is None:
        merge_entries = base.numel() * len(deltas)
    wanted = compile == "always" or (
        compile == "auto" and worth_compiling_once(plan, merge_entries)
    )
    launch_plans([plan], base.device.type == "cpu" and wanted, method)
    return plan.result


def output_bytes(specs: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> int:
    """Bytes the written weights take, plus 1 MiB for headers, config and tokenizer."""
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in specs.values())
    return total + 2**20


def output_specs(
    reference: Checkpoint, out_dtype: torch.dtype | None
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and stored dtype of every output tensor (floats cast to ``out_dtype``)."""
    specs = {}
    for name, info in reference.tensors.items():
        dtype = out_dtype if (out_dtype and info.dtype.is_floating_point) else info.dtype
        specs[name] = (info.shape, dtype)
    return specs


@dataclass
class MergeResult:
    out: Path
    tensors: int
    shards: int
    seconds: float


def open_models(cfg: MergeConfig, allow_pickle: bool) -> tuple[Checkpoint, list[Checkpoint]]:
    """Open and cross-check every model named in the config (headers only)."""
    opened: dict[Path, Checkpoint] = {}

    def get(path: Path) -> Checkpoint:
        key = path.resolve() if path.exists() else path
        if key not in opened:
            opened[key] = Checkpoint(path, allow_pickle=allow_pickle)
        return opened[key]

    reference = get(cfg.reference.path)
    experts = [get(m.path) for m in cfg.experts]
    if cfg.base is not None:
        get(cfg.base.path)
    check_compatible(reference, experts)
    return reference, experts


def repeated_inputs(
    cfg: MergeConfig, reference: Checkpoint, experts: list[Checkpoint]
) -> list[str]:
    """A line for each pair of inputs with the same weights (mergekit merges them
    as given, and so does this; a study refuses them)."""
    refs = [cfg.reference, *cfg.experts]
    role = "the input" if cfg.reference_is_input else "the base"
    lines = []
    for i, j in identical_weights([reference, *experts]):
        a, b = refs[i], refs[j]
        what = (
            "are the same folder"
            if a.path.resolve() == b.path.resolve()
            else ("hold byte-identical weights")
        )
        first = f"{role} {a.label}" if i == 0 else f"model {a.label}"
        lines.append(
            f"{first} and model {b.label} {what}: "
            + (
                "its task vector is zero"
                if i == 0 and not cfg.reference_is_input
                else "it counts twice"
            )
        )
    return lines


def run_merge(
    cfg: MergeConfig,
    out: str | Path,
    force: bool = False,
    device: str = "cpu",
    allow_pickle: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    show_progress: bool = False,
    warn: Callable[[str], None] = lambda line: None,
    compile: str = "auto",
) -> MergeResult:
    """Merge as ``cfg`` says into the folder ``out``; ``warn`` hears of inputs that
    are allowed but probably not meant (the same model twice)."""
    start = time.perf_counter()
    out = Path(out)
    check_output(out, force)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    reference, experts = open_models(cfg, allow_pickle)
    for line in repeated_inputs(cfg, reference, experts):
        warn(line)
    tokenizer_source = cfg.tokenizer_source or reference.path
    if not tokenizer_source.is_dir():
        raise ModelError(f"tokenizer_source folder not found: {tokenizer_source}")
    candidate = Candidate.resolve(cfg, reference.tensors, reference.num_layers)

    out_dtype = cfg.output_dtype
    specs = output_specs(reference, out_dtype)
    float_dtypes = [
        info.dtype for info in reference.tensors.values() if info.dtype.is_floating_point
    ]
    config_dtype = out_dtype or (float_dtypes[0] if float_dtypes else torch.float32)
    check_free_space(out, output_bytes(specs))
    merge_entries = len(experts) * sum(
        math.prod(info.shape) for info in reference.tensors.values() if info.dtype.is_floating_point
    )

    with staged_folder(out, force) as folder:
        writer = ShardedWriter(folder, specs, max_shard_bytes)
        with tensor_progress(len(writer.order), show_progress, "merging") as advance:
            for name in writer.order:
                ref_t = reference.get(name)
                if ref_t.dtype.is_floating_point:
                    merged = merge_tensor(
                        cfg.method,
                        name,
                        ref_t,
                        [e.get(name) for e in experts],
                        candidate.values[name],
                        cfg.compat,
                        cfg.seed,
                        device,
                        compile,
                        merge_entries,
                    )
                else:
                    merged = ref_t
                writer.write(name, merged.to(specs[name][1]))
                advance()
        writer.close()
        write_config(reference.config, config_dtype, folder)
        copy_support_files(tokenizer_source, reference.path, folder)
        write_model_card(
            folder,
            method=cfg.method.name,
            summary=cfg.method.summary,
            compat=cfg.compat,
            base=cfg.base.label if cfg.base else None,
            models=[
                (m.label, m.parameters)
                for m in ([cfg.reference] if cfg.reference_is_input else []) + cfg.experts
            ],
            parameters=cfg.parameters,
            config={**cfg.raw, "seed": cfg.seed},
        )
    return MergeResult(out, len(writer.order), len(writer.shards), time.perf_counter() - start)
