"""The resident model: every candidate is written into one loaded model in place.

Models are read once. What does not change between trials is kept: the base
tensors and each expert's task vector in float32 on the compute device (for
checkpoints all stored in bfloat16 or float16: the base and the experts as
stored, half the bytes, each task vector formed in float32 per tensor inside
the candidate's pass, exactly as the one-shot merge forms it) and,
filled on first use by the methods that need them, each task vector's row
ranks (DELLA, paper-mode Breadcrumbs; int16, half a model per expert) and its
stable magnitude order (TIES, mergekit-mode Breadcrumbs; int32 positions, a
model per expert: a trial's thresholds and tie positions become lookups
instead of a selection and a counting pass over the tensor), plus small
per-tensor values (Model Stock's ratios, SLERP's angle). A candidate is then one fused
elementwise pass per tensor written straight into the model's parameters: no
disk, no re-instantiation, no temporaries. Memory: (experts + 1) stored
models and the scored one (``eval_dtype``, default the base's dtype), plus
0.5 (ranks) and 1 (order) per expert for the caches once used
(``cache_ranks: false`` trades them for a selection or sort per trial).
Where the stored models wait is the residency tier (``optimizer.engine.
holding``): on the device, in host memory, or in their files, reread per
candidate; ``optimizer.engine.footprint`` picks it from free memory.

Tensors of one shape (a layer's q_proj in every layer, ...) live side by
side in one buffer: base, each task vector, the rank cache and the model's
parameters themselves, which become views into it. A candidate's kernel calls
are collected and launched once per shape (``methods.launch``), not once per
tensor: a fixed cost per launch otherwise costs as much as the memory
traffic on a small model (docs/benchmarks.md, design measurements).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from methods import TensorContext
from methods.engine_api import (
    KernelCall,
    MagnitudeOrder,
    PackedRanks,
    Plan,
    packable,
    row_ranks_packed,
)
from methods.registry import CacheKind
from optimizer.config.merge_config import MergeConfig
from optimizer.config.param_forms import TensorSite
from optimizer.engine.apply import launch_plans, plan_tensor
from optimizer.engine.candidate import Candidate
from optimizer.engine.footprint import (
    CACHE_BYTES,
    Footprint,
    Tier,
    held_dtype,
    of_models,
    plan_residency,
)
from optimizer.engine.holding import Files, Holding, Operands, Stacks
from optimizer.errors import ConfigError, ModelError
from optimizer.io.checkpoint import Checkpoint, check_compatible


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but no CUDA device is available")
    return torch.device(requested)


class ShapeSlots:
    """Where each tensor sits when same-shaped tensors share a buffer: one
    buffer per shape, a slot per tensor, in the order the names come."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.members: dict[tuple[int, ...], list[str]] = {}
        for name, shape in shapes.items():
            self.members.setdefault(tuple(shape), []).append(name)
        self.slot = {
            n: (shape, k) for shape, names in self.members.items() for k, n in enumerate(names)
        }

    def buffers(
        self, dtype: torch.dtype, device: torch.device, slot_shape=None, pin: bool = False
    ) -> dict[tuple[int, ...], torch.Tensor]:
        """One uninitialized buffer per shape (or per ``slot_shape(shape)``)."""
        return {
            shape: torch.empty(
                (len(names), *(slot_shape(shape) if slot_shape else shape)),
                dtype=dtype,
                device=device,
                pin_memory=pin,
            )
            for shape, names in self.members.items()
        }

    def views(self, buffers: dict[tuple[int, ...], torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: buffers[shape][k] for n, (shape, k) in self.slot.items()}


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
        caches: tuple[CacheKind, ...] | None = None,
        eval_dtype: torch.dtype | None = None,
        residency: Tier | Literal["auto"] = "auto",
    ) -> None:
        """``caches``: the kinds the study's methods fill (None: any), counted
        against free memory before anything loads; ``eval_dtype``: the dtype
        the scored model is held in (None: the base's stored dtype);
        ``residency``: where the base and the experts wait between candidates
        (``optimizer.engine.holding``; auto: the first tier that fits)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from optimizer.evaluate.memory import free_bytes

        self.device = pick_device(device)
        base_ckpt = Checkpoint(base, allow_pickle)
        expert_ckpts = [Checkpoint(p, allow_pickle) for p in experts]
        check_compatible(base_ckpt, expert_ckpts)
        kinds = tuple(CACHE_BYTES) if caches is None else caches
        wanted = of_models(base_ckpt, expert_ckpts, kinds if cache_ranks else (), eval_dtype)
        self.footprint, self.notes = plan_residency(
            wanted, residency, self.device, free_bytes(self.device), free_bytes(torch.device("cpu"))
        )
        if wanted.caches and not self.footprint.caches:
            cache_ranks = False  # each trial then selects or sorts instead
        self.store_dtype, self.eval_dtype = self.footprint.stored, self.footprint.scored
        self.num_layers = base_ckpt.num_layers
        self.model = AutoModelForCausalLM.from_pretrained(
            base,
            dtype=self.eval_dtype,
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
        self.sites = {n: TensorSite.of(n, self.num_layers) for n in self.names}
        self.slots = ShapeSlots({n: base_ckpt.tensors[n].shape for n in self.names})
        self._stacked: set[int] = set()  # storages of the shared buffers
        # read straight into the shared buffers, one tensor at a time
        self._hold(len(expert_ckpts), Files([base_ckpt, *expert_ckpts]))
        for name in self.names:
            self._fill(name, base_ckpt.get(name), (ck.get(name) for ck in expert_ckpts))
        self.targets = self._restack_targets({n: targets[n] for n in self.names})
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
        eval_dtype: torch.dtype | None = None,
        residency: Literal["device", "host"] = "device",
    ) -> ResidentMerger:
        """An engine over tensors already in memory, writing into fresh target tensors.

        For benchmarks and tests that need models of a size no folder holds
        (random weights); everything after loading is the same code path.
        The dicts are emptied as their tensors move into the engine's shared
        buffers, so the models are never held twice. (No files: no disk tier.)
        """
        self = cls.__new__(cls)
        self.device = pick_device(device)
        self.notes = []
        self.num_layers = num_layers
        self.model = self.tokenizer = None
        self.names = list(base)
        self.sites = {n: TensorSite.of(n, num_layers) for n in self.names}
        self.slots = ShapeSlots({n: tuple(t.shape) for n, t in base.items()})
        self._stacked: set[int] = set()
        self.store_dtype = held_dtype(t.dtype for m in (base, *experts) for t in m.values())
        self.eval_dtype = eval_dtype or self.store_dtype
        sizes = [t.numel() for t in base.values()]
        self.footprint = Footprint(
            sum(sizes),
            len(experts),
            (),
            self.store_dtype,
            self.eval_dtype,
            max(sizes, default=0),
            residency,
            self.device.type == "cuda",
        )
        self._hold(len(experts), None)
        self.targets = self._new_stack(self.eval_dtype)
        for name in self.names:
            self._fill(name, base.pop(name), (e.pop(name) for e in experts))
        self._init_caches(cache_ranks, compile_kernels)
        return self

    @property
    def native(self) -> bool:
        """Whether the experts are held as stored, their task vectors formed per tensor."""
        return self.store_dtype != torch.float32

    @property
    def tier(self) -> Tier:
        return self.footprint.tier

    def _hold(self, n_experts: int, files: Files | None) -> None:
        """Where the models are read into: task vectors formed in float32 in
        shared buffers on the device (``self.deltas``, the fastest layout), or
        the base and experts held as stored in the footprint's tier
        (``self.holding``), task vectors formed per tensor by ``self.formed``."""
        self.n_experts = n_experts
        fp = self.footprint
        self.deltas = None
        self.holding: Holding | None = None
        self.formed: Operands | None = None
        if not fp.forms_task_vectors:
            self._base = self._new_stack(self.store_dtype)
            self.deltas = [self._new_stack(self.store_dtype) for _ in range(n_experts)]
            return
        if fp.tier == "disk":
            assert files is not None, "the disk tier reads files"
            self.holding = files
            itemsize = max(
                info.dtype.itemsize for ck in files.checkpoints for info in ck.tensors.values()
            )
        else:
            where = self.device if fp.tier == "device" else torch.device("cpu")
            self.holding = Stacks(fp.tier, self.slots, n_experts, self.store_dtype, where)
            itemsize = self.store_dtype.itemsize
        self._itemsize = itemsize
        self.formed = self._operands()

    def _operands(self, stage: bool | None = None) -> Operands:
        """Scratch (and, staged, staging) for forming each tensor's operands."""
        largest = max((math.prod(shape) for shape in self.slots.members), default=0)
        return Operands(
            self.holding,
            self.n_experts + 1,
            largest,
            self._itemsize,
            self.device,
            merge_scratch=self.eval_dtype != torch.float32,
            stage=stage,
        )

    @property
    def base(self) -> dict[str, torch.Tensor] | None:
        """The held base tensors (None in the disk tier)."""
        if self.holding is None:
            return self._base
        return self.holding.models[0] if isinstance(self.holding, Stacks) else None

    @property
    def experts(self) -> list[dict[str, torch.Tensor]] | None:
        """The experts held as stored (None where task vectors are held formed, or on disk)."""
        return self.holding.models[1:] if isinstance(self.holding, Stacks) else None

    def _base_tensor(self, name: str) -> torch.Tensor:
        return self._base[name] if self.holding is None else self.holding.base(name)

    def _fill(self, name: str, base: torch.Tensor, experts: Iterable[torch.Tensor]) -> None:
        """Copy one tensor's base into its slot and each expert's task vector (or
        the expert itself, as held) into its own, one expert at a time."""
        if self.holding is not None:
            self.holding.fill(name, base, experts)
            return
        b = self._base[name]
        b.copy_(base)
        for i, e in enumerate(experts):
            self.deltas[i][name].copy_(e).sub_(b)

    def operands(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One tensor's base and task vectors in float32 on the device: views of
        the held buffers, or formed now in the scratch buffers, as
        ``merge_tensor`` forms them (valid until the next tensor's)."""
        if self.formed is None:
            return self._base[name], [d[name] for d in self.deltas]
        return self.formed.one(name)

    def _each_operands(self) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        if self.formed is None:
            for name in self.names:
                yield name, *self.operands(name)
        else:
            yield from self.formed.each(self.names)

    def _new_stack(self, dtype: torch.dtype = torch.float32, slot_shape=None) -> dict:
        """Per-name views of fresh shared buffers, their storages registered as stacked."""
        buffers = self.slots.buffers(dtype, self.device, slot_shape)
        self._stacked.update(b.untyped_storage().data_ptr() for b in buffers.values())
        return self.slots.views(buffers)

    def _restack_targets(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Make the model's parameters views into shared buffers, holding the base;
        a parameter shared by two names (tied embeddings) is moved once.

        Each parameter must equal the checkpoint's tensor (candidates are
        computed from the checkpoint and written over it). Its own storage is
        dropped, pointing it at the base, before the new buffers exist: the
        model is never held twice, even for a moment.
        """
        seen: set[int] = set()
        for name, t in targets.items():
            if id(t) in seen:  # tied: checked (and its storage dropped) under its first name
                continue
            seen.add(id(t))
            base = self._base_tensor(name)
            if not torch.equal(t.detach(), base.to(t.device, t.dtype)):
                raise ModelError(
                    f"{name}: the loaded model's parameter differs from the checkpoint's "
                    "tensor (transformers converted it on load), so merges of the "
                    "checkpoints cannot be written into it; this architecture is not "
                    "supported by the resident engine"
                )
            held = self.tier != "disk" and (t.dtype, t.device) == (base.dtype, base.device)
            t.data = base if held else torch.empty(0, dtype=t.dtype, device=t.device)
        views = self._new_stack(self.eval_dtype)
        moved: dict[int, torch.Tensor] = {}
        out = {}
        for name, t in targets.items():
            if id(t) not in moved:
                views[name].copy_(self._base_tensor(name))
                t.data = views[name]
                moved[id(t)] = t
            out[name] = moved[id(t)]
        return out

    def _init_caches(self, cache_ranks: bool, compile_kernels: bool) -> None:
        self.cache_ranks = cache_ranks
        self.compile_kernels = compile_kernels
        self._ranks: dict[tuple[str, int], PackedRanks | None] = {}
        self._rank_stacks: dict[int, dict[str, torch.Tensor]] = {}
        self._magnitudes: dict[tuple[str, int], MagnitudeOrder] = {}
        self._memo: dict[tuple[str, str, Hashable], Any] = {}

    def drop_caches(self) -> None:
        """Forget the per-study caches (they refill on next use): bounds memory when
        one process times many methods on a large model."""
        self._ranks.clear()
        for stack in self._rank_stacks.values():
            self._stacked.difference_update(v.untyped_storage().data_ptr() for v in stack.values())
        self._rank_stacks.clear()
        self._magnitudes.clear()
        self._memo.clear()

    def _packed_ranks(self, name: str, index: int, delta: torch.Tensor) -> PackedRanks | None:
        """Task vector ``index``'s packed row ranks (``delta`` is that task vector),
        stored in the shared rank buffer of its shape (so the kernels of one
        shape launch stacked)."""
        if not packable(delta):
            return None
        if index not in self._rank_stacks:
            self._rank_stacks[index] = self._new_stack(
                torch.int32, lambda shape: (1, math.prod(shape) // 2)
            )
        return row_ranks_packed(delta, out=self._rank_stacks[index][name])

    def _stackable(self, plan: Plan) -> bool:
        """A kernel call whose tensors all live in the shared buffers: it waits to
        launch stacked with its neighbours at the end of the candidate (any other
        plan launches at once, so its temporaries never pile up)."""
        return (
            isinstance(plan, KernelCall)
            and plan.extra is None
            and all(t.untyped_storage().data_ptr() in self._stacked for t in plan.tensors())
        )

    def cache_bytes(self) -> int:
        """Bytes held by the per-study caches (packed ranks, magnitude orders)."""
        ranks = sum(r.nbytes for r in self._ranks.values() if r is not None)
        return ranks + sum(m.nbytes for m in self._magnitudes.values())

    def _context(self, name: str, cfg: Candidate, deltas: list[torch.Tensor]) -> TensorContext:
        def ranks(index: int, per_row: bool) -> PackedRanks | None:
            if not per_row:
                return None
            key = (name, index)
            if key not in self._ranks:
                self._ranks[key] = self._packed_ranks(name, index, deltas[index])
            return self._ranks[key]

        def magnitudes(index: int) -> MagnitudeOrder:
            key = (name, index)
            if key not in self._magnitudes:
                self._magnitudes[key] = MagnitudeOrder(deltas[index])
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

    def resolve(self, cfg: MergeConfig) -> Candidate:
        """``cfg``'s values for each of this model's tensors, checked."""
        return Candidate.resolve(cfg, self.names, self.num_layers)

    @torch.no_grad()
    def materialize(self, candidate: Candidate | MergeConfig) -> float:
        """Write the candidate into the resident model; seconds taken (a merge
        config is resolved first)."""
        start = time.perf_counter()
        if isinstance(candidate, MergeConfig):
            candidate = self.resolve(candidate)
        n_experts = self.n_experts
        if candidate.n_experts != n_experts:
            raise ConfigError(
                f"the candidate has {candidate.n_experts} experts, the resident model {n_experts}"
            )
        method = candidate.method
        pending: list[tuple[Plan, torch.Tensor]] = []
        for name, base, deltas in self._each_operands():
            params = candidate.values[name]
            ctx = self._context(name, candidate, deltas)
            target = self.targets[name]
            out = target if target.dtype == torch.float32 and target.is_contiguous() else None
            if out is None and self.formed is not None:
                out = self.formed.out(target)
            plan = plan_tensor(method, base, deltas, params, ctx, out)
            if self._stackable(plan):
                pending.append((plan, target))
                continue
            launch_plans([plan], self.compile_kernels, method)
            if plan.result is not target:
                target.copy_(plan.result)
        launch_plans([p for p, _ in pending], self.compile_kernels, method)
        for plan, target in pending:
            if plan.result is not target:
                target.copy_(plan.result)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    @torch.no_grad()
    def restore_base(self) -> None:
        for name in self.names:
            self.targets[name].copy_(self._base_tensor(name))
