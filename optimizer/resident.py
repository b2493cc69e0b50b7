"""The resident model: every candidate is written into one loaded model in place.

Models are read once. What does not change between trials is kept: the base
tensors and each expert's task vector in float32 on the compute device, and,
filled on first use, each row's stable magnitude ranks as int16 (half a model
per expert), which DELLA and paper-mode Breadcrumbs would otherwise sort for
every trial. Whole-tensor top-k (TIES) uses kthvalue thresholds instead: a
per-tensor rank cache would cost a full model per expert. A candidate is then
tensor math per tensor, copied into the model's parameters: no disk, no
re-instantiation. Memory: (experts + 2) models, plus 0.5 per expert once ranks
are cached (``cache_ranks: false`` trades that for a sort per trial).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from methods import TensorContext
from methods.masks import stable_ranks
from optimizer.checkpoint import Checkpoint, check_compatible
from optimizer.errors import ModelError
from optimizer.merge import MergeError, apply_method
from optimizer.merge_config import MergeConfig
from optimizer.param_forms import TensorSite


def row_ranks_int16(delta: torch.Tensor, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Per-row stable ranks as int16, computed a block of rows at a time.

    A whole-tensor argsort would hold int64 orders and ranks (4× the float
    tensor each) at once; blocks bound that transient to a few MB.
    """
    rows = delta.reshape(-1, delta.shape[-1])
    out = torch.empty(rows.shape, dtype=torch.int16, device=delta.device)
    step = max(1, chunk_elements // rows.shape[-1])
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = stable_ranks(rows[start : start + step], True)
    return out.reshape(delta.shape)


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
        self.cache_ranks = cache_ranks
        self._ranks: dict[tuple[str, int], torch.Tensor] = {}

    @classmethod
    def in_memory(
        cls,
        base: dict[str, torch.Tensor],
        experts: Sequence[dict[str, torch.Tensor]],
        num_layers: int,
        device: str = "cpu",
        cache_ranks: bool = True,
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
        self.cache_ranks = cache_ranks
        self._ranks = {}
        return self

    def _rank_provider(self, name: str):
        if not self.cache_ranks:
            return None

        def ranks(index: int, per_row: bool) -> torch.Tensor | None:
            delta = self.deltas[index][name]
            if not per_row or delta.dim() == 0 or delta.shape[-1] > 32767:
                return None
            key = (name, index)
            r = self._ranks.get(key)
            if r is None:
                r = self._ranks[key] = row_ranks_int16(delta)
            return r

        return ranks

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
            ctx = TensorContext(name, cfg.compat, cfg.seed, ranks=self._rank_provider(name))
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
