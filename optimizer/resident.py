"""The resident model: every candidate is written into one loaded model in place.

Models are read once. What does not change between trials is kept: the base
tensors and each expert's task vector in float32 on the compute device and,
filled on first use by the methods that need them, each task vector's row
ranks (DELLA, paper-mode Breadcrumbs) and its sorted magnitudes (TIES,
mergekit-mode Breadcrumbs: a trial's thresholds become lookups instead of a
selection over the tensor), each half a model per expert, plus small per-tensor
values (Model Stock's ratios, SLERP's angle). A candidate is then one fused
elementwise pass per tensor written straight into the model's parameters: no
disk, no re-instantiation, no temporaries. Memory: (experts + 2) models, plus
0.5 per expert for each of the two caches once used (``cache_ranks: false``
trades them for a selection or sort per trial).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from methods import TensorContext
from methods.magnitudes import SortedMagnitudes
from methods.masks import PackedRanks, row_ranks_packed
from optimizer.checkpoint import Checkpoint, check_compatible
from optimizer.errors import ModelError
from optimizer.merge import MergeError, apply_method
from optimizer.merge_config import MergeConfig
from optimizer.param_forms import TensorSite


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but no CUDA device is available")
    return torch.device(requested)


class ResidentMerger:
    def __init__(
        self,
        base: Path,
        experts: Sequence[Path],
        device: str = "auto",
        cache_ranks: bool = True,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        compile_kernels: bool = True,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = pick_device(device)
        base_ckpt = Checkpoint(base, allow_pickle)
        expert_ckpts = [Checkpoint(p, allow_pickle) for p in experts]
        check_compatible(base_ckpt, expert_ckpts)
        self.num_layers = base_ckpt.num_layers
        self.model = AutoModelForCausalLM.from_pretrained(
            base,
            dtype=torch.float32,
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
        ).to(self.device)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
        targets = dict(self.model.named_parameters())
        targets.update(dict(self.model.named_buffers()))
        self.names = [n for n, info in base_ckpt.tensors.items() if info.dtype.is_floating_point]
        unknown = [n for n in self.names if n not in targets]
        if unknown:
            raise ModelError(
                f"{base}: checkpoint tensors {unknown[:5]} have no parameter in the loaded "
                "model; the folder's config.json does not match its weights"
            )
        self.targets = {n: targets[n] for n in self.names}
        self.sites = {n: TensorSite.of(n, self.num_layers) for n in self.names}
        self.base: dict[str, torch.Tensor] = {}
        self.deltas: list[dict[str, torch.Tensor]] = [{} for _ in experts]
        for name in self.names:
            b = base_ckpt.get(name).to(self.device, torch.float32)
            self.base[name] = b
            for i, ck in enumerate(expert_ckpts):
                self.deltas[i][name] = ck.get(name).to(self.device, torch.float32).sub_(b)
        self._init_caches(cache_ranks, compile_kernels)

    @classmethod
    def in_memory(
        cls,
        base: dict[str, torch.Tensor],
        experts: Sequence[dict[str, torch.Tensor]],
        num_layers: int,
        device: str = "cpu",
        cache_ranks: bool = True,
        compile_kernels: bool = True,
    ) -> ResidentMerger:
        """An engine over tensors already in memory, writing into fresh target tensors.

        For benchmarks and tests that need models of a size no folder holds
        (random weights); everything after loading is the same code path.
        """
        self = cls.__new__(cls)
        self.device = pick_device(device)
        self.num_layers = num_layers
        self.model = self.tokenizer = None
        self.names = list(base)
        self.sites = {n: TensorSite.of(n, num_layers) for n in self.names}
        self.base = {n: t.to(self.device, torch.float32) for n, t in base.items()}
        self.targets = {n: torch.empty_like(t) for n, t in self.base.items()}
        self.deltas = [
            {n: e[n].to(self.device, torch.float32).sub_(self.base[n]) for n in self.names}
            for e in experts
        ]
        self._init_caches(cache_ranks, compile_kernels)
        return self

    def _init_caches(self, cache_ranks: bool, compile_kernels: bool) -> None:
        self.cache_ranks = cache_ranks
        self.compile_kernels = compile_kernels
        self._ranks: dict[tuple[str, int], PackedRanks | None] = {}
        self._magnitudes: dict[tuple[str, int], SortedMagnitudes] = {}
        self._memo: dict[tuple[str, str, Hashable], Any] = {}

    def drop_caches(self) -> None:
        """Forget the per-study caches (they refill on next use): bounds memory when
        one process times many methods on a large model."""
        self._ranks.clear()
        self._magnitudes.clear()
        self._memo.clear()

    def cache_bytes(self) -> int:
        """Bytes held by the per-study caches (packed ranks, sorted magnitudes)."""
        ranks = sum(r.nbytes for r in self._ranks.values() if r is not None)
        return ranks + sum(m.nbytes for m in self._magnitudes.values())

    def _context(self, name: str, cfg: MergeConfig) -> TensorContext:
        def ranks(index: int, per_row: bool) -> PackedRanks | None:
            if not per_row:
                return None
            key = (name, index)
            if key not in self._ranks:
                self._ranks[key] = row_ranks_packed(self.deltas[index][name])
            return self._ranks[key]

        def magnitudes(index: int) -> SortedMagnitudes:
            key = (name, index)
            if key not in self._magnitudes:
                self._magnitudes[key] = SortedMagnitudes(self.deltas[index][name])
            return self._magnitudes[key]

        def memo(key: Hashable, build: Callable[[], Any]) -> Any:
            full = (name, cfg.compat, key)
            if full not in self._memo:
                self._memo[full] = build()
            return self._memo[full]

        return TensorContext(
            name,
            cfg.compat,
            cfg.seed,
            ranks=ranks if self.cache_ranks else None,
            magnitudes=magnitudes if self.cache_ranks else None,
            memo=memo,
            compile=self.compile_kernels,
        )

    @torch.no_grad()
    def materialize(self, cfg: MergeConfig) -> float:
        """Write the merge ``cfg`` describes into the resident model; seconds taken."""
        start = time.perf_counter()
        n_experts = len(self.deltas)
        if len(cfg.experts) != n_experts:
            raise MergeError(
                f"the candidate has {len(cfg.experts)} experts, the resident model {n_experts}"
            )
        for name in self.names:
            params = cfg.tensor_params(self.sites[name])
            cfg.check_tensor_params(name, params)
            ctx = self._context(name, cfg)
            target = self.targets[name]
            out = target if target.dtype == torch.float32 and target.is_contiguous() else None
            merged = apply_method(
                cfg.method, self.base[name], [d[name] for d in self.deltas], params, ctx, out
            )
            if merged is not target:
                target.copy_(merged)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    @torch.no_grad()
    def restore_base(self) -> None:
        for name in self.names:
            self.targets[name].copy_(self.base[name])
