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

from collections.abc import Iterable, Iterator, Sequence

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


class Operands:
    """Each tensor's base and task vectors in float32 on the compute device,
    formed from a holding in reused buffers (valid until the next tensor's).

    With a CUDA device and models off it, the next tensor's bytes are copied
    (host tier) or read and copied (disk tier) into the other of two staging
    sets on a copy stream while this tensor merges; the compute stream waits
    for a set's copy before using it, and the copy stream for the compute
    stream's last use of a set before refilling it.
    """

    def __init__(
        self,
        holding: Holding,
        n_models: int,
        largest: int,
        itemsize: int,
        device: torch.device,
        merge_scratch: bool,
    ) -> None:
        """``merge_scratch``: room for the merge too (a scored model not in
        float32 gets the float32 merge rounded into it)."""
        self.holding = holding
        self.device = device
        # base, each task vector, the merge
        rooms = n_models + merge_scratch
        self.scratch = [torch.empty(largest, device=device) for _ in range(rooms)]
        self.merge_scratch = merge_scratch
        self.cuda = device.type == "cuda" and holding.tier != "device"
        sets = 2 if self.cuda else 1
        nbytes = largest * itemsize
        # a CPU reads the models one after another into one buffer; a GPU's
        # asynchronous copies need one per model, in two sets
        per_set = n_models if self.cuda else 1
        self.reads = [
            [
                torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.cuda)
                for _ in range(per_set if holding.tier == "disk" else 0)
            ]
            for _ in range(sets)
        ]
        if self.cuda:
            self.staging = [
                [torch.empty(nbytes, dtype=torch.uint8, device=device) for _ in range(n_models)]
                for _ in range(sets)
            ]
            self.copy_stream = torch.cuda.Stream(device)

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
        # widened exactly by the copy, then subtracted in float32 (a mixed-dtype
        # subtraction runs about 3x slower on a CPU than the two passes)
        deltas = [self.view(i + 1, e).copy_(e).sub_(base) for i, e in enumerate(srcs)]
        return base, deltas

    def one(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tensor ``name``'s operands, formed synchronously."""
        srcs = self.holding.sources(name, self.reads[0])
        return self._form(s.to(self.device) for s in srcs)

    def each(self, names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        """Every tensor's operands in turn, the next one's copy overlapping."""
        if not self.cuda:
            for name in names:
                yield (name, *self._form(self.holding.sources(name, self.reads[0])))
            return
        compute = torch.cuda.current_stream(self.device)
        copied: list[torch.cuda.Event | None] = [None, None]
        used: list[torch.cuda.Event | None] = [None, None]

        def stage(i: int) -> list[torch.Tensor]:
            k = i % 2
            if copied[k] is not None:
                copied[k].synchronize()  # its host buffers are about to be refilled
            srcs = self.holding.sources(names[i], self.reads[k])
            out = []
            with torch.cuda.stream(self.copy_stream):
                if used[k] is not None:
                    self.copy_stream.wait_event(used[k])
                for src, buf in zip(srcs, self.staging[k], strict=True):
                    dst = buf[: src.nbytes].view(src.dtype).view(src.shape)
                    out.append(dst.copy_(src, non_blocking=True))
                copied[k] = torch.cuda.Event()
                copied[k].record(self.copy_stream)
            return out

        staged = stage(0) if names else []
        for i, name in enumerate(names):
            k = i % 2
            compute.wait_event(copied[k])
            current = staged
            if i + 1 < len(names):
                staged = stage(i + 1)
            base, deltas = self._form(current)
            used[k] = torch.cuda.Event()
            used[k].record(compute)  # the set is read into scratch: free to refill
            yield name, base, deltas
