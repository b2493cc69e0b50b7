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
from dataclasses import dataclass

from methods.registry import CacheKind, MethodSpec
from optimizer.errors import ModelError
from optimizer.io.checkpoint import Checkpoint

GIB = 1 << 30
RESIDENT_BYTES = 4  # float32 per entry: the model scored, the base, each task vector
CACHE_BYTES: dict[CacheKind, int] = {"ranks": 2, "orders": 4}  # per entry, per expert


def size_text(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / (1 << 20):.0f} MiB"


@dataclass(frozen=True)
class Footprint:
    """Bytes the resident engine holds for ``entries`` floating-point entries
    per model and ``experts`` experts, and the caches its methods fill."""

    entries: int
    experts: int
    caches: tuple[CacheKind, ...] = ()

    @property
    def resident(self) -> int:
        return (self.experts + 2) * self.entries * RESIDENT_BYTES

    @property
    def cache_bytes(self) -> int:
        return sum(CACHE_BYTES[k] for k in self.caches) * self.experts * self.entries

    def describe(self) -> str:
        parts = [f"{size_text(self.resident)} resident ({self.experts + 2} float32 models)"]
        if self.caches:
            parts.append(f"{size_text(self.cache_bytes)} of caches ({' and '.join(self.caches)})")
        return " + ".join(parts)


def cache_kinds(methods: Iterable[MethodSpec], compat: str) -> tuple[CacheKind, ...]:
    """The caches any of ``methods`` fills under ``compat``, in a fixed order."""
    used = {k for m in methods for k in m.caches.of(compat)}
    return tuple(k for k in CACHE_BYTES if k in used)


def of_checkpoint(base: Checkpoint, experts: int, caches: tuple[CacheKind, ...]) -> Footprint:
    entries = sum(
        math.prod(info.shape) for info in base.tensors.values() if info.dtype.is_floating_point
    )
    return Footprint(entries, experts, caches)


def keeps_caches(footprint: Footprint, free: int, where: str) -> bool:
    """Whether the caches fit beside what must be resident; raises when even
    that does not fit (``free``: bytes free on the device, ``where`` names it)."""
    if footprint.resident > free:
        raise ModelError(
            f"the study needs {footprint.describe()} on {where}, which has {size_text(free)} free: "
            "merge fewer experts per study, or run on a device with more memory"
        )
    return footprint.resident + footprint.cache_bytes <= free


# floating-point entries of the Llama-2 checkpoints, as their headers count them
SIZES = (("7B", 6_738_415_616), ("13B", 13_015_864_320), ("70B", 68_976_648_192))


def size_table(experts: Iterable[int] = (2, 3, 4)) -> str:
    """The README's table: what a study of a 7B-70B model holds, per expert count."""
    head = (
        "| model | experts | resident (float32) | + row ranks (DELLA, Breadcrumbs paper) "
        "| + magnitude orders (TIES, Breadcrumbs mergekit) |\n|---|---|---|---|---|"
    )
    rows = [head]
    for label, entries in SIZES:
        for n in experts:
            fp = Footprint(entries, n)
            ranks = Footprint(entries, n, ("ranks",)).cache_bytes
            orders = Footprint(entries, n, ("orders",)).cache_bytes
            rows.append(
                f"| {label} | {n} | {size_text(fp.resident)} | {size_text(ranks)} | {size_text(orders)} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    print(size_table())
