"""What the resident engine will hold, from the checkpoints' headers alone.

Computed before any model loads, so a study that cannot fit fails in a
second with the numbers and the way out instead of minutes of loading and an
out-of-memory error (or a swapping machine), and caches that would not fit
are left out up front, with a note, instead of failing a trial later. The
same arithmetic gives the README's table for 7B-70B models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

import torch

from methods.registry import CacheKind, MethodSpec
from optimizer.errors import ModelError
from optimizer.io.checkpoint import Checkpoint

GIB = 1 << 30
NATIVE_DTYPES = (torch.bfloat16, torch.float16)  # held as stored; anything else as float32
CACHE_BYTES: dict[CacheKind, int] = {"ranks": 2, "orders": 4}  # per entry, per expert
Tier = Literal["device", "host", "disk"]
TIERS: tuple[Tier, ...] = ("device", "host", "disk")


def size_text(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


def stored_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """The dtype most of a checkpoint's floating-point entries are stored in."""
    entries: dict[torch.dtype, int] = {}
    for info in checkpoint.tensors.values():
        if info.dtype.is_floating_point:
            entries[info.dtype] = entries.get(info.dtype, 0) + math.prod(info.shape)
    return max(entries, key=entries.get) if entries else torch.float32


def held_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The dtype the engine holds the base and the experts in, given the dtypes
    their floating-point tensors are stored in: the one they all share when it
    is a 16-bit float (task vectors are then formed in float32 per tensor, as
    the one-shot merge forms them), else float32 with each task vector held
    already formed (today's layout, the same bytes)."""
    found = set(dtypes)
    return found.pop() if len(found) == 1 and next(iter(found)) in NATIVE_DTYPES else torch.float32


def resident_dtype(checkpoints: Iterable[Checkpoint]) -> torch.dtype:
    """``held_dtype`` of these checkpoints, from their headers."""
    return held_dtype(
        info.dtype
        for ck in checkpoints
        for info in ck.tensors.values()
        if info.dtype.is_floating_point
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Footprint:
    """Bytes the resident engine holds for ``entries`` floating-point entries
    per model and ``experts`` experts, in residency ``tier``: the base and each
    expert (or task vector) in ``stored``, the model scored in ``scored``, and
    the caches its methods fill. Wherever task vectors are not held already
    formed on the device (experts held as stored, or held off the device), a
    float32 scratch holds one tensor's base, task vectors and (for a scored
    model not in float32) merge (``largest``: entries of the largest tensor),
    reused tensor after tensor so
    no candidate allocates; a CUDA device streaming from the host or disk adds
    two stored-dtype staging sets there (one copying while the other merges),
    and reading from disk needs read buffers in host memory."""

    entries: int
    experts: int
    caches: tuple[CacheKind, ...] = ()
    stored: torch.dtype = torch.float32
    scored: torch.dtype = torch.float32
    largest: int = 0
    tier: Tier = "device"
    cuda: bool = False

    @property
    def held(self) -> int:
        """The base and the experts (or task vectors), wherever the tier keeps them."""
        return self.entries * (self.experts + 1) * self.stored.itemsize

    @property
    def forms_task_vectors(self) -> bool:
        return self.stored != torch.float32 or self.tier != "device"

    @property
    def scratch(self) -> int:
        if not self.forms_task_vectors:
            return 0
        return (self.experts + 1 + (self.scored != torch.float32)) * self.largest * 4

    @property
    def one_tensor(self) -> int:
        """The stored bytes of one tensor of the base and every expert."""
        return (self.experts + 1) * self.largest * self.stored.itemsize

    @property
    def staging(self) -> int:
        return 2 * self.one_tensor if self.tier != "device" and self.cuda else 0

    @property
    def resident(self) -> int:
        """Bytes on the compute device, before the caches."""
        held = self.held if self.tier == "device" else 0
        return held + self.entries * self.scored.itemsize + self.scratch + self.staging

    @property
    def host(self) -> int:
        """Bytes in host memory besides the device's (on a CPU, the same memory)."""
        if self.tier == "host":
            return self.held
        if self.tier == "disk":
            # a CPU reads one model's tensor at a time; a GPU copies them all
            # asynchronously, from two sets of pinned buffers
            return 2 * self.one_tensor if self.cuda else self.largest * self.stored.itemsize
        return 0

    @property
    def cache_bytes(self) -> int:
        return sum(CACHE_BYTES[k] for k in self.caches) * self.experts * self.entries

    def describe(self) -> str:
        models = f"{self.experts + 1} {dtype_name(self.stored)} models"
        scored = f"the scored model in {dtype_name(self.scored)}"
        formed = f"task vectors formed per tensor in {size_text(self.scratch)} of scratch"
        if self.tier == "device":
            held = models + (f" ({formed})" if self.forms_task_vectors else "") + f" + {scored}"
            parts = [f"tier device: {size_text(self.resident)} resident ({held})"]
        else:
            where = (
                f"{models} in host memory ({size_text(self.held)})"
                if self.tier == "host"
                else f"{models} read from their files per candidate ({size_text(self.held)})"
            )
            staged = f" and {size_text(self.staging)} of staging" if self.staging else ""
            parts = [
                f"tier {self.tier}: {where}, streamed tensor by tensor; "
                f"{size_text(self.resident)} resident ({scored}, {formed}{staged})"
            ]
        if self.caches:
            parts.append(f"{size_text(self.cache_bytes)} of caches ({' and '.join(self.caches)})")
        return " + ".join(parts)


def cache_kinds(methods: Iterable[MethodSpec], compat: str) -> tuple[CacheKind, ...]:
    """The caches any of ``methods`` fills under ``compat``, in a fixed order."""
    used = {k for m in methods for k in m.caches.of(compat)}
    return tuple(k for k in CACHE_BYTES if k in used)


def of_checkpoint(
    base: Checkpoint,
    experts: int,
    caches: tuple[CacheKind, ...],
    stored: torch.dtype = torch.float32,
    scored: torch.dtype = torch.float32,
) -> Footprint:
    sizes = [math.prod(i.shape) for i in base.tensors.values() if i.dtype.is_floating_point]
    return Footprint(sum(sizes), experts, caches, stored, scored, max(sizes, default=0))


def of_models(
    base: Checkpoint,
    experts: list[Checkpoint],
    caches: tuple[CacheKind, ...],
    scored: torch.dtype | None = None,
) -> Footprint:
    """The plan for these models: held in ``resident_dtype``, scored in
    ``scored`` (default: the base's stored dtype)."""
    return of_checkpoint(
        base,
        len(experts),
        caches,
        resident_dtype([base, *experts]),
        scored or stored_dtype(base),
    )


def plan_residency(
    footprint: Footprint,
    requested: Tier | Literal["auto"],
    device: torch.device,
    free_device: int,
    free_host: int,
) -> tuple[Footprint, list[str]]:
    """Where the models are held, and whether the caches come too.

    ``auto`` takes the first tier that fits: the device, then (with a CUDA
    device) pinned host memory, then the files. On a CPU, device and host are
    one memory, so the host tier is never better than the device tier and auto
    skips it. The caches are kept only where the chosen tier leaves them room;
    the notes say what was left out. Raises when the asked-for tier (or, for
    auto, even the disk tier) does not fit, naming the bytes and the way out.
    """
    cuda = device.type == "cuda"

    def fits(fp: Footprint, extra: int = 0) -> bool:
        if cuda:
            return fp.resident + extra <= free_device and fp.host <= free_host
        return fp.resident + fp.host + extra <= free_device

    if requested == "auto":
        tiers: tuple[Tier, ...] = TIERS if cuda else ("device", "disk")
    else:
        tiers = (requested,)
    for tier in tiers:
        fp = replace(footprint, tier=tier, cuda=cuda)
        if fits(fp):
            break
    else:
        free = f"{size_text(free_device)} free" + (
            f" and {size_text(free_host)} of host memory" if cuda else ""
        )
        other = "" if tier == "disk" else "; residency: disk reads the models per candidate instead"
        raise ModelError(
            f"the study needs {fp.describe()} on {device}, which has {free}: merge fewer "
            f"experts per study, or run on a device with more memory{other}"
        )
    notes = []
    if requested == "auto" and fp.tier != "device":
        needs = replace(footprint, tier="device", cuda=cuda).resident
        notes.append(
            f"the models do not fit on {device} ({size_text(needs)} needed): tier {fp.tier}, "
            + (
                "streamed from host memory"
                if fp.tier == "host"
                else "read from the files per candidate"
            )
        )
    if fp.caches and not fits(fp, fp.cache_bytes):
        free = free_device if cuda else free_device - fp.host
        notes.append(
            f"the caches ({size_text(fp.cache_bytes)}) do not fit beside the resident models "
            f"in the {size_text(free)} free on {device}: trials run without them, slower "
            "(cache_ranks: false in the study file silences this)"
        )
        fp = replace(fp, caches=())
    return fp, notes


def floor_seconds(fp: Footprint, device_bw: float, link_bw: float, read_bw: float) -> float:
    """The least a candidate can take in ``fp``'s tier (bandwidths in bytes per
    second): the bytes it reads and writes on the device over the device's
    bandwidth, plus, off the device, the held bytes over the host link (host)
    or over the files' read bandwidth and the link (disk). On a CUDA device the
    copy stream overlaps the merge, so the slower of the two decides; on a CPU
    they add up."""
    moved = fp.entries * ((fp.experts + 1) * fp.stored.itemsize + fp.scored.itemsize)
    merge = moved / device_bw
    if fp.tier == "device":
        return merge
    bring = fp.held / link_bw
    if fp.tier == "disk":
        read = fp.held / read_bw
        bring = max(read, bring) if fp.cuda else read
    return max(merge, bring) if fp.cuda else merge + bring


# floating-point entries of the Llama-2 checkpoints, as their headers count them, and
# of their largest tensor (the 32000-token embedding)
SIZES = (
    ("7B", 6_738_415_616, 32000 * 4096),
    ("13B", 13_015_864_320, 32000 * 5120),
    ("70B", 68_976_648_192, 32000 * 8192),
)


def size_table(experts: Iterable[int] = (2, 3, 4)) -> str:
    """The README's table: what a study of a 7B-70B model holds in each tier
    (bfloat16 checkpoints on a CUDA device), per expert count."""
    head = (
        "| model | experts | device tier | host tier: GPU + pinned host | disk tier: GPU "
        "| device tier, float32 checkpoints "
        "| + row ranks (DELLA, Breadcrumbs paper) "
        "| + magnitude orders (TIES, Breadcrumbs mergekit) |\n|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    bf16 = torch.bfloat16
    for label, entries, largest in SIZES:
        for n in experts:
            native = Footprint(entries, n, (), bf16, bf16, largest, "device", True)
            host = replace(native, tier="host")
            disk = replace(native, tier="disk")
            wide = Footprint(entries, n).resident
            ranks = Footprint(entries, n, ("ranks",)).cache_bytes
            orders = Footprint(entries, n, ("orders",)).cache_bytes
            cells = [
                label,
                str(n),
                size_text(native.resident),
                f"{size_text(host.resident)} + {size_text(host.host)}",
                size_text(disk.resident),
                *map(size_text, (wide, ranks, orders)),
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(size_table())
