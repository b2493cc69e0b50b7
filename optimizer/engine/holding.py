"""Where the base and the experts wait between candidates: the residency tiers.

The resident engine's fastest layout keeps each task vector formed, in
float32, on the compute device. When that does not fit (or the checkpoints are
stored in bfloat16), the models are held as stored somewhere cheaper and each
candidate forms one tensor's base and task vectors in float32 scratch on the
device, tensor after tensor, exactly as the one-shot merge forms them:

- ``device``: held on the compute device (bfloat16 checkpoints: half the bytes);
- ``host``: held in host memory (pinned, with a CUDA device) and copied over
  tensor by tensor, the next tensor's copy running on its own stream while
  this one merges;
- ``disk``: read from the safetensors files per candidate, for hosts that
  cannot hold the experts at all.

Every tier gives the same bytes; only where the inputs come from differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from optimizer.engine.footprint import Tier
from optimizer.io.checkpoint import Checkpoint


class Holding:
    """The base and the experts of one study, in one tier, read tensor by tensor."""

    tier: Tier

    def fill(self, name: str, base: torch.Tensor, experts: Iterable[torch.Tensor]) -> None:
        """Take one tensor of the base and of each expert, as loading reads them."""
        raise NotImplementedError

    def base(self, name: str) -> torch.Tensor:
        """The base's tensor as held (stored dtype; on the host for host and disk)."""
        raise NotImplementedError

    def sources(self, name: str, buffers: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The base's and then each expert's tensor ``name`` as held, or read
        into ``buffers`` (flat byte buffers, for the disk tier: one per model,
        or a single one reused, each tensor valid until the next is read)."""
        raise NotImplementedError


class Stacks(Holding):
    """Device and host tiers: the models in shared per-shape buffers."""

    def __init__(self, tier: Tier, slots, n_experts: int, dtype: torch.dtype, device) -> None:
        self.tier = tier
        pin = tier == "host" and torch.cuda.is_available()
        self.models = [
            slots.views(slots.buffers(dtype, device, pin=pin)) for _ in range(n_experts + 1)
        ]

    def fill(self, name: str, base: torch.Tensor, experts: Iterable[torch.Tensor]) -> None:
        self.models[0][name].copy_(base)
        for held, e in zip(self.models[1:], experts, strict=True):
            held[name].copy_(e)

    def base(self, name: str) -> torch.Tensor:
        return self.models[0][name]

    def sources(self, name: str, buffers: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        return (m[name] for m in self.models)


class Files(Holding):
    """Disk tier: nothing held; each candidate reads the files tensor by tensor
    (into reused buffers: neither a memory mapping's resident pages nor a fresh
    allocation per tensor)."""

    tier: Tier = "disk"

    def __init__(self, checkpoints: Sequence[Checkpoint]) -> None:
        self.checkpoints = list(checkpoints)

    def fill(self, name: str, base: torch.Tensor, experts: Iterable[torch.Tensor]) -> None:
        for _ in experts:  # loading read (and checked) them; nothing is kept
            pass

    def base(self, name: str) -> torch.Tensor:
        return self.checkpoints[0].get(name)

    def sources(self, name: str, buffers: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        if len(buffers) == 1:
            return (ck.read_into(name, buffers[0]) for ck in self.checkpoints)
        return (ck.read_into(name, b) for ck, b in zip(self.checkpoints, buffers, strict=True))


class _InOrder:
    """Copies on a CPU: each is done when it returns, so nothing waits."""

    def on_copy_stream(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def mark(self, copy: bool) -> None:
        return None

    def compute_waits(self, event) -> None:
        pass

    def copy_waits(self, event) -> None:
        pass

    def host_waits(self, event) -> None:
        pass


class _Streams(_InOrder):
    """A CUDA copy stream beside the compute stream, ordered by events."""

    def __init__(self, device: torch.device) -> None:
        self.copy = torch.cuda.Stream(device)
        self.compute = torch.cuda.current_stream(device)

    def on_copy_stream(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.copy)

    def mark(self, copy: bool) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(self.copy if copy else self.compute)
        return event

    def compute_waits(self, event) -> None:
        self.compute.wait_event(event)

    def copy_waits(self, event) -> None:
        self.copy.wait_event(event)

    def host_waits(self, event) -> None:
        event.synchronize()


class Operands:
    """Each tensor's base and task vectors in float32 on the compute device,
    formed from a holding in reused buffers (valid until the next tensor's).

    Staged (a CUDA device with the models off it), the next tensor's bytes are
    copied (host tier) or read and copied (disk tier) into the other of two
    staging sets on a copy stream while this tensor merges; the compute stream
    waits for a set's copy before using it, the copy stream for the compute
    stream's last use of a set before refilling it, and the host for a set's
    last copy before rereading files into its pinned buffers. On a CPU the same
    staging runs in order (``stage=True``: how the tests check its bookkeeping).
    """

    def __init__(
        self,
        holding: Holding,
        n_models: int,
        largest: int,
        itemsize: int,
        device: torch.device,
        merge_scratch: bool,
        stage: bool | None = None,
    ) -> None:
        """``merge_scratch``: room for the merge too (a scored model not in
        float32 gets the float32 merge rounded into it); ``stage``: None,
        staged exactly when the device is CUDA and the models are off it."""
        self.holding = holding
        self.device = device
        # base, each task vector, the merge
        rooms = n_models + merge_scratch
        self.scratch = [torch.empty(largest, device=device) for _ in range(rooms)]
        self.merge_scratch = merge_scratch
        cuda = device.type == "cuda"
        self.staged = (cuda and holding.tier != "device") if stage is None else stage
        sets = 2 if self.staged else 1
        nbytes = largest * itemsize
        # read in order, the models share one buffer; staged, each has its own
        # in each set (the copies from them run while the next reads start)
        per_set = n_models if self.staged else 1
        pin = cuda and self.staged
        self.reads = [
            [
                torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
                for _ in range(per_set if holding.tier == "disk" else 0)
            ]
            for _ in range(sets)
        ]
        if self.staged:
            self.staging = [
                [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(n_models)]
                for _ in range(sets)
            ]
            self.sync = _Streams(device) if cuda else _InOrder()

    def view(self, k: int, like: torch.Tensor) -> torch.Tensor:
        return self.scratch[k][: like.numel()].view(like.shape)

    def out(self, like: torch.Tensor) -> torch.Tensor | None:
        """Float32 room for the merge of a tensor shaped like ``like`` (None:
        the merge allocates its own)."""
        return self.view(len(self.scratch) - 1, like) if self.merge_scratch else None

    def _form(self, sources: Iterable[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        srcs = iter(sources)  # consumed in order: a reused read buffer holds one at a time
        first = next(srcs)
        base = self.view(0, first).copy_(first)
        # widened exactly either way: a GPU fuses the widening into the
        # subtraction, a CPU runs that mixed-dtype subtraction about 3x slower
        # than a widening copy and a float32 subtraction
        if self.device.type == "cuda":
            deltas = [torch.sub(e, base, out=self.view(i + 1, e)) for i, e in enumerate(srcs)]
        else:
            deltas = [self.view(i + 1, e).copy_(e).sub_(base) for i, e in enumerate(srcs)]
        return base, deltas

    def one(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tensor ``name``'s operands, formed synchronously."""
        srcs = self.holding.sources(name, self.reads[0])
        return self._form(s.to(self.device) for s in srcs)

    def each(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """Every tensor's operands in turn (staged: the next one's copy overlapping)."""
        if not self.staged:
            for name in names:
                yield (name, *self._form(self.holding.sources(name, self.reads[0])))
            return
        sync = self.sync
        copied: list[Any] = [None, None]  # per set: its last copy's event
        used: list[Any] = [None, None]  # per set: the compute stream's last read of it

        def stage(i: int) -> list[torch.Tensor]:
            k = i % 2
            if copied[k] is not None:
                sync.host_waits(copied[k])  # its pinned read buffers are refilled next
            srcs = self.holding.sources(names[i], self.reads[k])
            out = []
            with sync.on_copy_stream():
                if used[k] is not None:
                    sync.copy_waits(used[k])
                for src, buf in zip(srcs, self.staging[k], strict=True):
                    dst = buf[: src.nbytes].view(src.dtype).view(src.shape)
                    out.append(dst.copy_(src, non_blocking=True))
                copied[k] = sync.mark(copy=True)
            return out

        staged = stage(0) if names else []
        for i, name in enumerate(names):
            k = i % 2
            sync.compute_waits(copied[k])
            current = staged
            if i + 1 < len(names):
                staged = stage(i + 1)
            base, deltas = self._form(current)
            used[k] = sync.mark(copy=False)  # read into scratch: the set may be refilled
            yield name, base, deltas
